/* SPDX-License-Identifier: MIT */
/* ce.c — vocab-parallel cross-entropy: 2 all-reduces forward, none backward. */
#include "layers-internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct tp_vocab_ce {
    tp_comm *comm;
    tp_device *dev;
    char *label;
    int64_t vocab, lo, hi;
    float smoothing;
    bool use_ignore;
    int32_t ignore_index;
    tp_dtype dt;  /* logits and dlogits; the row statistics are f32 */
    tpl_ws ws;    /* gmax[rows] | out3[3 rows] | sumexp[rows] | scale[rows] */
    int32_t *tgt; /* host copy of the targets */
    float *host;  /* host scratch: out3 + gmax, later the scales */
    size_t host_rows;
    tp_tensor logits_saved, targets_saved;
    int64_t rows, count;
    bool saved;
};

void tp_vocab_ce_free(tp_vocab_ce *c)
{
    if (!c)
        return;
    tpl_ws_release(&c->ws);
    free(c->tgt);
    free(c->host);
    free(c->label);
    free(c);
}

tp_status tp_vocab_ce_create(tp_comm *comm, const tp_ce_config *cfg, tp_vocab_ce **out)
{
    if (!out)
        return tp_set_error(TP_ERR_INVALID_ARG, "VocabParallelCrossEntropy create: out is NULL");
    *out = NULL;
    if (!comm || !cfg)
        return tp_set_error(TP_ERR_INVALID_ARG, "VocabParallelCrossEntropy create: %s is NULL",
                            !comm ? "comm" : "cfg");
    tp_vocab_ce *c = calloc(1, sizeof *c);
    if (!c)
        return tp_set_error(TP_ERR_NO_MEMORY,
                            "VocabParallelCrossEntropy create: out of host memory");
    c->comm = comm;
    c->dev = c->ws.dev = tp_comm_device(comm);
    c->ws.keep = true; /* row max and sum of exp for backward */
    c->vocab = cfg->vocab;
    c->smoothing = cfg->label_smoothing;
    c->use_ignore = cfg->use_ignore_index;
    c->ignore_index = cfg->ignore_index;
    c->dt = cfg->dtype;
    c->label = tpl_label("VocabParallelCrossEntropy", cfg->name, comm);
    tp_status st = TP_OK;
    int T = tp_comm_size(comm);
    if (!c->label)
        st = tp_set_error(TP_ERR_NO_MEMORY, "VocabParallelCrossEntropy create: out of host memory");
    else if (tpl_check_dtype(c->label, c->dt) != TP_OK)
        st = TP_ERR_INVALID_ARG;
    else if (c->vocab < T)
        st = tp_set_error(TP_ERR_SHAPE,
                          "%s: T=%d is larger than vocab=%lld: some rank would get 0 logit columns",
                          c->label, T, (long long)c->vocab);
    else if (!(c->smoothing >= 0.0f && c->smoothing <= 1.0f))
        st = tp_set_error(TP_ERR_INVALID_ARG, "%s: label_smoothing %g outside [0, 1]", c->label,
                          (double)c->smoothing);
    if (st != TP_OK) {
        tp_vocab_ce_free(c);
        return st;
    }
    tp_shard_range(c->vocab, T, tp_comm_rank(comm), &c->lo, &c->hi);
    *out = c;
    return TP_OK;
}

static tp_status forward_body(tp_vocab_ce *c, const tp_tensor *logits, const tp_tensor *targets,
                              int64_t rows, float *loss)
{
    const size_t fs = sizeof(float);
    int64_t cols = c->hi - c->lo;
    float *gmax = c->ws.ptr, *out3 = gmax + rows, *sumexp = out3 + 3 * rows;
    tp_status st;
    if (rows > 0)
        TP_TRY_GOTO(tp_dev_row_max(c->dev, c->dt, rows, cols, logits->data, gmax), st, no_loss);
    TP_TRY_GOTO(tp_all_reduce(c->comm, gmax, gmax, (size_t)rows, TP_F32, TP_MAX), st, no_loss);
    if (rows > 0)
        TP_TRY_GOTO(tp_dev_ce_stats(c->dev, c->dt, rows, cols, logits->data, targets->data, c->lo,
                                    gmax, out3),
                    st, no_loss);
    /* sum of exp (relative to the global max), target logit (non-zero on
     * its owner only) and sum of logits, reduced together */
    TP_TRY_GOTO(tp_all_reduce(c->comm, out3, out3, (size_t)(3 * rows), TP_F32, TP_SUM), st,
                no_loss);
    if (rows == 0)
        goto no_loss;
    TP_TRY(tp_dev_copy_2d(c->dev, sumexp, fs, out3, 3 * fs, fs, (size_t)rows));
    TP_TRY(tp_dev_download(c->dev, c->host, gmax, (size_t)(4 * rows) * fs));
    const float *hm = c->host, *h3 = c->host + rows;
    double s = c->smoothing, sum = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        if (c->use_ignore && c->tgt[r] == c->ignore_index)
            continue;
        double lse = (double)hm[r] + log((double)h3[3 * r]);
        sum += lse - (1.0 - s) * h3[3 * r + 1] - s * h3[3 * r + 2] / (double)c->vocab;
    }
    *loss = c->count ? (float)(sum / (double)c->count) : 0.0f;
    return TP_OK;
no_loss: /* failed, or no rows on any rank */
    *loss = 0.0f;
    return st;
}

tp_status tp_vocab_ce_forward(tp_vocab_ce *c, const tp_tensor *logits, const tp_tensor *targets,
                              float *loss)
{
    if (!c)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_vocab_ce_forward: layer is NULL");
    if (!loss)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: loss is NULL", c->label);
    c->saved = false; /* a failed forward leaves nothing for backward */
    int64_t rows;
    TP_TRY(tpl_check_act(c->label, "logits", logits, c->dev, c->dt, &rows));
    int64_t cols = c->hi - c->lo, got = logits->shape[logits->ndim - 1];
    if (got != cols)
        return tp_set_error(
            TP_ERR_SHAPE,
            "%s: logits last dim expected this rank's vocab shard %lld ([%lld, %lld) "
            "of vocab %lld), got %lld%s",
            c->label, (long long)cols, (long long)c->lo, (long long)c->hi, (long long)c->vocab,
            (long long)got,
            got == c->vocab && got != cols
                ? "; these are the full logits: pass the column-parallel output "
                  "without gather_output"
                : "");
    if (!targets)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: targets is NULL", c->label);
    if (targets->dtype != TP_I32 || targets->dev != c->dev)
        return tp_set_error(
            TP_ERR_SHAPE, "%s: targets must be i32 on the layer's device (got %s%s)", c->label,
            tp_dtype_name(targets->dtype), targets->dev != c->dev ? " on another device" : "");
    if (tp_tensor_numel(targets) != rows)
        return tp_set_error(TP_ERR_SHAPE, "%s: tokens mismatch: %lld targets for %lld logit rows",
                            c->label, (long long)tp_tensor_numel(targets), (long long)rows);
    if ((size_t)rows > c->host_rows || !c->host) {
        free(c->tgt);
        free(c->host);
        c->tgt = malloc(sizeof(int32_t) * (size_t)(rows + 1));
        c->host = malloc(sizeof(float) * (size_t)(4 * rows + 1));
        c->host_rows = (size_t)rows;
        if (!c->tgt || !c->host) {
            c->host_rows = 0;
            return tp_set_error(TP_ERR_NO_MEMORY, "%s: out of host memory", c->label);
        }
    }
    if (rows > 0)
        TP_TRY(tp_dev_download(c->dev, c->tgt, targets->data, sizeof(int32_t) * (size_t)rows));
    c->count = 0;
    for (int64_t r = 0; r < rows; r++) {
        int32_t t = c->tgt[r];
        if (c->use_ignore && t == c->ignore_index)
            continue;
        if (t < 0 || t >= c->vocab)
            return tp_set_error(TP_ERR_INVALID_ARG,
                                "%s: target of row %lld is %d, outside [0, vocab=%lld)%s", c->label,
                                (long long)r, t, (long long)c->vocab,
                                c->use_ignore ? "" : " (to skip rows, set use_ignore_index)");
        c->count++;
    }
    TP_TRY(tpl_ws_reserve(&c->ws, sizeof(float) * (size_t)(6 * rows), c->label));
    tp_phase prev = tp_phase_set(c->comm, TP_PHASE_FORWARD);
    tp_status st = forward_body(c, logits, targets, rows, loss);
    tp_phase_set(c->comm, prev);
    if (st != TP_OK)
        return st;
    c->logits_saved = *logits;
    c->logits_saved.owned = false;
    c->targets_saved = *targets;
    c->targets_saved.owned = false;
    c->rows = rows;
    c->saved = true;
    return TP_OK;
}

tp_status tp_vocab_ce_backward(tp_vocab_ce *c, float dloss, tp_tensor *dlogits)
{
    if (!c)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_vocab_ce_backward: layer is NULL");
    if (!c->saved)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: backward called before forward", c->label);
    TP_TRY(tpl_prepare_out(c->label, "dlogits", dlogits, &c->logits_saved, c->dev, c->dt,
                           c->hi - c->lo, ""));
    if (c->rows == 0)
        return TP_OK;
    int64_t rows = c->rows;
    float *gmax = c->ws.ptr, *sumexp = gmax + 4 * rows, *scale = sumexp + rows;
    float sc = c->count ? dloss / (float)c->count : 0.0f;
    for (int64_t r = 0; r < rows; r++)
        c->host[r] = c->use_ignore && c->tgt[r] == c->ignore_index ? 0.0f : sc;
    tp_phase prev = tp_phase_set(c->comm, TP_PHASE_BACKWARD);
    tp_status st;
    TP_TRY_GOTO(tp_dev_upload(c->dev, scale, c->host, sizeof(float) * (size_t)rows), st, done);
    TP_TRY_GOTO(tp_dev_ce_bwd(c->dev, c->dt, rows, c->hi - c->lo, c->logits_saved.data,
                              c->targets_saved.data, c->lo, c->vocab, gmax, sumexp, scale,
                              c->smoothing, dlogits->data),
                st, done);
done:
    tp_phase_set(c->comm, prev);
    return st;
}
