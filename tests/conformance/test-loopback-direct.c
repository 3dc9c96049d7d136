/* SPDX-License-Identifier: MIT */
/*
 * test-loopback-direct.c — drives libtp-loopback.so through its vtable
 * directly (no libtp): ranks are threads made here. Checks the plugin on its
 * own, so it can run under -fsanitize=thread or helgrind without
 * instrumenting libtp.
 *
 *   test-loopback-direct PLUGIN.so         run the checks, exit 0 if all pass
 *   test-loopback-direct PLUGIN.so bench   latency and bandwidth figures (not a test)
 *   test-loopback-direct PLUGIN.so bench T BYTES [ITERS]   one all_reduce size
 *
 * Inputs are small integers, so every sum is exact in every dtype and the
 * expected result does not depend on summation order: exact comparison.
 * Ranks record failures (FAIL) from their threads; each Check test then
 * asserts on the main thread that none were recorded.
 */
#include <check.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <tp/tp-plugin.h>

static const tp_comm_ops *ops;
static _Thread_local char last_err[1024];
static int failures;
static pthread_mutex_t fail_lock = PTHREAD_MUTEX_INITIALIZER;

static tp_status h_set_error(tp_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_err, sizeof last_err, fmt, ap);
    va_end(ap);
    return st;
}

static void h_debug(const char *topic, const char *fmt, ...)
{
    (void)topic;
    (void)fmt;
}

static tp_host host = {sizeof(tp_host), h_set_error, h_debug, 300.0, NULL};

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        pthread_mutex_lock(&fail_lock);                                                            \
        failures++;                                                                                \
        fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                       \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fprintf(stderr, "\n");                                                                     \
        pthread_mutex_unlock(&fail_lock);                                                          \
    } while (0)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------- launching */

typedef void (*rank_fn)(void *comm, int rank, int size, void *arg);
typedef struct {
    void *engine;
    int index, size;
    rank_fn fn;
    void *arg;
} thread_arg;

/* TP_MEM_CUDA: every rank first offers device memory without device ops,
 * which loopback must refuse with TP_ERR_NOT_SUPPORTED and no side effect,
 * then (as the core does before staging) host memory, which must work. */
static tp_mem_kind kind_first;

static void *thread_main(void *p)
{
    thread_arg *t = p;
    tp_rank_env env = {.struct_size = sizeof env, .mem_kind = kind_first, .device_index = -1};
    void *comm;
    int rank, size;
    tp_status st = ops->world(t->engine, t->index, &env, &comm, &rank, &size);
    if (kind_first != TP_MEM_HOST) {
        if (st != TP_ERR_NOT_SUPPORTED || !strstr(last_err, "reduce"))
            FAIL("world() with CUDA memory and no device ops: got %d (%s)", st, last_err);
        env.mem_kind = TP_MEM_HOST;
        st = ops->world(t->engine, t->index, &env, &comm, &rank, &size);
    }
    if (st != TP_OK) {
        FAIL("world(%d): %s", t->index, last_err);
        return NULL;
    }
    t->fn(comm, rank, size, t->arg);
    ops->comm_free(comm);
    return NULL;
}

static void run(int n, rank_fn fn, void *arg)
{
    tp_engine_args ea = {sizeof ea, n, NULL, NULL};
    tp_engine_info info = {sizeof info, 0, 0, 0};
    void *engine;
    if (ops->init(&host, &ea, &engine, &info) != TP_OK) {
        FAIL("init(%d): %s", n, last_err);
        return;
    }
    pthread_t th[64];
    thread_arg ta[64];
    for (int i = 0; i < n; i++) {
        ta[i] = (thread_arg){engine, i, n, fn, arg};
        pthread_create(&th[i], NULL, thread_main, &ta[i]);
    }
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    ops->finalize(engine);
}

/* ----------------------------------------------------- values, reference */

static int value(int rank, size_t i, int salt)
{
    return (int)((rank * 7u + i * 13u + (unsigned)salt * 5u) % 9u) - 4; /* -4..4 */
}

static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16); /* exact for the small integers used here */
}

static uint16_t to_f16(int v)
{
    /* small integer -> half, exactly */
    if (v == 0)
        return 0;
    uint16_t sign = v < 0 ? 0x8000 : 0;
    unsigned a = (unsigned)(v < 0 ? -v : v);
    int e = 31 - __builtin_clz(a);
    unsigned man = (a << (10 - e)) & 0x3ff;
    return (uint16_t)(sign | (unsigned)(e + 15) << 10 | man);
}

static size_t dsize(tp_dtype dt)
{
    return dt == TP_F16 || dt == TP_BF16 ? 2 : 4;
}

static void put(tp_dtype dt, void *buf, size_t i, int v)
{
    switch (dt) {
        case TP_F32: ((float *)buf)[i] = (float)v; break;
        case TP_I32: ((int32_t *)buf)[i] = v; break;
        case TP_BF16: ((uint16_t *)buf)[i] = to_bf16((float)v); break;
        default: ((uint16_t *)buf)[i] = to_f16(v); break;
    }
}

static int reduce_ref(tp_redop op, int size, size_t i, int salt, size_t shift)
{
    int acc = value(0, i + shift, salt);
    for (int r = 1; r < size; r++) {
        int v = value(r, i + shift, salt);
        acc = op == TP_SUM ? acc + v : op == TP_MAX ? (v > acc ? v : acc) : (v < acc ? v : acc);
    }
    return acc;
}

static bool same(tp_dtype dt, const void *buf, size_t i, int v)
{
    char tmp[4];
    put(dt, tmp, 0, v);
    return memcmp((const char *)buf + i * dsize(dt), tmp, dsize(dt)) == 0;
}

/* ------------------------------------------------------------- checks */

static const size_t counts_list[] = {0, 1, 13, 17, 100, 1025, 70001};
#define NCOUNTS (sizeof counts_list / sizeof counts_list[0])

static void t_all_reduce(void *comm, int rank, int size, void *arg)
{
    (void)arg;
    for (int dt = 0; dt < TP_DTYPE_COUNT_; dt++)
        for (int op = 0; op < TP_REDOP_COUNT_; op++)
            for (size_t k = 0; k < NCOUNTS; k++)
                for (int inplace = 0; inplace < 2; inplace++) {
                    size_t n = counts_list[k], es = dsize(dt);
                    char *send = malloc(n * es + 1), *recv = malloc(n * es + 1);
                    int salt = (int)k + op;
                    for (size_t i = 0; i < n; i++)
                        put(dt, send, i, value(rank, i, salt));
                    void *out = inplace ? send : recv;
                    tp_status st = ops->all_reduce(comm, send, out, n, dt, op);
                    if (st != TP_OK)
                        FAIL("all_reduce rank %d: %s", rank, last_err);
                    for (size_t i = 0; st == TP_OK && i < n; i++)
                        if (!same(dt, out, i, reduce_ref(op, size, i, salt, 0))) {
                            FAIL(
                                "all_reduce T=%d rank %d dt %d op %d n %zu inplace %d: [%zu] wrong",
                                size, rank, dt, op, n, inplace, i);
                            break;
                        }
                    free(send);
                    free(recv);
                }
}

static void t_gather_scatter(void *comm, int rank, int size, void *arg)
{
    (void)arg;
    for (int dt = 0; dt < TP_DTYPE_COUNT_; dt++)
        for (size_t k = 0; k < NCOUNTS; k++)
            for (int inplace = 0; inplace < 2; inplace++) {
                size_t counts[64], off[64], total = 0, es = dsize(dt);
                for (int r = 0; r < size; r++) {
                    counts[r] = (counts_list[k] + (size_t)r * 3) % (counts_list[k] + 1);
                    off[r] = total;
                    total += counts[r];
                }
                char *recv = malloc(total * es + 1), *send = malloc(total * es + 1);
                /* all_gather: block of rank r holds value(r, off+i) */
                memset(recv, 0x55, total * es);
                for (size_t i = 0; i < counts[rank]; i++)
                    put(dt, inplace ? recv + off[rank] * es : send, i, value(rank, i, (int)k));
                const void *s = inplace ? recv + off[rank] * es : send;
                tp_status st = ops->all_gather(comm, s, recv, counts, dt);
                if (st != TP_OK)
                    FAIL("all_gather rank %d: %s", rank, last_err);
                for (int r = 0; st == TP_OK && r < size; r++)
                    for (size_t i = 0; i < counts[r]; i++)
                        if (!same(dt, recv, off[r] + i, value(r, i, (int)k))) {
                            FAIL("all_gather T=%d rank %d block %d [%zu] wrong", size, rank, r, i);
                            r = size;
                            break;
                        }
                /* reduce_scatter: send[j] = value(rank, j); rank gets block rank */
                for (int op = 0; op < TP_REDOP_COUNT_; op++) {
                    for (size_t j = 0; j < total; j++)
                        put(dt, send, j, value(rank, j, op));
                    void *out = inplace ? send + off[rank] * es : recv;
                    st = ops->reduce_scatter(comm, send, out, counts, dt, op);
                    if (st != TP_OK)
                        FAIL("reduce_scatter rank %d: %s", rank, last_err);
                    for (size_t i = 0; st == TP_OK && i < counts[rank]; i++)
                        if (!same(dt, out, i, reduce_ref(op, size, i, op, off[rank]))) {
                            FAIL("reduce_scatter T=%d rank %d dt %d op %d n %zu inplace %d [%zu] "
                                 "wrong",
                                 size, rank, dt, op, counts[rank], inplace, i);
                            break;
                        }
                }
                free(recv);
                free(send);
            }
}

static void t_broadcast(void *comm, int rank, int size, void *arg)
{
    (void)arg;
    for (int root = 0; root < size; root++)
        for (size_t k = 0; k < NCOUNTS; k++) {
            size_t n = counts_list[k];
            float *buf = malloc(n * 4 + 4);
            for (size_t i = 0; i < n; i++)
                buf[i] = (float)value(rank, i, root);
            tp_status st = ops->broadcast(comm, buf, n, TP_F32, root);
            if (st != TP_OK)
                FAIL("broadcast: %s", last_err);
            for (size_t i = 0; st == TP_OK && i < n; i++)
                if (buf[i] != (float)value(root, i, root)) {
                    FAIL("broadcast T=%d root %d rank %d [%zu] wrong", size, root, rank, i);
                    break;
                }
            free(buf);
        }
    if (ops->barrier(comm) != TP_OK)
        FAIL("barrier: %s", last_err);
}

static void t_split(void *comm, int rank, int size, void *arg)
{
    (void)arg;
    for (int mode = 0; mode < 3; mode++) {
        int color = mode == 0 ? rank % 2 : mode == 1 ? 0 : (rank == 0 ? -1 : 1);
        int key = mode == 1 ? -rank : rank;
        void *sub;
        int sr = -1, ss = -1;
        if (ops->split(comm, color, key, &sub, &sr, &ss) != TP_OK) {
            FAIL("split: %s", last_err);
            return;
        }
        if (color < 0) {
            if (sub)
                FAIL("split color -1 gave a communicator");
            continue;
        }
        int exp_size = mode == 0 ? (size + 1 - color) / 2 : mode == 1 ? size : size - 1;
        int exp_rank = mode == 0 ? rank / 2 : mode == 1 ? size - 1 - rank : rank - 1;
        if (ss != exp_size || sr != exp_rank)
            FAIL("split mode %d rank %d: got %d/%d want %d/%d", mode, rank, sr, ss, exp_rank,
                 exp_size);
        int32_t v = rank, sum = 0;
        if (ops->all_reduce(sub, &v, &sum, 1, TP_I32, TP_SUM) != TP_OK)
            FAIL("all_reduce on split: %s", last_err);
        int want = 0;
        for (int r = 0; r < size; r++) {
            int c = mode == 0 ? r % 2 : mode == 1 ? 0 : (r == 0 ? -1 : 1);
            if (c == color)
                want += r;
        }
        if (sum != want)
            FAIL("split mode %d rank %d: sum %d want %d", mode, rank, sum, want);
        ops->comm_free(sub);
    }
}

static void t_mismatch(void *comm, int rank, int size, void *arg)
{
    (void)arg;
    float buf[32] = {0};
    tp_status st = ops->all_reduce(comm, buf, buf, rank == size - 1 ? 17 : 13, TP_F32, TP_SUM);
    if (st != TP_ERR_INVALID_ARG)
        FAIL("mismatched counts: rank %d got %d (%s)", rank, st, last_err);

    st = ops->barrier(comm);
    if (st == TP_OK)
        FAIL("poisoned communicator still works");
}

static void t_timeout(void *comm, int rank, int size, void *arg)
{
    float v = 1;
    double t0 = now_s();
    if (rank == size - 1 && arg) {
        /* Skip the collective but stay: the others must time out. */
        struct timespec ts = {1, 500000000};
        nanosleep(&ts, NULL);
        return;
    }
    if (rank == size - 1)
        return; /* leave early: the others must fail at once */
    tp_status st = ops->all_reduce(comm, &v, &v, 1, TP_F32, TP_SUM);
    double dt = now_s() - t0;
    tp_status want = arg ? TP_ERR_TIMEOUT : TP_ERR_PEER;
    if (st != want)
        FAIL("rank %d: got %d want %d (%s)", rank, st, want, last_err);
    if (rank == 0 && getenv("LB_DIRECT_VERBOSE"))
        printf("  %s after %.3f s: %s\n", arg ? "timeout" : "peer", dt, last_err);
}

/* A rank whose device memory is not host memory is refused in world(),
 * and the other ranks fail at once instead of waiting for it. */
static void t_memkind(void *comm, int rank, int size, void *arg)
{
    (void)arg;
    float v = 1;
    tp_status st = ops->all_reduce(comm, &v, &v, 1, TP_F32, TP_SUM);
    if (st != TP_OK || v != (float)size)
        FAIL("rank %d of %d after a refused world(): all_reduce gave %d, %g (%s)", rank, size, st,
             v, last_err);
}

/* ------------------------------------------ one-shot path (small sizes) */

/* Non-integer floats of varied magnitude: their sum depends on the order
 * of the additions, so bitwise checks see the order. */
static float fvalue(int rank, size_t i, int salt)
{
    uint32_t x = (uint32_t)rank * 2654435761u ^ (uint32_t)i * 40503u ^ (uint32_t)salt * 97u;
    x ^= x >> 13;
    x *= 0x5bd1e995u;
    x ^= x >> 15;
    return ldexpf((float)((int)(x % 20001u) - 10000) / 7.0f, (int)(x >> 27) - 16);
}

/* The serial sum in rank order, ((x0 + x1) + x2) + ..., as loopback promises. */
static float fsum_ref(int size, size_t i, int salt)
{
    float acc = fvalue(0, i, salt);
    for (int r = 1; r < size; r++)
        acc += fvalue(r, i, salt);
    return acc;
}

static bool fsame(float a, float b)
{
    return memcmp(&a, &b, sizeof a) == 0;
}

/* Element counts (f32) around both default thresholds (1 KiB with a CPU
 * per rank, 4 KiB when ranks outnumber CPUs): just below, at, above. */
static const size_t edge_counts[] = {255, 256, 257, 1023, 1024, 1025};
#define NEDGE (sizeof edge_counts / sizeof edge_counts[0])

/* all_reduce and broadcast across the thresholds: bitwise equal to the
 * serial rank-order sum, and the small-path results bitwise equal to the
 * first elements of the next larger (other-path) call. */
static void t_edge_reduce(void *comm, int rank, int size, void *arg)
{
    (void)arg;
    float *out[NEDGE];
    for (size_t k = 0; k < NEDGE; k++) {
        size_t n = edge_counts[k];
        float *send = malloc(n * 4);
        out[k] = malloc(n * 4);
        for (size_t i = 0; i < n; i++)
            send[i] = fvalue(rank, i, 1);
        float *o = k % 2 ? send : out[k]; /* in place every other time */
        if (ops->all_reduce(comm, send, o, n, TP_F32, TP_SUM) != TP_OK)
            FAIL("edge all_reduce n %zu rank %d: %s", n, rank, last_err);
        if (o != out[k])
            memcpy(out[k], o, n * 4);
        for (size_t i = 0; i < n; i++)
            if (!fsame(out[k][i], fsum_ref(size, i, 1))) {
                FAIL("edge all_reduce T=%d rank %d n %zu: [%zu] = %a, serial sum %a", size, rank, n,
                     i, out[k][i], fsum_ref(size, i, 1));
                break;
            }
        if (k && memcmp(out[k - 1], out[k], edge_counts[k - 1] * 4) != 0)
            FAIL("edge all_reduce T=%d rank %d: n %zu and n %zu differ in their common part", size,
                 rank, edge_counts[k - 1], n);
        free(send);
    }
    for (size_t k = 0; k < NEDGE; k++)
        free(out[k]);
    for (size_t k = 0; k < NEDGE; k++) {
        int root = (int)k % size;
        size_t n = edge_counts[k];
        float *buf = malloc(n * 4);
        for (size_t i = 0; i < n; i++)
            buf[i] = fvalue(rank, i, 2);
        if (ops->broadcast(comm, buf, n, TP_F32, root) != TP_OK)
            FAIL("edge broadcast n %zu: %s", n, last_err);
        for (size_t i = 0; i < n; i++)
            if (!fsame(buf[i], fvalue(root, i, 2))) {
                FAIL("edge broadcast T=%d root %d rank %d n %zu: [%zu] wrong", size, root, rank, n,
                     i);
                break;
            }
        free(buf);
    }
}

/* all_gather and reduce_scatter with uneven counts whose totals cross the
 * thresholds (mode 0: spread with remainders; mode 1: all on the last rank). */
static void t_edge_v(void *comm, int rank, int size, void *arg)
{
    (void)arg;
    for (size_t k = 0; k < NEDGE; k++)
        for (int mode = 0; mode < 2; mode++) {
            size_t tot = edge_counts[k], counts[64], off[64], o = 0;
            for (int r = 0; r < size; r++) {
                counts[r] = mode ? (r == size - 1 ? tot : 0)
                                 : tot / (size_t)size + ((size_t)r < tot % (size_t)size);
                off[r] = o;
                o += counts[r];
            }
            float *send = malloc(tot * 4 + 4), *recv = malloc(tot * 4 + 4);
            for (size_t i = 0; i < counts[rank]; i++)
                send[i] = fvalue(rank, i, 3);
            if (ops->all_gather(comm, send, recv, counts, TP_F32) != TP_OK)
                FAIL("edge all_gather: %s", last_err);
            for (int r = 0; r < size; r++)
                for (size_t i = 0; i < counts[r]; i++)
                    if (!fsame(recv[off[r] + i], fvalue(r, i, 3))) {
                        FAIL("edge all_gather T=%d rank %d total %zu mode %d: block %d [%zu] "
                             "wrong",
                             size, rank, tot, mode, r, i);
                        r = size;
                        break;
                    }
            for (size_t i = 0; i < tot; i++)
                send[i] = fvalue(rank, i, 4);
            if (ops->reduce_scatter(comm, send, recv, counts, TP_F32, TP_SUM) != TP_OK)
                FAIL("edge reduce_scatter: %s", last_err);
            for (size_t i = 0; i < counts[rank]; i++)
                if (!fsame(recv[i], fsum_ref(size, off[rank] + i, 4))) {
                    FAIL("edge reduce_scatter T=%d rank %d total %zu mode %d: [%zu] = %a, serial "
                         "sum %a",
                         size, rank, tot, mode, i, recv[i], fsum_ref(size, off[rank] + i, 4));
                    break;
                }
            free(send);
            free(recv);
        }
}

/* Back-to-back calls without barriers, alternating small and large sizes
 * and the four collectives (the one-shot slots are reused every other op). */
static void t_alternate(void *comm, int rank, int size, void *arg)
{
    (void)arg;
    enum {
        BIG = 2000
    }; /* 8000 B: above every threshold */
    float *send = malloc(BIG * 4 * 64), *recv = malloc(BIG * 4 * 64);
    size_t counts[64], off[64];
    for (int it = 0; it < 400; it++) {
        size_t n = (it / 4) % 3 == 1 ? BIG : (size_t)(it % 7 + 1);
        int salt = it;
        switch (it % 4) {
            case 0:
                for (size_t i = 0; i < n; i++)
                    send[i] = fvalue(rank, i, salt);
                if (ops->all_reduce(comm, send, recv, n, TP_F32, TP_SUM) != TP_OK)
                    FAIL("alternate all_reduce: %s", last_err);
                for (size_t i = 0; i < n; i++)
                    if (!fsame(recv[i], fsum_ref(size, i, salt))) {
                        FAIL("alternate #%d T=%d rank %d all_reduce n %zu [%zu]", it, size, rank, n,
                             i);
                        break;
                    }
                break;
            case 1:
            case 2:
                for (int r = 0; r < size; r++) {
                    counts[r] = n + (size_t)r;
                    off[r] = r ? off[r - 1] + counts[r - 1] : 0;
                }
                size_t tot = off[size - 1] + counts[size - 1];
                for (size_t i = 0; i < tot; i++)
                    send[i] = fvalue(rank, i, salt);
                tp_status st = it % 4 == 1
                                   ? ops->all_gather(comm, send, recv, counts, TP_F32)
                                   : ops->reduce_scatter(comm, send, recv, counts, TP_F32, TP_SUM);
                if (st != TP_OK)
                    FAIL("alternate v-op: %s", last_err);
                for (size_t i = 0; it % 4 == 1 && i < tot; i++) {
                    int r = 0;
                    while (r + 1 < size && off[r + 1] <= i)
                        r++;
                    if (!fsame(recv[i], fvalue(r, i - off[r], salt))) {
                        FAIL("alternate #%d T=%d rank %d all_gather [%zu]", it, size, rank, i);
                        break;
                    }
                }
                for (size_t i = 0; it % 4 == 2 && i < counts[rank]; i++)
                    if (!fsame(recv[i], fsum_ref(size, off[rank] + i, salt))) {
                        FAIL("alternate #%d T=%d rank %d reduce_scatter [%zu]", it, size, rank, i);
                        break;
                    }
                break;
            default:
                for (size_t i = 0; i < n; i++)
                    send[i] = fvalue(rank, i, salt);
                if (ops->broadcast(comm, send, n, TP_F32, it % size) != TP_OK)
                    FAIL("alternate broadcast: %s", last_err);
                for (size_t i = 0; i < n; i++)
                    if (!fsame(send[i], fvalue(it % size, i, salt))) {
                        FAIL("alternate #%d T=%d rank %d broadcast [%zu]", it, size, rank, i);
                        break;
                    }
        }
        if (it % 37 == 0 && ops->barrier(comm) != TP_OK)
            FAIL("alternate barrier: %s", last_err);
    }
    free(send);
    free(recv);
}

/* Many small all_reduces while one rank is descheduled now and then
 * (ranks outnumber CPUs, and it sleeps 20 ms every 1000 calls): every
 * call must succeed with the right result, well inside a 2 s timeout. */
static void t_stress(void *comm, int rank, int size, void *arg)
{
    (void)arg;
    for (int it = 0; it < 6000; it++) {
        if (rank == size - 1 && it % 1000 == 999) {
            struct timespec ts = {0, 20000000};
            nanosleep(&ts, NULL);
        }
        float v[2] = {fvalue(rank, 0, it), fvalue(rank, 1, it)}, out[2];
        tp_status st = ops->all_reduce(comm, v, out, 2, TP_F32, TP_SUM);
        if (st != TP_OK || !fsame(out[0], fsum_ref(size, 0, it)) ||
            !fsame(out[1], fsum_ref(size, 1, it))) {
            FAIL("stress T=%d rank %d call %d: status %d (%s)", size, rank, it, st,
                 st ? last_err : "wrong sum");
            return;
        }
    }
}

/* Ranks that disagree on the path (one passes a count above the
 * threshold, or an invalid dtype) fail alike instead of hanging. */
static void t_path_mismatch(void *comm, int rank, int size, void *arg)
{
    float *buf = calloc(4096, sizeof(float));
    bool dtype = arg != NULL;
    tp_status want = TP_ERR_INVALID_ARG, st;
    if (rank == size - 1)
        st = ops->all_reduce(comm, buf, buf, dtype ? 13 : 4000, dtype ? (tp_dtype)99 : TP_F32,
                             TP_SUM);
    else
        st = ops->all_reduce(comm, buf, buf, 13, TP_F32, TP_SUM);
    if (st != want)
        FAIL("path mismatch (%s) T=%d rank %d: got %d (%s)", dtype ? "dtype" : "count", size, rank,
             st, last_err);
    if (ops->all_reduce(comm, buf, buf, 1, TP_F32, TP_SUM) == TP_OK)
        FAIL("poisoned communicator still works");
    free(buf);
}

/* ------------------------------------------------------------- bench */

/* Interleaved: all_reduce of n floats, then every rank memcpy of n floats
 * (the memory-traffic bound of a one-pass all_reduce), same run. Each time
 * is the span from the first rank's start to the last rank's end. */
typedef struct {
    size_t n;
    int iters;
    double ar[2], mc[2]; /* min, median */
    double t0[64], t1[64];
} bench_arg;

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void b_rank(void *comm, int rank, int size, void *p)
{
    bench_arg *b = p;
    size_t bytes = b->n * 4 + 64;
    float *s = aligned_alloc(64, bytes), *r = aligned_alloc(64, bytes);
    float *ms = aligned_alloc(64, bytes), *md = aligned_alloc(64, bytes);
    double *ta = malloc(sizeof(double) * (size_t)b->iters);
    double *tm = malloc(sizeof(double) * (size_t)b->iters);
    memset(s, 1, bytes);
    memset(r, 0, bytes);
    memset(ms, 1, bytes);
    memset(md, 0, bytes);
    for (int w = 0; w < 3; w++)
        ops->all_reduce(comm, s, r, b->n, TP_F32, TP_SUM);
    for (int it = 0; it < b->iters; it++) {
        for (int mode = 0; mode < 2; mode++) {
            ops->barrier(comm);
            b->t0[rank] = now_s();
            if (mode == 1)
                memcpy(md, ms, b->n * 4);
            else if (ops->all_reduce(comm, s, r, b->n, TP_F32, TP_SUM) != TP_OK)
                FAIL("bench: %s", last_err);
            b->t1[rank] = now_s();
            ops->barrier(comm);
            if (rank == 0) {
                double lo = b->t0[0], hi = b->t1[0];
                for (int q = 1; q < size; q++) {
                    lo = b->t0[q] < lo ? b->t0[q] : lo;
                    hi = b->t1[q] > hi ? b->t1[q] : hi;
                }
                (mode ? tm : ta)[it] = hi - lo;
            }
        }
    }
    if (rank == 0) {
        qsort(ta, (size_t)b->iters, sizeof *ta, cmp_d);
        qsort(tm, (size_t)b->iters, sizeof *tm, cmp_d);
        b->ar[0] = ta[0];
        b->ar[1] = ta[b->iters / 2];
        b->mc[0] = tm[0];
        b->mc[1] = tm[b->iters / 2];
    }
    free(ta);
    free(tm);
    free(s);
    free(r);
    free(ms);
    free(md);
}

static void bench_one(int n, size_t bytes, int iters)
{
    bench_arg b = {bytes / 4 ? bytes / 4 : 1, iters, {0, 0}, {0, 0}, {0}, {0}};
    run(n, b_rank, &b);
    const char *sb = getenv("TP_LOOPBACK_STREAM_BYTES");
    if (sb)
        printf("[TP_LOOPBACK_STREAM_BYTES=%s] ", sb);
    if (bytes >= (1u << 20))
        printf("T=%d %8zu KiB  all_reduce min %8.3f ms med %8.3f ms | %d x memcpy min %8.3f ms "
               "med %8.3f ms | ratio min %.2f med %.2f | busbw %.1f GB/s\n",
               n, bytes >> 10, b.ar[0] * 1e3, b.ar[1] * 1e3, n, b.mc[0] * 1e3, b.mc[1] * 1e3,
               b.ar[0] / b.mc[0], b.ar[1] / b.mc[1],
               2.0 * (n - 1) / n * (double)bytes / b.ar[0] / 1e9);
    else
        printf("T=%d %8zu B    all_reduce min %8.3f us med %8.3f us\n", n, bytes, b.ar[0] * 1e6,
               b.ar[1] * 1e6);
}

/* Decode-shaped: back-to-back all_reduces whose input each rank has just
 * written (as a GEMM would) and whose result it reads, no barrier between
 * calls; the mean time per call on rank 0. */
typedef struct {
    size_t n;
    int iters;
    double per_call;
} decode_arg;

static void d_rank(void *comm, int rank, int size, void *p)
{
    (void)size;
    decode_arg *d = p;
    float *s = aligned_alloc(64, d->n * 4 + 64), *r = aligned_alloc(64, d->n * 4 + 64);
    volatile float sink = 0;
    double t0 = 0;
    for (int it = -d->iters / 10; it < d->iters; it++) {
        if (it == 0) {
            ops->barrier(comm);
            t0 = now_s();
        }
        for (size_t i = 0; i < d->n; i++)
            s[i] = (float)(it + rank + (int)i);
        if (ops->all_reduce(comm, s, r, d->n, TP_F32, TP_SUM) != TP_OK)
            FAIL("decode bench: %s", last_err);
        float acc = 0;
        for (size_t i = 0; i < d->n; i++)
            acc += r[i];
        sink = acc;
    }
    (void)sink;
    if (rank == 0)
        d->per_call = (now_s() - t0) / d->iters;
    free(s);
    free(r);
}

static void bench(void)
{
    static const int small_t[] = {2, 3, 4, 7};
    for (size_t k = 0; k < 4; k++)
        bench_one(small_t[k], 8, 20000);
    for (int n = 2; n <= 4; n += 2)
        for (size_t mb = 16; mb <= 64; mb *= 4)
            bench_one(n, mb << 20, 30);
}

/* ------------------------------------------------------------- suite */

static const int sizes[] = {1, 2, 3, 4, 7};

#define NO_FAILURES() ck_assert_msg(failures == 0, "%d failure(s), see above", failures)

START_TEST(all_reduce_sizes)
{
    run(sizes[_i], t_all_reduce, NULL);
    NO_FAILURES();
}
END_TEST

START_TEST(gather_scatter_sizes)
{
    run(sizes[_i], t_gather_scatter, NULL);
    NO_FAILURES();
}
END_TEST

START_TEST(broadcast_sizes)
{
    run(sizes[_i], t_broadcast, NULL);
    NO_FAILURES();
}
END_TEST

START_TEST(split_sizes)
{
    run(sizes[_i], t_split, NULL);
    NO_FAILURES();
}
END_TEST

START_TEST(mismatch_sizes)
{
    run(sizes[_i], t_mismatch, NULL);
    NO_FAILURES();
}
END_TEST

START_TEST(world_64)
{
    run(64, t_split, NULL);
    run(64, t_broadcast, NULL);
    NO_FAILURES();
}
END_TEST

START_TEST(peer_departure)
{
    run(3, t_timeout, NULL);
    NO_FAILURES();
}
END_TEST

START_TEST(peer_timeout)
{
    host.timeout_s = 1.0;
    run(3, t_timeout, (void *)1);
    host.timeout_s = 300.0;
    NO_FAILURES();
}
END_TEST

START_TEST(refuses_device_memory)
{
    kind_first = TP_MEM_CUDA;
    run(3, t_memkind, NULL);
    kind_first = TP_MEM_HOST;
    NO_FAILURES();
}
END_TEST

START_TEST(bad_world_size)
{
    static const int bad[] = {-1, 65};
    for (int i = 0; i < 2; i++) {
        tp_engine_args ea = {sizeof ea, bad[i], NULL, NULL};
        tp_engine_info info = {sizeof info, 0, 0, 0};
        void *engine = NULL;
        tp_status st = ops->init(&host, &ea, &engine, &info);
        ck_assert_msg(st == TP_ERR_INVALID_ARG && strstr(last_err, "1..64"),
                      "world size %d: %d (%s)", bad[i], st, last_err);
    }
}
END_TEST

START_TEST(oneshot_edges)
{
    run(_i + 1, t_edge_reduce, NULL);
    run(_i + 1, t_edge_v, NULL);
    NO_FAILURES();
}
END_TEST

START_TEST(oneshot_alternate)
{
    run(sizes[_i], t_alternate, NULL);
    NO_FAILURES();
}
END_TEST

START_TEST(oneshot_stress_descheduled)
{
    static const int t[] = {2, 3, 4, 7};
    host.timeout_s = 2.0;
    run(t[_i], t_stress, NULL);
    host.timeout_s = 300.0;
    NO_FAILURES();
}
END_TEST

START_TEST(oneshot_path_mismatch)
{
    run(sizes[_i], t_path_mismatch, NULL);
    run(sizes[_i], t_path_mismatch, (void *)1);
    NO_FAILURES();
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("loopback-direct");
    TCase *tc = tcase_create("collectives");
    tcase_set_timeout(tc, 120);
    int ns = (int)(sizeof sizes / sizeof sizes[0]);
    tcase_add_loop_test(tc, all_reduce_sizes, 0, ns);
    tcase_add_loop_test(tc, gather_scatter_sizes, 0, ns);
    tcase_add_loop_test(tc, broadcast_sizes, 0, ns);
    tcase_add_loop_test(tc, split_sizes, 0, ns);
    tcase_add_loop_test(tc, mismatch_sizes, 1, ns);
    tcase_add_test(tc, world_64);
    suite_add_tcase(s, tc);
    tc = tcase_create("oneshot");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, oneshot_edges, 0, 7);
    tcase_add_loop_test(tc, oneshot_alternate, 0, ns);
    tcase_add_loop_test(tc, oneshot_stress_descheduled, 0, 4);
    tcase_add_loop_test(tc, oneshot_path_mismatch, 1, ns);
    suite_add_tcase(s, tc);
    tc = tcase_create("failures");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, peer_departure);
    tcase_add_test(tc, peer_timeout);
    tcase_add_test(tc, refuses_device_memory);
    tcase_add_test(tc, bad_world_size);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PLUGIN.so [bench [T BYTES [ITERS]] | decode T BYTES [ITERS]]\n",
                argv[0]);
        return 2;
    }
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    const tp_plugin_desc *(*get)(void) = (const tp_plugin_desc *(*)(void))dlsym(h, TP_PLUGIN_ENTRY);
    if (!get) {
        fprintf(stderr, "no entry point\n");
        return 1;
    }
    ops = get()->comm;
    if (argc > 4 && strcmp(argv[2], "decode") == 0) { /* decode T BYTES [ITERS] */
        decode_arg d = {(size_t)strtod(argv[4], NULL) / 4, argc > 5 ? atoi(argv[5]) : 20000, 0};
        run(atoi(argv[3]), d_rank, &d);
        printf("T=%s %s B decode-shaped all_reduce: %.3f us per call\n", argv[3], argv[4],
               d.per_call * 1e6);
        return 0;
    }
    if (argc > 4 && strcmp(argv[2], "bench") == 0) { /* bench T BYTES [ITERS] */
        bench_one(atoi(argv[3]), (size_t)strtod(argv[4], NULL), argc > 5 ? atoi(argv[5]) : 30);
        return 0;
    }
    if (argc > 2 && strcmp(argv[2], "bench") == 0) {
        bench();
        return 0;
    }
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int nfailed = srunner_ntests_failed(sr);
    srunner_free(sr);
    dlclose(h);
    return nfailed ? EXIT_FAILURE : EXIT_SUCCESS;
}
