/* SPDX-License-Identifier: MIT */
/* xf_table.c — what tp-bench knows about the transformer layers
 * (attention, block, transformer) without running them: batch/seq
 * resolution, split dimension, FLOPs and the collectives each phase makes.
 * Pure (no libtp calls): part of tp-bench-pure, unit-testable. The counts
 * follow tp-transformer.h and tp-layers.h; xf_run.c runs the layers.
 * Callers pass the layer kind (bench_layer_kind()): layer_table.c uses this
 * file, never the other way round. */
#include "bench.h"

#include <tp/tp-plugin-util.h>
#include <inttypes.h>
#include <string.h>

bool bench_layer_is_xf(int kind)
{
    return kind == BENCH_LK_ATTENTION || kind == BENCH_LK_BLOCK || kind == BENCH_LK_TRANSFORMER;
}

int bench_xf_resolve(int kind, bench_opts *o, char *err, size_t errlen)
{
    if (o->cmd != BENCH_CMD_LAYER && o->cmd != BENCH_CMD_MODEL)
        return 0;
    bool xf = bench_layer_is_xf(kind);
    if (!xf && !o->seq && !o->batch)
        return 0;
    if (o->seq && o->batch) {
        if (o->tokens_set && o->tokens != o->seq * o->batch)
            return bench_fail(err, errlen,
                              "layer: --tokens %" PRId64 " disagrees with --batch %" PRId64
                              " x --seq %" PRId64 " = %" PRId64 ": give --tokens or --batch/--seq",
                              o->tokens, o->batch, o->seq, o->batch * o->seq);
    } else if (o->seq) {
        if (o->tokens_set && o->tokens % o->seq)
            return bench_fail(err, errlen,
                              "layer: --tokens %" PRId64 " is not a multiple of --seq %" PRId64
                              ": give --batch B with tokens = B x seq",
                              o->tokens, o->seq);
        o->batch = o->tokens_set ? o->tokens / o->seq : 1;
    } else if (o->batch) {
        if (o->tokens % o->batch)
            return bench_fail(err, errlen,
                              "layer: --tokens %" PRId64 " is not a multiple of --batch %" PRId64
                              ": give --seq S with tokens = batch x S",
                              o->tokens, o->batch);
        o->seq = o->tokens / o->batch;
    } else if (o->tokens_set) {
        o->batch = 1;
        o->seq = o->tokens;
    } else {
        /* default: 2048 tokens as 4 sequences of 512 */
        o->batch = 4;
        o->seq = 512;
    }
    o->tokens = o->batch * o->seq;
    /* the transformer layers always time forward and backward */
    if (xf)
        o->backward = true;
    return 0;
}

/* head_dim as the layer resolves it (0 when hidden % heads != 0 and no
 * --head-dim: the layer refuses that at create time). */
static int64_t head_dim(const bench_opts *o)
{
    if (o->head_dim)
        return o->head_dim;
    return o->heads > 0 && o->hidden % o->heads == 0 ? o->hidden / o->heads : 0;
}

static int64_t kv_heads(const bench_opts *o)
{
    return o->kv_heads ? o->kv_heads : o->heads;
}

int64_t bench_xf_split_dim(int kind, const bench_opts *o, const char **what)
{
    int64_t dim = o->heads;
    *what = "--heads";
    if (kind != BENCH_LK_ATTENTION && o->ffn < dim) {
        dim = o->ffn;
        *what = "--ffn";
    }
    if (kind == BENCH_LK_TRANSFORMER && o->vocab < dim) {
        dim = o->vocab;
        *what = "--vocab";
    }
    return dim;
}

/* Nominal GEMM FLOPs: the score and context GEMMs are counted over the full
 * seq x seq (the causal mask halves the useful part). Backward = 2 x
 * forward (input and weight gradients); the transformer's embedding
 * lookups are not GEMMs. */
double bench_xf_flops(int kind, const bench_opts *o, int phase)
{
    double t = (double)o->tokens, h = (double)o->hidden, f = (double)o->ffn;
    double s = (double)o->seq, b = (double)o->batch, H = (double)o->heads;
    double KV = (double)kv_heads(o), d = (double)head_dim(o);
    double attn = 2.0 * t * h * (H + 2.0 * KV) * d /* QKV */ +
                  4.0 * b * H * s * s * d /* QK^T, PV */ + 2.0 * t * H * d * h /* out */;
    double fwd = attn;
    if (kind != BENCH_LK_ATTENTION)
        fwd += 4.0 * t * h * f;
    if (kind == BENCH_LK_TRANSFORMER)
        fwd = fwd * (double)o->layers + 2.0 * t * h * (double)o->vocab;
    return phase == 0 ? fwd : 2.0 * fwd;
}

/* Floats the attention backward adds to its input-gradient collective for
 * the KV heads several ranks hold (GQA/MQA with kv_heads not split evenly):
 * each such head's K and V weight columns and biases, once in the
 * all-reduce, or once per holder in the sequence-parallel reduce-scatter. */
/* The rank holding query head q of H sharded over T ranks as
 * tp_shard_range does: the first H % T ranks hold one head more. (Computed
 * here, not called: this file is in the library the unit tests link
 * without libtp.) */
static int head_rank(int64_t H, int T, int64_t q)
{
    int64_t base = H / T, rem = H % T, big = rem * (base + 1);
    return (int)(q < big ? q / (base + 1) : rem + (q - big) / base);
}

static double kv_extra(const bench_opts *o, int T)
{
    int64_t H = o->heads, KV = kv_heads(o), hd = head_dim(o);
    if (T < 1 || H < T || KV < 1 || H % KV)
        return 0;
    /* query heads are sharded by tp_shard_range; KV head k serves query
     * heads [k g, (k+1) g) and is shared when they lie on two ranks */
    int64_t g = H / KV, region = 2 * hd * (o->hidden + (o->bias ? 1 : 0));
    double n = 0;
    for (int64_t k = 0; k < KV; k++)
        if (head_rank(H, T, k * g) != head_rank(H, T, (k + 1) * g - 1))
            n += (double)region;
    return n;
}

/* payload bytes of `elems` elements of es bytes each */
static int add(bench_layer_comm *out, int n, int max, int op, int calls, double elems, double es)
{
    if (calls > 0 && n < max)
        out[n++] = (bench_layer_comm){op, calls, elems * es};
    return n;
}

/* Per phase (0 forward, 1 backward), payload as tp_stats counts it
 * (all_gather the gathered total, reduce_scatter the input total). Without
 * sequence parallelism each TP region all-reduces [tokens, hidden]; with it,
 * an all-gather before and a reduce-scatter after, the same ring bytes. */
int bench_xf_expected_comm(int kind, const bench_opts *o, int T, int phase, bench_layer_comm *out,
                           int max)
{
    const double th = (double)o->tokens * (double)o->hidden, h = (double)o->hidden,
                 t = (double)o->tokens;
    const bool sp = o->sequence_parallel;
    const int L = kind == BENCH_LK_TRANSFORMER ? (int)o->layers : 1;
    const int regions = kind == BENCH_LK_ATTENTION ? 1 : 2; /* TP regions per block */
    const double extra = kv_extra(o, T);
    /* activations and their gradients travel in the layer's dtype; the
     * cross-entropy statistics in f32 */
    const double es = (double)tp_util_dtype_size(o->gemm_dtype), f32 = 4.0;
    int n = 0;
    if (!sp) {
        if (phase == 0) {
            int emb = kind == BENCH_LK_TRANSFORMER; /* embedding all-reduce */
            n = add(out, n, max, TP_OP_ALL_REDUCE, regions * L + emb, th, es);
            if (kind ==
                BENCH_LK_TRANSFORMER) { /* cross-entropy: max, then (sum-exp, target, sum) */
                n = add(out, n, max, TP_OP_ALL_REDUCE, 1, t, f32);
                n = add(out, n, max, TP_OP_ALL_REDUCE, 1, 3.0 * t, f32);
            }
        } else {
            /* per block: QKV input gradient (+ shared KV grads), MLP fc1 input gradient */
            n = add(out, n, max, TP_OP_ALL_REDUCE, L, th + extra, es);
            n = add(out, n, max, TP_OP_ALL_REDUCE, (regions - 1) * L, th, es);
            n = add(out, n, max, TP_OP_ALL_REDUCE, kind == BENCH_LK_TRANSFORMER, th,
                    es); /* output proj. */
        }
        return n;
    }
    if (phase == 0) {
        int tr = kind == BENCH_LK_TRANSFORMER;
        /* embedding reduce-scatter; per region all-gather + reduce-scatter;
         * final norm output all-gathered for the output projection */
        n = add(out, n, max, TP_OP_ALL_GATHER, regions * L + tr, th, es);
        n = add(out, n, max, TP_OP_REDUCE_SCATTER, regions * L + tr, th, es);
        if (tr) {
            n = add(out, n, max, TP_OP_ALL_REDUCE, 1, t, f32);
            n = add(out, n, max, TP_OP_ALL_REDUCE, 1, 3.0 * t, f32);
        }
    } else {
        int tr = kind == BENCH_LK_TRANSFORMER;
        /* dy gathered into each row-parallel exit (+ the embedding's), and
         * each region's input (+ the final norm's output) gathered again
         * for its weight gradient (not kept from forward); input gradients
         * reduce-scattered (+ the output projection's) */
        n = add(out, n, max, TP_OP_ALL_GATHER, 2 * regions * L + 2 * tr, th, es);
        n = add(out, n, max, TP_OP_REDUCE_SCATTER, regions * L + tr, th, es);
        /* shared KV heads' weight gradients: one all-reduce per block */
        n = add(out, n, max, TP_OP_ALL_REDUCE, extra > 0 ? L : 0, extra, es);
        /* norms' parameter gradients: the block's two LayerNorms in one
         * all-reduce, the final norm in another */
        if (kind != BENCH_LK_ATTENTION)
            n = add(out, n, max, TP_OP_ALL_REDUCE, L, 4.0 * h, es);
        n = add(out, n, max, TP_OP_ALL_REDUCE, tr, 2.0 * h, es);
    }
    return n;
}

void bench_xf_rec_fields(bench_record *r, int kind, const bench_opts *o)
{
    if (!bench_layer_is_xf(kind))
        return;
    bench_rec_int(r, "batch", o->batch);
    bench_rec_int(r, "seq", o->seq);
    bench_rec_int(r, "heads", o->heads);
    bench_rec_int(r, "kv_heads", kv_heads(o));
    bench_rec_int(r, "head_dim", head_dim(o));
    if (kind == BENCH_LK_TRANSFORMER) {
        bench_rec_int(r, "layers", o->layers);
        bench_rec_int(r, "vocab", o->vocab);
    }
    bench_rec_bool(r, "sequence_parallel", o->sequence_parallel);
}

/* The seed's per-block formula, forward + backward without sequence
 * parallelism: 4 all-reduces of b*s*h elements, ring traffic
 * 4 x 2(T-1)/T x b*s*h x es bytes = 8 b s h (T-1)/T x es per rank (es: the
 * dtype's size). */
double bench_xf_seed_block_bytes(const bench_opts *o, int T)
{
    return 8.0 * (double)o->tokens * (double)o->hidden * (double)(T - 1) / (double)T *
           (double)tp_util_dtype_size(o->gemm_dtype);
}
