/* SPDX-License-Identifier: MIT */
/* tcp-reduce.c — element-wise reductions for the dtypes of tp-plugin.h.
 * 16-bit floats are widened, combined in f32 and rounded back (to nearest
 * even) per step, with the SDK's conversions (tp-plugin-util.h). */
#include "tcp.h"

/* The wire carries the dtype in a byte: name a corrupt one as such. */
const char *tcp_dtype_name(tp_dtype dt)
{
    return tp_util_dtype_size(dt) ? tp_util_dtype_name(dt) : "invalid dtype";
}

const char *tcp_redop_name(tp_redop op)
{
    switch (op) {
        case TP_SUM: return "sum";
        case TP_MAX: return "max";
        case TP_MIN: return "min";
        default: return "invalid op";
    }
}

static float combine(float a, float b, tp_redop op)
{
    switch (op) {
        case TP_MAX: return a > b ? a : b;
        case TP_MIN: return a < b ? a : b;
        default: return a + b;
    }
}

void tcp_reduce(void *dst, const void *src, size_t n, tp_dtype dt, tp_redop op)
{
    switch (dt) {
        case TP_F32: {
            float *d = dst;
            const float *s = src;
            if (op == TP_SUM) {
                for (size_t i = 0; i < n; i++)
                    d[i] = s[i] + d[i];
            } else {
                for (size_t i = 0; i < n; i++)
                    d[i] = combine(s[i], d[i], op);
            }
            break;
        }
        case TP_I32: {
            int32_t *d = dst;
            const int32_t *s = src;
            for (size_t i = 0; i < n; i++) {
                if (op == TP_SUM) /* wraps like two's complement, without UB */
                    d[i] = (int32_t)((uint32_t)s[i] + (uint32_t)d[i]);
                else if (op == TP_MAX)
                    d[i] = s[i] > d[i] ? s[i] : d[i];
                else
                    d[i] = s[i] < d[i] ? s[i] : d[i];
            }
            break;
        }
        case TP_BF16: {
            uint16_t *d = dst;
            const uint16_t *s = src;
            for (size_t i = 0; i < n; i++)
                d[i] = tp_util_f32_to_bf16(
                    combine(tp_util_bf16_to_f32(s[i]), tp_util_bf16_to_f32(d[i]), op));
            break;
        }
        case TP_F16: {
            uint16_t *d = dst;
            const uint16_t *s = src;
            for (size_t i = 0; i < n; i++)
                d[i] = tp_util_f32_to_f16(
                    combine(tp_util_f16_to_f32(s[i]), tp_util_f16_to_f32(d[i]), op));
            break;
        }
        default: break;
    }
}
