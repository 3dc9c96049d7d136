/* SPDX-License-Identifier: MIT */
/*
 * nb.c — the nonblocking collectives (plugin ABI 1.4: iall_reduce,
 * iall_gather, ireduce_scatter, req_test, req_wait, req_free), without a
 * thread.
 *
 * Starting one publishes the rank's arguments in the group's record of
 * that nonblocking op number (made by the first rank to start it) and
 * returns. Once every rank has started it, its work is the blocking
 * collective's (lb_share) cut into LB_NB_SHARES shares per rank, and
 * every rank that tests or waits for it claims shares (an atomic counter)
 * and does them on all ranks' buffers; it is complete when every share is
 * done. So the first rank to wait does the work of ranks still computing,
 * and no rank waits for another to take part after starting: requests
 * complete in any order, across comms, with no cross-rank wait that
 * out-of-order waits could turn into a deadlock. Each output element is
 * still made by one share from the inputs in rank order, so results are
 * the blocking path's bit for bit.
 *
 * Nothing moves while no rank of the group is in req_test or req_wait:
 * no thread competes with the ranks' GEMMs for a CPU (measured against
 * the core's progress thread on 2 CPUs, the overlapped layers' times are
 * the same within noise; docs/performance.md, "Native nonblocking
 * loopback").
 */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>

#include "loopback.h"

#define LB_NB_SHARES 4 /* shares per rank: a waiting rank can take over a busy one's */

/* One nonblocking op of a group, shared by its ranks. */
struct lb_nbop {
    struct lb_nbop *next; /* the group's list, under nb_lock */
    uint64_t seq;         /* nonblocking op number, from 1 */
    unsigned nshares;
    /* bit r: rank r published (release); all started when it reaches the
     * full mask, as no other value is as large */
    _Alignas(LB_LINE) atomic_uint_fast64_t mask;
    atomic_uint claimed;       /* shares taken */
    atomic_uint_fast64_t done; /* shares finished (release) */
    atomic_uint_fast64_t t_ns; /* when the last share finished (sc_now, ns) */
    atomic_int refs;           /* ranks that have not let go of it */
    /* ranks inside lb_nb_work; once `retired` (a rank gave up on the op)
     * no share starts, and the rank that gave up waits for busy == 0: no
     * peer touches its buffers after its request ended */
    atomic_int busy, retired;
    int verdict;  /* under nb_lock: 0 not yet checked, 1 the ranks agree, -1 failed */
    lb_pub pub[]; /* by rank, written before `mask` */
};

/* One rank's request. */
typedef struct lb_req {
    struct lb_nbop *op;
    lb_kind kind;
    bool agreed; /* every rank started it and the arguments agree */
    double t0;   /* when it started: req_test's timeout */
} lb_req;

/* The record of op `seq`, made if no rank started it yet (under nb_lock). */
static struct lb_nbop *lb_nb_find(lb_group *g, uint64_t seq)
{
    for (struct lb_nbop *op = g->nb_ops; op; op = op->next)
        if (op->seq == seq)
            return op;
    struct lb_nbop *op = calloc(1, sizeof *op + (size_t)g->size * sizeof(lb_pub));
    if (!op)
        return NULL;
    op->seq = seq;
    op->nshares = LB_NB_SHARES * (unsigned)g->size;
    atomic_init(&op->mask, 0);
    atomic_init(&op->claimed, 0);
    atomic_init(&op->done, 0);
    atomic_init(&op->t_ns, 0);
    atomic_init(&op->refs, g->size);
    atomic_init(&op->busy, 0);
    atomic_init(&op->retired, 0);
    op->next = g->nb_ops;
    g->nb_ops = op;
    return op;
}

static void lb_nb_unref(lb_group *g, struct lb_nbop *op)
{
    if (atomic_fetch_sub_explicit(&op->refs, 1, memory_order_acq_rel) != 1)
        return;
    pthread_mutex_lock(&g->nb_lock);
    struct lb_nbop **p = &g->nb_ops;
    while (*p != op)
        p = &(*p)->next;
    *p = op->next;
    pthread_mutex_unlock(&g->nb_lock);
    free(op);
}

void lb_nb_free_all(lb_group *g)
{
    while (g->nb_ops) {
        struct lb_nbop *op = g->nb_ops;
        g->nb_ops = op->next;
        free(op);
    }
}

static tp_status lb_nb_start(lb_comm *c, lb_kind kind, sc_os_op *o, void **req)
{
    lb_group *g = c->g;
    unsigned long long k = ++c->nseq;
    char msg[200];
    tp_status bad = lb_check_call(c, o, msg, sizeof msg);
    if (atomic_load_explicit(&g->failed, memory_order_acquire))
        return lb_report_failed(c, kind, k, " (nonblocking)",
                                "refused because this communicator failed earlier");
    /* As on the blocking path, a bad argument fails the group: the peers'
     * requests end with this message instead of a timeout. */
    if (bad)
        return lb_poison(g, bad, "%s (nonblocking) #%llu: rank %d: %s", sc_kind_name(kind), k,
                         c->rank, msg);
    lb_req *q = malloc(sizeof *q);
    struct lb_nbop *op = NULL;
    pthread_mutex_lock(&g->nb_lock);
    if (q && (op = lb_nb_find(g, k)))
        op->pub[c->rank] = (lb_pub){.args = lb_args_of(o), .kind = (int)kind};
    pthread_mutex_unlock(&g->nb_lock);
    if (!op) {
        free(q);
        return lb_poison(g, TP_ERR_NO_MEMORY,
                         "%s (nonblocking) #%llu: rank %d: out of memory for its request",
                         sc_kind_name(kind), k, c->rank);
    }
    atomic_store_explicit(&g->slots[c->rank].cpu, sched_getcpu(), memory_order_relaxed);
    atomic_fetch_or_explicit(&op->mask, 1ull << c->rank, memory_order_seq_cst);
    sc_bar_wake(&g->bar, false);
    *q = (lb_req){.op = op, .kind = kind, .t0 = sc_now()};
    *req = q;
    return TP_OK;
}

/* Claim and do shares until none is left; a failed device op poisoned
 * the group and is returned. */
static tp_status lb_nb_work(lb_comm *c, lb_req *q)
{
    struct lb_nbop *op = q->op;
    const lb_args *a[LB_MAX_RANKS];
    for (int r = 0; r < c->g->size; r++)
        a[r] = &op->pub[r].args;
    tp_status w = TP_OK;
    unsigned mine = 0;
    c->streamed = false;
    atomic_fetch_add_explicit(&op->busy, 1, memory_order_seq_cst);
    bool live = !atomic_load_explicit(&op->retired, memory_order_seq_cst);
    while (live && !w && atomic_load_explicit(&op->claimed, memory_order_relaxed) < op->nshares) {
        unsigned s = atomic_fetch_add_explicit(&op->claimed, 1, memory_order_relaxed);
        if (s >= op->nshares)
            break;
        w = lb_share(c, q->kind, a, (int)s, (int)op->nshares);
        mine++;
    }
    if (!mine) {
        atomic_fetch_sub_explicit(&op->busy, 1, memory_order_release);
        return TP_OK;
    }
    if (!w && c->dops && (w = c->dops->synchronize(c->dev)))
        lb_poison(c->g, w,
                  "rank %d: synchronizing its device after its shares of %s (nonblocking) "
                  "#%llu failed (%d)",
                  c->rank, sc_kind_name(q->kind), (unsigned long long)op->seq, (int)w);
    if (c->streamed)
        sc_store_fence(); /* non-temporal stores are not ordered by release */
    sc_mark_done_at(&op->t_ns);
    atomic_fetch_add_explicit(&op->done, mine, memory_order_seq_cst);
    atomic_fetch_sub_explicit(&op->busy, 1, memory_order_release);
    sc_bar_wake(&c->g->bar, false);
    return w;
}

/* q's request ends with st (an error): no share of its op starts after
 * this, and those under way end first, as they may use this rank's
 * buffers. The flag is set under nb_lock, so no peer is inside the op's
 * argument check (which reads the ranks' counts arrays) either. */
static tp_status lb_nb_give_up(lb_comm *c, lb_req *q, tp_status st)
{
    pthread_mutex_lock(&c->g->nb_lock);
    atomic_store_explicit(&q->op->retired, 1, memory_order_seq_cst);
    pthread_mutex_unlock(&c->g->nb_lock);
    while (atomic_load_explicit(&q->op->busy, memory_order_acquire))
        sched_yield();
    return st;
}

/* Whether every rank's arguments agree, decided once per op: the first
 * rank to look compares them (and fails the group if they differ); the
 * others take its verdict, as peers may have freed their counts since. */
static tp_status lb_nb_agree(lb_comm *c, lb_req *q)
{
    lb_group *g = c->g;
    struct lb_nbop *op = q->op;
    tp_status st = TP_OK;
    pthread_mutex_lock(&g->nb_lock);
    if (!op->verdict && atomic_load_explicit(&op->retired, memory_order_relaxed))
        op->verdict = -1;
    if (!op->verdict) {
        const lb_pub *p[LB_MAX_RANKS];
        for (int r = 0; r < g->size; r++)
            p[r] = &op->pub[r];
        st = lb_agree(g, q->kind, " (nonblocking)", op->seq, p);
        op->verdict = st == TP_OK ? 1 : -1;
    } else if (op->verdict < 0) {
        st = lb_report_failed(c, q->kind, op->seq, " (nonblocking)", "aborted");
    }
    pthread_mutex_unlock(&g->nb_lock);
    return st;
}

/* Move q on: wait (block) or look once for every rank to start it, check
 * the arguments, do unclaimed shares, wait or look for the rest. */
static tp_status lb_nb_progress(lb_comm *c, lb_req *q, bool block, int *done)
{
    lb_group *g = c->g;
    struct lb_nbop *op = q->op;
    uint64_t all = sc_all_ranks(g->size);
    *done = 0;
    if (!q->agreed) {
        if (atomic_load_explicit(&op->mask, memory_order_acquire) < all) {
            tp_status st = block ? lb_wait_op(c, q->kind, op->seq, &op->mask, all, &op->mask)
                                 : lb_check_op(c, q->kind, op->seq, &op->mask, sc_now() - q->t0);
            if (st)
                return lb_nb_give_up(c, q, st);
            if (atomic_load_explicit(&op->mask, memory_order_acquire) < all)
                return TP_OK;
        }
        tp_status st = lb_nb_agree(c, q);
        if (st != TP_OK)
            return lb_nb_give_up(c, q, st);
        q->agreed = true;
    }
    tp_status w = lb_nb_work(c, q);
    if (w != TP_OK)
        return lb_nb_give_up(c, q, w);
    if (atomic_load_explicit(&op->done, memory_order_acquire) < op->nshares) {
        /* peers are doing the last shares: only a failure can stop them */
        tp_status st = block ? lb_wait_op(c, q->kind, op->seq, &op->done, op->nshares, &op->mask)
                             : lb_check_op(c, q->kind, op->seq, &op->mask, 0.0);
        if (st)
            return lb_nb_give_up(c, q, st);
        if (atomic_load_explicit(&op->done, memory_order_acquire) < op->nshares)
            return TP_OK;
    }
    if (c->dops && atomic_load_explicit(&g->failed, memory_order_acquire))
        return lb_report_failed(c, q->kind, op->seq, " (nonblocking)", "failed in a device op");
    *done = 1;
    return TP_OK;
}

tp_status lb_iall_reduce(void *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                         tp_redop op, void **req)
{
    sc_os_op o = sc_call_all_reduce(send, recv, count, (int)dt, (int)op);
    return lb_nb_start(comm, LB_ALL_REDUCE, &o, req);
}

tp_status lb_iall_gather(void *comm, const void *send, void *recv, const size_t *counts,
                         tp_dtype dt, void **req)
{
    sc_os_op o = sc_call_all_gather(send, recv, counts, (int)dt);
    return lb_nb_start(comm, LB_ALL_GATHER, &o, req);
}

tp_status lb_ireduce_scatter(void *comm, const void *send, void *recv, const size_t *counts,
                             tp_dtype dt, tp_redop op, void **req)
{
    sc_os_op o = sc_call_reduce_scatter(send, recv, counts, (int)dt, (int)op);
    return lb_nb_start(comm, LB_REDUCE_SCATTER, &o, req);
}

tp_status lb_req_test(void *comm, void *req, int *done)
{
    return lb_nb_progress(comm, req, false, done);
}

tp_status lb_req_wait(void *comm, void *req)
{
    int done;
    return lb_nb_progress(comm, req, true, &done);
}

double lb_req_done_at(void *comm, void *req)
{
    (void)comm;
    const lb_req *q = req;
    return (double)atomic_load_explicit(&q->op->t_ns, memory_order_relaxed) * 1e-9;
}

void lb_req_free(void *comm, void *req)
{
    lb_comm *c = comm;
    lb_req *q = req;
    if (!q)
        return;
    lb_nb_unref(c->g, q->op);
    free(q);
}
