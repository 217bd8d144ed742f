"""`fit`: a training loop around a pure train step, that can stop, resume and spread over devices.

    optimizer = optax.adam(1e-2)
    state = lj.init_train_state(params, optimizer, jax.random.PRNGKey(0))
    train_step = jax.jit(lj.make_train_step(loss_fn, optimizer))
    batch_fn = lj.batches_from_key(lambda key: lj.adding_problem(key, 64, 100), jax.random.PRNGKey(1))
    history, state = lj.fit(train_step, state, batch_fn, num_steps=10_000,
                            eval_fn=lambda s: {"mse": loss_fn(s.params, test, None)}, eval_every=500,
                            early_stopping=lj.EarlyStopping("mse", patience=5),
                            checkpoint_dir="runs/adding", checkpoint_every=1000)

The data source is a pure function of the step number, `batch_fn(step) -> batch`, so a resumed
run regenerates exactly the batches it would have seen: with the state restored bit for bit
(parameters, optimizer state, step, PRNG key) and the same batches, the resumed run computes the
same numbers as one that never stopped. Killing a run and calling `fit` again with the same
arguments continues from the newest checkpoint.

Conventions. `num_steps` is the total number of updates the run should reach (`state.step`
counts them), not the number to add, so a resumed run is given the same `num_steps` as the
original. The train metrics of step `k` (`history["step"] == k`) were computed on `batch_fn(k)` at
the parameters after `k` updates, before update `k + 1`; an evaluation at `history["eval_step"] == k`
sees the parameters after `k` updates too. Evaluations happen when `state.step` is a multiple
of `eval_every`, checkpoints when it is a multiple of `checkpoint_every` and when `fit` returns.

Several devices and hosts: pass `mesh=lj.data_parallel_mesh()`; `fit` replicates the state and
splits each batch along its batch axis (see `lstmjax._parallel`). On several hosts every process
calls `jax.distributed.initialize()` first and then runs the same `fit` call.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from lstmjax._checkpoint import Checkpoints
from lstmjax._parallel import replicate, shard_batch
from lstmjax._training import StepMetrics, TrainState

NONFINITE_POLICIES = ("stop", "skip")
STOPPED_REASONS = ("completed", "early_stopping", "nonfinite")

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Stop when an evaluation metric has not improved for `patience` evaluations.

    Attributes:
        metric: a key of the dict that `eval_fn` returns.
        patience: how many evaluations in a row without improvement end the run.
        min_delta: an improvement must beat the best value so far by more than this.
        mode: `"min"` (lower is better, e.g. a loss) or `"max"` (e.g. an accuracy).

    A non-finite value never counts as an improvement.
    """

    metric: str
    patience: int = 5
    min_delta: float = 0.0
    mode: str = "min"

    def __post_init__(self):
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"metric must be a non-empty string, got {self.metric!r}")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"patience must be a positive int, got {self.patience!r}")
        if not math.isfinite(self.min_delta) or self.min_delta < 0:
            raise ValueError(f"min_delta must be a finite number >= 0, got {self.min_delta!r}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")

    def improved(self, value: float, best: float | None) -> bool:
        """Whether `value` improves on `best` (the best value so far, `None` at first)."""
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return value < best - self.min_delta if self.mode == "min" else value > best + self.min_delta


def batches_from_key(
    make_batch: Callable[[jax.Array], Any], key: jax.Array, *, jit: bool = True
) -> Callable[[int], Any]:
    """A data source that is a pure function of the step: `batch_fn(step) = make_batch(fold_in(key, step))`.

    Args:
        make_batch: `make_batch(key) -> batch`, e.g. `lambda k: lj.adding_problem(k, 64, 100)`.
        key: the data PRNG key (keep it apart from the model's key).
        jit: compile `batch_fn` (once: the step is a traced argument).

    Returns:
        `batch_fn(step) -> batch`; the same step always gives the same batch.
    """

    def batch_fn(step):
        return make_batch(jax.random.fold_in(key, step))

    return jax.jit(batch_fn) if jit else batch_fn


class _History:
    """Growing per-step and per-evaluation records; JSON in checkpoints, numpy arrays at the end."""

    def __init__(self, document: Mapping[str, Any] | None = None):
        document = document or {}
        self.step: list[int] = list(document.get("step", []))
        self.loss: list[float] = list(document.get("loss", []))
        self.grad_norm: list[float] = list(document.get("grad_norm", []))
        self.finite: list[bool] = list(document.get("finite", []))
        self.eval_step: list[int] = list(document.get("eval_step", []))
        self.evals: dict[str, list[float]] = {name: list(v) for name, v in document.get("evals", {}).items()}
        stopper = document.get("early_stopping", {})
        self.best: float | None = stopper.get("best")
        self.best_step: int | None = stopper.get("best_step")
        self.wait: int = stopper.get("wait", 0)

    def to_json(self, up_to_step: int) -> dict[str, Any]:
        """The records of the state after `up_to_step` updates: train steps before it, evaluations up to it."""
        n = sum(s < up_to_step for s in self.step)
        m = sum(s <= up_to_step for s in self.eval_step)
        return {
            "step": self.step[:n],
            "loss": self.loss[:n],
            "grad_norm": self.grad_norm[:n],
            "finite": self.finite[:n],
            "eval_step": self.eval_step[:m],
            "evals": {name: values[:m] for name, values in self.evals.items()},
            "early_stopping": {"best": self.best, "best_step": self.best_step, "wait": self.wait},
        }

    def to_arrays(self, stopped_reason: str) -> dict[str, np.ndarray]:
        arrays = {
            "step": np.asarray(self.step, dtype=np.int64),
            "loss": np.asarray(self.loss, dtype=np.float64),
            "grad_norm": np.asarray(self.grad_norm, dtype=np.float64),
            "finite": np.asarray(self.finite, dtype=bool),
            "eval_step": np.asarray(self.eval_step, dtype=np.int64),
        }
        for name, values in self.evals.items():
            arrays[f"eval_{name}"] = np.asarray(values, dtype=np.float64)
        arrays["stopped_reason"] = np.asarray(stopped_reason)
        return arrays


def _scalar(name: str, value: Any) -> float:
    array = np.asarray(jax.device_get(value))
    if array.shape != ():
        raise ValueError(f"eval_fn must return scalars; metric {name!r} has shape {array.shape}, expected ()")
    return float(array)


def _check_positive(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")


def _progress_enabled(progress: bool | None) -> bool:
    if progress is not None:
        return bool(progress)
    try:
        return sys.stderr.isatty() and jax.process_index() == 0
    except (AttributeError, ValueError):
        return False


def fit(
    train_step: Callable[[TrainState, Any], tuple[TrainState, StepMetrics]],
    state: TrainState,
    batch_fn: Callable[[int], Any],
    num_steps: int,
    *,
    eval_fn: Callable[[TrainState], Mapping[str, Any]] | None = None,
    eval_every: int | None = None,
    early_stopping: EarlyStopping | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    keep_last: int | None = 3,
    resume: bool = True,
    on_nonfinite: str = "stop",
    progress: bool | None = None,
    mesh: jax.sharding.Mesh | None = None,
    batch_axes: Any = None,
) -> tuple[dict[str, np.ndarray], TrainState]:
    """Trains until `state.step == num_steps`, early stopping, or a non-finite step.

    Args:
        train_step: `train_step(state, batch) -> (state, StepMetrics)`, usually
            `jax.jit(lj.make_train_step(loss_fn, optimizer))`; it compiles once for the loop.
        state: the state to start from (`lj.init_train_state(...)`); when resuming, also the
            target that the checkpoint is restored into (structure, dtypes, shardings).
        batch_fn: `batch_fn(step) -> batch` for `step = 0, 1, ...`; it must be a pure function of
            the step (see `batches_from_key`), so that a resumed run sees the same batches.
        num_steps: the step count to reach (total, not additional).
        eval_fn: `eval_fn(state) -> {name: scalar}`, run when `state.step` is a multiple of
            `eval_every` (required with `eval_fn`); recorded as `history["eval_<name>"]`.
        eval_every: steps between evaluations.
        early_stopping: an `EarlyStopping` on one of `eval_fn`'s metrics.
        checkpoint_dir: if set, save Orbax checkpoints there (see `lj.Checkpoints`), and resume
            from the newest one if `resume`.
        checkpoint_every: steps between checkpoints; `None` saves only when `fit` returns.
        keep_last: how many checkpoints to keep (`None`: all).
        resume: continue from the newest checkpoint in `checkpoint_dir`. With `resume=False`
            a directory that already holds checkpoints is an error (nothing is overwritten).
        on_nonfinite: when a step's loss or gradient is not finite (the train step has already
            skipped its update): `"stop"` ends the run and returns the state from before that
            step, the last good one (`state.step` is then the failing step's index); `"skip"`
            goes on with the next batch. Either way a `RuntimeWarning` names the step.
        progress: show a tqdm progress bar (step, loss, speed, last evaluation); `None` shows it
            only when stderr is a terminal (and on process 0).
        mesh: data parallelism: replicate the state on this mesh and split each batch over it
            (`lj.data_parallel_mesh()`); `None` leaves placement to `batch_fn` and JAX.
        batch_axes: where each batch leaf's batch axis is, for `mesh` (see `lj.shard_batch`;
            the default handles `lj.Batch`, whose `xs` are time-major).

    Returns:
        `(history, state)`. `history` is a dict of numpy arrays: `step`, `loss`, `grad_norm`,
        `finite` (one entry per step taken, including those before a resume), `eval_step` and
        `eval_<name>` (one per evaluation), and `stopped_reason`, a 0-d string array:
        `"completed"`, `"early_stopping"` or `"nonfinite"`. `state` is the final state (the
        last good one after a non-finite stop).

    Raises:
        ValueError: invalid arguments, or `resume=False` with existing checkpoints.
        lj.CheckpointError: the newest checkpoint is damaged or does not match `state`.
    """
    if not callable(train_step) or not callable(batch_fn):
        raise ValueError("train_step and batch_fn must be callables")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer) or num_steps < 0:
        raise ValueError(f"num_steps must be an int >= 0, got {num_steps!r}")
    if on_nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"on_nonfinite must be one of {NONFINITE_POLICIES}, got {on_nonfinite!r}")
    if eval_fn is not None:
        _check_positive("eval_every", eval_every)
    elif eval_every is not None:
        raise ValueError("eval_every is set but eval_fn is None")
    if early_stopping is not None:
        if not isinstance(early_stopping, EarlyStopping):
            raise ValueError(f"early_stopping must be an EarlyStopping, got {type(early_stopping).__name__}")
        if eval_fn is None:
            raise ValueError("early_stopping needs eval_fn (and eval_every) to compute its metric")
    _check_positive("checkpoint_every", checkpoint_every, allow_none=True)
    if checkpoint_every is not None and checkpoint_dir is None:
        raise ValueError("checkpoint_every is set but checkpoint_dir is None")

    if mesh is not None:
        state = replicate(state, mesh)
    history = _History()
    checkpoints = Checkpoints(checkpoint_dir, keep_last=keep_last) if checkpoint_dir is not None else None
    bar = None
    try:
        if checkpoints is not None and (latest := checkpoints.latest_step()) is not None:
            if not resume:
                raise ValueError(
                    f"{checkpoints.directory} already holds checkpoints (steps {checkpoints.steps()}); pass "
                    f"resume=True to continue from step {latest}, or use an empty directory"
                )
            state, document = checkpoints.restore(state)
            history = _History(document)
            _logger.info("fit: resumed from %s at step %d", checkpoints.step_directory(latest), latest)

        step = int(state.step)
        stopped_reason = "completed"
        if early_stopping is not None and history.wait >= early_stopping.patience:
            stopped_reason = "early_stopping"  # a resumed run that had already stopped early
            num_steps = step
        if _progress_enabled(progress) and step < num_steps:
            from tqdm.auto import tqdm

            bar = tqdm(total=int(num_steps), initial=step, unit="step", dynamic_ncols=True, file=sys.stderr)
        postfix: dict[str, str] = {}

        def record(index: int, metrics: StepMetrics) -> bool:
            """Appends step `index`'s metrics; returns False if it was non-finite and the run must stop."""
            loss, grad_norm, finite = jax.device_get((metrics.loss, metrics.grad_norm, metrics.finite))
            loss, grad_norm = float(loss), float(grad_norm)
            finite = bool(finite) and math.isfinite(loss) and math.isfinite(grad_norm)
            history.step.append(index)
            history.loss.append(loss)
            history.grad_norm.append(grad_norm)
            history.finite.append(finite)
            if bar is not None:
                postfix["loss"] = f"{loss:.4g}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
            if finite:
                return True
            stop = on_nonfinite == "stop"
            action = (
                f"training stopped; the returned state is the last good one, from before this step "
                f"(state.step == {index})"
                if stop
                else "its update was skipped and training goes on (on_nonfinite='skip')"
            )
            warnings.warn(
                f"fit: step {index}: non-finite loss ({loss}) or gradient norm ({grad_norm}); {action}",
                RuntimeWarning,
                stacklevel=3,
            )
            return not stop

        def evaluate(current: TrainState) -> bool:
            """Runs `eval_fn`, records it; returns True if early stopping ends the run here."""
            metrics = eval_fn(current)
            if not isinstance(metrics, Mapping):
                raise ValueError(
                    f"eval_fn must return a mapping of metric names to scalars, got {type(metrics).__name__}"
                )
            values = {name: _scalar(name, value) for name, value in metrics.items()}
            if history.evals and set(values) != set(history.evals):
                raise ValueError(f"eval_fn returned metrics {sorted(values)}, earlier {sorted(history.evals)}")
            if not history.evals:
                if history.eval_step:
                    raise ValueError("eval_fn returned no metrics")
                history.evals = {name: [] for name in values}
            history.eval_step.append(int(current.step))
            for name, value in values.items():
                history.evals[name].append(value)
            if bar is not None:
                postfix.update({name: f"{value:.4g}" for name, value in values.items()})
                bar.set_postfix(postfix, refresh=False)
            if early_stopping is None:
                return False
            if early_stopping.metric not in values:
                raise ValueError(
                    f"early_stopping.metric {early_stopping.metric!r} is not among eval_fn's metrics {sorted(values)}"
                )
            value = values[early_stopping.metric]
            if early_stopping.improved(value, history.best):
                history.best, history.best_step, history.wait = value, int(current.step), 0
                return False
            history.wait += 1
            if history.wait < early_stopping.patience:
                return False
            message = (
                f"fit: early stopping at step {int(current.step)}: {early_stopping.metric} has not improved on "
                f"{history.best:.6g} (step {history.best_step}) for {history.wait} evaluations"
            )
            if bar is not None:
                bar.write(message)
            _logger.info(message)
            return True

        # The host reads step k's metrics only after dispatching step k + 1, so Python never waits
        # for the device between steps. At evaluations, checkpoints and the last step the pending
        # metrics are read first; after a non-finite step ("stop") the dispatched step is dropped.
        pending: tuple[int, TrainState, StepMetrics] | None = None
        while step < num_steps:
            batch = batch_fn(step)
            if mesh is not None:
                batch = shard_batch(batch, mesh, batch_axes)
            new_state, metrics = train_step(state, batch)
            if pending is not None and not record(pending[0], pending[2]):
                state, stopped_reason = pending[1], "nonfinite"
                break
            pending = (step, state, metrics)
            state, step = new_state, step + 1
            at_eval = eval_fn is not None and step % eval_every == 0
            at_checkpoint = checkpoint_every is not None and step % checkpoint_every == 0
            if not (at_eval or at_checkpoint or step == num_steps):
                continue
            finite_or_skipped = record(pending[0], pending[2])
            if not finite_or_skipped:
                state, stopped_reason = pending[1], "nonfinite"
                break
            pending = None
            stop_early = evaluate(state) if at_eval else False
            if at_checkpoint:
                checkpoints.save(step, state, history.to_json(step))
            if stop_early:
                stopped_reason = "early_stopping"
                break
        if checkpoints is not None and int(state.step) not in checkpoints.steps():
            checkpoints.save(int(state.step), state, history.to_json(int(state.step)))
    finally:
        if bar is not None:
            bar.close()
        if checkpoints is not None:
            checkpoints.close()
    return history.to_arrays(stopped_reason), state
