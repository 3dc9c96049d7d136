/* SPDX-License-Identifier: MIT */
/* bench-run.h — run the tp-bench executable as a user would, for the CLI tests. */
#ifndef BENCH_RUN_H
#define BENCH_RUN_H

typedef struct run_result {
    int code; /* exit status, or -1 if it did not exit normally */
    char *out, *err;
} run_result;

/* Run `exe` with a shell-like argument line on loopback + cpu, with
 * TP_WORLD_SIZE, TP_BENCH_CORRUPT and TP_BENCH_FAKE_TIMES unset and extra environment
 * ("NAME=value" strings, NULL-terminated; env_extra may be NULL). */
run_result bench_run(const char *exe, const char *args, const char *const *env_extra);
void bench_run_free(run_result *r);

#endif
