/* SPDX-License-Identifier: MIT */
/*
 * nodes-spec.c — parsing and naming for `tp-launch --nodes` (see
 * nodes-spec.h).
 */
#include "nodes-spec.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct unit {
    const char *name;
    double scale;
} unit;

static const unit rate_units[] = {
    {"bit", 1.0}, {"kbit", 1e3}, {"mbit", 1e6}, {"gbit", 1e9}, {"tbit", 1e12},
    {"bps", 8.0}, {"kbps", 8e3}, {"mbps", 8e6}, {"gbps", 8e9}, {NULL, 0},
};
static const unit delay_units[] = {
    {"ns", 1.0}, {"us", 1e3}, {"ms", 1e6}, {"s", 1e9}, {NULL, 0},
};

/* A non-negative decimal number followed by one of units; -1 if not. */
static int parse_quantity(const char *s, size_t len, const unit *units, double *out)
{
    char tmp[64];
    if (len == 0 || len >= sizeof tmp)
        return -1;
    memcpy(tmp, s, len);
    tmp[len] = '\0';
    if (!(tmp[0] >= '0' && tmp[0] <= '9') && tmp[0] != '.')
        return -1; /* no sign, no space, no "inf"/"nan" */
    char *end;
    errno = 0;
    double v = strtod(tmp, &end);
    if (errno || end == tmp || !isfinite(v) || v < 0 ||
        strspn(tmp, "0123456789.") != (size_t)(end - tmp))
        return -1; /* plain decimals only: no hex, no exponent */
    for (const unit *u = units; u->name; u++)
        if (strcasecmp(end, u->name) == 0) {
            *out = v * u->scale;
            return 0;
        }
    return -1;
}

int tpl_parse_link(const char *spec, tpl_link *out, char *err, size_t errlen)
{
    const char *comma = strchr(spec, ',');
    size_t rlen = comma ? (size_t)(comma - spec) : strlen(spec);
    double rate, delay = 0;
    if (parse_quantity(spec, rlen, rate_units, &rate) < 0) {
        snprintf(err, errlen,
                 "'%.*s' is not a rate: expected a number with bit, kbit, mbit, gbit, tbit "
                 "(bits/s) or bps, kbps, mbps, gbps (bytes/s), e.g. 1gbit",
                 (int)rlen, spec);
        return -1;
    }
    if (rate < (double)TPL_RATE_MIN_BPS || rate > (double)TPL_RATE_MAX_BPS) {
        snprintf(err, errlen, "rate '%.*s' is out of range: expected 8kbit .. 400gbit", (int)rlen,
                 spec);
        return -1;
    }
    if (comma && parse_quantity(comma + 1, strlen(comma + 1), delay_units, &delay) < 0) {
        snprintf(err, errlen,
                 "'%s' is not a delay: expected a number with ns, us, ms or s, e.g. 50us",
                 comma + 1);
        return -1;
    }
    if (delay > (double)TPL_DELAY_MAX_NS) {
        snprintf(err, errlen, "delay '%s' is out of range: expected 0 .. 10s", comma + 1);
        return -1;
    }
    out->rate_bps = (uint64_t)llround(rate);
    out->delay_ns = (uint64_t)llround(delay);
    return 0;
}

long tpl_node_of_rank(long r, long n, long k)
{
    /* the largest i with i*n/k <= r, i.e. i*n < (r+1)*k */
    return ((r + 1) * k - 1) / n;
}

void tpl_node_addr(long node, char *buf, size_t len)
{
    unsigned long a = (198ul << 24) | (18ul << 16);
    a += (unsigned long)node + 1;
    snprintf(buf, len, "%lu.%lu.%lu.%lu", a >> 24, (a >> 16) & 255, (a >> 8) & 255, a & 255);
}

void tpl_ns_name(pid_t pid, long node, char *buf, size_t len)
{
    if (node < 0)
        snprintf(buf, len, "tpl%ld-br", (long)pid);
    else
        snprintf(buf, len, "tpl%ld-n%ld", (long)pid, node);
}

/* Digits without a leading zero (a lone "0" only if zero_ok); the value,
 * or -1. *s moves past them. */
static long take_number(const char **s, int zero_ok)
{
    const char *p = *s;
    long v = 0;
    if (*p < '0' || *p > '9' || (*p == '0' && (!zero_ok || (p[1] >= '0' && p[1] <= '9'))))
        return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > 99999999)
            return -1;
        v = v * 10 + (*p - '0');
    }
    *s = p;
    return v;
}

pid_t tpl_ns_job(const char *name)
{
    const char *p = name;
    if (strncmp(p, "tpl", 3) != 0)
        return 0;
    p += 3;
    long pid = take_number(&p, 0);
    if (pid <= 0 || *p != '-')
        return 0;
    p++;
    if (strcmp(p, "br") == 0)
        return (pid_t)pid;
    if (*p != 'n')
        return 0;
    p++;
    long node = take_number(&p, 1);
    if (node < 0 || node >= TPL_MAX_NODES || *p != '\0')
        return 0;
    return (pid_t)pid;
}

/* v in the largest unit (scales ascending) that holds it exactly. */
static int print_exact(char *buf, size_t len, uint64_t v, const unit *units)
{
    const unit *best = units;
    for (const unit *u = units; u->name; u++)
        if (v % (uint64_t)u->scale == 0)
            best = u;
    return snprintf(buf, len, "%llu%s", (unsigned long long)(v / (uint64_t)best->scale),
                    best->name);
}

void tpl_link_str(const tpl_link *l, char *buf, size_t len)
{
    static const unit rates[] = {{"bit", 1.0},  {"kbit", 1e3},  {"mbit", 1e6},
                                 {"gbit", 1e9}, {"tbit", 1e12}, {NULL, 0}};
    if (!l->rate_bps) {
        snprintf(buf, len, "none");
        return;
    }
    int w = print_exact(buf, len, l->rate_bps, rates);
    if (l->delay_ns && w >= 0 && (size_t)w + 1 < len) {
        buf[w] = ',';
        print_exact(buf + w + 1, len - (size_t)w - 1, l->delay_ns, delay_units);
    }
}

int tpl_mpi_hosts(pid_t pid, long n, long k, char *buf, size_t len)
{
    size_t at = 0;
    for (long i = 0; i < k; i++) {
        char name[64];
        tpl_ns_name(pid, i, name, sizeof name);
        long slots = (i + 1) * n / k - i * n / k;
        int w = snprintf(buf + at, len - at, "%s%s:%ld", i ? "," : "", name, slots);
        if (w < 0 || (size_t)w >= len - at)
            return -1;
        at += (size_t)w;
    }
    return 0;
}

long tpl_ns_node(const char *name, pid_t job)
{
    char want[32];
    snprintf(want, sizeof want, "tpl%ld-n", (long)job);
    size_t wl = strlen(want);
    if (job <= 0 || tpl_ns_job(name) != job || strncmp(name, want, wl) != 0)
        return -1;
    return strtol(name + wl, NULL, 10);
}
