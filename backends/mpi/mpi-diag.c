/* SPDX-License-Identifier: MIT */
/*
 * mpi-diag.c — what each rank is doing, published where the TP_TIMEOUT_S
 * watchdog of another rank can read it, so that a timeout names the rank
 * that stalled instead of only the rank that waited.
 *
 * Side channel. Each rank owns one slot in an MPI shared-memory window
 * (MPI_Win_allocate_shared over MPI_COMM_TYPE_SHARED): its state (outside
 * tp's collectives, inside one, finalized), the collective's kind, the
 * communicator's key and the collective's sequence number on it, since
 * when, and a heartbeat its watchdog thread writes every tick. Peers read
 * the slots with plain atomic loads, so the watchdog makes no MPI call and
 * this works at every MPI thread level (MPI_THREAD_MULTIPLE is asked for
 * but not required). The window is created once per process, collectively
 * in the first world(), and kept until MPI_Finalize, like MPI itself. Only
 * ranks on the same node share memory: a rank on another node is reported
 * as "could not be determined".
 *
 * Keys. A communicator's key is the same on all its members and differs
 * between communicators: the world dups are keyed by how many came before
 * (every rank makes them in the same order), a split's result by its
 * parent's key, the parent's sequence number at the split, and the color.
 *
 * Consistency. A rank's own thread is the only writer of its slot's state
 * fields (one rank per process), guarded by a sequence lock; the heartbeat
 * is a field of its own, written by the watchdog thread.
 */
#include "mpi-internal.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum {
    DIAG_NONE = 0,
    DIAG_IDLE,
    DIAG_IN_OP,
    DIAG_DONE
};

typedef struct diag_slot {
    _Atomic uint64_t gen;         /* sequence lock: odd while the fields below change */
    _Atomic int state;            /* DIAG_* */
    _Atomic int opk;              /* mpi_opk of the current or last collective */
    _Atomic uint64_t key;         /* its communicator's key */
    _Atomic uint64_t seq;         /* its sequence number on that communicator */
    _Atomic int64_t since_ns;     /* CLOCK_MONOTONIC when the state last changed */
    _Atomic int64_t heartbeat_ns; /* the watchdog's last tick; 0: none yet */
} diag_slot;

typedef struct diag_view { /* a consistent copy of a slot's state fields */
    int state, opk;
    uint64_t key, seq;
    int64_t since_ns, heartbeat_ns;
} diag_view;

static diag_slot *diag_self;  /* this rank's slot, NULL without the window */
static diag_slot **diag_peer; /* by world rank: NULL when not on this node */
static int diag_world_size;
static bool diag_tried; /* the window was attempted (created or failed) */

static const char *const opk_names[TPMPI_OPK_COUNT_] = {
    [TPMPI_OPK_WORLD] = "world (MPI_Comm_dup)",
    [TPMPI_OPK_SPLIT] = "split (MPI_Comm_split)",
    [TPMPI_OPK_ALL_REDUCE] = "all_reduce",
    [TPMPI_OPK_ALL_GATHER] = "all_gather",
    [TPMPI_OPK_REDUCE_SCATTER] = "reduce_scatter",
    [TPMPI_OPK_BROADCAST] = "broadcast",
    [TPMPI_OPK_BARRIER] = "barrier",
    [TPMPI_OPK_DIAG] = "init (shared-memory state window)",
};

const char *mpi_opk_name(int opk)
{
    return opk >= 0 && opk < TPMPI_OPK_COUNT_ ? opk_names[opk] : "an MPI call";
}

static int64_t diag_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* splitmix64's finalizer: spreads the bits of a combination */
static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

uint64_t mpi_diag_key(uint64_t parent, uint64_t seq, int color)
{
    return mix(mix(mix(parent) ^ seq) ^ (uint64_t)(uint32_t)color);
}

/* ------------------------------------------------------------ window */

static bool diag_map(MPI_Comm node, MPI_Win win, int world_rank)
{
    int n = 0;
    MPI_Comm_size(node, &n);
    MPI_Group ng, wg;
    MPI_Comm_group(node, &ng);
    MPI_Comm_group(MPI_COMM_WORLD, &wg);
    bool ok = true;
    for (int i = 0; i < n && ok; i++) {
        int w = MPI_UNDEFINED, disp = 0;
        MPI_Aint sz = 0;
        void *p = NULL;
        MPI_Group_translate_ranks(ng, 1, &i, wg, &w);
        ok = MPI_Win_shared_query(win, i, &sz, &disp, &p) == MPI_SUCCESS && p &&
             sz >= (MPI_Aint)sizeof(diag_slot) && w >= 0 && w < diag_world_size;
        if (ok)
            diag_peer[w] = p;
    }
    MPI_Group_free(&ng);
    MPI_Group_free(&wg);
    diag_self = ok ? diag_peer[world_rank] : NULL;
    return diag_self != NULL;
}

void mpi_diag_open(MPI_Comm world_dup, int world_rank, int world_size)
{
    if (diag_tried)
        return;
    diag_tried = true;
    diag_world_size = world_size;
    diag_peer = calloc((size_t)world_size, sizeof *diag_peer);
    MPI_Comm node = MPI_COMM_NULL;
    MPI_Win win = MPI_WIN_NULL;
    void *base = NULL;
    const char *what = "MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)";
    /* world_dup returns errors, and so does node, its split */
    int rc = MPI_Comm_split_type(world_dup, MPI_COMM_TYPE_SHARED, world_rank, MPI_INFO_NULL, &node);
    if (rc == MPI_SUCCESS) {
        what = "MPI_Win_allocate_shared";
        rc = MPI_Win_allocate_shared((MPI_Aint)sizeof(diag_slot), 1, MPI_INFO_NULL, node, &base,
                                     &win);
    }
    if (rc == MPI_SUCCESS && base) {
        MPI_Win_set_errhandler(win, MPI_ERRORS_RETURN);
        memset(base, 0, sizeof(diag_slot));
        what = "MPI_Win_shared_query";
        if (diag_peer && diag_map(node, win, world_rank)) {
            atomic_store(&diag_self->since_ns, diag_now_ns());
            atomic_store(&diag_self->state, DIAG_IDLE);
        }
        /* every slot is zeroed before anyone reads it */
        MPI_Barrier(node);
    }
    if (!diag_self) {
        char msg[MPI_MAX_ERROR_STRING + 1] = "no memory";
        int len = 0;
        if (rc != MPI_SUCCESS && MPI_Error_string(rc, msg, &len) == MPI_SUCCESS)
            msg[len] = '\0';
        mpi_host->debug("comm",
                        "mpi: no shared-memory state window (%s: %s): a TP_TIMEOUT_S report "
                        "will not name the stalled rank",
                        what, msg);
    }
    /* The window and its communicator live until MPI_Finalize. */
}

/* ------------------------------------------------------------ writers */

static void diag_set(int state, int opk, uint64_t key, uint64_t seq)
{
    diag_slot *s = diag_self;
    if (!s)
        return;
    uint64_t g = atomic_load_explicit(&s->gen, memory_order_relaxed);
    atomic_store(&s->gen, g + 1);
    if (opk >= 0) {
        atomic_store(&s->opk, opk);
        atomic_store(&s->key, key);
        atomic_store(&s->seq, seq);
    }
    atomic_store(&s->state, state);
    atomic_store(&s->since_ns, diag_now_ns());
    atomic_store(&s->gen, g + 2);
}

void mpi_diag_enter(int opk, uint64_t key, uint64_t seq)
{
    diag_set(DIAG_IN_OP, opk, key, seq);
}

void mpi_diag_leave(void)
{
    diag_set(DIAG_IDLE, -1, 0, 0);
}

void mpi_diag_done(void)
{
    diag_set(DIAG_DONE, -1, 0, 0);
}

void mpi_diag_heartbeat(void)
{
    if (diag_self)
        atomic_store(&diag_self->heartbeat_ns, diag_now_ns());
}

/* ------------------------------------------------------------ report */

static bool diag_read(const diag_slot *s, diag_view *v)
{
    for (int tries = 0; tries < 1000; tries++) {
        uint64_t g1 = atomic_load(&s->gen);
        if (g1 & 1)
            continue;
        v->state = atomic_load(&s->state);
        v->opk = atomic_load(&s->opk);
        v->key = atomic_load(&s->key);
        v->seq = atomic_load(&s->seq);
        v->since_ns = atomic_load(&s->since_ns);
        if (atomic_load(&s->gen) == g1) {
            v->heartbeat_ns = atomic_load(&s->heartbeat_ns);
            return true;
        }
    }
    return false;
}

typedef struct diag_out { /* a bounded string being appended to */
    char *buf;
    size_t len, cap;
} diag_out;

static void put(diag_out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(diag_out *o, const char *fmt, ...)
{
    if (o->len + 1 >= o->cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->len = o->len + (size_t)n < o->cap ? o->len + (size_t)n : o->cap - 1;
}

static double ago_s(int64_t now, int64_t t)
{
    return (double)(now - t) / 1e9;
}

/* One peer that is not waiting in the same collective as this rank. */
static void describe_peer(diag_out *o, int m, const diag_view *v, const mpi_diag_site *at,
                          int64_t now, double stale_s)
{
    const char *here = mpi_opk_name(at->opk), *its = mpi_opk_name(v->opk);
    const char *which = v->key == at->key ? "this communicator" : "another communicator";
    double since = ago_s(now, v->since_ns);
    switch (v->state) {
        case DIAG_NONE: put(o, "rank %d has not opened its tp communicators yet", m); break;
        case DIAG_DONE: put(o, "rank %d has left tp (finalized %.1f s ago)", m, since); break;
        case DIAG_IN_OP:
            if (v->key == at->key && v->seq == at->seq)
                put(o, "rank %d is inside %s #%llu too", m, here, (unsigned long long)at->seq);
            else if (v->key == at->key)
                put(o, "rank %d is at collective #%llu (%s) on this communicator, for %.1f s", m,
                    (unsigned long long)v->seq, its, since);
            else
                put(o, "rank %d waits in %s #%llu on another communicator, for %.1f s", m, its,
                    (unsigned long long)v->seq, since);
            break;
        default:
            if (v->key == at->key && v->seq >= at->seq)
                put(o, "rank %d has finished %s #%llu and", m, its, (unsigned long long)v->seq);
            else
                put(o, "rank %d has not entered %s #%llu:", m, here, (unsigned long long)at->seq);
            put(o, " it has been outside tp's collectives for %.1f s", since);
            if (v->seq > 0)
                put(o, ", since finishing %s #%llu on %s", its, (unsigned long long)v->seq, which);
            break;
    }
    if (v->heartbeat_ns == 0)
        put(o, " (whether it is alive is unknown: its watchdog has not ticked)");
    else if (ago_s(now, v->heartbeat_ns) > stale_s)
        put(o,
            ", and it has not answered for %.1f s: its process is stopped (e.g. SIGSTOP) or "
            "gets no CPU",
            ago_s(now, v->heartbeat_ns));
    else if (v->state != DIAG_DONE)
        put(o, ", and it is alive (its watchdog ticked %.1f s ago)", ago_s(now, v->heartbeat_ns));
}

/* Append "0-2,5" for the ranks set in mark[0..n). */
static void put_ranks(diag_out *o, const bool *mark, int n)
{
    bool first = true;
    for (int i = 0; i < n; i++) {
        if (!mark[i])
            continue;
        int j = i;
        while (j + 1 < n && mark[j + 1])
            j++;
        put(o, j > i ? "%s%d-%d" : "%s%d", first ? "" : ",", i, j);
        first = false;
        i = j;
    }
}

/* Is peer m (world rank) healthy and waiting in the same collective? */
static bool waits_with(const diag_view *v, const mpi_diag_site *at, int64_t now, double stale_s)
{
    return v->state == DIAG_IN_OP && v->key == at->key && v->seq == at->seq &&
           v->heartbeat_ns != 0 && ago_s(now, v->heartbeat_ns) <= stale_s;
}

size_t mpi_diag_report(char *buf, size_t cap, const mpi_diag_site *at, double stale_s)
{
    diag_out o = {buf, 0, cap};
    if (cap)
        buf[0] = '\0';
    if (!diag_self) {
        put(&o, "Which rank stalled could not be determined (no shared-memory state window): "
                "a rank probably stopped, failed or died. ");
        return o.len;
    }
    bool *waiting = calloc((size_t)diag_world_size, sizeof *waiting);
    int64_t now = diag_now_ns();
    int named = 0, more = 0, remote = 0, unread = 0;
    for (int i = 0; i < at->n; i++) {
        int m = at->members ? at->members[i] : i;
        if (m < 0 || m >= diag_world_size)
            continue;
        diag_view v;
        if (m == at->world_rank || !diag_peer[m] || !diag_read(diag_peer[m], &v)) {
            remote += m != at->world_rank && !diag_peer[m];
            unread += m != at->world_rank && diag_peer[m];
            if (m == at->world_rank && waiting)
                waiting[m] = true;
            continue;
        }
        if (waits_with(&v, at, now, stale_s)) {
            if (waiting)
                waiting[m] = true;
            continue;
        }
        if (named == 8) {
            more++;
            continue;
        }
        put(&o, "%s", named ? "; " : "Not there: ");
        describe_peer(&o, m, &v, at, now, stale_s);
        named++;
    }
    if (more)
        put(&o, "; and %d more rank%s", more, more == 1 ? "" : "s");
    if (named)
        put(&o, ". ");
    else
        put(&o,
            "Every rank of this communicator that this rank can see is inside %s #%llu "
            "and alive: the stall is elsewhere (a rank on another node, or MPI itself). ",
            mpi_opk_name(at->opk), (unsigned long long)at->seq);
    if (waiting) {
        int nw = 0;
        for (int i = 0; i < diag_world_size; i++)
            nw += waiting[i];
        put(&o, "Waiting in %s #%llu: rank%s ", mpi_opk_name(at->opk), (unsigned long long)at->seq,
            nw > 1 ? "s" : "");
        put_ranks(&o, waiting, diag_world_size);
        put(&o, ". ");
    }
    if (remote)
        put(&o,
            "%d rank%s of this communicator run%s on other nodes: their state could not be "
            "determined. ",
            remote, remote == 1 ? "" : "s", remote == 1 ? "s" : "");
    if (unread)
        put(&o, "%d rank%s could not be read consistently. ", unread, unread == 1 ? "" : "s");
    free(waiting);
    return o.len;
}

int mpi_diag_waiting_below(int world_rank, double stale_s)
{
    int n = 0;
    int64_t now = diag_now_ns();
    for (int m = 0; diag_self && m < world_rank && m < diag_world_size; m++) {
        diag_view v;
        n += diag_peer[m] && diag_read(diag_peer[m], &v) && v.state == DIAG_IN_OP &&
             v.heartbeat_ns != 0 && ago_s(now, v.heartbeat_ns) <= stale_s;
    }
    return n;
}
