/* SPDX-License-Identifier: MIT */
/* error.c — status names, per-thread last error, debug output, tp_host. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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

/* The rank a debug line names: the rank thread's own (tp_run sets it), else
 * the process's one rank (one-rank-per-process engines), else none. */
static _Thread_local int thread_rank = -1;
static atomic_int process_rank = -1;

void tpi_debug_set_rank(int rank)
{
    thread_rank = rank;
}

void tpi_debug_set_process_rank(int rank)
{
    atomic_store(&process_rank, rank);
}

/* Expand TP_DEBUG_FILE's %h (short host name), %p (pid) and %% into out.
 * Returns false when the result does not fit. */
static bool expand_debug_path(const char *pattern, const char *host, char *out, size_t len)
{
    size_t n = 0;
    for (const char *c = pattern; *c; c++) {
        char buf[24] = {*c, '\0'};
        const char *piece = buf;
        if (c[0] == '%' && (c[1] == 'h' || c[1] == 'p' || c[1] == '%')) {
            c++;
            if (*c == 'h')
                piece = host;
            else if (*c == 'p')
                snprintf(buf, sizeof buf, "%ld", (long)getpid());
        }
        size_t k = strlen(piece);
        if (n + k >= len) {
            snprintf(out, len, "(longer than %zu bytes)", len - 1);
            return false;
        }
        memcpy(out + n, piece, k);
        n += k;
    }
    out[n] = '\0';
    return true;
}

/* Where debug lines go, and the host name they start with; set up once. */
static struct {
    FILE *out; /* stderr, or TP_DEBUG_FILE's file */
    char host[64];
    tp_status status; /* TP_OK, or why TP_DEBUG_FILE could not be opened */
    char error[TP_ERROR_MAX];
} debug_sink;

static void debug_sink_init(void)
{
    char host[64] = "unknown";
    if (gethostname(host, sizeof host) == 0) {
        host[sizeof host - 1] = '\0';
        host[strcspn(host, ".")] = '\0'; /* the short name, as NCCL prints it */
    }
    memcpy(debug_sink.host, host, sizeof host);
    debug_sink.out = stderr;
    const char *pattern = getenv("TP_DEBUG_FILE"), *topics = getenv("TP_DEBUG");
    if (!pattern || !*pattern || !topics || !*topics)
        return;
    char path[4096] = "(too long)";
    FILE *f = NULL;
    int err = ENAMETOOLONG;
    if (expand_debug_path(pattern, host, path, sizeof path)) {
        f = fopen(path, "we");
        err = errno;
    }
    if (!f) {
        debug_sink.status = TP_ERR_IO;
        snprintf(debug_sink.error, sizeof debug_sink.error,
                 "TP_DEBUG_FILE=\"%s\": cannot open \"%.2048s\" for writing: %s; give a path in a "
                 "writable directory (%%h is the host name, %%p the process id), or unset "
                 "TP_DEBUG_FILE to print to stderr",
                 pattern, path, strerror(err));
        fprintf(stderr, "tp %s:%ld: %s; debug lines go to stderr\n", host, (long)getpid(),
                debug_sink.error);
        return;
    }
    setvbuf(f, NULL, _IOLBF, 0);
    debug_sink.out = f;
}

static void debug_sink_once(void)
{
    static gsize once;
    if (g_once_init_enter(&once)) {
        debug_sink_init();
        g_once_init_leave(&once, 1);
    }
}

tp_status tpi_debug_setup(void)
{
    debug_sink_once();
    if (debug_sink.status != TP_OK)
        return tp_set_error(debug_sink.status, "%s", debug_sink.error);
    return TP_OK;
}

static void debugv(const char *topic, const char *fmt, va_list ap)
{
    if (!topic || !tpi_debug_enabled(topic))
        return;
    debug_sink_once();
    char line[TP_ERROR_MAX], rank[16] = "-";
    vsnprintf(line, sizeof line, fmt ? fmt : "", ap);
    int r = thread_rank >= 0 ? thread_rank : atomic_load(&process_rank);
    if (r >= 0)
        snprintf(rank, sizeof rank, "%d", r);
    /* one call: lines of threads don't mix; the pid now, not at setup (fork) */
    fprintf(debug_sink.out, "%s:%ld [%s] tp[%s]: %s\n", debug_sink.host, (long)getpid(), rank,
            topic, line);
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
