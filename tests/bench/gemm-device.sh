#!/bin/sh
# SPDX-License-Identifier: MIT
# gemm-device.sh DEVICE — run `tp-bench gemm` on DEVICE (cpu or cuda) and
# check its vtable/direct comparison from the JSON records. Needs $TP_BENCH.
#   cpu:  f32 has a direct cblas_sgemm record; bf16 runs the vtable alone.
#   cuda: f32, bf16 and f16 each have a direct cublasGemmEx record. Without
#         a usable GPU the loader refuses the device with TP_ERR_UNAVAILABLE:
#         exit 77 (skip) with its reason.
# Tolerances on max|vtable - direct|: both sides multiply the same inputs
# (uniform in [-1, 1)) with f32 accumulation, so they differ by at most
# twice the f32 accumulation bound k * 2^-24 * sum|a||b| <= k^2 * 6e-8
# (2.4e-4 at k = 64, 1.7e-5 at k = 17), plus, for 16-bit outputs, one
# output ulp at |c| < k: bf16 (8 bits) 2^-2 and f16 (11 bits) 2^-5 for
# |c| < 64. Bounds: f32 1e-3, bf16 0.25 + 1e-3, f16 0.03125 + 1e-3.
set -u
dev=${1:?usage: gemm-device.sh cpu|cuda}
: "${TP_BENCH:?TP_BENCH must point at the tp-bench executable}"
unset TP_CUDA_TF32 TP_SYNC_TIMING # TF32 would need a looser f32 bound
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# run DTYPE SIZES: tp-bench gemm on $dev, records in $tmp/DTYPE.json
run() {
    TP_DEVICE=$dev "$TP_BENCH" gemm --tp 1 --dtype "$1" --sizes "$2" -n 2 -w 1 -q \
        --json "$tmp/$1.json" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    cat "$tmp/out"
    cat "$tmp/err" >&2
    if [ "$rc" -eq 1 ] && [ "$dev" = cuda ] && grep -q TP_ERR_UNAVAILABLE "$tmp/err"; then
        echo "SKIP: no usable GPU: $(sed -n 's/.*cannot run here: //p' "$tmp/err" | head -n 1)"
        exit 77
    fi
    [ "$rc" -eq 0 ] || fail "TP_DEVICE=$dev tp-bench gemm --dtype $1 exited $rc"
}

# field FILE IMPL KEY: the value of KEY in the records of IMPL, one a line
# (with or without a space after the colon: json-glib writes none)
field() {
    grep "\"impl\": *\"$2\"" "$1" | sed -n "s/.*\"$3\": *\\([^,}]*\\).*/\\1/p"
}

# check DTYPE NSIZES LIBRARY TOL: NSIZES vtable and direct records, the
# direct ones from LIBRARY, every max_abs_diff a number <= TOL
check() {
    f=$tmp/$1.json
    [ "$(field "$f" vtable m | wc -l)" -eq "$2" ] || fail "$1: expected $2 vtable records in $f"
    [ "$(field "$f" direct m | wc -l)" -eq "$2" ] || fail "$1: expected $2 direct records in $f"
    [ "$(field "$f" direct library | grep -c "\"$3\"")" -eq "$2" ] || fail "$1: direct records are not from $3"
    field "$f" vtable max_abs_diff | awk -v tol="$4" -v dt="$1" '
        { if ($1 == "null" || !($1 + 0 <= tol + 0)) { print "FAIL: " dt " max|diff| " $1 " > " tol; bad = 1 } }
        END { exit bad }' >&2 || exit 1
    echo "ok: $1 vtable vs $3 within $4"
}

case $dev in
cpu)
    run f32 13,17
    check f32 2 cblas_sgemm 1e-4
    run bf16 13
    [ "$(field "$tmp/bf16.json" vtable m | wc -l)" -eq 1 ] || fail "bf16: expected 1 vtable record"
    [ -z "$(field "$tmp/bf16.json" direct m)" ] || fail "bf16: cblas_sgemm is f32 only, expected no direct record"
    echo "ok: bf16 on cpu runs the vtable alone"
    "$TP_BENCH" gemm --dtype f64 >"$tmp/out" 2>"$tmp/err"
    rc=$?
    [ "$rc" -eq 2 ] || fail "gemm --dtype f64 exited $rc, expected 2 (usage)"
    grep -q "expected f32, bf16 or f16" "$tmp/err" || fail "gemm --dtype f64: message does not list the dtypes"
    echo "ok: --dtype f64 is refused"
    ;;
cuda)
    run f32 64
    check f32 1 cublasGemmEx 1e-3
    run bf16 64
    check bf16 1 cublasGemmEx 0.251
    run f16 64
    check f16 1 cublasGemmEx 0.03225
    ;;
*)
    fail "unknown device '$dev' (expected cpu or cuda)"
    ;;
esac
exit 0
