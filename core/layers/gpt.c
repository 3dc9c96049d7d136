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

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How to assemble a parameter's full tensor (tp_gpt_get_full_param). */
typedef enum pkind {
    PK_EMB,   /* the token table */
    PK_REPL,  /* replicated: every rank holds the full tensor */
    PK_LIN_W, /* a tp_linear's weight / bias */
    PK_LIN_B,
    PK_ATT, /* attention tensor `which` (0 qkv_w, 1 qkv_b, 2 out_w, 3 out_b) */
} pkind;

typedef struct prec {
    pkind kind;
    void *layer;
    int which;
} prec;

struct tp_gpt {
    tp_comm *comm;
    tp_device *dev;
    char *label;
    tp_gpt_config cfg;
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
    /* parameters */
    tp_param *params;
    prec *recs;
    int np, cap;
    /* activations and gradients of the last forward */
    tp_tensor *xs;        /* layers+1: xs[0] embedding (+ position), xs[i+1] block i */
    tp_tensor hn;         /* final norm output [rows, hidden] */
    tp_tensor logits, dlogits; /* [tokens, vl] */
    tp_tensor g0, g1;     /* [rows, hidden] ping-pong gradients */
    tp_tensor pos_ids;    /* int32 [tokens]: t % seq_len */
    tpl_ws hfull;          /* SP: gathered hn [tokens, hidden] */
    tpl_ws dhfull;         /* [tokens, hidden] partial input gradient of the output projection */
    tpl_ws tmp;            /* position rows [rows, hidden]; logits gather */
    int64_t batch, seqlen, tokens, rows, slo, shi;
    bool saved;
};

/* ------------------------------------------------------------ lifetime */

static void release_acts(tp_gpt *m)
{
    if (m->xs)
        for (int64_t i = 0; i <= m->cfg.layers; i++)
            tp_tensor_release(&m->xs[i]);
    tp_tensor_release(&m->hn);
    tp_tensor_release(&m->logits);
    tp_tensor_release(&m->dlogits);
    tp_tensor_release(&m->g0);
    tp_tensor_release(&m->g1);
    tp_tensor_release(&m->pos_ids);
}

void tp_gpt_free(tp_gpt *m)
{
    if (!m)
        return;
    release_acts(m);
    free(m->xs);
    tp_embedding_free(m->emb);
    tp_tensor_release(&m->pos);
    tp_tensor_release(&m->dpos);
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
    free(m->recs);
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
                           int ndim, int64_t d0, int64_t d1, pkind kind, void *layer, int which)
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
        prec *r = realloc(m->recs, sizeof(prec) * (size_t)cap);
        if (r)
            m->recs = r;
        if (!p || !r)
            return tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory", m->label);
        m->cap = cap;
    }
    char *nm = strdup(name);
    if (!nm)
        return tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory", m->label);
    m->params[m->np] = (tp_param){.name = nm, .value = v, .grad = g, .decay = ndim == 2,
                                  .replicated = repl, .ndim = ndim, .full_shape = {d0, d1}};
    m->recs[m->np] = (prec){kind, layer, which};
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
    tp_status st = add_param(m, nm, p.weight, p.weight_grad, m->T == 1, 2, p.in_features,
                             p.out_features, PK_LIN_W, l, 0);
    snprintf(nm, sizeof nm, "%s.bias", prefix);
    if (st == TP_OK)
        st = add_param(m, nm, p.bias, p.bias_grad, row || m->T == 1, 1, p.out_features, 0,
                       PK_LIN_B, l, 0);
    return st;
}

static tp_status add_norm(tp_gpt *m, const char *prefix, tp_norm *n)
{
    tp_tensor *g, *b, *dg, *db;
    tp_norm_get_params(n, &g, &b, &dg, &db);
    char nm[128];
    int64_t H = m->cfg.hidden;
    snprintf(nm, sizeof nm, "%s.weight", prefix);
    tp_status st = add_param(m, nm, g, dg, true, 1, H, 0, PK_REPL, NULL, 0);
    snprintf(nm, sizeof nm, "%s.bias", prefix);
    if (st == TP_OK)
        st = add_param(m, nm, b, db, true, 1, H, 0, PK_REPL, NULL, 0);
    return st;
}

static tp_status add_attention(tp_gpt *m, const char *prefix, tp_attention *a)
{
    tp_attention_params p;
    tp_attention_get_params(a, &p);
    int64_t hd = 0, H = m->cfg.hidden, nh = m->cfg.heads;
    int64_t kv = m->cfg.kv_heads ? m->cfg.kv_heads : nh;
    tp_attention_get_info(a, &hd, NULL, NULL, NULL, NULL);
    int64_t wq = (nh + 2 * kv) * hd;
    char nm[128];
    bool one = m->T == 1;
    snprintf(nm, sizeof nm, "%s.qkv.weight", prefix);
    tp_status st = add_param(m, nm, p.qkv_weight, p.qkv_weight_grad, one, 2, H, wq, PK_ATT, a, 0);
    snprintf(nm, sizeof nm, "%s.qkv.bias", prefix);
    if (st == TP_OK)
        st = add_param(m, nm, p.qkv_bias, p.qkv_bias_grad, one, 1, wq, 0, PK_ATT, a, 1);
    snprintf(nm, sizeof nm, "%s.out.weight", prefix);
    if (st == TP_OK)
        st = add_param(m, nm, p.out_weight, p.out_weight_grad, one, 2, nh * hd, H, PK_ATT, a, 2);
    snprintf(nm, sizeof nm, "%s.out.bias", prefix);
    if (st == TP_OK)
        st = add_param(m, nm, p.out_bias, p.out_bias_grad, true, 1, H, 0, PK_ATT, a, 3);
    return st;
}

static tp_status collect_params(tp_gpt *m)
{
    const tp_gpt_config *c = &m->cfg;
    tp_tensor *tab, *dtab;
    tp_embedding_get_shard(m->emb, NULL, NULL, &tab, &dtab);
    tp_status st = add_param(m, "embedding.weight", tab, dtab, m->T == 1, 2, c->vocab, c->hidden,
                             PK_EMB, m->emb, 0);
    if (st == TP_OK)
        st = add_param(m, "position.weight", &m->pos, &m->dpos, true, 2, c->seq, c->hidden,
                       PK_REPL, NULL, 0);
    char pre[96];
    for (int64_t i = 0; i < c->layers && st == TP_OK; i++) {
        tp_block *b = m->blocks[i];
        snprintf(pre, sizeof pre, "blocks.%lld.ln1", (long long)i);
        st = add_norm(m, pre, tp_block_norm1(b));
        snprintf(pre, sizeof pre, "blocks.%lld.attn", (long long)i);
        if (st == TP_OK)
            st = add_attention(m, pre, tp_block_attention(b));
        snprintf(pre, sizeof pre, "blocks.%lld.ln2", (long long)i);
        if (st == TP_OK)
            st = add_norm(m, pre, tp_block_norm2(b));
        snprintf(pre, sizeof pre, "blocks.%lld.mlp.fc1", (long long)i);
        if (st == TP_OK)
            st = add_linear(m, pre, tp_mlp_fc1(tp_block_mlp(b)));
        snprintf(pre, sizeof pre, "blocks.%lld.mlp.fc2", (long long)i);
        if (st == TP_OK)
            st = add_linear(m, pre, tp_mlp_fc2(tp_block_mlp(b)));
    }
    if (st == TP_OK)
        st = add_norm(m, "ln_f", m->lnf);
    if (st == TP_OK && m->out)
        st = add_linear(m, "output", m->out);
    return st;
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
    m->T = tp_comm_size(comm);
    m->rank = tp_comm_rank(comm);
    m->label = tpl_label("GPT", NULL, comm);
    const tp_gpt_config *c = &m->cfg;
    tp_status st = TP_OK;
    float *host = NULL;
    if (!m->label) {
        free(m);
        return tp_set_error(TP_ERR_NO_MEMORY, "GPT create: out of host memory");
    }
    if (c->vocab < 1 || c->hidden < 1 || c->heads < 1 || c->ffn < 1 || c->seq < 1) {
        st = tp_set_error(TP_ERR_SHAPE,
                          "%s: vocab (%lld), hidden (%lld), heads (%lld), ffn (%lld) and seq "
                          "(%lld) must all be >= 1",
                          m->label, (long long)c->vocab, (long long)c->hidden, (long long)c->heads,
                          (long long)c->ffn, (long long)c->seq);
        goto fail;
    }
    if (c->layers < 0 || c->layers > 4096) {
        st = tp_set_error(TP_ERR_INVALID_ARG, "%s: layers = %lld, expected 0 .. 4096", m->label,
                          (long long)c->layers);
        goto fail;
    }
    if (c->vocab < m->T) {
        st = tp_set_error(TP_ERR_SHAPE,
                          "%s: vocab = %lld is smaller than T = %d: some rank would get no vocab "
                          "rows (and no logit columns); use T <= vocab",
                          m->label, (long long)c->vocab, m->T);
        goto fail;
    }
    if (!(c->label_smoothing >= 0.0f && c->label_smoothing <= 1.0f)) {
        st = tp_set_error(TP_ERR_INVALID_ARG, "%s: label_smoothing %g outside [0, 1]", m->label,
                          (double)c->label_smoothing);
        goto fail;
    }
    float eb = c->emb_bound != 0.0f ? c->emb_bound : 0.1f;
    if (!(eb > 0.0f) || !isfinite(eb)) {
        st = tp_set_error(TP_ERR_INVALID_ARG, "%s: emb_bound %g must be finite and > 0",
                          m->label, (double)c->emb_bound);
        goto fail;
    }
    int64_t npos;
    if ((st = tpl_mul(m->label, "position table seq x hidden", c->seq, c->hidden, &npos)))
        goto fail;
    m->voff = malloc(sizeof(int64_t) * (size_t)(m->T + 1));
    m->toff = malloc(sizeof(int64_t) * (size_t)(m->T + 1));
    m->counts = malloc(sizeof(size_t) * (size_t)m->T);
    m->blocks = calloc((size_t)(c->layers ? c->layers : 1), sizeof(tp_block *));
    m->xs = calloc((size_t)(c->layers + 1), sizeof(tp_tensor));
    host = malloc(sizeof(float) * (size_t)npos);
    if (!m->voff || !m->toff || !m->counts || !m->blocks || !m->xs || !host) {
        st = tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory", m->label);
        goto fail;
    }
    tpl_shard_offsets(c->vocab, m->T, m->voff);
    m->vlo = m->voff[m->rank];
    m->vhi = m->voff[m->rank + 1];
    m->vl = m->vhi - m->vlo;

    tp_embedding_config ec = {.vocab = c->vocab, .dim = c->hidden, .seed = c->seed, .tensor_id = 1,
                              .name = "embedding", .init_bound = eb,
                              .sequence_parallel = c->sequence_parallel};
    if ((st = tp_embedding_create(comm, &ec, &m->emb)) != TP_OK)
        goto fail;
    if ((st = tp_tensor_alloc2(m->dev, TP_F32, c->seq, c->hidden, &m->pos)) != TP_OK ||
        (st = tp_tensor_alloc2(m->dev, TP_F32, c->seq, c->hidden, &m->dpos)) != TP_OK)
        goto fail;
    tp_master_fill(c->seed, 2, c->hidden, 0, c->seq, 0, c->hidden, eb, host);
    if ((st = tp_tensor_upload(&m->pos, host)) != TP_OK)
        goto fail;
    for (int64_t i = 0; i < c->layers; i++) {
        char nm[64];
        snprintf(nm, sizeof nm, "blocks.%lld", (long long)i);
        tp_block_config bc = {.hidden = c->hidden, .heads = c->heads, .kv_heads = c->kv_heads,
                              .head_dim = c->head_dim, .ffn = c->ffn, .bias = c->bias,
                              .rms = c->rms, .eps = c->eps, .gelu_tanh = c->gelu_tanh,
                              .causal = true, .sequence_parallel = c->sequence_parallel,
                              .seed = c->seed, .tensor_id = 16 + 8 * (uint64_t)i, .name = nm};
        if ((st = tp_block_create(comm, &bc, &m->blocks[i])) != TP_OK)
            goto fail;
    }
    tp_norm_config nc = {.dim = c->hidden, .rms = c->rms, .bias = !c->rms, .eps = c->eps,
                         .sequence_parallel = c->sequence_parallel, .name = "ln_f"};
    if ((st = tp_norm_create(comm, &nc, &m->lnf)) != TP_OK)
        goto fail;
    if (!c->tied) {
        tp_linear_config lc = {.in_features = c->hidden, .out_features = c->vocab, .seed = c->seed,
                               .tensor_id = 3, .name = "output"};
        if ((st = tp_column_linear_create(comm, &lc, &m->out)) != TP_OK)
            goto fail;
    }
    tp_ce_config cc = {.vocab = c->vocab, .label_smoothing = c->label_smoothing,
                       .use_ignore_index = c->use_ignore_index, .ignore_index = c->ignore_index,
                       .name = "loss"};
    if ((st = tp_vocab_ce_create(comm, &cc, &m->ce)) != TP_OK)
        goto fail;
    if ((st = tp_gpt_zero_grad(m)) != TP_OK || (st = collect_params(m)) != TP_OK)
        goto fail;
    free(host);
    *out = m;
    return TP_OK;
fail:
    free(host);
    tp_gpt_free(m);
    return st;
}

tp_status tp_gpt_zero_grad(tp_gpt *m)
{
    if (!m)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_gpt_zero_grad: model is NULL");
    tp_status st = tp_embedding_zero_grad(m->emb);
    if (st == TP_OK)
        st = tp_dev_memset(m->dev, m->dpos.data, 0, tp_tensor_bytes(&m->dpos));
    for (int64_t i = 0; i < m->cfg.layers && st == TP_OK; i++)
        st = tp_block_zero_grad(m->blocks[i]);
    if (st == TP_OK)
        st = tp_norm_zero_grad(m->lnf);
    if (st == TP_OK && m->out)
        st = tp_linear_zero_grad(m->out);
    return st;
}

/* ------------------------------------------------------------- forward */

/* Make t a [rows, cols] tensor of dtype dt (reusing it when it already is). */
static tp_status ensure2(tp_gpt *m, tp_tensor *t, tp_dtype dt, int64_t rows, int64_t cols)
{
    if (t->data && t->ndim == 2 && t->dtype == dt && t->shape[0] == rows && t->shape[1] == cols)
        return TP_OK;
    tp_tensor_release(t);
    return tp_tensor_alloc2(m->dev, dt, rows, cols, t);
}

/* Shapes and buffers for a forward of batch x seqlen tokens. */
static tp_status prepare(tp_gpt *m, int64_t batch, int64_t seqlen)
{
    int64_t tokens = batch * seqlen, H = m->cfg.hidden;
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
    tp_status st = ensure2(m, &m->pos_ids, TP_I32, 1, tokens);
    for (int64_t i = 0; i <= m->cfg.layers && st == TP_OK; i++)
        st = ensure2(m, &m->xs[i], TP_F32, m->rows, H);
    if (st == TP_OK)
        st = ensure2(m, &m->hn, TP_F32, m->rows, H);
    if (st == TP_OK)
        st = ensure2(m, &m->g0, TP_F32, m->rows, H);
    if (st == TP_OK)
        st = ensure2(m, &m->g1, TP_F32, m->rows, H);
    if (st == TP_OK)
        st = ensure2(m, &m->logits, TP_F32, tokens, m->vl);
    if (st == TP_OK)
        st = ensure2(m, &m->dlogits, TP_F32, tokens, m->vl);
    if (st == TP_OK && m->cfg.sequence_parallel)
        st = tpl_ws_reserve(&m->hfull, (size_t)(tokens * H) * sizeof(float), m->label);
    if (st == TP_OK)
        st = tpl_ws_reserve(&m->dhfull, (size_t)(tokens * H) * sizeof(float), m->label);
    if (st == TP_OK)
        st = tpl_ws_reserve(&m->tmp, (size_t)(m->rows * H) * sizeof(float), m->label);
    if (st == TP_OK && tokens > 0) {
        int32_t *p = malloc(sizeof(int32_t) * (size_t)tokens);
        if (!p)
            st = tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory", m->label);
        for (int64_t t = 0; p && t < tokens; t++)
            p[t] = (int32_t)(t % seqlen);
        if (p)
            st = tp_tensor_upload(&m->pos_ids, p);
        free(p);
    }
    if (st != TP_OK) {
        release_acts(m);
        m->batch = m->seqlen = 0;
    }
    return st;
}

static tp_status check_inputs(tp_gpt *m, const tp_tensor *ids, const tp_tensor *targets,
                              int64_t *batch, int64_t *seqlen)
{
    if (!ids || !targets)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: %s is NULL", m->label, !ids ? "ids" : "targets");
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
        return tp_set_error(TP_ERR_SHAPE, "%s: %lld targets for %lld tokens (batch %lld x seq %lld)",
                            m->label, (long long)tp_tensor_numel(targets),
                            (long long)(*batch * *seqlen), (long long)*batch, (long long)*seqlen);
    if (!ids->data || !targets->data)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: %s has no data", m->label,
                            !ids->data ? "ids" : "targets");
    /* the activations [tokens, hidden] and logits [tokens, vocab] */
    int64_t n;
    tp_status st =
        tpl_mul(m->label, "activations tokens x hidden", *batch * *seqlen, m->cfg.hidden, &n);
    if (st == TP_OK)
        st = tpl_mul(m->label, "logits tokens x vocab", *batch * *seqlen, m->cfg.vocab, &n);
    return st;
}

/* Download ids and refuse ids outside [0, vocab) (the embedding would give zero rows). */
static tp_status check_ids_range(tp_gpt *m, const tp_tensor *ids, int64_t n)
{
    int32_t *h = malloc(sizeof(int32_t) * (size_t)n);
    if (!h)
        return tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory", m->label);
    tp_status st = tp_tensor_download(ids, h);
    for (int64_t i = 0; st == TP_OK && i < n; i++)
        if (h[i] < 0 || h[i] >= m->cfg.vocab)
            st = tp_set_error(TP_ERR_INVALID_ARG, "%s: ids[%lld] = %d is outside [0, vocab=%lld)",
                              m->label, (long long)i, h[i], (long long)m->cfg.vocab);
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

static tp_status forward_body(tp_gpt *m, const tp_tensor *ids, const tp_tensor *targets,
                              float *loss)
{
    const int64_t H = m->cfg.hidden, N = m->tokens, R = m->rows;
    tp_status st = tp_embedding_forward(m->emb, ids, &m->xs[0]);
    if (st != TP_OK)
        return st;
    tp_phase prev = tp_phase_set(m->comm, TP_PHASE_FORWARD);
    /* + position rows (the replicated table, looked up by t % seq_len) */
    if (R > 0) {
        st = tp_dev_embedding(m->dev, TP_F32, R, H, (const int32_t *)m->pos_ids.data + m->slo, 0,
                              m->cfg.seq, m->pos.data, m->tmp.ptr);
        if (st == TP_OK)
            st = tp_dev_axpby(m->dev, TP_F32, R * H, 1.0f, m->tmp.ptr, 1.0f, m->xs[0].data);
    }
    tp_phase_set(m->comm, prev);
    for (int64_t i = 0; i < m->cfg.layers && st == TP_OK; i++)
        st = tp_block_forward(m->blocks[i], &m->xs[i], m->batch, m->seqlen, &m->xs[i + 1]);
    if (st == TP_OK)
        st = tp_norm_forward(m->lnf, &m->xs[m->cfg.layers], &m->hn);
    if (st != TP_OK)
        return st;
    prev = tp_phase_set(m->comm, TP_PHASE_FORWARD);
    const void *h = m->hn.data;
    if (m->cfg.sequence_parallel) { /* the output projection needs every token */
        for (int i = 0; i < m->T; i++)
            m->counts[i] = (size_t)((m->toff[i + 1] - m->toff[i]) * H);
        st = tp_all_gatherv(m->comm, m->hn.data, m->hfull.ptr, m->counts, TP_F32);
        h = m->hfull.ptr;
    }
    tp_tensor *w, *dw;
    out_weight(m, &w, &dw);
    if (st == TP_OK)
        st = m->out ? tpl_gemm(m->dev, TP_F32, 0, 0, N, m->vl, H, 0.0f, h, H, w->data, m->vl,
                                    m->logits.data, m->vl)
                    : tpl_gemm(m->dev, TP_F32, 0, 1, N, m->vl, H, 0.0f, h, H, w->data, H,
                                    m->logits.data, m->vl);
    tp_phase_set(m->comm, prev);
    if (st == TP_OK)
        st = tp_vocab_ce_forward(m->ce, &m->logits, targets, loss);
    return st;
}

tp_status tp_gpt_forward(tp_gpt *m, const tp_tensor *ids, const tp_tensor *targets, float *loss)
{
    if (!m)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_gpt_forward: model is NULL");
    if (!loss)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: loss is NULL", m->label);
    int64_t batch = 0, seqlen = 0;
    tp_status st = check_inputs(m, ids, targets, &batch, &seqlen);
    if (st == TP_OK)
        st = check_ids_range(m, ids, batch * seqlen);
    if (st == TP_OK)
        st = prepare(m, batch, seqlen);
    if (st != TP_OK)
        return st;
    m->saved = false;
    st = forward_body(m, ids, targets, loss);
    m->saved = st == TP_OK;
    return st;
}

/* ------------------------------------------------------------ backward */

tp_status tp_gpt_backward(tp_gpt *m)
{
    if (!m)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_gpt_backward: model is NULL");
    if (!m->saved)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: backward called without a successful forward",
                            m->label);
    const int64_t H = m->cfg.hidden, N = m->tokens;
    const bool sp = m->cfg.sequence_parallel;
    tp_status st = tp_vocab_ce_backward(m->ce, 1.0f, &m->dlogits);
    if (st != TP_OK)
        return st;
    tp_tensor *w, *dw;
    out_weight(m, &w, &dw);
    const void *h = sp ? m->hfull.ptr : m->hn.data;
    tp_phase prev = tp_phase_set(m->comm, TP_PHASE_BACKWARD);
    if (m->out) { /* dW_r += h^T dlogits_r; dh = dlogits_r W_r^T (partial over vocab shards) */
        st = tpl_gemm(m->dev, TP_F32, 1, 0, H, m->vl, N, 1.0f, h, H, m->dlogits.data, m->vl,
                           dw->data, m->vl);
        if (st == TP_OK)
            st = tpl_gemm(m->dev, TP_F32, 0, 1, N, H, m->vl, 0.0f, m->dlogits.data, m->vl,
                               w->data, m->vl, m->dhfull.ptr, H);
    } else { /* dE_r += dlogits_r^T h; dh = dlogits_r E_r */
        st = tpl_gemm(m->dev, TP_F32, 1, 0, m->vl, H, N, 1.0f, m->dlogits.data, m->vl, h, H,
                           dw->data, H);
        if (st == TP_OK)
            st = tpl_gemm(m->dev, TP_F32, 0, 0, N, H, m->vl, 0.0f, m->dlogits.data, m->vl,
                               w->data, H, m->dhfull.ptr, H);
    }
    tp_tensor *dh = &m->g0, *dx = &m->g1;
    if (st == TP_OK && !sp) {
        st = tp_all_reduce(m->comm, m->dhfull.ptr, dh->data, (size_t)(N * H), TP_F32, TP_SUM);
    } else if (st == TP_OK) {
        for (int i = 0; i < m->T; i++)
            m->counts[i] = (size_t)((m->toff[i + 1] - m->toff[i]) * H);
        st = tp_reduce_scatterv(m->comm, m->dhfull.ptr, dh->data, m->counts, TP_F32, TP_SUM);
    }
    tp_phase_set(m->comm, prev);
    if (st == TP_OK)
        st = tp_norm_backward(m->lnf, dh, dx);
    for (int64_t i = m->cfg.layers - 1; i >= 0 && st == TP_OK; i--) {
        tp_tensor *t = dh;
        dh = dx;
        dx = t;
        st = tp_block_backward(m->blocks[i], dh, dx);
    }
    if (st == TP_OK)
        st = tp_embedding_backward(m->emb, dx);
    if (st != TP_OK)
        return st;
    /* position table: scatter-add every token's gradient by position (the
     * full gradient, so every rank computes the same replicated result) */
    prev = tp_phase_set(m->comm, TP_PHASE_BACKWARD);
    const void *full = sp ? tpl_embedding_gathered_dy(m->emb) : dx->data;
    if (N > 0)
        st = tp_dev_embedding_bwd(m->dev, TP_F32, N, H, m->pos_ids.data, 0, m->cfg.seq, full,
                                  m->dpos.data);
    tp_phase_set(m->comm, prev);
    return st;
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
    const prec *r = &m->recs[i];
    const tp_param *p = &m->params[i];
    switch (r->kind) {
    case PK_EMB:
        return grad ? tp_embedding_get_full_grad(r->layer, host) : tp_embedding_get_full(r->layer, host);
    case PK_REPL:
        return host ? tp_tensor_download(grad ? p->grad : p->value, host) : TP_OK;
    case PK_LIN_W:
        return grad ? tp_linear_get_full_grad(r->layer, host, NULL)
                    : tp_linear_get_full(r->layer, host, NULL);
    case PK_LIN_B:
        return grad ? tp_linear_get_full_grad(r->layer, NULL, host)
                    : tp_linear_get_full(r->layer, NULL, host);
    case PK_ATT: {
        float *o[4] = {NULL, NULL, NULL, NULL};
        o[r->which] = host;
        return grad ? tp_attention_get_full_grad(r->layer, o[0], o[1], o[2], o[3])
                    : tp_attention_get_full(r->layer, o[0], o[1], o[2], o[3]);
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
    tp_status st = full_of(m, i, false, value);
    if (st == TP_OK)
        st = full_of(m, i, true, grad);
    return st;
}

tp_status tp_gpt_get_full_logits(tp_gpt *m, float *logits)
{
    if (!m)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_gpt_get_full_logits: model is NULL");
    if (!m->saved)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: no forward yet", m->label);
    size_t n = (size_t)(m->tokens * m->cfg.vocab);
    tpl_ws ws = {.dev = m->dev};
    tp_status st = tpl_ws_reserve(&ws, 2 * n * sizeof(float), m->label);
    if (st == TP_OK)
        st = tpl_gather_cols(m->comm, TP_F32, m->logits.data, ws.ptr, (float *)ws.ptr + n,
                                  m->tokens, m->voff, m->counts);
    if (st == TP_OK && logits)
        st = tp_dev_download(m->dev, logits, ws.ptr, n * sizeof(float));
    tpl_ws_release(&ws);
    return st;
}
