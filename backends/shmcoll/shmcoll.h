/* SPDX-License-Identifier: MIT */
/*
 * shmcoll.h — code shared by the communicators whose ranks reach each
 * other through shared memory: loopback (threads of one process) and shm
 * (processes of one node). A static library (libtp-shmcoll.a) linked into
 * both plugins; it includes only the SDK. Not installed.
 *
 *   sc-reduce.c  element kernels: reduce in fixed rank order, fan-out copies
 *   sc-util.c    collective names, argument checks, work shares, clocks
 *   sc-bar.c     a counter barrier that works between threads or between
 *                processes (futex words in shared memory), and its wait loop
 *   sc-oneshot.c small collectives without a barrier: every rank publishes
 *                its input in its own slot under a sequence number, reads
 *                everyone's, and computes its result
 *   sc-direct.c  one rank's share of a collective on buffers it can
 *                address directly (loopback always; shm's symmetric windows)
 */
#ifndef TP_SHMCOLL_H
#define TP_SHMCOLL_H

#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <tp/tp-plugin.h>

#define SC_LINE 64 /* cache line: work is split on these boundaries */

/* The collectives, as both backends name them in messages. */
typedef enum sc_kind {
    SC_NONE = 0,
    SC_ALL_REDUCE,
    SC_ALL_GATHER,
    SC_REDUCE_SCATTER,
    SC_BROADCAST,
    SC_BARRIER,
    SC_SPLIT,
    SC_MEM_ALLOC, /* shm: tp_comm_mem_alloc's agreement */
    SC_KIND_COUNT
} sc_kind;

/* ------------------------------------------------------------ sc-reduce.c */
/* dst[d][0..n) = src[0][i] op src[1][i] op ... in source order, for every
 * d; a dst equal to its source (in place) is safe. Returns true if
 * non-temporal stores were issued (call sc_store_fence before publishing). */
bool sc_reduce(int dt, int op, const void *const *src, int nsrc, void *const *dst, int ndst,
               size_t n, bool stream);
/* dst[d][0..bytes) = src[0..bytes) for every d (skipping dst == src). */
bool sc_fanout(const void *src, void *const *dst, int ndst, size_t bytes, bool stream);
void sc_store_fence(void);

/* ------------------------------------------------------------- sc-util.c */
/* "all_reduce", ...; "?" for a value out of range (it may come from a peer). */
const char *sc_kind_name(int kind);
/* The mask of ranks 0..size-1 (size <= 64). */
static inline uint64_t sc_all_ranks(int size)
{
    return size >= 64 ? ~0ull : (1ull << size) - 1;
}
/* Share w of nw of n elements of size es, cut on cache-line boundaries. */
void sc_share(size_t n, size_t es, int nw, int w, size_t *lo, size_t *hi);
/* Write a message into msg and return TP_ERR_INVALID_ARG. */
tp_status sc_bad(char *msg, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Which of the scalar arguments (count, dtype, op, root, counts hash: bits
 * 0..4) must agree between ranks for a collective of this kind. */
unsigned sc_agreed_fields(int kind);
double sc_now(void);
/* *t = max(*t, now in ns of sc_now), before the release that says the
 * work is done: whoever acquires that sees when the last part finished. */
static inline void sc_mark_done_at(atomic_uint_fast64_t *t)
{
    uint64_t now = (uint64_t)(sc_now() * 1e9), old = atomic_load_explicit(t, memory_order_relaxed);
    while (old < now && !atomic_compare_exchange_weak_explicit(t, &old, now, memory_order_relaxed,
                                                               memory_order_relaxed))
        ;
}
void sc_cpu_relax(void);
/* CPUs this process may run on (at least 1). */
int sc_cpu_count(void);
/* Pin the calling thread to the index-th (mod their number) CPU it may run
 * on, saving its affinity in *saved; the CPU, or -1 if it stayed unpinned.
 * sc_unbind_self restores *saved. */
int sc_bind_self(int index, cpu_set_t *saved);
void sc_unbind_self(const cpu_set_t *saved);
/* futex wait on *word while it equals `seen`, at most timeout_s; `shared`:
 * the word is in memory shared between processes. */
void sc_futex_wait(atomic_uint *word, unsigned seen, double timeout_s, bool shared);
void sc_futex_wake(atomic_uint *word, bool shared);

/* --------------------------------------------------------------- sc-bar.c */
/* A counter barrier with a generation number: each arrival increments
 * `arrived` (acq_rel); the last resets it and publishes the epoch in `gen`
 * (release). No pointers: it may live in a segment shared by processes. */
typedef struct sc_bar {
    _Alignas(SC_LINE) atomic_uint arrived;
    _Alignas(SC_LINE) atomic_uint_fast64_t gen; /* last completed epoch */
    atomic_uint wake;                           /* futex word, bumped to wake sleepers */
    atomic_uint sleepers;                       /* waiters blocked (or about to block) */
} sc_bar;

void sc_bar_init(sc_bar *b);
/* Arrive at epoch e of a `size`-party barrier; true if this arrival completed it. */
bool sc_bar_arrive(sc_bar *b, unsigned size, uint64_t e, bool shared);
/* Wake blocked waiters (cheap when none sleeps). */
void sc_bar_wake(sc_bar *b, bool shared);

/* How to wait for epoch e. `check` is called whenever spinning is over
 * (about every `poll_s` while blocked): a status other than TP_OK ends the
 * wait with it (a failed group, a dead or departed peer, a timeout).
 * `waited` is the time since the wait began. */
typedef struct sc_wait_spec {
    sc_bar *bar;
    uint64_t epoch;
    /* NULL: wait for bar->gen >= epoch; else for *flag >= epoch (a one-shot
     * slot's sequence number; the bar's futex word still does the waking). */
    const atomic_uint_fast64_t *flag;
    unsigned spin_limit; /* CPU pauses before yielding */
    double poll_s;       /* longest single block */
    bool shared;         /* the barrier is shared between processes */
    tp_status (*check)(void *ctx, double waited);
    void *ctx;
} sc_wait_spec;

tp_status sc_bar_wait(const sc_wait_spec *w);

/* ---------------------------------------------------------- sc-oneshot.c */
#define SC_OS_BYTES     4096 /* the most data bytes one rank publishes */
#define SC_OS_MAX_RANKS 64

/* One rank's one-shot slot for one parity of the op number. The data
 * starts in the flag's cache line, so an 8 or 16 B all_reduce moves one
 * line per rank. No pointers: it may live in a segment shared by
 * processes. */
typedef struct sc_os_buf {
    _Alignas(SC_LINE) atomic_uint_fast64_t seq; /* op whose data it holds (release) */
    uint64_t count, hash;                       /* the publisher's arguments */
    int32_t kind, dt, op, root;
    _Alignas(8) unsigned char data[SC_OS_BYTES];
} sc_os_buf;

/* One call. bufs[r]: rank r's slot of parity seq & 1. count: elements
 * (all_reduce, broadcast) or the total of counts (v-variants). */
typedef struct sc_os_op {
    int kind, dt, op, root, rank, size;
    size_t count;
    const size_t *counts;
    uint64_t hash, seq;
    const void *send;
    void *recv;
    sc_os_buf *const *bufs;
} sc_os_op;

/* A collective's arguments as an sc_os_op (rank, size, seq, bufs unset;
 * for the v-variants count and hash are set by sc_check_call). */
sc_os_op sc_call_all_reduce(const void *send, void *recv, size_t count, int dt, int op);
sc_os_op sc_call_all_gather(const void *send, void *recv, const size_t *counts, int dt);
sc_os_op sc_call_reduce_scatter(const void *send, void *recv, const size_t *counts, int dt, int op);
sc_os_op sc_call_broadcast(void *buf, size_t count, int dt, int root);
/* This rank's arguments of call o (kind, dt, op, root, send, recv, rank,
 * size; count for all_reduce and broadcast, counts for the v-variants)
 * are valid on their own: TP_OK (msg empty), or the verdict and why in
 * msg. For the v-variants it sets o->count to the total of counts and
 * o->hash to their FNV-1a hash (what the ranks compare). */
tp_status sc_check_call(sc_os_op *o, char *msg, size_t len);
/* Run call o (its seq, rank, size and bufs set): copy this rank's input
 * and arguments into bufs[rank], publish seq (sequentially consistent),
 * wake sleepers of spec->bar, announce the op in *kind and *seq (the rank's
 * word of the barrier path), wait for every other rank's slot (spec:
 * everything but flag and epoch), check that every rank's arguments agree
 * with rank 0's (the same verdict on every rank) and compute this rank's
 * result (reductions in rank order). An error of the wait is returned as
 * spec->check reported it (msg empty); disagreeing arguments give
 * TP_ERR_INVALID_ARG with why in msg. */
tp_status sc_os_run(sc_os_op *o, atomic_int *kind, atomic_uint_fast64_t *seq, sc_wait_spec *spec,
                    char *msg, size_t len);
/* The smallest r whose slot does not hold op seq yet, or -1. */
int sc_os_first_missing(const sc_os_op *o);

/* ----------------------------------------------------------- sc-direct.c */
/* A collective on buffers every worker can address: send[r] and recv[r]
 * are rank r's (broadcast: its buffer in both), already valid and agreed
 * (sc_check_call). The bytes move through reduce and fanout, which are
 * sc_reduce / sc_fanout or a device's counterparts (loopback on device
 * memory); they return a status instead of whether they streamed. */
typedef struct sc_direct {
    int kind, dt, op, root, size;
    size_t count;         /* all_reduce, broadcast: elements; v-variants: their total */
    const size_t *counts; /* v-variants: `size` blocks */
    const void *const *send;
    void *const *recv;
    size_t stream_bytes; /* totals from this size on store non-temporally */
    tp_status (*reduce)(void *ctx, int dt, int op, const void *const *src, int nsrc,
                        void *const *dst, int ndst, size_t n, bool stream);
    tp_status (*fanout)(void *ctx, const void *src, void *const *dst, int ndst, size_t bytes,
                        bool stream);
    void *ctx;
} sc_direct;

/* Compute share s of nw of collective d for every rank. */
tp_status sc_direct_share(const sc_direct *d, int s, int nw);
/* sc_reduce and sc_fanout as sc_direct's movers on host memory; ctx is a
 * bool that is set when non-temporal stores were issued. */
tp_status sc_host_reduce(void *ctx, int dt, int op, const void *const *src, int nsrc,
                         void *const *dst, int ndst, size_t n, bool stream);
tp_status sc_host_fanout(void *ctx, const void *src, void *const *dst, int ndst, size_t bytes,
                         bool stream);

#endif /* TP_SHMCOLL_H */
