/* layers-internal.h — helpers shared by the layer families (not installed). */
#ifndef TP_LAYERS_INTERNAL_H
#define TP_LAYERS_INTERNAL_H

#include <tp/tp.h>

/* A grow-only device scratch buffer owned by one layer. */
typedef struct tp_ws {
    tp_device *dev;
    void *ptr;
    size_t bytes;
} tp_ws;

tp_status tp_ws_reserve(tp_ws *ws, size_t bytes, const char *who);
void tp_ws_release(tp_ws *ws);

/* Check that t is a usable f32 activation on dev with 2..4 dims and the
 * given last dimension. `who` names the layer, `what` the tensor ("x").
 * expect_last < 0 skips that check. Writes the token count (product of
 * the leading dims). */
tp_status tp_layer_check_act(const char *who, const char *what, const tp_tensor *t, tp_device *dev,
                             int64_t *tokens);

/* Prepare output `out` to hold like's leading dims and last dim `cols`:
 * allocate it if it is zeroed (data NULL, ndim 0), else check it. `hint`
 * is appended to a last-dimension mismatch message (may be ""). */
tp_status tp_layer_prepare_out(const char *who, const char *what, tp_tensor *out,
                               const tp_tensor *like, tp_device *dev, int64_t cols,
                               const char *hint);

/* A 2-D view [rows, cols] of t's memory. */
tp_tensor tp_layer_view2(const tp_tensor *t, int64_t rows, int64_t cols);

/* Collective: every rank holds a [rows, part_i] block (part_i from the
 * offsets off[0..T]); assemble the full [rows, off[T]] matrix in dst on
 * every rank. tmp must hold rows*off[T] elements. Counts one all_gather. */
tp_status tp_layer_gather_cols(tp_comm *comm, const void *src, void *dst, void *tmp, int64_t rows,
                               const int64_t *off, size_t *counts);

/* "RowParallelLinear 'fc2' (rank 1/4)" style label; caller frees. */
char *tp_layer_label(const char *kind, const char *name, tp_comm *comm);

/* Width of a linear layer's shard of its split dimension (hi - lo). */
int64_t tp_linear_local_width(const tp_linear *l);

/* After a sequence-parallel tp_embedding_backward: the all-gathered dy
 * [n, dim] of every token (valid until the next backward); NULL without
 * sequence parallelism. */
const void *tp_embedding_gathered_dy(const tp_embedding *e);

#endif
