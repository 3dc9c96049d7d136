/* SPDX-License-Identifier: MIT */
/*
 * test-lowp.c — ColumnParallelLinear, RowParallelLinear and ParallelMLP
 * stored in bf16 and f16 (forward and backward) against a serial double
 * reference, dtype refusals, and tp_host_convert (exhaustive).
 *
 * The reference sees exactly what the layer sees: the f32 master weights,
 * inputs and output gradients are rounded to the dtype and back first
 * (the layer rounds its shards the same way, round to nearest even), so
 * the only differences left are the layer's own roundings.
 *
 * Error model. Every value the layer stores is rounded once to the dtype:
 * r(v) = v (1 + d), |d| <= u, u = 2^-8 (bf16) or 2^-11 (f16), plus an
 * absolute eta = 2^-25 per rounding for f16 subnormals (bf16 has f32's
 * range: eta = 0). For an output c = sum_k a_k b_k (+ bias) let
 *     S = max over the output of sum_k |a_k||b_k| + |bias|,
 * which bounds |c| and every intermediate of its chain (the GEMM output,
 * each rank's partial sum, the partial sums a reduction may round, the sum
 * after the bias). Each rounding in the chain then costs at most u S, and
 * an input that carries n roundings (v (1 + d1) .. (1 + dn)) passes on at
 * most n u S to first order; through GeLU the count is weighted by
 * max|gelu'| = 1.129 (and gelu' by max|gelu''| = 0.7979 <= 1.129). The
 * f32 accumulation inside the device adds gamma_f32(k + T + 2) S (ref.h).
 * So each check is, in the max-abs norm relative to S (not per-element
 * relative error, which is meaningless for entries near zero):
 *     max |got - ref| <= 2 (nr u + gamma_f32(k + T + 2)) S + 2 nr eta,
 * 2x for second-order terms as in ref.h, with nr the roundings:
 *   column forward: GEMM output, bias add                   2 (1 without bias)
 *   row forward:    rank partial, T-1 steps of a reduction that may round
 *                   each partial sum (loopback rounds once), bias add   T + 1
 *   column dx:      rank partial, reduction                             T
 *   row dx:         GEMM (the all-gather only copies)                   1
 *   dW, db over two backward calls: one per accumulation                2
 *   MLP: pre = GEMM + bias (2); h = 1.129 x pre's + its own (1) + f32
 *   erff/tanhf (8 f32 ulps, ref.h); y = h's + a row forward's; dh = 1;
 *   dpre = 1.129 x (dh's + pre's) + 1; dx = dpre's + T; dW1, db1 = dpre's
 *   + 2; dW2 = h's + 2; db2 = 2.
 * Counting inherited roundings relative to S assumes the stored inputs'
 * errors do not all line up against the same sign through the next GEMM;
 * the worst case (every rounding of pre at its own magnitude, aligned over
 * 2t tokens) is a bound larger than the bf16 gradients themselves, which
 * could not catch anything. Measured here the errors stay under 1/3 of the
 * tolerance. Bugs (wrong shard, missing or doubled reduction, wrong dtype
 * handling) make errors of the size of S, and each case also checks that:
 *   - the result differs from the same layer run in f32 on the same rounded
 *     weights and inputs (it really ran in the low-precision dtype), and
 *   - the tolerance rejects a wrong reference (the output's rows rotated by
 *     one token; measured: at least 2.7x over it), so the check can fail.
 */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tp/tp-layers.h>

#include "tp-test.h"

#include "layer-util.h"
#include "ref.h"

/* ------------------------------------------------------------ helpers */

typedef struct lp_dt {
    tp_dtype dt;
    double u;   /* unit roundoff */
    double eta; /* absolute error of a rounding in the subnormal range */
} lp_dt;

static const lp_dt LP_BF16 = {TP_BF16, 0x1p-8, 0.0};
static const lp_dt LP_F16 = {TP_F16, 0x1p-11, 0x1p-25};

/* a := a rounded to dt and widened back (what a layer of dtype dt stores). */
static void round_dt(tp_dtype dt, float *a, int64_t n)
{
    uint16_t *h = malloc(sizeof(uint16_t) * (size_t)(n + 1));
    tp_host_convert(dt, h, TP_F32, a, (size_t)n);
    tp_host_convert(TP_F32, a, dt, h, (size_t)n);
    free(h);
}

/* A [rows, cols] device tensor of dtype dt holding h (converted). */
static tp_tensor up(tpt_rank *k, tp_dtype dt, int64_t rows, int64_t cols, const float *h)
{
    tp_tensor t = {0};
    size_t n = (size_t)(rows * cols);
    EXPECT_OK(k, tp_tensor_alloc2(k->dev, dt, rows, cols, &t));
    void *buf = malloc(n * tp_dtype_size(dt) + 1);
    tp_host_convert(dt, buf, TP_F32, h, n);
    if (t.data && n > 0)
        EXPECT_OK(k, tp_tensor_upload(&t, buf));
    free(buf);
    return t;
}

/* t's contents widened to f32 (zeros where t is missing or the download failed). */
static float *down(tpt_rank *k, const tp_tensor *t)
{
    int64_t n = t ? tp_tensor_numel(t) : 0;
    float *h = tpt_falloc(n);
    EXPECT(k, t != NULL, "down: tensor missing");
    if (!t || !t->data || n == 0)
        return h;
    void *buf = malloc(tp_tensor_bytes(t));
    if (tp_tensor_download(t, buf) == TP_OK)
        tp_host_convert(TP_F32, h, t->dtype, buf, (size_t)n);
    else
        tpt_fail_at(k, __LINE__, "download: %s", tp_last_error());
    free(buf);
    return h;
}

static double *dalloc(int64_t n)
{
    return calloc((size_t)(n + 1), sizeof(double));
}

/* C[m,n] = op(A) op(B) (+ bias) in double (indexing as ref_gemm in
 * ref.h); *S = max over C of sum_k |a||b| + |bias|, the magnitude every
 * intermediate of an entry stays under. */
static void lp_gemm(int64_t m, int64_t n, int64_t k, const double *a, int ta, const double *b,
                    int tb, const double *bias, double *c, double *S)
{
    *S = 0;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = bias ? bias[j] : 0.0, sa = bias ? fabs(bias[j]) : 0.0;
            for (int64_t p = 0; p < k; p++) {
                double av = a[ta ? p * m + i : i * k + p], bv = b[tb ? j * k + p : p * n + j];
                s += av * bv;
                sa += fabs(av) * fabs(bv);
            }
            c[i * n + j] = s;
            *S = fmax(*S, sa);
        }
}

/* Error bound of a stored result whose chain has nr roundings (see the
 * top), k-term f32 accumulation plus T partial sums, magnitude S. */
static double chain_bound(const lp_dt *d, double nr, int64_t k, int T, double S)
{
    return (nr * d->u + ref_gamma((double)k + T + 2)) * S + ceil(nr) * d->eta;
}

/* max |got - ref| over a rows x (c1-c0) block of a rows x ldr reference
 * against 2x the bound (see the top); with rows >= 2, the same check
 * against the reference with its rows rotated by one must fail. */
static void check_lp(tpt_rank *k, int line, const char *what, const float *got, int64_t rows,
                     int64_t c0, int64_t c1, const double *ref, int64_t ldr, double bound)
{
    double err = 0, wrong = 0, mag = 0;
    int64_t er = 0, ec = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = c0; c < c1; c++) {
            double g = got[r * (c1 - c0) + (c - c0)], e = ref[r * ldr + c];
            double e2 = ref[((r + 1) % rows) * ldr + c];
            if (!(fabs(g - e) <= err)) { /* NaN too */
                err = isnan(g) ? INFINITY : fabs(g - e);
                er = r, ec = c;
            }
            wrong = fmax(wrong, fabs(g - e2));
            mag = fmax(mag, fabs(e));
        }
    double tol = 2.0 * bound;
    if (!(err <= tol)) {
        tpt_fail_at(k, line,
                    "%s: max |diff| %.4g at [%lld,%lld] (%.4g of max |ref| %.4g) > tolerance "
                    "%.4g; got %.8g, reference %.8g",
                    what, err, (long long)er, (long long)ec, mag > 0 ? err / mag : 0.0, mag, tol,
                    got[er * (c1 - c0) + (ec - c0)], ref[er * ldr + ec]);
        return;
    }
    if (rows >= 2 && c1 > c0 && !(wrong > tol))
        tpt_fail_at(k, line,
                    "%s: the tolerance %.4g also accepts a wrong reference (rows rotated, max "
                    "|diff| %.4g): it could not detect a bug",
                    what, tol, wrong);
}

/* Somewhere the low-precision result must differ from the f32 one. */
static void expect_differs(tpt_rank *k, int line, const char *what, const float *lp,
                           const float *f32, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (lp[i] != f32[i])
            return;
    if (n > 0)
        tpt_fail_at(k, line,
                    "%s: identical to the f32 layer's result in all %lld values: did it "
                    "run in low precision?",
                    what, (long long)n);
}

/* Whether the device stores dt (the cpu device needs _Float16 for f16). */
static bool device_has(tpt_rank *k, tp_dtype dt)
{
    void *p = NULL;
    if (tp_dev_alloc(k->dev, 8, &p) != TP_OK)
        return false;
    tp_dev_memset(k->dev, p, 0, 8);
    tp_status st = tp_dev_gelu(k->dev, dt, 2, p, (char *)p + 4, 0);
    tp_dev_free(k->dev, p);
    tp_clear_error();
    return st == TP_OK;
}

/* ------------------------------------------------------- linear layers */

typedef struct lin_case {
    tp_linear_kind kind;
    int64_t t, in, out;
    bool bias, gather, parallel;
} lin_case;

static void run_linear(tpt_rank *k, const lp_dt *d, const lin_case *c)
{
    const int T = k->T;
    int64_t t = c->t, in = c->in, out = c->out;
    bool col = c->kind == TP_LINEAR_COLUMN;
    int64_t split = col ? out : in;
    if (split < T)
        return; /* refused at create (test-layers errors) */
    int64_t lo, hi;
    shard(split, k, &lo, &hi);
    char what[160];
    snprintf(what, sizeof what, "%s %s t=%lld %lld->%lld bias=%d gather=%d parallel=%d",
             tp_dtype_name(d->dt), col ? "column" : "row", (long long)t, (long long)in,
             (long long)out, c->bias, c->gather, c->parallel);

    /* rounded host data: what the layer stores */
    float *x = tpt_falloc(t * in), *w = tpt_falloc(in * out), *b = tpt_falloc(out);
    float *dy = tpt_falloc(2 * t * out);
    tpt_fill(x, t * in, 11);
    tpt_fill(dy, 2 * t * out, 12);
    master(5, 40, in, out, w, b);
    round_dt(d->dt, x, t * in);
    round_dt(d->dt, dy, 2 * t * out);
    round_dt(d->dt, w, in * out);
    round_dt(d->dt, b, out);
    double *xd = tpt_to_d(x, t * in), *wd = tpt_to_d(w, in * out), *bd = tpt_to_d(b, out);
    double *dyd = tpt_to_d(dy, 2 * t * out);

    /* references and bounds */
    double S;
    double *yr = dalloc(t * out), *dxr = dalloc(t * in), *dwr = dalloc(in * out);
    double *dbr = dalloc(out);
    lp_gemm(t, out, in, xd, 0, wd, 0, c->bias ? bd : NULL, yr, &S);
    int nr_y = col ? (c->bias ? 2 : 1) : T + (c->bias ? 1 : 0);
    double by = chain_bound(d, nr_y, in, T, S);
    lp_gemm(t, in, out, dyd + t * out, 0, wd, 1, NULL, dxr, &S);
    double bdx = chain_bound(d, col ? T : 1, out, T, S);
    double *x2 = dalloc(2 * t * in), *ones = dalloc(2 * t);
    memcpy(x2, xd, sizeof(double) * (size_t)(t * in));
    memcpy(x2 + t * in, xd, sizeof(double) * (size_t)(t * in));
    for (int64_t i = 0; i < 2 * t; i++)
        ones[i] = 1.0;
    lp_gemm(in, out, 2 * t, x2, 1, dyd, 0, NULL, dwr, &S);
    double bdw = chain_bound(d, 2, 2 * t, 0, S);
    lp_gemm(1, out, 2 * t, ones, 0, dyd, 0, NULL, dbr, &S);
    double bdb = chain_bound(d, 2, 2 * t, 0, S);

    /* the layer (master weights from the RNG) and its f32 twin (the rounded weights) */
    tp_linear_config cfg = {.in_features = in,
                            .out_features = out,
                            .bias = c->bias,
                            .gather_output = c->gather,
                            .input_is_parallel = c->parallel,
                            .seed = 5,
                            .tensor_id = 40,
                            .name = "lp",
                            .dtype = d->dt};
    tp_linear_config c32 = cfg;
    c32.dtype = TP_F32;
    c32.full_weight = w;
    c32.full_bias = b;
    tp_linear *l = NULL, *l32 = NULL;
    EXPECT_OK(k,
              col ? tp_column_linear_create(k->g, &cfg, &l) : tp_row_linear_create(k->g, &cfg, &l));
    EXPECT_OK(k, col ? tp_column_linear_create(k->g, &c32, &l32)
                     : tp_row_linear_create(k->g, &c32, &l32));
    bool xshard = !col && c->parallel, yfull = !col || c->gather;
    int64_t xc0 = xshard ? lo : 0, xc1 = xshard ? hi : in;
    int64_t yc0 = yfull ? 0 : lo, yc1 = yfull ? out : hi;
    float *xs = slice_cols(x, t, in, xc0, xc1);
    float *dy1 = slice_cols(dy, t, out, yc0, yc1);
    float *dy2 = slice_cols(dy + t * out, t, out, yc0, yc1);
    tp_tensor xt = up(k, d->dt, t, xc1 - xc0, xs), x32 = up(k, TP_F32, t, xc1 - xc0, xs);
    tp_tensor d1 = up(k, d->dt, t, yc1 - yc0, dy1), d2 = up(k, d->dt, t, yc1 - yc0, dy2);
    tp_tensor yt = {0}, y32 = {0}, dxt = {0};
    float *y = NULL, *yf = NULL, *g = NULL;
    if (!l || !l32)
        goto out;

    /* forward: same collectives as f32, output in the dtype */
    tp_stats_reset(k->g);
    EXPECT_OK(k, tp_linear_forward(l, &xt, &yt));
    check_counts(k, __LINE__, what, TP_PHASE_FORWARD, col ? 0 : 1, col && c->gather ? 1 : 0);
    EXPECT(k, yt.dtype == d->dt, "%s: y has dtype %s", what, tp_dtype_name(yt.dtype));
    y = down(k, &yt);
    check_lp(k, __LINE__, what, y, t, yc0, yc1, yr, out, by);
    EXPECT_OK(k, tp_linear_forward(l32, &x32, &y32));
    yf = down(k, &y32);
    expect_differs(k, __LINE__, what, y, yf, t * (yc1 - yc0));

    /* the reassembled full weight is the rounded master weight, widened */
    float *wf = tpt_falloc(in * out), *bf = tpt_falloc(out);
    EXPECT_OK(k, tp_linear_get_full(l, wf, bf));
    EXPECT(k, memcmp(wf, w, sizeof(float) * (size_t)(in * out)) == 0,
           "%s: tp_linear_get_full weight is not the rounded master weight", what);
    EXPECT(k, !c->bias || memcmp(bf, b, sizeof(float) * (size_t)out) == 0,
           "%s: tp_linear_get_full bias is not the rounded master bias", what);
    free(wf), free(bf);

    /* backward twice: dx from the second, weight gradients accumulate */
    tp_stats_reset(k->g);
    EXPECT_OK(k, tp_linear_backward(l, &d1, &dxt));
    check_counts(k, __LINE__, what, TP_PHASE_BACKWARD, col ? 1 : 0, !col && !c->parallel ? 1 : 0);
    EXPECT_OK(k, tp_linear_backward(l, &d2, &dxt));
    EXPECT(k, dxt.dtype == d->dt, "%s: dx has dtype %s", what, tp_dtype_name(dxt.dtype));
    g = down(k, &dxt);
    check_lp(k, __LINE__, "dx", g, t, xc0, xc1, dxr, in, bdx);
    free(g);
    tp_linear_params p;
    tp_linear_get_params(l, &p);
    g = down(k, p.weight_grad);
    if (col)
        check_lp(k, __LINE__, "dW", g, in, lo, hi, dwr, out, bdw);
    else
        check_lp(k, __LINE__, "dW", g, hi - lo, 0, out, dwr + lo * out, out, bdw);
    free(g);
    if (c->bias) {
        g = down(k, p.bias_grad);
        check_lp(k, __LINE__, "db", g, 1, col ? lo : 0, col ? hi : out, dbr, out, bdb);
        free(g);
    }
    g = tpt_falloc(in * out);
    EXPECT_OK(k, tp_linear_get_full_grad(l, g, NULL));
    check_lp(k, __LINE__, "full dW", g, in, 0, out, dwr, out, bdw);
    free(g);
out:
    tp_linear_free(l), tp_linear_free(l32);
    tp_tensor_release(&xt), tp_tensor_release(&x32), tp_tensor_release(&d1);
    tp_tensor_release(&d2), tp_tensor_release(&yt), tp_tensor_release(&y32);
    tp_tensor_release(&dxt);
    free(y), free(yf), free(xs), free(dy1), free(dy2);
    free(x), free(w), free(b), free(dy), free(xd), free(wd), free(bd), free(dyd);
    free(yr), free(dxr), free(dwr), free(dbr), free(x2), free(ones);
}

/* tokens 13 and 1; 17 <-> 13 features (the split dimension 13 >= T for T <= 7) */
static void body_linear(tpt_rank *k)
{
    const lp_dt *dts[] = {&LP_BF16, &LP_F16};
    for (int di = 0; di < 2; di++) {
        if (!device_has(k, dts[di]->dt))
            continue;
        for (int tk = 0; tk < 2; tk++)
            for (int m = 0; m < 4; m++) {
                int64_t t = tk ? 1 : 13;
                bool bias = m & 1, opt = (m >> 1) & 1;
                lin_case cc = {TP_LINEAR_COLUMN, t, 17, 13, bias, opt, false};
                run_linear(k, dts[di], &cc);
                lin_case rc = {TP_LINEAR_ROW, t, 13, 17, bias, false, !opt};
                run_linear(k, dts[di], &rc);
            }
    }
}

START_TEST(test_linear_lowp)
{
    tpt_run_all(body_linear);
}
END_TEST

/* ------------------------------------------------------------ MLP */

static void run_mlp(tpt_rank *k, const lp_dt *d, int64_t t, int64_t H, int64_t F, bool bias,
                    bool tanh_approx)
{
    const int T = k->T;
    if (F < T)
        return;
    int64_t lo, hi;
    shard(F, k, &lo, &hi);
    int64_t tH = t * H, tF = t * F;
    char what[160];
    snprintf(what, sizeof what, "%s mlp t=%lld H=%lld F=%lld bias=%d tanh=%d", tp_dtype_name(d->dt),
             (long long)t, (long long)H, (long long)F, bias, tanh_approx);
    float *x = tpt_falloc(tH), *dy = tpt_falloc(2 * tH), *w1 = tpt_falloc(H * F);
    float *b1 = tpt_falloc(F), *w2 = tpt_falloc(F * H), *b2 = tpt_falloc(H);
    tpt_fill(x, tH, 13);
    tpt_fill(dy, 2 * tH, 14);
    master(9, 100, H, F, w1, b1);
    master(9, 102, F, H, w2, b2);
    round_dt(d->dt, x, tH), round_dt(d->dt, dy, 2 * tH);
    round_dt(d->dt, w1, H * F), round_dt(d->dt, b1, F);
    round_dt(d->dt, w2, F * H), round_dt(d->dt, b2, H);
    double *xd = tpt_to_d(x, tH), *dyd = tpt_to_d(dy, 2 * tH), *w1d = tpt_to_d(w1, H * F);
    double *b1d = tpt_to_d(b1, F), *w2d = tpt_to_d(w2, F * H), *b2d = tpt_to_d(b2, H);

    /* Roundings carried by the stored values (see the top): pre = x W1 + b1
     * (GEMM, bias add); h = gelu(pre): pre's times max|gelu'|, its own, and
     * f32 erff/tanhf (GELU_ULPS f32 ulps, ref.h); dh = dy W2^T one; dpre =
     * dh gelu'(pre): dh's times max|gelu'|, pre's times max|gelu''| (<=
     * max|gelu'|), its own. */
    const double r_pre = bias ? 2 : 1, r_gelu = GELU_ULPS * REF_U / d->u;
    const double r_h = GELU_D1 * r_pre + 1 + r_gelu, r_dpre = GELU_D1 * (1 + r_pre) + 1 + r_gelu;
    double S;
    double *pre = dalloc(tF), *h = dalloc(tF), *y = dalloc(tH);
    lp_gemm(t, F, H, xd, 0, w1d, 0, bias ? b1d : NULL, pre, &S);
    for (int64_t i = 0; i < tF; i++)
        h[i] = ref_gelu(pre[i], tanh_approx);
    lp_gemm(t, H, F, h, 0, w2d, 0, bias ? b2d : NULL, y, &S);
    double e_y = chain_bound(d, r_h + T + (bias ? 1 : 0), F, T, S);
    /* backward, two passes: dh = dy W2^T, dpre = dh gelu'(pre) */
    double *dh = dalloc(tF), *dpre = dalloc(2 * tF);
    for (int pass = 0; pass < 2; pass++) {
        lp_gemm(t, F, H, dyd + pass * tH, 0, w2d, 1, NULL, dh, &S);
        for (int64_t i = 0; i < tF; i++)
            dpre[pass * tF + i] = dh[i] * ref_gelu_d(pre[i], tanh_approx);
    }
    double *dx = dalloc(tH), *dw1 = dalloc(H * F), *dw2 = dalloc(F * H), *db1 = dalloc(F);
    double *db2 = dalloc(H), *x2 = dalloc(2 * tH), *h2 = dalloc(2 * tF), *ones = dalloc(2 * t);
    lp_gemm(t, H, F, dpre + tF, 0, w1d, 1, NULL, dx, &S);
    double e_dx = chain_bound(d, r_dpre + T, F, T, S);
    for (int pass = 0; pass < 2; pass++) {
        memcpy(x2 + pass * tH, xd, sizeof(double) * (size_t)tH);
        memcpy(h2 + pass * tF, h, sizeof(double) * (size_t)tF);
    }
    for (int64_t i = 0; i < 2 * t; i++)
        ones[i] = 1.0;
    lp_gemm(H, F, 2 * t, x2, 1, dpre, 0, NULL, dw1, &S);
    double e_dw1 = chain_bound(d, r_dpre + 2, 2 * t, 0, S);
    lp_gemm(F, H, 2 * t, h2, 1, dyd, 0, NULL, dw2, &S);
    double e_dw2 = chain_bound(d, r_h + 2, 2 * t, 0, S);
    lp_gemm(1, F, 2 * t, ones, 0, dpre, 0, NULL, db1, &S);
    double e_db1 = chain_bound(d, r_dpre + 2, 2 * t, 0, S);
    lp_gemm(1, H, 2 * t, ones, 0, dyd, 0, NULL, db2, &S);
    double e_db2 = chain_bound(d, 2, 2 * t, 0, S);

    tp_mlp_config cfg = {.hidden = H,
                         .ffn = F,
                         .bias = bias,
                         .gelu_tanh = tanh_approx,
                         .seed = 9,
                         .tensor_id = 100,
                         .name = "mlp",
                         .dtype = d->dt};
    tp_mlp_config c32 = cfg;
    c32.dtype = TP_F32;
    c32.full_w1 = w1, c32.full_b1 = b1, c32.full_w2 = w2, c32.full_b2 = b2;
    tp_mlp *m = NULL, *m32 = NULL;
    EXPECT_OK(k, tp_mlp_create(k->g, &cfg, &m));
    EXPECT_OK(k, tp_mlp_create(k->g, &c32, &m32));
    tp_tensor xt = up(k, d->dt, t, H, x), x32 = up(k, TP_F32, t, H, x);
    tp_tensor d1 = up(k, d->dt, t, H, dy), d2 = up(k, d->dt, t, H, dy + tH);
    tp_tensor yt = {0}, y32 = {0}, dxt = {0};
    float *g = NULL, *g32 = NULL;
    if (!m || !m32)
        goto out;
    tp_stats_reset(k->g);
    EXPECT_OK(k, tp_mlp_forward(m, &xt, &yt));
    check_counts(k, __LINE__, what, TP_PHASE_FORWARD, 1, 0); /* exactly one all-reduce */
    g = down(k, &yt);
    check_lp(k, __LINE__, what, g, t, 0, H, y, H, e_y);
    EXPECT_OK(k, tp_mlp_forward(m32, &x32, &y32));
    g32 = down(k, &y32);
    expect_differs(k, __LINE__, what, g, g32, tH);
    free(g), free(g32);

    tp_stats_reset(k->g);
    EXPECT_OK(k, tp_mlp_zero_grad(m));
    EXPECT_OK(k, tp_mlp_backward(m, &d1, &dxt));
    check_counts(k, __LINE__, what, TP_PHASE_BACKWARD, 1, 0);
    EXPECT_OK(k, tp_mlp_forward(m, &xt, &yt));
    EXPECT_OK(k, tp_mlp_backward(m, &d2, &dxt));
    g = down(k, &dxt);
    check_lp(k, __LINE__, "mlp dx", g, t, 0, H, dx, H, e_dx);
    free(g);
    tp_linear_params p1, p2;
    tp_linear_get_params(tp_mlp_fc1(m), &p1);
    tp_linear_get_params(tp_mlp_fc2(m), &p2);
    EXPECT(k, p1.weight->dtype == d->dt && p2.weight_grad && p2.weight_grad->dtype == d->dt,
           "%s: weights or grads not in the dtype", what);
    g = down(k, p1.weight_grad);
    check_lp(k, __LINE__, "mlp dW1", g, H, lo, hi, dw1, F, e_dw1);
    free(g);
    g = down(k, p2.weight_grad);
    check_lp(k, __LINE__, "mlp dW2", g, hi - lo, 0, H, dw2 + lo * H, H, e_dw2);
    free(g);
    if (bias) {
        g = down(k, p1.bias_grad);
        check_lp(k, __LINE__, "mlp db1", g, 1, lo, hi, db1, F, e_db1);
        free(g);
        g = down(k, p2.bias_grad);
        check_lp(k, __LINE__, "mlp db2", g, 1, 0, H, db2, H, e_db2);
        free(g);
    }
out:
    tp_mlp_free(m), tp_mlp_free(m32);
    tp_tensor_release(&xt), tp_tensor_release(&x32), tp_tensor_release(&d1);
    tp_tensor_release(&d2), tp_tensor_release(&yt), tp_tensor_release(&y32);
    tp_tensor_release(&dxt);
    free(x), free(dy), free(w1), free(b1), free(w2), free(b2);
    free(xd), free(dyd), free(w1d), free(b1d), free(w2d), free(b2d);
    free(pre), free(h), free(y), free(dh), free(dpre), free(dx), free(dw1), free(dw2);
    free(db1), free(db2), free(x2), free(h2), free(ones);
}

static void body_mlp(tpt_rank *k)
{
    const lp_dt *dts[] = {&LP_BF16, &LP_F16};
    for (int di = 0; di < 2; di++) {
        if (!device_has(k, dts[di]->dt))
            continue;
        for (int m = 0; m < 4; m++) {
            bool bias = m & 1, tanh_approx = (m >> 1) & 1;
            run_mlp(k, dts[di], 13, 17, 13, bias, tanh_approx);
            run_mlp(k, dts[di], 1, 17, 13, bias, tanh_approx);
        }
        run_mlp(k, dts[di], 3, 5, 7, true, false);
    }
}

START_TEST(test_mlp_lowp)
{
    tpt_run_all(body_mlp);
}
END_TEST

/* ------------------------------------------------------------ errors */

/* A tensor of another dtype than the layer's is refused naming both, on
 * every rank alike, before any communication; bad dtypes at create. */
static void body_errors(tpt_rank *k)
{
    const int T = k->T;
    const int64_t tok = 3, in = 5, mid = 2 * T;
    float hx[3 * 5] = {0};
    tp_linear_config cf = {.in_features = in, .out_features = mid, .bias = true, .name = "c32"};
    tp_linear_config cb = cf;
    cb.name = "cbf";
    cb.dtype = TP_BF16;
    tp_linear *l32 = NULL, *lbf = NULL;
    EXPECT_OK(k, tp_column_linear_create(k->g, &cf, &l32));
    EXPECT_OK(k, tp_column_linear_create(k->g, &cb, &lbf));
    tp_mlp_config mf = {.hidden = in, .ffn = mid, .bias = true, .name = "m32"};
    tp_mlp_config mb = mf;
    mb.name = "mbf";
    mb.dtype = TP_BF16;
    tp_mlp *m32 = NULL, *mbf = NULL;
    EXPECT_OK(k, tp_mlp_create(k->g, &mf, &m32));
    EXPECT_OK(k, tp_mlp_create(k->g, &mb, &mbf));
    tp_tensor x32 = up(k, TP_F32, tok, in, hx), xbf = up(k, TP_BF16, tok, in, hx);
    tp_tensor xf16 = up(k, TP_F16, tok, in, hx);
    tp_tensor y = {0}, ybad = {0}, h = {0};
    if (!l32 || !lbf || !m32 || !mbf)
        goto out;
    tp_stats_reset(k->g);
    EXPECT_ERR(k, tp_linear_forward(l32, &xbf, &y), TP_ERR_SHAPE, "'c32'", "x has dtype bf16",
               "weights are f32");
    EXPECT_ERR(k, tp_linear_forward(lbf, &x32, &y), TP_ERR_SHAPE, "'cbf'", "x has dtype f32",
               "weights are bf16");
    EXPECT_ERR(k, tp_linear_forward(lbf, &xf16, &y), TP_ERR_SHAPE, "dtype f16", "bf16");
    EXPECT_ERR(k, tp_mlp_forward(m32, &xbf, &y), TP_ERR_SHAPE, "ParallelMLP 'm32'",
               "x has dtype bf16", "weights are f32");
    EXPECT_ERR(k, tp_mlp_forward(mbf, &x32, &y), TP_ERR_SHAPE, "ParallelMLP 'mbf'",
               "x has dtype f32", "weights are bf16");
    EXPECT(k, y.data == NULL, "a refused forward allocated y");
    /* an output of the wrong dtype */
    EXPECT_OK(k, tp_tensor_alloc2(k->dev, TP_F32, tok, in, &ybad));
    EXPECT_ERR(k, tp_mlp_forward(mbf, &xbf, &ybad), TP_ERR_SHAPE, "y has dtype f32",
               "weights are bf16");
    /* dy of the wrong dtype */
    EXPECT_OK(k, tp_linear_forward(lbf, &xbf, &h));
    tp_tensor dyf = {0};
    EXPECT_OK(k, tp_tensor_alloc2(k->dev, TP_F32, tok, h.ndim == 2 ? h.shape[1] : 1, &dyf));
    EXPECT_ERR(k, tp_linear_backward(lbf, &dyf, NULL), TP_ERR_SHAPE, "dy has dtype f32", "bf16");
    tp_tensor_release(&dyf);
    check_counts(k, __LINE__, "after dtype errors", TP_PHASE_BACKWARD, 0, 0);
out:
    /* dtypes a layer cannot use */
    tp_linear *l = NULL;
    tp_linear_config ci = cf;
    ci.dtype = TP_I32;
    EXPECT_ERR(k, tp_column_linear_create(k->g, &ci, &l), TP_ERR_INVALID_ARG, "dtype 3 (i32)",
               "TP_BF16", "'c32'");
    EXPECT(k, l == NULL, "failed create left a layer");
    ci.dtype = (tp_dtype)77;
    EXPECT_ERR(k, tp_row_linear_create(k->g, &ci, &l), TP_ERR_INVALID_ARG, "dtype 77");
    tp_mlp *m = NULL;
    tp_mlp_config mi = mf;
    mi.dtype = TP_I32;
    EXPECT_ERR(k, tp_mlp_create(k->g, &mi, &m), TP_ERR_INVALID_ARG, "ParallelMLP", "dtype 3");
    EXPECT(k, m == NULL, "failed create left an MLP");
    tp_linear_free(l32), tp_linear_free(lbf), tp_mlp_free(m32), tp_mlp_free(mbf);
    tp_tensor_release(&x32), tp_tensor_release(&xbf), tp_tensor_release(&xf16);
    tp_tensor_release(&y), tp_tensor_release(&ybad), tp_tensor_release(&h);
}

START_TEST(test_dtype_errors)
{
    tpt_run_all(body_errors);
}
END_TEST

/* ------------------------------------------------- tp_host_convert */

static uint32_t bits(float f)
{
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

static float from_bits(uint32_t b)
{
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static uint16_t to16(tp_dtype dt, float f)
{
    uint16_t h;
    tp_host_convert(dt, &h, TP_F32, &f, 1);
    return h;
}

static float from16(tp_dtype dt, uint16_t h)
{
    float f;
    tp_host_convert(TP_F32, &f, dt, &h, 1);
    return f;
}

/* The value of an f16 bit pattern from its definition (independent of the code under test). */
static double f16_value(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

/* Every bf16 and f16 value widens exactly and narrows back to itself (NaN to a NaN of
 * the same sign); every value halfway between two neighbours rounds to the even one,
 * and the f32 neighbours of the midpoint to the nearer one. */
START_TEST(test_host_convert_exhaustive)
{
    const tp_dtype dts[] = {TP_BF16, TP_F16};
    for (int di = 0; di < 2; di++) {
        tp_dtype dt = dts[di];
        const char *name = tp_dtype_name(dt);
        for (uint32_t i = 0; i < 65536; i++) {
            uint16_t h = (uint16_t)i;
            float f = from16(dt, h);
            if (dt == TP_BF16)
                ck_assert_msg(bits(f) == (uint32_t)h << 16, "bf16 %04x widened to %08x", h,
                              bits(f));
            else {
                double v = f16_value(h);
                ck_assert_msg(isnan(v) ? isnan(f) : (double)f == v && !signbit(f) == !signbit(v),
                              "f16 %04x widened to %a, expected %a", h, (double)f, v);
            }
            uint16_t back = to16(dt, f);
            if (isnan(f))
                ck_assert_msg(isnan(from16(dt, back)) && (back >> 15) == (h >> 15),
                              "%s NaN %04x came back as %04x", name, h, back);
            else
                ck_assert_msg(back == h, "%s %04x -> %a -> %04x", name, h, (double)f, back);
        }
        /* halfway cases between neighbours a < b (positive finite, and mirrored) */
        uint16_t top = dt == TP_BF16 ? 0x7f7f : 0x7bff; /* largest finite */
        for (uint32_t i = 0; i < top; i++) {
            uint16_t a = (uint16_t)i, b = (uint16_t)(i + 1);
            double mid = ((double)from16(dt, a) + (double)from16(dt, b)) / 2; /* exact in f32 */
            float fm = (float)mid;
            ck_assert_msg((double)fm == mid, "%s midpoint of %04x not exact", name, a);
            uint16_t even = (a & 1) ? b : a;
            for (int sg = 0; sg < 2; sg++) {
                float s = sg ? -1.0f : 1.0f;
                uint16_t sb = sg ? 0x8000 : 0;
                uint16_t r = to16(dt, s * fm), lo = to16(dt, s * nextafterf(fm, 0.0f));
                uint16_t hi = to16(dt, s * nextafterf(fm, INFINITY));
                ck_assert_msg(r == (even | sb), "%s: %a rounds to %04x, expected %04x (even)", name,
                              (double)(s * fm), r, even | sb);
                ck_assert_msg(lo == (a | sb) && hi == (b | sb),
                              "%s: neighbours of the midpoint %a round to %04x/%04x, expected "
                              "%04x/%04x",
                              name, (double)(s * fm), lo, hi, a | sb, b | sb);
            }
        }
    }
}
END_TEST

/* Overflow, underflow, NaN payloads, bf16 <-> f16, same-dtype copies, i32. */
START_TEST(test_host_convert_edges)
{
    /* f16: 65504 is the largest finite; from the midpoint 65520 up it is inf */
    ck_assert_uint_eq(to16(TP_F16, 65504.0f), 0x7bff);
    ck_assert_uint_eq(to16(TP_F16, nextafterf(65520.0f, 0.0f)), 0x7bff);
    ck_assert_uint_eq(to16(TP_F16, 65520.0f), 0x7c00);
    ck_assert_uint_eq(to16(TP_F16, -1e30f), 0xfc00);
    ck_assert_uint_eq(to16(TP_F16, INFINITY), 0x7c00);
    /* f16 subnormals: 2^-24 is the smallest; 2^-25 is a tie that rounds to even 0 */
    ck_assert_uint_eq(to16(TP_F16, 0x1p-24f), 0x0001);
    ck_assert_uint_eq(to16(TP_F16, 0x1p-25f), 0x0000);
    ck_assert_uint_eq(to16(TP_F16, nextafterf(0x1p-25f, 1.0f)), 0x0001);
    ck_assert_uint_eq(to16(TP_F16, -0x1p-26f), 0x8000);
    ck_assert_uint_eq(to16(TP_F16, 1e-30f), 0x0000);
    ck_assert_uint_eq(to16(TP_F16, 0x1.ffcp-15f), 0x0400); /* 1023.5 x 2^-24: a tie, to even 1024 */
    ck_assert_uint_eq(to16(TP_F16, 0x1.ff8p-15f), 0x03ff); /* 1023 x 2^-24, exact */
    ck_assert_uint_eq(to16(TP_F16, FLT_TRUE_MIN), 0x0000);
    /* bf16: FLT_MAX is past the midpoint above the largest finite bf16 */
    ck_assert_uint_eq(to16(TP_BF16, FLT_MAX), 0x7f80);
    ck_assert_uint_eq(to16(TP_BF16, from_bits(0x7f7f7fff)), 0x7f7f);
    ck_assert_uint_eq(to16(TP_BF16, -INFINITY), 0xff80);
    ck_assert_uint_eq(to16(TP_BF16, FLT_TRUE_MIN), 0x0000); /* far below half of 2^-133 */
    ck_assert_uint_eq(to16(TP_BF16, from_bits(0x00018000)), 0x0002);
    /* a NaN whose payload is only in the low bits stays a NaN, never inf */
    float snan = from_bits(0x7f800001), nsnan = from_bits(0xff800001);
    ck_assert(isnan(from16(TP_BF16, to16(TP_BF16, snan))));
    ck_assert(isnan(from16(TP_F16, to16(TP_F16, snan))));
    ck_assert(signbit(from16(TP_F16, to16(TP_F16, nsnan))));
    ck_assert(signbit(from16(TP_BF16, to16(TP_BF16, nsnan))));
    /* bf16 <-> f16: through f32, one rounding */
    uint16_t h = 0x7bff, b; /* f16 65504 -> bf16 65536 (0x4780) */
    tp_host_convert(TP_BF16, &b, TP_F16, &h, 1);
    ck_assert_uint_eq(b, 0x4780);
    b = 0x4780; /* bf16 65536 -> f16 inf */
    tp_host_convert(TP_F16, &h, TP_BF16, &b, 1);
    ck_assert_uint_eq(h, 0x7c00);
    b = 0x3f81; /* bf16 1.0078125 -> f16 exactly */
    tp_host_convert(TP_F16, &h, TP_BF16, &b, 1);
    ck_assert_uint_eq(h, 0x3c08);
    /* arrays, same dtype, in place between equal sizes */
    float f[5] = {1.0f, -2.5f, 0.1f, 3e38f, -0.0f}, g[5];
    uint16_t v[5];
    tp_host_convert(TP_BF16, v, TP_F32, f, 5);
    tp_host_convert(TP_F32, g, TP_BF16, v, 5);
    ck_assert(g[0] == 1.0f && g[1] == -2.5f && g[2] == from_bits(0x3dcd0000) &&
              g[3] == from_bits(0x7f620000) && signbit(g[4]));
    tp_host_convert(TP_F16, v, TP_BF16, v, 5); /* in place */
    ck_assert_uint_eq(v[0], 0x3c00);
    ck_assert_uint_eq(v[3], 0x7c00);
    float c[5];
    tp_host_convert(TP_F32, c, TP_F32, f, 5);
    ck_assert(memcmp(c, f, sizeof f) == 0);
    int32_t ia[2] = {7, -9}, ib[2] = {0, 0};
    tp_host_convert(TP_I32, ib, TP_I32, ia, 2);
    ck_assert(ib[0] == 7 && ib[1] == -9);
    /* pairs with i32 or a bad dtype are not conversions: dst untouched */
    ib[0] = 42;
    tp_host_convert(TP_F32, c, TP_I32, ib, 1);
    ck_assert(c[0] == f[0]);
    tp_host_convert((tp_dtype)77, v, TP_F32, f, 1);
    ck_assert_uint_eq(v[0], 0x3c00);
}
END_TEST

int main(int argc, char **argv)
{
    const tpt_test tests[] = {
        {"host_convert_exhaustive", test_host_convert_exhaustive},
        {"host_convert_edges", test_host_convert_edges},
        {"linear_lowp", test_linear_lowp},
        {"mlp_lowp", test_mlp_lowp},
        {"dtype_errors", test_dtype_errors},
    };
    return tpt_main(&argc, &argv, "lowp", tests, sizeof tests / sizeof tests[0], NULL);
}
