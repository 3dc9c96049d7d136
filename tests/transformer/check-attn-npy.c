/* SPDX-License-Identifier: MIT */
/*
 * check-attn-npy DIR — check what `tp_attention --save-npy DIR` wrote from
 * the dump alone: config.json gives the sizes, x, dy and the full weights
 * feed an independent double-precision attention (ref.h), whose y, dx and
 * parameter gradients (of sum(y * dy)) must match the saved ones. Exit 0
 * if all agree, 1 if not, 77 if DIR has no config.json.
 *
 * Tolerance: every saved value is an f32 computation over sums of at most
 * K = max(hidden, heads*head_dim, seq, tokens) terms of O(1) inputs (x, dy
 * in [-1, 1], weights <= 1/sqrt(fan-in)), so its error is below a few
 * K u (sum of |terms|) with u = 6e-8; for the sizes the meson test uses
 * (K <= 64, sums <= ~20) that is < 1e-4, and we accept 2e-4 (1 + |ref|).
 * A wrong head mapping or a missing gradient part is O(0.1) or more.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../layers/json-read.h"
#include "npy-read.h"
#include "ref.h"

static int load_d(const char *dir, const char *name, int64_t want, double **out)
{
    char path[4096];
    npy_array a;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (npy_read(path, "<f4", "check-attn-npy", &a))
        return -1;
    if (a.n != want) {
        fprintf(stderr, "check-attn-npy: %s has %lld values, config.json implies %lld\n", name,
                (long long)a.n, (long long)want);
        npy_free(&a);
        return -1;
    }
    *out = rzalloc(want);
    for (int64_t i = 0; i < want; i++)
        (*out)[i] = ((const float *)a.data)[i];
    npy_free(&a);
    return 0;
}

/* Compare the saved tensor NAME with the reference; count a mismatch. */
static int compare(const char *dir, const char *name, const double *ref, int64_t n)
{
    double *got = NULL, worst = 0;
    int64_t at = 0;
    if (load_d(dir, name, n, &got))
        return 1;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs(got[i] - ref[i]) / (2e-4 * (1 + fabs(ref[i])));
        if (e > worst || e != e)
            worst = e != e ? INFINITY : e, at = i;
    }
    printf("  %-16s worst %.3g of tolerance at [%lld] (saved %.9g, reference %.9g)%s\n", name,
           worst, (long long)at, n ? got[at] : 0.0, n ? ref[at] : 0.0,
           worst > 1 ? "  MISMATCH" : "");
    free(got);
    return worst > 1;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: check-attn-npy DIR\n");
        return 2;
    }
    const char *dir = argv[1];
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *json = slurp(path);
    if (!json) {
        printf("check-attn-npy: skipped: no %s\n", path);
        return 77;
    }
    ref_attn R = {.b = (int64_t)jnum(json, "batch", 0),
                  .s = (int64_t)jnum(json, "seq", 0),
                  .hid = (int64_t)jnum(json, "hidden", 0),
                  .H = (int64_t)jnum(json, "heads", 0),
                  .KV = (int64_t)jnum(json, "kv_heads", 0),
                  .hd = (int64_t)jnum(json, "head_dim", 0),
                  .causal = jnum(json, "causal", 1) != 0};
    bool bias = jnum(json, "bias", 1) != 0, f32 = jstr_is(json, "dtype", "f32");
    free(json);
    if (R.b < 1 || R.s < 1 || R.hid < 1 || R.H < 1 || R.KV < 1 || R.hd < 1 || R.H % R.KV || !f32) {
        fprintf(stderr, "check-attn-npy: config.json: sizes < 1, kv_heads not dividing heads or "
                        "dtype not f32\n");
        return 1;
    }
    int64_t N = R.b * R.s, fw = (R.H + 2 * R.KV) * R.hd, ow = R.H * R.hd;
    double *x = NULL, *dy = NULL, *wq = NULL, *bq = NULL, *wo = NULL, *bo = NULL;
    if (load_d(dir, "x.npy", N * R.hid, &x) || load_d(dir, "dy.npy", N * R.hid, &dy) ||
        load_d(dir, "qkv_w.npy", R.hid * fw, &wq) || load_d(dir, "qkv_b.npy", fw, &bq) ||
        load_d(dir, "out_w.npy", ow * R.hid, &wo) || load_d(dir, "out_b.npy", R.hid, &bo))
        return 1;
    R.wqkv = wq, R.wo = wo;
    R.bqkv = bias ? bq : NULL, R.bo = bias ? bo : NULL;
    double *y = rzalloc(N * R.hid), *dx = rzalloc(N * R.hid), *dwq = rzalloc(R.hid * fw),
           *dbq = rzalloc(fw), *dwo = rzalloc(ow * R.hid), *dbo = rzalloc(R.hid);
    ref_attn_forward(&R, x, y);
    ref_attn_backward(&R, x, dy, dx, dwq, dbq, dwo, dbo);
    int bad = compare(dir, "y.npy", y, N * R.hid) + compare(dir, "dx.npy", dx, N * R.hid) +
              compare(dir, "grad_qkv_w.npy", dwq, R.hid * fw) +
              compare(dir, "grad_out_w.npy", dwo, ow * R.hid);
    if (bias)
        bad += compare(dir, "grad_qkv_b.npy", dbq, fw) + compare(dir, "grad_out_b.npy", dbo, R.hid);
    printf("check-attn-npy: %lld tokens, heads %lld, kv_heads %lld, head_dim %lld -> %s\n",
           (long long)N, (long long)R.H, (long long)R.KV, (long long)R.hd, bad ? "MISMATCH" : "OK");
    ref_attn_free(&R);
    free(x), free(dy), free(wq), free(bq), free(wo), free(bo);
    free(y), free(dx), free(dwq), free(dbq), free(dwo), free(dbo);
    return bad ? 1 : 0;
}
