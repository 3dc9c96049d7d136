/* SPDX-License-Identifier: MIT */
/*
 * mpi-plugin.c — libtp-mpi.so: the Open MPI communicator plugin.
 *
 * One rank per process under mpirun; collectives map one to one onto
 * MPI's (see mpi-comm.c), start-up, shutdown and failure handling are in
 * mpi-engine.c. Buffers are host memory, or CUDA memory with a CUDA-aware
 * Open MPI.
 */
#include "mpi-internal.h"

static const tp_comm_ops mpi_ops = {
    .struct_size = sizeof(tp_comm_ops),
    .init = mpi_engine_init,
    .finalize = mpi_engine_finalize,
    .world = mpi_world,
    .split = mpi_split,
    .comm_free = mpi_comm_free,
    .all_reduce = mpi_all_reduce,
    .all_gather = mpi_all_gather,
    .reduce_scatter = mpi_reduce_scatter,
    .broadcast = mpi_broadcast,
    .barrier = mpi_barrier,
    .abort = mpi_engine_abort,
    /* CUDA memory only with a CUDA-aware Open MPI: world() refuses it
     * otherwise and the core stages (mpi-comm.c). */
    .mem_kinds = 1u << TP_MEM_HOST | 1u << TP_MEM_CUDA,
    /* ABI 1.4: MPI's nonblocking collectives (mpi-nb.c) */
    .iall_reduce = mpi_iall_reduce,
    .iall_gather = mpi_iall_gather,
    .ireduce_scatter = mpi_ireduce_scatter,
    .req_test = mpi_req_test,
    .req_wait = mpi_req_wait,
    .req_free = mpi_req_free,
};

TP_PLUGIN_DEFINE("mpi", "0.1.0",
                 "Open MPI: one rank per process under mpirun, shared memory or network", &mpi_ops,
                 NULL, mpi_engine_probe)

/* Listed by `tp-info mpi`. */
TP_PLUGIN_DEFINE_SETTINGS({"TP_MPI_MAX_COUNT", "2147483647",
                           "largest element count of one MPI call (a test knob: smaller "
                           "values exercise the chunked paths)"})
