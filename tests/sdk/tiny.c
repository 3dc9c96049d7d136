/* SPDX-License-Identifier: MIT */
/*
 * tiny.c — the smallest useful communicator plugin: a world of one rank.
 *
 * tests/sdk builds this file out of tree against an installed SDK
 * (`cc $(pkg-config --cflags tp) -shared -fPIC`), loads it with
 * TP_PLUGIN_PATH + TP_BACKEND=tiny and runs tp-conformance on it: the proof
 * that the installed SDK alone is enough to write a plugin.
 */
#include <string.h>

#include <tp/tp-plugin.h>

static const tp_host *host;
static int engine_token, comm_token;

static size_t dtype_size(tp_dtype dt)
{
    switch (dt) {
        case TP_F32:
        case TP_I32: return 4;
        case TP_F16:
        case TP_BF16: return 2;
        default: return 0;
    }
}

static tp_status tiny_init(const tp_host *h, const tp_engine_args *args, void **engine,
                           tp_engine_info *info)
{
    host = h;
    if (args->world_size > 1)
        return h->set_error(TP_ERR_INVALID_ARG,
                            "tiny: world size %d requested, but this plugin runs exactly 1 rank; "
                            "use --tp 1 or TP_WORLD_SIZE=1",
                            args->world_size);
    *engine = &engine_token;
    info->world_size = 1;
    info->local_count = 1;
    info->first_rank = 0;
    return TP_OK;
}

static void tiny_finalize(void *engine)
{
    (void)engine;
}

static tp_status tiny_world(void *engine, int local_index, const tp_rank_env *env, void **comm,
                            int *rank, int *size)
{
    if (env->mem_kind != TP_MEM_HOST)
        return host->set_error(TP_ERR_NOT_SUPPORTED, "tiny: only host memory is supported");
    *comm = &comm_token;
    *rank = 0;
    *size = 1;
    return TP_OK;
}

static tp_status tiny_split(void *comm, int color, int key, void **newcomm, int *rank, int *size)
{
    *newcomm = color < 0 ? NULL : &comm_token;
    *rank = 0;
    *size = 1;
    return TP_OK;
}

static void tiny_comm_free(void *comm)
{
    (void)comm;
}

/* With one rank every collective is a copy of the rank's own data. */
static tp_status copy(const void *send, void *recv, size_t count, tp_dtype dt)
{
    size_t es = dtype_size(dt);
    if (es == 0)
        return host->set_error(TP_ERR_NOT_SUPPORTED, "tiny: unknown dtype %d", (int)dt);
    if (send != recv && count > 0)
        memmove(recv, send, count * es);
    return TP_OK;
}

static tp_status tiny_all_reduce(void *comm, const void *send, void *recv, size_t count,
                                 tp_dtype dt, tp_redop op)
{
    return copy(send, recv, count, dt);
}

static tp_status tiny_all_gather(void *comm, const void *send, void *recv, const size_t *counts,
                                 tp_dtype dt)
{
    return copy(send, recv, counts[0], dt);
}

static tp_status tiny_reduce_scatter(void *comm, const void *send, void *recv, const size_t *counts,
                                     tp_dtype dt, tp_redop op)
{
    return copy(send, recv, counts[0], dt);
}

static tp_status tiny_broadcast(void *comm, void *buf, size_t count, tp_dtype dt, int root)
{
    return TP_OK;
}

static tp_status tiny_barrier(void *comm)
{
    return TP_OK;
}

static const tp_comm_ops tiny_ops = {
    .struct_size = sizeof(tp_comm_ops),
    .init = tiny_init,
    .finalize = tiny_finalize,
    .world = tiny_world,
    .split = tiny_split,
    .comm_free = tiny_comm_free,
    .all_reduce = tiny_all_reduce,
    .all_gather = tiny_all_gather,
    .reduce_scatter = tiny_reduce_scatter,
    .broadcast = tiny_broadcast,
    .barrier = tiny_barrier,
};

TP_PLUGIN_DEFINE("tiny", "1.0", "a world of one rank, built out of tree from the installed SDK",
                 &tiny_ops, NULL, NULL)
