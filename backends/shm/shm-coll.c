/* SPDX-License-Identifier: MIT */
/*
 * shm-coll.c — the collectives, through the segment's staging area.
 *
 * A process cannot read its peers' buffers, so every collective moves the
 * data through the segment in pieces of `chunk` bytes per rank, pipelined
 * so that each step costs one barrier (see shm.h for the parity rule):
 *
 *   all_reduce / reduce_scatter, step j: rank r copies piece j of its send
 *   into its stage; reduces its share (cache-line cut, loopback's shares)
 *   of piece j-1 across all ranks' stages, in rank order 0..T-1, into the
 *   result area; and copies piece j-2 of the result (all of it, or its own
 *   block for reduce_scatter) into its recv. K pieces take K+1 barriers.
 *   all_gather / broadcast, step j: copy piece j in, copy piece j-1 of
 *   every rank's (the root's) stage out: K barriers.
 *
 * The reduction is shmcoll's kernel over the same sources in the same
 * order as loopback's, so results are bitwise equal to loopback's and to
 * the serial sum ((x0 + x1) + x2) + ...; small collectives (up to
 * small_bytes) take shmcoll's one-shot path instead (shm-oneshot.c): no
 * barrier, every rank reads every rank's published input.
 */
#include <string.h>

#include <tp/tp-plugin-util.h>

#include "shm.h"

/* Whether a call of `bytes` (valid arguments) takes the one-shot path;
 * every rank decides alike from arguments the ranks must agree on. */
static bool sh_small(const sh_comm *c, tp_status bad, size_t bytes)
{
    return !bad && c->size > 1 && bytes <= c->eng->small_bytes;
}

/* Copy result elements [x0, x1) but not [s0, s1) from res (holding the
 * piece that starts at element b) to base + element index. */
static void sh_copy_out(sh_comm *c, const unsigned char *res, size_t b, char *base, size_t x0,
                        size_t x1, size_t s0, size_t s1, size_t es, bool stream)
{
    size_t cut[2][2] = {{x0, s0 < x1 ? s0 : x1}, {s1 > x0 ? s1 : x0, x1}};
    if (s0 >= s1)
        cut[0][1] = x1, cut[1][0] = x1;
    for (int i = 0; i < 2; i++) {
        if (cut[i][0] >= cut[i][1])
            continue;
        void *dst = base + cut[i][0] * es;
        c->streamed |=
            sc_fanout(res + (cut[i][0] - b) * es, &dst, 1, (cut[i][1] - cut[i][0]) * es, stream);
    }
}

/* One pipelined reduction over `total` elements; the result elements
 * [out_lo, out_hi) land in recv. Stage of piece 0 is filled by the caller
 * before sh_begin (so it shares the first barrier). */
static tp_status sh_reduce_pipe(sh_comm *c, const void *send, void *recv, size_t total, int dt,
                                int op, size_t out_lo, size_t out_hi)
{
    size_t es = tp_util_dtype_size(dt), m = c->eng->chunk / es;
    size_t k = total / m + (total % m != 0);
    bool stream = (out_hi - out_lo) * es >= c->eng->stream_bytes;
    const void *src[SH_MAX_RANKS];
    bool whole = out_lo == 0 && out_hi == total;
    for (size_t j = 1; j <= k + 1; j++) {
        uint64_t e = c->epoch;
        if (j <= k) { /* reduce my share of piece j-1 */
            size_t b = (j - 1) * m, pm = total - b < m ? total - b : m, lo, hi;
            sc_share(pm, es, c->size, c->rank, &lo, &hi);
            if (lo < hi) {
                for (int r = 0; r < c->size; r++)
                    src[r] = sh_stage(c, e, r) + lo * es;
                /* all_reduce: the own share goes straight to recv too */
                void *dst[2] = {sh_res(c, e + 1) + lo * es, (char *)recv + (b + lo) * es};
                sc_reduce(dt, op, src, c->size, dst, whole ? 2 : 1, hi - lo, false);
            }
        }
        if (j < k) { /* stage piece j */
            size_t b = j * m, pm = total - b < m ? total - b : m;
            memcpy(sh_stage(c, e + 1, c->rank), (const char *)send + b * es, pm * es);
        }
        if (j >= 2) { /* piece j-2 of the result, where it meets [out_lo, out_hi) */
            size_t b = (j - 2) * m, pe = total - b < m ? total : b + m;
            size_t x0 = b > out_lo ? b : out_lo, x1 = pe < out_hi ? pe : out_hi;
            size_t lo = 0, hi = 0;
            if (whole) /* skip the own share, written above */
                sc_share(pe - b, es, c->size, c->rank, &lo, &hi);
            sh_copy_out(c, sh_res(c, e), b, (char *)recv - out_lo * es, x0, x1, b + lo, b + hi, es,
                        stream);
        }
        if (j <= k) {
            tp_status st = sh_barrier_wait(c, SC_ALL_REDUCE);
            if (st != TP_OK)
                return st;
        }
    }
    if (c->streamed)
        sc_store_fence();
    return TP_OK;
}

/* This rank's arguments of o are valid; else the verdict and why in msg. */
static tp_status sh_check_call(const sh_comm *c, sc_os_op *o, char *msg, size_t len)
{
    o->rank = c->rank;
    o->size = c->size;
    return sc_check_call(o, msg, len);
}

/* What a rank publishes for the barrier path of call o. */
static sh_pub sh_pub_of(const sc_os_op *o)
{
    return (sh_pub){
        .count = o->count, .counts_hash = o->hash, .dt = o->dt, .op = o->op, .root = o->root};
}

tp_status sh_all_reduce(void *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                        tp_redop op)
{
    sh_comm *c = comm;
    sc_os_op o = sc_call_all_reduce(send, recv, count, (int)dt, (int)op);
    char msg[200];
    tp_status bad = sh_check_call(c, &o, msg, sizeof msg);
    size_t es = bad ? 1 : tp_util_dtype_size(dt), m = c->eng->chunk / es;
    int n = c->size;
    if (sh_small(c, bad, count * es))
        return sh_oneshot(c, &o);
    sh_pub a = sh_pub_of(&o);
    if (!bad && count && n > 1) /* piece 0 */
        memcpy(sh_stage(c, c->epoch + 1, c->rank), send, (count < m ? count : m) * es);
    tp_status st = sh_begin(c, SC_ALL_REDUCE, &a, bad, msg);
    if (st != TP_OK || !count)
        return st;
    if (n == 1) {
        if (send != recv)
            memmove(recv, send, count * es);
        return TP_OK;
    }
    return sh_reduce_pipe(c, send, recv, count, (int)dt, (int)op, 0, count);
}

tp_status sh_reduce_scatter(void *comm, const void *send, void *recv, const size_t *counts,
                            tp_dtype dt, tp_redop op)
{
    sh_comm *c = comm;
    int n = c->size;
    sc_os_op o = sc_call_reduce_scatter(send, recv, counts, (int)dt, (int)op);
    char msg[200];
    tp_status bad = sh_check_call(c, &o, msg, sizeof msg);
    size_t es = bad ? 1 : tp_util_dtype_size(dt), m = c->eng->chunk / es, total = o.count;
    if (sh_small(c, bad, total * es))
        return sh_oneshot(c, &o);
    sh_pub a = sh_pub_of(&o);
    if (!bad && total && n > 1)
        memcpy(sh_stage(c, c->epoch + 1, c->rank), send, (total < m ? total : m) * es);
    tp_status st = sh_begin(c, SC_REDUCE_SCATTER, &a, bad, msg);
    if (st != TP_OK || !total)
        return st;
    if (n == 1) {
        memmove(recv, send, counts[0] * es);
        return TP_OK;
    }
    size_t off = 0;
    for (int r = 0; r < c->rank; r++)
        off += counts[r];
    return sh_reduce_pipe(c, send, recv, total, (int)dt, (int)op, off, off + counts[c->rank]);
}

/* Pipelined copies: every rank in `from` (all, or only the root) stages
 * its piece j of send while everyone copies piece j-1 of each staged
 * block to its place in recv. */
static tp_status sh_copy_pipe(sh_comm *c, const void *send, void *recv, const size_t *bytes,
                              const size_t *offs, int root, size_t k, int kind)
{
    size_t cb = c->eng->chunk;
    for (size_t j = 1; j <= k; j++) {
        uint64_t e = c->epoch;
        for (int r = root < 0 ? 0 : root; r < (root < 0 ? c->size : root + 1); r++) {
            size_t b = (j - 1) * cb;
            if (b < bytes[r] && r != c->rank)
                memcpy((char *)recv + offs[r] + b, sh_stage(c, e, r),
                       bytes[r] - b < cb ? bytes[r] - b : cb);
        }
        if (j == k)
            break;
        size_t b = j * cb, mine = bytes[c->rank];
        if ((root < 0 || root == c->rank) && b < mine)
            memcpy(sh_stage(c, e + 1, c->rank), (const char *)send + b,
                   mine - b < cb ? mine - b : cb);
        tp_status st = sh_barrier_wait(c, kind);
        if (st != TP_OK)
            return st;
    }
    return TP_OK;
}

tp_status sh_all_gather(void *comm, const void *send, void *recv, const size_t *counts, tp_dtype dt)
{
    sh_comm *c = comm;
    int n = c->size;
    sc_os_op o = sc_call_all_gather(send, recv, counts, (int)dt);
    char msg[200];
    tp_status bad = sh_check_call(c, &o, msg, sizeof msg);
    size_t es = bad ? 1 : tp_util_dtype_size(dt), cb = c->eng->chunk, total = o.count;
    if (sh_small(c, bad, total * es))
        return sh_oneshot(c, &o);
    sh_pub a = sh_pub_of(&o);
    size_t bytes[SH_MAX_RANKS], offs[SH_MAX_RANKS], most = 0, off = 0;
    for (int r = 0; !bad && r < n; r++) {
        bytes[r] = counts[r] * es;
        offs[r] = off;
        off += bytes[r];
        most = bytes[r] > most ? bytes[r] : most;
    }
    if (!bad && bytes[c->rank])
        memcpy(sh_stage(c, c->epoch + 1, c->rank), send, bytes[c->rank] < cb ? bytes[c->rank] : cb);
    tp_status st = sh_begin(c, SC_ALL_GATHER, &a, bad, msg);
    if (st != TP_OK || !total)
        return st;
    if (send != (char *)recv + offs[c->rank])
        memmove((char *)recv + offs[c->rank], send, bytes[c->rank]);
    if (n == 1)
        return TP_OK;
    /* the own block was copied directly above; the pipe skips it */
    return sh_copy_pipe(c, send, recv, bytes, offs, -1, most / cb + (most % cb != 0),
                        SC_ALL_GATHER);
}

tp_status sh_broadcast(void *comm, void *buf, size_t count, tp_dtype dt, int root)
{
    sh_comm *c = comm;
    int n = c->size;
    sc_os_op o = sc_call_broadcast(buf, count, (int)dt, root);
    char msg[200];
    tp_status bad = sh_check_call(c, &o, msg, sizeof msg);
    size_t es = bad ? 1 : tp_util_dtype_size(dt), cb = c->eng->chunk;
    if (sh_small(c, bad, count * es))
        return sh_oneshot(c, &o);
    sh_pub a = sh_pub_of(&o);
    size_t nb = bad ? 0 : count * es;
    if (!bad && nb && root == c->rank && n > 1)
        memcpy(sh_stage(c, c->epoch + 1, c->rank), buf, nb < cb ? nb : cb);
    tp_status st = sh_begin(c, SC_BROADCAST, &a, bad, msg);
    if (st != TP_OK || n == 1 || !nb)
        return st;
    size_t bytes[SH_MAX_RANKS] = {0}, offs[SH_MAX_RANKS] = {0};
    bytes[root] = nb;
    return sh_copy_pipe(c, buf, buf, bytes, offs, root, nb / cb + (nb % cb != 0), SC_BROADCAST);
}

tp_status sh_barrier(void *comm)
{
    sh_pub a = {.dt = -1, .op = -1, .root = -1};
    return sh_begin(comm, SC_BARRIER, &a, TP_OK, "");
}
