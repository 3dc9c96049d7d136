/* SPDX-License-Identifier: MIT */
/*
 * tcp-rendezvous.c — find the other ranks and connect a full mesh.
 *
 * 1. Rank 0 listens on TP_MASTER_ADDR:TP_MASTER_PORT. Every rank opens its
 *    own listening socket on an ephemeral port.
 * 2. Rank r > 0 connects to the master (retrying with backoff: rank 0 may
 *    start later) and sends HELLO(rank, world, port). Rank 0 checks each
 *    hello and answers every rank with TABLE(job id, host:port of every
 *    rank), or ABORT(reason) when something is wrong.
 * 3. Rank r connects to every rank j < r and sends MESH(job id, r, world);
 *    it accepts one connection from every rank j > r.
 * Every wait is bounded by TP_TIMEOUT_S.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "tcp.h"

#define MAX_PENDING 256 /* connections accepted but not yet adopted */

static void addr_text(const struct sockaddr *sa, socklen_t len, char *host, size_t hostlen,
                      int *port)
{
    char serv[16];
    if (getnameinfo(sa, len, host, (socklen_t)hostlen, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        snprintf(host, hostlen, "?");
        snprintf(serv, sizeof serv, "0");
    }
    *port = atoi(serv);
}

static void fd_name(int fd, int peer, char *buf, size_t len)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char host[TCP_HOST_LEN];
    int port = 0;
    int r = peer ? getpeername(fd, (struct sockaddr *)&ss, &sl)
                 : getsockname(fd, (struct sockaddr *)&ss, &sl);
    if (r != 0) {
        snprintf(buf, len, "?");
        return;
    }
    addr_text((struct sockaddr *)&ss, sl, host, sizeof host, &port);
    snprintf(buf, len, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
}

static tp_status resolve(tcp_engine *e, const char *addr, const char *port, struct addrinfo **out)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    char *end;
    long p = strtol(port, &end, 10);
    if (*port == '\0' || *end != '\0' || p <= 0 || p > 65535)
        return e->host->set_error(TP_ERR_INVALID_ARG,
                                  "tcp: TP_MASTER_PORT=\"%s\" is not a port number (1..65535); "
                                  "tp-launch picks a free one for you",
                                  port);
    int r = getaddrinfo(addr, port, &hints, out);
    if (r != 0)
        return e->host->set_error(TP_ERR_INVALID_ARG,
                                  "tcp: cannot resolve TP_MASTER_ADDR=\"%s\": %s", addr,
                                  gai_strerror(r));
    return TP_OK;
}

/* A non-blocking listening socket bound to sa (port taken from sa). */
static int listen_on(const struct sockaddr *sa, socklen_t len, int backlog)
{
    int one = 1;
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, sa, len) < 0 || listen(fd, backlog) < 0 || tcp_set_socket_opts(fd) < 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

/* Open the peer listener on the same address as `like` (an fd bound to the
 * interface the other ranks reach), ephemeral port. */
static tp_status open_peer_listener(tcp_engine *e, int like, int *lfd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(like, (struct sockaddr *)&ss, &sl) < 0)
        return e->host->set_error(TP_ERR_IO, "tcp: getsockname failed: %s", strerror(errno));
    if (ss.ss_family == AF_INET)
        ((struct sockaddr_in *)&ss)->sin_port = 0;
    else if (ss.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&ss)->sin6_port = 0;
    int fd = listen_on((struct sockaddr *)&ss, sl, SOMAXCONN);
    if (fd < 0)
        return e->host->set_error(TP_ERR_IO,
                                  "tcp: rank %d cannot open its peer listening socket: %s", e->rank,
                                  strerror(errno));
    sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    addr_text((struct sockaddr *)&ss, sl, e->peers[e->rank].host, TCP_HOST_LEN,
              &e->peers[e->rank].port);
    *lfd = fd;
    return TP_OK;
}

/* One connect attempt, waiting at most `wait_s`: the fd, or -1 with errno. */
static int connect_once(const struct sockaddr *sa, socklen_t len, double wait_s)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (tcp_set_socket_opts(fd) < 0) {
        int en = errno;
        close(fd);
        errno = en;
        return -1;
    }
    int r = connect(fd, sa, len);
    if (r < 0 && errno == EINPROGRESS) {
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        int ms = wait_s > 0 ? (int)(wait_s * 1000) + 1 : 0;
        r = poll(&pfd, 1, ms);
        if (r == 0) {
            errno = ETIMEDOUT;
            r = -1;
        } else if (r > 0) {
            int err = 0;
            socklen_t el = sizeof err;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
            errno = err;
            r = err ? -1 : 0;
        }
    }
    if (r == 0)
        return fd;
    int en = errno;
    close(fd);
    errno = en;
    return -1;
}

/* Each connect attempt waits at most this long, then a fresh socket tries
 * again: a SYN dropped by a full accept queue is retransmitted only after
 * 1, 3, 7 s, so one long wait would be one try. */
#define CONNECT_TRY_S 1.0

/* Connect to sa, retrying until deadline (refused/unreachable with backoff).
 * With `refused_final`, a refusal ends it at once (the listener was there
 * and is gone). */
static int connect_retry(const struct sockaddr *sa, socklen_t len, double deadline, int *last_err,
                         int *attempts, int refused_final)
{
    double backoff = 0.01;
    *attempts = 0;
    for (;;) {
        ++*attempts;
        double left = deadline - tcp_now();
        int fd = connect_once(sa, len, left < CONNECT_TRY_S ? left : CONNECT_TRY_S);
        if (fd >= 0)
            return fd;
        *last_err = errno;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM ||
            (refused_final && errno == ECONNREFUSED))
            return -1;
        if (errno == ETIMEDOUT && tcp_now() < deadline)
            continue; /* that attempt's SYN was dropped: a fresh one now */
        if (tcp_now() + backoff >= deadline)
            return -1;
        struct timespec ts = {.tv_sec = (time_t)backoff,
                              .tv_nsec = (long)((backoff - (double)(time_t)backoff) * 1e9)};
        nanosleep(&ts, NULL);
        backoff = backoff * 2 > 0.5 ? 0.5 : backoff * 2;
    }
}

static int send_msg(int fd, uint16_t op, const void *payload, size_t len, double deadline)
{
    unsigned char h[TCP_HDR_SIZE];
    tcp_hdr hdr = {.magic = TCP_MAGIC, .version = TCP_WIRE_VERSION, .op = op, .len = len};
    tcp_hdr_encode(&hdr, h);
    if (tcp_send_all(fd, h, sizeof h, deadline) < 0)
        return -1;
    return len ? tcp_send_all(fd, payload, len, deadline) : 0;
}

static void send_abort(int fd, const char *reason)
{
    size_t n = strlen(reason);
    if (n > TCP_ABORT_MAX)
        n = TCP_ABORT_MAX;
    (void)send_msg(fd, TCP_OP_ABORT, reason, n, tcp_now() + 1.0);
}

static void random_job_id(uint64_t *id)
{
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, id, sizeof *id) : -1;
    if (fd >= 0)
        close(fd);
    if (n != (ssize_t)sizeof *id) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        *id = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40);
    }
    if (*id == 0)
        *id = 1;
}

/* ------------------------------------------------------- accept loop */

/* A connection that has not authenticated within this many seconds of its
 * accept is dropped, so idle connections cannot hold the pending slots. */
#define AUTH_DEADLINE_S 1.0

enum {
    ST_CHALLENGE,
    ST_RESPONSE,
    ST_HELLO
}; /* what a pending connection sends next */

typedef struct pending {
    int fd;
    int stage;
    double deadline; /* for the handshake (ST_CHALLENGE, ST_RESPONSE) */
    size_t got;
    unsigned char buf[TCP_HDR_SIZE + TCP_NONCE_SIZE]; /* >= every message read here */
    unsigned char nc[TCP_NONCE_SIZE], ns[TCP_NONCE_SIZE];
    char from[96];
} pending;

_Static_assert(TCP_NONCE_SIZE >= TCP_MESH_SIZE && TCP_NONCE_SIZE >= TCP_HELLO_SIZE &&
                   TCP_MAC_SIZE == TCP_NONCE_SIZE,
               "pending.buf holds every message read before a rank is adopted");

typedef struct acceptor {
    tcp_engine *e;
    int lfd;
    int mesh; /* 0: master accepting HELLO, 1: rank accepting MESH */
    int *fds; /* [world]: accepted connection per rank, -1 if none */
    int need, have;
    pending p[MAX_PENDING];
    int np;
    long refused; /* connections refused so far (only the first few are logged) */
} acceptor;

static size_t acc_msg_size(const acceptor *a, const pending *p)
{
    if (p->stage != ST_HELLO)
        return TCP_HDR_SIZE + TCP_NONCE_SIZE; /* challenge and response are 32 bytes */
    return TCP_HDR_SIZE + (a->mesh ? TCP_MESH_SIZE : TCP_HELLO_SIZE);
}

static const char *acc_port(const acceptor *a)
{
    return a->mesh ? "this rank's peer port" : "the master port";
}

/* The header a hello (master) or mesh hello (rank) must have. */
static tcp_hdr acc_want_hdr(const acceptor *a)
{
    return (tcp_hdr){.magic = TCP_MAGIC,
                     .version = TCP_WIRE_VERSION,
                     .op = a->mesh ? TCP_OP_MESH : TCP_OP_HELLO,
                     .len = a->mesh ? TCP_MESH_SIZE : TCP_HELLO_SIZE};
}

/* Fatal error: tell every authenticated connection (master only), then fail. */
static tp_status acc_fail(acceptor *a, tp_status st, const char *msg)
{
    if (!a->mesh) {
        for (int i = 0; i < a->e->world; i++)
            if (a->fds[i] >= 0)
                send_abort(a->fds[i], msg);
        for (int i = 0; i < a->np; i++)
            if (a->p[i].stage == ST_HELLO)
                send_abort(a->p[i].fd, msg);
    }
    return a->e->host->set_error(st, "%s", msg);
}

static void drop_pending(acceptor *a, int i)
{
    a->p[i] = a->p[--a->np];
}

/* An unauthenticated connection misbehaved: log it, close it, go on. */
/* Refusals logged one by one; the rest are counted (a flood must not cost
 * a log line each: that would slow the accept loop down). */
#define REFUSED_LOGGED 16

static void acc_reject(acceptor *a, int i, const char *why)
{
    if (a->refused++ < REFUSED_LOGGED)
        fprintf(stderr, "tp tcp: rank %d: refused a connection from %s to %s: %s\n", a->e->rank,
                a->p[i].from, acc_port(a), why);
    close(a->p[i].fd);
    drop_pending(a, i);
}

/* Drop every connection still unauthenticated after its deadline; the
 * earliest deadline left (or `until`). */
static double acc_expire(acceptor *a, double until)
{
    double now = tcp_now();
    for (int i = a->np - 1; i >= 0; i--)
        if (a->p[i].stage != ST_HELLO && now >= a->p[i].deadline)
            acc_reject(a, i, "did not authenticate within 1 s");
    for (int i = 0; i < a->np; i++)
        if (a->p[i].stage != ST_HELLO && a->p[i].deadline < until)
            until = a->p[i].deadline;
    return until;
}
/* Check a complete hello/mesh message from pending i; adopt its fd. */
static tp_status acc_check(acceptor *a, int i)
{
    tcp_engine *e = a->e;
    pending *p = &a->p[i];
    tcp_hdr h, want = acc_want_hdr(a);
    char why[384], msg[768];
    const char *where = acc_port(a);
    tcp_hdr_decode(p->buf, &h);
    if (tcp_hdr_mismatch(&h, &want, why, sizeof why)) {
        snprintf(msg, sizeof msg, "tcp rendezvous: rank %d: a connection from %s to %s sent %s",
                 e->rank, p->from, where, why);
        return acc_fail(a, TP_ERR_PEER, msg);
    }
    const unsigned char *b = p->buf + TCP_HDR_SIZE;
    uint64_t job = 0;
    uint32_t rank, world;
    int port = 0;
    if (a->mesh) {
        job = tcp_get64(b);
        rank = tcp_get32(b + 8);
        world = tcp_get32(b + 12);
    } else {
        rank = tcp_get32(b);
        world = tcp_get32(b + 4);
        port = tcp_get16(b + 8);
    }
    if (world != (uint32_t)e->world) {
        snprintf(msg, sizeof msg,
                 "tcp rendezvous: rank %u (connected from %s) was started with TP_WORLD_SIZE=%u "
                 "but rank %d has TP_WORLD_SIZE=%d: start every rank with the same world size",
                 rank, p->from, world, e->rank, e->world);
        return acc_fail(a, TP_ERR_INVALID_ARG, msg);
    }
    if (a->mesh && job != e->job_id) {
        snprintf(msg, sizeof msg,
                 "tcp rendezvous: rank %d: a connection from %s claims rank %u of job %#llx, but "
                 "this job is %#llx: two jobs share TP_MASTER_PORT or a stale rank is running",
                 e->rank, p->from, rank, (unsigned long long)job, (unsigned long long)e->job_id);
        return acc_fail(a, TP_ERR_PEER, msg);
    }
    if (!a->mesh && port == 0) {
        snprintf(msg, sizeof msg,
                 "tcp rendezvous: rank %u (connected from %s) registered listening port 0: a "
                 "corrupted or foreign hello",
                 rank, p->from);
        return acc_fail(a, TP_ERR_PEER, msg);
    }
    uint32_t lo = a->mesh ? (uint32_t)e->rank + 1 : 1;
    if (rank < lo || rank >= world) {
        snprintf(msg, sizeof msg,
                 "tcp rendezvous: rank %d: a connection from %s claims rank %u, expected a rank "
                 "in %u..%u: check TP_RANK of every process",
                 e->rank, p->from, rank, lo, world - 1);
        return acc_fail(a, TP_ERR_PEER, msg);
    }
    if (a->fds[rank] >= 0) {
        char other[96];
        fd_name(a->fds[rank], 1, other, sizeof other);
        snprintf(msg, sizeof msg,
                 "tcp rendezvous: two processes claim rank %u (connected from %s and from %s): "
                 "TP_RANK must be unique",
                 rank, other, p->from);
        return acc_fail(a, TP_ERR_PEER, msg);
    }
    if (!a->mesh) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int dummy;
        getpeername(p->fd, (struct sockaddr *)&ss, &sl);
        addr_text((struct sockaddr *)&ss, sl, e->peers[rank].host, TCP_HOST_LEN, &dummy);
        e->peers[rank].port = port;
    }
    if (a->mesh) {
        /* Tell the connector it is in: until then, a dropped connection
         * (evicted while it authenticated) is one it connects again. */
        unsigned char ack = TCP_MESH_ACK;
        if (tcp_send_all(p->fd, &ack, 1, tcp_now() + 1.0) < 0) {
            snprintf(msg, sizeof msg,
                     "tcp rendezvous: rank %d could not acknowledge rank %u (connected from %s): "
                     "%s: it exited during the rendezvous",
                     e->rank, rank, p->from, strerror(errno));
            return acc_fail(a, TP_ERR_PEER, msg);
        }
    }
    a->fds[rank] = p->fd;
    a->have++;
    e->host->debug("comm", "tcp: rank %d: rank %u %s from %s", e->rank, rank,
                   a->mesh ? "connected to this rank" : "registered", p->from);
    drop_pending(a, i);
    return TP_OK;
}

static tp_status acc_missing(acceptor *a, double timeout_s)
{
    tcp_engine *e = a->e;
    char list[256] = "";
    size_t used = 0;
    int shown = 0, lo = a->mesh ? e->rank + 1 : 1;
    for (int r = lo; r < e->world; r++) {
        if (a->fds[r] >= 0)
            continue;
        if (shown++ == 8) {
            snprintf(list + used, sizeof list - used, ", ...");
            break;
        }
        int n = snprintf(list + used, sizeof list - used, "%s%d", used ? ", " : "", r);
        if (n > 0 && (size_t)n < sizeof list - used)
            used += (size_t)n;
    }
    char msg[768], me[96];
    fd_name(a->lfd, 0, me, sizeof me);
    if (a->mesh)
        snprintf(msg, sizeof msg,
                 "tcp rendezvous: rank %d waited %g s (TP_TIMEOUT_S) at %s for rank(s) %s to "
                 "connect (%d of %d arrived): they exited or hang before connecting; see their "
                 "errors",
                 e->rank, timeout_s, me, list, a->have, a->need);
    else
        snprintf(msg, sizeof msg,
                 "tcp rendezvous: rank 0 (the master) waited %g s (TP_TIMEOUT_S) at %s for rank(s) "
                 "%s to register (%d of %d arrived): were they started, with the same "
                 "TP_MASTER_ADDR/TP_MASTER_PORT and TP_WORLD_SIZE=%d?",
                 timeout_s, me, list, a->have, a->need, e->world);
    return acc_fail(a, TP_ERR_TIMEOUT, msg);
}

/* A complete challenge (answer with the proof) or response (check it). */
static void acc_auth_step(acceptor *a, int i)
{
    pending *p = &a->p[i];
    int role = a->mesh ? TCP_ROLE_PEER : TCP_ROLE_MASTER;
    unsigned char mac[TCP_MAC_SIZE], proof[TCP_PROOF_SIZE];
    const unsigned char *payload = p->buf + TCP_HDR_SIZE;
    if (p->stage == ST_CHALLENGE) {
        memcpy(p->nc, payload, TCP_NONCE_SIZE);
        if (tcp_random(p->ns, TCP_NONCE_SIZE) < 0) {
            acc_reject(a, i, "no random bytes for a nonce");
            return;
        }
        memcpy(proof, p->ns, TCP_NONCE_SIZE);
        tcp_auth_mac(a->e, 'L', role, p->nc, p->ns, proof + TCP_NONCE_SIZE);
        if (tcp_auth_send(p->fd, TCP_OP_AUTH_PROOF, role, proof, sizeof proof, p->deadline) < 0) {
            acc_reject(a, i, "could not be sent the authentication proof");
            return;
        }
        p->stage = ST_RESPONSE;
        p->got = 0;
        return;
    }
    tcp_auth_mac(a->e, 'C', role, p->nc, p->ns, mac);
    if (!tcp_auth_equal(mac, payload, TCP_MAC_SIZE)) {
        acc_reject(a, i,
                   "failed authentication: it does not know this job's TP_TCP_SECRET (a "
                   "process of another job, a replayed connection, or an intruder)");
        return;
    }
    a->e->host->debug("comm", "tcp: rank %d: %s authenticated", a->e->rank, p->from);
    p->stage = ST_HELLO;
    p->got = 0;
}

/* Check what an unauthenticated connection sent so far; 0 if it was refused. */
static int acc_auth_read(acceptor *a, int i)
{
    pending *p = &a->p[i];
    char why[300];
    if (p->got >= 4 && tcp_get32(p->buf) != TCP_MAGIC) {
        char msg[400];
        snprintf(msg, sizeof msg,
                 "sent bytes that are not a tp tcp message (magic 0x%08x, expected 0x%08x): "
                 "another program may be talking to this port",
                 tcp_get32(p->buf), TCP_MAGIC);
        acc_reject(a, i, msg);
        return 0;
    }
    if (p->got < TCP_HDR_SIZE)
        return 1;
    int role = a->mesh ? TCP_ROLE_PEER : TCP_ROLE_MASTER;
    uint16_t op = p->stage == ST_CHALLENGE ? TCP_OP_AUTH_CHALLENGE : TCP_OP_AUTH_RESPONSE;
    if (tcp_auth_check_hdr(p->buf, op, role, TCP_NONCE_SIZE, why, sizeof why)) {
        char msg[400];
        snprintf(msg, sizeof msg, "sent %s (not authenticated)", why);
        acc_reject(a, i, msg);
        return 0;
    }
    if (p->got == acc_msg_size(a, p))
        acc_auth_step(a, i);
    return 1;
}

/* Read what pending connection i sent. Before it has authenticated, anything
 * wrong only drops it (logged); after, its hello is checked as soon as its
 * header is complete (so a wrong one fails fast) and again when it is all
 * in. TP_OK too while it needs more bytes, or when it left without a word. */
static tp_status acc_read(acceptor *a, int i)
{
    tcp_engine *e = a->e;
    pending *p = &a->p[i];
    size_t want = acc_msg_size(a, p) - p->got;
    ssize_t n = recv(p->fd, p->buf + p->got, want, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return TP_OK;
    if (n <= 0 && p->stage != ST_HELLO) {
        char why[160];
        snprintf(why, sizeof why, "%s before authenticating (%zu bytes of its %s in)",
                 n == 0 ? "closed the connection" : strerror(errno), p->got,
                 p->stage == ST_CHALLENGE ? "challenge" : "response");
        acc_reject(a, i, why);
        return TP_OK;
    }
    if (n <= 0 && p->got == 0) {
        /* Authenticated, then left without a word: ignore it. */
        e->host->debug("comm", "tcp: rank %d: %s connected and closed", e->rank, p->from);
        close(p->fd);
        drop_pending(a, i);
        return TP_OK;
    }
    if (n <= 0) {
        char msg[512];
        snprintf(msg, sizeof msg,
                 "tcp rendezvous: rank %d: a connection from %s to %s sent %zu bytes "
                 "and %s, expected a %zu-byte tp tcp %s",
                 e->rank, p->from, acc_port(a), p->got, n == 0 ? "closed" : strerror(errno),
                 acc_msg_size(a, p), a->mesh ? "mesh hello" : "hello");
        return acc_fail(a, TP_ERR_PEER, msg);
    }
    p->got += (size_t)n;
    if (p->stage != ST_HELLO) {
        (void)acc_auth_read(a, i);
        return TP_OK;
    }
    if (p->got >= 4 && tcp_get32(p->buf) != TCP_MAGIC)
        return acc_check(a, i); /* garbage: fail at once */
    if (p->got >= TCP_HDR_SIZE) {
        tcp_hdr h, want_h = acc_want_hdr(a);
        char why[384];
        tcp_hdr_decode(p->buf, &h);
        if (tcp_hdr_mismatch(&h, &want_h, why, sizeof why) || p->got == acc_msg_size(a, p))
            return acc_check(a, i);
    }
    return TP_OK;
}

/* Take the new connections off the listening socket as pending, until it
 * has none (a full accept queue drops a real rank's SYN) or a table's worth
 * came (then the pending ones are read before more are taken); when every
 * slot is taken, the unauthenticated one closest to its deadline makes room. */
static void acc_take(acceptor *a)
{
    for (int k = 0; k < MAX_PENDING;) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(a->lfd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC);
        if (fd < 0 && (errno == EINTR || errno == ECONNABORTED))
            continue;
        if (fd < 0)
            return;
        k++;
        if (tcp_set_socket_opts(fd) < 0) {
            close(fd);
            continue;
        }
        if (a->np == MAX_PENDING) {
            int old = -1;
            for (int i = 0; i < a->np; i++)
                if (a->p[i].stage != ST_HELLO && (old < 0 || a->p[i].deadline < a->p[old].deadline))
                    old = i;
            if (old < 0) {
                close(fd);
                continue;
            }
            acc_reject(a, old, "dropped: too many connections waiting to authenticate");
        }
        pending *p = &a->p[a->np++];
        memset(p, 0, sizeof *p);
        p->fd = fd;
        p->stage = ST_CHALLENGE;
        p->deadline = tcp_now() + AUTH_DEADLINE_S;
        char host[TCP_HOST_LEN];
        int port;
        addr_text((struct sockaddr *)&ss, sl, host, sizeof host, &port);
        snprintf(p->from, sizeof p->from, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
    }
}

/* Accept until `need` valid connections arrived; fds[rank] gets each. */
static tp_status accept_all(acceptor *a, double deadline)
{
    tcp_engine *e = a->e;
    tp_status st = TP_OK;
    while (a->have < a->need) {
        if (tcp_now() >= deadline) {
            st = acc_missing(a, e->timeout_s);
            break;
        }
        double wake = acc_expire(a, deadline);
        struct pollfd pfd[MAX_PENDING + 1];
        pfd[0] = (struct pollfd){.fd = a->lfd, .events = POLLIN};
        for (int i = 0; i < a->np; i++)
            pfd[i + 1] = (struct pollfd){.fd = a->p[i].fd, .events = POLLIN};
        double left = wake - tcp_now();
        int ms = left > 1.0 ? 1000 : left > 0 ? (int)(left * 1000) + 1 : 0;
        int np = a->np;
        if (poll(pfd, (nfds_t)np + 1, ms) < 0) {
            if (errno == EINTR)
                continue;
            st = e->host->set_error(TP_ERR_IO, "tcp rendezvous: poll failed: %s", strerror(errno));
            break;
        }
        /* Read pending connections first (from the end: drop_pending moves the last). */
        for (int i = np - 1; i >= 0 && st == TP_OK; i--)
            if (pfd[i + 1].revents)
                st = acc_read(a, i);
        if (st != TP_OK)
            break;
        if (pfd[0].revents & POLLIN)
            acc_take(a);
    }
    for (int i = 0; i < a->np; i++)
        close(a->p[i].fd);
    a->np = 0;
    if (a->refused > REFUSED_LOGGED)
        fprintf(stderr,
                "tp tcp: rank %d: refused %ld more connection(s) to %s (not logged one by one)\n",
                e->rank, a->refused - REFUSED_LOGGED, acc_port(a));
    return st;
}

/* ------------------------------------------------------------- phases */

/* The master socket tp-launch opened for rank 0 (TP_MASTER_FD: bound and
 * listening since before any rank started, so no other process can take the
 * port): *mfd, or -1 when TP_MASTER_FD is not set. */
static tp_status inherited_master(tcp_engine *e, const struct addrinfo *ai, int *mfd)
{
    const char *s = getenv("TP_MASTER_FD");
    *mfd = -1;
    if (!s || !*s)
        return TP_OK;
    char *end, host[TCP_HOST_LEN];
    long v = strtol(s, &end, 10);
    int type = 0, acc = 0, port = -1, want;
    socklen_t tl = sizeof type, al = sizeof acc;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    addr_text(ai->ai_addr, ai->ai_addrlen, host, sizeof host, &want);
    int fd = *end || v < 0 || v > 65535 ? -1 : (int)v;
    if (fd < 0 || fcntl(fd, F_GETFD) < 0 || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 ||
        type != SOCK_STREAM || getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &al) < 0 || !acc ||
        getsockname(fd, (struct sockaddr *)&ss, &sl) < 0 ||
        (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
        return e->host->set_error(TP_ERR_INVALID_ARG,
                                  "tcp: rank 0: TP_MASTER_FD=\"%s\" is not a listening TCP socket "
                                  "of this process: tp-launch sets it for rank 0 only; unset it "
                                  "when you start a rank yourself",
                                  s);
    addr_text((struct sockaddr *)&ss, sl, host, sizeof host, &port);
    if (port != want)
        return e->host->set_error(TP_ERR_INVALID_ARG,
                                  "tcp: rank 0: TP_MASTER_FD=%s listens on port %d, but "
                                  "TP_MASTER_PORT=%d: they come from different launches; unset "
                                  "TP_MASTER_FD when you start a rank yourself",
                                  s, port, want);
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0 || tcp_set_socket_opts(fd) < 0)
        return e->host->set_error(TP_ERR_IO, "tcp: rank 0: TP_MASTER_FD=%s: %s", s,
                                  strerror(errno));
    e->host->debug("comm", "tcp: rank 0: master socket from tp-launch (fd %d, port %d)", fd, port);
    *mfd = fd;
    return TP_OK;
}

static tp_status master_phase(tcp_engine *e, struct addrinfo *ai, int *lfd_out)
{
    int mfd = -1, lfd = -1;
    int err = 0;
    tp_status st = inherited_master(e, ai, &mfd);
    int inherited = mfd >= 0; /* kept open for the process' life (a later init) */
    if (st != TP_OK)
        return st;
    for (struct addrinfo *p = ai; p && !inherited; p = p->ai_next) {
        mfd = listen_on(p->ai_addr, p->ai_addrlen, SOMAXCONN);
        if (mfd >= 0)
            break;
        err = errno;
    }
    if (mfd < 0) {
        char name[96];
        int port;
        addr_text(ai->ai_addr, ai->ai_addrlen, name, sizeof name, &port);
        return e->host->set_error(
            TP_ERR_IO,
            "tcp rendezvous: rank 0 cannot listen on %s:%d (TP_MASTER_ADDR:TP_MASTER_PORT): %s%s",
            name, port, strerror(err),
            err == EADDRINUSE ? "; another job uses this port: pick another TP_MASTER_PORT "
                                "(tp-launch picks a free one)"
                              : "");
    }
    st = open_peer_listener(e, mfd, &lfd);
    if (st != TP_OK) {
        if (!inherited)
            close(mfd);
        return st;
    }
    random_job_id(&e->job_id);
    int *fds = malloc(sizeof(int) * (size_t)e->world);
    if (!fds) {
        if (!inherited)
            close(mfd);
        close(lfd);
        return e->host->set_error(TP_ERR_NO_MEMORY, "tcp rendezvous: out of memory");
    }
    for (int i = 0; i < e->world; i++)
        fds[i] = -1;
    acceptor *a = calloc(1, sizeof *a);
    if (!a) {
        free(fds);
        if (!inherited)
            close(mfd);
        close(lfd);
        return e->host->set_error(TP_ERR_NO_MEMORY, "tcp rendezvous: out of memory");
    }
    *a = (acceptor){.e = e, .lfd = mfd, .mesh = 0, .fds = fds, .need = e->world - 1};
    e->host->debug("comm", "tcp: rank 0: master listening, %d rank(s) to register", a->need);
    st = accept_all(a, tcp_now() + e->timeout_s);

    size_t tlen = TCP_TABLE_HEAD_SIZE + (size_t)e->world * TCP_TABLE_ENTRY_SIZE;
    unsigned char *table = st == TP_OK ? calloc(1, tlen) : NULL;
    if (st == TP_OK && !table)
        st = acc_fail(a, TP_ERR_NO_MEMORY, "tcp rendezvous: out of memory for the rank table");
    if (st == TP_OK) {
        tcp_put64(table, e->job_id);
        tcp_put64(table + 8, e->chunk_bytes);
        for (int r = 0; r < e->world; r++) {
            unsigned char *ent = table + TCP_TABLE_HEAD_SIZE + (size_t)r * TCP_TABLE_ENTRY_SIZE;
            tcp_put16(ent, (uint16_t)e->peers[r].port);
            memcpy(ent + 4, e->peers[r].host, strnlen(e->peers[r].host, TCP_HOST_LEN - 1));
        }
        double deadline = tcp_now() + e->timeout_s;
        for (int r = 1; r < e->world && st == TP_OK; r++) {
            if (send_msg(fds[r], TCP_OP_TABLE, table, tlen, deadline) < 0) {
                char name[96];
                st = e->host->set_error(TP_ERR_PEER,
                                        "tcp rendezvous: rank 0 could not send the rank table to "
                                        "rank %d at %s: %s: it exited during the rendezvous",
                                        r, tcp_peer_name(&e->peers[r], name, sizeof name),
                                        strerror(errno));
            }
        }
    }
    free(table);
    for (int r = 0; r < e->world; r++)
        if (fds[r] >= 0)
            close(fds[r]);
    free(fds);
    free(a);
    if (!inherited)
        close(mfd);
    if (st != TP_OK)
        close(lfd);
    else
        *lfd_out = lfd;
    return st;
}

/* Worker: connect to the master, trying each of its addresses in turn;
 * *fd < 0 means none answered (master names the last one tried). */
static tp_status worker_connect(tcp_engine *e, struct addrinfo *ai, double deadline, char *master,
                                size_t master_len, int dropped, int *fd)
{
    int err = 0, attempts = 0;
    *fd = -1;
    for (struct addrinfo *p = ai; p && *fd < 0; p = p->ai_next) {
        int port;
        char host[TCP_HOST_LEN];
        addr_text(p->ai_addr, p->ai_addrlen, host, sizeof host, &port);
        snprintf(master, master_len, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
        *fd = connect_retry(p->ai_addr, p->ai_addrlen, p->ai_next ? tcp_now() + 0.5 : deadline,
                            &err, &attempts, dropped);
    }
    if (*fd < 0 && dropped && err == ECONNREFUSED)
        return e->host->set_error(TP_ERR_PEER,
                                  "tcp rendezvous: the master (rank 0 at %s) closed rank %d's "
                                  "connection before sending the rank table and no longer "
                                  "accepts connections: it exited; see rank 0's error",
                                  master, e->rank);
    if (*fd < 0)
        return e->host->set_error(
            TP_ERR_TIMEOUT,
            "tcp rendezvous: rank %d could not reach the master (rank 0) at %s within %g s "
            "(TP_TIMEOUT_S, %d attempts, last error: %s): is rank 0 running with the same "
            "TP_MASTER_ADDR/TP_MASTER_PORT?",
            e->rank, master, e->timeout_s, attempts, strerror(err));
    return TP_OK;
}

/* Worker: the master's refusal (an ABORT header already read) as the error. */
static tp_status worker_refused(tcp_engine *e, int fd, const tcp_hdr *hdr, const char *master)
{
    char reason[TCP_ABORT_MAX + 1] = "";
    size_t n = 0;
    (void)tcp_recv_all(fd, reason, (size_t)hdr->len, tcp_now() + 1.0, &n);
    reason[n] = '\0';
    for (size_t i = 0; i < n; i++) /* text from the wire: printable only */
        if (reason[i] < 32 || reason[i] > 126)
            reason[i] = '?';
    return e->host->set_error(TP_ERR_PEER,
                              "tcp rendezvous: the master (rank 0 at %s) refused rank %d: %s",
                              master, e->rank, reason);
}

/* Worker: wait for the header of the master's rank table (tlen bytes). */
static tp_status worker_table_header(tcp_engine *e, int fd, const char *master, size_t tlen,
                                     int *retry)
{
    unsigned char h[TCP_HDR_SIZE];
    size_t got = 0;
    char why[400];
    /* The master answers when every rank has registered: wait the full timeout. */
    if (tcp_recv_all(fd, h, sizeof h, tcp_now() + e->timeout_s, &got) < 0) {
        int en = errno;
        if (en == ETIMEDOUT)
            return e->host->set_error(TP_ERR_TIMEOUT,
                                      "tcp rendezvous: rank %d registered with the master at %s "
                                      "but got no rank table within %g s (TP_TIMEOUT_S): other "
                                      "ranks did not register; see rank 0's error",
                                      e->rank, master, e->timeout_s);
        /* Dropped before a word (too many connections, or the 1 s limit
         * while this rank was slow): register again. */
        *retry = got == 0 && (en == ENODATA || en == ECONNRESET);
        return e->host->set_error(TP_ERR_PEER,
                                  "tcp rendezvous: the master (rank 0 at %s) %s before sending "
                                  "the rank table to rank %d (%zu of %d header bytes): see rank "
                                  "0's error",
                                  master, en == ENODATA ? "closed the connection" : strerror(en),
                                  e->rank, got, TCP_HDR_SIZE);
    }
    tcp_hdr hdr,
        want = {.magic = TCP_MAGIC, .version = TCP_WIRE_VERSION, .op = TCP_OP_TABLE, .len = tlen};
    tcp_hdr_decode(h, &hdr);
    if (hdr.magic == TCP_MAGIC && hdr.version == TCP_WIRE_VERSION && hdr.op == TCP_OP_ABORT &&
        hdr.len <= TCP_ABORT_MAX && hdr.comm == 0 && hdr.seq == 0)
        return worker_refused(e, fd, &hdr, master);
    if (tcp_hdr_mismatch(&hdr, &want, why, sizeof why))
        return e->host->set_error(TP_ERR_PEER, "tcp rendezvous: rank %d: the master at %s sent %s",
                                  e->rank, master, why);
    return TP_OK;
}

/* Worker: take rank 0's chunk size (every rank must cut messages alike). */
static tp_status worker_adopt_chunk(tcp_engine *e, uint64_t chunk, const char *master)
{
    if (chunk < 16 || chunk > (1u << 30) || chunk % 8)
        return e->host->set_error(TP_ERR_PEER,
                                  "tcp rendezvous: rank %d: the master at %s sent chunk size "
                                  "%llu, expected a multiple of 8 in 16..2^30: a corrupted or "
                                  "foreign master",
                                  e->rank, master, (unsigned long long)chunk);
    if (chunk == e->chunk_bytes)
        return TP_OK;
    unsigned char *sc = malloc((size_t)chunk);
    if (!sc)
        return e->host->set_error(TP_ERR_NO_MEMORY, "tcp rendezvous: out of memory");
    e->host->debug("comm", "tcp: rank %d: chunk size %zu -> %llu (rank 0's)", e->rank,
                   e->chunk_bytes, (unsigned long long)chunk);
    free(e->scratch);
    e->scratch = sc;
    e->scratch_len = (size_t)chunk;
    e->chunk_bytes = (size_t)chunk;
    return TP_OK;
}

/* Worker: the rank table's job id, chunk size and peer addresses. */
static tp_status worker_adopt_table(tcp_engine *e, const unsigned char *table, const char *master)
{
    e->job_id = tcp_get64(table);
    tp_status st = worker_adopt_chunk(e, tcp_get64(table + 8), master);
    if (st != TP_OK)
        return st;
    for (int r = 0; r < e->world; r++) {
        const unsigned char *ent = table + TCP_TABLE_HEAD_SIZE + (size_t)r * TCP_TABLE_ENTRY_SIZE;
        char host[TCP_HOST_LEN];
        int port = tcp_get16(ent);
        memcpy(host, ent + 4, TCP_HOST_LEN);
        if (memchr(host, '\0', TCP_HOST_LEN) == NULL || host[0] == '\0' || port == 0 ||
            (r == e->rank && port != e->peers[r].port))
            return e->host->set_error(TP_ERR_PEER,
                                      "tcp rendezvous: rank %d: the master at %s sent a rank "
                                      "table with an invalid entry for rank %d (port %d): a "
                                      "corrupted or foreign master",
                                      e->rank, master, r, port);
        if (r != e->rank) {
            memcpy(e->peers[r].host, host, TCP_HOST_LEN);
            e->peers[r].port = port;
        }
    }
    return TP_OK;
}

/* Worker: register with the master (hello), receive and adopt the table. */
static tp_status worker_register(tcp_engine *e, int fd, const char *master, double deadline,
                                 int *retry)
{
    unsigned char hello[TCP_HELLO_SIZE] = {0};
    tcp_put32(hello, (uint32_t)e->rank);
    tcp_put32(hello + 4, (uint32_t)e->world);
    tcp_put16(hello + 8, (uint16_t)e->peers[e->rank].port);
    e->host->debug("comm", "tcp: rank %d: registering with the master at %s", e->rank, master);

    size_t tlen = TCP_TABLE_HEAD_SIZE + (size_t)e->world * TCP_TABLE_ENTRY_SIZE, got = 0;
    unsigned char *table = malloc(tlen);
    tp_status st = TP_OK;
    if (!table)
        return e->host->set_error(TP_ERR_NO_MEMORY, "tcp rendezvous: out of memory");
    if (send_msg(fd, TCP_OP_HELLO, hello, sizeof hello, deadline) < 0) {
        *retry = errno == EPIPE || errno == ECONNRESET;
        st = e->host->set_error(TP_ERR_PEER,
                                "tcp rendezvous: rank %d could not register with the master at "
                                "%s: %s",
                                e->rank, master, strerror(errno));
    }
    if (st == TP_OK)
        st = worker_table_header(e, fd, master, tlen, retry);
    if (st == TP_OK && tcp_recv_all(fd, table, tlen, tcp_now() + e->timeout_s, &got) < 0)
        st = e->host->set_error(TP_ERR_PEER,
                                "tcp rendezvous: rank %d: the master at %s stopped after %zu of "
                                "%zu rank table bytes: %s",
                                e->rank, master, got, tlen,
                                errno == ENODATA ? "connection closed" : strerror(errno));
    if (st == TP_OK)
        st = worker_adopt_table(e, table, master);
    free(table);
    return st;
}

static tp_status worker_phase(tcp_engine *e, struct addrinfo *ai, int *lfd_out)
{
    double deadline = tcp_now() + e->timeout_s;
    int fd = -1, lfd = -1, dropped = 0;
    char master[96] = "?";
    tp_status st;
    char who[160];
    /* Connect, authenticate, register; again while the master drops the
     * connection before it answers (it is busy, e.g. flooded). */
    for (;;) {
        int retry = 0;
        st = worker_connect(e, ai, deadline, master, sizeof master, dropped, &fd);
        if (st != TP_OK)
            break;
        snprintf(who, sizeof who, "the master at %s (TP_MASTER_ADDR:TP_MASTER_PORT)", master);
        st = tcp_auth_connect(e, fd, TCP_ROLE_MASTER, who, deadline, &retry);
        if (st == TP_OK && lfd < 0)
            st = open_peer_listener(e, fd, &lfd);
        if (st == TP_OK)
            st = worker_register(e, fd, master, deadline, &retry);
        close(fd);
        if (st == TP_OK || !retry || tcp_now() >= deadline)
            break;
        dropped = 1;
        e->host->debug("comm", "tcp: rank %d: %s dropped the connection, trying again", e->rank,
                       master);
    }
    if (st != TP_OK && lfd >= 0)
        close(lfd);
    else if (st == TP_OK)
        *lfd_out = lfd;
    return st;
}

/* Greet rank j on fd (MESH) and wait for its one-byte acknowledgement; a
 * connection dropped before it (*retry) is not in rank j's mesh. */
static tp_status mesh_greet(tcp_engine *e, int fd, int j, const char *name, const unsigned char *m,
                            double deadline, int *retry)
{
    unsigned char ack = 0;
    size_t got = 0;
    if (send_msg(fd, TCP_OP_MESH, m, TCP_MESH_SIZE, deadline) < 0) {
        *retry = errno == EPIPE || errno == ECONNRESET;
        return e->host->set_error(TP_ERR_PEER,
                                  "tcp rendezvous: rank %d could not greet rank %d at %s: %s",
                                  e->rank, j, name, strerror(errno));
    }
    if (tcp_recv_all(fd, &ack, 1, deadline, &got) < 0) {
        int en = errno;
        *retry = en == ENODATA || en == ECONNRESET;
        return e->host->set_error(en == ETIMEDOUT ? TP_ERR_TIMEOUT : TP_ERR_PEER,
                                  "tcp rendezvous: rank %d: rank %d at %s did not acknowledge "
                                  "this rank's mesh hello within %g s (TP_TIMEOUT_S): %s",
                                  e->rank, j, name, e->timeout_s,
                                  en == ENODATA ? "it closed the connection" : strerror(en));
    }
    if (ack != TCP_MESH_ACK)
        return e->host->set_error(TP_ERR_PEER,
                                  "tcp rendezvous: rank %d: rank %d at %s acknowledged the mesh "
                                  "hello with byte %#x, expected %#x: a corrupted stream",
                                  e->rank, j, name, ack, TCP_MESH_ACK);
    return TP_OK;
}

/* Connect to rank j's peer port, authenticate (both ways) and greet it,
 * connecting again while it drops the connection before acknowledging. */
static tp_status mesh_connect(tcp_engine *e, const struct addrinfo *ai, int j, const char *name,
                              const unsigned char *m, double deadline, int *fd_out)
{
    char who[160];
    snprintf(who, sizeof who, "rank %d's peer port %s", j, name);
    for (int dropped = 0;; dropped = 1) {
        int err = 0, attempts = 0, retry = 0;
        /* Rank j listens on its peer port from before it registered until
         * its mesh is complete, so a refusal means it is gone. */
        int fd = connect_retry(ai->ai_addr, ai->ai_addrlen, deadline, &err, &attempts, 1);
        if (fd < 0 && err == ECONNREFUSED)
            return e->host->set_error(
                TP_ERR_PEER,
                "tcp rendezvous: rank %d at %s %s: it no longer listens, so it "
                "exited; see its own error",
                j, name,
                dropped ? "closed this rank's connection before "
                          "acknowledging it"
                        : "refused this rank's connection");
        if (fd < 0)
            return e->host->set_error(TP_ERR_TIMEOUT,
                                      "tcp rendezvous: rank %d could not connect to rank %d at %s "
                                      "within %g s (TP_TIMEOUT_S, %d attempts, last error: %s): "
                                      "it exited, or a firewall blocks its port",
                                      e->rank, j, name, e->timeout_s, attempts, strerror(err));
        tp_status st = tcp_auth_connect(e, fd, TCP_ROLE_PEER, who, deadline, &retry);
        if (st == TP_OK)
            st = mesh_greet(e, fd, j, name, m, deadline, &retry);
        if (st == TP_OK) {
            *fd_out = fd;
            return TP_OK;
        }
        close(fd);
        if (!retry || tcp_now() >= deadline)
            return st;
    }
}

/* Connect to every rank below this one, then accept every rank above. */
static tp_status mesh_phase(tcp_engine *e, int lfd)
{
    double deadline = tcp_now() + e->timeout_s;
    tp_status st = TP_OK;
    unsigned char m[TCP_MESH_SIZE];
    tcp_put64(m, e->job_id);
    tcp_put32(m + 8, (uint32_t)e->rank);
    tcp_put32(m + 12, (uint32_t)e->world);
    for (int j = 0; j < e->rank; j++) {
        tcp_peer *p = &e->peers[j];
        char name[96], port[16];
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                                 .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV},
                        *ai = NULL;
        snprintf(port, sizeof port, "%d", p->port);
        tcp_peer_name(p, name, sizeof name);
        if (getaddrinfo(p->host, port, &hints, &ai) != 0 || !ai)
            return e->host->set_error(TP_ERR_PEER,
                                      "tcp rendezvous: rank %d: the rank table gives rank %d the "
                                      "address %s, which is not a numeric address",
                                      e->rank, j, name);
        int fd = -1;
        st = mesh_connect(e, ai, j, name, m, deadline, &fd);
        freeaddrinfo(ai);
        if (st != TP_OK)
            return st;
        p->fd = fd;
    }
    int need = e->world - 1 - e->rank;
    if (need > 0) {
        int *fds = malloc(sizeof(int) * (size_t)e->world);
        acceptor *a = calloc(1, sizeof *a);
        if (!fds || !a) {
            free(fds);
            free(a);
            return e->host->set_error(TP_ERR_NO_MEMORY, "tcp rendezvous: out of memory");
        }
        for (int i = 0; i < e->world; i++)
            fds[i] = -1;
        *a = (acceptor){.e = e, .lfd = lfd, .mesh = 1, .fds = fds, .need = need};
        st = accept_all(a, deadline);
        for (int r = 0; r < e->world; r++) {
            if (fds[r] < 0)
                continue;
            if (st == TP_OK)
                e->peers[r].fd = fds[r];
            else
                close(fds[r]);
        }
        free(fds);
        free(a);
    }
    return st;
}

tp_status tcp_rendezvous(tcp_engine *e, const char *master_addr, const char *master_port)
{
    struct addrinfo *ai = NULL;
    tp_status st = resolve(e, master_addr, master_port, &ai);
    if (st != TP_OK)
        return st;
    int lfd = -1;
    st = e->rank == 0 ? master_phase(e, ai, &lfd) : worker_phase(e, ai, &lfd);
    freeaddrinfo(ai);
    if (st != TP_OK)
        return st;
    st = mesh_phase(e, lfd);
    close(lfd);
    if (st == TP_OK)
        e->host->debug("comm", "tcp: rank %d: connected to all %d peers (job %#llx)", e->rank,
                       e->world - 1, (unsigned long long)e->job_id);
    return st;
}

/* -- the job's variables: TP_ form, or torchrun's ------------------------ */

/* One variable of the job: the TP_ form wins when only it is set; torchrun's
 * form (RANK, ...) is used when the TP_ form is unset; both set to different
 * values is an error naming both. An empty value counts as unset. */
static tp_status env_pick(const tp_host *host, const char *tp_name, const char *alias,
                          tcp_env_var *out)
{
    const char *tv = getenv(tp_name), *av = getenv(alias);
    if (tv && !*tv)
        tv = NULL;
    if (av && !*av)
        av = NULL;
    if (tv && av && strcmp(tv, av) != 0)
        return host->set_error(TP_ERR_INVALID_ARG,
                               "tcp: %s=\"%s\" and %s=\"%s\" disagree: %s is torchrun's name for "
                               "the same setting; unset one of them, or make them equal",
                               tp_name, tv, alias, av, alias);
    *out = (tcp_env_var){.value = tv ? tv : av, .name = tv || !av ? tp_name : alias};
    return TP_OK;
}

/* torchrun's default (static) rendezvous keeps its own TCP store listening on
 * MASTER_PORT and tells the workers so with TORCHELASTIC_USE_AGENT_STORE=True;
 * then rank 0 listens on MASTER_PORT + 1, which every rank computes alike. */
static tp_status agent_store_port(const tp_host *host, tcp_env_job *j)
{
    const char *agent = getenv("TORCHELASTIC_USE_AGENT_STORE");
    if (!j->port.value || strcmp(j->port.name, "MASTER_PORT") != 0 || !agent ||
        strcmp(agent, "True") != 0)
        return TP_OK;
    char *end;
    errno = 0;
    long p = strtol(j->port.value, &end, 10);
    if (*end || errno || p < 1 || p > 65534)
        return host->set_error(TP_ERR_INVALID_ARG,
                               "tcp: MASTER_PORT=\"%s\" (from torchrun): expected a port in "
                               "1..65534, since torchrun's store holds it and tp's rank 0 listens "
                               "on MASTER_PORT + 1; or set TP_MASTER_PORT",
                               j->port.value);
    snprintf(j->port_buf, sizeof j->port_buf, "%ld", p + 1);
    j->port = (tcp_env_var){.value = j->port_buf, .name = "MASTER_PORT + 1"};
    if (host->debug)
        host->debug("comm",
                    "tcp: torchrun's store holds MASTER_PORT=%ld; rank 0 listens on port %ld", p,
                    p + 1);
    return TP_OK;
}

tp_status tcp_env_job_read(const tp_host *host, tcp_env_job *j)
{
    memset(j, 0, sizeof *j);
    tp_status st = env_pick(host, "TP_RANK", "RANK", &j->rank);
    if (st == TP_OK)
        st = env_pick(host, "TP_WORLD_SIZE", "WORLD_SIZE", &j->world);
    if (st == TP_OK)
        st = env_pick(host, "TP_MASTER_ADDR", "MASTER_ADDR", &j->addr);
    if (st == TP_OK)
        st = env_pick(host, "TP_MASTER_PORT", "MASTER_PORT", &j->port);
    if (st == TP_OK)
        st = agent_store_port(host, j);
    return st;
}
