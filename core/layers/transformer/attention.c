/* SPDX-License-Identifier: MIT */
/*
 * attention.c — ParallelAttention: fused QKV column-parallel linear (whole
 * heads per rank, tp_shard_range of the query heads, so heads % T may be
 * non-zero; GQA/MQA with replicated KV heads), causal scaled
 * dot-product attention per head, row-parallel out-projection.
 *
 * The GEMMs are composed here rather than through tp_linear because the
 * QKV shard is not a contiguous column range of the master weight (Q, K and
 * V blocks; replicated KV heads), and because sequence parallelism needs a
 * reduce-scatter where the row-parallel layer all-reduces.
 *
 * Per batch element and head the Q/K/V operands are views into the local
 * QKV activation [tokens, qkv_width] (head stride head_dim), so no
 * reshapes: scores [local_heads, seq, seq] come from one strided-batched
 * GEMM over heads (multi-head) or one per KV head with a zero stride on K
 * (grouped).
 */
#include "xf-internal.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How backward sums the input gradient over the ranks and the gradients
 * of KV heads held by several ranks (a GQA group straddling a shard
 * boundary). Fixed by the configuration. */
typedef enum dx_reduce {
    DX_ALL_REDUCE,        /* dx [tokens, hidden] */
    DX_ALL_REDUCE_PACKED, /* dx | every shared KV head's region */
    DX_REDUCE_SCATTER,    /* sequence parallel: dx into the token shards */
    DX_REDUCE_SCATTER_KV, /* sequence parallel with shared KV heads: dx reduce-scattered,
                                 then one all-reduce of every shared head's region (not packed
                                 into each holder's reduce-scatter block: a backend may sum
                                 different blocks in different orders, and the holders must get
                                 the same bits) */
} dx_reduce;

struct tp_attention {
    tp_comm *comm;
    tp_device *dev;
    char *label;
    int tp_size, rank;
    int64_t hidden, heads, kv_heads, head_dim;
    int64_t group;                   /* query heads per KV head: heads / kv_heads */
    int64_t local_heads, q_lo, q_hi; /* query heads of this rank */
    int64_t kv_lo, kv_hi, local_kv;  /* KV heads of this rank */
    int64_t qkv_width;               /* local QKV width (local_heads + 2 local_kv) head_dim */
    int64_t out_rows;                /* local out-projection rows local_heads head_dim */
    bool has_bias, causal, sp, any_shared;
    int overlap; /* tp_attention_config.overlap */
    tp_dtype dt; /* weights, gradients and every activation (f32 accumulation) */
    size_t es;   /* its size */
    dx_reduce dx_reduce;
    int64_t region; /* floats per shared KV head in a gradient pack */
    tp_tensor wqkv, bqkv, wo, bo, dwqkv, dbqkv, dwo, dbo;
    int64_t *off;        /* T+1 token-row shard offsets (sequence parallel) */
    size_t *counts;      /* T */
    void *rows_out;      /* where out_proj_rows / dx_rows write: [tokens, hidden] */
    int64_t attended;    /* batch elements whose ctx rows the forward has computed */
    const void *dy_used; /* the overlapped backward's dy, read by its weight gradients */
    const void *qkv_in;  /* the forward's full x rows, read by qkv_rows */
    tpl_rows_fn feed;    /* tpl_attention_forward_begin's (NULL otherwise) */
    void *feed_ctx;
    /* full: sequence-parallel [tokens, hidden] scratch (workspace): forward
     * the gathered x, then the out-projection's partial y; backward the
     * gathered dy, then x gathered again for the QKV weight gradient */
    tpl_ws full, qkv, probs, scores, ctx, dctx, dqkv, dpack, kvtmp, bscr;
    /* saved by forward */
    bool saved;
    const void *x_used;               /* without SP: x's full input rows [tokens, hidden] */
    tp_tensor x_saved;                /* the caller's x (dx's shape; SP: gathered again) */
    int64_t batch, seq, tokens, rows; /* rows: this rank's rows of x (tokens without SP) */
};

/* Element i of a device array p of the layer's dtype. */
static char *at(const tp_attention *a, const void *p, int64_t i)
{
    return (char *)(uintptr_t)p + (size_t)i * a->es;
}

/* Query heads [q_lo, q_hi) = tp_shard_range(heads, T, i) and the KV heads
 * [kv_lo, kv_hi) they use, of rank i. */
static void ranges_of(const tp_attention *a, int i, int64_t *qlo, int64_t *qhi, int64_t *kvlo,
                      int64_t *kvhi)
{
    int64_t lo, hi;
    tp_shard_range(a->heads, a->tp_size, i, &lo, &hi);
    *qlo = lo;
    *qhi = hi;
    *kvlo = lo / a->group;
    *kvhi = (hi - 1) / a->group + 1;
}

/* The rank holding query head h. */
static int rank_of_head(const tp_attention *a, int64_t h)
{
    for (int i = 0; i < a->tp_size; i++) {
        int64_t lo, hi;
        tp_shard_range(a->heads, a->tp_size, i, &lo, &hi);
        if (h < hi)
            return i;
    }
    return a->tp_size - 1;
}

/* Is KV head k held by more than one rank (its query-head group straddles
 * a shard boundary)? */
static bool kv_shared(const tp_attention *a, int64_t k)
{
    return rank_of_head(a, k * a->group) != rank_of_head(a, (k + 1) * a->group - 1);
}

void tp_attention_free(tp_attention *a)
{
    if (!a)
        return;
    tp_tensor *ts[] = {&a->wqkv, &a->bqkv, &a->wo, &a->bo, &a->dwqkv, &a->dbqkv, &a->dwo, &a->dbo};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++)
        tpl_release(ts[i], i < 4 ? TP_USE_PARAMETERS : TP_USE_GRADIENTS);
    tpl_ws *ws[] = {&a->full, &a->qkv,  &a->probs, &a->scores, &a->ctx,
                    &a->dctx, &a->dqkv, &a->dpack, &a->kvtmp,  &a->bscr};
    for (size_t i = 0; i < sizeof ws / sizeof *ws; i++)
        tpl_ws_release(ws[i]);
    free(a->off);
    free(a->counts);
    free(a->label);
    free(a);
}

void tp_attention_get_info(const tp_attention *a, int64_t *head_dim, int64_t *q_lo, int64_t *q_hi,
                           int64_t *kv_lo, int64_t *kv_hi)
{
    if (head_dim)
        *head_dim = a ? a->head_dim : 0;
    if (q_lo)
        *q_lo = a ? a->q_lo : 0;
    if (q_hi)
        *q_hi = a ? a->q_hi : 0;
    if (kv_lo)
        *kv_lo = a ? a->kv_lo : 0;
    if (kv_hi)
        *kv_hi = a ? a->kv_hi : 0;
}

void tp_attention_get_params(tp_attention *a, tp_attention_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    if (!a)
        return;
    p->qkv_weight = &a->wqkv;
    p->out_weight = &a->wo;
    p->qkv_bias = a->has_bias ? &a->bqkv : NULL;
    p->out_bias = a->has_bias ? &a->bo : NULL;
    p->qkv_weight_grad = a->dwqkv.data ? &a->dwqkv : NULL;
    p->out_weight_grad = a->dwo.data ? &a->dwo : NULL;
    p->qkv_bias_grad = a->has_bias && a->dbqkv.data ? &a->dbqkv : NULL;
    p->out_bias_grad = a->has_bias && a->dbo.data ? &a->dbo : NULL;
}

/* Full-tensor column of local QKV column c (c in [0, W)). */
static int64_t full_col(const tp_attention *a, int64_t qlo, int64_t kvlo, int64_t local_heads,
                        int64_t local_kv, int64_t c)
{
    int64_t head_dim = a->head_dim, head = c / head_dim, e = c % head_dim;
    if (head < local_heads)
        return (qlo + head) * head_dim + e;
    head -= local_heads;
    if (head < local_kv)
        return (a->heads + kvlo + head) * head_dim + e;
    head -= local_kv;
    return (a->heads + a->kv_heads + kvlo + head) * head_dim + e;
}

/* heads not dividing hidden and no head_dim: name both ways out. */
static tp_status refuse_head_dim(const char *who, int64_t hidden, int64_t heads)
{
    /* nearest head counts dividing hidden, within 4096 of heads: a
     * suggestion, not a search through a huge prime's divisors */
    int64_t below = 0, above = 0;
    for (int64_t d = heads - 1 < hidden ? heads - 1 : hidden; d >= 1 && d >= heads - 4096 && !below;
         d--)
        if (hidden % d == 0)
            below = d;
    for (int64_t d = heads + 1; d <= hidden && d <= heads + 4096 && !above; d++)
        if (hidden % d == 0)
            above = d;
    char alt[96] = "";
    if (below && above)
        snprintf(alt, sizeof alt, " (e.g. heads=%lld or %lld)", (long long)below, (long long)above);
    else if (below || above)
        snprintf(alt, sizeof alt, " (e.g. heads=%lld)", (long long)(below ? below : above));
    int64_t hd = (hidden + heads - 1) / heads;
    return tp_set_error(TP_ERR_SHAPE,
                        "%s: head_dim is 0 (default hidden/heads) but hidden=%lld is not "
                        "divisible by heads=%lld; ways out: give head_dim explicitly (the "
                        "examples' and tp-bench's --head-dim; e.g. head_dim=%lld: Q/K/V are then "
                        "heads*head_dim=%lld wide and the out-projection maps them back to "
                        "hidden), or choose heads dividing hidden%s",
                        who, (long long)hidden, (long long)heads, (long long)hd,
                        (long long)(hd * heads), alt);
}

static tp_status check_config(tp_attention *a, const tp_attention_config *cfg)
{
    const char *who = a->label;
    int tp_size = a->tp_size;
    if (cfg->hidden <= 0 || cfg->heads <= 0 || cfg->kv_heads < 0 || cfg->head_dim < 0)
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: hidden (%lld) and heads (%lld) must be >= 1, kv_heads (%lld) and "
                            "head_dim (%lld) >= 0 (0 = default)",
                            who, (long long)cfg->hidden, (long long)cfg->heads,
                            (long long)cfg->kv_heads, (long long)cfg->head_dim);
    int64_t heads = cfg->heads, hidden = cfg->hidden;
    int64_t kv_heads = cfg->kv_heads ? cfg->kv_heads : heads;
    if (kv_heads > heads || heads % kv_heads != 0)
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: kv_heads=%lld must divide heads=%lld (grouped-query attention "
                            "shares each KV head among heads/kv_heads query heads); use a divisor "
                            "of %lld, 1 for multi-query or %lld (=heads) for multi-head",
                            who, (long long)kv_heads, (long long)heads, (long long)heads,
                            (long long)heads);
    if (!cfg->head_dim && hidden % heads != 0)
        return refuse_head_dim(who, hidden, heads);
    /* heads need not divide by T (tp_shard_range), but every rank needs one */
    if (heads < tp_size)
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: heads=%lld is less than T=%d: attention gives every rank at "
                            "least one whole query head (heads need not be divisible by T); ways "
                            "out: T <= %lld, or heads >= %d",
                            who, (long long)heads, tp_size, (long long)heads, tp_size);
    /* every parameter's size fits: (heads + 2 kv_heads) head_dim columns of
     * hidden rows bounds them all (kv_heads <= heads) */
    int64_t head_dim = cfg->head_dim ? cfg->head_dim : hidden / heads, h3, fw, nw;
    TP_TRY(tpl_mul(who, "3 x heads", 3, heads, &h3));
    TP_TRY(tpl_mul(who, "QKV width (heads + 2 kv_heads) x head_dim", heads + 2 * kv_heads, head_dim,
                   &fw));
    TP_TRY(tpl_mul(who, "QKV weight hidden x QKV width", hidden, fw, &nw));
    a->hidden = hidden;
    a->heads = heads;
    a->kv_heads = kv_heads;
    a->head_dim = head_dim;
    a->group = heads / kv_heads;
    return TP_OK;
}

/* host [hidden, qkv_width] = this rank's QKV weight shard: local column c is
 * master column full_col(c); the Q, K and V blocks are contiguous column
 * ranges of the master [hidden, fw]. */
static tp_status fill_qkv_weight(const tp_attention *a, const tp_attention_config *cfg, int64_t fw,
                                 float bound, float *host)
{
    int64_t head_dim = a->head_dim;
    int64_t blk_lo[3] = {a->q_lo * head_dim, (a->heads + a->kv_lo) * head_dim,
                         (a->heads + a->kv_heads + a->kv_lo) * head_dim};
    int64_t blk_w[3] = {a->local_heads * head_dim, a->local_kv * head_dim, a->local_kv * head_dim};
    for (int part = 0, c0 = 0; part < 3; c0 += (int)blk_w[part], part++) {
        float *tmp = malloc((size_t)(a->hidden * blk_w[part]) * XF_ES + 1);
        if (!tmp)
            return tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory", a->label);
        if (cfg->full_qkv_weight)
            tpl_host_block(cfg->full_qkv_weight, fw, 0, a->hidden, blk_lo[part],
                           blk_lo[part] + blk_w[part], tmp);
        else
            tp_master_fill(cfg->seed, cfg->tensor_id, fw, 0, a->hidden, blk_lo[part],
                           blk_lo[part] + blk_w[part], bound, tmp);
        for (int64_t r = 0; r < a->hidden; r++)
            memcpy(host + r * a->qkv_width + c0, tmp + r * blk_w[part],
                   (size_t)blk_w[part] * XF_ES);
        free(tmp);
    }
    return TP_OK;
}

static tp_status alloc_params(tp_attention *a, const tp_attention_config *cfg)
{
    int64_t fw = (a->heads + 2 * a->kv_heads) * a->head_dim; /* full QKV width */
    int64_t fo = a->heads * a->head_dim;                     /* full out-projection rows */
    size_t n1 = (size_t)(a->hidden * a->qkv_width), n2 = (size_t)(a->out_rows * a->hidden);
    size_t hn = n1 > n2 ? n1 : n2;
    if ((size_t)fw > hn)
        hn = (size_t)fw;
    float *host = malloc(hn * XF_ES), *row = malloc((size_t)fw * XF_ES);
    tp_status st;
    if (!host || !row) {
        st = tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory for the weights", a->label);
        goto out;
    }
    float bq = (float)(1.0 / sqrt((double)a->hidden)), bo = (float)(1.0 / sqrt((double)fo));
    TP_TRY_GOTO(tpl_alloc(a->dev, TP_USE_PARAMETERS, a->dt, 2, (int64_t[]){a->hidden, a->qkv_width},
                          &a->wqkv),
                st, out);
    TP_TRY_GOTO(fill_qkv_weight(a, cfg, fw, bq, host), st, out);
    TP_TRY_GOTO(tpl_upload_f32(a->dev, a->dt, a->wqkv.data, host, n1), st, out);
    if (a->has_bias) {
        if (cfg->full_qkv_bias)
            memcpy(row, cfg->full_qkv_bias, (size_t)fw * XF_ES);
        else
            tp_master_fill(cfg->seed, cfg->tensor_id + 1, fw, 0, 1, 0, fw, bq, row);
        for (int64_t c = 0; c < a->qkv_width; c++)
            host[c] = row[full_col(a, a->q_lo, a->kv_lo, a->local_heads, a->local_kv, c)];
        TP_TRY_GOTO(tpl_alloc(a->dev, TP_USE_PARAMETERS, a->dt, 1, &a->qkv_width, &a->bqkv), st,
                    out);
        TP_TRY_GOTO(tpl_upload_f32(a->dev, a->dt, a->bqkv.data, host, (size_t)a->qkv_width), st,
                    out);
    }
    /* out-projection: rows [q_lo head_dim, q_hi head_dim) of [heads head_dim, hidden] */
    TP_TRY_GOTO(
        tpl_alloc(a->dev, TP_USE_PARAMETERS, a->dt, 2, (int64_t[]){a->out_rows, a->hidden}, &a->wo),
        st, out);
    int64_t r0 = a->q_lo * a->head_dim;
    if (cfg->full_out_weight)
        memcpy(host, cfg->full_out_weight + r0 * a->hidden, n2 * XF_ES);
    else
        tp_master_fill(cfg->seed, cfg->tensor_id + 2, a->hidden, r0, r0 + a->out_rows, 0, a->hidden,
                       bo, host);
    TP_TRY_GOTO(tpl_upload_f32(a->dev, a->dt, a->wo.data, host, n2), st, out);
    if (a->has_bias) {
        if (cfg->full_out_bias)
            memcpy(host, cfg->full_out_bias, (size_t)a->hidden * XF_ES);
        else
            tp_master_fill(cfg->seed, cfg->tensor_id + 3, a->hidden, 0, 1, 0, a->hidden, bo, host);
        TP_TRY_GOTO(tpl_alloc(a->dev, TP_USE_PARAMETERS, a->dt, 1, &a->hidden, &a->bo), st, out);
        TP_TRY_GOTO(tpl_upload_f32(a->dev, a->dt, a->bo.data, host, (size_t)a->hidden), st, out);
    }
out:
    free(host);
    free(row);
    return st;
}

tp_status tp_attention_create(tp_comm *comm, const tp_attention_config *cfg, tp_attention **out)
{
    if (!out)
        return tp_set_error(TP_ERR_INVALID_ARG, "ParallelAttention create: out is NULL");
    *out = NULL;
    if (!comm || !cfg)
        return tp_set_error(TP_ERR_INVALID_ARG, "ParallelAttention create: %s is NULL",
                            !comm ? "comm" : "cfg");
    tp_attention *a = calloc(1, sizeof *a);
    if (!a)
        return tp_set_error(TP_ERR_NO_MEMORY, "ParallelAttention create: out of host memory");
    a->comm = comm;
    a->dev = tp_comm_device(comm);
    a->tp_size = tp_comm_size(comm);
    a->rank = tp_comm_rank(comm);
    a->label = tpl_label("ParallelAttention", cfg->name, comm);
    a->has_bias = cfg->bias;
    a->causal = cfg->causal;
    a->sp = cfg->sequence_parallel;
    a->dt = cfg->dtype;
    a->es = tp_dtype_size(cfg->dtype);
    a->overlap = cfg->overlap;
    tpl_ws *ws[] = {&a->full, &a->qkv,  &a->probs, &a->scores, &a->ctx,
                    &a->dctx, &a->dqkv, &a->dpack, &a->kvtmp,  &a->bscr};
    for (size_t i = 0; i < sizeof ws / sizeof *ws; i++)
        ws[i]->dev = a->dev;
    /* read by backward; with SP the gathered x is not kept (backward gathers it again) */
    a->qkv.keep = a->probs.keep = a->ctx.keep = true;
    a->off = malloc(sizeof(int64_t) * (size_t)(a->tp_size + 1));
    a->counts = malloc(sizeof(size_t) * (size_t)a->tp_size);
    tp_status st;
    if (!a->label || !a->off || !a->counts) {
        st = tp_set_error(TP_ERR_NO_MEMORY, "ParallelAttention create: out of host memory");
        goto fail;
    }
    TP_TRY_GOTO(tpl_check_dtype(a->label, a->dt), st, fail);
    TP_TRY_GOTO(tpl_check_overlap(a->label, a->overlap), st, fail);
    TP_TRY_GOTO(check_config(a, cfg), st, fail);
    ranges_of(a, a->rank, &a->q_lo, &a->q_hi, &a->kv_lo, &a->kv_hi);
    a->local_heads = a->q_hi - a->q_lo;
    a->local_kv = a->kv_hi - a->kv_lo;
    a->qkv_width = (a->local_heads + 2 * a->local_kv) * a->head_dim;
    a->out_rows = a->local_heads * a->head_dim;
    for (int64_t k = 0; k < a->kv_heads; k++)
        if (kv_shared(a, k))
            a->any_shared = true;
    a->region = 2 * a->head_dim * (a->hidden + (a->has_bias ? 1 : 0));
    if (a->sp)
        a->dx_reduce = a->any_shared ? DX_REDUCE_SCATTER_KV : DX_REDUCE_SCATTER;
    else
        a->dx_reduce = a->any_shared ? DX_ALL_REDUCE_PACKED : DX_ALL_REDUCE;
    TP_TRY_GOTO(alloc_params(a, cfg), st, fail);
    *out = a;
    return TP_OK;
fail:
    tp_attention_free(a);
    return st;
}

/* ------------------------------------------------------------- compute */

/* C_j = op(A_j) op(B_kv(j)) for every local query head j (m x n each). A
 * advances by sa per query head, B by sb per local KV head, C by sc (row
 * pitch ldc): separate matrices, or column blocks of one matrix (sc = n,
 * as in the context [tokens, heads*head_dim]), which the device's
 * strided-batched GEMM writes in place. */
static tp_status per_head(tp_attention *a, int ta, int tb, int64_t m, int64_t n, int64_t k,
                          const void *A, int64_t lda, int64_t sa, const void *B, int64_t ldb,
                          int64_t sb, void *C, int64_t ldc, int64_t sc)
{
    if (a->group == 1) /* multi-head: query head j uses local KV head j */
        return tpl_gemm_batched(a->dev, a->dt, ta, tb, m, n, k, 0.0f, A, lda, sa, B, ldb, sb, C,
                                ldc, sc, a->local_heads);
    for (int64_t i = 0; i < a->local_kv; i++) {
        int64_t kh = a->kv_lo + i;
        int64_t j0 = kh * a->group > a->q_lo ? kh * a->group : a->q_lo;
        int64_t j1 = (kh + 1) * a->group < a->q_hi ? (kh + 1) * a->group : a->q_hi;
        j0 -= a->q_lo;
        j1 -= a->q_lo;
        TP_TRY(tpl_gemm_batched(a->dev, a->dt, ta, tb, m, n, k, 0.0f, at(a, A, j0 * sa), lda, sa,
                                at(a, B, i * sb), ldb, 0, at(a, C, j0 * sc), ldc, sc, j1 - j0));
    }
    return TP_OK;
}

/* C_kv = sum over the local query heads j of KV head kv of op(A_j) op(B_j),
 * for every local KV head (C advances by sc per KV head, A/B by sa/sb per
 * query head). Heads are summed in ascending order. */
static tp_status per_kv(tp_attention *a, int ta, int tb, int64_t m, int64_t n, int64_t k,
                        const void *A, int64_t lda, int64_t sa, const void *B, int64_t ldb,
                        int64_t sb, void *C, int64_t ldc, int64_t sc)
{
    if (a->group == 1) /* one query head per KV head: the same shape as per_head */
        return per_head(a, ta, tb, m, n, k, A, lda, sa, B, ldb, sb, C, ldc, sc);
    for (int64_t i = 0; i < a->local_kv; i++) {
        int64_t kh = a->kv_lo + i;
        int64_t j0 = kh * a->group > a->q_lo ? kh * a->group : a->q_lo;
        int64_t j1 = (kh + 1) * a->group < a->q_hi ? (kh + 1) * a->group : a->q_hi;
        for (int64_t j = j0 - a->q_lo; j < j1 - a->q_lo; j++)
            TP_TRY(tpl_gemm(a->dev, a->dt, ta, tb, m, n, k, j == j0 - a->q_lo ? 0.0f : 1.0f,
                            at(a, A, j * sa), lda, at(a, B, j * sb), ldb, at(a, C, i * sc), ldc));
    }
    return TP_OK;
}

static tp_status check_x(tp_attention *a, const char *what, const tp_tensor *x, int64_t want_rows,
                         int64_t *rows)
{
    TP_TRY(tpl_check_act(a->label, what, x, a->dev, a->dt, rows));
    int64_t got = x->shape[x->ndim - 1];
    if (got != a->hidden)
        return tp_set_error(TP_ERR_SHAPE, "%s: %s last dim (hidden) expected %lld, got %lld%s",
                            a->label, what, (long long)a->hidden, (long long)got,
                            got == a->out_rows ? " (that is this rank's heads*head_dim width: "
                                                 "attention takes and returns [tokens, hidden])"
                                               : "");
    if (*rows != want_rows) {
        if (a->sp)
            return tp_set_error(
                TP_ERR_SHAPE,
                "%s: %s has %lld token rows, expected %lld: with sequence_parallel each rank "
                "passes its shard [%lld, %lld) of batch*seq=%lld rows (tp_shard_range)%s",
                a->label, what, (long long)*rows, (long long)want_rows, (long long)a->off[a->rank],
                (long long)a->off[a->rank + 1], (long long)a->tokens,
                *rows == a->tokens ? "; this is the full sequence: did you mean "
                                     "sequence_parallel=false?"
                                   : "");
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: %s has %lld token rows, expected batch*seq = %lld*%lld = %lld%s",
                            a->label, what, (long long)*rows, (long long)a->batch,
                            (long long)a->seq, (long long)want_rows,
                            *rows < want_rows && a->tp_size > 1
                                ? " (is it a sequence shard? then set sequence_parallel=true)"
                                : "");
    }
    return TP_OK;
}

/* ctx = softmax(scale Q K^T) V per local query head for the batch
 * elements [a->attended, b1), from qkv (the probabilities are kept for
 * backward); a->attended becomes b1. */
static tp_status attend_until(tp_attention *a, int64_t b1)
{
    int64_t seq = a->seq, head_dim = a->head_dim, width = a->qkv_width;
    int64_t local_heads = a->local_heads;
    size_t ss = (size_t)(seq * seq);
    void *S = a->scores.ptr;
    float scale = (float)(1.0 / sqrt((double)head_dim));
    for (int64_t bi = a->attended; bi < b1; bi++, a->attended++) {
        const char *Q = at(a, a->qkv.ptr, bi * seq * width), *K = at(a, Q, local_heads * head_dim);
        const char *V = at(a, K, a->local_kv * head_dim);
        char *Pb = at(a, a->probs.ptr, bi * local_heads * (int64_t)ss);
        /* S_j = Q_j K_kv(j)^T  [seq, seq] */
        TP_TRY(per_head(a, 0, 1, seq, seq, head_dim, Q, width, head_dim, K, width, head_dim, S, seq,
                        (int64_t)ss));
        /* P = softmax(scale S) per row, causal within the batch element */
        TP_TRY(
            tp_dev_softmax(a->dev, a->dt, local_heads * seq, seq, S, Pb, scale, a->causal ? 1 : 0));
        /* O_j = P_j V_kv(j) -> ctx columns [j head_dim, (j+1) head_dim) */
        TP_TRY(per_head(a, 0, 0, seq, head_dim, seq, Pb, seq, (int64_t)ss, V, width, head_dim,
                        at(a, a->ctx.ptr, bi * seq * a->out_rows), a->out_rows, head_dim));
    }
    return TP_OK;
}

/* The forward's GEMMs on token rows [r0, r1) (chunks of the overlapped
 * paths, all rows in one call otherwise): qkv = x Wqkv on the gathered x
 * (full; sequence parallel), and the out-projection's partial y = ctx Wo
 * into rows_out (SP: full, free since the QKV GEMM; else y). */
static tp_status qkv_rows(void *ctx, int64_t r0, int64_t r1)
{
    tp_attention *a = ctx;
    int64_t hidden = a->hidden, width = a->qkv_width;
    return tpl_gemm(a->dev, a->dt, 0, 0, r1 - r0, width, hidden, 0.0f,
                    at(a, a->qkv_in, r0 * hidden), hidden, a->wqkv.data, width,
                    at(a, a->qkv.ptr, r0 * width), width);
}

static tp_status out_proj_rows(void *ctx, int64_t r0, int64_t r1)
{
    tp_attention *a = ctx;
    int64_t hidden = a->hidden;
    /* the sequences of these rows attended first (the overlapped path
     * attends lazily, so that earlier chunks' all-reduces run meanwhile) */
    TP_TRY(attend_until(a, (r1 + a->seq - 1) / a->seq));
    return tpl_gemm(a->dev, a->dt, 0, 0, r1 - r0, hidden, a->out_rows, 0.0f,
                    at(a, a->ctx.ptr, r0 * a->out_rows), a->out_rows, a->wo.data, hidden,
                    at(a, a->rows_out, r0 * hidden), hidden);
}

/* overlap >= 2: the collectives in the token chunks of tpl_overlap_chunks
 * (the same bits as one call: docs/determinism.md). Sequence parallel:
 * the all-gather of x pipelined with the QKV GEMM, the out-projection GEMM
 * with the reduce-scatter of y; otherwise the out-projection GEMM with the
 * all-reduce of y. */
static bool overlapped(const tp_attention *a)
{
    return a->overlap >= 2 && a->tokens > 0;
}

static bool sp_overlapped(const tp_attention *a)
{
    return a->sp && overlapped(a);
}

static tp_status forward_body(tp_attention *a, const tp_tensor *x, tp_tensor *y, tpl_inflight *f)
{
    int64_t tokens = a->tokens, hidden = a->hidden, width = a->qkv_width;
    size_t ss = (size_t)(a->seq * a->seq);
    const void *xf = x->data;
    if (a->sp) {
        TP_TRY(tpl_ws_reserve(&a->full, (size_t)(tokens * hidden) * a->es, a->label));
        xf = a->full.ptr;
    }
    a->x_used = a->sp ? NULL : xf;
    a->qkv_in = xf;
    TP_TRY(tpl_ws_reserve(&a->qkv, (size_t)(tokens * width) * a->es, a->label));
    TP_TRY(tpl_ws_reserve(&a->probs, (size_t)a->batch * a->local_heads * ss * a->es, a->label));
    TP_TRY(tpl_ws_reserve(&a->scores, (size_t)a->local_heads * ss * a->es, a->label));
    TP_TRY(tpl_ws_reserve(&a->ctx, (size_t)(tokens * a->out_rows) * a->es, a->label));
    /* qkv = x Wqkv_local (+ b), x all-gathered from the token shards with SP */
    if (sp_overlapped(a)) {
        TP_TRY(tpl_gather_rows_overlapped(a->comm, a->dt, x->data, a->full.ptr, a->off, hidden,
                                          a->counts, a->overlap, qkv_rows, a));
    } else if (a->feed && !a->sp) { /* x's rows made chunk by chunk (the GPT's block chain) */
        int64_t co[TP_OVERLAP_MAX + 1];
        int n = tpl_overlap_chunks(tokens, a->overlap >= 2 ? a->overlap : 1, co);
        for (int c = 0; c < n; c++) {
            TP_TRY(a->feed(a->feed_ctx, co[c], co[c + 1]));
            TP_TRY(qkv_rows(a, co[c], co[c + 1]));
        }
    } else {
        if (a->sp)
            TP_TRY(
                tpl_gather_rows(a->comm, a->dt, x->data, a->full.ptr, a->off, hidden, a->counts));
        TP_TRY(tpl_gemm(a->dev, a->dt, 0, 0, tokens, width, hidden, 0.0f, xf, hidden, a->wqkv.data,
                        width, a->qkv.ptr, width));
    }
    if (a->has_bias)
        TP_TRY(tp_dev_bias_add(a->dev, a->dt, tokens, width, a->qkv.ptr, a->bqkv.data));
    a->attended = 0;
    if (a->sp || !overlapped(a))
        TP_TRY(attend_until(a, a->batch));
    /* y = sum over ranks of ctx Wo_local, then + bo */
    a->rows_out = a->sp ? a->full.ptr : y->data;
    if (!a->sp && overlapped(a) && f) { /* ended and biased by tpl_attention_forward_rows_done */
        return tpl_all_reduce_rows_begin(a->comm, a->dt, y->data, tokens, hidden, a->overlap,
                                         out_proj_rows, a, f);
    } else if (!a->sp && overlapped(a)) {
        TP_TRY(tpl_all_reduce_rows_overlapped(a->comm, a->dt, y->data, tokens, hidden, a->overlap,
                                              out_proj_rows, NULL, a));
    } else if (!a->sp) {
        TP_TRY(out_proj_rows(a, 0, tokens));
        TP_TRY(tp_all_reduce(a->comm, y->data, y->data, (size_t)(tokens * hidden), a->dt, TP_SUM));
    } else if (sp_overlapped(a)) {
        TP_TRY(tpl_reduce_scatter_rows_overlapped(a->comm, a->dt, a->full.ptr, y->data, a->off,
                                                  hidden, a->counts, a->overlap, out_proj_rows, a));
    } else {
        TP_TRY(out_proj_rows(a, 0, tokens));
        TP_TRY(tp_reduce_scatterv(a->comm, a->full.ptr, y->data,
                                  tpl_row_counts(a->off, a->tp_size, hidden, a->counts), a->dt,
                                  TP_SUM));
    }
    if (a->has_bias && a->rows > 0)
        TP_TRY(tp_dev_bias_add(a->dev, a->dt, a->rows, hidden, y->data, a->bo.data));
    return TP_OK;
}

static tp_status forward(tp_attention *a, const tp_tensor *x, int64_t batch, int64_t seq,
                         tp_tensor *y, tpl_inflight *f)
{
    if (f)
        tpl_inflight_clear(f);
    if (!a)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_attention_forward: layer is NULL");
    if (batch <= 0 || seq <= 0)
        return tp_set_error(TP_ERR_SHAPE, "%s: batch (%lld) and seq (%lld) must be >= 1", a->label,
                            (long long)batch, (long long)seq);
    /* tokens and the probabilities' [batch, heads, seq, seq] must be
     * addressable (checked with all heads: the same on every rank) */
    int64_t tokens, ss, hss, bhss;
    TP_TRY(tpl_mul(a->label, "tokens batch x seq", batch, seq, &tokens));
    TP_TRY(tpl_mul(a->label, "scores seq x seq", seq, seq, &ss));
    TP_TRY(tpl_mul(a->label, "scores heads x seq^2", a->heads, ss, &hss));
    TP_TRY(tpl_mul(a->label, "probabilities batch x heads x seq^2", batch, hss, &bhss));
    a->batch = batch;
    a->seq = seq;
    a->tokens = tokens;
    tpl_shard_offsets(a->tokens, a->tp_size, a->off);
    int64_t want = a->sp ? a->off[a->rank + 1] - a->off[a->rank] : a->tokens, rows;
    a->saved = false;
    TP_TRY(check_x(a, "x", x, want, &rows));
    TP_TRY(tpl_prepare_out(a->label, "y", y, x, a->dev, a->dt, a->hidden, ""));
    if (y->data == x->data && (rows > 0 || x->data != NULL))
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: y aliases x; use a separate output", a->label);
    a->rows = rows;
    tp_phase prev = tp_phase_set(a->comm, TP_PHASE_FORWARD);
    tp_status st = forward_body(a, x, y, f);
    tp_phase_set(a->comm, prev);
    if (st != TP_OK)
        return st;
    a->x_saved = *x;
    a->x_saved.owned = false;
    a->saved = true;
    return TP_OK;
}

tp_status tp_attention_forward(tp_attention *a, const tp_tensor *x, int64_t batch, int64_t seq,
                               tp_tensor *y)
{
    return forward(a, x, batch, seq, y, NULL);
}

tp_status tpl_attention_forward_begin(tp_attention *a, const tp_tensor *x, int64_t batch,
                                      int64_t seq, tp_tensor *y, tpl_inflight *f, tpl_rows_fn feed,
                                      void *ctx)
{
    if (!a)
        return forward(a, x, batch, seq, y, f); /* its error */
    a->feed = feed;
    a->feed_ctx = ctx;
    tp_status st = forward(a, x, batch, seq, y, f);
    a->feed = NULL; /* on every return: ctx lives only for this call */
    return st;
}

tp_status tpl_attention_forward_rows_done(tp_attention *a, tpl_inflight *f, int64_t r1)
{
    int64_t r0, hi;
    TP_TRY(tpl_inflight_wait_rows(f, r1, &r0, &hi));
    int64_t rows = hi - r0;
    if (!a->has_bias || rows <= 0)
        return TP_OK;
    tp_phase prev = tp_phase_set(a->comm, TP_PHASE_FORWARD);
    tp_status st = tp_dev_bias_add(a->dev, a->dt, rows, a->hidden,
                                   at(a, a->rows_out, r0 * a->hidden), a->bo.data);
    tp_phase_set(a->comm, prev);
    return st;
}

static tp_status ensure_grads(tp_attention *a)
{
    if (!a->dwqkv.data)
        TP_TRY(tpl_alloc(a->dev, TP_USE_GRADIENTS, a->dt, 2, a->wqkv.shape, &a->dwqkv));
    if (!a->dwo.data)
        TP_TRY(tpl_alloc(a->dev, TP_USE_GRADIENTS, a->dt, 2, a->wo.shape, &a->dwo));
    if (a->has_bias && !a->dbqkv.data)
        TP_TRY(tpl_alloc(a->dev, TP_USE_GRADIENTS, a->dt, 1, a->bqkv.shape, &a->dbqkv));
    if (a->has_bias && !a->dbo.data)
        TP_TRY(tpl_alloc(a->dev, TP_USE_GRADIENTS, a->dt, 1, a->bo.shape, &a->dbo));
    return TP_OK;
}

tp_status tp_attention_zero_grad(tp_attention *a)
{
    if (!a)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_attention_zero_grad: layer is NULL");
    TP_TRY(ensure_grads(a));
    tp_tensor *ts[] = {&a->dwqkv, &a->dwo, &a->dbqkv, &a->dbo};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++)
        if (ts[i]->data)
            TP_TRY(tp_dev_memset(a->dev, ts[i]->data, 0, tp_tensor_bytes(ts[i])));
    return TP_OK;
}

/* ------------------------------------------------------------ backward */

/* What kv_pack does: fill the regions of the heads this rank holds, of
 * those it is the first holder of, or copy the regions back. */
typedef enum {
    KV_PACK,
    KV_PACK_FIRST,
    KV_UNPACK
} kv_mode;

/* The gradient-pack regions of every shared KV head (in ascending order)
 * from this rank's K/V columns kvw [hidden, 2 local_kv head_dim] (row
 * pitch `pitch` elements) and kvb [2 local_kv head_dim]; regions of heads
 * this rank does not hold (KV_PACK_FIRST: does not hold first) stay zero.
 * KV_UNPACK copies the reduced regions back into kvw/kvb. */
static tp_status kv_pack(tp_attention *a, void *pack, void *kvw, int64_t pitch, void *kvb,
                         kv_mode mode)
{
    int64_t n = 0, head_dim = a->head_dim;
    size_t hd_bytes = (size_t)head_dim * a->es;
    bool unpack = mode == KV_UNPACK;
    for (int64_t k = 0; k < a->kv_heads; k++) {
        if (!kv_shared(a, k))
            continue;
        char *r = at(a, pack, n);
        n += a->region;
        if (k < a->kv_lo || k >= a->kv_hi ||
            (mode == KV_PACK_FIRST && rank_of_head(a, k * a->group) != a->rank))
            continue;
        int64_t i = k - a->kv_lo;
        /* region: K block [hidden, head_dim] | V block [hidden, head_dim] | bK | bV */
        for (int part = 0; part < 2; part++) {
            char *blk = at(a, r, part * a->hidden * head_dim);
            char *src = at(a, kvw, (part * a->local_kv + i) * head_dim);
            if (unpack)
                TP_TRY(tp_dev_copy_2d(a->dev, src, (size_t)pitch * a->es, blk, hd_bytes, hd_bytes,
                                      (size_t)a->hidden));
            else
                TP_TRY(tp_dev_copy_2d(a->dev, blk, hd_bytes, src, (size_t)pitch * a->es, hd_bytes,
                                      (size_t)a->hidden));
            if (!a->has_bias)
                continue;
            char *bb = at(a, r, 2 * a->hidden * head_dim + part * head_dim);
            char *bs = at(a, kvb, (part * a->local_kv + i) * head_dim);
            TP_TRY(unpack ? tp_dev_copy_2d(a->dev, bs, 0, bb, 0, hd_bytes, 1)
                          : tp_dev_copy_2d(a->dev, bb, 0, bs, 0, hd_bytes, 1));
        }
    }
    return TP_OK;
}

/* The out-projection's backward: dWo += ctx^T dy, dbo += colsum(dy) (full
 * dy on every rank, so the replicated bias grad is the same everywhere)
 * in _weight_grad; dctx = dy Wo^T. */
static tp_status out_proj_weight_grad(tp_attention *a, const void *dyf)
{
    int64_t tokens = a->tokens, hidden = a->hidden, out_rows = a->out_rows;
    TP_TRY(tpl_gemm(a->dev, a->dt, 1, 0, out_rows, hidden, tokens, 1.0f, a->ctx.ptr, out_rows, dyf,
                    hidden, a->dwo.data, hidden));
    if (a->has_bias)
        TP_TRY(tp_dev_bias_grad(a->dev, a->dt, tokens, hidden, dyf, a->dbo.data));
    return TP_OK;
}

static tp_status out_proj_input_grad(tp_attention *a, const void *dyf)
{
    return tpl_gemm(a->dev, a->dt, 0, 1, a->tokens, a->out_rows, a->hidden, 0.0f, dyf, a->hidden,
                    a->wo.data, a->hidden, a->dctx.ptr, a->out_rows);
}

/* dqkv from dctx through the attention of every batch element and head. */
static tp_status attend_backward(tp_attention *a)
{
    int64_t seq = a->seq, head_dim = a->head_dim, width = a->qkv_width;
    int64_t local_heads = a->local_heads, out_rows = a->out_rows;
    size_t ss = (size_t)(seq * seq);
    void *dS = a->scores.ptr;
    float scale = (float)(1.0 / sqrt((double)head_dim));
    for (int64_t bi = 0; bi < a->batch; bi++) {
        const char *Q = at(a, a->qkv.ptr, bi * seq * width), *K = at(a, Q, local_heads * head_dim);
        const char *V = at(a, K, a->local_kv * head_dim);
        const char *Pb = at(a, a->probs.ptr, bi * local_heads * (int64_t)ss);
        const char *dO = at(a, a->dctx.ptr, bi * seq * out_rows);
        char *dQ = at(a, a->dqkv.ptr, bi * seq * width), *dK = at(a, dQ, local_heads * head_dim);
        char *dV = at(a, dK, a->local_kv * head_dim);
        /* dV_kv = sum_j P_j^T dO_j */
        TP_TRY(per_kv(a, 1, 0, seq, head_dim, seq, Pb, seq, (int64_t)ss, dO, out_rows, head_dim, dV,
                      width, head_dim));
        /* dP_j = dO_j V_kv(j)^T, then dS = scale P (dP - rowsum(dP P)) */
        TP_TRY(per_head(a, 0, 1, seq, seq, head_dim, dO, out_rows, head_dim, V, width, head_dim, dS,
                        seq, (int64_t)ss));
        TP_TRY(tp_dev_softmax_bwd(a->dev, a->dt, local_heads * seq, seq, Pb, dS, dS, scale));
        /* dQ_j = dS_j K_kv(j); dK_kv = sum_j dS_j^T Q_j */
        TP_TRY(per_head(a, 0, 0, seq, head_dim, seq, dS, seq, (int64_t)ss, K, width, head_dim, dQ,
                        width, head_dim));
        TP_TRY(per_kv(a, 1, 0, seq, head_dim, seq, dS, seq, (int64_t)ss, Q, width, head_dim, dK,
                      width, head_dim));
    }
    return TP_OK;
}

/* The QKV projection's parameter gradients from dqkv. With no KV head
 * shared across ranks all are local: dWqkv += x^T dqkv, dbqkv +=
 * colsum(dqkv). Otherwise the Q columns accumulate directly, and this
 * call's K/V contributions go to *kvw [hidden, 2 local_kv head_dim] and
 * *kvb [2 local_kv head_dim] so that the shared heads can be summed across
 * ranks first (add_kv_grads). */
static tp_status qkv_param_backward(tp_attention *a, void **kvw, void **kvb)
{
    int64_t tokens = a->tokens, hidden = a->hidden, width = a->qkv_width;
    int64_t qw = a->local_heads * a->head_dim, kw = 2 * a->local_kv * a->head_dim;
    const void *xf = a->x_used, *dqkv = a->dqkv.ptr;
    if (!a->any_shared) {
        TP_TRY(tpl_gemm(a->dev, a->dt, 1, 0, hidden, width, tokens, 1.0f, xf, hidden, dqkv, width,
                        a->dwqkv.data, width));
        return a->has_bias ? tp_dev_bias_grad(a->dev, a->dt, tokens, width, dqkv, a->dbqkv.data)
                           : TP_OK;
    }
    TP_TRY(tpl_ws_reserve(&a->kvtmp, (size_t)(2 * hidden * kw) * a->es, a->label));
    TP_TRY(tpl_ws_reserve(&a->bscr, (size_t)(width + kw) * a->es, a->label));
    *kvw = a->kvtmp.ptr;
    *kvb = at(a, a->bscr.ptr, width);
    TP_TRY(tpl_gemm(a->dev, a->dt, 1, 0, hidden, qw, tokens, 1.0f, xf, hidden, dqkv, width,
                    a->dwqkv.data, width));
    TP_TRY(tpl_gemm(a->dev, a->dt, 1, 0, hidden, kw, tokens, 0.0f, xf, hidden, at(a, dqkv, qw),
                    width, *kvw, kw));
    if (!a->has_bias)
        return TP_OK;
    void *bs = a->bscr.ptr;
    TP_TRY(tp_dev_memset(a->dev, bs, 0, (size_t)width * a->es));
    TP_TRY(tp_dev_bias_grad(a->dev, a->dt, tokens, width, dqkv, bs));
    TP_TRY(tp_dev_axpby(a->dev, a->dt, qw, 1.0f, bs, 1.0f, a->dbqkv.data));
    return tp_dev_copy_2d(a->dev, *kvb, 0, at(a, bs, qw), 0, (size_t)kw * a->es, 1);
}

/* out [rows, hidden] = dqkv rows [r0, r0 + rows) Wqkv_local^T: this rank's
 * part of the input gradient. */
static tp_status dx_part(tp_attention *a, int64_t r0, int64_t rows, void *out)
{
    int64_t width = a->qkv_width;
    return tpl_gemm(a->dev, a->dt, 0, 1, rows, a->hidden, width, 0.0f,
                    at(a, a->dqkv.ptr, r0 * width), width, a->wqkv.data, width, out, a->hidden);
}

static tp_status dx_all_reduce(tp_attention *a, tp_tensor *dx)
{
    TP_TRY(dx_part(a, 0, a->tokens, dx->data));
    return tp_all_reduce(a->comm, dx->data, dx->data, (size_t)(a->tokens * a->hidden), a->dt,
                         TP_SUM);
}

static tp_status dx_all_reduce_packed(tp_attention *a, tp_tensor *dx, void *kvw, void *kvb)
{
    int64_t n = a->tokens * a->hidden, extra = 0;
    for (int64_t k = 0; k < a->kv_heads; k++)
        extra += kv_shared(a, k) ? a->region : 0;
    size_t bytes = (size_t)(n + extra) * a->es;
    TP_TRY(tpl_ws_reserve(&a->dpack, bytes, a->label));
    TP_TRY(tp_dev_memset(a->dev, a->dpack.ptr, 0, bytes));
    void *buf = a->dpack.ptr;
    TP_TRY(dx_part(a, 0, a->tokens, buf));
    int64_t kw = 2 * a->local_kv * a->head_dim;
    TP_TRY(kv_pack(a, at(a, buf, n), kvw, kw, kvb, KV_PACK));
    TP_TRY(tp_all_reduce(a->comm, buf, buf, (size_t)(n + extra), a->dt, TP_SUM));
    TP_TRY(tp_dev_copy_2d(a->dev, dx->data, 0, buf, 0, (size_t)n * a->es, 1));
    return kv_pack(a, at(a, buf, n), kvw, kw, kvb, KV_UNPACK);
}

/* The overlapped backward's pieces: dx rows [r0, r1) (partial) into
 * rows_out; the QKV parameter gradients with no KV head shared. */
static tp_status dx_rows(void *ctx, int64_t r0, int64_t r1)
{
    tp_attention *a = ctx;
    return dx_part(a, r0, r1 - r0, at(a, a->rows_out, r0 * a->hidden));
}

static tp_status qkv_grads(tp_attention *a)
{
    void *kvw = NULL, *kvb = NULL;
    return qkv_param_backward(a, &kvw, &kvb);
}

static tp_status weight_grads(void *ctx)
{
    tp_attention *a = ctx;
    TP_TRY(out_proj_weight_grad(a, a->dy_used));
    return qkv_grads(a);
}

/* Sequence parallel, overlap >= 2, no KV head shared (as Megatron): x's
 * shards gathered again during the input-gradient GEMM, dx's
 * reduce-scatter in flight during the QKV weight gradient. The same
 * collectives of the same bytes as dx_reduce_scatter's path. */
static tp_status sp_dx_overlapped(tp_attention *a, tp_tensor *dx)
{
    TP_TRY(tpl_ws_reserve(&a->dpack, (size_t)(a->tokens * a->hidden) * a->es, a->label));
    tpl_row_counts(a->off, a->tp_size, a->hidden, a->counts);
    tp_request *req;
    TP_TRY(tp_iall_gatherv(a->comm, a->x_saved.data, a->full.ptr, a->counts, a->dt, &req));
    tp_status st = dx_part(a, 0, a->tokens, a->dpack.ptr);
    tp_status w = tp_wait(req);
    TP_TRY(st != TP_OK ? st : w);
    a->x_used = a->full.ptr;
    TP_TRY(tp_ireduce_scatterv(a->comm, a->dpack.ptr, dx->data, a->counts, a->dt, TP_SUM, &req));
    st = qkv_grads(a);
    w = tp_wait(req);
    return st != TP_OK ? st : w;
}

/* Sequence parallel: reduce-scatter the full partial dx into this rank's token rows. */
static tp_status dx_reduce_scatter(tp_attention *a, tp_tensor *dx)
{
    TP_TRY(tpl_ws_reserve(&a->dpack, (size_t)(a->tokens * a->hidden) * a->es, a->label));
    TP_TRY(dx_part(a, 0, a->tokens, a->dpack.ptr));
    tpl_row_counts(a->off, a->tp_size, a->hidden, a->counts);
    return tp_reduce_scatterv(a->comm, a->dpack.ptr, dx->data, a->counts, a->dt, TP_SUM);
}

/* Sequence parallel with shared KV heads: after dx's reduce-scatter, one
 * all-reduce of every shared head's region (zeros from the ranks not
 * holding it), so every holder gets the same bits. */
static tp_status kv_all_reduce(tp_attention *a, void *kvw, int64_t pitch, void *kvb, kv_mode mode)
{
    int64_t extra = 0;
    for (int64_t k = 0; k < a->kv_heads; k++)
        extra += kv_shared(a, k) ? a->region : 0;
    size_t bytes = (size_t)extra * a->es;
    TP_TRY(tpl_ws_reserve(&a->dctx, bytes, a->label)); /* dctx is free by now */
    TP_TRY(tp_dev_memset(a->dev, a->dctx.ptr, 0, bytes));
    void *buf = a->dctx.ptr;
    TP_TRY(kv_pack(a, buf, kvw, pitch, kvb, mode));
    TP_TRY(tp_all_reduce(a->comm, buf, buf, (size_t)extra, a->dt, TP_SUM));
    return kv_pack(a, buf, kvw, pitch, kvb, KV_UNPACK);
}

/* After the DP reduction: every holder of a shared KV head takes its first
 * holder's K/V gradient (x + 0 + ... = x: the sum of one rank's values and
 * zeros is that rank's values, bit for bit). The DP sums of the copies on
 * different TP ranks lie at different offsets of different calls, which a
 * ring backend sums in different orders. */
tp_status tpl_attention_finalize_grads(tp_attention *a)
{
    if (!a->any_shared || !a->dwqkv.data)
        return TP_OK;
    int64_t qw = a->local_heads * a->head_dim;
    tp_phase prev = tp_phase_set(a->comm, TP_PHASE_BACKWARD);
    tp_status st = kv_all_reduce(a, at(a, a->dwqkv.data, qw), a->qkv_width,
                                 a->has_bias ? at(a, a->dbqkv.data, qw) : NULL, KV_PACK_FIRST);
    tp_phase_set(a->comm, prev);
    return st;
}

/* dWqkv[:, K/V columns] += kvw, dbqkv[K/V] += kvb (now complete for every
 * held head): copy the strided block out, add, copy back. */
static tp_status add_kv_grads(tp_attention *a, void *kvw, const void *kvb)
{
    int64_t hidden = a->hidden, width = a->qkv_width;
    int64_t qw = a->local_heads * a->head_dim, kw = 2 * a->local_kv * a->head_dim;
    char *tmp = at(a, kvw, hidden * kw), *dkv = at(a, a->dwqkv.data, qw);
    TP_TRY(tp_dev_copy_2d(a->dev, tmp, (size_t)kw * a->es, dkv, (size_t)width * a->es,
                          (size_t)kw * a->es, (size_t)hidden));
    TP_TRY(tp_dev_axpby(a->dev, a->dt, hidden * kw, 1.0f, kvw, 1.0f, tmp));
    TP_TRY(tp_dev_copy_2d(a->dev, dkv, (size_t)width * a->es, tmp, (size_t)kw * a->es,
                          (size_t)kw * a->es, (size_t)hidden));
    if (!a->has_bias)
        return TP_OK;
    return tp_dev_axpby(a->dev, a->dt, kw, 1.0f, kvb, 1.0f, at(a, a->dbqkv.data, qw));
}

static tp_status backward_body(tp_attention *a, const tp_tensor *dy, tp_tensor *dx)
{
    int64_t tokens = a->tokens, hidden = a->hidden;
    size_t ss = (size_t)(a->seq * a->seq);
    const void *dyf = dy->data;
    if (a->sp) { /* the row-parallel exit's backward: gather dy's shards */
        TP_TRY(tpl_ws_reserve(&a->full, (size_t)(tokens * hidden) * a->es, a->label));
        TP_TRY(tpl_gather_rows(a->comm, a->dt, dy->data, a->full.ptr, a->off, hidden, a->counts));
        dyf = a->full.ptr;
    }
    TP_TRY(tpl_ws_reserve(&a->dctx, (size_t)(tokens * a->out_rows) * a->es, a->label));
    TP_TRY(tpl_ws_reserve(&a->dqkv, (size_t)(tokens * a->qkv_width) * a->es, a->label));
    TP_TRY(tpl_ws_reserve(&a->scores, (size_t)a->local_heads * ss * a->es, a->label));
    /* overlapped, both weight gradients (out-projection and QKV) are
     * computed while dx's chunk all-reduces are in flight; dx's chunks are
     * written before they read x and dy: not into either */
    if (dx && overlapped(a) && a->dx_reduce == DX_ALL_REDUCE && dx->data != a->x_used &&
        dx->data != dyf) {
        TP_TRY(out_proj_input_grad(a, dyf));
        TP_TRY(attend_backward(a));
        a->rows_out = dx->data;
        a->dy_used = dyf;
        return tpl_all_reduce_rows_overlapped(a->comm, a->dt, dx->data, tokens, hidden, a->overlap,
                                              dx_rows, weight_grads, a);
    }
    TP_TRY(out_proj_weight_grad(a, dyf));
    TP_TRY(out_proj_input_grad(a, dyf));
    TP_TRY(attend_backward(a));
    if (dx && overlapped(a) && a->dx_reduce == DX_REDUCE_SCATTER)
        return sp_dx_overlapped(a, dx);
    if (a->sp) { /* x's shards again (dy's gathered rows are spent): the same bytes as forward */
        TP_TRY(tpl_gather_rows(a->comm, a->dt, a->x_saved.data, a->full.ptr, a->off, hidden,
                               a->counts));
        a->x_used = a->full.ptr;
    }
    void *kvw = NULL, *kvb = NULL;
    TP_TRY(qkv_param_backward(a, &kvw, &kvb));
    if (!dx)
        return TP_OK; /* refused earlier when KV heads are shared */
    /* dx = sum over ranks of dqkv Wqkv_local^T; the shared KV heads'
     * gradient parts ride in the same all-reduce, or (SP) follow in one */
    switch (a->dx_reduce) {
        case DX_ALL_REDUCE: return dx_all_reduce(a, dx);
        case DX_REDUCE_SCATTER: return dx_reduce_scatter(a, dx);
        case DX_ALL_REDUCE_PACKED:
            TP_TRY(dx_all_reduce_packed(a, dx, kvw, kvb));
            return add_kv_grads(a, kvw, kvb);
        case DX_REDUCE_SCATTER_KV:
            TP_TRY(dx_reduce_scatter(a, dx));
            TP_TRY(kv_all_reduce(a, kvw, 2 * a->local_kv * a->head_dim, kvb, KV_PACK));
            return add_kv_grads(a, kvw, kvb);
    }
    return tp_set_error(TP_ERR_INTERNAL, "%s: bad dx reduction %d", a->label, (int)a->dx_reduce);
}

tp_status tp_attention_backward(tp_attention *a, const tp_tensor *dy, tp_tensor *dx)
{
    if (!a)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_attention_backward: layer is NULL");
    if (!a->saved)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "%s: backward called before forward (it needs the saved activations)",
                            a->label);
    int64_t rows;
    TP_TRY(check_x(a, "dy", dy, a->rows, &rows));
    if (!dx && a->any_shared)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "%s: dx is NULL but this layer's KV heads are shared across ranks, "
                            "and their gradients are summed in the input-gradient collective; "
                            "pass a dx (it may be discarded)",
                            a->label);
    if (dx) {
        TP_TRY(tpl_prepare_out(a->label, "dx", dx, &a->x_saved, a->dev, a->dt, a->hidden, ""));
        if (dx->data == dy->data && (rows > 0 || dy->data != NULL))
            return tp_set_error(TP_ERR_INVALID_ARG, "%s: dx aliases dy; use a separate buffer",
                                a->label);
    }
    TP_TRY(ensure_grads(a));
    tp_phase prev = tp_phase_set(a->comm, TP_PHASE_BACKWARD);
    tp_status st = backward_body(a, dy, dx);
    tp_phase_set(a->comm, prev);
    return st;
}

/* ---------------------------------------------------------- full tensors */

/* Scatter the gathered [weight rows | bias row] blocks of every rank (host,
 * rank-major, widths wid) into the master QKV weight hw [hidden, fw] and
 * bias hb [fw] (either may be NULL). */
static void place_qkv(const tp_attention *a, const float *host, const int64_t *wid, float *hw,
                      float *hb)
{
    int64_t hidden = a->hidden, fw = (a->heads + 2 * a->kv_heads) * a->head_dim;
    size_t pos = 0;
    for (int i = 0; i < a->tp_size; i++) {
        int64_t ql, qh, kl, kh;
        ranges_of(a, i, &ql, &qh, &kl, &kh);
        const float *blk = host + pos;
        for (int64_t r = 0; r <= hidden; r++)
            for (int64_t c = 0; c < wid[i]; c++) {
                int64_t fc = full_col(a, ql, kl, qh - ql, kh - kl, c);
                float v = blk[r * wid[i] + c];
                if (r < hidden && hw)
                    hw[r * fw + fc] = v;
                else if (r == hidden && hb && a->has_bias)
                    hb[fc] = v;
            }
        pos += (size_t)(wid[i] * (hidden + 1));
    }
}

static tp_status get_full(tp_attention *a, const tp_tensor *wqkv, const tp_tensor *bqkv,
                          const tp_tensor *wo, const tp_tensor *bo, float *hw, float *hb,
                          float *how, float *hob)
{
    int tp_size = a->tp_size;
    int64_t head_dim = a->head_dim, hidden = a->hidden;
    int64_t *wid = malloc(sizeof(int64_t) * (size_t)tp_size);
    size_t total = 0;
    if (!wid)
        return tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory", a->label);
    for (int i = 0; i < tp_size; i++) {
        int64_t ql, qh, kl, kh;
        ranges_of(a, i, &ql, &qh, &kl, &kh);
        wid[i] = (qh - ql + 2 * (kh - kl)) * head_dim;
        total += (size_t)(wid[i] * (hidden + 1));
    }
    size_t own = (size_t)(hidden * a->qkv_width);
    size_t need = total + (size_t)(hidden * a->heads * head_dim) + own + (size_t)a->qkv_width;
    float *host = NULL;
    tp_status st;
    TP_TRY_GOTO(tpl_ws_reserve(&a->kvtmp, need * a->es, a->label), st, out);
    host = malloc(total * XF_ES);
    if (!host) {
        st = tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory", a->label);
        goto out;
    }
    char *dst = a->kvtmp.ptr, *dso = at(a, dst, (int64_t)total);
    char *mine = at(a, dso, hidden * a->heads * head_dim);
    /* each rank's [weight rows | bias row] block, gathered rank-major */
    TP_TRY_GOTO(tp_dev_copy_2d(a->dev, mine, 0, wqkv->data, 0, own * a->es, 1), st, out);
    if (a->has_bias)
        TP_TRY_GOTO(tp_dev_copy_2d(a->dev, at(a, mine, (int64_t)own), 0, bqkv->data, 0,
                                   (size_t)a->qkv_width * a->es, 1),
                    st, out);
    else
        TP_TRY_GOTO(
            tp_dev_memset(a->dev, at(a, mine, (int64_t)own), 0, (size_t)a->qkv_width * a->es), st,
            out);
    for (int i = 0; i < tp_size; i++)
        a->counts[i] = (size_t)(wid[i] * (hidden + 1));
    TP_TRY_GOTO(tp_all_gatherv(a->comm, mine, dst, a->counts, a->dt), st, out);
    TP_TRY_GOTO(tpl_download_f32(a->dev, a->dt, host, dst, total), st, out);
    place_qkv(a, host, wid, hw, hb);
    for (int i = 0; i < tp_size; i++) {
        int64_t ql, qh;
        tp_shard_range(a->heads, tp_size, i, &ql, &qh);
        a->counts[i] = (size_t)((qh - ql) * head_dim * hidden);
    }
    TP_TRY_GOTO(tp_all_gatherv(a->comm, wo->data, dso, a->counts, a->dt), st, out);
    if (how)
        TP_TRY_GOTO(
            tpl_download_f32(a->dev, a->dt, how, dso, (size_t)(a->heads * head_dim * hidden)), st,
            out);
    if (hob && a->has_bias)
        TP_TRY_GOTO(tpl_download_f32(a->dev, a->dt, hob, bo->data, (size_t)hidden), st, out);
out:
    free(host);
    free(wid);
    return st;
}

tp_status tp_attention_get_full(tp_attention *a, float *qkv_w, float *qkv_b, float *out_w,
                                float *out_b)
{
    if (!a)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_attention_get_full: layer is NULL");
    return get_full(a, &a->wqkv, &a->bqkv, &a->wo, &a->bo, qkv_w, qkv_b, out_w, out_b);
}

tp_status tp_attention_get_full_grad(tp_attention *a, float *qkv_w, float *qkv_b, float *out_w,
                                     float *out_b)
{
    if (!a)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_attention_get_full_grad: layer is NULL");
    TP_TRY(ensure_grads(a));
    return get_full(a, &a->dwqkv, &a->dbqkv, &a->dwo, &a->dbo, qkv_w, qkv_b, out_w, out_b);
}
