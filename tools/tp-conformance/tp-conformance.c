/* SPDX-License-Identifier: MIT */
/*
 * tp-conformance — the communicator conformance suite, run through the
 * public tp.h API against whatever backend TP_BACKEND names.
 *
 * Every rank runs the same sequence of cases (op x dtype x count x
 * reduction x root x in-place/out-of-place, uneven counts, sub-
 * communicators), checks its own output element by element against a
 * serial reference, and records pass / fail / not provided per case. The
 * per-case verdicts are combined over all ranks with one all_reduce (max),
 * so a case passes only if it passed on every rank; rank 0 prints the
 * table and the summary line. Works the same on threads (loopback) and on
 * processes (mpi, tcp).
 *
 * Why exact comparison is valid: every input element is a small integer
 * (|x| <= 2 for bf16, 6 for f32/f16, 1000 for i32), a pure function of
 * (rank, index, case). Every partial sum a backend can form, in any order
 * and any grouping (ring, tree, chunked), is then an integer far below the
 * largest integer its format represents exactly (bf16 256, f16 2048, f32
 * 2^24 for 64 ranks), and an f32 accumulation of 16-bit inputs is exact
 * too. So every addition is exact, the result does not depend on
 * summation order, and max/min only select. Any difference is a bug.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <glib.h>

#include <tp/tp.h>
#include <tp/tp-plugin-util.h>

#include "tp-options.h"

#define GUARD     16   /* elements after each output that must stay untouched */
#define MAX_PRINT 10   /* failure details printed per rank */
#define SENTINEL  0x5a /* byte pattern of untouched output memory */

enum {
    R_PASS = 0,
    R_SKIP = 1,
    R_FAIL = 2
}; /* combined with max over ranks */

enum row {
    ROW_ALL_REDUCE,
    ROW_ALL_GATHER,
    ROW_ALL_GATHERV,
    ROW_REDUCE_SCATTER,
    ROW_REDUCE_SCATTERV,
    ROW_BROADCAST,
    ROW_BARRIER,
    ROW_SPLIT,
    ROW_SUB,
    ROW_NB,
    ROW_NB_MORE,
    ROW_SYM,
    ROW_COUNT
};

static const char *const row_names[ROW_COUNT] = {
    "all_reduce",       "all_gather",  "all_gatherv",       "reduce_scatter",
    "reduce_scatterv",  "broadcast",   "barrier",           "split",
    "ops on sub-comms", "nonblocking", "nb split+args+cnt", "symmetric memory"};

/* Which op names --op accepts for each row. */
static const char *const row_ops[ROW_COUNT] = {
    "all_reduce", "all_gather", "all_gather", "reduce_scatter", "reduce_scatter", "broadcast",
    "barrier",    "split",      "split",      "nonblocking",    "nonblocking",    "symmetric"};

#define COL_OTHER TP_DTYPE_COUNT_ /* column for cases without a dtype */
#define NCOLS     (TP_DTYPE_COUNT_ + 1)

typedef struct opts {
    bool large;
    bool verbose;
    int nb_error; /* --nb-error: -1 none, 0 peer-left, 1 peer-silent */
    const char *only_op;
} opts;

typedef struct rank_state {
    const opts *o;
    tp_comm *world;
    tp_device *dev;
    int wrank, wsize;
    int32_t *res; /* verdict per case */
    uint8_t *row, *col;
    size_t ncases, cap;
    int printed;
    bool oom;
    /* the symmetric-memory pass: buffers are cut from this allocation of
     * tp_comm_mem_alloc (arena_used is reset before each case) */
    unsigned char *arena;
    size_t arena_bytes, arena_used;
} rank_state;

/* ------------------------------------------------------------ values */

static const char *op_name(tp_redop op)
{
    static const char *const n[] = {"sum", "max", "min"};
    return (unsigned)op < TP_REDOP_COUNT_ ? n[op] : "?";
}

/* Input element i of `rank` in case `salt`: a small integer (see top). */
static int value(tp_dtype dt, int rank, size_t i, size_t salt)
{
    uint32_t h = (uint32_t)rank * 0x9e3779b1u ^ (uint32_t)i * 0x85ebca77u ^
                 (uint32_t)salt * 0xc2b2ae3du ^ (uint32_t)(i >> 32);
    h ^= h >> 15;
    h *= 0x2c1b3c6du;
    h ^= h >> 12;
    int range = dt == TP_BF16 ? 2 : dt == TP_I32 ? 1000 : 6;
    return (int)(h % (uint32_t)(2 * range + 1)) - range;
}

static int fold(tp_redop op, int acc, int v)
{
    return op == TP_SUM ? acc + v : op == TP_MAX ? (v > acc ? v : acc) : (v < acc ? v : acc);
}

/* Reduce over ranks 0..size-1 of element i. */
static int reference(tp_dtype dt, tp_redop op, int size, size_t i, size_t salt)
{
    int acc = value(dt, 0, i, salt);
    for (int r = 1; r < size; r++)
        acc = fold(op, acc, value(dt, r, i, salt));
    return acc;
}

/* Every value put here is a small integer its format holds exactly (see
 * top), so the SDK's round-to-nearest conversions are exact both ways. */
static void put(tp_dtype dt, void *buf, size_t i, int v)
{
    float f = (float)v;
    switch (dt) {
        case TP_F32: ((float *)buf)[i] = f; break;
        case TP_I32: ((int32_t *)buf)[i] = v; break;
        case TP_BF16: ((uint16_t *)buf)[i] = tp_util_f32_to_bf16(f); break;
        default: ((uint16_t *)buf)[i] = tp_util_f32_to_f16(f); break;
    }
}

static double get(tp_dtype dt, const void *buf, size_t i)
{
    switch (dt) {
        case TP_F32: return ((const float *)buf)[i];
        case TP_I32: return ((const int32_t *)buf)[i];
        case TP_BF16: return tp_util_bf16_to_f32(((const uint16_t *)buf)[i]);
        default: return tp_util_f16_to_f32(((const uint16_t *)buf)[i]);
    }
}

/* ----------------------------------------------------------- recording */

static void record(rank_state *s, int row, int col, int verdict)
{
    if (s->ncases == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1024;
        int32_t *r = realloc(s->res, cap * sizeof *r);
        uint8_t *a = realloc(s->row, cap), *b = realloc(s->col, cap);
        if (r)
            s->res = r;
        if (a)
            s->row = a;
        if (b)
            s->col = b;
        if (!r || !a || !b) {
            s->oom = true;
            return;
        }
        s->cap = cap;
    }
    s->res[s->ncases] = verdict;
    s->row[s->ncases] = (uint8_t)row;
    s->col[s->ncases] = (uint8_t)col;
    s->ncases++;
}

static void fail_msg(rank_state *s, const char *what, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail_msg(rank_state *s, const char *what, const char *fmt, ...)
{
    if (s->printed++ >= MAX_PRINT) {
        if (s->printed == MAX_PRINT + 1)
            fprintf(stderr, "tp-conformance: rank %d: further failures not shown\n", s->wrank);
        return;
    }
    char buf[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "tp-conformance: rank %d: FAIL %s: %s\n", s->wrank, what, buf);
}

/* Verdict for a collective's status; TP_OK continues to the data check. */
static int status_verdict(rank_state *s, const char *what, tp_status st)
{
    if (st == TP_OK)
        return R_PASS;
    if (st == TP_ERR_NOT_SUPPORTED) {
        if (s->o->verbose)
            fprintf(stderr, "tp-conformance: rank %d: not provided: %s: %s\n", s->wrank, what,
                    tp_last_error());
        return R_SKIP;
    }
    fail_msg(s, what, "returned %s: %s", tp_status_string(st), tp_last_error());
    return R_FAIL;
}

/* ------------------------------------------------------------ buffers */

typedef struct buf {
    void *host; /* staging copy */
    void *dev;  /* device memory */
    size_t bytes;
    bool in_arena; /* cut from rank_state.arena */
} buf;

/* b->dev from the symmetric arena: every rank cuts its buffers in the same
 * order, so they lie at offsets its peers can reach. */
static tp_status arena_cut(rank_state *s, buf *b, size_t bytes)
{
    size_t need = (bytes + 63) / 64 * 64;
    if (need > s->arena_bytes - s->arena_used)
        return tp_set_error(TP_ERR_NO_MEMORY, "the symmetric arena of %zu bytes is used up",
                            s->arena_bytes);
    b->dev = s->arena + s->arena_used;
    b->in_arena = true;
    s->arena_used += need;
    return TP_OK;
}

static bool buf_new(rank_state *s, buf *b, size_t bytes)
{
    b->bytes = bytes;
    b->host = malloc(bytes ? bytes : 1);
    b->dev = NULL;
    b->in_arena = false;
    if (!b->host ||
        (s->arena ? arena_cut(s, b, bytes) : tp_dev_alloc(s->dev, bytes, &b->dev)) != TP_OK) {
        fprintf(stderr, "tp-conformance: rank %d: cannot allocate %zu bytes: %s\n", s->wrank, bytes,
                b->host ? tp_last_error() : strerror(ENOMEM));
        free(b->host);
        b->host = NULL;
        return false;
    }
    memset(b->host, SENTINEL, bytes);
    return true;
}

static void buf_free(rank_state *s, buf *b)
{
    if (b->dev && !b->in_arena)
        tp_dev_free(s->dev, b->dev);
    free(b->host);
    b->host = b->dev = NULL;
}

static bool buf_up(rank_state *s, buf *b)
{
    return tp_dev_upload(s->dev, b->dev, b->host, b->bytes) == TP_OK;
}

static bool buf_down(rank_state *s, buf *b)
{
    return tp_dev_download(s->dev, b->host, b->dev, b->bytes) == TP_OK;
}

/* v[0..n) = its maximum over the world's ranks, through device memory;
 * false if that failed. */
static bool world_max(rank_state *s, int32_t *v, size_t n)
{
    buf b = {0};
    if (!buf_new(s, &b, n * sizeof *v))
        return false;
    memcpy(b.host, v, n * sizeof *v);
    bool ok = buf_up(s, &b) && tp_all_reduce(s->world, b.dev, b.dev, n, TP_I32, TP_MAX) == TP_OK &&
              buf_down(s, &b);
    if (ok)
        memcpy(v, b.host, n * sizeof *v);
    buf_free(s, &b);
    return ok;
}

/* Guard elements [from, from+GUARD) of b must still hold the sentinel. */
static bool guard_ok(rank_state *s, const char *what, const buf *b, size_t from_byte)
{
    const unsigned char *p = (const unsigned char *)b->host + from_byte;
    for (size_t i = 0; from_byte + i < b->bytes; i++)
        if (p[i] != SENTINEL) {
            fail_msg(s, what, "wrote past the end of its output (byte %zu after the last element)",
                     i);
            return false;
        }
    return true;
}

/* ------------------------------------------------------------- cases */

typedef struct ccase {
    tp_comm *comm;
    const char *where; /* "world" or the sub-communicator's name */
    tp_dtype dt;
    tp_redop op;
    size_t n;
    int pattern; /* counts of the v variants: 0 equal, 1 uneven, 2 with zeros */
    int root;
    bool inplace;
} ccase;

static void counts_of(const ccase *c, int size, size_t *counts, size_t *offs, size_t *total)
{
    *total = 0;
    for (int r = 0; r < size; r++) {
        size_t k = c->n;
        if (c->pattern == 1)
            k = c->n + (size_t)(r % 3);
        else if (c->pattern == 2)
            k = r % 2 ? 0 : c->n + (size_t)r;
        counts[r] = k;
        offs[r] = *total;
        *total += k;
    }
}

static void describe(const ccase *c, const char *op, char *out, size_t len)
{
    int w = snprintf(out, len, "%s %s", op, tp_dtype_name(c->dt));
    if (!strcmp(op, "all_reduce") || !strncmp(op, "reduce_scatter", 14))
        w += snprintf(out + w, len - (size_t)w, " %s", op_name(c->op));
    w += snprintf(out + w, len - (size_t)w, " count %zu", c->n);
    if (c->pattern)
        w += snprintf(out + w, len - (size_t)w, " (%s counts)",
                      c->pattern == 1 ? "uneven" : "some zero");
    if (!strcmp(op, "broadcast"))
        w += snprintf(out + w, len - (size_t)w, " root %d", c->root);
    else if (strncmp(op, "reduce_scatter", 14))
        w += snprintf(out + w, len - (size_t)w, " %s", c->inplace ? "in-place" : "out-of-place");
    snprintf(out + w, len - (size_t)w, " on %s (%d ranks)", c->where, tp_comm_size(c->comm));
}

typedef struct vbufs {
    buf a, b;
    size_t *counts, *offs, total;
} vbufs;

static void vbufs_free(rank_state *s, vbufs *v)
{
    buf_free(s, &v->a);
    buf_free(s, &v->b);
    free(v->counts);
    free(v->offs);
}

static int setup_failed(rank_state *s, const char *what)
{
    fail_msg(s, what, "could not set up the case (device memory): %s", tp_last_error());
    return R_FAIL;
}

static int mismatch(rank_state *s, const char *what, tp_dtype dt, const void *host, size_t pos,
                    double got, int expected)
{
    const unsigned char *p = (const unsigned char *)host + pos * tp_dtype_size(dt);
    bool untouched = true;
    for (size_t i = 0; i < tp_dtype_size(dt); i++)
        untouched &= p[i] == SENTINEL;
    fail_msg(s, what, "element %zu is %g, expected %d%s", pos, got, expected,
             untouched ? " (never written: still the fill pattern)" : "");
    return R_FAIL;
}

/* The collective's verdict, then its output back on the host: R_PASS when
 * both went well, so the caller can compare. */
static int call_and_fetch(rank_state *s, const char *what, tp_status st, buf *out)
{
    int verdict = status_verdict(s, what, st);
    if (verdict != R_PASS)
        return verdict;
    return buf_down(s, out) ? R_PASS : setup_failed(s, what);
}

/* Element pos of host against its exact reference value. */
static int expect(rank_state *s, const char *what, tp_dtype dt, const void *host, size_t pos,
                  int expected)
{
    double got = get(dt, host, pos);
    return got == (double)expected ? R_PASS : mismatch(s, what, dt, host, pos, got, expected);
}

static int case_all_reduce(rank_state *s, const ccase *c, size_t salt)
{
    char what[200];
    describe(c, "all_reduce", what, sizeof what);
    int rank = tp_comm_rank(c->comm), size = tp_comm_size(c->comm);
    size_t es = tp_dtype_size(c->dt), bytes = (c->n + GUARD) * es;
    vbufs v = {0};
    int verdict = R_FAIL;
    buf *out = c->inplace ? &v.a : &v.b;
    if (!buf_new(s, &v.a, bytes) || (!c->inplace && !buf_new(s, &v.b, bytes)))
        goto done;
    for (size_t i = 0; i < c->n; i++)
        put(c->dt, v.a.host, i, value(c->dt, rank, i, salt));
    if (!buf_up(s, &v.a) || (!c->inplace && !buf_up(s, &v.b))) {
        verdict = setup_failed(s, what);
        goto done;
    }
    verdict =
        call_and_fetch(s, what, tp_all_reduce(c->comm, v.a.dev, out->dev, c->n, c->dt, c->op), out);
    if (verdict != R_PASS)
        goto done;
    for (size_t i = 0; i < c->n; i++) {
        verdict = expect(s, what, c->dt, out->host, i, reference(c->dt, c->op, size, i, salt));
        if (verdict != R_PASS)
            goto done;
    }
    verdict = guard_ok(s, what, out, c->n * es) ? R_PASS : R_FAIL;
done:
    vbufs_free(s, &v);
    return verdict;
}

static bool counts_new(const ccase *c, vbufs *v)
{
    int size = tp_comm_size(c->comm);
    v->counts = calloc((size_t)size, sizeof *v->counts);
    v->offs = calloc((size_t)size, sizeof *v->offs);
    if (!v->counts || !v->offs)
        return false;
    counts_of(c, size, v->counts, v->offs, &v->total);
    return true;
}

static int case_all_gather(rank_state *s, const ccase *c, size_t salt)
{
    char what[200];
    describe(c, c->pattern ? "all_gatherv" : "all_gather", what, sizeof what);
    int rank = tp_comm_rank(c->comm), size = tp_comm_size(c->comm);
    size_t es = tp_dtype_size(c->dt);
    vbufs v = {0};
    int verdict = R_FAIL;
    if (!counts_new(c, &v))
        goto done;
    size_t mine = v.counts[rank], off = v.offs[rank];
    if (!buf_new(s, &v.a, (v.total + GUARD) * es) ||
        (!c->inplace && !buf_new(s, &v.b, (mine + GUARD) * es)))
        goto done;
    for (size_t i = 0; i < mine; i++)
        put(c->dt, c->inplace ? v.a.host : v.b.host, (c->inplace ? off : 0) + i,
            value(c->dt, rank, i, salt));
    if (!buf_up(s, &v.a) || (!c->inplace && !buf_up(s, &v.b))) {
        verdict = setup_failed(s, what);
        goto done;
    }
    const void *send = c->inplace ? (const char *)v.a.dev + off * es : v.b.dev;
    tp_status st = c->pattern ? tp_all_gatherv(c->comm, send, v.a.dev, v.counts, c->dt)
                              : tp_all_gather(c->comm, send, v.a.dev, c->n, c->dt);
    verdict = call_and_fetch(s, what, st, &v.a);
    if (verdict != R_PASS)
        goto done;
    for (int r = 0; r < size; r++)
        for (size_t i = 0; i < v.counts[r]; i++) {
            verdict = expect(s, what, c->dt, v.a.host, v.offs[r] + i, value(c->dt, r, i, salt));
            if (verdict != R_PASS)
                goto done;
        }
    verdict = guard_ok(s, what, &v.a, v.total * es) ? R_PASS : R_FAIL;
done:
    vbufs_free(s, &v);
    return verdict;
}

static int case_reduce_scatter(rank_state *s, const ccase *c, size_t salt)
{
    char what[200];
    describe(c, c->pattern ? "reduce_scatterv" : "reduce_scatter", what, sizeof what);
    int rank = tp_comm_rank(c->comm), size = tp_comm_size(c->comm);
    size_t es = tp_dtype_size(c->dt);
    vbufs v = {0};
    int verdict = R_FAIL;
    if (!counts_new(c, &v))
        goto done;
    size_t mine = v.counts[rank], off = v.offs[rank];
    if (!buf_new(s, &v.a, (v.total + GUARD) * es) || !buf_new(s, &v.b, (mine + GUARD) * es))
        goto done;
    for (size_t j = 0; j < v.total; j++)
        put(c->dt, v.a.host, j, value(c->dt, rank, j, salt));
    if (!buf_up(s, &v.a) || !buf_up(s, &v.b)) {
        verdict = setup_failed(s, what);
        goto done;
    }
    tp_status st = c->pattern
                       ? tp_reduce_scatterv(c->comm, v.a.dev, v.b.dev, v.counts, c->dt, c->op)
                       : tp_reduce_scatter(c->comm, v.a.dev, v.b.dev, c->n, c->dt, c->op);
    verdict = call_and_fetch(s, what, st, &v.b);
    if (verdict != R_PASS)
        goto done;
    for (size_t i = 0; i < mine; i++) {
        verdict = expect(s, what, c->dt, v.b.host, i, reference(c->dt, c->op, size, off + i, salt));
        if (verdict != R_PASS)
            goto done;
    }
    verdict = guard_ok(s, what, &v.b, mine * es) ? R_PASS : R_FAIL;
done:
    vbufs_free(s, &v);
    return verdict;
}

static int case_broadcast(rank_state *s, const ccase *c, size_t salt)
{
    char what[200];
    describe(c, "broadcast", what, sizeof what);
    int rank = tp_comm_rank(c->comm);
    size_t es = tp_dtype_size(c->dt);
    vbufs v = {0};
    int verdict = R_FAIL;
    if (!buf_new(s, &v.a, (c->n + GUARD) * es))
        goto done;
    for (size_t i = 0; i < c->n; i++)
        put(c->dt, v.a.host, i, value(c->dt, rank, i, salt));
    if (!buf_up(s, &v.a)) {
        verdict = setup_failed(s, what);
        goto done;
    }
    verdict = call_and_fetch(s, what, tp_broadcast(c->comm, v.a.dev, c->n, c->dt, c->root), &v.a);
    if (verdict != R_PASS)
        goto done;
    for (size_t i = 0; i < c->n; i++) {
        verdict = expect(s, what, c->dt, v.a.host, i, value(c->dt, c->root, i, salt));
        if (verdict != R_PASS)
            goto done;
    }
    verdict = guard_ok(s, what, &v.a, c->n * es) ? R_PASS : R_FAIL;
done:
    vbufs_free(s, &v);
    return verdict;
}

/* ------------------------------------------------------------- suites */

static bool wanted(const rank_state *s, int row)
{
    return !s->o->only_op || !strcmp(s->o->only_op, row_ops[row]);
}

typedef int (*case_fn)(rank_state *s, const ccase *c, size_t salt);

/* Run one case (or, with comm NULL, record what a non-member would). */
static void run_case(rank_state *s, int row, case_fn fn, const ccase *c, int none_verdict)
{
    size_t salt = s->ncases;
    s->arena_used = 0;
    int v = c->comm ? fn(s, c, salt) : none_verdict;
    record(s, row, c->dt, v);
}

/* One op_suite pass: where its cases run and how many of them. */
typedef struct suite {
    rank_state *s;
    bool sub;         /* on a sub-communicator: fewer cases, all recorded as ROW_SUB */
    bool sym;         /* on symmetric memory: f32 only, all recorded as ROW_SYM */
    bool big;         /* the --large count: f32 and one case per op only */
    int size;         /* ranks of the communicator (1 where this rank is not a member) */
    int none_verdict; /* what a non-member records */
} suite;

static void suite_case(const suite *su, int row, case_fn fn, const ccase *c)
{
    run_case(su->s, su->sub ? ROW_SUB : su->sym ? ROW_SYM : row, fn, c, su->none_verdict);
}

/* The counts a pass runs: up to 1000 on sub-communicators, and one more
 * above 16 MiB with --large on the world. */
static size_t suite_counts(const rank_state *s, bool sub, bool sym, size_t *counts)
{
    static const size_t base[] = {0, 1, 13, 17, 1000, 262147};
    size_t ncounts = 0;
    for (size_t i = 0; i < sizeof base / sizeof base[0]; i++)
        if (!sub || base[i] <= 1000)
            counts[ncounts++] = base[i];
    if (s->o->large && !sub && !sym)
        counts[ncounts++] = 4194309; /* > 16 MiB of f32 */
    return ncounts;
}

static bool suite_dtype(const suite *su, tp_dtype dt)
{
    if ((su->big || su->sym) && dt != TP_F32)
        return false;
    return !su->sub || dt == TP_F32 || dt == TP_I32;
}

static void suite_all_reduce(const suite *su, ccase *c)
{
    for (int op = 0; op < TP_REDOP_COUNT_; op++)
        for (int ip = 0; ip < 2; ip++) {
            if (su->big && op != TP_SUM)
                continue;
            c->op = (tp_redop)op;
            c->inplace = ip;
            suite_case(su, ROW_ALL_REDUCE, case_all_reduce, c);
        }
}

static void suite_all_gather(const suite *su, ccase *c)
{
    for (int pat = 0; pat < 3; pat++)
        for (int ip = 0; ip < 2; ip++) {
            if (su->big && pat)
                continue;
            c->pattern = pat;
            c->inplace = ip;
            suite_case(su, pat ? ROW_ALL_GATHERV : ROW_ALL_GATHER, case_all_gather, c);
        }
}

static void suite_reduce_scatter(const suite *su, ccase *c)
{
    for (int pat = 0; pat < 3; pat++)
        for (int op = 0; op < TP_REDOP_COUNT_; op++) {
            if (su->big && (pat || op != TP_SUM))
                continue;
            c->pattern = pat;
            c->op = (tp_redop)op;
            suite_case(su, pat ? ROW_REDUCE_SCATTERV : ROW_REDUCE_SCATTER, case_reduce_scatter, c);
        }
}

static void suite_broadcast(const suite *su, ccase *c)
{
    /* every root for small counts on the world; else first and last */
    int size = su->size;
    int nroots = !su->sub && c->n <= 1000 ? size : 2;
    for (int i = 0; i < nroots; i++) {
        c->root = nroots == size ? i : i == 0 ? 0 : size - 1;
        if (su->big && i == 0)
            continue;
        suite_case(su, ROW_BROADCAST, case_broadcast, c);
    }
}

/* The op suite on one communicator. Sub-communicator suites use fewer
 * sizes and a fixed number of cases per op, so every rank, whatever its
 * group, records the same sequence of cases. `as_row`: ROW_SUB or
 * ROW_SYM record every case under that row, -1 under its op's (the
 * symmetric pass runs every op: --op symmetric selects it as a whole). */
static void op_suite(rank_state *s, tp_comm *comm, const char *where, int as_row, int none_verdict)
{
    static const tp_dtype dts[] = {TP_F32, TP_F16, TP_BF16, TP_I32};
    size_t counts[8];
    bool sub = as_row == ROW_SUB, sym = as_row == ROW_SYM;
    size_t ncounts = suite_counts(s, sub, sym, counts);
    suite su = {.s = s,
                .sub = sub,
                .sym = sym,
                .size = comm ? tp_comm_size(comm) : 1,
                .none_verdict = none_verdict};
    for (size_t k = 0; k < ncounts; k++) {
        size_t n = counts[k];
        su.big = n > 1000000;
        for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++) {
            if (!suite_dtype(&su, dts[d]))
                continue;
            /* one case, its fields set op by op in this order */
            ccase c = {.comm = comm, .where = where, .dt = dts[d], .n = n};
            if (sym || wanted(s, ROW_ALL_REDUCE))
                suite_all_reduce(&su, &c);
            if (sym || wanted(s, ROW_ALL_GATHER))
                suite_all_gather(&su, &c);
            c.inplace = false;
            if (sym || wanted(s, ROW_REDUCE_SCATTER))
                suite_reduce_scatter(&su, &c);
            c.pattern = 0;
            if (sym || wanted(s, ROW_BROADCAST))
                suite_broadcast(&su, &c);
        }
    }
}

/* The world's op suite (f32) again on buffers from tp_comm_mem_alloc: on
 * shm the collectives then run straight on the ranks' windows, elsewhere
 * it is the device's memory. One arena for all, the same size on every
 * rank (the call is collective); every rank learns whether every rank got
 * it before any case runs, so all record the same cases. */
static void sym_cases(rank_state *s)
{
    if (!wanted(s, ROW_SYM))
        return;
    /* the largest case: a gather of 262147 per rank and its input (+ guards), twice over */
    size_t bytes = 2 * ((size_t)s->wsize + 1) * (262147 + GUARD + 16) * sizeof(float);
    void *arena = NULL;
    tp_status st = tp_comm_mem_alloc(s->world, bytes, &arena);
    int32_t bad = st != TP_OK; /* any rank without it: max over ranks */
    tp_status st2 = !world_max(s, &bad, 1) ? TP_ERR_INTERNAL : bad ? TP_ERR_PEER : TP_OK;
    if (st != TP_OK || st2 != TP_OK) {
        record(s, ROW_SYM, COL_OTHER,
               status_verdict(s, "tp_comm_mem_alloc", st != TP_OK ? st : st2));
        tp_comm_mem_free(s->world, arena);
        return;
    }
    s->arena = arena;
    s->arena_bytes = bytes;
    op_suite(s, s->world, "world, symmetric memory", ROW_SYM, R_FAIL);
    s->arena = NULL;
    tp_comm_mem_free(s->world, arena);
}

static void barrier_cases(rank_state *s)
{
    if (!wanted(s, ROW_BARRIER))
        return;
    for (int i = 0; i < 3; i++)
        record(s, ROW_BARRIER, COL_OTHER, status_verdict(s, "barrier", tp_barrier(s->world)));
}

/* The split modes: odd/even, one group with reversed keys, and color -1
 * on rank 0. */
static int split_color(int mode, int rank)
{
    return mode == 0 ? rank % 2 : mode == 1 ? 0 : (rank == 0 ? -1 : 1);
}

/* The world ranks of rank r's new group, in new-rank order; returns how
 * many (0 for color -1). */
static int split_members(int mode, int T, int color, int *members, int max)
{
    int nm = 0;
    for (int q = 0; q < T && nm < max; q++) {
        int qq = mode == 1 ? T - 1 - q : q;
        if (color >= 0 && split_color(mode, qq) == color)
            members[nm++] = qq;
    }
    return nm;
}

/* What tp_comm_split returned against what it should have. */
static int check_split(rank_state *s, const char *name, tp_status st, int color, tp_comm *sub,
                       int exp_rank, int nm)
{
    int v = status_verdict(s, name, st);
    if (v != R_PASS)
        return v;
    if (color < 0 && sub) {
        fail_msg(s, name, "color -1 returned a communicator, expected NULL");
        return R_FAIL;
    }
    if (color >= 0 && !sub) {
        fail_msg(s, name, "returned no communicator for color %d", color);
        return R_FAIL;
    }
    if (sub && (tp_comm_rank(sub) != exp_rank || tp_comm_size(sub) != nm)) {
        fail_msg(s, name, "got rank %d of %d, expected rank %d of %d", tp_comm_rank(sub),
                 tp_comm_size(sub), exp_rank, nm);
        return R_FAIL;
    }
    return R_PASS;
}

/* Membership: gather world ranks in new-rank order. */
static int check_membership(rank_state *s, const char *name, tp_comm *sub, int r,
                            const int *members, int nm)
{
    buf a = {0}, b = {0};
    int v = R_FAIL;
    if (!buf_new(s, &a, (size_t)nm * 4) || !buf_new(s, &b, 4))
        goto done;
    memcpy(b.host, &r, 4);
    if (!buf_up(s, &b)) {
        v = setup_failed(s, name);
        goto done;
    }
    v = status_verdict(s, name, tp_all_gather(sub, b.dev, a.dev, 1, TP_I32));
    if (v == R_PASS && buf_down(s, &a)) {
        for (int i = 0; i < nm; i++)
            if (((int32_t *)a.host)[i] != members[i]) {
                fail_msg(s, name, "rank %d of the new group is world rank %d, expected %d", i,
                         ((int32_t *)a.host)[i], members[i]);
                v = R_FAIL;
                break;
            }
    }
done:
    buf_free(s, &a);
    buf_free(s, &b);
    return v;
}

/* Split the world three ways; check rank, size and membership (an
 * all_gather of world ranks), then run the op suite on the new groups. */
static void split_cases(rank_state *s)
{
    if (!wanted(s, ROW_SPLIT))
        return;
    int T = s->wsize, r = s->wrank;
    static const char *const names[] = {"split odd/even", "split with reversed keys",
                                        "split with color -1 on rank 0"};
    for (int mode = 0; mode < 3; mode++) {
        int color = split_color(mode, r);
        int key = mode == 1 ? T - r : r;
        int members[1024]; /* expected members in new-rank order */
        int nm = split_members(mode, T, color, members, 1024);
        int exp_rank = -1;
        for (int i = 0; i < nm; i++)
            if (members[i] == r)
                exp_rank = i;
        tp_comm *sub = NULL;
        tp_status st = tp_comm_split(s->world, color, key, &sub);
        int v = check_split(s, names[mode], st, color, sub, exp_rank, nm);
        if (v != R_PASS && sub) {
            tp_comm_free(sub);
            sub = NULL;
        }
        if (sub)
            v = check_membership(s, names[mode], sub, r, members, nm);
        record(s, ROW_SPLIT, COL_OTHER, v);
        /* Members run the sub-suite; non-members (and ranks whose split
         * failed) record it as passed / failed without calling anything. */
        op_suite(s, sub, names[mode], ROW_SUB, color < 0 ? R_PASS : R_FAIL);
        tp_comm_free(sub);
    }
}

/* ------------------------------------------------------- nonblocking */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* One nonblocking collective of a batch: its inputs, kept on the host to
 * run the same call blocking afterwards, and its result. */
enum nb_kind {
    NB_AR,    /* all_reduce, out of place */
    NB_AR_IP, /* all_reduce, in place */
    NB_AG,    /* all_gather */
    NB_AGV,   /* all_gatherv, uneven counts */
    NB_RS,    /* reduce_scatter */
    NB_RSV,   /* reduce_scatterv, some counts zero */
    NB_KINDS
};
static const char *const nb_kind_names[NB_KINDS] = {"iall_reduce",     "iall_reduce in-place",
                                                    "iall_gather",     "iall_gatherv",
                                                    "ireduce_scatter", "ireduce_scatterv"};

typedef struct nbop {
    ccase c;
    int kind, rank, size;
    size_t salt;
    vbufs v;       /* a: input (in place: also the output), b: output */
    void *in_host; /* pristine input (a's bytes) */
    void *nb_res;  /* the output's bytes after the nonblocking call */
    tp_request *req;
} nbop;

static buf *nb_out(nbop *o)
{
    return o->kind == NB_AR_IP ? &o->v.a : &o->v.b;
}

static void nbop_free(rank_state *s, nbop *o)
{
    vbufs_free(s, &o->v);
    free(o->in_host);
    free(o->nb_res);
    memset(o, 0, sizeof *o);
}

/* Buffers of o, inputs filled and uploaded, outputs at the fill pattern. */
static bool nbop_setup(rank_state *s, nbop *o)
{
    ccase *c = &o->c;
    size_t es = tp_dtype_size(c->dt);
    c->pattern = o->kind == NB_AGV ? 1 : o->kind == NB_RSV ? 2 : 0;
    o->rank = tp_comm_rank(c->comm);
    o->size = tp_comm_size(c->comm);
    if (!counts_new(c, &o->v))
        return false;
    size_t mine = o->v.counts[o->rank], total = o->v.total, na, nb;
    if (o->kind <= NB_AR_IP)
        na = nb = c->n + GUARD;
    else if (o->kind <= NB_AGV)
        na = mine, nb = total + GUARD;
    else
        na = total, nb = mine + GUARD;
    if (!buf_new(s, &o->v.a, na * es) || (o->kind != NB_AR_IP && !buf_new(s, &o->v.b, nb * es)))
        return false;
    size_t nin = o->kind <= NB_AR_IP ? c->n : na;
    for (size_t i = 0; i < nin; i++)
        put(c->dt, o->v.a.host, i, value(c->dt, o->rank, i, o->salt));
    o->in_host = malloc(o->v.a.bytes ? o->v.a.bytes : 1);
    o->nb_res = malloc(nb_out(o)->bytes ? nb_out(o)->bytes : 1);
    if (!o->in_host || !o->nb_res)
        return false;
    memcpy(o->in_host, o->v.a.host, o->v.a.bytes);
    return buf_up(s, &o->v.a) && (o->kind == NB_AR_IP || buf_up(s, &o->v.b));
}

/* The call of o: nonblocking (req != NULL) or the blocking twin. */
static tp_status nbop_call(nbop *o, tp_request **req)
{
    ccase *c = &o->c;
    void *a = o->v.a.dev, *b = o->v.b.dev;
    size_t *k = o->v.counts;
    switch (o->kind) {
        case NB_AR:
            return req ? tp_iall_reduce(c->comm, a, b, c->n, c->dt, c->op, req)
                       : tp_all_reduce(c->comm, a, b, c->n, c->dt, c->op);
        case NB_AR_IP:
            return req ? tp_iall_reduce(c->comm, a, a, c->n, c->dt, c->op, req)
                       : tp_all_reduce(c->comm, a, a, c->n, c->dt, c->op);
        case NB_AG:
            return req ? tp_iall_gather(c->comm, a, b, c->n, c->dt, req)
                       : tp_all_gather(c->comm, a, b, c->n, c->dt);
        case NB_AGV:
            return req ? tp_iall_gatherv(c->comm, a, b, k, c->dt, req)
                       : tp_all_gatherv(c->comm, a, b, k, c->dt);
        case NB_RS:
            return req ? tp_ireduce_scatter(c->comm, a, b, c->n, c->dt, c->op, req)
                       : tp_reduce_scatter(c->comm, a, b, c->n, c->dt, c->op);
        default:
            return req ? tp_ireduce_scatterv(c->comm, a, b, k, c->dt, c->op, req)
                       : tp_reduce_scatterv(c->comm, a, b, k, c->dt, c->op);
    }
}

static void nb_what(const nbop *o, char *what, size_t len)
{
    snprintf(what, len, "%s %s %s count %zu on %s (%d ranks)", nb_kind_names[o->kind],
             tp_dtype_name(o->c.dt), op_name(o->c.op), o->c.n, o->c.where, o->size);
}

/* o's output (host copy) against the serial reference, and its guard. */
static int nbop_check(rank_state *s, nbop *o)
{
    char what[200];
    nb_what(o, what, sizeof what);
    buf *out = nb_out(o);
    const size_t *k = o->v.counts, *off = o->v.offs;
    size_t es = tp_dtype_size(o->c.dt), n = o->c.n, i;
    int v = R_PASS;
    if (o->kind <= NB_AR_IP) {
        for (i = 0; i < n && v == R_PASS; i++)
            v = expect(s, what, o->c.dt, out->host, i,
                       reference(o->c.dt, o->c.op, o->size, i, o->salt));
    } else if (o->kind <= NB_AGV) {
        for (int r = 0; r < o->size; r++)
            for (i = 0; i < k[r] && v == R_PASS; i++)
                v = expect(s, what, o->c.dt, out->host, off[r] + i, value(o->c.dt, r, i, o->salt));
        n = o->v.total;
    } else {
        n = k[o->rank];
        for (i = 0; i < n && v == R_PASS; i++)
            v = expect(s, what, o->c.dt, out->host, i,
                       reference(o->c.dt, o->c.op, o->size, off[o->rank] + i, o->salt));
    }
    return v == R_PASS && guard_ok(s, what, out, n * es) ? R_PASS : R_FAIL;
}

/* Run o again as the blocking call on its original inputs and a fresh
 * output: the bytes must equal the nonblocking result's. */
static int nbop_vs_blocking(rank_state *s, nbop *o)
{
    char what[200];
    nb_what(o, what, sizeof what);
    buf *out = nb_out(o);
    memcpy(out->host, o->nb_res, out->bytes);
    memcpy(o->v.a.host, o->in_host, o->v.a.bytes);
    if (out != &o->v.a)
        memset(out->host, SENTINEL, out->bytes);
    if (!buf_up(s, &o->v.a) || (out != &o->v.a && !buf_up(s, out)))
        return setup_failed(s, what);
    int v = call_and_fetch(s, what, nbop_call(o, NULL), out);
    if (v == R_PASS && memcmp(out->host, o->nb_res, out->bytes) != 0) {
        fail_msg(s, what, "result differs from the blocking call's (bitwise)");
        v = R_FAIL;
    }
    return v;
}

/* Wait for the batch: in reverse issue order, or by polling tp_test over
 * all of them until every one is done (then tp_wait, which must agree). */
static int nb_wait_all(rank_state *s, nbop *ops, int n, bool poll)
{
    int v = R_PASS;
    for (bool all = !poll; !all;) {
        all = true;
        for (int i = 0; i < n; i++) {
            bool done = false;
            if (!ops[i].req)
                continue;
            tp_status st = tp_test(ops[i].req, &done);
            all &= done;
            if (st && !done) {
                fail_msg(s, "tp_test", "returned %s without saying done: %s", tp_status_string(st),
                         tp_last_error());
                v = R_FAIL;
            }
        }
    }
    for (int j = 0; j < n; j++) {
        int i = poll ? j : n - 1 - j;
        char what[200];
        nb_what(&ops[i], what, sizeof what);
        if (!ops[i].req)
            continue;
        tp_status st = tp_wait(ops[i].req);
        ops[i].req = NULL;
        int w = call_and_fetch(s, what, st, nb_out(&ops[i]));
        if (w == R_PASS)
            memcpy(ops[i].nb_res, nb_out(&ops[i])->host, nb_out(&ops[i])->bytes);
        v = w > v ? w : v;
    }
    return v;
}

/* One batch: every kind in flight at once on comm, waited out of order,
 * each checked against the reference and bitwise against the blocking call. */
static int nb_batch(rank_state *s, tp_comm *comm, const char *where, tp_dtype dt, size_t n,
                    bool poll, int nops)
{
    nbop *ops = calloc((size_t)nops, sizeof *ops);
    if (!ops)
        return setup_failed(s, "a batch of nonblocking collectives");
    int v = R_PASS;
    size_t salt = s->ncases * 128;
    for (int k = 0; k < nops && v == R_PASS; k++) {
        ops[k] = (nbop){.c = {.comm = comm,
                              .where = where,
                              .dt = dt,
                              .n = n,
                              .op = (tp_redop)(k % TP_REDOP_COUNT_)},
                        .kind = k % NB_KINDS,
                        .salt = salt + (size_t)k};
        if (!nbop_setup(s, &ops[k]))
            v = setup_failed(s, nb_kind_names[k % NB_KINDS]);
    }
    for (int k = 0; k < nops && v == R_PASS; k++) {
        char what[200];
        nb_what(&ops[k], what, sizeof what);
        v = status_verdict(s, what, nbop_call(&ops[k], &ops[k].req));
    }
    int w = nb_wait_all(s, ops, nops, poll); /* also after a failed issue: end them */
    v = w > v ? w : v;
    for (int k = 0; k < nops && v == R_PASS; k++)
        v = nbop_check(s, &ops[k]);
    for (int k = 0; k < nops && v == R_PASS; k++)
        v = nbop_vs_blocking(s, &ops[k]);
    for (int k = 0; k < nops; k++)
        nbop_free(s, &ops[k]);
    free(ops);
    return v;
}

/* A request issued on a comm outlives a split of that comm, and one on
 * the new comm outlives tp_comm_free of it; a blocking collective issued
 * while requests are pending runs after them. */
static int nb_split_case(rank_state *s)
{
    nbop w = {.c = {.comm = s->world, .where = "world", .dt = TP_F32, .n = 1000, .op = TP_SUM},
              .kind = NB_AR,
              .salt = s->ncases * 16};
    nbop b = w, u = w;
    b.kind = NB_AR_IP;
    b.salt++;
    int v = R_FAIL;
    tp_comm *sub = NULL;
    if (!nbop_setup(s, &w) || !nbop_setup(s, &b))
        goto out;
    v = status_verdict(s, "tp_iall_reduce before a split", nbop_call(&w, &w.req));
    tp_status st = tp_comm_split(s->world, s->wrank % 2, s->wrank, &sub);
    int sv = status_verdict(s, "tp_comm_split with a request pending", st);
    v = sv > v ? sv : v;
    if (sub) {
        u = (nbop){
            .c = {.comm = sub, .where = "split odd/even", .dt = TP_I32, .n = 17, .op = TP_MAX},
            .kind = NB_RSV,
            .salt = w.salt + 2};
        if (!nbop_setup(s, &u))
            v = R_FAIL;
        else
            sv = status_verdict(s, "ireduce_scatterv on a comm freed before tp_wait",
                                nbop_call(&u, &u.req));
        v = sv > v ? sv : v;
        tp_comm_free(sub); /* completes u's request, which stays waitable */
    }
    /* a blocking collective with w pending */
    sv = call_and_fetch(s, "blocking all_reduce with a request pending", nbop_call(&b, NULL),
                        &b.v.a);
    v = sv > v ? sv : v;
    if (sv == R_PASS)
        memcpy(b.nb_res, b.v.a.host, b.v.a.bytes);
    nbop *all[2] = {&u, &w};
    for (int i = 0; i < 2; i++) {
        if (!all[i]->req)
            continue;
        sv = call_and_fetch(s, "tp_wait after split/free", tp_wait(all[i]->req), nb_out(all[i]));
        all[i]->req = NULL;
        v = sv > v ? sv : v;
        if (sv == R_PASS)
            sv = nbop_check(s, all[i]);
        v = sv > v ? sv : v;
    }
    if (v == R_PASS)
        v = nbop_check(s, &b);
out:
    nbop_free(s, &w);
    nbop_free(s, &b);
    nbop_free(s, &u);
    return v;
}

/* Bad arguments: a named error at issue, no request. */
static int nb_bad_args(rank_state *s)
{
    float x[4] = {0};
    size_t counts1[1] = {1};
    struct {
        const char *what, *fn;
        tp_status st;
        tp_request *req;
    } t[6] = {
        {"NULL send", "tp_iall_reduce", 0, NULL},      {"bad dtype", "tp_iall_gather", 0, NULL},
        {"NULL counts", "tp_iall_gatherv", 0, NULL},   {"bad redop", "tp_ireduce_scatter", 0, NULL},
        {"NULL comm", "tp_ireduce_scatterv", 0, NULL}, {"NULL req", "tp_iall_reduce", 0, NULL}};
    char msg[6][256];
    t[0].st = tp_iall_reduce(s->world, NULL, x, 4, TP_F32, TP_SUM, &t[0].req);
    snprintf(msg[0], sizeof msg[0], "%s", tp_last_error());
    t[1].st = tp_iall_gather(s->world, x, x, 1, (tp_dtype)99, &t[1].req);
    snprintf(msg[1], sizeof msg[1], "%s", tp_last_error());
    t[2].st = tp_iall_gatherv(s->world, x, x, NULL, TP_F32, &t[2].req);
    snprintf(msg[2], sizeof msg[2], "%s", tp_last_error());
    t[3].st = tp_ireduce_scatter(s->world, x, x, 1, TP_F32, (tp_redop)7, &t[3].req);
    snprintf(msg[3], sizeof msg[3], "%s", tp_last_error());
    t[4].st = tp_ireduce_scatterv(NULL, x, x, counts1, TP_F32, TP_SUM, &t[4].req);
    snprintf(msg[4], sizeof msg[4], "%s", tp_last_error());
    t[5].st = tp_iall_reduce(s->world, x, x, 4, TP_F32, TP_SUM, NULL);
    snprintf(msg[5], sizeof msg[5], "%s", tp_last_error());
    bool done = true;
    tp_status tst = tp_test(NULL, &done);
    int v = R_PASS;
    for (int i = 0; i < 6; i++)
        if (t[i].st != TP_ERR_INVALID_ARG || t[i].req || !strstr(msg[i], t[i].fn)) {
            fail_msg(s, "nonblocking bad arguments",
                     "%s: %s returned %s, request %p, message '%s'; expected "
                     "TP_ERR_INVALID_ARG, no request, a message naming it",
                     t[i].what, t[i].fn, tp_status_string(t[i].st), (void *)t[i].req, msg[i]);
            v = R_FAIL;
        }
    if (tst != TP_ERR_INVALID_ARG || done || tp_wait(NULL) != TP_OK) {
        fail_msg(s, "nonblocking bad arguments", "tp_test(NULL) returned %s, done %d",
                 tp_status_string(tst), (int)done);
        v = R_FAIL;
    }
    return v;
}

/* The counters of a batch: K calls per op, times consistent. */
static int nb_counters(rank_state *s)
{
    tp_stats_reset(s->world);
    int v = nb_batch(s, s->world, "world", TP_F32, 4099, false, NB_KINDS);
    tp_stats st;
    tp_stats_get(s->world, &st);
    static const struct {
        tp_op op;
        uint64_t calls;
    } want[] = {{TP_OP_ALL_REDUCE, 2}, {TP_OP_ALL_GATHER, 2}, {TP_OP_REDUCE_SCATTER, 2}};
    for (size_t i = 0; i < 3; i++) {
        const tp_icounter *k = &st.icomm[TP_PHASE_OTHER][want[i].op];
        /* the batch's blocking twins are counted in comm[][], not here */
        bool ok = k->calls == want[i].calls && st.comm[TP_PHASE_OTHER][want[i].op].calls == 2 &&
                  k->bytes > 0 && k->issue_seconds > 0 && k->seconds >= 0 &&
                  k->exposed_seconds >= 0 && k->exposed_seconds <= k->wait_seconds + 1e-9 &&
                  k->exposed_seconds <= k->seconds + 1e-6;
        if (!ok) {
            fail_msg(s, "nonblocking counters",
                     "%s: calls %llu (expected %llu), bytes %llu, issue %.3g s, in flight %.3g "
                     "s, wait %.3g s, exposed %.3g s (expected exposed <= wait, in flight)",
                     tp_op_name(want[i].op), (unsigned long long)k->calls,
                     (unsigned long long)want[i].calls, (unsigned long long)k->bytes,
                     k->issue_seconds, k->seconds, k->wait_seconds, k->exposed_seconds);
            v = R_FAIL;
        }
    }
    if (tp_stats_calls(&st, TP_PHASE_COUNT, TP_OP_COUNT) != 12) {
        fail_msg(s, "nonblocking counters", "tp_stats_calls counts %llu calls, expected 12",
                 (unsigned long long)tp_stats_calls(&st, TP_PHASE_COUNT, TP_OP_COUNT));
        v = R_FAIL;
    }
    return v;
}

/* A batch (blocking twins included) on the odd/even groups while a request
 * on the world is pending: collectives of several comms of a rank. */
static int nb_sub_case(rank_state *s)
{
    tp_comm *sub = NULL;
    nbop w = {.c = {.comm = s->world, .where = "world", .dt = TP_F32, .n = 4099, .op = TP_SUM},
              .kind = NB_AR,
              .salt = s->ncases * 128 + 100};
    int v = status_verdict(s, "split for nonblocking",
                           tp_comm_split(s->world, s->wrank % 2, s->wrank, &sub));
    if (v == R_PASS && !nbop_setup(s, &w))
        v = setup_failed(s, "iall_reduce on the world");
    if (v == R_PASS)
        v = status_verdict(s, "iall_reduce on the world", nbop_call(&w, &w.req));
    if (v == R_PASS)
        v = nb_batch(s, sub, "split odd/even", TP_I32, 1000, true, NB_KINDS);
    if (w.req) {
        int x = call_and_fetch(s, "tp_wait on the world after a sub-comm batch", tp_wait(w.req),
                               nb_out(&w));
        w.req = NULL;
        if (x == R_PASS)
            x = nbop_check(s, &w);
        v = x > v ? x : v;
    }
    nbop_free(s, &w);
    tp_comm_free(sub);
    return v;
}

static void nb_cases(rank_state *s)
{
    if (!wanted(s, ROW_NB))
        return;
    static const tp_dtype dts[] = {TP_F32, TP_F16, TP_BF16, TP_I32};
    static const size_t ns[] = {0, 13, 1000, 262147};
    for (size_t d = 0; d < 4; d++)
        for (size_t i = 0; i < 4; i++)
            record(s, ROW_NB, dts[d],
                   nb_batch(s, s->world, "world", dts[d], ns[i], i % 2, NB_KINDS));
    /* 96 requests in flight, waited in reverse, then polled */
    for (int round = 0; round < 2; round++)
        record(s, ROW_NB, TP_F32, nb_batch(s, s->world, "world", TP_F32, 17, round, 96));
    /* on sub-communicators, with a request of the world pending meanwhile */
    record(s, ROW_NB, TP_I32, nb_sub_case(s));
    record(s, ROW_NB_MORE, COL_OTHER, nb_split_case(s));
    record(s, ROW_NB_MORE, COL_OTHER, nb_bad_args(s));
    record(s, ROW_NB_MORE, COL_OTHER, nb_counters(s));
}

/* --nb-error MODE: world ranks 0 and 1 form a comm on which rank 1 never
 * joins rank 0's iall_reduce. peer-left: rank 1 leaves the comm and ends
 * at once; peer-silent: it stays, silent, for 1.5 x TP_TIMEOUT_S + 5 s.
 * Rank 0's request must end with TP_ERR_PEER or TP_ERR_TIMEOUT, a message
 * naming tp_iall_reduce, within 1.25 x TP_TIMEOUT_S + 3 s (tcp adds a
 * 1.5 s stall check to the timeout). Nothing runs afterwards (a
 * backend may not recover: tcp shares its streams among comms), so rank
 * 0's verdict alone is the result, not combined over ranks. */
static int nb_error_rank0(rank_state *s, tp_comm *pair, const char *what, double timeout_s)
{
    buf a = {0};
    if (!buf_new(s, &a, 8 * sizeof(float)) || !buf_up(s, &a)) {
        buf_free(s, &a);
        return setup_failed(s, what);
    }
    double t0 = now_s();
    tp_request *r = NULL;
    tp_status st = tp_iall_reduce(pair, a.dev, a.dev, 8, TP_F32, TP_SUM, &r);
    if (st == TP_OK)
        st = tp_wait(r);
    double dt = now_s() - t0;
    char msg[512];
    snprintf(msg, sizeof msg, "%s", tp_last_error());
    int v = R_PASS;
    if ((st != TP_ERR_PEER && st != TP_ERR_TIMEOUT) || !strstr(msg, "tp_iall_reduce") ||
        dt > timeout_s * 1.25 + 3) {
        fail_msg(s, what,
                 "tp_wait returned %s after %.1f s (TP_TIMEOUT_S %.1f) with '%s'; expected "
                 "TP_ERR_PEER or TP_ERR_TIMEOUT naming tp_iall_reduce",
                 tp_status_string(st), dt, timeout_s, msg);
        v = R_FAIL;
    } else {
        printf("%s: ok: %s after %.1f s: %s\n", what, tp_status_string(st), dt, msg);
    }
    buf_free(s, &a);
    return v;
}

static int nb_error_case(rank_state *s, int mode)
{
    const char *what = mode == 0 ? "nb error peer-left" : "nb error peer-silent";
    const char *e = getenv("TP_TIMEOUT_S");
    double timeout_s = e ? strtod(e, NULL) : 0;
    if (!(timeout_s > 0 && timeout_s <= 30) || s->wsize < 2) {
        fprintf(stderr, "tp-conformance: --nb-error needs TP_TIMEOUT_S in (0, 30] and 2 ranks "
                        "or more\n");
        return R_FAIL;
    }
    tp_comm *pair = NULL;
    int v =
        status_verdict(s, what, tp_comm_split(s->world, s->wrank < 2 ? 0 : -1, s->wrank, &pair));
    if (v == R_PASS && pair && s->wrank == 0)
        v = nb_error_rank0(s, pair, what, timeout_s);
    if (s->wrank == 1 && mode == 1) {
        long ms = (long)(timeout_s * 1500) + 5000;
        struct timespec ts = {ms / 1000, ms % 1000 * 1000000L};
        nanosleep(&ts, NULL);
    }
    tp_comm_free(pair);
    return v;
}

/* ------------------------------------------------------ combine, report */

typedef struct shared {
    const opts *o;
    tp_ctx *ctx;
    double t0;
    pthread_mutex_t lock;
    int failed, passed, skipped; /* combined totals, written by every local rank */
    bool incomplete;             /* results could not be combined */
} shared;

static void print_table(const shared *sh, const rank_state *s, const int32_t *verdicts,
                        bool combined)
{
    int cnt[ROW_COUNT][NCOLS][3] = {{{0}}};
    int tot[3] = {0};
    for (size_t i = 0; i < s->ncases; i++) {
        int v = verdicts[i] == R_PASS ? 0 : verdicts[i] == R_FAIL ? 1 : 2;
        cnt[s->row[i]][s->col[i]][v]++;
        tot[v]++;
    }
    static const int col_order[NCOLS] = {TP_F32, TP_F16, TP_BF16, TP_I32, COL_OTHER};
    printf("tp-conformance: backend %s, device %s, %d rank%s%s\n", tp_ctx_backend(sh->ctx),
           tp_ctx_device(sh->ctx), s->wsize, s->wsize == 1 ? "" : "s",
           sh->o->large ? ", with --large" : "");
    if (!combined)
        printf("warning: rank 0's own results only (combining with the other ranks failed)\n");
    printf("%-18s", "op");
    for (int k = 0; k < NCOLS; k++) {
        int col = col_order[k];
        printf(" %-11s", col == COL_OTHER ? "other" : tp_dtype_name((tp_dtype)col));
    }
    printf("\n");
    for (int r = 0; r < ROW_COUNT; r++) {
        int any = 0;
        for (int k = 0; k < NCOLS; k++)
            any += cnt[r][k][0] + cnt[r][k][1] + cnt[r][k][2];
        if (!any)
            continue;
        printf("%-18s", row_names[r]);
        for (int k = 0; k < NCOLS; k++) {
            const int *x = cnt[r][col_order[k]];
            int n = x[0] + x[1] + x[2];
            char cell[32];
            if (!n)
                snprintf(cell, sizeof cell, "-");
            else if (x[1])
                snprintf(cell, sizeof cell, "FAIL %d/%d", x[1], n);
            else if (x[2] == n)
                snprintf(cell, sizeof cell, "n/p");
            else if (x[2])
                snprintf(cell, sizeof cell, "ok %d+%dn/p", x[0], x[2]);
            else
                snprintf(cell, sizeof cell, "ok %d", x[0]);
            printf(" %-11s", cell);
        }
        printf("\n");
    }
    printf("(ok N: N cases passed on every rank; FAIL F/N: F of N cases failed on some rank; "
           "n/p: not provided by the backend)\n");
}

/* Combine verdicts over ranks: max, so a failure anywhere wins. */
static bool combine(rank_state *s, int32_t *verdicts)
{
    memcpy(verdicts, s->res, s->ncases * sizeof *verdicts);
    /* Same number of cases everywhere? max of (n, -n) gives max and -min. */
    int32_t nn[2] = {(int32_t)s->ncases, -(int32_t)s->ncases};
    if (!world_max(s, nn, 2))
        goto fail;
    if (nn[0] != -nn[1]) {
        fprintf(stderr,
                "tp-conformance: rank %d: ranks ran different numbers of cases (%d .. %d)\n",
                s->wrank, -nn[1], nn[0]);
        return false;
    }
    if (world_max(s, verdicts, s->ncases))
        return true;
fail:
    fprintf(stderr, "tp-conformance: rank %d: cannot combine results: %s\n", s->wrank,
            tp_last_error());
    return false;
}

static tp_status rank_main(tp_comm *world, void *arg)
{
    shared *sh = arg;
    rank_state s = {.o = sh->o,
                    .world = world,
                    .dev = tp_comm_device(world),
                    .wrank = tp_comm_rank(world),
                    .wsize = tp_comm_size(world)};
    op_suite(&s, world, "world", -1, R_FAIL);
    barrier_cases(&s);
    split_cases(&s);
    barrier_cases(&s);
    tp_status st = TP_OK;
    if (sh->o->nb_error >= 0) {
        if (nb_error_case(&s, sh->o->nb_error) != R_PASS && s.wrank == 0)
            sh->failed = 1;
        goto out_early;
    }
    nb_cases(&s);
    sym_cases(&s);
    int32_t *verdicts = s.oom ? NULL : malloc((s.ncases ? s.ncases : 1) * sizeof *verdicts);
    if (!verdicts) {
        st = tp_set_error(TP_ERR_NO_MEMORY, "tp-conformance: out of memory for results");
        goto out;
    }
    bool combined = combine(&s, verdicts);
    int tot[3] = {0};
    for (size_t i = 0; i < s.ncases; i++)
        tot[verdicts[i]]++;
    pthread_mutex_lock(&sh->lock);
    sh->passed = tot[R_PASS];
    sh->failed = tot[R_FAIL];
    sh->skipped = tot[R_SKIP];
    sh->incomplete |= !combined;
    pthread_mutex_unlock(&sh->lock);
    if (s.wrank == 0) {
        print_table(sh, &s, verdicts, combined);
        printf("time: %.2f s\n", now_s() - sh->t0);
        printf("conformance: %d passed, %d failed, %d skipped\n", tot[R_PASS], tot[R_FAIL],
               tot[R_SKIP]);
        fflush(stdout);
    }
out:
    free(verdicts);
out_early:
    free(s.res);
    free(s.row);
    free(s.col);
    return st;
}

/* --------------------------------------------------------------- main */

/* What the option callbacks fill in. */
typedef struct parse_state {
    opts *o;
    tp_config *cfg;
} parse_state;

static gboolean opt_op(const gchar *name, const gchar *value, gpointer data, GError **error)
{
    static const char *const known[] = {"all_reduce", "all_gather", "reduce_scatter", "broadcast",
                                        "barrier",    "split",      "nonblocking",    "symmetric"};
    for (size_t k = 0; k < sizeof known / sizeof known[0]; k++)
        if (!strcmp(value, known[k])) {
            ((parse_state *)data)->o->only_op = known[k];
            return TRUE;
        }
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "%s '%s': unknown op; expected all_reduce, all_gather, reduce_scatter, "
                "broadcast, barrier, split, nonblocking or symmetric",
                name, value);
    return FALSE;
}

static gboolean opt_nb_error(const gchar *name, const gchar *value, gpointer data, GError **error)
{
    if (strcmp(value, "peer-left") != 0 && strcmp(value, "peer-silent") != 0) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "%s '%s': unknown mode; expected peer-left or peer-silent", name, value);
        return FALSE;
    }
    ((parse_state *)data)->o->nb_error = !strcmp(value, "peer-silent");
    return TRUE;
}

/* --tp N through tp_config_parse_tp, the range check every program shares. */
static gboolean opt_tp(const gchar *name, const gchar *value, gpointer data, GError **error)
{
    char *args[] = {"tp-conformance", "--tp", (char *)value, NULL};
    if (tp_config_parse_tp(((parse_state *)data)->cfg, 3, args) != TP_OK) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, "%s", tp_last_error());
        return FALSE;
    }
    (void)name;
    return TRUE;
}

static const char summary[] =
    "Runs the communicator conformance suite through the public tp API on the\n"
    "backend named by TP_BACKEND (default loopback): all_reduce, all_gather(v),\n"
    "reduce_scatter(v), broadcast, barrier and split, for f32, f16, bf16 and i32,\n"
    "counts 0, 1, 13, 17, 1000 and 262147 (1 MiB of f32), sum/max/min, every\n"
    "root, in-place and out-of-place, uneven counts, and sub-communicators (odd/even,\n"
    "reversed keys, color -1). Every element is checked exactly against a serial\n"
    "reference. Nonblocking collectives (tp_iall_reduce, tp_iall_gather(v),\n"
    "tp_ireduce_scatter(v)): batches in flight at once (up to 96 requests), waited\n"
    "in reverse or polled with tp_test, each checked against the reference and\n"
    "bitwise against the blocking call; requests outliving a split and the free of\n"
    "their comm; a blocking call while requests are pending; bad arguments; the\n"
    "nonblocking counters. The world's f32 cases again on buffers from\n"
    "tp_comm_mem_alloc (symmetric memory; shm runs them without staging copies).\n"
    "Prints a table and 'conformance: N passed, N failed, N skipped'.\n"
    "\n"
    "With --nb-error MODE, instead of the suite: rank 1 leaves (peer-left) or stays\n"
    "silent (peer-silent) while rank 0 waits for a tp_iall_reduce with it, which must\n"
    "fail (TP_ERR_PEER or TP_ERR_TIMEOUT) naming the call; needs TP_TIMEOUT_S <= 30;\n"
    "rank 0's verdict is the exit status.";

static const char description[] =
    "An option given twice: the last value wins. --opt=VALUE and --opt VALUE are the same.\n"
    "Exit status: 0 if nothing failed, 1 if something failed, 2 on bad usage.\n"
    "Multi-process backends: mpirun -n 4 env TP_BACKEND=mpi tp-conformance\n"
    "Environment: TP_BACKEND, TP_DEVICE, TP_WORLD_SIZE, TP_PLUGIN_PATH, TP_TIMEOUT_S.\n";

/* Parse argv (tp-options.h); 0 to go on, else the exit status + 1. */
static int parse_args(int *argc, char ***argv, opts *o, tp_config *cfg)
{
    gboolean large = FALSE, verbose = FALSE, version = FALSE;
    parse_state ps = {o, cfg};
    GOptionEntry entries[] = {
        {"tp", 0, 0, G_OPTION_ARG_CALLBACK, (gpointer)opt_tp,
         "World size (else TP_WORLD_SIZE, else the engine: mpirun -n)", "N"},
        {"large", 0, 0, G_OPTION_ARG_NONE, &large, "Also run > 16 MiB cases (4194309 f32 elements)",
         NULL},
        {"op", 0, 0, G_OPTION_ARG_CALLBACK, (gpointer)opt_op,
         "Only all_reduce, all_gather, reduce_scatter, broadcast, barrier, split, nonblocking or "
         "symmetric",
         "NAME"},
        {"nb-error", 0, 0, G_OPTION_ARG_CALLBACK, (gpointer)opt_nb_error,
         "Instead of the suite, the nonblocking error check (see above)", "peer-left|peer-silent"},
        {"verbose", 'v', 0, G_OPTION_ARG_NONE, &verbose,
         "Say which cases the backend does not provide, and why", NULL},
        {"version", 'V', 0, G_OPTION_ARG_NONE, &version, "Show the version and git revision", NULL},
        {NULL, 0, 0, 0, NULL, NULL, NULL}};
    GOptionContext *ctx = g_option_context_new(NULL);
    GOptionGroup *group = g_option_group_new(NULL, NULL, NULL, &ps, NULL);
    g_option_group_add_entries(group, entries);
    g_option_context_set_main_group(ctx, group);
    g_option_context_set_summary(ctx, summary);
    g_option_context_set_description(ctx, description);
    int rc = tp_options_parse("tp-conformance", ctx, entries, &version, argc, argv) + 1;
    if (rc == 0 && *argc > 1) {
        fprintf(stderr,
                "tp-conformance: unexpected argument '%s'; it takes no operands (try --help)\n",
                (*argv)[1]);
        rc = 3;
    }
    o->large = large;
    o->verbose = verbose;
    g_option_context_free(ctx);
    return rc;
}

int main(int argc, char **argv)
{
    opts o = {.nb_error = -1};
    tp_config cfg = {0};
    int rc = parse_args(&argc, &argv, &o, &cfg);
    if (rc)
        return rc - 1;
    cfg.argc = &argc;
    cfg.argv = &argv;
    shared sh = {.o = &o, .t0 = now_s()};
    pthread_mutex_init(&sh.lock, NULL);
    tp_status st = tp_init(&cfg, &sh.ctx);
    if (st != TP_OK) {
        fprintf(stderr, "tp-conformance: %s: %s\n", tp_status_string(st), tp_last_error());
        return 1;
    }
    st = tp_run(sh.ctx, rank_main, &sh);
    if (st != TP_OK)
        fprintf(stderr, "tp-conformance: %s: %s\n", tp_status_string(st), tp_last_error());
    tp_finalize(sh.ctx);
    pthread_mutex_destroy(&sh.lock);
    return st != TP_OK || sh.failed || sh.incomplete ? 1 : 0;
}
