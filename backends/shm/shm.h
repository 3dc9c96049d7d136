/* SPDX-License-Identifier: MIT */
/*
 * shm.h — definitions shared by the files of the shm backend: ranks are
 * processes of one node that meet in a POSIX shared-memory segment. Not
 * installed.
 *
 * A communicator is one segment: a header (the barrier, the failure flag
 * and message, one slot per rank where the rank publishes its arguments,
 * pid and progress) followed by the data area, stage[2][size][chunk] and
 * res[2][chunk]. Nothing in the segment is a pointer, and every size or
 * index a rank uses is computed locally (from its own arguments, which
 * the ranks check agree) — never taken from the segment — so a buggy or
 * hostile peer can make a collective fail or compute garbage, not crash
 * its peers.
 *
 * Buffer discipline: data written before barrier e goes to parity e & 1
 * and is read only between barriers e and e + 1. A rank writes parity
 * e & 1 again only before barrier e + 2, i.e. after every rank arrived at
 * e + 1 and so finished reading it; this holds across collectives because
 * epochs count every barrier of the communicator.
 */
#ifndef TP_SHM_H
#define TP_SHM_H

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <tp/tp-plugin.h>

#include "shmcoll.h"

#define SH_MAX_RANKS   64
#define SH_MAGIC       0x316d68732d7074ull /* "tp-shm1" */
#define SH_MAGIC_INIT  0x696d68732d7074ull /* "tp-shmi": being set up */
#define SH_MAGIC_WIN   0x776d68732d7074ull /* "tp-shmw": a rank's object of a window */
#define SH_PREFIX      "tp-shm-"           /* /dev/shm/tp-shm-<uid>-... */
#define SH_NAME_MAX    128
#define SH_SMALL_BYTES SC_OS_BYTES /* collectives up to this take the one-shot path */
#define SH_NB_RECS     32          /* nonblocking ops in flight per communicator */

/* What a rank publishes for one op (no pointers). */
typedef struct sh_pub {
    uint64_t count, counts_hash;
    int32_t kind, dt, op, root, color, key;
    int32_t bad;       /* tp_status of a local argument error, 0 if none */
    char bad_msg[200]; /* its message */
    /* barrier path: the rank's send and recv buffers lie in symmetric
     * windows (ids, 0: not both) at these offsets (shm-mem.c) */
    uint64_t win_send, win_recv, off_send, off_recv;
} sh_pub;

typedef struct sh_slot {
    _Alignas(SC_LINE) sh_pub pub[2];              /* by op number, as loopback */
    _Alignas(SC_LINE) atomic_uint_fast64_t epoch; /* last barrier arrived at */
    atomic_int kind;                              /* sc_kind of its current op */
    atomic_uint_fast64_t seq;                     /* number of that op, from 1 */
    atomic_int departed;                          /* comm_free was called */
    atomic_int pid;                               /* 0 until the rank mapped the segment */
    atomic_uint_fast64_t start;                   /* its start time (/proc/PID/stat) */
    atomic_int split_status;                      /* split: the leader's creation status */
    sc_os_buf os[2];                              /* one-shot slots by op number */
    sh_pub nbpub[SH_NB_RECS];                     /* nonblocking op k: nbpub[(k-1) % RECS] */
} sh_slot;

/* The shared state of nonblocking op k in record (k-1) % SH_NB_RECS; the
 * record serves op k once `gen` == (k-1) / SH_NB_RECS (shm-nb.c). */
typedef struct sh_nbrec {
    _Alignas(SC_LINE) atomic_uint_fast64_t gen; /* ops it served that every rank let go of */
    atomic_uint_fast64_t mask;                  /* bit r: rank r staged its input (release) */
    atomic_uint_fast64_t released;              /* bit r: rank r copied its result out */
    _Alignas(SC_LINE) atomic_uint claimed;      /* reduction shares taken */
    atomic_uint done;                           /* shares finished (release) */
    atomic_uint_fast64_t t_ns; /* when its result was complete (sc_now, ns; 0: not yet) */
} sh_nbrec;

typedef struct sh_hdr {
    atomic_uint_fast64_t magic; /* SH_MAGIC once set up (release) */
    uint32_t version;
    int32_t size;
    uint64_t chunk, total_bytes;
    atomic_int creator_pid;
    atomic_uint_fast64_t creator_start;
    atomic_int mapped; /* ranks that mapped it; the last unlinks the name */
    _Alignas(SC_LINE) atomic_int failed;
    atomic_int poison_claim;
    char msg[640];
    uint64_t nb_bytes; /* the nonblocking arena after res[] */
    sc_bar bar;
    sh_nbrec nb[SH_NB_RECS];
    sh_slot slots[];
} sh_hdr;

typedef struct sh_engine {
    const tp_host *host;
    int world_size, rank;
    double timeout_s;
    unsigned spin_limit;
    size_t chunk;        /* bytes per rank per pipeline step */
    size_t small_bytes;  /* collectives up to this take the one-shot path */
    size_t stream_bytes; /* copies out above this use non-temporal stores */
    size_t nb_bytes;     /* nonblocking arena of each communicator of 2+ ranks */
    char job[72];        /* TP_JOB_ID, or the group's id (comm_create) */
    bool cleaned;        /* stale segments were looked for */
    bool bind;           /* world(): pin the rank to CPU rank mod CPUs (TP_SHM_BIND) */
    bool by_comms;       /* made by comm_create: freed with its last communicator */
    atomic_int refs;     /* by_comms: communicators using it */
} sh_engine;

/* One symmetric allocation (shm-mem.c): map[r] is rank r's object in
 * this process (header page, then `bytes` of data). */
typedef struct sh_win {
    uint64_t id;
    size_t bytes, map_bytes;
    unsigned char *map[SH_MAX_RANKS];
} sh_win;

typedef struct sh_comm {
    sh_engine *eng;
    sh_hdr *h;
    size_t map_bytes;
    int fd;              /* the segment's, -1 for a private one: sh_seg_reserve */
    unsigned char *data; /* stage[2][size][chunk], res[2][chunk] */
    int rank, size;
    uint64_t epoch, seq, splits;
    uint64_t id; /* names sub-communicators' segments */
    bool streamed;
    bool bound;       /* world(): the thread was pinned; `saved` restores it */
    pthread_t thread; /* the pinned thread */
    cpu_set_t saved;
    double next_poll; /* when to check peers' processes next */
    /* nonblocking ops (shm-nb.c): numbers given out and staged, the op
     * that stopped the last staging (0: none), where the next one's data
     * goes in the arena, and where each of the last SH_NB_RECS went */
    uint64_t nseq, nb_staged, nb_busy;
    size_t nb_head, nb_arena;
    bool nb_reserved; /* the arena's pages are reserved */
    struct {
        size_t off, bytes;
    } nb_span[SH_NB_RECS];
    sh_win *wins; /* symmetric windows, nwin of capwin; win_seq numbers them */
    int nwin, capwin;
    uint64_t win_seq;
    uint64_t direct_ops; /* collectives run straight on the windows (tests read it) */
} sh_comm;

static inline unsigned char *sh_stage(const sh_comm *c, uint64_t parity, int r)
{
    return c->data + ((parity & 1) * (size_t)c->size + (size_t)r) * c->eng->chunk;
}

static inline unsigned char *sh_res(const sh_comm *c, uint64_t parity)
{
    return c->data + (2 * (size_t)c->size + (parity & 1)) * c->eng->chunk;
}

static inline unsigned char *sh_arena(const sh_comm *c)
{
    return c->data + (2 * (size_t)c->size + 2) * c->eng->chunk;
}

/* shm-env.c */
/* s is a decimal number in lo..hi. */
bool sh_parse(const char *s, long lo, long hi, long *out);
/* Chunk, spin limit, small and streaming sizes from TP_SHM_* (world_size set). */
tp_status sh_knobs(const tp_host *host, sh_engine *eng);

/* shm-proc.c: process identity and liveness */
/* Start time of pid (clock ticks since boot) or 0 if it is gone or a zombie. */
uint64_t sh_proc_start(pid_t pid);
/* Whether the process (pid, start) still runs (pid reuse is noticed). */
bool sh_proc_alive(pid_t pid, uint64_t start);

/* shm-seg.c: segments */
/* Layout sizes for a group of `size` ranks. */
size_t sh_data_offset(int size);
size_t sh_total_bytes(int size, size_t chunk, size_t nb_bytes);
/* The nonblocking arena of a communicator of `size` ranks. */
size_t sh_nb_bytes(const sh_engine *eng, int size);
void sh_seg_name(const sh_engine *eng, uint64_t id, char *out, size_t len);
/* Create (creator) or open (others) the segment `name` of `size` ranks,
 * map it, record this rank and unlink the name once every rank mapped it.
 * name NULL: a private one-rank mapping. */
tp_status sh_seg_attach(sh_engine *eng, const char *name, bool create, int size, int rank,
                        sh_comm *c);
void sh_seg_detach(sh_comm *c);
/* Reserve the nonblocking arena's pages (once; a full /dev/shm is an error
 * here, not a SIGBUS when it is first written). */
tp_status sh_seg_reserve(sh_comm *c);
/* Remove /dev/shm/tp-shm-<uid>-* segments whose every process is gone. */
void sh_seg_clean_stale(sh_engine *eng);

/* shm-sync.c */
tp_status sh_barrier_wait(sh_comm *c, int kind);
tp_status sh_begin(sh_comm *c, int kind, const sh_pub *a, tp_status bad, const char *bad_msg);

/* shm-fail.c */
/* Every rank's published arguments p[r] of op `seq` agree with rank 0's
 * (the same verdict on every rank); `how` follows the op's name. */
tp_status sh_agree(sh_comm *c, int kind, uint64_t seq, const sh_pub *const *p, const char *how);
/* Bit r: rank r did what a waiter waits for (arrived, started an op, let
 * go of one); all ones once the wait is over anyway. */
typedef uint64_t (*sh_have_fn)(const sh_comm *c, const void *arg);
/* A rank that did not (have) and whose process is gone or that left gives
 * TP_ERR_PEER (looked at every 10 ms); after the timeout (`waited` >
 * TP_TIMEOUT_S) any rank that did not gives TP_ERR_TIMEOUT. `doing` says
 * what they did not do, e.g. "never arrived". */
tp_status sh_check_missing(sh_comm *c, sh_have_fn have, const void *arg, double waited,
                           const char *what, const char *doing);
tp_status sh_poison(sh_comm *c, tp_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The calling rank's view of an earlier failure of the segment, in its op
 * `seq` of `kind` (`nb`: a nonblocking op, numbered apart). */
tp_status sh_report_failed(sh_comm *c, int kind, uint64_t seq, bool nb, const char *how);

/* shm-oneshot.c: run o (kind, dt, op, root, count, counts, hash, send,
 * recv set) on the one-shot path; fills in the rest. */
tp_status sh_oneshot(sh_comm *c, sc_os_op *o);
/* Rank r's published arguments for the current op (valid after sh_begin). */
static inline const sh_pub *sh_peer(const sh_comm *c, int r)
{
    return &c->h->slots[r].pub[c->seq & 1];
}

/* shm-coll.c */
tp_status sh_all_reduce(void *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                        tp_redop op);
tp_status sh_all_gather(void *comm, const void *send, void *recv, const size_t *counts,
                        tp_dtype dt);
tp_status sh_reduce_scatter(void *comm, const void *send, void *recv, const size_t *counts,
                            tp_dtype dt, tp_redop op);
tp_status sh_broadcast(void *comm, void *buf, size_t count, tp_dtype dt, int root);
tp_status sh_barrier(void *comm);

/* shm-nb.c: nonblocking collectives (plugin ABI 1.4) */
tp_status sh_iall_reduce(void *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                         tp_redop op, void **req);
tp_status sh_iall_gather(void *comm, const void *send, void *recv, const size_t *counts,
                         tp_dtype dt, void **req);
tp_status sh_ireduce_scatter(void *comm, const void *send, void *recv, const size_t *counts,
                             tp_dtype dt, tp_redop op, void **req);
tp_status sh_req_test(void *comm, void *req, int *done);
tp_status sh_req_wait(void *comm, void *req);
void sh_req_free(void *comm, void *req);
double sh_req_done_at(void *comm, void *req);
/* Move on, without blocking, every nonblocking op of the calling thread
 * that needs nothing more from its peers (reduction shares, copies out):
 * called by every wait of the backend, so no rank holds the arena space or
 * the shares its peers wait for while it waits itself. */
void sh_nb_progress_all(void);
/* comm_free: drop c's requests from that list (the core ends them first). */
void sh_nb_forget(const sh_comm *c);

/* shm-group.c */
tp_status sh_world(void *engine, int local_index, const tp_rank_env *env, void **comm, int *rank,
                   int *size);
tp_status sh_split(void *comm, int color, int key, void **newcomm, int *rank, int *size);
void sh_comm_free(void *comm);

/* shm-mem.c: symmetric memory (plugin ABI 1.6) */
tp_status sh_mem_alloc(void *comm, size_t bytes, void **ptr);
void sh_mem_free(void *comm, void *ptr);
/* comm_free: unmap what is left. */
void sh_mem_end(sh_comm *c);
/* Bytes before a window's data: the header page that names its creator. */
size_t sh_win_hdr_bytes(void);
/* The id of this rank's window holding [p, p + bytes), its offset in *off; 0 if none. */
uint64_t sh_win_find(const sh_comm *c, const void *p, size_t bytes, uint64_t *off);
/* Rank r's data of window id at off, if [off, off + bytes) lies in it; else NULL. */
unsigned char *sh_win_at(const sh_comm *c, uint64_t id, int r, uint64_t off, size_t bytes);

/* shm-boot.c */
tp_status sh_comm_create(const tp_host *host, const tp_bootstrap *boot, const tp_rank_env *env,
                         void **comm);
/* After mapping: wait until every rank mapped it (shm-group.c). */
tp_status sh_join(sh_comm *c, const char *name);

#endif /* TP_SHM_H */
