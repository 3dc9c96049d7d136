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

/* What every rank contributes, so that all decide alike: its node key,
 * whether it could take part (a rank whose node lookup or intra-node
 * backend failed must still join, or the others would wait in the next
 * collective), which TP_INTRA_BACKEND it has, and its arguments. */
enum {
    W_KEY_HI,
    W_KEY_LO,
    W_STATUS,
    W_INTRA,
    W_ARGS,
    W_COUNT
};

/* All-gather W_COUNT words from every rank through the communicator
 * (device memory) into all[rank * W_COUNT + w]. */
static tp_status gather_words(tp_comm *world, const int32_t *mine, int32_t *all)
{
    int n = tp_comm_size(world);
    tp_device *dev = tp_comm_device(world);
    size_t bytes = sizeof(int32_t) * W_COUNT * (size_t)n;
    void *d_all = NULL;
    tp_status st;
    TP_TRY_GOTO(tp_dev_alloc(dev, bytes, &d_all), st, out);
    int32_t *d_mine = (int32_t *)d_all + W_COUNT * tp_comm_rank(world);
    TP_TRY_GOTO(tp_dev_upload(dev, d_mine, mine, sizeof(int32_t) * W_COUNT), st, out);
    TP_TRY_GOTO(tp_all_gather(world, d_mine, d_all, W_COUNT, TP_I32), st, out);
    TP_TRY_GOTO(tp_dev_download(dev, all, d_all, bytes), st, out);
out:
    tp_dev_free(dev, d_all);
    return st;
}

/* After the gather: a rank that could not take part fails with its own
 * message (`mine_msg`), the others with one naming the first such rank;
 * then ranks whose intra-node backend or arguments differ from rank 0's
 * fail every rank. */
static tp_status agree(const int32_t *all, int n, int me, const char *mine_msg,
                       const tp_plugin *intra)
{
    tp_status own = (tp_status)all[me * W_COUNT + W_STATUS];
    if (own != TP_OK)
        return tp_set_error(own, "%s", mine_msg);
    for (int r = 0; r < n; r++) {
        tp_status st = (tp_status)all[r * W_COUNT + W_STATUS];
        if (st == TP_OK)
            continue;
        if (st < 0 || st >= TP_STATUS_COUNT_)
            st = TP_ERR_INTERNAL;
        return tp_set_error(st,
                            "tp_topology: rank %d of %d failed before the groups were built (%s; "
                            "its own message says why), so no rank builds them",
                            r, n, tp_status_string(st));
    }
    for (int r = 1; r < n; r++) {
        const int32_t *w = all + r * W_COUNT;
        if (w[W_INTRA] != all[W_INTRA])
            return tp_set_error(TP_ERR_INVALID_ARG,
                                "tp_topology: ranks 0 and %d have different TP_INTRA_BACKEND "
                                "settings (rank %d here: %s); set the same value, or none, on "
                                "every rank",
                                r, me, intra ? intra->name : "unset");
        if (w[W_ARGS] != all[W_ARGS])
            return tp_set_error(TP_ERR_INVALID_ARG,
                                "tp_topology: rank %d passed tp_size %d, allow_span %s; rank 0 "
                                "passed tp_size %d, allow_span %s; every rank must pass the same",
                                r, w[W_ARGS] >> 1, w[W_ARGS] & 1 ? "true" : "false",
                                all[W_ARGS] >> 1, all[W_ARGS] & 1 ? "true" : "false");
    }
    return TP_OK;
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
    if (world == NULL)
        return tp_set_error(TP_ERR_INVALID_ARG, "tp_topology: world is NULL");
    int n = tp_comm_size(world), me = tp_comm_rank(world);
    const tp_plugin *intra = tpi_comm_intra_plugin(world);

    /* Local failures are carried by the gather, decided on every rank. */
    uint64_t key = 0;
    tp_status st = TP_OK;
    if (layout == NULL)
        st = tp_set_error(TP_ERR_INVALID_ARG, "tp_topology: layout is NULL");
    else if (tp_size < 1 || tp_size > n || n % tp_size != 0)
        st = tp_set_error(TP_ERR_INVALID_ARG,
                          "tp_topology: TP size %d does not divide the world size %d; choose a "
                          "TP size among the divisors of %d",
                          tp_size, n, n);
    else if ((st = node_key(me, n, &key)) == TP_OK && intra)
        st = tpi_comm_intra_check(world);
    char msg[TPI_ERROR_MAX] = "";
    if (st != TP_OK)
        snprintf(msg, sizeof msg, "%s", tp_last_error());
    int32_t mine[W_COUNT] = {
        [W_KEY_HI] = (int32_t)(uint32_t)(key >> 32),
        [W_KEY_LO] = (int32_t)(uint32_t)key,
        [W_STATUS] = (int32_t)st,
        [W_INTRA] = intra ? (int32_t)(fnv1a(intra->name) & 0x7fffffff) | 1 : 0,
        [W_ARGS] = (int32_t)((unsigned)tp_size << 1 | allow_span),
    };
    int32_t *all = calloc((size_t)n * W_COUNT, sizeof *all);
    uint64_t *keys = calloc((size_t)n, sizeof *keys);
    node_map m = {.node_of = calloc((size_t)n, sizeof(int)),
                  .local_of = calloc((size_t)n, sizeof(int)),
                  .size_of_node = calloc((size_t)n, sizeof(int))};
    if (!all || !keys || !m.node_of || !m.local_of || !m.size_of_node) {
        st = tp_set_error(TP_ERR_NO_MEMORY, "tp_topology: out of memory for %d ranks", n);
        goto out;
    }
    TP_TRY_GOTO(gather_words(world, mine, all), st, out);
    TP_TRY_GOTO(agree(all, n, me, msg, intra), st, out);
    for (int r = 0; r < n; r++)
        keys[r] = (uint64_t)(uint32_t)all[r * W_COUNT + W_KEY_HI] << 32 |
                  (uint32_t)all[r * W_COUNT + W_KEY_LO];
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
    free(all);
    free(keys);
    free(m.node_of);
    free(m.local_of);
    free(m.size_of_node);
    return st;
}
