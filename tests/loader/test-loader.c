/* SPDX-License-Identifier: MIT */
/*
 * test-loader.c — the plugin loader, launch and config, comm dispatch with
 * its fallbacks, stats, tensors, errors, shard ranges, the master RNG and
 * tp-info. Uses the fixture plugins of this directory (TP_PLUGIN_PATH is
 * set to it by meson); nothing here needs the real backends.
 */
#include <check.h>
#include <glib.h>
#include <json-glib/json-glib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <tp/tp-info.h>
#include <tp/tp.h>

#include "tp-expect.h"
#include "tp-internal.h"

#define FIX FIXTURE_DIR

/* tp_init with the given backend/device (NULL: environment/defaults). */
static tp_status init_with(const char *backend, const char *device, int world, tp_ctx **ctx)
{
    tp_config cfg = {.backend = backend, .device = device, .world_size = world};
    return tp_init(&cfg, ctx);
}

#define ck_assert_msg_has(needle)                                                                  \
    ck_assert_msg(strstr(tp_last_error(), (needle)) != NULL, "message lacks '%s': %s", (needle),   \
                  tp_last_error())

/* Load `name` as a comm plugin; expect `want` and a message naming the file. */
static void expect_refused(const char *name, tp_status want, const char *reason)
{
    tp_ctx *ctx = NULL;
    tp_status st = init_with(name, "good", 1, &ctx);
    ck_assert_msg(st == want, "%s: got %s, want %s: %s", name, tp_status_string(st),
                  tp_status_string(want), tp_last_error());
    ck_assert_ptr_null(ctx);
    char *file = g_strdup_printf("%s/libtp-%s.so", FIX, name);
    ck_assert_msg_has(file);
    ck_assert_msg_has(reason);
    g_free(file);
}

/* ------------------------------------------------------------- loader */

START_TEST(test_good)
{
    tp_ctx *ctx = NULL;
    ck_assert_int_eq(init_with("good", "good", 3, &ctx), TP_OK);
    ck_assert_str_eq(tp_ctx_backend(ctx), "good");
    ck_assert_str_eq(tp_ctx_device(ctx), "good");
    ck_assert_int_eq(tp_ctx_world_size(ctx), 3);
    ck_assert_int_eq(tp_ctx_local_count(ctx), 3);
    tp_finalize(ctx);
    tp_finalize(NULL);
}
END_TEST

START_TEST(test_env_selects)
{
    setenv("TP_BACKEND", "good", 1);
    setenv("TP_DEVICE", "good", 1);
    tp_ctx *ctx = NULL;
    ck_assert_int_eq(tp_init(NULL, &ctx), TP_OK);
    ck_assert_str_eq(tp_ctx_backend(ctx), "good");
    ck_assert_int_eq(tp_ctx_world_size(ctx), 1); /* no request: the engine decides */
    tp_finalize(ctx);
}
END_TEST

START_TEST(test_refusals)
{
    expect_refused("garbage", TP_ERR_PLUGIN, "not a loadable shared object");
    expect_refused("noentry", TP_ERR_PLUGIN, "no entry point tp_plugin_get_desc_v1");
    expect_refused("nullentry", TP_ERR_PLUGIN, "returned NULL");
    char abi_msg[128];
    snprintf(abi_msg, sizeof abi_msg, "built for plugin ABI %d.%d, this libtp has ABI %d.%d",
             TP_ABI_MAJOR + 1, TP_ABI_MINOR, TP_ABI_MAJOR, TP_ABI_MINOR);
    expect_refused("abimajor", TP_ERR_PLUGIN, abi_msg);
    expect_refused("smalldesc", TP_ERR_PLUGIN, "descriptor struct_size is 16 bytes");
    expect_refused("badname", TP_ERR_PLUGIN, "name mismatch");
    expect_refused("badname", TP_ERR_PLUGIN, "'othername'");
    expect_refused("noslot", TP_ERR_PLUGIN, "required tp_comm_ops slot 'all_reduce' is NULL");
    expect_refused("smallops", TP_ERR_PLUGIN, "tp_comm_ops struct_size is 16 bytes");
    expect_refused("halfnb", TP_ERR_PLUGIN, "sets 1 of the 6 slots iall_reduce .. req_free");
    expect_refused("halfnb", TP_ERR_PLUGIN, "'iall_reduce' is NULL");
    expect_refused("halfmem", TP_ERR_PLUGIN, "sets 1 of the 2 slots mem_alloc .. mem_free");
    expect_refused("halfmem", TP_ERR_PLUGIN, "'mem_alloc' is NULL");
    expect_refused("unavail", TP_ERR_UNAVAILABLE, "the frobnicator is not plugged in");
    expect_refused("devonly", TP_ERR_PLUGIN, "is not a communicator plugin");
}
END_TEST

START_TEST(test_wrong_device_kind)
{
    tp_ctx *ctx = NULL;
    setenv("TP_DEVICE", "commonly", 1);
    ck_assert_int_eq(init_with("good", NULL, 1, &ctx), TP_ERR_PLUGIN);
    ck_assert_msg_has("TP_DEVICE=commonly");
    ck_assert_msg_has("is not a device plugin");
    ck_assert_msg_has(FIX "/libtp-commonly.so");
}
END_TEST

START_TEST(test_not_found_lists)
{
    setenv("TP_BACKEND", "nosuch", 1);
    tp_ctx *ctx = NULL;
    ck_assert_int_eq(tp_init(NULL, &ctx), TP_ERR_PLUGIN);
    ck_assert_msg_has("TP_BACKEND=nosuch");
    ck_assert_msg_has("libtp-nosuch.so");
    ck_assert_msg_has(FIX " (TP_PLUGIN_PATH)");    /* where it looked */
    ck_assert_msg_has(FIX "/libtp-good.so");       /* what it found */
    ck_assert_msg_has("set TP_BACKEND to one of"); /* how to fix */
    ck_assert_msg_has("commonly");                 /* comm plugins listed */
}
END_TEST

START_TEST(test_not_found_names_skipped)
{
    /* Relative entries are never searched: the error names them. */
    setenv("TP_PLUGIN_PATH", "rel-dir:" FIX ":./other", 1);
    tp_ctx *ctx = NULL;
    ck_assert_int_eq(init_with("nosuch", "good", 1, &ctx), TP_ERR_PLUGIN);
    ck_assert_msg_has("Not searched (relative TP_PLUGIN_PATH entries are never searched; give "
                      "absolute directories): 'rel-dir', './other'");
    /* A file name given as a name: the plain name and the path form. */
    ck_assert_int_eq(init_with("libtp-good.so", "good", 1, &ctx), TP_ERR_PLUGIN);
    ck_assert_msg_has("no plugin libtp-libtp-good.so.so found");
    ck_assert_msg_has("'libtp-good.so' looks like a file name");
    ck_assert_msg_has("give the plain name (tp_config.backend=good) or a path with a '/' "
                      "(tp_config.backend=./libtp-good.so");
    /* no hint for a plain name */
    ck_assert_int_eq(init_with("nosuch", "good", 1, &ctx), TP_ERR_PLUGIN);
    ck_assert(strstr(tp_last_error(), "looks like a file name") == NULL);
}
END_TEST

START_TEST(test_future_minor_accepted)
{
    /* ABI minor + 1 with a longer ops struct: accepted, extra slots ignored. */
    tp_ctx *ctx = NULL;
    expect_status(init_with("abiminor", "good", 2, &ctx), TP_OK, "init_with");
    tp_finalize(ctx);
}
END_TEST

START_TEST(test_absolute_path)
{
    tp_ctx *ctx = NULL;
    ck_assert_int_eq(init_with(FIX "/libtp-good.so", FIX "/libtp-good.so", 1, &ctx), TP_OK);
    ck_assert_str_eq(tp_ctx_backend(ctx), "good");
    tp_finalize(ctx);
    /* a path that does not exist: an error naming it */
    ck_assert_int_eq(init_with(FIX "/libtp-gone.so", "good", 1, &ctx), TP_ERR_PLUGIN);
    ck_assert_msg_has(FIX "/libtp-gone.so");
}
END_TEST

START_TEST(test_cwd_never_searched)
{
    /* The fixtures are in the current directory, and "." is on the path:
     * neither may be used for a name. */
    ck_assert_int_eq(chdir(FIX), 0);
    setenv("TP_PLUGIN_PATH", ".:tests/loader::", 1);
    tp_ctx *ctx = NULL;
    ck_assert_int_eq(init_with("good", "good", 1, &ctx), TP_ERR_PLUGIN);
    ck_assert_msg_has("no plugin libtp-good.so found");
    unsetenv("TP_PLUGIN_PATH");
    ck_assert_int_eq(init_with("good", "good", 1, &ctx), TP_ERR_PLUGIN);
}
END_TEST

START_TEST(test_debug_plugin)
{
    /* TP_DEBUG=plugin: every path tried, and why it was skipped. */
    char *log = g_build_filename(g_get_tmp_dir(), "tp-test-debug-XXXXXX", NULL);
    int fd = g_mkstemp(log);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_ge(dup2(fd, 2), 0);
    setenv("TP_DEBUG", "comm,plugin", 1);
    setenv("TP_PLUGIN_PATH", "/nonexistent-dir:relative-dir:" FIX, 1);
    tp_ctx *ctx = NULL;
    ck_assert_int_eq(init_with("good", "good", 1, &ctx), TP_OK);
    tp_finalize(ctx);
    char *text = NULL;
    ck_assert(g_file_get_contents(log, &text, NULL, NULL));
    unlink(log);
    ck_assert_ptr_nonnull(strstr(text, "tp[plugin]: TP_PLUGIN_PATH entry 'relative-dir' skipped"));
    ck_assert_ptr_nonnull(strstr(text, "skipped /nonexistent-dir/libtp-good.so (TP_PLUGIN_PATH): "
                                       "directory does not exist"));
    ck_assert_ptr_nonnull(strstr(text, "trying " FIX "/libtp-good.so"));
    ck_assert_ptr_nonnull(strstr(text, "accepted 'good'"));
    g_free(text);
    g_free(log);
}
END_TEST

START_TEST(test_first_wins)
{
    setenv("TP_PLUGIN_PATH", FIX "/dup:" FIX, 1);
    tp_plugin *p = NULL;
    ck_assert_int_eq(tpi_plugin_load("good", TP_KIND_COMM, "TP_BACKEND", &p), TP_OK);
    ck_assert_str_eq(p->desc->version, "dup");
    ck_assert_str_eq(p->path, FIX "/dup/libtp-good.so");
    tpi_plugin_unload(p);

    setenv("TP_PLUGIN_PATH", FIX ":" FIX "/dup", 1);
    ck_assert_int_eq(tpi_plugin_load("good", TP_KIND_COMM, "TP_BACKEND", &p), TP_OK);
    ck_assert_str_eq(p->desc->version, "1.0");
    tpi_plugin_unload(p);
}
END_TEST

START_TEST(test_old_ops_struct)
{
    /* oldops' tp_comm_ops ends before broadcast, midslot's 4 bytes into it:
     * the slot it sets past (or across) its struct_size must read as NULL,
     * not as half a pointer. */
    static const char *const names[] = {"oldops", "midslot"};
    for (size_t i = 0; i < G_N_ELEMENTS(names); i++) {
        tp_plugin *p = NULL;
        ck_assert_int_eq(tpi_plugin_load(names[i], TP_KIND_COMM, "TP_BACKEND", &p), TP_OK);
        ck_assert_ptr_nonnull(p->comm.all_reduce);
        ck_assert_msg(p->comm.broadcast == NULL, "%s: broadcast = %p", names[i],
                      (void *)p->comm.broadcast);
        tpi_plugin_unload(p);
    }
}
END_TEST

static tp_status rank_split_null(tp_comm *w, void *arg)
{
    (void)arg;
    tp_comm *sub = NULL;
    tp_status st = tp_comm_split(w, 0, tp_comm_rank(w), &sub);
    if (st == TP_ERR_PLUGIN && !sub &&
        strstr(tp_last_error(), "returned TP_OK with no communicator"))
        return TP_OK;
    return tp_set_error(TP_ERR_INTERNAL, "split: %s, sub %p: %s", tp_status_string(st), (void *)sub,
                        tp_last_error());
}

START_TEST(test_split_without_comm_refused)
{
    setenv("FIXTURE_SPLIT", "null", 1);
    tp_ctx *ctx = NULL;
    ck_assert_int_eq(init_with("good", "good", 2, &ctx), TP_OK);
    tp_status st = tp_run(ctx, rank_split_null, NULL);
    expect_status(st, TP_OK, "split returning no communicator");
    tp_finalize(ctx);
    unsetenv("FIXTURE_SPLIT");
}
END_TEST

START_TEST(test_scan)
{
    setenv("TP_PLUGIN_PATH", FIX ":" FIX "/dup:" FIX, 1); /* FIX twice: searched once */
    tp_plugin_scan *s = tp_plugin_scan_new();
    ck_assert_int_ge(s->n_dirs, 2);
    ck_assert_str_eq(s->dirs[0].path, FIX);
    ck_assert_str_eq(s->dirs[1].path, FIX "/dup");
    int good = 0, shadowed = 0, garbage = 0;
    for (int i = 0; i < s->n_plugins; i++) {
        const tp_plugin_info *p = &s->plugins[i];
        if (p->file_name && strcmp(p->file_name, "good") == 0) {
            good++;
            if (p->shadowed_by) {
                shadowed++;
                ck_assert_str_eq(p->shadowed_by, FIX "/libtp-good.so");
                ck_assert_str_eq(p->version, "dup");
            } else {
                ck_assert_int_eq(p->status, TP_OK);
                ck_assert(p->is_comm && p->is_device && p->available);
                ck_assert_str_eq(p->comm_ops[0], "init");
            }
        }
        if (p->file_name && strcmp(p->file_name, "garbage") == 0) {
            garbage++;
            ck_assert_int_eq(p->status, TP_ERR_PLUGIN);
            ck_assert_ptr_nonnull(strstr(p->reason, "not a loadable shared object"));
        }
        if (p->file_name && strcmp(p->file_name, "unavail") == 0)
            ck_assert(p->status == TP_OK && !p->available && p->unavailable_reason);
    }
    ck_assert_int_eq(good, 2);
    ck_assert_int_eq(shadowed, 1);
    ck_assert_int_eq(garbage, 1);
    tp_plugin_scan_free(s);
}
END_TEST

/* ------------------------------------------------------------- config */

START_TEST(test_world_size_sources)
{
    tp_ctx *ctx = NULL;
    setenv("TP_WORLD_SIZE", "3", 1);
    ck_assert_int_eq(init_with("good", "good", 0, &ctx), TP_OK);
    ck_assert_int_eq(tp_ctx_world_size(ctx), 3);
    tp_finalize(ctx);
    ck_assert_int_eq(init_with("good", "good", 3, &ctx), TP_OK); /* agreeing: fine */
    tp_finalize(ctx);
    ck_assert_int_eq(init_with("good", "good", 2, &ctx), TP_ERR_INVALID_ARG);
    ck_assert_msg_has("asks for 2 but TP_WORLD_SIZE=3");
    setenv("TP_WORLD_SIZE", "zero", 1);
    ck_assert_int_eq(init_with("good", "good", 0, &ctx), TP_ERR_INVALID_ARG);
    ck_assert_msg_has("TP_WORLD_SIZE='zero'");
    setenv("TP_WORLD_SIZE", "65", 1);
    ck_assert_int_eq(init_with("good", "good", 0, &ctx), TP_ERR_INVALID_ARG);
    unsetenv("TP_WORLD_SIZE");
    ck_assert_int_eq(init_with("good", "good", -1, &ctx), TP_ERR_INVALID_ARG);
    ck_assert_ptr_null(ctx);
}
END_TEST

START_TEST(test_engine_world_mismatch)
{
    setenv("FIXTURE_WORLD", "4", 1); /* the engine runs 4 ranks, like mpirun -n 4 */
    tp_ctx *ctx = NULL;
    ck_assert_int_eq(init_with("good", "good", 2, &ctx), TP_ERR_INVALID_ARG);
    ck_assert_msg_has("2 ranks requested");
    ck_assert_msg_has("runs 4");
    ck_assert_int_eq(init_with("good", "good", 0, &ctx), TP_OK);
    ck_assert_int_eq(tp_ctx_world_size(ctx), 4);
    tp_finalize(ctx);
}
END_TEST

START_TEST(test_bad_env_numbers)
{
    tp_ctx *ctx = NULL;
    setenv("TP_TIMEOUT_S", "-1", 1);
    ck_assert_int_eq(init_with("good", "good", 1, &ctx), TP_ERR_INVALID_ARG);
    ck_assert_msg_has("TP_TIMEOUT_S");
    unsetenv("TP_TIMEOUT_S");
    setenv("TP_CPU_THREADS", "x", 1);
    ck_assert_int_eq(init_with("good", "good", 1, &ctx), TP_ERR_INVALID_ARG);
    ck_assert_msg_has("TP_CPU_THREADS");
}
END_TEST

START_TEST(test_parse_tp)
{
    tp_config cfg = {0};
    char *a1[] = {"prog", "--hidden", "5", "--tp", "4", NULL};
    ck_assert_int_eq(tp_config_parse_tp(&cfg, 5, a1), TP_OK);
    ck_assert_int_eq(cfg.world_size, 4);
    char *a2[] = {"prog", "--tp=7", NULL};
    ck_assert_int_eq(tp_config_parse_tp(&cfg, 2, a2), TP_OK);
    ck_assert_int_eq(cfg.world_size, 7);
    char *bad[][3] = {{"prog", "--tp", "x"},
                      {"prog", "--tp=0", NULL},
                      {"prog", "--tp", "65"},
                      {"prog", "--tp=3x", NULL}};
    int argcs[] = {3, 2, 3, 2};
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(tp_config_parse_tp(&cfg, argcs[i], bad[i]), TP_ERR_INVALID_ARG);
        ck_assert_msg_has("--tp");
    }
    char *a3[] = {"prog", "--tp", NULL};
    ck_assert_int_eq(tp_config_parse_tp(&cfg, 2, a3), TP_ERR_INVALID_ARG);
    ck_assert_msg_has("needs a value");
}
END_TEST

/* -------------------------------------------------------------- run */

typedef struct job {
    int n; /* element count for the collectives */
    int fail_rank;
} job;

/* Deterministic, rank-dependent test data. */
static float val(int rank, int i)
{
    return (float)((rank + 1) * 100 + i % 37) * 0.25f;
}

/* Every collective (through the fixture's all_reduce and broadcast, so the
 * core's fallbacks for the others) vs a serial reference. All values are
 * small multiples of 0.25, so float sums are exact and == is right. */
static tp_status rank_collectives(tp_comm *w, void *arg)
{
    const job *jb = arg;
    int r = tp_comm_rank(w), T = tp_comm_size(w), n = jb->n;
    size_t cap = (size_t)(n * T + T * T + 1); /* >= n*T and the gatherv total */
    float *send = calloc(cap, sizeof *send);
    float *recv = calloc(cap, sizeof *recv);
    tp_status st;
    for (int i = 0; i < n; i++)
        send[i] = val(r, i);
    if ((st = tp_all_reduce(w, send, recv, (size_t)n, TP_F32, TP_SUM)))
        goto out;
    for (int i = 0; i < n; i++) {
        float want = 0;
        for (int q = 0; q < T; q++)
            want += val(q, i);
        if (recv[i] != want) {
            st = tp_set_error(TP_ERR_INTERNAL, "all_reduce[%d] = %g, want %g", i, recv[i], want);
            goto out;
        }
    }
    if ((st = tp_all_reduce(w, send, send, (size_t)n, TP_F32, TP_MAX)))
        goto out;
    for (int i = 0; i < n; i++)
        if (send[i] != val(T - 1, i)) {
            st = tp_set_error(TP_ERR_INTERNAL, "all_reduce max[%d] = %g", i, send[i]);
            goto out;
        }
    /* uneven all_gatherv: rank q contributes q+n%3 elements */
    size_t counts[8];
    size_t total = 0;
    for (int q = 0; q < T; q++)
        total += counts[q] = (size_t)(q + n % 3);
    for (size_t i = 0; i < counts[r]; i++)
        send[i] = val(r, (int)i);
    if ((st = tp_all_gatherv(w, send, recv, counts, TP_F32)))
        goto out;
    for (int q = 0, off = 0; q < T; off += (int)counts[q], q++)
        for (size_t i = 0; i < counts[q]; i++)
            if (recv[off + (int)i] != val(q, (int)i)) {
                st = tp_set_error(TP_ERR_INTERNAL, "all_gatherv block %d[%zu] wrong", q, i);
                goto out;
            }
    /* reduce_scatter even: send holds T blocks of n */
    for (int i = 0; i < n * T; i++)
        send[i] = val(r, i);
    if ((st = tp_reduce_scatter(w, send, recv, (size_t)n, TP_F32, TP_SUM)))
        goto out;
    for (int i = 0; i < n; i++) {
        float want = 0;
        for (int q = 0; q < T; q++)
            want += val(q, r * n + i);
        if (recv[i] != want) {
            st =
                tp_set_error(TP_ERR_INTERNAL, "reduce_scatter[%d] = %g, want %g", i, recv[i], want);
            goto out;
        }
    }
    /* even all_gather, in place (send is our block of recv) */
    for (int i = 0; i < n; i++)
        recv[r * n + i] = val(r, i);
    if ((st = tp_all_gather(w, recv + r * n, recv, (size_t)n, TP_F32)))
        goto out;
    for (int q = 0; q < T; q++)
        for (int i = 0; i < n; i++)
            if (recv[q * n + i] != val(q, i)) {
                st = tp_set_error(TP_ERR_INTERNAL, "all_gather in place wrong at %d", q * n + i);
                goto out;
            }
    for (int i = 0; i < n; i++)
        send[i] = r == T - 1 ? val(9, i) : -1.0f;
    if ((st = tp_broadcast(w, send, (size_t)n, TP_F32, T - 1)) || (st = tp_barrier(w)))
        goto out;
    for (int i = 0; i < n; i++)
        if (send[i] != val(9, i)) {
            st = tp_set_error(TP_ERR_INTERNAL, "broadcast wrong at %d", i);
            goto out;
        }
    tp_stats s;
    tp_stats_get(w, &s);
    /* all_reduce x2, and the barrier fallback is not counted as an all_reduce */
    if (tp_stats_calls(&s, TP_PHASE_OTHER, TP_OP_ALL_REDUCE) != 2 ||
        tp_stats_calls(&s, TP_PHASE_COUNT, TP_OP_COUNT) != 7 ||
        s.comm[TP_PHASE_OTHER][TP_OP_ALL_REDUCE].bytes != 2 * (uint64_t)n * 4 ||
        s.comm[TP_PHASE_OTHER][TP_OP_ALL_GATHER].bytes != (uint64_t)(total + (size_t)n * T) * 4)
        st = tp_set_error(TP_ERR_INTERNAL, "stats wrong: %llu all_reduce calls",
                          (unsigned long long)tp_stats_calls(&s, TP_PHASE_OTHER, TP_OP_ALL_REDUCE));
out:
    free(send);
    free(recv);
    return st;
}

START_TEST(test_collectives_fallbacks)
{
    static const int worlds[] = {1, 2, 3, 4, 7};
    static const int ns[] = {0, 1, 13, 17};
    for (size_t wi = 0; wi < G_N_ELEMENTS(worlds); wi++) {
        tp_ctx *ctx = NULL;
        ck_assert_int_eq(init_with("good", "good", worlds[wi], &ctx), TP_OK);
        for (size_t ni = 0; ni < G_N_ELEMENTS(ns); ni++) {
            job jb = {ns[ni], -1};
            tp_status st = tp_run(ctx, rank_collectives, &jb);
            expect_status(st, TP_OK, "T=%d n=%d", worlds[wi], ns[ni]);
        }
        tp_finalize(ctx);
    }
}
END_TEST

static tp_status rank_fails(tp_comm *w, void *arg)
{
    const job *jb = arg;
    if (tp_comm_rank(w) == jb->fail_rank)
        return tp_set_error(TP_ERR_SHAPE, "deliberate failure");
    /* the others wait in a collective: they must fail fast, not time out */
    return tp_barrier(w);
}

START_TEST(test_run_first_failure)
{
    tp_ctx *ctx = NULL;
    ck_assert_int_eq(init_with("good", "good", 4, &ctx), TP_OK);
    job jb = {0, 2};
    ck_assert_int_eq(tp_run(ctx, rank_fails, &jb), TP_ERR_SHAPE);
    ck_assert_str_eq(tp_last_error(), "rank 2: deliberate failure");
    /* the context is usable again */
    jb.n = 5;
    expect_status(tp_run(ctx, rank_collectives, &jb), TP_OK, "tp_run");
    tp_finalize(ctx);
    /* one rank: run on the calling thread, same prefix */
    ck_assert_int_eq(init_with("good", "good", 1, &ctx), TP_OK);
    jb.fail_rank = 0;
    ck_assert_int_eq(tp_run(ctx, rank_fails, &jb), TP_ERR_SHAPE);
    ck_assert_str_eq(tp_last_error(), "rank 0: deliberate failure");
    ck_assert_int_eq(tp_run(NULL, rank_fails, &jb), TP_ERR_INVALID_ARG);
    tp_finalize(ctx);
}
END_TEST

static tp_status rank_nop(tp_comm *w, void *arg)
{
    return tp_barrier(w);
}

/* With the fixture's variable var=val, a run of `world` ranks fails with
 * want and a message containing msg. */
static void expect_run_fails(const char *var, const char *val, int world, tp_status want,
                             const char *msg)
{
    setenv(var, val, 1);
    tp_ctx *ctx = NULL;
    ck_assert_int_eq(init_with("good", "good", world, &ctx), TP_OK);
    ck_assert_int_eq(tp_run(ctx, rank_nop, NULL), want);
    ck_assert_msg_has(msg);
    tp_finalize(ctx);
    unsetenv(var);
}

START_TEST(test_device_open_fails)
{
    expect_run_fails("FIXTURE_FAIL_OPEN", "1", 3, TP_ERR_DEVICE,
                     "rank 1: device 'good': open failed: fixture: device of rank 1 failed");
}
END_TEST

START_TEST(test_world_without_comm_refused)
{
    expect_run_fails("FIXTURE_WORLD_COMM", "null", 2, TP_ERR_PLUGIN,
                     "world() gave no communicator, rank ");
}
END_TEST

static tp_status rank_errors(tp_comm *w, void *arg)
{
    float x[4] = {0};
    size_t counts[64] = {0};
#define EXPECT(call, status, text)                                                                 \
    do {                                                                                           \
        tp_status s_ = (call);                                                                     \
        if (s_ != (status) || !strstr(tp_last_error(), (text)))                                    \
            return tp_set_error(TP_ERR_INTERNAL, "%s: got %s '%s', want %s '%s'", #call,           \
                                tp_status_string(s_), tp_last_error(), tp_status_string(status),   \
                                text);                                                             \
    } while (0)
    EXPECT(tp_all_reduce(NULL, x, x, 1, TP_F32, TP_SUM), TP_ERR_INVALID_ARG, "comm is NULL");
    EXPECT(tp_all_reduce(w, NULL, x, 1, TP_F32, TP_SUM), TP_ERR_INVALID_ARG, "send buffer is NULL");
    EXPECT(tp_all_reduce(w, x, NULL, 1, TP_F32, TP_SUM), TP_ERR_INVALID_ARG, "recv buffer is NULL");
    EXPECT(tp_all_reduce(w, x, x, 1, (tp_dtype)9, TP_SUM), TP_ERR_INVALID_ARG, "invalid dtype 9");
    EXPECT(tp_all_reduce(w, x, x, 1, TP_F32, (tp_redop)7), TP_ERR_INVALID_ARG, "reduction op 7");
    EXPECT(tp_broadcast(w, x, 1, TP_F32, 5), TP_ERR_INVALID_ARG, "root 5 out of range");
    EXPECT(tp_all_gatherv(w, x, x, NULL, TP_F32), TP_ERR_INVALID_ARG, "counts is NULL");
    EXPECT(tp_reduce_scatterv(w, x, x, NULL, TP_F32, TP_SUM), TP_ERR_INVALID_ARG, "counts is NULL");
    counts[0] = 3;
    EXPECT(tp_reduce_scatterv(w, NULL, x, counts, TP_F32, TP_SUM), TP_ERR_INVALID_ARG, "send");
    tp_comm *sub = NULL;
    EXPECT(tp_comm_split(w, 0, 0, &sub), TP_ERR_NOT_SUPPORTED, "split is not implemented");

    /* device: a slot the fixture lacks, bad arguments */
    tp_device *dev = tp_comm_device(w);
    EXPECT(tp_dev_softmax(dev, TP_F32, 1, 4, x, x, 1.0f, 0), TP_ERR_NOT_SUPPORTED,
           "device 'good' does not provide op 'softmax'");
    EXPECT(tp_dev_gelu(dev, TP_F32, -1, x, x, 0), TP_ERR_INVALID_ARG, "negative size");
    EXPECT(tp_dev_bias_add(dev, TP_F32, 2, 2, NULL, x), TP_ERR_INVALID_ARG, "y is NULL");
    EXPECT(tp_dev_gelu(dev, TP_I32, 1, x, x, 0), TP_ERR_INVALID_ARG, "not a float dtype");
    tp_gemm_args g = {sizeof g, TP_F32, 0, 0, 2, 2, 2, 1, 0, x, 1, 0, x, 2, 0, x, 2, 0, 1};
    EXPECT(tp_dev_gemm(dev, &g), TP_ERR_INVALID_ARG, "lda=1 < 2");

    /* tensors */
    tp_tensor t;
    int64_t bad_shape[2] = {3, -2};
    EXPECT(tp_tensor_alloc(dev, TP_F32, 2, bad_shape, &t), TP_ERR_INVALID_ARG, "dimension 1 is -2");
    EXPECT(tp_tensor_alloc(dev, TP_F32, 5, bad_shape, &t), TP_ERR_INVALID_ARG, "ndim 5");
    tp_tensor v = tp_tensor_view(dev, TP_F32, NULL, 2, (int64_t[]){13, 17});
    EXPECT(tp_tensor_upload(&v, x), TP_ERR_INVALID_ARG, "tensor [13, 17] f32 has no data");
    return TP_OK;
}

START_TEST(test_argument_errors)
{
    tp_ctx *ctx = NULL;
    ck_assert_int_eq(init_with("good", "good", 2, &ctx), TP_OK);
    expect_status(tp_run(ctx, rank_errors, NULL), TP_OK, "tp_run");
    tp_finalize(ctx);
}
END_TEST

static tp_status rank_old_plugin(tp_comm *w, void *arg)
{
    float x[3] = {1, 2, 3};
    tp_status st = tp_broadcast(w, x, 3, TP_F32, 0);
    if (st != TP_ERR_NOT_SUPPORTED || !strstr(tp_last_error(), "'oldops'") ||
        !strstr(tp_last_error(), "'broadcast'"))
        return tp_set_error(TP_ERR_INTERNAL, "broadcast: %s %s", tp_status_string(st),
                            tp_last_error());
    st = tp_all_gather(w, x, x, 0, TP_F32); /* no all_gather, no broadcast to fall back on */
    if (st != TP_ERR_NOT_SUPPORTED || !strstr(tp_last_error(), "'all_gather'"))
        return tp_set_error(TP_ERR_INTERNAL, "all_gather: %s %s", tp_status_string(st),
                            tp_last_error());
    return tp_all_reduce(w, x, x, 3, TP_F32, TP_SUM);
}

START_TEST(test_not_supported_names_op)
{
    tp_ctx *ctx = NULL;
    ck_assert_int_eq(init_with("oldops", "good", 2, &ctx), TP_OK);
    expect_status(tp_run(ctx, rank_old_plugin, NULL), TP_OK, "tp_run");
    tp_finalize(ctx);
}
END_TEST

/* Device dispatch, phases and compute counters, tensors round trip. */
static tp_status rank_device(tp_comm *w, void *arg)
{
    tp_device *dev = tp_comm_device(w);
    if (strcmp(tp_device_name(dev), "good") || tp_device_mem_kind(dev) != TP_MEM_HOST)
        return tp_set_error(TP_ERR_INTERNAL, "device identity wrong");
    enum {
        M = 13,
        K = 17,
        N = 5
    };
    float a[M * K], b[K * N], c[M * N], ref[M * N];
    for (int i = 0; i < M * K; i++)
        a[i] = (float)(i % 7) - 3;
    for (int i = 0; i < K * N; i++)
        b[i] = (float)(i % 5) - 2;
    for (int i = 0; i < M; i++) /* small integers: exact in float */
        for (int j = 0; j < N; j++) {
            ref[i * N + j] = 0;
            for (int p = 0; p < K; p++)
                ref[i * N + j] += a[i * K + p] * b[p * N + j];
        }
    tp_tensor ta, tb, tc;
    tp_status st;
    if ((st = tp_tensor_alloc2(dev, TP_F32, M, K, &ta)) ||
        (st = tp_tensor_alloc2(dev, TP_F32, K, N, &tb)) ||
        (st = tp_tensor_alloc2(dev, TP_F32, M, N, &tc)))
        return st;
    if (tp_tensor_numel(&tc) != M * N || tp_tensor_bytes(&tc) != M * N * 4 ||
        ((float *)tc.data)[M * N - 1] != 0.0f)
        return tp_set_error(TP_ERR_INTERNAL, "tensor not zeroed or sized wrong");
    if ((st = tp_tensor_upload(&ta, a)) || (st = tp_tensor_upload(&tb, b)))
        return st;
    tp_phase prev = tp_phase_set(w, TP_PHASE_FORWARD);
    tp_gemm_args g = {sizeof g, TP_F32, 0,       0, M, N,       K, 1.0f, 0.0f, ta.data,
                      K,        0,      tb.data, N, 0, tc.data, N, 0,    1};
    if ((st = tp_dev_gemm(dev, &g)))
        return st;
    tp_phase_set(w, TP_PHASE_BACKWARD);
    if ((st = tp_dev_bias_add(dev, TP_F32, 1, 1, tc.data, b)))
        return st;
    ref[0] += b[0];
    if (tp_phase_set(w, prev) != TP_PHASE_BACKWARD || prev != TP_PHASE_OTHER)
        return tp_set_error(TP_ERR_INTERNAL, "phase_set did not return the previous phase");
    if ((st = tp_tensor_download(&tc, c)))
        return st;
    for (int i = 0; i < M * N; i++)
        if (c[i] != ref[i])
            return tp_set_error(TP_ERR_INTERNAL, "gemm[%d] = %g, want %g", i, c[i], ref[i]);
    tp_stats s;
    tp_stats_get(w, &s);
    if (s.gemm[TP_PHASE_FORWARD].calls != 1 || s.gemm_flops[TP_PHASE_FORWARD] != 2.0 * M * N * K ||
        s.kernel[TP_PHASE_BACKWARD].calls != 1 || s.gemm[TP_PHASE_BACKWARD].calls != 0)
        return tp_set_error(TP_ERR_INTERNAL, "compute counters wrong");
    tp_stats_reset(w);
    tp_stats_get(w, &s);
    if (s.gemm[TP_PHASE_FORWARD].calls || s.kernel[TP_PHASE_OTHER].calls)
        return tp_set_error(TP_ERR_INTERNAL, "reset did not clear");
    tp_tensor_release(&ta);
    tp_tensor_release(&tb);
    tp_tensor_release(&tc);
    if (ta.data || ta.ndim)
        return tp_set_error(TP_ERR_INTERNAL, "release did not zero");
    return TP_OK;
}

START_TEST(test_device_and_tensors)
{
    tp_ctx *ctx = NULL;
    ck_assert_int_eq(init_with("good", "good", 2, &ctx), TP_OK);
    expect_status(tp_run(ctx, rank_device, NULL), TP_OK, "tp_run");
    tp_finalize(ctx);
}
END_TEST

/* --------------------------------------------------- errors, names */

START_TEST(test_status_strings)
{
    for (int s = 0; s < TP_STATUS_COUNT_; s++) {
        ck_assert_ptr_nonnull(strstr(tp_status_string((tp_status)s), "TP_"));
        for (int t = 0; t < s; t++)
            ck_assert_str_ne(tp_status_string((tp_status)s), tp_status_string((tp_status)t));
    }
    ck_assert_str_eq(tp_status_string(TP_ERR_TIMEOUT), "TP_ERR_TIMEOUT");
    ck_assert_str_eq(tp_status_string((tp_status)99), "TP_ERR_UNKNOWN");
    ck_assert_int_eq(tp_set_error(TP_ERR_IO, "file %s: %d", "x", 3), TP_ERR_IO);
    ck_assert_str_eq(tp_last_error(), "file x: 3");
    tp_set_error(TP_ERR_IO, "prefix: %s", tp_last_error()); /* may quote itself */
    ck_assert_str_eq(tp_last_error(), "prefix: file x: 3");
    tp_clear_error();
    ck_assert_str_eq(tp_last_error(), "");
    ck_assert_str_eq(tp_op_name(TP_OP_REDUCE_SCATTER), "reduce_scatter");
    ck_assert_str_eq(tp_phase_name(TP_PHASE_BACKWARD), "backward");
    ck_assert_str_eq(tp_dtype_name(TP_BF16), "bf16");
    ck_assert_int_eq(tp_dtype_size(TP_F16), 2);
    ck_assert_int_eq(tp_dtype_size((tp_dtype)9), 0);
}
END_TEST

static gpointer other_thread(gpointer p)
{
    return g_strdup(tp_last_error());
}

START_TEST(test_error_per_thread)
{
    tp_set_error(TP_ERR_IO, "main thread");
    char *seen = g_thread_join(g_thread_new("t", other_thread, NULL));
    ck_assert_str_eq(seen, "");
    ck_assert_str_eq(tp_last_error(), "main thread");
    g_free(seen);
}
END_TEST

/* ------------------------------------------------------ shards, RNG */

START_TEST(test_shard_range)
{
    for (int64_t n = 0; n <= 40; n++)
        for (int parts = 1; parts <= 9; parts++) {
            int64_t prev_hi = 0;
            for (int i = 0; i < parts; i++) {
                int64_t lo, hi;
                tp_shard_range(n, parts, i, &lo, &hi);
                ck_assert_int_eq(lo, prev_hi); /* contiguous */
                int64_t want = n / parts + (i < n % parts ? 1 : 0);
                ck_assert_int_eq(hi - lo, want);
                prev_hi = hi;
            }
            ck_assert_int_eq(prev_hi, n); /* covers everything */
        }
    int64_t lo = 5, hi = 5;
    tp_shard_range(10, 3, 3, &lo, &hi); /* index out of range: empty */
    ck_assert(lo == 0 && hi == 0);
    tp_shard_range(10, 0, 0, &lo, &hi);
    ck_assert(lo == 0 && hi == 0);
}
END_TEST

START_TEST(test_master_rng)
{
    enum {
        R = 13,
        C = 17
    };
    float full[R * C], part[R * C];
    const float bound = 0.5f;
    tp_master_fill(42, 7, C, 0, R, 0, C, bound, full);
    for (int i = 0; i < R * C; i++) {
        ck_assert(full[i] >= -bound && full[i] < bound);
        ck_assert(full[i] == tp_master_uniform(42, 7, (uint64_t)i, bound));
    }
    /* Any column or row split gives the same full matrix, bitwise. */
    static const int Ts[] = {1, 2, 3, 4, 7};
    for (size_t ti = 0; ti < G_N_ELEMENTS(Ts); ti++) {
        int T = Ts[ti];
        for (int i = 0; i < T; i++) {
            int64_t lo, hi;
            tp_shard_range(C, T, i, &lo, &hi);
            tp_master_fill(42, 7, C, 0, R, lo, hi, bound, part);
            for (int r = 0; r < R; r++)
                for (int64_t c = lo; c < hi; c++)
                    ck_assert(part[r * (hi - lo) + (c - lo)] == full[r * C + c]);
            tp_shard_range(R, T, i, &lo, &hi);
            tp_master_fill(42, 7, C, lo, hi, 0, C, bound, part);
            ck_assert(memcmp(part, full + lo * C, (size_t)(hi - lo) * C * sizeof(float)) == 0);
        }
    }
    /* Different tensor ids and seeds give different streams. */
    ck_assert(tp_master_uniform(42, 7, 0, 1) != tp_master_uniform(42, 8, 0, 1));
    ck_assert(tp_master_uniform(42, 7, 0, 1) != tp_master_uniform(43, 7, 0, 1));
    /* Moments of U[-1, 1): mean 0, variance 1/3. With 2^20 samples the
     * standard error of the mean is sqrt(1/3 / 2^20) ~ 5.6e-4, so 5e-3 is
     * ~9 sigma; the result is deterministic anyway (fixed seed). */
    double sum = 0, sq = 0;
    const int n = 1 << 20;
    for (int i = 0; i < n; i++) {
        double v = tp_master_uniform(1, 2, (uint64_t)i, 1.0f);
        sum += v;
        sq += v * v;
    }
    ck_assert(fabs(sum / n) < 5e-3);
    ck_assert(fabs(sq / n - 1.0 / 3.0) < 5e-3);
}
END_TEST

/* ----------------------------------------------------------- tp-info */

static int run_tp_info(const char *args, char **out)
{
    const char *bin = getenv("TP_INFO_BIN");
    char *cmd = g_strdup_printf("%s %s", bin, args);
    char *err = NULL;
    int status = -1;
    GError *e = NULL;
    gboolean ok = g_spawn_command_line_sync(cmd, out, &err, &status, &e);
    ck_assert_msg(ok, "cannot run %s: %s", cmd, e ? e->message : "?");
    g_free(cmd);
    g_free(err);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

START_TEST(test_tp_info)
{
    if (!getenv("TP_INFO_BIN"))
        return;
    setenv("TP_PLUGIN_PATH", FIX ":" FIX "/dup", 1);
    char *out = NULL;
    ck_assert_int_eq(run_tp_info("", &out), 0);
    ck_assert_ptr_nonnull(strstr(out, FIX "/libtp-good.so"));
    ck_assert_ptr_nonnull(strstr(out, "comm+device"));
    ck_assert_ptr_nonnull(strstr(out, "Refused files:"));
    ck_assert_ptr_nonnull(strstr(out, "libtp-garbage.so"));
    ck_assert_ptr_nonnull(strstr(out, "shadowed by " FIX "/libtp-good.so"));
    ck_assert_ptr_nonnull(strstr(out, "the frobnicator is not plugged in"));
    g_free(out);
    ck_assert_int_eq(run_tp_info("good", &out), 0);
    ck_assert_ptr_nonnull(strstr(out, "loader test fixture"));
    ck_assert_ptr_nonnull(strstr(out, "shadows:    " FIX "/dup/libtp-good.so"));
    /* the fixture leaves mem_kinds 0: host memory, device memory staged */
    ck_assert_ptr_nonnull(strstr(out, "memory:     host"));
    g_free(out);
    ck_assert_int_eq(run_tp_info("--json", &out), 0);
    ck_assert(out[0] == '{');
    JsonParser *jp = json_parser_new();
    ck_assert_msg(json_parser_load_from_data(jp, out, -1, NULL), "not JSON:\n%s", out);
    JsonObject *doc = json_node_get_object(json_parser_get_root(jp));
    JsonArray *plugins = json_object_get_array_member(doc, "plugins");
    JsonObject *good = NULL, *dup = NULL;
    for (guint i = 0; i < json_array_get_length(plugins); i++) {
        JsonObject *o = json_array_get_object_element(plugins, i);
        const char *path = json_object_get_string_member(o, "path");
        if (!g_strcmp0(path, FIX "/libtp-good.so"))
            good = o;
        if (!g_strcmp0(path, FIX "/dup/libtp-good.so"))
            dup = o;
    }
    ck_assert_msg(good && dup, "%s", out);
    ck_assert_str_eq(json_object_get_string_member(dup, "shadowed_by"), FIX "/libtp-good.so");
    /* the fixture leaves mem_kinds 0 */
    ck_assert_int_eq(json_object_get_int_member(good, "comm_mem_kinds"), 0);
    /* the winner names the file it hides, and where each came from */
    ck_assert_str_eq(json_object_get_string_member(good, "origin"), "TP_PLUGIN_PATH");
    JsonArray *shadows = json_object_get_array_member(good, "shadows");
    ck_assert_uint_eq(json_array_get_length(shadows), 1);
    ck_assert_str_eq(json_array_get_string_element(shadows, 0), FIX "/dup/libtp-good.so");
    ck_assert_uint_eq(json_array_get_length(json_object_get_array_member(doc, "skipped")), 0);
    g_object_unref(jp);
    g_free(out);
    ck_assert_int_eq(run_tp_info("--json " FIX "/libtp-abimajor.so", &out), 1);
    jp = json_parser_new();
    ck_assert_msg(json_parser_load_from_data(jp, out, -1, NULL), "not JSON:\n%s", out);
    ck_assert(!json_object_get_boolean_member(json_node_get_object(json_parser_get_root(jp)),
                                              "accepted"));
    g_object_unref(jp);
    g_free(out);
    ck_assert_int_eq(run_tp_info("nosuch", &out), 1);
    g_free(out);
    ck_assert_int_eq(run_tp_info("--bogus", &out), 2);
    g_free(out);
}
END_TEST

/* test-loader [NAME]: run every test, or only NAME (handy with CK_FORK=no). */
int main(int argc, char **argv)
{
    const tpt_named_test tests[] = {
        {"test_good", test_good},
        {"test_env_selects", test_env_selects},
        {"test_refusals", test_refusals},
        {"test_wrong_device_kind", test_wrong_device_kind},
        {"test_not_found_lists", test_not_found_lists},
        {"test_not_found_names_skipped", test_not_found_names_skipped},
        {"test_future_minor_accepted", test_future_minor_accepted},
        {"test_absolute_path", test_absolute_path},
        {"test_cwd_never_searched", test_cwd_never_searched},
        {"test_debug_plugin", test_debug_plugin},
        {"test_first_wins", test_first_wins},
        {"test_old_ops_struct", test_old_ops_struct},
        {"test_split_without_comm_refused", test_split_without_comm_refused},
        {"test_scan", test_scan},
        {"test_world_size_sources", test_world_size_sources},
        {"test_engine_world_mismatch", test_engine_world_mismatch},
        {"test_bad_env_numbers", test_bad_env_numbers},
        {"test_parse_tp", test_parse_tp},
        {"test_collectives_fallbacks", test_collectives_fallbacks},
        {"test_run_first_failure", test_run_first_failure},
        {"test_device_open_fails", test_device_open_fails},
        {"test_world_without_comm_refused", test_world_without_comm_refused},
        {"test_argument_errors", test_argument_errors},
        {"test_not_supported_names_op", test_not_supported_names_op},
        {"test_device_and_tensors", test_device_and_tensors},
        {"test_status_strings", test_status_strings},
        {"test_error_per_thread", test_error_per_thread},
        {"test_shard_range", test_shard_range},
        {"test_master_rng", test_master_rng},
        {"test_tp_info", test_tp_info},
    };
    return tpt_run_named("loader", tests, G_N_ELEMENTS(tests), 60, argc, argv);
}
