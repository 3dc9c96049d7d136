/* SPDX-License-Identifier: MIT */
/*
 * cpu-norm.c — LayerNorm and RMSNorm forward and backward over the last
 * dimension (rows x cols), f32.
 *
 * LayerNorm: mean = sum x / cols, var = sum (x - mean)^2 / cols (biased, as
 * PyTorch), rstd = 1 / sqrt(var + eps), y = (x - mean) rstd gamma + beta.
 * RMSNorm:   rstd = 1 / sqrt(sum x^2 / cols + eps), y = x rstd gamma (+ beta).
 * Row statistics are accumulated in double: a row is up to tens of
 * thousands of values, and the single-pass sum of squares would otherwise
 * lose digits when |mean| >> std; the cost is one pass per row.
 */
#include <math.h>
#include <stdint.h>

#include "cpu-internal.h"

#define COL_BLOCK 256

static tp_status check_norm(const char *op, void *dev, tp_dtype dt, int64_t rows, int64_t cols)
{
    tp_status st;

    if ((st = cpu_check_dev(dev, op)) || (st = cpu_check_f32(dt, op)) ||
        (st = cpu_check_dims(op, rows, cols, "rows", "cols")))
        return st;
    if (rows > 0 && cols == 0)
        return cpu_err(TP_ERR_INVALID_ARG,
                       "%s: cols = 0 with %lld rows: cannot normalize an "
                       "empty row",
                       op, (long long)rows);
    return TP_OK;
}

tp_status cpu_norm(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                   const void *gamma, const void *beta, void *y, float *mean, float *rstd,
                   float eps, int rms)
{
    const char *op = rms ? "norm (rms)" : "norm";
    const float *g = gamma, *b = beta;
    tp_status st;

    if ((st = check_norm(op, dev, dt, rows, cols)) ||
        (st = cpu_check_ptr(x, rows * cols, op, "x")) ||
        (st = cpu_check_ptr(gamma, rows > 0 ? cols : 0, op, "gamma")) ||
        (st = cpu_check_ptr(y, rows * cols, op, "y")))
        return st;
    if (!(eps >= 0.0f))
        return cpu_err(TP_ERR_INVALID_ARG, "%s: eps = %g, expected >= 0 (typically 1e-5)", op,
                       (double)eps);
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = (const float *)x + r * cols;
        float *yr = (float *)y + r * cols;
        float mu = 0.0f, rs;

        if (rms) {
            double ss = 0.0;
            for (int64_t c = 0; c < cols; c++)
                ss += (double)xr[c] * xr[c];
            rs = (float)(1.0 / sqrt(ss / (double)cols + eps));
        } else {
            double s = 0.0, ss = 0.0, dmu;
            for (int64_t c = 0; c < cols; c++)
                s += xr[c];
            dmu = s / (double)cols;
            for (int64_t c = 0; c < cols; c++) {
                double d = xr[c] - dmu;
                ss += d * d;
            }
            mu = (float)dmu;
            rs = (float)(1.0 / sqrt(ss / (double)cols + eps));
        }
        if (b) {
            for (int64_t c = 0; c < cols; c++)
                yr[c] = (xr[c] - mu) * rs * g[c] + b[c];
        } else {
            for (int64_t c = 0; c < cols; c++)
                yr[c] = (xr[c] - mu) * rs * g[c];
        }
        if (mean && !rms)
            mean[r] = mu;
        if (rstd)
            rstd[r] = rs;
    }
    return TP_OK;
}

tp_status cpu_norm_bwd(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                       const void *gamma, const float *mean, const float *rstd, const void *dy,
                       void *dx, void *dgamma, void *dbeta, int rms)
{
    const char *op = rms ? "norm_bwd (rms)" : "norm_bwd";
    const float *g = gamma;
    tp_status st;
    float accg[COL_BLOCK], accb[COL_BLOCK];

    if ((st = check_norm(op, dev, dt, rows, cols)) ||
        (st = cpu_check_ptr(x, rows * cols, op, "x")) ||
        (st = cpu_check_ptr(gamma, rows > 0 ? cols : 0, op, "gamma")) ||
        (st = cpu_check_ptr(rms ? (const void *)rstd : (const void *)mean, rows, op,
                            rms ? "rstd" : "mean")) ||
        (st = cpu_check_ptr(rstd, rows, op, "rstd")) ||
        (st = cpu_check_ptr(dy, rows * cols, op, "dy")) ||
        (st = cpu_check_ptr(dx, rows * cols, op, "dx")))
        return st;

    /* dgamma[c] += sum_r dy xhat, dbeta[c] += sum_r dy; rows ascending.
     * Done before dx so that dx may alias dy. */
    for (int64_t c0 = 0; c0 < cols && (dgamma || dbeta); c0 += COL_BLOCK) {
        int64_t w = cols - c0 < COL_BLOCK ? cols - c0 : COL_BLOCK;
        for (int64_t c = 0; c < w; c++)
            accg[c] = accb[c] = 0.0f;
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = (const float *)x + r * cols + c0;
            const float *dyr = (const float *)dy + r * cols + c0;
            float mu = rms ? 0.0f : mean[r], rs = rstd[r];
            for (int64_t c = 0; c < w; c++) {
                accg[c] += dyr[c] * (xr[c] - mu) * rs;
                accb[c] += dyr[c];
            }
        }
        for (int64_t c = 0; c < w; c++) {
            if (dgamma)
                ((float *)dgamma)[c0 + c] += accg[c];
            if (dbeta)
                ((float *)dbeta)[c0 + c] += accb[c];
        }
    }

    /* dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy gamma; RMS drops mean(g). */
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = (const float *)x + r * cols, *dyr = (const float *)dy + r * cols;
        float *dxr = (float *)dx + r * cols;
        float mu = rms ? 0.0f : mean[r], rs = rstd[r];
        float sg = 0.0f, sgx = 0.0f, mg, mgx;

        for (int64_t c = 0; c < cols; c++) {
            float gc = dyr[c] * g[c];
            sg += gc;
            sgx += gc * (xr[c] - mu) * rs;
        }
        mg = rms ? 0.0f : sg / (float)cols;
        mgx = sgx / (float)cols;
        for (int64_t c = 0; c < cols; c++) {
            float xh = (xr[c] - mu) * rs;
            dxr[c] = rs * (dyr[c] * g[c] - mg - xh * mgx);
        }
    }
    return TP_OK;
}
