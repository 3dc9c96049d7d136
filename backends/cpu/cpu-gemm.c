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

/* Check one operand: a rows x cols matrix stored with row pitch ld and
 * batch stride; needs a pointer when it has elements. */
static tp_status check_operand(const char *name, const void *p, int64_t rows, int64_t cols,
                               int64_t ld, int64_t stride, int64_t batch, int transposed)
{
    if (ld < (cols > 1 ? cols : 1))
        return cpu_err(TP_ERR_INVALID_ARG,
                       "gemm: ld%s = %lld but %s%s is stored as %lld x %lld (row-major), so "
                       "ld%s must be >= %lld; did you swap m/n/k or forget a transpose flag?",
                       name, (long long)ld, name, transposed ? " (transposed)" : "",
                       (long long)rows, (long long)cols, name, (long long)(cols > 1 ? cols : 1));
    if (stride < 0)
        return cpu_err(TP_ERR_INVALID_ARG, "gemm: stride_%s = %lld, expected >= 0", name,
                       (long long)stride);
    if (!p && rows > 0 && cols > 0)
        return cpu_err(TP_ERR_INVALID_ARG, "gemm: %s is NULL for a %lld x %lld operand", name,
                       (long long)rows, (long long)cols);
    (void)batch;
    return TP_OK;
}

/* Do the batches' outputs C_b (m x n, row pitch ldc, at b*stride_c) write
 * disjoint elements? Two layouts qualify: whole matrices one after another
 * (stride_c >= (m-1)*ldc + n), or column blocks side by side within each
 * row pitch (stride_c >= n and (batch-1)*stride_c + n <= ldc), as in the
 * per-head blocks of one [tokens, heads*head_dim] matrix. Other layouts
 * are refused even where they happen not to collide. */
static int c_batches_disjoint(const tp_gemm_args *g)
{
    int64_t s = g->stride_c;

    if (g->batch <= 1 || g->m == 0 || g->n == 0)
        return 1;
    if (s >= (g->m - 1) * g->ldc + g->n)
        return 1;
    /* s >= n > 0 here cannot overflow; ldc >= n was checked */
    return s >= g->n && g->batch - 1 <= (g->ldc - g->n) / s;
}

/* Every check of cpu_gemm except the dtype's. */
tp_status cpu_gemm_check(void *dev, const tp_gemm_args *g)
{
    tp_status st;
    int64_t ar, ac, br, bc;

    if ((st = cpu_check_dev(dev, "gemm")))
        return st;
    if (!g)
        return cpu_err(TP_ERR_INVALID_ARG, "gemm: args is NULL");
    if (g->struct_size < sizeof(tp_gemm_args))
        return cpu_err(TP_ERR_INVALID_ARG, "gemm: args.struct_size %zu < %zu (caller built "
                       "against an older tp-plugin.h?)", g->struct_size, sizeof(tp_gemm_args));
    if (g->m < 0 || g->n < 0 || g->k < 0)
        return cpu_err(TP_ERR_INVALID_ARG, "gemm: m, n, k must be >= 0, got %lld, %lld, %lld",
                       (long long)g->m, (long long)g->n, (long long)g->k);
    if (g->batch < 1)
        return cpu_err(TP_ERR_INVALID_ARG, "gemm: batch = %lld, expected >= 1",
                       (long long)g->batch);
    /* cblas takes int sizes. */
    if (g->m > INT32_MAX || g->n > INT32_MAX || g->k > INT32_MAX || g->lda > INT32_MAX ||
        g->ldb > INT32_MAX || g->ldc > INT32_MAX)
        return cpu_err(TP_ERR_INVALID_ARG, "gemm: m, n, k and leading dimensions must be <= "
                       "%d for BLAS (got m %lld, n %lld, k %lld)", INT32_MAX, (long long)g->m,
                       (long long)g->n, (long long)g->k);

    /* Stored shapes: A is m x k (k x m if transposed), B k x n (n x k). */
    ar = g->trans_a ? g->k : g->m;
    ac = g->trans_a ? g->m : g->k;
    br = g->trans_b ? g->n : g->k;
    bc = g->trans_b ? g->k : g->n;
    if ((st = check_operand("a", g->a, ar, ac, g->lda, g->stride_a, g->batch, g->trans_a)) ||
        (st = check_operand("b", g->b, br, bc, g->ldb, g->stride_b, g->batch, g->trans_b)) ||
        (st = check_operand("c", g->c, g->m, g->n, g->ldc, g->stride_c, g->batch, 0)))
        return st;
    if (!c_batches_disjoint(g))
        return cpu_err(TP_ERR_INVALID_ARG,
                       "gemm: stride_c = %lld makes the %lld output matrices (%lld x %lld, ldc "
                       "%lld) write some elements twice; expected stride_c >= %lld (separate "
                       "matrices) or, for column blocks of one matrix, stride_c >= n = %lld with "
                       "(batch-1)*stride_c + n <= ldc",
                       (long long)g->stride_c, (long long)g->batch, (long long)g->m,
                       (long long)g->n, (long long)g->ldc, (long long)((g->m - 1) * g->ldc + g->n),
                       (long long)g->n);
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
        return cpu_err(TP_ERR_INVALID_ARG, "gemm_bias_act: batch %lld, beta %g; expected batch 1 "
                       "and beta 0", (long long)g->batch, (double)g->beta);
    if ((int)act < 0 || act >= TP_ACT_COUNT_)
        return cpu_err(TP_ERR_INVALID_ARG, "gemm_bias_act: act %d is not a tp_act", (int)act);
    if ((st = cpu_gemm(dev, g)))
        return st;
    cpu_bias_act_rows(g->m, g->n, g->c, g->ldc, bias, act, pre);
    return TP_OK;
}
