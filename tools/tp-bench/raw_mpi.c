/* SPDX-License-Identifier: MIT */
/* raw_mpi.c — the --compare-raw hook on MPI: the same collective called on
 * libmpi directly, on the same buffers, for the plugin/raw ratio. Built
 * instead of raw.c when the mpi backend is built (have_mpi). It runs only
 * when MPI is initialised (TP_BACKEND=mpi under mpirun) and the group is
 * the whole world (MPI_COMM_WORLD): the raw call has no view of tp's
 * sub-communicators. */
#include "bench.h"

#include <mpi.h>

bool bench_raw_available(const char **why)
{
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (!init || fin) {
        if (why)
            *why = "MPI is not initialised in this process: run under mpirun with TP_BACKEND=mpi, "
                   "e.g. "
                   "mpirun -n 4 env TP_BACKEND=mpi tp-bench collectives --compare-raw";
        return false;
    }
    return true;
}

static tp_status mpi_status(int rc, const char *call)
{
    if (rc == MPI_SUCCESS)
        return TP_OK;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    return tp_set_error(TP_ERR_COMM, "tp-bench --compare-raw: %s failed: %s", call, msg);
}

tp_status bench_raw_collective(tp_comm *comm, int op, const void *send, void *recv,
                               size_t count_per_rank, size_t total_count)
{
    int world = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (tp_comm_size(comm) != world)
        return tp_set_error(
            TP_ERR_NOT_SUPPORTED,
            "tp-bench --compare-raw: group of %d ranks, MPI world of %d: the raw comparison "
            "runs on MPI_COMM_WORLD only; use T = mpirun -n",
            tp_comm_size(comm), world);
    if (total_count > (size_t)2147483647)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "tp-bench --compare-raw: count %zu exceeds MPI's int count",
                            total_count);
    int per = (int)count_per_rank, total = (int)total_count;
    switch (op) {
        case TP_OP_ALL_REDUCE:
            return mpi_status(MPI_Allreduce(send, recv, total, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
                              "MPI_Allreduce");
        case TP_OP_ALL_GATHER:
            return mpi_status(
                MPI_Allgather(send, per, MPI_FLOAT, recv, per, MPI_FLOAT, MPI_COMM_WORLD),
                "MPI_Allgather");
        case TP_OP_REDUCE_SCATTER:
            return mpi_status(
                MPI_Reduce_scatter_block(send, recv, per, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
                "MPI_Reduce_scatter_block");
        case TP_OP_BROADCAST:
            return mpi_status(MPI_Bcast((void *)send, total, MPI_FLOAT, 0, MPI_COMM_WORLD),
                              "MPI_Bcast");
    }
    return tp_set_error(TP_ERR_INTERNAL, "tp-bench --compare-raw: op %d", op);
}
