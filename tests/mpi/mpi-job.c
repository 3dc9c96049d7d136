/* SPDX-License-Identifier: MIT */
/*
 * mpi-job.c — one MPI job per scenario, run under mpirun by test-mpi-jobs.c
 * (not a test by itself). Usage: mpi-job MODE [--tp N], with TP_BACKEND=mpi.
 *
 *   sum          tp_init/tp_run/tp_finalize twice in one process (MPI is
 *                started by the plugin once and finalized at exit); each
 *                run all-reduces the ranks' ids and checks the sum.
 *   app-init     the application calls MPI_Init_thread itself: tp must use
 *                that MPI, leave it running after tp_finalize (checked with
 *                an MPI_Allreduce of our own), and the application finalizes.
 *   fail-return  rank 1's rank_main returns an error before the first
 *                collective while the others wait in an all_reduce.
 *   fail-exit    rank 1 exits (status 3) before the first collective.
 *   hang         rank 1 sleeps instead of joining the collective (for the
 *                TP_TIMEOUT_S watchdog).
 *   stall        after one all_reduce, the last rank sleeps instead of
 *                joining the second (the watchdog must name it).
 *   stop         after one all_reduce, the last rank stops itself with
 *                SIGSTOP (it cannot even answer): the watchdog must name it.
 *   stall-split  after one all_reduce, the ranks split by parity; the last
 *                rank sleeps instead of joining its half's all_reduce, while
 *                the other half goes on to a barrier on the world.
 *
 * Prints "mpi-job MODE ok" on rank 0 when the scenario completed, and the
 * error message on any rank where tp failed; exits 1 on failure.
 */
#include <tp/tp.h>

#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *mode;

static tp_status stall_split(tp_comm *world, int rank, int size)
{
    tp_comm *half = NULL;
    tp_status st = tp_comm_split(world, rank % 2, rank, &half);
    if (st != TP_OK)
        return st;
    if (rank == size - 1)
        sleep(600);
    int32_t v = rank;
    st = tp_all_reduce(half, &v, &v, 1, TP_I32, TP_SUM);
    if (st == TP_OK)
        st = tp_barrier(world);
    tp_comm_free(half);
    return st;
}

static tp_status rank_main(tp_comm *world, void *arg)
{
    (void)arg;
    int rank = tp_comm_rank(world), size = tp_comm_size(world);
    if (rank == 1 && strcmp(mode, "fail-return") == 0)
        return tp_set_error(TP_ERR_INVALID_ARG, "mpi-job: rank 1 fails on purpose before the "
                                                "first collective");
    if (rank == 1 && strcmp(mode, "fail-exit") == 0)
        _exit(3);
    if (rank == 1 && strcmp(mode, "hang") == 0)
        sleep(600);
    int32_t v = rank;
    tp_status st = tp_all_reduce(world, &v, &v, 1, TP_I32, TP_SUM);
    if (st)
        return st;
    if (rank == size - 1 && strcmp(mode, "stall") == 0)
        sleep(600);
    if (rank == size - 1 && strcmp(mode, "stop") == 0) {
        raise(SIGSTOP);
        sleep(600); /* mpirun sends SIGCONT before it kills: stay out */
    }
    if (strcmp(mode, "stall-split") == 0)
        return stall_split(world, rank, size);
    if (strcmp(mode, "stall") == 0 || strcmp(mode, "stop") == 0) {
        v = rank; /* a second all_reduce: #2 on the world communicator */
        if ((st = tp_all_reduce(world, &v, &v, 1, TP_I32, TP_SUM)) != TP_OK)
            return st;
    }
    if (v != size * (size - 1) / 2)
        return tp_set_error(TP_ERR_INTERNAL, "mpi-job: all_reduce gave %d, expected %d", v,
                            size * (size - 1) / 2);
    return tp_barrier(world);
}

static int run_once(int *argc, char ***argv)
{
    tp_config cfg = {0};
    cfg.argc = argc;
    cfg.argv = argv;
    tp_ctx *ctx = NULL;
    tp_status st = tp_config_parse_tp(&cfg, *argc, *argv);
    if (st == TP_OK)
        st = tp_init(&cfg, &ctx);
    if (st == TP_OK)
        st = tp_run(ctx, rank_main, NULL);
    if (st != TP_OK)
        fprintf(stderr, "mpi-job %s: %s: %s\n", mode, tp_status_string(st), tp_last_error());
    tp_finalize(ctx);
    return st == TP_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr,
                "usage: mpi-job sum|app-init|fail-return|fail-exit|hang|stall|stop|stall-split\n");
        return 2;
    }
    mode = argv[1];
    int world_rank = -1;
    if (strcmp(mode, "app-init") == 0) {
        int provided = 0;
        if (MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
            return 1;
        MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
        int rc = run_once(&argc, &argv) || run_once(&argc, &argv);
        int finalized = 1, size = 0, one = 1, sum = 0;
        MPI_Finalized(&finalized);
        if (finalized) {
            fprintf(stderr, "mpi-job app-init: tp finalized the application's MPI\n");
            return 1;
        }
        MPI_Comm_size(MPI_COMM_WORLD, &size);
        MPI_Allreduce(&one, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
        if (sum != size) {
            fprintf(stderr, "mpi-job app-init: MPI_Allreduce after tp_finalize gave %d\n", sum);
            rc = 1;
        }
        MPI_Finalize();
        if (rc == 0 && world_rank == 0)
            printf("mpi-job %s ok\n", mode);
        return rc;
    }
    int rc = run_once(&argc, &argv);
    if (rc == 0 && strcmp(mode, "sum") == 0)
        rc = run_once(&argc, &argv);
    /* tp started MPI, so it is still running here and gives our rank */
    int inited = 0;
    MPI_Initialized(&inited);
    if (inited)
        MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    if (rc == 0 && world_rank == 0)
        printf("mpi-job %s ok\n", mode);
    return rc;
}
