/* SPDX-License-Identifier: MIT */
/*
 * gemm_cublas.c — cuBLAS called directly on the cuda device's own buffers,
 * for `tp-bench gemm`'s vtable/direct ratio. Same GPU, same pointers, its
 * own handle and stream. Row-major C = A B is column-major C^T = B^T A^T,
 * so B goes first with m and n swapped (as the cuda device does).
 */
#include "gemm_cublas.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>

struct bench_cublas {
    int device;
    bool tf32;
    cudaStream_t stream;
    cublasHandle_t blas;
    char desc[400];
};

static tp_status rt_err(cudaError_t e, const char *what)
{
    return tp_set_error(TP_ERR_DEVICE, "tp-bench gemm (direct cuBLAS): %s failed: %s (%s)", what,
                        cudaGetErrorName(e), cudaGetErrorString(e));
}

tp_status bench_cublas_open(const void *vtable_buf, bench_cublas **out)
{
    struct cudaPointerAttributes attr;
    struct cudaDeviceProp prop;
    const char *tf32 = getenv("TP_CUDA_TF32");
    cublasStatus_t bs;
    cudaError_t e;
    int dev = -1;

    *out = NULL;
    if ((e = cudaGetDevice(&dev)) != cudaSuccess)
        return rt_err(e, "cudaGetDevice");
    memset(&attr, 0, sizeof attr);
    if ((e = cudaPointerGetAttributes(&attr, vtable_buf)) != cudaSuccess)
        return rt_err(e, "cudaPointerGetAttributes on a tp_dev_alloc buffer");
    if (attr.type != cudaMemoryTypeDevice || attr.device != dev)
        return tp_set_error(
            TP_ERR_DEVICE,
            "tp-bench gemm (direct cuBLAS): the vtable's buffer %p is %s of GPU %d, "
            "expected device memory of GPU %d (this thread's current device); is "
            "TP_DEVICE a CUDA device that selects its GPU on the rank's thread?",
            vtable_buf, attr.type == cudaMemoryTypeDevice ? "device memory" : "not device memory",
            attr.device, dev);
    if ((e = cudaGetDeviceProperties(&prop, dev)) != cudaSuccess)
        return rt_err(e, "cudaGetDeviceProperties");

    bench_cublas *cb = calloc(1, sizeof *cb);
    if (!cb)
        return tp_set_error(TP_ERR_NO_MEMORY, "tp-bench gemm (direct cuBLAS): out of host memory");
    cb->device = dev;
    cb->tf32 = tf32 && strcmp(tf32, "1") == 0;
    if ((e = cudaStreamCreateWithFlags(&cb->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        free(cb);
        return rt_err(e, "cudaStreamCreateWithFlags");
    }
    if ((bs = cublasCreate(&cb->blas)) != CUBLAS_STATUS_SUCCESS) {
        cudaStreamDestroy(cb->stream);
        free(cb);
        return tp_set_error(TP_ERR_DEVICE, "tp-bench gemm (direct cuBLAS): cublasCreate failed: %s",
                            cublasGetStatusString(bs));
    }
    if ((bs = cublasSetStream(cb->blas, cb->stream)) != CUBLAS_STATUS_SUCCESS ||
        (bs = cublasSetMathMode(cb->blas,
                                cb->tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH)) !=
            CUBLAS_STATUS_SUCCESS) {
        bench_cublas_close(cb);
        return tp_set_error(TP_ERR_DEVICE, "tp-bench gemm (direct cuBLAS): cuBLAS setup failed: %s",
                            cublasGetStatusString(bs));
    }
    snprintf(cb->desc, sizeof cb->desc, "GPU %d (%s), cublasGemmEx, f32 compute%s", dev, prop.name,
             cb->tf32 ? " (TF32 for f32, TP_CUDA_TF32=1)" : "");
    *out = cb;
    return TP_OK;
}

void bench_cublas_close(bench_cublas *cb)
{
    if (!cb)
        return;
    cudaStreamSynchronize(cb->stream);
    cublasDestroy(cb->blas);
    cudaStreamDestroy(cb->stream);
    free(cb);
}

const char *bench_cublas_describe(const bench_cublas *cb)
{
    return cb ? cb->desc : "";
}

tp_status bench_cublas_gemm(bench_cublas *cb, tp_dtype dt, int64_t n, const void *a, const void *b,
                            void *c, int reps)
{
    cudaDataType_t type;
    cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
    const float alpha = 1.0f, beta = 0.0f;

    switch (dt) {
        case TP_F32:
            type = CUDA_R_32F;
            if (cb->tf32)
                compute = CUBLAS_COMPUTE_32F_FAST_TF32;
            break;
        case TP_BF16: type = CUDA_R_16BF; break;
        case TP_F16: type = CUDA_R_16F; break;
        default:
            return tp_set_error(TP_ERR_NOT_SUPPORTED,
                                "tp-bench gemm (direct cuBLAS): dtype %s, expected "
                                "f32, bf16 or f16",
                                tp_dtype_name(dt));
    }
    if (n < 1 || n > INT32_MAX)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "tp-bench gemm (direct cuBLAS): n = %lld, expected 1..%d", (long long)n,
                            INT32_MAX);
    for (int r = 0; r < reps; r++) {
        cublasStatus_t bs = cublasGemmEx(cb->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)n, (int)n, (int)n,
                                         &alpha, b, type, (int)n, a, type, (int)n, &beta, c, type,
                                         (int)n, compute, CUBLAS_GEMM_DEFAULT);
        if (bs != CUBLAS_STATUS_SUCCESS)
            return tp_set_error(TP_ERR_DEVICE,
                                "tp-bench gemm (direct cuBLAS): cublasGemmEx (%s, n %lld) "
                                "failed: %s",
                                tp_dtype_name(dt), (long long)n, cublasGetStatusString(bs));
    }
    return TP_OK;
}

tp_status bench_cublas_sync(bench_cublas *cb)
{
    cudaError_t e = cudaStreamSynchronize(cb->stream);
    return e == cudaSuccess ? TP_OK : rt_err(e, "cudaStreamSynchronize");
}
