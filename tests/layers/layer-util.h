/* SPDX-License-Identifier: MIT */
/*
 * layer-util.h — host helpers shared by the layer suites (test-layers.c,
 * test-lowp.c): slices, shards, master weights, collective counts, and
 * EXPECT_ERR for refused calls.
 */
#ifndef TP_TEST_LAYER_UTIL_H
#define TP_TEST_LAYER_UTIL_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <tp/tp-transformer.h>

#include "tp-test.h"

/* Columns [c0, c1) of a rows x cols host matrix. */
static inline float *slice_cols(const float *a, int64_t rows, int64_t cols, int64_t c0, int64_t c1)
{
    float *s = malloc(sizeof(float) * (size_t)(rows * (c1 - c0) + 1));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = c0; c < c1; c++)
            s[r * (c1 - c0) + (c - c0)] = a[r * cols + c];
    return s;
}

/* Expected collective calls in `phase` (all others must be 0). */
static inline void check_counts(tpt_rank *k, int line, const char *what, tp_phase phase, int ar,
                                int ag)
{
    tp_stats s;
    tp_stats_get(k->g, &s);
    for (int ph = 0; ph < TP_PHASE_COUNT; ph++)
        for (int op = 0; op < TP_OP_COUNT; op++) {
            uint64_t want = 0;
            if (ph == (int)phase && op == TP_OP_ALL_REDUCE)
                want = (uint64_t)ar;
            if (ph == (int)phase && op == TP_OP_ALL_GATHER)
                want = (uint64_t)ag;
            if (s.comm[ph][op].calls != want) {
                tpt_fail_at(k, line, "%s: %s calls in phase %s = %llu, expected %llu", what,
                            tp_op_name((tp_op)op), tp_phase_name((tp_phase)ph),
                            (unsigned long long)s.comm[ph][op].calls, (unsigned long long)want);
                return;
            }
        }
}

static inline void shard(int64_t n, tpt_rank *k, int64_t *lo, int64_t *hi)
{
    tp_shard_range(n, k->T, k->r, lo, hi);
}

/* Full master weight [in, out] and bias [out] as tp_linear_config defines them. */
static inline void master(uint64_t seed, uint64_t id, int64_t in, int64_t out, float *w, float *b)
{
    float bound = (float)(1.0 / sqrt((double)in));
    tp_master_fill(seed, id, out, 0, in, 0, out, bound, w);
    if (b)
        tp_master_fill(seed, id + 1, out, 0, 1, 0, out, bound, b);
}

/* expr must return `want` with every string of ... in its message. */
#define EXPECT_ERR(k, expr, want, ...)                                                             \
    do {                                                                                           \
        tp_clear_error();                                                                          \
        tp_status st_ = (expr);                                                                    \
        EXPECT((k), st_ == (want), "%s returned %s, expected %s (%s)", #expr,                      \
               tp_status_string(st_), tp_status_string(want), tp_last_error());                    \
        const char *subs_[] = {__VA_ARGS__};                                                       \
        for (size_t i_ = 0; i_ < sizeof subs_ / sizeof subs_[0]; i_++)                             \
            EXPECT((k), strstr(tp_last_error(), subs_[i_]) != NULL,                                \
                   "%s: message lacks \"%s\": \"%s\"", #expr, subs_[i_], tp_last_error());         \
    } while (0)

#endif
