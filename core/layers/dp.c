/* SPDX-License-Identifier: MIT */
/*
 * dp.c — data parallelism over TP replicas: the gradients of a rank's
 * parameters summed (weighted) over its DP group in buckets of a fixed size
 * and a fixed order, like PyTorch DDP's bucketed all-reduce: either after
 * backward, or overlapped with it (a round opened by tp_dp_begin, each
 * bucket started as soon as backward has handed over all its gradients).
 * Both make the same calls with the same bytes in the same order.
 *
 * The plan is made once. Two lanes, the replicated parameters and the
 * shards, each walked in reverse parameter order (the order backward
 * finishes them) and cut into buckets of at most `bucket_bytes` (a
 * parameter may straddle buckets; a bucket holds one dtype and one lane).
 * A bucket is complete when its lowest-numbered parameter is final; the
 * buckets of both lanes are merged by that key, highest first, and every
 * call goes out in that order, overlapped or not (an overlapped round
 * starts bucket k only once buckets 0..k-1 are started, so a gradient
 * handed over early waits for its turn and never reorders the calls).
 *
 * Determinism: the replicated parameters' buckets hold nothing else, and
 * their lane is cut the same way on every TP rank (the same parameters,
 * the same sizes), so they lie at the same offsets of the same-sized calls
 * on every DP group, whatever the shards around them: a backend whose sum
 * order depends only on the call (count, offset, rank) gives every TP rank
 * the same bits for them, as TP requires (tp_param). Where in the sequence
 * of a DP communicator's calls a bucket sits does not enter its sum. Ranks
 * of a DP group hold the same TP rank of their replica, hence the same
 * shapes; tp_dp_create checks that they made the same plan. Every bucket is
 * one tp_iall_reduce, waited for at once when not overlapped: the same call
 * either way, so an overlapped run is bitwise the non-overlapped one on
 * every backend (tp.h: a native plugin's nonblocking sum may differ from its
 * blocking one, never from itself).
 */
#include "layers-internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DP_STAGE_ALIGN 64 /* bytes: each bucket of the staging buffer starts at a line */

/* One piece of one parameter's gradient in a bucket. */
typedef struct dp_seg {
    int param;
    int64_t off, count; /* elements of the gradient */
    size_t boff;        /* byte offset in the bucket */
} dp_seg;

typedef struct dp_bucket {
    int first, nsegs; /* its pieces: segs[first, first + nsegs) */
    int key;          /* its lowest parameter index: complete once that one is final */
    tp_dtype dt;
    size_t bytes; /* used */
    size_t base;  /* byte offset in the overlap staging buffer */
    tp_request *req;
} dp_bucket;

struct tp_dp {
    tp_comm *comm;
    tp_device *dev;
    tp_param *params;
    int n;
    size_t cap; /* bucket bytes */
    dp_seg *segs;
    dp_bucket *bk; /* in call order */
    int nsegs, buckets;
    size_t bytes; /* gradient bytes per call */
    void *buf;    /* device bucket, cap bytes (not overlapped) */
    void *stage;  /* device, stage_bytes: every bucket at its base (overlapped; tp_dp_begin) */
    size_t stage_bytes;
    float *scalar;
    /* the open round, tp_dp_begin .. tp_dp_all_reduce_grads */
    bool open;
    float weight;
    bool *ready; /* per parameter: handed over */
    int next;    /* buckets [0, next) are started */
    int tested;  /* buckets [0, tested) are known complete */
};

/* Wait for every started bucket of the round (freeing their requests) and
 * close it; the first error. */
static tp_status close_round(tp_dp *d)
{
    tp_status st = TP_OK;
    for (int b = 0; b < d->buckets; b++)
        if (d->bk[b].req) {
            tp_status w = tp_wait(d->bk[b].req);
            d->bk[b].req = NULL;
            st = st == TP_OK ? w : st;
        }
    d->open = false;
    return st;
}

void tpl_dp_abort(tp_dp *d)
{
    if (d && d->open)
        close_round(d);
}

void tp_dp_free(tp_dp *d)
{
    if (!d)
        return;
    if (d->open)
        close_round(d);
    tp_dev_free(d->dev, d->buf);
    tp_dev_free(d->dev, d->stage);
    tp_dev_free(d->dev, d->scalar);
    free(d->ready);
    free(d->segs);
    free(d->bk);
    free(d->params);
    free(d);
}

/* The walk that makes the plan: segments into d->segs and buckets into
 * d->bk (lane order) when they are set, counts either way. */
typedef struct plan_walk {
    size_t fill;
    tp_dtype dt;
    int nsegs, buckets, first;
    size_t bytes;
} plan_walk;

static void walk_close(tp_dp *d, plan_walk *w)
{
    if (w->fill == 0)
        return;
    if (d->bk)
        d->bk[w->buckets] = (dp_bucket){.first = w->first,
                                        .nsegs = w->nsegs - w->first,
                                        .key = d->segs[w->nsegs - 1].param,
                                        .dt = w->dt,
                                        .bytes = w->fill};
    w->buckets++;
    w->fill = 0;
    w->first = w->nsegs;
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

/* Lane 0 (replicated), then lane 1 (shards), each from the last parameter
 * to the first; *lane0 = lane 0's bucket count. */
static void walk_all(tp_dp *d, plan_walk *w, int *lane0)
{
    memset(w, 0, sizeof *w);
    for (int pass = 0; pass < 2; pass++) {
        for (int i = d->n - 1; i >= 0; i--)
            if (d->params[i].replicated == (pass == 0))
                walk_param(d, w, i);
        walk_close(d, w);
        if (pass == 0)
            *lane0 = w->buckets;
    }
}

/* Merge the lanes' buckets (each already by key, highest first) into call
 * order; a key belongs to one lane, so there are no ties across them. */
static tp_status merge_lanes(tp_dp *d, int lane0)
{
    dp_bucket *m = malloc(sizeof *m * (size_t)(d->buckets ? d->buckets : 1));
    if (!m)
        return tp_set_error(TP_ERR_NO_MEMORY, "tp_dp_create: out of host memory for %d buckets",
                            d->buckets);
    int a = 0, b = lane0;
    size_t base = 0;
    for (int k = 0; k < d->buckets; k++) {
        bool take_a = b == d->buckets || (a < lane0 && d->bk[a].key > d->bk[b].key);
        m[k] = d->bk[take_a ? a++ : b++];
        m[k].base = base;
        /* the next bucket at an aligned address (mixed dtypes) */
        base += (m[k].bytes + DP_STAGE_ALIGN - 1) / DP_STAGE_ALIGN * DP_STAGE_ALIGN;
    }
    free(d->bk);
    d->bk = m;
    d->stage_bytes = base;
    return TP_OK;
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

/* The plan's fingerprint: bucket size, every bucket in call order with
 * its pieces and dtype. */
static uint64_t plan_hash(const tp_dp *d)
{
    uint64_t h = fnv(1469598103934665603ull, &d->cap, sizeof d->cap);
    h = fnv(h, &d->nsegs, sizeof d->nsegs);
    for (int b = 0; b < d->buckets; b++) {
        const dp_bucket *k = &d->bk[b];
        int64_t kv[3] = {k->key, (int64_t)k->dt, (int64_t)k->bytes};
        h = fnv(h, kv, sizeof kv);
        for (int s = k->first; s < k->first + k->nsegs; s++) {
            const dp_seg *g = &d->segs[s];
            int64_t v[4] = {g->param, g->off, g->count, (int64_t)g->boff};
            h = fnv(h, v, sizeof v);
        }
    }
    return h;
}

static tp_status make_plan(tp_dp *d)
{
    plan_walk w;
    int lane0 = 0;
    walk_all(d, &w, &lane0);
    d->segs = calloc((size_t)(w.nsegs ? w.nsegs : 1), sizeof *d->segs);
    d->bk = calloc((size_t)(w.buckets ? w.buckets : 1), sizeof *d->bk);
    d->ready = calloc((size_t)(d->n ? d->n : 1), sizeof *d->ready);
    if (!d->segs || !d->bk || !d->ready)
        return tp_set_error(TP_ERR_NO_MEMORY,
                            "tp_dp_create: out of host memory for %d pieces in %d buckets", w.nsegs,
                            w.buckets);
    walk_all(d, &w, &lane0);
    d->nsegs = w.nsegs, d->buckets = w.buckets, d->bytes = w.bytes;
    TP_TRY(merge_lanes(d, lane0));
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

/* Pack bucket k (its pieces times weight) into buf and start its sum. */
static tp_status start_bucket(tp_dp *d, dp_bucket *k, char *buf, float weight)
{
    size_t es = tp_dtype_size(k->dt);
    k->req = NULL;
    for (int s = k->first; s < k->first + k->nsegs; s++) {
        const dp_seg *g = &d->segs[s];
        const tp_tensor *t = d->params[g->param].grad;
        TP_TRY(tp_dev_axpby(d->dev, k->dt, g->count, weight,
                            (const char *)t->data + (size_t)g->off * es, 0.0f, buf + g->boff));
    }
    return tp_iall_reduce(d->comm, buf, buf, k->bytes / es, k->dt, TP_SUM, &k->req);
}

/* Wait for bucket k's sum in buf, then every piece back to its gradient. */
static tp_status finish_bucket(tp_dp *d, dp_bucket *k, const char *buf)
{
    tp_status st = tp_wait(k->req);
    k->req = NULL;
    TP_TRY(st);
    size_t es = tp_dtype_size(k->dt);
    for (int s = k->first; s < k->first + k->nsegs; s++) {
        const dp_seg *g = &d->segs[s];
        char *grad = (char *)d->params[g->param].grad->data + (size_t)g->off * es;
        size_t w = (size_t)g->count * es;
        TP_TRY(tp_dev_copy_2d(d->dev, grad, w, buf + g->boff, w, w, 1));
    }
    return TP_OK;
}

static tp_status check_weight(const char *fn, float weight)
{
    if (!(weight == weight) || weight < 0.0f)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "%s: weight %g must be >= 0 (this replica's share of the global "
                            "batch, e.g. 1/D)",
                            fn, (double)weight);
    return TP_OK;
}

tp_status tp_dp_begin(tp_dp *d, float weight)
{
    if (!d)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_dp_begin: d is NULL");
    TP_TRY(check_weight("tp_dp_begin", weight));
    if (d->open)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "tp_dp_begin: a round is already open (%d of %d buckets started); "
                            "end it with tp_dp_all_reduce_grads first",
                            d->next, d->buckets);
    if (!d->stage)
        TP_TRY(tp_dev_alloc(d->dev, d->stage_bytes ? d->stage_bytes : 1, &d->stage));
    memset(d->ready, 0, sizeof *d->ready * (size_t)d->n);
    d->open = true, d->weight = weight, d->next = d->tested = 0;
    return TP_OK;
}

static bool bucket_ready(const tp_dp *d, const dp_bucket *k)
{
    for (int s = k->first; s < k->first + k->nsegs; s++)
        if (!d->ready[d->segs[s].param])
            return false;
    return true;
}

/* Start every bucket whose turn it is and whose gradients are all final;
 * then move the oldest unfinished one along (tp_test: mpi progresses
 * requests only inside its calls). */
static tp_status start_ready(tp_dp *d)
{
    while (d->next < d->buckets && bucket_ready(d, &d->bk[d->next])) {
        dp_bucket *k = &d->bk[d->next];
        TP_TRY(start_bucket(d, k, (char *)d->stage + k->base, d->weight));
        d->next++;
    }
    bool done = true;
    while (d->tested < d->next && done) {
        if (tp_test(d->bk[d->tested].req, &done) != TP_OK)
            return TP_OK; /* its tp_wait reports it */
        d->tested += done;
    }
    return TP_OK;
}

tp_status tp_dp_grad_ready(tp_dp *d, const tp_tensor *grad)
{
    if (!d || !grad)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_dp_grad_ready: %s is NULL", !d ? "d" : "grad");
    if (!d->open)
        return TP_OK;
    bool mine = false;
    for (int i = 0; i < d->n; i++) {
        if (d->params[i].grad != grad)
            continue;
        if (d->ready[i]) /* its bucket may be packed already: a second backward would be lost */
            return tp_set_error(TP_ERR_INVALID_ARG,
                                "tp_dp_grad_ready: the gradient of parameter %d was handed over "
                                "twice in one round; to accumulate gradients over several "
                                "backward passes, open the round (tp_dp_begin) before the last "
                                "one only",
                                i);
        d->ready[i] = mine = true;
    }
    return mine ? start_ready(d) : TP_OK;
}

/* The open round: the remaining buckets started, every one waited for
 * and unpacked, in call order. */
static tp_status end_round(tp_dp *d)
{
    memset(d->ready, 1, sizeof *d->ready * (size_t)d->n);
    tp_status st = start_ready(d);
    for (int b = 0; b < d->buckets && st == TP_OK; b++)
        st = finish_bucket(d, &d->bk[b], (char *)d->stage + d->bk[b].base);
    tp_status c = close_round(d); /* the rest, after an error */
    return st == TP_OK ? c : st;
}

tp_status tp_dp_all_reduce_grads(tp_dp *d, float weight)
{
    if (!d)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_dp_all_reduce_grads: d is NULL");
    TP_TRY(check_weight("tp_dp_all_reduce_grads", weight));
    if (d->open) {
        if (weight != d->weight)
            return tp_set_error(TP_ERR_INVALID_ARG,
                                "tp_dp_all_reduce_grads: weight %g, but the open round began "
                                "with %g (tp_dp_begin): pass the same weight",
                                (double)weight, (double)d->weight);
        return end_round(d);
    }
    for (int b = 0; b < d->buckets; b++) {
        TP_TRY(start_bucket(d, &d->bk[b], d->buf, weight));
        TP_TRY(finish_bucket(d, &d->bk[b], d->buf));
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
