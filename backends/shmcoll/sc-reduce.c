/* SPDX-License-Identifier: MIT */
/*
 * sc-reduce.c — element kernels (shared by loopback and shm): reduce several sources through a small tile
 * that stays in L1, and copy a source to several destinations.
 *
 * Reduction order is fixed: acc = src[0]; acc = acc op src[r], r = 1, 2,
 * ... so a result depends only on the inputs, never on how the work was
 * split. max(acc, x) = x > acc ? x : acc (and min likewise), so a NaN in
 * src[0] survives a max and a NaN later is skipped, on every rank alike.
 * i32 sums wrap modulo 2^32. f16 and bf16 are widened to f32, reduced in
 * f32 and rounded once to nearest-even at the end (the SDK's tp_util_*
 * conversions).
 *
 * Large ops store with non-temporal (streaming) stores: results bigger
 * than the cache would only evict useful lines, and streaming avoids
 * reading each destination line before writing it.
 */
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <tp/tp-plugin-util.h>

#include "shmcoll.h"

#define SC_TILE 1024 /* elements per tile: 4 KiB of f32 */

/* ------------------------------------------------------- combine loops */

static void sc_f32_combine(int op, float *restrict t, const float *restrict s, size_t m)
{
    switch (op) {
        case TP_SUM:
            for (size_t i = 0; i < m; i++)
                t[i] += s[i];
            break;
        case TP_MAX:
            for (size_t i = 0; i < m; i++)
                t[i] = s[i] > t[i] ? s[i] : t[i];
            break;
        default:
            for (size_t i = 0; i < m; i++)
                t[i] = s[i] < t[i] ? s[i] : t[i];
            break;
    }
}

static void sc_f32_combine2(int op, float *restrict t, const float *restrict a,
                            const float *restrict b, size_t m)
{
    switch (op) {
        case TP_SUM:
            for (size_t i = 0; i < m; i++)
                t[i] = a[i] + b[i];
            break;
        case TP_MAX:
            for (size_t i = 0; i < m; i++)
                t[i] = b[i] > a[i] ? b[i] : a[i];
            break;
        default:
            for (size_t i = 0; i < m; i++)
                t[i] = b[i] < a[i] ? b[i] : a[i];
            break;
    }
}

static void sc_i32_combine(int op, int32_t *restrict t, const int32_t *restrict s, size_t m)
{
    switch (op) {
        case TP_SUM:
            for (size_t i = 0; i < m; i++)
                t[i] = (int32_t)((uint32_t)t[i] + (uint32_t)s[i]);
            break;
        case TP_MAX:
            for (size_t i = 0; i < m; i++)
                t[i] = s[i] > t[i] ? s[i] : t[i];
            break;
        default:
            for (size_t i = 0; i < m; i++)
                t[i] = s[i] < t[i] ? s[i] : t[i];
            break;
    }
}

static void sc_widen(int dt, float *restrict w, const uint16_t *restrict s, size_t m)
{
    if (dt == TP_BF16)
        for (size_t i = 0; i < m; i++)
            w[i] = tp_util_bf16_to_f32(s[i]);
    else
        for (size_t i = 0; i < m; i++)
            w[i] = tp_util_f16_to_f32(s[i]);
}

static void sc_narrow(int dt, uint16_t *restrict d, const float *restrict t, size_t m)
{
    if (dt == TP_BF16)
        for (size_t i = 0; i < m; i++)
            d[i] = tp_util_f32_to_bf16(t[i]);
    else
        for (size_t i = 0; i < m; i++)
            d[i] = tp_util_f32_to_f16(t[i]);
}

/* ------------------------------------------------------------- stores */

static bool sc_store(void *dst, const void *src, size_t bytes, bool stream)
{
    if (dst == src || bytes == 0)
        return false;
#if defined(__SSE2__)
    if (bytes >= 256) {
        /* An explicit vector loop: compilers otherwise inline a bounded
         * memcpy as `rep movsq`, which is slower for these 4-16 KiB pieces. */
        __m128i *d = dst;
        const __m128i *s = src;
        size_t k = bytes / 16;
        bool nt = stream && ((uintptr_t)dst & 15u) == 0;
        if (nt)
            for (size_t i = 0; i < k; i++)
                _mm_stream_si128(d + i, _mm_loadu_si128(s + i));
        else
            for (size_t i = 0; i < k; i++)
                _mm_storeu_si128(d + i, _mm_loadu_si128(s + i));
        memcpy((char *)dst + k * 16, (const char *)src + k * 16, bytes - k * 16);
        return nt;
    }
#endif
    (void)stream;
    memcpy(dst, src, bytes);
    return false;
}

void sc_store_fence(void)
{
#if defined(__SSE2__)
    _mm_sfence();
#else
    atomic_thread_fence(memory_order_seq_cst);
#endif
}

bool sc_reduce(int dt, int op, const void *const *src, int nsrc, void *const *dst, int ndst,
               size_t n, bool stream)
{
    size_t es = tp_util_dtype_size(dt);
    _Alignas(SC_LINE) float t[SC_TILE];
    _Alignas(SC_LINE) float w[SC_TILE];
    _Alignas(SC_LINE) uint16_t h[SC_TILE];
    _Alignas(SC_LINE) int32_t ti[SC_TILE];
    bool streamed = false;
    for (size_t b = 0; b < n; b += SC_TILE) {
        size_t m = n - b < SC_TILE ? n - b : SC_TILE;
        const void *res = t;
        if (dt == TP_F32) {
            const float *s0 = (const float *)src[0] + b;
            if (nsrc == 1)
                memcpy(t, s0, m * 4);
            else
                sc_f32_combine2(op, t, s0, (const float *)src[1] + b, m);
            for (int r = 2; r < nsrc; r++)
                sc_f32_combine(op, t, (const float *)src[r] + b, m);
        } else if (dt == TP_I32) {
            memcpy(ti, (const int32_t *)src[0] + b, m * 4);
            for (int r = 1; r < nsrc; r++)
                sc_i32_combine(op, ti, (const int32_t *)src[r] + b, m);
            res = ti;
        } else {
            sc_widen(dt, t, (const uint16_t *)src[0] + b, m);
            for (int r = 1; r < nsrc; r++) {
                sc_widen(dt, w, (const uint16_t *)src[r] + b, m);
                sc_f32_combine(op, t, w, m);
            }
            sc_narrow(dt, h, t, m);
            res = h;
        }
        for (int d = 0; d < ndst; d++)
            streamed |= sc_store((char *)dst[d] + b * es, res, m * es, stream);
    }
    return streamed;
}

bool sc_fanout(const void *src, void *const *dst, int ndst, size_t bytes, bool stream)
{
    const size_t piece = 16384; /* read once, then written from L1 to each dst */
    bool streamed = false;
    for (size_t b = 0; b < bytes; b += piece) {
        size_t m = bytes - b < piece ? bytes - b : piece;
        for (int d = 0; d < ndst; d++)
            streamed |= sc_store((char *)dst[d] + b, (const char *)src + b, m, stream);
    }
    return streamed;
}
