/* SPDX-License-Identifier: MIT */
/*
 * test-launch.c — tp-launch as a user meets it: the environment each rank
 * gets, prefixed output, exit status, and what happens when a rank fails
 * (the others are stopped, the failing rank is named, nothing hangs).
 *
 * argv[1] = tp-launch, argv[2] = tcp-rank (set by meson).
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *launch_path, *rank_path;

typedef struct run_out {
    int status;
    char out[16384], err[16384];
} run_out;

/* Run argv, collect stdout and stderr; kill it after guard_s (reported as
 * status -1, a hang). */
static void run(char *const argv[], double guard_s, run_out *o)
{
    int po[2], pe[2];
    memset(o, 0, sizeof *o);
    ck_assert(pipe(po) == 0 && pipe(pe) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(po[1], 1);
        dup2(pe[1], 2);
        close(po[0]);
        close(pe[0]);
        execv(argv[0], argv);
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    size_t lo = 0, le = 0;
    int open = 2;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (open > 0) {
        struct pollfd p[2] = {{po[0], POLLIN, 0}, {pe[0], POLLIN, 0}};
        poll(p, 2, 100);
        for (int i = 0; i < 2; i++) {
            if (!p[i].revents || p[i].fd < 0)
                continue;
            char *buf = i ? o->err : o->out;
            size_t *len = i ? &le : &lo;
            char tmp[4096];
            ssize_t n = read(p[i].fd, tmp, sizeof tmp);
            if (n <= 0) {
                close(i ? pe[0] : po[0]);
                if (i)
                    pe[0] = -1;
                else
                    po[0] = -1;
                open--;
                continue;
            }
            size_t room = sizeof o->out - 1 - *len;
            size_t k = (size_t)n < room ? (size_t)n : room;
            memcpy(buf + *len, tmp, k);
            *len += k;
        }
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((double)(t.tv_sec - t0.tv_sec) > guard_s) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            o->status = -1;
            if (po[0] >= 0)
                close(po[0]);
            if (pe[0] >= 0)
                close(pe[0]);
            return;
        }
    }
    int st;
    waitpid(pid, &st, 0);
    o->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

#define HAS(s, needle)                                                                             \
    ck_assert_msg(strstr((s), (needle)) != NULL, "no \"%s\" in:\n%s", (needle), (s))

START_TEST(test_help)
{
    run_out o;
    char *argv[] = {(char *)launch_path, "--help", NULL};
    run(argv, 60, &o);
    ck_assert_int_eq(o.status, 0);
    HAS(o.out, "Usage:\n  tp-launch [OPTION"); /* GLib's usage line: "[OPTION…]" */
    HAS(o.out, "] -n N [--] PROGRAM [ARGS...]\n");
    char *bad[] = {(char *)launch_path, "-n", "0", "true", NULL};
    run(bad, 60, &o);
    ck_assert_int_eq(o.status, 2);
    HAS(o.err, "expected a number of ranks");
    char *noprog[] = {(char *)launch_path, "-n", "2", NULL};
    run(noprog, 60, &o);
    ck_assert_int_eq(o.status, 2);
    HAS(o.err, "missing the program to run");
}
END_TEST

START_TEST(test_env_and_prefix)
{
    run_out o;
    char *argv[] = {(char *)launch_path,
                    "-n",
                    "3",
                    "--master-port",
                    "29999",
                    "/bin/sh",
                    "-c",
                    "echo env $TP_RANK $TP_WORLD_SIZE $TP_BACKEND $TP_MASTER_ADDR $TP_MASTER_PORT; "
                    "echo err >&2; printf partial",
                    NULL};
    unsetenv("TP_BACKEND");
    run(argv, 60, &o);
    ck_assert_int_eq(o.status, 0);
    HAS(o.out, "[rank 0] env 0 3 tcp 127.0.0.1 29999\n");
    HAS(o.out, "[rank 1] env 1 3 tcp 127.0.0.1 29999\n");
    HAS(o.out, "[rank 2] env 2 3 tcp 127.0.0.1 29999\n");
    HAS(o.out, "[rank 2] partial\n");
    HAS(o.err, "[rank 1] err\n");
    /* TP_BACKEND already set: kept */
    setenv("TP_BACKEND", "mine", 1);
    char *argv2[] = {(char *)launch_path,         "-n", "1", "--no-prefix", "/bin/sh", "-c",
                     "echo $TP_BACKEND $TP_RANK", NULL};
    run(argv2, 60, &o);
    unsetenv("TP_BACKEND");
    ck_assert_int_eq(o.status, 0);
    ck_assert_str_eq(o.out, "mine 0\n");
}
END_TEST

/* Rank 1 fails at once; rank 0 would sleep for 10 minutes: it is stopped
 * after the grace period and tp-launch reports rank 1. */
START_TEST(test_failure_stops_others)
{
    run_out o;
    char *argv[] = {(char *)launch_path,
                    "-n",
                    "2",
                    "--grace",
                    "0.2",
                    "/bin/sh",
                    "-c",
                    "if [ $TP_RANK = 1 ]; then exit 5; fi; exec sleep 600",
                    NULL};
    run(argv, 120, &o);
    ck_assert_msg(o.status == 5, "status %d, stderr:\n%s", o.status, o.err);
    HAS(o.err, "tp-launch: rank 1 (pid");
    HAS(o.err, "exited with status 5; stopping the other 1 rank(s)");
    HAS(o.err, "tp-launch: failed: rank 1 exited with status 5");
    HAS(o.err, "rank 0 was killed by signal 15");
    char *sig[] = {(char *)launch_path,
                   "-n",
                   "2",
                   "/bin/sh",
                   "-c",
                   "if [ $TP_RANK = 0 ]; then kill -SEGV $$; fi; exit 0",
                   NULL};
    run(sig, 120, &o);
    ck_assert_msg(o.status == 128 + SIGSEGV, "status %d, stderr:\n%s", o.status, o.err);
    HAS(o.err, "failed: rank 0 was killed by signal 11");
    char *missing[] = {(char *)launch_path, "-n", "2", "/nonexistent/prog", NULL};
    run(missing, 120, &o);
    ck_assert_int_eq(o.status, 127);
    HAS(o.err, "cannot run /nonexistent/prog");
}
END_TEST

/* A signal to tp-launch reaches every rank (each runs in its own process
 * group) and tp-launch exits 128+N instead of leaving them behind (mode 0),
 * also when the ranks catch it and exit 0 (1); a signal ignored when
 * tp-launch started (nohup) stays ignored by it and its ranks (2). */
START_TEST(test_signal_forwarded)
{
    static const struct {
        int sig, ignored, want;
        const char *script;
        int settle_ms; /* after both ranks are up, before the signal */
    } m[] = {
        {SIGTERM, 0, 128 + SIGTERM, "echo up; exec sleep 600", 0},
        {SIGTERM, 0, 128 + SIGTERM, "trap 'exit 0' TERM; echo up; sleep 600 & wait", 0},
        {SIGHUP, 1, 0, "echo up; exec sleep 2", 0},
        /* output that nobody reads once "up" is seen: the pipe fills and
         * tp-launch waits to write it; the signal must still end the job
         * (it used to wait, signals blocked, until the guard killed it) */
        {SIGTERM, 0, 128 + SIGTERM,
         "echo up; sleep 0.5; while :; do echo 0123456789012345678901234567890123456789; done",
         1500},
    };
    int po[2];
    ck_assert(pipe(po) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(po[1], 1);
        dup2(po[1], 2);
        close(po[0]);
        signal(m[_i].sig, m[_i].ignored ? SIG_IGN : SIG_DFL);
        execl(launch_path, launch_path, "-n", "2", "/bin/sh", "-c", m[_i].script, (char *)NULL);
        _exit(127);
    }
    close(po[1]);
    /* Wait until both ranks run, then signal tp-launch. */
    char buf[4096];
    size_t len = 0;
    while (len < sizeof buf - 1) {
        struct pollfd p = {po[0], POLLIN, 0};
        if (poll(&p, 1, 60000) <= 0)
            break;
        ssize_t n = read(po[0], buf + len, sizeof buf - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        buf[len] = '\0';
        if (strstr(buf, "[rank 0] up") && strstr(buf, "[rank 1] up"))
            break;
    }
    buf[len] = '\0';
    ck_assert_msg(strstr(buf, "[rank 0] up") && strstr(buf, "[rank 1] up"), "ranks not up: %s",
                  buf);
    nanosleep(&(struct timespec){m[_i].settle_ms / 1000, (m[_i].settle_ms % 1000) * 1000000L},
              NULL);
    kill(pid, m[_i].sig);
    int st = 0, reaped = 0;
    /* The guard: if the ranks were left running, tp-launch would not exit. */
    for (int i = 0; i < 600 && !reaped; i++) {
        reaped = waitpid(pid, &st, WNOHANG) == pid;
        struct timespec ts = {0, 100 * 1000 * 1000};
        if (!reaped)
            nanosleep(&ts, NULL);
    }
    if (!reaped) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        ck_abort_msg("tp-launch did not exit after signal %d", m[_i].sig);
    }
    close(po[0]);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == m[_i].want, "mode %d: status %#x, want %d",
                  _i, st, m[_i].want);
}
END_TEST

/* 1 while pid is a live process (a zombie counts as dead). */
static int alive(pid_t pid)
{
    char path[64], st[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(st, 1, sizeof st - 1, f);
    fclose(f);
    st[n] = '\0';
    char *p = strrchr(st, ')');
    return p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

/* A rank that fails leaves a child in its process group: when the job
 * ends failed, tp-launch ends that child too (it used to signal only the
 * groups of ranks still running, so the child lived on, orphaned). */
START_TEST(test_failed_job_ends_leftovers)
{
    char *argv[] = {(char *)launch_path,
                    "-n",
                    "2",
                    "/bin/sh",
                    "-c",
                    "if [ \"$TP_RANK\" = 0 ]; then sleep 100 & echo \"child $!\"; exit 3; "
                    "else exec sleep 100; fi",
                    NULL};
    run_out o;
    run(argv, 60, &o);
    ck_assert_msg(o.status == 3, "status %d: %s", o.status, o.err);
    const char *at = strstr(o.out, "[rank 0] child ");
    ck_assert_msg(at != NULL, "no child pid: %s", o.out);
    pid_t child = (pid_t)atol(at + strlen("[rank 0] child "));
    ck_assert_int_gt(child, 1);
    int lives = 1;
    for (int i = 0; i < 100 && lives; i++) {
        lives = alive(child); /* a zombie is dead: its new parent (init) may be slow to reap */
        if (lives)
            nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
    }
    if (lives)
        kill(child, SIGKILL); /* the rank's child: started by this test's job */
    ck_assert_msg(!lives, "rank 0's child %d outlived the failed job", (int)child);
}
END_TEST

/* Ranks run in background process groups: one that reads the terminal is
 * stopped (SIGTTIN) for good. tp-launch, on a pseudo-terminal of its own
 * session, ends the job and says why instead of waiting forever. */
START_TEST(test_rank_reading_terminal)
{
    int mfd = posix_openpt(O_RDWR | O_NOCTTY);
    ck_assert(mfd >= 0 && grantpt(mfd) == 0 && unlockpt(mfd) == 0);
    const char *slave = ptsname(mfd);
    ck_assert(slave != NULL);
    pid_t pid = fork();
    if (pid == 0) {
        setsid();
        int sfd = open(slave, O_RDWR); /* the session's controlling terminal */
        if (sfd < 0 || ioctl(sfd, TIOCSCTTY, 0) < 0)
            _exit(126);
        dup2(sfd, 0);
        dup2(sfd, 1);
        dup2(sfd, 2);
        close(mfd);
        execl(launch_path, launch_path, "-n", "2", "cat", (char *)NULL);
        _exit(127);
    }
    char out[8192];
    size_t len = 0;
    int st = 0, reaped = 0;
    for (int i = 0; i < 300 && !reaped; i++) { /* 30 s guard */
        struct pollfd p = {mfd, POLLIN, 0};
        if (poll(&p, 1, 100) > 0 && (p.revents & POLLIN)) {
            ssize_t n = read(mfd, out + len, sizeof out - 1 - len);
            if (n > 0)
                len += (size_t)n;
        }
        reaped = waitpid(pid, &st, WNOHANG) == pid;
    }
    out[len] = '\0';
    close(mfd);
    if (!reaped) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        ck_abort_msg("tp-launch still waits 30 s after its ranks stopped: %s", out);
    }
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) != 0, "status %#x: %s", st, out);
    ck_assert_msg(strstr(out, "read from the terminal"), "no reason given: %s", out);
}
END_TEST

/* The tcp plugin under tp-launch: rank 1 exits after a barrier; the others
 * fail their all_reduce with an error naming the lost peer (exit 1), well
 * within the grace period, and tp-launch names rank 1. */
START_TEST(test_tcp_rank_dies)
{
    run_out o;
    char *argv[] = {(char *)launch_path, "-n",  "3", "--grace", "60",
                    (char *)rank_path,   "die", "1", NULL};
    setenv("TP_TIMEOUT_S", "30", 1);
    run(argv, 240, &o);
    /* Which failure tp-launch sees first is a race (rank 0 may notice the
     * lost peer and exit before rank 1's exit is reaped); all are listed. */
    ck_assert_msg(o.status == 3 || o.status == 1, "status %d, stderr:\n%s", o.status, o.err);
    HAS(o.err, "[rank 1] rank 1: exiting on purpose");
    HAS(o.err, "[rank 0] rank 0: failed as expected: tcp all_reduce");
    HAS(o.err, "[rank 2] rank 2: failed as expected: tcp all_reduce");
    HAS(o.err, "rank 1 exited with status 3");
    HAS(o.err, "rank 0 exited with status 1");
    HAS(o.err, "rank 2 exited with status 1");
}
END_TEST

START_TEST(test_tcp_check)
{
    run_out o;
    char n[8];
    snprintf(n, sizeof n, "%d", _i);
    char *argv[] = {(char *)launch_path, "-n", n, (char *)rank_path, "check", NULL};
    setenv("TP_TIMEOUT_S", "60", 1);
    run(argv, 600, &o);
    ck_assert_msg(o.status == 0, "status %d\nstdout:\n%s\nstderr:\n%s", o.status, o.out, o.err);
    for (int r = 0; r < _i; r++) {
        char want[96];
        snprintf(want, sizeof want, "[rank %d] rank %d of %d: all collectives agree", r, r, _i);
        HAS(o.out, want);
    }
}
END_TEST

/* Every job gets a fresh 64-hex-digit TP_TCP_SECRET in the environment
 * (never on the command line); one the user set is kept. */
START_TEST(test_secret_per_job)
{
    run_out o;
    char first[128] = "";
    char *argv[] = {(char *)launch_path,
                    "-n",
                    "2",
                    "/bin/sh",
                    "-c",
                    "echo \"secret ${#TP_TCP_SECRET} $TP_TCP_SECRET\"",
                    NULL};
    unsetenv("TP_TCP_SECRET");
    for (int run_i = 0; run_i < 2; run_i++) {
        run(argv, 60, &o);
        ck_assert_int_eq(o.status, 0);
        HAS(o.out, "[rank 0] secret 64 ");
        char *a = strstr(o.out, "[rank 0] secret 64 "), *b = strstr(o.out, "[rank 1] secret 64 ");
        ck_assert(a && b);
        ck_assert_msg(strncmp(a + 19, b + 19, 64) == 0, "ranks got different secrets:\n%s", o.out);
        if (run_i == 0)
            snprintf(first, sizeof first, "%.64s", a + 19);
        else
            ck_assert_msg(strncmp(first, a + 19, 64) != 0, "two jobs got the same secret %s",
                          first);
    }
    setenv("TP_TCP_SECRET", "mine-mine-mine-mine", 1);
    run(argv, 60, &o);
    unsetenv("TP_TCP_SECRET");
    HAS(o.out, "[rank 0] secret 19 mine-mine-mine-mine\n");
}
END_TEST

/* The master port tp-launch picked stays taken until rank 0 listens: no
 * other program can bind it meanwhile (no race between pick and use). */
START_TEST(test_master_port_held)
{
    run_out o;
    char *argv[] = {(char *)launch_path, "-n", "1", (char *)rank_path, "bind-port", NULL};
    run(argv, 60, &o);
    ck_assert_msg(o.status == 0, "status %d\n%s%s", o.status, o.out, o.err);
    HAS(o.out, "[rank 0] bind master port: Address already in use\n");
}
END_TEST

/* A process that binds the picked port with SO_REUSEADDR and listens, after
 * tp-launch picked it and before rank 0 starts, cannot take it: tp-launch
 * holds the master socket listening and hands it to rank 0 (TP_MASTER_FD). */
START_TEST(test_master_port_squatter)
{
    run_out o;
    char *argv[] = {(char *)launch_path, "-n", "3", (char *)rank_path, "squat", NULL};
    run(argv, 120, &o);
    ck_assert_msg(o.status == 0, "status %d\n%s%s", o.status, o.out, o.err);
    HAS(o.out, "[rank 1] squat master port: Address already in use\n");
    HAS(o.out, "[rank 0] rank 0 of 3: all collectives agree with the serial reference\n");
}
END_TEST

/* -n above the core's limit on TP_WORLD_SIZE: refused up front (exit 2). */
START_TEST(test_too_many_ranks)
{
    run_out o;
    char *argv[] = {(char *)launch_path, "-n", "65", (char *)rank_path, "check", NULL};
    run(argv, 60, &o);
    ck_assert_msg(o.status == 2, "status %d\n%s%s", o.status, o.out, o.err);
    HAS(o.err, "tp-launch: -n 65: expected a number of ranks in 1..64");
    ck_assert_msg(strstr(o.out, "[rank") == NULL, "a rank ran: %s", o.out);
}
END_TEST

/* kill -9 of tp-launch (no prefix: no pipes that would end the ranks) takes
 * its ranks with it. This test process is a child subreaper, so the
 * orphaned ranks become its children: it can reap them, and kill them by
 * PID if they outlive the bounded wait. */
START_TEST(test_sigkill_of_launcher_ends_ranks)
{
    int po[2];
    ck_assert(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
    ck_assert(pipe(po) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(po[1], 1);
        close(po[0]);
        execl(launch_path, launch_path, "-n", "2", "--no-prefix", "/bin/sh", "-c",
              "echo pid $$; exec sleep 600", (char *)NULL);
        _exit(127);
    }
    close(po[1]);
    char buf[512] = "";
    size_t len = 0;
    int pids[2], got = 0;
    while (got < 2 && len < sizeof buf - 1) {
        struct pollfd p = {po[0], POLLIN, 0};
        if (poll(&p, 1, 60000) <= 0)
            break;
        ssize_t n = read(po[0], buf + len, sizeof buf - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        buf[len] = '\0';
        got = sscanf(buf, "pid %d\npid %d", &pids[0], &pids[1]);
    }
    ck_assert_msg(got == 2, "ranks did not start: %s", buf);
    struct timespec up = {0, 200 * 1000 * 1000};
    nanosleep(&up, NULL); /* let both reach exec of sleep */
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    int left = 2;
    for (int i = 0; i < 100 && left > 0; i++) { /* up to 10 s */
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
        left = alive(pids[0]) + alive(pids[1]);
        struct timespec ts = {0, 100 * 1000 * 1000};
        if (left)
            nanosleep(&ts, NULL);
    }
    for (int i = 0; i < 2; i++)
        if (alive(pids[i]))
            kill(pids[i], SIGKILL); /* ours (we are their subreaper): clean up */
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
    close(po[0]);
    ck_assert_msg(left == 0, "%d rank(s) still running 10 s after kill -9 of tp-launch", left);
}
END_TEST

/* A rank stops (SIGSTOP) after a barrier: every other rank names it as the
 * rank that stopped progressing, and so does tp-launch's summary, within
 * TP_TIMEOUT_S plus a few seconds (not TP_TIMEOUT_S + the grace period). */
START_TEST(test_tcp_rank_stalls)
{
    run_out o;
    char *argv[] = {(char *)launch_path, "-n",    "4", "--grace", "30",
                    (char *)rank_path,   "stall", "2", NULL};
    struct timespec t0, t1;
    setenv("TP_TIMEOUT_S", "3", 1);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    run(argv, 240, &o);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double took = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    ck_assert_msg(o.status == 1, "status %d, stderr:\n%s", o.status, o.err);
    HAS(o.err, "[rank 2] rank 2: stopping on purpose");
    for (int r = 0; r < 4; r++) {
        if (r == 2)
            continue;
        char want[128];
        snprintf(want, sizeof want, "[rank %d] rank %d: failed as expected: tcp all_reduce", r, r);
        HAS(o.err, want);
        const char *line = strstr(o.err, want), *eol = strchr(line, '\n');
        const char *named = strstr(line, "rank 2 stopped progressing");
        ck_assert_msg(named && (!eol || named < eol), "rank %d does not name rank 2:\n%s", r,
                      o.err);
    }
    HAS(o.err, "tp-launch: rank 2 stopped progressing: it was stopped by signal 19");
    /* 3 s timeout + 1.5 s stall check + start-up; the grace period (30 s) is not waited. */
    ck_assert_msg(took < 25, "took %.1f s", took);
}
END_TEST

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: test-launch TP_LAUNCH TCP_RANK\n");
        return 2;
    }
    launch_path = argv[1];
    rank_path = argv[2];
    Suite *s = suite_create("tp-launch");
    TCase *tc = tcase_create("launch");
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, test_help);
    tcase_add_test(tc, test_env_and_prefix);
    tcase_add_test(tc, test_failure_stops_others);
    tcase_add_loop_test(tc, test_signal_forwarded, 0, 4);
    tcase_add_test(tc, test_rank_reading_terminal);
    tcase_add_test(tc, test_failed_job_ends_leftovers);
    tcase_add_test(tc, test_tcp_rank_dies);
    tcase_add_test(tc, test_secret_per_job);
    tcase_add_test(tc, test_master_port_held);
    tcase_add_test(tc, test_master_port_squatter);
    tcase_add_test(tc, test_too_many_ranks);
    tcase_add_test(tc, test_sigkill_of_launcher_ends_ranks);
    tcase_add_test(tc, test_tcp_rank_stalls);
    tcase_add_loop_test(tc, test_tcp_check, 2, 5); /* 2, 3, 4 processes */
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
