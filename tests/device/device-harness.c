/* SPDX-License-Identifier: MIT */
/* device-harness.c — the device under test, its buffers, the test data
 * (see device-harness.h). */
#include <pthread.h>
#include <stdarg.h>

#include "device-harness.h"

/* ------------------------------------------------------------ harness */

const char *dev_name = "cpu";
int via_api = 1;

/* The device under test: a vtable and its handle, in either mode; one per
 * thread, as each rank (thread) has its own device. */
_Thread_local const tp_device_ops *D;
_Thread_local void *H;
_Thread_local int rank_id;        /* this rank (thread) among the test's ranks */
_Thread_local tp_comm *rank_comm; /* api mode: the rank's world, for its stats */

/* vtable mode: the loaded plugin, and a host that records errors. */
const tp_plugin_desc *plugin;
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

static const tp_host test_host = {sizeof(tp_host), host_set_error, host_debug, 300.0, NULL};

const char *last_msg(void)
{
    return via_api ? tp_last_error() : host_msg;
}

void clear_msg(void)
{
    if (via_api)
        tp_clear_error();
    host_msg[0] = 0;
}

/* api mode: wrappers with the vtable's signatures around tp_dev_*. */
#define W(name, params, args)                                                                      \
    static tp_status api_##name params                                                             \
    {                                                                                              \
        return tp_dev_##name args;                                                                 \
    }
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
  (void *d, tp_dtype dt, int64_t r, int64_t c, const void *x, const void *g, const void *b, void *y,
   float *mu, float *rs, float eps, int rms),
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
    .alloc = api_alloc,
    .free = api_free,
    .upload = api_upload,
    .download = api_download,
    .copy_2d = api_copy_2d,
    .memset = api_memset,
    .synchronize = api_synchronize,
    .gemm = api_gemm,
    .bias_add = api_bias_add,
    .bias_grad = api_bias_grad,
    .gelu = api_gelu,
    .gelu_bwd = api_gelu_bwd,
    .axpby = api_axpby,
    .softmax = api_softmax,
    .softmax_bwd = api_softmax_bwd,
    .norm = api_norm,
    .norm_bwd = api_norm_bwd,
    .embedding = api_embedding,
    .embedding_bwd = api_embedding_bwd,
    .row_max = api_row_max,
    .ce_stats = api_ce_stats,
    .ce_bwd = api_ce_bwd,
    .adamw = api_adamw,
    .reduce = api_reduce,
    .gemm_bias_act = api_gemm_bias_act, /* host_alloc: no public API */
};

/* Device buffers of the running test, freed after it. */
#define MAX_BUFS 256
static _Thread_local void *bufs[MAX_BUFS];
static _Thread_local int nbufs;

void *dmalloc(size_t bytes)
{
    void *p = NULL;
    ck_assert_int_lt(nbufs, MAX_BUFS);
    expect_status(D->alloc(H, bytes, &p), TP_OK, "alloc %zu", bytes);
    ck_assert_ptr_nonnull(p);
    ck_assert_msg(((uintptr_t)p & 63) == 0, "alloc returned %p, not 64-byte aligned", p);
    bufs[nbufs++] = p;
    return p;
}

/* A device copy of n floats / ints (n may be 0). */
void *dput(const void *host, size_t bytes)
{
    void *p = dmalloc(bytes);
    expect_status(D->upload(H, p, host, bytes), TP_OK, "upload");
    return p;
}

void dget(void *host, const void *p, size_t bytes)
{
    expect_status(D->download(H, host, p, bytes), TP_OK, "download");
}

void free_bufs(void)
{
    for (int i = 0; i < nbufs; i++)
        D->free(H, bufs[i]);
    nbufs = 0;
}

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
    expect_status(D->open(&test_host, &args, &H, &env), TP_OK, "open");
    r->body();
    expect_status(D->synchronize(H), TP_OK, "synchronize");
    free_bufs();
    D->close(H);
    H = NULL;
    return NULL;
}

/* Run a test body on `ranks` ranks at once, each a thread with its own
 * device (only in Check's fork mode: a failing check exits the child). */
void with_devices(body_fn body, int ranks)
{
    if (via_api) {
        tp_config cfg = {0};
        tp_ctx *ctx = NULL;
        tp_status st;

        cfg.backend = "loopback";
        cfg.device = dev_name;
        cfg.world_size = ranks;
        st = tp_init(&cfg, &ctx);
        expect_status(st, TP_OK, "tp_init(device %s, %d ranks)", dev_name, ranks);
        st = tp_run(ctx, rank_main, (void *)body);
        expect_status(st, TP_OK, "tp_run");
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

/* Run a test body with a fresh device (one rank), on this thread in
 * vtable mode: there Check may run without fork (CUDA), where a failing
 * check must happen on the main thread. */
void with_device(body_fn body)
{
    if (via_api) {
        with_devices(body, 1);
    } else {
        vt_rank r = {body, 0, 1};
        vt_rank_main(&r);
    }
}

/* ---------------------------------------------------------- utilities */

double urand(void) /* uniform [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 4503599627370496.0 - 1.0;
}

float *hrand(size_t n, double scale)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(scale * urand());
    return p;
}

float *hzalloc(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof *p);
    ck_assert_ptr_nonnull(p);
    return p;
}

double *dzalloc(size_t n)
{
    double *p = calloc(n ? n : 1, sizeof *p);
    ck_assert_ptr_nonnull(p);
    return p;
}

/* Expect status `want` and a message containing each of the NULL-ended words. */
void expect_err(tp_status got, tp_status want, const char *what, ...)
{
    va_list ap;
    const char *w;

    ck_assert_msg(got == want, "%s: got %s, expected %s (message: %s)", what, tp_status_string(got),
                  tp_status_string(want), last_msg());
    va_start(ap, what);
    while ((w = va_arg(ap, const char *)))
        ck_assert_msg(strcasestr(last_msg(), w), "%s: message \"%s\" does not mention \"%s\"", what,
                      last_msg(), w);
    va_end(ap);
    clear_msg();
}

const int sizes[NSIZES] = {1, 13, 17, 33};
