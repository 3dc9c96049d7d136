/* SPDX-License-Identifier: MIT */
/*
 * test-tcp.c — the tcp plugin driven directly through its vtable, one forked
 * process per rank: correctness over world sizes 1..4 and 7 and odd counts,
 * and every failure the plugin must turn into a clear error instead of a
 * crash or a hang (a peer that dies, never comes, sends garbage, or
 * disagrees about the world size or the collective).
 *
 * "No hang" is checked by the runner's guard: a rank still running after
 * GUARD_S is killed and reported as hung; the plugin's own timeouts are far
 * shorter. No assertion depends on how fast anything runs.
 */
#include <check.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <glib.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "tcp-checks.h"
#include "tcp-harness.h"
#include "tcp-wire.h"

#define GUARD_S 120.0

static double tsec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static void expect_msg(const th_result *r, const char *needle)
{
    ck_assert_msg(strstr(r->msg, needle) != NULL, "message lacks \"%s\": %s", needle, r->msg);
}

static void expect_no_hang(const th_result *res, int n)
{
    for (int i = 0; i < n; i++)
        ck_assert_msg(!res[i].hung, "process %d hung: %s", i, res[i].msg);
}

/* ------------------------------------------------------------ correctness */

static tp_status sc_check(int rank, int size, void *arg)
{
    th_rank r;
    tp_status st = th_open(&r, size, TP_MEM_HOST);
    if (st != TP_OK)
        return st;
    if (r.rank != rank || r.size != size) {
        th_close(&r);
        return th_host.set_error(TP_ERR_INTERNAL, "world: rank %d of %d, expected %d of %d", r.rank,
                                 r.size, rank, size);
    }
    st = tcp_check_all(r.world, rank, size, *(int *)arg);
    th_close(&r);
    return st;
}

static const int sizes[] = {1, 2, 3, 4, 7};

static void run_checks(int size, const char *const *env, int big)
{
    th_result res[TH_MAX_RANKS];
    th_run(size, NULL, size, env, GUARD_S, sc_check, &big, res);
    for (int i = 0; i < size; i++) {
        ck_assert_msg(res[i].exited && res[i].code == 0, "world %d rank %d: exit %d%s %s", size, i,
                      res[i].code, res[i].exited ? "" : " (signal/hang)", res[i].msg);
        ck_assert_msg(res[i].status == TP_OK, "world %d rank %d: status %d: %s", size, i,
                      res[i].status, res[i].msg);
    }
}

START_TEST(test_collectives)
{
    static const char *env[] = {"TP_TIMEOUT_S=60", NULL};
    run_checks(sizes[_i], env, sizes[_i] <= 4);
}
END_TEST

/* 16-byte chunks: every segment is many chunks, so the pipelining (a chunk
 * forwarded before its segment is complete) is exercised at every count. */
START_TEST(test_collectives_small_chunks)
{
    static const char *env[] = {"TP_TIMEOUT_S=60", "TP_TCP_CHUNK_BYTES=16", NULL};
    run_checks(sizes[_i], env, 0);
}
END_TEST

/* Rank 1 asks for another chunk size: rank 0's is used by every rank. */
static tp_status sc_other_chunk(int rank, int size, void *arg)
{
    if (rank == 1)
        setenv("TP_TCP_CHUNK_BYTES", "24", 1);
    return sc_check(rank, size, arg);
}

START_TEST(test_chunk_size_from_rank0)
{
    static const char *env[] = {"TP_TIMEOUT_S=60", "TP_TCP_CHUNK_BYTES=16", NULL};
    th_result res[3];
    int big = 0;
    th_run(3, NULL, 3, env, GUARD_S, sc_other_chunk, &big, res);
    for (int i = 0; i < 3; i++)
        ck_assert_msg(res[i].status == TP_OK, "rank %d: %s", i, res[i].msg);
}
END_TEST

/* 600001 i32 over 2 ranks with 16-byte chunks would be 75001 messages per
 * segment: chunks grow so a segment needs at most 65536 (and the receive
 * buffer with them). Exact integer sums. */
static tp_status sc_many_chunks(int rank, int size, void *arg)
{
    th_rank r;
    tp_status st = th_open(&r, size, TP_MEM_HOST);
    if (st != TP_OK)
        return st;
    size_t n = 600001;
    int32_t *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++)
        v[i] = (int32_t)(i % 1000) * (rank + 1);
    st = th_ops->all_reduce(r.world, v, v, n, TP_I32, TP_SUM);
    for (size_t i = 0; st == TP_OK && i < n; i++)
        if (v[i] != (int32_t)(i % 1000) * 3)
            st = th_host.set_error(TP_ERR_INTERNAL, "[%zu] = %d, expected %d", i, v[i],
                                   (int32_t)(i % 1000) * 3);
    free(v);
    th_close(&r);
    return st;
}

START_TEST(test_chunks_grow_for_huge_counts)
{
    static const char *env[] = {"TP_TIMEOUT_S=60", "TP_TCP_CHUNK_BYTES=16", NULL};
    th_result res[2];
    th_run(2, NULL, 2, env, GUARD_S, sc_many_chunks, NULL, res);
    for (int i = 0; i < 2; i++)
        ck_assert_msg(res[i].status == TP_OK, "rank %d: %s", i, res[i].msg);
}
END_TEST

/* No TP_RANK/TP_WORLD_SIZE: one rank, no sockets. */
static tp_status sc_single(int rank, int size, void *arg)
{
    unsetenv("TP_RANK");
    unsetenv("TP_WORLD_SIZE");
    unsetenv("TP_MASTER_PORT");
    th_rank r;
    tp_status st = th_open(&r, 0, TP_MEM_HOST);
    if (st != TP_OK)
        return st;
    st = r.size == 1 && r.rank == 0 ? tcp_check_all(r.world, 0, 1, 0)
                                    : th_host.set_error(TP_ERR_INTERNAL, "size %d", r.size);
    th_close(&r);
    return st;
}

START_TEST(test_single_without_env)
{
    th_result res[1];
    th_run(1, NULL, 1, NULL, GUARD_S, sc_single, NULL, res);
    ck_assert_msg(res[0].status == TP_OK, "%s", res[0].msg);
}
END_TEST

/* ----------------------------------------------------------- peer failure */

static tp_status sc_die(int rank, int size, void *arg)
{
    th_rank r;
    tp_status st = th_open(&r, size, TP_MEM_HOST);
    if (st != TP_OK)
        return st;
    size_t n = 1 << 21;
    float *buf = calloc(n, sizeof *buf);
    if ((st = th_ops->barrier(r.world)) != TP_OK)
        return st;
    if (rank == 2) {
        /* SIGALRM's default action ends the process in the middle of the
         * all_reduce below (or, if that finished first, in pause()). */
        struct itimerval it = {{0, 0}, {0, 20000}};
        setitimer(ITIMER_REAL, &it, NULL);
    }
    st = th_ops->all_reduce(r.world, buf, buf, n, TP_F32, TP_SUM);
    if (rank == 2)
        for (;;)
            pause();
    if (st == TP_OK)
        st = th_ops->all_reduce(r.world, buf, buf, n, TP_F32, TP_SUM);
    free(buf);
    th_close(&r);
    return st;
}

START_TEST(test_peer_dies_mid_collective)
{
    static const char *env[] = {"TP_TIMEOUT_S=30", "TP_TCP_CHUNK_BYTES=4096", NULL};
    th_result res[3];
    th_run(3, NULL, 3, env, GUARD_S, sc_die, NULL, res);
    expect_no_hang(res, 3);
    ck_assert_msg(!res[2].exited && res[2].code == SIGALRM, "rank 2 should die by SIGALRM");
    for (int i = 0; i < 2; i++) {
        ck_assert_msg(res[i].exited && res[i].code == 0, "rank %d crashed", i);
        ck_assert_msg(res[i].status == TP_ERR_PEER, "rank %d: status %d: %s", i, res[i].status,
                      res[i].msg);
        expect_msg(&res[i], "rank ");
        expect_msg(&res[i], "127.0.0.1:");
    }
    /* Ranks 0 and 1 are rank 2's ring neighbours. The first of them to see
     * rank 2 go names it; the other may instead see that first one shut its
     * connections (it names that rank, and says to look at its error). */
    ck_assert_msg(strstr(res[0].msg, "rank 2 at 127.0.0.1:") ||
                      strstr(res[1].msg, "rank 2 at 127.0.0.1:"),
                  "neither rank names rank 2: %s | %s", res[0].msg, res[1].msg);
}
END_TEST

/* Rank 2 is alive but never calls the collective. */
static tp_status sc_stuck(int rank, int size, void *arg)
{
    th_rank r;
    tp_status st = th_open(&r, size, TP_MEM_HOST);
    if (st != TP_OK)
        return st;
    float x[13] = {0};
    if (rank == 2)
        sleep_s(8); /* well past the others' timeout */
    else
        st = th_ops->all_reduce(r.world, x, x, 13, TP_F32, TP_SUM);
    th_close(&r);
    return st;
}

START_TEST(test_peer_stuck_times_out)
{
    static const char *env[] = {"TP_TIMEOUT_S=2", NULL};
    th_result res[3];
    th_run(3, NULL, 3, env, GUARD_S, sc_stuck, NULL, res);
    expect_no_hang(res, 3);
    /* Rank 0 waits on rank 2 (its left neighbour); rank 1 then sees rank 0 go. */
    ck_assert_msg(res[0].status == TP_ERR_TIMEOUT, "status %d: %s", res[0].status, res[0].msg);
    expect_msg(&res[0], "rank 2 at 127.0.0.1:");
    expect_msg(&res[0], "sent nothing for 2 s (TP_TIMEOUT_S)");
    ck_assert_msg(res[1].status == TP_ERR_PEER || res[1].status == TP_ERR_TIMEOUT, "status %d: %s",
                  res[1].status, res[1].msg);
    /* Both name the rank that stopped progressing (rank 1 waits on rank 0,
     * which waits on rank 2), and the rank each of them waited for. */
    for (int i = 0; i < 2; i++)
        expect_msg(&res[i], "rank 2 stopped progressing");
    expect_msg(&res[0], "this rank waited for rank 2");
    expect_msg(&res[1], "this rank waited for rank 0");
}
END_TEST

/* World 4 split into {0, 1} and {2, 3}; rank 1 stops (sleeps past the
 * timeout) before its pair's all-reduce. Rank 0 times out and asks every
 * rank who waits on whom; ranks 2 and 3, busy with their own pair's
 * all-reduces meanwhile, answer and go on: theirs all succeed. */
static tp_status sc_stuck_other_comm(int rank, int size, void *arg)
{
    (void)arg;
    th_rank r;
    tp_status st = th_open(&r, size, TP_MEM_HOST);
    if (st != TP_OK)
        return st;
    void *pair = NULL;
    int prank, psize;
    st = th_ops->split(r.world, rank / 2, rank, &pair, &prank, &psize);
    float x[13] = {0};
    if (st == TP_OK && rank == 1)
        sleep_s(8);
    else if (st == TP_OK && rank == 0)
        st = th_ops->all_reduce(pair, x, x, 13, TP_F32, TP_SUM);
    else /* 6 s of small all-reduces, across rank 0's timeout and stall check */
        for (int i = 0; i < 60 && st == TP_OK; i++) {
            st = th_ops->all_reduce(pair, x, x, 13, TP_F32, TP_SUM);
            sleep_s(0.1);
        }
    if (pair)
        th_ops->comm_free(pair);
    th_close(&r);
    return st;
}

START_TEST(test_stall_in_another_comm)
{
    static const char *env[] = {"TP_TIMEOUT_S=2", NULL};
    th_result res[4];
    th_run(4, NULL, 4, env, GUARD_S, sc_stuck_other_comm, NULL, res);
    expect_no_hang(res, 4);
    ck_assert_msg(res[0].status == TP_ERR_TIMEOUT, "status %d: %s", res[0].status, res[0].msg);
    expect_msg(&res[0], "rank 1 stopped progressing");
    for (int i = 2; i < 4; i++)
        ck_assert_msg(res[i].status == TP_OK, "rank %d (other pair): status %d: %s", i,
                      res[i].status, res[i].msg);
}
END_TEST

static tp_status sc_open_only(int rank, int size, void *arg)
{
    th_rank r;
    tp_status st = th_open(&r, 0, TP_MEM_HOST);
    if (st == TP_OK)
        th_close(&r);
    return st;
}

START_TEST(test_master_never_comes)
{
    static const char *env[] = {"TP_TIMEOUT_S=1", NULL};
    const int ranks[] = {1};
    th_result res[1];
    int port = th_run(2, ranks, 1, env, GUARD_S, sc_open_only, NULL, res);
    char where[64];
    snprintf(where, sizeof where, "127.0.0.1:%d", port);
    expect_no_hang(res, 1);
    ck_assert_msg(res[0].status == TP_ERR_TIMEOUT, "status %d: %s", res[0].status, res[0].msg);
    expect_msg(&res[0], "rank 1 could not reach the master (rank 0)");
    expect_msg(&res[0], where);
}
END_TEST

START_TEST(test_rank_never_comes)
{
    static const char *env[] = {"TP_TIMEOUT_S=2", NULL};
    const int ranks[] = {0, 1};
    th_result res[2];
    th_run(3, ranks, 2, env, GUARD_S, sc_open_only, NULL, res);
    expect_no_hang(res, 2);
    ck_assert_msg(res[0].status == TP_ERR_TIMEOUT, "status %d: %s", res[0].status, res[0].msg);
    /* "rank(s) 2", or "rank(s) 1, 2" on a machine so loaded that rank 1 was late too */
    expect_msg(&res[0], "2 to register");
    ck_assert_msg(res[1].status == TP_ERR_TIMEOUT || res[1].status == TP_ERR_PEER, "status %d: %s",
                  res[1].status, res[1].msg);
}
END_TEST

/* ---------------------------------------------------------------- garbage */

static int connect_port(int port, double give_up_s)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (double waited = 0; waited < give_up_s; waited += 0.02) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0)
            return fd;
        close(fd);
        sleep_s(0.02);
    }
    return -1;
}

static int listen_port(int port)
{
    int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 8) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int read_full(int fd, void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 20000) <= 0)
            return -1;
        ssize_t k = read(fd, (char *)buf + got, n - got);
        if (k <= 0)
            return -1;
        got += (size_t)k;
    }
    return 0;
}

/* Wait until the other side closes (it failed), at most 20 s. */
static void wait_close(int fd)
{
    char b[256];
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (poll(&p, 1, 20000) > 0 && read(fd, b, sizeof b) > 0)
        ;
}

static const char garbage[] = "GET / HTTP/1.0\r\nHost: example\r\n\r\n";

/* ------------------------------------------------ intruders (no secret) */

/* Run fn with this process's stderr going to a temporary file; the plugin's
 * log (what it refused) is appended to the message as " || log: ...". */
static tp_status with_log(th_scenario fn, int rank, int size, void *arg)
{
    FILE *f = tmpfile();
    int saved = dup(2);
    fflush(stderr);
    dup2(fileno(f), 2);
    tp_status st = fn(rank, size, arg);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    char err[600], log[2000];
    snprintf(err, sizeof err, "%s", th_error());
    rewind(f);
    size_t n = fread(log, 1, sizeof log - 1, f);
    log[n] = '\0';
    fclose(f);
    th_host.set_error(st, "%s || log: %s", err, log);
    return st;
}

/* HMAC-SHA-256 as the plugin computes it (tcp-auth.c): the test knows the
 * secret, so it can play a legitimate rank, or replay one. */
static void test_mac(const char *secret, char dir, int role, const unsigned char *nc,
                     const unsigned char *ns, unsigned char mac[TCP_MAC_SIZE])
{
    GHmac *h = g_hmac_new(G_CHECKSUM_SHA256, (const guchar *)secret, strlen(secret));
    unsigned char tag[2] = {(unsigned char)dir, (unsigned char)role};
    gsize len = TCP_MAC_SIZE;
    g_hmac_update(h, (const guchar *)"tp-tcp auth v2", 14);
    g_hmac_update(h, tag, 2);
    g_hmac_update(h, nc, TCP_NONCE_SIZE);
    g_hmac_update(h, ns, TCP_NONCE_SIZE);
    g_hmac_get_digest(h, mac, &len);
    g_hmac_unref(h);
}

static void send_auth(int fd, uint16_t op, int role, const void *payload, size_t len)
{
    unsigned char m[TCP_HDR_SIZE + TCP_PROOF_SIZE];
    tcp_hdr h = {.magic = TCP_MAGIC,
                 .version = TCP_WIRE_VERSION,
                 .op = op,
                 .arg = (uint32_t)role,
                 .len = len};
    tcp_hdr_encode(&h, m);
    memcpy(m + TCP_HDR_SIZE, payload, len);
    (void)!write(fd, m, TCP_HDR_SIZE + len);
}

/* Challenge the listener on fd with nc; its nonce in ns. Returns 1 if its
 * proof is right for `secret`, 0 if not, -1 if it did not answer. */
static int challenge(int fd, int role, const char *secret, const unsigned char *nc,
                     unsigned char *ns)
{
    unsigned char in[TCP_HDR_SIZE + TCP_PROOF_SIZE], mac[TCP_MAC_SIZE];
    send_auth(fd, TCP_OP_AUTH_CHALLENGE, role, nc, TCP_NONCE_SIZE);
    if (read_full(fd, in, sizeof in) < 0)
        return -1;
    memcpy(ns, in + TCP_HDR_SIZE, TCP_NONCE_SIZE);
    test_mac(secret, 'L', role, nc, ns, mac);
    return memcmp(mac, in + TCP_HDR_SIZE + TCP_NONCE_SIZE, TCP_MAC_SIZE) == 0;
}

/* 1 if the other side closes fd within s seconds. */
static int closed_within(int fd, double s)
{
    char b[256];
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (poll(&p, 1, (int)(s * 1000)) > 0) {
        ssize_t n = read(fd, b, sizeof b);
        if (n <= 0)
            return 1;
    }
    return 0;
}

typedef struct intrude {
    int mode; /* 0 garbage + forged hello + wrong MAC, 1 idle flood, 2 replay */
    int ok;   /* set in the child: what the intruder saw was right */
} intrude;

/* Rank 1's slot: attack the master port first, then join as the real rank 1
 * (which must still work: the job succeeds with right results). */
static tp_status sc_intruder_then_rank(int rank, int size, void *arg)
{
    if (rank == 0)
        return with_log(sc_check, rank, size, &(int){0});
    signal(SIGPIPE, SIG_IGN);
    int mode = ((intrude *)arg)->mode, port = atoi(getenv("TP_MASTER_PORT"));
    int fd = connect_port(port, 20);
    if (fd < 0)
        return th_host.set_error(TP_ERR_IO, "intruder: could not reach the master");
    close(fd); /* a port probe */
    static int idle[300];
    int nidle = 0;
    unsigned char nc[TCP_NONCE_SIZE] = {1, 2, 3}, ns[TCP_NONCE_SIZE], ns2[TCP_NONCE_SIZE];
    unsigned char mac[TCP_MAC_SIZE];
    if (mode == 0) {
        fd = connect_port(port, 20); /* garbage */
        (void)!write(fd, garbage, sizeof garbage - 1);
        wait_close(fd);
        close(fd);
        unsigned char hello[TCP_HDR_SIZE + TCP_HELLO_SIZE] = {0}; /* a hello, no handshake */
        tcp_hdr h = {.magic = TCP_MAGIC,
                     .version = TCP_WIRE_VERSION,
                     .op = TCP_OP_HELLO,
                     .len = TCP_HELLO_SIZE};
        tcp_hdr_encode(&h, hello);
        tcp_put32(hello + TCP_HDR_SIZE, 1);
        tcp_put32(hello + TCP_HDR_SIZE + 4, 2);
        tcp_put16(hello + TCP_HDR_SIZE + 8, 9);
        fd = connect_port(port, 20);
        (void)!write(fd, hello, sizeof hello);
        wait_close(fd);
        close(fd);
        fd = connect_port(port, 20); /* a handshake without the secret */
        int proof = challenge(fd, TCP_ROLE_MASTER, "not the secret at all", nc, ns);
        memset(mac, 0x5a, sizeof mac);
        send_auth(fd, TCP_OP_AUTH_RESPONSE, TCP_ROLE_MASTER, mac, sizeof mac);
        if (proof != 0 || !closed_within(fd, 5))
            return th_host.set_error(TP_ERR_INTERNAL, "intruder: proof %d, or not closed", proof);
        close(fd);
    } else if (mode == 1) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        for (; nidle < 300; nidle++) { /* idle connections, never a byte */
            idle[nidle] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            (void)!connect(idle[nidle], (struct sockaddr *)&a, sizeof a);
        }
        /* Wait (at most 10 s) until every one is through the accept queue,
         * so they all sit in the master's pending table before rank 1 comes. */
        for (int k = 0, up = 0; k < nidle && up < 1000; up++) {
            struct pollfd p = {.fd = idle[k], .events = POLLOUT};
            if (poll(&p, 1, 10) > 0)
                k++;
        }
        sleep_s(0.2);
    } else {
        /* A legitimate handshake (the test knows the secret) is accepted: the
         * master keeps the connection, waiting for the hello. */
        fd = connect_port(port, 20);
        if (challenge(fd, TCP_ROLE_MASTER, TH_SECRET, nc, ns) != 1)
            return th_host.set_error(TP_ERR_INTERNAL, "intruder: the master's proof is wrong");
        test_mac(TH_SECRET, 'C', TCP_ROLE_MASTER, nc, ns, mac);
        send_auth(fd, TCP_OP_AUTH_RESPONSE, TCP_ROLE_MASTER, mac, sizeof mac);
        if (closed_within(fd, 1.5))
            return th_host.set_error(TP_ERR_INTERNAL, "intruder: a right response was refused");
        close(fd);
        /* The same transcript replayed: the master's nonce is fresh, so the
         * recorded response is wrong now, and the connection is refused. */
        int g = connect_port(port, 20);
        challenge(g, TCP_ROLE_MASTER, TH_SECRET, nc, ns2);
        if (memcmp(ns, ns2, sizeof ns) == 0)
            return th_host.set_error(TP_ERR_INTERNAL, "intruder: the master reused its nonce");
        send_auth(g, TCP_OP_AUTH_RESPONSE, TCP_ROLE_MASTER, mac, sizeof mac);
        if (!closed_within(g, 5))
            return th_host.set_error(TP_ERR_INTERNAL, "intruder: a replayed response was taken");
        close(g);
    }
    tp_status st = sc_check(rank, size, &(int){0});
    for (int i = 0; i < nidle; i++)
        close(idle[i]);
    return st;
}

START_TEST(test_garbage_and_intruders_refused)
{
    static const char *env[] = {"TP_TIMEOUT_S=20", NULL};
    intrude in = {.mode = _i};
    th_result res[2];
    th_run(2, NULL, 2, env, GUARD_S, sc_intruder_then_rank, &in, res);
    expect_no_hang(res, 2);
    for (int i = 0; i < 2; i++)
        ck_assert_msg(res[i].exited && res[i].status == TP_OK, "mode %d rank %d: status %d: %s", _i,
                      i, res[i].status, res[i].msg);
    expect_msg(&res[0], "tp tcp: rank 0: refused a connection from 127.0.0.1:");
    if (_i == 0) {
        expect_msg(&res[0], "to the master port: sent bytes that are not a tp tcp message");
        expect_msg(&res[0], "sent a hello message of 12 bytes where a 32-byte authentication "
                            "challenge was due (not authenticated)");
        expect_msg(&res[0], "failed authentication: it does not know this job's TP_TCP_SECRET");
    } else if (_i == 1) {
        expect_msg(&res[0], "too many connections waiting to authenticate");
    } else {
        expect_msg(&res[0], "failed authentication");
    }
}
END_TEST

/* ------------------------------------------------------ flooding (no secret) */

#define FLOOD_PROCS 8   /* flooding processes */
#define FLOOD_CONNS 150 /* connections each keeps open, re-opened as they close */
#define FLOOD_HOLD  0.9 /* seconds each is held after its challenge (under the 1 s limit) */
#define FLOOD_RUNS  3

/* A local process without the secret floods the master port for at most
 * for_s seconds (it is killed sooner): each connection sends a valid-looking
 * challenge, is held FLOOD_HOLD s, closed and opened again at once. */
static void flood(int port, double for_s)
{
    setpgid(0, 0); /* the flooders are one group, stopped by one kill */
    for (int k = 1; k < FLOOD_PROCS; k++)
        if (fork() == 0)
            break;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    unsigned char m[TCP_HDR_SIZE + TCP_NONCE_SIZE] = {0};
    tcp_hdr h = {.magic = TCP_MAGIC,
                 .version = TCP_WIRE_VERSION,
                 .op = TCP_OP_AUTH_CHALLENGE,
                 .arg = TCP_ROLE_MASTER,
                 .len = TCP_NONCE_SIZE};
    tcp_hdr_encode(&h, m);
    int fd[FLOOD_CONNS];
    double opened[FLOOD_CONNS], t0 = tsec();
    for (int i = 0; i < FLOOD_CONNS; i++)
        fd[i] = -1;
    while (tsec() - t0 < for_s) {
        for (int i = 0; i < FLOOD_CONNS; i++) {
            if (fd[i] >= 0 && tsec() - opened[i] < FLOOD_HOLD)
                continue;
            if (fd[i] >= 0)
                close(fd[i]);
            fd[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            opened[i] = tsec();
            (void)connect(fd[i], (struct sockaddr *)&a, sizeof a);
            (void)!send(fd[i], m, sizeof m, MSG_NOSIGNAL);
        }
        sleep_s(0.001);
    }
    _exit(0);
}

/* Rank 0 starts the flood on its own port; the other ranks come once it is
 * in full swing. Every rank must get through and compute right. */
static tp_status sc_flooded(int rank, int size, void *arg)
{
    (void)arg;
    if (rank != 0) {
        sleep_s(1.0);
        return sc_check(rank, size, &(int){0});
    }
    pid_t f = fork();
    if (f == 0)
        flood(atoi(getenv("TP_MASTER_PORT")), 30);
    FILE *devnull = tmpfile(); /* thousands of "refused" lines */
    int saved = dup(2);
    fflush(stderr);
    dup2(fileno(devnull), 2);
    tp_status st = sc_check(rank, size, &(int){0});
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    fclose(devnull);
    kill(-f, SIGKILL);
    kill(f, SIGKILL);
    waitpid(f, NULL, 0);
    return st;
}

/* A local process without the secret keeps the master port busy (issue #13
 * review): the job still starts, every time. */
START_TEST(test_flood_cannot_stop_the_job)
{
    static const char *env[] = {"TP_TIMEOUT_S=10", NULL};
    th_result res[TH_MAX_RANKS];
    th_run(TH_MAX_RANKS, NULL, TH_MAX_RANKS, env, GUARD_S, sc_flooded, NULL, res);
    expect_no_hang(res, TH_MAX_RANKS);
    for (int i = 0; i < TH_MAX_RANKS; i++)
        ck_assert_msg(res[i].exited && res[i].status == TP_OK, "run %d rank %d: status %d: %s", _i,
                      i, res[i].status, res[i].msg);
}
END_TEST

/* TP_MASTER_FD that is not a listening socket on TP_MASTER_PORT (stdin; a
 * socket listening elsewhere): rank 0 refuses it by name. mode = _i. */
START_TEST(test_master_fd_checked)
{
    int other = listen_port(th_free_port());
    char fdenv[32];
    snprintf(fdenv, sizeof fdenv, "TP_MASTER_FD=%d", _i == 0 ? 0 : other);
    const char *env[] = {"TP_TIMEOUT_S=3", fdenv, NULL};
    th_result res[2];
    th_run(2, NULL, 2, env, GUARD_S, sc_open_only, NULL, res);
    close(other);
    expect_no_hang(res, 2);
    ck_assert_msg(res[0].status == TP_ERR_INVALID_ARG, "status %d: %s", res[0].status, res[0].msg);
    expect_msg(&res[0],
               _i == 0 ? "is not a listening TCP socket of this process" : "listens on port");
    ck_assert_msg(res[1].status != TP_OK, "rank 1 joined without a master: %s", res[1].msg);
}
END_TEST

/* A process with another secret claims rank 1 while the real rank 1 joins:
 * it is refused with a named error, the job goes on. */
static tp_status sc_wrong_secret(int rank, int size, void *arg)
{
    if (rank == 0)
        return with_log(sc_check, rank, size, &(int){0});
    if (rank == 1) {
        sleep_s(1.5); /* the impostor comes first */
        return sc_check(rank, size, &(int){0});
    }
    setenv("TP_RANK", "1", 1);
    setenv("TP_TCP_SECRET", "another-secret-0123456789", 1);
    return sc_open_only(1, size, arg);
}

START_TEST(test_wrong_secret_cannot_join)
{
    static const char *env[] = {"TP_TIMEOUT_S=5", NULL};
    const int ranks[] = {0, 1, 101};
    th_result res[3];
    th_run(2, ranks, 3, env, GUARD_S, sc_wrong_secret, NULL, res);
    expect_no_hang(res, 3);
    for (int i = 0; i < 2; i++)
        ck_assert_msg(res[i].status == TP_OK, "rank %d: status %d: %s", i, res[i].status,
                      res[i].msg);
    ck_assert_msg(res[2].status == TP_ERR_PEER, "intruder: status %d: %s", res[2].status,
                  res[2].msg);
    expect_msg(&res[2], "failed authentication: it does not know this job's TP_TCP_SECRET");
    expect_msg(&res[0], "refused a connection from 127.0.0.1:");
}
END_TEST

/* A stranger holds the master port and plays rank 0 (answering either
 * protocol): the real rank detects it by name instead of computing with it. */
static tp_status sc_squatter(int rank, int size, void *arg)
{
    if (rank == 1)
        return sc_open_only(rank, size, arg);
    signal(SIGPIPE, SIG_IGN);
    int lfd = listen_port(atoi(getenv("TP_MASTER_PORT")));
    int l0 = listen_port(th_free_port());
    struct sockaddr_in me;
    socklen_t ml = sizeof me;
    getsockname(l0, (struct sockaddr *)&me, &ml);
    int fd = lfd >= 0 ? accept(lfd, NULL, NULL) : -1;
    unsigned char in[TCP_HDR_SIZE + TCP_HELLO_SIZE];
    if (fd < 0 || read_full(fd, in, sizeof in) < 0)
        return th_host.set_error(TP_ERR_IO, "squatter: nothing came");
    if (tcp_get16(in + 6) == TCP_OP_AUTH_CHALLENGE) { /* forge a proof */
        unsigned char proof[TCP_PROOF_SIZE];
        memset(proof, 0x77, sizeof proof);
        send_auth(fd, TCP_OP_AUTH_PROOF, TCP_ROLE_MASTER, proof, sizeof proof);
    } else { /* the old protocol: a rank table naming the squatter rank 0 */
        size_t tlen = TCP_TABLE_HEAD_SIZE + 2 * TCP_TABLE_ENTRY_SIZE;
        unsigned char msg[TCP_HDR_SIZE + TCP_TABLE_HEAD_SIZE + 2 * TCP_TABLE_ENTRY_SIZE] = {0};
        tcp_hdr h = {/* whatever version the rank speaks */
                     .magic = TCP_MAGIC,
                     .version = tcp_get16(in + 4),
                     .op = TCP_OP_TABLE,
                     .len = tlen};
        tcp_hdr_encode(&h, msg);
        tcp_put64(msg + TCP_HDR_SIZE, 42);
        tcp_put64(msg + TCP_HDR_SIZE + 8, 1 << 18);
        int ports[2] = {ntohs(me.sin_port), tcp_get16(in + TCP_HDR_SIZE + 8)};
        for (int r = 0; r < 2; r++) {
            unsigned char *e = msg + TCP_HDR_SIZE + TCP_TABLE_HEAD_SIZE + r * TCP_TABLE_ENTRY_SIZE;
            tcp_put16(e, (uint16_t)ports[r]);
            strcpy((char *)e + 4, "127.0.0.1");
        }
        (void)!write(fd, msg, sizeof msg);
    }
    wait_close(fd);
    close(fd);
    close(l0);
    close(lfd);
    return TP_OK;
}

START_TEST(test_squatted_master_port_detected)
{
    static const char *env[] = {"TP_TIMEOUT_S=10", NULL};
    th_result res[2];
    th_run(2, NULL, 2, env, GUARD_S, sc_squatter, NULL, res);
    expect_no_hang(res, 2);
    ck_assert_msg(res[1].exited && res[1].status == TP_ERR_PEER, "rank 1: status %d: %s",
                  res[1].status, res[1].msg);
    expect_msg(&res[1], "the master at 127.0.0.1:");
    expect_msg(&res[1], "failed authentication: it does not know this job's TP_TCP_SECRET, so "
                        "another program (or a job with another secret) holds the port");
}
END_TEST

/* No secret: a named refusal that says how to set one; a short one is
 * refused; TP_TCP_INSECURE=1 runs (with a warning). mode = _i. */
static tp_status sc_secret_env(int rank, int size, void *arg)
{
    int mode = *(int *)arg;
    if (mode == 0)
        unsetenv("TP_TCP_SECRET");
    else if (mode == 1)
        setenv("TP_TCP_SECRET", "short", 1);
    else {
        unsetenv("TP_TCP_SECRET");
        setenv("TP_TCP_INSECURE", "1", 1);
        return with_log(sc_check, rank, size, &(int){0});
    }
    return sc_open_only(rank, size, arg);
}

START_TEST(test_secret_required)
{
    static const char *env[] = {"TP_TIMEOUT_S=5", NULL};
    int mode = _i;
    th_result res[2];
    th_run(2, NULL, 2, env, GUARD_S, sc_secret_env, &mode, res);
    expect_no_hang(res, 2);
    for (int i = 0; i < 2; i++) {
        if (mode == 2) {
            ck_assert_msg(res[i].status == TP_OK, "rank %d: %s", i, res[i].msg);
            expect_msg(&res[i], "TP_TCP_INSECURE=1: connections are not authenticated");
            continue;
        }
        ck_assert_msg(res[i].status == TP_ERR_INVALID_ARG, "rank %d: status %d: %s", i,
                      res[i].status, res[i].msg);
        expect_msg(&res[i], mode == 0 ? "TP_TCP_SECRET is not set" : "at least 16 expected");
        expect_msg(&res[i], "export TP_TCP_SECRET=");
    }
}
END_TEST

/* Register as rank `rank` of `world` with the master (the test knows the
 * secret), announcing the port of listener *l (made here), and read the
 * table into table[TCP_HDR_SIZE + TCP_TABLE_HEAD_SIZE + world entries].
 * Returns the master connection, or -1. */
static int fake_register(int rank, int world, int *l, unsigned char *table, size_t table_len)
{
    signal(SIGPIPE, SIG_IGN);
    int fd = connect_port(atoi(getenv("TP_MASTER_PORT")), 20);
    *l = listen_port(th_free_port());
    unsigned char nc[TCP_NONCE_SIZE] = {7}, ns[TCP_NONCE_SIZE], mac[TCP_MAC_SIZE];
    struct sockaddr_in me;
    socklen_t ml = sizeof me;
    getsockname(*l, (struct sockaddr *)&me, &ml);
    if (fd < 0 || challenge(fd, TCP_ROLE_MASTER, TH_SECRET, nc, ns) != 1)
        return -1;
    test_mac(TH_SECRET, 'C', TCP_ROLE_MASTER, nc, ns, mac);
    send_auth(fd, TCP_OP_AUTH_RESPONSE, TCP_ROLE_MASTER, mac, sizeof mac);
    unsigned char hello[TCP_HDR_SIZE + TCP_HELLO_SIZE] = {0};
    tcp_hdr h = {
        .magic = TCP_MAGIC, .version = TCP_WIRE_VERSION, .op = TCP_OP_HELLO, .len = TCP_HELLO_SIZE};
    tcp_hdr_encode(&h, hello);
    tcp_put32(hello + TCP_HDR_SIZE, (uint32_t)rank);
    tcp_put32(hello + TCP_HDR_SIZE + 4, (uint32_t)world);
    tcp_put16(hello + TCP_HDR_SIZE + 8, ntohs(me.sin_port));
    (void)!write(fd, hello, sizeof hello);
    if (read_full(fd, table, table_len) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* A stranger writing to a rank's peer port during the rendezvous is refused
 * and logged; the rank goes on (here: to wait for the real rank 2, which
 * never connects, so it times out naming rank 2, not the stranger). The
 * rank 2 slot registers properly, reads the table, then writes garbage to
 * rank 1's peer port and leaves. */
static tp_status sc_garbage_peer(int rank, int size, void *arg)
{
    if (rank < 2)
        return with_log(sc_open_only, rank, size, arg);
    int l2;
    unsigned char table[TCP_HDR_SIZE + TCP_TABLE_HEAD_SIZE + 3 * TCP_TABLE_ENTRY_SIZE];
    int fd = fake_register(2, 3, &l2, table, sizeof table);
    if (fd < 0)
        return th_host.set_error(TP_ERR_IO, "fake rank 2: no master or no table");
    int port1 = tcp_get16(table + TCP_HDR_SIZE + TCP_TABLE_HEAD_SIZE + TCP_TABLE_ENTRY_SIZE);
    int g = connect_port(port1, 20);
    (void)!write(g, garbage, sizeof garbage - 1);
    wait_close(g);
    close(g);
    close(fd);
    close(l2);
    return TP_OK;
}

/* The rank 1 slot registers, reads the table and leaves (its peer port
 * closed): rank 2, which must connect to it, is refused and reports rank
 * 1 gone at once (TP_ERR_PEER), not after TP_TIMEOUT_S of retries. */
static tp_status sc_gone_after_table(int rank, int size, void *arg)
{
    if (rank != 1)
        return sc_open_only(rank, size, arg);
    int l;
    unsigned char table[TCP_HDR_SIZE + TCP_TABLE_HEAD_SIZE + 3 * TCP_TABLE_ENTRY_SIZE];
    int fd = fake_register(1, 3, &l, table, sizeof table);
    if (fd < 0)
        return th_host.set_error(TP_ERR_IO, "fake rank 1: no master or no table");
    close(l);
    close(fd);
    return TP_OK;
}

START_TEST(test_rank_gone_during_mesh)
{
    /* retrying the refusal would end in TP_ERR_TIMEOUT after these 8 s */
    static const char *env[] = {"TP_TIMEOUT_S=8", NULL};
    th_result res[3];
    th_run(3, NULL, 3, env, GUARD_S, sc_gone_after_table, NULL, res);
    expect_no_hang(res, 3);
    ck_assert_msg(res[1].status == TP_OK, "fake rank 1: %s", res[1].msg);
    ck_assert_msg(res[2].status == TP_ERR_PEER, "status %d: %s", res[2].status, res[2].msg);
    expect_msg(&res[2], "rank 1 at 127.0.0.1:");
    expect_msg(&res[2], "no longer listens");
}
END_TEST

START_TEST(test_garbage_to_peer_port)
{
    static const char *env[] = {"TP_TIMEOUT_S=4", NULL};
    th_result res[3];
    th_run(3, NULL, 3, env, GUARD_S, sc_garbage_peer, NULL, res);
    expect_no_hang(res, 3);
    ck_assert_msg(res[2].status == TP_OK, "fake rank 2: %s", res[2].msg);
    ck_assert_msg(res[1].exited && res[1].code == 0, "rank 1 crashed");
    ck_assert_msg(res[1].status == TP_ERR_TIMEOUT, "status %d: %s", res[1].status, res[1].msg);
    expect_msg(&res[1], "for rank(s) 2 to connect");
    expect_msg(&res[1], "to this rank's peer port: sent bytes that are not a tp tcp message");
}
END_TEST

/* A fake master (in rank 0's slot) for a world of 3 where only rank 1 is
 * real: it answers the challenge with garbage. */
static tp_status sc_fake_master(int rank, int size, void *arg)
{
    if (rank == 1)
        return sc_open_only(rank, size, arg);
    signal(SIGPIPE, SIG_IGN);
    int lfd = listen_port(atoi(getenv("TP_MASTER_PORT")));
    if (lfd < 0)
        return th_host.set_error(TP_ERR_IO, "fake master: cannot listen");
    int fd = accept(lfd, NULL, NULL);
    unsigned char hello[TCP_HDR_SIZE + TCP_HELLO_SIZE];
    if (fd < 0 || read_full(fd, hello, sizeof hello) < 0)
        return th_host.set_error(TP_ERR_IO, "fake master: no hello");
    unsigned char junk[TCP_HDR_SIZE];
    memset(junk, 0xab, sizeof junk);
    (void)!write(fd, junk, sizeof junk);
    wait_close(fd);
    close(lfd);
    return TP_OK;
}

START_TEST(test_garbage_from_master)
{
    static const char *env[] = {"TP_TIMEOUT_S=30", NULL};
    th_result res[2];
    th_run(3, NULL, 2, env, GUARD_S, sc_fake_master, NULL, res);
    expect_no_hang(res, 2);
    ck_assert_msg(res[1].status == TP_ERR_PEER, "status %d: %s", res[1].status, res[1].msg);
    expect_msg(&res[1], "the master at 127.0.0.1:");
    expect_msg(&res[1], "sent bytes that are not a tp tcp message");
}
END_TEST

/* ----------------------------------------------------------- disagreement */

static tp_status sc_world_mismatch(int rank, int size, void *arg)
{
    if (rank == 1)
        setenv("TP_WORLD_SIZE", "3", 1);
    return sc_open_only(rank, size, arg);
}

START_TEST(test_world_size_mismatch)
{
    static const char *env[] = {"TP_TIMEOUT_S=30", NULL};
    th_result res[2];
    th_run(2, NULL, 2, env, GUARD_S, sc_world_mismatch, NULL, res);
    expect_no_hang(res, 2);
    ck_assert_msg(res[0].status == TP_ERR_INVALID_ARG, "status %d: %s", res[0].status, res[0].msg);
    expect_msg(&res[0], "TP_WORLD_SIZE=3 but rank 0 has TP_WORLD_SIZE=2");
    ck_assert_msg(res[1].status == TP_ERR_PEER, "status %d: %s", res[1].status, res[1].msg);
    expect_msg(&res[1], "refused rank 1");
    expect_msg(&res[1], "TP_WORLD_SIZE=3 but rank 0 has TP_WORLD_SIZE=2");
}
END_TEST

static tp_status sc_requested(int rank, int size, void *arg)
{
    th_rank r;
    tp_status st = th_open(&r, 4, TP_MEM_HOST);
    if (st == TP_OK)
        th_close(&r);
    return st;
}

START_TEST(test_requested_world_mismatch)
{
    th_result res[1];
    th_run(2, NULL, 1, NULL, GUARD_S, sc_requested, NULL, res);
    ck_assert_msg(res[0].status == TP_ERR_INVALID_ARG, "status %d: %s", res[0].status, res[0].msg);
    expect_msg(&res[0], "4 ranks requested");
    expect_msg(&res[0], "TP_WORLD_SIZE=2");
}
END_TEST

static tp_status sc_cuda_mem(int rank, int size, void *arg)
{
    th_rank r;
    tp_status st = th_open(&r, 0, TP_MEM_CUDA);
    if (st == TP_OK)
        th_close(&r);
    return st;
}

START_TEST(test_device_memory_refused)
{
    th_result res[1];
    th_run(1, NULL, 1, NULL, GUARD_S, sc_cuda_mem, NULL, res);
    ck_assert_msg(res[0].status == TP_ERR_NOT_SUPPORTED, "status %d: %s", res[0].status,
                  res[0].msg);
    expect_msg(&res[0], "host memory only");
}
END_TEST

/* mode 0: rank 1 calls broadcast while rank 0 calls all_reduce.
 * mode 1: rank 1 passes count 14 where rank 0 passes 13.
 * mode 2: all_gather counts [8, 4] on rank 0, [4, 8] on rank 1, in 16-byte
 * chunks: both send two 16-byte messages and expect one, so without the
 * counts digest in the header both returned TP_OK with wrong data. */
static tp_status sc_mismatch(int rank, int size, void *arg)
{
    int mode = *(int *)arg;
    th_rank r;
    tp_status st = th_open(&r, size, TP_MEM_HOST);
    if (st != TP_OK)
        return st;
    float buf[14] = {0};
    if (mode == 2) {
        size_t counts[2] = {rank ? 4 : 8, rank ? 8 : 4};
        float out[12];
        st = th_ops->all_gather(r.world, buf, out, counts, TP_F32);
    } else if (rank == 0 || mode == 1)
        st = th_ops->all_reduce(r.world, buf, buf, rank == 1 ? 14 : 13, TP_F32, TP_SUM);
    else
        st = th_ops->broadcast(r.world, buf, 13, TP_F32, 0);
    th_close(&r);
    return st;
}

START_TEST(test_mismatched_collectives)
{
    static const char *env[] = {"TP_TIMEOUT_S=30", NULL};
    static const char *env16[] = {"TP_TIMEOUT_S=30", "TP_TCP_CHUNK_BYTES=16", NULL};
    int mode = _i;
    th_result res[2];
    th_run(2, NULL, 2, mode == 2 ? env16 : env, GUARD_S, sc_mismatch, &mode, res);
    expect_no_hang(res, 2);
    /* a program error, as every backend calls it; the rank that finds it
     * sends the status with its ABORT */
    const char *reset = "reset the connection while this rank was sending";
    for (int i = 0; i < 2; i++)
        ck_assert_msg(res[i].status == TP_ERR_INVALID_ARG ||
                          (mode == 2 && res[i].status == TP_ERR_PEER && strstr(res[i].msg, reset)),
                      "rank %d: status %d: %s", i, res[i].status, res[i].msg);
    const char *needle =
        mode == 0 ? "the ranks called different collectives" : "the ranks passed different counts";
    /* Rank 1 receives rank 0's first message and sees the mismatch; it tells
     * rank 0 why it gives up before it closes, and rank 0 passes that on
     * (with different counts rank 0 may see rank 1's message differ first:
     * then it names the same cause itself). */
    if (mode == 2) {
        /* several messages each way: both ranks see the counts differ at
         * about the same time, and one may still be sending when the other
         * shuts its connections — it then reports the reset, naming the
         * other rank, whose own message names the cause */
        for (int i = 0; i < 2; i++) {
            expect_msg(&res[i], i ? "rank 0 at 127.0.0.1:" : "rank 1 at 127.0.0.1:");
            if (!strstr(res[i].msg, reset))
                expect_msg(&res[i], needle);
        }
        ck_assert_msg(strstr(res[0].msg, needle) || strstr(res[1].msg, needle),
                      "neither rank names the cause: %s | %s", res[0].msg, res[1].msg);
        return;
    }
    expect_msg(&res[1], needle);
    expect_msg(&res[0], "rank 1 at 127.0.0.1:");
    if (mode == 0)
        expect_msg(&res[0], "gave up: ");
    expect_msg(&res[0], needle);
}
END_TEST

static Suite *tcp_suite(void)
{
    Suite *s = suite_create("tcp");
    TCase *tc = tcase_create("collectives");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, test_collectives, 0, (int)(sizeof sizes / sizeof sizes[0]));
    tcase_add_loop_test(tc, test_collectives_small_chunks, 0,
                        (int)(sizeof sizes / sizeof sizes[0]));
    tcase_add_test(tc, test_single_without_env);
    tcase_add_test(tc, test_chunk_size_from_rank0);
    tcase_add_test(tc, test_chunks_grow_for_huge_counts);
    suite_add_tcase(s, tc);

    tc = tcase_create("failures");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_peer_dies_mid_collective);
    tcase_add_test(tc, test_peer_stuck_times_out);
    tcase_add_test(tc, test_stall_in_another_comm);
    tcase_add_test(tc, test_master_never_comes);
    tcase_add_test(tc, test_rank_never_comes);
    tcase_add_loop_test(tc, test_garbage_and_intruders_refused, 0, 3);
    tcase_add_test(tc, test_wrong_secret_cannot_join);
    tcase_add_test(tc, test_squatted_master_port_detected);
    tcase_add_loop_test(tc, test_secret_required, 0, 3);
    tcase_add_test(tc, test_garbage_to_peer_port);
    tcase_add_test(tc, test_rank_gone_during_mesh);
    tcase_add_test(tc, test_garbage_from_master);
    tcase_add_test(tc, test_world_size_mismatch);
    tcase_add_test(tc, test_requested_world_mismatch);
    tcase_add_test(tc, test_device_memory_refused);
    tcase_add_loop_test(tc, test_mismatched_collectives, 0, 3);
    suite_add_tcase(s, tc);

    tc = tcase_create("flood");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_flood_cannot_stop_the_job, 0, FLOOD_RUNS);
    tcase_add_loop_test(tc, test_master_fd_checked, 0, 2);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* the fake peers write to sockets that may be gone */
    SRunner *sr = srunner_create(tcp_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
