"""Long-range memory: vanilla tanh RNN vs LSTM vs GRU on the adding, copy and temporal-order tasks.

    python -m experiments.long_range       # adding, T = 50, 100, 200, 3 seeds, 1500 steps: 3-6 min, 2-core CPU
    python -m experiments.long_range --tasks temporal_order --lengths 100     # ~2 min
    python -m experiments.long_range --tasks copy --lengths 50 --train-steps 3000
    python -m experiments.long_range --help

For every task, sequence length T, cell and seed, a model (the cell, then a linear readout of
its outputs) is trained from scratch with Adam after `optax.clip_by_global_norm`, on a fresh
batch every step, and scored on a fixed test batch against the task's memoryless baseline, the
score of a model that remembers nothing (`lj.ADDING_BASELINE_MSE`, `lj.copy_memory_baseline(T)`,
`lj.TEMPORAL_ORDER_BASELINE_CROSS_ENTROPY`):

* `adding` (`lj.adding_problem`, Arjovsky et al.'s form): readout of the last output, test MSE
  (baseline 1/6). Remembering only the second marked value (the one in the second half) gives
  MSE 1/12, so a score a little below the baseline is not yet long-range memory.
* `copy` (`lj.copy_memory`, 10 symbols from 8, `T` steps between the last symbol and the first
  recall step, `T + 20` steps in all): a 10-class softmax readout at every step, test
  cross-entropy per step averaged over all `T + 20` steps (baseline `10·ln 8 / (T + 20)`); also
  the accuracy on the 10 recall steps (chance 1/8).
* `temporal_order` (`lj.temporal_order`, Hochreiter & Schmidhuber's task 6a, lengths T..T+T/10,
  the relevant symbols at positions 10-20 and 50-60): a 4-class softmax readout of the last real
  output (`lengths`), test cross-entropy (baseline ln 4); also the accuracy (chance 1/4).

The default run is the adding problem alone, because it shows the picture within minutes: the
tanh RNN stays at the baseline at every T while the LSTM (and the GRU) get, on average over
the seeds, below 1% of it. The copy task needs far more steps (the LSTM at T = 50 after 3000
steps: 0.251 vs the baseline 0.297, recall accuracy 0.24), and temporal order has its own lengths (T >= 61; its relevant
positions do not move with T) and learning rate: at Adam's 0.01 the LSTM collapses to the
memoryless answer, at 0.001 (its entry in `TASK_LEARNING_RATES`) it learns it.

A seed "beats the baseline" when its test metric is below `BEATS_BASELINE` (0.9) times the
baseline. Each (task, T, cell) is its own compiled program (`train`), trained on unpadded
batches of exactly its length, its steps in `lax.scan` and its seeds mapped by `lj.map_seeds`
(one after another on a CPU, vmapped on an accelerator: the same numbers up to float rounding,
which training can amplify).

Seed `s` splits `PRNGKey(s)` in three: the weights (`init_model`), the `TrainState` key and the
training batches; the test batch of (task, T) is drawn from `fold_in(PRNGKey(TEST_KEY), T)`
(`test_batch`), the same for every cell and seed. Layout of `metrics.json` (lists are per seed):

    cells, cell_descriptions, tasks, lengths, seeds, hidden_size, init, train_steps, batch_size,
    test_size, learning_rate (the --learning-rate given, or null), learning_rates[task] (used),
    clip_norm, seed_strategy, backend (jax.default_backend()), metric_names, definitions
    baselines[task][str(T)]: the memoryless value of the task's test metric
    runs[task][str(T)][cell]: loss [seed][step], grad_norm [seed][step], test_metric_init [seed],
        test_metric [seed], and for copy / temporal_order test_accuracy [seed]
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import sys
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from tqdm import tqdm

import lstmjax as lj
from experiments import _long_range_report as report
from experiments._config_checks import check_int, check_seed_strategy
from experiments._config_cli import parse_config
from experiments._results import record_run, written_files_line

NAME = "long_range"

CELLS = {"rnn": "vanilla RNN, tanh", "lstm": "LSTM, forget bias 1", "gru": "GRU"}
"""The cells this experiment knows: name -> description used in tables and plots."""

TASKS = ("adding", "copy", "temporal_order")

METRIC_NAMES = {"adding": "test MSE", "copy": "test cross-entropy per step", "temporal_order": "test cross-entropy"}

OUTPUT_SIZES = {"adding": 1, "copy": 10, "temporal_order": len(lj.TEMPORAL_ORDER_CLASSES)}
INPUT_SIZES = {"adding": 2, "copy": 10, "temporal_order": len(lj.TEMPORAL_ORDER_SYMBOLS)}

TEMPORAL_ORDER_MIN_LENGTH = 61
"""`lj.temporal_order` needs sequences of at least 61 steps (the trigger follows position 60)."""

TASK_LEARNING_RATES = {"adding": 0.01, "copy": 0.01, "temporal_order": 0.001}
"""Adam's learning rate per task when `--learning-rate` is not given. Temporal order needs the
smaller one: at 0.01 (and, for some seeds, 0.003) Adam drives the LSTM into the memoryless
solution within the first few hundred steps (see experiments/README.md, long_range)."""

TEST_KEY = 30_000
"""The test batch of (task, T) is drawn from `fold_in(PRNGKey(TEST_KEY), T)`."""


@dataclasses.dataclass(frozen=True)
class LongRangeConfig:
    """Long-range memory: tanh RNN vs LSTM vs GRU on adding / copy / temporal order, against the memoryless baseline.

    Attributes:
        tasks: tasks to run, any of adding, copy, temporal_order.
        cells: cells to compare, any of rnn (tanh), lstm (forget bias 1), gru.
        lengths: sequence lengths T (copy: T + 20 steps in all; temporal_order: T..T+T//10, T >= 61).
        seeds: number of seeds (0, 1, ..., seeds-1); each draws its own weights and training data.
        hidden_size: units per cell.
        train_steps: Adam steps, a fresh batch each.
        batch_size: sequences per training step.
        test_size: sequences in the fixed test batch of each (task, T).
        learning_rate: Adam's learning rate for every task; default: each task's own (adding 0.01, copy 0.01,
            temporal_order 0.001).
        clip_norm: gradients are clipped to this global norm before Adam (optax.clip_by_global_norm).
        init: lstmjax initialisation preset of every cell.
        results_dir: root folder; the run is written to <results_dir>/long_range/<run>/.
        run: name of the run's folder; default: the UTC time the run starts.
        overwrite: replace an existing run folder of the same name instead of refusing.
        seed_strategy: how lj.map_seeds runs the seeds: loop (one jitted program called per seed), vmap
            (all seeds in one vmapped program) or auto (loop on a CPU, vmap on an accelerator).
        progress: show a progress bar over the (task, T, cell) programs (only when stderr is a terminal).
    """

    tasks: tuple[str, ...] = ("adding",)
    cells: tuple[str, ...] = tuple(CELLS)
    lengths: tuple[int, ...] = (50, 100, 200)
    seeds: int = 3
    hidden_size: int = 32
    train_steps: int = 1500
    batch_size: int = 32
    test_size: int = 512
    learning_rate: float | None = None
    clip_norm: float = 1.0
    init: Literal["default", "pytorch", "flax", "keras"] = "default"
    results_dir: str = "results"
    run: str | None = None
    overwrite: bool = False
    seed_strategy: Literal["auto", "vmap", "loop"] = "auto"
    progress: bool = True

    def __post_init__(self):
        for name in ("tasks", "cells", "lengths"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("seeds", "hidden_size", "train_steps", "batch_size", "test_size"):
            check_int(name, getattr(self, name), 1)
        for name, known in (("tasks", TASKS), ("cells", tuple(CELLS))):
            values = getattr(self, name)
            if not values:
                raise ValueError(f"{name} must name at least one of {known}")
            for value in values:
                if value not in known:
                    raise ValueError(f"{name} must be among {known}, got {value!r}")
            if len(set(values)) != len(values):
                raise ValueError(f"{name} must not repeat, got {values}")
        if not self.lengths:
            raise ValueError("lengths must hold at least one sequence length")
        for length in self.lengths:
            check_int("every length", length, 2)
        if list(self.lengths) != sorted(set(self.lengths)):
            raise ValueError(f"lengths must be strictly increasing, got {self.lengths}")
        if "temporal_order" in self.tasks and self.lengths[0] < TEMPORAL_ORDER_MIN_LENGTH:
            raise ValueError(f"temporal_order needs every length >= {TEMPORAL_ORDER_MIN_LENGTH} (its relevant "
                             f"symbols sit at positions 10-20 and 50-60), got {self.lengths}; "
                             "pass e.g. --lengths 100")
        for name in ("learning_rate", "clip_norm"):
            value = getattr(self, name)
            if name == "learning_rate" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        check_seed_strategy(self.seed_strategy)
        if self.init not in lj.INIT_PRESETS:
            raise ValueError(f"init must be one of {lj.INIT_PRESETS}, got {self.init!r}")


# Tasks, models, losses ---------------------------------------------------------------------------

def baseline(task: str, length: int) -> float:
    """The memoryless value of `task`'s test metric at sequence length `length`."""
    if task == "adding":
        return lj.ADDING_BASELINE_MSE
    if task == "copy":
        return lj.copy_memory_baseline(length)
    if task == "temporal_order":
        return lj.TEMPORAL_ORDER_BASELINE_CROSS_ENTROPY
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def make_batch(task: str, key: jax.Array, batch_size: int, length: int):
    """A batch of `task` at sequence length `length` (jittable; sizes static)."""
    if task == "adding":
        return lj.adding_problem(key, batch_size, length)
    if task == "copy":
        return lj.copy_memory(key, batch_size, length)
    if task == "temporal_order":
        return lj.temporal_order(key, batch_size, min_length=length, max_length=length + length // 10)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def test_batch(task: str, length: int, size: int):
    """The fixed test batch of (task, T), shared by every cell and seed."""
    return make_batch(task, jax.random.fold_in(jax.random.PRNGKey(TEST_KEY), length), size, length)


def make_cell(name: str, hidden_size: int, init: str) -> lj.Cell:
    """The cell called `name` (a key of `CELLS`)."""
    if name == "rnn":
        return lj.rnn(hidden_size, activation="tanh", init=init)
    if name == "lstm":
        return lj.lstm(hidden_size, forget_bias=1.0, init=init)
    if name == "gru":
        return lj.gru(hidden_size, init=init)
    raise ValueError(f"cell must be one of {tuple(CELLS)}, got {name!r}")


def init_model(cell: lj.Cell, task: str, seed) -> dict:
    """`{"cell": params, "readout": (H, K) ~ N(0, 1/H), "bias": (K,) zeros}` from the first of the three
    keys split from `PRNGKey(seed)`; K = 1 (adding), 10 (copy), 4 (temporal_order)."""
    key_cell, key_readout = jax.random.split(jax.random.split(jax.random.PRNGKey(seed), 3)[0])
    k = OUTPUT_SIZES[task]
    return {"cell": cell.init(key_cell, INPUT_SIZES[task]),
            "readout": jax.random.normal(key_readout, (cell.hidden_size, k), jnp.float32) / math.sqrt(cell.hidden_size),
            "bias": jnp.zeros((k,), jnp.float32)}


def predict(cell: lj.Cell, task: str, model: dict, batch) -> jax.Array:
    """The readout: adding `(batch,)` from the last output; copy logits `(T + 20, batch, 10)` at every step;
    temporal_order logits `(batch, 4)` from the last real output of each sequence."""
    if task == "temporal_order":
        _, ys = lj.unroll(cell, model["cell"], batch.xs, lengths=batch.lengths)
        last = ys[batch.lengths - 1, jnp.arange(ys.shape[1])]
        return last @ model["readout"] + model["bias"]
    _, ys = lj.unroll(cell, model["cell"], batch.xs)
    if task == "adding":
        return ys[-1] @ model["readout"][:, 0] + model["bias"][0]
    return ys @ model["readout"] + model["bias"]


def evaluate(cell: lj.Cell, task: str, model: dict, batch) -> tuple[jax.Array, jax.Array]:
    """`(metric, accuracy)` of one model on one batch; the metric is the training loss (MSE or
    mean cross-entropy), the accuracy is NaN for adding and over the recall steps for copy."""
    out = predict(cell, task, model, batch)
    if task == "adding":
        return jnp.mean((out - batch.targets) ** 2), jnp.asarray(jnp.nan, jnp.float32)
    cross_entropy = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, batch.targets))
    correct = jnp.argmax(out, axis=-1) == batch.targets
    if task == "copy":
        correct = correct[-10:]
    return cross_entropy, jnp.mean(correct.astype(jnp.float32))


def learning_rate(config: LongRangeConfig, task: str) -> float:
    """Adam's learning rate for `task`: `config.learning_rate`, or `TASK_LEARNING_RATES[task]` when it is None."""
    return TASK_LEARNING_RATES[task] if config.learning_rate is None else config.learning_rate


def train(task: str, length: int, cell: lj.Cell, seeds: Sequence[int], config: LongRangeConfig) -> dict:
    """Trains one model per seed on `task` at sequence length `length`; one compiled program for all seeds.

    Seed `s`: the weights are `init_model(cell, task, s)`, the `TrainState` key and the key of
    the training batches are the second and third of `jax.random.split(PRNGKey(s), 3)`; step `k`
    trains on `make_batch(task, split(data_key, train_steps)[k], batch_size, length)`, unpadded
    (`lj.make_train_step` with `evaluate`'s metric as the loss; Adam at `learning_rate(config, task)`
    after `clip_by_global_norm(clip_norm)`); the steps run in `lax.scan`. The seeds go through
    `lj.map_seeds` (a loop over seeds on a CPU, `vmap` on an accelerator: the same numbers up to
    float rounding, which training can amplify).

    Returns:
        NumPy arrays with a leading seed axis `S = len(seeds)`: `params` (the trained models), `loss`
        and `grad_norm` `(S, train_steps)`, `test_metric_init`, `test_metric` and `test_accuracy`
        `(S,)` on `test_batch(task, length, test_size)` (the accuracy is NaN for adding).
    """
    optimizer = optax.chain(optax.clip_by_global_norm(config.clip_norm), optax.adam(learning_rate(config, task)))
    step = lj.make_train_step(lambda model, batch, key: evaluate(cell, task, model, batch)[0], optimizer)
    test = test_batch(task, length, config.test_size)

    def one_seed(seed: jax.Array) -> dict:
        model = init_model(cell, task, seed)
        _, state_key, data_key = jax.random.split(jax.random.PRNGKey(seed), 3)
        state = lj.init_train_state(model, optimizer, state_key)
        train_on = lambda state, key: step(state, make_batch(task, key, config.batch_size, length))  # noqa: E731
        state, metrics = lax.scan(train_on, state, jax.random.split(data_key, config.train_steps))
        test_metric, test_accuracy = evaluate(cell, task, state.params, test)
        return {"params": state.params, "loss": metrics.loss, "grad_norm": metrics.grad_norm,
                "test_metric_init": evaluate(cell, task, model, test)[0], "test_metric": test_metric,
                "test_accuracy": test_accuracy}

    return jax.device_get(lj.map_seeds(one_seed, jnp.asarray(seeds, jnp.int32), strategy=config.seed_strategy))


# The experiment ------------------------------------------------------------------------------

def run_experiment(config: LongRangeConfig, keep_params: bool = False) -> dict:
    """Trains every (task, T, cell) for all seeds; returns the contents of `metrics.json`.

    With `keep_params`, the trained parameters are returned too, under the key `"params"`
    (`params[task][str(T)][cell]`, stacked over seeds); they are not written to metrics.json.
    """
    seeds = list(range(config.seeds))
    show = config.progress and sys.stderr.isatty()
    runs, baselines, params = {}, {}, {}
    total = len(config.tasks) * len(config.lengths) * len(config.cells)
    with tqdm(total=total, unit="model set", desc="long range", disable=not show) as bar:
        for task in config.tasks:
            runs[task] = {str(t): {} for t in config.lengths}
            params[task] = {str(t): {} for t in config.lengths}
            baselines[task] = {str(t): baseline(task, t) for t in config.lengths}
            for length in config.lengths:
                for name in config.cells:
                    bar.set_postfix_str(f"{task}, T = {length}, {name}")
                    result = train(task, length, make_cell(name, config.hidden_size, config.init), seeds, config)
                    params[task][str(length)][name] = result.pop("params")
                    record = {key: np.asarray(value).tolist() for key, value in result.items()}
                    if task == "adding":
                        del record["test_accuracy"]
                    runs[task][str(length)][name] = record
                    bar.update()
    metrics = {
        "definitions": report.DEFINITIONS,
        "tasks": list(config.tasks),
        "cells": list(config.cells),
        "cell_descriptions": {name: CELLS[name] for name in config.cells},
        "lengths": list(config.lengths),
        "seeds": seeds,
        "hidden_size": config.hidden_size,
        "init": config.init,
        "train_steps": config.train_steps,
        "batch_size": config.batch_size,
        "test_size": config.test_size,
        "learning_rate": config.learning_rate,
        "learning_rates": {task: learning_rate(config, task) for task in config.tasks},
        "clip_norm": config.clip_norm,
        "seed_strategy": config.seed_strategy,
        "backend": jax.default_backend(),
        "metric_names": {task: METRIC_NAMES[task] for task in config.tasks},
        "beats_baseline_fraction": report.BEATS_BASELINE,
        "baselines": baselines,
        "runs": runs,
    }
    if keep_params:
        metrics["params"] = params
    return metrics


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
    """Runs the experiment from command-line arguments; returns the run's folder."""
    config = parse_config(LongRangeConfig, argv, prog="python -m experiments.long_range")
    run = record_run(config, NAME, run_experiment, report.summary)
    print(report.table(run.summary))
    plots = report.plot(run.run_dir)
    model_sets = len(run.summary["rows"])
    print(f"\nTrained {model_sets} (task, T, cell) model sets in {run.seconds:.1f} s, compilation included.")
    print(written_files_line(run.run_dir, plots))
    return run.run_dir


if __name__ == "__main__":
    main()
