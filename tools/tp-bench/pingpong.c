/* SPDX-License-Identifier: MIT */
/*
 * pingpong.c — one cache line bounced between two cores: the ping side
 * stores an odd number into the line and spins until the pong side has
 * stored the next even one. A round trip moves the line twice between the
 * cores' caches, which is what a two-rank one-shot all_reduce cannot beat
 * (each rank publishes one line and reads the other's). The two sides run
 * on the first two CPUs this process may use (as loopback pins rank i to
 * CPU i), as threads or as processes through a shared mapping. Waiters
 * yield every 256 spins so a loaded machine still progresses (the median
 * then shows the load; many short samples keep the median clear of it).
 */
#include "pingpong.h"

#include "bench.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PP_PAUSE() _mm_pause()
#else
#define PP_PAUSE() ((void)0)
#endif

typedef struct pp_shared {
    _Alignas(64) atomic_uint_fast64_t ball; /* odd: the ping's turn is over */
    _Alignas(64) atomic_int stop;           /* the ping side gave up */
    int cpu;                                /* the pong side's CPU, -1: unpinned */
    uint64_t total;                         /* round trips the pong side answers */
} pp_shared;

/* Wait until the ball reads v; false if `stop` was raised or (when
 * deadline > 0) 5 s passed. */
static bool pp_wait(pp_shared *s, uint64_t v, bool timed)
{
    double deadline = 0.0;
    for (unsigned spins = 1;; spins++) {
        if (atomic_load_explicit(&s->ball, memory_order_acquire) == v)
            return true;
        PP_PAUSE();
        if (spins % 256 != 0)
            continue;
        if (atomic_load_explicit(&s->stop, memory_order_relaxed))
            return false;
        sched_yield();
        if (timed && spins % (1u << 16) == 0) {
            double now = bench_now();
            if (deadline == 0.0)
                deadline = now + 5.0;
            else if (now > deadline)
                return false;
        }
    }
}

static void pp_pin(int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    sched_setaffinity(0, sizeof one, &one); /* best effort: 0 = the calling thread */
}

static void *pp_pong(void *a)
{
    pp_shared *s = a;
    pp_pin(s->cpu);
    for (uint64_t k = 1; k < 2 * s->total; k += 2) {
        if (!pp_wait(s, k, false))
            break;
        atomic_store_explicit(&s->ball, k + 1, memory_order_release);
    }
    return NULL;
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The ping side: samples x rounds round trips; the median per sample. */
static double pp_ping(pp_shared *s, int samples, int rounds)
{
    double *per = malloc((size_t)samples * sizeof *per);
    if (!per)
        return -1.0;
    uint64_t v = 0;
    for (int i = 0; i < samples; i++) {
        double t0 = bench_now();
        for (int r = 0; r < rounds; r++, v += 2) {
            atomic_store_explicit(&s->ball, v + 1, memory_order_release);
            if (!pp_wait(s, v + 2, true)) {
                free(per);
                return -1.0;
            }
        }
        per[i] = (bench_now() - t0) / rounds;
    }
    qsort(per, (size_t)samples, sizeof *per, cmp_dbl);
    double med = per[samples / 2];
    free(per);
    return med;
}

double bench_pingpong(bool procs, int samples, int rounds)
{
    if (samples < 1 || rounds < 1)
        return -1.0;
    cpu_set_t saved, allowed;
    int cpus[2] = {-1, -1}, n = 0;
    bool have = sched_getaffinity(0, sizeof saved, &saved) == 0;
    allowed = saved;
    for (int c = 0; have && c < CPU_SETSIZE && n < 2; c++)
        if (CPU_ISSET(c, &allowed))
            cpus[n++] = c;
    /* A thread pinned to one CPU (shm and loopback pin ranks) still measures
     * between two CPUs of the machine when there are two. */
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 2 && online >= 2)
        cpus[0] = 0, cpus[1] = 1;
    else if (n < 2)
        cpus[0] = cpus[1] = -1; /* one CPU: unpinned, the yields take turns */
    pp_shared *s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (s == MAP_FAILED)
        return -1.0;
    atomic_init(&s->ball, 0);
    atomic_init(&s->stop, 0);
    s->cpu = cpus[1];
    s->total = (uint64_t)samples * (uint64_t)rounds;
    pthread_t th;
    pid_t pid = -1;
    double rt = -1.0;
    if (procs) {
        pid = fork();
        if (pid == 0) {
            pp_pong(s); /* atomics and system calls only: safe after fork */
            _exit(0);
        }
    }
    if (procs ? pid > 0 : pthread_create(&th, NULL, pp_pong, s) == 0) {
        pp_pin(cpus[0]);
        rt = pp_ping(s, samples, rounds);
        atomic_store(&s->stop, 1);
        if (procs) {
            if (rt < 0)
                kill(pid, SIGKILL); /* the child we forked, by its pid */
            waitpid(pid, NULL, 0);
        } else {
            pthread_join(th, NULL);
        }
        if (have)
            sched_setaffinity(0, sizeof saved, &saved);
    }
    munmap(s, sizeof *s);
    return rt;
}
