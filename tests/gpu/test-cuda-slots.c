/*
 * test-cuda-slots.c — conformance of the cuda device's ABI 1.1 slots:
 * reduce, host_alloc/host_free and gemm_bias_act (cuBLASLt epilogues),
 * against plain-loop references written here.
 *
 * TP_DEVICE_TEST_VIA=vtable (default): load libtp-cuda.so from
 * TP_PLUGIN_PATH and call its ops directly on this thread (CK_FORK=no:
 * CUDA does not survive fork). Also several ranks (threads) reducing each
 * other's buffers, on one GPU or several.
 * TP_DEVICE_TEST_VIA=api: tp_init/tp_run with the loopback comm and the
 * cuda device, calling tp_dev_reduce / tp_dev_gemm_bias_act; each test
 * runs in its own forked child (Check's fork mode), which alone touches
 * CUDA; checks that GeLU(tanh) + bias runs fused (one gemm call, no kernel
 * calls in the rank's stats) and that every combination the device
 * refuses is still right through the core's composition.
 * Without a usable GPU (or without the cuda device built) the program
 * exits 77 with the reason; the probe runs in a forked child, so this
 * process has not touched CUDA when Check forks.
 *
 * Tolerances. U = 2^-24 is the unit roundoff of f32; u_dt that of the
 * stored type (2^-24 f32, 2^-8 bf16, 2^-11 f16). Inputs are generated
 * exactly representable in the stored type and the references are
 * computed in double from those exact values.
 *  - reduce: the operands are multiples of 2^-20 (f32), 2^-7 (bf16) or
 *    2^-10 (f16) below 2 in magnitude, so their exact sum has at most 22
 *    significant bits: the device's f32 sum is exact and its only rounding
 *    is the final one to the stored type, which the reference does the
 *    same way (round to nearest even). max/min select. So results must be
 *    bit-identical: tolerance 0.
 *  - gemm_bias_act: with s = alpha sum_l a b + bias and M = |alpha| sum_l
 *    |a b| + |bias|, f32 accumulation in any order with or without FMA
 *    errs by at most (k + 3) U M (k - 1 additions, the products, alpha and
 *    the bias addition; Higham ch. 3; twice that for bf16/f16, whose tensor
 *    cores may accumulate with truncation, Fasi et al. 2021), plus u_dt |s|
 *    for storing it (pre, and C for act NONE). For GeLU, that error e_x of
 *    the argument moves the result by at most max|gelu'| e_x <= 1.13 e_x
 *    (1.12899 at x ~ 1.41, both forms); the argument may have been rounded to the stored type
 *    first (the core's composition applies gelu to pre), which is in e_x;
 *    evaluating gelu in f32 adds 8 U |x| (a few ulps for tanhf/erff and
 *    the products, each term bounded by |x|), and cuBLASLt's epilogue may
 *    use the hardware tanh (PTX tanh.approx.f32: relative error < 2^-10.98),
 *    so GeLU(tanh) allows 0.5 |x| (2^-10 |t| + 2^-20) more; the result is
 *    then rounded to the stored type (u_dt).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* strcasestr */
#endif
#include <check.h>
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <tp/tp.h>

#define U 5.9604644775390625e-08 /* 2^-24 */

static int via_api;
static const char *dev_name = "cuda"; /* api mode: TP_DEVICE may name another device (cpu) to
                                         check this test's references where there is no GPU */
static const tp_plugin_desc *plugin; /* vtable mode */

/* The device under test, per thread (each rank is a thread with its own). */
static _Thread_local const tp_device_ops *D;
static _Thread_local void *H;
static _Thread_local tp_comm *W; /* api mode: the rank's world, for its stats */
static _Thread_local char host_msg[1024];

static tp_status host_set_error(tp_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(host_msg, sizeof host_msg, fmt, ap);
    va_end(ap);
    return st;
}

static void host_debug(const char *topic, const char *fmt, ...)
{
}

static const tp_host test_host = {sizeof(tp_host), host_set_error, host_debug, 300.0};

static const char *last_msg(void)
{
    return via_api ? tp_last_error() : host_msg;
}

/* api mode: the vtable's signatures around tp_dev_*. */
static tp_status api_alloc(void *d, size_t b, void **p) { return tp_dev_alloc(d, b, p); }
static void api_free(void *d, void *p) { tp_dev_free(d, p); }
static tp_status api_upload(void *d, void *dst, const void *s, size_t b)
{
    return tp_dev_upload(d, dst, s, b);
}
static tp_status api_download(void *d, void *dst, const void *s, size_t b)
{
    return tp_dev_download(d, dst, s, b);
}
static tp_status api_synchronize(void *d) { return tp_dev_synchronize(d); }
static tp_status api_reduce(void *d, tp_dtype dt, tp_redop op, int64_t n, const void *x, void *y)
{
    return tp_dev_reduce(d, dt, op, n, x, y);
}
static tp_status api_gemm_bias_act(void *d, const tp_gemm_args *g, const void *bias, tp_act act,
                                   void *pre)
{
    return tp_dev_gemm_bias_act(d, g, bias, act, pre);
}

static const tp_device_ops api_ops = {
    .struct_size = sizeof(tp_device_ops),
    .alloc = api_alloc, .free = api_free, .upload = api_upload, .download = api_download,
    .synchronize = api_synchronize, .reduce = api_reduce, .gemm_bias_act = api_gemm_bias_act,
};

/* ------------------------------------------------------------- buffers */

#define MAX_BUFS 64
static _Thread_local void *bufs[MAX_BUFS];
static _Thread_local int nbufs;

static void *dmalloc(size_t bytes)
{
    void *p = NULL;
    ck_assert_int_lt(nbufs, MAX_BUFS);
    ck_assert_msg(D->alloc(H, bytes, &p) == TP_OK, "alloc %zu: %s", bytes, last_msg());
    bufs[nbufs++] = p;
    return p;
}

static void *dput(const void *host, size_t bytes)
{
    void *p = dmalloc(bytes);
    ck_assert_msg(D->upload(H, p, host, bytes) == TP_OK, "upload: %s", last_msg());
    return p;
}

static void dget(void *host, const void *p, size_t bytes)
{
    ck_assert_msg(D->download(H, host, p, bytes) == TP_OK, "download: %s", last_msg());
}

static void free_bufs(void)
{
    for (int i = 0; i < nbufs; i++)
        D->free(H, bufs[i]);
    nbufs = 0;
}

/* ------------------------------------------------- dtypes on the host */

static const tp_dtype dtypes[] = {TP_F32, TP_BF16, TP_F16};
static const char *dt_name(tp_dtype dt)
{
    return dt == TP_F32 ? "f32" : dt == TP_BF16 ? "bf16" : "f16";
}
static size_t dt_size(tp_dtype dt) { return dt == TP_F32 ? 4 : 2; }
static double dt_u(tp_dtype dt) /* unit roundoff */
{
    return dt == TP_F32 ? U : dt == TP_BF16 ? 1.0 / 256 : 1.0 / 2048;
}

/* float -> bf16 / f16, round to nearest even (as __float2bfloat16 / __float2half). */
static uint16_t to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

static float from_bf16(uint16_t h)
{
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static uint16_t to_f16(float f)
{
    uint32_t x, ax, sign, h, rem;
    memcpy(&x, &f, 4);
    sign = (x >> 16) & 0x8000u;
    ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u);
    if (ax >= 0x477ff000u) /* >= 65520 rounds to infinity */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) { /* below 2^-14: a multiple of 2^-24, exact scaling, then RNE */
        float v;
        memcpy(&v, &ax, 4);
        return (uint16_t)(sign | (uint32_t)nearbyintf(v * 16777216.0f));
    }
    h = ((((ax >> 23) - 127 + 15) << 10) | ((ax & 0x7fffffu) >> 13));
    rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
        h++; /* a carry into the exponent is right, up to infinity */
    return (uint16_t)(sign | h);
}

static float from_f16(uint16_t h)
{
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    float v = e == 0 ? ldexpf((float)m, -24)
              : e == 31 ? (m ? NAN : INFINITY)
                        : ldexpf((float)(m | 0x400u), (int)e - 25);
    return (h & 0x8000u) ? -v : v;
}

/* Round v to dt (the value the device stores). */
static float round_dt(tp_dtype dt, float v)
{
    return dt == TP_F32 ? v : dt == TP_BF16 ? from_bf16(to_bf16(v)) : from_f16(to_f16(v));
}

/* n floats as dt, in a malloc'ed buffer for upload. */
static void *pack(tp_dtype dt, const float *v, size_t n)
{
    void *p = malloc(n ? n * dt_size(dt) : 4);
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++) {
        if (dt == TP_F32)
            ((float *)p)[i] = v[i];
        else
            ((uint16_t *)p)[i] = dt == TP_BF16 ? to_bf16(v[i]) : to_f16(v[i]);
    }
    return p;
}

static float unpack1(tp_dtype dt, const void *p, size_t i)
{
    return dt == TP_F32 ? ((const float *)p)[i]
           : dt == TP_BF16 ? from_bf16(((const uint16_t *)p)[i])
                           : from_f16(((const uint16_t *)p)[i]);
}

/* ------------------------------------------------------------- random */

static _Thread_local uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static double urand(void) /* uniform [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 4503599627370496.0 - 1.0;
}

/* n values scale * uniform[-1, 1), rounded to dt. */
static float *hrand(tp_dtype dt, size_t n, double scale)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++)
        p[i] = round_dt(dt, (float)(scale * urand()));
    return p;
}

/* ------------------------------------------------------------- reduce */

/* Operands on a grid where every sum is exact in f32 (see the top). */
static float reduce_operand(tp_dtype dt)
{
    double q = dt == TP_F32 ? 1048576.0 : dt == TP_BF16 ? 128.0 : 1024.0;
    double lim = dt == TP_F32 ? 1048575.0 : dt == TP_BF16 ? 255.0 : 2047.0;
    return (float)(floor(urand() * lim + 0.5) / q);
}

static int same_value(float a, float b)
{
    return (isnan(a) && isnan(b)) || memcmp(&a, &b, sizeof a) == 0;
}

/* One reduce of n elements: y = op(y, x); checked bit for bit. NaNs (max
 * and min only): one in y stays, one in x is dropped. xbuf: where x lives
 * (NULL: a fresh device buffer). */
static void reduce_case(tp_dtype dt, tp_redop op, int64_t n, void *xbuf)
{
    float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
    void *hx, *hy, *out, *dx, *dy;
    size_t es = dt_size(dt);

    ck_assert_ptr_nonnull(x);
    ck_assert_ptr_nonnull(y);
    for (int64_t i = 0; i < n; i++) {
        x[i] = reduce_operand(dt);
        y[i] = reduce_operand(dt);
    }
    if (op != TP_SUM && n >= 2) {
        y[0] = NAN;
        x[1] = NAN;
    }
    hx = pack(dt, x, (size_t)n);
    hy = pack(dt, y, (size_t)n);
    out = malloc((size_t)n * es);
    ck_assert_ptr_nonnull(out);
    if (xbuf) {
        memcpy(xbuf, hx, (size_t)n * es);
        dx = xbuf;
    } else {
        dx = dput(hx, (size_t)n * es);
    }
    dy = dput(hy, (size_t)n * es);
    ck_assert_msg(D->reduce(H, dt, op, n, dx, dy) == TP_OK, "reduce %s op %d n %lld: %s",
                  dt_name(dt), (int)op, (long long)n, last_msg());
    dget(out, dy, (size_t)n * es);
    for (int64_t i = 0; i < n; i++) {
        float a = y[i], b = x[i], want;
        if (op == TP_SUM)
            want = round_dt(dt, (float)((double)a + (double)b)); /* exact sum, one rounding */
        else if (op == TP_MAX)
            want = b > a ? b : a;
        else
            want = b < a ? b : a;
        float got = unpack1(dt, out, (size_t)i);
        ck_assert_msg(same_value(got, want), "reduce %s op %d n %lld [%lld]: y %.9g x %.9g -> "
                      "got %.9g, expected %.9g", dt_name(dt), (int)op, (long long)n,
                      (long long)i, a, b, got, want);
    }
    free(x);
    free(y);
    free(hx);
    free(hy);
    free(out);
    free_bufs();
}

static const int64_t reduce_sizes[] = {1, 13, 4097, (1 << 20) + 3};

static void body_reduce(void)
{
    for (int d = 0; d < 3; d++)
        for (int op = 0; op < TP_REDOP_COUNT_; op++)
            for (int s = 0; s < 4; s++)
                reduce_case(dtypes[d], (tp_redop)op, reduce_sizes[s], NULL);
}

/* Errors: each names what is wrong. */
static void expect_err(tp_status got, tp_status want, const char *what, const char *word)
{
    ck_assert_msg(got == want, "%s: got %s, expected %s (message: %s)", what,
                  tp_status_string(got), tp_status_string(want), last_msg());
    ck_assert_msg(strcasestr(last_msg(), word), "%s: message \"%s\" does not mention \"%s\"",
                  what, last_msg(), word);
    host_msg[0] = 0;
}

static void body_reduce_errors(void)
{
    float *a = dmalloc(64), *b = dmalloc(64);
    float host[16] = {0};

    ck_assert_int_eq(D->reduce(H, TP_F32, TP_SUM, 0, NULL, NULL), TP_OK);
    expect_err(D->reduce(H, TP_I32, TP_SUM, 4, a, b), TP_ERR_NOT_SUPPORTED, "reduce i32", "i32");
    expect_err(D->reduce(H, TP_F32, (tp_redop)7, 4, a, b), TP_ERR_INVALID_ARG, "reduce op 7",
               "op");
    expect_err(D->reduce(H, TP_F32, TP_SUM, -1, a, b), TP_ERR_INVALID_ARG, "reduce n -1", "n");
    expect_err(D->reduce(H, TP_F32, TP_SUM, 4, NULL, b), TP_ERR_INVALID_ARG, "reduce x NULL",
               "x");
    /* pageable host memory would fault in the kernel: refused */
    expect_err(D->reduce(H, TP_F32, TP_SUM, 16, host, b), TP_ERR_INVALID_ARG,
               "reduce x in pageable host memory", "host memory");
    ck_assert_msg(D->synchronize(H) == TP_OK, "synchronize after refused reduces: %s",
                  last_msg());
    free_bufs();
}

/* ---------------------------------------------------------- host_alloc */

static void body_host_alloc(void)
{
    enum { N = (1 << 20) + 3 };
    unsigned char *p = NULL, *q = NULL, *z = NULL;
    void *dev;

    ck_assert_ptr_nonnull(plugin->device->host_alloc);
    ck_assert_ptr_nonnull(plugin->device->host_free);
    ck_assert_msg(D->host_alloc(H, N, (void **)&p) == TP_OK, "host_alloc: %s", last_msg());
    ck_assert_msg(D->host_alloc(H, N, (void **)&q) == TP_OK, "host_alloc: %s", last_msg());
    ck_assert_msg(D->host_alloc(H, 0, (void **)&z) == TP_OK, "host_alloc 0: %s", last_msg());
    ck_assert_ptr_nonnull(p);
    ck_assert_ptr_nonnull(q);
    ck_assert_ptr_nonnull(z);
    for (size_t i = 0; i < N; i++)
        p[i] = (unsigned char)(i * 131 + 7);
    memset(q, 0, N);
    dev = dput(p, N); /* pinned -> device -> pinned */
    dget(q, dev, N);
    ck_assert_msg(memcmp(p, q, N) == 0, "host_alloc round trip changed the data");
    D->host_free(H, p);
    D->host_free(H, q);
    D->host_free(H, z);
    D->host_free(H, NULL);
    free_bufs();

    /* reduce takes page-locked host memory for x (mapped into the GPU). */
    for (int d = 0; d < 3; d++) {
        void *xb = NULL;
        ck_assert_int_eq(D->host_alloc(H, 4097 * 4, &xb), TP_OK);
        reduce_case(dtypes[d], TP_SUM, 4097, xb);
        D->host_free(H, xb);
    }
}

/* -------------------------------------------------------- gemm_bias_act */

static double gelu_d(double x, int tanh_approx)
{
    if (tanh_approx)
        return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    return 0.5 * x * (1.0 + erf(x * 0.7071067811865476));
}

typedef struct gba_shape {
    int ta, tb, m, n, k, pad, ldc_pad;
} gba_shape;

/* Which results the device refused (vtable mode), for the log. */
static _Thread_local int n_fused, n_refused;

/* One call; checks C (and pre) against the reference and that padding is
 * untouched. must_fuse: the device must not refuse it (vtable mode).
 * Returns the status of the call. */
static tp_status gba_case(tp_dtype dt, gba_shape s, int use_bias, tp_act act, int use_pre,
                          int must_fuse)
{
    int m = s.m, n = s.n, k = s.k;
    int ar = s.ta ? k : m, ac = s.ta ? m : k, br = s.tb ? n : k, bc = s.tb ? k : n;
    int lda = ac + s.pad, ldb = bc + s.pad, ldc = n + s.ldc_pad;
    size_t es = dt_size(dt), na = (size_t)ar * lda, nb = (size_t)br * ldb, nc = (size_t)m * ldc;
    float *a = hrand(dt, na, 3.0 / sqrt((double)k)), *b = hrand(dt, nb, 1.0),
          *bias = hrand(dt, (size_t)n, 1.0), *nan_c = malloc(nc * sizeof(float));
    void *ha, *hb, *hbias, *hnan, *outc, *outp;
    void *dbias = NULL, *dpre = NULL;
    tp_gemm_args g = {.struct_size = sizeof g};
    tp_status st;
    const double ud = dt_u(dt);
    double sum_t = 0, sum_e = 0;
    int tanh_act = act == TP_ACT_GELU_TANH, expect_refusal;
    char what[200];

    ck_assert_ptr_nonnull(nan_c);
    for (size_t i = 0; i < nc; i++) /* beta 0: C is not read, so NaN there must not leak */
        nan_c[i] = NAN;
    snprintf(what, sizeof what, "gemm_bias_act %s ta=%d tb=%d m=%d n=%d k=%d lda=%d ldb=%d "
             "ldc=%d bias=%d act=%d pre=%d", dt_name(dt), s.ta, s.tb, m, n, k, lda, ldb, ldc,
             use_bias, (int)act, use_pre);
    ha = pack(dt, a, na);
    hb = pack(dt, b, nb);
    hbias = pack(dt, bias, (size_t)n);
    hnan = pack(dt, nan_c, nc);
    outc = malloc(nc * es);
    outp = malloc(nc * es);
    ck_assert_ptr_nonnull(outc);
    ck_assert_ptr_nonnull(outp);
    g.dtype = dt;
    g.trans_a = s.ta;
    g.trans_b = s.tb;
    g.m = m;
    g.n = n;
    g.k = k;
    g.alpha = 1.0f;
    g.beta = 0.0f;
    g.a = dput(ha, na * es);
    g.lda = lda;
    g.b = dput(hb, nb * es);
    g.ldb = ldb;
    g.c = dput(hnan, nc * es);
    g.ldc = ldc;
    g.batch = 1;
    if (use_bias)
        dbias = dput(hbias, (size_t)n * es);
    if (use_pre)
        dpre = dput(hnan, nc * es);

    st = D->gemm_bias_act(H, &g, dbias, act, dpre);
    /* vtable mode: the device itself; exact GeLU, and pre for GeLU(tanh)
     * with ldc not a multiple of 8, are refused by design */
    expect_refusal = !via_api && (act == TP_ACT_GELU || (use_pre && tanh_act && ldc % 8 != 0));
    if (expect_refusal) {
        ck_assert_msg(st == TP_ERR_NOT_SUPPORTED, "%s: got %s, expected TP_ERR_NOT_SUPPORTED "
                      "(message: %s)", what, tp_status_string(st), last_msg());
        dget(outc, g.c, nc * es);
        ck_assert_msg(memcmp(outc, hnan, nc * es) == 0, "%s: refused, but wrote C", what);
        goto done;
    }
    if (!via_api && st == TP_ERR_NOT_SUPPORTED && !must_fuse &&
        strstr(last_msg(), "cublasLtMatmulAlgoGetHeuristic")) {
        /* cuBLASLt has no algorithm for this epilogue and shape: legal, the
         * core composes it (covered in api mode) */
        n_refused++;
        printf("note: refused (core composes it): %s: %s\n", what, last_msg());
        goto done;
    }
    ck_assert_msg(st == TP_OK, "%s: %s: %s", what, tp_status_string(st), last_msg());
    n_fused++;
    dget(outc, g.c, nc * es);
    if (use_pre)
        dget(outp, dpre, nc * es);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < ldc; j++) {
            size_t at = (size_t)i * ldc + j;
            double sx = 0, mag = 0, e_pre, ref, tol, t = 0;
            float got;

            if (j >= n) { /* padding between rows stays untouched */
                ck_assert_msg(memcmp((char *)outc + at * es, (char *)hnan + at * es, es) == 0,
                              "%s: wrote C padding [%d,%d]", what, i, j);
                if (use_pre)
                    ck_assert_msg(memcmp((char *)outp + at * es, (char *)hnan + at * es, es) ==
                                  0, "%s: wrote pre padding [%d,%d]", what, i, j);
                continue;
            }
            for (int l = 0; l < k; l++) {
                double av = s.ta ? a[(size_t)l * lda + i] : a[(size_t)i * lda + l];
                double bv = s.tb ? b[(size_t)j * ldb + l] : b[(size_t)l * ldb + j];
                sx += av * bv;
                mag += fabs(av * bv);
            }
            if (use_bias) {
                sx += bias[j];
                mag += fabs(bias[j]);
            }
            e_pre = (dt == TP_F32 ? 1 : 2) * (k + 3) * U * mag;
            /* pre (or C for act NONE): the sum, stored in dt */
            tol = e_pre + ud * (fabs(sx) + e_pre);
            if (use_pre) {
                got = unpack1(dt, outp, at);
                ck_assert_msg(fabs(got - sx) <= tol, "%s: pre[%d,%d] = %.9g, expected %.9g "
                              "(diff %.3g > tol %.3g)", what, i, j, got, sx, fabs(got - sx), tol);
            }
            got = unpack1(dt, outc, at);
            if (act == TP_ACT_NONE) {
                ref = sx;
            } else {
                double e_x = tol; /* the argument may have been rounded to dt */
                ref = gelu_d(sx, tanh_act);
                if (tanh_act)
                    t = tanh(0.7978845608028654 * (sx + 0.044715 * sx * sx * sx));
                tol = 1.13 * e_x + 8 * U * fabs(sx) +
                      (tanh_act ? 0.5 * fabs(sx) * (fabs(t) / 1024 + 1.0 / 1048576) : 0);
                tol += ud * (fabs(ref) + tol);
                if (tanh_act) {
                    sum_t += fabs(got - ref);
                    sum_e += fabs(got - gelu_d(sx, 0));
                }
            }
            ck_assert_msg(fabs(got - ref) <= tol, "%s: C[%d,%d] = %.9g, expected %.9g (diff "
                          "%.3g > tol %.3g)", what, i, j, got, ref, fabs(got - ref), tol);
        }
    /* Which GeLU does the epilogue compute? In f32 the tanh and erf forms
     * (up to 4.7e-4 apart) are told apart on average over many values. */
    if (dt == TP_F32 && tanh_act && (int64_t)m * n >= 200)
        ck_assert_msg(sum_t < sum_e, "%s: the results are closer to the exact (erf) GeLU (mean "
                      "diff %.3g) than to the tanh form asked for (%.3g): the GELU epilogue "
                      "may not be the tanh approximation", what, sum_e / ((double)m * n),
                      sum_t / ((double)m * n));
done:
    free(a);
    free(b);
    free(bias);
    free(nan_c);
    free(ha);
    free(hb);
    free(hbias);
    free(hnan);
    free(outc);
    free(outp);
    free_bufs();
    return st;
}

/* Odd shapes (any of them may be refused by cuBLASLt's heuristic) and
 * aligned ones (must run fused). ldc_pad: ldc - n. */
static const gba_shape odd_shapes[] = {
    {0, 0, 13, 17, 5, 0, 0},  {0, 0, 13, 17, 1, 0, 0},  {1, 0, 17, 13, 13, 1, 3},
    {0, 1, 1, 13, 17, 2, 0},  {1, 1, 17, 1, 13, 0, 7},  {0, 0, 13, 17, 17, 3, 7},
    {0, 1, 33, 24, 17, 0, 0}, /* ldc 24: pre with GeLU(tanh) can be fused */
};
static const gba_shape aligned_shapes[] = {
    {0, 0, 256, 384, 512, 0, 0}, /* the MLP's first GEMM: x [m, k] * W1 [k, n] */
    {0, 1, 64, 128, 256, 0, 64}, /* B transposed, C in a wider buffer (ldc 192) */
};

static void body_gemm_bias_act(void)
{
    n_fused = n_refused = 0;
    for (int d = 0; d < 3; d++)
        for (int act = 0; act < TP_ACT_COUNT_; act++)
            for (int bias = 0; bias < 2; bias++)
                for (int pre = 0; pre < 2; pre++) {
                    for (size_t s = 0; s < sizeof odd_shapes / sizeof *odd_shapes; s++)
                        gba_case(dtypes[d], odd_shapes[s], bias, (tp_act)act, pre, 0);
                    for (size_t s = 0; s < sizeof aligned_shapes / sizeof *aligned_shapes; s++)
                        gba_case(dtypes[d], aligned_shapes[s], bias, (tp_act)act, pre, 1);
                }
    printf("gemm_bias_act: %d calls fused, %d refused by cuBLASLt's heuristic\n", n_fused,
           n_refused);
}

static void body_gemm_bias_act_errors(void)
{
    void *a = dmalloc(4096), *b = dmalloc(4096), *c = dmalloc(4096), *pre = dmalloc(4096);
    tp_gemm_args g = {.struct_size = sizeof g};

    g.dtype = TP_F32;
    g.m = 13, g.n = 17, g.k = 5;
    g.alpha = 1;
    g.a = a, g.lda = 5, g.b = b, g.ldb = 17, g.c = c, g.ldc = 17, g.batch = 1;
    ck_assert_msg(D->gemm_bias_act(H, &g, NULL, TP_ACT_NONE, NULL) == TP_OK, "%s", last_msg());
    expect_err(D->gemm_bias_act(H, &g, NULL, (tp_act)9, NULL), TP_ERR_INVALID_ARG, "act 9",
               "act");
    g.lda = 4;
    expect_err(D->gemm_bias_act(H, &g, NULL, TP_ACT_NONE, NULL), TP_ERR_INVALID_ARG, "lda < k",
               "lda");
    g.lda = 5;
    expect_err(D->gemm_bias_act(H, &g, NULL, TP_ACT_NONE, c), TP_ERR_INVALID_ARG, "pre == c",
               "pre");
    g.dtype = TP_I32;
    expect_err(D->gemm_bias_act(H, &g, NULL, TP_ACT_NONE, NULL), TP_ERR_NOT_SUPPORTED, "i32",
               "i32");
    g.dtype = TP_F32;
    g.batch = 2, g.stride_a = 65, g.stride_b = 85, g.stride_c = 221;
    expect_err(D->gemm_bias_act(H, &g, NULL, TP_ACT_NONE, NULL), TP_ERR_NOT_SUPPORTED,
               "batch 2", "batch");
    g.batch = 1;
    expect_err(D->gemm_bias_act(H, &g, NULL, TP_ACT_GELU, NULL), TP_ERR_NOT_SUPPORTED,
               "exact GeLU", "erf");
    expect_err(D->gemm_bias_act(H, &g, NULL, TP_ACT_GELU_TANH, pre), TP_ERR_NOT_SUPPORTED,
               "pre with ldc 17", "ldc");
    ck_assert_msg(D->synchronize(H) == TP_OK, "%s", last_msg());
    free_bufs();
}

/* api mode: GeLU(tanh) + bias runs fused, as one gemm and no kernel. */
static uint64_t calls(const tp_counter *c)
{
    uint64_t s = 0;
    for (int p = 0; p < TP_PHASE_COUNT; p++)
        s += c[p].calls;
    return s;
}

static void fused_counts(tp_dtype dt, gba_shape s, tp_act act, int use_pre, int want_fused)
{
    tp_stats st;
    tp_device *dev = tp_comm_device(W);
    int m = s.m, n = s.n, k = s.k, ldc = n + s.ldc_pad;
    size_t es = dt_size(dt);
    void *a = dmalloc((size_t)m * k * es), *b = dmalloc((size_t)k * n * es),
         *c = dmalloc((size_t)m * ldc * es), *bias = dmalloc((size_t)n * es),
         *pre = dmalloc((size_t)m * ldc * es);
    tp_gemm_args g = {.struct_size = sizeof g};

    g.dtype = dt;
    g.m = m, g.n = n, g.k = k;
    g.alpha = 1;
    g.a = a, g.lda = k, g.b = b, g.ldb = n, g.c = c, g.ldc = ldc, g.batch = 1;
    ck_assert_msg(tp_dev_synchronize(dev) == TP_OK, "%s", tp_last_error());
    tp_stats_reset(W);
    ck_assert_msg(tp_dev_gemm_bias_act(dev, &g, bias, act, use_pre ? pre : NULL) == TP_OK,
                  "gemm_bias_act %s act %d pre %d: %s", dt_name(dt), (int)act, use_pre,
                  tp_last_error());
    tp_stats_get(W, &st);
    ck_assert_msg(calls(st.gemm) == 1, "gemm_bias_act %s act %d pre %d: %llu gemm calls counted, "
                  "expected 1", dt_name(dt), (int)act, use_pre,
                  (unsigned long long)calls(st.gemm));
    if (want_fused)
        ck_assert_msg(calls(st.kernel) == 0, "gemm_bias_act %s m %d n %d k %d act %d pre %d on "
                      "cuda: %llu kernel calls, expected 0 (the fused cuBLASLt epilogue was not "
                      "used)", dt_name(dt), m, n, k, (int)act, use_pre,
                      (unsigned long long)calls(st.kernel));
    else
        ck_assert_msg(calls(st.kernel) >= 1, "gemm_bias_act %s act %d: exact GeLU must be "
                      "composed (bias_add, gelu), but no kernel call was counted", dt_name(dt),
                      (int)act);
    free_bufs();
}

static void body_fused(void)
{
    for (int d = 0; d < 3; d++)
        for (size_t s = 0; s < sizeof aligned_shapes / sizeof *aligned_shapes; s++) {
            fused_counts(dtypes[d], aligned_shapes[s], TP_ACT_GELU_TANH, 0, 1);
            fused_counts(dtypes[d], aligned_shapes[s], TP_ACT_GELU_TANH, 1, 1);
            fused_counts(dtypes[d], aligned_shapes[s], TP_ACT_NONE, 0, 1);
            fused_counts(dtypes[d], aligned_shapes[s], TP_ACT_GELU, 0, 0);
        }
}

/* --------------------------------------------- several ranks, one process */

enum { RANKS = 4, RN = 4097 };

typedef struct rank_arg {
    int rank;
    int gpu;             /* from open's env */
    void *x;             /* this rank's x, reduced by rank - 1 */
    char fail[512];      /* the first failure (threads do not ck_assert) */
    int peer_refused;    /* reduce refused: x on a GPU without peer access */
} rank_arg;

static rank_arg ranks[RANKS];
static pthread_barrier_t bar;

#define RFAIL(r, ...)                                                                          \
    do {                                                                                       \
        if (!(r)->fail[0])                                                                     \
            snprintf((r)->fail, sizeof (r)->fail, __VA_ARGS__);                                \
    } while (0)

/* Rank r: y_r += x_{r+1} (the next rank's buffer, perhaps on another GPU),
 * on its own stream, concurrently with the others. */
static void *rank_main(void *arg)
{
    rank_arg *r = arg;
    tp_device_args args = {sizeof args, r->rank, r->rank, RANKS, 0};
    tp_rank_env env = {.struct_size = sizeof env, .mem_kind = TP_MEM_HOST, .device_index = -1};
    const tp_device_ops *ops = plugin->device;
    void *h = NULL, *y = NULL;
    float hx[RN], hy[RN], out[RN];
    int ok = 0;
    tp_status st;

    if ((st = ops->open(&test_host, &args, &h, &env)) != TP_OK) {
        RFAIL(r, "rank %d: open: %.400s", r->rank, host_msg);
    } else {
        r->gpu = env.device_index;
        for (int i = 0; i < RN; i++) {
            hx[i] = (float)(r->rank * 10000 + i);
            hy[i] = (float)(r->rank * 100000 + 2 * i);
        }
        if (ops->alloc(h, sizeof hx, &r->x) || ops->alloc(h, sizeof hy, &y) ||
            ops->upload(h, r->x, hx, sizeof hx) || ops->upload(h, y, hy, sizeof hy))
            RFAIL(r, "rank %d: alloc/upload: %.400s", r->rank, host_msg);
        else
            ok = 1;
    }
    pthread_barrier_wait(&bar); /* every x written (upload waits) */
    if (ok) {
        rank_arg *nx = &ranks[(r->rank + 1) % RANKS];
        if (!nx->x) {
            RFAIL(r, "rank %d: rank %d has no buffer", r->rank, nx->rank);
        } else if ((st = ops->reduce(h, TP_F32, TP_SUM, RN, nx->x, y)) != TP_OK) {
            if (st == TP_ERR_NOT_SUPPORTED && nx->gpu != r->gpu && strstr(host_msg, "peer"))
                r->peer_refused = 1;
            else
                RFAIL(r, "rank %d (GPU %d): reduce of rank %d's buffer (GPU %d): %s: %.400s",
                      r->rank, r->gpu, nx->rank, nx->gpu, tp_status_string(st), host_msg);
        } else if (ops->download(h, out, y, sizeof out) != TP_OK) {
            RFAIL(r, "rank %d: download: %.400s", r->rank, host_msg);
        } else {
            for (int i = 0; i < RN; i++) {
                /* integers below 2^24: exact in f32 */
                float want = hy[i] + (float)(nx->rank * 10000 + i);
                if (out[i] != want) {
                    RFAIL(r, "rank %d: y[%d] = %.9g, expected %.9g", r->rank, i, out[i], want);
                    break;
                }
            }
        }
    }
    pthread_barrier_wait(&bar); /* every reduce done (download waits) before x is freed */
    if (h) {
        if (ops->synchronize(h) != TP_OK)
            RFAIL(r, "rank %d: synchronize: %.400s", r->rank, host_msg);
        ops->free(h, y);
        ops->free(h, r->x);
        ops->close(h);
    }
    return NULL;
}

START_TEST(t_reduce_ranks)
{
    pthread_t th[RANKS];

    memset(ranks, 0, sizeof ranks);
    ck_assert_int_eq(pthread_barrier_init(&bar, NULL, RANKS), 0);
    for (int i = 0; i < RANKS; i++) {
        ranks[i].rank = i;
        ranks[i].gpu = -1;
        ck_assert_int_eq(pthread_create(&th[i], NULL, rank_main, &ranks[i]), 0);
    }
    for (int i = 0; i < RANKS; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&bar);
    for (int i = 0; i < RANKS; i++) {
        ck_assert_msg(!ranks[i].fail[0], "%s", ranks[i].fail);
        printf("reduce ranks: rank %d on GPU %d%s\n", i, ranks[i].gpu,
               ranks[i].peer_refused ? " (next rank's GPU has no peer access: refused)" : "");
    }
}
END_TEST

/* ------------------------------------------------------------- harness */

typedef void (*body_fn)(void);

static tp_status api_rank(tp_comm *world, void *arg)
{
    D = &api_ops;
    W = world;
    H = tp_comm_device(world);
    ((body_fn)arg)();
    free_bufs();
    return TP_OK;
}

/* Run body on one rank with a fresh device. */
static void with_device(body_fn body)
{
    if (via_api) {
        tp_config cfg = {0};
        tp_ctx *ctx = NULL;
        tp_status st;

        cfg.backend = "loopback";
        cfg.device = dev_name;
        cfg.world_size = 1;
        st = tp_init(&cfg, &ctx);
        ck_assert_msg(st == TP_OK, "tp_init(loopback, %s): %s", dev_name, tp_last_error());
        st = tp_run(ctx, api_rank, (void *)body);
        ck_assert_msg(st == TP_OK, "tp_run: %s", tp_last_error());
        tp_finalize(ctx);
    } else {
        tp_device_args args = {sizeof args, 0, 0, 1, 0};
        tp_rank_env env = {.struct_size = sizeof env, .mem_kind = TP_MEM_HOST,
                           .device_index = -1};

        D = plugin->device;
        ck_assert_msg(D->open(&test_host, &args, &H, &env) == TP_OK, "open: %s", host_msg);
        ck_assert_int_eq(env.mem_kind, TP_MEM_CUDA);
        body();
        ck_assert_msg(D->synchronize(H) == TP_OK, "synchronize: %s", host_msg);
        free_bufs();
        D->close(H);
        H = NULL;
    }
}

START_TEST(t_reduce) { with_device(body_reduce); }
END_TEST
START_TEST(t_reduce_errors) { with_device(body_reduce_errors); }
END_TEST
START_TEST(t_host_alloc) { with_device(body_host_alloc); }
END_TEST
START_TEST(t_gemm_bias_act) { with_device(body_gemm_bias_act); }
END_TEST
START_TEST(t_gemm_bias_act_errors) { with_device(body_gemm_bias_act_errors); }
END_TEST
START_TEST(t_fused) { with_device(body_fused); }
END_TEST

/* 1: runs here; 0: skip (reason in why). In a child, so this process has
 * not touched CUDA when Check forks. */
static int gpu_available(char *why, size_t len)
{
    int fds[2], status = 0;
    pid_t pid;
    ssize_t got;

    if (pipe(fds) != 0) {
        snprintf(why, len, "pipe failed");
        return 0;
    }
    pid = fork();
    if (pid == 0) {
        char msg[1024] = "";
        int ok;
        close(fds[0]);
        if (via_api) {
            tp_config cfg = {0};
            tp_ctx *ctx = NULL;
            tp_status st;
            cfg.backend = "loopback";
            cfg.device = dev_name;
            cfg.world_size = 1;
            st = tp_init(&cfg, &ctx);
            ok = st == TP_OK;
            if (!ok)
                snprintf(msg, sizeof msg, "tp_init with device '%s': %s: %s", dev_name,
                         tp_status_string(st), tp_last_error());
            /* only a device that is not built or cannot run here is a skip */
            if (!ok && st != TP_ERR_UNAVAILABLE && st != TP_ERR_PLUGIN)
                ok = -1;
            tp_finalize(ctx);
        } else {
            ok = plugin->probe ? plugin->probe(msg, sizeof msg) : 1;
        }
        if (write(fds[1], msg, strlen(msg)) < 0)
            _exit(3);
        _exit(ok == 1 ? 0 : ok == 0 ? 1 : 2);
    }
    close(fds[1]);
    got = read(fds[0], why, len - 1);
    why[got > 0 ? got : 0] = 0;
    close(fds[0]);
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) > 2) {
        snprintf(why, len, "the availability check crashed (status %d)", status);
        return -1;
    }
    return WEXITSTATUS(status) == 0 ? 1 : WEXITSTATUS(status) == 1 ? 0 : -1;
}

/* vtable mode: libtp-cuda.so from TP_PLUGIN_PATH. */
static int load_plugin(char *why, size_t len)
{
    char path[4096];
    const char *dirs = getenv("TP_PLUGIN_PATH");
    char *copy = strdup(dirs ? dirs : ""), *save = NULL;
    void *so = NULL;
    const tp_plugin_desc *(*entry)(void);

    for (char *d = strtok_r(copy, ":", &save); d && !so; d = strtok_r(NULL, ":", &save)) {
        snprintf(path, sizeof path, "%s/libtp-cuda.so", d);
        if (access(path, F_OK) == 0 && !(so = dlopen(path, RTLD_NOW | RTLD_LOCAL)))
            snprintf(why, len, "dlopen %.500s: %.400s", path, dlerror());
    }
    free(copy);
    if (!so) {
        if (!why[0])
            snprintf(why, len, "libtp-cuda.so is not in TP_PLUGIN_PATH=%s (cuda device not "
                     "built?)", dirs ? dirs : "(unset)");
        return 0;
    }
    entry = (const tp_plugin_desc *(*)(void))dlsym(so, TP_PLUGIN_ENTRY);
    if (!entry || !(plugin = entry()) || !plugin->device) {
        snprintf(why, len, "libtp-cuda.so: no " TP_PLUGIN_ENTRY " or no device ops");
        return 0;
    }
    if (plugin->abi_minor < 1 ||
        plugin->device->struct_size < offsetof(tp_device_ops, gemm_bias_act) + sizeof(void *)) {
        snprintf(why, len, "libtp-cuda.so was built against ABI %u.%u, without the 1.1 slots",
                 plugin->abi_major, plugin->abi_minor);
        return 0;
    }
    return 1;
}

int main(void)
{
    const char *via = getenv("TP_DEVICE_TEST_VIA");
    char why[1024] = "";
    Suite *s;
    TCase *tc;
    SRunner *sr;
    int failed;

    setvbuf(stdout, NULL, _IOLBF, 0);
    via_api = via && !strcmp(via, "api");
    if (via_api && getenv("TP_DEVICE") && *getenv("TP_DEVICE"))
        dev_name = getenv("TP_DEVICE");
    if (!via_api && !load_plugin(why, sizeof why)) {
        printf("SKIP: device 'cuda': %s\n", why);
        return 77;
    }
    switch (gpu_available(why, sizeof why)) {
    case 0:
        printf("SKIP: device '%s' is not available here: %s\n", dev_name, why);
        return 77;
    case -1:
        printf("FAIL: device '%s' could not be started: %s\n", dev_name, why);
        return 1;
    }

    s = suite_create("cuda-slots");
    tc = tcase_create(via_api ? "api" : "vtable");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, t_reduce);
    tcase_add_test(tc, t_gemm_bias_act);
    if (via_api) {
        if (!strcmp(dev_name, "cuda")) /* which combinations fuse is the cuda device's */
            tcase_add_test(tc, t_fused);
    } else {
        tcase_add_test(tc, t_reduce_errors);
        tcase_add_test(tc, t_host_alloc);
        tcase_add_test(tc, t_gemm_bias_act_errors);
        tcase_add_test(tc, t_reduce_ranks);
    }
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    /* api mode asserts on the rank's thread: only safe in a forked child.
     * vtable mode asserts on this thread only and must not fork. */
    srunner_set_fork_status(sr, via_api ? CK_FORK : CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
