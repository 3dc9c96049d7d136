/*
 * tp-layers.h — Megatron-style tensor-parallel layers (included by tp.h).
 *
 * Weights follow y = x W: W is [in_features, out_features], row-major.
 * A ColumnParallelLinear splits W by columns (out), a RowParallelLinear by
 * rows (in). Sizes need not divide by T: shard i is tp_shard_range(n, T, i).
 * Layers call only the communicator and device APIs; they never branch on
 * the backend. Every layer object belongs to one rank (its comm's rank).
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
    uint64_t seed;          /* master weight = (seed, tensor_id), bias = (seed, tensor_id+1) */
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
void tp_linear_free(tp_linear *layer);

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
void tp_mlp_free(tp_mlp *mlp);

#ifdef __cplusplus
}
#endif
#endif /* TP_LAYERS_H */
