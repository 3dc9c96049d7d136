/* SPDX-License-Identifier: MIT */
/*
 * tp.h — tensor parallelism on pluggable communication backends.
 *
 * A program calls tp_init() (which loads the communicator plugin named by
 * TP_BACKEND and the device plugin named by TP_DEVICE), then tp_run(), which
 * calls rank_main(world, arg) once per rank: on threads for loopback, once per
 * process under mpirun for mpi. The program never knows which.
 *
 * Errors: every call that can fail returns a tp_status; on failure,
 * tp_last_error() holds a message for the calling thread that says what
 * failed, where, expected vs got, and the likely fix.
 *
 * Threads: a tp_comm, tp_device or layer belongs to one rank and is used
 * only from that rank's thread (the one tp_run called rank_main on).
 */
#ifndef TP_H
#define TP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <tp/tp-plugin.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TP_VERSION "0.1.0"

/* Marks the functions libtp and libtp-layers export; everything else in
 * them is built with hidden visibility. */
#if defined(__GNUC__)
#define TP_API __attribute__((visibility("default")))
#else
#define TP_API
#endif

/* --------------------------------------------------------------- errors */

/* Short name of a status ("TP_ERR_TIMEOUT"), never NULL. */
TP_API const char *tp_status_string(tp_status status);

/* The calling thread's last error message ("" if none). */
TP_API const char *tp_last_error(void);

/* Set the calling thread's error message; returns `status`. */
TP_API tp_status tp_set_error(tp_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

TP_API void tp_clear_error(void);

/* --------------------------------------------------------------- launch */

typedef struct tp_ctx tp_ctx;
typedef struct tp_comm tp_comm;
typedef struct tp_device tp_device;

/* Every field may be left 0/NULL to take the environment or the default. */
typedef struct tp_config {
    const char *backend; /* name or path; NULL: TP_BACKEND, else "loopback" */
    const char *device;  /* name or path; NULL: TP_DEVICE, else "cuda" for nccl, "cpu" otherwise */
    int world_size;      /* e.g. from --tp; 0: TP_WORLD_SIZE, else the engine's (mpirun -n),
                            else 1. Disagreeing sources are an error naming both. */
    double timeout_s;    /* 0: TP_TIMEOUT_S, else 300 */
    int cpu_threads;     /* BLAS threads per rank; 0: TP_CPU_THREADS, else 1 */
    int *argc;           /* passed to the engine (e.g. MPI_Init_thread); may be NULL */
    char ***argv;
} tp_config;

/* Load plugins and start the engine. cfg may be NULL. */
TP_API tp_status tp_init(const tp_config *cfg, tp_ctx **out);

typedef tp_status (*tp_rank_fn)(tp_comm *world, void *arg);

/* Call fn(world, arg) once for every rank this process runs, each on its own
 * thread with its own device; wait for all. Returns TP_OK if every rank
 * returned TP_OK, else the first failing rank's status, with its message
 * (prefixed "rank N: ") as the caller's tp_last_error(). */
TP_API tp_status tp_run(tp_ctx *ctx, tp_rank_fn fn, void *arg);

/* The exit status of a process ended by tp's watchdog: a rank stayed inside
 * one call of the comm plugin for TP_TIMEOUT_S plus a grace period of
 * max(5 s, 10 % of TP_TIMEOUT_S). tp first prints every local rank's current
 * plugin call on stderr. (A fatal signal inside a plugin keeps its signal:
 * tp prints the rank, op, plugin and sequence number, then re-raises it;
 * TP_SIGNALS=0 installs no handler.) */
#define TP_EXIT_WATCHDOG 86

TP_API void tp_finalize(tp_ctx *ctx); /* NULL is a no-op */

TP_API int tp_ctx_world_size(const tp_ctx *ctx);
TP_API int tp_ctx_local_count(const tp_ctx *ctx); /* ranks run by this process */
TP_API const char *tp_ctx_backend(const tp_ctx *ctx);
TP_API const char *tp_ctx_device(const tp_ctx *ctx);

/* Parse "--tp N" / "--tp=N" from argv into cfg->world_size (other
 * arguments are left alone). Returns TP_ERR_INVALID_ARG for a bad N. */
TP_API tp_status tp_config_parse_tp(tp_config *cfg, int argc, char **argv);

/* ---------------------------------------------------------- communicator */

TP_API int tp_comm_rank(const tp_comm *comm);
TP_API int tp_comm_size(const tp_comm *comm);
TP_API tp_device *tp_comm_device(const tp_comm *comm); /* the rank's device */

/* Collective over all ranks of comm, like MPI_Comm_split: ranks with the
 * same color form a group ordered by (key, rank). color < 0 gives *out = NULL. */
TP_API tp_status tp_comm_split(tp_comm *comm, int color, int key, tp_comm **out);
TP_API void tp_comm_free(tp_comm *comm); /* sub-communicators only; NULL is a no-op */

/* Symmetric memory: `bytes` of the rank's device memory that comm's
 * collectives reach without staging copies where the backend can (shm:
 * every rank maps every rank's allocation, so a collective whose buffers
 * come from here on every rank runs in one pass over peers' memory, as
 * loopback's threads do; backends without it give tp_dev_alloc's memory).
 * Collective: every rank of comm calls it in the same order with the same
 * bytes (> 0); a backend that serves it gives every rank the same status.
 * The memory is ordinary device memory for everything else. A collective
 * gains only when every rank's send and recv buffers come from here (if
 * some ranks' do not, shm stages as for ordinary memory). Memory from one
 * communicator is ordinary memory to another. tp_comm_mem_free is local;
 * whatever is left is freed with comm. */
TP_API tp_status tp_comm_mem_alloc(tp_comm *comm, size_t bytes, void **ptr);
TP_API void tp_comm_mem_free(tp_comm *comm, void *ptr); /* NULL is a no-op */

/* Buffers are memory of the rank's device (host memory for cpu).
 * counts[i] is rank i's block, in elements; NULL counts in the *v
 * variants is an error. */
TP_API tp_status tp_all_reduce(tp_comm *comm, const void *send, void *recv, size_t count,
                               tp_dtype dt, tp_redop op);
TP_API tp_status tp_all_gather(tp_comm *comm, const void *send, void *recv, size_t count,
                               tp_dtype dt);
TP_API tp_status tp_all_gatherv(tp_comm *comm, const void *send, void *recv, const size_t *counts,
                                tp_dtype dt);
TP_API tp_status tp_reduce_scatter(tp_comm *comm, const void *send, void *recv, size_t count,
                                   tp_dtype dt, tp_redop op);
TP_API tp_status tp_reduce_scatterv(tp_comm *comm, const void *send, void *recv,
                                    const size_t *counts, tp_dtype dt, tp_redop op);
TP_API tp_status tp_broadcast(tp_comm *comm, void *buf, size_t count, tp_dtype dt, int root);
TP_API tp_status tp_barrier(tp_comm *comm);

/* ----------------------------------------------------------- nonblocking */

/* Nonblocking collectives: tp_i* checks its arguments (a bad one is an
 * error here, as for the blocking call, and no request is made), starts the
 * collective and returns a request in *req at once. The buffers (and counts)
 * belong to the collective until the request is complete: do not touch recv
 * or change send before tp_wait returns or tp_test says done. Results are
 * bitwise those of the blocking call with the same arguments when the core
 * serves the request (plugins without the nonblocking slots: loopback, shm,
 * tcp); a plugin's native nonblocking algorithm may add in another order
 * (Open MPI's MPI_Ireduce_scatter at 4+ ranks differs from its blocking one
 * in the last bits), so there results agree within rounding only.
 *
 * Order: collectives of one communicator, blocking and nonblocking, run in
 * the order the rank issued them, which every rank must keep the same (as
 * for blocking calls). Requests may be waited for in any order. A blocking
 * collective, tp_comm_split, tp_stats_split_wait or tp_comm_free on a comm
 * first completes that comm's pending requests (their status is kept for
 * their own tp_wait), then runs.
 *
 * Every request is ended by exactly one tp_wait, which frees it (also after
 * tp_test said done, and after an error). A request outlives tp_comm_split
 * of its comm and even tp_comm_free of it (the free completes it first).
 *
 * Engines: a backend with nonblocking slots (mpi, nccl, loopback) runs them
 * natively; for any other (shm, tcp) the core runs its blocking collectives on one progress
 * thread per rank (started at the rank's first tp_i* call), in the rank's
 * issue order across all its comms; then a split or free on any comm of the
 * rank first waits until the thread ran every request issued before, and a
 * blocking collective until it ran every one of the same backend (one of
 * another backend runs beside them: TP on shm while DP buckets go over tcp).
 * Ranks thus see the same order as the same program with blocking calls,
 * and deadlock only where it would. (mpi progresses a
 * request only inside MPI calls: call tp_test between pieces of work to
 * move it along.)
 *
 * Counters: see tp_icounter. Nonblocking calls are not logged for
 * TP_WAIT_CLOCK and get no TP_WAIT_BARRIER barrier. The time a blocking
 * call spends completing earlier requests first is not in its own counter:
 * native, it is added to those requests' wait (and exposed) time; on the
 * core's thread it is counted nowhere.
 *
 * Errors of the transfer (a peer left, TP_TIMEOUT_S passed) are returned by
 * tp_wait and by tp_test (which then says done), with a message naming the
 * call ("tp_iall_reduce #3 on backend 'tcp': ..."). */
typedef struct tp_request tp_request;

TP_API tp_status tp_iall_reduce(tp_comm *comm, const void *send, void *recv, size_t count,
                                tp_dtype dt, tp_redop op, tp_request **req);
TP_API tp_status tp_iall_gather(tp_comm *comm, const void *send, void *recv, size_t count,
                                tp_dtype dt, tp_request **req);
/* counts is copied: it may be freed once the call returns. */
TP_API tp_status tp_iall_gatherv(tp_comm *comm, const void *send, void *recv, const size_t *counts,
                                 tp_dtype dt, tp_request **req);
TP_API tp_status tp_ireduce_scatter(tp_comm *comm, const void *send, void *recv, size_t count,
                                    tp_dtype dt, tp_redop op, tp_request **req);
TP_API tp_status tp_ireduce_scatterv(tp_comm *comm, const void *send, void *recv,
                                     const size_t *counts, tp_dtype dt, tp_redop op,
                                     tp_request **req);
/* Block until req is complete, free it, return its status. NULL: TP_OK. */
TP_API tp_status tp_wait(tp_request *req);
/* *done = whether req is complete; when it is, the collective's status is
 * returned (TP_OK: recv holds the result). Does not free req. */
TP_API tp_status tp_test(tp_request *req, bool *done);

/* ------------------------------------------------------------- topology */

/* Where a rank sits: "TP within a node, DP across nodes". */
typedef struct tp_layout {
    int world_rank, world_size;
    int node, nodes;            /* node index (numbered by their lowest rank), node count */
    int local_rank, local_size; /* position among the ranks of its node */
    int tp_group, tp_rank, tp_size;
    int dp_rank, dp_size; /* dp_rank == tp_group: ranks with the same tp_rank form a DP group */
} tp_layout;

/* Build TP groups of tp_size ranks and the DP groups across them
 * (collective over world). Nodes are discovered by all-gathering a hash of
 * each rank's host name; TP_FAKE_NODES overrides it for tests: "2" (two
 * consecutive ranks per node) or "0,0,1,1" (node id per world rank).
 * TP groups are consecutive ranks of one node; a group that would span
 * nodes (ranks per node not divisible by tp_size) is refused with
 * TP_ERR_INVALID_ARG unless allow_span, which groups consecutive world
 * ranks instead. tp_out/dp_out may be NULL; free them with tp_comm_free.
 * No rank is left waiting: a rank that fails before the groups are built
 * (bad tp_size, node lookup) fails the others too, with a message naming
 * it, and ranks whose tp_size, allow_span or TP_INTRA_BACKEND differ fail
 * every rank with TP_ERR_INVALID_ARG. */
TP_API tp_status tp_topology(tp_comm *world, int tp_size, bool allow_span, tp_comm **tp_out,
                             tp_comm **dp_out, tp_layout *layout);

/* ----------------------------------------------------------------- stats */

typedef enum tp_phase {
    TP_PHASE_FORWARD = 0,
    TP_PHASE_BACKWARD = 1,
    TP_PHASE_OTHER = 2, /* outside any layer: the default */
    TP_PHASE_COUNT
} tp_phase;

typedef enum tp_op {
    TP_OP_ALL_REDUCE = 0,
    TP_OP_ALL_GATHER,
    TP_OP_REDUCE_SCATTER,
    TP_OP_BROADCAST,
    TP_OP_BARRIER,
    TP_OP_COUNT
} tp_op;

TP_API const char *tp_op_name(tp_op op);       /* "all_reduce", ... */
TP_API const char *tp_phase_name(tp_phase ph); /* "forward", "backward", "other" */
TP_API size_t tp_dtype_size(tp_dtype dt);      /* 0 for an invalid dtype */
TP_API const char *tp_dtype_name(tp_dtype dt); /* "f32", "bf16", ... */

typedef struct tp_counter {
    uint64_t calls;
    uint64_t bytes; /* payload: all_reduce/broadcast count*size; all_gather the
                         gathered total; reduce_scatter the input total */
    double seconds; /* wall time inside the calls */
    /* Of `seconds`, the time the calls waited for the last rank of the
     * communicator to arrive (skew, imbalance); seconds - wait_seconds is
     * the transfer. 0 unless the communicator has a wait mode
     * (tp_stats_set_wait); device counters keep it 0. */
    double wait_seconds;
} tp_counter;

/* Device memory of a rank, by what it holds. The core counts every
 * tp_tensor_alloc as TP_USE_OTHER until tp_tensor_release; the layers
 * (libtp-layers) move what they allocate to its kind where they allocate
 * it (tp_mem_count) and count their scratch buffers as workspace or, when
 * forward fills them for backward, activations. Bytes of tp_dev_alloc
 * calls nobody counts (and a plugin's own memory) are not included. */
typedef enum tp_mem_use {
    TP_USE_PARAMETERS = 0, /* layer weights, biases, norm gains, tables */
    TP_USE_GRADIENTS,      /* their gradients */
    TP_USE_OPTIMIZER,      /* optimizer state: moments, momentum, f32 master weights */
    TP_USE_ACTIVATIONS,    /* what forward keeps for backward */
    TP_USE_WORKSPACE,      /* scratch of a call (grow-only, reused) */
    TP_USE_OTHER,          /* tensors nobody claimed: the caller's inputs and outputs */
    TP_USE_COUNT
} tp_mem_use;

typedef struct tp_mem_counter {
    uint64_t bytes; /* in use now */
    uint64_t peak;  /* the most in use at once since the device opened or tp_stats_reset */
} tp_mem_counter;

typedef struct tp_mem_stats {
    tp_mem_counter kind[TP_USE_COUNT];
    tp_mem_counter total; /* every kind together (its peak is the peak of the sum) */
} tp_mem_stats;

TP_API const char *tp_mem_use_name(tp_mem_use kind); /* "parameters", ..., "other" */
/* Count bytes (> 0: allocated, < 0: freed) of kind on dev, e.g. move a
 * tensor from TP_USE_OTHER to TP_USE_PARAMETERS with -b then +b. A count
 * never goes below 0 (a surplus free is dropped). Not thread-safe: one
 * rank's thread, like every call on its device. */
TP_API void tp_mem_count(tp_device *dev, tp_mem_use kind, int64_t bytes);

/* Nonblocking collectives of a communicator, per op and the phase current
 * at issue. Host times, seconds:
 *   issue_seconds: inside the tp_i* calls (argument checks, enqueue or the
 *     plugin's start; for a staged rank also the device-to-host copy).
 *   seconds: from the end of the tp_i* call to completion, i.e. the time
 *     the communication was in flight. Completion is when the progress
 *     thread finished the blocking collective (core engine); for a plugin's
 *     own nonblocking collectives, when the plugin says the result was
 *     complete (loopback, shm: when the last rank to work on it finished,
 *     maybe a peer while this rank computed), else when its req_test or
 *     req_wait first said so (mpi). loopback, shm and mpi move bytes only
 *     inside tp_test/tp_wait (of some rank), so there `seconds` also counts
 *     time in which nothing moved: an upper bound of the transfer time.
 *   wait_seconds: inside tp_wait and tp_test calls on these requests.
 *   exposed_seconds: the part of wait_seconds before completion: the rank
 *     was blocked on communication it could not hide. seconds -
 *     exposed_seconds is the communication hidden behind the rank's work.
 * calls, bytes and issue_seconds are added by tp_i*, the other three by the
 * tp_wait that ends the request (nothing, if tp_comm_free completed it). */
typedef struct tp_icounter {
    uint64_t calls;
    uint64_t bytes; /* as tp_counter.bytes */
    double issue_seconds;
    double seconds;
    double wait_seconds;
    double exposed_seconds;
} tp_icounter;

typedef struct tp_stats {
    tp_counter comm[TP_PHASE_COUNT][TP_OP_COUNT];   /* this communicator, blocking calls */
    tp_counter gemm[TP_PHASE_COUNT];                /* this rank's device */
    double gemm_flops[TP_PHASE_COUNT];              /* 2*m*n*k*batch summed */
    tp_counter kernel[TP_PHASE_COUNT];              /* every other device op */
    tp_icounter icomm[TP_PHASE_COUNT][TP_OP_COUNT]; /* this communicator, nonblocking calls */
    tp_mem_stats mem;                               /* this rank's device memory */
} tp_stats;

/* Timing: `seconds` is the time of each call. Synchronous devices (cpu)
 * are timed with the host's clock around the call. An asynchronous device
 * (tp_rank_env.stream not NULL, e.g. cuda) returns once the work is
 * enqueued, so when it has the event slots (cuda: CUDA events) the core
 * records an event before and after each counted call on the rank's
 * stream and counts the device time between them; reading or resetting
 * the stats (and freeing a comm) waits for those events. Without events
 * the times are enqueue times. TP_SYNC_TIMING=1 makes the core
 * synchronize the device after every counted call and count host time
 * instead (includes launch gaps; slower). */

/* Counters of comm, plus the compute counters of its rank's device. */
TP_API void tp_stats_get(const tp_comm *comm, tp_stats *out);
/* this comm's counters, wait log and device's (memory: peak = bytes in use);
 * a nonblocking request issued before the reset and waited after it is in
 * neither period's counters (its call was counted in the erased one) */
TP_API void tp_stats_reset(tp_comm *comm);

/* The rank's current phase (shared by all comms of the rank and its
 * device); returns the previous one so callers can restore it. */
TP_API tp_phase tp_phase_set(tp_comm *comm, tp_phase phase);

/* Waiting vs transfer: how a collective's time splits into waiting until
 * the last rank of the communicator has arrived and the transfer itself.
 * Per communicator, off by default (untraced calls cost nothing more).
 * Every rank of the communicator sets the same mode, between collectives;
 * it is not inherited by communicators split from it.
 *
 * TP_WAIT_CLOCK: for ranks that share one clock (threads, processes, or
 *   network namespaces of one machine: CLOCK_MONOTONIC is common). Each
 *   counted call's entry and exit time goes into a log of the
 *   communicator; tp_stats_split_wait (collective) all-gathers the entry
 *   times and adds, per call, wait = max over ranks of the entry time -
 *   this rank's entry time, clamped to [0, this call's host duration], to
 *   that call's counter, then empties the log. On separate machines the
 *   clocks differ and the split is meaningless: use TP_WAIT_BARRIER.
 * TP_WAIT_BARRIER: for any placement. The core runs a barrier before each
 *   counted collective (not before tp_barrier itself) and counts its time
 *   into both `seconds` and `wait_seconds` of that collective. The barrier
 *   has its own latency (one small collective, e.g. a few us on shared
 *   memory, a network round trip or more across nodes), which is counted
 *   as wait even without skew, and it adds that latency to every call.
 *
 * Times of both modes are host times; on an asynchronous device they mean
 * something only with TP_SYNC_TIMING=1. */
typedef enum tp_wait_mode {
    TP_WAIT_NONE = 0, /* default: wait_seconds stays 0 */
    TP_WAIT_CLOCK = 1,
    TP_WAIT_BARRIER = 2,
} tp_wait_mode;

/* Set comm's wait mode (not collective). Changing it empties the log;
 * TP_WAIT_CLOCK allocates it here (it grows as calls are logged; if it
 * cannot, tp_stats_split_wait reports TP_ERR_NO_MEMORY). */
TP_API tp_status tp_stats_set_wait(tp_comm *comm, tp_wait_mode mode);

/* TP_WAIT_CLOCK: collective over comm. Splits the calls logged since the
 * last split (or reset) into wait and transfer as described above; its own
 * collectives are neither counted nor logged. *calls (may be NULL) gets
 * the number of calls split, equal to the counted calls in that time.
 * Ranks that logged different numbers of calls get TP_ERR_INVALID_ARG
 * naming both (the log is dropped). TP_WAIT_BARRIER: nothing to do, TP_OK
 * and *calls = 0. TP_WAIT_NONE: TP_ERR_INVALID_ARG. */
TP_API tp_status tp_stats_split_wait(tp_comm *comm, uint64_t *calls);

/* Calls of op in phase, blocking and nonblocking (comm + icomm);
 * TP_PHASE_COUNT sums over phases and TP_OP_COUNT over ops (so (s,
 * TP_PHASE_COUNT, TP_OP_COUNT) is every collective). */
TP_API uint64_t tp_stats_calls(const tp_stats *s, tp_phase phase, tp_op op);

/* ---------------------------------------------------------------- tensor */

#define TP_MAX_DIMS 4

/* A contiguous row-major tensor in a device's memory. Plain struct: zero
 * it, or fill it with tp_tensor_alloc. `owned` tensors free their data in
 * tp_tensor_release; views (tp_tensor_view) do not. */
typedef struct tp_tensor {
    tp_dtype dtype;
    int ndim;
    int64_t shape[TP_MAX_DIMS];
    void *data;
    tp_device *dev;
    bool owned;
} tp_tensor;

/* Allocate and zero a tensor. ndim 1..4, every dim >= 0. */
TP_API tp_status tp_tensor_alloc(tp_device *dev, tp_dtype dt, int ndim, const int64_t *shape,
                                 tp_tensor *out);
TP_API tp_status tp_tensor_alloc2(tp_device *dev, tp_dtype dt, int64_t rows, int64_t cols,
                                  tp_tensor *out);
TP_API void tp_tensor_release(tp_tensor *t); /* frees owned data; leaves t zeroed */
/* A non-owning view of existing device memory. */
TP_API tp_tensor tp_tensor_view(tp_device *dev, tp_dtype dt, void *data, int ndim,
                                const int64_t *shape);
TP_API int64_t tp_tensor_numel(const tp_tensor *t);
TP_API size_t tp_tensor_bytes(const tp_tensor *t);
TP_API tp_status tp_tensor_upload(tp_tensor *t, const void *host);   /* host holds numel elements */
TP_API tp_status tp_tensor_download(const tp_tensor *t, void *host); /* waits for the device */

/* Convert n elements between host buffers of f32, bf16 and f16 (e.g. to
 * upload f32 data into a bf16 tensor, or read one back). Widening to f32
 * is exact; narrowing rounds to nearest even, overflows to +-inf, keeps f16
 * subnormals, and a NaN stays a (quiet) NaN of the same sign. bf16 <-> f16
 * goes through f32, so it is rounded once too. Same dtypes copy (any
 * dtype, i32 included); other pairs with i32 or an invalid dtype are a
 * programming error and leave dst untouched. dst and src must not overlap
 * unless they are the same buffer and the element sizes are equal. */
TP_API void tp_host_convert(tp_dtype dst_dt, void *dst, tp_dtype src_dt, const void *src, size_t n);

/* ---------------------------------------------------------------- device */

/* The device API: each call dispatches to the loaded device plugin's slot
 * of the same name (see tp-plugin.h for the semantics), is counted and
 * timed in the rank's stats under the current phase (tp_dev_gemm as gemm,
 * the rest as kernel; tp_dev_alloc and tp_dev_free are not counted), and
 * returns TP_ERR_NOT_SUPPORTED naming the op if the device does not
 * provide it. Bad arguments (negative sizes, NULL pointers with a non-zero
 * size, a non-float dtype) return TP_ERR_INVALID_ARG before dispatch. */
TP_API const char *tp_device_name(const tp_device *dev);
TP_API tp_mem_kind tp_device_mem_kind(const tp_device *dev);
TP_API tp_status tp_dev_alloc(tp_device *dev, size_t bytes, void **ptr);
TP_API void tp_dev_free(tp_device *dev, void *ptr);
TP_API tp_status tp_dev_upload(tp_device *dev, void *dst, const void *host_src, size_t bytes);
TP_API tp_status tp_dev_download(tp_device *dev, void *host_dst, const void *src, size_t bytes);
TP_API tp_status tp_dev_copy_2d(tp_device *dev, void *dst, size_t dpitch, const void *src,
                                size_t spitch, size_t width_bytes, size_t height);
TP_API tp_status tp_dev_memset(tp_device *dev, void *ptr, int value, size_t bytes);
TP_API tp_status tp_dev_synchronize(tp_device *dev);
TP_API tp_status tp_dev_gemm(tp_device *dev, const tp_gemm_args *g);
TP_API tp_status tp_dev_bias_add(tp_device *dev, tp_dtype dt, int64_t rows, int64_t cols, void *y,
                                 const void *bias);
TP_API tp_status tp_dev_bias_grad(tp_device *dev, tp_dtype dt, int64_t rows, int64_t cols,
                                  const void *dy, void *db);
TP_API tp_status tp_dev_gelu(tp_device *dev, tp_dtype dt, int64_t n, const void *x, void *y,
                             int tanh_approx);
TP_API tp_status tp_dev_gelu_bwd(tp_device *dev, tp_dtype dt, int64_t n, const void *x,
                                 const void *dy, void *dx, int tanh_approx);
TP_API tp_status tp_dev_axpby(tp_device *dev, tp_dtype dt, int64_t n, float alpha, const void *x,
                              float beta, void *y);
TP_API tp_status tp_dev_softmax(tp_device *dev, tp_dtype dt, int64_t rows, int64_t cols,
                                const void *x, void *y, float scale, int causal);
TP_API tp_status tp_dev_softmax_bwd(tp_device *dev, tp_dtype dt, int64_t rows, int64_t cols,
                                    const void *y, const void *dy, void *dx, float scale);
TP_API tp_status tp_dev_norm(tp_device *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                             const void *gamma, const void *beta, void *y, float *mean, float *rstd,
                             float eps, int rms);
TP_API tp_status tp_dev_norm_bwd(tp_device *dev, tp_dtype dt, int64_t rows, int64_t cols,
                                 const void *x, const void *gamma, const float *mean,
                                 const float *rstd, const void *dy, void *dx, void *dgamma,
                                 void *dbeta, int rms);
TP_API tp_status tp_dev_embedding(tp_device *dev, tp_dtype dt, int64_t n, int64_t dim,
                                  const int32_t *ids, int64_t lo, int64_t hi, const void *table,
                                  void *out);
TP_API tp_status tp_dev_embedding_bwd(tp_device *dev, tp_dtype dt, int64_t n, int64_t dim,
                                      const int32_t *ids, int64_t lo, int64_t hi, const void *dout,
                                      void *dtable);
TP_API tp_status tp_dev_row_max(tp_device *dev, tp_dtype dt, int64_t rows, int64_t cols,
                                const void *x, float *out);
TP_API tp_status tp_dev_ce_stats(tp_device *dev, tp_dtype dt, int64_t rows, int64_t cols,
                                 const void *logits, const int32_t *targets, int64_t lo,
                                 const float *rowmax, float *out3);
TP_API tp_status tp_dev_ce_bwd(tp_device *dev, tp_dtype dt, int64_t rows, int64_t cols,
                               const void *logits, const int32_t *targets, int64_t lo,
                               int64_t vocab, const float *rowmax, const float *sumexp,
                               const float *row_scale, float smoothing, void *dlogits);
TP_API tp_status tp_dev_adamw(tp_device *dev, int64_t n, float *param, const float *grad, float *m,
                              float *v, float lr, float beta1, float beta2, float eps,
                              float weight_decay, int64_t step);
/* y = op(y, x) element-wise (the device's reduce slot). */
TP_API tp_status tp_dev_reduce(tp_device *dev, tp_dtype dt, tp_redop op, int64_t n, const void *x,
                               void *y);
/* C = act(op(A) op(B) + bias) (batch 1, alpha 1, beta 0), pre-activation
 * into pre when not NULL: the device's fused epilogue when it has one for
 * this combination, else gemm, bias_add and gelu (same contract; pre and C
 * may not overlap). Counted as one gemm plus whatever kernels it ran. */
TP_API tp_status tp_dev_gemm_bias_act(tp_device *dev, const tp_gemm_args *g, const void *bias,
                                      tp_act act, void *pre);

/* ------------------------------------------------------ sharding, weights */

/* Split n items into `parts` contiguous shards differing by at most one,
 * the first n % parts shards one larger; shard `index` is [*lo, *hi). */
TP_API void tp_shard_range(int64_t n, int parts, int index, int64_t *lo, int64_t *hi);

/* Counter-based RNG: a pure function of (seed, tensor_id, index), uniform in
 * [-bound, bound). Every TP degree sees the same full master weight. */
TP_API float tp_master_uniform(uint64_t seed, uint64_t tensor_id, uint64_t index, float bound);

/* Fill host buffer `out` (rows_hi-rows_lo) x (cols_hi-cols_lo) with the block
 * [rows_lo, rows_hi) x [cols_lo, cols_hi) of the full rows x full_cols master
 * matrix of (seed, tensor_id): element (r, c) is index r*full_cols + c. */
TP_API void tp_master_fill(uint64_t seed, uint64_t tensor_id, int64_t full_cols, int64_t rows_lo,
                           int64_t rows_hi, int64_t cols_lo, int64_t cols_hi, float bound,
                           float *out);

#ifdef __cplusplus
}
#endif

#endif /* TP_H */
