/* SPDX-License-Identifier: MIT */
/* test-bench-unit.c — tp-bench's pure parts: bandwidth arithmetic, option
 * parsing, JSON/CSV writers and reader, the alpha-beta fit, the layer
 * table. No libtp calls, no timing. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

/* Floating-point expectations below are computed from the same formula in
 * a different order; 1e-12 relative covers a few ulps of rounding. */
#define REL_EQ(a, b)                                                                               \
    ck_assert_msg(fabs((a) - (b)) <= 1e-12 * fabs(b) + 1e-300, "%.17g != %.17g", (double)(a),      \
                  (double)(b))

/* ------------------------------------------------------------ arith */

START_TEST(busbw_factors)
{
    int ns[] = {1, 2, 3, 4, 7};
    for (size_t i = 0; i < G_N_ELEMENTS(ns); i++) {
        double n = ns[i];
        REL_EQ(bench_busbw_factor(TP_OP_ALL_REDUCE, ns[i]) + 1.0, 2.0 * (n - 1) / n + 1.0);
        REL_EQ(bench_busbw_factor(TP_OP_ALL_GATHER, ns[i]) + 1.0, (n - 1) / n + 1.0);
        REL_EQ(bench_busbw_factor(TP_OP_REDUCE_SCATTER, ns[i]) + 1.0, (n - 1) / n + 1.0);
        REL_EQ(bench_busbw_factor(TP_OP_BROADCAST, ns[i]), 1.0);
    }
    ck_assert(bench_busbw_factor(TP_OP_BARRIER, 4) == 0.0);
    ck_assert(bench_busbw_factor(TP_OP_ALL_REDUCE, 0) == 0.0);
}
END_TEST

START_TEST(bandwidth_arithmetic)
{
    /* 1e9 bytes in 0.5 s: algbw 2 GB/s; all_reduce on 4 ranks: x 6/4 */
    REL_EQ(bench_algbw_gbps(1e9, 0.5), 2.0);
    REL_EQ(bench_busbw_gbps(TP_OP_ALL_REDUCE, 4, 1e9, 0.5), 3.0);
    REL_EQ(bench_busbw_gbps(TP_OP_ALL_GATHER, 4, 1e9, 0.5), 1.5);
    REL_EQ(bench_busbw_gbps(TP_OP_BROADCAST, 7, 1e9, 0.5), 2.0);
    ck_assert(bench_algbw_gbps(100, 0.0) == 0.0); /* no division by zero */
    ck_assert(bench_busbw_gbps(TP_OP_ALL_REDUCE, 1, 1e9, 1.0) == 0.0);
}
END_TEST

START_TEST(op_counts)
{
    size_t per, total, bytes;
    bench_op_counts(TP_OP_ALL_REDUCE, 3, 100, 4, &per, &total, &bytes);
    ck_assert_uint_eq(per, 25);
    ck_assert_uint_eq(total, 25);
    ck_assert_uint_eq(bytes, 100);
    bench_op_counts(TP_OP_ALL_GATHER, 3, 100, 4, &per, &total, &bytes);
    ck_assert_uint_eq(per, 8);
    ck_assert_uint_eq(total, 24);
    ck_assert_uint_eq(bytes, 96);
    bench_op_counts(TP_OP_REDUCE_SCATTER, 7, 8, 4, &per, &total,
                    &bytes); /* rounds up to 1 per rank */
    ck_assert_uint_eq(per, 1);
    ck_assert_uint_eq(total, 7);
    ck_assert_uint_eq(bytes, 28);
    bench_op_counts(TP_OP_BROADCAST, 4, 13, 4, &per, &total, &bytes);
    ck_assert_uint_eq(total, 3);
    ck_assert_uint_eq(bytes, 12);
}
END_TEST

START_TEST(summary)
{
    double odd[] = {5, 1, 3};
    bench_summary s = bench_summarize(odd, 3);
    ck_assert(s.min == 1 && s.median == 3 && s.max == 5 && s.mean == 3);
    double even[] = {4, 1, 3, 10};
    s = bench_summarize(even, 4);
    ck_assert(s.min == 1 && s.median == 3.5 && s.max == 10);
    double one[] = {7};
    s = bench_summarize(one, 1);
    ck_assert(s.min == 7 && s.median == 7 && s.max == 7);
    s = bench_summarize(NULL, 0);
    ck_assert(s.median == 0);
}
END_TEST

START_TEST(model_coefficients)
{
    ck_assert(bench_model_lat_steps(TP_OP_ALL_REDUCE, 4) == 6);
    ck_assert(bench_model_lat_steps(TP_OP_ALL_GATHER, 7) == 6);
    ck_assert(bench_model_lat_steps(TP_OP_BROADCAST, 7) == 3);
    ck_assert(bench_model_lat_steps(TP_OP_BROADCAST, 8) == 3);
    ck_assert(bench_model_lat_steps(TP_OP_ALL_REDUCE, 1) == 0);
    REL_EQ(bench_model_bw_factor(TP_OP_ALL_REDUCE, 4), 1.5);
    ck_assert(bench_model_bw_factor(TP_OP_ALL_REDUCE, 1) == 0);
}
END_TEST

/* ---------------------------------------------------------- options */

START_TEST(sizes)
{
    size_t v;
    ck_assert_int_eq(bench_parse_size("8", &v), 0);
    ck_assert_uint_eq(v, 8);
    ck_assert_int_eq(bench_parse_size("64K", &v), 0);
    ck_assert_uint_eq(v, 65536);
    ck_assert_int_eq(bench_parse_size("1M", &v), 0);
    ck_assert_uint_eq(v, 1u << 20);
    ck_assert_int_eq(bench_parse_size("2G", &v), 0);
    ck_assert_uint_eq(v, (size_t)2 << 30);
    ck_assert_int_eq(bench_parse_size("256MiB", &v), 0);
    ck_assert_uint_eq(v, (size_t)256 << 20);
    ck_assert_int_eq(bench_parse_size("1.5k", &v), 0);
    ck_assert_uint_eq(v, 1536);
    const char *bad[] = {"0", "", "-8", "abc", "12Q", "0.5", "1KK", "K", "+4"};
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++)
        ck_assert_msg(bench_parse_size(bad[i], &v) != 0, "'%s' accepted", bad[i]);
    char buf[32];
    ck_assert_str_eq(bench_format_size(8, buf, sizeof buf), "8");
    ck_assert_str_eq(bench_format_size(65536, buf, sizeof buf), "64K");
    ck_assert_str_eq(bench_format_size((size_t)256 << 20, buf, sizeof buf), "256M");
    ck_assert_str_eq(bench_format_size(1500, buf, sizeof buf), "1500");
}
END_TEST

START_TEST(lists_and_links)
{
    int v[8];
    ck_assert_int_eq(bench_parse_int_list("1,2,4", 1, 64, v, 8), 3);
    ck_assert(v[0] == 1 && v[1] == 2 && v[2] == 4);
    ck_assert_int_eq(bench_parse_int_list("7", 1, 64, v, 8), 1);
    ck_assert_int_eq(bench_parse_int_list("1,,2", 1, 64, v, 8), -1);
    ck_assert_int_eq(bench_parse_int_list("0", 1, 64, v, 8), -1);
    ck_assert_int_eq(bench_parse_int_list("65", 1, 64, v, 8), -1);
    ck_assert_int_eq(bench_parse_int_list("1,2,3", 1, 64, v, 2), -1);

    bench_link l;
    char err[256];
    ck_assert_int_eq(bench_parse_link("myib:25:2.5", &l, err, sizeof err), 0);
    ck_assert_str_eq(l.name, "myib");
    ck_assert(l.gbps == 25 && l.alpha_us == 2.5);
    ck_assert_int_eq(bench_parse_link("x:0.5:0", &l, err, sizeof err), 0);
    const char *bad[] = {"bad",   "a:1",    "a:1:2:3", ":1:2",   "a::2",    "a:1:",
                         "a:0:1", "a:-3:1", "a:x:1",   "a:1:-1", "a b:1:1", "a:inf:1"};
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        err[0] = 0;
        ck_assert_msg(bench_parse_link(bad[i], &l, err, sizeof err) != 0, "'%s' accepted", bad[i]);
        ck_assert_msg(strstr(err, "--link") != NULL, "message for '%s' does not name --link: %s",
                      bad[i], err);
    }
}
END_TEST

/* Options keep pointers into argv: the last parse's argv lives until the
 * next parse or the end of the test. */
static gchar **last_argv;

static void free_last_argv(void)
{
    g_strfreev(last_argv);
    last_argv = NULL;
}

static int parse(bench_opts *o, char *err, size_t len, const char *line)
{
    int argc = 0;
    gchar *full = g_strconcat("tp-bench ", line, NULL);
    free_last_argv();
    ck_assert(g_shell_parse_argv(full, &argc, &last_argv, NULL));
    int rc = bench_parse_args(argc, last_argv, o, err, len);
    if (rc == 0)
        rc = bench_opts_validate(o, err, len);
    g_free(full);
    return rc;
}

START_TEST(parse_collectives)
{
    unsetenv("TP_WORLD_SIZE");
    bench_opts o;
    char err[512];
    ck_assert_int_eq(parse(&o, err, sizeof err, "collectives"), 0);
    ck_assert(o.cmd == BENCH_CMD_COLLECTIVES);
    ck_assert_uint_eq(o.op_mask, BENCH_OP_MASK_ALL);
    ck_assert_uint_eq(o.minbytes, 8);
    ck_assert_uint_eq(o.maxbytes, BENCH_DEFAULT_MAXBYTES);
    /* nccl-tests' defaults: checking on, sum, f32; times combined by max */
    ck_assert(o.stepfactor == 2.0 && o.tp == 0 && o.check);
    ck_assert(o.redop == TP_SUM && o.coll_dtype == TP_F32 && o.average == BENCH_AVG_MAX);
    ck_assert_str_eq(o.note, "");

    ck_assert_int_eq(
        parse(&o, err, sizeof err,
              "collectives -b 1K -e 1M -f 4 -n 3 -w 0 -c --op all_reduce,broadcast --tp 4 "
              "--json a.jsonl --csv=b.csv --sweep-tp 2,4"),
        0);
    ck_assert_uint_eq(o.minbytes, 1024);
    ck_assert_uint_eq(o.maxbytes, 1u << 20);
    ck_assert(o.stepfactor == 4 && o.iters == 3 && o.warmup == 0 && o.check && o.tp == 4);
    ck_assert_uint_eq(o.op_mask, (1u << TP_OP_ALL_REDUCE) | (1u << TP_OP_BROADCAST));
    /* the old --op LIST still selects collectives, with a deprecation note */
    ck_assert_ptr_nonnull(strstr(o.note, "deprecated"));
    ck_assert_ptr_nonnull(strstr(o.note, "-C/--collective all_reduce,broadcast"));
    ck_assert(o.redop == TP_SUM);
    ck_assert_str_eq(o.json_path, "a.jsonl");
    ck_assert_str_eq(o.csv_path, "b.csv");
    ck_assert_int_eq(o.n_sweep_tp, 2);

    /* nccl-tests forms: -b8 -e128M, allreduce spelling, -c 1 / -c 0 */
    ck_assert_int_eq(parse(&o, err, sizeof err, "collectives -b8 -e128M --op allreduce -c 1"), 0);
    ck_assert_uint_eq(o.maxbytes, (size_t)128 << 20);
    ck_assert(o.check);
    ck_assert_int_eq(parse(&o, err, sizeof err, "collectives -c 0 -n 2"), 0);
    ck_assert(!o.check && o.iters == 2);
    ck_assert_int_eq(parse(&o, err, sizeof err, "collectives -c --check=0"), 0);
    ck_assert(!o.check);

    setenv("TP_WORLD_SIZE", "3", 1);
    ck_assert_int_eq(parse(&o, err, sizeof err, "collectives"), 0);
    ck_assert_int_eq(o.tp, 3);
    ck_assert_int_eq(parse(&o, err, sizeof err, "collectives --tp 2"), 0);
    ck_assert_int_eq(o.tp, 2);
    setenv("TP_WORLD_SIZE", "zero", 1);
    ck_assert_int_eq(parse(&o, err, sizeof err, "collectives"), -1);
    ck_assert_ptr_nonnull(strstr(err, "TP_WORLD_SIZE"));
    unsetenv("TP_WORLD_SIZE");
}
END_TEST

/* Each bad command line fails with a message containing `needle`. */
START_TEST(parse_errors)
{
    unsetenv("TP_WORLD_SIZE");
    static const struct {
        const char *line, *needle;
    } cases[] = {
        {"", "missing subcommand"},
        {"nosuch", "unknown subcommand 'nosuch'"},
        {"collectives --op all_nothing", "unknown op 'all_nothing'"},
        {"collectives -b 0", "bad size '0'"},
        {"collectives -e 0", "bad size '0'"},
        {"collectives -e 1X", "bad size '1X'"},
        {"collectives -b 2M -e 1M", "larger than"},
        {"collectives -f 1", "factor > 1"},
        {"collectives -n 0", "iterations >= 1"},
        {"collectives --tp 0", "1..64"},
        {"collectives --tp 65", "1..64"},
        {"collectives --frobnicate", "unknown option '--frobnicate'"},
        {"collectives -Z", "unknown option '-Z'"},
        {"collectives --layer mlp", "does not apply"},
        {"collectives -e", "needs a value"},
        {"collectives stray", "unexpected argument"},
        {"layer --layer attention-ish", "unknown layer 'attention-ish'"},
        {"layer --layer mlp --tp 4 --ffn 3", "larger than the dimension"},
        {"layer --layer linear-row --sweep-tp 1,2,8 --ffn 7", "T=8"},
        {"layer --tokens 0", "dimension >= 1"},
        {"model --link nvlink5", "malformed --link"},
        {"model --link x:fast:1", "malformed --link"},
        {"model --project-tp 2,4,8 --ffn 4", "T=8"},
        {"model --gflops -1", "GFLOP/s"},
        {"gemm --sizes 0", "square GEMM sizes"},
        {"plot results.jsonl", "missing --out"},
        {"plot --out x.png", "missing input"},
        {"collectives --check=abc", "0 (no check) or a count"},
        {"collectives --check=-1", "0 (no check) or a count"},
        {"collectives -d f64", "f32 (float), bf16 (bfloat16), f16 (half) or i32"},
        {"collectives --datatype=", "needs a value"},
        {"collectives -o prod", "unknown op 'prod' for -o"},
        {"collectives --op avg", "unknown op 'avg' for --op"},
        {"collectives -a 4", "0 (rank 0's time), 1 (mean over ranks), 2 (min) or 3 (max)"},
        {"collectives -a", "needs a value"},
        {"collectives -C nosuch", "unknown collective 'nosuch' in -C"},
        {"collectives --collective=", "needs a value"},
        {"collectives --compare-raw -d bf16", "MPI's f32 sum"},
        {"collectives --compare-raw -o max", "MPI's f32 sum"},
        {"model -o max", "applies to 'collectives' only"},
        {"model -d bf16", "does not apply"},
        {"gemm -o x", "does not apply"},
        {"collectives --version=1", "takes no value"},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        bench_opts o;
        char err[512] = "";
        ck_assert_msg(parse(&o, err, sizeof err, cases[i].line) != 0, "'%s' accepted",
                      cases[i].line);
        ck_assert_msg(strstr(err, cases[i].needle) != NULL, "'%s': message '%s' lacks '%s'",
                      cases[i].line, err, cases[i].needle);
    }
}
END_TEST

/* nccl-tests' collectives flags, --version, --opt=value and "last wins". */
START_TEST(parse_nccl_flags)
{
    unsetenv("TP_WORLD_SIZE");
    bench_opts o;
    char err[512];
    static const struct {
        const char *line;
        tp_dtype dt;
    } dts[] = {{"-d f32", TP_F32},         {"-d float", TP_F32},
               {"-dbf16", TP_BF16},        {"--datatype bfloat16", TP_BF16},
               {"--datatype=f16", TP_F16}, {"-d half", TP_F16},
               {"-d i32", TP_I32},         {"--datatype=int32", TP_I32}};
    for (size_t i = 0; i < G_N_ELEMENTS(dts); i++) {
        gchar *line = g_strdup_printf("collectives %s", dts[i].line);
        ck_assert_msg(parse(&o, err, sizeof err, line) == 0, "%s: %s", line, err);
        ck_assert_msg(o.coll_dtype == dts[i].dt, "%s: dtype %d", line, o.coll_dtype);
        g_free(line);
    }
    ck_assert_int_eq(parse(&o, err, sizeof err, "collectives -o max"), 0);
    ck_assert(o.redop == TP_MAX && o.op_mask == BENCH_OP_MASK_ALL && !o.note[0]);
    ck_assert_int_eq(parse(&o, err, sizeof err, "collectives --op=min -C all_gather"), 0);
    ck_assert(o.redop == TP_MIN);
    ck_assert_uint_eq(o.op_mask, 1u << TP_OP_ALL_GATHER);
    ck_assert_int_eq(parse(&o, err, sizeof err, "collectives --collective=reduce_scatter,all"), 0);
    ck_assert_uint_eq(o.op_mask, BENCH_OP_MASK_ALL);
    for (int a = 0; a < 4; a++) {
        gchar *line = g_strdup_printf("collectives -a %d", a);
        ck_assert_int_eq(parse(&o, err, sizeof err, line), 0);
        ck_assert_int_eq(o.average, a);
        g_free(line);
    }
    ck_assert_int_eq(parse(&o, err, sizeof err, "collectives --average=1"), 0);
    ck_assert_int_eq(o.average, BENCH_AVG_MEAN);
    /* -c N: nccl-tests' check count; 0 off, any count on */
    ck_assert_int_eq(parse(&o, err, sizeof err, "collectives -c 0"), 0);
    ck_assert(!o.check);
    ck_assert_int_eq(parse(&o, err, sizeof err, "collectives -c 0 -c 5"), 0);
    ck_assert(o.check);
    ck_assert_int_eq(parse(&o, err, sizeof err, "collectives --check=0 -n 4"), 0);
    ck_assert(!o.check && o.iters == 4);
    /* plot's -o is --out */
    ck_assert_int_eq(parse(&o, err, sizeof err, "plot a.jsonl -o x.png"), 0);
    ck_assert_str_eq(o.out_path, "x.png");
    /* --version, alone or after a subcommand */
    ck_assert_int_eq(parse(&o, err, sizeof err, "--version"), 0);
    ck_assert(o.version);
    ck_assert_int_eq(parse(&o, err, sizeof err, "layer --version"), 0);
    ck_assert(o.version && o.cmd == BENCH_CMD_LAYER);
    /* given twice: the last value wins (--from and --link add up) */
    ck_assert_int_eq(
        parse(&o, err, sizeof err,
              "collectives -n 3 --iters=5 --tp 2 --tp=3 -d bf16 -d i32 -o max -o min -a 0 -a 2 "
              "-C all_reduce -C broadcast -e 1K -e 2K --json a --json b"),
        0);
    ck_assert(o.iters == 5 && o.tp == 3 && o.coll_dtype == TP_I32 && o.redop == TP_MIN &&
              o.average == BENCH_AVG_MIN && o.maxbytes == 2048);
    ck_assert_uint_eq(o.op_mask, 1u << TP_OP_BROADCAST);
    ck_assert_str_eq(o.json_path, "b");
    ck_assert_int_eq(
        parse(&o, err, sizeof err, "model --from a --from b --link x:1:1 --link y:2:2"), 0);
    ck_assert(o.n_from == 2 && o.n_links == 2);
    /* the command line is kept for the meta record */
    ck_assert_int_eq(parse(&o, err, sizeof err, "collectives -n 2"), 0);
    ck_assert_int_eq(o.argc, 4);
    ck_assert_str_eq(o.argv[1], "collectives");
}
END_TEST

START_TEST(parse_layer_model_plot)
{
    unsetenv("TP_WORLD_SIZE");
    bench_opts o;
    char err[512];
    ck_assert_int_eq(parse(&o, err, sizeof err,
                           "layer --layer linear-row --tokens 5 --hidden 13 --ffn 17 "
                           "--sweep-tp 1,2,3,4,7 --no-bias"),
                     0);
    ck_assert_str_eq(o.layer, "linear-row");
    ck_assert(o.tokens == 5 && o.hidden == 13 && o.ffn == 17 && !o.bias && o.n_sweep_tp == 5);
    ck_assert_int_eq(parse(&o, err, sizeof err,
                           "model --link a:1:2 --link b:3:4 --project-tp 2 --measure-tp 0 "
                           "--gflops 100 --from x.jsonl --fit-min 64K"),
                     0);
    ck_assert_int_eq(o.n_links, 2);
    ck_assert_str_eq(o.links[1].name, "b");
    ck_assert(o.n_project_tp == 1 && o.n_measure_tp == 0 && o.gflops == 100 && o.n_from == 1);
    ck_assert_uint_eq(o.fit_min, 65536);
    ck_assert_int_eq(parse(&o, err, sizeof err, "plot a.jsonl b.jsonl --out x.png"), 0);
    ck_assert_int_eq(o.n_from, 2);
    ck_assert_str_eq(o.out_path, "x.png");
    ck_assert_int_eq(parse(&o, err, sizeof err, "gemm --sizes 1024,2048,4096"), 0);
    ck_assert_int_eq(o.n_gemm_sizes, 3);
    ck_assert_int_eq(parse(&o, err, sizeof err, "layer --help"), 0);
    ck_assert(o.help);
    ck_assert_int_eq(parse(&o, err, sizeof err, "help model"), 0);
    ck_assert(o.help && o.cmd == BENCH_CMD_MODEL);
}
END_TEST

/* ---------------------------------------------------------- writers */

static bench_record *sample_record(void)
{
    bench_record *r = bench_rec_new("collective");
    bench_rec_str(r, "backend", "loop\"back");
    bench_rec_int(r, "ranks", 4);
    bench_rec_int(r, "bytes", (int64_t)1 << 40);
    bench_rec_dbl(r, "time_us", 12.5);
    bench_rec_dbl(r, "busbw_gbps", NAN);
    bench_rec_bool(r, "checked", true);
    bench_rec_str(r, "note", "a,b\nc");
    return r;
}

START_TEST(json_writer)
{
    bench_record *r = sample_record();
    GString *s = g_string_new(NULL);
    bench_json_line(r, s);
    /* json-glib's compact form (no spaces), fields in their order */
    ck_assert_str_eq(s->str, "{\"kind\":\"collective\",\"backend\":\"loop\\\"back\",\"ranks\":4,"
                             "\"bytes\":1099511627776,\"time_us\":12.5,\"busbw_gbps\":null,"
                             "\"checked\":true,\"note\":\"a,b\\nc\"}");
    /* replacing a field keeps its position */
    bench_rec_int(r, "ranks", 2);
    g_string_truncate(s, 0);
    bench_json_line(r, s);
    ck_assert_ptr_nonnull(strstr(s->str, "\"backend\":\"loop\\\"back\",\"ranks\":2,\"bytes\""));
    /* a nested value (the meta record's env) is written as JSON, not a string */
    bench_rec_json(r, "env", "{\"TP_X\": \"1\"}");
    g_string_truncate(s, 0);
    bench_json_line(r, s);
    ck_assert(g_str_has_suffix(s->str, ",\"env\":{\"TP_X\":\"1\"}}"));
    g_string_free(s, TRUE);
    bench_rec_free(r);
}
END_TEST

START_TEST(csv_writer)
{
    bench_record *r = sample_record();
    GString *s = g_string_new(NULL);
    bench_csv_header(r, s);
    ck_assert_str_eq(s->str, "kind,backend,ranks,bytes,time_us,busbw_gbps,checked,note");
    g_string_truncate(s, 0);
    bench_csv_row(r, s);
    ck_assert_str_eq(s->str, "collective,\"loop\"\"back\",4,1099511627776,12.5,,true,\"a,b\nc\"");

    /* grouped by kind, one header per group, blank line between groups */
    GPtrArray *recs = g_ptr_array_new_with_free_func((GDestroyNotify)bench_rec_free);
    for (int i = 0; i < 2; i++) {
        bench_record *a = bench_rec_new("memcpy");
        bench_rec_int(a, "threads", i + 1);
        g_ptr_array_add(recs, a);
        bench_record *b = bench_rec_new("collective");
        bench_rec_int(b, "bytes", 8 << i);
        g_ptr_array_add(recs, b);
    }
    g_string_truncate(s, 0);
    bench_csv_write_all(recs, s);
    ck_assert_str_eq(
        s->str, "kind,threads\nmemcpy,1\nmemcpy,2\n\nkind,bytes\ncollective,8\ncollective,16\n");
    g_ptr_array_free(recs, TRUE);
    g_string_free(s, TRUE);
    bench_rec_free(r);
}
END_TEST

START_TEST(json_reader)
{
    bench_record *r = sample_record();
    GString *s = g_string_new(NULL);
    bench_json_line(r, s);
    char err[200];
    bench_record *back = bench_json_parse(s->str, err, sizeof err);
    ck_assert_msg(back != NULL, "%s", err);
    ck_assert(bench_rec_same_keys(r, back));
    ck_assert_str_eq(bench_rec_kind(back), "collective");
    ck_assert_str_eq(bench_rec_get_str(back, "backend"), "loop\"back");
    ck_assert_str_eq(bench_rec_get_str(back, "note"), "a,b\nc");
    ck_assert(bench_rec_get_num(back, "bytes", 0) == 1099511627776.0);
    ck_assert(bench_rec_get_num(back, "time_us", 0) == 12.5);
    ck_assert(bench_rec_get_num(back, "busbw_gbps", -1) == -1); /* null -> default */
    ck_assert(bench_rec_get(back, "checked")->type == BENCH_F_BOOL &&
              bench_rec_get(back, "checked")->b);
    bench_rec_free(back);

    back = bench_json_parse("  {\"a\": -1.5e3, \"u\": \"\\u00e9\\t\"}  \n", err, sizeof err);
    ck_assert_ptr_nonnull(back);
    ck_assert(bench_rec_get_num(back, "a", 0) == -1500);
    ck_assert_str_eq(bench_rec_get_str(back, "u"), "\xc3\xa9\t");
    bench_rec_free(back);

    /* objects and arrays inside come back as their JSON text */
    back = bench_json_parse("{\"a\": {\"b\": 1}, \"c\": [1, \"x\"], \"d\": 2}", err, sizeof err);
    ck_assert_msg(back != NULL, "%s", err);
    ck_assert(bench_rec_get(back, "a")->type == BENCH_F_JSON);
    ck_assert_str_eq(bench_rec_get(back, "a")->s, "{\"b\":1}");
    ck_assert_str_eq(bench_rec_get(back, "c")->s, "[1,\"x\"]");
    ck_assert(bench_rec_get_num(back, "d", 0) == 2);
    ck_assert_ptr_null(bench_rec_get_str(back, "a")); /* not a string */
    bench_rec_free(back);

    const char *bad[] = {"",
                         "   ",
                         "[1]",
                         "42",
                         "{\"a\" 1}",
                         "{\"a\": 1,}",
                         "{\"a\": 1} x",
                         "{\"a\": \"open}",
                         "{\"a\": tru}"};
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++)
        ck_assert_msg(bench_json_parse(bad[i], err, sizeof err) == NULL, "'%s' accepted", bad[i]);
    g_string_free(s, TRUE);
    bench_rec_free(r);
}
END_TEST

START_TEST(sink_files)
{
    char dir[] = "/tmp/tp-bench-unit-XXXXXX";
    ck_assert_ptr_nonnull(g_mkdtemp(dir));
    char *json = g_build_filename(dir, "r.jsonl", NULL),
         *csv = g_build_filename(dir, "r.csv", NULL);
    bench_sink s;
    bench_sink_init(&s, json, csv);
    bench_record *r = sample_record();
    bench_sink_emit(&s, r);
    bench_rec_int(r, "ranks", 7);
    bench_sink_emit(&s, r);
    ck_assert_int_eq(bench_sink_close(&s), 0);

    GPtrArray *back = g_ptr_array_new_with_free_func((GDestroyNotify)bench_rec_free);
    char err[256];
    ck_assert_int_eq(bench_jsonl_read(json, back, err, sizeof err), 0);
    ck_assert_uint_eq(back->len, 2);
    ck_assert(bench_rec_get_num(g_ptr_array_index(back, 1), "ranks", 0) == 7);
    gchar *text = NULL;
    ck_assert(g_file_get_contents(csv, &text, NULL, NULL));
    ck_assert_str_eq(text, "kind,backend,ranks,bytes,time_us,busbw_gbps,checked,note\n"
                           "collective,\"loop\"\"back\",4,1099511627776,12.5,,true,\"a,b\nc\"\n"
                           "collective,\"loop\"\"back\",7,1099511627776,12.5,,true,\"a,b\nc\"\n");
    g_free(text);

    /* a broken line is reported with file and line number */
    ck_assert(g_file_set_contents(json, "{\"kind\": \"x\"}\n\nnot json\n", -1, NULL));
    g_ptr_array_set_size(back, 0);
    ck_assert_int_eq(bench_jsonl_read(json, back, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, ":3:"));
    ck_assert_int_eq(bench_jsonl_read("/nonexistent/x.jsonl", back, err, sizeof err), -1);

    /* an unwritable path fails at close with a message */
    bench_sink_init(&s, "/nonexistent/dir/r.jsonl", NULL);
    bench_sink_emit(&s, r);
    ck_assert_int_eq(bench_sink_close(&s), -1);
    ck_assert_ptr_nonnull(strstr(s.err, "/nonexistent/dir/r.jsonl"));

    g_ptr_array_free(back, TRUE);
    bench_rec_free(r);
    unlink(json);
    unlink(csv);
    rmdir(dir);
    g_free(json);
    g_free(csv);
}
END_TEST

/* The meta record: every field present and right, written as JSON and
 * parsed back; the environment filtered to TP_*, OMPI_*, NCCL_* and a
 * secret's value never written. */
START_TEST(meta_record)
{
    char *const envp[] = {"TP_TCP_SECRET=s3cr3t-value",
                          "TP_BACKEND=loopback",
                          "OMPI_COMM_WORLD_RANK=0",
                          "NCCL_DEBUG=INFO",
                          "NCCL_IB_TOKEN=tok-value",
                          "HOME=/home/x",
                          "PATH=/bin",
                          "XTP_NOT=1",
                          NULL};
    char *const argv[] = {"tp-bench", "collectives", "--json", "a b.jsonl", NULL};
    GDateTime *before = g_date_time_new_now_utc();
    bench_record *m = bench_meta_new(4, argv, envp);
    GDateTime *after = g_date_time_new_now_utc();
    bench_meta_set_plugin(m, "backend", "loopback", "/x/libtp-loopback.so", "0.1.0");
    bench_rec_int(m, "world_size", 3);
    GString *line = g_string_new(NULL);
    bench_json_line(m, line);
    ck_assert_ptr_null(strstr(line->str, "s3cr3t"));
    ck_assert_ptr_null(strstr(line->str, "tok-value"));
    ck_assert_ptr_null(strstr(line->str, "/home/x"));

    char err[200];
    bench_record *back = bench_json_parse(line->str, err, sizeof err);
    ck_assert_msg(back, "%s", err);
    static const char *const keys[] = {
        "kind",           "tp_version", "git_revision", "date_utc",        "host",   "cpu_model",
        "cpu_cores",      "backend",    "backend_path", "backend_version", "device", "device_path",
        "device_version", "world_size", "env",          "command"};
    ck_assert_int_eq(back->n, (int)G_N_ELEMENTS(keys));
    for (size_t i = 0; i < G_N_ELEMENTS(keys); i++)
        ck_assert_str_eq(back->f[i].key, keys[i]); /* present, in this order */
    ck_assert_str_eq(bench_rec_kind(back), "meta");
    ck_assert_str_eq(bench_rec_get_str(back, "tp_version"), TP_VERSION);
    ck_assert(strlen(bench_rec_get_str(back, "git_revision")) > 0);
    ck_assert_str_eq(bench_rec_get_str(back, "host"), g_get_host_name());
    ck_assert(bench_rec_get_num(back, "cpu_cores", 0) == g_get_num_processors());
    ck_assert_str_eq(bench_rec_get_str(back, "backend"), "loopback");
    ck_assert_str_eq(bench_rec_get_str(back, "backend_path"), "/x/libtp-loopback.so");
    ck_assert_str_eq(bench_rec_get_str(back, "backend_version"), "0.1.0");
    ck_assert(bench_rec_get(back, "device")->type == BENCH_F_NULL); /* not set: null */
    ck_assert(bench_rec_get_num(back, "world_size", 0) == 3);
    /* the date: UTC, ISO 8601, between the clock reads around the call */
    GDateTime *d = g_date_time_new_from_iso8601(bench_rec_get_str(back, "date_utc"), NULL);
    ck_assert_ptr_nonnull(d);
    ck_assert(g_str_has_suffix(bench_rec_get_str(back, "date_utc"), "Z"));
    ck_assert(g_date_time_to_unix(d) >= g_date_time_to_unix(before) &&
              g_date_time_to_unix(d) <= g_date_time_to_unix(after));
    /* the command line parses back to argv */
    gchar **args = NULL;
    int argc = 0;
    ck_assert(g_shell_parse_argv(bench_rec_get_str(back, "command"), &argc, &args, NULL));
    ck_assert_int_eq(argc, 4);
    for (int i = 0; i < 4; i++)
        ck_assert_str_eq(args[i], argv[i]);
    g_strfreev(args);
    /* env: exactly the wanted variables, sorted, the secrets redacted */
    ck_assert(bench_rec_get(back, "env")->type == BENCH_F_JSON);
    ck_assert_str_eq(bench_rec_get(back, "env")->s,
                     "{\"NCCL_DEBUG\":\"INFO\",\"NCCL_IB_TOKEN\":\"" BENCH_META_REDACTED
                     "\",\"OMPI_COMM_WORLD_RANK\":\"0\",\"TP_BACKEND\":\"loopback\","
                     "\"TP_TCP_SECRET\":\"" BENCH_META_REDACTED "\"}");
    /* the CSV row holds the same env text in one cell */
    g_string_truncate(line, 0);
    bench_csv_row(back, line);
    ck_assert_ptr_nonnull(strstr(line->str, "\"{\"\"NCCL_DEBUG\"\":\"\"INFO\"\""));
    ck_assert_ptr_null(strstr(line->str, "s3cr3t"));

    /* this process's environment when envp is NULL */
    g_setenv("TP_TCP_SECRET", "other-s3cr3t", TRUE);
    bench_record *own = bench_meta_new(0, NULL, NULL);
    g_string_truncate(line, 0);
    bench_json_line(own, line);
    ck_assert_ptr_null(strstr(line->str, "other-s3cr3t"));
    ck_assert_ptr_nonnull(strstr(line->str, "\"TP_TCP_SECRET\":\"" BENCH_META_REDACTED "\""));
    g_unsetenv("TP_TCP_SECRET");

    bench_rec_free(own);
    bench_rec_free(back);
    bench_rec_free(m);
    g_string_free(line, TRUE);
    g_date_time_unref(d);
    g_date_time_unref(before);
    g_date_time_unref(after);
}
END_TEST

/* A sink with a meta record writes it first, once, in JSON and CSV. */
START_TEST(sink_meta_first)
{
    char dir[] = "/tmp/tp-bench-unit-XXXXXX";
    ck_assert_ptr_nonnull(g_mkdtemp(dir));
    char *json = g_build_filename(dir, "m.jsonl", NULL),
         *csv = g_build_filename(dir, "m.csv", NULL);
    bench_sink s;
    bench_sink_init(&s, json, csv);
    bench_record *m = bench_rec_new("meta");
    bench_rec_str(m, "host", "h");
    bench_sink_set_meta(&s, m);
    bench_rec_str(m, "host", "h2"); /* may change until written */
    bench_record *r = bench_rec_new("collective");
    bench_rec_int(r, "bytes", 8);
    bench_sink_emit(&s, r);
    bench_sink_emit(&s, r);
    ck_assert_int_eq(bench_sink_close(&s), 0);
    GPtrArray *back = g_ptr_array_new_with_free_func((GDestroyNotify)bench_rec_free);
    char err[256];
    ck_assert_int_eq(bench_jsonl_read(json, back, err, sizeof err), 0);
    ck_assert_uint_eq(back->len, 3);
    ck_assert_str_eq(bench_rec_kind(g_ptr_array_index(back, 0)), "meta");
    ck_assert_str_eq(bench_rec_get_str(g_ptr_array_index(back, 0), "host"), "h2");
    ck_assert_str_eq(bench_rec_kind(g_ptr_array_index(back, 2)), "collective");
    gchar *text = NULL;
    ck_assert(g_file_get_contents(csv, &text, NULL, NULL));
    ck_assert_str_eq(text, "kind,host\nmeta,h2\n\nkind,bytes\ncollective,8\ncollective,8\n");
    g_free(text);
    g_ptr_array_free(back, TRUE);
    bench_rec_free(r);
    unlink(json);
    unlink(csv);
    rmdir(dir);
    g_free(json);
    g_free(csv);
}
END_TEST

/* -------------------------------------------------------------- fit */

/* Synthetic times from known alpha/beta must give them back. Exact data:
 * the normal equations are solved in double with condition number ~1e6
 * here, so 1e-6 relative is generous. */
START_TEST(fit_recovers_exact)
{
    const double alpha = 5e-6, beta = 1.0 / 10e9; /* 5 us, 10 GB/s */
    int ops[] = {TP_OP_ALL_REDUCE, TP_OP_ALL_GATHER, TP_OP_REDUCE_SCATTER, TP_OP_BROADCAST};
    for (size_t oi = 0; oi < G_N_ELEMENTS(ops); oi++) {
        for (int joint = 0; joint < 2; joint++) {
            bench_sample s[128];
            int n = 0;
            int ps[] = {2, 3, 4, 7};
            for (size_t pi = 0; pi < (joint ? 4u : 1u); pi++)
                for (double b = 8; b <= 256.0 * 1024 * 1024; b *= 4) {
                    int p = joint ? ps[pi] : 4;
                    s[n++] = (bench_sample){ops[oi], p, b,
                                            bench_model_lat_steps(ops[oi], p) * alpha +
                                                bench_model_bw_factor(ops[oi], p) * b * beta};
                }
            bench_fit f;
            ck_assert_int_eq(bench_fit_hockney(s, n, 0, &f), 0);
            ck_assert_msg(fabs(f.alpha_s - alpha) <= 1e-6 * alpha, "op %d: alpha %.9g", ops[oi],
                          f.alpha_s);
            ck_assert_msg(fabs(f.beta_s - beta) <= 1e-6 * beta, "op %d: beta %.9g", ops[oi],
                          f.beta_s);
            ck_assert(!f.alpha_clamped);
            ck_assert_int_eq(f.n, n);
        }
    }
}
END_TEST

/* With +-2% deterministic noise, the relative-error fit stays within 5% on
 * both parameters (each point is within 2%, so a good fit must be close). */
START_TEST(fit_recovers_noisy)
{
    const double alpha = 2e-6, beta = 1.0 / 40e9;
    bench_sample s[64];
    int n = 0;
    for (double b = 8; b <= 64.0 * 1024 * 1024; b *= 2, n++) {
        double noise = 1.0 + 0.02 * ((n % 3) - 1); /* 0.98, 1.00, 1.02 */
        s[n] = (bench_sample){TP_OP_ALL_REDUCE, 2, b, (2 * alpha + b * beta) * noise};
    }
    bench_fit f;
    ck_assert_int_eq(bench_fit_hockney(s, n, 0, &f), 0);
    ck_assert_msg(fabs(f.alpha_s - alpha) <= 0.05 * alpha, "alpha %.9g", f.alpha_s);
    ck_assert_msg(fabs(f.beta_s - beta) <= 0.05 * beta, "beta %.9g", f.beta_s);
    for (int i = 0; i < n; i++) {
        double m = bench_model_time(&f, TP_OP_ALL_REDUCE, 2, s[i].bytes);
        ck_assert(fabs(m - s[i].seconds) <= 0.06 * s[i].seconds);
    }
}
END_TEST

START_TEST(fit_edge_cases)
{
    bench_fit f;
    /* one size only: alpha and beta cannot be separated */
    bench_sample one[] = {{TP_OP_ALL_REDUCE, 2, 1024, 1e-6}, {TP_OP_ALL_REDUCE, 2, 1024, 1.1e-6}};
    ck_assert_int_eq(bench_fit_hockney(one, 2, 0, &f), -1);
    /* p = 1 samples are ignored */
    bench_sample p1[] = {{TP_OP_ALL_REDUCE, 1, 8, 1e-7}, {TP_OP_ALL_REDUCE, 1, 1 << 20, 1e-4}};
    ck_assert_int_eq(bench_fit_hockney(p1, 2, 0, &f), -1);
    ck_assert_int_eq(f.n, 0);
    /* min_bytes drops small sizes */
    bench_sample s[] = {{TP_OP_ALL_REDUCE, 2, 8, 1},
                        {TP_OP_ALL_REDUCE, 2, 1e6, 2e-6 + 1e6 * 1e-10},
                        {TP_OP_ALL_REDUCE, 2, 4e6, 2e-6 + 4e6 * 1e-10}};
    ck_assert_int_eq(bench_fit_hockney(s, 3, 1000, &f), 0);
    ck_assert_int_eq(f.n, 2);
    ck_assert(fabs(f.alpha_s - 1e-6) <= 1e-12 && fabs(f.beta_s - 1e-10) <= 1e-16);
    /* pure bandwidth data with a tiny negative intercept: alpha clamped to 0 */
    bench_sample bw[] = {{TP_OP_ALL_REDUCE, 2, 1e6, 0.999e-4},
                         {TP_OP_ALL_REDUCE, 2, 2e6, 2e-4},
                         {TP_OP_ALL_REDUCE, 2, 4e6, 4e-4}};
    ck_assert_int_eq(bench_fit_hockney(bw, 3, 0, &f), 0);
    ck_assert(f.alpha_clamped && f.alpha_s == 0 && f.beta_s > 0);
}
END_TEST

/* Two regimes (cache vs DRAM): exact synthetic data gives back the break
 * and both models; one regime stays one. Exact data: the minimax search
 * runs to rounding (bisection and golden section to machine precision), so
 * 1e-6 relative is generous. */
START_TEST(fit_two_regimes)
{
    const double a1 = 1e-6, b1 = 1.0 / 20e9, a2 = 30e-6, b2 = 1.0 / 5e9;
    bench_sample s[64];
    int n = 0;
    for (double b = 64; b <= 256.0 * 1024 * 1024; b *= 2) {
        bool small = b <= 4.0 * 1024 * 1024;
        double t = 2 * (small ? a1 : a2) + b * (small ? b1 : b2); /* p = 2: L = 2, B = 1 */
        s[n++] = (bench_sample){TP_OP_ALL_REDUCE, 2, b, t};
    }
    bench_fit2 f;
    ck_assert_int_eq(bench_fit_piecewise(s, n, 0, 65536, &f), 0);
    ck_assert_int_eq(f.nseg, 2);
    ck_assert(f.hi_bytes[0] == 4.0 * 1024 * 1024);
    ck_assert(f.lo_bytes[0] == 64 && f.lo_bytes[1] == 8.0 * 1024 * 1024 &&
              f.hi_bytes[1] == 256.0 * 1024 * 1024);
    ck_assert(fabs(f.seg[0].alpha_s - a1) <= 1e-6 * a1 && fabs(f.seg[0].beta_s - b1) <= 1e-6 * b1);
    ck_assert(fabs(f.seg[1].alpha_s - a2) <= 1e-6 * a2 && fabs(f.seg[1].beta_s - b2) <= 1e-6 * b2);
    for (int i = 0; i < n; i++)
        ck_assert(fabs(bench_model2_time(&f, TP_OP_ALL_REDUCE, 2, s[i].bytes) - s[i].seconds) <=
                  1e-6 * s[i].seconds);
    ck_assert(f.max_err <= 1e-6);
    ck_assert_int_eq(f.n_err, 13); /* 64K .. 256M */

    n = 0;
    for (double b = 64; b <= 256.0 * 1024 * 1024; b *= 2)
        s[n++] = (bench_sample){TP_OP_ALL_REDUCE, 2, b, 2 * a1 + b * b1};
    ck_assert_int_eq(bench_fit_piecewise(s, n, 0, 65536, &f), 0);
    ck_assert_int_eq(f.nseg, 1);
    ck_assert(fabs(f.seg[0].beta_s - b1) <= 1e-6 * b1);
    ck_assert(fabs(bench_model2_time(&f, TP_OP_ALL_REDUCE, 2, 1e9) - (2 * a1 + 1e9 * b1)) <= 1e-6);
}
END_TEST

/* Three regimes (latency-bound cache, cache bandwidth, DRAM) on 4 ranks,
 * from 1 KiB to 256 MiB: both breaks and all three lines come back; with
 * +-2% deterministic noise (period 3, so every range of >= 3 sizes holds
 * the worst high and low) the breaks still come back, the largest error at
 * >= 64 KiB is about the noise (<= 2.5%: a fitted line cannot do better
 * than 2% on points 2% above and below one true line, and the minimax line
 * stays within the noise band), and alpha, beta within 10% (a 2% shift at
 * either end of a range of 3+ octaves moves a line's slope or intercept by
 * well under that). Then a single noisy line stays one regime. */
START_TEST(fit_three_regimes)
{
    const double al[] = {4e-6, 1e-6, 50e-6}, be[] = {1.0 / 40e9, 1.0 / 20e9, 1.0 / 6e9};
    const double brk[] = {128.0 * 1024, 8.0 * 1024 * 1024};
    const int p = 4;
    const double L = bench_model_lat_steps(TP_OP_ALL_REDUCE, p),
                 B = bench_model_bw_factor(TP_OP_ALL_REDUCE, p);
    for (int noisy = 0; noisy < 2; noisy++) {
        bench_sample s[64];
        int n = 0;
        for (double b = 1024; b <= 256.0 * 1024 * 1024; b *= 2, n++) {
            int r = b <= brk[0] ? 0 : b <= brk[1] ? 1 : 2;
            double noise = noisy ? 1.0 + 0.02 * ((n % 3) - 1) : 1.0;
            s[n] = (bench_sample){TP_OP_ALL_REDUCE, p, b, (L * al[r] + B * b * be[r]) * noise};
        }
        bench_fit2 f;
        ck_assert_int_eq(bench_fit_piecewise(s, n, 0, 65536, &f), 0);
        ck_assert_int_eq(f.nseg, 3);
        ck_assert_msg(f.hi_bytes[0] == brk[0] && f.hi_bytes[1] == brk[1],
                      "noisy %d: breaks %.0f %.0f", noisy, f.hi_bytes[0], f.hi_bytes[1]);
        ck_assert(f.lo_bytes[0] == 1024 && f.lo_bytes[1] == 2 * brk[0] &&
                  f.lo_bytes[2] == 2 * brk[1]);
        double tol = noisy ? 0.10 : 1e-6;
        for (int r = 0; r < 3; r++) {
            ck_assert_msg(fabs(f.seg[r].alpha_s - al[r]) <= tol * al[r],
                          "noisy %d regime %d: alpha %.9g", noisy, r, f.seg[r].alpha_s);
            ck_assert_msg(fabs(f.seg[r].beta_s - be[r]) <= tol * be[r],
                          "noisy %d regime %d: beta %.9g", noisy, r, f.seg[r].beta_s);
        }
        ck_assert(f.max_err <= (noisy ? 0.025 : 1e-6));
        /* the reported error is the one of the per-size model */
        double worst = 0;
        for (int i = 0; i < n; i++)
            if (s[i].bytes >= 65536)
                worst = fmax(worst, fabs(bench_model2_time(&f, TP_OP_ALL_REDUCE, p, s[i].bytes) /
                                             s[i].seconds -
                                         1));
        ck_assert(fabs(worst - f.max_err) <= 1e-12);
        /* sizes between and beyond the fitted ones take the lower regime, the last past the end */
        ck_assert_int_eq(bench_fit2_regime(&f, brk[0] + 1), 1);
        ck_assert_int_eq(bench_fit2_regime(&f, brk[1]), 1);
        ck_assert_int_eq(bench_fit2_regime(&f, 1e12), 2);
        ck_assert_int_eq(bench_fit2_regime(&f, 1), 0);
    }
    bench_sample s[64];
    int n = 0;
    for (double b = 1024; b <= 256.0 * 1024 * 1024; b *= 2, n++)
        s[n] = (bench_sample){TP_OP_ALL_REDUCE, p, b,
                              (L * al[1] + B * b * be[1]) * (1.0 + 0.02 * ((n % 3) - 1))};
    bench_fit2 f;
    ck_assert_int_eq(bench_fit_piecewise(s, n, 0, 65536, &f), 0);
    ck_assert_int_eq(f.nseg, 1);
}
END_TEST

/* Regimes never hold fewer than 3 sizes: a jump in the last two sizes
 * cannot get a regime of its own, and the ranges tile the sizes. The
 * minimax line of five noisy points is at least as good as the best point
 * of a 401 x 401 grid over (alpha, beta) covering it (exact up to rounding,
 * hence 1e-9 slack on an error of order 0.1). */
START_TEST(fit_regime_rules)
{
    bench_sample s[32];
    int n = 0;
    for (double b = 1024; b <= 64.0 * 1024 * 1024; b *= 2, n++) {
        double t = 1e-6 + b / 10e9;
        if (n >= 15)
            t *= 3; /* the last two sizes */
        s[n] = (bench_sample){TP_OP_ALL_REDUCE, 2, b, t};
    }
    bench_fit2 f;
    ck_assert_int_eq(bench_fit_piecewise(s, n, 0, 65536, &f), 0);
    ck_assert_int_ge(f.nseg, 1);
    ck_assert_int_le(f.nseg, BENCH_FIT_MAX_REGIMES);
    ck_assert(f.lo_bytes[0] == 1024 && f.hi_bytes[f.nseg - 1] == 64.0 * 1024 * 1024);
    int total = 0;
    for (int r = 0; r < f.nseg; r++) {
        int nsz = 0;
        for (int i = 0; i < n; i++)
            nsz += s[i].bytes >= f.lo_bytes[r] && s[i].bytes <= f.hi_bytes[r];
        ck_assert_int_eq(nsz, f.seg[r].n);
        if (f.nseg > 1)
            ck_assert_int_ge(nsz, BENCH_FIT_MIN_SIZES);
        if (r > 0)
            ck_assert(f.lo_bytes[r] == 2 * f.hi_bytes[r - 1]);
        total += nsz;
    }
    ck_assert_int_eq(total, n);

    /* minimax against a brute-force grid over (alpha, beta): the search must
     * be at least as good as every grid point (up to rounding) */
    bench_sample q[] = {{TP_OP_ALL_REDUCE, 2, 1000, 1.0e-6},
                        {TP_OP_ALL_REDUCE, 2, 3000, 1.3e-6},
                        {TP_OP_ALL_REDUCE, 2, 7000, 2.9e-6},
                        {TP_OP_ALL_REDUCE, 2, 13000, 3.1e-6},
                        {TP_OP_ALL_REDUCE, 2, 17000, 5.0e-6}};
    bench_fit m;
    double err;
    ck_assert_int_eq(bench_fit_minimax(q, 5, 0, &m, &err), 0);
    double worst = 0;
    for (int i = 0; i < 5; i++)
        worst = fmax(
            worst, fabs(bench_model_time(&m, TP_OP_ALL_REDUCE, 2, q[i].bytes) / q[i].seconds - 1));
    ck_assert(fabs(worst - err) <= 1e-12);
    double grid_best = INFINITY;
    for (int ia = 0; ia <= 400; ia++)
        for (int ib = 0; ib <= 400; ib++) {
            bench_fit g = {.alpha_s = ia * 1e-6 / 400, .beta_s = ib * 1e-9 / 400};
            double w = 0;
            for (int i = 0; i < 5; i++)
                w = fmax(
                    w,
                    fabs(bench_model_time(&g, TP_OP_ALL_REDUCE, 2, q[i].bytes) / q[i].seconds - 1));
            grid_best = fmin(grid_best, w);
        }
    ck_assert_msg(err <= grid_best + 1e-9, "minimax %.9g, grid %.9g", err, grid_best);
    /* non-finite samples are skipped, not fitted */
    bench_sample bad[] = {{TP_OP_ALL_REDUCE, 2, 1000, NAN},
                          {TP_OP_ALL_REDUCE, 2, INFINITY, 1e-3},
                          {TP_OP_ALL_REDUCE, 2, NAN, 1e-3},
                          {TP_OP_ALL_REDUCE, 2, 1000, 2e-6 + 1000 * 1e-10},
                          {TP_OP_ALL_REDUCE, 2, 1e6, 2e-6 + 1e6 * 1e-10},
                          {TP_OP_ALL_REDUCE, 2, 4e6, 2e-6 + 4e6 * 1e-10}};
    ck_assert_int_eq(bench_fit_piecewise(bad, 6, 0, 65536, &f), 0);
    ck_assert_int_eq(f.nseg, 1);
    ck_assert_int_eq(f.seg[0].n, 3);
    ck_assert(fabs(f.seg[0].alpha_s - 1e-6) <= 1e-6 * 1e-6 &&
              fabs(f.seg[0].beta_s - 1e-10) <= 1e-6 * 1e-10);
    /* one size: not separable */
    bench_sample one[] = {{TP_OP_ALL_REDUCE, 2, 1024, 1e-6}, {TP_OP_ALL_REDUCE, 2, 1024, 1.1e-6}};
    ck_assert_int_eq(bench_fit_minimax(one, 2, 0, &m, &err), -1);
    ck_assert_int_eq(bench_fit_piecewise(one, 2, 0, 65536, &f), -1);
    ck_assert_int_eq(bench_fit_piecewise(one, 0, 0, 65536, &f), -1);
}
END_TEST

/* Placement fields: written as given; read back; a record from before
 * them reads as one node of its ranks, link "none". */
START_TEST(placement_fields)
{
    bench_record *r = bench_rec_new("collective");
    bench_rec_int(r, "ranks", 4);
    bench_place pl;
    bench_place_from_rec(r, &pl);
    ck_assert_int_eq(pl.nodes, 1);
    ck_assert_int_eq(pl.ranks_per_node, 4);
    ck_assert_str_eq(pl.link, "none");
    bench_place emu = {2, 2, "1gbit,50us"};
    bench_rec_place(r, &emu);
    GString *line = g_string_new(NULL);
    bench_json_line(r, line);
    ck_assert_ptr_nonnull(
        strstr(line->str, "\"nodes\":2,\"ranks_per_node\":2,\"link\":\"1gbit,50us\""));
    char err[128];
    bench_record *back = bench_json_parse(line->str, err, sizeof err);
    ck_assert_msg(back, "%s", err);
    bench_place_from_rec(back, &pl);
    ck_assert_int_eq(pl.nodes, 2);
    ck_assert_int_eq(pl.ranks_per_node, 2);
    ck_assert_str_eq(pl.link, "1gbit,50us");
    bench_place none = {1, 4, ""}; /* an empty link is written as "none" */
    bench_record *r2 = bench_rec_new("layer");
    bench_rec_place(r2, &none);
    ck_assert_str_eq(bench_rec_get_str(r2, "link"), "none");
    bench_rec_free(r2);
    bench_rec_free(back);
    bench_rec_free(r);
    g_string_free(line, TRUE);
}
END_TEST

START_TEST(links)
{
    const bench_link *p;
    int n = bench_link_presets(&p);
    ck_assert_int_ge(n, 3);
    const bench_link *nv = bench_link_find("nvlink4"), *ib = bench_link_find("ib-ndr");
    ck_assert_ptr_nonnull(nv);
    ck_assert_ptr_nonnull(ib);
    ck_assert_ptr_nonnull(bench_link_find("pcie4"));
    ck_assert_ptr_null(bench_link_find("nvlink5"));
    bench_fit f = bench_link_fit(nv);
    REL_EQ(f.beta_s, 1.0 / 450e9);
    REL_EQ(f.alpha_s, nv->alpha_us * 1e-6);
    /* 1 GB all_reduce on 8 ranks over 450 GB/s: 14 steps of alpha + 1.75 GB / 450 GB/s */
    REL_EQ(bench_model_time(&f, TP_OP_ALL_REDUCE, 8, 1e9), 14 * nv->alpha_us * 1e-6 + 1.75 / 450.0);
}
END_TEST

/* ----------------------------------------------------------- layers */

START_TEST(layer_table)
{
    bench_opts o;
    bench_opts_init(&o);
    o.tokens = 5;
    o.hidden = 13;
    o.ffn = 17;
    ck_assert_ptr_null(bench_layer_find("attention-ish"));
    const char *what;
    bench_layer_comm c[8];
    const char *names[] = {"linear-col", "linear-row", "mlp"};
    /* Megatron's f/g: forward column 0, row 1, MLP 1 all-reduce; backward
     * column 1 (input gradient), row 0 (input is parallel), MLP 1 */
    int expect_calls[2][3] = {{0, 1, 1}, {1, 0, 1}};
    double expect_flops[] = {2.0 * 5 * 13 * 17, 2.0 * 5 * 13 * 17, 4.0 * 5 * 13 * 17};
    for (int i = 0; i < 3; i++) {
        const bench_layer_desc *d = bench_layer_find(names[i]);
        ck_assert_ptr_nonnull(d);
        ck_assert_int_eq(bench_layer_split_dim(d, &o, &what), 17);
        ck_assert_str_eq(what, "--ffn");
        ck_assert(bench_layer_flops(d, &o, 0) == expect_flops[i]);
        ck_assert(bench_layer_flops(d, &o, 1) == 2 * expect_flops[i]); /* dX and dW */
        for (int ph = 0; ph < 2; ph++)
            for (int T = 1; T <= 7; T++) {
                int n = bench_layer_expected_comm(d, &o, T, ph, c, 8);
                int calls = 0;
                for (int k = 0; k < n; k++) {
                    calls += c[k].calls;
                    ck_assert_int_eq(c[k].op, TP_OP_ALL_REDUCE);
                    ck_assert(c[k].bytes == 5.0 * 13 * 4); /* b*s*h f32 */
                    /* seed's formula: a ring moves 2(T-1)/T * b*s*h elements per rank */
                    REL_EQ(c[k].bytes * bench_busbw_factor(c[k].op, T) + 1.0,
                           2.0 * (T - 1) / T * 5 * 13 * 4 + 1.0);
                }
                ck_assert_msg(calls == expect_calls[ph][i], "%s phase %d: %d calls", names[i], ph,
                              calls);
            }
    }
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("bench-unit");
    TCase *t = tcase_create("arith");
    tcase_add_test(t, busbw_factors);
    tcase_add_test(t, bandwidth_arithmetic);
    tcase_add_test(t, op_counts);
    tcase_add_test(t, summary);
    tcase_add_test(t, model_coefficients);
    suite_add_tcase(s, t);
    t = tcase_create("options");
    tcase_add_checked_fixture(t, NULL, free_last_argv);
    tcase_add_test(t, sizes);
    tcase_add_test(t, lists_and_links);
    tcase_add_test(t, parse_collectives);
    tcase_add_test(t, parse_errors);
    tcase_add_test(t, parse_nccl_flags);
    tcase_add_test(t, parse_layer_model_plot);
    suite_add_tcase(s, t);
    t = tcase_create("output");
    tcase_add_test(t, json_writer);
    tcase_add_test(t, csv_writer);
    tcase_add_test(t, json_reader);
    tcase_add_test(t, sink_files);
    tcase_add_test(t, meta_record);
    tcase_add_test(t, sink_meta_first);
    suite_add_tcase(s, t);
    t = tcase_create("model");
    tcase_add_test(t, fit_recovers_exact);
    tcase_add_test(t, fit_recovers_noisy);
    tcase_add_test(t, fit_edge_cases);
    tcase_add_test(t, fit_two_regimes);
    tcase_add_test(t, fit_three_regimes);
    tcase_add_test(t, fit_regime_rules);
    tcase_add_test(t, links);
    tcase_add_test(t, layer_table);
    tcase_add_test(t, placement_fields);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
