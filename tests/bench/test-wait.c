/* SPDX-License-Identifier: MIT */
/*
 * test-wait.c — the split of a collective's time into waiting for the last
 * rank and transfer (tp_stats_set_wait, tp_stats_split_wait), on loopback
 * ranks (threads of this process, so one clock).
 *
 * In each of K iterations every rank passes a barrier, then the last rank
 * sleeps SKEW seconds before an all_reduce (phase forward); then K
 * all_reduces without the sleep (phase backward). The reference for each
 * call is measured by the test itself, independently of the core: every
 * rank reads its clock just before calling tp_all_reduce; after the stats
 * are read the ranks all-gather these times, and the expected wait of
 * rank r is max over ranks of that time - rank r's time.
 *
 * Run as is: loopback threads at world sizes 1, 3, 7. With
 * TP_WAIT_PROCESSES=1 under tp-launch (tcp): the ranks are processes of
 * this machine (one CLOCK_MONOTONIC), both modes, each process checking its
 * own rank.
 *
 * Bounds. TP_WAIT_CLOCK reads the same clock as the test a few
 * instructions later (argument checks, no system call), so per call the
 * core's wait differs from the reference by microseconds, plus the clamp to
 * the call's duration (which ends after the last rank arrived): CLOCK_TOL
 * = 2 ms per call leaves room for a preempted thread between the two clock
 * reads on a loaded machine. TP_WAIT_BARRIER's wait is a barrier's time,
 * which ends when the last rank arrived plus the barrier's own latency and
 * the wake-up of the waiting threads (loopback threads on a few shared
 * cores: up to a scheduler slice each), so it gets SKEW/4 per call. The
 * transfer of a 1 KiB all_reduce on loopback is microseconds; SKEW/4
 * bounds it against the same scheduling noise. All bounds are a quarter
 * of SKEW or less, so a split that put the skew into transfer, or counted
 * it twice, fails them.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <tp/tp.h>

#define K         3     /* calls per phase */
#define SKEW      0.200 /* seconds the last rank sleeps */
#define CLOCK_TOL 0.002 /* per call, TP_WAIT_CLOCK vs the reference */
#define MAX_W     7
#define N         256 /* floats per all_reduce */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* What each rank saw, checked on the main thread after tp_run. */
typedef struct rank_out {
    bool ran;
    char err[512];
    tp_stats s;
    uint64_t split_calls;
    double ref_wait[2]; /* reference wait summed over the K calls: [0] skewed, [1] not */
    bool sum_ok;
} rank_out;

typedef struct run_arg {
    tp_wait_mode mode;
    rank_out out[MAX_W];
} run_arg;

#define TRY(r, expr)                                                                               \
    do {                                                                                           \
        tp_status st_ = (expr);                                                                    \
        if (st_ != TP_OK) {                                                                        \
            snprintf((r)->err, sizeof(r)->err, "%s -> %s: %s", #expr, tp_status_string(st_),       \
                     tp_last_error());                                                             \
            return st_;                                                                            \
        }                                                                                          \
    } while (0)

/* K all_reduces in phase ph (0 forward: the last rank sleeps first);
 * t_enter[ph][k]: the test's clock just before each. */
static tp_status calls(tp_comm *w, run_arg *a, int ph, float *buf, double (*t_enter)[K])
{
    int r = tp_comm_rank(w), W = tp_comm_size(w);
    rank_out *o = &a->out[r];
    tp_phase prev = tp_phase_set(w, ph == 0 ? TP_PHASE_FORWARD : TP_PHASE_BACKWARD);
    for (int k = 0; k < K; k++) {
        for (int i = 0; i < N; i++)
            buf[i] = (float)(r + 1);
        TRY(o, tp_barrier(w));
        if (ph == 0 && r == W - 1)
            sleep_s(SKEW);
        t_enter[ph][k] = now_s();
        TRY(o, tp_all_reduce(w, buf, buf, N, TP_F32, TP_SUM));
        for (int i = 0; i < N; i++)
            o->sum_ok = o->sum_ok && buf[i] == (float)(W * (W + 1) / 2);
    }
    tp_phase_set(w, prev);
    return TP_OK;
}

static tp_status rank_main(tp_comm *w, void *arg)
{
    run_arg *a = arg;
    int r = tp_comm_rank(w), W = tp_comm_size(w);
    rank_out *o = &a->out[r];
    float buf[N];
    double mine[2][K], all[MAX_W][2][K];
    o->sum_ok = true;
    TRY(o, tp_stats_set_wait(w, a->mode));
    TRY(o, tp_all_reduce(w, buf, buf, 1, TP_F32, TP_SUM)); /* warm-up, then reset */
    tp_stats_reset(w);
    TRY(o, calls(w, a, 0, buf, mine));
    TRY(o, calls(w, a, 1, buf, mine));
    if (a->mode != TP_WAIT_NONE)
        TRY(o, tp_stats_split_wait(w, &o->split_calls));
    tp_stats_get(w, &o->s);
    TRY(o, tp_stats_set_wait(w, TP_WAIT_NONE));
    /* the reference: every rank's clock reads (doubles moved as 32-bit words) */
    TRY(o, tp_all_gather(w, mine, all, sizeof mine / 4, TP_I32));
    for (int ph = 0; ph < 2; ph++)
        for (int k = 0; k < K; k++) {
            double last = 0;
            for (int q = 0; q < W; q++)
                last = fmax(last, all[q][ph][k]);
            o->ref_wait[ph] += last - all[r][ph][k];
        }
    o->ran = true;
    return TP_OK;
}

static run_arg *run_world(int W, tp_wait_mode mode)
{
    run_arg *a = calloc(1, sizeof *a);
    ck_assert(a);
    a->mode = mode;
    tp_config cfg = {.backend = "loopback", .device = "cpu", .world_size = W};
    tp_ctx *ctx = NULL;
    tp_status st = tp_init(&cfg, &ctx);
    ck_assert_msg(st == TP_OK, "tp_init: %s", tp_last_error());
    st = tp_run(ctx, rank_main, a);
    tp_finalize(ctx);
    for (int r = 0; r < W; r++)
        ck_assert_msg(a->out[r].err[0] == 0, "rank %d: %s", r, a->out[r].err);
    ck_assert_msg(st == TP_OK, "tp_run: %s", tp_last_error());
    return a;
}

/* One rank's results against the reference and the bounds above. */
static void check_rank(const run_arg *a, int r, int W)
{
    tp_wait_mode mode = a->mode;
    double tol = mode == TP_WAIT_CLOCK ? CLOCK_TOL * K : SKEW / 4 * K;
    {
        const rank_out *o = &a->out[r];
        ck_assert_msg(o->sum_ok, "rank %d: wrong all_reduce result", r);
        uint64_t all = tp_stats_calls(&o->s, TP_PHASE_COUNT, TP_OP_COUNT);
        ck_assert_uint_eq(all, 4 * K); /* K barriers + K all_reduces, twice */
        if (mode == TP_WAIT_CLOCK)
            ck_assert_msg(o->split_calls == all, "rank %d: split %llu calls, counted %llu", r,
                          (unsigned long long)o->split_calls, (unsigned long long)all);
        else
            ck_assert_uint_eq(o->split_calls, 0);
        for (int ph = 0; ph < 2; ph++) {
            const tp_counter *c =
                &o->s.comm[ph == 0 ? TP_PHASE_FORWARD : TP_PHASE_BACKWARD][TP_OP_ALL_REDUCE];
            ck_assert_uint_eq(c->calls, K);
            double ref = o->ref_wait[ph], transfer = c->seconds - c->wait_seconds;
            /* the sleeping rank itself is never the one that waits */
            if (ph == 0 && W > 1 && r < W - 1)
                ck_assert_msg(ref > (SKEW - 0.05) * K, "rank %d: reference %.3f s", r, ref);
            if (mode == TP_WAIT_NONE) {
                ck_assert_msg(c->wait_seconds == 0, "untraced wait %.6f s", c->wait_seconds);
                continue;
            }
            ck_assert_msg(fabs(c->wait_seconds - ref) <= tol,
                          "W=%d rank %d phase %d: wait %.4f s, reference %.4f s (tolerance %.4f)",
                          W, r, ph, c->wait_seconds, ref, tol);
            ck_assert_msg(c->wait_seconds >= 0 && transfer >= 0 && transfer < SKEW / 4 * K,
                          "W=%d rank %d phase %d: wait %.4f s, transfer %.4f s of %.4f s", W, r, ph,
                          c->wait_seconds, transfer, c->seconds);
            if (ph == 1 || r == W - 1) /* no skew, or the last to arrive: small wait */
                ck_assert_msg(c->wait_seconds < SKEW / 4 * K, "rank %d phase %d: wait %.4f s", r,
                              ph, c->wait_seconds);
            if (W == 1 && mode == TP_WAIT_CLOCK)
                ck_assert_msg(c->wait_seconds == 0, "one rank waited %.6f s", c->wait_seconds);
        }
    }
}

static void check_world(int W, tp_wait_mode mode)
{
    run_arg *a = run_world(W, mode);
    for (int r = 0; r < W; r++)
        check_rank(a, r, W);
    free(a);
}

/* TP_WAIT_PROCESSES: the world of the engine (tp-launch -n W), this
 * process's ranks. */
START_TEST(processes)
{
    tp_wait_mode modes[] = {TP_WAIT_CLOCK, TP_WAIT_BARRIER};
    tp_config cfg = {0};
    tp_ctx *ctx = NULL;
    ck_assert_msg(tp_init(&cfg, &ctx) == TP_OK, "tp_init: %s", tp_last_error());
    int W = tp_ctx_world_size(ctx);
    ck_assert_msg(W <= MAX_W, "at most %d ranks", MAX_W);
    for (int m = 0; m < 2; m++) {
        run_arg *a = calloc(1, sizeof *a);
        ck_assert(a);
        a->mode = modes[m];
        tp_status st = tp_run(ctx, rank_main, a);
        int checked = 0;
        for (int r = 0; r < W; r++) {
            ck_assert_msg(a->out[r].err[0] == 0, "rank %d: %s", r, a->out[r].err);
            if (a->out[r].ran) {
                check_rank(a, r, W);
                checked++;
            }
        }
        ck_assert_msg(st == TP_OK, "tp_run: %s", tp_last_error());
        ck_assert_int_eq(checked, tp_ctx_local_count(ctx));
        free(a);
    }
    tp_finalize(ctx);
}
END_TEST

START_TEST(clock_w1)
{
    check_world(1, TP_WAIT_CLOCK);
}
END_TEST

START_TEST(clock_w3)
{
    check_world(3, TP_WAIT_CLOCK);
}
END_TEST

START_TEST(clock_w7)
{
    check_world(7, TP_WAIT_CLOCK);
}
END_TEST

START_TEST(barrier_w1)
{
    check_world(1, TP_WAIT_BARRIER);
}
END_TEST

START_TEST(barrier_w3)
{
    check_world(3, TP_WAIT_BARRIER);
}
END_TEST

START_TEST(barrier_w7)
{
    check_world(7, TP_WAIT_BARRIER);
}
END_TEST

START_TEST(untraced_w3)
{
    check_world(3, TP_WAIT_NONE);
}
END_TEST

/* Misuse: named errors on every rank, never a hang. */
typedef struct misuse_out {
    tp_status bad_mode, no_log, mismatch, after;
    char msg[512];
} misuse_out;

static tp_status misuse_main(tp_comm *w, void *arg)
{
    misuse_out *m = (misuse_out *)arg + tp_comm_rank(w);
    float x = 1;
    m->bad_mode = tp_stats_set_wait(w, (tp_wait_mode)7);
    m->no_log = tp_stats_split_wait(w, NULL); /* TP_WAIT_NONE */
    tp_stats_set_wait(w, TP_WAIT_CLOCK);
    tp_all_reduce(w, &x, &x, 1, TP_F32, TP_SUM);
    if (tp_comm_rank(w) == 0)
        tp_stats_reset(w); /* rank 0's log is now one call shorter */
    tp_all_reduce(w, &x, &x, 1, TP_F32, TP_SUM);
    uint64_t n = 99;
    m->mismatch = tp_stats_split_wait(w, &n);
    snprintf(m->msg, sizeof m->msg, "%s", tp_last_error());
    if (n != 0)
        m->mismatch = TP_ERR_INTERNAL;
    /* the log was dropped: the next split works */
    tp_all_reduce(w, &x, &x, 1, TP_F32, TP_SUM);
    m->after = tp_stats_split_wait(w, &n);
    if (n != 1)
        m->after = TP_ERR_INTERNAL;
    return TP_OK;
}

START_TEST(misuse)
{
    misuse_out m[3];
    memset(m, 0, sizeof m);
    tp_config cfg = {.backend = "loopback", .device = "cpu", .world_size = 3};
    tp_ctx *ctx = NULL;
    ck_assert_msg(tp_init(&cfg, &ctx) == TP_OK, "%s", tp_last_error());
    tp_status st = tp_run(ctx, misuse_main, m);
    tp_finalize(ctx);
    ck_assert_msg(st == TP_OK, "%s", tp_last_error());
    for (int r = 0; r < 3; r++) {
        ck_assert_int_eq(m[r].bad_mode, TP_ERR_INVALID_ARG);
        ck_assert_int_eq(m[r].no_log, TP_ERR_INVALID_ARG);
        ck_assert_int_eq(m[r].mismatch, TP_ERR_INVALID_ARG);
        ck_assert_msg(strstr(m[r].msg, "rank 0 logged 1 calls, rank 1 logged 2"), "%s", m[r].msg);
        ck_assert_int_eq(m[r].after, TP_OK);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("wait");
    TCase *tc = tcase_create("wait");
    tcase_set_timeout(tc, 0); /* meson's timeout applies */
    const char *procs = getenv("TP_WAIT_PROCESSES");
    if (procs && strcmp(procs, "1") == 0) {
        tcase_add_test(tc, processes);
        goto run;
    }
    tcase_add_test(tc, clock_w1);
    tcase_add_test(tc, clock_w3);
    tcase_add_test(tc, clock_w7);
    tcase_add_test(tc, barrier_w1);
    tcase_add_test(tc, barrier_w3);
    tcase_add_test(tc, barrier_w7);
    tcase_add_test(tc, untraced_w3);
    tcase_add_test(tc, misuse);
run:
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
