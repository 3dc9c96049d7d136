/* SPDX-License-Identifier: MIT */
/* error.c — status names, per-thread last error, debug output, tp_host. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tp-internal.h"

/* TPI_ERROR_MAX (tp-internal.h): long enough for the loader's "plugin not
 * found" listing. */
#define TP_ERROR_MAX TPI_ERROR_MAX

static _Thread_local char last_error[TP_ERROR_MAX];

const char *tp_status_string(tp_status status)
{
    static const char *const names[TP_STATUS_COUNT_] = {
        [TP_OK] = "TP_OK",
        [TP_ERR_INVALID_ARG] = "TP_ERR_INVALID_ARG",
        [TP_ERR_SHAPE] = "TP_ERR_SHAPE",
        [TP_ERR_NOT_SUPPORTED] = "TP_ERR_NOT_SUPPORTED",
        [TP_ERR_NO_MEMORY] = "TP_ERR_NO_MEMORY",
        [TP_ERR_PLUGIN] = "TP_ERR_PLUGIN",
        [TP_ERR_UNAVAILABLE] = "TP_ERR_UNAVAILABLE",
        [TP_ERR_TIMEOUT] = "TP_ERR_TIMEOUT",
        [TP_ERR_PEER] = "TP_ERR_PEER",
        [TP_ERR_COMM] = "TP_ERR_COMM",
        [TP_ERR_DEVICE] = "TP_ERR_DEVICE",
        [TP_ERR_IO] = "TP_ERR_IO",
        [TP_ERR_INTERNAL] = "TP_ERR_INTERNAL",
    };
    if ((unsigned)status >= TP_STATUS_COUNT_)
        return "TP_ERR_UNKNOWN";
    return names[status];
}

const char *tp_last_error(void)
{
    return last_error;
}

tp_status tpi_set_errorv(tp_status status, const char *fmt, va_list ap)
{
    /* Format into a temporary first: fmt's arguments may include
     * tp_last_error() itself (e.g. when adding a prefix). */
    char tmp[TP_ERROR_MAX];
    vsnprintf(tmp, sizeof tmp, fmt ? fmt : "", ap);
    memcpy(last_error, tmp, sizeof tmp);
    return status;
}

tp_status tp_set_error(tp_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tpi_set_errorv(status, fmt, ap);
    va_end(ap);
    return status;
}

void tp_clear_error(void)
{
    last_error[0] = '\0';
}

/* TP_DEBUG is a list of topics separated by ',', ':' or spaces; "all"
 * enables every topic. Read once per process. */
bool tpi_debug_enabled(const char *topic)
{
    static gsize once;
    static char **topics;
    if (g_once_init_enter(&once)) {
        const char *env = getenv("TP_DEBUG");
        topics = g_strsplit_set(env ? env : "", ",: ", -1);
        g_once_init_leave(&once, 1);
    }
    for (char **t = topics; *t; t++)
        if (**t && (strcmp(*t, topic) == 0 || strcmp(*t, "all") == 0))
            return true;
    return false;
}

static void debugv(const char *topic, const char *fmt, va_list ap)
{
    if (!topic || !tpi_debug_enabled(topic))
        return;
    char line[TP_ERROR_MAX];
    vsnprintf(line, sizeof line, fmt ? fmt : "", ap);
    fprintf(stderr, "tp[%s]: %s\n", topic, line); /* one call: lines of threads don't mix */
}

void tpi_debug(const char *topic, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    debugv(topic, fmt, ap);
    va_end(ap);
}

void tpi_host_init(tp_host *host, double timeout_s)
{
    memset(host, 0, sizeof *host);
    host->struct_size = sizeof *host;
    host->set_error = tp_set_error;
    host->debug = tpi_debug;
    host->timeout_s = timeout_s;
}

double tpi_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
