/* SPDX-License-Identifier: MIT */
/*
 * cpu-ce.c — the pieces of vocab-parallel cross-entropy: row max, per-row
 * statistics (sum of exp, target logit, sum of logits) and the gradient.
 * Each rank holds a rows x cols slice of the logits, vocab columns
 * [lo, lo + cols); the core combines the statistics across ranks.
 */
#include <math.h>
#include <stdint.h>

#include "cpu-internal.h"

static tp_status check_rows(const char *op, void *dev, tp_dtype dt, int64_t rows, int64_t cols)
{
    tp_status st;

    if ((st = cpu_check_dev(dev, op)) || (st = cpu_check_f32(dt, op)) ||
        (st = cpu_check_dims(op, rows, cols, "rows", "cols")))
        return st;
    return TP_OK;
}

tp_status cpu_row_max(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x, float *out)
{
    const char *op = "row_max";
    tp_status st;

    if ((st = check_rows(op, dev, dt, rows, cols)) ||
        (st = cpu_check_ptr(x, rows * cols, op, "x")) || (st = cpu_check_ptr(out, rows, op, "out")))
        return st;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = (const float *)x + r * cols;
        float mx = -INFINITY; /* an empty row: -inf, the identity of max */
        for (int64_t c = 0; c < cols; c++)
            mx = fmaxf(mx, xr[c]);
        out[r] = mx;
    }
    return TP_OK;
}

tp_status cpu_ce_stats(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *logits,
                       const int32_t *targets, int64_t lo, const float *rowmax, float *out3)
{
    const char *op = "ce_stats";
    tp_status st;

    if ((st = check_rows(op, dev, dt, rows, cols)) ||
        (st = cpu_check_ptr(logits, rows * cols, op, "logits")) ||
        (st = cpu_check_ptr(targets, rows, op, "targets")) ||
        (st = cpu_check_ptr(rowmax, rows, op, "rowmax")) ||
        (st = cpu_check_ptr(out3, rows * 3, op, "out3")))
        return st;
    /* Sums in double: a vocab shard row has up to ~10^5 entries and the
     * loss is log(sum); float would lose up to cols * 2^-24 relative. */
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = (const float *)logits + r * cols;
        double se = 0.0, sx = 0.0;
        int64_t t = (int64_t)targets[r] - lo;

        for (int64_t c = 0; c < cols; c++) {
            se += expf(xr[c] - rowmax[r]);
            sx += xr[c];
        }
        out3[3 * r] = (float)se;
        out3[3 * r + 1] = (t >= 0 && t < cols) ? xr[t] : 0.0f;
        out3[3 * r + 2] = (float)sx;
    }
    return TP_OK;
}

tp_status cpu_ce_bwd(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *logits,
                     const int32_t *targets, int64_t lo, int64_t vocab, const float *rowmax,
                     const float *sumexp, const float *row_scale, float smoothing, void *dlogits)
{
    const char *op = "ce_bwd";
    tp_status st;

    if ((st = check_rows(op, dev, dt, rows, cols)) ||
        (st = cpu_check_ptr(logits, rows * cols, op, "logits")) ||
        (st = cpu_check_ptr(targets, rows, op, "targets")) ||
        (st = cpu_check_ptr(rowmax, rows, op, "rowmax")) ||
        (st = cpu_check_ptr(sumexp, rows, op, "sumexp")) ||
        (st = cpu_check_ptr(row_scale, rows, op, "row_scale")) ||
        (st = cpu_check_ptr(dlogits, rows * cols, op, "dlogits")))
        return st;
    if (vocab < 1)
        return cpu_err(TP_ERR_INVALID_ARG,
                       "ce_bwd: vocab = %lld, expected the full vocabulary "
                       "size >= 1",
                       (long long)vocab);
    if (!(smoothing >= 0.0f && smoothing <= 1.0f))
        return cpu_err(TP_ERR_INVALID_ARG, "ce_bwd: label smoothing %g outside [0, 1]",
                       (double)smoothing);
    /* d loss / d x = scale (softmax - (1 - s) onehot - s / vocab). */
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = (const float *)logits + r * cols;
        float *dr = (float *)dlogits + r * cols;
        float sc = row_scale[r], mx = rowmax[r], inv = 1.0f / sumexp[r];
        float uni = smoothing / (float)vocab;
        int64_t t = (int64_t)targets[r] - lo;

        if (sc == 0.0f) { /* ignored row: exactly zero, whatever its logits */
            for (int64_t c = 0; c < cols; c++)
                dr[c] = 0.0f;
            continue;
        }
        for (int64_t c = 0; c < cols; c++) {
            float hot = c == t ? 1.0f - smoothing : 0.0f;
            dr[c] = sc * (expf(xr[c] - mx) * inv - hot - uni);
        }
    }
    return TP_OK;
}
