/* SPDX-License-Identifier: MIT */
/*
 * overlap.c — the token chunks of the overlapped layers and the pipelines
 * built on them: the row-parallel forward (linear.c) and sequence
 * parallelism's all-gather -> column GEMM and row GEMM -> reduce-scatter
 * (the block and its attention). Chunk boundaries and why they keep the
 * bits: docs/determinism.md, "Overlapped layers".
 */
#include "layers-internal.h"

int tpl_overlap_chunks(int64_t tokens, int overlap, int64_t *off)
{
    int n = 0;
    off[0] = 0;
    for (int i = 1; i <= overlap; i++) {
        int64_t b = tokens * i / overlap;
        b = (b + TPL_CHUNK_ALIGN - 1) / TPL_CHUNK_ALIGN * TPL_CHUNK_ALIGN;
        if (b > tokens)
            b = tokens;
        if (b > off[n])
            off[++n] = b;
    }
    return n;
}

tp_status tpl_wait_all(tp_request **req, int n, tp_status st)
{
    for (int i = 0; i < n; i++) {
        tp_status w = tp_wait(req[i]);
        if (st == TP_OK)
            st = w;
    }
    return st;
}

/* This rank's part of token chunk [c0, c1): counts[i] = the rows of rank
 * i's shard inside the chunk, times cols; returns the first such row of
 * this rank, relative to its shard (its shard's length when none). */
static int64_t chunk_part(const int64_t *off, int T, int rank, int64_t c0, int64_t c1, int64_t cols,
                          size_t *counts)
{
    int64_t mine = 0;
    for (int i = 0; i < T; i++) {
        int64_t lo = off[i] > c0 ? off[i] : c0, hi = off[i + 1] < c1 ? off[i + 1] : c1;
        if (hi < lo)
            hi = lo = lo > off[i + 1] ? off[i + 1] : lo;
        counts[i] = (size_t)((hi - lo) * cols);
        if (i == rank)
            mine = lo - off[i];
    }
    return mine;
}

tp_status tpl_gather_rows_overlapped(tp_comm *comm, tp_dtype dt, const void *shard, void *full,
                                     const int64_t *off, int64_t cols, size_t *counts, int overlap,
                                     tpl_rows_fn fn, void *ctx)
{
    int T = tp_comm_size(comm), rank = tp_comm_rank(comm);
    size_t es = tp_dtype_size(dt);
    int64_t co[TP_OVERLAP_MAX + 1];
    tp_request *req[TP_OVERLAP_MAX];
    int n = tpl_overlap_chunks(off[T], overlap, co), issued = 0;
    tp_status st = TP_OK;
    /* all chunks issued at once: they run back to back in issue order */
    for (int c = 0; c < n && st == TP_OK; c++) {
        int64_t mine = chunk_part(off, T, rank, co[c], co[c + 1], cols, counts);
        st = tp_iall_gatherv(comm, (const char *)shard + (size_t)(mine * cols) * es,
                             (char *)full + (size_t)(co[c] * cols) * es, counts, dt, &req[issued]);
        if (st == TP_OK)
            issued++;
    }
    for (int c = 0; c < issued && st == TP_OK; c++) {
        tp_request *r = req[c];
        req[c] = NULL; /* ended here, whatever it returns */
        st = tp_wait(r);
        if (st == TP_OK)
            st = fn(ctx, co[c], co[c + 1]);
        bool done; /* push the next one along (backends progressing in calls) */
        if (st == TP_OK && c + 1 < issued)
            st = tp_test(req[c + 1], &done);
    }
    for (int c = 0; c < issued; c++)
        if (req[c])
            st = tpl_wait_all(&req[c], 1, st);
    return st;
}

/* The row GEMM -> reduction pipeline of both row-parallel exits: fn
 * computes chunk c's rows of the partial full [tokens, cols], whose
 * reduction (TP_SUM) then starts and is in flight while the next chunk is
 * computed: with off (token shards), a tp_ireduce_scatterv into the
 * owners' shard rows; without, a tp_iall_reduce in place. tail (may be
 * NULL) runs once every chunk is issued, before the waits. With keep, the
 * requests are left in flight there (no tail) instead of waited. */
static tp_status reduce_rows_overlapped(tp_comm *comm, tp_dtype dt, void *full, void *shard,
                                        const int64_t *off, int64_t tokens, int64_t cols,
                                        size_t *counts, int overlap, tpl_rows_fn fn,
                                        tpl_tail_fn tail, void *ctx, tpl_inflight *keep)
{
    int T = tp_comm_size(comm), rank = tp_comm_rank(comm);
    size_t es = tp_dtype_size(dt);
    int64_t co[TP_OVERLAP_MAX + 1];
    tp_request *req[TP_OVERLAP_MAX];
    int n = tpl_overlap_chunks(tokens, overlap, co), issued = 0, tested = 0;
    tp_status st = TP_OK;
    for (int c = 0; c < n && st == TP_OK; c++) {
        char *rows = (char *)full + (size_t)(co[c] * cols) * es;
        st = fn(ctx, co[c], co[c + 1]);
        if (st == TP_OK && off) {
            int64_t mine = chunk_part(off, T, rank, co[c], co[c + 1], cols, counts);
            st = tp_ireduce_scatterv(comm, rows, (char *)shard + (size_t)(mine * cols) * es, counts,
                                     dt, TP_SUM, &req[issued]);
        } else if (st == TP_OK) {
            st = tp_iall_reduce(comm, rows, rows, (size_t)((co[c + 1] - co[c]) * cols), dt, TP_SUM,
                                &req[issued]);
        }
        if (st == TP_OK)
            issued++;
        /* push the oldest unfinished request but the newest along (a
         * backend that progresses only inside its calls, like mpi). Its
         * result and any error come from tp_wait: an error here must not
         * stop this rank from issuing the chunks its peers issue. */
        bool done = true;
        while (st == TP_OK && tested < issued - 1 && done)
            if (tp_test(req[tested], &done) != TP_OK)
                tested = n; /* it failed: tp_wait reports it; test no more */
            else
                tested += done;
    }
    if (keep && st == TP_OK) {
        keep->n = issued;
        keep->done = 0;
        for (int c = 0; c < issued; c++) {
            keep->off[c] = co[c];
            keep->req[c] = req[c];
        }
        keep->off[issued] = co[issued];
        return TP_OK;
    }
    if (keep)
        tpl_inflight_clear(keep);
    if (st == TP_OK && tail)
        st = tail(ctx);
    return tpl_wait_all(req, issued, st);
}

tp_status tpl_inflight_wait_rows(tpl_inflight *f, int64_t r1, int64_t *lo, int64_t *hi)
{
    tp_status st = TP_OK;
    *lo = f->off[f->done];
    for (; f->done < f->n && f->off[f->done] < r1; f->done++) {
        tp_status w = tp_wait(f->req[f->done]);
        if (st == TP_OK)
            st = w;
    }
    *hi = f->off[f->done];
    return st;
}

void tpl_inflight_clear(tpl_inflight *f)
{
    f->n = f->done = 0;
    f->off[0] = 0;
}

tp_status tpl_inflight_end(tpl_inflight *f, tp_status st)
{
    st = tpl_wait_all(f->req + f->done, f->n - f->done, st);
    f->done = f->n;
    return st;
}

tp_status tpl_reduce_scatter_rows_overlapped(tp_comm *comm, tp_dtype dt, void *full, void *shard,
                                             const int64_t *off, int64_t cols, size_t *counts,
                                             int overlap, tpl_rows_fn fn, void *ctx)
{
    return reduce_rows_overlapped(comm, dt, full, shard, off, off[tp_comm_size(comm)], cols, counts,
                                  overlap, fn, NULL, ctx, NULL);
}

tp_status tpl_all_reduce_rows_overlapped(tp_comm *comm, tp_dtype dt, void *buf, int64_t tokens,
                                         int64_t cols, int overlap, tpl_rows_fn fn,
                                         tpl_tail_fn tail, void *ctx)
{
    return reduce_rows_overlapped(comm, dt, buf, NULL, NULL, tokens, cols, NULL, overlap, fn, tail,
                                  ctx, NULL);
}

tp_status tpl_all_reduce_rows_begin(tp_comm *comm, tp_dtype dt, void *buf, int64_t tokens,
                                    int64_t cols, int overlap, tpl_rows_fn fn, void *ctx,
                                    tpl_inflight *out)
{
    return reduce_rows_overlapped(comm, dt, buf, NULL, NULL, tokens, cols, NULL, overlap, fn, NULL,
                                  ctx, out);
}
