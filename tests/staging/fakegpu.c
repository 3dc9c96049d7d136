/* SPDX-License-Identifier: MIT */
/*
 * fakegpu.c — fixture device plugins for the staging tests.
 *
 * Built as libtp-fakegpu.so: a device that declares TP_MEM_CUDA and whose
 * "device pointers" are host addresses plus FAKE_OFFSET (1 << 47). Such an
 * address is outside the user half of the x86-64 / arm64 address space, so
 * a comm plugin (or the core) that dereferences it instead of going
 * through the device ops faults at once (ASan reports it as a SEGV). The
 * ops translate back before touching memory, so the data is real and
 * results can be compared element by element.
 *
 * Built with -DFAKE_HOST as libtp-fakehost.so: a host-memory device
 * (pointers are plain host addresses) whose upload and download fail. A
 * test reads and writes its buffers directly; any copy the core would make
 * to stage a collective fails with a message naming it.
 *
 * Built with -DFAKE_P2P as libtp-fakep2p.so: fakegpu plus the reduce slot,
 * so a comm that takes device memory through the device's ops (loopback)
 * runs its collectives on these pointers directly; its host_alloc fails,
 * so any staging by the core is an error.
 *
 * fakegpu has host_alloc/host_free (ordinary memory with a canary): the
 * core's staging buffers come from them.
 *
 * fakegpu and fakep2p declare a stream (so the core treats them as
 * asynchronous) and have event slots whose elapsed time is exactly
 * FAKE_EVENT_S per event pair, so a test can tell that counters hold event
 * time and not host wall time. Unloading aborts if an event was not
 * destroyed.
 *
 * Only what the tests need: the required slots, gemm as a plain f32 loop.
 */
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <tp/tp-plugin.h>

#ifdef FAKE_HOST
#define FAKE_NAME   "fakehost"
#define FAKE_OFFSET ((uintptr_t)0)
#define FAKE_KIND   TP_MEM_HOST
#define FAKE_DESC   "test fixture: a host-memory device that refuses upload and download"
#elif defined(FAKE_P2P)
#define FAKE_NAME   "fakep2p"
#define FAKE_OFFSET ((uintptr_t)1 << 47)
#define FAKE_KIND   TP_MEM_CUDA
#define FAKE_DESC   "test fixture: fakegpu with a reduce slot, so comms may work on its memory"
#else
#define FAKE_NAME   "fakegpu"
#define FAKE_OFFSET ((uintptr_t)1 << 47)
#define FAKE_KIND   TP_MEM_CUDA
#define FAKE_DESC   "test fixture: a CUDA-kind device whose pointers only its own ops may touch"
#endif

/* Host address behind a fake device pointer (NULL stays NULL). */
static void *H(const void *p)
{
    return p ? (void *)((uintptr_t)p - FAKE_OFFSET) : NULL;
}

static int fake_stream;        /* its address is the fake stream */
static atomic_int fake_events; /* events created and not destroyed (all ranks) */

static tp_status fake_open(const tp_host *host, const tp_device_args *args, void **dev,
                           tp_rank_env *env)
{
    *dev = (void *)host;
    env->mem_kind = FAKE_KIND;
    env->device_index = FAKE_KIND == TP_MEM_HOST ? -1 : args->local_index;
    env->stream = FAKE_KIND == TP_MEM_HOST ? NULL : (void *)&fake_stream;
    return TP_OK;
}

static void fake_close(void *dev)
{
}

/* When the module is unloaded (or the process ends) every rank has
 * closed: an event still alive is one the core leaked. */
__attribute__((destructor)) static void fake_unload(void)
{
    if (atomic_load(&fake_events) != 0)
        abort();
}

static tp_status fake_alloc(void *dev, size_t bytes, void **ptr)
{
    void *p = aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
    *ptr = NULL;
    if (!p)
        return ((const tp_host *)dev)
            ->set_error(TP_ERR_NO_MEMORY, FAKE_NAME ": alloc of %zu bytes failed", bytes);
    *ptr = (void *)((uintptr_t)p + FAKE_OFFSET);
    return TP_OK;
}

static void fake_free(void *dev, void *ptr)
{
    free(H(ptr));
}

#ifdef FAKE_HOST
static tp_status fake_upload(void *dev, void *dst, const void *src, size_t bytes)
{
    return ((const tp_host *)dev)
        ->set_error(TP_ERR_INTERNAL,
                    "fakehost: upload of %zu bytes: this host-memory device expects no copies "
                    "(the core must not stage collectives for host memory)",
                    bytes);
}

static tp_status fake_download(void *dev, void *dst, const void *src, size_t bytes)
{
    return ((const tp_host *)dev)
        ->set_error(TP_ERR_INTERNAL,
                    "fakehost: download of %zu bytes: this host-memory device expects no "
                    "copies (the core must not stage collectives for host memory)",
                    bytes);
}
#else
static tp_status fake_upload(void *dev, void *dst, const void *src, size_t bytes)
{
    memcpy(H(dst), src, bytes);
    return TP_OK;
}

static tp_status fake_download(void *dev, void *dst, const void *src, size_t bytes)
{
    memcpy(dst, H(src), bytes);
    return TP_OK;
}
#endif

static tp_status fake_copy_2d(void *dev, void *dst, size_t dpitch, const void *src, size_t spitch,
                              size_t width, size_t height)
{
    for (size_t r = 0; r < height; r++)
        memcpy((char *)H(dst) + r * dpitch, (const char *)H(src) + r * spitch, width);
    return TP_OK;
}

static tp_status fake_memset(void *dev, void *ptr, int value, size_t bytes)
{
    memset(H(ptr), value, bytes);
    return TP_OK;
}

static tp_status fake_sync(void *dev)
{
    return TP_OK;
}

static tp_status fake_gemm(void *dev, const tp_gemm_args *g)
{
    if (g->dtype != TP_F32)
        return ((const tp_host *)dev)
            ->set_error(TP_ERR_NOT_SUPPORTED, FAKE_NAME ": gemm takes f32 only, got dtype %d",
                        (int)g->dtype);
    for (int64_t b = 0; b < g->batch; b++) {
        const float *A = (const float *)H(g->a) + b * g->stride_a;
        const float *B = (const float *)H(g->b) + b * g->stride_b;
        float *C = (float *)H(g->c) + b * g->stride_c;
        for (int64_t i = 0; i < g->m; i++)
            for (int64_t j = 0; j < g->n; j++) {
                float acc = 0;
                for (int64_t p = 0; p < g->k; p++)
                    acc += (g->trans_a ? A[p * g->lda + i] : A[i * g->lda + p]) *
                           (g->trans_b ? B[j * g->ldb + p] : B[p * g->ldb + j]);
                float *c = &C[i * g->ldc + j];
                *c = g->alpha * acc + (g->beta != 0 ? g->beta * *c : 0);
            }
    }
    return TP_OK;
}

#ifndef FAKE_HOST
#ifdef FAKE_P2P
/* y = op(y, x) on fake pointers, every dtype: math in f32 (i32 exact),
 * f16/bf16 rounded to nearest even after each step */
static float fake_ld(tp_dtype dt, const void *p, int64_t i)
{
    if (dt == TP_F32)
        return ((const float *)p)[i];
    if (dt == TP_F16)
        return (float)((const _Float16 *)p)[i];
    uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void fake_st(tp_dtype dt, void *p, int64_t i, float f)
{
    uint32_t u;
    if (dt == TP_F32) {
        ((float *)p)[i] = f;
    } else if (dt == TP_F16) {
        ((_Float16 *)p)[i] = (_Float16)f;
    } else {
        memcpy(&u, &f, 4);
        ((uint16_t *)p)[i] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
}

static tp_status fake_reduce(void *dev, tp_dtype dt, tp_redop op, int64_t n, const void *x, void *y)
{
    const void *xs = H(x);
    void *ys = H(y);
    for (int64_t i = 0; i < n; i++) {
        if (dt == TP_I32) {
            int32_t a = ((const int32_t *)xs)[i], *b = (int32_t *)ys + i;
            *b = op == TP_SUM   ? (int32_t)((uint32_t)*b + (uint32_t)a)
                 : op == TP_MAX ? (a > *b ? a : *b)
                                : (a < *b ? a : *b);
            continue;
        }
        float a = fake_ld(dt, xs, i), b = fake_ld(dt, ys, i);
        fake_st(dt, ys, i, op == TP_SUM ? b + a : op == TP_MAX ? (a > b ? a : b) : (a < b ? a : b));
    }
    return TP_OK;
}

#endif

/* Events: a counter of records; any two make FAKE_EVENT_S (a test checks
 * the counters add exactly these). */
#define FAKE_EVENT_S 1e-3

static tp_status fake_event_create(void *dev, void **ev)
{
    *ev = calloc(1, sizeof(uint64_t));
    if (!*ev)
        return ((const tp_host *)dev)->set_error(TP_ERR_NO_MEMORY, FAKE_NAME ": event_create");
    atomic_fetch_add(&fake_events, 1);
    return TP_OK;
}

static tp_status fake_event_record(void *dev, void *ev)
{
    ++*(uint64_t *)ev;
    return TP_OK;
}

static tp_status fake_event_elapsed(void *dev, const void *a, const void *b, double *s)
{
    if (!*(const uint64_t *)a || !*(const uint64_t *)b)
        return ((const tp_host *)dev)
            ->set_error(TP_ERR_INVALID_ARG, FAKE_NAME ": elapsed of an event never recorded");
    *s = FAKE_EVENT_S;
    return TP_OK;
}

static void fake_event_destroy(void *dev, void *ev)
{
    atomic_fetch_sub(&fake_events, 1);
    free(ev);
}

#define CANARY 0x5eedf00dcafe1234ull

static tp_status fake_host_alloc(void *dev, size_t bytes, void **ptr)
{
    *ptr = NULL;
#ifdef FAKE_P2P
    return ((const tp_host *)dev)
        ->set_error(TP_ERR_INTERNAL,
                    "fakep2p: host_alloc of %zu bytes: the core staged a comm that takes this "
                    "device's memory",
                    bytes);
#else
    uint64_t *p = malloc(bytes + 64);
    if (!p)
        return ((const tp_host *)dev)
            ->set_error(TP_ERR_NO_MEMORY, FAKE_NAME ": host_alloc of %zu bytes failed", bytes);
    p[0] = CANARY;
    *ptr = (char *)p + 64;
    return TP_OK;
#endif
}

/* Frees only what host_alloc returned: a canary mismatch (memory from
 * elsewhere, or freed twice) aborts the test at once. */
static void fake_host_free(void *dev, void *ptr)
{
    if (!ptr)
        return;
    uint64_t *p = (uint64_t *)((char *)ptr - 64);
    if (p[0] != CANARY)
        abort();
    p[0] = 0;
    free(p);
}
#endif

static const tp_device_ops fake_ops = {
    .struct_size = sizeof(tp_device_ops),
    .open = fake_open,
    .close = fake_close,
    .alloc = fake_alloc,
    .free = fake_free,
    .upload = fake_upload,
    .download = fake_download,
    .copy_2d = fake_copy_2d,
    .memset = fake_memset,
    .synchronize = fake_sync,
    .gemm = fake_gemm,
#ifndef FAKE_HOST
    .host_alloc = fake_host_alloc,
    .host_free = fake_host_free,
    .event_create = fake_event_create,
    .event_record = fake_event_record,
    .event_elapsed = fake_event_elapsed,
    .event_destroy = fake_event_destroy,
#endif
#ifdef FAKE_P2P
    .reduce = fake_reduce,
#endif
};

TP_PLUGIN_DEFINE(FAKE_NAME, "0.1.0", FAKE_DESC, NULL, &fake_ops, NULL)
