/* SPDX-License-Identifier: MIT */
/* test-device-lowp.c — every kernel on bf16/f16 storage vs the same op in
 * f32, and GEMM in bf16/f16. */
#include "device-harness.h"

/* ------------------------------------------------------ bf16 and f16 */

/* A device either computes an op on bf16/f16 storage (f32 inside) or
 * refuses with TP_ERR_NOT_SUPPORTED naming the op and the dtype (the cpu
 * ops computed in f32 only). Where it computes, we check the low-precision
 * run against the same op run in f32 on the same (already rounded) values,
 * which the f32 tests above checked against the references: both do the
 * same f32 arithmetic, so they differ by the final rounding to the dtype
 * (u_dt |v|, u_bf16 = 2^-8, u_f16 = 2^-11, plus 2^-25 for f16 subnormals)
 * and by the compiler contracting a*b+c into FMAs differently per storage
 * type, each bounded like the f32 error: K u S with K = 4 (len + 16) and S
 * the largest magnitude among the op's inputs and outputs. */

size_t dt_size(tp_dtype dt)
{
    return dt == TP_F32 ? 4 : 2;
}

static uint16_t f2bf(float f)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    if ((b & 0x7fffffffu) > 0x7f800000u)
        return 0x7fc0;
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16); /* nearest, ties to even */
}

static float bf2f(uint16_t h)
{
    uint32_t b = (uint32_t)h << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

void enc(tp_dtype dt, const float *x, void *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (dt == TP_F32)
            ((float *)out)[i] = x[i];
        else if (dt == TP_BF16)
            ((uint16_t *)out)[i] = f2bf(x[i]);
        else
            ((_Float16 *)out)[i] = (_Float16)x[i];
    }
}

void dec(tp_dtype dt, const void *in, float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (dt == TP_F32)
            x[i] = ((const float *)in)[i];
        else if (dt == TP_BF16)
            x[i] = bf2f(((const uint16_t *)in)[i]);
        else
            x[i] = (float)((const _Float16 *)in)[i];
    }
}

void round_to(tp_dtype dt, float *x, size_t n)
{
    void *tmp = malloc(n * 4 + 4);
    ck_assert_ptr_nonnull(tmp);
    enc(dt, x, tmp, n);
    dec(dt, tmp, x, n);
    free(tmp);
}

/* One buffer of a low-precision op: `typed` buffers have the op's dtype,
 * the others (ids, row statistics) keep their own type (raw bytes). */
typedef struct lp_buf {
    int typed, is_out;
    size_t n;        /* elements */
    float *init;     /* typed or raw f32: initial values (rounded in place if typed) */
    const void *raw; /* raw non-float (ids): bytes n * 4 */
    void *dev;       /* set for the callback */
} lp_buf;

#define LB(typed, out, n, init)                                                                    \
    {                                                                                              \
        typed, out, n, init, NULL, NULL                                                            \
    }
#define LI(n, ids)                                                                                 \
    {                                                                                              \
        0, 0, n, NULL, ids, NULL                                                                   \
    }

typedef tp_status (*lp_fn)(tp_dtype dt, lp_buf *b, int64_t len);

/* Run fn in f32 and in dt over the same values; compare outputs. */
static void lp_compare(const char *op, tp_dtype dt, lp_fn fn, lp_buf *b, int nb, int64_t len)
{
    float *out32[8] = {0}, *outdt[8] = {0};
    double smax = 0;
    double udt = dt == TP_BF16 ? 1.0 / 256 : 1.0 / 2048, floor = dt == TP_F16 ? 0x1p-25 : 0;
    tp_status st;

    ck_assert_int_le(nb, 8);
    for (int i = 0; i < nb; i++)
        if (b[i].typed)
            round_to(dt, b[i].init, b[i].n);
    for (int pass = 0; pass < 2; pass++) {
        tp_dtype t = pass == 0 ? TP_F32 : dt;
        for (int i = 0; i < nb; i++) {
            size_t bytes = b[i].n * (b[i].typed ? dt_size(t) : 4);
            void *h = malloc(bytes + 4);
            ck_assert_ptr_nonnull(h);
            if (b[i].raw)
                memcpy(h, b[i].raw, bytes);
            else if (b[i].typed)
                enc(t, b[i].init, h, b[i].n);
            else
                memcpy(h, b[i].init, bytes);
            b[i].dev = dput(h, bytes);
            free(h);
        }
        st = fn(t, b, len);
        if (pass == 1 && st == TP_ERR_NOT_SUPPORTED) {
            /* not computed in this dtype: the message must say what and which */
            char first[32];
            snprintf(first, sizeof first, "%.*s", (int)strcspn(op, "/"), op);
            ck_assert_msg(strstr(last_msg(), first) &&
                              strstr(last_msg(), dt == TP_BF16 ? "bf16" : "f16"),
                          "%s %s: refusal does not name op and dtype: %s", op,
                          dt == TP_BF16 ? "bf16" : "f16", last_msg());
            clear_msg();
            goto done;
        }
        expect_status(st, TP_OK, "%s (%s)", op, pass ? "low precision" : "f32");
        for (int i = 0; i < nb; i++) {
            size_t bytes = b[i].n * (b[i].typed ? dt_size(t) : 4);
            void *h;
            float **o = pass == 0 ? &out32[i] : &outdt[i];
            if (!b[i].is_out)
                continue;
            h = malloc(bytes + 4);
            *o = hzalloc(b[i].n);
            ck_assert_ptr_nonnull(h);
            dget(h, b[i].dev, bytes);
            if (b[i].typed)
                dec(t, h, *o, b[i].n);
            else
                memcpy(*o, h, bytes);
            free(h);
        }
    }
    for (int i = 0; i < nb; i++) {
        for (size_t j = 0; b[i].init && j < b[i].n; j++)
            smax = fmax(smax, fabs(b[i].init[j]));
        for (size_t j = 0; out32[i] && j < b[i].n; j++)
            smax = fmax(smax, fabs(out32[i][j]));
    }
    for (int i = 0; i < nb; i++)
        for (size_t j = 0; out32[i] && j < b[i].n; j++) {
            double v = out32[i][j];
            double tol = (b[i].typed ? udt * fabs(v) + floor : 0) + 4.0 * (len + 16) * U * smax;
            CLOSE(outdt[i][j], v, tol, "%s %s output %d [%zu]", op, dt == TP_BF16 ? "bf16" : "f16",
                  i, j);
        }
done:
    for (int i = 0; i < nb; i++)
        free(out32[i]), free(outdt[i]);
    free_bufs();
}

enum {
    LR = 13,
    LC = 33
};

static tp_status lp_bias(tp_dtype dt, lp_buf *b, int64_t len)
{
    tp_status st = D->bias_add(H, dt, LR, LC, b[0].dev, b[1].dev);
    return st ? st : D->bias_grad(H, dt, LR, LC, b[2].dev, b[3].dev);
}
static tp_status lp_gelu(tp_dtype dt, lp_buf *b, int64_t len)
{
    tp_status st = D->gelu(H, dt, (int64_t)b[0].n, b[0].dev, b[1].dev, 0);
    if (!st)
        st = D->gelu(H, dt, (int64_t)b[0].n, b[0].dev, b[4].dev, 1);
    if (!st)
        st = D->gelu_bwd(H, dt, (int64_t)b[0].n, b[0].dev, b[2].dev, b[3].dev, 0);
    return st ? st : D->gelu_bwd(H, dt, (int64_t)b[0].n, b[0].dev, b[2].dev, b[5].dev, 1);
}
static tp_status lp_axpby(tp_dtype dt, lp_buf *b, int64_t len)
{
    return D->axpby(H, dt, (int64_t)b[0].n, 0.75f, b[0].dev, -1.5f, b[1].dev);
}
static tp_status lp_softmax(tp_dtype dt, lp_buf *b, int64_t len)
{
    tp_status st = D->softmax(H, dt, LR, LC, b[0].dev, b[1].dev, 0.5f, 1);
    return st ? st : D->softmax_bwd(H, dt, LR, LC, b[2].dev, b[3].dev, b[4].dev, 0.5f);
}
static tp_status lp_norm(tp_dtype dt, lp_buf *b, int64_t len)
{
    /* x, gamma, beta, y, mean, rstd, dy, dx ... dgamma/dbeta in the next call */
    tp_status st = D->norm(H, dt, LR, LC, b[0].dev, b[1].dev, b[2].dev, b[3].dev, b[4].dev,
                           b[5].dev, 1e-5f, 0);
    return st ? st
              : D->norm_bwd(H, dt, LR, LC, b[0].dev, b[1].dev, b[4].dev, b[5].dev, b[6].dev,
                            b[7].dev, NULL, NULL, 0);
}
/* Callbacks chain no typed results: a chained typed intermediate would be
 * rounded in one pass and not the other. */
static tp_status lp_norm_params(tp_dtype dt, lp_buf *b, int64_t len)
{
    /* x, gamma, mean, rstd (raw f32 inputs), dy, dx, dgamma, dbeta */
    return D->norm_bwd(H, dt, LR, LC, b[0].dev, b[1].dev, b[2].dev, b[3].dev, b[4].dev, b[5].dev,
                       b[6].dev, b[7].dev, 0);
}
static tp_status lp_norm_rms(tp_dtype dt, lp_buf *b, int64_t len)
{
    /* x, gamma, rstd, dy = dx (in place), dgamma */
    return D->norm_bwd(H, dt, LR, LC, b[0].dev, b[1].dev, NULL, b[2].dev, b[3].dev, b[3].dev,
                       b[4].dev, NULL, 1);
}
static tp_status lp_embedding(tp_dtype dt, lp_buf *b, int64_t len)
{
    /* ids (raw), table (LR - 2 rows from lo = 1), out */
    return D->embedding(H, dt, LR, LC, b[0].dev, 1, LR - 1, b[1].dev, b[2].dev);
}
static tp_status lp_ce(tp_dtype dt, lp_buf *b, int64_t len)
{
    /* logits, targets (raw), rowmax, out3, sumexp/scale (raw inputs), dlogits */
    tp_status st = D->row_max(H, dt, LR, LC, b[0].dev, b[2].dev);
    if (!st)
        st = D->ce_stats(H, dt, LR, LC, b[0].dev, b[1].dev, 3, b[2].dev, b[3].dev);
    return st ? st
              : D->ce_bwd(H, dt, LR, LC, b[0].dev, b[1].dev, 3, 100, b[2].dev, b[4].dev, b[5].dev,
                          0.1f, b[6].dev);
}

/* The GEMM against the double reference on rounded inputs: the output
 * rounding u_dt |ref| plus f32 accumulation; tensor cores may truncate
 * instead of round while accumulating, so 2 (k + 3) u per the magnitude. */
void lowp_gemm(tp_dtype dt)
{
    const int m = 17, n = 13, k = 33, batch = 2;
    size_t na = (size_t)m * k * batch, nb = (size_t)k * n * batch, nc = (size_t)m * n * batch;
    float *a = hrand(na, 1.0), *b = hrand(nb, 1.0), *c = hrand(nc, 1.0), *out = hzalloc(nc);
    double ref[17 * 13], mag[17 * 13], udt = dt == TP_BF16 ? 1.0 / 256 : 1.0 / 2048;
    void *ha = malloc(na * 2), *hb = malloc(nb * 2), *hc = malloc(nc * 2);
    tp_gemm_args g = {.struct_size = sizeof g};
    tp_status st;

    round_to(dt, a, na), round_to(dt, b, nb), round_to(dt, c, nc);
    enc(dt, a, ha, na), enc(dt, b, hb, nb), enc(dt, c, hc, nc);
    g.dtype = dt, g.trans_a = 0, g.trans_b = 1, g.m = m, g.n = n, g.k = k;
    g.alpha = 0.5f, g.beta = 1.0f;
    g.a = dput(ha, na * 2), g.lda = k, g.stride_a = (int64_t)m * k;
    /* B stored transposed: n x k per batch */
    g.b = dput(hb, nb * 2), g.ldb = k, g.stride_b = (int64_t)n * k;
    g.c = dput(hc, nc * 2), g.ldc = n, g.stride_c = (int64_t)m * n;
    g.batch = batch;
    st = D->gemm(H, &g);
    if (st == TP_ERR_NOT_SUPPORTED) {
        ck_assert_msg(strstr(last_msg(), "gemm") &&
                          strstr(last_msg(), dt == TP_BF16 ? "bf16" : "f16"),
                      "%s", last_msg());
        clear_msg();
    } else {
        expect_status(st, TP_OK, "gemm %s", dt == TP_BF16 ? "bf16" : "f16");
        dget(hc, g.c, nc * 2);
        dec(dt, hc, out, nc);
        for (int bi = 0; bi < batch; bi++) {
            ref_gemm(0, 1, m, n, k, 0.5, a + bi * m * k, k, b + bi * n * k, k, 1.0, c + bi * m * n,
                     n, ref, mag);
            for (int i = 0; i < m * n; i++)
                CLOSE(out[bi * m * n + i], ref[i],
                      udt * fabs(ref[i]) + 2 * (k + 3) * U * mag[i] + 0x1p-25,
                      "gemm %s batch %d [%d]", dt == TP_BF16 ? "bf16" : "f16", bi, i);
        }
    }
    free(a), free(b), free(c), free(out), free(ha), free(hb), free(hc);
    free_bufs();
}

static void body_lowp(void)
{
    static const tp_dtype dts[] = {TP_BF16, TP_F16};
    enum {
        NN = LR * LC
    };

    for (int di = 0; di < 2; di++) {
        tp_dtype dt = dts[di];
        float *x = hrand(NN, 3.0), *y = hrand(NN, 1.0), *z = hrand(NN, 1.0), *w = hrand(NN, 1.0);
        float *g = hrand(LC, 1.5), *bb = hrand(LC, 1.0), *g2 = hrand(LC, 1.0),
              *bb2 = hrand(LC, 1.0);
        float *mu = hzalloc(LR), *rs = hzalloc(LR), *st3 = hzalloc(3 * LR), *ones = hzalloc(LR);
        int32_t ids[LR], tg[LR];

        lowp_gemm(dt);
        for (int r = 0; r < LR; r++) {
            ids[r] = (r * 5) % (LR + 2) - 1; /* some outside [1, LR - 1) */
            tg[r] = 3 + (r * 7) % LC;
            ones[r] = r % 5 == 4 ? 0.0f : 1.0f / LR;
            mu[r] = 0.1f * (float)r;
            rs[r] = 1.0f + 0.05f * (float)r;
        }
        {
            lp_buf b[] = {LB(1, 1, NN, x), LB(1, 0, LC, g), LB(1, 0, NN, y), LB(1, 1, LC, bb)};
            lp_compare("bias_add/bias_grad", dt, lp_bias, b, 4, LR + 1);
        }
        {
            float *o1 = hzalloc(NN), *o2 = hzalloc(NN), *o3 = hzalloc(NN), *o4 = hzalloc(NN);
            lp_buf b[] = {LB(1, 0, NN, x),  LB(1, 1, NN, o1), LB(1, 0, NN, y),
                          LB(1, 1, NN, o2), LB(1, 1, NN, o3), LB(1, 1, NN, o4)};
            lp_compare("gelu", dt, lp_gelu, b, 6, 1);
            free(o1), free(o2), free(o3), free(o4);
        }
        {
            lp_buf b[] = {LB(1, 0, NN, x), LB(1, 1, NN, z)};
            lp_compare("axpby", dt, lp_axpby, b, 2, 1);
        }
        {
            float *sy = hzalloc(NN), *dx = hzalloc(NN), *p = hrand(NN, 1.0);
            for (int i = 0; i < NN; i++) /* a probability-like y for the backward */
                p[i] = fabsf(p[i]) / LC;
            lp_buf b[] = {LB(1, 0, NN, x), LB(1, 1, NN, sy), LB(1, 0, NN, p), LB(1, 0, NN, w),
                          LB(1, 1, NN, dx)};
            lp_compare("softmax", dt, lp_softmax, b, 5, LC);
            free(sy), free(dx), free(p);
        }
        {
            float *ny = hzalloc(NN), *nm = hzalloc(LR), *nr = hzalloc(LR), *dx = hzalloc(NN);
            lp_buf b[] = {LB(1, 0, NN, x),  LB(1, 0, LC, g),  LB(1, 0, LC, bb), LB(1, 1, NN, ny),
                          LB(0, 1, LR, nm), LB(0, 1, LR, nr), LB(1, 0, NN, w),  LB(1, 1, NN, dx)};
            lp_compare("norm", dt, lp_norm, b, 8, LC);
            free(ny), free(nm), free(nr), free(dx);
        }
        {
            float *dx = hzalloc(NN), *wy = hrand(NN, 1.0);
            lp_buf b[] = {LB(1, 0, NN, x),  LB(1, 0, LC, g),  LB(0, 0, LR, mu), LB(0, 0, LR, rs),
                          LB(1, 1, NN, wy), LB(1, 1, NN, dx), LB(1, 1, LC, g2), LB(1, 1, LC, bb2)};
            lp_compare("norm_bwd", dt, lp_norm_params, b, 8, LR + LC);
            lp_buf b2[] = {LB(1, 0, NN, x), LB(1, 0, LC, g), LB(0, 0, LR, rs), LB(1, 1, NN, wy),
                           LB(1, 1, LC, g2)};
            lp_compare("norm_bwd (rms)", dt, lp_norm_rms, b2, 5, LR + LC);
            free(dx), free(wy);
        }
        {
            float *out = hrand(NN, 1.0), *table = hrand((LR - 2) * LC, 1.0);
            lp_buf b[] = {LI(LR, ids), LB(1, 0, (LR - 2) * LC, table), LB(1, 1, NN, out)};
            lp_compare("embedding", dt, lp_embedding, b, 3, 1);
            free(out), free(table);
        }
        {
            float *mx = hzalloc(LR), *se = hzalloc(LR), *dl = hzalloc(NN);
            for (int r = 0; r < LR; r++)
                se[r] = 2.0f + (float)r;
            lp_buf b[] = {LB(1, 0, NN, x),       LI(LR, tg),       LB(0, 1, LR, mx),
                          LB(0, 1, 3 * LR, st3), LB(0, 0, LR, se), LB(0, 0, LR, ones),
                          LB(1, 1, NN, dl)};
            lp_compare("row_max/ce_stats/ce_bwd", dt, lp_ce, b, 7, LC);
            free(mx), free(se), free(dl);
        }
        free(x), free(y), free(z), free(w), free(g), free(bb), free(g2), free(bb2);
        free(mu), free(rs), free(st3), free(ones);
    }
}

START_TEST(t_lowp)
{
    with_device(body_lowp);
}
END_TEST

void device_add_lowp_tests(TCase *tc)
{
    tcase_add_test(tc, t_lowp);
}
