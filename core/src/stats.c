/* SPDX-License-Identifier: MIT */
/* stats.c — the counters of a comm and its device, per phase and op, and
 * the split of the collectives' time into waiting and transfer. */
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
    memcpy(out->icomm, comm->icounters, sizeof out->icomm);
    if (comm->dev) {
        memcpy(out->gemm, comm->dev->gemm, sizeof out->gemm);
        memcpy(out->gemm_flops, comm->dev->gemm_flops, sizeof out->gemm_flops);
        memcpy(out->kernel, comm->dev->kernel, sizeof out->kernel);
        out->mem = comm->dev->mem;
    }
}

void tp_stats_reset(tp_comm *comm)
{
    if (!comm)
        return;
    tpi_device_read_timings(comm->dev); /* so that no earlier call adds to the zeroed counters */
    memset(comm->counters, 0, sizeof comm->counters);
    memset(comm->icounters, 0, sizeof comm->icounters);
    comm->stats_epoch++; /* requests in flight were counted before: not after */
    if (comm->wait_log) {
        comm->wait_log->n = 0;
        comm->wait_log->lost = false;
    }
    if (comm->dev) {
        memset(comm->dev->gemm, 0, sizeof comm->dev->gemm);
        memset(comm->dev->gemm_flops, 0, sizeof comm->dev->gemm_flops);
        memset(comm->dev->kernel, 0, sizeof comm->dev->kernel);
        tp_mem_stats *m = &comm->dev->mem;
        for (int k = 0; k < TP_USE_COUNT; k++)
            m->kind[k].peak = m->kind[k].bytes;
        m->total.peak = m->total.bytes;
    }
}

/* ------------------------------------------------------ device memory */

const char *tp_mem_use_name(tp_mem_use kind)
{
    static const char *const names[TP_USE_COUNT] = {
        "parameters", "gradients", "optimizer", "activations", "workspace", "other",
    };
    return (unsigned)kind < TP_USE_COUNT ? names[kind] : "?";
}

/* c += bytes, not below 0; the peak follows. Returns the change made. */
static int64_t mem_add(tp_mem_counter *c, int64_t bytes)
{
    if (bytes < 0 && (uint64_t)-bytes > c->bytes)
        bytes = -(int64_t)c->bytes;
    c->bytes += (uint64_t)bytes;
    if (c->bytes > c->peak)
        c->peak = c->bytes;
    return bytes;
}

void tp_mem_count(tp_device *dev, tp_mem_use kind, int64_t bytes)
{
    if (!dev || (unsigned)kind >= TP_USE_COUNT)
        return;
    mem_add(&dev->mem.total, mem_add(&dev->mem.kind[kind], bytes));
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
                n += s->comm[p][o].calls + s->icomm[p][o].calls;
    return n;
}

/* ------------------------------------------------- waiting vs transfer */

tp_status tp_stats_set_wait(tp_comm *comm, tp_wait_mode mode)
{
    if (!comm)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_stats_set_wait: comm is NULL");
    if ((unsigned)mode > TP_WAIT_BARRIER)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "tp_stats_set_wait: invalid mode %d (expected TP_WAIT_NONE, "
                            "TP_WAIT_CLOCK or TP_WAIT_BARRIER)",
                            (int)mode);
    tpi_wait_log_free(comm->wait_log);
    comm->wait_log = NULL;
    if (mode == TP_WAIT_CLOCK) {
        comm->wait_log = g_try_new0(tpi_wait_log, 1);
        if (!comm->wait_log) {
            comm->wait_mode = TP_WAIT_NONE;
            return tp_set_error(TP_ERR_NO_MEMORY,
                                "tp_stats_set_wait: cannot allocate the wait log (%zu bytes)",
                                sizeof(tpi_wait_log));
        }
        tpi_wait_log_add(comm->wait_log, TP_PHASE_OTHER, TP_OP_BARRIER, 0, 0); /* first block */
        comm->wait_log->n = 0;
    }
    comm->wait_mode = mode;
    return TP_OK;
}

/* All-gather n 32-bit words of each rank (host buffers; recv holds size*n)
 * through device memory, without device counters: the device's own ops. */
static tp_status gather_words(tp_comm *comm, const void *send, void *recv, size_t n)
{
    const tp_device *d = comm->dev;
    size_t bytes = n * 4, all = bytes * (size_t)comm->size;
    void *ds = NULL, *dr = NULL;
    tp_status st;
    TP_TRY_GOTO(d->ops->alloc(d->handle, bytes, &ds), st, out);
    TP_TRY_GOTO(d->ops->alloc(d->handle, all, &dr), st, out);
    if (bytes)
        TP_TRY_GOTO(d->ops->upload(d->handle, ds, send, bytes), st, out);
    TP_TRY_GOTO(tp_all_gather(comm, ds, dr, n, TP_I32), st, out);
    if (all)
        st = d->ops->download(d->handle, recv, dr, all);
out:
    d->ops->free(d->handle, ds);
    d->ops->free(d->handle, dr);
    return st;
}

/* Every rank's log length (UINT64_MAX: its log lost an entry) into n_all. */
static tp_status gather_lengths(tp_comm *comm, uint64_t *n_all)
{
    const tpi_wait_log *log = comm->wait_log;
    uint64_t mine = log->lost ? UINT64_MAX : (uint64_t)log->n;
    return gather_words(comm, &mine, n_all, 2);
}

/* Why the logs cannot be split (a message, TP_ERR_*), or TP_OK. */
static tp_status check_lengths(const tp_comm *comm, const uint64_t *n_all)
{
    for (int r = 0; r < comm->size; r++) {
        if (n_all[r] == UINT64_MAX)
            return tp_set_error(TP_ERR_NO_MEMORY,
                                "tp_stats_split_wait: rank %d ran out of memory for its wait log "
                                "(split more often, e.g. after every iteration)",
                                r);
        if (n_all[r] != n_all[0])
            return tp_set_error(TP_ERR_INVALID_ARG,
                                "tp_stats_split_wait: rank 0 logged %" G_GUINT64_FORMAT
                                " calls, rank %d logged %" G_GUINT64_FORMAT
                                "; every rank must make the same collectives on the comm "
                                "between splits (and reset its stats at the same point)",
                                (guint64)n_all[0], r, (guint64)n_all[r]);
    }
    return TP_OK;
}

/* Add each logged call's wait to its counter, from every rank's entry
 * times t_all[rank * n + i]. */
static void assign_wait(tp_comm *comm, const double *t_all)
{
    const tpi_wait_log *log = comm->wait_log;
    for (size_t i = 0; i < log->n; i++) {
        const tpi_wait_entry *e = &log->e[i];
        double last = e->t_in;
        for (int r = 0; r < comm->size; r++)
            if (t_all[(size_t)r * log->n + i] > last)
                last = t_all[(size_t)r * log->n + i];
        double w = last - e->t_in, dur = e->t_out - e->t_in;
        comm->counters[e->phase][e->op].wait_seconds += w < dur ? w : (dur > 0 ? dur : 0);
    }
}

static tp_status split_logs(tp_comm *comm, uint64_t *calls)
{
    tpi_wait_log *log = comm->wait_log;
    uint64_t *n_all = g_try_new(uint64_t, comm->size);
    double *t_in = g_try_new(double, log->n ? log->n : 1);
    double *t_all = g_try_new(double, (size_t)comm->size *(log->n ? log->n : 1));
    tp_status st = TP_OK;
    if (!n_all || !t_in || !t_all) {
        st = tp_set_error(TP_ERR_NO_MEMORY,
                          "tp_stats_split_wait: cannot allocate %zu bytes for %d ranks' entry "
                          "times",
                          (size_t)comm->size * log->n * sizeof(double), comm->size);
        goto out; /* every rank allocates the same: all fail here alike, mostly */
    }
    TP_TRY_GOTO(gather_lengths(comm, n_all), st, out);
    TP_TRY_GOTO(check_lengths(comm, n_all), st, out);
    for (size_t i = 0; i < log->n; i++)
        t_in[i] = log->e[i].t_in;
    if (log->n) /* equal on every rank here */
        TP_TRY_GOTO(gather_words(comm, t_in, t_all, 2 * log->n), st, out);
    assign_wait(comm, t_all);
    if (calls)
        *calls = log->n;
out:
    g_free(n_all);
    g_free(t_in);
    g_free(t_all);
    return st;
}

tp_status tp_stats_split_wait(tp_comm *comm, uint64_t *calls)
{
    if (calls)
        *calls = 0;
    if (!comm)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_stats_split_wait: comm is NULL");
    if (comm->wait_mode == TP_WAIT_BARRIER)
        return TP_OK;
    if (comm->wait_mode != TP_WAIT_CLOCK)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "tp_stats_split_wait: comm has no wait log; call "
                            "tp_stats_set_wait(comm, TP_WAIT_CLOCK) before the calls to split");
    /* the gathers below are neither logged nor counted; the split calls'
     * pending device times go into the counters before they are saved */
    tpi_device_read_timings(comm->dev);
    tp_counter saved[TP_PHASE_COUNT][TP_OP_COUNT];
    memcpy(saved, comm->counters, sizeof saved);
    comm->wait_mode = TP_WAIT_NONE;
    tp_status st = split_logs(comm, calls);
    tpi_device_read_timings(comm->dev); /* the gathers' pending times, before the restore */
    for (int p = 0; p < TP_PHASE_COUNT; p++)
        for (int o = 0; o < TP_OP_COUNT; o++) {
            double w = comm->counters[p][o].wait_seconds; /* what assign_wait added */
            comm->counters[p][o] = saved[p][o];
            comm->counters[p][o].wait_seconds = w;
        }
    comm->wait_mode = TP_WAIT_CLOCK;
    comm->wait_log->n = 0;
    comm->wait_log->lost = false;
    return st;
}
