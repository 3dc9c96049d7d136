/* SPDX-License-Identifier: MIT */
/* arith.c — bandwidth definitions, model coefficients, sample summaries;
 * bench_fail, the pure parts' error message helper. */
#include "bench.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int bench_fail(char *err, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (err && len)
        vsnprintf(err, len, fmt, ap);
    va_end(ap);
    return -1;
}

static const char *const op_names[TP_OP_COUNT] = {
    [TP_OP_ALL_REDUCE] = "all_reduce",
    [TP_OP_ALL_GATHER] = "all_gather",
    [TP_OP_REDUCE_SCATTER] = "reduce_scatter",
    [TP_OP_BROADCAST] = "broadcast",
    [TP_OP_BARRIER] = NULL, /* not swept: no payload */
};

const char *bench_op_name(int op)
{
    if (op < 0 || op >= TP_OP_COUNT)
        return NULL;
    return op_names[op];
}

int bench_op_from_name(const char *name)
{
    if (!name)
        return -1;
    for (int i = 0; i < TP_OP_COUNT; i++)
        if (op_names[i] && strcmp(op_names[i], name) == 0)
            return i;
    /* nccl-tests spellings */
    if (strcmp(name, "allreduce") == 0)
        return TP_OP_ALL_REDUCE;
    if (strcmp(name, "allgather") == 0)
        return TP_OP_ALL_GATHER;
    if (strcmp(name, "reducescatter") == 0)
        return TP_OP_REDUCE_SCATTER;
    return -1;
}

double bench_busbw_factor(int op, int nranks)
{
    if (nranks < 1)
        return 0.0;
    double n = nranks;
    switch (op) {
        case TP_OP_ALL_REDUCE: return 2.0 * (n - 1.0) / n;
        case TP_OP_ALL_GATHER:
        case TP_OP_REDUCE_SCATTER: return (n - 1.0) / n;
        case TP_OP_BROADCAST: return 1.0;
        default: return 0.0;
    }
}

double bench_algbw_gbps(double bytes, double seconds)
{
    if (!(seconds > 0.0))
        return 0.0;
    return bytes / seconds / 1e9;
}

double bench_busbw_gbps(int op, int nranks, double bytes, double seconds)
{
    return bench_algbw_gbps(bytes, seconds) * bench_busbw_factor(op, nranks);
}

double bench_model_lat_steps(int op, int p)
{
    if (p < 2)
        return 0.0;
    switch (op) {
        case TP_OP_ALL_REDUCE: return 2.0 * (p - 1);
        case TP_OP_ALL_GATHER:
        case TP_OP_REDUCE_SCATTER: return (double)(p - 1);
        case TP_OP_BROADCAST: return ceil(log2((double)p));
        default: return 0.0;
    }
}

double bench_model_bw_factor(int op, int p)
{
    if (p < 2)
        return 0.0;
    return bench_busbw_factor(op, p);
}

void bench_op_counts(int op, int nranks, size_t bytes, size_t elt, size_t *count_per_rank,
                     size_t *total_count, size_t *actual_bytes)
{
    size_t n = nranks < 1 ? 1 : (size_t)nranks;
    size_t per, total;
    if (elt == 0)
        elt = 1;
    if (op == TP_OP_ALL_GATHER || op == TP_OP_REDUCE_SCATTER) {
        per = bytes / (elt * n);
        if (per == 0)
            per = 1;
        total = per * n;
    } else {
        per = bytes / elt;
        if (per == 0)
            per = 1;
        total = per;
    }
    if (count_per_rank)
        *count_per_rank = per;
    if (total_count)
        *total_count = total;
    if (actual_bytes)
        *actual_bytes = total * elt;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

bench_summary bench_summarize(double *v, size_t n)
{
    bench_summary s = {0, 0, 0, 0};
    if (n == 0)
        return s;
    qsort(v, n, sizeof *v, cmp_double);
    s.min = v[0];
    s.max = v[n - 1];
    s.median = (n % 2) ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += v[i];
    s.mean = sum / (double)n;
    return s;
}

double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static const char *const redop_names[] = {[TP_SUM] = "sum", [TP_MAX] = "max", [TP_MIN] = "min"};

const char *bench_redop_name(int redop)
{
    return redop >= 0 && redop < (int)G_N_ELEMENTS(redop_names) ? redop_names[redop] : NULL;
}

int bench_redop_from_name(const char *name)
{
    for (int i = 0; name && i < (int)G_N_ELEMENTS(redop_names); i++)
        if (strcmp(redop_names[i], name) == 0)
            return i;
    return -1;
}

int bench_dtype_from_name(const char *name)
{
    static const struct {
        const char *name;
        tp_dtype dt;
    } names[] = {
        {"f32", TP_F32},       {"float", TP_F32}, {"float32", TP_F32}, {"bf16", TP_BF16},
        {"bfloat16", TP_BF16}, {"f16", TP_F16},   {"half", TP_F16},    {"float16", TP_F16},
        {"i32", TP_I32},       {"int32", TP_I32}, {"int", TP_I32},
    };
    for (size_t i = 0; name && i < G_N_ELEMENTS(names); i++)
        if (strcmp(names[i].name, name) == 0)
            return names[i].dt;
    return -1;
}

const char *bench_average_name(int average)
{
    static const char *const names[] = {"rank0", "mean", "min", "max"};
    return average >= 0 && average < 4 ? names[average] : NULL;
}

const char *bench_dtype_name(int dt)
{
    switch (dt) {
        case TP_F32: return "f32";
        case TP_F16: return "f16";
        case TP_BF16: return "bf16";
        case TP_I32: return "i32";
        default: return NULL;
    }
}
