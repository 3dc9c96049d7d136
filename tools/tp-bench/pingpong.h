/* SPDX-License-Identifier: MIT */
/* pingpong.h — the hardware floor of small-message latency: one cache
 * line bounced between two cores (pingpong.c). */
#ifndef TP_BENCH_PINGPONG_H
#define TP_BENCH_PINGPONG_H

#include <stdbool.h>

/* Median round trip in seconds of one cache line between two threads of
 * this process (procs false) or two processes sharing an anonymous mapping
 * (procs true: the path shm's ranks use), on the first two CPUs this
 * process may use: write a flag, spin until the peer's answer. `samples`
 * medians of `rounds` round trips each. Returns -1 if it could not run
 * (no thread, no process, or the peer stopped answering for 5 s). */
double bench_pingpong(bool procs, int samples, int rounds);

#endif
