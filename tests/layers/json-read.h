/* SPDX-License-Identifier: MIT */
/* json-read.h — just enough JSON for the tests' dump checkers: the flat
 * config.json objects tp_transformer and tp_attention write (unique keys,
 * numbers, booleans, null, plain strings). */
#ifndef TP_TEST_JSON_READ_H
#define TP_TEST_JSON_READ_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The whole file, NUL-terminated (NULL if unreadable). */
static inline char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *b = malloc(cap);
    size_t got;
    while (b && (got = fread(b + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (n + 1 == cap) {
            char *nb = realloc(b, cap *= 2);
            if (!nb)
                free(b);
            b = nb;
        }
    }
    fclose(f);
    if (b)
        b[n] = 0;
    return b;
}

/* The text after "key": in a flat JSON object (NULL if absent). */
static inline const char *jval(const char *json, const char *key)
{
    char pat[80];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(json, pat);
    if (!p)
        return NULL;
    p += strlen(pat);
    while (*p == ' ')
        p++;
    return p;
}

/* A number (true = 1, false = 0), or def when absent. */
static inline double jnum(const char *json, const char *key, double def)
{
    const char *p = jval(json, key);
    if (!p)
        return def;
    if (!strncmp(p, "true", 4))
        return 1;
    if (!strncmp(p, "false", 5))
        return 0;
    return atof(p);
}

static inline bool jis_null(const char *json, const char *key)
{
    const char *p = jval(json, key);
    return !p || !strncmp(p, "null", 4);
}

static inline bool jstr_is(const char *json, const char *key, const char *want)
{
    const char *p = jval(json, key);
    size_t n = strlen(want);
    return p && p[0] == '"' && !strncmp(p + 1, want, n) && p[n + 1] == '"';
}

#endif
