/* SPDX-License-Identifier: MIT */
/*
 * tcp-auth.c — every connection of a tcp job is authenticated before
 * anything else is read from it (see tcp-wire.h for the exchange).
 *
 * The secret comes from TP_TCP_SECRET (tp-launch sets a fresh random one per
 * job); TP_TCP_INSECURE=1 runs without one (a fixed, public key: for
 * debugging only, with a warning). The MACs are HMAC-SHA-256 (GLib GHmac)
 * over both sides' fresh nonces, the direction and the port's role, compared
 * in constant time, so the secret never crosses the wire, a recorded
 * transcript cannot be replayed and a proof cannot be reflected.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <glib.h>

#include "tcp.h"

#define TCP_SECRET_MIN   16
#define TCP_INSECURE_KEY "tp-tcp insecure: no TP_TCP_SECRET"
#define TCP_AUTH_LABEL   "tp-tcp auth v2"

static const char *role_name(int role)
{
    return role == TCP_ROLE_MASTER ? "master" : "peer";
}

tp_status tcp_auth_setup(tcp_engine *e)
{
    const char *s = getenv("TP_TCP_SECRET"), *ins = getenv("TP_TCP_INSECURE");
    int insecure = ins && strcmp(ins, "1") == 0;
    if ((!s || !*s) && insecure) {
        fprintf(stderr,
                "tp tcp: warning: rank %d: TP_TCP_INSECURE=1: connections are not "
                "authenticated; any local process can join, read or disturb this job\n",
                e->rank);
        s = TCP_INSECURE_KEY;
    } else if (!s || !*s) {
        return e->host->set_error(
            TP_ERR_INVALID_ARG,
            "tcp: TP_TCP_SECRET is not set (rank %d of %d): every connection of a tcp job is "
            "authenticated with a secret shared by its ranks. tp-launch sets a fresh one per "
            "job; when you start the ranks yourself, give all of them the same secret, e.g. "
            "`export TP_TCP_SECRET=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \\n')` (or "
            "TP_TCP_INSECURE=1 to run unauthenticated, for debugging only)",
            e->rank, e->world);
    } else if (strlen(s) < TCP_SECRET_MIN) {
        return e->host->set_error(TP_ERR_INVALID_ARG,
                                  "tcp: TP_TCP_SECRET has %zu characters, at least %d expected: "
                                  "use a long random secret, e.g. `export TP_TCP_SECRET=$(od -An "
                                  "-N32 -tx1 /dev/urandom | tr -d ' \\n')`",
                                  strlen(s), TCP_SECRET_MIN);
    }
    e->secret_len = strlen(s);
    e->secret = malloc(e->secret_len);
    if (!e->secret)
        return e->host->set_error(TP_ERR_NO_MEMORY, "tcp: out of memory for the secret");
    memcpy(e->secret, s, e->secret_len);
    return TP_OK;
}

int tcp_random(void *buf, size_t n)
{
    unsigned char *p = buf;
    size_t done = 0;
    while (done < n) {
        ssize_t r = getrandom(p + done, n - done, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        done += (size_t)r;
    }
    if (done == n)
        return 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    while (done < n) {
        ssize_t r = read(fd, p + done, n - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        done += (size_t)r;
    }
    close(fd);
    return done == n ? 0 : -1;
}

void tcp_auth_mac(const tcp_engine *e, char dir, int role, const unsigned char *nc,
                  const unsigned char *ns, unsigned char mac[TCP_MAC_SIZE])
{
    GHmac *h = g_hmac_new(G_CHECKSUM_SHA256, e->secret, e->secret_len);
    unsigned char tag[2] = {(unsigned char)dir, (unsigned char)role};
    gsize len = TCP_MAC_SIZE;
    g_hmac_update(h, (const guchar *)TCP_AUTH_LABEL, sizeof TCP_AUTH_LABEL - 1);
    g_hmac_update(h, tag, sizeof tag);
    g_hmac_update(h, nc, TCP_NONCE_SIZE);
    g_hmac_update(h, ns, TCP_NONCE_SIZE);
    g_hmac_get_digest(h, mac, &len);
    g_hmac_unref(h);
}

int tcp_auth_equal(const unsigned char *a, const unsigned char *b, size_t n)
{
    volatile unsigned char diff = 0;
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

int tcp_auth_send(int fd, uint16_t op, int role, const void *payload, size_t len, double deadline)
{
    unsigned char msg[TCP_HDR_SIZE + TCP_PROOF_SIZE];
    tcp_hdr h = {.magic = TCP_MAGIC,
                 .version = TCP_WIRE_VERSION,
                 .op = op,
                 .arg = (uint32_t)role,
                 .len = len};
    tcp_hdr_encode(&h, msg);
    memcpy(msg + TCP_HDR_SIZE, payload, len);
    return tcp_send_all(fd, msg, TCP_HDR_SIZE + len, deadline);
}

const char *tcp_auth_check_hdr(const unsigned char *raw, uint16_t op, int role, size_t len,
                               char *buf, size_t buflen)
{
    tcp_hdr h;
    tcp_hdr_decode(raw, &h);
    if (h.magic != TCP_MAGIC)
        snprintf(buf, buflen,
                 "bytes that are not a tp tcp message (magic 0x%08x, expected 0x%08x): "
                 "another program may be talking to this port",
                 h.magic, TCP_MAGIC);
    else if (h.version != TCP_WIRE_VERSION)
        snprintf(buf, buflen, "wire version %u, expected %u: mixed tp versions in one job",
                 h.version, TCP_WIRE_VERSION);
    else if (h.op != op || h.len != len || h.step != 0 || h.comm != 0 || h.seq != 0)
        snprintf(buf, buflen, "a %s message of %llu bytes where a %zu-byte %s was due",
                 tcp_op_name(h.op), (unsigned long long)h.len, len, tcp_op_name(op));
    else if (h.arg != (uint32_t)role)
        snprintf(buf, buflen,
                 "an authentication for a %s port to this %s port: a rank connected to the "
                 "wrong port",
                 h.arg == TCP_ROLE_MASTER ? "master" : "peer", role_name(role));
    else
        return NULL;
    return buf;
}

/* The listener did not answer the challenge (errno says how). */
static tp_status auth_io_error(tcp_engine *e, const char *who, size_t got, int *retry)
{
    int en = errno;
    if (en == ETIMEDOUT)
        return e->host->set_error(TP_ERR_TIMEOUT,
                                  "tcp: rank %d: %s did not answer the authentication within %g "
                                  "s (TP_TIMEOUT_S, %zu of %d bytes): it is not a tp rank of "
                                  "this job, or it hangs",
                                  e->rank, who, e->timeout_s, got, TCP_HDR_SIZE + TCP_PROOF_SIZE);
    if (got == 0 && (en == ENODATA || en == ECONNRESET || en == EPIPE))
        *retry = 1; /* dropped before it answered (busy or gone): connect again */
    return e->host->set_error(
        TP_ERR_PEER, "tcp: rank %d: %s %s during the authentication (%zu bytes in)", e->rank, who,
        en == ENODATA ? "closed the connection" : strerror(en), got);
}

/* The connector's side, once: see tcp_auth_connect. */
static tp_status auth_connect_once(tcp_engine *e, int fd, int role, const char *who,
                                   double deadline, int *retry)
{
    unsigned char nc[TCP_NONCE_SIZE], in[TCP_HDR_SIZE + TCP_PROOF_SIZE], mac[TCP_MAC_SIZE];
    char why[300];
    size_t got = 0;
    if (tcp_random(nc, sizeof nc) < 0)
        return e->host->set_error(TP_ERR_IO, "tcp: rank %d: no random bytes for a nonce: %s",
                                  e->rank, strerror(errno));
    /* The header first: a stranger's answer is refused without waiting for more. */
    if (tcp_auth_send(fd, TCP_OP_AUTH_CHALLENGE, role, nc, sizeof nc, deadline) < 0 ||
        tcp_recv_all(fd, in, TCP_HDR_SIZE, deadline, &got) < 0)
        return auth_io_error(e, who, got, retry);
    if (tcp_auth_check_hdr(in, TCP_OP_AUTH_PROOF, role, TCP_PROOF_SIZE, why, sizeof why))
        return e->host->set_error(TP_ERR_PEER,
                                  "tcp: rank %d: %s sent %s in answer to the authentication: "
                                  "another program holds this port, not %s of this job",
                                  e->rank, who, why, role == TCP_ROLE_MASTER ? "rank 0" : "a rank");
    if (tcp_recv_all(fd, in + TCP_HDR_SIZE, TCP_PROOF_SIZE, deadline, &got) < 0)
        return auth_io_error(e, who, TCP_HDR_SIZE + got, retry);
    const unsigned char *ns = in + TCP_HDR_SIZE;
    tcp_auth_mac(e, 'L', role, nc, ns, mac);
    if (!tcp_auth_equal(mac, ns + TCP_NONCE_SIZE, TCP_MAC_SIZE))
        return e->host->set_error(
            TP_ERR_PEER,
            "tcp: rank %d: %s failed authentication: it does not know this job's "
            "TP_TCP_SECRET, so another program (or a job with another secret) holds the port; "
            "nothing was sent to it. Start every rank with the same TP_TCP_SECRET, or pick "
            "another TP_MASTER_PORT",
            e->rank, who);
    tcp_auth_mac(e, 'C', role, nc, ns, mac);
    if (tcp_auth_send(fd, TCP_OP_AUTH_RESPONSE, role, mac, sizeof mac, deadline) < 0)
        return e->host->set_error(TP_ERR_PEER, "tcp: rank %d: %s: sending the authentication: %s",
                                  e->rank, who, strerror(errno));
    return TP_OK;
}

tp_status tcp_auth_connect(tcp_engine *e, int fd, int role, const char *who, double deadline,
                           int *retry)
{
    *retry = 0;
    tp_status st = auth_connect_once(e, fd, role, who, deadline, retry);
    if (st == TP_OK)
        e->host->debug("comm", "tcp: rank %d: authenticated %s (%s port)", e->rank, who,
                       role_name(role));
    return st;
}
