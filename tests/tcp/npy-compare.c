/* SPDX-License-Identifier: MIT */
/*
 * npy-compare A.npy B.npy ATOL — compare two little-endian float32 .npy
 * files (as the examples' --save-npy writes them): same shape, and every
 * element within |a - b| <= ATOL. Prints the largest difference. Exit 0 if
 * they agree, 1 if not, 2 if a file is unreadable or not float32 .npy.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "npy-read.h"

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: npy-compare A.npy B.npy ATOL\n");
        return 2;
    }
    double atol = atof(argv[3]);
    npy_array a, b;
    if (npy_read(argv[1], "<f4", "npy-compare", &a) < 0 ||
        npy_read(argv[2], "<f4", "npy-compare", &b) < 0)
        return 2;
    if (!npy_same_shape(&a, &b)) {
        fprintf(stderr, "npy-compare: shapes differ: (%s) vs (%s)\n", a.shape_text, b.shape_text);
        return 1;
    }
    double worst = 0, maxabs = 0;
    const float *x = a.data, *y = b.data;
    size_t bad = 0, at = 0, n = (size_t)a.n;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)x[i] - (double)y[i]);
        if (!(d <= atol))
            bad++;
        if (!(d <= worst)) {
            worst = d;
            at = i;
        }
        if (fabs(x[i]) > maxabs)
            maxabs = fabs(x[i]);
    }
    printf("%s vs %s: shape (%s), max |a-b| = %.3g at [%zu] (max |a| = %.3g), %zu of %zu beyond "
           "%.3g\n",
           argv[1], argv[2], a.shape_text, worst, at, maxabs, bad, n, atol);
    npy_free(&a);
    npy_free(&b);
    return bad ? 1 : 0;
}
