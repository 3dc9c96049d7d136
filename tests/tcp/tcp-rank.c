/* SPDX-License-Identifier: MIT */
/*
 * tcp-rank — one rank of a tcp job for tp-launch, without libtp: loads
 * libtp-tcp.so, joins the job from the environment tp-launch sets, and
 *   tcp-rank check       runs every collective against a serial reference
 *   tcp-rank die RANK    rank RANK exits with status 3 after a barrier; the
 *                        others call all_reduce and must fail (exit 1)
 *   tcp-rank stall RANK  rank RANK stops itself (SIGSTOP) after a barrier;
 *                        the others call all_reduce and must fail (exit 1)
 *   tcp-rank bind-port   only try to bind TP_MASTER_PORT on 127.0.0.1 (no
 *                        SO_REUSEADDR), print what happened, exit 0
 * Exit status 0 on success, 1 on a failed check (message on stderr).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tcp-checks.h"

/* Can another program bind the master port now? (It must not: tp-launch
 * keeps the port it picked until rank 0 listens on it.) */
static void try_bind_master_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)atoi(getenv("TP_MASTER_PORT")));
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int r = bind(fd, (struct sockaddr *)&a, sizeof a);
    printf("bind master port: %s\n", r == 0 ? "bound" : strerror(errno));
    fflush(stdout);
    close(fd);
}

/* A squatter: bind the master port with SO_REUSEADDR and listen (tp-launch
 * holds it listening, so this must fail); the fd stays open meanwhile. */
static int squat_master_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    int one = 1;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)atoi(getenv("TP_MASTER_PORT")));
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int r = bind(fd, (struct sockaddr *)&a, sizeof a) == 0 ? listen(fd, 8) : -1;
    printf("squat master port: %s\n", r == 0 ? "listening" : strerror(errno));
    fflush(stdout);
    return fd;
}

int main(int argc, char **argv)
{
    if (argc < 2 || th_load() != 0) {
        fprintf(stderr, "usage: tcp-rank check | die RANK | stall RANK | bind-port | squat\n");
        return 2;
    }
    if (strcmp(argv[1], "bind-port") == 0) {
        try_bind_master_port();
        return 0;
    }
    int squat = -1;
    if (strcmp(argv[1], "squat") == 0) { /* rank 1 squats first, then every rank checks */
        if (atoi(getenv("TP_RANK")) == 1)
            squat = squat_master_port();
        else
            sleep(1);
        argv[1] = "check";
    }
    th_rank r;
    tp_status st = th_open(&r, 0, TP_MEM_HOST);
    if (st != TP_OK) {
        fprintf(stderr, "tcp-rank: init: %s\n", th_error());
        return 1;
    }
    if (strcmp(argv[1], "check") == 0) {
        st = tcp_check_all(r.world, r.rank, r.size, 1);
        if (st == TP_OK)
            printf("rank %d of %d: all collectives agree with the serial reference\n", r.rank,
                   r.size);
    } else if ((strcmp(argv[1], "die") == 0 || strcmp(argv[1], "stall") == 0) && argc > 2) {
        st = th_ops->barrier(r.world);
        if (st == TP_OK && r.rank == atoi(argv[2]) && argv[1][0] == 's') {
            fprintf(stderr, "rank %d: stopping on purpose\n", r.rank);
            raise(SIGSTOP);
        }
        if (st == TP_OK && r.rank == atoi(argv[2])) {
            fprintf(stderr, "rank %d: exiting on purpose\n", r.rank);
            exit(3);
        }
        float x[13] = {0};
        if (st == TP_OK)
            st = th_ops->all_reduce(r.world, x, x, 13, TP_F32, TP_SUM);
        if (st == TP_OK) {
            fprintf(stderr, "rank %d: all_reduce succeeded without rank %s\n", r.rank, argv[2]);
            th_close(&r);
            return 4;
        }
        fprintf(stderr, "rank %d: failed as expected: %s\n", r.rank, th_error());
        th_close(&r);
        return 1;
    }
    if (st != TP_OK)
        fprintf(stderr, "tcp-rank: rank %d: %s\n", r.rank, th_error());
    th_close(&r);
    if (squat >= 0)
        close(squat);
    return st == TP_OK ? 0 : 1;
}
