/* SPDX-License-Identifier: MIT */
/*
 * cpu-plugin.c — libtp-cpu.so: the cpu device's vtable and descriptor.
 *
 * Host memory (cpu-device.c), OpenBLAS sgemm (cpu-gemm.c) and plain C
 * kernels (cpu-kernels.c, cpu-norm.c, cpu-ce.c), all f32; the typed slots
 * go through cpu-lowp.c, which adds bf16 and f16 storage. Errors and
 * argument checks: cpu-error.c.
 */
#include "cpu-internal.h"

static const tp_device_ops cpu_ops = {
    .struct_size = sizeof(tp_device_ops),
    .open = cpu_open,
    .close = cpu_close,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .copy_2d = cpu_copy_2d,
    .memset = cpu_memset,
    .synchronize = cpu_synchronize,
    .gemm = cpu_lp_gemm,
    .bias_add = cpu_lp_bias_add,
    .bias_grad = cpu_lp_bias_grad,
    .gelu = cpu_lp_gelu,
    .gelu_bwd = cpu_lp_gelu_bwd,
    .axpby = cpu_lp_axpby,
    .softmax = cpu_lp_softmax,
    .softmax_bwd = cpu_lp_softmax_bwd,
    .norm = cpu_lp_norm,
    .norm_bwd = cpu_lp_norm_bwd,
    .embedding = cpu_lp_embedding,
    .embedding_bwd = cpu_lp_embedding_bwd,
    .row_max = cpu_lp_row_max,
    .ce_stats = cpu_lp_ce_stats,
    .ce_bwd = cpu_lp_ce_bwd,
    .adamw = cpu_adamw,
    .reduce = cpu_lp_reduce,
    .gemm_bias_act = cpu_lp_gemm_bias_act,
};

TP_PLUGIN_DEFINE("cpu", "0.1.0",
                 "host memory, OpenBLAS sgemm and C kernels (f32; bf16/f16 storage)", NULL,
                 &cpu_ops, NULL)

/* Listed by `tp-info cpu`. */
TP_PLUGIN_DEFINE_SETTINGS({"TP_CPU_THREADS", "1",
                           "BLAS threads per rank (read by libtp, given to open() as "
                           "cpu_threads)"})
