/* SPDX-License-Identifier: MIT */
/*
 * test-faults.c — a plugin that crashes or hangs is named, and ended; an
 * out-of-memory run fails with a message, never a signal or a hang.
 *
 * Each case runs faults-prog (FAULTS_PROG) as a child with the fixture
 * plugins of this directory, stderr in a file of the test's own temporary
 * directory, and a deadline after which the child (only it, by PID) is
 * killed and the case fails.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <json-glib/json-glib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <tp/tp.h>

#include "tp-expect.h"

#define FIX FAULTS_FIXTURE_DIR

typedef struct child {
    int status;     /* waitpid status; -1 when killed at the deadline */
    double seconds; /* how long it ran */
    char *err;      /* its stderr */
} child;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Run faults-prog with argv `args` and extra environment `env` (NULL-ended
 * "NAME=value" list); kill it after `deadline` seconds. */
static child run(const char *const *args, const char *const *env, double deadline)
{
    char *dir = g_dir_make_tmp("tp-faults-XXXXXX", NULL);
    ck_assert_ptr_nonnull(dir);
    char *errpath = g_build_filename(dir, "stderr", NULL);
    const char *prog = getenv("FAULTS_PROG");
    ck_assert_ptr_nonnull(prog);
    double t0 = now_s();
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0 || dup2(fd, 2) < 0 || chdir(dir) != 0)
            _exit(127);
        setenv("TP_PLUGIN_PATH", FIX, 1);
        /* a sanitizer's own SEGV handler would turn the signal into exit 1 */
        const char *asan = getenv("ASAN_OPTIONS");
        char *opts = g_strdup_printf("%s%shandle_segv=0:handle_abort=0:handle_sigbus=0:"
                                     "handle_sigill=0:handle_sigfpe=0",
                                     asan ? asan : "", asan && asan[0] ? ":" : "");
        setenv("ASAN_OPTIONS", opts, 1);
        for (const char *const *e = env; e && *e; e++)
            putenv(g_strdup(*e));
        const char *argv[8] = {prog};
        for (int i = 0; args && args[i] && i < 6; i++)
            argv[i + 1] = args[i];
        execv(prog, (char *const *)argv);
        _exit(127);
    }
    child c = {.status = -1};
    while (now_s() - t0 < deadline) {
        pid_t w = waitpid(pid, &c.status, WNOHANG);
        if (w == pid)
            break;
        c.status = -1;
        g_usleep(20000);
    }
    if (c.status == -1) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    c.seconds = now_s() - t0;
    if (!g_file_get_contents(errpath, &c.err, NULL, NULL))
        c.err = g_strdup("");
    unlink(errpath);
    rmdir(dir);
    g_free(errpath);
    g_free(dir);
    return c;
}

#define ck_assert_err_has(c, needle)                                                               \
    ck_assert_msg(strstr((c).err, (needle)) != NULL, "stderr lacks '%s':\n%s", (needle), (c).err)

/* ------------------------------------------------------------- crashes */

/* The crash is named whether the plugin call runs on the rank's thread
 * or (tp_iall_reduce on a plugin without the nonblocking slots) on the
 * core's progress thread, which once printed no line at all. */
static void segv_in_all_reduce(bool nb_calls)
{
    const char *env[] = {"TP_BACKEND=segv", "TP_DEVICE=segv", NULL};
    const char *nb[] = {"collectives-nb", NULL};
    child c = run(nb_calls ? nb : NULL, env, 60);
    ck_assert_msg(c.status != -1, "killed at the deadline; stderr:\n%s", c.err);
    ck_assert_msg(WIFSIGNALED(c.status) && WTERMSIG(c.status) == SIGSEGV,
                  "want death by SIGSEGV, got status 0x%x; stderr:\n%s", c.status, c.err);
    ck_assert_err_has(c, "tp: rank 1: SIGSEGV inside all_reduce (collective #3 on its "
                         "communicator) of plugin " FIX "/libtp-segv.so for ");
    g_free(c.err);
}

START_TEST(test_segv_in_all_reduce)
{
    segv_in_all_reduce(false);
}
END_TEST

START_TEST(test_segv_in_all_reduce_nb)
{
    segv_in_all_reduce(true);
}
END_TEST

START_TEST(test_segv_in_gemm)
{
    const char *args[] = {"gemm", NULL};
    const char *env[] = {"TP_BACKEND=good", "TP_DEVICE=segvgemm", NULL};
    child c = run(args, env, 60);
    ck_assert_msg(WIFSIGNALED(c.status) && WTERMSIG(c.status) == SIGSEGV,
                  "want death by SIGSEGV, got status 0x%x; stderr:\n%s", c.status, c.err);
    ck_assert_err_has(c, "tp: rank 0: SIGSEGV inside gemm (device call #");
    ck_assert_err_has(c, ") of plugin " FIX "/libtp-segvgemm.so for ");
    g_free(c.err);
}
END_TEST

START_TEST(test_signals_off)
{
    /* TP_SIGNALS=0: the same crash, no handler, no line. */
    const char *env[] = {"TP_BACKEND=segv", "TP_DEVICE=segv", "TP_SIGNALS=0", NULL};
    child c = run(NULL, env, 60);
    ck_assert_msg(WIFSIGNALED(c.status) && WTERMSIG(c.status) == SIGSEGV,
                  "want death by SIGSEGV, got status 0x%x; stderr:\n%s", c.status, c.err);
    ck_assert_msg(strstr(c.err, "tp: rank") == NULL, "TP_SIGNALS=0 but:\n%s", c.err);
    g_free(c.err);
    /* a value that is neither 0 nor 1: a named error */
    const char *bad[] = {"TP_BACKEND=good", "TP_DEVICE=good", "TP_SIGNALS=yes", NULL};
    c = run(NULL, bad, 60);
    ck_assert_msg(WIFEXITED(c.status) && WEXITSTATUS(c.status) == 1, "status 0x%x:\n%s", c.status,
                  c.err);
    ck_assert_err_has(c, "TP_SIGNALS='yes': expected 1");
    g_free(c.err);
}
END_TEST

START_TEST(test_healthy_run_untouched)
{
    const char *env[] = {"TP_BACKEND=good", "TP_DEVICE=good", NULL};
    child c = run(NULL, env, 60);
    ck_assert_msg(WIFEXITED(c.status) && WEXITSTATUS(c.status) == 0, "status 0x%x:\n%s", c.status,
                  c.err);
    ck_assert_msg(strstr(c.err, "tp:") == NULL, "unexpected output:\n%s", c.err);
    g_free(c.err);
}
END_TEST

/* ---------------------------------------------------------------- hang */

static void hang_watchdog(bool nb_calls)
{
    /* Rank 1 never returns from its second all_reduce; rank 0 times out
     * after TP_TIMEOUT_S=1 and returns; the watchdog ends the process at
     * 1 s + the 5 s grace, plus up to a second of its wake-up period. With
     * tp_iall_reduce (nb_calls) the stuck call is on rank 1's progress
     * thread while rank 1 waits in tp_wait: it once waited forever. */
    const char *env[] = {"TP_BACKEND=hang", "TP_DEVICE=hang", "TP_TIMEOUT_S=1", NULL};
    const char *nb[] = {"collectives-nb", NULL};
    child c = run(nb_calls ? nb : NULL, env, 30);
    ck_assert_msg(c.status != -1, "still running after 30 s; stderr:\n%s", c.err);
    ck_assert_msg(WIFEXITED(c.status) && WEXITSTATUS(c.status) == TP_EXIT_WATCHDOG,
                  "want exit %d, got status 0x%x; stderr:\n%s", TP_EXIT_WATCHDOG, c.status, c.err);
    ck_assert_msg(c.seconds >= 6.0 && c.seconds < 6.0 + 5.0, "ended after %.2f s", c.seconds);
    ck_assert_err_has(c, "tp: watchdog: rank 1 has been inside all_reduce (collective #2 on its "
                         "communicator) of plugin " FIX "/libtp-hang.so for 6.");
    ck_assert_err_has(c, "over TP_TIMEOUT_S (1.000 s) plus a grace period (5.000 s) without "
                         "progress");
    /* the healthy rank's own timeout, which tp_run never got to return */
    ck_assert_err_has(c, nb_calls ? "tp: watchdog:   rank 0: not inside a plugin call; it "
                                    "failed: tp_iall_reduce #2 on backend 'hang': fixture: rank "
                                    "0: peers did not arrive within 1 s"
                                  : "tp: watchdog:   rank 0: not inside a plugin call; it "
                                    "failed: fixture: rank 0: peers did not arrive within 1 s");
    ck_assert_err_has(c, nb_calls ? "tp: watchdog:   rank 1's progress thread (nonblocking "
                                    "collectives): inside all_reduce (collective #2"
                                  : "tp: watchdog:   rank 1: inside all_reduce (collective #2");
    ck_assert_err_has(c, "ending the process with exit status 86");
    g_free(c.err);
}

START_TEST(test_hang_watchdog)
{
    hang_watchdog(false);
}
END_TEST

START_TEST(test_hang_watchdog_nb)
{
    hang_watchdog(true);
}
END_TEST

START_TEST(test_slow_progress_not_killed)
{
    /* Both ranks spend 8 s in their second all_reduce, calling
     * tp_host.progress every 0.25 s: over the watchdog's 6 s limit in
     * total, never without progress. The run must finish normally. */
    const char *env[] = {"TP_BACKEND=slow", "TP_DEVICE=slow", "TP_TIMEOUT_S=1", NULL};
    child c = run(NULL, env, 40);
    ck_assert_msg(c.status != -1, "still running after 40 s; stderr:\n%s", c.err);
    ck_assert_msg(WIFEXITED(c.status) && WEXITSTATUS(c.status) == 0,
                  "want exit 0, got status 0x%x; stderr:\n%s", c.status, c.err);
    ck_assert_msg(c.seconds >= 8.0, "ended after %.2f s: the slow call did not run", c.seconds);
    ck_assert_msg(strstr(c.err, "watchdog") == NULL, "the watchdog spoke:\n%s", c.err);
    g_free(c.err);
}
END_TEST

/* ------------------------------------------------------------ shadowing */

START_TEST(test_shadow_notice)
{
    /* shadow/libtp-loopback.so is found on TP_PLUGIN_PATH before the
     * build tree's loopback: it is used, and said so on one line. */
    const char *env[] = {"TP_PLUGIN_PATH=" FIX "/shadow:" FIX, "TP_BACKEND=loopback",
                         "TP_DEVICE=good", NULL};
    child c = run(NULL, env, 60);
    ck_assert_msg(WIFEXITED(c.status) && WEXITSTATUS(c.status) == 0, "status 0x%x:\n%s", c.status,
                  c.err);
    ck_assert_err_has(c,
                      "tp: notice: TP_BACKEND=loopback: " FIX "/shadow/libtp-loopback.so from "
                      "TP_PLUGIN_PATH shadows the built-in " BUILT_IN_LOOPBACK " (build tree)\n");
    g_free(c.err);
    /* the built-in itself, or a plugin with no built-in namesake: no notice */
    const char *plain[] = {"TP_BACKEND=good", "TP_DEVICE=good", NULL};
    c = run(NULL, plain, 60);
    ck_assert_msg(strstr(c.err, "notice") == NULL, "unexpected:\n%s", c.err);
    g_free(c.err);
}
END_TEST

static char *tp_info(const char *args)
{
    char *cmd =
        g_strdup_printf("env TP_PLUGIN_PATH=%s/shadow %s %s", FIX, getenv("TP_INFO_BIN"), args);
    char *out = NULL;
    int status = -1;
    ck_assert(g_spawn_command_line_sync(cmd, &out, NULL, &status, NULL));
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: status 0x%x", cmd, status);
    g_free(cmd);
    return out;
}

START_TEST(test_shadow_tp_info)
{
    ck_assert_ptr_nonnull(getenv("TP_INFO_BIN"));
    char *out = tp_info("");
    ck_assert_msg(strstr(out,
                         "    file:       " FIX "/shadow/libtp-loopback.so (TP_PLUGIN_PATH)\n"
                         "    shadows:    " BUILT_IN_LOOPBACK " (build tree: a built-in plugin)\n"),
                  "%s", out);
    g_free(out);
    out = tp_info("loopback");
    ck_assert_msg(strstr(out, "shadows:    " BUILT_IN_LOOPBACK " (build tree: a built-in plugin)"),
                  "%s", out);
    g_free(out);
    out = tp_info("--json");
    JsonParser *jp = json_parser_new();
    ck_assert_msg(json_parser_load_from_data(jp, out, -1, NULL), "not JSON:\n%s", out);
    JsonArray *plugins =
        json_object_get_array_member(json_node_get_object(json_parser_get_root(jp)), "plugins");
    JsonObject *winner = NULL, *hidden = NULL;
    for (guint i = 0; i < json_array_get_length(plugins); i++) {
        JsonObject *o = json_array_get_object_element(plugins, i);
        if (!g_strcmp0(json_object_get_string_member(o, "path"), FIX "/shadow/libtp-loopback.so"))
            winner = o;
        if (!g_strcmp0(json_object_get_string_member(o, "shadowed_by"),
                       FIX "/shadow/libtp-loopback.so"))
            hidden = o;
    }
    ck_assert_msg(winner && hidden, "%s", out);
    ck_assert_str_eq(json_object_get_string_member(winner, "file_name"), "loopback");
    ck_assert(json_object_get_boolean_member(winner, "accepted"));
    ck_assert_str_eq(json_object_get_string_member(winner, "status"), "TP_OK");
    ck_assert(json_object_get_null_member(winner, "reason"));
    ck_assert(json_object_get_null_member(winner, "shadowed_by"));
    ck_assert_str_eq(json_object_get_string_member(winner, "origin"), "TP_PLUGIN_PATH");
    JsonArray *shadows = json_object_get_array_member(winner, "shadows");
    ck_assert_uint_eq(json_array_get_length(shadows), 1);
    ck_assert_str_eq(json_array_get_string_element(shadows, 0), BUILT_IN_LOOPBACK);
    ck_assert_str_eq(json_object_get_string_member(hidden, "path"), BUILT_IN_LOOPBACK);
    ck_assert_str_eq(json_object_get_string_member(hidden, "origin"), "build tree");
    g_object_unref(jp);
    g_free(out);
}
END_TEST

/* ---------------------------------------------------------- out of memory */

/* A sweep of address-space limits over runs of 64 ranks with little data
 * (threads run out first), of 8 ranks with 36 MiB each (buffers run out
 * first), and of 2 and 8 ranks that take every byte left and then fail
 * (tp must report that without memory; the last 8 runs after a
 * nonblocking collective, whose state is ended without memory too): each
 * run ends on its own, with 0 or a named TP_ERR_NO_MEMORY, never a signal
 * or a hang. */
START_TEST(test_oom_sweep)
{
    const char *env[] = {"TP_BACKEND=good", "TP_DEVICE=good", NULL};
    int ok = 0, nomem = 0;
    for (int run_i = 0; run_i < 2 * 51 + 3 * 8; run_i++) {
        int mb = run_i < 102 ? run_i % 51 * 32 : 64 + (run_i - 102) % 8 * 32;
        const char *mode = run_i < 102 ? "oom" : run_i < 118 ? "exhaust" : "exhaust-nb";
        const char *ranks = run_i < 51 ? "64" : run_i < 110 ? "8" : "2";
        char mbs[16];
        g_snprintf(mbs, sizeof mbs, "%d", mb);
        const char *args[] = {mode, mbs, ranks, run_i < 51 ? "16384" : "1048576", NULL};
        child c = run(args, env, 30);
        if (WIFEXITED(c.status) && WEXITSTATUS(c.status) == 77) {
            g_free(c.err);
            return; /* under a sanitizer */
        }
        ck_assert_msg(c.status != -1,
                      "%s, %s ranks, limit +%d MiB: still running after 30 s; "
                      "stderr:\n%s",
                      mode, ranks, mb, c.err);
        ck_assert_msg(WIFEXITED(c.status),
                      "%s, %s ranks, limit +%d MiB: killed by signal %d; stderr:\n%s", mode, ranks,
                      mb, WIFSIGNALED(c.status) ? WTERMSIG(c.status) : -1, c.err);
        if (WEXITSTATUS(c.status) == 0) {
            ok++;
        } else {
            ck_assert_msg(WEXITSTATUS(c.status) == 1,
                          "%s, %s ranks, limit +%d MiB: exit %d; stderr:\n%s", mode, ranks, mb,
                          WEXITSTATUS(c.status), c.err);
            ck_assert_msg(strstr(c.err, "TP_ERR_NO_MEMORY") &&
                              (strstr(c.err, "bytes") || strstr(c.err, "thread")),
                          "%s, %s ranks, limit +%d MiB: not a named out-of-memory error:\n%s", mode,
                          ranks, mb, c.err);
            nomem++;
        }
        g_free(c.err);
    }
    ck_assert_int_gt(nomem, 0); /* the sweep reached the failures */
    ck_assert_int_gt(ok, 0);    /* and a limit large enough to succeed */
}
END_TEST

int main(int argc, char **argv)
{
    const tpt_named_test tests[] = {
        {"test_segv_in_all_reduce", test_segv_in_all_reduce},
        {"test_segv_in_all_reduce_nb", test_segv_in_all_reduce_nb},
        {"test_segv_in_gemm", test_segv_in_gemm},
        {"test_signals_off", test_signals_off},
        {"test_healthy_run_untouched", test_healthy_run_untouched},
        {"test_hang_watchdog", test_hang_watchdog},
        {"test_hang_watchdog_nb", test_hang_watchdog_nb},
        {"test_slow_progress_not_killed", test_slow_progress_not_killed},
        {"test_shadow_notice", test_shadow_notice},
        {"test_shadow_tp_info", test_shadow_tp_info},
        {"test_oom_sweep", test_oom_sweep},
    };
    return tpt_run_named("faults", tests, G_N_ELEMENTS(tests), 600, argc, argv);
}
