/* SPDX-License-Identifier: MIT */
/* bench-run.c — see bench-run.h. */
#include <check.h>
#include <glib.h>
#include <sys/wait.h>

#include "bench-run.h"

run_result bench_run(const char *exe, const char *args, const char *const *env_extra)
{
    run_result r = {-1, NULL, NULL};
    gchar *line = g_strdup_printf("'%s' %s", exe, args);
    gchar **argv = NULL;
    ck_assert(g_shell_parse_argv(line, NULL, &argv, NULL));
    gchar **envp = g_get_environ();
    envp = g_environ_unsetenv(envp, "TP_WORLD_SIZE");
    envp = g_environ_unsetenv(envp, "TP_BENCH_CORRUPT");
    envp = g_environ_unsetenv(envp, "TP_BENCH_FAKE_TIMES");
    envp = g_environ_setenv(envp, "TP_BACKEND", "loopback", TRUE);
    envp = g_environ_setenv(envp, "TP_DEVICE", "cpu", TRUE);
    envp = g_environ_setenv(envp, "TP_TIMEOUT_S", "60", TRUE);
    for (int i = 0; env_extra && env_extra[i]; i++) {
        gchar **kv = g_strsplit(env_extra[i], "=", 2);
        envp = g_environ_setenv(envp, kv[0], kv[1] ? kv[1] : "", TRUE);
        g_strfreev(kv);
    }
    int status = 0;
    GError *e = NULL;
    ck_assert_msg(
        g_spawn_sync(NULL, argv, envp, G_SPAWN_DEFAULT, NULL, NULL, &r.out, &r.err, &status, &e),
        "cannot run %s: %s", exe, e ? e->message : "?");
    if (WIFEXITED(status))
        r.code = WEXITSTATUS(status);
    g_strfreev(argv);
    g_strfreev(envp);
    g_free(line);
    return r;
}

void bench_run_free(run_result *r)
{
    g_free(r->out);
    g_free(r->err);
}
