/* SPDX-License-Identifier: MIT */
/*
 * mpi-engine.c — the mpi engine: MPI start-up and shutdown, the world-size
 * check, datatypes and reduction ops, and the TP_TIMEOUT_S watchdog.
 *
 * Lifetime. MPI can be initialised once per process and never again after
 * MPI_Finalize, but a program may call tp_init/tp_finalize several times
 * (test suites do). So when the plugin initialises MPI itself it keeps MPI
 * alive across tp_finalize and calls MPI_Finalize from an exit handler; an
 * application that initialised MPI itself keeps that job (the plugin never
 * finalizes MPI it did not start). The module pins itself (RTLD_NODELETE):
 * unloading libmpi while its runtime threads run would crash, and the exit
 * handler must stay mapped.
 *
 * Loading. The core opens plugins with G_MODULE_BIND_LOCAL, so libmpi comes
 * in as a local dependency. Open MPI 4.1 loads its components (some of them
 * link libmpi only implicitly, e.g. mca_pml_ob1.so) with libmpi re-opened
 * globally during MPI_Init; checked on Debian 12's Open MPI 4.1.4 with
 * LD_DEBUG and a RTLD_LOCAL loader, so no RTLD_GLOBAL re-open is done here.
 *
 * Failure. A blocked MPI collective cannot be cancelled, so a rank that
 * waits longer than TP_TIMEOUT_S for its peers ends the whole job with
 * MPI_Abort from a watchdog thread; a rank that failed on its own ends it
 * through the engine's abort slot (mpi_engine_abort) when the core has one.
 * Measured with Open MPI 4.1.4: a rank that exits without MPI_Finalize makes
 * mpirun kill the job in about 1 s, MPI_Abort in about 0.3 s, while a rank
 * that calls MPI_Finalize while its peers wait in a collective hangs them
 * all forever — which is why a failed rank must abort instead.
 */
#include "mpi-internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct mpi_engine {
    int world_rank, world_size;
    int thread_level;                    /* what MPI provided */
    size_t max_count;                    /* largest count one MPI call may take (int) */
    MPI_Op half_ops[2][TP_REDOP_COUNT_]; /* [0: f16, 1: bf16][redop] */

    /* watchdog: a blocking call is in flight while op_start_ns != 0; site
     * says which (written before op_start_ns is set, read after) */
    double timeout_s;
    bool watchdog_on;
    _Atomic long long op_start_ns;
    mpi_diag_site site;
    pthread_t watchdog;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
};

static bool mpi_we_initialised; /* MPI_Init_thread was ours: finalize at exit */
static bool mpi_exit_hook;      /* the exit handler is registered */

size_t mpi_engine_max_count(const mpi_engine *e)
{
    return e->max_count;
}

static const char *thread_level_name(int level)
{
    switch (level) {
        case MPI_THREAD_SINGLE: return "MPI_THREAD_SINGLE";
        case MPI_THREAD_FUNNELED: return "MPI_THREAD_FUNNELED";
        case MPI_THREAD_SERIALIZED: return "MPI_THREAD_SERIALIZED";
        case MPI_THREAD_MULTIPLE: return "MPI_THREAD_MULTIPLE";
        default: return "unknown";
    }
}

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ------------------------------------------------------------ lifetime */

static void mpi_exit_finalize(void)
{
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (mpi_we_initialised && inited && !finalized)
        MPI_Finalize();
}

/* Keep this module (and with it libmpi) mapped until exit. */
static void pin_module(void)
{
    Dl_info di;
    if (dladdr((void *)&mpi_exit_finalize, &di) && di.dli_fname) {
        /* The extra reference is never dropped: that is the point. */
        void *self = dlopen(di.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
        if (!self && mpi_host)
            mpi_host->debug("comm",
                            "mpi: could not pin %s (%s); MPI will be finalized when "
                            "the plugin is unloaded",
                            di.dli_fname, dlerror());
    }
}

/* ------------------------------------------------------------ watchdog */

/* The watchdog's tick, and a peer's heartbeat older than this means it is
 * not running (stopped, or starved of CPU). */
static double watchdog_period(const mpi_engine *e)
{
    double period = e->timeout_s / 4;
    return period > 1.0 ? 1.0 : period < 0.01 ? 0.01 : period;
}

/* The only way out of a blocked MPI call. The message goes to stderr
 * because the process is about to be killed; it is formatted into a static
 * buffer (this thread is the only one that fires).
 *
 * Waiting ranks time out together, and several MPI_Abort calls at once can
 * crash Open MPI 4.1's mpirun (its relay of the abort messages: "Data
 * unpack would read past end of buffer" in show_help.c, then SIGSEGV; seen
 * in CI with 3 ranks aborting). So the aborts are put in order: a rank
 * aborts one watchdog period after its deadline (by then every waiting
 * rank's watchdog has ticked past it, whatever its phase) plus 1 s for
 * each lower rank it sees inside a collective (at most 5 s). The lowest
 * one ends the job (in ~0.3 s); the others are a back-up if it did not. */
static void watchdog_fire(mpi_engine *e, long long t0, long long waited)
{
    static char why[4096];
    static int members[4096];
    /* Copy the site (and its member list, which the rank frees with its
     * comm once the call returns) and use the copy only if the call is
     * still the one that timed out after copying. */
    mpi_diag_site site = e->site;
    int ranks = site.n; /* the report looks at the first 4096 */
    if (site.n < 0 || site.n > (int)(sizeof members / sizeof members[0]))
        site.n = site.n < 0 ? 0 : (int)(sizeof members / sizeof members[0]);
    if (site.members && site.n)
        memcpy(members, site.members, (size_t)site.n * sizeof members[0]);
    site.members = site.members ? members : NULL;
    if (atomic_load_explicit(&e->op_start_ns, memory_order_acquire) != t0)
        return; /* the call returned meanwhile: no timeout after all */
    double stale_s = 2 * watchdog_period(e) + 0.25;
    mpi_diag_report(why, sizeof why, &site, stale_s);
    if (atomic_load_explicit(&e->op_start_ns, memory_order_acquire) != t0)
        return;
    fprintf(stderr,
            "tp mpi: rank %d: %s has waited %.1f s for its peers, longer than TP_TIMEOUT_S=%g s "
            "(it is collective #%llu on a communicator of %d rank%s). %sAborting the MPI job "
            "(MPI_Abort) because a blocked MPI call cannot be cancelled. Raise TP_TIMEOUT_S if "
            "the peers are only slow.\n",
            e->world_rank, mpi_opk_name(site.opk), (double)waited / 1e9, e->timeout_s,
            (unsigned long long)site.seq, ranks, ranks == 1 ? "" : "s", why);
    fflush(stderr);
    int below = mpi_diag_waiting_below(e->world_rank, stale_s);
    long long at = t0 + (long long)((e->timeout_s + watchdog_period(e)) * 1e9) +
                   (below > 5 ? 5 : below) * 1000000000LL;
    struct timespec ts = {(time_t)(at / 1000000000LL), (long)(at % 1000000000LL)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
    MPI_Abort(MPI_COMM_WORLD, TP_ERR_TIMEOUT);
}

static void *watchdog_main(void *arg)
{
    mpi_engine *e = arg;
    double period = watchdog_period(e);
    long long limit_ns = (long long)(e->timeout_s * 1e9);

    pthread_mutex_lock(&e->mu);
    while (!e->stop) {
        mpi_diag_heartbeat();
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        long long wake =
            (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec + (long long)(period * 1e9);
        ts.tv_sec = wake / 1000000000LL;
        ts.tv_nsec = wake % 1000000000LL;
        pthread_cond_timedwait(&e->cv, &e->mu, &ts);
        if (e->stop)
            break;
        long long t0 = atomic_load_explicit(&e->op_start_ns, memory_order_acquire);
        if (t0 == 0)
            continue;
        long long waited = now_ns() - t0;
        if (waited > limit_ns)
            watchdog_fire(e, t0, waited);
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

void mpi_engine_op_begin(mpi_engine *e, mpi_opk opk, const mpi_comm *c)
{
    mpi_diag_enter((int)opk, c->key, c->seq);
    if (!e->watchdog_on)
        return;
    mpi_diag_heartbeat(); /* between ticks too: a short job may see none */
    e->site.world_rank = e->world_rank;
    e->site.opk = (int)opk;
    e->site.key = c->key;
    e->site.seq = c->seq;
    e->site.members = c->world_ranks;
    e->site.n = c->size;
    atomic_store_explicit(&e->op_start_ns, now_ns(), memory_order_release);
}

void mpi_engine_op_end(mpi_engine *e)
{
    mpi_diag_leave();
    if (!e->watchdog_on)
        return;
    atomic_store_explicit(&e->op_start_ns, 0, memory_order_release);
    mpi_diag_heartbeat();
}

static tp_status start_watchdog(mpi_engine *e)
{
    if (!(e->timeout_s > 0))
        return TP_OK;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&e->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&e->mu, NULL);
    int rc = pthread_create(&e->watchdog, NULL, watchdog_main, e);
    if (rc != 0) {
        pthread_cond_destroy(&e->cv);
        pthread_mutex_destroy(&e->mu);
        return mpi_host->set_error(TP_ERR_NO_MEMORY,
                                   "mpi init: cannot start the TP_TIMEOUT_S watchdog thread: %s",
                                   strerror(rc));
    }
    e->watchdog_on = true;
    return TP_OK;
}

static void stop_watchdog(mpi_engine *e)
{
    if (!e->watchdog_on)
        return;
    pthread_mutex_lock(&e->mu);
    e->stop = true;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    pthread_join(e->watchdog, NULL);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->mu);
    e->watchdog_on = false;
}

/* ------------------------------------------------------------ datatypes */

static void free_half_ops(mpi_engine *e)
{
    for (int k = 0; k < 2; k++)
        for (int o = 0; o < TP_REDOP_COUNT_; o++)
            if (e->half_ops[k][o] != MPI_OP_NULL)
                MPI_Op_free(&e->half_ops[k][o]);
}

static tp_status create_half_ops(mpi_engine *e)
{
    MPI_User_function *fns[2][TP_REDOP_COUNT_] = {
        {mpi_half_sum, mpi_half_max, mpi_half_min},
        {mpi_bf16_sum, mpi_bf16_max, mpi_bf16_min},
    };
    for (int k = 0; k < 2; k++)
        for (int o = 0; o < TP_REDOP_COUNT_; o++)
            e->half_ops[k][o] = MPI_OP_NULL;
    for (int k = 0; k < 2; k++)
        for (int o = 0; o < TP_REDOP_COUNT_; o++) {
            int rc = MPI_Op_create(fns[k][o], 1, &e->half_ops[k][o]);
            if (rc != MPI_SUCCESS) {
                free_half_ops(e);
                return mpi_fail(NULL, "init (MPI_Op_create for f16/bf16)", rc);
            }
        }
    return TP_OK;
}

tp_status mpi_engine_types(mpi_engine *e, const char *opname, tp_dtype dt, const tp_redop *op,
                           MPI_Datatype *mdt, MPI_Op *mop, size_t *elem_size)
{
    int half = -1;
    switch (dt) {
        case TP_F32:
            *mdt = MPI_FLOAT;
            *elem_size = 4;
            break;
        case TP_I32:
            *mdt = MPI_INT32_T;
            *elem_size = 4;
            break;
        case TP_F16:
            *mdt = MPI_UINT16_T;
            *elem_size = 2;
            half = 0;
            break;
        case TP_BF16:
            *mdt = MPI_UINT16_T;
            *elem_size = 2;
            half = 1;
            break;
        default:
            return mpi_host->set_error(TP_ERR_INVALID_ARG,
                                       "mpi %s: dtype %d is not a tp_dtype (expected 0..%d)",
                                       opname, (int)dt, TP_DTYPE_COUNT_ - 1);
    }
    if (!op)
        return TP_OK;
    if ((int)*op < 0 || *op >= TP_REDOP_COUNT_)
        return mpi_host->set_error(TP_ERR_INVALID_ARG,
                                   "mpi %s: reduction op %d is not a tp_redop (expected 0..%d)",
                                   opname, (int)*op, TP_REDOP_COUNT_ - 1);
    if (half >= 0) {
        *mop = e->half_ops[half][*op];
        return TP_OK;
    }
    switch (*op) {
        case TP_SUM: *mop = MPI_SUM; break;
        case TP_MAX: *mop = MPI_MAX; break;
        default: *mop = MPI_MIN; break;
    }
    return TP_OK;
}

/* ------------------------------------------------------------ engine */

int mpi_engine_probe(char *reason, size_t reason_len)
{
    /* Linking libmpi succeeded if we run at all; MPI_Get_library_version
     * may be called before MPI_Init. */
    char ver[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    if (MPI_Get_library_version(ver, &len) != MPI_SUCCESS) {
        if (reason && reason_len)
            snprintf(reason, reason_len,
                     "MPI_Get_library_version failed: the MPI library is unusable");
        return 0;
    }
    return 1;
}

tp_status mpi_engine_init(const tp_host *host, const tp_engine_args *args, void **engine,
                          tp_engine_info *info)
{
    mpi_host = host;
    *engine = NULL;

    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (finalized)
        return host->set_error(TP_ERR_UNAVAILABLE,
                               "mpi init: MPI_Finalize was already called in this process and MPI "
                               "cannot be started again; call tp_init before MPI_Finalize");

    int provided = MPI_THREAD_SINGLE;
    if (!inited) {
        int *argc = args ? args->argc : NULL;
        char ***argv = args ? args->argv : NULL;
        int rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
        if (rc != MPI_SUCCESS)
            return mpi_fail(NULL, "init (MPI_Init_thread)", rc);
        mpi_we_initialised = true;
        if (!mpi_exit_hook) {
            pin_module();
            atexit(mpi_exit_finalize);
            mpi_exit_hook = true;
        }
    } else {
        MPI_Query_thread(&provided);
    }
    /* Under mpirun the one rank of the process may run on a thread the
     * core starts, and the watchdog may call MPI_Abort from its own thread:
     * MULTIPLE is what we ask for; with less, those calls rely on Open MPI
     * tolerating them. Accept what we get and say so. */
    host->debug("comm", "mpi: %s MPI, thread level %s (asked MPI_THREAD_MULTIPLE)",
                inited ? "application initialised" : "plugin initialised",
                thread_level_name(provided));

    int rank = 0, size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    int want = (args && args->struct_size >= offsetof(tp_engine_args, world_size) + sizeof(int))
                   ? args->world_size
                   : 0;
    if (want > 0 && want != size)
        /* Every rank sees the same two numbers, so every rank fails here
         * alike; MPI stays up until exit, where it is finalized. */
        return host->set_error(
            TP_ERR_INVALID_ARG,
            "mpi init: the requested world size (TP_WORLD_SIZE or --tp) is %d but "
            "mpirun started %d process%s, and the mpi backend runs one rank per "
            "process; run `mpirun -n %d ...`, or ask for %d, or leave "
            "TP_WORLD_SIZE/--tp unset to use mpirun's count",
            want, size, size == 1 ? "" : "es", want, size);

    mpi_engine *e = calloc(1, sizeof *e);
    if (!e)
        return host->set_error(TP_ERR_NO_MEMORY, "mpi init: out of memory for the engine");
    e->world_rank = rank;
    e->world_size = size;
    e->thread_level = provided;
    e->timeout_s = host->timeout_s;
    e->max_count = INT_MAX;
    /* Test knob: a smaller per-call limit lets the suite exercise the
     * large-count paths (chunked all_reduce/broadcast, refusals of
     * all_gather/reduce_scatter) with small buffers. */
    const char *mc = getenv("TP_MPI_MAX_COUNT");
    if (mc && *mc) {
        char *end = NULL;
        errno = 0;
        long long v = strtoll(mc, &end, 10);
        if (errno || *end || v < 1 || v > INT_MAX) {
            free(e);
            return host->set_error(TP_ERR_INVALID_ARG,
                                   "mpi init: TP_MPI_MAX_COUNT=\"%s\" is not an integer in 1..%d",
                                   mc, INT_MAX);
        }
        e->max_count = (size_t)v;
    }

    tp_status st = create_half_ops(e);
    if (st == TP_OK)
        st = start_watchdog(e);
    if (st != TP_OK) {
        free_half_ops(e);
        free(e);
        return st;
    }
    info->world_size = size;
    info->local_count = 1;
    info->first_rank = rank;
    *engine = e;
    return TP_OK;
}

void mpi_engine_finalize(void *engine)
{
    mpi_engine *e = engine;
    if (!e)
        return;
    mpi_diag_done();
    stop_watchdog(e);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized)
        free_half_ops(e);
    free(e);
    /* MPI itself: see "Lifetime" above. */
}

void mpi_engine_abort(void *engine, int world_rank, tp_status status, const char *message)
{
    mpi_engine *e = engine;
    if (e && e->world_size <= 1)
        return; /* nobody waits for us: let the error return normally */
    fprintf(stderr,
            "tp mpi: rank %d failed (%s). Aborting the MPI job (MPI_Abort) so that the ranks "
            "waiting for it in a collective do not hang.\n",
            world_rank, message && *message ? message : "no message");
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, status > 0 && status < 256 ? (int)status : 1);
}
