/* SPDX-License-Identifier: MIT */
/*
 * test-gpt.c — the GPT model (tp_gpt) and the optimizers (tp_optim).
 *
 * The harness (tests/common/tp-test.h) runs every body on groups of
 * T = 1..W, so one run at W = 4 covers T = 1..4. GPT_TEST=NAME runs one test.
 *
 *  reference    loss, logits and every parameter gradient vs a serial
 *               double reference (gpt-ref.h) and its central finite
 *               differences; tied/untied, LayerNorm/RMSNorm, MHA/GQA/MQA,
 *               sequence parallel on/off, label smoothing + ignore_index,
 *               vocab and ffn not divisible by T
 *  counts       collectives per phase of one training step (the totals
 *               documented in tp-layers.h)
 *  determinism  a few AdamW steps twice: bitwise identical losses, weights
 *               and gradients; TP=T vs TP=1 within tolerance; the cases
 *               docs/determinism.md calls bitwise equal across T
 *  train        the loss of a small pattern task falls
 *  optim        SGD and AdamW updates vs host loops (PyTorch's formulas)
 *  errors       bad configurations and inputs give named errors
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tp/tp-transformer.h>

#include "tp-test.h"

#include "gpt-ref.h"

/* ------------------------------------------------------------ helpers */

static tp_tensor upload_i32(tpt_rank *k, int64_t rows, int64_t cols, const int32_t *h)
{
    tp_tensor t = {0};
    int64_t shape[2] = {rows, cols};
    EXPECT_OK(k, tp_tensor_alloc(k->dev, TP_I32, 2, shape, &t));
    if (t.data)
        EXPECT_OK(k, tp_tensor_upload(&t, h));
    return t;
}

/* Deterministic ids in [0, V) and targets (the next id; some ignored). */
static void make_batch(int64_t N, int64_t V, uint64_t id, bool ignore, int32_t *ids, int32_t *tgt)
{
    for (int64_t t = 0; t < N; t++) {
        float u = tp_master_uniform(99, id, (uint64_t)t, 1.0f);
        ids[t] = (int32_t)((u + 1.0f) * 0.5f * (float)V) % (int32_t)V;
    }
    for (int64_t t = 0; t < N; t++) {
        tgt[t] = ids[(t + 1) % N];
        if (ignore && t % 4 == 3)
            tgt[t] = -100;
    }
}

static int64_t numel_full(const tp_param *p)
{
    return p->ndim == 2 ? p->full_shape[0] * p->full_shape[1] : p->full_shape[0];
}

static gref_cfg ref_cfg(const tp_gpt_config *c)
{
    int64_t hd = c->head_dim ? c->head_dim : c->hidden / c->heads;
    return (gref_cfg){.V = c->vocab,
                      .H = c->hidden,
                      .nh = c->heads,
                      .kv = c->kv_heads ? c->kv_heads : c->heads,
                      .hd = hd,
                      .F = c->ffn,
                      .L = c->layers,
                      .S = c->seq,
                      .tied = c->tied,
                      .bias = c->bias,
                      .rms = c->rms,
                      .gelu_tanh = c->gelu_tanh,
                      .eps = c->eps ? c->eps : 1e-5,
                      .smoothing = c->label_smoothing,
                      .use_ignore = c->use_ignore_index,
                      .ignore = c->ignore_index};
}

/* Every parameter's full value and gradient (collective), as doubles, in
 * gpt-ref.h's order, looked up by name in tp_gpt_params (so a parameter
 * missing from the list fails). */
typedef struct full_params {
    int n;
    double **val, **grad;
    int64_t *len;
    char **name;
} full_params;

static void add_full(full_params *f, const char *name, int64_t n, const float *v, const float *g)
{
    int i = f->n++;
    f->val = realloc(f->val, sizeof(double *) * (size_t)f->n);
    f->grad = realloc(f->grad, sizeof(double *) * (size_t)f->n);
    f->len = realloc(f->len, sizeof(int64_t) * (size_t)f->n);
    f->name = realloc(f->name, sizeof(char *) * (size_t)f->n);
    f->val[i] = malloc(sizeof(double) * (size_t)(n ? n : 1));
    f->grad[i] = malloc(sizeof(double) * (size_t)(n ? n : 1));
    for (int64_t j = 0; j < n; j++)
        f->val[i][j] = v[j], f->grad[i][j] = g[j];
    f->len[i] = n;
    f->name[i] = strdup(name);
}

static void get_full(tpt_rank *k, tp_gpt *m, const tp_gpt_config *c, full_params *f)
{
    memset(f, 0, sizeof *f);
    const tp_param *ps;
    int np;
    tp_gpt_params(m, &ps, &np);
    const char *blk[] = {"ln1.weight",      "ln1.bias",      "attn.qkv.weight", "attn.qkv.bias",
                         "attn.out.weight", "attn.out.bias", "ln2.weight",      "ln2.bias",
                         "mlp.fc1.weight",  "mlp.fc1.bias",  "mlp.fc2.weight",  "mlp.fc2.bias"};
    int nnames = 0;
    char names[512][64];
    snprintf(names[nnames++], 64, "embedding.weight");
    snprintf(names[nnames++], 64, "position.weight");
    for (int64_t l = 0; l < c->layers; l++)
        for (int j = 0; j < 12; j++) {
            bool isbias = strstr(blk[j], "bias") != NULL;
            bool norm = blk[j][0] == 'l';
            if (isbias && (norm ? c->rms : !c->bias))
                continue;
            snprintf(names[nnames++], 64, "blocks.%lld.%s", (long long)l, blk[j]);
        }
    snprintf(names[nnames++], 64, "ln_f.weight");
    if (!c->rms)
        snprintf(names[nnames++], 64, "ln_f.bias");
    if (!c->tied)
        snprintf(names[nnames++], 64, "output.weight");
    for (int q = 0; q < nnames; q++) {
        int i = 0;
        while (i < np && strcmp(ps[i].name, names[q]))
            i++;
        if (i < np) {
            int64_t n = numel_full(&ps[i]);
            float *v = malloc(sizeof(float) * (size_t)n), *g = malloc(sizeof(float) * (size_t)n);
            EXPECT_OK(k, tp_gpt_get_full_param(m, i, v, g));
            add_full(f, names[q], n, v, g);
            free(v), free(g);
            continue;
        }
        tpt_fail_at(k, __LINE__, "parameter %s missing from tp_gpt_params", names[q]);
    }
    EXPECT(k, np == nnames, "tp_gpt_params has %d parameters, expected %d", np, nnames);
}

static void free_full(full_params *f)
{
    for (int i = 0; i < f->n; i++)
        free(f->val[i]), free(f->grad[i]), free(f->name[i]);
    free(f->val), free(f->grad), free(f->len), free(f->name);
}

/* ------------------------------------------------------------ reference */

typedef struct gcase {
    const char *what;
    int64_t V, H, nh, kv, hd, F, L, S, batch, seq;
    bool tied, sp, bias, rms, tanh;
    float smoothing;
    bool ignore;
} gcase;

/* heads 12 divide T = 1..4; V 17 and F 13 do not divide 2, 3, 4. */
static const gcase CASES[] = {
    {"tied LN MHA", 17, 8, 12, 0, 2, 13, 2, 5, 2, 5, true, false, true, false, false, 0.0f, false},
    {"untied SP GQA ls+ignore", 17, 8, 12, 4, 2, 13, 2, 6, 2, 5, false, true, true, false, true,
     0.1f, true},
    {"tied SP MQA RMS ls+ignore", 17, 12, 12, 1, 0, 13, 1, 5, 1, 5, true, true, false, true, false,
     0.2f, true},
    {"untied RMS GQA no-bias", 23, 8, 12, 2, 2, 9, 1, 4, 3, 3, false, false, false, true, false,
     0.0f, false},
    /* 3 tokens: with T = 4 one rank's sequence-parallel shard is empty */
    {"untied SP 3 tokens GQA", 17, 8, 12, 3, 2, 13, 1, 3, 1, 3, false, true, true, false, false,
     0.0f, false},
    /* heads 6 and 10 do not divide T = 4 (resp. 3, 4): uneven head shards,
     * GQA groups straddling ranks; 13 positions of a 16-row position table */
    {"tied SP heads 6 GQA 2", 17, 12, 6, 2, 0, 13, 1, 16, 1, 13, true, true, true, false, false,
     0.0f, false},
    {"untied heads 10 MQA", 17, 8, 10, 1, 2, 13, 1, 5, 2, 5, false, false, true, false, false, 0.0f,
     false},
};

static tp_gpt_config case_cfg(const gcase *c)
{
    return (tp_gpt_config){.vocab = c->V,
                           .hidden = c->H,
                           .heads = c->nh,
                           .kv_heads = c->kv,
                           .head_dim = c->hd,
                           .ffn = c->F,
                           .layers = c->L,
                           .seq = c->S,
                           .tied = c->tied,
                           .sequence_parallel = c->sp,
                           .bias = c->bias,
                           .rms = c->rms,
                           .gelu_tanh = c->tanh,
                           .emb_bound = 0.5f,
                           .label_smoothing = c->smoothing,
                           .use_ignore_index = c->ignore,
                           .ignore_index = -100,
                           .seed = 5};
}

/*
 * Tolerances. Every value here is O(1) (|weights| <= 0.5, normalized
 * activations, <= 23 logits) and every quantity is a short chain of f32
 * operations: per block 2 norms, 4 GEMMs of fan-in <= 40, a softmax of <= 6
 * terms and GeLU; the loss adds the logits GEMM (fan-in 12) and the
 * cross-entropy sums (23 terms). With u = 2^-24 = 6e-8 and at most ~100
 * roundings on any path, each touching values <= ~5 in magnitude (the sums
 * of |terms|, ref.h's error model), the first-order f32 error is below
 * 100 * 5 * 6e-8 = 3e-5 for a logit or the loss: we accept 3e-5 (1 + |x|).
 * Gradients go through the same chain backwards as well (twice the
 * roundings): 6e-5 (1 + |g|). (Observed: ~1e-7.) The finite differences
 * are central, in double, with step 1e-5: truncation ~1e-10 |f'''|,
 * rounding ~1e-16 / 1e-5 = 1e-11, both far below. A real bug (a wrong
 * shard, a missing or doubled reduction, an untied gradient) changes
 * values by their own size, 1e-3 .. 1.
 */
static void run_reference(tpt_rank *k, const gcase *c)
{
    tp_gpt_config cfg = case_cfg(c);
    tp_gpt *m = NULL;
    EXPECT_OK(k, tp_gpt_create(k->g, &cfg, &m));
    if (!m)
        return;
    int64_t N = c->batch * c->seq;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)N), *tgt = malloc(sizeof(int32_t) * (size_t)N);
    make_batch(N, c->V, 7, c->ignore, ids, tgt);
    tp_tensor ti = upload_i32(k, c->batch, c->seq, ids), tt = upload_i32(k, 1, N, tgt);
    float loss = 0;
    EXPECT_OK(k, tp_gpt_forward(m, &ti, &tt, &loss));
    EXPECT_OK(k, tp_gpt_backward(m));
    float *logits = malloc(sizeof(float) * (size_t)(N * c->V));
    EXPECT_OK(k, tp_gpt_get_full_logits(m, logits));
    full_params f;
    get_full(k, m, &cfg, &f);
    if (k->r == 0 && !tpt_failures(k)) {
        gref_cfg rc = ref_cfg(&cfg);
        double *rl = malloc(sizeof(double) * (size_t)(N * c->V));
        double ref = gref_loss(&rc, f.val, c->batch, c->seq, ids, tgt, rl);
        EXPECT(k, fabs(loss - ref) <= 3e-5 + 3e-5 * fabs(ref), "%s: loss %.9g, reference %.9g",
               c->what, (double)loss, ref);
        for (int64_t i = 0; i < N * c->V; i++)
            if (!(fabs(logits[i] - rl[i]) <= 3e-5 + 3e-5 * fabs(rl[i]))) {
                tpt_fail_at(k, __LINE__, "%s: logit %lld = %.9g, reference %.9g", c->what,
                            (long long)i, (double)logits[i], rl[i]);
                break;
            }
        /* every gradient entry vs central differences of the reference loss */
        const double h = 1e-5;
        double worst = 0;
        for (int p = 0; p < f.n && !tpt_failures(k); p++)
            for (int64_t j = 0; j < f.len[p]; j++) {
                double keep = f.val[p][j];
                f.val[p][j] = keep + h;
                double lp = gref_loss(&rc, f.val, c->batch, c->seq, ids, tgt, NULL);
                f.val[p][j] = keep - h;
                double lm = gref_loss(&rc, f.val, c->batch, c->seq, ids, tgt, NULL);
                f.val[p][j] = keep;
                double fd = (lp - lm) / (2 * h), g = f.grad[p][j];
                double err = fabs(g - fd) / (6e-5 + 6e-5 * fabs(fd));
                worst = err > worst ? err : worst;
                if (!(err <= 1.0)) {
                    tpt_fail_at(k, __LINE__,
                                "%s: d loss / d %s[%lld] = %.9g, finite differences %.9g", c->what,
                                f.name[p], (long long)j, g, fd);
                    break;
                }
            }
        if (getenv("GPT_VERBOSE"))
            printf("reference %-28s T=%d: loss %.7f (ref %.7f), worst gradient error %.3g of "
                   "tolerance, %d tensors\n",
                   c->what, k->T, (double)loss, ref, worst, f.n);
        free(rl);
    }
    /* gradients accumulate: a second forward + backward of the same batch
     * without zero_grad doubles them (each element is g + g' with g' == g up
     * to the rounding of the accumulating GEMMs: 1e-5 (|g| + 1e-6)) */
    float loss2 = 0;
    EXPECT_OK(k, tp_gpt_forward(m, &ti, &tt, &loss2));
    EXPECT_OK(k, tp_gpt_backward(m));
    EXPECT(k, !memcmp(&loss, &loss2, sizeof loss), "%s: the same forward twice gave %.9g, %.9g",
           c->what, (double)loss, (double)loss2);
    full_params f2;
    get_full(k, m, &cfg, &f2);
    for (int p = 0; p < f.n && p < f2.n && k->r == 0; p++)
        for (int64_t j = 0; j < f.len[p]; j++)
            if (!(fabs(f2.grad[p][j] - 2 * f.grad[p][j]) <= 1e-5 * (fabs(f.grad[p][j]) + 1e-6))) {
                tpt_fail_at(k, __LINE__,
                            "%s: accumulated grad of %s[%lld] = %.9g, expected 2 x %.9g", c->what,
                            f.name[p], (long long)j, f2.grad[p][j], f.grad[p][j]);
                p = f.n;
                break;
            }
    free_full(&f2);
    free_full(&f);
    free(logits), free(ids), free(tgt);
    tp_tensor_release(&ti), tp_tensor_release(&tt);
    tp_gpt_free(m);
}

static void body_reference(tpt_rank *k)
{
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++)
        run_reference(k, &CASES[i]);
}

START_TEST(test_reference)
{
    tpt_run_all(body_reference);
}
END_TEST

/* -------------------------------------------------------------- counts */

static void expect_calls(tpt_rank *k, int line, const char *what, const tp_stats *s, tp_phase ph,
                         const uint64_t want[TP_OP_COUNT])
{
    for (int op = 0; op < TP_OP_COUNT; op++)
        if (s->comm[ph][op].calls != want[op]) {
            tpt_fail_at(k, line, "%s: %s calls in %s = %llu, expected %llu", what,
                        tp_op_name((tp_op)op), tp_phase_name(ph),
                        (unsigned long long)s->comm[ph][op].calls, (unsigned long long)want[op]);
            return;
        }
}

/* One step: forward, backward, AdamW step. Expected (L layers, see tp-layers.h):
 *   no SP: fwd AR 1 + 2L + 2; bwd AR 1 + 2L; other (optimizer) none
 *   SP:    fwd RS 1 + 2L, AG 2L + 1, AR 2; bwd RS 1 + 2L, AG 4L + 2, AR 1 + L
 * (SP backward: per block dy gathered into each of its 2 row-parallel
 * exits, and the 2 column-parallel inputs gathered again for their weight
 * gradients instead of being kept from forward; + the embedding's dy, +
 * the final norm's output gathered again for the output projection's
 * weight gradient) */
static void body_counts(tpt_rank *k)
{
    for (int sp = 0; sp < 2; sp++)
        for (int tied = 0; tied < 2; tied++) {
            const uint64_t L = 3;
            tp_gpt_config cfg = {.vocab = 19,
                                 .hidden = 8,
                                 .heads = 12,
                                 .head_dim = 2,
                                 .ffn = 12,
                                 .layers = (int64_t)L,
                                 .seq = 4,
                                 .tied = tied,
                                 .sequence_parallel = sp,
                                 .bias = true,
                                 .seed = 3};
            tp_gpt *m = NULL;
            EXPECT_OK(k, tp_gpt_create(k->g, &cfg, &m));
            if (!m)
                return;
            const tp_param *ps;
            int np;
            tp_gpt_params(m, &ps, &np);
            tp_optim_config oc = tp_optim_defaults(TP_OPTIM_ADAMW);
            tp_optim *o = NULL;
            EXPECT_OK(k, tp_optim_create(k->g, &oc, ps, np, &o));
            int32_t ids[8], tgt[8];
            make_batch(8, 19, 3, false, ids, tgt);
            tp_tensor ti = upload_i32(k, 2, 4, ids), tt = upload_i32(k, 2, 4, tgt);
            float loss;
            tp_stats_reset(k->g);
            EXPECT_OK(k, tp_gpt_forward(m, &ti, &tt, &loss));
            EXPECT_OK(k, tp_gpt_backward(m));
            EXPECT_OK(k, tp_optim_step(o));
            tp_stats s;
            tp_stats_get(k->g, &s);
            char what[64];
            snprintf(what, sizeof what, "GPT L=%llu sp=%d tied=%d", (unsigned long long)L, sp,
                     tied);
            uint64_t none[TP_OP_COUNT] = {0};
            if (!sp) {
                uint64_t f[TP_OP_COUNT] = {[TP_OP_ALL_REDUCE] = 1 + 2 * L + 2};
                uint64_t b[TP_OP_COUNT] = {[TP_OP_ALL_REDUCE] = 1 + 2 * L};
                expect_calls(k, __LINE__, what, &s, TP_PHASE_FORWARD, f);
                expect_calls(k, __LINE__, what, &s, TP_PHASE_BACKWARD, b);
            } else {
                uint64_t f[TP_OP_COUNT] = {[TP_OP_ALL_REDUCE] = 2,
                                           [TP_OP_ALL_GATHER] = 2 * L + 1,
                                           [TP_OP_REDUCE_SCATTER] = 1 + 2 * L};
                uint64_t b[TP_OP_COUNT] = {[TP_OP_ALL_REDUCE] = 1 + L,
                                           [TP_OP_ALL_GATHER] = 4 * L + 2,
                                           [TP_OP_REDUCE_SCATTER] = 1 + 2 * L};
                expect_calls(k, __LINE__, what, &s, TP_PHASE_FORWARD, f);
                expect_calls(k, __LINE__, what, &s, TP_PHASE_BACKWARD, b);
            }
            expect_calls(k, __LINE__, what, &s, TP_PHASE_OTHER, none);
            tp_tensor_release(&ti), tp_tensor_release(&tt);
            tp_optim_free(o);
            tp_gpt_free(m);
        }
}

START_TEST(test_counts)
{
    tpt_run_all(body_counts);
}
END_TEST

/* --------------------------------------------------------- determinism */

#define DET_STEPS 4

typedef struct trace {
    float loss[DET_STEPS];
    full_params f; /* after the last step: weights and the last gradients */
} trace;

/* DET_STEPS AdamW steps on comm g; ids/targets change every step. */
static void train_trace(tpt_rank *k, tp_comm *g, const tp_gpt_config *cfg, trace *tr)
{
    tp_gpt *m = NULL;
    tp_optim *o = NULL;
    memset(tr, 0, sizeof *tr);
    EXPECT_OK(k, tp_gpt_create(g, cfg, &m));
    if (!m)
        return;
    const tp_param *ps;
    int np;
    tp_gpt_params(m, &ps, &np);
    tp_optim_config oc = tp_optim_defaults(TP_OPTIM_ADAMW);
    oc.lr = 1e-2f;
    EXPECT_OK(k, tp_optim_create(g, &oc, ps, np, &o));
    int64_t B = 2, S = cfg->seq, N = B * S;
    int32_t ids[128], tgt[128];
    for (int s = 0; s < DET_STEPS && o; s++) {
        make_batch(N, cfg->vocab, 100 + (uint64_t)s, cfg->use_ignore_index, ids, tgt);
        tp_tensor ti = upload_i32(k, B, S, ids), tt = upload_i32(k, B, S, tgt);
        EXPECT_OK(k, tp_optim_zero_grad(o));
        EXPECT_OK(k, tp_gpt_forward(m, &ti, &tt, &tr->loss[s]));
        EXPECT_OK(k, tp_gpt_backward(m));
        EXPECT_OK(k, tp_optim_step(o));
        tp_tensor_release(&ti), tp_tensor_release(&tt);
    }
    EXPECT(k, tp_optim_steps(o) == DET_STEPS, "step counter %lld, expected %d",
           (long long)tp_optim_steps(o), DET_STEPS);
    get_full(k, m, cfg, &tr->f);
    /* replicated parameters (norms, row biases, position table, shared KV
     * heads...) must still be bitwise identical on every rank of g */
    int T = tp_comm_size(g);
    for (int i = 0; i < np && T > 1; i++) {
        if (!ps[i].replicated)
            continue;
        int64_t n = tp_tensor_numel(ps[i].value);
        tp_tensor all = {0};
        EXPECT_OK(k, tp_tensor_alloc2(k->dev, TP_F32, T, n, &all));
        EXPECT_OK(k, tp_all_gather(g, ps[i].value->data, all.data, (size_t)n, TP_F32));
        float *h = calloc((size_t)(T * n + 1), sizeof(float));
        EXPECT_OK(k, tp_tensor_download(&all, h));
        for (int r = 1; r < T; r++)
            EXPECT(k, !memcmp(h, h + r * n, sizeof(float) * (size_t)n),
                   "replicated %s differs between ranks 0 and %d after %d steps", ps[i].name, r,
                   DET_STEPS);
        free(h);
        tp_tensor_release(&all);
    }
    tp_optim_free(o);
    tp_gpt_free(m);
}

static bool same_bits(const double *a, const double *b, int64_t n)
{
    for (int64_t i = 0; i < n; i++) /* the doubles hold f32 values: compare their f32 bits */
        if (memcmp(&(float){(float)a[i]}, &(float){(float)b[i]}, sizeof(float)))
            return false;
    return true;
}

static void body_determinism(tpt_rank *k)
{
    tp_gpt_config cfg = {.vocab = 21,
                         .hidden = 8,
                         .heads = 12,
                         .kv_heads = 2,
                         .head_dim = 2,
                         .ffn = 11,
                         .layers = 2,
                         .seq = 6,
                         .tied = true,
                         .sequence_parallel = k->T % 2 == 0,
                         .bias = true,
                         .label_smoothing = 0.1f,
                         .use_ignore_index = true,
                         .ignore_index = -100,
                         .emb_bound = 0.5f,
                         .seed = 11};
    trace a, b, one;
    train_trace(k, k->g, &cfg, &a);
    train_trace(k, k->g, &cfg, &b);
    /* run to run: bitwise */
    for (int s = 0; s < DET_STEPS; s++)
        EXPECT(k, !memcmp(&a.loss[s], &b.loss[s], sizeof(float)),
               "step %d: loss %.9g vs %.9g in a second identical run", s, (double)a.loss[s],
               (double)b.loss[s]);
    for (int i = 0; i < a.f.n && i < b.f.n; i++) {
        EXPECT(k, same_bits(a.f.val[i], b.f.val[i], a.f.len[i]),
               "%s differs bitwise between two identical runs", a.f.name[i]);
        EXPECT(k, same_bits(a.f.grad[i], b.f.grad[i], a.f.len[i]),
               "grad of %s differs bitwise between two identical runs", a.f.name[i]);
    }
    /* TP=T vs TP=1 (each rank runs the one-rank model on its own comm):
     * within the tolerance of test_reference, for the losses of 4 steps (the
     * AdamW steps normalize the updates, so a gradient difference of size e
     * changes a weight by at most ~lr e / sqrt(v): we compare losses, which
     * stay within 1e-4 + 1e-4 |loss| after 4 small steps) */
    tp_comm *solo = NULL;
    EXPECT_OK(k, tp_comm_split(k->g, k->r, 0, &solo));
    if (solo) {
        train_trace(k, solo, &cfg, &one);
        for (int s = 0; s < DET_STEPS; s++)
            EXPECT(k, fabs(one.loss[s] - a.loss[s]) <= 1e-4 + 1e-4 * fabs(one.loss[s]),
                   "step %d: loss T=%d %.9g vs T=1 %.9g", s, k->T, (double)a.loss[s],
                   (double)one.loss[s]);
        free_full(&one.f);
        tp_comm_free(solo);
    }
    free_full(&a.f), free_full(&b.f);
}

START_TEST(test_determinism)
{
    tpt_run_all(body_determinism);
}
END_TEST

/* tp_gpt_config.overlap 2 and 3 against 0: DET_STEPS AdamW steps at 122
 * tokens (2 x 61: chunks 48 + 48 + 26 at 3, 48 + 74 at 2), with and
 * without sequence parallelism. The blocks' nonblocking collectives ran,
 * and the losses, weights and gradients are bitwise those of overlap 0
 * where docs/determinism.md promises it (loopback at any T, otherwise
 * T <= 2), else within test_reference's tolerance. */
static void body_overlap(tpt_rank *k)
{
    bool bitwise = tpt_bitwise_expected(k);
    for (int sp = 0; sp < 2; sp++) {
        tp_gpt_config cfg = {.vocab = 23,
                             .hidden = 8,
                             .heads = 4,
                             .head_dim = 2,
                             .ffn = 11,
                             .layers = 2,
                             .seq = 61,
                             .tied = sp == 0,
                             .sequence_parallel = sp,
                             .bias = true,
                             .seed = 17};
        trace a;
        train_trace(k, k->g, &cfg, &a);
        for (int ov = 2; ov <= 3; ov++) {
            trace b;
            cfg.overlap = ov;
            tp_stats_reset(k->g);
            train_trace(k, k->g, &cfg, &b);
            tp_stats st;
            tp_stats_get(k->g, &st);
            uint64_t started = 0;
            for (int op = 0; op < TP_OP_COUNT; op++)
                started += st.icomm[TP_PHASE_FORWARD][op].calls;
            EXPECT(k, k->T == 1 || started >= (uint64_t)(2 * DET_STEPS * ov),
                   "sp=%d overlap %d: %llu nonblocking collectives in the forwards, expected >= %d",
                   sp, ov, (unsigned long long)started, 2 * DET_STEPS * ov);
            for (int s = 0; s < DET_STEPS; s++)
                EXPECT(k,
                       bitwise ? !memcmp(&a.loss[s], &b.loss[s], sizeof(float))
                               : fabs(a.loss[s] - b.loss[s]) <= 3e-5 * (1 + fabs(a.loss[s])),
                       "sp=%d overlap %d, step %d: loss %.9g vs %.9g with overlap 0", sp, ov, s,
                       (double)b.loss[s], (double)a.loss[s]);
            for (int i = 0; bitwise && i < a.f.n && i < b.f.n; i++) {
                EXPECT(k, same_bits(a.f.val[i], b.f.val[i], a.f.len[i]),
                       "sp=%d overlap %d: %s differs bitwise from overlap 0", sp, ov, a.f.name[i]);
                EXPECT(k, same_bits(a.f.grad[i], b.f.grad[i], a.f.len[i]),
                       "sp=%d overlap %d: grad of %s differs bitwise from overlap 0", sp, ov,
                       a.f.name[i]);
            }
            free_full(&b.f);
        }
        free_full(&a.f);
    }
}

START_TEST(test_overlap)
{
    tpt_run_all(body_overlap);
}
END_TEST

/*
 * Across T (docs/determinism.md). Bitwise: the embedding output, with and
 * without sequence parallelism (the all-reduce / reduce-scatter adds one
 * table row to exact zeros from the other ranks, so the sum is exact in any
 * order). Within tolerance only: the logits of a model with no block
 * (embedding, position add, final LayerNorm, column-parallel output GEMM),
 * although every logit is the same K = hidden dot product at every T:
 * OpenBLAS's sgemm rounds an element differently depending on n (the
 * width of the rank's vocab shard), so even column-parallel outputs are
 * not bitwise stable across T on the cpu device. Tolerance as in
 * test_reference: 3e-5 (1 + |x|).
 */
static void body_bitwise_tp(tpt_rank *k)
{
    tp_comm *solo = NULL;
    EXPECT_OK(k, tp_comm_split(k->g, k->r, 0, &solo));
    if (!solo)
        return;
    int32_t ids[14], tgt[14];
    make_batch(14, 29, 21, false, ids, tgt);
    tp_tensor ti = upload_i32(k, 2, 7, ids), tt = upload_i32(k, 2, 7, tgt);
    for (int sp = 0; sp < 2; sp++) {
        tp_embedding_config ec = {
            .vocab = 29, .dim = 24, .seed = 4, .tensor_id = 1, .sequence_parallel = sp};
        tp_embedding *e = NULL, *e1 = NULL;
        tp_tensor y = {0}, y1 = {0};
        EXPECT_OK(k, tp_embedding_create(k->g, &ec, &e));
        ec.sequence_parallel = false;
        EXPECT_OK(k, tp_embedding_create(solo, &ec, &e1));
        if (e && e1) {
            EXPECT_OK(k, tp_embedding_forward(e, &ti, &y));
            EXPECT_OK(k, tp_embedding_forward(e1, &ti, &y1));
            int64_t lo = 0, hi = 14;
            if (sp)
                tp_shard_range(14, k->T, k->r, &lo, &hi);
            float *a = calloc(14 * 24, sizeof(float)), *b = calloc(14 * 24, sizeof(float));
            EXPECT(k, tp_tensor_numel(&y) == (hi - lo) * 24,
                   "sp=%d: embedding output has %lld "
                   "elements, expected %lld",
                   sp, (long long)tp_tensor_numel(&y), (long long)((hi - lo) * 24));
            if (tp_tensor_numel(&y) == (hi - lo) * 24) {
                EXPECT_OK(k, tp_tensor_download(&y, a));
                EXPECT_OK(k, tp_tensor_download(&y1, b));
                EXPECT(k, !memcmp(a, b + lo * 24, sizeof(float) * (size_t)((hi - lo) * 24)),
                       "sp=%d: embedding output differs bitwise from T=1", sp);
            }
            free(a), free(b);
        }
        tp_tensor_release(&y), tp_tensor_release(&y1);
        tp_embedding_free(e), tp_embedding_free(e1);

        tp_gpt_config cfg = {.vocab = 29,
                             .hidden = 24,
                             .heads = 12,
                             .ffn = 8,
                             .layers = 0,
                             .seq = 7,
                             .tied = sp == 0,
                             .sequence_parallel = sp,
                             .seed = 13};
        tp_gpt *m = NULL, *m1 = NULL;
        EXPECT_OK(k, tp_gpt_create(k->g, &cfg, &m));
        EXPECT_OK(k, tp_gpt_create(solo, &cfg, &m1));
        float l = 0, l1 = 0, *a = malloc(sizeof(float) * 14 * 29),
              *b = malloc(sizeof(float) * 14 * 29);
        if (m && m1) {
            EXPECT_OK(k, tp_gpt_forward(m, &ti, &tt, &l));
            EXPECT_OK(k, tp_gpt_forward(m1, &ti, &tt, &l1));
            EXPECT_OK(k, tp_gpt_get_full_logits(m, a));
            EXPECT_OK(k, tp_gpt_get_full_logits(m1, b));
            for (int i = 0; i < 14 * 29; i++)
                if (!(fabs(a[i] - b[i]) <= 3e-5 * (1 + fabs(b[i])))) {
                    tpt_fail_at(k, __LINE__, "sp=%d: logit %d = %.9g at T=%d but %.9g at T=1", sp,
                                i, (double)a[i], k->T, (double)b[i]);
                    break;
                }
            EXPECT(k, fabs(l - l1) <= 3e-5 * (1 + fabs(l1)), "sp=%d: loss %.9g vs %.9g", sp,
                   (double)l, (double)l1);
            int nd = 0;
            for (int i = 0; i < 14 * 29; i++)
                nd += memcmp(&a[i], &b[i], sizeof(float)) != 0;
            if (getenv("GPT_VERBOSE") && k->r == 0)
                printf("bitwise_tp T=%d sp=%d: %d of %d logits differ bitwise from T=1; loss %s\n",
                       k->T, sp, nd, 14 * 29, memcmp(&l, &l1, sizeof l) ? "differs" : "equal");
        }
        free(a), free(b);
        tp_gpt_free(m), tp_gpt_free(m1);
    }
    tp_tensor_release(&ti), tp_tensor_release(&tt);
    tp_comm_free(solo);
}

START_TEST(test_bitwise_tp)
{
    tpt_run_all(body_bitwise_tp);
}
END_TEST

/* --------------------------------------------------------------- train */

/* Next-token prediction of a fixed cyclic sequence: loss must fall below a
 * third of its start within 40 AdamW steps (it reaches ~0.1 here; a broken
 * gradient or update leaves it near log(vocab)). */
static void body_train(tpt_rank *k)
{
    tp_gpt_config cfg = {.vocab = 16,
                         .hidden = 16,
                         .heads = 12,
                         .head_dim = 4,
                         .ffn = 32,
                         .layers = 1,
                         .seq = 8,
                         .tied = k->T != 3,
                         .bias = true,
                         .seed = 17};
    tp_gpt *m = NULL;
    EXPECT_OK(k, tp_gpt_create(k->g, &cfg, &m));
    if (!m)
        return;
    const tp_param *ps;
    int np;
    tp_gpt_params(m, &ps, &np);
    tp_optim_config oc = tp_optim_defaults(TP_OPTIM_ADAMW);
    oc.lr = 3e-2f;
    tp_optim *o = NULL;
    EXPECT_OK(k, tp_optim_create(k->g, &oc, ps, np, &o));
    int32_t ids[16], tgt[16];
    for (int t = 0; t < 16; t++) { /* two sequences of the cycle 0,3,6,9,12,15,2,5,... */
        ids[t] = (int32_t)((3 * (t + 5 * (t / 8))) % 16);
        tgt[t] = (int32_t)((ids[t] + 3) % 16);
    }
    tp_tensor ti = upload_i32(k, 2, 8, ids), tt = upload_i32(k, 2, 8, tgt);
    float first = 0, loss = 0;
    for (int s = 0; s < 40 && o; s++) {
        EXPECT_OK(k, tp_optim_zero_grad(o));
        EXPECT_OK(k, tp_gpt_forward(m, &ti, &tt, &loss));
        EXPECT_OK(k, tp_gpt_backward(m));
        EXPECT_OK(k, tp_optim_step(o));
        if (s == 0)
            first = loss;
    }
    EXPECT(k, first > 2.0f && loss < first / 3.0f, "loss %.4g -> %.4g after 40 steps",
           (double)first, (double)loss);
    tp_tensor_release(&ti), tp_tensor_release(&tt);
    tp_optim_free(o);
    tp_gpt_free(m);
}

START_TEST(test_train)
{
    tpt_run_all(body_train);
}
END_TEST

/* --------------------------------------------------------------- optim */

/* SGD and AdamW on two parameters (one decayed) vs PyTorch's formulas in
 * double. The device computes in f32: each update is a few roundings of
 * O(1) values, so 3 steps stay within 1e-5 relative of the double loop. */
static void body_optim(tpt_rank *k)
{
    if (k->r != 0 || k->T != 1)
        return;
    enum {
        N1 = 13,
        N2 = 5,
        STEPS = 3
    };
    float p1[N1], p2[N2], g1[N1], g2[N2];
    for (int kind = 0; kind < 3; kind++) { /* SGD, AdamW, SGD with momentum */
        for (int i = 0; i < N1; i++)
            p1[i] = tp_master_uniform(1, 1, (uint64_t)i, 1.0f),
            g1[i] = tp_master_uniform(1, 2, (uint64_t)i, 1.0f);
        for (int i = 0; i < N2; i++)
            p2[i] = tp_master_uniform(1, 3, (uint64_t)i, 1.0f),
            g2[i] = tp_master_uniform(1, 4, (uint64_t)i, 1.0f);
        tp_tensor v1 = {0}, v2 = {0}, d1 = {0}, d2 = {0};
        EXPECT_OK(k, tp_tensor_alloc2(k->dev, TP_F32, 1, N1, &v1));
        EXPECT_OK(k, tp_tensor_alloc2(k->dev, TP_F32, 1, N2, &v2));
        EXPECT_OK(k, tp_tensor_alloc2(k->dev, TP_F32, 1, N1, &d1));
        EXPECT_OK(k, tp_tensor_alloc2(k->dev, TP_F32, 1, N2, &d2));
        EXPECT_OK(k, tp_tensor_upload(&v1, p1));
        EXPECT_OK(k, tp_tensor_upload(&v2, p2));
        EXPECT_OK(k, tp_tensor_upload(&d1, g1));
        EXPECT_OK(k, tp_tensor_upload(&d2, g2));
        tp_param ps[2] = {{.name = "w", .value = &v1, .grad = &d1, .decay = true},
                          {.name = "b", .value = &v2, .grad = &d2, .decay = false}};
        tp_optim_config c = tp_optim_defaults(kind == 1 ? TP_OPTIM_ADAMW : TP_OPTIM_SGD);
        c.lr = 0.05f;
        c.weight_decay = 0.1f;
        c.momentum = kind == 2 ? 0.9f : 0.0f;
        tp_optim *o = NULL;
        EXPECT_OK(k, tp_optim_create(k->g, &c, ps, 2, &o));
        for (int s = 0; s < STEPS && o; s++)
            EXPECT_OK(k, tp_optim_step(o));
        float r1[N1], r2[N2];
        EXPECT_OK(k, tp_tensor_download(&v1, r1));
        EXPECT_OK(k, tp_tensor_download(&v2, r2));
        for (int which = 0; which < 2; which++) {
            int n = which ? N2 : N1;
            const float *p0 = which ? p2 : p1, *g = which ? g2 : g1, *got = which ? r2 : r1;
            double wd = which ? 0.0 : 0.1, lr = 0.05;
            for (int i = 0; i < n; i++) {
                double p = p0[i], m = 0, v = 0, buf = 0;
                for (int s = 1; s <= STEPS; s++) {
                    if (kind == 0) {
                        p -= lr * (g[i] + wd * p);
                        continue;
                    }
                    if (kind == 2) { /* torch.optim.SGD(momentum=0.9, dampening=0) */
                        double d = g[i] + wd * p;
                        buf = s == 1 ? d : 0.9 * buf + d;
                        p -= lr * buf;
                        continue;
                    }
                    p *= 1 - lr * wd;
                    m = 0.9 * m + 0.1 * g[i];
                    v = 0.999 * v + 0.001 * g[i] * g[i];
                    double mh = m / (1 - pow(0.9, s)), vh = v / (1 - pow(0.999, s));
                    p -= lr * mh / (sqrt(vh) + 1e-8);
                }
                EXPECT(k, fabs(got[i] - p) <= 1e-5 * (1 + fabs(p)),
                       "%s param %d[%d]: %.9g, PyTorch formula %.9g",
                       kind == 1 ? "AdamW"
                       : kind    ? "SGD momentum"
                                 : "SGD",
                       which, i, (double)got[i], p);
            }
        }
        EXPECT_OK(k, tp_optim_zero_grad(o));
        EXPECT_OK(k, tp_tensor_download(&d1, r1));
        for (int i = 0; i < N1; i++)
            EXPECT(k, r1[i] == 0.0f, "zero_grad left grad[%d] = %g", i, (double)r1[i]);
        tp_optim_free(o);
        tp_tensor_release(&v1), tp_tensor_release(&v2), tp_tensor_release(&d1),
            tp_tensor_release(&d2);
    }
}

START_TEST(test_optim)
{
    tpt_run_all(body_optim);
}
END_TEST

/* -------------------------------------------------------------- errors */

#define EXPECT_ERR(k, code, expr, needle)                                                          \
    do {                                                                                           \
        tp_status st_ = (expr);                                                                    \
        EXPECT((k), st_ == (code), "%s -> %s, expected %s", #expr, tp_status_string(st_),          \
               tp_status_string(code));                                                            \
        EXPECT((k), strstr(tp_last_error(), (needle)) != NULL, "%s: message '%s' lacks '%s'",      \
               #expr, tp_last_error(), (needle));                                                  \
    } while (0)

static void body_errors(tpt_rank *k)
{
    tp_gpt_config ok = {.vocab = 11,
                        .hidden = 8,
                        .heads = 4,
                        .ffn = 8,
                        .layers = 1,
                        .seq = 4,
                        .tied = true,
                        .seed = 1};
    tp_gpt *m = NULL;
    tp_gpt_config c = ok;
    c.vocab = 0;
    EXPECT_ERR(k, TP_ERR_SHAPE, tp_gpt_create(k->g, &c, &m), "vocab (0)");
    c = ok;
    c.layers = -1;
    EXPECT_ERR(k, TP_ERR_INVALID_ARG, tp_gpt_create(k->g, &c, &m), "layers = -1");
    c = ok;
    c.label_smoothing = 1.5f;
    EXPECT_ERR(k, TP_ERR_INVALID_ARG, tp_gpt_create(k->g, &c, &m), "label_smoothing");
    c = ok; /* seq x hidden overflows: refused before any allocation */
    c.seq = c.hidden = (int64_t)1 << 40;
    EXPECT_ERR(k, TP_ERR_INVALID_ARG, tp_gpt_create(k->g, &c, &m), "overflows");
    if (k->T == 3) { /* 2 heads over 3 ranks (4 heads over 3 ranks are fine: 2, 1, 1) */
        c = ok;
        c.heads = 2;
        EXPECT_ERR(k, TP_ERR_SHAPE, tp_gpt_create(k->g, &c, &m), "heads=2 is less than T=3");
    }
    if (k->T >= 2) {
        c = ok;
        c.vocab = 1;
        EXPECT_ERR(k, TP_ERR_SHAPE, tp_gpt_create(k->g, &c, &m), "vocab");
    }
    EXPECT(k, m == NULL, "failed create left a model");
    tp_embedding *e = NULL;
    tp_embedding_config ec = {.vocab = 11, .dim = 4, .init_bound = -1.0f};
    EXPECT_ERR(k, TP_ERR_INVALID_ARG, tp_embedding_create(k->g, &ec, &e), "init_bound -1");
    EXPECT(k, e == NULL, "failed create left an embedding");
    EXPECT_OK(k, tp_gpt_create(k->g, &ok, &m));
    if (!m)
        return;
    EXPECT_ERR(k, TP_ERR_INVALID_ARG, tp_gpt_backward(m), "without a successful forward");
    int32_t ids[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, bad[5] = {1, 2, 11, 0, 0};
    tp_tensor t5 = upload_i32(k, 1, 5, ids), t4 = upload_i32(k, 1, 4, ids);
    tp_tensor b4 = upload_i32(k, 1, 4, bad), t3 = upload_i32(k, 1, 3, ids);
    float loss;
    EXPECT_ERR(k, TP_ERR_SHAPE, tp_gpt_forward(m, &t5, &t5, &loss), "1 <= seq <= 4");
    EXPECT_ERR(k, TP_ERR_SHAPE, tp_gpt_forward(m, &t4, &t3, &loss), "3 targets for 4 tokens");
    EXPECT_ERR(k, TP_ERR_INVALID_ARG, tp_gpt_forward(m, &b4, &t4, &loss), "ids[2] = 11");
    EXPECT_ERR(k, TP_ERR_INVALID_ARG, tp_gpt_forward(m, &t4, &b4, &loss), "target of row 2 is 11");
    EXPECT_ERR(k, TP_ERR_INVALID_ARG, tp_gpt_get_full_param(m, 999, NULL, NULL), "outside");
    const tp_param *ps;
    int np;
    tp_gpt_params(m, &ps, &np);
    tp_optim *o = NULL;
    tp_optim_config oc = tp_optim_defaults(TP_OPTIM_ADAMW);
    oc.beta1 = 1.0f;
    EXPECT_ERR(k, TP_ERR_INVALID_ARG, tp_optim_create(k->g, &oc, ps, np, &o), "betas");
    oc = tp_optim_defaults(TP_OPTIM_SGD);
    oc.momentum = 1.0f;
    EXPECT_ERR(k, TP_ERR_INVALID_ARG, tp_optim_create(k->g, &oc, ps, np, &o), "momentum 1");
    oc = tp_optim_defaults(TP_OPTIM_SGD);
    oc.lr = -1.0f;
    EXPECT_ERR(k, TP_ERR_INVALID_ARG, tp_optim_create(k->g, &oc, ps, np, &o), "lr -1");
    tp_param nog = ps[0];
    nog.grad = NULL;
    oc = tp_optim_defaults(TP_OPTIM_SGD);
    EXPECT_ERR(k, TP_ERR_INVALID_ARG, tp_optim_create(k->g, &oc, &nog, 1, &o), "has no grad");
    EXPECT(k, o == NULL, "failed create left an optimizer");
    tp_tensor_release(&t5), tp_tensor_release(&t4), tp_tensor_release(&b4), tp_tensor_release(&t3);
    tp_gpt_free(m);
}

START_TEST(test_errors)
{
    tpt_run_all(body_errors);
}
END_TEST

/* ------------------------------------------------------------ bf16, f16 */

/*
 * The GPT in bf16/f16 (embedding, position add, blocks, final norm, output
 * projection, vocab-parallel cross-entropy) against the same model in f32
 * holding exactly the same weights (the low-precision model's shards,
 * widened, uploaded into the f32 model's), whose loss and logits are
 * checked against the double reference here too. Error model as in
 * tests/transformer (every stored tensor rounded once, relative u of the
 * magnitudes it rounds, max|ref| normalised): the longest chain of
 * roundings is the embedding and position add (2), per block about 22
 * (docs/determinism.md), the final norm and the logits GEMM (2), so we
 * accept (8 + 24 L) u relative to max(1, max|ref|) per tensor, for the
 * loss, the logits and every gradient (measured: well under a quarter of
 * it). The loss is f32 on both sides.
 */
static double lp_u(tp_dtype dt)
{
    return dt == TP_BF16 ? 0x1p-8 : 0x1p-11;
}

/* max |a - b| / max(1, max |b|) over n. */
static double rel_maxdiff(const float *a, const double *b, int64_t n)
{
    double m = 1.0, e = 0.0;
    for (int64_t i = 0; i < n; i++)
        m = fmax(m, fabs(b[i]));
    for (int64_t i = 0; i < n; i++)
        e = fmax(e, fabs((double)a[i] - b[i]));
    return e / m;
}

static double rel_maxdiff_d(const double *a, const double *b, int64_t n)
{
    double m = 1.0, e = 0.0;
    for (int64_t i = 0; i < n; i++)
        m = fmax(m, fabs(b[i]));
    for (int64_t i = 0; i < n; i++)
        e = fmax(e, fabs(a[i] - b[i]));
    return e / m;
}

/* The f32 model's parameters := the low-precision model's (this rank's shards, widened). */
static void copy_weights(tpt_rank *k, tp_gpt *lp, tp_gpt *f32)
{
    const tp_param *a, *b;
    int na, nb;
    tp_gpt_params(lp, &a, &na);
    tp_gpt_params(f32, &b, &nb);
    EXPECT(k, na == nb, "parameter counts differ: %d vs %d", na, nb);
    for (int i = 0; i < na && i < nb; i++) {
        int64_t n = tp_tensor_numel(a[i].value);
        float *h = malloc(sizeof(float) * (size_t)(n + 1));
        void *raw = malloc(tp_tensor_bytes(a[i].value) + 1);
        EXPECT_OK(k, tp_tensor_download(a[i].value, raw));
        tp_host_convert(TP_F32, h, a[i].value->dtype, raw, (size_t)n);
        EXPECT_OK(k, tp_tensor_upload(b[i].value, h));
        free(h), free(raw);
    }
}

/* Forward + backward of m on the case's batch: loss, full logits, full grads. */
static void run_gpt_once(tpt_rank *k, const gcase *c, tp_gpt *m, const tp_gpt_config *cfg,
                         float *loss, float *logits, full_params *f)
{
    int64_t N = c->batch * c->seq;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)N), *tgt = malloc(sizeof(int32_t) * (size_t)N);
    make_batch(N, c->V, 7, c->ignore, ids, tgt);
    tp_tensor ti = upload_i32(k, c->batch, c->seq, ids), tt = upload_i32(k, 1, N, tgt);
    EXPECT_OK(k, tp_gpt_zero_grad(m));
    EXPECT_OK(k, tp_gpt_forward(m, &ti, &tt, loss));
    EXPECT_OK(k, tp_gpt_backward(m));
    EXPECT_OK(k, tp_gpt_get_full_logits(m, logits));
    get_full(k, m, cfg, f);
    tp_tensor_release(&ti), tp_tensor_release(&tt);
    free(ids), free(tgt);
}

static double lowp_gpt_case(tpt_rank *k, const gcase *c, tp_dtype dt)
{
    tp_gpt_config cfg = case_cfg(c), c32 = cfg;
    cfg.dtype = dt;
    tp_gpt *m = NULL, *r = NULL;
    EXPECT_OK(k, tp_gpt_create(k->g, &cfg, &m));
    EXPECT_OK(k, tp_gpt_create(k->g, &c32, &r));
    if (!m || !r) {
        tp_gpt_free(m), tp_gpt_free(r);
        return 0.0;
    }
    copy_weights(k, m, r);
    int64_t N = c->batch * c->seq;
    float lm = 0, lr = 0, *gm = malloc(sizeof(float) * (size_t)(N * c->V)),
          *gr = malloc(sizeof(float) * (size_t)(N * c->V));
    full_params fm, fr;
    run_gpt_once(k, c, m, &cfg, &lm, gm, &fm);
    run_gpt_once(k, c, r, &c32, &lr, gr, &fr);
    double tol = (8.0 + 24.0 * (double)c->L) * lp_u(dt), worst = 0.0;
    if (k->r == 0) {
        double dl = (double)lr, *dg = malloc(sizeof(double) * (size_t)(N * c->V));
        for (int64_t i = 0; i < N * c->V; i++)
            dg[i] = gr[i];
        double e = rel_maxdiff(&lm, &dl, 1), el = rel_maxdiff(gm, dg, N * c->V);
        EXPECT(k, e <= tol, "%s %s: loss %.7g vs f32 %.7g: %.3g > %.3g", c->what, tp_dtype_name(dt),
               (double)lm, (double)lr, e, tol);
        EXPECT(k, el <= tol, "%s %s: logits differ from f32 by %.3g > %.3g", c->what,
               tp_dtype_name(dt), el, tol);
        EXPECT(k, el > 0.0, "%s %s: logits equal the f32 model's: did it run in %s?", c->what,
               tp_dtype_name(dt), tp_dtype_name(dt));
        /* the tolerance can fail: the f32 logits rotated by one token row */
        double *rot = malloc(sizeof(double) * (size_t)(N * c->V));
        for (int64_t t = 0; t < N; t++)
            for (int64_t v = 0; v < c->V; v++)
                rot[t * c->V + v] = dg[((t + 1) % N) * c->V + v];
        EXPECT(k, N < 2 || rel_maxdiff(gm, rot, N * c->V) > tol,
               "%s %s: a wrong reference (logit rows rotated) passes the tolerance %.3g", c->what,
               tp_dtype_name(dt), tol);
        free(rot);
        worst = fmax(e, el);
        for (int p = 0; p < fm.n && p < fr.n; p++) {
            double eg = rel_maxdiff_d(fm.grad[p], fr.grad[p], fm.len[p]);
            EXPECT(k, eg <= tol, "%s %s: gradient of %s differs from f32 by %.3g > %.3g", c->what,
                   tp_dtype_name(dt), fm.name[p], eg, tol);
            worst = fmax(worst, eg);
        }
        free(dg);
    }
    free_full(&fm), free_full(&fr);
    free(gm), free(gr);
    tp_gpt_free(m), tp_gpt_free(r);
    return worst / tol;
}

static void body_lowp(tpt_rank *k)
{
    const tp_dtype dts[] = {TP_BF16, TP_F16};
    for (int d = 0; d < 2; d++) {
        double worst = 0.0;
        for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++)
            if (CASES[i].nh >= k->T && CASES[i].V >= k->T)
                worst = fmax(worst, lowp_gpt_case(k, &CASES[i], dts[d]));
        if (k->r == 0 && getenv("GPT_VERBOSE"))
            printf("gpt %s T=%d: worst difference from f32 = %.3f of the tolerance\n",
                   tp_dtype_name(dts[d]), k->T, worst);
    }
}

START_TEST(test_lowp)
{
    tpt_run_all(body_lowp);
}
END_TEST

/* ----------------------------------------- mixed precision, loss scale */

/* An f16 or bf16 tensor [1, n] holding h (rounded). */
static tp_tensor lp_tensor(tpt_rank *k, tp_dtype dt, int n, const float *h)
{
    tp_tensor t = {0};
    uint16_t b[64];
    EXPECT_OK(k, tp_tensor_alloc2(k->dev, dt, 1, n, &t));
    tp_host_convert(dt, b, TP_F32, h, (size_t)n);
    EXPECT_OK(k, tp_tensor_upload(&t, b));
    return t;
}

static float lp_get(tpt_rank *k, const tp_tensor *t, int i)
{
    uint16_t b[64];
    float f[64];
    EXPECT_OK(k, tp_tensor_download(t, b));
    tp_host_convert(TP_F32, f, t->dtype, b, (size_t)tp_tensor_numel(t));
    return f[i];
}

/*
 * f32 master weights: SGD with updates below bf16's spacing. p = 1, g = 1,
 * lr = 2^-10, a quarter of the spacing 2^-8 just below 1: without a master
 * the value would never move (1 - 2^-10 rounds back to 1); with it the
 * value is the f32 master rounded: 1 after steps 1 and 2 (1 - 2^-9 is a
 * tie, to even), and after 8 steps exactly 1 - 2^-7 (every partial sum is
 * exact in f32).
 * Dynamic loss scaling, on every rank of the group: a gradient of inf on
 * the last rank only skips the step on all ranks (value, step count kept,
 * skipped = 1, scale halved: 1024 -> 512); finite gradients (scaled by the
 * loss scale, as tp_gpt_backward_scaled makes them) are divided by it;
 * growth_interval 2 good steps double it back.
 */
static void body_mixed(tpt_rank *k)
{
    float one = 1.0f, gone = 1.0f;
    tp_tensor v = lp_tensor(k, TP_BF16, 1, &one), g = lp_tensor(k, TP_BF16, 1, &gone);
    tp_param p = {.name = "w", .value = &v, .grad = &g};
    tp_optim_config c = tp_optim_defaults(TP_OPTIM_SGD);
    c.lr = 0x1p-10f;
    tp_optim *o = NULL;
    EXPECT_OK(k, tp_optim_create(k->g, &c, &p, 1, &o));
    for (int s = 0; s < 8 && o; s++) {
        EXPECT_OK(k, tp_optim_step(o));
        if (s < 2)
            EXPECT(k, lp_get(k, &v, 0) == 1.0f,
                   "step %d: value %.9g moved before the master "
                   "crossed half a spacing",
                   s + 1, (double)lp_get(k, &v, 0));
    }
    EXPECT(k, lp_get(k, &v, 0) == 1.0f - 0x1p-7f, "after 8 steps of 2^-10: %.9g, expected %.9g",
           (double)lp_get(k, &v, 0), (double)(1.0f - 0x1p-7f));
    tp_optim_free(o);
    tp_tensor_release(&v), tp_tensor_release(&g);

    /* dynamic loss scale, f16: an inf gradient on the last rank only */
    float h = 0.5f, inf = INFINITY, gs = 1024.0f * 0.25f; /* 0.25 scaled by 1024 */
    v = lp_tensor(k, TP_F16, 1, &h);
    g = lp_tensor(k, TP_F16, 1, k->r == k->T - 1 ? &inf : &gs);
    p = (tp_param){.name = "w", .value = &v, .grad = &g}; /* the optimizer keeps &g */
    c.lr = 1.0f;
    c.loss_scale = 1024.0f;
    c.dynamic_loss_scale = true;
    c.growth_interval = 2;
    o = NULL;
    EXPECT_OK(k, tp_optim_create(k->g, &c, &p, 1, &o));
    if (!o)
        return;
    EXPECT_OK(k, tp_optim_step(o));
    EXPECT(k,
           lp_get(k, &v, 0) == 0.5f && tp_optim_steps(o) == 0 && tp_optim_skipped(o) == 1 &&
               tp_optim_loss_scale(o) == 512.0f,
           "rank %d: after an inf gradient on rank %d: value %.9g, steps %lld, skipped %lld, "
           "scale %g (expected 0.5, 0, 1, 512)",
           k->r, k->T - 1, (double)lp_get(k, &v, 0), (long long)tp_optim_steps(o),
           (long long)tp_optim_skipped(o), (double)tp_optim_loss_scale(o));
    float g512 = 512.0f * 0.25f; /* the next backward's gradient at scale 512 */
    tp_tensor_release(&g);
    g = lp_tensor(k, TP_F16, 1, &g512);
    EXPECT_OK(k, tp_optim_step(o)); /* 0.5 - 0.25 */
    EXPECT(k, lp_get(k, &v, 0) == 0.25f && tp_optim_steps(o) == 1,
           "unscaled step: value %.9g (expected 0.25), steps %lld", (double)lp_get(k, &v, 0),
           (long long)tp_optim_steps(o));
    EXPECT_OK(k, tp_optim_step(o)); /* second good step: the scale doubles */
    EXPECT(k, tp_optim_loss_scale(o) == 1024.0f && lp_get(k, &v, 0) == 0.0f,
           "after 2 good steps: scale %g (expected 1024), value %.9g (expected 0)",
           (double)tp_optim_loss_scale(o), (double)lp_get(k, &v, 0));
    tp_optim_free(o);
    tp_tensor_release(&v), tp_tensor_release(&g);
}

START_TEST(test_mixed)
{
    tpt_run_all(body_mixed);
}
END_TEST

/* -------------------------------------------------------------- memory */

/*
 * Device memory accounting (tp_stats.mem). Parameter bytes of rank r at T
 * are computed here from the configuration alone, with this file's own
 * shard formula (the first n % T ranks hold one row more), and must equal
 * the counter's growth over tp_gpt_create exactly:
 *   sharded: the token table's vocab rows, the QKV columns of the rank's
 *     query heads and of the KV heads they use, the out-projection rows of
 *     its query heads, fc1's columns (and bias), fc2's rows, the untied
 *     output projection's vocab columns;
 *   replicated: the position table, every norm's gain (and bias), the
 *     out-projection's and fc2's biases.
 * Summed over the ranks that is the full model plus (T - 1) copies of the
 * replicated tensors plus the extra copies of KV heads held by several
 * ranks; when every split divides, each rank holds exactly full_sharded/T
 * + replicated + its share of the KV heads. Gradients allocate the same
 * bytes; AdamW adds two f32 moments per element and, for bf16/f16, an f32
 * master copy.
 */

/* [lo, hi) of n split over T, rank r: written here independently of tp_shard_range. */
static void my_shard(int64_t n, int T, int r, int64_t *lo, int64_t *hi)
{
    int64_t base = n / T, rem = n % T;
    *lo = r * base + (r < rem ? r : rem);
    *hi = *lo + base + (r < rem ? 1 : 0);
}

typedef struct mem_expect {
    int64_t sharded, replicated; /* elements on this rank */
    int64_t full_sharded;        /* elements of the sharded tensors in the full model */
    int64_t kv_extra; /* elements of this rank's KV heads whose first query head is on an earlier
                         rank (the copies beyond one per KV head) */
} mem_expect;

static void expect_block(const tp_gpt_config *c, int T, int r, mem_expect *e)
{
    int64_t H = c->hidden, nh = c->heads, kv = c->kv_heads ? c->kv_heads : nh;
    int64_t hd = c->head_dim ? c->head_dim : H / nh, g = nh / kv, F = c->ffn, b = c->bias;
    int64_t ql, qh, fl, fh;
    my_shard(nh, T, r, &ql, &qh);
    my_shard(F, T, r, &fl, &fh);
    int64_t kl = ql / g, kh = (qh - 1) / g + 1;
    e->replicated += 2 * H * (c->rms ? 1 : 2) + 2 * b * H; /* ln1, ln2; out, fc2 biases */
    e->sharded += (H + b) * (qh - ql + 2 * (kh - kl)) * hd + (qh - ql) * hd * H; /* qkv, out */
    e->sharded += (H + b) * (fh - fl) + (fh - fl) * H;                           /* fc1, fc2 */
    e->full_sharded += (H + b) * (nh + 2 * kv) * hd + nh * hd * H + (H + b) * F + F * H;
    for (int64_t k = kl; k < kh; k++) { /* held elsewhere too: its group straddles a boundary */
        if (ql > k * g) /* an earlier rank holds its first query head: this copy is extra */
            e->kv_extra += 2 * (H + b) * hd;
    }
}

static mem_expect expect_gpt(const tp_gpt_config *c, int T, int r)
{
    mem_expect e = {0};
    int64_t H = c->hidden, vl, vh;
    my_shard(c->vocab, T, r, &vl, &vh);
    e.sharded = (vh - vl) * H * (c->tied ? 1 : 2); /* token table (+ output projection) */
    e.full_sharded = c->vocab * H * (c->tied ? 1 : 2);
    e.replicated = c->seq * H + H * (c->rms ? 1 : 2); /* position table, ln_f */
    for (int64_t i = 0; i < c->layers; i++)
        expect_block(c, T, r, &e);
    return e;
}

static uint64_t mem_now(tpt_rank *k, tp_mem_use u)
{
    tp_stats st;
    tp_stats_get(k->g, &st);
    return st.mem.kind[u].bytes;
}

/* Sum of v (>= 0, < 2^40) over the group's ranks, exactly (two i32 parts). */
static int64_t sum_ranks(tpt_rank *k, int64_t v)
{
    tp_tensor t = {0};
    int64_t n = 2;
    EXPECT_OK(k, tp_tensor_alloc(k->dev, TP_I32, 1, &n, &t));
    int32_t h[2] = {(int32_t)(v >> 20), (int32_t)(v & 0xfffff)}; /* each part sums exactly */
    EXPECT_OK(k, tp_tensor_upload(&t, h));
    EXPECT_OK(k, tp_all_reduce(k->g, t.data, t.data, 2, TP_I32, TP_SUM));
    EXPECT_OK(k, tp_tensor_download(&t, h));
    tp_tensor_release(&t);
    return ((int64_t)h[0] << 20) + h[1];
}

static void mem_case(tpt_rank *k, tp_gpt_config cfg, tp_dtype dt)
{
    cfg.dtype = dt;
    int64_t es = (int64_t)tp_dtype_size(dt);
    uint64_t p0 = mem_now(k, TP_USE_PARAMETERS), g0 = mem_now(k, TP_USE_GRADIENTS),
             o0 = mem_now(k, TP_USE_OPTIMIZER);
    tp_gpt *m = NULL;
    EXPECT_OK(k, tp_gpt_create(k->g, &cfg, &m));
    if (!m)
        return;
    mem_expect e = expect_gpt(&cfg, k->T, k->r);
    int64_t got = (int64_t)(mem_now(k, TP_USE_PARAMETERS) - p0);
    int64_t want = (e.sharded + e.replicated) * es;
    EXPECT(k, got == want,
           "%s T=%d rank %d: parameter bytes %lld, expected %lld (sharded %lld + replicated %lld "
           "elements x %lld)",
           tp_dtype_name(dt), k->T, k->r, (long long)got, (long long)want, (long long)e.sharded,
           (long long)e.replicated, (long long)es);
    /* over the ranks: the full model, T copies of the replicated tensors, extra KV copies */
    int64_t all = sum_ranks(k, got), kv_extra = sum_ranks(k, e.kv_extra);
    int64_t whole = (e.full_sharded + kv_extra + (int64_t)k->T * e.replicated) * es;
    EXPECT(k, all == whole, "T=%d: parameter bytes over the ranks %lld, expected %lld", k->T,
           (long long)all, (long long)whole);
    if (k->T == 4 && cfg.vocab % 4 == 0 && cfg.heads % 4 == 0 && cfg.ffn % 4 == 0 &&
        e.kv_extra == 0) /* every split even: exactly full/4 + replicated on each rank */
        EXPECT(k, got == (e.full_sharded / 4 + e.replicated) * es,
               "T=4: %lld != full/4 %lld + replicated %lld", (long long)got,
               (long long)(e.full_sharded / 4 * es), (long long)(e.replicated * es));
    const tp_param *ps;
    int np;
    tp_gpt_params(m, &ps, &np);
    EXPECT_OK(k, tp_gpt_zero_grad(m));
    EXPECT(k, (int64_t)(mem_now(k, TP_USE_GRADIENTS) - g0) == want,
           "gradient bytes %lld, expected the parameters' %lld",
           (long long)(mem_now(k, TP_USE_GRADIENTS) - g0), (long long)want);
    tp_optim_config oc = tp_optim_defaults(TP_OPTIM_ADAMW);
    tp_optim *o = NULL;
    EXPECT_OK(k, tp_optim_create(k->g, &oc, ps, np, &o));
    int64_t n = e.sharded + e.replicated, wo = n * 4 * (dt == TP_F32 ? 2 : 3);
    EXPECT(k, (int64_t)(mem_now(k, TP_USE_OPTIMIZER) - o0) == wo,
           "optimizer bytes %lld, expected %lld (AdamW m, v%s)",
           (long long)(mem_now(k, TP_USE_OPTIMIZER) - o0), (long long)wo,
           dt == TP_F32 ? "" : " and the f32 master");
    tp_optim_free(o);
    tp_gpt_free(m);
    EXPECT(k,
           mem_now(k, TP_USE_PARAMETERS) == p0 && mem_now(k, TP_USE_GRADIENTS) == g0 &&
               mem_now(k, TP_USE_OPTIMIZER) == o0,
           "memory counters not back after free");
}

static void body_memory(tpt_rank *k)
{
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++)
        if (CASES[i].nh >= k->T && CASES[i].V >= k->T)
            for (int d = 0; d < 2; d++)
                mem_case(k, case_cfg(&CASES[i]), d ? TP_BF16 : TP_F32);
    /* every split even at T = 4: vocab 16, heads 12 (KV 4: one per rank at T=4), ffn 16 */
    tp_gpt_config even = {.vocab = 16,
                          .hidden = 8,
                          .heads = 12,
                          .kv_heads = 4,
                          .head_dim = 2,
                          .ffn = 16,
                          .layers = 2,
                          .seq = 5,
                          .bias = true,
                          .seed = 3};
    mem_case(k, even, TP_F32);
    even.tied = true, even.rms = true, even.bias = false;
    mem_case(k, even, TP_BF16);
}

START_TEST(test_memory)
{
    tpt_run_all(body_memory);
}
END_TEST

/*
 * Sequence parallelism divides every activation a block keeps for backward
 * by T: the norms' inputs and outputs and their statistics are token shards,
 * the attention's QKV, probabilities and context are split by heads, the
 * MLP's fc1 and GeLU outputs by ffn. The gathered inputs of the two
 * column-parallel GEMMs (QKV, fc1) are not kept: backward all-gathers them
 * again from the kept shards (tp-transformer.h), into workspace. With A1
 * the activation bytes of one block forward at T = 1 without SP (the whole
 * model's), N tokens, es the dtype size, Q(w) = N w es the kept QKV
 * activation of width w (W the full width, w_r rank r's: its query heads
 * and the KV heads they use, some held by two ranks), checked:
 *   (1) per rank, A_sp(T) <= cf (A1 - Q(W)) / T + Q(w_r), cf = max over the
 *       split sizes n (tokens, heads, ffn) of ceil(n/T) T / n: every piece
 *       but QKV is at most its ceil share, and QKV is exact. No other
 *       term: the bound's slack, (cf - 1) (A1 - Q(W)) / T, is asserted to
 *       be below one [N, hidden] tensor, so keeping a gathered input again
 *       fails here;
 *   (2) over the ranks, sum_r A_sp = A1 + Q(sum_r w_r - W) exactly: SP
 *       keeps the unsplit model's activations once, split over the ranks,
 *       plus only the replicated KV heads' columns of QKV; with (1) this is
 *       the "SP activations per rank ~ 1/T of no-SP", no-SP meaning
 *       the same model unsplit (T = 1), since A_sp(T) <= cf' A1 / T with
 *       cf' = max(cf, T w_r / W);
 *   (3) for T >= 2, A_sp(T) < A_nosp(T) on every rank: without SP the
 *       norms' inputs and outputs stay full on every rank, and SP now saves
 *       them without keeping anything full in their place (before the
 *       re-gather it kept 2 N hidden es more and lost at T = 2 here).
 */
static uint64_t block_acts(tpt_rank *k, tp_comm *g, const tp_block_config *c, int64_t N, int64_t b,
                           int64_t s)
{
    int T = tp_comm_size(g), r = tp_comm_rank(g);
    int64_t lo = 0, hi = N;
    if (c->sequence_parallel)
        my_shard(N, T, r, &lo, &hi);
    tp_block *blk = NULL;
    EXPECT_OK(k, tp_block_create(g, c, &blk));
    tp_tensor x = {0}, y = {0};
    EXPECT_OK(k, tp_tensor_alloc2(tp_comm_device(g), c->dtype, hi - lo, c->hidden, &x));
    tp_stats st;
    tp_stats_get(g, &st);
    uint64_t a0 = st.mem.kind[TP_USE_ACTIVATIONS].bytes;
    if (blk)
        EXPECT_OK(k, tp_block_forward(blk, &x, b, s, &y));
    tp_stats_get(g, &st);
    uint64_t a = st.mem.kind[TP_USE_ACTIVATIONS].bytes - a0;
    tp_tensor_release(&x), tp_tensor_release(&y);
    tp_block_free(blk);
    return a;
}

/* Width of rank r's QKV activation in head_dim units: its query heads and
 * the KV heads they use (tp-transformer.h). */
static int64_t qkv_heads_of(const tp_block_config *c, int T, int r)
{
    int64_t ql, qh, g = c->heads / c->kv_heads;
    my_shard(c->heads, T, r, &ql, &qh);
    return qh - ql + 2 * ((qh - 1) / g + 1 - ql / g);
}

static void body_sp_memory(tpt_rank *k)
{
    for (int d = 0; d < 2; d++) {
        tp_block_config c = {.hidden = 24,
                             .heads = 12,
                             .kv_heads = 4,
                             .ffn = 52,
                             .bias = true,
                             .causal = true,
                             .seed = 1,
                             .tensor_id = 10,
                             .dtype = d ? TP_BF16 : TP_F32};
        int64_t b = 2, s = 13, N = b * s, es = (int64_t)tp_dtype_size(c.dtype);
        int64_t hd = c.hidden / c.heads;
        tp_comm *solo = NULL;
        EXPECT_OK(k, tp_comm_split(k->g, k->r == 0 ? 0 : -1, 0, &solo));
        uint64_t a1 = 0;
        if (solo)
            a1 = block_acts(k, solo, &c, N, b, s);
        tp_comm_free(solo);
        a1 = (uint64_t)sum_ranks(k, (int64_t)a1); /* rank 0's value everywhere */
        uint64_t nosp = block_acts(k, k->g, &c, N, b, s);
        c.sequence_parallel = true;
        uint64_t sp = block_acts(k, k->g, &c, N, b, s);
        int T = k->T;
        int64_t splits[] = {N, c.heads, c.ffn};
        double cf = 1.0;
        for (int i = 0; i < 3; i++)
            cf = fmax(cf, (double)((splits[i] + T - 1) / T * T) / (double)splits[i]);
        int64_t W = c.heads + 2 * c.kv_heads, w = qkv_heads_of(&c, T, k->r), wsum = 0;
        for (int r = 0; r < T; r++)
            wsum += qkv_heads_of(&c, T, r);
        double q1 = (double)(N * W * hd * es), qr = (double)(N * w * hd * es);
        double rest = (double)a1 - q1, bound = cf * rest / T + qr;
        /* (1) and its sharpness */
        EXPECT(k, (double)sp <= bound,
               "%s T=%d: SP activations %llu > bound %.0f (%.3f x (A1 %llu - QKV %.0f) / T + "
               "this rank's QKV %.0f)",
               tp_dtype_name(c.dtype), T, (unsigned long long)sp, bound, cf, (unsigned long long)a1,
               q1, qr);
        EXPECT(k, (cf - 1.0) * rest / T < (double)(N * c.hidden * es),
               "%s T=%d: bound slack %.0f would hide a kept [N, hidden] tensor (%lld bytes)",
               tp_dtype_name(c.dtype), T, (cf - 1.0) * rest / T, (long long)(N * c.hidden * es));
        /* (2) */
        int64_t total = sum_ranks(k, (int64_t)sp), want = (int64_t)a1 + N * (wsum - W) * hd * es;
        EXPECT(k, total == want,
               "%s T=%d: SP activations summed over the ranks %lld, expected A1 %llu + "
               "replicated KV columns %lld = %lld",
               tp_dtype_name(c.dtype), T, (long long)total, (unsigned long long)a1,
               (long long)(N * (wsum - W) * hd * es), (long long)want);
        /* (3) */
        if (T >= 2)
            EXPECT(k, sp < nosp, "%s T=%d: SP activations %llu >= no-SP %llu",
                   tp_dtype_name(c.dtype), T, (unsigned long long)sp, (unsigned long long)nosp);
        if (k->r == 0 && getenv("TP_TEST_VERBOSE"))
            printf("%s T=%d: block activations A1 %llu, no-SP %llu, SP %llu = %.3f A1 (1/T = "
                   "%.3f, bound %.0f)\n",
                   tp_dtype_name(c.dtype), T, (unsigned long long)a1, (unsigned long long)nosp,
                   (unsigned long long)sp, (double)sp / (double)a1, 1.0 / T, bound);
    }
}

START_TEST(test_sp_memory)
{
    tpt_run_all(body_sp_memory);
}
END_TEST

/* ------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    const tpt_test tests[] = {
        {"optim", test_optim},
        {"errors", test_errors},
        {"counts", test_counts},
        {"reference", test_reference},
        {"bitwise_tp", test_bitwise_tp},
        {"determinism", test_determinism},
        {"overlap", test_overlap},
        {"train", test_train},
        {"memory", test_memory},
        {"sp_memory", test_sp_memory},
        {"lowp", test_lowp},
        {"mixed", test_mixed},
    };
    return tpt_main(&argc, &argv, "gpt", tests, sizeof tests / sizeof tests[0], "GPT_TEST");
}
