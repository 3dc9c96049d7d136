/* common.c — checks, scratch buffers and the rank-major column gather. */
#include "layers-internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

tp_status tp_ws_reserve(tp_ws *ws, size_t bytes, const char *who)
{
    if (ws->ptr && ws->bytes >= bytes)
        return TP_OK;
    tp_dev_free(ws->dev, ws->ptr);
    ws->ptr = NULL;
    ws->bytes = 0;
    void *p = NULL;
    tp_status st = tp_dev_alloc(ws->dev, bytes ? bytes : 1, &p);
    if (st != TP_OK)
        return tp_set_error(st, "%s: cannot allocate %zu bytes of scratch memory: %s", who, bytes,
                            tp_last_error());
    ws->ptr = p;
    ws->bytes = bytes;
    return TP_OK;
}

void tp_ws_release(tp_ws *ws)
{
    if (ws->ptr)
        tp_dev_free(ws->dev, ws->ptr);
    ws->ptr = NULL;
    ws->bytes = 0;
}

char *tp_layer_label(const char *kind, const char *name, tp_comm *comm)
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

static tp_status check_common(const char *who, const char *what, const tp_tensor *t, tp_device *dev)
{
    if (!t)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: %s is NULL", who, what);
    if (t->dtype != TP_F32)
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: %s has dtype %s but the layer's weights are f32; dtype mismatch "
                            "(convert %s to f32)",
                            who, what, tp_dtype_name(t->dtype), what);
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

tp_status tp_layer_check_act(const char *who, const char *what, const tp_tensor *t, tp_device *dev,
                             int64_t *tokens)
{
    tp_status st = check_common(who, what, t, dev);
    if (st != TP_OK)
        return st;
    *tokens = lead_tokens(t);
    return TP_OK;
}

tp_tensor tp_layer_view2(const tp_tensor *t, int64_t rows, int64_t cols)
{
    int64_t shape[2] = {rows, cols};
    return tp_tensor_view(t->dev, t->dtype, t->data, 2, shape);
}

tp_status tp_layer_prepare_out(const char *who, const char *what, tp_tensor *out,
                               const tp_tensor *like, tp_device *dev, int64_t cols,
                               const char *hint)
{
    if (!out)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: %s is NULL", who, what);
    if (!out->data && out->ndim == 0) {
        int64_t shape[TP_MAX_DIMS];
        for (int i = 0; i + 1 < like->ndim; i++)
            shape[i] = like->shape[i];
        shape[like->ndim - 1] = cols;
        tp_status st = tp_tensor_alloc(dev, TP_F32, like->ndim, shape, out);
        if (st != TP_OK)
            return tp_set_error(st, "%s: cannot allocate %s: %s", who, what, tp_last_error());
        return TP_OK;
    }
    tp_status st = check_common(who, what, out, dev);
    if (st != TP_OK)
        return st;
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

tp_status tp_layer_gather_cols(tp_comm *comm, const void *src, void *dst, void *tmp, int64_t rows,
                               const int64_t *off, size_t *counts)
{
    int T = tp_comm_size(comm);
    size_t es = sizeof(float);
    for (int i = 0; i < T; i++)
        counts[i] = (size_t)(rows * (off[i + 1] - off[i]));
    tp_status st = tp_all_gatherv(comm, src, tmp, counts, TP_F32);
    if (st != TP_OK)
        return st;
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
        st = tp_dev_copy_2d(dev, (char *)dst + (size_t)off[i] * es, (size_t)n * es,
                            (const char *)tmp + (size_t)(rows * off[i]) * es, (size_t)w * es,
                            (size_t)w * es, (size_t)rows);
        if (st != TP_OK)
            return st;
    }
    return TP_OK;
}
