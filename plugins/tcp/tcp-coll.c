/* SPDX-License-Identifier: MIT */
/*
 * tcp-coll.c — collectives on a ring of the communicator's ranks.
 *
 * Ring order is comm rank order: rank r sends to r+1 and receives from r-1.
 * Data is cut into segments (one per rank) and segments into chunks of at
 * most chunk_bytes; a chunk is forwarded as soon as it has arrived (and been
 * reduced), so the steps of a collective overlap.
 *
 *   reduce-scatter, step t = 0..n-2: send segment r-1-t, receive segment
 *     r-2-t and reduce it as  segment = received + own.  Segment s thus
 *     accumulates in the fixed order s+1, s+2, ..., s and ends complete on
 *     rank s, which gives every rank identical bits for every element.
 *   all-gather, step t = 0..n-2: send segment r-t, receive segment r-t-1.
 *   all-reduce = reduce-scatter then all-gather, as one pipelined stream.
 *   broadcast: a chain root, root+1, ..., root-1, forwarding chunk by chunk.
 *   barrier: an all-gather of empty segments (each rank's last message
 *     depends on every other rank having entered).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tcp.h"

/* Everything a ring collective needs to know about its segments. */
typedef struct ring {
    tcp_comm *c;
    const char *opname;
    uint16_t op;
    tp_dtype dt;
    tp_redop rop;
    size_t esize, chunk; /* element size, chunk in elements */
    int n, r;
    const size_t *cnt; /* [n] elements per segment */
    size_t *off;       /* [n] element offset of each segment */
    char *work;        /* segments live here */
    const char *first; /* step 0 of reduce-scatter sends own data from here (may be work) */
    uint64_t call;     /* digest of cnt, in every header (different counts that would cut
                        * the same messages still differ here) */
} ring;

/* FNV-1a of n counts. */
static uint64_t call_digest(const size_t *cnt, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        for (int b = 0; b < 8; b++)
            h = (h ^ (((uint64_t)cnt[i] >> (8 * b)) & 0xff)) * 0x100000001b3ull;
    return h;
}

static tp_status check_comm(tcp_comm *c, const char *op)
{
    if (!c)
        return TP_ERR_INVALID_ARG;
    if (c->eng->broken)
        return c->eng->host->set_error(TP_ERR_PEER,
                                       "tcp %s: this rank's connections broke in an earlier "
                                       "collective and cannot be used again: %s",
                                       op, c->eng->broken_why);
    return TP_OK;
}

static tp_status check_types(tcp_comm *c, const char *op, tp_dtype dt, int redop, tp_redop rop)
{
    if (tp_util_dtype_size(dt) == 0)
        return c->eng->host->set_error(TP_ERR_INVALID_ARG, "tcp %s: invalid dtype %d", op, (int)dt);
    if (redop && (rop < 0 || rop >= TP_REDOP_COUNT_))
        return c->eng->host->set_error(TP_ERR_INVALID_ARG, "tcp %s: invalid reduction op %d", op,
                                       (int)rop);
    return TP_OK;
}

/* Chunk size in elements for segments of at most max_cnt elements: the
 * configured chunk, grown so no segment needs more than MAX_CHUNKS messages
 * (bounds the message lists). A function of the arguments only, so every
 * rank cuts the same way. */
#define MAX_CHUNKS 65536
static size_t chunk_elems(const tcp_comm *c, size_t es, size_t max_cnt)
{
    size_t ch = c->eng->chunk_bytes / es;
    size_t need = max_cnt / MAX_CHUNKS + (max_cnt % MAX_CHUNKS != 0);
    return ch > need ? ch : need;
}

static size_t max_count(const size_t *cnt, int n)
{
    size_t m = 0;
    for (int i = 0; i < n; i++)
        if (cnt[i] > m)
            m = cnt[i];
    return m;
}

static int mod(int a, int n)
{
    return ((a % n) + n) % n;
}

static size_t nchunks(const ring *g, int seg)
{
    size_t c = g->cnt[seg];
    return c == 0 ? 1 : (c + g->chunk - 1) / g->chunk;
}

static tcp_hdr make_hdr(const ring *g, size_t step, size_t bytes, int root)
{
    return (tcp_hdr){.magic = TCP_MAGIC,
                     .version = TCP_WIRE_VERSION,
                     .op = g->op,
                     .step = (uint32_t)step,
                     .arg = (uint32_t)g->dt | ((uint32_t)g->rop << 8) | ((uint32_t)root << 16),
                     .comm = g->c->id,
                     .seq = g->c->seq,
                     .len = bytes,
                     .call = g->call};
}

/* This rank cannot take part in a collective its peers started (out of
 * memory): break the engine, so they get its reason at once (ABORT)
 * instead of waiting TP_TIMEOUT_S for it. */
static tp_status local_failure(tcp_comm *c, tp_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static tp_status local_failure(tcp_comm *c, tp_status status, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c->size > 1)
        tcp_engine_break(c->eng, msg, -1, status);
    return c->eng->host->set_error(status, "%s", msg);
}

/* Run `rs` reduce-scatter steps then `ag` all-gather steps on g->work. */
static tp_status ring_run(ring *g, int rs, int ag)
{
    tcp_comm *c = g->c;
    int n = g->n, r = g->r;
    size_t steps = (size_t)rs + (size_t)ag, nmsg = 0;
    g->call = call_digest(g->cnt, (size_t)n);
    for (size_t t = 0; t < steps; t++) {
        int seg = t < (size_t)rs ? mod(r - 1 - (int)t, n) : mod(r - (int)(t - (size_t)rs), n);
        nmsg += nchunks(g, seg);
    }
    /* Receive counts equal send counts: both cover the same segments shifted by one rank. */
    size_t nrecv = 0;
    for (size_t t = 0; t < steps; t++) {
        int seg = t < (size_t)rs ? mod(r - 2 - (int)t, n) : mod(r - 1 - (int)(t - (size_t)rs), n);
        nrecv += nchunks(g, seg);
    }
    if (rs > 0 && g->chunk * g->esize > c->eng->scratch_len) {
        /* Chunks grew past TP_TCP_CHUNK_BYTES (see chunk_elems): a larger receive buffer. */
        unsigned char *sc = realloc(c->eng->scratch, g->chunk * g->esize);
        if (!sc)
            return local_failure(c, TP_ERR_NO_MEMORY,
                                 "tcp %s: rank %d: out of memory for a %zu-byte chunk buffer",
                                 g->opname, c->rank, g->chunk * g->esize);
        c->eng->scratch = sc;
        c->eng->scratch_len = g->chunk * g->esize;
    }
    tcp_smsg *s = calloc(nmsg ? nmsg : 1, sizeof *s);
    tcp_rmsg *m = calloc(nrecv ? nrecv : 1, sizeof *m);
    if (!s || !m) {
        free(s);
        free(m);
        return local_failure(c, TP_ERR_NO_MEMORY, "tcp %s: rank %d: out of memory for %zu messages",
                             g->opname, c->rank, nmsg + nrecv);
    }
    size_t si = 0, ri = 0, prev_recv_start = 0;
    for (size_t t = 0; t < steps; t++) {
        int reduce = t < (size_t)rs;
        int sseg = reduce ? mod(r - 1 - (int)t, n) : mod(r - (int)(t - (size_t)rs), n);
        int rseg = reduce ? mod(r - 2 - (int)t, n) : mod(r - 1 - (int)(t - (size_t)rs), n);
        const char *sbase = (t == 0 && rs > 0) ? g->first : g->work;
        for (size_t k = 0; k < nchunks(g, sseg); k++, si++) {
            size_t e0 = k * g->chunk;
            size_t ne = g->cnt[sseg] - (g->cnt[sseg] ? e0 : 0);
            if (ne > g->chunk)
                ne = g->chunk;
            s[si].hdr = make_hdr(g, si, ne * g->esize, 0);
            s[si].data = ne ? sbase + (g->off[sseg] + e0) * g->esize : NULL;
            /* Steps after the first forward what the previous step received. */
            s[si].need = t == 0 ? 0 : prev_recv_start + k + 1;
        }
        prev_recv_start = ri;
        for (size_t k = 0; k < nchunks(g, rseg); k++, ri++) {
            size_t e0 = k * g->chunk;
            size_t ne = g->cnt[rseg] - (g->cnt[rseg] ? e0 : 0);
            if (ne > g->chunk)
                ne = g->chunk;
            m[ri].hdr = make_hdr(g, ri, ne * g->esize, 0);
            m[ri].dst = ne ? g->work + (g->off[rseg] + e0) * g->esize : NULL;
            m[ri].reduce = reduce;
        }
    }
    tcp_xfer x = {.comm = c,
                  .opname = g->opname,
                  .to = c->members[mod(r + 1, n)],
                  .from = c->members[mod(r - 1, n)],
                  .s = s,
                  .ns = nmsg,
                  .r = m,
                  .nr = nrecv,
                  .dt = g->dt,
                  .rop = g->rop};
    tp_status st = tcp_xfer_run(&x);
    free(s);
    free(m);
    return st;
}

/* Offsets from counts; fails on overflow of the total byte size. */
static tp_status layout(tcp_comm *c, const char *op, const size_t *cnt, size_t esize, size_t *off,
                        size_t *total)
{
    size_t sum = 0;
    for (int i = 0; i < c->size; i++) {
        off[i] = sum;
        if (cnt[i] > (SIZE_MAX / esize) - sum)
            return c->eng->host->set_error(TP_ERR_INVALID_ARG,
                                           "tcp %s: counts add up to more than SIZE_MAX bytes "
                                           "(count of rank %d is %zu)",
                                           op, i, cnt[i]);
        sum += cnt[i];
    }
    *total = sum;
    return TP_OK;
}

static void copy_bytes(void *dst, const void *src, size_t n)
{
    if (n && dst != src)
        memmove(dst, src, n);
}

static tp_status bad_ptr(tcp_comm *c, const char *op, const char *what)
{
    return c->eng->host->set_error(TP_ERR_INVALID_ARG, "tcp %s: %s is NULL with a non-zero count",
                                   op, what);
}

/* The checks and the layout shared by the v-collectives: element size
 * *es, per-rank offsets *off (caller frees) and the total count. */
static tp_status v_prologue(tcp_comm *c, const char *name, tp_dtype dt, int redop, tp_redop rop,
                            const size_t *counts, size_t *es, size_t **off, size_t *total)
{
    *off = NULL;
    tp_status st = check_comm(c, name);
    if (st == TP_OK)
        st = check_types(c, name, dt, redop, rop);
    if (st != TP_OK)
        return st;
    if (!counts)
        return c->eng->host->set_error(TP_ERR_INVALID_ARG, "tcp %s: counts is NULL", name);
    *es = tp_util_dtype_size(dt);
    *off = malloc(sizeof(size_t) * (size_t)c->size);
    if (!*off)
        return local_failure(c, TP_ERR_NO_MEMORY, "tcp %s: rank %d: out of memory", name, c->rank);
    st = layout(c, name, counts, *es, *off, total);
    if (st != TP_OK) {
        free(*off);
        *off = NULL;
    }
    return st;
}

tp_status tcp_all_reduce(void *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                         tp_redop op)
{
    tcp_comm *c = comm;
    const char *name = "all_reduce";
    tp_status st = check_comm(c, name);
    if (st == TP_OK)
        st = check_types(c, name, dt, 1, op);
    if (st != TP_OK)
        return st;
    size_t es = tp_util_dtype_size(dt);
    if (count > SIZE_MAX / es)
        return c->eng->host->set_error(TP_ERR_INVALID_ARG, "tcp %s: count %zu is too large", name,
                                       count);
    if (count && (!send || !recv))
        return bad_ptr(c, name, !send ? "send" : "recv");
    copy_bytes(recv, send, count * es);
    if (c->size == 1) {
        c->seq++;
        return TP_OK;
    }
    size_t *cnt = malloc(2 * sizeof(size_t) * (size_t)c->size);
    if (!cnt)
        return local_failure(c, TP_ERR_NO_MEMORY, "tcp %s: rank %d: out of memory", name, c->rank);
    size_t *off = cnt + c->size;
    size_t base = count / (size_t)c->size, extra = count % (size_t)c->size;
    for (int i = 0; i < c->size; i++) {
        cnt[i] = base + ((size_t)i < extra ? 1 : 0);
        off[i] = i == 0 ? 0 : off[i - 1] + cnt[i - 1];
    }
    ring g = {.c = c,
              .opname = name,
              .op = TCP_OP_ALL_REDUCE,
              .dt = dt,
              .rop = op,
              .esize = es,
              .chunk = chunk_elems(c, es, max_count(cnt, c->size)),
              .n = c->size,
              .r = c->rank,
              .cnt = cnt,
              .off = off,
              .work = recv,
              .first = recv};
    st = ring_run(&g, c->size - 1, c->size - 1);
    c->seq++;
    free(cnt);
    return st;
}

static tp_status gather_impl(tcp_comm *c, const char *name, uint16_t wop, const void *send,
                             void *recv, const size_t *counts, tp_dtype dt)
{
    size_t es, total, *off;
    tp_status st = v_prologue(c, name, dt, 0, TP_SUM, counts, &es, &off, &total);
    if (st != TP_OK)
        return st;
    if (counts[c->rank] && !send)
        st = bad_ptr(c, name, "send");
    if (st == TP_OK && total && !recv)
        st = bad_ptr(c, name, "recv");
    if (st != TP_OK) {
        free(off);
        return st;
    }
    if (counts[c->rank])
        copy_bytes((char *)recv + off[c->rank] * es, send, counts[c->rank] * es);
    if (c->size > 1) {
        ring g = {.c = c,
                  .opname = name,
                  .op = wop,
                  .dt = dt,
                  .rop = TP_SUM,
                  .esize = es,
                  .chunk = chunk_elems(c, es, max_count(counts, c->size)),
                  .n = c->size,
                  .r = c->rank,
                  .cnt = counts,
                  .off = off,
                  .work = recv,
                  .first = recv};
        st = ring_run(&g, 0, c->size - 1);
    }
    c->seq++;
    free(off);
    return st;
}

tp_status tcp_all_gather(void *comm, const void *send, void *recv, const size_t *counts,
                         tp_dtype dt)
{
    return gather_impl(comm, "all_gather", TCP_OP_ALL_GATHER, send, recv, counts, dt);
}

tp_status tcp_reduce_scatter(void *comm, const void *send, void *recv, const size_t *counts,
                             tp_dtype dt, tp_redop op)
{
    tcp_comm *c = comm;
    const char *name = "reduce_scatter";
    size_t es, total, *off;
    tp_status st = v_prologue(c, name, dt, 1, op, counts, &es, &off, &total);
    if (st != TP_OK)
        return st;
    if (total && !send)
        st = bad_ptr(c, name, "send");
    if (st == TP_OK && counts[c->rank] && !recv)
        st = bad_ptr(c, name, "recv");
    char *work = NULL;
    if (st == TP_OK && c->size > 1 && total) {
        /* Reduce in a copy: send is const and recv holds one segment only. */
        work = malloc(total * es);
        if (!work)
            st = local_failure(c, TP_ERR_NO_MEMORY,
                               "tcp %s: rank %d: out of memory for a %zu-byte work buffer", name,
                               c->rank, total * es);
        else
            memcpy(work, send, total * es);
    }
    if (st != TP_OK) {
        free(off);
        return st;
    }
    if (c->size == 1) {
        copy_bytes(recv, send, counts[0] * es);
    } else {
        ring g = {.c = c,
                  .opname = name,
                  .op = TCP_OP_REDUCE_SCATTER,
                  .dt = dt,
                  .rop = op,
                  .esize = es,
                  .chunk = chunk_elems(c, es, max_count(counts, c->size)),
                  .n = c->size,
                  .r = c->rank,
                  .cnt = counts,
                  .off = off,
                  .work = work,
                  .first = work};
        st = ring_run(&g, c->size - 1, 0);
        if (st == TP_OK && counts[c->rank])
            copy_bytes(recv, work + off[c->rank] * es, counts[c->rank] * es);
    }
    c->seq++;
    free(work);
    free(off);
    return st;
}

tp_status tcp_broadcast(void *comm, void *buf, size_t count, tp_dtype dt, int root)
{
    tcp_comm *c = comm;
    const char *name = "broadcast";
    tp_status st = check_comm(c, name);
    if (st == TP_OK)
        st = check_types(c, name, dt, 0, TP_SUM);
    if (st != TP_OK)
        return st;
    if (root < 0 || root >= c->size)
        return c->eng->host->set_error(TP_ERR_INVALID_ARG,
                                       "tcp broadcast: root %d is not a rank of this communicator "
                                       "(size %d)",
                                       root, c->size);
    size_t es = tp_util_dtype_size(dt);
    if (count > SIZE_MAX / es)
        return c->eng->host->set_error(TP_ERR_INVALID_ARG, "tcp %s: count %zu is too large", name,
                                       count);
    if (count && !buf)
        return bad_ptr(c, name, "buf");
    if (c->size == 1) {
        c->seq++;
        return TP_OK;
    }
    int n = c->size, pos = mod(c->rank - root, n);
    size_t chunk = chunk_elems(c, es, count);
    size_t nch = count == 0 ? 1 : (count + chunk - 1) / chunk;
    int sends = pos != n - 1, recvs = pos != 0;
    tcp_smsg *s = sends ? calloc(nch, sizeof *s) : NULL;
    tcp_rmsg *m = recvs ? calloc(nch, sizeof *m) : NULL;
    if ((sends && !s) || (recvs && !m)) {
        free(s);
        free(m);
        return local_failure(c, TP_ERR_NO_MEMORY, "tcp %s: rank %d: out of memory", name, c->rank);
    }
    ring g = {
        .c = c, .op = TCP_OP_BROADCAST, .dt = dt, .rop = TP_SUM, .call = call_digest(&count, 1)};
    for (size_t k = 0; k < nch; k++) {
        size_t e0 = k * chunk, ne = count ? count - e0 : 0;
        if (ne > chunk)
            ne = chunk;
        tcp_hdr h = make_hdr(&g, k, ne * es, root);
        void *p = ne ? (char *)buf + e0 * es : NULL;
        if (s)
            s[k] = (tcp_smsg){.hdr = h, .data = p, .need = recvs ? k + 1 : 0};
        if (m)
            m[k] = (tcp_rmsg){.hdr = h, .dst = p, .reduce = 0};
    }
    tcp_xfer x = {.comm = c,
                  .opname = name,
                  .to = sends ? c->members[mod(c->rank + 1, n)] : -1,
                  .from = recvs ? c->members[mod(c->rank - 1, n)] : -1,
                  .s = s,
                  .ns = sends ? nch : 0,
                  .r = m,
                  .nr = recvs ? nch : 0,
                  .dt = dt,
                  .rop = TP_SUM};
    st = tcp_xfer_run(&x);
    c->seq++;
    free(s);
    free(m);
    return st;
}

tp_status tcp_barrier(void *comm)
{
    tcp_comm *c = comm;
    tp_status st = check_comm(c, "barrier");
    if (st != TP_OK)
        return st;
    if (c->size > 1) {
        size_t *z = calloc(2 * (size_t)c->size, sizeof(size_t));
        if (!z)
            return local_failure(c, TP_ERR_NO_MEMORY, "tcp barrier: rank %d: out of memory",
                                 c->rank);
        ring g = {.c = c,
                  .opname = "barrier",
                  .op = TCP_OP_BARRIER,
                  .dt = TP_F32,
                  .rop = TP_SUM,
                  .esize = 4,
                  .chunk = 1,
                  .n = c->size,
                  .r = c->rank,
                  .cnt = z,
                  .off = z + c->size,
                  .work = NULL,
                  .first = NULL};
        st = ring_run(&g, 0, c->size - 1);
        free(z);
    }
    c->seq++;
    return st;
}

/* splitmix64 finaliser: new communicator ids from (parent, split number, color). */
static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

tp_status tcp_split(void *comm, int color, int key, void **newcomm, int *rank, int *size)
{
    tcp_comm *c = comm;
    tp_status st = check_comm(c, "split");
    if (st != TP_OK)
        return st;
    if (!newcomm || !rank || !size)
        return c->eng->host->set_error(TP_ERR_INVALID_ARG, "tcp split: NULL output pointer");
    *newcomm = NULL;
    *rank = -1;
    *size = 0;
    int n = c->size;
    int32_t *ck = malloc(sizeof(int32_t) * 2 * (size_t)n);
    size_t *counts = malloc(sizeof(size_t) * (size_t)n);
    if (!ck || !counts) {
        free(ck);
        free(counts);
        return local_failure(c, TP_ERR_NO_MEMORY, "tcp split: rank %d: out of memory", c->rank);
    }
    for (int i = 0; i < n; i++)
        counts[i] = 2;
    int32_t mine[2] = {color < 0 ? -1 : color, key};
    uint64_t split_no = c->splits++;
    st = gather_impl(c, "split", TCP_OP_SPLIT, mine, ck, counts, TP_I32);
    free(counts);
    if (st != TP_OK || color < 0) {
        free(ck);
        return st;
    }
    /* Members: same color, ordered by (key, old rank); stable insertion sort. */
    int *order = malloc(sizeof(int) * (size_t)n);
    tcp_comm *nc = calloc(1, sizeof *nc);
    if (!order || !nc) {
        free(order);
        free(nc);
        free(ck);
        return local_failure(c, TP_ERR_NO_MEMORY, "tcp split: rank %d: out of memory", c->rank);
    }
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (ck[2 * i] != color)
            continue;
        int j = m++;
        while (j > 0 && ck[2 * order[j - 1] + 1] > ck[2 * i + 1]) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
    nc->members = malloc(sizeof(int) * (size_t)m);
    if (!nc->members) {
        free(order);
        free(nc);
        free(ck);
        return local_failure(c, TP_ERR_NO_MEMORY, "tcp split: rank %d: out of memory", c->rank);
    }
    nc->eng = c->eng;
    nc->size = m;
    for (int j = 0; j < m; j++) {
        nc->members[j] = c->members[order[j]];
        if (order[j] == c->rank)
            nc->rank = j;
    }
    nc->id = mix(c->id ^ mix(split_no ^ mix((uint64_t)(uint32_t)color)));
    if (nc->id == 0)
        nc->id = 1;
    free(order);
    free(ck);
    *newcomm = nc;
    *rank = nc->rank;
    *size = nc->size;
    c->eng->host->debug("comm", "tcp: split: rank %d of %d in communicator %#llx", nc->rank,
                        nc->size, (unsigned long long)nc->id);
    return TP_OK;
}
