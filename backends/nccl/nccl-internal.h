/* SPDX-License-Identifier: MIT */
/*
 * nccl-internal.h — shared by the files of libtp-nccl.so (not installed).
 *
 * Files, one concern each, each calling only those below it:
 *   nccl-plugin.c   the vtable, descriptor and probe()
 *   nccl-comm.c     world/split/free and the collectives, waiting, timeouts
 *   nccl-engine.c   init/finalize: launch model, world size, unique id
 *   nccl-mpi.c      unique-id broadcast over Open MPI, dlopen'ed at run time
 *   nccl-util.c     statuses, CUDA diagnostics, clock and backoff (a leaf)
 *
 * Everything here has hidden visibility (the module is built with
 * gnu_symbol_visibility: 'hidden'); only tp_plugin_get_desc_v1 is exported.
 */
#ifndef TP_NCCL_INTERNAL_H
#define TP_NCCL_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include <cuda_runtime_api.h>
/* nccl.h declares ncclGroupStart() and others without (void) */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <nccl.h>
#pragma GCC diagnostic pop

#include <tp/tp-plugin.h>

/* ---------------------------------------------------------- nccl-mpi.c */

/* Open MPI entry points, resolved with dlsym. Open MPI handles (MPI_Comm,
 * MPI_Datatype, MPI_Request) are pointers, so void * stands in for them. */
typedef struct nccl_mpi {
    void *lib;        /* dlopen handle of libmpi, NULL until loaded */
    bool inited_here; /* we called MPI_Init_thread, so we finalize */
    int rank, size;   /* in MPI_COMM_WORLD */
    int (*initialized)(int *flag);
    int (*finalized)(int *flag);
    int (*init_thread)(int *argc, char ***argv, int required, int *provided);
    int (*finalize)(void);
    int (*comm_rank)(void *comm, int *rank);
    int (*comm_size)(void *comm, int *size);
    int (*ibcast)(void *buf, int count, void *type, int root, void *comm, void **req);
    int (*test)(void **req, int *flag, void *status);
    int (*error_string)(int code, char *str, int *len);
    void *comm_world; /* &ompi_mpi_comm_world */
    void *byte;       /* &ompi_mpi_byte */
} nccl_mpi;

/* Was this process started by an MPI launcher? Names the variable found. */
const char *nccl_mpi_launcher_var(void);

/* dlopen libmpi, MPI_Init_thread unless already initialised, read rank and
 * size of MPI_COMM_WORLD. */
tp_status nccl_mpi_start(const tp_host *host, nccl_mpi *m, int *argc, char ***argv);

/* Broadcast `bytes` from MPI rank 0 with MPI_Ibcast, polling MPI_Test until
 * done or `timeout_s` passed (TP_ERR_TIMEOUT: the request is left pending). */
tp_status nccl_mpi_bcast(const tp_host *host, nccl_mpi *m, void *buf, int bytes, double timeout_s);

/* MPI_Finalize if nccl_mpi_start initialised MPI. */
void nccl_mpi_stop(nccl_mpi *m);

/* ------------------------------------------------------- nccl-engine.c */

typedef struct nccl_engine {
    const tp_host *host;
    double timeout_s; /* host->timeout_s, or 300 if unset */
    bool by_mpi;      /* one process per GPU under mpirun */
    int world_size;
    int first_rank;  /* rank of local index 0 */
    int local_count; /* ranks (threads) this process runs */
    int ndev;        /* cudaGetDeviceCount */
    ncclUniqueId id; /* identical on every rank of the world */
    nccl_mpi mpi;

    /* one-process mode: which GPU each local rank took, to name a
     * duplicate before NCCL does; a failed local world() tells the
     * others to stop waiting for it */
    pthread_mutex_t lock;
    int *device_of; /* [local_count], -1 = not yet */
    atomic_int local_failed;
    /* a fresh unique id per run (nccl_world_id), under lock */
    int runs;       /* runs started */
    int run_joined; /* local ranks of the current run that asked for its id */
    tp_status run_status;
} nccl_engine;

tp_status nccl_init(const tp_host *host, const tp_engine_args *args, void **engine,
                    tp_engine_info *info);
void nccl_finalize(void *engine);
/* The unique id of the run the calling local rank is joining (see
 * nccl-engine.c); resets local_failed when a new run starts. */
tp_status nccl_world_id(nccl_engine *e, int me, ncclUniqueId *id);

/* --------------------------------------------------------- nccl-comm.c */

tp_status nccl_world(void *engine, int local_index, const tp_rank_env *env, void **comm, int *rank,
                     int *size);
tp_status nccl_split(void *comm, int color, int key, void **newcomm, int *rank, int *size);
void nccl_comm_free(void *comm);
tp_status nccl_all_reduce(void *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                          tp_redop op);
tp_status nccl_all_gather(void *comm, const void *send, void *recv, const size_t *counts,
                          tp_dtype dt);
tp_status nccl_reduce_scatter(void *comm, const void *send, void *recv, const size_t *counts,
                              tp_dtype dt, tp_redop op);
tp_status nccl_broadcast(void *comm, void *buf, size_t count, tp_dtype dt, int root);
tp_status nccl_barrier(void *comm);
/* ABI 1.4: nonblocking, on a side stream of the comm (see nccl-comm.c) */
tp_status nccl_iall_reduce(void *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                           tp_redop op, void **req);
tp_status nccl_iall_gather(void *comm, const void *send, void *recv, const size_t *counts,
                           tp_dtype dt, void **req);
tp_status nccl_ireduce_scatter(void *comm, const void *send, void *recv, const size_t *counts,
                               tp_dtype dt, tp_redop op, void **req);
tp_status nccl_req_test(void *comm, void *req, int *done);
tp_status nccl_req_wait(void *comm, void *req);
void nccl_req_free(void *comm, void *req);

/* --------------------------------------------------------- nccl-util.c */

/* Why CUDA cannot be used here, from cudaGetDeviceCount's result: "no CUDA
 * device ...", "CUDA driver too old: cudaErrorInsufficientDriver ...". */
void nccl_cuda_reason(cudaError_t err, int count, char *buf, size_t len);

/* tp status for an NCCL result. */
tp_status nccl_status_of(ncclResult_t r);

/* Monotonic seconds. */
double nccl_now(void);

/* Wait a little while polling: spin (yield) for the first 2 ms of a wait
 * that started at `t0`, then sleep 20 us per round. */
void nccl_backoff(double t0);

#endif /* TP_NCCL_INTERNAL_H */
