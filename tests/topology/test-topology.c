/* SPDX-License-Identifier: MIT */
/*
 * test-topology.c — tp_topology on fake node layouts (TP_FAKE_NODES).
 *
 * Runs unchanged on any backend: the world size comes from the engine
 * (TP_WORLD_SIZE for loopback, mpirun -n for mpi). Each rank checks its own
 * layout and the membership of its TP and DP groups (gathered through the
 * new communicators) against an expectation computed here from the node
 * list with plain loops.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tp/tp.h>

#include "tp-expect.h"

static tp_ctx *g_ctx;

typedef struct tcase_args {
    const char *fake; /* TP_FAKE_NODES, or NULL for the real host name */
    int tp;
    bool allow_span;
    tp_status expect; /* TP_OK or the refusal */
    int last_tp;      /* the last rank passes this TP size instead, if > 0 */
    const char *why;  /* a refusal's message contains this on every rank */
    int failures;     /* written by ranks (atomically added) */
} tcase_args;

/* Node id of world rank r under `fake` (same rules as TP_FAKE_NODES). */
static int fake_node(const char *fake, int r)
{
    if (fake == NULL)
        return 0;
    if (strchr(fake, ',') == NULL)
        return r / atoi(fake);
    const char *p = fake;
    for (int i = 0; i < r; i++)
        p = strchr(p, ',') + 1;
    return atoi(p);
}

/* Expected TP group members (world ranks, in TP-rank order) of rank `me`. */
static int expected_tp_group(const char *fake, int n, int tp, bool span, int me, int *members)
{
    if (span) {
        for (int i = 0; i < tp; i++)
            members[i] = me / tp * tp + i;
        return tp;
    }
    int node = fake_node(fake, me), local[64], k = 0, pos = 0;
    for (int r = 0; r < n; r++)
        if (fake_node(fake, r) == node) {
            if (r == me)
                pos = k;
            local[k++] = r;
        }
    for (int i = 0; i < tp; i++)
        members[i] = local[pos / tp * tp + i];
    return tp;
}

static int check_members(tp_comm *c, const int *expect, int count)
{
    tp_device *dev = tp_comm_device(c);
    int n = tp_comm_size(c), bad = 0;
    if (n != count)
        return 1;
    /* Each rank contributes its world rank, which the expectation lists at its
     * position in the group, so the gathered list must equal `expect`. */
    int32_t me = (int32_t)expect[tp_comm_rank(c)], got[64];
    void *d = NULL;
    if (tp_dev_alloc(dev, sizeof(int32_t) * (size_t)n, &d) != TP_OK)
        return 1;
    int32_t *mine = (int32_t *)d + tp_comm_rank(c);
    if (tp_dev_upload(dev, mine, &me, sizeof me) != TP_OK ||
        tp_all_gather(c, mine, d, 1, TP_I32) != TP_OK ||
        tp_dev_download(dev, got, d, sizeof(int32_t) * (size_t)n) != TP_OK)
        bad = 1;
    for (int i = 0; !bad && i < n; i++)
        if (got[i] != expect[i])
            bad = 1;
    tp_dev_free(dev, d);
    return bad;
}

/* Whether msg contains one of the '|'-separated parts of `any`. */
static bool has_any(const char *msg, const char *any)
{
    for (const char *p = any;; p++) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        for (const char *m = msg; *m; m++)
            if (strncmp(m, p, len) == 0)
                return true;
        if (!bar)
            return false;
        p = bar;
    }
}

static tp_status rank_main(tp_comm *world, void *arg)
{
    tcase_args *a = arg;
    int n = tp_comm_size(world), me = tp_comm_rank(world), bad = 0;
    tp_comm *tp = NULL, *dp = NULL;
    tp_layout L;
    int tp_size = a->last_tp > 0 && me == n - 1 ? a->last_tp : a->tp;
    tp_status st = tp_topology(world, tp_size, a->allow_span, &tp, &dp, &L);
    if (st != a->expect) {
        fprintf(stderr, "rank %d: tp_topology returned %s (%s), expected %s\n", me,
                tp_status_string(st), tp_last_error(), tp_status_string(a->expect));
        bad = 1;
    } else if (st != TP_OK) {
        if (!has_any(tp_last_error(), a->why)) {
            fprintf(stderr, "rank %d: message without '%s': %s\n", me, a->why, tp_last_error());
            bad = 1;
        }
    } else {
        int members[64], dp_members[64];
        expected_tp_group(a->fake, n, a->tp, a->allow_span, me, members);
        /* Group index of each rank, numbered node by node (by rank when spanning);
         * the DP group of a rank = the ranks with its TP rank, in group order. */
        int group_of[64], trank_of[64], groups = 0;
        for (int r = 0; r < n; r++)
            group_of[r] = -1;
        for (int node = 0; node < n; node++)
            for (int r = 0; r < n; r++) {
                if ((a->allow_span ? 0 : fake_node(a->fake, r)) != node || group_of[r] >= 0)
                    continue;
                int m[64];
                expected_tp_group(a->fake, n, a->tp, a->allow_span, r, m);
                for (int i = 0; i < a->tp; i++) {
                    group_of[m[i]] = groups;
                    trank_of[m[i]] = i;
                }
                groups++;
            }
        int nd = 0;
        for (int g = 0; g < groups; g++)
            for (int r = 0; r < n; r++)
                if (group_of[r] == g && trank_of[r] == trank_of[me])
                    dp_members[nd++] = r;
        bad |= L.world_rank != me || L.world_size != n || L.tp_size != a->tp ||
               L.tp_rank != trank_of[me] || L.tp_group != group_of[me] ||
               L.dp_rank != group_of[me] || L.dp_size != n / a->tp ||
               L.node != fake_node(a->fake, me);
        bad |= check_members(tp, members, a->tp);
        bad |= check_members(dp, dp_members, nd);
        if (bad)
            fprintf(stderr,
                    "rank %d: wrong layout for TP_FAKE_NODES=%s tp=%d span=%d: node %d "
                    "tp_group %d tp_rank %d dp_rank %d\n",
                    me, a->fake ? a->fake : "(host)", a->tp, a->allow_span, L.node, L.tp_group,
                    L.tp_rank, L.dp_rank);
    }
    tp_comm_free(tp);
    tp_comm_free(dp);
    __atomic_add_fetch(&a->failures, bad, __ATOMIC_RELAXED);
    return TP_OK;
}

static void run_case_odd(const char *fake, int tp, bool span, tp_status expect, int last_tp,
                         const char *why)
{
    if (fake)
        setenv("TP_FAKE_NODES", fake, 1);
    else
        unsetenv("TP_FAKE_NODES");
    tcase_args a = {fake, tp, span, expect, last_tp, why, 0};
    tp_status st = tp_run(g_ctx, rank_main, &a);
    expect_status(st, TP_OK, "tp_run");
    ck_assert_msg(a.failures == 0, "%d rank(s) saw a wrong layout (TP_FAKE_NODES=%s, tp=%d)",
                  a.failures, fake ? fake : "(host)", tp);
}

static void run_case(const char *fake, int tp, bool span, tp_status expect)
{
    run_case_odd(fake, tp, span, expect, 0, tp == 3 ? "does not divide" : "span nodes");
}

/* The cases below assume a world of 4 ranks (the meson tests launch 4). */
START_TEST(one_node)
{
    for (int tp = 1; tp <= 4; tp *= 2)
        run_case(NULL, tp, false, TP_OK);
}
END_TEST

START_TEST(two_nodes_consecutive)
{
    run_case("2", 1, false, TP_OK);
    run_case("2", 2, false, TP_OK);
    run_case("2", 4, false, TP_ERR_INVALID_ARG); /* would span the two nodes */
    run_case("2", 4, true, TP_OK);
}
END_TEST

START_TEST(two_nodes_interleaved)
{
    /* ranks 0,2 on node 0 and 1,3 on node 1: TP groups are {0,2} and {1,3} */
    run_case("0,1,0,1", 2, false, TP_OK);
    run_case("0,1,0,1", 2, true, TP_OK); /* spanning: {0,1}, {2,3} */
}
END_TEST

START_TEST(bad_sizes)
{
    run_case(NULL, 3, false, TP_ERR_INVALID_ARG); /* 3 does not divide 4 */
    run_case("3", 2, false, TP_ERR_INVALID_ARG);  /* nodes of 3 and 1 ranks */
}
END_TEST

/* One rank's arguments differ: every rank returns the same refusal (the
 * others waited in a split or a gather until TP_TIMEOUT_S, or saw the odd
 * rank leave, before the arguments were gathered). */
START_TEST(ranks_disagree)
{
    run_case_odd("2", 2, false, TP_ERR_INVALID_ARG, 1, "every rank must pass the same");
    run_case_odd(NULL, 2, false, TP_ERR_INVALID_ARG, 4, "every rank must pass the same");
    run_case_odd(NULL, 2, false, TP_ERR_INVALID_ARG, 3,
                 "TP size 3 does not divide|rank 3 of 4 failed before the groups were built");
}
END_TEST

int main(int argc, char **argv)
{
    tp_config cfg = {.argc = &argc, .argv = &argv};
    if (tp_init(&cfg, &g_ctx) != TP_OK) {
        fprintf(stderr, "test-topology: tp_init: %s\n", tp_last_error());
        return 1;
    }
    if (tp_ctx_world_size(g_ctx) != 4) {
        fprintf(stderr, "test-topology: needs a world of 4 ranks, got %d\n",
                tp_ctx_world_size(g_ctx));
        tp_finalize(g_ctx);
        return 77;
    }
    Suite *s = suite_create("topology");
    TCase *tc = tcase_create("layouts");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, one_node);
    tcase_add_test(tc, two_nodes_consecutive);
    tcase_add_test(tc, two_nodes_interleaved);
    tcase_add_test(tc, bad_sizes);
    tcase_add_test(tc, ranks_disagree);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    tp_finalize(g_ctx);
    return failed == 0 ? 0 : 1;
}
