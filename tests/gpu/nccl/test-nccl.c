/* SPDX-License-Identifier: MIT */
/*
 * test-nccl.c — checks of libtp-nccl.so, driving the plugin's vtable
 * directly (dlopen), without libtp or the cuda device plugin.
 *
 *   test-nccl load        descriptor, probe, init's refusals; runs anywhere
 *   test-nccl mpi         under mpirun -n 2: the unique id travels over MPI
 *                         (needs no GPU: init fails only after the broadcast)
 *   test-nccl gpu         collectives vs serial loops at world sizes 1..4, 7
 *                         as far as the GPUs allow, split, errors, timeout;
 *                         exit 77 with probe()'s reason without a GPU
 *   test-nccl run TOOL    run TOOL (tp-conformance) with TP_BACKEND=nccl
 *                         TP_DEVICE=cuda at each world size the GPUs allow;
 *                         exit 77 with probe()'s reason without a GPU
 *
 * CUDA is touched only after Check has decided not to fork (CK_FORK=no is
 * set by meson and forced here).
 */
#include <check.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cuda_runtime_api.h>

#include <tp/tp-plugin.h>

#ifndef TP_NCCL_PLUGIN
#error "TP_NCCL_PLUGIN (path of libtp-nccl.so) must be defined by the build"
#endif

#define SKIP 77

/* ------------------------------------------------------------ the host */

static _Thread_local char last_msg[2048];
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char debug_log[8192];

static tp_status host_set_error(tp_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_msg, sizeof last_msg, fmt, ap);
    va_end(ap);
    return st;
}

static void host_debug(const char *topic, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&log_lock);
    if (strlen(debug_log) + strlen(line) + 2 < sizeof debug_log) {
        strcat(debug_log, line);
        strcat(debug_log, "\n");
    }
    pthread_mutex_unlock(&log_lock);
    (void)topic;
}

static tp_host host = {sizeof(tp_host), host_set_error, host_debug, 60.0, NULL};

/* ---------------------------------------------------------- the plugin */

static const tp_plugin_desc *desc;
static const tp_comm_ops *ops;

/* The plugin built next to this test, or TEST_NCCL_PLUGIN (the GPU
 * bundle of tools/gpu-check, where the build tree is elsewhere). */
static void load_plugin(void)
{
    const char *path = getenv("TEST_NCCL_PLUGIN") ? getenv("TEST_NCCL_PLUGIN") : TP_NCCL_PLUGIN;
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "cannot dlopen %s: %s\n", path, dlerror());
        exit(1);
    }
    const tp_plugin_desc *(*entry)(void);
    void *sym = dlsym(lib, TP_PLUGIN_ENTRY);
    if (!sym) {
        fprintf(stderr, "%s has no %s\n", path, TP_PLUGIN_ENTRY);
        exit(1);
    }
    memcpy(&entry, &sym, sizeof sym);
    desc = entry();
    ops = desc ? desc->comm : NULL;
}

/* 1 if the plugin can run here; else 0 and the reason in `why`. */
static int gpu_available(char *why, size_t len)
{
    why[0] = '\0';
    return desc && desc->probe && desc->probe(why, len);
}

/* ------------------------------------------------------------ load tests */

START_TEST(test_descriptor)
{
    ck_assert_ptr_nonnull(desc);
    ck_assert_uint_ge(desc->struct_size, sizeof(tp_plugin_desc));
    ck_assert_uint_eq(desc->abi_major, TP_ABI_MAJOR);
    ck_assert_str_eq(desc->name, "nccl");
    ck_assert_ptr_nonnull(strstr(desc->description, "NCCL"));
    ck_assert_ptr_null(desc->device);
    ck_assert_ptr_nonnull(desc->probe);
    ck_assert_ptr_nonnull(ops);
    ck_assert_uint_eq(ops->struct_size, sizeof(tp_comm_ops));
    /* NCCL provides every slot natively: none may fall back in the core */
    ck_assert(ops->init && ops->finalize && ops->world && ops->split && ops->comm_free);
    ck_assert(ops->all_reduce && ops->all_gather && ops->reduce_scatter && ops->broadcast &&
              ops->barrier);
}
END_TEST

START_TEST(test_probe)
{
    char why[256];
    int ok = gpu_available(why, sizeof why);
    if (!ok) {
        /* the reason names CUDA ("no CUDA device ...", "CUDA driver too old ...") */
        ck_assert_ptr_nonnull(strstr(why, "CUDA"));
        printf("probe: unavailable: %s\n", why);
    }
    /* a short buffer is truncated and terminated; NULL/0 does not crash */
    char small[8];
    memset(small, 'x', sizeof small);
    ck_assert_int_eq(desc->probe(small, sizeof small), ok);
    if (!ok)
        ck_assert_uint_lt(strnlen(small, sizeof small), sizeof small);
    ck_assert_int_eq(desc->probe(NULL, 0), ok);
}
END_TEST

START_TEST(test_init_refuses_bad_args)
{
    void *eng = (void *)1;
    tp_engine_info info = {sizeof info, 0, 0, 0};
    tp_engine_args args = {sizeof args, -1, NULL, NULL};
    ck_assert_int_eq(ops->init(NULL, &args, &eng, &info), TP_ERR_INVALID_ARG);
    ck_assert_int_eq(ops->init(&host, NULL, &eng, &info), TP_ERR_INVALID_ARG);
    ck_assert_int_eq(ops->init(&host, &args, &eng, &info), TP_ERR_INVALID_ARG);
    ck_assert_ptr_null(eng);
    ck_assert_ptr_nonnull(strstr(last_msg, "-1"));
    ops->finalize(NULL);
}
END_TEST

/* Without a GPU, init says why with probe()'s reason; never crashes. */
START_TEST(test_init_without_gpu)
{
    char why[256];
    if (gpu_available(why, sizeof why))
        return; /* covered by the gpu tests */
    for (int ws = 0; ws <= 2; ws++) {
        void *eng = (void *)1;
        tp_engine_info info = {sizeof info, 0, 0, 0};
        tp_engine_args args = {sizeof args, ws, NULL, NULL};
        last_msg[0] = '\0';
        ck_assert_int_eq(ops->init(&host, &args, &eng, &info), TP_ERR_UNAVAILABLE);
        ck_assert_ptr_null(eng);
        ck_assert_msg(strstr(last_msg, why), "init's message '%s' lacks the reason '%s'", last_msg,
                      why);
    }
}
END_TEST

static int run_load(void)
{
    Suite *s = suite_create("nccl-load");
    TCase *tc = tcase_create("plugin");
    tcase_add_test(tc, test_descriptor);
    tcase_add_test(tc, test_probe);
    tcase_add_test(tc, test_init_refuses_bad_args);
    tcase_add_test(tc, test_init_without_gpu);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

/* ------------------------------------------------- mpi bootstrap (no GPU) */

/* Under mpirun -n N: init must take rank and size from MPI and receive the
 * unique id from rank 0 before it looks for GPUs. Without a GPU it then
 * fails with the probe reason; with one it succeeds. Plain asserts: this
 * runs once per rank and prints what failed. */
static int run_mpi(void)
{
    const char *sz = getenv("OMPI_COMM_WORLD_SIZE"), *rk = getenv("OMPI_COMM_WORLD_RANK");
    if (!sz || !rk) {
        printf("SKIP: not started by Open MPI's mpirun (OMPI_COMM_WORLD_SIZE unset)\n");
        return SKIP;
    }
    int size = atoi(sz), rank = atoi(rk);
    char why[256];
    int have_gpu = gpu_available(why, sizeof why);

    void *eng = NULL;
    tp_engine_info info = {sizeof info, 0, 0, 0};
    tp_engine_args args = {sizeof args, 0, NULL, NULL};
    tp_status st = ops->init(&host, &args, &eng, &info);

    char expect[64];
    snprintf(expect, sizeof expect, "rank %d/%d has the unique id from rank 0 over MPI", rank,
             size);
    int bad = 0;
    if (!strstr(debug_log, expect)) {
        fprintf(stderr, "rank %d: debug log lacks '%s':\n%s", rank, expect, debug_log);
        bad = 1;
    }
    /* every rank must hold the same id: compare its hash (printed by the
     * plugin as "(id XXXXXXXX)") with MPI_Allreduce min and max through the
     * libmpi the plugin loaded (Open MPI's handles are exported objects) */
    const char *hp = strstr(debug_log, "(id ");
    unsigned hash = hp ? (unsigned)strtoul(hp + 4, NULL, 16) : 0, lo = 0, hi = 0;
    void *allreduce = dlsym(RTLD_DEFAULT, "MPI_Allreduce");
    void *t_uns = dlsym(RTLD_DEFAULT, "ompi_mpi_unsigned"),
         *o_min = dlsym(RTLD_DEFAULT, "ompi_mpi_op_min");
    void *o_max = dlsym(RTLD_DEFAULT, "ompi_mpi_op_max"),
         *world = dlsym(RTLD_DEFAULT, "ompi_mpi_comm_world");
    if (!hp || !allreduce || !t_uns || !o_min || !o_max || !world) {
        fprintf(stderr, "rank %d: no id hash in the debug log or no Open MPI symbols\n", rank);
        bad = 1;
    } else {
        int (*ar)(const void *, void *, int, void *, void *, void *);
        memcpy(&ar, &allreduce, sizeof allreduce);
        ar(&hash, &lo, 1, t_uns, o_min, world);
        ar(&hash, &hi, 1, t_uns, o_max, world);
        if (lo != hash || hi != hash) {
            fprintf(stderr, "rank %d: id hash %08x, but ranks hold %08x..%08x\n", rank, hash, lo,
                    hi);
            bad = 1;
        }
    }

    if (have_gpu && st == TP_OK) {
        if (info.world_size != size || info.local_count != 1 || info.first_rank != rank) {
            fprintf(stderr, "rank %d: info %d/%d/%d, expected %d/1/%d\n", rank, info.world_size,
                    info.local_count, info.first_rank, size, rank);
            bad = 1;
        }
        ops->finalize(eng); /* finalizes MPI too */
        eng = NULL;
    } else if (have_gpu) {
        /* fewer GPUs on this node than ranks is refused by name */
        if (st != TP_ERR_UNAVAILABLE || !strstr(last_msg, "Duplicate GPU detected")) {
            fprintf(stderr, "rank %d: init failed with a GPU present: %s\n", rank, last_msg);
            bad = 1;
        }
    } else if (st != TP_ERR_UNAVAILABLE || eng || !strstr(last_msg, why)) {
        fprintf(stderr, "rank %d: expected TP_ERR_UNAVAILABLE with '%s', got %d: %s\n", rank, why,
                (int)st, last_msg);
        bad = 1;
    }
    printf("rank %d/%d: %s (id %08x)%s%s\n", rank, size,
           bad ? "FAILED" : "ok: id received over MPI, the same on every rank", hash,
           bad ? "" : "; init: ", bad ? "" : (st == TP_OK ? "ok" : last_msg));
    /* A failed init leaves MPI initialised on purpose (a failing rank must
     * exit at once so mpirun ends the job); every rank failed alike here,
     * so finalize through the libmpi the plugin loaded RTLD_GLOBAL. */
    if (st != TP_OK) {
        void *p = dlsym(RTLD_DEFAULT, "MPI_Finalize");
        int (*fin)(void);
        if (p) {
            memcpy(&fin, &p, sizeof p);
            fin();
        }
    }
    return bad;
}

/* ------------------------------------------------------------ gpu tests */

/* Host-side 16-bit floats for small integers (exact in both formats). */
static uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16); /* exact: the values used have <= 8 significant bits */
}

static float bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint16_t f32_to_f16(float f)
{
    /* integers |v| < 2048 only: exact */
    uint16_t sign = f < 0 ? 0x8000 : 0;
    float a = f < 0 ? -f : f;
    if (a == 0)
        return sign;
    int e = 0;
    while (a >= 2.0f) {
        a /= 2;
        e++;
    }
    uint16_t mant = (uint16_t)((a - 1.0f) * 1024.0f + 0.5f);
    return (uint16_t)(sign | (uint16_t)((e + 15) << 10) | mant);
}

static float f16_to_f32(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    float v = e == 0 ? (float)m / 1024.0f / 16384.0f
                     : (1.0f + (float)m / 1024.0f) * (float)(1 << e) / 32768.0f;
    return (h & 0x8000) ? -v : v;
}

static size_t dt_size(tp_dtype dt)
{
    return dt == TP_F16 || dt == TP_BF16 ? 2 : 4;
}

/* Pack/unpack a double holding a small integer. */
static void put(tp_dtype dt, void *buf, size_t i, double v)
{
    switch (dt) {
        case TP_F32: ((float *)buf)[i] = (float)v; break;
        case TP_I32: ((int32_t *)buf)[i] = (int32_t)v; break;
        case TP_BF16: ((uint16_t *)buf)[i] = f32_to_bf16((float)v); break;
        default: ((uint16_t *)buf)[i] = f32_to_f16((float)v); break;
    }
}

static double get(tp_dtype dt, const void *buf, size_t i)
{
    switch (dt) {
        case TP_F32: return ((const float *)buf)[i];
        case TP_I32: return ((const int32_t *)buf)[i];
        case TP_BF16: return bf16_to_f32(((const uint16_t *)buf)[i]);
        default: return f16_to_f32(((const uint16_t *)buf)[i]);
    }
}

/* Input of rank r, element i: small integers in [-8, 8], so every sum
 * over <= 7 ranks is an integer of magnitude <= 56, exact in f32, i32,
 * bf16 (8 significant bits) and f16 (11): results are compared exactly,
 * whatever order NCCL reduces in. */
static double input(int r, size_t i, int salt)
{
    return (double)((int)((r * 7 + (int)i * 3 + salt * 5) % 17) - 8);
}

typedef struct rank_ctx {
    const tp_comm_ops *ops;
    void *engine;
    int local, world;
    int device;          /* GPU to use */
    tp_mem_kind kind;    /* what the "device" claims */
    int skip_collective; /* timeout test: rank 1 never joins the all_reduce */
    tp_status status;
    char msg[2200];
} rank_ctx;

static pthread_barrier_t gbar;

#define FAIL(ctx, ...)                                                                             \
    do {                                                                                           \
        snprintf((ctx)->msg, sizeof(ctx)->msg, __VA_ARGS__);                                       \
        (ctx)->status = TP_ERR_INTERNAL;                                                           \
        goto out;                                                                                  \
    } while (0)

#define CALL(ctx, what, expr)                                                                      \
    do {                                                                                           \
        tp_status st_ = (expr);                                                                    \
        if (st_ != TP_OK)                                                                          \
            FAIL(ctx, "%s returned %d: %s", what, (int)st_, last_msg);                             \
    } while (0)

#define CUDA(ctx, expr)                                                                            \
    do {                                                                                           \
        cudaError_t e_ = (expr);                                                                   \
        if (e_ != cudaSuccess)                                                                     \
            FAIL(ctx, "%s: %s", #expr, cudaGetErrorString(e_));                                    \
    } while (0)

static double reduce_ref(tp_redop op, int n, size_t i, int salt)
{
    double acc = input(0, i, salt);
    for (int r = 1; r < n; r++) {
        double v = input(r, i, salt);
        acc = op == TP_SUM ? acc + v : op == TP_MAX ? (v > acc ? v : acc) : (v < acc ? v : acc);
    }
    return acc;
}

/* All checks of one rank on communicator `comm` (rank r of n). */
static int check_collectives(rank_ctx *x, void *comm, int r, int n, cudaStream_t s)
{
    const tp_comm_ops *o = x->ops;
    static const size_t sizes[] = {13, 17, 1};
    static const tp_dtype dts[] = {TP_F32, TP_I32, TP_BF16, TP_F16};
    const size_t maxn = 64 * 8;
    unsigned char *h_in = malloc(maxn * 4), *h_out = malloc(maxn * 4);
    void *d_in = NULL, *d_out = NULL;
    size_t counts[8];
    int ok = 0;
    if (!h_in || !h_out)
        FAIL(x, "out of host memory");
    CUDA(x, cudaMalloc(&d_in, maxn * 4));
    CUDA(x, cudaMalloc(&d_out, maxn * 4));

    for (size_t si = 0; si < 3; si++) {
        size_t cnt = sizes[si];
        for (size_t di = 0; di < 4; di++) {
            tp_dtype dt = dts[di];
            size_t es = dt_size(dt);
            /* all_reduce: sum, max, min; out of place, then in place */
            for (int op = TP_SUM; op <= TP_MIN; op++) {
                for (int inplace = 0; inplace < 2; inplace++) {
                    for (size_t i = 0; i < cnt; i++)
                        put(dt, h_in, i, input(r, i, op));
                    CUDA(x, cudaMemcpy(d_in, h_in, cnt * es, cudaMemcpyHostToDevice));
                    void *dst = inplace ? d_in : d_out;
                    CALL(x, "all_reduce", o->all_reduce(comm, d_in, dst, cnt, dt, (tp_redop)op));
                    CUDA(x, cudaMemcpy(h_out, dst, cnt * es, cudaMemcpyDeviceToHost));
                    for (size_t i = 0; i < cnt; i++)
                        if (get(dt, h_out, i) != reduce_ref((tp_redop)op, n, i, op))
                            FAIL(x,
                                 "all_reduce dt %d op %d n %zu inplace %d: [%zu] = %g, expected %g",
                                 (int)dt, op, cnt, inplace, i, get(dt, h_out, i),
                                 reduce_ref((tp_redop)op, n, i, op));
                }
            }

            /* all_gather and reduce_scatter, even then uneven (one block may be 0) */
            for (int uneven = 0; uneven < 2; uneven++) {
                size_t total = 0, off = 0;
                for (int i = 0; i < n; i++) {
                    counts[i] = uneven ? (cnt + (size_t)i * 5) % 19 : cnt;
                    if (i < r)
                        off += counts[i];
                    total += counts[i];
                }
                /* all_gather, in place: own block already at its offset */
                for (int inplace = 0; inplace < 2; inplace++) {
                    for (size_t i = 0; i < counts[r]; i++)
                        put(dt, h_in, i, input(r, i, 3));
                    CUDA(x, cudaMemset(d_out, 0, total * es + es));
                    const void *src = d_in;
                    if (inplace) {
                        CUDA(x, cudaMemcpy((char *)d_out + off * es, h_in, counts[r] * es,
                                           cudaMemcpyHostToDevice));
                        src = (char *)d_out + off * es;
                    } else {
                        CUDA(x, cudaMemcpy(d_in, h_in, counts[r] * es, cudaMemcpyHostToDevice));
                    }
                    CALL(x, "all_gather", o->all_gather(comm, src, d_out, counts, dt));
                    CUDA(x, cudaMemcpy(h_out, d_out, total * es, cudaMemcpyDeviceToHost));
                    size_t k = 0;
                    for (int q = 0; q < n; q++)
                        for (size_t i = 0; i < counts[q]; i++, k++)
                            if (get(dt, h_out, k) != input(q, i, 3))
                                FAIL(x,
                                     "all_gather dt %d uneven %d inplace %d: block %d [%zu] = %g, "
                                     "expected %g",
                                     (int)dt, uneven, inplace, q, i, get(dt, h_out, k),
                                     input(q, i, 3));
                }
                /* reduce_scatter (sum): rank r gets block r of the sum */
                for (size_t i = 0; i < total; i++)
                    put(dt, h_in, i, input(r, i, 4));
                CUDA(x, cudaMemcpy(d_in, h_in, total * es, cudaMemcpyHostToDevice));
                CALL(x, "reduce_scatter", o->reduce_scatter(comm, d_in, d_out, counts, dt, TP_SUM));
                CUDA(x, cudaMemcpy(h_out, d_out, counts[r] * es, cudaMemcpyDeviceToHost));
                for (size_t i = 0; i < counts[r]; i++)
                    if (get(dt, h_out, i) != reduce_ref(TP_SUM, n, off + i, 4))
                        FAIL(x, "reduce_scatter dt %d uneven %d: [%zu] = %g, expected %g", (int)dt,
                             uneven, i, get(dt, h_out, i), reduce_ref(TP_SUM, n, off + i, 4));
            }

            /* broadcast from every root */
            for (int root = 0; root < n; root++) {
                for (size_t i = 0; i < cnt; i++)
                    put(dt, h_in, i, r == root ? input(root, i, 6) : 99);
                CUDA(x, cudaMemcpy(d_in, h_in, cnt * es, cudaMemcpyHostToDevice));
                CALL(x, "broadcast", o->broadcast(comm, d_in, cnt, dt, root));
                CUDA(x, cudaMemcpy(h_out, d_in, cnt * es, cudaMemcpyDeviceToHost));
                for (size_t i = 0; i < cnt; i++)
                    if (get(dt, h_out, i) != input(root, i, 6))
                        FAIL(x, "broadcast dt %d root %d: [%zu] = %g, expected %g", (int)dt, root,
                             i, get(dt, h_out, i), input(root, i, 6));
            }
        }
    }
    CALL(x, "barrier", o->barrier(comm));

    /* bad arguments are refused, and the comm stays usable */
    if (o->broadcast(comm, d_in, 1, TP_F32, n) != TP_ERR_INVALID_ARG)
        FAIL(x, "broadcast with root %d (of %d) was not refused", n, n);
    if (o->all_reduce(comm, d_in, d_out, 1, (tp_dtype)42, TP_SUM) != TP_ERR_INVALID_ARG)
        FAIL(x, "all_reduce with dtype 42 was not refused");
    CALL(x, "barrier after refusals", o->barrier(comm));
    ok = 1;
out:
    (void)s;
    cudaFree(d_in);
    cudaFree(d_out);
    free(h_in);
    free(h_out);
    return ok;
}

static void *rank_main(void *arg)
{
    rank_ctx *x = arg;
    const tp_comm_ops *o = x->ops;
    cudaStream_t s = NULL;
    void *comm = NULL, *sub = NULL;
    int r = -1, n = 0;
    x->status = TP_OK;
    x->msg[0] = '\0';
    CUDA(x, cudaSetDevice(x->device));
    /* a blocking stream: ordered after the legacy default stream, where the
     * checks' cudaMemcpy uploads may still be in flight */
    CUDA(x, cudaStreamCreate(&s));
    tp_rank_env env = {
        .struct_size = sizeof env, .mem_kind = x->kind, .device_index = x->device, .stream = s};
    tp_status st = o->world(x->engine, x->local, &env, &comm, &r, &n);
    if (st != TP_OK) {
        x->status = st;
        snprintf(x->msg, sizeof x->msg, "%s", last_msg);
        goto out;
    }
    if (r != x->local || n != x->world)
        FAIL(x, "world gave rank %d/%d, expected %d/%d", r, n, x->local, x->world);

    if (x->skip_collective == 1) {
        /* timeout test: rank 0 waits in all_reduce for this rank, which
         * only frees its comm once rank 0 has given up */
        pthread_barrier_wait(&gbar);
        goto out;
    }
    if (x->skip_collective == 2) {
        st = o->all_reduce(comm, NULL, NULL, 0, TP_F32, TP_SUM); /* no-op */
        void *buf = NULL;
        CUDA(x, cudaMalloc(&buf, 64));
        st = o->all_reduce(comm, buf, buf, 16, TP_F32, TP_SUM);
        x->status = st;
        snprintf(x->msg, sizeof x->msg, "%s", last_msg);
        tp_status again = o->barrier(comm);
        if (st == TP_ERR_TIMEOUT && again != TP_ERR_COMM)
            FAIL(x, "barrier after a timeout returned %d, expected TP_ERR_COMM", (int)again);
        cudaFree(buf);
        pthread_barrier_wait(&gbar);
        goto out;
    }

    if (!check_collectives(x, comm, r, n, s))
        goto out;

    /* split: two colors, reversed keys; rank 0 opts out when n > 2 */
    int color = (n > 2 && r == 0) ? -1 : r % 2;
    int sr = -1, ss = 0;
    CALL(x, "split", o->split(comm, color, -r, &sub, &sr, &ss));
    if (color < 0) {
        if (sub)
            FAIL(x, "split with color -1 returned a communicator");
    } else {
        int members = 0, higher = 0;
        for (int q = 0; q < n; q++) {
            int qc = (n > 2 && q == 0) ? -1 : q % 2;
            if (qc == color) {
                members++;
                if (q > r)
                    higher++; /* key -q: higher old ranks come first */
            }
        }
        if (!sub || ss != members || sr != higher)
            FAIL(x, "split color %d: rank %d/%d, expected %d/%d", color, sr, ss, higher, members);
        if (!check_collectives(x, sub, sr, ss, s))
            goto out;
    }
    CALL(x, "barrier after split", o->barrier(comm));

out:
    if (sub)
        o->comm_free(sub);
    if (comm)
        o->comm_free(comm);
    if (s)
        cudaStreamDestroy(s);
    return NULL;
}

static int ndev;     /* GPUs used by the tests, at most 7 */
static int ndev_all; /* GPUs visible */

/* Run `world` ranks as threads; returns the first failing rank's context. */
static rank_ctx *run_world(int world, rank_ctx *ctx, int same_gpu, tp_mem_kind kind,
                           int timeout_test)
{
    void *eng = NULL;
    tp_engine_info info = {sizeof info, 0, 0, 0};
    tp_engine_args args = {sizeof args, world, NULL, NULL};
    tp_status st = ops->init(&host, &args, &eng, &info);
    if (st != TP_OK) {
        ctx[0].status = st;
        snprintf(ctx[0].msg, sizeof ctx[0].msg, "init: %s", last_msg);
        return &ctx[0];
    }
    pthread_t th[8];
    /* Two runs on one engine, as two tp_run calls make: each run's world
     * needs its own NCCL unique id (one id serves one communicator). */
    int runs = timeout_test || same_gpu || kind != TP_MEM_CUDA ? 1 : 2;
    for (int run = 0; run < runs; run++) {
        pthread_barrier_init(&gbar, NULL, (unsigned)world);
        for (int i = 0; i < world; i++) {
            ctx[i] = (rank_ctx){.ops = ops,
                                .engine = eng,
                                .local = i,
                                .world = world,
                                .device = same_gpu ? 0 : i,
                                .kind = kind};
            if (timeout_test)
                ctx[i].skip_collective = i == 0 ? 2 : 1;
            pthread_create(&th[i], NULL, rank_main, &ctx[i]);
        }
        for (int i = 0; i < world; i++)
            pthread_join(th[i], NULL);
        pthread_barrier_destroy(&gbar);
        for (int i = 0; i < world; i++)
            if (ctx[i].status != TP_OK) {
                snprintf(ctx[i].msg + strlen(ctx[i].msg), sizeof ctx[i].msg - strlen(ctx[i].msg),
                         " (run %d of %d on one engine)", run + 1, runs);
                ops->finalize(eng);
                return &ctx[i];
            }
    }
    ops->finalize(eng);
    return NULL;
}

START_TEST(test_collectives)
{
    static const int sizes[] = {1, 2, 3, 4, 7};
    int ran = 0;
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        if (sizes[k] > ndev)
            continue;
        rank_ctx ctx[8];
        rank_ctx *bad = run_world(sizes[k], ctx, 0, TP_MEM_CUDA, 0);
        ck_assert_msg(!bad, "world %d: rank %d: %s", sizes[k], bad ? bad->local : -1,
                      bad ? bad->msg : "");
        ran++;
    }
    printf("collectives checked at %d world size(s) on %d GPU(s)\n", ran, ndev);
}
END_TEST

START_TEST(test_more_ranks_than_gpus)
{
    void *eng = NULL;
    tp_engine_info info = {sizeof info, 0, 0, 0};
    tp_engine_args args = {sizeof args, ndev_all + 1, NULL, NULL};
    ck_assert_int_eq(ops->init(&host, &args, &eng, &info), TP_ERR_UNAVAILABLE);
    ck_assert_ptr_null(eng);
    ck_assert_ptr_nonnull(strstr(last_msg, "Duplicate GPU detected"));
    ck_assert_ptr_nonnull(strstr(last_msg, "TP_BACKEND=loopback TP_DEVICE=cuda"));
}
END_TEST

START_TEST(test_host_memory_refused)
{
    rank_ctx ctx[8];
    rank_ctx *bad = run_world(1, ctx, 0, TP_MEM_HOST, 0);
    ck_assert_ptr_nonnull(bad);
    ck_assert_int_eq(bad->status, TP_ERR_NOT_SUPPORTED);
    ck_assert_ptr_nonnull(strstr(bad->msg, "TP_DEVICE=cuda"));
}
END_TEST

START_TEST(test_same_gpu_refused)
{
    if (ndev < 2)
        return; /* needs world 2 <= GPUs to get past init */
    rank_ctx ctx[8];
    rank_ctx *bad = run_world(2, ctx, 1, TP_MEM_CUDA, 0);
    ck_assert_ptr_nonnull(bad);
    /* one rank names the duplicate; the other stops waiting for it */
    int dup = 0;
    for (int i = 0; i < 2; i++) {
        ck_assert_int_ne(ctx[i].status, TP_OK);
        if (ctx[i].status == TP_ERR_UNAVAILABLE && strstr(ctx[i].msg, "Duplicate GPU detected"))
            dup++;
    }
    ck_assert_int_eq(dup, 1);
}
END_TEST

START_TEST(test_timeout)
{
    if (ndev < 2)
        return; /* a second rank needs a second GPU */
    double saved = host.timeout_s;
    host.timeout_s = 3;
    rank_ctx ctx[8];
    run_world(2, ctx, 0, TP_MEM_CUDA, 1);
    host.timeout_s = saved;
    ck_assert_msg(ctx[0].status == TP_ERR_TIMEOUT, "rank 0: status %d: %s", (int)ctx[0].status,
                  ctx[0].msg);
    ck_assert_ptr_nonnull(strstr(ctx[0].msg, "TP_TIMEOUT_S"));
}
END_TEST

static int run_gpu(void)
{
    char why[256];
    if (!gpu_available(why, sizeof why)) {
        printf("SKIP: nccl unavailable: %s\n", why);
        return SKIP;
    }
    if (cudaGetDeviceCount(&ndev_all) != cudaSuccess || ndev_all < 1)
        return 1;
    ndev = ndev_all;
    if (ndev > 7)
        ndev = 7;
    Suite *s = suite_create("nccl-gpu");
    TCase *tc = tcase_create("nccl");
    tcase_set_timeout(tc, 0);
    tcase_add_test(tc, test_collectives);
    tcase_add_test(tc, test_more_ranks_than_gpus);
    tcase_add_test(tc, test_host_memory_refused);
    tcase_add_test(tc, test_same_gpu_refused);
    tcase_add_test(tc, test_timeout);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

/* ------------------------------------------------------ tool wrapper */

static int run_tool(int argc, char **argv)
{
    char why[256];
    if (!gpu_available(why, sizeof why)) {
        printf("SKIP: nccl unavailable: %s\n", why);
        return SKIP;
    }
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1)
        return 1;
    static const int sizes[] = {1, 2, 3, 4, 7};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        if (sizes[k] > n)
            continue;
        char ws[16];
        snprintf(ws, sizeof ws, "%d", sizes[k]);
        printf("== %s at TP_WORLD_SIZE=%s\n", argv[0], ws);
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            setenv("TP_BACKEND", "nccl", 1);
            setenv("TP_DEVICE", "cuda", 1);
            setenv("TP_WORLD_SIZE", ws, 1);
            execv(argv[0], argv);
            perror(argv[0]);
            _exit(127);
        }
        int wst = 0;
        if (pid < 0 || waitpid(pid, &wst, 0) < 0 || !WIFEXITED(wst) || WEXITSTATUS(wst) != 0) {
            printf("%s failed at TP_WORLD_SIZE=%s (status %d)\n", argv[0], ws, wst);
            return 1;
        }
    }
    (void)argc;
    return 0;
}

int main(int argc, char **argv)
{
    setenv("CK_FORK", "no", 1);
    load_plugin();
    const char *mode = argc > 1 ? argv[1] : "load";
    if (!strcmp(mode, "load"))
        return run_load();
    if (!strcmp(mode, "mpi"))
        return run_mpi();
    if (!strcmp(mode, "gpu"))
        return run_gpu();
    if (!strcmp(mode, "run") && argc > 2)
        return run_tool(argc - 2, argv + 2);
    fprintf(stderr, "usage: %s load | mpi | gpu | run TOOL [ARGS...]\n", argv[0]);
    return 2;
}
