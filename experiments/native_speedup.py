"""What does the native CPU kernel buy? Each cell family's `lj.unroll` with and without it, timed in one process.

    python -m experiments.native_speedup             # about a minute on a 2-core CPU
    python -m experiments.native_speedup --families gru --hidden-sizes 16 32 64 --repeats 9
    python -m experiments.native_speedup --help

For every family that has a native kernel (`cell.fused.native`: the LSTM, the GRU, the RNN) and every
hidden size `H`, the same cell (`lj.<family>(H)`, weights from `cell.init(PRNGKey(seed), D)`, inputs
`xs: (T, B, D)` standard normal, zero initial state) is run two ways through the public
`lj.unroll`:

* `native`: the cell as built, so `lj.unroll` takes whatever path it takes for it here (the
  kernel from the family's `native_min_hidden_size` up, where `lj.native_kernel_status()` says
  this machine has it; `uses_kernel` records whether the compiled program calls it);
* `xla`: the same cell with its kernel switched off (`cell.fused._replace(native=None)`), i.e. the
  XLA path `lj.unroll` takes wherever the kernel cannot run (the fast XLA path or the
  step-by-step scan, as `lstmjax._fused` decides).

Two workloads: `train`, `jax.jit(jax.value_and_grad(loss))` with `loss = mean(ys ** 2)`, and
`forward`, `jax.jit(loss)`. Their first calls (compilation) return the loss and gradients, which
must agree between the two ways to `rtol` relative to each leaf's largest magnitude, or the run
stops: it never times two different computations. Then `repeats` rounds, each timing `calls`
calls of every way in turn (the order alternating between rounds); per round the mean of its
calls, and the median over rounds is reported with the ratio native ÷ xla (below 1: the kernel
is faster). These ratios are how the kernels' thresholds (`native_min_hidden_size`) were chosen.

Writes `config.json`, `metrics.json` (every round's time, the checks, the machine) and
`summary.json` (the printed table) to `results/native_speedup/<run>/`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import lstmjax as lj
from experiments._benchmark_anchors import without_native_kernel
from experiments._config_checks import check_int
from experiments._config_cli import parse_config
from experiments._results import record_run, written_files_line

NAME = "native_speedup"
FAMILIES = {"lstm": lj.lstm, "gru": lj.gru, "rnn": lj.rnn}
WAYS = ("native", "xla")
WORKLOADS = ("train", "forward")


@dataclasses.dataclass(frozen=True)
class NativeSpeedupConfig:
    """Time each cell family's lj.unroll with its native CPU kernel against the same cell without it.

    Attributes:
        families: cell families to measure, among lstm, gru and rnn (one without a native kernel is
            reported as such, not timed).
        hidden_sizes: the hidden sizes H to measure.
        batch_size: B, sequences per call.
        length: T, steps per sequence.
        input_size: D, inputs per step.
        repeats: timed rounds per point after the compiling call; medians over rounds are reported.
        calls: calls of each way per round (their mean is the round's time).
        rtol: largest difference allowed between the two ways' loss and gradients, relative to each
            leaf's largest magnitude.
        seed: PRNG seed of the weights and inputs.
        results_dir: root folder; the run is written to <results_dir>/native_speedup/<run>/.
        run: name of the run's folder; default: the UTC time the run starts.
        overwrite: replace an existing run folder of the same name instead of refusing.
    """

    families: tuple[str, ...] = ("lstm", "gru", "rnn")
    hidden_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)
    batch_size: int = 32
    length: int = 100
    input_size: int = 32
    repeats: int = 7
    calls: int = 5
    rtol: float = 1e-4
    seed: int = 0
    results_dir: str = "results"
    run: str | None = None
    overwrite: bool = False

    def __post_init__(self):
        if not self.families or any(f not in FAMILIES for f in self.families):
            raise ValueError(f"families must be among {', '.join(FAMILIES)}, got {self.families!r}")
        if not self.hidden_sizes:
            raise ValueError("hidden_sizes must name at least one hidden size, got ()")
        for h in self.hidden_sizes:
            check_int("hidden_sizes", h, 1)
        for name in ("batch_size", "length", "input_size", "repeats", "calls"):
            check_int(name, getattr(self, name), 1)
        check_int("seed", self.seed, 0)
        if isinstance(self.rtol, bool) or not isinstance(self.rtol, (int, float)) or not self.rtol > 0:
            raise ValueError(f"rtol must be a positive number, got {self.rtol!r}")


def workload(cell: lj.Cell, name: str) -> Callable:
    """The jitted `forward` (loss) or `train` (loss and gradient) of `cell` over `(params, xs)`."""
    def loss(params, xs):
        return jnp.mean(lj.unroll(cell, params, xs)[1] ** 2)

    return jax.jit(jax.value_and_grad(loss) if name == "train" else loss)


def uses_kernel(function: Callable, *args) -> bool:
    """Whether the compiled program of `function(*args)` calls one of lstmjax's native kernels."""
    return "lstmjax_" in function.lower(*args).as_text()


def largest_difference(a: Any, b: Any) -> float:
    """The largest difference between two pytrees, leaf by leaf relative to the leaf's largest magnitude."""
    worst = 0.0
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        worst = max(worst, float(np.max(np.abs(x - y)) / max(float(np.max(np.abs(y))), 1e-30)))
    return worst


def time_rounds(calls: dict[str, Callable[[], Any]], repeats: int, per_round: int) -> dict[str, list[float]]:
    """`repeats` rounds; in each, every function is called `per_round` times in turn (order alternating
    between rounds) and its mean time per call recorded, in seconds."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            for _ in range(per_round):
                jax.block_until_ready(calls[name]())
            times[name].append((time.perf_counter() - start) / per_round)
    return times


def measure_point(family: str, hidden_size: int, config: NativeSpeedupConfig) -> dict[str, Any]:
    """Both ways and both workloads of one family at one hidden size."""
    cell = FAMILIES[family](hidden_size)
    keys = jax.random.split(jax.random.PRNGKey(config.seed))
    params = cell.init(keys[0], config.input_size)
    xs = jax.random.normal(keys[1], (config.length, config.batch_size, config.input_size))
    cells = {"native": cell, "xla": without_native_kernel(cell)}
    point: dict[str, Any] = {"family": family, "hidden_size": hidden_size}
    for name in WORKLOADS:
        functions = {way: workload(c, name) for way, c in cells.items()}
        kernel = {way: uses_kernel(f, params, xs) for way, f in functions.items()}
        results = {way: jax.block_until_ready(f(params, xs)) for way, f in functions.items()}
        difference = largest_difference(results["native"], results["xla"])
        if not difference <= config.rtol:
            raise AssertionError(f"{family} H={hidden_size} {name}: the native and XLA ways differ by "
                                 f"{difference:.2e} (relative), more than rtol={config.rtol:g}")
        times = time_rounds({way: (lambda f=f: f(params, xs)) for way, f in functions.items()},
                            config.repeats, config.calls)
        medians = {way: float(np.median(t)) for way, t in times.items()}
        point[name] = {"uses_kernel": kernel, "largest_difference": difference, "seconds": times,
                       "median_ms": {way: 1e3 * m for way, m in medians.items()},
                       "native_over_xla": medians["native"] / medians["xla"]}
    return point


def run_study(config: NativeSpeedupConfig) -> dict[str, Any]:
    """Every family with a native kernel at every hidden size; returns metrics.json's contents."""
    status = lj.native_kernel_status()
    points, skipped = [], {}
    for family in config.families:
        fused = FAMILIES[family](1).fused
        if fused is None or fused.native is None:
            skipped[family] = "no native kernel (cell.fused.native is None): nothing to compare"
            continue
        points += [measure_point(family, h, config) for h in config.hidden_sizes]
    return {"native_kernel": {"available": status.available, "reason": status.reason},
            "thresholds": {f: FAMILIES[f](1).fused.native_min_hidden_size for f in config.families if f not in skipped},
            "skipped": skipped, "points": points,
            "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                        "jax_version": jax.__version__, "backend": jax.default_backend(),
                        "python": platform.python_version()}}


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Per family and workload: H -> [native ms, xla ms, native / xla, kernel used], unrounded (rounded
    once, when printed)."""
    table: dict[str, dict[str, dict[str, list]]] = {}
    for p in metrics["points"]:
        for name in WORKLOADS:
            w = p[name]
            table.setdefault(p["family"], {}).setdefault(name, {})[str(p["hidden_size"])] = [
                w["median_ms"]["native"], w["median_ms"]["xla"], w["native_over_xla"], w["uses_kernel"]["native"]]
    return {"native_kernel_available": metrics["native_kernel"]["available"], "thresholds": metrics["thresholds"],
            "skipped": metrics["skipped"], "table": table}


def lines(s: dict[str, Any], config: NativeSpeedupConfig) -> str:
    """The report printed at the end."""
    out = [f"lj.unroll with and without the native kernel, B={config.batch_size} T={config.length} "
           f"D={config.input_size}; median ms of {config.repeats} rounds of {config.calls} calls "
           f"(native kernel available here: {s['native_kernel_available']})"]
    for family, workloads in s["table"].items():
        for name, rows in workloads.items():
            out.append(f"{family} {name}  (kernel from H = {s['thresholds'][family]})")
            out.append(f"  {'H':>5} {'native':>10} {'xla':>10} {'native/xla':>11}  kernel used")
            for h, (native, xla, ratio, used) in rows.items():
                out.append(f"  {h:>5} {native:>10.2f} {xla:>10.2f} {ratio:>11.2f}  {'yes' if used else 'no'}")
    out += [f"{family}: {why}" for family, why in s["skipped"].items()]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
    """Runs the study from command-line arguments; returns the run's folder."""
    config = parse_config(NativeSpeedupConfig, argv, prog="python -m experiments.native_speedup")
    run = record_run(config, NAME, run_study, summary)
    print(lines(run.summary, run.config))
    print(f"\nMeasured in {run.seconds:.1f} s, compilation included.")
    print(written_files_line(run.run_dir))
    return run.run_dir


if __name__ == "__main__":
    main()
