/* SPDX-License-Identifier: MIT */
/* npy-read.c — see npy-read.h. */
#include "npy-read.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The header's dictionary (NUL-terminated, malloc'ed), or NULL. */
static char *read_header(FILE *f)
{
    unsigned char pre[12];
    size_t len;

    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0)
        return NULL;
    len = (size_t)pre[8] | (size_t)pre[9] << 8;
    if (pre[6] >= 2) { /* format 2.x: a 4-byte header length */
        if (fread(pre + 10, 1, 2, f) != 2)
            return NULL;
        len |= (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
    }
    char *h = calloc(len + 1, 1);
    if (h && fread(h, 1, len, f) != len) {
        free(h);
        h = NULL;
    }
    return h;
}

/* Parse "'shape': (d0, d1, ...)" into a; 0 or -1. */
static int parse_shape(const char *hdr, npy_array *a)
{
    const char *s = strstr(hdr, "'shape': (");
    const char *e = s ? strchr(s, ')') : NULL;

    if (!s || !e || (size_t)(e - s - 10) >= sizeof a->shape_text)
        return -1;
    s += 10;
    memcpy(a->shape_text, s, (size_t)(e - s));
    a->shape_text[e - s] = '\0';
    a->ndim = 0;
    a->n = 1;
    for (const char *p = a->shape_text; *p;) {
        char *end;
        long long d = strtoll(p, &end, 10);
        if (end == p) { /* a separator */
            p++;
            continue;
        }
        if (d < 0 || a->ndim == NPY_MAX_DIMS)
            return -1;
        a->shape[a->ndim++] = d;
        a->n *= d;
        p = end;
    }
    return 0;
}

int npy_read(const char *path, const char *descr, const char *who, npy_array *a)
{
    char want[32];
    FILE *f = fopen(path, "rb");
    char *hdr = NULL;
    int ok;

    memset(a, 0, sizeof *a);
    if (!f) {
        fprintf(stderr, "%s: cannot open %s\n", who, path);
        return -1;
    }
    snprintf(want, sizeof want, "'descr': '%s'", descr);
    hdr = read_header(f);
    ok = hdr && strstr(hdr, want) && strstr(hdr, "'fortran_order': False");
    if (!ok)
        fprintf(stderr, "%s: %s is not a C-order little-endian %s .npy file\n", who, path, descr);
    if (ok && parse_shape(hdr, a) != 0) {
        fprintf(stderr, "%s: %s: no shape in the header\n", who, path);
        ok = 0;
    }
    free(hdr);
    if (ok) {
        a->data = malloc(4 * (size_t)(a->n ? a->n : 1));
        ok = a->data && fread(a->data, 4, (size_t)a->n, f) == (size_t)a->n;
        if (!ok)
            fprintf(stderr, "%s: %s: expected %lld values of %s\n", who, path, (long long)a->n,
                    descr);
    }
    fclose(f);
    if (!ok)
        npy_free(a);
    return ok ? 0 : -1;
}

void npy_free(npy_array *a)
{
    free(a->data);
    a->data = NULL;
}

int npy_same_shape(const npy_array *a, const npy_array *b)
{
    if (a->ndim != b->ndim)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return 0;
    return 1;
}
