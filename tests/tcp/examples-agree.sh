#!/bin/sh
# SPDX-License-Identifier: MIT
# examples-agree.sh TP_LAUNCH NPY_COMPARE EXAMPLE N [ARGS...]
# Run EXAMPLE with TP=N on loopback (threads) and under tp-launch on tcp
# (processes); both write their tensors with --save-npy; compare y.npy.
#
# Tolerance 1e-5 absolute: both runs use the same weights and the same
# per-rank GEMMs; only the order in which the N partial sums of the
# all-reduce are added may differ. That changes an element by at most
# (N-1) * 2^-24 * sum_k |partial_k|, below 1e-6 for these sizes (outputs
# are O(1)), while a wrong or missing partial sum moves it by far more.
set -eu
launch=$1 compare=$2 example=$3 n=$4
shift 4
dir=$(mktemp -d "${TMPDIR:-/tmp}/tp-tcp-agree.XXXXXX")
trap 'rm -rf "$dir"' EXIT INT TERM
mkdir "$dir/loopback" "$dir/tcp"
echo "== loopback, $n threads"
TP_BACKEND=loopback TP_WORLD_SIZE=$n "$example" --tp "$n" --save-npy "$dir/loopback" "$@"
echo "== tcp, $n processes"
TP_BACKEND=tcp "$launch" -n "$n" "$example" --tp "$n" --save-npy "$dir/tcp" "$@"
status=0
for f in "$dir"/loopback/*.npy; do
    "$compare" "$f" "$dir/tcp/$(basename "$f")" 1e-5 || status=1
done
exit $status
