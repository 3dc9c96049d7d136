/* SPDX-License-Identifier: MIT */
/*
 * tp_transformer — train a small tensor-parallel GPT on a synthetic token task.
 *
 * The task: sequences that follow a fixed affine rule next = (a*cur + b) mod
 * vocab (a, b from --seed; every sequence starts at a random token), so the
 * model has to learn the mapping; the loss falls from ~log(vocab) towards 0.
 *
 * Each step: forward (embedding -> blocks -> final norm -> vocab-parallel
 * logits -> vocab-parallel cross-entropy), backward, optimizer step. Rank 0
 * prints the loss and this rank's compute/communication split from the
 * built-in counters (GEMM, other kernels, collectives and their count per
 * phase).
 *
 * --compare-tp K trains the same model again on the first K ranks;
 * --compare-tp T1,T2,... trains it at each listed T (on the first T ranks).
 * Both print the loss curves side by side (exit 1 beyond --tol) and, for
 * the first --compare-steps steps, the largest difference of the loss, the
 * logits and every gradient from the first run's, in ULPs, next to the
 * bound the reduction order allows (tt-compare.c, docs/determinism.md);
 * exit 1 when one is exceeded. --save-npy DIR writes, after the forward
 * and backward of step --save-npy-step K + 1 (the weights after K
 * optimizer steps), the full (unsharded) input ids, targets, every weight
 * (as used by that forward), the logits, the loss and every parameter's
 * gradient, plus config.json with every setting that determines them;
 * tests/layers/check-npy DIR checks them against an independent
 * double-precision forward and finite differences.
 *
 *   TP_BACKEND=loopback build/examples/tp_transformer --tp 4 --compare-tp 1
 *   TP_BACKEND=loopback build/examples/tp_transformer --compare-tp 1,2,3,4 --heads 6
 *   mpirun -n 4 env TP_BACKEND=mpi build/examples/tp_transformer
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tp/tp-layers.h>

#include "example-common.h"
#include "tt-compare.h"
#include "tt-dp.h"

#define PROG "tp_transformer"

typedef struct opts {
    int tp;
    const char *compare;          /* --compare-tp as given */
    int runs[TT_MAX_RUNS], nruns; /* T of each run (0: the world), resolved from it */
    bool compare_list;            /* T1,T2,... rather than K */
    int compare_steps;
    double bound_scale;
    int64_t vocab, hidden, heads, kv_heads, head_dim, ffn, layers, seq, batch;
    int64_t ignore_index, ignore_every;
    bool use_ignore;
    int steps, print_every, save_step;
    int overlap; /* --overlap N: tp_gpt_config.overlap */
    double lr, smoothing, wd;
    bool untied, sp, sgd, rms;
    uint64_t seed;
    const char *npy_dir;
    double tol;
    const char *dtype_s, *cmp_dtype_s; /* --dtype, --compare-dtype as given */
    tp_dtype dt, cmp_dt;               /* resolved; cmp_dt used when cmp_dtype_s */
    double loss_scale;                 /* --loss-scale: 0 = dynamic for f16, none otherwise */
    double dtype_tol;                  /* --dtype-tol: 0 = the derived one (dtype_tolerance) */
    tt_dp_opts dp; /* --dp, --dp-bucket-mb, --compare-dp, --dp-inside, --dp-overlap (tt-dp.h) */
} opts;

typedef struct run {
    opts o;
    float *loss[TT_MAX_RUNS];  /* per step, per run (rank 0) */
    double ms[TT_MAX_RUNS];    /* mean wall ms per step */
    int Ts[TT_MAX_RUNS];       /* each run's T */
    tp_dtype dts[TT_MAX_RUNS]; /* each run's dtype */
    tt_cmp cmp;                /* per-tensor differences (rank 0) */
    int failed;                /* set by rank 0 */
    bool have_rank0;           /* this process runs world rank 0 (it prints) */
} run;

static const opts DEFAULTS = {
    .vocab = 251,
    .hidden = 64,
    .heads = 4,
    .kv_heads = 0,
    .head_dim = 0,
    .ignore_index = -100,
    .compare_steps = 3,
    .bound_scale = 1.0,
    .ffn = 256,
    .layers = 2,
    .seq = 32,
    .batch = 8,
    .steps = 300,
    .print_every = 0,
    .lr = 3e-3,
    .smoothing = 0.0,
    .wd = 0.01,
    .seed = 1234,
    .tol = 1e-3,
    .dp = {.bucket_mb = 25.0},
};

/* The runs of --compare-tp, head_dim's default, the ignore index and
 * --save-npy-step against --steps; 0, or 2 after printing why. */
/* "f32", "bf16" or "f16" into *dt; 0, or 2 after printing why not. */
static int parse_dtype(const char *opt, const char *s, tp_dtype *dt)
{
    if (!s || !strcmp(s, "f32"))
        *dt = TP_F32;
    else if (!strcmp(s, "bf16"))
        *dt = TP_BF16;
    else if (!strcmp(s, "f16"))
        *dt = TP_F16;
    else {
        fprintf(stderr, "tp_transformer: %s %s: expected f32, bf16 or f16\n", opt, s);
        return 2;
    }
    return 0;
}

/* --dtype and --compare-dtype (a second run at the same T); 0 or 2. */
static int resolve_dtypes(opts *o)
{
    if (parse_dtype("--dtype", o->dtype_s, &o->dt) ||
        (o->cmp_dtype_s && parse_dtype("--compare-dtype", o->cmp_dtype_s, &o->cmp_dt)))
        return 2;
    if (!o->cmp_dtype_s)
        return 0;
    if (o->compare || o->dp.dp) {
        /* with --dp the second run would be --compare-dp's one replica (or
         * none at all): compare one thing per run */
        fprintf(stderr,
                "tp_transformer: --compare-dtype and %s cannot be combined; run them "
                "separately\n",
                o->compare ? "--compare-tp" : "--dp");
        return 2;
    }
    o->nruns = 2;
    o->runs[1] = 0;       /* the same T */
    o->compare_steps = 0; /* ULP bounds are for one dtype at two T */
    return 0;
}

static int resolve(opts *o, bool ignore_index_given)
{
    o->nruns = 1;
    o->runs[0] = 0;
    if (o->compare) {
        int Ts[TT_MAX_RUNS], n = 0, mx = 0;
        if (tt_parse_list(PROG, o->compare, Ts, &n))
            return 2;
        o->compare_list = strchr(o->compare, ',') != NULL;
        for (int i = 0; i < n; i++)
            mx = Ts[i] > mx ? Ts[i] : mx;
        if (!o->compare_list) { /* K: the --tp run, then K */
            o->nruns = 2, o->runs[1] = Ts[0];
        } else {
            o->nruns = n;
            memcpy(o->runs, Ts, sizeof(int) * (size_t)n);
            if (!o->tp)
                o->tp = mx;
        }
        if (o->tp && mx > o->tp) {
            fprintf(stderr,
                    "tp_transformer: --compare-tp %s asks for T=%d but --tp is %d (every run "
                    "uses the first T ranks); raise --tp to %d or drop %d from the list\n",
                    o->compare, mx, o->tp, mx, mx);
            return 2;
        }
    }
    if (!o->head_dim) /* hidden/heads, rounded up when heads does not divide hidden */
        o->head_dim = (o->hidden + o->heads - 1) / o->heads;
    o->use_ignore = o->ignore_every > 0 || ignore_index_given;
    if (o->save_step >= o->steps) {
        fprintf(stderr,
                "tp_transformer: --save-npy-step %d needs at least %d steps (the dump is taken "
                "during step K+1); raise --steps to %d or lower --save-npy-step\n",
                o->save_step, o->save_step + 1, o->save_step + 1);
        return 2;
    }
    if (o->compare_steps > o->steps)
        o->compare_steps = o->steps;
    return resolve_dtypes(o);
}

/* --dp: the checks (tt-dp.c) and, with --compare-dp, the second run (one
 * replica of T ranks on the whole batch); 0, or 2 after printing why. */
static int dp_resolve(opts *o)
{
    o->dp.tp = o->tp;
    if (tt_dp_check(PROG, &o->dp, o->batch, o->compare, o->npy_dir))
        return 2;
    if (o->dp.compare)
        o->nruns = 2, o->runs[1] = 0;
    return 0;
}

static const char summary[] =
    "Train a small tensor-parallel GPT on a synthetic next-token task and print the loss\n"
    "and the compute/communication split per step.";

static const char description[] =
    "--compare-tp K trains again on the first K ranks (K <= N, e.g. 1) and compares the\n"
    "loss curves (exit 1 beyond --tol: |a - b| <= X (1 + |b|)) and the tensors. --compare-tp\n"
    "T1,T2,... trains at each T (on the first T ranks; --tp defaults to the largest) and\n"
    "compares every run with the first: the loss curves, and per step (--compare-steps)\n"
    "the loss, logits and every gradient in ULPs next to the reduction-order bound (exit 1\n"
    "beyond it).\n"
    "--dtype f32, bf16 or f16 sets every weight, gradient and activation (f32 accumulation,\n"
    "f32 master weights and optimizer state). --compare-dtype D trains again at the same T\n"
    "in D and compares the loss curves: exit 1 when |a - b| > --dtype-tol (1 + |b|); the\n"
    "default tolerance is 16 u of the lower precision (u = 2^-8 bf16, 2^-11 f16;\n"
    "docs/determinism.md). f16 uses a dynamic loss scale from 65536 unless --loss-scale X:\n"
    "halved on overflow (the step is skipped), doubled after 2000 good steps.\n"
    "--heads A need not divide by T (ranks hold ceil(A/T) or floor(A/T)); --head-dim\n"
    "defaults to hidden/heads rounded up; Q/K/V are heads*D wide.\n"
    "--save-npy DIR: after the first forward+backward (or step --save-npy-step K + 1, the\n"
    "weights after K optimizer steps), rank 0 writes the full ids, targets, weights,\n"
    "logits, loss and gradients as .npy to DIR, and config.json (every setting that\n"
    "determines them).\n"
    "--dp D: D replicas of the TP model (world = T x D ranks; tp_topology puts TP groups\n"
    "inside nodes, DP across), each on B/D sequences of the global batch --batch B (B\n"
    "must divide by D); gradients averaged over the replicas. --compare-dp trains again\n"
    "with one replica (the first T ranks) on the whole batch and compares the loss curves\n"
    "(exit 1 beyond --tol) and the first --compare-steps steps' tensors.\n";

/* 0: run; 1: --version printed; 2: bad option (message printed). */
static int parse(int *argc, char ***argv, opts *o)
{
    bool ignore_index_given = false;
    const ex_opt table[] = {
        {"tp", "N", "Tensor-parallel degree",
         "TP_WORLD_SIZE, the engine's world size under mpirun, else 1", 1, 1024, .i32 = &o->tp},
        {"compare-tp", "K|T1,T2,...", "Train again at K (or at each T) and compare (see below)",
         NULL, .str = &o->compare},
        {"compare-steps", "N", "Steps whose tensors are compared", NULL, 0, 1000000,
         .i32 = &o->compare_steps},
        {"ulp-bound-scale", "X", "Multiply every ULP bound by X (0: demand bitwise equality)", NULL,
         .flo = 0.0, .fhi = 1e12, .f = &o->bound_scale},
        {"tol", "X", "Loss tolerance for --compare-tp and --compare-dp", NULL, .flo = 0.0,
         .fhi = 1e9, .f = &o->tol},
        {"dtype", "D", "f32, bf16 or f16 (see below)", "f32", .str = &o->dtype_s},
        {"compare-dtype", "D", "Train again at the same T in dtype D and compare (see below)", NULL,
         .str = &o->cmp_dtype_s},
        {"dtype-tol", "X", "Tolerance of --compare-dtype", "16 u of the lower precision",
         .flo = 0.0, .fhi = 1e9, .f = &o->dtype_tol},
        {"loss-scale", "X", "Static loss scale", "f16 dynamic, bf16/f32 none", .flo = 0.0,
         .fhi = 1e30, .f = &o->loss_scale},
        {"vocab", "V", "Vocabulary (need not divide by T, 50257 works)", NULL, 2, INT32_MAX,
         .i64 = &o->vocab},
        {"hidden", "H", "Hidden size", NULL, 1, 1 << 16, .i64 = &o->hidden},
        {"heads", "A", "Attention heads, >= T", NULL, 1, 1 << 12, .i64 = &o->heads},
        {"kv-heads", "G", "KV heads dividing A (GQA; 0 = heads)", NULL, 0, 1 << 12,
         .i64 = &o->kv_heads},
        {"head-dim", "D", "Per-head size", "hidden/heads, rounded up", 0, 1 << 16,
         .i64 = &o->head_dim},
        {"ffn", "F", "MLP size", NULL, 1, 1 << 18, .i64 = &o->ffn},
        {"layers", "L", "Transformer blocks", NULL, 0, 256, .i64 = &o->layers},
        {"seq", "S", "Sequence length", NULL, 2, 1 << 16, .i64 = &o->seq},
        {"batch", "B", "Sequences per step", NULL, 1, 1 << 16, .i64 = &o->batch},
        {"steps", "N", "Training steps", NULL, 1, 1000000, .i32 = &o->steps},
        {"print-every", "K", "Print every K steps", "steps/10", 1, 1000000, .i32 = &o->print_every},
        {"lr", "X", "Learning rate", NULL, .flo = 0.0, .fhi = 10.0, .f = &o->lr},
        {"weight-decay", "X", "AdamW/SGD weight decay", NULL, .flo = 0.0, .fhi = 10.0, .f = &o->wd},
        {"sgd", NULL, "Plain SGD", "AdamW", .flag = &o->sgd},
        {"label-smoothing", "X", "Label smoothing", NULL, .flo = 0.0, .fhi = 1.0,
         .f = &o->smoothing},
        {"ignore-index", "I", "Targets equal to I do not count in the loss",
         "-100 once --ignore-every is given", INT32_MIN, INT32_MAX, .i64 = &o->ignore_index,
         .seen = &ignore_index_given},
        {"ignore-every", "K", "Data: every K-th target (flattened) is the ignore index", "", 2,
         INT32_MAX, .i64 = &o->ignore_every},
        {"untied", NULL, "Separate output projection", "tied to the embedding", .flag = &o->untied},
        {"sequence-parallel", NULL, "Sequence parallelism between the TP regions", "",
         .flag = &o->sp},
        {"overlap", "N",
         "Every block's TP collectives in N token chunks, behind its GEMMs (bitwise the same; "
         "0: off)",
         NULL, 0, TP_OVERLAP_MAX, .i32 = &o->overlap},
        {"rms", NULL, "RMSNorm instead of LayerNorm", "", .flag = &o->rms},
        {"seed", "S", "Weights and data seed", NULL, 0, INT64_MAX, .u64 = &o->seed},
        {"save-npy", "DIR", "Dump the tensors of one step to DIR (see below)", NULL,
         .str = &o->npy_dir},
        {"save-npy-step", "K", "Dump at step K+1: the weights after K optimizer steps", NULL, 0,
         1000000, .i32 = &o->save_step},
        {"dp", "D", "Data parallelism: D replicas of the TP model (see below)", "", 1, 1024,
         .i32 = &o->dp.dp},
        {"dp-bucket-mb", "X", "DP all-reduce bucket size in MiB (PyTorch DDP's)", NULL, .flo = 0.0,
         .fhi = 1e6, .f = &o->dp.bucket_mb},
        {"compare-dp", NULL, "Train again with one replica on the whole batch and compare", "",
         .flag = &o->dp.compare},
        {"dp-inside", NULL,
         "DP groups inside nodes, TP groups across them (the opposite of the rule of thumb; for "
         "measurements)",
         "", .flag = &o->dp.inside},
        {"dp-overlap", NULL,
         "All-reduce each DP bucket as soon as backward has made it (bitwise the same; pick "
         "buckets well below the gradients)",
         "", .flag = &o->dp.overlap},
    };
    int rc = ex_parse_table(argc, argv, PROG, summary, description, table,
                            sizeof table / sizeof table[0]);
    if (rc)
        return rc;
    if (resolve(o, ignore_index_given))
        return 2;
    if (dp_resolve(o))
        return 2;
    if (o->npy_dir && ex_check_out_dir(PROG, o->npy_dir) != 0)
        return 2;
    if (!o->print_every)
        o->print_every = o->steps >= 10 ? o->steps / 10 : 1;
    return 0;
}

/* Elements of parameter p in the full (unsharded) model. */
static int64_t full_numel(const tp_param *p)
{
    return p->ndim == 2 ? p->full_shape[0] * p->full_shape[1] : p->full_shape[0];
}

/* The synthetic batch of `step`: B sequences of S+1 tokens following
 * next = (a cur + b) mod V from a random start; ids are the first S,
 * targets the last S (the next token at every position). */
static void make_batch(const opts *o, int step, int32_t *ids, int32_t *tgt)
{
    int64_t V = o->vocab, a = 1 + (int64_t)(o->seed % 7) * 2, b = 3 + (int64_t)(o->seed % 11);
    if (V % 2 == 0 && a % 2 == 0)
        a++;
    for (int64_t s = 0; s < o->batch; s++) {
        uint64_t seq_id = (uint64_t)step * (uint64_t)o->batch + (uint64_t)s;
        float u = tp_master_uniform(o->seed, 1u << 20, seq_id, 1.0f);
        int64_t cur = (int64_t)((u + 1.0f) * 0.5f * (float)V) % V;
        for (int64_t t = 0; t < o->seq; t++) {
            int64_t next = (a * cur + b) % V;
            ids[s * o->seq + t] = (int32_t)cur;
            tgt[s * o->seq + t] = (int32_t)next;
            cur = next;
        }
    }
    if (o->ignore_every > 0) /* every K-th target of the flattened batch */
        for (int64_t t = o->ignore_every - 1; t < o->batch * o->seq; t += o->ignore_every)
            tgt[t] = (int32_t)o->ignore_index;
}

/* config.json: every setting that determines the dumped tensors. */
static int write_config(const opts *o, int T, int step)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", o->npy_dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "error: cannot write %s: %s\n", path, strerror(errno));
        return 1;
    }
    tp_optim_config oc = tp_optim_defaults(o->sgd ? TP_OPTIM_SGD : TP_OPTIM_ADAMW);
    char ign[32] = "null";
    if (o->use_ignore)
        snprintf(ign, sizeof ign, "%lld", (long long)o->ignore_index);
    fprintf(f,
            "{\n  \"T\": %d,\n  \"seed\": %llu,\n  \"vocab\": %lld,\n  \"hidden\": %lld,\n"
            "  \"heads\": %lld,\n  \"kv_heads\": %lld,\n  \"head_dim\": %lld,\n"
            "  \"ffn\": %lld,\n  \"layers\": %lld,\n  \"seq\": %lld,\n  \"seq_len\": %lld,\n"
            "  \"batch\": %lld,\n  \"norm\": \"%s\",\n  \"norm_eps\": 1e-05,\n"
            "  \"gelu\": \"erf\",\n  \"bias\": true,\n  \"causal\": true,\n"
            "  \"sequence_parallel\": %s,\n  \"tied\": %s,\n  \"label_smoothing\": %.9g,\n"
            "  \"ignore_index\": %s,\n  \"ignore_every\": %lld,\n  \"loss\": \"mean\",\n"
            "  \"dtype\": \"%s\",\n  \"optimizer\": \"%s\",\n  \"lr\": %.9g,\n"
            "  \"weight_decay\": %.9g,\n  \"betas\": [%.9g, %.9g],\n  \"eps\": %.9g,\n"
            "  \"momentum\": %.9g,\n  \"emb_bound\": 0.1,\n  \"step\": %d,\n"
            "  \"data\": \"next = (a cur + b) mod vocab, tp_transformer make_batch\"\n}\n",
            T, (unsigned long long)o->seed, (long long)o->vocab, (long long)o->hidden,
            (long long)o->heads, (long long)(o->kv_heads ? o->kv_heads : o->heads),
            (long long)o->head_dim, (long long)o->ffn, (long long)o->layers, (long long)o->seq,
            (long long)o->seq, (long long)o->batch, o->rms ? "rms" : "layernorm",
            o->sp ? "true" : "false", o->untied ? "false" : "true", o->smoothing, ign,
            (long long)o->ignore_every, tp_dtype_name(o->dt), o->sgd ? "sgd" : "adamw", o->lr,
            o->wd, (double)oc.beta1, (double)oc.beta2, (double)oc.eps, (double)oc.momentum, step);
    return fclose(f) != 0;
}

static tp_status save_npy(const opts *o, tp_gpt *m, int rank, int T, const int32_t *ids,
                          const int32_t *tgt, float loss)
{
    int64_t N = o->batch * o->seq;
    const tp_param *ps;
    int np;
    tp_gpt_params(m, &ps, &np);
    tp_status st = TP_OK;
    /* N * vocab fits: the model's own logits [N, vocab / T] were allocated */
    float *logits =
        rank == 0 ? ex_calloc(N * o->vocab, sizeof(float), "the full logits", &st) : NULL;
    if (st != TP_OK)
        return st; /* the other ranks get the backend's error from the collective */
    st = tp_gpt_get_full_logits(m, logits);
    int bad = 0;
    if (st == TP_OK && rank == 0) {
        int64_t sid[2] = {o->batch, o->seq}, sl[2] = {N, o->vocab}, s1[1] = {1};
        bad |= ex_write_npy_i32(o->npy_dir, "ids.npy", ids, 2, sid);
        bad |= ex_write_npy_i32(o->npy_dir, "targets.npy", tgt, 2, sid);
        bad |= ex_write_npy(o->npy_dir, "logits.npy", logits, 2, sl);
        bad |= ex_write_npy(o->npy_dir, "loss.npy", &loss, 1, s1);
    }
    free(logits);
    for (int i = 0; i < np && st == TP_OK; i++) {
        int64_t n = full_numel(&ps[i]);
        float *v = ex_calloc(n, sizeof(float), ps[i].name, &st);
        float *g = ex_calloc(n, sizeof(float), "a full gradient", &st);
        if (st == TP_OK)
            st = tp_gpt_get_full_param(m, i, v, g); /* collective: every rank */
        if (st == TP_OK && rank == 0) {
            char nm[160];
            snprintf(nm, sizeof nm, "%s.npy", ps[i].name);
            bad |= ex_write_npy(o->npy_dir, nm, v, ps[i].ndim, ps[i].full_shape);
            snprintf(nm, sizeof nm, "grad.%s.npy", ps[i].name);
            bad |= ex_write_npy(o->npy_dir, nm, g, ps[i].ndim, ps[i].full_shape);
        }
        free(v), free(g);
    }
    if (st == TP_OK && rank == 0) {
        bad |= write_config(o, T, o->save_step);
        if (bad)
            st = tp_set_error(TP_ERR_IO, "writing .npy files to %s failed", o->npy_dir);
        else
            printf("wrote ids, targets, logits, loss, config.json and %d parameters + gradients "
                   "(<name>.npy, grad.<name>.npy; weights after %d optimizer steps) to %s\n",
                   np, o->save_step, o->npy_dir);
    }
    return st;
}

/* One training run on communicator g: the model, its optimizer, the
 * batch, and the sums over the steps that count for the means. */
typedef struct trainer {
    const opts *o;
    run *R;
    tp_comm *g;
    tp_device *dev;
    tp_dtype dt; /* of this run */
    int which;   /* the run: 0 the first (--tp, or the first listed T), 1.. the others */
    int rank;    /* in g */
    bool talk;   /* world rank 0: prints and records the losses */
    tp_gpt *m;
    tp_optim *opt;
    const tp_param *ps;
    int np;
    tp_tensor ti, tt; /* ids and targets on the device */
    int32_t *ids, *tgt;
    double t_all, sum_gemm, sum_kern, sum_comm; /* steps 2.. (or the only one) */
    /* --dp (tt-dp.c): the DP group (NULL: one replica), its gradient
     * reduction, this replica's rows of the batch and weight, the global
     * batch it is cut from, the TP/DP counters */
    tp_comm *dpc;
    tp_dp *ddp;
    int64_t lb;
    float weight;
    int32_t *gids, *gtgt;
    tt_dp_acc acc;
} trainer;

/* One step's numbers: its loss, wall seconds, and this rank's GEMM, other
 * kernel and communication seconds from the counters. */
typedef struct step_result {
    float loss;
    double dt, gemm, kern, comm;
    tp_stats stats, dstats; /* the TP and (--dp) the DP communicator's */
} step_result;

static void trainer_free(trainer *tr)
{
    tp_tensor_release(&tr->ti), tp_tensor_release(&tr->tt);
    tp_optim_free(tr->opt);
    tp_gpt_free(tr->m);
    free(tr->ids), free(tr->tgt);
    tp_dp_free(tr->ddp);
    free(tr->gids), free(tr->gtgt);
}

/* --dp: the bucketed gradient all-reduce over the DP group and the global
 * batch's buffers. */
static tp_status dp_set_up(trainer *tr)
{
    if (!tr->dpc)
        return TP_OK;
    tp_dp_config c = {.bucket_bytes = (size_t)(tr->o->dp.bucket_mb * 1048576.0)};
    int64_t N = tr->o->batch * tr->o->seq;
    tp_status st = TP_OK;
    tr->gids = ex_calloc(N, sizeof(int32_t), "the global batch's ids", &st);
    tr->gtgt = ex_calloc(N, sizeof(int32_t), "the global batch's targets", &st);
    EX_TRY(st);
    EX_TRY(tp_dp_create(tr->dpc, &c, tr->ps, tr->np, &tr->ddp));
    return tt_dp_attach(&tr->o->dp, tr->m, tr->ddp);
}

/* Step s's batch: the whole one, or (--dp) this replica's slice of the
 * global batch (tt-dp.c) and its weight. */
static void dp_batch(trainer *tr, int s)
{
    const opts *o = tr->o;
    if (!tr->dpc) {
        make_batch(o, s, tr->ids, tr->tgt);
        return;
    }
    int64_t n = tr->lb * o->seq, d = tp_comm_rank(tr->dpc);
    make_batch(o, s, tr->gids, tr->gtgt);
    memcpy(tr->ids, tr->gids + d * n, sizeof(int32_t) * (size_t)n);
    memcpy(tr->tgt, tr->gtgt + d * n, sizeof(int32_t) * (size_t)n);
    tr->weight = tt_dp_weight(tr->gtgt, o->batch * o->seq, tp_comm_size(tr->dpc), (int)d,
                              o->use_ignore, (int32_t)o->ignore_index);
}

/* --dp, after backward: every gradient averaged over the replicas (the
 * copies of shared KV heads then made bitwise alike across TP ranks), the
 * loss the global batch's mean. */
static tp_status dp_reduce(trainer *tr, float *loss)
{
    if (!tr->ddp)
        return TP_OK;
    EX_TRY(tp_dp_all_reduce_grads(tr->ddp, tr->weight));
    EX_TRY(tp_gpt_finalize_grads(tr->m));
    return tp_dp_sum(tr->ddp, tr->weight * *loss, loss);
}

/* The model (from the seed, this rank's shards), its optimizer and the
 * batch buffers. */
static tp_status set_up(trainer *tr)
{
    const opts *o = tr->o;
    int64_t N = tr->lb * o->seq;
    tp_status st = TP_OK;
    tr->ids = ex_calloc(N, sizeof(int32_t), "the input ids", &st);
    tr->tgt = ex_calloc(N, sizeof(int32_t), "the targets", &st);
    EX_TRY(st);
    tp_gpt_config cfg = {.vocab = o->vocab,
                         .hidden = o->hidden,
                         .heads = o->heads,
                         .kv_heads = o->kv_heads,
                         .head_dim = o->head_dim,
                         .ffn = o->ffn,
                         .layers = o->layers,
                         .seq = o->seq,
                         .tied = !o->untied,
                         .sequence_parallel = o->sp,
                         .bias = true,
                         .rms = o->rms,
                         .label_smoothing = (float)o->smoothing,
                         .use_ignore_index = o->use_ignore,
                         .ignore_index = (int32_t)o->ignore_index,
                         .seed = o->seed,
                         .dtype = tr->dt,
                         .overlap = o->overlap};
    EX_TRY(tp_gpt_create(tr->g, &cfg, &tr->m));
    tp_gpt_params(tr->m, &tr->ps, &tr->np);
    tp_optim_config oc = tp_optim_defaults(o->sgd ? TP_OPTIM_SGD : TP_OPTIM_ADAMW);
    oc.lr = (float)o->lr;
    oc.weight_decay = (float)o->wd;
    oc.loss_scale = (float)o->loss_scale;
    if (tr->dt == TP_F16 && o->loss_scale == 0.0) { /* PyTorch GradScaler's defaults */
        oc.loss_scale = 65536.0f;
        oc.dynamic_loss_scale = true;
    }
    EX_TRY(tp_optim_create(tr->g, &oc, tr->ps, tr->np, &tr->opt));
    EX_TRY(tp_tensor_alloc2(tr->dev, TP_I32, tr->lb, o->seq, &tr->ti));
    EX_TRY(tp_tensor_alloc2(tr->dev, TP_I32, tr->lb, o->seq, &tr->tt));
    return dp_set_up(tr);
}

/* The run's configuration, its parameter counts and the step table's header. */
static void print_run_header(const trainer *tr)
{
    const opts *o = tr->o;
    int64_t total = 0, local = 0;
    for (int i = 0; i < tr->np; i++) {
        total += full_numel(&tr->ps[i]);
        local += tp_tensor_numel(tr->ps[i].value);
    }
    printf("\n== run %s: T=%d backend=%s device=%s | vocab %lld hidden %lld heads %lld "
           "kv_heads %lld head_dim %lld ffn %lld layers %lld seq %lld batch %lld | %s output, "
           "%s, %s%s, %s\n",
           tr->which ? "compare" : "main", tp_comm_size(tr->g), ex_backend_name(),
           tp_device_name(tr->dev), (long long)o->vocab, (long long)o->hidden, (long long)o->heads,
           (long long)(o->kv_heads ? o->kv_heads : o->heads), (long long)o->head_dim,
           (long long)o->ffn, (long long)o->layers, (long long)o->seq, (long long)o->batch,
           o->untied ? "untied" : "tied", o->sgd ? "SGD" : "AdamW",
           o->rms ? "RMSNorm" : "LayerNorm", o->sp ? ", sequence parallel" : "",
           tp_dtype_name(tr->dt));
    printf("   parameters: %lld in the full model, %lld on rank 0\n", (long long)total,
           (long long)local);
    printf("   %5s %9s %8s %8s %8s %8s %6s %9s %9s\n", "step", "loss", "ms", "gemm", "kernels",
           "comm", "comm%", "coll fwd", "coll bwd");
}

/* Rank 0's comparison table, from the first run's parameters. */
static tp_status cmp_set_up(trainer *tr)
{
    run *R = tr->R;
    const opts *o = tr->o;
    tp_status st = TP_OK;
    const char **names = ex_calloc(tr->np, sizeof(char *), "parameter names", &st);
    int64_t *lens = ex_calloc(tr->np, sizeof(int64_t), "parameter sizes", &st);
    EX_TRY(st);
    for (int i = 0; i < tr->np; i++)
        names[i] = tr->ps[i].name, lens[i] = full_numel(&tr->ps[i]);
    R->cmp.shape = (tt_shape){o->vocab, o->hidden, o->heads, o->head_dim,
                              o->ffn,   o->layers, o->seq,   o->batch * o->seq};
    /* The bound counts roundings; a bf16/f16 rounding is 2^(23 - mantissa
     * bits) f32 ULPs (bf16: 2^16, f16: 2^13), the unit the table reports. */
    double unit = tr->dt == TP_BF16 ? 65536.0 : tr->dt == TP_F16 ? 8192.0 : 1.0;
    R->cmp.scale = o->bound_scale * unit;
    if (tt_cmp_init(&R->cmp, o->nruns, o->compare_steps, tr->np, names, lens,
                    o->batch * o->seq * o->vocab))
        st = tp_set_error(TP_ERR_NO_MEMORY, "out of host memory for --compare-tp");
    free(names), free(lens);
    return st;
}

/* --compare-tp: step s's loss, full logits and every full gradient (and at
 * the first step every weight) into rank 0's table. Collective. */
static tp_status compare_step(trainer *tr, int s, float loss)
{
    tt_cmp *c = &tr->R->cmp;
    const opts *o = tr->o;
    if (tr->talk && !c->names)
        EX_TRY(cmp_set_up(tr));
    int64_t mx = o->batch * o->seq * o->vocab;
    for (int i = 0; i < tr->np; i++)
        mx = full_numel(&tr->ps[i]) > mx ? full_numel(&tr->ps[i]) : mx;
    tp_status st = TP_OK;
    float *v = ex_calloc(mx, sizeof(float), "a full tensor", &st);
    float *g = ex_calloc(mx, sizeof(float), "a full gradient", &st);
    int bad = 0;
    if (st == TP_OK && tr->talk)
        bad |= tt_cmp_record(c, tr->which, s, 0, &loss);
    if (st == TP_OK)
        st = tp_gpt_get_full_logits(tr->m, tr->talk || tr->dpc ? v : NULL);
    if (st == TP_OK && tr->dpc) /* the replicas' rows, in order: the global batch's */
        st = tt_dp_gather(tr->dpc, v, tr->lb * o->seq * o->vocab);
    if (st == TP_OK && tr->talk)
        bad |= tt_cmp_record(c, tr->which, s, 1, v);
    for (int i = 0; i < tr->np && st == TP_OK; i++) {
        st = tp_gpt_get_full_param(tr->m, i, s == 0 ? v : NULL, g);
        if (st == TP_OK && tr->talk) {
            bad |= tt_cmp_record(c, tr->which, s, 2 + i, g);
            if (s == 0)
                bad |= tt_cmp_record(c, tr->which, s, 2 + tr->np + i, v);
        }
    }
    free(v), free(g);
    if (st == TP_OK && bad)
        st = tp_set_error(TP_ERR_NO_MEMORY, "out of host memory for --compare-tp");
    return st;
}

/* s -= what the counters of `to` add to those of `from`: the work between
 * two reads taken out of a step's counts. */
static void stats_exclude(tp_stats *s, const tp_stats *from, const tp_stats *to)
{
    for (int ph = 0; ph < TP_PHASE_COUNT; ph++) {
        tp_counter *c[2] = {&s->gemm[ph], &s->kernel[ph]};
        const tp_counter *a[2] = {&from->gemm[ph], &from->kernel[ph]};
        const tp_counter *b[2] = {&to->gemm[ph], &to->kernel[ph]};
        for (int op = 0; op < TP_OP_COUNT + 2; op++) {
            tp_counter *x = op < TP_OP_COUNT ? &s->comm[ph][op] : c[op - TP_OP_COUNT];
            const tp_counter *xa = op < TP_OP_COUNT ? &from->comm[ph][op] : a[op - TP_OP_COUNT];
            const tp_counter *xb = op < TP_OP_COUNT ? &to->comm[ph][op] : b[op - TP_OP_COUNT];
            x->calls -= xb->calls - xa->calls;
            x->bytes -= xb->bytes - xa->bytes;
            x->seconds -= xb->seconds - xa->seconds;
            x->wait_seconds -= xb->wait_seconds - xa->wait_seconds;
        }
        s->gemm_flops[ph] -= to->gemm_flops[ph] - from->gemm_flops[ph];
        for (int op = 0; op < TP_OP_COUNT; op++) {
            tp_icounter *x = &s->icomm[ph][op];
            const tp_icounter *xa = &from->icomm[ph][op], *xb = &to->icomm[ph][op];
            x->calls -= xb->calls - xa->calls;
            x->bytes -= xb->bytes - xa->bytes;
            x->issue_seconds -= xb->issue_seconds - xa->issue_seconds;
            x->seconds -= xb->seconds - xa->seconds;
            x->wait_seconds -= xb->wait_seconds - xa->wait_seconds;
            x->exposed_seconds -= xb->exposed_seconds - xa->exposed_seconds;
        }
    }
}

/* The --save-npy dump and the --compare-tp/-dp records of step s: not part
 * of the step, so neither timed nor counted (their gathers of full tensors
 * would otherwise dominate a short run's numbers). *spent: their time;
 * x[0..1] the TP group's counters before and after them, x[2..3] the DP
 * group's. False when there were none. */
static bool step_extras(trainer *tr, int s, float loss, double *spent, tp_stats x[4], tp_status *st)
{
    const opts *o = tr->o;
    bool save = s == o->save_step && o->npy_dir && tr->which == 0;
    bool cmp = o->nruns > 1 && s < o->compare_steps;
    *spent = 0;
    *st = TP_OK;
    if (!save && !cmp)
        return false;
    *st = tp_dev_synchronize(tr->dev);
    double t0 = ex_now();
    tp_stats_get(tr->g, &x[0]);
    if (tr->dpc)
        tp_stats_get(tr->dpc, &x[2]);
    if (*st == TP_OK && save)
        *st = save_npy(o, tr->m, tr->rank, tp_comm_size(tr->g), tr->ids, tr->tgt, loss);
    if (*st == TP_OK && cmp)
        *st = compare_step(tr, s, loss);
    if (*st == TP_OK)
        *st = tp_dev_synchronize(tr->dev);
    *spent = ex_now() - t0;
    tp_stats_get(tr->g, &x[1]);
    if (tr->dpc)
        tp_stats_get(tr->dpc, &x[3]);
    return true;
}

/* Step s: its batch, forward, backward, DP reduction, optimizer step;
 * timed and counted (the --save-npy dump and --compare records between
 * the last two are not). */
static tp_status train_step(trainer *tr, int s, step_result *r)
{
    const opts *o = tr->o;
    dp_batch(tr, s);
    EX_TRY(tp_tensor_upload(&tr->ti, tr->ids));
    EX_TRY(tp_tensor_upload(&tr->tt, tr->tgt));
    tp_stats_reset(tr->g);
    if (tr->dpc)
        tp_stats_reset(tr->dpc);
    double t0 = ex_now();
    r->loss = 0;
    EX_TRY(tp_optim_zero_grad(tr->opt));
    EX_TRY(tp_gpt_forward(tr->m, &tr->ti, &tr->tt, &r->loss));
    EX_TRY(tt_dp_begin(&o->dp, tr->ddp, tr->weight));
    EX_TRY(tp_gpt_backward_scaled(tr->m, tp_optim_loss_scale(tr->opt)));
    EX_TRY(dp_reduce(tr, &r->loss));
    tp_stats x[4];
    double spent;
    tp_status st;
    bool extras = step_extras(tr, s, r->loss, &spent, x, &st);
    EX_TRY(st);
    EX_TRY(tp_optim_step(tr->opt));
    EX_TRY(tp_dev_synchronize(tr->dev));
    r->dt = ex_now() - t0 - spent;
    tp_stats_get(tr->g, &r->stats);
    if (tr->dpc)
        tp_stats_get(tr->dpc, &r->dstats);
    if (extras) {
        stats_exclude(&r->stats, &x[0], &x[1]);
        if (tr->dpc)
            stats_exclude(&r->dstats, &x[2], &x[3]);
    }
    r->gemm = r->kern = r->comm = 0;
    for (int ph = 0; ph < TP_PHASE_COUNT; ph++) {
        r->gemm += r->stats.gemm[ph].seconds;
        r->kern += r->stats.kernel[ph].seconds;
        for (int op = 0; op < TP_OP_COUNT; op++)
            r->comm += r->stats.comm[ph][op].seconds;
    }
    return TP_OK;
}

static void print_step(int s, const step_result *r)
{
    double gm = r->gemm, kr = r->kern, cm = r->comm;
    printf("   %5d %9.5f %8.2f %8.2f %8.2f %8.2f %5.1f%% %9llu %9llu\n", s + 1, (double)r->loss,
           1e3 * r->dt, 1e3 * gm, 1e3 * kr, 1e3 * cm,
           gm + kr + cm > 0 ? 100.0 * cm / (gm + kr + cm) : 0.0,
           (unsigned long long)tp_stats_calls(&r->stats, TP_PHASE_FORWARD, TP_OP_COUNT),
           (unsigned long long)tp_stats_calls(&r->stats, TP_PHASE_BACKWARD, TP_OP_COUNT));
}

/* Rank 0's device memory by kind: in use after the last step and the peak
 * during it (the counters of libtp, see tp_stats.mem). */
static void print_memory(const tp_stats *st, const tp_optim *opt)
{
    ex_print_memory(st, "   ", "rank 0, peak during the last step");
    if (tp_optim_skipped(opt) || tp_optim_loss_scale(opt) != 1.0f)
        printf("   loss scale %g, steps skipped for non-finite gradients: %lld\n",
               (double)tp_optim_loss_scale(opt), (long long)tp_optim_skipped(opt));
}

/* The means per step over steps 2.. (rank 0's view); *ms gets the wall. */
static void print_means(const trainer *tr, double *ms)
{
    int steps = tr->o->steps, n = steps > 1 ? steps - 1 : 1;
    double gm = tr->sum_gemm, kr = tr->sum_kern, cm = tr->sum_comm;
    *ms = 1e3 * tr->t_all / n;
    printf("   mean per step (rank 0, steps 2..%d): %.2f ms wall = gemm %.2f + other kernels "
           "%.2f + communication %.2f (%.1f%% of compute+comm; includes waiting for slower "
           "ranks) + host work\n",
           steps, 1e3 * tr->t_all / n, 1e3 * gm / n, 1e3 * kr / n, 1e3 * cm / n,
           gm + kr + cm > 0 ? 100.0 * cm / (gm + kr + cm) : 0.0);
}

/* After training: the TP and DP counters, and (--dp) the check that the
 * replicas are bitwise in sync (tp_dp_check_sync) and a fingerprint of
 * the loss curve and rank 0's parameters (equal across runs: deterministic). */
static tp_status dp_finish(trainer *tr)
{
    if (tr->talk)
        tt_dp_print(&tr->acc, tr->ddp, tr->dpc ? tp_comm_size(tr->dpc) : 1);
    if (!tr->ddp)
        return TP_OK;
    EX_TRY(tp_dp_check_sync(tr->ddp, tr->g));
    if (!tr->talk)
        return TP_OK;
    uint64_t h = tt_fnv(TT_FNV0, tr->R->loss[tr->which], sizeof(float) * (size_t)tr->o->steps);
    for (int i = 0; i < tr->np; i++) {
        size_t b = tp_tensor_bytes(tr->ps[i].value);
        tp_status st = TP_OK;
        void *v = ex_calloc((int64_t)b, 1, "a parameter", &st);
        if (st == TP_OK)
            st = tp_tensor_download(tr->ps[i].value, v);
        if (st == TP_OK)
            h = tt_fnv(h, v, b);
        free(v);
        EX_TRY(st);
    }
    printf("   replicas in sync: every parameter bitwise equal across the DP group, every "
           "replicated one across the TP group\n   fingerprint %016llx (loss curve and rank 0's "
           "parameters, FNV-1a)\n",
           (unsigned long long)h);
    return TP_OK;
}

/* Every step; world rank 0 records the losses and prints the table. */
static tp_status train_steps(trainer *tr, run *R)
{
    const opts *o = tr->o;
    if (tr->talk)
        print_run_header(tr);
    step_result r = {0};
    for (int s = 0; s < o->steps; s++) {
        EX_TRY(train_step(tr, s, &r));
        if (s > 0 || o->steps == 1) { /* the first step allocates: leave it out of the means */
            tr->t_all += r.dt, tr->sum_gemm += r.gemm, tr->sum_kern += r.kern;
            tr->sum_comm += r.comm;
            tt_dp_add(&tr->acc, &r.stats, tr->dpc ? &r.dstats : NULL);
        }
        if (tr->talk) {
            R->loss[tr->which][s] = r.loss;
            if (s % o->print_every == 0 || s == o->steps - 1)
                print_step(s, &r);
        }
    }
    if (tr->talk) {
        print_means(tr, &R->ms[tr->which]);
        print_memory(&r.stats, tr->opt);
    }
    return dp_finish(tr);
}

/* Train on comm g as run `which` (0: the first), with --dp over dpc (NULL:
 * one replica on the whole batch). */
static tp_status train(run *R, tp_comm *g, tp_comm *dpc, int which, int wrank)
{
    trainer tr = {.o = &R->o,
                  .R = R,
                  .g = g,
                  .dpc = dpc,
                  .lb = dpc ? R->o.batch / tp_comm_size(dpc) : R->o.batch,
                  .dev = tp_comm_device(g),
                  .dt = which && R->o.cmp_dtype_s ? R->o.cmp_dt : R->o.dt,
                  .which = which,
                  .rank = tp_comm_rank(g),
                  .talk = wrank == 0};
    if (tr.talk) {
        R->Ts[which] = tp_comm_size(g);
        R->dts[which] = tr.dt;
    }
    tp_status st = set_up(&tr);
    if (st == TP_OK)
        st = train_steps(&tr, R);
    trainer_free(&tr);
    return st;
}

/* --dp: D replicas of T ranks (tt_dp_groups), then with --compare-dp one
 * replica (DP rank 0, which holds world rank 0) on the whole batch while
 * the others wait at the barrier. */
static tp_status rank_main_dp(tp_comm *world, run *R)
{
    int wrank = tp_comm_rank(world);
    tp_comm *tp = NULL, *dp = NULL;
    tp_status st = tt_dp_groups(world, &R->o.dp, &tp, &dp);
    if (st == TP_OK)
        st = train(R, tp, dp, 0, wrank);
    if (st == TP_OK && R->o.dp.compare) {
        if (tp_comm_rank(dp) == 0)
            st = train(R, tp, NULL, 1, wrank);
        if (st == TP_OK)
            st = tp_barrier(world);
    }
    tp_comm_free(tp);
    tp_comm_free(dp);
    return st;
}

/* Every run: on the world when its T is the world size, else on the first
 * T ranks (the others wait at the barrier). */
static tp_status rank_main(tp_comm *world, void *arg)
{
    run *R = arg;
    int wrank = tp_comm_rank(world), W = tp_comm_size(world);
    if (wrank == 0)
        R->have_rank0 = true;
    if (R->o.dp.dp)
        return rank_main_dp(world, R);
    tp_status st = TP_OK;
    for (int r = 0; r < R->o.nruns && st == TP_OK; r++) {
        int T = R->o.runs[r] ? R->o.runs[r] : W;
        if (T > W)
            return tp_set_error(TP_ERR_INVALID_ARG,
                                "--compare-tp %s: T=%d is larger than the world size %d (raise "
                                "--tp to %d)",
                                R->o.compare, T, W, T);
        if (T == W) {
            st = train(R, world, NULL, r, wrank);
            continue;
        }
        tp_comm *sub = NULL;
        st = tp_comm_split(world, wrank < T ? 0 : -1, wrank, &sub);
        if (st == TP_OK && sub)
            st = train(R, sub, NULL, r, wrank);
        tp_comm_free(sub);
        if (st == TP_OK)
            st = tp_barrier(world);
    }
    return st;
}

/* The loss-curve tolerance between runs in dtypes a and b (docs/determinism.md,
 * "bf16 and f16"): 16 unit roundoffs of the less precise one, relative to 1 + |loss|. */
static double dtype_tolerance(const opts *o, tp_dtype a, tp_dtype b)
{
    double ua = a == TP_BF16 ? 0x1p-8 : a == TP_F16 ? 0x1p-11 : 0x1p-24;
    double ub = b == TP_BF16 ? 0x1p-8 : b == TP_F16 ? 0x1p-11 : 0x1p-24;
    return o->dtype_tol > 0 ? o->dtype_tol : 16.0 * (ua > ub ? ua : ub);
}

/* World rank 0's process, after the runs: each run's loss curve next to
 * the first's and the largest relative difference; true if within --tol
 * (--compare-dtype: the dtype tolerance). */
static bool compare_loss_curves(const run *R)
{
    const opts *o = &R->o;
    bool ok = true;
    printf("\n== loss curves vs T=%d\n   %5s %11s", R->Ts[0], "step", "first");
    for (int r = 1; r < o->nruns; r++)
        printf("   T=%-3d diff   ", R->Ts[r]);
    printf("\n");
    for (int s = 0; s < o->steps; s++)
        if (s % o->print_every == 0 || s == o->steps - 1) {
            printf("   %5d %11.6f", s + 1, (double)R->loss[0][s]);
            for (int r = 1; r < o->nruns; r++)
                printf(" %11.2e   ", (double)R->loss[r][s] - R->loss[0][s]);
            printf("\n");
        }
    for (int r = 1; r < o->nruns; r++) {
        const float *a = R->loss[0], *b = R->loss[r];
        double worst = 0;
        int at = 0;
        for (int s = 0; s < o->steps; s++) {
            double d = fabs((double)a[s] - b[s]) / (1.0 + fabs((double)a[s]));
            if (d > worst || d != d)
                worst = d != d ? INFINITY : d, at = s;
        }
        double tol = o->cmp_dtype_s ? dtype_tolerance(o, R->dts[0], R->dts[r]) : o->tol;
        bool m = worst <= tol;
        ok = ok && m;
        printf("   T=%d %s vs T=%d %s: max |diff| / (1 + |loss|) = %.2e at step %d -> %s "
               "(tolerance %g); wall per step %.2f ms vs %.2f ms\n",
               R->Ts[r], tp_dtype_name(R->dts[r]), R->Ts[0], tp_dtype_name(R->dts[0]), worst,
               at + 1, m ? "MATCH" : "DIFFER", tol, R->ms[r], R->ms[0]);
    }
    printf("   (%s: see docs/determinism.md)\n", o->cmp_dtype_s
                                                     ? "within the rounding of the lower precision"
                                                     : "equal within f32 rounding, not bitwise");
    return ok;
}

int main(int argc, char **argv)
{
    run R = {.o = DEFAULTS};
    int p = parse(&argc, &argv, &R.o);
    if (p)
        return p == 1 ? 0 : 2;
    tp_status st = TP_OK;
    for (int r = 0; r < R.o.nruns; r++)
        R.loss[r] = ex_calloc(R.o.steps, sizeof(float), "a loss curve", &st);
    if (st == TP_OK)
        st = ex_run(PROG, R.o.tp * (R.o.dp.dp && R.o.tp ? R.o.dp.dp : 1), &argc, &argv, rank_main,
                    &R, NULL);
    else
        fprintf(stderr, "%s: %s: %s\n", PROG, tp_status_string(st), tp_last_error());
    /* only the process holding world rank 0 printed and compares */
    if (st == TP_OK && R.o.nruns > 1 && R.have_rank0) {
        if (R.o.dp.compare)
            printf("\n(--compare-dp: 'first' is D=%d replicas of T ranks on B/D sequences each, "
                   "the other one replica on the whole batch B=%lld)\n",
                   R.o.dp.dp, (long long)R.o.batch);
        bool curves = compare_loss_curves(&R);
        memcpy(R.cmp.Ts, R.Ts, sizeof R.Ts);
        bool tensors = R.o.compare_steps == 0 || tt_cmp_report(&R.cmp);
        R.failed = !curves || !tensors;
    }
    for (int r = 0; r < R.o.nruns; r++)
        free(R.loss[r]);
    tt_cmp_free(&R.cmp);
    if (st != TP_OK)
        return 1;
    return R.failed ? 1 : 0;
}
