/* SPDX-License-Identifier: MIT */
/*
 * shm-sync.c — barriers between processes and the start of a collective
 * on the barrier path (publish, arrive, agree).
 *
 * The barrier is shmcoll's (its futex word lives in the segment, so the
 * futex calls are the process-shared kind). While waiting a rank checks,
 * on every round: the failure flag (another rank poisoned the segment);
 * the ranks that have not arrived: departed (comm_free) or their process
 * gone (pid and start time, /proc; a zombie counts as gone) give
 * TP_ERR_PEER, checked at least every 10 ms; and TP_TIMEOUT_S, which gives
 * TP_ERR_TIMEOUT naming the ranks that never arrived (shm-fail.c). While
 * blocked it also moves its nonblocking requests on (shm-nb.c).
 */
#include <stdio.h>

#include "shm.h"

#define SH_POLL_S 0.01 /* longest single block of a waiter */

/* The ranks that arrived at epoch *e. */
static uint64_t sh_arrived(const sh_comm *c, const void *arg)
{
    uint64_t e = *(const uint64_t *)arg, have = 0;
    for (int r = 0; r < c->size; r++)
        if (atomic_load_explicit(&c->h->slots[r].epoch, memory_order_acquire) >= e)
            have |= 1ull << r;
    return have;
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
        return sh_report_failed(c, w->kind, c->seq, false, "aborted");
    if (waited == 0.0)
        return TP_OK; /* still spinning */
    sh_nb_progress_all();
    char what[64];
    snprintf(what, sizeof what, "%s #%llu", sc_kind_name(w->kind), (unsigned long long)c->seq);
    return sh_check_missing(c, sh_arrived, &w->e, waited, what, "never arrived");
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

tp_status sh_begin(sh_comm *c, int kind, const sh_pub *a, tp_status bad, const char *bad_msg)
{
    sh_hdr *h = c->h;
    c->seq++;
    c->streamed = false;
    if (atomic_load_explicit(&h->failed, memory_order_acquire))
        return sh_report_failed(c, kind, c->seq, false,
                                "refused because this communicator failed earlier");
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
    if (st != TP_OK)
        return st;
    const sh_pub *all[SH_MAX_RANKS];
    for (int r = 0; r < c->size; r++)
        all[r] = sh_peer(c, r);
    return sh_agree(c, kind, c->seq, all, "");
}
