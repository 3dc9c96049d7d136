/* SPDX-License-Identifier: MIT */
/*
 * tp-info.h — inspect the plugins the loader can see (used by tp-info).
 *
 * tp_plugin_scan_new() looks at every libtp-*.so in the directories the
 * loader searches, in the loader's order: each directory of
 * TP_PLUGIN_PATH, then the build tree (only when libtp itself runs from
 * it), then the install directory. It opens each file, applies the same
 * checks as loading by name, calls probe(), and closes the file again.
 * When two files have the same name the first one wins, as in the loader;
 * the later ones are reported with `shadowed_by`.
 */
#ifndef TP_INFO_H
#define TP_INFO_H

#include <stdbool.h>

#include <tp/tp.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One of a plugin's own settings (TP_PLUGIN_DEFINE_SETTINGS in tp-plugin.h). */
typedef struct tp_plugin_setting_info {
    char *name, *default_value, *description;
} tp_plugin_setting_info;

typedef struct tp_plugin_info {
    char *path;        /* absolute path of the file */
    char *file_name;   /* <name> from libtp-<name>.so */
    tp_status status;  /* TP_OK: accepted; else the refusal (see reason) */
    char *reason;      /* why the file was refused; NULL when accepted */
    char *shadowed_by; /* path of an earlier file with the same name, or NULL */

    /* Filled only for accepted plugins (status == TP_OK). */
    char *name, *version, *description;
    unsigned abi_major, abi_minor;
    bool is_comm, is_device;
    char **comm_ops; /* NULL-terminated names of the comm slots provided */
    uint32_t
        comm_mem_kinds; /* tp_comm_ops.mem_kinds: 0 = host memory only (GPU memory is staged) */
    char **device_ops;  /* NULL-terminated names of the device slots provided */
    bool available;     /* probe() said yes, or there is no probe */
    char *unavailable_reason; /* probe's reason when !available */

    /* Filled by tp_plugin_scan_new (NULL from tp_plugin_inspect). */
    const char *origin; /* the directory's origin, as in tp_plugin_dir */
    char **shadows;     /* NULL-terminated paths of later files of the same name that this one
                           hides (a file on TP_PLUGIN_PATH named like a built-in plugin) */

    /* The plugin's own settings, when it defines them (accepted plugins only). */
    int n_settings;
    tp_plugin_setting_info *settings;
} tp_plugin_info;

typedef struct tp_plugin_dir {
    char *path;
    const char *origin; /* "TP_PLUGIN_PATH", "build tree" or "install dir" */
    bool exists;
} tp_plugin_dir;

typedef struct tp_plugin_scan {
    int n_dirs;
    tp_plugin_dir *dirs;
    int n_plugins;
    tp_plugin_info *plugins; /* in search order; within a directory by file name */
    char **skipped;          /* NULL-terminated TP_PLUGIN_PATH entries never searched (relative) */
} tp_plugin_scan;

TP_API tp_plugin_scan *tp_plugin_scan_new(void);
TP_API void tp_plugin_scan_free(tp_plugin_scan *scan); /* NULL is a no-op */

/* Inspect one file (any path); fills *out, which tp_plugin_info_clear frees. */
TP_API void tp_plugin_inspect(const char *path, tp_plugin_info *out);
TP_API void tp_plugin_info_clear(tp_plugin_info *info);

#ifdef __cplusplus
}
#endif
#endif /* TP_INFO_H */
