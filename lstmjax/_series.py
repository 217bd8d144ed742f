"""Real time series for forecasting: loaders, chronological splits, training-only normalisation, windows.

The data ship inside the `vega_datasets` package (no download): monthly stock prices of five
companies (2000–2010) and a year of hourly temperatures in Seattle. The pipeline is

    series = lj.load_seattle_temperatures()
    task = lj.forecasting_task(series, window=48)     # split, normalise on train only, window
    final_state, ys = lj.unroll(cell, params, task.train.xs)

Splitting happens before windowing, so no window straddles two parts, and the normaliser sees
the training part only. Loaders return host NumPy arrays; windows and normalisation are `jnp`
and jittable (window sizes static).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from lstmjax._cell import check_positive_int
from lstmjax._tasks import Batch

STOCK_SYMBOLS = ("MSFT", "AMZN", "IBM", "GOOG", "AAPL")
NORMALIZATION_METHODS = ("standard", "minmax")
_INSTALL_HINT = ("pip install vega_datasets (or pip install 'lstmjax[experiments]'); the data ship "
                 "inside that package, nothing is downloaded")


class TimeSeries(NamedTuple):
    """A regularly or irregularly sampled series with named features.

    Attributes:
        dates: NumPy `datetime64`, shape `(T,)`, increasing (unit `M` for monthly, `h` for hourly).
        values: NumPy floats (float64 from the loaders), shape `(T, features)`.
        names: one name per feature.
    """

    dates: np.ndarray
    values: np.ndarray
    names: tuple[str, ...]


class Normalizer(NamedTuple):
    """An affine per-feature normaliser `(x - shift) / scale`, fitted on training data only.

    Build it with `Normalizer.fit(train)`. It is a pytree of arrays, so it passes through `jit`.

    Attributes:
        shift: per-feature shift, shape `(features,)` (`()` for a 1-D series).
        scale: per-feature scale, same shape; never 0.
    """

    shift: jax.Array
    scale: jax.Array

    @classmethod
    def fit(cls, train: ArrayLike | TimeSeries, method: str = "standard") -> Normalizer:
        """Fits the normaliser on `train`, shape `(T, features)` or `(T,)`, over all axes but the last.

        * `"standard"`: shift = mean, scale = standard deviation (population, ddof 0), so the
          training part has mean 0 and variance 1 per feature.
        * `"minmax"`: shift = minimum, scale = maximum - minimum, so the training part spans
          [0, 1] per feature (later parts may fall outside).

        A feature constant over the training part gets scale 1 (as scikit-learn does).
        """
        if method not in NORMALIZATION_METHODS:
            raise ValueError(f"method must be one of {NORMALIZATION_METHODS}, got {method!r}")
        shift, scale = _fit(_values(train, "train"), method)
        return cls(shift=shift, scale=scale)

    def transform(self, x: ArrayLike | TimeSeries) -> Any:
        """`(x - shift) / scale` over the last axis; a `TimeSeries` keeps its dates and names."""
        if isinstance(x, TimeSeries):
            return x._replace(values=np.asarray(self.transform(x.values)))
        return (jnp.asarray(x) - self.shift) / self.scale

    def inverse(self, y: ArrayLike | TimeSeries) -> Any:
        """`y * scale + shift`: back to the original units (for predictions, targets, windows)."""
        if isinstance(y, TimeSeries):
            return y._replace(values=np.asarray(self.inverse(y.values)))
        return jnp.asarray(y) * self.scale + self.shift


class ForecastingTask(NamedTuple):
    """Windowed train/validation/test batches of one series and the normaliser fitted on train.

    Attributes:
        train, validation, test: `Batch(xs, targets)` from `make_windows`, normalised.
        normalizer: fitted on the training part only; `normalizer.inverse(ys)` gives original units.
    """

    train: Batch
    validation: Batch
    test: Batch
    normalizer: Normalizer


def _import_local_data():
    try:
        from vega_datasets import local_data
    except ImportError as error:
        raise ImportError(f"the real series need the vega_datasets package: {_INSTALL_HINT}") from error
    return local_data


def load_stock_prices(symbols: str | Sequence[str] = STOCK_SYMBOLS) -> dict[str, TimeSeries]:
    """Monthly stock prices (US dollars) from `vega_datasets`' `stocks`, January 2000 to March 2010.

    MSFT, AMZN, IBM and AAPL have 123 months; GOOG starts in August 2004 (its listing) and has
    68. Each symbol keeps its own dates: nothing is filled in. `align_series` keeps the months
    all of them share.

    Args:
        symbols: one symbol or a sequence of them, from `STOCK_SYMBOLS`.

    Returns:
        `{symbol: TimeSeries(dates: datetime64[M] (months,), values: (months, 1), names=(symbol,))}`
        in the order of `symbols`.
    """
    symbols = (symbols,) if isinstance(symbols, str) else tuple(symbols)
    unknown = [symbol for symbol in symbols if symbol not in STOCK_SYMBOLS]
    if not symbols or unknown or len(set(symbols)) != len(symbols):
        raise ValueError(f"symbols must be distinct names from {STOCK_SYMBOLS}, got {symbols!r}")
    frame = _import_local_data().stocks()
    series = {}
    for symbol in symbols:
        rows = frame[frame["symbol"] == symbol].sort_values("date")
        series[symbol] = TimeSeries(
            dates=rows["date"].to_numpy().astype("datetime64[M]"),
            values=rows["price"].to_numpy(np.float64)[:, None],
            names=(symbol,),
        )
    return series


def load_seattle_temperatures(interpolate_missing: bool = False) -> TimeSeries:
    """Hourly temperatures (°F) in Seattle through 2010, from `vega_datasets`' `seattle_temps`.

    The file has 8759 hours, not 8760: the hour 2010-03-14 03:00 (the switch to daylight
    saving time) is missing, so one step of the raw series spans two hours.

    Args:
        interpolate_missing: insert the missing hour, linearly interpolated between its
            neighbours, so that the series is a regular hourly grid of 8760 steps.

    Returns:
        `TimeSeries(dates: datetime64[h] (hours,), values: (hours, 1), names=("temperature",))`.
    """
    frame = _import_local_data().seattle_temps().sort_values("date")
    dates = frame["date"].to_numpy().astype("datetime64[h]")
    values = frame["temp"].to_numpy(np.float64)
    if interpolate_missing:
        grid = np.arange(dates[0], dates[-1] + np.timedelta64(1, "h"), dtype="datetime64[h]")
        values = np.interp((grid - grid[0]).astype(np.int64), (dates - grid[0]).astype(np.int64), values)
        dates = grid
    return TimeSeries(dates=dates, values=values[:, None], names=("temperature",))


def align_series(series: Mapping[str, TimeSeries] | Sequence[TimeSeries]) -> TimeSeries:
    """Keeps the dates every series has and stacks their features, in order.

    `align_series(lj.load_stock_prices())` gives the 68 months from August 2004 on, with the
    five prices as features `(68, 5)`.
    """
    parts = list(series.values()) if isinstance(series, Mapping) else list(series)
    if not parts or not all(isinstance(part, TimeSeries) for part in parts):
        raise ValueError("series must be a non-empty mapping or sequence of TimeSeries")
    common = parts[0].dates
    for part in parts[1:]:
        common = np.intersect1d(common, part.dates)
    values = [part.values[np.searchsorted(part.dates, common)] for part in parts]
    names = tuple(name for part in parts for name in part.names)
    return TimeSeries(dates=common, values=np.concatenate(values, axis=1), names=names)


def chronological_split(
    series: ArrayLike | TimeSeries, fractions: Sequence[float] = (0.7, 0.15, 0.15)
) -> tuple[Any, ...]:
    """Cuts `series` along time into consecutive parts, earliest first: no shuffling.

    Part `k` ends at step `round(T · (fractions[0] + ... + fractions[k]))`. Split before
    windowing (`make_windows` on each part), so that no window spans two parts.

    Args:
        series: shape `(T, ...)`, or a `TimeSeries` (dates are split with the values).
        fractions: two or more positive fractions summing to 1, e.g. train/validation/test.

    Returns:
        One part per fraction, of the type of `series`: `train, validation, test = ...`.
    """
    fractions = tuple(float(fraction) for fraction in fractions)
    if len(fractions) < 2 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be two or more positive numbers summing to 1, got {fractions}")
    shape = np.shape(series.values if isinstance(series, TimeSeries) else series)
    steps = shape[0] if shape else 0
    ends = [int(np.floor(steps * total + 0.5)) for total in np.cumsum(fractions[:-1])] + [steps]
    starts = [0, *ends[:-1]]
    if any(end <= start for start, end in zip(starts, ends, strict=True)):
        sizes = [end - start for start, end in zip(starts, ends, strict=True)]
        raise ValueError(f"series of {steps} steps is too short for fractions {fractions}: parts of {sizes} steps")
    bounds = list(zip(starts, ends, strict=True))
    if isinstance(series, TimeSeries):
        return tuple(TimeSeries(series.dates[s:e], series.values[s:e], series.names) for s, e in bounds)
    return tuple(series[s:e] for s, e in bounds)


def make_windows(series: ArrayLike | TimeSeries, window: int, horizon: int = 1, time_major: bool = True) -> Batch:
    """Every window of `window` consecutive steps, with the value `horizon` steps after its last.

    Window `n` holds steps `n .. n + window - 1`; its target is step `n + window - 1 + horizon`
    (`horizon=1`: the next step). There are `N = T - window - horizon + 1` windows.

    Args:
        series: shape `(T, features)` or `(T,)` (one feature), or a `TimeSeries`.
        window: input steps per window.
        horizon: how far after the window the target lies; at least 1.
        time_major: `xs` of shape `(window, N, features)`, ready for `lj.unroll`; `False` gives
            `(N, window, features)` (convenient for shuffling, swap axes 0 and 1 before unrolling).

    Returns:
        `Batch(xs, targets: (N, features))`; select a feature as `targets[:, k]`.
    """
    window = check_positive_int("window", window)
    horizon = check_positive_int("horizon", horizon)
    values = _values(series, "series")
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise ValueError(f"series must have shape (T,) or (T, features), got shape {tuple(values.shape)}")
    count = values.shape[0] - window - horizon + 1
    if count < 1:
        raise ValueError(f"series of {values.shape[0]} steps is too short for window={window} and "
                         f"horizon={horizon}: it needs at least window + horizon = {window + horizon} steps")
    return _windows(values, window, horizon, bool(time_major))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _windows(values: jax.Array, window: int, horizon: int, time_major: bool) -> Batch:
    starts = jnp.arange(values.shape[0] - window - horizon + 1)
    xs = values[starts[:, None] + jnp.arange(window)[None, :]]  # (N, window, features)
    targets = values[starts + window - 1 + horizon]
    return Batch(xs=jnp.swapaxes(xs, 0, 1) if time_major else xs, targets=targets)


def forecasting_task(
    series: ArrayLike | TimeSeries,
    window: int,
    horizon: int = 1,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    method: str = "standard",
    time_major: bool = True,
) -> ForecastingTask:
    """Windowed forecasting: split chronologically, fit the normaliser on train, window each part.

    Args:
        series: shape `(T, features)` or `(T,)`, or a `TimeSeries`.
        window, horizon, time_major: as in `make_windows`.
        fractions: train, validation and test fractions, as in `chronological_split`.
        method: `Normalizer.fit` method, `"standard"` or `"minmax"`.

    Returns:
        `ForecastingTask(train, validation, test, normalizer)`; every part holds only windows
        and targets from its own stretch of time, normalised with training statistics.
    """
    if len(fractions) != 3:
        raise ValueError(f"fractions must be (train, validation, test), got {tuple(fractions)}")
    parts = chronological_split(series, fractions)
    normalizer = Normalizer.fit(parts[0], method)
    batches = []
    for name, part in zip(("train", "validation", "test"), parts, strict=True):
        try:
            batches.append(make_windows(normalizer.transform(_values(part, "series")), window, horizon, time_major))
        except ValueError as error:
            raise ValueError(f"the {name} part: {error}") from error
    return ForecastingTask(*batches, normalizer=normalizer)


@functools.partial(jax.jit, static_argnums=1)
def _fit(values: jax.Array, method: str) -> tuple[jax.Array, jax.Array]:
    axes = tuple(range(values.ndim - 1)) if values.ndim > 1 else None
    if method == "standard":
        shift, scale = jnp.mean(values, axis=axes), jnp.std(values, axis=axes)
    else:
        shift = jnp.min(values, axis=axes)
        scale = jnp.max(values, axis=axes) - shift
    return shift, jnp.where(scale > 0, scale, jnp.ones_like(scale))


def _values(series: ArrayLike | TimeSeries, name: str) -> jax.Array:
    values = jnp.asarray(series.values if isinstance(series, TimeSeries) else series)
    if values.ndim == 0 or values.shape[0] == 0:
        raise ValueError(f"{name} must have at least one step, got shape {tuple(values.shape)}")
    if not jnp.issubdtype(values.dtype, jnp.floating):
        values = values.astype(jnp.result_type(float))
    return values
