/* SPDX-License-Identifier: MIT */
/*
 * test-dp.c — tp_dp (core/layers/dp.c) on groups of D = 1..W ranks: the
 * bucketed weighted gradient sum against a double-precision host sum of
 * every rank's gradient (each rank regenerates the others' from their
 * seeds), the bucket count and bytes against a count made here from the
 * sizes, plans that differ across ranks refused on every rank without a
 * hang, the replica check, and bad arguments.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <tp/tp-layers.h>

#include "tp-test.h"

enum {
    NP = 5
};
/* sizes of the parameters; odd on purpose (they straddle small buckets) */
static const int64_t SIZES[NP] = {1, 37, 5, 1000, 3};
static const bool REPL[NP] = {true, false, true, false, false};

/* expr returns want with a message containing `part` (recorded per rank:
 * bodies run on rank threads). */
#define EXPECT_ST(k, expr, want, part)                                                             \
    do {                                                                                           \
        tp_status g_ = (expr);                                                                     \
        EXPECT((k), g_ == (want) && strstr(tp_last_error(), (part)) != NULL,                       \
               "%s -> %s (%s), expected %s with '%s'", #expr, tp_status_string(g_),                \
               tp_last_error(), tp_status_string(want), (part));                                   \
    } while (0)

typedef struct params {
    tp_tensor v[NP], g[NP];
    tp_param p[NP];
} params;

/* Rank r's gradient of parameter i (values from its own seed). */
static void grad_of(int r, int i, float *h)
{
    tpt_fill(h, SIZES[i], 1000u + 16u * (uint64_t)r + (uint64_t)i);
}

static void make_params(tpt_rank *k, params *ps, int extra)
{
    for (int i = 0; i < NP; i++) {
        int64_t n = SIZES[i] + (i == 1 ? extra : 0);
        float *h = tpt_falloc(n);
        grad_of(k->r, i, h);
        ps->v[i] = tpt_upload2(k, 1, n, h);
        ps->g[i] = tpt_upload2(k, 1, n, h);
        free(h);
        ps->p[i] = (tp_param){.name = "p",
                              .value = &ps->v[i],
                              .grad = &ps->g[i],
                              .replicated = REPL[i],
                              .ndim = 1,
                              .full_shape = {n, 0}};
    }
}

static void free_params(params *ps)
{
    for (int i = 0; i < NP; i++)
        tp_tensor_release(&ps->v[i]), tp_tensor_release(&ps->g[i]);
}

/* Buckets of `cap` bytes over n f32 elements, counted here. */
static int buckets_for(int64_t n, size_t cap)
{
    int64_t per = (int64_t)(cap / 4);
    return (int)((n + per - 1) / per);
}

static void check_reduce(tpt_rank *k, size_t cap)
{
    params ps;
    make_params(k, &ps, 0);
    int D = k->T;
    double wsum = D * (D + 1) / 2.0;
    float w = (float)((k->r + 1) / wsum); /* uneven weights, summing to 1 */
    tp_dp *d = NULL;
    tp_dp_config c = {.bucket_bytes = cap};
    EXPECT_OK(k, tp_dp_create(k->g, &c, ps.p, NP, &d));
    tp_stats_reset(k->g);
    EXPECT_OK(k, tp_dp_all_reduce_grads(d, w));
    tp_stats s;
    tp_stats_get(k->g, &s);
    int64_t nrep = 0, nsh = 0;
    for (int i = 0; i < NP; i++)
        *(REPL[i] ? &nrep : &nsh) += SIZES[i];
    size_t ecap = cap ? cap : TP_DP_DEFAULT_BUCKET_BYTES;
    int want = buckets_for(nrep, ecap) + buckets_for(nsh, ecap), got = 0;
    size_t bytes = 0;
    tp_dp_get_info(d, &got, &bytes, NULL);
    EXPECT(k, got == want && bytes == (size_t)(nrep + nsh) * 4,
           "cap %zu: %d buckets, %zu B; expected %d, %lld B", cap, got, bytes, want,
           (long long)(nrep + nsh) * 4);
    uint64_t calls = tp_stats_calls(&s, TP_PHASE_COUNT, TP_OP_ALL_REDUCE);
    EXPECT(k, calls == (uint64_t)want, "cap %zu: %llu all-reduces, expected %d", cap,
           (unsigned long long)calls, want);
    float *h = tpt_falloc(1000), *o = tpt_falloc(1000);
    for (int i = 0; i < NP; i++) {
        float *got_g = tpt_download(k, &ps.g[i]);
        double worst = 0;
        for (int64_t e = 0; e < SIZES[i]; e++) {
            double ref = 0, mag = 0;
            for (int q = 0; q < D; q++) {
                grad_of(q, i, o);
                float wq = (float)((q + 1) / wsum);
                ref += (double)wq * o[e];
                mag += fabs((double)wq * o[e]);
            }
            /* D products and D - 1 sums in f32: gamma(2D) sum |w g| */
            double tol = 2.0 * D * ldexp(1.0, -24) * mag / (1 - 2.0 * D * ldexp(1.0, -24));
            double err = fabs(got_g[e] - ref) - tol;
            worst = err > worst || err != err ? err : worst;
        }
        EXPECT(k, worst <= 0, "cap %zu, parameter %d: off the weighted sum by %g beyond bound", cap,
               i, worst);
        free(got_g);
    }
    free(h), free(o);
    tp_dp_free(d);
    free_params(&ps);
}

static void body_reduce(tpt_rank *k)
{
    const size_t caps[] = {16, 20, 64, 1000, 0};
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++)
        check_reduce(k, caps[i]);
}

/* Rank 0 holds a parameter one element longer: every rank is refused. */
static void body_mismatch(tpt_rank *k)
{
    params ps;
    make_params(k, &ps, k->r == 0 ? 1 : 0);
    tp_dp *d = NULL;
    tp_status st = tp_dp_create(k->g, NULL, ps.p, NP, &d);
    if (k->T == 1)
        EXPECT_OK(k, st);
    else
        EXPECT_ST(k, st, TP_ERR_INVALID_ARG, "made another bucket plan than DP rank 0");
    tp_dp_free(d);
    free_params(&ps);
}

/* Identical values pass; one rank's change is named. */
static void body_sync(tpt_rank *k)
{
    params ps;
    make_params(k, &ps, 0);
    float *h = tpt_falloc(37);
    grad_of(0, 1, h); /* every rank: rank 0's values */
    EXPECT_OK(k, tp_tensor_upload(&ps.v[1], h));
    tp_dp *d = NULL;
    EXPECT_OK(k, tp_dp_create(k->g, NULL, ps.p, NP, &d));
    for (int i = 0; i < NP; i++) { /* all values the same on every rank */
        float *z = tpt_falloc(SIZES[i]);
        EXPECT_OK(k, tp_tensor_upload(&ps.v[i], z));
        free(z);
    }
    EXPECT_OK(k, tp_dp_check_sync(d, NULL));
    if (k->r == k->T - 1) {
        h[36] = 1.0f; /* the last rank's copy drifts in one element */
        EXPECT_OK(k, tp_tensor_upload(&ps.v[1], h));
    } else {
        memset(h, 0, 37 * sizeof *h);
    }
    tp_status st = tp_dp_check_sync(d, NULL);
    if (k->T == 1)
        EXPECT_OK(k, st);
    else
        EXPECT_ST(k, st, TP_ERR_INTERNAL, "differs between DP ranks 0 and");
    free(h);
    tp_dp_free(d);
    free_params(&ps);
}

static void body_errors(tpt_rank *k)
{
    params ps;
    make_params(k, &ps, 0);
    tp_dp *d = NULL;
    tp_dp_config small = {.bucket_bytes = 8};
    EXPECT_ST(k, tp_dp_create(k->g, &small, ps.p, NP, &d), TP_ERR_INVALID_ARG, "below the minimum");
    EXPECT(k, d == NULL, "a refused create left an object");
    EXPECT_ST(k, tp_dp_create(NULL, NULL, ps.p, NP, &d), TP_ERR_INVALID_ARG, "NULL");
    EXPECT_ST(k, tp_dp_create(k->g, NULL, ps.p, NP, NULL), TP_ERR_INVALID_ARG, "out is NULL");
    EXPECT_OK(k, tp_dp_create(k->g, NULL, ps.p, NP, &d));
    EXPECT_ST(k, tp_dp_all_reduce_grads(d, -1.0f), TP_ERR_INVALID_ARG, "must be >= 0");
    EXPECT_ST(k, tp_dp_all_reduce_grads(d, NAN), TP_ERR_INVALID_ARG, "must be >= 0");
    EXPECT_ST(k, tp_dp_all_reduce_grads(NULL, 1.0f), TP_ERR_INVALID_ARG, "NULL");
    float sum = 0;
    EXPECT_OK(k, tp_dp_sum(d, (float)(k->r + 1), &sum));
    EXPECT(k, sum == (float)(k->T * (k->T + 1) / 2), "tp_dp_sum: %g", (double)sum);
    tp_dp_free(d);
    tp_dp_free(NULL);
    free_params(&ps);
}

START_TEST(test_reduce)
{
    tpt_run_all(body_reduce);
}
END_TEST

START_TEST(test_mismatch)
{
    tpt_run_all(body_mismatch);
}
END_TEST

START_TEST(test_sync)
{
    tpt_run_all(body_sync);
}
END_TEST

START_TEST(test_errors)
{
    tpt_run_all(body_errors);
}
END_TEST

int main(int argc, char **argv)
{
    const tpt_test tests[] = {
        {"reduce", test_reduce},
        {"mismatch", test_mismatch},
        {"sync", test_sync},
        {"errors", test_errors},
    };
    return tpt_main(&argc, &argv, "dp", tests, sizeof tests / sizeof tests[0], NULL);
}
