/* SPDX-License-Identifier: MIT */
/* test-device-kernels.c — the element-wise, row and optimizer kernels vs
 * plain-loop references, and the backward kernels vs finite differences. */
#include "device-harness.h"

/* -------------------------------------------------------- element-wise */

static void body_bias(void)
{
    for (int ir = 0; ir < NSIZES; ir++)
        for (int ic = 0; ic < NSIZES; ic++) {
            int rows = sizes[ir], cols = sizes[ic] * (ic == 3 ? 9 : 1); /* 297 > one block */
            size_t nn = (size_t)rows * cols;
            float *y = hrand(nn, 2.0), *bias = hrand(cols, 1.0), *out = hzalloc(nn);
            float *db0 = hrand(cols, 1.0), *db = hzalloc(cols);
            float *dy = dput(y, nn * 4), *dbias = dput(bias, cols * 4), *ddb = dput(db0, cols * 4);

            /* bias_add: one rounding. */
            expect_status(D->bias_add(H, TP_F32, rows, cols, dy, dbias), TP_OK, "bias_add");
            dget(out, dy, nn * 4);
            for (size_t i = 0; i < nn; i++)
                CLOSE(out[i], (double)y[i] + bias[i % cols],
                      U * fabs((double)y[i] + bias[i % cols]), "bias_add [%zu]", i);

            /* bias_grad accumulates onto db: rows + 1 terms, K = rows + 1. */
            expect_status(D->bias_grad(H, TP_F32, rows, cols, dput(y, nn * 4), ddb), TP_OK,
                          "bias_grad");
            dget(db, ddb, cols * 4);
            for (int c = 0; c < cols; c++) {
                double s = db0[c], m = fabs(db0[c]);
                for (int r = 0; r < rows; r++)
                    s += y[r * cols + c], m += fabs(y[r * cols + c]);
                CLOSE(db[c], s, (rows + 1) * U * m, "bias_grad rows=%d cols=%d [%d]", rows, cols,
                      c);
            }
            /* Deterministic: the same inputs give bitwise the same db. */
            {
                float *again = hzalloc(cols);
                void *d2 = dput(db0, cols * 4);
                ck_assert_int_eq(D->bias_grad(H, TP_F32, rows, cols, dput(y, nn * 4), d2), TP_OK);
                dget(again, d2, cols * 4);
                ck_assert_mem_eq(again, db, (size_t)cols * 4);
                free(again);
            }
            free(y), free(bias), free(out), free(db0), free(db);
            free_bufs();
        }
}

START_TEST(t_bias)
{
    with_device(body_bias);
}
END_TEST

double gelu_ref(double x, int t)
{
    if (t)
        return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    return 0.5 * x * (1 + erf(x / sqrt(2.0)));
}

static double gelu_grad_ref(double x, int t)
{
    if (t) {
        double k = sqrt(2 / M_PI), th = tanh(k * (x + 0.044715 * x * x * x));
        return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * k * (1 + 3 * 0.044715 * x * x);
    }
    return 0.5 * (1 + erf(x / sqrt(2.0))) + x * exp(-0.5 * x * x) / sqrt(2 * M_PI);
}

static void body_gelu(void)
{
    enum {
        N = 1001
    };
    float *x = hrand(N, 6.0), *dy = hrand(N, 1.0), *y = hzalloc(N), *dx = hzalloc(N);

    x[0] = 0.0f, x[1] = -0.0f, x[2] = 8.0f, x[3] = -8.0f, x[4] = 1e-20f;
    for (int t = 0; t < 2; t++) {
        void *dxv = dput(x, N * 4), *dyv = dmalloc(N * 4);

        expect_status(D->gelu(H, TP_F32, N, dxv, dyv, t), TP_OK, "gelu");
        dget(y, dyv, N * 4);
        /* y = 0.5 x (1 + f), f = erf or tanh within 4 ulp of 1: the
         * absolute error of 1 + f is <= 6u, so |dy| <= 0.5|x| 6u plus 4 roundings of y. */
        for (int i = 0; i < N; i++)
            CLOSE(y[i], gelu_ref(x[i], t), 3 * U * fabs(x[i]) + 4 * U * fabs(gelu_ref(x[i], t)),
                  "gelu%s x=%g", t ? "(tanh)" : "", x[i]);

        /* gelu_bwd; then in place (dx aliases dy); y aliases x for gelu. */
        dyv = dput(dy, N * 4);
        expect_status(D->gelu_bwd(H, TP_F32, N, dxv, dyv, dmalloc(N * 4), t), TP_OK, "gelu_bwd");
        ck_assert_int_eq(D->gelu_bwd(H, TP_F32, N, dxv, dyv, dyv, t), TP_OK);
        dget(dx, dyv, N * 4);
        /* g' = 0.5(1 + f) + x phi(x)-like term: 1 + f as above (6u absolute),
         * the second term ~ |x| e^(-x^2/2) with ~8 roundings; times dy. */
        for (int i = 0; i < N; i++) {
            double g = gelu_grad_ref(x[i], t);
            CLOSE(dx[i], dy[i] * g, fabs(dy[i]) * (6 * U + 8 * U * (fabs(g) + 2 * fabs(x[i]))),
                  "gelu_bwd%s x=%g", t ? "(tanh)" : "", x[i]);
        }
        ck_assert_int_eq(D->gelu(H, TP_F32, N, dxv, dxv, t), TP_OK);
        dget(dx, dxv, N * 4);
        ck_assert_mem_eq(dx, y, N * 4); /* same kernel, same inputs: bitwise */
        free_bufs();
    }
    ck_assert_int_eq(D->gelu(H, TP_F32, 0, NULL, NULL, 0), TP_OK);
    free(x), free(dy), free(y), free(dx);
}

START_TEST(t_gelu)
{
    with_device(body_gelu);
}
END_TEST

static void body_axpby(void)
{
    static const float ab[][2] = {{1, 0}, {0.5f, 2}, {-3, -0.25f}, {0, 1}};
    enum {
        N = 33
    };
    float *x = hrand(N, 1.0), *y = hrand(N, 1.0), *out = hzalloc(N);

    for (int t = 0; t < 4; t++) {
        float a = ab[t][0], b = ab[t][1];
        float *y0 = y;
        float nan_y[N];
        if (b == 0) { /* beta 0: y not read */
            for (int i = 0; i < N; i++)
                nan_y[i] = NAN;
            y0 = nan_y;
        }
        void *dy = dput(y0, N * 4);
        ck_assert_int_eq(D->axpby(H, TP_F32, N, a, dput(x, N * 4), b, dy), TP_OK);
        dget(out, dy, N * 4);
        /* two products and a sum: 3 roundings */
        for (int i = 0; i < N; i++) {
            double r = a * (double)x[i] + (b != 0 ? b * (double)y0[i] : 0);
            double m = fabs(a * (double)x[i]) + (b != 0 ? fabs(b * (double)y0[i]) : 0);
            CLOSE(out[i], r, 3 * U * m, "axpby a=%g b=%g [%d]", a, b, i);
        }
    }
    free(x), free(y), free(out);
}

START_TEST(t_axpby)
{
    with_device(body_axpby);
}
END_TEST

/* softmax(scale x) per row in double; causal keeps c <= r % cols. */
static void ref_softmax(int rows, int cols, const double *x, double scale, int causal, double *y)
{
    for (int r = 0; r < rows; r++) {
        int keep = causal ? r % cols + 1 : cols;
        double mx = -INFINITY, s = 0;
        for (int c = 0; c < keep; c++)
            mx = fmax(mx, scale * x[r * cols + c]);
        for (int c = 0; c < cols; c++) {
            y[r * cols + c] = c < keep ? exp(scale * x[r * cols + c] - mx) : 0;
            s += y[r * cols + c];
        }
        for (int c = 0; c < cols; c++)
            y[r * cols + c] /= s;
    }
}

void body_softmax(void)
{
    static const float scales[] = {1.0f, 0.125f, -0.7f};
    for (int ir = 0; ir < NSIZES; ir++)
        for (int ic = 0; ic < NSIZES; ic++)
            for (int is = 0; is < 3; is++)
                for (int causal = 0; causal < 2; causal++) {
                    int rows = sizes[ir] + (causal ? sizes[ic] : 0), cols = sizes[ic];
                    size_t nn = (size_t)rows * cols;
                    float sc = scales[is];
                    float *x = hrand(nn, 4.0), *dy = hrand(nn, 1.0), *y = hzalloc(nn),
                          *dx = hzalloc(nn);
                    double *xd = dzalloc(nn), *yr = dzalloc(nn);
                    void *dxv = dput(x, nn * 4), *dyv = dmalloc(nn * 4), *ddy = dput(dy, nn * 4);

                    for (size_t i = 0; i < nn; i++)
                        xd[i] = x[i];
                    ref_softmax(rows, cols, xd, sc, causal, yr);
                    expect_status(D->softmax(H, TP_F32, rows, cols, dxv, dyv, sc, causal), TP_OK,
                                  "softmax");
                    dget(y, dyv, nn * 4);
                    /* exp's argument s x - max is off by <= 2u(|s x| + |max|) <= 4u|s|4
                     * absolute, i.e. that much relative in each exp (plus 4 ulp of expf);
                     * the row sum adds (cols - 1)u; the divide 1u. Masked entries are 0. */
                    for (size_t i = 0; i < nn; i++)
                        CLOSE(y[i], yr[i], yr[i] * U * (cols + 8 + 32 * fabs(sc)),
                              "softmax rows=%d cols=%d scale=%g causal=%d [%zu]", rows, cols, sc,
                              causal, i);

                    /* backward from the device's y, then in place (dx aliases dy) */
                    ck_assert_int_eq(D->softmax_bwd(H, TP_F32, rows, cols, dyv, ddy, ddy, sc),
                                     TP_OK);
                    dget(dx, ddy, nn * 4);
                    for (int r = 0; r < rows; r++) {
                        double dot = 0, mag = 0;
                        for (int c = 0; c < cols; c++) {
                            dot += (double)dy[r * cols + c] * y[r * cols + c];
                            mag += fabs((double)dy[r * cols + c] * y[r * cols + c]);
                        }
                        for (int c = 0; c < cols; c++) {
                            size_t i = (size_t)r * cols + c;
                            double ref = sc * (double)y[i] * (dy[i] - dot);
                            /* dot: cols u sum|dy y|; then a difference and two products */
                            double tol = fabs(sc * y[i]) *
                                         ((cols + 4) * U * mag + 4 * U * (fabs(dy[i]) + fabs(dot)));
                            CLOSE(dx[i], ref, tol, "softmax_bwd rows=%d cols=%d [%d,%d]", rows,
                                  cols, r, c);
                        }
                    }
                    free(x), free(dy), free(y), free(dx), free(xd), free(yr);
                    free_bufs();
                }
    ck_assert_int_eq(D->softmax(H, TP_F32, 0, 5, NULL, NULL, 1.0f, 1), TP_OK);
    ck_assert_int_eq(D->softmax(H, TP_F32, 4, 0, NULL, NULL, 1.0f, 1), TP_OK);
}

START_TEST(t_softmax)
{
    with_device(body_softmax);
}
END_TEST

/* LayerNorm / RMSNorm forward in double; mean/rstd out. */
static void ref_norm(int rows, int cols, const double *x, const double *g, const double *b,
                     double eps, int rms, double *y, double *mean, double *rstd)
{
    for (int r = 0; r < rows; r++) {
        const double *xr = x + (size_t)r * cols;
        double mu = 0, v = 0;
        if (!rms) {
            for (int c = 0; c < cols; c++)
                mu += xr[c];
            mu /= cols;
        }
        for (int c = 0; c < cols; c++)
            v += (xr[c] - mu) * (xr[c] - mu);
        double rs = 1 / sqrt(v / cols + eps);
        for (int c = 0; c < cols; c++)
            y[(size_t)r * cols + c] = (xr[c] - mu) * rs * g[c] + (b ? b[c] : 0);
        if (mean)
            mean[r] = mu;
        if (rstd)
            rstd[r] = rs;
    }
}

void body_norm(void)
{
    const float eps = 1e-5f;
    for (int ir = 0; ir < NSIZES; ir++)
        for (int ic = 0; ic < NSIZES; ic++)
            for (int rms = 0; rms < 2; rms++)
                for (int hasb = 0; hasb < 2; hasb++) {
                    int rows = sizes[ir], cols = sizes[ic] * (ic == 3 ? 9 : 1);
                    size_t nn = (size_t)rows * cols;
                    float *x = hrand(nn, 3.0), *g = hrand(cols, 1.5), *b = hrand(cols, 1.0);
                    float *dy = hrand(nn, 1.0), *dg0 = hrand(cols, 1.0), *db0 = hrand(cols, 1.0);
                    float *y = hzalloc(nn), *mu = hzalloc(rows), *rs = hzalloc(rows);
                    float *dx = hzalloc(nn), *dg = hzalloc(cols), *db = hzalloc(cols);
                    double *xd = dzalloc(nn), *gd = dzalloc(cols), *bd = dzalloc(cols);
                    double *yr = dzalloc(nn), *mr = dzalloc(rows), *rr = dzalloc(rows);
                    void *vx, *vy, *vmu, *vrs, *vdy, *vdx, *vdg, *vdb;

                    for (int r = 0; r < rows; r++) /* an offset mean: tests cancellation */
                        for (int c = 0; c < cols; c++)
                            x[r * cols + c] += (float)(r % 3);
                    for (size_t i = 0; i < nn; i++)
                        xd[i] = x[i];
                    for (int c = 0; c < cols; c++)
                        gd[c] = g[c], bd[c] = b[c];
                    ref_norm(rows, cols, xd, gd, hasb ? bd : NULL, eps, rms, yr, mr, rr);
                    vx = dput(x, nn * 4);
                    vy = dmalloc(nn * 4);
                    vmu = rms ? NULL : dmalloc(rows * 4);
                    vrs = dmalloc(rows * 4);
                    expect_status(D->norm(H, TP_F32, rows, cols, vx, dput(g, cols * 4),
                                          hasb ? dput(b, cols * 4) : NULL, vy, vmu, vrs, eps, rms),
                                  TP_OK, "norm");
                    dget(y, vy, nn * 4);
                    dget(rs, vrs, rows * 4);
                    if (!rms)
                        dget(mu, vmu, rows * 4);
                    for (int r = 0; r < rows; r++) {
                        double mx = 0;
                        for (int c = 0; c < cols; c++)
                            mx = fmax(mx, fabs(xd[r * cols + c]));
                        /* statistics: sums of cols terms, then sqrt and divide */
                        if (!rms)
                            CLOSE(mu[r], mr[r], (cols + 2) * U * mx, "norm mean [%d]", r);
                        CLOSE(rs[r], rr[r], (cols + 8) * U * rr[r], "norm%s rstd [%d]",
                              rms ? "(rms)" : "", r);
                        for (int c = 0; c < cols; c++) {
                            size_t i = (size_t)r * cols + c;
                            /* (x - mu) carries mu's error (cols+2)u mx; rstd (cols+8)u
                             * relative; three more roundings with gamma and beta. */
                            double tol =
                                fabs(g[c]) * rr[r] *
                                    ((cols + 2) * U * mx + (cols + 12) * U * fabs(xd[i] - mr[r])) +
                                2 * U * fabs(yr[i]) + (hasb ? U * fabs(b[c]) : 0);
                            CLOSE(y[i], yr[i], tol, "norm%s rows=%d cols=%d beta=%d [%d,%d]",
                                  rms ? "(rms)" : "", rows, cols, hasb, r, c);
                        }
                    }

                    /* backward with the device's own statistics; dx in place over dy */
                    vdy = dput(dy, nn * 4);
                    vdx = vdy;
                    vdg = dput(dg0, cols * 4);
                    vdb = hasb ? dput(db0, cols * 4) : NULL;
                    expect_status(D->norm_bwd(H, TP_F32, rows, cols, vx, dput(g, cols * 4), vmu,
                                              vrs, vdy, vdx, vdg, vdb, rms),
                                  TP_OK, "norm_bwd");
                    dget(dx, vdx, nn * 4);
                    dget(dg, vdg, cols * 4);
                    if (hasb)
                        dget(db, vdb, cols * 4);
                    for (int r = 0; r < rows; r++) {
                        double m = rms ? 0 : mu[r], s = rs[r], sg = 0, sgx = 0, ag = 0, agx = 0;
                        for (int c = 0; c < cols; c++) {
                            double gc = (double)dy[r * cols + c] * g[c];
                            double xh = (x[r * cols + c] - m) * s;
                            sg += gc, sgx += gc * xh, ag += fabs(gc), agx += fabs(gc * xh);
                        }
                        for (int c = 0; c < cols; c++) {
                            size_t i = (size_t)r * cols + c;
                            double gc = (double)dy[i] * g[c], xh = (x[i] - m) * s;
                            double ref = s * (gc - (rms ? 0 : sg / cols) - xh * sgx / cols);
                            /* the two row means are sums of cols terms; xhat has a few
                             * roundings (its cancellation x - mean is exact-ish in f32) */
                            double tol = s * ((cols + 8) * U *
                                                  (fabs(gc) + ag / cols + fabs(xh) * agx / cols) +
                                              8 * U * fabs(xh) * fabs(sgx) / cols);
                            CLOSE(dx[i], ref, tol, "norm_bwd%s dx rows=%d cols=%d [%d,%d]",
                                  rms ? "(rms)" : "", rows, cols, r, c);
                        }
                    }
                    for (int c = 0; c < cols; c++) {
                        double sgm = dg0[c], mgm = fabs(dg0[c]), sb = db0[c], mb = fabs(db0[c]);
                        for (int r = 0; r < rows; r++) {
                            double xh = (x[r * cols + c] - (rms ? 0 : mu[r])) * (double)rs[r];
                            sgm += dy[r * cols + c] * xh, mgm += fabs(dy[r * cols + c] * xh);
                            sb += dy[r * cols + c], mb += fabs(dy[r * cols + c]);
                        }
                        /* rows + 1 terms, each with ~4 roundings of its own */
                        CLOSE(dg[c], sgm, (rows + 5) * U * mgm, "norm_bwd dgamma [%d]", c);
                        if (hasb)
                            CLOSE(db[c], sb, (rows + 1) * U * mb, "norm_bwd dbeta [%d]", c);
                    }
                    free(x), free(g), free(b), free(dy), free(dg0), free(db0), free(y), free(mu);
                    free(rs), free(dx), free(dg), free(db), free(xd), free(gd), free(bd);
                    free(yr), free(mr), free(rr);
                    free_bufs();
                }
}

START_TEST(t_norm)
{
    with_device(body_norm);
}
END_TEST

static void body_embedding(void)
{
    enum {
        N = 17,
        DIM = 13,
        LO = 5,
        HI = 16
    };
    int32_t ids[N];
    float *table = hrand((HI - LO) * DIM, 1.0), *out = hzalloc(N * DIM);
    float *dout = hrand(N * DIM, 1.0), *dt0 = hrand((HI - LO) * DIM, 1.0);
    float *dt = hzalloc((HI - LO) * DIM);
    double *ref = dzalloc((HI - LO) * DIM), *mag = dzalloc((HI - LO) * DIM);
    int32_t *vids;
    void *vout, *vdt;

    for (int i = 0; i < N; i++) /* ids below, inside (with repeats) and above the shard */
        ids[i] = (int32_t)((i * 7) % 23) - 2;
    ids[0] = -100, ids[1] = LO, ids[2] = HI - 1, ids[3] = HI, ids[4] = LO, ids[5] = INT32_MAX;
    vids = dput(ids, sizeof ids);
    vout = dput(dout, N * DIM * 4); /* junk that must be overwritten */
    expect_status(
        D->embedding(H, TP_F32, N, DIM, vids, LO, HI, dput(table, (HI - LO) * DIM * 4), vout),
        TP_OK, "embedding");
    dget(out, vout, N * DIM * 4);
    for (int i = 0; i < N; i++)
        for (int c = 0; c < DIM; c++) {
            float want = ids[i] >= LO && ids[i] < HI ? table[(ids[i] - LO) * DIM + c] : 0.0f;
            ck_assert_msg(out[i * DIM + c] == want, "embedding id %d [%d,%d]", ids[i], i, c);
        }

    vdt = dput(dt0, (HI - LO) * DIM * 4);
    expect_status(D->embedding_bwd(H, TP_F32, N, DIM, vids, LO, HI, dput(dout, N * DIM * 4), vdt),
                  TP_OK, "embedding_bwd");
    dget(dt, vdt, (HI - LO) * DIM * 4);
    for (int j = 0; j < (HI - LO) * DIM; j++)
        ref[j] = dt0[j], mag[j] = fabs(dt0[j]);
    for (int i = 0; i < N; i++)
        if (ids[i] >= LO && ids[i] < HI)
            for (int c = 0; c < DIM; c++) {
                ref[(ids[i] - LO) * DIM + c] += dout[i * DIM + c];
                mag[(ids[i] - LO) * DIM + c] += fabs(dout[i * DIM + c]);
            }
    /* a row gets at most N additions */
    for (int j = 0; j < (HI - LO) * DIM; j++)
        CLOSE(dt[j], ref[j], N * U * mag[j], "embedding_bwd dtable[%d]", j);
    /* Sums in ascending token order: rerunning gives bitwise the same table. */
    {
        float *again = hzalloc((HI - LO) * DIM);
        void *v2 = dput(dt0, (HI - LO) * DIM * 4);
        ck_assert_int_eq(
            D->embedding_bwd(H, TP_F32, N, DIM, vids, LO, HI, dput(dout, N * DIM * 4), v2), TP_OK);
        dget(again, v2, (HI - LO) * DIM * 4);
        ck_assert_mem_eq(again, dt, (HI - LO) * DIM * 4);
        free(again);
    }
    /* An empty shard (lo == hi) zeroes every row. */
    ck_assert_int_eq(D->embedding(H, TP_F32, N, DIM, vids, 3, 3, NULL, vout), TP_OK);
    dget(out, vout, N * DIM * 4);
    for (int i = 0; i < N * DIM; i++)
        ck_assert_float_eq(out[i], 0.0f);
    free(table), free(out), free(dout), free(dt0), free(dt), free(ref), free(mag);
}

START_TEST(t_embedding)
{
    with_device(body_embedding);
}
END_TEST

void body_ce(void)
{
    for (int ir = 0; ir < NSIZES; ir++)
        for (int ic = 0; ic < NSIZES; ic++) {
            int rows = sizes[ir], cols = sizes[ic] * (ic == 3 ? 31 : 1); /* up to 1023 */
            int64_t lo = 7, vocab = cols + 20;
            size_t nn = (size_t)rows * cols;
            float *x = hrand(nn, 8.0), *mx = hzalloc(rows), *st = hzalloc(3 * rows);
            float *scale = hzalloc(rows), *dx = hzalloc(nn);
            int32_t *t = malloc(rows * sizeof *t);
            void *vx = dput(x, nn * 4), *vmx = dmalloc(rows * 4), *vst = dmalloc(rows * 12);
            void *vt, *vse, *vdx;

            ck_assert_ptr_nonnull(t);
            for (int r = 0; r < rows; r++) {
                /* targets in the shard, before it, after it, and ignored (-100) */
                t[r] = (int32_t)(r % 4 == 0   ? lo + (r * 5) % cols
                                 : r % 4 == 1 ? 2
                                 : r % 4 == 2 ? lo + cols
                                              : -100);
                scale[r] = r % 4 == 3 ? 0.0f : 1.0f / (float)(r + 1);
            }
            vt = dput(t, rows * 4);
            expect_status(D->row_max(H, TP_F32, rows, cols, vx, vmx), TP_OK, "row_max");
            dget(mx, vmx, rows * 4);
            expect_status(D->ce_stats(H, TP_F32, rows, cols, vx, vt, lo, vmx, vst), TP_OK,
                          "ce_stats");
            dget(st, vst, rows * 12);
            for (int r = 0; r < rows; r++) {
                const float *xr = x + (size_t)r * cols;
                double m = -INFINITY, se = 0, sx = 0, ax = 0;
                for (int c = 0; c < cols; c++)
                    m = fmax(m, xr[c]);
                ck_assert_msg(mx[r] == (float)m, "row_max [%d]: %g vs %g", r, mx[r], m);
                for (int c = 0; c < cols; c++)
                    se += exp((double)xr[c] - m), sx += xr[c], ax += fabs(xr[c]);
                /* positive terms: (cols - 1)u relative for the sum, 4 ulp of expf,
                 * and x - max rounds by u|x - max| <= u (max - min) absolute, which
                 * exp turns into relative error */
                double spread = 0;
                for (int c = 0; c < cols; c++)
                    spread = fmax(spread, m - xr[c]);
                CLOSE(st[3 * r], se, (cols + 6 + 2 * spread) * U * se,
                      "ce_stats sumexp rows=%d cols=%d [%d]", rows, cols, r);
                ck_assert_float_eq(st[3 * r + 1],
                                   t[r] >= lo && t[r] < lo + cols ? xr[t[r] - lo] : 0.0f);
                CLOSE(st[3 * r + 2], sx, cols * U * ax, "ce_stats sum x [%d]", r);
            }
            for (int sm = 0; sm < 2; sm++) {
                float s = sm ? 0.1f : 0.0f;
                float se[33 + 33]; /* rows <= 33 + 33 */
                for (int r = 0; r < rows; r++)
                    se[r] = st[3 * r];
                vse = dput(se, rows * 4);
                vdx = dput(x, nn * 4); /* junk to overwrite */
                expect_status(D->ce_bwd(H, TP_F32, rows, cols, vx, vt, lo, vocab, vmx, vse,
                                        dput(scale, rows * 4), s, vdx),
                              TP_OK, "ce_bwd");
                dget(dx, vdx, nn * 4);
                for (int r = 0; r < rows; r++)
                    for (int c = 0; c < cols; c++) {
                        double p = exp((double)x[r * cols + c] - mx[r]) / se[r];
                        double hot = (t[r] - lo == c) ? 1.0 - s : 0.0;
                        double ref = scale[r] * (p - hot - (double)s / vocab);
                        /* p: x - max rounds by u|x - max| absolute, which exp turns
                         * into that much relative error; expf 4 ulp, the divide 1u
                         * (sumexp's own error is the device's ce_stats output, used
                         * as is); then two subtractions and the scale: 4u of each term */
                        double arg = fabs((double)x[r * cols + c] - mx[r]);
                        double tol = fabs(scale[r]) * U *
                                     (p * (8 + 2 * arg) + 4 * (hot + s / (double)vocab));
                        CLOSE(dx[r * cols + c], ref, tol, "ce_bwd s=%g rows=%d cols=%d [%d,%d]", s,
                              rows, cols, r, c);
                        if (scale[r] == 0.0f) /* ignored rows: exactly 0, not 0 * NaN */
                            ck_assert_msg(dx[r * cols + c] == 0.0f, "ce_bwd ignored row %d", r);
                    }
            }
            free(x), free(mx), free(st), free(scale), free(dx), free(t);
            free_bufs();
        }
}

START_TEST(t_ce)
{
    with_device(body_ce);
}
END_TEST

static void body_adamw(void)
{
    enum {
        N = 37
    };
    float *p = hrand(N, 1.0), *g = hrand(N, 0.1), *m = hrand(N, 0.01), *v = hzalloc(N);
    float *po = hzalloc(N), *mo = hzalloc(N), *vo = hzalloc(N);
    const float lr = 1e-3f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.01f;
    void *vp, *vg, *vm, *vv;

    for (int i = 0; i < N; i++)
        v[i] = (float)(1e-4 * (1 + urand()));
    g[0] = 0.0f, m[0] = 0.0f, v[0] = 0.0f; /* a zero gradient: p only decays */
    vp = dput(p, N * 4), vg = dput(g, N * 4), vm = dput(m, N * 4), vv = dput(v, N * 4);
    for (int64_t step = 1; step <= 3; step++) {
        expect_status(D->adamw(H, N, vp, vg, vm, vv, lr, b1, b2, eps, wd, step), TP_OK, "adamw");
        dget(po, vp, N * 4), dget(mo, vm, N * 4), dget(vo, vv, N * 4);
        for (int i = 0; i < N; i++) {
            /* PyTorch AdamW, in double, from this step's f32 inputs */
            double pd = p[i] * (1 - (double)lr * wd);
            double md = b1 * (double)m[i] + (1 - (double)b1) * g[i];
            double vd = b2 * (double)v[i] + (1 - (double)b2) * (double)g[i] * g[i];
            double bc1 = 1 - pow(b1, (double)step), bc2 = 1 - pow(b2, (double)step);
            double upd = lr / bc1 * md / (sqrt(vd) / sqrt(bc2) + eps);
            /* moments: 3 roundings each; the update: ~10 roundings on its size */
            CLOSE(mo[i], md, 4 * U * (fabs(b1 * m[i]) + fabs(g[i])), "adamw m [%d] step %ld", i,
                  (long)step);
            CLOSE(vo[i], vd, 4 * U * (fabs(b2 * v[i]) + (double)g[i] * g[i]), "adamw v [%d]", i);
            CLOSE(po[i], pd - upd, 2 * U * fabs(pd) + 16 * U * fabs(upd), "adamw p [%d] step %ld",
                  i, (long)step);
            p[i] = po[i], m[i] = mo[i], v[i] = vo[i];
        }
    }
    expect_err(D->adamw(H, N, vp, vg, vm, vv, lr, b1, b2, eps, wd, 0), TP_ERR_INVALID_ARG,
               "adamw step 0", "step", NULL);
    free(p), free(g), free(m), free(v), free(po), free(mo), free(vo);
}

START_TEST(t_adamw)
{
    with_device(body_adamw);
}
END_TEST

/* ------------------------------------------------- finite differences */

/* Central differences in double of a scalar loss of the inputs, compared to
 * the device's f32 gradient. h = 1e-5 makes truncation ~h^2 f''' ~ 1e-10
 * and rounding ~1e-16/h ~ 1e-11, so the difference is the device's f32
 * error: a few hundred u of the gradient's magnitude scale on these tiny
 * sizes; we allow 1e-4 of that scale, still far below any formula error. */
#define FD_H   1e-5
#define FD_TOL 1e-4

static double loss_gelu(const double *x, const double *w, int n, int t)
{
    double l = 0;
    for (int i = 0; i < n; i++)
        l += w[i] * gelu_ref(x[i], t);
    return l;
}

static void body_fd_gelu(void)
{
    enum {
        N = 13
    };
    float *x = hrand(N, 3.0), *w = hrand(N, 1.0), *dx = hzalloc(N);
    double xd[N], wd[N];

    for (int i = 0; i < N; i++)
        xd[i] = x[i], wd[i] = w[i];
    for (int t = 0; t < 2; t++) {
        void *vdx = dmalloc(N * 4);
        ck_assert_int_eq(D->gelu_bwd(H, TP_F32, N, dput(x, N * 4), dput(w, N * 4), vdx, t), TP_OK);
        dget(dx, vdx, N * 4);
        for (int i = 0; i < N; i++) {
            double s = xd[i], fd;
            xd[i] = s + FD_H;
            fd = loss_gelu(xd, wd, N, t);
            xd[i] = s - FD_H;
            fd = (fd - loss_gelu(xd, wd, N, t)) / (2 * FD_H);
            xd[i] = s;
            CLOSE(dx[i], fd, FD_TOL * (fabs(w[i]) + 1e-3), "gelu%s fd [%d]", t ? "(tanh)" : "", i);
        }
    }
    free(x), free(w), free(dx);
}

START_TEST(t_fd_gelu)
{
    with_device(body_fd_gelu);
}
END_TEST

static void body_fd_softmax(void)
{
    enum {
        R = 5,
        C = 4
    };
    const float sc = 0.7f;
    for (int causal = 0; causal < 2; causal++) {
        float *x = hrand(R * C, 2.0), *w = hrand(R * C, 1.0), *dx = hzalloc(R * C);
        double xd[R * C], y[R * C];
        void *vy = dmalloc(R * C * 4), *vdx = dmalloc(R * C * 4);

        for (int i = 0; i < R * C; i++)
            xd[i] = x[i];
        ck_assert_int_eq(D->softmax(H, TP_F32, R, C, dput(x, R * C * 4), vy, sc, causal), TP_OK);
        ck_assert_int_eq(D->softmax_bwd(H, TP_F32, R, C, vy, dput(w, R * C * 4), vdx, sc), TP_OK);
        dget(dx, vdx, R * C * 4);
        for (int i = 0; i < R * C; i++) {
            double s = xd[i], lp = 0, lm = 0;
            xd[i] = s + FD_H;
            ref_softmax(R, C, xd, sc, causal, y);
            for (int j = 0; j < R * C; j++)
                lp += w[j] * y[j];
            xd[i] = s - FD_H;
            ref_softmax(R, C, xd, sc, causal, y);
            for (int j = 0; j < R * C; j++)
                lm += w[j] * y[j];
            xd[i] = s;
            CLOSE(dx[i], (lp - lm) / (2 * FD_H), FD_TOL, "softmax fd causal=%d [%d]", causal, i);
        }
        free(x), free(w), free(dx);
        free_bufs();
    }
}

START_TEST(t_fd_softmax)
{
    with_device(body_fd_softmax);
}
END_TEST

static double loss_norm(int rows, int cols, const double *x, const double *g, const double *b,
                        int rms, const double *w)
{
    double y[64], l = 0;
    ref_norm(rows, cols, x, g, b, 1e-5, rms, y, NULL, NULL);
    for (int i = 0; i < rows * cols; i++)
        l += w[i] * y[i];
    return l;
}

static void body_fd_norm(void)
{
    enum {
        R = 3,
        C = 7
    };
    for (int rms = 0; rms < 2; rms++) {
        float *x = hrand(R * C, 2.0), *g = hrand(C, 1.5), *b = hrand(C, 1.0),
              *w = hrand(R * C, 1.0);
        float dx[R * C], dg[C], db[C];
        double xd[R * C], gd[C], bd[C], wd[R * C];
        void *vx = dput(x, R * C * 4), *vg = dput(g, C * 4), *vmu = dmalloc(R * 4),
             *vrs = dmalloc(R * 4), *vdx = dmalloc(R * C * 4), *vdg, *vdb;
        double *vars[3] = {xd, gd, bd};
        float *grads[3] = {dx, dg, db};
        int lens[3] = {R * C, C, C};

        for (int i = 0; i < R * C; i++)
            xd[i] = x[i], wd[i] = w[i];
        for (int c = 0; c < C; c++)
            gd[c] = g[c], bd[c] = b[c], dg[c] = db[c] = 0;
        vdg = dput(dg, C * 4), vdb = dput(db, C * 4);
        ck_assert_int_eq(D->norm(H, TP_F32, R, C, vx, vg, dput(b, C * 4), dmalloc(R * C * 4),
                                 rms ? NULL : vmu, vrs, 1e-5f, rms),
                         TP_OK);
        ck_assert_int_eq(D->norm_bwd(H, TP_F32, R, C, vx, vg, rms ? NULL : vmu, vrs,
                                     dput(w, R * C * 4), vdx, vdg, vdb, rms),
                         TP_OK);
        dget(dx, vdx, sizeof dx), dget(dg, vdg, sizeof dg), dget(db, vdb, sizeof db);
        for (int v = 0; v < 3; v++)
            for (int i = 0; i < lens[v]; i++) {
                double s = vars[v][i], lp, lm;
                vars[v][i] = s + FD_H;
                lp = loss_norm(R, C, xd, gd, bd, rms, wd);
                vars[v][i] = s - FD_H;
                lm = loss_norm(R, C, xd, gd, bd, rms, wd);
                vars[v][i] = s;
                CLOSE(grads[v][i], (lp - lm) / (2 * FD_H), FD_TOL * 4, "norm%s fd d%s[%d]",
                      rms ? "(rms)" : "",
                      v == 0   ? "x"
                      : v == 1 ? "gamma"
                               : "beta",
                      i);
            }
        free(x), free(g), free(b), free(w);
        free_bufs();
    }
}

START_TEST(t_fd_norm)
{
    with_device(body_fd_norm);
}
END_TEST

/* Vocab-parallel CE over one shard that holds the whole vocabulary:
 * loss_r = scale_r (log sum exp x - (1-s) x_t - s/V sum x). */
static double loss_ce(int rows, int cols, const double *x, const int32_t *t, const float *scale,
                      double s)
{
    double l = 0;
    for (int r = 0; r < rows; r++) {
        double m = -INFINITY, se = 0, sx = 0;
        for (int c = 0; c < cols; c++)
            m = fmax(m, x[r * cols + c]);
        for (int c = 0; c < cols; c++)
            se += exp(x[r * cols + c] - m), sx += x[r * cols + c];
        double xt = t[r] >= 0 && t[r] < cols ? x[r * cols + t[r]] : 0;
        l += scale[r] * (m + log(se) - (1 - s) * xt - s / cols * sx);
    }
    return l;
}

static void body_fd_ce(void)
{
    enum {
        R = 4,
        C = 9
    };
    int32_t t[R] = {3, 0, -100, 8};
    float scale[R] = {0.25f, 0.5f, 0.0f, 0.25f};
    float *x = hrand(R * C, 3.0), dx[R * C], st[3 * R], se[R];
    double xd[R * C];
    void *vx = dput(x, sizeof(float) * R * C), *vt = dput(t, sizeof t), *vmx = dmalloc(R * 4),
         *vst = dmalloc(R * 12), *vdx = dmalloc(R * C * 4);

    for (int i = 0; i < R * C; i++)
        xd[i] = x[i];
    ck_assert_int_eq(D->row_max(H, TP_F32, R, C, vx, vmx), TP_OK);
    ck_assert_int_eq(D->ce_stats(H, TP_F32, R, C, vx, vt, 0, vmx, vst), TP_OK);
    dget(st, vst, sizeof st);
    for (int r = 0; r < R; r++)
        se[r] = st[3 * r];
    for (int sm = 0; sm < 2; sm++) {
        double s = sm ? 0.2 : 0.0;
        ck_assert_int_eq(D->ce_bwd(H, TP_F32, R, C, vx, vt, 0, C, vmx, dput(se, sizeof se),
                                   dput(scale, sizeof scale), (float)s, vdx),
                         TP_OK);
        dget(dx, vdx, sizeof dx);
        for (int i = 0; i < R * C; i++) {
            double v = xd[i], lp, lm;
            xd[i] = v + FD_H;
            lp = loss_ce(R, C, xd, t, scale, s);
            xd[i] = v - FD_H;
            lm = loss_ce(R, C, xd, t, scale, s);
            xd[i] = v;
            CLOSE(dx[i], (lp - lm) / (2 * FD_H), FD_TOL, "ce fd s=%g [%d]", s, i);
        }
    }
    free(x);
}

START_TEST(t_fd_ce)
{
    with_device(body_fd_ce);
}
END_TEST

void device_add_kernel_tests(TCase *tc)
{
    tcase_add_test(tc, t_bias);
    tcase_add_test(tc, t_gelu);
    tcase_add_test(tc, t_axpby);
    tcase_add_test(tc, t_softmax);
    tcase_add_test(tc, t_norm);
    tcase_add_test(tc, t_embedding);
    tcase_add_test(tc, t_ce);
    tcase_add_test(tc, t_adamw);
    tcase_add_test(tc, t_fd_gelu);
    tcase_add_test(tc, t_fd_softmax);
    tcase_add_test(tc, t_fd_norm);
    tcase_add_test(tc, t_fd_ce);
}
