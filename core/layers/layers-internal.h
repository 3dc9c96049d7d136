/* SPDX-License-Identifier: MIT */
/* layers-internal.h — helpers shared by the layer families (not installed). */
#ifndef TP_LAYERS_INTERNAL_H
#define TP_LAYERS_INTERNAL_H

#include <tp/tp-transformer.h>

#include "tp-try.h"

/* A grow-only device scratch buffer owned by one layer, counted in the
 * device's memory stats as workspace, or as activations when `keep` (what
 * forward fills for backward). */
typedef struct tpl_ws {
    tp_device *dev;
    void *ptr;
    size_t bytes;
    bool keep;
} tpl_ws;

tp_status tpl_ws_reserve(tpl_ws *ws, size_t bytes, const char *who);
void tpl_ws_release(tpl_ws *ws);

/* tp_tensor_alloc counted as `kind` (moved from TP_USE_OTHER), and its
 * release; tpl_release of an unallocated tensor is a no-op. */
tp_status tpl_alloc(tp_device *dev, tp_mem_use kind, tp_dtype dt, int ndim, const int64_t *shape,
                    tp_tensor *out);
void tpl_release(tp_tensor *t, tp_mem_use kind);

/* Check that t is a usable activation of dtype dt (the layer's) on dev
 * with 2..4 dims. `who` names the layer, `what` the tensor ("x"). Writes
 * the token count (product of the leading dims). */
tp_status tpl_check_act(const char *who, const char *what, const tp_tensor *t, tp_device *dev,
                        tp_dtype dt, int64_t *tokens);

/* Prepare output `out` (dtype dt) to hold like's leading dims and last dim
 * `cols`: allocate it if it is zeroed (data NULL, ndim 0), else check it.
 * `hint` is appended to a last-dimension mismatch message (may be ""). */
tp_status tpl_prepare_out(const char *who, const char *what, tp_tensor *out, const tp_tensor *like,
                          tp_device *dev, tp_dtype dt, int64_t cols, const char *hint);

/* TP_OK when dt is a dtype a layer can store its weights and activations
 * in (f32, bf16, f16), else TP_ERR_INVALID_ARG naming who. */
tp_status tpl_check_dtype(const char *who, tp_dtype dt);

/* Upload n f32 host values into device memory of dtype dt (converted on
 * the host, round to nearest even), and download back to f32. */
tp_status tpl_upload_f32(tp_device *dev, tp_dtype dt, void *dst, const float *src, size_t n);
tp_status tpl_download_f32(tp_device *dev, tp_dtype dt, float *dst, const void *src, size_t n);

/* *n = a * b for sizes a, b >= 0, or TP_ERR_INVALID_ARG ("who: what
 * a x b overflows") when the product, or its f32 bytes, does not fit; for
 * sizes computed from configurations and shapes before any allocation. */
tp_status tpl_mul(const char *who, const char *what, int64_t a, int64_t b, int64_t *n);

/* Copy block [r0,r1) x [c0,c1) of a full host matrix with `cols` columns
 * to out (row pitch c1 - c0): a rank's shard of a user-supplied weight. */
void tpl_host_block(const float *full, int64_t cols, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                    float *out);

/* A 2-D view [rows, cols] of t's memory. */
tp_tensor tpl_view2(const tp_tensor *t, int64_t rows, int64_t cols);
/* A 2-D view [rows, cols] of dtype dt of device memory p (e.g. a tpl_ws). */
tp_tensor tpl_view2p(tp_device *dev, tp_dtype dt, void *p, int64_t rows, int64_t cols);

/* C = op(A) op(B) + beta C, all of dtype dt (f32 accumulation in the
 * device), alpha 1, batch 1; m/n/k == 0 handled (k == 0 with beta 0 zeroes
 * C). */
tp_status tpl_gemm(tp_device *dev, tp_dtype dt, int ta, int tb, int64_t m, int64_t n, int64_t k,
                   float beta, const void *a, int64_t lda, const void *b, int64_t ldb, void *c,
                   int64_t ldc);
/* Strided-batched variant (strides in elements). */
tp_status tpl_gemm_batched(tp_device *dev, tp_dtype dt, int ta, int tb, int64_t m, int64_t n,
                           int64_t k, float beta, const void *a, int64_t lda, int64_t sa,
                           const void *b, int64_t ldb, int64_t sb, void *c, int64_t ldc, int64_t sc,
                           int64_t batch);

/* Every rank's shard of n split over T (tp_shard_range): off[0..T]. */
void tpl_shard_offsets(int64_t n, int T, int64_t *off);

/* counts[i] = (off[i+1] - off[i]) * cols for the T row shards; returns counts. */
size_t *tpl_row_counts(const int64_t *off, int T, int64_t cols, size_t *counts);

/* Collective: all_gatherv of row shards [off[i+1]-off[i], cols] of dtype
 * dt into full [off[T], cols]. counts: T scratch entries. */
tp_status tpl_gather_rows(tp_comm *comm, tp_dtype dt, const void *shard, void *full,
                          const int64_t *off, int64_t cols, size_t *counts);

/* Collective: every rank holds a [rows, part_i] block of dtype dt (part_i
 * from the offsets off[0..T]); assemble the full [rows, off[T]] matrix in
 * dst on every rank. tmp must hold rows*off[T] elements. Counts one
 * all_gather. */
tp_status tpl_gather_cols(tp_comm *comm, tp_dtype dt, const void *src, void *dst, void *tmp,
                          int64_t rows, const int64_t *off, size_t *counts);

/* A layer config's overlap: 0..TP_OVERLAP_MAX, else TP_ERR_INVALID_ARG. */
tp_status tpl_check_overlap(const char *who, int overlap);

/* "RowParallelLinear 'fc2' (rank 1 of T=4)" style label; caller frees. */
char *tpl_label(const char *kind, const char *name, tp_comm *comm);

/* Width of a linear layer's shard of its split dimension (hi - lo). */
int64_t tpl_linear_local_width(const tp_linear *l);

/* tp_linear_forward for a column layer without gather_output, with its
 * bias and `act` fused into the GEMM (tp_dev_gemm_bias_act): y =
 * act(x W + b), and pre [tokens, local width] (layer dtype, may be NULL
 * for TP_ACT_NONE) gets x W + b for the activation's backward. Saves x for
 * tp_linear_backward exactly as tp_linear_forward does. */
tp_status tpl_linear_forward_act(tp_linear *l, const tp_tensor *x, tp_tensor *y, void *pre,
                                 tp_act act);

/* The pieces of a linear layer for pipelines that cut its forward and
 * backward into token chunks (tp_mlp's overlapped path), with no
 * communication and no checks (the caller's):
 * - forward_rows: the local GEMM of token rows [r0, r1): a column layer's
 *   y rows = act(x rows W_local + b) (pre rows as in _forward_act; no
 *   gather_output), a row layer's partial y rows = x_local rows W_local;
 * - bias_add: a row layer's bias on y [tokens, out], after the sum;
 * - set_saved: keep x (not copied) for backward as tp_linear_forward does;
 * - input_grad_rows: dx rows [r0, r1) = dy rows W_local^T (a column
 *   layer's partial [rows, in] without gather_output, a row layer's
 *   [rows, local width] with input_is_parallel);
 * - weight_grad: dW += x_saved^T dy and db += colsum(dy) over the saved
 *   tokens (allocating zeroed gradients on first use).
 * Row for row the same GEMMs as the whole-layer calls, so with chunk
 * boundaries from tpl_overlap_chunks the same bits. */
tp_status tpl_linear_forward_rows(tp_linear *l, const void *x, void *y, int64_t r0, int64_t r1,
                                  void *pre, tp_act act);
tp_status tpl_linear_bias_add(tp_linear *l, void *y, int64_t tokens);
void tpl_linear_set_saved(tp_linear *l, const tp_tensor *x, int64_t tokens);
tp_status tpl_linear_input_grad_rows(tp_linear *l, const void *dy, void *dx, int64_t r0,
                                     int64_t r1);
tp_status tpl_linear_weight_grad(tp_linear *l, const void *dy);

/* Token chunks of an overlapped row-parallel forward: up to `overlap`
 * chunks [off[i], off[i+1]) of `tokens` rows (off: overlap + 1 entries),
 * about equal, every boundary but the last a multiple of TPL_CHUNK_ALIGN
 * rows; returns the chunk count (0 for no tokens). The alignment keeps
 * each row in the same BLAS micro-tile as in one GEMM of all rows:
 * OpenBLAS's sgemm rounds a row differently in a full tile of its
 * unroll (12 on AVX2 sgemm, 4..16 elsewhere) than in an edge tile, so
 * chunks cut at other rows give other bits (docs/determinism.md). */
#define TPL_CHUNK_ALIGN 48
int tpl_overlap_chunks(int64_t tokens, int overlap, int64_t *off);
/* End every request of req[0..n) (each exactly once); the first error
 * among them and st. */
tp_status tpl_wait_all(tp_request **req, int n, tp_status st);
/* Computes rows [r0, r1) of a [tokens, *] result (the pipelines below). */
typedef tp_status (*tpl_rows_fn)(void *ctx, int64_t r0, int64_t r1);

/* Collective: tpl_gather_rows pipelined with its consumer, for
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
/* Collective: a row-parallel GEMM -> all-reduce pipelined by token chunks
 * (tensor parallelism without SP): fn(ctx, r0, r1) computes rows [r0, r1)
 * of the partial buf [tokens, cols], whose tp_iall_reduce (TP_SUM, in
 * place) is in flight while the next chunk is computed; tail(ctx) (may be
 * NULL) runs once every chunk is issued, before the waits (the weight
 * gradients of a backward). Each element gets the all-reduce of the same
 * values as one tp_all_reduce of buf (docs/determinism.md). */
typedef tp_status (*tpl_tail_fn)(void *ctx);
tp_status tpl_all_reduce_rows_overlapped(tp_comm *comm, tp_dtype dt, void *buf, int64_t tokens,
                                         int64_t cols, int overlap, tpl_rows_fn fn,
                                         tpl_tail_fn tail, void *ctx);

/* A pipeline stage's chunks whose collectives are still in flight, for
 * a next stage that consumes its rows chunk by chunk (the block's
 * attention -> MLP forward). */
typedef struct tpl_inflight {
    int n, done; /* chunks; those ended (in order) */
    int64_t off[TP_OVERLAP_MAX + 1];
    tp_request *req[TP_OVERLAP_MAX];
} tpl_inflight;
/* Collective: tpl_all_reduce_rows_overlapped without tail that returns
 * with the chunks' all-reduces in flight in *out; rows of buf are final
 * only once tpl_inflight_wait_rows has ended their chunk. On an error
 * every request issued has been ended and out->n is 0. */
tp_status tpl_all_reduce_rows_begin(tp_comm *comm, tp_dtype dt, void *buf, int64_t tokens,
                                    int64_t cols, int overlap, tpl_rows_fn fn, void *ctx,
                                    tpl_inflight *out);
/* Ends, in order, the chunks of f that hold rows below r1; their rows
 * [*lo, *hi) are then final (empty when none was left); the first error. */
tp_status tpl_inflight_wait_rows(tpl_inflight *f, int64_t r1, int64_t *lo, int64_t *hi);
/* No chunk in flight (a stage that finished everything itself). */
void tpl_inflight_clear(tpl_inflight *f);
/* Ends every chunk of f not yet ended: st, else the first error among them. */
tp_status tpl_inflight_end(tpl_inflight *f, tp_status st);

/* tp_mlp_forward where feed(ctx, r0, r1) writes x's rows [r0, r1) just
 * before the MLP first reads them (with overlap >= 2 chunk by chunk,
 * otherwise once for all rows): x's later rows need not be ready yet.
 * With keep (may be NULL) and overlap >= 2 it returns with fc2's chunk
 * all-reduces in flight there (keep->n = 0 otherwise: y is final); y's
 * rows below r1 are final after tpl_mlp_forward_rows_done(m, keep, y, r1,
 * &lo, &hi), which ends their chunks and adds fc2's bias to the rows
 * [lo, hi) this call made final. */
tp_status tpl_mlp_forward_fed(tp_mlp *m, const tp_tensor *x, tp_tensor *y, tpl_rows_fn feed,
                              void *ctx, tpl_inflight *keep);
tp_status tpl_mlp_forward_rows_done(tp_mlp *m, tpl_inflight *f, void *y, int64_t r1, int64_t *lo,
                                    int64_t *hi);

/* After a sequence-parallel tp_embedding_backward: the all-gathered dy
 * [n, dim] of every token (valid until the next backward); NULL without
 * sequence parallelism. */
const void *tpl_embedding_gathered_dy(const tp_embedding *e);

/* dp.c: close d's open round, if any, after a failed backward: the
 * started buckets are waited for and their results dropped. */
void tpl_dp_abort(tp_dp *d);
/* Collective over the layer's TP group: every holder of a KV head shared
 * across ranks takes its first holder's gradient bits (tp_gpt_finalize_grads). */
tp_status tpl_attention_finalize_grads(tp_attention *a);

#endif
