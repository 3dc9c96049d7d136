/* SPDX-License-Identifier: MIT */
/*
 * check-npy DIR — check what `tp_transformer --save-npy DIR` wrote, the way
 * a NumPy/PyTorch user would: load the full ids, targets and weights, run
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
    snprintf(path, sizeof path, "%s/config.txt", dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        printf("check-npy: skipped: no %s\n", path);
        return 77;
    }
    gref_cfg c = {.eps = 1e-5, .bias = true};
    long long batch = 0, seq = 0;
    char key[64], val[64];
    while (fscanf(f, "%63s %63s", key, val) == 2) {
        long long v = atoll(val);
        if (!strcmp(key, "vocab"))
            c.V = v;
        else if (!strcmp(key, "hidden"))
            c.H = v;
        else if (!strcmp(key, "heads"))
            c.nh = v;
        else if (!strcmp(key, "kv_heads"))
            c.kv = v;
        else if (!strcmp(key, "ffn"))
            c.F = v;
        else if (!strcmp(key, "layers"))
            c.L = v;
        else if (!strcmp(key, "seq"))
            c.S = seq = v;
        else if (!strcmp(key, "batch"))
            batch = v;
        else if (!strcmp(key, "tied"))
            c.tied = v != 0;
        else if (!strcmp(key, "norm"))
            c.rms = !strcmp(val, "rms");
        else if (!strcmp(key, "eps"))
            c.eps = atof(val);
        else if (!strcmp(key, "bias"))
            c.bias = v != 0;
        else if (!strcmp(key, "gelu"))
            c.gelu_tanh = !strcmp(val, "tanh");
        else if (!strcmp(key, "label_smoothing"))
            c.smoothing = atof(val);
    }
    fclose(f);
    c.hd = c.H / c.nh;
    int64_t N = batch * seq;
    npy_array ids, tgt, logits, loss;
    if (load(dir, "ids.npy", "<i4", &ids) || load(dir, "targets.npy", "<i4", &tgt) ||
        load(dir, "logits.npy", "<f4", &logits) || load(dir, "loss.npy", "<f4", &loss))
        return 1;
    if (ids.n != N || tgt.n != N || logits.n != N * c.V || loss.n != 1) {
        fprintf(stderr, "check-npy: sizes disagree with config.txt\n");
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
