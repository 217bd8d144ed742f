"""Pins the public API: a change to `lj.__all__` must be deliberate."""

import lstmjax as lj

PUBLIC_API = {
    "ADDING_BASELINE_MSE", "ADDING_SOLVED_ERROR", "Batch", "adding_problem", "Bidirectional", "Cell", "GateSaturation", "GradientNorms", "LogDecayFit", "StateSensitivity",
    "distance_to_fraction", "fit_log_decay", "forget_gate_gain", "gate_saturation", "gradient_norms_over_time",
    "state_sensitivity", "step_jacobians", "SequenceBatch", "copy_memory", "copy_memory_baseline", "temporal_order",
    "statquest_companies", "TEMPORAL_ORDER_SYMBOLS", "TEMPORAL_ORDER_CLASSES", "TEMPORAL_ORDER_BASELINE_ACCURACY",
    "TEMPORAL_ORDER_BASELINE_CROSS_ENTROPY", "TimeSeries", "Normalizer", "ForecastingTask", "STOCK_SYMBOLS",
    "load_stock_prices", "load_seattle_temperatures", "align_series", "chronological_split", "make_windows",
    "forecasting_task", "CheckpointError", "CheckpointNotFoundError", "Checkpoints", "restore_checkpoint",
    "save_checkpoint", "EarlyStopping", "batches_from_key", "fit", "batch_sharding", "data_parallel_mesh", "replicate",
    "shard_batch", "TorchModel", "from_torch", "from_torch_state", "to_torch", "to_torch_state", "StepMetrics", "TrainState", "init_train_state", "make_train_step", "GRUInternals", "GRUParams", "INIT_PRESETS", "InitScheme", "LSTMInternals",
    "LSTMParams", "LSTMState", "RNNInternals", "RNNParams", "gru", "init_bidirectional", "init_layers",
    "init_preset", "lstm", "rnn", "unroll", "unroll_bidirectional", "unroll_layers", "unroll_with_internals",
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
