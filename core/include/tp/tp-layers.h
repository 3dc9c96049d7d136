/* SPDX-License-Identifier: MIT */
/*
 * tp-layers.h — Megatron-style tensor-parallel layers (libtp-layers; link with tp-layers).
 *
 * Weights follow y = x W: W is [in_features, out_features], row-major.
 * A ColumnParallelLinear splits W by columns (out), a RowParallelLinear by
 * rows (in). Sizes need not divide by T: shard i is tp_shard_range(n, T, i),
 * so shards differ by at most one; T larger than the split dimension is
 * refused at create time. Layers call only the communicator and device APIs;
 * they never branch on the backend and never touch tensor memory from the
 * host. Every layer object belongs to one rank (its comm's rank).
 *
 * Tensors: x and y are [tokens, features] or [d0, .., features] (2 to 4
 * dims; leading dims are flattened into tokens) on the comm's device.
 * Dtypes: every layer (linear, MLP, embedding, cross-entropy, and in
 * tp-transformer.h attention, norms, block; the GPT) takes a `dtype` (TP_F32, the zero
 * default, TP_BF16 or TP_F16; anything else is refused at create with
 * TP_ERR_INVALID_ARG). Their weights, bias, gradients and every activation
 * they take or return (x, y, dy, dx) are stored in that dtype, and a tensor
 * of another dtype is refused with TP_ERR_SHAPE naming both. GEMMs
 * accumulate in f32 inside the device; each stored result (GEMM output,
 * bias add, GeLU, the all-reduced sum, each accumulated gradient) is
 * rounded once to the dtype. Host-side weights (full_weight, the RNG
 * master weights, tp_linear_get_full) stay f32: the layer rounds its shard
 * to nearest even before the upload (tp_host_convert) and widens on the
 * way back. Statistics (norm mean/rstd, the cross-entropy's row max and
 * sums, the loss) are f32 in every dtype. Memory: what a layer allocates
 * counts in tp_stats.mem under its kind (parameters, gradients,
 * activations kept for backward, workspace). An
 * output (y, dx) may be passed zeroed (tp_tensor t = {0}): the layer then
 * allocates it with the right shape and the caller releases it with
 * tp_tensor_release. Otherwise its shape is checked. Shape errors return
 * TP_ERR_SHAPE with a message naming the layer, the dimension, expected vs
 * got and the likely cause.
 *
 * Phases: forward calls count under TP_PHASE_FORWARD, backward calls under
 * TP_PHASE_BACKWARD (the previous phase is restored on return).
 *
 * Collectives per call (on the layer's comm):
 *   column forward: none; with gather_output one all_gather
 *   column backward: one all_reduce (input gradient)
 *   row forward: one all_reduce; bias added once, after it
 *   row backward: none; with input_is_parallel=false one all_gather
 *   MLP forward: one all_reduce; MLP backward: one all_reduce
 *
 * Backward: forward saves a view of x (not a copy): x must stay alive and
 * unchanged until the matching backward. Weight and bias gradients
 * accumulate (+=) across backward calls until tp_*_zero_grad; the input
 * gradient dx is overwritten. dx may be NULL when it is not needed (the
 * input-gradient GEMM and its collective are then skipped on every rank, so
 * all ranks must agree).
 */
#ifndef TP_LAYERS_H
#define TP_LAYERS_H

#include <tp/tp.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tp_linear_config {
    int64_t in_features, out_features;
    bool bias;
    bool gather_output;     /* column: all-gather the output to [tokens, out] */
    bool input_is_parallel; /* row: x is this rank's shard [tokens, in_local];
                               false: x is the full [tokens, in] and the layer
                               uses its own slice */
    uint64_t seed;          /* master weight = (seed, tensor_id), bias = (seed, tensor_id+1),
                               uniform in [-1/sqrt(in), 1/sqrt(in)) like torch.nn.Linear */
    uint64_t tensor_id;
    const float *full_weight; /* optional host [in, out]: the layer copies its shard */
    const float *full_bias;   /* optional host [out] */
    const char *name;         /* for error messages, e.g. "mlp.fc1"; may be NULL */
    tp_dtype dtype;           /* weights, grads and activations: TP_F32 (0, default),
                                 TP_BF16 or TP_F16 (f32 accumulation); see above */
    int overlap;              /* 0 or 1: off. N >= 2 (at most TP_OVERLAP_MAX): hide
                                 communication behind compute with nonblocking
                                 collectives. row: the forward GEMM and all-reduce run
                                 in N chunks of tokens, chunk i's all-reduce in flight
                                 while chunk i+1's GEMM runs. column: backward issues
                                 the input-gradient all-reduce before the weight-
                                 gradient GEMM and waits after it. Results are bitwise
                                 those of overlap 0 where docs/determinism.md says so.
                                 A backward whose dx aliases its dy or x takes the
                                 plain path (other collectives): alias alike on every
                                 rank, as SPMD code does. */
} tp_linear_config;

#define TP_OVERLAP_MAX 64 /* largest tp_linear_config.overlap (chunk count) */

typedef struct tp_linear tp_linear;

TP_API tp_status tp_column_linear_create(tp_comm *comm, const tp_linear_config *cfg,
                                         tp_linear **out);
TP_API tp_status tp_row_linear_create(tp_comm *comm, const tp_linear_config *cfg, tp_linear **out);
/* column: x [tokens, in] -> y [tokens, out_local] (or [tokens, out] with gather_output)
 * row:    x [tokens, in_local] (or [tokens, in]) -> y [tokens, out], one all-reduce */
TP_API tp_status tp_linear_forward(tp_linear *layer, const tp_tensor *x, tp_tensor *y);
/* dy has y's shape; dx gets x's shape (the one forward was given), or NULL. */
TP_API tp_status tp_linear_backward(tp_linear *layer, const tp_tensor *dy, tp_tensor *dx);
TP_API tp_status tp_linear_zero_grad(tp_linear *layer);
TP_API void tp_linear_free(tp_linear *layer); /* NULL is a no-op */

typedef enum tp_linear_kind {
    TP_LINEAR_COLUMN = 0,
    TP_LINEAR_ROW = 1,
} tp_linear_kind;

/* A layer's local parameters. lo/hi: this rank's range of the split
 * dimension (out for column, in for row). weight is [in, hi-lo] (column)
 * or [hi-lo, out] (row); bias is [hi-lo] (column) or the full [out] (row,
 * replicated); NULL when the layer has none. Gradients have the same shapes
 * and are NULL until the first backward or zero_grad. Pointers stay valid
 * until tp_linear_free; the tensors may be updated in place (optimizers). */
typedef struct tp_linear_params {
    tp_linear_kind kind;
    int64_t in_features, out_features;
    int64_t lo, hi;
    tp_tensor *weight, *bias;
    tp_tensor *weight_grad, *bias_grad;
} tp_linear_params;

TP_API void tp_linear_get_params(tp_linear *layer, tp_linear_params *out);

/* Collective over the layer's comm: assemble the full (unsharded) weight
 * [in, out] and bias [out] from every rank's shard and copy them to the
 * host buffers as f32 (widened exactly from a bf16/f16 layer; either may
 * be NULL; b is ignored without bias). The _grad variant does the same
 * for the gradients (zero before any backward). */
TP_API tp_status tp_linear_get_full(tp_linear *layer, float *w, float *b);
TP_API tp_status tp_linear_get_full_grad(tp_linear *layer, float *dw, float *db);

typedef struct tp_mlp_config {
    int64_t hidden, ffn;
    bool bias;
    bool gelu_tanh; /* tanh approximation instead of exact erf GeLU */
    uint64_t seed;
    uint64_t tensor_id; /* fc1 uses tensor_id, tensor_id+1; fc2 tensor_id+2, tensor_id+3 */
    const float *full_w1, *full_b1, *full_w2, *full_b2; /* optional host full weights */
    const char *name;
    tp_dtype dtype; /* of both linears and every activation: TP_F32 (0), TP_BF16, TP_F16 */
    int overlap;    /* 0/1: off. N >= 2: the forward (fc1, GeLU, fc2) in N token
                       chunks, each chunk's all-reduce in flight while the next
                       computes; backward likewise down to fc1's dx, the last
                       chunks' all-reduces in flight during the weight gradients.
                       Bitwise as overlap 0 where docs/determinism.md says so. */
} tp_mlp_config;

typedef struct tp_mlp tp_mlp;

/* ParallelMLP: column(hidden->ffn) -> GeLU -> row(ffn->hidden): one all-reduce forward.
 * fc1's bias and GeLU run in its GEMM's epilogue where the device fuses them
 * (tp_dev_gemm_bias_act), else as separate kernels. */
TP_API tp_status tp_mlp_create(tp_comm *comm, const tp_mlp_config *cfg, tp_mlp **out);
TP_API tp_status tp_mlp_forward(tp_mlp *mlp, const tp_tensor *x,
                                tp_tensor *y); /* [tokens, hidden] both */
/* dy [tokens, hidden] -> dx [tokens, hidden] (or NULL): one all-reduce. */
TP_API tp_status tp_mlp_backward(tp_mlp *mlp, const tp_tensor *dy, tp_tensor *dx);
TP_API tp_status tp_mlp_zero_grad(tp_mlp *mlp);
TP_API tp_linear *tp_mlp_fc1(tp_mlp *mlp); /* the column-parallel hidden->ffn layer */
TP_API tp_linear *tp_mlp_fc2(tp_mlp *mlp); /* the row-parallel ffn->hidden layer */
TP_API void tp_mlp_free(tp_mlp *mlp);      /* NULL is a no-op */

/* ------------------------------------------------ vocab-parallel layers */

/* VocabParallelEmbedding: the table [vocab, dim] is split by rows (vocab
 * ids); each rank looks up the ids in its range, writes zero rows for the
 * others, and one all-reduce sums the parts. Any vocab >= T works (GPT-2's
 * 50257 included). ids are int32 on the device, any shape of 1..3 dims;
 * y gets ids' shape + [dim]. Ids outside [0, vocab) give zero rows.
 * Backward: dtable_local += scatter-add of dy rows (no communication). */
typedef struct tp_embedding_config {
    int64_t vocab, dim;
    uint64_t seed, tensor_id; /* master table (seed, tensor_id), uniform in [-bound, bound) */
    const float *full_table;  /* optional host [vocab, dim] */
    const char *name;
    float init_bound; /* 0: 1.0 */
    /* Sequence parallelism: forward reduce-scatters instead of all-reducing,
     * so y is this rank's token shard [hi-lo, dim], rows [lo, hi) =
     * tp_shard_range(n, T, rank) of the n = numel(ids) tokens (the shard the
     * transformer block expects); backward takes dy of that shard and
     * all-gathers it (one all_gather) before the scatter-add. */
    bool sequence_parallel;
    tp_dtype dtype; /* table, its gradient, y and dy: TP_F32 (0), TP_BF16, TP_F16; the
                       scatter-add rounds each accumulated row once per backward */
} tp_embedding_config;

typedef struct tp_embedding tp_embedding;

TP_API tp_status tp_embedding_create(tp_comm *comm, const tp_embedding_config *cfg,
                                     tp_embedding **out);
TP_API tp_status tp_embedding_forward(tp_embedding *e, const tp_tensor *ids, tp_tensor *y);
TP_API tp_status tp_embedding_backward(tp_embedding *e,
                                       const tp_tensor *dy); /* uses the saved ids */
TP_API tp_status tp_embedding_zero_grad(tp_embedding *e);
/* table shard [hi-lo, dim] (rows lo..hi-1 of the vocab) and its gradient (NULL before backward) */
TP_API void tp_embedding_get_shard(tp_embedding *e, int64_t *lo, int64_t *hi, tp_tensor **table,
                                   tp_tensor **grad);
TP_API tp_status tp_embedding_get_full(tp_embedding *e,
                                       float *table); /* collective; host [vocab, dim] */
TP_API tp_status tp_embedding_get_full_grad(tp_embedding *e, float *grad); /* collective */
TP_API void tp_embedding_free(tp_embedding *e);

/* Vocab-parallel cross-entropy on logits split by vocab columns, without
 * gathering them: row max (one all-reduce, max), then sum of exp, target
 * logit and sum of logits together (one all-reduce, sum): 2 all-reduces.
 * loss = mean over non-ignored rows of
 *        lse - (1 - s) x[target] - s * mean_c x[c],   s = label_smoothing
 * which is exact for any T (the smoothing term uses the full vocab).
 * targets: int32 [rows] on the device (downloaded once per forward to find
 * ignored rows and check the range). All rows ignored: loss 0, grads 0.
 * Backward: dlogits_local = dloss/count * (softmax - (1-s) onehot - s/V),
 * no communication; ignored rows get 0. */
typedef struct tp_ce_config {
    int64_t vocab;
    float label_smoothing; /* 0 .. 1 */
    bool use_ignore_index; /* rows whose target == ignore_index are ignored */
    int32_t ignore_index;  /* e.g. -100 as in PyTorch */
    const char *name;
    tp_dtype dtype; /* logits and dlogits: TP_F32 (0), TP_BF16, TP_F16; the row max, sums
                       of exp and the loss are f32 (each logit widened exactly) */
} tp_ce_config;

typedef struct tp_vocab_ce tp_vocab_ce;

TP_API tp_status tp_vocab_ce_create(tp_comm *comm, const tp_ce_config *cfg, tp_vocab_ce **out);
/* logits [rows, vocab_local] (this rank's columns, e.g. a column-parallel
 * output without gather), targets int32 [rows]; *loss (host) = the mean loss,
 * the same on every rank. logits and targets must stay alive until backward. */
TP_API tp_status tp_vocab_ce_forward(tp_vocab_ce *ce, const tp_tensor *logits,
                                     const tp_tensor *targets, float *loss);
/* dlogits [rows, vocab_local] = d(dloss * loss)/d logits (overwritten) */
TP_API tp_status tp_vocab_ce_backward(tp_vocab_ce *ce, float dloss, tp_tensor *dlogits);
TP_API void tp_vocab_ce_free(tp_vocab_ce *ce);

/* ------------------------------------------------- parameters, optimizers */

/* One trainable tensor of a model as this rank holds it. value and grad
 * have the same shape and live on the rank's device; an optimizer updates
 * value in place. A replicated parameter (norm gains, row-parallel biases,
 * the position table, KV heads shared by ranks) is identical on every
 * rank, and so is its gradient (every rank computes it from the same data,
 * or the layer reduces it), so every rank applies the same update without
 * communication and replicas never drift apart. */
typedef struct tp_param {
    const char *name;        /* e.g. "blocks.0.mlp.fc1.weight" */
    tp_tensor *value, *grad; /* this rank's part; grad never NULL */
    bool decay;              /* weight decay applies (matrices and embeddings, not biases/norms) */
    bool replicated;         /* the same full tensor on every rank (else a shard) */
    int ndim;                /* the full (unsharded) tensor's shape */
    int64_t full_shape[2];
} tp_param;

typedef enum tp_optim_kind {
    TP_OPTIM_SGD = 0,   /* PyTorch SGD: d = g + wd p; with momentum b = mu b + d
                           (b = d on the first step); p -= lr (momentum ? b : d) */
    TP_OPTIM_ADAMW = 1, /* PyTorch AdamW: p *= 1 - lr*wd; Adam moments; bias-corrected step */
} tp_optim_kind;

typedef struct tp_optim_config {
    tp_optim_kind kind;
    float lr;
    float beta1, beta2, eps; /* AdamW only */
    float weight_decay;      /* applied only to params with decay = true */
    float momentum;          /* SGD only; 0: none */
    /* Loss scaling (for f16): the backward's loss was multiplied by the
     * optimizer's current scale (tp_optim_loss_scale; e.g. pass it to
     * tp_gpt_backward_scaled). 0 or 1: no scaling. dynamic_loss_scale:
     * halve the scale after a step whose gradients hold a non-finite
     * value (on any rank; that step is skipped), double it after
     * growth_interval (0: 2000) good steps in a row, as PyTorch's
     * GradScaler. A static scale also skips such steps (and keeps it). */
    float loss_scale;
    bool dynamic_loss_scale;
    int growth_interval;
} tp_optim_config;

/* PyTorch's defaults: AdamW lr 1e-3, betas (0.9, 0.999), eps 1e-8,
 * weight_decay 0.01; SGD lr 1e-2 (PyTorch has none), weight_decay 0,
 * momentum 0. */
TP_API tp_optim_config tp_optim_defaults(tp_optim_kind kind);

typedef struct tp_optim tp_optim;

/* An optimizer over n parameters (the array is copied; the tensors must
 * outlive the optimizer). AdamW allocates its m and v state, SGD with
 * momentum its momentum buffer (zeros) on the device, all f32. comm is
 * the rank's comm: the optimizer's kernels count in its stats under
 * TP_PHASE_OTHER. Without loss scaling and with f32 parameters there is
 * no communication and no host copy.
 *
 * Mixed precision: a bf16/f16 parameter (value and grad of that dtype)
 * gets an f32 master copy (its value widened, counted as optimizer
 * state); each step updates the master from the f32 gradient and rounds
 * it once (nearest even) into the value, so small updates accumulate in
 * the master instead of rounding away. With such parameters or a loss
 * scale the step goes through the host (this device API has no cast):
 * each gradient is downloaded, widened, divided by the scale and checked
 * for non-finite values; one all-reduce over comm (one float) makes every
 * rank agree to skip or apply; then the f32 gradient is uploaded, the
 * update runs on the device and the master is rounded into the value. */
TP_API tp_status tp_optim_create(tp_comm *comm, const tp_optim_config *cfg, const tp_param *params,
                                 int n, tp_optim **out);
/* One update of every parameter from its gradient; the step counter (for
 * AdamW's bias correction) counts from 1. Gradients are left as they are. */
TP_API tp_status tp_optim_step(tp_optim *o);
TP_API tp_status tp_optim_zero_grad(tp_optim *o); /* every parameter's gradient = 0 */
TP_API int64_t tp_optim_steps(const tp_optim *o); /* updates done so far */
TP_API tp_status tp_optim_set_lr(tp_optim *o, float lr);
TP_API float tp_optim_loss_scale(const tp_optim *o); /* current scale (1 without scaling) */
TP_API int64_t tp_optim_skipped(const tp_optim *o);  /* steps skipped for non-finite grads */
TP_API void tp_optim_free(tp_optim *o);              /* NULL is a no-op */

/* -------------------------------------------------------------- GPT model */

/*
 * A small Megatron-style GPT: token VocabParallelEmbedding + learned
 * position embedding (replicated) -> `layers` pre-LN TransformerBlocks ->
 * final LayerNorm (RMSNorm with rms) -> vocab-parallel output projection ->
 * vocab-parallel cross-entropy on the sharded logits (never gathered).
 *
 * Output projection: tied (the embedding table shard E_r [vocab_r, hidden]
 * is the column-parallel output weight: logits_r = h E_r^T; the table's
 * gradient is the sum of the embedding's and the output's parts) or untied
 * (a ColumnParallelLinear hidden -> vocab, no bias, gather_output=false).
 * vocab need not divide by T (GPT-2's 50257 works).
 *
 * Master weights (the same full model for every T): token table (seed, 1)
 * uniform +-emb_bound; position table [seq, hidden] (seed, 2) +-emb_bound;
 * untied output (seed, 3) +-1/sqrt(hidden); block i uses tensor_id
 * 16 + 8 i (see tp_block_config); norms ones/zeros.
 *
 * Collectives per training step (forward + backward) on the model's comm,
 * L = layers, without sequence parallelism:
 *   forward:  1 all_reduce (embedding) + 2L (blocks) + 2 (cross-entropy)
 *   backward: 1 all_reduce (output projection's input gradient) + 2L (blocks)
 * With sequence parallelism:
 *   forward:  1 reduce_scatter (embedding) + 2L all_gather + 2L reduce_scatter
 *             (blocks) + 1 all_gather (final norm output, before the output
 *             projection) + 2 all_reduce (cross-entropy)
 *   backward: 1 all_gather (the final norm output again: SP keeps only
 *             this rank's rows for backward) + 1 reduce_scatter (output
 *             projection's input gradient) + 1 all_reduce (final norm's
 *             parameter gradients) + the blocks' 4L all_gather (dy, and each
 *             column-parallel input again) + 2L reduce_scatter + L all_reduce
 *             + 1 all_gather (embedding: every rank needs every token's
 *             gradient); plus,
 *             per block whose KV heads are shared by several ranks (a GQA
 *             group straddling a head-shard boundary), 1 all_reduce of
 *             their gradients
 * T = 1 runs the same calls on a one-rank comm. The position add and the
 * output projection count under the forward/backward phases like the layers.
 * Host syncs per step: forward downloads the ids (range check) and the
 * cross-entropy the targets.
 */
typedef struct tp_gpt_config {
    int64_t vocab, hidden, heads, kv_heads, head_dim, ffn, layers;
    int64_t seq; /* maximum sequence length (position table rows) */
    bool tied;   /* output projection reuses the token table */
    bool sequence_parallel;
    bool bias; /* biases in the blocks' linears */
    bool rms;  /* RMSNorm instead of LayerNorm everywhere */
    bool gelu_tanh;
    float eps;             /* norms; 0: 1e-5 */
    float emb_bound;       /* 0: 0.1 */
    float label_smoothing; /* 0 .. 1 */
    bool use_ignore_index; /* targets == ignore_index are ignored */
    int32_t ignore_index;
    uint64_t seed;
    /* Every parameter, gradient and activation: TP_F32 (0), TP_BF16 or TP_F16 (GEMMs and
     * reductions inside the device accumulate in f32; each stored tensor is rounded once).
     * The loss and the cross-entropy statistics are f32. Train with tp_optim (it keeps f32
     * master weights); f16 needs loss scaling (tp_gpt_backward_scaled). */
    tp_dtype dtype;
    /* Every block's tp_block_config.overlap: 0 or 1 off; N >= 2 (at most TP_OVERLAP_MAX) hides
     * the blocks' TP collectives behind their GEMMs in up to N token chunks, with the same
     * bits as 0 where docs/determinism.md says so. (DP overlap: tp_gpt_set_dp.) */
    int overlap;
} tp_gpt_config;

typedef struct tp_gpt tp_gpt;
typedef struct tp_block tp_block; /* tp-transformer.h */
typedef struct tp_dp tp_dp;       /* data parallelism, below */

/* Errors (TP_ERR_SHAPE / TP_ERR_INVALID_ARG, with the numbers): sizes < 1,
 * vocab < T, ffn < T, and whatever the blocks refuse (heads < T, ...). */
TP_API tp_status tp_gpt_create(tp_comm *comm, const tp_gpt_config *cfg, tp_gpt **out);
/* ids: int32 [batch, seq_len] on the device (seq_len <= cfg.seq, ids in
 * [0, vocab)); targets: int32 with batch*seq_len elements (row t of the
 * flattened tokens is batch t / seq_len, position t % seq_len). *loss
 * (host) = mean cross-entropy over non-ignored targets, the same on every
 * rank. ids and targets must stay alive until backward. */
TP_API tp_status tp_gpt_forward(tp_gpt *m, const tp_tensor *ids, const tp_tensor *targets,
                                float *loss);
/* Gradients of the last forward's loss, accumulated into every parameter's grad. */
TP_API tp_status tp_gpt_backward(tp_gpt *m);
/* The same for scale * loss (loss scaling: pass tp_optim_loss_scale of an optimizer created
 * with loss_scale, which divides the gradients by it again); scale finite and > 0. */
TP_API tp_status tp_gpt_backward_scaled(tp_gpt *m, float scale);
TP_API tp_status tp_gpt_zero_grad(tp_gpt *m);
/* The model's parameters (valid until tp_gpt_free), in this order, with
 * these names and full shapes (biases only where configured):
 *   embedding.weight [vocab, hidden]       position.weight [seq, hidden]
 *   blocks.<i>.ln1.weight, .ln1.bias [hidden]
 *   blocks.<i>.attn.qkv.weight [hidden, (heads + 2 kv_heads) head_dim], .qkv.bias
 *   blocks.<i>.attn.out.weight [heads head_dim, hidden], .out.bias [hidden]
 *   blocks.<i>.ln2.weight, .ln2.bias
 *   blocks.<i>.mlp.fc1.weight [hidden, ffn], .fc1.bias [ffn]
 *   blocks.<i>.mlp.fc2.weight [ffn, hidden], .fc2.bias [hidden]
 *   ln_f.weight, ln_f.bias [hidden]         output.weight [hidden, vocab] (untied)
 * Pass them to tp_optim_create. */
TP_API void tp_gpt_params(tp_gpt *m, const tp_param **params, int *n);
/* Collective: the full (unsharded) value and/or gradient of parameter i
 * into host buffers of full_shape (either may be NULL). */
TP_API tp_status tp_gpt_get_full_param(tp_gpt *m, int i, float *value, float *grad);
/* Collective: the full logits [tokens, vocab] of the last forward (host). */
TP_API tp_status tp_gpt_get_full_logits(tp_gpt *m, float *logits);
TP_API tp_block *tp_gpt_block(tp_gpt *m, int i);
TP_API tp_embedding *tp_gpt_embedding(tp_gpt *m);
/* Overlap the DP gradient reduction with backward: with d set (made over
 * tp_gpt_params, or any list holding them), tp_gpt_backward hands d each
 * gradient as it becomes final (tp_dp_grad_ready): the untied output
 * projection's, the final norm's, each block's from the last to the first,
 * then the embeddings' (the tied table is final only there). It does
 * nothing unless a round of d is open (tp_dp_begin). A backward that
 * fails closes the open round (its started buckets waited for, their
 * results dropped): begin a new one. NULL detaches; the model does not
 * own d, which must outlive its use here. */
TP_API tp_status tp_gpt_set_dp(tp_gpt *m, tp_dp *d);
/* Collective over the model's TP group, after the DP reduction
 * (tp_dp_all_reduce_grads) and before the optimizer step, like
 * Megatron's finalize_model_grads: the gradients of parameters that
 * several TP ranks hold (KV heads shared when kv_heads < T or a KV group
 * straddles two ranks' query heads) are made bitwise the same on each,
 * as tp_param's replicas require. The DP sums of their copies lie at
 * different offsets of different calls on each TP rank, which a ring
 * backend (tcp, Open MPI, NCCL; D >= 3) sums in different orders; each
 * holder now takes the first holder's result. Without shared KV heads, or
 * at T = 1, it does nothing. */
TP_API tp_status tp_gpt_finalize_grads(tp_gpt *m);
TP_API void tp_gpt_free(tp_gpt *m); /* NULL is a no-op */

/* ------------------------------------------------------ data parallelism */

/*
 * D replicas of a TP model, each on its slice of the global batch (world =
 * T x D; tp_topology gives each rank its TP and DP communicators). After
 * backward, tp_dp_all_reduce_grads replaces every gradient g of this rank
 * by sum over the DP group of weight_d * g_d, weight_d being replica d's
 * share of the global batch (1/D for equal slices; n_d / N for slices of
 * n_d of N counted targets), so every replica holds the gradient of the
 * global batch's mean loss and applies the same update.
 *
 * Buckets (PyTorch DDP's idea, 25 MiB by default): the gradients are
 * packed (scaled by weight) into a device buffer, the buffer all-reduced
 * in place (tp_iall_reduce), the pieces copied back. The order is fixed
 * when the object is made, and is the order backward finishes the
 * gradients: the parameters from the last to the first, the replicated
 * ones (norms, row-parallel biases, the position table) in buckets of
 * their own, merged with the shards' by when each bucket is complete. A
 * parameter may straddle buckets and a bucket holds one dtype. The
 * replicated parameters' buckets are the same calls on every DP group
 * (see dp.c). Every run makes the same calls with the same bytes: with a
 * backend whose sums have a fixed order (loopback, shm, mpi for a fixed
 * process layout) the run is bitwise reproducible.
 *
 * Overlap (DDP's reduction during backward): tp_dp_begin(d, weight) before
 * backward opens a round; backward then hands each gradient over as soon
 * as it is final (tp_dp_grad_ready: tp_gpt_set_dp makes tp_gpt_backward do
 * it block by block), and each bucket is packed and its all-reduce started
 * once all its gradients are in and the buckets before it are started;
 * tp_dp_all_reduce_grads(d, weight) then starts the rest, waits, unpacks
 * and closes the round. The calls, their order and their bytes are those
 * of the non-overlapped tp_dp_all_reduce_grads, so the results are bitwise
 * the same. Only several buckets overlap: a bucket starts when its last
 * gradient is final, so pick bucket_bytes well below grad_bytes
 * (tp_dp_get_info). Overlapped, the buckets live in a second device buffer
 * of grad_bytes (made at the first tp_dp_begin). A gradient handed over
 * must not change until the round ends.
 *
 * Communication: per call `buckets` all-reduces (tp_dp_get_info), counted
 * as nonblocking calls (tp_stats.icomm) on the DP communicator under the
 * phase current at their start: seconds in flight, the part the rank spent
 * waiting (exposed) and so the part hidden behind backward; the packing
 * and unpacking count as device kernels. Ring traffic per rank and call:
 * 2 (D-1)/D x grad_bytes.
 */
#define TP_DP_DEFAULT_BUCKET_BYTES (25 * 1024 * 1024)
#define TP_DP_MIN_BUCKET_BYTES     16

typedef struct tp_dp_config {
    size_t bucket_bytes; /* 0: TP_DP_DEFAULT_BUCKET_BYTES; at least TP_DP_MIN_BUCKET_BYTES */
} tp_dp_config;

typedef struct tp_dp tp_dp;

/* Collective over dp: plan the buckets for this rank's parameters (the
 * array is copied; the tensors must outlive the object; gradients must
 * exist) and check that every rank of dp made the same plan
 * (TP_ERR_INVALID_ARG naming the first that did not). cfg may be NULL. */
TP_API tp_status tp_dp_create(tp_comm *dp, const tp_dp_config *cfg, const tp_param *params, int n,
                              tp_dp **out);
/* Collective over dp: grad = sum over the group of weight x grad (see above).
 * With a round open (tp_dp_begin), ends it: weight must be the round's. */
TP_API tp_status tp_dp_all_reduce_grads(tp_dp *d, float weight);
/* Open an overlapped round with this replica's weight (>= 0); not
 * collective, no communication. TP_ERR_INVALID_ARG if one is open. */
TP_API tp_status tp_dp_begin(tp_dp *d, float weight);
/* Collective over dp (every rank hands over the same gradients in the same
 * order): grad, a gradient tensor of one of d's parameters (compared by
 * address; any other is ignored), is final for this round; starts every
 * bucket that is now complete and whose turn it is. Without an open round
 * it does nothing (gradient accumulation: only the last backward reduces). */
TP_API tp_status tp_dp_grad_ready(tp_dp *d, const tp_tensor *grad);
/* Collective over dp: *sum = the sum of every rank's x (one all-reduce,
 * counted like the buckets), e.g. of weight_d x loss_d for the global loss. */
TP_API tp_status tp_dp_sum(tp_dp *d, float x, float *sum);
/* All-reduces per tp_dp_all_reduce_grads, gradient bytes reduced per call,
 * the bucket size. Any pointer may be NULL. */
TP_API void tp_dp_get_info(const tp_dp *d, int *buckets, size_t *grad_bytes, size_t *bucket_bytes);
/* Collective over dp (and tp unless NULL: the rank's TP communicator):
 * every parameter's value is bitwise the same on every rank of the DP
 * group, and every replicated one on every rank of the TP group; else
 * TP_ERR_INTERNAL naming the first parameter that differs. */
TP_API tp_status tp_dp_check_sync(tp_dp *d, tp_comm *tp);
/* NULL is a no-op; an open round's started buckets are waited for first. */
TP_API void tp_dp_free(tp_dp *d);

#ifdef __cplusplus
}
#endif
#endif /* TP_LAYERS_H */
