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
    tp_status st = check_shape(fn, dt, ndim, shape, &bytes);
    if (st)
        return st;
    tp_tensor t = {.dtype = dt, .ndim = ndim, .dev = dev, .owned = true};
    memcpy(t.shape, shape, (size_t)ndim * sizeof *shape);
    if ((st = tp_dev_alloc(dev, bytes, &t.data))) {
        char d[96];
        return tp_set_error(st, "%s: tensor %s (%zu bytes): %s", fn, describe(&t, d, sizeof d),
                            bytes, tp_last_error());
    }
    if (bytes && (st = tp_dev_memset(dev, t.data, 0, bytes))) {
        tp_dev_free(dev, t.data);
        return st;
    }
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
    if (t->owned)
        tp_dev_free(t->dev, t->data);
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
    tp_status st = check_shape(fn, t->dtype, t->ndim, t->shape, &bytes);
    if (st)
        return st;
    if (!t->dev)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: tensor %s has no device", fn,
                            describe(t, d, sizeof d));
    if (bytes && !t->data)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "%s: tensor %s has no data (allocate it with tp_tensor_alloc)", fn,
                            describe(t, d, sizeof d));
    if (bytes && !host)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "%s: host buffer is NULL for tensor %s (%zu bytes)", fn,
                            describe(t, d, sizeof d), bytes);
    return TP_OK;
}

tp_status tp_tensor_upload(tp_tensor *t, const void *host)
{
    tp_status st = check_transfer("tp_tensor_upload", t, host);
    if (st || !tp_tensor_bytes(t))
        return st;
    return tp_dev_upload(t->dev, t->data, host, tp_tensor_bytes(t));
}

tp_status tp_tensor_download(const tp_tensor *t, void *host)
{
    tp_status st = check_transfer("tp_tensor_download", t, host);
    if (st || !tp_tensor_bytes(t))
        return st;
    return tp_dev_download(t->dev, host, t->data, tp_tensor_bytes(t));
}

/* ------------------------------------------------- host dtype conversion */

/* Written by hand rather than with _Float16, so every compiler and target
 * rounds the same way (round to nearest even on the bit patterns). */

static float bits_f32(uint32_t b)
{
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static uint32_t f32_bits(float f)
{
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

static float bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

static uint16_t f32_to_bf16(float f)
{
    uint32_t b = f32_bits(f);
    if ((b & 0x7fffffffu) > 0x7f800000u) /* NaN: keep sign and top payload, set the quiet bit */
        return (uint16_t)((b >> 16) | 0x40u);
    /* add just under half an ulp, plus one when the kept lsb is odd (ties to even); a
     * carry into the exponent is the correct rounding up, up to inf */
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 31) /* inf, NaN (payload kept, so a NaN stays one) */
        return bits_f32(sign | 0x7f800000u | (m << 13));
    if (e == 0) { /* zero or subnormal: m * 2^-24, exact in f32 */
        float v = (float)m * 0x1p-24f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((e + 112u) << 23) | (m << 13)); /* rebias 15 -> 127 */
}

static uint16_t f32_to_f16(float f)
{
    uint32_t b = f32_bits(f);
    uint16_t sign = (uint16_t)((b >> 16) & 0x8000u);
    uint32_t a = b & 0x7fffffffu;
    if (a > 0x7f800000u) /* NaN: quiet, top payload bits kept */
        return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) /* >= 65520, the midpoint above 65504 (odd): rounds to inf */
        return (uint16_t)(sign | 0x7c00u);
    if (a >= 0x38800000u) { /* normal in f16 (>= 2^-14): rebias, round 23 -> 10 bits */
        uint32_t v = a - 0x38000000u;
        v += 0xfffu + ((v >> 13) & 1u);
        return (uint16_t)(sign | (v >> 13));
    }
    /* f16 subnormal or zero: q = |f| / 2^-24 rounded to an integer (1024 is the smallest
     * normal, which the bit pattern gets right) */
    uint32_t e = a >> 23;
    if (e < 102) /* |f| < 2^-25: below half the smallest subnormal */
        return sign;
    uint32_t m = (a & 0x7fffffu) | 0x800000u, shift = 126u - e; /* |f| = m 2^(e-150) */
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u)))
        q++;
    return (uint16_t)(sign | q);
}

static bool host_float_dtype(tp_dtype dt)
{
    return dt == TP_F32 || dt == TP_BF16 || dt == TP_F16;
}

static float load_f32(tp_dtype dt, const void *src, size_t i)
{
    if (dt == TP_F32)
        return ((const float *)src)[i];
    uint16_t h = ((const uint16_t *)src)[i];
    return dt == TP_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
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
            ((uint16_t *)dst)[i] = dst_dt == TP_BF16 ? f32_to_bf16(v) : f32_to_f16(v);
    }
}
