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
 * Only what the tests need: the required slots, gemm as a plain f32 loop.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <tp/tp-plugin.h>

#ifdef FAKE_HOST
#define FAKE_NAME "fakehost"
#define FAKE_OFFSET ((uintptr_t)0)
#define FAKE_KIND TP_MEM_HOST
#define FAKE_DESC "test fixture: a host-memory device that refuses upload and download"
#else
#define FAKE_NAME "fakegpu"
#define FAKE_OFFSET ((uintptr_t)1 << 47)
#define FAKE_KIND TP_MEM_CUDA
#define FAKE_DESC "test fixture: a CUDA-kind device whose pointers only its own ops may touch"
#endif

/* Host address behind a fake device pointer (NULL stays NULL). */
static void *H(const void *p)
{
    return p ? (void *)((uintptr_t)p - FAKE_OFFSET) : NULL;
}

static tp_status fake_open(const tp_host *host, const tp_device_args *args, void **dev,
                           tp_rank_env *env)
{
    *dev = (void *)host;
    env->mem_kind = FAKE_KIND;
    env->device_index = FAKE_KIND == TP_MEM_HOST ? -1 : args->local_index;
    env->stream = NULL;
    return TP_OK;
}

static void fake_close(void *dev)
{
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
};

TP_PLUGIN_DEFINE(FAKE_NAME, "0.1.0",
                 FAKE_DESC,
                 NULL, &fake_ops, NULL)
