/* SPDX-License-Identifier: MIT */
/*
 * ref.h — serial double-precision reference for the transformer tests:
 * plain loops, written from the formulas, sharing no code with the library.
 *
 * Layout conventions match the library's documented master tensors:
 * x [N = b*s, hid]; qkv weight [hid, (H + 2 KV) hd] with columns
 * [Q heads | K heads | V heads]; out weight [H hd, hid].
 */
#ifndef TP_XF_TEST_REF_H
#define TP_XF_TEST_REF_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct ref_attn {
    int64_t b, s, hid, H, KV, hd;
    int causal;
    /* parameters (bias arrays may be NULL) */
    const double *wqkv, *bqkv, *wo, *bo;
    /* saved forward */
    double *qkv, *P, *ctx; /* [N, FW], [b, H, s, s], [N, H hd] */
} ref_attn;

static inline double *rzalloc(int64_t n)
{
    return calloc((size_t)(n > 0 ? n : 1), sizeof(double));
}

/* C[m,n] (+)= A[m,k] B[k,n], row-major; ta/tb: A stored [k,m] / B stored [n,k]. */
static inline void ref_mm(int ta, int tb, int64_t m, int64_t n, int64_t k, const double *A,
                          const double *B, double *C, int accumulate)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double acc = accumulate ? C[i * n + j] : 0.0;
            for (int64_t p = 0; p < k; p++)
                acc += (ta ? A[p * m + i] : A[i * k + p]) * (tb ? B[j * k + p] : B[p * n + j]);
            C[i * n + j] = acc;
        }
}

static inline void ref_attn_free(ref_attn *r)
{
    free(r->qkv);
    free(r->P);
    free(r->ctx);
    r->qkv = r->P = r->ctx = NULL;
}

static inline void ref_attn_forward(ref_attn *r, const double *x, double *y)
{
    int64_t N = r->b * r->s, FW = (r->H + 2 * r->KV) * r->hd, g = r->H / r->KV, s = r->s;
    int64_t cw = r->H * r->hd;
    double scale = 1.0 / sqrt((double)r->hd);
    ref_attn_free(r);
    r->qkv = rzalloc(N * FW);
    r->P = rzalloc(r->b * r->H * s * s);
    r->ctx = rzalloc(N * cw);
    ref_mm(0, 0, N, FW, r->hid, x, r->wqkv, r->qkv, 0);
    if (r->bqkv)
        for (int64_t t = 0; t < N; t++)
            for (int64_t c = 0; c < FW; c++)
                r->qkv[t * FW + c] += r->bqkv[c];
    for (int64_t bi = 0; bi < r->b; bi++)
        for (int64_t h = 0; h < r->H; h++) {
            int64_t kv = h / g;
            double *P = r->P + (bi * r->H + h) * s * s;
            for (int64_t i = 0; i < s; i++) {
                const double *q = r->qkv + (bi * s + i) * FW + h * r->hd;
                int64_t keep = r->causal ? i + 1 : s;
                double mx = -INFINITY, sum = 0.0;
                for (int64_t j = 0; j < keep; j++) {
                    const double *k = r->qkv + (bi * s + j) * FW + (r->H + kv) * r->hd;
                    double d = 0.0;
                    for (int64_t e = 0; e < r->hd; e++)
                        d += q[e] * k[e];
                    P[i * s + j] = d * scale;
                    if (P[i * s + j] > mx)
                        mx = P[i * s + j];
                }
                for (int64_t j = 0; j < keep; j++) {
                    P[i * s + j] = exp(P[i * s + j] - mx);
                    sum += P[i * s + j];
                }
                for (int64_t j = 0; j < s; j++)
                    P[i * s + j] = j < keep ? P[i * s + j] / sum : 0.0;
                double *o = r->ctx + (bi * s + i) * cw + h * r->hd;
                for (int64_t j = 0; j < s; j++) {
                    const double *v = r->qkv + (bi * s + j) * FW + (r->H + r->KV + kv) * r->hd;
                    for (int64_t e = 0; e < r->hd; e++)
                        o[e] += P[i * s + j] * v[e];
                }
            }
        }
    ref_mm(0, 0, N, r->hid, cw, r->ctx, r->wo, y, 0);
    if (r->bo)
        for (int64_t t = 0; t < N; t++)
            for (int64_t c = 0; c < r->hid; c++)
                y[t * r->hid + c] += r->bo[c];
}

/* Gradients (overwritten) of sum(y * dy) after ref_attn_forward(x). */
static inline void ref_attn_backward(ref_attn *r, const double *x, const double *dy, double *dx,
                                     double *dwqkv, double *dbqkv, double *dwo, double *dbo)
{
    int64_t N = r->b * r->s, FW = (r->H + 2 * r->KV) * r->hd, g = r->H / r->KV, s = r->s;
    int64_t cw = r->H * r->hd, hd = r->hd;
    double scale = 1.0 / sqrt((double)hd);
    double *dctx = rzalloc(N * cw), *dqkv = rzalloc(N * FW), *dP = rzalloc(s);
    ref_mm(1, 0, cw, r->hid, N, r->ctx, dy, dwo, 0);
    for (int64_t c = 0; c < r->hid && dbo; c++) {
        dbo[c] = 0.0;
        for (int64_t t = 0; t < N; t++)
            dbo[c] += dy[t * r->hid + c];
    }
    ref_mm(0, 1, N, cw, r->hid, dy, r->wo, dctx, 0);
    for (int64_t bi = 0; bi < r->b; bi++)
        for (int64_t h = 0; h < r->H; h++) {
            int64_t kv = h / g;
            const double *P = r->P + (bi * r->H + h) * s * s;
            for (int64_t i = 0; i < s; i++) {
                const double *dO = dctx + (bi * s + i) * cw + h * hd;
                const double *q = r->qkv + (bi * s + i) * FW + h * hd;
                double *dq = dqkv + (bi * s + i) * FW + h * hd;
                double dot = 0.0;
                for (int64_t j = 0; j < s; j++) {
                    const double *v = r->qkv + (bi * s + j) * FW + (r->H + r->KV + kv) * hd;
                    double *dv = dqkv + (bi * s + j) * FW + (r->H + r->KV + kv) * hd;
                    dP[j] = 0.0;
                    for (int64_t e = 0; e < hd; e++) {
                        dP[j] += dO[e] * v[e];
                        dv[e] += P[i * s + j] * dO[e];
                    }
                    dot += dP[j] * P[i * s + j];
                }
                for (int64_t j = 0; j < s; j++) {
                    double dS = P[i * s + j] * (dP[j] - dot) * scale;
                    const double *k = r->qkv + (bi * s + j) * FW + (r->H + kv) * hd;
                    double *dk = dqkv + (bi * s + j) * FW + (r->H + kv) * hd;
                    for (int64_t e = 0; e < hd; e++) {
                        dq[e] += dS * k[e];
                        dk[e] += dS * q[e];
                    }
                }
            }
        }
    ref_mm(1, 0, r->hid, FW, N, x, dqkv, dwqkv, 0);
    for (int64_t c = 0; c < FW && dbqkv; c++) {
        dbqkv[c] = 0.0;
        for (int64_t t = 0; t < N; t++)
            dbqkv[c] += dqkv[t * FW + c];
    }
    ref_mm(0, 1, N, r->hid, FW, dqkv, r->wqkv, dx, 0);
    free(dctx);
    free(dqkv);
    free(dP);
}

/* LayerNorm (rms = 0) or RMSNorm over rows of x [n, d]; beta may be NULL. */
static inline void ref_norm_forward(int rms, int64_t n, int64_t d, double eps, const double *x,
                                    const double *gamma, const double *beta, double *y)
{
    for (int64_t t = 0; t < n; t++) {
        const double *xr = x + t * d;
        double mean = 0.0, var = 0.0;
        if (!rms) {
            for (int64_t c = 0; c < d; c++)
                mean += xr[c];
            mean /= (double)d;
        }
        for (int64_t c = 0; c < d; c++)
            var += (xr[c] - mean) * (xr[c] - mean);
        double rstd = 1.0 / sqrt(var / (double)d + eps);
        for (int64_t c = 0; c < d; c++)
            y[t * d + c] = (xr[c] - mean) * rstd * gamma[c] + (beta ? beta[c] : 0.0);
    }
}

/* dx overwritten; dgamma/dbeta (may be NULL) accumulate. */
static inline void ref_norm_backward(int rms, int64_t n, int64_t d, double eps, const double *x,
                                     const double *gamma, const double *dy, double *dx,
                                     double *dgamma, double *dbeta)
{
    for (int64_t t = 0; t < n; t++) {
        const double *xr = x + t * d, *g = dy + t * d;
        double mean = 0.0, var = 0.0, m1 = 0.0, m2 = 0.0;
        if (!rms) {
            for (int64_t c = 0; c < d; c++)
                mean += xr[c];
            mean /= (double)d;
        }
        for (int64_t c = 0; c < d; c++)
            var += (xr[c] - mean) * (xr[c] - mean);
        double rstd = 1.0 / sqrt(var / (double)d + eps);
        for (int64_t c = 0; c < d; c++) {
            double xh = (xr[c] - mean) * rstd, dxh = g[c] * gamma[c];
            m1 += dxh;
            m2 += dxh * xh;
            if (dgamma)
                dgamma[c] += g[c] * xh;
            if (dbeta)
                dbeta[c] += g[c];
        }
        m1 /= (double)d;
        m2 /= (double)d;
        for (int64_t c = 0; c < d; c++) {
            double xh = (xr[c] - mean) * rstd, dxh = g[c] * gamma[c];
            dx[t * d + c] = rstd * (dxh - (rms ? 0.0 : m1) - xh * m2);
        }
    }
}

static inline double ref_gelu(double x)
{
    return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
}

static inline double ref_gelu_d(double x)
{
    return 0.5 * (1.0 + erf(x / sqrt(2.0))) + x * exp(-0.5 * x * x) / sqrt(2.0 * M_PI);
}

#endif
