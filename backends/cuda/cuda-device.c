/* SPDX-License-Identifier: MIT */
/*
 * cuda-device.c — the cuda device's probe, per-rank context (GPU, stream,
 * cuBLAS and cuBLASLt handles, peer access), memory, pinned host memory,
 * copies and events.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda-internal.h"

/* Can this plugin run here? No state is kept. */
int cuda_probe(char *reason, size_t len)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);

    if (e == cudaSuccess && n > 0)
        return 1;
    if (e == cudaErrorInsufficientDriver)
        snprintf(reason, len,
                 "driver too old (cudaErrorInsufficientDriver): the NVIDIA driver "
                 "is missing or older than CUDA runtime %d.%d this plugin was built with",
                 CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10);
    else if (e == cudaErrorNoDevice || (e == cudaSuccess && n == 0))
        snprintf(reason, len, "no CUDA device (cudaGetDeviceCount: %s)",
                 e == cudaSuccess ? "0 devices" : "cudaErrorNoDevice");
    else
        snprintf(reason, len, "no usable CUDA device: cudaGetDeviceCount returned %d (%s: %s)",
                 (int)e, cudaGetErrorName(e), cudaGetErrorString(e));
    return 0;
}

/* Which GPU a rank uses: TP_CUDA_DEVICE, else its index among this
 * process's ranks, else (one rank per process, e.g. mpirun) the launcher's
 * local rank; modulo the GPU count. */
static int pick_device(const tp_device_args *args, int count)
{
    static const char *local_vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID",
                                       "SLURM_LOCALID", "LOCAL_RANK"};
    const char *e = getenv("TP_CUDA_DEVICE");
    int idx = 0;

    if (e && *e)
        return atoi(e);
    if (args && args->local_count > 1) {
        idx = args->local_index;
    } else {
        for (size_t i = 0; i < sizeof local_vars / sizeof *local_vars; i++)
            if ((e = getenv(local_vars[i])) && *e) {
                idx = atoi(e);
                break;
            }
    }
    return count > 0 ? (idx < 0 ? 0 : idx) % count : 0;
}

#define LT_WORKSPACE (32u << 20) /* cuBLASLt workspace per rank */

/* Let kernels on this rank's GPU reach the memory of every other GPU of the
 * process that supports it, so reduce can combine buffers of ranks on other
 * GPUs (the loopback comm reduces peers' buffers in place). Peer access is
 * a property of the GPU's context, shared by every rank on it: a second
 * rank finds it already enabled. Without peer access (no NVLink/PCIe P2P
 * between the two GPUs, or P2P disabled) a kernel touching the other GPU's
 * memory would fault and poison the context, so reduce checks where its
 * buffers live and refuses those it cannot reach (TP_ERR_NOT_SUPPORTED). */
static void enable_peers(cuda_dev *d, int count)
{
    if (d->device < CUDA_MAX_GPUS)
        d->peer[d->device] = 1;
    for (int j = 0; j < count && j < CUDA_MAX_GPUS; j++) {
        int can = 0;
        cudaError_t e;

        if (j == d->device)
            continue;
        if ((e = cudaDeviceCanAccessPeer(&can, d->device, j)) != cudaSuccess) {
            cudaGetLastError();
            if (d->host->debug)
                d->host->debug("device",
                               "cuda device: rank %d: cudaDeviceCanAccessPeer(%d, %d): "
                               "%s",
                               d->rank, d->device, j, cudaGetErrorName(e));
            continue;
        }
        if (!can)
            continue;
        e = cudaDeviceEnablePeerAccess(j, 0);
        if (e == cudaErrorPeerAccessAlreadyEnabled) {
            cudaGetLastError(); /* not sticky, but would be reported by the next launch check */
            e = cudaSuccess;
        }
        if (e != cudaSuccess) {
            cudaGetLastError();
            if (d->host->debug)
                d->host->debug("device",
                               "cuda device: rank %d: peer access GPU %d -> %d not "
                               "enabled: %s",
                               d->rank, d->device, j, cudaGetErrorName(e));
            continue;
        }
        d->peer[j] = 1;
    }
}

tp_status cuda_open(const tp_host *host, const tp_device_args *args, void **dev, tp_rank_env *env)
{
    cuda_dev *d;
    cudaError_t e;
    cublasStatus_t bs;
    int count = 0;
    const char *tf32 = getenv("TP_CUDA_TF32");
    char why[256];

    if (host) /* the current context's: a new tp_init may bring a new host */
        __atomic_store_n(&cuda_host, host, __ATOMIC_RELEASE);
    if (!host || !dev || !env)
        return cuda_err(TP_ERR_INVALID_ARG, "open: host, dev and env must not be NULL");
    if (env->struct_size < sizeof(tp_rank_env))
        return cuda_err(TP_ERR_INVALID_ARG, "open: env->struct_size %zu < %zu (core too old?)",
                        env->struct_size, sizeof(tp_rank_env));
    if (!cuda_probe(why, sizeof why))
        return cuda_err(TP_ERR_UNAVAILABLE, "open: %s", why);
    cudaGetDeviceCount(&count);
    d = calloc(1, sizeof *d);
    if (!d)
        return cuda_err(TP_ERR_NO_MEMORY, "open: out of memory for the device context");
    d->host = host;
    d->rank = args ? args->world_rank : 0;
    d->device = pick_device(args, count);
    d->tf32 = tf32 && strcmp(tf32, "1") == 0;
    if (d->device >= count) {
        int want = d->device;
        free(d);
        return cuda_err(TP_ERR_INVALID_ARG,
                        "open: TP_CUDA_DEVICE=%d but only %d GPU(s) are "
                        "visible",
                        want, count);
    }
    /* The ordinal is per thread: every op runs on this rank's thread. */
    if ((e = cudaSetDevice(d->device)) != cudaSuccess) {
        free(d);
        return cuda_rt_err(e, "open", "cudaSetDevice");
    }
    if ((e = cudaStreamCreateWithFlags(&d->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        free(d);
        return cuda_rt_err(e, "open", "cudaStreamCreateWithFlags");
    }
    if ((bs = cublasCreate(&d->blas)) != CUBLAS_STATUS_SUCCESS) {
        cudaStreamDestroy(d->stream);
        free(d);
        return cuda_err(bs == CUBLAS_STATUS_ALLOC_FAILED ? TP_ERR_NO_MEMORY : TP_ERR_DEVICE,
                        "open: cublasCreate failed: %s", cublasGetStatusString(bs));
    }
    /* bf16/f16 GEMMs accumulate in f32, split-K partial sums included
     * (cuBLAS may otherwise reduce them in the output type) */
    cublasMath_t math =
        (cublasMath_t)((d->tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH) |
                       CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION);
    if ((bs = cublasSetStream(d->blas, d->stream)) != CUBLAS_STATUS_SUCCESS ||
        (bs = cublasSetMathMode(d->blas, math)) != CUBLAS_STATUS_SUCCESS) {
        cuda_close(d);
        return cuda_err(TP_ERR_DEVICE, "open: cuBLAS setup failed: %s", cublasGetStatusString(bs));
    }
    if ((bs = cublasLtCreate(&d->lt)) != CUBLAS_STATUS_SUCCESS) {
        d->lt = NULL;
        cuda_close(d);
        return cuda_err(bs == CUBLAS_STATUS_ALLOC_FAILED ? TP_ERR_NO_MEMORY : TP_ERR_DEVICE,
                        "open: cublasLtCreate failed: %s", cublasGetStatusString(bs));
    }
    /* Without a workspace cuBLASLt still works, with fewer algorithms. */
    if ((e = cudaMalloc(&d->lt_ws, LT_WORKSPACE)) == cudaSuccess) {
        d->lt_ws_size = LT_WORKSPACE;
    } else {
        cudaGetLastError();
        d->lt_ws = NULL;
        if (host->debug)
            host->debug("device",
                        "cuda device: rank %d: no %u-byte cuBLASLt workspace (%s); "
                        "fused GEMMs run without one",
                        d->rank, LT_WORKSPACE, cudaGetErrorName(e));
    }
    enable_peers(d, count);
    if (host->debug)
        host->debug("device", "cuda device: rank %d on GPU %d of %d%s", d->rank, d->device, count,
                    d->tf32 ? ", TF32 GEMMs" : "");
    env->mem_kind = TP_MEM_CUDA;
    env->device_index = d->device;
    env->stream = (void *)d->stream;
    *dev = d;
    return TP_OK;
}

void cuda_close(void *dev)
{
    cuda_dev *d = dev;

    if (!d)
        return;
    cudaSetDevice(d->device);
    cudaStreamSynchronize(d->stream);
    if (d->blas)
        cublasDestroy(d->blas);
    if (d->lt)
        cublasLtDestroy(d->lt);
    if (d->lt_ws)
        cudaFree(d->lt_ws);
    cudaStreamDestroy(d->stream);
    free(d);
}

tp_status cuda_alloc(void *dev, size_t bytes, void **ptr)
{
    cudaError_t e;
    void *p = NULL;

    if (cuda_check_dev(dev, "alloc"))
        return TP_ERR_INVALID_ARG;
    if (!ptr)
        return cuda_err(TP_ERR_INVALID_ARG, "alloc: ptr is NULL");
    *ptr = NULL;
    /* cudaMalloc aligns to >= 256 bytes; size 0 still gets a real block. */
    e = cudaMalloc(&p, bytes ? bytes : 64);
    if (e != cudaSuccess || !p) {
        cudaGetLastError(); /* clear the sticky-free error state */
        if (e == cudaErrorMemoryAllocation || e == cudaSuccess)
            return cuda_err(TP_ERR_NO_MEMORY,
                            "alloc: cudaMalloc of %zu bytes on GPU %d failed: "
                            "out of GPU memory; reduce the model or batch size, or use more "
                            "ranks",
                            bytes, ((cuda_dev *)dev)->device);
        return cuda_rt_err(e, "alloc", "cudaMalloc");
    }
    *ptr = p;
    return TP_OK;
}

void cuda_free(void *dev, void *ptr)
{
    if (!ptr)
        return;
    /* the rank's queued work may still use ptr; cudaFree only "may" wait */
    if (dev)
        cudaStreamSynchronize(((cuda_dev *)dev)->stream);
    cudaFree(ptr);
}

/* Page-locked host memory for the core's staging copies. Portable: pinned
 * for every GPU of the process, since ranks on several GPUs may share it. */
tp_status cuda_host_alloc(void *dev, size_t bytes, void **ptr)
{
    cudaError_t e;
    void *p = NULL;

    if (cuda_check_dev(dev, "host_alloc"))
        return TP_ERR_INVALID_ARG;
    if (!ptr)
        return cuda_err(TP_ERR_INVALID_ARG, "host_alloc: ptr is NULL");
    *ptr = NULL;
    e = cudaHostAlloc(&p, bytes ? bytes : 64, cudaHostAllocPortable);
    if (e != cudaSuccess || !p) {
        cudaGetLastError();
        if (e == cudaErrorMemoryAllocation || e == cudaSuccess)
            return cuda_err(TP_ERR_NO_MEMORY,
                            "host_alloc: cudaHostAlloc of %zu bytes of "
                            "page-locked host memory failed: out of memory (or the locked-memory "
                            "limit, ulimit -l, is too low)",
                            bytes);
        return cuda_rt_err(e, "host_alloc", "cudaHostAlloc");
    }
    *ptr = p;
    return TP_OK;
}

void cuda_host_free(void *dev, void *ptr)
{
    if (ptr && cudaFreeHost(ptr) != cudaSuccess)
        cudaGetLastError(); /* nothing to report through a void slot */
}

static tp_status cuda_copy_args(void *dev, const char *op, const void *dst, const void *src,
                                size_t bytes)
{
    if (cuda_check_dev(dev, op))
        return TP_ERR_INVALID_ARG;
    if (bytes && (!dst || !src))
        return cuda_err(TP_ERR_INVALID_ARG, "%s: %s is NULL with %zu bytes to copy", op,
                        dst ? "source" : "destination", bytes);
    return TP_OK;
}

tp_status cuda_upload(void *dev, void *dst, const void *host_src, size_t bytes)
{
    cuda_dev *d = dev;
    cudaError_t e;
    tp_status st = cuda_copy_args(dev, "upload", dst, host_src, bytes);

    if (st != TP_OK || bytes == 0)
        return st;
    /* Ordered on the stream; waiting makes the host buffer reusable on return. */
    if ((e = cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, d->stream)) ||
        (e = cudaStreamSynchronize(d->stream)))
        return cuda_rt_err(e, "upload", "cudaMemcpyAsync host to device");
    return TP_OK;
}

tp_status cuda_download(void *dev, void *host_dst, const void *src, size_t bytes)
{
    cuda_dev *d = dev;
    cudaError_t e;
    tp_status st = cuda_copy_args(dev, "download", host_dst, src, bytes);

    if (st != TP_OK || bytes == 0)
        return st;
    if ((e = cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, d->stream)) ||
        (e = cudaStreamSynchronize(d->stream)))
        return cuda_rt_err(e, "download", "cudaMemcpyAsync device to host");
    return TP_OK;
}

tp_status cuda_copy_2d(void *dev, void *dst, size_t dpitch, const void *src, size_t spitch,
                       size_t width_bytes, size_t height)
{
    cuda_dev *d = dev;
    cudaError_t e;
    tp_status st;

    if (height && width_bytes > SIZE_MAX / height)
        return cuda_err(TP_ERR_INVALID_ARG, "copy_2d: width %zu x height %zu overflows size_t",
                        width_bytes, height);
    if ((st = cuda_copy_args(dev, "copy_2d", dst, src, width_bytes * height)))
        return st;
    if (height > 1 && (dpitch < width_bytes || spitch < width_bytes))
        return cuda_err(TP_ERR_INVALID_ARG,
                        "copy_2d: pitches must be >= width (%zu bytes), got dpitch %zu, spitch %zu",
                        width_bytes, dpitch, spitch);
    if (!width_bytes || !height)
        return TP_OK;
    /* Contiguous (one row, or rows back to back): one linear copy, which has
     * no pitch limit (cudaMemcpy2D refuses pitches past 2^31 - 1 bytes).
     * cudaMemcpyDefault: the pointers may be another GPU's (peer copies). */
    if (height == 1 || (dpitch == width_bytes && spitch == width_bytes))
        e = cudaMemcpyAsync(dst, src, width_bytes * height, cudaMemcpyDefault, d->stream);
    else
        e = cudaMemcpy2DAsync(dst, dpitch, src, spitch, width_bytes, height, cudaMemcpyDefault,
                              d->stream);
    if (e)
        return cuda_rt_err(e, "copy_2d", height == 1 ? "cudaMemcpyAsync" : "cudaMemcpy2DAsync");
    return TP_OK;
}

tp_status cuda_memset(void *dev, void *ptr, int value, size_t bytes)
{
    cuda_dev *d = dev;
    cudaError_t e;
    tp_status st = cuda_copy_args(dev, "memset", ptr, ptr, bytes);

    if (st != TP_OK || bytes == 0)
        return st;
    if ((e = cudaMemsetAsync(ptr, value, bytes, d->stream)))
        return cuda_rt_err(e, "memset", "cudaMemsetAsync");
    return TP_OK;
}

tp_status cuda_synchronize(void *dev)
{
    cudaError_t e;

    if (cuda_check_dev(dev, "synchronize"))
        return TP_ERR_INVALID_ARG;
    if ((e = cudaStreamSynchronize(((cuda_dev *)dev)->stream)))
        return cuda_rt_err(e, "synchronize", "cudaStreamSynchronize (an earlier kernel failed)");
    return TP_OK;
}

/* CUDA events for the core's device-side timing (tp_stats on the GPU's
 * clock): created on the rank's GPU (its thread's current device since
 * open), recorded on the rank's stream. */
tp_status cuda_event_create(void *dev, void **event)
{
    cudaEvent_t ev = NULL;
    cudaError_t e;

    if (cuda_check_dev(dev, "event_create"))
        return TP_ERR_INVALID_ARG;
    e = cudaEventCreateWithFlags(&ev, cudaEventDefault);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return cuda_rt_err(e, "event_create", "cudaEventCreateWithFlags");
    }
    *event = ev;
    return TP_OK;
}

tp_status cuda_event_record(void *dev, void *event)
{
    cudaError_t e = cudaEventRecord((cudaEvent_t)event, ((cuda_dev *)dev)->stream);

    if (e != cudaSuccess) {
        cudaGetLastError();
        return cuda_rt_err(e, "event_record", "cudaEventRecord");
    }
    return TP_OK;
}

tp_status cuda_event_elapsed(void *dev, const void *start, const void *stop, double *seconds)
{
    float ms = 0;
    cudaError_t e = cudaEventSynchronize((cudaEvent_t)(uintptr_t)stop);

    if (e == cudaSuccess)
        e = cudaEventElapsedTime(&ms, (cudaEvent_t)(uintptr_t)start, (cudaEvent_t)(uintptr_t)stop);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return cuda_rt_err(e, "event_elapsed", "cudaEventElapsedTime");
    }
    *seconds = 1e-3 * ms;
    (void)dev;
    return TP_OK;
}

void cuda_event_destroy(void *dev, void *event)
{
    if (event)
        cudaEventDestroy((cudaEvent_t)event);
    (void)dev;
}
