/* SPDX-License-Identifier: MIT */
/*
 * cuda-error.c — error reporting and the argument checks every op of the
 * cuda device shares. A leaf: the other files call it, it calls none of
 * them (only the CUDA runtime, for error names).
 */

#include "cuda-internal.h"

/* Set by every open() (rank threads open concurrently, all with the same
 * host of the current context), read atomically. */
const tp_host *cuda_host;

TP_UTIL_DEFINE_ERROR(cuda_err, __atomic_load_n(&cuda_host, __ATOMIC_ACQUIRE), "cuda device")

tp_status cuda_rt_err(cudaError_t e, const char *op, const char *what)
{
    if (e == cudaErrorMemoryAllocation)
        return cuda_err(TP_ERR_NO_MEMORY,
                        "%s: %s: out of GPU memory (%s); reduce the model or "
                        "batch size, or use more ranks",
                        op, what, cudaGetErrorString(e));
    return cuda_err(TP_ERR_DEVICE, "%s: %s failed: %s (%s)", op, what, cudaGetErrorName(e),
                    cudaGetErrorString(e));
}

tp_status cuda_launched(const char *op)
{
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? TP_OK : cuda_rt_err(e, op, "kernel launch");
}

tp_status cuda_check_dev(const void *dev, const char *op)
{
    return tp_util_check_dev(cuda_err, dev, op);
}

tp_status cuda_check_float_dt(tp_dtype dt, const char *op)
{
    if (dt == TP_F32 || dt == TP_BF16 || dt == TP_F16)
        return TP_OK;
    if ((unsigned)dt >= TP_DTYPE_COUNT_)
        return cuda_err(TP_ERR_INVALID_ARG, "%s: dtype %d is not a tp_dtype", op, (int)dt);
    return cuda_err(TP_ERR_NOT_SUPPORTED,
                    "%s: dtype %s is not supported (expected f32, bf16 "
                    "or f16)",
                    op, tp_util_dtype_name(dt));
}

tp_status cuda_check_count(int64_t v, const char *op, const char *what)
{
    return tp_util_check_count(cuda_err, v, op, what);
}

/* Element counts stay below 2^60: byte offsets of 8-byte elements fit in int64_t. */
tp_status cuda_check_dims(const char *op, int64_t rows, int64_t cols, const char *rname,
                          const char *cname)
{
    return tp_util_check_dims(cuda_err, op, rows, cols, rname, cname, INT64_MAX / 8);
}

tp_status cuda_check_ptr(const void *p, int64_t count, const char *op, const char *what)
{
    return tp_util_check_ptr(cuda_err, p, count, op, what);
}

tp_status cuda_check_id_range(const char *op, int64_t lo, int64_t hi)
{
    return tp_util_check_id_range(cuda_err, op, lo, hi);
}
