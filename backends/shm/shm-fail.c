/* SPDX-License-Identifier: MIT */
/*
 * shm-fail.c — what every wait of the backend reports: poisoning a
 * communicator with the first failure, the ranks that did not arrive
 * (gone: TP_ERR_PEER, checked every 10 ms; silent past TP_TIMEOUT_S:
 * TP_ERR_TIMEOUT), and ranks whose published arguments disagree.
 *
 * A failure poisons the communicator: `failed` is set after the message
 * is written, every waiter returns, later calls fail at once. Values read
 * from the segment are only compared or printed (bounded), never used as
 * indices or sizes.
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
        int first;
        while (!(first = atomic_load_explicit(&h->failed, memory_order_acquire)) &&
               sc_now() < until)
            sc_cpu_relax();
        /* Its verdict is everyone's: what this rank saw may be a
         * consequence (the first failure let a peer return and leave
         * between this rank's look at `failed` and at the departures). */
        if (first) {
            status = first > TP_OK && first < TP_STATUS_COUNT_ ? (tp_status)first : TP_ERR_PEER;
            snprintf(buf, sizeof buf, "%.*s", (int)sizeof h->msg - 1, h->msg);
        }
    }
    return c->eng->host->set_error(status, "shm: %s", buf);
}

tp_status sh_report_failed(sh_comm *c, int kind, uint64_t seq, bool nb, const char *how)
{
    sh_hdr *h = c->h;
    int st = atomic_load_explicit(&h->failed, memory_order_acquire);
    if (st <= 0 || st >= TP_STATUS_COUNT_)
        st = TP_ERR_PEER;
    return c->eng->host->set_error((tp_status)st, "shm: %s%s #%llu on rank %d of %d %s: %.*s",
                                   sc_kind_name(kind), nb ? " (nonblocking)" : "",
                                   (unsigned long long)seq, c->rank, c->size, how,
                                   (int)sizeof h->msg - 1, h->msg);
}

/* Bit r: rank r of `among` left the communicator or its process is gone. */
static uint64_t sh_gone(sh_comm *c, uint64_t among)
{
    uint64_t gone = 0;
    for (int r = 0; r < c->size; r++) {
        sh_slot *s = &c->h->slots[r];
        int pid = atomic_load(&s->pid);
        if ((among >> r & 1) &&
            (atomic_load(&s->departed) || (pid && !sh_proc_alive(pid, atomic_load(&s->start)))))
            gone |= 1ull << r;
    }
    return gone;
}

/* "rank R (pid, where it is), ..." for the ranks in `which`. */
static void sh_describe(sh_comm *c, uint64_t which, char *out, size_t len)
{
    size_t n = 0, used = 0;
    out[0] = '\0';
    for (int r = 0; r < c->size && used + 1 < len; r++) {
        sh_slot *s = &c->h->slots[r];
        if (!(which >> r & 1))
            continue;
        int pid = atomic_load(&s->pid);
        bool dep = atomic_load(&s->departed) != 0;
        bool dead = pid && !sh_proc_alive(pid, atomic_load(&s->start));
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
}

tp_status sh_check_missing(sh_comm *c, sh_have_fn have, const void *arg, double waited,
                           const char *what, const char *doing)
{
    uint64_t all = sc_all_ranks(c->size);
    double now = sc_now();
    char who[480];
    if (now >= c->next_poll) {
        c->next_poll = now + SH_POLL_S;
        /* Asked again after the liveness check: a rank that arrived and
         * then finished and exited is not missing. */
        uint64_t gone = sh_gone(c, all & ~have(c, arg)) & ~have(c, arg);
        if (gone) {
            sh_describe(c, gone, who, sizeof who);
            return sh_poison(c, TP_ERR_PEER,
                             "%s, so the %d-rank communicator cannot complete %s; look for that "
                             "rank's error or signal",
                             who, c->size, what);
        }
    }
    uint64_t missing = all & ~have(c, arg);
    if (waited <= c->eng->timeout_s || !missing)
        return TP_OK;
    sh_describe(c, missing, who, sizeof who);
    return sh_poison(c, TP_ERR_TIMEOUT,
                     "timeout after %.1f s in %s on a %d-rank communicator: %s: %s; every rank "
                     "must call the same collectives in the same order (raise TP_TIMEOUT_S if a "
                     "rank is just slow)",
                     waited, what, c->size, doing, who);
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

tp_status sh_agree(sh_comm *c, int kind, uint64_t seq, const sh_pub *const *p, const char *how)
{
    static const char *const names[] = {"count", "dtype", "op", "root", "counts array"};
    unsigned long long k = (unsigned long long)seq;
    for (int r = 0; r < c->size; r++)
        if (p[r]->bad)
            return sh_poison(
                c, p[r]->bad > 0 && p[r]->bad < TP_STATUS_COUNT_ ? p[r]->bad : TP_ERR_PEER,
                "%s%s #%llu: rank %d: %.*s", sc_kind_name(kind), how, k, r,
                (int)sizeof p[r]->bad_msg - 1, p[r]->bad_msg);
    for (int r = 1; r < c->size; r++) {
        if (p[r]->kind != p[0]->kind)
            return sh_poison(c, TP_ERR_INVALID_ARG,
                             "ranks call different collectives: rank 0 called %s%s #%llu while "
                             "rank %d called %s%s #%llu on the same %d-rank communicator; every "
                             "rank must call the same collectives in the same order",
                             sc_kind_name(p[0]->kind), how, k, r, sc_kind_name(p[r]->kind), how, k,
                             c->size);
        unsigned fields = sc_agreed_fields(kind);
        for (int f = 0; f < 5; f++) {
            if (!(fields & (1u << f)) || sh_arg_of(p[r], f) == sh_arg_of(p[0], f))
                continue;
            return sh_poison(c, TP_ERR_INVALID_ARG,
                             "ranks disagree on the arguments of %s%s #%llu (%d-rank "
                             "communicator): rank 0 passed %s %lld, rank %d passed %lld; every "
                             "rank must pass the same values",
                             sc_kind_name(kind), how, k, c->size, names[f],
                             (long long)sh_arg_of(p[0], f), r, (long long)sh_arg_of(p[r], f));
        }
    }
    return TP_OK;
}
