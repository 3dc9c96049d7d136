/* SPDX-License-Identifier: MIT */
/* model.c — alpha-beta fit of measured collectives and projection of a
 * layer's communication onto links this machine does not have. */
#include "bench.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* One fitted group: a backend, a placement (nodes, ranks per node, link:
 * emulated nodes of tp-launch --nodes/--link apart from one machine), an
 * op and a rank count. Fitting each p on its own keeps an oversubscribed p
 * (more ranks than cores) from skewing the others; bench_fit_hockney
 * itself also fits several p jointly. */
typedef struct fit_group {
    char backend[64];
    bench_place place;
    int op, p;
    GArray *samples; /* bench_sample */
    bench_fit2 fit;
    bool ok;
} fit_group;

static bool same_place(const bench_place *a, const bench_place *b)
{
    return a->nodes == b->nodes && a->ranks_per_node == b->ranks_per_node &&
           strcmp(a->link, b->link) == 0;
}

/* "", or " (2 nodes x 2 ranks, link 1gbit,50us)" when not one plain node. */
static const char *place_label(const bench_place *pl, char *buf, size_t len)
{
    buf[0] = 0;
    if (pl->nodes > 1 || strcmp(pl->link, "none") != 0)
        snprintf(buf, len, " (%d node%s x %d rank%s, link %s)", pl->nodes,
                 pl->nodes == 1 ? "" : "s", pl->ranks_per_node, pl->ranks_per_node == 1 ? "" : "s",
                 pl->link);
    return buf;
}

static fit_group *find_group(GPtrArray *groups, const char *backend, const bench_place *pl, int op,
                             int p)
{
    for (guint i = 0; i < groups->len; i++) {
        fit_group *g = g_ptr_array_index(groups, i);
        if (g->op == op && g->p == p && strcmp(g->backend, backend) == 0 &&
            same_place(&g->place, pl))
            return g;
    }
    return NULL;
}

static fit_group *group_for(GPtrArray *groups, const char *backend, const bench_place *pl, int op,
                            int p)
{
    fit_group *g = find_group(groups, backend, pl, op, p);
    if (g)
        return g;
    g = g_new0(fit_group, 1);
    g->place = *pl;
    g_strlcpy(g->backend, backend, sizeof g->backend);
    g->op = op;
    g->p = p;
    g->samples = g_array_new(FALSE, FALSE, sizeof(bench_sample));
    g_ptr_array_add(groups, g);
    return g;
}

static void group_free(gpointer p)
{
    fit_group *g = p;
    g_array_free(g->samples, TRUE);
    g_free(g);
}

static const double KIB64 = 65536.0;

static void print_fits(GPtrArray *groups, const bench_opts *o, bench_sink *sink)
{
    for (guint gi = 0; gi < groups->len; gi++) {
        fit_group *g = g_ptr_array_index(groups, gi);
        if (g->p < 2)
            continue; /* one rank: no communication to model */
        bench_sample *s = (bench_sample *)(void *)g->samples->data;
        int n = (int)g->samples->len;
        g->ok = bench_fit_piecewise(s, n, (double)o->fit_min, KIB64, &g->fit) == 0;
        int nfit = 0;
        for (int r = 0; r < g->fit.nseg; r++)
            nfit += g->fit.seg[r].n;
        if (!g->ok)
            nfit = g->fit.seg[0].n;
        char where[128];
        printf(
            "#\n# alpha-beta fit: backend %s%s, %s, p=%d: t = %s, minimax relative error, %d sizes "
            ">= %zu B\n",
            g->backend, place_label(&g->place, where, sizeof where), bench_op_name(g->op), g->p,
            g->op == TP_OP_ALL_REDUCE  ? "2(p-1) a + 2(p-1)/p n b"
            : g->op == TP_OP_BROADCAST ? "ceil(log2 p) a + n b"
                                       : "(p-1) a + (p-1)/p n b",
            nfit, o->fit_min);
        if (!g->ok) {
            printf("#   not fitted: needs p >= 2 and at least 2 distinct sizes\n");
            continue;
        }
        double gbps_r[BENCH_FIT_MAX_REGIMES] = {0};
        for (int r = 0; r < g->fit.nseg; r++)
            gbps_r[r] = g->fit.seg[r].beta_s > 0 ? 1.0 / g->fit.seg[r].beta_s / 1e9 : INFINITY;
        double gbps = gbps_r[0];
        if (g->fit.nseg > 1)
            printf(
                "#   %d regimes (cuts chosen to minimise the largest |err| at sizes >= 64 KiB):\n",
                g->fit.nseg);
        for (int r = 0; r < g->fit.nseg; r++) {
            char lo[32], hi[32];
            printf("#   sizes %s .. %s: a = %.3f us per step, 1/b = %.3f GB/s, %d samples%s\n",
                   bench_format_size((size_t)g->fit.lo_bytes[r], lo, sizeof lo),
                   bench_format_size((size_t)g->fit.hi_bytes[r], hi, sizeof hi),
                   g->fit.seg[r].alpha_s * 1e6, gbps_r[r], g->fit.seg[r].n,
                   g->fit.seg[r].alpha_clamped ? " (a at its bound 0)" : "");
        }
        printf("# %4s %12s %12s %12s %8s\n", "p", "size", "meas(us)", "model(us)", "err%");
        double maxerr = 0;
        int nerr = 0;
        for (int i = 0; i < n; i++) {
            if (s[i].p < 2)
                continue;
            double m = bench_model2_time(&g->fit, g->op, s[i].p, s[i].bytes);
            double err = 100.0 * (m - s[i].seconds) / s[i].seconds;
            printf("  %4d %12.0f %12.2f %12.2f %8.1f%s\n", s[i].p, s[i].bytes, s[i].seconds * 1e6,
                   m * 1e6, err, s[i].bytes < (double)o->fit_min ? "  (not fitted)" : "");
            if (s[i].bytes >= KIB64) {
                if (fabs(err) > maxerr)
                    maxerr = fabs(err);
                nerr++;
            }
            bench_record *rec = bench_rec_new("model");
            bench_rec_str(rec, "what", "point");
            bench_rec_str(rec, "backend", g->backend);
            bench_rec_str(rec, "op", bench_op_name(g->op));
            bench_rec_int(rec, "ranks", s[i].p);
            bench_rec_place(rec, &g->place);
            bench_rec_int(rec, "bytes", (int64_t)s[i].bytes);
            bench_rec_dbl(rec, "time_us", s[i].seconds * 1e6);
            bench_rec_dbl(rec, "model_us", m * 1e6);
            bench_rec_dbl(rec, "err_pct", err);
            bench_sink_emit(sink, rec);
            bench_rec_free(rec);
        }
        if (nerr)
            printf("#   max |err| for sizes >= 64 KiB: %.1f%% over %d points (target: 20%%)\n",
                   maxerr, nerr);
        bench_record *rec = bench_rec_new("model");
        bench_rec_str(rec, "what", "fit");
        bench_rec_str(rec, "backend", g->backend);
        bench_rec_str(rec, "op", bench_op_name(g->op));
        bench_rec_int(rec, "ranks", g->p);
        bench_rec_place(rec, &g->place);
        bench_rec_dbl(rec, "alpha_us", g->fit.seg[0].alpha_s * 1e6);
        bench_rec_dbl(rec, "beta_gbps", gbps);
        bench_rec_int(rec, "samples", nfit);
        bench_rec_int(rec, "regimes", g->fit.nseg);
        bench_rec_dbl(rec, "break_bytes", g->fit.nseg > 1 ? g->fit.hi_bytes[0] : NAN);
        bench_rec_dbl(rec, "alpha2_us", g->fit.nseg > 1 ? g->fit.seg[1].alpha_s * 1e6 : NAN);
        bench_rec_dbl(rec, "beta2_gbps", g->fit.nseg > 1 ? gbps_r[1] : NAN);
        bench_rec_dbl(rec, "break2_bytes", g->fit.nseg > 2 ? g->fit.hi_bytes[1] : NAN);
        bench_rec_dbl(rec, "alpha3_us", g->fit.nseg > 2 ? g->fit.seg[2].alpha_s * 1e6 : NAN);
        bench_rec_dbl(rec, "beta3_gbps", g->fit.nseg > 2 ? gbps_r[2] : NAN);
        bench_rec_int(rec, "fit_min_bytes", (int64_t)o->fit_min);
        bench_rec_dbl(rec, "max_err_pct_64k", nerr ? maxerr : NAN);
        bench_sink_emit(sink, rec);
        bench_rec_free(rec);
    }
}

static int read_samples(const bench_opts *o, GPtrArray *groups)
{
    for (int f = 0; f < o->n_from; f++) {
        GPtrArray *recs = g_ptr_array_new_with_free_func((GDestroyNotify)bench_rec_free);
        char err[512];
        if (bench_jsonl_read(o->from[f], recs, err, sizeof err) != 0) {
            fprintf(stderr, "tp-bench model: %s\n", err);
            g_ptr_array_free(recs, TRUE);
            return BENCH_EXIT_USAGE;
        }
        int used = 0;
        for (guint i = 0; i < recs->len; i++) {
            const bench_record *r = g_ptr_array_index(recs, i);
            if (strcmp(bench_rec_kind(r), "collective") != 0)
                continue;
            int op = bench_op_from_name(bench_rec_get_str(r, "op"));
            const char *backend = bench_rec_get_str(r, "backend");
            double p = bench_rec_get_num(r, "ranks", 0), b = bench_rec_get_num(r, "bytes", 0);
            double t = bench_rec_get_num(r, "time_us", 0);
            if (op < 0 || !backend || p < 1 || b <= 0 || !(t > 0))
                continue;
            if (o->op_set && !(o->op_mask & (1u << op)))
                continue;
            bench_sample s = {op, (int)p, b, t * 1e-6};
            bench_place pl;
            bench_place_from_rec(r, &pl); /* files from before the fields: one node */
            g_array_append_val(group_for(groups, backend, &pl, op, (int)p)->samples, s);
            used++;
        }
        g_ptr_array_free(recs, TRUE);
        if (!used) {
            fprintf(stderr,
                    "tp-bench model: '%s' holds no collective records (write one with tp-bench "
                    "collectives --json FILE)\n",
                    o->from[f]);
            return BENCH_EXIT_USAGE;
        }
    }
    return BENCH_EXIT_OK;
}

/* The rank counts a sweep here measures: --sweep-tp, else --tp when it has
 * at least 2 ranks, else 2 and 4. */
static int sweep_tps(const bench_opts *o, int *tps)
{
    if (o->n_sweep_tp) {
        memcpy(tps, o->sweep_tp, (size_t)o->n_sweep_tp * sizeof(int));
        return o->n_sweep_tp;
    }
    if (o->tp >= 2) {
        tps[0] = o->tp;
        return 1;
    }
    tps[0] = 2;
    tps[1] = 4;
    return 2;
}

/* No --from: sweep the collectives now; the printing process groups the
 * samples for fitting. */
static int sweep_samples(bench_env *env, bench_sink *sink, GPtrArray *groups)
{
    int tps[BENCH_MAX_LIST];
    int ntp = sweep_tps(env->o, tps);
    GArray *samples = g_array_new(FALSE, FALSE, sizeof(bench_placed_sample));
    int rc = bench_collectives_run(env, tps, ntp, sink, samples, true);
    for (guint i = 0; rc == 0 && env->printer && i < samples->len; i++) {
        bench_placed_sample *ps = &g_array_index(samples, bench_placed_sample, i);
        g_array_append_val(group_for(groups, env->backend, &ps->place, ps->s.op, ps->s.p)->samples,
                           ps->s);
    }
    g_array_free(samples, TRUE);
    return rc;
}

/* The T values the layer runs at here: 1 for the compute baseline (unless
 * --gflops gives the rate), then the other --measure-tp values. */
static int measured_tps(const bench_opts *o, int *mt)
{
    int nmt = 0;
    if (!(o->gflops > 0))
        mt[nmt++] = 1;
    for (int i = 0; i < o->n_measure_tp; i++)
        if (o->measure_tp[i] != 1)
            mt[nmt++] = o->measure_tp[i];
    return nmt;
}

typedef struct proj_link {
    char name[80];
    bench_fit2 fit;        /* presets: one regime, their own alpha/beta */
    double gbps, alpha_us; /* shown: the regime of the layer's message size */
} proj_link;

/* The links to project onto: every fitted all_reduce, then the presets and
 * the --link ones. */
static GArray *projection_links(GPtrArray *groups, const bench_layer_desc *d, const bench_opts *o)
{
    GArray *links = g_array_new(FALSE, FALSE, sizeof(proj_link));
    for (guint gi = 0; gi < groups->len; gi++) {
        fit_group *g = g_ptr_array_index(groups, gi);
        if (!g->ok || g->op != TP_OP_ALL_REDUCE)
            continue;
        proj_link l;
        memset(&l, 0, sizeof l);
        if (g->place.nodes > 1)
            snprintf(l.name, sizeof l.name, "fit:%.48s@p%d/%dn", g->backend, g->p, g->place.nodes);
        else
            snprintf(l.name, sizeof l.name, "fit:%s@p%d", g->backend, g->p);
        l.fit = g->fit;
        /* the regime of the layer's all-reduce */
        bench_layer_comm ex1[8];
        int n1 = bench_layer_expected_comm(d, o, g->p, 0, ex1, 8);
        const bench_fit *f = &g->fit.seg[n1 > 0 ? bench_fit2_regime(&g->fit, ex1[0].bytes) : 0];
        l.gbps = 1.0 / f->beta_s / 1e9;
        l.alpha_us = f->alpha_s * 1e6;
        g_array_append_val(links, l);
    }
    const bench_link *pre;
    int npre = bench_link_presets(&pre);
    for (int i = 0; i < npre + o->n_links; i++) {
        const bench_link *bl = i < npre ? &pre[i] : &o->links[i - npre];
        proj_link l;
        memset(&l, 0, sizeof l);
        g_strlcpy(l.name, bl->name, sizeof l.name);
        l.fit.seg[0] = bench_link_fit(bl);
        l.fit.nseg = 1;
        l.gbps = bl->gbps;
        l.alpha_us = bl->alpha_us;
        g_array_append_val(links, l);
    }
    return links;
}

/* What the projection step works from. */
typedef struct projection {
    const bench_opts *o;
    const bench_env *env;
    const bench_layer_desc *d;
    bench_sink *sink;
    GArray *links;                /* proj_link */
    const bench_layer_result *lr; /* the layer measured here, at nmt values of T */
    int nmt;
    double flops;       /* one iteration, all ranks */
    double compute1_us; /* measured at T=1; NAN with --gflops */
} projection;

static void print_projection_header(const projection *pj)
{
    const bench_opts *o = pj->o;
    printf("#\n# PROJECTION of %s %s (tokens %" G_GINT64_FORMAT ", hidden %" G_GINT64_FORMAT
           ", ffn %" G_GINT64_FORMAT ", f32): "
           "comm = sum over its collectives of the link's alpha-beta time;\n",
           o->layer, o->backward ? "forward + backward" : "forward", (gint64)o->tokens,
           (gint64)o->hidden, (gint64)o->ffn);
    if (o->gflops > 0)
        printf("# compute = %.3g FLOP / T at an assumed %.1f GFLOP/s per rank; ", pj->flops,
               o->gflops);
    else
        printf("# compute = compute measured here at T=1 (%.1f us) / T (ideal scaling); ",
               pj->compute1_us);
    printf("comm %% = comm / (compute + comm).\n# Rows marked 'measured' ran here; "
           "every other row is a PROJECTION, not a measurement.\n");
    printf("# %4s %-22s %10s %9s %12s %12s %8s  %s\n", "T", "link", "GB/s", "a(us)", "compute(us)",
           "comm(us)", "comm%", "source");
}

/* A projection record with what measured and projected rows share. */
static bench_record *projection_rec(const projection *pj, const char *backend, int T,
                                    const char *link, bool projected)
{
    bench_record *rec = bench_rec_new("model");
    bench_rec_str(rec, "what", "projection");
    bench_rec_str(rec, "backend", backend);
    bench_rec_str(rec, "layer", pj->o->layer);
    bench_rec_int(rec, "tp", T);
    bench_rec_str(rec, "link", link);
    bench_rec_bool(rec, "projected", projected);
    return rec;
}

static void emit_comm_split(const projection *pj, bench_record *rec, double compute, double comm,
                            double pctv)
{
    bench_rec_dbl(rec, "compute_us", compute);
    bench_rec_dbl(rec, "comm_us", comm);
    bench_rec_dbl(rec, "comm_pct", pctv);
    bench_sink_emit(pj->sink, rec);
    bench_rec_free(rec);
}

/* The rows of T that were measured here, as they were. */
static void project_measured(const projection *pj, int T)
{
    for (int mi = 0; mi < pj->nmt; mi++) {
        if (pj->lr[mi].T != T)
            continue;
        double c = bench_layer_compute_us(&pj->lr[mi]), cm = bench_layer_comm_us(&pj->lr[mi]);
        double pctv = 100 * cm / (c + cm);
        char nm[80];
        /* backend is a NUL-terminated char[64]: the bound only tells the compiler */
        snprintf(nm, sizeof nm, "measured:%.*s", (int)sizeof pj->env->backend - 1,
                 pj->env->backend);
        printf("  %4d %-22s %10s %9s %12.1f %12.1f %8.2f  measured\n", T, nm, "-", "-", c, cm,
               pctv);
        bench_record *rec = projection_rec(pj, pj->env->backend, T, nm, false);
        emit_comm_split(pj, rec, c, cm, pctv);
    }
}

/* One row per link: the layer's collectives at T priced on that link. */
static void project_links(const projection *pj, int T, double compute)
{
    const bench_opts *o = pj->o;
    bench_layer_comm ex[16];
    int nex = bench_layer_expected_comm(pj->d, o, T, 0, ex, 8);
    if (o->backward)
        nex += bench_layer_expected_comm(pj->d, o, T, 1, ex + nex, 8);
    const char *backend = pj->env->backend[0] ? pj->env->backend : NULL;
    for (guint li = 0; li < pj->links->len; li++) {
        const proj_link *l = &g_array_index(pj->links, proj_link, li);
        double comm = 0;
        for (int e = 0; e < nex; e++)
            comm += ex[e].calls * bench_model2_time(&l->fit, ex[e].op, T, ex[e].bytes) * 1e6;
        double pctv = 100 * comm / (compute + comm);
        printf("  %4d %-22s %10.1f %9.2f %12.1f %12.1f %8.2f  PROJECTION\n", T, l->name, l->gbps,
               l->alpha_us, compute, comm, pctv);
        bench_record *rec = projection_rec(pj, backend, T, l->name, true);
        bench_rec_dbl(rec, "link_gbps", l->gbps);
        bench_rec_dbl(rec, "link_alpha_us", l->alpha_us);
        emit_comm_split(pj, rec, compute, comm, pctv);
    }
}

/* The layer's communication at R->T predicted from the fits of this
 * backend at R's placement and p = T: the sum over its expected
 * collectives of the fitted times, µs. NAN, with *missing naming the op,
 * when one of its ops has no fit there. */
static double predict_comm_us(const projection *pj, GPtrArray *groups, const bench_layer_result *R,
                              const char **missing)
{
    bench_layer_comm ex[16];
    int nex = bench_layer_expected_comm(pj->d, pj->o, R->T, 0, ex, 8);
    if (pj->o->backward)
        nex += bench_layer_expected_comm(pj->d, pj->o, R->T, 1, ex + nex, 8);
    double us = 0;
    for (int e = 0; e < nex; e++) {
        const fit_group *g = find_group(groups, pj->env->backend, &R->place, ex[e].op, R->T);
        if (!g || !g->ok) {
            *missing = bench_op_name(ex[e].op);
            return NAN;
        }
        us += ex[e].calls * bench_model2_time(&g->fit, ex[e].op, R->T, ex[e].bytes) * 1e6;
    }
    return us;
}

/* Model vs measurement for each T >= 2 the layer ran at here: predicted
 * communication against the measured transfer (comm minus wait: a rank
 * waiting for a slower one is not the link's time). */
static void compare_measured(const projection *pj, GPtrArray *groups)
{
    const bench_opts *o = pj->o;
    bool header = false;
    for (int mi = 0; mi < pj->nmt; mi++) {
        const bench_layer_result *R = &pj->lr[mi];
        if (R->T < 2)
            continue;
        char where[128];
        place_label(&R->place, where, sizeof where);
        if (!header) {
            printf("#\n# MODEL vs MEASURED, %s %s: comm predicted from the fits of backend %s at "
                   "the same placement and p, vs the measured transfer (comm - wait for the last "
                   "rank; wait split by %s); means over ranks, per iteration\n",
                   o->layer, o->backward ? "forward + backward" : "forward", pj->env->backend,
                   o->split_wait ? "a barrier before each collective" : "the shared clock");
            printf("# %4s %5s %5s %-16s %12s %12s %12s %12s %10s\n", "T", "nodes", "r/n", "link",
                   "predict(us)", "xfer(us)", "wait(us)", "comm(us)", "pred/xfer");
            header = true;
        }
        const char *missing = NULL;
        double pred = predict_comm_us(pj, groups, R, &missing);
        double comm = bench_layer_comm_us(R), wait = bench_layer_wait_us(R), xfer = comm - wait;
        if (isnan(pred)) {
            printf("  %4d: no %s fit for backend %s at p=%d%s: sweep the collectives in the same "
                   "placement, or --from a file of them\n",
                   R->T, missing, pj->env->backend, R->T, where);
            continue;
        }
        printf("  %4d %5d %5d %-16s %12.1f %12.1f %12.1f %12.1f %10.3f\n", R->T, R->place.nodes,
               R->place.ranks_per_node, R->place.link, pred, xfer, wait, comm,
               xfer > 0 ? pred / xfer : NAN);
        bench_record *rec = bench_rec_new("model");
        bench_rec_str(rec, "what", "compare");
        bench_rec_str(rec, "backend", pj->env->backend);
        bench_rec_str(rec, "layer", o->layer);
        bench_rec_int(rec, "tp", R->T);
        bench_rec_place(rec, &R->place);
        bench_rec_str(rec, "wait_split", o->split_wait ? "barrier" : "clock");
        bench_rec_dbl(rec, "predicted_comm_us", pred);
        bench_rec_dbl(rec, "transfer_us", xfer);
        bench_rec_dbl(rec, "wait_us", wait);
        bench_rec_dbl(rec, "comm_us", comm);
        bench_rec_dbl(rec, "ratio", xfer > 0 ? pred / xfer : NAN);
        bench_rec_dbl(rec, "err_pct", xfer > 0 ? 100 * (pred - xfer) / xfer : NAN);
        bench_sink_emit(pj->sink, rec);
        bench_rec_free(rec);
    }
}

/* The table: for each --project-tp T, the measured rows then the links. */
static void print_projection(projection *pj, GPtrArray *groups)
{
    const bench_opts *o = pj->o;
    pj->links = projection_links(groups, pj->d, o);
    pj->flops = bench_layer_flops(pj->d, o, 0) + (o->backward ? bench_layer_flops(pj->d, o, 1) : 0);
    pj->compute1_us = NAN;
    if (!(o->gflops > 0))
        pj->compute1_us = bench_layer_compute_us(&pj->lr[0]);
    print_projection_header(pj);
    for (int ti = 0; ti < o->n_project_tp; ti++) {
        int T = o->project_tp[ti];
        double compute =
            o->gflops > 0 ? pj->flops / T / (o->gflops * 1e9) * 1e6 : pj->compute1_us / T;
        project_measured(pj, T);
        project_links(pj, T, compute);
    }
    g_array_free(pj->links, TRUE);
    pj->links = NULL;
    fflush(stdout);
}

int bench_cmd_model(const bench_opts *o_in)
{
    bench_opts o = *o_in;
    if (!o.op_set)
        o.op_mask = 1u << TP_OP_ALL_REDUCE;
    bench_env env;
    bench_env_init(&env, &o);
    bench_sink sink;
    bench_sink_init(&sink, o.json_path, o.csv_path);
    bench_env_attach(&env, &sink);
    GPtrArray *groups = g_ptr_array_new_with_free_func(group_free);
    bool printer = true;

    /* 1. samples: from files, or a sweep now */
    int rc;
    if (o.n_from) {
        rc = read_samples(&o, groups);
    } else {
        rc = sweep_samples(&env, &sink, groups);
        printer = env.printer;
    }
    /* with --from, which process prints is known only once the layer ran
     * (under tp-launch or mpirun every process read the files) */
    const bench_layer_desc *d = bench_layer_find(o.layer);
    int mt[BENCH_MAX_LIST + 1];
    int nmt = measured_tps(&o, mt);
    bool fitted = false;
    if (rc == 0 && printer && (!o.n_from || nmt == 0)) {
        print_fits(groups, &o, &sink);
        fitted = true;
    }

    /* 2. the layer: compute at T=1 (unless --gflops), measured T values */
    bench_layer_result lr[BENCH_MAX_LIST + 1];
    memset(lr, 0, sizeof lr);
    if (rc == 0 && nmt) {
        rc = bench_layer_run(&env, d, mt, nmt, lr);
        printer = env.printer;
    }
    if (rc == 0 && printer && !fitted)
        print_fits(groups, &o, &sink);

    /* 3. projection */
    if (rc == 0 && printer) {
        projection pj = {.o = &o, .env = &env, .d = d, .sink = &sink, .lr = lr, .nmt = nmt};
        compare_measured(&pj, groups);
        print_projection(&pj, groups);
    }
    g_ptr_array_free(groups, TRUE);
    return bench_cmd_finish(&env, &sink, rc);
}
