/* SPDX-License-Identifier: MIT */
/*
 * loader.c — find, open and check plugins (GModule).
 *
 * A name is looked up as libtp-<name>.so in each directory of
 * TP_PLUGIN_PATH, then in the build tree (only when this libtp runs from
 * the build tree), then in the install directory (<libdir>/tp-1 beside the
 * running libtp, then the configured one); never the current
 * directory or a relative one. The first file found is the one used: if it
 * is refused, that refusal is the error (a later file is not tried, so a
 * broken plugin is never silently replaced by another).
 */
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tp/tp-info.h>

#include "tp-internal.h"

#ifndef TP_BUILD_LIBTP_DIR
#define TP_BUILD_LIBTP_DIR ""
#endif
#ifndef TP_BUILD_PLUGIN_DIRS
#define TP_BUILD_PLUGIN_DIRS ""
#endif
#ifndef TP_PLUGIN_INSTALL_DIR
#define TP_PLUGIN_INSTALL_DIR "/usr/local/lib/tp-1"
#endif

#define END_OF(T, f) (offsetof(T, f) + sizeof(((T *)0)->f))

/* --------------------------------------------------------- slot tables */

typedef struct slot {
    const char *name;
    size_t offset;
    bool required;
    unsigned since_minor; /* ABI minor the slot came in */
} slot;

/* The tables come from the X-macro lists in tp-plugin.h. The enums give
 * each slot its index, and the assertions below check that the lists name
 * every function slot of the structs, in order. */
#define COMM_SLOT(f, req, minor)   {#f, offsetof(tp_comm_ops, f), req, minor},
#define DEVICE_SLOT(f, req, minor) {#f, offsetof(tp_device_ops, f), req, minor},
static const slot comm_slots[] = {TP_COMM_OPS_SLOTS(COMM_SLOT)};
static const slot device_slots[] = {TP_DEVICE_OPS_SLOTS(DEVICE_SLOT)};

#define SLOT_INDEX(f, req, minor) SLOT_INDEX_##f,
enum {
    TP_COMM_OPS_SLOTS(SLOT_INDEX) N_COMM_SLOTS
};
enum {
    TP_DEVICE_OPS_SLOTS(SLOT_INDEX) N_DEVICE_SLOTS
};
#define SLOT_AT(f) (sizeof(size_t) + (size_t)SLOT_INDEX_##f * sizeof(void (*)(void)))
/* In tp_comm_ops the data field mem_kinds (padded to a pointer) sits between
 * abort and the slots that came in ABI 1.3. */
#define COMM_SLOT_AT(f)                                                                            \
    (SLOT_AT(f) + (SLOT_INDEX_##f > SLOT_INDEX_abort ? sizeof(void (*)(void)) : 0))
#define ASSERT_COMM_SLOT(f, req, minor)                                                            \
    _Static_assert(offsetof(tp_comm_ops, f) == COMM_SLOT_AT(f),                                    \
                   "TP_COMM_OPS_SLOTS: '" #f "' is out of order or a slot before it is missing");
#define ASSERT_DEVICE_SLOT(f, req, minor)                                                          \
    _Static_assert(offsetof(tp_device_ops, f) == SLOT_AT(f),                                       \
                   "TP_DEVICE_OPS_SLOTS: '" #f                                                     \
                   "' is out of order or a slot before it is missing");
TP_COMM_OPS_SLOTS(ASSERT_COMM_SLOT)
TP_DEVICE_OPS_SLOTS(ASSERT_DEVICE_SLOT)
_Static_assert(offsetof(tp_comm_ops, mem_kinds) ==
                   sizeof(size_t) + (SLOT_INDEX_abort + 1) * sizeof(void (*)(void)),
               "TP_COMM_OPS_SLOTS: the slots before mem_kinds end with abort");
_Static_assert(sizeof(tp_comm_ops) == sizeof(size_t) + (N_COMM_SLOTS + 1) * sizeof(void (*)(void)),
               "TP_COMM_OPS_SLOTS does not list the last slots of tp_comm_ops");
_Static_assert(sizeof(tp_device_ops) == sizeof(size_t) + N_DEVICE_SLOTS * sizeof(void (*)(void)),
               "TP_DEVICE_OPS_SLOTS does not list the last slots of tp_device_ops");

/* Bytes an ops struct must have: up to the end of its last required slot. */
static size_t required_size(const slot *slots, size_t n)
{
    size_t end = sizeof(size_t);
    for (size_t i = 0; i < n; i++)
        if (slots[i].required && slots[i].offset + sizeof(void (*)(void)) > end)
            end = slots[i].offset + sizeof(void (*)(void));
    return end;
}

static bool slot_set(const void *ops, const slot *s)
{
    void (*fn)(void);
    memcpy(&fn, (const char *)ops + s->offset, sizeof fn);
    return fn != NULL;
}

/* Names of the slots of `ops` that are set, as a NULL-terminated array. */
static char **slot_names(const void *ops, const slot *slots, size_t n)
{
    GPtrArray *a = g_ptr_array_new();
    for (size_t i = 0; i < n; i++)
        if (slot_set(ops, &slots[i]))
            g_ptr_array_add(a, g_strdup(slots[i].name));
    g_ptr_array_add(a, NULL);
    return (char **)g_ptr_array_free(a, FALSE);
}

/* Copy an ops struct of a possibly older or newer plugin into the zeroed
 * full-size `dst`; check its size and required slots. */
static tp_status copy_ops(const char *path, const char *what, unsigned minor, const void *src,
                          void *dst, size_t full, const slot *slots, size_t n)
{
    size_t size, min = required_size(slots, n);
    memcpy(&size, src, sizeof size);
    if (size < min)
        return tp_set_error(TP_ERR_PLUGIN,
                            "plugin %s refused: its %s struct_size is %zu bytes, at least %zu "
                            "expected (up to the last required slot); set struct_size = "
                            "sizeof(%s) and rebuild against <tp/tp-plugin.h>",
                            path, what, size, min, what);
    memset(dst, 0, full);
    memcpy(dst, src, size < full ? size : full);
    /* a size that ends inside a slot: that slot is past it, so NULL (not
     * the first bytes of a pointer); so is a data field cut short */
    for (size_t i = 0; i < n; i++)
        if (slots[i].offset < size && slots[i].offset + sizeof(void (*)(void)) > size)
            memset((char *)dst + slots[i].offset, 0, size - slots[i].offset);
    if (slots == comm_slots && size < END_OF(tp_comm_ops, mem_kinds) &&
        size > offsetof(tp_comm_ops, mem_kinds))
        memset((char *)dst + offsetof(tp_comm_ops, mem_kinds), 0,
               size - offsetof(tp_comm_ops, mem_kinds));
    for (size_t i = 0; i < n; i++)
        if (slots[i].required && !slot_set(dst, &slots[i]))
            return tp_set_error(TP_ERR_PLUGIN,
                                "plugin %s refused: required %s slot '%s' is NULL; every slot "
                                "marked [required] in <tp/tp-plugin.h> must be provided",
                                path, what, slots[i].name);
    for (size_t i = 0; i < n; i++)
        if (slots[i].since_minor > minor && !slot_set(dst, &slots[i]))
            tpi_debug("plugin", "%s: %s slot '%s' came in ABI %d.%u, after the plugin's %d.%u",
                      path, what, slots[i].name, TP_ABI_MAJOR, slots[i].since_minor, TP_ABI_MAJOR,
                      minor);
    return TP_OK;
}

/* Slots [first, last] of tp_comm_ops come all or none (`why`: what the
 * plugin does instead when it sets none). The nonblocking six: a plugin
 * with some of them would mix its own requests with the core's progress
 * thread on one communicator, whose order then differs between ranks. The
 * symmetric-memory pair: memory from mem_alloc must be freed by mem_free. */
static tp_status check_all_or_none(const char *path, const tp_comm_ops *ops, int first, int last,
                                   const char *why)
{
    int set = 0;
    for (int i = first; i <= last; i++)
        set += slot_set(ops, &comm_slots[i]);
    if (set == 0 || set == last - first + 1)
        return TP_OK;
    for (int i = first; i <= last; i++)
        if (!slot_set(ops, &comm_slots[i]))
            return tp_set_error(TP_ERR_PLUGIN,
                                "plugin %s refused: it sets %d of the %d slots %s .. %s but '%s' "
                                "is NULL; provide all or none (%s)",
                                path, set, last - first + 1, comm_slots[first].name,
                                comm_slots[last].name, comm_slots[i].name, why);
    return TP_OK;
}

static tp_status check_slot_groups(const char *path, const tp_comm_ops *ops)
{
    TP_TRY(check_all_or_none(path, ops, SLOT_INDEX_iall_reduce, SLOT_INDEX_req_free,
                             "the core then serves the nonblocking API with its progress thread"));
    return check_all_or_none(path, ops, SLOT_INDEX_mem_alloc, SLOT_INDEX_mem_free,
                             "tp_comm_mem_alloc then returns the device's memory");
}

/* ------------------------------------------------------- opening a file */

/* "<name>" of ".../libtp-<name>.so", or NULL. */
static char *name_from_path(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t len = strlen(base);
    if (len <= strlen("libtp-.so") || strncmp(base, "libtp-", 6) != 0 ||
        strcmp(base + len - 3, ".so") != 0)
        return NULL;
    return g_strndup(base + 6, len - 6 - 3);
}

static void plugin_close(tp_plugin *p)
{
    if (!p)
        return;
    if (p->module)
        g_module_close(p->module);
    g_free(p->path);
    g_free(p->name);
    g_free(p);
}

/* The descriptor's own checks: size, ABI major, name, at least one vtable. */
static tp_status check_desc(const char *path, const char *file_name, const tp_plugin_desc *d)
{
    if (d->struct_size < END_OF(tp_plugin_desc, abi_minor))
        return tp_set_error(TP_ERR_PLUGIN,
                            "plugin %s refused: descriptor struct_size is %zu bytes, at least "
                            "%zu expected; build the descriptor with TP_PLUGIN_DEFINE",
                            path, d->struct_size, END_OF(tp_plugin_desc, abi_minor));
    if (d->abi_major != TP_ABI_MAJOR)
        return tp_set_error(TP_ERR_PLUGIN,
                            "plugin %s refused: built for plugin ABI %u.%u, this libtp has ABI "
                            "%d.%d (the major versions must be equal); rebuild the plugin against "
                            "this tp's <tp/tp-plugin.h>",
                            path, d->abi_major, d->abi_minor, TP_ABI_MAJOR, TP_ABI_MINOR);
    if (d->struct_size < END_OF(tp_plugin_desc, device))
        return tp_set_error(TP_ERR_PLUGIN,
                            "plugin %s refused: descriptor struct_size is %zu bytes, at least "
                            "%zu expected; build the descriptor with TP_PLUGIN_DEFINE",
                            path, d->struct_size, END_OF(tp_plugin_desc, device));
    if (!d->name || strcmp(d->name, file_name) != 0)
        return tp_set_error(TP_ERR_PLUGIN,
                            "plugin %s refused: name mismatch: the descriptor says '%s' but the "
                            "file is named libtp-%s.so; rename the file to libtp-%s.so or fix "
                            "the name in TP_PLUGIN_DEFINE",
                            path, d->name ? d->name : "(null)", file_name,
                            d->name ? d->name : "<name>");
    if (!d->comm && !d->device)
        return tp_set_error(TP_ERR_PLUGIN,
                            "plugin %s refused: the descriptor has neither comm nor device ops",
                            path);
    return TP_OK;
}

/* Open `path` and apply every check that does not depend on how the
 * plugin will be used (kind and probe are checked by the caller). */
static tp_status plugin_open(const char *path, tp_plugin **out)
{
    *out = NULL;
    if (!g_file_test(path, G_FILE_TEST_IS_REGULAR))
        return tp_set_error(TP_ERR_PLUGIN, "plugin %s: no such file", path);
    char *file_name = name_from_path(path);
    if (!file_name)
        return tp_set_error(TP_ERR_PLUGIN,
                            "plugin %s refused: the file name must be libtp-<name>.so, where "
                            "<name> is the plugin's descriptor name",
                            path);

    tp_plugin *p = g_new0(tp_plugin, 1);
    p->path = g_strdup(path);
    tp_status st = TP_OK;
    p->module = g_module_open(path, G_MODULE_BIND_LOCAL);
    if (!p->module) {
        st = tp_set_error(TP_ERR_PLUGIN,
                          "plugin %s refused: not a loadable shared object (%s); rebuild it "
                          "as a shared module or remove it from the plugin path",
                          path, g_module_error());
        goto out;
    }
    gpointer sym = NULL;
    if (!g_module_symbol(p->module, TP_PLUGIN_ENTRY, &sym) || !sym) {
        st = tp_set_error(TP_ERR_PLUGIN,
                          "plugin %s refused: no entry point %s; a plugin defines it with "
                          "TP_PLUGIN_DEFINE(...) from <tp/tp-plugin.h> and must export it "
                          "(default visibility)",
                          path, TP_PLUGIN_ENTRY);
        goto out;
    }
    const tp_plugin_desc *(*entry)(void);
    memcpy(&entry, &sym, sizeof entry);
    const tp_plugin_desc *d = entry();
    if (!d) {
        st = tp_set_error(TP_ERR_PLUGIN, "plugin %s refused: %s() returned NULL", path,
                          TP_PLUGIN_ENTRY);
        goto out;
    }
    TP_TRY_GOTO(check_desc(path, file_name, d), st, out);
    p->desc = d;
    p->name = g_strdup(d->name);
    if (d->comm) {
        TP_TRY_GOTO(copy_ops(path, "tp_comm_ops", d->abi_minor, d->comm, &p->comm, sizeof p->comm,
                             comm_slots, N_COMM_SLOTS),
                    st, out);
        TP_TRY_GOTO(check_slot_groups(path, &p->comm), st, out);
        p->has_comm = true;
    }
    if (d->device) {
        TP_TRY_GOTO(copy_ops(path, "tp_device_ops", d->abi_minor, d->device, &p->device,
                             sizeof p->device, device_slots, N_DEVICE_SLOTS),
                    st, out);
        p->has_device = true;
    }
out:
    g_free(file_name);
    if (st) {
        tpi_debug("plugin", "%s", tp_last_error());
        plugin_close(p);
        return st;
    }
    tpi_debug("plugin", "%s: accepted '%s' %s (ABI %u.%u)%s%s", path, p->name,
              p->desc->version ? p->desc->version : "?", p->desc->abi_major, p->desc->abi_minor,
              p->has_comm ? " comm" : "", p->has_device ? " device" : "");
    *out = p;
    return TP_OK;
}

/* probe(): 1 = available; else 0 and the reason in `reason`. */
static int plugin_probe(const tp_plugin *p, char *reason, size_t len)
{
    reason[0] = '\0';
    if (p->desc->struct_size < END_OF(tp_plugin_desc, probe) || !p->desc->probe)
        return 1;
    if (p->desc->probe(reason, len) == 1) /* 1 = available; anything else is not */
        return 1;
    reason[len - 1] = '\0';
    if (!reason[0])
        g_strlcpy(reason, "probe() gave no reason", len);
    return 0;
}

/* -------------------------------------------------------- search order */

/* Does this libtp run from the build tree? Then the plugins built next to
 * it are found without installing. */
static bool libtp_in_build_tree(void)
{
    Dl_info dl;
    if (!TP_BUILD_LIBTP_DIR[0] || !dladdr((void *)tp_plugin_scan_new, &dl) || !dl.dli_fname)
        return false;
    char *lib = realpath(dl.dli_fname, NULL);
    char *build = realpath(TP_BUILD_LIBTP_DIR, NULL);
    bool yes = false;
    if (lib && build) {
        char *dir = g_path_get_dirname(lib);
        yes = strcmp(dir, build) == 0;
        g_free(dir);
    }
    free(lib);
    free(build);
    return yes;
}

/* `skipped` (may be NULL) collects the relative entries. */
static void add_dir(GArray *dirs, GPtrArray *skipped, const char *path, const char *origin)
{
    if (!path[0])
        return;
    if (!g_path_is_absolute(path)) {
        tpi_debug("plugin", "%s entry '%s' skipped: relative directories are never searched",
                  origin, path);
        if (skipped)
            g_ptr_array_add(skipped, g_strdup(path));
        return;
    }
    char *real = realpath(path, NULL);
    const char *key = real ? real : path;
    for (guint i = 0; i < dirs->len; i++) {
        tp_plugin_dir *d = &g_array_index(dirs, tp_plugin_dir, i);
        if (strcmp(d->path, key) == 0) {
            free(real);
            return; /* already searched */
        }
    }
    tp_plugin_dir d = {g_strdup(key), origin, g_file_test(key, G_FILE_TEST_IS_DIR)};
    g_array_append_val(dirs, d);
    free(real);
}

static void add_dir_list(GArray *dirs, GPtrArray *skipped, const char *list, const char *origin)
{
    char **parts = g_strsplit(list ? list : "", ":", -1);
    for (char **s = parts; *s; s++)
        add_dir(dirs, skipped, *s, origin);
    g_strfreev(parts);
}

/* An installed libtp's own <libdir>/tp-1 (the plugin directory beside it):
 * found where the tree is, also when it was moved or installed with DESTDIR.
 * In the usual case it is TP_PLUGIN_INSTALL_DIR, searched once. */
static void add_dir_next_to_libtp(GArray *dirs)
{
    Dl_info dl;
    if (!dladdr((void *)tp_plugin_scan_new, &dl) || !dl.dli_fname)
        return;
    char *lib = realpath(dl.dli_fname, NULL);
    if (!lib)
        return;
    char *dir = g_path_get_dirname(lib);
    char *plugins = g_build_filename(dir, "tp-1", NULL); /* plugindir in meson.build */
    if (g_file_test(plugins, G_FILE_TEST_IS_DIR))
        add_dir(dirs, NULL, plugins, "install dir");
    g_free(plugins);
    g_free(dir);
    free(lib);
}

/* The directories searched, in order; `skipped` (may be NULL) gets the
 * relative TP_PLUGIN_PATH entries, which are not. */
static GArray *search_dirs(GPtrArray *skipped)
{
    GArray *dirs = g_array_new(FALSE, TRUE, sizeof(tp_plugin_dir));
    add_dir_list(dirs, skipped, getenv("TP_PLUGIN_PATH"), "TP_PLUGIN_PATH");
    if (libtp_in_build_tree())
        add_dir_list(dirs, NULL, TP_BUILD_PLUGIN_DIRS, "build tree");
    else
        add_dir_next_to_libtp(dirs);
    add_dir(dirs, NULL, TP_PLUGIN_INSTALL_DIR, "install dir");
    return dirs;
}

/* A built-in directory: one of tp's own plugin directories. */
static bool built_in(const tp_plugin_dir *d)
{
    return strcmp(d->origin, "TP_PLUGIN_PATH") != 0;
}

static void free_dirs(GArray *dirs)
{
    for (guint i = 0; i < dirs->len; i++)
        g_free(g_array_index(dirs, tp_plugin_dir, i).path);
    g_array_free(dirs, TRUE);
}

/* ---------------------------------------------------------------- scan */

void tp_plugin_info_clear(tp_plugin_info *info)
{
    if (!info)
        return;
    g_free(info->path);
    g_free(info->file_name);
    g_free(info->reason);
    g_free(info->shadowed_by);
    g_free(info->name);
    g_free(info->version);
    g_free(info->description);
    g_strfreev(info->comm_ops);
    g_strfreev(info->device_ops);
    g_free(info->unavailable_reason);
    g_strfreev(info->shadows);
    for (int i = 0; i < info->n_settings; i++) {
        g_free(info->settings[i].name);
        g_free(info->settings[i].default_value);
        g_free(info->settings[i].description);
    }
    g_free(info->settings);
    memset(info, 0, sizeof *info);
}

#define MAX_SETTINGS 256 /* a list without its NULL end is not read past this */

/* The plugin's optional settings list (TP_PLUGIN_SETTINGS_ENTRY), copied. */
static void read_settings(const tp_plugin *p, tp_plugin_info *out)
{
    gpointer sym = NULL;
    if (!g_module_symbol(p->module, TP_PLUGIN_SETTINGS_ENTRY, &sym) || !sym)
        return;
    const tp_plugin_setting *(*get)(void) = (const tp_plugin_setting *(*)(void))sym;
    const tp_plugin_setting *list = get();
    int n = 0;
    while (list && n < MAX_SETTINGS && list[n].name)
        n++;
    out->settings = g_new0(tp_plugin_setting_info, n ? n : 1);
    out->n_settings = n;
    for (int i = 0; i < n; i++) {
        out->settings[i].name = g_strdup(list[i].name);
        out->settings[i].default_value =
            g_strdup(list[i].default_value ? list[i].default_value : "unset");
        out->settings[i].description = g_strdup(list[i].description ? list[i].description : "");
    }
}

void tp_plugin_inspect(const char *path, tp_plugin_info *out)
{
    memset(out, 0, sizeof *out);
    out->path = g_strdup(path ? path : "");
    out->file_name = path ? name_from_path(path) : NULL;
    char *saved = g_strdup(tp_last_error()); /* inspecting is not an error of the caller */
    tp_plugin *p = NULL;
    out->status = path ? plugin_open(path, &p) : tp_set_error(TP_ERR_INVALID_ARG, "no path");
    if (out->status) {
        out->reason = g_strdup(tp_last_error());
    } else {
        const tp_plugin_desc *d = p->desc;
        out->name = g_strdup(d->name);
        out->version = g_strdup(d->version ? d->version : "");
        out->description = g_strdup(d->description ? d->description : "");
        out->abi_major = d->abi_major;
        out->abi_minor = d->abi_minor;
        out->is_comm = p->has_comm;
        out->is_device = p->has_device;
        out->comm_ops =
            p->has_comm ? slot_names(&p->comm, comm_slots, N_COMM_SLOTS) : g_new0(char *, 1);
        out->comm_mem_kinds = p->has_comm ? p->comm.mem_kinds : 0;
        out->device_ops = p->has_device ? slot_names(&p->device, device_slots, N_DEVICE_SLOTS)
                                        : g_new0(char *, 1);
        char reason[512];
        out->available = plugin_probe(p, reason, sizeof reason) != 0;
        if (!out->available)
            out->unavailable_reason = g_strdup(reason);
        read_settings(p, out);
        plugin_close(p);
    }
    tp_set_error(TP_OK, "%s", saved);
    g_free(saved);
}

static gint cmp_str(gconstpointer a, gconstpointer b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Add `info` to `infos`: the first file of its name wins, a later one is
 * shadowed by it (and listed in the winner's `shadows`). */
static void add_info(GArray *infos, tp_plugin_info *info)
{
    for (guint k = 0; k < infos->len; k++) {
        tp_plugin_info *prev = &g_array_index(infos, tp_plugin_info, k);
        if (info->file_name && prev->file_name && !prev->shadowed_by &&
            strcmp(prev->file_name, info->file_name) == 0) {
            info->shadowed_by = g_strdup(prev->path);
            guint n = prev->shadows ? g_strv_length(prev->shadows) : 0;
            prev->shadows = g_renew(char *, prev->shadows, n + 2);
            prev->shadows[n] = g_strdup(info->path);
            prev->shadows[n + 1] = NULL;
            break;
        }
    }
    g_array_append_val(infos, *info);
}

tp_plugin_scan *tp_plugin_scan_new(void)
{
    tp_plugin_scan *scan = g_new0(tp_plugin_scan, 1);
    GPtrArray *skipped = g_ptr_array_new();
    GArray *dirs = search_dirs(skipped);
    GArray *infos = g_array_new(FALSE, TRUE, sizeof(tp_plugin_info));
    for (guint i = 0; i < dirs->len; i++) {
        tp_plugin_dir *dir = &g_array_index(dirs, tp_plugin_dir, i);
        GDir *gd = dir->exists ? g_dir_open(dir->path, 0, NULL) : NULL;
        if (!gd)
            continue;
        GPtrArray *files = g_ptr_array_new_with_free_func(g_free);
        const char *f;
        while ((f = g_dir_read_name(gd)))
            if (g_str_has_prefix(f, "libtp-") && g_str_has_suffix(f, ".so"))
                g_ptr_array_add(files, g_build_filename(dir->path, f, NULL));
        g_dir_close(gd);
        g_ptr_array_sort(files, cmp_str);
        for (guint j = 0; j < files->len; j++) {
            tp_plugin_info info;
            tp_plugin_inspect(files->pdata[j], &info);
            info.origin = dir->origin;
            add_info(infos, &info);
        }
        g_ptr_array_free(files, TRUE);
    }
    g_ptr_array_add(skipped, NULL);
    scan->skipped = (char **)g_ptr_array_free(skipped, FALSE);
    scan->n_dirs = (int)dirs->len;
    scan->dirs = (tp_plugin_dir *)g_array_free(dirs, FALSE);
    scan->n_plugins = (int)infos->len;
    scan->plugins = (tp_plugin_info *)g_array_free(infos, FALSE);
    return scan;
}

void tp_plugin_scan_free(tp_plugin_scan *scan)
{
    if (!scan)
        return;
    for (int i = 0; i < scan->n_plugins; i++)
        tp_plugin_info_clear(&scan->plugins[i]);
    for (int i = 0; i < scan->n_dirs; i++)
        g_free(scan->dirs[i].path);
    g_free(scan->plugins);
    g_free(scan->dirs);
    g_strfreev(scan->skipped);
    g_free(scan);
}

/* -------------------------------------------------------------- loading */

static const char *kind_word(tp_plugin_kind kind)
{
    return kind == TP_KIND_COMM ? "communicator" : "device";
}

/* A message built in a fixed buffer (an error path: no aborting allocator). */
typedef struct msg_buf {
    char s[TPI_ERROR_MAX];
    size_t n;
} msg_buf;

static void G_GNUC_PRINTF(2, 3) msg_add(msg_buf *m, const char *fmt, ...)
{
    if (m->n >= sizeof m->s - 1)
        return;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(m->s + m->n, sizeof m->s - m->n, fmt, ap);
    va_end(ap);
    if (w > 0)
        m->n = m->n + (size_t)w < sizeof m->s ? m->n + (size_t)w : sizeof m->s - 1;
}

/* The plugins found that fit `kind`, listed into m; their names into names. */
static int list_found(const tp_plugin_scan *scan, tp_plugin_kind kind, msg_buf *m, msg_buf *names)
{
    int found = 0;
    for (int i = 0; i < scan->n_plugins; i++) {
        const tp_plugin_info *p = &scan->plugins[i];
        if (p->status || p->shadowed_by)
            continue;
        found++;
        msg_add(m, "\n    %-10s %-13s %s%s", p->name,
                p->is_comm && p->is_device ? "comm+device"
                : p->is_comm               ? "comm"
                                           : "device",
                p->path, p->available ? "" : " (cannot run here)");
        if ((kind == TP_KIND_COMM && p->is_comm) || (kind == TP_KIND_DEVICE && p->is_device))
            msg_add(names, "%s%s", names->n ? ", " : "", p->name);
    }
    return found;
}

/* "libtp-x.so" or "x.so" given as a name: the plain name and the path form. */
static bool file_name_hint(msg_buf *m, const char *name, const char *var)
{
    size_t len = strlen(name);
    bool prefix = strncmp(name, "libtp-", 6) == 0;
    bool suffix = len > 3 && strcmp(name + len - 3, ".so") == 0;
    if (!prefix && !suffix)
        return false;
    const char *plain = prefix ? name + 6 : name;
    int plain_len = (int)(strlen(plain) - (suffix ? 3 : 0));
    msg_add(m,
            "\n  '%s' looks like a file name, but a name is searched as libtp-<name>.so: give "
            "the plain name (%s=%.*s) or a path with a '/' (%s=./%s or %s=/absolute/dir/%s)",
            name, var, plain_len > 0 ? plain_len : 0, plain, var, name, var, name);
    return true;
}

/* The error for a name found nowhere: what exists, where we looked, the fix. */
static tp_status not_found(const char *name, tp_plugin_kind kind, const char *var)
{
    tp_plugin_scan *scan = tp_plugin_scan_new();
    static _Thread_local msg_buf m, names;
    m.n = names.n = 0;
    m.s[0] = names.s[0] = '\0';
    msg_add(&m, "%s=%s: no plugin libtp-%s.so found.\n  Looked in:", var, name, name);
    for (int i = 0; i < scan->n_dirs; i++)
        msg_add(&m, "\n    %s (%s%s)", scan->dirs[i].path, scan->dirs[i].origin,
                scan->dirs[i].exists ? "" : ", missing");
    if (scan->n_dirs == 0)
        msg_add(&m, " nothing (TP_PLUGIN_PATH is unset and no install dir)");
    for (char **s = scan->skipped; s && *s; s++)
        msg_add(&m, "%s'%s'",
                s == scan->skipped ? "\n  Not searched (relative TP_PLUGIN_PATH entries are never "
                                     "searched; give absolute directories): "
                                   : ", ",
                *s);
    msg_add(&m, "\n  Plugins found:");
    int found = list_found(scan, kind, &m, &names), refused = 0;
    for (int i = 0; i < scan->n_plugins; i++)
        refused += scan->plugins[i].status != TP_OK;
    if (!found)
        msg_add(&m, " none");
    if (refused)
        msg_add(&m, "\n  %d file(s) refused; run tp-info to see why", refused);
    bool file_like = file_name_hint(&m, name, var);
    msg_add(&m,
            "\n  Fix: set %s to one of the %s plugins found (%s), to the absolute path of a "
            "plugin file, or add the directory holding libtp-%s.so to TP_PLUGIN_PATH",
            var, kind_word(kind), names.n ? names.s : "none", file_like ? "<name>" : name);
    tp_plugin_scan_free(scan);
    return tp_set_error(TP_ERR_PLUGIN, "%s", m.s);
}

/* A file from TP_PLUGIN_PATH found before one of tp's own plugins of the
 * same name is used, and said so: a one-line notice on stderr. */
static void notice_shadowing(GArray *dirs, guint used, const char *file, const char *var,
                             const char *spec)
{
    const tp_plugin_dir *d = &g_array_index(dirs, tp_plugin_dir, used);
    if (built_in(d))
        return;
    for (guint i = used + 1; i < dirs->len; i++) {
        const tp_plugin_dir *b = &g_array_index(dirs, tp_plugin_dir, i);
        char *cand = built_in(b) ? g_build_filename(b->path, file, NULL) : NULL;
        if (cand && g_file_test(cand, G_FILE_TEST_EXISTS)) {
            fprintf(stderr,
                    "tp: notice: %s=%s: %s/%s from TP_PLUGIN_PATH shadows the built-in %s (%s)\n",
                    var, spec, d->path, file, cand, b->origin);
            g_free(cand);
            return;
        }
        g_free(cand);
    }
}

tp_status tpi_plugin_load(const char *spec, tp_plugin_kind kind, const char *var, tp_plugin **out)
{
    *out = NULL;
    if (!spec || !spec[0])
        return tp_set_error(TP_ERR_INVALID_ARG, "%s is empty: give a plugin name or path", var);
    tp_plugin *p = NULL;
    tp_status st;
    if (strchr(spec, '/')) {
        /* An explicit path: used as given (made absolute), no search. */
        char *path = g_canonicalize_filename(spec, NULL);
        tpi_debug("plugin", "%s=%s: trying %s", var, spec, path);
        st = plugin_open(path, &p);
        g_free(path);
    } else {
        GArray *dirs = search_dirs(NULL);
        char *file = g_strdup_printf("libtp-%s.so", spec);
        char *path = NULL;
        for (guint i = 0; i < dirs->len && !path; i++) {
            tp_plugin_dir *d = &g_array_index(dirs, tp_plugin_dir, i);
            char *cand = g_build_filename(d->path, file, NULL);
            if (g_file_test(cand, G_FILE_TEST_EXISTS)) {
                tpi_debug("plugin", "%s=%s: trying %s (%s)", var, spec, cand, d->origin);
                notice_shadowing(dirs, i, file, var, spec);
                path = cand;
            } else {
                tpi_debug("plugin", "%s=%s: skipped %s (%s): %s", var, spec, cand, d->origin,
                          d->exists ? "no such file" : "directory does not exist");
                g_free(cand);
            }
        }
        g_free(file);
        free_dirs(dirs);
        if (!path)
            return not_found(spec, kind, var);
        st = plugin_open(path, &p);
        g_free(path);
    }
    if (st)
        return tp_set_error(st, "%s=%s: %s", var, spec, tp_last_error());

    if ((kind == TP_KIND_COMM && !p->has_comm) || (kind == TP_KIND_DEVICE && !p->has_device)) {
        st = tp_set_error(TP_ERR_PLUGIN,
                          "%s=%s: plugin %s refused: '%s' is not a %s plugin (it provides "
                          "%s ops only); choose a %s plugin (tp-info lists them)",
                          var, spec, p->path, p->name, kind_word(kind),
                          p->has_comm ? "comm" : "device", kind_word(kind));
        plugin_close(p);
        return st;
    }
    char reason[512];
    if (!plugin_probe(p, reason, sizeof reason)) {
        st = tp_set_error(TP_ERR_UNAVAILABLE, "%s=%s: plugin '%s' (%s) cannot run here: %s", var,
                          spec, p->name, p->path, reason);
        plugin_close(p);
        return st;
    }
    *out = p;
    return TP_OK;
}

void tpi_plugin_unload(tp_plugin *p)
{
    plugin_close(p);
}
