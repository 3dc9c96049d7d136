/* SPDX-License-Identifier: MIT */
/*
 * sync.c — barriers, argument agreement, timeouts and failure.
 *
 * The barrier is a counter barrier with a generation number (a
 * sense-reversing barrier whose "sense" is the epoch): each arrival
 * increments `arrived` (acq_rel); the last one resets it and publishes the
 * epoch in `gen` (release); the others spin on `gen` (acquire). So every
 * write a rank made before arriving is visible to every rank after the
 * barrier, which is what lets ranks read each other's slots and buffers.
 *
 * Waiting spins with a CPU pause for a few microseconds (less when ranks
 * outnumber CPUs, not at all when a rank it waits for last ran on the same
 * CPU: that rank cannot arrive while we spin), then yields for up to
 * 50 us (the CPU goes to a rank that shares it), then blocks on a futex,
 * so a long wait costs nothing and frees the CPU for the ranks still
 * working. Blocking sooner would be fairer to other processes, but waking
 * a sleeping thread is slow on this VM: with 3 and 4 ranks on 2 CPUs an
 * 8 B all_reduce took 12 and 59 us that way instead of 5.4 and 7.3 us
 * (same run, also with a niced CPU hog on each CPU). Whoever completes a
 * barrier, fails the group or leaves it wakes blocked waiters, but only
 * pays for the system call when someone sleeps (`sleepers`, with
 * sequentially consistent ordering against `gen`, so a wake-up is never
 * lost).
 *
 * A failure poisons the group: `failed` is set after the message is
 * written, waiters see it and return, and every later call on the group
 * fails at once.
 */
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "loopback.h"

static const char *const lb_kind_names[LB_KIND_COUNT] = {
    "(no collective yet)", "all_reduce", "all_gather", "reduce_scatter",
    "broadcast",           "barrier",    "split"};

const char *lb_kind_name(int kind)
{
    return kind >= 0 && kind < LB_KIND_COUNT ? lb_kind_names[kind] : "?";
}

static inline void lb_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

static double lb_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Block until g->wake differs from `seen`, a wake-up, or `timeout` s. */
static void lb_block(lb_group *g, unsigned seen, double timeout)
{
    if (timeout > 1.0)
        timeout = 1.0;
    if (timeout < 1e-6)
        timeout = 1e-6;
#if defined(__linux__)
    struct timespec ts = {(time_t)timeout, (long)((timeout - (double)(time_t)timeout) * 1e9)};
    syscall(SYS_futex, (unsigned *)&g->wake, FUTEX_WAIT_PRIVATE, seen, &ts, NULL, 0);
#else
    (void)seen;
    struct timespec ts = {0, timeout > 1e-3 ? 1000000 : (long)(timeout * 1e9)};
    nanosleep(&ts, NULL);
#endif
}

void lb_wake(lb_group *g)
{
    if (atomic_load_explicit(&g->sleepers, memory_order_seq_cst) == 0)
        return;
    atomic_fetch_add_explicit(&g->wake, 1, memory_order_seq_cst);
#if defined(__linux__)
    syscall(SYS_futex, (unsigned *)&g->wake, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#endif
}

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
        lb_wake(g);
    } else {
        /* Another rank is recording its failure; wait until it is visible so
         * no rank returns (and starts its next op) before the group is
         * marked failed. */
        while (!atomic_load_explicit(&g->failed, memory_order_acquire))
            lb_cpu_relax();
    }
    return g->eng->host->set_error(status, "loopback: %s", buf);
}

/* The calling rank's view of an earlier failure of its group. */
static tp_status lb_report_failed(lb_comm *c, lb_kind kind, const char *how)
{
    lb_group *g = c->g;
    tp_status st = (tp_status)atomic_load_explicit(&g->failed, memory_order_acquire);
    return g->eng->host->set_error(st, "loopback: %s #%llu on rank %d of %d %s: %s",
                                   lb_kind_name(kind), (unsigned long long)c->seq, c->rank, g->size,
                                   how, g->msg);
}

/* Append "rank R (<where it is>)" for every rank that has not reached
 * barrier epoch e, or that departed before it. */
static size_t lb_describe_missing(lb_group *g, uint64_t e, bool departed_only, char *out,
                                  size_t len)
{
    size_t n = 0, used = 0;
    out[0] = '\0';
    for (int r = 0; r < g->size && used + 1 < len; r++) {
        lb_slot *s = &g->slots[r];
        if (atomic_load_explicit(&s->epoch, memory_order_acquire) >= e)
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
                         dep ? "after" : "last entered", lb_kind_name(k), q);
        if (w < 0)
            break;
        used += (size_t)w < len - used ? (size_t)w : len - used - 1;
        n++;
    }
    return n;
}

/* Wait until barrier epoch e completes, the group fails, a rank that has
 * not arrived leaves, or the timeout passes. */
static tp_status lb_wait(lb_comm *c, lb_kind kind, uint64_t e)
{
    lb_group *g = c->g;
    lb_engine *eng = g->eng;
    unsigned spins = 0, seen_departures = 0, limit = eng->spin_limit;
    double start = 0.0;
    /* A rank that has not arrived and last ran on this CPU cannot arrive
     * while this thread spins: yield at once. */
    int here = sched_getcpu();
    for (int r = 0; here >= 0 && limit > 16 && r < g->size; r++)
        if (atomic_load_explicit(&g->slots[r].epoch, memory_order_relaxed) < e &&
            atomic_load_explicit(&g->slots[r].cpu, memory_order_relaxed) == here)
            limit = 0;
    for (;;) {
        if (atomic_load_explicit(&g->gen, memory_order_acquire) >= e)
            return TP_OK;
        if (atomic_load_explicit(&g->failed, memory_order_relaxed))
            return lb_report_failed(c, kind, "aborted");
        unsigned dep = atomic_load_explicit(&g->departures, memory_order_acquire);
        if (dep != seen_departures) {
            seen_departures = dep;
            char who[400];
            if (lb_describe_missing(g, e, true, who, sizeof who))
                return lb_poison(g, TP_ERR_PEER,
                                 "%s left the %d-rank communicator without joining %s "
                                 "#%llu; its rank function probably returned early (look for "
                                 "its error above), or ranks call different collectives",
                                 who, g->size, lb_kind_name(kind), (unsigned long long)c->seq);
        }
        if (++spins < limit) {
            lb_cpu_relax();
            continue;
        }
        double now = lb_now();
        if (start == 0.0)
            start = now;
        double waited = now - start;
        if (waited > eng->timeout_s) {
            char who[400];
            if (!lb_describe_missing(g, e, false, who, sizeof who))
                continue; /* everyone arrived just now: `gen` is about to change */
            return lb_poison(g, TP_ERR_TIMEOUT,
                             "timeout after %.1f s in %s #%llu on a %d-rank "
                             "communicator: never arrived: %s; every rank must call the same "
                             "collectives in the same order (raise TP_TIMEOUT_S if a rank is "
                             "just slow)",
                             waited, lb_kind_name(kind), (unsigned long long)c->seq, g->size, who);
        }
        if (waited < 50e-6) {
            sched_yield(); /* lets a rank sharing this CPU run and arrive */
            continue;
        }
        /* Announce the sleep, then re-check everything a waker changes
         * before blocking; a wake-up after the check changes `wake`. */
        atomic_fetch_add_explicit(&g->sleepers, 1, memory_order_seq_cst);
        unsigned seen = atomic_load_explicit(&g->wake, memory_order_seq_cst);
        if (atomic_load_explicit(&g->gen, memory_order_seq_cst) < e &&
            !atomic_load_explicit(&g->failed, memory_order_seq_cst) &&
            atomic_load_explicit(&g->departures, memory_order_seq_cst) == seen_departures)
            lb_block(g, seen, eng->timeout_s - waited);
        atomic_fetch_sub_explicit(&g->sleepers, 1, memory_order_relaxed);
    }
}

tp_status lb_barrier_wait(lb_comm *c, lb_kind kind)
{
    lb_group *g = c->g;
    uint64_t e = ++c->epoch;
    atomic_store_explicit(&g->slots[c->rank].cpu, sched_getcpu(), memory_order_relaxed);
    atomic_store_explicit(&g->slots[c->rank].epoch, e, memory_order_release);
    unsigned old = atomic_fetch_add_explicit(&g->arrived, 1, memory_order_acq_rel);
    if (old + 1 == (unsigned)g->size) {
        atomic_store_explicit(&g->arrived, 0, memory_order_relaxed);
        atomic_store_explicit(&g->gen, e, memory_order_seq_cst);
        lb_wake(g);
        return TP_OK;
    }
    return lb_wait(c, kind, e);
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

/* Which arguments must agree for each kind: bit i is field i of lb_arg_of. */
static unsigned lb_agreed_fields(lb_kind kind)
{
    switch (kind) {
        case LB_ALL_REDUCE: return 1u | 2u | 4u;
        case LB_ALL_GATHER: return 2u | 16u;
        case LB_REDUCE_SCATTER: return 2u | 4u | 16u;
        case LB_BROADCAST: return 1u | 2u | 8u;
        default: return 0;
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

tp_status lb_begin(lb_comm *c, lb_kind kind, const lb_args *a, tp_status bad, const char *bad_msg)
{
    lb_group *g = c->g;
    c->seq++;
    c->streamed = false;
    if (atomic_load_explicit(&g->failed, memory_order_acquire))
        return lb_report_failed(c, kind, "refused because this communicator failed earlier");
    lb_slot *me = &g->slots[c->rank];
    int q = (int)(c->seq & 1);
    me->pub[q].args = *a;
    me->pub[q].kind = (int)kind;
    me->pub[q].bad = (int)bad;
    if (bad)
        snprintf(me->pub[q].bad_msg, sizeof me->pub[q].bad_msg, "%s", bad_msg);
    atomic_store_explicit(&me->kind, (int)kind, memory_order_relaxed);
    atomic_store_explicit(&me->seq, c->seq, memory_order_relaxed);
    tp_status st = lb_barrier_wait(c, kind);
    if (st != TP_OK)
        return st;
    /* Every rank reads the same slots, so every rank reaches the same
     * verdict; none touches a buffer unless all agree. */
    const lb_pub *p0 = &g->slots[0].pub[q];
    for (int r = 0; r < g->size; r++) {
        const lb_pub *p = &g->slots[r].pub[q];
        if (p->bad)
            return lb_poison(g, (tp_status)p->bad, "%s #%llu: rank %d: %s", lb_kind_name(kind),
                             (unsigned long long)c->seq, r, p->bad_msg);
    }
    for (int r = 1; r < g->size; r++) {
        const lb_pub *p = &g->slots[r].pub[q];
        if (p->kind != p0->kind)
            return lb_poison(g, TP_ERR_INVALID_ARG,
                             "ranks call different collectives: rank 0 called %s #%llu while "
                             "rank %d called %s #%llu on the same %d-rank communicator; every "
                             "rank must call the same collectives in the same order",
                             lb_kind_name(p0->kind), (unsigned long long)c->seq, r,
                             lb_kind_name(p->kind), (unsigned long long)c->seq, g->size);
        unsigned fields = lb_agreed_fields(kind);
        for (int f = 0; f < 5; f++) {
            if (!(fields & (1u << f)) || lb_arg_of(&p->args, f) == lb_arg_of(&p0->args, f))
                continue;
            char diff[200];
            lb_describe_difference(&p0->args, &p->args, r, g->size, f, diff, sizeof diff);
            return lb_poison(g, TP_ERR_INVALID_ARG,
                             "ranks disagree on the arguments of %s #%llu (%d-rank "
                             "communicator): %s; every rank must pass the same values",
                             lb_kind_name(kind), (unsigned long long)c->seq, g->size, diff);
        }
    }
    return TP_OK;
}

tp_status lb_end(lb_comm *c, lb_kind kind)
{
    if (c->streamed)
        lb_store_fence(); /* non-temporal stores are not ordered by release */
    return lb_barrier_wait(c, kind);
}
