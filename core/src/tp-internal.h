/* SPDX-License-Identifier: MIT */
/*
 * tp-internal.h — definitions shared by the files of libtp (not installed).
 */
#ifndef TP_INTERNAL_H
#define TP_INTERNAL_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <gmodule.h>

#include <tp/tp.h>
#include <tp/tp-plugin-util.h>

#include "tp-try.h"

/* error.c */
#define TPI_ERROR_MAX 4096 /* bytes of a message, with its NUL (tp_last_error) */
tp_status tpi_set_errorv(tp_status status, const char *fmt, va_list ap);
bool tpi_debug_enabled(const char *topic);
void tpi_debug(const char *topic, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
/* Debug lines read "host:pid [rank] tp[topic]: ..." and go to stderr, or to
 * TP_DEBUG_FILE (%h host, %p pid). tpi_debug_setup opens that file once per
 * process (TP_ERR_IO, with the path and the reason, when it cannot);
 * tpi_debug_set_rank names the calling thread's rank (-1: none), and
 * tpi_debug_set_process_rank the rank of a one-rank process. */
tp_status tpi_debug_setup(void);
void tpi_debug_set_rank(int rank);
void tpi_debug_set_process_rank(int rank);
void tpi_host_init(tp_host *host, double timeout_s);
double tpi_now(void); /* monotonic seconds */

/* loader.c: a loaded, accepted plugin. Ops are copied into full-size
 * zeroed structs, so slots an older plugin does not know read as NULL. */
typedef enum tp_plugin_kind {
    TP_KIND_COMM = 1,
    TP_KIND_DEVICE = 2,
} tp_plugin_kind;

typedef struct tp_plugin {
    GModule *module;
    char *path;
    char *name; /* desc->name, equal to <name> in libtp-<name>.so */
    const tp_plugin_desc *desc;
    bool has_comm, has_device;
    tp_comm_ops comm;
    tp_device_ops device;
} tp_plugin;

/* Load the plugin `spec` (a name or a path) as `kind`; `var` names the
 * setting it came from ("TP_BACKEND") for messages. Runs probe(). */
tp_status tpi_plugin_load(const char *spec, tp_plugin_kind kind, const char *var, tp_plugin **out);
void tpi_plugin_unload(tp_plugin *p);

/* The plugin call a rank is inside (watch.c reads it from a fatal-signal
 * handler and from the watchdog thread). Only the rank's own thread writes
 * it: a few relaxed stores around every plugin call, `op` last (release);
 * NULL `op` means "not inside a plugin call". */
typedef struct tp_call {
    _Atomic(const char *) op;   /* the plugin slot: "all_reduce", "gemm", ... */
    _Atomic(const char *) path; /* the plugin's file */
    _Atomic(uint64_t) seq;      /* comm: the collective's number on its comm; device: call number */
    _Atomic(int64_t) t0_ns;     /* CLOCK_MONOTONIC at entry */
    _Atomic(int64_t) last_ns;   /* entry, or the plugin's last tp_host.progress() */
    _Atomic(bool) watched;      /* a comm call: the watchdog bounds how long it takes */
} tp_call;

/* The rank's mutable state, shared by its device and all its comms. */
typedef struct tp_rank_state {
    tp_phase phase;
    int world_rank;
    const char *comm_path, *dev_path; /* the plugins' files, for tp_call */
    uint64_t dev_calls;               /* device plugin calls so far (tp_call.seq) */
    tp_call call;
    int64_t tick_ns;      /* the counted call's start (tpi_tick_start), reused by tpi_call_enter */
    const char *error;    /* the rank's error message (launch.c), once `failed` */
    _Atomic(bool) failed; /* set (release) after `error` is written */
    /* Staging (comm.c): set when the comm plugin does not take the device's
     * memory kind; its collectives then run on host copies. One send and
     * one recv buffer per rank, shared by all its comms (a rank runs one
     * collective at a time), grown on demand, freed by tpi_stage_free. */
    bool staged;
    void *stage[2];
    size_t stage_cap[2];
    /* The progress thread serving the rank's nonblocking collectives on
     * plugins without the slots (request.c); NULL until first used. */
    struct tpi_worker *progress;
    struct tpi_watchdog *watchdog; /* tp_run's, or NULL: it watches the progress thread too */
} tp_rank_state;

/* Device timing (timing.c): an event pair waiting to be read into a
 * counter's seconds. */
#define TP_TIMING_PENDING 1024 /* pairs in flight before the core reads them */
typedef struct tp_timing {
    void *ev0, *ev1;
    double *seconds;
} tp_timing;

struct tp_device {
    const tp_device_ops *ops;
    void *handle;
    const char *name; /* plugin name */
    tp_rank_env env;
    tp_rank_state *state;
    bool sync_timing; /* TP_SYNC_TIMING=1 and the device is asynchronous */
    bool events;      /* asynchronous device with the event slots, not sync_timing */
    int npending, npool;
    tp_timing pending[TP_TIMING_PENDING];
    void *pool[2 * TP_TIMING_PENDING]; /* events ready for reuse */
    tp_counter gemm[TP_PHASE_COUNT];
    double gemm_flops[TP_PHASE_COUNT];
    tp_counter kernel[TP_PHASE_COUNT];
    tp_mem_stats mem; /* tp_mem_count (stats.c) */
};

/* The wait log of a TP_WAIT_CLOCK comm (timing.c writes, stats.c splits). */
typedef struct tpi_wait_entry {
    double t_in, t_out; /* tpi_now() at entry and exit of a counted call */
    uint8_t phase, op;
} tpi_wait_entry;
typedef struct tpi_wait_log {
    tpi_wait_entry *e;
    size_t n, cap;
    bool lost; /* an entry could not be stored (out of memory) */
} tpi_wait_log;

struct tp_comm {
    const tp_comm_ops *ops;
    const char *plugin; /* plugin name, for messages */
    void *handle;
    int rank, size;
    uint64_t seq;  /* collectives started on this comm (tp_call.seq) */
    bool is_world; /* freed by tp_run, not by tp_comm_free */
    tp_device *dev;
    tp_rank_state *state;
    tp_counter counters[TP_PHASE_COUNT][TP_OP_COUNT];
    tp_wait_mode wait_mode; /* tp_stats_set_wait */
    double barrier_s;       /* TP_WAIT_BARRIER: the barrier before the current call */
    tpi_wait_log *wait_log; /* TP_WAIT_CLOCK */
    /* TP_INTRA_BACKEND's plugin (NULL: unset) and the host services to give
     * it; inherited by split (comm.c's tpi_comm_create_intra uses them). */
    const tp_plugin *intra;
    const tp_host *host;
    /* Nonblocking collectives (request.c): counters, and the pending
     * requests and progress thread (NULL until the first tp_i* call). */
    tp_icounter icounters[TP_PHASE_COUNT][TP_OP_COUNT];
    uint64_t stats_epoch; /* tp_stats_reset calls: a request counts only in its own */
    struct tpi_nb *nb;
    /* tp_comm_mem_alloc's live allocations: pointer -> TPI_MEM_PLUGIN (the
     * plugin's mem_alloc) or TPI_MEM_DEVICE (tp_dev_alloc); NULL until the first. */
    GHashTable *mem;
};
#define TPI_MEM_PLUGIN GINT_TO_POINTER(1)
#define TPI_MEM_DEVICE GINT_TO_POINTER(2)

/* request.c: nonblocking collectives (comm.c builds on it). */

/* One collective's arguments, as checked by comm.c. */
typedef struct tpi_coll {
    tp_op op; /* TP_OP_ALL_REDUCE, TP_OP_ALL_GATHER or TP_OP_REDUCE_SCATTER */
    const void *send;
    void *recv;
    size_t count;         /* all_reduce */
    const size_t *counts; /* the others: comm->size blocks (copied by tpi_request_issue) */
    size_t total;         /* sum of counts */
    tp_dtype dt;
    tp_redop redop;
} tpi_coll;
/* Runs the blocking collective c on comm (the progress thread's copy of
 * it, whose plugin calls are recorded in the thread's own tp_call). */
typedef tp_status (*tpi_coll_fn)(tp_comm *comm, const tpi_coll *c);
/* Start c on comm (after comm->seq++): natively when the plugin has the
 * nonblocking slots, else on comm's progress thread, which runs `run`.
 * Counts the call and its issue time; *req is NULL on failure. */
tp_status tpi_request_issue(tp_comm *comm, const char *fn, const tpi_coll *c, size_t bytes,
                            tpi_coll_fn run, tp_request **req);
/* Before a blocking collective, split or free on comm: wait until the
 * rank's progress thread ran every request issued so far (on any comm), and
 * complete comm's pending native requests. */
void tpi_request_drain(tp_comm *comm);
/* Before a blocking collective or barrier on comm: the same, except that
 * the progress thread's requests of other plugins keep running beside it. */
void tpi_request_drain_plugin(tp_comm *comm);
/* Before comm is freed: drain, detach its requests (they stay waitable),
 * stop the rank's thread when no comm uses it. Keeps the caller's error. */
void tpi_request_comm_end(tp_comm *comm);
/* When the rank ends: stop its progress thread if a comm never freed left
 * it running (after running what was queued). */
void tpi_request_rank_end(tp_rank_state *state);

/* comm.c */
bool tpi_comm_accepts(const tp_comm_ops *ops, tp_mem_kind kind); /* per ops->mem_kinds */
void tpi_stage_free(tp_rank_state *state, tp_device *dev); /* dev: whose host_alloc made them */
/* Collective over `group`: a communicator of the same ranks on the intra
 * backend (group->intra), bootstrapped through `group`; `node` names this
 * rank's node (the plugin refuses a group spanning nodes). */
tp_status tpi_comm_create_intra(tp_comm *group, const char *node, tp_comm **out);
/* Whether group's TP_INTRA_BACKEND takes the memory its world backend takes. */
tp_status tpi_comm_intra_check(const tp_comm *group);
const char *tpi_comm_backend(const tp_comm *comm);           /* its plugin's name */
const tp_plugin *tpi_comm_intra_plugin(const tp_comm *comm); /* TP_INTRA_BACKEND's, or NULL */
/* Free what is left of comm's tp_comm_mem_alloc allocations (before its
 * plugin handle is freed). */
void tpi_comm_mem_end(tp_comm *comm);
tp_comm *tpi_comm_wrap(const tp_comm_ops *ops, const char *plugin, void *handle, int rank, int size,
                       tp_device *dev, tp_rank_state *state);

/* device.c */
void tpi_device_init(tp_device *dev, const tp_device_ops *ops, const char *name, void *handle,
                     const tp_rank_env *env, tp_rank_state *state);

/* timing.c */

/* The timing of one counted call: host wall time from t0, or, on a device
 * with events, the time between ev0 (recorded by tpi_tick_start) and an
 * event tpi_tick_stop records, added when the device's timings are read. */
typedef struct tp_tick {
    double t0;
    void *ev0;
} tp_tick;
tp_tick tpi_tick_start(tp_device *dev);
void tpi_tick_stop(tp_device *dev, tp_tick tick, double *seconds);
void tpi_tick_cancel(tp_device *dev, tp_tick tick); /* the call failed: nothing to count */
/* Wait for the device's pending event pairs and add them to their counters
 * (before counters are read, reset or freed). */
void tpi_device_read_timings(tp_device *dev);
void tpi_device_timing_free(tp_device *dev); /* read, then destroy every event */
/* Append one counted call to a wait log (grows it; sets `lost` if it cannot). */
void tpi_wait_log_add(tpi_wait_log *log, tp_phase phase, tp_op op, double t_in, double t_out);
void tpi_wait_log_free(tpi_wait_log *log); /* NULL is a no-op */

/* watch.c: fatal signals and the watchdog. tp_call is written by comm.c,
 * device.c and launch.c with these inline functions. */

static inline int64_t tpi_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* vDSO: no system call */
    return (int64_t)ts.tv_sec * 1000000000 + (int64_t)ts.tv_nsec;
}

/* Around every plugin call: a few stores, no lock, no system call. */
static inline void tpi_call_enter(tp_rank_state *s, const char *op, const char *path, uint64_t seq,
                                  bool watched)
{
    atomic_store_explicit(&s->call.path, path, memory_order_relaxed);
    atomic_store_explicit(&s->call.seq, seq, memory_order_relaxed);
    atomic_store_explicit(&s->call.watched, watched, memory_order_relaxed);
    /* A counted call has just read the clock (tpi_tick_start): reuse it.
     * Otherwise the coarse clock (same base, a tick's resolution, a third
     * of the cost) is plenty for a watchdog that counts seconds. */
    int64_t now = s->tick_ns;
    if (!now) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
        now = (int64_t)ts.tv_sec * 1000000000 + (int64_t)ts.tv_nsec;
    }
    s->tick_ns = 0;
    atomic_store_explicit(&s->call.t0_ns, now, memory_order_relaxed);
    atomic_store_explicit(&s->call.last_ns, now, memory_order_relaxed);
    atomic_store_explicit(&s->call.op, op, memory_order_release);
}

static inline tp_status tpi_call_leave(tp_rank_state *s, tp_status st)
{
    atomic_store_explicit(&s->call.op, NULL, memory_order_release);
    return st;
}

/* TP_SIGNALS (unset or 1: install; 0: do not), once per process. */
tp_status tpi_signals_install(void);
/* The calling thread runs this rank (its crashes name it) until rank_end. */
void tpi_watch_rank_begin(tp_rank_state *s);
void tpi_watch_rank_end(tp_rank_state *s);
/* tp_host.progress: the calling rank's plugin call made progress. */
void tpi_progress(void);
/* A thread that ends the process with TP_EXIT_WATCHDOG when one of the
 * ranks stays inside a comm plugin call for longer than tpi_watchdog_limit
 * without progress.
 * NULL when the thread cannot start (the run goes on without it). */
typedef struct tpi_watchdog tpi_watchdog;
double tpi_watchdog_limit(double timeout_s); /* timeout + max(5 s, 10 %) */
tpi_watchdog *tpi_watchdog_start(tp_rank_state *const *ranks, int n, double timeout_s);
void tpi_watchdog_stop(tpi_watchdog *w); /* NULL is a no-op */
/* Watch worker (a rank's progress thread's state; NULL: stop watching it)
 * as part of rank `owner`. w NULL is a no-op. */
void tpi_watchdog_watch_worker(tpi_watchdog *w, const tp_rank_state *owner, tp_rank_state *worker);

#endif /* TP_INTERNAL_H */
