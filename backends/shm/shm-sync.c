/* SPDX-License-Identifier: MIT */
/*
 * shm-sync.c — barriers between processes, argument agreement, failure.
 *
 * The barrier is shmcoll's (its futex word lives in the segment, so the
 * futex calls are the process-shared kind). While waiting a rank checks,
 * on every round: the failure flag (another rank poisoned the segment);
 * the ranks that have not arrived: departed (comm_free) or their process
 * gone (pid and start time, /proc; a zombie counts as gone) give
 * TP_ERR_PEER, checked at least every 10 ms; and TP_TIMEOUT_S, which gives
 * TP_ERR_TIMEOUT naming the ranks that never arrived. A failure poisons
 * the communicator: `failed` is set after the message is written, every
 * waiter returns, later calls fail at once.
 *
 * Values read from the segment are only compared or printed (bounded),
 * never used as indices or sizes.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "shm.h"

#define SH_POLL_S 0.01 /* peers' processes are checked this often while blocked */

tp_status sh_poison(sh_comm *c, tp_status status, const char *fmt, ...)
{
    sh_hdr *h = c->h;
    char buf[sizeof h->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    int expected = 0;
    if (atomic_compare_exchange_strong(&h->poison_claim, &expected, 1)) {
        memcpy(h->msg, buf, sizeof buf);
        atomic_store_explicit(&h->failed, (int)status, memory_order_seq_cst);
        sc_bar_wake(&h->bar, true);
    } else {
        /* Another rank records its failure; wait (bounded: it may die
         * meanwhile) until it is visible, so no rank starts its next op
         * before the communicator is marked failed. */
        double until = sc_now() + 1.0;
        while (!atomic_load_explicit(&h->failed, memory_order_acquire) && sc_now() < until)
            sc_cpu_relax();
    }
    return c->eng->host->set_error(status, "shm: %s", buf);
}

tp_status sh_report_failed(sh_comm *c, int kind, const char *how)
{
    sh_hdr *h = c->h;
    int st = atomic_load_explicit(&h->failed, memory_order_acquire);
    if (st <= 0 || st >= TP_STATUS_COUNT_)
        st = TP_ERR_PEER;
    return c->eng->host->set_error((tp_status)st, "shm: %s #%llu on rank %d of %d %s: %.*s",
                                   sc_kind_name(kind), (unsigned long long)c->seq, c->rank, c->size,
                                   how, (int)sizeof h->msg - 1, h->msg);
}

/* Append "rank R (where it is)" for ranks that have not reached epoch e;
 * only those whose process is gone or that departed when `gone_only`. */
static size_t sh_describe_missing(sh_comm *c, uint64_t e, bool gone_only, char *out, size_t len)
{
    size_t n = 0, used = 0;
    out[0] = '\0';
    for (int r = 0; r < c->size && used + 1 < len; r++) {
        sh_slot *s = &c->h->slots[r];
        if (atomic_load_explicit(&s->epoch, memory_order_acquire) >= e)
            continue;
        int pid = atomic_load(&s->pid);
        bool dep = atomic_load(&s->departed) != 0;
        bool dead = pid && !sh_proc_alive(pid, atomic_load(&s->start));
        if (gone_only && !dep && !dead)
            continue;
        int k = atomic_load_explicit(&s->kind, memory_order_relaxed);
        unsigned long long q = atomic_load_explicit(&s->seq, memory_order_relaxed);
        const char *what = !pid   ? "never attached"
                           : dead ? "its process died"
                           : dep  ? "left the communicator"
                                  : "still running";
        int w = snprintf(out + used, len - used, "%srank %d (pid %d, %s, last in %s #%llu)",
                         n ? ", " : "", r, pid, what, sc_kind_name(k), q);
        if (w < 0)
            break;
        used += (size_t)w < len - used ? (size_t)w : len - used - 1;
        n++;
    }
    return n;
}

typedef struct sh_waiter {
    sh_comm *c;
    int kind;
    uint64_t e;
} sh_waiter;

static tp_status sh_check(void *ctx, double waited)
{
    sh_waiter *w = ctx;
    sh_comm *c = w->c;
    if (atomic_load_explicit(&c->h->failed, memory_order_acquire))
        return sh_report_failed(c, w->kind, "aborted");
    if (waited == 0.0)
        return TP_OK; /* still spinning */
    double now = sc_now();
    if (now >= c->next_poll) {
        c->next_poll = now + SH_POLL_S;
        char who[480];
        if (sh_describe_missing(c, w->e, true, who, sizeof who))
            return sh_poison(c, TP_ERR_PEER,
                             "%s, so the %d-rank communicator cannot complete %s #%llu; look "
                             "for that rank's error or signal",
                             who, c->size, sc_kind_name(w->kind), (unsigned long long)c->seq);
    }
    if (waited > c->eng->timeout_s) {
        char who[480];
        if (!sh_describe_missing(c, w->e, false, who, sizeof who))
            return TP_OK;
        return sh_poison(c, TP_ERR_TIMEOUT,
                         "timeout after %.1f s in %s #%llu on a %d-rank communicator: never "
                         "arrived: %s; every rank must call the same collectives in the same "
                         "order (raise TP_TIMEOUT_S if a rank is just slow)",
                         waited, sc_kind_name(w->kind), (unsigned long long)c->seq, c->size, who);
    }
    return TP_OK;
}

tp_status sh_barrier_wait(sh_comm *c, int kind)
{
    sh_hdr *h = c->h;
    uint64_t e = ++c->epoch;
    atomic_store_explicit(&h->slots[c->rank].epoch, e, memory_order_release);
    if (sc_bar_arrive(&h->bar, (unsigned)c->size, e, true))
        return TP_OK;
    sh_waiter w = {.c = c, .kind = kind, .e = e};
    sc_wait_spec spec = {.bar = &h->bar,
                         .epoch = e,
                         .spin_limit = c->eng->spin_limit,
                         .poll_s = SH_POLL_S,
                         .shared = true,
                         .check = sh_check,
                         .ctx = &w};
    return sc_bar_wait(&spec);
}

static uint64_t sh_arg_of(const sh_pub *a, int which)
{
    switch (which) {
        case 0: return a->count;
        case 1: return (uint64_t)(int64_t)a->dt;
        case 2: return (uint64_t)(int64_t)a->op;
        case 3: return (uint64_t)(int64_t)a->root;
        default: return a->counts_hash;
    }
}

/* All ranks' published arguments agree with rank 0's (same verdict on every rank). */
static tp_status sh_agree(sh_comm *c, int kind)
{
    static const char *const names[] = {"count", "dtype", "op", "root", "counts array"};
    const sh_pub *p0 = sh_peer(c, 0);
    for (int r = 0; r < c->size; r++) {
        const sh_pub *p = sh_peer(c, r);
        if (p->bad)
            return sh_poison(c, p->bad > 0 && p->bad < TP_STATUS_COUNT_ ? p->bad : TP_ERR_PEER,
                             "%s #%llu: rank %d: %.*s", sc_kind_name(kind),
                             (unsigned long long)c->seq, r, (int)sizeof p->bad_msg - 1, p->bad_msg);
    }
    for (int r = 1; r < c->size; r++) {
        const sh_pub *p = sh_peer(c, r);
        if (p->kind != p0->kind)
            return sh_poison(c, TP_ERR_INVALID_ARG,
                             "ranks call different collectives: rank 0 called %s #%llu while "
                             "rank %d called %s #%llu on the same %d-rank communicator; every "
                             "rank must call the same collectives in the same order",
                             sc_kind_name(p0->kind), (unsigned long long)c->seq, r,
                             sc_kind_name(p->kind), (unsigned long long)c->seq, c->size);
        unsigned fields = sc_agreed_fields(kind);
        for (int f = 0; f < 5; f++) {
            if (!(fields & (1u << f)) || sh_arg_of(p, f) == sh_arg_of(p0, f))
                continue;
            return sh_poison(c, TP_ERR_INVALID_ARG,
                             "ranks disagree on the arguments of %s #%llu (%d-rank "
                             "communicator): rank 0 passed %s %lld, rank %d passed %lld; every "
                             "rank must pass the same values",
                             sc_kind_name(kind), (unsigned long long)c->seq, c->size, names[f],
                             (long long)sh_arg_of(p0, f), r, (long long)sh_arg_of(p, f));
        }
    }
    return TP_OK;
}

tp_status sh_begin(sh_comm *c, int kind, const sh_pub *a, tp_status bad, const char *bad_msg)
{
    sh_hdr *h = c->h;
    c->seq++;
    c->streamed = false;
    if (atomic_load_explicit(&h->failed, memory_order_acquire))
        return sh_report_failed(c, kind, "refused because this communicator failed earlier");
    sh_slot *me = &h->slots[c->rank];
    sh_pub *p = &me->pub[c->seq & 1];
    *p = *a;
    p->kind = kind;
    p->bad = (int32_t)bad;
    if (bad)
        snprintf(p->bad_msg, sizeof p->bad_msg, "%s", bad_msg);
    atomic_store_explicit(&me->kind, kind, memory_order_relaxed);
    /* release: a one-shot waiter that sees this op number reads pub */
    atomic_store_explicit(&me->seq, c->seq, memory_order_release);
    tp_status st = sh_barrier_wait(c, kind);
    return st != TP_OK ? st : sh_agree(c, kind);
}
