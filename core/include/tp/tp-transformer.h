/* SPDX-License-Identifier: MIT */
/*
 * tp-transformer.h — attention, norms and the transformer block (libtp-layers).
 *
 * Conventions follow tp-layers.h: activations of the layer's dtype (f32,
 * bf16 or f16; f32 accumulation) on the comm's device,
 * y = x W with W [in, out] row-major, outputs may be passed zeroed to be
 * allocated, forward saves views (not copies) of its inputs, parameter
 * gradients accumulate until *_zero_grad, dx is overwritten and may be
 * NULL where stated. Forward counts under TP_PHASE_FORWARD, backward under
 * TP_PHASE_BACKWARD.
 *
 * Activations are [tokens, hidden] with tokens = batch * seq, batch-major
 * (row t is sequence position t % seq of batch element t / seq); 3-D
 * [batch, seq, hidden] tensors are accepted too.
 *
 * Sequence parallelism (sequence_parallel = true): between TP regions each
 * rank holds only its shard of the token rows, rows [lo, hi) =
 * tp_shard_range(batch * seq, T, rank) (uneven shards allowed). For
 * batch = 1 this is a split of the sequence; for batch > 1 it is a split of
 * the flattened token dimension, which is the same thing for every op that
 * runs on a shard (norms, residual adds: all are per token). A TP region
 * all-gathers its input before the column-parallel GEMM and reduce-scatters
 * after the row-parallel GEMM instead of all-reducing: the same bytes, and
 * activation memory outside the regions is 1/T. The gathered input is not
 * kept for backward (as in Megatron): backward all-gathers it again from the
 * rank's shard, which forward keeps (a view: x must stay alive and unchanged
 * until backward), into workspace, before the weight-gradient GEMM. So
 * every activation kept for backward is 1/T of the unsplit layer's (token
 * shards, or split by heads or ffn), at one all-gather more per region per
 * backward: the same bytes as forward's, so the results are bitwise those
 * of keeping it.
 */
#ifndef TP_TRANSFORMER_H
#define TP_TRANSFORMER_H

#include <tp/tp-layers.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------ ParallelAttention */

/*
 * ParallelAttention (Megatron's name): fused QKV column-parallel linear with
 * the heads split across ranks, causal scaled dot-product attention per
 * head, out-projection row-parallel (input_is_parallel). One all-reduce
 * forward (out-projection), one backward (input gradient of the QKV linear).
 *
 * Heads: rank r owns query heads [q_lo, q_hi) = tp_shard_range(heads, T, r),
 * so heads need not be divisible by T: ranks hold ceil(heads/T) or
 * floor(heads/T) heads (heads >= T). Grouped-query / multi-query attention:
 * kv_heads divides heads, query head h uses KV head h / (heads / kv_heads).
 * Each rank holds the KV heads its query heads use, [q_lo / g, (q_hi-1) / g
 * + 1) with g = heads / kv_heads: where a group of g query heads straddles
 * a shard boundary (MQA, kv_heads < T, or uneven shards) that KV head is
 * replicated on every rank holding one of its query heads. The gradient of
 * a replicated KV weight is the sum of the partial gradients of the ranks
 * sharing it (each rank's part covers its own query heads; the others add
 * exact zeros). Without sequence parallelism those partial sums ride in
 * the input gradient's all-reduce (appended to its payload), so the count
 * stays one per backward; with sequence parallelism they take one
 * all-reduce of their own after dx's reduce-scatter (packing them into
 * each holder's reduce-scatter block would let a backend sum different
 * blocks in different orders, and the holders must end with the same
 * bits). Either way the sum has the communicator's fixed order and every
 * holder ends with the same, complete gradient bits.
 *
 * Master weights (the same full model for every T):
 *   qkv weight [hidden, (heads + 2*kv_heads) * head_dim] = (seed, tensor_id),
 *     columns [Q head 0 .. Q head H-1 | K head 0 .. | V head 0 ..], each
 *     head head_dim columns; qkv bias (seed, tensor_id+1) [that width];
 *     both uniform in +-1/sqrt(hidden);
 *   out weight [heads * head_dim, hidden] = (seed, tensor_id+2), out bias
 *     [hidden] = (seed, tensor_id+3), uniform in +-1/sqrt(heads*head_dim).
 * The local QKV activation is [tokens, (Hl + 2*KVl) * head_dim]: the rank's
 * query heads, then its KV heads' K, then their V.
 *
 * Scores are scaled by 1/sqrt(head_dim); causal masks keys after the query
 * position (within each batch element); softmax subtracts the row max.
 */
typedef struct tp_attention_config {
    int64_t hidden;
    int64_t heads;
    int64_t kv_heads; /* 0: heads (multi-head); 1: multi-query */
    int64_t head_dim; /* 0: hidden / heads (then hidden % heads must be 0) */
    bool bias;        /* QKV and out-projection biases */
    bool causal;
    bool sequence_parallel;                       /* x, y, dy, dx are token shards (see above) */
    uint64_t seed, tensor_id;                     /* uses tensor_id .. tensor_id+3 */
    const float *full_qkv_weight, *full_qkv_bias; /* optional host full tensors */
    const float *full_out_weight, *full_out_bias;
    const char *name;
    tp_dtype dtype; /* weights, gradients, x, y, dy, dx and every internal activation (QKV,
                       scores, probabilities, context): TP_F32 (0), TP_BF16 or TP_F16 */
    int overlap;    /* 0 or 1: off. N >= 2 (at most TP_OVERLAP_MAX): nonblocking
                       collectives behind compute, results bitwise those of overlap 0
                       where docs/determinism.md says so. Without sequence parallelism:
                       the out-projection's GEMM and all-reduce in N token chunks, and
                       backward's input-gradient GEMM and all-reduce in N chunks, in
                       flight during the QKV weight gradient (when no KV head is shared
                       across ranks). With it: the all-gather of x pipelined with the
                       QKV GEMM and the out-projection with the reduce-scatter of y in N
                       chunks; backward gathers x again during the input-gradient GEMM
                       and reduce-scatters dx during the QKV weight gradient. */
} tp_attention_config;

typedef struct tp_attention tp_attention;

/* heads < T, or hidden % heads != 0 without head_dim, or kv_heads not
 * dividing heads: TP_ERR_SHAPE with the numbers and the ways out. */
TP_API tp_status tp_attention_create(tp_comm *comm, const tp_attention_config *cfg,
                                     tp_attention **out);
/* x [batch*seq, hidden] (or the rank's token shard with sequence
 * parallelism) -> y of x's shape. x must stay alive and unchanged until
 * backward (read by the QKV weight gradient; with sequence parallelism
 * all-gathered again: backward counts 2 all-gathers, dy's and x's). */
TP_API tp_status tp_attention_forward(tp_attention *a, const tp_tensor *x, int64_t batch,
                                      int64_t seq, tp_tensor *y);
/* dy has y's shape; dx gets x's. dx may be NULL (input-gradient GEMM and
 * collective skipped on every rank; all ranks must agree) except when some
 * KV head is shared by several ranks: their gradient sums ride in the
 * input-gradient collective (without sequence parallelism), so it is
 * refused with TP_ERR_INVALID_ARG either way. */
TP_API tp_status tp_attention_backward(tp_attention *a, const tp_tensor *dy, tp_tensor *dx);
TP_API tp_status tp_attention_zero_grad(tp_attention *a);
/* Collective: full (unsharded) host tensors, any may be NULL; biases are
 * ignored without bias. The _grad variant gives the gradients. */
TP_API tp_status tp_attention_get_full(tp_attention *a, float *qkv_w, float *qkv_b, float *out_w,
                                       float *out_b);
TP_API tp_status tp_attention_get_full_grad(tp_attention *a, float *qkv_w, float *qkv_b,
                                            float *out_w, float *out_b);
/* This rank's parameters and gradients (for optimizers). Shards: qkv
 * weight [hidden, W] with W = (q_hi-q_lo + 2 (kv_hi-kv_lo)) head_dim,
 * columns [its Q heads | its K heads | its V heads]; qkv bias [W]; out
 * weight [(q_hi-q_lo) head_dim, hidden]. Replicated: out bias [hidden] on
 * every rank, and the K/V columns of KV heads held by several ranks. Their
 * gradients are bitwise identical on every holder after each backward, so
 * an optimizer applying the same update everywhere keeps them identical.
 * Biases are NULL without bias; gradients NULL before backward/zero_grad. */
typedef struct tp_attention_params {
    tp_tensor *qkv_weight, *qkv_bias, *out_weight, *out_bias;
    tp_tensor *qkv_weight_grad, *qkv_bias_grad, *out_weight_grad, *out_bias_grad;
} tp_attention_params;

TP_API void tp_attention_get_params(tp_attention *a, tp_attention_params *out);
/* Resolved sizes: head_dim, and this rank's query heads [q_lo, q_hi) and
 * KV heads [kv_lo, kv_hi). Any pointer may be NULL. */
TP_API void tp_attention_get_info(const tp_attention *a, int64_t *head_dim, int64_t *q_lo,
                                  int64_t *q_hi, int64_t *kv_lo, int64_t *kv_hi);
TP_API void tp_attention_free(tp_attention *a); /* NULL is a no-op */

/* ------------------------------------------------------ LayerNorm, RMSNorm */

/*
 * Norm over the last dimension, parameters replicated on every rank
 * (gamma ones, beta zeros, as PyTorch; or the given host tensors).
 * Without sequence parallelism every rank sees the same full tokens, so
 * every rank computes bitwise the same parameter gradients: no
 * communication. With sequence parallelism each rank sees only its token
 * shard, so its gradient is partial: backward sums the shards' parts with
 * one all-reduce (the transformer block fuses its two norms' reductions
 * into one), after which every rank holds the same full gradient.
 */
typedef struct tp_norm_config {
    int64_t dim;
    bool rms;  /* RMSNorm: y = x / rms(x) * gamma (+ beta if bias) */
    bool bias; /* beta; LayerNorm usually true, RMSNorm false */
    float eps; /* 0: 1e-5 */
    bool sequence_parallel;
    const float *full_gamma, *full_beta; /* optional host [dim] */
    const char *name;
    tp_dtype dtype; /* gamma, beta, their gradients, x, y, dy, dx: TP_F32 (0), TP_BF16,
                       TP_F16; mean and rstd stay f32 */
} tp_norm_config;

typedef struct tp_norm tp_norm;

TP_API tp_status tp_norm_create(tp_comm *comm, const tp_norm_config *cfg, tp_norm **out);
TP_API tp_status tp_norm_forward(tp_norm *n, const tp_tensor *x, tp_tensor *y); /* [tokens, dim] */
TP_API tp_status tp_norm_backward(tp_norm *n, const tp_tensor *dy, tp_tensor *dx); /* dx required */
TP_API tp_status tp_norm_zero_grad(tp_norm *n);
/* gamma, beta (NULL without bias) and their grads (NULL before backward/zero_grad) */
TP_API void tp_norm_get_params(tp_norm *n, tp_tensor **gamma, tp_tensor **beta, tp_tensor **dgamma,
                               tp_tensor **dbeta);
TP_API void tp_norm_free(tp_norm *n);

/* ------------------------------------------------------- TransformerBlock */

/*
 * Pre-LN GPT block: h = x + Attn(LN1(x)); y = h + MLP(LN2(h)).
 * Collectives per call without sequence parallelism: 2 all-reduces forward
 * (attention out-projection, MLP fc2), 2 backward (input gradients of the
 * QKV linear and of MLP fc1). With sequence parallelism: forward 2
 * all-gathers + 2 reduce-scatters; backward 4 all-gathers (of dy into each
 * row-parallel exit, and of each column-parallel GEMM's input again for its
 * weight gradient) + 2 reduce-scatters (input gradients) + 1 all-reduce
 * (both norms' parameter gradients) + 1 all-reduce when KV heads are
 * shared by several ranks (see ParallelAttention).
 * Parameters: attention (seed, tensor_id .. +3), MLP (seed, tensor_id+4 ..
 * +7, see tp_mlp_config), norms ones/zeros.
 */
typedef struct tp_block_config {
    int64_t hidden, heads, kv_heads, head_dim, ffn; /* kv_heads, head_dim: 0 as in attention */
    bool bias;                                      /* linear biases */
    bool rms;                                       /* RMSNorm instead of LayerNorm (no beta) */
    float eps;                                      /* 0: 1e-5 */
    bool gelu_tanh;
    bool causal;
    bool sequence_parallel;
    uint64_t seed, tensor_id;
    const char *name;
    tp_dtype dtype; /* of the norms, attention and MLP (their parameters, gradients and
                       activations), x, y, dy, dx: TP_F32 (0), TP_BF16, TP_F16 */
    int overlap;    /* the attention's and the MLP's overlap (their configs; 0/1: off).
                       Without sequence parallelism N >= 2 also chains their forwards:
                       the MLP's token chunk c starts (residual and LN2 on its rows)
                       once the attention's all-reduce of those rows has arrived. With
                       sequence parallelism, N >= 2 pipelines the forward's all-gather ->
                       column GEMM (QKV, fc1) and row GEMM -> reduce-scatter (out-
                       projection, fc2) in up to N token chunks (cut at multiples
                       of 48 rows), and the MLP backward's input-gradient
                       reduce-scatter runs while fc1's weight gradient is computed;
                       results bitwise those of 0 (docs/determinism.md) */
} tp_block_config;

typedef struct tp_block tp_block;

TP_API tp_status tp_block_create(tp_comm *comm, const tp_block_config *cfg, tp_block **out);
/* x [batch*seq, hidden] or its token shard with sequence parallelism; x must
 * stay alive until backward. */
TP_API tp_status tp_block_forward(tp_block *b, const tp_tensor *x, int64_t batch, int64_t seq,
                                  tp_tensor *y);
TP_API tp_status tp_block_backward(tp_block *b, const tp_tensor *dy,
                                   tp_tensor *dx); /* dx required */
TP_API tp_status tp_block_zero_grad(tp_block *b);
TP_API tp_attention *tp_block_attention(tp_block *b);
TP_API tp_mlp *tp_block_mlp(tp_block *b);
TP_API tp_norm *tp_block_norm1(tp_block *b);
TP_API tp_norm *tp_block_norm2(tp_block *b);
TP_API void tp_block_free(tp_block *b);

#ifdef __cplusplus
}
#endif
#endif /* TP_TRANSFORMER_H */
