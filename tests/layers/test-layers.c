/* SPDX-License-Identifier: MIT */
/*
 * test-layers.c — ColumnParallelLinear, RowParallelLinear and ParallelMLP
 * (forward and backward) against a serial double reference (ref.h).
 *
 * Runs unchanged on any backend: world size comes from the engine
 * (TP_WORLD_SIZE for loopback, mpirun -n for mpi). The harness
 * (tests/common/tp-test.h) runs every body on groups of T = 1..W, so one run
 * at W = 4 covers T = 1..4 and W = 7 covers T = 1..7.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tp/tp-layers.h>

#include "tp-test.h"

#include "layer-util.h"
#include "ref.h"

/* ------------------------------------------------------------ helpers */

/* got[r, c] (a rows x (c1-c0) block) vs ref[r, c0+c] of a rows x ldr matrix;
 * tolerance 2x the first-order bound (see ref.h). */
static void check_block(tpt_rank *k, int line, const char *what, const float *got, int64_t rows,
                        int64_t c0, int64_t c1, const double *ref, const double *bound, int64_t ldr)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = c0; c < c1; c++) {
            double g = got[r * (c1 - c0) + (c - c0)], e = ref[r * ldr + c];
            double tol = 2.0 * bound[r * ldr + c];
            if (!(fabs(g - e) <= tol)) {
                tpt_fail_at(k, line,
                            "%s[%lld,%lld] = %.9g, reference %.9g, |diff| %.3g > tolerance %.3g",
                            what, (long long)r, (long long)c, g, e, fabs(g - e), tol);
                return;
            }
        }
}

/* Alternative full weights a user might load (not from the RNG). */
static void user_weights(int64_t in, int64_t out, float *w, float *b)
{
    for (int64_t i = 0; i < in * out; i++)
        w[i] = (float)((i * 37 % 23) - 11) / 16.0f;
    for (int64_t i = 0; i < out; i++)
        b[i] = (float)((i * 5 % 7) - 3) / 8.0f;
}

static const int64_t SIZES[][3] = {
    /* tokens, in, out */
    {13, 17, 13}, {1, 13, 17}, {17, 1, 13}, {5, 13, 7}, {3, 7, 1},
};
#define NSIZES (sizeof SIZES / sizeof SIZES[0])

/* ------------------------------------------------------- linear forward */

typedef struct lin_case {
    int64_t tokens, in, out;
    bool bias, gather, parallel, user;
} lin_case;

static void run_linear_case(tpt_rank *k, tp_linear_kind kind, const lin_case *c)
{
    int64_t tokens = c->tokens, in = c->in, out = c->out;
    int64_t split = kind == TP_LINEAR_COLUMN ? out : in;
    if (split < k->T)
        return; /* refused at create: tested in test_errors */
    float *x = malloc(sizeof(float) * (size_t)(tokens * in));
    float *w = malloc(sizeof(float) * (size_t)(in * out));
    float *b = malloc(sizeof(float) * (size_t)out);
    tpt_fill(x, tokens * in, 1);
    if (c->user)
        user_weights(in, out, w, b);
    else
        master(42, 10, in, out, w, b);
    double *xd = tpt_to_d(x, tokens * in), *wd = tpt_to_d(w, in * out), *bd = tpt_to_d(b, out);
    double *yr = malloc(sizeof(double) * (size_t)(tokens * out + 1));
    double *ye = malloc(sizeof(double) * (size_t)(tokens * out + 1));
    ref_gemm(tokens, out, in, xd, NULL, 0, wd, NULL, 0, c->bias ? bd : NULL, k->T, yr, ye);

    tp_linear_config cfg = {.in_features = in,
                            .out_features = out,
                            .bias = c->bias,
                            .gather_output = c->gather,
                            .input_is_parallel = c->parallel,
                            .seed = 42,
                            .tensor_id = 10,
                            .name = "t"};
    if (c->user) {
        cfg.full_weight = w;
        cfg.full_bias = b;
    }
    tp_linear *l = NULL;
    tp_status st = kind == TP_LINEAR_COLUMN ? tp_column_linear_create(k->g, &cfg, &l)
                                            : tp_row_linear_create(k->g, &cfg, &l);
    EXPECT(k, st == TP_OK, "create: %s", tp_last_error());
    if (!l)
        goto out;
    int64_t lo, hi;
    shard(split, k, &lo, &hi);
    tp_linear_params p;
    tp_linear_get_params(l, &p);
    EXPECT(k, p.lo == lo && p.hi == hi, "shard [%lld,%lld), expected [%lld,%lld)", (long long)p.lo,
           (long long)p.hi, (long long)lo, (long long)hi);

    tp_tensor xt;
    if (kind == TP_LINEAR_ROW && c->parallel) {
        float *xs = slice_cols(x, tokens, in, lo, hi);
        xt = tpt_upload2(k, tokens, hi - lo, xs);
        free(xs);
    } else {
        xt = tpt_upload2(k, tokens, in, x);
    }
    tp_tensor yt = {0};
    tp_stats_reset(k->g);
    EXPECT_OK(k, tp_linear_forward(l, &xt, &yt));
    char what[128];
    snprintf(what, sizeof what, "%s %lldx%lld->%lld bias=%d gather=%d parallel=%d user=%d",
             kind == TP_LINEAR_COLUMN ? "column" : "row", (long long)tokens, (long long)in,
             (long long)out, c->bias, c->gather, c->parallel, c->user);
    if (kind == TP_LINEAR_COLUMN)
        check_counts(k, __LINE__, what, TP_PHASE_FORWARD, 0, c->gather ? 1 : 0);
    else
        check_counts(k, __LINE__, what, TP_PHASE_FORWARD, 1, 0);
    float *y = tpt_download(k, &yt);
    bool full = kind == TP_LINEAR_ROW || c->gather;
    int64_t ycols = full ? out : hi - lo;
    EXPECT(k, yt.ndim == 2 && yt.shape[0] == tokens && yt.shape[1] == ycols,
           "%s: y shape [%lld,%lld], expected [%lld,%lld]", what, (long long)yt.shape[0],
           (long long)yt.shape[1], (long long)tokens, (long long)ycols);
    if (full)
        check_block(k, __LINE__, what, y, tokens, 0, out, yr, ye, out);
    else
        check_block(k, __LINE__, what, y, tokens, lo, hi, yr, ye, out);

    /* the full weight reassembled from the shards is the one we gave */
    float *wf = malloc(sizeof(float) * (size_t)(in * out)),
          *bf = malloc(sizeof(float) * (size_t)out);
    EXPECT_OK(k, tp_linear_get_full(l, wf, bf));
    EXPECT(k, memcmp(wf, w, sizeof(float) * (size_t)(in * out)) == 0,
           "%s: tp_linear_get_full weight differs from the full weight", what);
    EXPECT(k, !c->bias || memcmp(bf, b, sizeof(float) * (size_t)out) == 0,
           "%s: tp_linear_get_full bias differs", what);
    free(wf);
    free(bf);
    free(y);
    tp_tensor_release(&xt);
    tp_tensor_release(&yt);
    tp_linear_free(l);
out:
    free(x), free(w), free(b), free(xd), free(wd), free(bd), free(yr), free(ye);
}

static void body_column(tpt_rank *k)
{
    for (size_t s = 0; s < NSIZES; s++)
        for (int m = 0; m < 4; m++) {
            lin_case c = {SIZES[s][0], SIZES[s][1], SIZES[s][2], m & 1, (m >> 1) & 1, false, false};
            run_linear_case(k, TP_LINEAR_COLUMN, &c);
        }
}

static void body_row(tpt_rank *k)
{
    for (size_t s = 0; s < NSIZES; s++)
        for (int m = 0; m < 4; m++) {
            /* row splits `in`: swap so the split dimension is the larger one */
            lin_case c = {SIZES[s][0], SIZES[s][2], SIZES[s][1], m & 1, false, (m >> 1) & 1, false};
            run_linear_case(k, TP_LINEAR_ROW, &c);
        }
}

static void body_user(tpt_rank *k)
{
    lin_case c1 = {7, 13, 17, true, true, false, true};
    run_linear_case(k, TP_LINEAR_COLUMN, &c1);
    lin_case c2 = {7, 13, 17, true, false, false, true};
    run_linear_case(k, TP_LINEAR_COLUMN, &c2);
    lin_case c3 = {7, 17, 13, true, false, true, true};
    run_linear_case(k, TP_LINEAR_ROW, &c3);
    lin_case c4 = {7, 17, 13, true, false, false, true};
    run_linear_case(k, TP_LINEAR_ROW, &c4);
}

START_TEST(test_column)
{
    tpt_run_all(body_column);
}
END_TEST
START_TEST(test_row)
{
    tpt_run_all(body_row);
}
END_TEST
START_TEST(test_user_weights)
{
    tpt_run_all(body_user);
}
END_TEST

/* ------------------------------------------------------------ MLP */

typedef struct mlp_ref {
    double *pre, *epre, *h, *eh, *y, *ey;
} mlp_ref;

static void mlp_reference(int64_t t, int64_t H, int64_t F, int T, const double *x, const double *w1,
                          const double *b1, const double *w2, const double *b2, int tanh_approx,
                          mlp_ref *R)
{
    R->pre = malloc(sizeof(double) * (size_t)(t * F + 1));
    R->epre = malloc(sizeof(double) * (size_t)(t * F + 1));
    R->h = malloc(sizeof(double) * (size_t)(t * F + 1));
    R->eh = malloc(sizeof(double) * (size_t)(t * F + 1));
    R->y = malloc(sizeof(double) * (size_t)(t * H + 1));
    R->ey = malloc(sizeof(double) * (size_t)(t * H + 1));
    ref_gemm(t, F, H, x, NULL, 0, w1, NULL, 0, b1, 0, R->pre, R->epre);
    for (int64_t i = 0; i < t * F; i++) {
        double p = R->pre[i];
        R->h[i] = ref_gelu(p, tanh_approx);
        R->eh[i] = GELU_D1 * R->epre[i] + GELU_ULPS * REF_U * (fabs(p) + fabs(R->h[i]));
    }
    ref_gemm(t, H, F, R->h, R->eh, 0, w2, NULL, 0, b2, T, R->y, R->ey);
}

/* Backward through fc2 and GeLU for one dy: dh = dy W2^T, dpre = dh * gelu'(pre). */
static void mlp_ref_dpre(int64_t t, int64_t H, int64_t F, const mlp_ref *R, const double *w2,
                         const double *dy, int tanh_approx, double *dh, double *edh, double *dpre,
                         double *edpre)
{
    ref_gemm(t, F, H, dy, NULL, 0, w2, NULL, 1, NULL, 0, dh, edh);
    for (int64_t i = 0; i < t * F; i++) {
        double p = R->pre[i], gd = ref_gelu_d(p, tanh_approx);
        double egd = GELU_D2 * R->epre[i] + GELU_ULPS * REF_U * (1.0 + fabs(p));
        dpre[i] = dh[i] * gd;
        edpre[i] = fabs(gd) * edh[i] + (fabs(dh[i]) + edh[i]) * egd + REF_U * fabs(dh[i] * gd);
    }
}

static void mlp_ref_free(mlp_ref *R)
{
    free(R->pre), free(R->epre), free(R->h), free(R->eh), free(R->y), free(R->ey);
}

static void run_mlp_case(tpt_rank *k, int64_t t, int64_t H, int64_t F, bool bias, bool tanh_approx,
                         bool user, bool backward)
{
    if (F < k->T)
        return;
    float *x = malloc(sizeof(float) * (size_t)(t * H + 1));
    float *w1 = malloc(sizeof(float) * (size_t)(H * F)), *b1 = malloc(sizeof(float) * (size_t)F);
    float *w2 = malloc(sizeof(float) * (size_t)(F * H)), *b2 = malloc(sizeof(float) * (size_t)H);
    tpt_fill(x, t * H, 2);
    if (user) {
        user_weights(H, F, w1, b1);
        user_weights(F, H, w2, b2);
    } else {
        master(9, 100, H, F, w1, b1);
        master(9, 102, F, H, w2, b2);
    }
    double *xd = tpt_to_d(x, t * H), *w1d = tpt_to_d(w1, H * F), *b1d = tpt_to_d(b1, F);
    double *w2d = tpt_to_d(w2, F * H), *b2d = tpt_to_d(b2, H);
    mlp_ref R;
    mlp_reference(t, H, F, k->T, xd, w1d, bias ? b1d : NULL, w2d, bias ? b2d : NULL, tanh_approx,
                  &R);

    tp_mlp_config cfg = {.hidden = H,
                         .ffn = F,
                         .bias = bias,
                         .gelu_tanh = tanh_approx,
                         .seed = 9,
                         .tensor_id = 100,
                         .name = "mlp"};
    if (user) {
        cfg.full_w1 = w1, cfg.full_b1 = b1, cfg.full_w2 = w2, cfg.full_b2 = b2;
    }
    char what[128];
    snprintf(what, sizeof what, "mlp t=%lld H=%lld F=%lld bias=%d tanh=%d user=%d", (long long)t,
             (long long)H, (long long)F, bias, tanh_approx, user);
    tp_mlp *m = NULL;
    EXPECT_OK(k, tp_mlp_create(k->g, &cfg, &m));
    tp_tensor xt = tpt_upload2(k, t, H, x), yt = {0}, dyt = {0}, dxt = {0};
    float *dy = NULL;
    if (!m)
        goto out;
    tp_stats_reset(k->g);
    EXPECT_OK(k, tp_mlp_forward(m, &xt, &yt));
    check_counts(k, __LINE__, what, TP_PHASE_FORWARD, 1, 0);
    float *y = tpt_download(k, &yt);
    check_block(k, __LINE__, what, y, t, 0, H, R.y, R.ey, H);
    free(y);
    if (!backward)
        goto out;

    /* Backward twice with dy1, dy2 (gradients accumulate), reference below. */
    dy = malloc(sizeof(float) * (size_t)(2 * t * H + 1));
    tpt_fill(dy, 2 * t * H, 3);
    double *dyd = tpt_to_d(dy, 2 * t * H);
    int64_t tF = t * F, tH = t * H;
    double *dpre = malloc(sizeof(double) * (size_t)(2 * tF + 1));
    double *edpre = malloc(sizeof(double) * (size_t)(2 * tF + 1));
    double *dh = malloc(sizeof(double) * (size_t)(tF + 1)),
           *edh = malloc(sizeof(double) * (size_t)(tF + 1));
    for (int pass = 0; pass < 2; pass++)
        mlp_ref_dpre(t, H, F, &R, w2d, dyd + pass * tH, tanh_approx, dh, edh, dpre + pass * tF,
                     edpre + pass * tF);
    /* dx (second pass only: dx is overwritten) = dpre2 W1^T, reduced over T */
    double *dxr = malloc(sizeof(double) * (size_t)(tH + 1)),
           *edx = malloc(sizeof(double) * (size_t)(tH + 1));
    ref_gemm(t, H, F, dpre + tF, edpre + tF, 0, w1d, NULL, 1, NULL, k->T, dxr, edx);
    /* weight grads over both passes: stack the passes as 2t tokens */
    double *x2 = malloc(sizeof(double) * (size_t)(2 * tH + 1)),
           *h2 = malloc(sizeof(double) * (size_t)(2 * tF + 1));
    double *eh2 = malloc(sizeof(double) * (size_t)(2 * tF + 1)),
           *ones = malloc(sizeof(double) * (size_t)(2 * t + 1));
    for (int pass = 0; pass < 2; pass++) {
        memcpy(x2 + pass * tH, xd, sizeof(double) * (size_t)tH);
        memcpy(h2 + pass * tF, R.h, sizeof(double) * (size_t)tF);
        memcpy(eh2 + pass * tF, R.eh, sizeof(double) * (size_t)tF);
    }
    for (int64_t i = 0; i < 2 * t; i++)
        ones[i] = 1.0;
    double *dw1 = malloc(sizeof(double) * (size_t)(H * F)),
           *edw1 = malloc(sizeof(double) * (size_t)(H * F));
    double *dw2 = malloc(sizeof(double) * (size_t)(F * H)),
           *edw2 = malloc(sizeof(double) * (size_t)(F * H));
    double *db1 = malloc(sizeof(double) * (size_t)F), *edb1 = malloc(sizeof(double) * (size_t)F);
    double *db2 = malloc(sizeof(double) * (size_t)H), *edb2 = malloc(sizeof(double) * (size_t)H);
    ref_gemm(H, F, 2 * t, x2, NULL, 1, dpre, edpre, 0, NULL, 0, dw1, edw1);
    ref_gemm(F, H, 2 * t, h2, eh2, 1, dyd, NULL, 0, NULL, 0, dw2, edw2);
    ref_gemm(1, F, 2 * t, ones, NULL, 0, dpre, edpre, 0, NULL, 0, db1, edb1);
    ref_gemm(1, H, 2 * t, ones, NULL, 0, dyd, NULL, 0, NULL, 0, db2, edb2);

    dyt = tpt_upload2(k, t, H, dy);
    tp_tensor dyt2 = tpt_upload2(k, t, H, dy + tH);
    tp_stats_reset(k->g);
    EXPECT_OK(k, tp_mlp_zero_grad(m));
    EXPECT_OK(k, tp_mlp_backward(m, &dyt, &dxt));
    check_counts(k, __LINE__, what, TP_PHASE_BACKWARD, 1, 0);
    EXPECT_OK(k, tp_mlp_forward(m, &xt, &yt));
    EXPECT_OK(k, tp_mlp_backward(m, &dyt2, &dxt));
    float *dx = tpt_download(k, &dxt);
    check_block(k, __LINE__, "mlp dx", dx, t, 0, H, dxr, edx, H);
    int64_t lo, hi;
    shard(F, k, &lo, &hi);
    tp_linear_params p1, p2;
    tp_linear_get_params(tp_mlp_fc1(m), &p1);
    tp_linear_get_params(tp_mlp_fc2(m), &p2);
    float *g = tpt_download(k, p1.weight_grad);
    check_block(k, __LINE__, "mlp dW1 (2 passes)", g, H, lo, hi, dw1, edw1, F);
    free(g);
    g = tpt_download(k, p2.weight_grad);
    check_block(k, __LINE__, "mlp dW2 (2 passes)", g, hi - lo, 0, H, dw2 + lo * H, edw2 + lo * H,
                H);
    free(g);
    if (bias) {
        g = tpt_download(k, p1.bias_grad);
        check_block(k, __LINE__, "mlp db1", g, 1, lo, hi, db1, edb1, F);
        free(g);
        g = tpt_download(k, p2.bias_grad);
        check_block(k, __LINE__, "mlp db2", g, 1, 0, H, db2, edb2, H);
        free(g);
    }
    /* zero_grad really zeroes */
    EXPECT_OK(k, tp_mlp_zero_grad(m));
    g = tpt_download(k, p2.weight_grad);
    for (int64_t i = 0; i < (hi - lo) * H; i++)
        if (g[i] != 0.0f) {
            tpt_fail_at(k, __LINE__, "dW2[%lld] = %g after zero_grad", (long long)i, g[i]);
            break;
        }
    free(g);
    free(dx);
    tp_tensor_release(&dyt2);
    free(dyd), free(dpre), free(edpre), free(dh), free(edh), free(dxr), free(edx);
    free(x2), free(h2), free(eh2), free(ones), free(dw1), free(edw1), free(dw2), free(edw2);
    free(db1), free(edb1), free(db2), free(edb2);
out:
    tp_tensor_release(&xt);
    tp_tensor_release(&yt);
    tp_tensor_release(&dyt);
    tp_tensor_release(&dxt);
    tp_mlp_free(m);
    mlp_ref_free(&R);
    free(dy);
    free(x), free(w1), free(b1), free(w2), free(b2);
    free(xd), free(w1d), free(b1d), free(w2d), free(b2d);
}

static const int64_t MLP_SIZES[][3] = {
    /* tokens, hidden, ffn */
    {13, 17, 13}, {1, 13, 17}, {7, 1, 13}, {3, 5, 7}, {2, 4, 1},
};
#define NMLP (sizeof MLP_SIZES / sizeof MLP_SIZES[0])

static void body_mlp(tpt_rank *k)
{
    for (size_t s = 0; s < NMLP; s++)
        for (int m = 0; m < 4; m++)
            run_mlp_case(k, MLP_SIZES[s][0], MLP_SIZES[s][1], MLP_SIZES[s][2], m & 1, (m >> 1) & 1,
                         false, false);
    run_mlp_case(k, 5, 13, 17, true, false, true, false);
}

static void body_mlp_backward(tpt_rank *k)
{
    for (size_t s = 0; s < NMLP; s++)
        for (int m = 0; m < 4; m++)
            run_mlp_case(k, MLP_SIZES[s][0], MLP_SIZES[s][1], MLP_SIZES[s][2], m & 1, (m >> 1) & 1,
                         false, true);
    run_mlp_case(k, 5, 13, 17, true, false, true, true);
}

START_TEST(test_mlp)
{
    tpt_run_all(body_mlp);
}
END_TEST
START_TEST(test_mlp_backward)
{
    tpt_run_all(body_mlp_backward);
}
END_TEST

/* ---------------------------------------------------- linear backward */

static void run_linear_bwd(tpt_rank *k, tp_linear_kind kind, int64_t t, int64_t in, int64_t out,
                           bool bias, bool gather, bool parallel, bool want_dx)
{
    int64_t split = kind == TP_LINEAR_COLUMN ? out : in;
    if (split < k->T)
        return;
    int64_t lo, hi;
    shard(split, k, &lo, &hi);
    float *x = malloc(sizeof(float) * (size_t)(t * in + 1)),
          *w = malloc(sizeof(float) * (size_t)(in * out));
    float *b = malloc(sizeof(float) * (size_t)out),
          *dy = malloc(sizeof(float) * (size_t)(2 * t * out + 1));
    tpt_fill(x, t * in, 4);
    tpt_fill(dy, 2 * t * out, 5);
    master(5, 20, in, out, w, b);
    double *xd = tpt_to_d(x, t * in), *wd = tpt_to_d(w, in * out), *dyd = tpt_to_d(dy, 2 * t * out);
    /* dx = dy2 W^T (cross-rank reduction for column) */
    double *dxr = malloc(sizeof(double) * (size_t)(t * in + 1)),
           *edx = malloc(sizeof(double) * (size_t)(t * in + 1));
    ref_gemm(t, in, out, dyd + t * out, NULL, 0, wd, NULL, 1, NULL, k->T, dxr, edx);
    double *x2 = malloc(sizeof(double) * (size_t)(2 * t * in + 1)),
           *ones = malloc(sizeof(double) * (size_t)(2 * t + 1));
    memcpy(x2, xd, sizeof(double) * (size_t)(t * in));
    memcpy(x2 + t * in, xd, sizeof(double) * (size_t)(t * in));
    for (int64_t i = 0; i < 2 * t; i++)
        ones[i] = 1.0;
    double *dw = malloc(sizeof(double) * (size_t)(in * out)),
           *edw = malloc(sizeof(double) * (size_t)(in * out));
    double *db = malloc(sizeof(double) * (size_t)out), *edb = malloc(sizeof(double) * (size_t)out);
    ref_gemm(in, out, 2 * t, x2, NULL, 1, dyd, NULL, 0, NULL, 0, dw, edw);
    ref_gemm(1, out, 2 * t, ones, NULL, 0, dyd, NULL, 0, NULL, 0, db, edb);

    char what[160];
    snprintf(what, sizeof what, "%s bwd %lldx%lld->%lld bias=%d gather=%d parallel=%d dx=%d",
             kind == TP_LINEAR_COLUMN ? "column" : "row", (long long)t, (long long)in,
             (long long)out, bias, gather, parallel, want_dx);
    tp_linear_config cfg = {.in_features = in,
                            .out_features = out,
                            .bias = bias,
                            .gather_output = gather,
                            .input_is_parallel = parallel,
                            .seed = 5,
                            .tensor_id = 20};
    tp_linear *l = NULL;
    EXPECT_OK(k, kind == TP_LINEAR_COLUMN ? tp_column_linear_create(k->g, &cfg, &l)
                                          : tp_row_linear_create(k->g, &cfg, &l));
    bool xshard = kind == TP_LINEAR_ROW && parallel;
    bool yfull = kind == TP_LINEAR_ROW || gather;
    int64_t xc0 = xshard ? lo : 0, xc1 = xshard ? hi : in;
    int64_t yc0 = yfull ? 0 : lo, yc1 = yfull ? out : hi;
    float *xs = slice_cols(x, t, in, xc0, xc1);
    float *dy1 = slice_cols(dy, t, out, yc0, yc1),
          *dy2 = slice_cols(dy + t * out, t, out, yc0, yc1);
    tp_tensor xt = tpt_upload2(k, t, xc1 - xc0, xs), yt = {0}, dxt = {0};
    tp_tensor d1 = tpt_upload2(k, t, yc1 - yc0, dy1), d2 = tpt_upload2(k, t, yc1 - yc0, dy2);
    if (!l)
        goto out;
    EXPECT_OK(k, tp_linear_forward(l, &xt, &yt));
    tp_stats_reset(k->g);
    EXPECT_OK(k, tp_linear_backward(l, &d1, want_dx ? &dxt : NULL));
    int ar = kind == TP_LINEAR_COLUMN && want_dx ? 1 : 0;
    int ag = kind == TP_LINEAR_ROW && !parallel && want_dx ? 1 : 0;
    check_counts(k, __LINE__, what, TP_PHASE_BACKWARD, ar, ag);
    EXPECT_OK(k, tp_linear_backward(l, &d2, want_dx ? &dxt : NULL));
    if (want_dx) {
        float *dx = tpt_download(k, &dxt);
        EXPECT(k, dxt.shape[1] == xc1 - xc0, "%s: dx has %lld columns, expected %lld", what,
               (long long)dxt.shape[1], (long long)(xc1 - xc0));
        check_block(k, __LINE__, what, dx, t, xc0, xc1, dxr, edx, in);
        free(dx);
    }
    tp_linear_params p;
    tp_linear_get_params(l, &p);
    float *g = tpt_download(k, p.weight_grad);
    if (kind == TP_LINEAR_COLUMN)
        check_block(k, __LINE__, what, g, in, lo, hi, dw, edw, out);
    else
        check_block(k, __LINE__, what, g, hi - lo, 0, out, dw + lo * out, edw + lo * out, out);
    free(g);
    if (bias) {
        g = tpt_download(k, p.bias_grad);
        check_block(k, __LINE__, what, g, 1, kind == TP_LINEAR_COLUMN ? lo : 0,
                    kind == TP_LINEAR_COLUMN ? hi : out, db, edb, out);
        free(g);
    }
    /* the gathered full gradient matches too */
    float *gf = malloc(sizeof(float) * (size_t)(in * out)),
          *gb = malloc(sizeof(float) * (size_t)out);
    EXPECT_OK(k, tp_linear_get_full_grad(l, gf, gb));
    check_block(k, __LINE__, "full grad", gf, in, 0, out, dw, edw, out);
    free(gf), free(gb);
out:
    tp_linear_free(l);
    tp_tensor_release(&xt), tp_tensor_release(&yt), tp_tensor_release(&dxt);
    tp_tensor_release(&d1), tp_tensor_release(&d2);
    free(xs), free(dy1), free(dy2);
    free(x), free(w), free(b), free(dy), free(xd), free(wd), free(dyd), free(dxr), free(edx);
    free(x2), free(ones), free(dw), free(edw), free(db), free(edb);
}

static void body_linear_backward(tpt_rank *k)
{
    for (size_t s = 0; s < NSIZES; s++)
        for (int m = 0; m < 8; m++) {
            bool bias = m & 1, opt = (m >> 1) & 1, dx = !((m >> 2) & 1);
            run_linear_bwd(k, TP_LINEAR_COLUMN, SIZES[s][0], SIZES[s][1], SIZES[s][2], bias, opt,
                           false, dx);
            run_linear_bwd(k, TP_LINEAR_ROW, SIZES[s][0], SIZES[s][2], SIZES[s][1], bias, false,
                           opt, dx);
        }
}

START_TEST(test_linear_backward)
{
    tpt_run_all(body_linear_backward);
}
END_TEST

/* ------------------------------------- the reference vs finite differences */

/* L(x, W1, b1, W2, b2) = sum dy . mlp(x) in double; central differences of L
 * must match the analytic gradients the backward tests use. Step 1e-5 on
 * O(1) values: truncation ~h^2 |L'''| ~ 1e-10, rounding ~1e-16 |L| / h ~ 1e-11,
 * so 1e-7 (absolute, on gradients of size ~1) leaves a wide margin yet
 * catches any wrong formula or transposition (errors ~0.1). */
static double mlp_loss(int64_t t, int64_t H, int64_t F, const double *x, const double *w1,
                       const double *b1, const double *w2, const double *b2, const double *dy,
                       int tanh_approx)
{
    mlp_ref R;
    mlp_reference(t, H, F, 1, x, w1, b1, w2, b2, tanh_approx, &R);
    double L = 0;
    for (int64_t i = 0; i < t * H; i++)
        L += dy[i] * R.y[i];
    mlp_ref_free(&R);
    return L;
}

START_TEST(test_reference_fd)
{
    const int64_t t = 2, H = 3, F = 4;
    for (int tanh_approx = 0; tanh_approx < 2; tanh_approx++) {
        double x[6], w1[12], b1[4], w2[12], b2[3], dy[6];
        double *params[] = {x, w1, b1, w2, b2};
        int64_t sizes[] = {6, 12, 4, 12, 3};
        for (int p = 0; p < 5; p++)
            for (int64_t i = 0; i < sizes[p]; i++)
                params[p][i] = tp_master_uniform(3, 50 + (uint64_t)p, (uint64_t)i, 1.5f);
        for (int64_t i = 0; i < 6; i++)
            dy[i] = tp_master_uniform(3, 60, (uint64_t)i, 1.0f);
        /* analytic, exactly as run_mlp_case derives its references */
        mlp_ref R;
        mlp_reference(t, H, F, 1, x, w1, b1, w2, b2, tanh_approx, &R);
        double dh[8], edh[8], dpre[8], edpre[8], g[5][12], e[12], ones[2] = {1, 1};
        mlp_ref_dpre(t, H, F, &R, w2, dy, tanh_approx, dh, edh, dpre, edpre);
        ref_gemm(t, H, F, dpre, NULL, 0, w1, NULL, 1, NULL, 1, g[0], e);   /* dx */
        ref_gemm(H, F, t, x, NULL, 1, dpre, NULL, 0, NULL, 0, g[1], e);    /* dW1 */
        ref_gemm(1, F, t, ones, NULL, 0, dpre, NULL, 0, NULL, 0, g[2], e); /* db1 */
        ref_gemm(F, H, t, R.h, NULL, 1, dy, NULL, 0, NULL, 0, g[3], e);    /* dW2 */
        ref_gemm(1, H, t, ones, NULL, 0, dy, NULL, 0, NULL, 0, g[4], e);   /* db2 */
        mlp_ref_free(&R);
        const char *names[] = {"dx", "dW1", "db1", "dW2", "db2"};
        for (int p = 0; p < 5; p++)
            for (int64_t i = 0; i < sizes[p]; i++) {
                double keep = params[p][i], h = 1e-5;
                params[p][i] = keep + h;
                double lp = mlp_loss(t, H, F, x, w1, b1, w2, b2, dy, tanh_approx);
                params[p][i] = keep - h;
                double lm = mlp_loss(t, H, F, x, w1, b1, w2, b2, dy, tanh_approx);
                params[p][i] = keep;
                double fd = (lp - lm) / (2 * h);
                ck_assert_msg(fabs(fd - g[p][i]) <= 1e-7,
                              "%s[%lld] (tanh=%d): analytic %.12g, finite difference %.12g",
                              names[p], (long long)i, tanh_approx, g[p][i], fd);
            }
    }
}
END_TEST

/* ------------------------------------------------------------ errors */

static void body_errors(tpt_rank *k)
{
    int T = k->T;
    char buf[160];
    tp_linear *l = NULL;
    /* T larger than the split dimension: refused at create, naming both */
    if (T > 1) {
        tp_linear_config c = {.in_features = 8, .out_features = T - 1, .name = "proj"};
        snprintf(buf, sizeof buf, "T=%d is larger than out_features=%d", T, T - 1);
        EXPECT_ERR(k, tp_column_linear_create(k->g, &c, &l), TP_ERR_SHAPE, buf, "'proj'",
                   "0 columns");
        EXPECT(k, l == NULL, "failed create left a layer");
        tp_linear_config r = {.in_features = T - 1, .out_features = 8};
        snprintf(buf, sizeof buf, "T=%d is larger than in_features=%d", T, T - 1);
        EXPECT_ERR(k, tp_row_linear_create(k->g, &r, &l), TP_ERR_SHAPE, buf, "RowParallelLinear");
        tp_mlp_config mc = {.hidden = 8, .ffn = T - 1, .name = "blk.mlp"};
        tp_mlp *m = NULL;
        snprintf(buf, sizeof buf, "T=%d is larger than ffn=%d", T, T - 1);
        EXPECT_ERR(k, tp_mlp_create(k->g, &mc, &m), TP_ERR_SHAPE, buf, "'blk.mlp'");
    }
    tp_linear_config bad = {.in_features = 0, .out_features = 4};
    EXPECT_ERR(k, tp_column_linear_create(k->g, &bad, &l), TP_ERR_SHAPE, "in_features (0)");

    /* Even sizes here (4T, 3T): a shape error must fail on every rank alike,
     * otherwise the others would wait in the collective. */
    int64_t tok = 5, in = 4 * T + 1, mid = 4 * T, out = 3 * T;
    tp_linear_config cc = {.in_features = in, .out_features = mid, .bias = true, .name = "fc1"};
    tp_linear_config rc = {.in_features = mid,
                           .out_features = out,
                           .bias = true,
                           .input_is_parallel = true,
                           .name = "fc2"};
    tp_linear *col = NULL, *row = NULL, *colg = NULL, *row_other = NULL;
    EXPECT_OK(k, tp_column_linear_create(k->g, &cc, &col));
    EXPECT_OK(k, tp_row_linear_create(k->g, &rc, &row));
    cc.gather_output = true;
    EXPECT_OK(k, tp_column_linear_create(k->g, &cc, &colg));
    tp_linear_config ro = rc;
    ro.in_features = 3 * T; /* does not match the column's out_features 4T */
    EXPECT_OK(k, tp_row_linear_create(k->g, &ro, &row_other));
    if (!col || !row || !colg || !row_other)
        goto out;
    float *hx = calloc((size_t)(tok * in), sizeof(float));
    tp_tensor x = tpt_upload2(k, tok, in, hx), h = {0}, hg = {0}, y = {0};
    free(hx);
    tp_stats_reset(k->g);
    EXPECT_OK(k, tp_linear_forward(col, &x, &h));
    EXPECT_OK(k, tp_linear_forward(colg, &x, &hg));

    /* row fed the full input although it expects its shard */
    if (T > 1) {
        snprintf(buf, sizeof buf, "x has %lld columns = in_features", (long long)mid);
        EXPECT_ERR(k, tp_linear_forward(row, &hg, &y), TP_ERR_SHAPE, buf,
                   "did you mean input_is_parallel=false", "column layer's local output", "'fc2'");
        /* a column output that does not match the next row's input */
        EXPECT_ERR(k, tp_linear_forward(row_other, &h, &y), TP_ERR_SHAPE, "x last dim expected 3",
                   "got 4", "out_features must equal this layer's in_features");
        /* a non-parallel row layer given the shard */
        tp_linear_config rf = rc;
        rf.input_is_parallel = false;
        tp_linear *rowf = NULL;
        EXPECT_OK(k, tp_row_linear_create(k->g, &rf, &rowf));
        EXPECT_ERR(k, tp_linear_forward(rowf, &h, &y), TP_ERR_SHAPE,
                   "did you mean input_is_parallel=true");
        tp_linear_free(rowf);
        /* y sized for the full output on a column layer without gather */
        tp_tensor yfull = {0};
        EXPECT_OK(k, tp_tensor_alloc2(k->dev, TP_F32, tok, mid, &yfull));
        EXPECT_ERR(k, tp_linear_forward(col, &x, &yfull), TP_ERR_SHAPE, "'fc1'",
                   "did you mean gather_output=true");
        tp_tensor_release(&yfull);
    }
    /* column fed the wrong width */
    EXPECT_ERR(k, tp_linear_forward(col, &h, &y), TP_ERR_SHAPE, "in_features", "expected");
    /* tokens mismatch between x and y */
    tp_tensor ybad = {0};
    EXPECT_OK(k, tp_tensor_alloc2(k->dev, TP_F32, tok - 1, mid, &ybad));
    EXPECT_ERR(k, tp_linear_forward(colg, &x, &ybad), TP_ERR_SHAPE, "tokens mismatch",
               "has 4 tokens", "input has 5");
    tp_tensor_release(&ybad);
    /* dtype mismatch */
    tp_tensor xi = tp_tensor_view(k->dev, TP_I32, x.data, 2, x.shape);
    EXPECT_ERR(k, tp_linear_forward(col, &xi, &y), TP_ERR_SHAPE, "dtype", "i32", "f32");
    /* wrong device */
    tp_tensor xd = x;
    xd.dev = NULL;
    xd.owned = false;
    EXPECT_ERR(k, tp_linear_forward(col, &xd, &y), TP_ERR_SHAPE, "different device");
    /* 1-D input */
    tp_tensor x1 = tp_tensor_view(k->dev, TP_F32, x.data, 1, x.shape + 1);
    EXPECT_ERR(k, tp_linear_forward(col, &x1, &y), TP_ERR_SHAPE, "1 dims");
    /* backward before forward; dy with the wrong token count */
    EXPECT_ERR(k, tp_linear_backward(row, &h, NULL), TP_ERR_INVALID_ARG, "before forward");
    tp_tensor dyb = {0};
    EXPECT_OK(k, tp_tensor_alloc2(k->dev, TP_F32, tok + 1, h.shape[1], &dyb));
    EXPECT_ERR(k, tp_linear_backward(col, &dyb, NULL), TP_ERR_SHAPE, "tokens mismatch");
    tp_tensor_release(&dyb);
    /* none of the refused calls communicated */
    check_counts(k, __LINE__, "after errors", TP_PHASE_FORWARD, 0, 1);
    EXPECT(k, y.data == NULL, "a refused forward allocated y");

    /* MLP: x with the wrong hidden size */
    tp_mlp_config mc = {.hidden = in + 1, .ffn = 2 * T, .name = "m"};
    tp_mlp *m = NULL;
    EXPECT_OK(k, tp_mlp_create(k->g, &mc, &m));
    if (m)
        EXPECT_ERR(k, tp_mlp_forward(m, &x, &y), TP_ERR_SHAPE, "ParallelMLP 'm'", "hidden");
    tp_mlp_free(m);
    tp_tensor_release(&x), tp_tensor_release(&h), tp_tensor_release(&hg);
    tp_tensor_release(&y);
out:
    tp_linear_free(col), tp_linear_free(row), tp_linear_free(colg), tp_linear_free(row_other);
}

START_TEST(test_errors)
{
    tpt_run_all(body_errors);
}
END_TEST

/* ------------------------------------------ vocab-parallel embedding and CE */

static tp_tensor upload_ids(tpt_rank *k, int64_t n, const int32_t *ids)
{
    tp_tensor t = {0};
    int64_t shape[1] = {n};
    EXPECT_OK(k, tp_tensor_alloc(k->dev, TP_I32, 1, shape, &t));
    if (t.data && n > 0)
        EXPECT_OK(k, tp_tensor_upload(&t, ids));
    return t;
}

/* Forward is exact: each output row is one table row (or 0) plus zeros from
 * the other ranks. Backward: dtable[v] = sum of the dy rows with id v, at
 * most n terms: gamma(n + 2) * sum |dy| (ref.h). */
static void run_embedding(tpt_rank *k, int64_t vocab, int64_t dim)
{
    if (vocab < k->T)
        return;
    const int64_t n = 11;
    int32_t ids[11];
    for (int64_t i = 0; i < n; i++) /* boundaries, repeats, and out of range */
        ids[i] = (int32_t)((i * 5) % (vocab + 2)) - 1;
    ids[3] = ids[7] = (int32_t)(vocab - 1);
    float *table = malloc(sizeof(float) * (size_t)(vocab * dim));
    tp_master_fill(8, 30, dim, 0, vocab, 0, dim, 1.0f, table);
    float *dy = malloc(sizeof(float) * (size_t)(2 * n * dim));
    tpt_fill(dy, 2 * n * dim, 6);
    tp_embedding_config cfg = {
        .vocab = vocab, .dim = dim, .seed = 8, .tensor_id = 30, .name = "wte"};
    tp_embedding *e = NULL;
    EXPECT_OK(k, tp_embedding_create(k->g, &cfg, &e));
    tp_tensor it = upload_ids(k, n, ids), yt = {0};
    tp_tensor d1 = tpt_upload2(k, n, dim, dy), d2 = tpt_upload2(k, n, dim, dy + n * dim);
    if (!e)
        goto out;
    tp_stats_reset(k->g);
    EXPECT_OK(k, tp_embedding_forward(e, &it, &yt));
    check_counts(k, __LINE__, "embedding fwd", TP_PHASE_FORWARD, 1, 0);
    float *y = tpt_download(k, &yt);
    for (int64_t i = 0; i < n; i++)
        for (int64_t d = 0; d < dim; d++) {
            float want = ids[i] >= 0 && ids[i] < vocab ? table[ids[i] * dim + d] : 0.0f;
            if (y[i * dim + d] != want) {
                tpt_fail_at(
                    k, __LINE__, "embedding vocab=%lld: y[%lld,%lld] = %g, expected %g (id %d)",
                    (long long)vocab, (long long)i, (long long)d, y[i * dim + d], want, ids[i]);
                i = n;
                break;
            }
        }
    free(y);
    tp_stats_reset(k->g);
    EXPECT_OK(k, tp_embedding_zero_grad(e));
    EXPECT_OK(k, tp_embedding_backward(e, &d1));
    EXPECT_OK(k, tp_embedding_backward(e, &d2)); /* accumulates */
    check_counts(k, __LINE__, "embedding bwd", TP_PHASE_BACKWARD, 0, 0);
    double *ref = calloc((size_t)(vocab * dim), sizeof(double));
    double *bnd = calloc((size_t)(vocab * dim), sizeof(double));
    for (int p = 0; p < 2; p++)
        for (int64_t i = 0; i < n; i++)
            if (ids[i] >= 0 && ids[i] < vocab)
                for (int64_t d = 0; d < dim; d++) {
                    ref[ids[i] * dim + d] += dy[(p * n + i) * dim + d];
                    bnd[ids[i] * dim + d] +=
                        ref_gamma(2.0 * n + 2) * fabs(dy[(p * n + i) * dim + d]);
                }
    float *g = malloc(sizeof(float) * (size_t)(vocab * dim));
    EXPECT_OK(k, tp_embedding_get_full_grad(e, g));
    check_block(k, __LINE__, "embedding dtable", g, vocab, 0, dim, ref, bnd, dim);
    float *tf = malloc(sizeof(float) * (size_t)(vocab * dim));
    EXPECT_OK(k, tp_embedding_get_full(e, tf));
    EXPECT(k, memcmp(tf, table, sizeof(float) * (size_t)(vocab * dim)) == 0,
           "embedding: reassembled table differs from the master table");
    free(g), free(tf), free(ref), free(bnd);
out:
    tp_embedding_free(e);
    tp_tensor_release(&it), tp_tensor_release(&yt), tp_tensor_release(&d1), tp_tensor_release(&d2);
    free(table), free(dy);
}

/* Cross-entropy reference in double. Error model for the f32 pieces: each
 * exp is within a few ulp (we allow 8u), the sum of V exps over T ranks is
 * within gamma(V+T+2), so log(sumexp) is off by <= (V+T+12)u absolute; the
 * target logit is copied exactly; the smoothing term's sum of logits is
 * within gamma(V+T+2) sum|x|. dlogits: p = exp(x-max)/sumexp has relative
 * error <= (V+T+12)u, then one subtraction and one scaling (2u). */
static void run_ce(tpt_rank *k, int64_t rows, int64_t vocab, float smoothing, bool ignore)
{
    if (vocab < k->T)
        return;
    int64_t lo, hi;
    shard(vocab, k, &lo, &hi);
    float *x = malloc(sizeof(float) * (size_t)(rows * vocab));
    tpt_fill(x, rows * vocab, 7);
    for (int64_t i = 0; i < rows * vocab; i++)
        x[i] *= 4.0f;
    int32_t *tg = malloc(sizeof(int32_t) * (size_t)rows);
    for (int64_t r = 0; r < rows; r++)
        tg[r] = (int32_t)((r * 7 + 3) % vocab);
    if (ignore && rows > 2)
        tg[1] = -100;
    double V = (double)vocab, s = smoothing, loss_ref = 0, loss_bnd = 0;
    double *dref = malloc(sizeof(double) * (size_t)(rows * vocab));
    double *dbnd = malloc(sizeof(double) * (size_t)(rows * vocab));
    int64_t count = 0;
    for (int64_t r = 0; r < rows; r++)
        count += tg[r] != -100;
    double e_lse = (V + k->T + 12) * REF_U;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * vocab;
        double mx = -INFINITY, se = 0, sx = 0, sax = 0;
        for (int64_t c = 0; c < vocab; c++)
            mx = fmax(mx, xr[c]);
        for (int64_t c = 0; c < vocab; c++)
            se += exp(xr[c] - mx), sx += xr[c], sax += fabs(xr[c]);
        double lse = mx + log(se);
        bool ign = tg[r] == -100;
        if (!ign) {
            loss_ref += lse - (1 - s) * xr[tg[r]] - s * sx / V;
            loss_bnd += e_lse + REF_U * fabs(lse) + s * ref_gamma(V + k->T + 2) * sax / V;
        }
        for (int64_t c = 0; c < vocab; c++) {
            double p = exp(xr[c] - mx) / se, sc = ign ? 0.0 : 1.0 / (double)count;
            dref[r * vocab + c] = sc * (p - (c == tg[r] ? 1 - s : 0) - s / V);
            dbnd[r * vocab + c] = sc * (e_lse * p + 2 * REF_U * (p + 1));
        }
    }
    loss_ref = count ? loss_ref / (double)count : 0.0;
    loss_bnd = count ? loss_bnd / (double)count + 4 * REF_U * fabs(loss_ref) : 0.0;

    tp_ce_config cfg = {.vocab = vocab,
                        .label_smoothing = smoothing,
                        .use_ignore_index = ignore,
                        .ignore_index = -100,
                        .name = "lm_loss"};
    tp_vocab_ce *ce = NULL;
    EXPECT_OK(k, tp_vocab_ce_create(k->g, &cfg, &ce));
    float *xs = slice_cols(x, rows, vocab, lo, hi);
    tp_tensor lt = tpt_upload2(k, rows, hi - lo, xs), tt = upload_ids(k, rows, tg), dt = {0};
    if (!ce)
        goto out;
    float loss = -1;
    tp_stats_reset(k->g);
    EXPECT_OK(k, tp_vocab_ce_forward(ce, &lt, &tt, &loss));
    check_counts(k, __LINE__, "ce fwd", TP_PHASE_FORWARD, 2, 0);
    EXPECT(k, fabs(loss - loss_ref) <= 2 * loss_bnd,
           "ce rows=%lld vocab=%lld s=%g ignore=%d: loss %.9g, reference %.9g, tolerance %.3g",
           (long long)rows, (long long)vocab, smoothing, ignore, loss, loss_ref, 2 * loss_bnd);
    tp_stats_reset(k->g);
    EXPECT_OK(k, tp_vocab_ce_backward(ce, 1.0f, &dt));
    check_counts(k, __LINE__, "ce bwd", TP_PHASE_BACKWARD, 0, 0);
    float *d = tpt_download(k, &dt);
    check_block(k, __LINE__, "ce dlogits", d, rows, lo, hi, dref, dbnd, vocab);
    free(d);
out:
    tp_vocab_ce_free(ce);
    tp_tensor_release(&lt), tp_tensor_release(&tt), tp_tensor_release(&dt);
    free(x), free(xs), free(tg), free(dref), free(dbnd);
}

static void body_vocab(tpt_rank *k)
{
    const int64_t vocabs[] = {13, 17, 7, 1};
    for (size_t v = 0; v < 4; v++) {
        run_embedding(k, vocabs[v], 5);
        for (int m = 0; m < 4; m++)
            run_ce(k, 7, vocabs[v], (m & 1) ? 0.1f : 0.0f, (m >> 1) & 1);
    }
    run_ce(k, 1, 13, 0.0f, false);
    /* errors: full logits fed to the vocab-parallel loss; out-of-range target */
    if (k->T > 1 && 12 >= k->T) {
        tp_ce_config cfg = {.vocab = 12 * k->T};
        tp_vocab_ce *ce = NULL;
        EXPECT_OK(k, tp_vocab_ce_create(k->g, &cfg, &ce));
        float *z = calloc((size_t)(3 * 12 * k->T), sizeof(float));
        int32_t tg[3] = {0, 1, (int32_t)(12 * k->T)};
        tp_tensor lt = tpt_upload2(k, 3, 12 * k->T, z), tt = upload_ids(k, 3, tg);
        float loss;
        if (ce) {
            EXPECT_ERR(k, tp_vocab_ce_forward(ce, &lt, &tt, &loss), TP_ERR_SHAPE,
                       "these are the full logits");
            tp_tensor ls = tpt_upload2(k, 3, 12, z);
            EXPECT_ERR(k, tp_vocab_ce_forward(ce, &ls, &tt, &loss), TP_ERR_INVALID_ARG,
                       "target of row 2", "outside [0, vocab");
            tp_tensor_release(&ls);
        }
        tp_vocab_ce_free(ce);
        tp_tensor_release(&lt), tp_tensor_release(&tt);
        free(z);
        tp_embedding_config ec = {.vocab = k->T - 1, .dim = 4, .name = "wte"};
        tp_embedding *e = NULL;
        EXPECT_ERR(k, tp_embedding_create(k->g, &ec, &e), TP_ERR_SHAPE, "is larger than vocab",
                   "'wte'");
    }
}

START_TEST(test_vocab)
{
    tpt_run_all(body_vocab);
}
END_TEST

/* Sizes whose element counts overflow are refused at create, before any
 * allocation, with the same error on every rank. */
static void body_sizes(tpt_rank *k)
{
    const int64_t big = (int64_t)1 << 40; /* big * big overflows int64 */
    tp_linear *l = NULL;
    tp_linear_config lc = {.in_features = big, .out_features = big, .name = "huge"};
    EXPECT_ERR(k, tp_column_linear_create(k->g, &lc, &l), TP_ERR_INVALID_ARG, "overflows",
               "'huge'");
    EXPECT(k, l == NULL, "failed create left a layer");
    EXPECT_ERR(k, tp_row_linear_create(k->g, &lc, &l), TP_ERR_INVALID_ARG, "overflows");
    tp_mlp *m = NULL;
    tp_mlp_config mc = {.hidden = big, .ffn = big};
    EXPECT_ERR(k, tp_mlp_create(k->g, &mc, &m), TP_ERR_INVALID_ARG, "overflows");
    EXPECT(k, m == NULL, "failed create left an MLP");
    tp_embedding *e = NULL;
    tp_embedding_config ec = {.vocab = big, .dim = big};
    EXPECT_ERR(k, tp_embedding_create(k->g, &ec, &e), TP_ERR_INVALID_ARG, "overflows",
               "vocab x dim");
    EXPECT(k, e == NULL, "failed create left an embedding");
}

START_TEST(test_sizes)
{
    tpt_run_all(body_sizes);
}
END_TEST

/* ------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    const tpt_test tests[] = {
        {"column", test_column},
        {"row", test_row},
        {"user_weights", test_user_weights},
        {"mlp", test_mlp},
        {"errors", test_errors},
        {"linear_backward", test_linear_backward},
        {"mlp_backward", test_mlp_backward},
        {"reference_fd", test_reference_fd},
        {"vocab_parallel", test_vocab},
        {"sizes", test_sizes},
    };
    return tpt_main(&argc, &argv, "layers", tests, sizeof tests / sizeof tests[0], NULL);
}
