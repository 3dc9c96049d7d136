/* gemm.c — GEMM through the device vtable vs the BLAS library called
 * directly, same buffers, same run: cblas_sgemm on host memory (the cpu
 * device), cublasGemmEx on CUDA memory (the cuda device; gemm_cublas.c,
 * built when meson finds CUDA). tp-bench links OpenBLAS for this
 * comparison only; libtp never does. */
#include "bench.h"

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
typedef enum direct_kind { DIRECT_NONE, DIRECT_CBLAS, DIRECT_CUBLAS } direct_kind;

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
        *why = "tp-bench was built without CUDA (meson found no cuBLAS): no direct cuBLAS comparison";
        return DIRECT_NONE;
#endif
    }
    *why = "device memory is neither host nor CUDA memory: no direct comparison";
    return DIRECT_NONE;
}

static tp_status gemm_rank(tp_comm *comm, int T, void *arg)
{
    gemm_run *g = arg;
    if (!bench_is_printer(comm))
        return tp_barrier(comm); /* other ranks wait; see the note printed */
    tp_device *dev = tp_comm_device(comm);
    bool host = tp_device_mem_kind(dev) == TP_MEM_HOST;
    const char *why = NULL;
    direct_kind direct = pick_direct(dev, g->dtype, &why);
    bool have_direct = direct != DIRECT_NONE;
    size_t esize = tp_dtype_size(g->dtype);
    const char *dtn = tp_dtype_name(g->dtype);
    tp_status st = TP_OK;
#ifdef TP_BENCH_HAVE_CUBLAS
    bench_cublas *cb = NULL;
    if (direct == DIRECT_CUBLAS) {
        /* same GPU as the vtable's buffers: check it on one of them */
        void *probe = NULL;
        st = tp_dev_alloc(dev, 256, &probe);
        if (st == TP_OK)
            st = tp_dev_synchronize(dev);
        if (st == TP_OK)
            st = bench_cublas_open(probe, &cb);
        tp_dev_free(dev, probe);
    }
#endif
    /* GPU rates print as TFLOP/s, CPU ones as GFLOP/s */
    bool tflops = !host;
    double unit = tflops ? 1e12 : 1e9;
    if (st == TP_OK) {
        if (host)
            printf("# tp-bench gemm: backend %s, device %s, %s row-major C = A B, %d BLAS thread%s, %d iters "
                   "(%d warm-up), vtable and direct alternating\n",
                   g->env->backend, g->env->device, dtn, g->threads, g->threads == 1 ? "" : "s", g->iters,
                   g->warmup);
        else
            printf("# tp-bench gemm: backend %s, device %s, %s row-major C = A B (f32 accumulation), %d iters "
                   "(%d warm-up), vtable and direct alternating; each timing: R back-to-back GEMMs, then a "
                   "synchronize, / R\n",
                   g->env->backend, g->env->device, dtn, g->iters, g->warmup);
#ifdef TP_BENCH_HAVE_CUBLAS
        if (cb)
            printf("# direct: cuBLAS on its own handle and stream, %s\n", bench_cublas_describe(cb));
#endif
        if (T > 1)
            printf("# note: %d ranks started; rank 0 measures while the others wait in a barrier (use --tp 1)\n",
                   T);
        if (why)
            printf("# note: %s\n", why);
        printf("# %6s %12s %12s %12s %12s %8s %12s%s\n", "m=n=k", "vtable(us)", tflops ? "vtable(TF/s)" : "vtable(GF/s)",
               "direct(us)", tflops ? "direct(TF/s)" : "direct(GF/s)", "ratio", "max|diff|", host ? "" : "      R");
        fflush(stdout);
    }

    for (int si = 0; si < g->o->n_gemm_sizes && st == TP_OK; si++) {
        int64_t N = g->o->gemm_sizes[si];
        size_t elems = (size_t)N * (size_t)N, bytes = elems * esize;
        float *h = malloc(elems * sizeof(float)), *h2 = malloc(elems * sizeof(float));
        void *hx = malloc(bytes);
        void *a = NULL, *b = NULL, *c = NULL, *c2 = NULL;
        int reps = 1;
        if (!h || !h2 || !hx)
            st = tp_set_error(TP_ERR_NO_MEMORY, "tp-bench gemm: no host memory for %" G_GINT64_FORMAT "^2 floats",
                              (gint64)N);
        if (st == TP_OK)
            st = tp_dev_alloc(dev, bytes, &a);
        if (st == TP_OK)
            st = tp_dev_alloc(dev, bytes, &b);
        if (st == TP_OK)
            st = tp_dev_alloc(dev, bytes, &c);
        if (st == TP_OK)
            st = tp_dev_alloc(dev, bytes, &c2);
        for (size_t i = 0; st == TP_OK && i < elems; i++)
            h[i] = tp_master_uniform(7, 1, i, 1.0f);
        if (st == TP_OK) {
            tp_host_convert(g->dtype, hx, TP_F32, h, elems);
            st = tp_dev_upload(dev, a, hx, bytes);
        }
        for (size_t i = 0; st == TP_OK && i < elems; i++)
            h[i] = tp_master_uniform(7, 2, i, 1.0f);
        if (st == TP_OK) {
            tp_host_convert(g->dtype, hx, TP_F32, h, elems);
            st = tp_dev_upload(dev, b, hx, bytes);
        }
        if (st == TP_OK)
            st = tp_dev_memset(dev, c, 0, bytes);
        if (st == TP_OK)
            st = tp_dev_memset(dev, c2, 0, bytes);
        if (st == TP_OK)
            st = tp_dev_synchronize(dev);

        tp_gemm_args ga;
        memset(&ga, 0, sizeof ga);
        ga.struct_size = sizeof ga;
        ga.dtype = g->dtype;
        ga.m = ga.n = ga.k = N;
        ga.alpha = 1.0f;
        ga.beta = 0.0f;
        ga.a = a;
        ga.lda = N;
        ga.b = b;
        ga.ldb = N;
        ga.c = c;
        ga.ldc = N;
        ga.batch = 1;

        double *tv = calloc((size_t)g->iters, sizeof(double)), *td = calloc((size_t)g->iters, sizeof(double));
        if (st == TP_OK && (!tv || !td))
            st = tp_set_error(TP_ERR_NO_MEMORY, "tp-bench gemm: no memory for timings");
        for (int it = 0; it < g->warmup + g->iters && st == TP_OK; it++) {
            bench_progress_update(&g->prog, "gemm %" G_GINT64_FORMAT " iteration %d/%d", (gint64)N, it + 1,
                                  g->warmup + g->iters);
            if (!host && it == g->warmup) {
                /* warm now: how many GEMMs make one timing */
                double c0 = bench_now();
                st = tp_dev_gemm(dev, &ga);
                if (st == TP_OK)
                    st = tp_dev_synchronize(dev);
                double one = bench_now() - c0;
                reps = one > 0 ? (int)ceil(GEMM_TARGET_S / one) : GEMM_MAX_REPS;
                reps = reps < 1 ? 1 : reps > GEMM_MAX_REPS ? GEMM_MAX_REPS : reps;
                if (st != TP_OK)
                    break;
            }
            /* alternate which goes first, so neither always finds warm caches */
            double t0 = 0, t1 = 0, t2 = 0, t3 = 0;
            for (int pass = 0; pass < 2 && st == TP_OK; pass++) {
                bool vtable = (pass == 0) == (it % 2 == 0);
                if (vtable) {
                    t0 = bench_now();
                    for (int r = 0; r < reps && st == TP_OK; r++)
                        st = tp_dev_gemm(dev, &ga);
                    if (st == TP_OK)
                        st = tp_dev_synchronize(dev);
                    t1 = bench_now();
                } else if (direct == DIRECT_CBLAS) {
                    openblas_set_num_threads(g->threads);
                    t2 = bench_now();
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)N, (int)N, 1.0f, a,
                                (int)N, b, (int)N, 0.0f, c2, (int)N);
                    t3 = bench_now();
                }
#ifdef TP_BENCH_HAVE_CUBLAS
                else if (direct == DIRECT_CUBLAS) {
                    st = tp_dev_synchronize(dev); /* the vtable's stream is idle while we time */
                    t2 = bench_now();
                    if (st == TP_OK)
                        st = bench_cublas_gemm(cb, g->dtype, N, a, b, c2, reps);
                    if (st == TP_OK)
                        st = bench_cublas_sync(cb);
                    t3 = bench_now();
                }
#endif
            }
            if (st != TP_OK)
                break;
            if (it >= g->warmup) {
                tv[it - g->warmup] = (t1 - t0) / reps;
                td[it - g->warmup] = (t3 - t2) / reps;
            }
        }
        double maxdiff = NAN;
        if (st == TP_OK && have_direct) {
            st = tp_dev_download(dev, hx, c, bytes);
            if (st == TP_OK) {
                tp_host_convert(TP_F32, h, g->dtype, hx, elems);
                st = tp_dev_download(dev, hx, c2, bytes);
            }
            if (st == TP_OK) {
                tp_host_convert(TP_F32, h2, g->dtype, hx, elems);
                maxdiff = 0;
                for (size_t i = 0; i < elems; i++) {
                    double d = fabs((double)h[i] - (double)h2[i]);
                    if (d > maxdiff || isnan(d))
                        maxdiff = d;
                }
            }
        }
        if (st == TP_OK) {
            bench_progress_done(&g->prog);
            double flops = 2.0 * (double)N * (double)N * (double)N;
            bench_summary sv = bench_summarize(tv, (size_t)g->iters);
            bench_summary sd = bench_summarize(td, (size_t)g->iters);
            double gv = flops / sv.median / 1e9, gd = have_direct ? flops / sd.median / 1e9 : NAN;
            double ratio = have_direct ? gv / gd : NAN;
            printf("  %6" G_GINT64_FORMAT " %12.1f %12.2f %12.1f %12.2f %8.3f %12.3g", (gint64)N, sv.median * 1e6,
                   gv * 1e9 / unit, have_direct ? sd.median * 1e6 : NAN, gd * 1e9 / unit, ratio, maxdiff);
            if (!host)
                printf(" %6d", reps);
            printf("\n");
            fflush(stdout);
            for (int impl = 0; impl < (have_direct ? 2 : 1); impl++) {
                bench_summary *s = impl ? &sd : &sv;
                bench_record *rec = bench_rec_new("gemm");
                bench_rec_str(rec, "backend", g->env->backend);
                bench_rec_str(rec, "device", g->env->device);
                bench_rec_int(rec, "ranks", T);
                bench_rec_str(rec, "impl", impl ? "direct" : "vtable");
                bench_rec_str(rec, "library", !impl ? NULL : direct == DIRECT_CBLAS ? "cblas_sgemm" : "cublasGemmEx");
                bench_rec_str(rec, "dtype", dtn);
                bench_rec_int(rec, "m", N);
                bench_rec_int(rec, "n", N);
                bench_rec_int(rec, "k", N);
                bench_rec_int(rec, "threads", g->threads);
                bench_rec_int(rec, "reps", reps);
                bench_rec_dbl(rec, "time_us", s->median * 1e6);
                bench_rec_dbl(rec, "time_min_us", s->min * 1e6);
                bench_rec_dbl(rec, "time_max_us", s->max * 1e6);
                bench_rec_dbl(rec, "gflops", impl ? gd : gv);
                if (!impl) {
                    bench_rec_dbl(rec, "ratio", ratio);
                    bench_rec_dbl(rec, "max_abs_diff", maxdiff);
                }
                bench_sink_emit(g->sink, rec);
                bench_rec_free(rec);
            }
        }
        free(tv);
        free(td);
        free(h);
        free(h2);
        free(hx);
        tp_dev_free(dev, a);
        tp_dev_free(dev, b);
        tp_dev_free(dev, c);
        tp_dev_free(dev, c2);
    }
#ifdef TP_BENCH_HAVE_CUBLAS
    bench_cublas_close(cb);
#endif
    tp_status st2 = tp_barrier(comm);
    return st != TP_OK ? st : st2;
}

int bench_cmd_gemm(const bench_opts *o)
{
    bench_env env;
    bench_env_init(&env, o);
    bench_sink sink;
    bench_sink_init(&sink, o->json_path, o->csv_path);
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
    bench_env_finish(&env);
    if (bench_sink_close(&sink) != 0) {
        fprintf(stderr, "tp-bench: %s\n", sink.err);
        if (rc == 0)
            rc = BENCH_EXIT_FAIL;
    }
    return rc;
}
