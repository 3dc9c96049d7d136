/*
 * attention.c — ParallelAttention: fused QKV column-parallel linear (whole
 * heads per rank, GQA/MQA with replicated KV heads), causal scaled
 * dot-product attention per head, row-parallel out-projection.
 *
 * The GEMMs are composed here rather than through tp_linear because the
 * QKV shard is not a contiguous column range of the master weight (Q, K and
 * V blocks; replicated KV heads), and because sequence parallelism needs a
 * reduce-scatter where the row-parallel layer all-reduces.
 *
 * Per batch element and head the Q/K/V operands are views into the local
 * QKV activation [tokens, W] (row pitch W, head stride head_dim), so no
 * reshapes: scores [Hl, s, s] come from one strided-batched GEMM over heads
 * (multi-head) or one per KV head with a zero stride on K (grouped).
 */
#include "xf-internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tp_attention {
    tp_comm *comm;
    tp_device *dev;
    char *label;
    int T, rank;
    int64_t hidden, H, KV, hd, g; /* g = H / KV query heads per KV head */
    int64_t hl, q_lo, q_hi;       /* query heads of this rank */
    int64_t kv_lo, kv_hi, kvl;    /* KV heads of this rank */
    int64_t W;                    /* local QKV width (hl + 2 kvl) hd */
    int64_t ow;                   /* local out-projection rows hl hd */
    bool has_bias, causal, sp, any_shared;
    int64_t region;               /* floats per shared KV head in a gradient pack */
    tp_tensor wqkv, bqkv, wo, bo, dwqkv, dbqkv, dwo, dbo;
    int64_t *off;   /* T+1 token-row shard offsets (sequence parallel) */
    size_t *counts; /* T */
    tpl_ws xfull, qkv, probs, scores, ctx, yfull, dctx, dqkv, dpack, kvtmp, bscr;
    /* saved by forward */
    bool saved;
    const void *x_used; /* full input rows [tokens, hidden] (x or xfull) */
    tp_tensor x_saved;  /* the caller's x (for dx's shape) */
    int64_t b, s, tokens, rows; /* rows: this rank's rows of x (tokens without SP) */
};

/* Query heads [q_lo, q_hi) and KV heads [kv_lo, kv_hi) of rank i. */
static void ranges_of(const tp_attention *a, int i, int64_t *qlo, int64_t *qhi, int64_t *kvlo,
                      int64_t *kvhi)
{
    int64_t lo = i * a->hl, hi = lo + a->hl;
    *qlo = lo;
    *qhi = hi;
    *kvlo = lo / a->g;
    *kvhi = (hi - 1) / a->g + 1;
}

/* Is KV head k held by more than one rank? */
static bool kv_shared(const tp_attention *a, int64_t k)
{
    return (k * a->g) / a->hl != ((k + 1) * a->g - 1) / a->hl;
}

static bool rank_holds(const tp_attention *a, int i, int64_t k)
{
    int64_t ql, qh, kl, kh;
    ranges_of(a, i, &ql, &qh, &kl, &kh);
    return k >= kl && k < kh;
}

void tp_attention_free(tp_attention *a)
{
    if (!a)
        return;
    tp_tensor *ts[] = {&a->wqkv, &a->bqkv, &a->wo, &a->bo, &a->dwqkv, &a->dbqkv, &a->dwo, &a->dbo};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++)
        tp_tensor_release(ts[i]);
    tpl_ws *ws[] = {&a->xfull, &a->qkv,  &a->probs, &a->scores, &a->ctx, &a->yfull,
                   &a->dctx,  &a->dqkv, &a->dpack, &a->kvtmp,  &a->bscr};
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
        *head_dim = a ? a->hd : 0;
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
static int64_t full_col(const tp_attention *a, int64_t qlo, int64_t kvlo, int64_t hl, int64_t kvl,
                        int64_t c)
{
    int64_t hd = a->hd, head = c / hd, e = c % hd;
    if (head < hl)
        return (qlo + head) * hd + e;
    head -= hl;
    if (head < kvl)
        return (a->H + kvlo + head) * hd + e;
    head -= kvl;
    return (a->H + a->KV + kvlo + head) * hd + e;
}

static tp_status check_config(tp_attention *a, const tp_attention_config *cfg)
{
    const char *who = a->label;
    int T = a->T;
    if (cfg->hidden <= 0 || cfg->heads <= 0 || cfg->kv_heads < 0 || cfg->head_dim < 0)
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: hidden (%lld) and heads (%lld) must be >= 1, kv_heads (%lld) and "
                            "head_dim (%lld) >= 0 (0 = default)",
                            who, (long long)cfg->hidden, (long long)cfg->heads,
                            (long long)cfg->kv_heads, (long long)cfg->head_dim);
    int64_t H = cfg->heads, hidden = cfg->hidden;
    int64_t KV = cfg->kv_heads ? cfg->kv_heads : H;
    if (KV > H || H % KV != 0)
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: kv_heads=%lld must divide heads=%lld (grouped-query attention "
                            "shares each KV head among heads/kv_heads query heads); use a divisor "
                            "of %lld, 1 for multi-query or %lld (=heads) for multi-head",
                            who, (long long)KV, (long long)H, (long long)H, (long long)H);
    if (!cfg->head_dim && hidden % H != 0) {
        /* nearest head counts that divide hidden and split evenly over T */
        int64_t below = 0, above = 0;
        for (int64_t d = H - 1; d >= 1 && !below; d--)
            if (hidden % d == 0 && d % T == 0)
                below = d;
        for (int64_t d = H + 1; d <= hidden && !above; d++)
            if (hidden % d == 0 && d % T == 0)
                above = d;
        char alt[160] = "";
        if (below && above)
            snprintf(alt, sizeof alt, " (e.g. heads=%lld or %lld at T=%d)", (long long)below,
                     (long long)above, T);
        else if (below || above)
            snprintf(alt, sizeof alt, " (e.g. heads=%lld at T=%d)", (long long)(below ? below : above),
                     T);
        int64_t hd = hidden / H > 0 ? hidden / H : 1;
        return tp_set_error(
            TP_ERR_SHAPE,
            "%s: hidden=%lld is not divisible by heads=%lld (%lld / %lld = %.3f), so head_dim "
            "cannot default to hidden/heads%s; ways out: give head_dim explicitly (e.g. "
            "head_dim=%lld: Q/K/V are then heads*head_dim=%lld wide and the out-projection maps "
            "them back to hidden), or choose heads dividing hidden%s",
            who, (long long)hidden, (long long)H, (long long)hidden, (long long)H,
            (double)hidden / (double)H,
            H % T == 0 ? " (heads is divisible by T, that part is fine)" : "", (long long)hd,
            (long long)(hd * H), alt);
    }
    if (H % T != 0)
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: heads=%lld is not divisible by T=%d (%lld %% %d = %lld): "
                            "attention splits whole heads across ranks; ways out: choose T dividing "
                            "heads (a divisor of %lld), or change heads to a multiple of %d",
                            who, (long long)H, T, (long long)H, T, (long long)(H % T), (long long)H,
                            T);
    /* every parameter's size fits: (heads + 2 kv_heads) head_dim columns of
     * hidden rows bounds them all (KV <= H) */
    int64_t hd = cfg->head_dim ? cfg->head_dim : hidden / H, h3, fw, nw;
    tp_status st = tpl_mul(who, "3 x heads", 3, H, &h3);
    if (st == TP_OK)
        st = tpl_mul(who, "QKV width (heads + 2 kv_heads) x head_dim", H + 2 * KV, hd, &fw);
    if (st == TP_OK)
        st = tpl_mul(who, "QKV weight hidden x QKV width", hidden, fw, &nw);
    if (st != TP_OK)
        return st;
    a->hidden = hidden;
    a->H = H;
    a->KV = KV;
    a->hd = hd;
    a->g = H / KV;
    a->hl = H / T;
    return TP_OK;
}

static tp_status alloc_params(tp_attention *a, const tp_attention_config *cfg)
{
    tp_status st;
    int64_t fw = (a->H + 2 * a->KV) * a->hd; /* full QKV width */
    int64_t fo = a->H * a->hd;               /* full out-projection rows */
    size_t n1 = (size_t)(a->hidden * a->W), n2 = (size_t)(a->ow * a->hidden);
    size_t hn = n1 > n2 ? n1 : n2;
    if ((size_t)fw > hn)
        hn = (size_t)fw;
    float *host = malloc(hn * XF_ES), *row = malloc((size_t)fw * XF_ES);
    if (!host || !row) {
        free(host);
        free(row);
        return tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory for the weights", a->label);
    }
    float bq = (float)(1.0 / sqrt((double)a->hidden)), bo = (float)(1.0 / sqrt((double)fo));
    /* QKV weight: local column c is master column full_col(c); the Q, K
     * and V blocks are contiguous column ranges of the master */
    st = tp_tensor_alloc2(a->dev, TP_F32, a->hidden, a->W, &a->wqkv);
    int64_t blk_lo[3] = {a->q_lo * a->hd, (a->H + a->kv_lo) * a->hd,
                         (a->H + a->KV + a->kv_lo) * a->hd};
    int64_t blk_w[3] = {a->hl * a->hd, a->kvl * a->hd, a->kvl * a->hd};
    for (int part = 0, c0 = 0; st == TP_OK && part < 3; c0 += (int)blk_w[part], part++) {
        float *tmp = malloc((size_t)(a->hidden * blk_w[part]) * XF_ES + 1);
        if (!tmp) {
            st = tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory", a->label);
            break;
        }
        if (cfg->full_qkv_weight) {
            tpl_host_block(cfg->full_qkv_weight, fw, 0, a->hidden, blk_lo[part],
                                blk_lo[part] + blk_w[part], tmp);
        } else {
            tp_master_fill(cfg->seed, cfg->tensor_id, fw, 0, a->hidden, blk_lo[part],
                           blk_lo[part] + blk_w[part], bq, tmp);
        }
        for (int64_t r = 0; r < a->hidden; r++)
            memcpy(host + r * a->W + c0, tmp + r * blk_w[part], (size_t)blk_w[part] * XF_ES);
        free(tmp);
    }
    if (st == TP_OK)
        st = tp_tensor_upload(&a->wqkv, host);
    if (st == TP_OK && a->has_bias) {
        if (cfg->full_qkv_bias)
            memcpy(row, cfg->full_qkv_bias, (size_t)fw * XF_ES);
        else
            tp_master_fill(cfg->seed, cfg->tensor_id + 1, fw, 0, 1, 0, fw, bq, row);
        for (int64_t c = 0; c < a->W; c++)
            host[c] = row[full_col(a, a->q_lo, a->kv_lo, a->hl, a->kvl, c)];
        st = tp_tensor_alloc(a->dev, TP_F32, 1, &a->W, &a->bqkv);
        if (st == TP_OK)
            st = tp_tensor_upload(&a->bqkv, host);
    }
    /* out-projection: rows [q_lo hd, q_hi hd) of [H hd, hidden] */
    if (st == TP_OK)
        st = tp_tensor_alloc2(a->dev, TP_F32, a->ow, a->hidden, &a->wo);
    if (st == TP_OK) {
        int64_t r0 = a->q_lo * a->hd;
        if (cfg->full_out_weight)
            memcpy(host, cfg->full_out_weight + r0 * a->hidden, n2 * XF_ES);
        else
            tp_master_fill(cfg->seed, cfg->tensor_id + 2, a->hidden, r0, r0 + a->ow, 0, a->hidden,
                           bo, host);
        st = tp_tensor_upload(&a->wo, host);
    }
    if (st == TP_OK && a->has_bias) {
        if (cfg->full_out_bias)
            memcpy(host, cfg->full_out_bias, (size_t)a->hidden * XF_ES);
        else
            tp_master_fill(cfg->seed, cfg->tensor_id + 3, a->hidden, 0, 1, 0, a->hidden, bo, host);
        st = tp_tensor_alloc(a->dev, TP_F32, 1, &a->hidden, &a->bo);
        if (st == TP_OK)
            st = tp_tensor_upload(&a->bo, host);
    }
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
    a->T = tp_comm_size(comm);
    a->rank = tp_comm_rank(comm);
    a->label = tpl_label("ParallelAttention", cfg->name, comm);
    a->has_bias = cfg->bias;
    a->causal = cfg->causal;
    a->sp = cfg->sequence_parallel;
    tpl_ws *ws[] = {&a->xfull, &a->qkv,  &a->probs, &a->scores, &a->ctx, &a->yfull,
                   &a->dctx,  &a->dqkv, &a->dpack, &a->kvtmp,  &a->bscr};
    for (size_t i = 0; i < sizeof ws / sizeof *ws; i++)
        ws[i]->dev = a->dev;
    a->off = malloc(sizeof(int64_t) * (size_t)(a->T + 1));
    a->counts = malloc(sizeof(size_t) * (size_t)a->T);
    tp_status st;
    if (!a->label || !a->off || !a->counts) {
        st = tp_set_error(TP_ERR_NO_MEMORY, "ParallelAttention create: out of host memory");
        goto fail;
    }
    st = check_config(a, cfg);
    if (st != TP_OK)
        goto fail;
    ranges_of(a, a->rank, &a->q_lo, &a->q_hi, &a->kv_lo, &a->kv_hi);
    a->kvl = a->kv_hi - a->kv_lo;
    a->W = (a->hl + 2 * a->kvl) * a->hd;
    a->ow = a->hl * a->hd;
    for (int64_t k = 0; k < a->KV; k++)
        if (kv_shared(a, k))
            a->any_shared = true;
    a->region = 2 * a->hd * (a->hidden + (a->has_bias ? 1 : 0));
    st = alloc_params(a, cfg);
    if (st != TP_OK)
        goto fail;
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
                          const float *A, int64_t lda, int64_t sa, const float *B, int64_t ldb,
                          int64_t sb, float *C, int64_t ldc, int64_t sc)
{
    if (a->g == 1) /* multi-head: query head j uses local KV head j */
        return tpl_gemm_batched(a->dev, TP_F32, ta, tb, m, n, k, 0.0f, A, lda, sa, B, ldb, sb,
                                     C, ldc, sc, a->hl);
    tp_status st = TP_OK;
    for (int64_t i = 0; i < a->kvl && st == TP_OK; i++) {
        int64_t kh = a->kv_lo + i;
        int64_t j0 = kh * a->g > a->q_lo ? kh * a->g : a->q_lo;
        int64_t j1 = (kh + 1) * a->g < a->q_hi ? (kh + 1) * a->g : a->q_hi;
        j0 -= a->q_lo;
        j1 -= a->q_lo;
        st = tpl_gemm_batched(a->dev, TP_F32, ta, tb, m, n, k, 0.0f, A + j0 * sa, lda, sa,
                                   B + i * sb, ldb, 0, C + j0 * sc, ldc, sc, j1 - j0);
    }
    return st;
}

/* C_kv = sum over the local query heads j of KV head kv of op(A_j) op(B_j),
 * for every local KV head (C advances by sc per KV head, A/B by sa/sb per
 * query head). Heads are summed in ascending order. */
static tp_status per_kv(tp_attention *a, int ta, int tb, int64_t m, int64_t n, int64_t k,
                        const float *A, int64_t lda, int64_t sa, const float *B, int64_t ldb,
                        int64_t sb, float *C, int64_t ldc, int64_t sc)
{
    if (a->g == 1) /* one query head per KV head: the same shape as per_head */
        return per_head(a, ta, tb, m, n, k, A, lda, sa, B, ldb, sb, C, ldc, sc);
    for (int64_t i = 0; i < a->kvl; i++) {
        int64_t kh = a->kv_lo + i;
        int64_t j0 = kh * a->g > a->q_lo ? kh * a->g : a->q_lo;
        int64_t j1 = (kh + 1) * a->g < a->q_hi ? (kh + 1) * a->g : a->q_hi;
        for (int64_t j = j0 - a->q_lo; j < j1 - a->q_lo; j++) {
            tp_status st =
                tpl_gemm(a->dev, TP_F32, ta, tb, m, n, k, j == j0 - a->q_lo ? 0.0f : 1.0f,
                              A + j * sa, lda, B + j * sb, ldb, C + i * sc, ldc);
            if (st != TP_OK)
                return st;
        }
    }
    return TP_OK;
}

static tp_status check_x(tp_attention *a, const char *what, const tp_tensor *x, int64_t want_rows,
                         int64_t *rows)
{
    tp_status st = tpl_check_act(a->label, what, x, a->dev, TP_F32, rows);
    if (st != TP_OK)
        return st;
    int64_t got = x->shape[x->ndim - 1];
    if (got != a->hidden)
        return tp_set_error(TP_ERR_SHAPE, "%s: %s last dim (hidden) expected %lld, got %lld%s",
                            a->label, what, (long long)a->hidden, (long long)got,
                            got == a->ow ? " (that is this rank's heads*head_dim width: attention "
                                           "takes and returns [tokens, hidden])"
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
                            a->label, what, (long long)*rows, (long long)a->b, (long long)a->s,
                            (long long)want_rows,
                            *rows < want_rows && a->T > 1
                                ? " (is it a sequence shard? then set sequence_parallel=true)"
                                : "");
    }
    return TP_OK;
}

static tp_status forward_body(tp_attention *a, const tp_tensor *x, tp_tensor *y)
{
    tp_status st;
    int64_t b = a->b, s = a->s, N = a->tokens, hd = a->hd, W = a->W, hl = a->hl;
    size_t ss = (size_t)(s * s);
    const float *xf = x->data;
    if (a->sp) { /* all-gather the token shards into the full input */
        st = tpl_ws_reserve(&a->xfull, (size_t)(N * a->hidden) * XF_ES, a->label);
        if (st == TP_OK)
            st = tpl_gather_rows(a->comm, TP_F32, x->data, a->xfull.ptr, a->off, a->hidden,
                                      a->counts);
        if (st != TP_OK)
            return st;
        xf = a->xfull.ptr;
    }
    a->x_used = xf;
    if ((st = tpl_ws_reserve(&a->qkv, (size_t)(N * W) * XF_ES, a->label)) ||
        (st = tpl_ws_reserve(&a->probs, (size_t)b * hl * ss * XF_ES, a->label)) ||
        (st = tpl_ws_reserve(&a->scores, (size_t)hl * ss * XF_ES, a->label)) ||
        (st = tpl_ws_reserve(&a->ctx, (size_t)(N * a->ow) * XF_ES, a->label)))
        return st;
    float *qkv = a->qkv.ptr, *P = a->probs.ptr, *S = a->scores.ptr, *ctx = a->ctx.ptr;
    /* qkv = x Wqkv_local (+ b) */
    st = tpl_gemm(a->dev, TP_F32, 0, 0, N, W, a->hidden, 0.0f, xf, a->hidden, a->wqkv.data, W,
                       qkv, W);
    if (st == TP_OK && a->has_bias)
        st = tp_dev_bias_add(a->dev, TP_F32, N, W, qkv, a->bqkv.data);
    float scale = (float)(1.0 / sqrt((double)hd));
    for (int64_t bi = 0; bi < b && st == TP_OK; bi++) {
        const float *Q = qkv + bi * s * W, *K = Q + hl * hd, *V = K + a->kvl * hd;
        float *Pb = P + (size_t)bi * hl * ss;
        /* S_j = Q_j K_kv(j)^T  [s, s] */
        st = per_head(a, 0, 1, s, s, hd, Q, W, hd, K, W, hd, S, s, (int64_t)ss);
        /* P = softmax(scale S) per row, causal within the batch element */
        if (st == TP_OK)
            st = tp_dev_softmax(a->dev, TP_F32, hl * s, s, S, Pb, scale, a->causal ? 1 : 0);
        /* O_j = P_j V_kv(j) -> ctx columns [j hd, (j+1) hd) */
        if (st == TP_OK)
            st = per_head(a, 0, 0, s, hd, s, Pb, s, (int64_t)ss, V, W, hd, ctx + bi * s * a->ow,
                          a->ow, hd);
    }
    if (st != TP_OK)
        return st;
    /* y = sum over ranks of ctx Wo_local, then + bo */
    int64_t rows = a->rows;
    if (!a->sp) {
        st = tpl_gemm(a->dev, TP_F32, 0, 0, N, a->hidden, a->ow, 0.0f, ctx, a->ow, a->wo.data,
                           a->hidden, y->data, a->hidden);
        if (st == TP_OK)
            st = tp_all_reduce(a->comm, y->data, y->data, (size_t)(N * a->hidden), TP_F32, TP_SUM);
    } else {
        st = tpl_ws_reserve(&a->yfull, (size_t)(N * a->hidden) * XF_ES, a->label);
        if (st == TP_OK)
            st = tpl_gemm(a->dev, TP_F32, 0, 0, N, a->hidden, a->ow, 0.0f, ctx, a->ow,
                               a->wo.data, a->hidden, a->yfull.ptr, a->hidden);
        for (int i = 0; i < a->T; i++)
            a->counts[i] = (size_t)((a->off[i + 1] - a->off[i]) * a->hidden);
        if (st == TP_OK)
            st = tp_reduce_scatterv(a->comm, a->yfull.ptr, y->data, a->counts, TP_F32, TP_SUM);
    }
    if (st == TP_OK && a->has_bias && rows > 0)
        st = tp_dev_bias_add(a->dev, TP_F32, rows, a->hidden, y->data, a->bo.data);
    return st;
}

tp_status tp_attention_forward(tp_attention *a, const tp_tensor *x, int64_t batch, int64_t seq,
                               tp_tensor *y)
{
    if (!a)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_attention_forward: layer is NULL");
    if (batch <= 0 || seq <= 0)
        return tp_set_error(TP_ERR_SHAPE, "%s: batch (%lld) and seq (%lld) must be >= 1",
                            a->label, (long long)batch, (long long)seq);
    /* tokens and the probabilities' [batch, heads, seq, seq] must be
     * addressable (checked with all heads: the same on every rank) */
    int64_t tokens, ss, hss, bhss;
    tp_status st = tpl_mul(a->label, "tokens batch x seq", batch, seq, &tokens);
    if (st == TP_OK)
        st = tpl_mul(a->label, "scores seq x seq", seq, seq, &ss);
    if (st == TP_OK)
        st = tpl_mul(a->label, "scores heads x seq^2", a->H, ss, &hss);
    if (st == TP_OK)
        st = tpl_mul(a->label, "probabilities batch x heads x seq^2", batch, hss, &bhss);
    if (st != TP_OK)
        return st;
    a->b = batch;
    a->s = seq;
    a->tokens = tokens;
    tpl_shard_offsets(a->tokens, a->T, a->off);
    int64_t want = a->sp ? a->off[a->rank + 1] - a->off[a->rank] : a->tokens, rows;
    a->saved = false;
    st = check_x(a, "x", x, want, &rows);
    if (st != TP_OK)
        return st;
    st = tpl_prepare_out(a->label, "y", y, x, a->dev, TP_F32, a->hidden, "");
    if (st != TP_OK)
        return st;
    if (y->data == x->data && rows > 0)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: y aliases x; use a separate output", a->label);
    a->rows = rows;
    tp_phase prev = tp_phase_set(a->comm, TP_PHASE_FORWARD);
    st = forward_body(a, x, y);
    tp_phase_set(a->comm, prev);
    if (st != TP_OK)
        return st;
    a->x_saved = *x;
    a->x_saved.owned = false;
    a->saved = true;
    return TP_OK;
}

static tp_status ensure_grads(tp_attention *a)
{
    tp_status st = TP_OK;
    if (!a->dwqkv.data)
        st = tp_tensor_alloc(a->dev, TP_F32, 2, a->wqkv.shape, &a->dwqkv);
    if (st == TP_OK && !a->dwo.data)
        st = tp_tensor_alloc(a->dev, TP_F32, 2, a->wo.shape, &a->dwo);
    if (st == TP_OK && a->has_bias && !a->dbqkv.data)
        st = tp_tensor_alloc(a->dev, TP_F32, 1, a->bqkv.shape, &a->dbqkv);
    if (st == TP_OK && a->has_bias && !a->dbo.data)
        st = tp_tensor_alloc(a->dev, TP_F32, 1, a->bo.shape, &a->dbo);
    return st;
}

tp_status tp_attention_zero_grad(tp_attention *a)
{
    if (!a)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_attention_zero_grad: layer is NULL");
    tp_status st = ensure_grads(a);
    tp_tensor *ts[] = {&a->dwqkv, &a->dwo, &a->dbqkv, &a->dbo};
    for (size_t i = 0; st == TP_OK && i < 4; i++)
        if (ts[i]->data)
            st = tp_dev_memset(a->dev, ts[i]->data, 0, tp_tensor_bytes(ts[i]));
    return st;
}

/* Floats of the shared-KV regions in rank dst's reduce-scatter block. */
static int64_t kv_pack_len(const tp_attention *a, int dst)
{
    int64_t n = 0;
    for (int64_t k = 0; k < a->KV; k++)
        if (kv_shared(a, k) && rank_holds(a, dst, k))
            n += a->region;
    return n;
}

/* Fill the gradient-pack regions of the shared KV heads listed for
 * destination `dst` (-1: every shared KV head, for the all-reduce) from
 * this rank's contributions kvw [hidden, 2 kvl hd] and kvb [2 kvl hd];
 * regions of heads this rank does not hold stay zero. With unpack, copy the
 * reduced regions back into kvw/kvb instead. Returns the floats used. */
static tp_status kv_pack(tp_attention *a, int dst, float *pack, float *kvw, float *kvb, bool unpack,
                         int64_t *used)
{
    int64_t n = 0, hd = a->hd, kw = 2 * a->kvl * hd;
    tp_status st = TP_OK;
    for (int64_t k = 0; k < a->KV && st == TP_OK; k++) {
        if (!kv_shared(a, k) || (dst >= 0 && !rank_holds(a, dst, k)))
            continue;
        float *r = pack + n;
        n += a->region;
        if (k < a->kv_lo || k >= a->kv_hi)
            continue;
        int64_t i = k - a->kv_lo;
        /* region: K block [hidden, hd] | V block [hidden, hd] | bK [hd] | bV [hd] */
        for (int part = 0; part < 2 && st == TP_OK; part++) {
            float *blk = r + part * a->hidden * hd;
            float *src = kvw + (part * a->kvl + i) * hd;
            if (unpack)
                st = tp_dev_copy_2d(a->dev, src, (size_t)kw * XF_ES, blk, (size_t)hd * XF_ES,
                                    (size_t)hd * XF_ES, (size_t)a->hidden);
            else
                st = tp_dev_copy_2d(a->dev, blk, (size_t)hd * XF_ES, src, (size_t)kw * XF_ES,
                                    (size_t)hd * XF_ES, (size_t)a->hidden);
            if (st == TP_OK && a->has_bias) {
                float *bb = r + 2 * a->hidden * hd + part * hd;
                float *bs = kvb + (part * a->kvl + i) * hd;
                st = unpack ? tp_dev_copy_2d(a->dev, bs, 0, bb, 0, (size_t)hd * XF_ES, 1)
                            : tp_dev_copy_2d(a->dev, bb, 0, bs, 0, (size_t)hd * XF_ES, 1);
            }
        }
    }
    *used = n;
    return st;
}

static tp_status backward_body(tp_attention *a, const tp_tensor *dy, tp_tensor *dx)
{
    tp_status st;
    int64_t b = a->b, s = a->s, N = a->tokens, hd = a->hd, W = a->W, hl = a->hl, hid = a->hidden;
    size_t ss = (size_t)(s * s);
    const float *dyf = dy->data;
    if (a->sp) { /* the row-parallel exit's backward: gather dy's shards */
        st = tpl_ws_reserve(&a->yfull, (size_t)(N * hid) * XF_ES, a->label);
        if (st == TP_OK)
            st = tpl_gather_rows(a->comm, TP_F32, dy->data, a->yfull.ptr, a->off, hid,
                                      a->counts);
        if (st != TP_OK)
            return st;
        dyf = a->yfull.ptr;
    }
    if ((st = tpl_ws_reserve(&a->dctx, (size_t)(N * a->ow) * XF_ES, a->label)) ||
        (st = tpl_ws_reserve(&a->dqkv, (size_t)(N * W) * XF_ES, a->label)) ||
        (st = tpl_ws_reserve(&a->scores, (size_t)hl * ss * XF_ES, a->label)))
        return st;
    float *dctx = a->dctx.ptr, *dqkv = a->dqkv.ptr, *dS = a->scores.ptr;
    const float *qkv = a->qkv.ptr, *P = a->probs.ptr, *ctx = a->ctx.ptr;
    /* out-projection: dWo += ctx^T dy, dbo += colsum(dy) (full dy on every
     * rank, so the replicated bias grad is the same everywhere), dctx = dy Wo^T */
    st = tpl_gemm(a->dev, TP_F32, 1, 0, a->ow, hid, N, 1.0f, ctx, a->ow, dyf, hid, a->dwo.data,
                       hid);
    if (st == TP_OK && a->has_bias)
        st = tp_dev_bias_grad(a->dev, TP_F32, N, hid, dyf, a->dbo.data);
    if (st == TP_OK)
        st = tpl_gemm(a->dev, TP_F32, 0, 1, N, a->ow, hid, 0.0f, dyf, hid, a->wo.data, hid,
                           dctx, a->ow);
    float scale = (float)(1.0 / sqrt((double)hd));
    for (int64_t bi = 0; bi < b && st == TP_OK; bi++) {
        const float *Q = qkv + bi * s * W, *K = Q + hl * hd, *V = K + a->kvl * hd;
        const float *Pb = P + (size_t)bi * hl * ss, *dO = dctx + bi * s * a->ow;
        float *dQ = dqkv + bi * s * W, *dK = dQ + hl * hd, *dV = dK + a->kvl * hd;
        /* dV_kv = sum_j P_j^T dO_j */
        st = per_kv(a, 1, 0, s, hd, s, Pb, s, (int64_t)ss, dO, a->ow, hd, dV, W, hd);
        /* dP_j = dO_j V_kv(j)^T, then dS = scale P (dP - rowsum(dP P)) */
        if (st == TP_OK)
            st = per_head(a, 0, 1, s, s, hd, dO, a->ow, hd, V, W, hd, dS, s, (int64_t)ss);
        if (st == TP_OK)
            st = tp_dev_softmax_bwd(a->dev, TP_F32, hl * s, s, Pb, dS, dS, scale);
        /* dQ_j = dS_j K_kv(j); dK_kv = sum_j dS_j^T Q_j */
        if (st == TP_OK)
            st = per_head(a, 0, 0, s, hd, s, dS, s, (int64_t)ss, K, W, hd, dQ, W, hd);
        if (st == TP_OK)
            st = per_kv(a, 1, 0, s, hd, s, dS, s, (int64_t)ss, Q, W, hd, dK, W, hd);
    }
    if (st != TP_OK)
        return st;
    const float *xf = a->x_used;
    int64_t qw = hl * hd, kw = 2 * a->kvl * hd;
    float *kvw = NULL, *kvb = NULL;
    if (!a->any_shared) {
        /* dWqkv += x^T dqkv, dbqkv += colsum(dqkv): nothing shared, all local */
        st = tpl_gemm(a->dev, TP_F32, 1, 0, hid, W, N, 1.0f, xf, hid, dqkv, W, a->dwqkv.data,
                           W);
        if (st == TP_OK && a->has_bias)
            st = tp_dev_bias_grad(a->dev, TP_F32, N, W, dqkv, a->dbqkv.data);
    } else {
        /* Q columns accumulate directly; this call's K/V contributions go
         * to kvw/kvb so the shared heads can be summed across ranks first. */
        if ((st = tpl_ws_reserve(&a->kvtmp, (size_t)(2 * hid * kw) * XF_ES, a->label)) ||
            (st = tpl_ws_reserve(&a->bscr, (size_t)(W + kw) * XF_ES, a->label)))
            return st;
        kvw = a->kvtmp.ptr;
        kvb = (float *)a->bscr.ptr + W;
        st = tpl_gemm(a->dev, TP_F32, 1, 0, hid, qw, N, 1.0f, xf, hid, dqkv, W, a->dwqkv.data,
                           W);
        if (st == TP_OK)
            st = tpl_gemm(a->dev, TP_F32, 1, 0, hid, kw, N, 0.0f, xf, hid, dqkv + qw, W, kvw,
                               kw);
        if (st == TP_OK && a->has_bias) {
            float *bs = a->bscr.ptr;
            st = tp_dev_memset(a->dev, bs, 0, (size_t)W * XF_ES);
            if (st == TP_OK)
                st = tp_dev_bias_grad(a->dev, TP_F32, N, W, dqkv, bs);
            if (st == TP_OK)
                st = tp_dev_axpby(a->dev, TP_F32, qw, 1.0f, bs, 1.0f, a->dbqkv.data);
            if (st == TP_OK)
                st = tp_dev_copy_2d(a->dev, kvb, 0, bs + qw, 0, (size_t)kw * XF_ES, 1);
        }
    }
    if (st != TP_OK || !dx)
        return st; /* dx == NULL is refused earlier when KV heads are shared */
    /* dx = sum over ranks of dqkv Wqkv_local^T; the shared KV heads'
     * gradient parts ride in the same collective */
    int64_t dxn = N * hid;
    if (!a->sp) {
        int64_t extra = 0, used;
        for (int64_t k = 0; k < a->KV; k++)
            extra += kv_shared(a, k) ? a->region : 0;
        float *buf = dx->data;
        if (a->any_shared) {
            st = tpl_ws_reserve(&a->dpack, (size_t)(dxn + extra) * XF_ES, a->label);
            if (st == TP_OK)
                st = tp_dev_memset(a->dev, a->dpack.ptr, 0, (size_t)(dxn + extra) * XF_ES);
            buf = a->dpack.ptr;
        }
        if (st == TP_OK)
            st = tpl_gemm(a->dev, TP_F32, 0, 1, N, hid, W, 0.0f, dqkv, W, a->wqkv.data, W, buf,
                               hid);
        if (st == TP_OK && a->any_shared)
            st = kv_pack(a, -1, buf + dxn, kvw, kvb, false, &used);
        if (st == TP_OK)
            st = tp_all_reduce(a->comm, buf, buf, (size_t)(dxn + extra), TP_F32, TP_SUM);
        if (st == TP_OK && a->any_shared)
            st = tp_dev_copy_2d(a->dev, dx->data, 0, buf, 0, (size_t)dxn * XF_ES, 1);
        if (st == TP_OK && a->any_shared)
            st = kv_pack(a, -1, buf + dxn, kvw, kvb, true, &used);
    } else if (!a->any_shared) {
        /* reduce-scatter the full partial dx into this rank's token rows */
        st = tpl_ws_reserve(&a->dpack, (size_t)dxn * XF_ES, a->label);
        if (st == TP_OK)
            st = tpl_gemm(a->dev, TP_F32, 0, 1, N, hid, W, 0.0f, dqkv, W, a->wqkv.data, W,
                               a->dpack.ptr, hid);
        for (int i = 0; i < a->T; i++)
            a->counts[i] = (size_t)((a->off[i + 1] - a->off[i]) * hid);
        if (st == TP_OK)
            st = tp_reduce_scatterv(a->comm, a->dpack.ptr, dx->data, a->counts, TP_F32, TP_SUM);
    } else {
        /* block i = [dx rows of shard i | regions of the shared heads rank i holds] */
        size_t total = 0;
        for (int i = 0; i < a->T; i++) {
            a->counts[i] = (size_t)((a->off[i + 1] - a->off[i]) * hid + kv_pack_len(a, i));
            total += a->counts[i];
        }
        st = tpl_ws_reserve(&a->dpack, total * XF_ES, a->label);
        if (st == TP_OK)
            st = tp_dev_memset(a->dev, a->dpack.ptr, 0, total * XF_ES);
        float *pack = a->dpack.ptr;
        size_t pos = 0;
        for (int i = 0; i < a->T && st == TP_OK; i++) {
            int64_t r0 = a->off[i], rows_i = a->off[i + 1] - r0, used;
            st = tpl_gemm(a->dev, TP_F32, 0, 1, rows_i, hid, W, 0.0f, dqkv + r0 * W, W,
                               a->wqkv.data, W, pack + pos, hid);
            if (st == TP_OK)
                st = kv_pack(a, i, pack + pos + rows_i * hid, kvw, kvb, false, &used);
            pos += a->counts[i];
        }
        size_t mine = a->counts[a->rank];
        if (st == TP_OK)
            st = tpl_ws_reserve(&a->dctx, mine * XF_ES, a->label); /* dctx is free by now */
        float *recv = a->dctx.ptr;
        if (st == TP_OK)
            st = tp_reduce_scatterv(a->comm, pack, recv, a->counts, TP_F32, TP_SUM);
        if (st == TP_OK && a->rows > 0)
            st = tp_dev_copy_2d(a->dev, dx->data, 0, recv, 0, (size_t)(a->rows * hid) * XF_ES, 1);
        int64_t used;
        if (st == TP_OK)
            st = kv_pack(a, a->rank, recv + a->rows * hid, kvw, kvb, true, &used);
    }
    if (st != TP_OK || !a->any_shared)
        return st;
    /* dWqkv[:, K/V columns] += kvw (now complete for every held head):
     * copy the strided block out, add, copy back */
    float *tmp = kvw + hid * kw;
    st = tp_dev_copy_2d(a->dev, tmp, (size_t)kw * XF_ES, (float *)a->dwqkv.data + qw,
                        (size_t)W * XF_ES, (size_t)kw * XF_ES, (size_t)hid);
    if (st == TP_OK)
        st = tp_dev_axpby(a->dev, TP_F32, hid * kw, 1.0f, kvw, 1.0f, tmp);
    if (st == TP_OK)
        st = tp_dev_copy_2d(a->dev, (float *)a->dwqkv.data + qw, (size_t)W * XF_ES, tmp,
                            (size_t)kw * XF_ES, (size_t)kw * XF_ES, (size_t)hid);
    if (st == TP_OK && a->has_bias)
        st = tp_dev_axpby(a->dev, TP_F32, kw, 1.0f, kvb, 1.0f, (float *)a->dbqkv.data + qw);
    return st;
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
    tp_status st = check_x(a, "dy", dy, a->rows, &rows);
    if (st != TP_OK)
        return st;
    if (!dx && a->any_shared)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "%s: dx is NULL but this layer's KV heads are shared across ranks, "
                            "and their gradients are summed in the input-gradient collective; "
                            "pass a dx (it may be discarded)",
                            a->label);
    if (dx) {
        st = tpl_prepare_out(a->label, "dx", dx, &a->x_saved, a->dev, TP_F32, a->hidden, "");
        if (st != TP_OK)
            return st;
        if (dx->data == dy->data && rows > 0)
            return tp_set_error(TP_ERR_INVALID_ARG, "%s: dx aliases dy; use a separate buffer",
                                a->label);
    }
    st = ensure_grads(a);
    if (st != TP_OK)
        return st;
    tp_phase prev = tp_phase_set(a->comm, TP_PHASE_BACKWARD);
    st = backward_body(a, dy, dx);
    tp_phase_set(a->comm, prev);
    return st;
}

/* ---------------------------------------------------------- full tensors */

static tp_status get_full(tp_attention *a, const tp_tensor *wqkv, const tp_tensor *bqkv,
                          const tp_tensor *wo, const tp_tensor *bo, float *hw, float *hb,
                          float *how, float *hob)
{
    int T = a->T;
    int64_t hd = a->hd, hid = a->hidden, fw = (a->H + 2 * a->KV) * hd;
    int64_t *wid = malloc(sizeof(int64_t) * (size_t)T);
    size_t total = 0;
    if (!wid)
        return tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory", a->label);
    for (int i = 0; i < T; i++) {
        int64_t ql, qh, kl, kh;
        ranges_of(a, i, &ql, &qh, &kl, &kh);
        wid[i] = (qh - ql + 2 * (kh - kl)) * hd;
        total += (size_t)(wid[i] * (hid + 1));
    }
    size_t own = (size_t)(hid * a->W);
    size_t need = total + (size_t)(hid * a->H * hd) + own + (size_t)a->W;
    tp_status st = tpl_ws_reserve(&a->kvtmp, need * XF_ES, a->label);
    float *host = st == TP_OK ? malloc(total * XF_ES) : NULL;
    if (st == TP_OK && !host)
        st = tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory", a->label);
    float *dst = a->kvtmp.ptr, *dso = dst + total, *mine = dso + hid * a->H * hd;
    /* each rank's [weight rows | bias row] block, gathered rank-major */
    if (st == TP_OK)
        st = tp_dev_copy_2d(a->dev, mine, 0, wqkv->data, 0, own * XF_ES, 1);
    if (st == TP_OK) {
        if (a->has_bias)
            st = tp_dev_copy_2d(a->dev, mine + own, 0, bqkv->data, 0, (size_t)a->W * XF_ES, 1);
        else
            st = tp_dev_memset(a->dev, mine + own, 0, (size_t)a->W * XF_ES);
    }
    for (int i = 0; i < T; i++)
        a->counts[i] = (size_t)(wid[i] * (hid + 1));
    if (st == TP_OK)
        st = tp_all_gatherv(a->comm, mine, dst, a->counts, TP_F32);
    if (st == TP_OK)
        st = tp_dev_download(a->dev, host, dst, total * XF_ES);
    if (st == TP_OK) {
        size_t pos = 0;
        for (int i = 0; i < T; i++) {
            int64_t ql, qh, kl, kh;
            ranges_of(a, i, &ql, &qh, &kl, &kh);
            const float *blk = host + pos;
            for (int64_t r = 0; r <= hid; r++)
                for (int64_t c = 0; c < wid[i]; c++) {
                    int64_t fc = full_col(a, ql, kl, qh - ql, kh - kl, c);
                    float v = blk[r * wid[i] + c];
                    if (r < hid && hw)
                        hw[r * fw + fc] = v;
                    else if (r == hid && hb && a->has_bias)
                        hb[fc] = v;
                }
            pos += (size_t)(wid[i] * (hid + 1));
        }
    }
    for (int i = 0; i < T; i++)
        a->counts[i] = (size_t)(a->hl * hd * hid);
    if (st == TP_OK)
        st = tp_all_gatherv(a->comm, wo->data, dso, a->counts, TP_F32);
    if (st == TP_OK && how)
        st = tp_dev_download(a->dev, how, dso, (size_t)(a->H * hd * hid) * XF_ES);
    if (st == TP_OK && hob && a->has_bias)
        st = tp_dev_download(a->dev, hob, bo->data, (size_t)hid * XF_ES);
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
    tp_status st = ensure_grads(a);
    if (st != TP_OK)
        return st;
    return get_full(a, &a->dwqkv, &a->dbqkv, &a->dwo, &a->dbo, qkv_w, qkv_b, out_w, out_b);
}
