/* SPDX-License-Identifier: MIT */
/*
 * collectives.c — all_reduce, all_gather, reduce_scatter, broadcast,
 * barrier on the ranks' own buffers.
 *
 * After the entry barrier every rank can read every rank's buffers. The
 * output is cut into T shares on cache-line boundaries (relative to the
 * buffer start) and rank i computes share i for every rank: all threads
 * work, each output byte is written once, no staging buffer. The exit
 * barrier then makes all shares visible before anyone returns. Because
 * each output element is produced by one thread from the inputs in rank
 * order, results are bitwise identical on every rank and every run, and
 * in-place calls are safe (only the owner of a share reads or writes it).
 * On device memory the shares move with the rank's device ops (device.c).
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
static tp_status lb_check_call(lb_comm *c, sc_os_op *o, char *msg, size_t len)
{
    o->rank = c->rank;
    o->size = c->g->size;
    tp_status bad = sc_check_call(o, msg, len);
    if (!bad && c->dops)
        bad = lb_dev_sync(c, msg, len);
    return bad;
}

/* What a rank publishes for the barrier path of call o. */
static lb_args lb_args_of(const sc_os_op *o)
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

tp_status lb_all_reduce(void *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                        tp_redop op)
{
    lb_comm *c = comm;
    lb_group *g = c->g;
    sc_os_op o = sc_call_all_reduce(send, recv, count, (int)dt, (int)op);
    char msg[200];
    tp_status bad = lb_check_call(c, &o, msg, sizeof msg);
    size_t es = tp_util_dtype_size(dt);
    if (lb_small(c, bad, count * es))
        return lb_oneshot(c, &o);
    lb_args a = lb_args_of(&o);
    int n = g->size;
    tp_status st = lb_begin(c, LB_ALL_REDUCE, &a, bad, msg);
    if (st != TP_OK)
        return st;
    size_t lo, hi;
    tp_status w = TP_OK;
    sc_share(count, es, n, c->rank, &lo, &hi);
    if (n == 1) {
        if (count && send != recv && c->dops)
            w = lb_dev_fanout(c, send, &recv, 1, count * es);
        else if (count && send != recv)
            sc_fanout(send, &recv, 1, count * es, false);
    } else if (lo < hi) {
        const void *src[LB_MAX_RANKS];
        void *dst[LB_MAX_RANKS];
        for (int r = 0; r < n; r++) {
            src[r] = (const char *)lb_peer(c, r)->send + lo * es;
            dst[r] = (char *)lb_peer(c, r)->recv + lo * es;
        }
        bool stream = count * es >= g->eng->stream_bytes / (size_t)n;
        if (c->dops)
            w = lb_dev_reduce(c, (int)dt, (int)op, src, n, dst, n, hi - lo);
        else
            c->streamed = sc_reduce((int)dt, (int)op, src, n, dst, n, hi - lo, stream);
    }
    return c->dops ? lb_dev_end(c, LB_ALL_REDUCE, w) : lb_end(c, LB_ALL_REDUCE);
}

tp_status lb_all_gather(void *comm, const void *send, void *recv, const size_t *counts, tp_dtype dt)
{
    lb_comm *c = comm;
    lb_group *g = c->g;
    int n = g->size;
    sc_os_op o = sc_call_all_gather(send, recv, counts, (int)dt);
    char msg[200];
    tp_status bad = lb_check_call(c, &o, msg, sizeof msg);
    size_t es = tp_util_dtype_size(dt), total = o.count;
    if (lb_small(c, bad, total * es))
        return lb_oneshot(c, &o);
    lb_args a = lb_args_of(&o);
    tp_status st = lb_begin(c, LB_ALL_GATHER, &a, bad, msg);
    if (st != TP_OK)
        return st;
    size_t lo, hi;
    sc_share(total, es, n, c->rank, &lo, &hi);
    bool stream = total * es >= g->eng->stream_bytes / (size_t)n;
    void *dst[LB_MAX_RANKS];
    size_t off = 0;
    tp_status w = TP_OK;
    for (int s = 0; s < n && off < hi && !w; off += counts[s], s++) {
        size_t b0 = lo > off ? lo : off, b1 = hi < off + counts[s] ? hi : off + counts[s];
        if (b0 >= b1)
            continue;
        const char *src = (const char *)lb_peer(c, s)->send + (b0 - off) * es;
        for (int d = 0; d < n; d++)
            dst[d] = (char *)lb_peer(c, d)->recv + b0 * es;
        if (c->dops)
            w = lb_dev_fanout(c, src, dst, n, (b1 - b0) * es);
        else
            c->streamed |= sc_fanout(src, dst, n, (b1 - b0) * es, stream);
    }
    return c->dops ? lb_dev_end(c, LB_ALL_GATHER, w) : lb_end(c, LB_ALL_GATHER);
}

tp_status lb_reduce_scatter(void *comm, const void *send, void *recv, const size_t *counts,
                            tp_dtype dt, tp_redop op)
{
    lb_comm *c = comm;
    lb_group *g = c->g;
    int n = g->size;
    sc_os_op o = sc_call_reduce_scatter(send, recv, counts, (int)dt, (int)op);
    char msg[200];
    tp_status bad = lb_check_call(c, &o, msg, sizeof msg);
    size_t es = tp_util_dtype_size(dt), total = o.count;
    if (lb_small(c, bad, total * es))
        return lb_oneshot(c, &o);
    lb_args a = lb_args_of(&o);
    tp_status st = lb_begin(c, LB_REDUCE_SCATTER, &a, bad, msg);
    if (st != TP_OK)
        return st;
    size_t lo, hi;
    sc_share(total, es, n, c->rank, &lo, &hi);
    bool stream = total * es >= g->eng->stream_bytes;
    const void *src[LB_MAX_RANKS];
    size_t off = 0;
    tp_status w = TP_OK;
    for (int i = 0; i < n && off < hi && !w; off += counts[i], i++) {
        size_t b0 = lo > off ? lo : off, b1 = hi < off + counts[i] ? hi : off + counts[i];
        if (b0 >= b1)
            continue;
        for (int r = 0; r < n; r++)
            src[r] = (const char *)lb_peer(c, r)->send + b0 * es;
        void *dst = (char *)lb_peer(c, i)->recv + (b0 - off) * es;
        if (n == 1 && dst == src[0])
            continue;
        if (c->dops)
            w = lb_dev_reduce(c, (int)dt, (int)op, src, n, &dst, 1, b1 - b0);
        else
            c->streamed |= sc_reduce((int)dt, (int)op, src, n, &dst, 1, b1 - b0, stream);
    }
    return c->dops ? lb_dev_end(c, LB_REDUCE_SCATTER, w) : lb_end(c, LB_REDUCE_SCATTER);
}

tp_status lb_broadcast(void *comm, void *buf, size_t count, tp_dtype dt, int root)
{
    lb_comm *c = comm;
    lb_group *g = c->g;
    int n = g->size;
    sc_os_op o = sc_call_broadcast(buf, count, (int)dt, root);
    char msg[200];
    tp_status bad = lb_check_call(c, &o, msg, sizeof msg);
    size_t es = tp_util_dtype_size(dt);
    if (lb_small(c, bad, count * es))
        return lb_oneshot(c, &o);
    lb_args a = lb_args_of(&o);
    tp_status st = lb_begin(c, LB_BROADCAST, &a, bad, msg);
    if (st != TP_OK)
        return st;
    if (n == 1)
        return TP_OK;
    size_t lo, hi;
    tp_status w = TP_OK;
    sc_share(count, es, n, c->rank, &lo, &hi);
    if (lo < hi) {
        void *dst[LB_MAX_RANKS];
        for (int d = 0; d < n; d++)
            dst[d] = (char *)lb_peer(c, d)->recv + lo * es;
        bool stream = count * es >= g->eng->stream_bytes / (size_t)(n - 1);
        if (c->dops)
            w = lb_dev_fanout(c, dst[root], dst, n, (hi - lo) * es);
        else
            c->streamed = sc_fanout(dst[root], dst, n, (hi - lo) * es, stream);
    }
    return c->dops ? lb_dev_end(c, LB_BROADCAST, w) : lb_end(c, LB_BROADCAST);
}

tp_status lb_barrier(void *comm)
{
    lb_args a = {.dt = -1, .op = -1, .root = -1};
    return lb_begin(comm, LB_BARRIER, &a, TP_OK, "");
}
