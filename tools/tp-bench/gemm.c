/* SPDX-License-Identifier: MIT */
/* gemm.c — GEMM through the device vtable vs the BLAS library called
 * directly, same buffers, same run: cblas_sgemm on host memory (the cpu
 * device), cublasGemmEx on CUDA memory (the cuda device; gemm_cublas.c,
 * built when meson finds CUDA). tp-bench links OpenBLAS for this
 * comparison only; libtp never does. */
#include "bench.h"

#include "tp-try.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#ifdef TP_BENCH_HAVE_CUBLAS
#include "gemm_cublas.h"
#endif

/* OpenBLAS's thread control (declared in its cblas.h). */
void openblas_set_num_threads(int num_threads);

/* Which library the direct comparison calls. */
typedef enum direct_kind {
    DIRECT_NONE,
    DIRECT_CBLAS,
    DIRECT_CUBLAS
} direct_kind;

/* On an asynchronous device one timing is GEMM_TARGET_S worth of
 * back-to-back GEMMs (at most GEMM_MAX_REPS) then one synchronize, so the
 * synchronize's cost is spread over many GEMMs. */
#define GEMM_TARGET_S 0.02
#define GEMM_MAX_REPS 1000

typedef struct gemm_run {
    const bench_opts *o;
    bench_env *env;
    bench_sink *sink;
    int iters, warmup, threads;
    tp_dtype dtype;
    bench_progress prog;
} gemm_run;

/* Which direct comparison this device allows; *why says why there is none. */
static direct_kind pick_direct(tp_device *dev, tp_dtype dt, const char **why)
{
    *why = NULL;
    switch (tp_device_mem_kind(dev)) {
        case TP_MEM_HOST:
            if (dt == TP_F32)
                return DIRECT_CBLAS;
            *why = "cblas_sgemm takes f32 only: no direct comparison for this dtype";
            return DIRECT_NONE;
        case TP_MEM_CUDA:
#ifdef TP_BENCH_HAVE_CUBLAS
            return DIRECT_CUBLAS;
#else
            *why = "tp-bench was built without CUDA (meson found no cuBLAS): no direct cuBLAS "
                   "comparison";
            return DIRECT_NONE;
#endif
    }
    *why = "device memory is neither host nor CUDA memory: no direct comparison";
    return DIRECT_NONE;
}

/* Rank 0's view of one gemm run: the device, the direct library, units. */
typedef struct gemm_rank_ctx {
    gemm_run *g;
    tp_device *dev;
    int T;
    bool host;          /* host memory: cblas; GPU rates print as TFLOP/s */
    direct_kind direct; /* DIRECT_NONE: why says why */
    const char *why;
    double unit; /* 1e12 (TFLOP/s) or 1e9 (GFLOP/s) */
#ifdef TP_BENCH_HAVE_CUBLAS
    bench_cublas *cb;
#endif
} gemm_rank_ctx;

/* One size: host staging, the four device buffers, per-iteration times. */
typedef struct gemm_size {
    int64_t N;
    size_t elems, bytes;
    float *h, *h2;        /* f32 host copies (inputs, then the two results) */
    void *hx;             /* the same in the GEMM's dtype */
    void *a, *b, *c, *c2; /* c: the vtable's result, c2: the direct one's */
    double *tv, *td;      /* vtable and direct time per GEMM, per timed iteration */
    int reps;             /* GEMMs per timing */
} gemm_size;

#ifdef TP_BENCH_HAVE_CUBLAS
/* cuBLAS on the same GPU as the vtable's buffers: check it on one of them. */
static tp_status open_cublas(gemm_rank_ctx *x)
{
    void *probe = NULL;
    tp_status st;
    TP_TRY_GOTO(tp_dev_alloc(x->dev, 256, &probe), st, done);
    TP_TRY_GOTO(tp_dev_synchronize(x->dev), st, done);
    st = bench_cublas_open(probe, &x->cb);
done:
    tp_dev_free(x->dev, probe);
    return st;
}
#endif

static void print_header(const gemm_rank_ctx *x)
{
    const gemm_run *g = x->g;
    const char *dtn = tp_dtype_name(g->dtype);
    bool tflops = !x->host;
    if (x->host)
        printf("# tp-bench gemm: backend %s, device %s, %s row-major C = A B, %d BLAS thread%s, %d "
               "iters "
               "(%d warm-up), vtable and direct alternating\n",
               g->env->backend, g->env->device, dtn, g->threads, g->threads == 1 ? "" : "s",
               g->iters, g->warmup);
    else
        printf("# tp-bench gemm: backend %s, device %s, %s row-major C = A B (f32 accumulation), "
               "%d iters "
               "(%d warm-up), vtable and direct alternating; each timing: R back-to-back GEMMs, "
               "then a "
               "synchronize, / R\n",
               g->env->backend, g->env->device, dtn, g->iters, g->warmup);
#ifdef TP_BENCH_HAVE_CUBLAS
    if (x->cb)
        printf("# direct: cuBLAS on its own handle and stream, %s\n", bench_cublas_describe(x->cb));
#endif
    if (x->T > 1)
        printf("# note: %d ranks started; rank 0 measures while the others wait in a barrier (use "
               "--tp 1)\n",
               x->T);
    if (x->why)
        printf("# note: %s\n", x->why);
    printf("# %6s %12s %12s %12s %12s %8s %12s%s\n", "m=n=k", "vtable(us)",
           tflops ? "vtable(TF/s)" : "vtable(GF/s)", "direct(us)",
           tflops ? "direct(TF/s)" : "direct(GF/s)", "ratio", "max|diff|",
           x->host ? "" : "      R");
    fflush(stdout);
}

static void size_free(const gemm_rank_ctx *x, gemm_size *s)
{
    free(s->tv);
    free(s->td);
    free(s->h);
    free(s->h2);
    free(s->hx);
    tp_dev_free(x->dev, s->a);
    tp_dev_free(x->dev, s->b);
    tp_dev_free(x->dev, s->c);
    tp_dev_free(x->dev, s->c2);
}

/* dst = uniform(-1, 1) values of master stream `id`, in the GEMM's dtype. */
static tp_status upload_uniform(const gemm_rank_ctx *x, gemm_size *s, void *dst, uint64_t id)
{
    for (size_t i = 0; i < s->elems; i++)
        s->h[i] = tp_master_uniform(7, id, i, 1.0f);
    tp_host_convert(x->g->dtype, s->hx, TP_F32, s->h, s->elems);
    return tp_dev_upload(x->dev, dst, s->hx, s->bytes);
}

/* Host and device buffers of an N x N GEMM, A and B filled, both Cs zero. */
static tp_status size_setup(const gemm_rank_ctx *x, gemm_size *s, int64_t N)
{
    tp_device *dev = x->dev;
    s->N = N;
    s->elems = (size_t)N * (size_t)N;
    s->bytes = s->elems * tp_dtype_size(x->g->dtype);
    s->reps = 1;
    tp_status st = TP_OK;
    s->h = bench_malloc(s->elems * sizeof(float), "gemm: the f32 host copy of A, B and C", &st);
    s->h2 = bench_malloc(s->elems * sizeof(float), "gemm: the f32 host copy of C (direct)", &st);
    s->hx = bench_malloc(s->bytes, "gemm: the host staging buffer", &st);
    TP_TRY(st);
    TP_TRY(tp_dev_alloc(dev, s->bytes, &s->a));
    TP_TRY(tp_dev_alloc(dev, s->bytes, &s->b));
    TP_TRY(tp_dev_alloc(dev, s->bytes, &s->c));
    TP_TRY(tp_dev_alloc(dev, s->bytes, &s->c2));
    TP_TRY(upload_uniform(x, s, s->a, 1));
    TP_TRY(upload_uniform(x, s, s->b, 2));
    TP_TRY(tp_dev_memset(dev, s->c, 0, s->bytes));
    TP_TRY(tp_dev_memset(dev, s->c2, 0, s->bytes));
    return tp_dev_synchronize(dev);
}

static tp_gemm_args size_args(const gemm_rank_ctx *x, const gemm_size *s)
{
    tp_gemm_args ga;
    memset(&ga, 0, sizeof ga);
    ga.struct_size = sizeof ga;
    ga.dtype = x->g->dtype;
    ga.m = ga.n = ga.k = s->N;
    ga.alpha = 1.0f;
    ga.beta = 0.0f;
    ga.a = s->a;
    ga.lda = s->N;
    ga.b = s->b;
    ga.ldb = s->N;
    ga.c = s->c;
    ga.ldc = s->N;
    ga.batch = 1;
    return ga;
}

/* Warm now: how many GEMMs make one timing on an asynchronous device. */
static tp_status calibrate_reps(const gemm_rank_ctx *x, gemm_size *s, const tp_gemm_args *ga)
{
    double c0 = bench_now();
    TP_TRY(tp_dev_gemm(x->dev, ga));
    TP_TRY(tp_dev_synchronize(x->dev));
    double one = bench_now() - c0;
    int reps = one > 0 ? (int)ceil(GEMM_TARGET_S / one) : GEMM_MAX_REPS;
    s->reps = reps < 1 ? 1 : reps > GEMM_MAX_REPS ? GEMM_MAX_REPS : reps;
    return TP_OK;
}

static tp_status time_vtable(const gemm_rank_ctx *x, const gemm_size *s, const tp_gemm_args *ga,
                             double *t0, double *t1)
{
    *t0 = bench_now();
    for (int r = 0; r < s->reps; r++)
        TP_TRY(tp_dev_gemm(x->dev, ga));
    TP_TRY(tp_dev_synchronize(x->dev));
    *t1 = bench_now();
    return TP_OK;
}

/* The direct library on the same buffers (nothing without one: 0 s). */
static tp_status time_direct(const gemm_rank_ctx *x, const gemm_size *s, double *t2, double *t3)
{
    int n = (int)s->N;
    if (x->direct == DIRECT_CBLAS) {
        openblas_set_num_threads(x->g->threads);
        *t2 = bench_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, s->a, n, s->b, n,
                    0.0f, s->c2, n);
        *t3 = bench_now();
    }
#ifdef TP_BENCH_HAVE_CUBLAS
    else if (x->direct == DIRECT_CUBLAS) {
        TP_TRY(tp_dev_synchronize(x->dev)); /* the vtable's stream is idle while we time */
        *t2 = bench_now();
        TP_TRY(bench_cublas_gemm(x->cb, x->g->dtype, s->N, s->a, s->b, s->c2, s->reps));
        TP_TRY(bench_cublas_sync(x->cb));
        *t3 = bench_now();
    }
#endif
    return TP_OK;
}

/* Warm-up and timed iterations, vtable and direct alternating which goes
 * first, so neither always finds warm caches. */
static tp_status time_iterations(gemm_rank_ctx *x, gemm_size *s)
{
    gemm_run *g = x->g;
    tp_gemm_args ga = size_args(x, s);
    for (int it = 0; it < g->warmup + g->iters; it++) {
        bench_progress_update(&g->prog, "gemm %" G_GINT64_FORMAT " iteration %d/%d", (gint64)s->N,
                              it + 1, g->warmup + g->iters);
        if (!x->host && it == g->warmup)
            TP_TRY(calibrate_reps(x, s, &ga));
        double t0 = 0, t1 = 0, t2 = 0, t3 = 0;
        for (int pass = 0; pass < 2; pass++) {
            if ((pass == 0) == (it % 2 == 0))
                TP_TRY(time_vtable(x, s, &ga, &t0, &t1));
            else
                TP_TRY(time_direct(x, s, &t2, &t3));
        }
        if (it >= g->warmup) {
            s->tv[it - g->warmup] = (t1 - t0) / s->reps;
            s->td[it - g->warmup] = (t3 - t2) / s->reps;
        }
    }
    return TP_OK;
}

/* max |vtable C - direct C| over the elements (NaN wins). */
static tp_status max_diff(const gemm_rank_ctx *x, gemm_size *s, double *out)
{
    TP_TRY(tp_dev_download(x->dev, s->hx, s->c, s->bytes));
    tp_host_convert(TP_F32, s->h, x->g->dtype, s->hx, s->elems);
    TP_TRY(tp_dev_download(x->dev, s->hx, s->c2, s->bytes));
    tp_host_convert(TP_F32, s->h2, x->g->dtype, s->hx, s->elems);
    double maxdiff = 0;
    for (size_t i = 0; i < s->elems; i++) {
        double d = fabs((double)s->h[i] - (double)s->h2[i]);
        if (d > maxdiff || isnan(d))
            maxdiff = d;
    }
    *out = maxdiff;
    return TP_OK;
}

/* The table row and one record per implementation. */
static void report_size(gemm_rank_ctx *x, const gemm_size *s, double maxdiff)
{
    gemm_run *g = x->g;
    bool have_direct = x->direct != DIRECT_NONE;
    int64_t N = s->N;
    bench_progress_done(&g->prog);
    double flops = 2.0 * (double)N * (double)N * (double)N;
    bench_summary sv = bench_summarize(s->tv, (size_t)g->iters);
    bench_summary sd = bench_summarize(s->td, (size_t)g->iters);
    double gv = flops / sv.median / 1e9, gd = have_direct ? flops / sd.median / 1e9 : NAN;
    double ratio = have_direct ? gv / gd : NAN;
    printf("  %6" G_GINT64_FORMAT " %12.1f %12.2f %12.1f %12.2f %8.3f %12.3g", (gint64)N,
           sv.median * 1e6, gv * 1e9 / x->unit, have_direct ? sd.median * 1e6 : NAN,
           gd * 1e9 / x->unit, ratio, maxdiff);
    if (!x->host)
        printf(" %6d", s->reps);
    printf("\n");
    fflush(stdout);
    for (int impl = 0; impl < (have_direct ? 2 : 1); impl++) {
        bench_summary *sm = impl ? &sd : &sv;
        bench_record *rec = bench_env_rec_new(g->env, "gemm", x->T);
        bench_rec_str(rec, "impl", impl ? "direct" : "vtable");
        bench_rec_str(rec, "library",
                      !impl                       ? NULL
                      : x->direct == DIRECT_CBLAS ? "cblas_sgemm"
                                                  : "cublasGemmEx");
        bench_rec_str(rec, "dtype", tp_dtype_name(g->dtype));
        bench_rec_int(rec, "m", N);
        bench_rec_int(rec, "n", N);
        bench_rec_int(rec, "k", N);
        bench_rec_int(rec, "threads", g->threads);
        bench_rec_int(rec, "reps", s->reps);
        bench_rec_times(rec, sm);
        bench_rec_dbl(rec, "gflops", impl ? gd : gv);
        if (!impl) {
            bench_rec_dbl(rec, "ratio", ratio);
            bench_rec_dbl(rec, "max_abs_diff", maxdiff);
        }
        bench_sink_emit(g->sink, rec);
        bench_rec_free(rec);
    }
}

/* Measure one N x N x N GEMM: set up, time, compare, report. */
static tp_status gemm_one_size(gemm_rank_ctx *x, int64_t N)
{
    gemm_size s;
    memset(&s, 0, sizeof s);
    double maxdiff = NAN;
    tp_status st;
    TP_TRY_GOTO(size_setup(x, &s, N), st, done);
    st = TP_OK;
    s.tv = bench_malloc((size_t)x->g->iters * sizeof(double), "gemm: the vtable timings", &st);
    s.td = bench_malloc((size_t)x->g->iters * sizeof(double), "gemm: the direct timings", &st);
    if (st != TP_OK)
        goto done;
    TP_TRY_GOTO(time_iterations(x, &s), st, done);
    if (x->direct != DIRECT_NONE)
        TP_TRY_GOTO(max_diff(x, &s, &maxdiff), st, done);
    report_size(x, &s, maxdiff);
done:
    size_free(x, &s);
    return st;
}

static tp_status gemm_rank(tp_comm *comm, int T, void *arg)
{
    gemm_rank_ctx x;
    memset(&x, 0, sizeof x);
    x.g = arg;
    if (!bench_is_printer(comm))
        return tp_barrier(comm); /* other ranks wait; see the note printed */
    x.dev = tp_comm_device(comm);
    x.T = T;
    x.host = tp_device_mem_kind(x.dev) == TP_MEM_HOST;
    x.direct = pick_direct(x.dev, x.g->dtype, &x.why);
    x.unit = x.host ? 1e9 : 1e12;
    tp_status st = TP_OK;
#ifdef TP_BENCH_HAVE_CUBLAS
    if (x.direct == DIRECT_CUBLAS)
        TP_TRY_GOTO(open_cublas(&x), st, done);
#endif
    print_header(&x);
    for (int si = 0; si < x.g->o->n_gemm_sizes; si++)
        TP_TRY_GOTO(gemm_one_size(&x, x.g->o->gemm_sizes[si]), st, done);
done:
#ifdef TP_BENCH_HAVE_CUBLAS
    bench_cublas_close(x.cb);
#endif
    /* the other ranks wait in this barrier, also after a failure */
    return bench_barrier_after(comm, st);
}

int bench_cmd_gemm(const bench_opts *o)
{
    bench_env env;
    bench_env_init(&env, o);
    bench_sink sink;
    bench_sink_init(&sink, o->json_path, o->csv_path);
    bench_env_attach(&env, &sink);
    gemm_run g;
    memset(&g, 0, sizeof g);
    g.o = o;
    g.env = &env;
    g.sink = &sink;
    g.iters = o->iters > 0 ? o->iters : 5;
    g.warmup = o->warmup >= 0 ? o->warmup : 1;
    g.threads = o->threads;
    g.dtype = o->gemm_dtype;
    if (!g.threads) {
        const char *e = getenv("TP_CPU_THREADS");
        g.threads = e && atoi(e) > 0 ? atoi(e) : 1;
    }
    bench_progress_start(&g.prog, o->quiet);
    int rc = bench_env_probe(&env);
    if (rc == 0) {
        int T = env.world;
        rc = bench_run_tps(&env, &T, 1, gemm_rank, &g);
    }
    bench_progress_done(&g.prog);
    return bench_cmd_finish(&env, &sink, rc);
}
