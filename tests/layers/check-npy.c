/* SPDX-License-Identifier: MIT */
/*
 * check-npy DIR — check what `tp_transformer --save-npy DIR` wrote, the way
 * a NumPy/PyTorch user would: read config.json (sizes, head_dim, norm,
 * ignore_index, ...), load the full ids, targets and weights, run
 * an independent forward (gpt-ref.h, double) and compare the saved loss and
 * logits; compare saved gradients with central finite differences of that
 * forward (every 5th entry of every tensor). Exit 0 if all agree, 1 if not,
 * 77 if DIR lacks the files (nothing to check).
 *
 * Tolerances as in test-gpt.c (same error model, sizes as small or smaller
 * as the meson test runs it): 3e-5 (1 + |x|) for the loss and logits,
 * 6e-5 (1 + |g|) for gradients.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpt-ref.h"
#include "json-read.h"
#include "npy-read.h"

/* dir/name, a .npy of dtype descr, into a; 0 or -1 (message printed). */
static int load(const char *dir, const char *name, const char *descr, npy_array *a)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return npy_read(path, descr, "check-npy", a);
}

static double *to_d(const npy_array *a)
{
    double *d = malloc(sizeof(double) * (size_t)(a->n ? a->n : 1));
    for (int64_t i = 0; i < a->n; i++)
        d[i] = ((const float *)a->data)[i];
    return d;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: check-npy DIR\n");
        return 2;
    }
    const char *dir = argv[1];
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *json = slurp(path);
    if (!json) {
        printf("check-npy: skipped: no %s\n", path);
        return 77;
    }
    gref_cfg c = {.eps = 1e-5, .bias = true};
    c.V = (int64_t)jnum(json, "vocab", 0);
    c.H = (int64_t)jnum(json, "hidden", 0);
    c.nh = (int64_t)jnum(json, "heads", 0);
    c.kv = (int64_t)jnum(json, "kv_heads", (double)c.nh);
    c.hd = (int64_t)jnum(json, "head_dim", c.nh ? (double)(c.H / c.nh) : 0);
    c.F = (int64_t)jnum(json, "ffn", 0);
    c.L = (int64_t)jnum(json, "layers", 0);
    c.S = (int64_t)jnum(json, "seq", 0);
    long long batch = (long long)jnum(json, "batch", 0);
    long long seq = (long long)jnum(json, "seq_len", (double)c.S);
    c.tied = jnum(json, "tied", 1) != 0;
    c.rms = jstr_is(json, "norm", "rms");
    c.eps = jnum(json, "norm_eps", 1e-5);
    c.bias = jnum(json, "bias", 1) != 0;
    c.gelu_tanh = jstr_is(json, "gelu", "tanh");
    c.smoothing = jnum(json, "label_smoothing", 0);
    c.use_ignore = !jis_null(json, "ignore_index");
    c.ignore = c.use_ignore ? (int32_t)jnum(json, "ignore_index", -100) : 0;
    bool ok_cfg = jstr_is(json, "dtype", "f32") && jnum(json, "causal", 1) != 0 && c.V > 0 &&
                  c.H > 0 && c.nh > 0 && c.hd > 0 && seq <= c.S;
    free(json);
    if (!ok_cfg) {
        fprintf(stderr, "check-npy: config.json: unsupported or inconsistent settings (needs "
                        "dtype f32, causal, sizes >= 1, seq_len <= seq)\n");
        return 1;
    }
    int64_t N = batch * seq;
    npy_array ids, tgt, logits, loss;
    if (load(dir, "ids.npy", "<i4", &ids) || load(dir, "targets.npy", "<i4", &tgt) ||
        load(dir, "logits.npy", "<f4", &logits) || load(dir, "loss.npy", "<f4", &loss))
        return 1;
    if (ids.n != N || tgt.n != N || logits.n != N * c.V || loss.n != 1) {
        fprintf(stderr, "check-npy: sizes disagree with config.json\n");
        return 1;
    }
    /* parameter names in tp_gpt_params order */
    char names[512][64];
    int np = 0;
    const char *blk[] = {"ln1.weight",      "ln1.bias",      "attn.qkv.weight", "attn.qkv.bias",
                         "attn.out.weight", "attn.out.bias", "ln2.weight",      "ln2.bias",
                         "mlp.fc1.weight",  "mlp.fc1.bias",  "mlp.fc2.weight",  "mlp.fc2.bias"};
    snprintf(names[np++], 64, "embedding.weight");
    snprintf(names[np++], 64, "position.weight");
    for (int64_t l = 0; l < c.L && np < 500; l++)
        for (int j = 0; j < 12; j++) {
            bool isbias = strstr(blk[j], "bias") != NULL, norm = blk[j][0] == 'l';
            if (!isbias || !(norm ? c.rms : !c.bias))
                snprintf(names[np++], 64, "blocks.%lld.%s", (long long)l, blk[j]);
        }
    snprintf(names[np++], 64, "ln_f.weight");
    if (!c.rms)
        snprintf(names[np++], 64, "ln_f.bias");
    if (!c.tied)
        snprintf(names[np++], 64, "output.weight");
    double *P[512], *G[512];
    int64_t len[512];
    for (int i = 0; i < np; i++) {
        npy_array v, g;
        char gn[80], vn[80];
        snprintf(vn, sizeof vn, "%s.npy", names[i]);
        snprintf(gn, sizeof gn, "grad.%s.npy", names[i]);
        if (load(dir, vn, "<f4", &v) || load(dir, gn, "<f4", &g) || v.n != g.n)
            return 1;
        P[i] = to_d(&v), G[i] = to_d(&g), len[i] = v.n;
        npy_free(&v), npy_free(&g);
    }
    int bad = 0;
    double *rl = malloc(sizeof(double) * (size_t)(N * c.V));
    double ref = gref_loss(&c, P, batch, seq, ids.data, tgt.data, rl);
    double l0 = ((float *)loss.data)[0];
    if (!(fabs(l0 - ref) <= 3e-5 * (1 + fabs(ref))))
        printf("loss %.9g, reference %.9g: MISMATCH\n", l0, ref), bad++;
    double worst = 0;
    for (int64_t i = 0; i < N * c.V; i++) {
        double d = fabs(((float *)logits.data)[i] - rl[i]) / (3e-5 * (1 + fabs(rl[i])));
        worst = d > worst ? d : worst;
    }
    if (worst > 1)
        printf("logits beyond tolerance (worst %.3g x tolerance): MISMATCH\n", worst), bad++;
    double gworst = 0;
    int64_t checked = 0;
    for (int i = 0; i < np; i++)
        for (int64_t j = i % 5; j < len[i]; j += 5) {
            const double h = 1e-5, keep = P[i][j];
            P[i][j] = keep + h;
            double lp = gref_loss(&c, P, batch, seq, ids.data, tgt.data, NULL);
            P[i][j] = keep - h;
            double lm = gref_loss(&c, P, batch, seq, ids.data, tgt.data, NULL);
            P[i][j] = keep;
            double fd = (lp - lm) / (2 * h), e = fabs(G[i][j] - fd) / (6e-5 * (1 + fabs(fd)));
            gworst = e > gworst ? e : gworst;
            checked++;
            if (e > 1 && bad < 10)
                printf("grad.%s[%lld] = %.9g, finite differences %.9g: MISMATCH\n", names[i],
                       (long long)j, G[i][j], fd),
                    bad++;
        }
    printf("check-npy: %d tensors; loss %.7f (reference %.7f); logits worst %.3g of tolerance; "
           "%lld gradient entries vs finite differences, worst %.3g of tolerance -> %s\n",
           np, l0, ref, worst, (long long)checked, gworst, bad ? "MISMATCH" : "OK");
    for (int i = 0; i < np; i++)
        free(P[i]), free(G[i]);
    free(rl);
    npy_free(&ids), npy_free(&tgt), npy_free(&logits), npy_free(&loss);
    return bad ? 1 : 0;
}
