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

typedef struct npy {
    char shape[128];
    float *data;
    size_t n;
} npy;

static int load(const char *path, npy *out)
{
    FILE *f = fopen(path, "rb");
    unsigned char pre[12];
    if (!f) {
        fprintf(stderr, "npy-compare: cannot open %s\n", path);
        return -1;
    }
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0) {
        fprintf(stderr, "npy-compare: %s is not a .npy file\n", path);
        fclose(f);
        return -1;
    }
    size_t hlen = pre[8] | (pre[9] << 8);
    if (pre[6] >= 2) {
        if (fread(pre + 10, 1, 2, f) != 2) {
            fclose(f);
            return -1;
        }
        hlen |= ((size_t)pre[10] << 16) | ((size_t)pre[11] << 24);
    }
    char *h = calloc(hlen + 1, 1);
    if (!h || fread(h, 1, hlen, f) != hlen || !strstr(h, "'descr': '<f4'") ||
        !strstr(h, "'fortran_order': False")) {
        fprintf(stderr, "npy-compare: %s is not a C-order little-endian float32 .npy file\n",
                path);
        free(h);
        fclose(f);
        return -1;
    }
    const char *s = strstr(h, "'shape': (");
    const char *e = s ? strchr(s, ')') : NULL;
    if (!s || !e || (size_t)(e - s) >= sizeof out->shape) {
        fprintf(stderr, "npy-compare: %s: no shape in the header\n", path);
        free(h);
        fclose(f);
        return -1;
    }
    memcpy(out->shape, s + 10, (size_t)(e - s - 10));
    out->shape[e - s - 10] = '\0';
    size_t n = 1;
    for (char *p = out->shape; *p;) {
        char *end;
        unsigned long long d = strtoull(p, &end, 10);
        if (end == p) {
            p++;
            continue;
        }
        n *= (size_t)d;
        p = end;
    }
    free(h);
    out->data = malloc((n + 1) * sizeof(float));
    out->n = n;
    if (!out->data || fread(out->data, sizeof(float), n, f) != n) {
        fprintf(stderr, "npy-compare: %s: expected %zu float32 values\n", path, n);
        fclose(f);
        return -1;
    }
    fclose(f);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: npy-compare A.npy B.npy ATOL\n");
        return 2;
    }
    double atol = atof(argv[3]);
    npy a = {0}, b = {0};
    if (load(argv[1], &a) < 0 || load(argv[2], &b) < 0)
        return 2;
    if (strcmp(a.shape, b.shape) != 0) {
        fprintf(stderr, "npy-compare: shapes differ: (%s) vs (%s)\n", a.shape, b.shape);
        return 1;
    }
    double worst = 0, maxabs = 0;
    size_t bad = 0, at = 0;
    for (size_t i = 0; i < a.n; i++) {
        double d = fabs((double)a.data[i] - (double)b.data[i]);
        if (!(d <= atol))
            bad++;
        if (!(d <= worst)) {
            worst = d;
            at = i;
        }
        if (fabs(a.data[i]) > maxabs)
            maxabs = fabs(a.data[i]);
    }
    printf("%s vs %s: shape (%s), max |a-b| = %.3g at [%zu] (max |a| = %.3g), %zu of %zu beyond "
           "%.3g\n",
           argv[1], argv[2], a.shape, worst, at, maxabs, bad, a.n, atol);
    free(a.data);
    free(b.data);
    return bad ? 1 : 0;
}
