/* SPDX-License-Identifier: MIT */
/* tt-compare.h — tp_transformer's TP-size invariance checker: the largest
 * difference per tensor and step between runs at several T, in units in the
 * last place of the tensor's scale, against the bound derived from the
 * reduction order (docs/determinism.md). Example code, not the library. */
#ifndef TT_COMPARE_H
#define TT_COMPARE_H

#include <stdbool.h>
#include <stdint.h>

#define TT_MAX_RUNS 16

/* The sizes the bound depends on. */
typedef struct tt_shape {
    int64_t vocab, hidden, heads, head_dim, ffn, layers, seq, tokens;
} tt_shape;

/* Tensor kinds: the bound differs for each. */
enum {
    TT_LOSS,
    TT_LOGITS,
    TT_GRAD,
    TT_WEIGHT
};

typedef struct tt_cmp {
    int nruns, steps, ntens; /* steps: how many leading steps are compared */
    int Ts[TT_MAX_RUNS];
    double scale; /* multiplies every bound (--ulp-bound-scale) */
    tt_shape shape;
    char (*names)[96]; /* ntens */
    int *kind;         /* ntens */
    int64_t *len;      /* ntens */
    float **ref;       /* [step][tensor]: run 0's values */
    double *ulps;      /* [run][step][tensor], -1: not compared */
} tt_cmp;

/* "1,2,3,4" into Ts (at most TT_MAX_RUNS values in [1, 1024]); 0, or -1
 * after printing why. */
int tt_parse_list(const char *prog, const char *s, int *Ts, int *n);

/* Set up for nruns runs, `steps` compared steps and the tensors: the loss,
 * the logits, each parameter's gradient and (first step only) each
 * parameter's value. names/shapes come from the first run's parameters.
 * 0, or -1 (out of memory, message printed). */
int tt_cmp_init(tt_cmp *c, int nruns, int steps, int nparams, const char *const *pnames,
                const int64_t *plens, int64_t logits_len);
/* Record tensor t of run r at step s (rank 0's full host copy). */
int tt_cmp_record(tt_cmp *c, int r, int s, int t, const float *v);
/* The bound (ULPs) of tensor t at step s (0-based). */
double tt_cmp_bound(const tt_cmp *c, int t, int s);
/* Print the table; true if every difference is within its bound. */
bool tt_cmp_report(const tt_cmp *c);
void tt_cmp_free(tt_cmp *c);

#endif
