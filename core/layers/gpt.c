/* SPDX-License-Identifier: MIT */
/*
 * gpt.c — a small Megatron-style GPT: vocab-parallel token embedding +
 * replicated position embedding -> TransformerBlocks -> final norm ->
 * vocab-parallel output projection (tied or untied) -> vocab-parallel CE.
 *
 * The output projection is composed here (not through tp_linear) so that
 * tied and untied share one path and sequence parallelism can all-gather
 * its input and reduce-scatter its input gradient; the untied weight is
 * still a ColumnParallelLinear (its storage, master weight and get_full).
 */
#include "layers-internal.h"
#include "transformer/xf-internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Tensor ids of the counter-based master initialization (tp_master_fill):
 * with the seed they are every weight's identity, so the values are fixed
 * (the same weights for every T, and across releases). */
enum {
    TID_EMBEDDING = 1,    /* token table */
    TID_POSITION = 2,     /* position table */
    TID_OUTPUT = 3,       /* untied output projection (no bias) */
    TID_BLOCK0 = 16,      /* block i: TID_BLOCK0 + i * TID_BLOCK_STRIDE ... */
    TID_BLOCK_STRIDE = 8, /* attention +0..3, MLP +4..7 */
};

/* An attention layer's tensors, in tp_attention_get_full's argument order. */
typedef enum att_tensor {
    ATT_QKV_WEIGHT,
    ATT_QKV_BIAS,
    ATT_OUT_WEIGHT,
    ATT_OUT_BIAS,
    ATT_TENSORS,
} att_tensor;

/* How to assemble a parameter's full tensor (tp_gpt_get_full_param). */
typedef enum param_kind {
    PARAM_EMBEDDING,  /* the token table */
    PARAM_REPLICATED, /* every rank holds the full tensor */
    PARAM_LINEAR_WEIGHT,
    PARAM_LINEAR_BIAS,
    PARAM_ATTENTION, /* the attention tensor `which` */
} param_kind;

typedef struct param_source {
    param_kind kind;
    void *layer;      /* the tp_embedding, tp_linear or tp_attention; NULL if replicated */
    att_tensor which; /* PARAM_ATTENTION only */
} param_source;

struct tp_gpt {
    tp_comm *comm;
    tp_device *dev;
    char *label;
    tp_gpt_config cfg;
    tp_dtype dt; /* cfg.dtype: every parameter, gradient and activation */
    size_t es;
    int T, rank;
    int64_t vlo, vhi, vl; /* this rank's vocab shard */
    int64_t *voff;        /* T+1 vocab offsets */
    int64_t *toff;        /* T+1 token-row offsets (sequence parallel) */
    size_t *counts;
    tp_embedding *emb;
    tp_tensor pos, dpos; /* [seq, hidden], replicated */
    tp_block **blocks;
    tp_norm *lnf;
    tp_linear *out; /* untied only */
    tp_vocab_ce *ce;
    /* parameters: params[i] is assembled as sources[i] says */
    tp_param *params;
    param_source *sources;
    int np, cap;
    /* where backward finishes them: block i's parameters are [blk_lo[i],
     * blk_lo[i+1]), ln_f's [blk_lo[layers], out_lo), the untied output's
     * [out_lo, np), the embeddings' [0, blk_lo[0]) */
    int *blk_lo, out_lo;
    tp_dp *dp; /* tp_gpt_set_dp: handed each gradient as it is final */
    /* activations and gradients of the last forward */
    tp_tensor *xs;             /* layers+1: xs[0] embedding (+ position), xs[i+1] block i */
    tp_tensor hn;              /* final norm output [rows, hidden] */
    tp_tensor logits, dlogits; /* [tokens, vl] */
    tp_tensor g0, g1;          /* [rows, hidden] ping-pong gradients */
    tp_tensor pos_ids;         /* int32 [tokens]: t % seq_len */
    tpl_ws hfull;              /* SP: gathered hn [tokens, hidden], gathered again in backward */
    tpl_ws dhfull; /* [tokens, hidden] partial input gradient of the output projection */
    tpl_ws tmp;    /* position rows [rows, hidden] */
    int64_t batch, seqlen, tokens, rows, slo, shi;
    bool saved;
};

/* ------------------------------------------------------------ lifetime */

static void release_acts(tp_gpt *m)
{
    if (m->xs)
        for (int64_t i = 0; i <= m->cfg.layers; i++)
            tpl_release(&m->xs[i], TP_USE_ACTIVATIONS);
    tpl_release(&m->hn, TP_USE_ACTIVATIONS);
    tpl_release(&m->logits, TP_USE_ACTIVATIONS);
    tpl_release(&m->dlogits, TP_USE_WORKSPACE);
    tpl_release(&m->g0, TP_USE_WORKSPACE);
    tpl_release(&m->g1, TP_USE_WORKSPACE);
    tpl_release(&m->pos_ids, TP_USE_ACTIVATIONS);
}

void tp_gpt_free(tp_gpt *m)
{
    if (!m)
        return;
    release_acts(m);
    free(m->xs);
    tp_embedding_free(m->emb);
    tpl_release(&m->pos, TP_USE_PARAMETERS);
    tpl_release(&m->dpos, TP_USE_GRADIENTS);
    if (m->blocks)
        for (int64_t i = 0; i < m->cfg.layers; i++)
            tp_block_free(m->blocks[i]);
    free(m->blocks);
    tp_norm_free(m->lnf);
    tp_linear_free(m->out);
    tp_vocab_ce_free(m->ce);
    for (int i = 0; i < m->np; i++)
        free((char *)m->params[i].name);
    free(m->params);
    free(m->sources);
    free(m->blk_lo);
    tpl_ws_release(&m->hfull);
    tpl_ws_release(&m->dhfull);
    tpl_ws_release(&m->tmp);
    free(m->voff);
    free(m->toff);
    free(m->counts);
    free(m->label);
    free(m);
}

static tp_status add_param(tp_gpt *m, const char *name, tp_tensor *v, tp_tensor *g, bool repl,
                           int ndim, int64_t d0, int64_t d1, param_source src)
{
    if (!v)
        return TP_OK; /* absent (e.g. no bias) */
    if (!g || !g->data)
        return tp_set_error(TP_ERR_INTERNAL, "%s: parameter %s has no gradient after zero_grad",
                            m->label, name);
    if (m->np == m->cap) {
        int cap = m->cap ? 2 * m->cap : 32;
        tp_param *p = realloc(m->params, sizeof(tp_param) * (size_t)cap);
        if (p)
            m->params = p;
        param_source *r = realloc(m->sources, sizeof(param_source) * (size_t)cap);
        if (r)
            m->sources = r;
        if (!p || !r)
            return tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory", m->label);
        m->cap = cap;
    }
    char *nm = strdup(name);
    if (!nm)
        return tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory", m->label);
    m->params[m->np] = (tp_param){.name = nm,
                                  .value = v,
                                  .grad = g,
                                  .decay = ndim == 2,
                                  .replicated = repl,
                                  .ndim = ndim,
                                  .full_shape = {d0, d1}};
    m->sources[m->np] = src;
    m->np++;
    return TP_OK;
}

static tp_status add_linear(tp_gpt *m, const char *prefix, tp_linear *l)
{
    tp_linear_params p;
    tp_linear_get_params(l, &p);
    char nm[128];
    bool row = p.kind == TP_LINEAR_ROW;
    snprintf(nm, sizeof nm, "%s.weight", prefix);
    TP_TRY(add_param(m, nm, p.weight, p.weight_grad, m->T == 1, 2, p.in_features, p.out_features,
                     (param_source){.kind = PARAM_LINEAR_WEIGHT, .layer = l}));
    snprintf(nm, sizeof nm, "%s.bias", prefix);
    return add_param(m, nm, p.bias, p.bias_grad, row || m->T == 1, 1, p.out_features, 0,
                     (param_source){.kind = PARAM_LINEAR_BIAS, .layer = l});
}

static tp_status add_norm(tp_gpt *m, const char *prefix, tp_norm *n)
{
    tp_tensor *g, *b, *dg, *db;
    tp_norm_get_params(n, &g, &b, &dg, &db);
    char nm[128];
    int64_t H = m->cfg.hidden;
    const param_source repl = {.kind = PARAM_REPLICATED};
    snprintf(nm, sizeof nm, "%s.weight", prefix);
    TP_TRY(add_param(m, nm, g, dg, true, 1, H, 0, repl));
    snprintf(nm, sizeof nm, "%s.bias", prefix);
    return add_param(m, nm, b, db, true, 1, H, 0, repl);
}

static param_source att_source(tp_attention *a, att_tensor which)
{
    return (param_source){.kind = PARAM_ATTENTION, .layer = a, .which = which};
}

static tp_status add_attention(tp_gpt *m, const char *prefix, tp_attention *a)
{
    tp_attention_params p;
    tp_attention_get_params(a, &p);
    int64_t head_dim = 0, hidden = m->cfg.hidden, heads = m->cfg.heads;
    int64_t kv_heads = m->cfg.kv_heads ? m->cfg.kv_heads : heads;
    tp_attention_get_info(a, &head_dim, NULL, NULL, NULL, NULL);
    int64_t qkv_width = (heads + 2 * kv_heads) * head_dim;
    char nm[128];
    bool one = m->T == 1;
    snprintf(nm, sizeof nm, "%s.qkv.weight", prefix);
    TP_TRY(add_param(m, nm, p.qkv_weight, p.qkv_weight_grad, one, 2, hidden, qkv_width,
                     att_source(a, ATT_QKV_WEIGHT)));
    snprintf(nm, sizeof nm, "%s.qkv.bias", prefix);
    TP_TRY(add_param(m, nm, p.qkv_bias, p.qkv_bias_grad, one, 1, qkv_width, 0,
                     att_source(a, ATT_QKV_BIAS)));
    snprintf(nm, sizeof nm, "%s.out.weight", prefix);
    TP_TRY(add_param(m, nm, p.out_weight, p.out_weight_grad, one, 2, heads * head_dim, hidden,
                     att_source(a, ATT_OUT_WEIGHT)));
    snprintf(nm, sizeof nm, "%s.out.bias", prefix);
    return add_param(m, nm, p.out_bias, p.out_bias_grad, true, 1, hidden, 0,
                     att_source(a, ATT_OUT_BIAS));
}

static tp_status add_block(tp_gpt *m, int64_t i)
{
    tp_block *b = m->blocks[i];
    char pre[96];
    snprintf(pre, sizeof pre, "blocks.%lld.ln1", (long long)i);
    TP_TRY(add_norm(m, pre, tp_block_norm1(b)));
    snprintf(pre, sizeof pre, "blocks.%lld.attn", (long long)i);
    TP_TRY(add_attention(m, pre, tp_block_attention(b)));
    snprintf(pre, sizeof pre, "blocks.%lld.ln2", (long long)i);
    TP_TRY(add_norm(m, pre, tp_block_norm2(b)));
    snprintf(pre, sizeof pre, "blocks.%lld.mlp.fc1", (long long)i);
    TP_TRY(add_linear(m, pre, tp_mlp_fc1(tp_block_mlp(b))));
    snprintf(pre, sizeof pre, "blocks.%lld.mlp.fc2", (long long)i);
    return add_linear(m, pre, tp_mlp_fc2(tp_block_mlp(b)));
}

static tp_status collect_params(tp_gpt *m)
{
    const tp_gpt_config *c = &m->cfg;
    tp_tensor *tab, *dtab;
    tp_embedding_get_shard(m->emb, NULL, NULL, &tab, &dtab);
    TP_TRY(add_param(m, "embedding.weight", tab, dtab, m->T == 1, 2, c->vocab, c->hidden,
                     (param_source){.kind = PARAM_EMBEDDING, .layer = m->emb}));
    TP_TRY(add_param(m, "position.weight", &m->pos, &m->dpos, true, 2, c->seq, c->hidden,
                     (param_source){.kind = PARAM_REPLICATED}));
    m->blk_lo = malloc(sizeof(int) * (size_t)(c->layers + 1));
    if (!m->blk_lo)
        return tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory", m->label);
    for (int64_t i = 0; i < c->layers; i++) {
        m->blk_lo[i] = m->np;
        TP_TRY(add_block(m, i));
    }
    m->blk_lo[c->layers] = m->np;
    TP_TRY(add_norm(m, "ln_f", m->lnf));
    m->out_lo = m->np;
    return m->out ? add_linear(m, "output", m->out) : TP_OK;
}

/* The embeddings' init bound: cfg.emb_bound, 0 selecting the default. */
static float emb_bound(const tp_gpt_config *c)
{
    return c->emb_bound != 0.0f ? c->emb_bound : 0.1f;
}

static tp_status check_config(const tp_gpt *m)
{
    const tp_gpt_config *c = &m->cfg;
    if (c->vocab < 1 || c->hidden < 1 || c->heads < 1 || c->ffn < 1 || c->seq < 1)
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: vocab (%lld), hidden (%lld), heads (%lld), ffn (%lld) and seq "
                            "(%lld) must all be >= 1",
                            m->label, (long long)c->vocab, (long long)c->hidden,
                            (long long)c->heads, (long long)c->ffn, (long long)c->seq);
    if (c->layers < 0 || c->layers > 4096)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: layers = %lld, expected 0 .. 4096", m->label,
                            (long long)c->layers);
    if (c->vocab < m->T)
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: vocab = %lld is smaller than T = %d: some rank would get no vocab "
                            "rows (and no logit columns); use T <= vocab",
                            m->label, (long long)c->vocab, m->T);
    if (!(c->label_smoothing >= 0.0f && c->label_smoothing <= 1.0f))
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: label_smoothing %g outside [0, 1]", m->label,
                            (double)c->label_smoothing);
    TP_TRY(tpl_check_overlap(m->label, c->overlap));
    float eb = emb_bound(c);
    if (!(eb > 0.0f) || !isfinite(eb))
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: emb_bound %g must be finite and > 0", m->label,
                            (double)c->emb_bound);
    int64_t npos;
    return tpl_mul(m->label, "position table seq x hidden", c->seq, c->hidden, &npos);
}

/* The token embedding and the replicated position table. */
static tp_status create_embeddings(tp_gpt *m)
{
    const tp_gpt_config *c = &m->cfg;
    float eb = emb_bound(c);
    tp_embedding_config ec = {.vocab = c->vocab,
                              .dim = c->hidden,
                              .seed = c->seed,
                              .tensor_id = TID_EMBEDDING,
                              .name = "embedding",
                              .init_bound = eb,
                              .dtype = c->dtype,
                              .sequence_parallel = c->sequence_parallel};
    TP_TRY(tp_embedding_create(m->comm, &ec, &m->emb));
    int64_t shape[2] = {c->seq, c->hidden};
    TP_TRY(tpl_alloc(m->dev, TP_USE_PARAMETERS, m->dt, 2, shape, &m->pos));
    TP_TRY(tpl_alloc(m->dev, TP_USE_GRADIENTS, m->dt, 2, shape, &m->dpos));
    size_t n = (size_t)(c->seq * c->hidden);
    float *host = malloc(sizeof(float) * n);
    if (!host)
        return tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory", m->label);
    tp_master_fill(c->seed, TID_POSITION, c->hidden, 0, c->seq, 0, c->hidden, eb, host);
    tp_status st = tpl_upload_f32(m->dev, m->dt, m->pos.data, host, n);
    free(host);
    return st;
}

/* Embeddings, blocks, final norm, untied output projection and loss. */
static tp_status create_sublayers(tp_gpt *m)
{
    const tp_gpt_config *c = &m->cfg;
    TP_TRY(create_embeddings(m));
    for (int64_t i = 0; i < c->layers; i++) {
        char nm[64];
        snprintf(nm, sizeof nm, "blocks.%lld", (long long)i);
        tp_block_config bc = {.hidden = c->hidden,
                              .heads = c->heads,
                              .kv_heads = c->kv_heads,
                              .head_dim = c->head_dim,
                              .ffn = c->ffn,
                              .bias = c->bias,
                              .rms = c->rms,
                              .eps = c->eps,
                              .gelu_tanh = c->gelu_tanh,
                              .causal = true,
                              .sequence_parallel = c->sequence_parallel,
                              .dtype = c->dtype,
                              .seed = c->seed,
                              .tensor_id = TID_BLOCK0 + TID_BLOCK_STRIDE * (uint64_t)i,
                              .name = nm,
                              .overlap = c->overlap};
        TP_TRY(tp_block_create(m->comm, &bc, &m->blocks[i]));
    }
    tp_norm_config nc = {.dim = c->hidden,
                         .rms = c->rms,
                         .bias = !c->rms,
                         .eps = c->eps,
                         .sequence_parallel = c->sequence_parallel,
                         .name = "ln_f",
                         .dtype = c->dtype};
    TP_TRY(tp_norm_create(m->comm, &nc, &m->lnf));
    if (!c->tied) {
        tp_linear_config lc = {.in_features = c->hidden,
                               .out_features = c->vocab,
                               .seed = c->seed,
                               .tensor_id = TID_OUTPUT,
                               .name = "output",
                               .dtype = c->dtype};
        TP_TRY(tp_column_linear_create(m->comm, &lc, &m->out));
    }
    tp_ce_config cc = {.vocab = c->vocab,
                       .label_smoothing = c->label_smoothing,
                       .use_ignore_index = c->use_ignore_index,
                       .ignore_index = c->ignore_index,
                       .name = "loss",
                       .dtype = c->dtype};
    return tp_vocab_ce_create(m->comm, &cc, &m->ce);
}

tp_status tp_gpt_create(tp_comm *comm, const tp_gpt_config *cfg, tp_gpt **out)
{
    if (!out)
        return tp_set_error(TP_ERR_INVALID_ARG, "GPT create: out is NULL");
    *out = NULL;
    if (!comm || !cfg)
        return tp_set_error(TP_ERR_INVALID_ARG, "GPT create: %s is NULL", !comm ? "comm" : "cfg");
    tp_gpt *m = calloc(1, sizeof *m);
    if (!m)
        return tp_set_error(TP_ERR_NO_MEMORY, "GPT create: out of host memory");
    m->comm = comm;
    m->dev = m->hfull.dev = m->dhfull.dev = m->tmp.dev = tp_comm_device(comm);
    m->cfg = *cfg;
    m->dt = cfg->dtype;
    m->es = tp_dtype_size(cfg->dtype);
    m->T = tp_comm_size(comm);
    m->rank = tp_comm_rank(comm);
    m->label = tpl_label("GPT", NULL, comm);
    if (!m->label) {
        free(m);
        return tp_set_error(TP_ERR_NO_MEMORY, "GPT create: out of host memory");
    }
    tp_status st;
    TP_TRY_GOTO(check_config(m), st, fail);
    int64_t layers = m->cfg.layers;
    m->voff = malloc(sizeof(int64_t) * (size_t)(m->T + 1));
    m->toff = malloc(sizeof(int64_t) * (size_t)(m->T + 1));
    m->counts = malloc(sizeof(size_t) * (size_t)m->T);
    m->blocks = calloc((size_t)(layers ? layers : 1), sizeof(tp_block *));
    m->xs = calloc((size_t)(layers + 1), sizeof(tp_tensor));
    if (!m->voff || !m->toff || !m->counts || !m->blocks || !m->xs) {
        st = tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory", m->label);
        goto fail;
    }
    tpl_shard_offsets(m->cfg.vocab, m->T, m->voff);
    m->vlo = m->voff[m->rank];
    m->vhi = m->voff[m->rank + 1];
    m->vl = m->vhi - m->vlo;
    TP_TRY_GOTO(create_sublayers(m), st, fail);
    TP_TRY_GOTO(tp_gpt_zero_grad(m), st, fail);
    TP_TRY_GOTO(collect_params(m), st, fail);
    *out = m;
    return TP_OK;
fail:
    tp_gpt_free(m);
    return st;
}

tp_status tp_gpt_zero_grad(tp_gpt *m)
{
    if (!m)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_gpt_zero_grad: model is NULL");
    TP_TRY(tp_embedding_zero_grad(m->emb));
    TP_TRY(tp_dev_memset(m->dev, m->dpos.data, 0, tp_tensor_bytes(&m->dpos)));
    for (int64_t i = 0; i < m->cfg.layers; i++)
        TP_TRY(tp_block_zero_grad(m->blocks[i]));
    TP_TRY(tp_norm_zero_grad(m->lnf));
    return m->out ? tp_linear_zero_grad(m->out) : TP_OK;
}

/* ------------------------------------------------------------- forward */

/* Make t a [rows, cols] tensor of dtype dt (reusing it when it already is). */
static tp_status ensure2(tp_gpt *m, tp_tensor *t, tp_mem_use kind, tp_dtype dt, int64_t rows,
                         int64_t cols)
{
    if (t->data && t->ndim == 2 && t->dtype == dt && t->shape[0] == rows && t->shape[1] == cols)
        return TP_OK;
    tpl_release(t, kind);
    return tpl_alloc(m->dev, kind, dt, 2, (int64_t[]){rows, cols}, t);
}

/* pos_ids[t] = t % seqlen, the position of token t. */
static tp_status upload_pos_ids(tp_gpt *m)
{
    int32_t *p = malloc(sizeof(int32_t) * (size_t)m->tokens);
    if (!p)
        return tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory", m->label);
    for (int64_t t = 0; t < m->tokens; t++)
        p[t] = (int32_t)(t % m->seqlen);
    tp_status st = tp_tensor_upload(&m->pos_ids, p);
    free(p);
    return st;
}

static tp_status alloc_acts(tp_gpt *m)
{
    int64_t tokens = m->tokens, H = m->cfg.hidden;
    const tp_mem_use A = TP_USE_ACTIVATIONS, W = TP_USE_WORKSPACE;
    TP_TRY(ensure2(m, &m->pos_ids, A, TP_I32, 1, tokens));
    for (int64_t i = 0; i <= m->cfg.layers; i++)
        TP_TRY(ensure2(m, &m->xs[i], A, m->dt, m->rows, H));
    TP_TRY(ensure2(m, &m->hn, A, m->dt, m->rows, H));
    TP_TRY(ensure2(m, &m->g0, W, m->dt, m->rows, H));
    TP_TRY(ensure2(m, &m->g1, W, m->dt, m->rows, H));
    TP_TRY(ensure2(m, &m->logits, A, m->dt, tokens, m->vl));
    TP_TRY(ensure2(m, &m->dlogits, W, m->dt, tokens, m->vl));
    if (m->cfg.sequence_parallel)
        TP_TRY(tpl_ws_reserve(&m->hfull, (size_t)(tokens * H) * m->es, m->label));
    TP_TRY(tpl_ws_reserve(&m->dhfull, (size_t)(tokens * H) * m->es, m->label));
    TP_TRY(tpl_ws_reserve(&m->tmp, (size_t)(m->rows * H) * m->es, m->label));
    return tokens > 0 ? upload_pos_ids(m) : TP_OK;
}

/* Shapes and buffers for a forward of batch x seqlen tokens. */
static tp_status prepare(tp_gpt *m, int64_t batch, int64_t seqlen)
{
    int64_t tokens = batch * seqlen;
    if (m->pos_ids.data && m->batch == batch && m->seqlen == seqlen)
        return TP_OK;
    release_acts(m);
    m->batch = batch;
    m->seqlen = seqlen;
    m->tokens = tokens;
    tpl_shard_offsets(tokens, m->T, m->toff);
    m->slo = m->cfg.sequence_parallel ? m->toff[m->rank] : 0;
    m->shi = m->cfg.sequence_parallel ? m->toff[m->rank + 1] : tokens;
    m->rows = m->shi - m->slo;
    tp_status st = alloc_acts(m);
    if (st != TP_OK) { /* nothing half-made is reused by the next forward */
        release_acts(m);
        m->batch = m->seqlen = 0;
    }
    return st;
}

static tp_status check_inputs(tp_gpt *m, const tp_tensor *ids, const tp_tensor *targets,
                              int64_t *batch, int64_t *seqlen)
{
    if (!ids || !targets)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: %s is NULL", m->label,
                            !ids ? "ids" : "targets");
    if (ids->dtype != TP_I32 || targets->dtype != TP_I32)
        return tp_set_error(TP_ERR_SHAPE, "%s: %s has dtype %s, expected i32 token ids", m->label,
                            ids->dtype != TP_I32 ? "ids" : "targets",
                            tp_dtype_name(ids->dtype != TP_I32 ? ids->dtype : targets->dtype));
    if (ids->dev != m->dev || targets->dev != m->dev)
        return tp_set_error(TP_ERR_SHAPE, "%s: %s lives on another device than the model's comm",
                            m->label, ids->dev != m->dev ? "ids" : "targets");
    if (ids->ndim != 1 && ids->ndim != 2)
        return tp_set_error(TP_ERR_SHAPE, "%s: ids have %d dims, expected [batch, seq] (or [seq])",
                            m->label, ids->ndim);
    *batch = ids->ndim == 2 ? ids->shape[0] : 1;
    *seqlen = ids->shape[ids->ndim - 1];
    if (*batch < 1 || *seqlen < 1 || *seqlen > m->cfg.seq)
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: ids are [%lld, %lld] (batch, seq): expected batch >= 1 and "
                            "1 <= seq <= %lld (the position table's rows, cfg.seq)",
                            m->label, (long long)*batch, (long long)*seqlen, (long long)m->cfg.seq);
    if (tp_tensor_numel(targets) != *batch * *seqlen)
        return tp_set_error(TP_ERR_SHAPE,
                            "%s: %lld targets for %lld tokens (batch %lld x seq %lld)", m->label,
                            (long long)tp_tensor_numel(targets), (long long)(*batch * *seqlen),
                            (long long)*batch, (long long)*seqlen);
    if (!ids->data || !targets->data)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: %s has no data", m->label,
                            !ids->data ? "ids" : "targets");
    /* the activations [tokens, hidden] and logits [tokens, vocab] */
    int64_t n;
    TP_TRY(tpl_mul(m->label, "activations tokens x hidden", *batch * *seqlen, m->cfg.hidden, &n));
    return tpl_mul(m->label, "logits tokens x vocab", *batch * *seqlen, m->cfg.vocab, &n);
}

/* Download ids and refuse ids outside [0, vocab) (the embedding would give zero rows). */
static tp_status check_ids_range(tp_gpt *m, const tp_tensor *ids, int64_t n)
{
    int32_t *h = malloc(sizeof(int32_t) * (size_t)n);
    if (!h)
        return tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory", m->label);
    tp_status st;
    TP_TRY_GOTO(tp_tensor_download(ids, h), st, out);
    for (int64_t i = 0; i < n; i++)
        if (h[i] < 0 || h[i] >= m->cfg.vocab) {
            st = tp_set_error(TP_ERR_INVALID_ARG, "%s: ids[%lld] = %d is outside [0, vocab=%lld)",
                              m->label, (long long)i, h[i], (long long)m->cfg.vocab);
            break;
        }
out:
    free(h);
    return st;
}

/* The output weight: tied E_r [vl, H] (logits = h E_r^T) or untied W_r [H, vl]. */
static void out_weight(tp_gpt *m, tp_tensor **w, tp_tensor **dw)
{
    if (m->out) {
        tp_linear_params p;
        tp_linear_get_params(m->out, &p);
        *w = p.weight;
        *dw = p.weight_grad;
    } else {
        tp_embedding_get_shard(m->emb, NULL, NULL, w, dw);
    }
}

/* fn(m) with the comm's phase set to `phase` (restored after). */
static tp_status in_phase(tp_gpt *m, tp_phase phase, tp_status (*fn)(tp_gpt *))
{
    tp_phase prev = tp_phase_set(m->comm, phase);
    tp_status st = fn(m);
    tp_phase_set(m->comm, prev);
    return st;
}

/* xs[0] += the position rows (the replicated table, looked up by t % seq_len). */
static tp_status add_positions(tp_gpt *m)
{
    const int64_t H = m->cfg.hidden, R = m->rows;
    if (R == 0)
        return TP_OK;
    TP_TRY(tp_dev_embedding(m->dev, m->dt, R, H, (const int32_t *)m->pos_ids.data + m->slo, 0,
                            m->cfg.seq, m->pos.data, m->tmp.ptr));
    return tp_dev_axpby(m->dev, m->dt, R * H, 1.0f, m->tmp.ptr, 1.0f, m->xs[0].data);
}

/* logits = hn's every token times this rank's vocab shard of the output weight. */
/* SP: every token of hn into hfull (the output projection needs them all;
 * backward gathers them again rather than keeping [tokens, hidden], as
 * the blocks do for their column-parallel inputs). */
static tp_status gather_hn(tp_gpt *m)
{
    for (int i = 0; i < m->T; i++)
        m->counts[i] = (size_t)((m->toff[i + 1] - m->toff[i]) * m->cfg.hidden);
    return tp_all_gatherv(m->comm, m->hn.data, m->hfull.ptr, m->counts, m->dt);
}

static tp_status output_forward(tp_gpt *m)
{
    const int64_t H = m->cfg.hidden, N = m->tokens;
    const void *h = m->hn.data;
    if (m->cfg.sequence_parallel) {
        TP_TRY(gather_hn(m));
        h = m->hfull.ptr;
    }
    tp_tensor *w, *dw;
    out_weight(m, &w, &dw);
    if (m->out)
        return tpl_gemm(m->dev, m->dt, 0, 0, N, m->vl, H, 0.0f, h, H, w->data, m->vl,
                        m->logits.data, m->vl);
    return tpl_gemm(m->dev, m->dt, 0, 1, N, m->vl, H, 0.0f, h, H, w->data, H, m->logits.data,
                    m->vl);
}

/* A block whose MLP all-reduces are still in flight, feeding the next. */
typedef struct block_link {
    tp_block *b;
    tpl_inflight f;
} block_link;

static tp_status link_rows(void *ctx, int64_t r0, int64_t r1)
{
    (void)r0;
    block_link *l = ctx;
    return tpl_block_forward_rows_done(l->b, &l->f, r1);
}

/* The blocks. With overlap (no sequence parallelism) chained: block i+1's
 * QKV chunk c starts once block i's MLP all-reduce of those rows has
 * arrived (tpl_block_forward_chained), so those all-reduces run during
 * the next block's GEMMs; the same bits as one block after the other. */
static tp_status blocks_forward(tp_gpt *m)
{
    int64_t L = m->cfg.layers;
    if (L == 0 || !tpl_block_chains(m->blocks[0])) {
        for (int64_t i = 0; i < L; i++)
            TP_TRY(tp_block_forward(m->blocks[i], &m->xs[i], m->batch, m->seqlen, &m->xs[i + 1]));
        return TP_OK;
    }
    block_link ln[2];
    block_link *prev = NULL;
    tp_status st = TP_OK;
    for (int64_t i = 0; i < L && st == TP_OK; i++) {
        block_link *cur = &ln[i % 2];
        cur->b = m->blocks[i];
        st = tpl_block_forward_chained(cur->b, &m->xs[i], m->batch, m->seqlen, &m->xs[i + 1],
                                       prev ? link_rows : NULL, prev, &cur->f);
        /* every row of xs[i] was read: prev is ended (a no-op unless on an error) */
        if (prev)
            st = st == TP_OK ? link_rows(prev, 0, m->tokens) : tpl_inflight_end(&prev->f, st);
        prev = st == TP_OK ? cur : NULL;
    }
    return prev ? link_rows(prev, 0, m->tokens) : st;
}

static tp_status forward_body(tp_gpt *m, const tp_tensor *ids, const tp_tensor *targets,
                              float *loss)
{
    TP_TRY(tp_embedding_forward(m->emb, ids, &m->xs[0]));
    TP_TRY(in_phase(m, TP_PHASE_FORWARD, add_positions));
    TP_TRY(blocks_forward(m));
    TP_TRY(tp_norm_forward(m->lnf, &m->xs[m->cfg.layers], &m->hn));
    TP_TRY(in_phase(m, TP_PHASE_FORWARD, output_forward));
    return tp_vocab_ce_forward(m->ce, &m->logits, targets, loss);
}

tp_status tp_gpt_forward(tp_gpt *m, const tp_tensor *ids, const tp_tensor *targets, float *loss)
{
    if (!m)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_gpt_forward: model is NULL");
    if (!loss)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: loss is NULL", m->label);
    int64_t batch = 0, seqlen = 0;
    TP_TRY(check_inputs(m, ids, targets, &batch, &seqlen));
    TP_TRY(check_ids_range(m, ids, batch * seqlen));
    TP_TRY(prepare(m, batch, seqlen));
    m->saved = false;
    tp_status st = forward_body(m, ids, targets, loss);
    m->saved = st == TP_OK;
    return st;
}

/* ------------------------------------------------------------ backward */

/* The output projection's backward from dlogits: its weight gradient, and
 * the final norm's output gradient (this rank's rows) into g0. */
static tp_status output_backward(tp_gpt *m)
{
    const int64_t H = m->cfg.hidden, N = m->tokens;
    const bool sp = m->cfg.sequence_parallel;
    tp_tensor *w, *dw;
    out_weight(m, &w, &dw);
    const void *h = sp ? m->hfull.ptr : m->hn.data;
    if (sp)
        TP_TRY(gather_hn(m));
    if (m->out) { /* dW_r += h^T dlogits_r; dh = dlogits_r W_r^T (partial over vocab shards) */
        TP_TRY(tpl_gemm(m->dev, m->dt, 1, 0, H, m->vl, N, 1.0f, h, H, m->dlogits.data, m->vl,
                        dw->data, m->vl));
        TP_TRY(tpl_gemm(m->dev, m->dt, 0, 1, N, H, m->vl, 0.0f, m->dlogits.data, m->vl, w->data,
                        m->vl, m->dhfull.ptr, H));
    } else { /* dE_r += dlogits_r^T h; dh = dlogits_r E_r */
        TP_TRY(tpl_gemm(m->dev, m->dt, 1, 0, m->vl, H, N, 1.0f, m->dlogits.data, m->vl, h, H,
                        dw->data, H));
        TP_TRY(tpl_gemm(m->dev, m->dt, 0, 0, N, H, m->vl, 0.0f, m->dlogits.data, m->vl, w->data, H,
                        m->dhfull.ptr, H));
    }
    if (!sp)
        return tp_all_reduce(m->comm, m->dhfull.ptr, m->g0.data, (size_t)(N * H), m->dt, TP_SUM);
    for (int i = 0; i < m->T; i++)
        m->counts[i] = (size_t)((m->toff[i + 1] - m->toff[i]) * H);
    return tp_reduce_scatterv(m->comm, m->dhfull.ptr, m->g0.data, m->counts, m->dt, TP_SUM);
}

tp_status tp_gpt_finalize_grads(tp_gpt *m)
{
    if (!m)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_gpt_finalize_grads: model is NULL");
    for (int64_t i = 0; m->T > 1 && i < m->cfg.layers; i++)
        TP_TRY(tpl_attention_finalize_grads(tp_block_attention(m->blocks[i])));
    return TP_OK;
}

tp_status tp_gpt_backward(tp_gpt *m)
{
    return tp_gpt_backward_scaled(m, 1.0f);
}

/* Parameters [lo, hi) are final: to the attached DP reducer, last first. */
static tp_status grads_final(tp_gpt *m, int lo, int hi)
{
    for (int i = hi - 1; m->dp && i >= lo; i--)
        TP_TRY(tp_dp_grad_ready(m->dp, m->params[i].grad));
    return TP_OK;
}

/* The position table's gradient: scatter-add every token's gradient by
 * position (the full gradient, so every rank computes the same replicated
 * result); dx holds the embedding's input gradient. */
static tp_status position_backward(tp_gpt *m, const tp_tensor *dx)
{
    const int64_t H = m->cfg.hidden, N = m->tokens;
    if (N == 0)
        return TP_OK;
    tp_phase prev = tp_phase_set(m->comm, TP_PHASE_BACKWARD);
    const void *full = m->cfg.sequence_parallel ? tpl_embedding_gathered_dy(m->emb) : dx->data;
    tp_status st = tp_dev_embedding_bwd(m->dev, m->dt, N, H, m->pos_ids.data, 0, m->cfg.seq, full,
                                        m->dpos.data);
    tp_phase_set(m->comm, prev);
    return st;
}

static tp_status gpt_backward(tp_gpt *m, float scale);

tp_status tp_gpt_backward_scaled(tp_gpt *m, float scale)
{
    if (!m)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_gpt_backward: model is NULL");
    tp_status st = gpt_backward(m, scale);
    if (st != TP_OK && m->dp) {
        /* the attached round cannot end well: close it, keeping this error */
        char why[1024];
        snprintf(why, sizeof why, "%s", tp_last_error());
        tpl_dp_abort(m->dp);
        tp_set_error(st, "%s", why);
    }
    return st;
}

static tp_status gpt_backward(tp_gpt *m, float scale)
{
    if (!(scale > 0.0f) || !isfinite(scale))
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "%s: loss scale %g must be finite and > 0 (tp_optim_loss_scale)",
                            m->label, (double)scale);
    if (!m->saved)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: backward called without a successful forward",
                            m->label);
    const int64_t L = m->cfg.layers;
    TP_TRY(tp_vocab_ce_backward(m->ce, scale, &m->dlogits));
    TP_TRY(in_phase(m, TP_PHASE_BACKWARD, output_backward));
    TP_TRY(grads_final(m, m->out_lo, m->np));
    tp_tensor *dh = &m->g0, *dx = &m->g1;
    TP_TRY(tp_norm_backward(m->lnf, dh, dx));
    TP_TRY(grads_final(m, m->blk_lo[L], m->out_lo));
    for (int64_t i = L - 1; i >= 0; i--) {
        tp_tensor *t = dh;
        dh = dx;
        dx = t;
        TP_TRY(tp_block_backward(m->blocks[i], dh, dx));
        TP_TRY(grads_final(m, m->blk_lo[i], m->blk_lo[i + 1]));
    }
    TP_TRY(tp_embedding_backward(m->emb, dx));
    TP_TRY(position_backward(m, dx));
    return grads_final(m, 0, m->blk_lo[0]);
}

tp_status tp_gpt_set_dp(tp_gpt *m, tp_dp *d)
{
    if (!m)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_gpt_set_dp: model is NULL");
    m->dp = d;
    return TP_OK;
}

/* ---------------------------------------------------------- inspection */

void tp_gpt_params(tp_gpt *m, const tp_param **params, int *n)
{
    if (params)
        *params = m ? m->params : NULL;
    if (n)
        *n = m ? m->np : 0;
}

tp_block *tp_gpt_block(tp_gpt *m, int i)
{
    return m && i >= 0 && i < m->cfg.layers ? m->blocks[i] : NULL;
}

tp_embedding *tp_gpt_embedding(tp_gpt *m)
{
    return m ? m->emb : NULL;
}

static tp_status full_of(tp_gpt *m, int i, bool grad, float *host)
{
    const param_source *r = &m->sources[i];
    const tp_param *p = &m->params[i];
    switch (r->kind) {
        case PARAM_EMBEDDING:
            return grad ? tp_embedding_get_full_grad(r->layer, host)
                        : tp_embedding_get_full(r->layer, host);
        case PARAM_REPLICATED:
            return host ? tpl_download_f32(m->dev, m->dt, host, (grad ? p->grad : p->value)->data,
                                           (size_t)tp_tensor_numel(p->value))
                        : TP_OK;
        case PARAM_LINEAR_WEIGHT:
            return grad ? tp_linear_get_full_grad(r->layer, host, NULL)
                        : tp_linear_get_full(r->layer, host, NULL);
        case PARAM_LINEAR_BIAS:
            return grad ? tp_linear_get_full_grad(r->layer, NULL, host)
                        : tp_linear_get_full(r->layer, NULL, host);
        case PARAM_ATTENTION: {
            float *o[ATT_TENSORS] = {NULL};
            o[r->which] = host;
            return grad ? tp_attention_get_full_grad(r->layer, o[ATT_QKV_WEIGHT], o[ATT_QKV_BIAS],
                                                     o[ATT_OUT_WEIGHT], o[ATT_OUT_BIAS])
                        : tp_attention_get_full(r->layer, o[ATT_QKV_WEIGHT], o[ATT_QKV_BIAS],
                                                o[ATT_OUT_WEIGHT], o[ATT_OUT_BIAS]);
        }
    }
    return tp_set_error(TP_ERR_INTERNAL, "%s: bad parameter kind", m->label);
}

tp_status tp_gpt_get_full_param(tp_gpt *m, int i, float *value, float *grad)
{
    if (!m)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_gpt_get_full_param: model is NULL");
    if (i < 0 || i >= m->np)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: parameter index %d outside [0, %d)", m->label,
                            i, m->np);
    TP_TRY(full_of(m, i, false, value));
    return full_of(m, i, true, grad);
}

tp_status tp_gpt_get_full_logits(tp_gpt *m, float *logits)
{
    if (!m)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_gpt_get_full_logits: model is NULL");
    if (!m->saved)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: no forward yet", m->label);
    size_t n = (size_t)(m->tokens * m->cfg.vocab);
    tpl_ws ws = {.dev = m->dev};
    tp_status st;
    TP_TRY_GOTO(tpl_ws_reserve(&ws, 2 * n * m->es, m->label), st, out);
    TP_TRY_GOTO(tpl_gather_cols(m->comm, m->dt, m->logits.data, ws.ptr, (char *)ws.ptr + n * m->es,
                                m->tokens, m->voff, m->counts),
                st, out);
    if (logits)
        TP_TRY_GOTO(tpl_download_f32(m->dev, m->dt, logits, ws.ptr, n), st, out);
out:
    tpl_ws_release(&ws);
    return st;
}
