/* SPDX-License-Identifier: MIT */
/* example-common.h — option parsing, .npy output and the serial reference
 * shared by the examples (not part of the library). */
#ifndef TP_EXAMPLE_COMMON_H
#define TP_EXAMPLE_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <glib.h>

#include <tp/tp.h>

typedef struct ex_opts {
    int tp; /* 0: TP_WORLD_SIZE, else the engine's (mpirun -n), else 1 */
    int64_t tokens, hidden, ffn;
    uint64_t seed;
    int iters;
    bool gelu_tanh;
    const char *npy_dir; /* NULL: do not save */
} ex_opts;

/* In a function with a tp_status `status` and a `done:` cleanup label:
 * on failure keep the status and jump there. */
#define EX_CHECK(expr)                                                                             \
    do {                                                                                           \
        tp_status st_ = (expr);                                                                    \
        if (st_ != TP_OK) {                                                                        \
            status = st_;                                                                          \
            goto done;                                                                             \
        }                                                                                          \
    } while (0)

/* In a function returning tp_status: return expr's status unless it is TP_OK. */
#define EX_TRY(expr)                                                                               \
    do {                                                                                           \
        tp_status st_ = (expr);                                                                    \
        if (st_ != TP_OK)                                                                          \
            return st_;                                                                            \
    } while (0)

/* calloc(n, size) (at least one element), or NULL after setting *st to
 * TP_ERR_NO_MEMORY with a message naming `what` and its bytes. Allocations
 * chain: once *st is a failure, it allocates nothing and returns NULL, so a
 * run of them needs one check of *st at the end. */
void *ex_calloc(int64_t n, size_t size, const char *what, tp_status *st);

/* The comm backend's name as the examples print it: TP_BACKEND, else loopback. */
const char *ex_backend_name(void);

/* Parse an integer in [lo, hi] into *out (TRUE), or set *error to "OPT
 * expects an integer in [LO, HI], got 'V'" (FALSE). */
bool ex_parse_i64(const char *opt, const char *v, int64_t lo, int64_t hi, int64_t *out,
                  GError **error);
/* The same for a real number. */
bool ex_parse_f(const char *opt, const char *v, double lo, double hi, double *out, GError **error);

/* One command-line option of an example: a flag (arg NULL) or a value,
 * an integer in [lo, hi], a real in [flo, fhi] or a string. Exactly one
 * destination is set; it holds the default before parsing. */
typedef struct ex_opt {
    const char *name; /* the long name, without "--" */
    const char *arg;  /* the value's name in --help (N, DIR); NULL: a flag */
    const char *help; /* one line */
    const char *dflt; /* NULL: "(default V)" from a number's destination, nothing for
                         others; "": nothing; else "(default: DFLT)" */
    int64_t lo, hi;
    double flo, fhi;
    int64_t *i64;
    int *i32;
    uint64_t *u64;
    double *f;
    const char **str; /* kept for the life of the program */
    bool *flag;
    bool *seen; /* may be NULL: set when the option is given */
} ex_opt;

/* Parse argv with GLib's GOptionContext (tools/tp-options.h: --help,
 * --version, --opt=VALUE, the last of a repeated option wins, errors as
 * "PROG: what (try --help)"); `description` (may be NULL) goes under the
 * options, before the lines every example shares. Returns 0 to run, 1
 * after --version (exit 0), 2 after printing an error (exit 2). */
int ex_parse_table(int *argc, char ***argv, const char *prog, const char *summary,
                   const char *description, const ex_opt *opts, size_t n);

/* tp_init (world size tp, 0: from the engine or TP_WORLD_SIZE), tp_run(fn,
 * arg), tp_finalize; prints "prog: STATUS: message" on failure. *world (may
 * be NULL) gets the world size. */
tp_status ex_run(const char *prog, int tp, int *argc, char ***argv, tp_rank_fn fn, void *arg,
                 int *world);

/* The options of ex_opts (defaults already set by the caller) and `extra`
 * (nextra, may be 0) through ex_parse_table; then --save-npy's directory is
 * checked. Returns 0 to run, 1 after --version (exit 0), 2 after an error. */
int ex_parse(int *argc, char ***argv, ex_opts *o, const char *prog, const char *summary,
             const ex_opt *extra, size_t nextra);

/* Write a float32 C-order .npy (format 1.0) file DIR/NAME; creates DIR.
 * Returns 0, or -1 after printing why to stderr. */
int ex_write_npy(const char *dir, const char *name, const float *data, int ndim,
                 const int64_t *shape);

/* The same for int32 data ('<i4'). */
int ex_write_npy_i32(const char *dir, const char *name, const int32_t *data, int ndim,
                     const int64_t *shape);

/* Before the run: --save-npy DIR is a writable directory, or missing with
 * a writable parent (it is created then). 0, or -1 after printing why. */
int ex_check_out_dir(const char *prog, const char *dir);

double ex_now(void); /* monotonic seconds */

/* One line: the rank's device memory by kind from s->mem (MiB, in use /
 * peak since the last tp_stats_reset), after `indent`; `when` says whose
 * and when, e.g. "rank 0, after the timed passes". */
void ex_print_memory(const tp_stats *s, const char *indent, const char *when);

/* a widened to double (allocated as by ex_calloc; the caller frees). */
double *ex_to_double(const float *a, int64_t n, const char *what, tp_status *st);

/* Serial reference in double: C[m,n] = A[m,k] B[k,n] (+ bias), with ec the
 * bound on the error of an f32 computation whose inputs carry the errors
 * ea (may be NULL) and whose k-term sums are split over `parts` ranks and
 * reduced: gamma(k + parts + 2) * sum |a||b| + propagated input error,
 * gamma(n) = n u / (1 - n u), u = 2^-24 (any summation order, FMA or not).
 * TP_ERR_NO_MEMORY (message set) if its scratch row cannot be allocated. */
tp_status ex_ref_gemm(int64_t m, int64_t n, int64_t k, const double *a, const double *ea,
                      const double *b, const double *bias, int parts, double *c, double *ec);

#define EX_U (1.0 / 16777216.0)

#endif
