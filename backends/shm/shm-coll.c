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
 *
 * When every rank's buffers lie in symmetric windows (tp_comm_mem_alloc,
 * shm-mem.c), nothing is staged: after the entry barrier each rank
 * computes its share for every rank from its peers' windows, as loopback's
 * threads do from each other's buffers (shmcoll's sc_direct_share), and
 * one exit barrier ends the call: n bytes read and n written per rank for
 * an all_reduce, against about 2.5 n each through the stages.
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

/* Bytes of rank r's send and recv buffers in call o (valid, agreed). */
static void sh_sizes(const sc_os_op *o, int r, size_t *sb, size_t *rb)
{
    size_t es = tp_util_dtype_size(o->dt);
    *sb = *rb = o->count * es;
    if (o->kind == SC_ALL_GATHER)
        *sb = o->counts[r] * es;
    else if (o->kind == SC_REDUCE_SCATTER)
        *rb = o->counts[r] * es;
}

/* What a rank publishes for the barrier path of call o: its arguments,
 * and where its buffers lie if both are in symmetric windows. */
static sh_pub sh_pub_of(const sh_comm *c, const sc_os_op *o, tp_status bad)
{
    sh_pub a = {
        .count = o->count, .counts_hash = o->hash, .dt = o->dt, .op = o->op, .root = o->root};
    size_t sb, rb;
    if (bad || c->size == 1 || !c->nwin || !o->count)
        return a;
    sh_sizes(o, c->rank, &sb, &rb);
    uint64_t os = 0, orv = 0, ws = sh_win_find(c, o->send, sb, &os),
             wr = ws ? sh_win_find(c, o->recv, rb, &orv) : 0;
    if (ws && wr)
        a.win_send = ws, a.win_recv = wr, a.off_send = os, a.off_recv = orv;
    return a;
}

/* Piece 0 of this rank's input of call o into its stage of parity e: what
 * the pipes expect to find when they start. */
static void sh_stage0(sh_comm *c, const sc_os_op *o, uint64_t e)
{
    size_t es = tp_util_dtype_size(o->dt), sb, rb;
    sh_sizes(o, c->rank, &sb, &rb);
    if (o->kind == SC_BROADCAST && o->root != c->rank)
        sb = 0;
    size_t piece = sb < c->eng->chunk ? sb : c->eng->chunk / es * es;
    if (piece && c->size > 1)
        memcpy(sh_stage(c, e, c->rank), o->send, piece);
}

/* Every rank's buffers of call o lie in symmetric windows: this rank
 * computes its share for everyone straight from the windows (loopback's
 * one pass), then the exit barrier. A peer's window and offset are looked
 * up in this rank's own table, against sizes computed here. */
static tp_status sh_direct(sh_comm *c, const sc_os_op *o)
{
    const void *send[SH_MAX_RANKS];
    void *recv[SH_MAX_RANKS];
    for (int r = 0; r < c->size; r++) {
        const sh_pub *p = sh_peer(c, r);
        size_t sb, rb;
        sh_sizes(o, r, &sb, &rb);
        send[r] = sh_win_at(c, p->win_send, r, p->off_send, sb);
        recv[r] = sh_win_at(c, p->win_recv, r, p->off_recv, rb);
        if (!send[r] || !recv[r]) {
            bool s = !send[r];
            return sh_poison(c, TP_ERR_INVALID_ARG,
                             "%s #%llu: rank %d's %s buffer (%zu bytes at offset %llu of "
                             "symmetric window #%llu) is not in a window rank %d has: freed "
                             "there, or not from tp_comm_mem_alloc on this communicator",
                             sc_kind_name(o->kind), (unsigned long long)c->seq, r,
                             s ? "send" : "recv", s ? sb : rb,
                             (unsigned long long)(s ? p->off_send : p->off_recv),
                             (unsigned long long)(s ? p->win_send : p->win_recv), c->rank);
        }
    }
    sc_direct d = {.kind = o->kind,
                   .dt = o->dt,
                   .op = o->op,
                   .root = o->root,
                   .size = c->size,
                   .count = o->count,
                   .counts = o->counts,
                   .send = send,
                   .recv = recv,
                   .stream_bytes = c->eng->stream_bytes,
                   .reduce = sc_host_reduce,
                   .fanout = sc_host_fanout,
                   .ctx = &c->streamed};
    sc_direct_share(&d, c->rank, c->size);
    c->direct_ops++;
    if (c->streamed)
        sc_store_fence(); /* before the barrier that publishes the shares */
    return sh_barrier_wait(c, o->kind);
}

/* Start call o on the barrier path: stage piece 0 (unless this
 * rank's buffers are symmetric), publish, agree. *direct: every rank's
 * buffers are symmetric (sh_direct follows). When only some are, the
 * symmetric ranks did not stage: everyone stages piece 0 again into the
 * next parity and passes one more barrier, and the pipes follow. */
static tp_status sh_start(sh_comm *c, sc_os_op *o, tp_status bad, const char *msg, bool *direct)
{
    sh_pub a = sh_pub_of(c, o, bad);
    *direct = false;
    if (!bad && !a.win_send)
        sh_stage0(c, o, c->epoch + 1);
    tp_status st = sh_begin(c, o->kind, &a, bad, msg);
    if (st != TP_OK || c->size == 1 || !o->count)
        return st;
    int sym = 0;
    for (int r = 0; r < c->size; r++)
        sym += sh_peer(c, r)->win_send != 0;
    if (sym == c->size) {
        *direct = true;
        return TP_OK;
    }
    if (!sym)
        return TP_OK;
    sh_stage0(c, o, c->epoch + 1);
    return sh_barrier_wait(c, o->kind);
}

/* What every collective does first: check the arguments, run a small call
 * one-shot, begin the barrier path (sh_start) and, when every rank's
 * buffers are symmetric, run it directly. Returns true with *st set when
 * the call is over; false when the caller's pipeline runs it (the barrier
 * path begun, count > 0). */
static bool sh_call(sh_comm *c, sc_os_op *o, tp_status *st)
{
    char msg[200];
    tp_status bad = sh_check_call(c, o, msg, sizeof msg);
    if (sh_small(c, bad, o->count * (bad ? 1 : tp_util_dtype_size(o->dt)))) {
        *st = sh_oneshot(c, o);
        return true;
    }
    bool direct;
    *st = sh_start(c, o, bad, msg, &direct);
    if (*st != TP_OK || !o->count)
        return true;
    if (direct)
        *st = sh_direct(c, o);
    return direct;
}

tp_status sh_all_reduce(void *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                        tp_redop op)
{
    sh_comm *c = comm;
    sc_os_op o = sc_call_all_reduce(send, recv, count, (int)dt, (int)op);
    tp_status st;
    if (sh_call(c, &o, &st))
        return st;
    if (c->size == 1) {
        if (send != recv)
            memmove(recv, send, count * tp_util_dtype_size(dt));
        return TP_OK;
    }
    return sh_reduce_pipe(c, send, recv, count, (int)dt, (int)op, 0, count);
}

tp_status sh_reduce_scatter(void *comm, const void *send, void *recv, const size_t *counts,
                            tp_dtype dt, tp_redop op)
{
    sh_comm *c = comm;
    sc_os_op o = sc_call_reduce_scatter(send, recv, counts, (int)dt, (int)op);
    tp_status st;
    if (sh_call(c, &o, &st))
        return st;
    size_t es = tp_util_dtype_size(dt), total = o.count;
    if (c->size == 1) {
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
    tp_status st;
    if (sh_call(c, &o, &st))
        return st;
    size_t es = tp_util_dtype_size(dt), cb = c->eng->chunk;
    size_t bytes[SH_MAX_RANKS] = {0}, offs[SH_MAX_RANKS] = {0}, most = 0, off = 0;
    for (int r = 0; r < n; r++) {
        bytes[r] = counts[r] * es;
        offs[r] = off;
        off += bytes[r];
        most = bytes[r] > most ? bytes[r] : most;
    }
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
    sc_os_op o = sc_call_broadcast(buf, count, (int)dt, root);
    tp_status st;
    if (sh_call(c, &o, &st) || c->size == 1)
        return st;
    size_t es = tp_util_dtype_size(dt), cb = c->eng->chunk;
    size_t nb = count * es, bytes[SH_MAX_RANKS] = {0}, offs[SH_MAX_RANKS] = {0};
    bytes[root] = nb;
    return sh_copy_pipe(c, buf, buf, bytes, offs, root, nb / cb + (nb % cb != 0), SC_BROADCAST);
}

tp_status sh_barrier(void *comm)
{
    sh_pub a = {.dt = -1, .op = -1, .root = -1};
    return sh_begin(comm, SC_BARRIER, &a, TP_OK, "");
}
