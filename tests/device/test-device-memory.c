/* SPDX-License-Identifier: MIT */
/* test-device-memory.c — allocation, copies, memset, copy_2d. */
#include "device-harness.h"

/* --------------------------------------------------------------- memory */

static void body_memory(void)
{
    enum {
        N = 1000
    };
    unsigned char src[N], back[N];
    void *a, *b, *z1, *z2;

    for (int i = 0; i < N; i++)
        src[i] = (unsigned char)(i * 7 + 3);
    a = dput(src, N);
    memset(back, 0, N);
    dget(back, a, N);
    ck_assert_mem_eq(back, src, N);

    /* Size 0 gives a valid pointer each time. */
    z1 = dmalloc(0);
    z2 = dmalloc(0);
    ck_assert_ptr_ne(z1, z2);
    ck_assert_int_eq(D->upload(H, z1, src, 0), TP_OK);
    ck_assert_int_eq(D->download(H, back, z1, 0), TP_OK);

    /* memset */
    b = dmalloc(N);
    ck_assert_int_eq(D->memset(H, b, 0xab, N), TP_OK);
    dget(back, b, N);
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(back[i], 0xab);

    /* copy_2d: a 13 x 17-byte block from pitch 40 to pitch 19, around untouched bytes. */
    ck_assert_int_eq(D->memset(H, b, 0, N), TP_OK);
    expect_status(D->copy_2d(H, (char *)b + 3, 19, (char *)a + 5, 40, 17, 13), TP_OK, "copy_2d");
    dget(back, b, N);
    for (int i = 0; i < N; i++) {
        int off = i - 3, r = off / 19, c = off % 19;
        int in = off >= 0 && r < 13 && c < 17;
        ck_assert_int_eq(back[i], in ? src[5 + r * 40 + c] : 0);
    }
    /* Upload leaves the host buffer reusable at return. */
    {
        float h[64], out[64];
        float *d = dmalloc(sizeof h);
        for (int i = 0; i < 64; i++)
            h[i] = (float)i;
        ck_assert_int_eq(D->upload(H, d, h, sizeof h), TP_OK);
        for (int i = 0; i < 64; i++)
            h[i] = -1.0f;
        dget(out, d, sizeof out);
        for (int i = 0; i < 64; i++)
            ck_assert_float_eq(out[i], (float)i);
    }
}

START_TEST(t_memory)
{
    with_device(body_memory);
}
END_TEST

void device_add_memory_tests(TCase *tc)
{
    tcase_add_test(tc, t_memory);
}
