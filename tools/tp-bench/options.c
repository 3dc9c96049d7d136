/* SPDX-License-Identifier: MIT */
/* options.c — command-line parsing and validation for tp-bench. */
#include "bench.h"

#include <tp/tp-layers.h>

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Which subcommands an option applies to. */
enum {
    C = 1 << BENCH_CMD_COLLECTIVES,
    G = 1 << BENCH_CMD_GEMM,
    L = 1 << BENCH_CMD_LAYER,
    M = 1 << BENCH_CMD_MODEL,
    P = 1 << BENCH_CMD_PLOT,
    ALL = C | G | L | M | P,
    RUN = C | G | L | M, /* subcommands that start tp */
};

enum opt_id {
    O_HELP,
    O_TP,
    O_SWEEP_TP,
    O_BACKEND,
    O_DEVICE,
    O_THREADS,
    O_JSON,
    O_CSV,
    O_QUIET,
    O_OP,
    O_MINB,
    O_MAXB,
    O_STEP,
    O_ITERS,
    O_WARMUP,
    O_CHECK,
    O_RAW,
    O_NO_MEMCPY,
    O_SYMMETRIC,
    O_SIZES,
    O_LAYER,
    O_TOKENS,
    O_HIDDEN,
    O_FFN,
    O_OVERLAP,
    O_DP_BUCKET_KB,
    O_NO_BIAS,
    O_LINK,
    O_PROJECT_TP,
    O_MEASURE_TP,
    O_GFLOPS,
    O_FROM,
    O_OUT,
    O_FIT_MIN,
    O_BACKWARD,
    O_HEADS,
    O_KV_HEADS,
    O_HEAD_DIM,
    O_SEQ,
    O_BATCH,
    O_LAYERS,
    O_VOCAB,
    O_SP,
    O_DTYPE,
    O_GELU_TANH,
    O_SPLIT_WAIT,
    O_VERSION,
    O_COLLECTIVE,
    O_DATATYPE,
    O_AVERAGE,
    O_DP,
    O_DP_INSIDE,
    O_AGG,
};

typedef struct opt_def {
    const char *lng;
    char shrt;
    int has_arg; /* 0 none, 1 required, 2 optional (only as --opt=VAL) */
    int id;
    int mask;
} opt_def;

static const opt_def opt_table[] = {
    {"help", 'h', 0, O_HELP, ALL},
    {"version", 0, 0, O_VERSION, ALL},
    {"tp", 0, 1, O_TP, RUN},
    {"sweep-tp", 0, 1, O_SWEEP_TP, C | L | M},
    {"backend", 0, 1, O_BACKEND, RUN},
    {"device", 0, 1, O_DEVICE, RUN},
    {"threads", 0, 1, O_THREADS, RUN},
    {"json", 0, 1, O_JSON, RUN},
    {"csv", 0, 1, O_CSV, RUN},
    {"quiet", 'q', 0, O_QUIET, ALL},
    {"op", 'o', 1, O_OP, C | M},
    {"collective", 'C', 1, O_COLLECTIVE, C | M},
    {"datatype", 'd', 1, O_DATATYPE, C},
    {"average", 'a', 1, O_AVERAGE, C},
    {"minbytes", 'b', 1, O_MINB, C | M},
    {"maxbytes", 'e', 1, O_MAXB, C | M},
    {"stepfactor", 'f', 1, O_STEP, C | M},
    {"iters", 'n', 1, O_ITERS, RUN},
    {"warmup_iters", 'w', 1, O_WARMUP, RUN},
    {"warmup-iters", 0, 1, O_WARMUP, RUN},
    {"agg_iters", 'm', 1, O_AGG, C},
    {"agg-iters", 0, 1, O_AGG, C},
    {"check", 'c', 2, O_CHECK, C | M},
    {"compare-raw", 0, 0, O_RAW, C},
    {"no-memcpy", 0, 0, O_NO_MEMCPY, C | M},
    {"symmetric", 0, 0, O_SYMMETRIC, C | L},
    {"sizes", 0, 1, O_SIZES, G},
    {"dtype", 0, 1, O_DTYPE, G | L},
    {"layer", 0, 1, O_LAYER, L | M},
    {"tokens", 0, 1, O_TOKENS, L | M},
    {"hidden", 0, 1, O_HIDDEN, L | M},
    {"ffn", 0, 1, O_FFN, L | M},
    {"overlap", 0, 1, O_OVERLAP, L | M},
    {"no-bias", 0, 0, O_NO_BIAS, L | M},
    {"gelu-tanh", 0, 0, O_GELU_TANH, L | M},
    {"backward", 0, 0, O_BACKWARD, L | M},
    {"split-wait", 0, 0, O_SPLIT_WAIT, L | M},
    {"heads", 0, 1, O_HEADS, L | M},
    {"kv-heads", 0, 1, O_KV_HEADS, L | M},
    {"head-dim", 0, 1, O_HEAD_DIM, L | M},
    {"seq", 0, 1, O_SEQ, L | M},
    {"batch", 0, 1, O_BATCH, L | M},
    {"layers", 0, 1, O_LAYERS, L | M},
    {"vocab", 0, 1, O_VOCAB, L | M},
    {"sequence-parallel", 0, 0, O_SP, L | M},
    {"dp", 0, 1, O_DP, L},
    {"dp-inside", 0, 0, O_DP_INSIDE, L},
    {"dp-bucket-kb", 0, 1, O_DP_BUCKET_KB, L},
    {"link", 0, 1, O_LINK, M},
    {"project-tp", 0, 1, O_PROJECT_TP, M},
    {"measure-tp", 0, 1, O_MEASURE_TP, M},
    {"gflops", 0, 1, O_GFLOPS, M},
    {"from", 0, 1, O_FROM, M},
    {"fit-min", 0, 1, O_FIT_MIN, M},
    {"out", 'o', 1, O_OUT, P},
};

static const char *const cmd_names[] = {
    [BENCH_CMD_NONE] = "",       [BENCH_CMD_COLLECTIVES] = "collectives",
    [BENCH_CMD_GEMM] = "gemm",   [BENCH_CMD_LAYER] = "layer",
    [BENCH_CMD_MODEL] = "model", [BENCH_CMD_PLOT] = "plot",
    [BENCH_CMD_HELP] = "help",
};

void bench_opts_init(bench_opts *o)
{
    memset(o, 0, sizeof *o);
    o->op_mask = BENCH_OP_MASK_ALL;
    o->check = true; /* like nccl-tests: -c 0 turns it off */
    o->coll_dtype = TP_F32;
    o->redop = TP_SUM;
    o->average = BENCH_AVG_MAX;
    o->minbytes = 8;
    o->maxbytes = BENCH_DEFAULT_MAXBYTES;
    o->stepfactor = 2.0;
    o->iters = -1;
    o->warmup = -1;
    o->agg = 1;
    o->gemm_sizes[0] = 1024;
    o->gemm_sizes[1] = 2048;
    o->n_gemm_sizes = 2;
    o->layer = "mlp";
    o->tokens = 2048;
    o->hidden = 1024;
    o->ffn = 4096;
    o->bias = true;
    o->project_tp[0] = 2;
    o->project_tp[1] = 4;
    o->project_tp[2] = 8;
    o->n_project_tp = 3;
    o->measure_tp[0] = 2;
    o->measure_tp[1] = 4;
    o->n_measure_tp = 2;
    o->heads = 16;
    o->layers = 2;
    o->vocab = 4096;
}

int bench_parse_size(const char *s, size_t *out)
{
    if (!s || !*s)
        return -1;
    while (isspace((unsigned char)*s))
        s++;
    if (*s == '-' || *s == '+')
        return -1;
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (end == s || errno || !isfinite(v) || v < 0)
        return -1;
    double mult = 1;
    switch (toupper((unsigned char)*end)) {
        case 'K':
            mult = 1024.0;
            end++;
            break;
        case 'M':
            mult = 1024.0 * 1024;
            end++;
            break;
        case 'G':
            mult = 1024.0 * 1024 * 1024;
            end++;
            break;
        case 'T':
            mult = 1024.0 * 1024 * 1024 * 1024;
            end++;
            break;
        default: break;
    }
    if (mult > 1 && (*end == 'i' || *end == 'I'))
        end++;
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end != '\0')
        return -1;
    double bytes = v * mult;
    if (bytes < 1 || bytes > 1e18 || bytes != floor(bytes))
        return -1;
    *out = (size_t)bytes;
    return 0;
}

const char *bench_format_size(size_t bytes, char *buf, size_t len)
{
    static const char units[] = "KMGT";
    double v = (double)bytes;
    int u = -1;
    while (v >= 1024.0 && u < 3 && fmod(v, 1024.0) == 0.0) {
        v /= 1024.0;
        u++;
    }
    if (u < 0)
        snprintf(buf, len, "%zu", bytes);
    else
        snprintf(buf, len, "%.0f%c", v, units[u]);
    return buf;
}

static int parse_int64(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    if (!s || !*s)
        return -1;
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int bench_parse_int_list(const char *s, int lo, int hi, int *out, int max)
{
    if (!s || !*s)
        return -1;
    int n = 0;
    const char *p = s;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char tmp[32];
        if (len == 0 || len >= sizeof tmp || n >= max)
            return -1;
        memcpy(tmp, p, len);
        tmp[len] = '\0';
        int64_t v;
        if (parse_int64(tmp, lo, hi, &v) != 0)
            return -1;
        out[n++] = (int)v;
        if (!comma)
            break;
        p = comma + 1;
    }
    return n;
}

int bench_parse_link(const char *s, bench_link *out, char *err, size_t errlen)
{
    static const char *const want =
        "expected NAME:GBps:us, e.g. --link myib:25:2.5 (bandwidth per direction in GB/s, per-step "
        "latency in microseconds)";
    if (!s)
        return bench_fail(err, errlen, "--link needs a value: %s", want);
    const char *c1 = strchr(s, ':');
    const char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    if (!c1 || !c2 || strchr(c2 + 1, ':'))
        return bench_fail(err, errlen, "malformed --link '%s': %s", s, want);
    size_t nlen = (size_t)(c1 - s);
    if (nlen == 0 || nlen >= sizeof out->name)
        return bench_fail(err, errlen, "malformed --link '%s': name must be 1..%zu characters; %s",
                          s, sizeof out->name - 1, want);
    for (size_t i = 0; i < nlen; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!isalnum(ch) && ch != '-' && ch != '_' && ch != '.')
            return bench_fail(err, errlen,
                              "malformed --link '%s': name may use letters, digits, '-', '_', '.'",
                              s);
    }
    char num[64];
    size_t blen = (size_t)(c2 - c1 - 1);
    if (blen == 0 || blen >= sizeof num)
        return bench_fail(err, errlen, "malformed --link '%s': missing bandwidth; %s", s, want);
    memcpy(num, c1 + 1, blen);
    num[blen] = '\0';
    char *end;
    errno = 0;
    double gbps = strtod(num, &end);
    if (*end || errno || !isfinite(gbps) || !(gbps > 0))
        return bench_fail(err, errlen,
                          "malformed --link '%s': bandwidth '%s' is not a number > 0; %s", s, num,
                          want);
    const char *lat = c2 + 1;
    errno = 0;
    double us = strtod(lat, &end);
    if (!*lat || *end || errno || !isfinite(us) || us < 0)
        return bench_fail(err, errlen,
                          "malformed --link '%s': latency '%s' is not a number >= 0; %s", s, lat,
                          want);
    memset(out, 0, sizeof *out);
    memcpy(out->name, s, nlen);
    out->gbps = gbps;
    out->alpha_us = us;
    return 0;
}

static const opt_def *find_long(const char *name, size_t len)
{
    for (size_t i = 0; i < G_N_ELEMENTS(opt_table); i++)
        if (strlen(opt_table[i].lng) == len && strncmp(opt_table[i].lng, name, len) == 0)
            return &opt_table[i];
    return NULL;
}

/* The subcommand's own option for -c first (plot's -o is --out, the
 * collectives' --op), else any, which then "does not apply". */
static const opt_def *find_short(char c, bench_cmd cmd)
{
    const opt_def *any = NULL;
    for (size_t i = 0; i < G_N_ELEMENTS(opt_table); i++) {
        if (opt_table[i].shrt != c)
            continue;
        if (opt_table[i].mask & (1 << cmd))
            return &opt_table[i];
        if (!any)
            any = &opt_table[i];
    }
    return any;
}

static bench_cmd cmd_from_name(const char *s)
{
    for (int i = 1; i < (int)G_N_ELEMENTS(cmd_names); i++)
        if (strcmp(cmd_names[i], s) == 0)
            return (bench_cmd)i;
    if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0 || strcmp(s, "--version") == 0)
        return BENCH_CMD_HELP;
    return BENCH_CMD_NONE;
}

/* One option being applied: names for messages, its value, where errors go. */
typedef struct opt_arg {
    const char *cmd, *shown, *val;
    char *err;
    size_t errlen;
} opt_arg;

/* "collectives: bad -n '0': expected iterations >= 1" */
static int bad_value(const opt_arg *a, const char *want)
{
    return bench_fail(a->err, a->errlen, "%s: bad %s '%s': expected %s", a->cmd, a->shown, a->val,
                      want);
}

/* Flags and plain strings: true when id is one of them (nothing can fail). */
static bool apply_plain(bench_opts *o, int id, const char *val)
{
    switch (id) {
        case O_HELP: o->help = true; return true;
        case O_VERSION: o->version = true; return true;
        case O_QUIET: o->quiet = true; return true;
        case O_BACKEND: o->backend = val; return true;
        case O_DEVICE: o->device = val; return true;
        case O_JSON: o->json_path = val; return true;
        case O_CSV: o->csv_path = val; return true;
        case O_OUT: o->out_path = val; return true;
        case O_RAW: o->compare_raw = true; return true;
        case O_NO_MEMCPY: o->no_memcpy = true; return true;
        case O_SYMMETRIC: o->symmetric = true; return true;
        case O_NO_BIAS: o->bias = false; return true;
        case O_GELU_TANH: o->gelu_tanh = true; return true;
        case O_BACKWARD: o->backward = true; return true;
        case O_SPLIT_WAIT: o->split_wait = true; return true;
        case O_LAYER: o->layer = val; return true;
        case O_SP: o->sequence_parallel = true; return true;
        case O_DP_INSIDE: o->dp_inside = true; return true;
        default: return false;
    }
}

/* Options that take one integer: its field, range and what the message
 * says is expected. */
typedef struct int_opt {
    int id;
    size_t off;    /* offsetof(bench_opts, field) */
    bool is_int64; /* the field is int64_t, else int */
    int64_t lo, hi;
    const char *want;
} int_opt;

#define INT_OPT(id, field, lo, hi, want)                                                           \
    {                                                                                              \
        id, offsetof(bench_opts, field), false, lo, hi, want                                       \
    }
#define I64_OPT(id, field, lo, hi, want)                                                           \
    {                                                                                              \
        id, offsetof(bench_opts, field), true, lo, hi, want                                        \
    }
static const int_opt int_opts[] = {
    INT_OPT(O_TP, tp, 1, BENCH_MAX_TP, "a number of ranks 1.." G_STRINGIFY(BENCH_MAX_TP)),
    INT_OPT(O_THREADS, threads, 1, 1024, "BLAS threads per rank >= 1"),
    INT_OPT(O_ITERS, iters, 1, 1000000, "iterations >= 1"),
    INT_OPT(O_WARMUP, warmup, 0, 1000000, "warm-up iterations >= 0"),
    INT_OPT(O_AGG, agg, 1, 1000000, "collectives per iteration >= 1"),
    I64_OPT(O_HEADS, heads, 1, (int64_t)1 << 31, "a number >= 1"),
    I64_OPT(O_KV_HEADS, kv_heads, 1, (int64_t)1 << 31, "a number >= 1"),
    I64_OPT(O_HEAD_DIM, head_dim, 1, (int64_t)1 << 31, "a number >= 1"),
    I64_OPT(O_SEQ, seq, 1, (int64_t)1 << 31, "a number >= 1"),
    I64_OPT(O_BATCH, batch, 1, (int64_t)1 << 31, "a number >= 1"),
    I64_OPT(O_LAYERS, layers, 1, 1024, "a number >= 1"),
    I64_OPT(O_VOCAB, vocab, 1, (int64_t)1 << 31, "a number >= 1"),
    I64_OPT(O_TOKENS, tokens, 1, (int64_t)1 << 31, "a dimension >= 1"),
    I64_OPT(O_HIDDEN, hidden, 1, (int64_t)1 << 31, "a dimension >= 1"),
    I64_OPT(O_FFN, ffn, 1, (int64_t)1 << 31, "a dimension >= 1"),
    INT_OPT(O_DP, dp, 1, BENCH_MAX_TP, "a number of replicas >= 1"),
    INT_OPT(O_OVERLAP, overlap, 0, TP_OVERLAP_MAX, "a chunk count 0..64 (0, 1: off)"),
    INT_OPT(O_DP_BUCKET_KB, dp_bucket_kb, 1, 1 << 22, "a bucket size in KiB >= 1"),
};
#undef INT_OPT
#undef I64_OPT

static const int_opt *find_int_opt(int id)
{
    for (size_t i = 0; i < G_N_ELEMENTS(int_opts); i++)
        if (int_opts[i].id == id)
            return &int_opts[i];
    return NULL;
}

static int apply_int(bench_opts *o, const int_opt *io, const opt_arg *a)
{
    int64_t v;
    if (parse_int64(a->val, io->lo, io->hi, &v))
        return bad_value(a, io->want);
    char *field = (char *)o + io->off;
    if (io->is_int64)
        *(int64_t *)field = v;
    else
        *(int *)field = (int)v;
    if (io->id == O_TOKENS)
        o->tokens_set = true;
    return 0;
}

/* --sweep-tp, --project-tp, --measure-tp (where 0 alone turns measuring off) */
static int apply_tp_list(bench_opts *o, int id, const opt_arg *a)
{
    int *dst = id == O_SWEEP_TP ? o->sweep_tp : id == O_PROJECT_TP ? o->project_tp : o->measure_tp;
    int *cnt = id == O_SWEEP_TP     ? &o->n_sweep_tp
               : id == O_PROJECT_TP ? &o->n_project_tp
                                    : &o->n_measure_tp;
    int n =
        bench_parse_int_list(a->val, id == O_MEASURE_TP ? 0 : 1, BENCH_MAX_TP, dst, BENCH_MAX_LIST);
    if (n < 0)
        return bad_value(
            a, "a comma list of rank counts 1.." G_STRINGIFY(BENCH_MAX_TP) ", e.g. 1,2,4");
    if (id == O_MEASURE_TP && n == 1 && dst[0] == 0)
        n = 0;
    *cnt = n;
    return 0;
}

/* -C/--collective LIST (and the old --op LIST): collective names or all. */
static int apply_collectives(bench_opts *o, const opt_arg *a)
{
    unsigned mask = 0;
    gchar **parts = g_strsplit(a->val, ",", -1);
    for (int i = 0; parts[i]; i++) {
        if (strcmp(parts[i], "all") == 0) {
            mask |= BENCH_OP_MASK_ALL;
            continue;
        }
        int op = bench_op_from_name(parts[i]);
        if (op < 0) {
            bench_fail(a->err, a->errlen,
                       "%s: unknown collective '%s' in %s: expected all_reduce, all_gather, "
                       "reduce_scatter, broadcast or all (comma-separated)",
                       a->cmd, parts[i], a->shown);
            g_strfreev(parts);
            return -1;
        }
        mask |= 1u << op;
    }
    g_strfreev(parts);
    if (!mask)
        return bench_fail(a->err, a->errlen, "%s: %s needs at least one collective", a->cmd,
                          a->shown);
    o->op_mask = mask;
    o->op_set = true;
    return 0;
}

/* Whether every comma-separated word of s names a collective (or all):
 * the spelling --op had before it selected the reduction. */
static bool names_collectives(const char *s)
{
    gchar **parts = g_strsplit(s, ",", -1);
    bool all = parts[0] != NULL;
    for (int i = 0; parts[i]; i++)
        if (strcmp(parts[i], "all") != 0 && bench_op_from_name(parts[i]) < 0)
            all = false;
    g_strfreev(parts);
    return all;
}

/* -o/--op: the reduction, as nccl-tests; a collective list is the old
 * meaning, kept with a deprecation note. */
static int apply_redop(bench_opts *o, const opt_arg *a)
{
    if (names_collectives(a->val)) {
        snprintf(o->note, sizeof o->note,
                 "%s %s: selecting collectives with --op is deprecated; use -C/--collective %s "
                 "(--op now selects the reduction: sum, max or min)",
                 a->shown, a->val, a->val);
        return apply_collectives(o, a);
    }
    int op = bench_redop_from_name(a->val);
    if (op < 0)
        return bench_fail(a->err, a->errlen,
                          "%s: unknown op '%s' for %s: expected a reduction sum, max or min "
                          "(collectives are chosen with -C/--collective all_reduce,...)",
                          a->cmd, a->val, a->shown);
    if (o->cmd != BENCH_CMD_COLLECTIVES)
        return bench_fail(a->err, a->errlen,
                          "%s: %s %s: the reduction applies to 'collectives' only (model fits "
                          "sum all-reduces)",
                          a->cmd, a->shown, a->val);
    o->redop = (tp_redop)op;
    return 0;
}

/* -d/--datatype: tp's names or nccl-tests' (float, half, bfloat16, int32). */
static int apply_datatype(bench_opts *o, const opt_arg *a)
{
    int dt = bench_dtype_from_name(a->val);
    if (dt < 0)
        return bad_value(a, "f32 (float), bf16 (bfloat16), f16 (half) or i32 (int32)");
    o->coll_dtype = (tp_dtype)dt;
    return 0;
}

/* -a/--average 0..3: nccl-tests' rank 0, mean, min, max across ranks. */
static int apply_average(bench_opts *o, const opt_arg *a)
{
    int64_t v;
    if (parse_int64(a->val, 0, 3, &v))
        return bad_value(a, "0 (rank 0's time), 1 (mean over ranks), 2 (min) or 3 (max)");
    o->average = (int)v;
    return 0;
}

/* --fit-min, -b, -e */
static int apply_bytes(bench_opts *o, int id, const opt_arg *a)
{
    size_t s;
    if (bench_parse_size(a->val, &s))
        return bench_fail(a->err, a->errlen,
                          "%s: bad size '%s' for %s: expected bytes >= 1 with an optional K/M/G "
                          "suffix, e.g. 8, 64K, 256M",
                          a->cmd, a->val, a->shown);
    if (id == O_FIT_MIN)
        o->fit_min = s;
    else if (id == O_MINB)
        o->minbytes = s;
    else {
        o->maxbytes = s;
        o->maxbytes_set = true;
    }
    return 0;
}

static int apply_gemm_sizes(bench_opts *o, const opt_arg *a)
{
    gchar **parts = g_strsplit(a->val, ",", -1);
    int cnt = 0;
    for (int i = 0; parts[i]; i++) {
        int64_t v;
        if (cnt >= BENCH_MAX_LIST || parse_int64(parts[i], 1, 1 << 16, &v)) {
            bad_value(a, "a comma list of square GEMM sizes 1..65536, e.g. 1024,2048,4096");
            g_strfreev(parts);
            return -1;
        }
        o->gemm_sizes[cnt++] = v;
    }
    g_strfreev(parts);
    if (!cnt)
        return bench_fail(a->err, a->errlen, "%s: %s needs at least one size", a->cmd, a->shown);
    o->n_gemm_sizes = cnt;
    return 0;
}

/* A finite number above `above` (-f: > 1, --gflops: > 0). */
static int parse_real_above(const char *s, double above, double *out)
{
    char *end;
    errno = 0;
    double f = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(f) || !(f > above))
        return -1;
    *out = f;
    return 0;
}

/* -c [N]: nccl-tests' check count; 0 turns checking off, any other count
 * turns it on (every timed iteration is checked). */
static int apply_check(bench_opts *o, const opt_arg *a)
{
    int64_t v = 1;
    if (a->val && parse_int64(a->val, 0, 1000000, &v))
        return bad_value(a, "0 (no check) or a count >= 1 (check every timed iteration)");
    o->check = v != 0;
    return 0;
}

static int apply_dtype(bench_opts *o, const opt_arg *a)
{
    if (strcmp(a->val, "f32") == 0)
        o->gemm_dtype = TP_F32;
    else if (strcmp(a->val, "bf16") == 0)
        o->gemm_dtype = TP_BF16;
    else if (strcmp(a->val, "f16") == 0)
        o->gemm_dtype = TP_F16;
    else
        return bad_value(a, "f32, bf16 or f16");
    return 0;
}

/* Options that append to a list: --from, --link. */
static int apply_append(bench_opts *o, int id, const opt_arg *a)
{
    if (id == O_FROM) {
        if (o->n_from >= BENCH_MAX_LIST)
            return bench_fail(a->err, a->errlen, "%s: too many input files (at most %d)", a->cmd,
                              BENCH_MAX_LIST);
        o->from[o->n_from++] = a->val;
        return 0;
    }
    if (o->n_links >= BENCH_MAX_LIST)
        return bench_fail(a->err, a->errlen, "%s: too many --link options (at most %d)", a->cmd,
                          BENCH_MAX_LIST);
    if (bench_parse_link(a->val, &o->links[o->n_links], a->err, a->errlen))
        return -1;
    o->n_links++;
    return 0;
}

static int apply(bench_opts *o, const opt_def *d, const char *shown, const char *val, char *err,
                 size_t errlen)
{
    const opt_arg a = {cmd_names[o->cmd], shown, val, err, errlen};
    const int_opt *io = find_int_opt(d->id);
    if (apply_plain(o, d->id, val))
        return 0;
    if (io)
        return apply_int(o, io, &a);
    switch (d->id) {
        case O_SWEEP_TP:
        case O_PROJECT_TP:
        case O_MEASURE_TP: return apply_tp_list(o, d->id, &a);
        case O_OP: return apply_redop(o, &a);
        case O_COLLECTIVE: return apply_collectives(o, &a);
        case O_DATATYPE: return apply_datatype(o, &a);
        case O_AVERAGE: return apply_average(o, &a);
        case O_FIT_MIN:
        case O_MINB:
        case O_MAXB: return apply_bytes(o, d->id, &a);
        case O_SIZES: return apply_gemm_sizes(o, &a);
        case O_STEP:
            if (parse_real_above(val, 1.0, &o->stepfactor))
                return bad_value(&a, "a multiplication factor > 1, e.g. 2");
            return 0;
        case O_GFLOPS:
            if (parse_real_above(val, 0.0, &o->gflops))
                return bad_value(&a, "a compute rate in GFLOP/s > 0");
            return 0;
        case O_CHECK: return apply_check(o, &a);
        case O_DTYPE: return apply_dtype(o, &a);
        case O_FROM:
        case O_LINK: return apply_append(o, d->id, &a);
        default: break;
    }
    return bench_fail(err, errlen, "%s: internal error: option %s not handled", a.cmd, shown);
}

/* One "--name", "--name=VAL", "-x" or "-xVAL": its definition, the name
 * messages show, and the value written into it (NULL: none). */
static int lookup_option(const char *cmd, bench_cmd o_cmd, const char *a, const opt_def **d,
                         char *shown, size_t shown_len, const char **val, char *err, size_t errlen)
{
    *val = NULL;
    if (a[1] == '-') {
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        *d = find_long(name, len);
        snprintf(shown, shown_len, "--%.*s", (int)len, name);
        if (!*d)
            return bench_fail(err, errlen, "%s: unknown option '%s' (see tp-bench %s --help)", cmd,
                              shown, cmd);
        if (eq)
            *val = eq + 1;
        return 0;
    }
    *d = find_short(a[1], o_cmd);
    snprintf(shown, shown_len, "-%c", a[1]);
    if (!*d)
        return bench_fail(err, errlen, "%s: unknown option '%s' (see tp-bench %s --help)", cmd,
                          shown, cmd);
    if (a[2] != '\0') {
        if ((*d)->has_arg == 0)
            return bench_fail(err, errlen, "%s: option '%s' takes no value (got '%s')", cmd, shown,
                              a);
        *val = a + 2;
    }
    return 0;
}

static bool is_count(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!g_ascii_isdigit(*s))
            return false;
    return true;
}

/* The option at argv[*i], with its value (inline or the next argument,
 * which *i then skips), applied to o. */
static int parse_option(bench_opts *o, int argc, char **argv, int *i, char *err, size_t errlen)
{
    const char *cmd = cmd_names[o->cmd];
    const opt_def *d;
    const char *val;
    char shown[64];
    if (lookup_option(cmd, o->cmd, argv[*i], &d, shown, sizeof shown, &val, err, errlen))
        return -1;
    bool inline_val = val != NULL;
    if (!(d->mask & (1 << o->cmd)))
        return bench_fail(err, errlen,
                          "%s: option '%s' does not apply to '%s' (see tp-bench %s --help)", cmd,
                          shown, cmd, cmd);
    if (d->has_arg == 0 && inline_val)
        return bench_fail(err, errlen, "%s: option '%s' takes no value", cmd, shown);
    /* nccl-tests style "-c 1" / "-c 0": a following count is the value */
    if (d->has_arg == 2 && !inline_val && *i + 1 < argc && is_count(argv[*i + 1]))
        val = argv[++*i];
    if (d->has_arg == 1 && !inline_val) {
        if (*i + 1 >= argc)
            return bench_fail(err, errlen, "%s: option '%s' needs a value", cmd, shown);
        val = argv[++*i];
    }
    if (d->has_arg == 1 && val && !*val)
        return bench_fail(err, errlen, "%s: option '%s' needs a value, got an empty one", cmd,
                          shown);
    return apply(o, d, shown, val, err, errlen);
}

/* A non-option argument: an input file of plot, an error elsewhere. */
static int positional(bench_opts *o, const char *a, char *err, size_t errlen)
{
    const char *cmd = cmd_names[o->cmd];
    if (o->cmd != BENCH_CMD_PLOT)
        return bench_fail(err, errlen, "%s: unexpected argument '%s' (see tp-bench %s --help)", cmd,
                          a, cmd);
    if (o->n_from >= BENCH_MAX_LIST)
        return bench_fail(err, errlen, "%s: too many input files (at most %d)", cmd,
                          BENCH_MAX_LIST);
    o->from[o->n_from++] = a;
    return 0;
}

/* argv[1]: the subcommand; "help CMD" and --help set o->help. Returns 1
 * when parsing is done (help), 0 to go on, -1 on error. */
static int parse_subcommand(int argc, char **argv, bench_opts *o, char *err, size_t errlen)
{
    if (argc < 2)
        return bench_fail(err, errlen,
                          "missing subcommand: expected collectives, gemm, layer, model or plot "
                          "(see tp-bench --help)");
    o->cmd = cmd_from_name(argv[1]);
    if (o->cmd == BENCH_CMD_NONE)
        return bench_fail(err, errlen,
                          "unknown subcommand '%s': expected collectives, gemm, layer, model or "
                          "plot (see tp-bench --help)",
                          argv[1]);
    if (o->cmd != BENCH_CMD_HELP)
        return 0;
    o->help = true;
    if (strcmp(argv[1], "--version") == 0) {
        o->version = true;
        return 1;
    }
    /* "tp-bench help layer" */
    if (argc > 2) {
        bench_cmd c = cmd_from_name(argv[2]);
        if (c != BENCH_CMD_NONE && c != BENCH_CMD_HELP)
            o->cmd = c;
    }
    return 1;
}

int bench_parse_args(int argc, char **argv, bench_opts *o, char *err, size_t errlen)
{
    bench_opts_init(o);
    o->argc = argc;
    o->argv = argv;
    int sub = parse_subcommand(argc, argv, o, err, errlen);
    if (sub != 0)
        return sub < 0 ? -1 : 0;

    const char *env_tp = getenv("TP_WORLD_SIZE");
    if (env_tp && *env_tp && o->cmd != BENCH_CMD_PLOT) {
        int64_t v;
        if (parse_int64(env_tp, 1, BENCH_MAX_TP, &v))
            return bench_fail(err, errlen, "TP_WORLD_SIZE='%s' is not a number of ranks 1..%d",
                              env_tp, BENCH_MAX_TP);
        o->tp = (int)v;
    }

    bool opts_done = false;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!opts_done && strcmp(a, "--") == 0)
            opts_done = true;
        else if (!opts_done && a[0] == '-' && a[1] != '\0') {
            if (parse_option(o, argc, argv, &i, err, errlen))
                return -1;
        } else if (positional(o, a, err, errlen))
            return -1;
    }
    return bench_xf_resolve(bench_layer_kind(bench_layer_find(o->layer)), o, err, errlen);
}

static int check_split(const bench_opts *o, int T, const char *src, char *err, size_t errlen)
{
    const bench_layer_desc *d = bench_layer_find(o->layer);
    const char *what = "";
    int64_t dim = bench_layer_split_dim(d, o, &what);
    if (T > dim)
        return bench_fail(
            err, errlen,
            "%s: T=%d (from %s) is larger than the dimension the layer '%s' splits (%s = %" PRId64
            "): every rank needs at least one column; use T <= %" PRId64 " or a larger %s",
            cmd_names[o->cmd], T, src, o->layer, what, dim, dim, what);
    return 0;
}

/* The layer and model options: the layer, its DP and overlap settings, and
 * every T against the dimension it splits. */
static int validate_layer(const bench_opts *o, const char *cmd, char *err, size_t errlen)
{
    if (!bench_layer_find(o->layer))
        return bench_fail(err, errlen, "%s: unknown layer '%s': expected one of %s", cmd, o->layer,
                          bench_layer_names());
    const bench_layer_desc *d = bench_layer_find(o->layer);
    if ((o->dp_inside || o->dp_bucket_kb) && o->dp < 2)
        return bench_fail(err, errlen, "%s: %s needs --dp D with D >= 2", cmd,
                          o->dp_inside ? "--dp-inside" : "--dp-bucket-kb");
    if (o->dp > 1 && bench_layer_kind(d) != BENCH_LK_TRANSFORMER)
        return bench_fail(err, errlen,
                          "%s: --dp %d: data parallelism is measured for --layer transformer "
                          "only (got '%s')",
                          cmd, o->dp, o->layer);
    int kind = bench_layer_kind(d);
    if (o->symmetric && kind >= BENCH_LK_ATTENTION)
        return bench_fail(err, errlen,
                          "%s: --symmetric: layer '%s' allocates the tensors it all-reduces "
                          "itself; the bench's own output tensors come from tp_comm_mem_alloc "
                          "for linear-col, linear-row and mlp only",
                          cmd, o->layer);
    if (o->tp && check_split(o, o->tp, "--tp/TP_WORLD_SIZE", err, errlen))
        return -1;
    for (int i = 0; i < o->n_sweep_tp; i++)
        if (check_split(o, o->sweep_tp[i], "--sweep-tp", err, errlen))
            return -1;
    if (o->cmd == BENCH_CMD_MODEL) {
        for (int i = 0; i < o->n_project_tp; i++)
            if (check_split(o, o->project_tp[i], "--project-tp", err, errlen))
                return -1;
        for (int i = 0; i < o->n_measure_tp; i++)
            if (check_split(o, o->measure_tp[i], "--measure-tp", err, errlen))
                return -1;
    }
    return 0;
}

int bench_opts_validate(const bench_opts *o, char *err, size_t errlen)
{
    const char *cmd = cmd_names[o->cmd];
    if (o->help)
        return 0;
    if (o->cmd == BENCH_CMD_COLLECTIVES || o->cmd == BENCH_CMD_MODEL) {
        if (o->minbytes > o->maxbytes)
            return bench_fail(err, errlen,
                              "%s: -b/--minbytes (%zu) is larger than -e/--maxbytes (%zu)", cmd,
                              o->minbytes, o->maxbytes);
        double steps = log((double)o->maxbytes / (double)o->minbytes) / log(o->stepfactor);
        if (steps > 4096)
            return bench_fail(err, errlen,
                              "%s: -f %g from %zu to %zu bytes gives more than 4096 sizes; use a "
                              "larger step factor",
                              cmd, o->stepfactor, o->minbytes, o->maxbytes);
    }
    if (o->compare_raw && (o->coll_dtype != TP_F32 || o->redop != TP_SUM))
        return bench_fail(err, errlen,
                          "%s: --compare-raw times MPI's f32 sum: drop -d %s / -o %s or "
                          "--compare-raw",
                          cmd, bench_dtype_name(o->coll_dtype), bench_redop_name(o->redop));
    if ((o->cmd == BENCH_CMD_LAYER || o->cmd == BENCH_CMD_MODEL) &&
        validate_layer(o, cmd, err, errlen))
        return -1;
    if (o->cmd == BENCH_CMD_PLOT) {
        if (!o->out_path)
            return bench_fail(err, errlen, "plot: missing --out FILE.png");
        if (o->n_from == 0)
            return bench_fail(
                err, errlen,
                "plot: missing input: tp-bench plot RESULTS.jsonl [MORE.jsonl...] --out x.png");
    }
    return 0;
}

/* ------------------------------------------------------------- help */

static const char help_common[] =
    "Common options:\n"
    "  --tp N              ranks (default TP_WORLD_SIZE, else the engine's, e.g. mpirun -n)\n"
    "  --backend NAME      communicator plugin (default TP_BACKEND, else loopback)\n"
    "  --device NAME       device plugin (default TP_DEVICE, else cpu)\n"
    "  --threads N         BLAS threads per rank (default TP_CPU_THREADS, else 1)\n"
    "  -n, --iters N       timed iterations;  -w, --warmup_iters N  untimed ones first\n"
    "  --json FILE         write JSON lines (one record per measurement; see docs/bench.md)\n"
    "  --csv FILE          write CSV (grouped by record kind, one header line per group)\n"
    "  -q, --quiet         no progress line on stderr\n"
    "  -h, --help          this help;  --version  the version and git revision\n"
    "Values go as --opt VALUE or --opt=VALUE (-n5 too). Given twice, an option's last\n"
    "value wins, except --from and --link, which add up.\n"
    "Exit status: 0 ok, 1 a run failed or --check found wrong results, 2 bad arguments.\n";

static const char help_collectives[] =
    "Usage: tp-bench collectives [options]\n"
    "Sweep collectives over sizes, like nccl-tests: columns size count type redop root, then\n"
    "time(us) algbw(GB/s) busbw(GB/s) #wrong out of place and in place (N/A where tp has no\n"
    "such form: reduce_scatter in place; broadcast, which tp runs in place only), then the\n"
    "footer '# Out of bounds values : N OK|FAILED' and '# Avg bus bandwidth    : X'. time is\n"
    "the median over the timed iterations of the time combined over ranks (-a). busbw =\n"
    "algbw x 2(n-1)/n (all_reduce), (n-1)/n (all_gather, reduce_scatter), 1 (broadcast).\n"
    "Also measures, in the same run, memcpy of the same sizes by 1 thread and by T threads\n"
    "concurrently, and prints all_reduce time / T-thread copy time.\n\n"
    "  -C, --collective L  all_reduce,all_gather,reduce_scatter,broadcast or all (default all)\n"
    "  -o, --op OP         the reduction: sum (default), max or min (nccl-tests' -o); the\n"
    "                      old '--op all_reduce,...' still selects collectives (deprecated)\n"
    "  -d, --datatype T    f32 (default; float), bf16 (bfloat16), f16 (half), i32 (int32)\n"
    "  -b, --minbytes S    smallest size (default 8; K/M/G suffixes)\n"
    "  -e, --maxbytes S    largest size (default 64M; nccl-tests' -b and -e both default\n"
    "                      to 32M)\n"
    "  -f, --stepfactor F  size multiplier (default 2)\n"
    "  -c, --check N       check every result against a serial reference (default on,\n"
    "                      as nccl-tests); -c 0 turns it off (#wrong then reads N/A)\n"
    "  -m, --agg_iters N   collectives back to back per timed iteration, time / N\n"
    "                      (default 1: one call between barriers; nccl-tests' -m)\n"
    "  -a, --average N     combine per-rank times: 0 rank 0's, 1 mean, 2 min, 3 max\n"
    "                      (default 3: a collective ends when its last rank does;\n"
    "                      nccl-tests defaults to 1)\n"
    "  --sweep-tp LIST     run at each rank count, e.g. 2,4 (default: --tp)\n"
    "  --no-memcpy         skip the memcpy reference\n"
    "  --symmetric         buffers from tp_comm_mem_alloc (symmetric memory: shm runs\n"
    "                      collectives on them without staging copies)\n"
    "  --compare-raw       also time the engine's own library (MPI builds only; f32 sum)\n"
    "Defaults: -n 20 -w 5 (as nccl-tests).\n\n";

static const char help_gemm[] =
    "Usage: tp-bench gemm [options]\n"
    "Square GEMM C = A B through the device vtable (tp_dev_gemm) and through the BLAS\n"
    "library directly (cblas_sgemm on the cpu device, cublasGemmEx on the cuda device),\n"
    "same buffers, alternating, same run; GFLOP/s, ratio and max |difference|.\n\n"
    "  --sizes LIST        m=n=k sizes (default 1024,2048; add 4096 if you have time)\n"
    "  --dtype T           f32 (default), bf16 or f16, f32 accumulation; cblas_sgemm is\n"
    "                      f32 only, so on the cpu device bf16/f16 run the vtable alone\n"
    "Defaults: -n 5 -w 1, one BLAS thread (--threads).\n\n";

static const char help_layer_head[] =
    "Usage: tp-bench layer --layer NAME [options]\n"
    "Run a TP layer forward through the public API and split its time into GEMM, other\n"
    "compute and communication (from tp_stats), per rank and aggregated; count collectives\n"
    "by op and phase; compare bytes moved with the seed's formula; with --sweep-tp report\n"
    "strong-scaling speedup and efficiency against T=1 measured in the same run.\n\n"
    "  --layer NAME        ";

static const char help_layer_tail[] =
    " (default mlp)\n"
    "  --tokens N          rows of x, batch*sequence (default 2048)\n"
    "  --overlap N         overlap comm with compute in N token chunks (0: off); for\n"
    "                      transformer every block's (tp_gpt_config.overlap)\n"
    "  --symmetric         linear-col, linear-row, mlp: y and dx (the all-reduced\n"
    "                      outputs) from tp_comm_mem_alloc: shm reduces them in place\n"
    "                      on every rank's memory, without staging\n"
    "  --hidden N          hidden size h (default 1024)\n"
    "  --ffn N             MLP inner size (default 4096)\n"
    "  --no-bias           layers without bias\n"
    "  --gelu-tanh         mlp: tanh-approximated GeLU (as Megatron's bias_gelu fusion;\n"
    "                      fused into the GEMM epilogue by cuBLASLt on cuda, bf16/f16)\n"
    "  --dtype T           f32 (default), bf16 or f16 for weights, activations and\n"
    "                      gradients (f32 accumulation; every layer)\n"
    "  --backward          each iteration runs forward then backward (dx and weight\n"
    "                      gradients); both phases are reported\n"
    "  --sweep-tp LIST     e.g. 1,2,4 (default: --tp)\n"
    "  --split-wait        split comm into wait and transfer with a barrier before each\n"
    "                      collective (for ranks on machines with different clocks; adds\n"
    "                      the barrier's latency to comm and counts it as wait). Default:\n"
    "                      entry times on the shared clock (one machine, emulated nodes)\n"
    "attention, block, transformer (always forward + backward):\n"
    "  --batch N, --seq N  tokens = batch x seq (default 4 x 512, or 1 x --tokens)\n"
    "  --heads N           attention heads (default 16); T must divide them\n"
    "  --kv-heads N        KV heads for GQA/MQA (default --heads)\n"
    "  --head-dim N        per-head size (default hidden/heads, which must divide)\n"
    "  --sequence-parallel shard activations along the tokens between TP regions\n"
    "  --layers N, --vocab N  transformer: blocks (default 2), vocabulary (default 4096)\n"
    "  --dp D              transformer: D data-parallel replicas of each T (T x D ranks,\n"
    "                      tp_topology: TP inside nodes, DP across), --batch per replica;\n"
    "                      after backward the gradients are all-reduced over the replicas\n"
    "                      (tp_dp, 25 MiB buckets); reports the DP traffic next to\n"
    "                      2 (D-1)/D x parameter bytes per rank and step\n"
    "  --dp-inside         with --dp: DP groups inside nodes, TP groups across them\n"
    "  --dp-bucket-kb N    with --dp: DP buckets of N KiB; --overlap N >= 2 with --dp\n"
    "                      also all-reduces each as soon as backward has produced it\n"
    "Shapes: linear-col h->ffn (split ffn), linear-row ffn->h (split ffn, input is the\n"
    "shard), mlp h->ffn->h; attention, block (pre-LN GPT block) and transformer (GPT model,\n"
    "one training step: embedding, blocks, tied output, cross-entropy) h -> h. Defaults: -n 5 -w "
    "1.\n\n";

static const char help_model[] =
    "Usage: tp-bench model [options]\n"
    "Fit the alpha-beta (Hockney) model per backend and op from a collectives sweep\n"
    "(ring all_reduce t = 2(p-1)a + 2(p-1)/p n b; all_gather, reduce_scatter (p-1)a +\n"
    "(p-1)/p n b; broadcast ceil(log2 p)a + n b), print a, 1/b and the fit error per size;\n"
    "then project the layer's communication time onto link presets and print measured\n"
    "vs PROJECTED communication % for each T.\n\n"
    "  --from FILE         fit from a collectives JSON-lines file instead of sweeping now\n"
    "                      (repeatable); otherwise sweeps like 'collectives' (default\n"
    "                      -C all_reduce at --sweep-tp, default --tp or 2,4)\n"
    "  --fit-min S         fit only sizes >= S (default: all)\n"
    "  --link NAME:GBps:us add a link (bandwidth per direction, per-step latency);\n"
    "                      presets: nvlink4 (450 GB/s, 3 us), ib-ndr (48 GB/s, 6 us),\n"
    "                      pcie4 (25 GB/s, 5 us)\n"
    "  --layer, --tokens, --hidden, --ffn  the layer to project (default mlp)\n"
    "  --backward          project forward + backward (default forward only)\n"
    "  --split-wait        the measured layer's wait/transfer split by barriers (see layer)\n"
    "  --project-tp LIST   T values to project (default 2,4,8)\n"
    "  --measure-tp LIST   T values also measured here (default 2,4; 0 = none)\n"
    "  --gflops R          assume compute runs at R GFLOP/s per rank instead of the\n"
    "                      T=1 compute time measured here divided by T\n\n";

static const char help_plot[] =
    "Usage: tp-bench plot RESULTS.jsonl [MORE.jsonl ...] --out x.png\n"
    "Draw with gnuplot: busbw vs size per backend/op/ranks (collective records, with the\n"
    "memcpy reference), and communication % vs T per link (model projection records).\n\n"
    "  -o, --out FILE      the PNG to write\n\n";

static const char help_top[] =
    "Usage: tp-bench SUBCOMMAND [options]     (tp-bench SUBCOMMAND --help for details)\n"
    "Measure tensor-parallel layers and collectives on any tp backend.\n\n"
    "  collectives   nccl-tests-like sweep of all_reduce/all_gather/reduce_scatter/broadcast\n"
    "  gemm          GEMM through the device vtable vs direct cblas_sgemm / cuBLAS\n"
    "  layer         a TP layer's GEMM / compute / communication split, strong scaling\n"
    "  model         alpha-beta fit and projection onto NVLink / InfiniBand / PCIe links\n"
    "  plot          PNG from JSON-lines results (gnuplot)\n\n"
    "Backend: TP_BACKEND=loopback (default) | mpi (under mpirun) | ...; TP_WORLD_SIZE or --tp.\n"
    "tp-bench --version prints the version and git revision.\n\n";

/* The layer help names the layers between its head and tail; every
 * subcommand's help but plot's ends with help_common. */
void bench_print_help(FILE *f, bench_cmd cmd)
{
    switch (cmd) {
        case BENCH_CMD_COLLECTIVES: fputs(help_collectives, f); break;
        case BENCH_CMD_GEMM: fputs(help_gemm, f); break;
        case BENCH_CMD_LAYER:
            fputs(help_layer_head, f);
            fputs(bench_layer_names(), f);
            fputs(help_layer_tail, f);
            break;
        case BENCH_CMD_MODEL: fputs(help_model, f); break;
        case BENCH_CMD_PLOT: fputs(help_plot, f); return;
        default: fputs(help_top, f); return;
    }
    fputs(help_common, f);
}
