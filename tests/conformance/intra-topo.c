/* SPDX-License-Identifier: MIT */
/*
 * intra-topo — one rank of a job run with TP_INTRA_BACKEND: tp_topology()
 * with TP size argv[1] (default 2); then all_reduce of the world rank in
 * the TP group, in the DP group and in a split of the TP group (which
 * stays on the TP group's backend), each checked against the sum of the
 * group's world ranks. Prints one line per rank; where each group runs is
 * what TP_DEBUG=comm prints (test-intra.py reads it). Exit 0, or 1 with
 * the error.
 */
#include <stdio.h>
#include <stdlib.h>

#include <tp/tp.h>

/* Sum of the world ranks in `comm` (an all_reduce through device memory). */
static tp_status sum_ranks(tp_comm *comm, int world_rank, int32_t *sum)
{
    tp_device *dev = tp_comm_device(comm);
    int32_t mine = world_rank;
    void *d = NULL;
    tp_status st = tp_dev_alloc(dev, sizeof mine, &d);
    if (st == TP_OK)
        st = tp_dev_upload(dev, d, &mine, sizeof mine);
    if (st == TP_OK)
        st = tp_all_reduce(comm, d, d, 1, TP_I32, TP_SUM);
    if (st == TP_OK)
        st = tp_dev_download(dev, sum, d, sizeof *sum);
    tp_dev_free(dev, d);
    return st;
}

static tp_status check(const char *what, int32_t got, int32_t want, int rank)
{
    if (got == want)
        return TP_OK;
    return tp_set_error(TP_ERR_INTERNAL, "intra-topo: rank %d: %s sum %d, expected %d", rank, what,
                        (int)got, (int)want);
}

static tp_status rank_main(tp_comm *world, void *arg)
{
    int t = *(int *)arg;
    tp_comm *tp = NULL, *dp = NULL, *half = NULL;
    tp_layout l;
    tp_status st = tp_topology(world, t, false, &tp, &dp, &l);
    if (st != TP_OK)
        return st;
    int32_t s_tp = -1, s_dp = -1, s_half = -1, want_tp = 0, want_dp = 0, want_half = 0;
    /* TP groups: world ranks with the same tp_group; here the layout's
     * groups are consecutive ranks (fake nodes in blocks). */
    for (int r = l.tp_group * t; r < (l.tp_group + 1) * t; r++) {
        want_tp += r;
        if ((r - l.tp_group * t) % 2 == l.tp_rank % 2)
            want_half += r;
    }
    for (int g = 0; g < l.dp_size; g++)
        want_dp += g * t + l.tp_rank;
    st = sum_ranks(tp, l.world_rank, &s_tp);
    if (st == TP_OK)
        st = sum_ranks(dp, l.world_rank, &s_dp);
    if (st == TP_OK)
        st = tp_comm_split(tp, l.tp_rank % 2, l.tp_rank, &half);
    if (st == TP_OK)
        st = sum_ranks(half, l.world_rank, &s_half);
    if (st == TP_OK)
        st = check("TP group", s_tp, want_tp, l.world_rank);
    if (st == TP_OK)
        st = check("DP group", s_dp, want_dp, l.world_rank);
    if (st == TP_OK)
        st = check("split of the TP group", s_half, want_half, l.world_rank);
    if (st == TP_OK)
        printf("intra-topo rank=%d node=%d tp_group=%d tp_rank=%d ok\n", l.world_rank, l.node,
               l.tp_group, l.tp_rank);
    fflush(stdout);
    tp_comm_free(half);
    tp_comm_free(dp);
    tp_comm_free(tp);
    return st;
}

int main(int argc, char **argv)
{
    int t = argc > 1 ? atoi(argv[1]) : 2;
    tp_ctx *ctx = NULL;
    tp_status st = tp_init(NULL, &ctx);
    if (st == TP_OK)
        st = tp_run(ctx, rank_main, &t);
    if (st != TP_OK)
        fprintf(stderr, "intra-topo: %s\n", tp_last_error());
    tp_finalize(ctx);
    return st == TP_OK ? 0 : 1;
}
