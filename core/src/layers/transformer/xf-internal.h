/* xf-internal.h — helpers shared by attention.c, norm.c and block.c (not installed). */
#ifndef TP_XF_INTERNAL_H
#define TP_XF_INTERNAL_H

#include "../layers-internal.h"

#define XF_ES sizeof(float)

/* see tp-transformer.h: hidden from the layer sources there for now */
void tp_attention_get_params(tp_attention *a, tp_attention_params *out);

/* C = op(A) op(B) + beta C, f32, batch 1; m/n/k == 0 handled (k == 0 with
 * beta 0 zeroes C). */
tp_status tp_xf_gemm(tp_device *dev, int ta, int tb, int64_t m, int64_t n, int64_t k, float beta,
                     const void *a, int64_t lda, const void *b, int64_t ldb, void *c, int64_t ldc);

/* Strided-batched variant (batch >= 1; strides in elements). */
tp_status tp_xf_gemm_batched(tp_device *dev, int ta, int tb, int64_t m, int64_t n, int64_t k,
                             float beta, const void *a, int64_t lda, int64_t sa, const void *b,
                             int64_t ldb, int64_t sb, void *c, int64_t ldc, int64_t sc,
                             int64_t batch);

/* Token rows of every rank's sequence-parallel shard: off[0..T]. */
void tp_xf_shard_offsets(int64_t tokens, int T, int64_t *off);

/* all_gatherv of token-row shards [off[i+1]-off[i], cols] into full. */
tp_status tp_xf_gather_rows(tp_comm *comm, const void *shard, void *full, const int64_t *off,
                            int64_t cols, size_t *counts);

/* Norm pieces the block uses to fuse its two norms' sequence-parallel
 * parameter-gradient all-reduces into one. */
int64_t tp_norm_contrib_len(const tp_norm *n); /* dim * (1 + bias) */
/* Backward writing this call's parameter-gradient contribution to contrib
 * (device, tp_norm_contrib_len floats, zeroed by the caller) instead of
 * accumulating it; dx as tp_norm_backward. No communication. */
tp_status tp_norm_backward_local(tp_norm *n, const tp_tensor *dy, tp_tensor *dx, void *contrib);
/* grads += contrib (already reduced over the ranks). */
tp_status tp_norm_add_contrib(tp_norm *n, const void *contrib);

#endif
