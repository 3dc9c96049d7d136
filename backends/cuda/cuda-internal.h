/* SPDX-License-Identifier: MIT */
/*
 * cuda-internal.h — shared between the files of the cuda device plugin only
 * (C and CUDA C++).
 *
 * One context per rank: its GPU, a non-blocking stream every op is enqueued
 * on, a cuBLAS handle bound to that stream, and a cuBLASLt handle with its
 * workspace for the fused GEMM epilogues (gemm_bias_act). Memory is cudaMalloc'd
 * device memory. Element-wise kernels take f32, bf16 or f16 tensors and
 * compute in f32; per-row statistics are f32. Reductions run in a fixed
 * order (no float atomics), so results are the same on every run.
 *
 * Files call downwards only: cuda-plugin (the vtable) -> cuda-device,
 * cuda-gemm -> cuda-kernels, cuda-rows -> cuda-error (the leaf).
 */
#ifndef TP_CUDA_INTERNAL_H
#define TP_CUDA_INTERNAL_H

/* cublasLt.h declares a function with () in C: not our warning to fix. */
#if defined(__GNUC__) && !defined(__cplusplus)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#endif
#include <cublasLt.h>
#if defined(__GNUC__) && !defined(__cplusplus)
#pragma GCC diagnostic pop
#endif
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <tp/tp-plugin-util.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CUDA_MAX_GPUS 64 /* GPUs per process that reduce can reach (peer access) */

/* One cuBLASLt choice of gemm_bias_act for a shape, epilogue and pointer
 * alignments (compared with memcmp: built zeroed). */
typedef struct cuda_lt_key {
    int64_t m, n, k, lda, ldb, ldc;
    int32_t dtype, trans_a, trans_b, tf32;
    uint32_t epilogue, align[5]; /* a, b, c, bias, pre */
} cuda_lt_key;

#define CUDA_LT_CACHE 16
typedef struct cuda_lt_entry {
    int used;
    cuda_lt_key key;
    cublasLtMatmulAlgo_t algo; /* the heuristic's first choice */
} cuda_lt_entry;

typedef struct cuda_dev {
    const tp_host *host;
    int rank;   /* world rank, for messages */
    int device; /* CUDA ordinal */
    cudaStream_t stream;
    cublasHandle_t blas;
    int tf32;            /* TP_CUDA_TF32=1: f32 GEMMs may use TF32 tensor cores */
    cublasLtHandle_t lt; /* for gemm_bias_act */
    void *lt_ws;         /* cuBLASLt workspace, used only on `stream` (NULL: none) */
    size_t lt_ws_size;
    cuda_lt_entry lt_cache[CUDA_LT_CACHE]; /* heuristic results, replaced round robin */
    unsigned lt_next;
    /* peer[j]: kernels on this rank's GPU may access GPU j's memory (peer
     * access enabled in open, or j is this GPU) */
    unsigned char peer[CUDA_MAX_GPUS];
} cuda_dev;

/* cuda-error.c: reporting and the common argument checks (calls no other file) */

/* The host of the first open(); the same for every rank of the process. */
extern const tp_host *cuda_host;

/* Report through the host; messages start with "cuda device: ". */
tp_status cuda_err(tp_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* A CUDA runtime error from `what` in `op` -> TP_ERR_DEVICE (or NO_MEMORY). */
tp_status cuda_rt_err(cudaError_t e, const char *op, const char *what);

/* Argument checks; each returns TP_OK or reports. */
tp_status cuda_check_dev(const void *dev, const char *op);
tp_status cuda_check_float_dt(tp_dtype dt, const char *op); /* f32, bf16, f16 */
tp_status cuda_check_count(int64_t v, const char *op, const char *what);
tp_status cuda_check_dims(const char *op, int64_t rows, int64_t cols, const char *rname,
                          const char *cname);
tp_status cuda_check_ptr(const void *p, int64_t count, const char *op, const char *what);
tp_status cuda_check_id_range(const char *op, int64_t lo, int64_t hi); /* lo <= hi */

/* After launching kernels: report a launch error. */
tp_status cuda_launched(const char *op);

/* cuda-device.c: probe, lifetime, memory, copies, events */
int cuda_probe(char *reason, size_t len);
tp_status cuda_open(const tp_host *host, const tp_device_args *args, void **dev, tp_rank_env *env);
void cuda_close(void *dev);
tp_status cuda_alloc(void *dev, size_t bytes, void **ptr);
void cuda_free(void *dev, void *ptr);
tp_status cuda_host_alloc(void *dev, size_t bytes, void **ptr);
void cuda_host_free(void *dev, void *ptr);
tp_status cuda_upload(void *dev, void *dst, const void *host_src, size_t bytes);
tp_status cuda_download(void *dev, void *host_dst, const void *src, size_t bytes);
tp_status cuda_copy_2d(void *dev, void *dst, size_t dpitch, const void *src, size_t spitch,
                       size_t width_bytes, size_t height);
tp_status cuda_memset(void *dev, void *ptr, int value, size_t bytes);
tp_status cuda_synchronize(void *dev);
tp_status cuda_event_create(void *dev, void **event);
tp_status cuda_event_record(void *dev, void *event);
tp_status cuda_event_elapsed(void *dev, const void *start, const void *stop, double *seconds);
void cuda_event_destroy(void *dev, void *event);

/* cuda-gemm.c */
tp_status cuda_gemm(void *dev, const tp_gemm_args *g);
tp_status cuda_gemm_bias_act(void *dev, const tp_gemm_args *g, const void *bias, tp_act act,
                             void *pre);

/* cuda-kernels.cu */
tp_status cuda_gemm_scale(cuda_dev *d, tp_dtype dt, int64_t m, int64_t n, float beta, void *c,
                          int64_t ldc, int64_t stride_c, int64_t batch);
tp_status cuda_bias_add(void *dev, tp_dtype dt, int64_t rows, int64_t cols, void *y,
                        const void *bias);
tp_status cuda_bias_grad(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *dy,
                         void *db);
tp_status cuda_gelu(void *dev, tp_dtype dt, int64_t n, const void *x, void *y, int tanh_approx);
tp_status cuda_gelu_bwd(void *dev, tp_dtype dt, int64_t n, const void *x, const void *dy, void *dx,
                        int tanh_approx);
tp_status cuda_axpby(void *dev, tp_dtype dt, int64_t n, float alpha, const void *x, float beta,
                     void *y);
tp_status cuda_embedding(void *dev, tp_dtype dt, int64_t n, int64_t dim, const int32_t *ids,
                         int64_t lo, int64_t hi, const void *table, void *out);
tp_status cuda_embedding_bwd(void *dev, tp_dtype dt, int64_t n, int64_t dim, const int32_t *ids,
                             int64_t lo, int64_t hi, const void *dout, void *dtable);
tp_status cuda_reduce(void *dev, tp_dtype dt, tp_redop op, int64_t n, const void *x, void *y);
tp_status cuda_adamw(void *dev, int64_t n, float *param, const float *grad, float *m, float *v,
                     float lr, float beta1, float beta2, float eps, float weight_decay,
                     int64_t step);

/* cuda-rows.cu: one thread block per row */
tp_status cuda_softmax(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x, void *y,
                       float scale, int causal);
tp_status cuda_softmax_bwd(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *y,
                           const void *dy, void *dx, float scale);
tp_status cuda_norm(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                    const void *gamma, const void *beta, void *y, float *mean, float *rstd,
                    float eps, int rms);
tp_status cuda_norm_bwd(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                        const void *gamma, const float *mean, const float *rstd, const void *dy,
                        void *dx, void *dgamma, void *dbeta, int rms);
tp_status cuda_row_max(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                       float *out);
tp_status cuda_ce_stats(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *logits,
                        const int32_t *targets, int64_t lo, const float *rowmax, float *out3);
tp_status cuda_ce_bwd(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *logits,
                      const int32_t *targets, int64_t lo, int64_t vocab, const float *rowmax,
                      const float *sumexp, const float *row_scale, float smoothing, void *dlogits);

#ifdef __cplusplus
}
#endif
#endif /* TP_CUDA_INTERNAL_H */
