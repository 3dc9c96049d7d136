/* SPDX-License-Identifier: MIT */
/*
 * sc-bar.c — the counter barrier of loopback and shm, and how they wait.
 *
 * Arrival: increment `arrived` (acq_rel); the last arrival resets it and
 * publishes the epoch in `gen` (release); the others wait until `gen`
 * reaches their epoch (acquire). So every write a party made before
 * arriving is visible to every party after the barrier.
 *
 * Waiting spins with a CPU pause `spin_limit` times, then yields for up to
 * 50 us (the CPU goes to a party that shares it), then blocks on the
 * `wake` futex word for at most `poll_s` at a time, so a long wait costs
 * nothing. Whoever completes a barrier (or fails a group, or leaves)
 * wakes blocked waiters, but pays for the system call only when someone
 * sleeps (`sleepers`, sequentially consistent against `gen`, so a wake-up
 * is never lost). The caller's `check` runs on every round: it decides
 * when to give up (failure, departure, a dead peer, a timeout).
 */
#include <sched.h>

#include "shmcoll.h"

void sc_bar_init(sc_bar *b)
{
    atomic_init(&b->arrived, 0);
    atomic_init(&b->gen, 0);
    atomic_init(&b->wake, 0);
    atomic_init(&b->sleepers, 0);
}

void sc_bar_wake(sc_bar *b, bool shared)
{
    if (atomic_load_explicit(&b->sleepers, memory_order_seq_cst) == 0)
        return;
    atomic_fetch_add_explicit(&b->wake, 1, memory_order_seq_cst);
    sc_futex_wake(&b->wake, shared);
}

bool sc_bar_arrive(sc_bar *b, unsigned size, uint64_t e, bool shared)
{
    unsigned old = atomic_fetch_add_explicit(&b->arrived, 1, memory_order_acq_rel);
    if (old + 1 != size)
        return false;
    atomic_store_explicit(&b->arrived, 0, memory_order_relaxed);
    atomic_store_explicit(&b->gen, e, memory_order_seq_cst);
    sc_bar_wake(b, shared);
    return true;
}

tp_status sc_bar_wait(const sc_wait_spec *w)
{
    sc_bar *b = w->bar;
    const atomic_uint_fast64_t *word = w->flag ? w->flag : &b->gen;
    unsigned spins = 0;
    double start = 0.0;
    for (;;) {
        if (atomic_load_explicit(word, memory_order_acquire) >= w->epoch)
            return TP_OK;
        double waited = 0.0;
        if (spins >= w->spin_limit) {
            double now = sc_now();
            if (start == 0.0)
                start = now;
            waited = now - start;
        }
        tp_status st = w->check(w->ctx, waited);
        if (st != TP_OK)
            return st;
        if (++spins < w->spin_limit) {
            sc_cpu_relax();
            continue;
        }
        if (waited < 50e-6) {
            sched_yield(); /* lets a party sharing this CPU run and arrive */
            continue;
        }
        /* Announce the sleep, then re-check before blocking; a wake-up
         * after the check changes `wake`. */
        atomic_fetch_add_explicit(&b->sleepers, 1, memory_order_seq_cst);
        unsigned seen = atomic_load_explicit(&b->wake, memory_order_seq_cst);
        st = w->check(w->ctx, waited);
        if (st == TP_OK && atomic_load_explicit(word, memory_order_seq_cst) < w->epoch)
            sc_futex_wait(&b->wake, seen, w->poll_s, w->shared);
        atomic_fetch_sub_explicit(&b->sleepers, 1, memory_order_relaxed);
        if (st != TP_OK)
            return st;
    }
}
