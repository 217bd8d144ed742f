#!/usr/bin/env bash
# Issue 5's GPU checks in one run, for a machine with an NVIDIA GPU:
#
#     bash experiments/gpu_checks.sh OUT_DIR      # about 9½ minutes at most (the steps' time limits)
#
# It needs JAX with its CUDA wheels, a CUDA build of PyTorch, and lstmjax's dependencies (flax, optax,
# orbax-checkpoint, tqdm, matplotlib, pytest, pytest-xdist; equinox and dm-haiku are timed if present).
# lstmjax is used from this checkout (PYTHONPATH), so nothing is installed. Every step runs under its own
# time limit and a failing step does not stop the next; OUT_DIR receives at most 8 files:
#
#   environment.txt   versions, the GPU, what lstmjax's native CPU kernels say on this machine
#   tests.log         the backend-independent numerical tests, run on the GPU at full float32 precision,
#                     tests/test_cudnn.py among them: lstmjax's cuDNN path on cuDNN itself
#   benchmark.log     python -m experiments.benchmark on the GPU (lstmjax, lstmjax with its opt-in cuDNN path
#                     LSTMJAX_CUDNN=1, Flax, Equinox, Haiku, PyTorch nn.LSTM on CUDA, jax.experimental.rnn's
#                     cuDNN LSTM), float32 products (no TF32)
#   benchmark_metrics.json, benchmark_times.png, benchmark_memory.png (the summary and tables are drawn from
#                     metrics.json alone: experiments._benchmark_report)
#   seeds.log, seeds_metrics.json   python -m experiments.seeds_benchmark: K = 16 models vmapped against a loop
#
# GPU_CHECKS_POINTS and GPU_CHECKS_REPEATS override the benchmark's grid and repeats (a dry run on a CPU:
# GPU_CHECKS_POINTS=4x10x4x32 GPU_CHECKS_REPEATS=1 bash experiments/gpu_checks.sh /tmp/out).
set -uo pipefail
out=${1:?usage: bash experiments/gpu_checks.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# JAX takes 75% of the GPU's memory at start unless told not to; PyTorch and the test workers share it.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
scratch=$(mktemp -d)
# Three of the CPU benchmark's grid points and one sized for a GPU.
points=${GPU_CHECKS_POINTS:-32x100x32x128 32x1000x32x32 32x50x32x512 256x100x64x512}
repeats=${GPU_CHECKS_REPEATS:-10}

step() {  # step NAME SECONDS LOG COMMAND...: run COMMAND under a time limit, its output to LOG and the terminal
    local name=$1 limit=$2 log=$3
    shift 3
    echo "== $name (limit ${limit} s)" | tee -a "$log"
    local start=$SECONDS
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"
    local status=${PIPESTATUS[0]}
    printf '\n== %s: exit status %s after %s s\n' "$name" "$status" "$((SECONDS - start))" | tee -a "$log"
}

step environment 40 "$out/environment.txt" python3 -c '
import importlib.metadata as md, jax, lstmjax as lj
print("devices:", jax.devices(), "kind:", jax.devices()[0].device_kind, "backend:", jax.default_backend())
for d in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax", "equinox", "dm-haiku", "torch"):
    try: print(d, md.version(d))
    except md.PackageNotFoundError: print(d, "not installed")
import torch
print("torch cuda:", torch.cuda.is_available(), torch.version.cuda, "cudnn:", torch.backends.cudnn.version())
print("lstmjax native kernels (CPU only):", lj.native_kernel_status())
import inspect
from lstmjax import _cudnn
print("cuDNN bindings:", _cudnn.bindings_available())
if _cudnn.rnn is not None:
    print("lstm_fwd", inspect.signature(_cudnn.rnn.lstm_fwd), "lstm_bwd", inspect.signature(_cudnn.rnn.lstm_bwd))
'
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >>"$out/environment.txt" 2>&1

# shellcheck disable=SC2086  # $points is a list of grid points
step benchmark 240 "$out/benchmark.log" python3 -m experiments.benchmark --points $points --repeats "$repeats" \
    --pause-ms 5 --peak-sizes 4096 8192 --gpu-precision float32 --on-mismatch drop --lstmjax-variants cudnn \
    --memory-lengths 1000 100000 --results-dir "$scratch" --run gpu --no-progress
for f in metrics.json times.png memory.png; do
    cp "$scratch/benchmark/gpu/$f" "$out/benchmark_$f" 2>/dev/null || echo "no benchmark $f" >>"$out/benchmark.log"
done

# Numerical tests whose assertions hold on any backend (the native-kernel, allocator and resident-memory tests
# are CPU-specific), lstmjax's cuDNN path first. JAX's default lets float32 products run in TF32 on a GPU, which
# the tests' float32 tolerances would not survive: they run at "highest", as the README's precision note tells GPU
# users to. -v: a line per test as it ends, so that a step cut short still says what passed; no autotuning, to
# compile faster.
step tests 160 "$out/tests.log" env JAX_DEFAULT_MATMUL_PRECISION=highest XLA_FLAGS=--xla_gpu_autotune_level=0 \
    python3 -m pytest -v --durations=20 -p no:cacheprovider -n 8 -m 'not slow' tests/test_cudnn.py \
    tests/test_unroll.py tests/test_gradients.py tests/test_diagnostics.py tests/test_statquest_numbers.py \
    tests/test_torch_reference.py tests/test_benchmark.py

step seeds 80 "$out/seeds.log" env JAX_DEFAULT_MATMUL_PRECISION=highest python3 -m experiments.seeds_benchmark \
    --repeats 3 --results-dir "$scratch" --run gpu --no-progress
cp "$scratch/seeds_benchmark/gpu/metrics.json" "$out/seeds_metrics.json" 2>/dev/null || echo "no seeds metrics" >>"$out/seeds.log"
rm -rf "$scratch"
