/* SPDX-License-Identifier: MIT */
/* embedding.c — VocabParallelEmbedding: table rows split by vocab id, one all-reduce. */
#include "layers-internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct tp_embedding {
    tp_comm *comm;
    tp_device *dev;
    char *label;
    int rank, size;
    int64_t vocab, dim, lo, hi;
    size_t *counts;
    bool sp;
    float bound;
    tp_dtype dt; /* table, its gradient, y and dy */
    size_t es;
    tp_tensor table, grad;
    tpl_ws ws;  /* get_full, and the SP partial output */
    tpl_ws dyf; /* SP backward: the gathered dy [n, dim] */
    tp_tensor ids_saved;
    int64_t n_saved;
    bool saved;
};

void tp_embedding_free(tp_embedding *e)
{
    if (!e)
        return;
    tpl_release(&e->table, TP_USE_PARAMETERS);
    tpl_release(&e->grad, TP_USE_GRADIENTS);
    tpl_ws_release(&e->ws);
    tpl_ws_release(&e->dyf);
    free(e->counts);
    free(e->label);
    free(e);
}

tp_status tp_embedding_create(tp_comm *comm, const tp_embedding_config *cfg, tp_embedding **out)
{
    if (!out)
        return tp_set_error(TP_ERR_INVALID_ARG, "VocabParallelEmbedding create: out is NULL");
    *out = NULL;
    if (!comm || !cfg)
        return tp_set_error(TP_ERR_INVALID_ARG, "VocabParallelEmbedding create: %s is NULL",
                            !comm ? "comm" : "cfg");
    tp_embedding *e = calloc(1, sizeof *e);
    if (!e)
        return tp_set_error(TP_ERR_NO_MEMORY, "VocabParallelEmbedding create: out of host memory");
    e->comm = comm;
    e->dev = e->ws.dev = e->dyf.dev = tp_comm_device(comm);
    e->rank = tp_comm_rank(comm);
    e->size = tp_comm_size(comm);
    e->vocab = cfg->vocab;
    e->dim = cfg->dim;
    e->sp = cfg->sequence_parallel;
    e->dt = cfg->dtype;
    e->es = tp_dtype_size(cfg->dtype);
    e->bound = cfg->init_bound != 0.0f ? cfg->init_bound : 1.0f;
    e->label = tpl_label("VocabParallelEmbedding", cfg->name, comm);
    e->counts = calloc((size_t)e->size, sizeof(size_t));
    tp_status st;
    float *host = NULL;
    if (!e->label || !e->counts) {
        st = tp_set_error(TP_ERR_NO_MEMORY, "VocabParallelEmbedding create: out of host memory");
        goto fail;
    }
    if (!(e->bound > 0.0f) || !isfinite(e->bound)) {
        st = tp_set_error(TP_ERR_INVALID_ARG,
                          "%s: init_bound %g must be a finite number > 0 "
                          "(0 selects the default 1.0)",
                          e->label, (double)cfg->init_bound);
        goto fail;
    }
    if (e->vocab <= 0 || e->dim <= 0) {
        st = tp_set_error(TP_ERR_SHAPE, "%s: vocab (%lld) and dim (%lld) must be >= 1", e->label,
                          (long long)e->vocab, (long long)e->dim);
        goto fail;
    }
    if (e->vocab < e->size) {
        st = tp_set_error(TP_ERR_SHAPE,
                          "%s: T=%d is larger than vocab=%lld, the dimension this layer splits: "
                          "some rank would get 0 rows; use T <= %lld",
                          e->label, e->size, (long long)e->vocab, (long long)e->vocab);
        goto fail;
    }
    TP_TRY_GOTO(tpl_check_dtype(e->label, e->dt), st, fail);
    int64_t full; /* the full table (full_table, get_full) must be addressable */
    TP_TRY_GOTO(tpl_mul(e->label, "table vocab x dim", e->vocab, e->dim, &full), st, fail);
    tp_shard_range(e->vocab, e->size, e->rank, &e->lo, &e->hi);
    TP_TRY_GOTO(tpl_alloc(e->dev, TP_USE_PARAMETERS, e->dt, 2, (int64_t[]){e->hi - e->lo, e->dim},
                          &e->table),
                st, fail);
    size_t n = (size_t)((e->hi - e->lo) * e->dim);
    host = malloc(n * sizeof(float));
    if (!host) {
        st = tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory", e->label);
        goto fail;
    }
    if (cfg->full_table)
        memcpy(host, cfg->full_table + e->lo * e->dim, n * sizeof(float));
    else
        tp_master_fill(cfg->seed, cfg->tensor_id, e->dim, e->lo, e->hi, 0, e->dim, e->bound, host);
    TP_TRY_GOTO(tpl_upload_f32(e->dev, e->dt, e->table.data, host, n), st, fail);
    free(host);
    *out = e;
    return TP_OK;
fail:
    free(host);
    tp_embedding_free(e);
    return st;
}

static tp_status check_ids(tp_embedding *e, const tp_tensor *ids, int64_t *n)
{
    if (!ids)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: ids is NULL", e->label);
    if (ids->dtype != TP_I32)
        return tp_set_error(TP_ERR_SHAPE, "%s: ids have dtype %s, expected i32 token ids", e->label,
                            tp_dtype_name(ids->dtype));
    if (ids->dev != e->dev)
        return tp_set_error(TP_ERR_SHAPE, "%s: ids live on a different device than the layer",
                            e->label);
    if (ids->ndim < 1 || ids->ndim > TP_MAX_DIMS - 1)
        return tp_set_error(TP_ERR_SHAPE, "%s: ids have %d dims, expected 1 to %d", e->label,
                            ids->ndim, TP_MAX_DIMS - 1);
    *n = tp_tensor_numel(ids);
    if (!ids->data && *n > 0)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: ids have no data", e->label);
    return TP_OK;
}

/* Token rows [*lo, *hi) of this rank's sequence-parallel shard of n tokens;
 * fills e->counts with every rank's element count. */
static void sp_shard(tp_embedding *e, int64_t n, int64_t *lo, int64_t *hi)
{
    for (int i = 0; i < e->size; i++) {
        int64_t a, b;
        tp_shard_range(n, e->size, i, &a, &b);
        e->counts[i] = (size_t)((b - a) * e->dim);
        if (i == e->rank)
            *lo = a, *hi = b;
    }
}

/* y = the rows of the n ids (summed over the vocab shards), or with sequence
 * parallelism this rank's token shard of them. */
static tp_status forward_body(tp_embedding *e, const tp_tensor *ids, tp_tensor *y, int64_t n)
{
    if (!e->sp) {
        if (n > 0)
            TP_TRY(tp_dev_embedding(e->dev, e->dt, n, e->dim, ids->data, e->lo, e->hi,
                                    e->table.data, y->data));
        return tp_all_reduce(e->comm, y->data, y->data, (size_t)(n * e->dim), e->dt, TP_SUM);
    }
    /* every token's partial row (own vocab range), then each rank keeps its token shard */
    TP_TRY(tpl_ws_reserve(&e->ws, (size_t)(n * e->dim) * e->es, e->label));
    if (n > 0)
        TP_TRY(tp_dev_embedding(e->dev, e->dt, n, e->dim, ids->data, e->lo, e->hi, e->table.data,
                                e->ws.ptr));
    return tp_reduce_scatterv(e->comm, e->ws.ptr, y->data, e->counts, e->dt, TP_SUM);
}

tp_status tp_embedding_forward(tp_embedding *e, const tp_tensor *ids, tp_tensor *y)
{
    if (!e)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_embedding_forward: layer is NULL");
    int64_t n = 0;
    TP_TRY(check_ids(e, ids, &n));
    if (!y)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: y is NULL", e->label);
    int64_t nd;
    TP_TRY(tpl_mul(e->label, "output tokens x dim", n, e->dim, &nd));
    int64_t shape[TP_MAX_DIMS], slo = 0, shi = n;
    int ndim = ids->ndim + 1;
    for (int i = 0; i < ids->ndim; i++)
        shape[i] = ids->shape[i];
    shape[ids->ndim] = e->dim;
    if (e->sp) { /* y is the token shard [shi-slo, dim] */
        sp_shard(e, n, &slo, &shi);
        ndim = 2;
        shape[0] = shi - slo;
        shape[1] = e->dim;
    }
    int64_t rows = shi - slo;
    if (!y->data && y->ndim == 0) {
        TP_TRY(tp_tensor_alloc(e->dev, e->dt, ndim, shape, y));
    } else {
        int64_t tokens;
        TP_TRY(tpl_check_act(e->label, "y", y, e->dev, e->dt, &tokens));
        if (tokens != rows)
            return tp_set_error(TP_ERR_SHAPE,
                                "%s: tokens mismatch: y has %lld tokens, expected "
                                "%lld%s",
                                e->label, (long long)tokens, (long long)rows,
                                e->sp ? " (sequence_parallel: this rank's token shard of the ids)"
                                      : " (one per id)");
        if (y->shape[y->ndim - 1] != e->dim)
            return tp_set_error(TP_ERR_SHAPE, "%s: y last dim expected dim=%lld, got %lld",
                                e->label, (long long)e->dim, (long long)y->shape[y->ndim - 1]);
    }
    tp_phase prev = tp_phase_set(e->comm, TP_PHASE_FORWARD);
    tp_status st = forward_body(e, ids, y, n);
    tp_phase_set(e->comm, prev);
    if (st != TP_OK)
        return st;
    e->ids_saved = *ids;
    e->ids_saved.owned = false;
    e->n_saved = n;
    e->saved = true;
    return TP_OK;
}

static tp_status ensure_grad(tp_embedding *e)
{
    if (e->grad.data)
        return TP_OK;
    return tpl_alloc(e->dev, TP_USE_GRADIENTS, e->dt, 2, (int64_t[]){e->hi - e->lo, e->dim},
                     &e->grad);
}

/* grad += the gradients of this rank's vocab rows among the n ids. */
static tp_status backward_body(tp_embedding *e, const tp_tensor *dy, int64_t n)
{
    const void *full = dy->data;
    if (e->sp) { /* every rank needs every token's gradient for its vocab rows */
        TP_TRY(tpl_ws_reserve(&e->dyf, (size_t)(n * e->dim) * e->es, e->label));
        TP_TRY(tp_all_gatherv(e->comm, dy->data, e->dyf.ptr, e->counts, e->dt));
        full = e->dyf.ptr;
    }
    if (n == 0)
        return TP_OK;
    return tp_dev_embedding_bwd(e->dev, e->dt, n, e->dim, e->ids_saved.data, e->lo, e->hi, full,
                                e->grad.data);
}

tp_status tp_embedding_backward(tp_embedding *e, const tp_tensor *dy)
{
    if (!e)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_embedding_backward: layer is NULL");
    if (!e->saved)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: backward called before forward", e->label);
    int64_t tokens, n = e->n_saved, slo = 0, shi = n;
    TP_TRY(tpl_check_act(e->label, "dy", dy, e->dev, e->dt, &tokens));
    if (e->sp)
        sp_shard(e, n, &slo, &shi);
    if (tokens != shi - slo || dy->shape[dy->ndim - 1] != e->dim)
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: dy expected %lld tokens x dim %lld (the forward output), got "
                            "%lld x %lld",
                            e->label, (long long)(shi - slo), (long long)e->dim, (long long)tokens,
                            (long long)dy->shape[dy->ndim - 1]);
    TP_TRY(ensure_grad(e));
    tp_phase prev = tp_phase_set(e->comm, TP_PHASE_BACKWARD);
    tp_status st = backward_body(e, dy, n);
    tp_phase_set(e->comm, prev);
    return st;
}

const void *tpl_embedding_gathered_dy(const tp_embedding *e)
{
    return e && e->sp ? e->dyf.ptr : NULL;
}

tp_status tp_embedding_zero_grad(tp_embedding *e)
{
    if (!e)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_embedding_zero_grad: layer is NULL");
    if (!e->grad.data)
        return ensure_grad(e);
    return tp_dev_memset(e->dev, e->grad.data, 0, tp_tensor_bytes(&e->grad));
}

void tp_embedding_get_shard(tp_embedding *e, int64_t *lo, int64_t *hi, tp_tensor **table,
                            tp_tensor **grad)
{
    if (lo)
        *lo = e ? e->lo : 0;
    if (hi)
        *hi = e ? e->hi : 0;
    if (table)
        *table = e ? &e->table : NULL;
    if (grad)
        *grad = e && e->grad.data ? &e->grad : NULL;
}

static tp_status get_full(tp_embedding *e, const tp_tensor *t, float *host)
{
    size_t n = (size_t)(e->vocab * e->dim);
    TP_TRY(tpl_ws_reserve(&e->ws, n * e->es, e->label));
    for (int i = 0; i < e->size; i++) {
        int64_t a, b;
        tp_shard_range(e->vocab, e->size, i, &a, &b);
        e->counts[i] = (size_t)((b - a) * e->dim);
    }
    TP_TRY(tp_all_gatherv(e->comm, t->data, e->ws.ptr, e->counts, e->dt));
    return host ? tpl_download_f32(e->dev, e->dt, host, e->ws.ptr, n) : TP_OK;
}

tp_status tp_embedding_get_full(tp_embedding *e, float *table)
{
    if (!e)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_embedding_get_full: layer is NULL");
    return get_full(e, &e->table, table);
}

tp_status tp_embedding_get_full_grad(tp_embedding *e, float *grad)
{
    if (!e)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_embedding_get_full_grad: layer is NULL");
    TP_TRY(ensure_grad(e));
    return get_full(e, &e->grad, grad);
}
