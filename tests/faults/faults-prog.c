/* SPDX-License-Identifier: MIT */
/*
 * faults-prog — a small tp program for tests/faults, run as a child.
 *
 *   faults-prog collectives      two ranks, a few f32 all_reduces
 *   faults-prog collectives-nb   the same, as tp_iall_reduce + tp_wait
 *   faults-prog gemm             two ranks, rank 0 runs two 1x1x1 gemms
 *   faults-prog oom MB RANKS [N] RANKS ranks under an address-space limit of
 *                                the current size plus MB MiB (set after
 *                                tp_init), each allocating N f32 (default
 *                                16384), reducing and gathering them
 *   faults-prog exhaust MB RANKS the same limit; each rank allocates until
 *                                nothing is left (64 KiB blocks down to 32
 *                                bytes), keeps it all and returns the error:
 *                                tp must report it without memory
 *   faults-prog exhaust-nb MB RANKS  the same after one tp_iall_reduce (the
 *                                communicator then has nonblocking state
 *                                to end without memory)
 *
 * The backend and device come from TP_BACKEND / TP_DEVICE. Exit status 0
 * on success; 1 with "faults-prog: STATUS: message" on stderr on a tp
 * error; 77 when the mode cannot run here (oom under a sanitizer).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <tp/tp.h>

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

static size_t oom_elems = 1 << 14; /* f32 per rank */

/* Four all_reduces, blocking, or (arg non-NULL) started and waited for:
 * on a plugin without the nonblocking slots, the core's progress thread
 * makes the plugin calls. */
static tp_status collectives(tp_comm *w, void *arg)
{
    tp_device *dev = tp_comm_device(w);
    void *buf = NULL;
    tp_status st = tp_dev_alloc(dev, 4 * sizeof(float), &buf);
    for (int i = 0; i < 4 && !st; i++) {
        float v[4] = {1, 2, 3, (float)tp_comm_rank(w)};
        tp_request *r = NULL;
        st = tp_dev_upload(dev, buf, v, sizeof v);
        if (!st && !arg)
            st = tp_all_reduce(w, buf, buf, 4, TP_F32, TP_SUM);
        else if (!st && (st = tp_iall_reduce(w, buf, buf, 4, TP_F32, TP_SUM, &r)) == TP_OK)
            st = tp_wait(r);
    }
    tp_dev_free(dev, buf);
    return st;
}

static tp_status gemms(tp_comm *w, void *arg)
{
    (void)arg;
    tp_device *dev = tp_comm_device(w);
    float *m = NULL;
    tp_status st = tp_dev_alloc(dev, 3 * sizeof(float), (void **)&m);
    if (st)
        return st;
    m[0] = 2, m[1] = 3;
    tp_gemm_args g = {.struct_size = sizeof g,
                      .dtype = TP_F32,
                      .m = 1,
                      .n = 1,
                      .k = 1,
                      .a = m,
                      .lda = 1,
                      .b = m + 1,
                      .ldb = 1,
                      .c = m + 2,
                      .ldc = 1,
                      .alpha = 1,
                      .batch = 1};
    for (int i = 0; i < 2 && !st && tp_comm_rank(w) == 0; i++)
        st = tp_dev_gemm(dev, &g);
    if (!st)
        st = tp_barrier(w);
    tp_dev_free(dev, m);
    return st;
}

static tp_status big(tp_comm *w, void *arg)
{
    (void)arg;
    tp_device *dev = tp_comm_device(w);
    int n = tp_comm_size(w);
    size_t bytes = oom_elems * sizeof(float);
    void *a = NULL, *b = NULL;
    tp_status st = tp_dev_alloc(dev, bytes, &a);
    if (!st)
        st = tp_dev_alloc(dev, bytes * (size_t)n, &b);
    if (!st)
        st = tp_dev_memset(dev, a, 0, bytes);
    for (int i = 0; i < 2 && !st; i++)
        st = tp_all_reduce(w, a, a, oom_elems, TP_F32, TP_SUM);
    if (!st)
        st = tp_all_gather(w, a, b, oom_elems, TP_F32);
    if (!st)
        st = tp_reduce_scatter(w, a, b, oom_elems / (size_t)n, TP_F32, TP_SUM);
    tp_dev_free(dev, a);
    tp_dev_free(dev, b);
    return st;
}

/* Take every byte there is (the blocks are never freed: the process ends
 * after reporting), then fail as a program out of memory does. */
static tp_status exhaust(tp_comm *w, void *arg)
{
    (void)arg;
    long n = 0;
    for (size_t size = 65536; size >= 8; size /= 2)
        while (n < 100000000 && malloc(size))
            n++;
    return tp_set_error(TP_ERR_NO_MEMORY,
                        "exhaust: rank %d: no memory left after %ld blocks "
                        "(could not allocate 8 bytes)",
                        tp_comm_rank(w), n);
}

/* exhaust, after a nonblocking all_reduce on the world. */
static tp_status exhaust_nb(tp_comm *w, void *arg)
{
    tp_device *dev = tp_comm_device(w);
    void *a = NULL;
    tp_request *r = NULL;
    tp_status st = tp_dev_alloc(dev, 4 * sizeof(float), &a);
    if (st == TP_OK)
        st = tp_dev_memset(dev, a, 0, 4 * sizeof(float));
    if (st == TP_OK)
        st = tp_iall_reduce(w, a, a, 4, TP_F32, TP_SUM, &r);
    if (st == TP_OK)
        st = tp_wait(r);
    tp_dev_free(dev, a);
    return st == TP_OK ? exhaust(w, arg) : st;
}

/* The address space in use now (VmSize), in bytes; 0 if unknown. */
static size_t vm_size(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmSize: %zu kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb * 1024;
}

static int fail(const char *what, tp_status st)
{
    fprintf(stderr, "faults-prog: %s: %s: %s\n", what, tp_status_string(st), tp_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "collectives";
    tp_rank_fn fn = collectives;
    void *arg = NULL;
    tp_config cfg = {.world_size = 2};
    if (strcmp(mode, "gemm") == 0) {
        fn = gemms;
    } else if (strcmp(mode, "oom") == 0 || strncmp(mode, "exhaust", 7) == 0) {
#ifdef UNDER_ASAN
        return 77; /* the sanitizer's shadow memory does not fit an address-space limit */
#endif
        if (argc < 4)
            return 2;
        fn = strcmp(mode, "oom") == 0 ? big : strcmp(mode, "exhaust") == 0 ? exhaust : exhaust_nb;
        cfg.world_size = atoi(argv[3]);
        if (argc > 4)
            oom_elems = (size_t)atol(argv[4]);
    } else if (strcmp(mode, "collectives-nb") == 0) {
        arg = (void *)mode;
    } else if (strcmp(mode, "collectives") != 0) {
        fprintf(stderr, "faults-prog: unknown mode '%s'\n", mode);
        return 2;
    }
    tp_ctx *ctx = NULL;
    tp_status st = tp_init(&cfg, &ctx);
    if (st)
        return fail("tp_init", st);
    if (argc > 3) {
        struct rlimit rl;
        rl.rlim_cur = rl.rlim_max = vm_size() + (size_t)atoi(argv[2]) * 1024 * 1024;
        if (setrlimit(RLIMIT_AS, &rl) != 0) {
            perror("faults-prog: setrlimit");
            return 2;
        }
    }
    st = tp_run(ctx, fn, arg);
    if (st)
        return fail("tp_run", st);
    tp_finalize(ctx);
    printf("faults-prog: %s: ok\n", mode);
    return 0;
}
