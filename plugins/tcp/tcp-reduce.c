/* tcp-reduce.c — element-wise reductions for the dtypes of tp-plugin.h. */
#include <string.h>

#include "tcp.h"

size_t tcp_dtype_size(tp_dtype dt)
{
    switch (dt) {
    case TP_F32: return 4;
    case TP_I32: return 4;
    case TP_F16: return 2;
    case TP_BF16: return 2;
    default: return 0;
    }
}

const char *tcp_dtype_name(tp_dtype dt)
{
    switch (dt) {
    case TP_F32: return "f32";
    case TP_I32: return "i32";
    case TP_F16: return "f16";
    case TP_BF16: return "bf16";
    default: return "invalid dtype";
    }
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

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bf16_to_f32(uint16_t h)
{
    return f32_from_bits((uint32_t)h << 16);
}

static uint16_t f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1);         /* round to nearest even */
    return (uint16_t)(u >> 16);
}

static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    if (exp == 0x1f)
        return f32_from_bits(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        /* zero or subnormal: man * 2^-24 */
        float v = (float)man * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    return f32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
}

static uint16_t f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return sign | 0x7e00; /* NaN */
    if (a >= 0x477ff000u)     /* rounds to >= 65520: overflow to inf */
        return sign | 0x7c00;
    if (a < 0x38800000u) {    /* below 2^-14: subnormal half or zero */
        if (a < 0x33000000u)  /* below 2^-25: rounds to zero */
            return sign;
        uint32_t e = a >> 23;
        uint32_t m = (a & 0x7fffff) | 0x800000;
        unsigned shift = 126 - e; /* 14..24 */
        uint32_t half = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1)))
            half++;
        return sign | (uint16_t)half;
    }
    uint32_t r = a - 0x38000000u; /* rebias exponent 127 -> 15 */
    r += 0xfffu + ((r >> 13) & 1);
    return sign | (uint16_t)(r >> 13);
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
            d[i] = f32_to_bf16(combine(bf16_to_f32(s[i]), bf16_to_f32(d[i]), op));
        break;
    }
    case TP_F16: {
        uint16_t *d = dst;
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++)
            d[i] = f32_to_f16(combine(f16_to_f32(s[i]), f16_to_f32(d[i]), op));
        break;
    }
    default:
        break;
    }
}
