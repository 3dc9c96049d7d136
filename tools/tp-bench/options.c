/* options.c — command-line parsing and validation for tp-bench. */
#include "bench.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
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
    O_HELP, O_TP, O_SWEEP_TP, O_BACKEND, O_DEVICE, O_THREADS, O_JSON, O_CSV, O_QUIET,
    O_OP, O_MINB, O_MAXB, O_STEP, O_ITERS, O_WARMUP, O_CHECK, O_RAW, O_NO_MEMCPY,
    O_SIZES, O_LAYER, O_TOKENS, O_HIDDEN, O_FFN, O_NO_BIAS, O_LINK, O_PROJECT_TP,
    O_MEASURE_TP, O_GFLOPS, O_FROM, O_OUT, O_FIT_MIN, O_BACKWARD,
    O_HEADS, O_KV_HEADS, O_HEAD_DIM, O_SEQ, O_BATCH, O_LAYERS, O_VOCAB, O_SP,
    O_DTYPE, O_GELU_TANH,
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
    {"tp", 0, 1, O_TP, RUN},
    {"sweep-tp", 0, 1, O_SWEEP_TP, C | L | M},
    {"backend", 0, 1, O_BACKEND, RUN},
    {"device", 0, 1, O_DEVICE, RUN},
    {"threads", 0, 1, O_THREADS, RUN},
    {"json", 0, 1, O_JSON, RUN},
    {"csv", 0, 1, O_CSV, RUN},
    {"quiet", 'q', 0, O_QUIET, ALL},
    {"op", 0, 1, O_OP, C | M},
    {"minbytes", 'b', 1, O_MINB, C | M},
    {"maxbytes", 'e', 1, O_MAXB, C | M},
    {"stepfactor", 'f', 1, O_STEP, C | M},
    {"iters", 'n', 1, O_ITERS, RUN},
    {"warmup_iters", 'w', 1, O_WARMUP, RUN},
    {"warmup-iters", 0, 1, O_WARMUP, RUN},
    {"check", 'c', 2, O_CHECK, C | M},
    {"compare-raw", 0, 0, O_RAW, C},
    {"no-memcpy", 0, 0, O_NO_MEMCPY, C | M},
    {"sizes", 0, 1, O_SIZES, G},
    {"dtype", 0, 1, O_DTYPE, G | L},
    {"layer", 0, 1, O_LAYER, L | M},
    {"tokens", 0, 1, O_TOKENS, L | M},
    {"hidden", 0, 1, O_HIDDEN, L | M},
    {"ffn", 0, 1, O_FFN, L | M},
    {"no-bias", 0, 0, O_NO_BIAS, L | M},
    {"gelu-tanh", 0, 0, O_GELU_TANH, L | M},
    {"backward", 0, 0, O_BACKWARD, L | M},
    {"heads", 0, 1, O_HEADS, L | M},
    {"kv-heads", 0, 1, O_KV_HEADS, L | M},
    {"head-dim", 0, 1, O_HEAD_DIM, L | M},
    {"seq", 0, 1, O_SEQ, L | M},
    {"batch", 0, 1, O_BATCH, L | M},
    {"layers", 0, 1, O_LAYERS, L | M},
    {"vocab", 0, 1, O_VOCAB, L | M},
    {"sequence-parallel", 0, 0, O_SP, L | M},
    {"link", 0, 1, O_LINK, M},
    {"project-tp", 0, 1, O_PROJECT_TP, M},
    {"measure-tp", 0, 1, O_MEASURE_TP, M},
    {"gflops", 0, 1, O_GFLOPS, M},
    {"from", 0, 1, O_FROM, M},
    {"fit-min", 0, 1, O_FIT_MIN, M},
    {"out", 'o', 1, O_OUT, P},
};

static const char *const cmd_names[] = {
    [BENCH_CMD_NONE] = "", [BENCH_CMD_COLLECTIVES] = "collectives", [BENCH_CMD_GEMM] = "gemm",
    [BENCH_CMD_LAYER] = "layer", [BENCH_CMD_MODEL] = "model", [BENCH_CMD_PLOT] = "plot",
    [BENCH_CMD_HELP] = "help",
};

void bench_opts_init(bench_opts *o)
{
    memset(o, 0, sizeof *o);
    o->op_mask = BENCH_OP_MASK_ALL;
    o->minbytes = 8;
    o->maxbytes = BENCH_DEFAULT_MAXBYTES;
    o->stepfactor = 2.0;
    o->iters = -1;
    o->warmup = -1;
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

static int fail(char *err, size_t len, const char *fmt, ...) G_GNUC_PRINTF(3, 4);
static int fail(char *err, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (err && len)
        vsnprintf(err, len, fmt, ap);
    va_end(ap);
    return -1;
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
    case 'K': mult = 1024.0; end++; break;
    case 'M': mult = 1024.0 * 1024; end++; break;
    case 'G': mult = 1024.0 * 1024 * 1024; end++; break;
    case 'T': mult = 1024.0 * 1024 * 1024 * 1024; end++; break;
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
        return fail(err, errlen, "--link needs a value: %s", want);
    const char *c1 = strchr(s, ':');
    const char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    if (!c1 || !c2 || strchr(c2 + 1, ':'))
        return fail(err, errlen, "malformed --link '%s': %s", s, want);
    size_t nlen = (size_t)(c1 - s);
    if (nlen == 0 || nlen >= sizeof out->name)
        return fail(err, errlen, "malformed --link '%s': name must be 1..%zu characters; %s", s,
                    sizeof out->name - 1, want);
    for (size_t i = 0; i < nlen; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!isalnum(ch) && ch != '-' && ch != '_' && ch != '.')
            return fail(err, errlen, "malformed --link '%s': name may use letters, digits, '-', '_', '.'",
                        s);
    }
    char num[64];
    size_t blen = (size_t)(c2 - c1 - 1);
    if (blen == 0 || blen >= sizeof num)
        return fail(err, errlen, "malformed --link '%s': missing bandwidth; %s", s, want);
    memcpy(num, c1 + 1, blen);
    num[blen] = '\0';
    char *end;
    errno = 0;
    double gbps = strtod(num, &end);
    if (*end || errno || !isfinite(gbps) || !(gbps > 0))
        return fail(err, errlen, "malformed --link '%s': bandwidth '%s' is not a number > 0; %s", s,
                    num, want);
    const char *lat = c2 + 1;
    errno = 0;
    double us = strtod(lat, &end);
    if (!*lat || *end || errno || !isfinite(us) || us < 0)
        return fail(err, errlen, "malformed --link '%s': latency '%s' is not a number >= 0; %s", s,
                    lat, want);
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

static const opt_def *find_short(char c)
{
    for (size_t i = 0; i < G_N_ELEMENTS(opt_table); i++)
        if (opt_table[i].shrt == c)
            return &opt_table[i];
    return NULL;
}

static bench_cmd cmd_from_name(const char *s)
{
    for (int i = 1; i < (int)G_N_ELEMENTS(cmd_names); i++)
        if (strcmp(cmd_names[i], s) == 0)
            return (bench_cmd)i;
    if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0)
        return BENCH_CMD_HELP;
    return BENCH_CMD_NONE;
}

static int apply(bench_opts *o, const opt_def *d, const char *shown, const char *val, char *err,
                 size_t errlen)
{
    const char *cmd = cmd_names[o->cmd];
    int64_t v;
    int n;
    switch (d->id) {
    case O_HELP: o->help = true; return 0;
    case O_QUIET: o->quiet = true; return 0;
    case O_TP:
        if (parse_int64(val, 1, BENCH_MAX_TP, &v))
            return fail(err, errlen, "%s: bad %s '%s': expected a number of ranks 1..%d", cmd, shown,
                        val, BENCH_MAX_TP);
        o->tp = (int)v;
        return 0;
    case O_SWEEP_TP:
    case O_PROJECT_TP:
    case O_MEASURE_TP: {
        int *dst = d->id == O_SWEEP_TP ? o->sweep_tp : d->id == O_PROJECT_TP ? o->project_tp : o->measure_tp;
        int *cnt = d->id == O_SWEEP_TP ? &o->n_sweep_tp : d->id == O_PROJECT_TP ? &o->n_project_tp
                                                                                : &o->n_measure_tp;
        n = bench_parse_int_list(val, d->id == O_MEASURE_TP ? 0 : 1, BENCH_MAX_TP, dst, BENCH_MAX_LIST);
        if (n < 0)
            return fail(err, errlen, "%s: bad %s '%s': expected a comma list of rank counts 1..%d, e.g. 1,2,4",
                        cmd, shown, val, BENCH_MAX_TP);
        /* --measure-tp 0 turns measuring off */
        if (d->id == O_MEASURE_TP && n == 1 && dst[0] == 0)
            n = 0;
        *cnt = n;
        return 0;
    }
    case O_BACKEND: o->backend = val; return 0;
    case O_DEVICE: o->device = val; return 0;
    case O_THREADS:
        if (parse_int64(val, 1, 1024, &v))
            return fail(err, errlen, "%s: bad %s '%s': expected BLAS threads per rank >= 1", cmd, shown, val);
        o->threads = (int)v;
        return 0;
    case O_JSON: o->json_path = val; return 0;
    case O_CSV: o->csv_path = val; return 0;
    case O_OUT: o->out_path = val; return 0;
    case O_FROM:
        if (o->n_from >= BENCH_MAX_LIST)
            return fail(err, errlen, "%s: too many input files (at most %d)", cmd, BENCH_MAX_LIST);
        o->from[o->n_from++] = val;
        return 0;
    case O_OP: {
        unsigned mask = 0;
        gchar **parts = g_strsplit(val, ",", -1);
        for (int i = 0; parts[i]; i++) {
            if (strcmp(parts[i], "all") == 0) {
                mask |= BENCH_OP_MASK_ALL;
                continue;
            }
            int op = bench_op_from_name(parts[i]);
            if (op < 0) {
                fail(err, errlen, "%s: unknown op '%s' in %s: expected all_reduce, all_gather, "
                     "reduce_scatter, broadcast or all (comma-separated)", cmd, parts[i], shown);
                g_strfreev(parts);
                return -1;
            }
            mask |= 1u << op;
        }
        g_strfreev(parts);
        if (!mask)
            return fail(err, errlen, "%s: %s needs at least one op", cmd, shown);
        o->op_mask = mask;
        o->op_set = true;
        return 0;
    }
    case O_FIT_MIN:
    case O_MINB:
    case O_MAXB: {
        size_t s;
        if (bench_parse_size(val, &s))
            return fail(err, errlen, "%s: bad size '%s' for %s: expected bytes >= 1 with an optional "
                        "K/M/G suffix, e.g. 8, 64K, 256M", cmd, val, shown);
        if (d->id == O_FIT_MIN)
            o->fit_min = s;
        else if (d->id == O_MINB)
            o->minbytes = s;
        else {
            o->maxbytes = s;
            o->maxbytes_set = true;
        }
        return 0;
    }
    case O_STEP: {
        char *end;
        errno = 0;
        double f = strtod(val, &end);
        if (end == val || *end || errno || !isfinite(f) || !(f > 1.0))
            return fail(err, errlen, "%s: bad %s '%s': expected a multiplication factor > 1, e.g. 2",
                        cmd, shown, val);
        o->stepfactor = f;
        return 0;
    }
    case O_ITERS:
        if (parse_int64(val, 1, 1000000, &v))
            return fail(err, errlen, "%s: bad %s '%s': expected iterations >= 1", cmd, shown, val);
        o->iters = (int)v;
        return 0;
    case O_WARMUP:
        if (parse_int64(val, 0, 1000000, &v))
            return fail(err, errlen, "%s: bad %s '%s': expected warm-up iterations >= 0", cmd, shown, val);
        o->warmup = (int)v;
        return 0;
    case O_CHECK:
        if (!val || strcmp(val, "1") == 0)
            o->check = true;
        else if (strcmp(val, "0") == 0)
            o->check = false;
        else
            return fail(err, errlen, "%s: bad %s '%s': expected 0 or 1", cmd, shown, val);
        return 0;
    case O_RAW: o->compare_raw = true; return 0;
    case O_NO_MEMCPY: o->no_memcpy = true; return 0;
    case O_NO_BIAS: o->bias = false; return 0;
    case O_GELU_TANH: o->gelu_tanh = true; return 0;
    case O_BACKWARD: o->backward = true; return 0;
    case O_SIZES: {
        gchar **parts = g_strsplit(val, ",", -1);
        int cnt = 0;
        for (int i = 0; parts[i]; i++) {
            if (cnt >= BENCH_MAX_LIST || parse_int64(parts[i], 1, 1 << 16, &v)) {
                fail(err, errlen, "%s: bad %s '%s': expected a comma list of square GEMM sizes 1..65536, "
                     "e.g. 1024,2048,4096", cmd, shown, val);
                g_strfreev(parts);
                return -1;
            }
            o->gemm_sizes[cnt++] = v;
        }
        g_strfreev(parts);
        if (!cnt)
            return fail(err, errlen, "%s: %s needs at least one size", cmd, shown);
        o->n_gemm_sizes = cnt;
        return 0;
    }
    case O_DTYPE:
        if (strcmp(val, "f32") == 0)
            o->gemm_dtype = TP_F32;
        else if (strcmp(val, "bf16") == 0)
            o->gemm_dtype = TP_BF16;
        else if (strcmp(val, "f16") == 0)
            o->gemm_dtype = TP_F16;
        else
            return fail(err, errlen, "%s: bad %s '%s': expected f32, bf16 or f16", cmd, shown, val);
        return 0;
    case O_LAYER: o->layer = val; return 0;
    case O_HEADS:
    case O_KV_HEADS:
    case O_HEAD_DIM:
    case O_SEQ:
    case O_BATCH:
    case O_LAYERS:
    case O_VOCAB: {
        int64_t *dst = d->id == O_HEADS ? &o->heads : d->id == O_KV_HEADS ? &o->kv_heads
                     : d->id == O_HEAD_DIM ? &o->head_dim : d->id == O_SEQ ? &o->seq
                     : d->id == O_BATCH ? &o->batch : d->id == O_LAYERS ? &o->layers : &o->vocab;
        if (parse_int64(val, 1, d->id == O_LAYERS ? 1024 : (int64_t)1 << 31, &v))
            return fail(err, errlen, "%s: bad %s '%s': expected a number >= 1", cmd, shown, val);
        *dst = v;
        return 0;
    }
    case O_SP: o->sequence_parallel = true; return 0;
    case O_TOKENS:
    case O_HIDDEN:
    case O_FFN:
        if (parse_int64(val, 1, (int64_t)1 << 31, &v))
            return fail(err, errlen, "%s: bad %s '%s': expected a dimension >= 1", cmd, shown, val);
        if (d->id == O_TOKENS)
            o->tokens = v, o->tokens_set = true;
        else if (d->id == O_HIDDEN)
            o->hidden = v;
        else
            o->ffn = v;
        return 0;
    case O_LINK:
        if (o->n_links >= BENCH_MAX_LIST)
            return fail(err, errlen, "%s: too many --link options (at most %d)", cmd, BENCH_MAX_LIST);
        if (bench_parse_link(val, &o->links[o->n_links], err, errlen))
            return -1;
        o->n_links++;
        return 0;
    case O_GFLOPS: {
        char *end;
        errno = 0;
        double g = strtod(val, &end);
        if (end == val || *end || errno || !isfinite(g) || !(g > 0))
            return fail(err, errlen, "%s: bad %s '%s': expected a compute rate in GFLOP/s > 0", cmd, shown, val);
        o->gflops = g;
        return 0;
    }
    }
    return fail(err, errlen, "%s: internal error: option %s not handled", cmd, shown);
}

int bench_parse_args(int argc, char **argv, bench_opts *o, char *err, size_t errlen)
{
    bench_opts_init(o);
    if (argc < 2)
        return fail(err, errlen, "missing subcommand: expected collectives, gemm, layer, model or plot "
                    "(see tp-bench --help)");
    o->cmd = cmd_from_name(argv[1]);
    if (o->cmd == BENCH_CMD_NONE)
        return fail(err, errlen, "unknown subcommand '%s': expected collectives, gemm, layer, model or "
                    "plot (see tp-bench --help)", argv[1]);
    if (o->cmd == BENCH_CMD_HELP) {
        o->help = true;
        /* "tp-bench help layer" */
        if (argc > 2) {
            bench_cmd c = cmd_from_name(argv[2]);
            if (c != BENCH_CMD_NONE && c != BENCH_CMD_HELP)
                o->cmd = c;
        }
        return 0;
    }
    const char *cmd = cmd_names[o->cmd];
    int mask_bit = 1 << o->cmd;

    const char *env_tp = getenv("TP_WORLD_SIZE");
    if (env_tp && *env_tp && o->cmd != BENCH_CMD_PLOT) {
        int64_t v;
        if (parse_int64(env_tp, 1, BENCH_MAX_TP, &v))
            return fail(err, errlen, "TP_WORLD_SIZE='%s' is not a number of ranks 1..%d", env_tp, BENCH_MAX_TP);
        o->tp = (int)v;
    }

    bool opts_done = false;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const opt_def *d = NULL;
        const char *val = NULL;
        char shown[64];
        bool inline_val = false;
        if (!opts_done && strcmp(a, "--") == 0) {
            opts_done = true;
            continue;
        }
        if (!opts_done && a[0] == '-' && a[1] == '-') {
            const char *name = a + 2;
            const char *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            d = find_long(name, len);
            snprintf(shown, sizeof shown, "--%.*s", (int)len, name);
            if (!d)
                return fail(err, errlen, "%s: unknown option '%s' (see tp-bench %s --help)", cmd, shown, cmd);
            if (eq) {
                val = eq + 1;
                inline_val = true;
            }
        } else if (!opts_done && a[0] == '-' && a[1] != '\0') {
            d = find_short(a[1]);
            snprintf(shown, sizeof shown, "-%c", a[1]);
            if (!d)
                return fail(err, errlen, "%s: unknown option '%s' (see tp-bench %s --help)", cmd, shown, cmd);
            if (a[2] != '\0') {
                if (d->has_arg == 0)
                    return fail(err, errlen, "%s: option '%s' takes no value (got '%s')", cmd, shown, a);
                val = a + 2;
                inline_val = true;
            }
        } else {
            if (o->cmd != BENCH_CMD_PLOT)
                return fail(err, errlen, "%s: unexpected argument '%s' (see tp-bench %s --help)", cmd, a, cmd);
            if (o->n_from >= BENCH_MAX_LIST)
                return fail(err, errlen, "%s: too many input files (at most %d)", cmd, BENCH_MAX_LIST);
            o->from[o->n_from++] = a;
            continue;
        }
        if (!(d->mask & mask_bit))
            return fail(err, errlen, "%s: option '%s' does not apply to '%s' (see tp-bench %s --help)", cmd,
                        shown, cmd, cmd);
        if (d->has_arg == 0 && inline_val)
            return fail(err, errlen, "%s: option '%s' takes no value", cmd, shown);
        /* nccl-tests style "-c 1" / "-c 0" */
        if (d->has_arg == 2 && !inline_val && i + 1 < argc &&
            (strcmp(argv[i + 1], "0") == 0 || strcmp(argv[i + 1], "1") == 0))
            val = argv[++i];
        if (d->has_arg == 1 && !inline_val) {
            if (i + 1 >= argc)
                return fail(err, errlen, "%s: option '%s' needs a value", cmd, shown);
            val = argv[++i];
        }
        if (apply(o, d, shown, val, err, errlen))
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
        return fail(err, errlen, "%s: T=%d (from %s) is larger than the dimension the layer '%s' splits "
                    "(%s = %" PRId64 "): every rank needs at least one column; use T <= %" PRId64
                    " or a larger %s", cmd_names[o->cmd], T, src, o->layer, what, dim, dim, what);
    return 0;
}

int bench_opts_validate(const bench_opts *o, char *err, size_t errlen)
{
    const char *cmd = cmd_names[o->cmd];
    if (o->help)
        return 0;
    if (o->cmd == BENCH_CMD_COLLECTIVES || o->cmd == BENCH_CMD_MODEL) {
        if (o->minbytes > o->maxbytes)
            return fail(err, errlen, "%s: -b/--minbytes (%zu) is larger than -e/--maxbytes (%zu)", cmd,
                        o->minbytes, o->maxbytes);
        double steps = log((double)o->maxbytes / (double)o->minbytes) / log(o->stepfactor);
        if (steps > 4096)
            return fail(err, errlen, "%s: -f %g from %zu to %zu bytes gives more than 4096 sizes; use a "
                        "larger step factor", cmd, o->stepfactor, o->minbytes, o->maxbytes);
    }
    if (o->cmd == BENCH_CMD_LAYER || o->cmd == BENCH_CMD_MODEL) {
        if (!bench_layer_find(o->layer))
            return fail(err, errlen, "%s: unknown layer '%s': expected one of %s", cmd, o->layer,
                        bench_layer_names());
        const bench_layer_desc *d = bench_layer_find(o->layer);
        if (o->gemm_dtype != TP_F32 && bench_layer_is_xf(bench_layer_kind(d)))
            return fail(err, errlen, "%s: --dtype %s: layer '%s' runs in f32 only; bf16/f16 are "
                        "implemented for linear-col, linear-row and mlp (use --dtype f32 or one "
                        "of those layers)", cmd, o->gemm_dtype == TP_BF16 ? "bf16" : "f16", o->layer);
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
    }
    if (o->cmd == BENCH_CMD_PLOT) {
        if (!o->out_path)
            return fail(err, errlen, "plot: missing --out FILE.png");
        if (o->n_from == 0)
            return fail(err, errlen, "plot: missing input: tp-bench plot RESULTS.jsonl [MORE.jsonl...] --out x.png");
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
    "  -h, --help          this help\n"
    "Exit status: 0 ok, 1 a run failed or --check found wrong results, 2 bad arguments.\n";

void bench_print_help(FILE *f, bench_cmd cmd)
{
    switch (cmd) {
    case BENCH_CMD_COLLECTIVES:
        fprintf(f,
                "Usage: tp-bench collectives [options]\n"
                "Sweep collectives over sizes, like nccl-tests: columns size count type redop time(us)\n"
                "algbw(GB/s) busbw(GB/s) #wrong, min/median/max over the timed iterations. busbw =\n"
                "algbw x 2(n-1)/n (all_reduce), (n-1)/n (all_gather, reduce_scatter), 1 (broadcast).\n"
                "Also measures, in the same run, memcpy of the same sizes by 1 thread and by T threads\n"
                "concurrently, and prints all_reduce time / T-thread copy time.\n\n"
                "  --op LIST           all_reduce,all_gather,reduce_scatter,broadcast or all (default all)\n"
                "  -b, --minbytes S    smallest size (default 8; K/M/G suffixes)\n"
                "  -e, --maxbytes S    largest size (default 64M; nccl-tests uses 256M: pass -e 256M)\n"
                "  -f, --stepfactor F  size multiplier (default 2)\n"
                "  -c, --check [0|1]   verify every result against a serial reference, count #wrong\n"
                "  --sweep-tp LIST     run at each rank count, e.g. 2,4 (default: --tp)\n"
                "  --no-memcpy         skip the memcpy reference\n"
                "  --compare-raw       also time the engine's own library (MPI builds only)\n"
                "Defaults: -n 20 -w 5.\n\n");
        break;
    case BENCH_CMD_GEMM:
        fprintf(f,
                "Usage: tp-bench gemm [options]\n"
                "Square GEMM C = A B through the device vtable (tp_dev_gemm) and through the BLAS\n"
                "library directly (cblas_sgemm on the cpu device, cublasGemmEx on the cuda device),\n"
                "same buffers, alternating, same run; GFLOP/s, ratio and max |difference|.\n\n"
                "  --sizes LIST        m=n=k sizes (default 1024,2048; add 4096 if you have time)\n"
                "  --dtype T           f32 (default), bf16 or f16, f32 accumulation; cblas_sgemm is\n"
                "                      f32 only, so on the cpu device bf16/f16 run the vtable alone\n"
                "Defaults: -n 5 -w 1, one BLAS thread (--threads).\n\n");
        break;
    case BENCH_CMD_LAYER:
        fprintf(f,
                "Usage: tp-bench layer --layer NAME [options]\n"
                "Run a TP layer forward through the public API and split its time into GEMM, other\n"
                "compute and communication (from tp_stats), per rank and aggregated; count collectives\n"
                "by op and phase; compare bytes moved with the seed's formula; with --sweep-tp report\n"
                "strong-scaling speedup and efficiency against T=1 measured in the same run.\n\n"
                "  --layer NAME        %s (default mlp)\n"
                "  --tokens N          rows of x, batch*sequence (default 2048)\n"
                "  --hidden N          hidden size h (default 1024)\n"
                "  --ffn N             MLP inner size (default 4096)\n"
                "  --no-bias           layers without bias\n"
                "  --gelu-tanh         mlp: tanh-approximated GeLU (as Megatron's bias_gelu fusion;\n"
                "                      fused into the GEMM epilogue by cuBLASLt on cuda, bf16/f16)\n"
                "  --dtype T           linear-col, linear-row, mlp: f32 (default), bf16 or f16 for\n"
                "                      weights, activations and gradients (f32 accumulation)\n"
                "  --backward          each iteration runs forward then backward (dx and weight\n"
                "                      gradients); both phases are reported\n"
                "  --sweep-tp LIST     e.g. 1,2,4 (default: --tp)\n"
                "attention, block, transformer (always forward + backward):\n"
                "  --batch N, --seq N  tokens = batch x seq (default 4 x 512, or 1 x --tokens)\n"
                "  --heads N           attention heads (default 16); T must divide them\n"
                "  --kv-heads N        KV heads for GQA/MQA (default --heads)\n"
                "  --head-dim N        per-head size (default hidden/heads, which must divide)\n"
                "  --sequence-parallel shard activations along the tokens between TP regions\n"
                "  --layers N, --vocab N  transformer: blocks (default 2), vocabulary (default 4096)\n"
                "Shapes: linear-col h->ffn (split ffn), linear-row ffn->h (split ffn, input is the\n"
                "shard), mlp h->ffn->h; attention, block (pre-LN GPT block) and transformer (GPT model,\n"
                "one training step: embedding, blocks, tied output, cross-entropy) h -> h. Defaults: -n 5 -w 1.\n\n",
                bench_layer_names());
        break;
    case BENCH_CMD_MODEL:
        fprintf(f,
                "Usage: tp-bench model [options]\n"
                "Fit the alpha-beta (Hockney) model per backend and op from a collectives sweep\n"
                "(ring all_reduce t = 2(p-1)a + 2(p-1)/p n b; all_gather, reduce_scatter (p-1)a +\n"
                "(p-1)/p n b; broadcast ceil(log2 p)a + n b), print a, 1/b and the fit error per size;\n"
                "then project the layer's communication time onto link presets and print measured\n"
                "vs PROJECTED communication %% for each T.\n\n"
                "  --from FILE         fit from a collectives JSON-lines file instead of sweeping now\n"
                "                      (repeatable); otherwise sweeps like 'collectives' (default\n"
                "                      --op all_reduce at --sweep-tp, default --tp or 2,4)\n"
                "  --fit-min S         fit only sizes >= S (default: all)\n"
                "  --link NAME:GBps:us add a link (bandwidth per direction, per-step latency);\n"
                "                      presets: nvlink4 (450 GB/s, 3 us), ib-ndr (48 GB/s, 6 us),\n"
                "                      pcie4 (25 GB/s, 5 us)\n"
                "  --layer, --tokens, --hidden, --ffn  the layer to project (default mlp)\n"
                "  --backward          project forward + backward (default forward only)\n"
                "  --project-tp LIST   T values to project (default 2,4,8)\n"
                "  --measure-tp LIST   T values also measured here (default 2,4; 0 = none)\n"
                "  --gflops R          assume compute runs at R GFLOP/s per rank instead of the\n"
                "                      T=1 compute time measured here divided by T\n\n");
        break;
    case BENCH_CMD_PLOT:
        fprintf(f,
                "Usage: tp-bench plot RESULTS.jsonl [MORE.jsonl ...] --out x.png\n"
                "Draw with gnuplot: busbw vs size per backend/op/ranks (collective records, with the\n"
                "memcpy reference), and communication %% vs T per link (model projection records).\n\n"
                "  -o, --out FILE      the PNG to write\n\n");
        return;
    default:
        fprintf(f,
                "Usage: tp-bench SUBCOMMAND [options]     (tp-bench SUBCOMMAND --help for details)\n"
                "Measure tensor-parallel layers and collectives on any tp backend.\n\n"
                "  collectives   nccl-tests-like sweep of all_reduce/all_gather/reduce_scatter/broadcast\n"
                "  gemm          GEMM through the device vtable vs direct cblas_sgemm / cuBLAS\n"
                "  layer         a TP layer's GEMM / compute / communication split, strong scaling\n"
                "  model         alpha-beta fit and projection onto NVLink / InfiniBand / PCIe links\n"
                "  plot          PNG from JSON-lines results (gnuplot)\n\n"
                "Backend: TP_BACKEND=loopback (default) | mpi (under mpirun) | ...; TP_WORLD_SIZE or --tp.\n\n");
        return;
    }
    fputs(help_common, f);
}
