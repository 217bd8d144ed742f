"""Many seeds in one compiled program: is `jax.vmap` over K stacked `TrainState`s faster than K runs?

    python -m experiments.seeds_benchmark            # about three minutes on a 2-core CPU
    python -m experiments.seeds_benchmark --help

K independent models (LSTM with a linear readout, on the adding problem, seed k's weights,
`TrainState` key and batches all drawn from `PRNGKey(k)`) are trained for `steps` Adam steps
in four ways, from the same initial states on the same batches. Step by step, from Python:

(a) vmapped: `jax.jit(jax.vmap(train_step))` over the K stacked states, called `steps` times;
(b) sequential: `jax.jit(train_step)` on one state, called `steps` times for each of the K seeds;

and as whole programs, all `steps` steps in one `lax.scan` (`whole_program`), with the two
strategies of `lj.map_seeds`:

(c) `strategy="vmap"`: one vmapped program over the K seeds, called once;
(d) `strategy="loop"`: one jitted single-seed program, called for each seed.

Every program is compiled and run once before timing (warm-up); each way is then timed `repeats`
times (wall-clock, host loop included, `block_until_ready` at the end, batches generated
and sliced beforehand), alternating, and the medians and their ratios are reported. The final
parameters and per-step losses of (a) are compared with (b)'s seed by seed, and (c)'s with
(d)'s: the largest absolute and relative differences are recorded, and `equal` says whether every parameter and
loss agrees within `rtol`/`atol` (`np.allclose`). They are not bitwise equal: XLA rounds a
batched matmul differently from K single ones (~1e-7 after one step), and Adam amplifies it.

Writes `config.json`, `metrics.json` (every repeat's time, the differences) and `summary.json`
(what is printed) to `results/seeds_benchmark/<run>/`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import platform
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from tqdm import tqdm

import lstmjax as lj
from experiments._config_cli import parse_config
from experiments._results import record_run, written_files_line

NAME = "seeds_benchmark"


@dataclasses.dataclass(frozen=True)
class SeedsBenchmarkConfig:
    """Time K seeds trained in one vmapped, jitted program against K sequential runs of the jitted step,
    step by step and as whole programs (lj.map_seeds' two strategies).

    Attributes:
        seeds: K, the number of independent models (seeds 0..K-1).
        hidden_size: LSTM units.
        length: sequence length T of the adding problem.
        batch_size: sequences per training step (a fresh batch per seed and step).
        steps: Adam steps per model in each timed run.
        repeats: timed runs of each way, after one warm-up run; medians are reported.
        learning_rate: Adam's learning rate.
        rtol: relative tolerance of the vmapped-vs-sequential comparison (np.allclose); float32 rounding
            differs between batched and single matmuls, and 100 Adam steps amplify it to ~1e-5.
        atol: absolute tolerance of that comparison.
        results_dir: root folder; the run is written to <results_dir>/seeds_benchmark/<run>/.
        run: name of the run's folder; default: the UTC time the run starts.
        overwrite: replace an existing run folder of the same name instead of refusing.
        progress: show a progress bar over the timed runs (only when stderr is a terminal).
    """

    seeds: int = 16
    hidden_size: int = 64
    length: int = 50
    batch_size: int = 32
    steps: int = 100
    repeats: int = 5
    learning_rate: float = 0.01
    rtol: float = 1e-3
    atol: float = 1e-4
    results_dir: str = "results"
    run: str | None = None
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        for name in ("seeds", "hidden_size", "batch_size", "steps", "repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.length, bool) or not isinstance(self.length, (int, np.integer)) or self.length < 2:
            raise ValueError(f"length must be an integer >= 2, got {self.length!r}")
        for name in ("learning_rate", "rtol", "atol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def setup(config: SeedsBenchmarkConfig):
    """`(train_step, stacked initial states, batches)`: the pure step, K stacked `TrainState`s and the
    batches of every seed and step, `Batch` leaves of shape `(steps, K, ...)`, all on the device."""
    cell = lj.lstm(config.hidden_size)
    optimizer = optax.adam(config.learning_rate)

    def loss_fn(model, batch, key):
        _, ys = lj.unroll(cell, model["cell"], batch.xs)
        return jnp.mean((ys[-1] @ model["readout"] + model["bias"] - batch.targets) ** 2)

    def init_state(seed):
        key_model, key_readout, key_state = jax.random.split(jax.random.PRNGKey(seed), 3)
        model = {"cell": cell.init(key_model, 2),
                 "readout": jax.random.normal(key_readout, (config.hidden_size,)) / math.sqrt(config.hidden_size),
                 "bias": jnp.zeros(())}
        return lj.init_train_state(model, optimizer, key_state)

    def seed_batches(seed):
        keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), 1), config.steps)
        return jax.vmap(lambda k: lj.adding_problem(k, config.batch_size, config.length))(keys)

    seeds = jnp.arange(config.seeds)
    states = jax.jit(jax.vmap(init_state))(seeds)
    batches = jax.jit(jax.vmap(seed_batches, out_axes=1))(seeds)  # (steps, K, ...)
    return lj.make_train_step(loss_fn, optimizer), jax.block_until_ready(states), jax.block_until_ready(batches)


def _index(tree, i):
    return jax.tree_util.tree_map(lambda a: a[i], tree)


def split_inputs(states, batches, steps: int, seeds: int):
    """The inputs of both ways, sliced beforehand so that no slicing is timed: `(per_step, per_seed_states,
    per_seed_steps)` with `per_step[t]` the K-stacked batch of step t, `per_seed_states[k]` seed k's
    state and `per_seed_steps[k][t]` seed k's batch of step t."""
    per_step = [_index(batches, t) for t in range(steps)]
    per_seed_states = [_index(states, k) for k in range(seeds)]
    per_seed_steps = [[_index(batch, k) for batch in per_step] for k in range(seeds)]
    return jax.block_until_ready((per_step, per_seed_states, per_seed_steps))


def run_vmapped(vstep, states, per_step):
    """(a): one call of the vmapped step per step on all K states; returns final states and losses `(K, steps)`."""
    losses = []
    for batch in per_step:
        states, metrics = vstep(states, batch)
        losses.append(metrics.loss)
    return jax.block_until_ready((states, jnp.stack(losses, axis=1)))


def run_sequential(step, per_seed_states, per_seed_steps):
    """(b): for each seed in turn, one call of the single-model step per step; same outputs as `run_vmapped`."""
    finals, losses = [], []
    for state, seed_batches in zip(per_seed_states, per_seed_steps, strict=True):
        seed_losses = []
        for batch in seed_batches:
            state, metrics = step(state, batch)
            seed_losses.append(metrics.loss)
        finals.append(state)
        losses.append(jnp.stack(seed_losses))
    stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *finals)
    return jax.block_until_ready((stacked, jnp.stack(losses)))


def whole_program(step):
    """`train_one((state, batches)) -> (final state, losses (steps,))`: one seed's `steps` steps in one `lax.scan`,
    `batches` with leaves `(steps, ...)`; `lj.map_seeds` runs it for every seed."""
    def train_one(row):
        state, batches = row
        state, metrics = lax.scan(step, state, batches)
        return state, metrics.loss

    return train_one


def run_whole_program(train_one, rows, strategy: str):
    """(c) or (d): `lj.map_seeds(train_one, rows, strategy)`; returns final states and losses `(K, steps)`."""
    return jax.block_until_ready(lj.map_seeds(train_one, rows, strategy))


def compare(vmapped, sequential, rtol: float, atol: float) -> dict:
    """Largest absolute and relative differences of final params and losses, and whether all are allclose."""
    (v_states, v_loss), (s_states, s_loss) = vmapped, sequential
    pairs = list(zip(jax.tree_util.tree_leaves(v_states.params), jax.tree_util.tree_leaves(s_states.params),
                     strict=True)) + [(v_loss, s_loss)]
    max_abs, max_rel, equal = 0.0, 0.0, True
    for a, b in pairs:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        diff = np.abs(a - b)
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float((diff / np.maximum(np.abs(b), 1e-12)).max()))
        equal = equal and bool(np.allclose(a, b, rtol=rtol, atol=atol))
    bitwise = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)
    loss_diff = np.abs(np.asarray(v_loss, np.float64) - np.asarray(s_loss, np.float64))
    return {"equal": equal, "bitwise_equal": bitwise, "max_abs_diff": max_abs, "max_rel_diff": max_rel,
            "loss_max_abs_diff": float(loss_diff.max()), "first_step_loss_max_abs_diff": float(loss_diff[:, 0].max()),
            "final_loss_vmapped": np.asarray(v_loss[:, -1]).tolist(),
            "final_loss_sequential": np.asarray(s_loss[:, -1]).tolist()}


def run_benchmark(config: SeedsBenchmarkConfig) -> dict:
    """Warm-up, `repeats` timed runs of each way (alternating), the comparison; returns metrics.json's contents."""
    step, states, batches = setup(config)
    vstep = jax.jit(jax.vmap(step))
    single = jax.jit(step)
    per_step, per_seed_states, per_seed_steps = split_inputs(states, batches, config.steps, config.seeds)
    start = time.perf_counter()
    run_vmapped(vstep, states, per_step[:1])
    compile_vmapped = time.perf_counter() - start
    start = time.perf_counter()
    run_sequential(single, per_seed_states[:1], [per_seed_steps[0][:1]])
    compile_sequential = time.perf_counter() - start
    times = {"vmapped": [], "sequential": []}
    comparison = None
    show = config.progress and sys.stderr.isatty()
    with tqdm(total=2 * config.repeats, unit="run", desc="seeds benchmark", disable=not show) as bar:
        for repeat in range(config.repeats):
            start = time.perf_counter()
            vmapped = run_vmapped(vstep, states, per_step)
            times["vmapped"].append(time.perf_counter() - start)
            bar.update()
            start = time.perf_counter()
            sequential = run_sequential(single, per_seed_states, per_seed_steps)
            times["sequential"].append(time.perf_counter() - start)
            bar.update()
            if repeat == 0:
                comparison = compare(vmapped, sequential, config.rtol, config.atol)
    medians = {way: float(np.median(t)) for way, t in times.items()}
    whole = time_whole_program(step, states, batches, config, show)
    return {
        "seeds": config.seeds, "hidden_size": config.hidden_size, "length": config.length,
        "batch_size": config.batch_size, "steps": config.steps, "repeats": config.repeats,
        "device": str(jax.devices()[0]), "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
        "jax_version": jax.__version__, "python": platform.python_version(),
        "first_call_seconds": {"vmapped": compile_vmapped, "sequential": compile_sequential},
        "seconds": times, "median_seconds": medians,
        "speedup_sequential_over_vmapped": medians["sequential"] / medians["vmapped"],
        "ms_per_model_step": {way: 1e3 * m / (config.seeds * config.steps) for way, m in medians.items()},
        "comparison": comparison,
        "whole_program": whole,
    }


def time_whole_program(step, states, batches, config: SeedsBenchmarkConfig, show: bool) -> dict:
    """(c) and (d): each compiled and run once (warm-up), then timed `repeats` times, alternating."""
    train_one = whole_program(step)
    rows = (states, jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), batches))  # batches (K, steps, ...)
    rows = jax.block_until_ready(rows)
    first_call, times, results = {}, {"vmap": [], "loop": []}, {}
    for strategy in times:
        start = time.perf_counter()
        results[strategy] = run_whole_program(train_one, rows, strategy)
        first_call[strategy] = time.perf_counter() - start
    with tqdm(total=2 * config.repeats, unit="run", desc="whole programs", disable=not show) as bar:
        for _ in range(config.repeats):
            for strategy in times:
                start = time.perf_counter()
                run_whole_program(train_one, rows, strategy)
                times[strategy].append(time.perf_counter() - start)
                bar.update()
    medians = {strategy: float(np.median(t)) for strategy, t in times.items()}
    return {"first_call_seconds": first_call, "seconds": times, "median_seconds": medians,
            "speedup_loop_over_vmap": medians["vmap"] / medians["loop"],
            "ms_per_model_step": {s: 1e3 * m / (config.seeds * config.steps) for s, m in medians.items()},
            "comparison": compare(results["vmap"], results["loop"], config.rtol, config.atol)}


def summary(metrics: dict) -> dict:
    """The printed numbers."""
    keys = ("seeds", "hidden_size", "length", "batch_size", "steps", "repeats", "device", "median_seconds",
            "speedup_sequential_over_vmapped", "ms_per_model_step")
    c, w = metrics["comparison"], metrics["whole_program"]
    return {**{k: metrics[k] for k in keys}, "equal": c["equal"], "bitwise_equal": c["bitwise_equal"],
            "max_abs_diff": c["max_abs_diff"], "max_rel_diff": c["max_rel_diff"],
            "loss_max_abs_diff": c["loss_max_abs_diff"],
            "whole_program": {**{k: w[k] for k in ("median_seconds", "speedup_loop_over_vmap", "ms_per_model_step")},
                              "equal": w["comparison"]["equal"], "max_abs_diff": w["comparison"]["max_abs_diff"]}}


def lines(s: dict, config: SeedsBenchmarkConfig) -> str:
    """The report printed at the end."""
    m, per = s["median_seconds"], s["ms_per_model_step"]
    faster = "vmapped is faster" if s["speedup_sequential_over_vmapped"] > 1 else "sequential is faster"
    w = s["whole_program"]
    whole_faster = "the loop is faster" if w["speedup_loop_over_vmap"] > 1 else "vmap is faster"
    return "\n".join([
        f"K = {s['seeds']} LSTMs (H = {s['hidden_size']}), adding problem T = {s['length']}, batch {s['batch_size']}, "
        f"{s['steps']} Adam steps each, on {s['device']}; median of {s['repeats']} timed runs after warm-up:",
        f"  (a) one jitted vmapped step over K stacked TrainStates: {m['vmapped']:.3f} s "
        f"({per['vmapped']:.3f} ms per model-step)",
        f"  (b) K sequential runs of the jitted single-model step: {m['sequential']:.3f} s "
        f"({per['sequential']:.3f} ms per model-step)",
        f"  ratio (b)/(a) = {s['speedup_sequential_over_vmapped']:.2f}: {faster}",
        f"  per-seed results, vmapped vs sequential (final params and every step's loss): max abs diff "
        f"{s['max_abs_diff']:.2e} (losses alone {s['loss_max_abs_diff']:.2e}), max rel diff {s['max_rel_diff']:.2e}, "
        f"bitwise equal: {s['bitwise_equal']}; "
        f"{'equal' if s['equal'] else 'NOT equal'} within rtol {config.rtol:g}, atol {config.atol:g}",
        "Whole programs (the steps in one lax.scan per seed), lj.map_seeds:",
        f"  (c) strategy='vmap', one vmapped program: {w['median_seconds']['vmap']:.3f} s "
        f"({w['ms_per_model_step']['vmap']:.3f} ms per model-step)",
        f"  (d) strategy='loop', one jitted program per seed: {w['median_seconds']['loop']:.3f} s "
        f"({w['ms_per_model_step']['loop']:.3f} ms per model-step)",
        f"  ratio (c)/(d) = {w['speedup_loop_over_vmap']:.2f}: {whole_faster}; per-seed results max abs diff "
        f"{w['max_abs_diff']:.2e}, {'equal' if w['equal'] else 'NOT equal'} within rtol {config.rtol:g}, "
        f"atol {config.atol:g}",
    ])


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
    """Runs the benchmark from command-line arguments; returns the run's folder."""
    config = parse_config(SeedsBenchmarkConfig, argv, prog="python -m experiments.seeds_benchmark")
    run = record_run(config, NAME, run_benchmark, summary)
    print(lines(run.summary, run.config))
    print(f"\nBenchmarked in {run.seconds:.1f} s, compilation included.")
    print(written_files_line(run.run_dir))
    return run.run_dir


if __name__ == "__main__":
    main()
