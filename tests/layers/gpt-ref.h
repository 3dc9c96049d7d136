/* SPDX-License-Identifier: MIT */
/*
 * gpt-ref.h — a serial double-precision GPT forward (plain loops) with the
 * tp_gpt_config conventions, for test-gpt.c: the loss of given full
 * (unsharded) parameters, and its gradient by central finite differences.
 *
 * Parameters come in tp_gpt_params order and shapes (see tp-layers.h):
 * embedding [V, H], position [S, H], per block ln1 (gamma, beta?),
 * attention qkv.weight [H, (nh + 2 kv) hd], qkv.bias?, out.weight
 * [nh hd, H], out.bias?, ln2, mlp fc1.weight [H, F], fc1.bias?, fc2.weight
 * [F, H], fc2.bias?, then ln_f, then output.weight [H, V] when untied.
 */
#ifndef TP_TEST_GPT_REF_H
#define TP_TEST_GPT_REF_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct gref_cfg {
    int64_t V, H, nh, kv, hd, F, L, S;
    bool tied, bias, rms, gelu_tanh;
    double eps, smoothing;
    bool use_ignore;
    int32_t ignore;
} gref_cfg;

/* y = norm(x) over rows of width n (LayerNorm or RMSNorm, biased variance). */
static inline void gref_norm(const gref_cfg *c, int64_t rows, int64_t n, const double *x,
                             const double *g, const double *b, double *y)
{
    for (int64_t r = 0; r < rows; r++) {
        const double *xr = x + r * n;
        double mu = 0, var = 0;
        if (!c->rms) {
            for (int64_t i = 0; i < n; i++)
                mu += xr[i];
            mu /= (double)n;
        }
        for (int64_t i = 0; i < n; i++)
            var += (xr[i] - mu) * (xr[i] - mu);
        double rs = 1.0 / sqrt(var / (double)n + c->eps);
        for (int64_t i = 0; i < n; i++)
            y[r * n + i] = (xr[i] - mu) * rs * g[i] + (b ? b[i] : 0.0);
    }
}

/* C[m,n] (+)= A[m,k] B[k,n] (+ bias) */
static inline void gref_mm(int64_t m, int64_t n, int64_t k, const double *a, const double *b,
                           const double *bias, double *c, bool add)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = bias ? bias[j] : 0.0;
            for (int64_t p = 0; p < k; p++)
                s += a[i * k + p] * b[p * n + j];
            c[i * n + j] = add ? c[i * n + j] + s : s;
        }
}

static inline double gref_gelu(double x, bool t)
{
    if (t)
        return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
}

/* The mean loss of batch x seq tokens; logits (may be NULL) gets [tokens, V]. */
static inline double gref_loss(const gref_cfg *c, double *const *P, int64_t batch, int64_t seq,
                               const int32_t *ids, const int32_t *tgt, double *logits_out)
{
    int64_t N = batch * seq, H = c->H, hd = c->hd, W = (c->nh + 2 * c->kv) * hd, F = c->F;
    int64_t grp = c->nh / c->kv;
    double *x = calloc((size_t)(N * H), sizeof(double)),
           *a = calloc((size_t)(N * H), sizeof(double));
    double *qkv = calloc((size_t)(N * W), sizeof(double));
    double *ctx = calloc((size_t)(N * c->nh * hd), sizeof(double));
    double *u = calloc((size_t)(N * F), sizeof(double)),
           *lg = calloc((size_t)(N * c->V), sizeof(double));
    double *p = calloc((size_t)seq, sizeof(double));
    int pi = 0;
    const double *E = P[pi++], *Pos = P[pi++];
    for (int64_t t = 0; t < N; t++)
        for (int64_t i = 0; i < H; i++)
            x[t * H + i] = E[ids[t] * H + i] + Pos[(t % seq) * H + i];
    for (int64_t l = 0; l < c->L; l++) {
        const double *g1 = P[pi++], *b1 = c->rms ? NULL : P[pi++];
        const double *wq = P[pi++], *bq = c->bias ? P[pi++] : NULL;
        const double *wo = P[pi++], *bo = c->bias ? P[pi++] : NULL;
        const double *g2 = P[pi++], *b2 = c->rms ? NULL : P[pi++];
        const double *w1 = P[pi++], *bb1 = c->bias ? P[pi++] : NULL;
        const double *w2 = P[pi++], *bb2 = c->bias ? P[pi++] : NULL;
        gref_norm(c, N, H, x, g1, b1, a);
        gref_mm(N, W, H, a, wq, bq, qkv, false);
        for (int64_t b = 0; b < batch; b++)
            for (int64_t h = 0; h < c->nh; h++) {
                int64_t kh = h / grp;
                for (int64_t i = 0; i < seq; i++) {
                    const double *q = qkv + (b * seq + i) * W + h * hd;
                    double mx = -INFINITY, z = 0;
                    for (int64_t j = 0; j <= i; j++) {
                        const double *k = qkv + (b * seq + j) * W + (c->nh + kh) * hd;
                        double s = 0;
                        for (int64_t d = 0; d < hd; d++)
                            s += q[d] * k[d];
                        p[j] = s / sqrt((double)hd);
                        mx = p[j] > mx ? p[j] : mx;
                    }
                    for (int64_t j = 0; j <= i; j++)
                        z += (p[j] = exp(p[j] - mx));
                    double *o = ctx + (b * seq + i) * c->nh * hd + h * hd;
                    for (int64_t d = 0; d < hd; d++)
                        o[d] = 0;
                    for (int64_t j = 0; j <= i; j++) {
                        const double *v = qkv + (b * seq + j) * W + (c->nh + c->kv + kh) * hd;
                        for (int64_t d = 0; d < hd; d++)
                            o[d] += p[j] / z * v[d];
                    }
                }
            }
        gref_mm(N, H, c->nh * hd, ctx, wo, bo, x, true);
        gref_norm(c, N, H, x, g2, b2, a);
        gref_mm(N, F, H, a, w1, bb1, u, false);
        for (int64_t i = 0; i < N * F; i++)
            u[i] = gref_gelu(u[i], c->gelu_tanh);
        gref_mm(N, H, F, u, w2, bb2, x, true);
    }
    const double *gf = P[pi++], *bf = c->rms ? NULL : P[pi++];
    gref_norm(c, N, H, x, gf, bf, a);
    if (c->tied) {
        for (int64_t t = 0; t < N; t++)
            for (int64_t v = 0; v < c->V; v++) {
                double s = 0;
                for (int64_t i = 0; i < H; i++)
                    s += a[t * H + i] * E[v * H + i];
                lg[t * c->V + v] = s;
            }
    } else {
        gref_mm(N, c->V, H, a, P[pi++], NULL, lg, false);
    }
    double sum = 0;
    int64_t cnt = 0;
    for (int64_t t = 0; t < N; t++) {
        const double *r = lg + t * c->V;
        if (c->use_ignore && tgt[t] == c->ignore)
            continue;
        double mx = -INFINITY, z = 0, mean = 0;
        for (int64_t v = 0; v < c->V; v++)
            mx = r[v] > mx ? r[v] : mx;
        for (int64_t v = 0; v < c->V; v++) {
            z += exp(r[v] - mx);
            mean += r[v];
        }
        mean /= (double)c->V;
        sum += mx + log(z) - (1.0 - c->smoothing) * r[tgt[t]] - c->smoothing * mean;
        cnt++;
    }
    if (logits_out)
        memcpy(logits_out, lg, sizeof(double) * (size_t)(N * c->V));
    free(x), free(a), free(qkv), free(ctx), free(u), free(lg), free(p);
    return cnt ? sum / (double)cnt : 0.0;
}

#endif
