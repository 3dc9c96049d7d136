/* SPDX-License-Identifier: MIT */
/*
 * mpi-error.c — the engine's host and MPI error reporting, shared by the
 * other files of the mpi plugin. A leaf: it calls none of them.
 */
#include "mpi-internal.h"

#include <stdio.h>

/* The host of the current engine (set by init). */
const tp_host *mpi_host;

tp_status mpi_fail(const mpi_comm *c, const char *op, int rc)
{
    char msg[MPI_MAX_ERROR_STRING + 1];
    int len = 0, cls = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS)
        len = snprintf(msg, sizeof msg, "unknown MPI error");
    msg[len < 0 ? 0 : (len > MPI_MAX_ERROR_STRING ? MPI_MAX_ERROR_STRING : len)] = '\0';
    MPI_Error_class(rc, &cls);
    if (c)
        return mpi_host->set_error(TP_ERR_COMM,
                                   "mpi %s failed on rank %d of a %d-rank communicator: %s "
                                   "(MPI error %d, class %d)",
                                   op, c->rank, c->size, msg, rc, cls);
    return mpi_host->set_error(TP_ERR_COMM, "mpi %s failed: %s (MPI error %d, class %d)", op, msg,
                               rc, cls);
}
