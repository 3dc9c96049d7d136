/* SPDX-License-Identifier: MIT */
/*
 * collectives.c — all_reduce, all_gather, reduce_scatter, broadcast,
 * barrier on the ranks' own buffers.
 *
 * After the entry barrier every rank can read every rank's buffers. The
 * output is cut into T shares on cache-line boundaries (relative to the
 * buffer start) and rank i computes share i for every rank (shmcoll's
 * sc_direct_share): all threads work, each output byte is written once,
 * no staging buffer. The exit
 * barrier then makes all shares visible before anyone returns. Because
 * each output element is produced by one thread from the inputs in rank
 * order, results are bitwise identical on every rank and every run, and
 * in-place calls are safe (only the owner of a share reads or writes it).
 * On device memory the shares move with the rank's device ops (device.c).
 * The nonblocking collectives (nb.c) cut the same work into shares that
 * whichever rank waits first claims.
 */
#include <stdio.h>
#include <string.h>

#include <tp/tp-plugin-util.h>

#include "loopback.h"

/* Whether a call of `bytes` (valid arguments) takes the one-shot path;
 * every rank decides alike from arguments the ranks must agree on. */
static bool lb_small(const lb_comm *c, tp_status bad, size_t bytes)
{
    return !bad && c->g->size > 1 && !c->dops && bytes <= c->g->eng->small_bytes;
}

/* This rank's arguments of o are valid and its device is synchronized;
 * else the verdict and why in msg. */
tp_status lb_check_call(lb_comm *c, sc_os_op *o, char *msg, size_t len)
{
    o->rank = c->rank;
    o->size = c->g->size;
    tp_status bad = sc_check_call(o, msg, len);
    if (!bad && c->dops)
        bad = lb_dev_sync(c, msg, len);
    return bad;
}

/* What a rank publishes for the barrier path of call o. */
lb_args lb_args_of(const sc_os_op *o)
{
    return (lb_args){.send = o->send,
                     .recv = o->recv,
                     .count = o->count,
                     .counts = o->counts,
                     .counts_hash = o->hash,
                     .dt = o->dt,
                     .op = o->op,
                     .root = o->root};
}

/* sc_reduce / sc_fanout, or their device-memory counterparts (ctx: the lb_comm). */
static tp_status lb_reduce(void *ctx, int dt, int op, const void *const *src, int nsrc,
                           void *const *dst, int ndst, size_t n, bool stream)
{
    lb_comm *c = ctx;
    if (c->dops)
        return lb_dev_reduce(c, dt, op, src, nsrc, dst, ndst, n);
    return sc_host_reduce(&c->streamed, dt, op, src, nsrc, dst, ndst, n, stream);
}

static tp_status lb_fanout(void *ctx, const void *src, void *const *dst, int ndst, size_t bytes,
                           bool stream)
{
    lb_comm *c = ctx;
    if (c->dops)
        return lb_dev_fanout(c, src, dst, ndst, bytes);
    return sc_host_fanout(&c->streamed, src, dst, ndst, bytes, stream);
}

tp_status lb_share(lb_comm *c, lb_kind kind, const lb_args *const *a, int s, int nw)
{
    int n = c->g->size;
    const lb_args *me = a[c->rank];
    const void *send[LB_MAX_RANKS];
    void *recv[LB_MAX_RANKS];
    for (int r = 0; r < n; r++) {
        send[r] = a[r]->send;
        recv[r] = a[r]->recv;
    }
    sc_direct d = {.kind = (int)kind,
                   .dt = me->dt,
                   .op = me->op,
                   .root = me->root,
                   .size = n,
                   .count = me->count,
                   .counts = me->counts,
                   .send = send,
                   .recv = recv,
                   .stream_bytes = c->g->eng->stream_bytes,
                   .reduce = lb_reduce,
                   .fanout = lb_fanout,
                   .ctx = c};
    return sc_direct_share(&d, s, nw);
}

/* Run call o of `kind` (its arguments set): one-shot if small, else the
 * barrier path with this rank's share. */
static tp_status lb_run(lb_comm *c, lb_kind kind, sc_os_op *o)
{
    char msg[200];
    tp_status bad = lb_check_call(c, o, msg, sizeof msg);
    if (lb_small(c, bad, o->count * tp_util_dtype_size((tp_dtype)o->dt)))
        return lb_oneshot(c, o);
    lb_args a = lb_args_of(o);
    tp_status st = lb_begin(c, kind, &a, bad, msg);
    if (st != TP_OK)
        return st;
    const lb_args *peers[LB_MAX_RANKS];
    for (int r = 0; r < c->g->size; r++)
        peers[r] = lb_peer(c, r);
    tp_status w = lb_share(c, kind, peers, c->rank, c->g->size);
    return c->dops ? lb_dev_end(c, kind, w) : lb_end(c, kind);
}

tp_status lb_all_reduce(void *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                        tp_redop op)
{
    sc_os_op o = sc_call_all_reduce(send, recv, count, (int)dt, (int)op);
    return lb_run(comm, LB_ALL_REDUCE, &o);
}

tp_status lb_all_gather(void *comm, const void *send, void *recv, const size_t *counts, tp_dtype dt)
{
    sc_os_op o = sc_call_all_gather(send, recv, counts, (int)dt);
    return lb_run(comm, LB_ALL_GATHER, &o);
}

tp_status lb_reduce_scatter(void *comm, const void *send, void *recv, const size_t *counts,
                            tp_dtype dt, tp_redop op)
{
    sc_os_op o = sc_call_reduce_scatter(send, recv, counts, (int)dt, (int)op);
    return lb_run(comm, LB_REDUCE_SCATTER, &o);
}

tp_status lb_broadcast(void *comm, void *buf, size_t count, tp_dtype dt, int root)
{
    sc_os_op o = sc_call_broadcast(buf, count, (int)dt, root);
    return lb_run(comm, LB_BROADCAST, &o);
}

tp_status lb_barrier(void *comm)
{
    lb_args a = {.dt = -1, .op = -1, .root = -1};
    return lb_begin(comm, LB_BARRIER, &a, TP_OK, "");
}
