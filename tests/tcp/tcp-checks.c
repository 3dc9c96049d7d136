/* SPDX-License-Identifier: MIT */
/*
 * tcp-checks.c — every collective of the tcp plugin against a serial
 * reference computed from the same inputs, run by each rank.
 *
 * Inputs are pure functions of (rank, index), so each rank can compute the
 * whole reference with plain loops.
 */
#include "tcp-checks.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...) (th_host.set_error(TP_ERR_INTERNAL, __VA_ARGS__))

static float xf(int rank, size_t i)
{
    return sinf((float)rank * 1.7f + (float)i * 0.37f);
}

static int32_t xi(int rank, size_t i)
{
    return (int32_t)((rank + 1) * 1000 + (int)(i % 97) - 50);
}

/* Small integers: exact in f16/bf16, and so are their sums over <= 8 ranks. */
static float xs(int rank, size_t i)
{
    return (float)(rank + (int)(i % 5) - 2);
}

static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16); /* exact for the small integers used here */
}

static float from_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint16_t to_f16(float f) /* exact small integers only, |f| < 2048 */
{
    if (f == 0)
        return 0;
    uint16_t sign = f < 0 ? 0x8000 : 0;
    float a = fabsf(f);
    int e = 0;
    while (a >= 2.0f) {
        a /= 2;
        e++;
    }
    return (uint16_t)(sign | ((e + 15) << 10) | (uint16_t)((a - 1.0f) * 1024.0f));
}

static float from_f16(uint16_t h)
{
    int e = (h >> 10) & 0x1f;
    float m = 1.0f + (float)(h & 0x3ff) / 1024.0f;
    float v = e == 0 ? (float)(h & 0x3ff) / 16777216.0f : ldexpf(m, e - 15);
    return (h & 0x8000) ? -v : v;
}

static uint64_t hash_bytes(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* All ranks of comm hold the same bytes? (compares a hash over all_gather) */
static tp_status same_everywhere(void *comm, int size, const void *p, size_t n, const char *what)
{
    uint64_t h = hash_bytes(p, n);
    int32_t mine[2] = {(int32_t)(uint32_t)h, (int32_t)(uint32_t)(h >> 32)};
    int32_t all[2 * TH_MAX_RANKS];
    size_t counts[TH_MAX_RANKS];
    for (int i = 0; i < size; i++)
        counts[i] = 2;
    tp_status st = th_ops->all_gather(comm, mine, all, counts, TP_I32);
    if (st != TP_OK)
        return st;
    for (int i = 0; i < size; i++)
        if (all[2 * i] != all[0] || all[2 * i + 1] != all[1])
            return FAIL("%s: rank %d holds different bits than rank 0", what, i);
    return TP_OK;
}

static tp_status check_all_reduce(void *comm, int rank, int size, size_t count)
{
    tp_status st = TP_OK;
    float *in = calloc(count + 1, sizeof *in), *out = calloc(count + 1, sizeof *out);
    int32_t *ii = malloc((count + 1) * sizeof *ii), *io = malloc((count + 1) * sizeof *io);
    uint16_t *h = malloc((count + 1) * 2), *ho = malloc((count + 1) * 2);
    if (!in || !out || !ii || !io || !h || !ho) {
        st = FAIL("out of memory");
        goto done;
    }
    for (size_t i = 0; i < count; i++)
        in[i] = xf(rank, i);
    /* f32 sum. Tolerance: |x| <= 1, n <= 8 summands in some fixed order vs a
     * double reference: error <= (n-1) * 2^-24 * n < 3e-6; allow 1e-5. */
    if ((st = th_ops->all_reduce(comm, in, out, count, TP_F32, TP_SUM)) != TP_OK)
        goto done;
    for (size_t i = 0; i < count; i++) {
        double ref = 0;
        for (int r = 0; r < size; r++)
            ref += xf(r, i);
        if (fabs(out[i] - ref) > 1e-5) {
            st = FAIL("all_reduce f32 sum count %zu: [%zu] = %.9g, expected %.9g", count, i, out[i],
                      ref);
            goto done;
        }
    }
    if ((st = same_everywhere(comm, size, out, count * 4, "all_reduce f32 sum")) != TP_OK)
        goto done;
    /* in place, max and min: exact */
    for (tp_redop op = TP_MAX; op <= TP_MIN; op++) {
        for (size_t i = 0; i < count; i++)
            out[i] = xf(rank, i);
        if ((st = th_ops->all_reduce(comm, out, out, count, TP_F32, op)) != TP_OK)
            goto done;
        for (size_t i = 0; i < count; i++) {
            float ref = xf(0, i);
            for (int r = 1; r < size; r++)
                ref = op == TP_MAX ? fmaxf(ref, xf(r, i)) : fminf(ref, xf(r, i));
            if (out[i] != ref) {
                st = FAIL("all_reduce f32 %s in place count %zu: [%zu] = %.9g, expected %.9g",
                          op == TP_MAX ? "max" : "min", count, i, out[i], ref);
                goto done;
            }
        }
    }
    /* i32: exact */
    for (tp_redop op = TP_SUM; op <= TP_MIN; op++) {
        for (size_t i = 0; i < count; i++)
            ii[i] = xi(rank, i);
        if ((st = th_ops->all_reduce(comm, ii, io, count, TP_I32, op)) != TP_OK)
            goto done;
        for (size_t i = 0; i < count; i++) {
            int32_t ref = xi(0, i);
            for (int r = 1; r < size; r++) {
                int32_t v = xi(r, i);
                ref = op == TP_SUM   ? ref + v
                      : op == TP_MAX ? (v > ref ? v : ref)
                                     : (v < ref ? v : ref);
            }
            if (io[i] != ref) {
                st = FAIL("all_reduce i32 op %d count %zu: [%zu] = %d, expected %d", (int)op, count,
                          i, io[i], ref);
                goto done;
            }
        }
    }
    /* bf16 and f16 sums of small integers: exact */
    for (int half = 0; half < 2; half++) {
        for (size_t i = 0; i < count; i++)
            h[i] = half ? to_f16(xs(rank, i)) : to_bf16(xs(rank, i));
        if ((st = th_ops->all_reduce(comm, h, ho, count, half ? TP_F16 : TP_BF16, TP_SUM)) != TP_OK)
            goto done;
        for (size_t i = 0; i < count; i++) {
            float ref = 0;
            for (int r = 0; r < size; r++)
                ref += xs(r, i);
            float got = half ? from_f16(ho[i]) : from_bf16(ho[i]);
            if (got != ref) {
                st = FAIL("all_reduce %s sum count %zu: [%zu] = %g, expected %g",
                          half ? "f16" : "bf16", count, i, got, ref);
                goto done;
            }
        }
    }
done:
    free(in);
    free(out);
    free(ii);
    free(io);
    free(h);
    free(ho);
    return st;
}

/* Uneven blocks: counts[i] = (base + 3i) % 7, so some are 0. */
static void uneven(size_t base, int size, size_t *counts, size_t *total)
{
    *total = 0;
    for (int i = 0; i < size; i++) {
        counts[i] = (base + 3 * (size_t)i) % 7 + (base > 7 ? base : 0);
        *total += counts[i];
    }
}

static tp_status check_gather_scatter(void *comm, int rank, int size, size_t base)
{
    size_t counts[TH_MAX_RANKS], off[TH_MAX_RANKS], total;
    uneven(base, size, counts, &total);
    for (int i = 0; i < size; i++)
        off[i] = i ? off[i - 1] + counts[i - 1] : 0;
    tp_status st = TP_OK;
    float *all = malloc((total + 1) * sizeof *all), *mine = malloc((counts[rank] + 1) * 4);
    if (!all || !mine) {
        st = FAIL("out of memory");
        goto done;
    }
    for (int inplace = 0; inplace < 2; inplace++) {
        for (size_t i = 0; i < total; i++)
            all[i] = -1000.0f;
        for (size_t i = 0; i < counts[rank]; i++)
            mine[i] = xf(rank, i);
        const void *send = mine;
        if (inplace) {
            memcpy(all + off[rank], mine, counts[rank] * 4);
            send = all + off[rank];
        }
        if ((st = th_ops->all_gather(comm, send, all, counts, TP_F32)) != TP_OK)
            goto done;
        for (int r = 0; r < size; r++)
            for (size_t i = 0; i < counts[r]; i++)
                if (all[off[r] + i] != xf(r, i)) {
                    st = FAIL("all_gather%s base %zu: block %d [%zu] = %g, expected %g",
                              inplace ? " in place" : "", base, r, i, all[off[r] + i], xf(r, i));
                    goto done;
                }
    }
    /* reduce_scatter f32 sum over the same uneven blocks; tolerance as above */
    for (size_t i = 0; i < total; i++)
        all[i] = xf(rank, i);
    if ((st = th_ops->reduce_scatter(comm, all, mine, counts, TP_F32, TP_SUM)) != TP_OK)
        goto done;
    for (size_t i = 0; i < counts[rank]; i++) {
        double ref = 0;
        for (int r = 0; r < size; r++)
            ref += xf(r, off[rank] + i);
        if (fabs(mine[i] - ref) > 1e-5) {
            st =
                FAIL("reduce_scatter base %zu: [%zu] = %.9g, expected %.9g", base, i, mine[i], ref);
            goto done;
        }
    }
done:
    free(all);
    free(mine);
    return st;
}

static tp_status check_broadcast(void *comm, int rank, int size, size_t count)
{
    tp_status st = TP_OK;
    float *b = malloc((count + 1) * 4);
    if (!b)
        return FAIL("out of memory");
    for (int root = 0; root < size && st == TP_OK; root++) {
        for (size_t i = 0; i < count; i++)
            b[i] = rank == root ? xf(root, i) : -7.0f;
        if ((st = th_ops->broadcast(comm, b, count, TP_F32, root)) != TP_OK)
            break;
        for (size_t i = 0; i < count; i++)
            if (b[i] != xf(root, i)) {
                st = FAIL("broadcast root %d count %zu: [%zu] = %g, expected %g", root, count, i,
                          b[i], xf(root, i));
                break;
            }
    }
    free(b);
    return st;
}

static tp_status check_split(void *comm, int rank, int size)
{
    /* color: parity; rank 0 opts out when size >= 3; key reverses the order */
    int color = (size >= 3 && rank == 0) ? -1 : rank % 2;
    void *sub = NULL;
    int srank = -2, ssize = -2;
    tp_status st = th_ops->split(comm, color, size - rank, &sub, &srank, &ssize);
    if (st != TP_OK)
        return st;
    /* Collectives on the parent still work after the split. */
    if ((st = th_ops->barrier(comm)) != TP_OK)
        return st;
    if (color < 0) {
        if (sub)
            return FAIL("split color -1 returned a communicator");
        return TP_OK;
    }
    int members[TH_MAX_RANKS], m = 0;
    for (int r = size - 1; r >= 0; r--) /* key = size - r: descending rank */
        if (!(size >= 3 && r == 0) && r % 2 == color)
            members[m++] = r;
    int want_rank = -1;
    for (int j = 0; j < m; j++)
        if (members[j] == rank)
            want_rank = j;
    if (!sub || srank != want_rank || ssize != m) {
        th_ops->comm_free(sub);
        return FAIL("split color %d: got rank %d of %d, expected %d of %d", color, srank, ssize,
                    want_rank, m);
    }
    int32_t v = rank, sum = 0;
    if ((st = th_ops->all_reduce(sub, &v, &sum, 1, TP_I32, TP_SUM)) == TP_OK) {
        int32_t ref = 0;
        for (int j = 0; j < m; j++)
            ref += members[j];
        if (sum != ref)
            st = FAIL("all_reduce on split color %d: %d, expected %d", color, sum, ref);
    }
    if (st == TP_OK) {
        /* a broadcast on the sub-communicator from its last rank */
        float b[17];
        for (int i = 0; i < 17; i++)
            b[i] = srank == m - 1 ? xf(rank, (size_t)i) : 0;
        int root_world = members[m - 1];
        if ((st = th_ops->broadcast(sub, b, 17, TP_F32, m - 1)) == TP_OK)
            for (int i = 0; i < 17; i++)
                if (b[i] != xf(root_world, (size_t)i)) {
                    st = FAIL("broadcast on split color %d: [%d] = %g, expected %g", color, i, b[i],
                              xf(root_world, (size_t)i));
                    break;
                }
    }
    th_ops->comm_free(sub);
    return st;
}

tp_status tcp_check_all(void *comm, int rank, int size, int big)
{
    static const size_t counts[] = {0, 1, 13, 17, 1000};
    tp_status st;
    for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++) {
        if ((st = check_all_reduce(comm, rank, size, counts[k])) != TP_OK)
            return st;
        if ((st = check_gather_scatter(comm, rank, size, counts[k])) != TP_OK)
            return st;
        if ((st = check_broadcast(comm, rank, size, counts[k])) != TP_OK)
            return st;
        if ((st = th_ops->barrier(comm)) != TP_OK)
            return st;
    }
    if (big && (st = check_all_reduce(comm, rank, size, 300007)) != TP_OK)
        return st;
    return check_split(comm, rank, size);
}
