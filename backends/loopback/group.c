/* SPDX-License-Identifier: MIT */
/*
 * group.c — communicator groups: the world group, split, and leaving.
 *
 * World groups belong to the engine (one per tp_run; freed in finalize).
 * Sub-groups are allocated by the leader of each color in split (the
 * lowest old rank with that color) and freed by the last member's
 * comm_free.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loopback.h"

lb_group *lb_group_new(lb_engine *eng, int size, bool is_world)
{
    size_t bytes = sizeof(lb_group) + (size_t)size * sizeof(lb_slot);
    bytes = (bytes + LB_LINE - 1) / LB_LINE * LB_LINE;
    lb_group *g = aligned_alloc(LB_LINE, bytes);
    if (!g)
        return NULL;
    memset(g, 0, bytes);
    g->eng = eng;
    g->size = size;
    g->is_world = is_world;
    atomic_init(&g->refs, size);
    sc_bar_init(&g->bar);
    atomic_init(&g->failed, 0);
    atomic_init(&g->departures, 0);
    atomic_init(&g->poison_claim, 0);
    pthread_mutex_init(&g->nb_lock, NULL);
    for (int r = 0; r < size; r++) {
        lb_slot *s = &g->slots[r];
        atomic_init(&s->epoch, 0);
        atomic_init(&s->cpu, -1);
        atomic_init(&s->kind, LB_NONE);
        atomic_init(&s->seq, 0);
        atomic_init(&s->joined, 0);
        atomic_init(&s->departed, 0);
    }
    if (is_world) {
        g->world_comms = calloc((size_t)size, sizeof(lb_comm));
        if (!g->world_comms) {
            pthread_mutex_destroy(&g->nb_lock);
            free(g);
            return NULL;
        }
    }
    return g;
}

void lb_group_free(lb_group *g)
{
    if (!g)
        return;
    lb_nb_free_all(g);
    pthread_mutex_destroy(&g->nb_lock);
    free(g->world_comms);
    free(g);
}

/* Pin the calling thread to the index-th CPU it may run on; best effort. */
static void lb_bind(lb_engine *eng, lb_comm *c, int index)
{
    int cpu = sc_bind_self(index, &c->saved);
    c->bound = cpu >= 0;
    c->thread = pthread_self();
    if (c->bound && eng->host->debug)
        eng->host->debug("comm", "loopback: rank %d pinned to CPU %d", index, cpu);
}

tp_status lb_world(void *engine, int local_index, const tp_rank_env *env, void **comm, int *rank,
                   int *size)
{
    lb_engine *eng = engine;
    const tp_host *host = eng->host;
    if (local_index < 0 || local_index >= eng->world_size)
        return host->set_error(TP_ERR_INVALID_ARG,
                               "loopback: world() got local index %d, expected 0..%d", local_index,
                               eng->world_size - 1);
    /* Device memory: shares move with the rank's device ops (device.c),
     * which need copy_2d and the ABI 1.1 reduce slot. Refused before
     * joining, so the core can call world() again with host memory (and
     * stage) for a device without reduce. */
    const tp_device_ops *dops = NULL;
    if (env && env->mem_kind != TP_MEM_HOST) {
        if (env->struct_size >= offsetof(tp_rank_env, dev) + sizeof env->dev && env->dev_ops)
            dops = env->dev_ops;
        if (!dops || dops->struct_size < offsetof(tp_device_ops, reduce) + sizeof dops->reduce ||
            !dops->reduce || !dops->copy_2d || !dops->synchronize)
            return host->set_error(TP_ERR_NOT_SUPPORTED,
                                   "loopback: rank %d's device keeps its buffers in memory kind "
                                   "%d (not host memory) and %s; loopback needs the device's "
                                   "reduce slot (plugin ABI 1.1) to work on device memory",
                                   local_index, (int)env->mem_kind,
                                   dops ? "has no reduce slot" : "the core passed no device ops");
    }
    pthread_mutex_lock(&eng->lock);
    /* A new tp_run starts a new world group once every rank joined the last one. */
    lb_group *g = eng->world;
    if (!g || g->joined == g->size) {
        g = lb_group_new(eng, eng->world_size, true);
        if (!g) {
            pthread_mutex_unlock(&eng->lock);
            return host->set_error(TP_ERR_NO_MEMORY,
                                   "loopback: out of memory creating the %d-rank world group",
                                   eng->world_size);
        }
        g->next = eng->worlds;
        eng->worlds = g;
        eng->world = g;
    }
    lb_slot *s = &g->slots[local_index];
    if (atomic_load_explicit(&s->joined, memory_order_relaxed)) {
        pthread_mutex_unlock(&eng->lock);
        return host->set_error(TP_ERR_INVALID_ARG,
                               "loopback: world() called twice for rank %d in the same run",
                               local_index);
    }
    atomic_store_explicit(&s->joined, 1, memory_order_relaxed);
    g->joined++;
    lb_comm *c = &g->world_comms[local_index];
    c->g = g;
    c->rank = local_index;
    pthread_mutex_unlock(&eng->lock);

    c->dops = dops;
    c->dev = dops ? env->dev : NULL;
    if (eng->bind)
        lb_bind(eng, c, local_index);
    *comm = c;
    *rank = local_index;
    *size = g->size;
    return TP_OK;
}

void lb_comm_free(void *comm)
{
    lb_comm *c = comm;
    if (!c)
        return;
    lb_group *g = c->g;
    atomic_store_explicit(&g->slots[c->rank].departed, 1, memory_order_release);
    atomic_fetch_add_explicit(&g->departures, 1, memory_order_seq_cst);
    sc_bar_wake(&g->bar, false); /* peers blocked waiting for this rank re-check */
    if (g->is_world) {
        /* comm_free runs on the rank's thread: undo the pinning */
        if (c->bound && pthread_equal(pthread_self(), c->thread)) {
            sc_unbind_self(&c->saved);
            c->bound = false;
        }
        return; /* the engine frees world groups */
    }
    if (atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) == 1)
        lb_group_free(g);
    free(c);
}

/* Split as MPI_Comm_split: two barriers. After the first, the leader of
 * each color allocates the new group and leaves it in its slot; after the
 * second, members pick it up. The leader writes its slot's newgroup again
 * only after the next split's first barrier, when everyone has read it. */
tp_status lb_split(void *comm, int color, int key, void **newcomm, int *rank, int *size)
{
    lb_comm *c = comm;
    lb_group *g = c->g;
    lb_engine *eng = g->eng;
    *newcomm = NULL;
    lb_comm *nc = NULL;
    tp_status bad = TP_OK;
    char bad_msg[200] = "";
    if (color >= 0) {
        nc = calloc(1, sizeof *nc);
        if (!nc) {
            bad = TP_ERR_NO_MEMORY;
            snprintf(bad_msg, sizeof bad_msg, "out of memory allocating a communicator handle");
        }
    }
    lb_args a = {.color = color, .key = key, .dt = -1, .op = -1, .root = -1};
    tp_status st = lb_begin(c, LB_SPLIT, &a, bad, bad_msg);
    if (st != TP_OK) {
        free(nc);
        return st;
    }
    int n = 0, newrank = 0, leader = -1;
    for (int r = 0; r < g->size; r++) {
        const lb_args *o = lb_peer(c, r);
        if (color < 0 || o->color != color)
            continue;
        if (leader < 0)
            leader = r;
        n++;
        if (o->key < key || (o->key == key && r < c->rank))
            newrank++;
    }
    lb_slot *me = &g->slots[c->rank];
    me->newgroup = NULL;
    if (leader == c->rank)
        me->newgroup = lb_group_new(eng, n, false);
    st = lb_barrier_wait(c, LB_SPLIT);
    if (st != TP_OK) {
        /* The group is poisoned; a leader's new group may leak, but no
         * member can be sure the others saw it. */
        free(nc);
        return st;
    }
    if (color < 0) {
        *rank = -1;
        *size = 0;
        return TP_OK;
    }
    lb_group *ng = g->slots[leader].newgroup;
    if (!ng) {
        free(nc);
        return eng->host->set_error(TP_ERR_NO_MEMORY,
                                    "loopback: split (color %d): out of memory allocating the "
                                    "%d-rank group",
                                    color, n);
    }
    nc->g = ng;
    nc->rank = newrank;
    nc->dops = c->dops;
    nc->dev = c->dev;
    *newcomm = nc;
    *rank = newrank;
    *size = n;
    return TP_OK;
}
