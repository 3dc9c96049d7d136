/* SPDX-License-Identifier: MIT */
/*
 * shm-group.c — communicators: the world (one segment per job), split (one
 * segment per colour, made by its leader, the lowest old rank of the
 * colour) and leaving.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "shm.h"

/* After mapping: wait until every rank mapped it. If some never come, the
 * name is removed so that it does not outlive the job. */
tp_status sh_join(sh_comm *c, const char *name)
{
    tp_status st = sh_barrier_wait(c, SC_NONE);
    if (st != TP_OK && name && atomic_load(&c->h->mapped) < c->size)
        shm_unlink(name);
    return st;
}

tp_status sh_world(void *engine, int local_index, const tp_rank_env *env, void **comm, int *rank,
                   int *size)
{
    sh_engine *eng = engine;
    (void)env; /* host memory only (mem_kinds 0): the core stages device buffers */
    if (local_index != 0)
        return eng->host->set_error(TP_ERR_INVALID_ARG,
                                    "shm: world() got local index %d, expected 0 (one rank per "
                                    "process)",
                                    local_index);
    sh_comm *c = calloc(1, sizeof *c);
    if (!c)
        return eng->host->set_error(TP_ERR_NO_MEMORY, "shm: out of memory for a communicator");
    char name[SH_NAME_MAX];
    const char *nm = NULL;
    if (eng->world_size > 1) {
        sh_seg_name(eng, 0, name, sizeof name);
        nm = name;
        if (eng->rank == 0 && !eng->cleaned) {
            sh_seg_clean_stale(eng);
            eng->cleaned = true;
        }
    }
    tp_status st = sh_seg_attach(eng, nm, eng->rank == 0, eng->world_size, eng->rank, c);
    if (st == TP_OK && (st = sh_join(c, nm)) != TP_OK)
        sh_seg_detach(c);
    if (st != TP_OK) {
        free(c);
        return st;
    }
    if (eng->host->debug && nm)
        eng->host->debug("comm", "shm: rank %d of %d mapped %s (%zu bytes)", eng->rank,
                         eng->world_size, nm, c->map_bytes);
    if (eng->bind && nm) {
        int cpu = sc_bind_self(eng->rank, &c->saved);
        c->bound = cpu >= 0;
        c->thread = pthread_self();
        if (c->bound && eng->host->debug)
            eng->host->debug("comm", "shm: rank %d pinned to CPU %d", eng->rank, cpu);
    }
    *comm = c;
    *rank = c->rank;
    *size = c->size;
    return TP_OK;
}

void sh_comm_free(void *comm)
{
    sh_comm *c = comm;
    if (!c)
        return;
    if (c->bound && pthread_equal(pthread_self(), c->thread))
        sc_unbind_self(&c->saved);
    sh_nb_forget(c);
    sh_mem_end(c);
    if (c->h) {
        atomic_store(&c->h->slots[c->rank].departed, 1);
        sc_bar_wake(&c->h->bar, true);
        sh_seg_detach(c);
    }
    if (c->eng->by_comms && atomic_fetch_sub(&c->eng->refs, 1) == 1)
        free(c->eng);
    free(c);
}

static uint64_t sh_mix(uint64_t h, uint64_t v)
{
    for (int k = 0; k < 8; k++) {
        h ^= (v >> (8 * k)) & 0xffu;
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Split as MPI_Comm_split: agree on colours and keys through the parent,
 * the leader of each colour creates its segment, a second barrier of the
 * parent publishes whether that worked, the members attach. */
/* The new communicator of this rank's colour: size *n, its rank, leader. */
static void sh_split_count(const sh_comm *c, int color, int key, int *n, int *newrank, int *leader)
{
    *n = 0, *newrank = 0, *leader = -1;
    for (int r = 0; r < c->size && color >= 0; r++) {
        const sh_pub *o = sh_peer(c, r);
        if (o->color != color)
            continue;
        if (*leader < 0)
            *leader = r;
        (*n)++;
        if (o->key < key || (o->key == key && r < c->rank))
            (*newrank)++;
    }
}

/* After the leader made the segment (its status is in its slot): attach. */
static tp_status sh_split_attach(sh_comm *c, int color, int leader, int n, int newrank,
                                 const char *name, sh_comm *nc)
{
    sh_engine *eng = c->eng;
    tp_status st;
    if (n == 1) {
        st = sh_seg_attach(eng, NULL, true, 1, 0, nc);
    } else if (leader == c->rank) {
        st = (tp_status)atomic_load(&c->h->slots[c->rank].split_status);
    } else {
        int ls = atomic_load(&c->h->slots[leader].split_status);
        st = ls ? eng->host->set_error(TP_ERR_PEER,
                                       "shm: split (colour %d): rank %d could not create the "
                                       "%d-rank segment (status %d; see its error)",
                                       color, leader, n, ls)
                : sh_seg_attach(eng, name, false, n, newrank, nc);
    }
    if (st == TP_OK && (st = sh_join(nc, n > 1 ? name : NULL)) != TP_OK)
        sh_seg_detach(nc);
    return st;
}

/* Split as MPI_Comm_split: agree on colours and keys through the parent,
 * the leader of each colour creates its segment, a second barrier of the
 * parent publishes whether that worked, the members attach. */
tp_status sh_split(void *comm, int color, int key, void **newcomm, int *rank, int *size)
{
    sh_comm *c = comm;
    sh_engine *eng = c->eng;
    *newcomm = NULL;
    *rank = -1;
    *size = 0;
    sh_comm *nc = color >= 0 ? calloc(1, sizeof *nc) : NULL;
    tp_status bad = color >= 0 && !nc ? TP_ERR_NO_MEMORY : TP_OK;
    sh_pub a = {.color = color, .key = key, .dt = -1, .op = -1, .root = -1};
    tp_status st = sh_begin(c, SC_SPLIT, &a, bad, "out of memory allocating a communicator");
    if (st != TP_OK) {
        free(nc);
        return st;
    }
    int n, newrank, leader;
    sh_split_count(c, color, key, &n, &newrank, &leader);
    uint64_t id =
        sh_mix(sh_mix(sh_mix(0xcbf29ce484222325ull, c->id), ++c->splits), (uint64_t)leader);
    char name[SH_NAME_MAX];
    sh_seg_name(eng, id, name, sizeof name);
    sh_slot *me = &c->h->slots[c->rank];
    atomic_store(&me->split_status, 0);
    if (color >= 0 && n > 1 && leader == c->rank)
        atomic_store(&me->split_status, (int)sh_seg_attach(eng, name, true, n, newrank, nc));
    st = sh_barrier_wait(c, SC_SPLIT);
    if (st == TP_OK && color >= 0)
        st = sh_split_attach(c, color, leader, n, newrank, name, nc);
    if (st != TP_OK || color < 0) {
        if (nc && nc->h)
            sh_seg_detach(nc);
        free(nc);
        return st;
    }
    nc->id = id;
    if (eng->by_comms)
        atomic_fetch_add(&eng->refs, 1);
    *newcomm = nc;
    *rank = newrank;
    *size = n;
    return TP_OK;
}
