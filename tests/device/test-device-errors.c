/* SPDX-License-Identifier: MIT */
/* test-device-errors.c — bad arguments: every op refuses them with the
 * right status and a message naming the problem. */
#include "device-harness.h"

/* -------------------------------------------------------- bad arguments */

static void body_errors(void)
{
    float *a = dmalloc(256), *b = dmalloc(256);
    void *p = NULL;

    /* Every kernel refuses a dtype it does not compute with TP_ERR_NOT_SUPPORTED
     * naming op and dtype; an integer dtype is not computed by any device
     * (the core may refuse it first as not a float dtype: TP_ERR_INVALID_ARG). */
    tp_status ns = via_api ? TP_ERR_INVALID_ARG : TP_ERR_NOT_SUPPORTED;
    expect_err(D->gelu(H, TP_I32, 4, a, b, 0), ns, "gelu i32", "gelu", NULL);
    expect_err(D->bias_add(H, TP_I32, 2, 2, a, b), ns, "bias_add i32", "bias_add", NULL);
    expect_err(D->softmax(H, TP_I32, 2, 2, a, b, 1, 0), ns, "softmax i32", "softmax", NULL);
    expect_err(D->norm(H, TP_I32, 2, 2, a, b, NULL, a, NULL, b, 1e-5f, 1), ns, "norm i32", "norm",
               NULL);
    expect_err(D->gelu(H, (tp_dtype)-1, 4, a, b, 0), TP_ERR_INVALID_ARG, "gelu dtype -1", NULL);
    /* negative sizes, NULL with elements */
    expect_err(D->gelu(H, TP_F32, -1, a, b, 0), TP_ERR_INVALID_ARG, "gelu n -1", "-1", NULL);
    expect_err(D->bias_grad(H, TP_F32, -3, 2, a, b), TP_ERR_INVALID_ARG, "bias_grad rows -3", "-3",
               NULL);
    expect_err(D->axpby(H, TP_F32, 4, 1, NULL, 0, b), TP_ERR_INVALID_ARG, "axpby x NULL", "NULL",
               NULL);
    expect_err(D->row_max(H, TP_F32, 2, 3, a, NULL), TP_ERR_INVALID_ARG, "row_max out NULL", "NULL",
               NULL);
    /* embedding with a reversed shard */
    expect_err(D->embedding(H, TP_F32, 1, 2, (int32_t *)a, 5, 3, b, a), TP_ERR_INVALID_ARG,
               "embedding lo > hi", NULL);
    /* adamw */
    expect_err(D->adamw(H, 4, NULL, a, a, a, 1e-3f, 0.9f, 0.999f, 1e-8f, 0, 1), TP_ERR_INVALID_ARG,
               "adamw param NULL", "NULL", NULL);
    /* copies */
    expect_err(D->upload(H, NULL, a, 16), TP_ERR_INVALID_ARG, "upload to NULL", NULL);
    expect_err(D->copy_2d(H, a, 4, b, 16, 8, 2), TP_ERR_INVALID_ARG, "copy_2d dpitch < width",
               "pitch", NULL);
    /* an allocation that cannot succeed reports TP_ERR_NO_MEMORY (not a crash) */
    expect_err(D->alloc(H, SIZE_MAX / 2, &p), TP_ERR_NO_MEMORY, "alloc SIZE_MAX/2", NULL);
    ck_assert_ptr_null(p);
    D->free(H, NULL); /* a no-op */
}

START_TEST(t_errors)
{
    with_device(body_errors);
}
END_TEST

void device_add_error_tests(TCase *tc)
{
    tcase_add_test(tc, t_errors);
}
