/* SPDX-License-Identifier: MIT */
/*
 * shm-nb.c — the nonblocking collectives (plugin ABI 1.4: iall_reduce,
 * iall_gather, ireduce_scatter, req_test, req_wait, req_free; 1.5:
 * req_done_at), without a thread: loopback's design
 * (backends/loopback/nb.c) between processes.
 *
 * A process cannot read its peers' buffers, so starting an op copies the
 * rank's whole input into the communicator's arena (the segment's last
 * TP_SHM_NB_BYTES, reserved at the first start: sh_seg_reserve),
 * publishes its arguments in its slot and sets its bit
 * in the op's record, and returns. Once every rank has started it, the
 * reduction is cut into SH_NB_SHARES shares per rank that any rank in
 * req_test or req_wait claims (an atomic counter) and does over all
 * ranks' staged inputs, in rank order, into rank 0's staged input; each
 * rank copies its result out once every share is done, and lets go of the
 * op. all_gather has no shares: the staged inputs are the result. So after
 * starting, no rank waits for another to take part: requests complete in
 * any order of waits, across communicators, and each output element is
 * still reduced from the same inputs in the same order by the same kernel
 * as on the blocking path, so results are bitwise equal to it (and to
 * loopback's).
 *
 * A request larger than the arena is cut into pieces of at most half of
 * it (a cache line per rank at least), each an op of its own: the first is
 * staged when the request starts, the others as soon as there is room,
 * whenever the rank is inside the backend. Ops are staged in op order, and
 * where the data goes is computed by every rank alike from their sizes:
 * the next op follows the last one, or starts the arena again if it does
 * not fit before its end. Op k uses record (k-1) % SH_NB_RECS. Staging op
 * k waits until its record and its arena bytes are free: every rank let
 * go of the ops that held them. While a rank waits there — and in every
 * other wait of this backend (barrier, one-shot, req_wait) — it stages,
 * reduces and copies out whatever of its own requests needs nothing more
 * from its peers (sh_nb_progress_all), so a rank blocked anywhere in the
 * backend still does what its peers wait for; one computing outside it
 * holds them up only until it is back, as a blocking program would.
 *
 * Nothing moves while no rank is inside the backend, as on loopback: no
 * thread competes with the ranks' GEMMs for a CPU, and the core's
 * counters' in-flight time is an upper bound (see tp.h); it ends when the
 * last piece's result was complete, maybe by a peer (req_done_at).
 */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <tp/tp-plugin-util.h>

#include "shm.h"

#define SH_NB_SHARES 4 /* reduction shares per rank: a waiting rank takes over a busy one's */

/* One rank's nonblocking request: pieces [0, npieces) of the op's vector
 * (count elements, or the total of counts), piece j being op seq0 + j. */
typedef struct sh_req {
    struct sh_req *next; /* the thread's list of requests not yet done, in start order */
    sh_comm *c;
    int kind, dt, op;
    const unsigned char *send;
    unsigned char *recv;
    size_t es, n; /* element size; elements of the vector */
    size_t lo;    /* this rank's block of it: its recv (reduce_scatter), its send (all_gather) */
    size_t hi;
    size_t m; /* elements per piece */
    uint64_t seq0;
    size_t npieces, staged, finished;
    bool agreed; /* piece `finished` passed the argument check */
    sh_pub pub;  /* this rank's arguments, as published for every piece */
    bool done, listed;
    tp_status status; /* once done */
    double t_look;    /* first test or wait: the timeout runs from here */
    uint64_t t_ns;    /* when its last piece's result was complete (sc_now, ns) */
} sh_req;

/* The calling thread's requests not yet done, on any communicator, in
 * start order: the core calls a rank's slots from the rank's thread only. */
static _Thread_local sh_req *sh_pending;

static void sh_pending_append(sh_req *q)
{
    sh_req **p = &sh_pending;
    while (*p)
        p = &(*p)->next;
    *p = q;
    q->next = NULL;
    q->listed = true;
}

static sh_nbrec *sh_rec(const sh_comm *c, uint64_t k)
{
    return &c->h->nb[(k - 1) % SH_NB_RECS];
}

static size_t sh_lines(size_t bytes)
{
    return (bytes + SC_LINE - 1) / SC_LINE * SC_LINE;
}

/* Every rank let go of op k (its record moved on). */
static bool sh_released(const sh_comm *c, uint64_t k)
{
    return atomic_load_explicit(&sh_rec(c, k)->gen, memory_order_acquire) > (k - 1) / SH_NB_RECS;
}

/* Piece j of q: elements [e0, e1), `stride` bytes between the ranks'
 * staged inputs (0 for all_gather, staged as recv is laid out), `bytes`
 * of arena. */
typedef struct sh_piece {
    uint64_t k;
    size_t e0, e1, stride, bytes, off;
} sh_piece;

static sh_piece sh_piece_of(const sh_req *q, size_t j)
{
    sh_piece p = {.k = q->seq0 + j, .e0 = j * q->m};
    p.e1 = q->n - p.e0 < q->m ? q->n : p.e0 + q->m;
    size_t len = sh_lines((p.e1 - p.e0) * q->es);
    p.stride = q->kind == SC_ALL_GATHER ? 0 : len;
    p.bytes = q->kind == SC_ALL_GATHER ? len : (size_t)q->c->size * len;
    p.off = q->c->nb_span[(p.k - 1) % SH_NB_RECS].off; /* valid once staged */
    return p;
}

static void sh_finish(sh_req *q, tp_status st)
{
    q->status = st;
    q->done = true;
    for (sh_req **p = &sh_pending; q->listed && *p; p = &(*p)->next)
        if (*p == q) {
            *p = q->next;
            q->listed = false;
            break;
        }
}

static void sh_what(const sh_req *q, char *out, size_t len)
{
    int w = snprintf(out, len, "%s (nonblocking) #%llu", sc_kind_name(q->kind),
                     (unsigned long long)(q->seq0 + q->finished));
    if (q->npieces > 1 && w > 0 && (size_t)w < len)
        snprintf(out + w, len - (size_t)w, " (piece %zu of %zu)", q->finished + 1, q->npieces);
}

/* Spin, then yield, then sleep briefly. */
static void sh_nb_pause(const sh_comm *c, unsigned *spins)
{
    unsigned n = (*spins)++;
    if (n < c->eng->spin_limit)
        sc_cpu_relax();
    else if (n < c->eng->spin_limit + 64)
        sched_yield();
    else
        nanosleep(&(struct timespec){0, 20000}, NULL);
}

/* The op that some rank still holds in [off, off + bytes) of the arena or
 * in op k's record; 0 if there is room for op k. */
static uint64_t sh_busy(const sh_comm *c, uint64_t k, size_t off, size_t bytes)
{
    if (k > SH_NB_RECS && !sh_released(c, k - SH_NB_RECS))
        return k - SH_NB_RECS;
    for (uint64_t j = k - 1; j >= 1 && j + SH_NB_RECS > k; j--) {
        size_t o = c->nb_span[(j - 1) % SH_NB_RECS].off;
        size_t b = c->nb_span[(j - 1) % SH_NB_RECS].bytes;
        if (b && off < o + b && o < off + bytes && !sh_released(c, j))
            return j;
    }
    return 0;
}

/* Stage q's next pieces while they are the communicator's next ops and
 * have room; c->nb_busy says which op some rank still holds, if that
 * stopped it. */
static void sh_try_stage(sh_req *q)
{
    sh_comm *c = q->c;
    while (q->staged < q->npieces && c->nb_staged + 1 == q->seq0 + q->staged) {
        sh_piece p = sh_piece_of(q, q->staged);
        size_t off = c->nb_head + p.bytes <= c->nb_arena ? c->nb_head : 0;
        if ((c->nb_busy = sh_busy(c, p.k, off, p.bytes)) != 0)
            return;
        c->nb_span[(p.k - 1) % SH_NB_RECS].off = off;
        c->nb_span[(p.k - 1) % SH_NB_RECS].bytes = p.bytes;
        c->nb_head = off + p.bytes;
        c->nb_staged = p.k;
        unsigned char *dst = sh_arena(c) + off;
        if (q->kind == SC_ALL_GATHER) { /* the part of its block in this piece */
            size_t x0 = p.e0 > q->lo ? p.e0 : q->lo, x1 = p.e1 < q->hi ? p.e1 : q->hi;
            if (x0 < x1)
                memcpy(dst + (x0 - p.e0) * q->es, q->send + (x0 - q->lo) * q->es,
                       (x1 - x0) * q->es);
        } else {
            memcpy(dst + (size_t)c->rank * p.stride, q->send + p.e0 * q->es, (p.e1 - p.e0) * q->es);
        }
        c->h->slots[c->rank].nbpub[(p.k - 1) % SH_NB_RECS] = q->pub;
        if (q->kind == SC_ALL_GATHER) /* the last to stage completes it */
            sc_mark_done_at(&sh_rec(c, p.k)->t_ns);
        atomic_fetch_or_explicit(&sh_rec(c, p.k)->mask, 1ull << c->rank, memory_order_seq_cst);
        q->staged++;
    }
}

/* Every rank published the same arguments for op k as this one (whose own
 * are valid). */
static bool sh_same_args(const sh_req *q, uint64_t k)
{
    const sh_comm *c = q->c;
    for (int r = 0; r < c->size; r++) {
        const sh_pub *p = &c->h->slots[r].nbpub[(k - 1) % SH_NB_RECS];
        if (p->bad || p->kind != q->pub.kind || p->count != q->pub.count ||
            p->counts_hash != q->pub.counts_hash || p->dt != q->pub.dt || p->op != q->pub.op)
            return false;
    }
    return true;
}

static void sh_nb_share(const sh_req *q, const sh_piece *p, unsigned s, unsigned nshares)
{
    const sh_comm *c = q->c;
    size_t lo, hi;
    sc_share(p->e1 - p->e0, q->es, (int)nshares, (int)s, &lo, &hi);
    if (lo >= hi)
        return;
    unsigned char *base = sh_arena(c) + p->off;
    const void *src[SH_MAX_RANKS];
    for (int r = 0; r < c->size; r++)
        src[r] = base + (size_t)r * p->stride + lo * q->es;
    void *dst[1] = {base + lo * q->es}; /* in place: only this share reads these elements */
    sc_reduce(q->dt, q->op, src, c->size, dst, 1, hi - lo, false);
}

/* This rank's part of piece p's result, from the arena to recv. */
static void sh_copy_out(const sh_req *q, const sh_piece *p)
{
    const unsigned char *res = sh_arena(q->c) + p->off;
    size_t x0 = p->e0, x1 = p->e1, at = p->e0; /* recv element of x0 */
    if (q->kind == SC_REDUCE_SCATTER) {        /* only its block */
        x0 = x0 > q->lo ? x0 : q->lo;
        x1 = x1 < q->hi ? x1 : q->hi;
        at = x0 - q->lo;
    }
    if (x0 < x1)
        memcpy(q->recv + at * q->es, res + (x0 - p->e0) * q->es, (x1 - x0) * q->es);
}

/* This rank is done with op k; the last rank to let go readies its
 * record for op k + SH_NB_RECS. `released` is cleared last, after `gen`,
 * with release: a waiter that reads it cleared also sees op k let go of
 * (sh_nb_stuck); and no rank sets a bit for op k + SH_NB_RECS before the
 * clearing rank started that op, which it does after clearing. */
static void sh_let_go(sh_comm *c, uint64_t k)
{
    sh_nbrec *rec = sh_rec(c, k);
    uint64_t bit = 1ull << c->rank;
    if ((atomic_fetch_or_explicit(&rec->released, bit, memory_order_acq_rel) | bit) !=
        sc_all_ranks(c->size))
        return;
    atomic_store_explicit(&rec->mask, 0, memory_order_relaxed);
    atomic_store_explicit(&rec->claimed, 0, memory_order_relaxed);
    atomic_store_explicit(&rec->done, 0, memory_order_relaxed);
    atomic_store_explicit(&rec->t_ns, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&rec->gen, 1, memory_order_release);
    atomic_store_explicit(&rec->released, 0, memory_order_release);
}

/* Move q on as far as it goes without waiting for a peer; true once it is
 * done. `loud`: a failure or disagreement is reported (the caller is q's
 * own test or wait); else q is left for its own test or wait. */
static bool sh_nb_advance(sh_req *q, bool loud)
{
    if (q->done)
        return true;
    sh_comm *c = q->c;
    if (atomic_load_explicit(&c->h->failed, memory_order_acquire)) {
        if (loud)
            sh_finish(q, sh_report_failed(c, q->kind, q->seq0 + q->finished, true, "aborted"));
        return loud;
    }
    sh_try_stage(q);
    while (q->finished < q->staged) {
        sh_piece p = sh_piece_of(q, q->finished);
        sh_nbrec *rec = sh_rec(c, p.k);
        if (!q->agreed) {
            if (atomic_load_explicit(&rec->mask, memory_order_acquire) != sc_all_ranks(c->size))
                return false;
            /* A disagreement fails the communicator whoever sees it
             * first (maybe inside another request's wait): no rank may
             * go on to a later op, whose arena place the disagreeing
             * sizes made differ between the ranks. */
            if (!sh_same_args(q, p.k)) {
                const sh_pub *pub[SH_MAX_RANKS];
                for (int r = 0; r < c->size; r++)
                    pub[r] = &c->h->slots[r].nbpub[(p.k - 1) % SH_NB_RECS];
                tp_status st = sh_agree(c, q->kind, p.k, pub, " (nonblocking)");
                if (st != TP_OK) {
                    if (loud)
                        sh_finish(q, st);
                    return loud;
                }
            }
            q->agreed = true;
        }
        unsigned nshares = q->kind == SC_ALL_GATHER ? 0 : SH_NB_SHARES * (unsigned)c->size;
        unsigned mine = 0;
        while (atomic_load_explicit(&rec->claimed, memory_order_relaxed) < nshares) {
            unsigned s = atomic_fetch_add_explicit(&rec->claimed, 1, memory_order_relaxed);
            if (s >= nshares)
                break;
            sh_nb_share(q, &p, s, nshares);
            mine++;
        }
        if (mine) {
            sc_mark_done_at(&rec->t_ns);
            atomic_fetch_add_explicit(&rec->done, mine, memory_order_acq_rel);
        }
        if (atomic_load_explicit(&rec->done, memory_order_acquire) < nshares)
            return false; /* peers are doing the last shares */
        sh_copy_out(q, &p);
        uint64_t t = atomic_load_explicit(&rec->t_ns, memory_order_relaxed);
        q->t_ns = t > q->t_ns ? t : q->t_ns;
        sh_let_go(c, p.k);
        q->finished++;
        q->agreed = false;
        sh_try_stage(q); /* letting go may have made room */
    }
    if (q->finished < q->npieces)
        return false;
    sh_finish(q, TP_OK);
    return true;
}

void sh_nb_progress_all(void)
{
    for (sh_req *q = sh_pending, *next; q; q = next) {
        next = q->next;
        sh_nb_advance(q, false);
    }
}

/* The ranks that started op *arg. */
static uint64_t sh_started(const sh_comm *c, const void *arg)
{
    return atomic_load_explicit(&sh_rec(c, *(const uint64_t *)arg)->mask, memory_order_acquire);
}

/* The ranks that let go of op *arg; all once every one did (the bits are
 * then cleared, or a later op's: see sh_let_go). */
static uint64_t sh_let_go_of(const sh_comm *c, const void *arg)
{
    uint64_t k = *(const uint64_t *)arg;
    uint64_t have = atomic_load_explicit(&sh_rec(c, k)->released, memory_order_acquire);
    return sh_released(c, k) ? ~0ull : have;
}

/* q's next step waits for peers after `waited` seconds of its wait: one
 * that is gone or silent gives its error (q is then done). */
static tp_status sh_nb_stuck(sh_req *q, double waited)
{
    sh_comm *c = q->c;
    char what[112], doing[96];
    sh_what(q, what, sizeof what);
    tp_status st;
    if (q->finished == q->staged) { /* its next piece waits for room */
        uint64_t busy = c->nb_busy;
        if (!busy)
            return TP_OK; /* an earlier request's pieces go first */
        snprintf(doing, sizeof doing,
                 "still hold%s the arena space or record of nonblocking op #%llu",
                 c->size > 2 ? "" : "s", (unsigned long long)busy);
        st = sh_check_missing(c, sh_let_go_of, &busy, waited, what, doing);
    } else if (!q->agreed) {
        uint64_t k = q->seq0 + q->finished;
        st = sh_check_missing(c, sh_started, &k, waited, what, "never started it");
    } else { /* every rank started it; shares claimed by a rank that died stay undone */
        st = waited <= c->eng->timeout_s
                 ? TP_OK
                 : sh_poison(c, TP_ERR_TIMEOUT,
                             "timeout after %.1f s in %s on a %d-rank communicator: its "
                             "reduction shares were never finished (a rank died while reducing?)",
                             waited, what, c->size);
    }
    if (st != TP_OK)
        sh_finish(q, st);
    return st;
}

/* Until q is done (`first`: until its first piece is staged). */
static tp_status sh_nb_wait(sh_req *q, bool first)
{
    unsigned spins = 0;
    double t0 = sc_now();
    if (!first && q->t_look == 0.0)
        q->t_look = t0;
    for (;;) {
        sh_nb_progress_all(); /* q among them, after the requests before it */
        if (first ? q->staged > 0 || q->done : sh_nb_advance(q, true))
            break;
        if (first && atomic_load_explicit(&q->c->h->failed, memory_order_acquire)) {
            sh_finish(q, sh_report_failed(q->c, q->kind, q->seq0, true, "aborted"));
            break;
        }
        if (spins >= q->c->eng->spin_limit &&
            sh_nb_stuck(q, sc_now() - (first ? t0 : q->t_look)) != TP_OK)
            break;
        sh_nb_pause(q->c, &spins);
    }
    return q->done ? q->status : TP_OK;
}

static tp_status sh_nb_start(sh_comm *c, sc_os_op *o, void **req)
{
    char msg[200];
    o->rank = c->rank;
    o->size = c->size;
    tp_status bad = sc_check_call(o, msg, sizeof msg);
    if (atomic_load_explicit(&c->h->failed, memory_order_acquire))
        return sh_report_failed(c, o->kind, c->nseq + 1, true,
                                "refused because this communicator failed earlier");
    /* As on the blocking path, a bad argument fails the communicator: the
     * peers' requests end with this message instead of a timeout. */
    if (bad)
        return sh_poison(c, bad, "%s (nonblocking) #%llu: rank %d: %s", sc_kind_name(o->kind),
                         (unsigned long long)c->nseq + 1, c->rank, msg);
    tp_status st = sh_seg_reserve(c);
    if (st != TP_OK)
        return st;
    sh_req *q = calloc(1, sizeof *q);
    if (!q)
        return sh_poison(c, TP_ERR_NO_MEMORY,
                         "%s (nonblocking) #%llu: rank %d: out of memory for its request",
                         sc_kind_name(o->kind), (unsigned long long)c->nseq + 1, c->rank);
    size_t es = tp_util_dtype_size(o->dt), before = 0;
    for (int r = 0; o->counts && r < c->rank; r++)
        before += o->counts[r];
    *q = (sh_req){.c = c,
                  .kind = o->kind,
                  .dt = o->dt,
                  .op = o->op,
                  .send = o->send,
                  .recv = o->recv,
                  .es = es,
                  .n = o->count,
                  .lo = before,
                  .hi = before + (o->counts ? o->counts[c->rank] : 0),
                  .seq0 = c->nseq + 1,
                  .npieces = 1,
                  .pub = {.count = o->count,
                          .counts_hash = o->hash,
                          .kind = o->kind,
                          .dt = o->dt,
                          .op = o->op,
                          .root = o->root}};
    *req = q;
    if (c->size == 1) {
        size_t bytes = (o->counts ? o->counts[0] : o->count) * es;
        if (o->send != o->recv)
            memmove(o->recv, o->send, bytes);
        sh_finish(q, TP_OK);
        return TP_OK;
    }
    /* one piece if the whole op fits the arena, else pieces of half of it */
    int parts = o->kind == SC_ALL_GATHER ? 1 : c->size;
    q->m = o->count ? o->count : 1;
    if (sh_lines(o->count * es) > c->nb_arena / (size_t)parts) {
        q->m = c->nb_arena / 2 / (size_t)parts / SC_LINE * SC_LINE / es;
        q->npieces = (o->count + q->m - 1) / q->m;
    }
    c->nseq += q->npieces;
    sh_pending_append(q);
    st = sh_nb_wait(q, true);
    if (st != TP_OK) {
        sh_finish(q, st);
        free(q);
        *req = NULL;
    }
    return st;
}

tp_status sh_iall_reduce(void *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                         tp_redop op, void **req)
{
    sc_os_op o = sc_call_all_reduce(send, recv, count, (int)dt, (int)op);
    return sh_nb_start(comm, &o, req);
}

tp_status sh_iall_gather(void *comm, const void *send, void *recv, const size_t *counts,
                         tp_dtype dt, void **req)
{
    sc_os_op o = sc_call_all_gather(send, recv, counts, (int)dt);
    return sh_nb_start(comm, &o, req);
}

tp_status sh_ireduce_scatter(void *comm, const void *send, void *recv, const size_t *counts,
                             tp_dtype dt, tp_redop op, void **req)
{
    sc_os_op o = sc_call_reduce_scatter(send, recv, counts, (int)dt, (int)op);
    return sh_nb_start(comm, &o, req);
}

tp_status sh_req_test(void *comm, void *req, int *done)
{
    (void)comm;
    sh_req *q = req;
    *done = 0;
    sh_nb_progress_all(); /* the requests before q first: pieces are staged in op order */
    if (!sh_nb_advance(q, true)) {
        if (q->t_look == 0.0)
            q->t_look = sc_now();
        if (sh_nb_stuck(q, sc_now() - q->t_look) == TP_OK)
            return TP_OK;
    }
    *done = 1;
    return q->status;
}

tp_status sh_req_wait(void *comm, void *req)
{
    (void)comm;
    return sh_nb_wait(req, false);
}

/* When the last piece's result was ready in the arena (this rank's copy
 * out, inside its test or wait, comes after). */
double sh_req_done_at(void *comm, void *req)
{
    (void)comm;
    return (double)((const sh_req *)req)->t_ns * 1e-9;
}

void sh_req_free(void *comm, void *req)
{
    (void)comm;
    sh_req *q = req;
    if (!q)
        return;
    sh_finish(q, q->status); /* unlists one never finished (not expected) */
    free(q);
}

void sh_nb_forget(const sh_comm *c)
{
    for (sh_req *q = sh_pending, *next; q; q = next) {
        next = q->next;
        if (q->c == c)
            sh_finish(q, TP_ERR_PEER);
    }
}
