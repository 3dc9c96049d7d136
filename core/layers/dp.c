/* SPDX-License-Identifier: MIT */
/*
 * dp.c — data parallelism over TP replicas: the gradients of a rank's
 * parameters summed (weighted) over its DP group in buckets of a fixed size
 * and a fixed order, like PyTorch DDP's bucketed all-reduce but after
 * backward, so every run reduces the same bytes in the same calls.
 *
 * The plan is made once: the replicated parameters first, then the shards,
 * each in parameter order, cut into buckets of at most `bucket_bytes` (a
 * parameter may straddle buckets; a bucket holds one dtype). The replicated
 * parameters get buckets of their own, so they lie at the same offsets of
 * the same-sized calls on every DP group: a backend whose sum order depends
 * only on the call (count, offset, rank) gives every TP rank the same bits
 * for them, as TP requires (tp_param). Ranks of a DP group hold the same TP
 * rank of their replica, hence the same shapes; tp_dp_create checks that
 * they made the same plan.
 */
#include "layers-internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One piece of one parameter's gradient in a bucket. */
typedef struct dp_seg {
    int param;
    int64_t off, count; /* elements of the gradient */
    size_t boff;        /* byte offset in the bucket */
    bool last;          /* the bucket is complete after this piece */
} dp_seg;

struct tp_dp {
    tp_comm *comm;
    tp_device *dev;
    tp_param *params;
    int n;
    size_t cap; /* bucket bytes */
    dp_seg *segs;
    int nsegs, buckets;
    size_t bytes; /* gradient bytes per call */
    void *buf;    /* device bucket, cap bytes */
    float *scalar;
};

void tp_dp_free(tp_dp *d)
{
    if (!d)
        return;
    tp_dev_free(d->dev, d->buf);
    tp_dev_free(d->dev, d->scalar);
    free(d->segs);
    free(d->params);
    free(d);
}

/* The walk that makes the plan: segments into d->segs when it is set,
 * counts either way. */
typedef struct plan_walk {
    size_t fill;
    tp_dtype dt;
    int nsegs, buckets;
    size_t bytes;
} plan_walk;

static void walk_close(tp_dp *d, plan_walk *w)
{
    if (w->fill == 0)
        return;
    if (d->segs)
        d->segs[w->nsegs - 1].last = true;
    w->buckets++;
    w->fill = 0;
}

static void walk_param(tp_dp *d, plan_walk *w, int i)
{
    const tp_tensor *g = d->params[i].grad;
    size_t es = tp_dtype_size(g->dtype);
    int64_t n = tp_tensor_numel(g), off = 0;
    if (w->fill && w->dt != g->dtype)
        walk_close(d, w);
    w->dt = g->dtype;
    while (off < n) {
        int64_t room = (int64_t)((d->cap - w->fill) / es);
        if (room == 0) {
            walk_close(d, w);
            continue;
        }
        int64_t take = n - off < room ? n - off : room;
        if (d->segs)
            d->segs[w->nsegs] = (dp_seg){.param = i, .off = off, .count = take, .boff = w->fill};
        w->nsegs++;
        w->fill += (size_t)take * es;
        w->bytes += (size_t)take * es;
        off += take;
    }
}

static void walk_all(tp_dp *d, plan_walk *w)
{
    memset(w, 0, sizeof *w);
    for (int pass = 0; pass < 2; pass++) { /* replicated first, then the shards */
        for (int i = 0; i < d->n; i++)
            if (d->params[i].replicated == (pass == 0))
                walk_param(d, w, i);
        walk_close(d, w);
    }
}

static tp_status check_params(const tp_param *ps, int n, tp_device *dev)
{
    for (int i = 0; i < n; i++) {
        const tp_param *p = &ps[i];
        const char *nm = p->name ? p->name : "?";
        if (!p->grad || !p->grad->data || !p->value || !p->value->data)
            return tp_set_error(TP_ERR_INVALID_ARG,
                                "tp_dp_create: parameter %d (%s) has no %s; create the model's "
                                "gradients first (its zero_grad)",
                                i, nm, !p->value || !p->value->data ? "value" : "gradient");
        if (p->grad->dev != dev || tp_dtype_size(p->grad->dtype) == 0 || p->grad->dtype == TP_I32)
            return tp_set_error(TP_ERR_INVALID_ARG,
                                "tp_dp_create: parameter %d (%s): the gradient must be a float "
                                "tensor on the DP communicator's device",
                                i, nm);
    }
    return TP_OK;
}

/* 64-bit FNV-1a over bytes, continuing from h. */
static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ c[i]) * 1099511628211ull;
    return h;
}

/* Collective over comm: every rank's 64-bit value; TP_OK when all agree,
 * else *who the first rank that differs from rank 0. */
static tp_status agree(tp_comm *comm, uint64_t v, int *who)
{
    tp_device *dev = tp_comm_device(comm);
    int n = tp_comm_size(comm);
    int32_t mine[2] = {(int32_t)(uint32_t)(v >> 32), (int32_t)(uint32_t)v};
    int32_t *all = malloc(sizeof(int32_t) * 2 * (size_t)n);
    void *d_all = NULL;
    *who = -1;
    if (!all)
        return tp_set_error(TP_ERR_NO_MEMORY, "tp_dp: out of host memory for %d ranks", n);
    tp_status st;
    TP_TRY_GOTO(tp_dev_alloc(dev, sizeof(int32_t) * 2 * (size_t)n, &d_all), st, out);
    int32_t *d_mine = (int32_t *)d_all + 2 * tp_comm_rank(comm);
    TP_TRY_GOTO(tp_dev_upload(dev, d_mine, mine, sizeof mine), st, out);
    TP_TRY_GOTO(tp_all_gather(comm, d_mine, d_all, 2, TP_I32), st, out);
    TP_TRY_GOTO(tp_dev_download(dev, all, d_all, sizeof(int32_t) * 2 * (size_t)n), st, out);
    for (int r = 1; r < n && *who < 0; r++)
        if (all[2 * r] != all[0] || all[2 * r + 1] != all[1])
            *who = r;
out:
    tp_dev_free(dev, d_all);
    free(all);
    return st;
}

/* The plan's fingerprint: bucket size, every segment and its dtype. */
static uint64_t plan_hash(const tp_dp *d)
{
    uint64_t h = fnv(1469598103934665603ull, &d->cap, sizeof d->cap);
    h = fnv(h, &d->nsegs, sizeof d->nsegs);
    for (int s = 0; s < d->nsegs; s++) {
        const dp_seg *g = &d->segs[s];
        int dt = (int)d->params[g->param].grad->dtype;
        int64_t v[5] = {g->param, g->off, g->count, (int64_t)g->boff, dt};
        h = fnv(h, v, sizeof v);
    }
    return h;
}

static tp_status make_plan(tp_dp *d)
{
    plan_walk w;
    walk_all(d, &w);
    d->segs = calloc((size_t)(w.nsegs ? w.nsegs : 1), sizeof *d->segs);
    if (!d->segs)
        return tp_set_error(TP_ERR_NO_MEMORY, "tp_dp_create: out of host memory for %d pieces",
                            w.nsegs);
    walk_all(d, &w);
    d->nsegs = w.nsegs, d->buckets = w.buckets, d->bytes = w.bytes;
    size_t need = d->bytes < d->cap ? d->bytes : d->cap;
    TP_TRY(tp_dev_alloc(d->dev, need ? need : 1, &d->buf));
    void *s = NULL;
    TP_TRY(tp_dev_alloc(d->dev, sizeof(float), &s));
    d->scalar = s;
    int who = -1;
    TP_TRY(agree(d->comm, plan_hash(d), &who));
    if (who >= 0)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "tp_dp_create: DP rank %d made another bucket plan than DP rank 0 "
                            "(%d buckets of %zu bytes here): the ranks of a DP group must hold "
                            "the same parameters (the same TP rank of identical models) and pass "
                            "the same bucket_bytes",
                            who, d->buckets, d->cap);
    return TP_OK;
}

tp_status tp_dp_create(tp_comm *dp, const tp_dp_config *cfg, const tp_param *params, int n,
                       tp_dp **out)
{
    if (!out)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_dp_create: out is NULL");
    *out = NULL;
    if (!dp || (!params && n > 0) || n < 0)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_dp_create: %s",
                            !dp ? "the DP communicator is NULL" : "bad parameter list");
    size_t cap = cfg && cfg->bucket_bytes ? cfg->bucket_bytes : TP_DP_DEFAULT_BUCKET_BYTES;
    if (cap < TP_DP_MIN_BUCKET_BYTES)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "tp_dp_create: bucket_bytes %zu is below the minimum %d (one element "
                            "of every dtype must fit); 0 takes the default %d",
                            cap, TP_DP_MIN_BUCKET_BYTES, TP_DP_DEFAULT_BUCKET_BYTES);
    tp_device *dev = tp_comm_device(dp);
    TP_TRY(check_params(params, n, dev));
    tp_dp *d = calloc(1, sizeof *d);
    if (!d || !(d->params = malloc(sizeof(tp_param) * (size_t)(n ? n : 1)))) {
        free(d);
        return tp_set_error(TP_ERR_NO_MEMORY, "tp_dp_create: out of host memory");
    }
    memcpy(d->params, params, sizeof(tp_param) * (size_t)n);
    d->comm = dp, d->dev = dev, d->n = n, d->cap = cap;
    tp_status st = make_plan(d);
    if (st != TP_OK) {
        tp_dp_free(d);
        return st;
    }
    *out = d;
    return TP_OK;
}

/* Bucket b's sum over the group, then every piece back to its gradient. */
static tp_status flush(tp_dp *d, int first, int last)
{
    const dp_seg *e = &d->segs[last];
    tp_dtype dt = d->params[e->param].grad->dtype;
    size_t es = tp_dtype_size(dt);
    size_t count = (e->boff + (size_t)e->count * es) / es;
    TP_TRY(tp_all_reduce(d->comm, d->buf, d->buf, count, dt, TP_SUM));
    for (int s = first; s <= last; s++) {
        const dp_seg *g = &d->segs[s];
        char *grad = (char *)d->params[g->param].grad->data + (size_t)g->off * es;
        size_t w = (size_t)g->count * es;
        TP_TRY(tp_dev_copy_2d(d->dev, grad, w, (char *)d->buf + g->boff, w, w, 1));
    }
    return TP_OK;
}

tp_status tp_dp_all_reduce_grads(tp_dp *d, float weight)
{
    if (!d)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_dp_all_reduce_grads: d is NULL");
    if (!(weight == weight) || weight < 0.0f)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "tp_dp_all_reduce_grads: weight %g must be >= 0 (this replica's "
                            "share of the global batch, e.g. 1/D)",
                            (double)weight);
    int first = 0;
    for (int s = 0; s < d->nsegs; s++) {
        const dp_seg *g = &d->segs[s];
        const tp_tensor *t = d->params[g->param].grad;
        size_t es = tp_dtype_size(t->dtype);
        TP_TRY(tp_dev_axpby(d->dev, t->dtype, g->count, weight,
                            (const char *)t->data + (size_t)g->off * es, 0.0f,
                            (char *)d->buf + g->boff));
        if (g->last) {
            TP_TRY(flush(d, first, s));
            first = s + 1;
        }
    }
    return TP_OK;
}

tp_status tp_dp_sum(tp_dp *d, float x, float *sum)
{
    if (!d || !sum)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_dp_sum: %s is NULL", !d ? "d" : "sum");
    TP_TRY(tp_dev_upload(d->dev, d->scalar, &x, sizeof x));
    TP_TRY(tp_all_reduce(d->comm, d->scalar, d->scalar, 1, TP_F32, TP_SUM));
    return tp_dev_download(d->dev, sum, d->scalar, sizeof *sum);
}

void tp_dp_get_info(const tp_dp *d, int *buckets, size_t *grad_bytes, size_t *bucket_bytes)
{
    if (buckets)
        *buckets = d ? d->buckets : 0;
    if (grad_bytes)
        *grad_bytes = d ? d->bytes : 0;
    if (bucket_bytes)
        *bucket_bytes = d ? d->cap : 0;
}

/* Fingerprint of parameter i's value (host copy in buf). */
static tp_status value_hash(const tp_param *p, void **buf, size_t *cap, uint64_t *h)
{
    size_t bytes = tp_tensor_bytes(p->value);
    if (bytes > *cap) {
        void *nb = realloc(*buf, bytes);
        if (!nb)
            return tp_set_error(TP_ERR_NO_MEMORY, "tp_dp_check_sync: out of host memory (%zu B)",
                                bytes);
        *buf = nb, *cap = bytes;
    }
    TP_TRY(tp_tensor_download(p->value, *buf));
    *h = fnv(1469598103934665603ull, *buf, bytes);
    return TP_OK;
}

/* Collective over comm (every rank the same parameter list): *who = the
 * first rank of comm whose parameter p differs from rank 0's, or -1. */
static tp_status differs_on(tp_comm *comm, const tp_param *p, void **buf, size_t *cap, int *who)
{
    uint64_t h = 0;
    TP_TRY(value_hash(p, buf, cap, &h));
    return agree(comm, h, who);
}

tp_status tp_dp_check_sync(tp_dp *d, tp_comm *tp)
{
    if (!d)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_dp_check_sync: d is NULL");
    void *buf = NULL;
    size_t cap = 0;
    tp_status st = TP_OK;
    int bad = -1, who = -1;
    const char *where = "DP";
    /* every rank checks every parameter, so the collectives stay matched */
    for (int i = 0; i < d->n && st == TP_OK; i++) {
        int w = -1;
        st = differs_on(d->comm, &d->params[i], &buf, &cap, &w);
        if (st == TP_OK && w >= 0 && bad < 0)
            bad = i, who = w, where = "DP";
        if (st == TP_OK && tp && d->params[i].replicated) {
            st = differs_on(tp, &d->params[i], &buf, &cap, &w);
            if (st == TP_OK && w >= 0 && bad < 0)
                bad = i, who = w, where = "TP";
        }
    }
    free(buf);
    if (st == TP_OK && bad >= 0)
        st = tp_set_error(TP_ERR_INTERNAL,
                          "tp_dp_check_sync: parameter %s differs between %s ranks 0 and %d "
                          "(replicas out of sync)",
                          d->params[bad].name ? d->params[bad].name : "?", where, who);
    return st;
}
