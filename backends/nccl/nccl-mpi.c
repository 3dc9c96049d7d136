/* SPDX-License-Identifier: MIT */
/*
 * nccl-mpi.c — broadcast the NCCL unique id over Open MPI.
 *
 * Why dlopen and not a link: the plugin must load on machines without
 * Open MPI (a GPU box running one process), so libmpi is opened only when
 * the process was started by an MPI launcher. It is opened RTLD_GLOBAL, as
 * Open MPI's own components expect. TP_NCCL_LIBMPI overrides the file
 * name (default "libmpi.so.40", Open MPI 3.x-5.x). Only Open MPI's ABI is
 * supported: its handles are pointers to the exported objects
 * ompi_mpi_comm_world / ompi_mpi_byte and MPI_STATUS_IGNORE is NULL.
 *
 * If the application initialised MPI itself, that is reused and left to it;
 * otherwise MPI_Init_thread(FUNNELED) is called here and MPI_Finalize at
 * finalize. The broadcast is MPI_Ibcast polled with MPI_Test, so a rank
 * that never arrives makes the others fail after TP_TIMEOUT_S.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nccl-internal.h"

#define NCCL_MPI_SUCCESS         0
#define NCCL_MPI_THREAD_FUNNELED 1 /* same value in every MPI: an ordered enum */

const char *nccl_mpi_launcher_var(void)
{
    static const char *const vars[] = {
        "OMPI_COMM_WORLD_SIZE", /* Open MPI mpirun / prterun */
        "PMIX_RANK",            /* srun --mpi=pmix, prterun */
        "PMI_RANK",             /* srun --mpi=pmi2, hydra */
    };
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v)
            return vars[i];
    }
    return NULL;
}

static void mpi_errstr(const nccl_mpi *m, int code, char *buf, int len)
{
    int n = 0;
    buf[0] = '\0';
    if (m->error_string && len >= 256 && m->error_string(code, buf, &n) == NCCL_MPI_SUCCESS)
        buf[n < len ? n : len - 1] = '\0';
    else
        snprintf(buf, (size_t)len, "MPI error %d", code);
}

tp_status nccl_mpi_start(const tp_host *host, nccl_mpi *m, int *argc, char ***argv)
{
    const char *file = getenv("TP_NCCL_LIBMPI");
    if (!file || !*file)
        file = "libmpi.so.40";
    m->lib = dlopen(file, RTLD_NOW | RTLD_GLOBAL);
    if (!m->lib)
        return host->set_error(
            TP_ERR_UNAVAILABLE,
            "nccl: started by an MPI launcher (%s is set), so the NCCL unique id "
            "must come from rank 0 over MPI, but %s could not be opened: %s; "
            "install Open MPI, or set TP_NCCL_LIBMPI to its libmpi.so.40",
            nccl_mpi_launcher_var(), file, dlerror());

    struct {
        const char *name;
        void *slot; /* address of the pointer member to fill */
    } syms[] = {
        {"MPI_Initialized", &m->initialized},
        {"MPI_Finalized", &m->finalized},
        {"MPI_Init_thread", &m->init_thread},
        {"MPI_Finalize", &m->finalize},
        {"MPI_Comm_rank", &m->comm_rank},
        {"MPI_Comm_size", &m->comm_size},
        {"MPI_Ibcast", &m->ibcast},
        {"MPI_Test", &m->test},
        {"MPI_Error_string", &m->error_string},
        {"ompi_mpi_comm_world", &m->comm_world},
        {"ompi_mpi_byte", &m->byte},
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        /* POSIX: dlsym's void * may be converted to a function pointer;
         * memcpy keeps the store free of aliasing questions */
        void *p = dlsym(m->lib, syms[i].name);
        memcpy(syms[i].slot, &p, sizeof p);
        if (!p)
            return host->set_error(TP_ERR_UNAVAILABLE,
                                   "nccl: %s has no symbol %s: the unique-id broadcast needs Open "
                                   "MPI's libmpi (MPICH and others are not supported); point "
                                   "TP_NCCL_LIBMPI at Open MPI's libmpi.so.40",
                                   file, syms[i].name);
    }

    char msg[256];
    int flag = 0, rc;
    m->finalized(&flag);
    if (flag)
        return host->set_error(TP_ERR_INVALID_ARG,
                               "nccl: MPI was already finalized when tp_init ran; call tp_init "
                               "before MPI_Finalize");
    m->initialized(&flag);
    if (!flag) {
        int provided = 0;
        rc = m->init_thread(argc, argv, NCCL_MPI_THREAD_FUNNELED, &provided);
        if (rc != NCCL_MPI_SUCCESS) {
            mpi_errstr(m, rc, msg, sizeof msg);
            return host->set_error(TP_ERR_COMM, "nccl: MPI_Init_thread failed: %s", msg);
        }
        m->inited_here = true;
    }
    if ((rc = m->comm_rank(m->comm_world, &m->rank)) != NCCL_MPI_SUCCESS ||
        (rc = m->comm_size(m->comm_world, &m->size)) != NCCL_MPI_SUCCESS) {
        mpi_errstr(m, rc, msg, sizeof msg);
        return host->set_error(TP_ERR_COMM, "nccl: MPI_Comm_rank/size on MPI_COMM_WORLD failed: %s",
                               msg);
    }
    if (host->debug)
        host->debug("comm", "nccl: MPI via %s: rank %d of %d%s", file, m->rank, m->size,
                    m->inited_here ? "" : " (MPI initialised by the application)");
    return TP_OK;
}

tp_status nccl_mpi_bcast(const tp_host *host, nccl_mpi *m, void *buf, int bytes, double timeout_s)
{
    char msg[256];
    void *req = NULL;
    int rc = m->ibcast(buf, bytes, m->byte, 0, m->comm_world, &req);
    if (rc != NCCL_MPI_SUCCESS) {
        mpi_errstr(m, rc, msg, sizeof msg);
        return host->set_error(TP_ERR_COMM, "nccl: MPI_Ibcast of the NCCL unique id failed: %s",
                               msg);
    }
    double t0 = nccl_now();
    for (;;) {
        int done = 0;
        rc = m->test(&req, &done, NULL);
        if (rc != NCCL_MPI_SUCCESS) {
            mpi_errstr(m, rc, msg, sizeof msg);
            return host->set_error(TP_ERR_COMM,
                                   "nccl: MPI_Test on the unique-id broadcast failed on rank "
                                   "%d/%d: %s",
                                   m->rank, m->size, msg);
        }
        if (done)
            return TP_OK;
        if (nccl_now() - t0 > timeout_s)
            return host->set_error(TP_ERR_TIMEOUT,
                                   "nccl: rank %d/%d waited %.0f s (TP_TIMEOUT_S) for the NCCL "
                                   "unique id from rank 0 over MPI; a rank did not reach tp_init: "
                                   "check the other ranks' errors",
                                   m->rank, m->size, timeout_s);
        nccl_backoff(t0);
    }
}

void nccl_mpi_stop(nccl_mpi *m)
{
    int flag = 1;
    if (m->lib && m->inited_here && m->finalized(&flag) == NCCL_MPI_SUCCESS && !flag)
        m->finalize();
    m->inited_here = false;
    /* libmpi stays loaded: Open MPI does not support being unloaded */
}
