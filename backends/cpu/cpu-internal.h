/* SPDX-License-Identifier: MIT */
/*
 * cpu-internal.h — shared between the files of the cpu device plugin only.
 *
 * The cpu device keeps tensors in ordinary host memory, runs every op
 * synchronously on the calling rank's thread (so it has no stream), does
 * GEMMs with OpenBLAS and the element-wise kernels in plain C loops.
 *
 * The ops in cpu-gemm.c, cpu-kernels.c, cpu-norm.c and cpu-ce.c compute f32
 * only. cpu-lowp.c wraps them for bf16 and f16 storage: it converts the
 * typed operands to f32 scratch, runs the f32 op, and rounds the results
 * back (to nearest even), so low-precision results are the f32 results
 * rounded once. The vtable (cpu-plugin.c) points at those wrappers.
 *
 * Files call downwards only: cpu-plugin -> cpu-lowp -> cpu-gemm ->
 * cpu-kernels, cpu-norm, cpu-ce, cpu-device -> cpu-error (the leaf).
 */
#ifndef TP_CPU_INTERNAL_H
#define TP_CPU_INTERNAL_H

#include <tp/tp-plugin-util.h>

#define CPU_LP_SLOTS 8 /* f32 scratch buffers of one bf16/f16 op (cpu-lowp.c) */

typedef struct cpu_dev {
    const tp_host *host;
    int rank;    /* world rank, for messages */
    int threads; /* BLAS threads requested for this rank */
    /* cpu-lowp.c's grow-only f32 scratch, kept between calls (no page
     * faults on every call); freed by cpu_close */
    float *lp[CPU_LP_SLOTS];
    size_t lp_n[CPU_LP_SLOTS];
} cpu_dev;

/* cpu-error.c: reporting and the common argument checks (calls no other file) */

/* The host of the first open(); the same for every rank of the process.
 * Lets ops report a NULL device handle. */
extern const tp_host *cpu_host;

/* Report through the host (or just return `st` if no device was ever
 * opened). Messages start with "cpu device: OP: ". */
tp_status cpu_err(tp_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Common checks of an op's arguments; each returns TP_OK or reports. */
tp_status cpu_check_dev(const void *dev, const char *op);
tp_status cpu_check_f32(tp_dtype dt, const char *op);
tp_status cpu_check_count(int64_t v, const char *op, const char *what);
/* rows, cols >= 0 and rows x cols f32 elements addressable. */
tp_status cpu_check_dims(const char *op, int64_t rows, int64_t cols, const char *rname,
                         const char *cname);
tp_status cpu_check_ptr(const void *p, int64_t count, const char *op, const char *what);
tp_status cpu_check_id_range(const char *op, int64_t lo, int64_t hi); /* lo <= hi */

/* cpu-device.c: lifetime, memory and copies */
tp_status cpu_open(const tp_host *host, const tp_device_args *args, void **dev, tp_rank_env *env);
void cpu_close(void *dev);
tp_status cpu_alloc(void *dev, size_t bytes, void **ptr);
void cpu_free(void *dev, void *ptr);
tp_status cpu_upload(void *dev, void *dst, const void *host_src, size_t bytes);
tp_status cpu_download(void *dev, void *host_dst, const void *src, size_t bytes);
tp_status cpu_copy_2d(void *dev, void *dst, size_t dpitch, const void *src, size_t spitch,
                      size_t width_bytes, size_t height);
tp_status cpu_memset(void *dev, void *ptr, int value, size_t bytes);
tp_status cpu_synchronize(void *dev);

/* cpu-gemm.c */
tp_status cpu_gemm(void *dev, const tp_gemm_args *g);       /* f32 only */
tp_status cpu_gemm_check(void *dev, const tp_gemm_args *g); /* all checks but the dtype */
void cpu_blas_threads(int threads);
tp_status cpu_gemm_bias_act(void *dev, const tp_gemm_args *g, const void *bias, tp_act act,
                            void *pre); /* f32 only */
/* c[r, j] = act(c[r, j] + bias[j]) for rows x cols (pitch ldc); pre (same
 * pitch, may be NULL) gets the value before act; bias may be NULL. */
void cpu_bias_act_rows(int64_t rows, int64_t cols, float *c, int64_t ldc, const float *bias,
                       tp_act act, float *pre);
tp_status cpu_reduce(void *dev, tp_dtype dt, tp_redop op, int64_t n, const void *x, void *y);

/* cpu-kernels.c */
tp_status cpu_bias_add(void *dev, tp_dtype dt, int64_t rows, int64_t cols, void *y,
                       const void *bias);
tp_status cpu_bias_grad(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *dy,
                        void *db);
tp_status cpu_gelu(void *dev, tp_dtype dt, int64_t n, const void *x, void *y, int tanh_approx);
tp_status cpu_gelu_bwd(void *dev, tp_dtype dt, int64_t n, const void *x, const void *dy, void *dx,
                       int tanh_approx);
tp_status cpu_axpby(void *dev, tp_dtype dt, int64_t n, float alpha, const void *x, float beta,
                    void *y);
tp_status cpu_softmax(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x, void *y,
                      float scale, int causal);
tp_status cpu_softmax_bwd(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *y,
                          const void *dy, void *dx, float scale);
tp_status cpu_embedding(void *dev, tp_dtype dt, int64_t n, int64_t dim, const int32_t *ids,
                        int64_t lo, int64_t hi, const void *table, void *out);
tp_status cpu_embedding_bwd(void *dev, tp_dtype dt, int64_t n, int64_t dim, const int32_t *ids,
                            int64_t lo, int64_t hi, const void *dout, void *dtable);
tp_status cpu_adamw(void *dev, int64_t n, float *param, const float *grad, float *m, float *v,
                    float lr, float beta1, float beta2, float eps, float weight_decay,
                    int64_t step);

/* cpu-lowp.c: the vtable's typed slots; f32 goes straight to the ops above */
tp_status cpu_lp_gemm(void *dev, const tp_gemm_args *g);
tp_status cpu_lp_gemm_bias_act(void *dev, const tp_gemm_args *g, const void *bias, tp_act act,
                               void *pre);
tp_status cpu_lp_reduce(void *dev, tp_dtype dt, tp_redop op, int64_t n, const void *x, void *y);
tp_status cpu_lp_bias_add(void *dev, tp_dtype dt, int64_t rows, int64_t cols, void *y,
                          const void *bias);
tp_status cpu_lp_bias_grad(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *dy,
                           void *db);
tp_status cpu_lp_gelu(void *dev, tp_dtype dt, int64_t n, const void *x, void *y, int tanh_approx);
tp_status cpu_lp_gelu_bwd(void *dev, tp_dtype dt, int64_t n, const void *x, const void *dy,
                          void *dx, int tanh_approx);
tp_status cpu_lp_axpby(void *dev, tp_dtype dt, int64_t n, float alpha, const void *x, float beta,
                       void *y);
tp_status cpu_lp_softmax(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x, void *y,
                         float scale, int causal);
tp_status cpu_lp_softmax_bwd(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *y,
                             const void *dy, void *dx, float scale);
tp_status cpu_lp_norm(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                      const void *gamma, const void *beta, void *y, float *mean, float *rstd,
                      float eps, int rms);
tp_status cpu_lp_norm_bwd(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                          const void *gamma, const float *mean, const float *rstd, const void *dy,
                          void *dx, void *dgamma, void *dbeta, int rms);
tp_status cpu_lp_embedding(void *dev, tp_dtype dt, int64_t n, int64_t dim, const int32_t *ids,
                           int64_t lo, int64_t hi, const void *table, void *out);
tp_status cpu_lp_embedding_bwd(void *dev, tp_dtype dt, int64_t n, int64_t dim, const int32_t *ids,
                               int64_t lo, int64_t hi, const void *dout, void *dtable);
tp_status cpu_lp_row_max(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                         float *out);
tp_status cpu_lp_ce_stats(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *logits,
                          const int32_t *targets, int64_t lo, const float *rowmax, float *out3);
tp_status cpu_lp_ce_bwd(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *logits,
                        const int32_t *targets, int64_t lo, int64_t vocab, const float *rowmax,
                        const float *sumexp, const float *row_scale, float smoothing,
                        void *dlogits);

/* cpu-norm.c */
tp_status cpu_norm(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                   const void *gamma, const void *beta, void *y, float *mean, float *rstd,
                   float eps, int rms);
tp_status cpu_norm_bwd(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                       const void *gamma, const float *mean, const float *rstd, const void *dy,
                       void *dx, void *dgamma, void *dbeta, int rms);

/* cpu-ce.c */
tp_status cpu_row_max(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *x,
                      float *out);
tp_status cpu_ce_stats(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *logits,
                       const int32_t *targets, int64_t lo, const float *rowmax, float *out3);
tp_status cpu_ce_bwd(void *dev, tp_dtype dt, int64_t rows, int64_t cols, const void *logits,
                     const int32_t *targets, int64_t lo, int64_t vocab, const float *rowmax,
                     const float *sumexp, const float *row_scale, float smoothing, void *dlogits);

#endif /* TP_CPU_INTERNAL_H */
