/* SPDX-License-Identifier: MIT */
/*
 * tp-plugin-util.h — header-only helpers every plugin may use.
 *
 * Part of the plugin SDK: like tp-plugin.h it needs no libtp, so a plugin
 * built from the SDK alone stays free of link dependencies. Everything here
 * is `static inline` (or a macro that defines a function in the plugin):
 * one definition for the whole tree, no symbol shared between modules.
 *
 *   16-bit floats  tp_util_f32_to_bf16 / _bf16_to_f32 / _f32_to_f16 /
 *                  _f16_to_f32: round to nearest even on the bit patterns,
 *                  NaN stays a (quiet) NaN, overflow goes to inf; written
 *                  by hand so every compiler rounds alike.
 *   dtypes         tp_util_dtype_size, tp_util_dtype_name.
 *   errors         TP_UTIL_DEFINE_ERROR(fn, host_expr, "prefix"): defines
 *                  `tp_status fn(tp_status st, const char *fmt, ...)` that
 *                  formats the message into a fixed buffer (no allocation on
 *                  the error path) and reports it, prefixed, through the
 *                  host's set_error.
 *   op checks      tp_util_check_dev / _count / _dims / _ptr / _id_range:
 *                  the argument checks of a device's element-wise ops.
 *   GEMM checks    tp_util_gemm_check_args / _mnk / _batch / _operands /
 *                  _c_disjoint: the argument checks every device's gemm
 *                  makes, reporting through the plugin's error function
 *                  (a tp_util_error_fn, e.g. one TP_UTIL_DEFINE_ERROR
 *                  made); tp_util_gemm_c_batches_disjoint.
 */
#ifndef TP_PLUGIN_UTIL_H
#define TP_PLUGIN_UTIL_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <tp/tp-plugin.h>

/* ------------------------------------------------------- 16-bit floats */

static inline float tp_util_bits_f32(uint32_t b)
{
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static inline uint32_t tp_util_f32_bits(float f)
{
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

static inline float tp_util_bf16_to_f32(uint16_t h)
{
    return tp_util_bits_f32((uint32_t)h << 16);
}

static inline uint16_t tp_util_f32_to_bf16(float f)
{
    uint32_t b = tp_util_f32_bits(f);
    if ((b & 0x7fffffffu) > 0x7f800000u) /* NaN: keep sign and top payload, set the quiet bit */
        return (uint16_t)((b >> 16) | 0x40u);
    /* add just under half an ulp, plus one when the kept lsb is odd (ties to
     * even); a carry into the exponent is the correct rounding up, up to inf */
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

static inline float tp_util_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 31) /* inf, NaN (payload kept, so a NaN stays one) */
        return tp_util_bits_f32(sign | 0x7f800000u | (m << 13));
    if (e == 0) { /* zero or subnormal: m * 2^-24, exact in f32 */
        float v = (float)m * 0x1p-24f;
        return sign ? -v : v;
    }
    return tp_util_bits_f32(sign | ((e + 112u) << 23) | (m << 13)); /* rebias 15 -> 127 */
}

static inline uint16_t tp_util_f32_to_f16(float f)
{
    uint32_t b = tp_util_f32_bits(f);
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
    /* f16 subnormal or zero: q = |f| / 2^-24 rounded to an integer (1024 is
     * the smallest normal, which the bit pattern gets right) */
    uint32_t e = a >> 23;
    if (e < 102) /* |f| < 2^-25: below half the smallest subnormal */
        return sign;
    uint32_t m = (a & 0x7fffffu) | 0x800000u, shift = 126u - e; /* |f| = m 2^(e-150) */
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u)))
        q++;
    return (uint16_t)(sign | q);
}

/* -------------------------------------------------------------- dtypes */

static inline size_t tp_util_dtype_size(tp_dtype dt)
{
    static const size_t sizes[TP_DTYPE_COUNT_] = {4, 2, 2, 4};
    return (unsigned)dt < TP_DTYPE_COUNT_ ? sizes[dt] : 0;
}

static inline const char *tp_util_dtype_name(tp_dtype dt)
{
    static const char *const names[TP_DTYPE_COUNT_] = {"f32", "f16", "bf16", "i32"};
    return (unsigned)dt < TP_DTYPE_COUNT_ ? names[dt] : "unknown_dtype";
}

/* -------------------------------------------------------------- errors */

/* Format into a fixed buffer and hand "<prefix>: <message>" to the host's
 * set_error; without a host (not opened yet) only the status comes back. */
static inline tp_status tp_util_verror(const tp_host *host, tp_status st, const char *prefix,
                                       const char *fmt, va_list ap)
{
    char msg[512];

    if (!host || !host->set_error)
        return st;
    vsnprintf(msg, sizeof msg, fmt, ap);
    return host->set_error(st, "%s: %s", prefix, msg);
}

/* What TP_UTIL_DEFINE_ERROR defines: the helpers below report through one. */
typedef tp_status (*tp_util_error_fn)(tp_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Define `tp_status FN(tp_status st, const char *fmt, ...)` reporting
 * through the tp_host that HOST_EXPR yields (evaluated at each call). */
#define TP_UTIL_DEFINE_ERROR(FN, HOST_EXPR, PREFIX)                                                \
    tp_status FN(tp_status st, const char *fmt, ...)                                               \
    {                                                                                              \
        va_list ap;                                                                                \
        va_start(ap, fmt);                                                                         \
        st = tp_util_verror((HOST_EXPR), st, (PREFIX), fmt, ap);                                   \
        va_end(ap);                                                                                \
        return st;                                                                                 \
    }

/* ----------------------------------------------------------- op checks */

/* Each returns TP_OK or reports through err, with "OP: " in front. */

static inline tp_status tp_util_check_dev(tp_util_error_fn err, const void *dev, const char *op)
{
    if (!dev)
        return err(TP_ERR_INVALID_ARG, "%s: device handle is NULL (was open() successful?)", op);
    return TP_OK;
}

/* A size WHAT = v must be >= 0. */
static inline tp_status tp_util_check_count(tp_util_error_fn err, int64_t v, const char *op,
                                            const char *what)
{
    if (v < 0)
        return err(TP_ERR_INVALID_ARG, "%s: %s = %lld, expected >= 0", op, what, (long long)v);
    return TP_OK;
}

/* rows, cols >= 0 and rows x cols <= max_elems (what the device can address). */
static inline tp_status tp_util_check_dims(tp_util_error_fn err, const char *op, int64_t rows,
                                           int64_t cols, const char *rname, const char *cname,
                                           int64_t max_elems)
{
    tp_status st = tp_util_check_count(err, rows, op, rname);

    if (st == TP_OK)
        st = tp_util_check_count(err, cols, op, cname);
    if (st == TP_OK && cols > 0 && rows > max_elems / cols)
        st = err(TP_ERR_INVALID_ARG, "%s: %s %lld x %s %lld elements overflow", op, rname,
                 (long long)rows, cname, (long long)cols);
    return st;
}

/* A pointer WHAT is needed when it has count > 0 elements. */
static inline tp_status tp_util_check_ptr(tp_util_error_fn err, const void *p, int64_t count,
                                          const char *op, const char *what)
{
    if (!p && count > 0)
        return err(TP_ERR_INVALID_ARG, "%s: %s is NULL but %lld elements are needed", op, what,
                   (long long)count);
    return TP_OK;
}

/* A vocabulary shard's id range [lo, hi) (embedding ops). */
static inline tp_status tp_util_check_id_range(tp_util_error_fn err, const char *op, int64_t lo,
                                               int64_t hi)
{
    if (lo > hi)
        return err(TP_ERR_INVALID_ARG,
                   "%s: id range [lo %lld, hi %lld) is reversed; expected "
                   "lo <= hi (the shard's first and one-past-last vocab row)",
                   op, (long long)lo, (long long)hi);
    return TP_OK;
}

/* The checks embedding and embedding_bwd share, in this order: the device,
 * the dtype (check_dt: the device's own rule), n x dim, the table shard's
 * rows [lo, hi) and its size, the ids. */
static inline tp_status tp_util_check_embedding(tp_util_error_fn err,
                                                tp_status (*check_dt)(tp_dtype, const char *),
                                                const char *op, const void *dev, tp_dtype dt,
                                                int64_t n, int64_t dim, const int32_t *ids,
                                                int64_t lo, int64_t hi, int64_t max_elems)
{
    tp_status st = tp_util_check_dev(err, dev, op);

    if (st == TP_OK)
        st = check_dt(dt, op);
    if (st == TP_OK)
        st = tp_util_check_dims(err, op, n, dim, "n", "dim", max_elems);
    if (st == TP_OK)
        st = tp_util_check_id_range(err, op, lo, hi);
    if (st == TP_OK)
        st = tp_util_check_dims(err, op, hi - lo, dim, "rows (hi - lo)", "dim", max_elems);
    if (st == TP_OK)
        st = tp_util_check_ptr(err, ids, n, op, "ids");
    return st;
}

/* ---------------------------------------------------------- GEMM checks */

/* Do the batches' outputs C_b (m x n, row pitch ldc, at b*stride_c) write
 * disjoint elements? Two layouts qualify: whole matrices one after another
 * (stride_c >= (m-1)*ldc + n), or column blocks side by side within each
 * row pitch (stride_c >= n and (batch-1)*stride_c + n <= ldc), as in the
 * per-head blocks of one [tokens, heads*head_dim] matrix. Other layouts
 * are refused even where they happen not to collide. Needs ldc >= n. */
static inline int tp_util_gemm_c_batches_disjoint(const tp_gemm_args *g)
{
    int64_t s = g->stride_c;

    if (g->batch <= 1 || g->m == 0 || g->n == 0)
        return 1;
    if (s >= (g->m - 1) * g->ldc + g->n)
        return 1;
    /* s >= n > 0 here cannot overflow; ldc >= n was checked */
    return s >= g->n && g->batch - 1 <= (g->ldc - g->n) / s;
}

/* The checks below return TP_OK or report through err, with "OP: " in
 * front of the message. A device calls those it needs, in its own order. */

/* args present and from a tp-plugin.h at least as new as this one. */
static inline tp_status tp_util_gemm_check_args(tp_util_error_fn err, const char *op,
                                                const tp_gemm_args *g)
{
    if (!g)
        return err(TP_ERR_INVALID_ARG, "%s: args is NULL", op);
    if (g->struct_size < sizeof(tp_gemm_args))
        return err(TP_ERR_INVALID_ARG,
                   "%s: args.struct_size %zu < %zu (caller built "
                   "against an older tp-plugin.h?)",
                   op, g->struct_size, sizeof(tp_gemm_args));
    return TP_OK;
}

static inline tp_status tp_util_gemm_check_mnk(tp_util_error_fn err, const char *op,
                                               const tp_gemm_args *g)
{
    if (g->m < 0 || g->n < 0 || g->k < 0)
        return err(TP_ERR_INVALID_ARG, "%s: m, n, k must be >= 0, got %lld, %lld, %lld", op,
                   (long long)g->m, (long long)g->n, (long long)g->k);
    return TP_OK;
}

static inline tp_status tp_util_gemm_check_batch(tp_util_error_fn err, const char *op,
                                                 const tp_gemm_args *g)
{
    if (g->batch < 1)
        return err(TP_ERR_INVALID_ARG, "%s: batch = %lld, expected >= 1", op, (long long)g->batch);
    return TP_OK;
}

/* One operand NAME: a rows x cols row-major matrix with row pitch ld and
 * batch stride; needs a pointer when it has elements. */
static inline tp_status tp_util_gemm_check_operand(tp_util_error_fn err, const char *op,
                                                   const char *name, const void *p, int64_t rows,
                                                   int64_t cols, int64_t ld, int64_t stride,
                                                   int transposed)
{
    int64_t min_ld = cols > 1 ? cols : 1;

    if (ld < min_ld)
        return err(TP_ERR_INVALID_ARG,
                   "%s: ld%s = %lld but %s%s is stored as %lld x %lld (row-major), so ld%s "
                   "must be >= %lld; did you swap m/n/k or forget a transpose flag?",
                   op, name, (long long)ld, name, transposed ? " (transposed)" : "",
                   (long long)rows, (long long)cols, name, (long long)min_ld);
    if (stride < 0)
        return err(TP_ERR_INVALID_ARG, "%s: stride_%s = %lld, expected >= 0", op, name,
                   (long long)stride);
    if (!p && rows > 0 && cols > 0)
        return err(TP_ERR_INVALID_ARG, "%s: %s is NULL for a %lld x %lld operand", op, name,
                   (long long)rows, (long long)cols);
    return TP_OK;
}

/* A, B and C as stored: A is m x k (k x m if transposed), B k x n (n x k),
 * C m x n. Needs m, n, k >= 0. */
static inline tp_status tp_util_gemm_check_operands(tp_util_error_fn err, const char *op,
                                                    const tp_gemm_args *g)
{
    int64_t ar = g->trans_a ? g->k : g->m, ac = g->trans_a ? g->m : g->k;
    int64_t br = g->trans_b ? g->n : g->k, bc = g->trans_b ? g->k : g->n;
    tp_status st;

    st = tp_util_gemm_check_operand(err, op, "a", g->a, ar, ac, g->lda, g->stride_a, g->trans_a);
    if (st == TP_OK)
        st =
            tp_util_gemm_check_operand(err, op, "b", g->b, br, bc, g->ldb, g->stride_b, g->trans_b);
    if (st == TP_OK)
        st = tp_util_gemm_check_operand(err, op, "c", g->c, g->m, g->n, g->ldc, g->stride_c, 0);
    return st;
}

/* The batches' outputs must not overlap (tp_util_gemm_c_batches_disjoint);
 * needs the operands checked. */
static inline tp_status tp_util_gemm_check_c_disjoint(tp_util_error_fn err, const char *op,
                                                      const tp_gemm_args *g)
{
    if (tp_util_gemm_c_batches_disjoint(g))
        return TP_OK;
    return err(TP_ERR_INVALID_ARG,
               "%s: stride_c = %lld makes the %lld output matrices (%lld x %lld, ldc %lld) "
               "write some elements twice; expected stride_c >= %lld (separate matrices) or, "
               "for column blocks of one matrix, stride_c >= n = %lld with "
               "(batch-1)*stride_c + n <= ldc",
               op, (long long)g->stride_c, (long long)g->batch, (long long)g->m, (long long)g->n,
               (long long)g->ldc, (long long)((g->m - 1) * g->ldc + g->n), (long long)g->n);
}

#endif /* TP_PLUGIN_UTIL_H */
