/* SPDX-License-Identifier: MIT */
/*
 * tp-expect.h — expect_status(), the one check of a returned tp_status:
 *
 *   expect_status(D->gemm(H, &g), TP_OK, "gemm m=%d", m);
 *
 * fails with "gemm m=5: got TP_ERR_INVALID_ARG, expected TP_OK: <message>".
 * Header-only and free of libtp, since the suites that drive a plugin's
 * vtable link none: the status names are spelled out here, and the message
 * is TP_EXPECT_MESSAGE(), which a file may define before including this
 * header (default: tp_last_error()). The expression is evaluated once,
 * before the message is read. tpt_run_named() is the main() of a suite
 * whose tests can also be run one by one by name.
 */
#ifndef TP_EXPECT_H
#define TP_EXPECT_H

#include <check.h>
#include <stdio.h>
#include <string.h>

#include <tp/tp-plugin.h>

#ifndef TP_EXPECT_MESSAGE
#define TP_EXPECT_MESSAGE() tp_last_error()
#endif

static inline const char *tpt_status_name(tp_status st)
{
    static const char *const names[] = {
        "TP_OK",
        "TP_ERR_INVALID_ARG",
        "TP_ERR_SHAPE",
        "TP_ERR_NOT_SUPPORTED",
        "TP_ERR_NO_MEMORY",
        "TP_ERR_PLUGIN",
        "TP_ERR_UNAVAILABLE",
        "TP_ERR_TIMEOUT",
        "TP_ERR_PEER",
        "TP_ERR_COMM",
        "TP_ERR_DEVICE",
        "TP_ERR_IO",
        "TP_ERR_INTERNAL",
    };
    _Static_assert(sizeof names / sizeof names[0] == TP_STATUS_COUNT_, "a name per tp_status");
    return (unsigned)st < sizeof names / sizeof names[0] ? names[st] : "(not a tp_status)";
}

#define expect_status(expr, want, ...)                                                             \
    do {                                                                                           \
        tp_status got_ = (expr), want_ = (want);                                                   \
        if (got_ != want_) {                                                                       \
            char what_[512];                                                                       \
            snprintf(what_, sizeof what_, __VA_ARGS__);                                            \
            ck_abort_msg("%s: got %s, expected %s: %s", what_, tpt_status_name(got_),              \
                         tpt_status_name(want_), TP_EXPECT_MESSAGE());                             \
        }                                                                                          \
    } while (0)

/* A suite's tests by name, so that `prog NAME` runs one of them. */
typedef struct tpt_named_test {
    const char *name;
    const TTest *test;
} tpt_named_test;

/* Run `tests` (all, or only argv[1] when given) as one Check case with
 * `timeout_s` per test; the exit status for main(). */
static inline int tpt_run_named(const char *suite, const tpt_named_test *tests, size_t n,
                                double timeout_s, int argc, char **argv)
{
    Suite *s = suite_create(suite);
    TCase *tc = tcase_create(suite);
    tcase_set_timeout(tc, timeout_s);
    for (size_t i = 0; i < n; i++)
        if (argc < 2 || strcmp(argv[1], tests[i].name) == 0)
            tcase_add_test(tc, tests[i].test);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

#endif
