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
 */
#include <stdio.h>
#include <stdlib.h>

#include <tp/tp-layers.h>

static tp_status rank_main(tp_comm *world, void *arg)
{
    tp_status *got = arg; /* [rank]; with processes each sees only its own */
    int W = tp_comm_size(world), r = tp_comm_rank(world);
    tp_linear *l = NULL;
    tp_linear_config c = {.in_features = 2 * W + 1,
                          .out_features = 5,
                          .bias = true,
                          .input_is_parallel = true,
                          .name = "uneven"};
    tp_status st = tp_row_linear_create(world, &c, &l);
    if (st != TP_OK) {
        got[r] = TP_OK; /* not the status under test */
        fprintf(stderr, "rank %d: create failed: %s\n", r, tp_last_error());
        return st;
    }
    tp_tensor x = {0}, y = {0};
    st = tp_tensor_alloc2(tp_comm_device(world), TP_F32, 4, 3, &x);
    if (st == TP_OK)
        st = tp_linear_forward(l, &x, &y);
    got[r] = st;
    printf("rank %d: %s: %s\n", r, tp_status_string(st), st != TP_OK ? tp_last_error() : "");
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
