/* SPDX-License-Identifier: MIT */
/* rng.c — shard ranges and the counter-based master-weight RNG. */
#include "tp-internal.h"

void tp_shard_range(int64_t n, int parts, int index, int64_t *lo, int64_t *hi)
{
    int64_t l = 0, h = 0;
    if (n > 0 && parts > 0 && index >= 0 && index < parts) {
        int64_t base = n / parts, rem = n % parts;
        l = index * base + (index < rem ? index : rem);
        h = l + base + (index < rem ? 1 : 0);
    }
    if (lo)
        *lo = l;
    if (hi)
        *hi = h;
}

/* SplitMix64's output function: a bijective 64-bit mixer. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

float tp_master_uniform(uint64_t seed, uint64_t tensor_id, uint64_t index, float bound)
{
    /* Chain the three counters through the mixer, each step offset by a
     * different odd constant so (a, b, c) and permutations differ. */
    uint64_t h = mix64(seed + 0x9e3779b97f4a7c15ULL);
    h = mix64(h ^ (tensor_id + 0x632be59bd9b4e019ULL));
    h = mix64(h ^ (index + 0x85157af5ULL));
    /* Top 24 bits: k in [-2^23, 2^23), so k * bound / 2^23 is in
     * [-bound, bound) and exact in float up to the final rounding. */
    int32_t k = (int32_t)(h >> 40) - (1 << 23);
    return (float)k * (bound * 0x1p-23f);
}

void tp_master_fill(uint64_t seed, uint64_t tensor_id, int64_t full_cols, int64_t rows_lo,
                    int64_t rows_hi, int64_t cols_lo, int64_t cols_hi, float bound, float *out)
{
    if (!out || rows_lo < 0 || cols_lo < 0 || rows_hi <= rows_lo || cols_hi <= cols_lo ||
        cols_hi > full_cols)
        return;
    int64_t w = cols_hi - cols_lo;
    for (int64_t r = rows_lo; r < rows_hi; r++)
        for (int64_t c = cols_lo; c < cols_hi; c++)
            out[(r - rows_lo) * w + c - cols_lo] =
                tp_master_uniform(seed, tensor_id, (uint64_t)(r * full_cols + c), bound);
}
