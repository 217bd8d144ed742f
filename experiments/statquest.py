"""The LSTM unit of the StatQuest video, day by day, and retrained from the video's seed-42 weights.

    python -m experiments.statquest            # 5000 epochs, results/statquest/<UTC time>/
    python -m experiments.statquest --help

1. With the video's weights (DESIGN.md §6) the unit reads Company A = [0, 0.5, 0.25, 1] and
   Company B = [1, 0.5, 0.25, 1]; for each day it prints the forget, input and output gates
   (as %), the candidate (potential long-term memory) and both memories, then the day-5
   prediction (the last short-term memory) against the target (A: 0, B: 1).
2. It trains the same unit from the weights the video started from (`torch.manual_seed(42);
   torch.randn(8)`, biases 0): squared error of the day-4 output against the day-5 target,
   Adam, one sequence per step, A then B, and prints the learned weights beside the video's.
3. It writes `config.json`, `metrics.json` (every day's internals with both sets of weights,
   the loss per epoch), `summary.json` and PNG plots drawn from `metrics.json` alone (`plot`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import sys
import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from tqdm import tqdm

import lstmjax as lj
from experiments import _statquest_report as report
from experiments._config_cli import parse_config
from experiments._results import make_run_dir, write_json_atomic
from experiments._statquest_report import plot

NAME = "statquest"

GATES = ("forget", "input", "candidate", "output")
"""The video's order of the gates, also the order of the seed-42 draws."""

GATE_BLOCK = {"input": 0, "forget": 1, "candidate": 2, "output": 3}
"""Each gate's block in lstmjax's fused layout, gate order (i, f, g, o)."""

VIDEO_WEIGHTS = {
    "forget": (2.70, 1.63, 1.62),
    "input": (2.00, 1.65, 0.62),
    "candidate": (1.41, 0.94, -0.32),
    "output": (4.38, -0.19, 0.59),
}
"""The video's trained weights: gate -> (weight on short-term memory h, weight on input x, bias)."""

SEED_42_WEIGHTS = (
    0.33669036626815796, 0.12880940735340118,    # forget: weight on h, weight on x
    0.23446236550807953, 0.23033303022384644,    # input
    -1.1228563785552979, -0.18632829189300537,   # candidate
    2.2082014083862305, -0.637997031211853,      # output
)
"""`torch.manual_seed(42); torch.randn(8)`: the video's initial weights, in (h, x) pairs per gate."""

COMPANIES = {"A": ((0.0, 0.5, 0.25, 1.0), 0.0), "B": ((1.0, 0.5, 0.25, 1.0), 1.0)}
"""Company -> (stock values for days 1-4 scaled to [0, 1], the day-5 target)."""

UNIT = lj.lstm(hidden_size=1)


@dataclasses.dataclass(frozen=True)
class StatQuestConfig:
    """The StatQuest LSTM unit: its day-by-day internals, then its training from seed 42.

    Attributes:
        epochs: passes over the two companies; each pass takes one Adam step on A, then one on B.
        learning_rate: Adam's learning rate (the video used PyTorch's default, 0.001).
        initial_weights: the 8 initial weights, (weight on h, weight on x) for the forget, input,
            candidate and output gates; biases start at 0. The default is the video's:
            torch.manual_seed(42); torch.randn(8).
        results_dir: root folder; the run is written to <results_dir>/statquest/<run>/.
        run: name of the run's folder; default: the UTC time the run starts.
        overwrite: replace an existing run folder of the same name instead of refusing.
        progress: show a progress bar while training (only when stderr is a terminal).
        epochs_per_chunk: epochs run by one compiled lax.scan; the progress bar moves once per chunk.
        loss_curve_points: most epochs of the loss curve kept in metrics.json (evenly spaced,
            first and last included).
    """

    epochs: int = 5000
    learning_rate: float = 0.001
    initial_weights: tuple[float, ...] = SEED_42_WEIGHTS
    results_dir: str = "results"
    run: str | None = None
    overwrite: bool = False
    progress: bool = True
    epochs_per_chunk: int = 100
    loss_curve_points: int = 1000

    def __post_init__(self):
        object.__setattr__(self, "initial_weights", tuple(float(w) for w in self.initial_weights))
        for name in ("epochs", "epochs_per_chunk", "loss_curve_points"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a positive finite number, got {self.learning_rate!r}")
        if len(self.initial_weights) != 8 or not all(math.isfinite(w) for w in self.initial_weights):
            raise ValueError(f"initial_weights must be 8 finite numbers, got {self.initial_weights!r}")


def params_from_table(table: Mapping[str, Sequence[float]]) -> lj.LSTMParams:
    """`lj.LSTMParams` of the one-unit LSTM from `{gate: (weight on h, weight on x, bias)}`."""
    order = sorted(GATES, key=GATE_BLOCK.get)
    return lj.LSTMParams(w_x=jnp.array([[table[gate][1] for gate in order]], jnp.float32),
                         w_h=jnp.array([[table[gate][0] for gate in order]], jnp.float32),
                         b=jnp.array([table[gate][2] for gate in order], jnp.float32))


def table_from_params(params: lj.LSTMParams) -> dict[str, tuple[float, float, float]]:
    """`{gate: (weight on h, weight on x, bias)}` of a one-unit `lj.LSTMParams`."""
    return {gate: (float(params.w_h[0, GATE_BLOCK[gate]]), float(params.w_x[0, GATE_BLOCK[gate]]),
                   float(params.b[GATE_BLOCK[gate]])) for gate in GATES}


def initial_table(weights: Sequence[float]) -> dict[str, tuple[float, float, float]]:
    """The table of 8 weights in (h, x) pairs in the video's gate order, with zero biases."""
    return {gate: (weights[2 * n], weights[2 * n + 1], 0.0) for n, gate in enumerate(GATES)}


def day_by_day(params: lj.LSTMParams) -> dict[str, dict[str, list[float]]]:
    """Each company's internals after each day, memories starting at 0.

    Returns:
        `{company: {"x", "forget_gate", "input_gate", "candidate", "output_gate",
        "long_term_memory", "short_term_memory": [day 1, ..., day 4]}}`; gates as fractions.
    """
    days = {}
    for company, (inputs, _) in COMPANIES.items():
        xs = jnp.array(inputs, jnp.float32)[:, None]  # (T=4, input_size=1)
        _, _, internals = lj.unroll_with_internals(UNIT, params, xs)
        columns = {"x": xs, "forget_gate": internals.f, "input_gate": internals.i,
                   "candidate": internals.g, "output_gate": internals.o,
                   "long_term_memory": internals.c, "short_term_memory": internals.h}
        days[company] = {key: np.asarray(value)[:, 0].tolist() for key, value in columns.items()}
    return days


def squared_error(params: lj.LSTMParams, xs: jax.Array, target: jax.Array) -> jax.Array:
    """`(h_4 - target)²`: the day-4 output (the prediction for day 5) against the target."""
    _, ys = lj.unroll(UNIT, params, xs)
    return (ys[-1, 0] - target) ** 2


@functools.cache
def _chunk_runner(learning_rate: float):
    """A jitted `(carry, epochs) -> (carry, losses (epochs, 2))` running whole epochs in `lax.scan`."""
    optimizer = optax.adam(learning_rate)
    inputs = jnp.array([inputs for inputs, _ in COMPANIES.values()], jnp.float32)[:, :, None]
    targets = jnp.array([target for _, target in COMPANIES.values()], jnp.float32)

    def one_sequence(carry, example):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(squared_error)(params, *example)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    def one_epoch(carry, _):
        return lax.scan(one_sequence, carry, (inputs, targets))  # A, then B

    @functools.partial(jax.jit, static_argnums=1)
    def run_chunk(carry, epochs):
        return lax.scan(one_epoch, carry, None, length=epochs)

    return optimizer, run_chunk


def train(params: lj.LSTMParams, config: StatQuestConfig) -> tuple[lj.LSTMParams, np.ndarray]:
    """Adam on one sequence per step, A then B, for `config.epochs` epochs.

    Returns:
        `(learned_params, losses)`, `losses` of shape `(epochs, 2)`: each company's squared
        error in each epoch, measured just before the Adam step on that company.
    """
    optimizer, run_chunk = _chunk_runner(config.learning_rate)
    carry = (params, optimizer.init(params))
    losses = []
    show = config.progress and sys.stderr.isatty()
    with tqdm(total=config.epochs, unit="epoch", desc="training", disable=not show) as bar:
        for start in range(0, config.epochs, config.epochs_per_chunk):
            epochs = min(config.epochs_per_chunk, config.epochs - start)
            carry, chunk_losses = run_chunk(carry, epochs)
            losses.append(np.asarray(chunk_losses))  # waits for the chunk, so the bar is honest
            bar.update(epochs)
    return carry[0], np.concatenate(losses)


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
    """Runs the experiment from command-line arguments; returns the run's folder."""
    config = parse_config(StatQuestConfig, argv, prog="python -m experiments.statquest")
    run_dir = make_run_dir(config.results_dir, NAME, config.run, config.overwrite)
    config = dataclasses.replace(config, run=run_dir.name)
    write_json_atomic(run_dir / "config.json", dataclasses.asdict(config))

    video_days = day_by_day(params_from_table(VIDEO_WEIGHTS))
    for company, (_, target) in COMPANIES.items():
        print(report.day_table(f"Company {company}, the video's weights", video_days[company], target))
        print()

    initial = initial_table(config.initial_weights)
    start = time.perf_counter()
    learned_params, losses = train(params_from_table(initial), config)
    train_seconds = time.perf_counter() - start
    learned = table_from_params(learned_params)
    learned_days = day_by_day(learned_params)

    keep = np.unique(np.linspace(0, config.epochs - 1, min(config.loss_curve_points, config.epochs)).round())
    keep = keep.astype(int)
    metrics = {
        "days": [1, 2, 3, 4],
        "targets": {company: target for company, (_, target) in COMPANIES.items()},
        "internals": {"video": video_days, "learned": learned_days},
        "training": {
            "loss_definition": "per epoch: each company's squared error (h_4 - target)^2, measured "
                               "just before the Adam step on that company; loss = A + B",
            "epoch": (keep + 1).tolist(),
            "loss": losses.sum(axis=1)[keep].tolist(),
            "loss_A": losses[keep, 0].tolist(),
            "loss_B": losses[keep, 1].tolist(),
        },
    }
    write_json_atomic(run_dir / "metrics.json", metrics)
    summary = report.summary(learned, VIDEO_WEIGHTS, initial, learned_days, video_days, metrics["targets"])
    summary.update(epochs=config.epochs, adam_steps=2 * config.epochs, final_epoch_loss=float(losses[-1].sum()),
                   train_seconds_including_compilation=round(train_seconds, 3))
    write_json_atomic(run_dir / "summary.json", summary)

    print(report.weights_table(learned, VIDEO_WEIGHTS, config.epochs))
    print(report.closeness(summary))
    print()
    print(report.predictions(summary))
    print(f"\nTrained {config.epochs} epochs ({2 * config.epochs} Adam steps) in {train_seconds:.2f} s, "
          "compilation included.")
    plots = plot(run_dir)
    print(f"Wrote {run_dir}/: config.json, metrics.json, summary.json, {', '.join(p.name for p in plots)}")
    return run_dir


if __name__ == "__main__":
    main()
