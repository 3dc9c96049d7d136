/* SPDX-License-Identifier: MIT */
/* raw.c — the --compare-raw hook without an engine library: reports why
 * it is unavailable. A build with MPI replaces this file by one that calls
 * MPI_Allreduce, MPI_Allgather, MPI_Reduce_scatter_block and MPI_Bcast on
 * MPI_COMM_WORLD (or the group's communicator) with the same buffers; see
 * meson.build (have_mpi). */
#include "bench.h"

bool bench_raw_available(const char **why)
{
    if (why)
        *why = "this tp-bench was built without MPI (configure with -Dmpi=enabled and run under "
               "mpirun "
               "with TP_BACKEND=mpi)";
    return false;
}

tp_status bench_raw_collective(tp_comm *comm, int op, const void *send, void *recv,
                               size_t count_per_rank, size_t total_count)
{
    (void)comm;
    (void)op;
    (void)send;
    (void)recv;
    (void)count_per_rank;
    (void)total_count;
    return tp_set_error(TP_ERR_NOT_SUPPORTED,
                        "tp-bench: --compare-raw is not available in this build");
}
