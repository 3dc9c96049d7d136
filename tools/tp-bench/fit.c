/* fit.c — alpha-beta (Hockney) fit and link presets. */
#include "bench.h"

#include <math.h>
#include <string.h>

/* Per-direction bandwidth and per-step latency. Rough public figures:
 * NVLink 4 (H100 SXM, 900 GB/s bidirectional = 450 per direction),
 * InfiniBand NDR 400 Gb/s (~48 GB/s usable per direction), PCIe 4.0 x16
 * (~25 GB/s usable). Latencies include software overhead per step. */
static const bench_link presets[] = {
    {"nvlink4", 450.0, 3.0},
    {"ib-ndr", 48.0, 6.0},
    {"pcie4", 25.0, 5.0},
};

int bench_link_presets(const bench_link **out)
{
    *out = presets;
    return (int)G_N_ELEMENTS(presets);
}

const bench_link *bench_link_find(const char *name)
{
    for (size_t i = 0; i < G_N_ELEMENTS(presets); i++)
        if (strcmp(presets[i].name, name) == 0)
            return &presets[i];
    return NULL;
}

bench_fit bench_link_fit(const bench_link *l)
{
    bench_fit f = {0};
    f.alpha_s = l->alpha_us * 1e-6;
    f.beta_s = 1.0 / (l->gbps * 1e9);
    return f;
}

double bench_model_time(const bench_fit *f, int op, int p, double bytes)
{
    return bench_model_lat_steps(op, p) * f->alpha_s + bench_model_bw_factor(op, p) * bytes * f->beta_s;
}

int bench_fit_hockney(const bench_sample *s, int n, double min_bytes, bench_fit *out)
{
    /* weighted normal equations, weight 1/t^2 (relative error);
     * x1 = L(op,p) [steps], x2 = B(op,p)*n [bytes], unknowns alpha, beta */
    double a11 = 0, a12 = 0, a22 = 0, r1 = 0, r2 = 0;
    int used = 0;
    for (int i = 0; i < n; i++) {
        if (s[i].p < 2 || s[i].bytes < min_bytes || !(s[i].seconds > 0))
            continue;
        double x1 = bench_model_lat_steps(s[i].op, s[i].p);
        double x2 = bench_model_bw_factor(s[i].op, s[i].p) * s[i].bytes;
        if (x1 <= 0 && x2 <= 0)
            continue;
        double w = 1.0 / (s[i].seconds * s[i].seconds);
        a11 += w * x1 * x1;
        a12 += w * x1 * x2;
        a22 += w * x2 * x2;
        r1 += w * x1 * s[i].seconds;
        r2 += w * x2 * s[i].seconds;
        used++;
    }
    memset(out, 0, sizeof *out);
    out->n = used;
    if (used < 2 || a11 <= 0 || a22 <= 0)
        return -1;
    double det = a11 * a22 - a12 * a12;
    double alpha = -1, beta = -1;
    /* det is tiny relative to a11*a22 when x1 and x2 are proportional
     * (e.g. every sample the same size): then alpha and beta are not
     * separable. */
    if (det > 1e-12 * a11 * a22) {
        alpha = (r1 * a22 - r2 * a12) / det;
        beta = (a11 * r2 - a12 * r1) / det;
    } else {
        return -1;
    }
    if (alpha < 0) {
        /* latency not resolvable from these sizes: pure bandwidth fit */
        alpha = 0;
        beta = r2 / a22;
        out->alpha_clamped = true;
    } else if (beta < 0) {
        beta = 0;
        alpha = r1 / a11;
    }
    if (!(beta > 0) && !(alpha > 0))
        return -1;
    out->alpha_s = alpha;
    out->beta_s = beta;
    return 0;
}

double bench_model2_time(const bench_fit2 *f, int op, int p, double bytes)
{
    const bench_fit *m = (f->nseg > 1 && bytes > f->break_bytes) ? &f->hi : &f->lo;
    return bench_model_time(m, op, p, bytes);
}

static double sse_of(const bench_fit *f, const bench_sample *s, int n)
{
    double sse = 0;
    for (int i = 0; i < n; i++) {
        double e = (bench_model_time(f, s[i].op, s[i].p, s[i].bytes) - s[i].seconds) / s[i].seconds;
        sse += e * e;
    }
    return sse;
}

static int cmp_bytes(const void *a, const void *b)
{
    double x = ((const bench_sample *)a)->bytes, y = ((const bench_sample *)b)->bytes;
    return (x > y) - (x < y);
}

int bench_fit_piecewise(const bench_sample *s, int n, double min_bytes, bench_fit2 *out)
{
    memset(out, 0, sizeof *out);
    /* the usable samples, by size */
    bench_sample *v = g_new(bench_sample, n > 0 ? n : 1);
    int m = 0;
    for (int i = 0; i < n; i++)
        if (s[i].p >= 2 && s[i].bytes >= min_bytes && s[i].seconds > 0)
            v[m++] = s[i];
    qsort(v, (size_t)m, sizeof *v, cmp_bytes);
    int rc = bench_fit_hockney(v, m, 0, &out->lo);
    if (rc != 0) {
        g_free(v);
        return rc;
    }
    out->nseg = 1;
    out->sse = sse_of(&out->lo, v, m);
    double best = out->sse;
    /* one line within 1% rms: nothing to gain from a second */
    for (int k = 3; out->sse > 1e-4 * m && k + 3 <= m; k++) {
        if (v[k - 1].bytes == v[k].bytes)
            continue; /* a split falls between two sizes */
        bench_fit lo, hi;
        if (bench_fit_hockney(v, k, 0, &lo) != 0 || bench_fit_hockney(v + k, m - k, 0, &hi) != 0)
            continue;
        double sse = sse_of(&lo, v, k) + sse_of(&hi, v + k, m - k);
        if (sse < 0.5 * out->sse && sse < best) {
            best = sse;
            out->lo = lo;
            out->hi = hi;
            out->break_bytes = v[k - 1].bytes;
            out->nseg = 2;
        }
    }
    out->sse = best;
    g_free(v);
    return 0;
}
