/* SPDX-License-Identifier: MIT */
/*
 * fixture.c — test plugins for the loader tests, one file built many ways.
 *
 * With FIX_COMM it is a small working communicator (threads of one
 * process, shared memory, f32 only; all_gather, reduce_scatter and barrier
 * are left NULL so the core's fallbacks run). With FIX_DEVICE it is a
 * host-memory device with a plain-loop f32 GEMM and bias_add only. The
 * other FIX_* macros break it in the ways the loader must refuse, or make
 * it crash or hang (tests/faults): FIX_SEGV_ALL_REDUCE, rank 1 faults in
 * its third all_reduce; FIX_HANG_ALL_REDUCE, rank 1 never returns from its
 * second; FIX_SLOW_ALL_REDUCE, every rank's second all_reduce takes 8 s
 * while reporting progress (tp_host.progress); FIX_SEGV_GEMM, a rank faults
 * in its second gemm.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <tp/tp-plugin.h>

#ifndef FIX_NAME
#error "FIX_NAME must be set"
#endif
#ifndef FIX_DESC_NAME
#define FIX_DESC_NAME FIX_NAME
#endif
#ifndef FIX_VERSION
#define FIX_VERSION "1.0"
#endif
#ifndef FIX_ABI_MAJOR
#define FIX_ABI_MAJOR TP_ABI_MAJOR
#endif
#ifndef FIX_ABI_MINOR
#define FIX_ABI_MINOR TP_ABI_MINOR
#endif
#ifndef FIX_DESC_SIZE
#define FIX_DESC_SIZE sizeof(tp_plugin_desc)
#endif

#define MAX_RANKS 64

/* ------------------------------------------------------------ comm */

typedef struct engine {
    const tp_host *host;
    int n;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned long gen;
    int arrived, left;
    void *bufs[MAX_RANKS];
} engine;

typedef struct fcomm {
    engine *e;
    int rank;
    int all_reduces; /* calls so far, for the FIX_*_ALL_REDUCE faults */
} fcomm;

/* A real fault (not raise()): a store to an address nothing maps. */
__attribute__((unused)) static void fault(void)
{
    volatile uintptr_t addr = 8; /* volatile: the compiler cannot see it is bad */
    *(volatile int *)addr = 1;
}

static tp_status fix_init(const tp_host *host, const tp_engine_args *args, void **out,
                          tp_engine_info *info)
{
    int n = args->world_size ? args->world_size : 1;
    const char *force = getenv("FIXTURE_WORLD"); /* an engine that decides for itself */
    if (force)
        n = atoi(force);
    if (n < 1 || n > MAX_RANKS)
        return host->set_error(TP_ERR_INVALID_ARG, "fixture: world size %d not in 1..%d", n,
                               MAX_RANKS);
    engine *e = calloc(1, sizeof *e);
    if (!e)
        return host->set_error(TP_ERR_NO_MEMORY,
                               "fixture: cannot allocate %zu bytes for the engine", sizeof *e);
    e->host = host;
    e->n = n;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    info->world_size = n;
    info->local_count = n;
    info->first_rank = 0;
    *out = e;
    return TP_OK;
}

static void fix_finalize(void *engine_)
{
    engine *e = engine_;
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e);
}

static tp_status fix_world(void *engine_, int local_index, const tp_rank_env *env, void **comm,
                           int *rank, int *size)
{
    engine *e = engine_;
    const char *how = getenv("FIXTURE_WORLD_COMM"); /* "null": TP_OK without a communicator */
    if (how && !strcmp(how, "null")) {
        *comm = NULL, *rank = local_index, *size = e->n;
        return TP_OK;
    }
    fcomm *c = calloc(1, sizeof *c);
    if (!c)
        return e->host->set_error(
            TP_ERR_NO_MEMORY, "fixture: cannot allocate %zu bytes for a communicator", sizeof *c);
    pthread_mutex_lock(&e->mu);
    if (e->left == e->n) /* every rank of the previous tp_run has left */
        e->left = 0;
    pthread_mutex_unlock(&e->mu);
    c->e = e;
    c->rank = local_index;
    *comm = c;
    *rank = local_index;
    *size = e->n;
    return TP_OK;
}

/* Not implemented; FIXTURE_SPLIT=null: TP_OK without a communicator. */
static tp_status fix_split(void *comm, int color, int key, void **newcomm, int *rank, int *size)
{
    fcomm *c = comm;
    const char *how = getenv("FIXTURE_SPLIT");
    if (how && !strcmp(how, "null")) {
        *newcomm = NULL, *rank = 0, *size = 1;
        return TP_OK;
    }
    return c->e->host->set_error(TP_ERR_NOT_SUPPORTED, "fixture: split is not implemented");
}

static void fix_comm_free(void *comm)
{
    fcomm *c = comm;
    pthread_mutex_lock(&c->e->mu);
    c->e->left++;
    pthread_cond_broadcast(&c->e->cv);
    pthread_mutex_unlock(&c->e->mu);
    free(c);
}

/* Wait for every rank; fail fast if one left, time out after timeout_s. */
static tp_status fix_barrier(fcomm *c)
{
    engine *e = c->e;
    tp_status st = TP_OK;
    pthread_mutex_lock(&e->mu);
    unsigned long gen = e->gen;
    if (e->left) {
        st = TP_ERR_PEER;
    } else if (++e->arrived == e->n) {
        e->arrived = 0;
        e->gen++;
        pthread_cond_broadcast(&e->cv);
    } else {
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        double t = e->host->timeout_s;
        dl.tv_sec += (time_t)t;
        dl.tv_nsec += (long)((t - (double)(time_t)t) * 1e9);
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
        while (gen == e->gen && !e->left && !st)
            if (pthread_cond_timedwait(&e->cv, &e->mu, &dl) == ETIMEDOUT)
                st = TP_ERR_TIMEOUT;
        if (gen == e->gen) {
            e->arrived--;
            if (!st)
                st = TP_ERR_PEER;
        } else {
            st = TP_OK;
        }
    }
    pthread_mutex_unlock(&e->mu);
    if (st == TP_ERR_PEER)
        return e->host->set_error(st, "fixture: rank %d: a peer left the communicator", c->rank);
    if (st == TP_ERR_TIMEOUT)
        return e->host->set_error(st, "fixture: rank %d: peers did not arrive within %g s", c->rank,
                                  e->host->timeout_s);
    return TP_OK;
}

__attribute__((unused)) static tp_status fix_all_reduce(void *comm, const void *send, void *recv,
                                                        size_t count, tp_dtype dt, tp_redop op)
{
    fcomm *c = comm;
    engine *e = c->e;
    c->all_reduces++;
#ifdef FIX_SEGV_ALL_REDUCE
    if (c->rank == 1 && c->all_reduces == 3)
        fault();
#endif
#ifdef FIX_HANG_ALL_REDUCE
    while (c->rank == 1 && c->all_reduces == 2)
        sleep(1000);
#endif
#ifdef FIX_SLOW_ALL_REDUCE
    /* Every rank's second all_reduce takes 8 s, reporting progress every
     * 0.25 s: longer than the watchdog's limit, never that long without
     * progress. */
    for (int i = 0; c->all_reduces == 2 && i < 32; i++) {
        usleep(250000);
        e->host->progress();
    }
#endif
    if (dt != TP_F32)
        return e->host->set_error(TP_ERR_NOT_SUPPORTED, "fixture: all_reduce is f32 only");
    float *tmp = malloc(count ? count * sizeof(float) : 1);
    if (!tmp)
        return e->host->set_error(TP_ERR_NO_MEMORY,
                                  "fixture: cannot allocate %zu bytes to reduce into",
                                  count * sizeof(float));
    e->bufs[c->rank] = (void *)send;
    tp_status st = fix_barrier(c);
    for (size_t i = 0; i < count && !st; i++) {
        float acc = ((const float *)e->bufs[0])[i];
        for (int r = 1; r < e->n; r++) {
            float v = ((const float *)e->bufs[r])[i];
            acc = op == TP_SUM ? acc + v : op == TP_MAX ? (v > acc ? v : acc) : (v < acc ? v : acc);
        }
        tmp[i] = acc;
    }
    if (!st)
        st = fix_barrier(c);
    if (!st && count)
        memcpy(recv, tmp, count * sizeof(float));
    free(tmp);
    return st;
}

static tp_status fix_broadcast(void *comm, void *buf, size_t count, tp_dtype dt, int root)
{
    fcomm *c = comm;
    engine *e = c->e;
    size_t es = dt == TP_F32 || dt == TP_I32 ? 4 : 2;
    e->bufs[c->rank] = buf;
    tp_status st = fix_barrier(c);
    if (!st && c->rank != root && count)
        memcpy(buf, e->bufs[root], count * es);
    if (!st)
        st = fix_barrier(c);
    return st;
}

#ifdef FIX_HALF_NB
static tp_status fix_req_wait(void *comm, void *req)
{
    (void)comm;
    (void)req;
    return TP_OK;
}
#endif

#ifdef FIX_HALF_MEM
static void fix_mem_free(void *comm, void *ptr)
{
    (void)comm;
    (void)ptr;
}
#endif

/* Newer-minor plugins have slots past the end of tp_comm_ops. */
static const struct __attribute__((unused)) {
    tp_comm_ops ops;
    void (*future_slot[4])(void);
} fix_comm = {{
#if defined(FIX_COMM_SIZE)
                  FIX_COMM_SIZE,
#elif defined(FIX_BIG_OPS)
                  sizeof fix_comm,
#else
                  sizeof(tp_comm_ops),
#endif
                  .init = fix_init,
                  .finalize = fix_finalize,
                  .world = fix_world,
                  .split = fix_split,
                  .comm_free = fix_comm_free,
#ifndef FIX_NO_ALL_REDUCE
                  .all_reduce = fix_all_reduce,
#endif
                  .broadcast = fix_broadcast,
#ifdef FIX_HALF_NB /* one nonblocking slot of six: refused */
                  .req_wait = fix_req_wait,
#endif
#ifdef FIX_HALF_MEM /* mem_free without mem_alloc: refused */
                  .mem_free = fix_mem_free,
#endif
              },
              {0}};

/* ----------------------------------------------------------- device */

static tp_status dev_open(const tp_host *host, const tp_device_args *args, void **dev,
                          tp_rank_env *env)
{
    if (getenv("FIXTURE_FAIL_OPEN") && atoi(getenv("FIXTURE_FAIL_OPEN")) == args->world_rank)
        return host->set_error(TP_ERR_DEVICE, "fixture: device of rank %d failed as asked",
                               args->world_rank);
    *dev = (void *)host;
    env->mem_kind = TP_MEM_HOST;
    env->device_index = -1;
    env->stream = NULL;
    return TP_OK;
}

static void dev_close(void *dev)
{
}

static tp_status dev_alloc(void *dev, size_t bytes, void **ptr)
{
    *ptr = aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
    if (!*ptr)
        return ((const tp_host *)dev)
            ->set_error(TP_ERR_NO_MEMORY, "fixture: cannot allocate %zu bytes", bytes);
    return TP_OK;
}

static void dev_free(void *dev, void *ptr)
{
    free(ptr);
}

static tp_status dev_copy(void *dev, void *dst, const void *src, size_t bytes)
{
    memcpy(dst, src, bytes);
    return TP_OK;
}

static tp_status dev_copy_2d(void *dev, void *dst, size_t dpitch, const void *src, size_t spitch,
                             size_t width, size_t height)
{
    for (size_t r = 0; r < height; r++)
        memcpy((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
    return TP_OK;
}

static tp_status dev_memset(void *dev, void *ptr, int value, size_t bytes)
{
    memset(ptr, value, bytes);
    return TP_OK;
}

static tp_status dev_sync(void *dev)
{
    return TP_OK;
}

static tp_status dev_gemm(void *dev, const tp_gemm_args *g)
{
#ifdef FIX_SEGV_GEMM
    static _Thread_local int calls;
    if (++calls == 2)
        fault();
#endif
    if (g->dtype != TP_F32)
        return ((const tp_host *)dev)->set_error(TP_ERR_NOT_SUPPORTED, "fixture: gemm is f32 only");
    for (int64_t b = 0; b < g->batch; b++) {
        const float *A = (const float *)g->a + b * g->stride_a;
        const float *B = (const float *)g->b + b * g->stride_b;
        float *C = (float *)g->c + b * g->stride_c;
        for (int64_t i = 0; i < g->m; i++)
            for (int64_t j = 0; j < g->n; j++) {
                float acc = 0;
                for (int64_t p = 0; p < g->k; p++)
                    acc += (g->trans_a ? A[p * g->lda + i] : A[i * g->lda + p]) *
                           (g->trans_b ? B[j * g->ldb + p] : B[p * g->ldb + j]);
                float *cij = &C[i * g->ldc + j];
                *cij = g->alpha * acc + (g->beta != 0 ? g->beta * *cij : 0);
            }
    }
    return TP_OK;
}

static tp_status dev_bias_add(void *dev, tp_dtype dt, int64_t rows, int64_t cols, void *y,
                              const void *bias)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            ((float *)y)[r * cols + c] += ((const float *)bias)[c];
    return TP_OK;
}

static const tp_device_ops fix_device __attribute__((unused)) = {
    .struct_size = sizeof(tp_device_ops),
    .open = dev_open,
    .close = dev_close,
    .alloc = dev_alloc,
    .free = dev_free,
    .upload = dev_copy,
    .download = dev_copy,
    .copy_2d = dev_copy_2d,
    .memset = dev_memset,
    .synchronize = dev_sync,
    .gemm = dev_gemm,
    .bias_add = dev_bias_add,
};

/* ------------------------------------------------------- descriptor */

#ifdef FIX_PROBE_NO
static int fix_probe(char *reason, size_t len)
{
    strncpy(reason, "fixture: the frobnicator is not plugged in", len);
    return 0;
}
#else
#define fix_probe NULL
#endif

#ifdef FIX_COMM
#define COMM_OPS (&fix_comm.ops)
#else
#define COMM_OPS NULL
#endif
#ifdef FIX_DEVICE
#define DEVICE_OPS (&fix_device)
#else
#define DEVICE_OPS NULL
#endif

#if defined(FIX_NO_ENTRY)
/* Exports a symbol, just not the entry point. */
TP_PLUGIN_EXPORT const tp_plugin_desc *tp_plugin_get_desc_v0(void);
TP_PLUGIN_EXPORT const tp_plugin_desc *tp_plugin_get_desc_v0(void)
{
    return NULL;
}
#elif defined(FIX_NULL_ENTRY)
TP_PLUGIN_EXPORT const tp_plugin_desc *tp_plugin_get_desc_v1(void);
TP_PLUGIN_EXPORT const tp_plugin_desc *tp_plugin_get_desc_v1(void)
{
    return NULL;
}
#elif defined(FIX_MANUAL_DESC)
TP_PLUGIN_EXPORT const tp_plugin_desc *tp_plugin_get_desc_v1(void);
TP_PLUGIN_EXPORT const tp_plugin_desc *tp_plugin_get_desc_v1(void)
{
    static const tp_plugin_desc desc = {FIX_DESC_SIZE, FIX_ABI_MAJOR, FIX_ABI_MINOR,
                                        FIX_DESC_NAME, FIX_VERSION,   "loader test fixture",
                                        COMM_OPS,      DEVICE_OPS,    fix_probe};
    return &desc;
}
#else
TP_PLUGIN_DEFINE(FIX_NAME, FIX_VERSION, "loader test fixture", COMM_OPS, DEVICE_OPS, fix_probe)
#endif
