/* SPDX-License-Identifier: MIT */
/* layer_table.c — what tp-bench knows about each layer family without running
 * it: names, the dimension split over T, FLOPs, and the communication the
 * seed's formula predicts. layer_run.c runs them. A new layer (attention,
 * block, transformer) adds a row here and a runner in layer_run.c. */
#include "bench.h"

#include <string.h>

typedef enum layer_kind {
    LK_LINEAR_COL,
    LK_LINEAR_ROW,
    LK_MLP,
    /* xf_table.c / xf_run.c */
    LK_ATTENTION = BENCH_LK_ATTENTION,
    LK_BLOCK = BENCH_LK_BLOCK,
    LK_TRANSFORMER = BENCH_LK_TRANSFORMER,
} layer_kind;

struct bench_layer_desc {
    const char *name;
    layer_kind kind;
};

static const bench_layer_desc layer_table[] = {
    {"linear-col", LK_LINEAR_COL}, {"linear-row", LK_LINEAR_ROW}, {"mlp", LK_MLP},
    {"attention", LK_ATTENTION},   {"block", LK_BLOCK},           {"transformer", LK_TRANSFORMER},
};

const bench_layer_desc *bench_layer_find(const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < G_N_ELEMENTS(layer_table); i++)
        if (strcmp(layer_table[i].name, name) == 0)
            return &layer_table[i];
    return NULL;
}

const char *bench_layer_names(void)
{
    return "linear-col, linear-row, mlp, attention, block, transformer";
}

int bench_layer_kind(const bench_layer_desc *d)
{
    return d ? (int)d->kind : -1;
}

/* Shapes: linear-col hidden -> ffn (columns of W split), linear-row
 * ffn -> hidden (rows of W split, input is the shard), mlp hidden -> ffn
 * -> hidden. In all three the split dimension is ffn. */
int64_t bench_layer_split_dim(const bench_layer_desc *d, const bench_opts *o, const char **what)
{
    if (what)
        *what = "--ffn";
    if (!d)
        return 0;
    if (bench_layer_is_xf(d->kind))
        return bench_xf_split_dim(d->kind, o, what);
    return o->ffn;
}

/* Backward computes dX and dW: twice the forward's GEMM work. */
double bench_layer_flops(const bench_layer_desc *d, const bench_opts *o, int phase)
{
    double t = (double)o->tokens, h = (double)o->hidden, f = (double)o->ffn;
    double fwd = 0;
    if (bench_layer_is_xf(d->kind))
        return bench_xf_flops(d->kind, o, phase);
    switch (d->kind) {
        case LK_LINEAR_COL:
        case LK_LINEAR_ROW: fwd = 2.0 * t * h * f; break;
        case LK_MLP: fwd = 4.0 * t * h * f; break;
        default: break;
    }
    return phase == 0 ? fwd : 2.0 * fwd;
}

/* Megatron's f/g pair. Forward: a row layer and the MLP all-reduce their
 * [tokens, hidden] output once; a column layer (no gather_output) does not
 * communicate. Backward: a column layer and the MLP all-reduce the input
 * gradient [tokens, hidden] once; a row layer whose input is parallel does
 * not communicate. */
int bench_layer_expected_comm(const bench_layer_desc *d, const bench_opts *o, int T, int phase,
                              bench_layer_comm *out, int max)
{
    (void)T;
    int n = 0;
    bool reduces = false;
    if (bench_layer_is_xf(d->kind))
        return bench_xf_expected_comm(d->kind, o, T, phase, out, max);
    /* bytes per element of the layer's dtype (--dtype; this file does not link libtp) */
    double elt = o->gemm_dtype == TP_F32 ? 4.0 : 2.0;
    switch (d->kind) {
        case LK_LINEAR_COL: reduces = phase == 1; break;
        case LK_LINEAR_ROW: reduces = phase == 0; break;
        case LK_MLP: reduces = true; break;
        default: break;
    }
    if (reduces && n < max)
        out[n++] =
            (bench_layer_comm){TP_OP_ALL_REDUCE, 1, (double)o->tokens * (double)o->hidden * elt};
    return n;
}
