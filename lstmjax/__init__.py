"""lstmjax: long short-term memory networks (and their baselines) as pure JAX functions.

A cell is a tuple of pure functions (`init`, `initial_state`, `step`, ...); `lj.unroll` runs it
over time with `lax.scan` and shared weights. Everything composes with `jit`, `vmap` and `grad`.

    import jax, lstmjax as lj
    cell = lj.lstm(hidden_size=64)
    params = cell.init(jax.random.PRNGKey(0), input_size=3)
    final_state, ys = lj.unroll(cell, params, xs)      # xs: (T, ..., 3) -> ys: (T, ..., 64)
"""

from lstmjax._allocator import tune_cpu_allocator
from lstmjax._cell import Cell
from lstmjax._checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    Checkpoints,
    restore_checkpoint,
    save_checkpoint,
)
from lstmjax._diagnostics import (
    GateSaturation,
    GradientNorms,
    LogDecayFit,
    StateSensitivity,
    distance_to_fraction,
    fit_log_decay,
    forget_gate_gain,
    gate_saturation,
    gradient_norms_over_time,
    state_sensitivity,
    step_jacobians,
)
from lstmjax._fit import EarlyStopping, batches_from_key, fit
from lstmjax._gru import GRUInternals, GRUParams, gru
from lstmjax._initializers import PRESETS as INIT_PRESETS
from lstmjax._initializers import InitScheme
from lstmjax._initializers import preset as init_preset
from lstmjax._layers import Bidirectional, init_bidirectional, init_layers, unroll_bidirectional, unroll_layers
from lstmjax._lstm import LSTMInternals, LSTMParams, LSTMState, lstm
from lstmjax._native_build import NativeStatus, native_kernel_status
from lstmjax._parallel import batch_sharding, data_parallel_mesh, replicate, shard_batch
from lstmjax._rnn import RNNInternals, RNNParams, rnn
from lstmjax._seeds import map_seeds
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
from lstmjax._tasks import (
    ADDING_BASELINE_MSE,
    ADDING_SOLVED_ERROR,
    TEMPORAL_ORDER_BASELINE_ACCURACY,
    TEMPORAL_ORDER_BASELINE_CROSS_ENTROPY,
    TEMPORAL_ORDER_CLASSES,
    TEMPORAL_ORDER_SYMBOLS,
    Batch,
    SequenceBatch,
    adding_problem,
    copy_memory,
    copy_memory_baseline,
    statquest_companies,
    temporal_order,
)
from lstmjax._torch_interop import TorchModel, from_torch, from_torch_state, to_torch, to_torch_state
from lstmjax._training import StepMetrics, TrainState, init_train_state, make_train_step
from lstmjax._unroll import unroll, unroll_with_internals

__version__ = "0.1.0"

__all__ = [
    "ADDING_BASELINE_MSE",
    "ADDING_SOLVED_ERROR",
    "Batch",
    "Bidirectional",
    "Cell",
    "CheckpointError",
    "CheckpointNotFoundError",
    "Checkpoints",
    "EarlyStopping",
    "ForecastingTask",
    "GRUInternals",
    "GRUParams",
    "GateSaturation",
    "GradientNorms",
    "INIT_PRESETS",
    "InitScheme",
    "LSTMInternals",
    "LSTMParams",
    "LSTMState",
    "LogDecayFit",
    "NativeStatus",
    "Normalizer",
    "RNNInternals",
    "RNNParams",
    "STOCK_SYMBOLS",
    "SequenceBatch",
    "StateSensitivity",
    "StepMetrics",
    "TEMPORAL_ORDER_BASELINE_ACCURACY",
    "TEMPORAL_ORDER_BASELINE_CROSS_ENTROPY",
    "TEMPORAL_ORDER_CLASSES",
    "TEMPORAL_ORDER_SYMBOLS",
    "TimeSeries",
    "TorchModel",
    "TrainState",
    "adding_problem",
    "align_series",
    "batch_sharding",
    "batches_from_key",
    "chronological_split",
    "copy_memory",
    "copy_memory_baseline",
    "data_parallel_mesh",
    "distance_to_fraction",
    "fit",
    "fit_log_decay",
    "forecasting_task",
    "forget_gate_gain",
    "from_torch",
    "from_torch_state",
    "gate_saturation",
    "gradient_norms_over_time",
    "gru",
    "init_bidirectional",
    "init_layers",
    "init_preset",
    "init_train_state",
    "load_seattle_temperatures",
    "load_stock_prices",
    "lstm",
    "make_train_step",
    "make_windows",
    "map_seeds",
    "native_kernel_status",
    "replicate",
    "restore_checkpoint",
    "rnn",
    "save_checkpoint",
    "shard_batch",
    "state_sensitivity",
    "statquest_companies",
    "step_jacobians",
    "temporal_order",
    "to_torch",
    "to_torch_state",
    "tune_cpu_allocator",
    "unroll",
    "unroll_bidirectional",
    "unroll_layers",
    "unroll_with_internals",
]
