/* SPDX-License-Identifier: MIT */
/*
 * oneshot.c — small collectives without a barrier (shmcoll's one-shot:
 * each rank publishes its input in its slot under the op number, reads all
 * slots, computes its result; see sc-oneshot.c) and what a rank waiting
 * for a peer's slot checks: the group failed, the peer left, the peer is
 * in the same op on the barrier path (the ranks' arguments differ, or it
 * had a local argument error), or the timeout passed.
 */
#include <stdio.h>

#include "loopback.h"

typedef struct lb_os_waiter {
    lb_comm *c;
    const sc_os_op *o;
    unsigned seen_departures;
} lb_os_waiter;

/* Peers' slots are looked at (which pulls lines their owners write every
 * op) only after this long, or at once when a rank left. */
#define LB_OS_LOOK_S 1e-3

/* Rank r has not published op k: say why, or return TP_OK to keep waiting. */
static tp_status lb_os_missing(lb_comm *c, const sc_os_op *o, int r, double waited)
{
    lb_group *g = c->g;
    lb_slot *s = &g->slots[r];
    const char *what = sc_kind_name(o->kind);
    unsigned long long k = (unsigned long long)o->seq;
    if (atomic_load_explicit(&s->departed, memory_order_acquire))
        return lb_poison(g, TP_ERR_PEER,
                         "rank %d left the %d-rank communicator without joining %s #%llu; its "
                         "rank function probably returned early (look for its error above), or "
                         "ranks call different collectives",
                         r, g->size, what, k);
    /* A rank publishes its slot before its op number: an op number that
     * reached k without the slot means rank r took the barrier path. */
    if (atomic_load_explicit(&s->seq, memory_order_acquire) >= o->seq &&
        atomic_load_explicit(&o->bufs[r]->seq, memory_order_acquire) < o->seq) {
        const lb_pub *p = &s->pub[o->seq & 1];
        if (p->bad)
            return lb_poison(g, (tp_status)p->bad, "%s #%llu: rank %d: %s", what, k, r, p->bad_msg);
        return lb_poison(g, TP_ERR_INVALID_ARG,
                         "ranks disagree on the arguments of %s #%llu (%d-rank communicator): "
                         "rank %d called %s with count %zu, rank %d called %s with count %zu; "
                         "every rank must pass the same values",
                         what, k, g->size, c->rank, what, o->count, r, sc_kind_name(p->kind),
                         p->args.count);
    }
    if (waited <= g->eng->timeout_s)
        return TP_OK;
    int q = atomic_load_explicit(&s->kind, memory_order_relaxed);
    return lb_poison(g, TP_ERR_TIMEOUT,
                     "timeout after %.1f s in %s #%llu on a %d-rank communicator: never "
                     "arrived: rank %d (last entered %s #%llu); every rank must call the same "
                     "collectives in the same order (raise TP_TIMEOUT_S if a rank is just slow)",
                     waited, what, k, g->size, r, sc_kind_name(q),
                     (unsigned long long)atomic_load_explicit(&s->seq, memory_order_relaxed));
}

static tp_status lb_os_check(void *ctx, double waited)
{
    lb_os_waiter *w = ctx;
    lb_comm *c = w->c;
    if (atomic_load_explicit(&c->g->failed, memory_order_acquire))
        return lb_report_failed(c, (lb_kind)w->o->kind, c->seq, "", "aborted");
    if (waited == 0.0)
        return TP_OK; /* still spinning */
    unsigned dep = atomic_load_explicit(&c->g->departures, memory_order_acquire);
    if (dep == w->seen_departures && waited < LB_OS_LOOK_S && waited <= c->g->eng->timeout_s)
        return TP_OK;
    w->seen_departures = dep;
    int r = sc_os_first_missing(w->o);
    return r < 0 ? TP_OK : lb_os_missing(c, w->o, r, waited);
}

tp_status lb_oneshot(lb_comm *c, sc_os_op *o)
{
    lb_group *g = c->g;
    c->seq++;
    c->streamed = false;
    if (atomic_load_explicit(&g->failed, memory_order_acquire))
        return lb_report_failed(c, (lb_kind)o->kind, c->seq, "",
                                "refused because this communicator failed earlier");
    sc_os_buf *bufs[LB_MAX_RANKS];
    for (int r = 0; r < g->size; r++)
        bufs[r] = &g->slots[r].os[c->seq & 1];
    o->seq = c->seq;
    o->rank = c->rank;
    o->size = g->size;
    o->bufs = bufs;
    lb_os_waiter w = {.c = c, .o = o, .seen_departures = 0};
    double left = g->eng->timeout_s;
    sc_wait_spec spec = {.bar = &g->bar,
                         .spin_limit = g->eng->spin_limit,
                         .poll_s = left < 1.0 ? (left > 1e-3 ? left : 1e-3) : 1.0,
                         .shared = false,
                         .check = lb_os_check,
                         .ctx = &w};
    lb_slot *me = &g->slots[c->rank];
    char msg[400];
    tp_status st = sc_os_run(o, &me->kind, &me->seq, &spec, msg, sizeof msg);
    if (st != TP_OK && msg[0])
        return lb_poison(g, st, "%s", msg);
    return st;
}
