/* SPDX-License-Identifier: MIT */
/* test-bench-cli.c — tp-bench as a user runs it, on the loopback backend:
 * exit codes and messages for bad arguments, the collective counts that
 * `layer` reports, `--check` on correct and on corrupted results, `model`
 * recovering alpha/beta from a JSON-lines file. No timing assertions. */
#include <check.h>
#include <glib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "bench-run.h"

static const char *tp_bench; /* path, from $TP_BENCH */
/* JSON numbers are written by json-glib with 17 significant digits (CSV:
 * 9): a relative error up to 5e-9 is rounding, anything larger a wrong
 * value. */
#define JSON_REL 1e-8
static char tmpdir[64];

static run_result run(const char *args, const char *const *env_extra)
{
    return bench_run(tp_bench, args, env_extra);
}

/* Every record of a JSON-lines file. */
static GPtrArray *read_json_all(const char *path)
{
    GPtrArray *a = g_ptr_array_new_with_free_func((GDestroyNotify)bench_rec_free);
    char err[512];
    ck_assert_msg(bench_jsonl_read(path, a, err, sizeof err) == 0, "%s", err);
    return a;
}

/* The measurements of a file tp-bench wrote: its first record, the meta
 * record, is checked to be there and left out. */
static GPtrArray *read_json(const char *path)
{
    GPtrArray *a = read_json_all(path);
    ck_assert_msg(a->len > 0 && strcmp(bench_rec_kind(g_ptr_array_index(a, 0)), "meta") == 0,
                  "%s: no meta record first", path);
    g_ptr_array_remove_index(a, 0);
    return a;
}

/* ---------------------------------------------------- bad arguments */

START_TEST(bad_arguments)
{
    static const struct {
        const char *args, *needle;
    } cases[] = {
        {"", "missing subcommand"},
        {"nosuch", "unknown subcommand 'nosuch'"},
        {"collectives --op all_sum", "unknown op 'all_sum'"},
        {"collectives -b 0", "bad size '0'"},
        {"collectives -e 0K", "bad size '0K'"},
        {"layer --layer nosuch", "unknown layer 'nosuch'"},
        {"layer --layer mlp --tp 4 --ffn 3", "larger than the dimension"},
        {"layer --layer linear-col --sweep-tp 1,2 --ffn 1", "T=2"},
        {"model --link nvlink:fast:3", "malformed --link"},
        {"model --link onlyname", "malformed --link"},
        {"plot", "missing --out"},
        {"gemm --bogus", "unknown option '--bogus'"},
        {"collectives --compare-raw -e 8 -q", "--compare-raw"}, /* loopback: no raw library */
        {"layer --layer mlp --dtype f64 -q", "bad --dtype 'f64'"},
        {"collectives -m 0", "bad -m '0'"},
        {"layer --layer attention --overlap 65", "bad --overlap '65'"},
        {"layer --agg_iters 2", "does not apply to 'layer'"},
        {"layer --layer block --symmetric", "for linear-col, linear-row and mlp only"},
        {"gemm --symmetric", "does not apply to 'gemm'"},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        run_result r = run(cases[i].args, NULL);
        ck_assert_msg(r.code == 2, "'%s': exit %d, want 2", cases[i].args, r.code);
        ck_assert_msg(strstr(r.err, cases[i].needle) != NULL, "'%s': stderr '%s' lacks '%s'",
                      cases[i].args, r.err, cases[i].needle);
        bench_run_free(&r);
    }
    /* TP_WORLD_SIZE larger than the split dimension is caught the same way */
    const char *env[] = {"TP_WORLD_SIZE=5", NULL};
    run_result r = run("layer --layer mlp --ffn 4", env);
    ck_assert_int_eq(r.code, 2);
    ck_assert_ptr_nonnull(strstr(r.err, "TP_WORLD_SIZE"));
    bench_run_free(&r);
    /* help works and exits 0 */
    const char *subs[] = {"--help",       "collectives --help", "gemm --help",
                          "layer --help", "model --help",       "plot --help"};
    for (size_t i = 0; i < G_N_ELEMENTS(subs); i++) {
        r = run(subs[i], NULL);
        ck_assert_msg(r.code == 0 && strstr(r.out, "Usage:"), "'%s': exit %d", subs[i], r.code);
        bench_run_free(&r);
    }
}
END_TEST

/* ------------------------------------------------- layer collectives */

/* Collectives per layer (Megatron's f/g): forward column (no gather) 0,
 * row 1, MLP 1 all-reduce; backward column 1, row (input parallel) 0, MLP
 * 1; at T = 2, 3, 4, 7 with odd shapes. The bytes a ring moves per rank
 * equal the seed's formula 2(T-1)/T * tokens * hidden * 4 per all-reduce.
 * Forward only, then forward + backward (--backward). */
/* T = 2 listed before 1 on purpose: its speedup is relative to T = 1 all
 * the same (it was null in the JSON when T = 1 came later). */
START_TEST(layer_counts)
{
    const char *layers[] = {"linear-col", "linear-row", "mlp"};
    const int expect[2][3] = {{0, 1, 1}, {1, 0, 1}};
    for (int bwd = 0; bwd < 2; bwd++)
        for (int li = 0; li < 3; li++) {
            gchar *json = g_strdup_printf("%s/layer-%s-%d.jsonl", tmpdir, layers[li], bwd);
            gchar *args = g_strdup_printf(
                "layer --layer %s --sweep-tp 2,1,3,4,7 --tokens 5 --hidden 13 --ffn 17 "
                "-n 2 -w 1 -q %s --json %s",
                layers[li], bwd ? "--backward" : "", json);
            run_result r = run(args, NULL);
            ck_assert_msg(r.code == 0, "%s: exit %d\n%s", args, r.code, r.err);
            GPtrArray *recs = read_json(json);
            int seen[2] = {0, 0};
            for (guint i = 0; i < recs->len; i++) {
                const bench_record *rec = g_ptr_array_index(recs, i);
                ck_assert_str_eq(bench_rec_kind(rec), "layer");
                ck_assert_str_eq(bench_rec_get_str(rec, "layer"), layers[li]);
                const char *phase = bench_rec_get_str(rec, "phase");
                int ph = strcmp(phase, "backward") == 0;
                ck_assert_msg(ph || strcmp(phase, "forward") == 0, "phase %s", phase);
                ck_assert_msg(!ph || bwd, "backward record without --backward");
                if (bench_rec_get_num(rec, "rank", 0) != -1)
                    continue;
                int T = (int)bench_rec_get_num(rec, "tp", 0);
                double formula = bench_rec_get_num(rec, "formula_bytes", -1);
                double wire = bench_rec_get_num(rec, "wire_bytes", -1);
                double want = expect[ph][li] * 2.0 * (T - 1) / T * 5 * 13 * 4;
                ck_assert_msg(fabs(formula - want) <= JSON_REL * (want + 1),
                              "%s %s T=%d formula %g want %g", layers[li], phase, T, formula, want);
                ck_assert_msg(fabs(wire - want) <= JSON_REL * (want + 1),
                              "%s %s T=%d wire bytes %g want %g", layers[li], phase, T, wire, want);
                if (T > 1) {
                    ck_assert_msg(bench_rec_get_num(rec, "collectives", -1) == expect[ph][li],
                                  "%s %s T=%d: %g collectives", layers[li], phase, T,
                                  bench_rec_get_num(rec, "collectives", -1));
                    ck_assert(bench_rec_get_num(rec, "all_reduce", -1) == expect[ph][li]);
                    ck_assert(bench_rec_get_num(rec, "all_gather", -1) == 0);
                }
                double pct = bench_rec_get_num(rec, "comm_pct", -1);
                ck_assert(pct >= 0 && pct <= 100);
                ck_assert(isfinite(bench_rec_get_num(rec, "speedup", NAN)));
                seen[ph]++;
            }
            ck_assert_int_eq(seen[0], 5);
            ck_assert_int_eq(seen[1], bwd ? 5 : 0);
            ck_assert_ptr_nonnull(strstr(r.out, layers[li]));
            ck_assert_ptr_nonnull(strstr(r.out, "speedup"));
            g_ptr_array_free(recs, TRUE);
            bench_run_free(&r);
            g_free(args);
            g_free(json);
        }
}
END_TEST

/* bf16 MLP: records say bf16, and the all-reduce moves 2 bytes per element:
 * formula and measured wire bytes 2(T-1)/T * tokens * hidden * 2. */
START_TEST(layer_dtype)
{
    gchar *json = g_strdup_printf("%s/layer-bf16.jsonl", tmpdir);
    gchar *args = g_strdup_printf("layer --layer mlp --dtype bf16 --sweep-tp 1,2,3 --tokens 5 "
                                  "--hidden 13 --ffn 17 -n 2 -w 1 -q --json %s",
                                  json);
    run_result r = run(args, NULL);
    ck_assert_msg(r.code == 0, "%s: exit %d\n%s", args, r.code, r.err);
    GPtrArray *recs = read_json(json);
    int seen = 0;
    for (guint i = 0; i < recs->len; i++) {
        const bench_record *rec = g_ptr_array_index(recs, i);
        ck_assert_str_eq(bench_rec_get_str(rec, "dtype"), "bf16");
        if (bench_rec_get_num(rec, "rank", 0) != -1)
            continue;
        int T = (int)bench_rec_get_num(rec, "tp", 0);
        double want = 2.0 * (T - 1) / T * 5 * 13 * 2;
        ck_assert_msg(
            fabs(bench_rec_get_num(rec, "formula_bytes", -1) - want) <= JSON_REL * (want + 1) &&
                fabs(bench_rec_get_num(rec, "wire_bytes", -1) - want) <= JSON_REL * (want + 1),
            "bf16 mlp T=%d: formula %g, wire %g, want %g", T,
            bench_rec_get_num(rec, "formula_bytes", -1), bench_rec_get_num(rec, "wire_bytes", -1),
            want);
        seen++;
    }
    ck_assert_int_eq(seen, 3);
    g_ptr_array_free(recs, TRUE);
    bench_run_free(&r);
    g_free(args);

    /* the transformer layers in bf16 too: 2-byte payloads, so the bytes
     * counted on the wire are the formula's for 2-byte elements */
    args = g_strdup_printf("layer --layer block --dtype bf16 --sweep-tp 1,2 --batch 1 --seq 7 "
                           "--hidden 12 --ffn 20 --heads 2 -n 1 -w 0 -q --json %s",
                           json);
    unlink(json);
    r = run(args, NULL);
    ck_assert_msg(r.code == 0, "%s: exit %d\n%s", args, r.code, r.err);
    recs = read_json(json);
    seen = 0;
    for (guint i = 0; i < recs->len; i++) {
        const bench_record *rec = g_ptr_array_index(recs, i);
        ck_assert_str_eq(bench_rec_get_str(rec, "dtype"), "bf16");
        if (bench_rec_get_num(rec, "rank", 0) != -1 || bench_rec_get_num(rec, "tp", 0) != 2)
            continue;
        double f = bench_rec_get_num(rec, "formula_bytes", -1),
               w = bench_rec_get_num(rec, "wire_bytes", -2);
        /* forward: 2 all-reduces of 7 x 12 bf16, ring factor 2(T-1)/T = 1 */
        if (strcmp(bench_rec_get_str(rec, "phase"), "forward") == 0)
            ck_assert_msg(fabs(f - 2 * 7 * 12 * 2) <= JSON_REL * f, "forward formula %g", f);
        ck_assert_msg(f > 0 && fabs(w - f) <= JSON_REL * f, "block bf16: wire %g formula %g", w, f);
        seen++;
    }
    ck_assert_int_eq(seen, 2);
    g_ptr_array_free(recs, TRUE);
    bench_run_free(&r);
    g_free(args);
    g_free(json);
}
END_TEST

/* ------------------------------------------------------------ check */

/* Sizes 52 B * 3^k: counts 13, 39, ... odd, and not divisible by T for the
 * gather/scatter rounding. */
START_TEST(check_clean)
{
    gchar *json = g_strdup_printf("%s/clean.jsonl", tmpdir),
          *csv = g_strdup_printf("%s/clean.csv", tmpdir);
    gchar *args =
        g_strdup_printf("collectives --sweep-tp 1,2,3,4,7 -b 52 -e 20000 -f 3 -n 2 -w 1 -c -q "
                        "--no-memcpy --json %s --csv %s",
                        json, csv);
    run_result r = run(args, NULL);
    ck_assert_msg(r.code == 0, "exit %d\n%s", r.code, r.err);
    GPtrArray *recs = read_json(json);
    int n = 0;
    for (guint i = 0; i < recs->len; i++) {
        const bench_record *rec = g_ptr_array_index(recs, i);
        if (strcmp(bench_rec_kind(rec), "collective") != 0)
            continue;
        ck_assert(bench_rec_get_num(rec, "wrong", -1) == 0);
        ck_assert(bench_rec_get_num(rec, "time_us", -1) > 0);
        ck_assert(bench_rec_get_num(rec, "algbw_gbps", -1) > 0);
        /* busbw / algbw is nccl-tests' factor */
        int op = bench_op_from_name(bench_rec_get_str(rec, "op"));
        int T = (int)bench_rec_get_num(rec, "ranks", 0);
        double ratio =
            bench_rec_get_num(rec, "busbw_gbps", 0) / bench_rec_get_num(rec, "algbw_gbps", 1);
        ck_assert(fabs(ratio - bench_busbw_factor(op, T)) <= 1e-6);
        n++;
    }
    ck_assert_int_eq(n, 5 * 4 * 6); /* T values x ops x sizes 52..12636 */
    gchar *text = NULL;
    ck_assert(g_file_get_contents(csv, &text, NULL, NULL));
    /* the meta record's group first, then the measurements' */
    ck_assert(g_str_has_prefix(text, "kind,tp_version,git_revision,"));
    ck_assert_ptr_nonnull(strstr(text, "\n\nkind,backend,device,ranks,op,"));
    g_free(text);
    g_ptr_array_free(recs, TRUE);
    bench_run_free(&r);
    g_free(args);
    g_free(json);
    g_free(csv);
}
END_TEST

/* A collective that writes nothing at all (in-place all_gather, through
 * an LD_PRELOAD shim) is caught: every checked call starts from a result
 * area no correct call leaves behind. It used to read the out-of-place
 * call's result there and pass ("#wrong 0", exit 0). */
START_TEST(check_catches_missing_writes)
{
    gchar *pre = g_strdup_printf("LD_PRELOAD=%s", g_getenv("TP_BENCH_SKIP_GATHER"));
    /* under ASan the shim comes before its runtime in the load order */
    gchar *asan = g_strdup_printf("ASAN_OPTIONS=%s%sverify_asan_link_order=0",
                                  g_getenv("ASAN_OPTIONS") ? g_getenv("ASAN_OPTIONS") : "",
                                  g_getenv("ASAN_OPTIONS") ? ":" : "");
    const char *env[] = {pre, asan, NULL};
    run_result r = run("collectives --tp 3 -C all_gather -b 48 -e 480 -f 10 -n 2 -w 1 -c "
                       "--no-memcpy",
                       env);
    ck_assert_msg(r.code == 1, "exit %d, want 1\n%s\n%s", r.code, r.out, r.err);
    ck_assert_ptr_nonnull(strstr(r.err, "wrong result elements"));
    ck_assert_ptr_nonnull(strstr(r.out, "Out of bounds values"));
    ck_assert_ptr_null(strstr(r.out, "Out of bounds values : 0 OK"));
    bench_run_free(&r);
    g_free(pre);
    g_free(asan);
}
END_TEST

START_TEST(check_catches_corruption)
{
    gchar *json = g_strdup_printf("%s/corrupt.jsonl", tmpdir);
    gchar *args = g_strdup_printf(
        "collectives --tp 3 -b 52 -e 500 -f 3 -n 2 -w 0 -c -q --no-memcpy --json %s", json);
    const char *env[] = {"TP_BENCH_CORRUPT=1", NULL};
    run_result r = run(args, env);
    ck_assert_msg(r.code == 1, "exit %d, want 1\n%s", r.code, r.err);
    ck_assert_ptr_nonnull(strstr(r.err, "wrong"));
    GPtrArray *recs = read_json(json);
    int n = 0;
    for (guint i = 0; i < recs->len; i++) {
        const bench_record *rec = g_ptr_array_index(recs, i);
        if (strcmp(bench_rec_kind(rec), "collective") != 0)
            continue;
        /* one damaged element per timed iteration on one rank, in each form */
        ck_assert_msg(bench_rec_get_num(rec, "wrong", 0) == 2, "%s %g bytes: wrong %g",
                      bench_rec_get_str(rec, "op"), bench_rec_get_num(rec, "bytes", 0),
                      bench_rec_get_num(rec, "wrong", 0));
        if (bench_rec_get(rec, "ip_time_us"))
            ck_assert(bench_rec_get_num(rec, "ip_wrong", 0) == 2);
        n++;
    }
    ck_assert_int_gt(n, 0);
    bench_run_free(&r);

    /* checking is on by default (nccl-tests' -c 1): the damage is found
     * without -c too */
    g_free(args);
    args = g_strdup_printf("collectives --tp 2 -b 52 -e 52 -n 2 -w 0 -q --no-memcpy");
    r = run(args, env);
    ck_assert_msg(r.code == 1, "exit %d, want 1", r.code);
    ck_assert_ptr_nonnull(strstr(r.out, "# Out of bounds values : 12 FAILED"));
    bench_run_free(&r);

    /* -c 0: the same damage goes unseen; #wrong reads N/A, wrong is null */
    g_free(args);
    args = g_strdup_printf("collectives --tp 2 -b 52 -e 52 -n 2 -w 0 -q --no-memcpy -c 0 --json %s",
                           json);
    r = run(args, env);
    ck_assert_int_eq(r.code, 0);
    ck_assert_ptr_nonnull(strstr(r.out, "# Out of bounds values : 0 OK (not checked: -c 0)"));
    ck_assert_ptr_nonnull(strstr(r.out, "not checked (-c 0)"));
    g_ptr_array_free(recs, TRUE);
    recs = read_json(json);
    n = 0;
    for (guint i = 0; i < recs->len; i++) {
        const bench_record *rec = g_ptr_array_index(recs, i);
        if (strcmp(bench_rec_kind(rec), "collective") != 0)
            continue;
        ck_assert(bench_rec_get(rec, "wrong")->type == BENCH_F_NULL);
        ck_assert(bench_rec_get(rec, "checked")->type == BENCH_F_BOOL &&
                  !bench_rec_get(rec, "checked")->b);
        n++;
    }
    ck_assert_int_eq(n, 4);
    /* every row's #wrong columns read N/A */
    gchar **lines = g_strsplit(r.out, "\n", -1);
    int rows = 0;
    for (int i = 0; lines[i]; i++) {
        if (lines[i][0] == '#' || !lines[i][0])
            continue;
        gchar **tok = g_strsplit_set(g_strstrip(lines[i]), " ", -1);
        GPtrArray *w = g_ptr_array_new();
        for (int k = 0; tok[k]; k++)
            if (tok[k][0])
                g_ptr_array_add(w, tok[k]);
        ck_assert_uint_ge(w->len, 13);
        ck_assert_str_eq(g_ptr_array_index(w, 8), "N/A");
        ck_assert_str_eq(g_ptr_array_index(w, 12), "N/A");
        rows++;
        g_ptr_array_free(w, TRUE);
        g_strfreev(tok);
    }
    ck_assert_int_eq(rows, 4);
    g_strfreev(lines);
    g_ptr_array_free(recs, TRUE);
    bench_run_free(&r);
    g_free(args);
    g_free(json);
}
END_TEST

/* ------------------------------------------------- nccl-tests flags */

/* The collective records of a JSON-lines file (the meta record skipped). */
static GPtrArray *collective_records(const char *json)
{
    GPtrArray *all = read_json(json);
    GPtrArray *out = g_ptr_array_new_with_free_func((GDestroyNotify)bench_rec_free);
    for (guint i = 0; i < all->len; i++)
        if (strcmp(bench_rec_kind(g_ptr_array_index(all, i)), "collective") == 0)
            g_ptr_array_add(out, bench_rec_copy(g_ptr_array_index(all, i)));
    g_ptr_array_free(all, TRUE);
    return out;
}

/* -d x -o: every dtype with every reduction, checked (exact: the data are
 * small integers, see collectives.c); the records name them, the counts
 * follow the element size; the damage hook is caught in every dtype. */
START_TEST(coll_dtypes_redops)
{
    static const struct {
        const char *name;
        size_t elt;
    } dts[] = {{"f32", 4}, {"bf16", 2}, {"f16", 2}, {"i32", 4}};
    static const char *const ops[] = {"sum", "max", "min"};
    gchar *json = g_strdup_printf("%s/dt.jsonl", tmpdir);
    for (size_t d = 0; d < G_N_ELEMENTS(dts); d++)
        for (size_t k = 0; k < G_N_ELEMENTS(ops); k++) {
            gchar *args = g_strdup_printf("collectives --tp 3 -b 48 -e 480 -f 10 -n 2 -w 1 -q "
                                          "--no-memcpy -d %s -o %s --json %s",
                                          dts[d].name, ops[k], json);
            run_result r = run(args, NULL);
            ck_assert_msg(r.code == 0, "%s: exit %d\n%s", args, r.code, r.err);
            GPtrArray *recs = collective_records(json);
            ck_assert_uint_eq(recs->len, 4 * 2);
            for (guint i = 0; i < recs->len; i++) {
                const bench_record *rec = g_ptr_array_index(recs, i);
                const char *op = bench_rec_get_str(rec, "op");
                bool reduces = !strcmp(op, "all_reduce") || !strcmp(op, "reduce_scatter");
                ck_assert_str_eq(bench_rec_get_str(rec, "dtype"), dts[d].name);
                ck_assert_str_eq(bench_rec_get_str(rec, "redop"), reduces ? ops[k] : "none");
                ck_assert_msg(bench_rec_get_num(rec, "wrong", -1) == 0, "%s %s: wrong %g", args, op,
                              bench_rec_get_num(rec, "wrong", -1));
                if (bench_rec_get(rec, "ip_wrong"))
                    ck_assert(bench_rec_get_num(rec, "ip_wrong", -1) == 0);
                if (!strcmp(op, "all_reduce"))
                    ck_assert(bench_rec_get_num(rec, "count", 0) * dts[d].elt ==
                              bench_rec_get_num(rec, "bytes", -1));
            }
            g_ptr_array_free(recs, TRUE);
            bench_run_free(&r);
            g_free(args);
        }
    const char *env[] = {"TP_BENCH_CORRUPT=1", NULL};
    for (size_t d = 0; d < G_N_ELEMENTS(dts); d++) {
        gchar *args = g_strdup_printf("collectives --tp 3 -b 48 -e 48 -n 2 -w 0 -q --no-memcpy "
                                      "-d %s -o max --json %s",
                                      dts[d].name, json);
        run_result r = run(args, env);
        ck_assert_msg(r.code == 1, "%s: exit %d, want 1", args, r.code);
        GPtrArray *recs = collective_records(json);
        for (guint i = 0; i < recs->len; i++)
            ck_assert(bench_rec_get_num(g_ptr_array_index(recs, i), "wrong", 0) == 2);
        g_ptr_array_free(recs, TRUE);
        bench_run_free(&r);
        g_free(args);
    }
    g_free(json);
}
END_TEST

/* -a 0/1/2/3 on made-up times (TP_BENCH_FAKE_TIMES: rank r takes (r+1) ms
 * every iteration): rank 0's 1000 us, the mean 2000, the min 1000, the
 * max 3000, in time_us and in the table. */
START_TEST(coll_average)
{
    static const double want[] = {1000, 2000, 1000, 3000};
    static const char *const names[] = {"rank0", "mean", "min", "max"};
    const char *env[] = {"TP_BENCH_FAKE_TIMES=1", NULL};
    gchar *json = g_strdup_printf("%s/avg.jsonl", tmpdir);
    for (int a = 0; a < 4; a++) {
        gchar *args = g_strdup_printf("collectives --tp 3 -C all_reduce -b 64 -e 64 -n 3 -w 0 -q "
                                      "--no-memcpy -a %d --json %s",
                                      a, json);
        run_result r = run(args, env);
        ck_assert_msg(r.code == 0, "%s: exit %d\n%s", args, r.code, r.err);
        GPtrArray *recs = collective_records(json);
        ck_assert_uint_eq(recs->len, 1);
        const bench_record *rec = g_ptr_array_index(recs, 0);
        ck_assert_str_eq(bench_rec_get_str(rec, "average"), names[a]);
        for (int f = 0; f < 2; f++) {
            const char *key = f ? "ip_time_us" : "time_us";
            ck_assert_msg(bench_rec_get_num(rec, key, 0) == want[a], "-a %d: %s %g, want %g", a,
                          key, bench_rec_get_num(rec, key, 0), want[a]);
        }
        gchar *row = g_strdup_printf(" %.2f ", want[a]);
        ck_assert_ptr_nonnull(strstr(r.out, row));
        g_free(row);
        g_ptr_array_free(recs, TRUE);
        bench_run_free(&r);
        g_free(args);
    }
    g_free(json);
}
END_TEST

/* -m N (nccl-tests' --agg_iters): N calls per timed iteration, every
 * result still checked (in place, all_reduce's compounded sums are not
 * what is checked: one more call on the input is), damage still found. */
START_TEST(coll_agg_iters)
{
    gchar *json = g_strdup_printf("%s/agg.jsonl", tmpdir);
    gchar *args = g_strdup_printf("collectives --sweep-tp 1,2,3 -b 52 -e 5200 -f 10 -n 2 -w 1 "
                                  "-m 3 -q --no-memcpy --json %s",
                                  json);
    run_result r = run(args, NULL);
    ck_assert_msg(r.code == 0, "exit %d\n%s", r.code, r.err);
    ck_assert_ptr_nonnull(strstr(r.out, "of 3 calls (-m)"));
    GPtrArray *recs = collective_records(json);
    ck_assert_uint_eq(recs->len, 3 * 4 * 3); /* T values x ops x sizes 52, 520, 5200 */
    for (guint i = 0; i < recs->len; i++) {
        const bench_record *rec = g_ptr_array_index(recs, i);
        ck_assert(bench_rec_get_num(rec, "agg_iters", 0) == 3);
        ck_assert(bench_rec_get_num(rec, "wrong", -1) == 0);
        if (bench_rec_get(rec, "ip_time_us"))
            ck_assert_msg(bench_rec_get_num(rec, "ip_wrong", -1) == 0, "%s %g B in place",
                          bench_rec_get_str(rec, "op"), bench_rec_get_num(rec, "bytes", 0));
    }
    g_ptr_array_free(recs, TRUE);
    bench_run_free(&r);
    const char *env[] = {"TP_BENCH_CORRUPT=1", NULL};
    r = run("collectives --tp 2 -C all_reduce -b 52 -e 52 -n 2 -w 0 -m 4 -q --no-memcpy", env);
    ck_assert_msg(r.code == 1, "exit %d, want 1", r.code);
    ck_assert_ptr_nonnull(strstr(r.out, "# Out of bounds values : 4 FAILED"));
    bench_run_free(&r);
    g_free(args);
    g_free(json);
}
END_TEST

/* The table as nccl-tests prints it: out-of-place and in-place column
 * groups (N/A where tp has no such form) matching the records, and the
 * footer lines with the average busbw of every column printed. */
START_TEST(coll_columns_footer)
{
    gchar *json = g_strdup_printf("%s/cols.jsonl", tmpdir);
    gchar *args = g_strdup_printf(
        "collectives --tp 2 -b 64 -e 256 -f 2 -n 2 -w 0 -q --no-memcpy --json %s", json);
    run_result r = run(args, NULL);
    ck_assert_msg(r.code == 0, "exit %d\n%s", r.code, r.err);
    GPtrArray *recs = collective_records(json);
    ck_assert_uint_eq(recs->len, 4 * 3);
    double bw_sum = 0;
    int bw_n = 0;
    gchar **lines = g_strsplit(r.out, "\n", -1);
    int row = 0;
    for (int i = 0; lines[i]; i++) {
        if (lines[i][0] == '#' || !lines[i][0])
            continue;
        ck_assert_uint_lt(row, recs->len);
        const bench_record *rec = g_ptr_array_index(recs, row++);
        const char *op = bench_rec_get_str(rec, "op");
        gchar **tok = g_strsplit_set(g_strstrip(lines[i]), " ", -1);
        GPtrArray *w = g_ptr_array_new();
        for (int k = 0; tok[k]; k++)
            if (tok[k][0])
                g_ptr_array_add(w, tok[k]);
        ck_assert_uint_eq(w->len, 13);
        ck_assert(atof(g_ptr_array_index(w, 0)) == bench_rec_get_num(rec, "bytes", 0));
        ck_assert_str_eq(g_ptr_array_index(w, 4), strcmp(op, "broadcast") ? "-1" : "0");
        bool bcast = !strcmp(op, "broadcast"), rs = !strcmp(op, "reduce_scatter");
        /* the form a record's time_us holds, and the in-place one */
        const char *oop_time = g_ptr_array_index(w, 5), *ip_time = g_ptr_array_index(w, 9);
        gchar *t = g_strdup_printf("%.2f", bench_rec_get_num(rec, "time_us", 0));
        ck_assert_str_eq(bcast ? ip_time : oop_time, t);
        g_free(t);
        ck_assert(bench_rec_get(rec, "in_place")->b == bcast);
        if (bcast)
            ck_assert_str_eq(oop_time, "N/A");
        else if (rs) {
            ck_assert_str_eq(ip_time, "N/A");
            ck_assert_ptr_null(bench_rec_get(rec, "ip_time_us"));
        } else {
            t = g_strdup_printf("%.2f", bench_rec_get_num(rec, "ip_time_us", 0));
            ck_assert_str_eq(ip_time, t);
            g_free(t);
            ck_assert(bench_rec_get_num(rec, "ip_wrong", -1) == 0);
            bw_sum += bench_rec_get_num(rec, "ip_busbw_gbps", 0);
            bw_n++;
        }
        ck_assert_str_eq(g_ptr_array_index(w, bcast ? 12 : 8), "0"); /* #wrong */
        bw_sum += bench_rec_get_num(rec, "busbw_gbps", 0);
        bw_n++;
        g_ptr_array_free(w, TRUE);
        g_strfreev(tok);
    }
    ck_assert_int_eq(row, (int)recs->len);
    g_strfreev(lines);
    ck_assert_ptr_nonnull(strstr(r.out, "\n# Out of bounds values : 0 OK\n"));
    const char *avg = strstr(r.out, "\n# Avg bus bandwidth    : ");
    ck_assert_ptr_nonnull(avg);
    double got = g_ascii_strtod(avg + strlen("\n# Avg bus bandwidth    : "), NULL);
    ck_assert_int_eq(bw_n, 4 * 3 + 2 * 3);
    ck_assert_msg(fabs(got - bw_sum / bw_n) <= 1e-5 * (bw_sum / bw_n), "footer %g, records %g", got,
                  bw_sum / bw_n);
    g_ptr_array_free(recs, TRUE);
    bench_run_free(&r);
    g_free(args);
    g_free(json);
}
END_TEST

/* The old --op COLLECTIVE spelling: still works, one deprecation line. */
START_TEST(coll_old_op_spelling)
{
    gchar *json = g_strdup_printf("%s/old-op.jsonl", tmpdir);
    gchar *args = g_strdup_printf(
        "collectives --tp 2 --op all_gather -b 64 -e 64 -n 1 -w 0 -q --no-memcpy --json %s", json);
    run_result r = run(args, NULL);
    ck_assert_msg(r.code == 0, "exit %d\n%s", r.code, r.err);
    gchar **lines = g_strsplit(g_strstrip(r.err), "\n", -1);
    ck_assert_uint_eq(g_strv_length(lines), 1);
    ck_assert_ptr_nonnull(strstr(lines[0], "deprecated"));
    ck_assert_ptr_nonnull(strstr(lines[0], "-C/--collective all_gather"));
    g_strfreev(lines);
    GPtrArray *recs = collective_records(json);
    ck_assert_uint_eq(recs->len, 1);
    ck_assert_str_eq(bench_rec_get_str(g_ptr_array_index(recs, 0), "op"), "all_gather");
    g_ptr_array_free(recs, TRUE);
    bench_run_free(&r);
    g_free(args);
    g_free(json);
}
END_TEST

/* The meta record of a real run parsed back: the plugins as loaded, the
 * world, the version --version prints, the environment with the secret
 * redacted (its value in neither file); model --from skips it. */
START_TEST(meta_record_run)
{
    gchar *json = g_strdup_printf("%s/meta.jsonl", tmpdir),
          *csv = g_strdup_printf("%s/meta.csv", tmpdir);
    gchar *args = g_strdup_printf(
        "collectives --tp 3 -C all_reduce -b 64 -e 256 -n 1 -w 0 -q --no-memcpy --json %s --csv %s",
        json, csv);
    const char *env[] = {"TP_TCP_SECRET=do-not-print-me-42", "TP_BENCH_META_PROBE=yes",
                         "NCCL_META_PROBE=1", NULL};
    run_result r = run(args, env);
    ck_assert_msg(r.code == 0, "exit %d\n%s", r.code, r.err);
    run_result v = run("--version", NULL);
    ck_assert_int_eq(v.code, 0);
    GPtrArray *recs = read_json_all(json);
    const bench_record *m = g_ptr_array_index(recs, 0);
    ck_assert_str_eq(bench_rec_kind(m), "meta");
    gchar *want = g_strdup_printf("tp-bench %s (git %s)\n", bench_rec_get_str(m, "tp_version"),
                                  bench_rec_get_str(m, "git_revision"));
    ck_assert_str_eq(v.out, want);
    g_free(want);
    ck_assert_str_eq(bench_rec_get_str(m, "tp_version"), TP_VERSION);
    ck_assert_str_eq(bench_rec_get_str(m, "backend"), "loopback");
    ck_assert_str_eq(bench_rec_get_str(m, "device"), "cpu");
    const char *bp = bench_rec_get_str(m, "backend_path"),
               *dp = bench_rec_get_str(m, "device_path");
    ck_assert(bp && g_str_has_suffix(bp, "/libtp-loopback.so") &&
              g_file_test(bp, G_FILE_TEST_EXISTS));
    ck_assert(dp && g_str_has_suffix(dp, "/libtp-cpu.so") && g_file_test(dp, G_FILE_TEST_EXISTS));
    ck_assert_str_eq(bench_rec_get_str(m, "backend_version"), TP_VERSION);
    ck_assert(bench_rec_get_num(m, "world_size", 0) == 3);
    ck_assert(bench_rec_get_num(m, "cpu_cores", 0) == g_get_num_processors());
    ck_assert_str_eq(bench_rec_get_str(m, "host"), g_get_host_name());
    ck_assert_ptr_nonnull(strstr(bench_rec_get_str(m, "command"), "'collectives'"));
    const char *envj = bench_rec_get(m, "env")->s;
    ck_assert_ptr_nonnull(strstr(envj, "\"TP_TCP_SECRET\":\"<redacted>\""));
    ck_assert_ptr_nonnull(strstr(envj, "\"TP_BENCH_META_PROBE\":\"yes\""));
    ck_assert_ptr_nonnull(strstr(envj, "\"NCCL_META_PROBE\":\"1\""));
    ck_assert_ptr_nonnull(strstr(envj, "\"TP_BACKEND\":\"loopback\""));
    ck_assert_ptr_null(strstr(envj, "\"HOME\""));
    for (int f = 0; f < 2; f++) {
        gchar *text = NULL;
        ck_assert(g_file_get_contents(f ? csv : json, &text, NULL, NULL));
        ck_assert_ptr_null(strstr(text, "do-not-print-me-42"));
        ck_assert(g_str_has_prefix(text, f ? "kind,tp_version," : "{\"kind\":\"meta\","));
        g_free(text);
    }
    /* model --from reads the file, meta record and all */
    gchar *margs = g_strdup_printf("model --from %s --measure-tp 0 --project-tp 2 -q", json);
    run_result mr = run(margs, NULL);
    ck_assert_msg(mr.code == 0, "model --from: exit %d\n%s", mr.code, mr.err);
    ck_assert_ptr_nonnull(strstr(mr.out, "alpha-beta fit"));
    bench_run_free(&mr);
    g_free(margs);
    g_ptr_array_free(recs, TRUE);
    bench_run_free(&r);
    bench_run_free(&v);
    /* a sweep runs several worlds: the meta record lists them and has no
     * single world_size, with the memcpy probe (a 1-rank context) or without */
    for (int probe = 0; probe < 2; probe++) {
        gchar *sargs =
            g_strdup_printf("collectives --sweep-tp 2,3 -C all_reduce -b 64 -e 64 -n 1 -w 0 -q "
                            "%s--json %s",
                            probe ? "" : "--no-memcpy ", json);
        run_result sr = run(sargs, NULL);
        ck_assert_msg(sr.code == 0, "exit %d\n%s", sr.code, sr.err);
        GPtrArray *srecs = read_json_all(json);
        const bench_record *sm = g_ptr_array_index(srecs, 0);
        ck_assert_str_eq(bench_rec_get_str(sm, "kind"), "meta");
        ck_assert(bench_rec_get_num(sm, "world_size", -1) == -1);
        ck_assert_str_eq(bench_rec_get(sm, "sweep_tp")->s, "[2,3]");
        g_ptr_array_free(srecs, TRUE);
        bench_run_free(&sr);
        g_free(sargs);
    }
    g_free(args);
    g_free(json);
    g_free(csv);
}
END_TEST

/* ------------------------------------------------------------ model */

/* A JSON-lines file with all_reduce times made from known alpha/beta on
 * p = 2 and 4; model --from must print and write them back. */
START_TEST(model_from_file)
{
    const double alpha = 4e-6, beta = 1.0 / 20e9;
    gchar *in = g_strdup_printf("%s/synthetic.jsonl", tmpdir),
          *out = g_strdup_printf("%s/model.jsonl", tmpdir);
    GString *s = g_string_new(NULL);
    for (int p = 2; p <= 4; p += 2)
        for (double b = 1024; b <= 64.0 * 1024 * 1024; b *= 4) {
            double t = 2.0 * (p - 1) * alpha + 2.0 * (p - 1) / p * b * beta;
            bench_record *r = bench_rec_new("collective");
            bench_rec_str(r, "backend", "synthetic");
            bench_rec_int(r, "ranks", p);
            bench_rec_str(r, "op", "all_reduce");
            bench_rec_int(r, "bytes", (int64_t)b);
            bench_rec_dbl(r, "time_us", t * 1e6);
            bench_json_line(r, s);
            g_string_append_c(s, '\n');
            bench_rec_free(r);
        }
    ck_assert(g_file_set_contents(in, s->str, -1, NULL));
    gchar *args = g_strdup_printf(
        "model --from %s --measure-tp 0 --gflops 1000 --link mine:10:1 --json %s -q", in, out);
    run_result r = run(args, NULL);
    ck_assert_msg(r.code == 0, "exit %d\n%s", r.code, r.err);
    ck_assert_ptr_nonnull(strstr(r.out, "PROJECTION"));
    GPtrArray *recs = read_json(out);
    int fits = 0, proj = 0;
    for (guint i = 0; i < recs->len; i++) {
        const bench_record *rec = g_ptr_array_index(recs, i);
        const char *what = bench_rec_get_str(rec, "what");
        ck_assert_str_eq(bench_rec_kind(rec), "model");
        if (strcmp(what, "fit") == 0) {
            /* %.9g in the file: 1e-6 relative is ample */
            ck_assert(fabs(bench_rec_get_num(rec, "alpha_us", 0) - 4.0) <= 4e-6);
            ck_assert(fabs(bench_rec_get_num(rec, "beta_gbps", 0) - 20.0) <= 2e-5);
            fits++;
        } else if (strcmp(what, "point") == 0) {
            ck_assert(fabs(bench_rec_get_num(rec, "err_pct", 1)) <= 1e-4);
        } else if (strcmp(what, "projection") == 0) {
            ck_assert(bench_rec_get(rec, "projected")->b);
            /* T=2 on mine:10:1: 2 alpha + 1 * (2048*1024*4 B) / 10 GB/s */
            if (bench_rec_get_num(rec, "tp", 0) == 2 &&
                strcmp(bench_rec_get_str(rec, "link"), "mine") == 0) {
                double want = (2 * 1e-6 + 2048.0 * 1024 * 4 / 10e9) * 1e6;
                ck_assert(fabs(bench_rec_get_num(rec, "comm_us", 0) - want) <= 1e-6 * want);
            }
            proj++;
        }
    }
    ck_assert_int_eq(fits, 2);
    ck_assert_int_eq(proj, 3 * (2 + 3 + 1)); /* T = 2,4,8 x (2 fits + 3 presets + --link) */
    g_ptr_array_free(recs, TRUE);
    bench_run_free(&r);
    g_string_free(s, TRUE);
    g_free(args);
    g_free(in);
    g_free(out);
}
END_TEST

/* model with its own sweep and a measured layer: the records are there
 * (values are timings, so only their presence and sanity are checked). */
START_TEST(model_sweep)
{
    gchar *out = g_strdup_printf("%s/model-sweep.jsonl", tmpdir);
    gchar *args =
        g_strdup_printf("model -b 1K -e 64K -f 4 --sweep-tp 2,3 --measure-tp 2 --project-tp 2,4 "
                        "--tokens 5 --hidden 13 --ffn 17 -n 3 -w 1 -q --no-memcpy --json %s",
                        out);
    run_result r = run(args, NULL);
    ck_assert_msg(r.code == 0, "exit %d\n%s", r.code, r.err);
    ck_assert_ptr_nonnull(strstr(r.out, "alpha-beta fit"));
    GPtrArray *recs = read_json(out);
    int coll = 0, fits = 0, measured = 0, projected = 0;
    for (guint i = 0; i < recs->len; i++) {
        const bench_record *rec = g_ptr_array_index(recs, i);
        if (strcmp(bench_rec_kind(rec), "collective") == 0) {
            ck_assert_str_eq(bench_rec_get_str(rec, "op"), "all_reduce");
            coll++;
            continue;
        }
        const char *what = bench_rec_get_str(rec, "what");
        if (strcmp(what, "fit") == 0) {
            ck_assert(bench_rec_get_num(rec, "alpha_us", -1) >= 0);
            ck_assert(bench_rec_get_num(rec, "beta_gbps", -1) > 0);
            fits++;
        } else if (strcmp(what, "projection") == 0) {
            double pct = bench_rec_get_num(rec, "comm_pct", -1);
            ck_assert(pct >= 0 && pct <= 100);
            if (bench_rec_get(rec, "projected")->b)
                projected++;
            else
                measured++;
        }
    }
    ck_assert_int_eq(coll, 2 * 4);      /* T = 2, 3 x sizes 1K..64K x4 */
    ck_assert_int_eq(fits, 2);          /* p = 2, 3 */
    ck_assert_int_eq(measured, 1);      /* T = 2 */
    ck_assert_int_eq(projected, 2 * 5); /* T = 2, 4 x (2 fits + 3 presets) */
    g_ptr_array_free(recs, TRUE);
    bench_run_free(&r);
    g_free(args);
    g_free(out);
}
END_TEST

/* ------------------------------------------- wait, transfer, placement */

/* Every layer record splits comm into wait + transfer (both >= 0; one rank
 * never waits for another on the shared clock) and says where it ran:
 * TP_FAKE_NODES=1 puts each rank on its own node, TP_LAUNCH_LINK (what
 * tp-launch --link exports) is copied, "none" when unset. */
static void check_layer_split(const char *extra, const char *const *env, const char *split,
                              bool one_per_node, const char *link)
{
    gchar *json = g_strdup_printf("%s/layer-wait.jsonl", tmpdir);
    gchar *args =
        g_strdup_printf("layer --layer mlp --sweep-tp 1,3 --tokens 5 --hidden 13 --ffn 17 "
                        "-n 2 -w 1 -q --backward %s --json %s",
                        extra, json);
    run_result r = run(args, env);
    ck_assert_msg(r.code == 0, "%s: exit %d\n%s", args, r.code, r.err);
    ck_assert_ptr_nonnull(strstr(r.out, "wait(us)"));
    ck_assert_ptr_nonnull(strstr(r.out, "xfer(us)"));
    GPtrArray *recs = read_json(json);
    int n = 0;
    for (guint i = 0; i < recs->len; i++) {
        const bench_record *rec = g_ptr_array_index(recs, i);
        int T = (int)bench_rec_get_num(rec, "tp", 0);
        bool agg = bench_rec_get_num(rec, "rank", 0) == -1;
        double comm = bench_rec_get_num(rec, "comm_us", NAN);
        double wait = bench_rec_get_num(rec, "wait_us", NAN);
        double xfer = bench_rec_get_num(rec, "transfer_us", NAN);
        ck_assert_msg(wait >= 0 && xfer >= -1e-3 && fabs(wait + xfer - comm) <= 1e-6 * (comm + 1),
                      "T=%d: comm %g, wait %g, transfer %g", T, comm, wait, xfer);
        if (T == 1 && strcmp(split, "clock") == 0)
            ck_assert_msg(wait == 0, "one rank waited %g us", wait);
        if (agg) {
            ck_assert(bench_rec_get_num(rec, "wait_us_max", -1) >= wait - 1e-6 * (wait + 1));
            ck_assert(bench_rec_get_num(rec, "transfer_us_max", -1) >= xfer - 1e-6 * (xfer + 1));
        } else {
            ck_assert(bench_rec_get(rec, "wait_us_max")->type == BENCH_F_NULL);
        }
        ck_assert_str_eq(bench_rec_get_str(rec, "wait_split"), split);
        ck_assert_int_eq((int)bench_rec_get_num(rec, "nodes", 0), one_per_node ? T : 1);
        ck_assert_int_eq((int)bench_rec_get_num(rec, "ranks_per_node", 0), one_per_node ? 1 : T);
        ck_assert_str_eq(bench_rec_get_str(rec, "link"), link);
        n++;
    }
    ck_assert_int_eq(n, 2 * (1 + 1) + 2 * (3 + 1)); /* phases x (ranks + aggregate) */
    g_ptr_array_free(recs, TRUE);
    bench_run_free(&r);
    g_free(args);
    g_free(json);
}

START_TEST(layer_wait_split)
{
    const char *const emulated[] = {"TP_FAKE_NODES=1", "TP_LAUNCH_LINK=1gbit,50us", NULL};
    check_layer_split("", NULL, "clock", false, "none");
    check_layer_split("", emulated, "clock", true, "1gbit,50us");
    check_layer_split("--split-wait", NULL, "barrier", false, "none");
}
END_TEST

START_TEST(collectives_placement)
{
    const char *const emulated[] = {"TP_FAKE_NODES=1", "TP_LAUNCH_LINK=5gbit", NULL};
    gchar *json = g_strdup_printf("%s/coll-place.jsonl", tmpdir);
    for (int e = 0; e < 2; e++) {
        gchar *args = g_strdup_printf(
            "collectives --tp 3 -b 1K -e 4K -f 4 -n 2 -w 1 -q --no-memcpy --json %s", json);
        unlink(json);
        run_result r = run(args, e ? emulated : NULL);
        ck_assert_msg(r.code == 0, "exit %d\n%s", r.code, r.err);
        GPtrArray *recs = read_json(json);
        ck_assert_uint_eq(recs->len, 4 * 2); /* ops x sizes */
        for (guint i = 0; i < recs->len; i++) {
            const bench_record *rec = g_ptr_array_index(recs, i);
            ck_assert_int_eq((int)bench_rec_get_num(rec, "nodes", 0), e ? 3 : 1);
            ck_assert_int_eq((int)bench_rec_get_num(rec, "ranks_per_node", 0), e ? 1 : 3);
            ck_assert_str_eq(bench_rec_get_str(rec, "link"), e ? "5gbit" : "none");
        }
        g_ptr_array_free(recs, TRUE);
        bench_run_free(&r);
        g_free(args);
    }
    g_free(json);
}
END_TEST

/* model on emulated-node records: the fits keep placements apart (an
 * old-format file's records read as one node, link none), and the layer
 * measured at the emulated placement is predicted from that placement's
 * fit: predicted_comm_us is the fitted all_reduce time of the MLP's one
 * forward all_reduce (tokens x hidden x 4 bytes), compared with the
 * measured transfer_us. */
START_TEST(model_emulated)
{
    const double a1 = 4e-6, b1 = 1.0 / 20e9;     /* one node */
    const double a2 = 50e-6, b2 = 1.0 / 0.125e9; /* 1 Gbit/s, 50 us */
    gchar *in = g_strdup_printf("%s/emulated.jsonl", tmpdir),
          *out = g_strdup_printf("%s/model-emulated.jsonl", tmpdir);
    GString *s = g_string_new(NULL);
    for (int pl = 0; pl < 2; pl++)
        for (double b = 1024; b <= 16.0 * 1024 * 1024; b *= 4) {
            int p = 3;
            double t = 2.0 * (p - 1) * (pl ? a2 : a1) + 2.0 * (p - 1) / p * b * (pl ? b2 : b1);
            bench_record *r = bench_rec_new("collective");
            bench_rec_str(r, "backend", "loopback");
            bench_rec_int(r, "ranks", p);
            bench_rec_str(r, "op", "all_reduce");
            bench_rec_int(r, "bytes", (int64_t)b);
            bench_rec_dbl(r, "time_us", t * 1e6);
            if (pl) {
                bench_place where = {3, 1, "1gbit,50us"};
                bench_rec_place(r, &where);
            }
            bench_json_line(r, s);
            g_string_append_c(s, '\n');
            bench_rec_free(r);
        }
    ck_assert(g_file_set_contents(in, s->str, -1, NULL));
    const char *const emulated[] = {"TP_FAKE_NODES=1", "TP_LAUNCH_LINK=1gbit,50us", NULL};
    gchar *args = g_strdup_printf("model --from %s --measure-tp 3 --project-tp 3 --tokens 6 "
                                  "--hidden 8 --ffn 24 -n 2 -w 1 -q --json %s",
                                  in, out);
    run_result r = run(args, emulated);
    ck_assert_msg(r.code == 0, "exit %d\n%s", r.code, r.err);
    ck_assert_ptr_nonnull(strstr(r.out, "MODEL vs MEASURED"));
    ck_assert_ptr_nonnull(strstr(r.out, "(3 nodes x 1 rank, link 1gbit,50us)"));
    GPtrArray *recs = read_json(out);
    int fits = 0, compares = 0;
    for (guint i = 0; i < recs->len; i++) {
        const bench_record *rec = g_ptr_array_index(recs, i);
        const char *what = bench_rec_get_str(rec, "what");
        bool emu = bench_rec_get_num(rec, "nodes", 0) == 3;
        if (strcmp(what, "fit") == 0) {
            ck_assert_str_eq(bench_rec_get_str(rec, "link"), emu ? "1gbit,50us" : "none");
            double alpha = bench_rec_get_num(rec, "alpha_us", 0),
                   gbps = bench_rec_get_num(rec, "beta_gbps", 0);
            ck_assert_msg(fabs(alpha - (emu ? 50.0 : 4.0)) <= 1e-4 * alpha, "alpha %g", alpha);
            ck_assert_msg(fabs(gbps - (emu ? 0.125 : 20.0)) <= 1e-5 * gbps, "%g GB/s", gbps);
            fits++;
        } else if (strcmp(what, "compare") == 0) {
            ck_assert(emu);
            ck_assert_int_eq((int)bench_rec_get_num(rec, "tp", 0), 3);
            double want = (4 * a2 + 4.0 / 3 * 6 * 8 * 4 * b2) * 1e6;
            double pred = bench_rec_get_num(rec, "predicted_comm_us", 0);
            ck_assert_msg(fabs(pred - want) <= 1e-6 * want, "predicted %g, want %g", pred, want);
            double xfer = bench_rec_get_num(rec, "transfer_us", NAN);
            double wait = bench_rec_get_num(rec, "wait_us", NAN);
            double comm = bench_rec_get_num(rec, "comm_us", NAN);
            ck_assert(fabs(xfer + wait - comm) <= 1e-6 * (comm + 1));
            ck_assert(fabs(bench_rec_get_num(rec, "ratio", 0) - pred / xfer) <= 1e-6 * pred / xfer);
            compares++;
        }
    }
    ck_assert_int_eq(fits, 2);
    ck_assert_int_eq(compares, 1);
    g_ptr_array_free(recs, TRUE);
    bench_run_free(&r);
    g_string_free(s, TRUE);
    g_free(args);
    g_free(in);
    g_free(out);
}
END_TEST

/* ------------------------------------------------------------- plot */

START_TEST(plot_png)
{
    gchar *in = g_strdup_printf("%s/plot.jsonl", tmpdir),
          *png = g_strdup_printf("%s/out.png", tmpdir);
    const char *lines = "{\"kind\": \"collective\", \"backend\": \"loopback\", \"ranks\": 2, "
                        "\"op\": \"all_reduce\", "
                        "\"bytes\": 1024, \"busbw_gbps\": 1.5}\n"
                        "{\"kind\": \"collective\", \"backend\": \"loopback\", \"ranks\": 2, "
                        "\"op\": \"all_reduce\", "
                        "\"bytes\": 4096, \"busbw_gbps\": 4.5}\n"
                        "{\"kind\": \"memcpy\", \"backend\": \"loopback\", \"threads\": 1, "
                        "\"bytes\": 1024, \"gbps\": 9}\n"
                        "{\"kind\": \"model\", \"what\": \"projection\", \"link\": \"nvlink4\", "
                        "\"projected\": true, "
                        "\"tp\": 2, \"comm_pct\": 3.5}\n"
                        "{\"kind\": \"model\", \"what\": \"projection\", \"link\": \"nvlink4\", "
                        "\"projected\": true, "
                        "\"tp\": 4, \"comm_pct\": 7.5}\n";
    ck_assert(g_file_set_contents(in, lines, -1, NULL));
    gchar *args = g_strdup_printf("plot %s --out %s", in, png);
    run_result r = run(args, NULL);
    ck_assert_msg(r.code == 0, "exit %d\n%s", r.code, r.err);
    gchar *data = NULL;
    gsize len = 0;
    ck_assert(g_file_get_contents(png, &data, &len, NULL));
    ck_assert(len > 8 && memcmp(data, "\x89PNG", 4) == 0);
    g_free(data);
    bench_run_free(&r);
    g_free(args);

    /* measured layers: one comm % series per placement, forward aggregate
     * rows only (per-rank and backward rows are not drawn) */
    const char *layers =
        "{\"kind\": \"layer\", \"backend\": \"tcp\", \"layer\": \"mlp\", \"tp\": 2, "
        "\"rank\": -1, \"phase\": \"forward\", \"nodes\": 1, \"ranks_per_node\": 2, "
        "\"link\": \"none\", \"comm_pct\": 3}\n"
        "{\"kind\": \"layer\", \"backend\": \"tcp\", \"layer\": \"mlp\", \"tp\": 2, "
        "\"rank\": -1, \"phase\": \"forward\", \"nodes\": 2, \"ranks_per_node\": 1, "
        "\"link\": \"1gbit\", \"comm_pct\": 20}\n"
        "{\"kind\": \"layer\", \"backend\": \"tcp\", \"layer\": \"mlp\", \"tp\": 2, "
        "\"rank\": 0, \"phase\": \"forward\", \"nodes\": 4, \"ranks_per_node\": 1, "
        "\"link\": \"1gbit\", \"comm_pct\": 20}\n"
        "{\"kind\": \"layer\", \"backend\": \"tcp\", \"layer\": \"mlp\", \"tp\": 2, "
        "\"rank\": -1, \"phase\": \"backward\", \"nodes\": 4, \"ranks_per_node\": 1, "
        "\"link\": \"1gbit\", \"comm_pct\": 20}\n";
    ck_assert(g_file_set_contents(in, layers, -1, NULL));
    args = g_strdup_printf("plot %s --out %s", in, png);
    r = run(args, NULL);
    ck_assert_msg(r.code == 0, "exit %d\n%s", r.code, r.err);
    ck_assert_msg(strstr(r.out, "(0 bandwidth series, 2 comm % series)"), "%s", r.out);
    bench_run_free(&r);
    g_free(args);

    /* nothing plottable, or a missing file: exit 2 with a message */
    ck_assert(g_file_set_contents(in, "{\"kind\": \"gemm\"}\n", -1, NULL));
    args = g_strdup_printf("plot %s --out %s", in, png);
    r = run(args, NULL);
    ck_assert_int_eq(r.code, 2);
    ck_assert_ptr_nonnull(strstr(r.err, "no collective"));
    bench_run_free(&r);
    g_free(args);
    args = g_strdup_printf("plot %s/missing.jsonl --out %s", tmpdir, png);
    r = run(args, NULL);
    ck_assert_int_eq(r.code, 2);
    ck_assert_ptr_nonnull(strstr(r.err, "missing.jsonl"));
    bench_run_free(&r);
    g_free(args);
    g_free(in);
    g_free(png);
}
END_TEST

static Suite *plot_suite(void)
{
    Suite *s = suite_create("bench-plot");
    TCase *t = tcase_create("plot");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, plot_png);
    suite_add_tcase(s, t);
    return s;
}

static Suite *suite(void)
{
    Suite *s = suite_create("bench-cli");
    TCase *t = tcase_create("cli");
    tcase_set_timeout(t, 240);
    tcase_add_test(t, bad_arguments);
    tcase_add_test(t, layer_counts);
    tcase_add_test(t, layer_dtype);
    tcase_add_test(t, check_clean);
    tcase_add_test(t, check_catches_corruption);
    tcase_add_test(t, check_catches_missing_writes);
    tcase_add_test(t, model_from_file);
    tcase_add_test(t, model_sweep);
    tcase_add_test(t, layer_wait_split);
    tcase_add_test(t, collectives_placement);
    tcase_add_test(t, model_emulated);
    suite_add_tcase(s, t);
    t = tcase_create("nccl-tests");
    tcase_set_timeout(t, 240);
    tcase_add_test(t, coll_dtypes_redops);
    tcase_add_test(t, coll_average);
    tcase_add_test(t, coll_agg_iters);
    tcase_add_test(t, coll_columns_footer);
    tcase_add_test(t, coll_old_op_spelling);
    tcase_add_test(t, meta_record_run);
    suite_add_tcase(s, t);
    return s;
}

/* `test-bench-cli plot` runs only the plot test (skipped without gnuplot). */
int main(int argc, char **argv)
{
    bool plot = argc > 1 && strcmp(argv[1], "plot") == 0;
    if (plot) {
        gchar *gp = g_find_program_in_path("gnuplot");
        if (!gp) {
            fprintf(stderr, "gnuplot is not installed: skipped\n");
            return 77;
        }
        g_free(gp);
    }
    tp_bench = getenv("TP_BENCH");
    if (!tp_bench || access(tp_bench, X_OK) != 0) {
        fprintf(stderr, "TP_BENCH does not name the tp-bench executable: skipped\n");
        return 77;
    }
    g_strlcpy(tmpdir, "/tmp/tp-bench-cli-XXXXXX", sizeof tmpdir);
    if (!g_mkdtemp(tmpdir)) {
        fprintf(stderr, "cannot create a temporary directory: skipped\n");
        return 77;
    }
    SRunner *sr = srunner_create(plot ? plot_suite() : suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    /* remove what the tests wrote */
    GDir *d = g_dir_open(tmpdir, 0, NULL);
    const char *name;
    while (d && (name = g_dir_read_name(d))) {
        gchar *p = g_build_filename(tmpdir, name, NULL);
        unlink(p);
        g_free(p);
    }
    if (d)
        g_dir_close(d);
    rmdir(tmpdir);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
