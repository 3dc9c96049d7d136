/* SPDX-License-Identifier: MIT */
/* test-device-gemm.c — strided-batched GEMM vs a double reference, its
 * refusals, and interleaved per-head layouts. */
#include "device-harness.h"

/* ----------------------------------------------------------------- gemm */

/* C = alpha op(A) op(B) + beta C on one matrix, in double, with the
 * magnitude sum |alpha| sum|a||b| + |beta c| for the tolerance. */
void ref_gemm(int ta, int tb, int m, int n, int k, double alpha, const float *a, int lda,
              const float *b, int ldb, double beta, const float *c0, int ldc, double *ref,
              double *mag)
{
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0, sa = 0;
            for (int l = 0; l < k; l++) {
                double av = ta ? a[l * lda + i] : a[i * lda + l];
                double bv = tb ? b[j * ldb + l] : b[l * ldb + j];
                s += av * bv;
                sa += fabs(av * bv);
            }
            ref[i * n + j] = alpha * s + (beta != 0 ? beta * c0[i * ldc + j] : 0);
            mag[i * n + j] = fabs(alpha) * sa + (beta != 0 ? fabs(beta * c0[i * ldc + j]) : 0);
        }
}

/* One strided-batched case; pad adds to every leading dimension. */
static void gemm_case(int ta, int tb, int m, int n, int k, int batch, int pad, float alpha,
                      float beta, int shared_a)
{
    int ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
    int lda = ac + pad, ldb = bc + pad, ldc = n + pad;
    int64_t sa = shared_a ? 0 : (int64_t)ar * lda + 5, sb = (int64_t)br * ldb + 3,
            sc = (int64_t)m * ldc + 7;
    size_t na = (size_t)(shared_a ? ar * lda : sa * batch), nb = (size_t)(sb * batch),
           nc = (size_t)(sc * batch);
    float *a = hrand(na, 1.0), *b = hrand(nb, 1.0), *c = hrand(nc, 1.0), *out = hzalloc(nc);
    double *ref = dzalloc((size_t)m * n), *mag = dzalloc((size_t)m * n);
    tp_gemm_args g = {.struct_size = sizeof g};

    if (beta == 0.0f) /* beta 0: C must not be read, so NaN there must not leak */
        for (size_t i = 0; i < nc; i++)
            c[i] = NAN;
    g.dtype = TP_F32;
    g.trans_a = ta;
    g.trans_b = tb;
    g.m = m;
    g.n = n;
    g.k = k;
    g.alpha = alpha;
    g.beta = beta;
    g.a = dput(a, na * 4);
    g.lda = lda;
    g.stride_a = sa;
    g.b = dput(b, nb * 4);
    g.ldb = ldb;
    g.stride_b = sb;
    g.c = dput(c, nc * 4);
    g.ldc = ldc;
    g.stride_c = sc;
    g.batch = batch;
    expect_status(D->gemm(H, &g), TP_OK, "gemm");
    dget(out, g.c, nc * 4);
    for (int bi = 0; bi < batch; bi++) {
        ref_gemm(ta, tb, m, n, k, alpha, a + bi * sa, lda, b + bi * sb, ldb, beta, c + bi * sc, ldc,
                 ref, mag);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < ldc; j++) {
                size_t at = (size_t)(bi * sc + i * ldc + j);
                if (j >= n) { /* padding between rows stays untouched */
                    ck_assert_msg(memcmp(&out[at], &c[at], 4) == 0, "gemm wrote padding");
                    continue;
                }
                /* k products summed (k-1 roundings), times alpha, plus beta c:
                 * K = k + 3 (one more for an FMA-free product). */
                CLOSE(out[at], ref[i * n + j], (k + 3) * U * mag[i * n + j] + 1e-30,
                      "gemm ta=%d tb=%d m=%d n=%d k=%d batch %d/%d pad=%d alpha=%g beta=%g "
                      "C[%d,%d]",
                      ta, tb, m, n, k, bi, batch, pad, alpha, beta, i, j);
            }
        /* the gap between batches stays untouched */
        for (int64_t t = (int64_t)(m - 1) * ldc + n; bi + 1 < batch && t < sc; t++)
            ck_assert_msg(memcmp(&out[bi * sc + t], &c[bi * sc + t], 4) == 0,
                          "gemm wrote between batches");
    }
    free(a);
    free(b);
    free(c);
    free(out);
    free(ref);
    free(mag);
    free_bufs();
}

void body_gemm(void)
{
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int im = 0; im < NSIZES; im++)
                for (int in = 0; in < NSIZES; in++)
                    for (int ik = 0; ik < NSIZES; ik++) {
                        int m = sizes[im], n = sizes[in], k = sizes[ik];
                        int v = (im + in + ik + ta + tb) % 3;
                        gemm_case(ta, tb, m, n, k, 1, 0, 1.0f, 0.0f, 0);
                        gemm_case(ta, tb, m, n, k, 3, v, 0.75f, -1.25f, 0);
                        gemm_case(ta, tb, m, n, k, 2, 3, -2.0f, 0.0f, v == 1);
                    }
    /* k = 0: C = beta C (and beta 0 writes zeros); larger sizes. */
    gemm_case(0, 0, 13, 17, 0, 2, 1, 1.0f, 0.5f, 0);
    gemm_case(1, 0, 13, 17, 0, 1, 0, 1.0f, 0.0f, 0);
    gemm_case(0, 1, 65, 129, 257, 2, 2, 1.0f, 1.0f, 0);
    gemm_case(1, 1, 100, 37, 300, 1, 0, 0.5f, 0.0f, 0);
}

START_TEST(t_gemm)
{
    with_device(body_gemm);
}
END_TEST

static void body_gemm_errors(void)
{
    float *a = dmalloc(64 * 64 * 4), *b = dmalloc(64 * 64 * 4), *c = dmalloc(64 * 64 * 4);
    tp_gemm_args g = {.struct_size = sizeof g};

    g.dtype = TP_F32;
    g.m = 13, g.n = 17, g.k = 5;
    g.alpha = 1;
    g.a = a, g.lda = 5, g.b = b, g.ldb = 17, g.c = c, g.ldc = 17, g.batch = 1;
    expect_status(D->gemm(H, &g), TP_OK, "gemm");

    g.lda = 4; /* A is 13 x 5 */
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm lda < k", "lda", NULL);
    g.lda = 5;
    g.trans_a = 1; /* A now stored 5 x 13: lda must be >= 13 */
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm transposed lda", "lda", NULL);
    g.trans_a = 0;
    g.ldb = 16;
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm ldb < n", "ldb", NULL);
    g.ldb = 17;
    g.ldc = 3;
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm ldc < n", "ldc", NULL);
    g.ldc = 17;
    g.batch = 0;
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm batch 0", "batch", NULL);
    g.batch = 1;
    g.m = -1;
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm m < 0", "m", NULL);
    g.m = 13;
    g.dtype = TP_I32; /* no device multiplies int32 matrices */
    expect_err(D->gemm(H, &g), via_api ? TP_ERR_INVALID_ARG : TP_ERR_NOT_SUPPORTED, "gemm i32",
               "dtype", NULL);
    g.dtype = (tp_dtype)77;
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm dtype 77", "77", NULL);
    g.dtype = TP_F32;
    g.a = NULL;
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm A NULL", "NULL", NULL);
}

/* Column blocks of one matrix as the batches (the per-head outputs of an
 * attention context [tokens, heads*head_dim]: stride_c = n, ldc >= batch*n):
 * they interleave in memory but never write the same element, so they must
 * be accepted and computed exactly like separate matrices. Layouts that do
 * write an element twice are refused. */
static void body_gemm_interleaved(void)
{
    const int m = 13, n = 5, k = 7, batch = 3, pad = 2, ldc = batch * n + pad;
    size_t na = (size_t)batch * m * k, nb = (size_t)batch * k * n, nc = (size_t)m * ldc;
    float *a = hrand(na, 1.0), *b = hrand(nb, 1.0), *c = hrand(nc, 1.0), *out = hzalloc(nc);
    double *ref = dzalloc((size_t)m * n), *mag = dzalloc((size_t)m * n);
    tp_gemm_args g = {.struct_size = sizeof g,
                      .dtype = TP_F32,
                      .m = m,
                      .n = n,
                      .k = k,
                      .alpha = 1.0f,
                      .beta = 0.0f,
                      .lda = k,
                      .stride_a = (int64_t)m * k,
                      .ldb = n,
                      .stride_b = (int64_t)k * n,
                      .ldc = ldc,
                      .stride_c = n,
                      .batch = batch};

    g.a = dput(a, na * 4);
    g.b = dput(b, nb * 4);
    g.c = dput(c, nc * 4);
    expect_status(D->gemm(H, &g), TP_OK, "interleaved gemm refused");
    dget(out, g.c, nc * 4);
    for (int bi = 0; bi < batch; bi++) {
        ref_gemm(0, 0, m, n, k, 1.0, a + (size_t)bi * m * k, k, b + (size_t)bi * k * n, n, 0.0,
                 c + bi * n, ldc, ref, mag);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) /* K = k + 3 as in gemm_case */
                CLOSE(out[i * ldc + bi * n + j], ref[i * n + j],
                      (k + 3) * U * mag[i * n + j] + 1e-30, "interleaved gemm batch %d C[%d,%d]",
                      bi, i, j);
    }
    for (int i = 0; i < m; i++) /* the padding after the last block stays untouched */
        for (int j = batch * n; j < ldc; j++)
            ck_assert_msg(memcmp(&out[i * ldc + j], &c[i * ldc + j], 4) == 0,
                          "interleaved gemm wrote padding [%d,%d]", i, j);

    /* A single row per batch: any stride_c >= n is disjoint. */
    g.m = 1;
    g.stride_c = n;
    g.ldc = n;
    expect_status(D->gemm(H, &g), TP_OK, "one-row batches refused");

    /* Overlapping layouts. */
    g.m = m;
    g.ldc = ldc;
    g.stride_c = n - 1; /* neighbouring blocks share a column */
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm stride_c < n", "stride_c", NULL);
    g.stride_c = n;
    g.ldc = batch * n - 1; /* the last block runs into the next row */
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm blocks wider than ldc", "stride_c", NULL);
    g.ldc = ldc;
    g.stride_c = ldc; /* batch b starts one row below batch b-1 */
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm row-shifted batches", "stride_c", NULL);
    g.stride_c = (int64_t)(m - 1) * ldc + n - 1; /* last row of one meets the next */
    expect_err(D->gemm(H, &g), TP_ERR_INVALID_ARG, "gemm touching batches", "stride_c", NULL);
    g.stride_c = (int64_t)(m - 1) * ldc + n; /* separate matrices: fine */
    g.c = dmalloc((size_t)(g.stride_c * batch) * 4);
    expect_status(D->gemm(H, &g), TP_OK, "separate batches refused");
    free(a);
    free(b);
    free(c);
    free(out);
    free(ref);
    free(mag);
    free_bufs();
}

START_TEST(t_gemm_interleaved)
{
    with_device(body_gemm_interleaved);
}
END_TEST

START_TEST(t_gemm_errors)
{
    with_device(body_gemm_errors);
}
END_TEST

void device_add_gemm_tests(TCase *tc)
{
    tcase_add_test(tc, t_gemm);
    tcase_add_test(tc, t_gemm_errors);
    tcase_add_test(tc, t_gemm_interleaved);
}
