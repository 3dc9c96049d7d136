/* SPDX-License-Identifier: MIT */
/*
 * request.c — nonblocking collectives: requests, their completion and
 * counters, and the core's progress thread for plugins without the
 * nonblocking slots.
 *
 * Native (the plugin sets iall_reduce .. req_free): the rank's thread
 * starts the collective in the plugin and later tests or waits for it.
 *
 * Core engine (any other plugin): a progress thread runs the plugin's
 * blocking collectives in the order the rank issued them, on a private
 * copy of each tp_comm whose plugin calls are recorded in the thread's own
 * tp_call (crash reports and the watchdog keep describing the rank's
 * thread). One thread per rank, serving all of the rank's comms: plugins
 * may assume one call at a time per rank (tcp shares one socket per peer
 * among all comms of a process), and running a rank's collectives in its
 * issue order, across comms, is deadlock-free whenever the same program
 * with blocking calls is. Any split or free of the rank first waits until
 * the thread has run every request issued before; a blocking collective
 * only until no request of its own plugin is queued or running. One of
 * another plugin runs beside them (TP on shm while DP buckets cross nodes
 * on tcp): each plugin still sees one call at a time, each thread keeps
 * its issue order, and every collective in flight was issued by every
 * rank before any of them could wait for it, so this too deadlocks only
 * where the blocking program would.
 *
 * Staging: a rank whose comm does not take its device's memory copies the
 * inputs to host buffers of the request at issue and the result back at
 * completion, both on the rank's thread (device ops stay on it).
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "tp-internal.h"

struct tp_request {
    tp_comm *comm;           /* NULL once detached by tp_comm_free */
    struct tpi_nb *nb;       /* comm's nonblocking state (the progress thread reads it) */
    tp_device *dev;          /* for staging uploads, valid for the rank's life */
    tp_request *prev, *next; /* comm's pending list, issue order */
    const char *fn;          /* "tp_iall_reduce", for messages */
    const char *plugin;
    uint64_t seq;
    tp_op op;
    tp_phase phase;
    tpi_coll c; /* c.counts points at counts */
    size_t *counts;
    size_t bytes;
    bool native;
    void *preq; /* the plugin's request */
    /* staging: host copies (hs may equal hr), the device result buffer */
    void *hs, *hr;
    void *dev_recv;
    size_t recv_bytes;
    double t_issued, t_done, wait_s, exposed_s;
    uint64_t stats_epoch;    /* comm->stats_epoch at issue: counted only if still current */
    double open_t0, open_t1; /* the last tp_test that did not see it complete */
    bool complete;    /* the rank's thread finished it: status final, counters may be added */
    bool worker_done; /* core engine: under the progress thread's mu */
    tp_status status;
    char *msg; /* the error message, NULL if none */
};

/* The rank's progress thread (core engine), shared by its comms. */
typedef struct tpi_worker {
    GThread *thread;
    GMutex mu;
    GCond cv;
    GQueue queue;             /* requests to run, issue order */
    const tp_comm_ops *busy;  /* the plugin of the request running now, or NULL */
    uint64_t issued, settled; /* requests queued / run so far */
    bool stop;
    int refs;             /* comms with a tpi_nb on it */
    tp_rank_state wstate; /* the thread's tp_call */
} tpi_worker;

/* A comm's nonblocking state. */
typedef struct tpi_nb {
    tp_request *head, *tail; /* pending: issued, not yet ended by tp_wait */
    tpi_worker *pg;          /* core engine; NULL for a native plugin */
    tpi_coll_fn run;
    tp_comm shadow; /* the thread's copy of the comm */
} tpi_nb;

/* ------------------------------------------------------------ the thread */

/* A request's message, or NULL when there is no memory for it (tp_wait
 * then names the status): never g_strdup & co., which abort (and, with
 * nothing left, overflow the stack) instead of failing. */
static char *msg_printf(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
static char *msg_printf(const char *fmt, ...)
{
    char *m = g_try_malloc(TPI_ERROR_MAX);
    if (m) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(m, TPI_ERROR_MAX, fmt, ap);
        va_end(ap);
    }
    return m;
}

static char *error_copy(tp_status st, const char *fn, uint64_t seq, const char *plugin)
{
    const char *m = tp_last_error();
    return msg_printf("%s #%" PRIu64 " on backend '%s': %s", fn, seq, plugin,
                      m[0] ? m : tp_status_string(st));
}

static gpointer progress_main(gpointer data)
{
    tpi_worker *pg = data;
    /* a crash here is reported as the rank's, naming the plugin call */
    tpi_watch_rank_begin(&pg->wstate);
    g_mutex_lock(&pg->mu);
    for (;;) {
        while (g_queue_is_empty(&pg->queue) && !pg->stop)
            g_cond_wait(&pg->cv, &pg->mu);
        tp_request *r = g_queue_pop_head(&pg->queue);
        if (!r)
            break; /* stopped and empty */
        pg->busy = r->nb->shadow.ops;
        g_mutex_unlock(&pg->mu);
        tpi_nb *nb = r->nb;
        nb->shadow.seq = r->seq;
        tp_clear_error();
        tp_status st = nb->run(&nb->shadow, &r->c);
        char *msg = st ? error_copy(st, r->fn, r->seq, r->plugin) : NULL;
        double t = tpi_now();
        g_mutex_lock(&pg->mu);
        r->status = st;
        r->msg = msg;
        r->t_done = t;
        r->worker_done = true;
        pg->busy = NULL;
        pg->settled++;
        g_cond_broadcast(&pg->cv);
    }
    g_mutex_unlock(&pg->mu);
    tpi_watch_rank_end(&pg->wstate);
    return NULL;
}

static void progress_stop(tp_rank_state *state)
{
    tpi_worker *pg = state->progress;
    if (!pg)
        return;
    g_mutex_lock(&pg->mu);
    pg->stop = true;
    g_cond_broadcast(&pg->cv);
    g_mutex_unlock(&pg->mu);
    g_thread_join(pg->thread);
    tpi_watchdog_watch_worker(state->watchdog, state, NULL);
    g_mutex_clear(&pg->mu);
    g_cond_clear(&pg->cv);
    g_free(pg);
    state->progress = NULL;
}

/* The rank's progress thread, started at its first use. */
static tp_status progress_get(tp_comm *comm, tpi_worker **out)
{
    tp_rank_state *state = comm->state;
    if (state->progress) {
        *out = state->progress;
        return TP_OK;
    }
    tpi_worker *pg = g_try_new0(tpi_worker, 1);
    if (!pg)
        return tp_set_error(TP_ERR_NO_MEMORY, "nonblocking collectives: cannot allocate %zu bytes",
                            sizeof *pg);
    g_mutex_init(&pg->mu);
    g_cond_init(&pg->cv);
    g_queue_init(&pg->queue);
    pg->wstate.world_rank = state->world_rank;
    pg->wstate.comm_path = state->comm_path;
    pg->wstate.dev_path = state->dev_path;
    pg->wstate.phase = TP_PHASE_OTHER;
    GError *err = NULL;
    pg->thread = g_thread_try_new("tp-progress", progress_main, pg, &err);
    if (!pg->thread) {
        tp_status st = tp_set_error(TP_ERR_NO_MEMORY,
                                    "nonblocking collectives on backend '%s': cannot start the "
                                    "progress thread (out of memory or of threads): %s",
                                    comm->plugin, err ? err->message : "unknown error");
        g_clear_error(&err);
        g_mutex_clear(&pg->mu);
        g_cond_clear(&pg->cv);
        g_free(pg);
        return st;
    }
    state->progress = pg;
    tpi_watchdog_watch_worker(state->watchdog, state, &pg->wstate);
    *out = pg;
    return TP_OK;
}

static tp_status nb_get(tp_comm *comm, tpi_coll_fn run, tpi_nb **out)
{
    if (comm->nb) {
        *out = comm->nb;
        return TP_OK;
    }
    tpi_worker *pg = NULL;
    if (!comm->ops->req_wait)
        TP_TRY(progress_get(comm, &pg));
    tpi_nb *nb = g_try_new0(tpi_nb, 1);
    if (!nb)
        return tp_set_error(TP_ERR_NO_MEMORY, "nonblocking collectives: cannot allocate %zu bytes",
                            sizeof *nb);
    nb->run = run;
    nb->pg = pg;
    if (pg) {
        pg->refs++;
        nb->shadow = *comm;
        nb->shadow.state = &pg->wstate;
        nb->shadow.wait_mode = TP_WAIT_NONE;
        nb->shadow.wait_log = NULL;
        nb->shadow.nb = NULL;
    }
    comm->nb = nb;
    *out = nb;
    tpi_debug("comm", "rank %d: nonblocking collectives of backend '%s' run %s", comm->rank,
              comm->plugin, pg ? "on the core's progress thread" : "natively (plugin slots)");
    return TP_OK;
}

/* -------------------------------------------------------------- staging */

static void request_free(tp_request *r)
{
    if (r->hs != r->hr)
        g_free(r->hs);
    g_free(r->hr);
    g_free(r->counts);
    g_free(r->msg);
    g_free(r);
}

/* Host copies of the buffers for a staged rank: inputs downloaded now. */
static tp_status stage_in(tp_request *r, int rank)
{
    size_t es = tp_dtype_size(r->c.dt), send_b, off = 0;
    if (r->op == TP_OP_ALL_REDUCE) {
        send_b = r->recv_bytes = r->c.count * es;
    } else if (r->op == TP_OP_ALL_GATHER) {
        for (int i = 0; i < rank; i++)
            off += r->counts[i];
        send_b = r->counts[rank] * es;
        r->recv_bytes = r->c.total * es;
    } else {
        send_b = r->c.total * es;
        r->recv_bytes = r->counts[rank] * es;
    }
    r->hr = g_try_malloc(r->recv_bytes ? r->recv_bytes : 1);
    bool same = r->op == TP_OP_ALL_GATHER || (r->op == TP_OP_ALL_REDUCE && r->c.send == r->c.recv);
    r->hs = same ? r->hr : g_try_malloc(send_b ? send_b : 1);
    if (!r->hr || !r->hs)
        return tp_set_error(TP_ERR_NO_MEMORY,
                            "%s: cannot allocate %zu bytes of host memory to stage the device's "
                            "buffers (the backend takes host memory only)",
                            r->fn, send_b + r->recv_bytes);
    char *hsend = (char *)r->hs + (r->op == TP_OP_ALL_GATHER ? off * es : 0);
    const tp_device *d = r->dev;
    if (send_b && d->ops->download(d->handle, hsend, r->c.send, send_b) != TP_OK)
        return tp_last_error()[0] ? TP_ERR_DEVICE
                                  : tp_set_error(TP_ERR_DEVICE,
                                                 "%s: device '%s': download of %zu bytes to stage "
                                                 "the collective failed",
                                                 r->fn, d->name, send_b);
    r->dev_recv = r->c.recv;
    r->c.send = hsend;
    r->c.recv = r->hr;
    return TP_OK;
}

/* ---------------------------------------------------------- completion */

/* On the rank's thread, once the collective ended with `st`: free the
 * plugin's request, copy a staged result back, keep the error. */
static void complete(tp_request *r, tp_status st)
{
    if (r->native) {
        if (st && !r->msg)
            r->msg = error_copy(st, r->fn, r->seq, r->plugin);
        r->status = st;
        r->t_done = tpi_now();
        /* a peer may have completed it while this rank did other work */
        double at =
            r->comm->ops->req_done_at ? r->comm->ops->req_done_at(r->comm->handle, r->preq) : 0.0;
        if (!st && at > 0.0 && at < r->t_done)
            r->t_done = at > r->t_issued ? at : r->t_issued;
        r->comm->ops->req_free(r->comm->handle, r->preq);
        r->preq = NULL;
    }
    /* A tp_test may have begun before completion (a peer's, or the progress
     * thread's) and ended after it without seeing it: its time after the
     * completion was not exposed. Only that last one can: a test begun
     * after completion sees it. */
    if (r->open_t1 > r->t_done)
        r->exposed_s -= r->open_t1 - (r->open_t0 > r->t_done ? r->open_t0 : r->t_done);
    double flight = r->t_done > r->t_issued ? r->t_done - r->t_issued : 0;
    r->exposed_s = r->exposed_s < 0 ? 0 : r->exposed_s > flight ? flight : r->exposed_s;
    if (!r->status && r->dev_recv && r->recv_bytes) {
        const tp_device *d = r->dev;
        tp_clear_error();
        tp_status up = d->ops->upload(d->handle, r->dev_recv, r->hr, r->recv_bytes);
        if (up) {
            r->status = up;
            r->msg = msg_printf("%s #%" PRIu64 ": device '%s': upload of the %zu-byte result "
                                "of a staged collective failed: %s",
                                r->fn, r->seq, d->name, r->recv_bytes, tp_last_error());
        }
    }
    r->complete = true;
}

/* Block until r is complete; the time spent goes to r's wait and, up to
 * completion, exposed time. */
static void block(tp_request *r)
{
    double t0 = tpi_now();
    if (r->native) {
        tp_rank_state *s = r->comm->state;
        tp_clear_error();
        tpi_call_enter(s, "req_wait", s->comm_path, r->seq, true);
        tp_status st = tpi_call_leave(s, r->comm->ops->req_wait(r->comm->handle, r->preq));
        complete(r, st);
    } else {
        tpi_worker *pg = r->nb->pg;
        g_mutex_lock(&pg->mu);
        while (!r->worker_done)
            g_cond_wait(&pg->cv, &pg->mu);
        g_mutex_unlock(&pg->mu);
        complete(r, r->status);
    }
    double t1 = tpi_now(), done = r->t_done < t1 ? r->t_done : t1;
    r->wait_s += t1 - t0;
    r->exposed_s += done > t0 ? done - t0 : 0;
}

/* Non-blocking look: completes r when it is done. */
static void test_once(tp_request *r)
{
    double t0 = tpi_now();
    if (r->native) {
        tp_rank_state *s = r->comm->state;
        int done = 0;
        tp_clear_error();
        tpi_call_enter(s, "req_test", s->comm_path, r->seq, true);
        tp_status st = tpi_call_leave(s, r->comm->ops->req_test(r->comm->handle, r->preq, &done));
        if (done || st)
            complete(r, st);
    } else {
        tpi_worker *pg = r->nb->pg;
        g_mutex_lock(&pg->mu);
        bool done = r->worker_done;
        g_mutex_unlock(&pg->mu);
        if (done)
            complete(r, r->status);
    }
    double t1 = tpi_now(), done = r->complete && r->t_done < t1 ? r->t_done : t1;
    r->wait_s += t1 - t0;
    r->exposed_s += done > t0 ? done - t0 : 0;
    if (!r->complete) {
        r->open_t0 = t0;
        r->open_t1 = t1;
    }
}

static void unlink_request(tp_request *r)
{
    tpi_nb *nb = r->nb;
    if (r->prev)
        r->prev->next = r->next;
    else
        nb->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        nb->tail = r->prev;
    r->prev = r->next = NULL;
}

/* Wait until the rank's progress thread has run every request issued so
 * far, on any comm of the rank. */
static void progress_drain(tpi_worker *pg)
{
    g_mutex_lock(&pg->mu);
    while (pg->settled != pg->issued)
        g_cond_wait(&pg->cv, &pg->mu);
    g_mutex_unlock(&pg->mu);
}

/* Whether a request of the plugin `ops` is queued or running (under mu). */
static bool plugin_pending(tpi_worker *pg, const tp_comm_ops *ops)
{
    if (pg->busy == ops)
        return true;
    for (GList *l = pg->queue.head; l; l = l->next)
        if (((tp_request *)l->data)->nb->shadow.ops == ops)
            return true;
    return false;
}

/* Complete comm's own pending native requests. */
static void native_drain(tp_comm *comm)
{
    if (comm->nb && !comm->nb->pg)
        for (tp_request *r = comm->nb->head; r; r = r->next)
            if (!r->complete)
                block(r);
}

void tpi_request_drain(tp_comm *comm)
{
    if (comm->state->progress)
        progress_drain(comm->state->progress);
    native_drain(comm);
}

void tpi_request_drain_plugin(tp_comm *comm)
{
    tpi_worker *pg = comm->state->progress;
    if (pg) {
        g_mutex_lock(&pg->mu);
        while (plugin_pending(pg, comm->ops))
            g_cond_wait(&pg->cv, &pg->mu);
        g_mutex_unlock(&pg->mu);
    }
    native_drain(comm);
}

void tpi_request_comm_end(tp_comm *comm)
{
    tpi_nb *nb = comm->nb;
    if (!nb)
        return;
    char saved[TPI_ERROR_MAX];
    snprintf(saved, sizeof saved, "%s", tp_last_error());
    tpi_request_drain(comm);
    while (nb->head) {
        tp_request *r = nb->head;
        if (!r->complete)
            block(r); /* core engine: done by now; this settles it on the rank's thread */
        unlink_request(r);
        r->comm = NULL; /* tp_wait returns its status; its times die with the comm's counters */
        r->nb = NULL;
    }
    if (nb->pg && --nb->pg->refs == 0)
        progress_stop(comm->state);
    g_free(nb);
    comm->nb = NULL;
    tp_clear_error();
    if (saved[0])
        tp_set_error(TP_ERR_INTERNAL, "%s", saved); /* keep the caller's message */
}

void tpi_request_rank_end(tp_rank_state *state)
{
    progress_stop(state); /* requests of comms never freed still run first */
}

/* --------------------------------------------------------------- issue */

static tp_status start_native(tp_comm *comm, tp_request *r)
{
    const tp_comm_ops *o = comm->ops;
    tp_rank_state *s = comm->state;
    const tpi_coll *c = &r->c;
    tp_status st;
    tp_clear_error();
    if (r->op == TP_OP_ALL_REDUCE) {
        tpi_call_enter(s, "iall_reduce", s->comm_path, r->seq, true);
        st = o->iall_reduce(comm->handle, c->send, c->recv, c->count, c->dt, c->redop, &r->preq);
    } else if (r->op == TP_OP_ALL_GATHER) {
        tpi_call_enter(s, "iall_gather", s->comm_path, r->seq, true);
        st = o->iall_gather(comm->handle, c->send, c->recv, c->counts, c->dt, &r->preq);
    } else {
        tpi_call_enter(s, "ireduce_scatter", s->comm_path, r->seq, true);
        st = o->ireduce_scatter(comm->handle, c->send, c->recv, c->counts, c->dt, c->redop,
                                &r->preq);
    }
    tpi_call_leave(s, st);
    if (st && !tp_last_error()[0])
        tp_set_error(st, "%s: backend '%s' failed to start it without a message", r->fn,
                     comm->plugin);
    if (st == TP_OK && !r->preq)
        st = tp_set_error(TP_ERR_PLUGIN,
                          "%s: backend '%s' returned TP_OK without a request: a bug in the "
                          "plugin",
                          r->fn, comm->plugin);
    return st;
}

/* Hand r to comm's progress thread (core engine), and put it last in the
 * comm's pending list. Cannot fail once the thread runs. */
static void enqueue(tpi_nb *nb, tp_request *r)
{
    r->nb = nb;
    if (!r->native) {
        g_mutex_lock(&nb->pg->mu);
        g_queue_push_tail(&nb->pg->queue, r);
        nb->pg->issued++;
        g_cond_broadcast(&nb->pg->cv);
        g_mutex_unlock(&nb->pg->mu);
    }
    r->prev = nb->tail;
    if (nb->tail)
        nb->tail->next = r;
    else
        nb->head = r;
    nb->tail = r;
}

static tp_request *request_new(tp_comm *comm, const char *fn, const tpi_coll *c, size_t bytes)
{
    size_t n = c->counts ? (size_t)comm->size : 0, *counts = NULL;
    if (n && !(counts = g_try_new(size_t, n)))
        return NULL;
    tp_request *r = g_try_new0(tp_request, 1);
    if (!r) {
        g_free(counts);
        return NULL;
    }
    if (n)
        memcpy(counts, c->counts, n * sizeof *counts);
    *r = (tp_request){.comm = comm,
                      .dev = comm->dev,
                      .fn = fn,
                      .plugin = comm->plugin,
                      .seq = comm->seq,
                      .op = c->op,
                      .phase = comm->state->phase,
                      .stats_epoch = comm->stats_epoch,
                      .c = *c,
                      .counts = counts,
                      .bytes = bytes,
                      .native = comm->ops->req_wait != NULL};
    r->c.counts = counts;
    return r;
}

tp_status tpi_request_issue(tp_comm *comm, const char *fn, const tpi_coll *c, size_t bytes,
                            tpi_coll_fn run, tp_request **req)
{
    double t0 = tpi_now();
    *req = NULL;
    tpi_nb *nb = NULL;
    TP_TRY(nb_get(comm, run, &nb));
    tp_request *r = request_new(comm, fn, c, bytes);
    if (!r)
        return tp_set_error(TP_ERR_NO_MEMORY, "%s: cannot allocate the request", fn);
    tp_status st = TP_OK;
    if (comm->state->staged)
        TP_TRY_GOTO(stage_in(r, comm->rank), st, fail);
    if (r->native)
        TP_TRY_GOTO(start_native(comm, r), st, fail);
    enqueue(nb, r);
    double t1 = tpi_now();
    tp_icounter *k = &comm->icounters[r->phase][r->op];
    k->calls++;
    k->bytes += bytes;
    k->issue_seconds += t1 - t0;
    r->t_issued = t1;
    *req = r;
    return TP_OK;
fail:
    request_free(r);
    return st;
}

/* ------------------------------------------------------------ tp_wait */

static tp_status request_status(const tp_request *r)
{
    if (r->status)
        tp_set_error(r->status, "%s", r->msg ? r->msg : tp_status_string(r->status));
    return r->status;
}

tp_status tp_wait(tp_request *r)
{
    if (!r)
        return TP_OK;
    if (r->comm) {
        if (!r->complete)
            block(r);
        tp_icounter *k = &r->comm->icounters[r->phase][r->op];
        if (r->stats_epoch == r->comm->stats_epoch) { /* else issued before tp_stats_reset */
            k->seconds += r->t_done > r->t_issued ? r->t_done - r->t_issued : 0;
            k->wait_seconds += r->wait_s;
            k->exposed_seconds += r->exposed_s;
        }
        unlink_request(r);
    }
    tp_clear_error();
    tp_status st = request_status(r);
    request_free(r);
    return st;
}

tp_status tp_test(tp_request *r, bool *done)
{
    if (!r || !done) {
        if (done)
            *done = false;
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_test: %s is NULL", !r ? "req" : "done");
    }
    if (r->comm && !r->complete)
        test_once(r);
    *done = r->complete;
    tp_clear_error();
    return r->complete ? request_status(r) : TP_OK;
}
