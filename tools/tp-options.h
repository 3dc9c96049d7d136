/* SPDX-License-Identifier: MIT */
/* tp-options.h — the command-line conventions the GOptionContext tools
 * share (tp-info, tp-conformance): one error style ("PROG: what (try
 * --help)", exit 2), --version as "PROG VERSION (git REVISION)", a value
 * given to a flag that takes none refused (GLib would ignore "--json=0"),
 * a leading "--" dropped. Header-only; not installed. */
#ifndef TP_TOOLS_OPTIONS_H
#define TP_TOOLS_OPTIONS_H

#include <stdio.h>
#include <string.h>

#include <glib.h>

#include "tp-version.h"

/* "--NAME=VALUE" for an entry that takes no value: report it, FALSE. */
static inline gboolean tp_options_no_value(const char *prog, const GOptionEntry *entries, int argc,
                                           char **argv)
{
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
        const char *eq = strchr(argv[i], '=');
        if (strncmp(argv[i], "--", 2) != 0 || !eq)
            continue;
        for (const GOptionEntry *e = entries; e->long_name; e++)
            if (e->arg == G_OPTION_ARG_NONE && strlen(e->long_name) == (size_t)(eq - argv[i] - 2) &&
                strncmp(argv[i] + 2, e->long_name, strlen(e->long_name)) == 0) {
                fprintf(stderr, "%s: --%s takes no value, got '%s' (try --help)\n", prog,
                        e->long_name, argv[i]);
                return FALSE;
            }
    }
    return TRUE;
}

/* Parse argv with ctx (entries: its main entries). Returns -1 to go on,
 * else the exit status: 0 after --version, 2 on a bad command line. On -1,
 * argv holds the program name and the operands only. */
static inline int tp_options_parse(const char *prog, GOptionContext *ctx,
                                   const GOptionEntry *entries, const gboolean *version, int *argc,
                                   char ***argv)
{
    GError *err = NULL;
    if (!tp_options_no_value(prog, entries, *argc, *argv))
        return 2;
    if (!g_option_context_parse(ctx, argc, argv, &err)) {
        fprintf(stderr, "%s: %s (try --help)\n", prog, err->message);
        g_error_free(err);
        return 2;
    }
    if (*version) {
        printf("%s %s (git %s)\n", prog, TP_TOOLS_VERSION, TP_TOOLS_REVISION);
        return 0;
    }
    if (*argc > 1 && strcmp((*argv)[1], "--") == 0) { /* GLib keeps a leading "--" */
        memmove(&(*argv)[1], &(*argv)[2], (size_t)(*argc - 1) * sizeof(char *));
        (*argc)--;
    }
    return -1;
}

#endif
