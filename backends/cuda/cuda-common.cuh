/* SPDX-License-Identifier: MIT */
/*
 * cuda-common.cuh — device helpers shared by the .cu files of this plugin:
 * load/store of f32, bf16 and f16 as f32, dtype dispatch, launch sizes and
 * fixed-order block reductions.
 */
#ifndef TP_CUDA_COMMON_CUH
#define TP_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "cuda-internal.h"

#define THREADS 256 /* threads per block, a multiple of 32 */

/* Element i of a tensor as f32, and storing f32 (rounded to nearest even). */
#define DEVFN __device__ __forceinline__
DEVFN float ldf(const float *p, int64_t i)
{
    return p[i];
}
DEVFN float ldf(const __nv_bfloat16 *p, int64_t i)
{
    return __bfloat162float(p[i]);
}
DEVFN float ldf(const __half *p, int64_t i)
{
    return __half2float(p[i]);
}
DEVFN void stf(float *p, int64_t i, float v)
{
    p[i] = v;
}
DEVFN void stf(__nv_bfloat16 *p, int64_t i, float v)
{
    p[i] = __float2bfloat16(v);
}
DEVFN void stf(__half *p, int64_t i, float v)
{
    p[i] = __float2half(v);
}

/* Run STMT with T the storage type of dtype DT (f32, bf16, f16). */
#define TP_DISPATCH(DT, STMT)                                                                      \
    switch (DT) {                                                                                  \
        case TP_F32: {                                                                             \
            typedef float T;                                                                       \
            STMT;                                                                                  \
        } break;                                                                                   \
        case TP_BF16: {                                                                            \
            typedef __nv_bfloat16 T;                                                               \
            STMT;                                                                                  \
        } break;                                                                                   \
        case TP_F16: {                                                                             \
            typedef __half T;                                                                      \
            STMT;                                                                                  \
        } break;                                                                                   \
        default: break;                                                                            \
    }

/* Blocks for a grid-stride loop over n elements. */
static inline unsigned grid_for(int64_t n)
{
    int64_t b = (n + THREADS - 1) / THREADS;
    if (b < 1)
        b = 1;
    return (unsigned)(b > 65535 * 8 ? 65535 * 8 : b);
}

/* Sum / max of v over the block, in a fixed order (shuffles within warps,
 * then the warps' partials by warp 0); every thread gets the result.
 * `red` is shared scratch of at least 32 floats. */
__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float block_sum(float v, float *red)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); /* red may still be read from a previous reduction */
    if (lane == 0)
        red[warp] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float *red)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0)
        red[warp] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : -INFINITY;
    return warp_max(v);
}

#endif /* TP_CUDA_COMMON_CUH */
