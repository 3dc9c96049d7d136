/* xf-common.c — GEMM wrappers and sequence-parallel row gathers for the transformer layers. */
#include "xf-internal.h"

tp_status tp_xf_gemm_batched(tp_device *dev, int ta, int tb, int64_t m, int64_t n, int64_t k,
                             float beta, const void *a, int64_t lda, int64_t sa, const void *b,
                             int64_t ldb, int64_t sb, void *c, int64_t ldc, int64_t sc,
                             int64_t batch)
{
    if (m == 0 || n == 0 || batch == 0)
        return TP_OK;
    if (k == 0) { /* C = beta C: nothing to do unless beta is 0 */
        if (beta != 0.0f)
            return TP_OK;
        tp_status st = TP_OK;
        for (int64_t bi = 0; bi < batch && st == TP_OK; bi++)
            for (int64_t r = 0; r < m && st == TP_OK; r++)
                st = tp_dev_memset(dev, (float *)c + bi * sc + r * ldc, 0, (size_t)n * XF_ES);
        return st;
    }
    tp_gemm_args g = {
        .struct_size = sizeof g, .dtype = TP_F32, .trans_a = ta, .trans_b = tb,
        .m = m, .n = n, .k = k, .alpha = 1.0f, .beta = beta,
        .a = a, .lda = lda, .stride_a = sa, .b = b, .ldb = ldb, .stride_b = sb,
        .c = c, .ldc = ldc, .stride_c = sc, .batch = batch,
    };
    return tp_dev_gemm(dev, &g);
}

tp_status tp_xf_gemm(tp_device *dev, int ta, int tb, int64_t m, int64_t n, int64_t k, float beta,
                     const void *a, int64_t lda, const void *b, int64_t ldb, void *c, int64_t ldc)
{
    return tp_xf_gemm_batched(dev, ta, tb, m, n, k, beta, a, lda, 0, b, ldb, 0, c, ldc, 0, 1);
}

void tp_xf_shard_offsets(int64_t tokens, int T, int64_t *off)
{
    for (int i = 0; i < T; i++) {
        int64_t lo, hi;
        tp_shard_range(tokens, T, i, &lo, &hi);
        off[i] = lo;
        off[i + 1] = hi;
    }
}

tp_status tp_xf_gather_rows(tp_comm *comm, const void *shard, void *full, const int64_t *off,
                            int64_t cols, size_t *counts)
{
    int T = tp_comm_size(comm);
    for (int i = 0; i < T; i++)
        counts[i] = (size_t)((off[i + 1] - off[i]) * cols);
    return tp_all_gatherv(comm, shard, full, counts, TP_F32);
}
