/* SPDX-License-Identifier: MIT */
/*
 * npy-read.h — the one .npy reader of the tests (check-npy, npy-compare):
 * C-order little-endian arrays of 4-byte elements, format 1.x or 2.x, as
 * the examples' --save-npy writes them. Written here, not taken from the
 * library, so a check of what the library saved does not trust its writer.
 */
#ifndef NPY_READ_H
#define NPY_READ_H

#include <stdint.h>

#define NPY_MAX_DIMS 8

typedef struct npy_array {
    int ndim;
    int64_t shape[NPY_MAX_DIMS];
    int64_t n;            /* elements: the product of shape (1 for a scalar) */
    char shape_text[128]; /* the header's shape between the parentheses, for messages */
    void *data;           /* n elements of 4 bytes (malloc'ed, at least 4 bytes) */
} npy_array;

/* Read path, whose dtype must be descr ("<f4" or "<i4"). 0 on success;
 * -1 with a message on stderr starting with "who: " (a is then empty). */
int npy_read(const char *path, const char *descr, const char *who, npy_array *a);

/* Free a's data (a may be empty). */
void npy_free(npy_array *a);

/* Same number of dimensions and the same extents. */
int npy_same_shape(const npy_array *a, const npy_array *b);

#endif
