/* SPDX-License-Identifier: MIT */
/*
 * cpu-lowp.c — bf16 and f16 storage for the cpu device's f32 ops.
 *
 * Each wrapper below is the vtable's slot. f32 (and any dtype it cannot
 * convert) goes straight to the f32 op, which also reports bad dtypes. For
 * bf16/f16 it converts the typed operands to f32 scratch, runs the f32 op
 * on them, and on success rounds the typed outputs back to nearest even:
 * the result is the f32 result rounded once (the SDK's tp_util_*
 * conversions: the same bits on every compiler). Per-row statistics (mean,
 * rstd, row max, CE statistics), ids and AdamW state are f32/int32 in
 * every dtype and pass through untouched. Argument errors are found by the
 * f32 op before it touches memory, so operands that cannot be converted
 * (NULL, negative or overflowing sizes) are passed on as they are.
 */
#include <stdint.h>
#include <stdlib.h>

#include "cpu-internal.h"

static int convertible(tp_dtype dt)
{
    return dt == TP_BF16 || dt == TP_F16;
}

static void load(tp_dtype dt, const void *src, float *dst, int64_t n)
{
    const uint16_t *h = src;

    if (dt == TP_BF16) {
        for (int64_t i = 0; i < n; i++)
            dst[i] = tp_util_bf16_to_f32(h[i]);
    } else {
        for (int64_t i = 0; i < n; i++)
            dst[i] = tp_util_f16_to_f32(h[i]);
    }
}

static void store(tp_dtype dt, const float *src, void *dst, int64_t n)
{
    uint16_t *h = dst;

    if (dt == TP_BF16) {
        for (int64_t i = 0; i < n; i++)
            h[i] = tp_util_f32_to_bf16(src[i]);
    } else {
        for (int64_t i = 0; i < n; i++)
            h[i] = tp_util_f32_to_f16(src[i]);
    }
}

/* Where a scratch buffer's values live in the typed operand: `batch`
 * matrices `stride` elements apart (stride 0: one matrix shared by the
 * batch), each `rows` rows of `cols` elements `ld` apart. The scratch holds
 * them dense: [batch][rows][cols] (one matrix when stride is 0). */
typedef struct lp_mat {
    int64_t rows, cols, ld, stride, batch;
} lp_mat;

/* The f32 scratch of one call: the device's slots (kept and grown between
 * calls), or malloc'd buffers without a device handle (the op then
 * reports the handle). */
#define LP_MAX CPU_LP_SLOTS
typedef struct lp_call {
    cpu_dev *dev;
    tp_dtype dt;
    const char *op;
    int count, nomem;
    struct {
        float *f;  /* scratch */
        void *dst; /* write back here on success, or NULL */
        lp_mat m;
    } b[LP_MAX];
} lp_call;

/* rows * cols, or 0 when negative or overflowing (the f32 op reports it). */
static int64_t elems(int64_t rows, int64_t cols)
{
    int64_t n;
    if (rows < 0 || cols < 0 || __builtin_mul_overflow(rows, cols, &n) ||
        n > (int64_t)(SIZE_MAX / sizeof(float)))
        return 0;
    return n;
}

/* Slot i of c's device holding at least n floats, or NULL. */
static float *slot(lp_call *c, int i, int64_t n)
{
    cpu_dev *d = c->dev;
    if (!d)
        return malloc((size_t)n * sizeof(float));
    if (d->lp_n[i] < (size_t)n) {
        free(d->lp[i]);
        d->lp[i] = malloc((size_t)n * sizeof(float));
        d->lp_n[i] = d->lp[i] ? (size_t)n : 0;
    }
    return d->lp[i];
}

/* Elements of m's dense copy (0 when empty or not addressable). */
static int64_t mat_elems(const lp_mat *m)
{
    return elems(m->stride == 0 ? 1 : m->batch, elems(m->rows, m->cols));
}

/* Typed element offset of row r of matrix b. */
static size_t mat_at(const lp_mat *m, int64_t b, int64_t r)
{
    return (size_t)(b * m->stride + r * m->ld) * sizeof(uint16_t);
}

static void load_mat(tp_dtype dt, const void *p, float *f, const lp_mat *m)
{
    int64_t nb = m->stride == 0 ? 1 : m->batch;
    for (int64_t b = 0; b < nb; b++)
        for (int64_t r = 0; r < m->rows; r++)
            load(dt, (const char *)p + mat_at(m, b, r), f + (b * m->rows + r) * m->cols, m->cols);
}

static void store_mat(tp_dtype dt, const float *f, void *p, const lp_mat *m)
{
    int64_t nb = m->stride == 0 ? 1 : m->batch;
    for (int64_t b = 0; b < nb; b++)
        for (int64_t r = 0; r < m->rows; r++)
            store(dt, f + (b * m->rows + r) * m->cols, (char *)p + mat_at(m, b, r), m->cols);
}

static float *scratch_mat(lp_call *c, const void *p, void *dst, const lp_mat *m, int read)
{
    float *f;
    int64_t n = mat_elems(m);

    if (!p || n <= 0) /* nothing to convert: let the op see the original */
        return (float *)(uintptr_t)p;
    if (c->count == LP_MAX || !(f = slot(c, c->count, n))) {
        c->nomem = 1;
        return NULL;
    }
    if (read)
        load_mat(c->dt, p, f, m);
    c->b[c->count].f = f;
    c->b[c->count].dst = dst;
    c->b[c->count].m = *m;
    c->count++;
    return f;
}

/* n contiguous elements. */
static float *scratch(lp_call *c, const void *p, void *dst, int64_t n, int read)
{
    lp_mat m = {1, n, n, 0, 1};
    return scratch_mat(c, p, dst, &m, read);
}

static const float *in(lp_call *c, const void *p, int64_t n)
{
    return scratch(c, p, NULL, n, 1);
}

static float *out(lp_call *c, void *p, int64_t n)
{
    return scratch(c, p, p, n, 0);
}

static float *inout(lp_call *c, void *p, int64_t n)
{
    return scratch(c, p, p, n, 1);
}

/* Out of memory while converting? Then the op must not run. */
static tp_status failed(lp_call *c)
{
    return c->nomem ? cpu_err(TP_ERR_NO_MEMORY,
                              "%s: out of memory for the f32 scratch of a %s "
                              "operand",
                              c->op, tp_util_dtype_name(c->dt))
                    : TP_OK;
}

/* Write the outputs back on success; free the scratch. */
static tp_status finish(lp_call *c, tp_status st)
{
    for (int i = 0; i < c->count; i++) {
        if (st == TP_OK && c->b[i].dst)
            store_mat(c->dt, c->b[i].f, c->b[i].dst, &c->b[i].m);
        if (!c->dev)
            free(c->b[i].f);
    }
    return st;
}

#define LP_BEGIN(OPNAME) lp_call c_ = {dev, dt, OPNAME, 0, 0, {{0}}}
#define LP_RUN(CALL)     return finish(&c_, c_.nomem ? failed(&c_) : (CALL))

/* ----------------------------------------------------------------- gemm */

/* One GEMM operand as dense f32 scratch: *ld and *stride become the dense
 * ones (the stride stays 0 for an operand shared by the batch); an empty
 * operand is passed on unchanged. read: load it (C only when beta != 0). */
static void *gemm_operand(lp_call *c, const void *p, void *dst, lp_mat m, int read, int64_t *ld,
                          int64_t *stride)
{
    float *f = scratch_mat(c, p, dst, &m, read);
    if (f && f != p) {
        *ld = m.cols;
        *stride = m.stride == 0 ? 0 : m.rows * m.cols;
    }
    return f;
}

/* f: g with dense f32 scratch copies of the elements A, B and C touch
 * (C's gaps are neither read nor written). */
static void lp_gemm_operands(lp_call *c, const tp_gemm_args *g, tp_gemm_args *f)
{
    int64_t ar = g->trans_a ? g->k : g->m, ac = g->trans_a ? g->m : g->k;
    int64_t br = g->trans_b ? g->n : g->k, bc = g->trans_b ? g->k : g->n;
    *f = *g;
    f->dtype = TP_F32;
    f->a = gemm_operand(c, g->a, NULL, (lp_mat){ar, ac, g->lda, g->stride_a, g->batch}, 1, &f->lda,
                        &f->stride_a);
    f->b = gemm_operand(c, g->b, NULL, (lp_mat){br, bc, g->ldb, g->stride_b, g->batch}, 1, &f->ldb,
                        &f->stride_b);
    f->c = gemm_operand(c, g->c, g->c, (lp_mat){g->m, g->n, g->ldc, g->stride_c, g->batch},
                        g->beta != 0.0f, &f->ldc, &f->stride_c);
}

tp_status cpu_lp_gemm(void *dev, const tp_gemm_args *g)
{
    tp_status st;
    tp_gemm_args f;
    tp_dtype dt;

    if (!g || !convertible(g->dtype))
        return cpu_gemm(dev, g);
    if ((st = cpu_gemm_check(dev, g)))
        return st;
    dt = g->dtype;
    LP_BEGIN("gemm");
    lp_gemm_operands(&c_, g, &f);
    LP_RUN(cpu_gemm(dev, &f));
}

tp_status cpu_lp_gemm_bias_act(void *dev, const tp_gemm_args *g, const void *bias, tp_act act,
                               void *pre)
{
    tp_status st;
    tp_gemm_args f;
    tp_dtype dt;

    if (!g || !convertible(g->dtype))
        return cpu_gemm_bias_act(dev, g, bias, act, pre);
    if ((st = cpu_gemm_check(dev, g)))
        return st;
    if (g->batch != 1) /* the f32 op reports it; pre's layout below assumes batch 1 */
        return cpu_gemm_bias_act(dev, g, bias, act, pre);
    dt = g->dtype;
    LP_BEGIN("gemm_bias_act");
    lp_gemm_operands(&c_, g, &f);
    const float *fb = in(&c_, bias, g->m > 0 ? g->n : 0);
    lp_mat pm = {g->m, g->n, g->ldc, 0, 1}; /* pre has C's layout (now dense: f.ldc) */
    float *fp = pre ? scratch_mat(&c_, pre, pre, &pm, 0) : NULL;
    /* pre and C are both rounded once from their f32 values */
    LP_RUN(cpu_gemm_bias_act(dev, &f, fb, act, fp));
}

/* --------------------------------------------------------- element-wise */

tp_status cpu_lp_reduce(void *dev, tp_dtype dt, tp_redop op, int64_t n, const void *x, void *y)
{
    if (!convertible(dt))
        return cpu_reduce(dev, dt, op, n, x, y);
    LP_BEGIN("reduce");
    const float *fx = in(&c_, x, n);
    float *fy = inout(&c_, y, n);
    LP_RUN(cpu_reduce(dev, TP_F32, op, n, fx, fy));
}

tp_status cpu_lp_bias_add(void *dev, tp_dtype dt, int64_t rows, int64_t cols, void *y,
                          const void *bias)
{
    if (!convertible(dt))
        return cpu_bias_add(dev, dt, rows, cols, y, bias);
    LP_BEGIN("bias_add");
    float *fy = inout(&c_, y, elems(rows, cols));
    const float *fb = in(&c_, bias, rows > 0 ? cols : 0);
    LP_RUN(cpu_bias_add(dev, TP_F32, rows, cols, fy, fb));
}

tp_status cpu_lp_bias_grad(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *dy,
                           void *db)
{
    if (!convertible(dt))
        return cpu_bias_grad(dev, dt, rows, cols, dy, db);
    LP_BEGIN("bias_grad");
    const float *fdy = in(&c_, dy, elems(rows, cols));
    float *fdb = inout(&c_, db, cols);
    LP_RUN(cpu_bias_grad(dev, TP_F32, rows, cols, fdy, fdb));
}

tp_status cpu_lp_gelu(void *dev, tp_dtype dt, int64_t n, const void *x, void *y, int tanh_approx)
{
    if (!convertible(dt))
        return cpu_gelu(dev, dt, n, x, y, tanh_approx);
    LP_BEGIN("gelu");
    const float *fx = in(&c_, x, n);
    float *fy = out(&c_, y, n);
    LP_RUN(cpu_gelu(dev, TP_F32, n, fx, fy, tanh_approx));
}

tp_status cpu_lp_gelu_bwd(void *dev, tp_dtype dt, int64_t n, const void *x, const void *dy,
                          void *dx, int tanh_approx)
{
    if (!convertible(dt))
        return cpu_gelu_bwd(dev, dt, n, x, dy, dx, tanh_approx);
    LP_BEGIN("gelu_bwd");
    const float *fx = in(&c_, x, n), *fdy = in(&c_, dy, n);
    float *fdx = out(&c_, dx, n);
    LP_RUN(cpu_gelu_bwd(dev, TP_F32, n, fx, fdy, fdx, tanh_approx));
}

tp_status cpu_lp_axpby(void *dev, tp_dtype dt, int64_t n, float alpha, const void *x, float beta,
                       void *y)
{
    if (!convertible(dt))
        return cpu_axpby(dev, dt, n, alpha, x, beta, y);
    LP_BEGIN("axpby");
    const float *fx = in(&c_, x, n);
    float *fy = beta == 0.0f ? out(&c_, y, n) : inout(&c_, y, n); /* beta 0: y not read */
    LP_RUN(cpu_axpby(dev, TP_F32, n, alpha, fx, beta, fy));
}

tp_status cpu_lp_softmax(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x, void *y,
                         float scale, int causal)
{
    if (!convertible(dt))
        return cpu_softmax(dev, dt, rows, cols, x, y, scale, causal);
    LP_BEGIN("softmax");
    const float *fx = in(&c_, x, elems(rows, cols));
    float *fy = out(&c_, y, elems(rows, cols));
    LP_RUN(cpu_softmax(dev, TP_F32, rows, cols, fx, fy, scale, causal));
}

tp_status cpu_lp_softmax_bwd(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *y,
                             const void *dy, void *dx, float scale)
{
    if (!convertible(dt))
        return cpu_softmax_bwd(dev, dt, rows, cols, y, dy, dx, scale);
    LP_BEGIN("softmax_bwd");
    int64_t n = elems(rows, cols);
    const float *fy = in(&c_, y, n), *fdy = in(&c_, dy, n);
    float *fdx = out(&c_, dx, n);
    LP_RUN(cpu_softmax_bwd(dev, TP_F32, rows, cols, fy, fdy, fdx, scale));
}

tp_status cpu_lp_norm(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                      const void *gamma, const void *beta, void *y, float *mean, float *rstd,
                      float eps, int rms)
{
    if (!convertible(dt))
        return cpu_norm(dev, dt, rows, cols, x, gamma, beta, y, mean, rstd, eps, rms);
    LP_BEGIN(rms ? "norm (rms)" : "norm");
    int64_t n = elems(rows, cols), nc = rows > 0 ? cols : 0;
    const float *fx = in(&c_, x, n), *fg = in(&c_, gamma, nc), *fb = in(&c_, beta, nc);
    float *fy = out(&c_, y, n);
    LP_RUN(cpu_norm(dev, TP_F32, rows, cols, fx, fg, fb, fy, mean, rstd, eps, rms));
}

tp_status cpu_lp_norm_bwd(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                          const void *gamma, const float *mean, const float *rstd, const void *dy,
                          void *dx, void *dgamma, void *dbeta, int rms)
{
    if (!convertible(dt))
        return cpu_norm_bwd(dev, dt, rows, cols, x, gamma, mean, rstd, dy, dx, dgamma, dbeta, rms);
    LP_BEGIN(rms ? "norm_bwd (rms)" : "norm_bwd");
    int64_t n = elems(rows, cols), nc = rows > 0 ? cols : 0;
    const float *fx = in(&c_, x, n), *fg = in(&c_, gamma, nc), *fdy = in(&c_, dy, n);
    float *fdx = out(&c_, dx, n);
    float *fdg = inout(&c_, dgamma, cols), *fdb = inout(&c_, dbeta, cols);
    LP_RUN(cpu_norm_bwd(dev, TP_F32, rows, cols, fx, fg, mean, rstd, fdy, fdx, fdg, fdb, rms));
}

tp_status cpu_lp_embedding(void *dev, tp_dtype dt, int64_t n, int64_t dim, const int32_t *ids,
                           int64_t lo, int64_t hi, const void *table, void *out_)
{
    if (!convertible(dt))
        return cpu_embedding(dev, dt, n, dim, ids, lo, hi, table, out_);
    LP_BEGIN("embedding");
    const float *ft = in(&c_, table, hi > lo ? elems(hi - lo, dim) : 0);
    float *fo = out(&c_, out_, elems(n, dim));
    LP_RUN(cpu_embedding(dev, TP_F32, n, dim, ids, lo, hi, ft, fo));
}

tp_status cpu_lp_embedding_bwd(void *dev, tp_dtype dt, int64_t n, int64_t dim, const int32_t *ids,
                               int64_t lo, int64_t hi, const void *dout, void *dtable)
{
    if (!convertible(dt))
        return cpu_embedding_bwd(dev, dt, n, dim, ids, lo, hi, dout, dtable);
    LP_BEGIN("embedding_bwd");
    const float *fd = in(&c_, dout, elems(n, dim));
    float *ft = inout(&c_, dtable, hi > lo ? elems(hi - lo, dim) : 0);
    LP_RUN(cpu_embedding_bwd(dev, TP_F32, n, dim, ids, lo, hi, fd, ft));
}

tp_status cpu_lp_row_max(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                         float *o)
{
    if (!convertible(dt))
        return cpu_row_max(dev, dt, rows, cols, x, o);
    LP_BEGIN("row_max");
    const float *fx = in(&c_, x, elems(rows, cols));
    LP_RUN(cpu_row_max(dev, TP_F32, rows, cols, fx, o));
}

tp_status cpu_lp_ce_stats(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *logits,
                          const int32_t *targets, int64_t lo, const float *rowmax, float *out3)
{
    if (!convertible(dt))
        return cpu_ce_stats(dev, dt, rows, cols, logits, targets, lo, rowmax, out3);
    LP_BEGIN("ce_stats");
    const float *fx = in(&c_, logits, elems(rows, cols));
    LP_RUN(cpu_ce_stats(dev, TP_F32, rows, cols, fx, targets, lo, rowmax, out3));
}

tp_status cpu_lp_ce_bwd(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *logits,
                        const int32_t *targets, int64_t lo, int64_t vocab, const float *rowmax,
                        const float *sumexp, const float *row_scale, float smoothing, void *dlogits)
{
    if (!convertible(dt))
        return cpu_ce_bwd(dev, dt, rows, cols, logits, targets, lo, vocab, rowmax, sumexp,
                          row_scale, smoothing, dlogits);
    LP_BEGIN("ce_bwd");
    const float *fx = in(&c_, logits, elems(rows, cols));
    float *fd = out(&c_, dlogits, elems(rows, cols));
    LP_RUN(cpu_ce_bwd(dev, TP_F32, rows, cols, fx, targets, lo, vocab, rowmax, sumexp, row_scale,
                      smoothing, fd));
}
