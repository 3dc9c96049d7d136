/* SPDX-License-Identifier: MIT */
/*
 * cuda-kernels.cu — element-wise kernels of the cuda device: GEMM's k = 0
 * scaling, bias, GeLU, axpby, embedding, AdamW and reduce. f32 compute for every
 * storage type; per-column sums run over rows in ascending order, one
 * thread per column, so they are deterministic without atomics.
 */
#include "cuda-common.cuh"

#define FOR_EACH(i, n)                                                                             \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n);                      \
         i += (int64_t)gridDim.x * blockDim.x)

/* ---------------------------------------------------------- gemm, k = 0 */

template <typename T>
__global__ void k_gemm_scale(T *c, int64_t m, int64_t n, float beta, int64_t ldc, int64_t stride,
                             int64_t batch)
{
    FOR_EACH(i, m * n * batch)
    {
        int64_t b = i / (m * n), r = i / n % m, col = i % n;
        int64_t at = b * stride + r * ldc + col;
        stf(c, at, beta == 0.0f ? 0.0f : beta * ldf(c, at));
    }
}

extern "C" tp_status cuda_gemm_scale(cuda_dev *d, tp_dtype dt, int64_t m, int64_t n, float beta,
                                     void *c, int64_t ldc, int64_t stride_c, int64_t batch)
{
    TP_DISPATCH(dt, (k_gemm_scale<T><<<grid_for(m * n * batch), THREADS, 0, d->stream>>>(
                        (T *)c, m, n, beta, ldc, stride_c, batch)));
    return cuda_launched("gemm (k = 0)");
}

/* ----------------------------------------------------------------- bias */

template <typename T> __global__ void k_bias_add(T *y, const T *bias, int64_t rows, int64_t cols)
{
    FOR_EACH(i, rows * cols)
    stf(y, i, ldf(y, i) + ldf(bias, i % cols));
}

extern "C" tp_status cuda_bias_add(void *dev, tp_dtype dt, int64_t rows, int64_t cols, void *y,
                                   const void *bias)
{
    const char *op = "bias_add";
    cuda_dev *d = (cuda_dev *)dev;
    tp_status st;

    if ((st = cuda_check_dev(dev, op)) || (st = cuda_check_float_dt(dt, op)) ||
        (st = cuda_check_dims(op, rows, cols, "rows", "cols")) ||
        (st = cuda_check_ptr(y, rows * cols, op, "y")) ||
        (st = cuda_check_ptr(bias, rows > 0 ? cols : 0, op, "bias")))
        return st;
    if (rows * cols == 0)
        return TP_OK;
    TP_DISPATCH(dt, (k_bias_add<T><<<grid_for(rows * cols), THREADS, 0, d->stream>>>(
                        (T *)y, (const T *)bias, rows, cols)));
    return cuda_launched(op);
}

/* db[c] += sum over r ascending of dy[r, c]: one thread per column. */
template <typename T> __global__ void k_bias_grad(const T *dy, T *db, int64_t rows, int64_t cols)
{
    FOR_EACH(c, cols)
    {
        float acc = 0.0f;
        for (int64_t r = 0; r < rows; r++)
            acc += ldf(dy, r * cols + c);
        stf(db, c, ldf(db, c) + acc);
    }
}

extern "C" tp_status cuda_bias_grad(void *dev, tp_dtype dt, int64_t rows, int64_t cols,
                                    const void *dy, void *db)
{
    const char *op = "bias_grad";
    cuda_dev *d = (cuda_dev *)dev;
    tp_status st;

    if ((st = cuda_check_dev(dev, op)) || (st = cuda_check_float_dt(dt, op)) ||
        (st = cuda_check_dims(op, rows, cols, "rows", "cols")) ||
        (st = cuda_check_ptr(dy, rows * cols, op, "dy")) ||
        (st = cuda_check_ptr(db, cols, op, "db")))
        return st;
    if (cols == 0)
        return TP_OK;
    TP_DISPATCH(dt, (k_bias_grad<T><<<grid_for(cols), THREADS, 0, d->stream>>>(
                        (const T *)dy, (T *)db, rows, cols)));
    return cuda_launched(op);
}

/* ----------------------------------------------------------------- GeLU */

#define GELU_RSQRT2   0.70710678118654752440f
#define GELU_RSQRT2PI 0.39894228040143267794f
#define GELU_SQRT2_PI 0.79788456080286535588f
#define GELU_C        0.044715f

template <typename T> __global__ void k_gelu(const T *x, T *y, int64_t n, int tanh_approx)
{
    FOR_EACH(i, n)
    {
        float v = ldf(x, i);
        float f =
            tanh_approx ? tanhf(GELU_SQRT2_PI * (v + GELU_C * v * v * v)) : erff(v * GELU_RSQRT2);
        stf(y, i, 0.5f * v * (1.0f + f));
    }
}

template <typename T>
__global__ void k_gelu_bwd(const T *x, const T *dy, T *dx, int64_t n, int tanh_approx)
{
    FOR_EACH(i, n)
    {
        float v = ldf(x, i), g;
        if (tanh_approx) {
            float t = tanhf(GELU_SQRT2_PI * (v + GELU_C * v * v * v));
            g = 0.5f * (1.0f + t) +
                0.5f * v * (1.0f - t * t) * GELU_SQRT2_PI * (1.0f + 3.0f * GELU_C * v * v);
        } else {
            g = 0.5f * (1.0f + erff(v * GELU_RSQRT2)) + v * GELU_RSQRT2PI * expf(-0.5f * v * v);
        }
        stf(dx, i, ldf(dy, i) * g);
    }
}

extern "C" tp_status cuda_gelu(void *dev, tp_dtype dt, int64_t n, const void *x, void *y,
                               int tanh_approx)
{
    const char *op = "gelu";
    cuda_dev *d = (cuda_dev *)dev;
    tp_status st;

    if ((st = cuda_check_dev(dev, op)) || (st = cuda_check_float_dt(dt, op)) ||
        (st = cuda_check_count(n, op, "n")) || (st = cuda_check_ptr(x, n, op, "x")) ||
        (st = cuda_check_ptr(y, n, op, "y")))
        return st;
    if (n == 0)
        return TP_OK;
    TP_DISPATCH(dt, (k_gelu<T><<<grid_for(n), THREADS, 0, d->stream>>>((const T *)x, (T *)y, n,
                                                                       tanh_approx)));
    return cuda_launched(op);
}

extern "C" tp_status cuda_gelu_bwd(void *dev, tp_dtype dt, int64_t n, const void *x, const void *dy,
                                   void *dx, int tanh_approx)
{
    const char *op = "gelu_bwd";
    cuda_dev *d = (cuda_dev *)dev;
    tp_status st;

    if ((st = cuda_check_dev(dev, op)) || (st = cuda_check_float_dt(dt, op)) ||
        (st = cuda_check_count(n, op, "n")) || (st = cuda_check_ptr(x, n, op, "x")) ||
        (st = cuda_check_ptr(dy, n, op, "dy")) || (st = cuda_check_ptr(dx, n, op, "dx")))
        return st;
    if (n == 0)
        return TP_OK;
    TP_DISPATCH(dt, (k_gelu_bwd<T><<<grid_for(n), THREADS, 0, d->stream>>>(
                        (const T *)x, (const T *)dy, (T *)dx, n, tanh_approx)));
    return cuda_launched(op);
}

/* ---------------------------------------------------------------- axpby */

template <typename T> __global__ void k_axpby(int64_t n, float alpha, const T *x, float beta, T *y)
{
    FOR_EACH(i, n)
    stf(y, i, beta == 0.0f ? alpha * ldf(x, i) : alpha * ldf(x, i) + beta * ldf(y, i));
}

extern "C" tp_status cuda_axpby(void *dev, tp_dtype dt, int64_t n, float alpha, const void *x,
                                float beta, void *y)
{
    const char *op = "axpby";
    cuda_dev *d = (cuda_dev *)dev;
    tp_status st;

    if ((st = cuda_check_dev(dev, op)) || (st = cuda_check_float_dt(dt, op)) ||
        (st = cuda_check_count(n, op, "n")) || (st = cuda_check_ptr(x, n, op, "x")) ||
        (st = cuda_check_ptr(y, n, op, "y")))
        return st;
    if (n == 0)
        return TP_OK;
    TP_DISPATCH(dt, (k_axpby<T><<<grid_for(n), THREADS, 0, d->stream>>>(n, alpha, (const T *)x,
                                                                        beta, (T *)y)));
    return cuda_launched(op);
}

/* ------------------------------------------------------------ embedding */

template <typename T>
__global__ void k_embedding(int64_t n, int64_t dim, const int32_t *ids, int64_t lo, int64_t hi,
                            const T *table, T *out)
{
    FOR_EACH(i, n * dim)
    {
        int64_t id = ids[i / dim], c = i % dim;
        stf(out, i, id >= lo && id < hi ? ldf(table, (id - lo) * dim + c) : 0.0f);
    }
}

/* Thread (column c, part p) adds, for tokens i ascending, dout[i, c] into
 * table row ids[i] - lo when that row belongs to part p: every table element
 * has one writer and a fixed order, so no atomics are needed. */
template <typename T>
__global__ void k_embedding_bwd(int64_t n, int64_t dim, const int32_t *ids, int64_t lo, int64_t hi,
                                const T *dout, T *dtable)
{
    int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    int64_t parts = gridDim.y, p = blockIdx.y;

    if (c >= dim)
        return;
    for (int64_t i = 0; i < n; i++) {
        int64_t id = ids[i];
        if (id >= lo && id < hi && (id - lo) % parts == p) {
            int64_t at = (id - lo) * dim + c;
            stf(dtable, at, ldf(dtable, at) + ldf(dout, i * dim + c));
        }
    }
}

/* The checks embedding and embedding_bwd share; the table shard holds
 * rows [lo, hi). */
static tp_status check_embedding(const char *op, const void *dev, tp_dtype dt, int64_t n,
                                 int64_t dim, const int32_t *ids, int64_t lo, int64_t hi)
{
    return tp_util_check_embedding(cuda_err, cuda_check_float_dt, op, dev, dt, n, dim, ids, lo, hi,
                                   INT64_MAX / 8);
}

extern "C" tp_status cuda_embedding(void *dev, tp_dtype dt, int64_t n, int64_t dim,
                                    const int32_t *ids, int64_t lo, int64_t hi, const void *table,
                                    void *out)
{
    const char *op = "embedding";
    cuda_dev *d = (cuda_dev *)dev;
    tp_status st;

    if ((st = check_embedding(op, dev, dt, n, dim, ids, lo, hi)) ||
        (st = cuda_check_ptr(table, (hi - lo) * dim, op, "table")) ||
        (st = cuda_check_ptr(out, n * dim, op, "out")))
        return st;
    if (n * dim == 0)
        return TP_OK;
    TP_DISPATCH(dt, (k_embedding<T><<<grid_for(n * dim), THREADS, 0, d->stream>>>(
                        n, dim, ids, lo, hi, (const T *)table, (T *)out)));
    return cuda_launched(op);
}

extern "C" tp_status cuda_embedding_bwd(void *dev, tp_dtype dt, int64_t n, int64_t dim,
                                        const int32_t *ids, int64_t lo, int64_t hi,
                                        const void *dout, void *dtable)
{
    const char *op = "embedding_bwd";
    cuda_dev *d = (cuda_dev *)dev;
    tp_status st;
    int64_t rows = hi - lo, blocks = (dim + THREADS - 1) / THREADS;
    unsigned parts;

    if ((st = check_embedding(op, dev, dt, n, dim, ids, lo, hi)) ||
        (st = cuda_check_ptr(dout, n * dim, op, "dout")) ||
        (st = cuda_check_ptr(dtable, rows * dim, op, "dtable")))
        return st;
    if (n == 0 || dim == 0 || rows == 0)
        return TP_OK;
    if (blocks > INT32_MAX)
        return cuda_err(TP_ERR_INVALID_ARG, "%s: dim %lld is too large", op, (long long)dim);
    parts = (unsigned)(rows < 64 ? rows : 64);
    TP_DISPATCH(dt, (k_embedding_bwd<T><<<dim3((unsigned)blocks, parts), THREADS, 0, d->stream>>>(
                        n, dim, ids, lo, hi, (const T *)dout, (T *)dtable)));
    return cuda_launched(op);
}

/* ---------------------------------------------------------------- AdamW */

__global__ void k_adamw(int64_t n, float *param, const float *grad, float *m, float *v, float lr,
                        float beta1, float beta2, float eps, float weight_decay, float step_size,
                        float rbc2)
{
    FOR_EACH(i, n)
    {
        float g = grad[i];
        float p = param[i] * (1.0f - lr * weight_decay);
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        param[i] = p - step_size * mi / (sqrtf(vi) * rbc2 + eps);
    }
}

extern "C" tp_status cuda_adamw(void *dev, int64_t n, float *param, const float *grad, float *m,
                                float *v, float lr, float beta1, float beta2, float eps,
                                float weight_decay, int64_t step)
{
    const char *op = "adamw";
    cuda_dev *d = (cuda_dev *)dev;
    tp_status st;
    float step_size, rbc2;

    if ((st = cuda_check_dev(dev, op)) || (st = cuda_check_count(n, op, "n")) ||
        (st = cuda_check_ptr(param, n, op, "param")) ||
        (st = cuda_check_ptr(grad, n, op, "grad")) || (st = cuda_check_ptr(m, n, op, "m")) ||
        (st = cuda_check_ptr(v, n, op, "v")))
        return st;
    if (step < 1)
        return cuda_err(TP_ERR_INVALID_ARG,
                        "adamw: step = %lld, expected >= 1 (the count of "
                        "updates including this one, as in PyTorch)",
                        (long long)step);
    if (!(beta1 >= 0.0f && beta1 < 1.0f) || !(beta2 >= 0.0f && beta2 < 1.0f))
        return cuda_err(TP_ERR_INVALID_ARG, "adamw: betas (%g, %g) must lie in [0, 1)",
                        (double)beta1, (double)beta2);
    if (n == 0)
        return TP_OK;
    /* PyTorch AdamW; bias corrections 1 - beta^step in double on the host. */
    step_size = (float)((double)lr / (1.0 - pow((double)beta1, (double)step)));
    rbc2 = (float)(1.0 / sqrt(1.0 - pow((double)beta2, (double)step)));
    k_adamw<<<grid_for(n), THREADS, 0, d->stream>>>(n, param, grad, m, v, lr, beta1, beta2, eps,
                                                    weight_decay, step_size, rbc2);
    return cuda_launched(op);
}

/* --------------------------------------------------------------- reduce */

/* y[i] = op(y[i], x[i]) in f32, one rounding to T. max/min as the cpu
 * device and the loopback comm compute them: a NaN in y stays, one in x is
 * dropped. */
template <typename T, int OP> __global__ void k_reduce(const T *x, T *y, int64_t n)
{
    FOR_EACH(i, n)
    {
        float a = ldf(y, i), b = ldf(x, i);
        stf(y, i, OP == TP_SUM ? a + b : OP == TP_MAX ? (b > a ? b : a) : (b < a ? b : a));
    }
}

/* i32: exact; the sum wraps (two's complement), as NCCL's and MPI's do. */
template <int OP> __global__ void k_reduce_i32(const int32_t *x, int32_t *y, int64_t n)
{
    FOR_EACH(i, n)
    {
        int32_t a = y[i], b = x[i];
        y[i] = OP == TP_SUM   ? (int32_t)((uint32_t)a + (uint32_t)b)
               : OP == TP_MAX ? (b > a ? b : a)
                              : (b < a ? b : a);
    }
}

/* Can kernels on d's GPU read and write p? Device memory of a GPU without
 * peer access, and pageable host memory, would fault in the kernel. */
static tp_status reachable(const cuda_dev *d, const void *p, const char *what)
{
    cudaPointerAttributes a;
    cudaError_t e = cudaPointerGetAttributes(&a, p);

    if (e != cudaSuccess) {
        cudaGetLastError();
        return cuda_err(TP_ERR_INVALID_ARG,
                        "reduce: %s = %p is not a CUDA pointer "
                        "(cudaPointerGetAttributes: %s)",
                        what, p, cudaGetErrorName(e));
    }
    switch (a.type) {
        case cudaMemoryTypeDevice:
            if (a.device == d->device ||
                (a.device >= 0 && a.device < CUDA_MAX_GPUS && d->peer[a.device]))
                return TP_OK;
            return cuda_err(
                TP_ERR_NOT_SUPPORTED,
                "reduce: %s is memory of GPU %d, which rank %d's "
                "GPU %d cannot access (no peer access between them); stage such buffers "
                "through host memory or use a comm that moves data itself (nccl)",
                what, a.device, d->rank, d->device);
        case cudaMemoryTypeHost: /* page-locked, mapped into the device's address space */
        case cudaMemoryTypeManaged: return TP_OK;
        default:
            return cuda_err(TP_ERR_INVALID_ARG,
                            "reduce: %s = %p is ordinary (pageable) host "
                            "memory; reduce takes device memory (or cudaHostAlloc'ed memory)",
                            what, p);
    }
}

extern "C" tp_status cuda_reduce(void *dev, tp_dtype dt, tp_redop op, int64_t n, const void *x,
                                 void *y)
{
    const char *name = "reduce";
    cuda_dev *d = (cuda_dev *)dev;
    tp_status st;

    if ((st = cuda_check_dev(dev, name)) ||
        (dt != TP_I32 && (st = cuda_check_float_dt(dt, name))) ||
        (st = cuda_check_count(n, name, "n")) || (st = cuda_check_ptr(x, n, name, "x")) ||
        (st = cuda_check_ptr(y, n, name, "y")))
        return st;
    if ((unsigned)op >= TP_REDOP_COUNT_)
        return cuda_err(TP_ERR_INVALID_ARG,
                        "reduce: op %d is not a tp_redop (TP_SUM, TP_MAX or "
                        "TP_MIN)",
                        (int)op);
    if (n == 0)
        return TP_OK;
    if ((st = reachable(d, x, "x")) || (st = reachable(d, y, "y")))
        return st;
    if (dt == TP_I32) {
        const int32_t *xi = (const int32_t *)x;
        int32_t *yi = (int32_t *)y;
        if (op == TP_SUM)
            k_reduce_i32<TP_SUM><<<grid_for(n), THREADS, 0, d->stream>>>(xi, yi, n);
        else if (op == TP_MAX)
            k_reduce_i32<TP_MAX><<<grid_for(n), THREADS, 0, d->stream>>>(xi, yi, n);
        else
            k_reduce_i32<TP_MIN><<<grid_for(n), THREADS, 0, d->stream>>>(xi, yi, n);
        return cuda_launched(name);
    }
    switch (op) {
        case TP_SUM:
            TP_DISPATCH(dt, (k_reduce<T, TP_SUM>
                             <<<grid_for(n), THREADS, 0, d->stream>>>((const T *)x, (T *)y, n)));
            break;
        case TP_MAX:
            TP_DISPATCH(dt, (k_reduce<T, TP_MAX>
                             <<<grid_for(n), THREADS, 0, d->stream>>>((const T *)x, (T *)y, n)));
            break;
        default:
            TP_DISPATCH(dt, (k_reduce<T, TP_MIN>
                             <<<grid_for(n), THREADS, 0, d->stream>>>((const T *)x, (T *)y, n)));
            break;
    }
    return cuda_launched(name);
}
