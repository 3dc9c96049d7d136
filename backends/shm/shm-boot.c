/* SPDX-License-Identifier: MIT */
/*
 * shm-boot.c — comm_create: shm as the intra-node backend of a job whose
 * world runs on another plugin (TP_INTRA_BACKEND=shm).
 *
 * The group's ranks all-gather, through the bootstrap communicator, their
 * node name, the machine's boot id and (rank 0's) a fresh group id
 * "g<pid>-<start time>-<n>", unique on the machine. A group whose ranks
 * name different nodes, or sit on different machines, is refused alike on
 * every rank, naming the nodes. Otherwise the segment
 * /tp-shm-<uid>-<group id> is made by rank 0 and mapped by the others as
 * for a standalone job; the engine (knobs, timeout) belongs to the
 * communicator and to those split from it, and goes with the last of them.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shm.h"

typedef struct sh_boot_info {
    char node[64];
    char boot_id[40];
    char job[40];
} sh_boot_info;

static void sh_boot_id(char *out, size_t len)
{
    snprintf(out, len, "unknown");
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, out, len - 1);
    close(fd);
    if (n > 0) {
        out[n] = '\0';
        out[strcspn(out, "\n")] = '\0';
    }
}

/* The same verdict on every rank: all nodes and machines equal. */
static tp_status sh_check_nodes(const tp_host *host, const sh_boot_info *all, int n)
{
    char list[600] = "";
    size_t used = 0;
    bool differ = false, machines = false;
    for (int r = 0; r < n; r++) {
        if (strncmp(all[r].node, all[0].node, sizeof all[r].node) != 0)
            differ = true;
        else if (strncmp(all[r].boot_id, all[0].boot_id, sizeof all[r].boot_id) != 0)
            machines = true;
        else if (r > 0)
            continue;
        int w = snprintf(list + used, sizeof list - used, "%srank %d on '%.63s'", r ? ", " : "", r,
                         all[r].node);
        if (w < 0 || (size_t)w >= sizeof list - used)
            break;
        used += (size_t)w;
    }
    if (differ)
        return host->set_error(TP_ERR_INVALID_ARG,
                               "shm: cannot create a %d-rank communicator across nodes (%s): shm "
                               "works between processes of one node; keep groups that span "
                               "nodes on the world backend",
                               n, list);
    if (machines)
        return host->set_error(TP_ERR_INVALID_ARG,
                               "shm: the %d ranks name one node but run on different machines "
                               "(their boot ids differ: %s): shared memory cannot connect them",
                               n, list);
    return TP_OK;
}

static bool sh_job_ok(const char *job, size_t cap)
{
    size_t len = strnlen(job, cap);
    return len > 0 && len < cap &&
           strspn(job, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == len;
}

static tp_status sh_exchange(const tp_host *host, const tp_bootstrap *boot, sh_engine *eng)
{
    static atomic_uint groups;
    sh_boot_info mine, *all = calloc((size_t)boot->size, sizeof *all);
    memset(&mine, 0, sizeof mine);
    if (!all)
        return host->set_error(TP_ERR_NO_MEMORY, "shm: out of memory for the bootstrap");
    snprintf(mine.node, sizeof mine.node, "%s", boot->node ? boot->node : "");
    sh_boot_id(mine.boot_id, sizeof mine.boot_id);
    if (boot->rank == 0)
        snprintf(mine.job, sizeof mine.job, "g%d-%llx-%u", (int)getpid(),
                 (unsigned long long)sh_proc_start(getpid()), atomic_fetch_add(&groups, 1));
    tp_status st = boot->all_gather(boot->ctx, &mine, all, sizeof mine);
    if (st == TP_OK)
        st = sh_check_nodes(host, all, boot->size);
    if (st == TP_OK && !sh_job_ok(all[0].job, sizeof all[0].job))
        st = host->set_error(TP_ERR_PEER, "shm: rank 0 of the group sent a malformed group id");
    if (st == TP_OK)
        snprintf(eng->job, sizeof eng->job, "%s", all[0].job);
    free(all);
    return st;
}

tp_status sh_comm_create(const tp_host *host, const tp_bootstrap *boot, const tp_rank_env *env,
                         void **comm)
{
    (void)env; /* host memory only: the core checked the memory kinds */
    if (!boot || boot->struct_size < offsetof(tp_bootstrap, all_gather) + sizeof boot->all_gather ||
        !boot->all_gather || boot->size < 1 || boot->size > SH_MAX_RANKS || boot->rank < 0 ||
        boot->rank >= boot->size)
        return host->set_error(TP_ERR_INVALID_ARG,
                               "shm: comm_create got an invalid bootstrap (rank %d of %d; shm "
                               "takes 1..%d ranks)",
                               boot ? boot->rank : -1, boot ? boot->size : 0, SH_MAX_RANKS);
    sh_engine *eng = calloc(1, sizeof *eng);
    sh_comm *c = calloc(1, sizeof *c);
    tp_status st = TP_OK;
    if (!eng || !c)
        st = host->set_error(TP_ERR_NO_MEMORY, "shm: out of memory creating a communicator");
    if (st == TP_OK) {
        eng->host = host;
        eng->timeout_s = host->timeout_s > 0 ? host->timeout_s : 300.0;
        eng->world_size = boot->size;
        eng->rank = boot->rank;
        eng->by_comms = true;
        atomic_init(&eng->refs, 1);
        st = sh_knobs(host, eng);
    }
    /* Every rank joins the exchange, even one that already failed. */
    sh_engine dummy = {0};
    tp_status xs = sh_exchange(host, boot, eng ? eng : &dummy);
    st = st != TP_OK ? st : xs;
    char name[SH_NAME_MAX];
    const char *nm = NULL;
    if (st == TP_OK && boot->size > 1) {
        sh_seg_name(eng, 0, name, sizeof name);
        nm = name;
        if (boot->rank == 0)
            sh_seg_clean_stale(eng);
    }
    if (st == TP_OK)
        st = sh_seg_attach(eng, nm, boot->rank == 0, boot->size, boot->rank, c);
    if (st == TP_OK && (st = sh_join(c, nm)) != TP_OK)
        sh_seg_detach(c);
    if (st != TP_OK) {
        free(c);
        free(eng);
        return st;
    }
    if (host->debug)
        host->debug("comm", "shm: rank %d of a %d-rank intra-node group mapped %s", c->rank,
                    c->size, nm ? nm : "(private: one rank)");
    *comm = c;
    return TP_OK;
}
