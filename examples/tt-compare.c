/* SPDX-License-Identifier: MIT */
/*
 * tt-compare.c — the TP-size invariance checker behind tp_transformer
 * --compare-tp T1,T2,...: differences in ULPs of each tensor's scale and
 * their bounds. The bound's derivation is in docs/determinism.md ("How far
 * apart may two T be"); in short, per element
 *
 *   |x_T - x_1| <= 2 n m u S,   u = 2^-24, m = 5,
 *
 * n the number of roundings on the longest dependency path (the summed
 * reduction lengths, which the T runs may associate differently), S the
 * tensor's largest magnitude and m the allowance for sums of |terms|
 * larger than S; in ULPs of S (ulp(S) > u S) that is 2 n m. Step s > 1
 * allows s times the first step's bound.
 */
#include "tt-compare.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tt_parse_list(const char *prog, const char *s, int *Ts, int *n)
{
    *n = 0;
    const char *p = s;
    while (*p) {
        char *end = NULL;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > 1024 || (*end && *end != ',') || *n == TT_MAX_RUNS) {
            fprintf(stderr,
                    "%s: --compare-tp '%s': expected K or a list T1,T2,... of at most %d "
                    "values in [1, 1024] (e.g. 1,2,3,4)\n",
                    prog, s, TT_MAX_RUNS);
            return -1;
        }
        Ts[(*n)++] = (int)v;
        p = *end ? end + 1 : end;
        if (*end && !*p) {
            fprintf(stderr, "%s: --compare-tp '%s': trailing comma\n", prog, s);
            return -1;
        }
    }
    if (!*n) {
        fprintf(stderr, "%s: --compare-tp: empty list\n", prog);
        return -1;
    }
    return 0;
}

int tt_cmp_init(tt_cmp *c, int nruns, int steps, int nparams, const char *const *pnames,
                const int64_t *plens, int64_t logits_len)
{
    int nt = 2 + 2 * nparams;
    c->nruns = nruns, c->steps = steps, c->ntens = nt;
    c->names = calloc((size_t)nt, sizeof *c->names);
    c->kind = calloc((size_t)nt, sizeof *c->kind);
    c->len = calloc((size_t)nt, sizeof *c->len);
    c->ref = calloc((size_t)(nt * steps), sizeof *c->ref);
    c->ulps = malloc(sizeof(double) * (size_t)(nruns * steps * nt));
    if (!c->names || !c->kind || !c->len || !c->ref || !c->ulps) {
        fprintf(stderr, "tp_transformer: out of host memory for --compare-tp\n");
        return -1;
    }
    for (int i = 0; i < nruns * steps * nt; i++)
        c->ulps[i] = -1;
    snprintf(c->names[0], sizeof c->names[0], "loss");
    c->kind[0] = TT_LOSS, c->len[0] = 1;
    snprintf(c->names[1], sizeof c->names[1], "logits");
    c->kind[1] = TT_LOGITS, c->len[1] = logits_len;
    for (int i = 0; i < nparams; i++) {
        snprintf(c->names[2 + i], sizeof c->names[0], "grad.%s", pnames[i]);
        c->kind[2 + i] = TT_GRAD, c->len[2 + i] = plens[i];
        snprintf(c->names[2 + nparams + i], sizeof c->names[0], "%s", pnames[i]);
        c->kind[2 + nparams + i] = TT_WEIGHT, c->len[2 + nparams + i] = plens[i];
    }
    return 0;
}

/* Spacing of the floats at x's binade (x >= 0). */
static double ulp_of(double x)
{
    if (!(x >= 1.1754943508222875e-38)) /* zero or subnormal */
        return ldexp(1.0, -149);
    int e;
    frexp(x, &e); /* x = f 2^e, f in [0.5, 1) */
    return ldexp(1.0, e - 24);
}

/* Largest |a - b| in ULPs of max |b|. */
static double ulp_diff(const float *a, const float *b, int64_t n)
{
    double d = 0, s = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - (double)b[i]);
        if (e > d || e != e)
            d = e != e ? INFINITY : e;
        s = fabs((double)b[i]) > s ? fabs((double)b[i]) : s;
    }
    return d / ulp_of(s);
}

int tt_cmp_record(tt_cmp *c, int r, int s, int t, const float *v)
{
    if (s >= c->steps || t >= c->ntens || (c->kind[t] == TT_WEIGHT && s > 0))
        return 0;
    float **ref = &c->ref[s * c->ntens + t];
    if (r == 0) {
        *ref = malloc(sizeof(float) * (size_t)c->len[t]);
        if (!*ref) {
            fprintf(stderr, "tp_transformer: out of host memory for --compare-tp\n");
            return -1;
        }
        memcpy(*ref, v, sizeof(float) * (size_t)c->len[t]);
        return 0;
    }
    if (*ref)
        c->ulps[(r * c->steps + s) * c->ntens + t] = ulp_diff(v, *ref, c->len[t]);
    return 0;
}

/* Roundings on the longest forward path: per block the two norms (mean and
 * variance: 2 hidden each), QKV (hidden), scores (head_dim), softmax and
 * P V (seq each), the out-projection (heads head_dim), fc1 (hidden), fc2
 * (ffn); then the final norm, the logits (hidden) and the cross-entropy's
 * sum over the vocabulary. */
static double path_forward(const tt_shape *p)
{
    double blk = 4.0 * (double)p->hidden + (double)p->hidden + (double)p->head_dim +
                 2.0 * (double)p->seq + (double)(p->heads * p->head_dim) + (double)p->hidden +
                 (double)p->ffn;
    return (double)p->layers * blk + 3.0 * (double)p->hidden + (double)p->vocab;
}

double tt_cmp_bound(const tt_cmp *c, int t, int s)
{
    const tt_shape *p = &c->shape;
    double n;
    switch (c->kind[t]) {
        case TT_WEIGHT: return 0; /* the same master weights at every T */
        case TT_LOSS: n = path_forward(p) + (double)p->tokens; break;
        case TT_LOGITS: n = path_forward(p); break;
        default: /* backward retraces the path, plus the sums over tokens */
            n = 2.0 * path_forward(p) + (double)p->tokens + (double)p->vocab;
    }
    return c->scale * 2.0 * n * 5.0 * (double)(s + 1);
}

bool tt_cmp_report(const tt_cmp *c)
{
    bool ok = true;
    int over = 0;
    printf("\n== TP-size invariance: largest |x_T - x_T%d| in ULPs of the tensor's scale "
           "(max |x| at T=%d) vs the reduction-order bound (docs/determinism.md)\n",
           c->Ts[0], c->Ts[0]);
    for (int s = 0; s < c->steps; s++) {
        printf("   step %d\n   %-34s", s + 1, "tensor");
        for (int r = 1; r < c->nruns; r++)
            printf(" %9s%-3d", "T=", c->Ts[r]);
        printf(" %11s\n", "bound");
        for (int t = 0; t < c->ntens; t++) {
            if (c->kind[t] == TT_WEIGHT && s > 0)
                continue;
            double b = tt_cmp_bound(c, t, s);
            bool row_ok = true;
            printf("   %-34s", c->names[t]);
            for (int r = 1; r < c->nruns; r++) {
                double u = c->ulps[(r * c->steps + s) * c->ntens + t];
                bool bad = !(u <= b);
                row_ok = row_ok && !bad;
                printf(" %11.4g%s", u, bad ? "!" : " ");
            }
            printf(" %11.4g%s\n", b, row_ok ? "" : "  EXCEEDED");
            if (!row_ok)
                over++, ok = false;
        }
    }
    printf("   -> %s (%d tensor/step pairs over their bound; '!' marks the T)\n",
           ok ? "WITHIN BOUNDS" : "BOUND EXCEEDED", over);
    return ok;
}

void tt_cmp_free(tt_cmp *c)
{
    if (c->ref)
        for (int i = 0; i < c->ntens * c->steps; i++)
            free(c->ref[i]);
    free(c->ref);
    free(c->names);
    free(c->kind);
    free(c->len);
    free(c->ulps);
    memset(c, 0, sizeof *c);
}
