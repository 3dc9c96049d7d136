/* SPDX-License-Identifier: MIT */
/*
 * cpu-gemm.c — row-major strided-batched GEMM through OpenBLAS cblas_sgemm.
 */
#include <cblas.h>
#include <stdint.h>

#include "cpu-internal.h"

void cpu_blas_threads(int threads)
{
    static int current; /* 0: never set */

    /* Process-wide in OpenBLAS and every rank asks for the same number:
     * set it only when it changes, not while other ranks may be in sgemm. */
    if (__atomic_exchange_n(&current, threads, __ATOMIC_ACQ_REL) != threads)
        openblas_set_num_threads(threads);
}

/* Every check of cpu_gemm except the dtype's. */
tp_status cpu_gemm_check(void *dev, const tp_gemm_args *g)
{
    tp_status st;

    if ((st = cpu_check_dev(dev, "gemm")) || (st = tp_util_gemm_check_args(cpu_err, "gemm", g)) ||
        (st = tp_util_gemm_check_mnk(cpu_err, "gemm", g)) ||
        (st = tp_util_gemm_check_batch(cpu_err, "gemm", g)))
        return st;
    /* cblas takes int sizes. */
    if (g->m > INT32_MAX || g->n > INT32_MAX || g->k > INT32_MAX || g->lda > INT32_MAX ||
        g->ldb > INT32_MAX || g->ldc > INT32_MAX)
        return cpu_err(TP_ERR_INVALID_ARG,
                       "gemm: m, n, k and leading dimensions must be <= "
                       "%d for BLAS (got m %lld, n %lld, k %lld)",
                       INT32_MAX, (long long)g->m, (long long)g->n, (long long)g->k);
    if ((st = tp_util_gemm_check_operands(cpu_err, "gemm", g)) ||
        (st = tp_util_gemm_check_c_disjoint(cpu_err, "gemm", g)))
        return st;
    return TP_OK;
}

tp_status cpu_gemm(void *dev, const tp_gemm_args *g)
{
    tp_status st;

    if ((st = cpu_gemm_check(dev, g)) || (st = cpu_check_f32(g->dtype, "gemm")))
        return st;
    if (g->m == 0 || g->n == 0)
        return TP_OK;

    for (int64_t b = 0; b < g->batch; b++) {
        const float *a = (const float *)g->a + b * g->stride_a;
        const float *bb = (const float *)g->b + b * g->stride_b;
        float *c = (float *)g->c + b * g->stride_c;

        if (g->k == 0) {
            /* Nothing to multiply: C = beta * C (beta 0: C not read). */
            for (int64_t i = 0; i < g->m; i++)
                for (int64_t j = 0; j < g->n; j++)
                    c[i * g->ldc + j] = g->beta == 0.0f ? 0.0f : g->beta * c[i * g->ldc + j];
            continue;
        }
        cblas_sgemm(CblasRowMajor, g->trans_a ? CblasTrans : CblasNoTrans,
                    g->trans_b ? CblasTrans : CblasNoTrans, (int)g->m, (int)g->n, (int)g->k,
                    g->alpha, a, (int)g->lda, bb, (int)g->ldb, g->beta, c, (int)g->ldc);
    }
    return TP_OK;
}

/* C = act(op(A) op(B) + bias): sgemm, then one pass over C for bias, the
 * pre-activation copy and GeLU (instead of three passes of separate ops). */
tp_status cpu_gemm_bias_act(void *dev, const tp_gemm_args *g, const void *bias, tp_act act,
                            void *pre)
{
    tp_status st;

    if ((st = cpu_gemm_check(dev, g)) || (st = cpu_check_f32(g->dtype, "gemm_bias_act")))
        return st;
    if (g->batch != 1 || g->beta != 0.0f)
        return cpu_err(TP_ERR_INVALID_ARG,
                       "gemm_bias_act: batch %lld, beta %g; expected batch 1 "
                       "and beta 0",
                       (long long)g->batch, (double)g->beta);
    if ((int)act < 0 || act >= TP_ACT_COUNT_)
        return cpu_err(TP_ERR_INVALID_ARG, "gemm_bias_act: act %d is not a tp_act", (int)act);
    if ((st = cpu_gemm(dev, g)))
        return st;
    cpu_bias_act_rows(g->m, g->n, g->c, g->ldc, bias, act, pre);
    return TP_OK;
}
