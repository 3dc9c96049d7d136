/*
 * test-device.c — device conformance: every op of a device plugin against
 * plain-loop references written here, plus finite-difference checks of the
 * backward kernels and the error paths.
 *
 * Which device: TP_DEVICE (default "cpu"). How it is reached:
 *   TP_DEVICE_TEST_VIA=vtable  load libtp-$TP_DEVICE.so from TP_PLUGIN_PATH
 *                              with dlopen and call its tp_device_ops directly
 *                              (needs no libtp runtime);
 *   TP_DEVICE_TEST_VIA=api     (default) tp_init + tp_run with one loopback
 *                              rank, calling the public tp_dev_* functions.
 * A device that cannot run here (not built, probe says no) makes the whole
 * program exit 77 with the reason.
 *
 * Tolerances. u = 2^-24 is the unit roundoff of f32. A sum of n terms
 * computed in f32 in any order, with or without FMA, is within
 * (n - 1) u sum|terms| of the exact sum (Higham, Accuracy and Stability of
 * Numerical Algorithms, ch. 3), and each further rounding or correctly
 * rounded-ish libm call (erff, expf, tanhf: <= 4 ulp on glibc and CUDA)
 * adds a few u relative to its result. So each check below is
 *   |got - ref| <= K u M
 * where ref is computed in double, M is the sum of the magnitudes of the
 * terms that make up the value (its "condition scale"), and K counts the
 * roundings on the longest chain plus libm's ulps; each op states its K.
 * These are worst-case bounds, not fitted numbers.
 */
#include <check.h>
#include <dlfcn.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include <tp/tp.h>

#define U 5.9604644775390625e-08 /* 2^-24 */

/* ------------------------------------------------------------ harness */

static const char *dev_name = "cpu";
static int via_api = 1;

/* The device under test: a vtable and its handle, in either mode; one per
 * thread, as each rank (thread) has its own device. */
static _Thread_local const tp_device_ops *D;
static _Thread_local void *H;
static _Thread_local int rank_id;          /* this rank (thread) among the test's ranks */
static _Thread_local tp_comm *rank_comm;   /* api mode: the rank's world, for its stats */

/* vtable mode: the loaded plugin, and a host that records errors. */
static const tp_plugin_desc *plugin;
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

static void clear_msg(void)
{
    if (via_api)
        tp_clear_error();
    host_msg[0] = 0;
}

/* api mode: wrappers with the vtable's signatures around tp_dev_*. */
#define W(name, params, args)                                                                 \
    static tp_status api_##name params { return tp_dev_##name args; }
static tp_status api_alloc(void *d, size_t bytes, void **p)
{
    return tp_dev_alloc(d, bytes, p);
}
static void api_free(void *d, void *p)
{
    tp_dev_free(d, p);
}
W(upload, (void *d, void *dst, const void *s, size_t b), (d, dst, s, b))
W(download, (void *d, void *dst, const void *s, size_t b), (d, dst, s, b))
W(copy_2d, (void *d, void *dst, size_t dp, const void *s, size_t sp, size_t w, size_t h),
  (d, dst, dp, s, sp, w, h))
W(memset, (void *d, void *p, int v, size_t b), (d, p, v, b))
W(synchronize, (void *d), (d))
W(gemm, (void *d, const tp_gemm_args *g), (d, g))
W(bias_add, (void *d, tp_dtype dt, int64_t r, int64_t c, void *y, const void *b),
  (d, dt, r, c, y, b))
W(bias_grad, (void *d, tp_dtype dt, int64_t r, int64_t c, const void *dy, void *db),
  (d, dt, r, c, dy, db))
W(gelu, (void *d, tp_dtype dt, int64_t n, const void *x, void *y, int t), (d, dt, n, x, y, t))
W(gelu_bwd, (void *d, tp_dtype dt, int64_t n, const void *x, const void *dy, void *dx, int t),
  (d, dt, n, x, dy, dx, t))
W(axpby, (void *d, tp_dtype dt, int64_t n, float a, const void *x, float b, void *y),
  (d, dt, n, a, x, b, y))
W(softmax, (void *d, tp_dtype dt, int64_t r, int64_t c, const void *x, void *y, float s, int ca),
  (d, dt, r, c, x, y, s, ca))
W(softmax_bwd,
  (void *d, tp_dtype dt, int64_t r, int64_t c, const void *y, const void *dy, void *dx, float s),
  (d, dt, r, c, y, dy, dx, s))
W(norm,
  (void *d, tp_dtype dt, int64_t r, int64_t c, const void *x, const void *g, const void *b,
   void *y, float *mu, float *rs, float eps, int rms),
  (d, dt, r, c, x, g, b, y, mu, rs, eps, rms))
W(norm_bwd,
  (void *d, tp_dtype dt, int64_t r, int64_t c, const void *x, const void *g, const float *mu,
   const float *rs, const void *dy, void *dx, void *dg, void *db, int rms),
  (d, dt, r, c, x, g, mu, rs, dy, dx, dg, db, rms))
W(embedding,
  (void *d, tp_dtype dt, int64_t n, int64_t dim, const int32_t *ids, int64_t lo, int64_t hi,
   const void *t, void *o),
  (d, dt, n, dim, ids, lo, hi, t, o))
W(embedding_bwd,
  (void *d, tp_dtype dt, int64_t n, int64_t dim, const int32_t *ids, int64_t lo, int64_t hi,
   const void *o, void *t),
  (d, dt, n, dim, ids, lo, hi, o, t))
W(row_max, (void *d, tp_dtype dt, int64_t r, int64_t c, const void *x, float *o),
  (d, dt, r, c, x, o))
W(ce_stats,
  (void *d, tp_dtype dt, int64_t r, int64_t c, const void *x, const int32_t *t, int64_t lo,
   const float *mx, float *o),
  (d, dt, r, c, x, t, lo, mx, o))
W(ce_bwd,
  (void *d, tp_dtype dt, int64_t r, int64_t c, const void *x, const int32_t *t, int64_t lo,
   int64_t v, const float *mx, const float *se, const float *sc, float s, void *dx),
  (d, dt, r, c, x, t, lo, v, mx, se, sc, s, dx))
W(adamw,
  (void *d, int64_t n, float *p, const float *g, float *m, float *v, float lr, float b1, float b2,
   float eps, float wd, int64_t step),
  (d, n, p, g, m, v, lr, b1, b2, eps, wd, step))

W(reduce, (void *d, tp_dtype dt, tp_redop op, int64_t n, const void *x, void *y),
  (d, dt, op, n, x, y))
W(gemm_bias_act, (void *d, const tp_gemm_args *g, const void *b, tp_act a, void *pre),
  (d, g, b, a, pre))

static const tp_device_ops api_ops = {
    .struct_size = sizeof(tp_device_ops),
    .alloc = api_alloc, .free = api_free, .upload = api_upload, .download = api_download,
    .copy_2d = api_copy_2d, .memset = api_memset, .synchronize = api_synchronize,
    .gemm = api_gemm, .bias_add = api_bias_add, .bias_grad = api_bias_grad, .gelu = api_gelu,
    .gelu_bwd = api_gelu_bwd, .axpby = api_axpby, .softmax = api_softmax,
    .softmax_bwd = api_softmax_bwd, .norm = api_norm, .norm_bwd = api_norm_bwd,
    .embedding = api_embedding, .embedding_bwd = api_embedding_bwd, .row_max = api_row_max,
    .ce_stats = api_ce_stats, .ce_bwd = api_ce_bwd, .adamw = api_adamw,
    .reduce = api_reduce, .gemm_bias_act = api_gemm_bias_act, /* host_alloc: no public API */
};

/* Device buffers of the running test, freed after it. */
#define MAX_BUFS 256
static _Thread_local void *bufs[MAX_BUFS];
static _Thread_local int nbufs;

static void *dmalloc(size_t bytes)
{
    void *p = NULL;
    ck_assert_int_lt(nbufs, MAX_BUFS);
    ck_assert_msg(D->alloc(H, bytes, &p) == TP_OK, "alloc %zu: %s", bytes, last_msg());
    ck_assert_ptr_nonnull(p);
    ck_assert_msg(((uintptr_t)p & 63) == 0, "alloc returned %p, not 64-byte aligned", p);
    bufs[nbufs++] = p;
    return p;
}

/* A device copy of n floats / ints (n may be 0). */
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

typedef void (*body_fn)(void);

/* The test data's random stream (per thread: per rank). */
static _Thread_local uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static tp_status rank_main(tp_comm *world, void *arg)
{
    D = &api_ops;
    H = tp_comm_device(world);
    rank_comm = world;
    rank_id = tp_comm_rank(world);
    rng_state += 0x1234567ull * (uint64_t)tp_comm_rank(world); /* different data per rank */
    ((body_fn)arg)();
    free_bufs();
    return TP_OK;
}

typedef struct vt_rank {
    body_fn body;
    int rank, ranks;
} vt_rank;

/* vtable mode: one rank on this thread, with its own device. */
static void *vt_rank_main(void *arg)
{
    vt_rank *r = arg;
    tp_device_args args = {sizeof args, r->rank, r->rank, r->ranks, 0};
    tp_rank_env env = {.struct_size = sizeof env, .mem_kind = TP_MEM_HOST, .device_index = -1};

    D = plugin->device;
    rank_id = r->rank;
    rng_state += 0x1234567ull * (uint64_t)r->rank;
    ck_assert_msg(D->open(&test_host, &args, &H, &env) == TP_OK, "open: %s", host_msg);
    r->body();
    ck_assert_msg(D->synchronize(H) == TP_OK, "synchronize: %s", host_msg);
    free_bufs();
    D->close(H);
    H = NULL;
    return NULL;
}

/* Run a test body on `ranks` ranks at once, each a thread with its own
 * device (only in Check's fork mode: a failing check exits the child). */
static void with_devices(body_fn body, int ranks)
{
    if (via_api) {
        tp_config cfg = {0};
        tp_ctx *ctx = NULL;
        tp_status st;

        cfg.backend = "loopback";
        cfg.device = dev_name;
        cfg.world_size = ranks;
        st = tp_init(&cfg, &ctx);
        ck_assert_msg(st == TP_OK, "tp_init(device %s, %d ranks): %s", dev_name, ranks,
                      tp_last_error());
        st = tp_run(ctx, rank_main, (void *)body);
        ck_assert_msg(st == TP_OK, "tp_run: %s", tp_last_error());
        tp_finalize(ctx);
    } else {
        pthread_t th[8];
        vt_rank r[8];
        ck_assert_int_le(ranks, 8);
        for (int i = 0; i < ranks; i++) {
            r[i] = (vt_rank){body, i, ranks};
            ck_assert_int_eq(pthread_create(&th[i], NULL, vt_rank_main, &r[i]), 0);
        }
        for (int i = 0; i < ranks; i++)
            pthread_join(th[i], NULL);
    }
}

/* Run a test body with a fresh device (one rank). */
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
        ck_assert_msg(st == TP_OK, "tp_init(device %s): %s", dev_name, tp_last_error());
        st = tp_run(ctx, rank_main, (void *)body);
        ck_assert_msg(st == TP_OK, "tp_run: %s", tp_last_error());
        tp_finalize(ctx);
    } else {
        tp_device_args args = {sizeof args, 0, 0, 1, 0};
        tp_rank_env env = {.struct_size = sizeof env, .mem_kind = TP_MEM_HOST, .device_index = -1};

        D = plugin->device;
        rank_id = 0;
        ck_assert_msg(D->open(&test_host, &args, &H, &env) == TP_OK, "open: %s", host_msg);
        body();
        ck_assert_msg(D->synchronize(H) == TP_OK, "synchronize: %s", host_msg);
        free_bufs();
        D->close(H);
        H = NULL;
    }
}

/* ---------------------------------------------------------- utilities */


static double urand(void) /* uniform [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 4503599627370496.0 - 1.0;
}

static float *hrand(size_t n, double scale)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(scale * urand());
    return p;
}

static float *hzalloc(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof *p);
    ck_assert_ptr_nonnull(p);
    return p;
}

static double *dzalloc(size_t n)
{
    double *p = calloc(n ? n : 1, sizeof *p);
    ck_assert_ptr_nonnull(p);
    return p;
}

/* |got - ref| <= tol, with a message naming what and where. */
#define CLOSE(got, ref, tol, ...)                                                              \
    do {                                                                                       \
        double g_ = (got), r_ = (ref), t_ = (tol);                                             \
        if (!(fabs(g_ - r_) <= t_)) {                                                          \
            char w_[256];                                                                      \
            snprintf(w_, sizeof w_, __VA_ARGS__);                                              \
            ck_abort_msg("%s: got %.9g, expected %.9g (diff %.3g > tol %.3g)", w_, g_, r_,     \
                         fabs(g_ - r_), t_);                                                   \
        }                                                                                      \
    } while (0)

/* Expect status `want` and a message containing each of the NULL-ended words. */
static void expect_err(tp_status got, tp_status want, const char *what, ...)
{
    va_list ap;
    const char *w;

    ck_assert_msg(got == want, "%s: got %s, expected %s (message: %s)", what,
                  tp_status_string(got), tp_status_string(want), last_msg());
    va_start(ap, what);
    while ((w = va_arg(ap, const char *)))
        ck_assert_msg(strcasestr(last_msg(), w), "%s: message \"%s\" does not mention \"%s\"",
                      what, last_msg(), w);
    va_end(ap);
    clear_msg();
}

static const int sizes[] = {1, 13, 17, 33};
#define NSIZES 4

/* --------------------------------------------------------------- memory */

static void body_memory(void)
{
    enum { N = 1000 };
    unsigned char src[N], back[N];
    void *a, *b, *z1, *z2;

    for (int i = 0; i < N; i++)
        src[i] = (unsigned char)(i * 7 + 3);
    a = dput(src, N);
    memset(back, 0, N);
    dget(back, a, N);
    ck_assert_mem_eq(back, src, N);

    /* Size 0 gives a valid pointer each time. */
    z1 = dmalloc(0);
    z2 = dmalloc(0);
    ck_assert_ptr_ne(z1, z2);
    ck_assert_int_eq(D->upload(H, z1, src, 0), TP_OK);
    ck_assert_int_eq(D->download(H, back, z1, 0), TP_OK);

    /* memset */
    b = dmalloc(N);
    ck_assert_int_eq(D->memset(H, b, 0xab, N), TP_OK);
    dget(back, b, N);
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(back[i], 0xab);

    /* copy_2d: a 13 x 17-byte block from pitch 40 to pitch 19, around untouched bytes. */
    ck_assert_int_eq(D->memset(H, b, 0, N), TP_OK);
    ck_assert_msg(D->copy_2d(H, (char *)b + 3, 19, (char *)a + 5, 40, 17, 13) == TP_OK, "%s",
                  last_msg());
    dget(back, b, N);
    for (int i = 0; i < N; i++) {
        int off = i - 3, r = off / 19, c = off % 19;
        int in = off >= 0 && r < 13 && c < 17;
        ck_assert_int_eq(back[i], in ? src[5 + r * 40 + c] : 0);
    }
    /* Upload leaves the host buffer reusable at return. */
    {
        float h[64], out[64];
        float *d = dmalloc(sizeof h);
        for (int i = 0; i < 64; i++)
            h[i] = (float)i;
        ck_assert_int_eq(D->upload(H, d, h, sizeof h), TP_OK);
        for (int i = 0; i < 64; i++)
            h[i] = -1.0f;
        dget(out, d, sizeof out);
        for (int i = 0; i < 64; i++)
            ck_assert_float_eq(out[i], (float)i);
    }
}

START_TEST(t_memory)
{
    with_device(body_memory);
}
END_TEST

/* ----------------------------------------------------------------- gemm */

/* C = alpha op(A) op(B) + beta C on one matrix, in double, with the
 * magnitude sum |alpha| sum|a||b| + |beta c| for the tolerance. */
static void ref_gemm(int ta, int tb, int m, int n, int k, double alpha, const float *a, int lda,
                     const float *b, int ldb, double beta, const float *c0, int ldc, double *ref,
                     double *mag)
{
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0, sa = 0;
            for (int l = 0; l < k; l++) {
                double av = ta ? a[l * lda + i] : a[i * lda + l];
                double bv = tb ? b[j * ldb + l] : b[l * ldb + j];
                s += av * bv;
                sa += fabs(av * bv);
            }
            ref[i * n + j] = alpha * s + (beta != 0 ? beta * c0[i * ldc + j] : 0);
            mag[i * n + j] = fabs(alpha) * sa + (beta != 0 ? fabs(beta * c0[i * ldc + j]) : 0);
        }
}

/* One strided-batched case; pad adds to every leading dimension. */
static void gemm_case(int ta, int tb, int m, int n, int k, int batch, int pad, float alpha,
                      float beta, int shared_a)
{
    int ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
    int lda = ac + pad, ldb = bc + pad, ldc = n + pad;
    int64_t sa = shared_a ? 0 : (int64_t)ar * lda + 5, sb = (int64_t)br * ldb + 3,
            sc = (int64_t)m * ldc + 7;
    size_t na = (size_t)(shared_a ? ar * lda : sa * batch), nb = (size_t)(sb * batch),
           nc = (size_t)(sc * batch);
    float *a = hrand(na, 1.0), *b = hrand(nb, 1.0), *c = hrand(nc, 1.0), *out = hzalloc(nc);
    double *ref = dzalloc((size_t)m * n), *mag = dzalloc((size_t)m * n);
    tp_gemm_args g = {.struct_size = sizeof g};

    if (beta == 0.0f) /* beta 0: C must not be read, so NaN there must not leak */
        for (size_t i = 0; i < nc; i++)
            c[i] = NAN;
    g.dtype = TP_F32;
    g.trans_a = ta;
    g.trans_b = tb;
    g.m = m;
    g.n = n;
    g.k = k;
    g.alpha = alpha;
    g.beta = beta;
    g.a = dput(a, na * 4);
    g.lda = lda;
    g.stride_a = sa;
    g.b = dput(b, nb * 4);
    g.ldb = ldb;
    g.stride_b = sb;
    g.c = dput(c, nc * 4);
    g.ldc = ldc;
    g.stride_c = sc;
    g.batch = batch;
    ck_assert_msg(D->gemm(H, &g) == TP_OK, "gemm: %s", last_msg());
    dget(out, g.c, nc * 4);
    for (int bi = 0; bi < batch; bi++) {
        ref_gemm(ta, tb, m, n, k, alpha, a + bi * sa, lda, b + bi * sb, ldb, beta, c + bi * sc,
                 ldc, ref, mag);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < ldc; j++) {
                size_t at = (size_t)(bi * sc + i * ldc + j);
                if (j >= n) { /* padding between rows stays untouched */
                    ck_assert_msg(memcmp(&out[at], &c[at], 4) == 0, "gemm wrote padding");
                    continue;
                }
                /* k products summed (k-1 roundings), times alpha, plus beta c:
                 * K = k + 3 (one more for an FMA-free product). */
                CLOSE(out[at], ref[i * n + j], (k + 3) * U * mag[i * n + j] + 1e-30,
                      "gemm ta=%d tb=%d m=%d n=%d k=%d batch %d/%d pad=%d alpha=%g beta=%g "
                      "C[%d,%d]", ta, tb, m, n, k, bi, batch, pad, alpha, beta, i, j);
            }
        /* the gap between batches stays untouched */
        for (int64_t t = (int64_t)(m - 1) * ldc + n; bi + 1 < batch && t < sc; t++)
            ck_assert_msg(memcmp(&out[bi * sc + t], &c[bi * sc + t], 4) == 0,
                          "gemm wrote between batches");
    }
    free(a);
    free(b);
    free(c);
    free(out);
    free(ref);
    free(mag);
    free_bufs();
}

static void body_gemm(void)
{
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int im = 0; im < NSIZES; im++)
                for (int in = 0; in < NSIZES; in++)
                    for (int ik = 0; ik < NSIZES; ik++) {
                        int m = sizes[im], n = sizes[in], k = sizes[ik];
                        int v = (im + in + ik + ta + tb) % 3;
                        gemm_case(ta, tb, m, n, k, 1, 0, 1.0f, 0.0f, 0);
                        gemm_case(ta, tb, m, n, k, 3, v, 0.75f, -1.25f, 0);
                        gemm_case(ta, tb, m, n, k, 2, 3, -2.0f, 0.0f, v == 1);
                    }
    /* k = 0: C = beta C (and beta 0 writes zeros); larger sizes. */
    gemm_case(0, 0, 13, 17, 0, 2, 1, 1.0f, 0.5f, 0);
    gemm_case(1, 0, 13, 17, 0, 1, 0, 1.0f, 0.0f, 0);
    gemm_case(0, 1, 65, 129, 257, 2, 2, 1.0f, 1.0f, 0);
    gemm_case(1, 1, 100, 37, 300, 1, 0, 0.5f, 0.0f, 0);
}

START_TEST(t_gemm)
{
    with_device(body_gemm);
}
END_TEST

static void body_gemm_errors(void)
{
    float *a = dmalloc(64 * 64 * 4), *b = dmalloc(64 * 64 * 4), *c = dmalloc(64 * 64 * 4);
    tp_gemm_args g = {.struct_size = sizeof g};

    g.dtype = TP_F32;
    g.m = 13, g.n = 17, g.k = 5;
    g.alpha = 1;
    g.a = a, g.lda = 5, g.b = b, g.ldb = 17, g.c = c, g.ldc = 17, g.batch = 1;
    ck_assert_msg(D->gemm(H, &g) == TP_OK, "%s", last_msg());

    g.lda = 4; /* A is 13 x 5 */
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm lda < k", "lda", NULL);
    g.lda = 5;
    g.trans_a = 1; /* A now stored 5 x 13: lda must be >= 13 */
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm transposed lda", "lda", NULL);
    g.trans_a = 0;
    g.ldb = 16;
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm ldb < n", "ldb", NULL);
    g.ldb = 17;
    g.ldc = 3;
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm ldc < n", "ldc", NULL);
    g.ldc = 17;
    g.batch = 0;
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm batch 0", "batch", NULL);
    g.batch = 1;
    g.m = -1;
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm m < 0", "m", NULL);
    g.m = 13;
    g.dtype = TP_I32; /* no device multiplies int32 matrices */
    expect_err(D->gemm(H, &g), via_api ? TP_ERR_INVALID_ARG : TP_ERR_NOT_SUPPORTED, "gemm i32",
               "dtype", NULL);
    g.dtype = (tp_dtype)77;
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm dtype 77", "77", NULL);
    g.dtype = TP_F32;
    g.a = NULL;
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm A NULL", "NULL", NULL);
}

/* Column blocks of one matrix as the batches (the per-head outputs of an
 * attention context [tokens, heads*head_dim]: stride_c = n, ldc >= batch*n):
 * they interleave in memory but never write the same element, so they must
 * be accepted and computed exactly like separate matrices. Layouts that do
 * write an element twice are refused. */
static void body_gemm_interleaved(void)
{
    const int m = 13, n = 5, k = 7, batch = 3, pad = 2, ldc = batch * n + pad;
    size_t na = (size_t)batch * m * k, nb = (size_t)batch * k * n, nc = (size_t)m * ldc;
    float *a = hrand(na, 1.0), *b = hrand(nb, 1.0), *c = hrand(nc, 1.0), *out = hzalloc(nc);
    double *ref = dzalloc((size_t)m * n), *mag = dzalloc((size_t)m * n);
    tp_gemm_args g = {.struct_size = sizeof g, .dtype = TP_F32, .m = m, .n = n, .k = k,
                      .alpha = 1.0f, .beta = 0.0f, .lda = k, .stride_a = (int64_t)m * k,
                      .ldb = n, .stride_b = (int64_t)k * n, .ldc = ldc, .stride_c = n,
                      .batch = batch};

    g.a = dput(a, na * 4);
    g.b = dput(b, nb * 4);
    g.c = dput(c, nc * 4);
    ck_assert_msg(D->gemm(H, &g) == TP_OK, "interleaved gemm refused: %s", last_msg());
    dget(out, g.c, nc * 4);
    for (int bi = 0; bi < batch; bi++) {
        ref_gemm(0, 0, m, n, k, 1.0, a + (size_t)bi * m * k, k, b + (size_t)bi * k * n, n, 0.0,
                 c + bi * n, ldc, ref, mag);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) /* K = k + 3 as in gemm_case */
                CLOSE(out[i * ldc + bi * n + j], ref[i * n + j],
                      (k + 3) * U * mag[i * n + j] + 1e-30, "interleaved gemm batch %d C[%d,%d]",
                      bi, i, j);
    }
    for (int i = 0; i < m; i++) /* the padding after the last block stays untouched */
        for (int j = batch * n; j < ldc; j++)
            ck_assert_msg(memcmp(&out[i * ldc + j], &c[i * ldc + j], 4) == 0,
                          "interleaved gemm wrote padding [%d,%d]", i, j);

    /* A single row per batch: any stride_c >= n is disjoint. */
    g.m = 1;
    g.stride_c = n;
    g.ldc = n;
    ck_assert_msg(D->gemm(H, &g) == TP_OK, "one-row batches refused: %s", last_msg());

    /* Overlapping layouts. */
    g.m = m;
    g.ldc = ldc;
    g.stride_c = n - 1; /* neighbouring blocks share a column */
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm stride_c < n", "stride_c", NULL);
    g.stride_c = n;
    g.ldc = batch * n - 1; /* the last block runs into the next row */
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm blocks wider than ldc", "stride_c", NULL);
    g.ldc = ldc;
    g.stride_c = ldc; /* batch b starts one row below batch b-1 */
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm row-shifted batches", "stride_c", NULL);
    g.stride_c = (int64_t)(m - 1) * ldc + n - 1; /* last row of one meets the next */
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm touching batches", "stride_c", NULL);
    g.stride_c = (int64_t)(m - 1) * ldc + n; /* separate matrices: fine */
    g.c = dmalloc((size_t)(g.stride_c * batch) * 4);
    ck_assert_msg(D->gemm(H, &g) == TP_OK, "separate batches refused: %s", last_msg());
    free(a);
    free(b);
    free(c);
    free(out);
    free(ref);
    free(mag);
    free_bufs();
}

START_TEST(t_gemm_interleaved)
{
    with_device(body_gemm_interleaved);
}
END_TEST

START_TEST(t_gemm_errors)
{
    with_device(body_gemm_errors);
}
END_TEST

/* -------------------------------------------------------- element-wise */

static void body_bias(void)
{
    for (int ir = 0; ir < NSIZES; ir++)
        for (int ic = 0; ic < NSIZES; ic++) {
            int rows = sizes[ir], cols = sizes[ic] * (ic == 3 ? 9 : 1); /* 297 > one block */
            size_t nn = (size_t)rows * cols;
            float *y = hrand(nn, 2.0), *bias = hrand(cols, 1.0), *out = hzalloc(nn);
            float *db0 = hrand(cols, 1.0), *db = hzalloc(cols);
            float *dy = dput(y, nn * 4), *dbias = dput(bias, cols * 4), *ddb = dput(db0, cols * 4);

            /* bias_add: one rounding. */
            ck_assert_msg(D->bias_add(H, TP_F32, rows, cols, dy, dbias) == TP_OK, "%s", last_msg());
            dget(out, dy, nn * 4);
            for (size_t i = 0; i < nn; i++)
                CLOSE(out[i], (double)y[i] + bias[i % cols],
                      U * fabs((double)y[i] + bias[i % cols]), "bias_add [%zu]", i);

            /* bias_grad accumulates onto db: rows + 1 terms, K = rows + 1. */
            ck_assert_msg(D->bias_grad(H, TP_F32, rows, cols, dput(y, nn * 4), ddb) == TP_OK, "%s",
                          last_msg());
            dget(db, ddb, cols * 4);
            for (int c = 0; c < cols; c++) {
                double s = db0[c], m = fabs(db0[c]);
                for (int r = 0; r < rows; r++)
                    s += y[r * cols + c], m += fabs(y[r * cols + c]);
                CLOSE(db[c], s, (rows + 1) * U * m, "bias_grad rows=%d cols=%d [%d]", rows, cols, c);
            }
            /* Deterministic: the same inputs give bitwise the same db. */
            {
                float *again = hzalloc(cols);
                void *d2 = dput(db0, cols * 4);
                ck_assert_int_eq(D->bias_grad(H, TP_F32, rows, cols, dput(y, nn * 4), d2), TP_OK);
                dget(again, d2, cols * 4);
                ck_assert_mem_eq(again, db, (size_t)cols * 4);
                free(again);
            }
            free(y), free(bias), free(out), free(db0), free(db);
            free_bufs();
        }
}

START_TEST(t_bias)
{
    with_device(body_bias);
}
END_TEST

static double gelu_ref(double x, int t)
{
    if (t)
        return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    return 0.5 * x * (1 + erf(x / sqrt(2.0)));
}

static double gelu_grad_ref(double x, int t)
{
    if (t) {
        double k = sqrt(2 / M_PI), th = tanh(k * (x + 0.044715 * x * x * x));
        return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * k * (1 + 3 * 0.044715 * x * x);
    }
    return 0.5 * (1 + erf(x / sqrt(2.0))) + x * exp(-0.5 * x * x) / sqrt(2 * M_PI);
}

static void body_gelu(void)
{
    enum { N = 1001 };
    float *x = hrand(N, 6.0), *dy = hrand(N, 1.0), *y = hzalloc(N), *dx = hzalloc(N);

    x[0] = 0.0f, x[1] = -0.0f, x[2] = 8.0f, x[3] = -8.0f, x[4] = 1e-20f;
    for (int t = 0; t < 2; t++) {
        void *dxv = dput(x, N * 4), *dyv = dmalloc(N * 4);

        ck_assert_msg(D->gelu(H, TP_F32, N, dxv, dyv, t) == TP_OK, "%s", last_msg());
        dget(y, dyv, N * 4);
        /* y = 0.5 x (1 + f), f = erf or tanh within 4 ulp of 1: the
         * absolute error of 1 + f is <= 6u, so |dy| <= 0.5|x| 6u plus 4 roundings of y. */
        for (int i = 0; i < N; i++)
            CLOSE(y[i], gelu_ref(x[i], t), 3 * U * fabs(x[i]) + 4 * U * fabs(gelu_ref(x[i], t)),
                  "gelu%s x=%g", t ? "(tanh)" : "", x[i]);

        /* gelu_bwd; then in place (dx aliases dy); y aliases x for gelu. */
        dyv = dput(dy, N * 4);
        ck_assert_msg(D->gelu_bwd(H, TP_F32, N, dxv, dyv, dmalloc(N * 4), t) == TP_OK, "%s",
                      last_msg());
        ck_assert_int_eq(D->gelu_bwd(H, TP_F32, N, dxv, dyv, dyv, t), TP_OK);
        dget(dx, dyv, N * 4);
        /* g' = 0.5(1 + f) + x phi(x)-like term: 1 + f as above (6u absolute),
         * the second term ~ |x| e^(-x^2/2) with ~8 roundings; times dy. */
        for (int i = 0; i < N; i++) {
            double g = gelu_grad_ref(x[i], t);
            CLOSE(dx[i], dy[i] * g, fabs(dy[i]) * (6 * U + 8 * U * (fabs(g) + 2 * fabs(x[i]))),
                  "gelu_bwd%s x=%g", t ? "(tanh)" : "", x[i]);
        }
        ck_assert_int_eq(D->gelu(H, TP_F32, N, dxv, dxv, t), TP_OK);
        dget(dx, dxv, N * 4);
        ck_assert_mem_eq(dx, y, N * 4); /* same kernel, same inputs: bitwise */
        free_bufs();
    }
    ck_assert_int_eq(D->gelu(H, TP_F32, 0, NULL, NULL, 0), TP_OK);
    free(x), free(dy), free(y), free(dx);
}

START_TEST(t_gelu)
{
    with_device(body_gelu);
}
END_TEST

static void body_axpby(void)
{
    static const float ab[][2] = {{1, 0}, {0.5f, 2}, {-3, -0.25f}, {0, 1}};
    enum { N = 33 };
    float *x = hrand(N, 1.0), *y = hrand(N, 1.0), *out = hzalloc(N);

    for (int t = 0; t < 4; t++) {
        float a = ab[t][0], b = ab[t][1];
        float *y0 = y;
        float nan_y[N];
        if (b == 0) { /* beta 0: y not read */
            for (int i = 0; i < N; i++)
                nan_y[i] = NAN;
            y0 = nan_y;
        }
        void *dy = dput(y0, N * 4);
        ck_assert_int_eq(D->axpby(H, TP_F32, N, a, dput(x, N * 4), b, dy), TP_OK);
        dget(out, dy, N * 4);
        /* two products and a sum: 3 roundings */
        for (int i = 0; i < N; i++) {
            double r = a * (double)x[i] + (b != 0 ? b * (double)y0[i] : 0);
            double m = fabs(a * (double)x[i]) + (b != 0 ? fabs(b * (double)y0[i]) : 0);
            CLOSE(out[i], r, 3 * U * m, "axpby a=%g b=%g [%d]", a, b, i);
        }
    }
    free(x), free(y), free(out);
}

START_TEST(t_axpby)
{
    with_device(body_axpby);
}
END_TEST

/* softmax(scale x) per row in double; causal keeps c <= r % cols. */
static void ref_softmax(int rows, int cols, const double *x, double scale, int causal, double *y)
{
    for (int r = 0; r < rows; r++) {
        int keep = causal ? r % cols + 1 : cols;
        double mx = -INFINITY, s = 0;
        for (int c = 0; c < keep; c++)
            mx = fmax(mx, scale * x[r * cols + c]);
        for (int c = 0; c < cols; c++) {
            y[r * cols + c] = c < keep ? exp(scale * x[r * cols + c] - mx) : 0;
            s += y[r * cols + c];
        }
        for (int c = 0; c < cols; c++)
            y[r * cols + c] /= s;
    }
}

static void body_softmax(void)
{
    static const float scales[] = {1.0f, 0.125f, -0.7f};
    for (int ir = 0; ir < NSIZES; ir++)
        for (int ic = 0; ic < NSIZES; ic++)
            for (int is = 0; is < 3; is++)
                for (int causal = 0; causal < 2; causal++) {
                    int rows = sizes[ir] + (causal ? sizes[ic] : 0), cols = sizes[ic];
                    size_t nn = (size_t)rows * cols;
                    float sc = scales[is];
                    float *x = hrand(nn, 4.0), *dy = hrand(nn, 1.0), *y = hzalloc(nn),
                          *dx = hzalloc(nn);
                    double *xd = dzalloc(nn), *yr = dzalloc(nn);
                    void *dxv = dput(x, nn * 4), *dyv = dmalloc(nn * 4), *ddy = dput(dy, nn * 4);

                    for (size_t i = 0; i < nn; i++)
                        xd[i] = x[i];
                    ref_softmax(rows, cols, xd, sc, causal, yr);
                    ck_assert_msg(D->softmax(H, TP_F32, rows, cols, dxv, dyv, sc, causal) == TP_OK,
                                  "%s", last_msg());
                    dget(y, dyv, nn * 4);
                    /* exp's argument s x - max is off by <= 2u(|s x| + |max|) <= 4u|s|4
                     * absolute, i.e. that much relative in each exp (plus 4 ulp of expf);
                     * the row sum adds (cols - 1)u; the divide 1u. Masked entries are 0. */
                    for (size_t i = 0; i < nn; i++)
                        CLOSE(y[i], yr[i], yr[i] * U * (cols + 8 + 32 * fabs(sc)),
                              "softmax rows=%d cols=%d scale=%g causal=%d [%zu]", rows, cols, sc,
                              causal, i);

                    /* backward from the device's y, then in place (dx aliases dy) */
                    ck_assert_int_eq(D->softmax_bwd(H, TP_F32, rows, cols, dyv, ddy, ddy, sc),
                                     TP_OK);
                    dget(dx, ddy, nn * 4);
                    for (int r = 0; r < rows; r++) {
                        double dot = 0, mag = 0;
                        for (int c = 0; c < cols; c++) {
                            dot += (double)dy[r * cols + c] * y[r * cols + c];
                            mag += fabs((double)dy[r * cols + c] * y[r * cols + c]);
                        }
                        for (int c = 0; c < cols; c++) {
                            size_t i = (size_t)r * cols + c;
                            double ref = sc * (double)y[i] * (dy[i] - dot);
                            /* dot: cols u sum|dy y|; then a difference and two products */
                            double tol = fabs(sc * y[i]) *
                                         ((cols + 4) * U * mag + 4 * U * (fabs(dy[i]) + fabs(dot)));
                            CLOSE(dx[i], ref, tol, "softmax_bwd rows=%d cols=%d [%d,%d]", rows,
                                  cols, r, c);
                        }
                    }
                    free(x), free(dy), free(y), free(dx), free(xd), free(yr);
                    free_bufs();
                }
    ck_assert_int_eq(D->softmax(H, TP_F32, 0, 5, NULL, NULL, 1.0f, 1), TP_OK);
    ck_assert_int_eq(D->softmax(H, TP_F32, 4, 0, NULL, NULL, 1.0f, 1), TP_OK);
}

START_TEST(t_softmax)
{
    with_device(body_softmax);
}
END_TEST

/* LayerNorm / RMSNorm forward in double; mean/rstd out. */
static void ref_norm(int rows, int cols, const double *x, const double *g, const double *b,
                     double eps, int rms, double *y, double *mean, double *rstd)
{
    for (int r = 0; r < rows; r++) {
        const double *xr = x + (size_t)r * cols;
        double mu = 0, v = 0;
        if (!rms) {
            for (int c = 0; c < cols; c++)
                mu += xr[c];
            mu /= cols;
        }
        for (int c = 0; c < cols; c++)
            v += (xr[c] - mu) * (xr[c] - mu);
        double rs = 1 / sqrt(v / cols + eps);
        for (int c = 0; c < cols; c++)
            y[(size_t)r * cols + c] = (xr[c] - mu) * rs * g[c] + (b ? b[c] : 0);
        if (mean)
            mean[r] = mu;
        if (rstd)
            rstd[r] = rs;
    }
}

static void body_norm(void)
{
    const float eps = 1e-5f;
    for (int ir = 0; ir < NSIZES; ir++)
        for (int ic = 0; ic < NSIZES; ic++)
            for (int rms = 0; rms < 2; rms++)
                for (int hasb = 0; hasb < 2; hasb++) {
                    int rows = sizes[ir], cols = sizes[ic] * (ic == 3 ? 9 : 1);
                    size_t nn = (size_t)rows * cols;
                    float *x = hrand(nn, 3.0), *g = hrand(cols, 1.5), *b = hrand(cols, 1.0);
                    float *dy = hrand(nn, 1.0), *dg0 = hrand(cols, 1.0), *db0 = hrand(cols, 1.0);
                    float *y = hzalloc(nn), *mu = hzalloc(rows), *rs = hzalloc(rows);
                    float *dx = hzalloc(nn), *dg = hzalloc(cols), *db = hzalloc(cols);
                    double *xd = dzalloc(nn), *gd = dzalloc(cols), *bd = dzalloc(cols);
                    double *yr = dzalloc(nn), *mr = dzalloc(rows), *rr = dzalloc(rows);
                    void *vx, *vy, *vmu, *vrs, *vdy, *vdx, *vdg, *vdb;

                    for (int r = 0; r < rows; r++) /* an offset mean: tests cancellation */
                        for (int c = 0; c < cols; c++)
                            x[r * cols + c] += (float)(r % 3);
                    for (size_t i = 0; i < nn; i++)
                        xd[i] = x[i];
                    for (int c = 0; c < cols; c++)
                        gd[c] = g[c], bd[c] = b[c];
                    ref_norm(rows, cols, xd, gd, hasb ? bd : NULL, eps, rms, yr, mr, rr);
                    vx = dput(x, nn * 4);
                    vy = dmalloc(nn * 4);
                    vmu = rms ? NULL : dmalloc(rows * 4);
                    vrs = dmalloc(rows * 4);
                    ck_assert_msg(D->norm(H, TP_F32, rows, cols, vx, dput(g, cols * 4),
                                          hasb ? dput(b, cols * 4) : NULL, vy, vmu, vrs, eps,
                                          rms) == TP_OK,
                                  "%s", last_msg());
                    dget(y, vy, nn * 4);
                    dget(rs, vrs, rows * 4);
                    if (!rms)
                        dget(mu, vmu, rows * 4);
                    for (int r = 0; r < rows; r++) {
                        double mx = 0;
                        for (int c = 0; c < cols; c++)
                            mx = fmax(mx, fabs(xd[r * cols + c]));
                        /* statistics: sums of cols terms, then sqrt and divide */
                        if (!rms)
                            CLOSE(mu[r], mr[r], (cols + 2) * U * mx, "norm mean [%d]", r);
                        CLOSE(rs[r], rr[r], (cols + 8) * U * rr[r], "norm%s rstd [%d]",
                              rms ? "(rms)" : "", r);
                        for (int c = 0; c < cols; c++) {
                            size_t i = (size_t)r * cols + c;
                            /* (x - mu) carries mu's error (cols+2)u mx; rstd (cols+8)u
                             * relative; three more roundings with gamma and beta. */
                            double tol = fabs(g[c]) * rr[r] *
                                             ((cols + 2) * U * mx +
                                              (cols + 12) * U * fabs(xd[i] - mr[r])) +
                                         2 * U * fabs(yr[i]) + (hasb ? U * fabs(b[c]) : 0);
                            CLOSE(y[i], yr[i], tol, "norm%s rows=%d cols=%d beta=%d [%d,%d]",
                                  rms ? "(rms)" : "", rows, cols, hasb, r, c);
                        }
                    }

                    /* backward with the device's own statistics; dx in place over dy */
                    vdy = dput(dy, nn * 4);
                    vdx = vdy;
                    vdg = dput(dg0, cols * 4);
                    vdb = hasb ? dput(db0, cols * 4) : NULL;
                    ck_assert_msg(D->norm_bwd(H, TP_F32, rows, cols, vx, dput(g, cols * 4), vmu,
                                              vrs, vdy, vdx, vdg, vdb, rms) == TP_OK,
                                  "%s", last_msg());
                    dget(dx, vdx, nn * 4);
                    dget(dg, vdg, cols * 4);
                    if (hasb)
                        dget(db, vdb, cols * 4);
                    for (int r = 0; r < rows; r++) {
                        double m = rms ? 0 : mu[r], s = rs[r], sg = 0, sgx = 0, ag = 0, agx = 0;
                        for (int c = 0; c < cols; c++) {
                            double gc = (double)dy[r * cols + c] * g[c];
                            double xh = (x[r * cols + c] - m) * s;
                            sg += gc, sgx += gc * xh, ag += fabs(gc), agx += fabs(gc * xh);
                        }
                        for (int c = 0; c < cols; c++) {
                            size_t i = (size_t)r * cols + c;
                            double gc = (double)dy[i] * g[c], xh = (x[i] - m) * s;
                            double ref = s * (gc - (rms ? 0 : sg / cols) - xh * sgx / cols);
                            /* the two row means are sums of cols terms; xhat has a few
                             * roundings (its cancellation x - mean is exact-ish in f32) */
                            double tol = s * ((cols + 8) * U * (fabs(gc) + ag / cols +
                                                                fabs(xh) * agx / cols) +
                                              8 * U * fabs(xh) * fabs(sgx) / cols);
                            CLOSE(dx[i], ref, tol, "norm_bwd%s dx rows=%d cols=%d [%d,%d]",
                                  rms ? "(rms)" : "", rows, cols, r, c);
                        }
                    }
                    for (int c = 0; c < cols; c++) {
                        double sgm = dg0[c], mgm = fabs(dg0[c]), sb = db0[c], mb = fabs(db0[c]);
                        for (int r = 0; r < rows; r++) {
                            double xh = (x[r * cols + c] - (rms ? 0 : mu[r])) * (double)rs[r];
                            sgm += dy[r * cols + c] * xh, mgm += fabs(dy[r * cols + c] * xh);
                            sb += dy[r * cols + c], mb += fabs(dy[r * cols + c]);
                        }
                        /* rows + 1 terms, each with ~4 roundings of its own */
                        CLOSE(dg[c], sgm, (rows + 5) * U * mgm, "norm_bwd dgamma [%d]", c);
                        if (hasb)
                            CLOSE(db[c], sb, (rows + 1) * U * mb, "norm_bwd dbeta [%d]", c);
                    }
                    free(x), free(g), free(b), free(dy), free(dg0), free(db0), free(y), free(mu);
                    free(rs), free(dx), free(dg), free(db), free(xd), free(gd), free(bd);
                    free(yr), free(mr), free(rr);
                    free_bufs();
                }
}

START_TEST(t_norm)
{
    with_device(body_norm);
}
END_TEST

static void body_embedding(void)
{
    enum { N = 17, DIM = 13, LO = 5, HI = 16 };
    int32_t ids[N];
    float *table = hrand((HI - LO) * DIM, 1.0), *out = hzalloc(N * DIM);
    float *dout = hrand(N * DIM, 1.0), *dt0 = hrand((HI - LO) * DIM, 1.0);
    float *dt = hzalloc((HI - LO) * DIM);
    double *ref = dzalloc((HI - LO) * DIM), *mag = dzalloc((HI - LO) * DIM);
    int32_t *vids;
    void *vout, *vdt;

    for (int i = 0; i < N; i++) /* ids below, inside (with repeats) and above the shard */
        ids[i] = (int32_t)((i * 7) % 23) - 2;
    ids[0] = -100, ids[1] = LO, ids[2] = HI - 1, ids[3] = HI, ids[4] = LO, ids[5] = INT32_MAX;
    vids = dput(ids, sizeof ids);
    vout = dput(dout, N * DIM * 4); /* junk that must be overwritten */
    ck_assert_msg(D->embedding(H, TP_F32, N, DIM, vids, LO, HI, dput(table, (HI - LO) * DIM * 4),
                               vout) == TP_OK, "%s", last_msg());
    dget(out, vout, N * DIM * 4);
    for (int i = 0; i < N; i++)
        for (int c = 0; c < DIM; c++) {
            float want = ids[i] >= LO && ids[i] < HI ? table[(ids[i] - LO) * DIM + c] : 0.0f;
            ck_assert_msg(out[i * DIM + c] == want, "embedding id %d [%d,%d]", ids[i], i, c);
        }

    vdt = dput(dt0, (HI - LO) * DIM * 4);
    ck_assert_msg(D->embedding_bwd(H, TP_F32, N, DIM, vids, LO, HI, dput(dout, N * DIM * 4),
                                   vdt) == TP_OK, "%s", last_msg());
    dget(dt, vdt, (HI - LO) * DIM * 4);
    for (int j = 0; j < (HI - LO) * DIM; j++)
        ref[j] = dt0[j], mag[j] = fabs(dt0[j]);
    for (int i = 0; i < N; i++)
        if (ids[i] >= LO && ids[i] < HI)
            for (int c = 0; c < DIM; c++) {
                ref[(ids[i] - LO) * DIM + c] += dout[i * DIM + c];
                mag[(ids[i] - LO) * DIM + c] += fabs(dout[i * DIM + c]);
            }
    /* a row gets at most N additions */
    for (int j = 0; j < (HI - LO) * DIM; j++)
        CLOSE(dt[j], ref[j], N * U * mag[j], "embedding_bwd dtable[%d]", j);
    /* Sums in ascending token order: rerunning gives bitwise the same table. */
    {
        float *again = hzalloc((HI - LO) * DIM);
        void *v2 = dput(dt0, (HI - LO) * DIM * 4);
        ck_assert_int_eq(D->embedding_bwd(H, TP_F32, N, DIM, vids, LO, HI,
                                          dput(dout, N * DIM * 4), v2), TP_OK);
        dget(again, v2, (HI - LO) * DIM * 4);
        ck_assert_mem_eq(again, dt, (HI - LO) * DIM * 4);
        free(again);
    }
    /* An empty shard (lo == hi) zeroes every row. */
    ck_assert_int_eq(D->embedding(H, TP_F32, N, DIM, vids, 3, 3, NULL, vout), TP_OK);
    dget(out, vout, N * DIM * 4);
    for (int i = 0; i < N * DIM; i++)
        ck_assert_float_eq(out[i], 0.0f);
    free(table), free(out), free(dout), free(dt0), free(dt), free(ref), free(mag);
}

START_TEST(t_embedding)
{
    with_device(body_embedding);
}
END_TEST

static void body_ce(void)
{
    for (int ir = 0; ir < NSIZES; ir++)
        for (int ic = 0; ic < NSIZES; ic++) {
            int rows = sizes[ir], cols = sizes[ic] * (ic == 3 ? 31 : 1); /* up to 1023 */
            int64_t lo = 7, vocab = cols + 20;
            size_t nn = (size_t)rows * cols;
            float *x = hrand(nn, 8.0), *mx = hzalloc(rows), *st = hzalloc(3 * rows);
            float *scale = hzalloc(rows), *dx = hzalloc(nn);
            int32_t *t = malloc(rows * sizeof *t);
            void *vx = dput(x, nn * 4), *vmx = dmalloc(rows * 4), *vst = dmalloc(rows * 12);
            void *vt, *vse, *vdx;

            ck_assert_ptr_nonnull(t);
            for (int r = 0; r < rows; r++) {
                /* targets in the shard, before it, after it, and ignored (-100) */
                t[r] = (int32_t)(r % 4 == 0 ? lo + (r * 5) % cols : r % 4 == 1 ? 2 :
                                 r % 4 == 2 ? lo + cols : -100);
                scale[r] = r % 4 == 3 ? 0.0f : 1.0f / (float)(r + 1);
            }
            vt = dput(t, rows * 4);
            ck_assert_msg(D->row_max(H, TP_F32, rows, cols, vx, vmx) == TP_OK, "%s", last_msg());
            dget(mx, vmx, rows * 4);
            ck_assert_msg(D->ce_stats(H, TP_F32, rows, cols, vx, vt, lo, vmx, vst) == TP_OK,
                          "%s", last_msg());
            dget(st, vst, rows * 12);
            for (int r = 0; r < rows; r++) {
                const float *xr = x + (size_t)r * cols;
                double m = -INFINITY, se = 0, sx = 0, ax = 0;
                for (int c = 0; c < cols; c++)
                    m = fmax(m, xr[c]);
                ck_assert_msg(mx[r] == (float)m, "row_max [%d]: %g vs %g", r, mx[r], m);
                for (int c = 0; c < cols; c++)
                    se += exp((double)xr[c] - m), sx += xr[c], ax += fabs(xr[c]);
                /* positive terms: (cols - 1)u relative for the sum, 4 ulp of expf,
                 * and x - max rounds by u|x - max| <= u (max - min) absolute, which
                 * exp turns into relative error */
                double spread = 0;
                for (int c = 0; c < cols; c++)
                    spread = fmax(spread, m - xr[c]);
                CLOSE(st[3 * r], se, (cols + 6 + 2 * spread) * U * se,
                      "ce_stats sumexp rows=%d cols=%d [%d]",
                      rows, cols, r);
                ck_assert_float_eq(st[3 * r + 1],
                                   t[r] >= lo && t[r] < lo + cols ? xr[t[r] - lo] : 0.0f);
                CLOSE(st[3 * r + 2], sx, cols * U * ax, "ce_stats sum x [%d]", r);
            }
            for (int sm = 0; sm < 2; sm++) {
                float s = sm ? 0.1f : 0.0f;
                float se[33 + 33]; /* rows <= 33 + 33 */
                for (int r = 0; r < rows; r++)
                    se[r] = st[3 * r];
                vse = dput(se, rows * 4);
                vdx = dput(x, nn * 4); /* junk to overwrite */
                ck_assert_msg(D->ce_bwd(H, TP_F32, rows, cols, vx, vt, lo, vocab, vmx, vse,
                                        dput(scale, rows * 4), s, vdx) == TP_OK,
                              "%s", last_msg());
                dget(dx, vdx, nn * 4);
                for (int r = 0; r < rows; r++)
                    for (int c = 0; c < cols; c++) {
                        double p = exp((double)x[r * cols + c] - mx[r]) / se[r];
                        double hot = (t[r] - lo == c) ? 1.0 - s : 0.0;
                        double ref = scale[r] * (p - hot - (double)s / vocab);
                        /* p: x - max rounds by u|x - max| absolute, which exp turns
                         * into that much relative error; expf 4 ulp, the divide 1u
                         * (sumexp's own error is the device's ce_stats output, used
                         * as is); then two subtractions and the scale: 4u of each term */
                        double arg = fabs((double)x[r * cols + c] - mx[r]);
                        double tol = fabs(scale[r]) * U *
                                     (p * (8 + 2 * arg) + 4 * (hot + s / (double)vocab));
                        CLOSE(dx[r * cols + c], ref, tol, "ce_bwd s=%g rows=%d cols=%d [%d,%d]",
                              s, rows, cols, r, c);
                        if (scale[r] == 0.0f) /* ignored rows: exactly 0, not 0 * NaN */
                            ck_assert_msg(dx[r * cols + c] == 0.0f, "ce_bwd ignored row %d", r);
                    }
            }
            free(x), free(mx), free(st), free(scale), free(dx), free(t);
            free_bufs();
        }
}

START_TEST(t_ce)
{
    with_device(body_ce);
}
END_TEST

static void body_adamw(void)
{
    enum { N = 37 };
    float *p = hrand(N, 1.0), *g = hrand(N, 0.1), *m = hrand(N, 0.01), *v = hzalloc(N);
    float *po = hzalloc(N), *mo = hzalloc(N), *vo = hzalloc(N);
    const float lr = 1e-3f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.01f;
    void *vp, *vg, *vm, *vv;

    for (int i = 0; i < N; i++)
        v[i] = (float)(1e-4 * (1 + urand()));
    g[0] = 0.0f, m[0] = 0.0f, v[0] = 0.0f; /* a zero gradient: p only decays */
    vp = dput(p, N * 4), vg = dput(g, N * 4), vm = dput(m, N * 4), vv = dput(v, N * 4);
    for (int64_t step = 1; step <= 3; step++) {
        ck_assert_msg(D->adamw(H, N, vp, vg, vm, vv, lr, b1, b2, eps, wd, step) == TP_OK, "%s",
                      last_msg());
        dget(po, vp, N * 4), dget(mo, vm, N * 4), dget(vo, vv, N * 4);
        for (int i = 0; i < N; i++) {
            /* PyTorch AdamW, in double, from this step's f32 inputs */
            double pd = p[i] * (1 - (double)lr * wd);
            double md = b1 * (double)m[i] + (1 - (double)b1) * g[i];
            double vd = b2 * (double)v[i] + (1 - (double)b2) * (double)g[i] * g[i];
            double bc1 = 1 - pow(b1, (double)step), bc2 = 1 - pow(b2, (double)step);
            double upd = lr / bc1 * md / (sqrt(vd) / sqrt(bc2) + eps);
            /* moments: 3 roundings each; the update: ~10 roundings on its size */
            CLOSE(mo[i], md, 4 * U * (fabs(b1 * m[i]) + fabs(g[i])), "adamw m [%d] step %ld", i,
                  (long)step);
            CLOSE(vo[i], vd, 4 * U * (fabs(b2 * v[i]) + (double)g[i] * g[i]), "adamw v [%d]", i);
            CLOSE(po[i], pd - upd, 2 * U * fabs(pd) + 16 * U * fabs(upd), "adamw p [%d] step %ld",
                  i, (long)step);
            p[i] = po[i], m[i] = mo[i], v[i] = vo[i];
        }
    }
    expect_err(D->adamw(H, N, vp, vg, vm, vv, lr, b1, b2, eps, wd, 0), TP_ERR_INVALID_ARG,
               "adamw step 0", "step", NULL);
    free(p), free(g), free(m), free(v), free(po), free(mo), free(vo);
}

START_TEST(t_adamw)
{
    with_device(body_adamw);
}
END_TEST

/* ------------------------------------------------- finite differences */

/* Central differences in double of a scalar loss of the inputs, compared to
 * the device's f32 gradient. h = 1e-5 makes truncation ~h^2 f''' ~ 1e-10
 * and rounding ~1e-16/h ~ 1e-11, so the difference is the device's f32
 * error: a few hundred u of the gradient's magnitude scale on these tiny
 * sizes; we allow 1e-4 of that scale, still far below any formula error. */
#define FD_H 1e-5
#define FD_TOL 1e-4

static double loss_gelu(const double *x, const double *w, int n, int t)
{
    double l = 0;
    for (int i = 0; i < n; i++)
        l += w[i] * gelu_ref(x[i], t);
    return l;
}

static void body_fd_gelu(void)
{
    enum { N = 13 };
    float *x = hrand(N, 3.0), *w = hrand(N, 1.0), *dx = hzalloc(N);
    double xd[N], wd[N];

    for (int i = 0; i < N; i++)
        xd[i] = x[i], wd[i] = w[i];
    for (int t = 0; t < 2; t++) {
        void *vdx = dmalloc(N * 4);
        ck_assert_int_eq(D->gelu_bwd(H, TP_F32, N, dput(x, N * 4), dput(w, N * 4), vdx, t), TP_OK);
        dget(dx, vdx, N * 4);
        for (int i = 0; i < N; i++) {
            double s = xd[i], fd;
            xd[i] = s + FD_H;
            fd = loss_gelu(xd, wd, N, t);
            xd[i] = s - FD_H;
            fd = (fd - loss_gelu(xd, wd, N, t)) / (2 * FD_H);
            xd[i] = s;
            CLOSE(dx[i], fd, FD_TOL * (fabs(w[i]) + 1e-3), "gelu%s fd [%d]", t ? "(tanh)" : "", i);
        }
    }
    free(x), free(w), free(dx);
}

START_TEST(t_fd_gelu)
{
    with_device(body_fd_gelu);
}
END_TEST

static void body_fd_softmax(void)
{
    enum { R = 5, C = 4 };
    const float sc = 0.7f;
    for (int causal = 0; causal < 2; causal++) {
        float *x = hrand(R * C, 2.0), *w = hrand(R * C, 1.0), *dx = hzalloc(R * C);
        double xd[R * C], y[R * C];
        void *vy = dmalloc(R * C * 4), *vdx = dmalloc(R * C * 4);

        for (int i = 0; i < R * C; i++)
            xd[i] = x[i];
        ck_assert_int_eq(D->softmax(H, TP_F32, R, C, dput(x, R * C * 4), vy, sc, causal), TP_OK);
        ck_assert_int_eq(D->softmax_bwd(H, TP_F32, R, C, vy, dput(w, R * C * 4), vdx, sc), TP_OK);
        dget(dx, vdx, R * C * 4);
        for (int i = 0; i < R * C; i++) {
            double s = xd[i], lp = 0, lm = 0;
            xd[i] = s + FD_H;
            ref_softmax(R, C, xd, sc, causal, y);
            for (int j = 0; j < R * C; j++)
                lp += w[j] * y[j];
            xd[i] = s - FD_H;
            ref_softmax(R, C, xd, sc, causal, y);
            for (int j = 0; j < R * C; j++)
                lm += w[j] * y[j];
            xd[i] = s;
            CLOSE(dx[i], (lp - lm) / (2 * FD_H), FD_TOL, "softmax fd causal=%d [%d]", causal, i);
        }
        free(x), free(w), free(dx);
        free_bufs();
    }
}

START_TEST(t_fd_softmax)
{
    with_device(body_fd_softmax);
}
END_TEST

static double loss_norm(int rows, int cols, const double *x, const double *g, const double *b,
                        int rms, const double *w)
{
    double y[64], l = 0;
    ref_norm(rows, cols, x, g, b, 1e-5, rms, y, NULL, NULL);
    for (int i = 0; i < rows * cols; i++)
        l += w[i] * y[i];
    return l;
}

static void body_fd_norm(void)
{
    enum { R = 3, C = 7 };
    for (int rms = 0; rms < 2; rms++) {
        float *x = hrand(R * C, 2.0), *g = hrand(C, 1.5), *b = hrand(C, 1.0), *w = hrand(R * C, 1.0);
        float dx[R * C], dg[C], db[C];
        double xd[R * C], gd[C], bd[C], wd[R * C];
        void *vx = dput(x, R * C * 4), *vg = dput(g, C * 4), *vmu = dmalloc(R * 4),
             *vrs = dmalloc(R * 4), *vdx = dmalloc(R * C * 4), *vdg, *vdb;
        double *vars[3] = {xd, gd, bd};
        float *grads[3] = {dx, dg, db};
        int lens[3] = {R * C, C, C};

        for (int i = 0; i < R * C; i++)
            xd[i] = x[i], wd[i] = w[i];
        for (int c = 0; c < C; c++)
            gd[c] = g[c], bd[c] = b[c], dg[c] = db[c] = 0;
        vdg = dput(dg, C * 4), vdb = dput(db, C * 4);
        ck_assert_int_eq(D->norm(H, TP_F32, R, C, vx, vg, dput(b, C * 4), dmalloc(R * C * 4),
                                 rms ? NULL : vmu, vrs, 1e-5f, rms), TP_OK);
        ck_assert_int_eq(D->norm_bwd(H, TP_F32, R, C, vx, vg, rms ? NULL : vmu, vrs,
                                     dput(w, R * C * 4), vdx, vdg, vdb, rms), TP_OK);
        dget(dx, vdx, sizeof dx), dget(dg, vdg, sizeof dg), dget(db, vdb, sizeof db);
        for (int v = 0; v < 3; v++)
            for (int i = 0; i < lens[v]; i++) {
                double s = vars[v][i], lp, lm;
                vars[v][i] = s + FD_H;
                lp = loss_norm(R, C, xd, gd, bd, rms, wd);
                vars[v][i] = s - FD_H;
                lm = loss_norm(R, C, xd, gd, bd, rms, wd);
                vars[v][i] = s;
                CLOSE(grads[v][i], (lp - lm) / (2 * FD_H), FD_TOL * 4,
                      "norm%s fd d%s[%d]", rms ? "(rms)" : "", v == 0 ? "x" : v == 1 ? "gamma" : "beta",
                      i);
            }
        free(x), free(g), free(b), free(w);
        free_bufs();
    }
}

START_TEST(t_fd_norm)
{
    with_device(body_fd_norm);
}
END_TEST

/* Vocab-parallel CE over one shard that holds the whole vocabulary:
 * loss_r = scale_r (log sum exp x - (1-s) x_t - s/V sum x). */
static double loss_ce(int rows, int cols, const double *x, const int32_t *t, const float *scale,
                      double s)
{
    double l = 0;
    for (int r = 0; r < rows; r++) {
        double m = -INFINITY, se = 0, sx = 0;
        for (int c = 0; c < cols; c++)
            m = fmax(m, x[r * cols + c]);
        for (int c = 0; c < cols; c++)
            se += exp(x[r * cols + c] - m), sx += x[r * cols + c];
        double xt = t[r] >= 0 && t[r] < cols ? x[r * cols + t[r]] : 0;
        l += scale[r] * (m + log(se) - (1 - s) * xt - s / cols * sx);
    }
    return l;
}

static void body_fd_ce(void)
{
    enum { R = 4, C = 9 };
    int32_t t[R] = {3, 0, -100, 8};
    float scale[R] = {0.25f, 0.5f, 0.0f, 0.25f};
    float *x = hrand(R * C, 3.0), dx[R * C], st[3 * R], se[R];
    double xd[R * C];
    void *vx = dput(x, sizeof(float) * R * C), *vt = dput(t, sizeof t), *vmx = dmalloc(R * 4),
         *vst = dmalloc(R * 12), *vdx = dmalloc(R * C * 4);

    for (int i = 0; i < R * C; i++)
        xd[i] = x[i];
    ck_assert_int_eq(D->row_max(H, TP_F32, R, C, vx, vmx), TP_OK);
    ck_assert_int_eq(D->ce_stats(H, TP_F32, R, C, vx, vt, 0, vmx, vst), TP_OK);
    dget(st, vst, sizeof st);
    for (int r = 0; r < R; r++)
        se[r] = st[3 * r];
    for (int sm = 0; sm < 2; sm++) {
        double s = sm ? 0.2 : 0.0;
        ck_assert_int_eq(D->ce_bwd(H, TP_F32, R, C, vx, vt, 0, C, vmx, dput(se, sizeof se),
                                   dput(scale, sizeof scale), (float)s, vdx), TP_OK);
        dget(dx, vdx, sizeof dx);
        for (int i = 0; i < R * C; i++) {
            double v = xd[i], lp, lm;
            xd[i] = v + FD_H;
            lp = loss_ce(R, C, xd, t, scale, s);
            xd[i] = v - FD_H;
            lm = loss_ce(R, C, xd, t, scale, s);
            xd[i] = v;
            CLOSE(dx[i], (lp - lm) / (2 * FD_H), FD_TOL, "ce fd s=%g [%d]", s, i);
        }
    }
    free(x);
}

START_TEST(t_fd_ce)
{
    with_device(body_fd_ce);
}
END_TEST

/* ------------------------------------------------------ bf16 and f16 */

/* A device either computes an op on bf16/f16 storage (f32 inside) or
 * refuses with TP_ERR_NOT_SUPPORTED naming the op and the dtype (the cpu
 * ops computed in f32 only). Where it computes, we check the low-precision
 * run against the same op run in f32 on the same (already rounded) values,
 * which the f32 tests above checked against the references: both do the
 * same f32 arithmetic, so they differ by the final rounding to the dtype
 * (u_dt |v|, u_bf16 = 2^-8, u_f16 = 2^-11, plus 2^-25 for f16 subnormals)
 * and by the compiler contracting a*b+c into FMAs differently per storage
 * type, each bounded like the f32 error: K u S with K = 4 (len + 16) and S
 * the largest magnitude among the op's inputs and outputs. */

static size_t dt_size(tp_dtype dt)
{
    return dt == TP_F32 ? 4 : 2;
}

static uint16_t f2bf(float f)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    if ((b & 0x7fffffffu) > 0x7f800000u)
        return 0x7fc0;
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16); /* nearest, ties to even */
}

static float bf2f(uint16_t h)
{
    uint32_t b = (uint32_t)h << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static void enc(tp_dtype dt, const float *x, void *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (dt == TP_F32)
            ((float *)out)[i] = x[i];
        else if (dt == TP_BF16)
            ((uint16_t *)out)[i] = f2bf(x[i]);
        else
            ((_Float16 *)out)[i] = (_Float16)x[i];
    }
}

static void dec(tp_dtype dt, const void *in, float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (dt == TP_F32)
            x[i] = ((const float *)in)[i];
        else if (dt == TP_BF16)
            x[i] = bf2f(((const uint16_t *)in)[i]);
        else
            x[i] = (float)((const _Float16 *)in)[i];
    }
}

static void round_to(tp_dtype dt, float *x, size_t n)
{
    void *tmp = malloc(n * 4 + 4);
    ck_assert_ptr_nonnull(tmp);
    enc(dt, x, tmp, n);
    dec(dt, tmp, x, n);
    free(tmp);
}

/* One buffer of a low-precision op: `typed` buffers have the op's dtype,
 * the others (ids, row statistics) keep their own type (raw bytes). */
typedef struct lp_buf {
    int typed, is_out;
    size_t n;          /* elements */
    float *init;       /* typed or raw f32: initial values (rounded in place if typed) */
    const void *raw;   /* raw non-float (ids): bytes n * 4 */
    void *dev;         /* set for the callback */
} lp_buf;

#define LB(typed, out, n, init) {typed, out, n, init, NULL, NULL}
#define LI(n, ids) {0, 0, n, NULL, ids, NULL}

typedef tp_status (*lp_fn)(tp_dtype dt, lp_buf *b, int64_t len);

/* Run fn in f32 and in dt over the same values; compare outputs. */
static void lp_compare(const char *op, tp_dtype dt, lp_fn fn, lp_buf *b, int nb, int64_t len)
{
    float *out32[8] = {0}, *outdt[8] = {0};
    double smax = 0;
    double udt = dt == TP_BF16 ? 1.0 / 256 : 1.0 / 2048, floor = dt == TP_F16 ? 0x1p-25 : 0;
    tp_status st;

    ck_assert_int_le(nb, 8);
    for (int i = 0; i < nb; i++)
        if (b[i].typed)
            round_to(dt, b[i].init, b[i].n);
    for (int pass = 0; pass < 2; pass++) {
        tp_dtype t = pass == 0 ? TP_F32 : dt;
        for (int i = 0; i < nb; i++) {
            size_t bytes = b[i].n * (b[i].typed ? dt_size(t) : 4);
            void *h = malloc(bytes + 4);
            ck_assert_ptr_nonnull(h);
            if (b[i].raw)
                memcpy(h, b[i].raw, bytes);
            else if (b[i].typed)
                enc(t, b[i].init, h, b[i].n);
            else
                memcpy(h, b[i].init, bytes);
            b[i].dev = dput(h, bytes);
            free(h);
        }
        st = fn(t, b, len);
        if (pass == 1 && st == TP_ERR_NOT_SUPPORTED) {
            /* not computed in this dtype: the message must say what and which */
            char first[32];
            snprintf(first, sizeof first, "%.*s", (int)strcspn(op, "/"), op);
            ck_assert_msg(strstr(last_msg(), first) &&
                              strstr(last_msg(), dt == TP_BF16 ? "bf16" : "f16"),
                          "%s %s: refusal does not name op and dtype: %s", op,
                          dt == TP_BF16 ? "bf16" : "f16", last_msg());
            clear_msg();
            goto done;
        }
        ck_assert_msg(st == TP_OK, "%s (%s): %s", op, pass ? "low precision" : "f32", last_msg());
        for (int i = 0; i < nb; i++) {
            size_t bytes = b[i].n * (b[i].typed ? dt_size(t) : 4);
            void *h;
            float **o = pass == 0 ? &out32[i] : &outdt[i];
            if (!b[i].is_out)
                continue;
            h = malloc(bytes + 4);
            *o = hzalloc(b[i].n);
            ck_assert_ptr_nonnull(h);
            dget(h, b[i].dev, bytes);
            if (b[i].typed)
                dec(t, h, *o, b[i].n);
            else
                memcpy(*o, h, bytes);
            free(h);
        }
    }
    for (int i = 0; i < nb; i++) {
        for (size_t j = 0; b[i].init && j < b[i].n; j++)
            smax = fmax(smax, fabs(b[i].init[j]));
        for (size_t j = 0; out32[i] && j < b[i].n; j++)
            smax = fmax(smax, fabs(out32[i][j]));
    }
    for (int i = 0; i < nb; i++)
        for (size_t j = 0; out32[i] && j < b[i].n; j++) {
            double v = out32[i][j];
            double tol = (b[i].typed ? udt * fabs(v) + floor : 0) + 4.0 * (len + 16) * U * smax;
            CLOSE(outdt[i][j], v, tol, "%s %s output %d [%zu]", op, dt == TP_BF16 ? "bf16" : "f16",
                  i, j);
        }
done:
    for (int i = 0; i < nb; i++)
        free(out32[i]), free(outdt[i]);
    free_bufs();
}

enum { LR = 13, LC = 33 };

static tp_status lp_bias(tp_dtype dt, lp_buf *b, int64_t len)
{
    tp_status st = D->bias_add(H, dt, LR, LC, b[0].dev, b[1].dev);
    return st ? st : D->bias_grad(H, dt, LR, LC, b[2].dev, b[3].dev);
}
static tp_status lp_gelu(tp_dtype dt, lp_buf *b, int64_t len)
{
    tp_status st = D->gelu(H, dt, (int64_t)b[0].n, b[0].dev, b[1].dev, 0);
    if (!st)
        st = D->gelu(H, dt, (int64_t)b[0].n, b[0].dev, b[4].dev, 1);
    if (!st)
        st = D->gelu_bwd(H, dt, (int64_t)b[0].n, b[0].dev, b[2].dev, b[3].dev, 0);
    return st ? st : D->gelu_bwd(H, dt, (int64_t)b[0].n, b[0].dev, b[2].dev, b[5].dev, 1);
}
static tp_status lp_axpby(tp_dtype dt, lp_buf *b, int64_t len)
{
    return D->axpby(H, dt, (int64_t)b[0].n, 0.75f, b[0].dev, -1.5f, b[1].dev);
}
static tp_status lp_softmax(tp_dtype dt, lp_buf *b, int64_t len)
{
    tp_status st = D->softmax(H, dt, LR, LC, b[0].dev, b[1].dev, 0.5f, 1);
    return st ? st : D->softmax_bwd(H, dt, LR, LC, b[2].dev, b[3].dev, b[4].dev, 0.5f);
}
static tp_status lp_norm(tp_dtype dt, lp_buf *b, int64_t len)
{
    /* x, gamma, beta, y, mean, rstd, dy, dx ... dgamma/dbeta in the next call */
    tp_status st = D->norm(H, dt, LR, LC, b[0].dev, b[1].dev, b[2].dev, b[3].dev, b[4].dev,
                           b[5].dev, 1e-5f, 0);
    return st ? st : D->norm_bwd(H, dt, LR, LC, b[0].dev, b[1].dev, b[4].dev, b[5].dev, b[6].dev,
                                 b[7].dev, NULL, NULL, 0);
}
/* Callbacks chain no typed results: a chained typed intermediate would be
 * rounded in one pass and not the other. */
static tp_status lp_norm_params(tp_dtype dt, lp_buf *b, int64_t len)
{
    /* x, gamma, mean, rstd (raw f32 inputs), dy, dx, dgamma, dbeta */
    return D->norm_bwd(H, dt, LR, LC, b[0].dev, b[1].dev, b[2].dev, b[3].dev, b[4].dev, b[5].dev,
                       b[6].dev, b[7].dev, 0);
}
static tp_status lp_norm_rms(tp_dtype dt, lp_buf *b, int64_t len)
{
    /* x, gamma, rstd, dy = dx (in place), dgamma */
    return D->norm_bwd(H, dt, LR, LC, b[0].dev, b[1].dev, NULL, b[2].dev, b[3].dev, b[3].dev,
                       b[4].dev, NULL, 1);
}
static tp_status lp_embedding(tp_dtype dt, lp_buf *b, int64_t len)
{
    /* ids (raw), table (LR - 2 rows from lo = 1), out */
    return D->embedding(H, dt, LR, LC, b[0].dev, 1, LR - 1, b[1].dev, b[2].dev);
}
static tp_status lp_ce(tp_dtype dt, lp_buf *b, int64_t len)
{
    /* logits, targets (raw), rowmax, out3, sumexp/scale (raw inputs), dlogits */
    tp_status st = D->row_max(H, dt, LR, LC, b[0].dev, b[2].dev);
    if (!st)
        st = D->ce_stats(H, dt, LR, LC, b[0].dev, b[1].dev, 3, b[2].dev, b[3].dev);
    return st ? st : D->ce_bwd(H, dt, LR, LC, b[0].dev, b[1].dev, 3, 100, b[2].dev, b[4].dev,
                               b[5].dev, 0.1f, b[6].dev);
}

/* The GEMM against the double reference on rounded inputs: the output
 * rounding u_dt |ref| plus f32 accumulation; tensor cores may truncate
 * instead of round while accumulating, so 2 (k + 3) u per the magnitude. */
static void lowp_gemm(tp_dtype dt)
{
    const int m = 17, n = 13, k = 33, batch = 2;
    size_t na = (size_t)m * k * batch, nb = (size_t)k * n * batch, nc = (size_t)m * n * batch;
    float *a = hrand(na, 1.0), *b = hrand(nb, 1.0), *c = hrand(nc, 1.0), *out = hzalloc(nc);
    double ref[17 * 13], mag[17 * 13], udt = dt == TP_BF16 ? 1.0 / 256 : 1.0 / 2048;
    void *ha = malloc(na * 2), *hb = malloc(nb * 2), *hc = malloc(nc * 2);
    tp_gemm_args g = {.struct_size = sizeof g};
    tp_status st;

    round_to(dt, a, na), round_to(dt, b, nb), round_to(dt, c, nc);
    enc(dt, a, ha, na), enc(dt, b, hb, nb), enc(dt, c, hc, nc);
    g.dtype = dt, g.trans_a = 0, g.trans_b = 1, g.m = m, g.n = n, g.k = k;
    g.alpha = 0.5f, g.beta = 1.0f;
    g.a = dput(ha, na * 2), g.lda = k, g.stride_a = (int64_t)m * k;
    /* B stored transposed: n x k per batch */
    g.b = dput(hb, nb * 2), g.ldb = k, g.stride_b = (int64_t)n * k;
    g.c = dput(hc, nc * 2), g.ldc = n, g.stride_c = (int64_t)m * n;
    g.batch = batch;
    st = D->gemm(H, &g);
    if (st == TP_ERR_NOT_SUPPORTED) {
        ck_assert_msg(strstr(last_msg(), "gemm") &&
                      strstr(last_msg(), dt == TP_BF16 ? "bf16" : "f16"), "%s", last_msg());
        clear_msg();
    } else {
        ck_assert_msg(st == TP_OK, "gemm %s: %s", dt == TP_BF16 ? "bf16" : "f16", last_msg());
        dget(hc, g.c, nc * 2);
        dec(dt, hc, out, nc);
        for (int bi = 0; bi < batch; bi++) {
            ref_gemm(0, 1, m, n, k, 0.5, a + bi * m * k, k, b + bi * n * k, k, 1.0,
                     c + bi * m * n, n, ref, mag);
            for (int i = 0; i < m * n; i++)
                CLOSE(out[bi * m * n + i], ref[i],
                      udt * fabs(ref[i]) + 2 * (k + 3) * U * mag[i] + 0x1p-25,
                      "gemm %s batch %d [%d]", dt == TP_BF16 ? "bf16" : "f16", bi, i);
        }
    }
    free(a), free(b), free(c), free(out), free(ha), free(hb), free(hc);
    free_bufs();
}

static void body_lowp(void)
{
    static const tp_dtype dts[] = {TP_BF16, TP_F16};
    enum { NN = LR * LC };

    for (int di = 0; di < 2; di++) {
        tp_dtype dt = dts[di];
        float *x = hrand(NN, 3.0), *y = hrand(NN, 1.0), *z = hrand(NN, 1.0), *w = hrand(NN, 1.0);
        float *g = hrand(LC, 1.5), *bb = hrand(LC, 1.0), *g2 = hrand(LC, 1.0), *bb2 = hrand(LC, 1.0);
        float *mu = hzalloc(LR), *rs = hzalloc(LR), *st3 = hzalloc(3 * LR), *ones = hzalloc(LR);
        int32_t ids[LR], tg[LR];

        lowp_gemm(dt);
        for (int r = 0; r < LR; r++) {
            ids[r] = (r * 5) % (LR + 2) - 1; /* some outside [1, LR - 1) */
            tg[r] = 3 + (r * 7) % LC;
            ones[r] = r % 5 == 4 ? 0.0f : 1.0f / LR;
            mu[r] = 0.1f * (float)r;
            rs[r] = 1.0f + 0.05f * (float)r;
        }
        {
            lp_buf b[] = {LB(1, 1, NN, x), LB(1, 0, LC, g), LB(1, 0, NN, y), LB(1, 1, LC, bb)};
            lp_compare("bias_add/bias_grad", dt, lp_bias, b, 4, LR + 1);
        }
        {
            float *o1 = hzalloc(NN), *o2 = hzalloc(NN), *o3 = hzalloc(NN), *o4 = hzalloc(NN);
            lp_buf b[] = {LB(1, 0, NN, x), LB(1, 1, NN, o1), LB(1, 0, NN, y),
                          LB(1, 1, NN, o2), LB(1, 1, NN, o3), LB(1, 1, NN, o4)};
            lp_compare("gelu", dt, lp_gelu, b, 6, 1);
            free(o1), free(o2), free(o3), free(o4);
        }
        {
            lp_buf b[] = {LB(1, 0, NN, x), LB(1, 1, NN, z)};
            lp_compare("axpby", dt, lp_axpby, b, 2, 1);
        }
        {
            float *sy = hzalloc(NN), *dx = hzalloc(NN), *p = hrand(NN, 1.0);
            for (int i = 0; i < NN; i++) /* a probability-like y for the backward */
                p[i] = fabsf(p[i]) / LC;
            lp_buf b[] = {LB(1, 0, NN, x), LB(1, 1, NN, sy), LB(1, 0, NN, p), LB(1, 0, NN, w),
                          LB(1, 1, NN, dx)};
            lp_compare("softmax", dt, lp_softmax, b, 5, LC);
            free(sy), free(dx), free(p);
        }
        {
            float *ny = hzalloc(NN), *nm = hzalloc(LR), *nr = hzalloc(LR), *dx = hzalloc(NN);
            lp_buf b[] = {LB(1, 0, NN, x), LB(1, 0, LC, g), LB(1, 0, LC, bb), LB(1, 1, NN, ny),
                          LB(0, 1, LR, nm), LB(0, 1, LR, nr), LB(1, 0, NN, w), LB(1, 1, NN, dx)};
            lp_compare("norm", dt, lp_norm, b, 8, LC);
            free(ny), free(nm), free(nr), free(dx);
        }
        {
            float *dx = hzalloc(NN), *wy = hrand(NN, 1.0);
            lp_buf b[] = {LB(1, 0, NN, x), LB(1, 0, LC, g), LB(0, 0, LR, mu), LB(0, 0, LR, rs),
                          LB(1, 1, NN, wy), LB(1, 1, NN, dx), LB(1, 1, LC, g2), LB(1, 1, LC, bb2)};
            lp_compare("norm_bwd", dt, lp_norm_params, b, 8, LR + LC);
            lp_buf b2[] = {LB(1, 0, NN, x), LB(1, 0, LC, g), LB(0, 0, LR, rs), LB(1, 1, NN, wy),
                           LB(1, 1, LC, g2)};
            lp_compare("norm_bwd (rms)", dt, lp_norm_rms, b2, 5, LR + LC);
            free(dx), free(wy);
        }
        {
            float *out = hrand(NN, 1.0), *table = hrand((LR - 2) * LC, 1.0);
            lp_buf b[] = {LI(LR, ids), LB(1, 0, (LR - 2) * LC, table), LB(1, 1, NN, out)};
            lp_compare("embedding", dt, lp_embedding, b, 3, 1);
            free(out), free(table);
        }
        {
            float *mx = hzalloc(LR), *se = hzalloc(LR), *dl = hzalloc(NN);
            for (int r = 0; r < LR; r++)
                se[r] = 2.0f + (float)r;
            lp_buf b[] = {LB(1, 0, NN, x), LI(LR, tg), LB(0, 1, LR, mx), LB(0, 1, 3 * LR, st3),
                          LB(0, 0, LR, se), LB(0, 0, LR, ones), LB(1, 1, NN, dl)};
            lp_compare("row_max/ce_stats/ce_bwd", dt, lp_ce, b, 7, LC);
            free(mx), free(se), free(dl);
        }
        free(x), free(y), free(z), free(w), free(g), free(bb), free(g2), free(bb2);
        free(mu), free(rs), free(st3), free(ones);
    }
}

START_TEST(t_lowp)
{
    with_device(body_lowp);
}
END_TEST

/* ------------------------------------------------ ABI 1.1 optional slots */

static const tp_dtype all_dts[] = {TP_F32, TP_BF16, TP_F16};
#define DT_NAME(dt) ((dt) == TP_F32 ? "f32" : (dt) == TP_BF16 ? "bf16" : "f16")
/* unit roundoff of a storage dtype: f32 2^-24, bf16 2^-8, f16 2^-11 */
#define DT_U(dt) ((dt) == TP_F32 ? U : (dt) == TP_BF16 ? 1.0 / 256 : 1.0 / 2048)

/* reduce: y = op(y, x). On inputs already in dt, a sum is one rounding of
 * the exact sum (f32 math, then one rounding to dt: at most u_f32 + u_dt
 * relative); max and min are exact. NaN: max/min keep a NaN of y and drop
 * one of x (the loopback comm's order: max(acc, x) = x > acc ? x : acc).
 * x lives in xmem when given (host memory the device can reach, from
 * host_alloc), else in a device buffer. */
static void reduce_case(tp_dtype dt, tp_redop op, int n, void *xmem)
{
    size_t es = dt_size(dt);
    float *x = hrand(n, 4.0), *y = hrand(n, 4.0), *out = hzalloc(n);
    void *hx = malloc(n * es), *hy = malloc(n * es);

    ck_assert_ptr_nonnull(hx);
    ck_assert_ptr_nonnull(hy);
    round_to(dt, x, n), round_to(dt, y, n);
    enc(dt, x, hx, n), enc(dt, y, hy, n);
    void *dx = xmem ? memcpy(xmem, hx, n * es) : dput(hx, n * es), *dy = dput(hy, n * es);
    ck_assert_msg(D->reduce(H, dt, op, n, dx, dy) == TP_OK, "reduce %s op %d n=%d%s: %s",
                  DT_NAME(dt), (int)op, n, xmem ? " (x in host_alloc memory)" : "", last_msg());
    dget(hy, dy, n * es);
    dec(dt, hy, out, n);
    for (int i = 0; i < n; i++) {
        double ref = op == TP_SUM   ? (double)x[i] + y[i]
                     : op == TP_MAX ? fmax(x[i], y[i])
                                    : fmin(x[i], y[i]);
        CLOSE(out[i], ref, op == TP_SUM ? (DT_U(dt) + U) * fabs(ref) : 0,
              "reduce %s op %d n=%d%s [%d]", DT_NAME(dt), (int)op, n, xmem ? " (host x)" : "", i);
    }
    free(x), free(y), free(out), free(hx), free(hy);
    free_bufs();
}

static void body_reduce(void)
{
    /* 2^20 + 3: many blocks of a GPU grid, and a ragged end */
    static const int ns[] = {1, 13, 4097, (1 << 20) + 3};

    ck_assert_msg(D->reduce, "device '%s' has no reduce slot", dev_name);
    for (int di = 0; di < 3; di++)
        for (int op = 0; op < TP_REDOP_COUNT_; op++)
            for (int ni = 0; ni < 4; ni++)
                reduce_case(all_dts[di], (tp_redop)op, ns[ni], NULL);
    /* i32: exact, the sum wraps */
    int32_t ix[3] = {INT32_MAX, -5, 7}, iy[3] = {1, 9, -7}, io[3];
    for (int op = 0; op < TP_REDOP_COUNT_; op++) {
        void *dix = dput(ix, 12), *diy = dput(iy, 12);
        ck_assert_msg(D->reduce(H, TP_I32, (tp_redop)op, 3, dix, diy) == TP_OK, "reduce i32: %s",
                      last_msg());
        dget(io, diy, 12);
        for (int i = 0; i < 3; i++) {
            int32_t want = op == TP_SUM   ? (int32_t)((uint32_t)ix[i] + (uint32_t)iy[i])
                           : op == TP_MAX ? (ix[i] > iy[i] ? ix[i] : iy[i])
                                          : (ix[i] < iy[i] ? ix[i] : iy[i]);
            ck_assert_msg(io[i] == want, "reduce i32 op %d [%d]: got %d, want %d", op, i, io[i],
                          want);
        }
    }
    /* NaN handling and x aliasing y (y = op(y, y)) */
    float nx[2] = {NAN, 1.0f}, ny[2] = {2.0f, NAN}, o[2];
    void *px = dput(nx, 8), *py = dput(ny, 8);
    ck_assert_int_eq(D->reduce(H, TP_F32, TP_MAX, 2, px, py), TP_OK);
    dget(o, py, 8);
    ck_assert_msg(o[0] == 2.0f && isnan(o[1]), "reduce max NaN: got %g %g, want 2 nan", o[0], o[1]);
    ck_assert_int_eq(D->reduce(H, TP_F32, TP_SUM, 1, py, py), TP_OK);
    dget(o, py, 4);
    ck_assert_msg(o[0] == 4.0f, "reduce sum in place: got %g, want 4", o[0]);
    expect_err(D->reduce(H, TP_F32, (tp_redop)7, 2, px, py), TP_ERR_INVALID_ARG, "reduce op 7",
               "op", NULL);
    expect_err(D->reduce(H, TP_F32, TP_SUM, 2, NULL, py), TP_ERR_INVALID_ARG, "reduce x NULL",
               "NULL", NULL);
    free_bufs();
}

START_TEST(t_reduce)
{
    with_device(body_reduce);
}
END_TEST

/* gemm_bias_act vs double: v = op(A) op(B) + bias, pre = v, C = act(v).
 * Inputs are rounded to dt first. v: the GEMM bound of lowp_gemm
 * (2 (k + 3) u M, tensor cores may truncate while accumulating) plus one
 * rounding to dt (u_dt |v|) and one f32 rounding of the bias add. C:
 * |gelu'| <= 1.13, so v's error times 1.13, plus the activation's own
 * error: 8 u |C| for the libm erff/tanhf (<= 4 ulp) and its few roundings,
 * plus one rounding to dt. On a GPU, GeLU(tanh) may run in a cuBLASLt
 * epilogue with the hardware tanh (PTX tanh.approx.f32, maximum relative
 * error 2^-10.987): that moves C = 0.5 v (1 + t) by 0.5 |v| 2^-10 |t|,
 * which is far more than 2^-10 |C| for v < 0 (C -> 0 while |t| -> 1); we
 * allow both, since the epilogue's formula is not documented, and
 * 2^-21 |v| of slack near t = 0, where that relative bound is unverified.
 * beta is 0, so C is not read: its elements start as NaN, which must not
 * leak. Rows are padded (ldc = n + pad): the padding must come back
 * untouched. Outside the core (vtable mode) a device other than cpu (which
 * fuses everything) may refuse a combination it does not fuse with
 * TP_ERR_NOT_SUPPORTED (the core then composes it; api mode checks that
 * result), leaving C and pre untouched. */
static int may_refuse(void)
{
    return !via_api && strcmp(dev_name, "cpu") != 0;
}

static void bias_act_case(tp_dtype dt, int ta, int tb, int m, int n, int k, int with_bias,
                          tp_act act, int with_pre, int pad)
{
    int ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n, ldc = n + pad;
    size_t na = (size_t)ar * ac, nb = (size_t)br * bc, nc = (size_t)m * ldc, es = dt_size(dt);
    float *a = hrand(na, 1.0), *b = hrand(nb, 1.0), *bias = hrand(n, 1.0);
    float *c0 = hrand(nc, 1.0), *out = hzalloc(nc), *pout = hzalloc(nc);
    double *ref = dzalloc((size_t)m * n), *mag = dzalloc((size_t)m * n);
    void *ha = malloc(na * es), *hb = malloc(nb * es), *hbias = malloc(n * es);
    void *hc = malloc(nc * es), *hc0 = malloc(nc * es);
    tp_gemm_args g = {.struct_size = sizeof g};
    double udt = DT_U(dt);
    int hw_tanh = strcmp(dev_name, "cpu") != 0 && act == TP_ACT_GELU_TANH && dt != TP_F32;
    double act_u = hw_tanh ? 0x1p-10 : 8 * U;
    double d_tanh = 0, d_erf = 0; /* distances to the two GeLU forms (f32) */

    ck_assert_ptr_nonnull(hc0);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++)
            c0[(size_t)i * ldc + j] = NAN;
    round_to(dt, a, na), round_to(dt, b, nb), round_to(dt, bias, n), round_to(dt, c0, nc);
    enc(dt, a, ha, na), enc(dt, b, hb, nb), enc(dt, bias, hbias, n), enc(dt, c0, hc0, nc);
    g.dtype = dt, g.trans_a = ta, g.trans_b = tb, g.m = m, g.n = n, g.k = k;
    g.alpha = 1.0f, g.beta = 0.0f, g.batch = 1;
    g.a = dput(ha, na * es), g.lda = ac;
    g.b = dput(hb, nb * es), g.ldb = bc;
    g.c = dput(hc0, nc * es), g.ldc = ldc;
    void *dpre = with_pre ? dput(hc0, nc * es) : NULL; /* starts as C: padding must survive */
    tp_status st = D->gemm_bias_act(H, &g, with_bias ? dput(hbias, n * es) : NULL, act, dpre);
    if (st == TP_ERR_NOT_SUPPORTED && may_refuse()) {
        dget(hc, g.c, nc * es);
        ck_assert_msg(memcmp(hc, hc0, nc * es) == 0, "gemm_bias_act %s act %d: refused (%s) "
                      "but wrote C", DT_NAME(dt), (int)act, last_msg());
        if (with_pre) {
            dget(hc, dpre, nc * es);
            ck_assert_msg(memcmp(hc, hc0, nc * es) == 0, "gemm_bias_act %s act %d: refused "
                          "(%s) but wrote pre", DT_NAME(dt), (int)act, last_msg());
        }
        printf("note: gemm_bias_act %s ta=%d tb=%d m=%d n=%d k=%d ldc=%d bias %d act %d pre %d "
               "refused (the core composes it): %s\n", DT_NAME(dt), ta, tb, m, n, k, ldc,
               with_bias, (int)act, with_pre, last_msg());
        clear_msg();
        goto done;
    }
    ck_assert_msg(st == TP_OK, "gemm_bias_act %s act %d bias %d pre %d m=%d n=%d k=%d ldc=%d: %s",
                  DT_NAME(dt), (int)act, with_bias, with_pre, m, n, k, ldc, last_msg());
    dget(hc, g.c, nc * es);
    dec(dt, hc, out, nc);
    if (with_pre) {
        dget(hc, dpre, nc * es);
        dec(dt, hc, pout, nc);
    }
    ref_gemm(ta, tb, m, n, k, 1.0, a, ac, b, bc, 0.0, c0, ldc, ref, mag);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < ldc; j++) {
            size_t at = (size_t)i * ldc + j;
            if (j >= n) {
                ck_assert_msg(out[at] == c0[at] && (!with_pre || pout[at] == c0[at]),
                              "gemm_bias_act wrote row padding");
                continue;
            }
            double v = ref[i * n + j] + (with_bias ? bias[j] : 0.0);
            double mv = mag[i * n + j] + (with_bias ? fabs(bias[j]) : 0.0);
            double ev = 2 * (k + 3) * U * mv + U * fabs(v) + 0x1p-40;
            double cref = act == TP_ACT_NONE ? v
                          : act == TP_ACT_GELU ? gelu_ref(v, 0)
                                               : gelu_ref(v, 1);
            double t = tanh(sqrt(2 / M_PI) * (v + 0.044715 * v * v * v));
            double ec = (act == TP_ACT_NONE ? 1.0 : 1.13) * ev + act_u * fabs(cref) +
                        (hw_tanh ? 0.5 * fabs(v) * (0x1p-10 * fabs(t) + 0x1p-20) : 0);
            CLOSE(out[at], cref, ec + udt * fabs(cref) + (dt == TP_F16 ? 0x1p-24 : 0),
                  "gemm_bias_act %s ta=%d tb=%d m=%d n=%d k=%d bias %d act %d: C[%d,%d]",
                  DT_NAME(dt), ta, tb, m, n, k, with_bias, (int)act, i, j);
            if (with_pre)
                CLOSE(pout[at], v, ev + udt * fabs(v) + (dt == TP_F16 ? 0x1p-24 : 0),
                      "gemm_bias_act %s m=%d n=%d k=%d act %d: pre[%d,%d]", DT_NAME(dt), m, n, k,
                      (int)act, i, j);
            d_tanh += fabs(out[at] - gelu_ref(v, 1));
            d_erf += fabs(out[at] - gelu_ref(v, 0));
        }
    /* Which GeLU was computed? The two forms differ by up to 4.7e-4 (at
     * |v| = 2.7), less than the GPU tolerance above, so over >= 200 values in
     * f32 the results must be closer on average to the form asked for (the
     * device's own error adds about equally to both distances). */
    if (dt == TP_F32 && act != TP_ACT_NONE && m * n >= 200)
        ck_assert_msg(act == TP_ACT_GELU_TANH ? d_tanh < d_erf : d_erf < d_tanh,
                      "gemm_bias_act act %d m=%d n=%d k=%d: mean distance to the tanh GeLU %.3g, "
                      "to the exact (erf) GeLU %.3g: the other form was computed", (int)act, m, n,
                      k, d_tanh / (m * n), d_erf / (m * n));
done:
    free(a), free(b), free(bias), free(c0), free(out), free(pout), free(ref), free(mag);
    free(ha), free(hb), free(hbias), free(hc), free(hc0);
    free_bufs();
}

static void body_gemm_bias_act(void)
{
    ck_assert_msg(D->gemm_bias_act, "device '%s' has no gemm_bias_act slot", dev_name);
    for (int di = 0; di < 3; di++)
        for (int act = 0; act < TP_ACT_COUNT_; act++)
            for (int v = 0; v < 4; v++) {
                int bias = v & 1, pre = v >> 1;
                bias_act_case(all_dts[di], 0, 0, 13, 17, 33, bias, (tp_act)act, pre, 2);
                bias_act_case(all_dts[di], 1, 1, 1, 13, 17, bias, (tp_act)act, pre, 2);
                bias_act_case(all_dts[di], v & 1, 0, 17, 1, 13, bias, (tp_act)act, pre, 2);
            }
    /* larger, aligned shapes (ldc a multiple of 8): the ones a fused GPU
     * epilogue is most likely to take */
    for (int di = 0; di < 3; di++)
        bias_act_case(all_dts[di], 0, 0, 256, 384, 512, 1, TP_ACT_GELU_TANH, 1, 8);
    bias_act_case(TP_F32, 0, 1, 64, 96, 128, 1, TP_ACT_GELU, 1, 8);
}

START_TEST(t_gemm_bias_act)
{
    with_device(body_gemm_bias_act);
}
END_TEST

/* Bad arguments name what is wrong. An integer dtype: as for gemm. batch
 * and beta are outside the slot's contract (the core never passes them):
 * a device may call them invalid or not fused. pre == c is the core's
 * rule (the cpu slot would write pre, then C), which cuda checks too. */
static void body_gemm_bias_act_errors(void)
{
    void *a = dmalloc(4096), *b = dmalloc(4096), *c = dmalloc(4096);
    tp_gemm_args g = {.struct_size = sizeof g};
    tp_status st;

    ck_assert_msg(D->gemm_bias_act, "device '%s' has no gemm_bias_act slot", dev_name);
    g.dtype = TP_F32;
    g.m = 13, g.n = 17, g.k = 5;
    g.alpha = 1;
    g.a = a, g.lda = 5, g.b = b, g.ldb = 17, g.c = c, g.ldc = 17, g.batch = 1;
    st = D->gemm_bias_act(H, &g, NULL, TP_ACT_NONE, NULL);
    ck_assert_msg(st == TP_OK || (st == TP_ERR_NOT_SUPPORTED && may_refuse()),
                  "gemm_bias_act with valid arguments: %s: %s", tp_status_string(st), last_msg());
    clear_msg();
    expect_err(D->gemm_bias_act(H, &g, NULL, (tp_act)9, NULL), TP_ERR_INVALID_ARG,
               "gemm_bias_act act 9", "act", NULL);
    g.lda = 4; /* A is 13 x 5 */
    expect_err(D->gemm_bias_act(H, &g, NULL, TP_ACT_NONE, NULL), TP_ERR_INVALID_ARG,
               "gemm_bias_act lda < k", "lda", NULL);
    g.lda = 5;
    g.dtype = TP_I32;
    expect_err(D->gemm_bias_act(H, &g, NULL, TP_ACT_NONE, NULL),
               via_api ? TP_ERR_INVALID_ARG : TP_ERR_NOT_SUPPORTED, "gemm_bias_act i32", "dtype",
               NULL);
    g.dtype = TP_F32;
    g.batch = 2, g.stride_a = 65, g.stride_b = 85, g.stride_c = 221;
    st = D->gemm_bias_act(H, &g, NULL, TP_ACT_NONE, NULL);
    expect_err(st, st == TP_ERR_NOT_SUPPORTED && !via_api ? st : TP_ERR_INVALID_ARG,
               "gemm_bias_act batch 2", "batch", NULL);
    g.batch = 1;
    if (via_api || !strcmp(dev_name, "cuda"))
        expect_err(D->gemm_bias_act(H, &g, NULL, TP_ACT_GELU_TANH, c), TP_ERR_INVALID_ARG,
                   "gemm_bias_act pre == c", "pre", NULL);
    ck_assert_msg(D->synchronize(H) == TP_OK, "synchronize after refused calls: %s", last_msg());
    free_bufs();
}

START_TEST(t_gemm_bias_act_errors)
{
    with_device(body_gemm_bias_act_errors);
}
END_TEST

/* api mode: which combinations the device fuses shows in the rank's stats.
 * A fused call counts one gemm and no kernel; one the core composes counts
 * its gemm plus bias_add and gelu kernels. The cpu device fuses all; cuda
 * fuses the bias in every dtype and GeLU(tanh) in bf16/f16 (cuBLASLt
 * epilogues; pre needs ldc a multiple of 8) and leaves the exact GeLU, and
 * GeLU in f32, to the core. */
static uint64_t calls(const tp_counter *c)
{
    uint64_t s = 0;
    for (int p = 0; p < TP_PHASE_COUNT; p++)
        s += c[p].calls;
    return s;
}

static void body_fused(void)
{
    static const struct {
        int tb, m, n, k, ldc;
    } shapes[] = {
        {0, 256, 384, 512, 384}, /* the MLP's first GEMM: x [m, k] * W1 [k, n] */
        {1, 64, 128, 256, 192},  /* B transposed, C in a wider buffer */
    };
    tp_stats st;

    for (int di = 0; di < 3; di++)
        for (int si = 0; si < 2; si++) {
            tp_dtype dt = all_dts[di];
            int m = shapes[si].m, n = shapes[si].n, k = shapes[si].k, ldc = shapes[si].ldc;
            size_t es = dt_size(dt), bytes[5] = {(size_t)m * k * es, (size_t)k * n * es,
                                                 (size_t)m * ldc * es, (size_t)n * es,
                                                 (size_t)m * ldc * es};
            void *p[5];
            for (int i = 0; i < 5; i++) { /* zeros: only the counts matter here */
                p[i] = dmalloc(bytes[i]);
                ck_assert_int_eq(D->memset(H, p[i], 0, bytes[i]), TP_OK);
            }
            tp_gemm_args g = {.struct_size = sizeof g, .dtype = dt, .trans_b = shapes[si].tb,
                              .m = m, .n = n, .k = k, .alpha = 1.0f, .a = p[0], .lda = k,
                              .b = p[1], .ldb = shapes[si].tb ? k : n, .c = p[2], .ldc = ldc,
                              .batch = 1};
            for (int act = 0; act < TP_ACT_COUNT_; act++)
                for (int v = 0; v < 4; v++) {
                    int bias = v & 1, pre = v >> 1;
                    int fused = !strcmp(dev_name, "cpu") || act == TP_ACT_NONE ||
                                (act == TP_ACT_GELU_TANH && dt != TP_F32);
                    tp_stats_reset(rank_comm);
                    ck_assert_msg(D->gemm_bias_act(H, &g, bias ? p[3] : NULL, (tp_act)act,
                                                   pre ? p[4] : NULL) == TP_OK,
                                  "gemm_bias_act %s act %d: %s", DT_NAME(dt), act, last_msg());
                    tp_stats_get(rank_comm, &st);
                    ck_assert_msg(calls(st.gemm) == 1 && (fused ? calls(st.kernel) == 0
                                                                : calls(st.kernel) >= 1u + bias),
                                  "gemm_bias_act %s m=%d n=%d k=%d ldc=%d bias %d act %d pre %d "
                                  "on %s: %llu gemm and %llu kernel calls counted, expected 1 "
                                  "and %s", DT_NAME(dt), m, n, k, ldc, bias, act, pre, dev_name,
                                  (unsigned long long)calls(st.gemm),
                                  (unsigned long long)calls(st.kernel),
                                  fused ? "0 (fused)" : "bias_add and gelu (composed)");
                }
            free_bufs();
        }
}

START_TEST(t_fused)
{
    with_device(body_fused);
}
END_TEST

/* host_alloc (vtable mode; the core uses it for staging): a buffer the
 * device copies to and from, and a NULL free is a no-op. */
static void body_host_alloc(void)
{
    if (!D->host_alloc) {
        ck_assert_msg(!D->host_free, "host_free without host_alloc");
        return; /* optional: the core stages through ordinary memory */
    }
    size_t n = 1 << 18;
    float *h = NULL, *back = hzalloc(n);
    ck_assert_msg(D->host_alloc(H, n * 4, (void **)&h) == TP_OK && h, "host_alloc: %s", last_msg());
    for (size_t i = 0; i < n; i++)
        h[i] = (float)i;
    void *d = dput(h, n * 4);
    memset(h, 0, n * 4);
    dget(h, d, n * 4);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(h[i] == (float)i, "host_alloc buffer round trip [%zu]: %g", i, h[i]);
    D->host_free(H, h);
    D->host_free(H, NULL);
    free(back);
    free_bufs();
    /* reduce takes x in this memory (page-locked, mapped into the GPU) */
    for (int di = 0; di < 3; di++) {
        void *x = NULL;
        ck_assert_msg(D->host_alloc(H, 4097 * 4, &x) == TP_OK && x, "host_alloc: %s", last_msg());
        reduce_case(all_dts[di], TP_SUM, 4097, x);
        D->host_free(H, x);
    }
}

START_TEST(t_host_alloc)
{
    with_device(body_host_alloc);
}
END_TEST

/* -------------------------------------------------------- bad arguments */

static void body_errors(void)
{
    float *a = dmalloc(256), *b = dmalloc(256);
    void *p = NULL;

    /* Every kernel refuses a dtype it does not compute with TP_ERR_NOT_SUPPORTED
     * naming op and dtype; an integer dtype is not computed by any device
     * (the core may refuse it first as not a float dtype: TP_ERR_INVALID_ARG). */
    tp_status ns = via_api ? TP_ERR_INVALID_ARG : TP_ERR_NOT_SUPPORTED;
    expect_err(D->gelu(H, TP_I32, 4, a, b, 0), ns, "gelu i32", "gelu", NULL);
    expect_err(D->bias_add(H, TP_I32, 2, 2, a, b), ns, "bias_add i32", "bias_add", NULL);
    expect_err(D->softmax(H, TP_I32, 2, 2, a, b, 1, 0), ns, "softmax i32", "softmax", NULL);
    expect_err(D->norm(H, TP_I32, 2, 2, a, b, NULL, a, NULL, b, 1e-5f, 1), ns, "norm i32",
               "norm", NULL);
    expect_err(D->gelu(H, (tp_dtype)-1, 4, a, b, 0), TP_ERR_INVALID_ARG, "gelu dtype -1", NULL);
    /* negative sizes, NULL with elements */
    expect_err(D->gelu(H, TP_F32, -1, a, b, 0), TP_ERR_INVALID_ARG, "gelu n -1", "-1", NULL);
    expect_err(D->bias_grad(H, TP_F32, -3, 2, a, b), TP_ERR_INVALID_ARG, "bias_grad rows -3",
               "-3", NULL);
    expect_err(D->axpby(H, TP_F32, 4, 1, NULL, 0, b), TP_ERR_INVALID_ARG, "axpby x NULL", "NULL",
               NULL);
    expect_err(D->row_max(H, TP_F32, 2, 3, a, NULL), TP_ERR_INVALID_ARG, "row_max out NULL",
               "NULL", NULL);
    /* embedding with a reversed shard */
    expect_err(D->embedding(H, TP_F32, 1, 2, (int32_t *)a, 5, 3, b, a), TP_ERR_INVALID_ARG,
               "embedding lo > hi", NULL);
    /* adamw */
    expect_err(D->adamw(H, 4, NULL, a, a, a, 1e-3f, 0.9f, 0.999f, 1e-8f, 0, 1),
               TP_ERR_INVALID_ARG, "adamw param NULL", "NULL", NULL);
    /* copies */
    expect_err(D->upload(H, NULL, a, 16), TP_ERR_INVALID_ARG, "upload to NULL", NULL);
    expect_err(D->copy_2d(H, a, 4, b, 16, 8, 2), TP_ERR_INVALID_ARG, "copy_2d dpitch < width",
               "pitch", NULL);
    /* an allocation that cannot succeed reports TP_ERR_NO_MEMORY (not a crash) */
    expect_err(D->alloc(H, SIZE_MAX / 2, &p), TP_ERR_NO_MEMORY, "alloc SIZE_MAX/2", NULL);
    ck_assert_ptr_null(p);
    D->free(H, NULL); /* a no-op */
}

START_TEST(t_errors)
{
    with_device(body_errors);
}
END_TEST

/* ---------------------------------------------------------- concurrency */

/* Ranks are threads of one process, each with its own device: 4 of them
 * running the same checks at once must each still get exact results
 * (per-rank contexts, thread-safe BLAS / streams). */
static void body_concurrent(void)
{
    body_gemm();
    body_softmax();
    body_norm();
    body_ce();
}

START_TEST(t_concurrent)
{
    with_devices(body_concurrent, 4);
}
END_TEST

/* Every rank reduces the next rank's buffer into its own, all at once:
 * reduce takes buffers of the other ranks' devices in this process (as
 * the loopback comm uses it on device memory). Integers below 2^24: exact.
 * Ranks on GPUs without peer access may refuse, naming it. */
enum { RR_RANKS = 4, RR_N = 4097 };
static void *rr_x[RR_RANKS];
static pthread_barrier_t rr_bar;

static void body_reduce_ranks(void)
{
    int r = rank_id, nx = (r + 1) % RR_RANKS;
    float *hx = hzalloc(RR_N), *hy = hzalloc(RR_N), *out = hzalloc(RR_N);

    ck_assert_msg(D->reduce, "device '%s' has no reduce slot", dev_name);
    for (int i = 0; i < RR_N; i++) {
        hx[i] = (float)(r * 10000 + i);
        hy[i] = (float)(r * 100000 + 2 * i);
    }
    rr_x[r] = dput(hx, RR_N * 4);
    void *y = dput(hy, RR_N * 4);
    pthread_barrier_wait(&rr_bar); /* every x is written (upload waits) */
    tp_status st = D->reduce(H, TP_F32, TP_SUM, RR_N, rr_x[nx], y);
    if (st == TP_ERR_NOT_SUPPORTED && strcasestr(last_msg(), "peer")) {
        printf("reduce ranks: rank %d cannot reach rank %d's buffer: %s\n", r, nx, last_msg());
    } else {
        ck_assert_msg(st == TP_OK, "rank %d: reduce of rank %d's buffer: %s", r, nx, last_msg());
        dget(out, y, RR_N * 4);
        for (int i = 0; i < RR_N; i++)
            ck_assert_msg(out[i] == hy[i] + (float)(nx * 10000 + i),
                          "rank %d: y[%d] = %.9g after adding rank %d's x, expected %.9g", r, i,
                          out[i], nx, hy[i] + (float)(nx * 10000 + i));
    }
    pthread_barrier_wait(&rr_bar); /* every reduce is done (download waits) before x is freed */
    free(hx), free(hy), free(out);
}

START_TEST(t_reduce_ranks)
{
    memset(rr_x, 0, sizeof rr_x);
    ck_assert_int_eq(pthread_barrier_init(&rr_bar, NULL, RR_RANKS), 0);
    with_devices(body_reduce_ranks, RR_RANKS);
    pthread_barrier_destroy(&rr_bar);
}
END_TEST

/* --------------------------------------------------------------- main */

/* Can the device run here? 1 yes; 0 (skip) with a reason; -1 (fail) when
 * the cpu device cannot be started, since it must always work. Runs in a
 * child process so this process never touches the device library before
 * Check forks (CUDA does not survive fork). */
static int device_available(char *why, size_t len)
{
    int fds[2];
    pid_t pid;
    int status = 0;
    ssize_t got;

    if (pipe(fds) != 0) {
        snprintf(why, len, "pipe failed");
        return 0;
    }
    pid = fork();
    if (pid == 0) {
        char msg[1024] = "";
        int ok = 0;
        close(fds[0]);
        if (via_api) {
            tp_config cfg = {0};
            tp_ctx *ctx = NULL;
            cfg.backend = "loopback";
            cfg.device = dev_name;
            cfg.world_size = 1;
            tp_status st = tp_init(&cfg, &ctx);
            ok = st == TP_OK;
            if (!ok)
                snprintf(msg, sizeof msg, "tp_init with device '%s': %s: %s", dev_name,
                         tp_status_string(st), tp_last_error());
            /* only a device that is not built or cannot run here is a skip */
            if (!ok && (!strcmp(dev_name, "cpu") ||
                        (st != TP_ERR_UNAVAILABLE && st != TP_ERR_PLUGIN)))
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

/* vtable mode: find libtp-<dev>.so on TP_PLUGIN_PATH (or take a path). */
static int load_plugin(char *why, size_t len)
{
    char path[4096];
    const char *dirs = getenv("TP_PLUGIN_PATH");
    void *so = NULL;
    const tp_plugin_desc *(*entry)(void);

    if (strchr(dev_name, '/')) {
        so = dlopen(dev_name, RTLD_NOW | RTLD_LOCAL);
    } else {
        char *copy = strdup(dirs ? dirs : ""), *save = NULL;
        for (char *d = strtok_r(copy, ":", &save); d && !so; d = strtok_r(NULL, ":", &save)) {
            snprintf(path, sizeof path, "%s/libtp-%s.so", d, dev_name);
            if (access(path, F_OK) == 0) {
                so = dlopen(path, RTLD_NOW | RTLD_LOCAL);
                if (!so)
                    snprintf(why, len, "dlopen %.500s: %.400s", path, dlerror());
            }
        }
        free(copy);
        if (!so && !why[0])
            snprintf(why, len, "libtp-%s.so is not in TP_PLUGIN_PATH=%s (device not built?)",
                     dev_name, dirs ? dirs : "(unset)");
    }
    if (!so)
        return 0;
    entry = (const tp_plugin_desc *(*)(void))dlsym(so, TP_PLUGIN_ENTRY);
    if (!entry || !(plugin = entry()) || !plugin->device) {
        snprintf(why, len, "%s: no " TP_PLUGIN_ENTRY " or no device ops", dev_name);
        return 0;
    }
    return 1;
}

int main(void)
{
    const char *d = getenv("TP_DEVICE"), *via = getenv("TP_DEVICE_TEST_VIA");
    char why[1024] = "";
    Suite *s;
    TCase *tc;
    SRunner *sr;
    int failed;

    if (d && *d)
        dev_name = d;
    via_api = !(via && !strcmp(via, "vtable"));
    if (!via_api && !load_plugin(why, sizeof why)) {
        printf("SKIP: device '%s': %s\n", dev_name, why);
        return 77;
    }
    switch (device_available(why, sizeof why)) {
    case 0:
        printf("SKIP: device '%s' is not available here: %s\n", dev_name, why);
        return 77;
    case -1:
        printf("FAIL: device '%s' could not be started: %s\n", dev_name, why);
        return 1;
    }

    s = suite_create("device");
    tc = tcase_create(dev_name);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, t_memory);
    tcase_add_test(tc, t_gemm);
    tcase_add_test(tc, t_gemm_errors);
    tcase_add_test(tc, t_gemm_interleaved);
    tcase_add_test(tc, t_bias);
    tcase_add_test(tc, t_gelu);
    tcase_add_test(tc, t_axpby);
    tcase_add_test(tc, t_softmax);
    tcase_add_test(tc, t_norm);
    tcase_add_test(tc, t_embedding);
    tcase_add_test(tc, t_ce);
    tcase_add_test(tc, t_adamw);
    tcase_add_test(tc, t_fd_gelu);
    tcase_add_test(tc, t_fd_softmax);
    tcase_add_test(tc, t_fd_norm);
    tcase_add_test(tc, t_fd_ce);
    tcase_add_test(tc, t_lowp);
    tcase_add_test(tc, t_reduce);
    tcase_add_test(tc, t_gemm_bias_act);
    tcase_add_test(tc, t_gemm_bias_act_errors);
    /* which combinations fuse is per device: known for these two */
    if (via_api && (!strcmp(dev_name, "cpu") || !strcmp(dev_name, "cuda")))
        tcase_add_test(tc, t_fused);
    tcase_add_test(tc, t_host_alloc);
    tcase_add_test(tc, t_errors);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    /* Several ranks assert on their own threads: only in a forked child. */
    if (via_api || srunner_fork_status(sr) != CK_NOFORK) {
        tcase_add_test(tc, t_concurrent);
        tcase_add_test(tc, t_reduce_ranks);
    }
    /* api mode asserts on the rank's thread: only safe in a forked child. */
    if (via_api)
        srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
