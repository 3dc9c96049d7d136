/* SPDX-License-Identifier: MIT */
/*
 * tcp-wire.h — the tcp plugin's wire format (private to plugins/tcp and its
 * tests; not part of the tp SDK).
 *
 * Every message is a 48-byte header, all fields little-endian, followed by
 * exactly `len` payload bytes:
 *
 *   off size field
 *    0   4   magic    TCP_MAGIC
 *    4   2   version  TCP_WIRE_VERSION
 *    6   2   op       tcp_wire_op
 *    8   4   step     index of this message within the op (0, 1, ...)
 *   12   4   arg      dtype | redop << 8 | root << 16 (0 for control messages)
 *   16   8   comm     communicator id (0 = world, others derived by split)
 *   24   8   seq      number of the collective on that communicator (0, 1, ...)
 *   32   8   len      payload bytes
 *   40   8   call     digest of the collective's counts (FNV-1a of the
 *                     per-segment element counts; 0 for control messages)
 *
 * A receiver always knows which message comes next and compares every field
 * with what it expects; `len` must equal the expected size exactly, and
 * `call` catches ranks whose different counts would cut the same messages.
 *
 * Authentication (before anything else on every connection): the connecting
 * side sends AUTH_CHALLENGE (a fresh 32-byte nonce Nc, arg = role: 0 for the
 * master port, 1 for a peer port); the listener answers AUTH_PROOF (its own
 * fresh nonce Ns, then HMAC-SHA-256(TP_TCP_SECRET, "tp-tcp auth v2" | 'L' |
 * role | Nc | Ns)); the connector checks it (a squatted port fails here) and
 * answers AUTH_RESPONSE (HMAC-SHA-256(secret, "tp-tcp auth v2" | 'C' | role |
 * Nc | Ns)), which the listener checks. The secret never crosses the wire,
 * both nonces are fresh, and the 'L'/'C' byte keeps a proof from being
 * reflected as a response.
 *
 * Rendezvous: rank r > 0 connects to the master (rank 0) at
 * TP_MASTER_ADDR:TP_MASTER_PORT and sends HELLO; rank 0 answers every rank
 * with TABLE (job id, rank 0's chunk size, every rank's address) or ABORT
 * with a reason. Then rank r connects to every rank j < r and sends MESH,
 * which rank j acknowledges with the single byte TCP_MESH_ACK once it has
 * taken the connection into its mesh (a connection dropped before that, e.g.
 * by a flood of strangers on the port, is connected again); it accepts a
 * connection from every rank j > r. A rank that registered with the master
 * and sees its connection end before the TABLE registers again.
 *
 * A rank that waited TP_TIMEOUT_S without progress sends STALL (comm 0, seq
 * 0: who it is, whom it waits on, in which collective of which
 * communicator) to every peer; a rank that sees a STALL answers with its
 * own, so every live rank learns who waits on whom and the rank that
 * stopped progressing is the one at the end of the chain that never
 * answers. A rank busy in a collective of a communicator the sender is not
 * a member of answers and goes on (that stall is not its collective's).
 *
 * A rank that gives up after a wire error sends ABORT (comm 0, seq 0, the
 * reason as payload) where its stream is at a message boundary, then closes.
 */
#ifndef TCP_WIRE_H
#define TCP_WIRE_H

#include <stdint.h>

#define TCP_MAGIC            0x54504354u /* the bytes "TCPT" read as a little-endian u32 */
#define TCP_WIRE_VERSION     4           /* 3: MESH is acknowledged; 4: call digest */
#define TCP_HDR_SIZE         48
#define TCP_HOST_LEN         60   /* numeric address text, NUL terminated */
#define TCP_HELLO_SIZE       12   /* rank u32, world u32, port u16, 2 zero bytes */
#define TCP_TABLE_ENTRY_SIZE 64   /* port u16, 2 zero bytes, host[TCP_HOST_LEN] */
#define TCP_TABLE_HEAD_SIZE  16   /* job id u64, chunk bytes u64, then world entries */
#define TCP_MESH_SIZE        16   /* job id u64, rank u32, world u32 */
#define TCP_MESH_ACK         0x4b /* the byte that acknowledges a MESH */
#define TCP_ABORT_MAX        512  /* reason text, not NUL terminated */
#define TCP_MAX_WORLD        65535
#define TCP_NONCE_SIZE       32 /* AUTH_CHALLENGE payload */
#define TCP_MAC_SIZE         32 /* HMAC-SHA-256; AUTH_RESPONSE payload */
#define TCP_PROOF_SIZE       64 /* AUTH_PROOF: nonce, then MAC */
#define TCP_STALL_SIZE       32 /* STALL: rank, waits on, waited ms, flags (u32); seq, comm (u64) */

typedef enum tcp_wire_op {
    TCP_OP_HELLO = 1,
    TCP_OP_TABLE = 2,
    TCP_OP_MESH = 3,
    TCP_OP_ABORT = 4,
    TCP_OP_AUTH_CHALLENGE = 5,
    TCP_OP_AUTH_PROOF = 6,
    TCP_OP_AUTH_RESPONSE = 7,
    TCP_OP_STALL = 8,
    TCP_OP_ALL_REDUCE = 10,
    TCP_OP_ALL_GATHER = 11,
    TCP_OP_REDUCE_SCATTER = 12,
    TCP_OP_BROADCAST = 13,
    TCP_OP_BARRIER = 14,
    TCP_OP_SPLIT = 15,
} tcp_wire_op;

/* Which port an authentication is for (the AUTH_* header's arg). */
enum {
    TCP_ROLE_MASTER = 0,
    TCP_ROLE_PEER = 1
};

typedef struct tcp_hdr {
    uint32_t magic;
    uint16_t version;
    uint16_t op;
    uint32_t step;
    uint32_t arg;
    uint64_t comm;
    uint64_t seq;
    uint64_t len;
    uint64_t call;
} tcp_hdr;

static inline void tcp_put16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static inline void tcp_put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline void tcp_put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline uint16_t tcp_get16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t tcp_get32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static inline uint64_t tcp_get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static inline void tcp_hdr_encode(const tcp_hdr *h, unsigned char out[TCP_HDR_SIZE])
{
    tcp_put32(out + 0, h->magic);
    tcp_put16(out + 4, h->version);
    tcp_put16(out + 6, h->op);
    tcp_put32(out + 8, h->step);
    tcp_put32(out + 12, h->arg);
    tcp_put64(out + 16, h->comm);
    tcp_put64(out + 24, h->seq);
    tcp_put64(out + 32, h->len);
    tcp_put64(out + 40, h->call);
}

static inline void tcp_hdr_decode(const unsigned char in[TCP_HDR_SIZE], tcp_hdr *h)
{
    h->magic = tcp_get32(in + 0);
    h->version = tcp_get16(in + 4);
    h->op = tcp_get16(in + 6);
    h->step = tcp_get32(in + 8);
    h->arg = tcp_get32(in + 12);
    h->comm = tcp_get64(in + 16);
    h->seq = tcp_get64(in + 24);
    h->len = tcp_get64(in + 32);
    h->call = tcp_get64(in + 40);
}

#endif /* TCP_WIRE_H */
