"""How fast can an LSTM training step be on this CPU? A hand-fused C++ kernel against lstmjax and PyTorch.

    python -m experiments.native_ceiling            # about 45 s on a 2-core CPU; needs g++ and AVX-512
    python -m experiments.native_ceiling --help

`experiments/native/lstm_train_step.cpp` computes a one-layer LSTM's loss `mean(ys ** 2)` and its
gradient with respect to the weights in one call: the forward loop fuses each step's matrix
multiply `[x_t, h_{t-1}] · [w_x; w_h]` with the gates and the state update (AVX-512 register
blocks, the weights packed once per call so that a 64-column panel holds all four gates of 16
units), the backward loop does the same with `dz_t · w_hᵀ`, and the weight gradients are single
large products after it; threads split the batch, so the time loops need no barrier. It is not
part of lstmjax: it only does this one model (no masks, no reverse, no forward mode, float32,
H a multiple of 32), and exists to measure how far XLA's loop of kernels is from what this
machine can do, and whether issue 5's targets are reachable at all.

At each grid point, on the weights and data of `python -m experiments.benchmark` (the same
`make_inputs`), lstmjax (`jax.jit` of `lj.unroll`'s loss, and of its `jax.value_and_grad`), the
kernel called from Python (`native`), the kernel as an XLA FFI custom call inside `jax.jit`
(`native_jit`: what lstmjax would run with the kernel behind `lj.unroll`) and PyTorch's
`nn.LSTM` (oneDNN's fused RNN, if torch is installed) are first checked
against lstmjax's loss and gradient (relative difference at most `--rtol`, or the run stops),
then timed round-robin like the benchmark (`--repeats` rounds, medians, a `--pause-ms` sleep
before each call), forward pass and training step. Reported: medians, each time's ratio to
lstmjax's and the kernel's to PyTorch's, achieved GFLOP/s (`experiments.benchmark.lstm_flops`)
against the matmul peak of the same run, and the kernel's time per phase (thread 0's, medians of
five back-to-back training steps after the timing).

Writes `config.json`, `metrics.json` and `summary.json` to `results/native_ceiling/<run>/` (no plots).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

import lstmjax as lj
from experiments import _benchmark_anchors as anchors
from experiments import _native_kernel as native
from experiments._benchmark_config import parse_point
from experiments._benchmark_machine import load_average, machine, usable_cores
from experiments._config_checks import check_int
from experiments._config_cli import parse_config
from experiments._results import record_run, written_files_line
from experiments.benchmark import (
    WORKLOADS,
    Runner,
    agreement,
    jax_runner,
    make_inputs,
    matmul_peak,
    time_workloads,
    torch_runner,
)

NAME = "native_ceiling"


@dataclasses.dataclass(frozen=True)
class NativeCeilingConfig:
    """Time a hand-fused C++ LSTM training step against lstmjax and PyTorch on the same weights and data.

    Attributes:
        points: grid points BxTxDxH; H must be a multiple of 32 and B must split into `threads` equal
            parts that are multiples of 4.
        threads: threads of the kernel and of PyTorch; default: the cores this process may use.
        warmup: untimed calls of each implementation before timing; the first is checked.
        repeats: timed rounds (each implementation called once per round); medians are reported.
        seed: PRNG seed of the weights and inputs.
        rtol: largest allowed difference of the kernel's and PyTorch's loss and gradient leaves from
            lstmjax's, relative to the largest magnitude of lstmjax's leaf.
        pause_ms: sleep before each timed call (other libraries' worker threads spin for a while after a call).
        compiler: the C++ compiler that builds the kernel.
        torch: also time PyTorch's nn.LSTM (if torch is installed).
        results_dir: root folder; the run is written to <results_dir>/native_ceiling/<run>/.
        run: name of the run's folder; default: the UTC time the run starts.
        overwrite: replace an existing run folder of the same name instead of refusing.
    """

    points: tuple[str, ...] = ("32x100x32x128", "32x1000x32x32", "32x100x32x256", "32x50x32x512")
    threads: int | None = None
    warmup: int = 3
    repeats: int = 20
    seed: int = 0
    rtol: float = 1e-4
    pause_ms: float = 20.0
    compiler: str = "g++"
    torch: bool = True
    results_dir: str = "results"
    run: str | None = None
    overwrite: bool = False

    def kernel_threads(self) -> int:
        """`threads`, or the usable cores (at most 64, the kernel's limit)."""
        return self.threads or min(usable_cores(), 64)

    def __post_init__(self):
        for name in ("warmup", "repeats"):
            check_int(name, getattr(self, name), 1)
        check_int("seed", self.seed + 1, 1)
        if self.threads is not None:
            check_int("threads", self.threads, 1)
            if self.threads > 64:
                raise ValueError(f"threads must be at most 64 for the native kernel, got {self.threads}")
        if not self.points:
            raise ValueError("points must name at least one grid point")
        threads = self.kernel_threads()
        for text in self.points:
            point = parse_point(text)
            try:
                native.check_shape(point.batch_size, point.hidden_size, threads)
            except ValueError as error:
                default = "" if self.threads else f" (threads: {threads}, the usable cores; set --threads)"
                raise ValueError(f"points: {text}: {error}{default}") from None
        if isinstance(self.rtol, bool) or not isinstance(self.rtol, (int, float)) or not 0 < self.rtol < 1:
            raise ValueError(f"rtol must be a number in (0, 1), got {self.rtol!r}")
        if isinstance(self.pause_ms, bool) or not isinstance(self.pause_ms, (int, float)) or not (
                0 <= self.pause_ms < math.inf):
            raise ValueError(f"pause_ms must be a finite number >= 0, got {self.pause_ms!r}")


def native_jit_runner(kernel: native.NativeLSTM, params, xs, threads: int) -> Runner:
    """The kernel as an XLA custom call inside `jax.jit` (`NativeLSTM.jax_loss_and_grads`): what lstmjax
    would run if the kernel were behind `lj.unroll`."""
    loss_and_grads = kernel.jax_loss_and_grads(threads)
    compiled = {"forward": jax.jit(lambda p, x: loss_and_grads(p, x, with_grads=False)[0]),
                "train": jax.jit(loss_and_grads)}
    calls = {w: (lambda fn=compiled[w]: jax.block_until_ready(fn(params, xs))) for w in WORKLOADS}

    def check(workload: str, result: Any):
        if workload == "forward":
            return float(result), None
        loss, grads = result
        return float(loss), lj.LSTMParams(*(np.asarray(g) for g in grads))

    return Runner(calls, check)


def native_runner(kernel: native.NativeLSTM, params, xs, threads: int) -> tuple[Runner, native.NativeStep]:
    step = kernel.step(params, np.asarray(xs), threads)

    def check(workload: str, result: Any):
        return (result, None) if workload == "forward" else result

    return Runner({"forward": step.forward, "train": step.train}, check), step


def run_ceiling(config: NativeCeilingConfig) -> dict[str, Any]:
    """The checks and timings; returns metrics.json's contents."""
    threads = config.kernel_threads()
    torch_reason = anchors.unavailable("torch") if config.torch else "not requested (--no-torch)"
    load_start = load_average()
    points = [parse_point(p) for p in config.points]
    peak_shapes = [(2048, 2048, 2048)] + sorted(
        {(p.batch_size * p.length, p.input_size + p.hidden_size, 4 * p.hidden_size) for p in points})
    peak = matmul_peak(peak_shapes, 5, config.seed)
    results = []
    with native.NativeLSTM(config.compiler) as kernel:
        for point in points:
            results.append(_run_point(point, config, kernel, threads, torch_reason is None))
        command = kernel.command
    return {
        "machine": {**machine(), "load_average_start": load_start, "load_average_end": load_average()},
        "threads": threads, "build_command": command, "torch": torch_reason or "timed",
        "warmup": config.warmup, "repeats": config.repeats, "pause_ms": config.pause_ms, "rtol": config.rtol,
        "peak": {"matmuls": peak, "gflops_per_second": max(m["gflops_per_second"] for m in peak)},
        "points": results,
    }


def _run_point(point, config: NativeCeilingConfig, kernel: native.NativeLSTM, threads: int, with_torch: bool) -> dict:
    params, xs = make_inputs(point, config.seed)
    runners = {"lstmjax": jax_runner(anchors.lstmjax_anchor(), params, xs, WORKLOADS)}
    runners["native"], native_step = native_runner(kernel, params, xs, threads)
    runners["native_jit"] = native_jit_runner(kernel, params, xs, threads)
    if with_torch:
        runners["torch"] = torch_runner(params, xs, threads, WORKLOADS)
    checks: dict[str, dict] = {w: {} for w in WORKLOADS}
    for workload in WORKLOADS:
        reference = runners["lstmjax"].check(workload, runners["lstmjax"].calls[workload]())
        for name in ("native", "native_jit", "torch"):
            if name in runners:
                result = runners[name].check(workload, runners[name].calls[workload]())
                checks[workload][name] = agreement(name, point, workload, result, reference, config.rtol)
        for _ in range(config.warmup - 1):
            for runner in runners.values():
                runner.calls[workload]()
    seconds, medians, gflops = time_workloads(runners, point, config.repeats, 1e-3 * config.pause_ms)
    phases = []
    for _ in range(5):  # back to back, so that no call wakes sleeping threads
        native_step.train()
        phases.append(native_step.phase_seconds())
    phase_medians = {phase: float(np.median([p[phase] for p in phases])) for phase in phases[0]}
    return {**point._asdict(), "label": point.label, "check_relative_differences": checks, "seconds": seconds,
            "median_seconds": medians, "gflops_per_second": gflops, "native_phase_seconds": phase_medians}


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Per point and workload: median ms, ratios (to lstmjax, and the kernel's to PyTorch), GFLOP/s."""
    peak = metrics["peak"]["gflops_per_second"]
    rows = []
    for point in metrics["points"]:
        for workload in WORKLOADS:
            medians, gflops = point["median_seconds"][workload], point["gflops_per_second"][workload]
            rows.append({
                "point": point["label"], "workload": workload,
                "ms": {name: round(1e3 * m, 2) for name, m in medians.items()},
                "ratio_to_lstmjax": {name: round(m / medians["lstmjax"], 3) for name, m in medians.items()},
                "native_to_torch": round(medians["native"] / medians["torch"], 3) if "torch" in medians else None,
                "gflops_per_second": {name: round(g, 1) for name, g in gflops.items()},
                "fraction_of_peak": {name: round(g / peak, 3) for name, g in gflops.items()},
            })
    geomean = {}
    for workload in WORKLOADS:
        ratios = [r["native_to_torch"] for r in rows if r["workload"] == workload and r["native_to_torch"]]
        geomean[workload] = round(float(np.exp(np.mean(np.log(ratios)))), 3) if ratios else None
    return {"peak_gflops_per_second": round(peak, 1), "threads": metrics["threads"], "torch": metrics["torch"],
            "rows": rows, "geomean_native_to_torch": geomean}


def table(summary_: dict[str, Any]) -> str:
    """The printed table: one row per point and workload."""
    out = [f"matmul peak {summary_['peak_gflops_per_second']} GFLOP/s; {summary_['threads']} threads; "
           f"PyTorch: {summary_['torch']}",
           f"{'point':<26}{'workload':<10}{'lstmjax ms':>11}{'native ms':>11}{'in jit ms':>11}{'torch ms':>10}"
           f"{'native/lstmjax':>16}{'native/torch':>14}{'native % peak':>15}"]
    for row in summary_["rows"]:
        ms = row["ms"]
        torch_ms = f"{ms['torch']:>10.2f}" if "torch" in ms else f"{'-':>10}"
        to_torch = f"{row['native_to_torch']:>14.3f}" if row["native_to_torch"] else f"{'-':>14}"
        out.append(f"{row['point']:<26}{row['workload']:<10}{ms['lstmjax']:>11.2f}{ms['native']:>11.2f}"
                   f"{ms['native_jit']:>11.2f}{torch_ms}"
                   f"{row['ratio_to_lstmjax']['native']:>16.3f}{to_torch}"
                   f"{100 * row['fraction_of_peak']['native']:>14.0f}%")
    out.append(f"geometric mean of native/torch: {summary_['geomean_native_to_torch']}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
    """Runs the study from command-line arguments; returns the run's folder."""
    config = parse_config(NativeCeilingConfig, argv, prog="python -m experiments.native_ceiling")
    reason = native.unavailable(config.compiler)
    if reason:  # before the run's folder exists
        raise SystemExit(f"python -m experiments.native_ceiling: cannot build the kernel: {reason}")
    run = record_run(config, NAME, run_ceiling, summary)
    print(table(run.summary))
    print(f"\nMeasured in {run.seconds:.1f} s, compilation included.")
    print(written_files_line(run.run_dir))
    return run.run_dir


if __name__ == "__main__":
    main()
