/* SPDX-License-Identifier: MIT */
/*
 * sc-oneshot.c — small collectives without a barrier (loopback and shm).
 *
 * Op number k (the caller's count of collectives, from 1) uses every
 * rank's slot of parity k & 1. A rank copies its input and arguments into
 * its own slot, stores k in the slot's `seq` (sequentially consistent, then
 * wakes sleepers of the group's barrier word), waits until every other
 * rank's slot holds k (acquire), checks that the arguments agree and
 * computes its result from all slots: reductions take the slots in rank
 * order 0..T-1 with the same kernel as the large-message path, so results
 * are bitwise equal on every rank and run, and to the large path.
 *
 * Why two slots are enough: a rank writes parity k & 1 again at op k + 2,
 * after it finished op k + 1, which needed every rank's slot for k + 1;
 * a rank publishes k + 1 only after it finished reading op k. So nobody
 * still reads the slot being overwritten, and the fastest rank never
 * waits for the slowest reader beyond the flags themselves.
 */
#include <string.h>

#include <tp/tp-plugin-util.h>

#include "shmcoll.h"

/* Bytes rank r publishes for this op. */
static size_t sc_os_bytes(const sc_os_op *o, int r)
{
    size_t es = tp_util_dtype_size(o->dt);
    switch (o->kind) {
        case SC_ALL_GATHER: return o->counts[r] * es;
        case SC_BROADCAST: return r == o->root ? o->count * es : 0;
        default: return o->count * es; /* all_reduce, reduce_scatter: the whole input */
    }
}

static void sc_os_publish(const sc_os_op *o, sc_bar *bar, bool shared)
{
    sc_os_buf *b = o->bufs[o->rank];
    size_t bytes = sc_os_bytes(o, o->rank);
    if (bytes)
        memcpy(b->data, o->send, bytes);
    b->count = o->count;
    b->hash = o->hash;
    b->kind = o->kind;
    b->dt = o->dt;
    b->op = o->op;
    b->root = o->root;
    atomic_store_explicit(&b->seq, o->seq, memory_order_seq_cst);
    sc_bar_wake(bar, shared);
}

static tp_status sc_os_wait_all(const sc_os_op *o, sc_wait_spec *spec)
{
    spec->epoch = o->seq;
    /* From the next rank on: at T = 2 that is the only peer; beyond, ranks
     * that publish early are checked first by nobody in particular. */
    for (int i = 1; i < o->size; i++) {
        int r = (o->rank + i) % o->size;
        spec->flag = &o->bufs[r]->seq;
        tp_status st = sc_bar_wait(spec);
        if (st != TP_OK)
            return st;
    }
    return TP_OK;
}

int sc_os_first_missing(const sc_os_op *o)
{
    for (int r = 0; r < o->size; r++)
        if (atomic_load_explicit(&o->bufs[r]->seq, memory_order_acquire) < o->seq)
            return r;
    return -1;
}

static uint64_t sc_os_arg(const sc_os_buf *b, int which)
{
    switch (which) {
        case 0: return b->count;
        case 1: return (uint64_t)(int64_t)b->dt;
        case 2: return (uint64_t)(int64_t)b->op;
        case 3: return (uint64_t)(int64_t)b->root;
        default: return b->hash;
    }
}

static tp_status sc_os_agree(const sc_os_op *o, char *msg, size_t len)
{
    static const char *const names[] = {"count", "dtype", "op", "root", "counts array (hash)"};
    const sc_os_buf *p0 = o->bufs[0];
    unsigned fields = sc_agreed_fields(o->kind);
    for (int r = 1; r < o->size; r++) {
        const sc_os_buf *p = o->bufs[r];
        if (p->kind != p0->kind)
            return sc_bad(msg, len,
                          "ranks call different collectives: rank 0 called %s #%llu while "
                          "rank %d called %s #%llu on the same %d-rank communicator; every "
                          "rank must call the same collectives in the same order",
                          sc_kind_name(p0->kind), (unsigned long long)o->seq, r,
                          sc_kind_name(p->kind), (unsigned long long)o->seq, o->size);
        for (int f = 0; f < 5; f++) {
            if (!(fields & (1u << f)) || sc_os_arg(p, f) == sc_os_arg(p0, f))
                continue;
            return sc_bad(msg, len,
                          "ranks disagree on the arguments of %s #%llu (%d-rank communicator): "
                          "rank 0 passed %s %lld, rank %d passed %lld; every rank must pass "
                          "the same values",
                          sc_kind_name(o->kind), (unsigned long long)o->seq, o->size, names[f],
                          (long long)sc_os_arg(p0, f), r, (long long)sc_os_arg(p, f));
        }
    }
    return TP_OK;
}

static void sc_os_finish(const sc_os_op *o)
{
    size_t es = tp_util_dtype_size(o->dt);
    const void *src[SC_OS_MAX_RANKS];
    if (o->kind == SC_ALL_REDUCE || o->kind == SC_REDUCE_SCATTER) {
        size_t off = 0, n = o->count;
        if (o->kind == SC_REDUCE_SCATTER) {
            for (int r = 0; r < o->rank; r++)
                off += o->counts[r];
            n = o->counts[o->rank];
        }
        /* Ask for all peers' lines at once: read one by one, each line still
         * modified in its writer's cache costs a snoop round trip (decode-
         * shaped 4 KiB at T=2: 3.64 -> 3.43 us). */
        for (int r = 0; r < o->size; r++) {
            src[r] = o->bufs[r]->data + off * es;
            for (size_t b = SC_LINE; r != o->rank && b < n * es; b += SC_LINE)
                __builtin_prefetch((const char *)src[r] + b);
        }
        if (n)
            sc_reduce(o->dt, o->op, src, o->size, &o->recv, 1, n, false);
    } else if (o->kind == SC_ALL_GATHER) {
        size_t off = 0;
        for (int r = 0; r < o->size; r++) {
            size_t b = o->counts[r] * es;
            if (b)
                memcpy((char *)o->recv + off, o->bufs[r]->data, b);
            off += b;
        }
    } else if (o->kind == SC_BROADCAST && o->rank != o->root && o->count) {
        memcpy(o->recv, o->bufs[o->root]->data, o->count * es);
    }
}

tp_status sc_os_run(sc_os_op *o, atomic_int *kind, atomic_uint_fast64_t *seq, sc_wait_spec *spec,
                    char *msg, size_t len)
{
    msg[0] = '\0';
    sc_os_publish(o, spec->bar, spec->shared);
    /* The slot before the op number: a peer that sees op number seq
     * without this slot knows this rank took the barrier path. */
    atomic_store_explicit(kind, o->kind, memory_order_relaxed);
    atomic_store_explicit(seq, o->seq, memory_order_release);
    tp_status st = sc_os_wait_all(o, spec);
    if (st != TP_OK)
        return st;
    st = sc_os_agree(o, msg, len);
    if (st == TP_OK)
        sc_os_finish(o);
    return st;
}
