/* SPDX-License-Identifier: MIT */
/*
 * shm-oneshot.c — small collectives without a barrier (shmcoll's one-shot,
 * sc-oneshot.c) through the slots in the segment, and what a rank waiting
 * for a peer's slot checks: the segment failed; the peer's process died
 * or it left (checked every 10 ms); the peer is in the same op on the
 * barrier path (the ranks' arguments differ, or it had a local argument
 * error); the timeout.
 */
#include <stdio.h>

#include "shm.h"

#define SH_OS_POLL_S 0.01
/* Peers' slots are looked at (which pulls lines their owners write every
 * op) only after this long. */
#define SH_OS_LOOK_S 1e-3

typedef struct sh_os_waiter {
    sh_comm *c;
    const sc_os_op *o;
} sh_os_waiter;

/* Rank r has not published op k: say why, or return TP_OK to keep waiting. */
static tp_status sh_os_missing(sh_comm *c, const sc_os_op *o, int r, double waited)
{
    sh_slot *s = &c->h->slots[r];
    const char *what = sc_kind_name(o->kind);
    unsigned long long k = (unsigned long long)o->seq;
    double now = sc_now();
    if (now >= c->next_poll) {
        c->next_poll = now + SH_OS_POLL_S;
        int pid = atomic_load(&s->pid);
        bool dep = atomic_load(&s->departed) != 0;
        /* published after all (then finished and exited): not missing */
        if ((dep || (pid && !sh_proc_alive(pid, atomic_load(&s->start)))) &&
            atomic_load_explicit(&o->bufs[r]->seq, memory_order_acquire) < o->seq)
            return sh_poison(c, TP_ERR_PEER,
                             "rank %d (pid %d, %s) never joined %s #%llu, so the %d-rank "
                             "communicator cannot complete it; look for that rank's error or "
                             "signal",
                             r, pid, dep ? "left the communicator" : "its process died", what, k,
                             c->size);
    }
    /* A rank publishes its slot before its op number: an op number that
     * reached k without the slot means rank r took the barrier path. */
    if (atomic_load_explicit(&s->seq, memory_order_acquire) >= o->seq &&
        atomic_load_explicit(&o->bufs[r]->seq, memory_order_acquire) < o->seq) {
        const sh_pub *p = &s->pub[o->seq & 1];
        if (p->bad)
            return sh_poison(c, p->bad > 0 && p->bad < TP_STATUS_COUNT_ ? p->bad : TP_ERR_PEER,
                             "%s #%llu: rank %d: %.*s", what, k, r, (int)sizeof p->bad_msg - 1,
                             p->bad_msg);
        return sh_poison(c, TP_ERR_INVALID_ARG,
                         "ranks disagree on the arguments of %s #%llu (%d-rank communicator): "
                         "rank %d called %s with count %zu, rank %d called %s with count %llu; "
                         "every rank must pass the same values",
                         what, k, c->size, c->rank, what, o->count, r, sc_kind_name(p->kind),
                         (unsigned long long)p->count);
    }
    if (waited <= c->eng->timeout_s)
        return TP_OK;
    int q = atomic_load_explicit(&s->kind, memory_order_relaxed);
    return sh_poison(c, TP_ERR_TIMEOUT,
                     "timeout after %.1f s in %s #%llu on a %d-rank communicator: never "
                     "arrived: rank %d (pid %d, last in %s #%llu); every rank must call the "
                     "same collectives in the same order (raise TP_TIMEOUT_S if a rank is just "
                     "slow)",
                     waited, what, k, c->size, r, atomic_load(&s->pid), sc_kind_name(q),
                     (unsigned long long)atomic_load_explicit(&s->seq, memory_order_relaxed));
}

static tp_status sh_os_check(void *ctx, double waited)
{
    sh_os_waiter *w = ctx;
    sh_comm *c = w->c;
    if (atomic_load_explicit(&c->h->failed, memory_order_acquire))
        return sh_report_failed(c, w->o->kind, c->seq, false, "aborted");
    if (waited < SH_OS_LOOK_S && waited <= c->eng->timeout_s)
        return TP_OK; /* spinning or yielding */
    sh_nb_progress_all();
    int r = sc_os_first_missing(w->o);
    return r < 0 ? TP_OK : sh_os_missing(c, w->o, r, waited);
}

tp_status sh_oneshot(sh_comm *c, sc_os_op *o)
{
    sh_hdr *h = c->h;
    c->seq++;
    c->streamed = false;
    if (atomic_load_explicit(&h->failed, memory_order_acquire))
        return sh_report_failed(c, o->kind, c->seq, false,
                                "refused because this communicator failed earlier");
    sc_os_buf *bufs[SH_MAX_RANKS];
    for (int r = 0; r < c->size; r++)
        bufs[r] = &h->slots[r].os[c->seq & 1];
    o->seq = c->seq;
    o->rank = c->rank;
    o->size = c->size;
    o->bufs = bufs;
    sh_os_waiter w = {.c = c, .o = o};
    sc_wait_spec spec = {.bar = &h->bar,
                         .spin_limit = c->eng->spin_limit,
                         .poll_s = SH_OS_POLL_S,
                         .shared = true,
                         .check = sh_os_check,
                         .ctx = &w};
    sh_slot *me = &h->slots[c->rank];
    char msg[400];
    tp_status st = sc_os_run(o, &me->kind, &me->seq, &spec, msg, sizeof msg);
    if (st != TP_OK && msg[0])
        return sh_poison(c, st, "%s", msg);
    return st;
}
