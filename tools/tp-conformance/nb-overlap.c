/* SPDX-License-Identifier: MIT */
/*
 * tp-nb-overlap — how much of one all_reduce a rank hides behind work.
 *
 * Per rank: the blocking all_reduce of --mib MiB of f32 (median of --reps)
 * gives T_comm; a busy loop (spinning on the clock, no memory traffic) of
 * the same length is T_busy. Then, --reps times: tp_iall_reduce, the busy
 * loop (calling tp_test every --test-us us if > 0: MPI progresses only
 * inside calls), tp_wait. Rank 0 prints the medians: elapsed of the
 * overlapped step against T_comm + T_busy, and the nonblocking counters
 * (in flight, exposed = blocked in tp_wait/tp_test before completion).
 * The result is checked against the blocking one, bitwise.
 *
 *   tp-launch -n 2 tp-nb-overlap --mib 4        (TP_BACKEND=tcp)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <tp/tp.h>

#include "tp-try.h"

typedef struct opts {
    double mib;
    int reps;
    double test_us;
} opts;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return v[n / 2];
}

/* Spin for `sec`, calling tp_test every test_us (0: never). */
static tp_status busy(double sec, tp_request *req, double test_us)
{
    double t0 = now_s(), next = t0 + test_us * 1e-6;
    bool done = false;
    while (now_s() - t0 < sec)
        if (req && test_us > 0 && !done && now_s() >= next) {
            tp_status st = tp_test(req, &done);
            if (st)
                return st;
            next = now_s() + test_us * 1e-6;
        }
    return TP_OK;
}

typedef struct bufs {
    float *a, *b, *c, *x; /* input, blocking result, nonblocking result, 1 float */
    size_t n;
} bufs;

/* Medians per rank: [0] blocking all_reduce, [1] busy loop, [2] the
 * overlapped step; the busy loop lasts the slowest rank's T_comm. */
static tp_status measure(tp_comm *w, const opts *o, const bufs *B, double *res, double *t)
{
    tp_device *d = tp_comm_device(w);
    int reps = o->reps;
    for (int i = 0; i < 2; i++) /* warm-up: connections, caches */
        TP_TRY(tp_all_reduce(w, B->a, B->b, B->n, TP_F32, TP_SUM));
    for (int i = 0; i < reps; i++) {
        TP_TRY(tp_barrier(w));
        double t0 = now_s();
        TP_TRY(tp_all_reduce(w, B->a, B->b, B->n, TP_F32, TP_SUM));
        t[i] = now_s() - t0;
    }
    float tc = (float)median(t, reps);
    TP_TRY(tp_dev_upload(d, B->x, &tc, sizeof tc));
    TP_TRY(tp_all_reduce(w, B->x, B->x, 1, TP_F32, TP_MAX));
    TP_TRY(tp_dev_download(d, &tc, B->x, sizeof tc));
    res[0] = tc;
    for (int i = 0; i < reps; i++) {
        double t0 = now_s();
        TP_TRY(busy(tc, NULL, 0));
        t[i] = now_s() - t0;
    }
    res[1] = median(t, reps);
    tp_stats_reset(w);
    for (int i = 0; i < reps; i++) {
        tp_request *r = NULL;
        TP_TRY(tp_barrier(w));
        double t0 = now_s();
        TP_TRY(tp_iall_reduce(w, B->a, B->c, B->n, TP_F32, TP_SUM, &r));
        tp_status bs = busy(tc, r, o->test_us);
        TP_TRY(tp_wait(r));
        TP_TRY(bs);
        t[i] = now_s() - t0;
    }
    res[2] = median(t, reps);
    return TP_OK;
}

static void print_line(tp_comm *w, const opts *o, const double *res, bool equal)
{
    tp_stats s;
    tp_stats_get(w, &s);
    const tp_icounter *k = &s.icomm[TP_PHASE_OTHER][TP_OP_ALL_REDUCE];
    double fl = k->seconds / o->reps, ex = k->exposed_seconds / o->reps;
    printf("tp-nb-overlap: %d ranks, %.3g MiB f32 all_reduce, %d reps (medians, ms): comm %.2f, "
           "busy %.2f, sum %.2f, overlapped %.2f (%.0f%% of the sum); per request (means): issue "
           "%.3f, in flight %.2f, exposed %.2f, hidden %.0f%%; nonblocking result bitwise equal "
           "to blocking: %s\n",
           tp_comm_size(w), o->mib, o->reps, res[0] * 1e3, res[1] * 1e3, (res[0] + res[1]) * 1e3,
           res[2] * 1e3, 100 * res[2] / (res[0] + res[1]), k->issue_seconds / o->reps * 1e3,
           fl * 1e3, ex * 1e3, fl > 0 ? 100 * (fl - ex) / fl : 0, equal ? "yes" : "NO");
}

static tp_status report(tp_comm *w, const opts *o, const bufs *B, const double *res)
{
    size_t bytes = B->n * sizeof(float);
    float *hb = malloc(bytes ? bytes : 1), *hc = malloc(bytes ? bytes : 1);
    tp_status st = hb && hc ? TP_OK : tp_set_error(TP_ERR_NO_MEMORY, "tp-nb-overlap: no memory");
    if (!st)
        st = tp_dev_download(tp_comm_device(w), hb, B->b, bytes);
    if (!st)
        st = tp_dev_download(tp_comm_device(w), hc, B->c, bytes);
    bool equal = !st && memcmp(hb, hc, bytes) == 0;
    free(hb);
    free(hc);
    if (st)
        return st;
    if (tp_comm_rank(w) == 0)
        print_line(w, o, res, equal);
    return equal ? TP_OK
                 : tp_set_error(TP_ERR_INTERNAL, "tp-nb-overlap: nonblocking result differs");
}

static tp_status rank_main(tp_comm *w, void *arg)
{
    const opts *o = arg;
    tp_device *d = tp_comm_device(w);
    bufs B = {.n = (size_t)(o->mib * 262144)};
    size_t bytes = B.n * sizeof(float);
    float *h = malloc(bytes ? bytes : 1);
    double *t = calloc((size_t)o->reps, sizeof *t), res[3] = {0};
    tp_status st = TP_OK;
    if (!h || !t) {
        st = tp_set_error(TP_ERR_NO_MEMORY, "tp-nb-overlap: no memory");
        goto out;
    }
    TP_TRY_GOTO(tp_dev_alloc(d, bytes, (void **)&B.a), st, out);
    TP_TRY_GOTO(tp_dev_alloc(d, bytes, (void **)&B.b), st, out);
    TP_TRY_GOTO(tp_dev_alloc(d, bytes, (void **)&B.c), st, out);
    TP_TRY_GOTO(tp_dev_alloc(d, sizeof(float), (void **)&B.x), st, out);
    for (size_t i = 0; i < B.n; i++) /* small integers: every sum is exact */
        h[i] = (float)((int)((i * 7 + (size_t)tp_comm_rank(w) * 13) % 9) - 4);
    TP_TRY_GOTO(tp_dev_upload(d, B.a, h, bytes), st, out);
    TP_TRY_GOTO(measure(w, o, &B, res, t), st, out);
    st = report(w, o, &B, res);
out:
    tp_dev_free(d, B.a);
    tp_dev_free(d, B.b);
    tp_dev_free(d, B.c);
    tp_dev_free(d, B.x);
    free(h);
    free(t);
    return st;
}

int main(int argc, char **argv)
{
    opts o = {.mib = 4, .reps = 9, .test_us = 0};
    tp_config cfg = {.argc = &argc, .argv = &argv};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--mib") && i + 1 < argc)
            o.mib = atof(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            o.reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--test-us") && i + 1 < argc)
            o.test_us = atof(argv[++i]);
        else if (!strcmp(argv[i], "--tp") && i + 1 < argc)
            i++;
        else {
            fprintf(stderr, "usage: tp-nb-overlap [--mib M] [--reps N] [--test-us US] [--tp N]\n");
            return 2;
        }
    }
    if (!(o.mib > 0) || o.reps < 1 || o.test_us < 0 ||
        tp_config_parse_tp(&cfg, argc, argv) != TP_OK) {
        fprintf(stderr, "tp-nb-overlap: bad arguments (--mib > 0, --reps >= 1, --test-us >= 0)\n");
        return 2;
    }
    tp_ctx *ctx = NULL;
    tp_status st = tp_init(&cfg, &ctx);
    if (!st)
        st = tp_run(ctx, rank_main, &o);
    if (st)
        fprintf(stderr, "tp-nb-overlap: %s: %s\n", tp_status_string(st), tp_last_error());
    tp_finalize(ctx);
    return st ? 1 : 0;
}
