/* SPDX-License-Identifier: MIT */
/* common.c — checks, scratch buffers, GEMM wrappers and the rank-major gathers. */
#include "layers-internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static tp_mem_use ws_kind(const tpl_ws *ws)
{
    return ws->keep ? TP_USE_ACTIVATIONS : TP_USE_WORKSPACE;
}

tp_status tpl_ws_reserve(tpl_ws *ws, size_t bytes, const char *who)
{
    if (ws->ptr && ws->bytes >= bytes)
        return TP_OK;
    tpl_ws_release(ws);
    void *p = NULL;
    tp_status st = tp_dev_alloc(ws->dev, bytes ? bytes : 1, &p);
    if (st != TP_OK)
        return tp_set_error(st, "%s: cannot allocate %zu bytes of scratch memory: %s", who, bytes,
                            tp_last_error());
    ws->ptr = p;
    ws->bytes = bytes;
    tp_mem_count(ws->dev, ws_kind(ws), (int64_t)bytes);
    return TP_OK;
}

void tpl_ws_release(tpl_ws *ws)
{
    if (ws->ptr) {
        tp_mem_count(ws->dev, ws_kind(ws), -(int64_t)ws->bytes);
        tp_dev_free(ws->dev, ws->ptr);
    }
    ws->ptr = NULL;
    ws->bytes = 0;
}

tp_status tpl_alloc(tp_device *dev, tp_mem_use kind, tp_dtype dt, int ndim, const int64_t *shape,
                    tp_tensor *out)
{
    TP_TRY(tp_tensor_alloc(dev, dt, ndim, shape, out));
    int64_t b = (int64_t)tp_tensor_bytes(out);
    tp_mem_count(dev, TP_USE_OTHER, -b);
    tp_mem_count(dev, kind, b);
    return TP_OK;
}

void tpl_release(tp_tensor *t, tp_mem_use kind)
{
    if (!t || !t->owned || !t->data) {
        tp_tensor_release(t);
        return;
    }
    int64_t b = (int64_t)tp_tensor_bytes(t);
    tp_mem_count(t->dev, kind, -b);
    tp_mem_count(t->dev, TP_USE_OTHER, b);
    tp_tensor_release(t);
}

tp_status tpl_check_overlap(const char *who, int overlap)
{
    if (overlap < 0 || overlap > TP_OVERLAP_MAX)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "%s: overlap %d is out of range: expected 0 or 1 (off) or a chunk "
                            "count 2..%d",
                            who, overlap, TP_OVERLAP_MAX);
    return TP_OK;
}

char *tpl_label(const char *kind, const char *name, tp_comm *comm)
{
    char buf[256];
    if (name && *name)
        snprintf(buf, sizeof buf, "%s '%s' (rank %d of T=%d)", kind, name, tp_comm_rank(comm),
                 tp_comm_size(comm));
    else
        snprintf(buf, sizeof buf, "%s (rank %d of T=%d)", kind, tp_comm_rank(comm),
                 tp_comm_size(comm));
    return strdup(buf);
}

static tp_status check_common(const char *who, const char *what, const tp_tensor *t, tp_device *dev,
                              tp_dtype dt)
{
    if (!t)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: %s is NULL", who, what);
    if (t->dtype != dt)
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: %s has dtype %s but the layer's weights are %s; dtype mismatch "
                            "(convert %s to %s, e.g. with tp_host_convert before the upload, or "
                            "create the layer with .dtype = the activations' dtype)",
                            who, what, tp_dtype_name(t->dtype), tp_dtype_name(dt), what,
                            tp_dtype_name(dt));
    if (t->dev != dev)
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: %s lives on a different device (%s %p) than the layer (%s %p); "
                            "allocate it with tp_comm_device() of the layer's comm on this rank's "
                            "thread",
                            who, what, t->dev ? tp_device_name(t->dev) : "none", (void *)t->dev,
                            tp_device_name(dev), (void *)dev);
    if (t->ndim < 2 || t->ndim > TP_MAX_DIMS)
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: %s has %d dims, expected 2 to %d ([tokens, features] or "
                            "[batch, seq, features]); a single token is [1, features]",
                            who, what, t->ndim, TP_MAX_DIMS);
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] < 0)
            return tp_set_error(TP_ERR_SHAPE, "%s: %s dim %d is negative (%lld)", who, what, i,
                                (long long)t->shape[i]);
    if (!t->data && tp_tensor_numel(t) > 0)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: %s has no data (not allocated?)", who, what);
    return TP_OK;
}

static int64_t lead_tokens(const tp_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i + 1 < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

tp_status tpl_check_act(const char *who, const char *what, const tp_tensor *t, tp_device *dev,
                        tp_dtype dt, int64_t *tokens)
{
    TP_TRY(check_common(who, what, t, dev, dt));
    *tokens = lead_tokens(t);
    return TP_OK;
}

tp_status tpl_mul(const char *who, const char *what, int64_t a, int64_t b, int64_t *n)
{
    int64_t p;
    /* the bound keeps p * sizeof(double) within int64 and size_t */
    if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &p) || p > INT64_MAX / 8)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "%s: %s = %lld x %lld overflows the addressable size; use smaller "
                            "dimensions",
                            who, what, (long long)a, (long long)b);
    *n = p;
    return TP_OK;
}

tp_status tpl_check_dtype(const char *who, tp_dtype dt)
{
    if (dt == TP_F32 || dt == TP_BF16 || dt == TP_F16)
        return TP_OK;
    return tp_set_error(TP_ERR_INVALID_ARG,
                        "%s: dtype %d (%s) cannot hold a layer's weights and activations; expected "
                        "TP_F32, TP_BF16 or TP_F16",
                        who, (int)dt, tp_dtype_name(dt));
}

tp_status tpl_upload_f32(tp_device *dev, tp_dtype dt, void *dst, const float *src, size_t n)
{
    if (dt == TP_F32 || !n)
        return tp_dev_upload(dev, dst, src, n * sizeof(float));
    void *h = malloc(n * tp_dtype_size(dt));
    if (!h)
        return tp_set_error(TP_ERR_NO_MEMORY, "out of host memory converting %zu values to %s", n,
                            tp_dtype_name(dt));
    tp_host_convert(dt, h, TP_F32, src, n);
    tp_status st = tp_dev_upload(dev, dst, h, n * tp_dtype_size(dt));
    free(h);
    return st;
}

tp_status tpl_download_f32(tp_device *dev, tp_dtype dt, float *dst, const void *src, size_t n)
{
    if (dt == TP_F32 || !n)
        return tp_dev_download(dev, dst, src, n * sizeof(float));
    void *h = malloc(n * tp_dtype_size(dt));
    if (!h)
        return tp_set_error(TP_ERR_NO_MEMORY, "out of host memory converting %zu %s values", n,
                            tp_dtype_name(dt));
    tp_status st;
    TP_TRY_GOTO(tp_dev_download(dev, h, src, n * tp_dtype_size(dt)), st, out);
    tp_host_convert(TP_F32, dst, dt, h, n);
out:
    free(h);
    return st;
}

void tpl_host_block(const float *full, int64_t cols, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                    float *out)
{
    int64_t w = c1 - c0;
    for (int64_t r = r0; r < r1; r++)
        memcpy(out + (r - r0) * w, full + r * cols + c0, (size_t)w * sizeof(float));
}

tp_tensor tpl_view2(const tp_tensor *t, int64_t rows, int64_t cols)
{
    int64_t shape[2] = {rows, cols};
    return tp_tensor_view(t->dev, t->dtype, t->data, 2, shape);
}

tp_tensor tpl_view2p(tp_device *dev, tp_dtype dt, void *p, int64_t rows, int64_t cols)
{
    int64_t shape[2] = {rows, cols};
    return tp_tensor_view(dev, dt, p, 2, shape);
}

tp_status tpl_gemm_batched(tp_device *dev, tp_dtype dt, int ta, int tb, int64_t m, int64_t n,
                           int64_t k, float beta, const void *a, int64_t lda, int64_t sa,
                           const void *b, int64_t ldb, int64_t sb, void *c, int64_t ldc, int64_t sc,
                           int64_t batch)
{
    size_t es = tp_dtype_size(dt);
    if (m == 0 || n == 0 || batch == 0)
        return TP_OK;
    if (k == 0) { /* C = beta C: nothing to do unless beta is 0 */
        if (beta != 0.0f)
            return TP_OK;
        for (int64_t bi = 0; bi < batch; bi++)
            for (int64_t r = 0; r < m; r++)
                TP_TRY(tp_dev_memset(dev, (char *)c + (size_t)(bi * sc + r * ldc) * es, 0,
                                     (size_t)n * es));
        return TP_OK;
    }
    tp_gemm_args g = {
        .struct_size = sizeof g,
        .dtype = dt,
        .trans_a = ta,
        .trans_b = tb,
        .m = m,
        .n = n,
        .k = k,
        .alpha = 1.0f,
        .beta = beta,
        .a = a,
        .lda = lda,
        .stride_a = sa,
        .b = b,
        .ldb = ldb,
        .stride_b = sb,
        .c = c,
        .ldc = ldc,
        .stride_c = sc,
        .batch = batch,
    };
    return tp_dev_gemm(dev, &g);
}

tp_status tpl_gemm(tp_device *dev, tp_dtype dt, int ta, int tb, int64_t m, int64_t n, int64_t k,
                   float beta, const void *a, int64_t lda, const void *b, int64_t ldb, void *c,
                   int64_t ldc)
{
    return tpl_gemm_batched(dev, dt, ta, tb, m, n, k, beta, a, lda, 0, b, ldb, 0, c, ldc, 0, 1);
}

void tpl_shard_offsets(int64_t n, int T, int64_t *off)
{
    for (int i = 0; i < T; i++)
        tp_shard_range(n, T, i, &off[i], &off[i + 1]);
}

size_t *tpl_row_counts(const int64_t *off, int T, int64_t cols, size_t *counts)
{
    for (int i = 0; i < T; i++)
        counts[i] = (size_t)((off[i + 1] - off[i]) * cols);
    return counts;
}

tp_status tpl_gather_rows(tp_comm *comm, tp_dtype dt, const void *shard, void *full,
                          const int64_t *off, int64_t cols, size_t *counts)
{
    return tp_all_gatherv(comm, shard, full, tpl_row_counts(off, tp_comm_size(comm), cols, counts),
                          dt);
}

tp_status tpl_prepare_out(const char *who, const char *what, tp_tensor *out, const tp_tensor *like,
                          tp_device *dev, tp_dtype dt, int64_t cols, const char *hint)
{
    if (!out)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: %s is NULL", who, what);
    if (!out->data && out->ndim == 0) {
        int64_t shape[TP_MAX_DIMS];
        for (int i = 0; i + 1 < like->ndim; i++)
            shape[i] = like->shape[i];
        shape[like->ndim - 1] = cols;
        tp_status st = tp_tensor_alloc(dev, dt, like->ndim, shape, out);
        if (st != TP_OK)
            return tp_set_error(st, "%s: cannot allocate %s: %s", who, what, tp_last_error());
        return TP_OK;
    }
    TP_TRY(check_common(who, what, out, dev, dt));
    int64_t tx = lead_tokens(like), ty = lead_tokens(out);
    if (tx != ty)
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: tokens mismatch: %s has %lld tokens (product of its leading dims) "
                            "but the input has %lld; pass an output with the input's leading dims "
                            "or a zeroed tp_tensor to have it allocated",
                            who, what, (long long)ty, (long long)tx);
    int64_t got = out->shape[out->ndim - 1];
    if (got != cols)
        return tp_set_error(TP_ERR_SHAPE, "%s: %s last dim expected %lld, got %lld%s", who, what,
                            (long long)cols, (long long)got, hint ? hint : "");
    return TP_OK;
}

tp_status tpl_gather_cols(tp_comm *comm, tp_dtype dt, const void *src, void *dst, void *tmp,
                          int64_t rows, const int64_t *off, size_t *counts)
{
    int T = tp_comm_size(comm);
    size_t es = tp_dtype_size(dt);
    for (int i = 0; i < T; i++)
        counts[i] = (size_t)(rows * (off[i + 1] - off[i]));
    TP_TRY(tp_all_gatherv(comm, src, tmp, counts, dt));
    if (rows == 0)
        return TP_OK;
    /* The gathered blocks are rank-major: block i is [rows, part_i] at
     * element offset rows*off[i]. Place each as columns [off[i], off[i+1]). */
    int64_t n = off[T];
    tp_device *dev = tp_comm_device(comm);
    for (int i = 0; i < T; i++) {
        int64_t w = off[i + 1] - off[i];
        if (w == 0)
            continue;
        TP_TRY(tp_dev_copy_2d(dev, (char *)dst + (size_t)off[i] * es, (size_t)n * es,
                              (const char *)tmp + (size_t)(rows * off[i]) * es, (size_t)w * es,
                              (size_t)w * es, (size_t)rows));
    }
    return TP_OK;
}
