/* SPDX-License-Identifier: MIT */
/* linear.c — ColumnParallelLinear and RowParallelLinear, forward and backward. */
#include "layers-internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tp_linear {
    tp_comm *comm;
    tp_device *dev;
    tp_linear_kind kind;
    tp_dtype dt; /* of the weights, grads and activations */
    size_t es;   /* its size in bytes */
    char *label;
    int rank, size;
    int64_t in, out;
    int64_t lo, hi, nloc; /* this rank's range of the split dimension */
    int64_t *off;         /* size+1 shard offsets of the split dimension */
    size_t *counts;       /* size scratch counts for all_gatherv */
    bool has_bias, gather_output, input_is_parallel;
    int overlap; /* chunks of the row forward; >= 2: overlapped (see tp_linear_config) */
    tp_tensor w, b, dw, db;
    tpl_ws ws, ws2;
    /* saved by forward for backward */
    tp_tensor x_saved;
    int64_t tokens_saved;
    bool saved;
};

static const char *kind_name(tp_linear_kind k)
{
    return k == TP_LINEAR_COLUMN ? "ColumnParallelLinear" : "RowParallelLinear";
}

void tp_linear_free(tp_linear *l)
{
    if (!l)
        return;
    tpl_release(&l->w, TP_USE_PARAMETERS);
    tpl_release(&l->b, TP_USE_PARAMETERS);
    tpl_release(&l->dw, TP_USE_GRADIENTS);
    tpl_release(&l->db, TP_USE_GRADIENTS);
    tpl_ws_release(&l->ws);
    tpl_ws_release(&l->ws2);
    free(l->off);
    free(l->counts);
    free(l->label);
    free(l);
}

/* Refuse a shape this layer cannot split over its T ranks. */
static tp_status check_config(const tp_linear *l)
{
    const char *who = l->label;
    TP_TRY(tpl_check_dtype(who, l->dt));
    TP_TRY(tpl_check_overlap(who, l->overlap));
    if (l->in <= 0 || l->out <= 0)
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: in_features (%lld) and out_features (%lld) must be >= 1", who,
                            (long long)l->in, (long long)l->out);
    int64_t full; /* the full weight (full_weight, get_full) must be addressable */
    TP_TRY(tpl_mul(who, "weight in_features x out_features", l->in, l->out, &full));
    int64_t split = l->kind == TP_LINEAR_COLUMN ? l->out : l->in;
    const char *split_name = l->kind == TP_LINEAR_COLUMN ? "out_features" : "in_features";
    if (split < l->size)
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: T=%d is larger than %s=%lld, the dimension this layer splits: "
                            "some rank would get 0 %s; use T <= %lld or a larger %s",
                            who, l->size, split_name, (long long)split,
                            l->kind == TP_LINEAR_COLUMN ? "columns" : "rows", (long long)split,
                            split_name);
    return TP_OK;
}

/* Allocate this rank's weight (and bias) shard and fill it from the user's
 * full tensors or the counter-based master initialization. */
static tp_status init_params(tp_linear *l, const tp_linear_config *cfg)
{
    const bool column = l->kind == TP_LINEAR_COLUMN;
    int64_t wr = column ? l->in : l->nloc;
    int64_t wc = column ? l->nloc : l->out;
    int64_t bn = column ? l->nloc : l->out;
    TP_TRY(tpl_alloc(l->dev, TP_USE_PARAMETERS, l->dt, 2, (int64_t[]){wr, wc}, &l->w));
    size_t hn = (size_t)(wr * wc) > (size_t)bn ? (size_t)(wr * wc) : (size_t)bn;
    float *host = malloc(hn * sizeof(float));
    if (!host)
        return tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory for the weight shard",
                            l->label);
    float bound = (float)(1.0 / sqrt((double)l->in));
    int64_t r0 = column ? 0 : l->lo, r1 = r0 + wr;
    int64_t c0 = column ? l->lo : 0, c1 = c0 + wc;
    if (cfg->full_weight)
        tpl_host_block(cfg->full_weight, l->out, r0, r1, c0, c1, host);
    else
        tp_master_fill(cfg->seed, cfg->tensor_id, l->out, r0, r1, c0, c1, bound, host);
    tp_status st;
    /* host weights are f32: rounded to the layer's dtype on the way up */
    TP_TRY_GOTO(tpl_upload_f32(l->dev, l->dt, l->w.data, host, (size_t)(wr * wc)), st, out);
    if (l->has_bias) {
        TP_TRY_GOTO(tpl_alloc(l->dev, TP_USE_PARAMETERS, l->dt, 1, &bn, &l->b), st, out);
        int64_t b0 = column ? l->lo : 0;
        if (cfg->full_bias)
            memcpy(host, cfg->full_bias + b0, (size_t)bn * sizeof(float));
        else
            tp_master_fill(cfg->seed, cfg->tensor_id + 1, l->out, 0, 1, b0, b0 + bn, bound, host);
        TP_TRY_GOTO(tpl_upload_f32(l->dev, l->dt, l->b.data, host, (size_t)bn), st, out);
    }
out:
    free(host);
    return st;
}

static tp_status linear_create(tp_comm *comm, const tp_linear_config *cfg, tp_linear_kind kind,
                               tp_linear **out)
{
    if (!out)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s create: out is NULL", kind_name(kind));
    *out = NULL;
    if (!comm || !cfg)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s create: %s is NULL", kind_name(kind),
                            !comm ? "comm" : "cfg");
    tp_linear *l = calloc(1, sizeof *l);
    if (!l)
        return tp_set_error(TP_ERR_NO_MEMORY, "%s create: out of host memory", kind_name(kind));
    l->comm = comm;
    l->dev = tp_comm_device(comm);
    l->kind = kind;
    l->rank = tp_comm_rank(comm);
    l->size = tp_comm_size(comm);
    l->label = tpl_label(kind_name(kind), cfg->name, comm);
    l->in = cfg->in_features;
    l->out = cfg->out_features;
    l->has_bias = cfg->bias;
    l->gather_output = cfg->gather_output;
    l->input_is_parallel = cfg->input_is_parallel;
    l->overlap = cfg->overlap;
    l->ws.dev = l->ws2.dev = l->dev;
    l->dt = cfg->dtype;
    l->es = tp_dtype_size(cfg->dtype);
    if (!l->label) {
        free(l);
        return tp_set_error(TP_ERR_NO_MEMORY, "%s create: out of host memory", kind_name(kind));
    }
    tp_status st;
    TP_TRY_GOTO(check_config(l), st, fail);
    l->off = malloc(sizeof(int64_t) * (size_t)(l->size + 1));
    l->counts = malloc(sizeof(size_t) * (size_t)l->size);
    if (!l->off || !l->counts) {
        st = tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory", l->label);
        goto fail;
    }
    tpl_shard_offsets(kind == TP_LINEAR_COLUMN ? l->out : l->in, l->size, l->off);
    l->lo = l->off[l->rank];
    l->hi = l->off[l->rank + 1];
    l->nloc = l->hi - l->lo;
    TP_TRY_GOTO(init_params(l, cfg), st, fail);
    *out = l;
    return TP_OK;
fail:
    tp_linear_free(l);
    return st;
}

tp_status tp_column_linear_create(tp_comm *comm, const tp_linear_config *cfg, tp_linear **out)
{
    return linear_create(comm, cfg, TP_LINEAR_COLUMN, out);
}

tp_status tp_row_linear_create(tp_comm *comm, const tp_linear_config *cfg, tp_linear **out)
{
    return linear_create(comm, cfg, TP_LINEAR_ROW, out);
}

/* The expected input width, and a diagnosis when x has another one. */
static tp_status check_input_width(tp_linear *l, int64_t got)
{
    const char *who = l->label;
    if (l->kind == TP_LINEAR_COLUMN) {
        if (got == l->in)
            return TP_OK;
        return tp_set_error(
            TP_ERR_SHAPE,
            "%s: x last dim (in_features) expected %lld, got %lld; a column-parallel "
            "layer takes the full input [tokens, in_features]%s",
            who, (long long)l->in, (long long)got,
            got < l->in ? " (is x a shard? gather it first, or use a "
                          "RowParallelLinear with input_is_parallel=true)"
                        : "");
    }
    if (l->input_is_parallel) {
        if (got == l->nloc)
            return TP_OK;
        if (got == l->in)
            return tp_set_error(
                TP_ERR_SHAPE,
                "%s: x has %lld columns = in_features, but input_is_parallel=true expects this "
                "rank's shard of %lld columns (in_features %lld split over T=%d, columns "
                "[%lld, %lld)); did you mean input_is_parallel=false, or forget to pass the column "
                "layer's local output (gather_output=false)?",
                who, (long long)got, (long long)l->nloc, (long long)l->in, l->size,
                (long long)l->lo, (long long)l->hi);
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: x last dim expected %lld (this rank's shard [%lld, %lld) of "
                            "in_features %lld over T=%d), got %lld; if x is a ColumnParallelLinear "
                            "output, that layer's out_features must equal this layer's in_features "
                            "(%lld) and its comm must be this one",
                            who, (long long)l->nloc, (long long)l->lo, (long long)l->hi,
                            (long long)l->in, l->size, (long long)got, (long long)l->in);
    }
    if (got == l->in)
        return TP_OK;
    return tp_set_error(
        TP_ERR_SHAPE,
        "%s: x last dim expected in_features=%lld (input_is_parallel=false takes the "
        "full input), got %lld%s",
        who, (long long)l->in, (long long)got,
        got == l->nloc ? "= this rank's shard; did you mean input_is_parallel=true?" : "");
}

static int64_t out_width(const tp_linear *l)
{
    if (l->kind == TP_LINEAR_COLUMN)
        return l->gather_output ? l->out : l->nloc;
    return l->out;
}

static char *out_hint(const tp_linear *l, char *buf, size_t n)
{
    buf[0] = 0;
    if (l->kind == TP_LINEAR_COLUMN && l->size > 1)
        snprintf(buf, n,
                 l->gather_output
                     ? " (gather_output=true gives the full out_features; did you mean "
                       "gather_output=false?)"
                     : " (gather_output=false gives this rank's shard [%lld, %lld) of out_features "
                       "%lld; did you mean gather_output=true?)",
                 (long long)l->lo, (long long)l->hi, (long long)l->out);
    return buf;
}

/* y = act(x W + b) for a column layer's local GEMM into c (pitch nloc);
 * pre (may be NULL) gets x W + b. One fused device call where it fuses. */
static tp_status column_gemm(tp_linear *l, const void *x, void *c, int64_t tokens, void *pre,
                             tp_act act)
{
    if (!l->has_bias && act == TP_ACT_NONE && !pre)
        return tpl_gemm(l->dev, l->dt, 0, 0, tokens, l->nloc, l->in, 0.0f, x, l->in, l->w.data,
                        l->nloc, c, l->nloc);
    if (tokens == 0)
        return TP_OK;
    tp_gemm_args g = {
        .struct_size = sizeof g,
        .dtype = l->dt,
        .m = tokens,
        .n = l->nloc,
        .k = l->in,
        .alpha = 1.0f,
        .a = x,
        .lda = l->in,
        .b = l->w.data,
        .ldb = l->nloc,
        .c = c,
        .ldc = l->nloc,
        .batch = 1,
    };
    return tp_dev_gemm_bias_act(l->dev, &g, l->has_bias ? l->b.data : NULL, act, pre);
}

tp_status tpl_linear_forward_rows(tp_linear *l, const void *x, void *y, int64_t r0, int64_t r1,
                                  void *pre, tp_act act)
{
    const size_t es = l->es;
    if (l->kind == TP_LINEAR_COLUMN)
        return column_gemm(l, (const char *)x + (size_t)(r0 * l->in) * es,
                           (char *)y + (size_t)(r0 * l->nloc) * es, r1 - r0,
                           pre ? (char *)pre + (size_t)(r0 * l->nloc) * es : NULL, act);
    /* the row layer's partial y rows = x_local rows W_local */
    const char *a = x;
    int64_t lda = l->nloc;
    if (!l->input_is_parallel) {
        a += (size_t)l->lo * es; /* own column slice of the full input */
        lda = l->in;
    }
    return tpl_gemm(l->dev, l->dt, 0, 0, r1 - r0, l->out, l->nloc, 0.0f,
                    a + (size_t)(r0 * lda) * es, lda, l->w.data, l->out,
                    (char *)y + (size_t)(r0 * l->out) * es, l->out);
}

/* The row layer's forward GEMM on token rows [r0, r1) of the chunked
 * path (tpl_all_reduce_rows_overlapped: chunk i's all-reduce is in flight
 * while chunk i+1's GEMM runs; the same bits as one GEMM and one
 * all-reduce, docs/determinism.md). */
typedef struct row_chunk {
    tp_linear *l;
    const void *x;
    void *y;
} row_chunk;

static tp_status row_rows(void *ctx, int64_t r0, int64_t r1)
{
    row_chunk *c = ctx;
    return tpl_linear_forward_rows(c->l, c->x, c->y, r0, r1, NULL, TP_ACT_NONE);
}

static tp_status forward_body(tp_linear *l, const tp_tensor *x, tp_tensor *y, int64_t tokens,
                              void *pre, tp_act act)
{
    const size_t es = l->es;
    if (l->kind == TP_LINEAR_COLUMN) {
        /* y_local = x W_local (+ b_local) */
        if (!l->gather_output)
            return column_gemm(l, x->data, y->data, tokens, pre, act);
        TP_TRY(tpl_ws_reserve(&l->ws, (size_t)(tokens * (l->nloc + l->out)) * es, l->label));
        void *c = l->ws.ptr;
        TP_TRY(column_gemm(l, x->data, c, tokens, pre, act));
        return tpl_gather_cols(l->comm, l->dt, c, y->data,
                               (char *)l->ws.ptr + (size_t)(tokens * l->nloc) * es, tokens, l->off,
                               l->counts);
    }
    /* row: y = sum over ranks of x_local W_local, then + b */
    if (l->overlap >= 2 && tokens > 0) {
        row_chunk c = {l, x->data, y->data};
        TP_TRY(tpl_all_reduce_rows_overlapped(l->comm, l->dt, y->data, tokens, l->out, l->overlap,
                                              row_rows, NULL, &c));
    } else {
        TP_TRY(tpl_linear_forward_rows(l, x->data, y->data, 0, tokens, NULL, TP_ACT_NONE));
        TP_TRY(tp_all_reduce(l->comm, y->data, y->data, (size_t)(tokens * l->out), l->dt, TP_SUM));
    }
    return tpl_linear_bias_add(l, y->data, tokens);
}

tp_status tpl_linear_bias_add(tp_linear *l, void *y, int64_t tokens)
{
    if (!l->has_bias || tokens == 0)
        return TP_OK;
    return tp_dev_bias_add(l->dev, l->dt, tokens, l->out, y, l->b.data);
}

static tp_status forward(tp_linear *l, const tp_tensor *x, tp_tensor *y, void *pre, tp_act act)
{
    int64_t tokens;
    TP_TRY(tpl_check_act(l->label, "x", x, l->dev, l->dt, &tokens));
    TP_TRY(check_input_width(l, x->shape[x->ndim - 1]));
    char hint[256];
    TP_TRY(tpl_prepare_out(l->label, "y", y, x, l->dev, l->dt, out_width(l),
                           out_hint(l, hint, sizeof hint)));
    if (y->data == x->data && tokens > 0)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: y aliases x; use a separate output", l->label);
    tp_phase prev = tp_phase_set(l->comm, TP_PHASE_FORWARD);
    tp_status st = forward_body(l, x, y, tokens, pre, act);
    tp_phase_set(l->comm, prev);
    if (st != TP_OK)
        return st;
    tpl_linear_set_saved(l, x, tokens);
    return TP_OK;
}

void tpl_linear_set_saved(tp_linear *l, const tp_tensor *x, int64_t tokens)
{
    l->x_saved = *x;
    l->x_saved.owned = false;
    l->tokens_saved = tokens;
    l->saved = true;
}

tp_status tp_linear_forward(tp_linear *l, const tp_tensor *x, tp_tensor *y)
{
    if (!l)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_linear_forward: layer is NULL");
    return forward(l, x, y, NULL, TP_ACT_NONE);
}

tp_status tpl_linear_forward_act(tp_linear *l, const tp_tensor *x, tp_tensor *y, void *pre,
                                 tp_act act)
{
    if (!l)
        return tp_set_error(TP_ERR_INVALID_ARG, "tpl_linear_forward_act: layer is NULL");
    if (act != TP_ACT_NONE && (l->kind != TP_LINEAR_COLUMN || l->gather_output))
        return tp_set_error(TP_ERR_INTERNAL,
                            "%s: a fused activation needs a column layer without gather_output",
                            l->label);
    return forward(l, x, y, pre, act);
}

static tp_status ensure_grads(tp_linear *l)
{
    if (!l->dw.data)
        TP_TRY(tpl_alloc(l->dev, TP_USE_GRADIENTS, l->dt, 2, l->w.shape, &l->dw));
    if (l->has_bias && !l->db.data)
        TP_TRY(tpl_alloc(l->dev, TP_USE_GRADIENTS, l->dt, 1, l->b.shape, &l->db));
    return TP_OK;
}

tp_status tp_linear_zero_grad(tp_linear *l)
{
    if (!l)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_linear_zero_grad: layer is NULL");
    bool fresh = !l->dw.data; /* tp_tensor_alloc zeroes */
    TP_TRY(ensure_grads(l));
    if (fresh)
        return TP_OK;
    TP_TRY(tp_dev_memset(l->dev, l->dw.data, 0, tp_tensor_bytes(&l->dw)));
    if (l->has_bias)
        TP_TRY(tp_dev_memset(l->dev, l->db.data, 0, tp_tensor_bytes(&l->db)));
    return TP_OK;
}

/* dW_local += x^T dy_local; db_local += colsum(dy_local) */
static tp_status column_weight_grad(tp_linear *l, const void *dyl, int64_t tokens)
{
    TP_TRY(tpl_gemm(l->dev, l->dt, 1, 0, l->in, l->nloc, tokens, 1.0f, l->x_saved.data, l->in, dyl,
                    l->nloc, l->dw.data, l->nloc));
    if (l->has_bias && tokens > 0)
        TP_TRY(tp_dev_bias_grad(l->dev, l->dt, tokens, l->nloc, dyl, l->db.data));
    return TP_OK;
}

/* dW_local += x_local^T dy; db += colsum(dy) (replicated: the same on every rank) */
static tp_status row_weight_grad(tp_linear *l, const void *dy, int64_t tokens)
{
    const char *xl = l->x_saved.data;
    int64_t ldx = l->nloc;
    if (!l->input_is_parallel) {
        xl += (size_t)l->lo * l->es;
        ldx = l->in;
    }
    TP_TRY(tpl_gemm(l->dev, l->dt, 1, 0, l->nloc, l->out, tokens, 1.0f, xl, ldx, dy, l->out,
                    l->dw.data, l->out));
    if (l->has_bias && tokens > 0)
        TP_TRY(tp_dev_bias_grad(l->dev, l->dt, tokens, l->out, dy, l->db.data));
    return TP_OK;
}

tp_status tpl_linear_weight_grad(tp_linear *l, const void *dy)
{
    TP_TRY(ensure_grads(l));
    return l->kind == TP_LINEAR_COLUMN ? column_weight_grad(l, dy, l->tokens_saved)
                                       : row_weight_grad(l, dy, l->tokens_saved);
}

tp_status tpl_linear_input_grad_rows(tp_linear *l, const void *dy, void *dx, int64_t r0, int64_t r1)
{
    const size_t es = l->es;
    /* column: [rows, in] partial = dy_local W_local^T; row: [rows, nloc] = dy W_local^T */
    int64_t k = l->kind == TP_LINEAR_COLUMN ? l->nloc : l->out;
    int64_t n = l->kind == TP_LINEAR_COLUMN ? l->in : l->nloc;
    return tpl_gemm(l->dev, l->dt, 0, 1, r1 - r0, n, k, 0.0f,
                    (const char *)dy + (size_t)(r0 * k) * es, k, l->w.data, k,
                    (char *)dx + (size_t)(r0 * n) * es, n);
}

/* Megatron's async input-gradient all-reduce: dx's GEMM first, its
 * all-reduce in flight while the weight gradient is computed, then the
 * wait. The same GEMMs and the same all-reduce as the blocking order, so
 * the same bits; only when they run changes. */
static tp_status column_backward_async(tp_linear *l, const void *dyl, tp_tensor *dx, int64_t tokens)
{
    TP_TRY(tpl_linear_input_grad_rows(l, dyl, dx->data, 0, tokens));
    tp_request *req;
    TP_TRY(
        tp_iall_reduce(l->comm, dx->data, dx->data, (size_t)(tokens * l->in), l->dt, TP_SUM, &req));
    return tpl_wait_all(&req, 1, column_weight_grad(l, dyl, tokens));
}

static tp_status column_backward(tp_linear *l, const tp_tensor *dy, tp_tensor *dx, int64_t tokens)
{
    const size_t es = l->es;
    const void *dyl = dy->data;
    if (l->gather_output) {
        /* take this rank's columns [lo, hi) of the full dy */
        TP_TRY(tpl_ws_reserve(&l->ws, (size_t)(tokens * l->nloc) * es, l->label));
        if (tokens > 0)
            TP_TRY(tp_dev_copy_2d(l->dev, l->ws.ptr, (size_t)l->nloc * es,
                                  (const char *)dy->data + (size_t)l->lo * es, (size_t)l->out * es,
                                  (size_t)l->nloc * es, (size_t)tokens));
        dyl = l->ws.ptr;
    }
    /* dx is written before the weight gradient reads x: not into x */
    if (dx && l->overlap >= 2 && dx->data != l->x_saved.data)
        return column_backward_async(l, dyl, dx, tokens);
    TP_TRY(column_weight_grad(l, dyl, tokens));
    if (!dx)
        return TP_OK;
    /* dx = sum over ranks of dy_local W_local^T */
    TP_TRY(tpl_linear_input_grad_rows(l, dyl, dx->data, 0, tokens));
    return tp_all_reduce(l->comm, dx->data, dx->data, (size_t)(tokens * l->in), l->dt, TP_SUM);
}

static tp_status row_backward(tp_linear *l, const tp_tensor *dy, tp_tensor *dx, int64_t tokens)
{
    const size_t es = l->es;
    TP_TRY(row_weight_grad(l, dy->data, tokens));
    if (!dx)
        return TP_OK;
    /* dx_local = dy W_local^T: no communication */
    if (l->input_is_parallel)
        return tpl_linear_input_grad_rows(l, dy->data, dx->data, 0, tokens);
    /* the full input's gradient: gather every rank's slice */
    TP_TRY(tpl_ws_reserve(&l->ws, (size_t)(tokens * l->nloc) * es, l->label));
    TP_TRY(tpl_ws_reserve(&l->ws2, (size_t)(tokens * l->in) * es, l->label));
    TP_TRY(tpl_linear_input_grad_rows(l, dy->data, l->ws.ptr, 0, tokens));
    return tpl_gather_cols(l->comm, l->dt, l->ws.ptr, dx->data, l->ws2.ptr, tokens, l->off,
                           l->counts);
}

tp_status tp_linear_backward(tp_linear *l, const tp_tensor *dy, tp_tensor *dx)
{
    if (!l)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_linear_backward: layer is NULL");
    if (!l->saved)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "%s: backward called before forward (it needs the saved input)",
                            l->label);
    int64_t tokens;
    TP_TRY(tpl_check_act(l->label, "dy", dy, l->dev, l->dt, &tokens));
    if (tokens != l->tokens_saved)
        return tp_set_error(
            TP_ERR_SHAPE,
            "%s: tokens mismatch: dy has %lld tokens but the last forward had %lld; "
            "call backward once per forward with the gradient of its output",
            l->label, (long long)tokens, (long long)l->tokens_saved);
    int64_t w = out_width(l);
    if (dy->shape[dy->ndim - 1] != w) {
        char hint[256];
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: dy last dim expected %lld (the forward output's), got %lld%s",
                            l->label, (long long)w, (long long)dy->shape[dy->ndim - 1],
                            out_hint(l, hint, sizeof hint));
    }
    if (dx) {
        TP_TRY(tpl_prepare_out(l->label, "dx", dx, &l->x_saved, l->dev, l->dt,
                               l->x_saved.shape[l->x_saved.ndim - 1], ""));
        if (dx->data == dy->data && tokens > 0)
            return tp_set_error(TP_ERR_INVALID_ARG, "%s: dx aliases dy; use a separate buffer",
                                l->label);
    }
    TP_TRY(ensure_grads(l));
    tp_phase prev = tp_phase_set(l->comm, TP_PHASE_BACKWARD);
    tp_status st = l->kind == TP_LINEAR_COLUMN ? column_backward(l, dy, dx, tokens)
                                               : row_backward(l, dy, dx, tokens);
    tp_phase_set(l->comm, prev);
    return st;
}

void tp_linear_get_params(tp_linear *l, tp_linear_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    if (!l)
        return;
    p->kind = l->kind;
    p->in_features = l->in;
    p->out_features = l->out;
    p->lo = l->lo;
    p->hi = l->hi;
    p->weight = &l->w;
    p->bias = l->has_bias ? &l->b : NULL;
    p->weight_grad = l->dw.data ? &l->dw : NULL;
    p->bias_grad = l->has_bias && l->db.data ? &l->db : NULL;
}

static tp_status get_full(tp_linear *l, const tp_tensor *w, const tp_tensor *b, float *hw,
                          float *hb)
{
    const size_t es = l->es;
    size_t full = (size_t)(l->in * l->out);
    TP_TRY(tpl_ws_reserve(&l->ws2, 2 * full * es, l->label));
    char *dst = l->ws2.ptr, *tmp = dst + full * es;
    if (l->kind == TP_LINEAR_COLUMN)
        TP_TRY(tpl_gather_cols(l->comm, l->dt, w->data, dst, tmp, l->in, l->off, l->counts));
    else
        TP_TRY(tpl_gather_rows(l->comm, l->dt, w->data, dst, l->off, l->out, l->counts));
    if (hw)
        TP_TRY(tpl_download_f32(l->dev, l->dt, hw, dst, full));
    if (!l->has_bias)
        return TP_OK;
    if (l->kind == TP_LINEAR_COLUMN) {
        TP_TRY(tpl_gather_cols(l->comm, l->dt, b->data, dst, tmp, 1, l->off, l->counts));
        return hb ? tpl_download_f32(l->dev, l->dt, hb, dst, (size_t)l->out) : TP_OK;
    }
    return hb ? tpl_download_f32(l->dev, l->dt, hb, b->data, (size_t)l->out) : TP_OK;
}

tp_status tp_linear_get_full(tp_linear *l, float *w, float *b)
{
    if (!l)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_linear_get_full: layer is NULL");
    return get_full(l, &l->w, &l->b, w, b);
}

tp_status tp_linear_get_full_grad(tp_linear *l, float *dw, float *db)
{
    if (!l)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_linear_get_full_grad: layer is NULL");
    TP_TRY(ensure_grads(l));
    return get_full(l, &l->dw, &l->db, dw, db);
}

int64_t tpl_linear_local_width(const tp_linear *l)
{
    return l->nloc;
}
