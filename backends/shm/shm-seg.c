/* SPDX-License-Identifier: MIT */
/*
 * shm-seg.c — the segments: names, layout, create / open / map, unlink as
 * soon as every rank mapped, and the removal of segments left by jobs
 * whose processes were all killed.
 *
 * Name: /tp-shm-<uid>-<TP_JOB_ID> for the world, with -<16 hex digits> for
 * a communicator made by split. Mode 0600. The creator (world rank 0, or
 * the leader of a split colour) makes it with O_EXCL, reserves its pages
 * (posix_fallocate, so a full /dev/shm is an error, not a SIGBUS later),
 * writes the header and publishes the magic last. The others wait for the
 * name, check its owner, mode, size and header against what they expect
 * (computed from their own arguments), and map it. The nonblocking arena at
 * the end is reserved only when a rank first starts a nonblocking op on the
 * communicator (sh_seg_reserve: every rank does, which costs nothing once
 * one did). The rank whose mapping
 * completes the count unlinks the name: from then on the segment lives
 * only in the ranks' mappings and disappears with the last of them, even
 * after kill -9.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "shm.h"

size_t sh_data_offset(int size)
{
    size_t b = sizeof(sh_hdr) + (size_t)size * sizeof(sh_slot);
    return (b + 4095) / 4096 * 4096;
}

size_t sh_nb_bytes(const sh_engine *eng, int size)
{
    return size > 1 ? eng->nb_bytes : 0; /* one rank needs no staging */
}

size_t sh_total_bytes(int size, size_t chunk, size_t nb_bytes)
{
    return sh_data_offset(size) + (2 * (size_t)size + 2) * chunk + nb_bytes;
}

void sh_seg_name(const sh_engine *eng, uint64_t id, char *out, size_t len)
{
    if (id)
        snprintf(out, len, "/" SH_PREFIX "%u-%s-%016llx", (unsigned)getuid(), eng->job,
                 (unsigned long long)id);
    else
        snprintf(out, len, "/" SH_PREFIX "%u-%s", (unsigned)getuid(), eng->job);
}

static void sh_sleep_ms(int ms)
{
    struct timespec ts = {0, (long)ms * 1000000L};
    nanosleep(&ts, NULL);
}

static void sh_hdr_init(sh_hdr *h, int size, size_t chunk, size_t nb_bytes, size_t total)
{
    atomic_store_explicit(&h->creator_pid, (int)getpid(), memory_order_relaxed);
    atomic_store_explicit(&h->creator_start, sh_proc_start(getpid()), memory_order_relaxed);
    atomic_store_explicit(&h->magic, SH_MAGIC_INIT, memory_order_release);
    h->version = 1;
    h->size = size;
    h->chunk = chunk;
    h->total_bytes = total;
    h->nb_bytes = nb_bytes;
    atomic_init(&h->mapped, 0);
    atomic_init(&h->failed, 0);
    atomic_init(&h->poison_claim, 0);
    sc_bar_init(&h->bar);
    atomic_store_explicit(&h->magic, SH_MAGIC, memory_order_release);
}

/* Every process the header names (creator, attached ranks) is gone. The
 * header is read-only here and checked before its slots are read. */
static bool sh_hdr_dead(const sh_hdr *h, size_t file_bytes)
{
    uint64_t magic = atomic_load_explicit(&h->magic, memory_order_acquire);
    if (magic != SH_MAGIC && magic != SH_MAGIC_INIT && magic != SH_MAGIC_WIN)
        return false; /* not provably a tp segment */
    if (sh_proc_alive(atomic_load(&h->creator_pid), atomic_load(&h->creator_start)))
        return false;
    if (magic != SH_MAGIC)
        return true; /* being set up, or one rank's object of a window: the creator is gone */
    int size = h->size;
    if (size < 1 || size > SH_MAX_RANKS || file_bytes < sh_data_offset(size))
        return false;
    for (int r = 0; r < size; r++) {
        int pid = atomic_load(&h->slots[r].pid);
        if (pid && sh_proc_alive(pid, atomic_load(&h->slots[r].start)))
            return false;
    }
    return true;
}

/* Unlink /dev/shm/<base> if it is this user's tp segment and every process
 * it names is gone. Returns true if it was removed. */
static bool sh_try_remove(sh_engine *eng, const char *base)
{
    char path[SH_NAME_MAX + 16];
    snprintf(path, sizeof path, "/dev/shm/%s", base);
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return false;
    struct stat st;
    bool dead = false;
    size_t need = sh_data_offset(SH_MAX_RANKS);
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == getuid() &&
        (size_t)st.st_size >= sizeof(sh_hdr)) {
        size_t len = (size_t)st.st_size < need ? (size_t)st.st_size : need;
        void *p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
        if (p != MAP_FAILED) {
            dead = sh_hdr_dead(p, len);
            munmap(p, len);
        }
    }
    close(fd);
    if (dead && unlink(path) == 0) {
        if (eng->host->debug)
            eng->host->debug("comm", "shm: removed %s, left by a job whose processes are gone",
                             path);
        return true;
    }
    return false;
}

void sh_seg_clean_stale(sh_engine *eng)
{
    char prefix[64];
    snprintf(prefix, sizeof prefix, SH_PREFIX "%u-", (unsigned)getuid());
    DIR *d = opendir("/dev/shm");
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0 && strlen(e->d_name) < SH_NAME_MAX)
            sh_try_remove(eng, e->d_name);
    closedir(d);
}

/* Create the segment `name` of `total` bytes with its first `reserve`
 * reserved (the nonblocking arena after them is reserved at its first use,
 * sh_seg_reserve). */
static tp_status sh_create(sh_engine *eng, const char *name, size_t total, size_t reserve,
                           int *out_fd)
{
    const tp_host *host = eng->host;
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno == EEXIST && sh_try_remove(eng, name + 1))
        fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return host->set_error(errno == EEXIST ? TP_ERR_UNAVAILABLE : TP_ERR_IO,
                               "shm: cannot create the segment /dev/shm%s: %s%s", name,
                               strerror(errno),
                               errno == EEXIST ? " (a running job uses the same TP_JOB_ID: give "
                                                 "every job its own; tp-launch does)"
                                               : "");
    int rc = posix_fallocate(fd, 0, (off_t)reserve);
    if (rc == 0 && total > reserve && ftruncate(fd, (off_t)total) != 0)
        rc = errno;
    if (rc != 0) {
        shm_unlink(name);
        close(fd);
        return host->set_error(TP_ERR_NO_MEMORY,
                               "shm: cannot reserve %zu bytes for /dev/shm%s: %s; free space in "
                               "/dev/shm or lower TP_SHM_CHUNK_BYTES",
                               reserve, name, strerror(rc));
    }
    *out_fd = fd;
    return TP_OK;
}

/* Open a segment another rank creates: wait for the name and its size. */
static tp_status sh_open_wait(sh_engine *eng, const char *name, size_t total, int *out_fd)
{
    const tp_host *host = eng->host;
    double deadline = sc_now() + eng->timeout_s;
    for (;;) {
        int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
        struct stat st;
        if (fd >= 0 && fstat(fd, &st) == 0) {
            if (st.st_uid != getuid() || (st.st_mode & 077)) {
                close(fd);
                return host->set_error(TP_ERR_PEER,
                                       "shm: /dev/shm%s belongs to uid %u with mode %03o, "
                                       "expected uid %u and mode 600: refusing it",
                                       name, (unsigned)st.st_uid, (unsigned)(st.st_mode & 0777),
                                       (unsigned)getuid());
            }
            if ((size_t)st.st_size == total) {
                *out_fd = fd;
                return TP_OK;
            }
        }
        if (fd >= 0)
            close(fd);
        if (sc_now() > deadline)
            return host->set_error(TP_ERR_TIMEOUT,
                                   "shm: rank %d waited %.1f s for the segment /dev/shm%s of "
                                   "%zu bytes: its creator never made it (did every rank start "
                                   "with the same TP_JOB_ID, TP_WORLD_SIZE and "
                                   "TP_SHM_CHUNK_BYTES and TP_SHM_NB_BYTES?)",
                                   eng->rank, eng->timeout_s, name, total);
        sh_sleep_ms(2);
    }
}

/* Check an opened header against what this rank expects. */
static tp_status sh_check_hdr(sh_engine *eng, const char *name, const sh_hdr *h, int size,
                              size_t nb_bytes, size_t total)
{
    double deadline = sc_now() + eng->timeout_s;
    while (atomic_load_explicit(&h->magic, memory_order_acquire) != SH_MAGIC) {
        if (sc_now() > deadline)
            return eng->host->set_error(TP_ERR_TIMEOUT,
                                        "shm: the segment /dev/shm%s was never set up by its "
                                        "creator (pid %d)",
                                        name, atomic_load(&h->creator_pid));
        sh_sleep_ms(1);
    }
    /* A segment of an earlier job with the same name whose creator died:
     * the caller waits for the new one. */
    if (!sh_proc_alive(atomic_load(&h->creator_pid), atomic_load(&h->creator_start)))
        return TP_ERR_UNAVAILABLE;
    if (h->version != 1 || h->size != size || h->chunk != eng->chunk || h->nb_bytes != nb_bytes ||
        h->total_bytes != total)
        return eng->host->set_error(TP_ERR_PEER,
                                    "shm: the segment /dev/shm%s was made for %d ranks with "
                                    "%llu-byte chunks and a %llu-byte nonblocking arena, but "
                                    "this rank expects %d ranks, %zu-byte chunks and %zu bytes: "
                                    "start every rank with the same TP_WORLD_SIZE, "
                                    "TP_SHM_CHUNK_BYTES and TP_SHM_NB_BYTES",
                                    name, h->size, (unsigned long long)h->chunk,
                                    (unsigned long long)h->nb_bytes, size, eng->chunk, nb_bytes);
    return TP_OK;
}

/* Map the segment (name NULL: a private mapping); *fd stays open (-1 if
 * private) for sh_seg_reserve. */
static tp_status sh_map(sh_engine *eng, const char *name, bool create, size_t total, size_t reserve,
                        sh_hdr **out, int *fd)
{
    void *p;
    *fd = -1;
    if (!name) {
        p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    } else {
        tp_status st =
            create ? sh_create(eng, name, total, reserve, fd) : sh_open_wait(eng, name, total, fd);
        if (st != TP_OK)
            return st;
        p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
    }
    if (p == MAP_FAILED) {
        int err = errno;
        if (*fd >= 0)
            close(*fd);
        *fd = -1;
        if (create && name)
            shm_unlink(name);
        return eng->host->set_error(TP_ERR_NO_MEMORY, "shm: mmap of %zu bytes (%s) failed: %s",
                                    total, name ? name : "private", strerror(err));
    }
    *out = p;
    return TP_OK;
}

tp_status sh_seg_attach(sh_engine *eng, const char *name, bool create, int size, int rank,
                        sh_comm *c)
{
    size_t nb = sh_nb_bytes(eng, size), total = sh_total_bytes(size, eng->chunk, nb);
    sh_hdr *h = NULL;
    int fd = -1;
    double deadline = sc_now() + eng->timeout_s;
    for (;;) {
        tp_status st = sh_map(eng, name, create || !name, total, total - nb, &h, &fd);
        if (st != TP_OK)
            return st;
        if (create || !name) {
            sh_hdr_init(h, size, eng->chunk, nb, total);
            break;
        }
        st = sh_check_hdr(eng, name, h, size, nb, total);
        if (st == TP_OK)
            break;
        munmap(h, total);
        close(fd);
        if (st != TP_ERR_UNAVAILABLE)
            return st;
        if (sc_now() > deadline)
            return eng->host->set_error(TP_ERR_TIMEOUT,
                                        "shm: /dev/shm%s belongs to a job whose creator is gone, "
                                        "and no new one replaced it within %.1f s",
                                        name, eng->timeout_s);
        sh_sleep_ms(5);
    }
    sh_slot *me = &h->slots[rank];
    int other = atomic_load(&me->pid);
    if (other && sh_proc_alive(other, atomic_load(&me->start))) {
        munmap(h, total);
        if (fd >= 0)
            close(fd);
        return eng->host->set_error(TP_ERR_INVALID_ARG,
                                    "shm: rank %d of /dev/shm%s is already taken by pid %d: two "
                                    "processes were started with the same TP_RANK",
                                    rank, name ? name : "", other);
    }
    atomic_store(&me->start, sh_proc_start(getpid()));
    atomic_store(&me->pid, (int)getpid());
    if (atomic_fetch_add(&h->mapped, 1) + 1 == size && name)
        shm_unlink(name); /* every rank mapped it */
    *c = (sh_comm){.eng = eng,
                   .h = h,
                   .map_bytes = total,
                   .data = (unsigned char *)h + sh_data_offset(size),
                   .rank = rank,
                   .size = size,
                   .fd = fd,
                   .nb_arena = nb};
    return TP_OK;
}

void sh_seg_detach(sh_comm *c)
{
    if (c->h) { /* attached: map and fd are its */
        munmap(c->h, c->map_bytes);
        if (c->fd >= 0)
            close(c->fd);
    }
    c->h = NULL;
    c->fd = -1;
}

tp_status sh_seg_reserve(sh_comm *c)
{
    if (c->nb_reserved || !c->nb_arena || c->fd < 0)
        return TP_OK;
    int rc =
        posix_fallocate(c->fd, (off_t)(sh_arena(c) - (unsigned char *)c->h), (off_t)c->nb_arena);
    if (rc != 0)
        return sh_poison(c, TP_ERR_NO_MEMORY,
                         "rank %d cannot reserve the %zu-byte nonblocking arena of its %d-rank "
                         "communicator in /dev/shm: %s; free space in /dev/shm or lower "
                         "TP_SHM_NB_BYTES (at least %d; larger ops go in pieces)",
                         c->rank, c->nb_arena, c->size, strerror(rc), 2 * SH_MAX_RANKS * SC_LINE);
    c->nb_reserved = true;
    return TP_OK;
}
