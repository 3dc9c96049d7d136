/* SPDX-License-Identifier: MIT */
/*
 * cpu-device.c — the cpu device's lifetime, memory and copies. Everything
 * runs synchronously on the rank's own thread; memory is ordinary host
 * memory.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu-internal.h"

#define CPU_ALIGN 64

tp_status cpu_open(const tp_host *host, const tp_device_args *args, void **dev, tp_rank_env *env)
{
    cpu_dev *d;

    if (host) /* the current context's: a new tp_init may bring a new host */
        __atomic_store_n(&cpu_host, host, __ATOMIC_RELEASE);
    if (!host || !dev || !env)
        return cpu_err(TP_ERR_INVALID_ARG, "open: host, dev and env must not be NULL");
    if (env->struct_size < sizeof(tp_rank_env))
        return cpu_err(TP_ERR_INVALID_ARG, "open: env->struct_size %zu < %zu (core too old?)",
                       env->struct_size, sizeof(tp_rank_env));
    d = calloc(1, sizeof *d);
    if (!d)
        return cpu_err(TP_ERR_NO_MEMORY, "open: out of memory for the device context");
    d->host = host;
    d->rank = args ? args->world_rank : 0;
    /* Ranks are the parallelism: one BLAS thread per rank unless asked. */
    d->threads = (args && args->threads > 0) ? args->threads : 1;
    cpu_blas_threads(d->threads);
    if (host->debug)
        host->debug("device", "cpu device: rank %d opened, %d BLAS thread(s)", d->rank, d->threads);
    env->mem_kind = TP_MEM_HOST;
    env->device_index = -1;
    env->stream = NULL;
    *dev = d;
    return TP_OK;
}

void cpu_close(void *dev)
{
    cpu_dev *d = dev;
    if (d)
        for (int i = 0; i < CPU_LP_SLOTS; i++)
            free(d->lp[i]);
    free(dev);
}

tp_status cpu_alloc(void *dev, size_t bytes, void **ptr)
{
    void *p = NULL;
    int rc;

    if (cpu_check_dev(dev, "alloc"))
        return TP_ERR_INVALID_ARG;
    if (!ptr)
        return cpu_err(TP_ERR_INVALID_ARG, "alloc: ptr is NULL");
    *ptr = NULL;
    /* Size 0 still gets a real, freeable block so pointers stay distinct. */
    rc = posix_memalign(&p, CPU_ALIGN, bytes ? bytes : CPU_ALIGN);
    if (rc != 0 || !p)
        return cpu_err(TP_ERR_NO_MEMORY,
                       "alloc: %zu bytes (64-byte aligned) failed: %s; "
                       "reduce the model or batch size",
                       bytes, strerror(rc ? rc : ENOMEM));
    *ptr = p;
    return TP_OK;
}

void cpu_free(void *dev, void *ptr)
{
    free(ptr);
}

static tp_status cpu_copy_args(void *dev, const char *op, const void *dst, const void *src,
                               size_t bytes)
{
    if (cpu_check_dev(dev, op))
        return TP_ERR_INVALID_ARG;
    if (bytes && (!dst || !src))
        return cpu_err(TP_ERR_INVALID_ARG, "%s: %s is NULL with %zu bytes to copy", op,
                       dst ? "source" : "destination", bytes);
    return TP_OK;
}

tp_status cpu_upload(void *dev, void *dst, const void *host_src, size_t bytes)
{
    tp_status st = cpu_copy_args(dev, "upload", dst, host_src, bytes);

    if (st == TP_OK && bytes)
        memmove(dst, host_src, bytes);
    return st;
}

tp_status cpu_download(void *dev, void *host_dst, const void *src, size_t bytes)
{
    tp_status st = cpu_copy_args(dev, "download", host_dst, src, bytes);

    if (st == TP_OK && bytes)
        memmove(host_dst, src, bytes);
    return st;
}

tp_status cpu_copy_2d(void *dev, void *dst, size_t dpitch, const void *src, size_t spitch,
                      size_t width_bytes, size_t height)
{
    tp_status st;

    if (height && width_bytes > SIZE_MAX / height)
        return cpu_err(TP_ERR_INVALID_ARG, "copy_2d: width %zu x height %zu overflows size_t",
                       width_bytes, height);
    st = cpu_copy_args(dev, "copy_2d", dst, src, width_bytes * height);
    if (st != TP_OK)
        return st;
    if (height > 1 && (dpitch < width_bytes || spitch < width_bytes))
        return cpu_err(TP_ERR_INVALID_ARG,
                       "copy_2d: pitches must be >= width (%zu bytes), got dpitch %zu, spitch %zu",
                       width_bytes, dpitch, spitch);
    for (size_t r = 0; r < height && width_bytes; r++)
        memcpy((char *)dst + r * dpitch, (const char *)src + r * spitch, width_bytes);
    return TP_OK;
}

tp_status cpu_memset(void *dev, void *ptr, int value, size_t bytes)
{
    tp_status st = cpu_copy_args(dev, "memset", ptr, ptr, bytes);

    if (st == TP_OK && bytes)
        memset(ptr, value, bytes);
    return st;
}

tp_status cpu_synchronize(void *dev)
{
    return cpu_check_dev(dev, "synchronize");
}
