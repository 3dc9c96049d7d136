/* SPDX-License-Identifier: MIT */
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

/* The cuBLAS storage and compute types of dtype `dt` (f32, bf16 or f16;
 * TF32 for f32 when the rank asked for it) and its element size. */
static tp_status gemm_types(const cuda_dev *d, const char *op, tp_dtype dt, cudaDataType_t *type,
                            cublasComputeType_t *compute, size_t *es)
{
    tp_status st = cuda_check_float_dt(dt, op);

    if (st != TP_OK)
        return st;
    *type = dt == TP_F32 ? CUDA_R_32F : dt == TP_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    *es = dt == TP_F32 ? 4 : 2;
    *compute = dt == TP_F32 && d->tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    return TP_OK;
}

/* cuBLAS takes int sizes. */
static tp_status check_int_sizes(const tp_gemm_args *g)
{
    if (g->m > INT32_MAX || g->n > INT32_MAX || g->k > INT32_MAX || g->lda > INT32_MAX ||
        g->ldb > INT32_MAX || g->ldc > INT32_MAX || g->batch > INT32_MAX)
        return cuda_err(TP_ERR_INVALID_ARG,
                        "gemm: m, n, k, batch and leading dimensions must "
                        "be <= %d for cuBLAS (got m %lld, n %lld, k %lld, batch %lld)",
                        INT32_MAX, (long long)g->m, (long long)g->n, (long long)g->k,
                        (long long)g->batch);
    return TP_OK;
}

/* Every check of gemm, in order; sets the cuBLAS types. */
static tp_status gemm_check(cuda_dev *d, const tp_gemm_args *g, cudaDataType_t *type,
                            cublasComputeType_t *compute)
{
    const char *op = "gemm";
    size_t es;
    tp_status st;

    if ((st = cuda_check_dev(d, op)) || (st = tp_util_gemm_check_args(cuda_err, op, g)) ||
        (st = gemm_types(d, op, g->dtype, type, compute, &es)) ||
        (st = tp_util_gemm_check_mnk(cuda_err, op, g)) ||
        (st = tp_util_gemm_check_batch(cuda_err, op, g)) || (st = check_int_sizes(g)) ||
        (st = tp_util_gemm_check_operands(cuda_err, op, g)) ||
        (st = tp_util_gemm_check_c_disjoint(cuda_err, op, g)))
        return st;
    return TP_OK;
}

tp_status cuda_gemm(void *dev, const tp_gemm_args *g)
{
    cuda_dev *d = dev;
    tp_status st;
    cudaDataType_t type;
    cublasComputeType_t compute;
    cublasStatus_t bs;

    if ((st = gemm_check(d, g, &type, &compute)))
        return st;
    if (g->m == 0 || g->n == 0)
        return TP_OK;
    if (g->k == 0) /* nothing to multiply: C = beta C, and beta 0 writes zeros */
        return cuda_gemm_scale(d, g->dtype, g->m, g->n, g->beta, g->c, g->ldc, g->stride_c,
                               g->batch);

    bs = cublasGemmStridedBatchedEx(
        d->blas, g->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, g->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
        (int)g->n, (int)g->m, (int)g->k, &g->alpha, g->b, type, (int)g->ldb, (long long)g->stride_b,
        g->a, type, (int)g->lda, (long long)g->stride_a, &g->beta, g->c, type, (int)g->ldc,
        (long long)g->stride_c, (int)g->batch, compute, CUBLAS_GEMM_DEFAULT);
    if (bs != CUBLAS_STATUS_SUCCESS)
        return cuda_err(TP_ERR_DEVICE,
                        "gemm: cublasGemmStridedBatchedEx (%s, m %lld n %lld "
                        "k %lld batch %lld) failed: %s",
                        tp_util_dtype_name(g->dtype), (long long)g->m, (long long)g->n,
                        (long long)g->k, (long long)g->batch, cublasGetStatusString(bs));
    return TP_OK;
}

/* ------------------------------------------------------- gemm_bias_act */

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
    int refusal =
        bs != CUBLAS_STATUS_ALLOC_FAILED &&
        (!running || bs == CUBLAS_STATUS_INVALID_VALUE || bs == CUBLAS_STATUS_NOT_SUPPORTED);
    return cuda_err(bs == CUBLAS_STATUS_ALLOC_FAILED ? TP_ERR_NO_MEMORY
                    : refusal                        ? TP_ERR_NOT_SUPPORTED
                                                     : TP_ERR_DEVICE,
                    "gemm_bias_act: %s (%s, m %lld n %lld k %lld, ta %d tb %d, lda %lld ldb %lld "
                    "ldc %lld) failed: %s",
                    what, tp_util_dtype_name(g->dtype), (long long)g->m, (long long)g->n,
                    (long long)g->k, g->trans_a, g->trans_b, (long long)g->lda, (long long)g->ldb,
                    (long long)g->ldc, cublasGetStatusString(bs));
}

/* gemm_bias_act's argument errors, in order; sets the cuBLAS types. */
static tp_status bias_act_check(cuda_dev *d, const tp_gemm_args *g, tp_act act,
                                cudaDataType_t *type, cublasComputeType_t *compute, size_t *es)
{
    const char *op = "gemm_bias_act";
    tp_status st;

    if ((st = cuda_check_dev(d, op)) || (st = tp_util_gemm_check_args(cuda_err, op, g)) ||
        (st = gemm_types(d, op, g->dtype, type, compute, es)))
        return st;
    if ((unsigned)act >= TP_ACT_COUNT_)
        return cuda_err(TP_ERR_INVALID_ARG,
                        "%s: act %d is not a tp_act (TP_ACT_NONE, "
                        "TP_ACT_GELU or TP_ACT_GELU_TANH)",
                        op, (int)act);
    if ((st = tp_util_gemm_check_mnk(cuda_err, op, g)) ||
        (st = tp_util_gemm_check_operands(cuda_err, op, g)))
        return st;
    return TP_OK;
}

/* Can cuBLASLt fuse this call (m, n > 0)? What is not fused is
 * TP_ERR_NOT_SUPPORTED: the core composes it from gemm, bias_add and gelu. */
static tp_status bias_act_fusable(const tp_gemm_args *g, tp_act act, const void *pre)
{
    const char *op = "gemm_bias_act";

    if (pre && pre == g->c)
        return cuda_err(TP_ERR_INVALID_ARG,
                        "%s: pre and c are the same buffer; pass NULL for "
                        "pre when the pre-activation is not needed",
                        op);
    if (g->batch != 1 || g->beta != 0.0f)
        return cuda_err(TP_ERR_NOT_SUPPORTED,
                        "%s: batch %lld, beta %g: only batch 1 and beta 0 "
                        "are fused",
                        op, (long long)g->batch, (double)g->beta);
    if (act == TP_ACT_GELU)
        return cuda_err(TP_ERR_NOT_SUPPORTED,
                        "%s: the exact (erf) GeLU is not fused: cuBLASLt's "
                        "GELU epilogue is the tanh approximation",
                        op);
    if (act == TP_ACT_GELU_TANH && g->dtype == TP_F32)
        return cuda_err(TP_ERR_NOT_SUPPORTED,
                        "%s: GeLU is fused for bf16/f16 only: cuBLASLt's "
                        "epilogue is not f32-accurate",
                        op);
    if (g->k == 0)
        return cuda_err(TP_ERR_NOT_SUPPORTED, "%s: k = 0 is not fused", op);
    /* GELU_AUX writes pre with ld = ldc, which cuBLASLt wants divisible by 8. */
    if (pre && act == TP_ACT_GELU_TANH && g->ldc % 8 != 0)
        return cuda_err(TP_ERR_NOT_SUPPORTED,
                        "%s: pre-activation output needs ldc divisible by "
                        "8 for cuBLASLt, got ldc %lld",
                        op, (long long)g->ldc);
    return TP_OK;
}

/* The cuBLASLt objects of one gemm_bias_act call (NULL: not created). */
typedef struct lt_call {
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulPreference_t pref;
} lt_call;

static void lt_call_free(lt_call *c)
{
    if (c->pref)
        cublasLtMatmulPreferenceDestroy(c->pref);
    if (c->lc)
        cublasLtMatrixLayoutDestroy(c->lc);
    if (c->lb)
        cublasLtMatrixLayoutDestroy(c->lb);
    if (c->la)
        cublasLtMatrixLayoutDestroy(c->la);
    if (c->desc)
        cublasLtMatmulDescDestroy(c->desc);
}

static uint32_t lt_epilogue(const void *bias, tp_act act, const void *pre)
{
    if (act == TP_ACT_GELU_TANH)
        return pre ? (bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX)
                   : (bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU);
    return bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
}

/* The matmul descriptor: transposes, epilogue, bias and the aux (pre)
 * output. Column-major: D (n x m, ldc) = op(B)^T (n x k) * op(A)^T (k x m),
 * so cuBLASLt's A is our B and its B our A. */
static tp_status lt_make_desc(lt_call *c, const tp_gemm_args *g, cublasComputeType_t compute,
                              uint32_t epi, const void *bias, tp_act act, void *pre)
{
    int32_t opa = g->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    int32_t opb = g->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasStatus_t bs;

    if ((bs = cublasLtMatmulDescCreate(&c->desc, compute, CUDA_R_32F)) != CUBLAS_STATUS_SUCCESS) {
        c->desc = NULL;
        return lt_err(bs, g, "cublasLtMatmulDescCreate");
    }
    if ((bs = cublasLtMatmulDescSetAttribute(c->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa,
                                             sizeof opa)) ||
        (bs = cublasLtMatmulDescSetAttribute(c->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb,
                                             sizeof opb)) ||
        (bs = cublasLtMatmulDescSetAttribute(c->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                             sizeof epi)))
        return lt_err(bs, g, "cublasLtMatmulDescSetAttribute");
    /* The bias has D's type (f32, bf16 or f16), cuBLASLt's default for these types. */
    if (bias && (bs = cublasLtMatmulDescSetAttribute(c->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                     &bias, sizeof bias)))
        return lt_err(bs, g, "setting the bias pointer");
    if (pre && act == TP_ACT_GELU_TANH) {
        int64_t ld = g->ldc;
        if ((bs = cublasLtMatmulDescSetAttribute(c->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                                                 &pre, sizeof pre)) ||
            (bs = cublasLtMatmulDescSetAttribute(c->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld,
                                                 sizeof ld)))
            return lt_err(bs, g, "setting the pre-activation (aux) output");
    }
    return TP_OK;
}

/* One column-major layout (rows x cols, ld); *l stays NULL on failure. */
static tp_status lt_make_layout(cublasLtMatrixLayout_t *l, const tp_gemm_args *g,
                                cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld,
                                const char *what)
{
    cublasStatus_t bs = cublasLtMatrixLayoutCreate(l, type, (uint64_t)rows, (uint64_t)cols, ld);

    if (bs) {
        *l = NULL;
        return lt_err(bs, g, what);
    }
    return TP_OK;
}

/* cuBLASLt's A is our B, stored column-major as bc x br with ldb; its B
 * our A, ac x ar with lda; D = C, n x m with ldc. */
static tp_status lt_make_layouts(lt_call *c, const tp_gemm_args *g, cudaDataType_t type)
{
    int64_t ar = g->trans_a ? g->k : g->m, ac = g->trans_a ? g->m : g->k;
    int64_t br = g->trans_b ? g->n : g->k, bc = g->trans_b ? g->k : g->n;
    tp_status st;

    if ((st = lt_make_layout(&c->la, g, type, bc, br, g->ldb, "cublasLtMatrixLayoutCreate (b)")) ||
        (st = lt_make_layout(&c->lb, g, type, ac, ar, g->lda, "cublasLtMatrixLayoutCreate (a)")) ||
        (st =
             lt_make_layout(&c->lc, g, type, g->n, g->m, g->ldc, "cublasLtMatrixLayoutCreate (c)")))
        return st;
    return TP_OK;
}

/* The search preference: workspace, f32 split-K sums, and the alignments
 * al[] of cuBLASLt's A, B and C (= D). */
static tp_status lt_make_pref(lt_call *c, const tp_gemm_args *g, uint64_t ws, const uint32_t *al)
{
    /* split-K partial sums in the compute type (f32), not the output type */
    uint32_t reduction = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    cublasStatus_t bs;

    if ((bs = cublasLtMatmulPreferenceCreate(&c->pref))) {
        c->pref = NULL;
        return lt_err(bs, g, "cublasLtMatmulPreferenceCreate");
    }
    if ((bs = cublasLtMatmulPreferenceSetAttribute(
             c->pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws)) ||
        (bs = cublasLtMatmulPreferenceSetAttribute(
             c->pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &reduction, sizeof reduction)) ||
        (bs = cublasLtMatmulPreferenceSetAttribute(
             c->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al[0], sizeof al[0])) ||
        (bs = cublasLtMatmulPreferenceSetAttribute(
             c->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al[1], sizeof al[1])) ||
        (bs = cublasLtMatmulPreferenceSetAttribute(
             c->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al[2], sizeof al[2])) ||
        (bs = cublasLtMatmulPreferenceSetAttribute(
             c->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al[2], sizeof al[2])))
        return lt_err(bs, g, "cublasLtMatmulPreferenceSetAttribute");
    return TP_OK;
}

/* The algorithm for this shape, epilogue and alignments. The heuristic
 * costs tens of microseconds of host time: ask it once per key, and keep
 * its answer in the rank's cache (refusals are not cached: rare). */
static tp_status lt_pick_algo(cuda_dev *d, const lt_call *c, const tp_gemm_args *g,
                              const cuda_lt_key *key, cublasLtMatmulHeuristicResult_t *heur)
{
    const cuda_lt_entry *hit = NULL;
    int found = 0;
    cublasStatus_t bs;

    for (int i = 0; i < CUDA_LT_CACHE && !hit; i++)
        if (d->lt_cache[i].used && !memcmp(&d->lt_cache[i].key, key, sizeof *key))
            hit = &d->lt_cache[i];
    memset(heur, 0, sizeof *heur);
    if (hit) {
        heur->algo = hit->algo;
        return TP_OK;
    }
    bs = cublasLtMatmulAlgoGetHeuristic(d->lt, c->desc, c->la, c->lb, c->lc, c->lc, c->pref, 1,
                                        heur, &found);
    if (bs == CUBLAS_STATUS_SUCCESS && (found < 1 || heur->state != CUBLAS_STATUS_SUCCESS))
        bs = CUBLAS_STATUS_NOT_SUPPORTED; /* no algorithm for this epilogue and shape */
    if (bs)
        return lt_err(bs, g, "cublasLtMatmulAlgoGetHeuristic");
    cuda_lt_entry *e = &d->lt_cache[d->lt_next++ % CUDA_LT_CACHE];
    e->used = 1;
    e->key = *key;
    e->algo = heur->algo;
    return TP_OK;
}

/* Run the matmul; with act NONE the pre-activation is C itself, copied. */
static tp_status lt_run(cuda_dev *d, const lt_call *c, const tp_gemm_args *g,
                        const cublasLtMatmulAlgo_t *algo, uint64_t ws, tp_act act, void *pre,
                        size_t es)
{
    float beta = 0.0f;
    cublasStatus_t bs;

    /* beta 0: C is not read; C and D are the same buffer and layout. */
    bs = cublasLtMatmul(d->lt, c->desc, &g->alpha, g->b, c->la, g->a, c->lb, &beta, g->c, c->lc,
                        g->c, c->lc, algo, d->lt_ws, (size_t)ws, d->stream);
    if (bs)
        return lt_err(bs, g, "cublasLtMatmul");
    if (pre && act == TP_ACT_NONE) {
        size_t pitch = (size_t)g->ldc * es;
        cudaError_t e = cudaMemcpy2DAsync(pre, pitch, g->c, pitch, (size_t)g->n * es, (size_t)g->m,
                                          cudaMemcpyDeviceToDevice, d->stream);
        if (e != cudaSuccess)
            return cuda_rt_err(e, "gemm_bias_act", "cudaMemcpy2DAsync of the pre-activation");
    }
    return TP_OK;
}

tp_status cuda_gemm_bias_act(void *dev, const tp_gemm_args *g, const void *bias, tp_act act,
                             void *pre)
{
    cuda_dev *d = dev;
    tp_status st;
    cudaDataType_t type;
    cublasComputeType_t compute;
    size_t es;
    lt_call c = {NULL, NULL, NULL, NULL, NULL};
    cublasLtMatmulHeuristicResult_t heur;
    cuda_lt_key key;
    uint32_t epi, al[3];
    uint64_t ws;

    if ((st = bias_act_check(d, g, act, &type, &compute, &es)))
        return st;
    if (g->m == 0 || g->n == 0)
        return TP_OK;
    if ((st = bias_act_fusable(g, act, pre)))
        return st;

    epi = lt_epilogue(bias, act, pre);
    ws = d->lt_ws ? (uint64_t)d->lt_ws_size : 0;
    al[0] = address_alignment(g->b); /* cuBLASLt's A, B and C: our B, A and C */
    al[1] = address_alignment(g->a);
    al[2] = address_alignment(g->c);
    if ((st = lt_make_desc(&c, g, compute, epi, bias, act, pre)) ||
        (st = lt_make_layouts(&c, g, type)) || (st = lt_make_pref(&c, g, ws, al)))
        goto out;
    memset(&key, 0, sizeof key);
    key.m = g->m, key.n = g->n, key.k = g->k, key.lda = g->lda, key.ldb = g->ldb;
    key.ldc = g->ldc, key.dtype = (int32_t)g->dtype, key.trans_a = g->trans_a;
    key.trans_b = g->trans_b, key.tf32 = compute == CUBLAS_COMPUTE_32F_FAST_TF32;
    key.epilogue = epi, key.align[0] = al[0], key.align[1] = al[1], key.align[2] = al[2];
    key.align[3] = bias ? address_alignment(bias) : 0;
    key.align[4] = pre ? address_alignment(pre) : 0;
    if ((st = lt_pick_algo(d, &c, g, &key, &heur)) == TP_OK)
        st = lt_run(d, &c, g, &heur.algo, ws, act, pre, es);
out:
    lt_call_free(&c);
    return st;
}
