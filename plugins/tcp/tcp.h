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
#include <poll.h>
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
    unsigned char *secret; /* TP_TCP_SECRET (or the public insecure key) */
    size_t secret_len;
    unsigned char *quiet; /* [world] peers not watched for notes in this xfer */
    struct pollfd *pfd;   /* [world] poll set of an xfer */
    int *pfd_peer;        /* [world] whose socket each pfd entry is */
} tcp_engine;

typedef struct tcp_comm {
    tcp_engine *eng;
    uint64_t id;
    uint64_t seq;    /* collectives issued so far */
    uint64_t splits; /* splits issued so far (new ids derive from it) */
    int rank, size;
    int *members; /* [size] global ranks, in comm rank order */
} tcp_comm;

/* -- tcp-io.c ---------------------------------------------------------- */

double tcp_now(void);
/* Milliseconds until deadline for poll(): at least 0, at most 1000. */
int tcp_poll_ms(double deadline);
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
/* TP_OK if a received header matches the expected one; else why in `buf`
 * and TP_ERR_INVALID_ARG when the ranks passed different arguments or
 * called different collectives (a program error, as other backends call
 * it), TP_ERR_PEER for bytes that are not this protocol's. */
tp_status tcp_hdr_mismatch(const tcp_hdr *got, const tcp_hdr *want, char *buf, size_t len);
const char *tcp_op_name(unsigned op);

/* Mark the engine unusable after a wire error: send ABORT(why) to every
 * peer whose stream is at a message boundary (all but `mid`, -1 for none),
 * then shut every socket down, so peers blocked on this rank fail at once
 * and can say why. The ABORT's arg carries `status`, which those peers
 * return too. */
void tcp_engine_break(tcp_engine *e, const char *why, int mid, tp_status status);

/* -- tcp-socket.c ------------------------------------------------------ */

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

/* -- tcp-auth.c -------------------------------------------------------- */

/* Take the secret from TP_TCP_SECRET (or TP_TCP_INSECURE=1, with a warning);
 * a named error when neither is set. */
tp_status tcp_auth_setup(tcp_engine *e);
/* n random bytes from getrandom() or /dev/urandom: 0, or -1 with errno. */
int tcp_random(void *buf, size_t n);
/* HMAC-SHA-256(secret, label | dir ('L' listener, 'C' connector) | role | nc | ns). */
void tcp_auth_mac(const tcp_engine *e, char dir, int role, const unsigned char *nc,
                  const unsigned char *ns, unsigned char mac[TCP_MAC_SIZE]);
/* 1 if equal; takes the same time wherever they differ. */
int tcp_auth_equal(const unsigned char *a, const unsigned char *b, size_t n);
/* Send an authentication message (header arg = role). 0 or -1 with errno. */
int tcp_auth_send(int fd, uint16_t op, int role, const void *payload, size_t len, double deadline);
/* NULL if the raw header is the expected authentication message, else why not. */
const char *tcp_auth_check_hdr(const unsigned char *raw, uint16_t op, int role, size_t len,
                               char *buf, size_t buflen);
/* The connecting side of the handshake on fd, `who` names the listener in
 * messages. *retry = 1 when the listener dropped the connection before it
 * answered (worth connecting again). */
tp_status tcp_auth_connect(tcp_engine *e, int fd, int role, const char *who, double deadline,
                           int *retry);

/* -- tcp-stall.c ------------------------------------------------------- */

typedef struct tcp_stall_note {
    uint32_t rank, waits_on, waited_ms, flags; /* flags bit 0: waits to send, not to receive */
    uint64_t seq, comm;                        /* the collective it waits in */
} tcp_stall_note;

/* What a rank that gives up waiting knows. */
typedef struct tcp_stall_ctx {
    tcp_comm *comm;
    const char *opname;
    int waits_on;    /* global rank this rank waits on */
    int sending;     /* 1: waits for it to accept data; 0: to send */
    double waited_s; /* time without progress */
    int from;        /* global rank whose stream this rank was reading, -1 */
    unsigned char hdr[TCP_HDR_SIZE];
    size_t hoff;   /* header bytes of that stream's current message already in hdr */
    uint64_t skip; /* or payload bytes of it still to come */
    int mid;       /* the peer this rank is mid-send to (no note for it), -1 */
    int note_from; /* a peer whose STALL note was already read, -1 */
    tcp_stall_note note;
} tcp_stall_ctx;

/* While waiting: what peer `peer` (not the one being read) has at the head
 * of its stream. 1 a STALL note, 2 an ABORT, 0 anything else (stop watching
 * it), -1 nothing yet. */
int tcp_stall_peek(tcp_engine *e, int peer);
void tcp_stall_note_encode(const tcp_stall_note *n,
                           unsigned char out[TCP_HDR_SIZE + TCP_STALL_SIZE]);
void tcp_stall_note_decode(const unsigned char in[TCP_STALL_SIZE], tcp_stall_note *n);
/* Exchange STALL notes with every peer, name the rank that stopped
 * progressing, break the engine and return the error (TP_ERR_TIMEOUT, or
 * TP_ERR_PEER when the chain ends at a rank that gave up or exited). */
tp_status tcp_stall_diagnose(tcp_stall_ctx *cx);

/* -- tcp-rendezvous.c -------------------------------------------------- */

/* One setting of the job and the variable it came from (for messages). */
typedef struct tcp_env_var {
    const char *value; /* NULL: neither form is set */
    const char *name;  /* "TP_RANK", "RANK", ... */
} tcp_env_var;

/* The job as the environment describes it: TP_RANK, TP_WORLD_SIZE,
 * TP_MASTER_ADDR, TP_MASTER_PORT, each falling back to torchrun's RANK,
 * WORLD_SIZE, MASTER_ADDR, MASTER_PORT when unset (both set and different:
 * TP_ERR_INVALID_ARG naming both). Under torchrun's agent store
 * (TORCHELASTIC_USE_AGENT_STORE=True) the port is MASTER_PORT + 1. */
typedef struct tcp_env_job {
    tcp_env_var rank, world, addr, port;
    char port_buf[16];
} tcp_env_job;
tp_status tcp_env_job_read(const tp_host *host, tcp_env_job *j);

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
