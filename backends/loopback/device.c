/* SPDX-License-Identifier: MIT */
/*
 * device.c — collectives on device memory (e.g. several ranks' cudaMalloc'd
 * buffers on one or more GPUs of this process).
 *
 * The same shares as on the host (collectives.c): after the entry barrier
 * rank i produces share i for every rank, but with its own device's ops
 * instead of the CPU: copy_2d for device-to-device copies (peer copies
 * across GPUs) and reduce (a kernel that may read a peer GPU's buffer). A
 * device is asynchronous, so each rank synchronizes its stream before the
 * entry barrier (its inputs are complete before anyone reads them) and
 * after its share (its writes are complete before anyone, including the
 * owner of the buffer, goes on). The reduction order is the host's: share
 * = src[0] op src[1] op ... in rank order, one element written by one rank,
 * so results are the same on every rank and run; f16/bf16 are rounded
 * after each step, as a ring all-reduce would.
 */
#include <stdio.h>

#include <tp/tp-plugin-util.h>

#include "loopback.h"

/* A failed device op: say which, on which rank. The device recorded its
 * own message for this rank's thread; peers get this one. */
static tp_status lb_dev_failed(lb_comm *c, tp_status st, const char *op)
{
    return lb_poison(c->g, st,
                     "rank %d: the device's %s failed (%d) inside a collective on "
                     "device memory; see rank %d's error for the device's message",
                     c->rank, op, (int)st, c->rank);
}

tp_status lb_dev_sync(lb_comm *c, char *msg, size_t len)
{
    tp_status st = c->dops->synchronize(c->dev);
    if (st)
        snprintf(msg, len, "rank %d: synchronizing its device before the collective failed (%d)",
                 c->rank, (int)st);
    return st;
}

tp_status lb_dev_reduce(lb_comm *c, int dt, int op, const void *const *src, int nsrc,
                        void *const *dst, int ndst, size_t n)
{
    size_t bytes = n * tp_util_dtype_size(dt);
    tp_status st = TP_OK;
    void *acc = dst[0];
    if (acc != src[0])
        st = c->dops->copy_2d(c->dev, acc, bytes, src[0], bytes, bytes, 1);
    if (st)
        return lb_dev_failed(c, st, "copy_2d");
    for (int r = 1; r < nsrc; r++)
        if ((st = c->dops->reduce(c->dev, (tp_dtype)dt, (tp_redop)op, (int64_t)n, src[r], acc)))
            return lb_dev_failed(c, st, "reduce");
    return lb_dev_fanout(c, acc, dst + 1, ndst - 1, bytes);
}

tp_status lb_dev_fanout(lb_comm *c, const void *src, void *const *dst, int ndst, size_t bytes)
{
    for (int d = 0; d < ndst; d++) {
        if (dst[d] == src)
            continue;
        tp_status st = c->dops->copy_2d(c->dev, dst[d], bytes, src, bytes, bytes, 1);
        if (st)
            return lb_dev_failed(c, st, "copy_2d");
    }
    return TP_OK;
}

tp_status lb_dev_end(lb_comm *c, lb_kind kind, tp_status work)
{
    if (work == TP_OK) {
        work = c->dops->synchronize(c->dev);
        if (work)
            lb_dev_failed(c, work, "synchronize");
    }
    /* A failed rank poisoned the group before it arrived at the exit
     * barrier, so every rank sees `failed` once the barrier completes. */
    tp_status st = lb_end(c, kind);
    int failed = atomic_load_explicit(&c->g->failed, memory_order_acquire);
    if (st == TP_OK && failed)
        st = c->g->eng->host->set_error((tp_status)failed, "loopback: %s", c->g->msg);
    return st;
}
