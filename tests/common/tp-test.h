/* SPDX-License-Identifier: MIT */
/*
 * tp-test.h — the harness shared by the suites that run through tp_run
 * (tests/layers, tests/transformer, tests/staging).
 *
 * Every test calls tpt_run_all(body); inside tp_run each rank splits the
 * world into groups of T for T = 1..W (color rank / T; the ranks past
 * floor(W/T)*T sit out) and runs body on its group, so one run at W = 4
 * covers T = 1..4 and W = 7 covers T = 1..7 with several groups at once.
 * Bodies record failures per world rank (never longjmp across threads);
 * tpt_run_all asserts on them on the main thread after tp_run returns.
 * Check runs in CK_NOFORK mode: ranks are threads or MPI processes, and
 * neither survives fork. Runs unchanged on any backend.
 */
#ifndef TP_TEST_H
#define TP_TEST_H

#include <check.h>
#include <stdbool.h>
#include <stdint.h>

#include <tp/tp.h>

/* One rank's view of its group. */
typedef struct tpt_rank {
    tp_comm *g; /* the group of T ranks */
    tp_device *dev;
    int T, r, wrank; /* group size, rank in the group, rank in the world */
} tpt_rank;

typedef void (*tpt_body_fn)(tpt_rank *k);

/* Record a failure for k's world rank (only the first message is kept). */
void tpt_fail_at(tpt_rank *k, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* How many failures k's world rank has recorded in this run. */
int tpt_failures(const tpt_rank *k);

#define EXPECT(k, cond, ...)                                                                       \
    do {                                                                                           \
        if (!(cond))                                                                               \
            tpt_fail_at((k), __LINE__, __VA_ARGS__);                                               \
    } while (0)

#define EXPECT_OK(k, expr)                                                                         \
    do {                                                                                           \
        tp_status st_ = (expr);                                                                    \
        if (st_ != TP_OK)                                                                          \
            tpt_fail_at((k), __LINE__, "%s -> %s: %s", #expr, tp_status_string(st_),               \
                        tp_last_error());                                                          \
    } while (0)

/* Run fn on every group of every T = 1..W; ck_assert no rank failed. */
void tpt_run_all(tpt_body_fn fn);

/* Set before tpt_main: run fn once on the world itself (T = W) without
 * splitting, for comm plugins that provide no split. */
extern bool tpt_world_only;

typedef struct tpt_test {
    const char *name;
    const TTest *fn;
} tpt_test;

/* tp_init (exit 77 when the backend cannot run here), run the tests as one
 * Check suite (one case each, CK_NOFORK, no Check timeout: meson's applies
 * and ranks time out through TP_TIMEOUT_S), tp_finalize. When only_env
 * names a set environment variable, only the test of that name runs.
 * Returns main's exit status. */
int tpt_main(int *argc, char ***argv, const char *suite, const tpt_test *tests, size_t n,
             const char *only_env);

/* Host helpers. */
/* The chunk count an overlapped layer should use for t tokens and
 * `chunks` asked: at most `chunks` of about equal size, cut at multiples
 * of 48 rows (the layers' TPL_CHUNK_ALIGN), written out independently. */
uint64_t tpt_overlap_chunks(int64_t t, int chunks);
void tpt_fill(float *a, int64_t n, uint64_t id); /* uniform [-1, 1), seed 777 */
/* Whether the backend (TP_BACKEND) promises overlapped (chunked) layers the
 * same bits as unchunked ones at k's T: loopback reduces every element in
 * rank order wherever it sits; two terms add the same in either order
 * (docs/determinism.md). */
bool tpt_bitwise_expected(const tpt_rank *k);
float *tpt_falloc(int64_t n);                /* zeroed, at least one element */
double *tpt_to_d(const float *a, int64_t n); /* widen to double (caller frees) */
/* A [rows, cols] f32 device tensor holding h (failures recorded on k). */
tp_tensor tpt_upload2(tpt_rank *k, int64_t rows, int64_t cols, const float *h);
/* t's contents on the host (tpt_falloc'ed; zeros where the download failed). */
float *tpt_download(tpt_rank *k, const tp_tensor *t);

#endif
