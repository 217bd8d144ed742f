"""Checkpoints with Orbax: numbered, atomic, the last N kept, restored into the same pytree types.

A checkpoint directory holds one sub-directory per saved step (`<directory>/<step>/`), each with
two Orbax items: `state` (the arrays, written by `ocp.args.StandardSave`) and `extra` (a small
JSON document: the fit loop's history and bookkeeping). Orbax writes each step into a temporary
directory and renames it when complete, so a crash mid-save leaves no half-written step that a
later run could pick up; `keep_last` deletes all but the newest N steps after each save.

Restoring needs a *target*: a pytree with the structure, shapes, dtypes and shardings to restore
into, usually the freshly initialised state (`lj.init_train_state(...)`) or its
`jax.ShapeDtypeStruct`s. The result has the target's pytree types (`TrainState`, Optax's state
NamedTuples, `LSTMParams`, typed PRNG keys) and the saved values, bit for bit:

    with lj.Checkpoints("runs/adding", keep_last=3) as checkpoints:
        checkpoints.save(int(state.step), state)
        state, extra = checkpoints.restore(target=state)          # the latest step

A missing directory or step raises `CheckpointNotFoundError`; a checkpoint whose files are
damaged, or that does not match the target, raises `CheckpointError` naming the directory, the
step and what is wrong.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_STATE_ITEM = "state"
_EXTRA_ITEM = "extra"
_FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint could not be read: damaged files, or a structure that does not match the target."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint directory, or the requested step in it, does not exist."""


def _orbax():
    """`orbax.checkpoint`, imported on first use (it adds about 0.4 s to `import lstmjax`)."""
    import orbax.checkpoint

    return orbax.checkpoint


def _handler_registry():
    ocp = _orbax()
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add(_STATE_ITEM, ocp.args.StandardSave, ocp.handlers.StandardCheckpointHandler)
    registry.add(_STATE_ITEM, ocp.args.StandardRestore, ocp.handlers.StandardCheckpointHandler)
    registry.add(_EXTRA_ITEM, ocp.args.JsonSave, ocp.handlers.JsonCheckpointHandler)
    registry.add(_EXTRA_ITEM, ocp.args.JsonRestore, ocp.handlers.JsonCheckpointHandler)
    return registry


def _abstract(tree: Any) -> Any:
    """`jax.ShapeDtypeStruct`s (with shardings) for each leaf of a restore target."""

    def leaf(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        if not isinstance(x, jax.Array):
            x = jnp.asarray(x)
        return _orbax().utils.to_shape_dtype_struct(x)

    return jax.tree_util.tree_map(leaf, tree)


def _first_line(error: BaseException, limit: int = 300) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = f"{type(error).__name__}: {text}"
    return text if len(text) <= limit else text[:limit] + " ..."


class Checkpoints:
    """Numbered checkpoints of a pytree (a `TrainState`) in one directory, written by Orbax.

    Args:
        directory: where the checkpoints live (created on the first save).
        keep_last: how many of the newest checkpoints to keep; `None` keeps all.
        async_save: write in a background thread (the arrays are copied to host memory before
            `save` returns, so training may go on); `wait_until_finished` or `close` waits.

    Use it as a context manager, or call `close()`, so that pending writes finish.
    """

    def __init__(self, directory: str | os.PathLike, keep_last: int | None = 3, *, async_save: bool = True):
        if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1):
            raise ValueError(f"keep_last must be a positive int or None, got {keep_last!r}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.keep_last = keep_last
        ocp = _orbax()
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=keep_last),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=False,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=_handler_registry())

    # -- inspection ---------------------------------------------------------------------------

    def steps(self) -> list[int]:
        """The saved steps, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest saved step, or `None` if there is none."""
        return self._manager.latest_step()

    def step_directory(self, step: int) -> str:
        """The directory of one saved step."""
        return os.path.join(self.directory, str(step))

    # -- saving and restoring -----------------------------------------------------------------

    def save(self, step: int, state: Any, extra: Any = None) -> None:
        """Saves `state` (any pytree of arrays) and `extra` (JSON-serialisable) as step `step`.

        Raises:
            ValueError: if step `step` is already saved in this directory.
        """
        step = int(step)
        if step in self._manager.all_steps():
            raise ValueError(f"a checkpoint for step {step} already exists in {self.directory}")
        os.makedirs(self.directory, exist_ok=True)
        document = {"format": _FORMAT_VERSION, "step": step, "extra": extra}
        ocp = _orbax()
        self._manager.save(
            step,
            args=ocp.args.Composite(
                **{_STATE_ITEM: ocp.args.StandardSave(state), _EXTRA_ITEM: ocp.args.JsonSave(document)}
            ),
            force=True,
        )

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, Any]:
        """Restores a saved step into the structure, dtypes and shardings of `target`.

        Args:
            target: a pytree like the saved one (e.g. the freshly initialised `TrainState`), of
                arrays or `jax.ShapeDtypeStruct`s; its pytree types and shardings are kept.
            step: which step; default the latest.

        Returns:
            `(state, extra)`: the restored pytree and the `extra` saved with it.

        Raises:
            CheckpointNotFoundError: no checkpoint in the directory, or none for `step`.
            CheckpointError: the checkpoint's files are damaged or it does not match `target`.
        """
        self.wait_until_finished()
        steps = self.steps()
        if not steps:
            if not os.path.isdir(self.directory):
                raise CheckpointNotFoundError(f"checkpoint directory {self.directory} does not exist")
            raise CheckpointNotFoundError(f"no checkpoints in {self.directory}")
        if step is None:
            step = steps[-1]
        elif int(step) not in steps:
            raise CheckpointNotFoundError(f"no checkpoint for step {step} in {self.directory}; saved steps: {steps}")
        step = int(step)
        abstract = _abstract(target)
        where = f"checkpoint {self.step_directory(step)} (step {step})"
        # Compared from the metadata first, so that a mismatch never starts reading arrays.
        mismatch = self._describe_mismatch(step, abstract)
        if mismatch:
            raise CheckpointError(f"{where} does not match the restore target:\n{mismatch}")
        ocp = _orbax()
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    **{_STATE_ITEM: ocp.args.StandardRestore(abstract), _EXTRA_ITEM: ocp.args.JsonRestore()}
                ),
            )
            state, document = restored[_STATE_ITEM], restored[_EXTRA_ITEM]
            if not isinstance(document, dict) or document.get("format") != _FORMAT_VERSION:
                raise ValueError(f"unrecognised extra document {str(document)[:100]!r}")
        except Exception as error:  # noqa: BLE001 -- Orbax and TensorStore raise many types
            others = [s for s in steps if s != step]
            hint = f"; other saved steps: {others} (pass step=...)" if others else ""
            raise CheckpointError(
                f"{where} could not be read; it is damaged or incomplete ({_first_line(error)}). "
                f"Delete that step's directory to resume from an earlier checkpoint{hint}"
            ) from error
        if jax.tree_util.tree_structure(state) != jax.tree_util.tree_structure(abstract):
            raise CheckpointError(
                f"checkpoint {self.step_directory(step)} restored to structure "
                f"{jax.tree_util.tree_structure(state)}, expected {jax.tree_util.tree_structure(abstract)}"
            )
        return state, document["extra"]

    def _describe_mismatch(self, step: int, abstract: Any) -> str:
        """Which leaves differ (name, shape, dtype) between the saved step and `abstract`; '' if none.

        Returns '' too when the metadata cannot be read: the restore then reports the damage.
        """
        try:
            saved = self._manager.item_metadata(step)[_STATE_ITEM]
            saved_leaves = jax.tree_util.tree_leaves(getattr(saved, "tree", saved))
            saved_by_name = {leaf.name: leaf for leaf in saved_leaves}
        except Exception:  # noqa: BLE001 -- unreadable metadata: let the restore report it
            return ""
        try:
            names = _orbax().tree.get_param_names(abstract, include_empty_nodes=False)
            wanted = {}
            for name, leaf in zip(jax.tree_util.tree_leaves(names), jax.tree_util.tree_leaves(abstract), strict=True):
                if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # stored as its key data
                    leaf = jax.eval_shape(jax.random.key_data, leaf)
                wanted[name] = leaf
            lines = []
            for name in sorted(set(wanted) - set(saved_by_name)):
                lines.append(f"  {name}: in the target {tuple(wanted[name].shape)}, not in the checkpoint")
            for name in sorted(set(saved_by_name) - set(wanted)):
                lines.append(f"  {name}: in the checkpoint {tuple(saved_by_name[name].shape)}, not in the target")
            for name in sorted(set(wanted) & set(saved_by_name)):
                want, have = wanted[name], saved_by_name[name]
                if tuple(want.shape) != tuple(have.shape):
                    lines.append(f"  {name}: checkpoint shape {tuple(have.shape)}, target shape {tuple(want.shape)}")
                elif np.dtype(want.dtype) != np.dtype(have.dtype):
                    lines.append(
                        f"  {name}: checkpoint dtype {np.dtype(have.dtype)}, target dtype {np.dtype(want.dtype)}"
                    )
        except Exception:  # noqa: BLE001 -- an unforeseen layout: let Orbax's restore decide
            return ""
        return "\n".join(lines)

    # -- lifetime -----------------------------------------------------------------------------

    def wait_until_finished(self) -> None:
        """Blocks until pending background writes (and deletions of old steps) are done."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending writes and releases Orbax's resources."""
        self._manager.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpoints({self.directory!r}, keep_last={self.keep_last})"


def save_checkpoint(
    directory: str | os.PathLike,
    state: Any,
    extra: Any = None,
    *,
    step: int | None = None,
    keep_last: int | None = None,
) -> str:
    """Saves one checkpoint and waits until it is on disk.

    Args:
        directory: the checkpoint directory.
        state: the pytree to save; a `TrainState` gives the step number by default.
        extra: JSON-serialisable data saved alongside.
        step: the step number; default `int(state.step)`.
        keep_last: if set, delete all but the newest `keep_last` checkpoints afterwards.

    Returns:
        The directory of the saved step.
    """
    if step is None:
        if not hasattr(state, "step"):
            raise ValueError(f"pass step=...: state of type {type(state).__name__} has no .step")
        step = int(state.step)
    with Checkpoints(directory, keep_last=keep_last, async_save=False) as checkpoints:
        checkpoints.save(step, state, extra)
        return checkpoints.step_directory(step)


def restore_checkpoint(directory: str | os.PathLike, target: Any, step: int | None = None) -> tuple[Any, Any]:
    """Restores `(state, extra)` from `directory` (the latest step by default) into `target`'s structure.

    Raises:
        CheckpointNotFoundError: the directory does not exist, holds no checkpoint, or not `step`.
        CheckpointError: the checkpoint is damaged or does not match `target`.
    """
    path = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(path):
        raise CheckpointNotFoundError(f"checkpoint directory {path} does not exist")
    with Checkpoints(path, keep_last=None, async_save=False) as checkpoints:
        return checkpoints.restore(target, step)
