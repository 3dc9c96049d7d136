/* SPDX-License-Identifier: MIT */
/*
 * nccl-comm.c — communicators and collectives.
 *
 * Every NCCL comm is nonblocking (ncclConfig_t.blocking = 0): a call may
 * return ncclInProgress, and nothing else may be called on the comm until
 * ncclCommGetAsyncError stops saying so. comm_wait() polls that, then
 * (for collectives) cudaStreamQuery on the rank's stream, so a collective
 * returns once its result is in device memory. Any error, or TP_TIMEOUT_S
 * without progress, aborts the comm (ncclCommAbort); later calls on it fail.
 *
 * Nonblocking (ABI 1.4): the same NCCL calls on a side stream of the comm
 * that first waits for an event recorded on the rank's stream (so the
 * inputs the rank's kernels produced are ready); an event recorded after
 * them on the side stream is the request. req_test queries it; req_wait
 * polls it (and the comm's async error) up to TP_TIMEOUT_S, then makes the
 * rank's stream wait for it too, so the rank's later kernels see the
 * result. Compute enqueued on the rank's stream meanwhile overlaps.
 *
 * Uneven blocks: all_gather with unequal counts is a group of broadcasts
 * (root i sends block i into its offset of recv); reduce_scatter with
 * unequal counts is a group of reduces (block i reduced to root i). Equal
 * counts use ncclAllGather / ncclReduceScatter.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nccl-internal.h"

#define END_OF(type, field) (offsetof(type, field) + sizeof(((type *)0)->field))

typedef struct nccl_comm {
    nccl_engine *eng;
    const tp_host *host;
    ncclComm_t nc;       /* NULL once aborted or destroyed */
    cudaStream_t stream; /* the rank's stream (env.stream); 0 = legacy default */
    int device;          /* CUDA ordinal */
    int rank, size;      /* in this comm; -1 while being created */
    float *scratch;      /* one float of device memory for barrier */
    bool broken;         /* aborted after an error or timeout */
    /* Nonblocking collectives (created at the first): they run on `side`,
     * after the work the rank's stream had when they were issued (`ready`). */
    cudaStream_t side;
    cudaEvent_t ready;
} nccl_comm;

/* ------------------------------------------------------------- helpers */

static const char *last_error(const nccl_comm *c)
{
    const char *s = ncclGetLastError(c ? c->nc : NULL);
    return s && *s ? s : "(NCCL gave no detail; NCCL_DEBUG=WARN prints more)";
}

static const char *hint_of(ncclResult_t r)
{
    switch (r) {
        case ncclUnhandledCudaError:
            return "; a CUDA call inside NCCL failed: check the GPU (nvidia-smi) and earlier CUDA "
                   "errors";
        case ncclSystemError:
            return "; a system call or the network failed: NCCL_DEBUG=WARN shows which";
        case ncclRemoteError: return "; a peer rank failed or left: check the other ranks' errors";
        case ncclInvalidUsage: return "; NCCL_DEBUG=WARN shows NCCL's own message";
        default: return "";
    }
}

static tp_status comm_fail(const nccl_comm *c, ncclResult_t r, const char *what)
{
    return c->host->set_error(nccl_status_of(r), "nccl: %s failed on rank %d/%d (GPU %d): %s: %s%s",
                              what, c->rank, c->size, c->device, ncclGetErrorString(r),
                              last_error(c), hint_of(r));
}

static void comm_abort(nccl_comm *c)
{
    if (c->nc) {
        ncclCommAbort(c->nc);
        if (c->host->debug)
            c->host->debug("comm", "nccl: rank %d/%d (GPU %d): communicator aborted", c->rank,
                           c->size, c->device);
    }
    c->nc = NULL;
    c->broken = true;
}

/* Poll until the comm leaves ncclInProgress and, if `stream`, the rank's
 * stream is idle. `peer_failed` (one-process init): another local rank gave
 * up, so this one will never be joined. Errors and timeouts abort. */
static tp_status comm_wait(nccl_comm *c, const char *what, bool stream, atomic_int *peer_failed)
{
    double t0 = nccl_now();
    tp_status st;
    for (;;) {
        ncclResult_t state = ncclSuccess;
        ncclResult_t r = ncclCommGetAsyncError(c->nc, &state);
        if (r != ncclSuccess)
            state = r;
        if (state != ncclSuccess && state != ncclInProgress) {
            st = comm_fail(c, state, what);
            comm_abort(c);
            return st;
        }
        if (state == ncclSuccess) {
            if (!stream)
                return TP_OK;
            cudaError_t e = cudaStreamQuery(c->stream);
            if (e == cudaSuccess)
                return TP_OK;
            if (e != cudaErrorNotReady) {
                st = c->host->set_error(TP_ERR_DEVICE,
                                        "nccl: %s on rank %d/%d (GPU %d): the rank's CUDA stream "
                                        "failed: %s (%s); an earlier kernel on it faulted",
                                        what, c->rank, c->size, c->device, cudaGetErrorName(e),
                                        cudaGetErrorString(e));
                comm_abort(c);
                return st;
            }
        }
        if (peer_failed && atomic_load(peer_failed)) {
            comm_abort(c);
            return c->host->set_error(
                TP_ERR_PEER,
                "nccl: %s on rank %d/%d (GPU %d) stopped: another rank of "
                "this process failed to join the communicator (see its error)",
                what, c->rank, c->size, c->device);
        }
        if (nccl_now() - t0 > c->eng->timeout_s) {
            comm_abort(c);
            return c->host->set_error(TP_ERR_TIMEOUT,
                                      "nccl: %s did not complete within %.0f s (TP_TIMEOUT_S) on "
                                      "rank %d/%d (GPU %d): a peer rank is missing, stuck or dead, "
                                      "or the ranks called collectives in different orders; the "
                                      "communicator was aborted (ncclCommAbort)",
                                      what, c->eng->timeout_s, c->rank, c->size, c->device);
        }
        nccl_backoff(t0);
    }
}

/* After enqueueing: check the call's result, then wait for completion. */
static tp_status comm_finish(nccl_comm *c, ncclResult_t r, const char *what)
{
    if (r != ncclSuccess && r != ncclInProgress) {
        tp_status st = comm_fail(c, r, what);
        ncclResult_t state = ncclSuccess;
        /* an argument error leaves the comm usable; anything that broke it aborts */
        if (ncclCommGetAsyncError(c->nc, &state) != ncclSuccess ||
            (state != ncclSuccess && state != ncclInProgress))
            comm_abort(c);
        return st;
    }
    return comm_wait(c, what, true, NULL);
}

static tp_status comm_ready(const nccl_comm *c, const char *op)
{
    if (c->broken || !c->nc)
        return c->host->set_error(TP_ERR_COMM,
                                  "nccl: %s on rank %d/%d: this communicator was aborted after an "
                                  "earlier error or timeout (see that error); tp_finalize and "
                                  "tp_init again to start over",
                                  op, c->rank, c->size);
    return TP_OK;
}

static tp_status map_dtype(const nccl_comm *c, const char *op, tp_dtype dt, ncclDataType_t *out,
                           size_t *elem)
{
    switch (dt) {
        case TP_F32: *out = ncclFloat32, *elem = 4; return TP_OK;
        case TP_F16: *out = ncclFloat16, *elem = 2; return TP_OK;
        case TP_BF16: *out = ncclBfloat16, *elem = 2; return TP_OK;
        case TP_I32: *out = ncclInt32, *elem = 4; return TP_OK;
        default:
            return c->host->set_error(
                TP_ERR_INVALID_ARG,
                "nccl: %s on rank %d/%d: dtype %d is not one of f32, f16, bf16, "
                "i32",
                op, c->rank, c->size, (int)dt);
    }
}

static tp_status map_op(const nccl_comm *c, const char *op, tp_redop rop, ncclRedOp_t *out)
{
    switch (rop) {
        case TP_SUM: *out = ncclSum; return TP_OK;
        case TP_MAX: *out = ncclMax; return TP_OK;
        case TP_MIN: *out = ncclMin; return TP_OK;
        default:
            return c->host->set_error(
                TP_ERR_INVALID_ARG,
                "nccl: %s on rank %d/%d: reduction %d is not one of sum, max, min", op, c->rank,
                c->size, (int)rop);
    }
}

/* Offsets of the blocks: total elements and whether all counts are equal. */
static tp_status block_sizes(const nccl_comm *c, const char *op, const size_t *counts, size_t elem,
                             size_t *total, bool *equal)
{
    if (!counts)
        return c->host->set_error(TP_ERR_INVALID_ARG, "nccl: %s on rank %d/%d: counts is NULL", op,
                                  c->rank, c->size);
    size_t t = 0;
    *equal = true;
    for (int i = 0; i < c->size; i++) {
        if (counts[i] != counts[0])
            *equal = false;
        size_t bytes;
        if (__builtin_add_overflow(t, counts[i], &t) || __builtin_mul_overflow(t, elem, &bytes))
            return c->host->set_error(TP_ERR_INVALID_ARG,
                                      "nccl: %s on rank %d/%d: the counts add up to more bytes "
                                      "than size_t holds (counts[%d] = %zu)",
                                      op, c->rank, c->size, i, counts[i]);
    }
    *total = t;
    return TP_OK;
}

static tp_status null_buffer(const nccl_comm *c, const char *op, const char *which)
{
    return c->host->set_error(TP_ERR_INVALID_ARG,
                              "nccl: %s on rank %d/%d: %s buffer is NULL but has elements to move",
                              op, c->rank, c->size, which);
}

/* A comm record around an NCCL comm that is being created. */
static nccl_comm *comm_new(nccl_engine *e, int device, cudaStream_t stream, int rank, int size)
{
    nccl_comm *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->eng = e;
    c->host = e->host;
    c->device = device;
    c->stream = stream;
    c->rank = rank;
    c->size = size;
    return c;
}

/* Device scratch for barrier, zeroed on the rank's stream. */
static tp_status scratch_alloc(nccl_comm *c)
{
    cudaError_t err = cudaMalloc((void **)&c->scratch, sizeof(float));
    if (err == cudaSuccess)
        err = cudaMemsetAsync(c->scratch, 0, sizeof(float), c->stream);
    if (err != cudaSuccess)
        return c->host->set_error(TP_ERR_DEVICE,
                                  "nccl: rank %d (GPU %d): allocating 4 bytes of barrier scratch "
                                  "failed: %s (%s)",
                                  c->rank, c->device, cudaGetErrorName(err),
                                  cudaGetErrorString(err));
    return TP_OK;
}

static void comm_release(nccl_comm *c)
{
    if (c->scratch || c->side || c->ready)
        cudaSetDevice(c->device);
    if (c->scratch)
        cudaFree(c->scratch);
    if (c->ready)
        cudaEventDestroy(c->ready);
    if (c->side)
        cudaStreamDestroy(c->side);
    free(c);
}

/* ------------------------------------------------------- communicators */

static tp_status check_env(nccl_engine *e, int rank, const tp_rank_env *env)
{
    const tp_host *h = e->host;
    if (!env || env->struct_size < END_OF(tp_rank_env, stream))
        return h->set_error(TP_ERR_INVALID_ARG,
                            "nccl: rank %d: world() needs the rank's device environment "
                            "(tp_rank_env), got %s",
                            rank, env ? "one too small" : "NULL");
    if (env->mem_kind != TP_MEM_CUDA)
        return h->set_error(TP_ERR_NOT_SUPPORTED,
                            "nccl: rank %d: its device keeps tensors in host memory, but NCCL "
                            "moves CUDA device memory only; NCCL needs the cuda device: set "
                            "TP_DEVICE=cuda (the default for TP_BACKEND=nccl), or use "
                            "TP_BACKEND=loopback or mpi with TP_DEVICE=cpu",
                            rank);
    if (env->device_index < 0 || env->device_index >= e->ndev)
        return h->set_error(TP_ERR_INVALID_ARG,
                            "nccl: rank %d: the cuda device chose GPU %d, expected 0..%d (this "
                            "process sees %d GPU(s))",
                            rank, env->device_index, e->ndev - 1, e->ndev);
    return TP_OK;
}

/* One-process mode: claim the rank's GPU, naming a duplicate before NCCL
 * would ("Duplicate GPU detected"). */
static tp_status claim_device(nccl_engine *e, int local_index, int device)
{
    int other = -1;
    pthread_mutex_lock(&e->lock);
    for (int i = 0; i < e->local_count; i++)
        if (i != local_index && e->device_of[i] == device)
            other = i;
    if (other < 0)
        e->device_of[local_index] = device;
    pthread_mutex_unlock(&e->lock);
    if (other < 0)
        return TP_OK;
    const char *forced = getenv("TP_CUDA_DEVICE");
    return e->host->set_error(
        TP_ERR_UNAVAILABLE,
        "nccl: ranks %d and %d were both given GPU %d by the cuda device%s%s%s; "
        "NCCL refuses two ranks on one GPU (\"Duplicate GPU detected\", "
        "since NCCL 2.5; NCCL_MULTI_RANK_GPU_ENABLE=1 is experimental, from "
        "2.30): run at most %d ranks, or TP_BACKEND=loopback with "
        "TP_DEVICE=cuda to put several ranks on one GPU",
        e->first_rank + other, e->first_rank + local_index, device,
        forced ? " (TP_CUDA_DEVICE=" : "", forced ? forced : "",
        forced ? " puts every rank on one GPU: unset it)" : "", e->ndev);
}

tp_status nccl_world(void *engine, int local_index, const tp_rank_env *env, void **comm, int *rank,
                     int *size)
{
    nccl_engine *e = engine;
    const tp_host *h = e->host;
    tp_status st;
    ncclUniqueId id;
    if ((st = nccl_world_id(e, e->first_rank + local_index, &id)) != TP_OK) {
        atomic_store(&e->local_failed, 1);
        return st;
    }
    if (!comm || !rank || !size || local_index < 0 || local_index >= e->local_count) {
        atomic_store(&e->local_failed, 1);
        return h->set_error(TP_ERR_INVALID_ARG,
                            "nccl: world() called with local index %d (expected 0..%d) or a NULL "
                            "output",
                            local_index, e->local_count - 1);
    }
    *comm = NULL;
    int me = e->first_rank + local_index;
    if ((st = check_env(e, me, env)) != TP_OK ||
        (!e->by_mpi && (st = claim_device(e, local_index, env->device_index)) != TP_OK)) {
        atomic_store(&e->local_failed, 1);
        return st;
    }

    nccl_comm *c = comm_new(e, env->device_index, (cudaStream_t)env->stream, me, e->world_size);
    if (!c) {
        atomic_store(&e->local_failed, 1);
        return h->set_error(TP_ERR_NO_MEMORY, "nccl: rank %d: out of memory", me);
    }
    cudaError_t err = cudaSetDevice(c->device);
    if (err != cudaSuccess) {
        st = h->set_error(TP_ERR_DEVICE, "nccl: rank %d: cudaSetDevice(%d) failed: %s (%s)", me,
                          c->device, cudaGetErrorName(err), cudaGetErrorString(err));
        goto fail;
    }
    if ((st = scratch_alloc(c)) != TP_OK)
        goto fail;

    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&c->nc, e->world_size, id, me, &cfg);
    if (r != ncclSuccess && r != ncclInProgress) {
        st = comm_fail(c, r, "ncclCommInitRankConfig");
        if (c->nc)
            comm_abort(c);
        goto fail;
    }
    if (h->debug)
        h->debug("comm", "nccl: rank %d/%d joining on GPU %d", me, e->world_size, c->device);
    st = comm_wait(c,
                   "ncclCommInitRankConfig (joining the world communicator; every rank needs "
                   "its own GPU)",
                   false, e->by_mpi ? NULL : &e->local_failed);
    if (st != TP_OK)
        goto fail;

    int n = -1, rk = -1;
    if (ncclCommCount(c->nc, &n) != ncclSuccess || ncclCommUserRank(c->nc, &rk) != ncclSuccess ||
        n != e->world_size || rk != me) {
        st = h->set_error(TP_ERR_INTERNAL,
                          "nccl: rank %d/%d: NCCL reports rank %d of %d for the new communicator",
                          me, e->world_size, rk, n);
        comm_abort(c);
        goto fail;
    }
    *comm = c;
    *rank = me;
    *size = e->world_size;
    return TP_OK;

fail:
    atomic_store(&e->local_failed, 1);
    comm_release(c);
    return st;
}

tp_status nccl_split(void *comm, int color, int key, void **newcomm, int *rank, int *size)
{
    nccl_comm *c = comm;
    tp_status st = comm_ready(c, "split");
    if (st != TP_OK)
        return st;
    if (!newcomm || !rank || !size)
        return c->host->set_error(TP_ERR_INVALID_ARG, "nccl: split on rank %d/%d: NULL output",
                                  c->rank, c->size);
    *newcomm = NULL;
    *rank = -1;
    *size = 0;
    cudaSetDevice(c->device);

    /* Prepare the child first; if that fails, still take part in the split
     * (without a color) so the other ranks are not left waiting. */
    nccl_comm *child = NULL;
    tp_status prep = TP_OK;
    if (color >= 0) {
        child = comm_new(c->eng, c->device, c->stream, c->rank, c->size); /* until known */
        if (!child)
            prep = c->host->set_error(TP_ERR_NO_MEMORY, "nccl: split on rank %d/%d: out of memory",
                                      c->rank, c->size);
        else if ((prep = scratch_alloc(child)) != TP_OK) {
            comm_release(child);
            child = NULL;
        }
    }

    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    /* In nonblocking mode NCCL writes the new handle from its own thread
     * when the split completes, so the slot lives on the heap: if we stop
     * waiting (timeout) it is leaked rather than left dangling. */
    ncclComm_t *slot = calloc(1, sizeof *slot);
    if (!slot) {
        st = c->host->set_error(TP_ERR_NO_MEMORY, "nccl: split on rank %d/%d: out of memory",
                                c->rank, c->size);
        goto fail;
    }
    ncclResult_t r = ncclCommSplit(c->nc, child ? color : NCCL_SPLIT_NOCOLOR, key, slot, &cfg);
    if (r != ncclSuccess && r != ncclInProgress) {
        st = comm_finish(c, r, "ncclCommSplit"); /* failed before starting: nothing pending */
        if (*slot)
            ncclCommAbort(*slot);
        free(slot);
        goto fail;
    }
    if ((st = comm_wait(c, "ncclCommSplit (parent)", false, NULL)) != TP_OK) {
        if (st == TP_ERR_TIMEOUT)
            slot = NULL; /* NCCL may still write it: leak, see above */
        else if (*slot)
            ncclCommAbort(*slot);
        free(slot);
        goto fail;
    }
    ncclComm_t nc = *slot;
    free(slot);
    if (!child) {
        if (nc) /* not expected for NCCL_SPLIT_NOCOLOR */
            ncclCommAbort(nc);
        return prep;
    }
    if (!nc) {
        st = c->host->set_error(TP_ERR_INTERNAL,
                                "nccl: ncclCommSplit gave rank %d/%d no communicator for color %d",
                                c->rank, c->size, color);
        goto fail;
    }
    child->nc = nc;
    if ((st = comm_wait(child, "ncclCommSplit (new communicator)", false, NULL)) != TP_OK)
        goto fail;
    if (ncclCommUserRank(nc, &child->rank) != ncclSuccess ||
        ncclCommCount(nc, &child->size) != ncclSuccess) {
        st = c->host->set_error(TP_ERR_INTERNAL,
                                "nccl: rank %d/%d: could not read rank and size of the split "
                                "communicator",
                                c->rank, c->size);
        comm_abort(child);
        goto fail;
    }
    if (c->host->debug)
        c->host->debug("comm", "nccl: split: rank %d/%d -> color %d rank %d/%d", c->rank, c->size,
                       color, child->rank, child->size);
    *newcomm = child;
    *rank = child->rank;
    *size = child->size;
    return TP_OK;

fail:
    if (child)
        comm_release(child);
    return st;
}

void nccl_comm_free(void *comm)
{
    nccl_comm *c = comm;
    if (!c)
        return;
    if (c->nc && !c->broken) {
        cudaSetDevice(c->device);
        ncclResult_t r = ncclCommFinalize(c->nc);
        tp_status st = TP_ERR_COMM;
        if (r == ncclSuccess || r == ncclInProgress)
            st = comm_wait(c, "ncclCommFinalize", false, NULL);
        if (st == TP_OK && c->nc)
            ncclCommDestroy(c->nc);
        else if (c->nc)
            ncclCommAbort(c->nc);
        c->nc = NULL;
    }
    comm_release(c);
}

/* --------------------------------------------------------- collectives */

/* Each collective in two halves: check the arguments, then enqueue it on
 * `stream` (the rank's stream for the blocking call, the comm's side stream
 * for the nonblocking one). *r is NCCL's result; *what names the call;
 * *empty: nothing to move (counts 0), nothing was enqueued. */
typedef struct nccl_enq {
    cudaStream_t stream;
    ncclResult_t r;
    const char *what;
    bool empty;
} nccl_enq;

static tp_status enq_all_reduce(nccl_comm *c, const char *op, const void *send, void *recv,
                                size_t count, tp_dtype dt, tp_redop rop, nccl_enq *q)
{
    ncclDataType_t ndt;
    ncclRedOp_t nop;
    size_t elem;
    tp_status st;
    if ((st = comm_ready(c, op)) != TP_OK || (st = map_dtype(c, op, dt, &ndt, &elem)) != TP_OK ||
        (st = map_op(c, op, rop, &nop)) != TP_OK)
        return st;
    q->empty = count == 0;
    if (q->empty)
        return TP_OK;
    if (!send || !recv)
        return null_buffer(c, op, !send ? "send" : "recv");
    q->what = "ncclAllReduce";
    q->r = ncclAllReduce(send, recv, count, ndt, nop, c->nc, q->stream);
    return TP_OK;
}

static tp_status enq_all_gather(nccl_comm *c, const char *op, const void *send, void *recv,
                                const size_t *counts, tp_dtype dt, nccl_enq *q)
{
    ncclDataType_t ndt;
    size_t elem, total;
    bool equal;
    tp_status st;
    if ((st = comm_ready(c, op)) != TP_OK || (st = map_dtype(c, op, dt, &ndt, &elem)) != TP_OK ||
        (st = block_sizes(c, op, counts, elem, &total, &equal)) != TP_OK)
        return st;
    q->empty = total == 0;
    if (q->empty)
        return TP_OK;
    if (!recv || (!send && counts[c->rank] > 0))
        return null_buffer(c, op, !recv ? "recv" : "send");
    if (equal) {
        q->what = "ncclAllGather";
        q->r = ncclAllGather(send, recv, counts[0], ndt, c->nc, q->stream);
        return TP_OK;
    }
    /* uneven: root i broadcasts its block into offset i of every recv */
    ncclResult_t first = ncclGroupStart();
    size_t off = 0;
    for (int i = 0; i < c->size && first == ncclSuccess; i++) {
        if (counts[i] > 0) {
            /* sendbuff is read on the root only; elsewhere pass a valid pointer */
            char *dst = (char *)recv + off * elem;
            ncclResult_t r =
                ncclBroadcast(i == c->rank ? send : dst, dst, counts[i], ndt, i, c->nc, q->stream);
            if (r != ncclSuccess && r != ncclInProgress)
                first = r;
        }
        off += counts[i];
    }
    ncclResult_t end = ncclGroupEnd();
    q->what = "all_gather (uneven: grouped ncclBroadcast)";
    q->r = first != ncclSuccess ? first : end;
    return TP_OK;
}

static tp_status enq_reduce_scatter(nccl_comm *c, const char *op, const void *send, void *recv,
                                    const size_t *counts, tp_dtype dt, tp_redop rop, nccl_enq *q)
{
    ncclDataType_t ndt;
    ncclRedOp_t nop;
    size_t elem, total;
    bool equal;
    tp_status st;
    if ((st = comm_ready(c, op)) != TP_OK || (st = map_dtype(c, op, dt, &ndt, &elem)) != TP_OK ||
        (st = map_op(c, op, rop, &nop)) != TP_OK ||
        (st = block_sizes(c, op, counts, elem, &total, &equal)) != TP_OK)
        return st;
    q->empty = total == 0;
    if (q->empty)
        return TP_OK;
    if (!send || (!recv && counts[c->rank] > 0))
        return null_buffer(c, op, !send ? "send" : "recv");
    if (equal) {
        q->what = "ncclReduceScatter";
        q->r = ncclReduceScatter(send, recv, counts[0], ndt, nop, c->nc, q->stream);
        return TP_OK;
    }
    /* uneven: block i is reduced onto root i; recv is read only on the root */
    ncclResult_t first = ncclGroupStart();
    size_t off = 0;
    for (int i = 0; i < c->size && first == ncclSuccess; i++) {
        if (counts[i] > 0) {
            /* recvbuff is written on the root only; elsewhere pass a valid pointer */
            const char *src = (const char *)send + off * elem;
            void *dst = i == c->rank ? recv : recv ? recv : (void *)src;
            ncclResult_t r = ncclReduce(src, dst, counts[i], ndt, nop, i, c->nc, q->stream);
            if (r != ncclSuccess && r != ncclInProgress)
                first = r;
        }
        off += counts[i];
    }
    ncclResult_t end = ncclGroupEnd();
    q->what = "reduce_scatter (uneven: grouped ncclReduce)";
    q->r = first != ncclSuccess ? first : end;
    return TP_OK;
}

/* The blocking call: enqueued on the rank's stream, then waited for. */
static tp_status finish_blocking(nccl_comm *c, tp_status st, const nccl_enq *q)
{
    return st != TP_OK || q->empty ? st : comm_finish(c, q->r, q->what);
}

tp_status nccl_all_reduce(void *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                          tp_redop op)
{
    nccl_comm *c = comm;
    nccl_enq q = {.stream = c->stream};
    return finish_blocking(c, enq_all_reduce(c, "all_reduce", send, recv, count, dt, op, &q), &q);
}

tp_status nccl_all_gather(void *comm, const void *send, void *recv, const size_t *counts,
                          tp_dtype dt)
{
    nccl_comm *c = comm;
    nccl_enq q = {.stream = c->stream};
    return finish_blocking(c, enq_all_gather(c, "all_gather", send, recv, counts, dt, &q), &q);
}

tp_status nccl_reduce_scatter(void *comm, const void *send, void *recv, const size_t *counts,
                              tp_dtype dt, tp_redop op)
{
    nccl_comm *c = comm;
    nccl_enq q = {.stream = c->stream};
    return finish_blocking(
        c, enq_reduce_scatter(c, "reduce_scatter", send, recv, counts, dt, op, &q), &q);
}

tp_status nccl_broadcast(void *comm, void *buf, size_t count, tp_dtype dt, int root)
{
    nccl_comm *c = comm;
    ncclDataType_t ndt;
    size_t elem;
    tp_status st;
    if ((st = comm_ready(c, "broadcast")) != TP_OK ||
        (st = map_dtype(c, "broadcast", dt, &ndt, &elem)) != TP_OK)
        return st;
    if (root < 0 || root >= c->size)
        return c->host->set_error(TP_ERR_INVALID_ARG,
                                  "nccl: broadcast on rank %d/%d: root %d, expected 0..%d", c->rank,
                                  c->size, root, c->size - 1);
    if (count == 0)
        return TP_OK;
    if (!buf)
        return null_buffer(c, "broadcast", "the");
    return comm_finish(c, ncclBroadcast(buf, buf, count, ndt, root, c->nc, c->stream),
                       "ncclBroadcast");
}

tp_status nccl_barrier(void *comm)
{
    nccl_comm *c = comm;
    tp_status st = comm_ready(c, "barrier");
    if (st != TP_OK)
        return st;
    /* every rank's stream reaches this point and the 1-float sum completes */
    return comm_finish(
        c, ncclAllReduce(c->scratch, c->scratch, 1, ncclFloat32, ncclSum, c->nc, c->stream),
        "barrier (1-element ncclAllReduce)");
}

/* ---------------------------------------------------------- nonblocking */

typedef struct nccl_req {
    cudaEvent_t done; /* NULL: nothing was enqueued (counts 0) */
    const char *what;
} nccl_req;

static tp_status cuda_fail(nccl_comm *c, const char *what, cudaError_t e)
{
    return c->host->set_error(TP_ERR_DEVICE, "nccl: %s on rank %d/%d (GPU %d): %s (%s)", what,
                              c->rank, c->size, c->device, cudaGetErrorName(e),
                              cudaGetErrorString(e));
}

/* The side stream waits for what the rank's stream has enqueued so far. */
static tp_status nb_prepare(nccl_comm *c, nccl_enq *q)
{
    cudaError_t e = cudaSetDevice(c->device);
    if (e == cudaSuccess && !c->side)
        e = cudaStreamCreateWithFlags(&c->side, cudaStreamNonBlocking);
    if (e == cudaSuccess && !c->ready)
        e = cudaEventCreateWithFlags(&c->ready, cudaEventDisableTiming);
    if (e == cudaSuccess)
        e = cudaEventRecord(c->ready, c->stream);
    if (e == cudaSuccess)
        e = cudaStreamWaitEvent(c->side, c->ready, 0);
    if (e != cudaSuccess)
        return cuda_fail(c, "preparing the side stream of a nonblocking collective", e);
    q->stream = c->side;
    return TP_OK;
}

/* After enqueueing on the side stream: NCCL's result, the comm out of
 * ncclInProgress, then the request's event. */
static tp_status nb_start(nccl_comm *c, tp_status st, const nccl_enq *q, void **req)
{
    if (st != TP_OK)
        return st;
    nccl_req *r = calloc(1, sizeof *r);
    if (!r)
        return c->host->set_error(TP_ERR_NO_MEMORY, "nccl: out of memory for a request");
    r->what = q->what;
    if (!q->empty) {
        if (q->r != ncclSuccess && q->r != ncclInProgress) {
            free(r);
            return comm_finish(c, q->r, q->what); /* reports it, aborts if the comm broke */
        }
        if ((st = comm_wait(c, q->what, false, NULL)) != TP_OK) {
            free(r);
            return st;
        }
        cudaError_t e = cudaEventCreateWithFlags(&r->done, cudaEventDisableTiming);
        if (e == cudaSuccess)
            e = cudaEventRecord(r->done, c->side);
        if (e != cudaSuccess) {
            if (r->done)
                cudaEventDestroy(r->done);
            free(r);
            return cuda_fail(c, "recording the event of a nonblocking collective", e);
        }
    }
    *req = r;
    return TP_OK;
}

tp_status nccl_iall_reduce(void *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                           tp_redop op, void **req)
{
    nccl_comm *c = comm;
    nccl_enq q = {0};
    tp_status st = nb_prepare(c, &q);
    if (st == TP_OK)
        st = enq_all_reduce(c, "iall_reduce", send, recv, count, dt, op, &q);
    return nb_start(c, st, &q, req);
}

tp_status nccl_iall_gather(void *comm, const void *send, void *recv, const size_t *counts,
                           tp_dtype dt, void **req)
{
    nccl_comm *c = comm;
    nccl_enq q = {0};
    tp_status st = nb_prepare(c, &q);
    if (st == TP_OK)
        st = enq_all_gather(c, "iall_gather", send, recv, counts, dt, &q);
    return nb_start(c, st, &q, req);
}

tp_status nccl_ireduce_scatter(void *comm, const void *send, void *recv, const size_t *counts,
                               tp_dtype dt, tp_redop op, void **req)
{
    nccl_comm *c = comm;
    nccl_enq q = {0};
    tp_status st = nb_prepare(c, &q);
    if (st == TP_OK)
        st = enq_reduce_scatter(c, "ireduce_scatter", send, recv, counts, dt, op, &q);
    return nb_start(c, st, &q, req);
}

/* One look: *done once the event has happened; an asynchronous NCCL error
 * (a peer failed) or a CUDA error ends the request and aborts the comm. */
static tp_status nb_query(nccl_comm *c, nccl_req *r, int *done)
{
    *done = 1;
    if (!r->done)
        return TP_OK;
    if (c->broken || !c->nc)
        return comm_ready(c, r->what);
    ncclResult_t state = ncclSuccess;
    ncclResult_t nr = ncclCommGetAsyncError(c->nc, &state);
    if (nr != ncclSuccess)
        state = nr;
    if (state != ncclSuccess && state != ncclInProgress) {
        tp_status st = comm_fail(c, state, r->what);
        comm_abort(c);
        return st;
    }
    cudaError_t e = cudaEventQuery(r->done);
    if (e == cudaErrorNotReady) {
        *done = 0;
        return TP_OK;
    }
    if (e != cudaSuccess) {
        tp_status st = cuda_fail(c, r->what, e);
        comm_abort(c);
        return st;
    }
    /* the rank's later kernels run after the result */
    e = cudaStreamWaitEvent(c->stream, r->done, 0);
    return e == cudaSuccess ? TP_OK : cuda_fail(c, r->what, e);
}

tp_status nccl_req_test(void *comm, void *req, int *done)
{
    return nb_query(comm, req, done);
}

tp_status nccl_req_wait(void *comm, void *req)
{
    nccl_comm *c = comm;
    nccl_req *r = req;
    double t0 = nccl_now();
    for (;;) {
        int done = 0;
        tp_status st = nb_query(c, r, &done);
        if (done || st != TP_OK)
            return st;
        if (nccl_now() - t0 > c->eng->timeout_s) {
            comm_abort(c);
            return c->host->set_error(TP_ERR_TIMEOUT,
                                      "nccl: nonblocking %s did not complete within %.0f s "
                                      "(TP_TIMEOUT_S) on rank %d/%d (GPU %d): a peer rank is "
                                      "missing, stuck or dead, or the ranks issued collectives in "
                                      "different orders; the communicator was aborted",
                                      r->what, c->eng->timeout_s, c->rank, c->size, c->device);
        }
        nccl_backoff(t0);
    }
}

void nccl_req_free(void *comm, void *req)
{
    (void)comm;
    nccl_req *r = req;
    if (r && r->done)
        cudaEventDestroy(r->done);
    free(r);
}
