/* SPDX-License-Identifier: MIT */
/* tp-options.h — the command-line conventions every GOptionContext program
 * shares (tp-info, tp-conformance, tp-launch, the examples): one error style
 * ("PROG: what (try --help)", exit 2), --version as "PROG VERSION (git
 * REVISION)", a value given to a flag that takes none refused (GLib would
 * ignore "--json=0"), "-nVALUE" for a short option that takes a value (GLib
 * knows only "-n VALUE"), a leading "--" dropped. An option given twice:
 * the last value wins (GLib's rule). Header-only; not installed. */
#ifndef TP_TOOLS_OPTIONS_H
#define TP_TOOLS_OPTIONS_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>

#include "tp-version.h"

/* Does entry e take a value? */
static inline gboolean tp_options_takes_value(const GOptionEntry *e)
{
    return e->arg != G_OPTION_ARG_NONE &&
           !(e->arg == G_OPTION_ARG_CALLBACK && (e->flags & G_OPTION_FLAG_NO_ARG));
}

/* The entry with long name s[0..len) or, len 0, short name *s; NULL if none. */
static inline const GOptionEntry *tp_options_find(const GOptionEntry *entries, const char *s,
                                                  size_t len)
{
    for (const GOptionEntry *e = entries; e->long_name; e++)
        if (len ? strlen(e->long_name) == len && strncmp(s, e->long_name, len) == 0
                : e->short_name == *s)
            return e;
    return NULL;
}

/* One word of the options: "--NAME=VALUE" for a flag is refused (FALSE);
 * *skip is set when the next word is this one's value, *split to the
 * offset of a value attached to a short option ("-n4": 2), else 0. */
static inline gboolean tp_options_word(const char *prog, const GOptionEntry *entries, const char *a,
                                       int *skip, size_t *split)
{
    *skip = 0;
    *split = 0;
    if (a[1] == '-') {
        const char *eq = strchr(a, '=');
        const GOptionEntry *e =
            tp_options_find(entries, a + 2, eq ? (size_t)(eq - a - 2) : strlen(a + 2));
        if (e && eq && !tp_options_takes_value(e)) {
            fprintf(stderr, "%s: --%s takes no value, got '%s' (try --help)\n", prog, e->long_name,
                    a);
            return FALSE;
        }
        *skip = e && !eq && tp_options_takes_value(e);
        return TRUE;
    }
    for (size_t k = 1; a[k]; k++) {
        const GOptionEntry *e = tp_options_find(entries, a + k, 0);
        if (e && tp_options_takes_value(e)) {
            *split = a[k + 1] ? k + 1 : 0;
            *skip = !a[k + 1];
            break;
        }
    }
    return TRUE;
}

/* Check the words before the first operand (strict POSIX) or "--" with
 * tp_options_word; split "-nVALUE" into "-n" "VALUE" (a new argv, kept for
 * the life of the program). FALSE after a message. */
static inline gboolean tp_options_prepare(const char *prog, GOptionContext *ctx,
                                          const GOptionEntry *entries, int *argc, char ***argv)
{
    static char **split_argv; /* reachable until exit: the program's argv from here on */
    int n = *argc, extra = 0, i;
    size_t at[64];
    int where[64];
    for (i = 1; i < n && strcmp((*argv)[i], "--") != 0; i++) {
        const char *a = (*argv)[i];
        int skip;
        size_t split;
        if (a[0] != '-' || !a[1]) {
            if (g_option_context_get_strict_posix(ctx))
                break;
            continue;
        }
        if (!tp_options_word(prog, entries, a, &skip, &split))
            return FALSE;
        if (split && extra < 64) {
            where[extra] = i;
            at[extra++] = split;
        }
        i += skip;
    }
    if (!extra)
        return TRUE;
    char **v = g_new0(char *, (size_t)(n + extra + 1));
    for (int k = 0, j = 0, s = 0; k < n; k++) {
        if (s < extra && where[s] == k) {
            v[j++] = g_strndup((*argv)[k], at[s]);
            v[j++] = (*argv)[k] + at[s++];
        } else {
            v[j++] = (*argv)[k];
        }
    }
    split_argv = v;
    *argc = n + extra;
    *argv = split_argv;
    return TRUE;
}

/* Parse argv with ctx (entries: its main entries). Returns -1 to go on,
 * else the exit status: 0 after --version, 2 on a bad command line. On -1,
 * argv holds the program name and the operands only. --help prints the
 * help and exits 0 (GLib). */
static inline int tp_options_parse(const char *prog, GOptionContext *ctx,
                                   const GOptionEntry *entries, const gboolean *version, int *argc,
                                   char ***argv)
{
    GError *err = NULL;
    if (!g_get_prgname())
        g_set_prgname(prog); /* the name --help shows, however the program was started */
    if (!tp_options_prepare(prog, ctx, entries, argc, argv))
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

/* A usage error after parsing: "PROG: what (try --help)" on stderr; 2. */
static inline int tp_options_error(const char *prog, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static inline int tp_options_error(const char *prog, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (try --help)\n");
    va_end(ap);
    return 2;
}

#endif
