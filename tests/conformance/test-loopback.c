/* SPDX-License-Identifier: MIT */
/*
 * test-loopback.c — behaviour specific to the loopback backend, through the
 * public API: failures end in an error instead of a hang, results are
 * bitwise deterministic and equal to a serial sum in rank order, world
 * sizes at the edges, argument disagreement between ranks.
 *
 * Collective correctness over ops, dtypes and sizes is tp-conformance's
 * job (run by the 'conformance' suite); these tests cover what only the
 * loopback promises. No timing thresholds: a failure to notice a departed
 * peer shows up as TP_ERR_TIMEOUT instead of TP_ERR_PEER, and a hang as
 * the meson test timeout.
 */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <tp/tp.h>

#include "tp-expect.h"

#define MAXR 64

typedef struct result {
    tp_status st[MAXR];
    char msg[MAXR][512];
    int mode;
    size_t n;
    float *out[MAXR]; /* determinism: each rank's result */
} result;

static void keep(result *r, int rank, tp_status st)
{
    r->st[rank] = st;
    snprintf(r->msg[rank], sizeof r->msg[rank], "%s", st ? tp_last_error() : "");
}

static tp_ctx *start(int n, double timeout_env)
{
    if (timeout_env > 0) {
        char buf[32];
        snprintf(buf, sizeof buf, "%g", timeout_env);
        setenv("TP_TIMEOUT_S", buf, 1);
    } else {
        unsetenv("TP_TIMEOUT_S");
    }
    setenv("TP_BACKEND", "loopback", 1);
    unsetenv("TP_WORLD_SIZE");
    tp_config cfg = {0};
    cfg.world_size = n;
    cfg.device = "cpu";
    tp_ctx *ctx = NULL;
    tp_status st = tp_init(&cfg, &ctx);
    expect_status(st, TP_OK, "tp_init(%d ranks)", n);
    return ctx;
}

/* ------------------------------------------------------------ failures */

/* mode 0: the last rank returns without calling the collective.
 * mode 1: the last rank stays but skips it (sleeps past the timeout).
 * mode 2: the last rank fails with an error of its own and returns. */
static tp_status rank_skip(tp_comm *w, void *arg)
{
    result *r = arg;
    int rank = tp_comm_rank(w), size = tp_comm_size(w);
    float v[4] = {1, 2, 3, 4};
    if (rank == size - 1) {
        if (r->mode == 1) {
            struct timespec ts = {2, 0};
            nanosleep(&ts, NULL);
        }
        return r->mode == 2 ? tp_set_error(TP_ERR_INVALID_ARG, "rank %d gives up", rank) : TP_OK;
    }
    tp_status st = tp_all_reduce(w, v, v, 4, TP_F32, TP_SUM);
    if (st == TP_OK && rank != size - 1)
        st = TP_ERR_INTERNAL; /* the last rank never joined: this must not succeed */
    keep(r, rank, st);
    return TP_OK;
}

static void check_all_failed(const result *r, int size, tp_status want, const char *needle)
{
    for (int i = 0; i < size - 1; i++) {
        ck_assert_msg(r->st[i] == want, "rank %d: got %s, expected %s (%s)", i,
                      tp_status_string(r->st[i]), tp_status_string(want), r->msg[i]);
        ck_assert_msg(strstr(r->msg[i], needle), "rank %d: message lacks '%s': %s", i, needle,
                      r->msg[i]);
    }
}

START_TEST(peer_leaves)
{
    /* TP_TIMEOUT_S is long: only departure detection can end the wait. */
    for (int mode = 0; mode <= 2; mode += 2) {
        tp_ctx *ctx = start(3, 120);
        result r = {.mode = mode};
        tp_run(ctx, rank_skip, &r);
        tp_finalize(ctx);
        check_all_failed(&r, 3, TP_ERR_PEER, "rank 2");
        check_all_failed(&r, 3, TP_ERR_PEER, "all_reduce #1");
    }
}
END_TEST

START_TEST(peer_times_out)
{
    tp_ctx *ctx = start(3, 1);
    result r = {.mode = 1};
    tp_run(ctx, rank_skip, &r);
    tp_finalize(ctx);
    check_all_failed(&r, 3, TP_ERR_TIMEOUT, "rank 2");
    check_all_failed(&r, 3, TP_ERR_TIMEOUT, "TP_TIMEOUT_S");
}
END_TEST

/* mode 0: counts differ; 1: ops differ; 2: one rank calls another collective. */
static tp_status rank_mismatch(tp_comm *w, void *arg)
{
    result *r = arg;
    int rank = tp_comm_rank(w), size = tp_comm_size(w);
    float v[32] = {0};
    bool odd = rank == size - 1;
    tp_status st;
    if (r->mode == 0)
        st = tp_all_reduce(w, v, v, odd ? 17 : 13, TP_F32, TP_SUM);
    else if (r->mode == 1)
        st = tp_all_reduce(w, v, v, 13, TP_F32, odd ? TP_MAX : TP_SUM);
    else
        st = odd ? tp_broadcast(w, v, 13, TP_F32, 0) : tp_all_reduce(w, v, v, 13, TP_F32, TP_SUM);
    keep(r, rank, st);
    /* the communicator is now unusable: later calls fail at once */
    if (tp_barrier(w) == TP_OK)
        r->st[rank] = TP_ERR_INTERNAL;
    return TP_OK;
}

START_TEST(ranks_disagree)
{
    static const char *const needles[] = {"count", "op", "different collectives"};
    for (int n = 2; n <= 4; n += 2)
        for (int mode = 0; mode < 3; mode++) {
            tp_ctx *ctx = start(n, 120);
            result r = {.mode = mode};
            tp_run(ctx, rank_mismatch, &r);
            tp_finalize(ctx);
            for (int i = 0; i < n; i++) {
                ck_assert_msg(r.st[i] == TP_ERR_INVALID_ARG, "T=%d mode %d rank %d: %s (%s)", n,
                              mode, i, tp_status_string(r.st[i]), r.msg[i]);
                ck_assert_msg(strstr(r.msg[i], needles[mode]), "rank %d message: %s", i, r.msg[i]);
            }
        }
}
END_TEST

/* --------------------------------------------------------- determinism */

static float input(int rank, size_t i)
{
    /* Non-integer values of mixed magnitude: sums round, so the order of
     * additions is visible in the result bits. */
    return tp_master_uniform(7, (uint64_t)rank, i, 1.0f) * (float)(1 + (i % 7) * 1000);
}

/* The promised order: ((x0 + x1) + x2) + ... of element i's inputs. */
static float serial_sum(int T, size_t i)
{
    float acc = input(0, i);
    for (int q = 1; q < T; q++)
        acc += input(q, i);
    return acc;
}

static tp_status rank_det(tp_comm *w, void *arg)
{
    result *r = arg;
    int rank = tp_comm_rank(w);
    float *send = malloc(r->n * sizeof *send), *out = malloc(r->n * sizeof *out);
    if (!send || !out)
        return tp_set_error(TP_ERR_NO_MEMORY, "test: out of memory");
    for (size_t i = 0; i < r->n; i++)
        send[i] = input(rank, i);
    tp_status st;
    if (r->mode == 0) {
        st = tp_all_reduce(w, send, out, r->n, TP_F32, TP_SUM);
    } else { /* in place */
        memcpy(out, send, r->n * sizeof *out);
        st = tp_all_reduce(w, out, out, r->n, TP_F32, TP_SUM);
    }
    keep(r, rank, st);
    r->out[rank] = out;
    free(send);
    return st;
}

START_TEST(bitwise_deterministic)
{
    static const int sizes[] = {2, 3, 4, 7};
    const size_t n = 100003; /* odd, and several cache lines per rank */
    float *ref = malloc(n * sizeof *ref);
    ck_assert_ptr_nonnull(ref);
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int T = sizes[k];
        for (size_t i = 0; i < n; i++)
            ref[i] = serial_sum(T, i);
        for (int run = 0; run < 4; run++) {
            tp_ctx *ctx = start(T, 120);
            result r = {.mode = run % 2, .n = n};
            ck_assert_int_eq(tp_run(ctx, rank_det, &r), TP_OK);
            tp_finalize(ctx);
            for (int q = 0; q < T; q++) {
                ck_assert_msg(memcmp(r.out[q], ref, n * sizeof *ref) == 0,
                              "T=%d run %d (%s): rank %d differs bitwise from the serial "
                              "rank-order sum",
                              T, run, run % 2 ? "in-place" : "out-of-place", q);
                free(r.out[q]);
            }
        }
    }
    free(ref);
}
END_TEST

/* ------------------------------------------------------- nonblocking */

/* got == want bit for bit; else rank's result says where. */
static bool same_bits(result *r, int rank, const char *what, size_t i, float got, float want)
{
    if (!memcmp(&got, &want, sizeof got))
        return true;
    snprintf(r->msg[rank], sizeof r->msg[rank], "%s[%zu] = %.9g, want %.9g", what, i, (double)got,
             (double)want);
    r->st[rank] = TP_ERR_INTERNAL;
    return false;
}

/* Three requests on two comms (the world and its reverse, sub rank =
 * T-1-rank) in flight at once, waited in a different order on odd and
 * even ranks, rank 0 sleeping first so the others must do its shares:
 * each result equals the serial reference bit for bit. */
static tp_status rank_nb(tp_comm *w, void *arg)
{
    result *r = arg;
    int rank = tp_comm_rank(w), T = tp_comm_size(w);
    size_t n = r->n, per = n / (size_t)T + 1;
    tp_comm *rev = NULL;
    tp_status st = tp_comm_split(w, 0, -rank, &rev);
    float *x = malloc(n * sizeof *x), *sum = malloc(n * sizeof *sum);
    float *gat = malloc(per * (size_t)T * sizeof *gat), *mine = malloc(per * sizeof *mine);
    float *rs = malloc(per * (size_t)T * sizeof *rs), *rsout = malloc(per * sizeof *rsout);
    if (!x || !sum || !gat || !mine || !rs || !rsout)
        st = tp_set_error(TP_ERR_NO_MEMORY, "test: out of memory");
    tp_request *q[3] = {NULL, NULL, NULL};
    if (st == TP_OK) {
        for (size_t i = 0; i < n; i++)
            x[i] = input(rank, i);
        for (size_t i = 0; i < per; i++)
            mine[i] = input(rank, i + 7);
        for (size_t i = 0; i < per * (size_t)T; i++)
            rs[i] = input(rank, i + 13);
        st = tp_iall_reduce(w, x, sum, n, TP_F32, TP_SUM, &q[0]);
    }
    if (st == TP_OK)
        st = tp_iall_gather(rev, mine, gat, per, TP_F32, &q[1]);
    if (st == TP_OK)
        st = tp_ireduce_scatter(w, rs, rsout, per, TP_F32, TP_SUM, &q[2]);
    if (rank == 0) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    for (int k = 0; k < 3; k++) {
        tp_status ws = tp_wait(q[rank % 2 ? 2 - k : k]);
        if (st == TP_OK)
            st = ws;
    }
    keep(r, rank, st);
    for (size_t i = 0; st == TP_OK && i < n; i++)
        if (!same_bits(r, rank, "iall_reduce", i, sum[i], serial_sum(T, i)))
            break;
    /* block b of the reverse comm is world rank T-1-b's */
    for (size_t i = 0; st == TP_OK && i < per * (size_t)T; i++)
        if (!same_bits(r, rank, "iall_gather", i, gat[i],
                       input(T - 1 - (int)(i / per), i % per + 7)))
            break;
    for (size_t i = 0; st == TP_OK && i < per; i++)
        if (!same_bits(r, rank, "ireduce_scatter", i, rsout[i],
                       serial_sum(T, (size_t)rank * per + i + 13)))
            break;
    tp_comm_free(rev);
    free(x), free(sum), free(gat), free(mine), free(rs), free(rsout);
    return TP_OK;
}

START_TEST(nb_any_order)
{
    static const int sizes[] = {1, 2, 3, 4, 7};
    static const size_t ns[] = {1, 13, 17, 100003};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        for (size_t j = 0; j < sizeof ns / sizeof ns[0]; j++) {
            tp_ctx *ctx = start(sizes[k], 60);
            result r = {.n = ns[j]};
            ck_assert_int_eq(tp_run(ctx, rank_nb, &r), TP_OK);
            tp_finalize(ctx);
            for (int q = 0; q < sizes[k]; q++)
                ck_assert_msg(r.st[q] == TP_OK, "T=%d n=%zu rank %d: %s: %s", sizes[k], ns[j], q,
                              tp_status_string(r.st[q]), r.msg[q]);
        }
    }
}
END_TEST

/* Ranks start nonblocking all-reduces of different counts: every rank's
 * request fails naming the disagreement, none hangs. */
static tp_status rank_nb_disagree(tp_comm *w, void *arg)
{
    result *r = arg;
    int rank = tp_comm_rank(w);
    float v[8] = {0};
    tp_request *q = NULL;
    tp_status st = tp_iall_reduce(w, v, v, rank == 1 ? 8 : 4, TP_F32, TP_SUM, &q);
    if (st == TP_OK)
        st = tp_wait(q);
    keep(r, rank, st);
    return TP_OK;
}

START_TEST(nb_disagree)
{
    tp_ctx *ctx = start(3, 60);
    result r = {0};
    tp_run(ctx, rank_nb_disagree, &r);
    tp_finalize(ctx);
    check_all_failed(&r, 3, TP_ERR_INVALID_ARG, "ranks disagree");
    check_all_failed(&r, 3, TP_ERR_INVALID_ARG, "tp_iall_reduce #1");
}
END_TEST

/* A request that fails must not leave peers working on its buffers: an
 * all-reduce of 4 Mi floats and, after it, one of different counts. Rank 0
 * waits for the second first (the disagreement fails the group), then for
 * the first while the peers are doing its shares, and overwrites its recv
 * the moment that wait returns; once every rank is back, its recv must
 * still hold what it wrote (before the fix, a peer's share under way went
 * on writing into it). */
enum {
    LATE_N = 1 << 22
};
static pthread_barrier_t late_bar;

static tp_status rank_nb_late(tp_comm *w, void *arg)
{
    result *r = arg;
    int rank = tp_comm_rank(w);
    float *x = calloc(LATE_N, sizeof *x), *y = calloc(LATE_N, sizeof *y), v[8] = {0};
    tp_request *q1 = NULL, *q2 = NULL;
    tp_status st = x && y ? TP_OK : tp_set_error(TP_ERR_NO_MEMORY, "test: out of memory");
    if (st == TP_OK)
        st = tp_iall_reduce(w, x, y, LATE_N, TP_F32, TP_SUM, &q1);
    if (st == TP_OK)
        st = tp_iall_reduce(w, v, v, rank == 1 ? 8 : 4, TP_F32, TP_SUM, &q2);
    tp_request *first = rank == 0 ? q2 : q1, *second = rank == 0 ? q1 : q2;
    if (st == TP_OK) {
        tp_wait(first);
        st = tp_wait(second);
    }
    if (rank == 0 && y)
        for (size_t i = 0; i < LATE_N; i++)
            y[i] = -7.0f;
    keep(r, rank, st);
    pthread_barrier_wait(&late_bar);
    for (size_t i = 0; rank == 0 && y && i < LATE_N; i++)
        if (y[i] != -7.0f) {
            snprintf(r->msg[0], sizeof r->msg[0],
                     "recv[%zu] = %g after its failed request returned: a peer still wrote it", i,
                     (double)y[i]);
            r->st[0] = TP_ERR_INTERNAL;
            break;
        }
    free(x), free(y);
    return TP_OK;
}

START_TEST(nb_failed_request_quiesces)
{
    for (int T = 2; T <= 3; T++)
        for (int rep = 0; rep < 4; rep++) {
            pthread_barrier_init(&late_bar, NULL, (unsigned)T);
            tp_ctx *ctx = start(T, 60);
            result r = {0};
            tp_run(ctx, rank_nb_late, &r);
            tp_finalize(ctx);
            pthread_barrier_destroy(&late_bar);
            /* the first request may have completed before the group failed */
            for (int k = 0; k < T; k++)
                ck_assert_msg(r.st[k] == TP_OK || r.st[k] == TP_ERR_INVALID_ARG,
                              "T=%d: rank %d: %s: %s", T, k, tp_status_string(r.st[k]), r.msg[k]);
        }
}
END_TEST

/* ------------------------------------------------------- world sizes */

static tp_status rank_big(tp_comm *w, void *arg)
{
    result *r = arg;
    int rank = tp_comm_rank(w), size = tp_comm_size(w);
    int32_t v[5], counts_ok = 1;
    for (int i = 0; i < 5; i++)
        v[i] = rank * 5 + i;
    tp_status st = tp_all_reduce(w, v, v, 5, TP_I32, TP_SUM);
    for (int i = 0; st == TP_OK && i < 5; i++)
        counts_ok &= v[i] == 5 * (size * (size - 1) / 2) + i * size;
    int32_t all[MAXR];
    int32_t me = rank * 3;
    if (st == TP_OK)
        st = tp_all_gather(w, &me, all, 1, TP_I32);
    for (int i = 0; st == TP_OK && i < size; i++)
        counts_ok &= all[i] == i * 3;
    tp_comm *half = NULL;
    if (st == TP_OK)
        st = tp_comm_split(w, rank % 2, -rank, &half);
    if (st == TP_OK) {
        int32_t one = 1;
        st = tp_all_reduce(half, &one, &one, 1, TP_I32, TP_SUM);
        counts_ok &= one == (size + 1 - rank % 2) / 2;
        counts_ok &= tp_comm_rank(half) == (size - 1 - rank) / 2;
        tp_comm_free(half);
    }
    if (st == TP_OK)
        st = tp_barrier(w);
    if (st == TP_OK && !counts_ok)
        st = tp_set_error(TP_ERR_INTERNAL, "rank %d: wrong result", rank);
    keep(r, rank, st);
    return st;
}

START_TEST(world_64)
{
    tp_ctx *ctx = start(64, 120);
    ck_assert_int_eq(tp_ctx_world_size(ctx), 64);
    result r = {0};
    tp_status st = tp_run(ctx, rank_big, &r);
    tp_finalize(ctx);
    expect_status(st, TP_OK, "tp_run on 64 ranks");
}
END_TEST

START_TEST(world_size_limits)
{
    setenv("TP_BACKEND", "loopback", 1);
    unsetenv("TP_WORLD_SIZE");
    tp_config cfg = {0};
    cfg.world_size = 65;
    tp_ctx *ctx = NULL;
    tp_status st = tp_init(&cfg, &ctx);
    ck_assert_msg(st == TP_ERR_INVALID_ARG, "65 ranks: got %s", tp_status_string(st));
    ck_assert_msg(strstr(tp_last_error(), "65"), "message: %s", tp_last_error());
    tp_finalize(ctx);
    /* no request: one rank */
    cfg.world_size = 0;
    ck_assert_int_eq(tp_init(&cfg, &ctx), TP_OK);
    ck_assert_int_eq(tp_ctx_world_size(ctx), 1);
    ck_assert_int_eq(tp_ctx_local_count(ctx), 1);
    result r = {0};
    ck_assert_int_eq(tp_run(ctx, rank_big, &r), TP_OK);
    tp_finalize(ctx);
}
END_TEST

/* tp_run twice on one context: a fresh world each time. */
START_TEST(run_twice)
{
    tp_ctx *ctx = start(3, 120);
    for (int i = 0; i < 3; i++) {
        result r = {0};
        expect_status(tp_run(ctx, rank_big, &r), TP_OK, "run %d", i);
    }
    tp_finalize(ctx);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("loopback");
    TCase *tc = tcase_create("failures");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, peer_leaves);
    tcase_add_test(tc, peer_times_out);
    tcase_add_test(tc, ranks_disagree);
    suite_add_tcase(s, tc);
    tc = tcase_create("results");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, bitwise_deterministic);
    tcase_add_test(tc, world_64);
    tcase_add_test(tc, world_size_limits);
    tcase_add_test(tc, run_twice);
    suite_add_tcase(s, tc);
    tc = tcase_create("nonblocking");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, nb_any_order);
    tcase_add_test(tc, nb_disagree);
    tcase_add_test(tc, nb_failed_request_quiesces);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
