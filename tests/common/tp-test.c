/* SPDX-License-Identifier: MIT */
/* tp-test.c — the shared layer-suite harness (see tp-test.h). */
#include "tp-test.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct fail_slot {
    int n;
    char first[1024];
} fail_slot;

static tp_ctx *g_ctx;
static fail_slot *g_fail; /* one per world rank; each rank writes only its own */
static int g_world;
bool tpt_world_only;

void tpt_fail_at(tpt_rank *k, int line, const char *fmt, ...)
{
    fail_slot *f = &g_fail[k->wrank];
    if (f->n++ > 0)
        return;
    int off =
        snprintf(f->first, sizeof f->first, "line %d, T=%d group rank %d: ", line, k->T, k->r);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->first + off, sizeof f->first - (size_t)off, fmt, ap);
    va_end(ap);
}

int tpt_failures(const tpt_rank *k)
{
    return g_fail[k->wrank].n;
}

static tp_status rank_main(tp_comm *world, void *arg)
{
    tpt_body_fn fn = *(tpt_body_fn *)arg;
    int W = tp_comm_size(world), r = tp_comm_rank(world);
    for (int T = tpt_world_only ? W : 1; T <= W; T++) {
        tp_comm *g = world;
        if (!tpt_world_only) {
            int color = r < (W / T) * T ? r / T : -1;
            tp_status st = tp_comm_split(world, color, r, &g);
            if (st != TP_OK)
                return st;
            if (!g)
                continue;
        }
        tpt_rank k = {.g = g, .dev = tp_comm_device(g), .T = T, .r = tp_comm_rank(g), .wrank = r};
        if (tp_comm_size(g) != T)
            tpt_fail_at(&k, __LINE__, "split gave a group of %d, expected %d", tp_comm_size(g), T);
        else
            fn(&k);
        if (g != world)
            tp_comm_free(g);
    }
    return TP_OK;
}

void tpt_run_all(tpt_body_fn fn)
{
    memset(g_fail, 0, sizeof(fail_slot) * (size_t)g_world);
    tp_status st = tp_run(g_ctx, rank_main, &fn);
    ck_assert_msg(st == TP_OK, "tp_run: %s: %s", tp_status_string(st), tp_last_error());
    for (int i = 0; i < g_world; i++)
        ck_assert_msg(g_fail[i].n == 0, "world rank %d: %d failed checks; first: %s", i,
                      g_fail[i].n, g_fail[i].first);
}

int tpt_main(int *argc, char ***argv, const char *suite, const tpt_test *tests, size_t n,
             const char *only_env)
{
    tp_config cfg = {.argc = argc, .argv = argv};
    tp_status st = tp_init(&cfg, &g_ctx);
    if (st == TP_ERR_UNAVAILABLE) {
        printf("%s: skipped: the backend cannot run here: %s\n", suite, tp_last_error());
        return 77;
    }
    if (st != TP_OK) {
        fprintf(stderr, "%s: tp_init failed: %s: %s\n", suite, tp_status_string(st),
                tp_last_error());
        return 1;
    }
    g_world = tp_ctx_world_size(g_ctx);
    g_fail = calloc((size_t)g_world, sizeof(fail_slot));
    if (!g_fail) {
        fprintf(stderr, "%s: out of memory\n", suite);
        tp_finalize(g_ctx);
        return 1;
    }
    Suite *s = suite_create(suite);
    const char *only = only_env ? getenv(only_env) : NULL;
    for (size_t i = 0; i < n; i++) {
        if (only && strcmp(only, tests[i].name))
            continue;
        TCase *tc = tcase_create(tests[i].name);
        tcase_set_timeout(tc, 0); /* meson's timeout applies; ranks time out via TP_TIMEOUT_S */
        tcase_add_test(tc, tests[i].fn);
        suite_add_tcase(s, tc);
    }
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    free(g_fail);
    g_fail = NULL;
    tp_finalize(g_ctx);
    return failed ? 1 : 0;
}

uint64_t tpt_overlap_chunks(int64_t t, int chunks)
{
    uint64_t n = 0;
    int64_t prev = 0;
    for (int i = 1; i <= chunks; i++) {
        int64_t b = ((t * i / chunks + 47) / 48) * 48;
        b = b < t ? b : t;
        n += b > prev;
        prev = b > prev ? b : prev;
    }
    return n;
}

bool tpt_bitwise_expected(const tpt_rank *k)
{
    const char *be = getenv("TP_BACKEND");
    return k->T <= 2 || !be || strcmp(be, "loopback") == 0;
}

void tpt_fill(float *a, int64_t n, uint64_t id)
{
    for (int64_t i = 0; i < n; i++)
        a[i] = tp_master_uniform(777, id, (uint64_t)i, 1.0f);
}

float *tpt_falloc(int64_t n)
{
    return calloc((size_t)(n > 0 ? n : 1), sizeof(float));
}

double *tpt_to_d(const float *a, int64_t n)
{
    double *d = calloc((size_t)(n > 0 ? n : 1), sizeof(double));
    for (int64_t i = 0; d && i < n; i++)
        d[i] = a[i];
    return d;
}

tp_tensor tpt_upload2(tpt_rank *k, int64_t rows, int64_t cols, const float *h)
{
    tp_tensor t = {0};
    EXPECT_OK(k, tp_tensor_alloc2(k->dev, TP_F32, rows, cols, &t));
    if (t.data && rows * cols > 0)
        EXPECT_OK(k, tp_tensor_upload(&t, h));
    return t;
}

float *tpt_download(tpt_rank *k, const tp_tensor *t)
{
    int64_t n = tp_tensor_numel(t);
    float *h = tpt_falloc(n);
    if (t->data && n > 0)
        EXPECT_OK(k, tp_tensor_download(t, h));
    return h;
}
