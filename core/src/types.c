/* SPDX-License-Identifier: MIT */
/* types.c — names and sizes of ops, phases and dtypes (a leaf: calls nothing in libtp). */
#include "tp-internal.h"

const char *tp_op_name(tp_op op)
{
    static const char *const names[TP_OP_COUNT] = {"all_reduce", "all_gather", "reduce_scatter",
                                                   "broadcast", "barrier"};
    return (unsigned)op < TP_OP_COUNT ? names[op] : "unknown_op";
}

const char *tp_phase_name(tp_phase ph)
{
    static const char *const names[TP_PHASE_COUNT] = {"forward", "backward", "other"};
    return (unsigned)ph < TP_PHASE_COUNT ? names[ph] : "unknown_phase";
}

size_t tp_dtype_size(tp_dtype dt)
{
    return tp_util_dtype_size(dt);
}

const char *tp_dtype_name(tp_dtype dt)
{
    return tp_util_dtype_name(dt);
}
