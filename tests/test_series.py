"""Real series from vega_datasets, chronological splits, training-only normalisation and windows."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstmjax._series import (
    STOCK_SYMBOLS,
    ForecastingTask,
    Normalizer,
    TimeSeries,
    align_series,
    chronological_split,
    forecasting_task,
    load_seattle_temperatures,
    load_stock_prices,
    make_windows,
)


def needs_vega():
    """The loaders' tests skip where vega_datasets (the `experiments` extra) is not installed."""
    pytest.importorskip("vega_datasets")


@pytest.fixture(scope="module")
def stocks():
    needs_vega()
    return load_stock_prices()


@pytest.fixture(scope="module")
def temperatures():
    needs_vega()
    return load_seattle_temperatures()


# -------------------------------------------------------------------------------------------- loaders


def test_stock_prices(stocks):
    assert tuple(stocks) == STOCK_SYMBOLS == ("MSFT", "AMZN", "IBM", "GOOG", "AAPL")
    for symbol, series in stocks.items():
        assert series.names == (symbol,) and series.values.shape == (len(series.dates), 1)
        assert series.dates.dtype == np.dtype("datetime64[M]")
        np.testing.assert_array_equal(np.diff(series.dates).astype(int), 1)  # every month, no gaps
        assert series.dates[-1] == np.datetime64("2010-03")
        assert np.all(series.values > 0)
        start, months = (np.datetime64("2004-08"), 68) if symbol == "GOOG" else (np.datetime64("2000-01"), 123)
        assert series.dates[0] == start and len(series.dates) == months
    # Values straight from the package's CSV.
    assert stocks["MSFT"].values[0, 0] == 39.81 and stocks["MSFT"].values[1, 0] == 36.35
    assert stocks["AAPL"].values[-1, 0] == 223.02 and stocks["GOOG"].values[0, 0] == 102.37


def test_stock_symbols_argument():
    needs_vega()
    assert tuple(load_stock_prices(["GOOG", "IBM"])) == ("GOOG", "IBM")
    assert tuple(load_stock_prices("IBM")) == ("IBM",)
    with pytest.raises(ValueError, match=r"symbols must be distinct names from \('MSFT'.*got \('TSLA',\)"):
        load_stock_prices(["TSLA"])
    with pytest.raises(ValueError, match="symbols must be distinct"):
        load_stock_prices(["IBM", "IBM"])


def test_align_series_keeps_the_common_months(stocks):
    aligned = align_series(stocks)
    assert aligned.names == STOCK_SYMBOLS and aligned.values.shape == (68, 5)
    assert aligned.dates[0] == np.datetime64("2004-08") and aligned.dates[-1] == np.datetime64("2010-03")
    np.testing.assert_array_equal(aligned.values[:, 0], stocks["MSFT"].values[-68:, 0])
    np.testing.assert_array_equal(aligned.values[:, 3], stocks["GOOG"].values[:, 0])
    alone = align_series([stocks["IBM"]])
    np.testing.assert_array_equal(alone.dates, stocks["IBM"].dates)
    np.testing.assert_array_equal(alone.values, stocks["IBM"].values)
    with pytest.raises(ValueError, match="series must be a non-empty mapping or sequence of TimeSeries"):
        align_series([])


def test_seattle_temperatures(temperatures):
    dates, values = temperatures.dates, temperatures.values
    assert temperatures.names == ("temperature",) and values.shape == (8759, 1)
    assert dates.dtype == np.dtype("datetime64[h]")
    assert dates[0] == np.datetime64("2010-01-01T00") and dates[-1] == np.datetime64("2010-12-31T23")
    steps = np.diff(dates).astype(int)
    # One hour is missing from the file: 2010-03-14 03:00, the switch to daylight saving time.
    np.testing.assert_array_equal(np.flatnonzero(steps != 1), [1730])
    assert dates[1730] == np.datetime64("2010-03-14T02") and dates[1731] == np.datetime64("2010-03-14T04")
    assert values[0, 0] == 39.4 and 30 < values.min() and values.max() < 80  # °F
    regular = load_seattle_temperatures(interpolate_missing=True)
    assert regular.values.shape == (8760, 1)
    np.testing.assert_array_equal(np.diff(regular.dates).astype(int), 1)
    assert regular.dates[1731] == np.datetime64("2010-03-14T03")
    assert regular.values[1731, 0] == pytest.approx((values[1730, 0] + values[1731, 0]) / 2)
    np.testing.assert_array_equal(np.delete(regular.values, 1731, axis=0), values)


def test_missing_vega_datasets_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vega_datasets", None)  # makes the import fail
    for load in (load_stock_prices, load_seattle_temperatures):
        with pytest.raises(ImportError, match=r"pip install vega_datasets .*lstmjax\[experiments\]"):
            load()


# ------------------------------------------------------------------------------------------- windows


def test_make_windows_exact_values():
    series = np.arange(20.0).reshape(10, 2)  # step t holds (2t, 2t + 1)
    xs, targets = make_windows(series, window=3, horizon=2)
    assert xs.shape == (3, 6, 2) and targets.shape == (6, 2)  # N = 10 - 3 - 2 + 1
    for n in range(6):
        np.testing.assert_array_equal(xs[:, n], series[n:n + 3])
        np.testing.assert_array_equal(targets[n], series[n + 3 + 2 - 1])
    batch_major, same_targets = make_windows(series, window=3, horizon=2, time_major=False)
    np.testing.assert_array_equal(batch_major, jnp.swapaxes(xs, 0, 1))
    np.testing.assert_array_equal(same_targets, targets)
    one_feature = make_windows(np.arange(5.0), window=4)
    assert one_feature.xs.shape == (4, 1, 1) and one_feature.targets.tolist() == [[4.0]]


def test_make_windows_jit_equals_eager():
    series = jax.random.normal(jax.random.PRNGKey(0), (50, 3))
    eager = make_windows(series, 7, 3)
    jitted = jax.jit(make_windows, static_argnums=(1, 2, 3))(series, 7, 3, True)
    np.testing.assert_array_equal(jitted.xs, eager.xs)
    np.testing.assert_array_equal(jitted.targets, eager.targets)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"window": 0}, r"window must be a positive integer, got 0"),
    ({"window": 2, "horizon": 0}, r"horizon must be a positive integer, got 0"),
    ({"window": 9, "horizon": 2}, r"series of 10 steps is too short for window=9 and horizon=2: .* 11 steps"),
    ({"series": np.zeros((10, 2, 2)), "window": 2}, r"series must have shape \(T,\) or \(T, features\)"),
])
def test_make_windows_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_windows(**{"series": np.zeros((10, 2)), **kwargs})


# -------------------------------------------------------------------------------------------- splits


def test_chronological_split_sizes_and_order():
    series = np.arange(100.0)
    train, validation, test = chronological_split(series)
    assert (len(train), len(validation), len(test)) == (70, 15, 15)
    np.testing.assert_array_equal(np.concatenate([train, validation, test]), series)
    assert [len(part) for part in chronological_split(np.arange(7.0), (0.5, 0.5))] == [4, 3]
    sizes = [len(part) for part in chronological_split(np.arange(1001.0), (0.6, 0.2, 0.2))]
    assert sum(sizes) == 1001 and sizes == [601, 200, 200]


def test_chronological_split_of_a_time_series(stocks):
    parts = chronological_split(stocks["IBM"])
    assert all(isinstance(part, TimeSeries) and part.names == ("IBM",) for part in parts)
    for earlier, later in zip(parts, parts[1:], strict=False):
        assert earlier.dates[-1] < later.dates[0]  # train entirely before validation before test
    np.testing.assert_array_equal(np.concatenate([part.values for part in parts]), stocks["IBM"].values)
    np.testing.assert_array_equal(np.concatenate([part.dates for part in parts]), stocks["IBM"].dates)


@pytest.mark.parametrize("series, fractions, pattern", [
    (np.arange(10.0), (0.7, 0.2), r"fractions must be two or more positive numbers summing to 1, got \(0.7, 0.2\)"),
    (np.arange(10.0), (1.0,), r"fractions must be two or more"),
    (np.arange(10.0), (1.2, -0.2), r"fractions must be two or more"),
    (np.arange(3.0), (0.7, 0.15, 0.15), r"series of 3 steps is too short for fractions .*: parts of \[2, 1, 0\]"),
])
def test_chronological_split_bad_arguments(series, fractions, pattern):
    with pytest.raises(ValueError, match=pattern):
        chronological_split(series, fractions)


# ------------------------------------------------------------------------------------- normalisation


def test_normalizer_standard_and_minmax():
    train = np.array([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0]])  # second feature constant
    standard = Normalizer.fit(train)
    np.testing.assert_allclose(standard.shift, [3.0, 10.0])
    np.testing.assert_allclose(standard.scale, [np.std([1.0, 3.0, 5.0]), 1.0])  # constant: scale 1
    scaled = standard.transform(train)
    np.testing.assert_allclose(scaled.mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(scaled[:, 0].std(), 1.0, rtol=1e-6)
    minmax = Normalizer.fit(train, method="minmax")
    np.testing.assert_allclose(minmax.transform(train)[:, 0], [0.0, 0.5, 1.0])
    new = np.array([[7.0, 11.0]])
    for normalizer in (standard, minmax):
        np.testing.assert_allclose(normalizer.inverse(normalizer.transform(new)), new, rtol=1e-6)
    series = TimeSeries(np.arange(3).astype("datetime64[h]"), train, ("x", "y"))
    np.testing.assert_array_equal(Normalizer.fit(series).shift, standard.shift)
    normalized = standard.transform(series)
    assert isinstance(normalized, TimeSeries) and normalized.names == ("x", "y")
    np.testing.assert_array_equal(normalized.dates, series.dates)
    np.testing.assert_allclose(normalized.values, scaled)
    np.testing.assert_allclose(standard.inverse(normalized).values, train, rtol=1e-6)
    with pytest.raises(ValueError, match=r"method must be one of \('standard', 'minmax'\), got 'zscore'"):
        Normalizer.fit(train, method="zscore")


def test_normalizer_passes_through_jit():
    normalizer = Normalizer.fit(np.arange(12.0).reshape(6, 2))
    x = np.ones((4, 2))
    np.testing.assert_allclose(jax.jit(lambda n, x: n.transform(x))(normalizer, x), normalizer.transform(x))


def test_forecasting_task_uses_training_statistics_only():
    steps = 200
    series = np.stack([np.arange(steps, dtype=float), np.sin(np.arange(steps) / 5.0)], axis=1)
    task = forecasting_task(series, window=10, horizon=2)
    assert isinstance(task, ForecastingTask)
    train = series[:140]
    np.testing.assert_allclose(task.normalizer.shift, train.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(task.normalizer.scale, train.std(0), rtol=1e-6)
    # Changing the validation and test parts changes neither the normaliser nor the train batch.
    perturbed = series.copy()
    perturbed[140:] *= 100.0
    other = forecasting_task(perturbed, window=10, horizon=2)
    np.testing.assert_array_equal(other.normalizer.shift, task.normalizer.shift)
    np.testing.assert_array_equal(other.normalizer.scale, task.normalizer.scale)
    np.testing.assert_array_equal(other.train.xs, task.train.xs)
    np.testing.assert_array_equal(other.train.targets, task.train.targets)


def test_forecasting_task_windows_never_cross_splits():
    series = np.arange(200.0)  # each value is its own time index
    task = forecasting_task(series, window=10, horizon=3, method="minmax")
    bounds = ((0, 140), (140, 170), (170, 200))
    for batch, (start, end) in zip((task.train, task.validation, task.test), bounds, strict=True):
        times = np.asarray(task.normalizer.inverse(batch.xs))[..., 0]  # (window, N)
        targets = np.asarray(task.normalizer.inverse(batch.targets))[:, 0]
        assert times.shape == (10, end - start - 12)
        np.testing.assert_allclose(times[0], np.arange(start, end - 12), atol=1e-3)  # first step of each window
        np.testing.assert_allclose(targets, times[-1] + 3, atol=1e-3)
        assert targets.max() == pytest.approx(end - 1, abs=1e-3)  # the last target is the part's last step
    np.testing.assert_allclose(task.train.xs.min(), 0.0)
    assert float(task.train.targets.max()) == pytest.approx(1.0)  # min-max on the training part


def test_forecasting_task_on_real_data(temperatures):
    task = forecasting_task(temperatures, window=24, horizon=1)
    total = sum(batch.targets.shape[0] for batch in (task.train, task.validation, task.test))
    assert total == 8759 - 3 * 24
    assert task.train.xs.shape[::2] == (24, 1) and task.train.xs.dtype == jnp.float32
    assert abs(float(task.train.targets.mean())) < 0.05


def test_forecasting_task_reports_the_short_part():
    with pytest.raises(ValueError, match=r"the validation part: series of 15 steps is too short for window=20"):
        forecasting_task(np.arange(100.0), window=20, fractions=(0.8, 0.15, 0.05))
    with pytest.raises(ValueError, match=r"fractions must be \(train, validation, test\)"):
        forecasting_task(np.arange(100.0), window=5, fractions=(0.5, 0.5))
