/* SPDX-License-Identifier: MIT */
/*
 * block.c — pre-LN GPT TransformerBlock:
 *   h = x + Attn(LN1(x));  y = h + MLP(LN2(h)).
 *
 * Without sequence parallelism the MLP is the layers' tp_mlp (one
 * all-reduce each way). With sequence parallelism the row-parallel exit
 * must reduce-scatter instead of all-reduce, which tp_linear does not
 * offer, so the MLP's GEMMs are composed here on tp_mlp's own parameters
 * (tp_linear_get_params): the same weights and gradients either way.
 */
#include "xf-internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tp_block {
    tp_comm *comm;
    tp_device *dev;
    char *label;
    int T, rank;
    int64_t hidden, ffn;
    bool sp, gelu_tanh;
    int overlap; /* tp_block_config.overlap */
    tp_dtype dt; /* of every parameter and activation (the sublayers') */
    size_t es;
    tp_norm *ln1, *ln2;
    tp_attention *attn;
    tp_mlp *mlp;
    int64_t *off;
    size_t *counts;
    /* [rows, hidden] activations kept for backward; grads scratch */
    tpl_ws h1, r1, h2, d1, d2, contrib;
    /* sequence-parallel MLP: fc1 output and GeLU output (kept); mtmp
     * [tokens, hidden] scratch: forward the gathered input, then fc2's
     * partial output; backward the gathered dy, then the input gathered
     * again, then the partial dx; mx: the input gathered again when the
     * overlapped backward needs it beside the partial dx */
    tpl_ws mx, mpre, mact, mtmp;
    tp_tensor x_saved;
    void *y_out; /* the last forward's y (its residual: add_residual) */
    int64_t rows, tokens;
    bool saved;
};

void tp_block_free(tp_block *b)
{
    if (!b)
        return;
    tp_norm_free(b->ln1);
    tp_norm_free(b->ln2);
    tp_attention_free(b->attn);
    tp_mlp_free(b->mlp);
    tpl_ws *ws[] = {&b->h1,      &b->r1, &b->h2,   &b->d1,   &b->d2,
                    &b->contrib, &b->mx, &b->mpre, &b->mact, &b->mtmp};
    for (size_t i = 0; i < sizeof ws / sizeof *ws; i++)
        tpl_ws_release(ws[i]);
    free(b->off);
    free(b->counts);
    free(b->label);
    free(b);
}

tp_attention *tp_block_attention(tp_block *b)
{
    return b ? b->attn : NULL;
}

tp_mlp *tp_block_mlp(tp_block *b)
{
    return b ? b->mlp : NULL;
}

tp_norm *tp_block_norm1(tp_block *b)
{
    return b ? b->ln1 : NULL;
}

tp_norm *tp_block_norm2(tp_block *b)
{
    return b ? b->ln2 : NULL;
}

tp_status tp_block_create(tp_comm *comm, const tp_block_config *cfg, tp_block **out)
{
    if (!out)
        return tp_set_error(TP_ERR_INVALID_ARG, "TransformerBlock create: out is NULL");
    *out = NULL;
    if (!comm || !cfg)
        return tp_set_error(TP_ERR_INVALID_ARG, "TransformerBlock create: %s is NULL",
                            !comm ? "comm" : "cfg");
    tp_block *b = calloc(1, sizeof *b);
    if (!b)
        return tp_set_error(TP_ERR_NO_MEMORY, "TransformerBlock create: out of host memory");
    b->comm = comm;
    b->dev = tp_comm_device(comm);
    b->T = tp_comm_size(comm);
    b->rank = tp_comm_rank(comm);
    b->hidden = cfg->hidden;
    b->ffn = cfg->ffn;
    b->sp = cfg->sequence_parallel;
    b->overlap = cfg->overlap;
    b->gelu_tanh = cfg->gelu_tanh;
    b->dt = cfg->dtype;
    b->es = tp_dtype_size(cfg->dtype);
    b->label = tpl_label("TransformerBlock", cfg->name, comm);
    tpl_ws *ws[] = {&b->h1,      &b->r1, &b->h2,   &b->d1,   &b->d2,
                    &b->contrib, &b->mx, &b->mpre, &b->mact, &b->mtmp};
    for (size_t i = 0; i < sizeof ws / sizeof *ws; i++)
        ws[i]->dev = b->dev;
    /* read by backward: the norms' inputs (token shards with SP: backward
     * gathers ln2's output h2 again rather than keeping it gathered) and
     * the MLP's pre/post GeLU */
    b->h1.keep = b->r1.keep = b->h2.keep = b->mpre.keep = b->mact.keep = true;
    b->off = malloc(sizeof(int64_t) * (size_t)(b->T + 1));
    b->counts = malloc(sizeof(size_t) * (size_t)b->T);
    tp_status st;
    if (!b->label || !b->off || !b->counts) {
        st = tp_set_error(TP_ERR_NO_MEMORY, "TransformerBlock create: out of host memory");
        goto fail;
    }
    const char *base = cfg->name && *cfg->name ? cfg->name : "block";
    char n1[200], n2[200], na[200], nm[200];
    snprintf(n1, sizeof n1, "%s.ln1", base);
    snprintf(n2, sizeof n2, "%s.ln2", base);
    snprintf(na, sizeof na, "%s.attn", base);
    snprintf(nm, sizeof nm, "%s.mlp", base);
    tp_norm_config nc = {.dim = cfg->hidden,
                         .rms = cfg->rms,
                         .bias = !cfg->rms,
                         .eps = cfg->eps,
                         .sequence_parallel = cfg->sequence_parallel,
                         .name = n1,
                         .dtype = cfg->dtype};
    TP_TRY_GOTO(tp_norm_create(comm, &nc, &b->ln1), st, fail);
    nc.name = n2;
    TP_TRY_GOTO(tp_norm_create(comm, &nc, &b->ln2), st, fail);
    tp_attention_config ac = {
        .hidden = cfg->hidden,
        .heads = cfg->heads,
        .kv_heads = cfg->kv_heads,
        .head_dim = cfg->head_dim,
        .bias = cfg->bias,
        .causal = cfg->causal,
        .sequence_parallel = cfg->sequence_parallel,
        .seed = cfg->seed,
        .tensor_id = cfg->tensor_id,
        .name = na,
        .dtype = cfg->dtype,
        .overlap = cfg->overlap,
    };
    TP_TRY_GOTO(tp_attention_create(comm, &ac, &b->attn), st, fail);
    tp_mlp_config mc = {
        .hidden = cfg->hidden,
        .ffn = cfg->ffn,
        .bias = cfg->bias,
        .gelu_tanh = cfg->gelu_tanh,
        .seed = cfg->seed,
        .tensor_id = cfg->tensor_id + 4,
        .name = nm,
        .dtype = cfg->dtype,
        .overlap = cfg->overlap,
    };
    TP_TRY_GOTO(tp_mlp_create(comm, &mc, &b->mlp), st, fail);
    *out = b;
    return TP_OK;
fail:
    tp_block_free(b);
    return st;
}

/* The row counts of a [tokens, hidden] tensor's token shards. */
static size_t *row_counts(tp_block *b)
{
    return tpl_row_counts(b->off, b->T, b->hidden, b->counts);
}

/* The sequence-parallel MLP forward's GEMMs on token rows [r0, r1) (the
 * overlapped path's chunks; the plain path's one call of all rows). */
typedef struct sp_fwd {
    tp_block *b;
    tp_linear_params p1, p2;
} sp_fwd;

/* mpre rows = gathered x rows W1 */
static tp_status sp_fc1_rows(void *ctx, int64_t r0, int64_t r1)
{
    sp_fwd *f = ctx;
    tp_block *b = f->b;
    int64_t hid = b->hidden, fl = f->p1.hi - f->p1.lo;
    return tpl_gemm(b->dev, b->dt, 0, 0, r1 - r0, fl, hid, 0.0f,
                    (const char *)b->mtmp.ptr + (size_t)(r0 * hid) * b->es, hid, f->p1.weight->data,
                    fl, (char *)b->mpre.ptr + (size_t)(r0 * fl) * b->es, fl);
}

/* partial y rows (mtmp) = GeLU output rows W2 */
static tp_status sp_fc2_rows(void *ctx, int64_t r0, int64_t r1)
{
    sp_fwd *f = ctx;
    tp_block *b = f->b;
    int64_t hid = b->hidden, fl = f->p1.hi - f->p1.lo;
    return tpl_gemm(b->dev, b->dt, 0, 0, r1 - r0, hid, fl, 0.0f,
                    (const char *)b->mact.ptr + (size_t)(r0 * fl) * b->es, fl, f->p2.weight->data,
                    hid, (char *)b->mtmp.ptr + (size_t)(r0 * hid) * b->es, hid);
}

/* Sequence-parallel MLP forward on the token shard x -> y (shards). With
 * overlap >= 2 the all-gather of x is pipelined with fc1's GEMM and fc2's
 * GEMM with the reduce-scatter, in the token chunks of tpl_overlap_chunks
 * (rows cut as the overlapped row forward's: the same GEMM bits per row,
 * the same sums per element; docs/determinism.md). */
static tp_status sp_mlp_forward(tp_block *b, const tp_tensor *x, tp_tensor *y)
{
    sp_fwd f = {.b = b};
    tp_linear_get_params(tp_mlp_fc1(b->mlp), &f.p1);
    tp_linear_get_params(tp_mlp_fc2(b->mlp), &f.p2);
    int64_t N = b->tokens, hid = b->hidden, fl = f.p1.hi - f.p1.lo;
    TP_TRY(tpl_ws_reserve(&b->mpre, (size_t)(N * fl) * b->es, b->label));
    TP_TRY(tpl_ws_reserve(&b->mact, (size_t)(N * fl) * b->es, b->label));
    TP_TRY(tpl_ws_reserve(&b->mtmp, (size_t)(N * hid) * b->es, b->label));
    bool ov = b->overlap >= 2 && N > 0;
    if (ov)
        TP_TRY(tpl_gather_rows_overlapped(b->comm, b->dt, x->data, b->mtmp.ptr, b->off, hid,
                                          b->counts, b->overlap, sp_fc1_rows, &f));
    else {
        TP_TRY(tpl_gather_rows(b->comm, b->dt, x->data, b->mtmp.ptr, b->off, hid, b->counts));
        TP_TRY(sp_fc1_rows(&f, 0, N));
    }
    if (f.p1.bias)
        TP_TRY(tp_dev_bias_add(b->dev, b->dt, N, fl, b->mpre.ptr, f.p1.bias->data));
    TP_TRY(tp_dev_gelu(b->dev, b->dt, N * fl, b->mpre.ptr, b->mact.ptr, b->gelu_tanh ? 1 : 0));
    if (ov)
        TP_TRY(tpl_reduce_scatter_rows_overlapped(b->comm, b->dt, b->mtmp.ptr, y->data, b->off, hid,
                                                  b->counts, b->overlap, sp_fc2_rows, &f));
    else {
        TP_TRY(sp_fc2_rows(&f, 0, N));
        TP_TRY(tp_reduce_scatterv(b->comm, b->mtmp.ptr, y->data, row_counts(b), b->dt, TP_SUM));
    }
    if (f.p2.bias && b->rows > 0)
        TP_TRY(tp_dev_bias_add(b->dev, b->dt, b->rows, hid, y->data, f.p2.bias->data));
    return TP_OK;
}

static tp_status grads_of(tp_linear *l, tp_linear_params *p)
{
    tp_linear_get_params(l, p);
    if (p->weight_grad)
        return TP_OK;
    tp_status st = tp_linear_zero_grad(l); /* first use: allocates zeroed grads */
    tp_linear_get_params(l, p);
    return st;
}

/* dW1 += x^T dh, db1 += colsum(dh) of the sequence-parallel MLP (x: the
 * input [tokens, hidden], gathered again from the token shards h2). */
static tp_status sp_fc1_weight_grad(tp_block *b, const tp_linear_params *p1, const void *x,
                                    const void *dh)
{
    int64_t N = b->tokens, hid = b->hidden, fl = p1->hi - p1->lo;
    TP_TRY(
        tpl_gemm(b->dev, b->dt, 1, 0, hid, fl, N, 1.0f, x, hid, dh, fl, p1->weight_grad->data, fl));
    if (p1->bias_grad)
        TP_TRY(tp_dev_bias_grad(b->dev, b->dt, N, fl, dh, p1->bias_grad->data));
    return TP_OK;
}

/* fc1 of the sequence-parallel MLP backward: dW1 += x^T dh, db1 +=
 * colsum(dh), dx = reduce-scatter(dh W1^T), with x all-gathered again from
 * the kept token shards h2 (forward's bytes) into scratch. Plain: into
 * mtmp (dy's gathered rows are spent), used before the partial dx
 * overwrites it. Overlapped (as Megatron): into mx, the all-gather in
 * flight during the dx GEMM and the reduce-scatter of dx during dW1 and
 * db1 (which read x and dh only: the same values, the same bits). */
static tp_status sp_fc1_backward(tp_block *b, const tp_linear_params *p1, const void *dh,
                                 tp_tensor *dx)
{
    int64_t N = b->tokens, hid = b->hidden, fl = p1->hi - p1->lo;
    void *part = b->mtmp.ptr; /* [N, hid]: the partial dx */
    if (b->overlap < 2) {
        TP_TRY(tpl_gather_rows(b->comm, b->dt, b->h2.ptr, b->mtmp.ptr, b->off, hid, b->counts));
        TP_TRY(sp_fc1_weight_grad(b, p1, b->mtmp.ptr, dh));
        TP_TRY(tpl_gemm(b->dev, b->dt, 0, 1, N, hid, fl, 0.0f, dh, fl, p1->weight->data, fl, part,
                        hid));
        return tp_reduce_scatterv(b->comm, part, dx->data, row_counts(b), b->dt, TP_SUM);
    }
    TP_TRY(tpl_ws_reserve(&b->mx, (size_t)(N * hid) * b->es, b->label));
    tp_request *req;
    TP_TRY(tp_iall_gatherv(b->comm, b->h2.ptr, b->mx.ptr, row_counts(b), b->dt, &req));
    tp_status st =
        tpl_gemm(b->dev, b->dt, 0, 1, N, hid, fl, 0.0f, dh, fl, p1->weight->data, fl, part, hid);
    tp_status w = tp_wait(req);
    TP_TRY(st != TP_OK ? st : w);
    TP_TRY(tp_ireduce_scatterv(b->comm, part, dx->data, row_counts(b), b->dt, TP_SUM, &req));
    st = sp_fc1_weight_grad(b, p1, b->mx.ptr, dh);
    w = tp_wait(req);
    return st != TP_OK ? st : w;
}

/* Sequence-parallel MLP backward: dy shard -> dx shard. */
static tp_status sp_mlp_backward(tp_block *b, const tp_tensor *dy, tp_tensor *dx)
{
    tp_linear_params p1, p2;
    TP_TRY(grads_of(tp_mlp_fc1(b->mlp), &p1));
    TP_TRY(grads_of(tp_mlp_fc2(b->mlp), &p2));
    int64_t N = b->tokens, hid = b->hidden, fl = p1.hi - p1.lo;
    void *dyf = b->mtmp.ptr; /* [N, hid] */
    void *dh = b->mact.ptr;  /* reused: GeLU output no longer needed after dW2 */
    /* gather dy; fc2: dW2 += act^T dy, db2 += colsum(dy) (full dy: same on every rank) */
    TP_TRY(tpl_gather_rows(b->comm, b->dt, dy->data, dyf, b->off, hid, b->counts));
    TP_TRY(tpl_gemm(b->dev, b->dt, 1, 0, fl, hid, N, 1.0f, b->mact.ptr, fl, dyf, hid,
                    p2.weight_grad->data, hid));
    if (p2.bias_grad)
        TP_TRY(tp_dev_bias_grad(b->dev, b->dt, N, hid, dyf, p2.bias_grad->data));
    TP_TRY(tpl_gemm(b->dev, b->dt, 0, 1, N, fl, hid, 0.0f, dyf, hid, p2.weight->data, hid, dh, fl));
    TP_TRY(tp_dev_gelu_bwd(b->dev, b->dt, N * fl, b->mpre.ptr, dh, dh, b->gelu_tanh ? 1 : 0));
    return sp_fc1_backward(b, &p1, dh, dx);
}

/* The overlapped forward without sequence parallelism, chained across
 * the block: the attention returns with its out-projection's chunked
 * all-reduces in flight, and the MLP's token chunk c starts as soon as
 * the attention's rows of chunk c have arrived (those rows' residual and
 * LN2 first), so the attention's all-reduces run during the MLP's GEMMs
 * rather than only during the out-projection's. In a chain of blocks
 * (tpl_block_forward_chained) the input's rows may arrive the same way:
 * each QKV chunk first makes its x rows final and runs LN1 on them; and
 * the MLP's all-reduces may be left in flight for the next block. Every
 * step is per row and the chunks are cut alike: the same bits as
 * unchained. */
typedef struct chain {
    tp_block *b;
    tpl_inflight f; /* the attention's out-projection all-reduces */
    const void *x;
    tpl_rows_fn in; /* makes x's rows final (NULL: they are) */
    void *in_ctx;
} chain;

static tp_status feed_attention(void *ctx, int64_t r0, int64_t r1)
{
    chain *c = ctx;
    if (c->in)
        TP_TRY(c->in(c->in_ctx, r0, r1));
    return tpl_norm_forward_rows(c->b->ln1, r0, r1);
}

/* dst rows [r0, r1) += src rows (a residual; [rows, hidden] tensors) */
static tp_status add_rows(tp_block *b, const void *src, void *dst, int64_t r0, int64_t r1)
{
    size_t at = (size_t)(r0 * b->hidden) * b->es;
    if (r1 <= r0)
        return TP_OK;
    return tp_dev_axpby(b->dev, b->dt, (r1 - r0) * b->hidden, 1.0f, (const char *)src + at, 1.0f,
                        (char *)dst + at);
}

static tp_status feed_mlp(void *ctx, int64_t r0, int64_t r1)
{
    chain *c = ctx;
    tp_block *b = c->b;
    TP_TRY(tpl_attention_forward_rows_done(b->attn, &c->f, r1));
    TP_TRY(add_rows(b, c->x, b->r1.ptr, r0, r1)); /* h = x + attn */
    return tpl_norm_forward_rows(b->ln2, r0, r1);
}

/* y rows [r0, r1) = h + MLP rows (the residual) */
static tp_status add_residual(tp_block *b, int64_t r0, int64_t r1)
{
    return add_rows(b, b->r1.ptr, b->y_out, r0, r1);
}

static tp_status forward_chained(tp_block *b, const tp_tensor *x2, tp_tensor *h1, tp_tensor *r1,
                                 tp_tensor *h2, tp_tensor *y2, int64_t batch, int64_t seq, chain *c,
                                 tpl_inflight *out)
{
    tpl_inflight_clear(&c->f);
    if (out)
        tpl_inflight_clear(out);
    tp_status st = tpl_norm_forward_begin(b->ln1, x2, h1);
    if (st == TP_OK)
        st = tpl_attention_forward_begin(b->attn, h1, batch, seq, r1, &c->f, feed_attention, c);
    if (st == TP_OK)
        st = tpl_norm_forward_begin(b->ln2, r1, h2);
    if (st == TP_OK)
        st = tpl_mlp_forward_fed(b->mlp, h2, y2, feed_mlp, c, out);
    st = tpl_inflight_end(&c->f, st);
    if (st != TP_OK) /* nothing left in flight after an error */
        return out ? tpl_inflight_end(out, st) : st;
    if (!out || out->n == 0) /* y final: the residual now, else in rows_done */
        return add_residual(b, 0, b->rows);
    return TP_OK;
}

static tp_status forward_body(tp_block *b, const tp_tensor *x, tp_tensor *y, int64_t batch,
                              int64_t seq, chain *c, tpl_inflight *out)
{
    int64_t rows = b->rows;
    tp_tensor h1 = tpl_view2p(b->dev, b->dt, b->h1.ptr, rows, b->hidden);
    tp_tensor r1 = tpl_view2p(b->dev, b->dt, b->r1.ptr, rows, b->hidden);
    tp_tensor h2 = tpl_view2p(b->dev, b->dt, b->h2.ptr, rows, b->hidden);
    tp_tensor x2 = tpl_view2(x, rows, b->hidden);
    tp_tensor y2 = tpl_view2(y, rows, b->hidden);
    b->y_out = y2.data;
    if (tpl_block_chains(b))
        return forward_chained(b, &x2, &h1, &r1, &h2, &y2, batch, seq, c, out);
    if (c->in) /* a chain's input into a block that does not chain: all of x first */
        TP_TRY(c->in(c->in_ctx, 0, rows));
    TP_TRY(tp_norm_forward(b->ln1, &x2, &h1));
    TP_TRY(tp_attention_forward(b->attn, &h1, batch, seq, &r1));
    TP_TRY(add_rows(b, x2.data, r1.data, 0, rows)); /* h = x + attn */
    TP_TRY(tp_norm_forward(b->ln2, &r1, &h2));
    TP_TRY(b->sp ? sp_mlp_forward(b, &h2, &y2) : tp_mlp_forward(b->mlp, &h2, &y2));
    return add_residual(b, 0, rows); /* y = h + mlp */
}

bool tpl_block_chains(const tp_block *b)
{
    return !b->sp && b->overlap >= 2;
}

static tp_status forward(tp_block *b, const tp_tensor *x, int64_t batch, int64_t seq, tp_tensor *y,
                         tpl_rows_fn in, void *in_ctx, tpl_inflight *out)
{
    if (out)
        tpl_inflight_clear(out);
    if (!b)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_block_forward: block is NULL");
    if (batch <= 0 || seq <= 0)
        return tp_set_error(TP_ERR_SHAPE, "%s: batch (%lld) and seq (%lld) must be >= 1", b->label,
                            (long long)batch, (long long)seq);
    b->saved = false;
    int64_t tokens, rows;
    TP_TRY(tpl_mul(b->label, "tokens batch x seq", batch, seq, &tokens));
    TP_TRY(tpl_check_act(b->label, "x", x, b->dev, b->dt, &rows));
    b->tokens = tokens;
    tpl_shard_offsets(b->tokens, b->T, b->off);
    if (x->shape[x->ndim - 1] != b->hidden)
        return tp_set_error(TP_ERR_SHAPE, "%s: x last dim (hidden) expected %lld, got %lld",
                            b->label, (long long)b->hidden, (long long)x->shape[x->ndim - 1]);
    int64_t want = b->sp ? b->off[b->rank + 1] - b->off[b->rank] : b->tokens;
    if (rows != want)
        return tp_set_error(
            TP_ERR_SHAPE, "%s: x has %lld token rows, expected %lld (%s of batch*seq = %lld)",
            b->label, (long long)rows, (long long)want,
            b->sp ? "this rank's sequence-parallel shard" : "all", (long long)b->tokens);
    TP_TRY(tpl_prepare_out(b->label, "y", y, x, b->dev, b->dt, b->hidden, ""));
    b->rows = rows;
    size_t bytes = (size_t)(rows * b->hidden) * b->es;
    TP_TRY(tpl_ws_reserve(&b->h1, bytes, b->label));
    TP_TRY(tpl_ws_reserve(&b->r1, bytes, b->label));
    TP_TRY(tpl_ws_reserve(&b->h2, bytes, b->label));
    tp_phase prev = tp_phase_set(b->comm, TP_PHASE_FORWARD);
    chain c = {.b = b, .x = x->data, .in = in, .in_ctx = in_ctx};
    tp_status st = forward_body(b, x, y, batch, seq, &c, out);
    tp_phase_set(b->comm, prev);
    if (st != TP_OK)
        return st;
    b->x_saved = *x;
    b->x_saved.owned = false;
    b->saved = true;
    return TP_OK;
}

tp_status tp_block_forward(tp_block *b, const tp_tensor *x, int64_t batch, int64_t seq,
                           tp_tensor *y)
{
    return forward(b, x, batch, seq, y, NULL, NULL, NULL);
}

tp_status tpl_block_forward_chained(tp_block *b, const tp_tensor *x, int64_t batch, int64_t seq,
                                    tp_tensor *y, tpl_rows_fn in, void *in_ctx, tpl_inflight *out)
{
    return forward(b, x, batch, seq, y, in, in_ctx, out);
}

tp_status tpl_block_forward_rows_done(tp_block *b, tpl_inflight *f, int64_t r1)
{
    int64_t lo, hi;
    TP_TRY(tpl_mlp_forward_rows_done(b->mlp, f, b->y_out, r1, &lo, &hi));
    tp_phase prev = tp_phase_set(b->comm, TP_PHASE_FORWARD);
    tp_status st = add_residual(b, lo, hi);
    tp_phase_set(b->comm, prev);
    return st;
}

static tp_status backward_body(tp_block *b, const tp_tensor *dy, tp_tensor *dx)
{
    int64_t rows = b->rows, n = rows * b->hidden;
    int64_t c1 = tpl_norm_contrib_len(b->ln1), c2 = tpl_norm_contrib_len(b->ln2);
    tp_tensor dy2 = tpl_view2(dy, rows, b->hidden);
    tp_tensor dx2 = tpl_view2(dx, rows, b->hidden);
    /* g1: dLN2-input, then dr1; g2: dh2, then dh1 */
    tp_tensor g1 = tpl_view2p(b->dev, b->dt, b->d1.ptr, rows, b->hidden);
    tp_tensor g2 = tpl_view2p(b->dev, b->dt, b->d2.ptr, rows, b->hidden);
    char *contrib = b->contrib.ptr, *contrib2 = contrib + (size_t)c1 * b->es;
    /* y = h + MLP(LN2(h)): dh2 = MLP'(dy); dh = LN2'(dh2) + dy */
    TP_TRY(b->sp ? sp_mlp_backward(b, &dy2, &g2) : tp_mlp_backward(b->mlp, &dy2, &g2));
    TP_TRY(b->sp ? tpl_norm_backward_local(b->ln2, &g2, &g1, contrib2)
                 : tp_norm_backward(b->ln2, &g2, &g1));
    if (n > 0)
        TP_TRY(tp_dev_axpby(b->dev, b->dt, n, 1.0f, dy2.data, 1.0f, g1.data));
    /* h = x + Attn(LN1(x)): dh1 = Attn'(dh); dx = LN1'(dh1) + dh */
    TP_TRY(tp_attention_backward(b->attn, &g1, &g2));
    TP_TRY(b->sp ? tpl_norm_backward_local(b->ln1, &g2, &dx2, contrib)
                 : tp_norm_backward(b->ln1, &g2, &dx2));
    if (n > 0)
        TP_TRY(tp_dev_axpby(b->dev, b->dt, n, 1.0f, g1.data, 1.0f, dx2.data));
    if (!b->sp)
        return TP_OK;
    /* sequence parallel: both norms' partial parameter grads in one all-reduce */
    TP_TRY(tp_all_reduce(b->comm, contrib, contrib, (size_t)(c1 + c2), b->dt, TP_SUM));
    TP_TRY(tpl_norm_add_contrib(b->ln1, contrib));
    return tpl_norm_add_contrib(b->ln2, contrib2);
}

tp_status tp_block_backward(tp_block *b, const tp_tensor *dy, tp_tensor *dx)
{
    if (!b)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_block_backward: block is NULL");
    if (!b->saved)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "%s: backward called before forward (it needs the saved activations)",
                            b->label);
    int64_t rows;
    TP_TRY(tpl_check_act(b->label, "dy", dy, b->dev, b->dt, &rows));
    if (rows != b->rows || dy->shape[dy->ndim - 1] != b->hidden)
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: dy is [%lld, %lld], expected the forward output's [%lld, %lld]",
                            b->label, (long long)rows, (long long)dy->shape[dy->ndim - 1],
                            (long long)b->rows, (long long)b->hidden);
    if (!dx)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: dx is NULL", b->label);
    TP_TRY(tpl_prepare_out(b->label, "dx", dx, &b->x_saved, b->dev, b->dt, b->hidden, ""));
    size_t bytes = (size_t)(rows * b->hidden) * b->es;
    TP_TRY(tpl_ws_reserve(&b->d1, bytes, b->label));
    TP_TRY(tpl_ws_reserve(&b->d2, bytes, b->label));
    if (b->sp) {
        size_t cbytes =
            (size_t)(tpl_norm_contrib_len(b->ln1) + tpl_norm_contrib_len(b->ln2)) * b->es;
        TP_TRY(tpl_ws_reserve(&b->contrib, cbytes, b->label));
        TP_TRY(tp_dev_memset(b->dev, b->contrib.ptr, 0, cbytes));
    }
    tp_phase prev = tp_phase_set(b->comm, TP_PHASE_BACKWARD);
    tp_status st = backward_body(b, dy, dx);
    tp_phase_set(b->comm, prev);
    return st;
}

tp_status tp_block_zero_grad(tp_block *b)
{
    if (!b)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_block_zero_grad: block is NULL");
    TP_TRY(tp_norm_zero_grad(b->ln1));
    TP_TRY(tp_norm_zero_grad(b->ln2));
    TP_TRY(tp_attention_zero_grad(b->attn));
    return tp_mlp_zero_grad(b->mlp);
}
