/* SPDX-License-Identifier: MIT */
/* test-bench-xf.c — `tp-bench layer` on the transformer layers (attention,
 * block, transformer), loopback backend: the collectives it reports per
 * phase (from tp_stats) against the counts tp-transformer.h and
 * tp-layers.h promise, the bytes against an independent count, and the
 * seed's Exercise 2 (T=4, 12 heads, hidden 4096) refused without head_dim
 * and answered with it. No timing assertions. */
#include <check.h>
#include <glib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "bench-run.h"

static const char *tp_bench; /* path, from $TP_BENCH */
static char tmpdir[64];

static run_result run(const char *args)
{
    return bench_run(tp_bench, args, NULL);
}

/* Expected calls per phase of one op. */
typedef struct want_calls {
    int ar, ag, rs;
} want_calls;

/* Run `layer ARGS --sweep-tp TPS --json` and check every aggregate record:
 * calls of each op per phase as wanted, no broadcast/barrier, payload ==
 * payload_floats(T, phase) * 4, and formula_bytes == wire_bytes (the
 * prediction matches what tp_stats measured). Returns the records checked. */
typedef double (*payload_fn)(int T, int phase);

static int check_layer(const char *args, const char *tps, const want_calls want[2],
                       payload_fn payload)
{
    static int seq;
    gchar *json = g_strdup_printf("%s/xf-%d.jsonl", tmpdir, seq++);
    gchar *cmd = g_strdup_printf("layer %s --sweep-tp %s -n 1 -w 0 -q --json %s", args, tps, json);
    run_result r = run(cmd);
    ck_assert_msg(r.code == 0, "%s: exit %d\n%s", cmd, r.code, r.err);
    GPtrArray *a = g_ptr_array_new_with_free_func((GDestroyNotify)bench_rec_free);
    char err[512];
    ck_assert_msg(bench_jsonl_read(json, a, err, sizeof err) == 0, "%s", err);
    int checked = 0;
    /* the meta record first, then layer records only */
    ck_assert(a->len > 0 && strcmp(bench_rec_kind(a->pdata[0]), "meta") == 0);
    for (guint i = 1; i < a->len; i++) {
        const bench_record *rec = a->pdata[i];
        ck_assert_str_eq(bench_rec_kind(rec), "layer");
        if (bench_rec_get_num(rec, "rank", 0) != -1)
            continue;
        int T = (int)bench_rec_get_num(rec, "tp", 0);
        const char *phase = bench_rec_get_str(rec, "phase");
        ck_assert_ptr_nonnull(phase);
        int ph = strcmp(phase, "backward") == 0;
        ck_assert_msg(ph || strcmp(phase, "forward") == 0, "phase %s", phase);
        double ar = bench_rec_get_num(rec, "all_reduce", -1),
               ag = bench_rec_get_num(rec, "all_gather", -1);
        double rs = bench_rec_get_num(rec, "reduce_scatter", -1);
        ck_assert_msg(ar == want[ph].ar && ag == want[ph].ag && rs == want[ph].rs,
                      "%s: T=%d %s: all_reduce %g all_gather %g reduce_scatter %g, want %d %d %d",
                      cmd, T, phase, ar, ag, rs, want[ph].ar, want[ph].ag, want[ph].rs);
        ck_assert(bench_rec_get_num(rec, "broadcast", -1) == 0);
        ck_assert(bench_rec_get_num(rec, "collectives", -1) ==
                  want[ph].ar + want[ph].ag + want[ph].rs);
        double pay = bench_rec_get_num(rec, "comm_bytes", NAN), want_pay = payload(T, ph) * 4.0;
        /* exact integers well below 2^53: equal up to rounding of %.9g */
        ck_assert_msg(fabs(pay - want_pay) <= 1e-9 * want_pay, "%s: T=%d %s payload %g want %g",
                      cmd, T, phase, pay, want_pay);
        double formula = bench_rec_get_num(rec, "formula_bytes", NAN);
        double wire = bench_rec_get_num(rec, "wire_bytes", NAN);
        ck_assert_msg(fabs(formula - wire) <= 1e-9 * (wire + 1), "%s: T=%d %s formula %g wire %g",
                      cmd, T, phase, formula, wire);
        ck_assert(bench_rec_get(rec, "heads") != NULL);
        ck_assert(bench_rec_get(rec, "seq") != NULL);
        ck_assert(bench_rec_get(rec, "sequence_parallel") != NULL);
        checked++;
    }
    g_ptr_array_free(a, TRUE);
    unlink(json);
    bench_run_free(&r);
    g_free(cmd);
    g_free(json);
    return checked;
}

/* tokens 15 (batch 3 x seq 5), hidden 24 */
#define TH (15.0 * 24.0)

static double pay_th(int T, int ph) /* one [tokens, hidden] all-reduce per phase */
{
    (void)T, (void)ph;
    return TH;
}

static double pay_block(int T, int ph) /* two per phase */
{
    (void)T, (void)ph;
    return 2 * TH;
}

START_TEST(attention_counts)
{
    const want_calls w[2] = {{1, 0, 0}, {1, 0, 0}};
    ck_assert_int_eq(check_layer("--layer attention --heads 12 --hidden 24 --seq 5 --batch 3",
                                 "1,2,3,4", w, pay_th),
                     8);
}
END_TEST

/* MQA at T = 2, 4: the one KV head is held by every rank, its K/V weight
 * and bias gradients (2 x head_dim x (hidden + 1) floats) ride in the
 * backward all-reduce; still one collective per phase. */
static double pay_mqa(int T, int ph)
{
    return TH + (ph == 1 && T > 1 ? 2.0 * 2.0 * (24 + 1) : 0.0); /* head_dim 24/12 = 2 */
}

START_TEST(attention_mqa_counts)
{
    const want_calls w[2] = {{1, 0, 0}, {1, 0, 0}};
    ck_assert_int_eq(
        check_layer("--layer attention --heads 12 --kv-heads 1 --hidden 24 --seq 5 --batch 3",
                    "1,2,4", w, pay_mqa),
        6);
}
END_TEST

START_TEST(block_counts)
{
    const want_calls w[2] = {{2, 0, 0}, {2, 0, 0}};
    ck_assert_int_eq(check_layer("--layer block --heads 12 --hidden 24 --ffn 17 --seq 5 --batch 3",
                                 "1,2,3,4", w, pay_block),
                     8);
}
END_TEST

static double pay_block7(int T, int ph)
{
    (void)T, (void)ph;
    return 2.0 * 13.0 * 21.0;
}

START_TEST(block_counts_t7)
{
    const want_calls w[2] = {{2, 0, 0}, {2, 0, 0}};
    ck_assert_int_eq(
        check_layer("--layer block --heads 7 --hidden 21 --ffn 13 --tokens 13", "7", w, pay_block7),
        2);
}
END_TEST

/* Sequence parallel: forward 2 all-gathers + 2 reduce-scatters (payload
 * tokens x hidden each); backward the same, 2 all-gathers more (the
 * column-parallel GEMMs' inputs gathered again for their weight gradients,
 * not kept from forward) and one all-reduce of both LayerNorms' gamma and
 * beta gradients (4 x hidden). */
static double pay_block_sp(int T, int ph)
{
    (void)T;
    return 4 * TH + (ph == 1 ? 2 * TH + 4.0 * 24 : 0.0);
}

START_TEST(block_sp_counts)
{
    const want_calls w[2] = {{0, 2, 2}, {1, 4, 2}};
    ck_assert_int_eq(
        check_layer(
            "--layer block --sequence-parallel --heads 12 --hidden 24 --ffn 17 --seq 5 --batch 3",
            "1,2,3,4", w, pay_block_sp),
        8);
}
END_TEST

/* GPT, L = 2, vocab 50: forward embedding + 2L blocks ([tokens, hidden])
 * + cross-entropy max (tokens) and sums (3 tokens); backward output
 * projection + 2L blocks. */
static double pay_gpt(int T, int ph)
{
    (void)T;
    return ph == 0 ? 5 * TH + 4 * 15.0 : 5 * TH;
}

START_TEST(transformer_counts)
{
    const want_calls w[2] = {{2 * 2 + 3, 0, 0}, {2 * 2 + 1, 0, 0}};
    ck_assert_int_eq(
        check_layer(
            "--layer transformer --layers 2 --vocab 50 --heads 12 --hidden 24 --ffn 17 --seq 5 "
            "--batch 3",
            "1,2,3,4", w, pay_gpt),
        8);
}
END_TEST

/* The seed's Exercise 2: T=4, 12 heads, hidden 4096. 4096 % 12 != 0, so
 * without head_dim the attention layer refuses with its message; with
 * head_dim 64 tp-bench answers: 2 all-reduces forward, 2 backward. */
START_TEST(exercise2)
{
    run_result r =
        run("layer --layer block --tp 4 --heads 12 --hidden 4096 --seq 8 --batch 1 -n 1 -w 0 -q");
    ck_assert_msg(r.code != 0, "Exercise 2 without head_dim exited 0:\n%s", r.out);
    ck_assert_msg(strstr(r.err, "hidden=4096") && strstr(r.err, "heads=12") &&
                      strstr(r.err, "head_dim"),
                  "stderr lacks the layer's numbers and way out: %s", r.err);
    bench_run_free(&r);
    r = run("layer --layer block --tp 4 --heads 12 --hidden 4096 --head-dim 64 --seq 8 --batch 1 "
            "-n 1 -w 0 -q");
    ck_assert_msg(r.code == 0, "Exercise 2 with head_dim: exit %d\n%s", r.code, r.err);
    ck_assert_msg(strstr(r.out, "forward all_reduce x2 backward all_reduce x2\n") != NULL,
                  "counts: %s", r.out);
    ck_assert_msg(strstr(r.out, "match") && !strstr(r.out, "MISMATCH"), "bytes: %s", r.out);
    bench_run_free(&r);
}
END_TEST

START_TEST(bad_arguments)
{
    static const struct {
        const char *args, *needle;
    } cases[] = {
        {"layer --layer block --tokens 10 --seq 3", "not a multiple of --seq"},
        {"layer --layer block --tokens 10 --batch 3 --seq 3", "disagrees"},
        {"layer --layer attention --heads 2 --tp 3", "larger than the dimension"},
        {"layer --layer transformer --vocab 2 --tp 3 --heads 3", "--vocab"},
        {"layer --layer block --heads 0", "bad --heads"},
        {"layer --layer block --sequence-parallel=1", "takes no value"},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        run_result r = run(cases[i].args);
        ck_assert_msg(r.code == 2, "'%s': exit %d, want 2", cases[i].args, r.code);
        ck_assert_msg(strstr(r.err, cases[i].needle) != NULL, "'%s': stderr '%s' lacks '%s'",
                      cases[i].args, r.err, cases[i].needle);
        bench_run_free(&r);
    }
    /* heads not divisible by T run (the ranks hold 2, 2, 1, 1 heads) */
    run_result r =
        run("layer --layer attention --heads 6 --hidden 24 --tokens 4 --tp 4 -n 1 -w 0 -q");
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    bench_run_free(&r);
}
END_TEST

int main(void)
{
    tp_bench = getenv("TP_BENCH");
    if (!tp_bench || access(tp_bench, X_OK) != 0) {
        fprintf(stderr, "TP_BENCH does not name the tp-bench executable: skipped\n");
        return 77;
    }
    g_strlcpy(tmpdir, "/tmp/tp-bench-xf-XXXXXX", sizeof tmpdir);
    if (!g_mkdtemp(tmpdir)) {
        fprintf(stderr, "cannot create a temporary directory: skipped\n");
        return 77;
    }
    Suite *s = suite_create("bench-xf");
    TCase *t = tcase_create("layer");
    tcase_set_timeout(t, 240);
    tcase_add_test(t, attention_counts);
    tcase_add_test(t, attention_mqa_counts);
    tcase_add_test(t, block_counts);
    tcase_add_test(t, block_counts_t7);
    tcase_add_test(t, block_sp_counts);
    tcase_add_test(t, transformer_counts);
    tcase_add_test(t, exercise2);
    tcase_add_test(t, bad_arguments);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    rmdir(tmpdir);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
