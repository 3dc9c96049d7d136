/* SPDX-License-Identifier: MIT */
/* test-device-slots.c — the ABI 1.1 optional slots: reduce, gemm_bias_act
 * (fused bias and activation), host_alloc. */
#include "device-harness.h"

/* ------------------------------------------------ ABI 1.1 optional slots */

static const tp_dtype all_dts[] = {TP_F32, TP_BF16, TP_F16};
#define DT_NAME(dt) ((dt) == TP_F32 ? "f32" : (dt) == TP_BF16 ? "bf16" : "f16")
/* unit roundoff of a storage dtype: f32 2^-24, bf16 2^-8, f16 2^-11 */
#define DT_U(dt) ((dt) == TP_F32 ? U : (dt) == TP_BF16 ? 1.0 / 256 : 1.0 / 2048)

/* reduce: y = op(y, x). On inputs already in dt, a sum is one rounding of
 * the exact sum (f32 math, then one rounding to dt: at most u_f32 + u_dt
 * relative); max and min are exact. NaN: max/min keep a NaN of y and drop
 * one of x (the loopback comm's order: max(acc, x) = x > acc ? x : acc).
 * x lives in xmem when given (host memory the device can reach, from
 * host_alloc), else in a device buffer. */
static void reduce_case(tp_dtype dt, tp_redop op, int n, void *xmem)
{
    size_t es = dt_size(dt);
    float *x = hrand(n, 4.0), *y = hrand(n, 4.0), *out = hzalloc(n);
    void *hx = malloc(n * es), *hy = malloc(n * es);

    ck_assert_ptr_nonnull(hx);
    ck_assert_ptr_nonnull(hy);
    round_to(dt, x, n), round_to(dt, y, n);
    enc(dt, x, hx, n), enc(dt, y, hy, n);
    void *dx = xmem ? memcpy(xmem, hx, n * es) : dput(hx, n * es), *dy = dput(hy, n * es);
    expect_status(D->reduce(H, dt, op, n, dx, dy), TP_OK, "reduce %s op %d n=%d%s", DT_NAME(dt),
                  (int)op, n, xmem ? " (x in host_alloc memory)" : "");
    dget(hy, dy, n * es);
    dec(dt, hy, out, n);
    for (int i = 0; i < n; i++) {
        double ref = op == TP_SUM   ? (double)x[i] + y[i]
                     : op == TP_MAX ? fmax(x[i], y[i])
                                    : fmin(x[i], y[i]);
        CLOSE(out[i], ref, op == TP_SUM ? (DT_U(dt) + U) * fabs(ref) : 0,
              "reduce %s op %d n=%d%s [%d]", DT_NAME(dt), (int)op, n, xmem ? " (host x)" : "", i);
    }
    free(x), free(y), free(out), free(hx), free(hy);
    free_bufs();
}

static void body_reduce(void)
{
    /* 2^20 + 3: many blocks of a GPU grid, and a ragged end */
    static const int ns[] = {1, 13, 4097, (1 << 20) + 3};

    ck_assert_msg(D->reduce, "device '%s' has no reduce slot", dev_name);
    for (int di = 0; di < 3; di++)
        for (int op = 0; op < TP_REDOP_COUNT_; op++)
            for (int ni = 0; ni < 4; ni++)
                reduce_case(all_dts[di], (tp_redop)op, ns[ni], NULL);
    /* i32: exact, the sum wraps */
    int32_t ix[3] = {INT32_MAX, -5, 7}, iy[3] = {1, 9, -7}, io[3];
    for (int op = 0; op < TP_REDOP_COUNT_; op++) {
        void *dix = dput(ix, 12), *diy = dput(iy, 12);
        expect_status(D->reduce(H, TP_I32, (tp_redop)op, 3, dix, diy), TP_OK, "reduce i32");
        dget(io, diy, 12);
        for (int i = 0; i < 3; i++) {
            int32_t want = op == TP_SUM   ? (int32_t)((uint32_t)ix[i] + (uint32_t)iy[i])
                           : op == TP_MAX ? (ix[i] > iy[i] ? ix[i] : iy[i])
                                          : (ix[i] < iy[i] ? ix[i] : iy[i]);
            ck_assert_msg(io[i] == want, "reduce i32 op %d [%d]: got %d, want %d", op, i, io[i],
                          want);
        }
    }
    /* NaN handling and x aliasing y (y = op(y, y)) */
    float nx[2] = {NAN, 1.0f}, ny[2] = {2.0f, NAN}, o[2];
    void *px = dput(nx, 8), *py = dput(ny, 8);
    ck_assert_int_eq(D->reduce(H, TP_F32, TP_MAX, 2, px, py), TP_OK);
    dget(o, py, 8);
    ck_assert_msg(o[0] == 2.0f && isnan(o[1]), "reduce max NaN: got %g %g, want 2 nan", o[0], o[1]);
    ck_assert_int_eq(D->reduce(H, TP_F32, TP_SUM, 1, py, py), TP_OK);
    dget(o, py, 4);
    ck_assert_msg(o[0] == 4.0f, "reduce sum in place: got %g, want 4", o[0]);
    expect_err(D->reduce(H, TP_F32, (tp_redop)7, 2, px, py), TP_ERR_INVALID_ARG, "reduce op 7",
               "op", NULL);
    expect_err(D->reduce(H, TP_F32, TP_SUM, 2, NULL, py), TP_ERR_INVALID_ARG, "reduce x NULL",
               "NULL", NULL);
    free_bufs();
}

START_TEST(t_reduce)
{
    with_device(body_reduce);
}
END_TEST

/* gemm_bias_act vs double: v = op(A) op(B) + bias, pre = v, C = act(v).
 * Inputs are rounded to dt first. v: the GEMM bound of lowp_gemm
 * (2 (k + 3) u M, tensor cores may truncate while accumulating) plus one
 * rounding to dt (u_dt |v|) and one f32 rounding of the bias add. C:
 * |gelu'| <= 1.13, so v's error times 1.13, plus the activation's own
 * error: 8 u |C| for the libm erff/tanhf (<= 4 ulp) and its few roundings,
 * plus one rounding to dt. On a GPU, GeLU(tanh) may run in a cuBLASLt
 * epilogue with the hardware tanh (PTX tanh.approx.f32, maximum relative
 * error 2^-10.987): that moves C = 0.5 v (1 + t) by 0.5 |v| 2^-10 |t|,
 * which is far more than 2^-10 |C| for v < 0 (C -> 0 while |t| -> 1); we
 * allow both, since the epilogue's formula is not documented, and
 * 2^-21 |v| of slack near t = 0, where that relative bound is unverified.
 * beta is 0, so C is not read: its elements start as NaN, which must not
 * leak. Rows are padded (ldc = n + pad): the padding must come back
 * untouched. Outside the core (vtable mode) a device other than cpu (which
 * fuses everything) may refuse a combination it does not fuse with
 * TP_ERR_NOT_SUPPORTED (the core then composes it; api mode checks that
 * result), leaving C and pre untouched. */
static int may_refuse(void)
{
    return !via_api && strcmp(dev_name, "cpu") != 0;
}

static void bias_act_case(tp_dtype dt, int ta, int tb, int m, int n, int k, int with_bias,
                          tp_act act, int with_pre, int pad)
{
    int ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n, ldc = n + pad;
    size_t na = (size_t)ar * ac, nb = (size_t)br * bc, nc = (size_t)m * ldc, es = dt_size(dt);
    float *a = hrand(na, 1.0), *b = hrand(nb, 1.0), *bias = hrand(n, 1.0);
    float *c0 = hrand(nc, 1.0), *out = hzalloc(nc), *pout = hzalloc(nc);
    double *ref = dzalloc((size_t)m * n), *mag = dzalloc((size_t)m * n);
    void *ha = malloc(na * es), *hb = malloc(nb * es), *hbias = malloc(n * es);
    void *hc = malloc(nc * es), *hc0 = malloc(nc * es);
    tp_gemm_args g = {.struct_size = sizeof g};
    double udt = DT_U(dt);
    int hw_tanh = strcmp(dev_name, "cpu") != 0 && act == TP_ACT_GELU_TANH && dt != TP_F32;
    double act_u = hw_tanh ? 0x1p-10 : 8 * U;
    double d_tanh = 0, d_erf = 0; /* distances to the two GeLU forms (f32) */

    ck_assert_ptr_nonnull(hc0);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++)
            c0[(size_t)i * ldc + j] = NAN;
    round_to(dt, a, na), round_to(dt, b, nb), round_to(dt, bias, n), round_to(dt, c0, nc);
    enc(dt, a, ha, na), enc(dt, b, hb, nb), enc(dt, bias, hbias, n), enc(dt, c0, hc0, nc);
    g.dtype = dt, g.trans_a = ta, g.trans_b = tb, g.m = m, g.n = n, g.k = k;
    g.alpha = 1.0f, g.beta = 0.0f, g.batch = 1;
    g.a = dput(ha, na * es), g.lda = ac;
    g.b = dput(hb, nb * es), g.ldb = bc;
    g.c = dput(hc0, nc * es), g.ldc = ldc;
    void *dpre = with_pre ? dput(hc0, nc * es) : NULL; /* starts as C: padding must survive */
    tp_status st = D->gemm_bias_act(H, &g, with_bias ? dput(hbias, n * es) : NULL, act, dpre);
    if (st == TP_ERR_NOT_SUPPORTED && may_refuse()) {
        dget(hc, g.c, nc * es);
        ck_assert_msg(memcmp(hc, hc0, nc * es) == 0,
                      "gemm_bias_act %s act %d: refused (%s) "
                      "but wrote C",
                      DT_NAME(dt), (int)act, last_msg());
        if (with_pre) {
            dget(hc, dpre, nc * es);
            ck_assert_msg(memcmp(hc, hc0, nc * es) == 0,
                          "gemm_bias_act %s act %d: refused "
                          "(%s) but wrote pre",
                          DT_NAME(dt), (int)act, last_msg());
        }
        printf("note: gemm_bias_act %s ta=%d tb=%d m=%d n=%d k=%d ldc=%d bias %d act %d pre %d "
               "refused (the core composes it): %s\n",
               DT_NAME(dt), ta, tb, m, n, k, ldc, with_bias, (int)act, with_pre, last_msg());
        clear_msg();
        goto done;
    }
    expect_status(st, TP_OK, "gemm_bias_act %s act %d bias %d pre %d m=%d n=%d k=%d ldc=%d",
                  DT_NAME(dt), (int)act, with_bias, with_pre, m, n, k, ldc);
    dget(hc, g.c, nc * es);
    dec(dt, hc, out, nc);
    if (with_pre) {
        dget(hc, dpre, nc * es);
        dec(dt, hc, pout, nc);
    }
    ref_gemm(ta, tb, m, n, k, 1.0, a, ac, b, bc, 0.0, c0, ldc, ref, mag);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < ldc; j++) {
            size_t at = (size_t)i * ldc + j;
            if (j >= n) {
                ck_assert_msg(out[at] == c0[at] && (!with_pre || pout[at] == c0[at]),
                              "gemm_bias_act wrote row padding");
                continue;
            }
            double v = ref[i * n + j] + (with_bias ? bias[j] : 0.0);
            double mv = mag[i * n + j] + (with_bias ? fabs(bias[j]) : 0.0);
            double ev = 2 * (k + 3) * U * mv + U * fabs(v) + 0x1p-40;
            double cref = act == TP_ACT_NONE   ? v
                          : act == TP_ACT_GELU ? gelu_ref(v, 0)
                                               : gelu_ref(v, 1);
            double t = tanh(sqrt(2 / M_PI) * (v + 0.044715 * v * v * v));
            double ec = (act == TP_ACT_NONE ? 1.0 : 1.13) * ev + act_u * fabs(cref) +
                        (hw_tanh ? 0.5 * fabs(v) * (0x1p-10 * fabs(t) + 0x1p-20) : 0);
            CLOSE(out[at], cref, ec + udt * fabs(cref) + (dt == TP_F16 ? 0x1p-24 : 0),
                  "gemm_bias_act %s ta=%d tb=%d m=%d n=%d k=%d bias %d act %d: C[%d,%d]",
                  DT_NAME(dt), ta, tb, m, n, k, with_bias, (int)act, i, j);
            if (with_pre)
                CLOSE(pout[at], v, ev + udt * fabs(v) + (dt == TP_F16 ? 0x1p-24 : 0),
                      "gemm_bias_act %s m=%d n=%d k=%d act %d: pre[%d,%d]", DT_NAME(dt), m, n, k,
                      (int)act, i, j);
            d_tanh += fabs(out[at] - gelu_ref(v, 1));
            d_erf += fabs(out[at] - gelu_ref(v, 0));
        }
    /* Which GeLU was computed? The two forms differ by up to 4.7e-4 (at
     * |v| = 2.7), less than the GPU tolerance above, so over >= 200 values in
     * f32 the results must be closer on average to the form asked for (the
     * device's own error adds about equally to both distances). */
    if (dt == TP_F32 && act != TP_ACT_NONE && m * n >= 200)
        ck_assert_msg(act == TP_ACT_GELU_TANH ? d_tanh < d_erf : d_erf < d_tanh,
                      "gemm_bias_act act %d m=%d n=%d k=%d: mean distance to the tanh GeLU %.3g, "
                      "to the exact (erf) GeLU %.3g: the other form was computed",
                      (int)act, m, n, k, d_tanh / (m * n), d_erf / (m * n));
done:
    free(a), free(b), free(bias), free(c0), free(out), free(pout), free(ref), free(mag);
    free(ha), free(hb), free(hbias), free(hc), free(hc0);
    free_bufs();
}

static void body_gemm_bias_act(void)
{
    ck_assert_msg(D->gemm_bias_act, "device '%s' has no gemm_bias_act slot", dev_name);
    for (int di = 0; di < 3; di++)
        for (int act = 0; act < TP_ACT_COUNT_; act++)
            for (int v = 0; v < 4; v++) {
                int bias = v & 1, pre = v >> 1;
                bias_act_case(all_dts[di], 0, 0, 13, 17, 33, bias, (tp_act)act, pre, 2);
                bias_act_case(all_dts[di], 1, 1, 1, 13, 17, bias, (tp_act)act, pre, 2);
                bias_act_case(all_dts[di], v & 1, 0, 17, 1, 13, bias, (tp_act)act, pre, 2);
            }
    /* larger, aligned shapes (ldc a multiple of 8): the ones a fused GPU
     * epilogue is most likely to take */
    for (int di = 0; di < 3; di++)
        bias_act_case(all_dts[di], 0, 0, 256, 384, 512, 1, TP_ACT_GELU_TANH, 1, 8);
    bias_act_case(TP_F32, 0, 1, 64, 96, 128, 1, TP_ACT_GELU, 1, 8);
}

START_TEST(t_gemm_bias_act)
{
    with_device(body_gemm_bias_act);
}
END_TEST

/* Bad arguments name what is wrong. An integer dtype: as for gemm. batch
 * and beta are outside the slot's contract (the core never passes them):
 * a device may call them invalid or not fused. pre == c is the core's
 * rule (the cpu slot would write pre, then C), which cuda checks too. */
static void body_gemm_bias_act_errors(void)
{
    void *a = dmalloc(4096), *b = dmalloc(4096), *c = dmalloc(4096);
    tp_gemm_args g = {.struct_size = sizeof g};
    tp_status st;

    ck_assert_msg(D->gemm_bias_act, "device '%s' has no gemm_bias_act slot", dev_name);
    g.dtype = TP_F32;
    g.m = 13, g.n = 17, g.k = 5;
    g.alpha = 1;
    g.a = a, g.lda = 5, g.b = b, g.ldb = 17, g.c = c, g.ldc = 17, g.batch = 1;
    st = D->gemm_bias_act(H, &g, NULL, TP_ACT_NONE, NULL);
    ck_assert_msg(st == TP_OK || (st == TP_ERR_NOT_SUPPORTED && may_refuse()),
                  "gemm_bias_act with valid arguments: %s: %s", tp_status_string(st), last_msg());
    clear_msg();
    expect_err(D->gemm_bias_act(H, &g, NULL, (tp_act)9, NULL), TP_ERR_INVALID_ARG,
               "gemm_bias_act act 9", "act", NULL);
    g.lda = 4; /* A is 13 x 5 */
    expect_err(D->gemm_bias_act(H, &g, NULL, TP_ACT_NONE, NULL), TP_ERR_INVALID_ARG,
               "gemm_bias_act lda < k", "lda", NULL);
    g.lda = 5;
    g.dtype = TP_I32;
    expect_err(D->gemm_bias_act(H, &g, NULL, TP_ACT_NONE, NULL),
               via_api ? TP_ERR_INVALID_ARG : TP_ERR_NOT_SUPPORTED, "gemm_bias_act i32", "dtype",
               NULL);
    g.dtype = TP_F32;
    g.batch = 2, g.stride_a = 65, g.stride_b = 85, g.stride_c = 221;
    st = D->gemm_bias_act(H, &g, NULL, TP_ACT_NONE, NULL);
    expect_err(st, st == TP_ERR_NOT_SUPPORTED && !via_api ? st : TP_ERR_INVALID_ARG,
               "gemm_bias_act batch 2", "batch", NULL);
    g.batch = 1;
    if (via_api || !strcmp(dev_name, "cuda"))
        expect_err(D->gemm_bias_act(H, &g, NULL, TP_ACT_GELU_TANH, c), TP_ERR_INVALID_ARG,
                   "gemm_bias_act pre == c", "pre", NULL);
    expect_status(D->synchronize(H), TP_OK, "synchronize after refused calls");
    free_bufs();
}

START_TEST(t_gemm_bias_act_errors)
{
    with_device(body_gemm_bias_act_errors);
}
END_TEST

/* api mode: which combinations the device fuses shows in the rank's stats.
 * A fused call counts one gemm and no kernel; one the core composes counts
 * its gemm plus bias_add and gelu kernels. The cpu device fuses all; cuda
 * fuses the bias in every dtype and GeLU(tanh) in bf16/f16 (cuBLASLt
 * epilogues; pre needs ldc a multiple of 8) and leaves the exact GeLU, and
 * GeLU in f32, to the core. */
static uint64_t calls(const tp_counter *c)
{
    uint64_t s = 0;
    for (int p = 0; p < TP_PHASE_COUNT; p++)
        s += c[p].calls;
    return s;
}

static void body_fused(void)
{
    static const struct {
        int tb, m, n, k, ldc;
    } shapes[] = {
        {0, 256, 384, 512, 384}, /* the MLP's first GEMM: x [m, k] * W1 [k, n] */
        {1, 64, 128, 256, 192},  /* B transposed, C in a wider buffer */
    };
    tp_stats st;

    for (int di = 0; di < 3; di++)
        for (int si = 0; si < 2; si++) {
            tp_dtype dt = all_dts[di];
            int m = shapes[si].m, n = shapes[si].n, k = shapes[si].k, ldc = shapes[si].ldc;
            size_t es = dt_size(dt),
                   bytes[5] = {(size_t)m * k * es, (size_t)k * n * es, (size_t)m * ldc * es,
                               (size_t)n * es, (size_t)m * ldc * es};
            void *p[5];
            for (int i = 0; i < 5; i++) { /* zeros: only the counts matter here */
                p[i] = dmalloc(bytes[i]);
                ck_assert_int_eq(D->memset(H, p[i], 0, bytes[i]), TP_OK);
            }
            tp_gemm_args g = {.struct_size = sizeof g,
                              .dtype = dt,
                              .trans_b = shapes[si].tb,
                              .m = m,
                              .n = n,
                              .k = k,
                              .alpha = 1.0f,
                              .a = p[0],
                              .lda = k,
                              .b = p[1],
                              .ldb = shapes[si].tb ? k : n,
                              .c = p[2],
                              .ldc = ldc,
                              .batch = 1};
            for (int act = 0; act < TP_ACT_COUNT_; act++)
                for (int v = 0; v < 4; v++) {
                    int bias = v & 1, pre = v >> 1;
                    int fused = !strcmp(dev_name, "cpu") || act == TP_ACT_NONE ||
                                (act == TP_ACT_GELU_TANH && dt != TP_F32);
                    tp_stats_reset(rank_comm);
                    expect_status(
                        D->gemm_bias_act(H, &g, bias ? p[3] : NULL, (tp_act)act, pre ? p[4] : NULL),
                        TP_OK, "gemm_bias_act %s act %d", DT_NAME(dt), act);
                    tp_stats_get(rank_comm, &st);
                    ck_assert_msg(calls(st.gemm) == 1 && (fused ? calls(st.kernel) == 0
                                                                : calls(st.kernel) >= 1u + bias),
                                  "gemm_bias_act %s m=%d n=%d k=%d ldc=%d bias %d act %d pre %d "
                                  "on %s: %llu gemm and %llu kernel calls counted, expected 1 "
                                  "and %s",
                                  DT_NAME(dt), m, n, k, ldc, bias, act, pre, dev_name,
                                  (unsigned long long)calls(st.gemm),
                                  (unsigned long long)calls(st.kernel),
                                  fused ? "0 (fused)" : "bias_add and gelu (composed)");
                }
            free_bufs();
        }
}

START_TEST(t_fused)
{
    with_device(body_fused);
}
END_TEST

/* host_alloc (vtable mode; the core uses it for staging): a buffer the
 * device copies to and from, and a NULL free is a no-op. */
static void body_host_alloc(void)
{
    if (!D->host_alloc) {
        ck_assert_msg(!D->host_free, "host_free without host_alloc");
        return; /* optional: the core stages through ordinary memory */
    }
    size_t n = 1 << 18;
    float *h = NULL, *back = hzalloc(n);
    ck_assert_msg(D->host_alloc(H, n * 4, (void **)&h) == TP_OK && h, "host_alloc: %s", last_msg());
    for (size_t i = 0; i < n; i++)
        h[i] = (float)i;
    void *d = dput(h, n * 4);
    memset(h, 0, n * 4);
    dget(h, d, n * 4);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(h[i] == (float)i, "host_alloc buffer round trip [%zu]: %g", i, h[i]);
    D->host_free(H, h);
    D->host_free(H, NULL);
    free(back);
    free_bufs();
    /* reduce takes x in this memory (page-locked, mapped into the GPU) */
    for (int di = 0; di < 3; di++) {
        void *x = NULL;
        ck_assert_msg(D->host_alloc(H, 4097 * 4, &x) == TP_OK && x, "host_alloc: %s", last_msg());
        reduce_case(all_dts[di], TP_SUM, 4097, x);
        D->host_free(H, x);
    }
}

START_TEST(t_host_alloc)
{
    with_device(body_host_alloc);
}
END_TEST

void device_add_slot_tests(TCase *tc)
{
    tcase_add_test(tc, t_reduce);
    tcase_add_test(tc, t_gemm_bias_act);
    tcase_add_test(tc, t_gemm_bias_act_errors);
    /* which combinations fuse is per device: known for these two */
    if (via_api && (!strcmp(dev_name, "cpu") || !strcmp(dev_name, "cuda")))
        tcase_add_test(tc, t_fused);
    tcase_add_test(tc, t_host_alloc);
}
