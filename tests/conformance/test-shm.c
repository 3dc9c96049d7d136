/* SPDX-License-Identifier: MIT */
/*
 * test-shm.c — drives libtp-shm.so through its vtable (no libtp), with
 * ranks as processes forked here, and libtp-loopback.so as the reference:
 *
 *   - results are bitwise equal to loopback's (same kernels, same rank
 *     order) for all_reduce and reduce_scatter, over dtypes, ops, sizes
 *     on the one-shot path, one pipeline piece and many;
 *   - a rank killed with SIGKILL gives the others TP_ERR_PEER within
 *     seconds (TP_TIMEOUT_S is 60 s), a stalled rank TP_ERR_TIMEOUT;
 *   - segments left by a job whose ranks were all killed are removed by
 *     the next job, while a live job's segment and files that are not tp
 *     segments stay;
 *   - TP_JOB_ID missing is refused naming the variable;
 *   - a peer that scribbles over the shared header (bad sizes, kinds,
 *     statuses, unterminated messages) makes its peers fail, not crash;
 *   - the one-shot path (small sizes): results bitwise equal to loopback
 *     just below, at and above the thresholds for every collective, and
 *     thousands of back-to-back calls with alternating sizes and a rank
 *     that sleeps now and then finish without a timeout;
 *   - nonblocking collectives: requests on two communicators waited in
 *     opposite orders, a sleeping rank whose shares its peers do, more in
 *     flight than records and than the arena holds, ops larger than the
 *     arena (in pieces), at 2, 3, 4, 7 ranks: bitwise equal to the serial
 *     rank-order sums; disagreeing counts fail on every rank;
 *   - symmetric memory (mem_alloc): collectives on windows of every rank
 *     run straight on them and are bitwise equal to loopback's, in place
 *     too, at 1-4 and 7 ranks and sizes 1, 13, 17, 70001; a rank without
 *     windows makes the group stage (still equal); sizes that disagree,
 *     /dev/shm too small and a window freed on one rank fail on every
 *     rank with the reason, and no window name is left in /dev/shm; a
 *     window object left by a job killed mid-allocation is removed by the
 *     next job;
 *   - comm_create (shm as an intra-node backend) over a bootstrap
 *     communicator works, splits, and refuses a group across nodes with a
 *     message naming them, on every rank.
 *
 *   test-shm LIBTP-SHM.so LIBTP-LOOPBACK.so
 */
#include <check.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <tp/tp-plugin-util.h>
#include <tp/tp-plugin.h>

#include "shm.h"

#define MAXR 8

static const tp_comm_ops *shm_ops, *lb_ops;
static _Thread_local char last_err[1024];

static tp_status h_set_error(tp_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_err, sizeof last_err, fmt, ap);
    va_end(ap);
    return st;
}

static void h_debug(const char *topic, const char *fmt, ...)
{
    (void)topic;
    (void)fmt;
}

static tp_host host = {sizeof(tp_host), h_set_error, h_debug, 60.0, NULL};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* What each rank process reports, in memory shared with the test. */
typedef struct report {
    int st;          /* status of the rank function's collective */
    int init_st;     /* init/world */
    double secs;     /* how long the collective took */
    uint64_t direct; /* collectives run straight on symmetric windows */
    char msg[1100];
} report;

typedef struct shared_out {
    report rep[MAXR];
    unsigned char data[MAXR][1 << 21]; /* each rank's result bytes */
} shared_out;

typedef tp_status (*rank_fn)(void *comm, int rank, int size, void *arg, unsigned char *out);

static char job_id[64];

static void new_job_id(const char *what)
{
    static int k;
    snprintf(job_id, sizeof job_id, "test-%s-%d-%d", what, (int)getpid(), k++);
}

/* Start n rank processes of one shm job; wait for them at most `bound` s
 * (then kill them). Returns how many exited normally. */
static pid_t pids[MAXR];

static void start_ranks(int n, rank_fn fn, void *arg, shared_out *out, double timeout_s)
{
    for (int r = 0; r < n; r++) {
        pid_t p = fork();
        ck_assert_int_ge(p, 0);
        if (p == 0) {
            char buf[16];
            snprintf(buf, sizeof buf, "%d", r);
            setenv("TP_RANK", buf, 1);
            snprintf(buf, sizeof buf, "%d", n);
            setenv("TP_WORLD_SIZE", buf, 1);
            setenv("TP_JOB_ID", job_id, 1);
            host.timeout_s = timeout_s;
            report *rep = &out->rep[r];
            void *eng = NULL, *comm = NULL;
            int rank = -1, size = 0;
            tp_engine_args ea = {sizeof ea, n, NULL, NULL};
            tp_engine_info info = {sizeof info, 0, 0, 0};
            tp_rank_env env = {.struct_size = sizeof env, .device_index = -1};
            rep->init_st = shm_ops->init(&host, &ea, &eng, &info);
            if (!rep->init_st)
                rep->init_st = shm_ops->world(eng, 0, &env, &comm, &rank, &size);
            if (rep->init_st) {
                snprintf(rep->msg, sizeof rep->msg, "%s", last_err);
                _exit(1);
            }
            double t0 = now_s();
            rep->st = fn(comm, rank, size, arg, out->data[r]);
            rep->secs = now_s() - t0;
            rep->direct = ((sh_comm *)comm)->direct_ops;
            snprintf(rep->msg, sizeof rep->msg, "%s", rep->st ? last_err : "");
            shm_ops->comm_free(comm);
            shm_ops->finalize(eng);
            _exit(0);
        }
        pids[r] = p;
    }
}

static void wait_ranks(int n, double bound)
{
    double until = now_s() + bound;
    for (int r = 0; r < n; r++) {
        int status;
        while (waitpid(pids[r], &status, WNOHANG) == 0) {
            if (now_s() > until) {
                kill(pids[r], SIGKILL);
                waitpid(pids[r], &status, 0);
                ck_abort_msg("rank %d did not finish within %.0f s", r, bound);
            }
            usleep(2000);
        }
    }
}

static shared_out *new_out(void)
{
    void *p =
        mmap(NULL, sizeof(shared_out), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ck_assert_ptr_ne(p, MAP_FAILED);
    return p;
}

/* ------------------------------------------------------ bitwise equality */

typedef struct case_arg {
    int kind; /* 0 all_reduce, 1 reduce_scatter, 2 all_gather, 3 broadcast from the last rank */
    tp_dtype dt;
    tp_redop op;
    size_t count; /* all_reduce, broadcast: elements; v-variants: per rank (uneven: the total) */
    bool uneven;  /* v-variants: count is the total, spread with remainders */
} case_arg;

/* A v-variant's counts for case a; returns the total. */
static size_t case_counts(const case_arg *a, int size, size_t *counts)
{
    size_t total = 0;
    for (int r = 0; r < size; r++) {
        counts[r] =
            a->uneven ? a->count / (size_t)size + ((size_t)r < a->count % (size_t)size) : a->count;
        total += counts[r];
    }
    return total;
}

/* Bytes of rank's result for case a. */
static size_t case_bytes(const case_arg *a, int rank, int size)
{
    size_t counts[MAXR], total = case_counts(a, size, counts);
    size_t n = a->kind == 1 ? counts[rank] : a->kind == 2 ? total : a->count;
    return n * tp_util_dtype_size(a->dt);
}

/* Rank r's input element i: a value whose sums round differently in
 * different orders (so a changed order shows). */
static void fill(void *buf, tp_dtype dt, size_t n, int r)
{
    uint32_t s = 0x9e3779b9u * (uint32_t)(r + 1);
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        float v = ((float)(s >> 8) / 16777216.0f - 0.5f) * (float)(1 + (i % 7) * 1000);
        if (dt == TP_F32)
            ((float *)buf)[i] = v;
        else if (dt == TP_BF16)
            ((uint16_t *)buf)[i] = tp_util_f32_to_bf16(v);
        else if (dt == TP_F16)
            ((uint16_t *)buf)[i] = tp_util_f32_to_f16(v / 64.0f);
        else
            ((int32_t *)buf)[i] = (int32_t)(s ^ (uint32_t)i);
    }
}

static tp_status run_case(const tp_comm_ops *ops, void *comm, int rank, int size, const case_arg *a,
                          unsigned char *out)
{
    size_t es = tp_util_dtype_size(a->dt), counts[MAXR], total = case_counts(a, size, counts);
    if (a->kind == 0 || a->kind == 3)
        total = a->count;
    void *send = malloc(total * es + 1);
    fill(send, a->dt, a->kind == 2 ? counts[rank] : total, rank);
    tp_status st;
    if (a->kind == 0) {
        st = ops->all_reduce(comm, send, out, a->count, a->dt, a->op);
    } else if (a->kind == 1) {
        st = ops->reduce_scatter(comm, send, out, counts, a->dt, a->op);
    } else if (a->kind == 2) {
        st = ops->all_gather(comm, send, out, counts, a->dt);
    } else {
        memcpy(out, send, total * es);
        st = ops->broadcast(comm, out, a->count, a->dt, size - 1);
    }
    free(send);
    return st;
}

static tp_status shm_case(void *comm, int rank, int size, void *arg, unsigned char *out)
{
    return run_case(shm_ops, comm, rank, size, arg, out);
}

typedef struct lb_thread {
    void *engine;
    int index;
    const case_arg *a;
    unsigned char *out;
    tp_status st;
} lb_thread;

static void *lb_main(void *p)
{
    lb_thread *t = p;
    tp_rank_env env = {.struct_size = sizeof env, .device_index = -1};
    void *comm;
    int rank, size;
    t->st = lb_ops->world(t->engine, t->index, &env, &comm, &rank, &size);
    if (!t->st)
        t->st = run_case(lb_ops, comm, rank, size, t->a, t->out);
    lb_ops->comm_free(comm);
    return NULL;
}

/* The same case on loopback threads; out[r] gets rank r's result. */
static void loopback_case(int n, const case_arg *a, unsigned char (*out)[1 << 21])
{
    tp_engine_args ea = {sizeof ea, n, NULL, NULL};
    tp_engine_info info = {sizeof info, 0, 0, 0};
    void *engine;
    ck_assert_int_eq(lb_ops->init(&host, &ea, &engine, &info), TP_OK);
    pthread_t th[MAXR];
    lb_thread t[MAXR];
    for (int i = 0; i < n; i++) {
        t[i] = (lb_thread){engine, i, a, out[i], TP_OK};
        pthread_create(&th[i], NULL, lb_main, &t[i]);
    }
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(t[i].st, TP_OK);
    }
    lb_ops->finalize(engine);
}

static void check_equal(int n, const char *chunk)
{
    static const size_t counts[] = {1, 100, 250, 3000, 70001, 300000};
    static const tp_dtype dts[] = {TP_F32, TP_BF16, TP_F16, TP_I32};
    shared_out *so = new_out(), *ref = new_out();
    if (chunk)
        setenv("TP_SHM_CHUNK_BYTES", chunk, 1);
    for (int kind = 0; kind < 2; kind++)
        for (size_t ci = 0; ci < sizeof counts / sizeof *counts; ci++)
            for (size_t di = 0; di < sizeof dts / sizeof *dts; di++)
                for (int op = 0; op < 2; op++) {
                    case_arg a = {kind, dts[di], (tp_redop)op,
                                  kind ? counts[ci] / 4 + 1 : counts[ci], false};
                    size_t bytes = a.count * tp_util_dtype_size(a.dt);
                    memset(so, 0xa5, sizeof *so);
                    memset(ref->data, 0x5a, sizeof ref->data);
                    new_job_id("eq");
                    start_ranks(n, shm_case, &a, so, 60.0);
                    wait_ranks(n, 120.0);
                    loopback_case(n, &a, ref->data);
                    for (int r = 0; r < n; r++) {
                        ck_assert_msg(so->rep[r].init_st == 0 && so->rep[r].st == 0, "rank %d: %s",
                                      r, so->rep[r].msg);
                        ck_assert_msg(memcmp(so->data[r], ref->data[r], bytes) == 0,
                                      "%s %s op %d count %zu, %d ranks (chunk %s): rank %d's "
                                      "result differs from loopback's",
                                      kind ? "reduce_scatter" : "all_reduce",
                                      tp_util_dtype_name(a.dt), op, a.count, n,
                                      chunk ? chunk : "default", r);
                    }
                }
    unsetenv("TP_SHM_CHUNK_BYTES");
    munmap(so, sizeof *so);
    munmap(ref, sizeof *ref);
}

START_TEST(bitwise_equal_to_loopback)
{
    check_equal(3, NULL);
    check_equal(4, "4096");
    check_equal(2, "65536");
}
END_TEST

/* Sizes just below, at and above both default one-shot thresholds (1 and
 * 4 KiB), every collective, uneven v-variant counts: bitwise equal to
 * loopback (whose own tests check the serial rank-order sum). */
START_TEST(oneshot_edges_equal_loopback)
{
    static const size_t edges[] = {255, 256, 257, 1023, 1024, 1025};
    static const int ranks[] = {2, 3, 7};
    shared_out *so = new_out(), *ref = new_out();
    int n = ranks[_i];
    for (int kind = 0; kind < 4; kind++)
        for (size_t e = 0; e < sizeof edges / sizeof *edges; e++) {
            case_arg a = {kind, TP_F32, TP_SUM, edges[e], true};
            memset(so, 0xa5, sizeof *so);
            memset(ref->data, 0x5a, sizeof ref->data);
            new_job_id("edge");
            start_ranks(n, shm_case, &a, so, 60.0);
            wait_ranks(n, 120.0);
            loopback_case(n, &a, ref->data);
            for (int r = 0; r < n; r++) {
                ck_assert_msg(so->rep[r].init_st == 0 && so->rep[r].st == 0, "rank %d: %s", r,
                              so->rep[r].msg);
                ck_assert_msg(memcmp(so->data[r], ref->data[r], case_bytes(&a, r, n)) == 0,
                              "kind %d count %zu, %d ranks: rank %d's result differs from "
                              "loopback's",
                              kind, a.count, n, r);
            }
        }
    munmap(so, sizeof *so);
    munmap(ref, sizeof *ref);
}
END_TEST

/* Many back-to-back calls alternating small (one-shot) and large sizes,
 * all_reduce and broadcast, while the last rank sleeps 20 ms every 500
 * calls (7 ranks outnumber the CPUs): every result exact, no timeout
 * (2 s), no hang. */
static tp_status busy_rank(void *comm, int rank, int size, void *arg, unsigned char *out)
{
    (void)arg, (void)out;
    enum {
        BIG = 3000
    };
    float *buf = malloc(BIG * sizeof(float));
    tp_status st = TP_OK;
    for (int it = 0; it < 3000 && st == TP_OK; it++) {
        if (rank == size - 1 && it % 500 == 499)
            usleep(20000);
        size_t n = it % 5 == 4 ? BIG : (size_t)(it % 3 + 1);
        int root = it % size;
        bool bcast = it % 7 == 3;
        for (size_t i = 0; i < n; i++)
            buf[i] = (float)(rank + (int)i + it % 100);
        st = bcast ? shm_ops->broadcast(comm, buf, n, TP_F32, root)
                   : shm_ops->all_reduce(comm, buf, buf, n, TP_F32, TP_SUM);
        for (size_t i = 0; st == TP_OK && i < n; i++) {
            float want = bcast ? (float)(root + (int)i + it % 100)
                               : (float)(size * ((int)i + it % 100) + size * (size - 1) / 2);
            if (buf[i] != want) {
                host.set_error(TP_ERR_INTERNAL, "call %d (%s, n %zu) [%zu] = %g, want %g", it,
                               bcast ? "broadcast" : "all_reduce", n, i, buf[i], want);
                st = TP_ERR_INTERNAL;
            }
        }
    }
    free(buf);
    return st;
}

START_TEST(oneshot_stress_descheduled)
{
    static const int ranks[] = {2, 4, 7};
    shared_out *so = new_out();
    int n = ranks[_i];
    new_job_id("busy");
    start_ranks(n, busy_rank, NULL, so, 2.0);
    wait_ranks(n, 120.0);
    for (int r = 0; r < n; r++)
        ck_assert_msg(so->rep[r].init_st == 0 && so->rep[r].st == 0, "%d ranks: rank %d: %s", n, r,
                      so->rep[r].msg);
    munmap(so, sizeof *so);
}
END_TEST

/* ---------------------------------------------------------- nonblocking */

/* Element i of the serial rank-order sum of fill()'s inputs of world
 * ranks order[0], order[1], ... (f32: ((x0 + x1) + x2) + ...). */
static float nb_ref(const float *const *in, const int *order, int n, size_t i)
{
    float acc = in[order[0]][i];
    for (int j = 1; j < n; j++)
        acc += in[order[j]][i];
    return acc;
}

static tp_status nb_fail(const char *what, size_t count, size_t i, float got, float want)
{
    return host.set_error(TP_ERR_INTERNAL, "%s count %zu: [%zu] = %.9g, serial sum %.9g", what,
                          count, i, got, want);
}

/* Count spread over `size` ranks with remainders, rotated by `shift`. */
static void nb_counts(size_t count, int size, int shift, size_t *counts)
{
    for (int r = 0; r < size; r++)
        counts[r] = count / (size_t)size + ((size_t)((r + shift) % size) < count % (size_t)size);
}

/* Four requests on two communicators (the world and its reverse), waited
 * in opposite orders on odd and even ranks, with rank 0 asleep first so
 * that its peers do its shares; then 40 small ones in flight at once on
 * the world (more than the records, and with a small arena more than it
 * holds: starts wait for space, progressing what the peers need). Results
 * bitwise equal to the serial rank-order sums. */
static tp_status nb_rank(void *comm, int rank, int size, void *arg, unsigned char *out)
{
    (void)arg, (void)out;
    static const size_t sizes[] = {1, 13, 17, 100003};
    void *rev = NULL;
    int rrank, rsize;
    tp_status st = shm_ops->split(comm, 0, size - 1 - rank, &rev, &rrank, &rsize);
    int fwd[MAXR], bwd[MAXR];
    for (int r = 0; r < size; r++)
        fwd[r] = r, bwd[r] = size - 1 - r;
    for (size_t si = 0; st == TP_OK && si < sizeof sizes / sizeof *sizes; si++) {
        size_t n = sizes[si], c1[MAXR], c2[MAXR], pre1 = 0, pre2 = 0;
        float *in[MAXR], *res[4];
        for (int r = 0; r < size; r++) {
            in[r] = malloc(n * sizeof(float));
            fill(in[r], TP_F32, n, r);
        }
        for (int k = 0; k < 4; k++)
            res[k] = calloc(n + 1, sizeof(float));
        memcpy(res[3], in[rank], n * sizeof(float)); /* in place */
        nb_counts(n, size, 0, c1);                   /* ireduce_scatter on rev, by its ranks */
        nb_counts(n, size, 1, c2);                   /* iall_gather on the world */
        for (int r = 0; r < rrank; r++)
            pre1 += c1[r];
        for (int r = 0; r < rank; r++)
            pre2 += c2[r];
        void *q[4] = {0};
        st = shm_ops->iall_reduce(comm, in[rank], res[0], n, TP_F32, TP_SUM, &q[0]);
        if (!st)
            st = shm_ops->ireduce_scatter(rev, in[rank], res[1], c1, TP_F32, TP_SUM, &q[1]);
        if (!st)
            st = shm_ops->iall_gather(comm, in[rank] + pre2, res[2], c2, TP_F32, &q[2]);
        if (!st)
            st = shm_ops->iall_reduce(rev, res[3], res[3], n, TP_F32, TP_SUM, &q[3]);
        if (rank == 0)
            usleep(100000);
        for (int k = 0; k < 4; k++) {
            int j = rank % 2 ? 3 - k : k;
            if (!q[j])
                continue;
            tp_status w = shm_ops->req_wait(j % 2 ? rev : comm, q[j]);
            shm_ops->req_free(j % 2 ? rev : comm, q[j]);
            st = st ? st : w;
        }
        for (size_t i = 0; st == TP_OK && i < n; i++) {
            float a = nb_ref((const float *const *)in, fwd, size, i);
            float b = nb_ref((const float *const *)in, bwd, size, i);
            if (memcmp(&res[0][i], &a, 4))
                st = nb_fail("iall_reduce", n, i, res[0][i], a);
            else if (memcmp(&res[3][i], &b, 4))
                st = nb_fail("in-place iall_reduce (reverse)", n, i, res[3][i], b);
            else {
                int owner = 0; /* rank r gathered elements [pre_r, pre_r + c2[r]) of in[r] */
                for (size_t o = c2[0]; owner < size - 1 && o <= i; o += c2[++owner])
                    ;
                if (memcmp(&res[2][i], &in[owner][i], 4))
                    st = nb_fail("iall_gather", n, i, res[2][i], in[owner][i]);
            }
        }
        for (size_t i = 0; st == TP_OK && i < c1[rrank]; i++) {
            float b = nb_ref((const float *const *)in, bwd, size, pre1 + i);
            if (memcmp(&res[1][i], &b, 4))
                st = nb_fail("ireduce_scatter (reverse)", n, i, res[1][i], b);
        }
        for (int r = 0; r < size; r++)
            free(in[r]);
        for (int k = 0; k < 4; k++)
            free(res[k]);
    }
    enum {
        MANY = 40,
        M = 17
    };
    float many[MANY][M], got[MANY][M];
    void *mq[MANY] = {0};
    for (int k = 0; st == TP_OK && k < MANY; k++) {
        for (int i = 0; i < M; i++)
            many[k][i] = (float)(rank * 1000 + k * 10 + i);
        if (rank == size - 1 && k == MANY / 2)
            usleep(50000);
        st = shm_ops->iall_reduce(comm, many[k], got[k], M, TP_F32, TP_SUM, &mq[k]);
    }
    for (int k = 0; k < MANY; k++) {
        int j = rank % 2 ? MANY - 1 - k : k;
        if (!mq[j])
            continue;
        tp_status w = shm_ops->req_wait(comm, mq[j]);
        shm_ops->req_free(comm, mq[j]);
        st = st ? st : w;
    }
    for (int k = 0; st == TP_OK && k < MANY; k++)
        for (int i = 0; st == TP_OK && i < M; i++) {
            float want = (float)(size * (k * 10 + i) + 1000 * size * (size - 1) / 2);
            if (got[k][i] != want)
                st = nb_fail("batch iall_reduce", M, (size_t)i, got[k][i], want);
        }
    if (rev)
        shm_ops->comm_free(rev);
    return st;
}

/* Ranks pass different counts: every rank's request fails naming the op.
 * *arg 0: one request. 1: then a valid second one, waited for first: the
 * counts put its input at different arena places on different ranks, so
 * it must fail too (not reduce misplaced inputs and say TP_OK). */
static tp_status nb_disagree_rank(void *comm, int rank, int size, void *arg, unsigned char *out)
{
    (void)size;
    int mode = *(const int *)arg;
    float x[40] = {0}, y[17] = {0}, z[17];
    void *q = NULL, *q1 = NULL;
    size_t n = rank == 1 ? (mode ? 40 : 8) : 7;
    tp_status st = shm_ops->iall_reduce(comm, x, out, n, TP_F32, TP_SUM, &q);
    if (st == TP_OK && mode)
        st = shm_ops->iall_reduce(comm, y, z, 17, TP_F32, TP_SUM, &q1);
    if (q1) {
        st = shm_ops->req_wait(comm, q1);
        shm_ops->req_free(comm, q1);
        if (st == TP_OK)
            st = host.set_error(TP_ERR_INTERNAL, "the request after the disagreeing one "
                                                 "completed with TP_OK");
    }
    if (q) {
        tp_status w = shm_ops->req_wait(comm, q);
        shm_ops->req_free(comm, q);
        st = st ? st : w;
    }
    return st;
}

/* Rank 1 skips a request its peers started and fails its next start (a
 * NULL buffer), while the peers' next start waits for arena room that the
 * first request holds: they must return its error at once, not time out. */
static tp_status nb_start_fails_rank(void *comm, int rank, int size, void *arg, unsigned char *out)
{
    (void)size, (void)arg, (void)out;
    static float big[1000], res[1000];
    float y[17] = {0}, z[17];
    void *q = NULL, *q1 = NULL;
    tp_status st = TP_OK;
    if (rank == 1) {
        usleep(100000);
        return shm_ops->iall_reduce(comm, y, NULL, 17, TP_F32, TP_SUM, &q1);
    }
    st = shm_ops->iall_reduce(comm, big, res, 1000, TP_F32, TP_SUM, &q);
    if (st == TP_OK)
        st = shm_ops->iall_reduce(comm, y, z, 17, TP_F32, TP_SUM, &q1);
    void *qs[2] = {q1, q};
    for (int k = 0; k < 2; k++)
        if (qs[k]) {
            tp_status w = shm_ops->req_wait(comm, qs[k]);
            shm_ops->req_free(comm, qs[k]);
            st = st ? st : w;
        }
    return st;
}

START_TEST(nonblocking_any_order)
{
    static const int ranks[] = {2, 3, 4, 7};
    /* default arena; 8 KiB: starts wait for space, 100003 floats go in pieces */
    static const char *const arena[] = {NULL, "8192"};
    shared_out *so = new_out();
    for (int ai = 0; ai < 2; ai++) {
        int n = ranks[_i];
        if (arena[ai])
            setenv("TP_SHM_NB_BYTES", arena[ai], 1);
        new_job_id("nb");
        start_ranks(n, nb_rank, NULL, so, 30.0);
        wait_ranks(n, 120.0);
        unsetenv("TP_SHM_NB_BYTES");
        for (int r = 0; r < n; r++)
            ck_assert_msg(so->rep[r].init_st == 0 && so->rep[r].st == 0,
                          "%d ranks, arena %s: rank %d: %s", n, arena[ai] ? arena[ai] : "default",
                          r, so->rep[r].msg);
    }
    for (int mode = 0; mode < 2; mode++) {
        new_job_id("nbbad");
        start_ranks(3, nb_disagree_rank, &mode, so, 30.0);
        wait_ranks(3, 60.0);
        for (int r = 0; r < 3; r++)
            ck_assert_msg(so->rep[r].st == TP_ERR_INVALID_ARG &&
                              strstr(so->rep[r].msg, "all_reduce (nonblocking) #1") &&
                              strstr(so->rep[r].msg, "count"),
                          "mode %d: rank %d: status %d: %s", mode, r, so->rep[r].st,
                          so->rep[r].msg);
    }
    /* 8 KiB: the 1000 floats go in 3 pieces, the third waits for room */
    setenv("TP_SHM_NB_BYTES", "8192", 1);
    new_job_id("nbstart");
    start_ranks(3, nb_start_fails_rank, NULL, so, 30.0);
    wait_ranks(3, 60.0);
    unsetenv("TP_SHM_NB_BYTES");
    for (int r = 0; r < 3; r++)
        ck_assert_msg(so->rep[r].st == TP_ERR_INVALID_ARG && so->rep[r].secs < 10.0 &&
                          strstr(so->rep[r].msg, "rank 1: recv buffer is NULL with count 17"),
                      "rank %d: status %d after %.1f s: %s", r, so->rep[r].st, so->rep[r].secs,
                      so->rep[r].msg);
    munmap(so, sizeof *so);
}
END_TEST

/* ------------------------------------------------------------- failures */

typedef struct fault_arg {
    int victim;
    int how;      /* 0: SIGKILL itself, 1: stall */
    size_t count; /* floats per all_reduce (0: 1000) */
} fault_arg;

/* 1000 floats (4000 B) and 2: the one-shot path (up to 4 KiB by default);
 * 5000: the barrier path. */
static const size_t fault_counts[] = {0, 2, 5000};

static tp_status fault_rank(void *comm, int rank, int size, void *arg, unsigned char *out)
{
    (void)size;
    const fault_arg *f = arg;
    float x[5000] = {0};
    size_t n = f->count ? f->count : 1000;
    tp_status st = shm_ops->all_reduce(comm, x, out, n, TP_F32, TP_SUM);
    if (st)
        return st;
    if (rank == f->victim) {
        if (f->how == 0)
            raise(SIGKILL);
        sleep(30);
        return TP_OK;
    }
    return shm_ops->all_reduce(comm, x, out, n, TP_F32, TP_SUM);
}

START_TEST(killed_peer_gives_peer_error)
{
    shared_out *so = new_out();
    fault_arg f = {2, 0, fault_counts[_i]};
    new_job_id("kill");
    start_ranks(3, fault_rank, &f, so, 60.0);
    wait_ranks(3, 30.0);
    for (int r = 0; r < 2; r++) {
        ck_assert_msg(so->rep[r].st == TP_ERR_PEER, "rank %d: status %d (%s), expected PEER", r,
                      so->rep[r].st, so->rep[r].msg);
        ck_assert_msg(strstr(so->rep[r].msg, "rank 2") && strstr(so->rep[r].msg, "died"),
                      "rank %d's message: %s", r, so->rep[r].msg);
        ck_assert_msg(so->rep[r].secs < 5.0, "rank %d noticed the death after %.1f s", r,
                      so->rep[r].secs);
    }
    munmap(so, sizeof *so);
}
END_TEST

START_TEST(stalled_peer_gives_timeout)
{
    shared_out *so = new_out();
    fault_arg f = {1, 1, fault_counts[_i]};
    new_job_id("stall");
    start_ranks(3, fault_rank, &f, so, 1.0);
    double t0 = now_s();
    int status;
    waitpid(pids[0], &status, 0);
    waitpid(pids[2], &status, 0);
    double took = now_s() - t0;
    kill(pids[1], SIGKILL);
    waitpid(pids[1], &status, 0);
    for (int r = 0; r < 3; r += 2) {
        ck_assert_msg(so->rep[r].st == TP_ERR_TIMEOUT, "rank %d: status %d (%s)", r, so->rep[r].st,
                      so->rep[r].msg);
        ck_assert_msg(strstr(so->rep[r].msg, "rank 1"), "rank %d's message: %s", r, so->rep[r].msg);
    }
    ck_assert_msg(took < 10.0, "ranks took %.1f s to time out after 1 s", took);
    munmap(so, sizeof *so);
}
END_TEST

static tp_status noop_rank(void *comm, int rank, int size, void *arg, unsigned char *out)
{
    (void)rank, (void)size, (void)arg, (void)out;
    return shm_ops->barrier(comm);
}

static bool shm_exists(const char *job)
{
    char path[256];
    snprintf(path, sizeof path, "/dev/shm/" SH_PREFIX "%u-%s", (unsigned)getuid(), job);
    return access(path, F_OK) == 0;
}

/* The job's segment exists and its creator finished setting it up (a
 * creator killed before that leaves a file nobody can prove is tp's). */
static bool shm_ready(const char *job)
{
    char path[256];
    snprintf(path, sizeof path, "/dev/shm/" SH_PREFIX "%u-%s", (unsigned)getuid(), job);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return false;
    struct stat st;
    bool ready = false;
    if (fstat(fd, &st) == 0 && (size_t)st.st_size >= sizeof(sh_hdr)) {
        sh_hdr *h = mmap(NULL, sizeof(sh_hdr), PROT_READ, MAP_SHARED, fd, 0);
        if (h != MAP_FAILED) {
            ready = atomic_load(&h->magic) == SH_MAGIC;
            munmap(h, sizeof(sh_hdr));
        }
    }
    close(fd);
    return ready;
}

START_TEST(stale_segments_are_removed)
{
    shared_out *so = new_out();
    /* A 2-rank job whose rank 1 never comes: rank 0 made the segment. */
    new_job_id("stale");
    char stale[64];
    snprintf(stale, sizeof stale, "%s", job_id);
    int status;
    pid_t p = fork();
    if (p == 0) {
        setenv("TP_RANK", "0", 1);
        setenv("TP_WORLD_SIZE", "2", 1);
        setenv("TP_JOB_ID", stale, 1);
        void *eng, *comm;
        int rank, size;
        tp_engine_args ea = {sizeof ea, 2, NULL, NULL};
        tp_engine_info info = {sizeof info, 0, 0, 0};
        tp_rank_env env = {.struct_size = sizeof env, .device_index = -1};
        if (shm_ops->init(&host, &ea, &eng, &info) == TP_OK)
            shm_ops->world(eng, 0, &env, &comm, &rank, &size);
        _exit(3);
    }
    double until = now_s() + 20;
    while (!shm_ready(stale) && now_s() < until)
        usleep(2000);
    ck_assert_msg(shm_exists(stale), "rank 0 of the stale job made no segment");
    /* A live job's segment (rank 0 waits for its rank 1) must stay. */
    new_job_id("live");
    char live[64];
    snprintf(live, sizeof live, "%s", job_id);
    pid_t q = fork();
    if (q == 0) {
        setenv("TP_RANK", "0", 1);
        setenv("TP_WORLD_SIZE", "2", 1);
        setenv("TP_JOB_ID", live, 1);
        void *eng, *comm;
        int rank, size;
        tp_engine_args ea = {sizeof ea, 2, NULL, NULL};
        tp_engine_info info = {sizeof info, 0, 0, 0};
        tp_rank_env env = {.struct_size = sizeof env, .device_index = -1};
        if (shm_ops->init(&host, &ea, &eng, &info) == TP_OK)
            shm_ops->world(eng, 0, &env, &comm, &rank, &size);
        _exit(3);
    }
    until = now_s() + 20;
    while (!shm_ready(live) && now_s() < until)
        usleep(2000);
    kill(p, SIGKILL);
    waitpid(p, &status, 0);
    ck_assert(shm_exists(stale));
    /* A file with the prefix that is not a tp segment must stay too. */
    char decoy[256];
    snprintf(decoy, sizeof decoy, "/dev/shm/" SH_PREFIX "%u-decoy-%d", (unsigned)getuid(),
             (int)getpid());
    int fd = open(decoy, O_CREAT | O_WRONLY | O_TRUNC, 0600);
    ck_assert_int_ge(fd, 0);
    char junk[8192];
    memset(junk, 0x11, sizeof junk);
    ck_assert_int_eq(write(fd, junk, sizeof junk), (ssize_t)sizeof junk);
    close(fd);
    /* The next job removes the dead job's segment. */
    new_job_id("next");
    start_ranks(2, noop_rank, NULL, so, 60.0);
    wait_ranks(2, 30.0);
    ck_assert_msg(so->rep[0].st == 0 && so->rep[1].st == 0, "next job: %s", so->rep[0].msg);
    ck_assert_msg(!shm_exists(stale), "the dead job's segment was not removed");
    ck_assert_msg(shm_exists(live), "the live job's segment was removed");
    ck_assert_msg(access(decoy, F_OK) == 0, "a file that is no tp segment was removed");
    unlink(decoy);
    kill(q, SIGKILL);
    waitpid(q, &status, 0);
    /* the live job is dead now: one more job cleans it */
    new_job_id("after");
    start_ranks(2, noop_rank, NULL, so, 60.0);
    wait_ranks(2, 30.0);
    ck_assert_msg(!shm_exists(live), "the killed live job's segment was not removed");
    munmap(so, sizeof *so);
}
END_TEST

START_TEST(job_id_required)
{
    unsetenv("TP_JOB_ID");
    setenv("TP_RANK", "0", 1);
    setenv("TP_WORLD_SIZE", "2", 1);
    void *eng = NULL;
    tp_engine_args ea = {sizeof ea, 2, NULL, NULL};
    tp_engine_info info = {sizeof info, 0, 0, 0};
    ck_assert_int_eq(shm_ops->init(&host, &ea, &eng, &info), TP_ERR_INVALID_ARG);
    ck_assert_msg(strstr(last_err, "TP_JOB_ID"), "message: %s", last_err);
    setenv("TP_JOB_ID", "bad/id", 1);
    ck_assert_int_eq(shm_ops->init(&host, &ea, &eng, &info), TP_ERR_INVALID_ARG);
    ck_assert_msg(strstr(last_err, "TP_JOB_ID"), "message: %s", last_err);
    unsetenv("TP_RANK");
    unsetenv("TP_WORLD_SIZE");
}
END_TEST

/* Rank 1 scribbles over the shared header and its slot, then calls the
 * collective; its peers must fail with an error, not crash. */
static tp_status hostile_rank(void *comm, int rank, int size, void *arg, unsigned char *out)
{
    (void)size;
    sh_comm *c = comm;
    if (rank == 1 && arg) { /* garbage in both one-shot slots, published */
        for (int q = 0; q < 2; q++) {
            sc_os_buf *b = &c->h->slots[1].os[q];
            memset(b->data, 0xff, sizeof b->data);
            b->count = ~0ull;
            b->hash = ~0ull;
            b->kind = 12345;
            b->dt = -9;
            b->op = 77;
            b->root = 1 << 30;
            atomic_store(&b->seq, ~0ull);
        }
        usleep(500000);
        return TP_OK;
    }
    if (arg) {
        usleep(200000);
        float y[2] = {1, 2};
        return shm_ops->all_reduce(comm, y, out, 2, TP_F32, TP_SUM);
    }
    if (rank == 1) {
        sh_hdr *h = c->h;
        h->size = 1 << 30;
        h->chunk = 3;
        int q = (int)((c->seq + 1) & 1);
        h->slots[1].pub[q].kind = 12345;
        h->slots[1].pub[q].bad = 99999;
        memset(h->slots[1].pub[q].bad_msg, 'x', sizeof h->slots[1].pub[q].bad_msg);
        h->slots[1].pub[q].count = ~0ull;
        atomic_store(&h->slots[1].kind, -7);
        memset(h->msg, 'y', sizeof h->msg);
        /* arrive at the collective's barrier without publishing properly */
        uint64_t e = c->epoch + 1;
        atomic_store(&h->slots[1].epoch, e);
        sc_bar_arrive(&h->bar, (unsigned)c->size, e, true);
        usleep(500000);
        return TP_OK;
    }
    usleep(200000);
    float x[5000] = {0};
    return shm_ops->all_reduce(comm, x, out, 5000, TP_F32, TP_SUM);
}

START_TEST(hostile_peer_cannot_crash)
{
    shared_out *so = new_out();
    for (int oneshot = 0; oneshot < 2; oneshot++) {
        memset(so, 0, sizeof *so);
        new_job_id("hostile");
        start_ranks(3, hostile_rank, oneshot ? (void *)1 : NULL, so, 2.0);
        wait_ranks(3, 30.0);
        for (int r = 0; r < 3; r += 2)
            ck_assert_msg(so->rep[r].st != TP_OK, "rank %d (%s): expected an error, got OK", r,
                          oneshot ? "one-shot slots" : "header");
    }
    munmap(so, sizeof *so);
}
END_TEST

/* ------------------------------------------------ comm_create (intra) */

/* tp_bootstrap.all_gather through the shm world communicator itself. */
static tp_status boot_gather(void *ctx, const void *mine, void *all, size_t bytes)
{
    size_t n = (bytes + 3) / 4;
    int32_t pad[256] = {0};
    memcpy(pad, mine, bytes);
    void *comm = ctx;
    int size = ((sh_comm *)comm)->size;
    size_t counts[MAXR] = {0};
    int32_t *tmp = calloc((size_t)size * n, 4);
    for (int r = 0; r < size && r < MAXR; r++)
        counts[r] = n;
    tp_status st = shm_ops->all_gather(comm, pad, tmp, counts, TP_I32);
    for (int r = 0; st == TP_OK && r < size; r++)
        memcpy((char *)all + (size_t)r * bytes, tmp + (size_t)r * n, bytes);
    free(tmp);
    return st;
}

/* arg: NULL, every rank on one node; else ranks >= 1 on "node-b". */
static tp_status create_rank(void *comm, int rank, int size, void *arg, unsigned char *out)
{
    tp_bootstrap boot = {sizeof boot, rank,       size, arg && rank >= 1 ? "node-b" : "node-a",
                         comm,        boot_gather};
    tp_rank_env env = {.struct_size = sizeof env, .device_index = -1};
    void *nc = NULL;
    tp_status st = shm_ops->comm_create(&host, &boot, &env, &nc);
    if (st)
        return st;
    /* the new communicator works, and so does a split of it */
    float x[3000], y[3000];
    for (int i = 0; i < 3000; i++)
        x[i] = (float)(rank + 1);
    st = shm_ops->all_reduce(nc, x, y, 3000, TP_F32, TP_SUM);
    void *sub = NULL;
    int sr, ss;
    if (!st)
        st = shm_ops->split(nc, rank % 2, rank, &sub, &sr, &ss);
    if (!st)
        st = shm_ops->all_reduce(sub, x, x, 3000, TP_F32, TP_SUM);
    memcpy(out, y, sizeof y);
    memcpy(out + sizeof y, x, sizeof x);
    shm_ops->comm_free(sub);
    shm_ops->comm_free(nc);
    return st;
}

START_TEST(comm_create_over_a_group)
{
    shared_out *so = new_out();
    new_job_id("create");
    start_ranks(3, create_rank, NULL, so, 30.0);
    wait_ranks(3, 60.0);
    for (int r = 0; r < 3; r++) {
        ck_assert_msg(so->rep[r].st == TP_OK, "rank %d: %s", r, so->rep[r].msg);
        const float *y = (const float *)so->data[r], *x = y + 3000;
        ck_assert_msg(y[0] == 6.0f && y[2999] == 6.0f, "rank %d: all_reduce gave %g", r, y[0]);
        float want = r % 2 ? 2.0f : 4.0f; /* ranks {0, 2} and {1} */
        ck_assert_msg(x[0] == want && x[2999] == want, "rank %d: split all_reduce %g, want %g", r,
                      x[0], want);
    }
    munmap(so, sizeof *so);
}
END_TEST

START_TEST(comm_create_refuses_a_group_across_nodes)
{
    shared_out *so = new_out();
    new_job_id("across");
    start_ranks(3, create_rank, "span", so, 30.0);
    wait_ranks(3, 60.0);
    for (int r = 0; r < 3; r++) {
        ck_assert_msg(so->rep[r].st == TP_ERR_INVALID_ARG, "rank %d: status %d (%s)", r,
                      so->rep[r].st, so->rep[r].msg);
        ck_assert_msg(strstr(so->rep[r].msg, "node-a") && strstr(so->rep[r].msg, "node-b"),
                      "rank %d's message names no nodes: %s", r, so->rep[r].msg);
    }
    munmap(so, sizeof *so);
}
END_TEST

/* ------------------------------------------------------ symmetric memory */

typedef struct sym_arg {
    case_arg c;
    int mode; /* 0: send and recv windows; 1: in place; 2: rank 0 passes malloc'd buffers */
} sym_arg;

/* Every rank allocates two windows of the same size, runs case c on them
 * (or, mode 2, rank 0 on ordinary memory), frees one: the other is left
 * to comm_free. */
static tp_status sym_rank(void *comm, int rank, int size, void *arg, unsigned char *out)
{
    const sym_arg *s = arg;
    const case_arg *a = &s->c;
    size_t es = tp_util_dtype_size(a->dt), counts[MAXR], total = case_counts(a, size, counts);
    if (a->kind == 0 || a->kind == 3)
        total = a->count;
    size_t off = 0, wb = total * es;
    for (int r = 0; r < rank; r++)
        off += counts[r];
    void *sw = NULL, *rw = NULL;
    tp_status st = shm_ops->mem_alloc(comm, wb, &sw);
    if (st == TP_OK)
        st = shm_ops->mem_alloc(comm, wb, &rw);
    if (st != TP_OK)
        return st;
    bool plain = s->mode == 2 && rank == 0;
    char *send = plain ? malloc(wb) : sw, *recv = plain ? malloc(wb) : rw;
    if (s->mode == 1 && a->kind == 1)
        recv = send + off * es;
    else if (s->mode == 1)
        send = a->kind == 2 ? recv + off * es : recv;
    fill(send, a->dt, a->kind == 2 ? counts[rank] : total, rank);
    if (a->kind == 0)
        st = shm_ops->all_reduce(comm, send, recv, a->count, a->dt, a->op);
    else if (a->kind == 1)
        st = shm_ops->reduce_scatter(comm, send, recv, counts, a->dt, a->op);
    else if (a->kind == 2)
        st = shm_ops->all_gather(comm, send, recv, counts, a->dt);
    else {
        if (send != recv)
            memcpy(recv, send, wb);
        st = shm_ops->broadcast(comm, recv, a->count, a->dt, size - 1);
    }
    memcpy(out, recv, case_bytes(a, rank, size));
    if (plain) {
        free(s->mode == 1 && a->kind == 1 ? send : recv);
        free(s->mode == 1 && a->kind != 1 ? recv : send);
    }
    shm_ops->mem_free(comm, sw);
    return st;
}

/* No /dev/shm name of job `job` is left. */
static void no_names_left(const char *job)
{
    DIR *d = opendir("/dev/shm");
    ck_assert_ptr_nonnull(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        ck_assert_msg(!strstr(e->d_name, job), "/dev/shm/%s was left behind", e->d_name);
    closedir(d);
}

START_TEST(symmetric_equal_to_loopback)
{
    static const int ranks[] = {1, 2, 3, 4, 7};
    static const size_t counts[] = {1, 13, 17, 70001};
    static const tp_dtype dts[] = {TP_F32, TP_BF16};
    int n = ranks[_i];
    shared_out *so = new_out(), *ref = new_out();
    setenv("TP_SHM_SMALL_BYTES", "0", 1); /* odd small sizes take the barrier path too */
    for (int mode = 0; mode < 3; mode++)
        for (int kind = 0; kind < 4; kind++)
            for (size_t ci = 0; ci < sizeof counts / sizeof *counts; ci++)
                for (size_t di = 0; di < sizeof dts / sizeof *dts; di++) {
                    sym_arg s = {{kind, dts[di], TP_SUM, counts[ci], true}, mode};
                    if (mode == 1 && kind == 3)
                        continue; /* broadcast is in place anyway */
                    memset(so, 0xa5, sizeof *so);
                    memset(ref->data, 0x5a, sizeof ref->data);
                    new_job_id("sym");
                    start_ranks(n, sym_rank, &s, so, 60.0);
                    wait_ranks(n, 120.0);
                    loopback_case(n, &s.c, ref->data);
                    for (int r = 0; r < n; r++) {
                        ck_assert_msg(so->rep[r].init_st == 0 && so->rep[r].st == 0, "rank %d: %s",
                                      r, so->rep[r].msg);
                        ck_assert_msg(memcmp(so->data[r], ref->data[r], case_bytes(&s.c, r, n)) ==
                                          0,
                                      "mode %d kind %d %s count %zu, %d ranks: rank %d's result "
                                      "differs from loopback's",
                                      mode, kind, tp_util_dtype_name(s.c.dt), s.c.count, n, r);
                        /* the windows were used, unless a rank had none */
                        uint64_t want = n > 1 && mode != 2;
                        ck_assert_msg(so->rep[r].direct == want,
                                      "mode %d kind %d, %d ranks: rank %d ran %llu collectives "
                                      "on the windows, expected %llu",
                                      mode, kind, n, r, (unsigned long long)so->rep[r].direct,
                                      (unsigned long long)want);
                    }
                    no_names_left(job_id);
                }
    unsetenv("TP_SHM_SMALL_BYTES");
    munmap(so, sizeof *so);
    munmap(ref, sizeof *ref);
}
END_TEST

/* Case 0: rank 2 asks for another size; 1: more than /dev/shm holds; 2:
 * rank 1 freed the window its peers pass and passes another. */
static tp_status sym_misuse_rank(void *comm, int rank, int size, void *arg, unsigned char *out)
{
    (void)size;
    (void)out;
    int which = *(const int *)arg;
    void *w1 = NULL, *w2 = NULL;
    if (which == 0)
        return shm_ops->mem_alloc(comm, rank == 2 ? 8192 : 4096, &w1);
    if (which == 1)
        return shm_ops->mem_alloc(comm, (size_t)1 << 60, &w1);
    tp_status st = shm_ops->mem_alloc(comm, 1 << 16, &w1);
    if (st == TP_OK)
        st = shm_ops->mem_alloc(comm, 1 << 16, &w2);
    if (st != TP_OK)
        return st;
    float *buf = w1;
    if (rank == 1) {
        shm_ops->mem_free(comm, w1);
        buf = w2;
    }
    for (int i = 0; i < 4096; i++)
        buf[i] = (float)i;
    return shm_ops->all_reduce(comm, buf, buf, 4096, TP_F32, TP_SUM);
}

START_TEST(symmetric_misuse_fails_everywhere)
{
    static const struct {
        tp_status st;
        const char *msg;
    } want[] = {
        {TP_ERR_INVALID_ARG, "rank 2 passed 8192"},
        {TP_ERR_NO_MEMORY, "/dev/shm has"},
        {TP_ERR_INVALID_ARG, "symmetric window #1) is not in a window rank 1 has"},
    };
    int which = _i, n = 3;
    shared_out *so = new_out();
    new_job_id("symbad");
    start_ranks(n, sym_misuse_rank, &which, so, 20.0);
    wait_ranks(n, 60.0);
    for (int r = 0; r < n; r++) {
        ck_assert_int_eq(so->rep[r].init_st, TP_OK);
        ck_assert_msg(so->rep[r].st == (int)want[which].st &&
                          strstr(so->rep[r].msg, want[which].msg),
                      "case %d rank %d: status %d, \"%s\"; expected %d with \"%s\"", which, r,
                      so->rep[r].st, so->rep[r].msg, want[which].st, want[which].msg);
    }
    no_names_left(job_id);
    munmap(so, sizeof *so);
}
END_TEST

/* Rank 0 allocates while rank 1 never does: rank 0's window object exists
 * until the agreement, which never comes. */
static tp_status win_stall_rank(void *comm, int rank, int size, void *arg, unsigned char *out)
{
    (void)size;
    (void)arg;
    (void)out;
    void *w = NULL;
    if (rank == 0)
        return shm_ops->mem_alloc(comm, 4096, &w);
    sleep(60);
    return TP_OK;
}

START_TEST(stale_window_is_removed)
{
    shared_out *so = new_out();
    new_job_id("winstale");
    char win[80]; /* rank 0's object of window 1: the segment's name + "-w1-0" */
    snprintf(win, sizeof win, "%s-w1-0", job_id);
    start_ranks(2, win_stall_rank, NULL, so, 60.0);
    double until = now_s() + 20;
    while (!shm_exists(win) && now_s() < until)
        usleep(2000);
    ck_assert_msg(shm_exists(win), "rank 0 created no window object");
    for (int r = 0; r < 2; r++) {
        int status;
        kill(pids[r], SIGKILL);
        waitpid(pids[r], &status, 0);
    }
    ck_assert(shm_exists(win));
    new_job_id("winnext");
    start_ranks(2, noop_rank, NULL, so, 60.0);
    wait_ranks(2, 30.0);
    ck_assert_msg(so->rep[0].st == 0 && so->rep[1].st == 0, "next job: %s", so->rep[0].msg);
    ck_assert_msg(!shm_exists(win),
                  "the window object of a killed job was not removed by the next job");
    munmap(so, sizeof *so);
}
END_TEST

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: test-shm LIBTP-SHM.so LIBTP-LOOPBACK.so\n");
        return 2;
    }
    const tp_comm_ops **ops[2] = {&shm_ops, &lb_ops};
    for (int i = 0; i < 2; i++) {
        void *h = dlopen(argv[1 + i], RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            fprintf(stderr, "dlopen %s: %s\n", argv[1 + i], dlerror());
            return 1;
        }
        const tp_plugin_desc *(*get)(void) =
            (const tp_plugin_desc *(*)(void))dlsym(h, TP_PLUGIN_ENTRY);
        if (!get || !get()->comm) {
            fprintf(stderr, "%s: no comm plugin entry\n", argv[1 + i]);
            return 1;
        }
        *ops[i] = get()->comm;
    }
    unsetenv("TP_TIMEOUT_S");
    Suite *s = suite_create("shm");
    TCase *tc = tcase_create("shm");
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, job_id_required);
    tcase_add_loop_test(tc, killed_peer_gives_peer_error, 0, 3);
    tcase_add_loop_test(tc, stalled_peer_gives_timeout, 0, 3);
    tcase_add_test(tc, hostile_peer_cannot_crash);
    tcase_add_test(tc, stale_segments_are_removed);
    tcase_add_test(tc, comm_create_over_a_group);
    tcase_add_test(tc, comm_create_refuses_a_group_across_nodes);
    tcase_add_test(tc, bitwise_equal_to_loopback);
    tcase_add_loop_test(tc, oneshot_edges_equal_loopback, 0, 3);
    tcase_add_loop_test(tc, oneshot_stress_descheduled, 0, 3);
    tcase_add_loop_test(tc, nonblocking_any_order, 0, 4);
    tcase_add_loop_test(tc, symmetric_equal_to_loopback, 0, 5);
    tcase_add_loop_test(tc, symmetric_misuse_fails_everywhere, 0, 3);
    tcase_add_test(tc, stale_window_is_removed);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
