/* SPDX-License-Identifier: MIT */
/*
 * sync.c — barriers, argument agreement, timeouts and failure.
 *
 * The barrier and its wait loop are shmcoll's (sc-bar.c): a counter
 * barrier with a generation number, so every write a rank made before
 * arriving is visible to every rank after the barrier, which is what lets
 * ranks read each other's slots and buffers. Waiters spin (not at all when
 * a rank they wait for last ran on the same CPU: that rank cannot arrive
 * while we spin), yield for up to 50 us, then block on a futex (private to
 * the process), so a long wait costs nothing. Blocking sooner would be
 * fairer to other processes, but waking a sleeping thread is slow on this
 * VM: with 3 and 4 ranks on 2 CPUs an 8 B all_reduce took 12 and 59 us
 * that way instead of 5.4 and 7.3 us (same run, also with a niced CPU hog
 * on each CPU). lb_check below is what a waiter checks on every round.
 *
 * A failure poisons the group: `failed` is set after the message is
 * written, waiters see it and return, and every later call on the group
 * fails at once.
 */
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "loopback.h"

tp_status lb_poison(lb_group *g, tp_status status, const char *fmt, ...)
{
    char buf[sizeof g->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    int expected = 0;
    if (atomic_compare_exchange_strong_explicit(&g->poison_claim, &expected, 1,
                                                memory_order_acq_rel, memory_order_acquire)) {
        memcpy(g->msg, buf, sizeof buf);
        atomic_store_explicit(&g->failed, (int)status, memory_order_seq_cst);
        sc_bar_wake(&g->bar, false);
    } else {
        /* Another rank is recording its failure; wait until it is visible so
         * no rank returns (and starts its next op) before the group is
         * marked failed. Its verdict is everyone's: what this rank saw may
         * be a consequence (the first failure let a peer return and leave
         * between this rank's look at `failed` and at the departures). */
        int first;
        while (!(first = atomic_load_explicit(&g->failed, memory_order_acquire)))
            sc_cpu_relax();
        status = first > TP_OK && first < TP_STATUS_COUNT_ ? (tp_status)first : TP_ERR_PEER;
        memcpy(buf, g->msg, sizeof buf);
    }
    return g->eng->host->set_error(status, "loopback: %s", buf);
}

tp_status lb_report_failed(lb_comm *c, lb_kind kind, uint64_t seq, const char *nb, const char *how)
{
    lb_group *g = c->g;
    tp_status st = (tp_status)atomic_load_explicit(&g->failed, memory_order_acquire);
    if (st <= TP_OK || st >= TP_STATUS_COUNT_)
        st = TP_ERR_PEER;
    return g->eng->host->set_error(st, "loopback: %s%s #%llu on rank %d of %d %s: %s",
                                   sc_kind_name(kind), nb, (unsigned long long)seq, c->rank,
                                   g->size, how, g->msg);
}

/* Ranks that reached barrier epoch e, as a bit mask (bit r: rank r). */
static uint64_t lb_epoch_mask(lb_group *g, uint64_t e)
{
    uint64_t have = 0;
    for (int r = 0; r < g->size; r++)
        if (atomic_load_explicit(&g->slots[r].epoch, memory_order_acquire) >= e)
            have |= 1ull << r;
    return have;
}

/* Append "rank R (<where it is>)" for every rank not in `have`, or only
 * for those of them that departed. */
static size_t lb_describe_missing(lb_group *g, uint64_t have, bool departed_only, char *out,
                                  size_t len)
{
    size_t n = 0, used = 0;
    out[0] = '\0';
    for (int r = 0; r < g->size && used + 1 < len; r++) {
        lb_slot *s = &g->slots[r];
        if (have >> r & 1)
            continue;
        int dep = atomic_load_explicit(&s->departed, memory_order_acquire);
        if (departed_only && !dep)
            continue;
        int k = atomic_load_explicit(&s->kind, memory_order_relaxed);
        unsigned long long q = atomic_load_explicit(&s->seq, memory_order_relaxed);
        int w;
        if (k == LB_NONE)
            w = snprintf(out + used, len - used, "%srank %d (%s)", n ? ", " : "", r,
                         dep ? "before calling any collective" : "has called no collective");
        else
            w = snprintf(out + used, len - used, "%srank %d (%s %s #%llu)", n ? ", " : "", r,
                         dep ? "after" : "last entered", sc_kind_name(k), q);
        if (w < 0)
            break;
        used += (size_t)w < len - used ? (size_t)w : len - used - 1;
        n++;
    }
    return n;
}

/* What a waiter checks on every round (sc_bar_wait): for barrier epoch e
 * (mask NULL), or for a nonblocking op whose starters are in *mask. */
typedef struct lb_waiter {
    lb_comm *c;
    lb_kind kind;
    const char *how; /* "" or " (nonblocking)", after the collective's name */
    uint64_t seq;    /* the op's number, for messages */
    uint64_t e;      /* barrier epoch */
    const atomic_uint_fast64_t *mask;
    unsigned seen_departures;
} lb_waiter;

static uint64_t lb_waiter_have(const lb_waiter *w)
{
    return w->mask ? atomic_load_explicit(w->mask, memory_order_acquire)
                   : lb_epoch_mask(w->c->g, w->e);
}

/* The group failed, a rank that has not arrived left, or the timeout passed. */
static tp_status lb_check(void *ctx, double waited)
{
    lb_waiter *w = ctx;
    lb_comm *c = w->c;
    lb_group *g = c->g;
    if (atomic_load_explicit(&g->failed, memory_order_acquire))
        return lb_report_failed(c, w->kind, w->seq, w->how, "aborted");
    unsigned dep = atomic_load_explicit(&g->departures, memory_order_acquire);
    if (dep != w->seen_departures) {
        w->seen_departures = dep;
        char who[400];
        if (lb_describe_missing(g, lb_waiter_have(w), true, who, sizeof who))
            return lb_poison(g, TP_ERR_PEER,
                             "%s left the %d-rank communicator without joining %s%s "
                             "#%llu; its rank function probably returned early (look for "
                             "its error above), or ranks call different collectives",
                             who, g->size, sc_kind_name(w->kind), w->how,
                             (unsigned long long)w->seq);
    }
    double timeout = g->eng->timeout_s;
    if (waited > timeout) {
        char who[400];
        if (!lb_describe_missing(g, lb_waiter_have(w), false, who, sizeof who))
            return TP_OK; /* everyone arrived just now: the flag is about to change */
        return lb_poison(g, TP_ERR_TIMEOUT,
                         "timeout after %.1f s in %s%s #%llu on a %d-rank "
                         "communicator: never arrived: %s; every rank must call the same "
                         "collectives in the same order (raise TP_TIMEOUT_S if a rank is "
                         "just slow)",
                         waited, sc_kind_name(w->kind), w->how, (unsigned long long)w->seq, g->size,
                         who);
    }
    return TP_OK;
}

/* Wait until *flag (NULL: the barrier's generation) reaches target, or
 * lb_check gives up; w says what for. */
static tp_status lb_wait(lb_waiter *w, const atomic_uint_fast64_t *flag, uint64_t target)
{
    lb_group *g = w->c->g;
    lb_engine *eng = g->eng;
    unsigned limit = eng->spin_limit;
    /* A rank that has not arrived and last ran on this CPU cannot arrive
     * while this thread spins: yield at once. */
    int here = sched_getcpu();
    uint64_t have = here >= 0 && limit > 16 ? lb_waiter_have(w) : ~0ull;
    for (int r = 0; r < g->size; r++)
        if (!(have >> r & 1) &&
            atomic_load_explicit(&g->slots[r].cpu, memory_order_relaxed) == here)
            limit = 0;
    double left = eng->timeout_s;
    sc_wait_spec spec = {.bar = &g->bar,
                         .epoch = target,
                         .flag = flag,
                         .spin_limit = limit,
                         .poll_s = left < 1.0 ? (left > 1e-3 ? left : 1e-3) : 1.0,
                         .shared = false,
                         .check = lb_check,
                         .ctx = w};
    return sc_bar_wait(&spec);
}

tp_status lb_check_op(lb_comm *c, lb_kind kind, uint64_t seq, const atomic_uint_fast64_t *mask,
                      double waited)
{
    lb_waiter w = {.c = c, .kind = kind, .how = " (nonblocking)", .seq = seq, .mask = mask};
    return lb_check(&w, waited);
}

tp_status lb_wait_op(lb_comm *c, lb_kind kind, uint64_t seq, const atomic_uint_fast64_t *flag,
                     uint64_t target, const atomic_uint_fast64_t *mask)
{
    lb_waiter w = {.c = c, .kind = kind, .how = " (nonblocking)", .seq = seq, .mask = mask};
    return lb_wait(&w, flag, target);
}

tp_status lb_barrier_wait(lb_comm *c, lb_kind kind)
{
    lb_group *g = c->g;
    uint64_t e = ++c->epoch;
    atomic_store_explicit(&g->slots[c->rank].cpu, sched_getcpu(), memory_order_relaxed);
    atomic_store_explicit(&g->slots[c->rank].epoch, e, memory_order_release);
    if (sc_bar_arrive(&g->bar, (unsigned)g->size, e, false))
        return TP_OK;
    lb_waiter w = {.c = c, .kind = kind, .how = "", .seq = c->seq, .e = e};
    return lb_wait(&w, NULL, e);
}

static uint64_t lb_arg_of(const lb_args *a, int which)
{
    switch (which) {
        case 0: return a->count;
        case 1: return (uint64_t)(int64_t)a->dt;
        case 2: return (uint64_t)(int64_t)a->op;
        case 3: return (uint64_t)(int64_t)a->root;
        default: return a->counts_hash;
    }
}

/* A readable account of how ranks 0 and r differ in field `which`. */
static void lb_describe_difference(const lb_args *a0, const lb_args *ar, int r, int size, int which,
                                   char *out, size_t len)
{
    static const char *const names[] = {"count", "dtype", "op", "root"};
    if (which < 4) {
        snprintf(out, len, "rank 0 passed %s %lld, rank %d passed %lld", names[which],
                 (long long)lb_arg_of(a0, which), r, (long long)lb_arg_of(ar, which));
        return;
    }
    for (int i = 0; i < size; i++) {
        if (a0->counts[i] != ar->counts[i]) {
            snprintf(out, len, "rank 0 passed counts[%d] = %zu, rank %d passed counts[%d] = %zu", i,
                     a0->counts[i], r, i, ar->counts[i]);
            return;
        }
    }
    snprintf(out, len, "rank 0 and rank %d passed different counts arrays", r);
}

tp_status lb_agree(lb_group *g, lb_kind kind, const char *how, uint64_t seq, const lb_pub *const *p)
{
    /* Every rank reads the same publications, so every rank reaches the
     * same verdict; none touches a buffer unless all agree. */
    unsigned long long k = (unsigned long long)seq;
    for (int r = 0; r < g->size; r++)
        if (p[r]->bad)
            return lb_poison(g, (tp_status)p[r]->bad, "%s%s #%llu: rank %d: %s", sc_kind_name(kind),
                             how, k, r, p[r]->bad_msg);
    for (int r = 1; r < g->size; r++) {
        if (p[r]->kind != p[0]->kind)
            return lb_poison(g, TP_ERR_INVALID_ARG,
                             "ranks call different collectives: rank 0 called %s%s #%llu while "
                             "rank %d called %s%s #%llu on the same %d-rank communicator; every "
                             "rank must call the same collectives in the same order",
                             sc_kind_name(p[0]->kind), how, k, r, sc_kind_name(p[r]->kind), how, k,
                             g->size);
        unsigned fields = sc_agreed_fields(kind);
        for (int f = 0; f < 5; f++) {
            if (!(fields & (1u << f)) || lb_arg_of(&p[r]->args, f) == lb_arg_of(&p[0]->args, f))
                continue;
            char diff[200];
            lb_describe_difference(&p[0]->args, &p[r]->args, r, g->size, f, diff, sizeof diff);
            return lb_poison(g, TP_ERR_INVALID_ARG,
                             "ranks disagree on the arguments of %s%s #%llu (%d-rank "
                             "communicator): %s; every rank must pass the same values",
                             sc_kind_name(kind), how, k, g->size, diff);
        }
    }
    return TP_OK;
}

tp_status lb_begin(lb_comm *c, lb_kind kind, const lb_args *a, tp_status bad, const char *bad_msg)
{
    lb_group *g = c->g;
    c->seq++;
    c->streamed = false;
    if (atomic_load_explicit(&g->failed, memory_order_acquire))
        return lb_report_failed(c, kind, c->seq, "",
                                "refused because this communicator failed earlier");
    lb_slot *me = &g->slots[c->rank];
    int q = (int)(c->seq & 1);
    me->pub[q].args = *a;
    me->pub[q].kind = (int)kind;
    me->pub[q].bad = (int)bad;
    if (bad)
        snprintf(me->pub[q].bad_msg, sizeof me->pub[q].bad_msg, "%s", bad_msg);
    atomic_store_explicit(&me->kind, (int)kind, memory_order_relaxed);
    /* release: a one-shot waiter that sees this op number reads pub (oneshot.c) */
    atomic_store_explicit(&me->seq, c->seq, memory_order_release);
    tp_status st = lb_barrier_wait(c, kind);
    if (st != TP_OK)
        return st;
    const lb_pub *pubs[LB_MAX_RANKS];
    for (int r = 0; r < g->size; r++)
        pubs[r] = &g->slots[r].pub[q];
    return lb_agree(g, kind, "", c->seq, pubs);
}

tp_status lb_end(lb_comm *c, lb_kind kind)
{
    if (c->streamed)
        sc_store_fence(); /* non-temporal stores are not ordered by release */
    return lb_barrier_wait(c, kind);
}
