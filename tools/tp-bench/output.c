/* SPDX-License-Identifier: MIT */
/* output.c — measurement records and their JSON-lines / CSV writers. */
#include "bench.h"

#include <errno.h>
#include <json-glib/json-glib.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ----------------------------------------------------------- records */

bench_record *bench_rec_new(const char *kind)
{
    bench_record *r = g_new0(bench_record, 1);
    bench_rec_str(r, "kind", kind);
    return r;
}

static void field_clear(bench_field *f)
{
    g_free(f->key);
    g_free(f->s);
    memset(f, 0, sizeof *f);
}

void bench_rec_free(bench_record *r)
{
    if (!r)
        return;
    for (int i = 0; i < r->n; i++)
        field_clear(&r->f[i]);
    g_free(r->f);
    g_free(r);
}

bench_record *bench_rec_copy(const bench_record *r)
{
    bench_record *c = g_new0(bench_record, 1);
    c->cap = c->n = r->n;
    c->f = g_new0(bench_field, r->n > 0 ? r->n : 1);
    for (int i = 0; i < r->n; i++) {
        c->f[i] = r->f[i];
        c->f[i].key = g_strdup(r->f[i].key);
        c->f[i].s = g_strdup(r->f[i].s);
    }
    return c;
}

/* Field for key: the existing one (replaced) or a new one at the end. */
static bench_field *slot(bench_record *r, const char *key)
{
    for (int i = 0; i < r->n; i++)
        if (strcmp(r->f[i].key, key) == 0) {
            g_free(r->f[i].s);
            r->f[i].s = NULL;
            return &r->f[i];
        }
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 16;
        r->f = g_renew(bench_field, r->f, r->cap);
    }
    bench_field *f = &r->f[r->n++];
    memset(f, 0, sizeof *f);
    f->key = g_strdup(key);
    return f;
}

void bench_rec_str(bench_record *r, const char *key, const char *v)
{
    bench_field *f = slot(r, key);
    f->type = v ? BENCH_F_STR : BENCH_F_NULL;
    f->s = g_strdup(v);
}

void bench_rec_int(bench_record *r, const char *key, int64_t v)
{
    bench_field *f = slot(r, key);
    f->type = BENCH_F_INT;
    f->i = v;
}

void bench_rec_dbl(bench_record *r, const char *key, double v)
{
    bench_field *f = slot(r, key);
    f->type = isfinite(v) ? BENCH_F_DBL : BENCH_F_NULL;
    f->d = v;
}

void bench_rec_json(bench_record *r, const char *key, const char *json)
{
    bench_field *f = slot(r, key);
    f->type = json ? BENCH_F_JSON : BENCH_F_NULL;
    f->s = g_strdup(json);
}

void bench_rec_bool(bench_record *r, const char *key, bool v)
{
    bench_field *f = slot(r, key);
    f->type = BENCH_F_BOOL;
    f->b = v;
}

void bench_rec_times(bench_record *r, const bench_summary *sm)
{
    bench_rec_dbl(r, "time_us", sm->median * 1e6);
    bench_rec_dbl(r, "time_min_us", sm->min * 1e6);
    bench_rec_dbl(r, "time_max_us", sm->max * 1e6);
}

const bench_field *bench_rec_get(const bench_record *r, const char *key)
{
    for (int i = 0; i < r->n; i++)
        if (strcmp(r->f[i].key, key) == 0)
            return &r->f[i];
    return NULL;
}

const char *bench_rec_get_str(const bench_record *r, const char *key)
{
    const bench_field *f = bench_rec_get(r, key);
    return f && f->type == BENCH_F_STR ? f->s : NULL;
}

double bench_rec_get_num(const bench_record *r, const char *key, double dflt)
{
    const bench_field *f = bench_rec_get(r, key);
    if (!f)
        return dflt;
    switch (f->type) {
        case BENCH_F_INT: return (double)f->i;
        case BENCH_F_DBL: return f->d;
        case BENCH_F_BOOL: return f->b ? 1.0 : 0.0;
        default: return dflt;
    }
}

const char *bench_rec_kind(const bench_record *r)
{
    const char *k = bench_rec_get_str(r, "kind");
    return k ? k : "";
}

bool bench_rec_same_keys(const bench_record *a, const bench_record *b)
{
    if (a->n != b->n)
        return false;
    for (int i = 0; i < a->n; i++)
        if (strcmp(a->f[i].key, b->f[i].key) != 0)
            return false;
    return true;
}

/* ----------------------------------------------------------- writers */

static void append_double(GString *out, double d)
{
    char buf[G_ASCII_DTOSTR_BUF_SIZE];
    /* CSV: locale-independent %.9g; integral values keep a plain form */
    g_ascii_formatd(buf, sizeof buf, "%.9g", d);
    g_string_append(out, buf);
}

/* The JSON node of one field; a BENCH_F_JSON field's text is parsed back
 * into its object or array (text that does not parse writes null). */
static JsonNode *field_node(const bench_field *f)
{
    JsonNode *n = json_node_alloc();
    switch (f->type) {
        case BENCH_F_STR: return json_node_init_string(n, f->s);
        case BENCH_F_INT: return json_node_init_int(n, f->i);
        case BENCH_F_DBL: return json_node_init_double(n, f->d);
        case BENCH_F_BOOL: return json_node_init_boolean(n, f->b);
        case BENCH_F_JSON: {
            JsonNode *nested = json_from_string(f->s, NULL);
            if (nested) {
                json_node_free(n);
                return nested;
            }
            break;
        }
        case BENCH_F_NULL: break;
    }
    return json_node_init_null(n);
}

void bench_json_line(const bench_record *r, GString *out)
{
    JsonObject *obj = json_object_new();
    for (int i = 0; i < r->n; i++)
        json_object_set_member(obj, r->f[i].key, field_node(&r->f[i]));
    JsonNode *root = json_node_init_object(json_node_alloc(), obj);
    json_object_unref(obj);
    char *text = json_to_string(root, FALSE);
    g_string_append(out, text);
    g_free(text);
    json_node_unref(root);
}

static void csv_cell(GString *out, const char *s)
{
    if (strpbrk(s, ",\"\n\r") == NULL) {
        g_string_append(out, s);
        return;
    }
    g_string_append_c(out, '"');
    for (const char *p = s; *p; p++) {
        if (*p == '"')
            g_string_append_c(out, '"');
        g_string_append_c(out, *p);
    }
    g_string_append_c(out, '"');
}

void bench_csv_header(const bench_record *r, GString *out)
{
    for (int i = 0; i < r->n; i++) {
        if (i)
            g_string_append_c(out, ',');
        csv_cell(out, r->f[i].key);
    }
}

void bench_csv_row(const bench_record *r, GString *out)
{
    for (int i = 0; i < r->n; i++) {
        const bench_field *f = &r->f[i];
        if (i)
            g_string_append_c(out, ',');
        switch (f->type) {
            case BENCH_F_STR:
            case BENCH_F_JSON: csv_cell(out, f->s); break;
            case BENCH_F_INT: g_string_append_printf(out, "%" G_GINT64_FORMAT, (gint64)f->i); break;
            case BENCH_F_DBL: append_double(out, f->d); break;
            case BENCH_F_BOOL: g_string_append(out, f->b ? "true" : "false"); break;
            case BENCH_F_NULL: break;
        }
    }
}

void bench_csv_write_all(GPtrArray *records, GString *out)
{
    /* groups in order of first appearance: (kind, key list) */
    guint n = records->len;
    gboolean *done = g_new0(gboolean, n ? n : 1);
    bool first_group = true;
    for (guint i = 0; i < n; i++) {
        if (done[i])
            continue;
        const bench_record *lead = g_ptr_array_index(records, i);
        if (!first_group)
            g_string_append_c(out, '\n');
        first_group = false;
        bench_csv_header(lead, out);
        g_string_append_c(out, '\n');
        for (guint j = i; j < n; j++) {
            const bench_record *r = g_ptr_array_index(records, j);
            if (done[j] || !bench_rec_same_keys(lead, r))
                continue;
            done[j] = TRUE;
            bench_csv_row(r, out);
            g_string_append_c(out, '\n');
        }
    }
    g_free(done);
}

/* ----------------------------------------------------------- reader */

/* Member `key` of a record read back: scalars by their JSON type (an
 * integer stays an integer), objects and arrays as their JSON text. */
static void member_to_field(bench_record *r, const char *key, JsonNode *v)
{
    switch (JSON_NODE_TYPE(v)) {
        case JSON_NODE_OBJECT:
        case JSON_NODE_ARRAY: {
            char *text = json_to_string(v, FALSE);
            bench_rec_json(r, key, text);
            g_free(text);
            return;
        }
        case JSON_NODE_NULL: bench_rec_str(r, key, NULL); return;
        case JSON_NODE_VALUE: break;
    }
    GType t = json_node_get_value_type(v);
    if (t == G_TYPE_INT64)
        bench_rec_int(r, key, json_node_get_int(v));
    else if (t == G_TYPE_DOUBLE)
        bench_rec_dbl(r, key, json_node_get_double(v));
    else if (t == G_TYPE_BOOLEAN)
        bench_rec_bool(r, key, json_node_get_boolean(v));
    else
        bench_rec_str(r, key, json_node_get_string(v));
}

bench_record *bench_json_parse(const char *line, char *err, size_t errlen)
{
    JsonParser *p = json_parser_new_immutable();
    GError *e = NULL;
    bench_record *r = NULL;
    if (!json_parser_load_from_data(p, line, -1, &e)) {
        bench_fail(err, errlen, "%s", e->message);
        g_error_free(e);
    } else if (!json_parser_get_root(p) || !JSON_NODE_HOLDS_OBJECT(json_parser_get_root(p))) {
        bench_fail(err, errlen, "expected a JSON object {...} on the line");
    } else {
        JsonObject *obj = json_node_get_object(json_parser_get_root(p));
        JsonObjectIter it;
        const char *key;
        JsonNode *v;
        r = g_new0(bench_record, 1);
        json_object_iter_init_ordered(&it, obj);
        while (json_object_iter_next_ordered(&it, &key, &v))
            member_to_field(r, key, v);
    }
    g_object_unref(p);
    return r;
}

int bench_jsonl_read(const char *path, GPtrArray *arr, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot open '%s': %s", path, g_strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int lineno = 0, rc = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        const char *p = line;
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
            p++;
        if (!*p)
            continue;
        char perr_buf[200];
        bench_record *r = bench_json_parse(line, perr_buf, sizeof perr_buf);
        if (!r) {
            snprintf(err, errlen, "%s:%d: not a tp-bench JSON-lines record: %s", path, lineno,
                     perr_buf);
            rc = -1;
            break;
        }
        g_ptr_array_add(arr, r);
    }
    free(line);
    fclose(f);
    return rc;
}

/* ------------------------------------------------------------- sink */

/* Whether path names a regular file that may be replaced by rename: not a
 * symlink (its link would be lost), a special file (a device node, a
 * FIFO) or a file with other hard links (they would keep the old data).
 * A missing path is created the same way. */
static bool replace_atomically(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0)
        return errno == ENOENT;
    return S_ISREG(sb.st_mode) && sb.st_nlink == 1;
}

/* Write all of data to fd; false with errno set on failure. */
static bool write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = EIO;
            return false;
        }
        data += n;
        len -= (size_t)n;
    }
    return true;
}

/* Write out to what the user named: a regular file (or a new one) is
 * replaced atomically (a temporary file renamed over it, so a reader never
 * sees half a file); anything else -- a symlink, a device, a FIFO, a
 * hard-linked file -- is written in place through open(), so the link, the
 * node and its type stay what they were. 0, or -1 with err naming the
 * file. */
static int write_output(const char *flag, const char *path, const GString *out, char *err,
                        size_t errlen)
{
    if (replace_atomically(path)) {
        GError *e = NULL;
        if (g_file_set_contents(path, out->str, (gssize)out->len, &e))
            return 0;
        snprintf(err, errlen, "cannot write %s '%s': %s", flag, path, e->message);
        g_error_free(e);
        return -1;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) {
        snprintf(err, errlen, "cannot write %s '%s': %s", flag, path, g_strerror(errno));
        return -1;
    }
    bool ok = write_all(fd, out->str, out->len);
    int saved = errno;
    if (close(fd) != 0 && ok) {
        ok = false;
        saved = errno;
    }
    if (!ok) {
        snprintf(err, errlen, "writing %s '%s' failed: %s", flag, path, g_strerror(saved));
        return -1;
    }
    return 0;
}

/* One output path, before the run: 0 if it can be written (an existing
 * writable file or device, or a new file in a writable directory). */
static int check_path(const char *flag, const char *path, char *err, size_t errlen)
{
    struct stat sb;
    if (stat(path, &sb) == 0) {
        if (S_ISDIR(sb.st_mode)) {
            snprintf(err, errlen, "%s '%s' is a directory; give a file name", flag, path);
            return -1;
        }
        if (access(path, W_OK) != 0) {
            snprintf(err, errlen, "%s '%s' is not writable: %s", flag, path, g_strerror(errno));
            return -1;
        }
        return 0;
    }
    if (errno != ENOENT) {
        snprintf(err, errlen, "%s '%s': %s", flag, path, g_strerror(errno));
        return -1;
    }
    /* missing (or a dangling symlink): created in the directory named */
    char *dir = g_path_get_dirname(path);
    errno = 0;
    int ok = stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode) && access(dir, W_OK | X_OK) == 0;
    if (!ok)
        snprintf(err, errlen, "%s '%s' cannot be created in directory '%s': %s", flag, path, dir,
                 errno ? g_strerror(errno) : "not a directory");
    g_free(dir);
    return ok ? 0 : -1;
}

int bench_sink_check_paths(const char *json_path, const char *csv_path, const char *out_path,
                           char *err, size_t errlen)
{
    if (json_path && check_path("--json", json_path, err, errlen) != 0)
        return -1;
    if (csv_path && check_path("--csv", csv_path, err, errlen) != 0)
        return -1;
    if (out_path && check_path("--out", out_path, err, errlen) != 0)
        return -1;
    return 0;
}

void bench_sink_init(bench_sink *s, const char *json_path, const char *csv_path)
{
    memset(s, 0, sizeof *s);
    s->json_path = json_path;
    s->csv_path = csv_path;
    s->records = g_ptr_array_new_with_free_func((GDestroyNotify)bench_rec_free);
}

void bench_sink_set_meta(bench_sink *s, bench_record *meta)
{
    bench_rec_free(s->meta);
    s->meta = meta;
}

static void sink_write(bench_sink *s, const bench_record *r);

void bench_sink_emit(bench_sink *s, const bench_record *r)
{
    if (s->meta && !s->meta_done) {
        s->meta_done = true; /* the meta record goes first, once */
        sink_write(s, s->meta);
    }
    sink_write(s, r);
}

static void sink_write(bench_sink *s, const bench_record *r)
{
    if (s->failed)
        return;
    if (s->json_path) {
        if (!s->json) {
            s->json = fopen(s->json_path, "w");
            if (!s->json) {
                snprintf(s->err, sizeof s->err, "cannot write --json '%s': %s", s->json_path,
                         g_strerror(errno));
                s->failed = true;
                return;
            }
        }
        GString *line = g_string_new(NULL);
        bench_json_line(r, line);
        g_string_append_c(line, '\n');
        /* flushed per record (a killed run keeps what it measured); a
         * failed write (disk full) fails the run, naming the file */
        if (fwrite(line->str, 1, line->len, s->json) != line->len || fflush(s->json) != 0) {
            snprintf(s->err, sizeof s->err, "writing --json '%s' failed: %s", s->json_path,
                     g_strerror(errno));
            s->failed = true; /* reported by bench_sink_close */
        }
        g_string_free(line, TRUE);
    }
    if (s->csv_path)
        g_ptr_array_add(s->records, bench_rec_copy(r));
}

int bench_sink_close(bench_sink *s)
{
    int rc = s->failed ? -1 : 0;
    if (s->json && fclose(s->json) != 0 && rc == 0) {
        snprintf(s->err, sizeof s->err, "writing --json '%s' failed: %s", s->json_path,
                 g_strerror(errno));
        rc = -1;
    }
    s->json = NULL;
    if (rc == 0 && s->csv_path && s->records->len > 0) {
        GString *out = g_string_new(NULL);
        bench_csv_write_all(s->records, out);
        rc = write_output("--csv", s->csv_path, out, s->err, sizeof s->err);
        g_string_free(out, TRUE);
    }
    g_ptr_array_free(s->records, TRUE);
    s->records = NULL;
    bench_sink_set_meta(s, NULL);
    return rc;
}

/* ------------------------------------------------------------ placement */

void bench_rec_place(bench_record *r, const bench_place *p)
{
    bench_rec_int(r, "nodes", p->nodes);
    bench_rec_int(r, "ranks_per_node", p->ranks_per_node);
    bench_rec_str(r, "link", p->link[0] ? p->link : "none");
}

void bench_place_from_rec(const bench_record *r, bench_place *out)
{
    memset(out, 0, sizeof *out);
    double ranks = bench_rec_get_num(r, "ranks", 1);
    out->nodes = (int)bench_rec_get_num(r, "nodes", 1);
    out->ranks_per_node = (int)bench_rec_get_num(r, "ranks_per_node", ranks);
    const char *link = bench_rec_get_str(r, "link");
    g_strlcpy(out->link, link && *link ? link : "none", sizeof out->link);
}
