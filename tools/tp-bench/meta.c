/* SPDX-License-Identifier: MIT */
/* meta.c — the meta record every tp-bench JSON/CSV output starts with:
 * what ran, where, when and how (see bench.h). */
#include "bench.h"

#include "tp-version.h"

#include <json-glib/json-glib.h>
#include <string.h>

bool bench_meta_env_wanted(const char *name)
{
    return g_str_has_prefix(name, "TP_") || g_str_has_prefix(name, "OMPI_") ||
           g_str_has_prefix(name, "NCCL_");
}

bool bench_meta_env_secret(const char *name)
{
    /* TP_TCP_SECRET authenticates a job's connections; the others are
     * the names secrets usually go by */
    return strstr(name, "SECRET") || strstr(name, "PASSWORD") || strstr(name, "TOKEN");
}

/* "model name : X" of /proc/cpuinfo (x86; other machines have none). */
static char *cpu_model(void)
{
    char *text = NULL, *model = NULL;
    if (!g_file_get_contents("/proc/cpuinfo", &text, NULL, NULL))
        return NULL;
    for (char *line = text; line && *line && !model;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        const char *colon = strchr(line, ':');
        if (g_str_has_prefix(line, "model name") && colon)
            model = g_strstrip(g_strdup(colon + 1));
        line = nl ? nl + 1 : NULL;
    }
    g_free(text);
    return model;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* {"NAME": "value", ...} of the wanted variables of envp, sorted by name,
 * secrets' values replaced by BENCH_META_REDACTED. */
static char *env_json(char *const *envp)
{
    GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
    for (char *const *e = envp; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        char *name = eq ? g_strndup(*e, (gsize)(eq - *e)) : NULL;
        if (name && bench_meta_env_wanted(name))
            g_ptr_array_add(names, name);
        else
            g_free(name);
    }
    qsort(names->pdata, names->len, sizeof(char *), cmp_str);
    JsonBuilder *b = json_builder_new();
    json_builder_begin_object(b);
    for (guint i = 0; i < names->len; i++) {
        const char *name = g_ptr_array_index(names, i);
        json_builder_set_member_name(b, name);
        json_builder_add_string_value(b, bench_meta_env_secret(name)
                                             ? BENCH_META_REDACTED
                                             : g_environ_getenv((char **)envp, name));
    }
    json_builder_end_object(b);
    JsonNode *root = json_builder_get_root(b);
    char *text = json_to_string(root, FALSE);
    json_node_unref(root);
    g_object_unref(b);
    g_ptr_array_free(names, TRUE);
    return text;
}

/* The command line as a shell would take it back. */
static char *command_line(int argc, char *const *argv)
{
    GString *s = g_string_new(NULL);
    for (int i = 0; i < argc && argv && argv[i]; i++) {
        char *q = g_shell_quote(argv[i]);
        if (i)
            g_string_append_c(s, ' ');
        g_string_append(s, q);
        g_free(q);
    }
    return g_string_free(s, FALSE);
}

bench_record *bench_meta_new(int argc, char *const *argv, char *const *envp)
{
    bench_record *m = bench_rec_new("meta");
    bench_rec_str(m, "tp_version", TP_TOOLS_VERSION);
    bench_rec_str(m, "git_revision", TP_TOOLS_REVISION);
    GDateTime *now = g_date_time_new_now_utc();
    char *date = g_date_time_format(now, "%Y-%m-%dT%H:%M:%SZ");
    bench_rec_str(m, "date_utc", date);
    g_free(date);
    g_date_time_unref(now);
    bench_rec_str(m, "host", g_get_host_name());
    char *model = cpu_model();
    bench_rec_str(m, "cpu_model", model);
    g_free(model);
    bench_rec_int(m, "cpu_cores", (int64_t)g_get_num_processors());
    /* filled in by bench_meta_set_plugins once tp has started */
    static const char *const later[] = {"backend", "backend_path", "backend_version",
                                        "device",  "device_path",  "device_version"};
    for (size_t i = 0; i < G_N_ELEMENTS(later); i++)
        bench_rec_str(m, later[i], NULL);
    bench_rec_str(m, "world_size", NULL);
    char **own = envp ? NULL : g_get_environ();
    char *env = env_json(envp ? envp : own);
    bench_rec_json(m, "env", env);
    g_free(env);
    g_strfreev(own);
    char *cmd = command_line(argc, argv);
    bench_rec_str(m, "command", cmd);
    g_free(cmd);
    return m;
}

void bench_meta_set_plugin(bench_record *m, const char *role, const char *name, const char *path,
                           const char *version)
{
    char key[64];
    bench_rec_str(m, role, name);
    g_snprintf(key, sizeof key, "%s_path", role);
    bench_rec_str(m, key, path);
    g_snprintf(key, sizeof key, "%s_version", role);
    bench_rec_str(m, key, version);
}
