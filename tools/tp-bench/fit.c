/* SPDX-License-Identifier: MIT */
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
    return bench_model_lat_steps(op, p) * f->alpha_s +
           bench_model_bw_factor(op, p) * bytes * f->beta_s;
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

/* ------------------------------------------------ minimax (Chebyshev) fit
 *
 * In relative terms sample i misses by e_i = alpha a_i + beta b_i - 1 with
 * a_i = L/t_i, b_i = B n_i/t_i. max_i |e_i| is jointly convex in (alpha,
 * beta), so its minimum over beta >= 0 for fixed alpha, F(alpha), is convex
 * too: a bisection on beta inside a golden-section search on alpha finds
 * the minimax pair to rounding. */

typedef struct rel_pt {
    double a, b;
} rel_pt;

static double worst_of(const rel_pt *q, int m, double al, double be)
{
    double w = 0;
    for (int i = 0; i < m; i++) {
        double e = fabs(al * q[i].a + be * q[i].b - 1);
        if (e > w)
            w = e;
    }
    return w;
}

/* up(beta) = max_i (b_i beta - r_i) rises, dn(beta) = max_i (r_i - b_i beta)
 * falls, r_i = 1 - alpha a_i; the worst error max(up, dn) is least where
 * they cross, or at beta = 0. */
static double best_beta(const rel_pt *q, int m, double al, double *err)
{
    double rmax = 0, bmax = 0;
    for (int i = 0; i < m; i++) {
        rmax = fmax(rmax, fabs(1 - al * q[i].a));
        bmax = fmax(bmax, q[i].b);
    }
    double lo = 0, hi = bmax > 0 ? (2 * rmax + 1) / bmax : 0; /* up(hi) > rmax >= dn(hi) */
    for (int it = 0; it < 200 && hi > 0; it++) {
        double mid = 0.5 * (lo + hi);
        if (mid <= lo || mid >= hi)
            break;
        double up = -INFINITY, dn = -INFINITY;
        for (int i = 0; i < m; i++) {
            double d = mid * q[i].b - (1 - al * q[i].a);
            up = fmax(up, d);
            dn = fmax(dn, -d);
        }
        if (up < dn)
            lo = mid;
        else
            hi = mid;
    }
    double elo = worst_of(q, m, al, lo), ehi = worst_of(q, m, al, hi);
    *err = elo <= ehi ? elo : ehi;
    return elo <= ehi ? lo : hi;
}

int bench_fit_minimax(const bench_sample *s, int n, double min_bytes, bench_fit *out,
                      double *max_err)
{
    memset(out, 0, sizeof *out);
    *max_err = NAN;
    rel_pt *q = g_new(rel_pt, n > 0 ? n : 1);
    int m = 0;
    double amax = 0, bmax = 0, n0 = -1;
    bool two_sizes = false;
    for (int i = 0; i < n; i++) {
        if (s[i].p < 2 || !(s[i].bytes >= min_bytes) || !(s[i].seconds > 0) ||
            !isfinite(s[i].bytes) || !isfinite(s[i].seconds))
            continue;
        double x1 = bench_model_lat_steps(s[i].op, s[i].p);
        double x2 = bench_model_bw_factor(s[i].op, s[i].p) * s[i].bytes;
        if (x1 <= 0 && x2 <= 0)
            continue;
        q[m].a = x1 / s[i].seconds;
        q[m].b = x2 / s[i].seconds;
        amax = fmax(amax, q[m].a);
        bmax = fmax(bmax, q[m].b);
        if (n0 < 0)
            n0 = s[i].bytes;
        else if (s[i].bytes != n0)
            two_sizes = true;
        m++;
    }
    out->n = m;
    /* one size (or one op and p with every sample alike): alpha and beta
     * cannot be told apart */
    if (!two_sizes || !(amax > 0) || !(bmax > 0)) {
        g_free(q);
        return -1;
    }
    /* alpha beyond (1 + F(0)) / a_i makes sample i miss by more than F(0) */
    double f0;
    best_beta(q, m, 0, &f0);
    double hi = INFINITY;
    for (int i = 0; i < m; i++)
        if (q[i].a > 0)
            hi = fmin(hi, (1 + f0) / q[i].a);
    const double g = 0.5 * (sqrt(5.0) - 1);
    double lo = 0, c = hi - g * (hi - lo), d = lo + g * (hi - lo), fc, fd;
    best_beta(q, m, c, &fc);
    best_beta(q, m, d, &fd);
    for (int it = 0; it < 300 && c < d; it++) {
        if (fc <= fd) {
            hi = d;
            d = c;
            fd = fc;
            c = hi - g * (hi - lo);
            best_beta(q, m, c, &fc);
        } else {
            lo = c;
            c = d;
            fc = fd;
            d = lo + g * (hi - lo);
            best_beta(q, m, d, &fd);
        }
    }
    double al = fc <= fd ? c : d, err;
    double be = best_beta(q, m, al, &err);
    if (f0 <= err) { /* the bound: no latency resolvable */
        al = 0;
        be = best_beta(q, m, 0, &err);
        out->alpha_clamped = true;
    }
    g_free(q);
    out->alpha_s = al;
    out->beta_s = be;
    *max_err = err;
    return 0;
}

/* ---------------------------------------------------------- regimes */

int bench_fit2_regime(const bench_fit2 *f, double bytes)
{
    for (int r = 0; r + 1 < f->nseg; r++)
        if (bytes <= f->hi_bytes[r])
            return r;
    return f->nseg > 0 ? f->nseg - 1 : 0;
}

double bench_model2_time(const bench_fit2 *f, int op, int p, double bytes)
{
    return bench_model_time(&f->seg[bench_fit2_regime(f, bytes)], op, p, bytes);
}

static int cmp_bytes(const void *a, const void *b)
{
    double x = ((const bench_sample *)a)->bytes, y = ((const bench_sample *)b)->bytes;
    return (x > y) - (x < y);
}

/* The minimax line of samples v[i..j) and what it scores. */
typedef struct range_fit {
    bool done, ok;
    bench_fit f;
    double emax; /* over the scored samples in the range; -1: none */
    double sse;  /* over all of them */
} range_fit;

static const range_fit *range_get(range_fit *tab, const bench_sample *v, int m, int i, int j,
                                  double err_min)
{
    range_fit *r = &tab[(size_t)i * (size_t)(m + 1) + (size_t)j];
    if (r->done)
        return r;
    r->done = true;
    double e;
    r->ok = bench_fit_minimax(v + i, j - i, 0, &r->f, &e) == 0;
    r->emax = -1;
    r->sse = 0;
    for (int k = i; r->ok && k < j; k++) {
        double x =
            (bench_model_time(&r->f, v[k].op, v[k].p, v[k].bytes) - v[k].seconds) / v[k].seconds;
        r->sse += x * x;
        if (v[k].bytes >= err_min)
            r->emax = fmax(r->emax, fabs(x));
    }
    return r;
}

/* A candidate: regime r covers v[cut[r]..cut[r+1]). */
typedef struct partition {
    int k, cut[BENCH_FIT_MAX_REGIMES + 1];
    double emax, sse;
    bool ok;
} partition;

static partition score(range_fit *tab, const bench_sample *v, int m, const int *cut, int k,
                       double err_min)
{
    partition pt = {.k = k, .emax = 0, .sse = 0, .ok = true};
    memcpy(pt.cut, cut, (size_t)(k + 1) * sizeof *cut);
    for (int r = 0; r < k && pt.ok; r++) {
        const range_fit *rf = range_get(tab, v, m, cut[r], cut[r + 1], err_min);
        pt.ok = rf->ok;
        pt.emax = fmax(pt.emax, rf->emax);
        pt.sse += rf->sse;
    }
    return pt;
}

static bool better(const partition *a, const partition *b)
{
    if (!b->ok)
        return a->ok;
    if (!a->ok)
        return false;
    return a->emax < b->emax || (a->emax == b->emax && a->sse < b->sse);
}

/* The samples a piecewise fit uses, and the tables its search fills. */
typedef struct cut_search {
    bench_sample *v; /* usable samples, sorted by size */
    int m;
    int *dsz;       /* dsz[i]: distinct sizes in v[0..i) */
    range_fit *tab; /* [i][j]: the line of v[i..j), fitted on first use */
    double err_min; /* scored sizes: those >= this */
} cut_search;

/* A regime may start only at a new size. */
static bool cut_ok(const cut_search *cs, int i)
{
    return i > 0 && i < cs->m && cs->v[i - 1].bytes != cs->v[i].bytes;
}

/* v[i..j) holds enough distinct sizes to be a regime. */
static bool wide(const cut_search *cs, int i, int j)
{
    return cs->dsz[j] - cs->dsz[i] >= BENCH_FIT_MIN_SIZES;
}

static partition cs_score(cut_search *cs, const int *cut, int k)
{
    return score(cs->tab, cs->v, cs->m, cut, k, cs->err_min);
}

/* Samples with p >= 2, bytes >= min_bytes and finite, positive times,
 * sorted by size, with the tables the search needs. */
static void cut_search_init(cut_search *cs, const bench_sample *s, int n, double min_bytes,
                            double err_min_bytes)
{
    bench_sample *v = g_new(bench_sample, n > 0 ? n : 1);
    int m = 0;
    for (int i = 0; i < n; i++)
        if (s[i].p >= 2 && s[i].bytes >= min_bytes && s[i].seconds > 0 && isfinite(s[i].bytes) &&
            isfinite(s[i].seconds))
            v[m++] = s[i];
    qsort(v, (size_t)m, sizeof *v, cmp_bytes);
    cs->v = v;
    cs->m = m;
    /* scored sizes: those >= err_min_bytes, or all when there are none */
    cs->err_min = (m > 0 && v[m - 1].bytes >= err_min_bytes) ? err_min_bytes : -INFINITY;
    cs->dsz = g_new0(int, (size_t)m + 1);
    for (int i = 0; i < m; i++)
        cs->dsz[i + 1] = cs->dsz[i] + (i == 0 || v[i].bytes != v[i - 1].bytes);
    cs->tab = g_new0(range_fit, ((size_t)m + 1) * ((size_t)m + 1));
}

static void cut_search_free(cut_search *cs)
{
    g_free(cs->tab);
    g_free(cs->dsz);
    g_free(cs->v);
}

/* best[k]: the best cut into k regimes, for k = 1 .. BENCH_FIT_MAX_REGIMES
 * (not ok where there is none). */
static void best_partitions(cut_search *cs, partition *best)
{
    int m = cs->m;
    for (int k = 0; k <= BENCH_FIT_MAX_REGIMES; k++)
        best[k] = (partition){.k = k, .ok = false};
    int c1[] = {0, m};
    best[1] = cs_score(cs, c1, 1);
    for (int a = 1; a < m; a++) {
        if (!cut_ok(cs, a) || !wide(cs, 0, a))
            continue;
        if (wide(cs, a, m)) {
            int c2[] = {0, a, m};
            partition pt = cs_score(cs, c2, 2);
            if (better(&pt, &best[2]))
                best[2] = pt;
        }
        for (int b = a + 1; BENCH_FIT_MAX_REGIMES >= 3 && b < m; b++) {
            if (!cut_ok(cs, b) || !wide(cs, a, b) || !wide(cs, b, m))
                continue;
            int c3[] = {0, a, b, m};
            partition pt = cs_score(cs, c3, 3);
            if (better(&pt, &best[3]))
                best[3] = pt;
        }
    }
}

/* The fewest regimes within BENCH_FIT_REGIME_GAIN of the best; 0: none fits. */
static int pick_regimes(const partition *best)
{
    int kbest = 0;
    for (int k = 1; k <= BENCH_FIT_MAX_REGIMES; k++)
        if (best[k].ok && (kbest == 0 || best[k].emax < best[kbest].emax))
            kbest = k;
    if (kbest == 0)
        return 0;
    int k = 1;
    while (!(best[k].ok && best[k].emax <= best[kbest].emax + BENCH_FIT_REGIME_GAIN))
        k++;
    return k;
}

int bench_fit_piecewise(const bench_sample *s, int n, double min_bytes, double err_min_bytes,
                        bench_fit2 *out)
{
    memset(out, 0, sizeof *out);
    out->max_err = NAN;
    cut_search cs;
    cut_search_init(&cs, s, n, min_bytes, err_min_bytes);
    partition best[BENCH_FIT_MAX_REGIMES + 1];
    best_partitions(&cs, best);
    int k = pick_regimes(best);
    if (k == 0) {
        /* too few sizes: report the samples the single line had */
        out->seg[0].n = cs.tab[cs.m].f.n;
        cut_search_free(&cs);
        return -1;
    }
    const partition *pt = &best[k];
    out->nseg = k;
    out->max_err = pt->emax;
    out->sse = pt->sse;
    for (int r = 0; r < k; r++) {
        const range_fit *rf = range_get(cs.tab, cs.v, cs.m, pt->cut[r], pt->cut[r + 1], cs.err_min);
        out->seg[r] = rf->f;
        out->lo_bytes[r] = cs.v[pt->cut[r]].bytes;
        out->hi_bytes[r] = cs.v[pt->cut[r + 1] - 1].bytes;
    }
    for (int i = 0; i < cs.m; i++)
        if (cs.v[i].bytes >= cs.err_min)
            out->n_err++;
    cut_search_free(&cs);
    return 0;
}
