/*
 * cuda-error.c — error reporting and the argument checks every op of the
 * cuda device shares. A leaf: the other files call it, it calls none of
 * them (only the CUDA runtime, for error names).
 */
#include <tp/tp-plugin-util.h>

#include "cuda-internal.h"

/* Set by every open() (rank threads open concurrently, all with the same
 * host of the current context), read atomically. */
const tp_host *cuda_host;

TP_UTIL_DEFINE_ERROR(cuda_err, __atomic_load_n(&cuda_host, __ATOMIC_ACQUIRE), "cuda device")

tp_status cuda_rt_err(cudaError_t e, const char *op, const char *what)
{
    if (e == cudaErrorMemoryAllocation)
        return cuda_err(TP_ERR_NO_MEMORY, "%s: %s: out of GPU memory (%s); reduce the model or "
                        "batch size, or use more ranks", op, what, cudaGetErrorString(e));
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
    if (!dev)
        return cuda_err(TP_ERR_INVALID_ARG, "%s: device handle is NULL (was open() successful?)",
                        op);
    return TP_OK;
}

tp_status cuda_check_float_dt(tp_dtype dt, const char *op)
{
    if (dt == TP_F32 || dt == TP_BF16 || dt == TP_F16)
        return TP_OK;
    if ((unsigned)dt >= TP_DTYPE_COUNT_)
        return cuda_err(TP_ERR_INVALID_ARG, "%s: dtype %d is not a tp_dtype", op, (int)dt);
    return cuda_err(TP_ERR_NOT_SUPPORTED, "%s: dtype %s is not supported (expected f32, bf16 "
                    "or f16)", op, tp_util_dtype_name(dt));
}

tp_status cuda_check_count(int64_t v, const char *op, const char *what)
{
    if (v < 0)
        return cuda_err(TP_ERR_INVALID_ARG, "%s: %s = %lld, expected >= 0", op, what,
                        (long long)v);
    return TP_OK;
}

tp_status cuda_check_dims(const char *op, int64_t rows, int64_t cols, const char *rname,
                          const char *cname)
{
    tp_status st;

    if ((st = cuda_check_count(rows, op, rname)) || (st = cuda_check_count(cols, op, cname)))
        return st;
    if (cols > 0 && rows > (INT64_MAX / 8) / cols)
        return cuda_err(TP_ERR_INVALID_ARG, "%s: %s %lld x %s %lld elements overflow", op, rname,
                        (long long)rows, cname, (long long)cols);
    return TP_OK;
}

tp_status cuda_check_ptr(const void *p, int64_t count, const char *op, const char *what)
{
    if (!p && count > 0)
        return cuda_err(TP_ERR_INVALID_ARG, "%s: %s is NULL but %lld elements are needed", op,
                        what, (long long)count);
    return TP_OK;
}
