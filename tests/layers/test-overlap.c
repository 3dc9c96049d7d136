/* SPDX-License-Identifier: MIT */
/*
 * test-overlap.c — overlapped layers (tp_linear_config.overlap) against the
 * same layers without overlap: the row-parallel forward pipelined in token
 * chunks, the column-parallel backward's async input-gradient all-reduce,
 * and the MLP's own pipelines (fc1 -> GeLU -> fc2 -> all-reduce and its
 * backward, chunk by chunk). Outputs, input gradients and weight
 * gradients must be bitwise equal (docs/determinism.md says where: every
 * T on loopback, T <= 2 on every backend); the counters must show that the
 * nonblocking path ran (chunk count of nonblocking all-reduces, no blocking
 * one) and that hidden + exposed = in flight; and that a request peers
 * complete while a rank sleeps is not in flight for the sleep. The MLP
 * runs once more with y and dx in tp_comm_mem_alloc memory (on shm the
 * all-reduces then run straight on the ranks' windows), bitwise equal too.
 *
 * Runs on groups of T = 1..W (tests/common/tp-test.h).
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <tp/tp-layers.h>

#include "tp-test.h"

#include "layer-util.h"

/* a vs b (n floats): bitwise, or where not promised, within 1e-5 (1 + |a|). */
static void compare(tpt_rank *k, int line, const char *what, const float *a, const float *b,
                    int64_t n, int64_t t, int chunks)
{
    bool bitwise = tpt_bitwise_expected(k);
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; i < n; i++) {
        bool same = bitwise ? memcmp(&a[i], &b[i], sizeof(float)) == 0
                            : fabsf(a[i] - b[i]) <= 1e-5f * (1.0f + fabsf(a[i]));
        if (!same && bad++ == 0)
            first = i;
    }
    if (bad)
        tpt_fail_at(k, line,
                    "%s (T=%d, tokens %lld, overlap %d): %lld of %lld elements differ %s; "
                    "first [%lld]: %.9g (overlap 0) vs %.9g",
                    what, k->T, (long long)t, chunks, (long long)bad, (long long)n,
                    bitwise ? "in their bits" : "beyond 1e-5", (long long)first, a[first],
                    b[first]);
}

/* Nonblocking all-reduces in `phase` must be `want`, blocking ones 0, and
 * the request times consistent: 0 <= exposed <= min(wait, in flight). */
static void check_icounts(tpt_rank *k, int line, const char *what, tp_phase phase, uint64_t want)
{
    tp_stats s;
    tp_stats_get(k->g, &s);
    const tp_icounter *ic = &s.icomm[phase][TP_OP_ALL_REDUCE];
    if (ic->calls != want || s.comm[phase][TP_OP_ALL_REDUCE].calls != 0) {
        tpt_fail_at(
            k, line, "%s: %s: %llu nonblocking and %llu blocking all-reduces, expected %llu and 0",
            what, tp_phase_name(phase), (unsigned long long)ic->calls,
            (unsigned long long)s.comm[phase][TP_OP_ALL_REDUCE].calls, (unsigned long long)want);
        return;
    }
    if (want == 0)
        return;
    double hidden = ic->seconds - ic->exposed_seconds;
    EXPECT(k,
           ic->exposed_seconds >= 0 && ic->exposed_seconds <= ic->wait_seconds + 1e-9 &&
               hidden >= -1e-9 && ic->seconds >= 0,
           "%s: inconsistent request times: in flight %.9f s, wait %.9f s, exposed %.9f s", what,
           ic->seconds, ic->wait_seconds, ic->exposed_seconds);
    EXPECT(k, fabs(hidden + ic->exposed_seconds - ic->seconds) <= 1e-9,
           "%s: hidden %.9f + exposed %.9f != in flight %.9f s", what, hidden, ic->exposed_seconds,
           ic->seconds);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The rank's thread spends the counted GEMMs, kernels, request issues and
 * waits one after another, so together they fit in the call's wall time
 * (plus 1 us of timer resolution per counted interval): an exposed (or
 * wait) time counted twice, or counted while the rank computed, breaks
 * this. */
static void check_timeline(tpt_rank *k, int line, tp_phase ph, double wall)
{
    tp_stats s;
    tp_stats_get(k->g, &s);
    const tp_icounter *ic = &s.icomm[ph][TP_OP_ALL_REDUCE];
    double busy = s.gemm[ph].seconds + s.kernel[ph].seconds + ic->issue_seconds + ic->wait_seconds;
    double slack = 1e-6 * (double)(s.gemm[ph].calls + s.kernel[ph].calls + 2 * ic->calls + 1);
    if (busy > wall + slack)
        tpt_fail_at(k, line,
                    "gemm %.9f + kernels %.9f + issue %.9f + wait %.9f = %.9f s > the call's "
                    "wall time %.9f s",
                    s.gemm[ph].seconds, s.kernel[ph].seconds, ic->issue_seconds, ic->wait_seconds,
                    busy, wall);
}

/* ------------------------------------------------------------ row forward */

static const int TOKENS[] = {1, 2, 5, 31, 64, 97, 145, 301};
static const int CHUNKS[] = {1, 2, 3, 7};

static void run_row(tpt_rank *k, int64_t t, int64_t in, int64_t out, bool parallel, bool bias)
{
    int64_t lo, hi;
    shard(in, k, &lo, &hi);
    int64_t xw = parallel ? hi - lo : in;
    float *hx = tpt_falloc(t * in);
    tpt_fill(hx, t * in, 41 + (uint64_t)t);
    float *hxl = parallel ? slice_cols(hx, t, in, lo, hi) : NULL;
    tp_tensor x = tpt_upload2(k, t, xw, parallel ? hxl : hx);
    float *ref = NULL;
    for (size_t c = 0; c <= sizeof CHUNKS / sizeof CHUNKS[0]; c++) {
        int chunks = c == 0 ? 0 : CHUNKS[c - 1];
        tp_linear_config cfg = {.in_features = in,
                                .out_features = out,
                                .bias = bias,
                                .input_is_parallel = parallel,
                                .seed = 5,
                                .tensor_id = 11,
                                .name = "fc2",
                                .overlap = chunks};
        tp_linear *l = NULL;
        EXPECT_OK(k, tp_row_linear_create(k->g, &cfg, &l));
        if (!l)
            break;
        tp_tensor y = {0};
        tp_stats_reset(k->g);
        double t0 = now_s();
        EXPECT_OK(k, tp_linear_forward(l, &x, &y));
        double wall = now_s() - t0;
        float *hy = tpt_download(k, &y);
        if (chunks >= 2) {
            check_icounts(k, __LINE__, "row forward", TP_PHASE_FORWARD,
                          tpt_overlap_chunks(t, chunks));
            check_timeline(k, __LINE__, TP_PHASE_FORWARD, wall);
        }
        if (!ref)
            ref = hy;
        else {
            compare(k, __LINE__, parallel ? "row y (input_is_parallel)" : "row y", ref, hy, t * out,
                    t, chunks);
            free(hy);
        }
        tp_tensor_release(&y);
        tp_linear_free(l);
    }
    free(ref);
    tp_tensor_release(&x);
    free(hx);
    free(hxl);
}

static void body_row(tpt_rank *k)
{
    for (size_t i = 0; i < sizeof TOKENS / sizeof TOKENS[0]; i++) {
        run_row(k, TOKENS[i], 24, 10, true, true);
        run_row(k, TOKENS[i], 67, 33, false, false);
    }
    run_row(k, 389, 256, 72, true, true); /* the BLAS's full blocks, not only its edges */
}

START_TEST(test_row)
{
    tpt_run_all(body_row);
}
END_TEST

/* ------------------------------------------------------------ MLP fwd + bwd */

typedef struct mlp_out {
    float *y, *dx, *dw1, *db1, *dw2, *db2;
} mlp_out;

static void mlp_out_free(mlp_out *o)
{
    free(o->y);
    free(o->dx);
    free(o->dw1);
    free(o->db1);
    free(o->dw2);
    free(o->db2);
}

/* One forward and backward; o gets y, dx and this rank's gradient shards.
 * sym: y and dx (what the MLP all-reduces) are views of tp_comm_mem_alloc
 * memory of the group (shm then reduces them on the windows). */
static void run_mlp_once(tpt_rank *k, int64_t t, int64_t H, int64_t F, int chunks, bool sym,
                         const tp_tensor *x, const tp_tensor *dy, mlp_out *o)
{
    tp_mlp_config cfg = {
        .hidden = H, .ffn = F, .bias = true, .seed = 9, .tensor_id = 3, .overlap = chunks};
    tp_mlp *m = NULL;
    EXPECT_OK(k, tp_mlp_create(k->g, &cfg, &m));
    if (!m)
        return;
    tp_tensor y = {0}, dx = {0};
    void *mem[2] = {NULL, NULL};
    for (int i = 0; i < 2 && sym; i++) {
        EXPECT_OK(k, tp_comm_mem_alloc(k->g, (size_t)(t * H) * sizeof(float), &mem[i]));
        if (mem[i])
            *(i ? &dx : &y) = tp_tensor_view(k->dev, TP_F32, mem[i], 2, (int64_t[]){t, H});
    }
    tp_stats_reset(k->g);
    EXPECT_OK(k, tp_mlp_forward(m, x, &y));
    EXPECT_OK(k, tp_mlp_backward(m, dy, &dx));
    if (chunks >= 2) {
        check_icounts(k, __LINE__, "mlp forward", TP_PHASE_FORWARD, tpt_overlap_chunks(t, chunks));
        /* the MLP pipelines fc1's dx GEMM and its all-reduce by chunks (mlp.c) */
        check_icounts(k, __LINE__, "mlp backward", TP_PHASE_BACKWARD,
                      tpt_overlap_chunks(t, chunks));
    }
    o->y = tpt_download(k, &y);
    o->dx = tpt_download(k, &dx);
    tp_linear_params p1, p2;
    tp_linear_get_params(tp_mlp_fc1(m), &p1);
    tp_linear_get_params(tp_mlp_fc2(m), &p2);
    o->dw1 = tpt_download(k, p1.weight_grad);
    o->db1 = tpt_download(k, p1.bias_grad);
    o->dw2 = tpt_download(k, p2.weight_grad);
    o->db2 = tpt_download(k, p2.bias_grad);
    tp_tensor_release(&y);
    tp_tensor_release(&dx);
    for (int i = 0; i < 2; i++)
        tp_comm_mem_free(k->g, mem[i]);
    tp_mlp_free(m);
}

static void run_mlp(tpt_rank *k, int64_t t, int64_t H, int64_t F)
{
    int64_t lo, hi;
    shard(F, k, &lo, &hi);
    int64_t fl = hi - lo;
    float *hx = tpt_falloc(t * H), *hdy = tpt_falloc(t * H);
    tpt_fill(hx, t * H, 71 + (uint64_t)t);
    tpt_fill(hdy, t * H, 73 + (uint64_t)t);
    tp_tensor x = tpt_upload2(k, t, H, hx), dy = tpt_upload2(k, t, H, hdy);
    mlp_out ref = {0};
    run_mlp_once(k, t, H, F, 0, false, &x, &dy, &ref);
    /* every chunk count, then without overlap and with 3 chunks on symmetric memory */
    int nc = (int)(sizeof CHUNKS / sizeof CHUNKS[0]);
    for (int c = 0; c < nc + 2 && ref.y; c++) {
        mlp_out o = {0};
        int chunks = c < nc ? CHUNKS[c] : c == nc ? 0 : 3;
        run_mlp_once(k, t, H, F, chunks, c >= nc, &x, &dy, &o);
        if (o.y) {
            compare(k, __LINE__, "mlp y", ref.y, o.y, t * H, t, chunks);
            compare(k, __LINE__, "mlp dx", ref.dx, o.dx, t * H, t, chunks);
            compare(k, __LINE__, "mlp fc1 dW", ref.dw1, o.dw1, H * fl, t, chunks);
            compare(k, __LINE__, "mlp fc1 db", ref.db1, o.db1, fl, t, chunks);
            compare(k, __LINE__, "mlp fc2 dW", ref.dw2, o.dw2, fl * H, t, chunks);
            compare(k, __LINE__, "mlp fc2 db", ref.db2, o.db2, H, t, chunks);
        }
        mlp_out_free(&o);
    }
    mlp_out_free(&ref);
    tp_tensor_release(&x);
    tp_tensor_release(&dy);
    free(hx);
    free(hdy);
}

static void body_mlp(tpt_rank *k)
{
    for (size_t i = 0; i < sizeof TOKENS / sizeof TOKENS[0]; i++)
        run_mlp(k, TOKENS[i], 12, 20);
    run_mlp(k, 203, 96, 200);
}

START_TEST(test_mlp)
{
    tpt_run_all(body_mlp);
}
END_TEST

/* ------------------------------------------------------------ column backward */

/* The column layer alone, gather_output both ways: dx and dW bitwise. */
static void run_column(tpt_rank *k, int64_t t, int64_t in, int64_t out, bool gather)
{
    int64_t lo, hi;
    shard(out, k, &lo, &hi);
    int64_t yw = gather ? out : hi - lo;
    float *hx = tpt_falloc(t * in), *hdy = tpt_falloc(t * yw);
    tpt_fill(hx, t * in, 81);
    tpt_fill(hdy, t * yw, 83 + (uint64_t)k->r);
    tp_tensor x = tpt_upload2(k, t, in, hx), dy = tpt_upload2(k, t, yw, hdy);
    float *rdx = NULL, *rdw = NULL;
    for (int chunks = 0; chunks <= 3; chunks += 3) {
        tp_linear_config cfg = {.in_features = in,
                                .out_features = out,
                                .bias = true,
                                .gather_output = gather,
                                .seed = 2,
                                .tensor_id = 1,
                                .overlap = chunks};
        tp_linear *l = NULL;
        EXPECT_OK(k, tp_column_linear_create(k->g, &cfg, &l));
        if (!l)
            break;
        tp_tensor y = {0}, dx = {0};
        EXPECT_OK(k, tp_linear_forward(l, &x, &y));
        tp_stats_reset(k->g);
        EXPECT_OK(k, tp_linear_backward(l, &dy, &dx));
        if (chunks)
            check_icounts(k, __LINE__, "column backward", TP_PHASE_BACKWARD, 1);
        tp_linear_params p;
        tp_linear_get_params(l, &p);
        float *gdx = tpt_download(k, &dx), *gdw = tpt_download(k, p.weight_grad);
        if (!rdx) {
            rdx = gdx;
            rdw = gdw;
        } else {
            compare(k, __LINE__, "column dx", rdx, gdx, t * in, t, chunks);
            compare(k, __LINE__, "column dW", rdw, gdw, in * (hi - lo), t, chunks);
            free(gdx);
            free(gdw);
        }
        tp_tensor_release(&y);
        tp_tensor_release(&dx);
        tp_linear_free(l);
    }
    free(rdx);
    free(rdw);
    tp_tensor_release(&x);
    tp_tensor_release(&dy);
    free(hx);
    free(hdy);
}

static void body_column(tpt_rank *k)
{
    run_column(k, 7, 19, 13, false);
    run_column(k, 5, 19, 13, true);
}

START_TEST(test_column)
{
    tpt_run_all(body_column);
}
END_TEST

/* ------------------------------------------------------------ errors */

static void body_errors(tpt_rank *k)
{
    tp_linear *l = NULL;
    tp_linear_config cfg = {.in_features = 8, .out_features = 8, .name = "fc9", .overlap = -1};
    EXPECT_ERR(k, tp_row_linear_create(k->g, &cfg, &l), TP_ERR_INVALID_ARG, "overlap -1", "'fc9'",
               "2..64");
    cfg.overlap = TP_OVERLAP_MAX + 1;
    EXPECT_ERR(k, tp_column_linear_create(k->g, &cfg, &l), TP_ERR_INVALID_ARG, "overlap 65");
    EXPECT(k, l == NULL, "a refused create left a layer");
    tp_mlp *m = NULL;
    tp_mlp_config mc = {.hidden = 8, .ffn = 8, .overlap = 1000};
    EXPECT_ERR(k, tp_mlp_create(k->g, &mc, &m), TP_ERR_INVALID_ARG, "overlap 1000");
    EXPECT(k, m == NULL, "a refused create left an MLP");
}

START_TEST(test_errors)
{
    tpt_run_all(body_errors);
}
END_TEST

/* A request its peers complete while this rank does other work counts in
 * flight only until then: rank 0 issues an all_reduce, sleeps 300 ms and
 * waits; the others wait at once. On loopback and shm a waiting peer does
 * the work (the plugin reports when: req_done_at), on the core's progress
 * thread (tcp) the thread does it; either way rank 0's in-flight time is
 * far below its sleep and none of its wait is exposed. (Open MPI moves
 * bytes only inside calls, so mpi is exempt: there the sleep is in flight.) */
static void body_late_waiter(tpt_rank *k)
{
    const char *be = getenv("TP_BACKEND");
    if (k->T < 2 || (be && strcmp(be, "mpi") == 0))
        return;
    enum {
        N = 4099
    };
    float *h = tpt_falloc(N);
    tpt_fill(h, N, 31 + (uint64_t)k->r);
    tp_tensor x = tpt_upload2(k, 1, N, h);
    tp_stats_reset(k->g);
    tp_phase was = tp_phase_set(k->g, TP_PHASE_FORWARD);
    tp_request *req = NULL;
    EXPECT_OK(k, tp_iall_reduce(k->g, x.data, x.data, N, TP_F32, TP_SUM, &req));
    if (k->r == 0)
        nanosleep(&(struct timespec){0, 300000000}, NULL);
    if (req)
        EXPECT_OK(k, tp_wait(req));
    tp_phase_set(k->g, was);
    tp_stats s;
    tp_stats_get(k->g, &s);
    const tp_icounter *ic = &s.icomm[TP_PHASE_FORWARD][TP_OP_ALL_REDUCE];
    EXPECT(k, ic->calls == 1, "late waiter: %llu nonblocking all-reduces counted, expected 1",
           (unsigned long long)ic->calls);
    if (k->r == 0)
        EXPECT(k, ic->seconds < 0.15 && ic->exposed_seconds < 0.05,
               "late waiter (T=%d, backend %s): rank 0 slept 0.3 s after issuing while its "
               "peers completed the all_reduce, yet it counts %.3f s in flight and %.3f s "
               "exposed",
               k->T, be ? be : "loopback", ic->seconds, ic->exposed_seconds);
    tp_tensor_release(&x);
    free(h);
}

START_TEST(test_late_waiter)
{
    tpt_run_all(body_late_waiter);
}
END_TEST

/* A request issued before tp_stats_reset and waited after it: its call
 * went with the reset, so none of its times may appear after it (the old
 * counters said 0 calls and 20 ms in flight); one issued after the reset
 * counts as usual. */
static void body_reset_in_flight(tpt_rank *k)
{
    enum {
        N = 4099
    };
    float *h = tpt_falloc(N);
    tpt_fill(h, N, 7 + (uint64_t)k->r);
    tp_tensor x = tpt_upload2(k, 1, N, h);
    tp_phase was = tp_phase_set(k->g, TP_PHASE_FORWARD);
    for (int after = 0; after < 2; after++) {
        tp_request *req = NULL;
        if (after)
            tp_stats_reset(k->g);
        EXPECT_OK(k, tp_iall_reduce(k->g, x.data, x.data, N, TP_F32, TP_SUM, &req));
        if (!after)
            tp_stats_reset(k->g);
        nanosleep(&(struct timespec){0, 20000000}, NULL);
        if (req)
            EXPECT_OK(k, tp_wait(req));
        tp_stats s;
        tp_stats_get(k->g, &s);
        const tp_icounter *ic = &s.icomm[TP_PHASE_FORWARD][TP_OP_ALL_REDUCE];
        bool none = ic->seconds == 0 && ic->wait_seconds == 0 && ic->exposed_seconds == 0;
        EXPECT(k, after ? ic->calls == 1 : ic->calls == 0 && none,
               "reset %s the issue: %llu calls, %.4f s in flight, %.4f s waiting, %.4f s "
               "exposed counted; expected %s",
               after ? "before" : "after", (unsigned long long)ic->calls, ic->seconds,
               ic->wait_seconds, ic->exposed_seconds, after ? "1 call" : "nothing");
    }
    tp_phase_set(k->g, was);
    tp_tensor_release(&x);
    free(h);
}

START_TEST(test_reset_in_flight)
{
    tpt_run_all(body_reset_in_flight);
}
END_TEST

int main(int argc, char **argv)
{
    const tpt_test tests[] = {
        {"row", test_row},
        {"mlp", test_mlp},
        {"column", test_column},
        {"errors", test_errors},
        {"late_waiter", test_late_waiter},
        {"reset_in_flight", test_reset_in_flight},
    };
    return tpt_main(&argc, &argv, "overlap", tests, sizeof tests / sizeof tests[0], NULL);
}
