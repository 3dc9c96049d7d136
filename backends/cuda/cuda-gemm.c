/*
 * cuda-gemm.c — row-major strided-batched GEMM through cuBLAS.
 *
 * cuBLAS is column-major. A row-major m x n matrix with pitch ld is the
 * column-major n x m matrix with the same ld, i.e. its transpose, so
 *   C = op(A) op(B)   (row-major)   is   C^T = op(B)^T op(A)^T   (column-major):
 * we call cublasGemmStridedBatchedEx with the operands swapped, m and n
 * swapped, and the transpose flags kept. f32, bf16 and f16 all accumulate
 * in f32 (CUBLAS_COMPUTE_32F); f32 may use TF32 tensor cores only when
 * TP_CUDA_TF32=1.
 */
#include <stdint.h>

#include "cuda-internal.h"

static tp_status check_operand(const char *name, const void *p, int64_t rows, int64_t cols,
                               int64_t ld, int64_t stride, int transposed)
{
    if (ld < (cols > 1 ? cols : 1))
        return cuda_err(TP_ERR_INVALID_ARG,
                        "gemm: ld%s = %lld but %s%s is stored as %lld x %lld (row-major), so "
                        "ld%s must be >= %lld; did you swap m/n/k or forget a transpose flag?",
                        name, (long long)ld, name, transposed ? " (transposed)" : "",
                        (long long)rows, (long long)cols, name, (long long)(cols > 1 ? cols : 1));
    if (stride < 0)
        return cuda_err(TP_ERR_INVALID_ARG, "gemm: stride_%s = %lld, expected >= 0", name,
                        (long long)stride);
    if (!p && rows > 0 && cols > 0)
        return cuda_err(TP_ERR_INVALID_ARG, "gemm: %s is NULL for a %lld x %lld operand", name,
                        (long long)rows, (long long)cols);
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

tp_status cuda_gemm(void *dev, const tp_gemm_args *g)
{
    cuda_dev *d = dev;
    tp_status st;
    int64_t ar, ac, br, bc;
    cudaDataType_t type;
    cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
    cublasStatus_t bs;

    if ((st = cuda_check_dev(dev, "gemm")))
        return st;
    if (!g)
        return cuda_err(TP_ERR_INVALID_ARG, "gemm: args is NULL");
    if (g->struct_size < sizeof(tp_gemm_args))
        return cuda_err(TP_ERR_INVALID_ARG, "gemm: args.struct_size %zu < %zu (caller built "
                        "against an older tp-plugin.h?)", g->struct_size, sizeof(tp_gemm_args));
    switch (g->dtype) {
    case TP_F32:
        type = CUDA_R_32F;
        if (d->tf32)
            compute = CUBLAS_COMPUTE_32F_FAST_TF32;
        break;
    case TP_BF16: type = CUDA_R_16BF; break;
    case TP_F16: type = CUDA_R_16F; break;
    default:
        if ((unsigned)g->dtype >= TP_DTYPE_COUNT_)
            return cuda_err(TP_ERR_INVALID_ARG, "gemm: dtype %d is not a tp_dtype", (int)g->dtype);
        return cuda_err(TP_ERR_NOT_SUPPORTED, "gemm: dtype %s is not supported (expected f32, "
                        "bf16 or f16)", cuda_dtype_name(g->dtype));
    }
    if (g->m < 0 || g->n < 0 || g->k < 0)
        return cuda_err(TP_ERR_INVALID_ARG, "gemm: m, n, k must be >= 0, got %lld, %lld, %lld",
                        (long long)g->m, (long long)g->n, (long long)g->k);
    if (g->batch < 1)
        return cuda_err(TP_ERR_INVALID_ARG, "gemm: batch = %lld, expected >= 1",
                        (long long)g->batch);
    if (g->m > INT32_MAX || g->n > INT32_MAX || g->k > INT32_MAX || g->lda > INT32_MAX ||
        g->ldb > INT32_MAX || g->ldc > INT32_MAX || g->batch > INT32_MAX)
        return cuda_err(TP_ERR_INVALID_ARG, "gemm: m, n, k, batch and leading dimensions must "
                        "be <= %d for cuBLAS (got m %lld, n %lld, k %lld, batch %lld)", INT32_MAX,
                        (long long)g->m, (long long)g->n, (long long)g->k, (long long)g->batch);
    ar = g->trans_a ? g->k : g->m;
    ac = g->trans_a ? g->m : g->k;
    br = g->trans_b ? g->n : g->k;
    bc = g->trans_b ? g->k : g->n;
    if ((st = check_operand("a", g->a, ar, ac, g->lda, g->stride_a, g->trans_a)) ||
        (st = check_operand("b", g->b, br, bc, g->ldb, g->stride_b, g->trans_b)) ||
        (st = check_operand("c", g->c, g->m, g->n, g->ldc, g->stride_c, 0)))
        return st;
    if (!c_batches_disjoint(g))
        return cuda_err(TP_ERR_INVALID_ARG,
                        "gemm: stride_c = %lld makes the %lld output matrices (%lld x %lld, ldc "
                        "%lld) write some elements twice; expected stride_c >= %lld (separate "
                        "matrices) or, for column blocks of one matrix, stride_c >= n = %lld with "
                        "(batch-1)*stride_c + n <= ldc",
                        (long long)g->stride_c, (long long)g->batch, (long long)g->m,
                        (long long)g->n, (long long)g->ldc, (long long)((g->m - 1) * g->ldc + g->n),
                        (long long)g->n);
    if (g->m == 0 || g->n == 0)
        return TP_OK;
    if (g->k == 0) /* nothing to multiply: C = beta C, and beta 0 writes zeros */
        return cuda_gemm_scale(d, g->dtype, g->m, g->n, g->beta, g->c, g->ldc, g->stride_c,
                               g->batch);

    bs = cublasGemmStridedBatchedEx(
        d->blas, g->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, g->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
        (int)g->n, (int)g->m, (int)g->k, &g->alpha, g->b, type, (int)g->ldb,
        (long long)g->stride_b, g->a, type, (int)g->lda, (long long)g->stride_a, &g->beta, g->c,
        type, (int)g->ldc, (long long)g->stride_c, (int)g->batch, compute, CUBLAS_GEMM_DEFAULT);
    if (bs != CUBLAS_STATUS_SUCCESS)
        return cuda_err(TP_ERR_DEVICE, "gemm: cublasGemmStridedBatchedEx (%s, m %lld n %lld "
                        "k %lld batch %lld) failed: %s", cuda_dtype_name(g->dtype),
                        (long long)g->m, (long long)g->n, (long long)g->k, (long long)g->batch,
                        cublasGetStatusString(bs));
    return TP_OK;
}
