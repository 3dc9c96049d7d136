/* SPDX-License-Identifier: MIT */
/*
 * cpu-error.c — error reporting and the argument checks every op of the
 * cpu device shares. A leaf: the other files call it, it calls none of
 * them.
 */
#include <stdint.h>

#include "cpu-internal.h"

/* Set by every open() (rank threads open concurrently, all with the same
 * host of the current context), read atomically. */
const tp_host *cpu_host;

TP_UTIL_DEFINE_ERROR(cpu_err, __atomic_load_n(&cpu_host, __ATOMIC_ACQUIRE), "cpu device")

tp_status cpu_check_dev(const void *dev, const char *op)
{
    return tp_util_check_dev(cpu_err, dev, op);
}

tp_status cpu_check_f32(tp_dtype dt, const char *op)
{
    if (dt == TP_F32)
        return TP_OK;
    if ((unsigned)dt >= TP_DTYPE_COUNT_)
        return cpu_err(TP_ERR_INVALID_ARG, "%s: dtype %d is not a tp_dtype", op, (int)dt);
    return cpu_err(TP_ERR_NOT_SUPPORTED,
                   "%s: dtype %s is not supported (expected f32, or bf16/f16 storage)", op,
                   tp_util_dtype_name(dt));
}

tp_status cpu_check_count(int64_t v, const char *op, const char *what)
{
    return tp_util_check_count(cpu_err, v, op, what);
}

/* Elements are f32 and sizes are size_t bytes. */
tp_status cpu_check_dims(const char *op, int64_t rows, int64_t cols, const char *rname,
                         const char *cname)
{
    return tp_util_check_dims(cpu_err, op, rows, cols, rname, cname,
                              (int64_t)(SIZE_MAX / sizeof(float)));
}

tp_status cpu_check_ptr(const void *p, int64_t count, const char *op, const char *what)
{
    return tp_util_check_ptr(cpu_err, p, count, op, what);
}

tp_status cpu_check_id_range(const char *op, int64_t lo, int64_t hi)
{
    return tp_util_check_id_range(cpu_err, op, lo, hi);
}
