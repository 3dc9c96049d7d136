/* SPDX-License-Identifier: MIT */
/*
 * test-staging.c — the collectives through the public API on a device
 * whose memory the comm backend does not take, so the core stages them
 * through host memory.
 *
 * Run with TP_DEVICE=fakegpu (tests/staging/fakegpu.c: its "device
 * pointers" fault if anyone but its own ops dereferences them) over any
 * host-memory backend (loopback, mpi, tcp): every result is compared,
 * element by element, with a serial reference. Values are small integers,
 * so every f32 sum is exact and the comparisons are exact. Each buffer has
 * guard elements on both sides that must come back untouched.
 *
 * Run with TP_DEVICE=fakehost (host memory, upload/download fail) the same
 * checks prove that a host-memory device is not staged: the test reads and
 * writes its buffers directly, and any staging copy would fail.
 *
 * As in the layer tests, every rank splits the world into groups of T for
 * T = 1..W and checks each group (--basic: the world only, f32 only, for
 * comm fixtures without split). Failures are recorded per rank and
 * asserted on the main thread after tp_run; Check runs in CK_NOFORK mode.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tp/tp.h>

#include "tp-test.h"

#define GUARD    3        /* guard elements on each side of a buffer */
#define SENTINEL -7777.0f /* never a value of val() */

/* ------------------------------------------------------------ buffers */

/* Rank r's element i of test `salt`: an integer in -30..30. */
static float val(int r, size_t i, int salt)
{
    return (float)((int)(((size_t)r * 37 + i * 11 + (size_t)salt * 7) % 61) - 30);
}

/* A device buffer of n elements of es bytes between GUARD elements on each
 * side; host mirrors the whole thing (n + 2 * GUARD elements). */
typedef struct dbuf {
    void *base, *p;
    size_t n, es;
    unsigned char *host;
} dbuf;

/* Host memory devices are read and written directly (no copies at all),
 * others through upload/download. */
static tp_status put(tpt_rank *k, void *dst, const void *src, size_t bytes)
{
    if (tp_device_mem_kind(k->dev) == TP_MEM_HOST) {
        if (bytes)
            memcpy(dst, src, bytes);
        return TP_OK;
    }
    return tp_dev_upload(k->dev, dst, src, bytes);
}

static tp_status get(tpt_rank *k, void *dst, const void *src, size_t bytes)
{
    if (tp_device_mem_kind(k->dev) == TP_MEM_HOST) {
        if (bytes)
            memcpy(dst, src, bytes);
        return TP_OK;
    }
    return tp_dev_download(k->dev, dst, src, bytes);
}

static size_t total_bytes(const dbuf *b)
{
    return (b->n + 2 * GUARD) * b->es;
}

/* Allocate; fill every element (guards too) with SENTINEL (f32) or 0xA5. */
static bool dbuf_new(tpt_rank *k, dbuf *b, size_t n, size_t es)
{
    memset(b, 0, sizeof *b);
    b->n = n;
    b->es = es;
    b->host = malloc(total_bytes(b));
    tp_status st = tp_dev_alloc(k->dev, total_bytes(b), &b->base);
    EXPECT(k, b->host && st == TP_OK, "alloc of %zu bytes: %s", total_bytes(b), tp_last_error());
    if (!b->host || st)
        return false;
    b->p = (char *)b->base + GUARD * es;
    if (es == 4)
        for (size_t i = 0; i < n + 2 * GUARD; i++)
            memcpy(b->host + i * 4, &(float){SENTINEL}, 4);
    else
        memset(b->host, 0xA5, total_bytes(b));
    EXPECT_OK(k, put(k, b->base, b->host, total_bytes(b)));
    return true;
}

static void dbuf_free(tpt_rank *k, dbuf *b)
{
    tp_dev_free(k->dev, b->base);
    free(b->host);
    memset(b, 0, sizeof *b);
}

/* Host view of element i of the payload (after dbuf_pull). */
static float *hf(dbuf *b, size_t i)
{
    return (float *)(void *)(b->host + (GUARD + i) * b->es);
}

static void dbuf_push(tpt_rank *k, dbuf *b)
{
    EXPECT_OK(k, put(k, b->base, b->host, total_bytes(b)));
}

static void dbuf_pull(tpt_rank *k, dbuf *b)
{
    EXPECT_OK(k, get(k, b->host, b->base, total_bytes(b)));
}

/* After dbuf_pull: the guards of an f32 buffer are still SENTINEL. */
static void check_guards(tpt_rank *k, dbuf *b, const char *what, int line)
{
    for (size_t i = 0; i < GUARD; i++) {
        float lo, hi;
        memcpy(&lo, b->host + i * 4, 4);
        memcpy(&hi, b->host + (GUARD + b->n + i) * 4, 4);
        if (lo != SENTINEL || hi != SENTINEL) {
            tpt_fail_at(k, line, "%s: guard element %zu %s the buffer overwritten (%g)", what, i,
                        lo != SENTINEL ? "before" : "after", lo != SENTINEL ? lo : hi);
            return;
        }
    }
}

static size_t offset_of(const size_t *counts, int r)
{
    size_t off = 0;
    for (int i = 0; i < r; i++)
        off += counts[i];
    return off;
}

static const char *op_name(tp_redop op)
{
    return op == TP_SUM ? "sum" : op == TP_MAX ? "max" : "min";
}

static float reduce_ref(int T, size_t i, int salt, tp_redop op)
{
    float acc = val(0, i, salt);
    for (int r = 1; r < T; r++) {
        float v = val(r, i, salt);
        acc = op == TP_SUM ? acc + v : op == TP_MAX ? (v > acc ? v : acc) : (v < acc ? v : acc);
    }
    return acc;
}

/* Uneven block sizes, some of them 0 (except at T = 1). */
static void uneven(size_t *counts, int T, int salt)
{
    for (int i = 0; i < T; i++)
        counts[i] = (size_t)((i * 5 + T + salt) % 7);
    if (T == 1)
        counts[0] = 13;
}

/* ------------------------------------------------------------ bodies */

static void body_all_reduce(tpt_rank *k)
{
    static const size_t sizes[] = {1, 13, 17, 1000};
    static const tp_redop ops[] = {TP_SUM, TP_MAX, TP_MIN};
    int salt = 0;
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        for (size_t o = 0; o < 3; o++)
            for (int inplace = 0; inplace < 2; inplace++, salt++) {
                size_t n = sizes[s];
                dbuf send, recv;
                if (!dbuf_new(k, &send, n, 4))
                    return;
                if (!inplace && !dbuf_new(k, &recv, n, 4)) {
                    dbuf_free(k, &send);
                    return;
                }
                for (size_t i = 0; i < n; i++)
                    *hf(&send, i) = val(k->r, i, salt);
                dbuf_push(k, &send);
                dbuf *out = inplace ? &send : &recv;
                EXPECT_OK(k, tp_all_reduce(k->g, send.p, out->p, n, TP_F32, ops[o]));
                dbuf_pull(k, out);
                size_t bad = 0, first = 0;
                for (size_t i = 0; i < n; i++)
                    if (*hf(out, i) != reduce_ref(k->T, i, salt, ops[o]) && !bad++)
                        first = i;
                EXPECT(k, !bad,
                       "all_reduce %s n=%zu %s: %zu wrong elements, first [%zu] = %g, "
                       "expected %g",
                       op_name(ops[o]), n, inplace ? "in place" : "out of place", bad, first,
                       *hf(out, first), reduce_ref(k->T, first, salt, ops[o]));
                check_guards(k, out, "all_reduce recv", __LINE__);
                if (!inplace) { /* the send buffer is not written */
                    dbuf_pull(k, &send);
                    for (size_t i = 0; i < n; i++)
                        if (*hf(&send, i) != val(k->r, i, salt)) {
                            tpt_fail_at(k, __LINE__, "all_reduce changed send[%zu]", i);
                            break;
                        }
                    dbuf_free(k, &recv);
                }
                dbuf_free(k, &send);
            }
    /* No elements: NULL buffers are fine. */
    EXPECT_OK(k, tp_all_reduce(k->g, NULL, NULL, 0, TP_F32, TP_SUM));
    if (tpt_world_only)
        return;
    /* i32: another element type through the same staging. */
    dbuf b;
    size_t n = 17;
    if (!dbuf_new(k, &b, n, 4))
        return;
    for (size_t i = 0; i < n; i++) {
        int32_t v = (int32_t)val(k->r, i, 99) * 1000003;
        memcpy(hf(&b, i), &v, 4);
    }
    dbuf_push(k, &b);
    EXPECT_OK(k, tp_all_reduce(k->g, b.p, b.p, n, TP_I32, TP_SUM));
    dbuf_pull(k, &b);
    for (size_t i = 0; i < n; i++) {
        int64_t want = 0;
        int32_t got;
        for (int r = 0; r < k->T; r++)
            want += (int64_t)val(r, i, 99) * 1000003;
        memcpy(&got, hf(&b, i), 4);
        if (got != want) {
            tpt_fail_at(k, __LINE__, "i32 all_reduce [%zu] = %d, expected %lld", i, got,
                        (long long)want);
            break;
        }
    }
    check_guards(k, &b, "i32 all_reduce", __LINE__);
    dbuf_free(k, &b);
}

/* One all-gather: even (tp_all_gather) or uneven counts, in place or not. */
static void all_gather_case(tpt_rank *k, const size_t *counts, bool even, bool inplace, int salt)
{
    size_t total = offset_of(counts, k->T), mine = counts[k->r], off = offset_of(counts, k->r);
    dbuf send, recv;
    if (!dbuf_new(k, &recv, total, 4))
        return;
    if (!inplace && !dbuf_new(k, &send, mine, 4)) {
        dbuf_free(k, &recv);
        return;
    }
    dbuf *src = inplace ? &recv : &send;
    size_t at = inplace ? off : 0;
    for (size_t i = 0; i < mine; i++)
        *hf(src, at + i) = val(k->r, i, salt);
    dbuf_push(k, src);
    const void *sp = (const char *)src->p + at * 4;
    EXPECT_OK(k, even ? tp_all_gather(k->g, sp, recv.p, counts[0], TP_F32)
                      : tp_all_gatherv(k->g, sp, recv.p, counts, TP_F32));
    dbuf_pull(k, &recv);
    bool ok = true;
    for (int r = 0; r < k->T && ok; r++)
        for (size_t i = 0, o = offset_of(counts, r); i < counts[r] && ok; i++)
            if (*hf(&recv, o + i) != val(r, i, salt)) {
                tpt_fail_at(k, __LINE__, "all_gather%s %s: block %d [%zu] = %g, expected %g",
                            even ? "" : "v", inplace ? "in place" : "out of place", r, i,
                            *hf(&recv, o + i), val(r, i, salt));
                ok = false;
            }
    check_guards(k, &recv, "all_gather recv", __LINE__);
    if (!inplace)
        dbuf_free(k, &send);
    dbuf_free(k, &recv);
}

static void body_all_gather(tpt_rank *k)
{
    size_t counts[64];
    for (int inplace = 0; inplace < 2; inplace++) {
        for (int salt = 0; salt < 3; salt++) {
            uneven(counts, k->T, salt);
            all_gather_case(k, counts, false, inplace, salt + 10 * inplace);
        }
        for (int i = 0; i < k->T; i++)
            counts[i] = 13;
        all_gather_case(k, counts, true, inplace, 7 + inplace);
    }
    if (tpt_world_only)
        return;
    /* bf16: 2-byte elements, compared as bit patterns. */
    size_t n = 5, total = n * (size_t)k->T;
    dbuf s, r;
    if (!dbuf_new(k, &s, n, 2))
        return;
    if (!dbuf_new(k, &r, total, 2)) {
        dbuf_free(k, &s);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t v = (uint16_t)(0x3f00 + k->r * 16 + (int)i);
        memcpy(s.host + (GUARD + i) * 2, &v, 2);
    }
    dbuf_push(k, &s);
    EXPECT_OK(k, tp_all_gather(k->g, s.p, r.p, n, TP_BF16));
    dbuf_pull(k, &r);
    for (size_t j = 0; j < total + 2 * GUARD; j++) {
        uint16_t got, want = 0xA5A5;
        memcpy(&got, r.host + j * 2, 2);
        if (j >= GUARD && j < GUARD + total)
            want = (uint16_t)(0x3f00 + (int)((j - GUARD) / n) * 16 + (int)((j - GUARD) % n));
        if (got != want) {
            tpt_fail_at(k, __LINE__, "bf16 all_gather: element %zd is 0x%04x, expected 0x%04x",
                        (ssize_t)j - GUARD, got, want);
            break;
        }
    }
    dbuf_free(k, &s);
    dbuf_free(k, &r);
}

static void reduce_scatter_case(tpt_rank *k, const size_t *counts, bool even, tp_redop op, int salt)
{
    size_t total = offset_of(counts, k->T), mine = counts[k->r], off = offset_of(counts, k->r);
    dbuf send, recv;
    if (!dbuf_new(k, &send, total, 4))
        return;
    if (!dbuf_new(k, &recv, mine, 4)) {
        dbuf_free(k, &send);
        return;
    }
    for (size_t i = 0; i < total; i++)
        *hf(&send, i) = val(k->r, i, salt);
    dbuf_push(k, &send);
    EXPECT_OK(k, even ? tp_reduce_scatter(k->g, send.p, recv.p, counts[0], TP_F32, op)
                      : tp_reduce_scatterv(k->g, send.p, recv.p, counts, TP_F32, op));
    dbuf_pull(k, &recv);
    for (size_t i = 0; i < mine; i++) {
        float want = reduce_ref(k->T, off + i, salt, op);
        if (*hf(&recv, i) != want) {
            tpt_fail_at(k, __LINE__, "reduce_scatter%s %s: [%zu] = %g, expected %g",
                        even ? "" : "v", op_name(op), i, *hf(&recv, i), want);
            break;
        }
    }
    check_guards(k, &recv, "reduce_scatter recv", __LINE__);
    dbuf_free(k, &send);
    dbuf_free(k, &recv);
}

static void body_reduce_scatter(tpt_rank *k)
{
    size_t counts[64];
    for (int salt = 0; salt < 3; salt++) {
        uneven(counts, k->T, salt);
        reduce_scatter_case(k, counts, false, salt == 1 ? TP_MAX : TP_SUM, salt);
    }
    for (int i = 0; i < k->T; i++)
        counts[i] = 13;
    reduce_scatter_case(k, counts, true, TP_SUM, 5);
    reduce_scatter_case(k, counts, true, TP_MIN, 6);
}

static void body_broadcast(tpt_rank *k)
{
    size_t n = 17;
    for (int root = 0; root < k->T; root++) {
        dbuf b;
        if (!dbuf_new(k, &b, n, 4))
            return;
        if (k->r == root) {
            for (size_t i = 0; i < n; i++)
                *hf(&b, i) = val(root, i, 3);
            dbuf_push(k, &b);
        }
        EXPECT_OK(k, tp_broadcast(k->g, b.p, n, TP_F32, root));
        dbuf_pull(k, &b);
        for (size_t i = 0; i < n; i++)
            if (*hf(&b, i) != val(root, i, 3)) {
                tpt_fail_at(k, __LINE__, "broadcast from %d: [%zu] = %g, expected %g", root, i,
                            *hf(&b, i), val(root, i, 3));
                break;
            }
        check_guards(k, &b, "broadcast", __LINE__);
        dbuf_free(k, &b);
    }
    EXPECT_OK(k, tp_broadcast(k->g, NULL, 0, TP_F32, 0));
}

static void body_barrier(tpt_rank *k)
{
    for (int i = 0; i < 3; i++)
        EXPECT_OK(k, tp_barrier(k->g));
}

/* Staging copies are communication: inside the collective's time, not
 * device kernels; the byte counters are the payload as without staging. */
static void body_stats(tpt_rank *k)
{
    dbuf b;
    if (!dbuf_new(k, &b, 13, 4))
        return;
    tp_stats_reset(k->g);
    EXPECT_OK(k, tp_all_reduce(k->g, b.p, b.p, 13, TP_F32, TP_SUM));
    EXPECT_OK(k, tp_barrier(k->g));
    tp_stats s;
    tp_stats_get(k->g, &s);
    uint64_t bytes = 0, kernels = 0, gemms = 0;
    for (int p = 0; p < TP_PHASE_COUNT; p++) {
        bytes += s.comm[p][TP_OP_ALL_REDUCE].bytes;
        kernels += s.kernel[p].calls;
        gemms += s.gemm[p].calls;
    }
    EXPECT(k,
           tp_stats_calls(&s, TP_PHASE_COUNT, TP_OP_ALL_REDUCE) == 1 &&
               tp_stats_calls(&s, TP_PHASE_COUNT, TP_OP_BARRIER) == 1,
           "expected 1 all_reduce and 1 barrier, counted %llu and %llu",
           (unsigned long long)tp_stats_calls(&s, TP_PHASE_COUNT, TP_OP_ALL_REDUCE),
           (unsigned long long)tp_stats_calls(&s, TP_PHASE_COUNT, TP_OP_BARRIER));
    EXPECT(k, bytes == 13 * 4, "all_reduce bytes %llu, expected 52", (unsigned long long)bytes);
    EXPECT(k, kernels == 0 && gemms == 0,
           "staging counted as device work: %llu kernel and %llu gemm calls, expected 0",
           (unsigned long long)kernels, (unsigned long long)gemms);
    /* The fake GPUs are asynchronous and time with events of exactly 1 ms
     * a pair: the counters must hold event time, not host wall time (a
     * 13-element collective takes microseconds). Two memsets count as
     * two kernels; a read resets nothing. */
    if (tp_device_mem_kind(k->dev) != TP_MEM_HOST) {
        EXPECT_OK(k, tp_dev_memset(k->dev, b.p, 0, 4));
        EXPECT_OK(k, tp_dev_memset(k->dev, b.p, 0, 4));
        tp_stats_get(k->g, &s);
        const tp_counter *ar = &s.comm[TP_PHASE_OTHER][TP_OP_ALL_REDUCE];
        const tp_counter *kn = &s.kernel[TP_PHASE_OTHER];
        EXPECT(k, ar->seconds == 1e-3 && kn->calls == 2 && fabs(kn->seconds - 2e-3) < 1e-15,
               "event timing: all_reduce %.9f s (expected 0.001), %llu kernels %.9f s "
               "(expected 2 and 0.002)",
               ar->seconds, (unsigned long long)kn->calls, kn->seconds);
        tp_stats_reset(k->g);
        tp_stats_get(k->g, &s);
        EXPECT(k, s.kernel[TP_PHASE_OTHER].seconds == 0 && s.kernel[TP_PHASE_OTHER].calls == 0,
               "after reset: %.9f s", s.kernel[TP_PHASE_OTHER].seconds);
        /* splitting the waits keeps the split calls' event time (it once
         * saved the counters before reading the device's pending times,
         * and its restore dropped them) */
        EXPECT_OK(k, tp_stats_set_wait(k->g, TP_WAIT_CLOCK));
        for (int i = 0; i < 2; i++)
            EXPECT_OK(k, tp_all_reduce(k->g, b.p, b.p, 13, TP_F32, TP_SUM));
        uint64_t split = 0;
        EXPECT_OK(k, tp_stats_split_wait(k->g, &split));
        tp_stats_get(k->g, &s);
        EXPECT(k, split == 2 && ar->calls == 2 && ar->seconds == 2e-3,
               "after tp_stats_split_wait of %llu calls: %llu all_reduces, %.9f s (expected 2 "
               "and 0.002)",
               (unsigned long long)split, (unsigned long long)ar->calls, ar->seconds);
        EXPECT_OK(k, tp_stats_set_wait(k->g, TP_WAIT_NONE));
    }
    dbuf_free(k, &b);
}

/* The negative control of the fakehost runs: a copy would fail loudly. */
static void body_fakehost_refuses(tpt_rank *k)
{
    float x = 1, y = 0;
    void *d = NULL;
    if (strcmp(tp_device_name(k->dev), "fakehost") != 0)
        return; /* only meaningful on the fakehost device */
    EXPECT(k, tp_device_mem_kind(k->dev) == TP_MEM_HOST, "fakehost is not host memory");
    EXPECT_OK(k, tp_dev_alloc(k->dev, sizeof x, &d));
    tp_status st = tp_dev_upload(k->dev, d, &x, sizeof x);
    EXPECT(k, st == TP_ERR_INTERNAL && strstr(tp_last_error(), "fakehost"),
           "fakehost upload gave %s (%s), expected TP_ERR_INTERNAL", tp_status_string(st),
           tp_last_error());
    st = tp_dev_download(k->dev, &y, d, sizeof y);
    EXPECT(k, st == TP_ERR_INTERNAL, "fakehost download gave %s, expected TP_ERR_INTERNAL",
           tp_status_string(st));
    tp_dev_free(k->dev, d);
}

START_TEST(test_all_reduce)
{
    tpt_run_all(body_all_reduce);
}
END_TEST
START_TEST(test_all_gather)
{
    tpt_run_all(body_all_gather);
}
END_TEST
START_TEST(test_reduce_scatter)
{
    tpt_run_all(body_reduce_scatter);
}
END_TEST
START_TEST(test_broadcast)
{
    tpt_run_all(body_broadcast);
}
END_TEST
START_TEST(test_barrier)
{
    tpt_run_all(body_barrier);
}
END_TEST
START_TEST(test_stats)
{
    tpt_run_all(body_stats);
}
END_TEST
START_TEST(test_fakehost_refuses)
{
    tpt_run_all(body_fakehost_refuses);
}
END_TEST

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--basic") == 0)
            tpt_world_only = true;
    const tpt_test tests[] = {
        {"all_reduce", test_all_reduce},
        {"all_gather", test_all_gather},
        {"reduce_scatter", test_reduce_scatter},
        {"broadcast", test_broadcast},
        {"barrier", test_barrier},
        {"stats", test_stats},
        {"fakehost_refuses", test_fakehost_refuses},
    };
    return tpt_main(&argc, &argv, "staging", tests, sizeof tests / sizeof tests[0], NULL);
}
