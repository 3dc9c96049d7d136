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

/* tp_norm_forward in two steps, for a pipeline that produces x's rows
 * chunk by chunk: _begin checks x and y and sizes the statistics (no
 * row is read); _rows normalizes rows [r0, r1) of the same x into y (the
 * same bits per row as one call). Backward may follow once every row has
 * been normalized. */
tp_status tpl_norm_forward_begin(tp_norm *n, const tp_tensor *x, tp_tensor *y);
tp_status tpl_norm_forward_rows(tp_norm *n, int64_t r0, int64_t r1);

/* tp_attention_forward that, without sequence parallelism and with
 * overlap >= 2, returns with the out-projection's chunked all-reduces
 * still in flight in *f (f->n = 0 otherwise: y is final). y's rows below
 * r1 are final after tpl_attention_forward_rows_done(a, f, r1), which
 * ends their chunks and adds the bias; tpl_inflight_end ends the rest on
 * every path, errors included. Without sequence parallelism, feed (may
 * be NULL) writes x's rows [r0, r1) just before the QKV GEMM reads them,
 * in the chunks of tpl_overlap_chunks. */
tp_status tpl_attention_forward_begin(tp_attention *a, const tp_tensor *x, int64_t batch,
                                      int64_t seq, tp_tensor *y, tpl_inflight *f, tpl_rows_fn feed,
                                      void *ctx);
tp_status tpl_attention_forward_rows_done(tp_attention *a, tpl_inflight *f, int64_t r1);

/* Blocks chained in a model (the GPT's forward), when tpl_block_chains:
 * tp_block_forward where in (may be NULL) makes x's rows [r0, r1) final
 * just before the block reads them (chunk by chunk), and out (may be
 * NULL) receives the MLP's all-reduces still in flight (out->n = 0: y is
 * final); y's rows below r1 are final after tpl_block_forward_rows_done
 * (fc2's bias and the residual added to them). On an error nothing is
 * left in flight in out. */
bool tpl_block_chains(const tp_block *b); /* no sequence parallelism, overlap >= 2 */
tp_status tpl_block_forward_chained(tp_block *b, const tp_tensor *x, int64_t batch, int64_t seq,
                                    tp_tensor *y, tpl_rows_fn in, void *in_ctx, tpl_inflight *out);
tp_status tpl_block_forward_rows_done(tp_block *b, tpl_inflight *f, int64_t r1);

#endif
