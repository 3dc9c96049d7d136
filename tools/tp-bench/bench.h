/* SPDX-License-Identifier: MIT */
/*
 * bench.h — internal interface of tp-bench, shared by its source files.
 *
 * Pure parts (no libtp calls, unit-tested in tests/bench): arith.c,
 * options.c, output.c, fit.c. The rest drives libtp: driver.c (running a
 * function on T ranks), collectives.c, gemm.c, layer_run.c, model.c, plot.c.
 */
#ifndef TP_BENCH_H
#define TP_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <glib.h>
#include <tp/tp.h>

/* Exit codes: 0 ok, 1 a run failed (or --check found wrong results),
 * 2 bad command line. */
enum {
    BENCH_EXIT_OK = 0,
    BENCH_EXIT_FAIL = 1,
    BENCH_EXIT_USAGE = 2
};

#define BENCH_MAX_LIST 32
#define BENCH_MAX_TP   64

/* Where a run's ranks are: nodes from tp_topology (distinct host names,
 * or TP_FAKE_NODES), the ranks on rank 0's node, and the emulated link
 * tp-launch --link exported as TP_LAUNCH_LINK ("none" when unset). */
typedef struct bench_place {
    int nodes, ranks_per_node;
    char link[64];
} bench_place;

/* ------------------------------------------------------------ arith.c */

/* The four collectives tp-bench sweeps, in tp_op numbering. */
#define BENCH_OP_MASK_ALL                                                                          \
    ((1u << TP_OP_ALL_REDUCE) | (1u << TP_OP_ALL_GATHER) | (1u << TP_OP_REDUCE_SCATTER) |          \
     (1u << TP_OP_BROADCAST))

/* Format the message into err (when err and len) and return -1: the pure
 * parts' way to fail with a message for the caller. */
int bench_fail(char *err, size_t len, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

const char *bench_op_name(int op);        /* "all_reduce", ...; NULL if not a swept op */
int bench_op_from_name(const char *name); /* -1 if unknown */

/* Reductions (tp_redop): "sum", "max", "min"; -1 / NULL otherwise. */
const char *bench_redop_name(int redop);
int bench_redop_from_name(const char *name);
/* tp_dtype of "f32"/"bf16"/"f16"/"i32" or nccl-tests' "float", "bfloat16",
 * "half", "int32"; -1 if unknown. */
int bench_dtype_from_name(const char *name);
const char *bench_dtype_name(int dt); /* "f32", "f16", "bf16", "i32"; NULL otherwise */
/* -a: how per-rank times combine, nccl-tests' numbering. */
enum {
    BENCH_AVG_RANK0 = 0,
    BENCH_AVG_MEAN = 1,
    BENCH_AVG_MIN = 2,
    BENCH_AVG_MAX = 3
};
const char *bench_average_name(int average); /* "rank0", "mean", "min", "max" */

/* nccl-tests' bus-bandwidth factor for op on n ranks: all_reduce
 * 2(n-1)/n, all_gather and reduce_scatter (n-1)/n, broadcast 1. */
double bench_busbw_factor(int op, int nranks);
/* algbw = bytes / time (GB/s, 1e9 bytes); busbw = algbw * factor. */
double bench_algbw_gbps(double bytes, double seconds);
double bench_busbw_gbps(int op, int nranks, double bytes, double seconds);

/* Hockney coefficients of op on p ranks: t = lat_steps * alpha +
 * bw_factor * n * beta, n in bytes as the size column defines it.
 * ring all_reduce: 2(p-1), 2(p-1)/p; ring all_gather / reduce_scatter:
 * (p-1), (p-1)/p; pipelined broadcast: ceil(log2 p), 1. p = 1: 0, 0. */
double bench_model_lat_steps(int op, int p);
double bench_model_bw_factor(int op, int p);

/* Elements per rank and total bytes actually used for a nominal size of
 * `bytes` (the `size` column): all_reduce/broadcast count = bytes/elt;
 * all_gather/reduce_scatter count per rank = bytes/(elt*n). Counts are
 * rounded down and are at least 1. */
void bench_op_counts(int op, int nranks, size_t bytes, size_t elt, size_t *count_per_rank,
                     size_t *total_count, size_t *actual_bytes);

/* Summary of a sample (sorts v in place). Median of an even count is the
 * mean of the two middle values. n = 0 gives zeros. */
typedef struct bench_summary {
    double min, median, max, mean;
} bench_summary;
bench_summary bench_summarize(double *v, size_t n);

double bench_now(void); /* monotonic seconds */

/* ---------------------------------------------------------- options.c */

typedef enum bench_cmd {
    BENCH_CMD_NONE = 0,
    BENCH_CMD_COLLECTIVES,
    BENCH_CMD_GEMM,
    BENCH_CMD_LAYER,
    BENCH_CMD_MODEL,
    BENCH_CMD_PLOT,
    BENCH_CMD_HELP,
} bench_cmd;

typedef struct bench_link {
    char name[32];
    double gbps;     /* per direction, 1e9 bytes/s */
    double alpha_us; /* per-step latency */
} bench_link;

typedef struct bench_opts {
    bench_cmd cmd;
    bool help;
    bool version; /* --version */
    int argc;     /* the command line, for the meta record */
    char **argv;

    /* launch */
    int tp;                       /* --tp / TP_WORLD_SIZE; 0 = engine decides */
    int sweep_tp[BENCH_MAX_LIST]; /* --sweep-tp; n_sweep_tp = 0: just tp */
    int n_sweep_tp;
    const char *backend, *device; /* --backend/--device, NULL: environment */
    int threads;                  /* --threads: BLAS threads per rank, 0 = default */

    /* sweeps */
    unsigned op_mask;          /* -C/--collective (old: --op LIST), default all four */
    bool op_set;               /* -C given */
    size_t fit_min;            /* model --fit-min: smallest size fitted, default 0 */
    size_t minbytes, maxbytes; /* -b / -e */
    bool maxbytes_set;
    double stepfactor;   /* -f */
    int iters, warmup;   /* -n / -w; < 0: per-subcommand default */
    int agg;             /* -m/--agg_iters: collectives per timed iteration (default 1) */
    bool check;          /* -c [N]: on unless -c 0 */
    tp_dtype coll_dtype; /* -d/--datatype, collectives only (default f32) */
    tp_redop redop;      /* -o/--op (default sum) */
    int average;         /* -a 0..3 (BENCH_AVG_*), default max */
    char note[256];      /* a deprecation note main prints, "" if none */
    bool compare_raw;    /* --compare-raw (MPI hook) */
    bool no_memcpy;      /* --no-memcpy */
    bool symmetric;      /* --symmetric: buffers from tp_comm_mem_alloc */

    /* gemm */
    int64_t gemm_sizes[BENCH_MAX_LIST];
    int n_gemm_sizes;
    tp_dtype gemm_dtype; /* --dtype f32|bf16|f16 (gemm and layer), default f32 */

    /* layer / model */
    const char *layer; /* --layer, default "mlp" */
    int64_t tokens, hidden, ffn;
    bool bias;
    bool gelu_tanh;  /* --gelu-tanh: mlp uses the tanh GeLU */
    bool backward;   /* --backward: forward + backward per iteration */
    bool split_wait; /* --split-wait: TP_WAIT_BARRIER instead of TP_WAIT_CLOCK */
    int overlap;     /* --overlap N: the layer configs' overlap (0: off) */
    /* attention / block / transformer (xf_table.c); tokens = batch * seq */
    int64_t heads, kv_heads,
        head_dim;           /* --heads, --kv-heads (0: heads), --head-dim (0: hidden/heads) */
    int64_t seq, batch;     /* --seq, --batch (0: resolved by bench_xf_resolve) */
    int64_t layers, vocab;  /* transformer: --layers, --vocab */
    bool sequence_parallel; /* --sequence-parallel */
    int dp;                 /* --dp D: transformer, D data-parallel replicas (0, 1: none) */
    bool dp_inside;         /* --dp-inside: DP groups inside nodes, TP groups across */
    int dp_bucket_kb;       /* --dp-bucket-kb: tp_dp bucket size (0: its default) */
    bool tokens_set;        /* --tokens given */
    bench_link links[BENCH_MAX_LIST]; /* --link, added to the presets */
    int n_links;
    int project_tp[BENCH_MAX_LIST]; /* --project-tp, default 2,4,8 */
    int n_project_tp;
    int measure_tp[BENCH_MAX_LIST]; /* --measure-tp, default 2,4 */
    int n_measure_tp;
    double gflops; /* --gflops: assumed compute rate for projection, 0 = measured */
    const char *from[BENCH_MAX_LIST]; /* --from FILE (model) / positional files (plot) */
    int n_from;

    /* output */
    const char *json_path, *csv_path, *out_path;
    bool quiet;
} bench_opts;

/* Defaults; default max sweep size is BENCH_DEFAULT_MAXBYTES (not nccl-tests'
 * 256 MiB: this keeps a default sweep to seconds on a small shared box; pass
 * -e 256M for the full range). */
#define BENCH_DEFAULT_MAXBYTES ((size_t)64 << 20)
void bench_opts_init(bench_opts *o);

/* Parse argv (argv[0] is the program, argv[1] the subcommand). Returns 0,
 * or -1 with a one-line message in err (the caller prints it and exits 2).
 * Reads TP_WORLD_SIZE for the default --tp. Does not check values that need
 * the layer's shape; bench_opts_validate does. */
int bench_parse_args(int argc, char **argv, bench_opts *o, char *err, size_t errlen);
int bench_opts_validate(const bench_opts *o, char *err, size_t errlen);

/* "8", "64K", "1M", "2G" (binary multiples, optional trailing B/iB).
 * Returns 0 on success; size 0 or garbage is an error. */
int bench_parse_size(const char *s, size_t *out);
/* "1,2,4" -> ints in [lo, hi]; returns count or -1. */
int bench_parse_int_list(const char *s, int lo, int hi, int *out, int max);
/* "name:GBps:us", e.g. "myib:25:2.5". Returns 0 or -1 with err. */
int bench_parse_link(const char *s, bench_link *out, char *err, size_t errlen);
/* Human size: "8", "64K", "1.5M"... into buf. */
const char *bench_format_size(size_t bytes, char *buf, size_t len);

void bench_print_help(FILE *f, bench_cmd cmd);

/* ----------------------------------------------------------- output.c */

typedef enum bench_ftype {
    BENCH_F_STR,
    BENCH_F_INT,
    BENCH_F_DBL,
    BENCH_F_BOOL,
    BENCH_F_NULL,
    BENCH_F_JSON /* an object or array, kept as its JSON text in s (meta: env) */
} bench_ftype;

typedef struct bench_field {
    char *key;
    bench_ftype type;
    char *s;
    int64_t i;
    double d;
    bool b;
} bench_field;

/* One measurement: an ordered list of fields; the first is always "kind". */
typedef struct bench_record {
    bench_field *f;
    int n, cap;
} bench_record;

bench_record *bench_rec_new(const char *kind);
void bench_rec_free(bench_record *r);
bench_record *bench_rec_copy(const bench_record *r);
void bench_rec_str(bench_record *r, const char *key, const char *v); /* NULL v -> null */
void bench_rec_int(bench_record *r, const char *key, int64_t v);
void bench_rec_dbl(bench_record *r, const char *key, double v); /* non-finite -> null */
void bench_rec_bool(bench_record *r, const char *key, bool v);
/* An object or array given as JSON text (written nested; CSV: the text). */
void bench_rec_json(bench_record *r, const char *key, const char *json);
/* time_us, time_min_us, time_max_us: a summary of seconds, in µs. */
void bench_rec_times(bench_record *r, const bench_summary *sm);
const bench_field *bench_rec_get(const bench_record *r, const char *key);
const char *bench_rec_get_str(const bench_record *r, const char *key); /* NULL if absent/not str */
double bench_rec_get_num(const bench_record *r, const char *key, double dflt);
const char *bench_rec_kind(const bench_record *r);

/* Writers, appending to a GString (no newline for CSV rows/headers
 * either: the caller adds it). Doubles print with %.9g; non-finite as
 * null (JSON) or empty (CSV). */
void bench_json_line(const bench_record *r, GString *out);
void bench_csv_header(const bench_record *r, GString *out);
void bench_csv_row(const bench_record *r, GString *out);
bool bench_rec_same_keys(const bench_record *a, const bench_record *b);

/* Parse one JSON-lines record (json-glib): an object whose members are
 * strings, numbers, booleans and nulls, or objects/arrays (kept as
 * BENCH_F_JSON text). Returns NULL (with err) on anything else. */
bench_record *bench_json_parse(const char *line, char *err, size_t errlen);
/* Read every record of a JSON-lines file into arr (of bench_record*).
 * Returns 0 or -1 with err naming the file and line. */
int bench_jsonl_read(const char *path, GPtrArray *arr, char *err, size_t errlen);

/* Output sink: JSON lines streamed as records come; CSV written at close,
 * grouped by kind, each group with its header line, groups separated by a
 * blank line. Files are opened lazily on the first record, so processes
 * that never emit (non-zero ranks under mpirun) create nothing. */
typedef struct bench_sink {
    const char *json_path, *csv_path;
    bench_record *meta; /* written before the first record (bench_sink_set_meta) */
    bool meta_done;
    FILE *json;
    GPtrArray *records; /* for CSV */
    bool failed;
    char err[256];
} bench_sink;

void bench_sink_init(bench_sink *s, const char *json_path, const char *csv_path);
void bench_sink_emit(bench_sink *s, const bench_record *r); /* copies r */
/* The meta record (owned by the sink, NULL: none) that bench_sink_emit
 * writes before the first record; it may be changed until then. */
void bench_sink_set_meta(bench_sink *s, bench_record *meta);
int bench_sink_close(bench_sink *s); /* 0, or -1 (message in s->err) */
/* Before any run: each path given (NULL: none) can be written -- an
 * existing writable file or device, or a new file in a writable directory.
 * 0, or -1 with err naming the flag, the file and why. The CSV is written
 * at close: a regular file (or a new one) is replaced atomically by
 * rename; a symlink is written through (its target rewritten in place,
 * the link kept), and a device, FIFO or hard-linked file is written in
 * place, never replaced. */
int bench_sink_check_paths(const char *json_path, const char *csv_path, const char *out_path,
                           char *err, size_t errlen);
/* Write records as CSV (grouped as above) to f. */
void bench_csv_write_all(GPtrArray *records, GString *out);

/* ------------------------------------------------------------- meta.c */

/* The meta record that starts every JSON/CSV output (bench_sink_set_meta):
 * kind "meta", tp_version and git_revision (tp-version.h), date_utc
 * (ISO 8601), host, cpu_model (null where /proc/cpuinfo names none),
 * cpu_cores (usable by this process), backend, backend_path,
 * backend_version, device, device_path, device_version, world_size (null
 * until the driver fills them), env (an object: every TP_*, OMPI_* and
 * NCCL_* variable of envp, by name; a secret's value is
 * BENCH_META_REDACTED) and command (argv, shell-quoted). envp NULL: this
 * process's environment. */
#define BENCH_META_REDACTED "<redacted>"
bench_record *bench_meta_new(int argc, char *const *argv, char *const *envp);
bool bench_meta_env_wanted(const char *name); /* TP_*, OMPI_*, NCCL_* */
bool bench_meta_env_secret(const char *name); /* TP_TCP_SECRET, *PASSWORD*, *TOKEN* */
/* role "backend" or "device": its name, the plugin file and its version. */
void bench_meta_set_plugin(bench_record *m, const char *role, const char *name, const char *path,
                           const char *version);

/* -------------------------------------------------------------- fit.c */

/* One measured collective time, for fitting. */
typedef struct bench_sample {
    int op, p;
    double bytes;   /* the size column */
    double seconds; /* median time */
} bench_sample;

typedef struct bench_fit {
    double alpha_s;     /* per-step latency, seconds */
    double beta_s;      /* seconds per byte (1/bandwidth) */
    int n;              /* samples used */
    bool alpha_clamped; /* the unconstrained fit gave alpha < 0: refit with alpha = 0 */
} bench_fit;

/* Least squares of t = L(op,p) alpha + B(op,p) n beta over the samples
 * with p >= 2 and bytes >= min_bytes, minimising the sum of squared
 * relative errors ((model - t)/t)^2. Returns 0, or -1 if fewer than 2
 * usable samples or a degenerate system. */
int bench_fit_hockney(const bench_sample *s, int n, double min_bytes, bench_fit *out);
double bench_model_time(const bench_fit *f, int op, int p, double bytes);

/* The same line fitted to minimise the largest relative error (minimax,
 * Chebyshev) with alpha, beta >= 0, over the samples with p >= 2 and
 * bytes >= min_bytes; *max_err gets that error. alpha_clamped: alpha ended
 * at its bound 0. Returns 0, or -1 with fewer than 2 distinct sizes. */
int bench_fit_minimax(const bench_sample *s, int n, double min_bytes, bench_fit *out,
                      double *max_err);

/* Regimes: on shared memory, messages that fit in the caches move at a
 * different bandwidth from those that go to DRAM, with a transition
 * between. The sorted sizes are cut into nseg contiguous ranges (1 to
 * BENCH_FIT_MAX_REGIMES; each of >= BENCH_FIT_MIN_SIZES distinct sizes
 * when there is more than one), each with its own minimax line. For each
 * nseg the cuts minimise the largest |relative error| over the sizes >=
 * err_min_bytes (all fitted sizes when none is that large; ties: the
 * smaller sum of squares); then the fewest regimes whose error is within
 * BENCH_FIT_REGIME_GAIN of the best are kept. */
#define BENCH_FIT_MAX_REGIMES 3
#define BENCH_FIT_MIN_SIZES   3
#define BENCH_FIT_REGIME_GAIN 0.01 /* an extra regime must gain > 1 point of error */
typedef struct bench_fit2 {
    int nseg;
    bench_fit seg[BENCH_FIT_MAX_REGIMES];
    double lo_bytes[BENCH_FIT_MAX_REGIMES], hi_bytes[BENCH_FIT_MAX_REGIMES]; /* sizes fitted */
    double max_err; /* the largest |relative error| over the scored sizes */
    int n_err;      /* scored samples */
    double sse;     /* sum of squared relative errors over all fitted samples */
} bench_fit2;
int bench_fit_piecewise(const bench_sample *s, int n, double min_bytes, double err_min_bytes,
                        bench_fit2 *out);
/* The regime that prices `bytes`: the first whose hi_bytes >= bytes, else
 * the last (a size between two fitted ranges takes the lower one). */
int bench_fit2_regime(const bench_fit2 *f, double bytes);
double bench_model2_time(const bench_fit2 *f, int op, int p, double bytes);
/* Link presets: nvlink4, ib-ndr, pcie4. */
int bench_link_presets(const bench_link **out);
const bench_link *bench_link_find(const char *name);
bench_fit bench_link_fit(const bench_link *l);

/* ----------------------------------------------------------- driver.c */

/* Called on every rank taking part: comm has T ranks. Return TP_OK or a
 * status with tp_set_error. */
typedef tp_status (*bench_rank_fn)(tp_comm *comm, int T, void *arg);

typedef struct bench_env {
    const bench_opts *o;
    char backend[64], device[64];
    int world;           /* ranks of the current init */
    bool single_process; /* every rank is a thread of this process */
    tp_ctx *ctx;         /* current context, NULL before the first init */
    bool printer;        /* this process ran world rank 0 (it prints) */
    bench_sink *sink;    /* bench_env_attach: its meta record gets the run's fields */
} bench_env;

void bench_env_init(bench_env *env, const bench_opts *o);
void bench_env_finish(bench_env *env); /* tp_finalize */
/* The subcommand's output: with --json/--csv, the sink gets a meta record
 * (bench_meta_new), whose backend, device and world_size fields each
 * tp_init fills in until it is written. */
void bench_env_attach(bench_env *env, bench_sink *sink);
/* The end of a subcommand: bench_env_finish, then close the sink; a sink
 * that could not be written prints its error and turns rc 0 into
 * BENCH_EXIT_FAIL. Returns the exit code. */
int bench_cmd_finish(bench_env *env, bench_sink *sink, int rc);
/* The T values a collectives or layer sweep runs: --sweep-tp, else the
 * world size (after bench_env_probe). Returns how many. */
int bench_env_tps(const bench_env *env, int *tps);
/* A record of `kind` that starts as every measurement of this run does:
 * backend, device, ranks. */
bench_record *bench_env_rec_new(const bench_env *env, const char *kind, int ranks);

/* Collective over comm; its collectives are counted in comm's stats. */
tp_status bench_place_get(tp_comm *comm, bench_place *out);
/* nodes, ranks_per_node, link fields of a layer or collective record. */
void bench_rec_place(bench_record *r, const bench_place *p);
/* The same from a record read back; old records without them read as one
 * node of `ranks` ranks, link "none". */
void bench_place_from_rec(const bench_record *r, bench_place *out);

/* Run fn on T ranks for each T in tps. Single-process engines (loopback)
 * are re-initialised with world size T; multi-process engines (mpirun) use
 * tp_comm_split of the world, the other ranks wait. Returns an exit code;
 * prints the error. */
int bench_run_tps(bench_env *env, const int *tps, int ntp, bench_rank_fn fn, void *arg);
/* Initialise once to learn backend/device/world size (bench_run_tps does
 * this itself on first use). Returns an exit code. */
int bench_env_probe(bench_env *env);
/* True on the process that prints (the one running world rank 0). */
bool bench_is_printer(tp_comm *comm);
/* tp_barrier(comm), after a failure st too (so that the other ranks are not
 * left waiting) without losing st's message, which a collective clears.
 * Returns st, or the barrier's status when st is TP_OK. */
tp_status bench_barrier_after(tp_comm *comm, tp_status st);
/* malloc(bytes), or NULL with *st = TP_ERR_NO_MEMORY and a message naming
 * what and its bytes; does nothing once *st is a failure (one check after
 * a run of them). */
void *bench_malloc(size_t bytes, const char *what, tp_status *st);

/* A progress line on stderr, at most once a second and only after the
 * sweep ran 2 s; bench_progress_done ends it. */
typedef struct bench_progress {
    double t0, last;
    bool shown, quiet, tty;
} bench_progress;
void bench_progress_start(bench_progress *p, bool quiet);
void bench_progress_update(bench_progress *p, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
void bench_progress_done(bench_progress *p);

/* ------------------------------------------------------ subcommands */

int bench_cmd_collectives(const bench_opts *o);
int bench_cmd_gemm(const bench_opts *o);
int bench_cmd_layer(const bench_opts *o);
int bench_cmd_model(const bench_opts *o);
int bench_cmd_plot(const bench_opts *o);

/* collectives.c, reused by model: sweep ops/sizes on T ranks, emitting
 * collective (and memcpy) records into sink and, if samples != NULL,
 * appending a bench_placed_sample (op, T, bytes, median; where the T ranks
 * ran) to it. Returns an exit code. */
typedef struct bench_placed_sample {
    bench_sample s;
    bench_place place;
} bench_placed_sample;
int bench_collectives_run(bench_env *env, const int *tps, int ntp, bench_sink *sink,
                          GArray *samples, bool print_table);

/* layer_run.c, reused by model. */
/* Per iteration (a forward, plus a backward with --backward); the arrays
 * are indexed by phase: 0 forward, 1 backward. */
typedef struct bench_layer_result {
    int T;
    int nphases;         /* 1, or 2 with --backward */
    double wall_us;      /* per iteration, max over ranks */
    double gemm_us[2];   /* mean over ranks */
    double other_us[2];  /* non-GEMM kernels, mean over ranks */
    double comm_us[2];   /* collectives, mean over ranks */
    double hidden_us[2]; /* of comm_us: in flight behind compute (nonblocking), mean */
    double comm_us_max[2];
    double wait_us[2];         /* of comm_us: waiting for the last rank, mean over ranks */
    double wait_us_max[2];     /* the largest rank's wait */
    double transfer_us_max[2]; /* the largest rank's comm - wait */
    bench_place place;         /* where the T ranks ran */
    uint64_t calls[TP_PHASE_COUNT][TP_OP_COUNT]; /* per iteration, rank 0 */
    double comm_bytes[2];                        /* payload bytes, rank 0 (tp_stats) */
    double wire_bytes[2];                        /* payload x ring factor = bytes a rank sends */
    double formula_bytes[2];                     /* the seed's formula */
    double flops;                                /* per iteration, all ranks */
    double cpu_cores; /* CPU time / wall time of this process while timing (NAN: ranks in
                             several processes) */
    /* --dp D (transformer): the DP communicator's tp_stats on rank 0, per
     * iteration, and the bucket plan (tp_dp_get_info) */
    int dp, dp_buckets;
    double dp_us, dp_wait_us, dp_calls, dp_bytes, dp_grad_bytes, dp_bucket_bytes;
    double dp_hidden_us; /* the buckets' time in flight not waited for (--overlap) */
} bench_layer_result;

/* Sums over the phases run: compute (GEMM + other) and communication, µs
 * per iteration, mean over ranks. */
double bench_layer_compute_us(const bench_layer_result *R);
double bench_layer_comm_us(const bench_layer_result *R);
double bench_layer_wait_us(const bench_layer_result *R); /* of comm_us: waiting */

/* Layer registry: one entry per layer family. */
typedef struct bench_layer_desc bench_layer_desc;
const bench_layer_desc *bench_layer_find(const char *name);
const char *bench_layer_names(void);             /* "linear-col, linear-row, mlp" */
int bench_layer_kind(const bench_layer_desc *d); /* for layer_run.c's runners */
/* The dimension split over T, and its name, for validation. */
int64_t bench_layer_split_dim(const bench_layer_desc *d, const bench_opts *o, const char **what);
/* Expected collectives per forward: op -> count, bytes payload per call. */
typedef struct bench_layer_comm {
    int op;
    int calls;
    double bytes; /* payload per call */
} bench_layer_comm;
int bench_layer_expected_comm(const bench_layer_desc *d, const bench_opts *o, int T, int phase,
                              bench_layer_comm *out, int max);
/* FLOPs of one pass of `phase` (0 forward, 1 backward), all ranks. */
double bench_layer_flops(const bench_layer_desc *d, const bench_opts *o, int phase);
/* Run the layer at each T; results[i] for tps[i]. */
int bench_layer_run(bench_env *env, const bench_layer_desc *d, const int *tps, int ntp,
                    bench_layer_result *results);

/* ------------------------------------------------------------ raw.c */

/* --compare-raw hook: the same collective called on the engine's own
 * library (MPI_Allreduce, ...) on the same buffers, for the plugin/raw
 * ratio. Built only when tp-bench is configured with MPI; otherwise
 * bench_raw_available() says why not. */
bool bench_raw_available(const char **why);
tp_status bench_raw_collective(tp_comm *comm, int op, const void *send, void *recv,
                               size_t count_per_rank, size_t total_count);

/* ------------------------------------- xf_table.c, xf_run.c */

/* bench_layer_kind() of the transformer layers (layer_table.c's table). */
enum {
    BENCH_LK_ATTENTION = 3,
    BENCH_LK_BLOCK = 4,
    BENCH_LK_TRANSFORMER = 5
};
bool bench_layer_is_xf(int kind);
/* After parsing: tokens = batch * seq from --batch/--seq/--tokens (default
 * 4 x 512 for the transformer layers, which also always run backward).
 * kind: bench_layer_kind() of --layer (-1: none). Returns 0, or -1 with
 * err when they disagree. */
int bench_xf_resolve(int kind, bench_opts *o, char *err, size_t errlen);
int64_t bench_xf_split_dim(int kind, const bench_opts *o, const char **what);
double bench_xf_flops(int kind, const bench_opts *o, int phase);
int bench_xf_expected_comm(int kind, const bench_opts *o, int T, int phase, bench_layer_comm *out,
                           int max);
/* batch, seq, heads, ... for a transformer kind; nothing for the others */
void bench_xf_rec_fields(bench_record *r, int kind, const bench_opts *o);
double bench_xf_seed_block_bytes(const bench_opts *o, int T); /* 8 b s h (T-1)/T x 4 */

/* Runners (layer_run.c's layer_inst holds one). */
typedef struct bench_xf bench_xf;
tp_status bench_xf_create(int kind, tp_comm *comm, const bench_opts *o, bench_xf **out);
tp_status bench_xf_step(bench_xf *b); /* forward, then backward */
void bench_xf_free(bench_xf *b);      /* NULL is a no-op */
void bench_xf_print_header(const bench_opts *o);
void bench_xf_print_result(const bench_opts *o, const bench_layer_result *R);
/* --dp: after each backward, the gradients averaged over dp (tp_dp, the
 * default buckets); transformer only. bench_xf_dp_info: its plan. */
tp_status bench_xf_attach_dp(bench_xf *b, tp_comm *dp);
void bench_xf_dp_info(const bench_xf *b, int *buckets, double *grad_bytes, double *bucket_bytes);
/* The DP line of the layer report: measured traffic next to the formula. */
void bench_xf_print_dp(const bench_layer_result *R);

#endif /* TP_BENCH_H */
