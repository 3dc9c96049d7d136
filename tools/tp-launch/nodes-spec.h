/* SPDX-License-Identifier: MIT */
/*
 * nodes-spec.h — the pure parts of `tp-launch --nodes`: the --link spec,
 * block placement of ranks on nodes, node addresses and the names of a
 * job's namespaces. No system calls here (unit-tested in tests/nodes).
 */
#ifndef TPL_NODES_SPEC_H
#define TPL_NODES_SPEC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define TPL_MAX_NODES 1024
/* Rates and delays --link accepts (tbf and netem handle these easily). */
#define TPL_RATE_MIN_BPS 8000ull         /* 8 kbit/s */
#define TPL_RATE_MAX_BPS 400000000000ull /* 400 Gbit/s */
#define TPL_DELAY_MAX_NS 10000000000ull  /* 10 s */

typedef struct tpl_link {
    uint64_t rate_bps; /* bits per second; 0: unshaped */
    uint64_t delay_ns; /* one-way delay added in each direction; 0: none */
} tpl_link;

/* "RATE[,DELAY]": RATE is a number with bit, kbit, mbit, gbit, tbit (bits/s)
 * or bps, kbps, mbps, gbps (bytes/s; k = 1000, as in tc); DELAY is a number
 * with ns, us, ms or s. Returns 0, or -1 with why in err. */
int tpl_parse_link(const char *spec, tpl_link *out, char *err, size_t errlen);

/* The link as TP_LAUNCH_LINK shows it: "none" when unshaped, else the rate
 * in the largest of tbit, gbit, mbit, kbit, bit that holds it exactly, and
 * ",DELAY" in the largest of s, ms, us, ns that does (e.g. "1gbit,50us",
 * "1500mbit"; 1gbps gives "8gbit"). */
void tpl_link_str(const tpl_link *l, char *buf, size_t len);

/* The node (0..k-1) of rank r of n in blocks: node i holds ranks
 * i*n/k .. (i+1)*n/k - 1 (1 <= k <= n). */
long tpl_node_of_rank(long r, long n, long k);

/* Node i's address in 198.18.0.0/15 (198.18.0.1 for node 0), "a.b.c.d". */
void tpl_node_addr(long node, char *buf, size_t len);

/* The namespace names of job `pid`: "tpl<pid>-br" (the bridge) and
 * "tpl<pid>-n<i>" (node i; also its host name). */
void tpl_ns_name(pid_t pid, long node, char *buf, size_t len); /* node -1: the bridge */

/* If name is exactly one of a job's namespace names, its job pid (> 0);
 * else 0. Strict: no leading zeros, nothing after the name. */
pid_t tpl_ns_job(const char *name);

/* mpirun's --host list for job `pid`: every node's name with its slot
 * count, in node order ("tpl<pid>-n0:2,tpl<pid>-n1:2"). 0, or -1 if len is
 * too small. */
int tpl_mpi_hosts(pid_t pid, long n, long k, char *buf, size_t len);

/* The node of a job's node name "tpl<job>-n<i>": i, or -1 if name is not a
 * node of that job (the bridge's name included). */
long tpl_ns_node(const char *name, pid_t job);

#endif
