/* SPDX-License-Identifier: MIT */
/* xf-internal.h — helpers shared by attention.c, norm.c and block.c (not installed). */
#ifndef TP_XF_INTERNAL_H
#define TP_XF_INTERNAL_H

#include "../layers-internal.h"

#define XF_ES sizeof(float)

/* Norm pieces the block uses to fuse its two norms' sequence-parallel
 * parameter-gradient all-reduces into one. */
int64_t tpl_norm_contrib_len(const tp_norm *n); /* dim * (1 + bias) */
tp_dtype tpl_norm_dtype(const tp_norm *n);      /* of its parameters and contributions */
/* Backward writing this call's parameter-gradient contribution to contrib
 * (device, tpl_norm_contrib_len floats, zeroed by the caller) instead of
 * accumulating it; dx as tp_norm_backward. No communication. */
tp_status tpl_norm_backward_local(tp_norm *n, const tp_tensor *dy, tp_tensor *dx, void *contrib);
/* grads += contrib (already reduced over the ranks). */
tp_status tpl_norm_add_contrib(tp_norm *n, const void *contrib);

/* The block's overlap (tp_block_config.overlap) for its attention: with
 * sequence parallelism and overlap >= 2 the forward pipelines the all-
 * gather of x with the QKV GEMM and the out-projection GEMM with the
 * reduce-scatter of y in token chunks (bitwise the same results). */
void tpl_attention_set_overlap(tp_attention *a, int overlap);

/* Computes rows [r0, r1) of a [tokens, *] result (tpl_gather_rows_overlapped
 * and tpl_reduce_scatter_rows_overlapped). */
typedef tp_status (*tpl_rows_fn)(void *ctx, int64_t r0, int64_t r1);

/* Collective (in attention.c, which the block uses: not in common.c,
 * as tpl_overlap_chunks lives in linear.c, which uses common.c):
 * tpl_gather_rows pipelined with its consumer, for
 * sequence parallelism's all-gather -> column GEMM. The tokens off[T] are
 * cut into the chunks of tpl_overlap_chunks(off[T], overlap); every
 * chunk's rows, gathered from the shards that hold them (rank-major, so
 * they land at their rows of full), is one tp_iall_gatherv, all issued at
 * once; fn(ctx, r0, r1) runs on each chunk once it has arrived, while the
 * later ones are in flight. Same bytes in full as tpl_gather_rows; fn sees
 * chunks cut as the overlapped row forward's (TPL_CHUNK_ALIGN). */
tp_status tpl_gather_rows_overlapped(tp_comm *comm, tp_dtype dt, const void *shard, void *full,
                                     const int64_t *off, int64_t cols, size_t *counts, int overlap,
                                     tpl_rows_fn fn, void *ctx);
/* Collective: the mirror for row GEMM -> reduce-scatter: fn(ctx, r0, r1)
 * computes chunk [r0, r1) of the partial full [off[T], cols], whose
 * tp_ireduce_scatterv (TP_SUM) into the owners' shard rows is then in
 * flight while the next chunk is computed; returns after the last. Each
 * element is summed over the ranks as by one tp_reduce_scatterv where
 * the backend's order per element does not depend on where it sits
 * (docs/determinism.md). */
tp_status tpl_reduce_scatter_rows_overlapped(tp_comm *comm, tp_dtype dt, void *full, void *shard,
                                             const int64_t *off, int64_t cols, size_t *counts,
                                             int overlap, tpl_rows_fn fn, void *ctx);

#endif
