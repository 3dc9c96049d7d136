/* SPDX-License-Identifier: MIT */
/*
 * tp-info — list the plugins tp can see, and the files it refused.
 *
 *   tp-info              every plugin found, refused file and shadowed duplicate
 *   tp-info NAME|PATH    one plugin in detail
 *   --json               the same as JSON (written by json-glib)
 *
 * Options are parsed by GLib's GOptionContext, like every tp tool's.
 * Exit status: 0; 1 if NAME is not found or its file is refused; 2 on bad
 * arguments.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>
#include <json-glib/json-glib.h>

#include <tp/tp-info.h>

#include "tp-options.h"

static const char *kind_of(const tp_plugin_info *p)
{
    return p->is_comm && p->is_device ? "comm+device" : p->is_comm ? "comm" : "device";
}

/* ----------------------------------------------------------------- text */

static void print_ops(const char *label, char **ops)
{
    if (!ops || !ops[0])
        return;
    printf("    %-11s", label);
    for (char **o = ops; *o; o++)
        printf(" %s", *o);
    printf("\n");
}

/* The origin of the file at `path` in the scan ("build tree", ...). */
static const char *origin_of(const tp_plugin_scan *s, const char *path)
{
    for (int i = 0; s && i < s->n_plugins; i++)
        if (s->plugins[i].origin && strcmp(s->plugins[i].path, path) == 0)
            return s->plugins[i].origin;
    return "?";
}

/* The files this one hides; a built-in (not TP_PLUGIN_PATH) one is marked. */
static void print_shadows(const tp_plugin_scan *s, const tp_plugin_info *p)
{
    for (char **o = p->shadows; o && *o; o++) {
        const char *origin = origin_of(s, *o);
        printf("    shadows:    %s (%s%s)\n", *o, origin,
               strcmp(origin, "TP_PLUGIN_PATH") != 0 && strcmp(origin, "?") != 0
                   ? ": a built-in plugin"
                   : "");
    }
}

/* Can the plugin serve as TP_INTRA_BACKEND (it has the comm_create slot)? */
static bool is_intra(const tp_plugin_info *p)
{
    for (char **o = p->comm_ops; p->is_comm && o && *o; o++)
        if (strcmp(*o, "comm_create") == 0)
            return true;
    return false;
}

/* The plugin's own settings, one per line, like `ompi_info --param`. */
static void print_settings(const tp_plugin_info *p)
{
    if (!p->n_settings) {
        printf("    settings:   none declared\n");
        return;
    }
    printf("    settings:\n");
    for (int i = 0; i < p->n_settings; i++)
        printf("      %-24s default: %s\n          %s\n", p->settings[i].name,
               p->settings[i].default_value, p->settings[i].description);
}

static void print_plugin(const tp_plugin_scan *s, const tp_plugin_info *p, bool detail)
{
    if (p->status) {
        printf("  %s\n    refused (%s): %s\n", p->path, tp_status_string(p->status), p->reason);
        return;
    }
    printf("  %-10s %-8s ABI %u.%u  %-11s %s\n", p->name, p->version, p->abi_major, p->abi_minor,
           kind_of(p), p->available ? "available" : "not available");
    if (!p->available)
        printf("    why not:    %s\n", p->unavailable_reason);
    printf("    file:       %s%s%s%s\n", p->path, p->origin ? " (" : "", p->origin ? p->origin : "",
           p->origin ? ")" : "");
    print_shadows(s, p);
    if (detail)
        printf("    about:      %s\n", p->description);
    print_ops("comm ops:", p->comm_ops);
    if (p->is_comm)
        printf("    memory:     %s\n",
               (p->comm_mem_kinds & (1u << TP_MEM_CUDA))
                   ? ((p->comm_mem_kinds & (1u << TP_MEM_HOST) || !p->comm_mem_kinds)
                          ? "host and cuda device memory (where world() refuses a device, "
                            "the core stages it through host memory)"
                          : "cuda device memory")
                   : "host (device memory is staged through host by the core)");
    if (p->is_comm)
        printf("    intra-node: %s\n",
               is_intra(p) ? "yes: can serve groups inside a node for another world backend "
                             "(TP_INTRA_BACKEND, comm_create)"
                           : "no (no comm_create slot): world backend only");
    print_ops("device ops:", p->device_ops);
    if (detail)
        print_settings(p);
}

static void print_text(const tp_plugin_scan *s)
{
    printf("Search path (first match wins):\n");
    for (int i = 0; i < s->n_dirs; i++)
        printf("  %s (%s%s)\n", s->dirs[i].path, s->dirs[i].origin,
               s->dirs[i].exists ? "" : ", missing");
    int n = 0;
    printf("\nPlugins:\n");
    for (int i = 0; i < s->n_plugins; i++)
        if (!s->plugins[i].status && !s->plugins[i].shadowed_by) {
            print_plugin(s, &s->plugins[i], false);
            n++;
        }
    if (!n)
        printf("  none\n");
    n = 0;
    for (int i = 0; i < s->n_plugins; i++)
        if (!s->plugins[i].status && !s->plugins[i].shadowed_by && is_intra(&s->plugins[i]))
            printf("%s%s", n++ ? ", " : "\nIntra-node backends (TP_INTRA_BACKEND=NAME): ",
                   s->plugins[i].name);
    printf("%s\n", n ? "" : "\nIntra-node backends (TP_INTRA_BACKEND=NAME): none");
    for (char **k = s->skipped; k && *k; k++)
        printf("%s'%s'",
               k == s->skipped ? "\nNot searched (relative TP_PLUGIN_PATH entries; give "
                                 "absolute directories):\n  "
                               : ", ",
               *k);
    if (s->skipped && s->skipped[0])
        printf("\n");
    n = 0;
    for (int i = 0; i < s->n_plugins; i++)
        if (s->plugins[i].status && !s->plugins[i].shadowed_by) {
            if (!n++)
                printf("\nRefused files:\n");
            printf("  %s\n    %s: %s\n", s->plugins[i].path, tp_status_string(s->plugins[i].status),
                   s->plugins[i].reason);
        }
    n = 0;
    for (int i = 0; i < s->n_plugins; i++)
        if (s->plugins[i].shadowed_by) {
            if (!n++)
                printf("\nShadowed (an earlier file with the same name is used instead):\n");
            printf("  %s\n    shadowed by %s\n", s->plugins[i].path, s->plugins[i].shadowed_by);
        }
}

/* ----------------------------------------------------------------- json */

/* A string member, or null for a NULL string. */
static void json_str(JsonBuilder *b, const char *key, const char *s)
{
    json_builder_set_member_name(b, key);
    if (s)
        json_builder_add_string_value(b, s);
    else
        json_builder_add_null_value(b);
}

static void json_list(JsonBuilder *b, const char *key, char **items)
{
    json_builder_set_member_name(b, key);
    json_builder_begin_array(b);
    for (char **o = items; o && *o; o++)
        json_builder_add_string_value(b, *o);
    json_builder_end_array(b);
}

static void json_bool(JsonBuilder *b, const char *key, bool v)
{
    json_builder_set_member_name(b, key);
    json_builder_add_boolean_value(b, v);
}

static void json_settings(JsonBuilder *b, const tp_plugin_info *p)
{
    json_builder_set_member_name(b, "settings");
    json_builder_begin_array(b);
    for (int i = 0; i < p->n_settings; i++) {
        json_builder_begin_object(b);
        json_str(b, "name", p->settings[i].name);
        json_str(b, "default", p->settings[i].default_value);
        json_str(b, "description", p->settings[i].description);
        json_builder_end_object(b);
    }
    json_builder_end_array(b);
}

/* One plugin (or refused file) as an object; the details only if accepted. */
static void json_plugin(JsonBuilder *b, const tp_plugin_info *p)
{
    json_builder_begin_object(b);
    json_str(b, "path", p->path);
    json_str(b, "file_name", p->file_name);
    json_bool(b, "accepted", !p->status);
    json_str(b, "status", tp_status_string(p->status));
    json_str(b, "reason", p->reason);
    json_str(b, "shadowed_by", p->shadowed_by);
    json_str(b, "origin", p->origin);
    json_list(b, "shadows", p->shadows);
    if (!p->status) {
        char abi[32];
        snprintf(abi, sizeof abi, "%u.%u", p->abi_major, p->abi_minor);
        json_str(b, "name", p->name);
        json_str(b, "version", p->version);
        json_str(b, "description", p->description);
        json_str(b, "abi", abi);
        json_bool(b, "comm", p->is_comm);
        json_bool(b, "device", p->is_device);
        json_list(b, "comm_ops", p->comm_ops);
        json_builder_set_member_name(b, "comm_mem_kinds");
        json_builder_add_int_value(b, (gint64)p->comm_mem_kinds);
        json_bool(b, "intra_node", is_intra(p));
        json_list(b, "device_ops", p->device_ops);
        json_bool(b, "available", p->available);
        json_str(b, "unavailable_reason", p->unavailable_reason);
        json_settings(b, p);
    }
    json_builder_end_object(b);
}

static void json_scan(JsonBuilder *b, const tp_plugin_scan *s)
{
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "dirs");
    json_builder_begin_array(b);
    for (int i = 0; i < s->n_dirs; i++) {
        json_builder_begin_object(b);
        json_str(b, "path", s->dirs[i].path);
        json_str(b, "origin", s->dirs[i].origin);
        json_bool(b, "exists", s->dirs[i].exists);
        json_builder_end_object(b);
    }
    json_builder_end_array(b);
    json_list(b, "skipped", s->skipped);
    json_builder_set_member_name(b, "plugins");
    json_builder_begin_array(b);
    for (int i = 0; i < s->n_plugins; i++)
        json_plugin(b, &s->plugins[i]);
    json_builder_end_array(b);
    json_builder_end_object(b);
}

/* Print the whole scan (s) or one plugin (p) as indented JSON. */
static void print_json(const tp_plugin_scan *s, const tp_plugin_info *p)
{
    JsonBuilder *b = json_builder_new();
    if (p)
        json_plugin(b, p);
    else
        json_scan(b, s);
    JsonNode *root = json_builder_get_root(b);
    JsonGenerator *g = json_generator_new();
    json_generator_set_pretty(g, TRUE);
    json_generator_set_indent(g, 2);
    json_generator_set_root(g, root);
    gchar *text = json_generator_to_data(g, NULL);
    printf("%s\n", text);
    g_free(text);
    g_object_unref(g);
    json_node_unref(root);
    g_object_unref(b);
}

/* ----------------------------------------------------------------- main */

/* Not found: where it looked, what it found, and how to point it there. */
static void report_not_found(const tp_plugin_scan *s, const char *name)
{
    fprintf(stderr, "tp-info: no plugin libtp-%s.so found; looked in:\n", name);
    for (int i = 0; i < s->n_dirs; i++)
        fprintf(stderr, "  %s (%s)\n", s->dirs[i].path, s->dirs[i].origin);
    fprintf(stderr, "Plugins found:");
    for (int i = 0; i < s->n_plugins; i++)
        if (!s->plugins[i].shadowed_by && s->plugins[i].file_name)
            fprintf(stderr, " %s", s->plugins[i].file_name);
    fprintf(stderr,
            "\nAdd the directory holding it to TP_PLUGIN_PATH, or give its "
            "path: tp-info /path/to/libtp-%s.so\n",
            name);
}

/* `tp-info PATH`: inspect one file without scanning. */
static int show_file(const char *path, bool json)
{
    tp_plugin_info info;
    tp_plugin_inspect(path, &info);
    if (json)
        print_json(NULL, &info);
    else
        print_plugin(NULL, &info, true);
    int rc = info.status ? 1 : 0;
    tp_plugin_info_clear(&info);
    return rc;
}

/* The scan, or the plugin NAME in it (the first one: the loader's). */
static int show_scan(const char *name, bool json)
{
    tp_plugin_scan *s = tp_plugin_scan_new();
    int rc = 0;
    const tp_plugin_info *p = NULL;
    for (int i = 0; name && i < s->n_plugins && !p; i++)
        if (s->plugins[i].file_name && strcmp(s->plugins[i].file_name, name) == 0)
            p = &s->plugins[i];
    if (!name && json) {
        print_json(s, NULL);
    } else if (!name) {
        print_text(s);
    } else if (!p) {
        report_not_found(s, name);
        rc = 1;
    } else {
        if (json)
            print_json(s, p);
        else
            print_plugin(s, p, true);
        rc = p->status ? 1 : 0;
    }
    tp_plugin_scan_free(s);
    return rc;
}

/* Parse argv (tp-options.h); 0 to go on, else the exit status + 1. */
static int parse_args(int *argc, char ***argv, gboolean *json, const char **name)
{
    gboolean version = FALSE;
    GOptionEntry entries[] = {
        {"json", 'j', 0, G_OPTION_ARG_NONE, json, "Print JSON instead of text", NULL},
        {"version", 'V', 0, G_OPTION_ARG_NONE, &version, "Show the version and git revision", NULL},
        {NULL, 0, 0, 0, NULL, NULL, NULL}};
    GOptionContext *ctx = g_option_context_new("[NAME | PATH]");
    g_option_context_set_summary(
        ctx, "List the tp plugins found on the search path (TP_PLUGIN_PATH, the build tree,\n"
             "the install dir) with name, version, ABI, kind, ops and probe result, and every\n"
             "file that was refused and why. With NAME (or a path to a plugin file), show one\n"
             "in detail, with its own settings (TP_* variables) and their defaults.");
    g_option_context_set_description(
        ctx, "A flag given twice is the same as once.\n"
             "Exit status: 0 on success; 1 if NAME is not found or refused; 2 on bad usage.\n");
    g_option_context_add_main_entries(ctx, entries, NULL);
    int rc = tp_options_parse("tp-info", ctx, entries, &version, argc, argv) + 1;
    if (rc == 0 && *argc > 2) {
        fprintf(stderr,
                "tp-info: unexpected argument '%s': give at most one NAME or PATH (try --help)\n",
                (*argv)[2]);
        rc = 3;
    }
    *name = rc == 0 && *argc == 2 ? (*argv)[1] : NULL;
    g_option_context_free(ctx);
    return rc;
}

int main(int argc, char **argv)
{
    gboolean json = FALSE;
    const char *name = NULL;
    int rc = parse_args(&argc, &argv, &json, &name);
    if (rc)
        return rc - 1;
    if (name && strchr(name, '/'))
        return show_file(name, json);
    return show_scan(name, json);
}
