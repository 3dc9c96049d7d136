/* SPDX-License-Identifier: MIT */
/*
 * test-device.c — device conformance: every op of a device plugin against
 * plain-loop references written here, plus finite-difference checks of the
 * backward kernels and the error paths.
 *
 * Which device: TP_DEVICE (default "cpu"). How it is reached:
 *   TP_DEVICE_TEST_VIA=vtable  load libtp-$TP_DEVICE.so from TP_PLUGIN_PATH
 *                              with dlopen and call its tp_device_ops directly
 *                              (needs no libtp runtime);
 *   TP_DEVICE_TEST_VIA=api     (default) tp_init + tp_run with one loopback
 *                              rank, calling the public tp_dev_* functions.
 * A device that cannot run here (not built, probe says no) makes the whole
 * program exit 77 with the reason.
 *
 * The tests live in one file per area, all added to one Check test case
 * in this order: test-device-memory.c, -gemm.c, -kernels.c (element-wise
 * and finite differences), -lowp.c (bf16/f16), -slots.c (ABI 1.1 optional
 * slots), -errors.c, then the concurrency tests here. device-harness.[ch]
 * hold the device under test, its buffers, the test data and the
 * tolerance model (see device-harness.h).
 */
#include <dlfcn.h>
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include "device-harness.h"

/* ---------------------------------------------------------- concurrency */

/* Ranks are threads of one process, each with its own device: 4 of them
 * running the same checks at once must each still get exact results
 * (per-rank contexts, thread-safe BLAS / streams). */
static void body_concurrent(void)
{
    body_gemm();
    body_softmax();
    body_norm();
    body_ce();
}

START_TEST(t_concurrent)
{
    with_devices(body_concurrent, 4);
}
END_TEST

/* Every rank reduces the next rank's buffer into its own, all at once:
 * reduce takes buffers of the other ranks' devices in this process (as
 * the loopback comm uses it on device memory). Integers below 2^24: exact.
 * Ranks on GPUs without peer access may refuse, naming it. */
enum {
    RR_RANKS = 4,
    RR_N = 4097
};
static void *rr_x[RR_RANKS];
static pthread_barrier_t rr_bar;

static void body_reduce_ranks(void)
{
    int r = rank_id, nx = (r + 1) % RR_RANKS;
    float *hx = hzalloc(RR_N), *hy = hzalloc(RR_N), *out = hzalloc(RR_N);

    ck_assert_msg(D->reduce, "device '%s' has no reduce slot", dev_name);
    for (int i = 0; i < RR_N; i++) {
        hx[i] = (float)(r * 10000 + i);
        hy[i] = (float)(r * 100000 + 2 * i);
    }
    rr_x[r] = dput(hx, RR_N * 4);
    void *y = dput(hy, RR_N * 4);
    pthread_barrier_wait(&rr_bar); /* every x is written (upload waits) */
    tp_status st = D->reduce(H, TP_F32, TP_SUM, RR_N, rr_x[nx], y);
    if (st == TP_ERR_NOT_SUPPORTED && strcasestr(last_msg(), "peer")) {
        printf("reduce ranks: rank %d cannot reach rank %d's buffer: %s\n", r, nx, last_msg());
    } else {
        expect_status(st, TP_OK, "rank %d: reduce of rank %d's buffer", r, nx);
        dget(out, y, RR_N * 4);
        for (int i = 0; i < RR_N; i++)
            ck_assert_msg(out[i] == hy[i] + (float)(nx * 10000 + i),
                          "rank %d: y[%d] = %.9g after adding rank %d's x, expected %.9g", r, i,
                          out[i], nx, hy[i] + (float)(nx * 10000 + i));
    }
    pthread_barrier_wait(&rr_bar); /* every reduce is done (download waits) before x is freed */
    free(hx), free(hy), free(out);
}

START_TEST(t_reduce_ranks)
{
    memset(rr_x, 0, sizeof rr_x);
    ck_assert_int_eq(pthread_barrier_init(&rr_bar, NULL, RR_RANKS), 0);
    with_devices(body_reduce_ranks, RR_RANKS);
    pthread_barrier_destroy(&rr_bar);
}
END_TEST

void device_add_concurrency_tests(TCase *tc)
{
    tcase_add_test(tc, t_concurrent);
    tcase_add_test(tc, t_reduce_ranks);
}

/* --------------------------------------------------------------- main */

/* Can the device run here? 1 yes; 0 (skip) with a reason; -1 (fail) when
 * the cpu device cannot be started, since it must always work. Runs in a
 * child process so this process never touches the device library before
 * Check forks (CUDA does not survive fork). */
static int device_available(char *why, size_t len)
{
    int fds[2];
    pid_t pid;
    int status = 0;
    ssize_t got;

    if (pipe(fds) != 0) {
        snprintf(why, len, "pipe failed");
        return 0;
    }
    pid = fork();
    if (pid == 0) {
        char msg[1024] = "";
        int ok = 0;
        close(fds[0]);
        if (via_api) {
            tp_config cfg = {0};
            tp_ctx *ctx = NULL;
            cfg.backend = "loopback";
            cfg.device = dev_name;
            cfg.world_size = 1;
            tp_status st = tp_init(&cfg, &ctx);
            ok = st == TP_OK;
            if (!ok)
                snprintf(msg, sizeof msg, "tp_init with device '%s': %s: %s", dev_name,
                         tp_status_string(st), tp_last_error());
            /* only a device that is not built or cannot run here is a skip */
            if (!ok &&
                (!strcmp(dev_name, "cpu") || (st != TP_ERR_UNAVAILABLE && st != TP_ERR_PLUGIN)))
                ok = -1;
            tp_finalize(ctx);
        } else {
            ok = plugin->probe ? plugin->probe(msg, sizeof msg) : 1;
        }
        if (write(fds[1], msg, strlen(msg)) < 0)
            _exit(3);
        _exit(ok == 1 ? 0 : ok == 0 ? 1 : 2);
    }
    close(fds[1]);
    got = read(fds[0], why, len - 1);
    why[got > 0 ? got : 0] = 0;
    close(fds[0]);
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) > 2) {
        snprintf(why, len, "the availability check crashed (status %d)", status);
        return -1;
    }
    return WEXITSTATUS(status) == 0 ? 1 : WEXITSTATUS(status) == 1 ? 0 : -1;
}

/* vtable mode: find libtp-<dev>.so on TP_PLUGIN_PATH (or take a path). */
static int load_plugin(char *why, size_t len)
{
    char path[4096];
    const char *dirs = getenv("TP_PLUGIN_PATH");
    void *so = NULL;
    const tp_plugin_desc *(*entry)(void);

    if (strchr(dev_name, '/')) {
        so = dlopen(dev_name, RTLD_NOW | RTLD_LOCAL);
    } else {
        char *copy = strdup(dirs ? dirs : ""), *save = NULL;
        for (char *d = strtok_r(copy, ":", &save); d && !so; d = strtok_r(NULL, ":", &save)) {
            snprintf(path, sizeof path, "%s/libtp-%s.so", d, dev_name);
            if (access(path, F_OK) == 0) {
                so = dlopen(path, RTLD_NOW | RTLD_LOCAL);
                if (!so)
                    snprintf(why, len, "dlopen %.500s: %.400s", path, dlerror());
            }
        }
        free(copy);
        if (!so && !why[0])
            snprintf(why, len, "libtp-%s.so is not in TP_PLUGIN_PATH=%s (device not built?)",
                     dev_name, dirs ? dirs : "(unset)");
    }
    if (!so)
        return 0;
    entry = (const tp_plugin_desc *(*)(void))dlsym(so, TP_PLUGIN_ENTRY);
    if (!entry || !(plugin = entry()) || !plugin->device) {
        snprintf(why, len, "%s: no " TP_PLUGIN_ENTRY " or no device ops", dev_name);
        return 0;
    }
    return 1;
}

int main(void)
{
    const char *d = getenv("TP_DEVICE"), *via = getenv("TP_DEVICE_TEST_VIA");
    char why[1024] = "";
    Suite *s;
    TCase *tc;
    SRunner *sr;
    int failed;

    if (d && *d)
        dev_name = d;
    via_api = !(via && !strcmp(via, "vtable"));
    if (!via_api && !load_plugin(why, sizeof why)) {
        printf("SKIP: device '%s': %s\n", dev_name, why);
        return 77;
    }
    switch (device_available(why, sizeof why)) {
        case 0: printf("SKIP: device '%s' is not available here: %s\n", dev_name, why); return 77;
        case -1: printf("FAIL: device '%s' could not be started: %s\n", dev_name, why); return 1;
    }

    s = suite_create("device");
    tc = tcase_create(dev_name);
    tcase_set_timeout(tc, 120);
    device_add_memory_tests(tc);
    device_add_gemm_tests(tc);
    device_add_kernel_tests(tc);
    device_add_lowp_tests(tc);
    device_add_slot_tests(tc);
    device_add_error_tests(tc);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    /* Several ranks assert on their own threads: only in a forked child. */
    if (via_api || srunner_fork_status(sr) != CK_NOFORK) {
        device_add_concurrency_tests(tc);
    }
    /* api mode asserts on the rank's thread: only safe in a forked child. */
    if (via_api)
        srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
