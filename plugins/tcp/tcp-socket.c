/* SPDX-License-Identifier: MIT */
/* tcp-socket.c — the poll() loop that runs a collective step. */
#include <errno.h>
#include <stddef.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "tcp.h"

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
    tcp_engine_break(e, msg, st->soff > 0 ? st->x->to : -1, status);
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
/* The peer's ABORT: its reason (len bytes follow) and its status (arg;
 * TP_ERR_PEER from a peer that sent none). */
static tp_status peer_gave_up(xstate *st, int peer, size_t len, uint32_t arg)
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
    tp_status s = arg > TP_OK && arg < TP_STATUS_COUNT_ ? (tp_status)arg : TP_ERR_PEER;
    return wire_error(st, s, peer, what);
}

/* The global rank this rank waits on: the one it receives from, or (all
 * received, *sending = 1) the one it sends to. */
static int waits_on(const xstate *st, int *sending)
{
    *sending = st->ri >= st->x->nr;
    return *sending ? st->x->to : st->x->from;
}

/* No progress (or a peer's STALL note): find and name the rank that stalled. */
static tp_status stall(xstate *st, double waited, int note_from, const tcp_stall_note *note)
{
    tcp_xfer *x = st->x;
    int sending, on = waits_on(st, &sending);
    tcp_stall_ctx cx = {.comm = x->comm,
                        .opname = x->opname,
                        .waits_on = on,
                        .sending = sending,
                        .waited_s = waited,
                        .from = -1,
                        .mid = st->soff > 0 ? x->to : -1,
                        .note_from = note_from};
    if (note)
        cx.note = *note;
    if (!sending) {
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

/* Whether global rank g is a member of c. */
static int is_member(const tcp_comm *c, int g)
{
    for (int i = 0; i < c->size; i++)
        if (c->members[i] == g)
            return 1;
    return 0;
}

/* A STALL note from `peer`, which is not in this rank's communicator: its
 * stall is in another one. Read it, answer with where this rank waits (the
 * sender's diagnosis follows the chain through it) and go on. */
static void answer_outsider(xstate *st, int peer)
{
    tcp_xfer *x = st->x;
    tcp_engine *e = x->comm->eng;
    unsigned char b[TCP_HDR_SIZE + TCP_STALL_SIZE];
    if (tcp_recv_all(e->peers[peer].fd, b, sizeof b, tcp_now() + 1.0, NULL) != 0) {
        e->quiet[peer] = 1;
        return;
    }
    int sending, on = waits_on(st, &sending);
    tcp_stall_note me = {.rank = (uint32_t)e->rank,
                         .waits_on = (uint32_t)on,
                         .waited_ms = (uint32_t)((tcp_now() - st->last) * 1000.0),
                         .flags = (uint32_t)sending,
                         .seq = x->comm->seq,
                         .comm = x->comm->id};
    tcp_stall_note_encode(&me, b);
    /* this rank sends nothing else to a non-member now: a message boundary */
    (void)!send(e->peers[peer].fd, b, sizeof b, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/* While blocked: a note or an ABORT from a peer other than the one being
 * read ends the wait, unless the peer is not in this communicator (its
 * trouble is another communicator's: a note is answered, an ABORT left in
 * its stream for a collective with it to report); anything else there is
 * left for later. 1 if *status was set. */
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
        if (what > 0 && !is_member(x->comm, peer)) {
            if (what == 1)
                answer_outsider(st, peer);
            else
                e->quiet[peer] = 1;
            continue;
        }
        if (what == 1) {
            *status = stall_note_from(st, peer);
            return 1;
        }
        if (what == 2) {
            unsigned char h[TCP_HDR_SIZE];
            tcp_hdr got;
            (void)tcp_recv_all(e->peers[peer].fd, h, sizeof h, tcp_now() + 1.0, NULL);
            tcp_hdr_decode(h, &got);
            *status = peer_gave_up(st, peer, (size_t)got.len, got.arg);
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
                *status = peer_gave_up(st, x->from, (size_t)got.len, got.arg);
                return -1;
            }
            if (got.magic == TCP_MAGIC && got.version == TCP_WIRE_VERSION &&
                got.op == TCP_OP_STALL && got.len == TCP_STALL_SIZE && got.comm == 0) {
                /* The peer waits on someone and asks who stalled. */
                *status = stall_note_from(st, x->from);
                return -1;
            }
            tp_status bad = tcp_hdr_mismatch(&got, &m->hdr, why, sizeof why);
            if (bad) {
                char what[480];
                snprintf(what, sizeof what, "sent %s", why);
                *status = wire_error(st, bad, x->from, what);
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

/* Tell the core's watchdog that this call moves (hosts of ABI 1.2 on), so a
 * long transfer over a slow link is bounded, like our own waits, by the
 * time without progress. */
static void report_progress(const tp_host *h)
{
    if (h->struct_size >= offsetof(tp_host, progress) + sizeof h->progress && h->progress)
        h->progress();
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
            report_progress(e->host);
            continue;
        }
        if (st.si >= x->ns && st.ri >= x->nr)
            break;
        if (tcp_now() >= deadline)
            return stall(&st, tcp_now() - st.last, -1, NULL);
        nfds_t n = watch_set(&st);
        if (poll(e->pfd, n, tcp_poll_ms(deadline)) < 0 && errno != EINTR) {
            /* the streams may be mid-message: the engine cannot go on, and
             * the peers learn why instead of timing out */
            char msg[256];
            snprintf(msg, sizeof msg, "tcp %s: rank %d: poll failed: %s", x->opname, e->rank,
                     strerror(errno));
            tcp_engine_break(e, msg, st.soff > 0 ? x->to : -1, TP_ERR_IO);
            return e->host->set_error(TP_ERR_IO, "%s", msg);
        }
        if (watch_others(&st, n, &status))
            return status;
    }
    return TP_OK;
}
