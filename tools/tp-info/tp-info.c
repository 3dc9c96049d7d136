/* SPDX-License-Identifier: MIT */
/*
 * tp-info — list the plugins tp can see, and the files it refused.
 *
 *   tp-info              every plugin found, refused file and shadowed duplicate
 *   tp-info NAME|PATH    one plugin in detail
 *   --json               the same as JSON
 *
 * Exit status: 0; 1 if NAME is not found or its file is refused; 2 on bad
 * arguments.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tp/tp-info.h>

static void usage(FILE *f)
{
    fprintf(f, "Usage: tp-info [--json] [NAME | PATH]\n"
               "List the tp plugins found on the search path (TP_PLUGIN_PATH, the build tree,\n"
               "the install dir) with name, version, ABI, kind, ops and probe result, and every\n"
               "file that was refused and why. With NAME (or a path to a plugin file), show one.\n"
               "\n"
               "  --json      print JSON instead of text\n"
               "  -h, --help  show this help\n"
               "\n"
               "Exit status: 0 on success; 1 if NAME is not found or refused; 2 on bad usage.\n");
}

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

static void json_str(const char *s)
{
    if (!s) {
        printf("null");
        return;
    }
    putchar('"');
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\')
            printf("\\%c", *c);
        else if (*c == '\n')
            printf("\\n");
        else if (*c < 0x20)
            printf("\\u%04x", *c);
        else
            putchar(*c);
    }
    putchar('"');
}

static void json_list(char **ops)
{
    printf("[");
    for (char **o = ops; o && *o; o++) {
        printf(o == ops ? "" : ", ");
        json_str(*o);
    }
    printf("]");
}

static void json_plugin(const tp_plugin_info *p, const char *indent)
{
    printf("%s{\"path\": ", indent);
    json_str(p->path);
    printf(", \"file_name\": ");
    json_str(p->file_name);
    printf(", \"accepted\": %s, \"status\": ", p->status ? "false" : "true");
    json_str(tp_status_string(p->status));
    printf(", \"reason\": ");
    json_str(p->reason);
    printf(", \"shadowed_by\": ");
    json_str(p->shadowed_by);
    printf(", \"origin\": ");
    json_str(p->origin);
    printf(", \"shadows\": ");
    json_list(p->shadows);
    if (!p->status) {
        printf(",\n%s \"name\": ", indent);
        json_str(p->name);
        printf(", \"version\": ");
        json_str(p->version);
        printf(", \"description\": ");
        json_str(p->description);
        printf(
            ", \"abi\": \"%u.%u\", \"comm\": %s, \"device\": %s,\n%s \"comm_ops\": ", p->abi_major,
            p->abi_minor, p->is_comm ? "true" : "false", p->is_device ? "true" : "false", indent);
        json_list(p->comm_ops);
        printf(", \"comm_mem_kinds\": %u, \"intra_node\": %s", (unsigned)p->comm_mem_kinds,
               is_intra(p) ? "true" : "false");
        printf(",\n%s \"device_ops\": ", indent);
        json_list(p->device_ops);
        printf(",\n%s \"available\": %s, \"unavailable_reason\": ", indent,
               p->available ? "true" : "false");
        json_str(p->unavailable_reason);
        printf(",\n%s \"settings\": [", indent);
        for (int i = 0; i < p->n_settings; i++) {
            printf("%s{\"name\": ", i ? ", " : "");
            json_str(p->settings[i].name);
            printf(", \"default\": ");
            json_str(p->settings[i].default_value);
            printf(", \"description\": ");
            json_str(p->settings[i].description);
            printf("}");
        }
        printf("]");
    }
    printf("}");
}

static void print_json(const tp_plugin_scan *s)
{
    printf("{\"dirs\": [");
    for (int i = 0; i < s->n_dirs; i++) {
        printf("%s\n  {\"path\": ", i ? "," : "");
        json_str(s->dirs[i].path);
        printf(", \"origin\": ");
        json_str(s->dirs[i].origin);
        printf(", \"exists\": %s}", s->dirs[i].exists ? "true" : "false");
    }
    printf("],\n\"skipped\": ");
    json_list(s->skipped);
    printf(",\n\"plugins\": [");
    for (int i = 0; i < s->n_plugins; i++) {
        printf("%s\n", i ? "," : "");
        json_plugin(&s->plugins[i], "  ");
    }
    printf("]}\n");
}

/* ----------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    bool json = false;
    const char *name = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (argv[i][0] == '-' || name) {
            fprintf(stderr, "tp-info: unexpected argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        } else {
            name = argv[i];
        }
    }

    if (name && strchr(name, '/')) {
        tp_plugin_info info;
        tp_plugin_inspect(name, &info);
        if (json) {
            json_plugin(&info, "");
            printf("\n");
        } else {
            print_plugin(NULL, &info, true);
        }
        int rc = info.status ? 1 : 0;
        tp_plugin_info_clear(&info);
        return rc;
    }

    tp_plugin_scan *s = tp_plugin_scan_new();
    int rc = 0;
    if (!name) {
        if (json)
            print_json(s);
        else
            print_text(s);
    } else {
        const tp_plugin_info *p = NULL;
        for (int i = 0; i < s->n_plugins && !p; i++)
            if (s->plugins[i].file_name && strcmp(s->plugins[i].file_name, name) == 0)
                p = &s->plugins[i]; /* the first one is the one the loader uses */
        if (!p) {
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
            rc = 1;
        } else {
            if (json) {
                json_plugin(p, "");
                printf("\n");
            } else {
                print_plugin(s, p, true);
            }
            rc = p->status ? 1 : 0;
        }
    }
    tp_plugin_scan_free(s);
    return rc;
}
