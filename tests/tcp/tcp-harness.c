/* SPDX-License-Identifier: MIT */
/* tcp-harness.c — see tcp-harness.h. */
#include "tcp-harness.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef TCP_PLUGIN_FILE
#define TCP_PLUGIN_FILE "libtp-tcp.so"
#endif

const tp_comm_ops *th_ops;
static char err_buf[1024];

static tp_status host_set_error(tp_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_buf, sizeof err_buf, fmt, ap);
    va_end(ap);
    return status;
}

static void host_debug(const char *topic, const char *fmt, ...)
{
    if (!getenv("TCP_TEST_DEBUG"))
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "[%s] ", topic);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

tp_host th_host = {sizeof(tp_host), host_set_error, host_debug, 30.0, NULL};

const char *th_error(void)
{
    return err_buf;
}

void th_clear_error(void)
{
    err_buf[0] = '\0';
}

int th_load(void)
{
    if (th_ops)
        return 0;
    const char *path = getenv("TP_TCP_PLUGIN");
    if (!path || !*path)
        path = TCP_PLUGIN_FILE;
    const char *t = getenv("TP_TIMEOUT_S");
    if (t && atof(t) > 0)
        th_host.timeout_s = atof(t);
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "tcp harness: cannot load %s: %s\n", path, dlerror());
        return -1;
    }
    const tp_plugin_desc *(*get)(void) = (const tp_plugin_desc *(*)(void))dlsym(h, TP_PLUGIN_ENTRY);
    if (!get || !get() || !get()->comm) {
        fprintf(stderr, "tcp harness: %s has no communicator descriptor\n", path);
        return -1;
    }
    th_ops = get()->comm;
    return 0;
}

tp_status th_open(th_rank *r, int requested, tp_mem_kind mem)
{
    tp_engine_args args = {sizeof args, requested, NULL, NULL};
    tp_engine_info info = {sizeof info, 0, 0, 0};
    tp_rank_env env = {
        .struct_size = sizeof env, .mem_kind = mem, .device_index = mem == TP_MEM_HOST ? -1 : 0};
    memset(r, 0, sizeof *r);
    tp_status st = th_ops->init(&th_host, &args, &r->engine, &info);
    if (st != TP_OK)
        return st;
    if (info.local_count != 1) {
        th_ops->finalize(r->engine);
        return host_set_error(TP_ERR_INTERNAL, "harness: local_count %d, expected 1",
                              info.local_count);
    }
    st = th_ops->world(r->engine, 0, &env, &r->world, &r->rank, &r->size);
    if (st != TP_OK) {
        th_ops->finalize(r->engine);
        r->engine = NULL;
        return st;
    }
    if (r->rank != info.first_rank || r->size != info.world_size) {
        th_close(r);
        return host_set_error(TP_ERR_INTERNAL, "harness: world() rank/size disagree with init()");
    }
    return TP_OK;
}

void th_close(th_rank *r)
{
    if (r->world)
        th_ops->comm_free(r->world);
    if (r->engine)
        th_ops->finalize(r->engine);
    memset(r, 0, sizeof *r);
}

int th_free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof a;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int th_run(int world, const int *ranks, int nranks, const char *const *extra_env, double guard_s,
           th_scenario fn, void *arg, th_result *res)
{
    int port = th_free_port();
    pid_t pid[TH_MAX_RANKS];
    int pfd[TH_MAX_RANKS];
    char buf[32];
    if (nranks > TH_MAX_RANKS)
        nranks = TH_MAX_RANKS;
    fflush(NULL);
    for (int i = 0; i < nranks; i++) {
        int rank = ranks ? ranks[i] : i;
        int p[2];
        memset(&res[i], 0, sizeof res[i]);
        if (pipe(p) < 0) {
            perror("pipe");
            exit(2);
        }
        pid[i] = fork();
        if (pid[i] == 0) {
            close(p[0]);
            /* Check's runner handles SIGALRM and the suite ignores SIGPIPE;
             * a rank gets the defaults (the plugin must not need either). */
            signal(SIGALRM, SIG_DFL);
            signal(SIGPIPE, SIG_DFL);
            snprintf(buf, sizeof buf, "%d", rank);
            setenv("TP_RANK", buf, 1);
            snprintf(buf, sizeof buf, "%d", world);
            setenv("TP_WORLD_SIZE", buf, 1);
            setenv("TP_MASTER_ADDR", "127.0.0.1", 1);
            snprintf(buf, sizeof buf, "%d", port);
            setenv("TP_MASTER_PORT", buf, 1);
            /* Ranks started by hand share a secret (tp-launch would make one). */
            setenv("TP_TCP_SECRET", TH_SECRET, 1);
            for (const char *const *e = extra_env; e && *e; e++)
                putenv((char *)*e);
            th_result out = {.exited = 1};
            if (th_load() != 0)
                _exit(99);
            th_clear_error();
            out.status = fn(rank, world, arg);
            snprintf(out.msg, sizeof out.msg, "%s", th_error());
            ssize_t w = write(p[1], &out, sizeof out);
            _exit(w == (ssize_t)sizeof out ? 0 : 98);
        }
        close(p[1]);
        pfd[i] = p[0];
    }
    double deadline = now() + guard_s;
    int left = nranks;
    int done[TH_MAX_RANKS] = {0};
    while (left > 0) {
        for (int i = 0; i < nranks; i++) {
            int status;
            if (done[i] || waitpid(pid[i], &status, WNOHANG) != pid[i])
                continue;
            done[i] = 1;
            left--;
            th_result got;
            ssize_t n = read(pfd[i], &got, sizeof got);
            if (n == (ssize_t)sizeof got)
                res[i] = got;
            if (WIFEXITED(status)) {
                res[i].exited = 1;
                res[i].code = WEXITSTATUS(status);
            } else {
                res[i].exited = 0;
                res[i].code = WIFSIGNALED(status) ? WTERMSIG(status) : -1;
            }
            close(pfd[i]);
        }
        if (left > 0 && now() > deadline) {
            for (int i = 0; i < nranks; i++) {
                if (done[i])
                    continue;
                kill(pid[i], SIGKILL);
                waitpid(pid[i], NULL, 0);
                close(pfd[i]);
                done[i] = 1;
                res[i].hung = 1;
                res[i].exited = 0;
                snprintf(res[i].msg, sizeof res[i].msg, "hung: killed after %g s", guard_s);
                left--;
            }
        }
        if (left > 0) {
            struct timespec ts = {0, 5 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    return port;
}
