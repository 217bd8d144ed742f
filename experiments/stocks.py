"""Next month's stock price: an LSTM and a tanh RNN against the last-value baseline, on real prices.

    python -m experiments.stocks            # about a minute on a 2-core CPU
    python -m experiments.stocks --help

The data are the monthly closing prices of MSFT, AMZN, IBM, GOOG and AAPL that ship inside
`vega_datasets` (`lj.load_stock_prices`, January 2000 to March 2010; GOOG from August 2004, so
68 months instead of 123). Every symbol is its own task, with its own splits and normaliser:

1. The series is cut chronologically into train / validation / test months
   (`lj.chronological_split`, 70/15/15 by default) and a `lj.Normalizer` is fitted on the
   training months only.
2. Every window of `window` consecutive normalised months (`lj.make_windows` over the whole
   series) is an input, the month after it its target; a window belongs to the part that holds
   its *target* month. So every test month is predicted once, from the `window` months before it
   (which may lie in the validation part: the past is known when the forecast is made), and no
   training window sees a validation or test month. (`lj.forecasting_task` windows each part on
   its own instead; with 12-month windows that leaves 7 test predictions of the long series
   and none of GOOG's 10 validation months.)
3. A model is a cell (LSTM with forget bias 1, or tanh RNN), a linear readout of its last output
   and a bias, trained full-batch with Adam on the MSE of the normalised price. By default
   (`residual`) the output is the window's last price plus the readout, so the model learns the
   change; with `--no-residual` it predicts the price itself, and since test prices lie far
   outside the training months' range (AAPL: $7-$92 in training, $85-$223 in test) it fails.
   A seed's training run (the steps in `lax.scan`) is one pure function of the seed and the
   symbol's windows, and `lj.map_seeds` runs it for every seed: one compiled program per model and
   series length. `--seed-strategy` chooses how: `loop` calls it seed after seed, `vmap` runs all
   seeds in one vmapped program, `auto` (the default) loops on a CPU and vmaps on an accelerator
   (the same numbers up to float rounding; on this project's 2-core CPU the loop is faster,
   experiments/README.md). Early stopping by selection:
   after every step the validation MSE is computed, and the parameters with the lowest one
   (step 0, the initial ones, included) are the ones tested.
4. The baseline predicts the last price of the window (last month's price): no parameters.
5. Test errors are RMSE and MAE in dollars, after `normalizer.inverse`.

It writes `config.json`, `metrics.json` (series, splits, every seed's test predictions and
curves), `summary.json` (the printed table) and `predictions.png`, drawn from `metrics.json`
alone (`experiments._stocks_report.plot(run_dir)`).

Seed `s` splits `PRNGKey(s)` in two: the model's weights and its `TrainState` key (unused:
training is full-batch and deterministic). Layout of `metrics.json`:

    symbols, models, model_descriptions, seeds, window, fractions, hidden_size, steps,
    learning_rate, normalization, residual, seed_strategy, backend (jax.default_backend()), definitions
    series[symbol]: dates ["YYYY-MM"], prices, train_months, validation_months, test_months,
        normalizer {shift, scale}, test_dates, test_actual,
        baseline {test_predictions, test_rmse, test_mae, validation_rmse},
        models[model]: test_predictions [seed][month], test_rmse [seed], test_mae [seed],
            validation_rmse [seed], best_step [seed], train_loss [seed][step], validation_loss [seed][step+1]
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
from experiments import _stocks_report as report
from experiments._config_checks import check_seed_strategy
from experiments._config_cli import parse_config
from experiments._results import record_run, written_files_line
from lstmjax._seeds import resolve_strategy

NAME = "stocks"

MODELS = {"lstm": "LSTM (forget bias 1)", "rnn_tanh": "vanilla RNN, tanh"}
"""The models this experiment knows: name -> description used in tables and plots."""


@dataclasses.dataclass(frozen=True)
class StocksConfig:
    """Forecast next month's stock price with an LSTM and a tanh RNN, against the last-value baseline.

    Attributes:
        symbols: stock symbols, any of MSFT, AMZN, IBM, GOOG, AAPL; each is its own task.
        models: models to train, any of lstm, rnn_tanh.
        window: months of history in every input window.
        fractions: train, validation and test fractions of each series, cut chronologically.
        hidden_size: units of each cell.
        seeds: number of seeds (0, 1, ..., seeds-1) per symbol and model.
        steps: full-batch Adam steps; the parameters with the lowest validation MSE are kept.
        learning_rate: Adam's learning rate.
        normalization: lj.Normalizer method, fitted on each series' training months.
        residual: predict the change from the window's last price (output = last price + readout)
            instead of the price itself (--no-residual).
        results_dir: root folder; the run is written to <results_dir>/stocks/<run>/.
        run: name of the run's folder; default: the UTC time the run starts.
        overwrite: replace an existing run folder of the same name instead of refusing.
        seed_strategy: how lj.map_seeds runs the seeds: loop (one jitted program called per seed), vmap
            (all seeds in one vmapped program) or auto (loop on a CPU, vmap on an accelerator).
        progress: show a progress bar over (symbol, model) pairs (only when stderr is a terminal).
    """

    symbols: tuple[str, ...] = lj.STOCK_SYMBOLS
    models: tuple[str, ...] = tuple(MODELS)
    window: int = 12
    fractions: tuple[float, ...] = (0.7, 0.15, 0.15)
    hidden_size: int = 16
    seeds: int = 3
    steps: int = 500
    learning_rate: float = 0.01
    normalization: Literal["standard", "minmax"] = "standard"
    residual: bool = True
    results_dir: str = "results"
    run: str | None = None
    overwrite: bool = False
    seed_strategy: Literal["auto", "vmap", "loop"] = "auto"
    progress: bool = True

    def __post_init__(self):
        object.__setattr__(self, "symbols", tuple(self.symbols))
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        for name in ("window", "hidden_size", "seeds", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for field, known in (("symbols", lj.STOCK_SYMBOLS), ("models", tuple(MODELS))):
            values = getattr(self, field)
            if not values or any(v not in known for v in values) or len(set(values)) != len(values):
                raise ValueError(f"{field} must be distinct names from {known}, got {values}")
        if len(self.fractions) != 3 or min(self.fractions) <= 0 or abs(sum(self.fractions) - 1) > 1e-6:
            raise ValueError(f"fractions must be three positive numbers summing to 1, got {self.fractions}")
        lr = self.learning_rate
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"learning_rate must be a positive finite number, got {lr!r}")
        if self.normalization not in ("standard", "minmax"):
            raise ValueError(f"normalization must be standard or minmax, got {self.normalization!r}")
        check_seed_strategy(self.seed_strategy)


# Data ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Windows:
    """One symbol's windows, split by the part their target month lies in (normalised), and its normaliser."""

    train: lj.Batch
    validation: lj.Batch
    test: lj.Batch
    normalizer: lj.Normalizer
    months: tuple[int, int, int]
    """Months in the train, validation and test parts."""


def make_task(series: lj.TimeSeries, window: int, fractions: Sequence[float], method: str) -> Windows:
    """Splits `series` chronologically, fits the normaliser on the training months, windows the whole
    normalised series and gives each window to the part of its target month (see the module docstring)."""
    train, validation, test = lj.chronological_split(series, fractions)
    months = (len(train.dates), len(validation.dates), len(test.dates))
    if months[0] <= window:
        raise ValueError(f"{series.names[0]}: {months[0]} training months leave no {window}-month window "
                         "with a training target; use a shorter --window")
    normalizer = lj.Normalizer.fit(train, method)
    windows = lj.make_windows(normalizer.transform(series.values), window)  # target of window n: month n + window
    ends = np.cumsum(months) - window  # windows whose target lies before each part's end
    parts = [lj.Batch(xs=windows.xs[:, start:end], targets=windows.targets[start:end])
             for start, end in zip((0, ends[0], ends[1]), ends, strict=True)]
    return Windows(*parts, normalizer=normalizer, months=months)


# The model -------------------------------------------------------------------------------------

def make_cell(name: str, hidden_size: int) -> lj.Cell:
    """The cell called `name` (a key of `MODELS`)."""
    if name == "lstm":
        return lj.lstm(hidden_size, forget_bias=1.0)
    if name == "rnn_tanh":
        return lj.rnn(hidden_size, activation="tanh")
    raise ValueError(f"model must be one of {tuple(MODELS)}, got {name!r}")


def init_model(cell: lj.Cell, seed) -> dict:
    """`{"cell": params (input size 1), "readout": (H,) ~ N(0, 1/H), "bias": 0}`, from the first of the two
    keys split from `PRNGKey(seed)`."""
    key_cell, key_readout = jax.random.split(jax.random.split(jax.random.PRNGKey(seed))[0])
    return {"cell": cell.init(key_cell, 1),
            "readout": jax.random.normal(key_readout, (cell.hidden_size,), jnp.float32) / math.sqrt(cell.hidden_size),
            "bias": jnp.zeros((), jnp.float32)}


def predict(cell: lj.Cell, model: dict, xs: jax.Array, residual: bool) -> jax.Array:
    """Normalised next-month prices, shape `(N,)`, for windows `xs` of shape `(window, N, 1)`."""
    _, ys = lj.unroll(cell, model["cell"], xs)
    out = ys[-1] @ model["readout"] + model["bias"]
    return out + xs[-1, :, 0] if residual else out


def mse(cell: lj.Cell, model: dict, batch: lj.Batch, residual: bool) -> jax.Array:
    """Mean squared error of `predict` against the normalised targets."""
    return jnp.mean((predict(cell, model, batch.xs, residual) - batch.targets[:, 0]) ** 2)


def training_program(cell: lj.Cell, config: StocksConfig) -> Callable:
    """`train(seeds, task.train, task.validation, task.test.xs)`: trains one model per seed with
    `lj.map_seeds` (`config.seed_strategy`; compiles once per series length), keeps each seed's
    validation-best parameters, and returns `(test predictions (S, N_test), train loss (S, steps),
    validation loss (S, steps + 1), best step (S,))`, all normalised.

    The windows are the same for every seed. The loop gets them in every row (broadcast, then
    sliced back: free), so that one program serves every symbol of a length. The vmapped program
    takes them as arguments of an enclosing `jax.jit` and closes over them, unbatched, so that XLA
    computes the input projection of all seeds as one matrix product; vmapping broadcast copies
    instead made it 2.5x slower (55 s of CPU time against 22 s for the default run)."""
    optimizer = optax.adam(config.learning_rate)
    step = lj.make_train_step(lambda model, batch, key: mse(cell, model, batch, config.residual), optimizer)

    def train_one(seed: jax.Array, data: dict) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """One seed, on the symbol's windows `data` (`train`, `validation`, `test_xs`)."""
        train_batch, validation = data["train"], data["validation"]
        model = init_model(cell, seed)
        state = lj.init_train_state(model, optimizer, jax.random.split(jax.random.PRNGKey(seed))[1])
        initial = mse(cell, model, validation, config.residual)

        def body(carry, _):
            state, (best_model, best_loss, best_step) = carry
            state, metrics = step(state, train_batch)
            loss = mse(cell, state.params, validation, config.residual)
            better = loss < best_loss
            best = (jax.tree_util.tree_map(lambda new, old: jnp.where(better, new, old), state.params, best_model),
                    jnp.where(better, loss, best_loss), jnp.where(better, state.step, best_step))
            return (state, best), (metrics.loss, loss)

        best = (model, initial, jnp.zeros((), jnp.int32))
        (_, (best_model, _, best_step)), (train_loss, val_loss) = lax.scan(body, (state, best), None,
                                                                           length=config.steps)
        predictions = predict(cell, best_model, data["test_xs"], config.residual)
        return predictions, train_loss, jnp.concatenate([initial[None], val_loss]), best_step

    def train_row(row: dict):
        return train_one(row["seed"], row)

    @jax.jit
    def train_vmapped(seeds: jax.Array, data: dict):
        return lj.map_seeds(lambda seed: train_one(seed, data), seeds, "vmap")

    def train(seeds, train_batch: lj.Batch, validation: lj.Batch, test_xs: jax.Array):
        seeds = jnp.asarray(seeds, jnp.int32)
        data = {"train": train_batch, "validation": validation, "test_xs": test_xs}
        if resolve_strategy(config.seed_strategy) == "vmap":
            return train_vmapped(seeds, data)
        rows = {"seed": seeds, **jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (len(seeds), *a.shape)), data)}
        return lj.map_seeds(train_row, rows, "loop")

    return train


# The experiment --------------------------------------------------------------------------------

def _errors(predictions: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RMSE and MAE over the last axis."""
    error = np.asarray(predictions, float) - np.asarray(actual, float)
    return np.sqrt(np.mean(error ** 2, axis=-1)), np.mean(np.abs(error), axis=-1)


def run_experiment(config: StocksConfig) -> dict:
    """Trains and tests every (symbol, model); returns the contents of `metrics.json`."""
    seeds = np.arange(config.seeds, dtype=np.int32)
    show = config.progress and sys.stderr.isatty()
    prices = lj.load_stock_prices(config.symbols)
    programs = {name: training_program(make_cell(name, config.hidden_size), config) for name in config.models}
    out = {}
    with tqdm(total=len(config.symbols) * len(config.models), unit="model", desc="stocks", disable=not show) as bar:
        for symbol in config.symbols:
            series = prices[symbol]
            task = make_task(series, config.window, config.fractions, config.normalization)
            n_train, n_val, n_test = task.months
            values = series.values[:, 0]
            test_actual = values[n_train + n_val:]
            val_actual = values[n_train:n_train + n_val]
            baseline_test = values[n_train + n_val - 1:-1]  # last month's price
            baseline_val = values[n_train - 1:n_train + n_val - 1]
            rmse, mae = _errors(baseline_test, test_actual)
            record = {
                "dates": [str(d) for d in series.dates], "prices": values.tolist(),
                "train_months": n_train, "validation_months": n_val, "test_months": n_test,
                "normalizer": {"shift": float(task.normalizer.shift[0]), "scale": float(task.normalizer.scale[0])},
                "test_dates": [str(d) for d in series.dates[n_train + n_val:]], "test_actual": test_actual.tolist(),
                "baseline": {"test_predictions": baseline_test.tolist(), "test_rmse": float(rmse),
                             "test_mae": float(mae), "validation_rmse": float(_errors(baseline_val, val_actual)[0])},
                "models": {},
            }
            for name in config.models:
                bar.set_postfix_str(f"{symbol}: {name}")
                predictions, train_loss, val_loss, best_step = jax.device_get(
                    programs[name](jnp.asarray(seeds), task.train, task.validation, task.test.xs))
                dollars = np.asarray(task.normalizer.inverse(jnp.asarray(predictions)[..., None]))[..., 0]
                rmse, mae = _errors(dollars, test_actual)
                best_val_mse = val_loss[np.arange(len(seeds)), best_step]
                record["models"][name] = {
                    "test_predictions": dollars.tolist(), "test_rmse": rmse.tolist(), "test_mae": mae.tolist(),
                    "validation_rmse": (np.sqrt(best_val_mse) * float(task.normalizer.scale[0])).tolist(),
                    "best_step": np.asarray(best_step).tolist(),
                    "train_loss": np.asarray(train_loss).tolist(), "validation_loss": np.asarray(val_loss).tolist(),
                }
                bar.update()
            out[symbol] = record
    return {
        "definitions": report.DEFINITIONS,
        "symbols": list(config.symbols),
        "models": list(config.models),
        "model_descriptions": {name: MODELS[name] for name in config.models},
        "seeds": seeds.tolist(),
        "window": config.window,
        "fractions": list(config.fractions),
        "hidden_size": config.hidden_size,
        "steps": config.steps,
        "learning_rate": config.learning_rate,
        "normalization": config.normalization,
        "residual": config.residual,
        "seed_strategy": config.seed_strategy,
        "backend": jax.default_backend(),
        "series": out,
    }


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
    """Runs the experiment from command-line arguments; returns the run's folder."""
    config = parse_config(StocksConfig, argv, prog="python -m experiments.stocks")
    run = record_run(config, NAME, run_experiment, report.summary)
    print(report.table(run.summary))
    plots = report.plot(run.run_dir)
    print(f"\nTrained and tested in {run.seconds:.1f} s, compilation included.")
    print(written_files_line(run.run_dir, plots))
    return run.run_dir


if __name__ == "__main__":
    main()
