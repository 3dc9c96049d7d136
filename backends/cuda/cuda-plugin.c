/* SPDX-License-Identifier: MIT */
/*
 * cuda-plugin.c — libtp-cuda.so: the cuda device's vtable and descriptor.
 *
 * Probe, context, memory, copies and events: cuda-device.c; GEMMs through
 * cuBLAS and cuBLASLt: cuda-gemm.c; element-wise and per-row kernels:
 * cuda-kernels.cu and cuda-rows.cu; errors and argument checks:
 * cuda-error.c.
 */
#include "cuda-internal.h"

static const tp_device_ops cuda_ops = {
    .struct_size = sizeof(tp_device_ops),
    .open = cuda_open,
    .close = cuda_close,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .copy_2d = cuda_copy_2d,
    .memset = cuda_memset,
    .synchronize = cuda_synchronize,
    .gemm = cuda_gemm,
    .bias_add = cuda_bias_add,
    .bias_grad = cuda_bias_grad,
    .gelu = cuda_gelu,
    .gelu_bwd = cuda_gelu_bwd,
    .axpby = cuda_axpby,
    .softmax = cuda_softmax,
    .softmax_bwd = cuda_softmax_bwd,
    .norm = cuda_norm,
    .norm_bwd = cuda_norm_bwd,
    .embedding = cuda_embedding,
    .embedding_bwd = cuda_embedding_bwd,
    .row_max = cuda_row_max,
    .ce_stats = cuda_ce_stats,
    .ce_bwd = cuda_ce_bwd,
    .adamw = cuda_adamw,
    .reduce = cuda_reduce,
    .host_alloc = cuda_host_alloc,
    .host_free = cuda_host_free,
    .gemm_bias_act = cuda_gemm_bias_act,
    .event_create = cuda_event_create,
    .event_record = cuda_event_record,
    .event_elapsed = cuda_event_elapsed,
    .event_destroy = cuda_event_destroy,
};

TP_PLUGIN_DEFINE("cuda", "0.1.0",
                 "CUDA device memory, cuBLAS/cuBLASLt GEMMs and CUDA "
                 "kernels (f32, bf16, f16)",
                 NULL, &cuda_ops, cuda_probe)

/* Listed by `tp-info cuda`; pick_device and cuda_open read them. */
TP_PLUGIN_DEFINE_SETTINGS(
    {"TP_CUDA_DEVICE", "the local rank modulo the GPU count",
     "GPU of every rank; the local rank is the process's rank index, else "
     "OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID, SLURM_LOCALID or LOCAL_RANK"},
    {"TP_CUDA_TF32", "0", "1: allow TF32 tensor cores for f32 GEMMs"})
