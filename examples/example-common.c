/* SPDX-License-Identifier: MIT */
/* example-common.c — see example-common.h. */
#include "example-common.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tp-options.h"

bool ex_parse_i64(const char *opt, const char *v, int64_t lo, int64_t hi, int64_t *out,
                  GError **error)
{
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "%s expects an integer in [%" PRId64 ", %" PRId64 "], got '%s'", opt, lo, hi,
                    v);
        return false;
    }
    *out = x;
    return true;
}

bool ex_parse_f(const char *opt, const char *v, double lo, double hi, double *out, GError **error)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !(x >= lo && x <= hi)) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "%s expects a number in [%g, %g], got '%s'", opt, lo, hi, v);
        return false;
    }
    *out = x;
    return true;
}

/* The strings options keep (--save-npy DIR...): reachable until exit. */
static GStringChunk *opt_strings;

/* Give option o (named `name` on the command line) its value. */
static gboolean set_opt(const ex_opt *o, const char *name, const char *value, GError **error)
{
    int64_t v = 0;
    if (o->flag) {
        *o->flag = true;
        return TRUE;
    }
    if (o->str) {
        if (!*value) {
            g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, "%s needs a value", name);
            return FALSE;
        }
        if (!opt_strings)
            opt_strings = g_string_chunk_new(256);
        *o->str = g_string_chunk_insert(opt_strings, value);
        return TRUE;
    }
    if (o->f)
        return ex_parse_f(name, value, o->flo, o->fhi, o->f, error);
    if (!ex_parse_i64(name, value, o->lo, o->hi, &v, error))
        return FALSE;
    if (o->i64)
        *o->i64 = v;
    else if (o->i32)
        *o->i32 = (int)v;
    else
        *o->u64 = (uint64_t)v;
    return TRUE;
}

typedef struct parse_state {
    const ex_opt *opts;
    size_t n;
} parse_state;

/* Every option's GOptionArgFunc: the entry of ps->opts named `name`. */
static gboolean on_option(const gchar *name, const gchar *value, gpointer data, GError **error)
{
    const parse_state *ps = data;
    for (size_t i = 0; i < ps->n; i++) {
        const ex_opt *o = &ps->opts[i];
        if (strcmp(name + 2, o->name) != 0)
            continue;
        if (o->seen)
            *o->seen = true;
        return set_opt(o, name, value, error);
    }
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_UNKNOWN_OPTION, "Unknown option %s", name);
    return FALSE;
}

/* o's line in --help: its help and default (freed by the caller). */
static char *opt_help(const ex_opt *o)
{
    if (o->dflt)
        return *o->dflt ? g_strdup_printf("%s (default: %s)", o->help, o->dflt) : g_strdup(o->help);
    if (o->i64)
        return g_strdup_printf("%s (default %" PRId64 ")", o->help, *o->i64);
    if (o->i32)
        return g_strdup_printf("%s (default %d)", o->help, *o->i32);
    if (o->u64)
        return g_strdup_printf("%s (default %" PRIu64 ")", o->help, *o->u64);
    if (o->f)
        return g_strdup_printf("%s (default %g)", o->help, *o->f);
    return g_strdup(o->help);
}

static const char shared_description[] =
    "An option given twice: the last value wins. --opt=VALUE and --opt VALUE are the same.\n"
    "Exit status: 0 on success, 1 if the run failed or a check did not pass, 2 on bad usage.\n"
    "Environment: TP_BACKEND (loopback, mpi, tcp, ...), TP_DEVICE (cpu, cuda), "
    "TP_WORLD_SIZE.\n";

int ex_parse_table(int *argc, char ***argv, const char *prog, const char *summary,
                   const char *description, const ex_opt *opts, size_t n)
{
    gboolean version = FALSE;
    parse_state ps = {opts, n};
    GOptionEntry *entries = g_new0(GOptionEntry, n + 2);
    char **help = g_new0(char *, n + 1);
    for (size_t i = 0; i < n; i++) {
        help[i] = opt_help(&opts[i]);
        entries[i] = (GOptionEntry){opts[i].name,
                                    0,
                                    opts[i].arg ? 0 : G_OPTION_FLAG_NO_ARG,
                                    G_OPTION_ARG_CALLBACK,
                                    (gpointer)on_option,
                                    help[i],
                                    opts[i].arg};
    }
    entries[n] = (GOptionEntry){
        "version", 'V', 0, G_OPTION_ARG_NONE, &version, "Show the version and git revision", NULL};
    char *desc = g_strconcat(description ? description : "", description ? "\n" : "",
                             shared_description, NULL);
    GOptionContext *ctx = g_option_context_new(NULL);
    GOptionGroup *group = g_option_group_new(NULL, NULL, NULL, &ps, NULL);
    g_option_group_add_entries(group, entries);
    g_option_context_set_main_group(ctx, group);
    g_option_context_set_summary(ctx, summary);
    g_option_context_set_description(ctx, desc);
    int rc = tp_options_parse(prog, ctx, entries, &version, argc, argv);
    if (rc < 0 && *argc > 1)
        rc = tp_options_error(prog, "unexpected argument '%s'; it takes no operands", (*argv)[1]);
    g_option_context_free(ctx);
    g_free(desc);
    g_strfreev(help);
    g_free(entries);
    return rc < 0 ? 0 : rc == 0 ? 1 : rc;
}

tp_status ex_run(const char *prog, int tp, int *argc, char ***argv, tp_rank_fn fn, void *arg,
                 int *world)
{
    tp_config cfg = {.world_size = tp, .argc = argc, .argv = argv};
    tp_ctx *ctx = NULL;
    tp_status st = tp_init(&cfg, &ctx);
    if (st == TP_OK)
        st = tp_run(ctx, fn, arg);
    if (st != TP_OK)
        fprintf(stderr, "%s: %s: %s\n", prog, tp_status_string(st), tp_last_error());
    if (world)
        *world = ctx ? tp_ctx_world_size(ctx) : 0;
    tp_finalize(ctx);
    return st;
}

int ex_parse(int *argc, char ***argv, ex_opts *o, const char *prog, const char *summary,
             const ex_opt *extra, size_t nextra)
{
    const ex_opt common[] = {
        {"tp", "N", "Tensor-parallel degree",
         "TP_WORLD_SIZE, the engine's world size under mpirun, else 1", 1, 1024, .i32 = &o->tp},
        {"tokens", "T", "Rows of the input", NULL, 1, 1 << 24, .i64 = &o->tokens},
        {"hidden", "H", "Hidden size", NULL, 1, 1 << 20, .i64 = &o->hidden},
        {"ffn", "F", "Feed-forward size", NULL, 1, 1 << 22, .i64 = &o->ffn},
        {"seed", "S", "Master weight seed", NULL, 0, INT64_MAX, .u64 = &o->seed},
        {"iters", "N", "Timed forward passes", NULL, 1, 1000000, .i32 = &o->iters},
        {"gelu-tanh", NULL, "Tanh approximation of GeLU", "exact erf", .flag = &o->gelu_tanh},
        {"save-npy", "DIR", "Rank 0 writes the full tensors as float32 .npy files to DIR", NULL,
         .str = &o->npy_dir},
    };
    size_t nc = sizeof common / sizeof common[0];
    ex_opt *all = g_new(ex_opt, nc + nextra);
    memcpy(all, common, sizeof common);
    if (nextra)
        memcpy(all + nc, extra, nextra * sizeof *extra);
    int rc = ex_parse_table(argc, argv, prog, summary, NULL, all, nc + nextra);
    g_free(all);
    if (rc == 0 && o->npy_dir && ex_check_out_dir(prog, o->npy_dir) != 0)
        return 2;
    return rc;
}

static int write_npy(const char *dir, const char *name, const void *data, const char *descr,
                     int ndim, const int64_t *shape);

int ex_write_npy(const char *dir, const char *name, const float *data, int ndim,
                 const int64_t *shape)
{
    return write_npy(dir, name, data, "<f4", ndim, shape);
}

int ex_write_npy_i32(const char *dir, const char *name, const int32_t *data, int ndim,
                     const int64_t *shape)
{
    return write_npy(dir, name, data, "<i4", ndim, shape);
}

static int write_npy(const char *dir, const char *name, const void *data, const char *descr,
                     int ndim, const int64_t *shape)
{
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "error: cannot create directory %s: %s\n", dir, strerror(errno));
        return -1;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    /* header: dict, padded with spaces and ended by '\n' so that
     * magic(6) + version(2) + len(2) + header is a multiple of 64 */
    char dict[256], sh[160] = "";
    size_t off = 0;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        off += (size_t)snprintf(sh + off, sizeof sh - off, "%" PRId64 "%s", shape[i],
                                ndim == 1 ? "," : (i + 1 < ndim ? ", " : ""));
        n *= shape[i];
    }
    int len = snprintf(dict, sizeof dict,
                       "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, sh);
    size_t total = 10 + (size_t)len + 1;
    size_t pad = (64 - total % 64) % 64;
    size_t hlen = (size_t)len + pad + 1;
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "error: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    unsigned char pre[10] = {0x93,
                             'N',
                             'U',
                             'M',
                             'P',
                             'Y',
                             1,
                             0,
                             (unsigned char)(hlen & 0xff),
                             (unsigned char)(hlen >> 8)};
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(dict, 1, (size_t)len, f) == (size_t)len;
    for (size_t i = 0; ok && i < pad; i++)
        ok = fputc(' ', f) != EOF;
    ok = ok && fputc('\n', f) != EOF;
    /* little-endian float32 data; this host is little-endian (x86-64, aarch64) */
    ok = ok && fwrite(data, 4, (size_t)n, f) == (size_t)n; /* f32 and i32: 4 bytes */
    if (fclose(f) != 0)
        ok = 0;
    if (!ok) {
        fprintf(stderr, "error: writing %s failed: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

int ex_check_out_dir(const char *prog, const char *dir)
{
    struct stat sb;
    if (stat(dir, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode)) {
            fprintf(stderr, "%s: --save-npy %s: exists and is not a directory; give a directory\n",
                    prog, dir);
            return -1;
        }
        if (access(dir, W_OK | X_OK) != 0) {
            fprintf(stderr,
                    "%s: --save-npy %s: directory is not writable (%s); give a directory you can "
                    "write to\n",
                    prog, dir, strerror(errno));
            return -1;
        }
        return 0;
    }
    if (errno != ENOENT) {
        fprintf(stderr, "%s: --save-npy %s: %s\n", prog, dir, strerror(errno));
        return -1;
    }
    /* missing: write_npy creates it (one level), so its parent must be writable */
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", dir);
    size_t len = strlen(parent);
    while (len > 1 && parent[len - 1] == '/')
        parent[--len] = 0;
    char *slash = strrchr(parent, '/');
    if (!slash)
        snprintf(parent, sizeof parent, ".");
    else if (slash == parent)
        parent[1] = 0;
    else
        *slash = 0;
    errno = 0;
    if (stat(parent, &sb) != 0 || !S_ISDIR(sb.st_mode) || access(parent, W_OK | X_OK) != 0) {
        fprintf(stderr,
                "%s: --save-npy %s: cannot create it: its parent %s is not a writable directory "
                "(%s); create the parent or give another directory\n",
                prog, dir, parent, errno ? strerror(errno) : "not a directory");
        return -1;
    }
    return 0;
}

void *ex_calloc(int64_t n, size_t size, const char *what, tp_status *st)
{
    if (*st != TP_OK)
        return NULL;
    size_t count = n > 0 ? (size_t)n : 1;
    void *p = calloc(count, size);
    if (!p)
        *st = tp_set_error(TP_ERR_NO_MEMORY, "out of memory for %s (%zu x %zu bytes)", what, count,
                           size);
    return p;
}

const char *ex_backend_name(void)
{
    const char *b = getenv("TP_BACKEND");
    return b ? b : "loopback";
}

double *ex_to_double(const float *a, int64_t n, const char *what, tp_status *st)
{
    double *d = ex_calloc(n, sizeof(double), what, st);
    for (int64_t i = 0; d && i < n; i++)
        d[i] = a[i];
    return d;
}

double ex_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void ex_print_memory(const tp_stats *s, const char *indent, const char *when)
{
    printf("%sdevice memory (%s; MiB in use / peak):", indent, when);
    for (int k = 0; k < TP_USE_COUNT; k++)
        printf(" %s %.3f/%.3f%s", tp_mem_use_name((tp_mem_use)k), s->mem.kind[k].bytes / 1048576.0,
               s->mem.kind[k].peak / 1048576.0, k + 1 < TP_USE_COUNT ? "," : ";");
    printf(" total %.3f/%.3f\n", s->mem.total.bytes / 1048576.0, s->mem.total.peak / 1048576.0);
}

tp_status ex_ref_gemm(int64_t m, int64_t n, int64_t k, const double *a, const double *ea,
                      const double *b, const double *bias, int parts, double *c, double *ec)
{
    double nt = (double)k + parts + 2.0;
    double g = nt * EX_U / (1.0 - nt * EX_U);
    tp_status st = TP_OK;
    double *sa = ex_calloc(2 * n + 1, sizeof(double), "the reference GEMM's row sums", &st);
    if (!sa)
        return st;
    double *prop = sa + n;
    for (int64_t i = 0; i < m; i++) {
        double *s = c + i * n;
        for (int64_t j = 0; j < n; j++) {
            s[j] = bias ? bias[j] : 0.0;
            sa[j] = bias ? fabs(bias[j]) : 0.0;
            prop[j] = 0.0;
        }
        for (int64_t p = 0; p < k; p++) { /* row-wise for cache-friendly access to b */
            double av = a[i * k + p], aa = fabs(av), ae = ea ? ea[i * k + p] : 0.0;
            const double *bp = b + p * n;
            for (int64_t j = 0; j < n; j++) {
                s[j] += av * bp[j];
                sa[j] += (aa + ae) * fabs(bp[j]);
                prop[j] += ae * fabs(bp[j]);
            }
        }
        for (int64_t j = 0; j < n; j++)
            ec[i * n + j] = g * sa[j] + prop[j];
    }
    free(sa);
    return TP_OK;
}
