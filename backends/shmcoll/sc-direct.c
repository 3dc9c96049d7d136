/* SPDX-License-Identifier: MIT */
/*
 * sc-direct.c — one rank's share of a collective whose every buffer it can
 * address: loopback's threads read each other's buffers, shm's processes
 * the symmetric windows they all mapped (tp_comm_mem_alloc).
 *
 * The output is cut into nw shares on cache-line boundaries (relative to
 * the buffer start); share s is computed for every rank by one worker, from
 * the inputs in rank order. Each output byte is written once and no
 * staging copy is made; since only the owner of a share reads or writes
 * it, in-place calls are safe, and results are bitwise the same whichever
 * worker computes which share.
 */
#include <tp/tp-plugin-util.h>

#include "shmcoll.h"

tp_status sc_host_reduce(void *ctx, int dt, int op, const void *const *src, int nsrc,
                         void *const *dst, int ndst, size_t n, bool stream)
{
    *(bool *)ctx |= sc_reduce(dt, op, src, nsrc, dst, ndst, n, stream);
    return TP_OK;
}

tp_status sc_host_fanout(void *ctx, const void *src, void *const *dst, int ndst, size_t bytes,
                         bool stream)
{
    *(bool *)ctx |= sc_fanout(src, dst, ndst, bytes, stream);
    return TP_OK;
}

/* [b0, b1): the part of block [off, off + cnt) inside share [lo, hi); false if empty. */
static bool sc_cut(size_t lo, size_t hi, size_t off, size_t cnt, size_t *b0, size_t *b1)
{
    *b0 = lo > off ? lo : off;
    *b1 = hi < off + cnt ? hi : off + cnt;
    return *b0 < *b1;
}

tp_status sc_direct_share(const sc_direct *d, int s, int nw)
{
    int n = d->size;
    size_t es = tp_util_dtype_size(d->dt), total = d->count, lo, hi, off = 0;
    sc_share(total, es, nw, s, &lo, &hi);
    if (lo >= hi)
        return TP_OK;
    size_t sb = d->stream_bytes, bytes = (hi - lo) * es;
    const void *src[SC_OS_MAX_RANKS];
    void *dst[SC_OS_MAX_RANKS];
    tp_status w = TP_OK;
    switch (d->kind) {
        case SC_ALL_REDUCE:
            if (n == 1)
                return d->send[0] == d->recv[0]
                           ? TP_OK
                           : d->fanout(d->ctx, (const char *)d->send[0] + lo * es,
                                       (void *const[]){(char *)d->recv[0] + lo * es}, 1, bytes,
                                       false);
            for (int r = 0; r < n; r++) {
                src[r] = (const char *)d->send[r] + lo * es;
                dst[r] = (char *)d->recv[r] + lo * es;
            }
            return d->reduce(d->ctx, d->dt, d->op, src, n, dst, n, hi - lo,
                             total * es >= sb / (size_t)n);
        case SC_ALL_GATHER:
            /* block r of the output comes from rank r's input */
            for (int r = 0; r < n && off < hi && !w; off += d->counts[r], r++) {
                size_t b0, b1;
                if (!sc_cut(lo, hi, off, d->counts[r], &b0, &b1))
                    continue;
                for (int k = 0; k < n; k++)
                    dst[k] = (char *)d->recv[k] + b0 * es;
                w = d->fanout(d->ctx, (const char *)d->send[r] + (b0 - off) * es, dst, n,
                              (b1 - b0) * es, total * es >= sb / (size_t)n);
            }
            return w;
        case SC_REDUCE_SCATTER:
            /* block i of the reduced input goes to rank i */
            for (int i = 0; i < n && off < hi && !w; off += d->counts[i], i++) {
                size_t b0, b1;
                if (!sc_cut(lo, hi, off, d->counts[i], &b0, &b1))
                    continue;
                for (int r = 0; r < n; r++)
                    src[r] = (const char *)d->send[r] + b0 * es;
                void *out = (char *)d->recv[i] + (b0 - off) * es;
                if (n == 1 && out == src[0])
                    continue;
                w = d->reduce(d->ctx, d->dt, d->op, src, n, &out, 1, b1 - b0, total * es >= sb);
            }
            return w;
        case SC_BROADCAST:
            if (n == 1)
                return TP_OK;
            for (int k = 0; k < n; k++)
                dst[k] = (char *)d->recv[k] + lo * es;
            return d->fanout(d->ctx, dst[d->root], dst, n, bytes,
                             total * es >= sb / (size_t)(n - 1));
        default: return TP_OK;
    }
}
