/* SPDX-License-Identifier: MIT */
/*
 * tp-try.h — the one error idiom of libtp, libtp-layers and the tools (not
 * installed). A fallible call returns a tp_status; chain them with
 *
 *   TP_TRY(expr);                 return the status of expr unless TP_OK
 *   TP_TRY_GOTO(expr, st, label); st = expr; on failure goto label (cleanup)
 *
 * as NCCL's NCCLCHECK / NCCLCHECKGOTO. The message was set by whoever
 * failed (tp_set_error); these macros add none.
 */
#ifndef TP_TRY_H
#define TP_TRY_H

#include <tp/tp.h>

#define TP_TRY(expr)                                                                               \
    do {                                                                                           \
        tp_status tp_try_st_ = (expr);                                                             \
        if (tp_try_st_ != TP_OK)                                                                   \
            return tp_try_st_;                                                                     \
    } while (0)

#define TP_TRY_GOTO(expr, st, label)                                                               \
    do {                                                                                           \
        (st) = (expr);                                                                             \
        if ((st) != TP_OK)                                                                         \
            goto label;                                                                            \
    } while (0)

#endif /* TP_TRY_H */
