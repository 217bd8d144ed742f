"""The benchmark's configuration: `BenchmarkConfig` (the command line of `python -m experiments.benchmark`)
and its grid points `Point`, parsed from `BxTxDxH` by `parse_point`."""

from __future__ import annotations

import ast
import dataclasses
import math
from typing import Any, Literal, NamedTuple

from experiments import _benchmark_anchors as anchors
from experiments._config_checks import check_int

LSTMJAX_VARIANTS = ("xla", "lengths", "cudnn")
"""The extra lstmjax rows `--lstmjax-variants` chooses from (`experiments.benchmark.lstmjax_variants`)."""


class Point(NamedTuple):
    """One grid point: batch size B, sequence length T, input size D, hidden units H."""

    batch_size: int
    length: int
    input_size: int
    hidden_size: int

    @property
    def label(self) -> str:
        return f"B={self.batch_size} T={self.length} D={self.input_size} H={self.hidden_size}"


def parse_point(text: str) -> Point:
    """`"32x100x32x128"` (BxTxDxH) -> `Point(32, 100, 32, 128)`; `ValueError` otherwise."""
    parts = text.lower().split("x")
    try:
        values = [int(part) for part in parts]
    except ValueError:
        values = []
    if len(values) != 4 or min(values) < 1:
        raise ValueError(f"a grid point is BxTxDxH with four positive integers, such as 32x100x32x128; got {text!r}")
    return Point(*values)


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """Time lstmjax against Flax, Equinox, Haiku and PyTorch on the same LSTM, weights and data.

    Attributes:
        points: grid points BxTxDxH (batch, sequence length, input size, hidden units).
        anchors: the other libraries to time (flax, equinox, haiku, torch, torch_no_onednn; jax_cudnn on a GPU);
            lstmjax always runs.
        warmup: untimed calls of each library before timing; the first compiles and is checked.
        repeats: timed rounds (each library called once per round); medians are reported.
        seed: PRNG seed of the weights and inputs.
        rtol: largest allowed difference of each library's loss and gradient leaves from lstmjax's,
            relative to the largest magnitude of lstmjax's leaf.
        on_mismatch: what a library outside rtol does: stop the run (AnchorMismatchError), or drop that library
            at that point (reported in the point's errors, not timed) and go on.
        torch_threads: torch.set_num_threads for PyTorch; default: the cores this process may use.
        gpu_precision: on a GPU, the precision of every library's float32 matrix products: float32 (JAX's
            "highest", PyTorch's TF32 switches off) or tf32 (TF32 allowed in all); ignored on a CPU.
        tune_allocator: call lj.tune_cpu_allocator() first (glibc: a step's temporaries are kept for the next
            call instead of page-faulted in again); it applies to every library in the process.
        pause_ms: sleep before each timed call, so that the worker threads of the previous call (XLA's,
            PyTorch's OpenMP), which spin for a while after it, do not steal the cores of the next one.
        peak_sizes: N of the N x N float32 matmuls timed for the machine's peak GFLOP/s.
        memory_lengths: sequence lengths T of the memory measurement (compiled, never run).
        memory_batch_size: batch size of the memory measurement.
        memory_input_size: input size of the memory measurement.
        memory_hidden_size: hidden units of the memory measurement.
        memory_anchors: JAX libraries measured for memory besides lstmjax (flax, equinox, haiku, jax_cudnn; one
            that cannot run here is left out), or none.
        remat_values: values v for lj.unroll(..., remat=v), as Python literals, if lj.unroll has a remat
            parameter; default: True.
        lstmjax_variants: extra lstmjax rows, on both workloads: xla (the LSTM's native CPU kernel switched
            off: lstmjax[xla]'s ratio is the kernel's speed-up), lengths (lengths=full(B, T): the cost
            of the variable-length path) and cudnn (on a GPU: lj.unroll with its opt-in cuDNN path,
            LSTMJAX_CUDNN=1); or none.
        results_dir: root folder; the run is written to <results_dir>/benchmark/<run>/.
        run: name of the run's folder; default: the UTC time the run starts.
        overwrite: replace an existing run folder of the same name instead of refusing.
        progress: show a progress bar (only when stderr is a terminal).
    """

    points: tuple[str, ...] = ("32x100x32x128", "32x1000x32x32", "32x100x32x256", "32x50x32x512")
    anchors: tuple[str, ...] = anchors.ANCHORS
    warmup: int = 2
    repeats: int = 10
    seed: int = 0
    rtol: float = 1e-4
    on_mismatch: Literal["stop", "drop"] = "stop"
    torch_threads: int | None = None
    gpu_precision: Literal["float32", "tf32"] = "float32"
    tune_allocator: bool = False
    pause_ms: float = 20.0
    peak_sizes: tuple[int, ...] = (1024, 2048)
    memory_lengths: tuple[int, ...] = (1000, 10000, 100000)
    memory_batch_size: int = 8
    memory_input_size: int = 32
    memory_hidden_size: int = 128
    memory_anchors: tuple[str, ...] = ("flax", "equinox", "haiku", "jax_cudnn")
    remat_values: tuple[str, ...] = ()
    lstmjax_variants: tuple[str, ...] = LSTMJAX_VARIANTS
    results_dir: str = "results"
    run: str | None = None
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        for name in ("warmup", "repeats", "memory_batch_size", "memory_input_size", "memory_hidden_size"):
            check_int(name, getattr(self, name), 1)
        check_int("seed", self.seed + 1, 1)
        if self.gpu_precision not in anchors.GPU_PRECISIONS:
            raise ValueError(f"gpu_precision must be one of {', '.join(anchors.GPU_PRECISIONS)}, "
                             f"got {self.gpu_precision!r}")
        if self.torch_threads is not None:
            check_int("torch_threads", self.torch_threads, 1)
        for name in ("peak_sizes", "memory_lengths"):
            for value in getattr(self, name):
                check_int(name, value, 1)
        if not self.points:
            raise ValueError("points must name at least one grid point")
        for point in self.points:
            parse_point(point)
        unknown = [a for a in self.anchors if a not in anchors.ANCHORS]
        if unknown:
            raise ValueError(f"anchors must be among {anchors.ANCHORS}, got {unknown}")
        memory = [a for a in self.memory_anchors if a != "none"]
        if [a for a in memory if a not in anchors.JAX_ANCHORS] or (len(memory) < len(self.memory_anchors) and memory):
            raise ValueError(f"memory_anchors must be among {tuple(anchors.JAX_ANCHORS)}, or just none; "
                             f"got {self.memory_anchors}")
        if isinstance(self.pause_ms, bool) or not isinstance(self.pause_ms, (int, float)) or not (
                0 <= self.pause_ms < math.inf):
            raise ValueError(f"pause_ms must be a finite number >= 0, got {self.pause_ms!r}")
        if isinstance(self.rtol, bool) or not isinstance(self.rtol, (int, float)) or not 0 < self.rtol < 1:
            raise ValueError(f"rtol must be a number in (0, 1), got {self.rtol!r}")
        for value in self.remat_values:
            parse_literal("remat_values", value)
        variants = [v for v in self.lstmjax_variants if v != "none"]
        unknown = [v for v in variants if v not in LSTMJAX_VARIANTS]
        if unknown or (variants and len(variants) < len(self.lstmjax_variants)):
            raise ValueError(
                f"lstmjax_variants (--lstmjax-variants) must be among {', '.join(LSTMJAX_VARIANTS)}, or just none; "
                f"got {unknown[0] if unknown else 'none'!r} in {' '.join(map(str, self.lstmjax_variants))!r}")


def parse_literal(name: str, text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"{name} must hold Python literals such as True or 10, got {text!r}") from None
