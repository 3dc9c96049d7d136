/* SPDX-License-Identifier: MIT */
/*
 * test-dp.c — tp_dp (core/layers/dp.c) on groups of D = 1..W ranks: the
 * bucketed weighted gradient sum against a double-precision host sum of
 * every rank's gradient (each rank regenerates the others' from their
 * seeds), the bucket count and bytes against a count made here from the
 * sizes, plans that differ across ranks refused on every rank without a
 * hang, the replica check, and bad arguments; the overlapped round
 * (tp_dp_begin, tp_dp_grad_ready) bitwise equal to the non-overlapped
 * reduction, alone and with a GPT of T x D ranks (T = 1, 2; D = 2, 3; odd
 * sizes) trained a few steps with overlap on and off from the same start.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <tp/tp-layers.h>
#include <tp/tp-transformer.h>

#include "tp-test.h"

enum {
    NP = 5
};
/* sizes of the parameters; odd on purpose (they straddle small buckets) */
static const int64_t SIZES[NP] = {1, 37, 5, 1000, 3};
static const bool REPL[NP] = {true, false, true, false, false};

/* expr returns want with a message containing `part` (recorded per rank:
 * bodies run on rank threads). */
#define EXPECT_ST(k, expr, want, part)                                                             \
    do {                                                                                           \
        tp_status g_ = (expr);                                                                     \
        EXPECT((k), g_ == (want) && strstr(tp_last_error(), (part)) != NULL,                       \
               "%s -> %s (%s), expected %s with '%s'", #expr, tp_status_string(g_),                \
               tp_last_error(), tp_status_string(want), (part));                                   \
    } while (0)

typedef struct params {
    tp_tensor v[NP], g[NP];
    tp_param p[NP];
} params;

/* Rank r's gradient of parameter i (values from its own seed). */
static void grad_of(int r, int i, float *h)
{
    tpt_fill(h, SIZES[i], 1000u + 16u * (uint64_t)r + (uint64_t)i);
}

static void make_params(tpt_rank *k, params *ps, int extra)
{
    for (int i = 0; i < NP; i++) {
        int64_t n = SIZES[i] + (i == 1 ? extra : 0);
        float *h = tpt_falloc(n);
        grad_of(k->r, i, h);
        ps->v[i] = tpt_upload2(k, 1, n, h);
        ps->g[i] = tpt_upload2(k, 1, n, h);
        free(h);
        ps->p[i] = (tp_param){.name = "p",
                              .value = &ps->v[i],
                              .grad = &ps->g[i],
                              .replicated = REPL[i],
                              .ndim = 1,
                              .full_shape = {n, 0}};
    }
}

static void free_params(params *ps)
{
    for (int i = 0; i < NP; i++)
        tp_tensor_release(&ps->v[i]), tp_tensor_release(&ps->g[i]);
}

/* Buckets of `cap` bytes over n f32 elements, counted here. */
static int buckets_for(int64_t n, size_t cap)
{
    int64_t per = (int64_t)(cap / 4);
    return (int)((n + per - 1) / per);
}

/* The same reduction as an overlapped round, the gradients handed over
 * one by one from the last parameter (as backward would), one of them
 * twice (refused: a second backward's gradient would be lost) and a
 * tensor d does not hold once: every gradient bitwise the
 * non-overlapped result (in ps), `want` calls; some started before the
 * round's end whenever there are several buckets. */
static void check_overlapped(tpt_rank *k, params *ps, tp_dp *d, float w, size_t cap, int want)
{
    float *before[NP], *h = tpt_falloc(1000);
    for (int i = 0; i < NP; i++) {
        before[i] = tpt_download(k, &ps->g[i]);
        grad_of(k->r, i, h);
        EXPECT_OK(k, tp_tensor_upload(&ps->g[i], h));
    }
    tp_tensor other = tpt_upload2(k, 1, 3, h);
    tp_stats_reset(k->g);
    EXPECT_OK(k, tp_dp_grad_ready(d, &ps->g[NP - 1])); /* no round: nothing */
    EXPECT_OK(k, tp_dp_begin(d, w));
    EXPECT_ST(k, tp_dp_begin(d, w), TP_ERR_INVALID_ARG, "already open");
    EXPECT_OK(k, tp_dp_grad_ready(d, &other));
    for (int i = NP - 1; i >= 1; i--)
        EXPECT_OK(k, tp_dp_grad_ready(d, &ps->g[i]));
    EXPECT_ST(k, tp_dp_grad_ready(d, &ps->g[NP - 1]), TP_ERR_INVALID_ARG, "twice in one round");
    tp_stats s;
    tp_stats_get(k->g, &s);
    uint64_t early = tp_stats_calls(&s, TP_PHASE_COUNT, TP_OP_ALL_REDUCE);
    EXPECT_ST(k, tp_dp_all_reduce_grads(d, w * 0.5f), TP_ERR_INVALID_ARG, "the open round");
    EXPECT_OK(k, tp_dp_all_reduce_grads(d, w));
    tp_stats_get(k->g, &s);
    uint64_t calls = tp_stats_calls(&s, TP_PHASE_COUNT, TP_OP_ALL_REDUCE);
    EXPECT(k, calls == (uint64_t)want && (want == 1 || early >= 1) && early < (uint64_t)want,
           "cap %zu overlapped: %llu all-reduces (%llu before the end), expected %d", cap,
           (unsigned long long)calls, (unsigned long long)early, want);
    for (int i = 0; i < NP; i++) {
        float *got = tpt_download(k, &ps->g[i]);
        EXPECT(k, memcmp(got, before[i], sizeof(float) * (size_t)SIZES[i]) == 0,
               "cap %zu, parameter %d: overlapped result differs from the non-overlapped one", cap,
               i);
        free(got), free(before[i]);
    }
    tp_tensor_release(&other);
    free(h);
}

static void check_reduce(tpt_rank *k, size_t cap)
{
    params ps;
    make_params(k, &ps, 0);
    int D = k->T;
    double wsum = D * (D + 1) / 2.0;
    float w = (float)((k->r + 1) / wsum); /* uneven weights, summing to 1 */
    tp_dp *d = NULL;
    tp_dp_config c = {.bucket_bytes = cap};
    EXPECT_OK(k, tp_dp_create(k->g, &c, ps.p, NP, &d));
    tp_stats_reset(k->g);
    EXPECT_OK(k, tp_dp_all_reduce_grads(d, w));
    tp_stats s;
    tp_stats_get(k->g, &s);
    int64_t nrep = 0, nsh = 0;
    for (int i = 0; i < NP; i++)
        *(REPL[i] ? &nrep : &nsh) += SIZES[i];
    size_t ecap = cap ? cap : TP_DP_DEFAULT_BUCKET_BYTES;
    int want = buckets_for(nrep, ecap) + buckets_for(nsh, ecap), got = 0;
    size_t bytes = 0;
    tp_dp_get_info(d, &got, &bytes, NULL);
    EXPECT(k, got == want && bytes == (size_t)(nrep + nsh) * 4,
           "cap %zu: %d buckets, %zu B; expected %d, %lld B", cap, got, bytes, want,
           (long long)(nrep + nsh) * 4);
    uint64_t calls = tp_stats_calls(&s, TP_PHASE_COUNT, TP_OP_ALL_REDUCE);
    EXPECT(k, calls == (uint64_t)want, "cap %zu: %llu all-reduces, expected %d", cap,
           (unsigned long long)calls, want);
    float *h = tpt_falloc(1000), *o = tpt_falloc(1000);
    for (int i = 0; i < NP; i++) {
        float *got_g = tpt_download(k, &ps.g[i]);
        double worst = 0;
        for (int64_t e = 0; e < SIZES[i]; e++) {
            double ref = 0, mag = 0;
            for (int q = 0; q < D; q++) {
                grad_of(q, i, o);
                float wq = (float)((q + 1) / wsum);
                ref += (double)wq * o[e];
                mag += fabs((double)wq * o[e]);
            }
            /* D products and D - 1 sums in f32: gamma(2D) sum |w g| */
            double tol = 2.0 * D * ldexp(1.0, -24) * mag / (1 - 2.0 * D * ldexp(1.0, -24));
            double err = fabs(got_g[e] - ref) - tol;
            worst = err > worst || err != err ? err : worst;
        }
        EXPECT(k, worst <= 0, "cap %zu, parameter %d: off the weighted sum by %g beyond bound", cap,
               i, worst);
        free(got_g);
    }
    check_overlapped(k, &ps, d, w, cap, want);
    free(h), free(o);
    tp_dp_free(d);
    free_params(&ps);
}

static void body_reduce(tpt_rank *k)
{
    const size_t caps[] = {16, 20, 64, 1000, 0};
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++)
        check_reduce(k, caps[i]);
}

/* Rank 0 holds a parameter one element longer: every rank is refused. */
static void body_mismatch(tpt_rank *k)
{
    params ps;
    make_params(k, &ps, k->r == 0 ? 1 : 0);
    tp_dp *d = NULL;
    tp_status st = tp_dp_create(k->g, NULL, ps.p, NP, &d);
    if (k->T == 1)
        EXPECT_OK(k, st);
    else
        EXPECT_ST(k, st, TP_ERR_INVALID_ARG, "made another bucket plan than DP rank 0");
    tp_dp_free(d);
    free_params(&ps);
}

/* Identical values pass; one rank's change is named. */
static void body_sync(tpt_rank *k)
{
    params ps;
    make_params(k, &ps, 0);
    float *h = tpt_falloc(37);
    grad_of(0, 1, h); /* every rank: rank 0's values */
    EXPECT_OK(k, tp_tensor_upload(&ps.v[1], h));
    tp_dp *d = NULL;
    EXPECT_OK(k, tp_dp_create(k->g, NULL, ps.p, NP, &d));
    for (int i = 0; i < NP; i++) { /* all values the same on every rank */
        float *z = tpt_falloc(SIZES[i]);
        EXPECT_OK(k, tp_tensor_upload(&ps.v[i], z));
        free(z);
    }
    EXPECT_OK(k, tp_dp_check_sync(d, NULL));
    if (k->r == k->T - 1) {
        h[36] = 1.0f; /* the last rank's copy drifts in one element */
        EXPECT_OK(k, tp_tensor_upload(&ps.v[1], h));
    } else {
        memset(h, 0, 37 * sizeof *h);
    }
    tp_status st = tp_dp_check_sync(d, NULL);
    if (k->T == 1)
        EXPECT_OK(k, st);
    else
        EXPECT_ST(k, st, TP_ERR_INTERNAL, "differs between DP ranks 0 and");
    free(h);
    tp_dp_free(d);
    free_params(&ps);
}

static void body_errors(tpt_rank *k)
{
    params ps;
    make_params(k, &ps, 0);
    tp_dp *d = NULL;
    tp_dp_config small = {.bucket_bytes = 8};
    EXPECT_ST(k, tp_dp_create(k->g, &small, ps.p, NP, &d), TP_ERR_INVALID_ARG, "below the minimum");
    EXPECT(k, d == NULL, "a refused create left an object");
    EXPECT_ST(k, tp_dp_create(NULL, NULL, ps.p, NP, &d), TP_ERR_INVALID_ARG, "NULL");
    EXPECT_ST(k, tp_dp_create(k->g, NULL, ps.p, NP, NULL), TP_ERR_INVALID_ARG, "out is NULL");
    EXPECT_OK(k, tp_dp_create(k->g, NULL, ps.p, NP, &d));
    EXPECT_ST(k, tp_dp_all_reduce_grads(d, -1.0f), TP_ERR_INVALID_ARG, "must be >= 0");
    EXPECT_ST(k, tp_dp_all_reduce_grads(d, NAN), TP_ERR_INVALID_ARG, "must be >= 0");
    EXPECT_ST(k, tp_dp_all_reduce_grads(NULL, 1.0f), TP_ERR_INVALID_ARG, "NULL");
    float sum = 0;
    EXPECT_OK(k, tp_dp_sum(d, (float)(k->r + 1), &sum));
    EXPECT(k, sum == (float)(k->T * (k->T + 1) / 2), "tp_dp_sum: %g", (double)sum);
    tp_dp_free(d);
    tp_dp_free(NULL);
    free_params(&ps);
}

/* ------------------------------------------------ a GPT, overlap on/off */

enum {
    STEPS = 3
};

/* Replica d's ids (n + 1 tokens: ids then targets shifted by one) at step s. */
static void replica_tokens(int32_t *h, int64_t n, int64_t vocab, int s, int d)
{
    for (int64_t i = 0; i <= n; i++)
        h[i] = (int32_t)((i * 7 + s * 13 + d * 5 + 3 + (i * i) % 11) % vocab);
}

/* This rank's parameter values, concatenated (caller frees), *bytes. */
static char *values_of(tpt_rank *k, const tp_param *ps, int np, size_t *bytes)
{
    size_t total = 0;
    for (int i = 0; i < np; i++)
        total += tp_tensor_bytes(ps[i].value);
    char *all = calloc(total + 1, 1);
    size_t off = 0;
    for (int i = 0; i < np; i++) {
        EXPECT_OK(k, tp_tensor_download(ps[i].value, all + off));
        off += tp_tensor_bytes(ps[i].value);
    }
    *bytes = total;
    return all;
}

/* FNV-1a of n bytes, continuing from h. */
static uint32_t fnv32(uint32_t h, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ c[i]) * 16777619u;
    return h;
}

/* Every KV head held by several TP ranks (kv_heads < heads split across
 * them) has bitwise the same K/V weight columns and biases on each: the
 * DP sums of their gradients must agree across TP ranks, whatever the
 * shards around them. Collective over tp. */
static void expect_shared_kv_equal(tpt_rank *k, tp_comm *tp, tp_gpt *m, const tp_gpt_config *cfg)
{
    int T = tp_comm_size(tp), kv = (int)(cfg->kv_heads ? cfg->kv_heads : cfg->heads);
    if (T == 1)
        return;
    int32_t *mine = calloc((size_t)kv * (size_t)cfg->layers, sizeof *mine);
    int32_t *all = calloc((size_t)kv * (size_t)cfg->layers * (size_t)T, sizeof *all);
    for (int64_t l = 0; l < cfg->layers; l++) {
        tp_attention *a = tp_block_attention(tp_gpt_block(m, (int)l));
        tp_attention_params p;
        tp_attention_get_params(a, &p);
        int64_t hd = 0, qlo = 0, qhi = 0, klo = 0, khi = 0;
        tp_attention_get_info(a, &hd, &qlo, &qhi, &klo, &khi);
        int64_t rows = p.qkv_weight->shape[0], w = p.qkv_weight->shape[1], nkv = khi - klo;
        float *h = malloc(sizeof(float) * (size_t)(rows * w + w));
        EXPECT_OK(k, tp_tensor_download(p.qkv_weight, h));
        if (p.qkv_bias && p.qkv_bias->data)
            EXPECT_OK(k, tp_tensor_download(p.qkv_bias, h + rows * w));
        else
            memset(h + rows * w, 0, sizeof(float) * (size_t)w);
        for (int64_t i = 0; i < nkv; i++) {
            uint32_t x = 2166136261u;
            for (int part = 0; part < 2; part++)    /* K, then V columns */
                for (int64_t r = 0; r <= rows; r++) /* row `rows`: the bias */
                    x = fnv32(x, h + r * w + ((qhi - qlo) + part * nkv + i) * hd,
                              sizeof(float) * (size_t)hd);
            mine[l * kv + klo + i] = (int32_t)(x | 1); /* 0: not held */
        }
        free(h);
    }
    size_t n = (size_t)kv * (size_t)cfg->layers;
    void *d = NULL;
    EXPECT_OK(k, tp_dev_alloc(k->dev, sizeof(int32_t) * n * (size_t)T, &d));
    int32_t *dm = (int32_t *)d + n * (size_t)tp_comm_rank(tp);
    EXPECT_OK(k, tp_dev_upload(k->dev, dm, mine, sizeof(int32_t) * n));
    EXPECT_OK(k, tp_all_gather(tp, dm, d, n, TP_I32));
    EXPECT_OK(k, tp_dev_download(k->dev, all, d, sizeof(int32_t) * n * (size_t)T));
    tp_dev_free(k->dev, d);
    for (size_t j = 0; j < n; j++) {
        int32_t first = 0;
        for (int r = 0; r < T; r++) {
            int32_t x = all[(size_t)r * n + j];
            if (x && first && x != first)
                EXPECT(
                    k, false,
                    "layer %zu KV head %zu: TP ranks hold different weights (%08x, rank %d %08x)",
                    j / (size_t)kv, j % (size_t)kv, (unsigned)first, r, (unsigned)x);
            first = first ? first : x;
        }
    }
    free(mine);
    free(all);
}

/* STEPS AdamW steps of a GPT on the TP group tp, its gradients averaged
 * over dp in buckets of 100 bytes, overlapped or not: the final values
 * (caller frees); *start: the initial ones. */
static char *train_gpt(tpt_rank *k, tp_comm *tp, tp_comm *dp, const tp_gpt_config *cfg,
                       int64_t batch, bool overlap, char **start, size_t *bytes)
{
    tp_gpt *m = NULL;
    tp_optim *opt = NULL;
    tp_dp *d = NULL;
    tp_tensor ids = {0}, tgt = {0};
    char *out = NULL;
    int64_t n = batch * cfg->seq;
    int32_t *h = calloc((size_t)n + 1, sizeof *h);
    int D = tp_comm_size(dp);
    EXPECT_OK(k, tp_gpt_create(tp, cfg, &m));
    EXPECT_OK(k, tp_gpt_zero_grad(m));
    const tp_param *ps = NULL;
    int np = 0;
    tp_gpt_params(m, &ps, &np);
    tp_optim_config oc = tp_optim_defaults(TP_OPTIM_ADAMW);
    oc.lr = 1e-2f;
    tp_dp_config dc = {.bucket_bytes = 100};
    EXPECT_OK(k, tp_optim_create(tp, &oc, ps, np, &opt));
    EXPECT_OK(k, tp_dp_create(dp, &dc, ps, np, &d));
    EXPECT_OK(k, tp_gpt_set_dp(m, overlap ? d : NULL));
    EXPECT_OK(k, tp_tensor_alloc2(k->dev, TP_I32, batch, cfg->seq, &ids));
    EXPECT_OK(k, tp_tensor_alloc2(k->dev, TP_I32, batch, cfg->seq, &tgt));
    if (tpt_failures(k))
        goto out;
    *start = values_of(k, ps, np, bytes);
    int buckets = 0;
    tp_dp_get_info(d, &buckets, NULL, NULL);
    for (int s = 0; s < STEPS && !tpt_failures(k); s++) {
        replica_tokens(h, n, cfg->vocab, s, tp_comm_rank(dp));
        EXPECT_OK(k, tp_tensor_upload(&ids, h));
        EXPECT_OK(k, tp_tensor_upload(&tgt, h + 1));
        float loss = 0;
        EXPECT_OK(k, tp_optim_zero_grad(opt));
        EXPECT_OK(k, tp_gpt_forward(m, &ids, &tgt, &loss));
        if (overlap)
            EXPECT_OK(k, tp_dp_begin(d, 1.0f / (float)D));
        tp_stats_reset(dp);
        EXPECT_OK(k, tp_gpt_backward(m));
        tp_stats st;
        tp_stats_get(dp, &st);
        uint64_t early = tp_stats_calls(&st, TP_PHASE_COUNT, TP_OP_ALL_REDUCE);
        /* overlapped: every bucket but those of the embeddings (final last) during backward */
        EXPECT(k, overlap ? early * 2 > (uint64_t)buckets : early == 0,
               "step %d, overlap %d: %llu of %d buckets started during backward", s, overlap,
               (unsigned long long)early, buckets);
        EXPECT_OK(k, tp_dp_all_reduce_grads(d, 1.0f / (float)D));
        EXPECT_OK(k, tp_gpt_finalize_grads(m));
        EXPECT_OK(k, tp_optim_step(opt));
    }
    EXPECT_OK(k, tp_dp_check_sync(d, tp));
    expect_shared_kv_equal(k, tp, m, cfg);
    out = values_of(k, ps, np, bytes);
    if (overlap) { /* a failed backward closes the round it was to feed */
        EXPECT_OK(k, tp_dp_begin(d, 1.0f / (float)D));
        EXPECT_ST(k, tp_gpt_backward_scaled(m, -1.0f), TP_ERR_INVALID_ARG, "loss scale");
        EXPECT_OK(k, tp_dp_begin(d, 1.0f / (float)D));
        EXPECT_OK(k, tp_dp_all_reduce_grads(d, 1.0f / (float)D));
    }
out:
    tp_tensor_release(&ids), tp_tensor_release(&tgt);
    tp_dp_free(d);
    tp_optim_free(opt);
    tp_gpt_free(m);
    free(h);
    return out;
}

/* Groups of 2, 3, 4, 6 ranks as T x D = 1x2, 1x3, 2x2, 2x3 (TP groups of
 * consecutive ranks); tied without SP, then untied, biased, sequence
 * parallel with a token count T does not divide, then one KV head that
 * every TP rank holds (MQA) and a vocabulary T does not divide. */
static void body_gpt(tpt_rank *k)
{
    int G = k->T, T = G == 4 || G == 6 ? 2 : 1;
    if (G < 2 || G == 5 || G > 6)
        return;
    tp_comm *tp = NULL, *dp = NULL;
    EXPECT_OK(k, tp_comm_split(k->g, k->r / T, k->r, &tp));
    EXPECT_OK(k, tp_comm_split(k->g, k->r % T, k->r, &dp));
    for (int v = 0; v < 3 && tp && dp && !tpt_failures(k); v++) {
        tp_gpt_config c = {.vocab = v == 2 ? 13 : 37,
                           .hidden = 12,
                           .heads = 3,
                           .kv_heads = v == 2 ? 1 : 0, /* v 2: one KV head on every TP rank */
                           .ffn = 22,
                           .layers = 2,
                           .seq = 7,
                           .tied = v == 0,
                           .bias = v >= 1,
                           .sequence_parallel = v == 1,
                           .seed = 5};
        int64_t batch = v == 0 ? 2 : 1; /* v 1: 7 tokens */
        size_t b0 = 0, b1 = 0;
        char *s0 = NULL, *s1 = NULL;
        char *off = train_gpt(k, tp, dp, &c, batch, false, &s0, &b0);
        char *on = train_gpt(k, tp, dp, &c, batch, true, &s1, &b1);
        if (off && on) {
            EXPECT(k, b0 == b1 && memcmp(off, on, b0) == 0,
                   "T=%d D=%d variant %d: weights after %d steps differ with overlap on (%zu B) "
                   "and off (%zu B)",
                   T, G / T, v, STEPS, b1, b0);
            EXPECT(k, memcmp(off, s0, b0) != 0, "T=%d D=%d variant %d: training changed nothing", T,
                   G / T, v);
        }
        free(off), free(on), free(s0), free(s1);
    }
    tp_comm_free(tp);
    tp_comm_free(dp);
}

START_TEST(test_gpt)
{
    tpt_run_all(body_gpt);
}
END_TEST

START_TEST(test_reduce)
{
    tpt_run_all(body_reduce);
}
END_TEST

START_TEST(test_mismatch)
{
    tpt_run_all(body_mismatch);
}
END_TEST

START_TEST(test_sync)
{
    tpt_run_all(body_sync);
}
END_TEST

START_TEST(test_errors)
{
    tpt_run_all(body_errors);
}
END_TEST

int main(int argc, char **argv)
{
    const tpt_test tests[] = {
        {"reduce", test_reduce}, {"mismatch", test_mismatch}, {"sync", test_sync},
        {"errors", test_errors}, {"gpt-overlap", test_gpt},
    };
    return tpt_main(&argc, &argv, "dp", tests, sizeof tests / sizeof tests[0], NULL);
}
