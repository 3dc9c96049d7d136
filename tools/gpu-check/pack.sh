#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# pack.sh — gather what a GPU machine needs to run tp's GPU checks from a
# build made here (the GPU machine has the CUDA driver, cuBLAS and NCCL but
# no GLib, Check or OpenBLAS): the programs, libtp and the plugins, and the
# shared libraries they need that are not the C runtime or CUDA, stripped,
# into one folder. run.sh (next to this file) runs the checks from it.
#
#   tools/gpu-check/pack.sh [BUILD_DIR] [BUNDLE_DIR]     (defaults: build, gpu-bundle)
#
# The bundle holds bin/ (programs), lib/ (libtp, libtp-layers and dependencies) and
# plugins/ (libtp-*.so). CUDA's own libraries (cudart, cuBLAS, cuBLASLt,
# NCCL) are taken from the GPU machine, not from here.
set -euo pipefail
build=${1:-build}
out=${2:-gpu-bundle}
[ -f "$build/core/libtp.so.0" ] && [ -f "$build/core/layers/libtp-layers.so.0" ] ||
    { echo "pack.sh: no libtp or libtp-layers in $build (build it first)" >&2; exit 2; }
[ -f "$build/backends/cuda/libtp-cuda.so" ] || { echo "pack.sh: $build has no cuda plugin (-Dcuda)" >&2; exit 2; }
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib" "$out/plugins"

programs=(tools/tp-bench/tp-bench tools/tp-info/tp-info tools/tp-conformance/tp-conformance
          tests/device/test-device tests/gpu/nccl/test-nccl
          tests/layers/test-layers tests/layers/test-lowp tests/layers/test-gpt
          examples/tp_mlp examples/tp_transformer)
for p in "${programs[@]}"; do
    if [ -f "$build/$p" ]; then cp "$build/$p" "$out/bin/"; else echo "pack.sh: skipping missing $p" >&2; fi
done
cp -L "$build/core/libtp.so.0" "$out/lib/"
# the layers library (tp-bench, the layer tests and the examples link it)
cp -L "$build/core/layers/libtp-layers.so.0" "$out/lib/"
for name in loopback cpu cuda nccl; do
    cp "$build/backends/$name/libtp-$name.so" "$out/plugins/"
done

# Dependencies resolved here that the GPU machine may lack: everything but
# the C runtime (glibc, libgcc, libstdc++) and CUDA/NCCL, which it has.
skip='^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|libpthread\.|librt\.|libgcc_s\.|libstdc\+\+\.|libcuda|libcudart|libcublas|libnccl|libtp\.)'
for f in "$out"/bin/* "$out"/lib/* "$out"/plugins/*; do
    ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}'
done | sort -u | while read -r soname path; do
    if ! [[ $soname =~ $skip ]] && [ ! -e "$out/lib/$soname" ]; then
        cp -L "$path" "$out/lib/$soname"
    fi
done
strip --strip-unneeded "$out"/bin/* "$out"/lib/* "$out"/plugins/* 2>/dev/null || true
cp "$(dirname "$0")/run.sh" "$out/"
du -sh "$out"
