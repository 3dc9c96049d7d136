/* SPDX-License-Identifier: MIT */
/*
 * loopback.h — definitions shared by the files of the loopback backend
 * (ranks are threads of one process; collectives read and write the ranks'
 * own buffers through shared memory). Not installed.
 *
 * A group is the shared state of one communicator: one slot per rank where
 * the rank publishes its arguments, a counter barrier, and a failure flag.
 * Each rank holds its own lb_comm handle pointing at the group. Every
 * collective is: publish arguments, entry barrier, check that all ranks
 * agree, every thread does its share of the work on all ranks' buffers,
 * exit barrier (small collectives: oneshot.c, no barrier at all).
 */
#ifndef TP_LOOPBACK_H
#define TP_LOOPBACK_H

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <tp/tp-plugin.h>

#include "shmcoll.h"

#define LB_MAX_RANKS 64
#define LB_LINE      SC_LINE /* cache line: work is split on these boundaries */
/* Collectives of at most this many bytes (all_reduce, broadcast: count;
 * all_gather, reduce_scatter: the total) take shmcoll's one-shot path: no
 * barrier, each rank publishes its input in its slot (oneshot.c). */
#define LB_SMALL_BYTES SC_OS_BYTES

/* The collectives (shmcoll's names). */
typedef sc_kind lb_kind;
#define LB_NONE           SC_NONE
#define LB_ALL_REDUCE     SC_ALL_REDUCE
#define LB_ALL_GATHER     SC_ALL_GATHER
#define LB_REDUCE_SCATTER SC_REDUCE_SCATTER
#define LB_BROADCAST      SC_BROADCAST
#define LB_BARRIER        SC_BARRIER
#define LB_SPLIT          SC_SPLIT

typedef struct lb_engine {
    const tp_host *host;
    int world_size;
    double timeout_s;
    unsigned spin_limit; /* busy spins before a waiter starts to yield */
    bool bind;           /* pin rank i's thread to the i-th allowed CPU */
    size_t stream_bytes; /* bytes written per op above which stores bypass the cache */
    size_t small_bytes; /* collectives up to this size take the one-shot path (<= LB_SMALL_BYTES) */
    pthread_mutex_t lock;
    struct lb_group *world;  /* world group of the current tp_run */
    struct lb_group *worlds; /* every world group made, freed in finalize */
} lb_engine;

/* What a rank passes to a collective, published in its slot. */
typedef struct lb_args {
    const void *send;
    void *recv;
    size_t count;
    const size_t *counts;
    uint64_t counts_hash; /* all_gather/reduce_scatter: hash of counts[0..size) */
    int dt, op, root;
    int color, key; /* split */
} lb_args;

/* What a rank publishes for one op. */
typedef struct lb_pub {
    lb_args args;
    int kind;          /* lb_kind */
    int bad;           /* tp_status of a local argument error, 0 if none */
    char bad_msg[200]; /* its message */
} lb_pub;

typedef struct lb_slot {
    /* Written by the owner before it arrives at the entry barrier and read
     * by peers after it (ordered by the barrier). Double-buffered by op
     * number: a rank that leaves op k early (barrier has no exit barrier)
     * writes pub[(k+1)&1] while slower ranks still read pub[k&1]; it cannot
     * reach op k+2 before every rank has entered op k+1. */
    _Alignas(LB_LINE) lb_pub pub[2];
    struct lb_group *newgroup; /* split: set by the leader of a color */
    /* Read by waiting peers at any time (diagnostics, departure checks). */
    _Alignas(LB_LINE) atomic_uint_fast64_t epoch; /* last barrier arrived at */
    atomic_int cpu;                               /* CPU it last arrived from */
    atomic_int kind;                              /* lb_kind of its current op */
    atomic_uint_fast64_t seq;                     /* number of that op, from 1 */
    atomic_int joined;                            /* world(): took its handle */
    atomic_int departed;                          /* comm_free was called */
    /* One-shot slots by op number (oneshot.c, sc-oneshot.c). */
    sc_os_buf os[2];
} lb_slot;

typedef struct lb_comm {
    struct lb_group *g;
    int rank;
    uint64_t epoch; /* barriers this rank has entered */
    uint64_t seq;   /* collectives this rank has called */
    uint64_t nseq;  /* nonblocking collectives this rank has started */
    bool streamed;  /* non-temporal stores issued in the current op */
    bool bound;     /* world: `thread` was pinned; `saved` restores it */
    pthread_t thread;
    cpu_set_t saved;
    /* Device memory (device.c): the rank's device, or NULL for host memory. */
    const tp_device_ops *dops;
    void *dev;
} lb_comm;

typedef struct lb_group {
    lb_engine *eng;
    int size;
    bool is_world;
    int joined;                          /* world groups: handles handed out (under eng->lock) */
    atomic_int refs;                     /* sub-groups: members that have not freed it */
    struct lb_group *next;               /* world groups: list in the engine */
    lb_comm *world_comms;                /* world groups: one handle per rank */
    sc_bar bar;                          /* the group's barrier (shmcoll) */
    _Alignas(LB_LINE) atomic_int failed; /* tp_status that poisoned the group */
    atomic_uint departures;              /* number of comm_free calls */
    atomic_int poison_claim;
    char msg[640];           /* why it failed; written before `failed` is set */
    pthread_mutex_t nb_lock; /* guards nb_ops */
    struct lb_nbop *nb_ops;  /* nonblocking ops in flight (nb.c) */
    lb_slot slots[];
} lb_group;

/* group.c */
lb_group *lb_group_new(lb_engine *eng, int size, bool is_world);
void lb_group_free(lb_group *g);
tp_status lb_world(void *engine, int local_index, const tp_rank_env *env, void **comm, int *rank,
                   int *size);
tp_status lb_split(void *comm, int color, int key, void **newcomm, int *rank, int *size);
void lb_comm_free(void *comm);

/* sync.c */
tp_status lb_barrier_wait(lb_comm *c, lb_kind kind);
tp_status lb_begin(lb_comm *c, lb_kind kind, const lb_args *a, tp_status bad, const char *bad_msg);
tp_status lb_end(lb_comm *c, lb_kind kind);
/* Whether every rank's publication p[r] agrees with rank 0's (kind and
 * arguments); else the group is poisoned with why. `how` follows the
 * collective's name in messages. */
tp_status lb_agree(lb_group *g, lb_kind kind, const char *how, uint64_t seq,
                   const lb_pub *const *p);
/* Nonblocking op number seq of `kind`, whose starters are in *mask: wait
 * until *flag reaches target, or check once (waited: seconds since it
 * started) — the group failed, a rank that never started it left, or the
 * timeout passed (TP_OK: go on waiting). */
tp_status lb_wait_op(lb_comm *c, lb_kind kind, uint64_t seq, const atomic_uint_fast64_t *flag,
                     uint64_t target, const atomic_uint_fast64_t *mask);
tp_status lb_check_op(lb_comm *c, lb_kind kind, uint64_t seq, const atomic_uint_fast64_t *mask,
                      double waited);
/* Rank r's arguments for the calling rank's current op (valid after lb_begin). */
static inline const lb_args *lb_peer(const lb_comm *c, int r)
{
    return &c->g->slots[r].pub[c->seq & 1].args;
}
tp_status lb_poison(lb_group *g, tp_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The calling rank's view of an earlier failure of its group, in its op
 * `seq` of `kind`; `nb` follows the name ("" or " (nonblocking)"). */
tp_status lb_report_failed(lb_comm *c, lb_kind kind, uint64_t seq, const char *nb, const char *how);

/* oneshot.c: run o (kind, dt, op, root, count, counts, hash, send, recv
 * set) on the one-shot path; fills in the rest. */
tp_status lb_oneshot(lb_comm *c, sc_os_op *o);

/* device.c: the device-memory counterparts of lb_reduce and lb_fanout
 * (errors poison the group), the stream synchronization before a
 * collective (writes msg for lb_begin's `bad`) and lb_end after one. */
tp_status lb_dev_sync(lb_comm *c, char *msg, size_t len);
tp_status lb_dev_reduce(lb_comm *c, int dt, int op, const void *const *src, int nsrc,
                        void *const *dst, int ndst, size_t n);
tp_status lb_dev_fanout(lb_comm *c, const void *src, void *const *dst, int ndst, size_t bytes);
tp_status lb_dev_end(lb_comm *c, lb_kind kind, tp_status work);

/* collectives.c: this rank's arguments valid and its device synchronized
 * (else the verdict and why in msg); what it publishes for call o; share
 * s of nw of a collective over the ranks' arguments a[0..size) — all
 * ranks' outputs of that share, streaming stores noted in c->streamed. */
tp_status lb_check_call(lb_comm *c, sc_os_op *o, char *msg, size_t len);
lb_args lb_args_of(const sc_os_op *o);
tp_status lb_share(lb_comm *c, lb_kind kind, const lb_args *const *a, int s, int nw);
tp_status lb_all_reduce(void *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                        tp_redop op);
tp_status lb_all_gather(void *comm, const void *send, void *recv, const size_t *counts,
                        tp_dtype dt);
tp_status lb_reduce_scatter(void *comm, const void *send, void *recv, const size_t *counts,
                            tp_dtype dt, tp_redop op);
tp_status lb_broadcast(void *comm, void *buf, size_t count, tp_dtype dt, int root);
tp_status lb_barrier(void *comm);

/* nb.c: the nonblocking slots; lb_nb_free_all frees a group's records. */
tp_status lb_iall_reduce(void *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                         tp_redop op, void **req);
tp_status lb_iall_gather(void *comm, const void *send, void *recv, const size_t *counts,
                         tp_dtype dt, void **req);
tp_status lb_ireduce_scatter(void *comm, const void *send, void *recv, const size_t *counts,
                             tp_dtype dt, tp_redop op, void **req);
tp_status lb_req_test(void *comm, void *req, int *done);
tp_status lb_req_wait(void *comm, void *req);
void lb_req_free(void *comm, void *req);
double lb_req_done_at(void *comm, void *req);
void lb_nb_free_all(lb_group *g);

#endif /* TP_LOOPBACK_H */
