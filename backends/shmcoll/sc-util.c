/* SPDX-License-Identifier: MIT */
/*
 * sc-util.c — collective names, argument checks, work shares, the clock,
 * CPU pauses, pinning and futex calls shared by loopback and shm.
 */
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <tp/tp-plugin-util.h>

#include "shmcoll.h"

static const char *const sc_kind_names[SC_KIND_COUNT] = {
    "(no collective yet)", "all_reduce", "all_gather", "reduce_scatter",
    "broadcast",           "barrier",    "split",      "mem_alloc"};

const char *sc_kind_name(int kind)
{
    return kind >= 0 && kind < SC_KIND_COUNT ? sc_kind_names[kind] : "?";
}

void sc_share(size_t n, size_t es, int nw, int w, size_t *lo, size_t *hi)
{
    size_t unit = SC_LINE / es;
    size_t units = n / unit + (n % unit != 0);
    size_t base = units / (size_t)nw, rem = units % (size_t)nw, uw = (size_t)w;
    size_t a = uw * base + (uw < rem ? uw : rem);
    size_t b = a + base + (uw < rem);
    *lo = a * unit < n ? a * unit : n;
    *hi = b * unit < n ? b * unit : n;
}

tp_status sc_bad(char *msg, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, len, fmt, ap);
    va_end(ap);
    return TP_ERR_INVALID_ARG;
}

/* dtype (and, if `reduces`, op) are valid; else the message in msg. */
static tp_status check_type(char *msg, size_t len, int dt, int op, bool reduces)
{
    if (!tp_util_dtype_size(dt))
        return sc_bad(msg, len,
                      "dtype %d is not a tp_dtype (expected TP_F32, TP_F16, TP_BF16 or TP_I32)",
                      dt);
    if (reduces && (op < 0 || op >= TP_REDOP_COUNT_))
        return sc_bad(msg, len,
                      "reduction op %d is not a tp_redop (expected TP_SUM, TP_MAX or TP_MIN)", op);
    return TP_OK;
}

/* Validate a counts array of `size` ranks; set *total and its FNV-1a hash. */
static tp_status check_counts(char *msg, size_t len, const size_t *counts, int size, size_t es,
                              size_t *total, uint64_t *hash)
{
    *total = 0;
    *hash = 0xcbf29ce484222325ull; /* FNV-1a over the counts */
    if (!counts)
        return sc_bad(msg, len, "counts is NULL; pass an array of %d per-rank element counts",
                      size);
    for (int r = 0; r < size; r++) {
        if (counts[r] > (SIZE_MAX / es - *total))
            return sc_bad(msg, len,
                          "counts overflow: the sum up to counts[%d] = %zu exceeds the address "
                          "space",
                          r, counts[r]);
        *total += counts[r];
        for (int k = 0; k < 8; k++) {
            *hash ^= (counts[r] >> (8 * k)) & 0xffu;
            *hash *= 0x100000001b3ull;
        }
    }
    return TP_OK;
}

/* The buffers of an all_gather or reduce_scatter: the whole (recv of
 * all_gather, send of reduce_scatter) and this rank's block. */
static tp_status check_v_buffers(const sc_os_op *o, char *msg, size_t len)
{
    bool gather = o->kind == SC_ALL_GATHER;
    if (o->count && !(gather ? o->recv : o->send))
        return gather
                   ? sc_bad(msg, len, "recv buffer is NULL but the gathered size is %zu elements",
                            o->count)
                   : sc_bad(msg, len, "send buffer is NULL but it should hold %zu elements",
                            o->count);
    if (o->counts[o->rank] && !(gather ? o->send : o->recv))
        return sc_bad(msg, len, "%s buffer is NULL but counts[%d] = %zu", gather ? "send" : "recv",
                      o->rank, o->counts[o->rank]);
    return TP_OK;
}

sc_os_op sc_call_all_reduce(const void *send, void *recv, size_t count, int dt, int op)
{
    return (sc_os_op){.kind = SC_ALL_REDUCE,
                      .dt = dt,
                      .op = op,
                      .root = -1,
                      .count = count,
                      .send = send,
                      .recv = recv};
}

sc_os_op sc_call_all_gather(const void *send, void *recv, const size_t *counts, int dt)
{
    return (sc_os_op){.kind = SC_ALL_GATHER,
                      .dt = dt,
                      .op = -1,
                      .root = -1,
                      .counts = counts,
                      .send = send,
                      .recv = recv};
}

sc_os_op sc_call_reduce_scatter(const void *send, void *recv, const size_t *counts, int dt, int op)
{
    return (sc_os_op){.kind = SC_REDUCE_SCATTER,
                      .dt = dt,
                      .op = op,
                      .root = -1,
                      .counts = counts,
                      .send = send,
                      .recv = recv};
}

sc_os_op sc_call_broadcast(void *buf, size_t count, int dt, int root)
{
    return (sc_os_op){.kind = SC_BROADCAST,
                      .dt = dt,
                      .op = -1,
                      .root = root,
                      .count = count,
                      .send = buf,
                      .recv = buf};
}

tp_status sc_check_call(sc_os_op *o, char *msg, size_t len)
{
    msg[0] = '\0';
    bool reduces = o->kind == SC_ALL_REDUCE || o->kind == SC_REDUCE_SCATTER;
    tp_status bad = check_type(msg, len, o->dt, o->op, reduces);
    if (bad)
        return bad;
    size_t es = tp_util_dtype_size(o->dt);
    switch (o->kind) {
        case SC_ALL_GATHER:
        case SC_REDUCE_SCATTER:
            bad = check_counts(msg, len, o->counts, o->size, es, &o->count, &o->hash);
            return bad ? bad : check_v_buffers(o, msg, len);
        case SC_BROADCAST:
            if (o->root < 0 || o->root >= o->size)
                return sc_bad(msg, len, "root %d is out of range: expected 0..%d", o->root,
                              o->size - 1);
            if (o->count && !o->send)
                return sc_bad(msg, len, "buffer is NULL with count %zu", o->count);
            break;
        default: /* all_reduce */
            if (o->count && (!o->send || !o->recv))
                return sc_bad(msg, len, "%s buffer is NULL with count %zu",
                              o->send ? "recv" : "send", o->count);
    }
    if (o->count > SIZE_MAX / es)
        return sc_bad(msg, len, "count %zu overflows the address space", o->count);
    return TP_OK;
}

unsigned sc_agreed_fields(int kind)
{
    switch (kind) {
        case SC_ALL_REDUCE: return 1u | 2u | 4u;
        case SC_ALL_GATHER: return 2u | 16u;
        case SC_REDUCE_SCATTER: return 2u | 4u | 16u;
        case SC_BROADCAST: return 1u | 2u | 8u;
        case SC_MEM_ALLOC: return 1u; /* its bytes, as count */
        default: return 0;
    }
}

double sc_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void sc_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

void sc_futex_wait(atomic_uint *word, unsigned seen, double timeout, bool shared)
{
    if (timeout < 1e-6)
        timeout = 1e-6;
#if defined(__linux__)
    struct timespec ts = {(time_t)timeout, (long)((timeout - (double)(time_t)timeout) * 1e9)};
    syscall(SYS_futex, (unsigned *)word, shared ? FUTEX_WAIT : FUTEX_WAIT_PRIVATE, seen, &ts, NULL,
            0);
#else
    (void)word;
    (void)seen;
    (void)shared;
    struct timespec ts = {0, timeout > 1e-3 ? 1000000 : (long)(timeout * 1e9)};
    nanosleep(&ts, NULL);
#endif
}

void sc_futex_wake(atomic_uint *word, bool shared)
{
#if defined(__linux__)
    syscall(SYS_futex, (unsigned *)word, shared ? FUTEX_WAKE : FUTEX_WAKE_PRIVATE, INT_MAX, NULL,
            NULL, 0);
#else
    (void)word;
    (void)shared;
#endif
}

int sc_cpu_count(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

int sc_bind_self(int index, cpu_set_t *saved)
{
    pthread_t self = pthread_self();
    if (pthread_getaffinity_np(self, sizeof *saved, saved) != 0 || CPU_COUNT(saved) < 1)
        return -1;
    int k = index % CPU_COUNT(saved);
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, saved) || k-- > 0)
            continue;
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        return pthread_setaffinity_np(self, sizeof one, &one) == 0 ? cpu : -1;
    }
    return -1;
}

void sc_unbind_self(const cpu_set_t *saved)
{
    pthread_setaffinity_np(pthread_self(), sizeof *saved, saved);
}
