/* gemm.c — GEMM through the device vtable vs the BLAS library called
 * directly, same buffers, same run. tp-bench links OpenBLAS for this
 * comparison only; libtp never does. */
#include "bench.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

/* OpenBLAS's thread control (declared in its cblas.h). */
void openblas_set_num_threads(int num_threads);

typedef struct gemm_run {
    const bench_opts *o;
    bench_env *env;
    bench_sink *sink;
    int iters, warmup, threads;
    bench_progress prog;
} gemm_run;

static tp_status gemm_rank(tp_comm *comm, int T, void *arg)
{
    gemm_run *g = arg;
    if (!bench_is_printer(comm))
        return tp_barrier(comm); /* other ranks wait; see the note printed */
    tp_device *dev = tp_comm_device(comm);
    bool host = tp_device_mem_kind(dev) == TP_MEM_HOST;
    tp_status st = TP_OK;
    printf("# tp-bench gemm: backend %s, device %s, f32 row-major C = A B, %d BLAS thread%s, %d iters "
           "(%d warm-up), vtable and direct alternating\n",
           g->env->backend, g->env->device, g->threads, g->threads == 1 ? "" : "s", g->iters, g->warmup);
    if (T > 1)
        printf("# note: %d ranks started; rank 0 measures while the others wait in a barrier (use --tp 1)\n", T);
    if (!host)
        printf("# note: device memory is not host memory: no direct cblas_sgemm comparison\n");
    printf("# %6s %12s %12s %12s %12s %8s %12s\n", "m=n=k", "vtable(us)", "vtable(GF/s)", "direct(us)",
           "direct(GF/s)", "ratio", "max|diff|");
    fflush(stdout);

    for (int si = 0; si < g->o->n_gemm_sizes && st == TP_OK; si++) {
        int64_t N = g->o->gemm_sizes[si];
        size_t elems = (size_t)N * (size_t)N, bytes = elems * sizeof(float);
        float *h = malloc(bytes), *h2 = malloc(bytes);
        void *a = NULL, *b = NULL, *c = NULL, *c2 = NULL;
        if (!h || !h2)
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
        if (st == TP_OK)
            st = tp_dev_upload(dev, a, h, bytes);
        for (size_t i = 0; st == TP_OK && i < elems; i++)
            h[i] = tp_master_uniform(7, 2, i, 1.0f);
        if (st == TP_OK)
            st = tp_dev_upload(dev, b, h, bytes);
        if (st == TP_OK)
            st = tp_dev_memset(dev, c, 0, bytes);
        if (st == TP_OK)
            st = tp_dev_memset(dev, c2, 0, bytes);
        if (st == TP_OK)
            st = tp_dev_synchronize(dev);

        tp_gemm_args ga;
        memset(&ga, 0, sizeof ga);
        ga.struct_size = sizeof ga;
        ga.dtype = TP_F32;
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
            /* alternate which goes first, so neither always finds warm caches */
            double t0 = 0, t1 = 0, t2 = 0, t3 = 0;
            for (int pass = 0; pass < 2 && st == TP_OK; pass++) {
                bool vtable = (pass == 0) == (it % 2 == 0);
                if (vtable) {
                    t0 = bench_now();
                    st = tp_dev_gemm(dev, &ga);
                    if (st == TP_OK)
                        st = tp_dev_synchronize(dev);
                    t1 = bench_now();
                } else if (host) {
                    openblas_set_num_threads(g->threads);
                    t2 = bench_now();
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)N, (int)N, 1.0f, a,
                                (int)N, b, (int)N, 0.0f, c2, (int)N);
                    t3 = bench_now();
                }
            }
            if (st != TP_OK)
                break;
            if (it >= g->warmup) {
                tv[it - g->warmup] = t1 - t0;
                td[it - g->warmup] = t3 - t2;
            }
        }
        double maxdiff = NAN;
        if (st == TP_OK && host) {
            st = tp_dev_download(dev, h, c, bytes);
            memcpy(h2, c2, bytes);
            maxdiff = 0;
            for (size_t i = 0; i < elems; i++) {
                double d = fabs((double)h[i] - (double)h2[i]);
                if (d > maxdiff || isnan(d))
                    maxdiff = d;
            }
        }
        if (st == TP_OK) {
            bench_progress_done(&g->prog);
            double flops = 2.0 * (double)N * (double)N * (double)N;
            bench_summary sv = bench_summarize(tv, (size_t)g->iters);
            bench_summary sd = bench_summarize(td, (size_t)g->iters);
            double gv = flops / sv.median / 1e9, gd = host ? flops / sd.median / 1e9 : NAN;
            double ratio = host ? gv / gd : NAN;
            printf("  %6" G_GINT64_FORMAT " %12.1f %12.2f %12.1f %12.2f %8.3f %12.3g\n", (gint64)N, sv.median * 1e6,
                   gv, host ? sd.median * 1e6 : NAN, gd, ratio, maxdiff);
            fflush(stdout);
            for (int impl = 0; impl < (host ? 2 : 1); impl++) {
                bench_summary *s = impl ? &sd : &sv;
                bench_record *rec = bench_rec_new("gemm");
                bench_rec_str(rec, "backend", g->env->backend);
                bench_rec_str(rec, "device", g->env->device);
                bench_rec_int(rec, "ranks", T);
                bench_rec_str(rec, "impl", impl ? "direct" : "vtable");
                bench_rec_int(rec, "m", N);
                bench_rec_int(rec, "n", N);
                bench_rec_int(rec, "k", N);
                bench_rec_int(rec, "threads", g->threads);
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
        tp_dev_free(dev, a);
        tp_dev_free(dev, b);
        tp_dev_free(dev, c);
        tp_dev_free(dev, c2);
    }
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
