/* SPDX-License-Identifier: MIT */
/*
 * test-mpi-plugin.c — the mpi plugin's vtable, driven directly, under
 * mpirun -n 1..7. Loads libtp-mpi.so the way the core does (GModule,
 * G_MODULE_BIND_LOCAL, this program does not link libmpi) with a minimal
 * tp_host, so the plugin is checked on its own, independent of libtp.
 *
 * Every test is collective: all ranks run the same tests in the same order
 * (CK_FORK=no). Data is a function of (rank, index) and every result is
 * compared with a serial reference computed by plain loops over all ranks.
 * Values are small integers, exact in f32, f16 and bf16 (|x| <= 256 fits
 * their 11/8-bit significands), so any reduction order gives exactly the
 * reference: comparisons are exact. Rounding of 16-bit sums is checked on
 * crafted ties.
 *
 * Environment: TP_MPI_PLUGIN = path of libtp-mpi.so (set by meson);
 * TP_MPI_MAX_COUNT, when set, is also read here to expect the plugin's
 * chunking and large-count refusals.
 */
#include <tp/tp-plugin.h>

#include <check.h>
#include <gmodule.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* expect_status() reports the message this file's host recorded */
#define TP_EXPECT_MESSAGE() last_msg
#include "tp-expect.h"

/* ------------------------------------------------------------ host */

static _Thread_local char last_msg[2048];
static _Thread_local tp_status last_status;

static tp_status host_set_error(tp_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_msg, sizeof last_msg, fmt, ap);
    va_end(ap);
    last_status = st;
    return st;
}

static void host_debug(const char *topic, const char *fmt, ...)
{
    const char *d = getenv("TP_DEBUG");
    if (!d || !strstr(d, topic))
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "[debug %s] ", topic);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static tp_host host = {sizeof(tp_host), host_set_error, host_debug, 60.0, NULL};

/* ------------------------------------------------------------ fixture */

static const tp_comm_ops *ops;
static void *engine;
static void *world;
static int rank, size;
static size_t max_count = 2147483647;

static void load_plugin(void)
{
    const char *path = getenv("TP_MPI_PLUGIN");
    if (!path) {
        fprintf(stderr, "TP_MPI_PLUGIN is not set (path of libtp-mpi.so)\n");
        exit(2);
    }
    GModule *m = g_module_open(path, G_MODULE_BIND_LOCAL);
    if (!m) {
        fprintf(stderr, "cannot open %s: %s\n", path, g_module_error());
        exit(2);
    }
    const tp_plugin_desc *(*entry)(void) = NULL;
    if (!g_module_symbol(m, TP_PLUGIN_ENTRY, (gpointer *)&entry) || !entry) {
        fprintf(stderr, "%s has no %s\n", path, TP_PLUGIN_ENTRY);
        exit(2);
    }
    const tp_plugin_desc *d = entry();
    if (!d || d->abi_major != TP_ABI_MAJOR || strcmp(d->name, "mpi") != 0 || !d->comm) {
        fprintf(stderr, "%s: not the mpi comm plugin of ABI %d\n", path, TP_ABI_MAJOR);
        exit(2);
    }
    char reason[256] = "";
    if (d->probe && !d->probe(reason, sizeof reason)) {
        fprintf(stderr, "mpi plugin probe says no: %s\n", reason);
        exit(2);
    }
    ops = d->comm;
    const char *mc = getenv("TP_MPI_MAX_COUNT");
    if (mc && *mc)
        max_count = strtoull(mc, NULL, 10);
    const char *to = getenv("TP_TIMEOUT_S");
    if (to && *to)
        host.timeout_s = atof(to);
}

static int env_int(const char *name)
{
    const char *v = getenv(name);
    return v ? atoi(v) : -1;
}

static void engine_up(void)
{
    tp_engine_args args = {sizeof args, 0, NULL, NULL};
    tp_engine_info info = {sizeof info, 0, 0, 0};
    tp_status st = ops->init(&host, &args, &engine, &info);
    ck_assert_msg(st == TP_OK, "init: %d %s", st, last_msg);
    tp_rank_env env = {.struct_size = sizeof env, .mem_kind = TP_MEM_HOST, .device_index = -1};
    st = ops->world(engine, 0, &env, &world, &rank, &size);
    ck_assert_msg(st == TP_OK, "world: %d %s", st, last_msg);
    ck_assert_int_eq(size, info.world_size);
    ck_assert_int_eq(rank, info.first_rank);
    ck_assert_int_eq(info.local_count, 1);
}

static void engine_down(void)
{
    ops->comm_free(world);
    ops->finalize(engine);
    world = engine = NULL;
}

/* ------------------------------------------------------------ data */

static size_t esize(tp_dtype dt)
{
    return dt == TP_F16 || dt == TP_BF16 ? 2 : 4;
}

/* Small integer in [-6, 6]: exact in every dtype, sums over 7 ranks too. */
static int value(int r, size_t i, int salt)
{
    return (int)((r * 7 + i * 3 + (size_t)salt) % 13) - 6;
}

static uint16_t to_f16(double v) /* exact for small integers */
{
    if (v == 0)
        return 0;
    uint16_t sign = v < 0 ? 0x8000 : 0;
    double a = fabs(v);
    int e;
    double m = frexp(a, &e); /* a = m * 2^e, m in [0.5, 1) */
    return (uint16_t)(sign | (uint16_t)((e - 1 + 15) << 10) | (uint16_t)((m * 2 - 1) * 1024));
}

static double from_f16(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    if (e == 31)
        return m ? NAN : (h & 0x8000 ? -INFINITY : INFINITY);
    double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return h & 0x8000 ? -v : v;
}

static uint16_t to_bf16(double v)
{
    float f = (float)v;
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16); /* exact for values with <= 8 significant bits */
}

static double from_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void put(void *buf, tp_dtype dt, size_t i, double v)
{
    switch (dt) {
        case TP_F32: ((float *)buf)[i] = (float)v; break;
        case TP_I32: ((int32_t *)buf)[i] = (int32_t)v; break;
        case TP_F16: ((uint16_t *)buf)[i] = to_f16(v); break;
        case TP_BF16: ((uint16_t *)buf)[i] = to_bf16(v); break;
        default: break;
    }
}

static double get(const void *buf, tp_dtype dt, size_t i)
{
    switch (dt) {
        case TP_F32: return ((const float *)buf)[i];
        case TP_I32: return ((const int32_t *)buf)[i];
        case TP_F16: return from_f16(((const uint16_t *)buf)[i]);
        case TP_BF16: return from_bf16(((const uint16_t *)buf)[i]);
        default: return NAN;
    }
}

static double combine(tp_redop op, double a, double b)
{
    return op == TP_SUM ? a + b : op == TP_MAX ? (a > b ? a : b) : (a < b ? a : b);
}

static double reduced(tp_redop op, size_t i, int salt)
{
    double acc = value(0, i, salt);
    for (int r = 1; r < size; r++)
        acc = combine(op, acc, value(r, i, salt));
    return acc;
}

static const tp_dtype dtypes[] = {TP_F32, TP_I32, TP_F16, TP_BF16};
static const size_t counts_list[] = {0, 1, 13, 17, 1000};

/* ------------------------------------------------------------ tests */

START_TEST(test_all_reduce)
{
    engine_up();
    for (size_t d = 0; d < 4; d++)
        for (int op = 0; op < TP_REDOP_COUNT_; op++)
            for (size_t ci = 0; ci < sizeof counts_list / sizeof *counts_list; ci++)
                for (int inplace = 0; inplace < 2; inplace++) {
                    tp_dtype dt = dtypes[d];
                    size_t n = counts_list[ci];
                    int salt = (int)(d * 5 + (size_t)op + ci);
                    char *send = calloc(n + 1, esize(dt)), *recv = calloc(n + 1, esize(dt));
                    for (size_t i = 0; i < n; i++)
                        put(send, dt, i, value(rank, i, salt));
                    if (inplace)
                        memcpy(recv, send, n * esize(dt));
                    tp_status st = ops->all_reduce(world, inplace ? recv : send, recv, n, dt, op);
                    expect_status(st, TP_OK, "all_reduce");
                    for (size_t i = 0; i < n; i++)
                        ck_assert_msg(
                            get(recv, dt, i) == reduced(op, i, salt),
                            "all_reduce dt %d op %d n %zu inplace %d [%zu]: got %g want %g", dt, op,
                            n, inplace, i, get(recv, dt, i), reduced(op, i, salt));
                    free(send);
                    free(recv);
                }
    engine_down();
}
END_TEST

/* 16-bit sums round to nearest even after each pairwise add. Rank 0
 * holds a, rank 1 holds b, others 0 (x + 0 is exact), so the result is
 * round(a + b) whatever the order. */
START_TEST(test_half_rounding)
{
    engine_up();
    if (size < 2) {
        engine_down();
        return;
    }
    struct {
        tp_dtype dt;
        double a, b, want;
    } cases[] = {
        {TP_BF16, 1.0, 0x1p-8, 1.0},                    /* tie, 1.0 is even */
        {TP_BF16, 1.0 + 0x1p-7, 0x1p-8, 1.0 + 0x1p-6},  /* tie, rounds up to even */
        {TP_BF16, 1.0, 0x1p-8 + 0x1p-12, 1.0 + 0x1p-7}, /* above the tie */
        {TP_F16, 1.0, 0x1p-11, 1.0},
        {TP_F16, 1.0 + 0x1p-10, 0x1p-11, 1.0 + 0x1p-9},
        {TP_F16, 65504.0, 32.0, INFINITY},   /* 65536 -> inf */
        {TP_F16, 0x1p-24, 0x1p-24, 0x1p-23}, /* subnormals */
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        uint16_t buf = 0;
        double mine = rank == 0 ? cases[k].a : rank == 1 ? cases[k].b : 0.0;
        if (cases[k].dt == TP_BF16) {
            float f = (float)mine;
            uint32_t u;
            memcpy(&u, &f, 4);
            buf = (uint16_t)(u >> 16); /* inputs are exact bf16 values */
        } else if (mine == 65504.0) {
            buf = 0x7bff;
        } else if (mine == 0x1p-24) {
            buf = 0x0001;
        } else {
            int e;
            double m = frexp(mine, &e);
            buf = mine == 0 ? 0 : (uint16_t)(((e - 1 + 15) << 10) | (uint16_t)((m * 2 - 1) * 1024));
        }
        tp_status st = ops->all_reduce(world, &buf, &buf, 1, cases[k].dt, TP_SUM);
        expect_status(st, TP_OK, "all_reduce of one element");
        ck_assert_msg(get(&buf, cases[k].dt, 0) == cases[k].want, "case %zu: got %.10g want %.10g",
                      k, get(&buf, cases[k].dt, 0), cases[k].want);
    }
    engine_down();
}
END_TEST

/* counts: uniform (kind 0) or uneven with zero blocks (kind 1) */
static void fill_counts(size_t *counts, int kind, size_t base)
{
    for (int i = 0; i < size; i++)
        counts[i] = kind == 0 ? base : (base + (size_t)i * 2) % 7 + (i % 3 == 1 ? 0 : base);
}

static bool over_limit(const size_t *counts)
{
    size_t off = 0;
    for (int i = 0; i < size; i++) {
        if (counts[i] > max_count || off > max_count)
            return true;
        off += counts[i];
    }
    return false;
}

START_TEST(test_all_gather)
{
    engine_up();
    size_t counts[64], offs[64];
    for (size_t d = 0; d < 4; d++)
        for (int kind = 0; kind < 2; kind++)
            for (size_t ci = 0; ci < sizeof counts_list / sizeof *counts_list; ci++)
                for (int inplace = 0; inplace < 2; inplace++) {
                    tp_dtype dt = dtypes[d];
                    fill_counts(counts, kind, counts_list[ci]);
                    size_t total = 0;
                    for (int i = 0; i < size; i++) {
                        offs[i] = total;
                        total += counts[i];
                    }
                    int salt = (int)(d + ci);
                    char *send = calloc(counts[rank] + 1, esize(dt));
                    char *recv = calloc(total + 1, esize(dt));
                    for (size_t i = 0; i < counts[rank]; i++)
                        put(send, dt, i, value(rank, i, salt));
                    const void *s = send;
                    if (inplace) {
                        memcpy(recv + offs[rank] * esize(dt), send, counts[rank] * esize(dt));
                        s = recv + offs[rank] * esize(dt);
                    }
                    tp_status st = ops->all_gather(world, s, recv, counts, dt);
                    if (over_limit(counts)) {
                        ck_assert_msg(st == TP_ERR_NOT_SUPPORTED && strstr(last_msg, "all_gather"),
                                      "over the count limit: %d %s", st, last_msg);
                    } else {
                        expect_status(st, TP_OK, "all_gather");
                        for (int r = 0; r < size; r++)
                            for (size_t i = 0; i < counts[r]; i++)
                                ck_assert_msg(get(recv, dt, offs[r] + i) == value(r, i, salt),
                                              "all_gather dt %d kind %d inplace %d rank %d [%zu]",
                                              dt, kind, inplace, r, i);
                    }
                    free(send);
                    free(recv);
                }
    engine_down();
}
END_TEST

START_TEST(test_reduce_scatter)
{
    engine_up();
    size_t counts[64], offs[64];
    for (size_t d = 0; d < 4; d++)
        for (int op = 0; op < TP_REDOP_COUNT_; op++)
            for (int kind = 0; kind < 2; kind++)
                for (size_t ci = 0; ci < sizeof counts_list / sizeof *counts_list; ci++)
                    for (int inplace = 0; inplace < 2; inplace++) {
                        tp_dtype dt = dtypes[d];
                        fill_counts(counts, kind, counts_list[ci]);
                        size_t total = 0;
                        for (int i = 0; i < size; i++) {
                            offs[i] = total;
                            total += counts[i];
                        }
                        int salt = (int)(d * 3 + (size_t)op + ci);
                        char *send = calloc(total + 1, esize(dt));
                        char *recv = calloc(total + 1, esize(dt));
                        for (size_t i = 0; i < total; i++)
                            put(send, dt, i, value(rank, i, salt));
                        if (inplace)
                            memcpy(recv, send, total * esize(dt));
                        tp_status st =
                            ops->reduce_scatter(world, inplace ? recv : send, recv, counts, dt, op);
                        if (over_limit(counts)) {
                            ck_assert_msg(st == TP_ERR_NOT_SUPPORTED, "%d %s", st, last_msg);
                        } else {
                            expect_status(st, TP_OK, "reduce_scatter");
                            for (size_t i = 0; i < counts[rank]; i++)
                                ck_assert_msg(
                                    get(recv, dt, i) == reduced(op, offs[rank] + i, salt),
                                    "reduce_scatter dt %d op %d kind %d inplace %d [%zu]: "
                                    "got %g want %g",
                                    dt, op, kind, inplace, i, get(recv, dt, i),
                                    reduced(op, offs[rank] + i, salt));
                        }
                        free(send);
                        free(recv);
                    }
    engine_down();
}
END_TEST

START_TEST(test_broadcast_barrier)
{
    engine_up();
    for (size_t d = 0; d < 4; d++)
        for (int root = 0; root < size; root++)
            for (size_t ci = 0; ci < sizeof counts_list / sizeof *counts_list; ci++) {
                tp_dtype dt = dtypes[d];
                size_t n = counts_list[ci];
                char *buf = calloc(n + 1, esize(dt));
                for (size_t i = 0; i < n; i++)
                    put(buf, dt, i, value(rank, i, root));
                tp_status st = ops->broadcast(world, buf, n, dt, root);
                expect_status(st, TP_OK, "broadcast");
                for (size_t i = 0; i < n; i++)
                    ck_assert(get(buf, dt, i) == value(root, i, root));
                free(buf);
            }
    ck_assert_int_eq(ops->barrier(world), TP_OK);
    float x = 1;
    ck_assert_int_eq(ops->broadcast(world, &x, 1, TP_F32, size), TP_ERR_INVALID_ARG);
    ck_assert_msg(strstr(last_msg, "root"), "%s", last_msg);
    ck_assert_int_eq(ops->broadcast(world, &x, 1, (tp_dtype)42, 0), TP_ERR_INVALID_ARG);
    ck_assert_int_eq(ops->all_reduce(world, &x, &x, 1, TP_F32, (tp_redop)9), TP_ERR_INVALID_ARG);
    engine_down();
}
END_TEST

START_TEST(test_split)
{
    engine_up();
    /* two colors, reversed order by key; rank 0 opts out when size > 2 */
    int color = size > 2 && rank == 0 ? -1 : rank % 2;
    void *sub = (void *)1;
    int srank = -5, ssize = -5;
    tp_status st = ops->split(world, color, -rank, &sub, &srank, &ssize);
    expect_status(st, TP_OK, "split");
    if (color < 0) {
        ck_assert_ptr_null(sub);
    } else {
        ck_assert_ptr_nonnull(sub);
        /* members: ranks with the same color, ordered by key = -rank */
        int members = 0, before = 0;
        for (int r = 0; r < size; r++) {
            int c = size > 2 && r == 0 ? -1 : r % 2;
            if (c != color)
                continue;
            members++;
            if (-r < -rank)
                before++;
        }
        ck_assert_int_eq(ssize, members);
        ck_assert_int_eq(srank, before);
        int32_t v = rank;
        ck_assert_int_eq(ops->all_reduce(sub, &v, &v, 1, TP_I32, TP_SUM), TP_OK);
        int32_t want = 0;
        for (int r = 0; r < size; r++)
            if ((size > 2 && r == 0 ? -1 : r % 2) == color)
                want += r;
        ck_assert_int_eq(v, want);
        ops->comm_free(sub);
    }
    engine_down();
}
END_TEST

START_TEST(test_refusals)
{
    /* world size mismatch, then a good init in the same process */
    tp_engine_args args = {sizeof args, 0, NULL, NULL};
    tp_engine_info info = {sizeof info, 0, 0, 0};
    int n = env_int("OMPI_COMM_WORLD_SIZE");
    args.world_size = (n > 0 ? n : 1) + 1;
    void *e = (void *)1;
    tp_status st = ops->init(&host, &args, &e, &info);
    ck_assert_int_eq(st, TP_ERR_INVALID_ARG);
    char want1[32], want2[64];
    snprintf(want1, sizeof want1, "is %d", args.world_size);
    snprintf(want2, sizeof want2, "mpirun started %d process", n > 0 ? n : 1);
    ck_assert_msg(strstr(last_msg, want1) && strstr(last_msg, want2), "%s", last_msg);
    ck_assert_ptr_null(e);

    /* device memory is refused in world() */
    engine_up();
    tp_rank_env env = {.struct_size = sizeof env, .mem_kind = TP_MEM_CUDA, .device_index = 0};
    void *c = (void *)1;
    int r, s;
    st = ops->world(engine, 0, &env, &c, &r, &s);
    ck_assert_int_eq(st, TP_ERR_NOT_SUPPORTED);
    ck_assert_msg(strstr(last_msg, "CUDA-aware"), "%s", last_msg);
    ck_assert_ptr_null(c);
    env.mem_kind = TP_MEM_HOST;
    ck_assert_int_eq(ops->world(engine, 1, &env, &c, &r, &s), TP_ERR_INVALID_ARG);
    engine_down();
}
END_TEST

int main(int argc, char **argv)
{
    load_plugin();
    Suite *s = suite_create("mpi-plugin");
    TCase *tc = tcase_create("ops");
    tcase_set_timeout(tc, 0);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_all_reduce);
    tcase_add_test(tc, test_half_rounding);
    tcase_add_test(tc, test_all_gather);
    tcase_add_test(tc, test_reduce_scatter);
    tcase_add_test(tc, test_broadcast_barrier);
    tcase_add_test(tc, test_split);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    (void)argc;
    (void)argv;
    return failed == 0 ? 0 : 1;
}
