/* SPDX-License-Identifier: MIT */
/*
 * shm-env.c — numbers from the environment and the engine's knobs, for
 * both ways an engine is made (init for a standalone job, comm_create for
 * an intra-node group).
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shm.h"

bool sh_parse(const char *s, long lo, long hi, long *out)
{
    if (!s || !*s)
        return false;
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

tp_status sh_knobs(const tp_host *host, sh_engine *eng)
{
    long v = 0;
    const char *s = getenv("TP_SHM_CHUNK_BYTES");
    eng->chunk = (size_t)256 << 10;
    if (s && *s) {
        if (!sh_parse(s, 4096, 64L << 20, &v))
            return host->set_error(TP_ERR_INVALID_ARG,
                                   "shm: TP_SHM_CHUNK_BYTES=\"%s\" is not a number of bytes in "
                                   "4096..%ld",
                                   s, 64L << 20);
        eng->chunk = (size_t)v / SC_LINE * SC_LINE;
    }
    /* nonblocking ops stage every rank's input in the arena; larger ones
     * go in pieces of half of it (shm-nb.c): at least a line per rank */
    eng->nb_bytes = (size_t)32 << 20;
    if ((s = getenv("TP_SHM_NB_BYTES")) && *s) {
        if (!sh_parse(s, 2 * SH_MAX_RANKS * SC_LINE, 1L << 40, &v))
            return host->set_error(TP_ERR_INVALID_ARG,
                                   "shm: TP_SHM_NB_BYTES=\"%s\" is not a number of bytes in "
                                   "%d..2^40",
                                   s, 2 * SH_MAX_RANKS * SC_LINE);
        eng->nb_bytes = (size_t)v / SC_LINE * SC_LINE;
    }
    int ncpu = sc_cpu_count();
    /* Pin rank r to CPU r mod CPUs when the ranks fill the CPUs, as mpirun
     * binds ranks and loopback pins its threads: an unpinned pair of
     * processes lands on one CPU now and then under load, and every wait
     * becomes a context switch (8 B all_reduce: 16-27 us instead of 1). */
    s = getenv("TP_SHM_BIND");
    eng->bind = s && *s ? strcmp(s, "0") != 0 : eng->world_size >= 2 && eng->world_size >= ncpu;
    eng->spin_limit = eng->world_size > ncpu ? 16 : 200;
    if ((s = getenv("TP_SHM_SPIN")) && sh_parse(s, 0, 1L << 30, &v))
        eng->spin_limit = (unsigned)v;
    /* the one-shot threshold, as loopback's (see lb_init); the decode MLP
     * at T=2 on shm: comm % 60 -> 39 % with 4 KiB instead of 1 KiB */
    eng->small_bytes = SH_SMALL_BYTES;
    if ((s = getenv("TP_SHM_SMALL_BYTES")) && sh_parse(s, 0, SH_SMALL_BYTES, &v))
        eng->small_bytes = (size_t)v;
    long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (llc <= 0)
        llc = sysconf(_SC_LEVEL2_CACHE_SIZE);
    eng->stream_bytes = llc > 0 ? (size_t)llc : (size_t)32 << 20;
    return TP_OK;
}
