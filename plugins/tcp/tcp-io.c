/* SPDX-License-Identifier: MIT */
/* tcp-io.c — socket helpers every other file of the plugin uses (a leaf:
 * it calls none of them). */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>

#include "tcp.h"

double tcp_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int tcp_set_socket_opts(int fd)
{
    int one = 1;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -1;
    /* Small headers must not wait for Nagle; ignore failure (e.g. AF_UNIX). */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return 0;
}

const char *tcp_peer_name(const tcp_peer *p, char *buf, size_t len)
{
    if (strchr(p->host, ':'))
        snprintf(buf, len, "[%s]:%d", p->host, p->port);
    else
        snprintf(buf, len, "%s:%d", p->host, p->port);
    return buf;
}

const char *tcp_op_name(unsigned op)
{
    switch (op) {
        case TCP_OP_HELLO: return "hello";
        case TCP_OP_TABLE: return "table";
        case TCP_OP_MESH: return "mesh hello";
        case TCP_OP_ABORT: return "abort";
        case TCP_OP_AUTH_CHALLENGE: return "authentication challenge";
        case TCP_OP_AUTH_PROOF: return "authentication proof";
        case TCP_OP_AUTH_RESPONSE: return "authentication response";
        case TCP_OP_STALL: return "stall check";
        case TCP_OP_ALL_REDUCE: return "all_reduce";
        case TCP_OP_ALL_GATHER: return "all_gather";
        case TCP_OP_REDUCE_SCATTER: return "reduce_scatter";
        case TCP_OP_BROADCAST: return "broadcast";
        case TCP_OP_BARRIER: return "barrier";
        case TCP_OP_SPLIT: return "split";
        default: return "unknown op";
    }
}

/* Milliseconds until deadline for poll(), at least 0, at most 1 s so a
 * clock step never makes us wait far too long. */
int tcp_poll_ms(double deadline)
{
    double left = deadline - tcp_now();
    if (left <= 0)
        return 0;
    if (left > 1.0)
        return 1000;
    return (int)(left * 1000.0) + 1;
}

int tcp_send_all(int fd, const void *buf, size_t len, double deadline)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return -1;
        if (tcp_now() >= deadline) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        if (poll(&pfd, 1, tcp_poll_ms(deadline)) < 0 && errno != EINTR)
            return -1;
    }
    return 0;
}

int tcp_recv_all(int fd, void *buf, size_t len, double deadline, size_t *got)
{
    char *p = buf;
    size_t done = 0;
    if (got)
        *got = 0;
    while (done < len) {
        ssize_t n = recv(fd, p + done, len - done, MSG_DONTWAIT);
        if (n > 0) {
            done += (size_t)n;
            if (got)
                *got = done;
            continue;
        }
        if (n == 0) {
            errno = ENODATA;
            return -1;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -1;
        if (tcp_now() >= deadline) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, tcp_poll_ms(deadline)) < 0 && errno != EINTR)
            return -1;
    }
    return 0;
}

tp_status tcp_hdr_mismatch(const tcp_hdr *got, const tcp_hdr *want, char *buf, size_t len)
{
    tp_status why = TP_ERR_INVALID_ARG;
    if (got->magic != TCP_MAGIC) {
        why = TP_ERR_PEER;
        snprintf(buf, len,
                 "bytes that are not a tp tcp message (magic 0x%08x, expected 0x%08x): "
                 "another program may be talking to this port",
                 got->magic, TCP_MAGIC);
    } else if (got->version != TCP_WIRE_VERSION) {
        why = TP_ERR_PEER;
        snprintf(buf, len, "wire version %u, expected %u: mixed tp versions in one job",
                 got->version, TCP_WIRE_VERSION);
    } else if (got->op != want->op) {
        snprintf(buf, len,
                 "a %s message, expected %s: the ranks called different collectives "
                 "(every rank must call them in the same order)",
                 tcp_op_name(got->op), tcp_op_name(want->op));
    } else if (got->comm != want->comm) {
        snprintf(buf, len,
                 "a message for communicator %#llx, expected %#llx: the ranks used "
                 "communicators in different orders",
                 (unsigned long long)got->comm, (unsigned long long)want->comm);
    } else if (got->seq != want->seq) {
        snprintf(buf, len,
                 "collective #%llu, expected #%llu on this communicator: a rank skipped or "
                 "repeated a collective",
                 (unsigned long long)got->seq, (unsigned long long)want->seq);
    } else if ((got->arg & 0xff) != (want->arg & 0xff)) {
        snprintf(buf, len, "dtype %s, expected %s: the ranks passed different dtypes",
                 tcp_dtype_name((tp_dtype)(got->arg & 0xff)),
                 tcp_dtype_name((tp_dtype)(want->arg & 0xff)));
    } else if (((got->arg >> 8) & 0xff) != ((want->arg >> 8) & 0xff)) {
        snprintf(buf, len, "reduction %s, expected %s: the ranks passed different ops",
                 tcp_redop_name((tp_redop)((got->arg >> 8) & 0xff)),
                 tcp_redop_name((tp_redop)((want->arg >> 8) & 0xff)));
    } else if (got->arg != want->arg) {
        snprintf(buf, len, "root %u, expected %u: the ranks passed different roots", got->arg >> 16,
                 want->arg >> 16);
    } else if (got->call != want->call) {
        snprintf(buf, len,
                 "a collective whose counts digest to %#llx, expected %#llx: the ranks passed "
                 "different counts",
                 (unsigned long long)got->call, (unsigned long long)want->call);
    } else if (got->step != want->step) {
        why = TP_ERR_PEER;
        snprintf(buf, len, "message %u of the collective, expected %u: a protocol error", got->step,
                 want->step);
    } else if (got->len != want->len) {
        snprintf(buf, len, "%llu payload bytes, expected %llu: the ranks passed different counts",
                 (unsigned long long)got->len, (unsigned long long)want->len);
    } else {
        return TP_OK;
    }
    return why;
}

void tcp_engine_break(tcp_engine *e, const char *why, int mid, tp_status status)
{
    if (e->broken)
        return;
    e->broken = 1;
    snprintf(e->broken_why, sizeof e->broken_why, "%s", why);
    size_t n = strlen(why) < TCP_ABORT_MAX ? strlen(why) : TCP_ABORT_MAX;
    unsigned char msg[TCP_HDR_SIZE + TCP_ABORT_MAX];
    tcp_hdr h = {.magic = TCP_MAGIC,
                 .version = TCP_WIRE_VERSION,
                 .op = TCP_OP_ABORT,
                 .arg = (uint32_t)status,
                 .len = n};
    tcp_hdr_encode(&h, msg);
    memcpy(msg + TCP_HDR_SIZE, why, n);
    for (int i = 0; i < e->world; i++) {
        if (e->peers[i].fd < 0)
            continue;
        /* Best effort and never blocking: a full socket just gets no note. */
        if (i != mid)
            (void)!send(e->peers[i].fd, msg, TCP_HDR_SIZE + n, MSG_NOSIGNAL | MSG_DONTWAIT);
        shutdown(e->peers[i].fd, SHUT_RDWR);
    }
}
