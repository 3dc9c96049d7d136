/* SPDX-License-Identifier: MIT */
/* comm.c — collectives: argument checks, dispatch, staging, fallbacks. */
#include <stdint.h>
#include <string.h>

#include "tp-internal.h"

/* Even-count gather/scatter build a counts array; on the stack up to this. */
#define SMALL_WORLD 64

/* Call slot `slot` of comm's plugin, recorded as the rank's current plugin
 * call (launch.c): collective number comm->seq. */
#define CALL(comm, slot, ...)                                                                      \
    (tpi_call_enter((comm)->state, #slot, (comm)->state->comm_path, (comm)->seq, true),            \
     tpi_call_leave((comm)->state, (comm)->ops->slot((comm)->handle, __VA_ARGS__)))

tp_comm *tpi_comm_wrap(const tp_comm_ops *ops, const char *plugin, void *handle, int rank, int size,
                       tp_device *dev, tp_rank_state *state)
{
    tp_comm *c = g_try_new0(tp_comm, 1);
    if (!c)
        return NULL;
    c->ops = ops;
    c->plugin = plugin;
    c->handle = handle;
    c->rank = rank;
    c->size = size;
    c->dev = dev;
    c->state = state;
    return c;
}

int tp_comm_rank(const tp_comm *comm)
{
    return comm ? comm->rank : -1;
}

int tp_comm_size(const tp_comm *comm)
{
    return comm ? comm->size : 0;
}

tp_device *tp_comm_device(const tp_comm *comm)
{
    return comm ? comm->dev : NULL;
}

tp_status tp_comm_split(tp_comm *comm, int color, int key, tp_comm **out)
{
    if (!comm || !out)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_comm_split: %s is NULL",
                            !comm ? "comm" : "out");
    *out = NULL;
    void *h = NULL;
    int rank = -1, size = 0;
    tpi_request_drain(comm);
    tp_clear_error();
    comm->seq++;
    tp_status st = CALL(comm, split, color, key, &h, &rank, &size);
    if (st)
        return tp_last_error()[0]
                   ? st
                   : tp_set_error(st, "backend '%s': split failed without a message", comm->plugin);
    if (color < 0) {
        if (h) /* a plugin that made one anyway: not ours to keep */
            comm->ops->comm_free(h);
        return TP_OK;
    }
    if (!h || size < 1 || size > comm->size || rank < 0 || rank >= size) {
        if (h)
            comm->ops->comm_free(h);
        return tp_set_error(TP_ERR_PLUGIN,
                            "backend '%s': split (color %d) returned TP_OK with %s rank %d of "
                            "size %d (expected a communicator, 0 <= rank < size <= %d): a bug "
                            "in the plugin",
                            comm->plugin, color, h ? "a communicator of" : "no communicator,", rank,
                            size, comm->size);
    }
    *out = tpi_comm_wrap(comm->ops, comm->plugin, h, rank, size, comm->dev, comm->state);
    if (!*out) {
        comm->ops->comm_free(h);
        return tp_set_error(TP_ERR_NO_MEMORY,
                            "tp_comm_split: cannot allocate %zu bytes for the new communicator",
                            sizeof(tp_comm));
    }
    (*out)->intra = comm->intra;
    (*out)->host = comm->host;
    return TP_OK;
}

void tp_comm_free(tp_comm *comm)
{
    if (!comm || comm->is_world) /* the world is freed by tp_run */
        return;
    tpi_request_comm_end(comm);         /* completes its requests, which outlive it */
    tpi_device_read_timings(comm->dev); /* pending times point into its counters */
    tpi_comm_mem_end(comm);
    comm->seq++;
    tpi_call_enter(comm->state, "comm_free", comm->state->comm_path, comm->seq, true);
    comm->ops->comm_free(comm->handle);
    tpi_call_leave(comm->state, TP_OK);
    tpi_wait_log_free(comm->wait_log);
    g_free(comm);
}

/* ------------------------------------------------------ symmetric memory */

/* The plugin's mem_alloc serves a comm that has it and is not staged (a
 * staged comm's collectives see host copies, not the caller's buffers);
 * otherwise the memory is the device's. */
tp_status tp_comm_mem_alloc(tp_comm *comm, size_t bytes, void **ptr)
{
    static const char fn[] = "tp_comm_mem_alloc";
    if (!comm || !ptr)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: %s is NULL", fn, !comm ? "comm" : "ptr");
    if (bytes == 0)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "%s: bytes is 0 (rank %d): every rank asks for the same size > 0", fn,
                            comm->rank);
    if (!comm->mem)
        comm->mem = g_hash_table_new(g_direct_hash, g_direct_equal);
    void *p = NULL;
    gpointer kind = TPI_MEM_DEVICE;
    tp_status st;
    if (comm->ops->mem_alloc && !comm->state->staged) {
        tpi_request_drain_plugin(comm); /* a collective: requests issued before go first */
        comm->seq++;
        tp_clear_error();
        st = CALL(comm, mem_alloc, bytes, &p);
        if (st == TP_OK && !p)
            st = tp_set_error(TP_ERR_PLUGIN,
                              "backend '%s': mem_alloc of %zu bytes returned TP_OK without "
                              "memory (a bug in the plugin)",
                              comm->plugin, bytes);
        else if (st && !tp_last_error()[0])
            tp_set_error(st, "backend '%s': mem_alloc of %zu bytes failed without a message",
                         comm->plugin, bytes);
        kind = TPI_MEM_PLUGIN;
    } else {
        st = tp_dev_alloc(comm->dev, bytes, &p);
    }
    if (st)
        return st;
    g_hash_table_insert(comm->mem, p, kind);
    *ptr = p;
    return TP_OK;
}

static void mem_release(tp_comm *comm, void *p, gpointer kind)
{
    if (kind == TPI_MEM_PLUGIN) {
        tpi_call_enter(comm->state, "mem_free", comm->state->comm_path, comm->seq, true);
        comm->ops->mem_free(comm->handle, p);
        tpi_call_leave(comm->state, TP_OK);
    } else {
        tp_dev_free(comm->dev, p);
    }
}

void tp_comm_mem_free(tp_comm *comm, void *ptr)
{
    gpointer kind = comm && comm->mem && ptr ? g_hash_table_lookup(comm->mem, ptr) : NULL;
    if (!kind) {
        if (ptr) /* a void function: say it, do not free what is not ours */
            tpi_debug("comm",
                      "tp_comm_mem_free: %p is not an allocation of tp_comm_mem_alloc "
                      "on this communicator; ignored",
                      ptr);
        return;
    }
    g_hash_table_remove(comm->mem, ptr);
    mem_release(comm, ptr, kind);
}

void tpi_comm_mem_end(tp_comm *comm)
{
    if (!comm->mem)
        return;
    GHashTableIter it;
    gpointer p, kind;
    g_hash_table_iter_init(&it, comm->mem);
    while (g_hash_table_iter_next(&it, &p, &kind))
        mem_release(comm, p, kind);
    g_hash_table_destroy(comm->mem);
    comm->mem = NULL;
}

/* ------------------------------------------------------- dispatch */

static tp_status check_common(const tp_comm *comm, const char *fn, tp_dtype dt)
{
    if (!comm)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: comm is NULL", fn);
    if (!tp_dtype_size(dt))
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: invalid dtype %d (expected 0..%d)", fn,
                            (int)dt, TP_DTYPE_COUNT_ - 1);
    return TP_OK;
}

static tp_status check_redop(const char *fn, tp_redop op)
{
    if ((unsigned)op >= TP_REDOP_COUNT_)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "%s: invalid reduction op %d (expected TP_SUM, TP_MAX or TP_MIN)", fn,
                            (int)op);
    return TP_OK;
}

/* bytes = count * size of dt, refusing overflow. */
static tp_status payload(const char *fn, size_t count, tp_dtype dt, size_t *bytes)
{
    size_t es = tp_dtype_size(dt);
    if (count > SIZE_MAX / es)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: count %zu of %s overflows size_t", fn, count,
                            tp_dtype_name(dt));
    *bytes = count * es;
    return TP_OK;
}

/* ------------------------------------------------------------ staging */

/* A rank whose comm plugin does not take its device's memory kind (state
 * `staged`, set in launch.c) runs every plugin collective on host copies:
 * device -> host with the device's download (which waits for the rank's
 * stream), the plugin op on host buffers, host -> device with upload. The
 * copies happen inside the timed collective (they are communication cost)
 * and are not counted as device kernels; byte counters are unchanged.
 * The buffers come from the device's host_alloc when it has one (pinned
 * memory: cuda copies it at full PCIe/NVLink-C2C speed, without a bounce
 * buffer), else from ordinary host memory. */

bool tpi_comm_accepts(const tp_comm_ops *ops, tp_mem_kind kind)
{
    uint32_t kinds = ops->mem_kinds ? ops->mem_kinds : 1u << TP_MEM_HOST;
    return (unsigned)kind < 32 && ((kinds >> kind) & 1u);
}

static void host_free(tp_device *dev, void *p)
{
    if (dev->ops->host_alloc && dev->ops->host_free)
        dev->ops->host_free(dev->handle, p);
    else
        g_free(p);
}

static void *host_alloc(tp_device *dev, size_t bytes)
{
    if (!dev->ops->host_alloc || !dev->ops->host_free)
        return g_try_malloc(bytes);
    void *p = NULL;
    if (dev->ops->host_alloc(dev->handle, bytes, &p) != TP_OK)
        p = NULL;
    tp_clear_error(); /* the caller reports the failure with its own context */
    return p;
}

void tpi_stage_free(tp_rank_state *state, tp_device *dev)
{
    for (int i = 0; i < 2; i++) {
        if (state->stage[i])
            host_free(dev, state->stage[i]);
        state->stage[i] = NULL;
        state->stage_cap[i] = 0;
    }
}

/* Host staging buffer i (0: send, 1: recv) of at least `bytes`. */
static tp_status stage_buf(tp_comm *comm, int i, size_t bytes, void **out)
{
    tp_rank_state *s = comm->state;
    if (bytes > s->stage_cap[i]) {
        size_t cap = s->stage_cap[i] + s->stage_cap[i] / 2; /* fewer regrowths */
        if (cap < bytes)
            cap = bytes;
        if (s->stage[i])
            host_free(comm->dev, s->stage[i]);
        s->stage[i] = host_alloc(comm->dev, cap);
        if (!s->stage[i] && cap > bytes)
            s->stage[i] = host_alloc(comm->dev, cap = bytes);
        s->stage_cap[i] = s->stage[i] ? cap : 0;
        if (!s->stage[i])
            return tp_set_error(TP_ERR_NO_MEMORY,
                                "backend '%s' takes host memory only: cannot allocate %zu bytes "
                                "of %shost memory to stage the device's buffers",
                                comm->plugin, bytes, comm->dev->ops->host_alloc ? "pinned " : "");
    }
    *out = s->stage[i];
    return TP_OK;
}

static tp_status to_host(tp_comm *comm, void *host, const void *src, size_t bytes)
{
    const tp_device *d = comm->dev;
    tp_status st = bytes ? d->ops->download(d->handle, host, src, bytes) : TP_OK;
    if (st && !tp_last_error()[0])
        tp_set_error(st, "device '%s': download of %zu bytes to stage a collective failed", d->name,
                     bytes);
    return st;
}

static tp_status to_device(tp_comm *comm, void *dst, const void *host, size_t bytes)
{
    const tp_device *d = comm->dev;
    tp_status st = bytes ? d->ops->upload(d->handle, dst, host, bytes) : TP_OK;
    if (st && !tp_last_error()[0])
        tp_set_error(st, "device '%s': upload of %zu bytes after a staged collective failed",
                     d->name, bytes);
    return st;
}

static size_t offset_of_rank(const size_t *counts, int rank)
{
    size_t off = 0;
    for (int i = 0; i < rank; i++)
        off += counts[i];
    return off;
}

/* The plugin's ops, staged when the rank needs it. Arguments are checked. */
static tp_status op_all_reduce(tp_comm *comm, const void *send, void *recv, size_t count,
                               tp_dtype dt, tp_redop op)
{
    if (!comm->state->staged)
        return CALL(comm, all_reduce, send, recv, count, dt, op);
    size_t bytes = count * tp_dtype_size(dt);
    void *hs = NULL, *hr = NULL;
    TP_TRY(stage_buf(comm, 1, bytes, &hr));
    if (send != recv)
        TP_TRY(stage_buf(comm, 0, bytes, &hs));
    else
        hs = hr; /* in place stays in place */
    TP_TRY(to_host(comm, hs, send, bytes));
    TP_TRY(CALL(comm, all_reduce, hs, hr, count, dt, op));
    return to_device(comm, recv, hr, bytes);
}

static tp_status op_all_gather(tp_comm *comm, const void *send, void *recv, const size_t *counts,
                               size_t total, tp_dtype dt)
{
    if (!comm->state->staged)
        return CALL(comm, all_gather, send, recv, counts, dt);
    size_t es = tp_dtype_size(dt);
    void *hr = NULL;
    TP_TRY(stage_buf(comm, 1, total * es, &hr));
    /* The own block goes straight into place (send == recv + offset is
     * allowed), which also covers a caller's in-place gather. */
    char *mine = hr ? (char *)hr + offset_of_rank(counts, comm->rank) * es : NULL;
    TP_TRY(to_host(comm, mine, send, counts[comm->rank] * es));
    TP_TRY(CALL(comm, all_gather, mine, hr, counts, dt));
    return to_device(comm, recv, hr, total * es);
}

static tp_status op_reduce_scatter(tp_comm *comm, const void *send, void *recv,
                                   const size_t *counts, size_t total, tp_dtype dt, tp_redop op)
{
    if (!comm->state->staged)
        return CALL(comm, reduce_scatter, send, recv, counts, dt, op);
    size_t es = tp_dtype_size(dt), mine = counts[comm->rank] * es;
    void *hs = NULL, *hr = NULL;
    TP_TRY(stage_buf(comm, 0, total * es, &hs));
    TP_TRY(stage_buf(comm, 1, mine, &hr));
    TP_TRY(to_host(comm, hs, send, total * es));
    TP_TRY(CALL(comm, reduce_scatter, hs, hr, counts, dt, op));
    return to_device(comm, recv, hr, mine);
}

static tp_status op_broadcast(tp_comm *comm, void *buf, size_t count, tp_dtype dt, int root)
{
    if (!comm->state->staged)
        return CALL(comm, broadcast, buf, count, dt, root);
    size_t bytes = count * tp_dtype_size(dt);
    void *hb = NULL;
    TP_TRY(stage_buf(comm, 1, bytes, &hb));
    if (comm->rank == root)
        TP_TRY(to_host(comm, hb, buf, bytes));
    TP_TRY(CALL(comm, broadcast, hb, count, dt, root));
    return comm->rank == root ? TP_OK : to_device(comm, buf, hb, bytes);
}

/* ------------------------------------------------------- dispatch */

static tp_status not_supported(const tp_comm *comm, tp_op op)
{
    return tp_set_error(TP_ERR_NOT_SUPPORTED,
                        "backend '%s' does not provide op '%s' and tp has no fallback for it",
                        comm->plugin, tp_op_name(op));
}

/* Called after a collective: counts it under the rank's current phase. */
static tp_status finish(tp_comm *comm, tp_op op, size_t bytes, tp_tick t0, tp_status st)
{
    comm->state->tick_ns = 0; /* unused if no plugin call followed count_start */
    if (st) {
        tpi_tick_cancel(comm->dev, t0);
        if (!tp_last_error()[0])
            tp_set_error(st, "backend '%s': %s failed without a message", comm->plugin,
                         tp_op_name(op));
        return st;
    }
    tp_counter *c = &comm->counters[comm->state->phase][op];
    c->calls++;
    c->bytes += bytes;
    tpi_tick_stop(comm->dev, t0, &c->seconds);
    if (comm->wait_mode == TP_WAIT_BARRIER) {
        c->seconds += comm->barrier_s;
        c->wait_seconds += comm->barrier_s;
    } else if (comm->wait_mode == TP_WAIT_CLOCK) {
        tpi_wait_log_add(comm->wait_log, comm->state->phase, op, t0.t0, tpi_now());
    }
    return TP_OK;
}

/* Before a counted collective (after comm->seq++): with TP_WAIT_BARRIER
 * the barrier whose time is the call's wait, then the call's tick. */
static tp_status count_start(tp_comm *comm, tp_tick *t0);

tp_status tp_all_reduce(tp_comm *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                        tp_redop op)
{
    static const char fn[] = "tp_all_reduce";
    size_t bytes = 0;
    TP_TRY(check_common(comm, fn, dt));
    TP_TRY(check_redop(fn, op));
    TP_TRY(payload(fn, count, dt, &bytes));
    if (count && (!send || !recv))
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: %s buffer is NULL with count %zu", fn,
                            !send ? "send" : "recv", count);
    comm->seq++;
    tp_tick t0;
    TP_TRY(count_start(comm, &t0));
    tp_clear_error();
    tp_status st = op_all_reduce(comm, send, recv, count, dt, op);
    return finish(comm, TP_OP_ALL_REDUCE, bytes, t0, st);
}

tp_status tp_broadcast(tp_comm *comm, void *buf, size_t count, tp_dtype dt, int root)
{
    static const char fn[] = "tp_broadcast";
    size_t bytes = 0;
    TP_TRY(check_common(comm, fn, dt));
    TP_TRY(payload(fn, count, dt, &bytes));
    if (count && !buf)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: buf is NULL with count %zu", fn, count);
    if (root < 0 || root >= comm->size)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: root %d out of range 0..%d", fn, root,
                            comm->size - 1);
    if (!comm->ops->broadcast)
        return not_supported(comm, TP_OP_BROADCAST);
    comm->seq++;
    tp_tick t0;
    TP_TRY(count_start(comm, &t0));
    tp_clear_error();
    tp_status st = op_broadcast(comm, buf, count, dt, root);
    return finish(comm, TP_OP_BROADCAST, bytes, t0, st);
}

/* Barrier fallback: a one-element all-reduce, in device memory. */
static tp_status barrier_by_all_reduce(tp_comm *comm)
{
    const tp_device_ops *d = comm->dev->ops;
    void *one = NULL;
    tp_status st;
    TP_TRY_GOTO(d->alloc(comm->dev->handle, sizeof(float), &one), st, out);
    TP_TRY_GOTO(d->memset(comm->dev->handle, one, 0, sizeof(float)), st, out);
    st = op_all_reduce(comm, one, one, 1, TP_F32, TP_SUM); /* f32: every backend has it */
out:
    d->free(comm->dev->handle, one);
    return st;
}

static tp_status plugin_barrier(tp_comm *comm)
{
    tpi_call_enter(comm->state, "barrier", comm->state->comm_path, comm->seq, true);
    return tpi_call_leave(comm->state, comm->ops->barrier(comm->handle));
}

static tp_status count_start(tp_comm *comm, tp_tick *t0)
{
    tpi_request_drain_plugin(comm); /* nonblocking ones issued before keep their place */
    comm->barrier_s = 0;
    if (comm->wait_mode == TP_WAIT_BARRIER) {
        double b0 = tpi_now();
        tp_clear_error();
        tp_status st = comm->ops->barrier ? plugin_barrier(comm) : barrier_by_all_reduce(comm);
        if (st)
            return tp_last_error()[0] ? st
                                      : tp_set_error(st,
                                                     "backend '%s': the barrier before a "
                                                     "collective (TP_WAIT_BARRIER) failed",
                                                     comm->plugin);
        comm->barrier_s = tpi_now() - b0;
    }
    *t0 = tpi_tick_start(comm->dev);
    return TP_OK;
}

tp_status tp_barrier(tp_comm *comm)
{
    if (!comm)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_barrier: comm is NULL");
    tpi_request_drain_plugin(comm);
    tp_tick t0 = tpi_tick_start(comm->dev);
    tp_clear_error();
    comm->seq++;
    tp_status st = comm->ops->barrier ? plugin_barrier(comm) : barrier_by_all_reduce(comm);
    return finish(comm, TP_OP_BARRIER, 0, t0, st);
}

/* Checks shared by the v-variants; *total = sum of counts. */
static tp_status check_v(tp_comm *comm, const char *fn, const void *send, const void *recv,
                         const size_t *counts, tp_dtype dt, bool send_is_total, size_t *total)
{
    TP_TRY(check_common(comm, fn, dt));
    if (!counts)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: counts is NULL; pass %d block sizes", fn,
                            comm->size);
    size_t sum = 0;
    for (int i = 0; i < comm->size; i++) {
        if (counts[i] > SIZE_MAX - sum)
            return tp_set_error(TP_ERR_INVALID_ARG, "%s: sum of counts overflows size_t", fn);
        sum += counts[i];
    }
    size_t bytes;
    TP_TRY(payload(fn, sum, dt, &bytes));
    size_t mine = counts[comm->rank];
    size_t send_n = send_is_total ? sum : mine, recv_n = send_is_total ? mine : sum;
    if (send_n && !send)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: send buffer is NULL with %zu elements", fn,
                            send_n);
    if (recv_n && !recv)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: recv buffer is NULL with %zu elements", fn,
                            recv_n);
    *total = sum;
    return TP_OK;
}

/* All-gather fallback: each rank broadcasts its block into place. */
static tp_status all_gather_by_broadcast(tp_comm *comm, const void *send, void *recv,
                                         const size_t *counts, tp_dtype dt)
{
    const tp_device *d = comm->dev;
    size_t es = tp_dtype_size(dt), off = 0;
    for (int r = 0; r < comm->size; r++) {
        char *blk = (char *)recv + off * es;
        if (r == comm->rank && counts[r] && (const void *)blk != send)
            TP_TRY(d->ops->copy_2d(d->handle, blk, counts[r] * es, send, counts[r] * es,
                                   counts[r] * es, 1));
        TP_TRY(op_broadcast(comm, counts[r] ? blk : NULL, counts[r], dt, r));
        off += counts[r];
    }
    return TP_OK;
}

static tp_status all_gather(const char *fn, tp_comm *comm, const void *send, void *recv,
                            const size_t *counts, tp_dtype dt)
{
    size_t total = 0;
    TP_TRY(check_v(comm, fn, send, recv, counts, dt, false, &total));
    if (!comm->ops->all_gather && !comm->ops->broadcast)
        return not_supported(comm, TP_OP_ALL_GATHER);
    size_t es = tp_dtype_size(dt);
    comm->seq++;
    tp_tick t0;
    TP_TRY(count_start(comm, &t0));
    tp_clear_error();
    tp_status st = comm->ops->all_gather ? op_all_gather(comm, send, recv, counts, total, dt)
                                         : all_gather_by_broadcast(comm, send, recv, counts, dt);
    return finish(comm, TP_OP_ALL_GATHER, total * es, t0, st);
}

/* Reduce-scatter fallback: all-reduce into a temporary, keep our block. */
static tp_status reduce_scatter_by_all_reduce(tp_comm *comm, const void *send, void *recv,
                                              const size_t *counts, size_t total, tp_dtype dt,
                                              tp_redop op)
{
    const tp_device *d = comm->dev;
    size_t es = tp_dtype_size(dt), mine = counts[comm->rank];
    void *tmp = NULL;
    tp_status st;
    TP_TRY_GOTO(d->ops->alloc(d->handle, total * es, &tmp), st, out);
    TP_TRY_GOTO(op_all_reduce(comm, send, tmp, total, dt, op), st, out);
    if (mine)
        st = d->ops->copy_2d(d->handle, recv, mine * es,
                             (char *)tmp + offset_of_rank(counts, comm->rank) * es, mine * es,
                             mine * es, 1);
out:
    d->ops->free(d->handle, tmp);
    return st;
}

static tp_status reduce_scatter(const char *fn, tp_comm *comm, const void *send, void *recv,
                                const size_t *counts, tp_dtype dt, tp_redop op)
{
    size_t total = 0;
    TP_TRY(check_v(comm, fn, send, recv, counts, dt, true, &total));
    TP_TRY(check_redop(fn, op));
    size_t es = tp_dtype_size(dt);
    comm->seq++;
    tp_tick t0;
    TP_TRY(count_start(comm, &t0));
    tp_clear_error();
    tp_status st = comm->ops->reduce_scatter
                       ? op_reduce_scatter(comm, send, recv, counts, total, dt, op)
                       : reduce_scatter_by_all_reduce(comm, send, recv, counts, total, dt, op);
    return finish(comm, TP_OP_REDUCE_SCATTER, total * es, t0, st);
}

tp_status tp_all_gatherv(tp_comm *comm, const void *send, void *recv, const size_t *counts,
                         tp_dtype dt)
{
    return all_gather("tp_all_gatherv", comm, send, recv, counts, dt);
}

tp_status tp_reduce_scatterv(tp_comm *comm, const void *send, void *recv, const size_t *counts,
                             tp_dtype dt, tp_redop op)
{
    return reduce_scatter("tp_reduce_scatterv", comm, send, recv, counts, dt, op);
}

/* counts[i] = count for every rank; *heap is set when it had to allocate;
 * NULL with the error set when it could not. */
static size_t *even_counts(const char *fn, const tp_comm *comm, size_t count, size_t *small,
                           size_t **heap)
{
    *heap = NULL;
    size_t *c = small;
    if (comm->size > SMALL_WORLD)
        c = *heap = g_try_new(size_t, comm->size);
    if (!c) {
        tp_set_error(TP_ERR_NO_MEMORY, "%s: cannot allocate %zu bytes for %d block sizes", fn,
                     (size_t)comm->size * sizeof(size_t), comm->size);
        return NULL;
    }
    for (int i = 0; i < comm->size; i++)
        c[i] = count;
    return c;
}

tp_status tp_all_gather(tp_comm *comm, const void *send, void *recv, size_t count, tp_dtype dt)
{
    if (!comm)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_all_gather: comm is NULL");
    size_t small[SMALL_WORLD], *heap;
    size_t *counts = even_counts("tp_all_gather", comm, count, small, &heap);
    if (!counts)
        return TP_ERR_NO_MEMORY;
    tp_status st = all_gather("tp_all_gather", comm, send, recv, counts, dt);
    g_free(heap);
    return st;
}

tp_status tp_reduce_scatter(tp_comm *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                            tp_redop op)
{
    if (!comm)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_reduce_scatter: comm is NULL");
    size_t small[SMALL_WORLD], *heap;
    size_t *counts = even_counts("tp_reduce_scatter", comm, count, small, &heap);
    if (!counts)
        return TP_ERR_NO_MEMORY;
    tp_status st = reduce_scatter("tp_reduce_scatter", comm, send, recv, counts, dt, op);
    g_free(heap);
    return st;
}

/* ------------------------------------------- intra-node communicators */

#define TPI_BOOT_MAX (1 << 20)

/* tp_bootstrap.all_gather over the bootstrap communicator: `bytes` from
 * every rank, padded to int32 words, through device memory like any
 * collective (so it works on every backend and device). */
static tp_status boot_all_gather(void *ctx, const void *mine, void *all, size_t bytes)
{
    tp_comm *g = ctx;
    /* Addresses and ids, not data: a size beyond this is a plugin's bug
     * (and (bytes + 3) / 4 must not wrap). */
    if (bytes > TPI_BOOT_MAX || (bytes && (!mine || !all)))
        return tp_set_error(TP_ERR_PLUGIN,
                            "bootstrap all_gather of the intra backend: %zu bytes from %p into "
                            "%p; expected at most %d bytes and non-NULL buffers",
                            bytes, mine, all, TPI_BOOT_MAX);
    size_t words = (bytes + 3) / 4, n = (size_t)g->size;
    int32_t *pad = g_try_new0(int32_t, words ? words : 1);
    int32_t *host = g_try_new0(int32_t, n * words + 1);
    void *d_all = NULL;
    tp_status st = TP_OK;
    if (!pad || !host) {
        st = tp_set_error(TP_ERR_NO_MEMORY, "bootstrap all_gather: out of memory");
        goto out;
    }
    memcpy(pad, mine, bytes);
    TP_TRY_GOTO(tp_dev_alloc(g->dev, n * words * 4 + 4, &d_all), st, out);
    int32_t *d_mine = (int32_t *)d_all + (size_t)g->rank * words;
    TP_TRY_GOTO(tp_dev_upload(g->dev, d_mine, pad, words * 4), st, out);
    TP_TRY_GOTO(tp_all_gather(g, d_mine, d_all, words, TP_I32), st, out);
    TP_TRY_GOTO(tp_dev_download(g->dev, host, d_all, n * words * 4), st, out);
    for (size_t r = 0; r < n; r++)
        memcpy((char *)all + r * bytes, host + r * words, bytes);
out:
    tp_dev_free(g->dev, d_all);
    g_free(pad);
    g_free(host);
    return st;
}

const char *tpi_comm_backend(const tp_comm *comm)
{
    return comm ? comm->plugin : NULL;
}

const tp_plugin *tpi_comm_intra_plugin(const tp_comm *comm)
{
    return comm ? comm->intra : NULL;
}

/* Staging is decided per rank, for the world's backend: the intra one
 * must take the same memory. */
tp_status tpi_comm_intra_check(const tp_comm *group)
{
    const tp_plugin *ip = group->intra;
    if (!ip || !ip->comm.comm_create)
        return tp_set_error(TP_ERR_INTERNAL, "intra-node communicator without TP_INTRA_BACKEND");
    tp_mem_kind kind = group->dev->env.mem_kind;
    bool world_takes = tpi_comm_accepts(group->ops, kind);
    if (tpi_comm_accepts(&ip->comm, kind) != world_takes)
        return tp_set_error(TP_ERR_NOT_SUPPORTED,
                            "TP_INTRA_BACKEND=%s %s the device's memory (kind %d) but the world "
                            "backend '%s' %s; choose an intra backend that takes the same memory "
                            "(shm with host-memory backends, nccl with nccl)",
                            ip->name, world_takes ? "does not take" : "takes", (int)kind,
                            group->plugin, world_takes ? "does" : "does not");
    return TP_OK;
}

tp_status tpi_comm_create_intra(tp_comm *group, const char *node, tp_comm **out)
{
    *out = NULL;
    TP_TRY(tpi_comm_intra_check(group));
    const tp_plugin *ip = group->intra;
    tp_rank_env env = group->dev->env;
    if (!tpi_comm_accepts(group->ops, env.mem_kind))
        env = (tp_rank_env){.struct_size = sizeof env, .mem_kind = TP_MEM_HOST, .device_index = -1};
    tp_bootstrap boot = {sizeof boot, group->rank, group->size, node, group, boot_all_gather};
    void *h = NULL;
    tp_clear_error();
    group->seq++;
    tpi_call_enter(group->state, "comm_create", ip->path, group->seq, true);
    tp_status st = tpi_call_leave(group->state, ip->comm.comm_create(group->host, &boot, &env, &h));
    if (st)
        return tp_last_error()[0] ? st
                                  : tp_set_error(st,
                                                 "intra backend '%s': comm_create failed "
                                                 "without a message",
                                                 ip->name);
    if (h == NULL)
        return tp_set_error(TP_ERR_PLUGIN,
                            "intra backend '%s' (%s): comm_create returned TP_OK without a "
                            "communicator handle",
                            ip->name, ip->path);
    *out =
        tpi_comm_wrap(&ip->comm, ip->name, h, group->rank, group->size, group->dev, group->state);
    if (!*out) {
        ip->comm.comm_free(h);
        return tp_set_error(TP_ERR_NO_MEMORY, "cannot allocate the intra-node communicator");
    }
    (*out)->intra = group->intra;
    (*out)->host = group->host;
    return TP_OK;
}

/* ---------------------------------------------------------- nonblocking */

/* The blocking collective of a request, on the progress thread's copy of
 * the comm (never staged: a staged request already holds host buffers). */
static tp_status run_coll(tp_comm *comm, const tpi_coll *c)
{
    if (c->op == TP_OP_ALL_REDUCE)
        return op_all_reduce(comm, c->send, c->recv, c->count, c->dt, c->redop);
    if (c->op == TP_OP_ALL_GATHER)
        return comm->ops->all_gather
                   ? op_all_gather(comm, c->send, c->recv, c->counts, c->total, c->dt)
                   : all_gather_by_broadcast(comm, c->send, c->recv, c->counts, c->dt);
    return comm->ops->reduce_scatter
               ? op_reduce_scatter(comm, c->send, c->recv, c->counts, c->total, c->dt, c->redop)
               : reduce_scatter_by_all_reduce(comm, c->send, c->recv, c->counts, c->total, c->dt,
                                              c->redop);
}

static tp_status issue(tp_comm *comm, const char *fn, const tpi_coll *c, size_t bytes,
                       tp_request **req)
{
    bool native = comm->ops->req_wait != NULL;
    bool slot = c->op == TP_OP_ALL_REDUCE ||
                (c->op == TP_OP_ALL_GATHER ? comm->ops->all_gather != NULL
                                           : comm->ops->reduce_scatter != NULL);
    /* The fallbacks through broadcast / all_reduce copy with the device: on a
     * staged rank the progress thread has host buffers the device cannot copy. */
    if (!native && !slot && comm->state->staged)
        return tp_set_error(TP_ERR_NOT_SUPPORTED,
                            "%s: backend '%s' has no %s slot and takes host memory only; the "
                            "core cannot run its fallback on staged host buffers (use the "
                            "blocking call)",
                            fn, comm->plugin, tp_op_name(c->op));
    comm->seq++;
    tp_clear_error();
    return tpi_request_issue(comm, fn, c, bytes, run_coll, req);
}

static tp_status check_req(const char *fn, tp_request **req)
{
    if (!req)
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: req is NULL (pass a tp_request * to fill)",
                            fn);
    *req = NULL;
    return TP_OK;
}

tp_status tp_iall_reduce(tp_comm *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                         tp_redop op, tp_request **req)
{
    static const char fn[] = "tp_iall_reduce";
    size_t bytes = 0;
    TP_TRY(check_req(fn, req));
    TP_TRY(check_common(comm, fn, dt));
    TP_TRY(check_redop(fn, op));
    TP_TRY(payload(fn, count, dt, &bytes));
    if (count && (!send || !recv))
        return tp_set_error(TP_ERR_INVALID_ARG, "%s: %s buffer is NULL with count %zu", fn,
                            !send ? "send" : "recv", count);
    tpi_coll c = {
        .op = TP_OP_ALL_REDUCE, .send = send, .recv = recv, .count = count, .dt = dt, .redop = op};
    return issue(comm, fn, &c, bytes, req);
}

static tp_status iall_gather(const char *fn, tp_comm *comm, const void *send, void *recv,
                             const size_t *counts, tp_dtype dt, tp_request **req)
{
    size_t total = 0;
    TP_TRY(check_req(fn, req));
    TP_TRY(check_v(comm, fn, send, recv, counts, dt, false, &total));
    if (!comm->ops->all_gather && !comm->ops->broadcast && !comm->ops->req_wait)
        return not_supported(comm, TP_OP_ALL_GATHER);
    tpi_coll c = {.op = TP_OP_ALL_GATHER,
                  .send = send,
                  .recv = recv,
                  .counts = counts,
                  .total = total,
                  .dt = dt};
    return issue(comm, fn, &c, total * tp_dtype_size(dt), req);
}

static tp_status ireduce_scatter(const char *fn, tp_comm *comm, const void *send, void *recv,
                                 const size_t *counts, tp_dtype dt, tp_redop op, tp_request **req)
{
    size_t total = 0;
    TP_TRY(check_req(fn, req));
    TP_TRY(check_v(comm, fn, send, recv, counts, dt, true, &total));
    TP_TRY(check_redop(fn, op));
    tpi_coll c = {.op = TP_OP_REDUCE_SCATTER,
                  .send = send,
                  .recv = recv,
                  .counts = counts,
                  .total = total,
                  .dt = dt,
                  .redop = op};
    return issue(comm, fn, &c, total * tp_dtype_size(dt), req);
}

tp_status tp_iall_gatherv(tp_comm *comm, const void *send, void *recv, const size_t *counts,
                          tp_dtype dt, tp_request **req)
{
    return iall_gather("tp_iall_gatherv", comm, send, recv, counts, dt, req);
}

tp_status tp_ireduce_scatterv(tp_comm *comm, const void *send, void *recv, const size_t *counts,
                              tp_dtype dt, tp_redop op, tp_request **req)
{
    return ireduce_scatter("tp_ireduce_scatterv", comm, send, recv, counts, dt, op, req);
}

/* tp_iall_gather and tp_ireduce_scatter (gather false: with op): their
 * v-variants with `count` for every rank. */
static tp_status ieven(const char *fn, tp_comm *comm, const void *send, void *recv, size_t count,
                       tp_dtype dt, bool gather, tp_redop op, tp_request **req)
{
    if (!comm)
        return check_req(fn, req) ? TP_ERR_INVALID_ARG
                                  : tp_set_error(TP_ERR_INVALID_ARG, "%s: comm is NULL", fn);
    size_t small[SMALL_WORLD], *heap;
    size_t *counts = even_counts(fn, comm, count, small, &heap);
    if (!counts)
        return TP_ERR_NO_MEMORY;
    tp_status st = gather ? iall_gather(fn, comm, send, recv, counts, dt, req)
                          : ireduce_scatter(fn, comm, send, recv, counts, dt, op, req);
    g_free(heap);
    return st;
}

tp_status tp_iall_gather(tp_comm *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                         tp_request **req)
{
    return ieven("tp_iall_gather", comm, send, recv, count, dt, true, TP_SUM, req);
}

tp_status tp_ireduce_scatter(tp_comm *comm, const void *send, void *recv, size_t count, tp_dtype dt,
                             tp_redop op, tp_request **req)
{
    return ieven("tp_ireduce_scatter", comm, send, recv, count, dt, false, op, req);
}
