/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tp-internal.h"
/* watch.c — fatal signals and the watchdog.
 *
 * What tp says when a plugin crashes or hangs.
 *
 * Every rank records the plugin call it is inside (tp_call, written by
 * comm.c, device.c and launch.c around each call). Two readers:
 *
 * - A handler for SIGSEGV, SIGBUS, SIGILL, SIGFPE and SIGABRT (TP_SIGNALS=0
 *   installs none) prints which rank was inside which op of which plugin,
 *   with the collective's sequence number, using write(2) and hand-made
 *   numbers only (async-signal-safe), then restores the previous action
 *   and lets the signal happen again, so the exit status and core dump
 *   are what they would have been without tp.
 * - A watchdog thread per tp_run wakes about once a second (a timed wait on
 *   a condition variable) and, when a rank has been inside one comm plugin
 *   call for longer than TP_TIMEOUT_S plus max(5 s, 10 %), prints every
 *   local rank's current call and ends the process with TP_EXIT_WATCHDOG.
 *   Device calls are named in crash reports but not bounded: a large GEMM
 *   is not a wait for a peer.
 */

/* ------------------------------------------------ async-signal-safe text */

typedef struct line {
    char buf[TPI_ERROR_MAX + 256];
    size_t n;
} line;

static void put_s(line *l, const char *s)
{
    for (; s && *s && l->n < sizeof l->buf - 1; s++)
        l->buf[l->n++] = *s;
}

static void put_u(line *l, uint64_t v)
{
    char d[24];
    int i = 0;
    do {
        d[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v && i < (int)sizeof d);
    while (i > 0 && l->n < sizeof l->buf - 1)
        l->buf[l->n++] = d[--i];
}

static void put_i(line *l, int64_t v)
{
    if (v < 0) {
        put_s(l, "-");
        v = -v;
    }
    put_u(l, (uint64_t)v);
}

/* Seconds with three decimals, from nanoseconds. */
static void put_secs(line *l, int64_t ns)
{
    if (ns < 0)
        ns = 0;
    uint64_t ms = (uint64_t)ns / 1000000;
    put_u(l, ms / 1000);
    put_s(l, ".");
    char frac[4] = {(char)('0' + ms % 1000 / 100), (char)('0' + ms % 100 / 10),
                    (char)('0' + ms % 10), 0};
    put_s(l, frac);
}

static void put_line(line *l)
{
    l->buf[l->n++] = '\n';
    size_t off = 0;
    while (off < l->n) {
        ssize_t w = write(STDERR_FILENO, l->buf + off, l->n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    l->n = 0;
}

static const char *signal_name(int sig)
{
    switch (sig) {
        case SIGSEGV: return "SIGSEGV";
        case SIGBUS: return "SIGBUS";
        case SIGILL: return "SIGILL";
        case SIGFPE: return "SIGFPE";
        case SIGABRT: return "SIGABRT";
        default: return "a fatal signal";
    }
}

/* A consistent snapshot of a rank's call; false when it is not inside one. */
typedef struct snapshot {
    const char *op, *path;
    uint64_t seq;
    int64_t t0_ns, last_ns;
    bool watched;
} snapshot;

static bool snap(const tp_rank_state *s, snapshot *out)
{
    tp_call *c = (tp_call *)&s->call;
    for (int tries = 0; tries < 3; tries++) {
        int64_t t0 = atomic_load_explicit(&c->t0_ns, memory_order_acquire);
        out->op = atomic_load_explicit(&c->op, memory_order_acquire);
        if (!out->op)
            return false;
        out->path = atomic_load_explicit(&c->path, memory_order_relaxed);
        out->seq = atomic_load_explicit(&c->seq, memory_order_relaxed);
        out->watched = atomic_load_explicit(&c->watched, memory_order_relaxed);
        out->last_ns = atomic_load_explicit(&c->last_ns, memory_order_relaxed);
        out->t0_ns = atomic_load_explicit(&c->t0_ns, memory_order_acquire);
        /* t0 alone may repeat (a coarse clock tick holds many calls) */
        if (out->t0_ns == t0 && atomic_load_explicit(&c->op, memory_order_acquire) == out->op &&
            atomic_load_explicit(&c->seq, memory_order_relaxed) == out->seq)
            return true;
    }
    return false; /* it is moving: not stuck, and not what crashed */
}

/* "inside all_reduce (collective #3 on its communicator) of plugin PATH for 1.234 s" */
static void put_call(line *l, const snapshot *c, int64_t now)
{
    put_s(l, "inside ");
    put_s(l, c->op);
    put_s(l, c->watched ? " (collective #" : " (device call #");
    put_u(l, c->seq);
    put_s(l, c->watched ? " on its communicator) of plugin " : ") of plugin ");
    put_s(l, c->path ? c->path : "?");
    put_s(l, " for ");
    put_secs(l, now - c->t0_ns);
    put_s(l, " s");
    if (c->last_ns > c->t0_ns) {
        put_s(l, ", last progress ");
        put_secs(l, now - c->last_ns);
        put_s(l, " s ago");
    }
}

/* ------------------------------------------------------- the ranks known */

/* Ranks running now, for a crash on a thread that is not a rank (a
 * plugin's own thread). Slots are claimed with a compare-and-swap. */
#define MAX_TRACKED 1024
static _Atomic(tp_rank_state *) tracked[MAX_TRACKED];
/* initial-exec: the handler must not reach it through __tls_get_addr,
 * which may allocate on a thread's first access. */
static _Thread_local tp_rank_state *self __attribute__((tls_model("initial-exec")));

void tpi_progress(void)
{
    tp_rank_state *s = self;
    if (s)
        atomic_store_explicit(&s->call.last_ns, tpi_now_ns(), memory_order_relaxed);
}

/* ------------------------------------------------------------- signals */

static const int fatal_signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
#define N_FATAL (sizeof fatal_signals / sizeof fatal_signals[0])
static struct sigaction previous[N_FATAL];
static atomic_bool installed, reported;
static _Thread_local struct {
    void *mem;
    stack_t old;
    bool set;
} alt;

static void report_signal(int sig)
{
    line l = {.n = 0};
    int64_t now = tpi_now_ns();
    snapshot c;
    if (self) {
        put_s(&l, "tp: rank ");
        put_i(&l, self->world_rank);
        put_s(&l, ": ");
        put_s(&l, signal_name(sig));
        if (snap(self, &c)) {
            put_s(&l, " ");
            put_call(&l, &c, now);
        } else {
            put_s(&l, " outside any plugin call (in the program, or a library it called)");
        }
        put_line(&l);
        return;
    }
    /* Not a rank's thread: name every rank that is inside a plugin call. */
    for (int i = 0; i < MAX_TRACKED; i++) {
        tp_rank_state *s = atomic_load_explicit(&tracked[i], memory_order_acquire);
        if (!s || !snap(s, &c))
            continue;
        if (!l.n) {
            put_s(&l, "tp: ");
            put_s(&l, signal_name(sig));
            put_s(&l, " on a thread that is not a tp rank (a plugin's or the program's own)");
            put_line(&l);
        }
        put_s(&l, "tp:   rank ");
        put_i(&l, s->world_rank);
        put_s(&l, " is ");
        put_call(&l, &c, now);
        put_line(&l);
    }
}

static void on_fatal(int sig, siginfo_t *info, void *uctx)
{
    (void)uctx;
    int saved = errno;
    if (!atomic_exchange(&reported, true))
        report_signal(sig);
    /* Put back what was there before tp (the default, or the program's or
     * a sanitizer's handler) and let the signal happen again: a fault
     * repeats when this handler returns; a sent signal or abort() is
     * raised again (it stays blocked until the return). */
    for (size_t i = 0; i < N_FATAL; i++) {
        if (fatal_signals[i] != sig)
            continue;
        struct sigaction act = previous[i];
        if (act.sa_handler == SIG_IGN)
            act.sa_handler = SIG_DFL; /* an ignored fault would repeat forever */
        sigaction(sig, &act, NULL);
    }
    if (!info || info->si_code <= 0 || sig == SIGABRT)
        raise(sig);
    errno = saved;
}

tp_status tpi_signals_install(void)
{
    const char *env = getenv("TP_SIGNALS");
    if (env && env[0] && strcmp(env, "0") != 0 && strcmp(env, "1") != 0)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "TP_SIGNALS='%s': expected 1 (tp names the rank and plugin call on "
                            "a fatal signal; the default) or 0 (no signal handlers)",
                            env);
    if ((env && strcmp(env, "0") == 0) || atomic_exchange(&installed, true))
        return TP_OK;
    for (size_t i = 0; i < N_FATAL; i++) {
        struct sigaction act;
        memset(&act, 0, sizeof act);
        act.sa_sigaction = on_fatal;
        act.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&act.sa_mask);
        if (sigaction(fatal_signals[i], &act, &previous[i]) != 0)
            tpi_debug("signals", "cannot install a handler for signal %d", fatal_signals[i]);
    }
    return TP_OK;
}

/* An alternate signal stack, so that a stack overflow inside a plugin is
 * reported too. Best effort: without memory the rank runs without one. */
static void altstack_begin(void)
{
    alt.set = false;
    if (!atomic_load(&installed))
        return;
    size_t size = 64 * 1024;
    alt.mem = malloc(size);
    if (!alt.mem)
        return;
    stack_t st = {.ss_sp = alt.mem, .ss_size = size, .ss_flags = 0};
    if (sigaltstack(&st, &alt.old) == 0) {
        alt.set = true;
    } else {
        free(alt.mem);
        alt.mem = NULL;
    }
}

static void altstack_end(void)
{
    if (!alt.set)
        return;
    if (alt.old.ss_flags & SS_DISABLE) {
        stack_t off = {.ss_flags = SS_DISABLE};
        sigaltstack(&off, NULL);
    } else {
        sigaltstack(&alt.old, NULL);
    }
    free(alt.mem);
    alt.mem = NULL;
    alt.set = false;
}

void tpi_watch_rank_begin(tp_rank_state *s)
{
    self = s;
    for (int i = 0; i < MAX_TRACKED; i++) {
        tp_rank_state *expect = NULL;
        if (atomic_compare_exchange_strong(&tracked[i], &expect, s))
            break;
    }
    altstack_begin();
}

void tpi_watch_rank_end(tp_rank_state *s)
{
    altstack_end();
    for (int i = 0; i < MAX_TRACKED; i++) {
        tp_rank_state *expect = s;
        if (atomic_compare_exchange_strong(&tracked[i], &expect, NULL))
            break;
    }
    if (self == s)
        self = NULL;
}

/* ------------------------------------------------------------ watchdog */

struct tpi_watchdog {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stop;
    tp_rank_state *const *ranks;
    tp_rank_state **workers; /* [n]: each rank's progress thread, or NULL (under lock) */
    int n;
    double timeout_s;
    int64_t limit_ns, period_ns;
};

double tpi_watchdog_limit(double timeout_s)
{
    double grace = 0.1 * timeout_s;
    return timeout_s + (grace > 5.0 ? grace : 5.0);
}

/* Print every rank's call and end the process: rank `stuck` is over. */
static void watchdog_fire(const tpi_watchdog *w, int stuck, const snapshot *c, int64_t now)
{
    line l = {.n = 0};
    put_s(&l, "tp: watchdog: rank ");
    put_i(&l, w->ranks[stuck]->world_rank);
    put_s(&l, " has been ");
    put_call(&l, c, now);
    put_s(&l, ", over TP_TIMEOUT_S (");
    put_secs(&l, (int64_t)(w->timeout_s * 1e9));
    put_s(&l, " s) plus a grace period (");
    put_secs(&l, w->limit_ns - (int64_t)(w->timeout_s * 1e9));
    put_s(&l, " s) without progress: the plugin does not return");
    put_line(&l);
    for (int i = 0; i < w->n; i++) {
        snapshot o;
        put_s(&l, "tp: watchdog:   rank ");
        put_i(&l, w->ranks[i]->world_rank);
        put_s(&l, ": ");
        if (snap(w->ranks[i], &o))
            put_call(&l, &o, now);
        else
            put_s(&l, "not inside a plugin call");
        if (atomic_load_explicit(&w->ranks[i]->failed, memory_order_acquire)) {
            put_s(&l, "; it failed: ");
            put_s(&l, w->ranks[i]->error);
        }
        put_line(&l);
        if (w->workers[i] && snap(w->workers[i], &o)) {
            put_s(&l, "tp: watchdog:   rank ");
            put_i(&l, w->ranks[i]->world_rank);
            put_s(&l, "'s progress thread (nonblocking collectives): ");
            put_call(&l, &o, now);
            put_line(&l);
        }
    }
    put_s(&l, "tp: watchdog: ending the process with exit status ");
    put_u(&l, TP_EXIT_WATCHDOG);
    put_line(&l);
    /* What the program printed so far, unless a stuck thread holds stdout
     * or stdout cannot take it now (a full pipe whose reader stalled must
     * not hang the watchdog itself). */
    struct pollfd out = {.fd = fileno(stdout), .events = POLLOUT};
    if (ftrylockfile(stdout) == 0) {
        if (poll(&out, 1, 100) == 1 && (out.revents & POLLOUT))
            fflush(stdout);
        funlockfile(stdout);
    }
    _exit(TP_EXIT_WATCHDOG);
}

/* Under w->lock (the workers may not change meanwhile). A rank waiting
 * for a request its progress thread serves is not inside a plugin call:
 * the thread's own call is watched as the rank's. */
static void watchdog_check(const tpi_watchdog *w)
{
    int64_t now = tpi_now_ns();
    for (int i = 0; i < w->n; i++) {
        snapshot c;
        if (snap(w->ranks[i], &c) && c.watched && now - c.last_ns > w->limit_ns)
            watchdog_fire(w, i, &c, now);
        if (w->workers[i] && snap(w->workers[i], &c) && c.watched && now - c.last_ns > w->limit_ns)
            watchdog_fire(w, i, &c, now);
    }
}

void tpi_watchdog_watch_worker(tpi_watchdog *w, const tp_rank_state *owner, tp_rank_state *worker)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    for (int i = 0; i < w->n; i++)
        if (w->ranks[i] == owner)
            w->workers[i] = worker;
    pthread_mutex_unlock(&w->lock);
}

static void *watchdog_main(void *arg)
{
    tpi_watchdog *w = arg;
    pthread_mutex_lock(&w->lock);
    while (!w->stop) {
        struct timespec dl;
        clock_gettime(CLOCK_MONOTONIC, &dl);
        int64_t t = (int64_t)dl.tv_nsec + w->period_ns;
        dl.tv_sec += (time_t)(t / 1000000000);
        dl.tv_nsec = (long)(t % 1000000000);
        while (!w->stop && pthread_cond_timedwait(&w->cond, &w->lock, &dl) == 0) {
        }
        if (!w->stop)
            watchdog_check(w);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

tpi_watchdog *tpi_watchdog_start(tp_rank_state *const *ranks, int n, double timeout_s)
{
    tpi_watchdog *w = calloc(1, sizeof *w);
    tp_rank_state **workers = calloc((size_t)(n > 0 ? n : 1), sizeof *workers);
    if (!w || !workers) {
        free(w);
        free(workers);
        return NULL;
    }
    w->workers = workers;
    w->ranks = ranks;
    w->n = n;
    w->timeout_s = timeout_s;
    w->limit_ns = (int64_t)(tpi_watchdog_limit(timeout_s) * 1e9);
    w->period_ns = w->limit_ns / 10 < 1000000000 ? w->limit_ns / 10 : 1000000000;
    if (w->period_ns < 10000000)
        w->period_ns = 10000000;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&w->lock, NULL);
    int rc = pthread_create(&w->thread, NULL, watchdog_main, w);
    if (rc) {
        tpi_debug("launch", "no watchdog for this run: cannot start its thread (%s)", strerror(rc));
        pthread_cond_destroy(&w->cond);
        pthread_mutex_destroy(&w->lock);
        free(w->workers);
        free(w);
        return NULL;
    }
    return w;
}

void tpi_watchdog_stop(tpi_watchdog *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->stop = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
    free(w->workers);
    free(w);
}
