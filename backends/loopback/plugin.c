/* SPDX-License-Identifier: MIT */
/*
 * plugin.c — the loopback engine (init/finalize) and the plugin descriptor.
 */
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loopback.h"

static tp_status lb_init(const tp_host *host, const tp_engine_args *args, void **engine,
                         tp_engine_info *info)
{
    int n = args ? args->world_size : 0;
    if (n == 0)
        n = 1;
    if (n < 1 || n > LB_MAX_RANKS)
        return host->set_error(TP_ERR_INVALID_ARG,
                               "loopback: world size %d is out of range: expected 1..%d ranks "
                               "(threads of this process); set TP_WORLD_SIZE or --tp to a value "
                               "in that range",
                               n, LB_MAX_RANKS);
    lb_engine *eng = calloc(1, sizeof *eng);
    if (!eng)
        return host->set_error(TP_ERR_NO_MEMORY, "loopback: out of memory creating the engine");
    eng->host = host;
    eng->world_size = n;
    eng->timeout_s = host->timeout_s > 0 ? host->timeout_s : 300.0;
    /* The measurements behind these defaults are in docs/performance.md
     * ("Measurements behind loopback's engine defaults"). */
    int ncpu = sc_cpu_count();
    /* Spin a few microseconds (200 pauses) before yielding: a peer that is
     * coming arrives within that on an idle machine; when ranks outnumber
     * CPUs the CPU is better given to the rank being waited for.
     * TP_LOOPBACK_SPIN overrides (a tuning knob). */
    eng->spin_limit = n > ncpu ? 16 : 200;
    /* When ranks fill or outnumber the CPUs, pin rank i's thread to allowed
     * CPU i mod ncpu (as mpirun binds ranks to cores): otherwise a loaded
     * machine's scheduler may stack ranks on one CPU while another has
     * fewer, and barriers then wait for context switches. With CPUs to
     * spare the scheduler places threads well, and pinning would stack
     * concurrent jobs on the first CPUs. Undone when the rank leaves.
     * TP_LOOPBACK_BIND=0 turns it off, =1 forces it. */
    const char *bind = getenv("TP_LOOPBACK_BIND");
    eng->bind = bind && *bind ? strcmp(bind, "0") != 0 : n >= 2 && n >= ncpu;
    const char *sp = getenv("TP_LOOPBACK_SPIN");
    if (sp && *sp)
        eng->spin_limit = (unsigned)strtoul(sp, NULL, 0);
    /* Store results with non-temporal stores once an op writes more than
     * the last-level cache holds (as glibc's memcpy does): they would be
     * evicted before anyone reads them. The size the system reports is
     * taken as it is. TP_LOOPBACK_STREAM_BYTES overrides. */
    long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (llc <= 0)
        llc = sysconf(_SC_LEVEL2_CACHE_SIZE);
    eng->stream_bytes = llc > 0 ? (size_t)llc : (size_t)32 << 20;
    const char *sb = getenv("TP_LOOPBACK_STREAM_BYTES"); /* tuning knob, bytes */
    if (sb && *sb)
        eng->stream_bytes = (size_t)strtoull(sb, NULL, 0);
    /* Collectives up to small_bytes take the one-shot path (no barrier), at
     * the price of every rank copying its input once more and reducing the
     * whole vector. Measured (docs/performance.md, "One-shot small
     * collectives"): decode-shaped calls (input just written, result read,
     * test-loopback-direct decode) at T=2 are 1.4x faster one-shot at 1
     * and 2 KiB and 1.2x at 4 KiB, far more when ranks outnumber CPUs, and
     * the decode MLP's comm % drops from 56 to 37 %; only tp-bench
     * collectives, whose buffers never change (so the barrier path reads
     * clean shared lines), has the barrier path ahead at 2-4 KiB. So the
     * whole slot, 4 KiB. TP_LOOPBACK_SMALL_BYTES overrides (at most
     * LB_SMALL_BYTES). */
    eng->small_bytes = LB_SMALL_BYTES;
    const char *sm = getenv("TP_LOOPBACK_SMALL_BYTES"); /* tuning knob, bytes */
    if (sm && *sm) {
        unsigned long long v = strtoull(sm, NULL, 0);
        eng->small_bytes = v < LB_SMALL_BYTES ? (size_t)v : LB_SMALL_BYTES;
    }
    pthread_mutex_init(&eng->lock, NULL);
    *engine = eng;
    if (info) {
        info->world_size = n;
        info->local_count = n;
        info->first_rank = 0;
    }
    if (host->debug)
        host->debug("comm",
                    "loopback: %d rank(s) on %d CPU(s), %s, spin limit %u, one-shot "
                    "collectives up to %zu bytes, streaming stores above %zu bytes, timeout "
                    "%.1f s",
                    n, ncpu,
                    eng->bind ? "rank i pinned to CPU i mod CPUs" : "rank threads not pinned",
                    eng->spin_limit, eng->small_bytes, eng->stream_bytes, eng->timeout_s);
    return TP_OK;
}

static void lb_finalize(void *engine)
{
    lb_engine *eng = engine;
    if (!eng)
        return;
    for (lb_group *g = eng->worlds; g;) {
        lb_group *next = g->next;
        lb_group_free(g);
        g = next;
    }
    pthread_mutex_destroy(&eng->lock);
    free(eng);
}

static const tp_comm_ops lb_ops = {
    .struct_size = sizeof(tp_comm_ops),
    .init = lb_init,
    .finalize = lb_finalize,
    .world = lb_world,
    .split = lb_split,
    .comm_free = lb_comm_free,
    .all_reduce = lb_all_reduce,
    .all_gather = lb_all_gather,
    .reduce_scatter = lb_reduce_scatter,
    .broadcast = lb_broadcast,
    .barrier = lb_barrier,
    .abort = NULL, /* one process: a failing rank is reported by tp_run */
    /* Host memory with the CPU; CUDA memory with the device's own copy and
     * reduce ops (device.c). A device without reduce is refused in world()
     * and the core stages its buffers through host memory instead. */
    .mem_kinds = 1u << TP_MEM_HOST | 1u << TP_MEM_CUDA,
    /* Nonblocking collectives without a thread (nb.c). */
    .iall_reduce = lb_iall_reduce,
    .iall_gather = lb_iall_gather,
    .ireduce_scatter = lb_ireduce_scatter,
    .req_test = lb_req_test,
    .req_wait = lb_req_wait,
    .req_free = lb_req_free,
    .req_done_at = lb_req_done_at,
};

TP_PLUGIN_DEFINE("loopback", "0.1.0",
                 "ranks are threads of one process; collectives through shared memory", &lb_ops,
                 NULL, NULL)

/* Listed by `tp-info loopback`; lb_init reads them (docs/performance.md). */
TP_PLUGIN_DEFINE_SETTINGS(
    {"TP_LOOPBACK_BIND", "auto",
     "1: pin rank i to CPU i; 0: never; auto: with 2+ ranks and ranks >= CPUs"},
    {"TP_LOOPBACK_SPIN", "200 (16 when ranks > CPUs)",
     "busy spins of a waiting rank before it starts to yield"},
    {"TP_LOOPBACK_STREAM_BYTES", "last-level cache size (else 32 MiB)",
     "results larger than this are stored with non-temporal stores"},
    {"TP_LOOPBACK_SMALL_BYTES", "4096",
     "collectives up to this size take the one-shot path; at most 4096"})
