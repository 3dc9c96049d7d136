/* SPDX-License-Identifier: MIT */
/* xf-internal.h — helpers shared by attention.c, norm.c and block.c (not installed). */
#ifndef TP_XF_INTERNAL_H
#define TP_XF_INTERNAL_H

#include "../layers-internal.h"

#define XF_ES sizeof(float)

/* Norm pieces the block uses to fuse its two norms' sequence-parallel
 * parameter-gradient all-reduces into one. */
int64_t tpl_norm_contrib_len(const tp_norm *n); /* dim * (1 + bias) */
tp_dtype tpl_norm_dtype(const tp_norm *n);      /* of its parameters and contributions */
/* Backward writing this call's parameter-gradient contribution to contrib
 * (device, tpl_norm_contrib_len floats, zeroed by the caller) instead of
 * accumulating it; dx as tp_norm_backward. No communication. */
tp_status tpl_norm_backward_local(tp_norm *n, const tp_tensor *dy, tp_tensor *dx, void *contrib);
/* grads += contrib (already reduced over the ranks). */
tp_status tpl_norm_add_contrib(tp_norm *n, const void *contrib);

#endif
