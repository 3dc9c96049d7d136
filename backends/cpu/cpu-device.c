/*
 * cpu-device.c — the cpu device plugin: lifetime, memory, copies, the
 * vtable and the plugin descriptor. Everything runs synchronously on the
 * rank's own thread; memory is ordinary host memory.
 */
#include <errno.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu-internal.h"

#define CPU_ALIGN 64

/* Set by every open() (rank threads open concurrently, all with the same
 * host of the current context), read atomically. */
const tp_host *cpu_host;

tp_status cpu_err(tp_status st, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    const tp_host *host = __atomic_load_n(&cpu_host, __ATOMIC_ACQUIRE);

    if (!host || !host->set_error)
        return st;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return host->set_error(st, "cpu device: %s", msg);
}

const char *cpu_dtype_name(tp_dtype dt)
{
    switch (dt) {
    case TP_F32: return "f32";
    case TP_F16: return "f16";
    case TP_BF16: return "bf16";
    case TP_I32: return "i32";
    default: return "invalid dtype";
    }
}

tp_status cpu_check_dev(const void *dev, const char *op)
{
    if (!dev)
        return cpu_err(TP_ERR_INVALID_ARG, "%s: device handle is NULL (was open() successful?)", op);
    return TP_OK;
}

tp_status cpu_check_f32(tp_dtype dt, const char *op)
{
    if (dt == TP_F32)
        return TP_OK;
    if ((unsigned)dt >= TP_DTYPE_COUNT_)
        return cpu_err(TP_ERR_INVALID_ARG, "%s: dtype %d is not a tp_dtype", op, (int)dt);
    return cpu_err(TP_ERR_NOT_SUPPORTED,
                   "%s: dtype %s is not supported (expected f32, or bf16/f16 storage)", op,
                   cpu_dtype_name(dt));
}

tp_status cpu_check_count(int64_t v, const char *op, const char *what)
{
    if (v < 0)
        return cpu_err(TP_ERR_INVALID_ARG, "%s: %s = %lld, expected >= 0", op, what, (long long)v);
    return TP_OK;
}

tp_status cpu_check_dims(const char *op, int64_t rows, int64_t cols, const char *rname,
                         const char *cname)
{
    tp_status st;

    if ((st = cpu_check_count(rows, op, rname)) || (st = cpu_check_count(cols, op, cname)))
        return st;
    if (cols > 0 && rows > (int64_t)(SIZE_MAX / sizeof(float)) / cols)
        return cpu_err(TP_ERR_INVALID_ARG, "%s: %s %lld x %s %lld elements overflow", op, rname,
                       (long long)rows, cname, (long long)cols);
    return TP_OK;
}

tp_status cpu_check_ptr(const void *p, int64_t count, const char *op, const char *what)
{
    if (!p && count > 0)
        return cpu_err(TP_ERR_INVALID_ARG, "%s: %s is NULL but %lld elements are needed", op, what,
                       (long long)count);
    return TP_OK;
}

static tp_status cpu_open(const tp_host *host, const tp_device_args *args, void **dev,
                          tp_rank_env *env)
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

static void cpu_close(void *dev)
{
    free(dev);
}

static tp_status cpu_alloc(void *dev, size_t bytes, void **ptr)
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
        return cpu_err(TP_ERR_NO_MEMORY, "alloc: %zu bytes (64-byte aligned) failed: %s; "
                       "reduce the model or batch size", bytes, strerror(rc ? rc : ENOMEM));
    *ptr = p;
    return TP_OK;
}

static void cpu_free(void *dev, void *ptr)
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

static tp_status cpu_upload(void *dev, void *dst, const void *host_src, size_t bytes)
{
    tp_status st = cpu_copy_args(dev, "upload", dst, host_src, bytes);

    if (st == TP_OK && bytes)
        memmove(dst, host_src, bytes);
    return st;
}

static tp_status cpu_download(void *dev, void *host_dst, const void *src, size_t bytes)
{
    tp_status st = cpu_copy_args(dev, "download", host_dst, src, bytes);

    if (st == TP_OK && bytes)
        memmove(host_dst, src, bytes);
    return st;
}

static tp_status cpu_copy_2d(void *dev, void *dst, size_t dpitch, const void *src, size_t spitch,
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

static tp_status cpu_memset(void *dev, void *ptr, int value, size_t bytes)
{
    tp_status st = cpu_copy_args(dev, "memset", ptr, ptr, bytes);

    if (st == TP_OK && bytes)
        memset(ptr, value, bytes);
    return st;
}

static tp_status cpu_synchronize(void *dev)
{
    return cpu_check_dev(dev, "synchronize");
}

static const tp_device_ops cpu_ops = {
    .struct_size = sizeof(tp_device_ops),
    .open = cpu_open,
    .close = cpu_close,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .copy_2d = cpu_copy_2d,
    .memset = cpu_memset,
    .synchronize = cpu_synchronize,
    .gemm = cpu_lp_gemm,
    .bias_add = cpu_lp_bias_add,
    .bias_grad = cpu_lp_bias_grad,
    .gelu = cpu_lp_gelu,
    .gelu_bwd = cpu_lp_gelu_bwd,
    .axpby = cpu_lp_axpby,
    .softmax = cpu_lp_softmax,
    .softmax_bwd = cpu_lp_softmax_bwd,
    .norm = cpu_lp_norm,
    .norm_bwd = cpu_lp_norm_bwd,
    .embedding = cpu_lp_embedding,
    .embedding_bwd = cpu_lp_embedding_bwd,
    .row_max = cpu_lp_row_max,
    .ce_stats = cpu_lp_ce_stats,
    .ce_bwd = cpu_lp_ce_bwd,
    .adamw = cpu_adamw,
    .reduce = cpu_lp_reduce,
    .gemm_bias_act = cpu_lp_gemm_bias_act,
};

TP_PLUGIN_DEFINE("cpu", "0.1.0",
                 "host memory, OpenBLAS sgemm and C kernels (f32; bf16/f16 storage)", NULL,
                 &cpu_ops, NULL)
