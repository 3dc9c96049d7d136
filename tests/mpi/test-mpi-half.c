/* SPDX-License-Identifier: MIT */
/*
 * test-mpi-half.c — the f16/bf16 conversions the mpi plugin's reduction ops
 * use (tp-plugin-util.h's tp_util_*, with mpi-half.c compiled into this
 * test) against independent references: the
 * compiler's _Float16 for IEEE half, and a nearest-value search in double
 * for bfloat16. Exact comparisons: conversions are correctly rounded (round
 * to nearest, ties to even) or they are wrong. No MPI calls are made.
 */
#include "../../backends/mpi/mpi-internal.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __FLT16_MANT_DIG__
#define HAVE_FLOAT16 1
#endif

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* f32 samples: every 2^32/4099-th pattern plus the neighbourhood of the
 * f16 rounding boundaries (ties sit at the bit 12 of the significand). */
static uint32_t sample(uint64_t k)
{
    return (uint32_t)((k * 1048573u) ^ (k >> 3));
}

#ifdef HAVE_FLOAT16
START_TEST(test_half_exhaustive_decode)
{
    for (uint32_t h = 0; h < 65536; h++) {
        _Float16 ref;
        uint16_t hh = (uint16_t)h;
        memcpy(&ref, &hh, 2);
        float want = (float)ref, got = tp_util_f16_to_f32(hh);
        if (isnan(want)) {
            ck_assert_msg(isnan(got), "half 0x%04x: want nan", h);
            continue;
        }
        ck_assert_msg(f32_bits(got) == f32_bits(want), "half 0x%04x: got %a want %a", h, got, want);
        /* and back: every half value survives the round trip */
        ck_assert_msg(tp_util_f32_to_f16(got) == hh, "half 0x%04x: round trip gave 0x%04x", h,
                      tp_util_f32_to_f16(got));
    }
}
END_TEST

START_TEST(test_half_encode)
{
    for (uint64_t k = 0; k < 500000; k++) {
        uint32_t u = sample(k);
        /* every 4th sample: put it on or next to a rounding tie */
        if (k % 4 == 1)
            u = (u & ~0x1fffu) | 0x1000u;
        else if (k % 4 == 2)
            u = (u & ~0x1fffu) | 0x0fffu;
        float f = bits_f32(u);
        _Float16 ref = (_Float16)f;
        uint16_t want;
        memcpy(&want, &ref, 2);
        uint16_t got = tp_util_f32_to_f16(f);
        if (isnan(f)) {
            ck_assert_msg((got & 0x7c00) == 0x7c00 && (got & 0x3ff), "nan 0x%08x -> 0x%04x", u,
                          got);
            continue;
        }
        ck_assert_msg(got == want, "f32 %a (0x%08x): got 0x%04x want 0x%04x", f, u, got, want);
    }
}
END_TEST
#endif

/* Reference bf16 rounding: the two bf16 neighbours of f, nearest wins,
 * ties to the even one; overflow past the largest finite goes to inf as
 * IEEE rounding does. */
static uint16_t ref_bf16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
    if ((u & 0xffffu) == 0)
        return lo;
    double dlo = fabs((double)tp_util_bf16_to_f32(lo) - f);
    double vhi = (double)tp_util_bf16_to_f32(hi);
    if ((hi & 0x7fffu) == 0x7f80u) /* next up is inf: measure to 2^128 */
        vhi = copysign(ldexp(1.0, 128), f);
    double dhi = fabs(vhi - f);
    if (dlo < dhi)
        return lo;
    if (dhi < dlo)
        return hi;
    return (lo & 1) ? hi : lo;
}

START_TEST(test_bf16)
{
    for (uint64_t k = 0; k < 500000; k++) {
        uint32_t u = sample(k);
        if (k % 4 == 1)
            u = (u & ~0xffffu) | 0x8000u; /* exact tie */
        else if (k % 4 == 2)
            u = (u & ~0xffffu) | 0x7fffu;
        float f = bits_f32(u);
        uint16_t got = tp_util_f32_to_bf16(f);
        if (isnan(f)) {
            ck_assert_msg(isnan(tp_util_bf16_to_f32(got)), "nan 0x%08x -> 0x%04x", u, got);
            continue;
        }
        ck_assert_msg(got == ref_bf16(f), "f32 %a (0x%08x): got 0x%04x want 0x%04x", f, u, got,
                      ref_bf16(f));
    }
}
END_TEST

START_TEST(test_ops)
{
    /* the user ops: inout = round(in OP inout), element by element */
    uint16_t in[3] = {tp_util_f32_to_bf16(1.0f), tp_util_f32_to_bf16(-2.0f),
                      tp_util_f32_to_bf16(3.0f)};
    uint16_t io[3] = {tp_util_f32_to_bf16(0x1p-8f), tp_util_f32_to_bf16(5.0f),
                      tp_util_f32_to_bf16(-7.0f)};
    int len = 3;
    MPI_Datatype dt = MPI_UINT16_T;
    uint16_t a[3], b[3];
    memcpy(a, io, sizeof a);
    mpi_bf16_sum(in, a, &len, &dt);
    ck_assert(tp_util_bf16_to_f32(a[0]) == 1.0f); /* tie to even */
    ck_assert(tp_util_bf16_to_f32(a[1]) == 3.0f);
    ck_assert(tp_util_bf16_to_f32(a[2]) == -4.0f);
    memcpy(b, io, sizeof b);
    mpi_bf16_max(in, b, &len, &dt);
    ck_assert(tp_util_bf16_to_f32(b[0]) == 1.0f && tp_util_bf16_to_f32(b[1]) == 5.0f &&
              tp_util_bf16_to_f32(b[2]) == 3.0f);
    uint16_t hin[2] = {tp_util_f32_to_f16(65504.0f), tp_util_f32_to_f16(-1.0f)};
    uint16_t hio[2] = {tp_util_f32_to_f16(65504.0f), tp_util_f32_to_f16(0.5f)};
    len = 2;
    mpi_half_sum(hin, hio, &len, &dt);
    ck_assert(isinf(tp_util_f16_to_f32(hio[0])) && tp_util_f16_to_f32(hio[1]) == -0.5f);
    hio[0] = tp_util_f32_to_f16(2.0f);
    hio[1] = tp_util_f32_to_f16(-3.0f);
    mpi_half_min(hin, hio, &len, &dt);
    ck_assert(tp_util_f16_to_f32(hio[0]) == 2.0f && tp_util_f16_to_f32(hio[1]) == -3.0f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("mpi-half");
    TCase *tc = tcase_create("convert");
    tcase_set_timeout(tc, 0);
#ifdef HAVE_FLOAT16
    tcase_add_test(tc, test_half_exhaustive_decode);
    tcase_add_test(tc, test_half_encode);
#else
    fprintf(stderr, "no _Float16 in this compiler: the f16 reference checks are skipped\n");
#endif
    tcase_add_test(tc, test_bf16);
    tcase_add_test(tc, test_ops);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
