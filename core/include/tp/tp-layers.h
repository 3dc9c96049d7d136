/*
 * tp-layers.h — Megatron-style tensor-parallel layers (included by tp.h).
 *
 * Weights follow y = x W: W is [in_features, out_features], row-major.
 * A ColumnParallelLinear splits W by columns (out), a RowParallelLinear by
 * rows (in). Sizes need not divide by T: shard i is tp_shard_range(n, T, i),
 * so shards differ by at most one; T larger than the split dimension is
 * refused at create time. Layers call only the communicator and device APIs;
 * they never branch on the backend and never touch tensor memory from the
 * host. Every layer object belongs to one rank (its comm's rank).
 *
 * Tensors: x and y are f32 [tokens, features] or [d0, .., features] (2 to 4
 * dims; leading dims are flattened into tokens) on the comm's device. An
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

#ifndef TP_H
#error "include <tp/tp.h>, not <tp/tp-layers.h>"
#endif

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
} tp_linear_config;

typedef struct tp_linear tp_linear;

tp_status tp_column_linear_create(tp_comm *comm, const tp_linear_config *cfg, tp_linear **out);
tp_status tp_row_linear_create(tp_comm *comm, const tp_linear_config *cfg, tp_linear **out);
/* column: x [tokens, in] -> y [tokens, out_local] (or [tokens, out] with gather_output)
 * row:    x [tokens, in_local] (or [tokens, in]) -> y [tokens, out], one all-reduce */
tp_status tp_linear_forward(tp_linear *layer, const tp_tensor *x, tp_tensor *y);
/* dy has y's shape; dx gets x's shape (the one forward was given), or NULL. */
tp_status tp_linear_backward(tp_linear *layer, const tp_tensor *dy, tp_tensor *dx);
tp_status tp_linear_zero_grad(tp_linear *layer);
void tp_linear_free(tp_linear *layer); /* NULL is a no-op */

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

void tp_linear_get_params(tp_linear *layer, tp_linear_params *out);

/* Collective over the layer's comm: assemble the full (unsharded) weight
 * [in, out] and bias [out] from every rank's shard and copy them to the
 * host buffers (either may be NULL; b is ignored without bias). The _grad
 * variant does the same for the gradients (zero before any backward). */
tp_status tp_linear_get_full(tp_linear *layer, float *w, float *b);
tp_status tp_linear_get_full_grad(tp_linear *layer, float *dw, float *db);

typedef struct tp_mlp_config {
    int64_t hidden, ffn;
    bool bias;
    bool gelu_tanh; /* tanh approximation instead of exact erf GeLU */
    uint64_t seed;
    uint64_t tensor_id; /* fc1 uses tensor_id, tensor_id+1; fc2 tensor_id+2, tensor_id+3 */
    const float *full_w1, *full_b1, *full_w2, *full_b2; /* optional host full weights */
    const char *name;
} tp_mlp_config;

typedef struct tp_mlp tp_mlp;

/* ParallelMLP: column(hidden->ffn) -> GeLU -> row(ffn->hidden): one all-reduce forward. */
tp_status tp_mlp_create(tp_comm *comm, const tp_mlp_config *cfg, tp_mlp **out);
tp_status tp_mlp_forward(tp_mlp *mlp, const tp_tensor *x, tp_tensor *y); /* [tokens, hidden] both */
/* dy [tokens, hidden] -> dx [tokens, hidden] (or NULL): one all-reduce. */
tp_status tp_mlp_backward(tp_mlp *mlp, const tp_tensor *dy, tp_tensor *dx);
tp_status tp_mlp_zero_grad(tp_mlp *mlp);
tp_linear *tp_mlp_fc1(tp_mlp *mlp); /* the column-parallel hidden->ffn layer */
tp_linear *tp_mlp_fc2(tp_mlp *mlp); /* the row-parallel ffn->hidden layer */
void tp_mlp_free(tp_mlp *mlp);      /* NULL is a no-op */

/* ------------------------------------------------ vocab-parallel layers */

/* VocabParallelEmbedding: the table [vocab, dim] is split by rows (vocab
 * ids); each rank looks up the ids in its range, writes zero rows for the
 * others, and one all-reduce sums the parts. Any vocab >= T works (GPT-2's
 * 50257 included). ids are int32 on the device, any shape of 1..3 dims;
 * y gets ids' shape + [dim]. Ids outside [0, vocab) give zero rows.
 * Backward: dtable_local += scatter-add of dy rows (no communication). */
typedef struct tp_embedding_config {
    int64_t vocab, dim;
    uint64_t seed, tensor_id;  /* master table (seed, tensor_id), uniform in [-1, 1) */
    const float *full_table;   /* optional host [vocab, dim] */
    const char *name;
} tp_embedding_config;

typedef struct tp_embedding tp_embedding;

tp_status tp_embedding_create(tp_comm *comm, const tp_embedding_config *cfg, tp_embedding **out);
tp_status tp_embedding_forward(tp_embedding *e, const tp_tensor *ids, tp_tensor *y);
tp_status tp_embedding_backward(tp_embedding *e, const tp_tensor *dy); /* uses the saved ids */
tp_status tp_embedding_zero_grad(tp_embedding *e);
/* table shard [hi-lo, dim] (rows lo..hi-1 of the vocab) and its gradient (NULL before backward) */
void tp_embedding_get_shard(tp_embedding *e, int64_t *lo, int64_t *hi, tp_tensor **table,
                            tp_tensor **grad);
tp_status tp_embedding_get_full(tp_embedding *e, float *table);     /* collective; host [vocab, dim] */
tp_status tp_embedding_get_full_grad(tp_embedding *e, float *grad); /* collective */
void tp_embedding_free(tp_embedding *e);

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
    float label_smoothing;  /* 0 .. 1 */
    bool use_ignore_index;  /* rows whose target == ignore_index are ignored */
    int32_t ignore_index;   /* e.g. -100 as in PyTorch */
    const char *name;
} tp_ce_config;

typedef struct tp_vocab_ce tp_vocab_ce;

tp_status tp_vocab_ce_create(tp_comm *comm, const tp_ce_config *cfg, tp_vocab_ce **out);
/* logits [rows, vocab_local] (this rank's columns, e.g. a column-parallel
 * output without gather), targets int32 [rows]; *loss (host) = the mean loss,
 * the same on every rank. logits and targets must stay alive until backward. */
tp_status tp_vocab_ce_forward(tp_vocab_ce *ce, const tp_tensor *logits, const tp_tensor *targets,
                              float *loss);
/* dlogits [rows, vocab_local] = d(dloss * loss)/d logits (overwritten) */
tp_status tp_vocab_ce_backward(tp_vocab_ce *ce, float dloss, tp_tensor *dlogits);
void tp_vocab_ce_free(tp_vocab_ce *ce);

#ifdef __cplusplus
}
#endif
#endif /* TP_LAYERS_H */
