/* SPDX-License-Identifier: MIT */
/*
 * tcp-stall.c — name the rank that stopped progressing.
 *
 * In a ring every rank ends up waiting when one rank stalls, and each of
 * them only sees its own neighbour go quiet, so the first rank to time out
 * would blame a neighbour that is itself waiting. Instead, a rank that
 * times out (or sees a peer's STALL note while it waits) sends a STALL note
 * to every peer: "rank r waits on rank w". For a short window it reads every
 * peer's note. Following the chain of "waits on" from this rank ends at the
 * rank that did not answer: it is the one that stopped (SIGSTOP, stuck
 * outside tp, not calling the collective). Every live rank sees the same
 * notes, so all of them name the same rank. The streams are given up after
 * this (data read in the window is discarded).
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "tcp.h"

#define DIAG_WINDOW_S 1.5 /* how long the live ranks get to answer */
#define WHY_KEEP      200 /* bytes of a peer's ABORT reason kept */

enum {
    R_NONE,
    R_STALL,
    R_ABORT,
    R_CLOSED
};

typedef struct diag_peer {
    unsigned char hdr[TCP_HDR_SIZE];
    size_t hoff;
    uint64_t skip; /* payload bytes of a data message still to discard */
    unsigned char pay[TCP_ABORT_MAX];
    size_t poff, plen; /* a note's payload being read */
    uint16_t op;
    int report, ended;
    uint32_t waits_on, flags, waited_ms;
    char why[WHY_KEEP + 1];
} diag_peer;

int tcp_stall_peek(tcp_engine *e, int peer)
{
    unsigned char h[TCP_HDR_SIZE];
    ssize_t n = recv(e->peers[peer].fd, h, sizeof h, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return -1;
    if (n != (ssize_t)sizeof h)
        return 0; /* end of stream, error or a partial header: not ours to read now */
    tcp_hdr got;
    tcp_hdr_decode(h, &got);
    if (got.magic != TCP_MAGIC || got.version != TCP_WIRE_VERSION || got.comm || got.seq)
        return 0;
    if (got.op == TCP_OP_STALL && got.len == TCP_STALL_SIZE)
        return 1;
    if (got.op == TCP_OP_ABORT && got.len <= TCP_ABORT_MAX)
        return 2;
    return 0;
}

void tcp_stall_note_encode(const tcp_stall_note *n,
                           unsigned char out[TCP_HDR_SIZE + TCP_STALL_SIZE])
{
    tcp_hdr h = {
        .magic = TCP_MAGIC, .version = TCP_WIRE_VERSION, .op = TCP_OP_STALL, .len = TCP_STALL_SIZE};
    tcp_hdr_encode(&h, out);
    unsigned char *p = out + TCP_HDR_SIZE;
    tcp_put32(p, n->rank);
    tcp_put32(p + 4, n->waits_on);
    tcp_put32(p + 8, n->waited_ms);
    tcp_put32(p + 12, n->flags);
    tcp_put64(p + 16, n->seq);
    tcp_put64(p + 24, n->comm);
}

void tcp_stall_note_decode(const unsigned char in[TCP_STALL_SIZE], tcp_stall_note *n)
{
    n->rank = tcp_get32(in);
    n->waits_on = tcp_get32(in + 4);
    n->waited_ms = tcp_get32(in + 8);
    n->flags = tcp_get32(in + 12);
    n->seq = tcp_get64(in + 16);
    n->comm = tcp_get64(in + 24);
}

static void record_note(diag_peer *d, const tcp_stall_note *n)
{
    d->report = R_STALL;
    d->waits_on = n->waits_on;
    d->flags = n->flags;
    d->waited_ms = n->waited_ms;
}

/* A complete message from peer i: a note is recorded, data is skipped. */
static void diag_message(diag_peer *d)
{
    tcp_hdr h;
    tcp_hdr_decode(d->hdr, &h);
    d->hoff = 0;
    if (h.magic != TCP_MAGIC || h.version != TCP_WIRE_VERSION) {
        d->report = d->report == R_NONE ? R_CLOSED : d->report; /* unreadable */
        d->ended = 1;
        return;
    }
    if ((h.op == TCP_OP_STALL && h.len == TCP_STALL_SIZE) ||
        (h.op == TCP_OP_ABORT && h.len <= TCP_ABORT_MAX)) {
        d->op = h.op;
        d->plen = (size_t)h.len;
        d->poff = 0;
        return;
    }
    d->skip = h.len;
}

static void diag_note_done(diag_peer *d)
{
    if (d->op == TCP_OP_STALL) {
        tcp_stall_note n;
        tcp_stall_note_decode(d->pay, &n);
        if (d->report != R_ABORT)
            record_note(d, &n);
    } else {
        size_t k = d->plen < WHY_KEEP ? d->plen : WHY_KEEP;
        memcpy(d->why, d->pay, k);
        d->why[k] = '\0';
        for (size_t j = 0; j < k; j++) /* text from the wire: printable only */
            if (d->why[j] < 32 || d->why[j] > 126)
                d->why[j] = '?';
        if (d->report == R_NONE)
            d->report = R_ABORT;
    }
    d->plen = 0;
    d->op = 0;
}

/* Read what peer i has: headers, skipped payloads, notes. */
static void diag_read(diag_peer *d, int fd)
{
    for (int rounds = 0; rounds < 64; rounds++) {
        unsigned char sink[4096];
        void *dst;
        size_t want;
        if (d->op) {
            dst = d->pay + d->poff;
            want = d->plen - d->poff;
        } else if (d->skip) {
            dst = sink;
            want = d->skip < sizeof sink ? (size_t)d->skip : sizeof sink;
        } else {
            dst = d->hdr + d->hoff;
            want = TCP_HDR_SIZE - d->hoff;
        }
        ssize_t n = want ? recv(fd, dst, want, MSG_DONTWAIT) : 0;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        if (want && n <= 0) {
            if (d->report == R_NONE)
                d->report = R_CLOSED;
            d->ended = 1;
            return;
        }
        if (d->op) {
            d->poff += (size_t)n;
            if (d->poff == d->plen)
                diag_note_done(d);
        } else if (d->skip) {
            d->skip -= (uint64_t)n;
        } else {
            d->hoff += (size_t)n;
            if (d->hoff == TCP_HDR_SIZE)
                diag_message(d);
        }
    }
}

/* Send this rank's note to every peer whose stream is at a message boundary. */
static void diag_announce(tcp_engine *e, const tcp_stall_note *me, int mid)
{
    unsigned char msg[TCP_HDR_SIZE + TCP_STALL_SIZE];
    tcp_stall_note_encode(me, msg);
    for (int i = 0; i < e->world; i++)
        if (i != e->rank && i != mid && e->peers[i].fd >= 0)
            (void)!send(e->peers[i].fd, msg, sizeof msg, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/* Read notes until every peer answered (or its stream ended) or the window closes. */
static void diag_collect(tcp_engine *e, diag_peer *d, struct pollfd *pfd, int *who)
{
    double end = tcp_now() + (e->timeout_s < DIAG_WINDOW_S ? e->timeout_s : DIAG_WINDOW_S);
    for (;;) {
        nfds_t n = 0;
        for (int i = 0; i < e->world; i++)
            if (i != e->rank && e->peers[i].fd >= 0 && !d[i].ended && d[i].report == R_NONE) {
                pfd[n] = (struct pollfd){.fd = e->peers[i].fd, .events = POLLIN};
                who[n++] = i;
            }
        double left = end - tcp_now();
        if (n == 0 || left <= 0)
            return;
        int r = poll(pfd, n, (int)(left * 1000) + 1);
        if (r < 0 && errno != EINTR)
            return;
        for (nfds_t k = 0; r > 0 && k < n; k++)
            if (pfd[k].revents)
                diag_read(&d[who[k]], pfd[k].fd);
    }
}

/* "a -> b -> c" into buf: the chain of waits from this rank. */
static int diag_chain(const tcp_engine *e, const diag_peer *d, int first, char *buf, size_t len,
                      int *cycle)
{
    size_t used = 0;
    int cur = first, steps = 0;
    *cycle = 0;
    used += (size_t)snprintf(buf, len, "%d -> %d", e->rank, first);
    while (cur != e->rank && d[cur].report == R_STALL && d[cur].waits_on < (uint32_t)e->world) {
        cur = (int)d[cur].waits_on;
        if (used < len)
            used += (size_t)snprintf(buf + used, len - used, " -> %d", cur);
        if (cur == e->rank || ++steps > e->world) {
            *cycle = 1;
            break;
        }
    }
    if (used >= len && len > 4)
        memcpy(buf + len - 4, "...", 4);
    return cur;
}

/* The verdict, from the notes collected. */
static tp_status diag_verdict(tcp_stall_ctx *cx, const diag_peer *d, char *msg, size_t len)
{
    tcp_comm *c = cx->comm;
    tcp_engine *e = c->eng;
    char chain[160], name[96], head[200];
    int cycle, answered = 0;
    int x = diag_chain(e, d, cx->waits_on, chain, sizeof chain, &cycle);
    for (int i = 0; i < e->world; i++)
        answered += i != e->rank && d[i].report == R_STALL;
    snprintf(head, sizeof head, "tcp %s (communicator %#llx, collective #%llu): ", cx->opname,
             (unsigned long long)c->id, (unsigned long long)c->seq);
    if (cycle) {
        snprintf(msg, len,
                 "%sno rank made progress for %g s (TP_TIMEOUT_S) and the ranks wait on each "
                 "other in a cycle (%s): they called different collectives, or the same ones "
                 "on communicators in different orders",
                 head, e->timeout_s, chain);
        return TP_ERR_TIMEOUT;
    }
    tcp_peer_name(&e->peers[x], name, sizeof name);
    if (d[x].report == R_ABORT) {
        snprintf(msg, len, "%srank %d at %s gave up: %s (wait chain %s)", head, x, name, d[x].why,
                 chain);
        return TP_ERR_PEER;
    }
    if (d[x].report == R_CLOSED) {
        snprintf(msg, len,
                 "%srank %d at %s closed its connections while this rank waited (wait chain "
                 "%s): it exited or crashed; see its own error",
                 head, x, name, chain);
        return TP_ERR_PEER;
    }
    /* The last link: who waits directly on x, and how. */
    int last_sending = cx->sending;
    for (int i = 0; i < e->world; i++)
        if (i != e->rank && d[i].report == R_STALL && d[i].waits_on == (uint32_t)x)
            last_sending = (int)(d[i].flags & 1u);
    snprintf(msg, len,
             "%srank %d at %s %s for %g s (TP_TIMEOUT_S) and did not answer a stall check "
             "within %g s, while %d of the %d other rank(s) did: rank %d stopped progressing "
             "(stopped by a signal such as SIGSTOP, stuck outside tp, or not calling this "
             "collective); wait chain %s, this rank waited for rank %d",
             head, x, name, last_sending ? "accepted no data" : "sent nothing", e->timeout_s,
             e->timeout_s < DIAG_WINDOW_S ? e->timeout_s : DIAG_WINDOW_S, answered, e->world - 1, x,
             chain, cx->waits_on);
    return TP_ERR_TIMEOUT;
}

tp_status tcp_stall_diagnose(tcp_stall_ctx *cx)
{
    tcp_engine *e = cx->comm->eng;
    diag_peer *d = calloc((size_t)e->world, sizeof *d);
    struct pollfd *pfd = calloc((size_t)e->world, sizeof *pfd);
    int *who = calloc((size_t)e->world, sizeof *who);
    char msg[1024];
    tp_status st;
    if (!d || !pfd || !who) {
        free(d);
        free(pfd);
        free(who);
        snprintf(msg, sizeof msg,
                 "tcp %s: rank %d made no progress for %g s (TP_TIMEOUT_S) "
                 "waiting for rank %d (out of memory for the stall check)",
                 cx->opname, e->rank, e->timeout_s, cx->waits_on);
        tcp_engine_break(e, msg, cx->mid, TP_ERR_TIMEOUT);
        return e->host->set_error(TP_ERR_TIMEOUT, "%s", msg);
    }
    if (cx->from >= 0) { /* the stream this rank was reading, where it stopped */
        memcpy(d[cx->from].hdr, cx->hdr, TCP_HDR_SIZE);
        d[cx->from].hoff = cx->hoff;
        d[cx->from].skip = cx->skip;
    }
    if (cx->note_from >= 0)
        record_note(&d[cx->note_from], &cx->note);
    tcp_stall_note me = {.rank = (uint32_t)e->rank,
                         .waits_on = (uint32_t)cx->waits_on,
                         .waited_ms = (uint32_t)(cx->waited_s * 1000.0),
                         .flags = (uint32_t)cx->sending,
                         .seq = cx->comm->seq,
                         .comm = cx->comm->id};
    diag_announce(e, &me, cx->mid);
    diag_collect(e, d, pfd, who);
    st = diag_verdict(cx, d, msg, sizeof msg);
    free(d);
    free(pfd);
    free(who);
    tcp_engine_break(e, msg, cx->mid, st);
    return e->host->set_error(st, "%s", msg);
}
