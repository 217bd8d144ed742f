"""The training step's memory, from XLA's compiled memory analysis: `jax.jit(step).lower(...).compile()
.memory_analysis()` gives the bytes of the compiled program's temporaries, arguments, outputs and aliased
buffers (outputs that reuse an argument's memory, counted once), and the peak is temp + argument + output
− alias. Nothing is run, so it is deterministic and costs only compilation, even at sequence lengths whose
run would take minutes."""

from __future__ import annotations

import jax
import jax.numpy as jnp

import lstmjax as lj
from experiments import _benchmark_anchors as anchors
from experiments._benchmark_config import BenchmarkConfig


def compiled_memory(anchor: anchors.JaxAnchor, params: lj.LSTMParams, xs: jax.ShapeDtypeStruct) -> dict[str, int]:
    """XLA's memory analysis of the compiled training step (nothing is run): bytes of temporaries,
    arguments, outputs, aliased (counted once) and `peak_bytes` = temp + argument + output - alias."""
    step = jax.jit(jax.value_and_grad(anchor.loss))
    stats = step.lower(anchor.convert(params), xs).compile().memory_analysis()
    if stats is None:
        raise RuntimeError(f"XLA gives no memory analysis on the {jax.default_backend()} backend")
    out = {name: int(getattr(stats, f"{name}_size_in_bytes"))
           for name in ("temp", "argument", "output", "alias", "generated_code")}
    out["peak_bytes"] = out["temp"] + out["argument"] + out["output"] - out["alias"]
    return out


def run_memory(config: BenchmarkConfig, variants: dict[str, anchors.JaxAnchor], libraries: dict, bar) -> dict:
    """`compiled_memory` at each of `config.memory_lengths` for lstmjax, then `variants` (lstmjax's extra
    rows to measure, by row name), then `config.memory_anchors`; a failure other than lstmjax's is
    recorded in `errors`, not raised. `bar` is updated once per length."""
    key = jax.random.PRNGKey(config.seed)
    params = lj.lstm(config.memory_hidden_size, init="pytorch").init(key, config.memory_input_size)
    measured = {"lstmjax": anchors.lstmjax_anchor(), **variants}
    for name in config.memory_anchors:
        if name != "none" and anchors.unavailable(name) is None:
            measured[name] = anchors.JAX_ANCHORS[name]()
    rows = {name: {"lengths": [], "peak_bytes": [], "temp_bytes": [], "argument_bytes": [], "output_bytes": [],
                   "alias_bytes": []} for name in measured}
    errors = {}
    for length in config.memory_lengths:
        xs = jax.ShapeDtypeStruct((length, config.memory_batch_size, config.memory_input_size), jnp.float32)
        for name, anchor in measured.items():
            if name in errors:
                continue
            try:
                stats = compiled_memory(anchor, params, xs)
            except Exception as error:
                if name == "lstmjax":
                    raise
                errors[name] = f"{type(error).__name__}: {error}"
                continue
            row = rows[name]
            row["lengths"].append(length)
            row["peak_bytes"].append(stats["peak_bytes"])
            for part in ("temp", "argument", "output", "alias"):
                row[f"{part}_bytes"].append(stats[part])
        bar.update()
    return {"batch_size": config.memory_batch_size, "input_size": config.memory_input_size,
            "hidden_size": config.memory_hidden_size, "lengths": list(config.memory_lengths),
            "labels": {name: libraries.get(name, {}).get("label", anchors.LABELS.get(name, name)) for name in measured},
            "rows": {name: row for name, row in rows.items() if row["lengths"]}, "errors": errors,
            "input_bytes": [4 * t * config.memory_batch_size * config.memory_input_size for t in config.memory_lengths],
            "output_bytes_per_step": 4 * config.memory_batch_size * config.memory_hidden_size}
