/* SPDX-License-Identifier: MIT */
/*
 * nodes-topo — one rank of a job under `tp-launch --nodes` (tcp, or mpi
 * under --mpi): prints where tp_topology() puts it, one line:
 *   layout rank=R host=H node=N nodes=M local=L/S tp_group=G tp_rank=T
 *          backend=B job=TP_JOB_ID lnodes=TP_LAUNCH_NODES link=TP_LAUNCH_LINK
 * (an unset variable shows as "-"),
 * then all-reduces its world rank inside its TP group and checks the sum
 * against the group's ranks (traffic on the group's links). argv[1]: the
 * TP size (default 2). Exit 0, or 1 with the error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <tp/tp.h>

typedef struct topo_args {
    int tp_size;
    const char *backend;
} topo_args;

static const char *env_or_dash(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : "-";
}

static tp_status rank_main(tp_comm *world, void *arg)
{
    const topo_args *a = arg;
    int tp_size = a->tp_size;
    tp_comm *tp = NULL;
    tp_layout l;
    tp_status st = tp_topology(world, tp_size, false, &tp, NULL, &l);
    if (st != TP_OK)
        return st;
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    printf("layout rank=%d host=%s node=%d nodes=%d local=%d/%d tp_group=%d tp_rank=%d "
           "backend=%s job=%s lnodes=%s link=%s\n",
           l.world_rank, host, l.node, l.nodes, l.local_rank, l.local_size, l.tp_group, l.tp_rank,
           a->backend, env_or_dash("TP_JOB_ID"), env_or_dash("TP_LAUNCH_NODES"),
           env_or_dash("TP_LAUNCH_LINK"));
    fflush(stdout);
    tp_device *dev = tp_comm_device(tp);
    int32_t mine = l.world_rank, sum = -1;
    void *d = NULL;
    st = tp_dev_alloc(dev, sizeof mine, &d);
    if (st == TP_OK)
        st = tp_dev_upload(dev, d, &mine, sizeof mine);
    if (st == TP_OK)
        st = tp_all_reduce(tp, d, d, 1, TP_I32, TP_SUM);
    if (st == TP_OK)
        st = tp_dev_download(dev, &sum, d, sizeof sum);
    tp_dev_free(dev, d);
    tp_comm_free(tp);
    if (st != TP_OK)
        return st;
    int first = l.tp_group * tp_size, want = 0; /* groups are consecutive ranks */
    for (int r = first; r < first + tp_size; r++)
        want += r;
    if (sum != want)
        return tp_set_error(TP_ERR_INTERNAL,
                            "nodes-topo: rank %d: TP group all-reduce gave %d, "
                            "expected %d",
                            l.world_rank, (int)sum, want);
    return TP_OK;
}

int main(int argc, char **argv)
{
    topo_args a = {.tp_size = argc > 1 ? atoi(argv[1]) : 2};
    tp_ctx *ctx = NULL;
    tp_status st = tp_init(NULL, &ctx);
    if (st == TP_OK) {
        a.backend = tp_ctx_backend(ctx);
        st = tp_run(ctx, rank_main, &a);
    }
    if (st != TP_OK)
        fprintf(stderr, "nodes-topo: %s\n", tp_last_error());
    tp_finalize(ctx);
    return st == TP_OK ? 0 : 1;
}
