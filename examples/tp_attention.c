/* SPDX-License-Identifier: MIT */
/*
 * tp_attention — ParallelAttention over T ranks vs a one-rank reference.
 *
 * The TP layer (heads split across the ranks, fused QKV column-parallel,
 * out-projection row-parallel: one all-reduce forward, one backward) and a
 * one-rank layer built from the same master weights (seed) on a
 * single-rank communicator run the same input; rank 0 compares outputs and
 * input gradients, prints the max error and the compute/communication split
 * from the built-in counters, and exits 1 on a mismatch.
 *
 *   TP_BACKEND=loopback build/examples/tp_attention --tp 4
 *   TP_BACKEND=loopback build/examples/tp_attention --tp 4 --heads 8 --kv-heads 2
 *   TP_BACKEND=loopback build/examples/tp_attention --tp 4 --heads 12 --hidden 4096
 *       (the seed's Exercise 2: refused with the ways out; add --head-dim 64)
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tp/tp-transformer.h>

#include "example-common.h"

#define PROG "tp_attention"

typedef struct opts {
    int tp;
    int64_t batch, seq, hidden, heads, kv_heads, head_dim;
    uint64_t seed;
    int iters;
    bool causal, sp, bias;
    const char *npy_dir;
    int mismatch; /* set by rank 0 */
} opts;

/* 0: run, 1: --version printed, 2: error printed */
static int parse(int *argc, char ***argv, opts *o)
{
    const int64_t big = (int64_t)1 << 20;
    bool no_causal = false, no_bias = false;
    const ex_opt table[] = {
        {"tp", "N", "Tensor-parallel degree",
         "TP_WORLD_SIZE, the engine's world size under mpirun, else 1", 1, 4096, .i32 = &o->tp},
        {"batch", "B", "Batch size", NULL, 1, big, .i64 = &o->batch},
        {"seq", "S", "Sequence length", NULL, 1, big, .i64 = &o->seq},
        {"hidden", "H", "Hidden size", NULL, 1, big, .i64 = &o->hidden},
        {"heads", "N", "Query heads, >= T (T need not divide them)", NULL, 1, big,
         .i64 = &o->heads},
        {"kv-heads", "N", "KV heads dividing heads; 1 = multi-query", "heads", 1, big,
         .i64 = &o->kv_heads},
        {"head-dim", "D", "Head size", "hidden / heads", 1, big, .i64 = &o->head_dim},
        {"seed", "S", "Master weight seed", NULL, 0, INT64_MAX, .u64 = &o->seed},
        {"iters", "N", "Timed forward+backward passes", NULL, 1, 100000, .i32 = &o->iters},
        {"no-causal", NULL, "Attend to every position", "causal mask", .flag = &no_causal},
        {"no-bias", NULL, "No QKV / out-projection biases", "", .flag = &no_bias},
        {"sequence-parallel", NULL, "Shard tokens between TP regions (all-gather/reduce-scatter)",
         "", .flag = &o->sp},
        {"save-npy", "DIR",
         "Rank 0 writes x, qkv_w, qkv_b, out_w, out_b, y (full, unsharded) as float32 .npy "
         "files to DIR",
         NULL, .str = &o->npy_dir},
    };
    int rc = ex_parse_table(argc, argv, PROG,
                            "ParallelAttention (heads split over T ranks) vs a one-rank reference.",
                            NULL, table, sizeof table / sizeof table[0]);
    o->causal = o->causal && !no_causal;
    o->bias = o->bias && !no_bias;
    if (rc == 0 && o->npy_dir && ex_check_out_dir(PROG, o->npy_dir) != 0)
        return 2;
    return rc;
}

static void fill(float *a, int64_t n, uint64_t seed, uint64_t id)
{
    for (int64_t i = 0; i < n; i++)
        a[i] = tp_master_uniform(seed, id, (uint64_t)i, 1.0f);
}

/* max |a - b| and max |b| over n */
static void maxdiff(const float *a, const float *b, int64_t n, double *err, double *scale)
{
    *err = 0.0;
    *scale = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= *err))
            *err = d;
        if (fabs((double)b[i]) > *scale)
            *scale = fabs((double)b[i]);
    }
}

/* One rank's state. Host buffers are full size [N, H] (N = batch * seq):
 * x, dy the input and output gradient, y, dx the TP output and input
 * gradient, yref, dxref the one-rank reference's; w, b, wo, bo (--save-npy
 * only) the full weights gathered from the shards. */
typedef struct att_run {
    opts *o;
    tp_comm *world;
    tp_device *dev;
    int rank, T;
    int64_t N, H, lo, hi; /* this rank's token rows [lo, hi): all, or its sequence shard */
    tp_attention_config ac;
    tp_attention *att, *ref;
    tp_comm *solo;              /* rank 0 alone, for the reference */
    tp_tensor xt, dyt, yt, dxt; /* TP */
    tp_tensor xf, dyf, yr, dxr; /* reference */
    float *x, *dy, *y, *dx, *yref, *dxref;
    float *w, *b, *wo, *bo;
    float *gw, *gb, *gwo, *gbo; /* --save-npy: the gradients of one pass */
    double wall;                /* mean seconds per forward + backward */
    tp_stats stats;             /* this rank's counters over the timed passes */
} att_run;

static void att_run_free(att_run *A)
{
    tp_tensor_release(&A->xt), tp_tensor_release(&A->dyt), tp_tensor_release(&A->yt);
    tp_tensor_release(&A->dxt), tp_tensor_release(&A->xf), tp_tensor_release(&A->dyf);
    tp_tensor_release(&A->yr), tp_tensor_release(&A->dxr);
    tp_attention_free(A->att);
    tp_attention_free(A->ref);
    tp_comm_free(A->solo);
    free(A->x), free(A->dy), free(A->y), free(A->dx), free(A->yref), free(A->dxref);
    free(A->w), free(A->b), free(A->wo), free(A->bo);
    free(A->gw), free(A->gb), free(A->gwo), free(A->gbo);
}

/* The host buffers, the inputs, the TP layer and this rank's rows of x, dy. */
static tp_status set_up(att_run *A)
{
    const opts *o = A->o;
    int64_t N = A->N, H = A->H;
    tp_status st = TP_OK;
    A->x = ex_calloc(N * H, sizeof(float), "the input x", &st);
    A->dy = ex_calloc(N * H, sizeof(float), "the output gradient dy", &st);
    A->y = ex_calloc(N * H, sizeof(float), "the TP output y", &st);
    A->dx = ex_calloc(N * H, sizeof(float), "the TP input gradient dx", &st);
    A->yref = ex_calloc(N * H, sizeof(float), "the reference output", &st);
    A->dxref = ex_calloc(N * H, sizeof(float), "the reference input gradient", &st);
    EX_TRY(st);
    fill(A->x, N * H, o->seed, 1000);
    fill(A->dy, N * H, o->seed, 1001);
    A->ac = (tp_attention_config){.hidden = H,
                                  .heads = o->heads,
                                  .kv_heads = o->kv_heads,
                                  .head_dim = o->head_dim,
                                  .bias = o->bias,
                                  .causal = o->causal,
                                  .sequence_parallel = o->sp,
                                  .seed = o->seed,
                                  .tensor_id = 1,
                                  .name = "attn"};
    EX_TRY(tp_attention_create(A->world, &A->ac, &A->att));
    A->lo = 0, A->hi = N;
    if (o->sp)
        tp_shard_range(N, A->T, A->rank, &A->lo, &A->hi);
    EX_TRY(tp_tensor_alloc2(A->dev, TP_F32, A->hi - A->lo, H, &A->xt));
    EX_TRY(tp_tensor_alloc2(A->dev, TP_F32, A->hi - A->lo, H, &A->dyt));
    if (A->hi > A->lo) {
        EX_TRY(tp_tensor_upload(&A->xt, A->x + A->lo * H));
        EX_TRY(tp_tensor_upload(&A->dyt, A->dy + A->lo * H));
    }
    return TP_OK;
}

static tp_status tp_pass(att_run *A)
{
    EX_TRY(tp_attention_forward(A->att, &A->xt, A->o->batch, A->o->seq, &A->yt));
    return tp_attention_backward(A->att, &A->dyt, &A->dxt);
}

/* One warm-up forward+backward, then o->iters timed ones; the counters
 * cover the timed passes only. */
static tp_status time_tp_passes(att_run *A)
{
    EX_TRY(tp_attention_zero_grad(A->att));
    EX_TRY(tp_pass(A));
    EX_TRY(tp_dev_synchronize(A->dev));
    tp_stats_reset(A->world);
    double t0 = ex_now();
    for (int i = 0; i < A->o->iters; i++)
        EX_TRY(tp_pass(A));
    EX_TRY(tp_dev_synchronize(A->dev));
    A->wall = (ex_now() - t0) / A->o->iters;
    tp_stats_get(A->world, &A->stats);
    return TP_OK;
}

/* Sequence parallel: all-gather the row shards of y and dx into full
 * tensors and download those. Collective. */
static tp_status gather_sequence_shards(att_run *A)
{
    int T = A->T;
    int64_t N = A->N, H = A->H;
    tp_status status = TP_OK;
    tp_tensor yfull = {0}, dxfull = {0};
    size_t *counts = ex_calloc(T, sizeof(size_t), "the gather counts", &status);
    EX_CHECK(status);
    EX_CHECK(tp_tensor_alloc2(A->dev, TP_F32, N, H, &yfull));
    EX_CHECK(tp_tensor_alloc2(A->dev, TP_F32, N, H, &dxfull));
    for (int i = 0; i < T; i++) {
        int64_t a, c;
        tp_shard_range(N, T, i, &a, &c);
        counts[i] = (size_t)((c - a) * H);
    }
    EX_CHECK(tp_all_gatherv(A->world, A->yt.data, yfull.data, counts, TP_F32));
    EX_CHECK(tp_all_gatherv(A->world, A->dxt.data, dxfull.data, counts, TP_F32));
    EX_CHECK(tp_tensor_download(&yfull, A->y));
    EX_CHECK(tp_tensor_download(&dxfull, A->dx));
done:
    tp_tensor_release(&yfull);
    tp_tensor_release(&dxfull);
    free(counts);
    return status;
}

/* The full y and dx on every rank. */
static tp_status fetch_outputs(att_run *A)
{
    if (A->o->sp)
        return gather_sequence_shards(A);
    EX_TRY(tp_tensor_download(&A->yt, A->y));
    return tp_tensor_download(&A->dxt, A->dx);
}

/* For --save-npy: the full weights from the shards and the full parameter
 * gradients of one more pass from zero (the timed passes accumulated
 * theirs); zeros for the biases of a layer without them. Collective. */
static tp_status gather_full_weights(att_run *A)
{
    const opts *o = A->o;
    int64_t H = A->H;
    int64_t hd = o->head_dim ? o->head_dim : H / o->heads;
    int64_t kv = o->kv_heads ? o->kv_heads : o->heads, fw = (o->heads + 2 * kv) * hd;
    tp_status st = TP_OK;
    A->w = ex_calloc(H * fw, sizeof(float), "the full QKV weight", &st);
    A->b = ex_calloc(fw, sizeof(float), "the full QKV bias", &st);
    A->wo = ex_calloc(o->heads * hd * H, sizeof(float), "the full out-projection weight", &st);
    A->bo = ex_calloc(H, sizeof(float), "the full out-projection bias", &st);
    A->gw = ex_calloc(H * fw, sizeof(float), "the full QKV weight gradient", &st);
    A->gb = ex_calloc(fw, sizeof(float), "the full QKV bias gradient", &st);
    A->gwo = ex_calloc(o->heads * hd * H, sizeof(float), "the out weight gradient", &st);
    A->gbo = ex_calloc(H, sizeof(float), "the full out-projection bias gradient", &st);
    EX_TRY(st);
    EX_TRY(tp_attention_get_full(A->att, A->w, A->b, A->wo, A->bo));
    EX_TRY(tp_attention_zero_grad(A->att));
    EX_TRY(tp_pass(A)); /* the same y and dx again */
    EX_TRY(tp_attention_get_full_grad(A->att, A->gw, A->gb, A->gwo, A->gbo));
    if (!o->bias) {
        memset(A->b, 0, sizeof(float) * (size_t)fw);
        memset(A->bo, 0, sizeof(float) * (size_t)H);
        memset(A->gb, 0, sizeof(float) * (size_t)fw);
        memset(A->gbo, 0, sizeof(float) * (size_t)H);
    }
    return TP_OK;
}

/* Rank 0: the one-rank reference, the same master weights on the T=1
 * communicator A->solo, run on the full x and dy. */
static tp_status run_reference(att_run *A)
{
    int64_t N = A->N, H = A->H;
    tp_attention_config ac = A->ac;
    ac.sequence_parallel = false;
    EX_TRY(tp_attention_create(A->solo, &ac, &A->ref));
    EX_TRY(tp_tensor_alloc2(A->dev, TP_F32, N, H, &A->xf));
    EX_TRY(tp_tensor_alloc2(A->dev, TP_F32, N, H, &A->dyf));
    EX_TRY(tp_tensor_upload(&A->xf, A->x));
    EX_TRY(tp_tensor_upload(&A->dyf, A->dy));
    EX_TRY(tp_attention_forward(A->ref, &A->xf, A->o->batch, A->o->seq, &A->yr));
    EX_TRY(tp_attention_backward(A->ref, &A->dyf, &A->dxr));
    EX_TRY(tp_tensor_download(&A->yr, A->yref));
    return tp_tensor_download(&A->dxr, A->dxref);
}

/* Rank 0: y and dx vs the reference. Tolerance: both are f32 evaluations
 * of the same math that differ only in how the K-term sums are split (over
 * T ranks, then all-reduced), so each is within ~K u sum|terms| of the
 * exact value, u = 6e-8, K <= the longest sum (hidden, or heads*head_dim,
 * or seq) — a few 1e-5 relative at these sizes through the softmax;
 * 1e-3 * max(1, max|ref|) leaves a wide margin while any sharding bug is
 * O(max|ref|). Sets o->mismatch. */
static void check_agreement(att_run *A)
{
    int64_t n = A->N * A->H;
    double ey, sy, ex_, sx;
    maxdiff(A->y, A->yref, n, &ey, &sy);
    maxdiff(A->dx, A->dxref, n, &ex_, &sx);
    double tol_y = 1e-3 * (sy > 1.0 ? sy : 1.0), tol_x = 1e-3 * (sx > 1.0 ? sx : 1.0);
    bool bad = !(ey <= tol_y) || !(ex_ <= tol_x);
    A->o->mismatch = bad;
    printf("  TP vs one-rank reference: y max abs err %.3e (tol %.1e), dx max abs err %.3e "
           "(tol %.1e) -> %s\n",
           ey, tol_y, ex_, tol_x, bad ? "MISMATCH" : "AGREE");
}

/* The configuration and the heads rank 0 holds. */
static void print_header(const att_run *A)
{
    const opts *o = A->o;
    int64_t qlo, qhi, kvlo, kvhi, hd;
    tp_attention_get_info(A->att, &hd, &qlo, &qhi, &kvlo, &kvhi);
    printf("tp_attention: T=%d backend=%s device=%s batch=%lld seq=%lld hidden=%lld heads=%lld "
           "kv_heads=%lld head_dim=%lld%s%s\n",
           A->T, ex_backend_name(), tp_device_name(A->dev), (long long)o->batch, (long long)o->seq,
           (long long)A->H, (long long)o->heads, (long long)(o->kv_heads ? o->kv_heads : o->heads),
           (long long)hd, o->causal ? " causal" : "", o->sp ? " sequence-parallel" : "");
    printf("  rank 0 holds query heads [%lld, %lld) and KV heads [%lld, %lld)\n", (long long)qlo,
           (long long)qhi, (long long)kvlo, (long long)kvhi);
}

/* Rank 0's compute/communication split per phase from the counters, and
 * the wall time. */
static void print_timing(const att_run *A)
{
    const tp_stats *s = &A->stats;
    int iters = A->o->iters;
    for (int ph = 0; ph < 2; ph++) {
        double gm = s->gemm[ph].seconds / iters, kr = s->kernel[ph].seconds / iters, cm = 0;
        uint64_t calls = 0, bytes = 0;
        for (int op = 0; op < TP_OP_COUNT; op++) {
            cm += s->comm[ph][op].seconds / iters;
            calls += s->comm[ph][op].calls;
            bytes += s->comm[ph][op].bytes;
        }
        printf("  %-8s (rank 0, mean of %d): gemm %.3f ms (%.2f GFLOP/s), other kernels %.3f ms, "
               "comm %.3f ms in %.2f call(s) of %.1f KiB -> comm %.1f%%\n",
               tp_phase_name((tp_phase)ph), iters, 1e3 * gm,
               gm > 0 ? s->gemm_flops[ph] / iters / gm * 1e-9 : 0.0, 1e3 * kr, 1e3 * cm,
               (double)calls / iters, (double)bytes / (double)(calls ? calls : 1) / 1024.0,
               gm + kr + cm > 0 ? 100.0 * cm / (gm + kr + cm) : 0.0);
    }
    printf("  wall per forward+backward: %.3f ms\n", 1e3 * A->wall);
    ex_print_memory(s, "  ", "rank 0, peak over the timed passes");
}

/* config.json: every setting that determines the dumped tensors. */
static int write_config(const att_run *A, int64_t hd)
{
    const opts *o = A->o;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", o->npy_dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "error: cannot write %s: %s\n", path, strerror(errno));
        return 1;
    }
    fprintf(f,
            "{\n  \"T\": %d,\n  \"seed\": %llu,\n  \"batch\": %lld,\n  \"seq\": %lld,\n"
            "  \"hidden\": %lld,\n  \"heads\": %lld,\n  \"kv_heads\": %lld,\n"
            "  \"head_dim\": %lld,\n  \"bias\": %s,\n  \"causal\": %s,\n"
            "  \"sequence_parallel\": %s,\n  \"scale\": \"1/sqrt(head_dim)\",\n"
            "  \"dtype\": \"f32\",\n  \"grads\": \"one forward+backward from zero\"\n}\n",
            A->T, (unsigned long long)o->seed, (long long)o->batch, (long long)o->seq,
            (long long)A->H, (long long)o->heads, (long long)(o->kv_heads ? o->kv_heads : o->heads),
            (long long)hd, o->bias ? "true" : "false", o->causal ? "true" : "false",
            o->sp ? "true" : "false");
    return fclose(f) != 0;
}

/* Rank 0, --save-npy: config.json, x, dy, the full weights, y, dx and the
 * parameter gradients. */
static tp_status save_npy(const att_run *A)
{
    const opts *o = A->o;
    const char *dir = o->npy_dir;
    int64_t N = A->N, H = A->H, hd, qlo, qhi, kvlo, kvhi;
    tp_attention_get_info(A->att, &hd, &qlo, &qhi, &kvlo, &kvhi);
    int64_t kv = o->kv_heads ? o->kv_heads : o->heads, fw = (o->heads + 2 * kv) * hd;
    int64_t sx2[2] = {N, H}, sw[2] = {H, fw}, sb[1] = {fw}, swo[2] = {o->heads * hd, H},
            sbo[1] = {H};
    if (ex_write_npy(dir, "x.npy", A->x, 2, sx2) || ex_write_npy(dir, "qkv_w.npy", A->w, 2, sw) ||
        ex_write_npy(dir, "qkv_b.npy", A->b, 1, sb) ||
        ex_write_npy(dir, "out_w.npy", A->wo, 2, swo) ||
        ex_write_npy(dir, "out_b.npy", A->bo, 1, sbo) || ex_write_npy(dir, "y.npy", A->y, 2, sx2) ||
        ex_write_npy(dir, "dy.npy", A->dy, 2, sx2) || ex_write_npy(dir, "dx.npy", A->dx, 2, sx2) ||
        ex_write_npy(dir, "grad_qkv_w.npy", A->gw, 2, sw) ||
        ex_write_npy(dir, "grad_qkv_b.npy", A->gb, 1, sb) ||
        ex_write_npy(dir, "grad_out_w.npy", A->gwo, 2, swo) ||
        ex_write_npy(dir, "grad_out_b.npy", A->gbo, 1, sbo) || write_config(A, hd))
        return tp_set_error(TP_ERR_IO, "writing .npy files to %s failed", dir);
    printf("  wrote config.json and x, dy, qkv_w, qkv_b, out_w, out_b, y, dx, grad_qkv_w, "
           "grad_qkv_b, grad_out_w, grad_out_b .npy to %s (qkv_w columns: Q heads, then K heads, "
           "then V heads, head_dim each; y = attn(x) with x [batch*seq, hidden], batch-major; "
           "gradients of sum(y * dy))\n",
           dir);
    return TP_OK;
}

/* Every rank runs the TP layer and its collectives; rank 0 then runs the
 * one-rank reference, compares and reports. */
static tp_status run_rank(att_run *A)
{
    EX_TRY(set_up(A));
    EX_TRY(time_tp_passes(A));
    EX_TRY(fetch_outputs(A));
    if (A->o->npy_dir)
        EX_TRY(gather_full_weights(A));
    EX_TRY(tp_comm_split(A->world, A->rank == 0 ? 0 : -1, 0, &A->solo));
    if (A->rank != 0)
        return TP_OK;
    EX_TRY(run_reference(A));
    print_header(A);
    check_agreement(A);
    print_timing(A);
    return A->o->npy_dir ? save_npy(A) : TP_OK;
}

static tp_status rank_main(tp_comm *world, void *arg)
{
    opts *o = arg;
    att_run A = {.o = o,
                 .world = world,
                 .dev = tp_comm_device(world),
                 .rank = tp_comm_rank(world),
                 .T = tp_comm_size(world),
                 .N = o->batch * o->seq,
                 .H = o->hidden};
    tp_status st = run_rank(&A);
    att_run_free(&A);
    return st;
}

int main(int argc, char **argv)
{
    opts o = {.batch = 2,
              .seq = 16,
              .hidden = 64,
              .heads = 8,
              .seed = 1234,
              .iters = 5,
              .causal = true,
              .bias = true};
    int rc = parse(&argc, &argv, &o);
    if (rc)
        return rc == 1 ? 0 : 2;
    if (ex_run(PROG, o.tp, &argc, &argv, rank_main, &o, NULL) != TP_OK)
        return 1;
    if (o.mismatch) {
        fprintf(stderr, "tp_attention: MISMATCH between the TP layer and the one-rank reference\n");
        return 1;
    }
    return 0;
}
