/* SPDX-License-Identifier: MIT */
/*
 * tcp.h — internal declarations of the tcp communicator plugin.
 *
 * One process runs one rank. The engine holds one connected socket to every
 * other rank (a full mesh, built at init). Every communicator (world and the
 * results of split) is multiplexed over these sockets: it is a list of global
 * ranks plus an id that every message carries, so a message for the wrong
 * communicator or collective is detected instead of misread.
 *
 * All functions here are hidden (the plugin exports only its entry point).
 */
#ifndef TCP_H
#define TCP_H

#include <stdint.h>
#include <stddef.h>
#include <tp/tp-plugin-util.h> /* tp-plugin.h and the SDK helpers */

#include "tcp-wire.h"

typedef struct tcp_peer {
    int fd;   /* connected, non-blocking; -1 for self or closed */
    int port; /* the peer's listening port */
    char host[TCP_HOST_LEN];
} tcp_peer;

typedef struct tcp_engine {
    const tp_host *host;
    int rank, world;
    double timeout_s;
    size_t chunk_bytes; /* pipelining unit of the collectives */
    uint64_t job_id;    /* chosen by rank 0, checked on every mesh hello */
    tcp_peer *peers;    /* [world] */
    int broken;         /* a wire error left the streams unusable */
    char broken_why[512];
    unsigned char *scratch; /* receive buffer for reductions, scratch_len >= chunk_bytes */
    size_t scratch_len;
} tcp_engine;

typedef struct tcp_comm {
    tcp_engine *eng;
    uint64_t id;
    uint64_t seq;    /* collectives issued so far */
    uint64_t splits; /* splits issued so far (new ids derive from it) */
    int rank, size;
    int *members; /* [size] global ranks, in comm rank order */
} tcp_comm;

/* -- tcp-socket.c ------------------------------------------------------ */

double tcp_now(void);
/* Ask for socket options every tp socket uses (non-blocking, no delay). */
int tcp_set_socket_opts(int fd);
/* Text "host:port" of a peer for messages. */
const char *tcp_peer_name(const tcp_peer *p, char *buf, size_t len);
/* Send/receive exactly len bytes before `deadline` (tcp_now() clock).
 * Return 0, or -1 with errno (ETIMEDOUT, EPIPE, ECONNRESET, ...); a
 * receive that meets end of stream returns -1 with errno = ENODATA and
 * *got the bytes read so far. */
int tcp_send_all(int fd, const void *buf, size_t len, double deadline);
int tcp_recv_all(int fd, void *buf, size_t len, double deadline, size_t *got);
/* Describe how a received header differs from the expected one, or return
 * NULL if it matches. `buf` receives the text. */
const char *tcp_hdr_mismatch(const tcp_hdr *got, const tcp_hdr *want, char *buf, size_t len);
const char *tcp_op_name(unsigned op);

/* One step of a collective: a list of messages to send to `to` and a list
 * to receive from `from`, progressed together with poll(). Send i starts
 * only once `need` receives have completed, which pipelines chunks through
 * a ring. A receive either lands in dst, or (reduce) is combined into dst
 * as dst = received OP dst. */
typedef struct tcp_smsg {
    tcp_hdr hdr;
    const void *data;
    size_t need;
} tcp_smsg;

typedef struct tcp_rmsg {
    tcp_hdr hdr; /* expected */
    void *dst;
    int reduce;
} tcp_rmsg;

typedef struct tcp_xfer {
    tcp_comm *comm;
    const char *opname;
    int to, from; /* global ranks, -1 for none */
    tcp_smsg *s;
    size_t ns;
    tcp_rmsg *r;
    size_t nr;
    tp_dtype dt;
    tp_redop rop;
} tcp_xfer;

tp_status tcp_xfer_run(tcp_xfer *x);

/* Mark the engine unusable after a wire error: send ABORT(why) to every
 * peer whose stream is at a message boundary (all but `mid`, -1 for none),
 * then shut every socket down, so peers blocked on this rank fail at once
 * and can say why. */
void tcp_engine_break(tcp_engine *e, const char *why, int mid);

/* -- tcp-rendezvous.c -------------------------------------------------- */

tp_status tcp_rendezvous(tcp_engine *e, const char *master_addr, const char *master_port);

/* -- tcp-reduce.c ------------------------------------------------------ */

const char *tcp_dtype_name(tp_dtype dt);
const char *tcp_redop_name(tp_redop op);
/* dst[i] = src[i] OP dst[i] for n elements. */
void tcp_reduce(void *dst, const void *src, size_t n, tp_dtype dt, tp_redop op);

/* -- tcp-coll.c -------------------------------------------------------- */

tp_status tcp_all_reduce(void *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                         tp_redop op);
tp_status tcp_all_gather(void *comm, const void *send, void *recv, const size_t *counts,
                         tp_dtype dt);
tp_status tcp_reduce_scatter(void *comm, const void *send, void *recv, const size_t *counts,
                             tp_dtype dt, tp_redop op);
tp_status tcp_broadcast(void *comm, void *buf, size_t count, tp_dtype dt, int root);
tp_status tcp_barrier(void *comm);
tp_status tcp_split(void *comm, int color, int key, void **newcomm, int *rank, int *size);

#endif /* TCP_H */
