/* SPDX-License-Identifier: MIT */
/*
 * tcp-harness.h — drive libtp-tcp.so directly through its vtable, without
 * libtp: load it with dlopen, give it a tp_host, and run ranks as forked
 * processes. Used by the tcp Check suite and by tcp-rank (a program for
 * tp-launch).
 */
#ifndef TCP_HARNESS_H
#define TCP_HARNESS_H

#include <stddef.h>
#include <tp/tp-plugin.h>

/* The loaded plugin (loaded once per process by th_load). */
extern const tp_comm_ops *th_ops;
extern tp_host th_host;

/* Load the plugin named by TP_TCP_PLUGIN (else the build-time path). Returns
 * 0, or -1 with a message on stderr. */
int th_load(void);
/* The last error set by the plugin in this process. */
const char *th_error(void);
void th_clear_error(void);

/* One rank: engine + world communicator from the environment. */
typedef struct th_rank {
    void *engine;
    void *world;
    int rank, size;
} th_rank;

/* tp_engine_args.world_size = requested (0: engine decides). */
tp_status th_open(th_rank *r, int requested, tp_mem_kind mem);
void th_close(th_rank *r);

/* ---- multi-process runner (the Check suite) */

#define TH_MAX_RANKS 8

typedef struct th_result {
    int exited;       /* 1 if the process exited (else killed by a signal or hung) */
    int code;         /* exit code, or the signal number */
    int hung;         /* killed by the runner's guard */
    tp_status status; /* what the scenario returned */
    char msg[1024];   /* th_error() at that point */
} th_result;

/* A scenario runs in a child with TP_RANK etc. set; it returns a status and
 * leaves its message in th_error(). */
typedef tp_status (*th_scenario)(int rank, int size, void *arg);

/* Run `start` ranks of a world of `world` (ranks start..start+count-1 where
 * `ranks` is NULL, else the listed ranks) on a fresh port. extra_env is
 * "NAME=VALUE" strings or NULL. guard_s: kill after this many seconds
 * (reported as hung). Returns the master port used. */
int th_run(int world, const int *ranks, int nranks, const char *const *extra_env, double guard_s,
           th_scenario fn, void *arg, th_result *res);

/* The TP_TCP_SECRET th_run gives every rank (extra_env may override it). */
#define TH_SECRET "tests-tcp-0123456789abcdef0123456789abcdef"

/* A free TCP port on 127.0.0.1 (bind to 0, read it, close). */
int th_free_port(void);

#endif
