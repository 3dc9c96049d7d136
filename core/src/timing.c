/* SPDX-License-Identifier: MIT */
/* timing.c — how long counted calls take: host wall time, or on an
 * asynchronous device the time between two events, read in batches. */
#include <string.h>

#include "tp-internal.h"

/* An event from the pool or a new one; NULL (host time) if that fails. */
static void *event_get(tp_device *dev)
{
    void *ev = NULL;
    if (dev->npool > 0)
        ev = dev->pool[--dev->npool];
    else if (dev->ops->event_create(dev->handle, &ev) != TP_OK)
        ev = NULL;
    if (ev && dev->ops->event_record(dev->handle, ev) != TP_OK) {
        dev->ops->event_destroy(dev->handle, ev);
        ev = NULL;
    }
    return ev;
}

static void event_put(tp_device *dev, void *ev)
{
    if (dev->npool < (int)G_N_ELEMENTS(dev->pool))
        dev->pool[dev->npool++] = ev;
    else
        dev->ops->event_destroy(dev->handle, ev);
}

tp_tick tpi_tick_start(tp_device *dev)
{
    tp_tick t = {tpi_now(), NULL};
    if (dev && dev->state)
        dev->state->tick_ns = (int64_t)(t.t0 * 1e9); /* for the plugin call's tpi_call_enter */
    if (dev && dev->events) {
        t.ev0 = event_get(dev);
        tp_clear_error(); /* a failed event only means host time for this call */
    }
    return t;
}

void tpi_tick_stop(tp_device *dev, tp_tick tick, double *seconds)
{
    if (dev && dev->sync_timing)
        dev->ops->synchronize(dev->handle);
    void *ev1 = tick.ev0 ? event_get(dev) : NULL;
    if (!ev1) {
        if (tick.ev0)
            event_put(dev, tick.ev0);
        *seconds += tpi_now() - tick.t0;
        tp_clear_error();
        return;
    }
    if (dev->npending == TP_TIMING_PENDING)
        tpi_device_read_timings(dev); /* bounds how far the host runs ahead of the device */
    dev->pending[dev->npending++] = (tp_timing){tick.ev0, ev1, seconds};
}

void tpi_tick_cancel(tp_device *dev, tp_tick tick)
{
    if (tick.ev0)
        event_put(dev, tick.ev0);
}

void tpi_device_read_timings(tp_device *dev)
{
    if (!dev || dev->npending == 0)
        return;
    /* called after failures too (tp_run, tp_comm_free): keep their message
     * (in a fixed buffer: this runs on error paths, maybe out of memory) */
    static _Thread_local char saved[TPI_ERROR_MAX];
    g_strlcpy(saved, tp_last_error(), sizeof saved);
    for (int i = 0; i < dev->npending; i++) {
        tp_timing *p = &dev->pending[i];
        double s = 0;
        if (dev->ops->event_elapsed(dev->handle, p->ev0, p->ev1, &s) == TP_OK)
            *p->seconds += s;
        event_put(dev, p->ev0);
        event_put(dev, p->ev1);
    }
    dev->npending = 0;
    if (saved[0])
        tp_set_error(TP_OK, "%s", saved);
    else
        tp_clear_error();
}

void tpi_device_timing_free(tp_device *dev)
{
    tpi_device_read_timings(dev);
    while (dev->npool > 0)
        dev->ops->event_destroy(dev->handle, dev->pool[--dev->npool]);
}

void tpi_wait_log_add(tpi_wait_log *log, tp_phase phase, tp_op op, double t_in, double t_out)
{
    if (log->n == log->cap) {
        size_t cap = log->cap ? 2 * log->cap : 256;
        tpi_wait_entry *e = g_try_renew(tpi_wait_entry, log->e, cap);
        if (!e) {
            log->lost = true;
            return;
        }
        log->e = e;
        log->cap = cap;
    }
    log->e[log->n++] = (tpi_wait_entry){t_in, t_out, (uint8_t)phase, (uint8_t)op};
}

void tpi_wait_log_free(tpi_wait_log *log)
{
    if (!log)
        return;
    g_free(log->e);
    g_free(log);
}
