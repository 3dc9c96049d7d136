/* SPDX-License-Identifier: MIT */
/*
 * mpi.c — mpirun's command line for `tp-launch --nodes K --mpi`, and the
 * rsh agent that puts Open MPI's daemons on the emulated nodes.
 *
 * mpirun (in node 0) gets:
 *   --host tplP-n0:S0,tplP-n1:S1,...   the nodes, slots = their block sizes
 *   -n N --map-by slot --rank-by slot  so node i holds ranks i*N/K.. (the
 *                                      blocks of the tcp path)
 *   --bind-to none                     every node sees all of this machine's
 *                                      cores: binding would stack the nodes'
 *                                      ranks on the same cores
 *   --oversubscribe                    when a node has more ranks than cores
 *   --mca mpi_yield_when_idle 1        when all nodes' ranks together exceed
 *                                      the cores they share: Open MPI only
 *                                      knows each node's count, and ranks
 *                                      that busy-poll on shared cores starve
 *                                      the one they wait for
 *   --mca plm rsh, plm_rsh_agent "tp-launch --mpi-agent=P",
 *         plm_rsh_no_tree_spawn 1      daemons start through the agent
 *   --mca oob_tcp_if_include, btl_tcp_if_include 198.18.0.0/15
 *   --mca btl self,vader,tcp           shared memory inside a node, TCP
 *                                      across nodes (on their shaped links)
 *   -x TP_BACKEND -x TP_JOB_ID -x TP_LAUNCH_NODES -x TP_LAUNCH_LINK
 * then the user's own options, then the program. A user option that
 * tp-launch also sets replaces tp-launch's (--mca NAME, --map-by, --rank-by,
 * --bind-to; Open MPI refuses a parameter given twice); the rank count, the
 * hosts and the launcher are tp-launch's alone.
 *
 * Open MPI calls the agent as it calls ssh: AGENT HOST WORD... where the
 * words, joined by spaces, are a shell command (already quoted for a
 * shell). The agent enters HOST's namespaces and runs them with
 * /bin/sh -c. The daemons detach (orted --daemonize): nodes.c ends them
 * with everything else in the job's namespaces.
 */
#include "mpi.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char mpirun_path[512];

/* name in PATH (an executable file); 0, or -1. */
static int in_path(const char *name, char *out, size_t len)
{
    const char *path = getenv("PATH");
    char dirs[4096];
    snprintf(dirs, sizeof dirs, "%s", path ? path : "/usr/bin:/bin");
    for (char *save = NULL, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        struct stat st;
        snprintf(out, len, "%s/%s", *d ? d : ".", name);
        if (stat(out, &st) == 0 && S_ISREG(st.st_mode) && access(out, X_OK) == 0)
            return 0;
    }
    return -1;
}

/* The first bytes `mpirun --version` prints (stdout and stderr). */
static void mpirun_version(char *buf, size_t len)
{
    int p[2];
    buf[0] = '\0';
    if (pipe2(p, O_CLOEXEC) < 0)
        return;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], STDOUT_FILENO);
        dup2(p[1], STDERR_FILENO);
        execl(mpirun_path, "mpirun", "--version", (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    size_t got = 0;
    ssize_t r;
    while (pid > 0 && got + 1 < len && (r = read(p[0], buf + got, len - 1 - got)) != 0) {
        if (r < 0 && errno != EINTR)
            break;
        got += r > 0 ? (size_t)r : 0;
    }
    buf[got] = '\0';
    close(p[0]);
    while (pid > 0 && waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
}

int tpl_mpi_find(void)
{
    if (in_path("mpirun", mpirun_path, sizeof mpirun_path) < 0) {
        fprintf(stderr, "tp-launch: --mpi needs Open MPI's mpirun in PATH (Debian package "
                        "openmpi-bin); not found\n");
        return -1;
    }
    char v[512];
    mpirun_version(v, sizeof v);
    if (!strstr(v, "Open MPI") && !strstr(v, "OpenRTE")) {
        fprintf(stderr,
                "tp-launch: --mpi drives Open MPI's mpirun (its --mca options and rsh agent); "
                "%s is not Open MPI's (it says: %.80s): put Open MPI's mpirun first in PATH\n",
                mpirun_path, v[0] ? v : "nothing");
        return -1;
    }
    return 0;
}

/* Does the user's option list hold flag (given with one or two dashes)? */
static int user_has(char **user, int n_user, const char *flag)
{
    for (int i = 0; i < n_user; i++) {
        const char *u = user[i];
        if (u[0] == '-' && (strcmp(u + 1, flag) == 0 || (u[1] == '-' && strcmp(u + 2, flag) == 0)))
            return 1;
    }
    return 0;
}

/* Does the user set MCA parameter name (--mca/-mca/--gmca NAME VALUE)? */
static int user_has_mca(char **user, int n_user, const char *name)
{
    for (int i = 0; i + 1 < n_user; i++) {
        const char *u = user[i] + strspn(user[i], "-");
        if (user[i][0] == '-' && (strcmp(u, "mca") == 0 || strcmp(u, "gmca") == 0) &&
            strcmp(user[i + 1], name) == 0)
            return 1;
    }
    return 0;
}

int tpl_mpi_check_user(char **user, int n_user)
{
    static const char *const mine[] = {
        "n", "np", "c", "host", "H", "hostfile", "machinefile", "default-hostfile", "launch-agent",
        NULL};
    static const char *const mine_mca[] = {"plm", "plm_rsh_agent", "orte_launch_agent", NULL};
    for (int i = 0; mine[i]; i++)
        if (user_has(user, n_user, mine[i])) {
            fprintf(stderr,
                    "tp-launch: mpirun option -%s%s: tp-launch sets the rank count (-n), the "
                    "hosts (the emulated nodes) and the launcher itself; drop it from the "
                    "options between the two '--'\n",
                    strlen(mine[i]) > 1 ? "-" : "", mine[i]);
            return -1;
        }
    for (int i = 0; mine_mca[i]; i++)
        if (user_has_mca(user, n_user, mine_mca[i])) {
            fprintf(stderr,
                    "tp-launch: mpirun option --mca %s: tp-launch's agent is what puts the "
                    "daemons on the emulated nodes; drop it\n",
                    mine_mca[i]);
            return -1;
        }
    return 0;
}

/* A growing argv. */
typedef struct args {
    char **v;
    int n, cap, failed;
} args;

static void add(args *a, const char *s)
{
    if (a->failed)
        return;
    if (a->n + 2 > a->cap) {
        int cap = a->cap ? 2 * a->cap : 64;
        char **v = realloc(a->v, (size_t)cap * sizeof *v);
        if (!v) {
            a->failed = 1;
            return;
        }
        a->v = v;
        a->cap = cap;
    }
    if (!(a->v[a->n] = strdup(s)))
        a->failed = 1;
    else
        a->v[++a->n] = NULL;
}

/* --mca name value, unless the user sets name. */
static void add_mca(args *a, const tpl_mpi_job *j, const char *name, const char *value)
{
    if (user_has_mca(j->user, j->n_user, name))
        return;
    add(a, "--mca");
    add(a, name);
    add(a, value);
}

/* flag value, unless the user gives flag. */
static void add_flag(args *a, const tpl_mpi_job *j, const char *flag, const char *value)
{
    if (user_has(j->user, j->n_user, flag + 2))
        return;
    add(a, flag);
    add(a, value);
}

/* The agent command: this very program, by a path Open MPI can pass
 * through a shell word unchanged. 0, or -1 after saying why. */
static int agent_command(pid_t job, char *out, size_t len)
{
    char self[400];
    ssize_t l = readlink("/proc/self/exe", self, sizeof self - 1);
    if (l <= 0) {
        fprintf(stderr, "tp-launch: --mpi: cannot find tp-launch's own path: %s\n",
                strerror(errno));
        return -1;
    }
    self[l] = '\0';
    if (strspn(self, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._+-") !=
        (size_t)l) {
        fprintf(stderr,
                "tp-launch: --mpi: tp-launch's path '%s' holds a space or a shell character; "
                "Open MPI splits its launch agent's command on spaces and passes it through a "
                "shell: install or copy tp-launch to a plain path\n",
                self);
        return -1;
    }
    snprintf(out, len, "%s " TPL_MPI_AGENT_OPT "%ld", self, (long)job);
    return 0;
}

/* Where the ranks go and how they talk. */
static void add_placement(args *a, const tpl_cluster *c, const tpl_mpi_job *j, const char *hosts)
{
    char val[32];
    add(a, "--host");
    add(a, hosts);
    add(a, "-n");
    snprintf(val, sizeof val, "%ld", j->n);
    add(a, val);
    add_flag(a, j, "--map-by", "slot");
    add_flag(a, j, "--rank-by", "slot");
    add_flag(a, j, "--bind-to", "none");
    long cores = sysconf(_SC_NPROCESSORS_ONLN), per_node = (j->n + c->k - 1) / c->k;
    if (per_node > (cores > 0 ? cores : 1) && !user_has(j->user, j->n_user, "oversubscribe"))
        add(a, "--oversubscribe");
    if (j->n > (cores > 0 ? cores : 1))
        add_mca(a, j, "mpi_yield_when_idle", "1");
}

char **tpl_mpi_argv(const tpl_cluster *c, const tpl_mpi_job *j)
{
    char agent[512], hosts[TPL_MAX_NODES * 24];
    if (agent_command(c->job, agent, sizeof agent) < 0)
        return NULL;
    if (tpl_mpi_hosts(c->job, j->n, c->k, hosts, sizeof hosts) < 0) {
        fprintf(stderr, "tp-launch: --mpi: the host list does not fit\n");
        return NULL;
    }
    args a = {0};
    add(&a, mpirun_path);
    add_placement(&a, c, j, hosts);
    add_mca(&a, j, "plm", "rsh");
    add_mca(&a, j, "plm_rsh_agent", agent);
    add_mca(&a, j, "plm_rsh_no_tree_spawn", "1");
    add_mca(&a, j, "oob_tcp_if_include", "198.18.0.0/15");
    add_mca(&a, j, "btl_tcp_if_include", "198.18.0.0/15");
    add_mca(&a, j, "btl", "self,vader,tcp");
    static const char *const env[] = {"TP_BACKEND", "TP_JOB_ID", "TP_LAUNCH_NODES",
                                      "TP_LAUNCH_LINK", NULL};
    for (int i = 0; env[i]; i++) {
        add(&a, "-x");
        add(&a, env[i]);
    }
    for (int i = 0; i < j->n_user; i++)
        add(&a, j->user[i]);
    for (char **p = j->prog; *p; p++)
        add(&a, *p);
    if (a.failed) {
        fprintf(stderr, "tp-launch: out of memory\n");
        tpl_mpi_free_argv(a.v);
        return NULL;
    }
    return a.v;
}

void tpl_mpi_free_argv(char **argv)
{
    for (char **p = argv; p && *p; p++)
        free(*p);
    free(argv);
}

int tpl_mpi_agent(int argc, char **argv)
{
    char *end;
    long job = strtol(argv[1] + strlen(TPL_MPI_AGENT_OPT), &end, 10);
    long node = argc > 3 && *end == '\0' && job > 0 ? tpl_ns_node(argv[2], (pid_t)job) : -1;
    if (node < 0) {
        fprintf(stderr,
                "tp-launch %s: expected a node of job %s and a command (this mode is Open "
                "MPI's launch agent under tp-launch --mpi, not for direct use); got '%s'\n",
                argv[1], argv[1] + strlen(TPL_MPI_AGENT_OPT), argc > 2 ? argv[2] : "");
        return 2;
    }
    tpl_cluster c = {.k = node + 1, .job = (pid_t)job, .watcher = -1, .watch_fd = -1};
    if (tpl_cluster_enter(&c, node) < 0)
        return 1;
    size_t len = 1;
    for (int i = 3; i < argc; i++)
        len += strlen(argv[i]) + 1;
    char *cmd = malloc(len);
    if (!cmd) {
        fprintf(stderr, "tp-launch: out of memory\n");
        return 1;
    }
    cmd[0] = '\0';
    for (int i = 3; i < argc; i++) { /* what ssh hands the remote shell */
        strcat(cmd, argv[i]);
        if (i + 1 < argc)
            strcat(cmd, " ");
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
    fprintf(stderr, "tp-launch: agent: cannot run /bin/sh: %s\n", strerror(errno));
    free(cmd);
    return 127;
}
