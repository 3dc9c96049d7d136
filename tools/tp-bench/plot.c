/* SPDX-License-Identifier: MIT */
/* plot.c — a PNG from tp-bench JSON lines, drawn by gnuplot. */
#include "bench.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct series {
    char *title;
    GArray *x, *y; /* double */
} series;

static series *series_for(GPtrArray *list, const char *title)
{
    for (guint i = 0; i < list->len; i++) {
        series *s = g_ptr_array_index(list, i);
        if (strcmp(s->title, title) == 0)
            return s;
    }
    series *s = g_new0(series, 1);
    s->title = g_strdup(title);
    s->x = g_array_new(FALSE, FALSE, sizeof(double));
    s->y = g_array_new(FALSE, FALSE, sizeof(double));
    g_ptr_array_add(list, s);
    return s;
}

static void series_free(gpointer p)
{
    series *s = p;
    g_free(s->title);
    g_array_free(s->x, TRUE);
    g_array_free(s->y, TRUE);
    g_free(s);
}

static void add_point(series *s, double x, double y)
{
    /* keep the first value of a repeated x */
    for (guint i = 0; i < s->x->len; i++)
        if (g_array_index(s->x, double, i) == x)
            return;
    g_array_append_val(s->x, x);
    g_array_append_val(s->y, y);
}

/* gnuplot single-quoted string: a quote is doubled */
static void gp_quote(GString *out, const char *s)
{
    g_string_append_c(out, '\'');
    for (; *s; s++) {
        if (*s == '\'')
            g_string_append_c(out, '\'');
        g_string_append_c(out, *s);
    }
    g_string_append_c(out, '\'');
}

static void gp_data(GString *gp, int idx, const series *s)
{
    g_string_append_printf(gp, "$d%d << EOD\n", idx);
    /* sorted by x */
    guint n = s->x->len;
    guint *ord = g_new(guint, n ? n : 1);
    for (guint i = 0; i < n; i++)
        ord[i] = i;
    for (guint i = 1; i < n; i++)
        for (guint j = i;
             j > 0 && g_array_index(s->x, double, ord[j - 1]) > g_array_index(s->x, double, ord[j]);
             j--) {
            guint t = ord[j];
            ord[j] = ord[j - 1];
            ord[j - 1] = t;
        }
    for (guint i = 0; i < n; i++) {
        char bx[G_ASCII_DTOSTR_BUF_SIZE], by[G_ASCII_DTOSTR_BUF_SIZE];
        g_ascii_formatd(bx, sizeof bx, "%.9g", g_array_index(s->x, double, ord[i]));
        g_ascii_formatd(by, sizeof by, "%.9g", g_array_index(s->y, double, ord[i]));
        g_string_append_printf(gp, "%s %s\n", bx, by);
    }
    g_string_append(gp, "EOD\n");
    g_free(ord);
}

static gboolean wait_ok(int status, GError **e)
{
#if GLIB_CHECK_VERSION(2, 70, 0)
    return g_spawn_check_wait_status(status, e);
#else
    return g_spawn_check_exit_status(status, e);
#endif
}

/* The series a plot draws, by panel. */
typedef struct plot_series {
    GPtrArray *bw;  /* busbw vs size */
    GPtrArray *ref; /* memcpy reference */
    GPtrArray *pct; /* comm % vs T */
} plot_series;

static void add_collective(plot_series *ps, const bench_record *r, const char *backend)
{
    char title[160];
    const char *op = bench_rec_get_str(r, "op");
    bench_place pl;
    bench_place_from_rec(r, &pl); /* old records: one node, no link */
    char where[96] = "";
    if (pl.nodes > 1 || strcmp(pl.link, "none") != 0)
        snprintf(where, sizeof where, " %dx%d link %s", pl.nodes, pl.ranks_per_node, pl.link);
    snprintf(title, sizeof title, "%s %s T=%d%s", backend, op ? op : "?",
             (int)bench_rec_get_num(r, "ranks", 0), where);
    double b = bench_rec_get_num(r, "bytes", NAN), y = bench_rec_get_num(r, "busbw_gbps", NAN);
    /* one rank moves nothing: busbw is 0 or meaningless */
    if (bench_rec_get_num(r, "ranks", 0) >= 2 && b > 0 && isfinite(y) && y > 0)
        add_point(series_for(ps->bw, title), b, y);
}

static void add_memcpy(plot_series *ps, const bench_record *r)
{
    char title[160];
    int th = (int)bench_rec_get_num(r, "threads", 0);
    snprintf(title, sizeof title, "memcpy %d thread%s (GB/s copied)", th, th == 1 ? "" : "s");
    double b = bench_rec_get_num(r, "bytes", NAN), y = bench_rec_get_num(r, "gbps", NAN);
    if (b > 0 && isfinite(y))
        add_point(series_for(ps->ref, title), b, y);
}

static void add_projection(plot_series *ps, const bench_record *r)
{
    const char *what = bench_rec_get_str(r, "what");
    const char *link = bench_rec_get_str(r, "link");
    if (!what || strcmp(what, "projection") != 0 || !link)
        return;
    char title[160];
    const bench_field *pf = bench_rec_get(r, "projected");
    bool projected = !pf || pf->type != BENCH_F_BOOL || pf->b;
    snprintf(title, sizeof title, "%s%s", link, projected ? " (projection)" : "");
    double t = bench_rec_get_num(r, "tp", NAN), y = bench_rec_get_num(r, "comm_pct", NAN);
    if (t > 0 && isfinite(y))
        add_point(series_for(ps->pct, title), t, y);
}

/* A measured layer (aggregate forward row): its comm % at its T, one series
 * per layer, backend and placement, so TP inside a node and across nodes
 * sit side by side with the projections. */
static void add_layer(plot_series *ps, const bench_record *r, const char *backend)
{
    const char *layer = bench_rec_get_str(r, "layer"), *phase = bench_rec_get_str(r, "phase");
    if (!layer || !phase || strcmp(phase, "forward") != 0 || bench_rec_get_num(r, "rank", 0) != -1)
        return;
    bench_place pl;
    bench_place_from_rec(r, &pl);
    char title[160];
    if (pl.nodes > 1)
        snprintf(title, sizeof title, "%s %s across %d nodes (link %s)", layer, backend, pl.nodes,
                 pl.link);
    else
        snprintf(title, sizeof title, "%s %s inside 1 node", layer, backend);
    double t = bench_rec_get_num(r, "tp", NAN), y = bench_rec_get_num(r, "comm_pct", NAN);
    if (t > 0 && isfinite(y))
        add_point(series_for(ps->pct, title), t, y);
}

static void collect_series(GPtrArray *recs, plot_series *ps)
{
    for (guint i = 0; i < recs->len; i++) {
        const bench_record *r = g_ptr_array_index(recs, i);
        const char *kind = bench_rec_kind(r);
        const char *backend = bench_rec_get_str(r, "backend");
        if (!backend)
            backend = "?";
        if (strcmp(kind, "collective") == 0)
            add_collective(ps, r, backend);
        else if (strcmp(kind, "memcpy") == 0)
            add_memcpy(ps, r);
        else if (strcmp(kind, "model") == 0)
            add_projection(ps, r);
        else if (strcmp(kind, "layer") == 0)
            add_layer(ps, r, backend);
    }
}

/* How series i of a panel is drawn, after "with linespoints lw 2 ". */
typedef void (*gp_style_fn)(GString *gp, guint i, const series *s, const plot_series *ps);

/* One panel: the series' data blocks, the panel's settings, its plot
 * command. idx: the first data block's number; returns the next one. */
static int gp_panel(GString *gp, int idx, GPtrArray *all, const char *settings, gp_style_fn style,
                    const plot_series *ps)
{
    for (guint i = 0; i < all->len; i++)
        gp_data(gp, idx + (int)i, g_ptr_array_index(all, i));
    g_string_append(gp, settings);
    g_string_append(gp, "plot ");
    for (guint i = 0; i < all->len; i++) {
        series *s = g_ptr_array_index(all, i);
        if (i)
            g_string_append(gp, ", \\\n     ");
        g_string_append_printf(gp, "$d%d using 1:2 with linespoints lw 2 ", idx + (int)i);
        style(gp, i, s, ps);
        g_string_append(gp, " title ");
        gp_quote(gp, s->title);
    }
    g_string_append_c(gp, '\n');
    return idx + (int)all->len;
}

/* collectives solid, memcpy dashed */
static void bw_style(GString *gp, guint i, const series *s, const plot_series *ps)
{
    (void)s;
    g_string_append(gp, i < ps->bw->len ? "pt 7 ps 0.6" : "dt 2 pt 0");
}

/* measured solid, projections dashed */
static void pct_style(GString *gp, guint i, const series *s, const plot_series *ps)
{
    (void)ps;
    g_string_append_printf(gp, "pt 7 ps 0.8 lc %u %s", i + 1,
                           strstr(s->title, "(projection)") ? "dt 2" : "dt 1");
}

/* The gnuplot script: one panel per kind of series present. */
static GString *gp_script(const bench_opts *o, const plot_series *ps)
{
    bool have_bw = ps->bw->len > 0, have_pct = ps->pct->len > 0;
    GString *gp = g_string_new(NULL);
    int panels = (int)have_bw + (int)have_pct;
    g_string_append_printf(
        gp, "set terminal pngcairo noenhanced size %d,600 font ',10'\nset output ", 900 * panels);
    gp_quote(gp, o->out_path);
    g_string_append(gp,
                    "\nset grid\nset key outside bottom center horizontal maxrows 4 noenhanced\n");
    if (panels > 1)
        g_string_append(gp, "set multiplot layout 1,2\n");
    int idx = 0;
    if (have_bw) {
        GPtrArray *all = g_ptr_array_new();
        for (guint i = 0; i < ps->bw->len; i++)
            g_ptr_array_add(all, g_ptr_array_index(ps->bw, i));
        for (guint i = 0; i < ps->ref->len; i++)
            g_ptr_array_add(all, g_ptr_array_index(ps->ref, i));
        idx = gp_panel(
            gp, idx, all,
            "set title 'bus bandwidth vs size (nccl-tests busbw; dashed: memcpy reference)'\n"
            "set logscale x 2\nset format x '%.0b%B'\nset xlabel 'size (bytes)'\n"
            "set ylabel 'GB/s'\nset logscale y\n",
            bw_style, ps);
        g_ptr_array_free(all, TRUE);
    }
    if (have_pct)
        gp_panel(gp, idx, ps->pct,
                 "set title 'communication % of layer forward vs T (measured layers; projections "
                 "labelled)'\n"
                 "unset logscale x\nset logscale y\nset format x '%g'\nset xlabel 'T (ranks)'\n"
                 "set ylabel 'comm %'\nset xtics 1\n",
                 pct_style, ps);
    if (panels > 1)
        g_string_append(gp, "unset multiplot\n");
    return gp;
}

/* Run gnuplot (or $GNUPLOT) on the script file. Returns an exit code. */
static int run_gnuplot(char *script)
{
    const char *gnuplot = getenv("GNUPLOT");
    char *argv[] = {(char *)(gnuplot && *gnuplot ? gnuplot : "gnuplot"), script, NULL};
    char *err_out = NULL;
    int status = 0;
    GError *e = NULL;
    int rc = BENCH_EXIT_OK;
    if (!g_spawn_sync(NULL, argv, NULL, G_SPAWN_SEARCH_PATH | G_SPAWN_STDOUT_TO_DEV_NULL, NULL,
                      NULL, NULL, &err_out, &status, &e)) {
        fprintf(stderr,
                "tp-bench plot: cannot run gnuplot (%s); install it (apt-get install gnuplot-nox) "
                "or set GNUPLOT=/path/to/gnuplot\n",
                e->message);
        rc = BENCH_EXIT_FAIL;
    } else if (!wait_ok(status, &e)) {
        fprintf(stderr, "tp-bench plot: gnuplot failed (%s):\n%s", e->message,
                err_out ? err_out : "");
        rc = BENCH_EXIT_FAIL;
    }
    g_clear_error(&e);
    g_free(err_out);
    return rc;
}

/* The script into a temporary file, gnuplot on it, the file removed.
 * Returns an exit code. */
static int draw(const GString *gp)
{
    char *tmp = NULL;
    GError *e = NULL;
    int fd = g_file_open_tmp("tp-bench-XXXXXX.gp", &tmp, &e);
    if (fd < 0) {
        fprintf(stderr, "tp-bench plot: cannot create a temporary gnuplot script: %s\n",
                e->message);
        g_error_free(e);
        return BENCH_EXIT_FAIL;
    }
    close(fd);
    int rc;
    if (!g_file_set_contents(tmp, gp->str, (gssize)gp->len, &e)) {
        fprintf(stderr, "tp-bench plot: cannot write %s: %s\n", tmp, e->message);
        g_clear_error(&e);
        rc = BENCH_EXIT_FAIL;
    } else {
        rc = run_gnuplot(tmp);
    }
    unlink(tmp);
    g_free(tmp);
    return rc;
}

static int read_inputs(const bench_opts *o, GPtrArray *recs)
{
    for (int f = 0; f < o->n_from; f++) {
        char err[512];
        if (bench_jsonl_read(o->from[f], recs, err, sizeof err) != 0) {
            fprintf(stderr, "tp-bench plot: %s\n", err);
            return BENCH_EXIT_USAGE;
        }
    }
    return BENCH_EXIT_OK;
}

int bench_cmd_plot(const bench_opts *o)
{
    GPtrArray *recs = g_ptr_array_new_with_free_func((GDestroyNotify)bench_rec_free);
    int rc = read_inputs(o, recs);
    if (rc != BENCH_EXIT_OK) {
        g_ptr_array_free(recs, TRUE);
        return rc;
    }
    plot_series ps = {
        .bw = g_ptr_array_new_with_free_func(series_free),
        .ref = g_ptr_array_new_with_free_func(series_free),
        .pct = g_ptr_array_new_with_free_func(series_free),
    };
    collect_series(recs, &ps);
    if (!ps.bw->len && !ps.pct->len) {
        fprintf(
            stderr,
            "tp-bench plot: no collective, layer or model projection records in the input (write "
            "them with tp-bench collectives/layer/model --json FILE)\n");
        rc = BENCH_EXIT_USAGE;
    } else {
        GString *gp = gp_script(o, &ps);
        rc = draw(gp);
        if (rc == BENCH_EXIT_OK)
            printf("tp-bench plot: wrote %s (%u bandwidth series, %u comm %% series)\n",
                   o->out_path, ps.bw->len + ps.ref->len, ps.pct->len);
        g_string_free(gp, TRUE);
    }
    g_ptr_array_free(ps.bw, TRUE);
    g_ptr_array_free(ps.ref, TRUE);
    g_ptr_array_free(ps.pct, TRUE);
    g_ptr_array_free(recs, TRUE);
    return rc;
}
