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
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tp/tp-layers.h>

#include "example-common.h"

typedef struct run {
    ex_opts o;
    int mismatch; /* set by rank 0 */
} run;

static double gelu_d(double x, bool tanh_approx)
{
    if (tanh_approx)
        return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
}

/* The naive MLP on this rank's device: full weights, no communication. */
static tp_status naive_forward(tp_device *dev, int64_t t, int64_t H, int64_t F, const void *x,
                               const void *w1, const void *b1, const void *w2, const void *b2,
                               void *h, void *y, bool tanh_approx)
{
    tp_gemm_args g = {.struct_size = sizeof g, .dtype = TP_F32, .m = t, .n = F, .k = H,
                      .alpha = 1.0f, .a = x, .lda = H, .b = w1, .ldb = F, .c = h, .ldc = F,
                      .batch = 1};
    tp_status st = tp_dev_gemm(dev, &g);
    if (st == TP_OK)
        st = tp_dev_bias_add(dev, TP_F32, t, F, h, b1);
    if (st == TP_OK)
        st = tp_dev_gelu(dev, TP_F32, t * F, h, h, tanh_approx);
    g.n = H, g.k = F, g.a = h, g.lda = F, g.b = w2, g.ldb = H, g.c = y, g.ldc = H;
    if (st == TP_OK)
        st = tp_dev_gemm(dev, &g);
    if (st == TP_OK)
        st = tp_dev_bias_add(dev, TP_F32, t, H, y, b2);
    return st;
}

static tp_status rank_main(tp_comm *world, void *arg)
{
    run *R = arg;
    const ex_opts *o = &R->o;
    int rank = tp_comm_rank(world), T = tp_comm_size(world);
    tp_device *dev = tp_comm_device(world);
    int64_t t = o->tokens, H = o->hidden, F = o->ffn;
    float bh = (float)(1.0 / sqrt((double)H)), bf = (float)(1.0 / sqrt((double)F));
    tp_status status = TP_OK;
    tp_mlp *mlp = NULL;
    tp_tensor xt = {0}, yt = {0}, w1t = {0}, b1t = {0}, w2t = {0}, b2t = {0}, ht = {0}, ynt = {0};
    float *x = malloc(sizeof(float) * (size_t)(t * H)), *y = malloc(sizeof(float) * (size_t)(t * H));
    float *yn = malloc(sizeof(float) * (size_t)(t * H));
    float *w1 = malloc(sizeof(float) * (size_t)(H * F)), *b1 = malloc(sizeof(float) * (size_t)F);
    float *w2 = malloc(sizeof(float) * (size_t)(F * H)), *b2 = malloc(sizeof(float) * (size_t)H);
    float *gw1 = NULL, *gb1 = NULL, *gw2 = NULL, *gb2 = NULL;

    for (int64_t i = 0; i < t * H; i++)
        x[i] = tp_master_uniform(o->seed, 1000, (uint64_t)i, 1.0f);
    tp_mlp_config mc = {.hidden = H, .ffn = F, .bias = true, .gelu_tanh = o->gelu_tanh,
                        .seed = o->seed, .tensor_id = 1, .name = "mlp"};
    EX_CHECK(tp_mlp_create(world, &mc, &mlp));
    EX_CHECK(tp_tensor_alloc2(dev, TP_F32, t, H, &xt));
    EX_CHECK(tp_tensor_upload(&xt, x));

    /* TP forward: one warm-up, then o->iters timed passes */
    EX_CHECK(tp_mlp_forward(mlp, &xt, &yt));
    EX_CHECK(tp_dev_synchronize(dev));
    tp_stats_reset(world);
    double t0 = ex_now();
    for (int i = 0; i < o->iters; i++)
        EX_CHECK(tp_mlp_forward(mlp, &xt, &yt));
    EX_CHECK(tp_dev_synchronize(dev));
    double tp_wall = (ex_now() - t0) / o->iters;
    tp_stats s;
    tp_stats_get(world, &s);
    EX_CHECK(tp_tensor_download(&yt, y));

    /* naive: the same full master weights, generated here independently */
    tp_master_fill(o->seed, 1, F, 0, H, 0, F, bh, w1);
    tp_master_fill(o->seed, 2, F, 0, 1, 0, F, bh, b1);
    tp_master_fill(o->seed, 3, H, 0, F, 0, H, bf, w2);
    tp_master_fill(o->seed, 4, H, 0, 1, 0, H, bf, b2);
    EX_CHECK(tp_tensor_alloc2(dev, TP_F32, H, F, &w1t));
    EX_CHECK(tp_tensor_alloc2(dev, TP_F32, 1, F, &b1t));
    EX_CHECK(tp_tensor_alloc2(dev, TP_F32, F, H, &w2t));
    EX_CHECK(tp_tensor_alloc2(dev, TP_F32, 1, H, &b2t));
    EX_CHECK(tp_tensor_alloc2(dev, TP_F32, t, F, &ht));
    EX_CHECK(tp_tensor_alloc2(dev, TP_F32, t, H, &ynt));
    EX_CHECK(tp_tensor_upload(&w1t, w1));
    EX_CHECK(tp_tensor_upload(&b1t, b1));
    EX_CHECK(tp_tensor_upload(&w2t, w2));
    EX_CHECK(tp_tensor_upload(&b2t, b2));
    EX_CHECK(naive_forward(dev, t, H, F, xt.data, w1t.data, b1t.data, w2t.data, b2t.data, ht.data,
                           ynt.data, o->gelu_tanh));
    EX_CHECK(tp_dev_synchronize(dev));
    t0 = ex_now();
    for (int i = 0; i < o->iters; i++)
        EX_CHECK(naive_forward(dev, t, H, F, xt.data, w1t.data, b1t.data, w2t.data, b2t.data,
                               ht.data, ynt.data, o->gelu_tanh));
    EX_CHECK(tp_dev_synchronize(dev));
    double naive_wall = (ex_now() - t0) / o->iters;
    EX_CHECK(tp_tensor_download(&ynt, yn));

    if (o->npy_dir) { /* the full weights, assembled from the TP shards (collective) */
        gw1 = malloc(sizeof(float) * (size_t)(H * F)), gb1 = malloc(sizeof(float) * (size_t)F);
        gw2 = malloc(sizeof(float) * (size_t)(F * H)), gb2 = malloc(sizeof(float) * (size_t)H);
        EX_CHECK(tp_linear_get_full(tp_mlp_fc1(mlp), gw1, gb1));
        EX_CHECK(tp_linear_get_full(tp_mlp_fc2(mlp), gw2, gb2));
        if (memcmp(gw1, w1, sizeof(float) * (size_t)(H * F)) || memcmp(gb1, b1, sizeof(float) * (size_t)F) ||
            memcmp(gw2, w2, sizeof(float) * (size_t)(F * H)) || memcmp(gb2, b2, sizeof(float) * (size_t)H))
            R->mismatch = 1, fprintf(stderr, "tp_mlp: rank %d: gathered TP weights differ from the master weights\n", rank);
    }
    if (rank != 0)
        goto done;

    /* Tolerance: both outputs are f32 evaluations of the same exact MLP; each
     * is within B of it, B the first-order bound of ex_ref_gemm carried
     * through GeLU (|gelu'| <= 1.129, plus 8 ulp for erff/tanhf), so they
     * agree within 2B; we allow 2 x 2B for the dropped second-order terms. */
    double *xd = ex_to_double(x, t * H), *w1d = ex_to_double(w1, H * F), *b1d = ex_to_double(b1, F);
    double *w2d = ex_to_double(w2, F * H), *b2d = ex_to_double(b2, H);
    double *pre = malloc(sizeof(double) * (size_t)(t * F)), *epre = malloc(sizeof(double) * (size_t)(t * F));
    double *yr = malloc(sizeof(double) * (size_t)(t * H)), *ye = malloc(sizeof(double) * (size_t)(t * H));
    ex_ref_gemm(t, F, H, xd, NULL, w1d, b1d, 1, pre, epre);
    for (int64_t i = 0; i < t * F; i++) {
        double hv = gelu_d(pre[i], o->gelu_tanh);
        epre[i] = 1.129 * epre[i] + 8.0 * EX_U * (fabs(pre[i]) + fabs(hv));
        pre[i] = hv;
    }
    ex_ref_gemm(t, H, F, pre, epre, w2d, b2d, T, yr, ye);
    double max_abs = 0, max_rel = 0, ref_abs = 0;
    int64_t bad = 0;
    for (int64_t i = 0; i < t * H; i++) {
        double d = fabs((double)y[i] - (double)yn[i]), r = fabs((double)y[i] - yr[i]);
        if (d > max_abs)
            max_abs = d;
        if (yn[i] != 0.0f && d / fabs((double)yn[i]) > max_rel)
            max_rel = d / fabs((double)yn[i]);
        if (r > ref_abs)
            ref_abs = r;
        if (!(d <= 4.0 * ye[i]))
            bad++;
    }
    R->mismatch |= bad > 0;
    int64_t f0, f1;
    tp_shard_range(F, T, 0, &f0, &f1);
    printf("tp_mlp: T=%d backend=%s device=%s tokens=%lld hidden=%lld ffn=%lld (ffn per rank %lld%s) "
           "gelu=%s\n",
           T, getenv("TP_BACKEND") ? getenv("TP_BACKEND") : "loopback", tp_device_name(dev),
           (long long)t, (long long)H, (long long)F, (long long)(f1 - f0),
           F % T ? ", uneven" : "", o->gelu_tanh ? "tanh" : "erf");
    printf("  TP vs naive MLP: max abs diff %.3e, max rel diff %.3e -> %s "
           "(%lld of %lld elements beyond the f32 error bound)\n",
           max_abs, max_rel, bad ? "MISMATCH" : "AGREE", (long long)bad, (long long)(t * H));
    printf("  TP vs double reference: max abs err %.3e\n", ref_abs);
    double gm = s.gemm[TP_PHASE_FORWARD].seconds / o->iters;
    double ar = s.comm[TP_PHASE_FORWARD][TP_OP_ALL_REDUCE].seconds / o->iters;
    double kr = s.kernel[TP_PHASE_FORWARD].seconds / o->iters;
    uint64_t ncomm = 0;
    for (int op = 0; op < TP_OP_COUNT; op++)
        ncomm += s.comm[TP_PHASE_FORWARD][op].calls;
    printf("  per forward (rank 0, mean of %d): matmul %.3f ms, all-reduce %.3f ms (%llu call(s), %.1f KiB), "
           "other kernels %.3f ms\n",
           o->iters, 1e3 * gm, 1e3 * ar,
           (unsigned long long)(s.comm[TP_PHASE_FORWARD][TP_OP_ALL_REDUCE].calls / (uint64_t)o->iters),
           (double)s.comm[TP_PHASE_FORWARD][TP_OP_ALL_REDUCE].bytes / o->iters / 1024.0, 1e3 * kr);
    printf("  communication: %.1f%% of matmul + all-reduce + kernels; collectives per forward: %.2f\n",
           gm + ar + kr > 0 ? 100.0 * ar / (gm + ar + kr) : 0.0, (double)ncomm / o->iters);
    printf("  wall per forward: TP %.3f ms, naive full MLP %.3f ms\n", 1e3 * tp_wall, 1e3 * naive_wall);
    if (o->npy_dir) {
        int64_t sx[2] = {t, H}, sw1[2] = {H, F}, sb1[1] = {F}, sw2[2] = {F, H}, sb2[1] = {H};
        if (ex_write_npy(o->npy_dir, "x.npy", x, 2, sx) || ex_write_npy(o->npy_dir, "w1.npy", gw1, 2, sw1) ||
            ex_write_npy(o->npy_dir, "b1.npy", gb1, 1, sb1) || ex_write_npy(o->npy_dir, "w2.npy", gw2, 2, sw2) ||
            ex_write_npy(o->npy_dir, "b2.npy", gb2, 1, sb2) || ex_write_npy(o->npy_dir, "y.npy", y, 2, sx))
            status = tp_set_error(TP_ERR_IO, "writing .npy files to %s failed", o->npy_dir);
        else
            printf("  wrote x, w1, b1, w2, b2, y .npy to %s (y = gelu(x@w1+b1)@w2+b2)\n", o->npy_dir);
    }
    free(xd), free(w1d), free(b1d), free(w2d), free(b2d), free(pre), free(epre), free(yr), free(ye);
done:
    tp_tensor_release(&xt), tp_tensor_release(&yt), tp_tensor_release(&w1t);
    tp_tensor_release(&b1t), tp_tensor_release(&w2t), tp_tensor_release(&b2t);
    tp_tensor_release(&ht), tp_tensor_release(&ynt);
    tp_mlp_free(mlp);
    free(x), free(y), free(yn), free(w1), free(b1), free(w2), free(b2);
    free(gw1), free(gb1), free(gw2), free(gb2);
    return status;
}

int main(int argc, char **argv)
{
    run R = {.o = {.tokens = 32, .hidden = 512, .ffn = 2048, .seed = 1234, .iters = 10}};
    int p = ex_parse(argc, argv, &R.o, "tp_mlp",
                     "The tensor-parallel MLP (column -> GeLU -> row, one all-reduce) vs the naive "
                     "full MLP on every rank.");
    if (p)
        return p == 1 ? 0 : 2;
    if (ex_run("tp_mlp", R.o.tp, &argc, &argv, rank_main, &R, NULL) != TP_OK)
        return 1;
    return R.mismatch ? 1 : 0;
}
