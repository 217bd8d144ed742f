"""How gradients flow back through time: vanilla tanh RNN, LSTM (forget bias 0 and 1) and GRU.

    python -m experiments.vanishing_gradients          # about a minute on a 2-core CPU
    python -m experiments.vanishing_gradients --help

Every model is a cell, a linear readout of its last output and a bias, scored by the MSE of
that readout against the adding-problem target (Arjovsky et al.'s form, `lj.adding_problem`).

1. For each cell, seed and sequence length T, at initialisation and after a short Adam run on
   the adding problem at T = `train_length`, it measures ‖∂L/∂h_t‖ for every step with
   `lj.gradient_norms_over_time` (and ‖∂L/∂c_t‖ for the LSTM), averages the per-sequence
   norms over a fixed batch, and reduces the curve to the ratio first/last (the gradient
   reaching the state after step 0, relative to the last state), the fitted decay rate per
   step (`lj.fit_log_decay`) and the distance back at which it falls below 1% of its end
   value (`lj.distance_to_fraction`). For the LSTM it also records the forget-gate gain
   `∏ f_k` (`lj.forget_gate_gain`). Gradients are measured in float64, so ratios far below
   float32's range are still numbers; training is float32.
2. An exploding case: a linear RNN whose recurrent weight is 1.2 × an orthogonal matrix, so
   that ‖∂L/∂h_t‖ grows exactly like 1.2^d back in time, and its training with and without
   `optax.clip_by_global_norm(1.0)` before Adam, from the same initial weights and data.
   (With the default sizes a tanh RNN needs about 2 × orthogonal to explode, and then Adam
   copes without clipping; a ReLU RNN at 1.5 × orthogonal explodes for some seeds only.)
3. It writes `config.json`, `metrics.json` (every curve, per seed), `summary.json` (the table
   printed at the end) and PNG plots drawn from `metrics.json` alone (`plot(run_dir)`).

Each seed's training run (the Adam steps in `lax.scan`, then the test MSE) is one pure function
of the seed's initial model and keys, and `lj.map_seeds` runs it for every seed: one compiled
program per cell, one more per (cell, T) for the measurements. `--seed-strategy` chooses how:
`loop` calls the jitted program seed after seed, `vmap` runs all seeds in one vmapped program,
`auto` (the default) loops on a CPU and vmaps on an accelerator. Both give the same numbers up to
float rounding; on this project's 2-core CPU the loop is faster (experiments/README.md).

Seed `s` splits `PRNGKey(s)` in three: the weights (`init_model`), the `TrainState` key and its
training batches. The measuring batch at each T and the test batch are fixed (`MEASURE_KEY`,
`TEST_KEY`) and shared by every cell and seed. Layout of `metrics.json` (lists are per seed;
`metrics["definitions"]` explains each quantity):

    init, hidden_size, cells, cell_descriptions, seeds, lengths, batch_size, baseline_mse,
    train_length, train_steps, learning_rate, seed_strategy, backend (jax.default_backend())
    gradients[cell][str(T)]["init" | "trained"]:
        grad_h_norm [seed][t], ratio_first_last [seed], decay_rate [seed], distance_to_1pct [seed]
        LSTM also: grad_c_norm [seed][t], forget_gate_gain [seed][0..T], forget_gain_step0_to_T [seed]
    training[cell]: loss [seed][step], grad_norm [seed][step], test_mse_init [seed], test_mse [seed]
    exploding: activation, scale, clip_norm, length, gradients (as above, at init, T = length),
        runs["no_clip" | "clip"]: loss, grad_norm, finite [seed][step], test_mse_init, test_mse [seed]
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from tqdm import tqdm

import lstmjax as lj
from experiments import _vanishing_gradients_report as report
from experiments._config_checks import check_int, check_seed_strategy
from experiments._config_cli import parse_config
from experiments._results import record_run, written_files_line
from experiments._vanishing_gradients_report import plot

NAME = "vanishing_gradients"

CELLS = {
    "rnn_tanh": "vanilla RNN, tanh",
    "lstm_forget0": "LSTM, forget bias 0",
    "lstm_forget1": "LSTM, forget bias 1",
    "gru": "GRU",
}
"""The cells this experiment knows: name -> description used in tables and plots."""

MEASURE_KEY = 10_000
"""The measuring batch at length T is `adding_problem(fold_in(PRNGKey(MEASURE_KEY), T), ...)`,
the same for every cell, seed and phase."""

TEST_KEY = 20_000
"""The test batch (at `train_length`) is drawn from `PRNGKey(TEST_KEY)`."""

FRACTION = 0.01
"""`distance_to_1pct` is `lj.distance_to_fraction(norms, FRACTION)`."""


@dataclasses.dataclass(frozen=True)
class VanishingGradientsConfig:
    """Gradient flow back through time in a tanh RNN, LSTMs with forget bias 0 and 1, and a GRU.

    Attributes:
        cells: cells to compare, any of rnn_tanh, lstm_forget0, lstm_forget1, gru.
        hidden_size: units per cell.
        seeds: number of seeds (0, 1, ..., seeds-1); each draws its own weights and training data.
        lengths: sequence lengths T at which gradients are measured.
        batch_size: sequences in the measuring batch; per-sequence gradient norms are averaged over it.
        train_steps: Adam steps of the short training run on the adding problem.
        train_length: T of the adding problem used for training and for the test MSE.
        train_batch_size: sequences per training step (a fresh batch every step).
        test_size: sequences in the test batch of the final MSE.
        learning_rate: Adam's learning rate, for every cell and the exploding RNN.
        init: lstmjax initialisation preset of every cell (recurrent weights, input weights, biases);
            the LSTMs' forget bias is then set to 0 or 1.
        exploding_activation: activation of the exploding vanilla RNN.
        exploding_scale: its recurrent weight is this times an orthogonal matrix.
        clip_norm: max global gradient norm of the clipped run (optax.clip_by_global_norm).
        results_dir: root folder; the run is written to <results_dir>/vanishing_gradients/<run>/.
        run: name of the run's folder; default: the UTC time the run starts.
        overwrite: replace an existing run folder of the same name instead of refusing.
        seed_strategy: how lj.map_seeds runs the seeds: loop (one jitted program called per seed), vmap
            (all seeds in one vmapped program) or auto (loop on a CPU, vmap on an accelerator).
        progress: show a progress bar over the work items (only when stderr is a terminal).
    """

    cells: tuple[str, ...] = tuple(CELLS)
    hidden_size: int = 32
    seeds: int = 3
    lengths: tuple[int, ...] = (25, 50, 100, 200)
    batch_size: int = 64
    train_steps: int = 300
    train_length: int = 50
    train_batch_size: int = 64
    test_size: int = 1000
    learning_rate: float = 0.01
    init: Literal["default", "pytorch", "flax", "keras"] = "default"
    exploding_activation: Literal["tanh", "relu", "linear"] = "linear"
    exploding_scale: float = 1.2
    clip_norm: float = 1.0
    results_dir: str = "results"
    run: str | None = None
    overwrite: bool = False
    seed_strategy: Literal["auto", "vmap", "loop"] = "auto"
    progress: bool = True

    def __post_init__(self):
        object.__setattr__(self, "cells", tuple(self.cells))
        object.__setattr__(self, "lengths", tuple(self.lengths))
        for name in ("hidden_size", "seeds", "batch_size", "train_steps", "train_batch_size", "test_size"):
            check_int(name, getattr(self, name), 1)
        check_int("train_length", self.train_length, 2)
        if not self.cells:
            raise ValueError("cells must name at least one cell")
        for cell in self.cells:
            if cell not in CELLS:
                raise ValueError(f"cells must be among {tuple(CELLS)}, got {cell!r}")
        if len(set(self.cells)) != len(self.cells):
            raise ValueError(f"cells must not repeat, got {self.cells}")
        if not self.lengths:
            raise ValueError("lengths must hold at least one sequence length")
        for length in self.lengths:
            check_int("every length", length, 2)
        if list(self.lengths) != sorted(set(self.lengths)):
            raise ValueError(f"lengths must be strictly increasing, got {self.lengths}")
        for name in ("learning_rate", "exploding_scale", "clip_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if self.init not in lj.INIT_PRESETS:
            raise ValueError(f"init must be one of {lj.INIT_PRESETS}, got {self.init!r}")
        if self.exploding_activation not in ("tanh", "relu", "linear"):
            raise ValueError(f"exploding_activation must be tanh, relu or linear, got {self.exploding_activation!r}")
        check_seed_strategy(self.seed_strategy)


# The model, its loss and the measurements --------------------------------------------------------

def make_cell(name: str, hidden_size: int, init: str) -> lj.Cell:
    """The cell called `name` (a key of `CELLS`)."""
    if name == "rnn_tanh":
        return lj.rnn(hidden_size, activation="tanh", init=init)
    if name == "lstm_forget0":
        return lj.lstm(hidden_size, forget_bias=0.0, init=init)
    if name == "lstm_forget1":
        return lj.lstm(hidden_size, forget_bias=1.0, init=init)
    if name == "gru":
        return lj.gru(hidden_size, init=init)
    raise ValueError(f"cell must be one of {tuple(CELLS)}, got {name!r}")


def init_model(cell: lj.Cell, seed: int) -> dict:
    """`{"cell": params, "readout": (H,) ~ N(0, 1/H), "bias": 0}` for input size 2, from the first of
    the three keys split from `PRNGKey(seed)`."""
    key_cell, key_readout = jax.random.split(jax.random.split(jax.random.PRNGKey(seed), 3)[0])
    return {"cell": cell.init(key_cell, 2),
            "readout": jax.random.normal(key_readout, (cell.hidden_size,), jnp.float32) / math.sqrt(cell.hidden_size),
            "bias": jnp.zeros((), jnp.float32)}


def exploding_model(cell: lj.Cell, seed: int, scale: float) -> dict:
    """`init_model`, with the recurrent weight replaced by `scale` × a random orthogonal matrix."""
    model = init_model(cell, seed)
    key = jax.random.fold_in(jax.random.split(jax.random.PRNGKey(seed), 3)[0], 1)
    w_h = scale * jax.nn.initializers.orthogonal()(key, (cell.hidden_size, cell.hidden_size), jnp.float32)
    return {**model, "cell": model["cell"]._replace(w_h=w_h)}


def readout_mse(model: dict, ys: jax.Array, targets: jax.Array) -> jax.Array:
    """The loss `L`: mean squared error of the readout `w·y_{T-1} + b` of the last output against `targets`.

    Args:
        model: `{"readout": (H,), "bias": ()}` (and the cell's params, unused here).
        ys: the cell's outputs, shape `(T, batch, H)`.
        targets: shape `(batch,)`.
    """
    return jnp.mean((ys[-1] @ model["readout"] + model["bias"] - targets) ** 2)


def mse(cell: lj.Cell, model: dict, batch: lj.Batch) -> jax.Array:
    """`readout_mse` of the model on a batch."""
    _, ys = lj.unroll(cell, model["cell"], batch.xs)
    return readout_mse(model, ys, batch.targets)


def measuring_batch(length: int, batch_size: int) -> lj.Batch:
    """The fixed adding-problem batch on which gradients are measured at length `length` (float32;
    drawn under `jax.enable_x64` it would differ)."""
    return lj.adding_problem(jax.random.fold_in(jax.random.PRNGKey(MEASURE_KEY), length), batch_size, length)


def measure(cell: lj.Cell, model: dict, batch: lj.Batch) -> dict[str, jax.Array]:
    """Gradient flow back through time for one model on one batch; jittable and vmappable.

    Returns:
        `grad_h_norm` `(T,)`: ‖∂L/∂h_t‖ averaged over the batch, where entry `t` belongs to the
        state after reading `xs[t]` (so entry `T-1` is the last state, distance `d = T-1-t`);
        `ratio_first_last`, `decay_rate` and `distance_to_1pct` of that curve; for the LSTM also
        `grad_c_norm` `(T,)`, `forget_gate_gain` `(T+1,)`, the mean over batch and units of
        `∏_{k=t}^{T-1} f_k`, and `forget_gain_step0_to_T`, its entry 0.
    """
    def loss_of_outputs(ys):
        return readout_mse(model, ys, batch.targets)

    norms = lj.gradient_norms_over_time(cell, model["cell"], batch.xs, loss_of_outputs).state
    is_lstm = isinstance(norms, lj.LSTMState)
    grad_h = jnp.mean(norms.h if is_lstm else norms, axis=1)
    out = {"grad_h_norm": grad_h, "ratio_first_last": grad_h[0] / grad_h[-1],
           "decay_rate": lj.fit_log_decay(grad_h).rate, "distance_to_1pct": lj.distance_to_fraction(grad_h, FRACTION)}
    if is_lstm:
        _, _, internals = lj.unroll_with_internals(cell, model["cell"], batch.xs)
        gain = jnp.mean(lj.forget_gate_gain(internals.f), axis=(1, 2))
        out.update(grad_c_norm=jnp.mean(norms.c, axis=1), forget_gate_gain=gain, forget_gain_step0_to_T=gain[0])
    return out


def train(cell: lj.Cell, models: dict, seeds: Sequence[int], optimizer: optax.GradientTransformation,
          config: VanishingGradientsConfig) -> tuple[dict, lj.StepMetrics, jax.Array, jax.Array]:
    """Trains stacked models (leading axis: seeds) on the adding problem, one seed per call of one
    compiled program (or all in one vmapped program: `config.seed_strategy`, see `lj.map_seeds`).

    Seed `s` draws its training batches from its own key. Returns `(trained models, metrics with
    leaves (seeds, train_steps), test MSE at init (seeds,), test MSE after training (seeds,))`.
    """
    keys = jnp.stack([jax.random.split(jax.random.PRNGKey(s), 3)[1:] for s in seeds])  # (S, 2, key)
    step = lj.make_train_step(lambda model, batch, key: mse(cell, model, batch), optimizer)
    test = lj.adding_problem(jax.random.PRNGKey(TEST_KEY), config.test_size, config.train_length)

    def train_one(row: tuple[dict, jax.Array]) -> tuple[dict, lj.StepMetrics, jax.Array, jax.Array]:
        model, (state_key, data_key) = row

        def body(state, step_key):
            return step(state, lj.adding_problem(step_key, config.train_batch_size, config.train_length))

        state = lj.init_train_state(model, optimizer, state_key)
        state, metrics = lax.scan(body, state, jax.random.split(data_key, config.train_steps))
        return state.params, metrics, mse(cell, model, test), mse(cell, state.params, test)

    return lj.map_seeds(train_one, (models, keys), config.seed_strategy)


def init_models(cell: lj.Cell, seeds: Sequence[int], scale: float | None = None) -> dict:
    """`init_model` (or `exploding_model` with `scale`) for every seed, stacked along a leading axis."""
    if scale is None:
        return jax.jit(jax.vmap(lambda seed: init_model(cell, seed)))(jnp.asarray(seeds))
    return jax.jit(jax.vmap(lambda seed: exploding_model(cell, seed, scale)))(jnp.asarray(seeds))


def measuring_program(cell: lj.Cell, strategy: str = "auto") -> Callable[[tuple, lj.Batch], dict[str, np.ndarray]]:
    """`measure_models(model_sets, batch)`: `measure` for every model of the stacked float32 model sets
    (concatenated along their leading axis), in float64, as NumPy arrays with that leading axis.

    The weights and the batch are widened to float64 (under `jax.enable_x64`), and `lj.map_seeds`
    runs `measure` for every model with `strategy`; it compiles once per sequence length.
    """
    def measure_models(model_sets: tuple, batch: lj.Batch) -> dict[str, np.ndarray]:
        with jax.enable_x64(True):
            models = jax.tree_util.tree_map(lambda *leaves: jnp.concatenate(leaves).astype(jnp.float64), *model_sets)
            batch64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), batch)
            return jax.device_get(lj.map_seeds(lambda model: measure(cell, model, batch64), models, strategy))

    return measure_models


def _lists(tree) -> dict:
    return {key: np.asarray(value).tolist() for key, value in tree.items()}


def _training_record(metrics: lj.StepMetrics, mse_init: jax.Array, mse_trained: jax.Array) -> dict:
    return {"loss": np.asarray(metrics.loss).tolist(), "grad_norm": np.asarray(metrics.grad_norm).tolist(),
            "test_mse_init": np.asarray(mse_init).tolist(), "test_mse": np.asarray(mse_trained).tolist()}


# The experiment ------------------------------------------------------------------------------

def run_experiment(config: VanishingGradientsConfig) -> dict:
    """Trains and measures every cell and the exploding RNN; returns the contents of `metrics.json`."""
    seeds = list(range(config.seeds))
    show = config.progress and sys.stderr.isatty()
    gradients, training = {}, {}
    total = len(config.cells) * (1 + len(config.lengths)) + 1
    with tqdm(total=total, unit="item", desc="vanishing gradients", disable=not show) as bar:
        for name in config.cells:
            bar.set_postfix_str(f"{name}: training")
            cell = make_cell(name, config.hidden_size, config.init)
            initial = init_models(cell, seeds)
            trained, metrics, mse_init, mse_trained = train(cell, initial, seeds, optax.adam(config.learning_rate),
                                                            config)
            training[name] = _training_record(metrics, mse_init, mse_trained)
            bar.update()
            measure_models = measuring_program(cell, config.seed_strategy)
            gradients[name] = {}
            for length in config.lengths:
                bar.set_postfix_str(f"{name}: measuring T={length}")
                measured = measure_models((initial, trained), measuring_batch(length, config.batch_size))
                count = len(seeds)
                gradients[name][str(length)] = {"init": _lists({k: v[:count] for k, v in measured.items()}),
                                                "trained": _lists({k: v[count:] for k, v in measured.items()})}
                bar.update()
        bar.set_postfix_str("exploding RNN")
        exploding = run_exploding(config, seeds)
        bar.update()
    return {
        "definitions": report.DEFINITIONS,
        "init": config.init,
        "hidden_size": config.hidden_size,
        "cells": list(config.cells),
        "cell_descriptions": {name: CELLS[name] for name in config.cells},
        "seeds": seeds,
        "lengths": list(config.lengths),
        "batch_size": config.batch_size,
        "baseline_mse": lj.ADDING_BASELINE_MSE,
        "train_length": config.train_length,
        "train_steps": config.train_steps,
        "learning_rate": config.learning_rate,
        "seed_strategy": config.seed_strategy,
        "backend": jax.default_backend(),
        "gradients": gradients,
        "training": training,
        "exploding": exploding,
    }


def run_exploding(config: VanishingGradientsConfig, seeds: Sequence[int]) -> dict:
    """The exploding RNN: its gradients at init (length `train_length`) and training with and without clipping."""
    cell = lj.rnn(config.hidden_size, activation=config.exploding_activation, init=config.init)
    initial = init_models(cell, seeds, scale=config.exploding_scale)
    measure_models = measuring_program(cell, config.seed_strategy)
    measured = _lists(measure_models((initial,), measuring_batch(config.train_length, config.batch_size)))
    adam = optax.adam(config.learning_rate)
    runs = {}
    for run, optimizer in (("no_clip", adam), ("clip", optax.chain(optax.clip_by_global_norm(config.clip_norm), adam))):
        _, metrics, mse_init, mse_trained = train(cell, initial, seeds, optimizer, config)
        runs[run] = {**_training_record(metrics, mse_init, mse_trained), "finite": np.asarray(metrics.finite).tolist()}
    return {"activation": config.exploding_activation, "scale": config.exploding_scale, "clip_norm": config.clip_norm,
            "length": config.train_length, "gradients": measured, "runs": runs}


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
    """Runs the experiment from command-line arguments; returns the run's folder."""
    config = parse_config(VanishingGradientsConfig, argv, prog="python -m experiments.vanishing_gradients")
    run = record_run(config, NAME, run_experiment, report.summary)
    print(report.gradient_table(run.summary))
    print()
    print(report.training_table(run.summary))
    print()
    print(report.exploding_lines(run.summary))
    plots = plot(run.run_dir)
    print(f"\nMeasured and trained in {run.seconds:.1f} s, compilation included.")
    print(written_files_line(run.run_dir, plots))
    return run.run_dir


if __name__ == "__main__":
    main()
