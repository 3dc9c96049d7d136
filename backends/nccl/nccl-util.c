/* SPDX-License-Identifier: MIT */
/*
 * nccl-util.c — helpers every file of the nccl plugin may call: NCCL and
 * CUDA results as tp statuses and messages, the clock and the polling
 * backoff. A leaf: it calls none of the other files.
 */
#include <sched.h>
#include <stdio.h>
#include <time.h>

#include "nccl-internal.h"

double nccl_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void nccl_backoff(double t0)
{
    if (nccl_now() - t0 < 2e-3) {
        sched_yield();
    } else {
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
}

tp_status nccl_status_of(ncclResult_t r)
{
    switch (r) {
        case ncclSuccess: return TP_OK;
        case ncclUnhandledCudaError: return TP_ERR_DEVICE;
        case ncclInvalidArgument: return TP_ERR_INVALID_ARG;
        case ncclRemoteError: return TP_ERR_PEER;
        default: /* system, internal, invalid usage, in progress */ return TP_ERR_COMM;
    }
}

void nccl_cuda_reason(cudaError_t err, int count, char *buf, size_t len)
{
    int drv = 0, rt = 0;
    cudaDriverGetVersion(&drv);
    cudaRuntimeGetVersion(&rt);
    if (err == cudaSuccess) {
        snprintf(buf, len, "no CUDA device: cudaGetDeviceCount found %d GPUs", count);
    } else if (err == cudaErrorNoDevice) {
        snprintf(buf, len, "no CUDA device: cudaGetDeviceCount returned cudaErrorNoDevice (%s)",
                 cudaGetErrorString(err));
    } else if (err == cudaErrorInsufficientDriver && drv == 0) {
        snprintf(buf, len,
                 "no CUDA device: no NVIDIA driver (libcuda.so.1) is installed; "
                 "cudaGetDeviceCount returned cudaErrorInsufficientDriver, runtime CUDA %d.%d",
                 rt / 1000, rt % 1000 / 10);
    } else if (err == cudaErrorInsufficientDriver) {
        snprintf(buf, len,
                 "CUDA driver too old: cudaErrorInsufficientDriver: the driver supports CUDA "
                 "%d.%d, this plugin needs runtime CUDA %d.%d; update the NVIDIA driver",
                 drv / 1000, drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
    } else {
        snprintf(buf, len, "CUDA unusable: cudaGetDeviceCount returned %s (%s)",
                 cudaGetErrorName(err), cudaGetErrorString(err));
    }
}
