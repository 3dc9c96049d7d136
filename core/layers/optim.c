/* SPDX-License-Identifier: MIT */
/* optim.c — SGD and AdamW over a list of parameters (no communication). */
#include "layers-internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct tp_optim {
    tp_comm *comm;
    tp_device *dev;
    tp_optim_config cfg;
    tp_param *params;
    int n;
    float **m, **v;  /* AdamW moments per parameter (device); m alone: SGD momentum buffer */
    float **master;  /* f32 master copy of a bf16/f16 parameter (device), else NULL */
    size_t *state;   /* device bytes counted as optimizer state per parameter */
    bool host_path;  /* some parameter is bf16/f16 or the loss is scaled: see step */
    float **gh;      /* host f32 unscaled gradients (host path) */
    void *hbuf;      /* host staging of one parameter in its dtype (host path) */
    tpl_ws g32;      /* device f32 gradient of one parameter (host path) */
    float scale;     /* current loss scale */
    int64_t good;    /* finite steps since the scale last changed */
    int64_t skipped; /* steps skipped for a non-finite gradient */
    int64_t steps;
};

tp_optim_config tp_optim_defaults(tp_optim_kind kind)
{
    tp_optim_config c = {.kind = kind};
    if (kind == TP_OPTIM_ADAMW) {
        c.lr = 1e-3f;
        c.beta1 = 0.9f;
        c.beta2 = 0.999f;
        c.eps = 1e-8f;
        c.weight_decay = 0.01f;
    } else {
        c.lr = 1e-2f;
    }
    return c;
}

void tp_optim_free(tp_optim *o)
{
    if (!o)
        return;
    for (int i = 0; i < o->n; i++) {
        if (o->m)
            tp_dev_free(o->dev, o->m[i]);
        if (o->v)
            tp_dev_free(o->dev, o->v[i]);
        if (o->master)
            tp_dev_free(o->dev, o->master[i]);
        if (o->gh)
            free(o->gh[i]);
        if (o->state)
            tp_mem_count(o->dev, TP_USE_OPTIMIZER, -(int64_t)o->state[i]);
    }
    tpl_ws_release(&o->g32);
    free(o->m);
    free(o->v);
    free(o->master);
    free(o->state);
    free(o->gh);
    free(o->hbuf);
    free(o->params);
    free(o);
}

static tp_status check_cfg(const tp_optim_config *c)
{
    if (c->kind != TP_OPTIM_SGD && c->kind != TP_OPTIM_ADAMW)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "optimizer: unknown kind %d (TP_OPTIM_SGD or "
                            "TP_OPTIM_ADAMW)",
                            (int)c->kind);
    if (!(c->lr >= 0.0f) || !isfinite(c->lr))
        return tp_set_error(TP_ERR_INVALID_ARG, "optimizer: lr %g must be finite and >= 0",
                            (double)c->lr);
    if (!(c->weight_decay >= 0.0f) || !isfinite(c->weight_decay))
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "optimizer: weight_decay %g must be finite and >= 0",
                            (double)c->weight_decay);
    if (!(c->momentum >= 0.0f && c->momentum < 1.0f))
        return tp_set_error(TP_ERR_INVALID_ARG, "optimizer: momentum %g must lie in [0, 1)",
                            (double)c->momentum);
    if (!(c->loss_scale >= 0.0f) || !isfinite(c->loss_scale) || c->growth_interval < 0)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "optimizer: loss_scale %g must be finite and >= 0 (0: none) and "
                            "growth_interval %d >= 0 (0: 2000)",
                            (double)c->loss_scale, c->growth_interval);
    if (c->kind == TP_OPTIM_ADAMW) {
        if (!(c->beta1 >= 0.0f && c->beta1 < 1.0f) || !(c->beta2 >= 0.0f && c->beta2 < 1.0f))
            return tp_set_error(TP_ERR_INVALID_ARG,
                                "AdamW: betas (%g, %g) must lie in [0, 1); PyTorch's are (0.9, "
                                "0.999), see tp_optim_defaults()",
                                (double)c->beta1, (double)c->beta2);
        if (!(c->eps > 0.0f) || !isfinite(c->eps))
            return tp_set_error(TP_ERR_INVALID_ARG,
                                "AdamW: eps %g must be finite and > 0 (1e-8 is "
                                "PyTorch's)",
                                (double)c->eps);
    }
    return TP_OK;
}

/* Every parameter must be an f32 value with a same-sized f32 gradient on dev. */
static tp_status check_params(const tp_param *params, int n, tp_device *dev)
{
    for (int i = 0; i < n; i++) {
        const tp_param *p = &params[i];
        const char *nm = p->name ? p->name : "?";
        if (!p->value || !p->grad || !p->value->data || !p->grad->data)
            return tp_set_error(TP_ERR_INVALID_ARG,
                                "tp_optim_create: parameter %d (%s) has no %s; create the grads "
                                "first (the layer's zero_grad)",
                                i, nm, !p->value || !p->value->data ? "value" : "grad");
        if (tpl_check_dtype("tp_optim_create", p->value->dtype) != TP_OK ||
            p->grad->dtype != p->value->dtype ||
            tp_tensor_numel(p->value) != tp_tensor_numel(p->grad))
            return tp_set_error(TP_ERR_SHAPE,
                                "tp_optim_create: parameter %d (%s): value and grad must be f32, "
                                "bf16 or f16, of one dtype, with the same number of elements (got "
                                "%s %lld and %s %lld)",
                                i, nm, tp_dtype_name(p->value->dtype),
                                (long long)tp_tensor_numel(p->value), tp_dtype_name(p->grad->dtype),
                                (long long)tp_tensor_numel(p->grad));
        if (p->value->dev != dev || p->grad->dev != dev)
            return tp_set_error(TP_ERR_INVALID_ARG,
                                "tp_optim_create: parameter %d (%s) lives on "
                                "another device than comm's",
                                i, nm);
    }
    return TP_OK;
}

/* A zeroed device buffer of `bytes`, counted as optimizer state of parameter i. */
static tp_status state_buf(tp_optim *o, int i, size_t bytes, float **out)
{
    void *p = NULL;
    TP_TRY(tp_dev_alloc(o->dev, bytes ? bytes : 1, &p));
    *out = p;
    o->state[i] += bytes;
    tp_mem_count(o->dev, TP_USE_OPTIMIZER, (int64_t)bytes);
    return tp_dev_memset(o->dev, p, 0, bytes);
}

/* The f32 master copy of a bf16/f16 parameter: its value widened exactly. */
static tp_status init_master(tp_optim *o, int i, size_t n)
{
    const tp_tensor *val = o->params[i].value;
    float *h = malloc(n * sizeof(float) + 1);
    if (!h)
        return tp_set_error(TP_ERR_NO_MEMORY, "tp_optim_create: out of host memory");
    tp_status st;
    TP_TRY_GOTO(state_buf(o, i, n * sizeof(float), &o->master[i]), st, out);
    TP_TRY_GOTO(tpl_download_f32(o->dev, val->dtype, h, val->data, n), st, out);
    st = tp_dev_upload(o->dev, o->master[i], h, n * sizeof(float));
out:
    free(h);
    return st;
}

/* Moments (AdamW m and v; SGD momentum m), f32 master weights of
 * bf16/f16 parameters, and the host buffers of the host path. */
static tp_status alloc_state(tp_optim *o, bool adam, bool mom)
{
    size_t k = (size_t)(o->n ? o->n : 1), maxn = 1;
    o->state = calloc(k, sizeof(size_t));
    o->m = calloc(k, sizeof(float *));
    o->v = calloc(k, sizeof(float *));
    o->master = calloc(k, sizeof(float *));
    o->gh = calloc(k, sizeof(float *));
    if (!o->state || !o->m || !o->v || !o->master || !o->gh)
        return tp_set_error(TP_ERR_NO_MEMORY, "tp_optim_create: out of host memory");
    for (int i = 0; i < o->n; i++) {
        const tp_tensor *val = o->params[i].value;
        size_t n = (size_t)tp_tensor_numel(val), bytes = n * sizeof(float);
        maxn = n > maxn ? n : maxn;
        if (adam || mom)
            TP_TRY(state_buf(o, i, bytes, &o->m[i]));
        if (adam)
            TP_TRY(state_buf(o, i, bytes, &o->v[i]));
        if (val->dtype != TP_F32)
            TP_TRY(init_master(o, i, n));
        if (o->host_path && !(o->gh[i] = malloc(bytes + 1)))
            return tp_set_error(TP_ERR_NO_MEMORY, "tp_optim_create: out of host memory");
    }
    if (o->host_path && !(o->hbuf = malloc(maxn * sizeof(float))))
        return tp_set_error(TP_ERR_NO_MEMORY, "tp_optim_create: out of host memory");
    return TP_OK;
}

tp_status tp_optim_create(tp_comm *comm, const tp_optim_config *cfg, const tp_param *params, int n,
                          tp_optim **out)
{
    if (!out)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_optim_create: out is NULL");
    *out = NULL;
    if (!comm || !cfg || (!params && n > 0) || n < 0)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_optim_create: %s",
                            !comm   ? "comm is NULL"
                            : !cfg  ? "cfg is NULL"
                            : n < 0 ? "n < 0"
                                    : "params is NULL");
    TP_TRY(check_cfg(cfg));
    tp_device *dev = tp_comm_device(comm);
    TP_TRY(check_params(params, n, dev));
    tp_optim *o = calloc(1, sizeof *o);
    if (!o)
        return tp_set_error(TP_ERR_NO_MEMORY, "tp_optim_create: out of host memory");
    o->comm = comm;
    o->dev = dev;
    o->cfg = *cfg;
    o->n = n;
    o->params = malloc(sizeof(tp_param) * (size_t)(n ? n : 1));
    if (!o->params) {
        tp_optim_free(o);
        return tp_set_error(TP_ERR_NO_MEMORY, "tp_optim_create: out of host memory");
    }
    if (n)
        memcpy(o->params, params, sizeof(tp_param) * (size_t)n);
    bool adam = cfg->kind == TP_OPTIM_ADAMW, mom = !adam && cfg->momentum > 0.0f;
    o->scale = cfg->loss_scale > 0.0f ? cfg->loss_scale : 1.0f;
    o->host_path = o->scale != 1.0f || cfg->dynamic_loss_scale;
    for (int i = 0; i < n; i++)
        o->host_path |= params[i].value->dtype != TP_F32;
    o->g32.dev = dev;
    tp_status st = alloc_state(o, adam, mom);
    if (st != TP_OK) {
        tp_optim_free(o);
        return st;
    }
    *out = o;
    return TP_OK;
}

/* One update of f32 values p (n > 0 elements) from f32 gradient g, state
 * of parameter i, at step `step`. */
static tp_status update(tp_optim *o, int i, int64_t n, float *p, const float *g, int64_t step)
{
    const tp_optim_config *c = &o->cfg;
    float wd = o->params[i].decay ? c->weight_decay : 0.0f;
    if (c->kind == TP_OPTIM_ADAMW)
        return tp_dev_adamw(o->dev, n, p, g, o->m[i], o->v[i], c->lr, c->beta1, c->beta2, c->eps,
                            wd, step);
    if (!o->m[i]) /* p = -lr g + (1 - lr wd) p */
        return tp_dev_axpby(o->dev, TP_F32, n, -c->lr, g, 1.0f - c->lr * wd, p);
    /* b = mu b + g (+ wd p); p -= lr b (b starts at 0, so b = d on step 1) */
    TP_TRY(tp_dev_axpby(o->dev, TP_F32, n, 1.0f, g, c->momentum, o->m[i]));
    if (wd != 0.0f)
        TP_TRY(tp_dev_axpby(o->dev, TP_F32, n, wd, p, 1.0f, o->m[i]));
    return tp_dev_axpby(o->dev, TP_F32, n, -c->lr, o->m[i], 1.0f, p);
}

/* Host path, first half: gh[i] = grad / scale in f32; *bad += its
 * non-finite elements. */
static tp_status unscale(tp_optim *o, int i, int64_t n, double *bad)
{
    const tp_tensor *g = o->params[i].grad;
    float *h = o->gh[i], inv = 1.0f / o->scale;
    TP_TRY(tpl_download_f32(o->dev, g->dtype, h, g->data, (size_t)n));
    for (int64_t k = 0; k < n; k++) {
        h[k] *= inv;
        *bad += !isfinite(h[k]);
    }
    return TP_OK;
}

/* Host path, second half: update the f32 master (or the f32 value) from
 * gh[i], then round the master into the bf16/f16 value. */
static tp_status apply(tp_optim *o, int i, int64_t n, int64_t step)
{
    tp_tensor *val = o->params[i].value;
    size_t bytes = (size_t)n * sizeof(float);
    TP_TRY(tpl_ws_reserve(&o->g32, bytes, "tp_optim_step"));
    TP_TRY(tp_dev_upload(o->dev, o->g32.ptr, o->gh[i], bytes));
    float *p = o->master[i] ? o->master[i] : val->data;
    TP_TRY(update(o, i, n, p, o->g32.ptr, step));
    if (!o->master[i])
        return TP_OK;
    TP_TRY(tp_dev_download(o->dev, o->gh[i], p, bytes));
    tp_host_convert(val->dtype, o->hbuf, TP_F32, o->gh[i], (size_t)n);
    return tp_dev_upload(o->dev, val->data, o->hbuf, (size_t)n * tp_dtype_size(val->dtype));
}

/* Collective over the optimizer's comm: the sum of every rank's bad. */
static tp_status sum_over_ranks(tp_optim *o, double *bad)
{
    float f = *bad > 0 ? 1.0f : 0.0f;
    TP_TRY(tpl_ws_reserve(&o->g32, sizeof(float), "tp_optim_step"));
    TP_TRY(tp_dev_upload(o->dev, o->g32.ptr, &f, sizeof f));
    TP_TRY(tp_all_reduce(o->comm, o->g32.ptr, o->g32.ptr, 1, TP_F32, TP_SUM));
    TP_TRY(tp_dev_download(o->dev, &f, o->g32.ptr, sizeof f));
    *bad = f;
    return TP_OK;
}

/* The dynamic scale after a step: halved after a non-finite gradient,
 * doubled after growth_interval finite steps in a row. */
static void adjust_scale(tp_optim *o, bool finite)
{
    int64_t interval = o->cfg.growth_interval ? o->cfg.growth_interval : 2000;
    if (!o->cfg.dynamic_loss_scale)
        return;
    if (!finite) {
        o->scale = o->scale * 0.5f > 0.0f ? o->scale * 0.5f : o->scale;
        o->good = 0;
    } else if (++o->good >= interval && isfinite(o->scale * 2.0f)) {
        o->scale *= 2.0f;
        o->good = 0;
    }
}

static tp_status step_host(tp_optim *o, int64_t step, bool *done)
{
    double bad = 0;
    for (int i = 0; i < o->n; i++)
        if (tp_tensor_numel(o->params[i].value) > 0)
            TP_TRY(unscale(o, i, tp_tensor_numel(o->params[i].value), &bad));
    TP_TRY(sum_over_ranks(o, &bad));
    *done = bad == 0;
    adjust_scale(o, *done);
    if (!*done) {
        o->skipped++;
        return TP_OK;
    }
    for (int i = 0; i < o->n; i++)
        if (tp_tensor_numel(o->params[i].value) > 0)
            TP_TRY(apply(o, i, tp_tensor_numel(o->params[i].value), step));
    return TP_OK;
}

tp_status tp_optim_step(tp_optim *o)
{
    if (!o)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_optim_step: optimizer is NULL");
    tp_phase prev = tp_phase_set(o->comm, TP_PHASE_OTHER);
    tp_status st = TP_OK;
    int64_t step = o->steps + 1;
    bool done = true;
    if (o->host_path) {
        TP_TRY_GOTO(step_host(o, step, &done), st, out);
    } else {
        for (int i = 0; i < o->n; i++) {
            tp_param *p = &o->params[i];
            if (tp_tensor_numel(p->value) > 0)
                TP_TRY_GOTO(
                    update(o, i, tp_tensor_numel(p->value), p->value->data, p->grad->data, step),
                    st, out);
        }
    }
    if (done)
        o->steps = step;
out:
    tp_phase_set(o->comm, prev);
    return st;
}

float tp_optim_loss_scale(const tp_optim *o)
{
    return o ? o->scale : 1.0f;
}

int64_t tp_optim_skipped(const tp_optim *o)
{
    return o ? o->skipped : 0;
}

tp_status tp_optim_zero_grad(tp_optim *o)
{
    if (!o)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_optim_zero_grad: optimizer is NULL");
    for (int i = 0; i < o->n; i++)
        TP_TRY(
            tp_dev_memset(o->dev, o->params[i].grad->data, 0, tp_tensor_bytes(o->params[i].grad)));
    return TP_OK;
}

int64_t tp_optim_steps(const tp_optim *o)
{
    return o ? o->steps : 0;
}

tp_status tp_optim_set_lr(tp_optim *o, float lr)
{
    if (!o)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_optim_set_lr: optimizer is NULL");
    if (!(lr >= 0.0f) || !isfinite(lr))
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_optim_set_lr: lr %g must be finite and >= 0",
                            (double)lr);
    o->cfg.lr = lr;
    return TP_OK;
}
