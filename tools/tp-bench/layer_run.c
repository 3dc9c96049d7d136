/* SPDX-License-Identifier: MIT */
/* layer_run.c — run a TP layer through the public API and split its time into
 * GEMM, other compute and communication, from tp_stats. */
#include "bench.h"

#include "tp-try.h"

#include <tp/tp-transformer.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* Layer families by bench_layer_kind() (see layer_table.c). */
enum {
    LK_LINEAR_COL = 0,
    LK_LINEAR_ROW = 1,
    LK_MLP = 2
};

/* One live layer on one rank, with its input and output tensors. */
typedef struct layer_inst {
    int kind;
    tp_comm *comm; /* --symmetric: y and dx are its tp_comm_mem_alloc memory */
    void *sym[2];
    tp_linear *lin;
    tp_mlp *mlp;
    tp_tensor x, y;   /* forward input and output */
    tp_tensor dy, dx; /* backward (--backward only): y's and x's shapes */
    bench_xf *xf;     /* attention, block, transformer (xf_run.c) */
} layer_inst;

static void inst_free(layer_inst *li)
{
    tp_linear_free(li->lin);
    tp_mlp_free(li->mlp);
    bench_xf_free(li->xf);
    tp_tensor_release(&li->x);
    tp_tensor_release(&li->y);
    tp_tensor_release(&li->dy);
    tp_tensor_release(&li->dx);
    for (int i = 0; i < 2; i++)
        tp_comm_mem_free(li->comm, li->sym[i]);
    memset(li, 0, sizeof *li);
}

/* Upload n f32 host values into t, rounded to its dtype (bf16/f16 layers). */
static tp_status upload_f32(tp_tensor *t, const float *h, size_t n)
{
    if (t->dtype == TP_F32)
        return tp_tensor_upload(t, h);
    void *buf = malloc(n * tp_dtype_size(t->dtype) + 1);
    if (!buf)
        return tp_set_error(TP_ERR_NO_MEMORY,
                            "tp-bench: out of host memory to convert the layer's data (%zu bytes)",
                            n * tp_dtype_size(t->dtype) + 1);
    tp_host_convert(t->dtype, buf, TP_F32, h, n);
    tp_status st = tp_tensor_upload(t, buf);
    free(buf);
    return st;
}

/* One rank's layer input x [rows, x_cols] and output y [rows, y_cols];
 * lo..hi: this rank's slice of the ffn dimension. */
typedef struct inst_shape {
    int64_t rows, x_cols, y_cols, lo, hi;
} inst_shape;

static tp_status create_linear(layer_inst *li, int kind, tp_comm *comm, const bench_opts *o,
                               inst_shape *sh)
{
    tp_linear_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.bias = o->bias;
    cfg.seed = 1;
    cfg.tensor_id = 10;
    cfg.dtype = o->gemm_dtype;
    cfg.overlap = o->overlap;
    if (kind == LK_LINEAR_COL) {
        cfg.in_features = o->hidden;
        cfg.out_features = o->ffn;
        cfg.name = "bench.linear-col";
        sh->x_cols = o->hidden;
        sh->y_cols = sh->hi - sh->lo;
        return tp_column_linear_create(comm, &cfg, &li->lin);
    }
    cfg.in_features = o->ffn;
    cfg.out_features = o->hidden;
    cfg.input_is_parallel = true;
    cfg.name = "bench.linear-row";
    sh->x_cols = sh->hi - sh->lo;
    sh->y_cols = o->hidden;
    return tp_row_linear_create(comm, &cfg, &li->lin);
}

static tp_status create_mlp(layer_inst *li, tp_comm *comm, const bench_opts *o, inst_shape *sh)
{
    tp_mlp_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.hidden = o->hidden;
    cfg.ffn = o->ffn;
    cfg.bias = o->bias;
    cfg.seed = 1;
    cfg.tensor_id = 10;
    cfg.name = "bench.mlp";
    cfg.dtype = o->gemm_dtype;
    cfg.gelu_tanh = o->gelu_tanh;
    cfg.overlap = o->overlap;
    sh->x_cols = sh->y_cols = o->hidden;
    return tp_mlp_create(comm, &cfg, &li->mlp);
}

/* t = rows [0, rows) x columns [c0, c0 + cols) of master stream `id` of a
 * [rows, full] matrix; what names it when host memory runs out. */
static tp_status upload_master(tp_tensor *t, uint64_t id, int64_t full, int64_t rows, int64_t c0,
                               int64_t cols, const char *what)
{
    float *h = malloc((size_t)rows * (size_t)cols * sizeof *h);
    if (!h)
        return tp_set_error(TP_ERR_NO_MEMORY, "tp-bench: out of host memory for %s (%zu bytes)",
                            what, (size_t)rows * (size_t)cols * sizeof *h);
    tp_master_fill(1, id, full, 0, rows, c0, c0 + cols, 1.0f, h);
    tp_status st = upload_f32(t, h, (size_t)rows * (size_t)cols);
    free(h);
    return st;
}

/* [rows, cols] of dt: from the device, or (--symmetric) a view of
 * tp_comm_mem_alloc memory kept in *mem (a collective: every rank asks for
 * the same size, which the shapes give). */
static tp_status out_tensor(layer_inst *li, tp_device *dev, const bench_opts *o, int64_t rows,
                            int64_t cols, void **mem, tp_tensor *t)
{
    tp_dtype dt = o->gemm_dtype;
    if (!o->symmetric)
        return tp_tensor_alloc2(dev, dt, rows, cols, t);
    TP_TRY(tp_comm_mem_alloc(li->comm, (size_t)rows * (size_t)cols * tp_dtype_size(dt), mem));
    *t = tp_tensor_view(dev, dt, *mem, 2, (int64_t[]){rows, cols});
    return TP_OK;
}

/* The layer's tensors in its dtype (inputs, outputs and gradients alike):
 * x filled with this rank's slice of a full [tokens, x_full] input; with
 * --backward also dx, and dy filled. */
static tp_status inst_tensors(layer_inst *li, tp_device *dev, const bench_opts *o,
                              const inst_shape *sh)
{
    tp_dtype dt = o->gemm_dtype;
    TP_TRY(tp_tensor_alloc2(dev, dt, sh->rows, sh->x_cols, &li->x));
    TP_TRY(out_tensor(li, dev, o, sh->rows, sh->y_cols, &li->sym[0], &li->y));
    if (o->backward) {
        TP_TRY(out_tensor(li, dev, o, sh->rows, sh->x_cols, &li->sym[1], &li->dx));
        TP_TRY(tp_tensor_alloc2(dev, dt, sh->rows, sh->y_cols, &li->dy));
        TP_TRY(
            upload_master(&li->dy, 98, sh->y_cols, sh->rows, 0, sh->y_cols, "the output gradient"));
    }
    bool row = li->kind == LK_LINEAR_ROW;
    return upload_master(&li->x, 99, row ? o->ffn : sh->x_cols, sh->rows, row ? sh->lo : 0,
                         sh->x_cols, "the layer input");
}

static tp_status inst_create(layer_inst *li, int kind, tp_comm *comm, const bench_opts *o)
{
    memset(li, 0, sizeof *li);
    li->kind = kind;
    li->comm = comm;
    if (bench_layer_is_xf(kind))
        return bench_xf_create(kind, comm, o, &li->xf);
    inst_shape sh = {.rows = o->tokens};
    tp_shard_range(o->ffn, tp_comm_size(comm), tp_comm_rank(comm), &sh.lo, &sh.hi);
    tp_status st;
    switch (kind) {
        case LK_LINEAR_COL:
        case LK_LINEAR_ROW: TP_TRY_GOTO(create_linear(li, kind, comm, o, &sh), st, fail); break;
        case LK_MLP: TP_TRY_GOTO(create_mlp(li, comm, o, &sh), st, fail); break;
        default:
            return tp_set_error(TP_ERR_INTERNAL, "tp-bench: layer kind %d has no runner", kind);
    }
    TP_TRY_GOTO(inst_tensors(li, tp_comm_device(comm), o, &sh), st, fail);
    return TP_OK;
fail:
    inst_free(li);
    return st;
}

/* One iteration: forward, then backward if its tensors exist. */
static tp_status inst_step(layer_inst *li)
{
    if (li->xf)
        return bench_xf_step(li->xf);
    tp_status st = li->mlp ? tp_mlp_forward(li->mlp, &li->x, &li->y)
                           : tp_linear_forward(li->lin, &li->x, &li->y);
    if (st != TP_OK || !li->dy.data)
        return st;
    return li->mlp ? tp_mlp_backward(li->mlp, &li->dy, &li->dx)
                   : tp_linear_backward(li->lin, &li->dy, &li->dx);
}

/* ------------------------------------------------------------ runner */

/* CPU seconds used by this process so far (all threads). */
static double process_cpu_s(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return NAN;
    return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec +
           (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
}

/* Per-rank values, µs per iteration: wall, then GEMM/other/comm/wait/
 * hidden of each phase (index V_GEMM + V_PHASE * phase); wait and hidden
 * are parts of comm (blocking + nonblocking in flight); exposed = comm -
 * hidden. */
enum {
    V_WALL,
    V_GEMM,
    V_OTHER,
    V_COMM,
    V_WAIT,
    V_HIDDEN,
    V_PHASE = 5,
    V_COUNT = 1 + 2 * V_PHASE
};
static const tp_phase phase_of[2] = {TP_PHASE_FORWARD, TP_PHASE_BACKWARD};

/* Every rank's V_COUNT values to every rank (works across processes). */
static tp_status gather_values(tp_comm *comm, const float *mine, float *all)
{
    tp_device *dev = tp_comm_device(comm);
    size_t bytes = V_COUNT * sizeof *mine;
    void *dsend = NULL, *drecv = NULL;
    tp_status st;
    TP_TRY_GOTO(tp_dev_alloc(dev, bytes, &dsend), st, done);
    TP_TRY_GOTO(tp_dev_alloc(dev, (size_t)tp_comm_size(comm) * bytes, &drecv), st, done);
    TP_TRY_GOTO(tp_dev_upload(dev, dsend, mine, bytes), st, done);
    TP_TRY_GOTO(tp_all_gather(comm, dsend, drecv, V_COUNT, TP_F32), st, done);
    st = tp_dev_download(dev, all, drecv, (size_t)tp_comm_size(comm) * bytes);
done:
    tp_dev_free(dev, dsend);
    tp_dev_free(dev, drecv);
    return st;
}

typedef struct layer_run {
    bench_env *env;
    const bench_opts *o;
    const bench_layer_desc *d;
    int iters, warmup;
    bench_layer_result *res; /* filled by the printing rank */
    float *per_rank;         /* [T][V_COUNT] of the last T, printing rank */
    bench_progress prog;
} layer_run;

/* One rank's timed loop: its bounds and the tp_stats it left. */
typedef struct rank_timing {
    double cpu0, t0, t1; /* process CPU seconds and wall time at the start, wall at the end */
    tp_stats s;
    bench_place place;
    tp_stats ds; /* --dp: the DP communicator's, its size (0: none) */
    int dp, dp_buckets;
    double dp_grad_bytes, dp_bucket_bytes;
} rank_timing;

/* Build the layer, warm it up, then time L->iters iterations between a
 * barrier and a synchronize. The collectives' wait is split from their
 * transfer on the shared clock (TP_WAIT_CLOCK), or with --split-wait by a
 * barrier before each (TP_WAIT_BARRIER). */
static tp_status time_layer(layer_run *L, tp_comm *comm, tp_comm *dpc, int T, rank_timing *tm)
{
    tp_device *dev = tp_comm_device(comm);
    layer_inst li;
    TP_TRY(bench_place_get(comm, &tm->place));
    TP_TRY(tp_stats_set_wait(comm, L->o->split_wait ? TP_WAIT_BARRIER : TP_WAIT_CLOCK));
    TP_TRY(inst_create(&li, bench_layer_kind(L->d), comm, L->o));
    tp_status st;
    tm->dp = dpc ? tp_comm_size(dpc) : 0;
    if (dpc) {
        TP_TRY_GOTO(tp_stats_set_wait(dpc, L->o->split_wait ? TP_WAIT_BARRIER : TP_WAIT_CLOCK), st,
                    done);
        TP_TRY_GOTO(bench_xf_attach_dp(li.xf, dpc), st, done);
        bench_xf_dp_info(li.xf, &tm->dp_buckets, &tm->dp_grad_bytes, &tm->dp_bucket_bytes);
    }
    for (int it = 0; it < L->warmup; it++)
        TP_TRY_GOTO(inst_step(&li), st, done);
    TP_TRY_GOTO(tp_dev_synchronize(dev), st, done);
    TP_TRY_GOTO(tp_barrier(dpc ? dpc : comm), st, done);
    TP_TRY_GOTO(tp_barrier(comm), st, done);
    tp_stats_reset(comm);
    if (dpc)
        tp_stats_reset(dpc);
    tm->cpu0 = process_cpu_s();
    tm->t0 = bench_now();
    for (int it = 0; it < L->iters; it++) {
        if (bench_is_printer(comm))
            bench_progress_update(&L->prog, "%s T=%d iteration %d/%d", L->o->layer, T, it + 1,
                                  L->iters);
        TP_TRY_GOTO(inst_step(&li), st, done);
    }
    TP_TRY_GOTO(tp_dev_synchronize(dev), st, done);
    tm->t1 = bench_now();
    TP_TRY_GOTO(tp_stats_split_wait(comm, NULL), st, done);
    tp_stats_get(comm, &tm->s);
    if (dpc) {
        TP_TRY_GOTO(tp_stats_split_wait(dpc, NULL), st, done);
        tp_stats_get(dpc, &tm->ds);
    }
done:
    inst_free(&li);
    tp_stats_set_wait(comm, TP_WAIT_NONE);
    if (dpc)
        tp_stats_set_wait(dpc, TP_WAIT_NONE);
    return st;
}

/* This rank's V_COUNT values, µs per iteration. */
static void rank_values(const rank_timing *tm, int iters, float *mine)
{
    double n = iters;
    mine[V_WALL] = (float)((tm->t1 - tm->t0) / n * 1e6);
    for (int ph = 0; ph < 2; ph++) {
        double comm_s = 0, wait_s = 0, hidden_s = 0;
        for (int op = 0; op < TP_OP_COUNT; op++) {
            const tp_icounter *ic = &tm->s.icomm[phase_of[ph]][op];
            comm_s += tm->s.comm[phase_of[ph]][op].seconds + ic->seconds;
            wait_s += tm->s.comm[phase_of[ph]][op].wait_seconds;
            hidden_s += ic->seconds - ic->exposed_seconds;
        }
        mine[V_HIDDEN + V_PHASE * ph] = (float)(hidden_s / n * 1e6);
        mine[V_GEMM + V_PHASE * ph] = (float)(tm->s.gemm[phase_of[ph]].seconds / n * 1e6);
        mine[V_OTHER + V_PHASE * ph] = (float)(tm->s.kernel[phase_of[ph]].seconds / n * 1e6);
        mine[V_COMM + V_PHASE * ph] = (float)(comm_s / n * 1e6);
        mine[V_WAIT + V_PHASE * ph] = (float)(wait_s / n * 1e6);
    }
}

/* --dp: the DP communicator's counters per iteration and the plan. */
static void fill_dp(bench_layer_result *R, const rank_timing *tm, double n)
{
    R->dp = tm->dp;
    if (!tm->dp)
        return;
    R->dp_buckets = tm->dp_buckets;
    R->dp_grad_bytes = tm->dp_grad_bytes;
    R->dp_bucket_bytes = tm->dp_bucket_bytes;
    for (int ph = 0; ph < TP_PHASE_COUNT; ph++)
        for (int op = 0; op < TP_OP_COUNT; op++) {
            const tp_icounter *ic = &tm->ds.icomm[ph][op]; /* the buckets */
            R->dp_us += (tm->ds.comm[ph][op].seconds + ic->seconds) / n * 1e6;
            R->dp_hidden_us += (ic->seconds - ic->exposed_seconds) / n * 1e6;
            R->dp_wait_us += tm->ds.comm[ph][op].wait_seconds / n * 1e6;
            R->dp_calls += (double)(tm->ds.comm[ph][op].calls + ic->calls) / n;
            R->dp_bytes += (double)(tm->ds.comm[ph][op].bytes + ic->bytes) / n;
        }
}

/* The printing rank's result at T from every rank's values (all) and its
 * own tp_stats s. */
static void fill_result(const layer_run *L, int T, const float *all, const rank_timing *tm,
                        double cores)
{
    const tp_stats *s = &tm->s;
    double n = L->iters;
    bench_layer_result *R = L->res;
    memset(R, 0, sizeof *R);
    R->T = T;
    R->nphases = L->o->backward ? 2 : 1;
    R->place = tm->place;
    for (int q = 0; q < T; q++) {
        const float *v = &all[q * V_COUNT];
        if (v[V_WALL] > R->wall_us)
            R->wall_us = v[V_WALL];
        for (int ph = 0; ph < 2; ph++) {
            const float *p = v + V_PHASE * ph;
            if (p[V_COMM] > R->comm_us_max[ph])
                R->comm_us_max[ph] = p[V_COMM];
            R->gemm_us[ph] += p[V_GEMM] / T;
            R->other_us[ph] += p[V_OTHER] / T;
            R->comm_us[ph] += p[V_COMM] / T;
            R->wait_us[ph] += p[V_WAIT] / T;
            R->hidden_us[ph] += p[V_HIDDEN] / T;
            R->wait_us_max[ph] = fmax(R->wait_us_max[ph], p[V_WAIT]);
            R->transfer_us_max[ph] = fmax(R->transfer_us_max[ph], p[V_COMM] - p[V_WAIT]);
        }
    }
    for (int ph = 0; ph < TP_PHASE_COUNT; ph++)
        for (int op = 0; op < TP_OP_COUNT; op++)
            R->calls[ph][op] =
                (s->comm[ph][op].calls + s->icomm[ph][op].calls) / (uint64_t)L->iters;
    for (int ph = 0; ph < R->nphases; ph++) {
        for (int op = 0; op < TP_OP_COUNT; op++) {
            double b =
                (double)(s->comm[phase_of[ph]][op].bytes + s->icomm[phase_of[ph]][op].bytes) / n;
            R->comm_bytes[ph] += b;
            R->wire_bytes[ph] += b * bench_busbw_factor(op, T);
        }
        bench_layer_comm ex[8];
        int nex = bench_layer_expected_comm(L->d, L->o, T, ph, ex, 8);
        for (int i = 0; i < nex; i++)
            R->formula_bytes[ph] += ex[i].calls * ex[i].bytes * bench_busbw_factor(ex[i].op, T);
        R->flops += bench_layer_flops(L->d, L->o, ph);
    }
    R->cpu_cores = L->env->single_process ? cores : NAN;
    fill_dp(R, tm, n);
}

/* One rank's part at T on its TP communicator comm (and DP communicator
 * dpc, or NULL); printer: this rank fills the result. */
static tp_status layer_rank_on(layer_run *L, tp_comm *comm, tp_comm *dpc, int T, bool printer)
{
    rank_timing tm;
    memset(&tm, 0, sizeof tm);
    TP_TRY(time_layer(L, comm, dpc, T, &tm));
    float mine[V_COUNT];
    rank_values(&tm, L->iters, mine);
    float *all = malloc((size_t)T * V_COUNT * sizeof *all);
    if (!all)
        return tp_set_error(TP_ERR_NO_MEMORY,
                            "tp-bench: out of host memory for per-rank results (%zu bytes)",
                            (size_t)T * V_COUNT * sizeof *all);
    tp_status st = gather_values(comm, mine, all);
    /* every rank is done with its timed loop here (the all-gather waited
     * for them); only meaningful when this process runs all the ranks */
    double cores = (process_cpu_s() - tm.cpu0) / (bench_now() - tm.t0);
    if (st != TP_OK || !printer) {
        free(all);
        return st;
    }
    fill_result(L, T, all, &tm, cores);
    free(L->per_rank);
    L->per_rank = all;
    return TP_OK;
}

static tp_status layer_rank(tp_comm *comm, int T, void *arg)
{
    return layer_rank_on(arg, comm, NULL, T, bench_is_printer(comm));
}

/* --dp D: comm holds T x D ranks; TP groups of T and DP groups of D by
 * tp_topology (TP inside nodes, on TP_INTRA_BACKEND if set); world rank 0
 * (in TP group 0) prints. */
static tp_status layer_rank_dp(tp_comm *comm, int TD, void *arg)
{
    layer_run *L = arg;
    int T = TD / L->o->dp;
    tp_comm *tp = NULL, *dp = NULL;
    tp_layout l;
    /* --dp-inside: tp_topology's node-local groups (of D) are the DP groups */
    tp_status st = L->o->dp_inside ? tp_topology(comm, L->o->dp, false, &dp, &tp, &l)
                                   : tp_topology(comm, T, false, &tp, &dp, &l);
    if (st == TP_OK)
        st = layer_rank_on(L, tp, dp, T, bench_is_printer(comm));
    tp_comm_free(tp);
    tp_comm_free(dp);
    return st;
}

int bench_layer_run(bench_env *env, const bench_layer_desc *d, const int *tps, int ntp,
                    bench_layer_result *results)
{
    layer_run L;
    memset(&L, 0, sizeof L);
    L.env = env;
    L.o = env->o;
    L.d = d;
    L.iters = L.o->iters > 0 ? L.o->iters : 5;
    L.warmup = L.o->warmup >= 0 ? L.o->warmup : 1;
    bench_progress_start(&L.prog, L.o->quiet);
    int rc = 0;
    for (int i = 0; i < ntp && rc == 0; i++) {
        L.res = &results[i];
        rc = bench_run_tps(env, &tps[i], 1, layer_rank, &L);
    }
    bench_progress_done(&L.prog);
    free(L.per_rank);
    return rc;
}

/* ------------------------------------------------------- subcommand */

static double pct(double part, double whole)
{
    return whole > 0 ? 100.0 * part / whole : 0.0;
}

static const char *const phase_names[2] = {"forward", "backward"};

/* One record per phase: rank >= 0 with that rank's values v, or rank -1
 * (aggregate: mean over ranks, wall = max). */
static void emit_layer(bench_sink *sink, const bench_env *env, const bench_opts *o,
                       const bench_layer_result *R, int rank, const float *v, int ph,
                       double speedup, double efficiency)
{
    bench_record *rec = bench_env_rec_new(env, "layer", R->T);
    bench_rec_str(rec, "layer", o->layer);
    bench_rec_int(rec, "tp", R->T);
    bench_rec_int(rec, "rank", rank);
    bench_rec_str(rec, "phase", phase_names[ph]);
    bench_rec_int(rec, "tokens", o->tokens);
    bench_rec_int(rec, "hidden", o->hidden);
    bench_rec_int(rec, "ffn", o->ffn);
    bench_rec_str(rec, "dtype", tp_dtype_name(o->gemm_dtype));
    bench_xf_rec_fields(rec, bench_layer_kind(bench_layer_find(o->layer)), o);
    const float *p = v ? v + V_PHASE * ph : NULL;
    double gemm = p ? p[V_GEMM] : R->gemm_us[ph], other = p ? p[V_OTHER] : R->other_us[ph];
    double comm = p ? p[V_COMM] : R->comm_us[ph], wall = v ? v[V_WALL] : R->wall_us;
    double wait = p ? p[V_WAIT] : R->wait_us[ph];
    bench_rec_dbl(rec, "wall_us", wall);
    bench_rec_dbl(rec, "wall_per_token_us", o->tokens > 0 ? wall / (double)o->tokens : NAN);
    bench_rec_dbl(rec, "gemm_us", gemm);
    bench_rec_dbl(rec, "other_us", other);
    bench_rec_dbl(rec, "compute_us", gemm + other);
    double hidden = p ? p[V_HIDDEN] : R->hidden_us[ph];
    bench_rec_dbl(rec, "comm_us", comm);
    bench_rec_int(rec, "overlap", o->overlap);
    bench_rec_dbl(rec, "hidden_comm_us", hidden);
    bench_rec_dbl(rec, "exposed_comm_us", comm - hidden);
    bench_rec_dbl(rec, "wait_us", wait);
    bench_rec_dbl(rec, "transfer_us", comm - wait);
    bench_rec_dbl(rec, "wait_us_max", v ? NAN : R->wait_us_max[ph]);
    bench_rec_dbl(rec, "transfer_us_max", v ? NAN : R->transfer_us_max[ph]);
    bench_rec_str(rec, "wait_split", o->split_wait ? "barrier" : "clock");
    bench_rec_dbl(rec, "comm_pct", pct(comm, gemm + other + comm));
    uint64_t total = 0;
    for (int op = 0; op < TP_OP_COUNT; op++)
        total += R->calls[phase_of[ph]][op];
    bench_rec_int(rec, "collectives", (int64_t)total);
    for (int op = 0; op < TP_OP_COUNT; op++)
        bench_rec_int(rec, tp_op_name((tp_op)op), (int64_t)R->calls[phase_of[ph]][op]);
    bench_rec_dbl(rec, "comm_bytes", R->comm_bytes[ph]);
    bench_rec_dbl(rec, "wire_bytes", R->wire_bytes[ph]);
    bench_rec_dbl(rec, "formula_bytes", R->formula_bytes[ph]);
    bench_rec_dbl(rec, "gflops", wall > 0 ? R->flops / (wall * 1e-6) / 1e9 : NAN);
    bench_rec_dbl(rec, "speedup", speedup);
    bench_rec_dbl(rec, "efficiency", efficiency);
    bench_rec_dbl(rec, "cpu_cores", v ? NAN : R->cpu_cores);
    bench_rec_int(rec, "dp", R->dp > 1 ? R->dp : 1);
    if (R->dp > 1) { /* per iteration, rank 0's DP communicator */
        bench_rec_dbl(rec, "dp_us", R->dp_us);
        bench_rec_dbl(rec, "dp_wait_us", R->dp_wait_us);
        bench_rec_dbl(rec, "dp_hidden_comm_us", R->dp_hidden_us);
        bench_rec_dbl(rec, "dp_exposed_comm_us", R->dp_us - R->dp_hidden_us);
        bench_rec_dbl(rec, "dp_calls", R->dp_calls);
        bench_rec_dbl(rec, "dp_bytes", R->dp_bytes);
        bench_rec_dbl(rec, "dp_wire_bytes", R->dp_bytes * 2.0 * (R->dp - 1) / R->dp);
        bench_rec_dbl(rec, "dp_formula_bytes", 2.0 * (R->dp - 1) / R->dp * R->dp_grad_bytes);
    }
    bench_rec_place(rec, &R->place);
    bench_sink_emit(sink, rec);
    bench_rec_free(rec);
}

double bench_layer_compute_us(const bench_layer_result *R)
{
    double c = 0;
    for (int ph = 0; ph < R->nphases; ph++)
        c += R->gemm_us[ph] + R->other_us[ph];
    return c;
}

double bench_layer_comm_us(const bench_layer_result *R)
{
    double c = 0;
    for (int ph = 0; ph < R->nphases; ph++)
        c += R->comm_us[ph];
    return c;
}

double bench_layer_wait_us(const bench_layer_result *R)
{
    double c = 0;
    for (int ph = 0; ph < R->nphases; ph++)
        c += R->wait_us[ph];
    return c;
}

/* Per-rank rows and the aggregate for each phase, counts, bytes. */
static void print_result(const bench_opts *o, const bench_layer_result *R, const float *per_rank,
                         double speedup, double efficiency)
{
    const char *what = R->nphases > 1 ? "forward + backward" : "forward";
    printf("#\n# %s %s, T=%d (per iteration; comm %% = comm / (GEMM + other compute + comm))\n",
           o->layer, what, R->T);
    printf("# placement: %d node%s, %d rank%s on rank 0's node, link %s; wait split by %s\n",
           R->place.nodes, R->place.nodes == 1 ? "" : "s", R->place.ranks_per_node,
           R->place.ranks_per_node == 1 ? "" : "s", R->place.link,
           o->split_wait ? "a barrier before each collective (--split-wait)" : "the shared clock");
    printf("# %6s %-8s %11s %11s %11s %11s %11s %11s %11s %7s\n", "rank", "phase", "wall(us)",
           "gemm(us)", "other(us)", "comm(us)", "wait(us)", "xfer(us)", "compute(us)", "comm%");
    for (int ph = 0; ph < R->nphases; ph++) {
        for (int q = 0; per_rank && q < R->T; q++) {
            const float *v = &per_rank[q * V_COUNT];
            const float *p = v + V_PHASE * ph;
            printf("  %6d %-8s %11.1f %11.1f %11.1f %11.1f %11.1f %11.1f %11.1f %7.2f\n", q,
                   phase_names[ph], v[V_WALL], p[V_GEMM], p[V_OTHER], p[V_COMM], p[V_WAIT],
                   p[V_COMM] - p[V_WAIT], p[V_GEMM] + p[V_OTHER],
                   pct(p[V_COMM], p[V_GEMM] + p[V_OTHER] + p[V_COMM]));
        }
        printf(
            "  %6s %-8s %11.1f %11.1f %11.1f %11.1f %11.1f %11.1f %11.1f %7.2f   (wall: max over "
            "ranks, whole iteration; others: mean)\n",
            "all", phase_names[ph], R->wall_us, R->gemm_us[ph], R->other_us[ph], R->comm_us[ph],
            R->wait_us[ph], R->comm_us[ph] - R->wait_us[ph], R->gemm_us[ph] + R->other_us[ph],
            pct(R->comm_us[ph], R->gemm_us[ph] + R->other_us[ph] + R->comm_us[ph]));
    }
    for (int ph = 0; o->overlap >= 2 && ph < R->nphases; ph++)
        printf("# overlap %d, %s: comm %.1f us = hidden %.1f + exposed %.1f (mean over ranks)\n",
               o->overlap, phase_names[ph], R->comm_us[ph], R->hidden_us[ph],
               R->comm_us[ph] - R->hidden_us[ph]);
    if (o->overlap >= 2)
        printf("# with overlap, comm = blocking + nonblocking in flight (issue to completion): "
               "engines that move bytes only inside tp_test/tp_wait (loopback, shm, mpi) "
               "complete a request when some rank first tests it, so in flight also counts "
               "time in which nothing moved; there comm, comm %% and hidden are upper bounds, "
               "exposed is exact (compare it with the comm of --overlap 0)\n");
    printf("# collectives per iteration (tp_stats, rank 0):");
    bool any = false;
    for (int ph = 0; ph < TP_PHASE_COUNT; ph++)
        for (int op = 0; op < TP_OP_COUNT; op++)
            if (R->calls[ph][op]) {
                printf(" %s %s x%" G_GUINT64_FORMAT, tp_phase_name((tp_phase)ph),
                       tp_op_name((tp_op)op), (guint64)R->calls[ph][op]);
                any = true;
            }
    printf("%s\n", any ? "" : " none");
    for (int ph = 0; ph < R->nphases; ph++)
        printf("# %s bytes per rank: payload %.0f, ring traffic %.0f (payload x 2(T-1)/T for "
               "all_reduce), seed "
               "formula %.0f (2(T-1)/T x tokens x hidden x %zu bytes per all-reduce): %s\n",
               phase_names[ph], R->comm_bytes[ph], R->wire_bytes[ph], R->formula_bytes[ph],
               tp_dtype_size(o->gemm_dtype),
               fabs(R->wire_bytes[ph] - R->formula_bytes[ph]) <= 1e-6 * (R->formula_bytes[ph] + 1)
                   ? "match"
                   : "MISMATCH");
    bench_xf_print_result(o, R);
    bench_xf_print_dp(R);
    if (!isnan(speedup))
        printf("# strong scaling vs T=1 (same run): speedup %.3f, efficiency %.1f%%\n", speedup,
               100 * efficiency);
    if (!isnan(R->cpu_cores))
        printf("# CPU this process got while timing: %.2f cores (of %ld online): speedup cannot "
               "exceed what the "
               "machine lets it use\n",
               R->cpu_cores, sysconf(_SC_NPROCESSORS_ONLN));
    fflush(stdout);
}

/* The sweep's summary table, and the per-token line of decode-shaped runs. */
static void print_summary(const bench_opts *o, const bench_layer_result *res, int ntp, double wall1)
{
    printf("#\n# summary: %s %s (wall = max over ranks, per iteration; all phases)\n", o->layer,
           o->backward ? "forward + backward" : "forward");
    printf("# %4s %11s %11s %11s %11s %11s %11s %7s %8s %6s %10s %6s %5s\n", "T", "wall(us)",
           "gemm(us)", "other(us)", "comm(us)", "wait(us)", "xfer(us)", "comm%", "speedup", "eff%",
           "coll/iter", "cores", "nodes");
    for (int i = 0; i < ntp; i++) {
        const bench_layer_result *R = &res[i];
        double sp = isnan(wall1) ? NAN : wall1 / R->wall_us;
        uint64_t calls = 0;
        double gemm = 0, other = 0;
        for (int ph = 0; ph < R->nphases; ph++) {
            for (int op = 0; op < TP_OP_COUNT; op++)
                calls += R->calls[phase_of[ph]][op];
            gemm += R->gemm_us[ph];
            other += R->other_us[ph];
        }
        double cm = bench_layer_comm_us(R), wt = bench_layer_wait_us(R);
        printf("  %4d %11.1f %11.1f %11.1f %11.1f %11.1f %11.1f %7.2f %8.3f %6.1f "
               "%10" G_GUINT64_FORMAT " %6.2f %5d\n",
               R->T, R->wall_us, gemm, other, cm, wt, cm - wt,
               pct(cm, bench_layer_compute_us(R) + cm), sp, 100 * sp / R->T, (guint64)calls,
               R->cpu_cores, R->place.nodes);
    }
    if (isnan(wall1))
        printf("# (no T=1 in --sweep-tp: add 1 for speedup and efficiency)\n");
    if (o->tokens <= 16) { /* decode-shaped: the latency of one token */
        printf("# per token (wall / %" G_GINT64_FORMAT " tokens):", (gint64)o->tokens);
        for (int i = 0; i < ntp; i++)
            printf(" T=%d %.1f us%s", res[i].T, res[i].wall_us / (double)o->tokens,
                   i + 1 < ntp ? "," : "\n");
    }
}

int bench_cmd_layer(const bench_opts *o)
{
    const bench_layer_desc *d = bench_layer_find(o->layer);
    bench_env env;
    bench_env_init(&env, o);
    bench_sink sink;
    bench_sink_init(&sink, o->json_path, o->csv_path);
    bench_env_attach(&env, &sink);
    int rc = bench_env_probe(&env);
    if (rc == 0 && o->dp > 1 && env.world % o->dp != 0 && !o->n_sweep_tp) {
        fprintf(stderr,
                "tp-bench: layer --dp %d: the engine runs %d ranks, not a multiple of D = %d "
                "(T x D ranks); start T x %d ranks or change --dp\n",
                o->dp, env.world, o->dp, o->dp);
        rc = BENCH_EXIT_USAGE;
    }
    int tps[BENCH_MAX_LIST];
    int ntp = bench_env_tps(&env, tps);
    bench_layer_result res[BENCH_MAX_LIST];
    memset(res, 0, sizeof res);
    double wall1 = NAN;
    layer_run L;
    memset(&L, 0, sizeof L);
    L.env = &env;
    L.o = o;
    L.d = d;
    L.iters = o->iters > 0 ? o->iters : 5;
    L.warmup = o->warmup >= 0 ? o->warmup : 1;
    bench_progress_start(&L.prog, o->quiet);
    bool header = false;
    /* T = 1 first, when it is in the list: every other T's speedup and
     * efficiency (text and JSON) is relative to it */
    int first = 0;
    while (first < ntp && tps[first] != 1)
        first++;
    for (int k = 0; k < ntp && rc == 0; k++) {
        int i = first == ntp ? k : k == 0 ? first : k <= first ? k - 1 : k;
        L.res = &res[i];
        int ranks = o->dp > 1 ? tps[i] * o->dp : tps[i];
        rc = bench_run_tps(&env, &ranks, 1, o->dp > 1 ? layer_rank_dp : layer_rank, &L);
        bench_progress_done(&L.prog);
        if (rc || !env.printer)
            continue;
        if (!header) {
            printf("# tp-bench layer: %s, tokens %" G_GINT64_FORMAT ", hidden %" G_GINT64_FORMAT
                   ", ffn %" G_GINT64_FORMAT
                   "%s, %s, %s, backend %s, device %s, %d iters (%d warm-up)\n",
                   o->layer, (gint64)o->tokens, (gint64)o->hidden, (gint64)o->ffn,
                   o->bias ? ", bias" : "", tp_dtype_name(o->gemm_dtype),
                   o->backward ? "forward + backward" : "forward", env.backend, env.device, L.iters,
                   L.warmup);
            bench_xf_print_header(o);
            header = true;
        }
        if (tps[i] == 1)
            wall1 = res[i].wall_us;
        double speedup = isnan(wall1) ? NAN : wall1 / res[i].wall_us;
        double eff = speedup / tps[i];
        print_result(o, &res[i], L.per_rank, speedup, eff);
        for (int ph = 0; ph < res[i].nphases; ph++) {
            for (int q = 0; q < tps[i]; q++)
                emit_layer(&sink, &env, o, &res[i], q, &L.per_rank[q * V_COUNT], ph, NAN, NAN);
            emit_layer(&sink, &env, o, &res[i], -1, NULL, ph, speedup, eff);
        }
    }
    if (rc == 0 && env.printer && ntp > 1)
        print_summary(o, res, ntp, wall1);
    free(L.per_rank);
    return bench_cmd_finish(&env, &sink, rc);
}
