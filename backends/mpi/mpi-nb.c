/* SPDX-License-Identifier: MIT */
/*
 * mpi-nb.c — nonblocking collectives (plugin ABI 1.4) on MPI's own:
 * MPI_Iallreduce, MPI_Iallgather(v), MPI_Ireduce_scatter(_block).
 *
 * Threads: the core calls these slots, like the blocking ones, from the
 * rank's thread only, one at a time, so they need no more than the thread
 * level the blocking calls need (MPI_THREAD_SERIALIZED; the engine asks for
 * MPI_THREAD_MULTIPLE and Open MPI 4.1 grants it).
 *
 * Progress: Open MPI runs nonblocking collectives (its libnbc schedules)
 * only inside MPI calls on the rank's thread: without calls, a started
 * collective does not move until req_test or req_wait. A rank that wants
 * the transfer to overlap its computation calls tp_test between pieces of
 * work; each call advances every pending request.
 *
 * Waiting is watched like a blocking collective: req_wait marks the call
 * for the engine's TP_TIMEOUT_S watchdog (mpi-engine.c), which reports the
 * ranks that did not join and ends the job (MPI cannot cancel a started
 * collective, so there is no request-level timeout to recover from).
 */
#include "mpi-internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct mpi_req {
    mpi_comm *c;
    mpi_opk opk;
    const char *what;       /* "all_reduce (MPI_Iallreduce)", for errors */
    uint64_t seq;           /* c->seq at the start, for the watchdog's report */
    int n;                  /* MPI requests in r (all_reduce past INT_MAX elements: several) */
    int *icounts, *idispls; /* must outlive the call (v variants) */
    MPI_Request r[];
} mpi_req;

static mpi_req *req_new(mpi_comm *c, mpi_opk opk, const char *what, int n, bool layout)
{
    mpi_req *q = calloc(1, sizeof *q + (size_t)(n ? n : 1) * sizeof(MPI_Request));
    if (!q)
        return NULL;
    if (layout) {
        q->icounts = malloc((size_t)c->size * sizeof(int));
        q->idispls = malloc((size_t)c->size * sizeof(int));
        if (!q->icounts || !q->idispls) {
            free(q->icounts);
            free(q->idispls);
            free(q);
            return NULL;
        }
        memcpy(q->icounts, c->icounts, (size_t)c->size * sizeof(int));
        memcpy(q->idispls, c->idispls, (size_t)c->size * sizeof(int));
    }
    q->c = c;
    q->opk = opk;
    q->what = what;
    q->seq = ++c->seq;
    for (int i = 0; i < n; i++)
        q->r[i] = MPI_REQUEST_NULL;
    return q;
}

static tp_status oom(const char *op)
{
    return mpi_host->set_error(TP_ERR_NO_MEMORY, "mpi %s: out of memory for a request", op);
}

void mpi_req_free(void *comm, void *req)
{
    (void)comm;
    mpi_req *q = req;
    if (!q)
        return;
    /* Completed requests are MPI_REQUEST_NULL. One still active is left
     * to MPI (only after an error): freeing the request of a nonblocking
     * collective is erroneous (MPI-3.1, 5.12), and the counts arrays it
     * may read are left with it. */
    bool active = false;
    for (int i = 0; i < q->n; i++)
        active |= q->r[i] != MPI_REQUEST_NULL;
    if (!active) {
        free(q->icounts);
        free(q->idispls);
    }
    free(q);
}

/* A start failed after `q->n` requests were started: keep them (they must
 * complete before MPI can be used again), report the error. */
static tp_status start_failed(mpi_req *q, int rc)
{
    tp_status st = mpi_fail(q->c, q->what, rc);
    mpi_comm at = *q->c; /* the watchdog names this collective if a peer never joins */
    at.seq = q->seq;
    mpi_engine_op_begin(q->c->eng, q->opk, &at);
    MPI_Waitall(q->n, q->r, MPI_STATUSES_IGNORE);
    mpi_engine_op_end(q->c->eng);
    mpi_req_free(NULL, q);
    return st;
}

tp_status mpi_iall_reduce(void *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                          tp_redop op, void **req)
{
    mpi_comm *c = comm;
    MPI_Datatype mdt;
    MPI_Op mop;
    size_t esz, chunk = mpi_engine_max_count(c->eng);
    tp_status st = mpi_engine_types(c->eng, "iall_reduce", dt, &op, &mdt, &mop, &esz);
    if (st == TP_OK)
        st = mpi_dev_ready(c);
    if (st != TP_OK)
        return st;
    int chunks = (int)((count + chunk - 1) / chunk);
    mpi_req *q = req_new(c, TPMPI_OPK_ALL_REDUCE, "iall_reduce (MPI_Iallreduce)", chunks, false);
    if (!q)
        return oom("iall_reduce");
    for (size_t done = 0; done < count; done += chunk) {
        size_t n = count - done < chunk ? count - done : chunk;
        char *r = (char *)recv + done * esz;
        const void *s = send == recv ? MPI_IN_PLACE : (const char *)send + done * esz;
        int rc = MPI_Iallreduce(s, r, (int)n, mdt, mop, c->comm, &q->r[q->n]);
        if (rc != MPI_SUCCESS)
            return start_failed(q, rc);
        q->n++;
    }
    *req = q;
    return TP_OK;
}

tp_status mpi_iall_gather(void *comm, const void *send, void *recv, const size_t *counts,
                          tp_dtype dt, void **req)
{
    mpi_comm *c = comm;
    MPI_Datatype mdt;
    size_t esz, total;
    bool equal;
    tp_status st = mpi_engine_types(c->eng, "iall_gather", dt, NULL, &mdt, NULL, &esz);
    if (st == TP_OK)
        st = mpi_int_layout(c, "iall_gather", counts, &total, &equal);
    if (st == TP_OK)
        st = mpi_dev_ready(c);
    if (st != TP_OK)
        return st;
    mpi_req *q = req_new(c, TPMPI_OPK_ALL_GATHER,
                         equal ? "iall_gather (MPI_Iallgather)" : "iall_gather (MPI_Iallgatherv)",
                         1, !equal);
    if (!q)
        return oom("iall_gather");
    *req = q;
    if (total == 0)
        return TP_OK; /* every rank computes the same total: all skip */
    const void *s = send;
    if ((const char *)send == (const char *)recv + (size_t)c->idispls[c->rank] * esz)
        s = MPI_IN_PLACE;
    int rc =
        equal ? MPI_Iallgather(s, c->icounts[0], mdt, recv, c->icounts[0], mdt, c->comm, &q->r[0])
              : MPI_Iallgatherv(s, q->icounts[c->rank], mdt, recv, q->icounts, q->idispls, mdt,
                                c->comm, &q->r[0]);
    if (rc != MPI_SUCCESS) {
        *req = NULL;
        return start_failed(q, rc);
    }
    q->n = 1;
    return TP_OK;
}

tp_status mpi_ireduce_scatter(void *comm, const void *send, void *recv, const size_t *counts,
                              tp_dtype dt, tp_redop op, void **req)
{
    mpi_comm *c = comm;
    MPI_Datatype mdt;
    MPI_Op mop;
    size_t esz, total;
    bool equal;
    tp_status st = mpi_engine_types(c->eng, "ireduce_scatter", dt, &op, &mdt, &mop, &esz);
    if (st == TP_OK)
        st = mpi_int_layout(c, "ireduce_scatter", counts, &total, &equal);
    if (st == TP_OK)
        st = mpi_dev_ready(c);
    if (st != TP_OK)
        return st;
    mpi_req *q = req_new(c, TPMPI_OPK_REDUCE_SCATTER,
                         equal ? "ireduce_scatter (MPI_Ireduce_scatter_block)"
                               : "ireduce_scatter (MPI_Ireduce_scatter)",
                         1, !equal);
    if (!q)
        return oom("ireduce_scatter");
    *req = q;
    if (total == 0)
        return TP_OK;
    const void *s = send == recv ? MPI_IN_PLACE : send;
    int rc = equal ? MPI_Ireduce_scatter_block(s, recv, c->icounts[0], mdt, mop, c->comm, &q->r[0])
                   : MPI_Ireduce_scatter(s, recv, q->icounts, mdt, mop, c->comm, &q->r[0]);
    if (rc != MPI_SUCCESS) {
        *req = NULL;
        return start_failed(q, rc);
    }
    q->n = 1;
    return TP_OK;
}

tp_status mpi_req_test(void *comm, void *req, int *done)
{
    (void)comm;
    mpi_req *q = req;
    *done = 0;
    int flag = 1;
    int rc = q->n ? MPI_Testall(q->n, q->r, &flag, MPI_STATUSES_IGNORE) : MPI_SUCCESS;
    if (rc != MPI_SUCCESS) {
        *done = 1;
        return mpi_fail(q->c, q->what, rc);
    }
    *done = flag != 0;
    return TP_OK;
}

tp_status mpi_req_wait(void *comm, void *req)
{
    (void)comm;
    mpi_req *q = req;
    if (!q->n)
        return TP_OK;
    mpi_comm at = *q->c; /* the watchdog names this request's collective */
    at.seq = q->seq;
    mpi_engine_op_begin(q->c->eng, q->opk, &at);
    int rc = MPI_Waitall(q->n, q->r, MPI_STATUSES_IGNORE);
    mpi_engine_op_end(q->c->eng);
    return rc == MPI_SUCCESS ? TP_OK : mpi_fail(q->c, q->what, rc);
}
