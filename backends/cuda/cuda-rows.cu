/* SPDX-License-Identifier: MIT */
/*
 * cuda-rows.cu — row-wise kernels of the cuda device, one thread block per
 * row: softmax, LayerNorm/RMSNorm, row max and the cross-entropy pieces.
 * Block reductions combine partial sums in a fixed order (cuda-common.cuh),
 * so every run gives the same bits.
 */
#include "cuda-common.cuh"

static tp_status check_rows(const char *op, void *dev, tp_dtype dt, int64_t rows, int64_t cols)
{
    tp_status st;

    if ((st = cuda_check_dev(dev, op)) || (st = cuda_check_float_dt(dt, op)) ||
        (st = cuda_check_dims(op, rows, cols, "rows", "cols")))
        return st;
    if (rows > INT32_MAX)
        return cuda_err(TP_ERR_INVALID_ARG, "%s: rows = %lld, at most %d supported", op,
                        (long long)rows, INT32_MAX);
    return TP_OK;
}

/* -------------------------------------------------------------- softmax */

template <typename T>
__global__ void k_softmax(const T *x, T *y, int64_t cols, float scale, int causal)
{
    __shared__ float red[32];
    int64_t r = blockIdx.x;
    const T *xr = x + r * cols;
    T *yr = y + r * cols;
    int64_t keep = causal ? r % cols + 1 : cols; /* causal: cols 0 .. r % cols */
    float mx = -INFINITY, s = 0.0f, inv;

    for (int64_t c = threadIdx.x; c < keep; c += blockDim.x)
        mx = fmaxf(mx, scale * ldf(xr, c));
    mx = block_max(mx, red);
    for (int64_t c = threadIdx.x; c < keep; c += blockDim.x)
        s += expf(scale * ldf(xr, c) - mx);
    s = block_sum(s, red);
    inv = 1.0f / s;
    /* y may alias x: each thread rewrites only the elements it reads. */
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        stf(yr, c, c < keep ? expf(scale * ldf(xr, c) - mx) * inv : 0.0f);
}

extern "C" tp_status cuda_softmax(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                                  void *y, float scale, int causal)
{
    const char *op = "softmax";
    cuda_dev *d = (cuda_dev *)dev;
    tp_status st;

    if ((st = check_rows(op, dev, dt, rows, cols)) ||
        (st = cuda_check_ptr(x, rows * cols, op, "x")) ||
        (st = cuda_check_ptr(y, rows * cols, op, "y")))
        return st;
    if (rows == 0 || cols == 0)
        return TP_OK;
    TP_DISPATCH(dt, (k_softmax<T><<<(unsigned)rows, THREADS, 0, d->stream>>>((const T *)x, (T *)y,
                                                                             cols, scale, causal)));
    return cuda_launched(op);
}

template <typename T>
__global__ void k_softmax_bwd(const T *y, const T *dy, T *dx, int64_t cols, float scale)
{
    __shared__ float red[32];
    int64_t off = (int64_t)blockIdx.x * cols;
    float dot = 0.0f;

    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        dot += ldf(dy, off + c) * ldf(y, off + c);
    dot = block_sum(dot, red);
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        stf(dx, off + c, scale * ldf(y, off + c) * (ldf(dy, off + c) - dot));
}

extern "C" tp_status cuda_softmax_bwd(void *dev, tp_dtype dt, int64_t rows, int64_t cols,
                                      const void *y, const void *dy, void *dx, float scale)
{
    const char *op = "softmax_bwd";
    cuda_dev *d = (cuda_dev *)dev;
    tp_status st;

    if ((st = check_rows(op, dev, dt, rows, cols)) ||
        (st = cuda_check_ptr(y, rows * cols, op, "y")) ||
        (st = cuda_check_ptr(dy, rows * cols, op, "dy")) ||
        (st = cuda_check_ptr(dx, rows * cols, op, "dx")))
        return st;
    if (rows == 0 || cols == 0)
        return TP_OK;
    TP_DISPATCH(dt, (k_softmax_bwd<T><<<(unsigned)rows, THREADS, 0, d->stream>>>(
                        (const T *)y, (const T *)dy, (T *)dx, cols, scale)));
    return cuda_launched(op);
}

/* ----------------------------------------------------------------- norm */

/* LayerNorm: two passes (mean, then squared deviations); RMSNorm: mean of
 * squares. rstd = 1 / sqrt(var + eps); y = (x - mean) rstd gamma (+ beta). */
template <typename T>
__global__ void k_norm(const T *x, const T *gamma, const T *beta, T *y, float *mean, float *rstd,
                       int64_t cols, float eps, int rms)
{
    __shared__ float red[32];
    int64_t r = blockIdx.x, off = r * cols;
    float mu = 0.0f, ss = 0.0f, rs;

    if (!rms) {
        float s = 0.0f;
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
            s += ldf(x, off + c);
        mu = block_sum(s, red) / (float)cols;
    }
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = ldf(x, off + c) - mu;
        ss += v * v;
    }
    ss = block_sum(ss, red);
    rs = 1.0f / sqrtf(ss / (float)cols + eps);
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = (ldf(x, off + c) - mu) * rs * ldf(gamma, c);
        stf(y, off + c, beta ? v + ldf(beta, c) : v);
    }
    if (threadIdx.x == 0) {
        if (mean && !rms)
            mean[r] = mu;
        if (rstd)
            rstd[r] = rs;
    }
}

extern "C" tp_status cuda_norm(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                               const void *gamma, const void *beta, void *y, float *mean,
                               float *rstd, float eps, int rms)
{
    const char *op = rms ? "norm (rms)" : "norm";
    cuda_dev *d = (cuda_dev *)dev;
    tp_status st;

    if ((st = check_rows(op, dev, dt, rows, cols)) ||
        (st = cuda_check_ptr(x, rows * cols, op, "x")) ||
        (st = cuda_check_ptr(gamma, rows > 0 ? cols : 0, op, "gamma")) ||
        (st = cuda_check_ptr(y, rows * cols, op, "y")))
        return st;
    if (rows > 0 && cols == 0)
        return cuda_err(TP_ERR_INVALID_ARG,
                        "%s: cols = 0 with %lld rows: cannot normalize an "
                        "empty row",
                        op, (long long)rows);
    if (!(eps >= 0.0f))
        return cuda_err(TP_ERR_INVALID_ARG, "%s: eps = %g, expected >= 0 (typically 1e-5)", op,
                        (double)eps);
    if (rows == 0)
        return TP_OK;
    TP_DISPATCH(dt, (k_norm<T><<<(unsigned)rows, THREADS, 0, d->stream>>>(
                        (const T *)x, (const T *)gamma, (const T *)beta, (T *)y, mean, rstd, cols,
                        eps, rms)));
    return cuda_launched(op);
}

/* dgamma[c] += sum_r dy xhat, dbeta[c] += sum_r dy: one thread per column,
 * rows ascending. */
template <typename T>
__global__ void k_norm_bwd_cols(const T *x, const float *mean, const float *rstd, const T *dy,
                                T *dgamma, T *dbeta, int64_t rows, int64_t cols, int rms)
{
    for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < cols;
         c += (int64_t)gridDim.x * blockDim.x) {
        float ag = 0.0f, ab = 0.0f;
        for (int64_t r = 0; r < rows; r++) {
            float g = ldf(dy, r * cols + c);
            ag += g * (ldf(x, r * cols + c) - (rms ? 0.0f : mean[r])) * rstd[r];
            ab += g;
        }
        if (dgamma)
            stf(dgamma, c, ldf(dgamma, c) + ag);
        if (dbeta)
            stf(dbeta, c, ldf(dbeta, c) + ab);
    }
}

/* dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy gamma; RMS drops mean(g). */
template <typename T>
__global__ void k_norm_bwd_rows(const T *x, const T *gamma, const float *mean, const float *rstd,
                                const T *dy, T *dx, int64_t cols, int rms)
{
    __shared__ float red[32];
    int64_t r = blockIdx.x, off = r * cols;
    float mu = rms ? 0.0f : mean[r], rs = rstd[r], sg = 0.0f, sgx = 0.0f, mg, mgx;

    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        float g = ldf(dy, off + c) * ldf(gamma, c);
        sg += g;
        sgx += g * (ldf(x, off + c) - mu) * rs;
    }
    mg = rms ? 0.0f : block_sum(sg, red) / (float)cols;
    mgx = block_sum(sgx, red) / (float)cols;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        float xh = (ldf(x, off + c) - mu) * rs;
        stf(dx, off + c, rs * (ldf(dy, off + c) * ldf(gamma, c) - mg - xh * mgx));
    }
}

extern "C" tp_status cuda_norm_bwd(void *dev, tp_dtype dt, int64_t rows, int64_t cols,
                                   const void *x, const void *gamma, const float *mean,
                                   const float *rstd, const void *dy, void *dx, void *dgamma,
                                   void *dbeta, int rms)
{
    const char *op = rms ? "norm_bwd (rms)" : "norm_bwd";
    cuda_dev *d = (cuda_dev *)dev;
    tp_status st;

    if ((st = check_rows(op, dev, dt, rows, cols)) ||
        (st = cuda_check_ptr(x, rows * cols, op, "x")) ||
        (st = cuda_check_ptr(gamma, rows > 0 ? cols : 0, op, "gamma")) ||
        (st = cuda_check_ptr(mean, rms ? 0 : rows, op, "mean")) ||
        (st = cuda_check_ptr(rstd, rows, op, "rstd")) ||
        (st = cuda_check_ptr(dy, rows * cols, op, "dy")) ||
        (st = cuda_check_ptr(dx, rows * cols, op, "dx")))
        return st;
    if (rows > 0 && cols == 0)
        return cuda_err(TP_ERR_INVALID_ARG,
                        "%s: cols = 0 with %lld rows: cannot normalize an "
                        "empty row",
                        op, (long long)rows);
    if (rows == 0)
        return TP_OK;
    /* Parameter gradients first: they read dy, which dx may overwrite. */
    if (dgamma || dbeta)
        TP_DISPATCH(dt, (k_norm_bwd_cols<T><<<grid_for(cols), THREADS, 0, d->stream>>>(
                            (const T *)x, mean, rstd, (const T *)dy, (T *)dgamma, (T *)dbeta, rows,
                            cols, rms)));
    TP_DISPATCH(
        dt, (k_norm_bwd_rows<T><<<(unsigned)rows, THREADS, 0, d->stream>>>(
                (const T *)x, (const T *)gamma, mean, rstd, (const T *)dy, (T *)dx, cols, rms)));
    return cuda_launched(op);
}

/* ------------------------------------------------------- cross-entropy */

template <typename T> __global__ void k_row_max(const T *x, float *out, int64_t cols)
{
    __shared__ float red[32];
    int64_t off = (int64_t)blockIdx.x * cols;
    float mx = -INFINITY; /* an empty row: -inf, the identity of max */

    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        mx = fmaxf(mx, ldf(x, off + c));
    mx = block_max(mx, red);
    if (threadIdx.x == 0)
        out[blockIdx.x] = mx;
}

extern "C" tp_status cuda_row_max(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                                  float *out)
{
    const char *op = "row_max";
    cuda_dev *d = (cuda_dev *)dev;
    tp_status st;

    if ((st = check_rows(op, dev, dt, rows, cols)) ||
        (st = cuda_check_ptr(x, rows * cols, op, "x")) ||
        (st = cuda_check_ptr(out, rows, op, "out")))
        return st;
    if (rows == 0)
        return TP_OK;
    TP_DISPATCH(dt,
                (k_row_max<T><<<(unsigned)rows, THREADS, 0, d->stream>>>((const T *)x, out, cols)));
    return cuda_launched(op);
}

template <typename T>
__global__ void k_ce_stats(const T *x, const int32_t *targets, int64_t lo, const float *rowmax,
                           float *out3, int64_t cols)
{
    __shared__ float red[32];
    int64_t r = blockIdx.x, off = r * cols;
    float mx = rowmax[r], se = 0.0f, sx = 0.0f;

    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = ldf(x, off + c);
        se += expf(v - mx);
        sx += v;
    }
    se = block_sum(se, red);
    sx = block_sum(sx, red);
    if (threadIdx.x == 0) {
        int64_t t = (int64_t)targets[r] - lo;
        out3[3 * r] = se;
        out3[3 * r + 1] = t >= 0 && t < cols ? ldf(x, off + t) : 0.0f;
        out3[3 * r + 2] = sx;
    }
}

extern "C" tp_status cuda_ce_stats(void *dev, tp_dtype dt, int64_t rows, int64_t cols,
                                   const void *logits, const int32_t *targets, int64_t lo,
                                   const float *rowmax, float *out3)
{
    const char *op = "ce_stats";
    cuda_dev *d = (cuda_dev *)dev;
    tp_status st;

    if ((st = check_rows(op, dev, dt, rows, cols)) ||
        (st = cuda_check_ptr(logits, rows * cols, op, "logits")) ||
        (st = cuda_check_ptr(targets, rows, op, "targets")) ||
        (st = cuda_check_ptr(rowmax, rows, op, "rowmax")) ||
        (st = cuda_check_ptr(out3, rows * 3, op, "out3")))
        return st;
    if (rows == 0)
        return TP_OK;
    TP_DISPATCH(dt, (k_ce_stats<T><<<(unsigned)rows, THREADS, 0, d->stream>>>(
                        (const T *)logits, targets, lo, rowmax, out3, cols)));
    return cuda_launched(op);
}

/* dlogits = row_scale (softmax - (1 - s) onehot - s / vocab); exactly 0 in
 * rows whose scale is 0 (ignored tokens). */
template <typename T>
__global__ void k_ce_bwd(const T *x, const int32_t *targets, int64_t lo, float uni,
                         const float *rowmax, const float *sumexp, const float *row_scale,
                         float smoothing, T *dx, int64_t rows, int64_t cols)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < rows * cols;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / cols, c = i % cols;
        float sc = row_scale[r], v = 0.0f;
        if (sc != 0.0f) {
            float hot = c == (int64_t)targets[r] - lo ? 1.0f - smoothing : 0.0f;
            v = sc * (expf(ldf(x, i) - rowmax[r]) * (1.0f / sumexp[r]) - hot - uni);
        }
        stf(dx, i, v);
    }
}

extern "C" tp_status cuda_ce_bwd(void *dev, tp_dtype dt, int64_t rows, int64_t cols,
                                 const void *logits, const int32_t *targets, int64_t lo,
                                 int64_t vocab, const float *rowmax, const float *sumexp,
                                 const float *row_scale, float smoothing, void *dlogits)
{
    const char *op = "ce_bwd";
    cuda_dev *d = (cuda_dev *)dev;
    tp_status st;

    if ((st = check_rows(op, dev, dt, rows, cols)) ||
        (st = cuda_check_ptr(logits, rows * cols, op, "logits")) ||
        (st = cuda_check_ptr(targets, rows, op, "targets")) ||
        (st = cuda_check_ptr(rowmax, rows, op, "rowmax")) ||
        (st = cuda_check_ptr(sumexp, rows, op, "sumexp")) ||
        (st = cuda_check_ptr(row_scale, rows, op, "row_scale")) ||
        (st = cuda_check_ptr(dlogits, rows * cols, op, "dlogits")))
        return st;
    if (vocab < 1)
        return cuda_err(TP_ERR_INVALID_ARG,
                        "ce_bwd: vocab = %lld, expected the full vocabulary "
                        "size >= 1",
                        (long long)vocab);
    if (!(smoothing >= 0.0f && smoothing <= 1.0f))
        return cuda_err(TP_ERR_INVALID_ARG, "ce_bwd: label smoothing %g outside [0, 1]",
                        (double)smoothing);
    if (rows * cols == 0)
        return TP_OK;
    TP_DISPATCH(dt, (k_ce_bwd<T><<<grid_for(rows * cols), THREADS, 0, d->stream>>>(
                        (const T *)logits, targets, lo, smoothing / (float)vocab, rowmax, sumexp,
                        row_scale, smoothing, (T *)dlogits, rows, cols)));
    return cuda_launched(op);
}
