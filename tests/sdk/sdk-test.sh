#!/bin/sh
# SPDX-License-Identifier: MIT
# Out-of-tree SDK test: install tp into a temporary root, build a plugin from
# a temporary directory using only the installed headers and tp.pc, load it
# by TP_PLUGIN_PATH and run the conformance suite against it.
#   sdk-test.sh BUILD_DIR SOURCE_DIR TP_CONFORMANCE [TP_LAUNCH]
set -eu
build=$1 src=$2 conformance=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

meson install -C "$build" --no-rebuild --quiet --destdir "$tmp/root" >"$tmp/install.log" 2>&1 ||
    { cat "$tmp/install.log"; exit 1; }
pc=$(find "$tmp/root" -name tp.pc | head -n 1)
[ -n "$pc" ] || { echo "FAIL: meson install did not install tp.pc"; exit 1; }
export PKG_CONFIG_PATH="$(dirname "$pc")" PKG_CONFIG_SYSROOT_DIR="$tmp/root"
plugindir=$(pkg-config --variable=plugindir tp)
[ -n "$plugindir" ] || { echo "FAIL: tp.pc has no plugindir variable"; exit 1; }
echo "installed SDK: $(pkg-config --modversion tp), plugindir=$plugindir"
for h in tp.h tp-plugin.h tp-plugin-util.h; do
    [ -n "$(find "$tmp/root" -path "*/include/tp/$h")" ] || { echo "FAIL: tp/$h not installed"; exit 1; }
done
[ -n "$(find "$tmp/root" -name 'libtp-loopback.so' -path '*tp-1*')" ] ||
    { echo "FAIL: backends not installed in <libdir>/tp-1"; exit 1; }

# A stranger's plugin: one C file, outside the tree, only the installed SDK.
mkdir -p "$tmp/tiny" "$tmp/plugins"
cp "$src/tests/sdk/tiny.c" "$tmp/tiny/"
cd "$tmp/tiny"
${CC:-cc} -std=c11 -Wall -Wextra -Wno-unused-parameter -Werror -fPIC -shared $(pkg-config --cflags tp) \
    -o "$tmp/plugins/libtp-tiny.so" tiny.c
TP_PLUGIN_PATH="$tmp/plugins" TP_BACKEND=tiny TP_WORLD_SIZE=1 "$conformance"

# The real tcp plugin, built out of tree from its standalone meson project
# against the same installed SDK, then loaded in place of the in-tree one.
if [ -n "${4:-}" ]; then
    launch=$4
    # The tcp plugin also needs the system's glib-2.0, which the sysroot
    # above would hide: give meson a tp.pc whose prefix points into the
    # temporary root instead, and no sysroot.
    mkdir -p "$tmp/pc"
    sed "s|^prefix=|prefix=$tmp/root|" "$pc" >"$tmp/pc/tp.pc"
    PKG_CONFIG_PATH="$tmp/pc" PKG_CONFIG_SYSROOT_DIR= \
    meson setup "$tmp/tcp-build" "$src/plugins/tcp/standalone" >"$tmp/tcp.log" 2>&1 &&
        ninja -C "$tmp/tcp-build" >>"$tmp/tcp.log" 2>&1 || { cat "$tmp/tcp.log"; exit 1; }
    TP_PLUGIN_PATH="$tmp/tcp-build" TP_DEBUG=plugin "$launch" -n 2 "$conformance" 2>"$tmp/debug.log"
    grep -q "$tmp/tcp-build/libtp-tcp.so" "$tmp/debug.log" ||
        { echo "FAIL: the out-of-tree libtp-tcp.so was not the one loaded"; cat "$tmp/debug.log"; exit 1; }
fi
