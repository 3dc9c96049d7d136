/* SPDX-License-Identifier: MIT */
/*
 * ref.h — the serial reference for the layer tests: plain loops in double,
 * each value paired with a bound on the error of an f32 computation of it.
 *
 * Error model (Higham, "Accuracy and Stability of Numerical Algorithms",
 * ch. 3): with unit roundoff u = 2^-24, any f32 evaluation of a sum of n
 * terms (products rounded once each), in ANY order and with or without FMA,
 * satisfies |fl(s) - s| <= gamma(n) * sum |terms|, gamma(n) = n u/(1 - n u).
 * That covers every GEMM blocking a BLAS may choose and the all-reduce of T
 * partial sums in whatever tree the backend uses: a K-term dot product
 * split over T ranks and then reduced is still a sum of K rounded products
 * with at most K+T roundings on any path; we use n = K + T + 2 (the +2 for
 * the bias add and the final rounding). Inputs are exact f32 values, so the
 * double reference (relative error ~1e-16) is exact for this purpose.
 *
 * Through GeLU, an error e in the pre-activation becomes at most
 * max|gelu'| e = 1.1290 e (erf and tanh forms alike), plus the evaluation
 * error of erff/tanhf and the few multiplications around them, which we
 * bound by GELU_ULPS u (|x| + |gelu(x)|): erff/tanhf are accurate to a few
 * ulp and 0.5 x (1 + erf) loses at most |x| u to the cancellation in 1+erf.
 * gelu' has |gelu''| <= 0.7979 (both forms), so its error is
 * 0.7979 e + GELU_ULPS u (1 + |x|).
 *
 * These are first-order bounds (products of two error terms dropped); the
 * tests accept 2x the bound to cover those second-order terms. A layer bug
 * (wrong shard, wrong offset, a missing or doubled reduction) produces
 * errors of the size of the values themselves, orders of magnitude above.
 */
#ifndef TP_TEST_REF_H
#define TP_TEST_REF_H

#include <math.h>
#include <stdint.h>

#define REF_U     (1.0 / 16777216.0) /* 2^-24 */
#define GELU_ULPS 8.0
#define GELU_D1   1.1290 /* max |gelu'|  */
#define GELU_D2   0.7979 /* max |gelu''| */

static inline double ref_gamma(double n)
{
    return n * REF_U / (1.0 - n * REF_U);
}

/* C[m,n] = A[m,k] B[k,n] (+ bias[n]) in double, with error bounds.
 * ea/eb: error bounds of A/B entries (NULL: exact). ec gets the bound for an
 * f32 evaluation from f32 inputs carrying those errors; nterms_extra is
 * added to k in gamma (T for a cross-rank reduction). Strides: A row pitch
 * lda, B row pitch ldb, transposition handled by the caller's indexing
 * functions below. */
static inline void ref_gemm(int64_t m, int64_t n, int64_t k, const double *a, const double *ea,
                            int ta, const double *b, const double *eb, int tb, const double *bias,
                            double nterms_extra, double *c, double *ec)
{
    double g = ref_gamma((double)k + nterms_extra + 2.0);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = bias ? bias[j] : 0.0, sa = bias ? fabs(bias[j]) : 0.0, prop = 0.0;
            for (int64_t p = 0; p < k; p++) {
                int64_t ia = ta ? p * m + i : i * k + p;
                int64_t ib = tb ? j * k + p : p * n + j;
                double av = a[ia], bv = b[ib];
                double ae = ea ? ea[ia] : 0.0, be = eb ? eb[ib] : 0.0;
                s += av * bv;
                sa += (fabs(av) + ae) * (fabs(bv) + be);
                prop += ae * fabs(bv) + fabs(av) * be + ae * be;
            }
            c[i * n + j] = s;
            if (ec)
                ec[i * n + j] = g * sa + prop;
        }
}

static inline double ref_gelu(double x, int tanh_approx)
{
    if (tanh_approx)
        return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
}

static inline double ref_gelu_d(double x, int tanh_approx)
{
    if (tanh_approx) {
        double c = 0.7978845608028654, in = c * (x + 0.044715 * x * x * x), t = tanh(in);
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x);
    }
    return 0.5 * (1.0 + erf(x / sqrt(2.0))) + x * exp(-0.5 * x * x) / sqrt(2.0 * M_PI);
}

#endif
