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
 *
 * gemm_bias_act runs the same mapping through cuBLASLt with a fused
 * epilogue. The bias of row-major C is per column, i.e. per row of the
 * column-major D = C^T (n x m), which is what cuBLASLt's bias is (length =
 * rows of D). cuBLASLt's GELU epilogue is the tanh approximation (PyTorch
 * falls back to gelu(approximate="tanh") where it cannot use it), so only
 * TP_ACT_GELU_TANH is fused, and only for bf16/f16: the epilogue may use
 * the hardware tanh (relative error ~2^-11), fine below a bf16/f16
 * rounding but not at f32 accuracy. The exact (erf) GeLU and f32 GeLU are
 * left to the core (gemm, then the bias_add and gelu kernels); the bias
 * alone is fused for every dtype.
 */
#include <stdint.h>
#include <string.h>

#include "cuda-internal.h"

static tp_status check_operand(const char *op, const char *name, const void *p, int64_t rows,
                               int64_t cols, int64_t ld, int64_t stride, int transposed)
{
    if (ld < (cols > 1 ? cols : 1))
        return cuda_err(TP_ERR_INVALID_ARG,
                        "%s: ld%s = %lld but %s%s is stored as %lld x %lld (row-major), so "
                        "ld%s must be >= %lld; did you swap m/n/k or forget a transpose flag?",
                        op, name, (long long)ld, name, transposed ? " (transposed)" : "",
                        (long long)rows, (long long)cols, name, (long long)(cols > 1 ? cols : 1));
    if (stride < 0)
        return cuda_err(TP_ERR_INVALID_ARG, "%s: stride_%s = %lld, expected >= 0", op, name,
                        (long long)stride);
    if (!p && rows > 0 && cols > 0)
        return cuda_err(TP_ERR_INVALID_ARG, "%s: %s is NULL for a %lld x %lld operand", op, name,
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
    if ((st = check_operand("gemm", "a", g->a, ar, ac, g->lda, g->stride_a, g->trans_a)) ||
        (st = check_operand("gemm", "b", g->b, br, bc, g->ldb, g->stride_b, g->trans_b)) ||
        (st = check_operand("gemm", "c", g->c, g->m, g->n, g->ldc, g->stride_c, 0)))
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

/* The largest power of two <= 256 dividing p's address: the alignment
 * cuBLASLt may assume for it (its preference defaults to 256 bytes, and an
 * algorithm picked for more than a buffer has would fault). */
static uint32_t address_alignment(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    uint32_t al = 256;

    while (al > 1 && (a & (al - 1)))
        al >>= 1;
    return al;
}

/* A cuBLASLt status -> tp_status. Nothing is written before cublasLtMatmul
 * runs, so any refusal while setting up (cuBLASLt answers some shapes, e.g.
 * a single row or column, with INVALID_VALUE from the heuristic) and a
 * matmul refused as invalid or unsupported become TP_ERR_NOT_SUPPORTED: the
 * core then composes gemm + bias_add + gelu. Out of memory stays that; a
 * failed execution is a device error. */
static tp_status lt_err(cublasStatus_t bs, const tp_gemm_args *g, const char *what)
{
    int running = strcmp(what, "cublasLtMatmul") == 0;
    int refusal = bs != CUBLAS_STATUS_ALLOC_FAILED &&
                  (!running || bs == CUBLAS_STATUS_INVALID_VALUE || bs == CUBLAS_STATUS_NOT_SUPPORTED);
    return cuda_err(bs == CUBLAS_STATUS_ALLOC_FAILED ? TP_ERR_NO_MEMORY
                    : refusal                        ? TP_ERR_NOT_SUPPORTED
                                                     : TP_ERR_DEVICE,
                    "gemm_bias_act: %s (%s, m %lld n %lld k %lld, ta %d tb %d, lda %lld ldb %lld "
                    "ldc %lld) failed: %s", what, cuda_dtype_name(g->dtype), (long long)g->m,
                    (long long)g->n, (long long)g->k, g->trans_a, g->trans_b, (long long)g->lda,
                    (long long)g->ldb, (long long)g->ldc, cublasGetStatusString(bs));
}

tp_status cuda_gemm_bias_act(void *dev, const tp_gemm_args *g, const void *bias, tp_act act,
                             void *pre)
{
    const char *op = "gemm_bias_act";
    cuda_dev *d = dev;
    tp_status st;
    int64_t ar, ac, br, bc;
    cudaDataType_t type;
    size_t es;
    cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
    cublasStatus_t bs;
    cublasLtMatmulDesc_t desc = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    uint32_t epi;
    int32_t opa, opb;
    float beta = 0.0f;
    uint64_t ws;
    uint32_t al_a, al_b, al_c;

    if ((st = cuda_check_dev(dev, op)))
        return st;
    if (!g)
        return cuda_err(TP_ERR_INVALID_ARG, "%s: args is NULL", op);
    if (g->struct_size < sizeof(tp_gemm_args))
        return cuda_err(TP_ERR_INVALID_ARG, "%s: args.struct_size %zu < %zu (caller built "
                        "against an older tp-plugin.h?)", op, g->struct_size, sizeof(tp_gemm_args));
    switch (g->dtype) {
    case TP_F32:
        type = CUDA_R_32F;
        es = 4;
        if (d->tf32)
            compute = CUBLAS_COMPUTE_32F_FAST_TF32;
        break;
    case TP_BF16: type = CUDA_R_16BF; es = 2; break;
    case TP_F16: type = CUDA_R_16F; es = 2; break;
    default:
        if ((unsigned)g->dtype >= TP_DTYPE_COUNT_)
            return cuda_err(TP_ERR_INVALID_ARG, "%s: dtype %d is not a tp_dtype", op,
                            (int)g->dtype);
        return cuda_err(TP_ERR_NOT_SUPPORTED, "%s: dtype %s is not supported (expected f32, "
                        "bf16 or f16)", op, cuda_dtype_name(g->dtype));
    }
    if ((unsigned)act >= TP_ACT_COUNT_)
        return cuda_err(TP_ERR_INVALID_ARG, "%s: act %d is not a tp_act (TP_ACT_NONE, "
                        "TP_ACT_GELU or TP_ACT_GELU_TANH)", op, (int)act);
    if (g->m < 0 || g->n < 0 || g->k < 0)
        return cuda_err(TP_ERR_INVALID_ARG, "%s: m, n, k must be >= 0, got %lld, %lld, %lld", op,
                        (long long)g->m, (long long)g->n, (long long)g->k);
    ar = g->trans_a ? g->k : g->m;
    ac = g->trans_a ? g->m : g->k;
    br = g->trans_b ? g->n : g->k;
    bc = g->trans_b ? g->k : g->n;
    if ((st = check_operand(op, "a", g->a, ar, ac, g->lda, g->stride_a, g->trans_a)) ||
        (st = check_operand(op, "b", g->b, br, bc, g->ldb, g->stride_b, g->trans_b)) ||
        (st = check_operand(op, "c", g->c, g->m, g->n, g->ldc, g->stride_c, 0)))
        return st;
    if (g->m == 0 || g->n == 0)
        return TP_OK;
    if (pre && pre == g->c)
        return cuda_err(TP_ERR_INVALID_ARG, "%s: pre and c are the same buffer; pass NULL for "
                        "pre when the pre-activation is not needed", op);
    /* What is not fused: the core composes it from gemm, bias_add and gelu. */
    if (g->batch != 1 || g->beta != 0.0f)
        return cuda_err(TP_ERR_NOT_SUPPORTED, "%s: batch %lld, beta %g: only batch 1 and beta 0 "
                        "are fused", op, (long long)g->batch, (double)g->beta);
    if (act == TP_ACT_GELU)
        return cuda_err(TP_ERR_NOT_SUPPORTED, "%s: the exact (erf) GeLU is not fused: cuBLASLt's "
                        "GELU epilogue is the tanh approximation", op);
    if (act == TP_ACT_GELU_TANH && g->dtype == TP_F32)
        return cuda_err(TP_ERR_NOT_SUPPORTED, "%s: GeLU is fused for bf16/f16 only: cuBLASLt's "
                        "epilogue is not f32-accurate", op);
    if (g->k == 0)
        return cuda_err(TP_ERR_NOT_SUPPORTED, "%s: k = 0 is not fused", op);
    /* GELU_AUX writes pre with ld = ldc, which cuBLASLt wants divisible by 8. */
    if (pre && act == TP_ACT_GELU_TANH && g->ldc % 8 != 0)
        return cuda_err(TP_ERR_NOT_SUPPORTED, "%s: pre-activation output needs ldc divisible by "
                        "8 for cuBLASLt, got ldc %lld", op, (long long)g->ldc);

    if (act == TP_ACT_GELU_TANH)
        epi = pre ? (bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX)
                  : (bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU);
    else
        epi = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    /* Column-major: D (n x m, ldc) = op(B)^T (n x k) * op(A)^T (k x m); cuBLASLt's A is our B,
     * stored column-major as bc x br with ldb, its B our A, ac x ar with lda. */
    opa = g->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    opb = g->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    ws = d->lt_ws ? (uint64_t)d->lt_ws_size : 0;
    al_a = address_alignment(g->b);
    al_b = address_alignment(g->a);
    al_c = address_alignment(g->c);

    if ((bs = cublasLtMatmulDescCreate(&desc, compute, CUDA_R_32F)) != CUBLAS_STATUS_SUCCESS) {
        desc = NULL;
        st = lt_err(bs, g, "cublasLtMatmulDescCreate");
        goto out;
    }
    if ((bs = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa,
                                             sizeof opa)) ||
        (bs = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb,
                                             sizeof opb)) ||
        (bs = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                             sizeof epi))) {
        st = lt_err(bs, g, "cublasLtMatmulDescSetAttribute");
        goto out;
    }
    /* The bias has D's type (f32, bf16 or f16), cuBLASLt's default for these types. */
    if (bias && (bs = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                     &bias, sizeof bias))) {
        st = lt_err(bs, g, "setting the bias pointer");
        goto out;
    }
    if (pre && act == TP_ACT_GELU_TANH) {
        int64_t ld = g->ldc;
        if ((bs = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                                                 &pre, sizeof pre)) ||
            (bs = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld,
                                                 sizeof ld))) {
            st = lt_err(bs, g, "setting the pre-activation (aux) output");
            goto out;
        }
    }
    if ((bs = cublasLtMatrixLayoutCreate(&la, type, (uint64_t)bc, (uint64_t)br, g->ldb))) {
        la = NULL;
        st = lt_err(bs, g, "cublasLtMatrixLayoutCreate (b)");
        goto out;
    }
    if ((bs = cublasLtMatrixLayoutCreate(&lb, type, (uint64_t)ac, (uint64_t)ar, g->lda))) {
        lb = NULL;
        st = lt_err(bs, g, "cublasLtMatrixLayoutCreate (a)");
        goto out;
    }
    if ((bs = cublasLtMatrixLayoutCreate(&lc, type, (uint64_t)g->n, (uint64_t)g->m, g->ldc))) {
        lc = NULL;
        st = lt_err(bs, g, "cublasLtMatrixLayoutCreate (c)");
        goto out;
    }
    if ((bs = cublasLtMatmulPreferenceCreate(&pref))) {
        pref = NULL;
        st = lt_err(bs, g, "cublasLtMatmulPreferenceCreate");
        goto out;
    }
    /* split-K partial sums in the compute type (f32), not the output type */
    uint32_t reduction = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    if ((bs = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                   &ws, sizeof ws)) ||
        (bs = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                                   &reduction, sizeof reduction)) ||
        (bs = cublasLtMatmulPreferenceSetAttribute(
             pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a)) ||
        (bs = cublasLtMatmulPreferenceSetAttribute(
             pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b)) ||
        (bs = cublasLtMatmulPreferenceSetAttribute(
             pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof al_c)) ||
        (bs = cublasLtMatmulPreferenceSetAttribute(
             pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof al_c))) {
        st = lt_err(bs, g, "cublasLtMatmulPreferenceSetAttribute");
        goto out;
    }
    /* The heuristic costs tens of microseconds of host time: ask it once per
     * shape, epilogue and alignment (refusals are not cached: rare). */
    cuda_lt_key key;
    memset(&key, 0, sizeof key);
    key.m = g->m, key.n = g->n, key.k = g->k, key.lda = g->lda, key.ldb = g->ldb;
    key.ldc = g->ldc, key.dtype = (int32_t)g->dtype, key.trans_a = g->trans_a;
    key.trans_b = g->trans_b, key.tf32 = compute == CUBLAS_COMPUTE_32F_FAST_TF32;
    key.epilogue = epi, key.align[0] = al_a, key.align[1] = al_b, key.align[2] = al_c;
    key.align[3] = bias ? address_alignment(bias) : 0;
    key.align[4] = pre ? address_alignment(pre) : 0;
    const cuda_lt_entry *hit = NULL;
    for (int i = 0; i < CUDA_LT_CACHE && !hit; i++)
        if (d->lt_cache[i].used && !memcmp(&d->lt_cache[i].key, &key, sizeof key))
            hit = &d->lt_cache[i];
    memset(&heur, 0, sizeof heur);
    if (hit) {
        heur.algo = hit->algo;
    } else {
        bs = cublasLtMatmulAlgoGetHeuristic(d->lt, desc, la, lb, lc, lc, pref, 1, &heur, &found);
        if (bs == CUBLAS_STATUS_SUCCESS && (found < 1 || heur.state != CUBLAS_STATUS_SUCCESS))
            bs = CUBLAS_STATUS_NOT_SUPPORTED; /* no algorithm for this epilogue and shape */
        if (bs) {
            st = lt_err(bs, g, "cublasLtMatmulAlgoGetHeuristic");
            goto out;
        }
        cuda_lt_entry *e = &d->lt_cache[d->lt_next++ % CUDA_LT_CACHE];
        e->used = 1;
        e->key = key;
        e->algo = heur.algo;
    }
    /* beta 0: C is not read; C and D are the same buffer and layout. */
    bs = cublasLtMatmul(d->lt, desc, &g->alpha, g->b, la, g->a, lb, &beta, g->c, lc, g->c, lc,
                        &heur.algo, d->lt_ws, (size_t)ws, d->stream);
    if (bs) {
        st = lt_err(bs, g, "cublasLtMatmul");
        goto out;
    }
    /* act NONE: the pre-activation is C itself. */
    if (pre && act == TP_ACT_NONE) {
        size_t pitch = (size_t)g->ldc * es;
        cudaError_t e = cudaMemcpy2DAsync(pre, pitch, g->c, pitch, (size_t)g->n * es,
                                          (size_t)g->m, cudaMemcpyDeviceToDevice, d->stream);
        if (e != cudaSuccess) {
            st = cuda_rt_err(e, op, "cudaMemcpy2DAsync of the pre-activation");
            goto out;
        }
    }
    st = TP_OK;
out:
    if (pref)
        cublasLtMatmulPreferenceDestroy(pref);
    if (lc)
        cublasLtMatrixLayoutDestroy(lc);
    if (lb)
        cublasLtMatrixLayoutDestroy(lb);
    if (la)
        cublasLtMatrixLayoutDestroy(la);
    if (desc)
        cublasLtMatmulDescDestroy(desc);
    return st;
}
