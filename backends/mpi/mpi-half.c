/* SPDX-License-Identifier: MIT */
/*
 * mpi-half.c — MPI reduction ops for IEEE binary16 (TP_F16) and bfloat16
 * (TP_BF16). MPI has no 16-bit float types, so buffers travel as
 * MPI_UINT16_T and these user ops combine two elements in f32 and round the
 * result back to 16 bits (round to nearest, ties to even). MPI reduces
 * pairwise, so a sum over n ranks rounds n-1 times, in the order of Open
 * MPI's algorithm; every rank receives the same bits. The conversions are
 * the SDK's (tp-plugin-util.h), as in the other comm plugins.
 */
#include "mpi-internal.h"

static float f_sum(float a, float b)
{
    return a + b;
}
static float f_max(float a, float b)
{
    return a != a ? a : (b != b ? b : (a > b ? a : b));
}
static float f_min(float a, float b)
{
    return a != a ? a : (b != b ? b : (a < b ? a : b));
}

/* inout[i] = round16(OP(in[i], inout[i])) */
#define MPI_HALF_OP(NAME, TO_F32, FROM_F32, OP)                                                    \
    void NAME(void *in, void *inout, int *len, MPI_Datatype *dt)                                   \
    {                                                                                              \
        (void)dt;                                                                                  \
        const uint16_t *a = in;                                                                    \
        uint16_t *b = inout;                                                                       \
        for (int i = 0; i < *len; i++)                                                             \
            b[i] = FROM_F32(OP(TO_F32(a[i]), TO_F32(b[i])));                                       \
    }

MPI_HALF_OP(mpi_half_sum, tp_util_f16_to_f32, tp_util_f32_to_f16, f_sum)
MPI_HALF_OP(mpi_half_max, tp_util_f16_to_f32, tp_util_f32_to_f16, f_max)
MPI_HALF_OP(mpi_half_min, tp_util_f16_to_f32, tp_util_f32_to_f16, f_min)
MPI_HALF_OP(mpi_bf16_sum, tp_util_bf16_to_f32, tp_util_f32_to_bf16, f_sum)
MPI_HALF_OP(mpi_bf16_max, tp_util_bf16_to_f32, tp_util_f32_to_bf16, f_max)
MPI_HALF_OP(mpi_bf16_min, tp_util_bf16_to_f32, tp_util_f32_to_bf16, f_min)
