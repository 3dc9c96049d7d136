/* SPDX-License-Identifier: MIT */
/* driver.c — start tp and run a function on T ranks, for each T asked. */
#include "bench.h"

#include "tp-try.h"

#include <tp/tp-info.h>

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void bench_env_init(bench_env *env, const bench_opts *o)
{
    memset(env, 0, sizeof *env);
    env->o = o;
}

void bench_env_finish(bench_env *env)
{
    tp_finalize(env->ctx);
    env->ctx = NULL;
}

int bench_cmd_finish(bench_env *env, bench_sink *sink, int rc)
{
    bench_env_finish(env);
    if (bench_sink_close(sink) != 0) {
        fprintf(stderr, "tp-bench: %s\n", sink->err);
        if (rc == 0)
            rc = BENCH_EXIT_FAIL;
    }
    return rc;
}

void bench_env_attach(bench_env *env, bench_sink *sink)
{
    env->sink = sink;
    if (sink->json_path || sink->csv_path)
        bench_sink_set_meta(sink, bench_meta_new(env->o->argc, env->o->argv, NULL));
}

/* The plugin file that `asked` (--backend/--device, TP_BACKEND/TP_DEVICE)
 * loaded as `name`: a path is inspected, a name found as the loader finds
 * it (the first accepted file of that name in search order). */
static void meta_plugin(bench_record *m, const tp_plugin_scan *scan, const char *role,
                        const char *name, const char *asked, bool comm)
{
    tp_plugin_info direct;
    memset(&direct, 0, sizeof direct);
    const tp_plugin_info *found = NULL;
    if (asked && strchr(asked, '/')) {
        tp_plugin_inspect(asked, &direct);
        found = direct.status == TP_OK ? &direct : NULL;
    }
    for (int i = 0; !found && scan && i < scan->n_plugins; i++) {
        const tp_plugin_info *p = &scan->plugins[i];
        if (p->status == TP_OK && !p->shadowed_by && p->name && strcmp(p->name, name) == 0 &&
            (comm ? p->is_comm : p->is_device))
            found = p;
    }
    bench_meta_set_plugin(m, role, name, found ? found->path : NULL, found ? found->version : NULL);
    tp_plugin_info_clear(&direct);
}

/* The meta record's run fields, until it is written. */
static void meta_fill(bench_env *env)
{
    bench_sink *sink = env->sink;
    if (!sink || !sink->meta || sink->meta_done)
        return;
    const bench_opts *o = env->o;
    const char *b = o->backend ? o->backend : g_getenv("TP_BACKEND");
    const char *d = o->device ? o->device : g_getenv("TP_DEVICE");
    tp_plugin_scan *scan = tp_plugin_scan_new();
    meta_plugin(sink->meta, scan, "backend", env->backend, b, true);
    meta_plugin(sink->meta, scan, "device", env->device, d, false);
    tp_plugin_scan_free(scan);
    if (!o->n_sweep_tp) {
        bench_rec_int(sink->meta, "world_size", env->world);
        return;
    }
    /* a sweep runs several worlds (each record has its "ranks"); the first
     * context may be a probe of another size */
    GString *list = g_string_new("[");
    for (int i = 0; i < o->n_sweep_tp; i++)
        g_string_append_printf(list, "%s%d", i ? "," : "", o->sweep_tp[i]);
    g_string_append_c(list, ']');
    bench_rec_json(sink->meta, "sweep_tp", list->str);
    g_string_free(list, TRUE);
}

int bench_env_tps(const bench_env *env, int *tps)
{
    const bench_opts *o = env->o;
    if (o->n_sweep_tp) {
        memcpy(tps, o->sweep_tp, (size_t)o->n_sweep_tp * sizeof(int));
        return o->n_sweep_tp;
    }
    tps[0] = o->dp > 1 ? env->world / o->dp : env->world; /* --dp: world = T x D */
    return 1;
}

bench_record *bench_env_rec_new(const bench_env *env, const char *kind, int ranks)
{
    bench_record *rec = bench_rec_new(kind);
    bench_rec_str(rec, "backend", env->backend);
    bench_rec_str(rec, "device", env->device);
    bench_rec_int(rec, "ranks", ranks);
    return rec;
}

static int init_ctx(bench_env *env, int world_size)
{
    tp_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.backend = env->o->backend;
    cfg.device = env->o->device;
    cfg.world_size = world_size;
    cfg.cpu_threads = env->o->threads;
    tp_ctx *ctx = NULL;
    tp_status st = tp_init(&cfg, &ctx);
    if (st != TP_OK) {
        fprintf(stderr, "tp-bench: tp_init failed (%s): %s\n", tp_status_string(st),
                tp_last_error());
        return st == TP_ERR_INVALID_ARG ? BENCH_EXIT_USAGE : BENCH_EXIT_FAIL;
    }
    env->ctx = ctx;
    env->world = tp_ctx_world_size(ctx);
    env->single_process = tp_ctx_local_count(ctx) == env->world;
    g_strlcpy(env->backend, tp_ctx_backend(ctx) ? tp_ctx_backend(ctx) : "?", sizeof env->backend);
    g_strlcpy(env->device, tp_ctx_device(ctx) ? tp_ctx_device(ctx) : "?", sizeof env->device);
    meta_fill(env);
    return BENCH_EXIT_OK;
}

int bench_env_probe(bench_env *env)
{
    if (env->ctx)
        return BENCH_EXIT_OK;
    /* --dp D: the world is T x D ranks */
    return init_ctx(env, env->o->tp * (env->o->dp > 1 ? env->o->dp : 1));
}

typedef struct wrap_arg {
    bench_env *env;
    bench_rank_fn fn;
    void *arg;
    int T;
    bool split;
} wrap_arg;

static tp_status wrap(tp_comm *world, void *a)
{
    wrap_arg *w = a;
    if (tp_comm_rank(world) == 0)
        w->env->printer = true;
    if (!w->split)
        return w->fn(world, w->T, w->arg);
    int r = tp_comm_rank(world);
    tp_comm *sub = NULL;
    tp_status st;
    TP_TRY_GOTO(tp_comm_split(world, r < w->T ? 0 : -1, r, &sub), st, wait);
    if (sub)
        st = w->fn(sub, w->T, w->arg);
wait:
    /* ranks outside the group wait here for the ones inside, even after a failure */
    st = bench_barrier_after(world, st);
    tp_comm_free(sub);
    return st;
}

tp_status bench_barrier_after(tp_comm *comm, tp_status st)
{
    if (st == TP_OK)
        return tp_barrier(comm);
    /* a collective clears the thread's last error: keep the failure's message */
    char msg[1024];
    g_strlcpy(msg, tp_last_error(), sizeof msg);
    tp_barrier(comm);
    return tp_set_error(st, "%s", msg);
}

void *bench_malloc(size_t bytes, const char *what, tp_status *st)
{
    if (*st != TP_OK)
        return NULL;
    void *p = malloc(bytes ? bytes : 1);
    if (!p)
        *st = tp_set_error(TP_ERR_NO_MEMORY,
                           "tp-bench: out of host memory for %s (%zu bytes); use smaller sizes",
                           what, bytes);
    return p;
}

int bench_run_tps(bench_env *env, const int *tps, int ntp, bench_rank_fn fn, void *arg)
{
    int rc = bench_env_probe(env);
    if (rc)
        return rc;
    for (int i = 0; i < ntp; i++) {
        int T = tps[i];
        bool split = false;
        if (env->single_process) {
            if (env->world != T) {
                /* a fresh world of T threads; TP_WORLD_SIZE was read as the
                 * default --tp and would now disagree with T */
                bench_env_finish(env);
                unsetenv("TP_WORLD_SIZE");
                rc = init_ctx(env, T);
                if (rc)
                    return rc;
                if (env->world != T) {
                    fprintf(stderr,
                            "tp-bench: asked the '%s' backend for %d ranks, it started %d\n",
                            env->backend, T, env->world);
                    return BENCH_EXIT_FAIL;
                }
            }
        } else if (T > env->world) {
            fprintf(
                stderr,
                "tp-bench: T=%d needs %d ranks but the '%s' engine runs %d (e.g. mpirun -n %d); "
                "start more ranks or drop T=%d\n",
                T, T, env->backend, env->world, T, T);
            return BENCH_EXIT_USAGE;
        } else {
            split = T < env->world;
        }
        wrap_arg w = {env, fn, arg, T, split};
        tp_status st = tp_run(env->ctx, wrap, &w);
        if (st != TP_OK) {
            fprintf(stderr, "tp-bench: run at T=%d on '%s' failed (%s): %s\n", T, env->backend,
                    tp_status_string(st), tp_last_error());
            return BENCH_EXIT_FAIL;
        }
    }
    return BENCH_EXIT_OK;
}

bool bench_is_printer(tp_comm *comm)
{
    /* groups are ordered by world rank, so group rank 0 is world rank 0 */
    return tp_comm_rank(comm) == 0;
}

/* ---------------------------------------------------------- progress */

void bench_progress_start(bench_progress *p, bool quiet)
{
    memset(p, 0, sizeof *p);
    p->t0 = bench_now();
    p->quiet = quiet;
    p->tty = isatty(STDERR_FILENO);
}

void bench_progress_update(bench_progress *p, const char *fmt, ...)
{
    double now = bench_now();
    if (p->quiet || now - p->t0 < 2.0 || now - p->last < 1.0)
        return;
    p->last = now;
    va_list ap;
    va_start(ap, fmt);
    char buf[160];
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (p->tty)
        fprintf(stderr, "\r\033[K[tp-bench %5.1fs] %s", now - p->t0, buf);
    else
        fprintf(stderr, "[tp-bench %5.1fs] %s\n", now - p->t0, buf);
    fflush(stderr);
    p->shown = true;
}

void bench_progress_done(bench_progress *p)
{
    if (p->shown && p->tty && !p->quiet) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
    }
    p->shown = false;
}

/* ---------------------------------------------------------- placement */

tp_status bench_place_get(tp_comm *comm, bench_place *out)
{
    memset(out, 0, sizeof *out);
    tp_layout lay;
    TP_TRY(tp_topology(comm, 1, false, NULL, NULL, &lay));
    out->nodes = lay.nodes;
    out->ranks_per_node = lay.local_size;
    const char *link = getenv("TP_LAUNCH_LINK");
    g_strlcpy(out->link, link && *link ? link : "none", sizeof out->link);
    return TP_OK;
}
