"""How fast is lstmjax? The same LSTM in lstmjax, Flax, Equinox, Haiku and PyTorch, timed in one process.

    python -m experiments.benchmark              # a few minutes on a 2-core CPU
    python -m experiments.benchmark --points 64x200x64x256 64x100x64x1024 --repeats 20
    python -m experiments.benchmark --anchors torch --lstmjax-variants xla   # the native kernel's speed-up
    python -m experiments.benchmark --help

At every grid point `BxTxDxH` (batch, sequence length, input size, hidden units) every library
runs a one-layer LSTM over the same inputs `xs: (T, B, D)` (standard normal) with the same
weights (`lj.lstm(H, init="pytorch").init(PRNGKey(seed), D)`, converted into each library's
layout by `experiments._benchmark_anchors`), from zero memories, and two workloads are timed:

* `forward`: the loss `mean(ys ** 2)` of the outputs `ys: (T, B, H)`; for a JAX library
  `jax.jit(loss)`, for PyTorch `nn.LSTM` under `torch.no_grad()`;
* `train`: the loss and its gradient with respect to the LSTM's weights; for a JAX library
  `jax.jit(jax.value_and_grad(loss))`, for PyTorch forward and `loss.backward()`.

PyTorch runs twice: `torch` as users run it (on a CPU, `nn.LSTM` then uses oneDNN's fused RNN
primitive) and `torch_no_onednn`, the same module with oneDNN switched off (its step-by-step
path). `--tune-allocator` calls `lj.tune_cpu_allocator()` before anything runs; it applies to
every library in the process, and `metrics.json` records it with the `MALLOC_*` environment.

On a GPU (JAX's default backend; install JAX's CUDA wheels and a CUDA build of PyTorch) every JAX
library runs there, `torch` runs on CUDA (cuDNN's RNN), `torch_no_onednn` and `lstmjax[xla]` are
skipped, and `jax_cudnn` adds cuDNN's RNN through JAX (`jax.experimental.rnn.lstm`). Every library's
float32 products run at `--gpu-precision` (default `float32`: no TF32 anywhere; `tf32` allows it
everywhere), since left to themselves JAX and PyTorch's cuDNN RNN use TF32 and PyTorch's matmuls do not.

lstmjax runs through its public API only (`lj.lstm`, `cell.init`, `lj.unroll`), so the numbers
follow whatever `lj.unroll` does. Extra lstmjax rows (`lstmjax_variants`, each included only if the
library offers it, read at run time), timed and checked like every other library:

* `lstmjax[remat=VALUE]`, if `lj.unroll` has a `remat` parameter: `remat=VALUE` for each of
  `--remat-values` (default: `True`), the training step only (memory measured too);
* `lstmjax[xla]`: the same cell with its native CPU kernel switched off
  (`cell._replace(fused=cell.fused._replace(native=None))`), so `lj.unroll` takes the XLA path
  it takes wherever the kernel cannot run; its ratio to lstmjax is the kernel's speed-up (1 up
  to noise at points below the kernel's smallest H, or where `lj.native_kernel_status()` says
  this machine has no kernel: the run's notes say which). Both workloads, memory measured;
* `lstmjax[lengths]`: `lj.unroll(cell, params, xs, lengths=jnp.full(B, T))`, built inside the
  jitted loss (a traced value, as a real batch's lengths are): a variable-length batch whose
  sequences are all full, so the work and results are plain lstmjax's and its ratio is the cost
  of `lj.unroll`'s lengths path, whichever path that is. Both workloads, memory not measured.

* `lstmjax[cudnn]` (GPU only): `lj.unroll` traced with its opt-in cuDNN path (`LSTMJAX_CUDNN=1`,
  `lstmjax._cudnn`); its ratio is its time over lstmjax's default (the path off): below 1, the
  cuDNN path is faster. Both workloads, memory measured.

`--lstmjax-variants` chooses among `xla`, `lengths` and `cudnn` (default all three, each where it
can run; `none` for none).

Correctness first: the first call of every library at every grid point (the call that
compiles it, not timed with the others) returns its loss and, for `train`, its gradient, which
is converted back to lstmjax's layout and compared with lstmjax's on the very shapes and data
being timed: the largest difference of each leaf relative to that leaf's largest magnitude must
be at most `--rtol`, or the run stops with `AnchorMismatchError`, so it never times two
different computations (with `--on-mismatch drop` that library is reported at that point and not
timed there, and the run goes on: for a run that cannot be repeated, such as on a borrowed GPU).
Libraries that are not installed (or fail to import) are skipped, with
the reason in the table and in `metrics.json`.

Timing: after `--warmup` calls (the first one compiles and is checked), `--repeats` rounds in
which every library is called once in turn (round-robin, the order rotated each round, so that load from other processes
falls on all of them alike), each call preceded by a `--pause-ms` sleep (the worker threads of
XLA and of PyTorch's OpenMP spin for a while after a call; on 2 cores under load, without the pause,
the library called right after PyTorch ran about 1.5 times slower) and ended by
`block_until_ready` (PyTorch on the CPU is synchronous; on CUDA each call ends with
`torch.cuda.synchronize()`). The median is reported, with each
library's ratio to lstmjax (above 1: lstmjax is faster) and the geometric mean of the ratios
over the grid. Achieved GFLOP/s count the LSTM's matrix multiplies only: `2·B·T·(D+H)·4H` for
the forward pass and three times that for a training step, against this machine's
matrix-multiply peak measured in the same run (the fastest of jitted float32 matmuls: squares
of `--peak-sizes` and each point's input projection `(B·T, D+H) @ (D+H, 4H)`). PyTorch runs
with `torch.set_num_threads(--torch-threads)`, default the number of cores this process may
use; XLA uses all of them.

Memory: the training step's memory as the sequence grows (`--memory-lengths` at batch
`--memory-batch-size`, `--memory-input-size`, `--memory-hidden-size`), from XLA's compiled
memory analysis (`jax.jit(step).lower(...).compile().memory_analysis()`: temporaries +
arguments + outputs − aliased bytes). Nothing is run, so it is deterministic and costs only
compilation. Measured for lstmjax, its `remat`, `xla` and `cudnn` rows and `--memory-anchors`.

Writes `config.json`, `metrics.json` (every timing, the checks, the machine), `summary.json` (the
printed table) and `times.png`, `memory.png` (drawn from `metrics.json` alone by
`experiments._benchmark_report.plot`) to `results/benchmark/<run>/`.
"""

from __future__ import annotations

import dataclasses
import inspect
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import lstmjax as lj
from experiments import _benchmark_anchors as anchors
from experiments import _benchmark_report as report
from experiments._benchmark_config import BenchmarkConfig, Point, parse_literal, parse_point
from experiments._benchmark_machine import load_average, machine, usable_cores
from experiments._benchmark_memory import run_memory
from experiments._config_cli import parse_config
from experiments._results import record_run, written_files_line

NAME = "benchmark"
WORKLOADS = ("forward", "train")


class AnchorMismatchError(AssertionError):
    """An implementation's loss or gradient differs from lstmjax's: timing them would compare two computations."""


def lstm_flops(point: Point, workload: str) -> float:
    """Floating-point operations of the LSTM's matrix multiplies: forward `2·B·T·(D+H)·4H`, a training
    step (forward and backward: two more products of the same size) three times that."""
    forward = 2.0 * point.batch_size * point.length * (point.input_size + point.hidden_size) * 4 * point.hidden_size
    return {"forward": forward, "train": 3.0 * forward}[workload]


# ---------------------------------------------------------------------------------------------- what to time


@dataclasses.dataclass(frozen=True)
class Variant:
    """An extra lstmjax row: `lj.unroll` on `lj.lstm(H)` with the changes below, timed beside plain lstmjax
    and checked against it like every other library (`anchors.lstmjax_anchor` builds it).

    Attributes:
        label: what the row runs, for the tables and plots.
        workloads: the workloads it is timed on.
        unroll_kwargs: keyword arguments of `lj.unroll` (a remat option).
        native: `False`: the cell's native CPU kernel switched off (`anchors.without_native_kernel`).
        full_lengths: pass `lengths=jnp.full(B, T)`: a variable-length batch whose sequences are all full.
        cudnn: trace `lj.unroll` with its opt-in cuDNN path asked for (as `LSTMJAX_CUDNN=1` does).
        memory: also measured by `run_memory` (training-step memory against the sequence length).
    """

    label: str
    workloads: tuple[str, ...]
    unroll_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    native: bool = True
    full_lengths: bool = False
    cudnn: bool = False
    memory: bool = True

    def anchor(self) -> anchors.JaxAnchor:
        return anchors.lstmjax_anchor(self.unroll_kwargs, native=self.native, full_lengths=self.full_lengths,
                                      cudnn=self.cudnn)


def lstmjax_variants(config: BenchmarkConfig) -> tuple[dict[str, Variant], dict[str, str]]:
    """Every extra lstmjax row, `({row name: Variant}, {kind: note})`, each kind read from the library at
    run time, so the benchmark follows it (a kind the library does not offer is left out, with the note
    saying why):

    * `remat`: `lstmjax[remat=VALUE]` for each of `config.remat_values` (default `True`) other than
      `lj.unroll`'s default, if it has a `remat` parameter; training step only, memory measured;
    * `xla` (if in `config.lstmjax_variants`): `lstmjax[xla]`, the cell with its native CPU kernel
      switched off, so `lstmjax[xla]`'s ratio to lstmjax is the kernel's speed-up; both workloads,
      memory measured (what the kernel keeps for the backward pass against what XLA's scan keeps);
    * `lengths` (if in `config.lstmjax_variants`): `lstmjax[lengths]`, `lengths=jnp.full(B, T)`: every
      sequence full, so the same work and results as lstmjax, and its ratio is the cost of the lengths
      path; both workloads, memory not measured (lstmjax's program plus a mask, of little interest);
    * `cudnn` (if in `config.lstmjax_variants`, on a GPU with jaxlib's cuDNN bindings): `lstmjax[cudnn]`,
      `lj.unroll` traced with its opt-in cuDNN path; both workloads, memory measured.
    """
    parameters = inspect.signature(lj.unroll).parameters
    variants: dict[str, Variant] = {}
    notes: dict[str, str] = {}
    if "remat" not in parameters:
        notes["remat"] = "lj.unroll has no remat parameter: only plain lstmjax is measured"
    else:
        values = [parse_literal("remat_values", v) for v in config.remat_values] or [True]
        default = parameters["remat"].default
        for value in values:
            if value != default:
                variants[f"lstmjax[remat={value!r}]"] = Variant(
                    f"lstmjax, lj.unroll(..., remat={value!r})", ("train",), {"remat": value})
        notes["remat"] = f"lj.unroll(..., remat=...) found (default {default!r}); measured with {values}"

    if "xla" in config.lstmjax_variants:
        fused = getattr(lj.lstm(1), "fused", None)
        if jax.default_backend() != "cpu":
            notes["xla"] = f"the native kernels are CPU-only and this run is on {jax.default_backend()}: " \
                           "lstmjax[xla] would run lstmjax's own program, not measured"
        elif getattr(fused, "native", None) is None:
            notes["xla"] = "lj.lstm's cell has no native kernel (cell.fused.native): lstmjax[xla] not measured"
        else:
            variants["lstmjax[xla]"] = Variant("lstmjax, lj.unroll without its native kernel (XLA)", WORKLOADS,
                                               native=False)
            notes["xla"] = "lstmjax[xla]: lj.lstm(H) with cell.fused.native = None; its ratio is the native kernel's " \
                           "speed-up; " + _native_kernel_note(config, fused)
    if "lengths" in config.lstmjax_variants:
        if "lengths" not in parameters:
            notes["lengths"] = "lj.unroll has no lengths parameter: lstmjax[lengths] not measured"
        else:
            variants["lstmjax[lengths]"] = Variant("lstmjax, lj.unroll(..., lengths=full(B, T))", WORKLOADS,
                                                   full_lengths=True, memory=False)
            notes["lengths"] = "lstmjax[lengths]: lj.unroll(..., lengths=jnp.full(B, T)) inside the jitted loss, " \
                               "every sequence full (lstmjax's results); its ratio is the cost of the lengths path"
    if "cudnn" in config.lstmjax_variants:
        from lstmjax import _cudnn
        if not anchors.on_gpu() or not _cudnn.bindings_available():
            notes["cudnn"] = f"lstmjax[cudnn] needs a GPU and jaxlib's cuDNN bindings (JAX's backend here is " \
                             f"{jax.default_backend()}): not measured"
        else:
            variants["lstmjax[cudnn]"] = Variant("lstmjax, lj.unroll with LSTMJAX_CUDNN=1 (cuDNN)", WORKLOADS,
                                                 cudnn=True)
            notes["cudnn"] = "lstmjax[cudnn]: lj.unroll traced with its opt-in cuDNN path (LSTMJAX_CUDNN=1); its " \
                             "ratio is its time over lstmjax's default (below 1: the cuDNN path is faster)"
    return variants, notes


def _native_kernel_note(config: BenchmarkConfig, fused: Any) -> str:
    """Where the native kernel could run in this run: it starts at `fused.native_min_hidden_size` (below
    it both rows run the same program), and `lj.native_kernel_status()` says whether this machine has it
    (asked only if some grid point is large enough, as that may build the kernel)."""
    threshold = getattr(fused, "native_min_hidden_size", 1)
    large_enough = [p for p in config.points if parse_point(p).hidden_size >= threshold]
    if not large_enough:
        return f"no grid point has H >= {threshold}, where the kernel starts: both rows run the same program"
    status = lj.native_kernel_status()
    if not status.available:
        return f"the kernel is not available here ({status.reason}): both rows run the same program"
    return f"kernel available (from H = {threshold}): {status.reason}"


def make_inputs(point: Point, seed: int) -> tuple[lj.LSTMParams, jax.Array]:
    """The weights (`init="pytorch"`: every bias nonzero, so a misplaced bias is caught) and `xs: (T, B, D)`."""
    key_params, key_xs = jax.random.split(jax.random.PRNGKey(seed))
    params = lj.lstm(point.hidden_size, init="pytorch").init(key_params, point.input_size)
    xs = jax.random.normal(key_xs, (point.length, point.batch_size, point.input_size), jnp.float32)
    return jax.block_until_ready((params, xs))


@dataclasses.dataclass
class Runner:
    """One library at one grid point: zero-argument calls per workload (each returns a ready result)
    and `check(workload, result) -> (loss, grads or None)` in lstmjax's layout, as numpy."""

    calls: dict[str, Callable[[], Any]]
    check: Callable[[str, Any], tuple[float, lj.LSTMParams | None]]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def jax_runner(anchor: anchors.JaxAnchor, params: lj.LSTMParams, xs: jax.Array, workloads: Sequence[str]) -> Runner:
    """`jax.jit(loss)` and `jax.jit(jax.value_and_grad(loss))` of a JAX anchor, on its converted weights."""
    anchor_params = jax.block_until_ready(jax.device_put(anchor.convert(params)))
    compiled = {"forward": jax.jit(anchor.loss), "train": jax.jit(jax.value_and_grad(anchor.loss))}
    calls = {w: (lambda fn=compiled[w]: jax.block_until_ready(fn(anchor_params, xs))) for w in workloads}

    def check(workload: str, result: Any) -> tuple[float, lj.LSTMParams | None]:
        if workload == "forward":
            return float(result), None
        loss, grads = result
        grads = anchor.grads_to_lstmjax(grads, params.w_h.shape[0])
        return float(loss), lj.LSTMParams(*(np.asarray(g) for g in grads))

    return Runner(calls, check)


def torch_runner(params: lj.LSTMParams, xs: jax.Array, threads: int, workloads: Sequence[str],
                 onednn: bool = True) -> Runner:
    """PyTorch's `nn.LSTM` on the device JAX runs on: CUDA when JAX's backend is a GPU, else the CPU."""
    device = "cuda" if anchors.on_gpu() else "cpu"
    run = anchors.TorchAnchor.prepare(params, np.asarray(xs), threads, onednn, device)
    calls = {"forward": run.forward, "train": run.train}

    def check(workload: str, result: Any) -> tuple[float, lj.LSTMParams | None]:
        return (float(result), None) if workload == "forward" else run.loss_and_grads(result)

    return Runner({w: calls[w] for w in workloads}, check, {"threads": run.threads, "device": device})


def relative_differences(loss: float, grads: lj.LSTMParams | None, ref_loss: float,
                         ref_grads: lj.LSTMParams | None) -> dict[str, float]:
    """`|loss - ref| / |ref|` and, per gradient leaf, `max|g - ref| / max|ref|`."""
    out = {"loss": abs(loss - ref_loss) / max(abs(ref_loss), 1e-30)}
    if grads is not None:
        for field, g, r in zip(lj.LSTMParams._fields, grads, ref_grads, strict=True):
            g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
            if g.shape != r.shape:
                raise AnchorMismatchError(f"gradient of {field} has shape {g.shape}, lstmjax's {r.shape}")
            out[f"grad_{field}"] = float(np.max(np.abs(g - r)) / max(float(np.max(np.abs(r))), 1e-30))
    return out


def time_round_robin(calls: dict[str, Callable[[], Any]], repeats: int, pause: float = 0.0) -> dict[str, list[float]]:
    """`repeats` rounds, each calling every entry once in turn (the order rotated by one each round),
    `pause` seconds of sleep before each call; wall-clock seconds per call."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for round_index in range(repeats):
        shift = round_index % len(names)  # rotate the order, so no library always follows the same one
        for name in names[shift:] + names[:shift]:
            call = calls[name]
            if pause:
                time.sleep(pause)
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def agreement(name: str, point: Point, workload: str, result: tuple[float, lj.LSTMParams | None],
              reference: tuple[float, lj.LSTMParams | None], rtol: float) -> dict[str, float]:
    """`relative_differences` of `name`'s `(loss, grads)` from lstmjax's `reference`;
    `AnchorMismatchError` if any of them exceeds `rtol`."""
    differences = relative_differences(*result, *reference)
    worst = max(differences, key=differences.get)
    if not differences[worst] <= rtol:
        raise AnchorMismatchError(
            f"{name} at {point.label} ({workload}) does not compute what lstmjax computes: {worst} differs by "
            f"{differences[worst]:.2e} relative (rtol {rtol:g}); all differences: {differences}")
    return differences


def time_workloads(runners: dict[str, Runner], point: Point, repeats: int, pause: float) -> tuple[dict, dict, dict]:
    """`(seconds, medians, gflops)` per workload and runner: `time_round_robin` of every runner that has
    the workload, the medians, and the achieved GFLOP/s (`lstm_flops`)."""
    seconds, medians, gflops = {}, {}, {}
    for workload in WORKLOADS:
        calls = {name: r.calls[workload] for name, r in runners.items() if workload in r.calls}
        seconds[workload] = time_round_robin(calls, repeats, pause)
        medians[workload] = {name: float(np.median(t)) for name, t in seconds[workload].items()}
        gflops[workload] = {name: 1e-9 * lstm_flops(point, workload) / m for name, m in medians[workload].items()}
    return seconds, medians, gflops


def matmul_peak(shapes: Sequence[tuple[int, int, int]], repeats: int, seed: int) -> list[dict[str, Any]]:
    """Jitted float32 `(m, k) @ (k, n)` for each shape: median seconds and GFLOP/s (`2·m·k·n` operations)."""
    results = []
    matmul = jax.jit(jnp.matmul)
    for m, k, n in shapes:
        key_a, key_b = jax.random.split(jax.random.PRNGKey(seed))
        a = jax.random.normal(key_a, (m, k), jnp.float32)
        b = jax.random.normal(key_b, (k, n), jnp.float32)
        jax.block_until_ready(matmul(a, b))
        seconds = time_round_robin({"matmul": lambda a=a, b=b: jax.block_until_ready(matmul(a, b))}, repeats)
        median = float(np.median(seconds["matmul"]))
        results.append({"m": m, "k": k, "n": n, "median_seconds": median,
                        "gflops_per_second": 2e-9 * m * k * n / median})
    return results


# ---------------------------------------------------------------------------------------------- the run


def run_benchmark(config: BenchmarkConfig) -> dict:
    """The checks, timings, matmul peak and memory; returns metrics.json's contents."""
    points = [parse_point(p) for p in config.points]
    threads = config.torch_threads or usable_cores()
    allocator_tuned = lj.tune_cpu_allocator() if config.tune_allocator else None
    gpu_precision = anchors.use_gpu_matmul_precision(config.gpu_precision) if anchors.on_gpu() else None
    load_start = load_average()
    libraries = {"lstmjax": {"label": anchors.label("lstmjax"), "status": "ok"}}
    for name in config.anchors:
        reason = anchors.unavailable(name)
        libraries[name] = {"label": anchors.label(name), "status": "skipped" if reason else "ok", "reason": reason}
    variants, variant_notes = lstmjax_variants(config)
    for name, variant in variants.items():
        libraries[name] = {"label": variant.label, "status": "ok", "workloads": list(variant.workloads)}
    runnable = [n for n, lib in libraries.items() if lib["status"] == "ok"]

    show = config.progress and sys.stderr.isatty()
    peak_shapes = [(n, n, n) for n in config.peak_sizes] + sorted(
        {(p.batch_size * p.length, p.input_size + p.hidden_size, 4 * p.hidden_size) for p in points})
    peak = matmul_peak(peak_shapes, max(3, config.repeats // 2), config.seed)

    results = []
    with tqdm(total=len(points) + len(config.memory_lengths), unit="step", desc="benchmark", disable=not show) as bar:
        for point in points:
            results.append(_run_point(point, config, libraries, runnable, variants, threads))
            bar.update()
            if not show:  # a line per point as it ends, so that a run cut short still leaves its numbers
                print(report.point_line(results[-1]), file=sys.stderr, flush=True)
        memory = run_memory(config, {name: v.anchor() for name, v in variants.items() if v.memory}, libraries, bar)

    geomean = {}
    for workload in WORKLOADS:
        geomean[workload] = {}
        for name in runnable:
            ratios = [r["ratio_to_lstmjax"][workload][name] for r in results if name in r["ratio_to_lstmjax"][workload]]
            if ratios:
                geomean[workload][name] = float(np.exp(np.mean(np.log(ratios))))
    return {
        "machine": {**machine(), "load_average_start": load_start, "load_average_end": load_average(),
                    "tune_cpu_allocator": {"requested": config.tune_allocator, "applied": bool(allocator_tuned)},
                    "gpu_matmul_precision": gpu_precision},
        "torch_threads": threads if set(anchors.TORCH_ANCHORS) & set(runnable) and not anchors.on_gpu() else None,
        "libraries": libraries,
        "remat": variant_notes["remat"],
        "lstmjax_variants": variant_notes,
        "workloads": list(WORKLOADS),
        "warmup": config.warmup, "repeats": config.repeats, "pause_ms": config.pause_ms, "rtol": config.rtol,
        "on_mismatch": config.on_mismatch,
        "peak": {"matmuls": peak, "gflops_per_second": max(m["gflops_per_second"] for m in peak)},
        "points": results,
        "geomean_ratio_to_lstmjax": geomean,
        "memory": memory,
        "definitions": report.DEFINITIONS,
    }


def _run_point(point: Point, config: BenchmarkConfig, libraries: dict, runnable: list[str],
               variants: dict[str, Variant], threads: int) -> dict[str, Any]:
    params, xs = make_inputs(point, config.seed)
    runners: dict[str, Runner] = {}
    errors: dict[str, str] = {}
    for name in runnable:
        workloads = libraries[name].get("workloads", WORKLOADS)
        try:
            if name == "lstmjax":
                runners[name] = jax_runner(anchors.lstmjax_anchor(), params, xs, workloads)
            elif name in variants:
                runners[name] = jax_runner(variants[name].anchor(), params, xs, workloads)
            elif name in anchors.TORCH_ANCHORS:
                runners[name] = torch_runner(params, xs, threads, workloads, anchors.TORCH_ANCHORS[name])
            else:
                runners[name] = jax_runner(anchors.JAX_ANCHORS[name](), params, xs, workloads)
        except Exception as error:  # a library that cannot build this model is reported, not fatal
            if name == "lstmjax":
                raise
            errors[name] = f"{type(error).__name__}: {error}"

    first_call, checks, reference = {w: {} for w in WORKLOADS}, {w: {} for w in WORKLOADS}, {}
    for workload in WORKLOADS:
        for name, runner in list(runners.items()):
            if workload not in runner.calls:
                continue
            try:
                start = time.perf_counter()
                result = runner.calls[workload]()
                first_call[workload][name] = time.perf_counter() - start
                loss, grads = runner.check(workload, result)
            except Exception as error:
                if name == "lstmjax":
                    raise
                errors[name] = f"{type(error).__name__}: {error}"
                del runners[name]
                continue
            if name == "lstmjax":
                reference[workload] = (loss, grads)
                continue
            try:
                checks[workload][name] = agreement(name, point, workload, (loss, grads), reference[workload],
                                                   config.rtol)
            except AnchorMismatchError as error:
                if config.on_mismatch == "stop":
                    raise
                errors[name] = f"{type(error).__name__}: {error}"  # "drop": reported, not timed
                del runners[name]
        for _ in range(config.warmup - 1):
            for runner in runners.values():
                if workload in runner.calls:
                    runner.calls[workload]()

    seconds, medians, gflops = time_workloads(runners, point, config.repeats, 1e-3 * config.pause_ms)
    ratios = {w: {name: m / medians[w]["lstmjax"] for name, m in medians[w].items()} for w in WORKLOADS}
    return {**point._asdict(), "label": point.label, "flops": {w: lstm_flops(point, w) for w in WORKLOADS},
            "check_relative_differences": checks, "first_call_seconds": first_call, "seconds": seconds,
            "median_seconds": medians, "ratio_to_lstmjax": ratios, "gflops_per_second": gflops, "errors": errors}


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
    """Runs the benchmark from command-line arguments; returns the run's folder."""
    config = parse_config(BenchmarkConfig, argv, prog="python -m experiments.benchmark")
    run = record_run(config, NAME, run_benchmark, report.summary)
    print(report.table(run.summary))
    plots = report.plot(run.run_dir)
    print(f"\nBenchmarked in {run.seconds:.1f} s, compilation included.")
    print(written_files_line(run.run_dir, plots))
    return run.run_dir


if __name__ == "__main__":
    main()
