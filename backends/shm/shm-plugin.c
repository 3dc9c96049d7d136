/* SPDX-License-Identifier: MIT */
/*
 * shm-plugin.c — the shm engine (init/finalize) and the plugin descriptor.
 *
 * One rank per process, on one node. The job comes from the environment:
 *   TP_RANK, TP_WORLD_SIZE  this process's rank and the number of ranks
 *   TP_JOB_ID               names the job's segment (tp-launch sets it);
 *                           [A-Za-z0-9._-], at most 64 characters
 * Knobs (for measurement): TP_SHM_CHUNK_BYTES (bytes per rank per pipeline
 * step, 4 KiB .. 64 MiB, default 256 KiB), TP_SHM_SPIN (CPU pauses before
 * a waiter yields), TP_SHM_SMALL_BYTES (one-shot collectives, <= 4 KiB), TP_SHM_BIND,
 * TP_SHM_NB_BYTES (nonblocking arena per communicator, default 32 MiB).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shm.h"

static tp_status sh_job_id(const tp_host *host, sh_engine *eng)
{
    const char *job = getenv("TP_JOB_ID");
    if (!job || !*job)
        return host->set_error(TP_ERR_INVALID_ARG,
                               "shm: TP_JOB_ID is not set (rank %d of %d): the shm backend names "
                               "its shared-memory segment after the job; start the ranks with "
                               "tp-launch (which sets it) or set TP_JOB_ID to the same unique "
                               "value in every rank of the job",
                               eng->rank, eng->world_size);
    size_t len = strlen(job);
    if (len > 64 ||
        strspn(job, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") != len)
        return host->set_error(TP_ERR_INVALID_ARG,
                               "shm: TP_JOB_ID=\"%.80s\" is not a job id: expected 1..64 of "
                               "A-Z a-z 0-9 . _ -",
                               job);
    snprintf(eng->job, sizeof eng->job, "%s", job);
    return TP_OK;
}

/* TP_RANK / TP_WORLD_SIZE against the requested world size (0: any). */
static tp_status sh_job_from_env(const tp_host *host, int requested, sh_engine *eng)
{
    const char *rank_s = getenv("TP_RANK"), *world_s = getenv("TP_WORLD_SIZE");
    long world = 1, rank = 0;
    if (world_s && !sh_parse(world_s, 1, SH_MAX_RANKS, &world))
        return host->set_error(TP_ERR_INVALID_ARG,
                               "shm: TP_WORLD_SIZE=\"%s\" is not a number in 1..%d", world_s,
                               SH_MAX_RANKS);
    if (world > 1 && !rank_s)
        return host->set_error(TP_ERR_INVALID_ARG,
                               "shm: TP_WORLD_SIZE=%ld but TP_RANK is not set: the shm backend "
                               "runs one process per rank; start them with `tp-launch -n %ld "
                               "PROG` (and TP_BACKEND=shm)",
                               world, world);
    if (requested > 1 && !world_s)
        return host->set_error(TP_ERR_INVALID_ARG,
                               "shm: %d ranks requested but TP_RANK/TP_WORLD_SIZE are not set: "
                               "start the ranks with `tp-launch -n %d PROG` (and TP_BACKEND=shm)",
                               requested, requested);
    if (rank_s && !sh_parse(rank_s, 0, world - 1, &rank))
        return host->set_error(TP_ERR_INVALID_ARG,
                               "shm: TP_RANK=\"%s\" is not a rank of TP_WORLD_SIZE=%ld (expected "
                               "0..%ld)",
                               rank_s, world, world - 1);
    if (requested > 0 && requested != world)
        return host->set_error(TP_ERR_INVALID_ARG,
                               "shm: %d ranks requested (--tp or TP_WORLD_SIZE) but this job has "
                               "TP_WORLD_SIZE=%ld processes",
                               requested, world);
    eng->world_size = (int)world;
    eng->rank = (int)rank;
    return world > 1 ? sh_job_id(host, eng) : TP_OK;
}

static tp_status sh_init(const tp_host *host, const tp_engine_args *args, void **engine,
                         tp_engine_info *info)
{
    int requested = args && args->struct_size >= offsetof(tp_engine_args, world_size) + sizeof(int)
                        ? args->world_size
                        : 0;
    sh_engine *eng = calloc(1, sizeof *eng);
    if (!eng)
        return host->set_error(TP_ERR_NO_MEMORY, "shm: out of memory creating the engine");
    eng->host = host;
    eng->timeout_s = host->timeout_s > 0 ? host->timeout_s : 300.0;
    tp_status st = sh_job_from_env(host, requested, eng);
    if (st == TP_OK)
        st = sh_knobs(host, eng);
    if (st != TP_OK) {
        free(eng);
        return st;
    }
    *engine = eng;
    if (info) {
        info->world_size = eng->world_size;
        info->local_count = 1;
        info->first_rank = eng->rank;
    }
    if (host->debug)
        host->debug("comm",
                    "shm: rank %d of %d, job \"%s\", %zu-byte pipeline chunks, spin limit %u, "
                    "one-shot collectives up to %zu bytes, %s, timeout %.1f s",
                    eng->rank, eng->world_size, eng->job, eng->chunk, eng->spin_limit,
                    eng->small_bytes, eng->bind ? "rank r pinned to CPU r mod CPUs" : "not pinned",
                    eng->timeout_s);
    return TP_OK;
}

static void sh_finalize(void *engine)
{
    free(engine);
}

static int sh_probe(char *reason, size_t len)
{
    if (access("/dev/shm", W_OK) == 0)
        return 1;
    snprintf(reason, len, "/dev/shm is not writable (%s): POSIX shared memory is needed",
             strerror(errno));
    return 0;
}

static const tp_comm_ops sh_ops = {
    .struct_size = sizeof(tp_comm_ops),
    .init = sh_init,
    .finalize = sh_finalize,
    .world = sh_world,
    .split = sh_split,
    .comm_free = sh_comm_free,
    .all_reduce = sh_all_reduce,
    .all_gather = sh_all_gather,
    .reduce_scatter = sh_reduce_scatter,
    .broadcast = sh_broadcast,
    .barrier = sh_barrier,
    .abort = NULL,                 /* a dead rank is noticed by its peers (TP_ERR_PEER) */
    .mem_kinds = 0,                /* host memory; the core stages device buffers */
    .comm_create = sh_comm_create, /* TP_INTRA_BACKEND=shm */
    .iall_reduce = sh_iall_reduce,
    .iall_gather = sh_iall_gather,
    .ireduce_scatter = sh_ireduce_scatter,
    .req_test = sh_req_test,
    .req_wait = sh_req_wait,
    .req_free = sh_req_free,
    .req_done_at = sh_req_done_at,
    .mem_alloc = sh_mem_alloc, /* symmetric windows: collectives without staging */
    .mem_free = sh_mem_free,
};

TP_PLUGIN_DEFINE("shm", "0.1.0",
                 "ranks are processes of one node; collectives through a POSIX shared-memory "
                 "segment (TP_RANK, TP_WORLD_SIZE, TP_JOB_ID)",
                 &sh_ops, NULL, sh_probe)

/* What tp-info lists (tests/diag checks every getenv of this folder is here). */
TP_PLUGIN_DEFINE_SETTINGS(
    {"TP_RANK", "-", "this process's rank (set by tp-launch or by hand); standalone start"},
    {"TP_WORLD_SIZE", "-", "the job's rank count; standalone start"},
    {"TP_JOB_ID", "- (required for 2+ ranks)",
     "names the job's segment /dev/shm/tp-shm-<uid>-<id> (tp-launch sets it)"},
    {"TP_SHM_CHUNK_BYTES", "262144",
     "bytes per rank and piece of a large collective, 4096..64 MiB"},
    {"TP_SHM_BIND", "auto",
     "1: pin rank r to CPU r mod CPUs; 0: never; auto: when ranks fill the CPUs"},
    {"TP_SHM_SPIN", "200 (16 when ranks > CPUs)", "busy spins of a waiting rank before it yields"},
    {"TP_SHM_NB_BYTES", "33554432",
     "nonblocking arena per communicator (>= 8192): every rank's inputs of the ops in flight; "
     "a larger op goes in pieces"},
    {"TP_SHM_SMALL_BYTES", "4096",
     "collectives up to this size take the one-shot path; at most 4096"})
