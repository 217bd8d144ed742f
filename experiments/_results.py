"""Where experiments write their results, and how, so that an interrupted run corrupts nothing.

Every experiment writes `<root>/<name>/<run>/{config,metrics,summary}.json` and PNG plots. Each
file is written to a temporary file in the same folder, flushed to disk and then renamed over
its destination (`os.replace`, atomic on POSIX and Windows): a reader sees the old file or the
new one, never a half-written one, and a failure midway leaves no temporary file behind.

The JSON is strict (RFC 8259): JSON has no NaN or Infinity, so a non-finite float is written as
`null`, and every experiment's `definitions` say what a null means where one can occur (for
example "never falls below 1%" or "the training diverged"). Readers turn nulls back into NaN with
`np.asarray(values, float)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

import numpy as np

PathLike = str | os.PathLike


def write_json_atomic(path: PathLike, obj: Any) -> pathlib.Path:
    """Writes `obj` as indented JSON to `path`, atomically.

    Beyond JSON's own types, `obj` may hold NumPy and JAX arrays and scalars (as lists and
    numbers), tuples (as lists), `pathlib.Path` (as strings) and dataclass instances (as dicts).
    The file is strict JSON: non-finite floats (NaN, Infinity, -Infinity), which JSON cannot
    represent, are written as `null` (`json.dump`'s default would write the non-standard tokens
    `NaN` and `Infinity`, which browsers, `jq` and most other languages' parsers reject).

    Args:
        path: the destination; its folder must exist.
        obj: what to write.

    Returns:
        `path` as a `pathlib.Path`.

    Raises:
        TypeError: if `obj` holds something else; the file at `path` is then left as it was.
    """

    def write(file: IO[str]) -> None:
        json.dump(to_strict_json(obj), file, indent=2, allow_nan=False)
        file.write("\n")

    return _write_atomic(path, write, mode="w")


def save_figure_atomic(fig: Any, path: PathLike, **savefig_kwargs: Any) -> pathlib.Path:
    """Saves a Matplotlib figure to `path` atomically; the format comes from the suffix (`.png`).

    Args:
        fig: a `matplotlib.figure.Figure`.
        path: the destination; its folder must exist.
        **savefig_kwargs: passed on to `fig.savefig` (for example `dpi=150`).

    Returns:
        `path` as a `pathlib.Path`.
    """
    image_format = pathlib.Path(path).suffix.lstrip(".").lower() or "png"
    return _write_atomic(path, lambda file: fig.savefig(file, format=image_format, **savefig_kwargs), mode="wb")


def read_json(path: PathLike) -> Any:
    """Reads one JSON file, as the plotting functions do."""
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def make_run_dir(root: PathLike, name: str, run: str | None = None, overwrite: bool = False) -> pathlib.Path:
    """Creates and returns the folder `<root>/<name>/<run>/` for one run of an experiment.

    Args:
        root: the results folder, for example `"results"`.
        name: the experiment's name, for example `"statquest"`.
        run: the run's name, one path component; `None` gives a UTC timestamp such as
            `20250101T120000Z` (with `-2`, `-3`, ... appended if that folder exists already).
        overwrite: if the run folder exists, delete it and start afresh instead of refusing.

    Returns:
        The new, empty run folder.

    Raises:
        ValueError: if `name` or `run` is not a single, plain path component.
        FileExistsError: if the run folder exists and `overwrite` is false.
    """
    _check_component("name", name)
    parent = pathlib.Path(root) / name
    parent.mkdir(parents=True, exist_ok=True)
    if run is None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        for suffix in ["", *(f"-{n}" for n in range(2, 1000))]:
            try:
                (parent / f"{stamp}{suffix}").mkdir()
                return parent / f"{stamp}{suffix}"
            except FileExistsError:
                continue
        raise FileExistsError(f"too many runs named {parent / stamp}-*")
    _check_component("run", run)
    run_dir = parent / run
    if run_dir.exists() and overwrite:
        shutil.rmtree(run_dir)
    try:
        run_dir.mkdir()
    except FileExistsError:
        raise FileExistsError(f"run folder {run_dir} already exists; choose another run name "
                              "or pass --overwrite to replace it") from None
    return run_dir


def _check_component(what: str, value: str) -> None:
    if not isinstance(value, str) or value in ("", ".", "..") or any(sep in value for sep in ("/", "\\", os.sep)):
        raise ValueError(f"{what} must be a plain folder name (no path separators), got {value!r}")


def _write_atomic(path: PathLike, write: Callable[[IO], None], mode: str) -> pathlib.Path:
    """Runs `write(file)` on a temporary file beside `path` (opened with `mode`, `"w"` or
    `"wb"`), flushes it to disk, then renames it over `path`."""
    path = pathlib.Path(path)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp_name, 0o644)  # mkstemp makes it private (0o600); results are for reading
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: pathlib.Path) -> None:
    """Makes the rename itself durable where the platform allows it (POSIX)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def to_strict_json(value: Any) -> Any:
    """`value` made of JSON's own types only, as `write_json_atomic` writes it: arrays and NumPy
    scalars as lists and numbers, tuples as lists, paths as strings, dataclasses as dicts, and
    every non-finite float as `None` (JSON's `null`).

    Raises:
        TypeError: for anything else (dict keys are left to `json.dump`).
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: to_strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_strict_json(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_strict_json(dataclasses.asdict(value))
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, np.generic):
        return to_strict_json(value.item())
    if hasattr(value, "__array__") and hasattr(value, "shape"):  # NumPy and JAX arrays
        return to_strict_json(np.asarray(value).tolist())
    raise TypeError(f"cannot write an object of type {type(value).__name__} as JSON")


@dataclasses.dataclass(frozen=True)
class RecordedRun:
    """What `record_run` wrote.

    Attributes:
        run_dir: the run's folder.
        config: the config as written to `config.json` (its `run` field set to the folder's name).
        metrics: what `compute` returned, as written to `metrics.json`.
        summary: what `summarize` returned plus `seconds_including_compilation`, as in `summary.json`.
        seconds: wall-clock time of `compute`, compilation included.
    """

    run_dir: pathlib.Path
    config: Any
    metrics: Any
    summary: dict[str, Any]
    seconds: float


def record_run(
    config: Any, name: str, compute: Callable[[Any], Any], summarize: Callable[[Any], dict[str, Any]]
) -> RecordedRun:
    """The life of one experiment run: its folder, `config.json`, the timed computation,
    `metrics.json` and `summary.json`, each written atomically as soon as it exists.

    Args:
        config: a frozen config dataclass with `results_dir`, `run` and `overwrite` fields.
        name: the experiment's name, the folder under `results_dir`.
        compute: `compute(config) -> metrics`, the experiment itself.
        summarize: `summarize(metrics) -> summary`, a dict.

    Returns:
        A `RecordedRun`; plotting and printing are left to the experiment.
    """
    run_dir = make_run_dir(config.results_dir, name, config.run, config.overwrite)
    config = dataclasses.replace(config, run=run_dir.name)
    write_json_atomic(run_dir / "config.json", dataclasses.asdict(config))
    start = time.perf_counter()
    metrics = compute(config)
    seconds = time.perf_counter() - start
    write_json_atomic(run_dir / "metrics.json", metrics)
    summary = summarize(metrics)
    summary["seconds_including_compilation"] = round(seconds, 2)
    write_json_atomic(run_dir / "summary.json", summary)
    return RecordedRun(run_dir=run_dir, config=config, metrics=metrics, summary=summary, seconds=seconds)


def written_files_line(run_dir: pathlib.Path, plots: Sequence[pathlib.Path] = ()) -> str:
    """`Wrote <run_dir>/: config.json, metrics.json, summary.json, <plots>`."""
    return f"Wrote {run_dir}/: " + ", ".join(["config.json", "metrics.json", "summary.json", *(p.name for p in plots)])
