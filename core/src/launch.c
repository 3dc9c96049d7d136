/* SPDX-License-Identifier: MIT */
/* launch.c — configuration, tp_init / tp_run / tp_finalize. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tp-internal.h"

/* Largest world size a request (--tp, TP_WORLD_SIZE) may ask for. An engine
 * that decides the size itself (mpirun -n) is not limited by this. */
#define TP_MAX_REQUEST 64

struct tp_ctx {
    tp_plugin *comm_plugin, *dev_plugin;
    tp_plugin *intra_plugin; /* TP_INTRA_BACKEND, or NULL */
    void *engine;
    tp_engine_info info;
    tp_host host;
    int cpu_threads;
};

/* ---------------------------------------------------------------- config */

static tp_status parse_int(const char *what, const char *s, int lo, int hi, int *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s='%s': expected an integer in %d..%d", what, s,
                            lo, hi);
    *out = (int)v;
    return TP_OK;
}

tp_status tp_config_parse_tp(tp_config *cfg, int argc, char **argv)
{
    if (!cfg)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_config_parse_tp: cfg is NULL");
    for (int i = 1; i < argc && argv && argv[i]; i++) {
        const char *v = NULL;
        if (strcmp(argv[i], "--tp") == 0) {
            if (i + 1 >= argc || !argv[i + 1])
                return tp_set_error(TP_ERR_INVALID_ARG,
                                    "--tp needs a value: the number of tensor-parallel ranks, "
                                    "e.g. --tp 4");
            v = argv[++i];
        } else if (strncmp(argv[i], "--tp=", 5) == 0) {
            v = argv[i] + 5;
        } else {
            continue;
        }
        TP_TRY(parse_int("--tp", v, 1, TP_MAX_REQUEST, &cfg->world_size));
    }
    return TP_OK;
}

/* Requested world size: cfg->world_size and TP_WORLD_SIZE; 0 = none. */
static tp_status requested_world(const tp_config *cfg, int *out)
{
    int from_cfg = cfg ? cfg->world_size : 0;
    int from_env = 0;
    const char *env = getenv("TP_WORLD_SIZE");
    if (from_cfg < 0 || from_cfg > TP_MAX_REQUEST)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "world size %d requested (--tp / tp_config.world_size): expected "
                            "1..%d",
                            from_cfg, TP_MAX_REQUEST);
    if (env && env[0]) {
        TP_TRY(parse_int("TP_WORLD_SIZE", env, 1, TP_MAX_REQUEST, &from_env));
    }
    if (from_cfg && from_env && from_cfg != from_env)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "world size mismatch: --tp / tp_config.world_size asks for %d but "
                            "TP_WORLD_SIZE=%d; set only one, or make them agree",
                            from_cfg, from_env);
    *out = from_cfg ? from_cfg : from_env;
    return TP_OK;
}

static tp_status resolve_timeout(const tp_config *cfg, double *out)
{
    *out = 300.0;
    if (cfg && cfg->timeout_s < 0)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "tp_config.timeout_s = %g: expected > 0 (or 0 "
                            "for TP_TIMEOUT_S / the default 300 s)",
                            cfg->timeout_s);
    if (cfg && cfg->timeout_s > 0) {
        *out = cfg->timeout_s;
        return TP_OK;
    }
    const char *env = getenv("TP_TIMEOUT_S");
    if (env && env[0]) {
        char *end = NULL;
        double v = strtod(env, &end);
        if (end == env || *end || !(v > 0) || v > 1e9)
            return tp_set_error(TP_ERR_INVALID_ARG,
                                "TP_TIMEOUT_S='%s': expected a number of seconds > 0", env);
        *out = v;
    }
    return TP_OK;
}

static tp_status resolve_threads(const tp_config *cfg, int *out)
{
    *out = 1;
    if (cfg && cfg->cpu_threads < 0)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "tp_config.cpu_threads = %d: expected >= 1 (or "
                            "0 for TP_CPU_THREADS / the default 1)",
                            cfg->cpu_threads);
    if (cfg && cfg->cpu_threads > 0) {
        *out = cfg->cpu_threads;
        return TP_OK;
    }
    const char *env = getenv("TP_CPU_THREADS");
    if (env && env[0])
        return parse_int("TP_CPU_THREADS", env, 1, 4096, out);
    return TP_OK;
}

/* ------------------------------------------------------------ init/fini */

/* TP_INTRA_BACKEND: the plugin that node-local groups (tp_topology) run on,
 * bootstrapped through the world's backend; it must have comm_create. */
static tp_status load_intra(tp_ctx *ctx)
{
    const char *intra = getenv("TP_INTRA_BACKEND");
    if (!intra || !intra[0])
        return TP_OK;
    TP_TRY(tpi_plugin_load(intra, TP_KIND_COMM, "TP_INTRA_BACKEND", &ctx->intra_plugin));
    if (!ctx->intra_plugin->comm.comm_create)
        return tp_set_error(TP_ERR_PLUGIN,
                            "TP_INTRA_BACKEND=%s: plugin '%s' (%s) cannot serve as an intra-node "
                            "backend: it has no comm_create slot (plugin ABI 1.3); `tp-info` "
                            "lists the plugins that can",
                            intra, ctx->intra_plugin->name, ctx->intra_plugin->path);
    tpi_debug("comm",
              "intra-node backend %s (%s): groups inside one node run on it, the world "
              "and groups across nodes on %s",
              ctx->intra_plugin->name, ctx->intra_plugin->path, ctx->comm_plugin->name);
    return TP_OK;
}

tp_status tp_init(const tp_config *cfg, tp_ctx **out)
{
    if (!out)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_init: out is NULL");
    *out = NULL;
    int want = 0, threads = 1;
    double timeout = 300.0;
    TP_TRY(requested_world(cfg, &want));
    TP_TRY(resolve_timeout(cfg, &timeout));
    TP_TRY(resolve_threads(cfg, &threads));
    TP_TRY(tpi_signals_install());
    TP_TRY(tpi_debug_setup()); /* TP_DEBUG_FILE that cannot be opened: fail here, named */

    tp_ctx *ctx = g_try_new0(tp_ctx, 1);
    if (!ctx)
        return tp_set_error(TP_ERR_NO_MEMORY, "tp_init: cannot allocate %zu bytes for the context",
                            sizeof *ctx);
    ctx->cpu_threads = threads;
    tpi_host_init(&ctx->host, timeout);
    ctx->host.progress = tpi_progress;

    const char *backend = cfg && cfg->backend ? cfg->backend : getenv("TP_BACKEND");
    const char *bvar = cfg && cfg->backend ? "tp_config.backend" : "TP_BACKEND";
    if (!backend || !backend[0]) /* torchrun sets RANK and WORLD_SIZE: one process per rank */
        backend = getenv("RANK") && getenv("WORLD_SIZE") ? "tcp" : "loopback";
    tp_status st;
    TP_TRY_GOTO(tpi_plugin_load(backend, TP_KIND_COMM, bvar, &ctx->comm_plugin), st, fail);

    TP_TRY_GOTO(load_intra(ctx), st, fail);

    const char *device = cfg && cfg->device ? cfg->device : getenv("TP_DEVICE");
    const char *dvar = cfg && cfg->device ? "tp_config.device" : "TP_DEVICE";
    if (!device || !device[0])
        device = strcmp(ctx->comm_plugin->name, "nccl") == 0 ? "cuda" : "cpu";
    TP_TRY_GOTO(tpi_plugin_load(device, TP_KIND_DEVICE, dvar, &ctx->dev_plugin), st, fail);

    tp_engine_args args = {sizeof args, want, cfg ? cfg->argc : NULL, cfg ? cfg->argv : NULL};
    tp_engine_info info = {.struct_size = sizeof info};
    tp_clear_error();
    st = ctx->comm_plugin->comm.init(&ctx->host, &args, &ctx->engine, &info);
    if (st) {
        if (!tp_last_error()[0])
            tp_set_error(st, "%s", "(no message)");
        st = tp_set_error(st, "backend '%s': init failed: %s", ctx->comm_plugin->name,
                          tp_last_error());
        ctx->engine = NULL;
        goto fail;
    }
    ctx->info = info;
    if (info.world_size < 1 || info.local_count < 1 || info.first_rank < 0 ||
        info.local_count > info.world_size ||
        info.first_rank > info.world_size - info.local_count) {
        st = tp_set_error(TP_ERR_PLUGIN,
                          "backend '%s': init returned an inconsistent engine: world_size %d, "
                          "local_count %d, first_rank %d (a bug in the plugin)",
                          ctx->comm_plugin->name, info.world_size, info.local_count,
                          info.first_rank);
        goto fail;
    }
    if (want && info.world_size != want) {
        st = tp_set_error(TP_ERR_INVALID_ARG,
                          "world size mismatch: %d ranks requested (--tp / TP_WORLD_SIZE) but "
                          "backend '%s' runs %d (e.g. mpirun -n); make them agree or drop the "
                          "request",
                          want, ctx->comm_plugin->name, info.world_size);
        goto fail;
    }
    if (info.local_count == 1)
        tpi_debug_set_process_rank(info.first_rank);
    tpi_debug("launch", "backend %s, device %s, world %d, local %d from rank %d, timeout %g s",
              ctx->comm_plugin->name, ctx->dev_plugin->name, info.world_size, info.local_count,
              info.first_rank, timeout);
    *out = ctx;
    return TP_OK;
fail:
    tp_finalize(ctx);
    return st;
}

void tp_finalize(tp_ctx *ctx)
{
    if (!ctx)
        return;
    if (ctx->engine)
        ctx->comm_plugin->comm.finalize(ctx->engine);
    tpi_plugin_unload(ctx->dev_plugin);
    tpi_plugin_unload(ctx->intra_plugin);
    tpi_plugin_unload(ctx->comm_plugin);
    g_free(ctx);
}

int tp_ctx_world_size(const tp_ctx *ctx)
{
    return ctx ? ctx->info.world_size : 0;
}

int tp_ctx_local_count(const tp_ctx *ctx)
{
    return ctx ? ctx->info.local_count : 0;
}

const char *tp_ctx_backend(const tp_ctx *ctx)
{
    return ctx ? ctx->comm_plugin->name : NULL;
}

const char *tp_ctx_device(const tp_ctx *ctx)
{
    return ctx ? ctx->dev_plugin->name : NULL;
}

/* ----------------------------------------------------------------- run */

typedef struct run_state {
    tp_ctx *ctx;
    tp_rank_fn fn;
    void *arg;
    GMutex lock;
    GCond cond;
    int opened;       /* ranks past device open */
    bool open_failed; /* some rank could not open its device */
    int first_failed; /* local index of the first rank to fail, -1 if none */
} run_state;

/* Everything a rank needs is allocated before any rank starts, so that a
 * failure (out of memory, say) is recorded without allocating. */
typedef struct rank_job {
    run_state *run;
    int local_index;
    tp_status status;
    tp_rank_state state;
    char message[TPI_ERROR_MAX];
} rank_job;

static void record(rank_job *job, tp_status st)
{
    run_state *run = job->run;
    job->status = st;
    if (!st)
        return;
    g_strlcpy(job->message, tp_last_error()[0] ? tp_last_error() : "(no message)",
              sizeof job->message);
    atomic_store_explicit(&job->state.failed, true, memory_order_release); /* for the watchdog */
    g_mutex_lock(&run->lock);
    if (run->first_failed < 0)
        run->first_failed = job->local_index;
    g_mutex_unlock(&run->lock);
    /* Ranks in other processes may be waiting for this one in a collective
     * they can never finish: let a multi-process engine end the job now. */
    tp_ctx *ctx = run->ctx;
    const tp_comm_ops *cops = &ctx->comm_plugin->comm;
    if (ctx->info.local_count < ctx->info.world_size && cops->abort)
        cops->abort(ctx->engine, ctx->info.first_rank + job->local_index, st, job->message);
}

/* Every local rank opens its device before any enters world(), so that a
 * rank whose device fails does not leave the others waiting in world(). */
static bool wait_all_opened(run_state *run, bool ok)
{
    g_mutex_lock(&run->lock);
    if (!ok)
        run->open_failed = true;
    run->opened++;
    if (run->opened == run->ctx->info.local_count)
        g_cond_broadcast(&run->cond);
    while (run->opened < run->ctx->info.local_count)
        g_cond_wait(&run->cond, &run->lock);
    bool all_ok = !run->open_failed;
    g_mutex_unlock(&run->lock);
    return all_ok;
}

/* world() of the comm plugin, staged when the comm does not take the
 * device's memory (see rank_body). */
static tp_status open_world(rank_job *job, tp_device *dev, tp_rank_env *env, void **ch, int *rank,
                            int *size)
{
    tp_ctx *ctx = job->run->ctx;
    const tp_comm_ops *cops = &ctx->comm_plugin->comm;
    tp_rank_state *state = &job->state;
    /* A comm that does not take the device's memory but takes host memory
     * gets a host environment, and its collectives are staged (comm.c);
     * one that takes neither refuses in world() with its own message. A
     * comm that takes the kind but refuses this device in world() with
     * TP_ERR_NOT_SUPPORTED is staged too, when it takes host memory. */
    tp_rank_env host_env = {.struct_size = sizeof host_env,
                            .mem_kind = TP_MEM_HOST,
                            .device_index = -1,
                            .dev_ops = env->dev_ops,
                            .dev = env->dev};
    bool takes_host = tpi_comm_accepts(cops, TP_MEM_HOST);
    state->staged = !tpi_comm_accepts(cops, env->mem_kind) && takes_host;
    tpi_call_enter(state, "world", state->comm_path, 0, true);
    tp_status st =
        cops->world(ctx->engine, job->local_index, state->staged ? &host_env : env, ch, rank, size);
    tpi_call_leave(state, st);
    if (st == TP_ERR_NOT_SUPPORTED && !state->staged && env->mem_kind != TP_MEM_HOST &&
        takes_host) {
        tpi_debug("comm", "rank %d: backend '%s' refused device '%s' memory (%s)",
                  state->world_rank, ctx->comm_plugin->name, ctx->dev_plugin->name,
                  tp_last_error());
        tp_clear_error();
        state->staged = true;
        tpi_call_enter(state, "world", state->comm_path, 0, true);
        st = cops->world(ctx->engine, job->local_index, &host_env, ch, rank, size);
        tpi_call_leave(state, st);
    }
    if (state->staged)
        tpi_debug("comm",
                  "rank %d: backend '%s' does not take device '%s' memory (kind %d): "
                  "collectives stage through host memory",
                  state->world_rank, ctx->comm_plugin->name, ctx->dev_plugin->name,
                  (int)env->mem_kind);
    return st;
}

/* world(), then the program's rank function. */
static tp_status rank_body(rank_job *job, tp_device *dev, tp_rank_env *env, void **ch)
{
    run_state *run = job->run;
    tp_ctx *ctx = run->ctx;
    int world_rank = job->state.world_rank, rank = -1, size = 0;
    tp_status st = open_world(job, dev, env, ch, &rank, &size);
    if (st)
        return tp_set_error(st, "backend '%s': world() failed: %s", ctx->comm_plugin->name,
                            tp_last_error()[0] ? tp_last_error() : "(no message)");
    if (rank != world_rank || size != ctx->info.world_size || *ch == NULL)
        return tp_set_error(TP_ERR_PLUGIN,
                            "backend '%s': world() gave %s rank %d of %d, expected a "
                            "communicator, rank %d of %d (a bug in the plugin)",
                            ctx->comm_plugin->name, *ch ? "a communicator," : "no communicator,",
                            rank, size, world_rank, ctx->info.world_size);
    tp_comm *world = tpi_comm_wrap(&ctx->comm_plugin->comm, ctx->comm_plugin->name, *ch, rank, size,
                                   dev, &job->state);
    if (!world)
        return tp_set_error(TP_ERR_NO_MEMORY,
                            "tp_run: cannot allocate %zu bytes for rank %d's world communicator",
                            sizeof(tp_comm), world_rank);
    world->is_world = true;
    world->intra = ctx->intra_plugin;
    world->host = &ctx->host;
    tp_clear_error();
    st = run->fn(world, run->arg);
    if (st && !tp_last_error()[0])
        tp_set_error(st, "rank_main returned %s without a message", tp_status_string(st));
    tpi_request_comm_end(world);  /* unwaited requests complete before the world goes */
    tpi_device_read_timings(dev); /* pending times point into world's counters */
    tpi_comm_mem_end(world);
    tpi_wait_log_free(world->wait_log);
    g_free(world);
    return st;
}

static void *rank_thread(void *data)
{
    rank_job *job = data;
    run_state *run = job->run;
    tp_ctx *ctx = run->ctx;
    const tp_device_ops *dops = &ctx->dev_plugin->device;
    const tp_comm_ops *cops = &ctx->comm_plugin->comm;
    tp_rank_state *state = &job->state;
    tp_device dev;
    void *dh = NULL, *ch = NULL;
    tp_rank_env env = {.struct_size = sizeof env, .mem_kind = TP_MEM_HOST, .device_index = -1};
    tp_device_args dargs = {sizeof dargs, state->world_rank, job->local_index,
                            ctx->info.local_count, ctx->cpu_threads};

    tpi_watch_rank_begin(state);
    tpi_debug_set_rank(state->world_rank);
    tp_clear_error();
    tpi_call_enter(state, "open", state->dev_path, 0, false);
    tp_status st = tpi_call_leave(state, dops->open(&ctx->host, &dargs, &dh, &env));
    if (st) {
        tp_set_error(st, "device '%s': open failed: %s", ctx->dev_plugin->name,
                     tp_last_error()[0] ? tp_last_error() : "(no message)");
        record(job, st); /* before the others are released: it is the first failure */
    }
    if (!wait_all_opened(run, st == TP_OK)) {
        if (!st) {
            record(job,
                   tp_set_error(TP_ERR_PEER, "not started: another rank's device failed to open"));
            dops->close(dh);
        }
        tpi_debug_set_rank(-1);
        tpi_watch_rank_end(state);
        return NULL;
    }
    env.struct_size = sizeof env; /* the core's full-size copy, whatever open() set */
    env.dev_ops = dops;
    env.dev = dh;
    tpi_device_init(&dev, dops, ctx->dev_plugin->name, dh, &env, state);
    st = rank_body(job, &dev, &env, &ch);
    /* Record before comm_free: freeing is how peers learn this rank left,
     * and their errors must not be taken for the first failure. */
    record(job, st);
    if (ch) {
        tpi_call_enter(state, "comm_free", state->comm_path, 0, true);
        cops->comm_free(ch);
        tpi_call_leave(state, TP_OK);
    }
    tpi_request_rank_end(state);
    tpi_stage_free(state, &dev);
    tpi_device_timing_free(&dev);
    dops->synchronize(dh);
    dops->close(dh);
    tpi_debug_set_rank(-1);
    tpi_watch_rank_end(state);
    return NULL;
}

/* Start a thread per rank. When one cannot start, the ranks already
 * started are released from their open barrier as if a device had failed,
 * so every one of them ends; returns the error. */
static tp_status start_ranks(run_state *run, rank_job *jobs, pthread_t *threads, bool *started)
{
    tp_ctx *ctx = run->ctx;
    int n = ctx->info.local_count;
    for (int i = 0; i < n; i++) {
        int rc = pthread_create(&threads[i], NULL, rank_thread, &jobs[i]);
        if (rc == 0) {
            char name[16];
            g_snprintf(name, sizeof name, "tp-rank%d", i);
            pthread_setname_np(threads[i], name);
            started[i] = true;
            continue;
        }
        tp_status st =
            tp_set_error(TP_ERR_NO_MEMORY,
                         "tp_run: cannot start the thread of rank %d (%d of %d local ranks "
                         "started): %s; each rank thread needs a stack (ulimit -s) within the "
                         "address-space limit (ulimit -v) and the process limit (ulimit -u): "
                         "run fewer ranks per process or raise the limits",
                         ctx->info.first_rank + i, i, n, strerror(rc));
        g_mutex_lock(&run->lock);
        run->open_failed = true;
        run->opened += n - i;
        g_cond_broadcast(&run->cond);
        g_mutex_unlock(&run->lock);
        return st;
    }
    return TP_OK;
}

tp_status tp_run(tp_ctx *ctx, tp_rank_fn fn, void *arg)
{
    if (!ctx || !fn)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_run: %s is NULL", !ctx ? "ctx" : "fn");
    int n = ctx->info.local_count;
    run_state run = {.ctx = ctx, .fn = fn, .arg = arg, .first_failed = -1};
    size_t bytes =
        (size_t)n * (sizeof(rank_job) + sizeof(pthread_t) + sizeof(bool) + sizeof(tp_rank_state *));
    rank_job *jobs = g_try_new0(rank_job, n);
    pthread_t *threads = g_try_new0(pthread_t, n);
    bool *started = g_try_new0(bool, n);
    tp_rank_state **states = g_try_new0(tp_rank_state *, n);
    if (!jobs || !threads || !started || !states) {
        g_free(jobs);
        g_free(threads);
        g_free(started);
        g_free(states);
        return tp_set_error(TP_ERR_NO_MEMORY, "tp_run: cannot allocate %zu bytes for %d ranks",
                            bytes, n);
    }
    g_mutex_init(&run.lock);
    g_cond_init(&run.cond);
    for (int i = 0; i < n; i++) {
        jobs[i].run = &run;
        jobs[i].local_index = i;
        jobs[i].state.phase = TP_PHASE_OTHER;
        jobs[i].state.world_rank = ctx->info.first_rank + i;
        jobs[i].state.comm_path = ctx->comm_plugin->path;
        jobs[i].state.dev_path = ctx->dev_plugin->path;
        jobs[i].state.error = jobs[i].message;
        states[i] = &jobs[i].state;
    }
    tpi_watchdog *dog = tpi_watchdog_start(states, n, ctx->host.timeout_s);
    for (int i = 0; i < n; i++)
        states[i]->watchdog = dog;
    tp_status st = TP_OK;
    if (n == 1) {
        rank_thread(&jobs[0]); /* the calling thread: MPI wants it */
    } else {
        st = start_ranks(&run, jobs, threads, started);
        for (int i = 0; i < n; i++)
            if (started[i])
                pthread_join(threads[i], NULL);
    }
    tpi_watchdog_stop(dog);
    for (int i = 0; i < n; i++)
        states[i]->watchdog = NULL;
    if (!st && run.first_failed >= 0) {
        rank_job *j = &jobs[run.first_failed];
        st = tp_set_error(j->status, "rank %d: %s", ctx->info.first_rank + j->local_index,
                          j->message);
    }
    g_free(jobs);
    g_free(threads);
    g_free(started);
    g_free(states);
    g_mutex_clear(&run.lock);
    g_cond_clear(&run.cond);
    return st;
}
