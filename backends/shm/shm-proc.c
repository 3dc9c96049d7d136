/* SPDX-License-Identifier: MIT */
/*
 * shm-proc.c — is a peer's process still there? A process is named by its
 * pid and its start time (field 22 of /proc/PID/stat), so a pid reused by
 * an unrelated process does not count as the peer; a zombie (killed, not
 * yet reaped by its parent) counts as gone.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shm.h"

/* State letter and start time of pid from /proc; false if unreadable. */
static bool sh_proc_stat(pid_t pid, char *state, uint64_t *start)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    /* "pid (comm) S ppid ...": comm may hold spaces and parentheses. */
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ' || !p[2] || p[3] != ' ')
        return false;
    *state = p[2];
    p += 4; /* field 4 */
    /* fields 4 .. 21 precede the start time (field 22) */
    for (int field = 4; field < 22 && p; field++) {
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    if (!p)
        return false;
    *start = strtoull(p, NULL, 10);
    return true;
}

uint64_t sh_proc_start(pid_t pid)
{
    char state = 0;
    uint64_t start = 0;
    if (!sh_proc_stat(pid, &state, &start) || state == 'Z' || state == 'X')
        return 0;
    return start ? start : 1;
}

bool sh_proc_alive(pid_t pid, uint64_t start)
{
    if (pid <= 0)
        return false;
    char state = 0;
    uint64_t now = 0;
    if (sh_proc_stat(pid, &state, &now))
        return state != 'Z' && state != 'X' && (start == 0 || now == start || start == 1);
    /* No /proc entry: gone, unless /proc is not mounted at all. */
    if (access("/proc/self/stat", R_OK) == 0)
        return false;
    return kill(pid, 0) == 0 || errno == EPERM;
}
