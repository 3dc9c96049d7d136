/* SPDX-License-Identifier: MIT */
/*
 * shm-mem.c — symmetric memory (tp_comm_mem_alloc): windows that every
 * rank of a communicator maps, so a collective on them needs no staging.
 *
 * The n-th allocation on a communicator is window n on every rank. Each
 * rank creates its own object /tp-shm-<uid>-<job>[-<comm id>]-w<n>-<rank>
 * (mode 0600, pages reserved so a full /dev/shm is an error here, not a
 * SIGBUS later; a header page names the creator so that a kill -9 before
 * the unlink leaves nothing the next job does not remove); the ranks agree
 * (the same size, every creation worked); every rank maps every rank's
 * object; they agree again; each unlinks its own name. From then on a
 * window lives only in the ranks' mappings. A collective whose buffers lie
 * in windows on every rank publishes (window, offset) and each rank
 * computes its share straight from its peers' windows (shm-coll.c). A
 * peer's (window, offset) is checked against this rank's own table and
 * sizes before it is used.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "shm.h"

size_t sh_win_hdr_bytes(void)
{
    return (sizeof(sh_hdr) + 4095) / 4096 * 4096;
}

static void sh_win_name(const sh_comm *c, uint64_t id, int rank, char *out, size_t len)
{
    char base[SH_NAME_MAX];
    sh_seg_name(c->eng, c->id, base, sizeof base);
    snprintf(out, len, "%s-w%llx-%d", base, (unsigned long long)id, rank);
}

static void sh_win_unmap(sh_comm *c, sh_win *w)
{
    for (int r = 0; r < c->size; r++)
        if (w->map[r])
            munmap(w->map[r], w->map_bytes);
}

/* Create, reserve and map this rank's object of window w (named `name`). */
static tp_status sh_win_create(sh_comm *c, sh_win *w, const char *name, char *msg, size_t len)
{
    struct statvfs vfs;
    if (statvfs("/dev/shm", &vfs) == 0 &&
        w->map_bytes / vfs.f_frsize >= (unsigned long long)vfs.f_bavail) {
        snprintf(msg, len,
                 "rank %d cannot allocate %zu bytes of symmetric memory: /dev/shm has %llu bytes "
                 "free; free space there or allocate less",
                 c->rank, w->bytes,
                 (unsigned long long)vfs.f_bavail * (unsigned long long)vfs.f_frsize);
        return TP_ERR_NO_MEMORY;
    }
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(msg, len, "rank %d cannot create /dev/shm%.100s: %s", c->rank, name,
                 strerror(errno));
        return TP_ERR_IO;
    }
    int rc = posix_fallocate(fd, 0, (off_t)w->map_bytes);
    void *p = rc ? MAP_FAILED : mmap(NULL, w->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED && !rc)
        rc = errno;
    close(fd);
    if (rc) {
        shm_unlink(name);
        snprintf(msg, len,
                 "rank %d cannot reserve %zu bytes of symmetric memory in /dev/shm: %s; free "
                 "space there or allocate less",
                 c->rank, w->map_bytes, strerror(rc));
        return TP_ERR_NO_MEMORY;
    }
    sh_hdr *h = p; /* what sh_seg_clean_stale reads if this rank dies before the unlink */
    atomic_store_explicit(&h->creator_pid, (int)getpid(), memory_order_relaxed);
    atomic_store_explicit(&h->creator_start, sh_proc_start(getpid()), memory_order_relaxed);
    atomic_store_explicit(&h->magic, SH_MAGIC_WIN, memory_order_release);
    w->map[c->rank] = p;
    return TP_OK;
}

/* Map every peer's object of window w (all exist: the ranks agreed). */
static tp_status sh_win_map_peers(sh_comm *c, sh_win *w, char *msg, size_t len)
{
    for (int r = 0; r < c->size; r++) {
        if (r == c->rank)
            continue;
        char name[SH_NAME_MAX + 32];
        sh_win_name(c, w->id, r, name, sizeof name);
        int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0) {
            snprintf(msg, len, "rank %d cannot open rank %d's window /dev/shm%.100s: %s", c->rank,
                     r, name, strerror(errno));
            if (fd >= 0)
                close(fd);
            return TP_ERR_PEER;
        }
        if (st.st_uid != getuid() || (st.st_mode & 077) || (size_t)st.st_size != w->map_bytes) {
            snprintf(msg, len,
                     "rank %d's window (w%llx) has uid %u, mode %03o and %lld bytes; expected "
                     "uid %u, mode 600 and %zu bytes",
                     r, (unsigned long long)w->id, (unsigned)st.st_uid,
                     (unsigned)(st.st_mode & 0777), (long long)st.st_size, (unsigned)getuid(),
                     w->map_bytes);
            close(fd);
            return TP_ERR_PEER;
        }
        void *p = mmap(NULL, w->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        int err = errno;
        close(fd);
        if (p == MAP_FAILED) {
            snprintf(msg, len, "rank %d cannot map rank %d's window (%zu bytes): %s", c->rank, r,
                     w->map_bytes, strerror(err));
            return TP_ERR_NO_MEMORY;
        }
        w->map[r] = p;
    }
    return TP_OK;
}

tp_status sh_mem_alloc(void *comm, size_t bytes, void **ptr)
{
    sh_comm *c = comm;
    size_t hb = sh_win_hdr_bytes();
    sh_win w = {.id = ++c->win_seq, .bytes = bytes};
    char name[SH_NAME_MAX + 32], msg[200] = "";
    sh_win_name(c, w.id, c->rank, name, sizeof name);
    tp_status bad = TP_OK;
    if (bytes > SIZE_MAX - hb - 4095)
        bad = sc_bad(msg, sizeof msg, "%zu bytes of symmetric memory overflow the address space",
                     bytes);
    else
        w.map_bytes = hb + (bytes + 4095) / 4096 * 4096;
    if (!bad && c->nwin == c->capwin) {
        int cap = c->capwin ? 2 * c->capwin : 4;
        sh_win *more = realloc(c->wins, (size_t)cap * sizeof *more);
        if (more) {
            c->wins = more;
            c->capwin = cap;
        } else {
            snprintf(msg, sizeof msg, "rank %d: out of memory for the window table", c->rank);
            bad = TP_ERR_NO_MEMORY;
        }
    }
    if (!bad)
        bad = sh_win_create(c, &w, name, msg, sizeof msg);
    sh_pub a = {.count = bytes, .dt = -1, .op = -1, .root = -1};
    tp_status st = sh_begin(c, SC_MEM_ALLOC, &a, bad, msg);
    if (st == TP_OK) {
        bad = sh_win_map_peers(c, &w, msg, sizeof msg);
        st = sh_begin(c, SC_MEM_ALLOC, &a, bad, msg);
    }
    if (w.map[c->rank])
        shm_unlink(name); /* every rank mapped it, or the allocation failed */
    if (st != TP_OK) {
        sh_win_unmap(c, &w);
        return st;
    }
    c->wins[c->nwin++] = w;
    *ptr = w.map[c->rank] + hb;
    if (c->eng->host->debug)
        c->eng->host->debug("comm", "shm: rank %d of %d: symmetric window #%llu, %zu bytes at %p",
                            c->rank, c->size, (unsigned long long)w.id, bytes, *ptr);
    return TP_OK;
}

void sh_mem_free(void *comm, void *ptr)
{
    sh_comm *c = comm;
    for (int i = 0; i < c->nwin; i++) {
        if (c->wins[i].map[c->rank] + sh_win_hdr_bytes() != (unsigned char *)ptr)
            continue;
        sh_win_unmap(c, &c->wins[i]);
        c->wins[i] = c->wins[--c->nwin];
        return;
    }
}

void sh_mem_end(sh_comm *c)
{
    for (int i = 0; i < c->nwin; i++)
        sh_win_unmap(c, &c->wins[i]);
    free(c->wins);
    c->wins = NULL;
    c->nwin = c->capwin = 0;
}

uint64_t sh_win_find(const sh_comm *c, const void *p, size_t bytes, uint64_t *off)
{
    const unsigned char *q = p;
    size_t hb = sh_win_hdr_bytes();
    for (int i = 0; i < c->nwin; i++) {
        const unsigned char *base = c->wins[i].map[c->rank] + hb;
        if (q >= base && (size_t)(q - base) <= c->wins[i].bytes &&
            bytes <= c->wins[i].bytes - (size_t)(q - base)) {
            *off = (uint64_t)(q - base);
            return c->wins[i].id;
        }
    }
    return 0;
}

unsigned char *sh_win_at(const sh_comm *c, uint64_t id, int r, uint64_t off, size_t bytes)
{
    for (int i = 0; i < c->nwin; i++) {
        const sh_win *w = &c->wins[i];
        if (w->id != id)
            continue;
        if (off > w->bytes || bytes > w->bytes - off)
            return NULL;
        return w->map[r] + sh_win_hdr_bytes() + off;
    }
    return NULL;
}
