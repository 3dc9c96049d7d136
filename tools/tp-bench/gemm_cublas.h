/* SPDX-License-Identifier: MIT */
/*
 * gemm_cublas.h — `tp-bench gemm`'s direct cuBLAS comparison for the cuda
 * device. Built only when meson finds CUDA (TP_BENCH_HAVE_CUBLAS is then
 * defined for gemm.c); the functions report errors with tp_set_error.
 */
#ifndef TP_BENCH_GEMM_CUBLAS_H
#define TP_BENCH_GEMM_CUBLAS_H

#include <stddef.h>
#include <stdint.h>

#include <tp/tp.h>

typedef struct bench_cublas bench_cublas;

/* Open on this thread's current CUDA device (the one the vtable device
 * selected when it opened on this rank's thread), with its own cuBLAS
 * handle on its own non-blocking stream. `vtable_buf` is a buffer from
 * tp_dev_alloc: it must be device memory of that same GPU. TF32 for f32
 * follows TP_CUDA_TF32=1, as the cuda device does. */
tp_status bench_cublas_open(const void *vtable_buf, bench_cublas **out);
void bench_cublas_close(bench_cublas *cb); /* NULL is a no-op */

/* "GPU 0 (NVIDIA H100 80GB HBM3), f32 compute" — for the header line. */
const char *bench_cublas_describe(const bench_cublas *cb);

/* Enqueue `reps` row-major square GEMMs C = A B (n x n, dtype f32, bf16
 * or f16, f32 accumulation) with cublasGemmEx on the own stream. */
tp_status bench_cublas_gemm(bench_cublas *cb, tp_dtype dt, int64_t n, const void *a, const void *b,
                            void *c, int reps);
tp_status bench_cublas_sync(bench_cublas *cb); /* wait for the own stream */

#endif /* TP_BENCH_GEMM_CUBLAS_H */
