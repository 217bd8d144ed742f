"""Pins the public API: a change to `lj.__all__` must be deliberate."""

import lstmjax as lj

PUBLIC_API = {
    "ADDING_BASELINE_MSE", "ADDING_SOLVED_ERROR", "Batch", "Bidirectional", "Cell", "CheckpointError",
    "CheckpointNotFoundError", "Checkpoints", "EarlyStopping", "ForecastingTask", "GRUInternals", "GRUParams",
    "GateSaturation", "GradientNorms", "INIT_PRESETS", "InitScheme", "LSTMInternals", "LSTMParams", "LSTMState",
    "LogDecayFit", "NativeStatus",
    "Normalizer", "RNNInternals", "RNNParams", "STOCK_SYMBOLS", "SequenceBatch", "StateSensitivity",
    "StepMetrics", "TEMPORAL_ORDER_BASELINE_ACCURACY", "TEMPORAL_ORDER_BASELINE_CROSS_ENTROPY",
    "TEMPORAL_ORDER_CLASSES", "TEMPORAL_ORDER_SYMBOLS", "TimeSeries", "TorchModel", "TrainState", "adding_problem",
    "align_series", "batch_sharding", "batches_from_key", "chronological_split", "copy_memory",
    "copy_memory_baseline", "data_parallel_mesh", "distance_to_fraction", "fit", "fit_log_decay",
    "forecasting_task", "forget_gate_gain", "from_torch", "from_torch_state", "gate_saturation",
    "gradient_norms_over_time", "gru", "init_bidirectional", "init_layers", "init_preset", "init_train_state",
    "load_seattle_temperatures", "load_stock_prices", "lstm", "make_train_step", "make_windows", "map_seeds",
    "native_kernel_status",
    "replicate",
    "restore_checkpoint", "rnn", "save_checkpoint", "shard_batch", "state_sensitivity", "statquest_companies",
    "step_jacobians", "temporal_order", "to_torch", "to_torch_state", "tune_cpu_allocator", "unroll",
    "unroll_bidirectional", "unroll_layers", "unroll_with_internals",
}


def test_all_is_pinned():
    assert set(lj.__all__) == PUBLIC_API
    assert len(lj.__all__) == len(PUBLIC_API)


def test_every_public_name_exists_and_is_documented():
    for name in lj.__all__:
        value = getattr(lj, name)
        if callable(value):
            assert value.__doc__ and value.__doc__.strip(), f"lj.{name} has no docstring"


def test_lstm_params_layout():
    assert lj.LSTMParams._fields == ("w_x", "w_h", "b")
    assert lj.LSTMState._fields == ("h", "c")
    assert lj.Cell._fields[:3] == ("init", "initial_state", "step")
