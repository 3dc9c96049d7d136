/* SPDX-License-Identifier: MIT */
/*
 * test-nodes-spec — the pure parts of `tp-launch --nodes`: the --link
 * parser, block placement, node addresses, and which namespace names count
 * as a job's (the only ones tp-launch ever deletes).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nodes-spec.h"

static int parse(const char *s, tpl_link *l)
{
    char err[256] = "";
    *l = (tpl_link){99, 99};
    int rc = tpl_parse_link(s, l, err, sizeof err);
    if (rc < 0)
        ck_assert_msg(strstr(err, "expected") != NULL, "'%s': message without 'expected': %s", s,
                      err);
    return rc;
}

START_TEST(link_good)
{
    static const struct {
        const char *s;
        unsigned long long rate, delay;
    } ok[] = {
        {"1gbit", 1000000000ull, 0},
        {"5gbit", 5000000000ull, 0},
        {"1gbit,50us", 1000000000ull, 50000},
        {"500mbit,1ms", 500000000ull, 1000000},
        {"2.5Gbit,0.5us", 2500000000ull, 500},
        {"100kbit", 100000ull, 0},
        {"1gbps", 8000000000ull, 0},
        {"10mbps,2s", 80000000ull, 2000000000ull},
        {"8000bit,0ns", 8000ull, 0},
        {"400gbit,10s", 400000000000ull, 10000000000ull},
        {"1tbit", 0, 0}, /* over the range: checked below as bad */
    };
    for (size_t i = 0; i + 1 < sizeof ok / sizeof ok[0]; i++) {
        tpl_link l;
        ck_assert_msg(parse(ok[i].s, &l) == 0, "'%s' refused", ok[i].s);
        ck_assert_msg(l.rate_bps == ok[i].rate, "'%s': rate %llu, expected %llu", ok[i].s,
                      (unsigned long long)l.rate_bps, ok[i].rate);
        ck_assert_msg(l.delay_ns == ok[i].delay, "'%s': delay %llu, expected %llu", ok[i].s,
                      (unsigned long long)l.delay_ns, ok[i].delay);
    }
}
END_TEST

START_TEST(link_bad)
{
    static const char *bad[] = {
        "",           "1",           "gbit",     "1gb",       "-1gbit",       "+1gbit",
        " 1gbit",     "1gbit ",      "1 gbit",   "1gbit,",    "1gbit,5",      "1gbit,-5us",
        "1gbit,5us,", "1gbit,,5us",  "inf gbit", "nangbit",   "1e999gbit",    "0gbit",
        "7999bit",    "1tbit",       "401gbit",  "1gbit,11s", "1gbit,1e999s", "1gbit,us",
        "0x10gbit",   "1gbit,50usx", "abc"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tpl_link l;
        ck_assert_msg(parse(bad[i], &l) < 0, "'%s' accepted (rate %llu, delay %llu)", bad[i],
                      (unsigned long long)l.rate_bps, (unsigned long long)l.delay_ns);
    }
}
END_TEST

START_TEST(placement_blocks)
{
    /* node i holds ranks i*n/k .. (i+1)*n/k - 1, every node at least one */
    for (long n = 1; n <= 64; n++)
        for (long k = 1; k <= n; k++) {
            long prev = 0;
            for (long i = 0; i < k; i++)
                for (long r = i * n / k; r < (i + 1) * n / k; r++) {
                    long got = tpl_node_of_rank(r, n, k);
                    ck_assert_msg(got == i, "n=%ld k=%ld rank %ld: node %ld, expected %ld", n, k, r,
                                  got, i);
                    ck_assert(got >= prev);
                    prev = got;
                }
            ck_assert_int_eq(tpl_node_of_rank(0, n, k), 0);
            ck_assert_int_eq(tpl_node_of_rank(n - 1, n, k), k - 1);
        }
    ck_assert_int_eq(tpl_node_of_rank(1, 4, 2), 0);
    ck_assert_int_eq(tpl_node_of_rank(2, 4, 2), 1);
    ck_assert_int_eq(tpl_node_of_rank(2, 5, 2), 1); /* 5 on 2: {0,1} {2,3,4} */
    ck_assert_int_eq(tpl_node_of_rank(1, 5, 2), 0);
}
END_TEST

START_TEST(addresses)
{
    char a[32];
    tpl_node_addr(0, a, sizeof a);
    ck_assert_str_eq(a, "198.18.0.1");
    tpl_node_addr(1, a, sizeof a);
    ck_assert_str_eq(a, "198.18.0.2");
    tpl_node_addr(254, a, sizeof a);
    ck_assert_str_eq(a, "198.18.0.255");
    tpl_node_addr(255, a, sizeof a);
    ck_assert_str_eq(a, "198.18.1.0");
    tpl_node_addr(TPL_MAX_NODES - 1, a, sizeof a);
    ck_assert_str_eq(a, "198.18.4.0"); /* well inside 198.18.0.0/15 */
}
END_TEST

START_TEST(job_names)
{
    char n[64];
    tpl_ns_name(1234, -1, n, sizeof n);
    ck_assert_str_eq(n, "tpl1234-br");
    ck_assert_int_eq(tpl_ns_job(n), 1234);
    tpl_ns_name(1234, 7, n, sizeof n);
    ck_assert_str_eq(n, "tpl1234-n7");
    ck_assert_int_eq(tpl_ns_job(n), 1234);
    ck_assert_int_eq(tpl_ns_job("tpl1-n0"), 1);
    ck_assert_int_eq(tpl_ns_job("tpl99-n1023"), 99);
    static const char *other[] = {
        "",          "tpl",       "tpl-br",           "tpl0-br",       "tpl012-br",
        "tpl12",     "tpl12-",    "tpl12-n",          "tpl12-n01",     "tpl12-n1024",
        "tpl12-brx", "tpl12-n1x", "tpl12-x1",         "tplx12-n1",     "xtpl12-n1",
        "TPL12-n1",  "tpl12-n-1", "tpl1234567890-br", "tpl12-br/../x", "docker0"};
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++)
        ck_assert_msg(tpl_ns_job(other[i]) == 0, "'%s' taken for a job's name", other[i]);
}
END_TEST

/* TP_LAUNCH_LINK: canonical, and parsing it gives the same link back. */
START_TEST(link_canonical)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"1gbit", "1gbit"},
        {"1Gbit,50us", "1gbit,50us"},
        {"1000mbit", "1gbit"},
        {"1.5gbit", "1500mbit"},
        {"1gbps", "8gbit"},
        {"500mbit,1ms", "500mbit,1ms"},
        {"5gbit,1.5ms", "5gbit,1500us"},
        {"8000bit,0ns", "8kbit"},
        {"400gbit,10s", "400gbit,10s"},
        {"100kbit,2500ns", "100kbit,2500ns"},
        {"12345bit", "12345bit"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tpl_link l, back;
        char s[64], err[256];
        ck_assert_int_eq(tpl_parse_link(cases[i].in, &l, err, sizeof err), 0);
        tpl_link_str(&l, s, sizeof s);
        ck_assert_msg(strcmp(s, cases[i].out) == 0, "'%s' shown as '%s', expected '%s'",
                      cases[i].in, s, cases[i].out);
        ck_assert_int_eq(tpl_parse_link(s, &back, err, sizeof err), 0);
        ck_assert(back.rate_bps == l.rate_bps && back.delay_ns == l.delay_ns);
    }
    char s[16];
    tpl_link_str(&(tpl_link){0, 0}, s, sizeof s);
    ck_assert_str_eq(s, "none");
}
END_TEST

/* mpirun's host list: the node names with the block sizes as slots. */
START_TEST(mpi_hosts)
{
    char h[2048];
    ck_assert_int_eq(tpl_mpi_hosts(42, 4, 2, h, sizeof h), 0);
    ck_assert_str_eq(h, "tpl42-n0:2,tpl42-n1:2");
    ck_assert_int_eq(tpl_mpi_hosts(42, 5, 2, h, sizeof h), 0);
    ck_assert_str_eq(h, "tpl42-n0:2,tpl42-n1:3");
    ck_assert_int_eq(tpl_mpi_hosts(7, 1, 1, h, sizeof h), 0);
    ck_assert_str_eq(h, "tpl7-n0:1");
    ck_assert_int_eq(tpl_mpi_hosts(7, 8, 3, h, sizeof h), 0);
    ck_assert_str_eq(h, "tpl7-n0:2,tpl7-n1:3,tpl7-n2:3");
    /* the slots agree with tpl_node_of_rank for every split */
    for (long n = 1; n <= 64; n++)
        for (long k = 1; k <= n; k++) {
            ck_assert_int_eq(tpl_mpi_hosts(9, n, k, h, sizeof h), 0);
            const char *p = h;
            for (long i = 0; i < k; i++) {
                long count = 0;
                for (long r = 0; r < n; r++)
                    count += tpl_node_of_rank(r, n, k) == i;
                char want[64];
                snprintf(want, sizeof want, "tpl9-n%ld:%ld", i, count);
                ck_assert_msg(strncmp(p, want, strlen(want)) == 0, "n=%ld k=%ld: %s lacks %s", n, k,
                              h, want);
                p += strlen(want) + 1;
            }
        }
    ck_assert_int_eq(tpl_mpi_hosts(42, 4, 2, h, 12), -1); /* too small: no overrun */
}
END_TEST

START_TEST(node_names)
{
    ck_assert_int_eq(tpl_ns_node("tpl42-n0", 42), 0);
    ck_assert_int_eq(tpl_ns_node("tpl42-n13", 42), 13);
    static const char *other[] = {"tpl42-br", "tpl421-n0",   "tpl4-n0", "tpl42-n01", "tpl42-n0x",
                                  "tpl42-n",  "tpl42-n1024", "",        "tpl42-n-1"};
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++)
        ck_assert_msg(tpl_ns_node(other[i], 42) == -1, "'%s' taken for a node of job 42", other[i]);
    ck_assert_int_eq(tpl_ns_node("tpl42-n0", 0), -1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("nodes-spec");
    TCase *tc = tcase_create("spec");
    tcase_add_test(tc, link_good);
    tcase_add_test(tc, link_bad);
    tcase_add_test(tc, placement_blocks);
    tcase_add_test(tc, addresses);
    tcase_add_test(tc, job_names);
    tcase_add_test(tc, link_canonical);
    tcase_add_test(tc, mpi_hosts);
    tcase_add_test(tc, node_names);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
