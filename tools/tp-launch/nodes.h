/* SPDX-License-Identifier: MIT */
/*
 * nodes.h — the emulated cluster of `tp-launch --nodes K [--link ...]`:
 * K network namespaces ("nodes", each with its own host name once a rank
 * enters it) joined by veth pairs to a bridge in a namespace of its own,
 * both directions of every veth shaped with tbf (rate) and netem (delay).
 * Nothing is created in the namespace tp-launch runs in.
 */
#ifndef TPL_NODES_H
#define TPL_NODES_H

#include <sys/types.h>

#include "nodes-spec.h"

typedef struct tpl_cluster {
    long k;        /* node count */
    tpl_link link; /* rate_bps 0: unshaped */
    pid_t job;     /* tp-launch's pid: the names are "tpl<job>-..." */
    pid_t watcher; /* removes everything if tp-launch dies first; -1: none */
    int watch_fd;  /* tp-launch's end of the watcher's pipe; -1: none */
} tpl_cluster;

/* Check the tools and privileges, remove stale namespaces of dead jobs,
 * start the watcher, make the cluster. 0, or -1 after printing what is
 * missing or failed (then nothing of the job is left). */
int tpl_cluster_create(tpl_cluster *c, long k, const tpl_link *link);

/* Remove every namespace of the job (and with them its veths and bridge),
 * then release the watcher. Safe to call twice. */
void tpl_cluster_destroy(tpl_cluster *c);

/* In a forked rank: enter node's network namespace and a new UTS namespace
 * with the node's host name. 0, or -1 after printing why. */
int tpl_cluster_enter(const tpl_cluster *c, long node);

#endif
