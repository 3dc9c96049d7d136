/* SPDX-License-Identifier: MIT */
/* mlp.c — ParallelMLP: column(hidden->ffn) -> GeLU -> row(ffn->hidden, input_is_parallel). */
#include "layers-internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tp_mlp {
    tp_comm *comm;
    tp_device *dev;
    char *label;
    int64_t hidden, ffn, flocal;
    tp_dtype dt; /* of both linears and every activation */
    bool tanh_approx;
    tp_linear *fc1, *fc2;
    int overlap;           /* tp_mlp_config.overlap: >= 2, the chunked pipelines below */
    tpl_ws pre, act, grad; /* [tokens, flocal]: fc1 output, GeLU output, their gradient */
    const void *x_saved;   /* the last forward's x (read by fc1's weight gradient) */
    int64_t tokens_saved;
    bool saved;
};

void tp_mlp_free(tp_mlp *m)
{
    if (!m)
        return;
    tp_linear_free(m->fc1);
    tp_linear_free(m->fc2);
    tpl_ws_release(&m->pre);
    tpl_ws_release(&m->act);
    tpl_ws_release(&m->grad);
    free(m->label);
    free(m);
}

tp_linear *tp_mlp_fc1(tp_mlp *m)
{
    return m ? m->fc1 : NULL;
}

tp_linear *tp_mlp_fc2(tp_mlp *m)
{
    return m ? m->fc2 : NULL;
}

tp_status tp_mlp_create(tp_comm *comm, const tp_mlp_config *cfg, tp_mlp **out)
{
    if (!out)
        return tp_set_error(TP_ERR_INVALID_ARG, "ParallelMLP create: out is NULL");
    *out = NULL;
    if (!comm || !cfg)
        return tp_set_error(TP_ERR_INVALID_ARG, "ParallelMLP create: %s is NULL",
                            !comm ? "comm" : "cfg");
    tp_mlp *m = calloc(1, sizeof *m);
    if (!m)
        return tp_set_error(TP_ERR_NO_MEMORY, "ParallelMLP create: out of host memory");
    m->comm = comm;
    m->dev = tp_comm_device(comm);
    m->pre.dev = m->act.dev = m->grad.dev = m->dev;
    m->pre.keep = m->act.keep = true;
    m->hidden = cfg->hidden;
    m->ffn = cfg->ffn;
    m->tanh_approx = cfg->gelu_tanh;
    m->dt = cfg->dtype;
    m->label = tpl_label("ParallelMLP", cfg->name, comm);
    if (!m->label) {
        free(m);
        return tp_set_error(TP_ERR_NO_MEMORY, "ParallelMLP create: out of host memory");
    }
    tp_status st;
    TP_TRY_GOTO(tpl_check_dtype(m->label, m->dt), st, fail);
    if (m->hidden <= 0 || m->ffn <= 0) {
        st = tp_set_error(TP_ERR_SHAPE, "%s: hidden (%lld) and ffn (%lld) must be >= 1", m->label,
                          (long long)m->hidden, (long long)m->ffn);
        goto fail;
    }
    if (m->ffn < tp_comm_size(comm)) {
        st = tp_set_error(TP_ERR_SHAPE,
                          "%s: T=%d is larger than ffn=%lld, the dimension the MLP splits: some "
                          "rank would get 0 ffn columns; use T <= %lld or a larger ffn",
                          m->label, tp_comm_size(comm), (long long)m->ffn, (long long)m->ffn);
        goto fail;
    }
    char n1[200], n2[200];
    const char *base = cfg->name && *cfg->name ? cfg->name : "mlp";
    snprintf(n1, sizeof n1, "%s.fc1", base);
    snprintf(n2, sizeof n2, "%s.fc2", base);
    tp_linear_config c1 = {
        .in_features = m->hidden,
        .out_features = m->ffn,
        .bias = cfg->bias,
        .seed = cfg->seed,
        .tensor_id = cfg->tensor_id,
        .full_weight = cfg->full_w1,
        .full_bias = cfg->full_b1,
        .name = n1,
        .dtype = m->dt,
        .overlap = cfg->overlap,
    };
    tp_linear_config c2 = {
        .in_features = m->ffn,
        .out_features = m->hidden,
        .bias = cfg->bias,
        .input_is_parallel = true,
        .seed = cfg->seed,
        .tensor_id = cfg->tensor_id + 2,
        .full_weight = cfg->full_w2,
        .full_bias = cfg->full_b2,
        .name = n2,
        .dtype = m->dt,
        .overlap = cfg->overlap,
    };
    m->overlap = cfg->overlap;
    TP_TRY_GOTO(tp_column_linear_create(comm, &c1, &m->fc1), st, fail);
    TP_TRY_GOTO(tp_row_linear_create(comm, &c2, &m->fc2), st, fail);
    m->flocal = tpl_linear_local_width(m->fc1);
    *out = m;
    return TP_OK;
fail:
    tp_mlp_free(m);
    return st;
}

static tp_status check_hidden(tp_mlp *m, const char *what, const tp_tensor *t, int64_t *tokens)
{
    TP_TRY(tpl_check_act(m->label, what, t, m->dev, m->dt, tokens));
    int64_t got = t->shape[t->ndim - 1];
    if (got != m->hidden)
        return tp_set_error(
            TP_ERR_SHAPE, "%s: %s last dim (hidden) expected %lld, got %lld%s", m->label, what,
            (long long)m->hidden, (long long)got,
            got == m->flocal || got == m->ffn
                ? " (that is an ffn width: the MLP takes and returns [tokens, hidden])"
                : "");
    return TP_OK;
}

/* overlap >= 2: the whole MLP on each token chunk of tpl_overlap_chunks
 * (fc1 with its bias and GeLU, then fc2's GEMM) and the chunk's all-reduce
 * in flight while the next chunk computes, so only the last chunk's
 * all-reduce can be exposed; fc2's bias after the sums, as in the
 * unchunked path. Backward (with dx): dh = dy W2^T and GeLU's backward
 * for all tokens (one GEMM: a transposed weight costs the most to pack
 * again per chunk), then fc1's partial dx = dh W1^T per chunk, the last
 * chunks' all-reduces in flight while both weight gradients are computed
 * (they need every token's dh). The same GEMMs row for row, the same
 * weight-gradient GEMMs of the same values and the same sums: the same
 * bits. */
typedef struct mlp_chunk {
    tp_mlp *m;
    const void *x;    /* forward: x; backward: dy */
    void *y;          /* forward: y; backward: dx */
    void *dh;         /* backward: [tokens, flocal] */
    tpl_rows_fn feed; /* forward (may be NULL): writes x's rows first */
    void *feed_ctx;
} mlp_chunk;

static tp_status forward_rows(void *ctx, int64_t r0, int64_t r1)
{
    mlp_chunk *c = ctx;
    tp_mlp *m = c->m;
    if (c->feed)
        TP_TRY(c->feed(c->feed_ctx, r0, r1));
    TP_TRY(tpl_linear_forward_rows(m->fc1, c->x, m->act.ptr, r0, r1, m->pre.ptr,
                                   m->tanh_approx ? TP_ACT_GELU_TANH : TP_ACT_GELU));
    return tpl_linear_forward_rows(m->fc2, m->act.ptr, c->y, r0, r1, NULL, TP_ACT_NONE);
}

static tp_status backward_rows(void *ctx, int64_t r0, int64_t r1)
{
    mlp_chunk *c = ctx;
    return tpl_linear_input_grad_rows(c->m->fc1, c->dh, c->y, r0, r1);
}

static tp_status weight_grads(void *ctx)
{
    mlp_chunk *c = ctx;
    TP_TRY(tpl_linear_weight_grad(c->m->fc2, c->x));
    return tpl_linear_weight_grad(c->m->fc1, c->dh);
}

static tp_status forward(tp_mlp *m, const tp_tensor *x, tp_tensor *y, tpl_rows_fn feed,
                         void *feed_ctx, tpl_inflight *keep)
{
    if (keep)
        tpl_inflight_clear(keep);
    if (!m)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_mlp_forward: mlp is NULL");
    int64_t tokens;
    TP_TRY(check_hidden(m, "x", x, &tokens));
    TP_TRY(tpl_prepare_out(m->label, "y", y, x, m->dev, m->dt, m->hidden, ""));
    /* checked with the full ffn, so that every rank agrees */
    int64_t n;
    TP_TRY(tpl_mul(m->label, "activations tokens x ffn", tokens, m->ffn, &n));
    size_t bytes = (size_t)(tokens * m->flocal) * tp_dtype_size(m->dt);
    TP_TRY(tpl_ws_reserve(&m->pre, bytes, m->label));
    TP_TRY(tpl_ws_reserve(&m->act, bytes, m->label));
    tp_tensor x2 = tpl_view2(x, tokens, m->hidden);
    tp_tensor y2 = tpl_view2(y, tokens, m->hidden);
    tp_tensor act = tpl_view2p(m->dev, m->dt, m->act.ptr, tokens, m->flocal);
    tp_phase prev = tp_phase_set(m->comm, TP_PHASE_FORWARD);
    tp_status st;
    if (m->overlap >= 2 && tokens > 0) {
        mlp_chunk c = {m, x2.data, y2.data, NULL, feed, feed_ctx};
        if (keep) /* the bias: tpl_mlp_forward_rows_done */
            st = tpl_all_reduce_rows_begin(m->comm, m->dt, y2.data, tokens, m->hidden, m->overlap,
                                           forward_rows, &c, keep);
        else
            st = tpl_all_reduce_rows_overlapped(m->comm, m->dt, y2.data, tokens, m->hidden,
                                                m->overlap, forward_rows, NULL, &c);
        if (st == TP_OK && !keep)
            st = tpl_linear_bias_add(m->fc2, y2.data, tokens);
        if (st == TP_OK) {
            tpl_linear_set_saved(m->fc1, &x2, tokens);
            tpl_linear_set_saved(m->fc2, &act, tokens);
        }
        goto done;
    }
    if (feed)
        TP_TRY_GOTO(feed(feed_ctx, 0, tokens), st, done);
    /* fc1 with bias and GeLU in its GEMM epilogue; the pre-activation is kept for gelu_bwd */
    TP_TRY_GOTO(tpl_linear_forward_act(m->fc1, &x2, &act, m->pre.ptr,
                                       m->tanh_approx ? TP_ACT_GELU_TANH : TP_ACT_GELU),
                st, done);
    TP_TRY_GOTO(tp_linear_forward(m->fc2, &act, &y2), st, done);
done:
    tp_phase_set(m->comm, prev);
    if (st != TP_OK)
        return st;
    m->x_saved = x->data;
    m->tokens_saved = tokens;
    m->saved = true;
    return TP_OK;
}

tp_status tp_mlp_forward(tp_mlp *m, const tp_tensor *x, tp_tensor *y)
{
    return forward(m, x, y, NULL, NULL, NULL);
}

tp_status tpl_mlp_forward_fed(tp_mlp *m, const tp_tensor *x, tp_tensor *y, tpl_rows_fn feed,
                              void *ctx, tpl_inflight *keep)
{
    return forward(m, x, y, feed, ctx, keep);
}

tp_status tpl_mlp_forward_rows_done(tp_mlp *m, tpl_inflight *f, void *y, int64_t r1, int64_t *lo,
                                    int64_t *hi)
{
    TP_TRY(tpl_inflight_wait_rows(f, r1, lo, hi));
    tp_phase prev = tp_phase_set(m->comm, TP_PHASE_FORWARD);
    tp_status st = tpl_linear_bias_add(
        m->fc2, (char *)y + (size_t)(*lo * m->hidden) * tp_dtype_size(m->dt), *hi - *lo);
    tp_phase_set(m->comm, prev);
    return st;
}

tp_status tp_mlp_backward(tp_mlp *m, const tp_tensor *dy, tp_tensor *dx)
{
    if (!m)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_mlp_backward: mlp is NULL");
    if (!m->saved)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "%s: backward called before forward (it needs the saved activations)",
                            m->label);
    int64_t tokens;
    TP_TRY(check_hidden(m, "dy", dy, &tokens));
    if (tokens != m->tokens_saved)
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: tokens mismatch: dy has %lld tokens but the last forward had %lld",
                            m->label, (long long)tokens, (long long)m->tokens_saved);
    tp_tensor dx2 = {0};
    if (dx) {
        TP_TRY(tpl_prepare_out(m->label, "dx", dx, dy, m->dev, m->dt, m->hidden, ""));
        dx2 = tpl_view2(dx, tokens, m->hidden);
    }
    TP_TRY(tpl_ws_reserve(&m->grad, (size_t)(tokens * m->flocal) * tp_dtype_size(m->dt), m->label));
    tp_tensor dy2 = tpl_view2(dy, tokens, m->hidden);
    tp_tensor dh = tpl_view2p(m->dev, m->dt, m->grad.ptr, tokens, m->flocal);
    tp_phase prev = tp_phase_set(m->comm, TP_PHASE_BACKWARD);
    tp_status st;
    /* the chunks write dx before the weight gradients read dy and x: not into either */
    if (dx && m->overlap >= 2 && tokens > 0 && dx2.data != dy2.data && dx2.data != m->x_saved) {
        mlp_chunk c = {m, dy2.data, dx2.data, dh.data, NULL, NULL};
        TP_TRY_GOTO(tpl_linear_input_grad_rows(m->fc2, dy2.data, dh.data, 0, tokens), st, done);
        TP_TRY_GOTO(tp_dev_gelu_bwd(m->dev, m->dt, tokens * m->flocal, m->pre.ptr, dh.data, dh.data,
                                    m->tanh_approx),
                    st, done);
        st = tpl_all_reduce_rows_overlapped(m->comm, m->dt, dx2.data, tokens, m->hidden, m->overlap,
                                            backward_rows, weight_grads, &c);
        goto done;
    }
    TP_TRY_GOTO(tp_linear_backward(m->fc2, &dy2, &dh), st, done); /* no communication */
    if (tokens > 0)
        TP_TRY_GOTO(tp_dev_gelu_bwd(m->dev, m->dt, tokens * m->flocal, m->pre.ptr, dh.data, dh.data,
                                    m->tanh_approx),
                    st, done);
    TP_TRY_GOTO(tp_linear_backward(m->fc1, &dh, dx ? &dx2 : NULL), st, done); /* one all-reduce */
done:
    tp_phase_set(m->comm, prev);
    return st;
}

tp_status tp_mlp_zero_grad(tp_mlp *m)
{
    if (!m)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_mlp_zero_grad: mlp is NULL");
    TP_TRY(tp_linear_zero_grad(m->fc1));
    return tp_linear_zero_grad(m->fc2);
}
