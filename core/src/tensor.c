/* SPDX-License-Identifier: MIT */
/* tensor.c — contiguous row-major tensors in a device's memory. */
#include <stdio.h>
#include <string.h>

#include "tp-internal.h"

/* "[13, 17] f32" for messages. */
static const char *describe(const tp_tensor *t, char *buf, size_t len)
{
    size_t o = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < t->ndim && i < TP_MAX_DIMS && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (o < len)
        snprintf(buf + o, len - o, "] %s", tp_dtype_name(t->dtype));
    return buf;
}

static tp_status check_shape(const char *fn, tp_dtype dt, int ndim, const int64_t *shape,
                             size_t *bytes)
{
    if (!tp_dtype_size(dt))
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: invalid dtype %d", fn, (int)dt);
    if (ndim < 1 || ndim > TP_MAX_DIMS)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: ndim %d, expected 1..%d", fn, ndim,
                            TP_MAX_DIMS);
    if (!shape)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: shape is NULL", fn);
    size_t n = tp_dtype_size(dt);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return tp_set_error(TP_ERR_INVALID_ARG, "%s: dimension %d is %lld, expected >= 0", fn,
                                i, (long long)shape[i]);
        if (shape[i] && n > SIZE_MAX / (size_t)shape[i])
            return tp_set_error(TP_ERR_INVALID_ARG, "%s: tensor size overflows size_t", fn);
        n *= (size_t)shape[i];
    }
    *bytes = n;
    return TP_OK;
}

tp_status tp_tensor_alloc(tp_device *dev, tp_dtype dt, int ndim, const int64_t *shape,
                          tp_tensor *out)
{
    static const char fn[] = "tp_tensor_alloc";
    if (!out)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: out is NULL", fn);
    memset(out, 0, sizeof *out);
    if (!dev)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: dev is NULL", fn);
    size_t bytes = 0;
    TP_TRY(check_shape(fn, dt, ndim, shape, &bytes));
    tp_tensor t = {.dtype = dt, .ndim = ndim, .dev = dev, .owned = true};
    memcpy(t.shape, shape, (size_t)ndim * sizeof *shape);
    tp_status st = tp_dev_alloc(dev, bytes, &t.data);
    if (st) {
        char d[96];
        return tp_set_error(st, "%s: tensor %s (%zu bytes): %s", fn, describe(&t, d, sizeof d),
                            bytes, tp_last_error());
    }
    if (bytes && (st = tp_dev_memset(dev, t.data, 0, bytes))) {
        tp_dev_free(dev, t.data);
        return st;
    }
    tp_mem_count(dev, TP_USE_OTHER, (int64_t)bytes);
    *out = t;
    return TP_OK;
}

tp_status tp_tensor_alloc2(tp_device *dev, tp_dtype dt, int64_t rows, int64_t cols, tp_tensor *out)
{
    const int64_t shape[2] = {rows, cols};
    return tp_tensor_alloc(dev, dt, 2, shape, out);
}

void tp_tensor_release(tp_tensor *t)
{
    if (!t)
        return;
    if (t->owned) {
        tp_mem_count(t->dev, TP_USE_OTHER, -(int64_t)tp_tensor_bytes(t));
        tp_dev_free(t->dev, t->data);
    }
    memset(t, 0, sizeof *t);
}

tp_tensor tp_tensor_view(tp_device *dev, tp_dtype dt, void *data, int ndim, const int64_t *shape)
{
    tp_tensor t = {.dtype = dt, .ndim = ndim, .data = data, .dev = dev, .owned = false};
    if (shape && ndim > 0 && ndim <= TP_MAX_DIMS)
        memcpy(t.shape, shape, (size_t)ndim * sizeof *shape);
    else
        t.ndim = 0; /* invalid: numel 0, and every use reports it */
    return t;
}

int64_t tp_tensor_numel(const tp_tensor *t)
{
    if (!t || t->ndim < 1 || t->ndim > TP_MAX_DIMS)
        return 0;
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i] > 0 ? t->shape[i] : 0;
    return n;
}

size_t tp_tensor_bytes(const tp_tensor *t)
{
    return t ? (size_t)tp_tensor_numel(t) * tp_dtype_size(t->dtype) : 0;
}

/* Checks for upload/download: a valid tensor with data. */
static tp_status check_transfer(const char *fn, const tp_tensor *t, const void *host)
{
    char d[96];
    if (!t)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: tensor is NULL", fn);
    size_t bytes;
    TP_TRY(check_shape(fn, t->dtype, t->ndim, t->shape, &bytes));
    if (!t->dev)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: tensor %s has no device", fn,
                            describe(t, d, sizeof d));
    if (bytes && !t->data)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "%s: tensor %s has no data (allocate it with tp_tensor_alloc)", fn,
                            describe(t, d, sizeof d));
    if (bytes && !host)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: host buffer is NULL for tensor %s (%zu bytes)",
                            fn, describe(t, d, sizeof d), bytes);
    return TP_OK;
}

tp_status tp_tensor_upload(tp_tensor *t, const void *host)
{
    TP_TRY(check_transfer("tp_tensor_upload", t, host));
    if (!tp_tensor_bytes(t))
        return TP_OK;
    return tp_dev_upload(t->dev, t->data, host, tp_tensor_bytes(t));
}

tp_status tp_tensor_download(const tp_tensor *t, void *host)
{
    TP_TRY(check_transfer("tp_tensor_download", t, host));
    if (!tp_tensor_bytes(t))
        return TP_OK;
    return tp_dev_download(t->dev, host, t->data, tp_tensor_bytes(t));
}

/* ------------------------------------------------- host dtype conversion */

static bool host_float_dtype(tp_dtype dt)
{
    return dt == TP_F32 || dt == TP_BF16 || dt == TP_F16;
}

static float load_f32(tp_dtype dt, const void *src, size_t i)
{
    if (dt == TP_F32)
        return ((const float *)src)[i];
    uint16_t h = ((const uint16_t *)src)[i];
    return dt == TP_BF16 ? tp_util_bf16_to_f32(h) : tp_util_f16_to_f32(h);
}

void tp_host_convert(tp_dtype dst_dt, void *dst, tp_dtype src_dt, const void *src, size_t n)
{
    if (!n || !dst || !src)
        return;
    if (dst_dt == src_dt) {
        size_t es = tp_dtype_size(dst_dt);
        if (es && dst != src)
            memmove(dst, src, n * es);
        return;
    }
    if (!host_float_dtype(dst_dt) || !host_float_dtype(src_dt))
        return;
    for (size_t i = 0; i < n; i++) {
        float v = load_f32(src_dt, src, i);
        if (dst_dt == TP_F32)
            ((float *)dst)[i] = v;
        else
            ((uint16_t *)dst)[i] =
                dst_dt == TP_BF16 ? tp_util_f32_to_bf16(v) : tp_util_f32_to_f16(v);
    }
}
