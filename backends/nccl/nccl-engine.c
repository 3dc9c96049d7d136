/* SPDX-License-Identifier: MIT */
/*
 * nccl-engine.c — init/finalize: which launch model, how many ranks, and
 * the NCCL unique id every rank of the world must share.
 *
 * One process (no MPI launcher variable set): the process runs world_size
 * ranks as threads (TP_WORLD_SIZE / --tp, default 1), one per GPU; init
 * refuses more ranks than visible GPUs. The unique id is made here once and
 * read by every rank's world().
 *
 * Under an MPI launcher (OMPI_COMM_WORLD_SIZE, PMIX_RANK or PMI_RANK set):
 * one rank per process, rank and size from MPI_COMM_WORLD; rank 0 makes
 * the unique id and MPI broadcasts it (nccl-mpi.c) together with rank 0's
 * status, so a failure on rank 0 stops every rank at once. This is how a
 * job spans nodes: NCCL then connects the ranks itself (NVLink, IB, TCP).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nccl-internal.h"

#define END_OF(type, field) (offsetof(type, field) + sizeof(((type *)0)->field))

/* FNV-1a of the id, printed in debug lines so ranks can be compared. */
static uint32_t id_hash(const ncclUniqueId *id)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < sizeof id->internal; i++)
        h = (h ^ (uint8_t)id->internal[i]) * 16777619u;
    return h;
}

static int env_int(const char *name, int fallback)
{
    const char *v = getenv(name);
    char *end;
    if (!v || !*v)
        return fallback;
    long x = strtol(v, &end, 10);
    return (*end || x < 0 || x > 1 << 30) ? fallback : (int)x;
}

static tp_status count_gpus(nccl_engine *e, const char *where)
{
    char why[256];
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err == cudaSuccess && n > 0) {
        e->ndev = n;
        return TP_OK;
    }
    nccl_cuda_reason(err, n, why, sizeof why);
    return e->host->set_error(TP_ERR_UNAVAILABLE,
                              "nccl: %s: %s; NCCL needs a GPU per rank (TP_BACKEND=loopback or "
                              "mpi with TP_DEVICE=cpu run without one)",
                              where, why);
}

/* A fresh unique id in e->id: made here (one process), or made by rank 0
 * and broadcast over MPI with rank 0's status, so a failure on rank 0
 * stops every rank at once. Collective over the MPI job. */
static tp_status new_id(nccl_engine *e)
{
    const tp_host *h = e->host;
    if (!e->by_mpi) {
        ncclResult_t r = ncclGetUniqueId(&e->id);
        if (r != ncclSuccess)
            return h->set_error(nccl_status_of(r), "nccl: ncclGetUniqueId failed: %s: %s",
                                ncclGetErrorString(r), ncclGetLastError(NULL));
        if (h->debug)
            h->debug("comm", "nccl: new unique id %08x", (unsigned)id_hash(&e->id));
        return TP_OK;
    }
    struct {
        int32_t status;
        ncclUniqueId id;
    } msg;
    memset(&msg, 0, sizeof msg);
    char rank0_err[512] = "";
    int rank = e->mpi.rank;
    if (rank == 0) {
        ncclResult_t r = ncclGetUniqueId(&msg.id);
        msg.status = (int32_t)r;
        if (r != ncclSuccess)
            snprintf(rank0_err, sizeof rank0_err, ": %s", ncclGetLastError(NULL));
    }
    tp_status st = nccl_mpi_bcast(h, &e->mpi, &msg, (int)sizeof msg, e->timeout_s);
    if (st != TP_OK)
        return st;
    if (msg.status != ncclSuccess)
        return h->set_error(nccl_status_of((ncclResult_t)msg.status),
                            "nccl: rank 0 could not create the NCCL unique id: %s%s%s",
                            ncclGetErrorString((ncclResult_t)msg.status), rank0_err,
                            rank == 0 ? "" : " (see rank 0's error)");
    e->id = msg.id;
    if (h->debug)
        h->debug("comm", "nccl: rank %d/%d has the unique id from rank 0 over MPI (id %08x)", rank,
                 e->mpi.size, (unsigned)id_hash(&e->id));
    return TP_OK;
}

static tp_status init_one_process(nccl_engine *e, int requested)
{
    const tp_host *h = e->host;
    tp_status st = count_gpus(e, "one-process launch");
    if (st != TP_OK)
        return st;
    int ws = requested > 0 ? requested : 1;
    if (ws > e->ndev) {
        const char *vis = getenv("CUDA_VISIBLE_DEVICES");
        return h->set_error(
            TP_ERR_UNAVAILABLE,
            "nccl: %d ranks asked for (--tp / TP_WORLD_SIZE) but this process sees "
            "%d CUDA device(s)%s%s%s: NCCL puts one rank on one GPU and refuses two "
            "ranks on the same GPU (\"Duplicate GPU detected\", since NCCL 2.5; "
            "NCCL_MULTI_RANK_GPU_ENABLE=1 is experimental, from NCCL 2.30); use "
            "--tp %d or fewer, or TP_BACKEND=loopback TP_DEVICE=cuda to run %d "
            "ranks on %d GPU(s)",
            ws, e->ndev, vis ? " (CUDA_VISIBLE_DEVICES=" : "", vis ? vis : "", vis ? ")" : "",
            e->ndev, ws, e->ndev);
    }
    if ((st = new_id(e)) != TP_OK) /* the first run's; later runs make their own */
        return st;
    e->world_size = ws;
    e->first_rank = 0;
    e->local_count = ws;
    if (h->debug)
        h->debug("comm", "nccl: one process, %d rank(s) on %d visible GPU(s)", ws, e->ndev);
    return TP_OK;
}

/* Each tp_run makes a new world communicator, and a unique id serves one
 * communicator creation (NCCL's bootstrap root accepts that many
 * connections, then closes), so every run gets a fresh id: the first local
 * rank of a run to call world() makes it (and, under MPI, every process
 * does so together, rank 0 making it). All local ranks of a run call
 * world() before the next run starts (tp_run waits for them), so the
 * count of callers tells runs apart. A failure is seen by every local rank
 * of that run. */
tp_status nccl_world_id(nccl_engine *e, int me, ncclUniqueId *id)
{
    bool maker = false;
    pthread_mutex_lock(&e->lock);
    if (e->run_joined == 0) {
        atomic_store(&e->local_failed, 0); /* a new run: the last one's failure is history */
        e->run_status = e->runs++ == 0 ? TP_OK : new_id(e); /* init made the first run's */
        maker = true;
    }
    tp_status st = e->run_status;
    *id = e->id;
    if (++e->run_joined == e->local_count)
        e->run_joined = 0;
    pthread_mutex_unlock(&e->lock);
    if (st != TP_OK && !maker)
        return e->host->set_error(st,
                                  "nccl: rank %d: this run's NCCL unique id could not be "
                                  "made (see the first rank's error)",
                                  me);
    return st;
}

static tp_status init_mpi(nccl_engine *e, int requested, const tp_engine_args *args)
{
    const tp_host *h = e->host;
    int *argc = args->struct_size >= END_OF(tp_engine_args, argv) ? args->argc : NULL;
    char ***argv = args->struct_size >= END_OF(tp_engine_args, argv) ? args->argv : NULL;
    tp_status st = nccl_mpi_start(h, &e->mpi, argc, argv);
    if (st != TP_OK)
        return st;
    int rank = e->mpi.rank, size = e->mpi.size;
    if (requested > 0 && requested != size)
        return h->set_error(TP_ERR_INVALID_ARG,
                            "nccl: the MPI launcher started %d process(es) but %d ranks were asked "
                            "for (--tp / TP_WORLD_SIZE); under mpirun each process is one rank: "
                            "use mpirun -n %d, or drop --tp / TP_WORLD_SIZE",
                            size, requested, requested);

    /* the first run's id now, before anything that may fail on one rank
     * only, so that rank 0's failure stops every rank here */
    e->by_mpi = true;
    if ((st = new_id(e)) != TP_OK)
        return st;

    char where[64];
    snprintf(where, sizeof where, "MPI rank %d/%d", rank, size);
    if ((st = count_gpus(e, where)) != TP_OK)
        return st;
    /* With CUDA_VISIBLE_DEVICES set, processes may each see different
     * GPUs; then NCCL itself names a duplicate at world(). */
    int local_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", 0);
    if (local_size > e->ndev && !getenv("CUDA_VISIBLE_DEVICES"))
        return h->set_error(TP_ERR_UNAVAILABLE,
                            "nccl: %d ranks run on this node (OMPI_COMM_WORLD_LOCAL_SIZE) but it "
                            "has %d GPU(s): NCCL refuses two ranks on one GPU (\"Duplicate GPU "
                            "detected\"); start at most %d process(es) per node (mpirun --map-by "
                            "ppr:%d:node), or use TP_BACKEND=mpi or loopback with TP_DEVICE=cuda",
                            local_size, e->ndev, e->ndev, e->ndev);
    e->by_mpi = true;
    e->world_size = size;
    e->first_rank = rank;
    e->local_count = 1;
    return TP_OK;
}

static void engine_free(nccl_engine *e)
{
    pthread_mutex_destroy(&e->lock);
    free(e->device_of);
    free(e);
}

tp_status nccl_init(const tp_host *host, const tp_engine_args *args, void **engine,
                    tp_engine_info *info)
{
    if (!host || !host->set_error)
        return TP_ERR_INVALID_ARG;
    if (!args || !engine || !info)
        return host->set_error(TP_ERR_INVALID_ARG, "nccl: init called with a NULL %s",
                               !args     ? "args"
                               : !engine ? "engine"
                                         : "info");
    *engine = NULL;
    int requested = args->struct_size >= END_OF(tp_engine_args, world_size) ? args->world_size : 0;
    if (requested < 0)
        return host->set_error(TP_ERR_INVALID_ARG,
                               "nccl: world size %d asked for; expected 0 (engine decides) or more",
                               requested);

    nccl_engine *e = calloc(1, sizeof *e);
    if (!e)
        return host->set_error(TP_ERR_NO_MEMORY, "nccl: out of memory for the engine");
    e->host = host;
    e->timeout_s = 300;
    if (host->struct_size >= END_OF(tp_host, timeout_s) && host->timeout_s > 0)
        e->timeout_s = host->timeout_s;
    pthread_mutex_init(&e->lock, NULL);
    atomic_init(&e->local_failed, 0);

    tp_status st;
    const char *launcher = nccl_mpi_launcher_var();
    if (launcher) {
        if (host->debug)
            host->debug("comm", "nccl: %s is set: one rank per process, unique id over MPI",
                        launcher);
        st = init_mpi(e, requested, args);
    } else {
        st = init_one_process(e, requested);
    }
    if (st == TP_OK && !(e->device_of = malloc((size_t)e->local_count * sizeof(int))))
        st = host->set_error(TP_ERR_NO_MEMORY, "nccl: out of memory for %d ranks", e->local_count);
    if (st != TP_OK) {
        /* MPI is left initialised: a rank that failed here exits with an
         * error and mpirun ends the job; MPI_Finalize could wait on peers */
        engine_free(e);
        return st;
    }
    for (int i = 0; i < e->local_count; i++)
        e->device_of[i] = -1;

    if (info->struct_size >= END_OF(tp_engine_info, world_size))
        info->world_size = e->world_size;
    if (info->struct_size >= END_OF(tp_engine_info, local_count))
        info->local_count = e->local_count;
    if (info->struct_size >= END_OF(tp_engine_info, first_rank))
        info->first_rank = e->first_rank;
    *engine = e;
    return TP_OK;
}

void nccl_finalize(void *engine)
{
    nccl_engine *e = engine;
    if (!e)
        return;
    nccl_mpi_stop(&e->mpi);
    engine_free(e);
}
