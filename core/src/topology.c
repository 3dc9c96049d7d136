/* SPDX-License-Identifier: MIT */
/*
 * topology.c — "TP within a node, DP across nodes".
 *
 * Nodes are found by all-gathering a 64-bit hash of each rank's host name
 * (two int32 words per rank), so this works unchanged on every backend.
 * TP_FAKE_NODES replaces the host names for tests of multi-node layouts on
 * one machine.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tp-internal.h"

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* This rank's node key: from TP_FAKE_NODES if set, else the host name. */
static tp_status node_key(int world_rank, int world_size, uint64_t *key)
{
    const char *fake = getenv("TP_FAKE_NODES");
    if (fake == NULL || *fake == '\0') {
        char host[256] = "";
        if (gethostname(host, sizeof host - 1) != 0)
            return tp_set_error(TP_ERR_IO, "tp_topology: gethostname failed: %s", strerror(errno));
        *key = fnv1a(host);
        return TP_OK;
    }
    char *end;
    if (strchr(fake, ',') == NULL) { /* ranks per node */
        errno = 0;
        long per = strtol(fake, &end, 10);
        if (errno || *end || per < 1)
            return tp_set_error(TP_ERR_INVALID_ARG,
                                "tp_topology: TP_FAKE_NODES='%s' is not a positive number of ranks "
                                "per node or a list of node ids like '0,0,1,1'",
                                fake);
        *key = (uint64_t)(world_rank / per);
        return TP_OK;
    }
    const char *p = fake;
    for (int r = 0;; r++) { /* list of node ids, one per world rank */
        errno = 0;
        long id = strtol(p, &end, 10);
        if (errno || end == p || id < 0 || (*end != ',' && *end != '\0'))
            return tp_set_error(TP_ERR_INVALID_ARG,
                                "tp_topology: TP_FAKE_NODES='%s': entry %d is not a node id >= 0",
                                fake, r);
        if (r == world_rank) {
            *key = (uint64_t)id;
        }
        if (*end == '\0') {
            if (r + 1 != world_size)
                return tp_set_error(TP_ERR_INVALID_ARG,
                                    "tp_topology: TP_FAKE_NODES='%s' lists %d node ids, expected "
                                    "one per rank (%d)",
                                    fake, r + 1, world_size);
            return TP_OK;
        }
        p = end + 1;
    }
}

/* All-gather every rank's key through the communicator (device memory). */
static tp_status gather_keys(tp_comm *world, uint64_t key, uint64_t *keys)
{
    int n = tp_comm_size(world);
    tp_device *dev = tp_comm_device(world);
    int32_t mine[2] = {(int32_t)(uint32_t)(key >> 32), (int32_t)(uint32_t)key};
    int32_t *all = malloc(sizeof(int32_t) * 2 * (size_t)n);
    void *d_all = NULL;
    if (all == NULL)
        return tp_set_error(TP_ERR_NO_MEMORY, "tp_topology: out of memory for %d node keys", n);
    tp_status st;
    TP_TRY_GOTO(tp_dev_alloc(dev, sizeof(int32_t) * 2 * (size_t)n, &d_all), st, out);
    int32_t *d_mine = (int32_t *)d_all + 2 * tp_comm_rank(world);
    TP_TRY_GOTO(tp_dev_upload(dev, d_mine, mine, sizeof mine), st, out);
    TP_TRY_GOTO(tp_all_gather(world, d_mine, d_all, 2, TP_I32), st, out);
    TP_TRY_GOTO(tp_dev_download(dev, all, d_all, sizeof(int32_t) * 2 * (size_t)n), st, out);
    for (int r = 0; r < n; r++)
        keys[r] = ((uint64_t)(uint32_t)all[2 * r] << 32) | (uint32_t)all[2 * r + 1];
out:
    tp_dev_free(dev, d_all);
    free(all);
    return st;
}

/* Where each rank runs: node index (nodes numbered by their lowest rank),
 * local rank (order within the node) and each node's rank count. */
typedef struct node_map {
    int nodes;
    int *node_of, *local_of, *size_of_node;
} node_map;

static void number_nodes(const uint64_t *keys, int n, node_map *m)
{
    m->nodes = 0;
    for (int r = 0; r < n; r++) {
        int node = -1;
        for (int q = 0; q < r && node < 0; q++)
            if (keys[q] == keys[r])
                node = m->node_of[q];
        if (node < 0)
            node = m->nodes++;
        m->node_of[r] = node;
        m->local_of[r] = m->size_of_node[node]++;
    }
}

/* The TP group and rank in it of world rank `me`: consecutive ranks with
 * allow_span, else groups inside each node, numbered node by node (refused
 * when a node's rank count is not a multiple of tp_size). */
static tp_status assign_group(const node_map *m, int me, int tp_size, bool allow_span, int *group,
                              int *tp_rank)
{
    if (allow_span) {
        *group = me / tp_size;
        *tp_rank = me % tp_size;
        return TP_OK;
    }
    for (int node = 0; node < m->nodes; node++) {
        if (m->size_of_node[node] % tp_size == 0)
            continue;
        int first = 0;
        while (m->node_of[first] != node)
            first++;
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "tp_topology: a TP group of %d ranks would span nodes: node %d "
                            "(first rank %d) runs %d ranks, not a multiple of %d. TP traffic "
                            "belongs on the fast intra-node link; choose a TP size dividing "
                            "the ranks per node, or pass allow_span to group consecutive "
                            "ranks anyway",
                            tp_size, node, first, m->size_of_node[node], tp_size);
    }
    *group = 0;
    for (int node = 0; node < m->node_of[me]; node++)
        *group += m->size_of_node[node] / tp_size;
    *group += m->local_of[me] / tp_size;
    *tp_rank = m->local_of[me] % tp_size;
    return TP_OK;
}

/* This rank's node as the intra backend sees it: "fake-node-N" under
 * TP_FAKE_NODES, else the host name. */
static void node_label(uint64_t key, char *buf, size_t len)
{
    const char *fake = getenv("TP_FAKE_NODES");
    if (fake && *fake) {
        snprintf(buf, len, "fake-node-%llu", (unsigned long long)key);
        return;
    }
    if (gethostname(buf, len - 1) != 0)
        snprintf(buf, len, "(unknown host)");
    buf[len - 1] = '\0';
}

/* Whether every member of this rank's TP group (dp false) or DP group (dp
 * true) runs on one node; the same answer on every rank. */
static bool group_in_one_node(const node_map *m, int n, int tp_size, bool allow_span, bool dp,
                              int mine)
{
    int node = -1;
    for (int q = 0; q < n; q++) {
        int g = 0, r = 0;
        if (assign_group(m, q, tp_size, allow_span, &g, &r) != TP_OK)
            return false;
        if ((dp ? r : g) != mine)
            continue;
        if (node >= 0 && m->node_of[q] != node)
            return false;
        node = m->node_of[q];
    }
    return true;
}

/* With TP_INTRA_BACKEND: replace a group that lies inside one node by a
 * communicator of the same ranks on the intra backend, bootstrapped
 * through it. TP_DEBUG=comm says where each group runs. */
static tp_status place_group(tp_comm **c, const char *what, int id, bool local, const char *node)
{
    int me = tp_comm_rank(*c);
    if (tpi_comm_intra_plugin(*c) && local) {
        tp_comm *ic = NULL;
        TP_TRY(tpi_comm_create_intra(*c, node, &ic));
        tp_comm_free(*c);
        *c = ic;
    }
    tpi_debug("comm", "tp_topology: %s group %d (%d ranks, rank %d here) on %s%s", what, id,
              tp_comm_size(*c), me, tpi_comm_backend(*c),
              !tpi_comm_intra_plugin(*c) ? ""
              : local                    ? " (intra-node backend: the group is inside a node)"
                                         : " (world backend: the group spans nodes)");
    return TP_OK;
}

typedef struct group_place {
    const node_map *m;
    bool allow_span;
    const char *node;
} group_place;

/* Split the world into the layout's TP and DP groups (collective); hand
 * them out where asked for, free them otherwise or on failure. */
static tp_status split_groups(tp_comm *world, const tp_layout *l, const group_place *gp,
                              tp_comm **tp_out, tp_comm **dp_out)
{
    tp_comm *tp = NULL, *dp = NULL;
    tp_status st;
    TP_TRY_GOTO(tp_comm_split(world, l->tp_group, l->tp_rank, &tp), st, out);
    TP_TRY_GOTO(tp_comm_split(world, l->tp_rank, l->tp_group, &dp), st, out);
    if (tp_comm_size(tp) != l->tp_size || tp_comm_size(dp) != l->dp_size) {
        st = tp_set_error(TP_ERR_INTERNAL,
                          "tp_topology: built groups of %d (TP) and %d (DP), "
                          "expected %d and %d",
                          tp_comm_size(tp), tp_comm_size(dp), l->tp_size, l->dp_size);
        goto out;
    }
    TP_TRY_GOTO(place_group(&tp, "TP", l->tp_group,
                            group_in_one_node(gp->m, l->world_size, l->tp_size, gp->allow_span,
                                              false, l->tp_group),
                            gp->node),
                st, out);
    TP_TRY_GOTO(place_group(&dp, "DP", l->tp_rank,
                            group_in_one_node(gp->m, l->world_size, l->tp_size, gp->allow_span,
                                              true, l->tp_rank),
                            gp->node),
                st, out);
out:
    if (st != TP_OK || tp_out == NULL)
        tp_comm_free(tp);
    else
        *tp_out = tp;
    if (st != TP_OK || dp_out == NULL)
        tp_comm_free(dp);
    else
        *dp_out = dp;
    return st;
}

tp_status tp_topology(tp_comm *world, int tp_size, bool allow_span, tp_comm **tp_out,
                      tp_comm **dp_out, tp_layout *layout)
{
    if (tp_out)
        *tp_out = NULL;
    if (dp_out)
        *dp_out = NULL;
    if (world == NULL || layout == NULL)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_topology: %s is NULL",
                            world == NULL ? "world" : "layout");
    int n = tp_comm_size(world), me = tp_comm_rank(world);
    if (tp_size < 1 || tp_size > n || n % tp_size != 0)
        return tp_set_error(TP_ERR_INVALID_ARG,
                            "tp_topology: TP size %d does not divide the world size %d; choose a "
                            "TP size among the divisors of %d",
                            tp_size, n, n);

    uint64_t key = 0;
    tp_status st = node_key(me, n, &key);
    /* Even a rank whose key failed must join the gather, or the others hang. */
    uint64_t *keys = calloc((size_t)n, sizeof *keys);
    node_map m = {.node_of = calloc((size_t)n, sizeof(int)),
                  .local_of = calloc((size_t)n, sizeof(int)),
                  .size_of_node = calloc((size_t)n, sizeof(int))};
    if (!keys || !m.node_of || !m.local_of || !m.size_of_node) {
        st = tp_set_error(TP_ERR_NO_MEMORY, "tp_topology: out of memory for %d ranks", n);
        goto out;
    }
    tp_status gst = gather_keys(world, key, keys);
    TP_TRY_GOTO(st != TP_OK ? st : gst, st, out); /* the first failure wins */
    number_nodes(keys, n, &m);
    int group = 0, tp_rank = 0;
    TP_TRY_GOTO(assign_group(&m, me, tp_size, allow_span, &group, &tp_rank), st, out);
    *layout = (tp_layout){
        .world_rank = me,
        .world_size = n,
        .node = m.node_of[me],
        .nodes = m.nodes,
        .local_rank = m.local_of[me],
        .local_size = m.size_of_node[m.node_of[me]],
        .tp_group = group,
        .tp_rank = tp_rank,
        .tp_size = tp_size,
        .dp_rank = group,
        .dp_size = n / tp_size,
    };
    char node[256];
    node_label(key, node, sizeof node);
    group_place gp = {&m, allow_span, node};
    st = split_groups(world, layout, &gp, tp_out, dp_out);
out:
    free(keys);
    free(m.node_of);
    free(m.local_of);
    free(m.size_of_node);
    return st;
}
