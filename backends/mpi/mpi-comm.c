/* SPDX-License-Identifier: MIT */
/*
 * mpi-comm.c — communicators and collectives on Open MPI's native calls.
 *
 * Every communicator is our own (a dup of MPI_COMM_WORLD or a split of
 * one) with MPI_ERRORS_RETURN, so MPI errors come back as TP_ERR_COMM with
 * MPI's error string instead of killing the job. MPI counts are int (Open
 * MPI 4.1 has no MPI-4 large-count calls): all_reduce and broadcast are
 * element-wise and run in chunks of at most INT_MAX elements; all_gather
 * and reduce_scatter refuse blocks or totals past INT_MAX.
 */
#include "mpi-internal.h"

#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#if defined(OPEN_MPI) && OPEN_MPI
#include <mpi-ext.h> /* MPIX_CUDA_AWARE_SUPPORT, MPIX_Query_cuda_support */
#endif

/* Can this Open MPI take CUDA device buffers? Built with CUDA support and
 * running with it (Debian's Open MPI is built without). */
static bool mpi_cuda_aware(void)
{
#if defined(MPIX_CUDA_AWARE_SUPPORT) && MPIX_CUDA_AWARE_SUPPORT
    return MPIX_Query_cuda_support() == 1;
#else
    return false;
#endif
}

/* Before a collective on device memory: the rank's kernels that produced
 * the send buffer must have finished. */
tp_status mpi_dev_ready(const mpi_comm *c)
{
    return c->dops ? c->dops->synchronize(c->dev) : TP_OK;
}

/* The world rank of each of mc's n ranks (scratch: n ints). */
static int world_ranks_of(MPI_Comm mc, int n, int *scratch, int *out)
{
    MPI_Group g, wg;
    int rc = MPI_Comm_group(mc, &g);
    if (rc != MPI_SUCCESS)
        return rc;
    rc = MPI_Comm_group(MPI_COMM_WORLD, &wg);
    if (rc == MPI_SUCCESS) {
        for (int i = 0; i < n; i++)
            scratch[i] = i;
        rc = MPI_Group_translate_ranks(g, n, scratch, wg, out);
        MPI_Group_free(&wg);
    }
    MPI_Group_free(&g);
    return rc;
}

/* Wrap an MPI_Comm we own into a handle. Takes ownership of *mc. */
static tp_status wrap_comm(mpi_engine *e, MPI_Comm *mc, uint64_t key, const char *op, void **out,
                           int *rank, int *size)
{
    mpi_comm *c = calloc(1, sizeof *c);
    int rc = MPI_Comm_set_errhandler(*mc, MPI_ERRORS_RETURN);
    if (c && rc == MPI_SUCCESS) {
        MPI_Comm_rank(*mc, &c->rank);
        MPI_Comm_size(*mc, &c->size);
        c->icounts = calloc((size_t)c->size, sizeof(int));
        c->idispls = calloc((size_t)c->size, sizeof(int));
        c->world_ranks = calloc((size_t)c->size, sizeof(int));
    }
    if (c && c->world_ranks && c->icounts) /* icounts: 0..size-1, then overwritten */
        rc = world_ranks_of(*mc, c->size, c->icounts, c->world_ranks);
    if (!c || rc != MPI_SUCCESS || !c->icounts || !c->idispls || !c->world_ranks) {
        tp_status st = rc != MPI_SUCCESS
                           ? mpi_fail(NULL, op, rc)
                           : mpi_host->set_error(TP_ERR_NO_MEMORY,
                                                 "mpi %s: out of memory for a communicator", op);
        if (c) {
            free(c->icounts);
            free(c->idispls);
            free(c->world_ranks);
            free(c);
        }
        MPI_Comm_free(mc);
        return st;
    }
    c->comm = *mc;
    c->eng = e;
    c->key = key;
    *out = c;
    *rank = c->rank;
    *size = c->size;
    return TP_OK;
}

tp_status mpi_world(void *engine, int local_index, const tp_rank_env *env, void **comm, int *rank,
                    int *size)
{
    mpi_engine *e = engine;
    *comm = NULL;
    if (local_index != 0)
        return mpi_host->set_error(TP_ERR_INVALID_ARG,
                                   "mpi world: local rank %d requested, but the mpi engine runs "
                                   "exactly one rank per process (local index 0)",
                                   local_index);
    /* Device memory goes to MPI directly only when Open MPI is CUDA-aware;
     * otherwise refuse it (before any MPI call), and the core stages it
     * through the device's pinned host memory. */
    const tp_device_ops *dops = NULL;
    if (env && env->mem_kind != TP_MEM_HOST) {
        if (env->mem_kind != TP_MEM_CUDA || !mpi_cuda_aware())
            return mpi_host->set_error(TP_ERR_NOT_SUPPORTED,
                                       "mpi world: the rank's device keeps tensors in memory kind "
                                       "%d and this Open MPI is not CUDA-aware "
                                       "(MPIX_Query_cuda_support): buffers are staged through "
                                       "host memory",
                                       (int)env->mem_kind);
        if (env->struct_size >= offsetof(tp_rank_env, dev) + sizeof env->dev)
            dops = env->dev_ops;
        if (!dops)
            return mpi_host->set_error(TP_ERR_NOT_SUPPORTED,
                                       "mpi world: device memory without the device's ops (a core "
                                       "older than plugin ABI 1.1): cannot order MPI after the "
                                       "device's stream; buffers are staged through host memory");
    }
    /* MPI_COMM_WORLD as a parent: its collectives are our dups of it */
    static uint64_t world_dups; /* in this process, across engines */
    mpi_comm wc = {.comm = MPI_COMM_WORLD, .eng = e, .key = TPMPI_WORLD_KEY, .seq = ++world_dups};
    MPI_Comm_rank(MPI_COMM_WORLD, &wc.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &wc.size);
    MPI_Comm dup = MPI_COMM_NULL;
    mpi_engine_op_begin(e, TPMPI_OPK_WORLD, &wc);
    int rc = MPI_Comm_dup(MPI_COMM_WORLD, &dup);
    mpi_engine_op_end(e);
    if (rc != MPI_SUCCESS)
        return mpi_fail(NULL, "world (MPI_Comm_dup of MPI_COMM_WORLD)", rc);
    tp_status st = wrap_comm(e, &dup, mpi_diag_key(wc.key, wc.seq, 0), "world", comm, rank, size);
    if (st == TP_OK) {
        /* once per process, collective like the dup (see mpi-diag.c) */
        wc.seq = ++world_dups;
        mpi_engine_op_begin(e, TPMPI_OPK_DIAG, &wc);
        mpi_diag_open(((mpi_comm *)*comm)->comm, wc.rank, wc.size);
        mpi_engine_op_end(e);
    }
    if (st == TP_OK && dops) {
        ((mpi_comm *)*comm)->dops = dops;
        ((mpi_comm *)*comm)->dev = env->dev;
    }
    return st;
}

tp_status mpi_split(void *comm, int color, int key, void **newcomm, int *rank, int *size)
{
    mpi_comm *c = comm;
    MPI_Comm nc = MPI_COMM_NULL;
    *newcomm = NULL;
    c->seq++;
    mpi_engine_op_begin(c->eng, TPMPI_OPK_SPLIT, c);
    int rc = MPI_Comm_split(c->comm, color < 0 ? MPI_UNDEFINED : color, key, &nc);
    mpi_engine_op_end(c->eng);
    if (rc != MPI_SUCCESS)
        return mpi_fail(c, "split (MPI_Comm_split)", rc);
    if (nc == MPI_COMM_NULL) {
        *rank = -1;
        *size = 0;
        return TP_OK;
    }
    tp_status st =
        wrap_comm(c->eng, &nc, mpi_diag_key(c->key, c->seq, color), "split", newcomm, rank, size);
    if (st == TP_OK) {
        ((mpi_comm *)*newcomm)->dops = c->dops;
        ((mpi_comm *)*newcomm)->dev = c->dev;
    }
    return st;
}

void mpi_comm_free(void *comm)
{
    mpi_comm *c = comm;
    if (!c)
        return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized)
        MPI_Comm_free(&c->comm);
    free(c->icounts);
    free(c->idispls);
    free(c->world_ranks);
    free(c);
}

/* --------------------------------------------------------- collectives */

/* Fill c->icounts/idispls from counts; say whether all blocks are equal.
 * Refuses what does not fit MPI's int counts and displacements. */
tp_status mpi_int_layout(mpi_comm *c, const char *op, const size_t *counts, size_t *total,
                         bool *equal)
{
    size_t limit = mpi_engine_max_count(c->eng), off = 0;
    *equal = true;
    for (int i = 0; i < c->size; i++) {
        if (counts[i] > limit || off > limit)
            return mpi_host->set_error(
                TP_ERR_NOT_SUPPORTED,
                "mpi %s: block %d has %zu elements at offset %zu, past the %zu elements one MPI "
                "call can address (int counts; Open MPI 4.1 has no large-count calls); split "
                "the call into smaller ones",
                op, i, counts[i], off, limit);
        c->icounts[i] = (int)counts[i];
        c->idispls[i] = (int)off;
        off += counts[i];
        if (counts[i] != counts[0])
            *equal = false;
    }
    *total = off;
    return TP_OK;
}

tp_status mpi_all_reduce(void *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                         tp_redop op)
{
    mpi_comm *c = comm;
    MPI_Datatype mdt;
    MPI_Op mop;
    size_t esz;
    tp_status st = mpi_engine_types(c->eng, "all_reduce", dt, &op, &mdt, &mop, &esz);
    if (st != TP_OK)
        return st;
    if ((st = mpi_dev_ready(c)) != TP_OK)
        return st;
    size_t chunk = mpi_engine_max_count(c->eng);
    int rc = MPI_SUCCESS;
    c->seq++;
    mpi_engine_op_begin(c->eng, TPMPI_OPK_ALL_REDUCE, c);
    for (size_t done = 0; done < count && rc == MPI_SUCCESS; done += chunk) {
        size_t n = count - done < chunk ? count - done : chunk;
        char *r = (char *)recv + done * esz;
        const void *s = send == recv ? MPI_IN_PLACE : (const char *)send + done * esz;
        rc = MPI_Allreduce(s, r, (int)n, mdt, mop, c->comm);
    }
    mpi_engine_op_end(c->eng);
    return rc == MPI_SUCCESS ? TP_OK : mpi_fail(c, "all_reduce (MPI_Allreduce)", rc);
}

tp_status mpi_all_gather(void *comm, const void *send, void *recv, const size_t *counts,
                         tp_dtype dt)
{
    mpi_comm *c = comm;
    MPI_Datatype mdt;
    size_t esz, total;
    bool equal;
    tp_status st = mpi_engine_types(c->eng, "all_gather", dt, NULL, &mdt, NULL, &esz);
    if (st == TP_OK)
        st = mpi_int_layout(c, "all_gather", counts, &total, &equal);
    if (st != TP_OK)
        return st;
    if ((st = mpi_dev_ready(c)) != TP_OK)
        return st;
    if (total == 0)
        return TP_OK; /* every rank computes the same total: all skip */
    const void *s = send;
    if ((const char *)send == (const char *)recv + (size_t)c->idispls[c->rank] * esz)
        s = MPI_IN_PLACE; /* own block already in place */
    int rc;
    c->seq++;
    mpi_engine_op_begin(c->eng, TPMPI_OPK_ALL_GATHER, c);
    if (equal)
        rc = MPI_Allgather(s, c->icounts[0], mdt, recv, c->icounts[0], mdt, c->comm);
    else
        rc =
            MPI_Allgatherv(s, c->icounts[c->rank], mdt, recv, c->icounts, c->idispls, mdt, c->comm);
    mpi_engine_op_end(c->eng);
    if (rc != MPI_SUCCESS)
        return mpi_fail(c, equal ? "all_gather (MPI_Allgather)" : "all_gather (MPI_Allgatherv)",
                        rc);
    return TP_OK;
}

tp_status mpi_reduce_scatter(void *comm, const void *send, void *recv, const size_t *counts,
                             tp_dtype dt, tp_redop op)
{
    mpi_comm *c = comm;
    MPI_Datatype mdt;
    MPI_Op mop;
    size_t esz, total;
    bool equal;
    tp_status st = mpi_engine_types(c->eng, "reduce_scatter", dt, &op, &mdt, &mop, &esz);
    if (st == TP_OK)
        st = mpi_int_layout(c, "reduce_scatter", counts, &total, &equal);
    if (st != TP_OK)
        return st;
    if ((st = mpi_dev_ready(c)) != TP_OK)
        return st;
    if (total == 0)
        return TP_OK;
    /* send == recv: MPI_IN_PLACE takes the input from recv and leaves the
     * rank's block at its start, which is what the caller asked for. */
    const void *s = send == recv ? MPI_IN_PLACE : send;
    int rc;
    c->seq++;
    mpi_engine_op_begin(c->eng, TPMPI_OPK_REDUCE_SCATTER, c);
    if (equal)
        rc = MPI_Reduce_scatter_block(s, recv, c->icounts[0], mdt, mop, c->comm);
    else
        rc = MPI_Reduce_scatter(s, recv, c->icounts, mdt, mop, c->comm);
    mpi_engine_op_end(c->eng);
    if (rc != MPI_SUCCESS)
        return mpi_fail(c,
                        equal ? "reduce_scatter (MPI_Reduce_scatter_block)"
                              : "reduce_scatter (MPI_Reduce_scatter)",
                        rc);
    return TP_OK;
}

tp_status mpi_broadcast(void *comm, void *buf, size_t count, tp_dtype dt, int root)
{
    mpi_comm *c = comm;
    MPI_Datatype mdt;
    size_t esz;
    tp_status st = mpi_engine_types(c->eng, "broadcast", dt, NULL, &mdt, NULL, &esz);
    if (st != TP_OK)
        return st;
    if ((st = mpi_dev_ready(c)) != TP_OK)
        return st;
    if (root < 0 || root >= c->size)
        return mpi_host->set_error(TP_ERR_INVALID_ARG,
                                   "mpi broadcast: root %d is not a rank of this %d-rank "
                                   "communicator (expected 0..%d)",
                                   root, c->size, c->size - 1);
    size_t chunk = mpi_engine_max_count(c->eng);
    int rc = MPI_SUCCESS;
    c->seq++;
    mpi_engine_op_begin(c->eng, TPMPI_OPK_BROADCAST, c);
    for (size_t done = 0; done < count && rc == MPI_SUCCESS; done += chunk) {
        size_t n = count - done < chunk ? count - done : chunk;
        rc = MPI_Bcast((char *)buf + done * esz, (int)n, mdt, root, c->comm);
    }
    mpi_engine_op_end(c->eng);
    return rc == MPI_SUCCESS ? TP_OK : mpi_fail(c, "broadcast (MPI_Bcast)", rc);
}

tp_status mpi_barrier(void *comm)
{
    mpi_comm *c = comm;
    c->seq++;
    mpi_engine_op_begin(c->eng, TPMPI_OPK_BARRIER, c);
    int rc = MPI_Barrier(c->comm);
    mpi_engine_op_end(c->eng);
    return rc == MPI_SUCCESS ? TP_OK : mpi_fail(c, "barrier (MPI_Barrier)", rc);
}
