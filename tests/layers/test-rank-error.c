/* SPDX-License-Identifier: MIT */
/*
 * test-rank-error.c — a shape error that only some ranks hit must not hang
 * the others.
 *
 * RowParallelLinear with in_features = 2W + 1 over W ranks: rank 0 holds 3
 * input columns, the others 2. Every rank passes x with 3 columns, so rank 0
 * proceeds to the all-reduce while the others refuse x (TP_ERR_SHAPE) and
 * return from their rank function. Rank 0 must then get an error from the
 * backend (the peer left: TP_ERR_PEER, or TP_ERR_TIMEOUT after
 * TP_TIMEOUT_S) instead of waiting forever, and tp_run must fail.
 * Runs on loopback (threads) and tcp (processes); not under mpi, whose
 * plugin aborts the whole job when a rank fails (by design).
 *
 * With argument "block": a TransformerBlock with overlap 3 (the chained
 * attention -> MLP forward, all-reduces left in flight between them) at
 * 122 tokens, where the ranks other than 0 pass x with a wrong hidden
 * size. Rank 0 issues the attention's chunk all-reduces and then waits
 * for the first one in the MLP's first chunk: it must get the peer's
 * absence as an error, end every request it started, and free the block.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tp/tp-layers.h>
#include <tp/tp-transformer.h>

/* A layer that could not be created: not the status under test. */
static tp_status create_failed(tp_status *got, int r, tp_status st)
{
    got[r] = TP_OK;
    fprintf(stderr, "rank %d: create failed: %s\n", r, tp_last_error());
    return st;
}

/* got[r] = what the rank's layer call returned, and say it. */
static void report(tp_status *got, int r, tp_status st)
{
    got[r] = st;
    printf("rank %d: %s: %s\n", r, tp_status_string(st), st != TP_OK ? tp_last_error() : "");
}

static tp_status block_main(tp_comm *world, tp_status *got)
{
    int r = tp_comm_rank(world);
    tp_block_config c = {
        .hidden = 12, .heads = 3, .ffn = 16, .bias = true, .causal = true, .overlap = 3};
    tp_block *b = NULL;
    tp_status st = tp_block_create(world, &c, &b);
    if (st != TP_OK)
        return create_failed(got, r, st);
    tp_tensor x = {0}, y = {0};
    float host[122 * 13];
    for (int i = 0; i < 122 * 13; i++)
        host[i] = (float)(i % 17) / 17.0f - 0.5f;
    st = tp_tensor_alloc2(tp_comm_device(world), TP_F32, 122, r == 0 ? 12 : 13, &x);
    if (st == TP_OK)
        st = tp_tensor_upload(&x, host);
    if (st == TP_OK)
        st = tp_block_forward(b, &x, 2, 61, &y);
    report(got, r, st);
    tp_tensor_release(&x);
    tp_tensor_release(&y);
    tp_block_free(b);
    return st;
}

static tp_status rank_main(tp_comm *world, void *arg)
{
    tp_status *got = arg; /* [rank]; with processes each sees only its own */
    const char *mode = getenv("RANK_ERROR_LAYER");
    if (mode && strcmp(mode, "block") == 0)
        return block_main(world, got);
    int W = tp_comm_size(world), r = tp_comm_rank(world);
    tp_linear *l = NULL;
    tp_linear_config c = {.in_features = 2 * W + 1,
                          .out_features = 5,
                          .bias = true,
                          .input_is_parallel = true,
                          .name = "uneven"};
    tp_status st = tp_row_linear_create(world, &c, &l);
    if (st != TP_OK)
        return create_failed(got, r, st);
    tp_tensor x = {0}, y = {0};
    st = tp_tensor_alloc2(tp_comm_device(world), TP_F32, 4, 3, &x);
    if (st == TP_OK)
        st = tp_linear_forward(l, &x, &y);
    report(got, r, st);
    tp_tensor_release(&x);
    tp_tensor_release(&y);
    tp_linear_free(l);
    return st;
}

int main(int argc, char **argv)
{
    tp_config cfg = {.argc = &argc, .argv = &argv};
    tp_ctx *ctx = NULL;
    tp_status st = tp_init(&cfg, &ctx);
    if (st == TP_ERR_UNAVAILABLE) {
        printf("test-rank-error: skipped: the backend cannot run here: %s\n", tp_last_error());
        return 77;
    }
    if (st != TP_OK) {
        fprintf(stderr, "test-rank-error: tp_init: %s: %s\n", tp_status_string(st),
                tp_last_error());
        return 1;
    }
    int W = tp_ctx_world_size(ctx);
    if (W < 2) {
        tp_finalize(ctx);
        printf("test-rank-error: skipped: needs 2 or more ranks, got %d\n", W);
        return 77;
    }
    tp_status *got = malloc(sizeof(tp_status) * (size_t)W);
    for (int i = 0; got && i < W; i++)
        got[i] = (tp_status)-1; /* rank not in this process */
    st = got ? tp_run(ctx, rank_main, got) : TP_ERR_NO_MEMORY;
    int bad = st == TP_OK;
    if (bad)
        fprintf(stderr, "test-rank-error: tp_run returned TP_OK, expected the ranks' errors\n");
    for (int i = 0; got && i < W; i++) {
        if (got[i] == (tp_status)-1)
            continue;
        int ok =
            i == 0 ? got[i] == TP_ERR_PEER || got[i] == TP_ERR_TIMEOUT : got[i] == TP_ERR_SHAPE;
        if (!ok) {
            fprintf(stderr, "test-rank-error: rank %d got %s, expected %s\n", i,
                    tp_status_string(got[i]),
                    i == 0 ? "TP_ERR_PEER or TP_ERR_TIMEOUT" : "TP_ERR_SHAPE");
            bad = 1;
        }
    }
    free(got);
    tp_finalize(ctx);
    return bad ? 1 : 0;
}
