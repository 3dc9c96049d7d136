/* SPDX-License-Identifier: MIT */
/*
 * tp-launch — start N local processes of one program as the ranks of a tcp
 * job (TP_BACKEND=tcp), like torchrun's env:// rendezvous for one host.
 *
 *   tp-launch -n 4 ./examples/tp_mlp --tp 4
 *
 * Every rank gets TP_RANK, TP_WORLD_SIZE, TP_MASTER_ADDR, TP_MASTER_PORT and
 * TP_BACKEND=tcp (unless TP_BACKEND is already set). Output lines are
 * prefixed with "[rank K] ". When a rank exits non-zero or dies by a signal,
 * the others get a grace period to fail on their own (they see the lost
 * peer), then SIGTERM, then SIGKILL; tp-launch exits non-zero naming the
 * first rank that failed.
 *
 * Every job gets a fresh random TP_TCP_SECRET (in the environment, never on
 * a command line) unless one is set; the tcp plugin authenticates every
 * connection with it. The master port tp-launch picks stays bound (not
 * listening) by tp-launch until the job ends, so no other program is handed
 * it between the pick and rank 0's listen. Ranks die with tp-launch
 * (PR_SET_PDEATHSIG), even when it is killed with SIGKILL. A rank that is
 * stopped (SIGSTOP) is named as the one that stopped progressing.
 *
 * --nodes K [--link RATE[,DELAY]] runs the ranks on K emulated nodes (network
 * namespaces with their own host names, joined by shaped veth links to a
 * bridge; see nodes.c), in blocks: node i holds ranks i*N/K .. (i+1)*N/K-1.
 *
 * --nodes K --mpi runs Open MPI's mpirun on that cluster instead (mpi.c):
 * mpirun in node 0, its daemons put on the other nodes by tp-launch itself
 * as the rsh agent, ranks in the same blocks, shared memory (vader) inside
 * a node and TCP across nodes. mpirun's own options go between two "--":
 *   tp-launch --nodes 2 --mpi -n 4 -- --mca btl_base_verbose 30 -- prog
 * Everything of the job, the daemons included, ends with it.
 *
 * Every rank, in both paths, also gets (mpirun: -x):
 *   TP_JOB_ID        "<tp-launch's pid>.<8 random hex digits>", unique per
 *                    job (e.g. to name a shared-memory segment per job);
 *                    set with and without --nodes
 *   TP_LAUNCH_NODES  K, with --nodes (unset without)
 *   TP_LAUNCH_LINK   the --link spec in canonical form ("1gbit,50us",
 *                    "1500mbit"), or "none" when unshaped; with --nodes
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mpi.h"
#include "nodes.h"
#include "tp-options.h"

#define MAX_RANKS      64 /* the core takes TP_WORLD_SIZE in 1..64 */
#define LINE_MAX_BYTES 8192

typedef struct stream {
    int fd; /* read end, -1 when closed */
    FILE *out;
    char buf[LINE_MAX_BYTES];
    size_t len;
} stream;

typedef struct child {
    pid_t pid;
    int running;
    int stopped;      /* the signal that stopped it, 0 while it runs */
    int died_stopped; /* it was stopped when it ended */
    int killed_by_us; /* still running when tp-launch stopped the job */
    int status;       /* wait status once it ended */
    int unreaped;     /* ended, kept a zombie: its pid, so its group's id, stays ours */
    stream s[2];
} child;

static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
    got_signal = sig;
}

static void on_child(int sig)
{
    (void)sig; /* only interrupts ppoll, so exits are reaped in the order they happen */
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static const char summary[] =
    "Start N local processes of PROGRAM as the ranks of one tp job over TCP.\n"
    "Each process gets TP_RANK (0..N-1), TP_WORLD_SIZE=N, TP_MASTER_ADDR,\n"
    "TP_MASTER_PORT, and TP_BACKEND=tcp unless TP_BACKEND is already set, and\n"
    "a fresh random TP_TCP_SECRET (unless set) that authenticates the job's\n"
    "connections. The ranks end when tp-launch ends, even by SIGKILL. The options\n"
    "end at PROGRAM (or at \"--\"): what follows is PROGRAM's.\n"
    "\n"
    "  tp-launch --nodes K [--link L] --mpi -n N [-- MPIRUN-OPTION... --] PROGRAM [ARGS...]\n"
    "\n"
    "--nodes K runs the ranks on K emulated nodes (1..N): network namespaces with\n"
    "their own host names, addresses in 198.18.0.0/15, joined by veth links to a\n"
    "bridge; node i holds ranks i*N/K..(i+1)*N/K-1; TP_MASTER_ADDR is node 0's\n"
    "address. Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2; all is\n"
    "removed at the end. --link RATE[,DELAY] shapes both directions of every\n"
    "node's link: RATE e.g. 1gbit, 500mbit, 2gbps; DELAY (one way) e.g. 50us, 1ms\n"
    "(needs the kernel's netem); default unshaped.\n"
    "\n"
    "--mpi (with --nodes) runs Open MPI's mpirun on the nodes instead\n"
    "(TP_BACKEND=mpi unless set): same blocks, shared memory inside a node, TCP\n"
    "across; --oversubscribe is added when a node has more ranks than the machine\n"
    "has cores. mpirun gets the nodes as hosts (slots = their blocks), --map-by\n"
    "slot --rank-by slot --bind-to none, --mca btl self,vader,tcp, oob and btl tcp\n"
    "on 198.18.0.0/15, -x TP_BACKEND TP_JOB_ID TP_LAUNCH_NODES TP_LAUNCH_LINK,\n"
    "then your options, given between two \"--\" (one of --mca NAME, --map-by,\n"
    "--rank-by, --bind-to replaces tp-launch's; -n, hosts and the launch agent are\n"
    "not yours to set). As root, mpirun itself also wants OMPI_ALLOW_RUN_AS_ROOT=1\n"
    "and OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1. The output is mpirun's (no rank prefix;\n"
    "add --tag-output); the exit status is mpirun's, or 128+N when a signal N to\n"
    "tp-launch stopped the job.\n"
    "\n"
    "Every rank gets TP_JOB_ID (\"<tp-launch pid>.<8 random hex>\", unique per job)\n"
    "and, with --nodes, TP_LAUNCH_NODES=K and TP_LAUNCH_LINK (the --link spec in\n"
    "canonical form, e.g. \"1gbit,50us\"; \"none\" when unshaped).";

static const char description[] =
    "Options take their value as --opt VALUE or --opt=VALUE (-n 4 or -n4). Given\n"
    "twice, an option's last value wins (-n 2 -n 4 runs 4 ranks).\n"
    "\n"
    "Exit status: 0 if every rank exited 0; otherwise that of the first rank\n"
    "seen to fail (128+N for signal N), or 2 for a usage error. Every failed\n"
    "rank is listed at the end; ranks that lost a peer fail too, so read the\n"
    "ranks' own messages for the cause.\n"
    "\n"
    "Examples:\n"
    "  tp-launch -n 4 tp-conformance\n"
    "  TP_TIMEOUT_S=30 tp-launch -n 2 --master-port 29500 ./tp_mlp --tp 2\n"
    "  tp-launch --nodes 2 --link 1gbit,50us -n 4 tp-bench collectives\n"
    "  tp-launch --nodes 2 --link 1gbit --mpi -n 4 -- --mca btl_base_verbose 30 -- \\\n"
    "      tp-bench collectives\n";

static int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

/* A free port on addr (its first address, as the ranks resolve it: an IPv4
 * or IPv6 literal or a host name): the master socket itself, bound and
 * listening in *hold until the job ends, so no other process can bind the
 * port (a bound socket that does not listen would not stop one that sets
 * SO_REUSEADDR). Rank 0 alone gets it (TP_MASTER_FD) and accepts on it; it
 * is close-on-exec for the others. -1 with errno (EADDRNOTAVAIL: addr does
 * not resolve). */
static int free_port(const char *addr, int *hold)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV},
                    *ai = NULL;
    if (getaddrinfo(addr, "0", &hints, &ai) != 0 || !ai) {
        errno = EADDRNOTAVAIL;
        return -1;
    }
    struct sockaddr_storage a;
    socklen_t len = sizeof a;
    int one = 1, fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, SOMAXCONN) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        int err = errno;
        if (fd >= 0)
            close(fd);
        freeaddrinfo(ai);
        errno = err;
        return -1;
    }
    freeaddrinfo(ai);
    *hold = fd;
    return ntohs(a.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&a)->sin6_port
                                         : ((struct sockaddr_in *)&a)->sin_port);
}

/* A fresh random secret for the job's TP_TCP_SECRET (64 hex digits). */
static int make_secret(char out[65])
{
    unsigned char b[32];
    size_t done = 0;
    while (done < sizeof b) {
        ssize_t r = getrandom(b + done, sizeof b - done, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        done += (size_t)r;
    }
    for (size_t i = 0; i < sizeof b; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
    return 0;
}

static void describe(char *buf, size_t len, int status)
{
    if (WIFEXITED(status))
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "was killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(buf, len, "stopped (status %#x)", status);
}

static int exit_code(int status)
{
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return 1;
}

static void signal_all(child *c, int n, int sig)
{
    for (int i = 0; i < n; i++)
        if (c[i].running || c[i].unreaped)
            kill(-c[i].pid, sig); /* the rank's process group: it and its children */
}

/* -a: a host name or numeric address the ranks can resolve (the tcp plugin
 * resolves TP_MASTER_ADDR the same way); TRUE, or FALSE with *error set. */
static gboolean check_addr(const char *opt, const char *addr, GError **error)
{
    size_t ok =
        strspn(addr, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:%[]");
    if (!*addr || addr[ok] || strlen(addr) >= NI_MAXHOST) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "%s '%s': expected a host name or an IP address (e.g. 127.0.0.1, the "
                    "default)",
                    opt, addr);
        return FALSE;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(addr, NULL, &hints, &res);
    if (rc != 0) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "%s '%s': cannot resolve it: %s", opt, addr, gai_strerror(rc));
        return FALSE;
    }
    freeaddrinfo(res);
    return TRUE;
}

/* The command line. */
typedef struct launch_opts {
    long n, port, grace_ms;
    const char *addr;
    char addr_buf[NI_MAXHOST]; /* --master-addr's value */
    int prefix;
    long nodes;    /* --nodes K; 0: none */
    tpl_link link; /* --link; rate 0: unshaped */
    int have_link, have_addr, have_port;
    gboolean mpi, no_prefix; /* --mpi, --no-prefix */
    char **mpi_user;         /* mpirun's options from between the two "--" */
    int n_mpi_user;
} launch_opts;

/* Everything the supervision loop tracks. */
typedef struct launcher {
    child *c;
    long n;
    int prefix;
    long grace_ms;
    sigset_t orig;              /* the mask before tp-launch blocked its signals */
    sigset_t ignored;           /* of SIGINT/TERM/HUP, those ignored when it started (nohup) */
    pid_t self;                 /* tp-launch's pid: the parent every rank checks for */
    const tpl_cluster *cluster; /* --nodes; NULL: none */
    int mpi;                    /* the one child is mpirun, in node 0 */
    int forwarded;              /* the first signal forwarded to the job, 0: none */
    int running, first_fail;
    double kill_at, hard_kill_at; /* SIGTERM, then SIGKILL the ranks left (-1: not due) */
    int hold;                     /* the master socket for rank 0 (free_port), or -1 */
    size_t dropped;               /* output bytes dropped while the job was being stopped */
} launcher;

/* Everything tp-launch writes once the ranks run (their lines and its own
 * messages) goes out here, with its signals deliverable while the output
 * waits: a reader that stops reading (a paused pager) holds a signal off
 * only until it arrives, when the wait returns, the signal is forwarded and
 * the write goes on. Pieces of at most PIPE_BUF bytes, which a pipe that
 * polls writable takes without blocking. Once the job is being stopped by a
 * signal, what cannot be written at once is dropped (and counted), so a
 * stalled reader cannot keep tp-launch from ending. */
static void forward_signal(launcher *L);
static void out_write(launcher *L, int fd, const char *p, size_t n)
{
    while (n > 0) {
        struct pollfd q = {.fd = fd, .events = POLLOUT};
        struct timespec zero = {0, 0};
        int r = ppoll(&q, 1, L->forwarded ? &zero : NULL, &L->orig);
        if (r < 0 && errno == EINTR) {
            forward_signal(L);
            continue;
        }
        if (r == 0) {
            L->dropped += n;
            return;
        }
        if (r < 0 || (q.revents & POLLNVAL))
            return; /* nowhere to write */
        ssize_t w = write(fd, p, n < PIPE_BUF ? n : PIPE_BUF);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* EPIPE (SIGPIPE is ignored): the reader is gone */
        p += w;
        n -= (size_t)w;
    }
}

/* A message of tp-launch's own on stderr, through out_write. */
static void say(launcher *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(launcher *L, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (k > 0)
        out_write(L, STDERR_FILENO, msg, (size_t)k < sizeof msg ? (size_t)k : sizeof msg - 1);
}

static void flush_line(launcher *L, stream *s, int rank, int add_newline)
{
    if (s->len == 0)
        return;
    char line[LINE_MAX_BYTES + 32];
    size_t k = L->prefix ? (size_t)snprintf(line, sizeof line, "[rank %d] ", rank) : 0;
    memcpy(line + k, s->buf, s->len);
    k += s->len;
    if (add_newline)
        line[k++] = '\n';
    out_write(L, fileno(s->out), line, k);
    s->len = 0;
}

/* Read what is there; write complete lines (prefixed). Returns 0 at EOF. */
static int pump(launcher *L, stream *s, int rank)
{
    char tmp[4096];
    ssize_t n = read(s->fd, tmp, sizeof tmp);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return 1;
    if (n <= 0) {
        flush_line(L, s, rank, 1);
        close(s->fd);
        s->fd = -1;
        return 0;
    }
    for (ssize_t i = 0; i < n; i++) {
        s->buf[s->len++] = tmp[i];
        if (tmp[i] == '\n')
            flush_line(L, s, rank, 0);
        else if (s->len == sizeof s->buf)
            flush_line(L, s, rank, 1);
    }
    return 1;
}

/* A bad value of option `name`: *error set, FALSE. */
static gboolean bad_value(GError **error, const char *name, const char *value, const char *why)
{
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, "%s %s: %s", name, value, why);
    return FALSE;
}

/* The option callbacks (GOptionArgFunc); data: the launch_opts. */
static gboolean opt_np(const gchar *name, const gchar *value, gpointer data, GError **error)
{
    if (parse_long(value, 1, MAX_RANKS, &((launch_opts *)data)->n) < 0)
        return bad_value(error, name, value,
                         "expected a number of ranks in 1.." G_STRINGIFY(
                             MAX_RANKS) " (the most TP_WORLD_SIZE allows)");
    return TRUE;
}

static gboolean opt_port(const gchar *name, const gchar *value, gpointer data, GError **error)
{
    launch_opts *lo = data;
    if (parse_long(value, 1, 65535, &lo->port) < 0)
        return bad_value(error, name, value, "expected a port in 1..65535");
    lo->have_port = 1;
    return TRUE;
}

static gboolean opt_addr(const gchar *name, const gchar *value, gpointer data, GError **error)
{
    launch_opts *lo = data;
    if (!check_addr(name, value, error))
        return FALSE;
    snprintf(lo->addr_buf, sizeof lo->addr_buf, "%s", value);
    lo->addr = lo->addr_buf;
    lo->have_addr = 1;
    return TRUE;
}

static gboolean opt_grace(const gchar *name, const gchar *value, gpointer data, GError **error)
{
    char *end;
    double g = strtod(value, &end);
    if (!*value || *end || !(g >= 0 && g <= 3600))
        return bad_value(error, name, value, "expected seconds in 0..3600");
    ((launch_opts *)data)->grace_ms = (long)(g * 1000);
    return TRUE;
}

static gboolean opt_nodes(const gchar *name, const gchar *value, gpointer data, GError **error)
{
    if (parse_long(value, 1, TPL_MAX_NODES, &((launch_opts *)data)->nodes) < 0) {
        char why[64];
        snprintf(why, sizeof why, "expected a number of nodes in 1..%d", TPL_MAX_NODES);
        return bad_value(error, name, value, why);
    }
    return TRUE;
}

static gboolean opt_link(const gchar *name, const gchar *value, gpointer data, GError **error)
{
    launch_opts *lo = data;
    char why[256];
    if (tpl_parse_link(value, &lo->link, why, sizeof why) < 0)
        return bad_value(error, name, value, why);
    lo->have_link = 1;
    return TRUE;
}

/* --nodes with the rest of the command line: -1 to go on, else 2. */
static int check_nodes_opts(const launch_opts *lo)
{
    const char *why = NULL;
    if (lo->have_link && !lo->nodes)
        why = "--link shapes the links of emulated nodes: it needs --nodes K";
    else if (lo->nodes > lo->n)
        why = "--nodes: more nodes than ranks (-n); every node needs a rank";
    else if (lo->nodes && lo->have_addr)
        why = "--nodes sets TP_MASTER_ADDR to node 0's address: drop --master-addr";
    else if (lo->mpi && !lo->nodes)
        why = "--mpi runs mpirun on emulated nodes: it needs --nodes K (--nodes 1 for one)";
    else if (lo->mpi && lo->have_port)
        why = "--master-port is the tcp backend's rendezvous; --mpi ranks meet through mpirun";
    return why ? tp_options_error("tp-launch", "%s", why) : -1;
}

/* --mpi: the words from argv[*first] that start with '-' are mpirun's
 * options, up to a "--" (the option parser took the first one); *first
 * moves past them. 0, or -1 after saying why. */
static int split_mpi_opts(int argc, char **argv, int *first, launch_opts *lo)
{
    int i = *first;
    if (i >= argc || argv[i][0] != '-')
        return 0;
    int end = i;
    while (end < argc && strcmp(argv[end], "--") != 0)
        end++;
    if (end == argc) {
        tp_options_error("tp-launch",
                         "--mpi: mpirun options start at '%s' but no '--' ends them: write "
                         "tp-launch ... --mpi -n N -- MPIRUN-OPTION... -- PROGRAM",
                         argv[i]);
        return -1;
    }
    lo->mpi_user = argv + i;
    lo->n_mpi_user = end - i;
    *first = end + 1;
    return tpl_mpi_check_user(lo->mpi_user, lo->n_mpi_user);
}

/* Options up to the program (GOptionContext, tp-options.h; they end at the
 * first operand); *first: the program's index in *argv. Returns -1 to go
 * on, else the exit status. */
static int parse_args(int *argc, char ***argv, launch_opts *lo, int *first)
{
    gboolean version = FALSE;
    GOptionEntry entries[] = {
        {"np", 'n', 0, G_OPTION_ARG_CALLBACK, (gpointer)opt_np,
         "Number of ranks (1.." G_STRINGIFY(MAX_RANKS) ")", "N"},
        {"master-port", 'p', 0, G_OPTION_ARG_CALLBACK, (gpointer)opt_port,
         "Port where rank 0 listens (default: a free port)", "P"},
        {"master-addr", 'a', 0, G_OPTION_ARG_CALLBACK, (gpointer)opt_addr,
         "Address where rank 0 listens (default 127.0.0.1)", "A"},
        {"grace", 'g', 0, G_OPTION_ARG_CALLBACK, (gpointer)opt_grace,
         "After a rank fails, seconds the others get to fail on their own before SIGTERM, then "
         "SIGKILL (default 5)",
         "S"},
        {"no-prefix", 0, 0, G_OPTION_ARG_NONE, &lo->no_prefix,
         "Do not prefix output lines with \"[rank K] \"", NULL},
        {"nodes", 0, 0, G_OPTION_ARG_CALLBACK, (gpointer)opt_nodes,
         "Run the ranks on K emulated nodes (1..N; see above)", "K"},
        {"link", 0, 0, G_OPTION_ARG_CALLBACK, (gpointer)opt_link,
         "With --nodes: shape every node's link, e.g. 1gbit,50us (see above)", "RATE[,DELAY]"},
        {"mpi", 0, 0, G_OPTION_ARG_NONE, &lo->mpi,
         "With --nodes: run Open MPI's mpirun on the nodes instead (see above)", NULL},
        {"version", 'V', 0, G_OPTION_ARG_NONE, &version, "Show the version and git revision", NULL},
        {NULL, 0, 0, 0, NULL, NULL, NULL}};
    GOptionContext *ctx = g_option_context_new("-n N [--] PROGRAM [ARGS...]");
    GOptionGroup *group = g_option_group_new(NULL, NULL, NULL, lo, NULL);
    g_option_group_add_entries(group, entries);
    g_option_context_set_main_group(ctx, group);
    g_option_context_set_summary(ctx, summary);
    g_option_context_set_description(ctx, description);
    g_option_context_set_strict_posix(ctx, TRUE); /* PROGRAM's own options stay its own */
    int rc = tp_options_parse("tp-launch", ctx, entries, &version, argc, argv);
    g_option_context_free(ctx);
    lo->prefix = !lo->no_prefix;
    *first = 1;
    if (rc >= 0)
        return rc;
    if (lo->mpi && split_mpi_opts(*argc, *argv, first, lo) < 0)
        return 2;
    if (lo->n == 0)
        return tp_options_error("tp-launch", "missing -n N (the number of ranks)");
    if (*first >= *argc)
        return tp_options_error("tp-launch", "missing the program to run");
    return check_nodes_opts(lo);
}

/* Signals stay blocked except inside ppoll(), so none is missed between
 * a check and the wait. */
static void install_signals(sigset_t *orig, sigset_t *ignored)
{
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGCHLD);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    sigprocmask(SIG_BLOCK, &block, orig);
    struct sigaction sa = {.sa_handler = on_signal}, old;
    sigemptyset(&sa.sa_mask);
    sigemptyset(ignored);
    /* One ignored on entry (nohup; `cmd &` in a script) stays ignored, for
     * tp-launch and for its ranks, as for any program. */
    static const int stop_signals[] = {SIGINT, SIGTERM, SIGHUP};
    for (size_t i = 0; i < sizeof stop_signals / sizeof stop_signals[0]; i++) {
        if (sigaction(stop_signals[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN)
            sigaddset(ignored, stop_signals[i]);
        else
            sigaction(stop_signals[i], &sa, NULL);
    }
    sa.sa_handler = on_child;
    sigaction(SIGCHLD, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* What every rank inherits: backend (tcp unless set), world, master. */
static void set_world_env(const launch_opts *lo)
{
    char val[32];
    if (!getenv("TP_BACKEND"))
        setenv("TP_BACKEND", "tcp", 1);
    snprintf(val, sizeof val, "%ld", lo->n);
    setenv("TP_WORLD_SIZE", val, 1);
    setenv("TP_MASTER_ADDR", lo->addr, 1);
    snprintf(val, sizeof val, "%ld", lo->port);
    setenv("TP_MASTER_PORT", val, 1);
}

/* In the forked child: own process group, default signals, the pipes as
 * stdout/stderr, none of the earlier ranks' pipes; then the program. */
static void exec_rank(const launcher *L, long r, int p[2][2], char **prog)
{
    /* Die with tp-launch, even when it is killed with SIGKILL; if it is
     * already gone (the signal would never come), do not start. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != L->self) {
        fprintf(stderr, "tp-launch: rank %ld: tp-launch exited before the rank started\n", r);
        _exit(127);
    }
    setpgid(0, 0);
    long node = L->mpi || !L->cluster ? 0 : tpl_node_of_rank(r, L->n, L->cluster->k);
    if (L->cluster && tpl_cluster_enter(L->cluster, node) < 0)
        _exit(127);
    /* default handlers first: a signal already pending for the rank then
     * acts on it when the mask is restored, instead of on tp-launch's
     * handler (which would only set this copy's flag) */
    signal(SIGCHLD, SIG_DFL);
    signal(SIGINT, sigismember(&L->ignored, SIGINT) ? SIG_IGN : SIG_DFL);
    signal(SIGTERM, sigismember(&L->ignored, SIGTERM) ? SIG_IGN : SIG_DFL);
    signal(SIGHUP, sigismember(&L->ignored, SIGHUP) ? SIG_IGN : SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    sigprocmask(SIG_SETMASK, &L->orig, NULL);
    if (L->prefix) {
        dup2(p[0][1], STDOUT_FILENO);
        dup2(p[1][1], STDERR_FILENO);
        close(p[0][0]);
        close(p[0][1]);
        close(p[1][0]);
        close(p[1][1]);
    }
    for (long k = 0; k < r; k++)
        for (int j = 0; j < 2; j++)
            if (L->c[k].s[j].fd >= 0)
                close(L->c[k].s[j].fd);
    char val[32];
    snprintf(val, sizeof val, "%ld", r);
    if (!L->mpi)
        setenv("TP_RANK", val, 1);
    unsetenv("TP_MASTER_FD");
    if (r == 0 && L->hold >= 0 && fcntl(L->hold, F_SETFD, 0) == 0) { /* rank 0 inherits it */
        snprintf(val, sizeof val, "%d", L->hold);
        setenv("TP_MASTER_FD", val, 1);
    }
    execvp(prog[0], prog);
    fprintf(stderr, "tp-launch: %s %ld: cannot run %s: %s\n", L->mpi ? "job" : "rank", r, prog[0],
            strerror(errno));
    _exit(127);
}

/* Fork rank r; returns 0, or -1 (message printed, earlier ranks killed). */
static int start_rank(launcher *L, long r, char **prog)
{
    int p[2][2] = {{-1, -1}, {-1, -1}};
    if (L->prefix && (pipe(p[0]) < 0 || pipe(p[1]) < 0)) {
        fprintf(stderr, "tp-launch: pipe: %s\n", strerror(errno));
        signal_all(L->c, (int)r, SIGKILL);
        return -1;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "tp-launch: fork for rank %ld: %s\n", r, strerror(errno));
        signal_all(L->c, (int)r, SIGKILL);
        return -1;
    }
    if (pid == 0)
        exec_rank(L, r, p, prog);
    setpgid(pid, pid); /* also here: no race with an early kill */
    L->c[r].pid = pid;
    L->c[r].running = 1;
    L->running++;
    for (int j = 0; j < 2; j++) {
        L->c[r].s[j].out = j ? stderr : stdout;
        L->c[r].s[j].fd = L->prefix ? p[j][0] : -1;
        if (L->prefix)
            close(p[j][1]);
    }
    return 0;
}

/* Wait up to one tick for output or a signal; copy what arrived. Returns
 * how many streams reached their end. */
static int pump_streams(launcher *L, struct pollfd *pfd, int *owner)
{
    nfds_t np = 0;
    for (long r = 0; r < L->n; r++)
        for (int j = 0; j < 2; j++)
            if (L->c[r].s[j].fd >= 0) {
                pfd[np] = (struct pollfd){.fd = L->c[r].s[j].fd, .events = POLLIN};
                owner[np++] = (int)(2 * r + j);
            }
    struct timespec tick = {0, 50 * 1000 * 1000};
    int pr = ppoll(pfd, np, &tick, &L->orig);
    int closed = 0;
    for (nfds_t i = 0; pr > 0 && i < np; i++) {
        if (!pfd[i].revents)
            continue;
        int r = owner[i] / 2, j = owner[i] % 2;
        if (!pump(L, &L->c[r].s[j], r))
            closed++;
    }
    return closed;
}

/* Rank r ended with status; the first failure starts the grace period. */
static void rank_ended(launcher *L, long r, int status)
{
    child *ch = &L->c[r];
    ch->running = 0;
    ch->status = status;
    L->running--;
    if ((WIFEXITED(status) && WEXITSTATUS(status) == 0) || L->first_fail >= 0)
        return;
    char how[128];
    describe(how, sizeof how, status);
    L->first_fail = (int)r;
    if (L->running > 0) {
        say(L,
            "tp-launch: rank %ld (pid %d) %s; stopping the other %d rank(s) "
            "in %.1f s\n",
            r, (int)ch->pid, how, L->running, (double)L->grace_ms / 1000.0);
        L->kill_at = now() + (double)L->grace_ms / 1000.0;
    }
}

/* A rank was stopped (SIGSTOP, SIGTSTP...) or continued. */
static void rank_stopped(launcher *L, long r, int status)
{
    child *ch = &L->c[r];
    if (WIFCONTINUED(status)) {
        ch->stopped = 0;
        return;
    }
    ch->stopped = WSTOPSIG(status);
    say(L, "tp-launch: %s %ld (pid %d) was stopped by signal %d (%s)\n",
        L->mpi ? "mpirun, job" : "rank", r, (int)ch->pid, ch->stopped, strsignal(ch->stopped));
    /* Ranks run in their own process groups, never the terminal's
     * foreground one: one stopped for terminal input or output would wait
     * forever. */
    if ((ch->stopped == SIGTTIN || ch->stopped == SIGTTOU) && L->first_fail < 0) {
        say(L,
            "tp-launch: rank %ld %s the terminal, which ranks cannot use; ending the job "
            "(give ranks input from a file or a pipe, and leave out --no-prefix when "
            "the terminal has `stty tostop`)\n",
            r, ch->stopped == SIGTTIN ? "read from" : "wrote to");
        L->first_fail = (int)r;
        L->kill_at = now();
    }
}

/* A waitid() result as a wait status (WIFEXITED etc. apply). */
static int wait_status(const siginfo_t *si)
{
    switch (si->si_code) {
        case CLD_EXITED: return (si->si_status & 0xff) << 8;
        case CLD_KILLED: return si->si_status & 0x7f;
        case CLD_DUMPED: return (si->si_status & 0x7f) | 0x80;
        case CLD_CONTINUED: return 0xffff;
        default: return (si->si_status & 0xff) << 8 | 0x7f; /* stopped */
    }
}

/* Stops and continues are taken; an exit is only looked at (WNOWAIT): the
 * rank stays a zombie until the end, so its pid, and with it its process
 * group's id, cannot be reused while tp-launch may still signal that group
 * for what the rank left in it. */
static void reap_children(launcher *L)
{
    for (long r = 0; r < L->n; r++) {
        child *ch = &L->c[r];
        siginfo_t si;
        while (ch->running) {
            memset(&si, 0, sizeof si);
            if (waitid(P_PID, ch->pid, &si, WSTOPPED | WCONTINUED | WNOHANG) < 0 || !si.si_pid)
                break;
            rank_stopped(L, r, wait_status(&si));
        }
        memset(&si, 0, sizeof si);
        if (!ch->running || waitid(P_PID, ch->pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0 ||
            !si.si_pid)
            continue;
        ch->unreaped = 1;
        if (!ch->died_stopped)
            ch->died_stopped = ch->stopped;
        rank_ended(L, r, wait_status(&si));
    }
}

/* A signal to tp-launch goes to every rank, with SIGKILL 2 s later (to
 * mpirun, 5 s: it stops its daemons' ranks through the daemons first). */
static void forward_signal(launcher *L)
{
    int sig = got_signal;
    if (!sig)
        return;
    got_signal = 0;
    signal_all(L->c, (int)L->n, sig);
    if (!L->forwarded)
        L->forwarded = sig;
    if (L->hard_kill_at < 0)
        L->hard_kill_at = now() + (L->mpi ? 5.0 : 2.0);
    /* last: with the job stopping, a stalled stderr drops this line */
    say(L, "tp-launch: got signal %d (%s); stopping all ranks\n", sig, strsignal(sig));
}

/* 1 if every rank still running is stopped: none can fail on its own. */
static int all_left_stopped(const launcher *L)
{
    for (long r = 0; r < L->n; r++)
        if (L->c[r].running && !L->c[r].stopped)
            return 0;
    return 1;
}

/* SIGTERM (and SIGCONT, so a stopped rank acts on it) when the grace period
 * is over or only stopped ranks are left, SIGKILL 2 s after that. */
static void escalate(launcher *L)
{
    if (L->kill_at >= 0 && L->running > 0 && (now() >= L->kill_at || all_left_stopped(L))) {
        for (long r = 0; r < L->n; r++) {
            L->c[r].killed_by_us = L->c[r].running;
            if (L->c[r].running && L->c[r].stopped)
                L->c[r].died_stopped = L->c[r].stopped; /* SIGCONT below clears .stopped */
        }
        signal_all(L->c, (int)L->n, SIGTERM);
        signal_all(L->c, (int)L->n, SIGCONT);
        L->kill_at = -1;
        L->hard_kill_at = now() + 2.0;
    }
    if (L->hard_kill_at >= 0 && now() >= L->hard_kill_at && L->running > 0) {
        signal_all(L->c, (int)L->n, SIGKILL);
        L->hard_kill_at = -1;
    }
}

/* Until every rank has ended and its output is copied (grandchildren may
 * keep a pipe open: drain for a moment, then stop). */
static void supervise(launcher *L, struct pollfd *pfd, int *owner)
{
    int open_streams = L->prefix ? 2 * (int)L->n : 0;
    double drain_until = -1;
    while (L->running > 0 || (open_streams > 0 && (drain_until < 0 || now() < drain_until))) {
        forward_signal(L);
        open_streams -= pump_streams(L, pfd, owner);
        reap_children(L);
        escalate(L);
        if (L->running == 0 && drain_until < 0) {
            /* a failed or stopped job: what the ranks left behind goes too */
            if (L->first_fail >= 0 || L->forwarded)
                signal_all(L->c, (int)L->n, SIGKILL);
            drain_until = now() + 0.5;
        }
    }
    for (long r = 0; r < L->n; r++)
        for (int j = 0; j < 2; j++)
            if (L->c[r].s[j].fd >= 0) {
                flush_line(L, &L->c[r].s[j], (int)r, 1);
                close(L->c[r].s[j].fd);
            }
}

/* The rank(s) that stopped progressing: stopped by a signal until the end,
 * else still running when the others had failed (killed by tp-launch). */
static void report_stalled(launcher *L)
{
    int named = 0;
    for (long r = 0; r < L->n; r++) {
        const child *ch = &L->c[r];
        if (!ch->died_stopped)
            continue;
        say(L,
            "tp-launch: rank %ld stopped progressing: it was stopped by signal %d (%s) "
            "and never continued, so the other ranks failed waiting for it\n",
            r, ch->died_stopped, strsignal(ch->died_stopped));
        named++;
    }
    for (long r = 0; r < L->n && !named; r++)
        if (L->c[r].killed_by_us && (long)L->first_fail != r)
            say(L,
                "tp-launch: rank %ld did not end on its own after rank %d failed (tp-launch "
                "stopped it): if the others report waiting for it, it stopped progressing\n",
                r, L->first_fail);
}

/* The exit status: the first failed rank's, with a summary on stderr. */
static int report(launcher *L)
{
    /* Stopped by a signal to tp-launch: 128+N, whatever the ranks did with it. */
    int stopped = L->forwarded ? 128 + L->forwarded : 0;
    if (L->dropped)
        say(L,
            "tp-launch: %zu bytes of the ranks' output were dropped: their reader was not "
            "reading while the job was being stopped\n",
            L->dropped);
    if (L->first_fail < 0) {
        if (stopped)
            say(L, "tp-launch: stopped by signal %d (%s)\n", L->forwarded, strsignal(L->forwarded));
        return stopped;
    }
    if (L->mpi) {
        char how[128];
        describe(how, sizeof how, L->c[0].status);
        say(L, "tp-launch: failed: mpirun %s\n", how);
        return stopped ? stopped : exit_code(L->c[0].status);
    }
    const child *c = L->c;
    int ff = L->first_fail;
    char how[128];
    describe(how, sizeof how, c[ff].status);
    int all_same = 1;
    for (long r = 0; r < L->n; r++)
        if (c[r].status != c[ff].status)
            all_same = 0;
    if (all_same && L->n > 1)
        say(L, "tp-launch: every rank %s\n", how);
    else
        say(L, "tp-launch: failed: rank %d %s\n", ff, how);
    report_stalled(L);
    for (long r = 0; r < L->n && !all_same; r++) {
        if (r == ff || (WIFEXITED(c[r].status) && WEXITSTATUS(c[r].status) == 0))
            continue;
        describe(how, sizeof how, c[r].status);
        say(L, "tp-launch:   rank %ld %s\n", r, how);
    }
    return stopped ? stopped : exit_code(c[ff].status);
}

/* TP_TCP_SECRET: the caller's, else a fresh random one; 0, or -1. */
static int set_secret(void)
{
    const char *sec = getenv("TP_TCP_SECRET");
    char secret[65];
    if (sec && *sec)
        return 0;
    if (make_secret(secret) < 0) {
        fprintf(stderr,
                "tp-launch: cannot make a random TP_TCP_SECRET (getrandom: %s); set "
                "TP_TCP_SECRET yourself\n",
                strerror(errno));
        return -1;
    }
    setenv("TP_TCP_SECRET", secret, 1);
    return 0;
}

/* Start the ranks, supervise them, report; the exit status. */
static int run_ranks(launcher *L, char **prog)
{
    for (long r = 0; r < L->n; r++)
        if (start_rank(L, r, prog) < 0)
            return 1;
    struct pollfd *pfd = calloc(2 * (size_t)L->n, sizeof *pfd);
    int *owner = calloc(2 * (size_t)L->n, sizeof *owner);
    if (!pfd || !owner) {
        fprintf(stderr, "tp-launch: out of memory\n");
        signal_all(L->c, (int)L->n, SIGKILL);
        free(pfd);
        free(owner);
        return 1;
    }
    supervise(L, pfd, owner);
    free(pfd);
    free(owner);
    return report(L);
}

/* The ranks were started: wait until every one has ended (they were sent
 * SIGKILL on a failed start), so that the cluster can go; reap those kept
 * as zombies. */
static void reap_all(launcher *L)
{
    while (L->running > 0) {
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0 && errno != EINTR)
            break;
        for (long r = 0; r < L->n && pid > 0; r++)
            if (L->c[r].pid == pid && !WIFSTOPPED(status)) {
                L->running -= L->c[r].running;
                L->c[r].running = L->c[r].unreaped = 0;
            }
    }
    for (long r = 0; r < L->n; r++)
        if (L->c[r].unreaped && waitpid(L->c[r].pid, NULL, 0) == L->c[r].pid)
            L->c[r].unreaped = 0;
}

/* TP_JOB_ID always; TP_LAUNCH_NODES and TP_LAUNCH_LINK with --nodes (else
 * unset, so no outer job's values pass for this one's). 0, or -1. */
static int set_job_env(const launch_opts *lo)
{
    char rnd[65], val[64];
    if (make_secret(rnd) < 0) {
        fprintf(stderr, "tp-launch: cannot make a random TP_JOB_ID (getrandom: %s)\n",
                strerror(errno));
        return -1;
    }
    snprintf(val, sizeof val, "%ld.%.8s", (long)getpid(), rnd);
    setenv("TP_JOB_ID", val, 1);
    if (!lo->nodes) {
        unsetenv("TP_LAUNCH_NODES");
        unsetenv("TP_LAUNCH_LINK");
        return 0;
    }
    snprintf(val, sizeof val, "%ld", lo->nodes);
    setenv("TP_LAUNCH_NODES", val, 1);
    tpl_link_str(&lo->link, val, sizeof val);
    setenv("TP_LAUNCH_LINK", val, 1);
    return 0;
}

/* The tcp path's rendezvous: node 0's address under --nodes, else a free
 * port held in *hold. 0, or -1 after saying why. */
static int pick_master(launch_opts *lo, char *master, size_t len, int *hold)
{
    if (lo->nodes) { /* a fresh namespace: every port is free there */
        tpl_node_addr(0, master, len);
        lo->addr = master;
        if (lo->port == 0)
            lo->port = 29500;
    } else if (lo->port == 0 && (lo->port = free_port(lo->addr, hold)) < 0) {
        fprintf(stderr, "tp-launch: cannot find a free port on %s: %s; pass --master-port\n",
                lo->addr, strerror(errno));
        return -1;
    }
    return set_secret();
}

/* Under --nodes tp-launch is a child subreaper: processes that detach from
 * its ranks (Open MPI's daemons) become its children, so that it can reap
 * them once the cluster's processes are ended (instead of leaving zombies
 * where no init reaps). Bounded: 1 s at most. */
static void reap_orphans(void)
{
    for (int i = 0; i < 100; i++) {
        pid_t p = waitpid(-1, NULL, WNOHANG);
        if (p < 0 && errno != EINTR)
            return; /* ECHILD: none left */
        if (p == 0)
            nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    }
}

/* Ranks (or mpirun) on the cluster or here; the exit status. */
static int launch(launcher *L, const launch_opts *lo, char **prog)
{
    tpl_cluster cluster;
    char **mpirun = NULL;
    if (lo->nodes) {
        if (tpl_cluster_create(&cluster, lo->nodes, &lo->link) < 0)
            return 1;
        L->cluster = &cluster;
        prctl(PR_SET_CHILD_SUBREAPER, 1);
    }
    if (lo->mpi) {
        if (!getenv("TP_BACKEND"))
            setenv("TP_BACKEND", "mpi", 1);
        tpl_mpi_job j = {.n = lo->n, .user = lo->mpi_user, .n_user = lo->n_mpi_user, .prog = prog};
        if (!(mpirun = tpl_mpi_argv(&cluster, &j))) {
            tpl_cluster_destroy(&cluster);
            return 1;
        }
        prog = mpirun;
    } else {
        set_world_env(lo);
    }
    int rc = run_ranks(L, prog);
    reap_all(L);
    if (L->cluster) {
        tpl_cluster_destroy(&cluster);
        reap_orphans();
    }
    tpl_mpi_free_argv(mpirun);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strncmp(argv[1], TPL_MPI_AGENT_OPT, strlen(TPL_MPI_AGENT_OPT)) == 0)
        return tpl_mpi_agent(argc, argv); /* Open MPI's launch agent under --mpi */
    launch_opts lo = {.n = 0, .port = 0, .grace_ms = 5000, .addr = "127.0.0.1", .prefix = 1};
    int first;
    int rc = parse_args(&argc, &argv, &lo, &first);
    if (rc >= 0)
        return rc;
    int hold = -1; /* the picked port, kept bound until the job ends */
    char master[48];
    if ((lo.mpi ? tpl_mpi_find() : pick_master(&lo, master, sizeof master, &hold)) < 0 ||
        set_job_env(&lo) < 0)
        return 1;
    launcher L = {.n = lo.mpi ? 1 : lo.n, /* --mpi: the one child is mpirun */
                  .self = getpid(),
                  .prefix = lo.mpi ? 0 : lo.prefix,
                  .mpi = lo.mpi,
                  .grace_ms = lo.grace_ms,
                  .first_fail = -1,
                  .kill_at = -1,
                  .hard_kill_at = -1,
                  .hold = hold};
    L.c = calloc((size_t)L.n, sizeof *L.c);
    if (!L.c) {
        fprintf(stderr, "tp-launch: out of memory\n");
        return 1;
    }
    install_signals(&L.orig, &L.ignored);
    rc = launch(&L, &lo, argv + first);
    free(L.c);
    if (hold >= 0)
        close(hold);
    return rc;
}
