/* SPDX-License-Identifier: MIT */
/* tcp-socket.c — socket helpers and the poll() loop that runs a collective step. */
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
static int poll_ms(double deadline)
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
        if (poll(&pfd, 1, poll_ms(deadline)) < 0 && errno != EINTR)
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
        if (poll(&pfd, 1, poll_ms(deadline)) < 0 && errno != EINTR)
            return -1;
    }
    return 0;
}

const char *tcp_hdr_mismatch(const tcp_hdr *got, const tcp_hdr *want, char *buf, size_t len)
{
    if (got->magic != TCP_MAGIC) {
        snprintf(buf, len,
                 "bytes that are not a tp tcp message (magic 0x%08x, expected 0x%08x): "
                 "another program may be talking to this port",
                 got->magic, TCP_MAGIC);
    } else if (got->version != TCP_WIRE_VERSION) {
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
    } else if (got->step != want->step) {
        snprintf(buf, len, "message %u of the collective, expected %u: a protocol error", got->step,
                 want->step);
    } else if (got->len != want->len) {
        snprintf(buf, len, "%llu payload bytes, expected %llu: the ranks passed different counts",
                 (unsigned long long)got->len, (unsigned long long)want->len);
    } else {
        return NULL;
    }
    return buf;
}

void tcp_engine_break(tcp_engine *e, const char *why, int mid)
{
    if (e->broken)
        return;
    e->broken = 1;
    snprintf(e->broken_why, sizeof e->broken_why, "%s", why);
    size_t n = strlen(why) < TCP_ABORT_MAX ? strlen(why) : TCP_ABORT_MAX;
    unsigned char msg[TCP_HDR_SIZE + TCP_ABORT_MAX];
    tcp_hdr h = {.magic = TCP_MAGIC, .version = TCP_WIRE_VERSION, .op = TCP_OP_ABORT, .len = n};
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

/* ------------------------------------------------------------ xfer loop */

typedef struct xstate {
    tcp_xfer *x;
    size_t si, soff; /* current send message, bytes of header+payload sent */
    unsigned char shdr[TCP_HDR_SIZE];
    size_t ri, roff; /* current receive message, bytes of header+payload received */
    unsigned char rhdr[TCP_HDR_SIZE];
    double last; /* when data last moved */
} xstate;

/* Report a wire error for the peer `peer`, break the engine, return status. */
static tp_status wire_error(xstate *st, tp_status status, int peer, const char *what)
{
    tcp_comm *c = st->x->comm;
    tcp_engine *e = c->eng;
    char name[96], msg[768];
    snprintf(msg, sizeof msg, "tcp %s (communicator %#llx, collective #%llu): rank %d at %s %s",
             st->x->opname, (unsigned long long)c->id, (unsigned long long)c->seq, peer,
             tcp_peer_name(&e->peers[peer], name, sizeof name), what);
    tcp_engine_break(e, msg, st->soff > 0 ? st->x->to : -1);
    return e->host->set_error(status, "%s", msg);
}

static tp_status io_error(xstate *st, int peer, int err, int sending)
{
    char what[384];
    tp_status s = TP_ERR_PEER;
    if (err == ENODATA)
        snprintf(what, sizeof what,
                 "closed the connection while this rank expected message %zu of %zu "
                 "(%zu bytes in): it exited or crashed; see its own error",
                 st->ri + 1, st->x->nr, st->roff);
    else if (err == EPIPE || err == ECONNRESET)
        snprintf(what, sizeof what,
                 "reset the connection while this rank was %s message %zu: it exited or "
                 "crashed; see its own error",
                 sending ? "sending" : "receiving", sending ? st->si + 1 : st->ri + 1);
    else {
        snprintf(what, sizeof what, "failed while %s: %s", sending ? "sending" : "receiving",
                 strerror(err));
        s = TP_ERR_IO;
    }
    return wire_error(st, s, peer, what);
}

/* The peer gave up: the reason (len bytes, its ABORT header already read). */
static tp_status peer_gave_up(xstate *st, int peer, size_t len)
{
    int fd = st->x->comm->eng->peers[peer].fd;
    char reason[TCP_ABORT_MAX + 1], what[TCP_ABORT_MAX + 64];
    size_t rn = 0;
    (void)tcp_recv_all(fd, reason, len, tcp_now() + 1.0, &rn);
    reason[rn] = '\0';
    for (size_t i = 0; i < rn; i++) /* text from the wire: printable only */
        if (reason[i] < 32 || reason[i] > 126)
            reason[i] = '?';
    snprintf(what, sizeof what, "gave up: %s", reason);
    return wire_error(st, TP_ERR_PEER, peer, what);
}

/* No progress (or a peer's STALL note): find and name the rank that stalled. */
static tp_status stall(xstate *st, double waited, int note_from, const tcp_stall_note *note)
{
    tcp_xfer *x = st->x;
    int receiving = st->ri < x->nr;
    tcp_stall_ctx cx = {.comm = x->comm,
                        .opname = x->opname,
                        .waits_on = receiving ? x->from : x->to,
                        .sending = !receiving,
                        .waited_s = waited,
                        .from = -1,
                        .mid = st->soff > 0 ? x->to : -1,
                        .note_from = note_from};
    if (note)
        cx.note = *note;
    if (receiving) {
        cx.from = x->from;
        if (st->roff < TCP_HDR_SIZE) {
            memcpy(cx.hdr, st->rhdr, st->roff);
            cx.hoff = st->roff;
        } else {
            cx.skip = TCP_HDR_SIZE + x->r[st->ri].hdr.len - st->roff;
        }
    }
    return tcp_stall_diagnose(&cx);
}

/* Peer `peer`'s STALL note: its header is read (from the stream being
 * received) or at the head of its stream (peeked, another peer). */
static tp_status stall_note_from(xstate *st, int peer)
{
    tcp_engine *e = st->x->comm->eng;
    unsigned char b[TCP_HDR_SIZE + TCP_STALL_SIZE];
    size_t off =
        peer == st->x->from && st->ri < st->x->nr && st->roff == TCP_HDR_SIZE ? TCP_HDR_SIZE : 0;
    tcp_stall_note n;
    double waited = tcp_now() - st->last;
    int ok = tcp_recv_all(e->peers[peer].fd, b + off, sizeof b - off, tcp_now() + 1.0, NULL) == 0;
    if (off)
        st->roff = 0; /* that stream is at a message boundary again */
    tcp_stall_note_decode(b + TCP_HDR_SIZE, &n);
    return stall(st, waited, ok ? peer : -1, ok ? &n : NULL);
}

/* While blocked: a note or an ABORT from a peer other than the one being
 * read ends the wait; anything else there is left for later. 1 if *status
 * was set. */
static int watch_others(xstate *st, nfds_t n, tp_status *status)
{
    tcp_xfer *x = st->x;
    tcp_engine *e = x->comm->eng;
    for (nfds_t k = 0; k < n; k++) {
        int peer = e->pfd_peer[k];
        if (!(e->pfd[k].revents & (POLLIN | POLLHUP | POLLERR)) ||
            (peer == x->from && st->ri < x->nr))
            continue;
        int what = tcp_stall_peek(e, peer);
        if (what == 1) {
            *status = stall_note_from(st, peer);
            return 1;
        }
        if (what == 2) {
            unsigned char h[TCP_HDR_SIZE];
            tcp_hdr got;
            (void)tcp_recv_all(e->peers[peer].fd, h, sizeof h, tcp_now() + 1.0, NULL);
            tcp_hdr_decode(h, &got);
            *status = peer_gave_up(st, peer, (size_t)got.len);
            return 1;
        }
        if (what == 0)
            e->quiet[peer] = 1;
    }
    return 0;
}

/* The poll set: the peers this step moves data with, and every other peer
 * that may still send a note. */
static nfds_t watch_set(xstate *st)
{
    tcp_xfer *x = st->x;
    tcp_engine *e = x->comm->eng;
    nfds_t n = 0;
    for (int i = 0; i < e->world; i++) {
        short ev = 0;
        if (i == e->rank || e->peers[i].fd < 0)
            continue;
        if (i == x->to && st->si < x->ns && x->s[st->si].need <= st->ri)
            ev |= POLLOUT;
        if ((i == x->from && st->ri < x->nr) || !e->quiet[i])
            ev |= POLLIN;
        if (!ev)
            continue;
        e->pfd[n] = (struct pollfd){.fd = e->peers[i].fd, .events = ev};
        e->pfd_peer[n++] = i;
    }
    return n;
}

/* Send as much as the socket takes. Returns 1 on progress, 0 if blocked, <0 error. */
static int do_send(xstate *st, tp_status *status)
{
    tcp_xfer *x = st->x;
    tcp_engine *e = x->comm->eng;
    int fd = e->peers[x->to].fd;
    int progressed = 0;
    while (st->si < x->ns && x->s[st->si].need <= st->ri) {
        tcp_smsg *m = &x->s[st->si];
        if (st->soff == 0)
            tcp_hdr_encode(&m->hdr, st->shdr);
        size_t total = TCP_HDR_SIZE + (size_t)m->hdr.len;
        struct iovec iov[2];
        int niov = 0;
        if (st->soff < TCP_HDR_SIZE) {
            iov[niov].iov_base = st->shdr + st->soff;
            iov[niov++].iov_len = TCP_HDR_SIZE - st->soff;
            if (m->hdr.len) {
                iov[niov].iov_base = (void *)m->data;
                iov[niov++].iov_len = (size_t)m->hdr.len;
            }
        } else {
            iov[niov].iov_base = (char *)m->data + (st->soff - TCP_HDR_SIZE);
            iov[niov++].iov_len = total - st->soff;
        }
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)niov};
        ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return progressed;
            *status = io_error(st, x->to, errno, 1);
            return -1;
        }
        progressed = 1;
        st->soff += (size_t)n;
        if (st->soff == total) {
            st->si++;
            st->soff = 0;
        }
    }
    return progressed;
}

static int do_recv(xstate *st, tp_status *status)
{
    tcp_xfer *x = st->x;
    tcp_engine *e = x->comm->eng;
    int fd = e->peers[x->from].fd;
    int progressed = 0;
    while (st->ri < x->nr) {
        tcp_rmsg *m = &x->r[st->ri];
        size_t total = TCP_HDR_SIZE + (size_t)m->hdr.len;
        void *dst;
        size_t want;
        if (st->roff < TCP_HDR_SIZE) {
            dst = st->rhdr + st->roff;
            want = TCP_HDR_SIZE - st->roff;
        } else {
            size_t off = st->roff - TCP_HDR_SIZE;
            dst = (m->reduce ? (char *)e->scratch : (char *)m->dst) + off;
            want = total - st->roff;
        }
        ssize_t n = recv(fd, dst, want, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return progressed;
            *status = io_error(st, x->from, errno, 0);
            return -1;
        }
        if (n == 0) {
            *status = io_error(st, x->from, ENODATA, 0);
            return -1;
        }
        progressed = 1;
        st->roff += (size_t)n;
        if (st->roff == TCP_HDR_SIZE) {
            tcp_hdr got;
            char why[384];
            tcp_hdr_decode(st->rhdr, &got);
            if (got.magic == TCP_MAGIC && got.version == TCP_WIRE_VERSION &&
                got.op == TCP_OP_ABORT && got.len <= TCP_ABORT_MAX) {
                /* The peer gave up and says why: pass its reason on. */
                *status = peer_gave_up(st, x->from, (size_t)got.len);
                return -1;
            }
            if (got.magic == TCP_MAGIC && got.version == TCP_WIRE_VERSION &&
                got.op == TCP_OP_STALL && got.len == TCP_STALL_SIZE && got.comm == 0) {
                /* The peer waits on someone and asks who stalled. */
                *status = stall_note_from(st, x->from);
                return -1;
            }
            if (tcp_hdr_mismatch(&got, &m->hdr, why, sizeof why)) {
                char what[480];
                snprintf(what, sizeof what, "sent %s", why);
                *status = wire_error(st, TP_ERR_PEER, x->from, what);
                return -1;
            }
        }
        if (st->roff == total) {
            if (m->reduce)
                tcp_reduce(m->dst, e->scratch, (size_t)m->hdr.len / tp_util_dtype_size(x->dt),
                           x->dt, x->rop);
            st->ri++;
            st->roff = 0;
        }
    }
    return progressed;
}

tp_status tcp_xfer_run(tcp_xfer *x)
{
    tcp_engine *e = x->comm->eng;
    xstate st = {.x = x, .last = tcp_now()};
    tp_status status = TP_OK;
    double deadline = st.last + e->timeout_s;

    memset(e->quiet, 0, (size_t)e->world);
    while (st.si < x->ns || st.ri < x->nr) {
        int progressed = 0, r;
        if (st.si < x->ns && x->s[st.si].need <= st.ri) {
            if ((r = do_send(&st, &status)) < 0)
                return status;
            progressed |= r;
        }
        if (st.ri < x->nr) {
            if ((r = do_recv(&st, &status)) < 0)
                return status;
            progressed |= r;
        }
        if (progressed) {
            st.last = tcp_now();
            deadline = st.last + e->timeout_s;
            continue;
        }
        if (st.si >= x->ns && st.ri >= x->nr)
            break;
        if (tcp_now() >= deadline)
            return stall(&st, tcp_now() - st.last, -1, NULL);
        nfds_t n = watch_set(&st);
        if (poll(e->pfd, n, poll_ms(deadline)) < 0 && errno != EINTR) {
            return e->host->set_error(TP_ERR_IO, "tcp %s: poll failed: %s", x->opname,
                                      strerror(errno));
        }
        if (watch_others(&st, n, &status))
            return status;
    }
    return TP_OK;
}
