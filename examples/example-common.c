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

static void usage(FILE *f, const char *prog, const char *summary, const ex_opts *d)
{
    fprintf(f,
            "Usage: %s [OPTIONS]\n%s\n\n"
            "Options (every one has a default):\n"
            "  --tp N          tensor-parallel degree (default: TP_WORLD_SIZE, the engine's\n"
            "                  world size under mpirun, else 1)\n"
            "  --tokens T      rows of the input (default %" PRId64 ")\n"
            "  --hidden H      hidden size (default %" PRId64 ")\n"
            "  --ffn F         feed-forward size (default %" PRId64 ")\n"
            "  --seed S        master weight seed (default %" PRIu64 ")\n"
            "  --iters N       timed forward passes (default %d)\n"
            "  --gelu-tanh     tanh approximation of GeLU (default: exact erf)\n"
            "  --save-npy DIR  rank 0 writes the full tensors as float32 .npy files to DIR\n"
            "  --help          this text\n\n"
            "Environment: TP_BACKEND (loopback, mpi, ...), TP_DEVICE (cpu, cuda), TP_WORLD_SIZE.\n",
            prog, summary, d->tokens, d->hidden, d->ffn, d->seed, d->iters);
}

int ex_parse_i64(const char *prog, const char *opt, const char *v, int64_t lo, int64_t hi,
                 int64_t *out)
{
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "%s: %s expects an integer in [%" PRId64 ", %" PRId64 "], got '%s'\n", prog,
                opt, lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

int ex_parse_f(const char *prog, const char *opt, const char *v, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !(x >= lo && x <= hi)) {
        fprintf(stderr, "%s: %s expects a number in [%g, %g], got '%s'\n", prog, opt, lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

int ex_valued_option(const char *prog, int argc, char **argv, int *i, const char *const *valued,
                     size_t nvalued, const char **name, const char **val)
{
    const char *a = argv[*i];
    *name = NULL;
    *val = NULL;
    for (size_t j = 0; j < nvalued; j++) {
        size_t n = strlen(valued[j]);
        if (!strncmp(a, valued[j], n) && (a[n] == 0 || a[n] == '=')) {
            *name = valued[j];
            if (a[n] == '=')
                *val = a + n + 1;
            else if (*i + 1 < argc)
                *val = argv[++*i];
            break;
        }
    }
    if (!*name) {
        fprintf(stderr, "%s: unknown option '%s' (see %s --help)\n", prog, a, prog);
        return 2;
    }
    if (!*val || !**val) {
        fprintf(stderr, "%s: %s needs a value (see %s --help)\n", prog, *name, prog);
        return 2;
    }
    return 0;
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

int ex_parse(int argc, char **argv, ex_opts *o, const char *prog, const char *summary)
{
    ex_opts d = *o;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout, prog, summary, &d);
            return 1;
        }
        if (!strcmp(a, "--gelu-tanh")) {
            o->gelu_tanh = true;
            continue;
        }
        static const char *const valued[] = {"--tp",   "--tokens", "--hidden",  "--ffn",
                                             "--seed", "--iters",  "--save-npy"};
        const char *name, *val;
        if (ex_valued_option(prog, argc, argv, &i, valued, sizeof valued / sizeof valued[0], &name,
                             &val))
            return 2;
        int64_t v = 0;
        int bad = 0;
        if (!strcmp(name, "--tp")) {
            bad = ex_parse_i64(prog, name, val, 1, 1024, &v);
            o->tp = (int)v;
        } else if (!strcmp(name, "--tokens")) {
            bad = ex_parse_i64(prog, name, val, 1, 1 << 24, &o->tokens);
        } else if (!strcmp(name, "--hidden")) {
            bad = ex_parse_i64(prog, name, val, 1, 1 << 20, &o->hidden);
        } else if (!strcmp(name, "--ffn")) {
            bad = ex_parse_i64(prog, name, val, 1, 1 << 22, &o->ffn);
        } else if (!strcmp(name, "--seed")) {
            bad = ex_parse_i64(prog, name, val, 0, INT64_MAX, &v);
            o->seed = (uint64_t)v;
        } else if (!strcmp(name, "--iters")) {
            bad = ex_parse_i64(prog, name, val, 1, 1000000, &v);
            o->iters = (int)v;
        } else if (!strcmp(name, "--save-npy")) {
            o->npy_dir = val;
        }
        if (bad)
            return 2;
    }
    if (o->npy_dir && ex_check_out_dir(prog, o->npy_dir) != 0)
        return 2;
    return 0;
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
