/* SPDX-License-Identifier: MIT */
/*
 * tp-plugin.h — the tp plugin SDK: the two vtables a backend implements.
 *
 * A plugin is a shared object (libtp-<name>.so) that exports exactly one
 * symbol, TP_PLUGIN_ENTRY ("tp_plugin_get_desc_v1"), returning a
 * tp_plugin_desc. The descriptor points to a communicator vtable
 * (tp_comm_ops), a device vtable (tp_device_ops), or both.
 *
 * This header depends on <stdint.h> and <stddef.h> only, so a plugin needs
 * nothing from tp but this file. Plugins report errors back to the core
 * through tp_host.set_error (never by printing, aborting or exiting).
 *
 * ABI versioning
 *   TP_ABI_MAJOR changes when an existing slot, type or meaning changes;
 *   the core refuses a plugin whose major differs from its own.
 *   TP_ABI_MINOR grows when slots are appended at the end of a vtable or
 *   fields at the end of a struct. Every vtable and struct crossing the
 *   boundary starts with its own size, so a newer core reading an older
 *   plugin treats every slot past struct_size as NULL ("not provided"),
 *   and an older core ignores slots it does not know. A minor bump never
 *   removes, reorders or changes a slot.
 *
 * NULL slots
 *   A NULL slot means "not provided". For collectives the core then either
 *   falls back (reduce_scatter through all_reduce, all_gather through
 *   broadcast, barrier through all_reduce) or returns TP_ERR_NOT_SUPPORTED
 *   naming the op. Required slots are marked [required]; the loader refuses
 *   a vtable that lacks one.
 *
 * Threads
 *   A process may run several ranks, one thread each (loopback, nccl in one
 *   process). Every comm and device slot is called only from the thread of
 *   the rank that owns the handle; different ranks call concurrently. Slots
 *   that take an engine may be called from any rank's thread. Exception: a
 *   comm without the nonblocking slots (ABI 1.4) may have its collectives
 *   called from the core's progress thread of the rank instead, but still
 *   one call at a time per rank, in the rank's issue order.
 *
 * Memory
 *   A comm declares in tp_comm_ops.mem_kinds which memory its collectives
 *   take (0: host memory only). If the rank's device keeps tensors in a
 *   kind the comm does not take (the cuda device under loopback, mpi or
 *   tcp), the core stages: it calls world() with a host tp_rank_env and
 *   gives every collective host copies of the device buffers. Otherwise
 *   buffers passed to comm ops live in the memory the rank's device
 *   declared in tp_rank_env (host memory for the cpu device, device memory
 *   for cuda), and a comm that still cannot use it refuses in world() with
 *   TP_ERR_NOT_SUPPORTED. A comm that takes a device kind only on some
 *   condition (loopback needs the device's reduce slot) may refuse it in
 *   world() with TP_ERR_NOT_SUPPORTED, before any side effect and alike
 *   on every rank; if it also takes host memory the core then calls
 *   world() again with a host tp_rank_env and stages.
 *   Device ops are ordered on the rank's stream; comm ops given env.stream
 *   must be ordered on it too.
 *
 * ABI history
 *   1.0  first release.
 *   1.1  device: optional reduce, host_alloc/host_free, gemm_bias_act,
 *        event_create/record/elapsed/destroy;
 *        tp_rank_env: dev_ops/dev (set by the core before world()).
 *   1.2  tp_host.progress.
 *   1.3  comm: optional comm_create (a communicator over a group, bootstrapped
 *        through another communicator: TP_INTRA_BACKEND), tp_bootstrap.
 *   1.4  comm: optional nonblocking collectives iall_reduce, iall_gather,
 *        ireduce_scatter with req_test, req_wait, req_free (all six or
 *        none), appended after comm_create.
 *   1.5  comm: optional req_done_at (when a nonblocking collective's result
 *        was complete, for engines whose peers finish it), after req_free.
 *   1.6  comm: optional mem_alloc and mem_free (both or none): symmetric
 *        memory, which the comm's collectives reach without staging copies
 *        (tp_comm_mem_alloc), after req_done_at.
 */
#ifndef TP_PLUGIN_H
#define TP_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TP_ABI_MAJOR 1
#define TP_ABI_MINOR 6

/* ---------------------------------------------------------------- types */

/* Status codes. Keep values stable: they cross the plugin boundary. */
typedef enum tp_status {
    TP_OK = 0,
    TP_ERR_INVALID_ARG = 1,   /* a bad argument: NULL, out of range, bad option */
    TP_ERR_SHAPE = 2,         /* tensor shape does not match what a layer expects */
    TP_ERR_NOT_SUPPORTED = 3, /* op, dtype or memory kind not provided by a backend */
    TP_ERR_NO_MEMORY = 4,     /* allocation failed */
    TP_ERR_PLUGIN = 5,        /* a plugin could not be found, loaded or accepted */
    TP_ERR_UNAVAILABLE = 6,   /* plugin loaded but cannot run here (probe said no) */
    TP_ERR_TIMEOUT = 7,       /* a peer did not arrive within TP_TIMEOUT_S */
    TP_ERR_PEER = 8,          /* a peer left, died, or sent something invalid */
    TP_ERR_COMM = 9,          /* the communication library reported an error */
    TP_ERR_DEVICE = 10,       /* the device library reported an error */
    TP_ERR_IO = 11,           /* file or socket I/O failed */
    TP_ERR_INTERNAL = 12,     /* a bug in tp: please report it */
    TP_STATUS_COUNT_
} tp_status;

typedef enum tp_dtype {
    TP_F32 = 0,
    TP_F16 = 1,
    TP_BF16 = 2,
    TP_I32 = 3,
    TP_DTYPE_COUNT_
} tp_dtype;

typedef enum tp_redop {
    TP_SUM = 0,
    TP_MAX = 1,
    TP_MIN = 2,
    TP_REDOP_COUNT_
} tp_redop;

/* Activation fused into a GEMM epilogue (tp_device_ops.gemm_bias_act). */
typedef enum tp_act {
    TP_ACT_NONE = 0,      /* identity: bias only */
    TP_ACT_GELU = 1,      /* exact GeLU, x * Phi(x) (erf) */
    TP_ACT_GELU_TANH = 2, /* tanh approximation of GeLU */
    TP_ACT_COUNT_
} tp_act;

/* Where a rank's tensors live. */
typedef enum tp_mem_kind {
    TP_MEM_HOST = 0, /* ordinary host memory: any thread may read it */
    TP_MEM_CUDA = 1, /* CUDA device memory of env.device_index */
} tp_mem_kind;

/* Services the core offers a plugin. Valid from init/open until finalize/close. */
typedef struct tp_host {
    size_t struct_size;
    /* Record an error for the calling thread; returns `status` so a plugin
     * can write `return host->set_error(TP_ERR_TIMEOUT, "...", ...)`.
     * Say what failed, where, expected vs got, and the likely fix. */
    tp_status (*set_error)(tp_status status, const char *fmt, ...)
#if defined(__GNUC__)
        __attribute__((format(printf, 2, 3)))
#endif
        ;
    /* Print a debug line when TP_DEBUG names `topic` (e.g. "comm", "device"). */
    void (*debug)(const char *topic, const char *fmt, ...)
#if defined(__GNUC__)
        __attribute__((format(printf, 2, 3)))
#endif
        ;
    double timeout_s; /* TP_TIMEOUT_S: how long a peer may be waited for */
    /* ABI 1.2 (check struct_size first): a plugin whose call can take long
     * while it makes progress (bytes moving over a slow link) calls this from
     * the rank's thread whenever it progressed. The core's watchdog then
     * ends the process only after TP_TIMEOUT_S (plus a grace period)
     * without progress, as the plugin's own waits are bounded. Cheap: two
     * stores. */
    void (*progress)(void);
} tp_host;

/* ----------------------------------------------------------- device ops */

struct tp_device_ops;

/* Filled by tp_device_ops.open: tells the comm where this rank's memory is. */
typedef struct tp_rank_env {
    size_t struct_size;
    tp_mem_kind mem_kind;
    int device_index; /* GPU ordinal, or -1 for host */
    void *stream;     /* e.g. cudaStream_t; NULL for synchronous devices */
    /* ABI 1.1, set by the core (not by open) before world(): the rank's
     * device, so a comm that takes device memory can copy and reduce it
     * with the device's own ops (loopback does). Check struct_size first. */
    const struct tp_device_ops *dev_ops;
    void *dev;
} tp_rank_env;

typedef struct tp_device_args {
    size_t struct_size;
    int world_rank;  /* global rank of the rank opening the device */
    int local_index; /* index of this rank among the ranks of this process */
    int local_count; /* ranks in this process */
    int threads;     /* compute threads per rank (TP_CPU_THREADS), 0 = default */
} tp_device_args;

/* Row-major strided-batched GEMM:
 *   C[b] = alpha * op(A[b]) * op(B[b]) + beta * C[b],  b = 0 .. batch-1
 * op(A) is m x k, op(B) is k x n, C is m x n. X[b] = X + b * stride_x
 * (strides in elements). lda/ldb/ldc are row pitches in elements of the
 * matrices as stored. A, B, C share `dtype`; accumulation is in f32.
 * No element of C may be written twice: the C[b] are whole separate
 * matrices (stride_c >= (m-1)*ldc + n) or column blocks side by side in one
 * matrix (stride_c >= n and (batch-1)*stride_c + n <= ldc, e.g. attention
 * heads of a [tokens, heads*head_dim] activation). A and B may be shared
 * (stride 0). */
typedef struct tp_gemm_args {
    size_t struct_size;
    tp_dtype dtype;
    int trans_a, trans_b; /* non-zero: use the transpose */
    int64_t m, n, k;
    float alpha, beta;
    const void *a;
    int64_t lda, stride_a;
    const void *b;
    int64_t ldb, stride_b;
    void *c;
    int64_t ldc, stride_c;
    int64_t batch; /* >= 1 */
} tp_gemm_args;

/* The device vtable. `dev` is the per-rank handle from open(). Every op is
 * enqueued on the rank's stream in call order; only download() and
 * synchronize() wait for it. Element-wise kernels take the dtype of their
 * float tensors (TP_F32 is required of every device; others may return
 * TP_ERR_NOT_SUPPORTED); index tensors (ids, targets) are int32. Per-row
 * scalars (mean, rstd, row max, CE statistics) are f32 in device memory. */
typedef struct tp_device_ops {
    size_t struct_size;

    /* --- lifetime and memory [all required] --- */

    /* Per rank, on its thread. */
    tp_status (*open)(const tp_host *host, const tp_device_args *args, void **dev,
                      tp_rank_env *env);
    /* After synchronize. */
    void (*close)(void *dev);
    /* 64-byte aligned; bytes may be 0. */
    tp_status (*alloc)(void *dev, size_t bytes, void **ptr);
    /* NULL is a no-op. */
    void (*free)(void *dev, void *ptr);
    /* The host buffer is reusable on return. */
    tp_status (*upload)(void *dev, void *dst, const void *host_src, size_t bytes);
    /* Waits: the data is valid on return. */
    tp_status (*download)(void *dev, void *host_dst, const void *src, size_t bytes);
    /* Device to device; the two may not overlap. */
    tp_status (*copy_2d)(void *dev, void *dst, size_t dpitch, const void *src, size_t spitch,
                         size_t width_bytes, size_t height);
    tp_status (*memset)(void *dev, void *ptr, int value, size_t bytes);
    /* Wait for all enqueued work. */
    tp_status (*synchronize)(void *dev);
    tp_status (*gemm)(void *dev, const tp_gemm_args *g);

    /* --- element-wise kernels used by the layers --- */

    /* y[r,c] += bias[c] */
    tp_status (*bias_add)(void *dev, tp_dtype dt, int64_t rows, int64_t cols, void *y,
                          const void *bias);
    /* db[c] += sum_r dy[r,c], r ascending */
    tp_status (*bias_grad)(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *dy,
                           void *db);
    /* y = gelu(x); y may alias x */
    tp_status (*gelu)(void *dev, tp_dtype dt, int64_t n, const void *x, void *y, int tanh_approx);
    /* dx = dy * gelu'(x); dx may alias dy */
    tp_status (*gelu_bwd)(void *dev, tp_dtype dt, int64_t n, const void *x, const void *dy,
                          void *dx, int tanh_approx);
    /* y = alpha*x + beta*y (beta 0: y is not read) */
    tp_status (*axpby)(void *dev, tp_dtype dt, int64_t n, float alpha, const void *x, float beta,
                       void *y);
    /* y = softmax(scale*x) per row; causal: row r keeps columns c <= r % cols, the others get 0 */
    tp_status (*softmax)(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x, void *y,
                         float scale, int causal);
    /* dx = scale*y*(dy - sum_c dy*y); dx may alias dy */
    tp_status (*softmax_bwd)(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *y,
                             const void *dy, void *dx, float scale);
    /* Layer norm, or RMS norm when rms != 0 (mean unused, may be NULL); beta may be NULL (no
     * shift). */
    tp_status (*norm)(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                      const void *gamma, const void *beta, void *y, float *mean, float *rstd,
                      float eps, int rms);
    /* dx written; dgamma and dbeta (may be NULL) accumulate. */
    tp_status (*norm_bwd)(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                          const void *gamma, const float *mean, const float *rstd, const void *dy,
                          void *dx, void *dgamma, void *dbeta, int rms);
    /* out[i] = lo <= ids[i] < hi ? table[ids[i] - lo] : 0 */
    tp_status (*embedding)(void *dev, tp_dtype dt, int64_t n, int64_t dim, const int32_t *ids,
                           int64_t lo, int64_t hi, const void *table, void *out);
    /* dtable[ids[i] - lo] += dout[i], i ascending */
    tp_status (*embedding_bwd)(void *dev, tp_dtype dt, int64_t n, int64_t dim, const int32_t *ids,
                               int64_t lo, int64_t hi, const void *dout, void *dtable);
    /* out[r] = max_c x[r,c] */
    tp_status (*row_max)(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                         float *out);
    /* Per row r: out3[3r] = sum_c exp(x - rowmax[r]), out3[3r+1] = x[r, t-lo] if
     * lo <= t < lo+cols else 0, out3[3r+2] = sum_c x[r,c]. */
    tp_status (*ce_stats)(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *logits,
                          const int32_t *targets, int64_t lo, const float *rowmax, float *out3);
    /* dlogits = row_scale[r] * (softmax - (1-s)*onehot - s/vocab); row_scale is 0 for ignored
     * rows. */
    tp_status (*ce_bwd)(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *logits,
                        const int32_t *targets, int64_t lo, int64_t vocab, const float *rowmax,
                        const float *sumexp, const float *row_scale, float smoothing,
                        void *dlogits);
    /* Decoupled weight decay, bias-corrected. */
    tp_status (*adamw)(void *dev, int64_t n, float *param, const float *grad, float *m, float *v,
                       float lr, float beta1, float beta2, float eps, float weight_decay,
                       int64_t step);

    /* --- ABI 1.1: optional slots; NULL means not provided --- */

    /* y[i] = op(y[i], x[i]) for f32, f16, bf16 (f32 math, one rounding) and i32 (wrapping
     * sum); x and y may be buffers of another rank's device in this process (a comm reducing
     * its peers' buffers). */
    tp_status (*reduce)(void *dev, tp_dtype dt, tp_redop op, int64_t n, const void *x, void *y);
    /* Page-locked host memory for staging copies (cudaHostAlloc); NULL: the core uses
     * ordinary memory. */
    tp_status (*host_alloc)(void *dev, size_t bytes, void **ptr);
    /* NULL is a no-op. */
    void (*host_free)(void *dev, void *ptr);
    /* GEMM with a fused epilogue, batch 1, beta 0: C = act(alpha op(A) op(B) + bias), bias [n]
     * (NULL: none) broadcast over rows; pre (NULL: not wanted) gets the value before act, pitch
     * ldc, for gelu_bwd. TP_ERR_NOT_SUPPORTED for a combination it does not fuse: the core
     * then runs gemm, bias_add and gelu. */
    tp_status (*gemm_bias_act)(void *dev, const tp_gemm_args *g, const void *bias, tp_act act,
                               void *pre);
    /* Device-side timing (CUDA events), all four or none: the core records an event before and
     * after each counted op on an asynchronous device and adds the time between them to the
     * counters when they are read, instead of host wall time (which is only the time to
     * enqueue). event_record is on the rank's stream, in call order; event_elapsed waits until
     * stop has happened. */
    tp_status (*event_create)(void *dev, void **event);
    tp_status (*event_record)(void *dev, void *event);
    tp_status (*event_elapsed)(void *dev, const void *start, const void *stop, double *seconds);
    void (*event_destroy)(void *dev, void *event);
} tp_device_ops;

/* Every slot of tp_device_ops, in order: X(name, required, abi_minor it came in). The loader's
 * checks and tp-info's listing are generated from it, and the loader fails to compile when a
 * slot is added to the struct but not here (or out of order). */
/* clang-format off */
#define TP_DEVICE_OPS_SLOTS(X)                                                                   \
    X(open, 1, 0) X(close, 1, 0) X(alloc, 1, 0) X(free, 1, 0) X(upload, 1, 0)                     \
    X(download, 1, 0) X(copy_2d, 1, 0) X(memset, 1, 0) X(synchronize, 1, 0) X(gemm, 1, 0)         \
    X(bias_add, 0, 0) X(bias_grad, 0, 0) X(gelu, 0, 0) X(gelu_bwd, 0, 0) X(axpby, 0, 0)           \
    X(softmax, 0, 0) X(softmax_bwd, 0, 0) X(norm, 0, 0) X(norm_bwd, 0, 0) X(embedding, 0, 0)      \
    X(embedding_bwd, 0, 0) X(row_max, 0, 0) X(ce_stats, 0, 0) X(ce_bwd, 0, 0) X(adamw, 0, 0)      \
    X(reduce, 0, 1) X(host_alloc, 0, 1) X(host_free, 0, 1) X(gemm_bias_act, 0, 1)                 \
    X(event_create, 0, 1) X(event_record, 0, 1) X(event_elapsed, 0, 1) X(event_destroy, 0, 1)
/* clang-format on */

/* ------------------------------------------------------------- comm ops */

typedef struct tp_engine_args {
    size_t struct_size;
    int world_size; /* requested ranks (--tp / TP_WORLD_SIZE), 0 = engine decides */
    int *argc;      /* the program's arguments, may be NULL */
    char ***argv;
} tp_engine_args;

typedef struct tp_engine_info {
    size_t struct_size;
    int world_size; /* total ranks across all processes */
    /* ranks this process runs (threads): world_size for loopback, 1 under mpirun */
    int local_count;
    int first_rank; /* global rank of local index 0; local ranks are consecutive */
} tp_engine_info;

/* How comm_create's ranks reach each other before the new communicator
 * exists: through a communicator of the same ranks on another backend (the
 * world's), as NCCL's unique id travels over MPI. */
typedef struct tp_bootstrap {
    size_t struct_size;
    int rank, size;   /* this rank's place in the group being created */
    const char *node; /* the node this rank runs on: its host name, or "fake-node-N" under
                       * TP_FAKE_NODES; ranks with different nodes do not share memory */
    void *ctx;
    /* Collective over the group: every rank gives `bytes` bytes (the same count on every
     * rank); `all` receives size * bytes, in rank order. Host memory. */
    tp_status (*all_gather)(void *ctx, const void *mine, void *all, size_t bytes);
} tp_bootstrap;

/* The communicator vtable. `comm` handles come from world() or split().
 * Counts are in elements of `dt`. Ranks are 0 .. size-1 within `comm`. */
typedef struct tp_comm_ops {
    size_t struct_size;

    /* --- engine, once per process [required] --- */

    /* E.g. MPI_Init_thread; fill info; refuse a world_size request the engine cannot honour,
     * naming both numbers. */
    tp_status (*init)(const tp_host *host, const tp_engine_args *args, void **engine,
                      tp_engine_info *info);
    /* After every comm was freed. */
    void (*finalize)(void *engine);

    /* --- communicators [required] --- */

    /* Called once on each local rank's thread, concurrently. */
    tp_status (*world)(void *engine, int local_index, const tp_rank_env *env, void **comm,
                       int *rank, int *size);
    /* Collective; ranks ordered by (key, old rank); color < 0: *newcomm = NULL. */
    tp_status (*split)(void *comm, int color, int key, void **newcomm, int *rank, int *size);
    /* Not collective: the rank leaves the communicator. */
    void (*comm_free)(void *comm);

    /* --- collectives: every rank of comm calls them in the same order --- */

    /* [required] send == recv is in place. */
    tp_status (*all_reduce)(void *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                            tp_redop op);
    /* Rank i contributes counts[i]; recv holds all, in rank order; send may equal recv + the
     * offset of the rank's own block. */
    tp_status (*all_gather)(void *comm, const void *send, void *recv, const size_t *counts,
                            tp_dtype dt);
    /* send holds sum(counts); rank i gets block i; send and recv do not overlap. */
    tp_status (*reduce_scatter)(void *comm, const void *send, void *recv, const size_t *counts,
                                tp_dtype dt, tp_redop op);
    tp_status (*broadcast)(void *comm, void *buf, size_t count, tp_dtype dt, int root);
    tp_status (*barrier)(void *comm);

    /* Optional: end the whole job because a rank of this process failed (its set-up or
     * rank_main returned `status`; `message` says why) while ranks of other processes may wait
     * for it in a collective that can never complete. Make `message` visible first (the
     * process may not return from this call, e.g. MPI_Abort). The core calls it only when the
     * engine runs ranks in several processes (local_count < world_size); returning, or NULL,
     * means the error is reported normally. */
    void (*abort)(void *engine, int world_rank, tp_status status, const char *message);

    /* Data, not a slot: bit (1u << tp_mem_kind) for each memory kind the collectives accept;
     * 0 means host memory only. For a kind not listed the core stages through host memory (see
     * "Memory" above), so a host-memory comm works with any device and needs no change. */
    uint32_t mem_kinds;
    /* --- ABI 1.3: optional --- */
    /* Collective over the bootstrap's group: create a communicator of boot->size ranks (rank
     * boot->rank) without init() or world(): the plugin serves as the intra-node backend
     * (TP_INTRA_BACKEND) of a job whose world runs on another plugin. Exchange addresses or
     * ids with boot->all_gather; refuse (alike on every rank, naming the nodes) a group whose
     * ranks are on different nodes if the plugin works only inside one. The handle is used
     * with this vtable's collectives, split and comm_free like one from world(). */
    tp_status (*comm_create)(const tp_host *host, const tp_bootstrap *boot, const tp_rank_env *env,
                             void **comm);

    /* --- ABI 1.4: nonblocking collectives; optional, all six or none --- */

    /* Start the collective of the same name (same arguments and rules) and return at once with
     * a request in *req; the buffers (and counts) stay in use until the request is complete.
     * The core calls them, and the req_* slots, from the rank's thread only, in the same order
     * on every rank, interleaved with blocking collectives on this comm only after every
     * earlier request of this comm completed (the core waits for them first). A bad argument
     * is reported here; a failure of the transfer (peer gone, timeout) by req_test/req_wait.
     * Without these slots the core runs the blocking slots on a progress thread of its own,
     * one per rank, shared by its comms (see docs/writing-a-comm-plugin.md, "Nonblocking collectives"). */
    tp_status (*iall_reduce)(void *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                             tp_redop op, void **req);
    tp_status (*iall_gather)(void *comm, const void *send, void *recv, const size_t *counts,
                             tp_dtype dt, void **req);
    tp_status (*ireduce_scatter)(void *comm, const void *send, void *recv, const size_t *counts,
                                 tp_dtype dt, tp_redop op, void **req);
    /* *done = 1 once complete (its status is then returned; recv is valid when TP_OK), else 0
     * and TP_OK. Does not block beyond progressing the transfer. */
    tp_status (*req_test)(void *comm, void *req, int *done);
    /* Block until complete (bounded by tp_host.timeout_s); return its status. */
    tp_status (*req_wait)(void *comm, void *req);
    /* After req_test said done or req_wait returned, once per request, before comm_free. From
     * that point, whatever the status, the plugin no longer touches the request's buffers (a
     * failed request's peers stopped working on them; docs/writing-a-comm-plugin.md). */
    void (*req_free)(void *comm, void *req);

    /* --- ABI 1.5: optional --- */

    /* For a request req_test said done or req_wait returned (called before req_free): when its
     * result was complete for this rank, in seconds of CLOCK_MONOTONIC (the core's clock), or
     * 0 if unknown. For engines where the work of a request is done by whichever rank is
     * inside the plugin (loopback, shm): a peer may have finished it long before this rank
     * tested, and the core's counters then count it in flight only until then (tp.h,
     * tp_icounter). Without the slot, completion is when req_test/req_wait said so. */
    double (*req_done_at)(void *comm, void *req);

    /* --- ABI 1.6: optional, both or none --- */

    /* Symmetric memory (tp_comm_mem_alloc): collective over comm, every rank calls it in the same
     * order with the same bytes (> 0). *ptr: `bytes` of the memory kind the comm's collectives
     * take, which every rank's collectives can reach directly, so that a collective whose
     * buffers all lie in such allocations on every rank needs no staging copy. On failure every
     * rank returns the same status and *ptr is untouched. The core calls it only for a comm
     * that is not staged (see Memory), and frees what is left before comm_free. */
    tp_status (*mem_alloc)(void *comm, size_t bytes, void **ptr);
    /* Free what mem_alloc returned on this comm. Local: a rank frees when it no longer passes
     * the memory to a collective (its peers finished reading it before their collective
     * returned). */
    void (*mem_free)(void *comm, void *ptr);
} tp_comm_ops;

/* Every function slot of tp_comm_ops, in order: X(name, required, abi_minor it came in); see
 * TP_DEVICE_OPS_SLOTS. The data field mem_kinds sits between abort and comm_create (the
 * loader's assertions know it). */
/* clang-format off */
#define TP_COMM_OPS_SLOTS(X)                                                                     \
    X(init, 1, 0) X(finalize, 1, 0) X(world, 1, 0) X(split, 1, 0) X(comm_free, 1, 0)              \
    X(all_reduce, 1, 0) X(all_gather, 0, 0) X(reduce_scatter, 0, 0) X(broadcast, 0, 0)           \
    X(barrier, 0, 0) X(abort, 0, 0) X(comm_create, 0, 3)                                         \
    X(iall_reduce, 0, 4) X(iall_gather, 0, 4) X(ireduce_scatter, 0, 4) X(req_test, 0, 4)         \
    X(req_wait, 0, 4) X(req_free, 0, 4) X(req_done_at, 0, 5) X(mem_alloc, 0, 6)                  \
    X(mem_free, 0, 6)
/* clang-format on */

/* ----------------------------------------------------------- descriptor */

typedef struct tp_plugin_desc {
    size_t struct_size;
    uint16_t abi_major, abi_minor; /* TP_ABI_MAJOR/MINOR the plugin was built with */
    const char *name;              /* must equal <name> in libtp-<name>.so */
    const char *version;
    const char *description;     /* one line */
    const tp_comm_ops *comm;     /* NULL if not a communicator */
    const tp_device_ops *device; /* NULL if not a device */
    /* Optional: can this plugin run here? Return 1 if so; else 0 and write
     * the reason (e.g. "no CUDA device: cudaGetDeviceCount returned 35
     * (driver too old)") into reason. Must not keep state or crash. */
    int (*probe)(char *reason, size_t reason_len);
} tp_plugin_desc;

#define TP_PLUGIN_ENTRY "tp_plugin_get_desc_v1"

#if defined(_WIN32)
#define TP_PLUGIN_EXPORT __declspec(dllexport)
#else
#define TP_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

/* Define the plugin's entry point. COMM and DEVICE are addresses of ops
 * structs or NULL; PROBE a probe function or NULL. */
#define TP_PLUGIN_DEFINE(NAME, VERSION, DESCRIPTION, COMM, DEVICE, PROBE)                          \
    TP_PLUGIN_EXPORT const tp_plugin_desc *tp_plugin_get_desc_v1(void);                            \
    TP_PLUGIN_EXPORT const tp_plugin_desc *tp_plugin_get_desc_v1(void)                             \
    {                                                                                              \
        static const tp_plugin_desc desc = {                                                       \
            sizeof(tp_plugin_desc), TP_ABI_MAJOR, TP_ABI_MINOR, (NAME), (VERSION),                 \
            (DESCRIPTION),          (COMM),       (DEVICE),     (PROBE)};                          \
        return &desc;                                                                              \
    }

/* ------------------------------------------------------------- settings */

/* Optional, beside the descriptor: the plugin's own settings (environment
 * variables) with their defaults, which `tp-info NAME` lists like
 * `ompi_info --param`. A second entry point rather than a descriptor field,
 * so it needs no ABI bump: a plugin without it has no settings to list, and
 * an older libtp never looks for it. */
typedef struct tp_plugin_setting {
    const char *name;          /* "TP_TCP_CHUNK_BYTES" */
    const char *default_value; /* as the user would see it: "262144", "unset", "(required)" */
    const char *description;   /* one line: what it does, its range */
} tp_plugin_setting;

#define TP_PLUGIN_SETTINGS_ENTRY "tp_plugin_get_settings_v1"

/* Define the settings entry point: a list of {name, default, description}
 * initializers, e.g.
 *   TP_PLUGIN_DEFINE_SETTINGS({"TP_X_CHUNK", "65536", "bytes per message"},
 *                             {"TP_X_DEBUG", "0", "1: trace every call"})
 * It returns them followed by an entry whose name is NULL. */
#define TP_PLUGIN_DEFINE_SETTINGS(...)                                                             \
    TP_PLUGIN_EXPORT const tp_plugin_setting *tp_plugin_get_settings_v1(void);                     \
    TP_PLUGIN_EXPORT const tp_plugin_setting *tp_plugin_get_settings_v1(void)                      \
    {                                                                                              \
        static const tp_plugin_setting settings[] = {__VA_ARGS__, {NULL, NULL, NULL}};             \
        return settings;                                                                           \
    }

#ifdef __cplusplus
}
#endif
#endif /* TP_PLUGIN_H */
