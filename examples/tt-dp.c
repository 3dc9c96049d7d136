/* SPDX-License-Identifier: MIT */
/*
 * tt-dp.c — data parallelism for tp_transformer (--dp D, --compare-dp).
 *
 * The global batch of B sequences is cut into D equal slices of B/D
 * consecutive sequences; replica d (the ranks whose DP rank is d) trains on
 * sequences [d B/D, (d+1) B/D). Each replica's loss is the mean over its
 * counted targets, so the global mean is sum_d w_d loss_d with w_d = n_d / N
 * (n_d counted targets of slice d, N of the whole batch; 1/D without
 * --ignore-every), and the same weights make the gradient average exact
 * (tp_dp_all_reduce_grads).
 */
#include "tt-dp.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tt_dp_check(const char *prog, const tt_dp_opts *d, int64_t batch, const char *compare_tp,
                const char *npy_dir)
{
    int D = d->dp ? d->dp : 1;
    const char *bad = NULL;
    if (batch % D != 0) {
        fprintf(stderr,
                "%s: --batch %lld does not divide by --dp %d: every replica trains on an equal "
                "slice of the global batch; choose a batch that is a multiple of %d (e.g. %lld)\n",
                prog, (long long)batch, D, D, (long long)((batch / D + 1) * D));
        return 2;
    }
    if (d->bucket_mb * 1048576.0 < TP_DP_MIN_BUCKET_BYTES) {
        fprintf(stderr, "%s: --dp-bucket-mb %g is below the smallest bucket, %d bytes (%.3g MiB)\n",
                prog, d->bucket_mb, TP_DP_MIN_BUCKET_BYTES, TP_DP_MIN_BUCKET_BYTES / 1048576.0);
        return 2;
    }
    if (d->compare && compare_tp)
        bad = "--compare-dp and --compare-tp: compare one thing per run";
    else if (d->dp && npy_dir)
        bad = "--save-npy with --dp: the dump is of one replica's batch; run it without --dp";
    else if (d->compare && !d->dp)
        bad = "--compare-dp needs --dp D (the replicas to compare with one)";
    else if (d->inside && !d->dp)
        bad = "--dp-inside needs --dp D";
    else if (d->overlap && !d->dp)
        bad = "--dp-overlap needs --dp D";
    if (bad) {
        fprintf(stderr, "%s: %s\n", prog, bad);
        return 2;
    }
    return 0;
}

tp_status tt_dp_groups(tp_comm *world, const tt_dp_opts *d, tp_comm **tp, tp_comm **dp)
{
    int W = tp_comm_size(world), D = d->dp;
    *tp = *dp = NULL;
    if (d->tp && d->tp * D != W)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "--tp %d --dp %d: the world has %d rank%s, expected T x D = %d; start "
                            "%d ranks (mpirun -n, tp-launch -n, TP_WORLD_SIZE) or change --tp/--dp",
                            d->tp, D, W, W == 1 ? "" : "s", d->tp * D, d->tp * D);
    if (W % D != 0)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "--dp %d: the world has %d rank%s, not a multiple of D = %d (world = T "
                            "x D); start a multiple of %d ranks, or give --tp T to start T x %d",
                            D, W, W == 1 ? "" : "s", D, D, D);
    tp_layout l;
    if (!d->inside)
        return tp_topology(world, W / D, false, tp, dp, &l);
    /* DP groups of D ranks inside nodes (on the intra backend if set), TP
     * groups across them: tp_topology's roles swapped */
    return tp_topology(world, D, false, dp, tp, &l);
}

float tt_dp_weight(const int32_t *tgt, int64_t n, int D, int d, bool use_ignore, int32_t ignore)
{
    if (!use_ignore)
        return 1.0f / (float)D;
    int64_t per = n / D, all = 0, mine = 0;
    for (int64_t i = 0; i < n; i++) {
        bool counted = tgt[i] != ignore;
        all += counted;
        mine += counted && i / per == d;
    }
    return all ? (float)((double)mine / (double)all) : 1.0f / (float)D;
}

tp_status tt_dp_gather(tp_comm *dp, float *host, int64_t n)
{
    tp_device *dev = tp_comm_device(dp);
    int D = tp_comm_size(dp), r = tp_comm_rank(dp);
    size_t bytes = (size_t)n * sizeof(float);
    void *buf = NULL;
    tp_status st = tp_dev_alloc(dev, bytes * (size_t)D + 1, &buf);
    char *mine = (char *)buf + bytes * (size_t)r;
    if (st == TP_OK)
        st = tp_dev_upload(dev, mine, host, bytes);
    if (st == TP_OK)
        st = tp_all_gather(dp, mine, buf, (size_t)n, TP_F32);
    if (st == TP_OK)
        st = tp_dev_download(dev, host, buf, bytes * (size_t)D);
    tp_dev_free(dev, buf);
    return st;
}

tp_status tt_dp_attach(const tt_dp_opts *d, tp_gpt *m, tp_dp *ddp)
{
    return d->overlap && ddp ? tp_gpt_set_dp(m, ddp) : TP_OK;
}

tp_status tt_dp_begin(const tt_dp_opts *d, tp_dp *ddp, float weight)
{
    return d->overlap && ddp ? tp_dp_begin(ddp, weight) : TP_OK;
}

/* Blocking and nonblocking calls; *hidden: the nonblocking ones' time in
 * flight that the rank did not wait for. */
static void comm_sums(const tp_stats *s, double *sec, double *hidden, double *bytes,
                      uint64_t *calls, uint64_t *icalls)
{
    for (int ph = 0; ph < TP_PHASE_COUNT; ph++)
        for (int op = 0; op < TP_OP_COUNT; op++) {
            const tp_icounter *ic = &s->icomm[ph][op];
            *sec += s->comm[ph][op].seconds + ic->seconds;
            *hidden += ic->seconds - ic->exposed_seconds;
            *bytes += (double)(s->comm[ph][op].bytes + ic->bytes);
            *calls += s->comm[ph][op].calls + ic->calls;
            *icalls += ic->calls;
        }
}

void tt_dp_add(tt_dp_acc *a, const tp_stats *tp, const tp_stats *dp)
{
    uint64_t dp_icalls = 0;
    a->steps++;
    comm_sums(tp, &a->tp_s, &a->tp_hidden_s, &a->tp_bytes, &a->tp_calls, &a->tp_icalls);
    if (dp)
        comm_sums(dp, &a->dp_s, &a->dp_hidden_s, &a->dp_bytes, &a->dp_calls, &dp_icalls);
}

void tt_dp_print(const tt_dp_acc *a, const tp_dp *ddp, int D)
{
    double n = a->steps ? a->steps : 1;
    printf("   TP communication per step (rank 0, its TP group's tp_stats): %.1f calls, %.0f B "
           "payload, %.3f ms",
           (double)a->tp_calls / n, a->tp_bytes / n, 1e3 * a->tp_s / n);
    if (a->tp_icalls) /* --overlap: in flight = hidden + exposed (the wait) */
        printf(" = hidden behind compute %.3f + exposed %.3f (%.1f nonblocking calls in flight "
               "from issue to completion)",
               1e3 * a->tp_hidden_s / n, 1e3 * (a->tp_s - a->tp_hidden_s) / n,
               (double)a->tp_icalls / n);
    printf("\n");
    if (!ddp)
        return;
    int buckets = 0;
    size_t grad = 0, cap = 0;
    tp_dp_get_info(ddp, &buckets, &grad, &cap);
    printf("   DP communication per step (rank 0, its DP group's tp_stats): %.1f calls, %.0f B "
           "payload, %.3f ms = hidden behind backward %.3f (%.0f%%) + exposed %.3f (buckets: time "
           "in flight, summed; queued ones overlap)\n",
           (double)a->dp_calls / n, a->dp_bytes / n, 1e3 * a->dp_s / n, 1e3 * a->dp_hidden_s / n,
           a->dp_s > 0 ? 100.0 * a->dp_hidden_s / a->dp_s : 0.0,
           1e3 * (a->dp_s - a->dp_hidden_s) / n);
    printf("   DP plan: %d bucket%s of <= %.4g MiB per step for %zu gradient bytes, + 1 all-reduce "
           "of the loss (4 B); ring traffic 2 (D-1)/D x %zu = %.0f B per rank and step\n",
           buckets, buckets == 1 ? "" : "s", (double)cap / 1048576.0, grad, grad,
           2.0 * (D - 1) / D * (double)grad);
}

uint64_t tt_fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ c[i]) * 1099511628211ull;
    return h;
}
