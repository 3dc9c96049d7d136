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
    tp_dtype dt;               /* -d (model: f32) */
    size_t elt;                /* its size */
    tp_redop redop;            /* -o */
    bool inplace;              /* also time the in-place form (collectives, not model) */
    double *copy1_s, *copyT_s; /* per size, NULL if not measured */
    double pp_s;               /* cache-line round trip (pingpong.c), 0 if not measured */
    bool corrupt;
    bool fake_times; /* test hook TP_BENCH_FAKE_TIMES: rank r "took" (r+1) ms */
    bool raw;
    bool header_done;
    uint64_t wrong_total;
    double busbw_sum; /* over the rows printed, both columns: nccl-tests' average */
    int busbw_n;
    bench_progress prog;
} coll_run;

/* Check pattern: integers in [-4, 4], so every partial sum over up to 64
 * ranks is an integer of magnitude <= 256, exact in f32, f16 (11-bit
 * significand), bf16 (8-bit: every integer up to 2^8) and i32, whatever
 * the order or the precision of the plugin's accumulation; max and min
 * return one of the inputs. The comparison is therefore exact for every
 * dtype (tolerance 0): any difference is a wrong element. */
static inline float pattern(int rank, size_t i)
{
    return (float)((int)(((size_t)rank * 131u + i * 7u) % 9u) - 4);
}

static bool op_reduces(int op)
{
    return op == TP_OP_ALL_REDUCE || op == TP_OP_REDUCE_SCATTER;
}

static const char *redop_name(const coll_run *c, int op)
{
    return op_reduces(op) ? bench_redop_name(c->redop) : "none";
}

/* f32 values into dtype dt (i32: the integers themselves). */
static void to_dtype(tp_dtype dt, void *dst, const float *src, size_t n)
{
    if (dt == TP_I32)
        for (size_t i = 0; i < n; i++)
            ((int32_t *)dst)[i] = (int32_t)src[i];
    else
        tp_host_convert(dt, dst, TP_F32, src, n);
}

static void from_dtype(tp_dtype dt, float *dst, const void *src, size_t n)
{
    if (dt == TP_I32)
        for (size_t i = 0; i < n; i++)
            dst[i] = (float)((const int32_t *)src)[i];
    else
        tp_host_convert(TP_F32, dst, dt, src, n);
}

static float reduce2(tp_redop r, float a, float b)
{
    return r == TP_MAX ? (a > b ? a : b) : r == TP_MIN ? (a < b ? a : b) : a + b;
}

static tp_status run_op(const coll_run *c, tp_comm *comm, int op, const void *send, void *recv,
                        size_t per, size_t total)
{
    switch (op) {
        case TP_OP_ALL_REDUCE: return tp_all_reduce(comm, send, recv, total, c->dt, c->redop);
        case TP_OP_ALL_GATHER: return tp_all_gather(comm, send, recv, per, c->dt);
        case TP_OP_REDUCE_SCATTER: return tp_reduce_scatter(comm, send, recv, per, c->dt, c->redop);
        case TP_OP_BROADCAST: return tp_broadcast(comm, recv, total, c->dt, 0);
    }
    return tp_set_error(TP_ERR_INTERNAL, "tp-bench: op %d not swept", op);
}

/* The reduction over ranks of pattern(., i). */
static float reduced(tp_redop r, int T, size_t i)
{
    float s = pattern(0, i);
    for (int q = 1; q < T; q++)
        s = reduce2(r, s, pattern(q, i));
    return s;
}

/* The f32 input of `op` for rank r and, if expect is not NULL, the
 * expected output. */
static void make_reference(int op, tp_redop red, int r, int T, size_t per, size_t total, float *in,
                           float *expect)
{
    switch (op) {
        case TP_OP_ALL_REDUCE:
            for (size_t i = 0; i < total; i++) {
                in[i] = pattern(r, i);
                if (expect)
                    expect[i] = reduced(red, T, i);
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
            for (size_t i = 0; expect && i < per; i++)
                expect[i] = reduced(red, T, (size_t)r * per + i);
            break;
        case TP_OP_BROADCAST:
            for (size_t i = 0; i < total; i++) {
                in[i] = r == 0 ? pattern(0, i) : 100.0f + pattern(r, i); /* non-roots start wrong */
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

/* Per-iteration times (µs, f32) combined over ranks as -a says:
 * rank 0's own, the mean, the min or the max (nccl-tests' 0/1/2/3). */
static tp_status combine_times(tp_comm *comm, int average, float *us, int n)
{
    tp_device *dev = tp_comm_device(comm);
    void *d = NULL;
    size_t bytes = (size_t)n * sizeof(float);
    tp_status st;
    TP_TRY_GOTO(tp_dev_alloc(dev, bytes, &d), st, done);
    TP_TRY_GOTO(tp_dev_upload(dev, d, us, bytes), st, done);
    if (average == BENCH_AVG_RANK0)
        TP_TRY_GOTO(tp_broadcast(comm, d, (size_t)n, TP_F32, 0), st, done);
    else
        TP_TRY_GOTO(tp_all_reduce(comm, d, d, (size_t)n, TP_F32,
                                  average == BENCH_AVG_MIN   ? TP_MIN
                                  : average == BENCH_AVG_MAX ? TP_MAX
                                                             : TP_SUM),
                    st, done);
    TP_TRY_GOTO(tp_dev_download(dev, us, d, bytes), st, done);
    if (average == BENCH_AVG_MEAN)
        for (int i = 0; i < n; i++)
            us[i] /= (float)tp_comm_size(comm);
done:
    tp_dev_free(dev, d);
    return st;
}

static void print_header(const coll_run *c, int op, int T)
{
    printf("#\n# %s, %d rank%s, backend %s, device %s, %d iters (%d warm-up) of %d call%s, %s, "
           "time: median over iterations of the %s over ranks (-a %d)%s\n",
           bench_op_name(op), T, T == 1 ? "" : "s", c->env->backend, c->env->device, c->iters,
           c->warmup, c->o->agg, c->o->agg == 1 ? "" : "s (-m)", tp_dtype_name(c->dt),
           bench_average_name(c->o->average), c->o->average,
           c->o->check ? ", checked" : ", not checked (-c 0)");
    if (c->o->symmetric)
        printf("# buffers from tp_comm_mem_alloc (--symmetric)\n");
    printf("# %43s%-42s%s\n", "", "   out-of-place", "   in-place");
    printf("# %12s %12s %5s %6s %4s %10s %11s %11s %6s %10s %11s %11s %6s", "size", "count", "type",
           "redop", "root", "time(us)", "algbw(GB/s)", "busbw(GB/s)", "#wrong", "time(us)",
           "algbw(GB/s)", "busbw(GB/s)", "#wrong");
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
    bool printer;               /* records results */
    bool show;                  /* prints the table */
    float *us, *ip_us, *raw_us; /* per timed iteration, µs */
    double *dv;                 /* seconds, for bench_summarize */
    bench_place place;          /* where the T ranks run */
} coll_rank_ctx;

/* One op's buffers, sized for its largest message. */
typedef struct coll_bufs {
    void *send, *recv;
    void *h_in;               /* the input in the dtype */
    float *h_inf;             /* the input in f32 */
    float *h_expect, *h_gotf; /* --check only: expected and received, f32 */
    void *h_got;              /* --check only: received, in the dtype */
} coll_bufs;

/* One op at one size: element counts (bench_op_counts) and outcome. */
typedef struct coll_size {
    int op, s; /* s: index into c->sizes */
    size_t per, total, bytes;
    size_t sn, rn;      /* elements sent, received */
    bool have_oop;      /* the out-of-place form was timed (all but broadcast) */
    bool have_ip;       /* the in-place form was timed */
    bool have_raw;      /* --compare-raw timed the engine's own call */
    uint64_t wrong_all; /* out of place: wrong elements over all ranks and iterations */
    uint64_t wrong_ip;  /* in place */
} coll_size;

static void coll_bufs_free(const coll_rank_ctx *x, coll_bufs *b)
{
    if (x->c->o->symmetric) {
        tp_comm_mem_free(x->comm, b->send);
        tp_comm_mem_free(x->comm, b->recv);
        b->send = b->recv = NULL;
    }
    tp_dev_free(x->dev, b->send);
    tp_dev_free(x->dev, b->recv);
    free(b->h_in);
    free(b->h_inf);
    free(b->h_expect);
    free(b->h_gotf);
    free(b->h_got);
}

static tp_status coll_bufs_setup(const coll_rank_ctx *x, int op, coll_bufs *b)
{
    const coll_run *c = x->c;
    size_t max_send = 0, max_recv = 0, elt = c->elt;
    for (int s = 0; s < c->nsizes; s++) {
        size_t per, total;
        bench_op_counts(op, x->T, c->sizes[s], elt, &per, &total, NULL);
        size_t sn = op == TP_OP_ALL_GATHER ? per : total;
        size_t rn = op == TP_OP_REDUCE_SCATTER ? per : total;
        if (sn > max_send)
            max_send = sn;
        if (rn > max_recv)
            max_recv = rn;
    }
    if (c->o->symmetric) { /* collective: every rank computed the same sizes */
        TP_TRY(tp_comm_mem_alloc(x->comm, max_send * elt, &b->send));
        TP_TRY(tp_comm_mem_alloc(x->comm, max_recv * elt, &b->recv));
    } else {
        TP_TRY(tp_dev_alloc(x->dev, max_send * elt, &b->send));
        TP_TRY(tp_dev_alloc(x->dev, max_recv * elt, &b->recv));
    }
    size_t hmax = max_send > max_recv ? max_send : max_recv;
    b->h_in = malloc(hmax * elt);
    b->h_inf = malloc(hmax * sizeof(float));
    if (c->o->check) {
        b->h_expect = malloc(hmax * sizeof(float));
        b->h_gotf = malloc(hmax * sizeof(float));
        b->h_got = malloc(hmax * elt);
    }
    if (!b->h_in || !b->h_inf || (c->o->check && (!b->h_expect || !b->h_gotf || !b->h_got)))
        return tp_set_error(TP_ERR_NO_MEMORY,
                            "tp-bench: no host memory for %zu-element check buffers of %s", hmax,
                            bench_op_name(op));
    return tp_dev_memset(x->dev, b->recv, 0, max_recv * elt);
}

/* The buffers of one form: out of place (send -> recv; broadcast has
 * none), or in place (all_reduce: recv -> recv; all_gather: the rank's
 * block of recv -> recv; broadcast: its one buffer). */
typedef struct coll_form {
    bool ip;
    void *send, *recv; /* recv also holds broadcast's buffer */
    const void *result;
} coll_form;

static coll_form form_of(const coll_rank_ctx *x, const coll_bufs *b, const coll_size *z, bool ip)
{
    coll_form f = {ip, b->send, b->recv, b->recv};
    if (z->op == TP_OP_BROADCAST)
        f.recv = f.send = b->send, f.result = b->send;
    else if (ip && z->op == TP_OP_ALL_GATHER)
        f.send = (char *)b->recv + (size_t)x->r * z->per * x->c->elt;
    else if (ip)
        f.send = b->recv;
    return f;
}

/* Timed iteration it: (in place: the input again), barrier, the
 * collective (-m N: N of them back to back, the time divided by N),
 * synchronize; then the test hook and --check on this rank's result. */
static tp_status time_one(coll_rank_ctx *x, const coll_bufs *b, const coll_size *z,
                          const coll_form *f, float *us, uint64_t *wrong)
{
    const coll_run *c = x->c;
    size_t elt = c->elt;
    /* --check: the result area starts as bytes 0x7f (3.4e38 in f32 and
     * bf16, NaN in f16, 2139062143 in i32: never a checked value), so a
     * call that writes nothing there is counted wrong instead of passing
     * on the previous iteration's result */
    if (c->o->check)
        TP_TRY(tp_dev_memset(x->dev, (void *)f->result, 0x7f, z->rn * elt));
    if (f->ip) /* the input again (the last iteration overwrote it, or the poison did) */
        TP_TRY(tp_dev_upload(x->dev, f->send, b->h_in, z->sn * elt));
    int agg = c->o->agg;
    TP_TRY(tp_barrier(x->comm));
    double t0 = bench_now();
    tp_status st = TP_OK;
    for (int k = 0; k < agg && st == TP_OK; k++)
        st = run_op(c, x->comm, z->op, f->send, f->recv, z->per, z->total);
    if (st == TP_OK)
        st = tp_dev_synchronize(x->dev);
    *us = c->fake_times ? (float)(x->r + 1) * 1000.0f : (float)((bench_now() - t0) * 1e6 / agg);
    TP_TRY(st);
    if (agg > 1 && f->ip && z->op == TP_OP_ALL_REDUCE && c->o->check) {
        /* in place, the batch summed sums: check one call on the input */
        TP_TRY(tp_dev_upload(x->dev, f->send, b->h_in, z->sn * elt));
        TP_TRY(run_op(c, x->comm, z->op, f->send, f->recv, z->per, z->total));
    }
    if (c->corrupt && x->r == x->T - 1) {
        /* test hook: damage one element of this rank's result */
        float badf = 12345.0f;
        char bad[8];
        to_dtype(c->dt, bad, &badf, 1);
        TP_TRY(tp_dev_upload(x->dev, (void *)f->result, bad, elt));
    }
    if (c->o->check) {
        TP_TRY(tp_dev_download(x->dev, b->h_got, f->result, z->rn * elt));
        from_dtype(c->dt, b->h_gotf, b->h_got, z->rn);
        for (size_t i = 0; i < z->rn; i++)
            *wrong += b->h_gotf[i] != b->h_expect[i];
    }
    return TP_OK;
}

/* --compare-raw: the engine's own call on the same buffers (f32 sum). */
static tp_status time_raw(coll_rank_ctx *x, const coll_bufs *b, coll_size *z)
{
    const coll_run *c = x->c;
    for (int it = 0; c->raw && it < c->warmup + c->iters; it++) {
        TP_TRY(tp_barrier(x->comm));
        double t0 = bench_now();
        tp_status st = TP_OK;
        for (int k = 0; k < c->o->agg && st == TP_OK; k++)
            st = bench_raw_collective(x->comm, z->op, b->send, b->recv, z->per, z->total);
        double t1 = bench_now();
        if (it >= c->warmup)
            x->raw_us[it - c->warmup] = (float)((t1 - t0) * 1e6 / c->o->agg);
        z->have_raw = true;
        TP_TRY(st);
    }
    return TP_OK;
}

/* One column group of the table: time, algbw, busbw, #wrong, or N/A. */
typedef struct coll_col {
    bool have;
    bench_summary sm;
    double algbw, busbw;
    uint64_t wrong;
} coll_col;

static coll_col summarize_col(coll_rank_ctx *x, const coll_size *z, const float *us, bool have,
                              uint64_t wrong)
{
    coll_col col;
    memset(&col, 0, sizeof col);
    col.have = have;
    if (!have)
        return col;
    for (int it = 0; it < x->c->iters; it++)
        x->dv[it] = us[it] * 1e-6;
    col.sm = bench_summarize(x->dv, (size_t)x->c->iters);
    col.algbw = bench_algbw_gbps((double)z->bytes, col.sm.median);
    col.busbw = bench_busbw_gbps(z->op, x->T, (double)z->bytes, col.sm.median);
    col.wrong = wrong;
    x->c->busbw_sum += col.busbw;
    x->c->busbw_n++;
    x->c->wrong_total += wrong;
    return col;
}

static void print_col(const coll_run *c, const coll_col *col)
{
    if (!col->have) {
        printf(" %10s %11s %11s %6s", "N/A", "N/A", "N/A", "N/A");
        return;
    }
    printf(" %10.2f %11.3f %11.3f", col->sm.median * 1e6, col->algbw, col->busbw);
    if (c->o->check)
        printf(" %6" G_GUINT64_FORMAT, (guint64)col->wrong);
    else
        printf(" %6s", "N/A");
}

/* The record's fields of one column group; prefix "" or "ip_". */
static void rec_col(const coll_run *c, bench_record *rec, const char *prefix, const coll_col *col)
{
    char key[64];
#define KEY(name) (g_snprintf(key, sizeof key, "%s%s", prefix, name), key)
    bench_rec_dbl(rec, KEY("time_us"), col->sm.median * 1e6);
    bench_rec_dbl(rec, KEY("time_min_us"), col->sm.min * 1e6);
    bench_rec_dbl(rec, KEY("time_max_us"), col->sm.max * 1e6);
    bench_rec_dbl(rec, KEY("algbw_gbps"), col->algbw);
    bench_rec_dbl(rec, KEY("busbw_gbps"), col->busbw);
    if (c->o->check)
        bench_rec_int(rec, KEY("wrong"), (int64_t)col->wrong);
    else
        bench_rec_str(rec, KEY("wrong"), NULL); /* not checked */
#undef KEY
}

/* The record of one size: out-of-place fields (broadcast: its in-place
 * call, the only form), then in-place ones when both forms ran. */
static bench_record *size_record(coll_rank_ctx *x, const coll_size *z, const coll_col *oop,
                                 const coll_col *ip)
{
    coll_run *c = x->c;
    const coll_col *main = oop->have ? oop : ip;
    bench_record *rec = bench_env_rec_new(c->env, "collective", x->T);
    bench_rec_str(rec, "op", bench_op_name(z->op));
    bench_rec_str(rec, "dtype", tp_dtype_name(c->dt));
    bench_rec_str(rec, "redop", redop_name(c, z->op));
    bench_rec_int(rec, "bytes", (int64_t)z->bytes);
    bench_rec_int(rec, "count", (int64_t)z->total);
    rec_col(c, rec, "", main);
    bench_rec_bool(rec, "checked", c->o->check);
    bench_rec_bool(rec, "in_place", !oop->have);
    bench_rec_str(rec, "average", bench_average_name(c->o->average));
    bench_rec_int(rec, "iters", c->iters);
    bench_rec_int(rec, "warmup", c->warmup);
    bench_rec_int(rec, "agg_iters", c->o->agg);
    bench_rec_bool(rec, "symmetric", c->o->symmetric);
    bench_rec_place(rec, &x->place);
    if (oop->have && ip->have)
        rec_col(c, rec, "ip_", ip);
    return rec;
}

/* Printer only: the table row, the record, the fit sample. */
static void report_size(coll_rank_ctx *x, const coll_size *z)
{
    coll_run *c = x->c;
    int op = z->op, T = x->T, nit = c->iters;
    coll_col oop = summarize_col(x, z, x->us, z->have_oop, z->wrong_all);
    coll_col ip = summarize_col(x, z, z->have_oop ? x->ip_us : x->us, z->have_ip,
                                z->have_oop ? z->wrong_ip : z->wrong_all);
    const coll_col *main = oop.have ? &oop : &ip;
    bench_progress_done(&c->prog);
    if (x->show) {
        printf("  %12zu %12zu %5s %6s %4d", z->bytes, z->total, tp_dtype_name(c->dt),
               redop_name(c, op), op == TP_OP_BROADCAST ? 0 : -1);
        print_col(c, &oop);
        print_col(c, &ip);
    }
    bench_record *rec = size_record(x, z, &oop, &ip);
    if (op == TP_OP_ALL_REDUCE && c->copyT_s) {
        double ratio = main->sm.median / c->copyT_s[z->s];
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
            printf(" %10.2f %9.3f", rs.median * 1e6, raw_bw > 0 ? main->busbw / raw_bw : 0.0);
        bench_rec_dbl(rec, "raw_time_us", rs.median * 1e6);
        bench_rec_dbl(rec, "raw_busbw_gbps", raw_bw);
    }
    if (op == TP_OP_ALL_REDUCE && c->pp_s > 0 && z->bytes <= 4096) { /* next to small sizes */
        if (x->show)
            printf(" %9.3f %7.2f", c->pp_s * 1e6, main->sm.median / c->pp_s);
        bench_rec_dbl(rec, "pingpong_us", c->pp_s * 1e6);
        bench_rec_dbl(rec, "pingpong_ratio", main->sm.median / c->pp_s);
    }
    if (x->show) {
        printf("\n");
        fflush(stdout);
    }
    bench_sink_emit(c->sink, rec);
    bench_rec_free(rec);
    if (c->samples) {
        bench_placed_sample smp = {{op, T, (double)z->bytes, main->sm.median}, x->place};
        g_array_append_val(c->samples, smp);
    }
}

/* One form's timed iterations into us, combined over ranks (-a), and its
 * wrong elements summed over ranks. */
static tp_status time_form(coll_rank_ctx *x, const coll_bufs *b, const coll_size *z, bool ip,
                           float *us, uint64_t *wrong_all)
{
    coll_run *c = x->c;
    coll_form f = form_of(x, b, z, ip);
    uint64_t wrong = 0;
    if (!ip || z->op == TP_OP_BROADCAST) /* the input again (in place: time_one does it) */
        TP_TRY(tp_dev_upload(x->dev, f.send, b->h_in, z->sn * c->elt));
    for (int it = 0; it < c->iters; it++) /* broadcast is in place: non-roots start wrong again */
        TP_TRY(time_one(x, b, z, &f, &us[it], &wrong));
    TP_TRY(combine_times(x->comm, c->o->average, us, c->iters));
    return sum_count(x->comm, wrong, wrong_all);
}

/* Op at size index s on every rank: warm-up, the timed forms, the raw
 * comparison, then the times and wrong counts over ranks. */
static tp_status coll_one_size(coll_rank_ctx *x, const coll_bufs *b, int op, int s)
{
    coll_run *c = x->c;
    coll_size z;
    memset(&z, 0, sizeof z);
    z.op = op;
    z.s = s;
    bench_op_counts(op, x->T, c->sizes[s], c->elt, &z.per, &z.total, &z.bytes);
    z.sn = op == TP_OP_ALL_GATHER ? z.per : z.total;
    z.rn = op == TP_OP_REDUCE_SCATTER ? z.per : z.total;
    z.have_oop = op != TP_OP_BROADCAST;
    z.have_ip =
        op == TP_OP_BROADCAST || (c->inplace && (op == TP_OP_ALL_REDUCE || op == TP_OP_ALL_GATHER));
    if (x->printer) {
        char sz[32];
        bench_progress_update(&c->prog, "T=%d %s %s", x->T, bench_op_name(op),
                              bench_format_size(z.bytes, sz, sizeof sz));
    }
    make_reference(op, c->redop, x->r, x->T, z.per, z.total, b->h_inf,
                   c->o->check ? b->h_expect : NULL);
    to_dtype(c->dt, b->h_in, b->h_inf, z.sn);
    coll_form warm = form_of(x, b, &z, !z.have_oop);
    TP_TRY(tp_dev_upload(x->dev, warm.send, b->h_in, z.sn * c->elt));
    for (int it = 0; it < c->warmup; it++)
        TP_TRY(run_op(c, x->comm, op, warm.send, warm.recv, z.per, z.total));
    if (z.have_oop)
        TP_TRY(time_form(x, b, &z, false, x->us, &z.wrong_all));
    if (z.have_ip)
        TP_TRY(time_form(x, b, &z, true, z.have_oop ? x->ip_us : x->us,
                         z.have_oop ? &z.wrong_ip : &z.wrong_all));
    TP_TRY(time_raw(x, b, &z));
    if (z.have_raw)
        TP_TRY(combine_times(x->comm, c->o->average, x->raw_us, c->iters));
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
        printf("# tp-bench collectives: backend %s, device %s, %s, sizes %zu..%zu x%g\n",
               c->env->backend, c->env->device, tp_dtype_name(c->dt), o->minbytes, o->maxbytes,
               o->stepfactor);
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
    x.ip_us = malloc((size_t)nit * sizeof *x.ip_us);
    x.raw_us = malloc((size_t)nit * sizeof *x.raw_us);
    x.dv = malloc((size_t)nit * sizeof *x.dv);
    tp_status st = TP_OK;
    if (!x.us || !x.ip_us || !x.raw_us || !x.dv) {
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
    free(x.ip_us);
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

/* nccl-tests' footer, the lines scripts grep for: wrong elements over the
 * whole run, and busbw averaged over every column printed. */
static void print_footer(const coll_run *c)
{
    printf("# Out of bounds values : %" G_GUINT64_FORMAT " %s%s\n", (guint64)c->wrong_total,
           c->wrong_total ? "FAILED" : "OK", c->o->check ? "" : " (not checked: -c 0)");
    printf("# Avg bus bandwidth    : %g\n", c->busbw_sum / c->busbw_n);
    printf("#\n");
    fflush(stdout);
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
    c.dt = o->cmd == BENCH_CMD_COLLECTIVES ? o->coll_dtype : TP_F32;
    c.elt = tp_dtype_size(c.dt);
    c.redop = o->cmd == BENCH_CMD_COLLECTIVES ? o->redop : TP_SUM;
    c.inplace = o->cmd == BENCH_CMD_COLLECTIVES;
    const char *corrupt = getenv("TP_BENCH_CORRUPT");
    c.corrupt = corrupt && *corrupt && strcmp(corrupt, "0") != 0;
    const char *fake = getenv("TP_BENCH_FAKE_TIMES");
    c.fake_times = fake && *fake && strcmp(fake, "0") != 0;
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
        printf("# tp-bench collectives: backend %s, device %s, %s, sizes %zu..%zu x%g\n",
               env->backend, env->device, tp_dtype_name(c.dt), o->minbytes, o->maxbytes,
               o->stepfactor);
        c.header_done = true;
    }
    bench_progress_start(&c.prog, o->quiet);
    for (int i = 0; i < ntp && rc == 0; i++)
        rc = sweep_at(&c, tps[i], i == 0);
    bench_progress_done(&c.prog);
    if (rc == 0 && print_table && c.busbw_n > 0)
        print_footer(&c);
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
    bench_env_attach(&env, &sink);
    int rc = bench_env_probe(&env);
    if (rc == 0) {
        int tps[BENCH_MAX_LIST];
        int ntp = bench_env_tps(&env, tps);
        rc = bench_collectives_run(&env, tps, ntp, &sink, NULL, true);
    }
    return bench_cmd_finish(&env, &sink, rc);
}
