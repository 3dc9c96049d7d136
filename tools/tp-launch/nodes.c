/* SPDX-License-Identifier: MIT */
/*
 * nodes.c — make and remove the emulated cluster of `tp-launch --nodes`
 * with the ip and tc programs (iproute2).
 *
 * Layout for job pid P and K nodes (nothing in the caller's namespace):
 *   namespace tplP-br:  bridge br0, veth v0..v<K-1> (its ports)
 *   namespace tplP-n<i>: lo, eth0 (v<i>'s peer) with 198.18.0.<i+1>/15,
 *                        no default route
 *   rate/delay: tbf (root, handle 1:) with a netem child (10:) on eth0 and
 *               on v<i>, i.e. on both directions of every node's link.
 * Removing a namespace first ends (SIGKILL) every process still in it,
 * found by its /proc/PID/ns/net: ranks' children, and under --mpi the
 * Open MPI daemons, which detach themselves (orted --daemonize); then the
 * namespace goes, and with the last one the veths and the bridge.
 * A watcher process (own session, ignores SIGINT/SIGTERM/SIGHUP) removes
 * the namespaces when tp-launch dies without doing it (SIGKILL); if the
 * watcher is killed too, the next tp-launch --nodes removes namespaces of
 * jobs whose pid no longer exists.
 */
#include "nodes.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NETNS_DIR "/run/netns"

static char ip_path[256], tc_path[256];

/* name in PATH, then in the sbin folders (root's tools, often not in a
 * user's PATH). */
static int find_tool(const char *name, char *out, size_t len)
{
    const char *path = getenv("PATH");
    char dirs[4096];
    snprintf(dirs, sizeof dirs, "%s:/usr/sbin:/sbin:/usr/bin:/bin", path ? path : "");
    for (char *save = NULL, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        if (!*d)
            continue;
        struct stat st;
        snprintf(out, len, "%s/%s", d, name);
        if (stat(out, &st) == 0 && S_ISREG(st.st_mode) && access(out, X_OK) == 0)
            return 0; /* a file: /usr/lib/<triplet>/tc is a folder */
    }
    return -1;
}

/* Run argv (argv[0] an absolute path), stdout discarded; its exit status,
 * or -1. Its stderr (first line) goes to err. */
static int run_tool(char *const argv[], char *err, size_t errlen)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        int dn = open("/dev/null", O_RDWR);
        if (dn >= 0)
            dup2(dn, STDOUT_FILENO);
        dup2(p[1], STDERR_FILENO);
        execv(argv[0], argv);
        _exit(127);
    }
    close(p[1]);
    size_t got = 0;
    ssize_t r;
    err[0] = '\0';
    char sink[256];
    while ((r = read(p[0], got + 1 < errlen ? err + got : sink,
                     got + 1 < errlen ? errlen - 1 - got : sizeof sink)) != 0) {
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            break;
        if (got + 1 < errlen)
            got += (size_t)r;
    }
    err[got < errlen ? got : errlen - 1] = '\0';
    err[strcspn(err, "\n")] = '\0';
    close(p[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* ip/tc with up to 20 arguments; 0, or -1 after printing the command and
 * its error (quiet: no message). */
static int tool(int quiet, const char *prog, const char *args[])
{
    char *argv[24];
    int n = 0;
    argv[n++] = (char *)prog;
    for (; args[n - 1] && n < 23; n++)
        argv[n] = (char *)args[n - 1];
    argv[n] = NULL;
    char err[512];
    int rc = run_tool(argv, err, sizeof err);
    if (rc == 0)
        return 0;
    if (!quiet) {
        fprintf(stderr, "tp-launch: --nodes: failed:");
        for (int i = 0; i < n; i++)
            fprintf(stderr, " %s", argv[i]);
        fprintf(stderr, ": %s\n", err[0] ? err : "(no message)");
    }
    return -1;
}

#define IP(...) tool(0, ip_path, (const char *[]){__VA_ARGS__, NULL})
#define TC(...) tool(0, tc_path, (const char *[]){__VA_ARGS__, NULL})

/* Can this process make network and UTS namespaces? A child tries. */
static int check_privileges(void)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0)
        _exit(unshare(CLONE_NEWNET | CLONE_NEWUTS) == 0 ? 0 : (errno & 127));
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;
    int e = WIFEXITED(status) ? WEXITSTATUS(status) : EPERM;
    fprintf(stderr,
            "tp-launch: --nodes: cannot create network namespaces: unshare(CLONE_NEWNET | "
            "CLONE_NEWUTS): %s. The emulated nodes need CAP_SYS_ADMIN (namespaces, host names, "
            "%s) and CAP_NET_ADMIN (veth, bridge, tc): run as root, or in a container started "
            "with --cap-add SYS_ADMIN --cap-add NET_ADMIN (or --privileged)\n",
            strerror(e), NETNS_DIR);
    return -1;
}

static int check_tools(const tpl_link *link)
{
    if (find_tool("ip", ip_path, sizeof ip_path) < 0) {
        fprintf(stderr, "tp-launch: --nodes needs the 'ip' program (Debian package iproute2); "
                        "not found in PATH, /usr/sbin or /sbin\n");
        return -1;
    }
    if (link->rate_bps && find_tool("tc", tc_path, sizeof tc_path) < 0) {
        fprintf(stderr, "tp-launch: --link needs the 'tc' program (Debian package iproute2); "
                        "not found in PATH, /usr/sbin or /sbin\n");
        return -1;
    }
    return 0;
}

/* Is process pid (a /proc entry) in the namespace with inode *ns? */
static int in_ns(const char *pid, const struct stat *ns)
{
    char path[64];
    struct stat st;
    snprintf(path, sizeof path, "/proc/%.16s/ns/net", pid);
    return stat(path, &st) == 0 && st.st_ino == ns->st_ino && st.st_dev == ns->st_dev;
}

/* SIGKILL to process pid if it is in namespace ns: through a pidfd, so a
 * pid reused after the check is never signalled. 1 if it was sent. */
static int kill_in_ns(const char *pid, const struct stat *ns)
{
#ifdef SYS_pidfd_open
    int fd = (int)syscall(SYS_pidfd_open, atoi(pid), 0);
    if (fd >= 0) {
        int sent = in_ns(pid, ns) && syscall(SYS_pidfd_send_signal, fd, SIGKILL, NULL, 0) == 0;
        close(fd);
        return sent;
    }
#endif
    return in_ns(pid, ns) && kill(atoi(pid), SIGKILL) == 0;
}

/* End every process in namespace `name` (never this one): passes over
 * /proc until one finds none, for at most about 2 s. */
static void kill_ns_processes(const char *name)
{
    char path[sizeof NETNS_DIR + 256];
    struct stat ns;
    snprintf(path, sizeof path, NETNS_DIR "/%s", name);
    if (stat(path, &ns) < 0)
        return;
    for (int pass = 0; pass < 200; pass++) {
        DIR *d = opendir("/proc");
        if (!d)
            return;
        int found = 0;
        struct dirent *e;
        while ((e = readdir(d)) != NULL)
            if (e->d_name[0] >= '1' && e->d_name[0] <= '9' && atoi(e->d_name) != getpid())
                found += kill_in_ns(e->d_name, &ns);
        closedir(d);
        if (!found)
            return;
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    }
}

/* Remove the namespaces of job `job` (all_dead: of every job whose pid no
 * longer exists, saying so). Only names tpl_ns_job() accepts are touched. */
static void remove_namespaces(pid_t job, int all_dead)
{
    DIR *d = opendir(NETNS_DIR);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        pid_t p = tpl_ns_job(e->d_name);
        if (p <= 0)
            continue;
        if (all_dead ? (p == getpid() || kill(p, 0) == 0 || errno != ESRCH) : p != job)
            continue;
        kill_ns_processes(e->d_name);
        if (tool(1, ip_path, (const char *[]){"netns", "delete", e->d_name, NULL}) == 0 && all_dead)
            fprintf(stderr, "tp-launch: removed namespace %s of an earlier job (pid %ld, gone)\n",
                    e->d_name, (long)p);
    }
    closedir(d);
}

/* The watcher: waits for tp-launch's end of the pipe to close; a 'd' first
 * means tp-launch removed everything itself. */
static void watch(int fd, pid_t job)
{
    setsid();
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGCHLD, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    prctl(PR_SET_NAME, "tp-launch-watch");
    int dn = open("/dev/null", O_RDWR);
    if (dn >= 0) {
        dup2(dn, STDIN_FILENO);
        dup2(dn, STDOUT_FILENO);
    }
    for (int f = 3; f < 1024; f++)
        if (f != fd)
            close(f);
    char b = 0;
    ssize_t r;
    while ((r = read(fd, &b, 1)) < 0 && errno == EINTR)
        ;
    if (r == 1 && b == 'd')
        _exit(0);
    remove_namespaces(job, 0);
    _exit(0);
}

static int start_watcher(tpl_cluster *c)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        fprintf(stderr, "tp-launch: --nodes: pipe: %s\n", strerror(errno));
        return -1;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "tp-launch: --nodes: fork: %s\n", strerror(errno));
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0) {
        close(p[1]);
        watch(p[0], c->job);
    }
    close(p[0]);
    c->watcher = pid;
    c->watch_fd = p[1];
    return 0;
}

/* Shape dev's egress in namespace ns: tbf at the rate, netem below it for
 * the delay. */
static int shape(const char *ns, const char *dev, const tpl_link *l)
{
    char rate[32], burst[32], delay[32];
    snprintf(rate, sizeof rate, "%llubit", (unsigned long long)l->rate_bps);
    /* 1 ms at the rate, at least 64 KiB (one GSO packet) */
    unsigned long long b = l->rate_bps / 8 / 1000;
    snprintf(burst, sizeof burst, "%llu", b < 65536 ? 65536 : b);
    if (TC("-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "tbf", "rate", rate,
           "burst", burst, "latency", "100ms") < 0)
        return -1;
    if (!l->delay_ns)
        return 0;
    snprintf(delay, sizeof delay, "%.3fus", (double)l->delay_ns / 1000.0);
    if (TC("-n", ns, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", "netem", "delay",
           delay, "limit", "100000") < 0) {
        fprintf(stderr, "tp-launch: --link: the delay needs the netem qdisc (kernel "
                        "CONFIG_NET_SCH_NETEM, module sch_netem); without it give only a rate\n");
        return -1;
    }
    return 0;
}

static int make_node(const tpl_cluster *c, long i, const char *br)
{
    char ns[64], veth[32], addr[48];
    tpl_ns_name(c->job, i, ns, sizeof ns);
    snprintf(veth, sizeof veth, "v%ld", i);
    tpl_node_addr(i, addr, sizeof addr - 4);
    strcat(addr, "/15");
    if (IP("netns", "add", ns) < 0 ||
        IP("-n", br, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns) <
            0 ||
        IP("-n", br, "link", "set", veth, "master", "br0", "up") < 0 ||
        IP("-n", ns, "link", "set", "lo", "up") < 0 ||
        IP("-n", ns, "addr", "add", addr, "dev", "eth0") < 0 ||
        IP("-n", ns, "link", "set", "eth0", "up") < 0)
        return -1;
    if (c->link.rate_bps && (shape(ns, "eth0", &c->link) < 0 || shape(br, veth, &c->link) < 0))
        return -1;
    return 0;
}

static int make_cluster(const tpl_cluster *c)
{
    char br[64];
    tpl_ns_name(c->job, -1, br, sizeof br);
    if (IP("netns", "add", br) < 0 || IP("-n", br, "link", "add", "br0", "type", "bridge") < 0 ||
        IP("-n", br, "link", "set", "br0", "up") < 0)
        return -1;
    for (long i = 0; i < c->k; i++)
        if (make_node(c, i, br) < 0)
            return -1;
    return 0;
}

int tpl_cluster_create(tpl_cluster *c, long k, const tpl_link *link)
{
    *c = (tpl_cluster){.k = k, .link = *link, .job = getpid(), .watcher = -1, .watch_fd = -1};
    if (check_tools(link) < 0 || check_privileges() < 0)
        return -1;
    remove_namespaces(0, 1);
    if (start_watcher(c) < 0)
        return -1;
    if (make_cluster(c) < 0) {
        tpl_cluster_destroy(c);
        return -1;
    }
    return 0;
}

void tpl_cluster_destroy(tpl_cluster *c)
{
    if (c->watch_fd < 0)
        return;
    remove_namespaces(c->job, 0);
    ssize_t w;
    while ((w = write(c->watch_fd, "d", 1)) < 0 && errno == EINTR)
        ;
    close(c->watch_fd);
    c->watch_fd = -1;
}

int tpl_cluster_enter(const tpl_cluster *c, long node)
{
    char ns[64], path[128];
    tpl_ns_name(c->job, node, ns, sizeof ns);
    snprintf(path, sizeof path, NETNS_DIR "/%s", ns);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, CLONE_NEWNET) < 0 || unshare(CLONE_NEWUTS) < 0 ||
        sethostname(ns, strlen(ns)) < 0) {
        fprintf(stderr, "tp-launch: cannot enter node %ld (%s): %s\n", node, path, strerror(errno));
        return -1;
    }
    close(fd);
    return 0;
}
