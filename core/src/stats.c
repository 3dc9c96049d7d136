/* SPDX-License-Identifier: MIT */
/* stats.c — the counters of a comm and its device, per phase and op. */
#include <string.h>

#include "tp-internal.h"

void tp_stats_get(const tp_comm *comm, tp_stats *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof *out);
    if (!comm)
        return;
    tpi_device_read_timings(comm->dev);
    memcpy(out->comm, comm->counters, sizeof out->comm);
    if (comm->dev) {
        memcpy(out->gemm, comm->dev->gemm, sizeof out->gemm);
        memcpy(out->gemm_flops, comm->dev->gemm_flops, sizeof out->gemm_flops);
        memcpy(out->kernel, comm->dev->kernel, sizeof out->kernel);
    }
}

void tp_stats_reset(tp_comm *comm)
{
    if (!comm)
        return;
    tpi_device_read_timings(comm->dev); /* so that no earlier call adds to the zeroed counters */
    memset(comm->counters, 0, sizeof comm->counters);
    if (comm->dev) {
        memset(comm->dev->gemm, 0, sizeof comm->dev->gemm);
        memset(comm->dev->gemm_flops, 0, sizeof comm->dev->gemm_flops);
        memset(comm->dev->kernel, 0, sizeof comm->dev->kernel);
    }
}

tp_phase tp_phase_set(tp_comm *comm, tp_phase phase)
{
    if (!comm)
        return TP_PHASE_OTHER;
    tp_phase prev = comm->state->phase;
    if ((unsigned)phase < TP_PHASE_COUNT)
        comm->state->phase = phase;
    return prev;
}

uint64_t tp_stats_calls(const tp_stats *s, tp_phase phase, tp_op op)
{
    if (!s)
        return 0;
    uint64_t n = 0;
    for (int p = 0; p < TP_PHASE_COUNT; p++)
        for (int o = 0; o < TP_OP_COUNT; o++)
            if ((phase == TP_PHASE_COUNT || (int)phase == p) && (op == TP_OP_COUNT || (int)op == o))
                n += s->comm[p][o].calls;
    return n;
}
