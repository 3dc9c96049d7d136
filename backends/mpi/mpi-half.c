/*
 * mpi-half.c — MPI reduction ops for IEEE binary16 (TP_F16) and bfloat16
 * (TP_BF16). MPI has no 16-bit float types, so buffers travel as
 * MPI_UINT16_T and these user ops combine two elements in f32 and round the
 * result back to 16 bits (round to nearest, ties to even). MPI reduces
 * pairwise, so a sum over n ranks rounds n-1 times, in the order of Open
 * MPI's algorithm; every rank receives the same bits.
 */
#include "mpi-internal.h"

#include <string.h>

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float mpi_half_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0) { /* zero or subnormal: man * 2^-24, exact in f32 */
        float f = (float)man * 0x1p-24f;
        return bits_f32(f32_bits(f) | sign);
    }
    if (exp == 31) /* inf or nan, payload kept */
        return bits_f32(sign | 0x7f800000u | (man << 13));
    return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

uint16_t mpi_f32_to_half(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) /* nan: quiet nan */
        return (uint16_t)(sign | 0x7e00u);
    if (a >= 0x477ff000u) /* >= 65520 rounds to inf (65504 is the largest half) */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) { /* below 2^-14: subnormal half or zero */
        /* 0.5f has an ulp of 2^-24, the half subnormal step: the f32 add
         * rounds |f| to a multiple of it, ties to even. */
        float r = bits_f32(a) + 0.5f;
        return (uint16_t)(sign | (f32_bits(r) - 0x3f000000u));
    }
    uint32_t odd = (a >> 13) & 1u;
    a += 0xc8000000u + 0xfffu + odd; /* exponent bias 127 -> 15, round to nearest even */
    return (uint16_t)(sign | (a >> 13));
}

float mpi_bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

uint16_t mpi_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) /* nan: keep it a quiet nan */
        return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

static float f_sum(float a, float b) { return a + b; }
static float f_max(float a, float b) { return a != a ? a : (b != b ? b : (a > b ? a : b)); }
static float f_min(float a, float b) { return a != a ? a : (b != b ? b : (a < b ? a : b)); }

/* inout[i] = round16(OP(in[i], inout[i])) */
#define MPI_HALF_OP(NAME, TO_F32, FROM_F32, OP)                                 \
    void NAME(void *in, void *inout, int *len, MPI_Datatype *dt)               \
    {                                                                          \
        (void)dt;                                                              \
        const uint16_t *a = in;                                                \
        uint16_t *b = inout;                                                   \
        for (int i = 0; i < *len; i++)                                         \
            b[i] = FROM_F32(OP(TO_F32(a[i]), TO_F32(b[i])));                   \
    }

MPI_HALF_OP(mpi_half_sum, mpi_half_to_f32, mpi_f32_to_half, f_sum)
MPI_HALF_OP(mpi_half_max, mpi_half_to_f32, mpi_f32_to_half, f_max)
MPI_HALF_OP(mpi_half_min, mpi_half_to_f32, mpi_f32_to_half, f_min)
MPI_HALF_OP(mpi_bf16_sum, mpi_bf16_to_f32, mpi_f32_to_bf16, f_sum)
MPI_HALF_OP(mpi_bf16_max, mpi_bf16_to_f32, mpi_f32_to_bf16, f_max)
MPI_HALF_OP(mpi_bf16_min, mpi_bf16_to_f32, mpi_f32_to_bf16, f_min)
