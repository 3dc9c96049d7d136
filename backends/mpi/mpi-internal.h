/* SPDX-License-Identifier: MIT */
/*
 * mpi-internal.h — shared by the files of the mpi communicator plugin only.
 *
 * One engine per process (MPI has one COMM_WORLD), one rank per process.
 * Symbols here are hidden (gnu_symbol_visibility: 'hidden'); the plugin
 * exports only its TP_PLUGIN_DEFINE entry point. Files call downwards
 * only: mpi-plugin (the vtable) -> mpi-nb -> mpi-comm -> mpi-engine -> mpi-half,
 * mpi-comm and mpi-engine -> mpi-diag (the ranks' published state), and
 * everyone -> mpi-error (the leaf).
 */
#ifndef TP_MPI_INTERNAL_H
#define TP_MPI_INTERNAL_H

#include <tp/tp-plugin.h>
#include <tp/tp-plugin-util.h>

#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct mpi_engine mpi_engine;

/* A communicator handle as the core sees it (void *comm). */
typedef struct mpi_comm {
    MPI_Comm comm; /* owned: a dup or split, MPI_ERRORS_RETURN */
    mpi_engine *eng;
    int rank, size;
    /* For the watchdog's report (mpi-diag.c): the same key on every member,
     * the number of collectives so far, each member's world rank. */
    uint64_t key, seq;
    int *world_ranks;
    int *icounts; /* size entries: int counts for the v-variants */
    int *idispls; /* size entries: int displacements */
    /* CUDA-aware Open MPI on device memory: the rank's device, whose stream
     * is synchronized before each collective (MPI does not see streams). */
    const tp_device_ops *dops;
    void *dev;
} mpi_comm;

/* The kinds of blocking MPI calls the watchdog watches. */
typedef enum mpi_opk {
    TPMPI_OPK_WORLD,
    TPMPI_OPK_SPLIT,
    TPMPI_OPK_ALL_REDUCE,
    TPMPI_OPK_ALL_GATHER,
    TPMPI_OPK_REDUCE_SCATTER,
    TPMPI_OPK_BROADCAST,
    TPMPI_OPK_BARRIER,
    TPMPI_OPK_DIAG,
    TPMPI_OPK_COUNT_
} mpi_opk;

/* Where a rank waits: collective #seq of kind opk on the communicator with
 * this key, whose n members have these world ranks (NULL: 0..n-1). */
typedef struct mpi_diag_site {
    int world_rank;
    int opk;
    uint64_t key, seq;
    const int *members;
    int n;
} mpi_diag_site;

/* mpi-error.c: calls no other file */

/* The host of the current engine (set by init). */
extern const tp_host *mpi_host;

/* Turn an MPI return code into TP_ERR_COMM with MPI's error string; c may
 * be NULL (no communicator yet). */
tp_status mpi_fail(const mpi_comm *c, const char *op, int rc);

/* mpi-diag.c: each rank's state in a node-shared MPI window */
#define TPMPI_WORLD_KEY 0x7470776f726c64ULL /* the key of MPI_COMM_WORLD itself */
const char *mpi_opk_name(int opk);
uint64_t mpi_diag_key(uint64_t parent, uint64_t seq, int color);
/* Collective over world_dup, once per process; failure only loses the report. */
void mpi_diag_open(MPI_Comm world_dup, int world_rank, int world_size);
void mpi_diag_enter(int opk, uint64_t key, uint64_t seq);
void mpi_diag_leave(void);
void mpi_diag_done(void);
void mpi_diag_heartbeat(void);
/* Name the members of at's communicator that are not waiting with this
 * rank (a peer is stale when its heartbeat is older than stale_s). */
size_t mpi_diag_report(char *buf, size_t cap, const mpi_diag_site *at, double stale_s);
/* How many ranks below world_rank this rank can see inside a collective
 * with a heartbeat fresher than stale_s (0 without a state window). */
int mpi_diag_waiting_below(int world_rank, double stale_s);

/* mpi-engine.c */
tp_status mpi_engine_init(const tp_host *host, const tp_engine_args *args, void **engine,
                          tp_engine_info *info);
void mpi_engine_finalize(void *engine);
void mpi_engine_abort(void *engine, int world_rank, tp_status status, const char *message);
int mpi_engine_probe(char *reason, size_t reason_len);
size_t mpi_engine_max_count(const mpi_engine *e);
/* Mark a blocking MPI call in flight for the TP_TIMEOUT_S watchdog: call
 * #c->seq of kind opk on c (c->key, c->world_ranks, c->size are read). */
void mpi_engine_op_begin(mpi_engine *e, mpi_opk opk, const mpi_comm *c);
void mpi_engine_op_end(mpi_engine *e);
/* MPI datatype for dt, and for reductions the MPI_Op for (dt, op); 16-bit
 * floats use user ops created by the engine. Sets the error on failure. */
tp_status mpi_engine_types(mpi_engine *e, const char *opname, tp_dtype dt, const tp_redop *op,
                           MPI_Datatype *mdt, MPI_Op *mop, size_t *elem_size);

/* mpi-comm.c */
tp_status mpi_world(void *engine, int local_index, const tp_rank_env *env, void **comm, int *rank,
                    int *size);
tp_status mpi_split(void *comm, int color, int key, void **newcomm, int *rank, int *size);
void mpi_comm_free(void *comm);
tp_status mpi_all_reduce(void *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                         tp_redop op);
tp_status mpi_all_gather(void *comm, const void *send, void *recv, const size_t *counts,
                         tp_dtype dt);
tp_status mpi_reduce_scatter(void *comm, const void *send, void *recv, const size_t *counts,
                             tp_dtype dt, tp_redop op);
tp_status mpi_broadcast(void *comm, void *buf, size_t count, tp_dtype dt, int root);
tp_status mpi_barrier(void *comm);
/* Before a collective on device memory: the rank's stream has finished. */
tp_status mpi_dev_ready(const mpi_comm *c);
/* Fill c->icounts/idispls from counts; say whether all blocks are equal.
 * Refuses what does not fit MPI's int counts and displacements. */
tp_status mpi_int_layout(mpi_comm *c, const char *op, const size_t *counts, size_t *total,
                         bool *equal);

/* mpi-nb.c: nonblocking collectives (ABI 1.4), calls mpi-comm and mpi-engine */
tp_status mpi_iall_reduce(void *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                          tp_redop op, void **req);
tp_status mpi_iall_gather(void *comm, const void *send, void *recv, const size_t *counts,
                          tp_dtype dt, void **req);
tp_status mpi_ireduce_scatter(void *comm, const void *send, void *recv, const size_t *counts,
                              tp_dtype dt, tp_redop op, void **req);
tp_status mpi_req_test(void *comm, void *req, int *done);
tp_status mpi_req_wait(void *comm, void *req);
void mpi_req_free(void *comm, void *req);

/* mpi-half.c: reductions on IEEE half and bfloat16 in f32 arithmetic. */
void mpi_half_sum(void *in, void *inout, int *len, MPI_Datatype *dt);
void mpi_half_max(void *in, void *inout, int *len, MPI_Datatype *dt);
void mpi_half_min(void *in, void *inout, int *len, MPI_Datatype *dt);
void mpi_bf16_sum(void *in, void *inout, int *len, MPI_Datatype *dt);
void mpi_bf16_max(void *in, void *inout, int *len, MPI_Datatype *dt);
void mpi_bf16_min(void *in, void *inout, int *len, MPI_Datatype *dt);

#endif /* TP_MPI_INTERNAL_H */
