/* SPDX-License-Identifier: MIT */
/* tt-dp.h — tp_transformer's data parallelism (--dp D): option checks, the
 * TP and DP groups, each replica's slice of the global batch and its
 * weight, the logits gathered over the replicas, and the TP vs DP
 * communication counters. Example code, not the library (that is
 * tp_dp_* in tp-layers.h). */
#ifndef TT_DP_H
#define TT_DP_H

#include <stdbool.h>
#include <stdint.h>

#include <tp/tp-layers.h>

/* The --dp options against the others; 0, or 2 after printing why. */
typedef struct tt_dp_opts {
    int dp;           /* D (0: not given, one replica) */
    int tp;           /* --tp (0: world / D) */
    double bucket_mb; /* --dp-bucket-mb */
    bool compare;     /* --compare-dp */
    bool inside;      /* --dp-inside: DP groups inside nodes, TP across */
    bool overlap;     /* --dp-overlap: buckets reduced during backward */
} tt_dp_opts;

int tt_dp_check(const char *prog, const tt_dp_opts *d, int64_t batch, const char *compare_tp,
                const char *npy_dir);

/* Collective over world: the rank's TP and DP communicators for D
 * replicas (tp_topology; with inside, tp_topology's groups of D are the DP
 * groups and its cross groups the TP groups). A world size that D does not
 * divide, or --tp not world / D, is TP_ERR_INVALID_ARG naming both. */
tp_status tt_dp_groups(tp_comm *world, const tt_dp_opts *d, tp_comm **tp, tp_comm **dp);

/* Replica d's weight: its share of the counted targets of the global
 * batch tgt[0, n) cut into D equal slices (1/D without ignored targets). */
float tt_dp_weight(const int32_t *tgt, int64_t n, int D, int d, bool use_ignore, int32_t ignore);

/* Collective over dp: host[0, n) of every rank concatenated in DP rank
 * order into host[0, D n) (host holds D n floats). */
tp_status tt_dp_gather(tp_comm *dp, float *host, int64_t n);

/* --dp-overlap: attach ddp to m (tp_gpt_set_dp); nothing without it. */
tp_status tt_dp_attach(const tt_dp_opts *d, tp_gpt *m, tp_dp *ddp);

/* Before backward: open ddp's overlapped round (tp_dp_begin) with --dp-overlap. */
tp_status tt_dp_begin(const tt_dp_opts *d, tp_dp *ddp, float weight);

/* Per-step sums of the counters, steps 2.. (as the means); dp_s counts
 * the nonblocking bucket reductions in flight, dp_hidden_s the part of
 * that the rank did not wait for. */
typedef struct tt_dp_acc {
    int steps;
    double tp_s, tp_hidden_s, dp_s, dp_hidden_s, tp_bytes, dp_bytes;
    uint64_t tp_calls, tp_icalls, dp_calls; /* tp_icalls: nonblocking (--overlap) */
} tt_dp_acc;

/* Add one step: tp from the TP communicator's stats, dp from the DP one's
 * (NULL without DP). */
void tt_dp_add(tt_dp_acc *a, const tp_stats *tp, const tp_stats *dp);

/* Print the TP and DP communication per step, the DP plan and the ring
 * traffic formula 2 (D-1)/D x gradient bytes. */
void tt_dp_print(const tt_dp_acc *a, const tp_dp *ddp, int D);

/* 64-bit FNV-1a of n bytes, continuing from h (start: TT_FNV0). */
#define TT_FNV0 1469598103934665603ull
uint64_t tt_fnv(uint64_t h, const void *p, size_t n);

#endif
