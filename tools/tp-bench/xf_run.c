/* SPDX-License-Identifier: MIT */
/* xf_run.c — tp-bench runners for the transformer layers: attention
 * (tp_attention_*), block (tp_block_*) and transformer (tp_gpt_*, one
 * training step without the optimizer). Each iteration is a forward and a
 * backward through the public API; layer_run.c times them from tp_stats like
 * the linear layers. Shapes and expected counts: xf_table.c. */
#include "bench.h"

#include "tp-try.h"

#include <tp/tp-transformer.h>

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct bench_xf {
    int kind;
    bool backward;
    int64_t batch, seq;
    tp_attention *attn;
    tp_block *block;
    tp_gpt *gpt;
    tp_tensor x, y, dy, dx; /* attention, block: this rank's rows (its token shard with SP) */
    tp_tensor ids, targets; /* transformer */
    tp_dp *dp;              /* transformer with --dp */
    float dp_weight;        /* 1/D */
    size_t dp_bucket;       /* --dp-bucket-kb in bytes (0: tp_dp's default) */
    bool dp_overlap;        /* --overlap >= 2: buckets reduced during backward */
};

void bench_xf_free(bench_xf *b)
{
    if (!b)
        return;
    tp_attention_free(b->attn);
    tp_block_free(b->block);
    tp_dp_free(b->dp);
    tp_gpt_free(b->gpt);
    tp_tensor_release(&b->x);
    tp_tensor_release(&b->y);
    tp_tensor_release(&b->dy);
    tp_tensor_release(&b->dx);
    tp_tensor_release(&b->ids);
    tp_tensor_release(&b->targets);
    free(b);
}

/* rows x cols of the master tensor (seed 1, id) rows [lo, hi) into t. */
static tp_status fill(tp_tensor *t, uint64_t id, int64_t lo, int64_t hi, int64_t cols)
{
    size_t n = (size_t)(hi - lo) * (size_t)cols;
    float *h = malloc((n ? n : 1) * sizeof *h);
    if (!h)
        return tp_set_error(TP_ERR_NO_MEMORY,
                            "tp-bench: out of host memory for a %" PRId64 " x %" PRId64
                            " input (%zu bytes)",
                            hi - lo, cols, (n ? n : 1) * sizeof *h);
    tp_master_fill(1, id, cols, lo, hi, 0, cols, 1.0f, h);
    tp_status st;
    void *c = t->dtype == TP_F32 ? h : malloc((n ? n : 1) * tp_dtype_size(t->dtype));
    if (!c) {
        free(h);
        return tp_set_error(TP_ERR_NO_MEMORY, "tp-bench: out of host memory for an input");
    }
    tp_host_convert(t->dtype, c, TP_F32, h, n); /* bf16/f16: round to nearest even */
    st = tp_tensor_upload(t, c);
    if (c != h)
        free(c);
    free(h);
    return st;
}

/* Token ids and next-token targets of a deterministic pseudo-random text. */
static tp_status fill_ids(bench_xf *b, int64_t vocab)
{
    int64_t n = b->batch * b->seq;
    int32_t *h = malloc((size_t)(n + 1) * sizeof *h);
    if (!h)
        return tp_set_error(TP_ERR_NO_MEMORY,
                            "tp-bench: out of host memory for %" PRId64 " token ids (%zu bytes)", n,
                            (size_t)(n + 1) * sizeof *h);
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (int64_t i = 0; i <= n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        h[i] = (int32_t)((s >> 33) % (uint64_t)vocab);
    }
    tp_status st;
    TP_TRY_GOTO(tp_tensor_upload(&b->ids, h), st, done);
    st = tp_tensor_upload(&b->targets, h + 1);
done:
    free(h);
    return st;
}

tp_status bench_xf_create(int kind, tp_comm *comm, const bench_opts *o, bench_xf **out)
{
    *out = NULL;
    bench_xf *b = calloc(1, sizeof *b);
    if (!b)
        return tp_set_error(TP_ERR_NO_MEMORY,
                            "tp-bench: out of host memory for the layer (%zu bytes)", sizeof *b);
    b->kind = kind;
    b->backward = o->backward;
    b->batch = o->batch;
    b->seq = o->seq;
    b->dp_bucket = (size_t)o->dp_bucket_kb * 1024;
    b->dp_overlap = o->overlap >= 2;
    tp_device *dev = tp_comm_device(comm);
    int T = tp_comm_size(comm), r = tp_comm_rank(comm);
    int64_t lo = 0, hi = o->tokens;
    if (o->sequence_parallel)
        tp_shard_range(o->tokens, T, r, &lo, &hi);
    tp_status st = TP_OK;
    switch (kind) {
        case BENCH_LK_ATTENTION: {
            tp_attention_config c = {.hidden = o->hidden,
                                     .heads = o->heads,
                                     .kv_heads = o->kv_heads,
                                     .head_dim = o->head_dim,
                                     .bias = o->bias,
                                     .causal = true,
                                     .sequence_parallel = o->sequence_parallel,
                                     .seed = 1,
                                     .tensor_id = 10,
                                     .name = "bench.attention",
                                     .dtype = o->gemm_dtype,
                                     .overlap = o->overlap};
            TP_TRY_GOTO(tp_attention_create(comm, &c, &b->attn), st, done);
            break;
        }
        case BENCH_LK_BLOCK: {
            tp_block_config c = {.hidden = o->hidden,
                                 .heads = o->heads,
                                 .kv_heads = o->kv_heads,
                                 .head_dim = o->head_dim,
                                 .ffn = o->ffn,
                                 .bias = o->bias,
                                 .causal = true,
                                 .sequence_parallel = o->sequence_parallel,
                                 .seed = 1,
                                 .tensor_id = 10,
                                 .name = "bench.block",
                                 .dtype = o->gemm_dtype,
                                 .overlap = o->overlap};
            TP_TRY_GOTO(tp_block_create(comm, &c, &b->block), st, done);
            break;
        }
        case BENCH_LK_TRANSFORMER: {
            tp_gpt_config c = {.vocab = o->vocab,
                               .hidden = o->hidden,
                               .heads = o->heads,
                               .kv_heads = o->kv_heads,
                               .head_dim = o->head_dim,
                               .ffn = o->ffn,
                               .layers = o->layers,
                               .seq = o->seq,
                               .tied = true,
                               .sequence_parallel = o->sequence_parallel,
                               .bias = o->bias,
                               .seed = 1,
                               .dtype = o->gemm_dtype,
                               .overlap = o->overlap};
            TP_TRY_GOTO(tp_gpt_create(comm, &c, &b->gpt), st, done);
            TP_TRY_GOTO(tp_tensor_alloc2(dev, TP_I32, o->batch, o->seq, &b->ids), st, done);
            TP_TRY_GOTO(tp_tensor_alloc2(dev, TP_I32, o->batch, o->seq, &b->targets), st, done);
            st = fill_ids(b, o->vocab);
            goto done;
        }
        default:
            st = tp_set_error(TP_ERR_INTERNAL, "tp-bench: layer kind %d is not a transformer layer",
                              kind);
            goto done;
    }
    /* attention, block: x, dy of this rank's rows; y, dx allocated here */
    TP_TRY_GOTO(tp_tensor_alloc2(dev, o->gemm_dtype, hi - lo, o->hidden, &b->x), st, done);
    TP_TRY_GOTO(tp_tensor_alloc2(dev, o->gemm_dtype, hi - lo, o->hidden, &b->y), st, done);
    TP_TRY_GOTO(tp_tensor_alloc2(dev, o->gemm_dtype, hi - lo, o->hidden, &b->dy), st, done);
    TP_TRY_GOTO(tp_tensor_alloc2(dev, o->gemm_dtype, hi - lo, o->hidden, &b->dx), st, done);
    TP_TRY_GOTO(fill(&b->x, 99, lo, hi, o->hidden), st, done);
    st = fill(&b->dy, 98, lo, hi, o->hidden);
done:
    if (st != TP_OK) {
        bench_xf_free(b);
        return st;
    }
    *out = b;
    return TP_OK;
}

/* One iteration: forward, then backward (gradients accumulate; their
 * values do not change the work done). */
tp_status bench_xf_step(bench_xf *b)
{
    bool backward = b->backward;
    switch (b->kind) {
        case BENCH_LK_ATTENTION:
            TP_TRY(tp_attention_forward(b->attn, &b->x, b->batch, b->seq, &b->y));
            return backward ? tp_attention_backward(b->attn, &b->dy, &b->dx) : TP_OK;
        case BENCH_LK_BLOCK:
            TP_TRY(tp_block_forward(b->block, &b->x, b->batch, b->seq, &b->y));
            return backward ? tp_block_backward(b->block, &b->dy, &b->dx) : TP_OK;
        case BENCH_LK_TRANSFORMER: {
            float loss = 0;
            TP_TRY(tp_gpt_forward(b->gpt, &b->ids, &b->targets, &loss));
            if (!isfinite(loss))
                return tp_set_error(TP_ERR_INTERNAL, "tp-bench: transformer loss is %g",
                                    (double)loss);
            if (!backward)
                return TP_OK;
            if (b->dp && b->dp_overlap)
                TP_TRY(tp_dp_begin(b->dp, b->dp_weight));
            TP_TRY(tp_gpt_backward(b->gpt));
            if (!b->dp)
                return TP_OK;
            TP_TRY(tp_dp_all_reduce_grads(b->dp, b->dp_weight));
            return tp_gpt_finalize_grads(b->gpt);
        }
        default:
            return tp_set_error(TP_ERR_INTERNAL, "tp-bench: layer kind %d has no runner", b->kind);
    }
}

tp_status bench_xf_attach_dp(bench_xf *b, tp_comm *dp)
{
    if (!b->gpt)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "tp-bench: --dp applies to the transformer layer only");
    const tp_param *ps = NULL;
    int n = 0;
    tp_gpt_params(b->gpt, &ps, &n);
    b->dp_weight = 1.0f / (float)tp_comm_size(dp);
    tp_dp_config c = {.bucket_bytes = b->dp_bucket};
    TP_TRY(tp_dp_create(dp, &c, ps, n, &b->dp));
    return b->dp_overlap ? tp_gpt_set_dp(b->gpt, b->dp) : TP_OK;
}

void bench_xf_dp_info(const bench_xf *b, int *buckets, double *grad_bytes, double *bucket_bytes)
{
    size_t g = 0, c = 0;
    tp_dp_get_info(b ? b->dp : NULL, buckets, &g, &c);
    *grad_bytes = (double)g;
    *bucket_bytes = (double)c;
}

void bench_xf_print_dp(const bench_layer_result *R)
{
    if (R->dp < 2)
        return;
    double D = R->dp, ring = R->dp_bytes * 2.0 * (D - 1) / D;
    double formula = 2.0 * (D - 1) / D * R->dp_grad_bytes;
    printf("# DP, D=%d (tp_stats of rank 0's DP communicator, per step): %.1f all_reduce (%d "
           "bucket%s of <= %.4g MiB), payload %.0f B, ring traffic %.0f B per rank; formula "
           "2 (D-1)/D x parameter bytes = 2 x %d/%d x %.0f = %.0f B: %s; %.1f us (wait %.1f, "
           "transfer %.1f); hidden behind backward %.1f us (%.0f%%), exposed %.1f (in flight: "
           "summed over the buckets; queued ones overlap)\n",
           R->dp, R->dp_calls, R->dp_buckets, R->dp_buckets == 1 ? "" : "s",
           R->dp_bucket_bytes / 1048576.0, R->dp_bytes, ring, R->dp - 1, R->dp, R->dp_grad_bytes,
           formula, fabs(ring - formula) <= 1e-6 * (formula + 1) ? "match" : "MISMATCH", R->dp_us,
           R->dp_wait_us, R->dp_us - R->dp_wait_us, R->dp_hidden_us,
           R->dp_us > 0 ? 100.0 * R->dp_hidden_us / R->dp_us : 0.0, R->dp_us - R->dp_hidden_us);
}

void bench_xf_print_header(const bench_opts *o)
{
    const bench_layer_desc *d = bench_layer_find(o->layer);
    int kind = bench_layer_kind(d);
    if (!bench_layer_is_xf(kind))
        return;
    printf("# batch %" PRId64 " x seq %" PRId64 ", heads %" PRId64 ", kv_heads %" PRId64
           ", head_dim ",
           o->batch, o->seq, o->heads, o->kv_heads ? o->kv_heads : o->heads);
    if (o->head_dim)
        printf("%" PRId64, o->head_dim);
    else
        printf("hidden/heads");
    if (kind == BENCH_LK_TRANSFORMER)
        printf(", layers %" PRId64 ", vocab %" PRId64
               " (tied), one training step without the optimizer",
               o->layers, o->vocab);
    printf(", causal, sequence parallel %s\n", o->sequence_parallel ? "on" : "off");
}

/* The seed's formula for the whole forward + backward next to the
 * measured ring traffic. */
void bench_xf_print_result(const bench_opts *o, const bench_layer_result *R)
{
    const bench_layer_desc *d = bench_layer_find(o->layer);
    int kind = bench_layer_kind(d);
    if (!bench_layer_is_xf(kind) || R->nphases < 2)
        return;
    double wire = R->wire_bytes[0] + R->wire_bytes[1];
    double pay = R->comm_bytes[0] + R->comm_bytes[1];
    if (kind == BENCH_LK_BLOCK) {
        double seed = bench_xf_seed_block_bytes(o, R->T);
        printf("# block forward + backward: measured payload %.0f B, ring traffic %.0f B per rank; "
               "seed's "
               "formula 8 b s h (T-1)/T x %zu = %.0f B%s\n",
               pay, wire, tp_dtype_size(o->gemm_dtype), seed,
               o->sequence_parallel
                   ? " (+ the norms' gradient all-reduce with sequence parallelism)"
                   : "");
    } else if (kind == BENCH_LK_TRANSFORMER) {
        double seed = bench_xf_seed_block_bytes(o, R->T) * (double)o->layers;
        printf("# transformer step: measured payload %.0f B, ring traffic %.0f B per rank; the "
               "blocks' share "
               "by the seed's formula, L x 8 b s h (T-1)/T x %zu = %.0f B (the rest: embedding, "
               "output projection, cross-entropy)\n",
               pay, wire, tp_dtype_size(o->gemm_dtype), seed);
    }
}
