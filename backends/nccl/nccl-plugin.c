/* SPDX-License-Identifier: MIT */
/*
 * nccl-plugin.c — libtp-nccl.so: the NCCL communicator plugin.
 *
 * TP_BACKEND=nccl runs the collectives with NCCL on CUDA device memory, on
 * the rank's CUDA stream (so they are ordered with the cuda device's GEMMs).
 * It needs the cuda device (TP_DEVICE=cuda, the default for nccl).
 *
 * Launch models (chosen in init, see nccl-engine.c):
 *   one process, several GPUs   T ranks as threads, rank i on the GPU the
 *                               cuda device gave it; T <= number of GPUs,
 *                               because NCCL refuses two ranks on one GPU.
 *   one process per GPU         under Open MPI's mpirun (or srun with PMIx):
 *                               the NCCL unique id is broadcast from rank 0
 *                               over MPI; libmpi is dlopen'ed only then, so
 *                               the plugin itself does not depend on MPI.
 *
 * Every comm is created nonblocking (ncclConfig_t.blocking = 0): init,
 * split and every collective are polled with ncclCommGetAsyncError and
 * cudaStreamQuery, and after TP_TIMEOUT_S the communicator is aborted
 * (ncclCommAbort) and the call returns TP_ERR_TIMEOUT. Nothing waits
 * forever. Collectives return when their result is in device memory.
 */
#include "nccl-internal.h"

/* Available when CUDA sees at least one GPU. Touches no NCCL state. */
static int nccl_probe(char *reason, size_t len)
{
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err == cudaSuccess && n > 0)
        return 1;
    if (reason && len)
        nccl_cuda_reason(err, n, reason, len);
    return 0;
}

static const tp_comm_ops nccl_comm_ops = {
    .struct_size = sizeof(tp_comm_ops),
    .init = nccl_init,
    .finalize = nccl_finalize,
    .world = nccl_world,
    .split = nccl_split,
    .comm_free = nccl_comm_free,
    .all_reduce = nccl_all_reduce,
    .all_gather = nccl_all_gather,
    .reduce_scatter = nccl_reduce_scatter,
    .broadcast = nccl_broadcast,
    .barrier = nccl_barrier,
    .mem_kinds = 1u << TP_MEM_CUDA,
    .iall_reduce = nccl_iall_reduce,
    .iall_gather = nccl_iall_gather,
    .ireduce_scatter = nccl_ireduce_scatter,
    .req_test = nccl_req_test,
    .req_wait = nccl_req_wait,
    .req_free = nccl_req_free,
};

#define NCCL_STR_(x) #x
#define NCCL_STR(x)  NCCL_STR_(x)

TP_PLUGIN_DEFINE("nccl", "0.1.0",
                 "NCCL " NCCL_STR(NCCL_MAJOR) "." NCCL_STR(NCCL_MINOR) "." NCCL_STR(
                     NCCL_PATCH) " collectives on CUDA memory: threads on one node's GPUs, or one "
                                 "process per GPU "
                                 "under mpirun",
                 &nccl_comm_ops, NULL, nccl_probe)

/* Listed by `tp-info nccl`. */
TP_PLUGIN_DEFINE_SETTINGS(
    {"TP_NCCL_LIBMPI", "libmpi.so.40",
     "MPI library opened to share the unique id when started under mpirun or srun"},
    {"TP_CUDA_DEVICE", "the local rank modulo the GPU count", "GPU of every rank"})
