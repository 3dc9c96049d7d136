/* SPDX-License-Identifier: MIT */
/*
 * norm.c — LayerNorm / RMSNorm with replicated parameters.
 *
 * Without sequence parallelism every rank normalizes the same full tokens
 * (the inputs come out of an all-reduce, identical on every rank), so the
 * parameter gradients are computed identically everywhere and need no
 * communication. With sequence parallelism a rank sees only its token
 * shard: its parameter gradient is a partial sum, and backward adds the
 * other ranks' parts with one all-reduce (sum) before accumulating, so every
 * rank's copy stays the same.
 */
#include "xf-internal.h"

#include <stdlib.h>
#include <string.h>

struct tp_norm {
    tp_comm *comm;
    tp_device *dev;
    char *label;
    int64_t dim;
    bool rms, has_bias, sp;
    float eps;
    tp_dtype dt; /* parameters, their gradients and activations; statistics f32 */
    size_t es;
    tp_tensor gamma, beta, dgamma, dbeta;
    tpl_ws mean, rstd, contrib;
    tp_tensor x_saved;
    void *y_out; /* the forward's y (tpl_norm_forward_rows) */
    int64_t rows;
    bool saved;
};

void tp_norm_free(tp_norm *n)
{
    if (!n)
        return;
    tpl_release(&n->gamma, TP_USE_PARAMETERS);
    tpl_release(&n->beta, TP_USE_PARAMETERS);
    tpl_release(&n->dgamma, TP_USE_GRADIENTS);
    tpl_release(&n->dbeta, TP_USE_GRADIENTS);
    tpl_ws_release(&n->mean);
    tpl_ws_release(&n->rstd);
    tpl_ws_release(&n->contrib);
    free(n->label);
    free(n);
}

tp_status tp_norm_create(tp_comm *comm, const tp_norm_config *cfg, tp_norm **out)
{
    if (!out)
        return tp_set_error(TP_ERR_INVALID_ARG, "Norm create: out is NULL");
    *out = NULL;
    if (!comm || !cfg)
        return tp_set_error(TP_ERR_INVALID_ARG, "Norm create: %s is NULL", !comm ? "comm" : "cfg");
    tp_norm *n = calloc(1, sizeof *n);
    if (!n)
        return tp_set_error(TP_ERR_NO_MEMORY, "Norm create: out of host memory");
    n->comm = comm;
    n->dev = tp_comm_device(comm);
    n->mean.dev = n->rstd.dev = n->contrib.dev = n->dev;
    n->mean.keep = n->rstd.keep = true;
    n->dim = cfg->dim;
    n->rms = cfg->rms;
    n->has_bias = cfg->bias;
    n->sp = cfg->sequence_parallel;
    n->eps = cfg->eps > 0.0f ? cfg->eps : 1e-5f;
    n->dt = cfg->dtype;
    n->es = tp_dtype_size(cfg->dtype);
    n->label = tpl_label(cfg->rms ? "RMSNorm" : "LayerNorm", cfg->name, comm);
    tp_status st;
    float *host = NULL;
    if (!n->label) {
        st = tp_set_error(TP_ERR_NO_MEMORY, "Norm create: out of host memory");
        goto fail;
    }
    if (cfg->dim <= 0 || cfg->eps < 0.0f) {
        st = tp_set_error(TP_ERR_SHAPE, "%s: dim (%lld) must be >= 1 and eps (%g) >= 0", n->label,
                          (long long)cfg->dim, (double)cfg->eps);
        goto fail;
    }
    TP_TRY_GOTO(tpl_check_dtype(n->label, n->dt), st, fail);
    int64_t two_dim;
    TP_TRY_GOTO(tpl_mul(n->label, "dim x 2 parameters", n->dim, 2, &two_dim), st, fail);
    host = malloc((size_t)n->dim * XF_ES);
    if (!host) {
        st = tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory", n->label);
        goto fail;
    }
    for (int64_t i = 0; i < n->dim; i++)
        host[i] = cfg->full_gamma ? cfg->full_gamma[i] : 1.0f;
    TP_TRY_GOTO(tpl_alloc(n->dev, TP_USE_PARAMETERS, n->dt, 1, &n->dim, &n->gamma), st, fail);
    TP_TRY_GOTO(tpl_upload_f32(n->dev, n->dt, n->gamma.data, host, (size_t)n->dim), st, fail);
    if (n->has_bias) {
        for (int64_t i = 0; i < n->dim; i++)
            host[i] = cfg->full_beta ? cfg->full_beta[i] : 0.0f;
        TP_TRY_GOTO(tpl_alloc(n->dev, TP_USE_PARAMETERS, n->dt, 1, &n->dim, &n->beta), st, fail);
        TP_TRY_GOTO(tpl_upload_f32(n->dev, n->dt, n->beta.data, host, (size_t)n->dim), st, fail);
    }
    free(host);
    *out = n;
    return TP_OK;
fail:
    free(host);
    tp_norm_free(n);
    return st;
}

static tp_status check_in(tp_norm *n, const char *what, const tp_tensor *t, int64_t *rows)
{
    TP_TRY(tpl_check_act(n->label, what, t, n->dev, n->dt, rows));
    if (t->shape[t->ndim - 1] != n->dim)
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: %s last dim expected %lld (the normalized dim), got %lld",
                            n->label, what, (long long)n->dim, (long long)t->shape[t->ndim - 1]);
    return TP_OK;
}

tp_status tpl_norm_forward_begin(tp_norm *n, const tp_tensor *x, tp_tensor *y)
{
    int64_t rows;
    n->saved = false;
    TP_TRY(check_in(n, "x", x, &rows));
    TP_TRY(tpl_prepare_out(n->label, "y", y, x, n->dev, n->dt, n->dim, ""));
    TP_TRY(tpl_ws_reserve(&n->mean, (size_t)(rows ? rows : 1) * XF_ES, n->label));
    TP_TRY(tpl_ws_reserve(&n->rstd, (size_t)(rows ? rows : 1) * XF_ES, n->label));
    n->x_saved = *x;
    n->x_saved.owned = false;
    n->y_out = y->data;
    n->rows = rows;
    return TP_OK;
}

tp_status tpl_norm_forward_rows(tp_norm *n, int64_t r0, int64_t r1)
{
    tp_phase prev = tp_phase_set(n->comm, TP_PHASE_FORWARD);
    tp_status st = TP_OK;
    size_t at = (size_t)(r0 * n->dim) * n->es;
    if (r1 > r0)
        st = tp_dev_norm(n->dev, n->dt, r1 - r0, n->dim, (const char *)n->x_saved.data + at,
                         n->gamma.data, n->has_bias ? n->beta.data : NULL, (char *)n->y_out + at,
                         n->rms ? NULL : (float *)n->mean.ptr + r0, (float *)n->rstd.ptr + r0,
                         n->eps, n->rms ? 1 : 0);
    tp_phase_set(n->comm, prev);
    if (st == TP_OK && r1 == n->rows)
        n->saved = true;
    return st;
}

tp_status tp_norm_forward(tp_norm *n, const tp_tensor *x, tp_tensor *y)
{
    if (!n)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_norm_forward: layer is NULL");
    TP_TRY(tpl_norm_forward_begin(n, x, y));
    return tpl_norm_forward_rows(n, 0, n->rows);
}

static tp_status ensure_grads(tp_norm *n)
{
    if (!n->dgamma.data)
        TP_TRY(tpl_alloc(n->dev, TP_USE_GRADIENTS, n->dt, 1, &n->dim, &n->dgamma));
    if (n->has_bias && !n->dbeta.data)
        TP_TRY(tpl_alloc(n->dev, TP_USE_GRADIENTS, n->dt, 1, &n->dim, &n->dbeta));
    return TP_OK;
}

tp_status tp_norm_zero_grad(tp_norm *n)
{
    if (!n)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_norm_zero_grad: layer is NULL");
    TP_TRY(ensure_grads(n));
    TP_TRY(tp_dev_memset(n->dev, n->dgamma.data, 0, tp_tensor_bytes(&n->dgamma)));
    if (n->has_bias)
        TP_TRY(tp_dev_memset(n->dev, n->dbeta.data, 0, tp_tensor_bytes(&n->dbeta)));
    return TP_OK;
}

tp_dtype tpl_norm_dtype(const tp_norm *n)
{
    return n->dt;
}

int64_t tpl_norm_contrib_len(const tp_norm *n)
{
    return n->dim * (n->has_bias ? 2 : 1);
}

/* dx (may be NULL: computed into scratch) and the parameter gradients into
 * dg/db (accumulating). */
static tp_status bwd(tp_norm *n, const tp_tensor *dy, tp_tensor *dx, void *dg, void *db)
{
    if (!n->saved)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "%s: backward called before forward (it needs the saved input)",
                            n->label);
    int64_t rows;
    TP_TRY(check_in(n, "dy", dy, &rows));
    if (rows != n->rows)
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: tokens mismatch: dy has %lld rows but the last forward had %lld",
                            n->label, (long long)rows, (long long)n->rows);
    if (!dx)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: dx is NULL", n->label);
    TP_TRY(tpl_prepare_out(n->label, "dx", dx, &n->x_saved, n->dev, n->dt, n->dim, ""));
    if (rows == 0)
        return TP_OK;
    return tp_dev_norm_bwd(n->dev, n->dt, rows, n->dim, n->x_saved.data, n->gamma.data,
                           n->rms ? NULL : n->mean.ptr, n->rstd.ptr, dy->data, dx->data, dg, db,
                           n->rms ? 1 : 0);
}

tp_status tpl_norm_backward_local(tp_norm *n, const tp_tensor *dy, tp_tensor *dx, void *contrib)
{
    char *c = contrib;
    return bwd(n, dy, dx, c, n->has_bias ? c + (size_t)n->dim * n->es : NULL);
}

tp_status tpl_norm_add_contrib(tp_norm *n, const void *contrib)
{
    TP_TRY(ensure_grads(n));
    TP_TRY(tp_dev_axpby(n->dev, n->dt, n->dim, 1.0f, contrib, 1.0f, n->dgamma.data));
    if (!n->has_bias)
        return TP_OK;
    return tp_dev_axpby(n->dev, n->dt, n->dim, 1.0f, (const char *)contrib + (size_t)n->dim * n->es,
                        1.0f, n->dbeta.data);
}

/* Sequence parallel: this shard's parameter-gradient part, summed over the
 * ranks before it is accumulated. */
static tp_status sp_backward(tp_norm *n, const tp_tensor *dy, tp_tensor *dx)
{
    int64_t len = tpl_norm_contrib_len(n);
    TP_TRY(tpl_ws_reserve(&n->contrib, (size_t)len * n->es, n->label));
    TP_TRY(tp_dev_memset(n->dev, n->contrib.ptr, 0, (size_t)len * n->es));
    TP_TRY(tpl_norm_backward_local(n, dy, dx, n->contrib.ptr));
    TP_TRY(tp_all_reduce(n->comm, n->contrib.ptr, n->contrib.ptr, (size_t)len, n->dt, TP_SUM));
    return tpl_norm_add_contrib(n, n->contrib.ptr);
}

tp_status tp_norm_backward(tp_norm *n, const tp_tensor *dy, tp_tensor *dx)
{
    if (!n)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_norm_backward: layer is NULL");
    TP_TRY(ensure_grads(n));
    tp_phase prev = tp_phase_set(n->comm, TP_PHASE_BACKWARD);
    tp_status st = n->sp ? sp_backward(n, dy, dx)
                         : bwd(n, dy, dx, n->dgamma.data, n->has_bias ? n->dbeta.data : NULL);
    tp_phase_set(n->comm, prev);
    return st;
}

void tp_norm_get_params(tp_norm *n, tp_tensor **gamma, tp_tensor **beta, tp_tensor **dgamma,
                        tp_tensor **dbeta)
{
    if (gamma)
        *gamma = n ? &n->gamma : NULL;
    if (beta)
        *beta = n && n->has_bias ? &n->beta : NULL;
    if (dgamma)
        *dgamma = n && n->dgamma.data ? &n->dgamma : NULL;
    if (dbeta)
        *dbeta = n && n->has_bias && n->dbeta.data ? &n->dbeta : NULL;
}
