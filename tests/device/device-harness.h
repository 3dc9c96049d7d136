/* SPDX-License-Identifier: MIT */
/*
 * device-harness.h — what the device conformance files share (see
 * test-device.c for which device and how it is reached): the device under
 * test per rank (D, H), device buffers freed after each test, the test
 * data's random stream, tolerance checks, the references more than one
 * file uses, and each file's function adding its tests.
 *
 * Tolerances. u = 2^-24 is the unit roundoff of f32. A sum of n terms
 * computed in f32 in any order, with or without FMA, is within
 * (n - 1) u sum|terms| of the exact sum (Higham, Accuracy and Stability of
 * Numerical Algorithms, ch. 3), and each further rounding or correctly
 * rounded-ish libm call (erff, expf, tanhf: <= 4 ulp on glibc and CUDA)
 * adds a few u relative to its result. So each check below is
 *   |got - ref| <= K u M
 * where ref is computed in double, M is the sum of the magnitudes of the
 * terms that make up the value (its "condition scale"), and K counts the
 * roundings on the longest chain plus libm's ulps; each op states its K.
 * These are worst-case bounds, not fitted numbers.
 */
#ifndef TP_TEST_DEVICE_HARNESS_H
#define TP_TEST_DEVICE_HARNESS_H

#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tp/tp.h>

/* expect_status() reports the device's message in either mode */
#define TP_EXPECT_MESSAGE() last_msg()
#include "tp-expect.h"

#define U 5.9604644775390625e-08 /* 2^-24 */

/* ---- harness (device-harness.c) */

extern const char *dev_name; /* TP_DEVICE */
extern int via_api;          /* 1: tp_init/tp_run + tp_dev_*; 0: the plugin's vtable */
/* The device under test: a vtable and its handle, in either mode; one per
 * thread, as each rank (thread) has its own device. */
extern _Thread_local const tp_device_ops *D;
extern _Thread_local void *H;
extern _Thread_local int rank_id;        /* this rank (thread) among the test's ranks */
extern _Thread_local tp_comm *rank_comm; /* api mode: the rank's world, for its stats */
extern const tp_plugin_desc *plugin;     /* vtable mode: the loaded plugin */

const char *last_msg(void); /* the last error message of this rank's device */
void clear_msg(void);

/* Device buffers of the running test, freed after it. */
void *dmalloc(size_t bytes);
void *dput(const void *host, size_t bytes); /* a device copy of host (bytes may be 0) */
void dget(void *host, const void *p, size_t bytes);
void free_bufs(void);

typedef void (*body_fn)(void);
/* Run a test body with a fresh device (one rank). */
void with_device(body_fn body);
/* Run a test body on `ranks` ranks at once, each a thread with its own
 * device (only in Check's fork mode: a failing check exits the child). */
void with_devices(body_fn body, int ranks);

/* ---- utilities (device-harness.c) */

double urand(void);                   /* uniform [-1, 1), this rank's stream */
float *hrand(size_t n, double scale); /* n floats scale * urand() */
float *hzalloc(size_t n);
double *dzalloc(size_t n);

/* |got - ref| <= tol, with a message naming what and where. */
#define CLOSE(got, ref, tol, ...)                                                                  \
    do {                                                                                           \
        double g_ = (got), r_ = (ref), t_ = (tol);                                                 \
        if (!(fabs(g_ - r_) <= t_)) {                                                              \
            char w_[256];                                                                          \
            snprintf(w_, sizeof w_, __VA_ARGS__);                                                  \
            ck_abort_msg("%s: got %.9g, expected %.9g (diff %.3g > tol %.3g)", w_, g_, r_,         \
                         fabs(g_ - r_), t_);                                                       \
        }                                                                                          \
    } while (0)

/* Expect status `want` and a message containing each of the NULL-ended words. */
void expect_err(tp_status got, tp_status want, const char *what, ...);

#define NSIZES 4
extern const int sizes[NSIZES]; /* the sizes every op is run at */

/* ---- references and bodies used by more than one file */

/* test-device-gemm.c */
void ref_gemm(int ta, int tb, int m, int n, int k, double alpha, const float *a, int lda,
              const float *b, int ldb, double beta, const float *c0, int ldc, double *ref,
              double *mag);
void body_gemm(void);
/* test-device-kernels.c */
double gelu_ref(double x, int t);
void body_softmax(void);
void body_norm(void);
void body_ce(void);
/* test-device-lowp.c: bf16/f16 storage */
size_t dt_size(tp_dtype dt);
void enc(tp_dtype dt, const float *x, void *out, size_t n);
void dec(tp_dtype dt, const void *in, float *x, size_t n);
void round_to(tp_dtype dt, float *x, size_t n);
void lowp_gemm(tp_dtype dt);

/* ---- each file's tests, added to the one test case in main's order */

void device_add_memory_tests(TCase *tc);
void device_add_gemm_tests(TCase *tc);
void device_add_kernel_tests(TCase *tc);
void device_add_lowp_tests(TCase *tc);
void device_add_slot_tests(TCase *tc);
void device_add_error_tests(TCase *tc);
void device_add_concurrency_tests(TCase *tc);

#endif
