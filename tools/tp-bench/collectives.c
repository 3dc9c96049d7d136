/* SPDX-License-Identifier: MIT */
/* collectives.c — nccl-tests-like sweep of the collectives, plus the
 * memcpy reference measured in the same run. */
#include "bench.h"
#include "pingpong.h"

#include "tp-try.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------- memcpy reference */

/* T threads each copy `bytes` from their own source to their own
 * destination at the same time: the same bytes read and written per rank
 * as a one-pass all-reduce. Time of an iteration = from the first thread's
 * start to the last thread's end (with more threads than cores, the
 * threads' own durations would leave out the time they wait for a core). */
typedef struct mc_shared {
    int T, iters, warmup, nsizes;
    const size_t *sizes;
    size_t maxbytes;
    atomic_int arrived;
    atomic_int generation;
    double *t_start, *t_end; /* [size][iter][thread] */
    atomic_int failed;
} mc_shared;

typedef struct mc_thread {
    mc_shared *sh;
    int tid;
} mc_thread;

/* Sense-reversing spin barrier that yields, so T > cores still progresses. */
static void mc_barrier(mc_shared *sh)
{
    int gen = atomic_load_explicit(&sh->generation, memory_order_acquire);
    if (atomic_fetch_add_explicit(&sh->arrived, 1, memory_order_acq_rel) == sh->T - 1) {
        atomic_store_explicit(&sh->arrived, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&sh->generation, 1, memory_order_release);
        return;
    }
    for (int spins = 0; atomic_load_explicit(&sh->generation, memory_order_acquire) == gen; spins++)
        if (spins > 64)
            sched_yield();
}

static void *mc_main(void *a)
{
    mc_thread *t = a;
    mc_shared *sh = t->sh;
    char *src = malloc(sh->maxbytes), *dst = malloc(sh->maxbytes);
    if (!src || !dst)
        atomic_store(&sh->failed, 1);
    else {
        memset(src, 0x5a + t->tid, sh->maxbytes); /* first touch by the copying thread */
        memset(dst, 0, sh->maxbytes);
    }
    for (int s = 0; s < sh->nsizes; s++) {
        for (int it = 0; it < sh->warmup + sh->iters; it++) {
            mc_barrier(sh);
            double t0 = bench_now();
            if (src && dst)
                memcpy(dst, src, sh->sizes[s]);
            double t1 = bench_now();
            if (it >= sh->warmup) {
                size_t k = ((size_t)s * sh->iters + (it - sh->warmup)) * sh->T + t->tid;
                sh->t_start[k] = t0;
                sh->t_end[k] = t1;
            }
        }
    }
    free(src);
    free(dst);
    return NULL;
}

/* Median copy time per size for T concurrent threads (T = 1: the calling
 * thread alone). Returns 0, or -1 when memory or threads ran out. */
static int memcpy_sweep(int T, const size_t *sizes, int nsizes, int iters, int warmup,
                        double *median_s)
{
    mc_shared sh;
    memset(&sh, 0, sizeof sh);
    sh.T = T;
    sh.iters = iters;
    sh.warmup = warmup;
    sh.nsizes = nsizes;
    sh.sizes = sizes;
    for (int s = 0; s < nsizes; s++)
        if (sizes[s] > sh.maxbytes)
            sh.maxbytes = sizes[s];
    sh.t_start = calloc((size_t)nsizes * iters * T, sizeof(double));
    sh.t_end = calloc((size_t)nsizes * iters * T, sizeof(double));
    mc_thread *th = calloc((size_t)T, sizeof *th);
    pthread_t *pt = calloc((size_t)T, sizeof *pt);
    if (!sh.t_start || !sh.t_end || !th || !pt) {
        free(sh.t_start);
        free(sh.t_end);
        free(th);
        free(pt);
        return -1;
    }
    int started = 0;
    for (int i = 0; i < T; i++) {
        th[i].sh = &sh;
        th[i].tid = i;
        if (i == 0)
            continue; /* the calling thread is thread 0 */
        if (pthread_create(&pt[i], NULL, mc_main, &th[i]) != 0) {
            atomic_store(&sh.failed, 1);
            break;
        }
        started++;
    }
    int rc = 0;
    if (started == T - 1) {
        mc_main(&th[0]);
    } else {
        rc = -1;
    }
    for (int i = 1; i <= started; i++)
        pthread_join(pt[i], NULL);
    if (atomic_load(&sh.failed))
        rc = -1;
    if (rc == 0) {
        double *v = malloc((size_t)iters * sizeof *v);
        if (!v)
            rc = -1;
        for (int s = 0; s < nsizes && v; s++) {
            for (int it = 0; it < iters; it++) {
                size_t k0 = ((size_t)s * iters + it) * T;
                double first = sh.t_start[k0], last = sh.t_end[k0];
                for (int t = 1; t < T; t++) {
                    if (sh.t_start[k0 + t] < first)
                        first = sh.t_start[k0 + t];
                    if (sh.t_end[k0 + t] > last)
                        last = sh.t_end[k0 + t];
                }
                v[it] = last - first;
            }
            median_s[s] = bench_summarize(v, (size_t)iters).median;
        }
        if (!v)
            rc = -1;
        free(v);
    }
    free(sh.t_start);
    free(sh.t_end);
    free(th);
    free(pt);
    return rc;
}

/* ---------------------------------------------------------- the sweep */

typedef struct coll_run {
    bench_env *env;
    const bench_opts *o;
    bench_sink *sink;
    GArray *samples;
    bool print;
    size_t *sizes;
    int nsizes;
    int iters, warmup;
    double *copy1_s, *copyT_s; /* per size, NULL if not measured */
    double pp_s;               /* cache-line round trip (pingpong.c), 0 if not measured */
    bool corrupt;
    bool raw;
    bool header_done;
    uint64_t wrong_total;
    bench_progress prog;
} coll_run;

/* Check pattern: small integers, so sums over up to 64 ranks are exact in
 * f32 in any order and the comparison can be exact. */
static inline float pattern(int rank, size_t i)
{
    return (float)((int)(((size_t)rank * 131u + i * 7u) % 17u) - 8);
}

static const char *redop_name(int op)
{
    return (op == TP_OP_ALL_REDUCE || op == TP_OP_REDUCE_SCATTER) ? "sum" : "none";
}

static tp_status run_op(tp_comm *comm, int op, const void *send, void *recv, void *buf_bcast,
                        size_t per, size_t total)
{
    switch (op) {
        case TP_OP_ALL_REDUCE: return tp_all_reduce(comm, send, recv, total, TP_F32, TP_SUM);
        case TP_OP_ALL_GATHER: return tp_all_gather(comm, send, recv, per, TP_F32);
        case TP_OP_REDUCE_SCATTER: return tp_reduce_scatter(comm, send, recv, per, TP_F32, TP_SUM);
        case TP_OP_BROADCAST: return tp_broadcast(comm, buf_bcast, total, TP_F32, 0);
    }
    return tp_set_error(TP_ERR_INTERNAL, "tp-bench: op %d not swept", op);
}

/* Fill the host input of `op` for rank r and, if expect is not NULL, the
 * expected output. */
static void make_reference(int op, int r, int T, size_t per, size_t total, float *in, float *expect)
{
    switch (op) {
        case TP_OP_ALL_REDUCE:
            for (size_t i = 0; i < total; i++) {
                in[i] = pattern(r, i);
                if (expect) {
                    float s = 0;
                    for (int q = 0; q < T; q++)
                        s += pattern(q, i);
                    expect[i] = s;
                }
            }
            break;
        case TP_OP_ALL_GATHER:
            for (size_t i = 0; i < per; i++)
                in[i] = pattern(r, i);
            for (int q = 0; expect && q < T; q++)
                for (size_t i = 0; i < per; i++)
                    expect[(size_t)q * per + i] = pattern(q, i);
            break;
        case TP_OP_REDUCE_SCATTER:
            for (size_t i = 0; i < total; i++)
                in[i] = pattern(r, i);
            for (size_t i = 0; expect && i < per; i++) {
                float s = 0;
                for (int q = 0; q < T; q++)
                    s += pattern(q, (size_t)r * per + i);
                expect[i] = s;
            }
            break;
        case TP_OP_BROADCAST:
            for (size_t i = 0; i < total; i++) {
                in[i] =
                    r == 0 ? pattern(0, i) : 1000.0f + pattern(r, i); /* non-roots start wrong */
                if (expect)
                    expect[i] = pattern(0, i);
            }
            break;
    }
}

/* Sum a count over ranks exactly through f32: three 16-bit parts, each
 * summing to < 64 * 65536 < 2^24. */
static tp_status sum_count(tp_comm *comm, uint64_t v, uint64_t *out)
{
    float parts[3] = {(float)(v & 0xffff), (float)((v >> 16) & 0xffff),
                      (float)((v >> 32) & 0xffff)};
    tp_device *dev = tp_comm_device(comm);
    void *d = NULL;
    tp_status st;
    TP_TRY_GOTO(tp_dev_alloc(dev, sizeof parts, &d), st, done);
    TP_TRY_GOTO(tp_dev_upload(dev, d, parts, sizeof parts), st, done);
    TP_TRY_GOTO(tp_all_reduce(comm, d, d, 3, TP_F32, TP_SUM), st, done);
    TP_TRY_GOTO(tp_dev_download(dev, parts, d, sizeof parts), st, done);
    *out = (uint64_t)parts[0] + ((uint64_t)parts[1] << 16) + ((uint64_t)parts[2] << 32);
done:
    tp_dev_free(dev, d);
    return st;
}

/* Element-wise max over ranks of per-iteration times (µs, f32). */
static tp_status max_times(tp_comm *comm, float *us, int n)
{
    tp_device *dev = tp_comm_device(comm);
    void *d = NULL;
    size_t bytes = (size_t)n * sizeof(float);
    tp_status st;
    TP_TRY_GOTO(tp_dev_alloc(dev, bytes, &d), st, done);
    TP_TRY_GOTO(tp_dev_upload(dev, d, us, bytes), st, done);
    TP_TRY_GOTO(tp_all_reduce(comm, d, d, (size_t)n, TP_F32, TP_MAX), st, done);
    st = tp_dev_download(dev, us, d, bytes);
done:
    tp_dev_free(dev, d);
    return st;
}

static void print_header(const coll_run *c, int op, int T)
{
    printf("#\n# %s, %d rank%s, backend %s, device %s, %d iters (%d warm-up)%s\n",
           bench_op_name(op), T, T == 1 ? "" : "s", c->env->backend, c->env->device, c->iters,
           c->warmup, c->o->check ? ", checked" : "");
    printf("# %12s %12s %5s %6s %10s %10s %10s %11s %11s %8s", "size", "count", "type", "redop",
           "min(us)", "time(us)", "max(us)", "algbw(GB/s)", "busbw(GB/s)", "#wrong");
    if (op == TP_OP_ALL_REDUCE && c->copyT_s)
        printf(" %10s %8s", "copyT(us)", "t/copyT");
    if (c->raw)
        printf(" %10s %9s", "raw(us)", "tp/raw bw");
    if (op == TP_OP_ALL_REDUCE && c->pp_s > 0)
        printf(" %9s %7s", "pp(us)", "t/pp");
    printf("\n");
    fflush(stdout);
}

/* One rank's view of a sweep at T ranks, and its timing scratch. */
typedef struct coll_rank_ctx {
    coll_run *c;
    tp_comm *comm;
    tp_device *dev;
    int r, T;
    bool printer;       /* records results */
    bool show;          /* prints the table */
    float *us, *raw_us; /* per timed iteration, µs */
    double *dv;         /* seconds, for bench_summarize */
    bench_place place;  /* where the T ranks run */
} coll_rank_ctx;

/* One op's buffers, sized for its largest message. */
typedef struct coll_bufs {
    void *send, *recv;
    float *h_in, *h_expect, *h_got; /* the last two with --check only */
} coll_bufs;

/* One op at one size: element counts (bench_op_counts) and outcome. */
typedef struct coll_size {
    int op, s; /* s: index into c->sizes */
    size_t per, total, bytes;
    size_t sn, rn;      /* elements sent, received */
    void *bbuf;         /* broadcast's buffer (the send buffer), else NULL */
    bool have_raw;      /* --compare-raw timed the engine's own call */
    uint64_t wrong_all; /* wrong elements over all ranks and iterations */
} coll_size;

static const size_t coll_elt = sizeof(float);

static void coll_bufs_free(const coll_rank_ctx *x, coll_bufs *b)
{
    tp_dev_free(x->dev, b->send);
    tp_dev_free(x->dev, b->recv);
    free(b->h_in);
    free(b->h_expect);
    free(b->h_got);
}

static tp_status coll_bufs_setup(const coll_rank_ctx *x, int op, coll_bufs *b)
{
    const coll_run *c = x->c;
    size_t max_send = 0, max_recv = 0;
    for (int s = 0; s < c->nsizes; s++) {
        size_t per, total;
        bench_op_counts(op, x->T, c->sizes[s], coll_elt, &per, &total, NULL);
        size_t sn = op == TP_OP_ALL_GATHER ? per : total;
        size_t rn = op == TP_OP_REDUCE_SCATTER ? per : total;
        if (sn > max_send)
            max_send = sn;
        if (rn > max_recv)
            max_recv = rn;
    }
    TP_TRY(tp_dev_alloc(x->dev, max_send * coll_elt, &b->send));
    TP_TRY(tp_dev_alloc(x->dev, max_recv * coll_elt, &b->recv));
    size_t hmax = max_send > max_recv ? max_send : max_recv;
    b->h_in = malloc(hmax * coll_elt);
    if (c->o->check) {
        b->h_expect = malloc(hmax * coll_elt);
        b->h_got = malloc(hmax * coll_elt);
    }
    if (!b->h_in || (c->o->check && (!b->h_expect || !b->h_got)))
        return tp_set_error(TP_ERR_NO_MEMORY,
                            "tp-bench: no host memory for %zu-byte check buffers of %s",
                            hmax * coll_elt, bench_op_name(op));
    return tp_dev_memset(x->dev, b->recv, 0, max_recv * coll_elt);
}

/* The collective, then a synchronize: what one timing covers. */
static tp_status run_op_synced(coll_rank_ctx *x, int op, const coll_bufs *b, const coll_size *z)
{
    TP_TRY(run_op(x->comm, op, b->send, b->recv, z->bbuf, z->per, z->total));
    return tp_dev_synchronize(x->dev);
}

/* Timed iteration it: barrier, the collective, synchronize; then the test
 * hook and --check on this rank's result. */
static tp_status time_one(coll_rank_ctx *x, const coll_bufs *b, const coll_size *z, int it,
                          uint64_t *wrong)
{
    const bench_opts *o = x->c->o;
    int op = z->op;
    if (op == TP_OP_BROADCAST && o->check) /* non-roots start wrong again */
        TP_TRY(tp_dev_upload(x->dev, b->send, b->h_in, z->sn * coll_elt));
    TP_TRY(tp_barrier(x->comm));
    double t0 = bench_now();
    tp_status st = run_op_synced(x, op, b, z);
    x->us[it] = (float)((bench_now() - t0) * 1e6);
    TP_TRY(st);
    const void *result = op == TP_OP_BROADCAST ? b->send : b->recv;
    if (x->c->corrupt && x->r == x->T - 1) {
        /* test hook: damage one element of this rank's result */
        float bad = 12345.0f;
        TP_TRY(tp_dev_upload(x->dev, (void *)result, &bad, sizeof bad));
    }
    if (o->check) {
        TP_TRY(tp_dev_download(x->dev, b->h_got, result, z->rn * coll_elt));
        for (size_t i = 0; i < z->rn; i++)
            *wrong += b->h_got[i] != b->h_expect[i];
    }
    return TP_OK;
}

/* --compare-raw: the engine's own call on the same buffers. */
static tp_status time_raw(coll_rank_ctx *x, const coll_bufs *b, coll_size *z)
{
    const coll_run *c = x->c;
    for (int it = 0; c->raw && it < c->warmup + c->iters; it++) {
        TP_TRY(tp_barrier(x->comm));
        double t0 = bench_now();
        tp_status st =
            bench_raw_collective(x->comm, z->op, z->op == TP_OP_BROADCAST ? z->bbuf : b->send,
                                 b->recv, z->per, z->total);
        double t1 = bench_now();
        if (it >= c->warmup)
            x->raw_us[it - c->warmup] = (float)((t1 - t0) * 1e6);
        z->have_raw = true;
        TP_TRY(st);
    }
    return TP_OK;
}

/* Printer only: the table row, the record, the fit sample. */
static void report_size(coll_rank_ctx *x, const coll_size *z)
{
    coll_run *c = x->c;
    const bench_opts *o = c->o;
    int op = z->op, T = x->T, nit = c->iters;
    for (int it = 0; it < nit; it++)
        x->dv[it] = x->us[it] * 1e-6;
    bench_summary sm = bench_summarize(x->dv, (size_t)nit);
    double algbw = bench_algbw_gbps((double)z->bytes, sm.median);
    double busbw = bench_busbw_gbps(op, T, (double)z->bytes, sm.median);
    c->wrong_total += z->wrong_all;
    bench_progress_done(&c->prog);
    if (x->show)
        printf("  %12zu %12zu %5s %6s %10.2f %10.2f %10.2f %11.3f %11.3f %8" G_GUINT64_FORMAT,
               z->bytes, z->total, "f32", redop_name(op), sm.min * 1e6, sm.median * 1e6,
               sm.max * 1e6, algbw, busbw, (guint64)z->wrong_all);
    bench_record *rec = bench_env_rec_new(c->env, "collective", T);
    bench_rec_str(rec, "op", bench_op_name(op));
    bench_rec_str(rec, "dtype", "f32");
    bench_rec_str(rec, "redop", redop_name(op));
    bench_rec_int(rec, "bytes", (int64_t)z->bytes);
    bench_rec_int(rec, "count", (int64_t)z->total);
    bench_rec_times(rec, &sm);
    bench_rec_dbl(rec, "algbw_gbps", algbw);
    bench_rec_dbl(rec, "busbw_gbps", busbw);
    bench_rec_int(rec, "wrong", (int64_t)z->wrong_all);
    bench_rec_bool(rec, "checked", o->check);
    bench_rec_int(rec, "iters", nit);
    bench_rec_int(rec, "warmup", c->warmup);
    bench_rec_place(rec, &x->place);
    if (op == TP_OP_ALL_REDUCE && c->copyT_s) {
        double ratio = sm.median / c->copyT_s[z->s];
        if (x->show)
            printf(" %10.2f %8.2f", c->copyT_s[z->s] * 1e6, ratio);
        bench_rec_dbl(rec, "copy_time_us", c->copyT_s[z->s] * 1e6);
        bench_rec_dbl(rec, "copy_ratio", ratio);
    }
    if (z->have_raw) {
        for (int it = 0; it < nit; it++)
            x->dv[it] = x->raw_us[it] * 1e-6;
        bench_summary rs = bench_summarize(x->dv, (size_t)nit);
        double raw_bw = bench_busbw_gbps(op, T, (double)z->bytes, rs.median);
        if (x->show)
            printf(" %10.2f %9.3f", rs.median * 1e6, raw_bw > 0 ? busbw / raw_bw : 0.0);
        bench_rec_dbl(rec, "raw_time_us", rs.median * 1e6);
        bench_rec_dbl(rec, "raw_busbw_gbps", raw_bw);
    }
    if (op == TP_OP_ALL_REDUCE && c->pp_s > 0 && z->bytes <= 4096) { /* next to small sizes */
        if (x->show)
            printf(" %9.3f %7.2f", c->pp_s * 1e6, sm.median / c->pp_s);
        bench_rec_dbl(rec, "pingpong_us", c->pp_s * 1e6);
        bench_rec_dbl(rec, "pingpong_ratio", sm.median / c->pp_s);
    }
    if (x->show) {
        printf("\n");
        fflush(stdout);
    }
    bench_sink_emit(c->sink, rec);
    bench_rec_free(rec);
    if (c->samples) {
        bench_placed_sample smp = {{op, T, (double)z->bytes, sm.median}, x->place};
        g_array_append_val(c->samples, smp);
    }
}

/* Op at size index s on every rank: warm-up, timed iterations, the raw
 * comparison, then the maxima and wrong counts over ranks. */
static tp_status coll_one_size(coll_rank_ctx *x, const coll_bufs *b, int op, int s)
{
    coll_run *c = x->c;
    coll_size z;
    memset(&z, 0, sizeof z);
    z.op = op;
    z.s = s;
    bench_op_counts(op, x->T, c->sizes[s], coll_elt, &z.per, &z.total, &z.bytes);
    z.sn = op == TP_OP_ALL_GATHER ? z.per : z.total;
    z.rn = op == TP_OP_REDUCE_SCATTER ? z.per : z.total;
    z.bbuf = op == TP_OP_BROADCAST ? b->send : NULL;
    if (x->printer) {
        char sz[32];
        bench_progress_update(&c->prog, "T=%d %s %s", x->T, bench_op_name(op),
                              bench_format_size(z.bytes, sz, sizeof sz));
    }
    make_reference(op, x->r, x->T, z.per, z.total, b->h_in, c->o->check ? b->h_expect : NULL);
    TP_TRY(tp_dev_upload(x->dev, b->send, b->h_in, z.sn * coll_elt));
    for (int it = 0; it < c->warmup; it++)
        TP_TRY(run_op(x->comm, op, b->send, b->recv, z.bbuf, z.per, z.total));
    uint64_t wrong = 0;
    for (int it = 0; it < c->iters; it++)
        TP_TRY(time_one(x, b, &z, it, &wrong));
    TP_TRY(time_raw(x, b, &z));
    TP_TRY(max_times(x->comm, x->us, c->iters));
    if (z.have_raw)
        TP_TRY(max_times(x->comm, x->raw_us, c->iters));
    TP_TRY(sum_count(x->comm, wrong, &z.wrong_all));
    if (x->printer)
        report_size(x, &z);
    return TP_OK;
}

static tp_status coll_one_op(coll_rank_ctx *x, int op)
{
    coll_run *c = x->c;
    const bench_opts *o = c->o;
    coll_bufs b;
    memset(&b, 0, sizeof b);
    tp_status st;
    TP_TRY_GOTO(coll_bufs_setup(x, op, &b), st, done);
    if (x->show && !c->header_done) {
        printf("# tp-bench collectives: backend %s, device %s, f32, sizes %zu..%zu x%g\n",
               c->env->backend, c->env->device, o->minbytes, o->maxbytes, o->stepfactor);
        c->header_done = true;
    }
    if (x->show)
        print_header(c, op, x->T);
    for (int s = 0; s < c->nsizes; s++)
        TP_TRY_GOTO(coll_one_size(x, &b, op, s), st, done);
done:
    coll_bufs_free(x, &b);
    return st;
}

/* The ping-pong reference (pingpong.c) into c->pp_s, printed. */
static void pp_measure(coll_run *c, bool procs)
{
    c->pp_s = bench_pingpong(procs, 101, 200);
    if (c->pp_s > 0 && c->print)
        printf("#\n# ping-pong reference (same run): one cache line's round trip between 2 %s "
               "on 2 CPUs: %.3f us\n",
               procs ? "processes" : "threads", c->pp_s * 1e6);
}

/* Ranks in several processes: the printing process measures the ping-pong
 * between two processes while the others wait in a barrier. */
static tp_status pp_processes(coll_rank_ctx *x)
{
    coll_run *c = x->c;
    if (c->env->single_process || x->T < 2 || c->o->no_memcpy ||
        !(c->o->op_mask & (1u << TP_OP_ALL_REDUCE)))
        return TP_OK;
    if (x->printer)
        pp_measure(c, true);
    return tp_barrier(x->comm);
}

static tp_status coll_rank(tp_comm *comm, int T, void *arg)
{
    coll_rank_ctx x;
    memset(&x, 0, sizeof x);
    x.c = arg;
    x.comm = comm;
    x.dev = tp_comm_device(comm);
    x.r = tp_comm_rank(comm);
    x.T = T;
    x.printer = bench_is_printer(comm);
    x.show = x.printer && x.c->print;
    int nit = x.c->iters;
    x.us = malloc((size_t)nit * sizeof *x.us);
    x.raw_us = malloc((size_t)nit * sizeof *x.raw_us);
    x.dv = malloc((size_t)nit * sizeof *x.dv);
    tp_status st = TP_OK;
    if (!x.us || !x.raw_us || !x.dv) {
        st = tp_set_error(TP_ERR_NO_MEMORY, "tp-bench: no memory for %d timings", nit);
        goto done;
    }
    TP_TRY_GOTO(bench_place_get(comm, &x.place), st, done);
    TP_TRY_GOTO(pp_processes(&x), st, done);
    if (x.show)
        printf("# placement: %d node%s, %d rank%s on rank 0's node, link %s\n", x.place.nodes,
               x.place.nodes == 1 ? "" : "s", x.place.ranks_per_node,
               x.place.ranks_per_node == 1 ? "" : "s", x.place.link);
    for (int op = 0; op < TP_OP_COUNT; op++)
        if ((x.c->o->op_mask & (1u << op)) && bench_op_name(op))
            TP_TRY_GOTO(coll_one_op(&x, op), st, done);
done:
    free(x.us);
    free(x.raw_us);
    free(x.dv);
    return st;
}

static int make_sizes(const bench_opts *o, size_t **out)
{
    int n = 0, cap = 64;
    size_t *v = malloc((size_t)cap * sizeof *v);
    for (double s = (double)o->minbytes; v && s <= (double)o->maxbytes + 0.5;) {
        size_t b = (size_t)(s + 0.5);
        if (n == cap) {
            size_t *bigger = realloc(v, (size_t)cap * 2 * sizeof *v);
            if (!bigger) {
                free(v);
                v = NULL;
                break;
            }
            v = bigger;
            cap *= 2;
        }
        if (n == 0 || b != v[n - 1])
            v[n++] = b;
        s *= o->stepfactor;
    }
    *out = v;
    return v ? n : -1;
}

static void emit_memcpy(coll_run *c, int T, int threads, const double *med)
{
    for (int s = 0; s < c->nsizes; s++) {
        bench_record *rec = bench_env_rec_new(c->env, "memcpy", T);
        bench_rec_int(rec, "threads", threads);
        bench_rec_int(rec, "bytes", (int64_t)c->sizes[s]);
        bench_rec_dbl(rec, "time_us", med[s] * 1e6);
        bench_rec_dbl(rec, "gbps",
                      med[s] > 0 ? (double)threads * (double)c->sizes[s] / med[s] / 1e9 : 0.0);
        bench_sink_emit(c->sink, rec);
        bench_rec_free(rec);
    }
}

/* The memcpy reference at T threads (and 1): measured here, outside
 * tp_run, so idle ranks do not compete for the cores; printed and emitted.
 * Returns an exit code. */
static int memcpy_reference(coll_run *c, int T)
{
    c->copy1_s = calloc((size_t)c->nsizes, sizeof(double));
    c->copyT_s = calloc((size_t)c->nsizes, sizeof(double));
    bench_progress_update(&c->prog, "memcpy reference, %d thread%s", T, T == 1 ? "" : "s");
    if (!c->copy1_s || !c->copyT_s ||
        memcpy_sweep(1, c->sizes, c->nsizes, c->iters, c->warmup, c->copy1_s) != 0 ||
        (T > 1 && memcpy_sweep(T, c->sizes, c->nsizes, c->iters, c->warmup, c->copyT_s) != 0)) {
        size_t maxb = 0;
        for (int s = 0; s < c->nsizes; s++)
            maxb = c->sizes[s] > maxb ? c->sizes[s] : maxb;
        fprintf(stderr,
                "tp-bench: TP_ERR_NO_MEMORY: memcpy reference failed: out of memory for its "
                "buffers (2 x %zu bytes per thread, %d thread%s) or out of threads; use "
                "--no-memcpy or a smaller --maxbytes\n",
                maxb, T, T == 1 ? "" : "s");
        return BENCH_EXIT_FAIL;
    }
    if (T == 1)
        memcpy(c->copyT_s, c->copy1_s, (size_t)c->nsizes * sizeof(double));
    bench_progress_done(&c->prog);
    if (c->print) {
        printf("#\n# memcpy reference (same run): %d thread%s each copying `size` bytes "
               "concurrently; GB/s = threads x size / time\n",
               T, T == 1 ? "" : "s");
        printf("# %12s %12s %12s %12s %12s\n", "size", "1thr(us)", "1thr(GB/s)", "Tthr(us)",
               "Tthr(GB/s)");
        for (int s = 0; s < c->nsizes; s++)
            printf("  %12zu %12.2f %12.3f %12.2f %12.3f\n", c->sizes[s], c->copy1_s[s] * 1e6,
                   (double)c->sizes[s] / c->copy1_s[s] / 1e9, c->copyT_s[s] * 1e6,
                   (double)T * (double)c->sizes[s] / c->copyT_s[s] / 1e9);
    }
    emit_memcpy(c, T, 1, c->copy1_s);
    if (T > 1)
        emit_memcpy(c, T, T, c->copyT_s);
    return BENCH_EXIT_OK;
}

/* The sweep at one T: the memcpy reference when every rank is a thread of
 * this process (on mpirun each process would measure its own), then the
 * collectives on T ranks. first: the first T of the sweep. */
static int sweep_at(coll_run *c, int T, bool first)
{
    const bench_opts *o = c->o;
    free(c->copy1_s);
    free(c->copyT_s);
    c->copy1_s = c->copyT_s = NULL;
    bool want_memcpy = !o->no_memcpy && (o->op_mask & (1u << TP_OP_ALL_REDUCE));
    if (want_memcpy && c->env->single_process) {
        int rc = memcpy_reference(c, T);
        if (rc != BENCH_EXIT_OK)
            return rc;
    } else if (want_memcpy && c->print && first) {
        printf("# memcpy reference skipped: ranks run in several processes here; measure it with "
               "TP_BACKEND=loopback\n");
    }
    c->pp_s = 0;
    if (want_memcpy && T > 1 && c->env->single_process) /* processes: in coll_rank */
        pp_measure(c, false);
    return bench_run_tps(c->env, &T, 1, coll_rank, c);
}

/* After tp_init (the mpi backend initialises MPI there): can --compare-raw
 * run? Returns an exit code. */
static int check_raw(coll_run *c)
{
    if (!c->o->compare_raw)
        return BENCH_EXIT_OK;
    const char *why = NULL;
    c->raw = true;
    if (!bench_raw_available(&why)) {
        fprintf(stderr, "tp-bench: --compare-raw: %s\n", why);
        return BENCH_EXIT_USAGE;
    }
    return BENCH_EXIT_OK;
}

int bench_collectives_run(bench_env *env, const int *tps, int ntp, bench_sink *sink,
                          GArray *samples, bool print_table)
{
    const bench_opts *o = env->o;
    coll_run c;
    memset(&c, 0, sizeof c);
    c.env = env;
    c.o = o;
    c.sink = sink;
    c.samples = samples;
    c.print = print_table;
    c.iters = o->iters > 0 ? o->iters : 20;
    c.warmup = o->warmup >= 0 ? o->warmup : 5;
    const char *corrupt = getenv("TP_BENCH_CORRUPT");
    c.corrupt = corrupt && *corrupt && strcmp(corrupt, "0") != 0;
    c.nsizes = make_sizes(o, &c.sizes);
    if (c.nsizes <= 0) {
        fprintf(stderr, "tp-bench: no sizes between -b %zu and -e %zu\n", o->minbytes, o->maxbytes);
        free(c.sizes);
        return BENCH_EXIT_USAGE;
    }
    int rc = bench_env_probe(env);
    if (rc == 0)
        rc = check_raw(&c);
    if (rc == 0 && env->single_process && print_table) {
        printf("# tp-bench collectives: backend %s, device %s, f32, sizes %zu..%zu x%g\n",
               env->backend, env->device, o->minbytes, o->maxbytes, o->stepfactor);
        c.header_done = true;
    }
    bench_progress_start(&c.prog, o->quiet);
    for (int i = 0; i < ntp && rc == 0; i++)
        rc = sweep_at(&c, tps[i], i == 0);
    bench_progress_done(&c.prog);
    if (rc == 0 && c.wrong_total > 0) {
        fprintf(stderr, "tp-bench: --check found %" G_GUINT64_FORMAT " wrong result element%s\n",
                (guint64)c.wrong_total, c.wrong_total == 1 ? "" : "s");
        rc = BENCH_EXIT_FAIL;
    }
    free(c.sizes);
    free(c.copy1_s);
    free(c.copyT_s);
    return rc;
}

int bench_cmd_collectives(const bench_opts *o)
{
    bench_env env;
    bench_env_init(&env, o);
    bench_sink sink;
    bench_sink_init(&sink, o->json_path, o->csv_path);
    int rc = bench_env_probe(&env);
    if (rc == 0) {
        int tps[BENCH_MAX_LIST];
        int ntp = bench_env_tps(&env, tps);
        rc = bench_collectives_run(&env, tps, ntp, &sink, NULL, true);
    }
    return bench_cmd_finish(&env, &sink, rc);
}
