/* SPDX-License-Identifier: MIT */
/*
 * tcp-plugin.c — the tcp communicator: descriptor, engine and communicators.
 *
 * One process per rank, started by tp-launch (or by hand) with
 *   TP_RANK          this process's rank, 0 .. TP_WORLD_SIZE-1
 *   TP_WORLD_SIZE    number of processes
 *   TP_MASTER_ADDR   address where rank 0 listens (default 127.0.0.1)
 *   TP_MASTER_PORT   port where rank 0 listens
 *   TP_TCP_CHUNK_BYTES  pipelining unit of the collectives (default 256 KiB)
 *   TP_TCP_SECRET    the job's shared secret: every connection is authenticated
 *                    with it (tp-launch sets a fresh one); TP_TCP_INSECURE=1
 *                    runs without one, for debugging
 * or by torchrun, whose RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT are read
 * when the TP_ forms are unset (tcp_env_job_read). Without a rank and world
 * size, and when at most one rank is asked for, it runs a single rank without
 * sockets.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tcp.h"

#define TCP_DEFAULT_CHUNK (256u * 1024u)

static int parse_int(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static void engine_free(tcp_engine *e)
{
    if (!e)
        return;
    if (e->peers)
        for (int i = 0; i < e->world; i++)
            if (e->peers[i].fd >= 0)
                close(e->peers[i].fd);
    free(e->peers);
    free(e->scratch);
    free(e->quiet);
    free(e->pfd);
    free(e->pfd_peer);
    if (e->secret) {
        volatile unsigned char *p = e->secret; /* do not leave it in freed memory */
        for (size_t i = 0; i < e->secret_len; i++)
            p[i] = 0;
        free(e->secret);
    }
    free(e);
}

/* The job as the environment describes it (tp-launch or torchrun sets it).
 * `env` holds the strings addr and port point into: do not copy a tcp_job. */
typedef struct tcp_job {
    long rank, world, chunk;
    const char *addr, *port;
    tcp_env_job env;
} tcp_job;

/* Read and check the rank, world size, master address and port (TP_ forms or
 * torchrun's, tcp_env_job_read) and TP_TCP_CHUNK_BYTES against the world size
 * the caller requested (0: any). */
static tp_status job_from_env(const tp_host *host, int requested, tcp_job *j)
{
    const char *chunk_s = getenv("TP_TCP_CHUNK_BYTES");
    j->rank = 0;
    j->world = 1;
    j->chunk = TCP_DEFAULT_CHUNK;
    tp_status st = tcp_env_job_read(host, &j->env);
    if (st != TP_OK)
        return st;
    const char *rank_s = j->env.rank.value, *world_s = j->env.world.value;
    const char *rname = j->env.rank.name, *wname = j->env.world.name;
    j->addr = j->env.addr.value ? j->env.addr.value : "127.0.0.1";
    j->port = j->env.port.value;
    if (world_s && parse_int(world_s, 1, TCP_MAX_WORLD, &j->world) < 0)
        return host->set_error(TP_ERR_INVALID_ARG, "tcp: %s=\"%s\" is not a number in 1..%d", wname,
                               world_s, TCP_MAX_WORLD);
    if (!rank_s && world_s && j->world > 1)
        return host->set_error(TP_ERR_INVALID_ARG,
                               "tcp: %s=%ld but TP_RANK (or RANK) is not set: the tcp backend "
                               "runs one process per rank; start them with `tp-launch -n %ld PROG`",
                               wname, j->world, j->world);
    if (!world_s && rank_s)
        return host->set_error(TP_ERR_INVALID_ARG,
                               "tcp: %s=%s but TP_WORLD_SIZE (or WORLD_SIZE) is not set: set "
                               "both, or start the ranks with `tp-launch -n N PROG`",
                               rname, rank_s);
    if (!world_s && requested > 1)
        return host->set_error(TP_ERR_INVALID_ARG,
                               "tcp: %d ranks requested but TP_RANK/TP_WORLD_SIZE are not set: the "
                               "tcp backend runs one process per rank; start them with "
                               "`tp-launch -n %d PROG`",
                               requested, requested);
    if (rank_s && parse_int(rank_s, 0, j->world - 1, &j->rank) < 0)
        return host->set_error(TP_ERR_INVALID_ARG,
                               "tcp: %s=\"%s\" is not a rank of %s=%ld (expected 0..%ld)", rname,
                               rank_s, wname, j->world, j->world - 1);
    if (requested > 0 && requested != j->world)
        return host->set_error(TP_ERR_INVALID_ARG,
                               "tcp: %d ranks requested (--tp or TP_WORLD_SIZE) but this job has "
                               "%s=%ld processes: start it with `tp-launch -n %d`, or "
                               "ask for %ld",
                               requested, wname, j->world, requested, j->world);
    if (chunk_s && parse_int(chunk_s, 16, 1L << 30, &j->chunk) < 0)
        return host->set_error(TP_ERR_INVALID_ARG,
                               "tcp: TP_TCP_CHUNK_BYTES=\"%s\" is not a number in 16..%ld", chunk_s,
                               1L << 30);
    if (j->world > 1 && !j->port)
        return host->set_error(TP_ERR_INVALID_ARG,
                               "tcp: TP_MASTER_PORT (or MASTER_PORT) is not set (rank %ld of %ld): "
                               "every rank needs the port where rank 0 listens; tp-launch sets it",
                               j->rank, j->world);
    return TP_OK;
}

static tp_status tcp_init(const tp_host *host, const tp_engine_args *args, void **engine,
                          tp_engine_info *info)
{
    int requested = args && args->struct_size >= offsetof(tp_engine_args, world_size) + sizeof(int)
                        ? args->world_size
                        : 0;
    tcp_job job;

    *engine = NULL;
    tp_status jst = job_from_env(host, requested, &job);
    if (jst != TP_OK)
        return jst;
    long rank = job.rank, world = job.world, chunk = job.chunk;
    const char *addr = job.addr, *port = job.port;

    tcp_engine *e = calloc(1, sizeof *e);
    if (!e)
        return host->set_error(TP_ERR_NO_MEMORY, "tcp: out of memory");
    e->host = host;
    e->rank = (int)rank;
    e->world = (int)world;
    e->timeout_s =
        host->struct_size >= offsetof(tp_host, timeout_s) + sizeof(double) && host->timeout_s > 0
            ? host->timeout_s
            : 300.0;
    e->chunk_bytes = (size_t)chunk & ~(size_t)7; /* a multiple of every element size */
    e->peers = calloc((size_t)world, sizeof *e->peers);
    e->scratch = malloc(e->chunk_bytes);
    e->scratch_len = e->chunk_bytes;
    e->quiet = calloc((size_t)world, 1);
    e->pfd = calloc((size_t)world, sizeof *e->pfd);
    e->pfd_peer = calloc((size_t)world, sizeof *e->pfd_peer);
    if (!e->peers || !e->scratch || !e->quiet || !e->pfd || !e->pfd_peer) {
        engine_free(e);
        return host->set_error(TP_ERR_NO_MEMORY, "tcp: out of memory");
    }
    for (long i = 0; i < world; i++)
        e->peers[i].fd = -1;
    if (world > 1) {
        tp_status ast = tcp_auth_setup(e);
        if (ast != TP_OK) {
            engine_free(e);
            return ast;
        }
        host->debug("comm", "tcp: rank %ld of %ld, master %s:%s, timeout %g s", rank, world, addr,
                    port, e->timeout_s);
        tp_status st = tcp_rendezvous(e, addr, port);
        if (st != TP_OK) {
            engine_free(e);
            return st;
        }
    }
    info->world_size = e->world;
    info->local_count = 1;
    info->first_rank = e->rank;
    *engine = e;
    return TP_OK;
}

static void tcp_finalize(void *engine)
{
    engine_free(engine);
}

static tp_status tcp_world(void *engine, int local_index, const tp_rank_env *env, void **comm,
                           int *rank, int *size)
{
    tcp_engine *e = engine;
    if (local_index != 0)
        return e->host->set_error(TP_ERR_INVALID_ARG,
                                  "tcp: local index %d asked for, but a tcp process runs exactly "
                                  "one rank (local index 0)",
                                  local_index);
    if (env && env->mem_kind != TP_MEM_HOST)
        return e->host->set_error(TP_ERR_NOT_SUPPORTED,
                                  "tcp: the device keeps tensors in %s memory, but the tcp backend "
                                  "sends from host memory only: use TP_DEVICE=cpu",
                                  env->mem_kind == TP_MEM_CUDA ? "CUDA device" : "non-host");
    tcp_comm *c = calloc(1, sizeof *c);
    if (c)
        c->members = malloc(sizeof(int) * (size_t)e->world);
    if (!c || !c->members) {
        free(c);
        return e->host->set_error(TP_ERR_NO_MEMORY, "tcp: out of memory");
    }
    for (int i = 0; i < e->world; i++)
        c->members[i] = i;
    c->eng = e;
    c->id = 0;
    c->rank = e->rank;
    c->size = e->world;
    *comm = c;
    *rank = c->rank;
    *size = c->size;
    return TP_OK;
}

static void tcp_comm_free(void *comm)
{
    tcp_comm *c = comm;
    if (!c)
        return;
    free(c->members);
    free(c);
}

static const tp_comm_ops tcp_ops = {
    .struct_size = sizeof(tp_comm_ops),
    .init = tcp_init,
    .finalize = tcp_finalize,
    .world = tcp_world,
    .split = tcp_split,
    .comm_free = tcp_comm_free,
    .all_reduce = tcp_all_reduce,
    .all_gather = tcp_all_gather,
    .reduce_scatter = tcp_reduce_scatter,
    .broadcast = tcp_broadcast,
    .barrier = tcp_barrier,
};

TP_PLUGIN_DEFINE("tcp", "0.1.0",
                 "processes on one or more hosts over TCP sockets (TP_RANK, TP_WORLD_SIZE, "
                 "TP_MASTER_ADDR, TP_MASTER_PORT, TP_TCP_SECRET; start with tp-launch)",
                 &tcp_ops, NULL, NULL)

/* Listed by `tp-info tcp`; tcp_env_job_read and README.md say more. */
TP_PLUGIN_DEFINE_SETTINGS(
    {"TP_RANK", "(required with 2+ ranks)", "this process's rank, 0 .. world size - 1; else RANK"},
    {"TP_WORLD_SIZE", "1", "number of processes; else WORLD_SIZE (torchrun)"},
    {"TP_MASTER_ADDR", "127.0.0.1", "address where rank 0 listens; else MASTER_ADDR"},
    {"TP_MASTER_PORT", "(required with 2+ ranks)",
     "port where rank 0 listens; else MASTER_PORT (+ 1 under torchrun's agent store)"},
    {"TP_MASTER_FD", "unset", "rank 0: an inherited listening socket on the port (tp-launch)"},
    {"TP_TCP_CHUNK_BYTES", "262144",
     "pipelining unit of the collectives, 16 .. 1 GiB; rank 0's value is used"},
    {"TP_TCP_SECRET", "(required with 2+ ranks)",
     "the job's shared secret, 16+ characters; tp-launch sets a fresh one"},
    {"TP_TCP_INSECURE", "0", "1: run without a secret (debugging only; warns)"},
    {"TORCHELASTIC_USE_AGENT_STORE", "unset",
     "set by torchrun: True moves rank 0 to MASTER_PORT + 1"})
