/* SPDX-License-Identifier: MIT */
/* device.c — the device API: argument checks, dispatch, counters. */
#include <stdlib.h>
#include <string.h>

#include "tp-internal.h"

void tpi_device_init(tp_device *dev, const tp_device_ops *ops, const char *name, void *handle,
                     const tp_rank_env *env, tp_rank_state *state)
{
    memset(dev, 0, sizeof *dev);
    dev->ops = ops;
    dev->name = name;
    dev->handle = handle;
    dev->env = *env;
    dev->state = state;
    const char *sync = getenv("TP_SYNC_TIMING");
    dev->sync_timing = env->stream && sync && strcmp(sync, "1") == 0;
    dev->events = env->stream && !dev->sync_timing && ops->event_create && ops->event_record &&
                  ops->event_elapsed && ops->event_destroy;
}

const char *tp_device_name(const tp_device *dev)
{
    return dev ? dev->name : NULL;
}

tp_mem_kind tp_device_mem_kind(const tp_device *dev)
{
    return dev ? dev->env.mem_kind : TP_MEM_HOST;
}

/* ------------------------------------------------------------- helpers */

static tp_status enter(const tp_device *dev, bool provided, const char *op)
{
    if (!dev)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_dev_%s: dev is NULL", op);
    if (!provided)
        return tp_set_error(TP_ERR_NOT_SUPPORTED,
                            "device '%s' does not provide op '%s'; use a device plugin that "
                            "has it (tp-info lists each plugin's ops)",
                            dev->name, op);
    tp_clear_error();
    return TP_OK;
}

/* Count a finished call under the rank's phase: gemm or kernel. */
static tp_status leave(tp_device *dev, const char *op, double flops, tp_tick t0, tp_status st)
{
    if (st) {
        tpi_tick_cancel(dev, t0);
        if (!tp_last_error()[0])
            tp_set_error(st, "device '%s': %s failed without a message", dev->name, op);
        return st;
    }
    tp_phase ph = dev->state->phase;
    bool gemm = strcmp(op, "gemm") == 0;
    tp_counter *c = gemm ? &dev->gemm[ph] : &dev->kernel[ph];
    c->calls++;
    tpi_tick_stop(dev, t0, &c->seconds);
    if (gemm)
        dev->gemm_flops[ph] += flops;
    return TP_OK;
}

/* Call slot `op` of dev's plugin, recorded as the rank's current plugin
 * call (launch.c names it if the plugin crashes). */
#define DEV_CALL(dev, op, ...)                                                                     \
    (tpi_call_enter((dev)->state, #op, (dev)->state->dev_path, ++(dev)->state->dev_calls, false),  \
     tpi_call_leave((dev)->state, (dev)->ops->op((dev)->handle, __VA_ARGS__)))

/* Dispatch to slot `op` of dev, counted as a gemm (with flops) or a kernel. */
#define DISPATCH(dev, op, flops, ...)                                                              \
    do {                                                                                           \
        tp_status st_ = enter(dev, (dev) && (dev)->ops->op != NULL, #op);                          \
        if (st_)                                                                                   \
            return st_;                                                                            \
        tp_tick t0_ = tpi_tick_start(dev);                                                         \
        st_ = DEV_CALL(dev, op, __VA_ARGS__);                                                      \
        return leave(dev, #op, flops, t0_, st_);                                                   \
    } while (0)

static tp_status bad(const char *op, const char *what)
{
    return tp_set_error(TP_ERR_INVALID_ARG, "tp_dev_%s: %s", op, what);
}

/* A float dtype the kernels take (f32, f16, bf16). */
static tp_status check_dt(const char *op, tp_dtype dt)
{
    if (dt != TP_F32 && dt != TP_F16 && dt != TP_BF16)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "tp_dev_%s: dtype %d is not a float dtype (f32, f16, bf16)", op,
                            (int)dt);
    return TP_OK;
}

static tp_status check_dims(const char *op, int64_t rows, int64_t cols)
{
    if (rows < 0 || cols < 0)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_dev_%s: negative size (%lld, %lld)", op,
                            (long long)rows, (long long)cols);
    return TP_OK;
}

/* NULL pointers are allowed only when there are no elements. `names` is
 * "a,b,c", one name per pointer. Allocates nothing. */
static tp_status check_ptrs(const char *op, int64_t n, const char *names, int count, ...)
{
    if (n == 0)
        return TP_OK;
    va_list ap;
    va_start(ap, count);
    tp_status st = TP_OK;
    const char *name = names;
    for (int i = 0; i < count && !st; i++) {
        const void *p = va_arg(ap, const void *);
        size_t len = strcspn(name, ",");
        if (!p)
            st = tp_set_error(TP_ERR_INVALID_ARG, "tp_dev_%s: %.*s is NULL (size %lld)", op,
                              (int)len, name, (long long)n);
        name += name[len] ? len + 1 : len;
    }
    va_end(ap);
    return st;
}

/* --------------------------------------------------------- memory ops */

tp_status tp_dev_alloc(tp_device *dev, size_t bytes, void **ptr)
{
    if (!ptr)
        return bad("alloc", "ptr is NULL");
    *ptr = NULL;
    TP_TRY(enter(dev, true, "alloc"));
    tp_status st = DEV_CALL(dev, alloc, bytes, ptr);
    if (st && !tp_last_error()[0])
        tp_set_error(st, "device '%s': alloc of %zu bytes failed", dev->name, bytes);
    return st;
}

void tp_dev_free(tp_device *dev, void *ptr)
{
    if (dev && ptr)
        dev->ops->free(dev->handle, ptr);
}

tp_status tp_dev_upload(tp_device *dev, void *dst, const void *host_src, size_t bytes)
{
    TP_TRY(check_ptrs("upload", (int64_t)bytes, "dst,host_src", 2, dst, host_src));
    DISPATCH(dev, upload, 0, dst, host_src, bytes);
}

tp_status tp_dev_download(tp_device *dev, void *host_dst, const void *src, size_t bytes)
{
    TP_TRY(check_ptrs("download", (int64_t)bytes, "host_dst,src", 2, host_dst, src));
    DISPATCH(dev, download, 0, host_dst, src, bytes);
}

tp_status tp_dev_copy_2d(tp_device *dev, void *dst, size_t dpitch, const void *src, size_t spitch,
                         size_t width_bytes, size_t height)
{
    if (height > 1 && (dpitch < width_bytes || spitch < width_bytes))
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "tp_dev_copy_2d: pitches (dst %zu, src %zu) smaller than the row "
                            "width %zu bytes",
                            dpitch, spitch, width_bytes);
    TP_TRY(check_ptrs("copy_2d", (int64_t)(width_bytes * height), "dst,src", 2, dst, src));
    DISPATCH(dev, copy_2d, 0, dst, dpitch, src, spitch, width_bytes, height);
}

tp_status tp_dev_memset(tp_device *dev, void *ptr, int value, size_t bytes)
{
    TP_TRY(check_ptrs("memset", (int64_t)bytes, "ptr", 1, ptr));
    DISPATCH(dev, memset, 0, ptr, value, bytes);
}

tp_status tp_dev_synchronize(tp_device *dev)
{
    TP_TRY(enter(dev, true, "synchronize"));
    tp_tick t0 = {tpi_now(), NULL}; /* a host wait: host time */
    dev->state->tick_ns = (int64_t)(t0.t0 * 1e9);
    tpi_call_enter(dev->state, "synchronize", dev->state->dev_path, ++dev->state->dev_calls, false);
    tp_status st = tpi_call_leave(dev->state, dev->ops->synchronize(dev->handle));
    return leave(dev, "synchronize", 0, t0, st);
}

/* ----------------------------------------------------------------- gemm */

/* Argument checks of a gemm-like call `op`: sizes, pitches, pointers. */
static tp_status check_gemm(const char *op, const tp_gemm_args *g)
{
    if (!g)
        return bad(op, "args is NULL");
    if (g->struct_size < sizeof *g)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "tp_dev_gemm: args.struct_size is %zu, expected sizeof(tp_gemm_args) "
                            "= %zu",
                            g->struct_size, sizeof *g);
    if (g->dtype != TP_F32 && g->dtype != TP_F16 && g->dtype != TP_BF16)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_dev_gemm: dtype %d is not f32, f16 or bf16",
                            (int)g->dtype);
    if (g->m < 0 || g->n < 0 || g->k < 0 || g->batch < 1)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "tp_dev_gemm: bad sizes m=%lld n=%lld k=%lld batch=%lld (expected "
                            "m, n, k >= 0 and batch >= 1)",
                            (long long)g->m, (long long)g->n, (long long)g->k, (long long)g->batch);
    /* Row pitches of the matrices as stored (row-major). */
    int64_t min_lda = g->trans_a ? g->m : g->k, min_ldb = g->trans_b ? g->k : g->n;
    if (g->m && g->k && g->lda < (min_lda > 1 ? min_lda : 1))
        return tp_set_error(
            TP_ERR_INVALID_ARG, "tp_dev_gemm: lda=%lld < %lld (A is stored %s, %lld x %lld)",
            (long long)g->lda, (long long)min_lda, g->trans_a ? "transposed" : "as is",
            (long long)(g->trans_a ? g->k : g->m), (long long)(g->trans_a ? g->m : g->k));
    if (g->k && g->n && g->ldb < (min_ldb > 1 ? min_ldb : 1))
        return tp_set_error(
            TP_ERR_INVALID_ARG, "tp_dev_gemm: ldb=%lld < %lld (B is stored %s, %lld x %lld)",
            (long long)g->ldb, (long long)min_ldb, g->trans_b ? "transposed" : "as is",
            (long long)(g->trans_b ? g->n : g->k), (long long)(g->trans_b ? g->k : g->n));
    if (g->m && g->n && g->ldc < g->n)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_dev_gemm: ldc=%lld < n=%lld", (long long)g->ldc,
                            (long long)g->n);
    TP_TRY(check_ptrs(op, g->m * g->k, "a", 1, g->a));
    TP_TRY(check_ptrs(op, g->k * g->n, "b", 1, g->b));
    TP_TRY(check_ptrs(op, g->m * g->n, "c", 1, g->c));
    return TP_OK;
}

static double gemm_flops(const tp_gemm_args *g)
{
    return 2.0 * (double)g->m * (double)g->n * (double)g->k * (double)g->batch;
}

tp_status tp_dev_gemm(tp_device *dev, const tp_gemm_args *g)
{
    TP_TRY(check_gemm("gemm", g));
    DISPATCH(dev, gemm, gemm_flops(g), g);
}

tp_status tp_dev_gemm_bias_act(tp_device *dev, const tp_gemm_args *g, const void *bias, tp_act act,
                               void *pre)
{
    TP_TRY(check_gemm("gemm_bias_act", g));
    if (g->batch != 1 || g->alpha != 1.0f || g->beta != 0.0f)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "tp_dev_gemm_bias_act: batch %lld, alpha %g, beta %g; the fused "
                            "epilogue takes batch 1, alpha 1, beta 0 (use tp_dev_gemm and the "
                            "kernels for anything else)",
                            (long long)g->batch, (double)g->alpha, (double)g->beta);
    if ((int)act < 0 || act >= TP_ACT_COUNT_)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "tp_dev_gemm_bias_act: act %d is not a tp_act (TP_ACT_NONE, "
                            "TP_ACT_GELU, TP_ACT_GELU_TANH)",
                            (int)act);
    if (pre && pre == g->c && g->m * g->n > 0)
        return bad("gemm_bias_act", "pre and c are the same buffer; pass NULL for pre when the "
                                    "pre-activation is not needed");
    TP_TRY(enter(dev, true, "gemm_bias_act"));
    if (g->m == 0 || g->n == 0)
        return TP_OK;
    if (dev->ops->gemm_bias_act) {
        tp_tick t0 = tpi_tick_start(dev);
        tp_status st = DEV_CALL(dev, gemm_bias_act, g, bias, act, pre);
        if (st != TP_ERR_NOT_SUPPORTED)
            return leave(dev, "gemm", gemm_flops(g), t0, st);
        tpi_tick_cancel(dev, t0);
        tp_clear_error(); /* this combination is not fused: compose it below */
    }
    /* gemm into the pre-activation buffer (or c), then bias, then act,
     * row by row when the rows are not contiguous (ldc > n) */
    tp_gemm_args g2 = *g;
    if (pre && act != TP_ACT_NONE)
        g2.c = pre;
    TP_TRY(tp_dev_gemm(dev, &g2));
    size_t es = tp_dtype_size(g->dtype), pitch = (size_t)g->ldc * es;
    int64_t blocks = g->ldc == g->n ? 1 : g->m, rows = g->m / blocks;
    for (int64_t r = 0; r < blocks; r++) {
        char *p = (char *)g2.c + (size_t)r * pitch;
        if (bias)
            TP_TRY(tp_dev_bias_add(dev, g->dtype, rows, g->n, p, bias));
        if (act != TP_ACT_NONE)
            TP_TRY(tp_dev_gelu(dev, g->dtype, rows * g->n, p, (char *)g->c + (size_t)r * pitch,
                               act == TP_ACT_GELU_TANH));
    }
    if (pre && act == TP_ACT_NONE)
        TP_TRY(tp_dev_copy_2d(dev, pre, pitch, g->c, pitch, (size_t)g->n * es, (size_t)g->m));
    return TP_OK;
}

tp_status tp_dev_reduce(tp_device *dev, tp_dtype dt, tp_redop op, int64_t n, const void *x, void *y)
{
    if (dt != TP_I32)
        TP_TRY(check_dt("reduce", dt));
    TP_TRY(check_dims("reduce", n, 0));
    if ((int)op < 0 || op >= TP_REDOP_COUNT_)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "tp_dev_reduce: op %d is not a tp_redop (TP_SUM, TP_MAX, TP_MIN)",
                            (int)op);
    TP_TRY(check_ptrs("reduce", n, "x,y", 2, x, y));
    DISPATCH(dev, reduce, 0, dt, op, n, x, y);
}

/* -------------------------------------------------------------- kernels */

tp_status tp_dev_bias_add(tp_device *dev, tp_dtype dt, int64_t rows, int64_t cols, void *y,
                          const void *bias)
{
    TP_TRY(check_dt("bias_add", dt));
    TP_TRY(check_dims("bias_add", rows, cols));
    TP_TRY(check_ptrs("bias_add", rows * cols, "y,bias", 2, y, bias));
    DISPATCH(dev, bias_add, 0, dt, rows, cols, y, bias);
}

tp_status tp_dev_bias_grad(tp_device *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *dy,
                           void *db)
{
    TP_TRY(check_dt("bias_grad", dt));
    TP_TRY(check_dims("bias_grad", rows, cols));
    TP_TRY(check_ptrs("bias_grad", rows * cols, "dy", 1, dy));
    TP_TRY(check_ptrs("bias_grad", cols, "db", 1, db));
    DISPATCH(dev, bias_grad, 0, dt, rows, cols, dy, db);
}

tp_status tp_dev_gelu(tp_device *dev, tp_dtype dt, int64_t n, const void *x, void *y,
                      int tanh_approx)
{
    TP_TRY(check_dt("gelu", dt));
    TP_TRY(check_dims("gelu", n, 0));
    TP_TRY(check_ptrs("gelu", n, "x,y", 2, x, y));
    DISPATCH(dev, gelu, 0, dt, n, x, y, tanh_approx);
}

tp_status tp_dev_gelu_bwd(tp_device *dev, tp_dtype dt, int64_t n, const void *x, const void *dy,
                          void *dx, int tanh_approx)
{
    TP_TRY(check_dt("gelu_bwd", dt));
    TP_TRY(check_dims("gelu_bwd", n, 0));
    TP_TRY(check_ptrs("gelu_bwd", n, "x,dy,dx", 3, x, dy, dx));
    DISPATCH(dev, gelu_bwd, 0, dt, n, x, dy, dx, tanh_approx);
}

tp_status tp_dev_axpby(tp_device *dev, tp_dtype dt, int64_t n, float alpha, const void *x,
                       float beta, void *y)
{
    TP_TRY(check_dt("axpby", dt));
    TP_TRY(check_dims("axpby", n, 0));
    TP_TRY(check_ptrs("axpby", n, "x,y", 2, x, y));
    DISPATCH(dev, axpby, 0, dt, n, alpha, x, beta, y);
}

tp_status tp_dev_softmax(tp_device *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                         void *y, float scale, int causal)
{
    TP_TRY(check_dt("softmax", dt));
    TP_TRY(check_dims("softmax", rows, cols));
    TP_TRY(check_ptrs("softmax", rows * cols, "x,y", 2, x, y));
    DISPATCH(dev, softmax, 0, dt, rows, cols, x, y, scale, causal);
}

tp_status tp_dev_softmax_bwd(tp_device *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *y,
                             const void *dy, void *dx, float scale)
{
    TP_TRY(check_dt("softmax_bwd", dt));
    TP_TRY(check_dims("softmax_bwd", rows, cols));
    TP_TRY(check_ptrs("softmax_bwd", rows * cols, "y,dy,dx", 3, y, dy, dx));
    DISPATCH(dev, softmax_bwd, 0, dt, rows, cols, y, dy, dx, scale);
}

tp_status tp_dev_norm(tp_device *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                      const void *gamma, const void *beta, void *y, float *mean, float *rstd,
                      float eps, int rms)
{
    TP_TRY(check_dt("norm", dt));
    TP_TRY(check_dims("norm", rows, cols));
    TP_TRY(check_ptrs("norm", rows * cols, "x,gamma,y", 3, x, gamma, y));
    TP_TRY(check_ptrs("norm", rows, "rstd", 1, rstd));
    if (!rms)
        TP_TRY(check_ptrs("norm", rows, "mean (needed unless rms)", 1, mean));
    DISPATCH(dev, norm, 0, dt, rows, cols, x, gamma, beta, y, mean, rstd, eps, rms);
}

tp_status tp_dev_norm_bwd(tp_device *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                          const void *gamma, const float *mean, const float *rstd, const void *dy,
                          void *dx, void *dgamma, void *dbeta, int rms)
{
    TP_TRY(check_dt("norm_bwd", dt));
    TP_TRY(check_dims("norm_bwd", rows, cols));
    TP_TRY(check_ptrs("norm_bwd", rows * cols, "x,gamma,dy,dx", 4, x, gamma, dy, dx));
    TP_TRY(check_ptrs("norm_bwd", rows, "rstd", 1, rstd));
    if (!rms)
        TP_TRY(check_ptrs("norm_bwd", rows, "mean (needed unless rms)", 1, mean));
    DISPATCH(dev, norm_bwd, 0, dt, rows, cols, x, gamma, mean, rstd, dy, dx, dgamma, dbeta, rms);
}

static tp_status check_range(const char *op, int64_t lo, int64_t hi)
{
    if (lo < 0 || hi < lo)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_dev_%s: bad id range [%lld, %lld)", op,
                            (long long)lo, (long long)hi);
    return TP_OK;
}

tp_status tp_dev_embedding(tp_device *dev, tp_dtype dt, int64_t n, int64_t dim, const int32_t *ids,
                           int64_t lo, int64_t hi, const void *table, void *out)
{
    TP_TRY(check_dt("embedding", dt));
    TP_TRY(check_dims("embedding", n, dim));
    TP_TRY(check_range("embedding", lo, hi));
    TP_TRY(check_ptrs("embedding", n, "ids", 1, ids));
    TP_TRY(check_ptrs("embedding", n * dim, "out", 1, out));
    TP_TRY(check_ptrs("embedding", (hi - lo) * dim, "table", 1, table));
    DISPATCH(dev, embedding, 0, dt, n, dim, ids, lo, hi, table, out);
}

tp_status tp_dev_embedding_bwd(tp_device *dev, tp_dtype dt, int64_t n, int64_t dim,
                               const int32_t *ids, int64_t lo, int64_t hi, const void *dout,
                               void *dtable)
{
    TP_TRY(check_dt("embedding_bwd", dt));
    TP_TRY(check_dims("embedding_bwd", n, dim));
    TP_TRY(check_range("embedding_bwd", lo, hi));
    TP_TRY(check_ptrs("embedding_bwd", n, "ids", 1, ids));
    TP_TRY(check_ptrs("embedding_bwd", n * dim, "dout", 1, dout));
    TP_TRY(check_ptrs("embedding_bwd", (hi - lo) * dim, "dtable", 1, dtable));
    DISPATCH(dev, embedding_bwd, 0, dt, n, dim, ids, lo, hi, dout, dtable);
}

tp_status tp_dev_row_max(tp_device *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                         float *out)
{
    TP_TRY(check_dt("row_max", dt));
    TP_TRY(check_dims("row_max", rows, cols));
    TP_TRY(check_ptrs("row_max", rows * cols, "x", 1, x));
    TP_TRY(check_ptrs("row_max", rows, "out", 1, out));
    DISPATCH(dev, row_max, 0, dt, rows, cols, x, out);
}

tp_status tp_dev_ce_stats(tp_device *dev, tp_dtype dt, int64_t rows, int64_t cols,
                          const void *logits, const int32_t *targets, int64_t lo,
                          const float *rowmax, float *out3)
{
    TP_TRY(check_dt("ce_stats", dt));
    TP_TRY(check_dims("ce_stats", rows, cols));
    TP_TRY(check_ptrs("ce_stats", rows * cols, "logits", 1, logits));
    TP_TRY(check_ptrs("ce_stats", rows, "targets,rowmax,out3", 3, targets, rowmax, out3));
    DISPATCH(dev, ce_stats, 0, dt, rows, cols, logits, targets, lo, rowmax, out3);
}

tp_status tp_dev_ce_bwd(tp_device *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *logits,
                        const int32_t *targets, int64_t lo, int64_t vocab, const float *rowmax,
                        const float *sumexp, const float *row_scale, float smoothing, void *dlogits)
{
    TP_TRY(check_dt("ce_bwd", dt));
    TP_TRY(check_dims("ce_bwd", rows, cols));
    if (vocab < cols)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_dev_ce_bwd: vocab %lld < cols %lld",
                            (long long)vocab, (long long)cols);
    TP_TRY(check_ptrs("ce_bwd", rows * cols, "logits,dlogits", 2, logits, dlogits));
    TP_TRY(check_ptrs("ce_bwd", rows, "targets,rowmax,sumexp,row_scale", 4, targets, rowmax, sumexp,
                      row_scale));
    DISPATCH(dev, ce_bwd, 0, dt, rows, cols, logits, targets, lo, vocab, rowmax, sumexp, row_scale,
             smoothing, dlogits);
}

tp_status tp_dev_adamw(tp_device *dev, int64_t n, float *param, const float *grad, float *m,
                       float *v, float lr, float beta1, float beta2, float eps, float weight_decay,
                       int64_t step)
{
    TP_TRY(check_dims("adamw", n, 0));
    if (step < 1)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "tp_dev_adamw: step %lld, expected >= 1 (the "
                            "bias correction divides by 1 - beta^step)",
                            (long long)step);
    TP_TRY(check_ptrs("adamw", n, "param,grad,m,v", 4, param, grad, m, v));
    DISPATCH(dev, adamw, 0, n, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step);
}
