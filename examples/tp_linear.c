/* SPDX-License-Identifier: MIT */
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

/* One rank's state. Host buffers are full size: x [t, H], h = concat(column
 * outputs) [t, F], y [t, H]; w1, b1, w2, b2 (--save-npy only) are the full
 * weights assembled from the shards. */
typedef struct lin_run {
    const ex_opts *o;
    tp_comm *world;
    tp_device *dev;
    int rank, T;
    int64_t t, H, F;
    tp_linear *col, *row;
    tp_tensor xt, ht, yt;
    float *x, *h, *y;
    float *w1, *b1, *w2, *b2;
} lin_run;

static void lin_free(lin_run *L)
{
    tp_tensor_release(&L->xt), tp_tensor_release(&L->ht), tp_tensor_release(&L->yt);
    tp_linear_free(L->col), tp_linear_free(L->row);
    free(L->x), free(L->h), free(L->y);
    free(L->w1), free(L->b1), free(L->w2), free(L->b2);
}

/* The layers (weights from the master seed, this rank's shards) and the input. */
static tp_status set_up(lin_run *L)
{
    int64_t t = L->t, H = L->H, F = L->F;
    tp_status st = TP_OK;
    L->x = ex_calloc(t * H, sizeof(float), "the input x", &st);
    L->h = ex_calloc(t * F, sizeof(float), "the column outputs h", &st);
    L->y = ex_calloc(t * H, sizeof(float), "the output y", &st);
    EX_TRY(st);
    for (int64_t i = 0; i < t * H; i++)
        L->x[i] = tp_master_uniform(L->o->seed, 1000, (uint64_t)i, 1.0f);
    tp_linear_config cc = {.in_features = H,
                           .out_features = F,
                           .bias = true,
                           .seed = L->o->seed,
                           .tensor_id = 1,
                           .name = "column"};
    tp_linear_config rc = {.in_features = F,
                           .out_features = H,
                           .bias = true,
                           .input_is_parallel = true,
                           .seed = L->o->seed,
                           .tensor_id = 3,
                           .name = "row"};
    EX_TRY(tp_column_linear_create(L->world, &cc, &L->col));
    EX_TRY(tp_row_linear_create(L->world, &rc, &L->row));
    EX_TRY(tp_tensor_alloc2(L->dev, TP_F32, t, H, &L->xt));
    return tp_tensor_upload(&L->xt, L->x);
}

/* Column then row layer; y comes back to the host. */
static tp_status tp_forward(lin_run *L)
{
    EX_TRY(tp_linear_forward(L->col, &L->xt, &L->ht)); /* h: [t, F_local], no communication */
    EX_TRY(tp_linear_forward(L->row, &L->ht, &L->yt)); /* y: [t, H], one all-reduce */
    return tp_tensor_download(&L->yt, L->y);
}

/* concat(column outputs) into L->h: all-gather the [t, F_r] blocks
 * (rank-major) and place block r at columns [lo_r, hi_r). Collective. */
static tp_status gather_column_outputs(lin_run *L)
{
    int T = L->T;
    int64_t t = L->t, F = L->F;
    size_t bytes = sizeof(float) * (size_t)(t * F);
    tp_status status = TP_OK;
    void *gath = NULL;
    size_t *counts = ex_calloc(T, sizeof(size_t), "the gather counts", &status);
    int64_t *off = ex_calloc(T + 1, sizeof(int64_t), "the shard offsets", &status);
    float *blocks = ex_calloc(t * F, sizeof(float), "the gathered blocks", &status);
    EX_CHECK(status);
    for (int r = 0; r < T; r++) {
        tp_shard_range(F, T, r, &off[r], &off[r + 1]);
        counts[r] = (size_t)(t * (off[r + 1] - off[r]));
    }
    EX_CHECK(tp_dev_alloc(L->dev, bytes, &gath));
    EX_CHECK(tp_all_gatherv(L->world, L->ht.data, gath, counts, TP_F32));
    EX_CHECK(tp_dev_download(L->dev, blocks, gath, bytes));
    for (int r = 0; r < T; r++) {
        int64_t w = off[r + 1] - off[r];
        for (int64_t i = 0; i < t; i++)
            memcpy(L->h + i * F + off[r], blocks + t * off[r] + i * w, sizeof(float) * (size_t)w);
    }
done:
    if (gath)
        tp_dev_free(L->dev, gath);
    free(counts), free(off), free(blocks);
    return status;
}

/* For --save-npy: the full weights, assembled from the shards. Collective. */
static tp_status gather_full_weights(lin_run *L)
{
    int64_t H = L->H, F = L->F;
    tp_status st = TP_OK;
    L->w1 = ex_calloc(H * F, sizeof(float), "the full w1", &st);
    L->b1 = ex_calloc(F, sizeof(float), "the full b1", &st);
    L->w2 = ex_calloc(F * H, sizeof(float), "the full w2", &st);
    L->b2 = ex_calloc(H, sizeof(float), "the full b2", &st);
    EX_TRY(st);
    EX_TRY(tp_linear_get_full(L->col, L->w1, L->b1));
    return tp_linear_get_full(L->row, L->w2, L->b2);
}

/* The serial reference in double: h = x W1 + b1, y = h W2 + b2 with their
 * f32 error bounds he, ye. */
typedef struct lin_ref {
    double *h, *he, *y, *ye;
} lin_ref;

static void lin_ref_free(lin_ref *ref)
{
    free(ref->h), free(ref->he), free(ref->y), free(ref->ye);
}

/* The reference from the full master weights, generated here independently
 * of the layers, with plain loops. */
static tp_status reference_forward(const lin_run *L, lin_ref *ref)
{
    int64_t t = L->t, H = L->H, F = L->F;
    uint64_t seed = L->o->seed;
    float sh = (float)(1.0 / sqrt((double)H)), sf = (float)(1.0 / sqrt((double)F));
    tp_status st = TP_OK;
    float *fw1 = ex_calloc(H * F, sizeof(float), "the master w1", &st);
    float *fb1 = ex_calloc(F, sizeof(float), "the master b1", &st);
    float *fw2 = ex_calloc(F * H, sizeof(float), "the master w2", &st);
    float *fb2 = ex_calloc(H, sizeof(float), "the master b2", &st);
    if (st == TP_OK) {
        tp_master_fill(seed, 1, F, 0, H, 0, F, sh, fw1);
        tp_master_fill(seed, 2, F, 0, 1, 0, F, sh, fb1);
        tp_master_fill(seed, 3, H, 0, F, 0, H, sf, fw2);
        tp_master_fill(seed, 4, H, 0, 1, 0, H, sf, fb2);
    }
    double *xd = ex_to_double(L->x, t * H, "x in double", &st);
    double *w1d = ex_to_double(fw1, H * F, "w1 in double", &st);
    double *b1d = ex_to_double(fb1, F, "b1 in double", &st);
    double *w2d = ex_to_double(fw2, F * H, "w2 in double", &st);
    double *b2d = ex_to_double(fb2, H, "b2 in double", &st);
    ref->h = ex_calloc(t * F, sizeof(double), "the reference h", &st);
    ref->he = ex_calloc(t * F, sizeof(double), "the error bound of h", &st);
    ref->y = ex_calloc(t * H, sizeof(double), "the reference y", &st);
    ref->ye = ex_calloc(t * H, sizeof(double), "the error bound of y", &st);
    if (st == TP_OK)
        st = ex_ref_gemm(t, F, H, xd, NULL, w1d, b1d, 1, ref->h, ref->he);
    if (st == TP_OK)
        st = ex_ref_gemm(t, H, F, ref->h, ref->he, w2d, b2d, L->T, ref->y, ref->ye);
    free(fw1), free(fb1), free(fw2), free(fb2);
    free(xd), free(w1d), free(b1d), free(w2d), free(b2d);
    return st;
}

/* Rank 0: compare h and y with the reference and print the report; returns
 * whether any element failed. */
static int report_agreement(const lin_run *L, const lin_ref *ref)
{
    int64_t t = L->t, H = L->H, F = L->F;
    double ha, hrel, ya, yrel;
    int64_t hbad = compare(L->h, ref->h, ref->he, t * F, &ha, &hrel);
    int64_t ybad = compare(L->y, ref->y, ref->ye, t * H, &ya, &yrel);
    printf("tp_linear: T=%d backend=%s device=%s tokens=%lld hidden=%lld ffn=%lld%s\n", L->T,
           ex_backend_name(), tp_device_name(L->dev), (long long)t, (long long)H, (long long)F,
           F % L->T ? " (uneven shards)" : "");
    printf("  column  concat(outputs) [%lld x %lld] vs x W1 + b1:  "
           "max abs err %.3e  max rel err %.3e  %s\n",
           (long long)t, (long long)F, ha, hrel, hbad ? "MISMATCH" : "ok");
    printf("  row     output          [%lld x %lld] vs h W2 + b2:  "
           "max abs err %.3e  max rel err %.3e  %s\n",
           (long long)t, (long long)H, ya, yrel, ybad ? "MISMATCH" : "ok");
    printf("  (reference: plain loops in double; an element fails if its error exceeds 2x the\n"
           "   f32 bound gamma(K+T+2)*sum|a||b|; %lld + %lld elements failed)\n",
           (long long)hbad, (long long)ybad);
    return hbad || ybad;
}

/* Rank 0, --save-npy: x, the full weights, h and y. */
static tp_status save_npy(const lin_run *L)
{
    const char *dir = L->o->npy_dir;
    int64_t t = L->t, H = L->H, F = L->F;
    int64_t sx[2] = {t, H}, sw1[2] = {H, F}, sb1[1] = {F}, sh[2] = {t, F}, sw2[2] = {F, H},
            sb2[1] = {H};
    if (ex_write_npy(dir, "x.npy", L->x, 2, sx) || ex_write_npy(dir, "w1.npy", L->w1, 2, sw1) ||
        ex_write_npy(dir, "b1.npy", L->b1, 1, sb1) || ex_write_npy(dir, "h.npy", L->h, 2, sh) ||
        ex_write_npy(dir, "w2.npy", L->w2, 2, sw2) || ex_write_npy(dir, "b2.npy", L->b2, 1, sb2) ||
        ex_write_npy(dir, "y.npy", L->y, 2, sx))
        return tp_set_error(TP_ERR_IO, "writing .npy files to %s failed", dir);
    printf("  wrote x, w1, b1, h, w2, b2, y .npy to %s (h = x@w1+b1, y = h@w2+b2)\n", dir);
    return TP_OK;
}

/* Every rank runs the layers and the collectives; rank 0 then checks the
 * result against the serial reference and reports. */
static tp_status run_rank(lin_run *L, run *R)
{
    EX_TRY(set_up(L));
    EX_TRY(tp_forward(L));
    EX_TRY(gather_column_outputs(L));
    if (L->o->npy_dir)
        EX_TRY(gather_full_weights(L));
    if (L->rank != 0)
        return TP_OK;
    lin_ref ref = {0};
    tp_status st = reference_forward(L, &ref);
    if (st == TP_OK)
        R->mismatch = report_agreement(L, &ref);
    lin_ref_free(&ref);
    if (st == TP_OK && L->o->npy_dir)
        st = save_npy(L);
    return st;
}

static tp_status rank_main(tp_comm *world, void *arg)
{
    run *R = arg;
    lin_run L = {.o = &R->o,
                 .world = world,
                 .dev = tp_comm_device(world),
                 .rank = tp_comm_rank(world),
                 .T = tp_comm_size(world),
                 .t = R->o.tokens,
                 .H = R->o.hidden,
                 .F = R->o.ffn};
    tp_status st = run_rank(&L, R);
    lin_free(&L);
    return st;
}

int main(int argc, char **argv)
{
    run R = {.o = {.tokens = 8, .hidden = 256, .ffn = 1024, .seed = 1234, .iters = 10}};
    int p =
        ex_parse(&argc, &argv, &R.o, "tp_linear",
                 "Column- and row-parallel linear layers vs a serial one-rank reference.", NULL, 0);
    if (p)
        return p == 1 ? 0 : 2;
    if (ex_run("tp_linear", R.o.tp, &argc, &argv, rank_main, &R, NULL) != TP_OK)
        return 1;
    return R.mismatch ? 1 : 0;
}
