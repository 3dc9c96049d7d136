/* SPDX-License-Identifier: MIT */
/*
 * tp_mlp — the tensor-parallel MLP vs the naive one.
 *
 * TP:    ColumnParallelLinear(hidden -> ffn) -> GeLU -> RowParallelLinear(ffn -> hidden):
 *        one all-reduce per forward.
 * Naive: the full, unsplit MLP computed on every rank with one-rank GEMMs.
 *
 * Prints how well the two agree (judged against the f32 error bound from a
 * double reference), the time spent in matmuls vs the all-reduce from the
 * built-in counters, and the communication percentage. Exits 1 if they
 * disagree.
 *
 *   TP_BACKEND=loopback build/examples/tp_mlp --tp 4
 *   TP_BACKEND=loopback build/examples/tp_mlp --tp 3 --ffn 385
 *   TP_BACKEND=loopback build/examples/tp_mlp --tp 2 --tokens 512 --overlap 4
 *
 * --overlap N runs the MLP in N token chunks (tp_mlp_config.overlap),
 * each chunk's all-reduce in flight while the next computes, forward and
 * backward; the timing lines then split the all-reduce time into the part
 * hidden behind the GEMMs and the exposed part.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tp/tp-layers.h>

#include "example-common.h"

typedef struct run {
    ex_opts o;
    int overlap;  /* --overlap N: tp_mlp_config.overlap (0: off) */
    int mismatch; /* set by rank 0 */
} run;

static double gelu_d(double x, bool tanh_approx)
{
    if (tanh_approx)
        return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
}

/* One rank's state. Host buffers are full size: x, y (TP), yn (naive)
 * [t, H]; w1, b1, w2, b2 the full master weights; gw1.. (--save-npy only)
 * the full weights gathered from the TP shards. */
typedef struct mlp_run {
    const ex_opts *o;
    int overlap;
    tp_comm *world;
    tp_device *dev;
    int rank, T;
    int64_t t, H, F;
    tp_mlp *mlp;
    tp_tensor xt, yt;                      /* TP input and output */
    tp_tensor w1t, b1t, w2t, b2t, ht, ynt; /* naive: full weights, hidden, output */
    float *x, *y, *yn;
    float *w1, *b1, *w2, *b2;
    float *gw1, *gb1, *gw2, *gb2;
    double tp_wall, naive_wall; /* mean seconds per forward */
    tp_stats stats;             /* rank 0's counters over the timed TP passes */
} mlp_run;

static void mlp_run_free(mlp_run *M)
{
    tp_tensor_release(&M->xt), tp_tensor_release(&M->yt), tp_tensor_release(&M->w1t);
    tp_tensor_release(&M->b1t), tp_tensor_release(&M->w2t), tp_tensor_release(&M->b2t);
    tp_tensor_release(&M->ht), tp_tensor_release(&M->ynt);
    tp_mlp_free(M->mlp);
    free(M->x), free(M->y), free(M->yn), free(M->w1), free(M->b1), free(M->w2), free(M->b2);
    free(M->gw1), free(M->gb1), free(M->gw2), free(M->gb2);
}

/* The host buffers, the input and the TP MLP (this rank's shards). */
static tp_status set_up(mlp_run *M)
{
    int64_t t = M->t, H = M->H, F = M->F;
    tp_status st = TP_OK;
    M->x = ex_calloc(t * H, sizeof(float), "the input x", &st);
    M->y = ex_calloc(t * H, sizeof(float), "the TP output y", &st);
    M->yn = ex_calloc(t * H, sizeof(float), "the naive output", &st);
    M->w1 = ex_calloc(H * F, sizeof(float), "the master w1", &st);
    M->b1 = ex_calloc(F, sizeof(float), "the master b1", &st);
    M->w2 = ex_calloc(F * H, sizeof(float), "the master w2", &st);
    M->b2 = ex_calloc(H, sizeof(float), "the master b2", &st);
    EX_TRY(st);
    for (int64_t i = 0; i < t * H; i++)
        M->x[i] = tp_master_uniform(M->o->seed, 1000, (uint64_t)i, 1.0f);
    tp_mlp_config mc = {.hidden = H,
                        .ffn = F,
                        .bias = true,
                        .gelu_tanh = M->o->gelu_tanh,
                        .seed = M->o->seed,
                        .tensor_id = 1,
                        .name = "mlp",
                        .overlap = M->overlap};
    EX_TRY(tp_mlp_create(M->world, &mc, &M->mlp));
    EX_TRY(tp_tensor_alloc2(M->dev, TP_F32, t, H, &M->xt));
    return tp_tensor_upload(&M->xt, M->x);
}

typedef tp_status (*mlp_pass_fn)(mlp_run *M);

/* One warm-up pass, then o->iters timed ones; *wall gets the mean seconds
 * per pass. With count_stats the counters are reset after the warm-up, so
 * that they cover the timed passes only. */
static tp_status time_passes(mlp_run *M, mlp_pass_fn pass, bool count_stats, double *wall)
{
    EX_TRY(pass(M));
    EX_TRY(tp_dev_synchronize(M->dev));
    if (count_stats)
        tp_stats_reset(M->world);
    double t0 = ex_now();
    for (int i = 0; i < M->o->iters; i++)
        EX_TRY(pass(M));
    EX_TRY(tp_dev_synchronize(M->dev));
    *wall = (ex_now() - t0) / M->o->iters;
    return TP_OK;
}

/* The TP MLP: one all-reduce. */
static tp_status tp_pass(mlp_run *M)
{
    return tp_mlp_forward(M->mlp, &M->xt, &M->yt);
}

/* The naive MLP on this rank's device: full weights, no communication. */
static tp_status naive_pass(mlp_run *M)
{
    tp_device *dev = M->dev;
    int64_t t = M->t, H = M->H, F = M->F;
    tp_gemm_args g = {.struct_size = sizeof g,
                      .dtype = TP_F32,
                      .m = t,
                      .n = F,
                      .k = H,
                      .alpha = 1.0f,
                      .a = M->xt.data,
                      .lda = H,
                      .b = M->w1t.data,
                      .ldb = F,
                      .c = M->ht.data,
                      .ldc = F,
                      .batch = 1};
    EX_TRY(tp_dev_gemm(dev, &g));
    EX_TRY(tp_dev_bias_add(dev, TP_F32, t, F, M->ht.data, M->b1t.data));
    EX_TRY(tp_dev_gelu(dev, TP_F32, t * F, M->ht.data, M->ht.data, M->o->gelu_tanh));
    g.n = H, g.k = F, g.a = M->ht.data, g.lda = F, g.b = M->w2t.data, g.ldb = H;
    g.c = M->ynt.data, g.ldc = H;
    EX_TRY(tp_dev_gemm(dev, &g));
    return tp_dev_bias_add(dev, TP_F32, t, H, M->ynt.data, M->b2t.data);
}

/* The TP forward timed, with the counters of its timed passes. */
static tp_status run_tp(mlp_run *M)
{
    EX_TRY(time_passes(M, tp_pass, true, &M->tp_wall));
    tp_stats_get(M->world, &M->stats);
    return tp_tensor_download(&M->yt, M->y);
}

/* The naive MLP timed: the same full master weights, generated here
 * independently of the TP layers. */
static tp_status run_naive(mlp_run *M)
{
    int64_t t = M->t, H = M->H, F = M->F;
    uint64_t seed = M->o->seed;
    float bh = (float)(1.0 / sqrt((double)H)), bf = (float)(1.0 / sqrt((double)F));
    tp_master_fill(seed, 1, F, 0, H, 0, F, bh, M->w1);
    tp_master_fill(seed, 2, F, 0, 1, 0, F, bh, M->b1);
    tp_master_fill(seed, 3, H, 0, F, 0, H, bf, M->w2);
    tp_master_fill(seed, 4, H, 0, 1, 0, H, bf, M->b2);
    EX_TRY(tp_tensor_alloc2(M->dev, TP_F32, H, F, &M->w1t));
    EX_TRY(tp_tensor_alloc2(M->dev, TP_F32, 1, F, &M->b1t));
    EX_TRY(tp_tensor_alloc2(M->dev, TP_F32, F, H, &M->w2t));
    EX_TRY(tp_tensor_alloc2(M->dev, TP_F32, 1, H, &M->b2t));
    EX_TRY(tp_tensor_alloc2(M->dev, TP_F32, t, F, &M->ht));
    EX_TRY(tp_tensor_alloc2(M->dev, TP_F32, t, H, &M->ynt));
    EX_TRY(tp_tensor_upload(&M->w1t, M->w1));
    EX_TRY(tp_tensor_upload(&M->b1t, M->b1));
    EX_TRY(tp_tensor_upload(&M->w2t, M->w2));
    EX_TRY(tp_tensor_upload(&M->b2t, M->b2));
    EX_TRY(time_passes(M, naive_pass, false, &M->naive_wall));
    return tp_tensor_download(&M->ynt, M->yn);
}

/* For --save-npy: the full weights assembled from the TP shards
 * (collective), which must equal the master weights bit for bit. */
static tp_status gather_full_weights(mlp_run *M, run *R)
{
    int64_t H = M->H, F = M->F;
    tp_status st = TP_OK;
    M->gw1 = ex_calloc(H * F, sizeof(float), "the gathered w1", &st);
    M->gb1 = ex_calloc(F, sizeof(float), "the gathered b1", &st);
    M->gw2 = ex_calloc(F * H, sizeof(float), "the gathered w2", &st);
    M->gb2 = ex_calloc(H, sizeof(float), "the gathered b2", &st);
    EX_TRY(st);
    EX_TRY(tp_linear_get_full(tp_mlp_fc1(M->mlp), M->gw1, M->gb1));
    EX_TRY(tp_linear_get_full(tp_mlp_fc2(M->mlp), M->gw2, M->gb2));
    if (memcmp(M->gw1, M->w1, sizeof(float) * (size_t)(H * F)) ||
        memcmp(M->gb1, M->b1, sizeof(float) * (size_t)F) ||
        memcmp(M->gw2, M->w2, sizeof(float) * (size_t)(F * H)) ||
        memcmp(M->gb2, M->b2, sizeof(float) * (size_t)H)) {
        R->mismatch = 1;
        fprintf(stderr, "tp_mlp: rank %d: gathered TP weights differ from the master weights\n",
                M->rank);
    }
    return TP_OK;
}

/* The MLP in double from the master weights, and the f32 error bound ye
 * of its output. The bound is carried through GeLU: |gelu'| <= 1.129,
 * plus 8 ulp for erff/tanhf. */
static tp_status reference_forward(const mlp_run *M, double *yr, double *ye)
{
    int64_t t = M->t, H = M->H, F = M->F;
    tp_status st = TP_OK;
    double *xd = ex_to_double(M->x, t * H, "x in double", &st);
    double *w1d = ex_to_double(M->w1, H * F, "w1 in double", &st);
    double *b1d = ex_to_double(M->b1, F, "b1 in double", &st);
    double *w2d = ex_to_double(M->w2, F * H, "w2 in double", &st);
    double *b2d = ex_to_double(M->b2, H, "b2 in double", &st);
    double *pre = ex_calloc(t * F, sizeof(double), "the reference hidden", &st);
    double *epre = ex_calloc(t * F, sizeof(double), "the error bound of the hidden", &st);
    if (st == TP_OK)
        st = ex_ref_gemm(t, F, H, xd, NULL, w1d, b1d, 1, pre, epre);
    if (st == TP_OK) {
        for (int64_t i = 0; i < t * F; i++) {
            double hv = gelu_d(pre[i], M->o->gelu_tanh);
            epre[i] = 1.129 * epre[i] + 8.0 * EX_U * (fabs(pre[i]) + fabs(hv));
            pre[i] = hv;
        }
        st = ex_ref_gemm(t, H, F, pre, epre, w2d, b2d, M->T, yr, ye);
    }
    free(xd), free(w1d), free(b1d), free(w2d), free(b2d), free(pre), free(epre);
    return st;
}

/* How far TP and naive outputs are apart, and TP from the reference. */
typedef struct agreement {
    double max_abs, max_rel; /* TP vs naive */
    double ref_abs;          /* TP vs the double reference */
    int64_t bad;             /* elements where TP and naive differ beyond the bound */
} agreement;

/* Tolerance: both outputs are f32 evaluations of the same exact MLP; each is
 * within B = ye of it, so they agree within 2B; we allow 2 x 2B for the
 * second-order terms the bound drops. */
static agreement compare_outputs(const mlp_run *M, const double *yr, const double *ye)
{
    agreement a = {0};
    const float *y = M->y, *yn = M->yn;
    for (int64_t i = 0; i < M->t * M->H; i++) {
        double d = fabs((double)y[i] - (double)yn[i]), r = fabs((double)y[i] - yr[i]);
        if (d > a.max_abs)
            a.max_abs = d;
        if (yn[i] != 0.0f && d / fabs((double)yn[i]) > a.max_rel)
            a.max_rel = d / fabs((double)yn[i]);
        if (r > a.ref_abs)
            a.ref_abs = r;
        if (!(d <= 4.0 * ye[i]))
            a.bad++;
    }
    return a;
}

/* Rank 0: TP and naive vs the double reference. */
static tp_status check_agreement(const mlp_run *M, agreement *a)
{
    tp_status st = TP_OK;
    double *yr = ex_calloc(M->t * M->H, sizeof(double), "the reference output", &st);
    double *ye = ex_calloc(M->t * M->H, sizeof(double), "the error bound of the output", &st);
    if (st == TP_OK)
        st = reference_forward(M, yr, ye);
    if (st == TP_OK)
        *a = compare_outputs(M, yr, ye);
    free(yr), free(ye);
    return st;
}

static void print_agreement(const mlp_run *M, const agreement *a)
{
    int64_t t = M->t, H = M->H, F = M->F, f0, f1;
    tp_shard_range(F, M->T, 0, &f0, &f1);
    printf("tp_mlp: T=%d backend=%s device=%s tokens=%lld hidden=%lld ffn=%lld "
           "(ffn per rank %lld%s) gelu=%s\n",
           M->T, ex_backend_name(), tp_device_name(M->dev), (long long)t, (long long)H,
           (long long)F, (long long)(f1 - f0), F % M->T ? ", uneven" : "",
           M->o->gelu_tanh ? "tanh" : "erf");
    printf("  TP vs naive MLP: max abs diff %.3e, max rel diff %.3e -> %s "
           "(%lld of %lld elements beyond the f32 error bound)\n",
           a->max_abs, a->max_rel, a->bad ? "MISMATCH" : "AGREE", (long long)a->bad,
           (long long)(t * H));
    printf("  TP vs double reference: max abs err %.3e\n", a->ref_abs);
}

/* Rank 0's split of a TP forward from the counters, and both wall times. */
static void print_timing(const mlp_run *M)
{
    const tp_stats *s = &M->stats;
    int iters = M->o->iters;
    const tp_counter *ar_st = &s->comm[TP_PHASE_FORWARD][TP_OP_ALL_REDUCE];
    const tp_icounter *ic = &s->icomm[TP_PHASE_FORWARD][TP_OP_ALL_REDUCE];
    double gm = s->gemm[TP_PHASE_FORWARD].seconds / iters;
    double ar = (ar_st->seconds + ic->seconds) / iters;
    double hidden = (ic->seconds - ic->exposed_seconds) / iters;
    double kr = s->kernel[TP_PHASE_FORWARD].seconds / iters;
    uint64_t ncomm = 0;
    for (int op = 0; op < TP_OP_COUNT; op++)
        ncomm += s->comm[TP_PHASE_FORWARD][op].calls + s->icomm[TP_PHASE_FORWARD][op].calls;
    printf("  per forward (rank 0, mean of %d): matmul %.3f ms, all-reduce %.3f ms "
           "(%llu call(s), %.1f KiB), other kernels %.3f ms\n",
           iters, 1e3 * gm, 1e3 * ar,
           (unsigned long long)((ar_st->calls + ic->calls) / (uint64_t)iters),
           (double)(ar_st->bytes + ic->bytes) / iters / 1024.0, 1e3 * kr);
    if (M->overlap >= 2)
        printf("  overlap %d: all-reduce %.3f ms = hidden %.3f ms + exposed %.3f ms\n", M->overlap,
               1e3 * ar, 1e3 * hidden, 1e3 * (ar - hidden));
    printf("  communication: %.1f%% of matmul + all-reduce + kernels; "
           "collectives per forward: %.2f\n",
           gm + ar + kr > 0 ? 100.0 * ar / (gm + ar + kr) : 0.0, (double)ncomm / iters);
    printf("  wall per forward: TP %.3f ms, naive full MLP %.3f ms\n", 1e3 * M->tp_wall,
           1e3 * M->naive_wall);
    ex_print_memory(s, "  ", "rank 0, peak over the timed TP passes");
}

/* Rank 0, --save-npy: x, the gathered full weights and y. */
static tp_status save_npy(const mlp_run *M)
{
    const char *dir = M->o->npy_dir;
    int64_t t = M->t, H = M->H, F = M->F;
    int64_t sx[2] = {t, H}, sw1[2] = {H, F}, sb1[1] = {F}, sw2[2] = {F, H}, sb2[1] = {H};
    if (ex_write_npy(dir, "x.npy", M->x, 2, sx) || ex_write_npy(dir, "w1.npy", M->gw1, 2, sw1) ||
        ex_write_npy(dir, "b1.npy", M->gb1, 1, sb1) ||
        ex_write_npy(dir, "w2.npy", M->gw2, 2, sw2) ||
        ex_write_npy(dir, "b2.npy", M->gb2, 1, sb2) || ex_write_npy(dir, "y.npy", M->y, 2, sx))
        return tp_set_error(TP_ERR_IO, "writing .npy files to %s failed", dir);
    printf("  wrote x, w1, b1, w2, b2, y .npy to %s (y = gelu(x@w1+b1)@w2+b2)\n", dir);
    return TP_OK;
}

/* Every rank runs both MLPs; rank 0 then judges their agreement against
 * the double reference and reports. */
static tp_status run_rank(mlp_run *M, run *R)
{
    EX_TRY(set_up(M));
    EX_TRY(run_tp(M));
    EX_TRY(run_naive(M));
    if (M->o->npy_dir)
        EX_TRY(gather_full_weights(M, R));
    if (M->rank != 0)
        return TP_OK;
    agreement a = {0};
    EX_TRY(check_agreement(M, &a));
    R->mismatch |= a.bad > 0;
    print_agreement(M, &a);
    print_timing(M);
    return M->o->npy_dir ? save_npy(M) : TP_OK;
}

static tp_status rank_main(tp_comm *world, void *arg)
{
    run *R = arg;
    mlp_run M = {.o = &R->o,
                 .world = world,
                 .dev = tp_comm_device(world),
                 .rank = tp_comm_rank(world),
                 .T = tp_comm_size(world),
                 .overlap = R->overlap,
                 .t = R->o.tokens,
                 .H = R->o.hidden,
                 .F = R->o.ffn};
    tp_status st = run_rank(&M, R);
    mlp_run_free(&M);
    return st;
}

int main(int argc, char **argv)
{
    run R = {.o = {.tokens = 32, .hidden = 512, .ffn = 2048, .seed = 1234, .iters = 10}};
    const ex_opt overlap = {"overlap",
                            "N",
                            "The MLP in N token chunks, the all-reduce of one in flight while the "
                            "next computes (0: not overlapped)",
                            NULL,
                            0,
                            TP_OVERLAP_MAX,
                            .i32 = &R.overlap};
    int p =
        ex_parse(&argc, &argv, &R.o, "tp_mlp",
                 "The tensor-parallel MLP (column -> GeLU -> row, one all-reduce) vs the naive\n"
                 "full MLP on every rank.",
                 &overlap, 1);
    if (p)
        return p == 1 ? 0 : 2;
    if (ex_run("tp_mlp", R.o.tp, &argc, &argv, rank_main, &R, NULL) != TP_OK)
        return 1;
    return R.mismatch ? 1 : 0;
}
