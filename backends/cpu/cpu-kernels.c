/* SPDX-License-Identifier: MIT */
/*
 * cpu-kernels.c — element-wise kernels of the cpu device: bias, GeLU,
 * axpby, softmax, embedding and AdamW. Plain loops over f32 that the
 * compiler can vectorize; per-column sums run over rows in ascending order
 * so results are the same on every run.
 */
#include <math.h>
#include <stdint.h>

#include "cpu-internal.h"

/* Columns summed at once by the column-sum kernels (a stack buffer). */
#define COL_BLOCK 256

/* rows x cols must be addressable. */
tp_status cpu_bias_add(void *dev, tp_dtype dt, int64_t rows, int64_t cols, void *y,
                       const void *bias)
{
    const char *op = "bias_add";
    tp_status st;

    if ((st = cpu_check_dev(dev, op)) || (st = cpu_check_f32(dt, op)) ||
        (st = cpu_check_dims(op, rows, cols, "rows", "cols")) ||
        (st = cpu_check_ptr(y, rows * cols, op, "y")) ||
        (st = cpu_check_ptr(bias, rows > 0 ? cols : 0, op, "bias")))
        return st;
    for (int64_t r = 0; r < rows; r++) {
        float *yr = (float *)y + r * cols;
        const float *b = bias;
        for (int64_t c = 0; c < cols; c++)
            yr[c] += b[c];
    }
    return TP_OK;
}

tp_status cpu_bias_grad(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *dy,
                        void *db)
{
    const char *op = "bias_grad";
    tp_status st;
    float acc[COL_BLOCK];

    if ((st = cpu_check_dev(dev, op)) || (st = cpu_check_f32(dt, op)) ||
        (st = cpu_check_dims(op, rows, cols, "rows", "cols")) ||
        (st = cpu_check_ptr(dy, rows * cols, op, "dy")) || (st = cpu_check_ptr(db, cols, op, "db")))
        return st;
    /* db[c] += (sum over r ascending of dy[r,c]), a block of columns at a time. */
    for (int64_t c0 = 0; c0 < cols; c0 += COL_BLOCK) {
        int64_t w = cols - c0 < COL_BLOCK ? cols - c0 : COL_BLOCK;
        for (int64_t c = 0; c < w; c++)
            acc[c] = 0.0f;
        for (int64_t r = 0; r < rows; r++) {
            const float *d = (const float *)dy + r * cols + c0;
            for (int64_t c = 0; c < w; c++)
                acc[c] += d[c];
        }
        for (int64_t c = 0; c < w; c++)
            ((float *)db)[c0 + c] += acc[c];
    }
    return TP_OK;
}

/* GeLU constants: 1/sqrt(2), 1/sqrt(2*pi), sqrt(2/pi). */
#define GELU_RSQRT2   0.70710678118654752440f
#define GELU_RSQRT2PI 0.39894228040143267794f
#define GELU_SQRT2_PI 0.79788456080286535588f
#define GELU_C        0.044715f

/* GeLU of one value: exact x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), or the
 * tanh approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
static inline float gelu1(float v, int tanh_approx)
{
    if (tanh_approx)
        return 0.5f * v * (1.0f + tanhf(GELU_SQRT2_PI * (v + GELU_C * v * v * v)));
    return 0.5f * v * (1.0f + erff(v * GELU_RSQRT2));
}

tp_status cpu_gelu(void *dev, tp_dtype dt, int64_t n, const void *x, void *y, int tanh_approx)
{
    const char *op = "gelu";
    const float *xs = x;
    float *ys = y;
    tp_status st;

    if ((st = cpu_check_dev(dev, op)) || (st = cpu_check_f32(dt, op)) ||
        (st = cpu_check_count(n, op, "n")) || (st = cpu_check_ptr(x, n, op, "x")) ||
        (st = cpu_check_ptr(y, n, op, "y")))
        return st;
    for (int64_t i = 0; i < n; i++)
        ys[i] = gelu1(xs[i], tanh_approx);
    return TP_OK;
}

void cpu_bias_act_rows(int64_t rows, int64_t cols, float *c, int64_t ldc, const float *bias,
                       tp_act act, float *pre)
{
    for (int64_t r = 0; r < rows; r++) {
        float *cr = c + r * ldc, *pr = pre ? pre + r * ldc : NULL;
        for (int64_t j = 0; j < cols; j++) {
            float v = bias ? cr[j] + bias[j] : cr[j];
            if (pr)
                pr[j] = v;
            cr[j] = act == TP_ACT_NONE ? v : gelu1(v, act == TP_ACT_GELU_TANH);
        }
    }
}

tp_status cpu_reduce(void *dev, tp_dtype dt, tp_redop op, int64_t n, const void *x, void *y)
{
    const float *xs = x;
    float *ys = y;
    tp_status st;

    if ((st = cpu_check_dev(dev, "reduce")) ||
        (dt != TP_I32 && (st = cpu_check_f32(dt, "reduce"))) ||
        (st = cpu_check_count(n, "reduce", "n")) || (st = cpu_check_ptr(x, n, "reduce", "x")) ||
        (st = cpu_check_ptr(y, n, "reduce", "y")))
        return st;
    if (dt == TP_I32 && (op == TP_SUM || op == TP_MAX || op == TP_MIN)) {
        const int32_t *xi = x;
        int32_t *yi = y;
        for (int64_t i = 0; i < n; i++) /* the sum wraps, as MPI and NCCL do */
            yi[i] = op == TP_SUM   ? (int32_t)((uint32_t)yi[i] + (uint32_t)xi[i])
                    : op == TP_MAX ? (xi[i] > yi[i] ? xi[i] : yi[i])
                                   : (xi[i] < yi[i] ? xi[i] : yi[i]);
        return TP_OK;
    }
    /* max/min as the loopback comm computes them: a NaN in y stays, one in x is dropped */
    switch (op) {
        case TP_SUM:
            for (int64_t i = 0; i < n; i++)
                ys[i] += xs[i];
            return TP_OK;
        case TP_MAX:
            for (int64_t i = 0; i < n; i++)
                ys[i] = xs[i] > ys[i] ? xs[i] : ys[i];
            return TP_OK;
        case TP_MIN:
            for (int64_t i = 0; i < n; i++)
                ys[i] = xs[i] < ys[i] ? xs[i] : ys[i];
            return TP_OK;
        default:
            return cpu_err(TP_ERR_INVALID_ARG,
                           "reduce: op %d is not a tp_redop (TP_SUM, TP_MAX or TP_MIN)", (int)op);
    }
}

tp_status cpu_gelu_bwd(void *dev, tp_dtype dt, int64_t n, const void *x, const void *dy, void *dx,
                       int tanh_approx)
{
    const char *op = "gelu_bwd";
    const float *xs = x, *dys = dy;
    float *dxs = dx;
    tp_status st;

    if ((st = cpu_check_dev(dev, op)) || (st = cpu_check_f32(dt, op)) ||
        (st = cpu_check_count(n, op, "n")) || (st = cpu_check_ptr(x, n, op, "x")) ||
        (st = cpu_check_ptr(dy, n, op, "dy")) || (st = cpu_check_ptr(dx, n, op, "dx")))
        return st;
    if (tanh_approx) {
        /* d/dx: 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 c x^2) */
        for (int64_t i = 0; i < n; i++) {
            float v = xs[i];
            float t = tanhf(GELU_SQRT2_PI * (v + GELU_C * v * v * v));
            float d = 0.5f * (1.0f + t) +
                      0.5f * v * (1.0f - t * t) * GELU_SQRT2_PI * (1.0f + 3.0f * GELU_C * v * v);
            dxs[i] = dys[i] * d;
        }
    } else {
        /* d/dx x Phi(x) = Phi(x) + x phi(x) */
        for (int64_t i = 0; i < n; i++) {
            float v = xs[i];
            float d =
                0.5f * (1.0f + erff(v * GELU_RSQRT2)) + v * GELU_RSQRT2PI * expf(-0.5f * v * v);
            dxs[i] = dys[i] * d;
        }
    }
    return TP_OK;
}

tp_status cpu_axpby(void *dev, tp_dtype dt, int64_t n, float alpha, const void *x, float beta,
                    void *y)
{
    const char *op = "axpby";
    const float *xs = x;
    float *ys = y;
    tp_status st;

    if ((st = cpu_check_dev(dev, op)) || (st = cpu_check_f32(dt, op)) ||
        (st = cpu_check_count(n, op, "n")) || (st = cpu_check_ptr(x, n, op, "x")) ||
        (st = cpu_check_ptr(y, n, op, "y")))
        return st;
    if (beta == 0.0f) {
        for (int64_t i = 0; i < n; i++)
            ys[i] = alpha * xs[i];
    } else {
        for (int64_t i = 0; i < n; i++)
            ys[i] = alpha * xs[i] + beta * ys[i];
    }
    return TP_OK;
}

tp_status cpu_softmax(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x, void *y,
                      float scale, int causal)
{
    const char *op = "softmax";
    tp_status st;

    if ((st = cpu_check_dev(dev, op)) || (st = cpu_check_f32(dt, op)) ||
        (st = cpu_check_dims(op, rows, cols, "rows", "cols")) ||
        (st = cpu_check_ptr(x, rows * cols, op, "x")) ||
        (st = cpu_check_ptr(y, rows * cols, op, "y")))
        return st;
    if (cols == 0)
        return TP_OK;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = (const float *)x + r * cols;
        float *yr = (float *)y + r * cols;
        /* Causal: row r sees columns 0 .. r % cols (column 0 always). */
        int64_t keep = causal ? r % cols + 1 : cols;
        float mx = -INFINITY, sum = 0.0f, inv;

        for (int64_t c = 0; c < keep; c++)
            mx = fmaxf(mx, scale * xr[c]);
        for (int64_t c = 0; c < keep; c++) {
            float e = expf(scale * xr[c] - mx);
            yr[c] = e;
            sum += e;
        }
        inv = 1.0f / sum;
        for (int64_t c = 0; c < keep; c++)
            yr[c] *= inv;
        for (int64_t c = keep; c < cols; c++)
            yr[c] = 0.0f;
    }
    return TP_OK;
}

tp_status cpu_softmax_bwd(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *y,
                          const void *dy, void *dx, float scale)
{
    const char *op = "softmax_bwd";
    tp_status st;

    if ((st = cpu_check_dev(dev, op)) || (st = cpu_check_f32(dt, op)) ||
        (st = cpu_check_dims(op, rows, cols, "rows", "cols")) ||
        (st = cpu_check_ptr(y, rows * cols, op, "y")) ||
        (st = cpu_check_ptr(dy, rows * cols, op, "dy")) ||
        (st = cpu_check_ptr(dx, rows * cols, op, "dx")))
        return st;
    for (int64_t r = 0; r < rows; r++) {
        const float *yr = (const float *)y + r * cols, *dyr = (const float *)dy + r * cols;
        float *dxr = (float *)dx + r * cols;
        float dot = 0.0f;

        for (int64_t c = 0; c < cols; c++)
            dot += dyr[c] * yr[c];
        /* dx may alias dy: each element is read before it is written. */
        for (int64_t c = 0; c < cols; c++)
            dxr[c] = scale * yr[c] * (dyr[c] - dot);
    }
    return TP_OK;
}

/* The checks embedding and embedding_bwd share; the table shard holds
 * rows [lo, hi). */
static tp_status check_embedding(const char *op, const void *dev, tp_dtype dt, int64_t n,
                                 int64_t dim, const int32_t *ids, int64_t lo, int64_t hi)
{
    return tp_util_check_embedding(cpu_err, cpu_check_f32, op, dev, dt, n, dim, ids, lo, hi,
                                   (int64_t)(SIZE_MAX / sizeof(float)));
}

tp_status cpu_embedding(void *dev, tp_dtype dt, int64_t n, int64_t dim, const int32_t *ids,
                        int64_t lo, int64_t hi, const void *table, void *out)
{
    const char *op = "embedding";
    tp_status st;

    if ((st = check_embedding(op, dev, dt, n, dim, ids, lo, hi)) ||
        (st = cpu_check_ptr(table, (hi - lo) * dim, op, "table")) ||
        (st = cpu_check_ptr(out, n * dim, op, "out")))
        return st;
    for (int64_t i = 0; i < n; i++) {
        float *o = (float *)out + i * dim;
        int64_t id = ids[i];

        if (id >= lo && id < hi) {
            const float *t = (const float *)table + (id - lo) * dim;
            for (int64_t c = 0; c < dim; c++)
                o[c] = t[c];
        } else {
            for (int64_t c = 0; c < dim; c++)
                o[c] = 0.0f;
        }
    }
    return TP_OK;
}

tp_status cpu_embedding_bwd(void *dev, tp_dtype dt, int64_t n, int64_t dim, const int32_t *ids,
                            int64_t lo, int64_t hi, const void *dout, void *dtable)
{
    const char *op = "embedding_bwd";
    tp_status st;

    if ((st = check_embedding(op, dev, dt, n, dim, ids, lo, hi)) ||
        (st = cpu_check_ptr(dout, n * dim, op, "dout")) ||
        (st = cpu_check_ptr(dtable, (hi - lo) * dim, op, "dtable")))
        return st;
    /* Tokens in ascending order: a fixed summation order per table row. */
    for (int64_t i = 0; i < n; i++) {
        const float *d = (const float *)dout + i * dim;
        int64_t id = ids[i];

        if (id >= lo && id < hi) {
            float *t = (float *)dtable + (id - lo) * dim;
            for (int64_t c = 0; c < dim; c++)
                t[c] += d[c];
        }
    }
    return TP_OK;
}

tp_status cpu_adamw(void *dev, int64_t n, float *param, const float *grad, float *m, float *v,
                    float lr, float beta1, float beta2, float eps, float weight_decay, int64_t step)
{
    const char *op = "adamw";
    tp_status st;
    float step_size, rbc2;

    if ((st = cpu_check_dev(dev, op)) || (st = cpu_check_count(n, op, "n")) ||
        (st = cpu_check_ptr(param, n, op, "param")) || (st = cpu_check_ptr(grad, n, op, "grad")) ||
        (st = cpu_check_ptr(m, n, op, "m")) || (st = cpu_check_ptr(v, n, op, "v")))
        return st;
    if (step < 1)
        return cpu_err(TP_ERR_INVALID_ARG,
                       "adamw: step = %lld, expected >= 1 (the count of "
                       "updates including this one, as in PyTorch)",
                       (long long)step);
    if (!(beta1 >= 0.0f && beta1 < 1.0f) || !(beta2 >= 0.0f && beta2 < 1.0f))
        return cpu_err(TP_ERR_INVALID_ARG, "adamw: betas (%g, %g) must lie in [0, 1)",
                       (double)beta1, (double)beta2);
    /* PyTorch AdamW: p -= lr*wd*p; m, v moments; p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps),
     * with bias corrections bc = 1 - beta^step computed in double. */
    step_size = (float)((double)lr / (1.0 - pow((double)beta1, (double)step)));
    rbc2 = (float)(1.0 / sqrt(1.0 - pow((double)beta2, (double)step)));
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i];
        float p = param[i] * (1.0f - lr * weight_decay);
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        param[i] = p - step_size * mi / (sqrtf(vi) * rbc2 + eps);
    }
    return TP_OK;
}
