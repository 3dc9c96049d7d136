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
        for (guint j = i; j > 0 && g_array_index(s->x, double, ord[j - 1]) > g_array_index(s->x, double, ord[j]); j--) {
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

int bench_cmd_plot(const bench_opts *o)
{
    GPtrArray *recs = g_ptr_array_new_with_free_func((GDestroyNotify)bench_rec_free);
    for (int f = 0; f < o->n_from; f++) {
        char err[512];
        if (bench_jsonl_read(o->from[f], recs, err, sizeof err) != 0) {
            fprintf(stderr, "tp-bench plot: %s\n", err);
            g_ptr_array_free(recs, TRUE);
            return BENCH_EXIT_USAGE;
        }
    }
    GPtrArray *bw = g_ptr_array_new_with_free_func(series_free);   /* busbw vs size */
    GPtrArray *ref = g_ptr_array_new_with_free_func(series_free);  /* memcpy reference */
    GPtrArray *pct = g_ptr_array_new_with_free_func(series_free);  /* comm % vs T */
    for (guint i = 0; i < recs->len; i++) {
        const bench_record *r = g_ptr_array_index(recs, i);
        const char *kind = bench_rec_kind(r);
        const char *backend = bench_rec_get_str(r, "backend");
        if (!backend)
            backend = "?";
        char title[160];
        if (strcmp(kind, "collective") == 0) {
            const char *op = bench_rec_get_str(r, "op");
            snprintf(title, sizeof title, "%s %s T=%d", backend, op ? op : "?",
                     (int)bench_rec_get_num(r, "ranks", 0));
            double b = bench_rec_get_num(r, "bytes", NAN), y = bench_rec_get_num(r, "busbw_gbps", NAN);
            /* one rank moves nothing: busbw is 0 or meaningless */
            if (bench_rec_get_num(r, "ranks", 0) >= 2 && b > 0 && isfinite(y) && y > 0)
                add_point(series_for(bw, title), b, y);
        } else if (strcmp(kind, "memcpy") == 0) {
            int th = (int)bench_rec_get_num(r, "threads", 0);
            snprintf(title, sizeof title, "memcpy %d thread%s (GB/s copied)", th, th == 1 ? "" : "s");
            double b = bench_rec_get_num(r, "bytes", NAN), y = bench_rec_get_num(r, "gbps", NAN);
            if (b > 0 && isfinite(y))
                add_point(series_for(ref, title), b, y);
        } else if (strcmp(kind, "model") == 0) {
            const char *what = bench_rec_get_str(r, "what");
            const char *link = bench_rec_get_str(r, "link");
            if (!what || strcmp(what, "projection") != 0 || !link)
                continue;
            const bench_field *pf = bench_rec_get(r, "projected");
            bool projected = !pf || pf->type != BENCH_F_BOOL || pf->b;
            snprintf(title, sizeof title, "%s%s", link, projected ? " (projection)" : "");
            double t = bench_rec_get_num(r, "tp", NAN), y = bench_rec_get_num(r, "comm_pct", NAN);
            if (t > 0 && isfinite(y))
                add_point(series_for(pct, title), t, y);
        }
    }
    int rc = BENCH_EXIT_OK;
    bool have_bw = bw->len > 0, have_pct = pct->len > 0;
    if (!have_bw && !have_pct) {
        fprintf(stderr, "tp-bench plot: no collective or model projection records in the input (write them "
                "with tp-bench collectives/model --json FILE)\n");
        rc = BENCH_EXIT_USAGE;
        goto out;
    }

    GString *gp = g_string_new(NULL);
    int panels = (int)have_bw + (int)have_pct;
    g_string_append_printf(gp, "set terminal pngcairo noenhanced size %d,600 font ',10'\nset output ", 900 * panels);
    gp_quote(gp, o->out_path);
    g_string_append(gp, "\nset grid\nset key outside bottom center horizontal maxrows 4 noenhanced\n");
    if (panels > 1)
        g_string_append(gp, "set multiplot layout 1,2\n");
    int idx = 0;
    if (have_bw) {
        GPtrArray *all = g_ptr_array_new();
        for (guint i = 0; i < bw->len; i++)
            g_ptr_array_add(all, g_ptr_array_index(bw, i));
        for (guint i = 0; i < ref->len; i++)
            g_ptr_array_add(all, g_ptr_array_index(ref, i));
        for (guint i = 0; i < all->len; i++)
            gp_data(gp, idx + (int)i, g_ptr_array_index(all, i));
        g_string_append(gp, "set title 'bus bandwidth vs size (nccl-tests busbw; dashed: memcpy reference)'\n"
                            "set logscale x 2\nset format x '%.0b%B'\nset xlabel 'size (bytes)'\n"
                            "set ylabel 'GB/s'\nset logscale y\n");
        /* collectives solid, memcpy dashed */
        g_string_append(gp, "plot ");
        for (guint i = 0; i < all->len; i++) {
            series *s = g_ptr_array_index(all, i);
            if (i)
                g_string_append(gp, ", \\\n     ");
            g_string_append_printf(gp, "$d%d using 1:2 with linespoints lw 2 %s title ", idx + (int)i,
                                   i < bw->len ? "pt 7 ps 0.6" : "dt 2 pt 0");
            gp_quote(gp, s->title);
        }
        g_string_append_c(gp, '\n');
        idx += (int)all->len;
        g_ptr_array_free(all, TRUE);
    }
    if (have_pct) {
        for (guint i = 0; i < pct->len; i++)
            gp_data(gp, idx + (int)i, g_ptr_array_index(pct, i));
        g_string_append(gp, "set title 'communication % of layer forward vs T (projections labelled)'\n"
                            "unset logscale x\nset logscale y\nset format x '%g'\nset xlabel 'T (ranks)'\n"
                            "set ylabel 'comm %'\nset xtics 1\n");
        /* measured solid, projections dashed */
        g_string_append(gp, "plot ");
        for (guint i = 0; i < pct->len; i++) {
            series *s = g_ptr_array_index(pct, i);
            if (i)
                g_string_append(gp, ", \\\n     ");
            g_string_append_printf(gp, "$d%d using 1:2 with linespoints lw 2 pt 7 ps 0.8 lc %u %s title ",
                                   idx + (int)i, i + 1, strstr(s->title, "(projection)") ? "dt 2" : "dt 1");
            gp_quote(gp, s->title);
        }
        g_string_append_c(gp, '\n');
        idx += (int)pct->len;
    }
    if (panels > 1)
        g_string_append(gp, "unset multiplot\n");

    char *tmp = NULL;
    GError *e = NULL;
    int fd = g_file_open_tmp("tp-bench-XXXXXX.gp", &tmp, &e);
    if (fd < 0) {
        fprintf(stderr, "tp-bench plot: cannot create a temporary gnuplot script: %s\n", e->message);
        g_error_free(e);
        rc = BENCH_EXIT_FAIL;
    } else {
        close(fd);
        if (!g_file_set_contents(tmp, gp->str, (gssize)gp->len, &e)) {
            fprintf(stderr, "tp-bench plot: cannot write %s: %s\n", tmp, e->message);
            g_clear_error(&e);
            rc = BENCH_EXIT_FAIL;
        } else {
            const char *gnuplot = getenv("GNUPLOT");
            char *argv[] = {(char *)(gnuplot && *gnuplot ? gnuplot : "gnuplot"), tmp, NULL};
            char *err_out = NULL;
            int status = 0;
            if (!g_spawn_sync(NULL, argv, NULL, G_SPAWN_SEARCH_PATH | G_SPAWN_STDOUT_TO_DEV_NULL, NULL, NULL, NULL,
                              &err_out, &status, &e)) {
                fprintf(stderr, "tp-bench plot: cannot run gnuplot (%s); install it (apt-get install gnuplot-nox) "
                        "or set GNUPLOT=/path/to/gnuplot\n", e->message);
                g_clear_error(&e);
                rc = BENCH_EXIT_FAIL;
            } else if (!wait_ok(status, &e)) {
                fprintf(stderr, "tp-bench plot: gnuplot failed (%s):\n%s", e->message, err_out ? err_out : "");
                g_clear_error(&e);
                rc = BENCH_EXIT_FAIL;
            } else {
                printf("tp-bench plot: wrote %s (%u bandwidth series, %u projection series)\n", o->out_path,
                       bw->len + ref->len, pct->len);
            }
            g_free(err_out);
        }
        unlink(tmp);
        g_free(tmp);
    }
    g_string_free(gp, TRUE);
out:
    g_ptr_array_free(bw, TRUE);
    g_ptr_array_free(ref, TRUE);
    g_ptr_array_free(pct, TRUE);
    g_ptr_array_free(recs, TRUE);
    return rc;
}
