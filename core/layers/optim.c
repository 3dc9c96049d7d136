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
    float **m, **v; /* AdamW moments per parameter (device); m alone: SGD momentum buffer */
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
    }
    free(o->m);
    free(o->v);
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
        if (p->value->dtype != TP_F32 || p->grad->dtype != TP_F32 ||
            tp_tensor_numel(p->value) != tp_tensor_numel(p->grad))
            return tp_set_error(TP_ERR_SHAPE,
                                "tp_optim_create: parameter %d (%s): value and grad must be f32 "
                                "with the same number of elements (got %lld and %lld)",
                                i, nm, (long long)tp_tensor_numel(p->value),
                                (long long)tp_tensor_numel(p->grad));
        if (p->value->dev != dev || p->grad->dev != dev)
            return tp_set_error(TP_ERR_INVALID_ARG,
                                "tp_optim_create: parameter %d (%s) lives on "
                                "another device than comm's",
                                i, nm);
    }
    return TP_OK;
}

/* Zeroed device buffers of a parameter's size: the first moment (or the
 * momentum buffer) in o->m, with AdamW the second moment in o->v. */
static tp_status alloc_state(tp_optim *o, bool adam)
{
    o->m = calloc((size_t)(o->n ? o->n : 1), sizeof(float *));
    if (adam)
        o->v = calloc((size_t)(o->n ? o->n : 1), sizeof(float *));
    if (!o->m || (adam && !o->v))
        return tp_set_error(TP_ERR_NO_MEMORY, "tp_optim_create: out of host memory");
    for (int i = 0; i < o->n; i++) {
        size_t bytes = tp_tensor_bytes(o->params[i].value);
        void *pm = NULL, *pv = NULL;
        TP_TRY(tp_dev_alloc(o->dev, bytes, &pm));
        o->m[i] = pm;
        TP_TRY(tp_dev_memset(o->dev, pm, 0, bytes));
        if (!adam)
            continue;
        TP_TRY(tp_dev_alloc(o->dev, bytes, &pv));
        o->v[i] = pv;
        TP_TRY(tp_dev_memset(o->dev, pv, 0, bytes));
    }
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
    if (adam || mom) {
        tp_status st = alloc_state(o, adam);
        if (st != TP_OK) {
            tp_optim_free(o);
            return st;
        }
    }
    *out = o;
    return TP_OK;
}

/* One update of parameter i (of n > 0 elements) at step `step`. */
static tp_status step_param(tp_optim *o, int i, int64_t step)
{
    const tp_optim_config *c = &o->cfg;
    tp_param *p = &o->params[i];
    int64_t n = tp_tensor_numel(p->value);
    float wd = p->decay ? c->weight_decay : 0.0f;
    if (c->kind == TP_OPTIM_ADAMW)
        return tp_dev_adamw(o->dev, n, p->value->data, p->grad->data, o->m[i], o->v[i], c->lr,
                            c->beta1, c->beta2, c->eps, wd, step);
    if (!o->m) /* p = -lr g + (1 - lr wd) p */
        return tp_dev_axpby(o->dev, TP_F32, n, -c->lr, p->grad->data, 1.0f - c->lr * wd,
                            p->value->data);
    /* b = mu b + g (+ wd p); p -= lr b (b starts at 0, so b = d on step 1) */
    TP_TRY(tp_dev_axpby(o->dev, TP_F32, n, 1.0f, p->grad->data, c->momentum, o->m[i]));
    if (wd != 0.0f)
        TP_TRY(tp_dev_axpby(o->dev, TP_F32, n, wd, p->value->data, 1.0f, o->m[i]));
    return tp_dev_axpby(o->dev, TP_F32, n, -c->lr, o->m[i], 1.0f, p->value->data);
}

tp_status tp_optim_step(tp_optim *o)
{
    if (!o)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_optim_step: optimizer is NULL");
    tp_phase prev = tp_phase_set(o->comm, TP_PHASE_OTHER);
    tp_status st = TP_OK;
    int64_t step = o->steps + 1;
    for (int i = 0; i < o->n; i++)
        if (tp_tensor_numel(o->params[i].value) > 0)
            TP_TRY_GOTO(step_param(o, i, step), st, done);
    o->steps = step;
done:
    tp_phase_set(o->comm, prev);
    return st;
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
