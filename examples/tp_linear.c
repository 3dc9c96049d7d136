/*
 * tp_linear — column- and row-parallel linear layers vs a serial reference.
 *
 *   x [tokens, hidden] -> ColumnParallelLinear(hidden -> ffn) -> h (each rank: its columns)
 *   h (local shard)    -> RowParallelLinear(ffn -> hidden, input_is_parallel) -> y [tokens, hidden]
 *
 * Checks concat(column outputs) == x W1 + b1 and y == h W2 + b2 against plain
 * loops in double on rank 0, prints the max abs/rel errors, and exits 1 if
 * any element is off by more than the f32 error bound.
 *
 *   TP_BACKEND=loopback build/examples/tp_linear --tp 4
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

/* max |got - ref| and max |got - ref| / |ref|; count of elements beyond 2x bound
 * (2x: the first-order bound drops second-order terms). */
static int64_t compare(const float *got, const double *ref, const double *bound, int64_t n,
                       double *max_abs, double *max_rel)
{
    int64_t bad = 0;
    *max_abs = *max_rel = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (d > *max_abs)
            *max_abs = d;
        if (ref[i] != 0.0 && d / fabs(ref[i]) > *max_rel)
            *max_rel = d / fabs(ref[i]);
        if (!(d <= 2.0 * bound[i]))
            bad++;
    }
    return bad;
}

static tp_status rank_main(tp_comm *world, void *arg)
{
    run *R = arg;
    const ex_opts *o = &R->o;
    int rank = tp_comm_rank(world), T = tp_comm_size(world);
    tp_device *dev = tp_comm_device(world);
    int64_t t = o->tokens, H = o->hidden, F = o->ffn;
    tp_status status = TP_OK;
    tp_linear *col = NULL, *row = NULL;
    tp_tensor xt = {0}, ht = {0}, yt = {0};
    float *x = malloc(sizeof(float) * (size_t)(t * H));
    float *h = malloc(sizeof(float) * (size_t)(t * F)), *y = malloc(sizeof(float) * (size_t)(t * H));
    float *w1 = NULL, *b1 = NULL, *w2 = NULL, *b2 = NULL, *blocks = NULL;
    void *gath = NULL;
    size_t *counts = calloc((size_t)T, sizeof(size_t));
    int64_t *off = calloc((size_t)T + 1, sizeof(int64_t));

    for (int64_t i = 0; i < t * H; i++)
        x[i] = tp_master_uniform(o->seed, 1000, (uint64_t)i, 1.0f);
    tp_linear_config cc = {.in_features = H, .out_features = F, .bias = true, .seed = o->seed,
                           .tensor_id = 1, .name = "column"};
    tp_linear_config rc = {.in_features = F, .out_features = H, .bias = true,
                           .input_is_parallel = true, .seed = o->seed, .tensor_id = 3,
                           .name = "row"};
    EX_CHECK(tp_column_linear_create(world, &cc, &col));
    EX_CHECK(tp_row_linear_create(world, &rc, &row));
    EX_CHECK(tp_tensor_alloc2(dev, TP_F32, t, H, &xt));
    EX_CHECK(tp_tensor_upload(&xt, x));
    EX_CHECK(tp_linear_forward(col, &xt, &ht)); /* h: [t, F_local], no communication */
    EX_CHECK(tp_linear_forward(row, &ht, &yt)); /* y: [t, H], one all-reduce */
    EX_CHECK(tp_tensor_download(&yt, y));

    /* concat(column outputs): all-gather the [t, F_r] blocks (rank-major)
     * and place block r at columns [lo_r, hi_r) */
    for (int r = 0; r < T; r++) {
        tp_shard_range(F, T, r, &off[r], &off[r + 1]);
        counts[r] = (size_t)(t * (off[r + 1] - off[r]));
    }
    EX_CHECK(tp_dev_alloc(dev, sizeof(float) * (size_t)(t * F), &gath));
    EX_CHECK(tp_all_gatherv(world, ht.data, gath, counts, TP_F32));
    blocks = malloc(sizeof(float) * (size_t)(t * F));
    EX_CHECK(tp_dev_download(dev, blocks, gath, sizeof(float) * (size_t)(t * F)));
    for (int r = 0; r < T; r++) {
        int64_t w = off[r + 1] - off[r];
        for (int64_t i = 0; i < t; i++)
            memcpy(h + i * F + off[r], blocks + t * off[r] + i * w, sizeof(float) * (size_t)w);
    }

    if (o->npy_dir) { /* the full weights, assembled from the shards (collective) */
        w1 = malloc(sizeof(float) * (size_t)(H * F)), b1 = malloc(sizeof(float) * (size_t)F);
        w2 = malloc(sizeof(float) * (size_t)(F * H)), b2 = malloc(sizeof(float) * (size_t)H);
        EX_CHECK(tp_linear_get_full(col, w1, b1));
        EX_CHECK(tp_linear_get_full(row, w2, b2));
    }
    if (rank != 0)
        goto done;

    /* serial reference: the full master weights, plain loops in double */
    float *fw1 = malloc(sizeof(float) * (size_t)(H * F)), *fb1 = malloc(sizeof(float) * (size_t)F);
    float *fw2 = malloc(sizeof(float) * (size_t)(F * H)), *fb2 = malloc(sizeof(float) * (size_t)H);
    tp_master_fill(o->seed, 1, F, 0, H, 0, F, (float)(1.0 / sqrt((double)H)), fw1);
    tp_master_fill(o->seed, 2, F, 0, 1, 0, F, (float)(1.0 / sqrt((double)H)), fb1);
    tp_master_fill(o->seed, 3, H, 0, F, 0, H, (float)(1.0 / sqrt((double)F)), fw2);
    tp_master_fill(o->seed, 4, H, 0, 1, 0, H, (float)(1.0 / sqrt((double)F)), fb2);
    double *xd = ex_to_double(x, t * H), *w1d = ex_to_double(fw1, H * F), *b1d = ex_to_double(fb1, F);
    double *w2d = ex_to_double(fw2, F * H), *b2d = ex_to_double(fb2, H);
    double *hr = malloc(sizeof(double) * (size_t)(t * F)), *he = malloc(sizeof(double) * (size_t)(t * F));
    double *yr = malloc(sizeof(double) * (size_t)(t * H)), *ye = malloc(sizeof(double) * (size_t)(t * H));
    ex_ref_gemm(t, F, H, xd, NULL, w1d, b1d, 1, hr, he);
    ex_ref_gemm(t, H, F, hr, he, w2d, b2d, T, yr, ye);
    double ha, hrel, ya, yrel;
    int64_t hbad = compare(h, hr, he, t * F, &ha, &hrel);
    int64_t ybad = compare(y, yr, ye, t * H, &ya, &yrel);
    printf("tp_linear: T=%d backend=%s device=%s tokens=%lld hidden=%lld ffn=%lld%s\n", T,
           getenv("TP_BACKEND") ? getenv("TP_BACKEND") : "loopback", tp_device_name(dev),
           (long long)t, (long long)H, (long long)F, F % T ? " (uneven shards)" : "");
    printf("  column  concat(outputs) [%lld x %lld] vs x W1 + b1:  max abs err %.3e  max rel err %.3e  %s\n",
           (long long)t, (long long)F, ha, hrel, hbad ? "MISMATCH" : "ok");
    printf("  row     output          [%lld x %lld] vs h W2 + b2:  max abs err %.3e  max rel err %.3e  %s\n",
           (long long)t, (long long)H, ya, yrel, ybad ? "MISMATCH" : "ok");
    printf("  (reference: plain loops in double; an element fails if its error exceeds 2x the\n"
           "   f32 bound gamma(K+T+2)*sum|a||b|; %lld + %lld elements failed)\n",
           (long long)hbad, (long long)ybad);
    R->mismatch = hbad || ybad;
    if (o->npy_dir) {
        int64_t sx[2] = {t, H}, sw1[2] = {H, F}, sb1[1] = {F}, sh[2] = {t, F}, sw2[2] = {F, H},
                sb2[1] = {H};
        if (ex_write_npy(o->npy_dir, "x.npy", x, 2, sx) || ex_write_npy(o->npy_dir, "w1.npy", w1, 2, sw1) ||
            ex_write_npy(o->npy_dir, "b1.npy", b1, 1, sb1) || ex_write_npy(o->npy_dir, "h.npy", h, 2, sh) ||
            ex_write_npy(o->npy_dir, "w2.npy", w2, 2, sw2) || ex_write_npy(o->npy_dir, "b2.npy", b2, 1, sb2) ||
            ex_write_npy(o->npy_dir, "y.npy", y, 2, sx))
            status = tp_set_error(TP_ERR_IO, "writing .npy files to %s failed", o->npy_dir);
        else
            printf("  wrote x, w1, b1, h, w2, b2, y .npy to %s (h = x@w1+b1, y = h@w2+b2)\n",
                   o->npy_dir);
    }
    free(fw1), free(fb1), free(fw2), free(fb2), free(xd), free(w1d), free(b1d), free(w2d);
    free(b2d), free(hr), free(he), free(yr), free(ye);
done:
    if (gath)
        tp_dev_free(dev, gath);
    tp_tensor_release(&xt), tp_tensor_release(&ht), tp_tensor_release(&yt);
    tp_linear_free(col), tp_linear_free(row);
    free(x), free(h), free(y), free(blocks), free(counts), free(off);
    free(w1), free(b1), free(w2), free(b2);
    return status;
}

int main(int argc, char **argv)
{
    run R = {.o = {.tokens = 8, .hidden = 256, .ffn = 1024, .seed = 1234, .iters = 10}};
    int p = ex_parse(argc, argv, &R.o, "tp_linear",
                     "Column- and row-parallel linear layers vs a serial one-rank reference.");
    if (p)
        return p == 1 ? 0 : 2;
    if (ex_run("tp_linear", R.o.tp, &argc, &argv, rank_main, &R, NULL) != TP_OK)
        return 1;
    return R.mismatch ? 1 : 0;
}
