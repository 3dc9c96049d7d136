#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# run.sh — tp's GPU checks, run on a machine with an NVIDIA GPU from a bundle
# made by pack.sh: the GPU test suites, then the measurements the GPU issue
# asks for. Logs, JSON lines and summary.txt are written to a work folder
# and packed after every step into $OUT/gpu-<steps>.tgz (one file, so a
# device machine that returns few files, or a run killed midway, still
# gives back everything finished so far); without OUT into ./gpu-out.
#
#   bash gpu-bundle/run.sh [BUNDLE_DIR]          (default: the folder of this script)
#   STEPS=tests ...   or   STEPS=bench ...       (default: both, tests first)
#
# Needs: the CUDA driver, libcudart/libcublas/libcublasLt (CUDA 13) and NCCL
# (libnccl.so.2; found in Python's nvidia-nccl-cu13 wheel if not on the
# library path). Each step has its own timeout; a failing step does not stop
# the others.
set -uo pipefail
b=$(cd "${1:-$(dirname "$0")}" && pwd)
steps=${STEPS:-tests bench}
out=$(mktemp -d)
dest=${OUT:-$PWD/gpu-out}
mkdir -p "$dest"
tarball="$dest/gpu-$(echo "$steps" | tr ' ' '-').tgz"

libs="$b/lib"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && libs="$libs:$d"
done
# NCCL and CUDA libraries from Python wheels (nvidia-nccl-cu13, nvidia-cublas, ...)
py=$(command -v python3 || true)
if [ -n "$py" ]; then
    wheel_libs=$("$py" - <<'PY' 2>/dev/null
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
print(":".join(sorted({os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "*", "lib", "lib*.so*"))})))
PY
)
    [ -n "$wheel_libs" ] && libs="$libs:$wheel_libs"
fi
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TP_PLUGIN_PATH="$b/plugins"
export TEST_NCCL_PLUGIN="$b/plugins/libtp-nccl.so"
export TP_TIMEOUT_S=${TP_TIMEOUT_S:-30}
export CK_DEFAULT_TIMEOUT=${CK_DEFAULT_TIMEOUT:-300}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
tf32_override=${NVIDIA_TF32_OVERRIDE:-}
unset NVIDIA_TF32_OVERRIDE # it would let f32 GEMMs use TF32 behind our back
bin="$b/bin"

summary="$out/summary.txt"
: > "$summary"
# step NAME TIMEOUT_S CMD...: run, log to $out/NAME.log, one summary line
step() {
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    local verdict=ok
    case $rc in 0) ;; 77) verdict=SKIP ;; 124) verdict=TIMEOUT ;; *) verdict="FAIL($rc)" ;; esac
    printf '%-34s %-9s %4ds\n' "$name" "$verdict" $((SECONDS - t0)) | tee -a "$summary"
    tar -czf "$tarball" -C "$out" .
}

{
    date -u
    nvidia-smi 2>&1 || echo "nvidia-smi: not found"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    echo "NVIDIA_TF32_OVERRIDE was '${tf32_override}' (unset for the run)"
    env | grep -E '^(CUDA|NCCL|CUBLAS|TP_)' || true
    ldd "$b"/plugins/*.so "$bin/tp-bench" 2>&1
} > "$out/machine.txt"
step tp-info 60 "$bin/tp-info"

if [[ " $steps " == *" tests "* ]]; then
    # device conformance on cuda: every op vs plain loops, every dtype
    step device-cuda-vtable 150 env TP_DEVICE=cuda TP_DEVICE_TEST_VIA=vtable CK_FORK=no "$bin/test-device"
    step device-cuda-api 150 env TP_DEVICE=cuda TP_DEVICE_TEST_VIA=api TP_BACKEND=loopback CK_FORK=yes "$bin/test-device"
    # nccl: collectives, errors, timeout; tp-conformance at the ranks the GPUs allow
    step nccl-gpu 90 "$bin/test-nccl" gpu
    step nccl-conformance 90 "$bin/test-nccl" run "$bin/tp-conformance"
    # loopback on device memory: T ranks on one GPU, collectives with D2D copies + reduce kernel
    step conformance-loopback-cuda-4 90 env TP_BACKEND=loopback TP_DEVICE=cuda TP_WORLD_SIZE=4 "$bin/tp-conformance"
    # layers vs the double reference: cuda+loopback T=1..4 (one run at W=4), nccl T=1
    step layers-cuda-loopback-w4 90 env TP_BACKEND=loopback TP_DEVICE=cuda TP_WORLD_SIZE=4 CK_FORK=no "$bin/test-layers"
    step gpt-cuda-loopback-w4 90 env TP_BACKEND=loopback TP_DEVICE=cuda TP_WORLD_SIZE=4 CK_FORK=no "$bin/test-gpt"
    step layers-cuda-nccl-w1 90 env TP_BACKEND=nccl TP_DEVICE=cuda TP_WORLD_SIZE=1 CK_FORK=no "$bin/test-layers"
    # bf16/f16 linear and MLP layers (fused cuBLASLt epilogue for tanh GeLU) vs the double reference
    step lowp-cuda-loopback-w4 90 env TP_BACKEND=loopback TP_DEVICE=cuda TP_WORLD_SIZE=4 CK_FORK=no "$bin/test-lowp"
    step lowp-cuda-nccl-w1 90 env TP_BACKEND=nccl TP_DEVICE=cuda TP_WORLD_SIZE=1 CK_FORK=no "$bin/test-lowp"
    # the examples check themselves (exit 1 on a mismatch): TP vs the naive MLP, and the
    # training loss curve at T=4 vs T=1
    step example-mlp-cuda-loopback-4 60 env TP_BACKEND=loopback TP_DEVICE=cuda "$bin/tp_mlp" --tp 4
    step example-mlp-nccl-1 60 env TP_BACKEND=nccl TP_DEVICE=cuda "$bin/tp_mlp" --tp 1
    step example-transformer-cuda-4v1 90 env TP_BACKEND=loopback TP_DEVICE=cuda "$bin/tp_transformer" --tp 4 --compare-tp 1 --steps 20 --layers 1 --vocab 53 --sequence-parallel --kv-heads 2
fi

if [[ " $steps " == *" bench "* ]]; then
    tb="$bin/tp-bench"
    # vtable GEMM vs direct cuBLAS, same buffers, same run (target >= 0.97)
    for dt in bf16 f16 f32; do
        step "gemm-$dt" 60 env TP_DEVICE=cuda "$tb" gemm --sizes 4096,8192 --dtype "$dt" -n 20 -w 3 --json "$out/gemm-$dt.jsonl"
    done
    # bf16 MLP forward h=8192, 8192 tokens, T=1 (target >= 85% of the raw bf16 GEMM rate);
    # exact GeLU (bias and GeLU as kernels) and tanh GeLU (fused in cuBLASLt's epilogue)
    step mlp-bf16-h8192-t1 60 env TP_DEVICE=cuda "$tb" layer --layer mlp --dtype bf16 --hidden 8192 --ffn 32768 --tokens 8192 --tp 1 -n 10 -w 2 --json "$out/mlp-bf16.jsonl"
    step mlp-bf16-tanh-h8192-t1 60 env TP_DEVICE=cuda "$tb" layer --layer mlp --dtype bf16 --gelu-tanh --hidden 8192 --ffn 32768 --tokens 8192 --tp 1 -n 10 -w 2 --json "$out/mlp-bf16-tanh.jsonl"
    step mlp-f32-h8192-t1 60 env TP_DEVICE=cuda "$tb" layer --layer mlp --hidden 8192 --ffn 32768 --tokens 8192 --tp 1 -n 5 -w 1 --json "$out/mlp-f32.jsonl"
    # loopback on one GPU (device-to-device), busbw; nccl T=1
    step coll-loopback-cuda 120 env TP_DEVICE=cuda "$tb" collectives --backend loopback --sweep-tp 2,4 --op all_reduce,all_gather,reduce_scatter -e 128M --no-memcpy --check 1 --json "$out/coll-loopback-cuda.jsonl"
    step coll-nccl-t1 60 env TP_DEVICE=cuda "$tb" collectives --backend nccl --tp 1 --op all_reduce -e 256M --no-memcpy --check 1 --json "$out/coll-nccl-t1.jsonl"
    step mlp-nccl-t1 60 env TP_DEVICE=cuda "$tb" layer --layer mlp --backend nccl --tp 1 --dtype bf16 --hidden 8192 --ffn 32768 --tokens 8192 -n 10 -w 2 --json "$out/mlp-nccl-t1.jsonl"
    # strong scaling of the MLP on the cuda device (T ranks share the GPU)
    step mlp-sweep-cuda 60 env TP_DEVICE=cuda "$tb" layer --layer mlp --backend loopback --sweep-tp 1,2,4 --hidden 4096 --ffn 16384 --tokens 8192 --dtype bf16 --backward -n 5 -w 1 --json "$out/mlp-sweep-cuda.jsonl"
fi
tar -czf "$tarball" -C "$out" .
echo "results: $tarball"
