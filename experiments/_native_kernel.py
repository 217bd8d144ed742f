"""Building and calling `experiments/native/lstm_train_step.cpp`, a hand-fused C++ LSTM training step.

It is the measuring stick of `python -m experiments.native_ceiling`, not part of lstmjax: compiled
here with the machine's C++ compiler (`-O3 -march=native -fopenmp`, AVX-512), together with an
XLA FFI handler (`native/lstm_ffi.cc`, against the headers of `jax.ffi.include_dir()`), into a
temporary folder, and called either with `ctypes` on numpy arrays or inside `jax.jit` as a
custom call (`NativeLSTM.jax_loss_and_grads`), both in lstmjax's layout
(`w_x: (D, 4H)`, `w_h: (H, 4H)`, `b: (4H,)`, gates (i, f, g, o); `xs: (T, B, D)`; zero initial
memories). Its loss is `mean(ys ** 2)`, the benchmark's (`experiments._benchmark_anchors`).
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import lstmjax as lj
from lstmjax._native_build import HEADERS, cpu_flags

SOURCES = (pathlib.Path(__file__).with_name("native") / "lstm_train_step.cpp",
           pathlib.Path(__file__).with_name("native") / "lstm_ffi.cc")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17")
SIMD_HEADERS = HEADERS[0].parent  # lstm_simd.h, shared with lstmjax's own kernel


def unavailable(compiler: str = "g++") -> str | None:
    """`None` if the kernel can be built and run here, else why not."""
    if shutil.which(compiler) is None:
        return f"no C++ compiler {compiler!r} on the PATH"
    if "avx512f" not in cpu_flags():
        return "the kernel needs AVX-512 (avx512f), which this CPU does not report"
    return None


def check_shape(batch_size: int, hidden_size: int, threads: int) -> None:
    """Raises `ValueError` for sizes the kernel does not handle (it has no tails for odd sizes)."""
    if hidden_size < 32 or hidden_size % 32:
        raise ValueError(f"hidden_size must be a positive multiple of 32 for the native kernel, got {hidden_size}")
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 64:
        raise ValueError(f"threads must be in [1, 64] for the native kernel, got {threads}")
    if batch_size < 1 or batch_size % threads or (batch_size // threads) % 4:
        raise ValueError(f"batch_size must split into {threads} equal parts that are multiples of 4 for the "
                         f"native kernel, got {batch_size}")


def check_inputs(xs_shape: tuple[int, ...], param_shapes: lj.LSTMParams, threads: int) -> None:
    """Raises `ValueError` unless `xs` is `(T, B, D)` with T, B, D >= 1, the weights' shapes
    (`param_shapes`, an `lj.LSTMParams` of shapes) fit it, and `check_shape` accepts B, H and threads."""
    if len(xs_shape) != 3 or min(xs_shape) < 1:
        raise ValueError(f"xs must have shape (T, B, D) with T, B, D >= 1, got shape {tuple(xs_shape)}")
    _, batch_size, input_size = xs_shape
    hidden_size = param_shapes.w_h[0]
    check_shape(batch_size, hidden_size, threads)
    expected = {"w_x": (input_size, 4 * hidden_size), "w_h": (hidden_size, 4 * hidden_size), "b": (4 * hidden_size,)}
    for field, shape in expected.items():
        if tuple(getattr(param_shapes, field)) != shape:
            raise ValueError(f"params.{field} must have shape {shape}, got {tuple(getattr(param_shapes, field))}")


class NativeLSTM:
    """The compiled kernel. Use as a context manager (or call `close`) to remove the build folder.

    Not thread-safe: every call shares one workspace inside the library (and ctypes releases the
    GIL), so call it from one thread at a time."""

    def __init__(self, compiler: str = "g++"):
        reason = unavailable(compiler)
        if reason:
            raise RuntimeError(f"cannot build the native kernel: {reason}")
        self._folder = tempfile.mkdtemp(prefix="lstmjax_native_")
        try:
            self._build(compiler)
        except BaseException:  # the build folder goes whatever failed
            self.close()
            raise

    def _build(self, compiler: str) -> None:
        library = os.path.join(self._folder, "liblstm_train_step.so")
        command = [compiler, *FLAGS, f"-I{jax.ffi.include_dir()}", f"-I{SIMD_HEADERS}", "-o", library,
                   *map(str, SOURCES)]
        built = subprocess.run(command, capture_output=True, text=True)
        if built.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{built.stderr[-4000:]}")
        self.command = " ".join(command)
        self._library = ctypes.CDLL(library)
        pointer = ctypes.c_void_p
        self._library.lstm_train_step.argtypes = (
            [ctypes.c_int] * 4 + [pointer] * 4 + [ctypes.c_float, ctypes.c_int] + [pointer] * 5 + [ctypes.c_int])
        self._library.lstm_train_step.restype = ctypes.c_int
        self._library.lstm_phase_times.argtypes = [pointer]
        self._target = f"lstmjax_native_{os.path.basename(self._folder)}"
        jax.ffi.register_ffi_target(self._target, jax.ffi.pycapsule(self._library.LstmLossAndGradsHandler),
                                    platform="cpu")

    def close(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> NativeLSTM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def jax_loss_and_grads(self, threads: int) -> Callable[..., tuple[jax.Array, lj.LSTMParams]]:
        """`f(params, xs, with_grads=True) -> (loss, grads)`, the kernel as an XLA custom call on the CPU,
        usable inside `jax.jit` (`with_grads` static; without it the gradients are zeros). Shapes are
        checked when it is traced."""

        def loss_and_grads(params: lj.LSTMParams, xs: jax.Array, with_grads: bool = True):
            check_inputs(xs.shape, lj.LSTMParams(*(p.shape for p in params)), threads)
            results = [jax.ShapeDtypeStruct((1,), jnp.float32)] + [
                jax.ShapeDtypeStruct(p.shape, jnp.float32) for p in params]
            loss, *grads = jax.ffi.ffi_call(self._target, results)(
                *(jnp.asarray(a, jnp.float32) for a in (xs, *params)), threads=np.int32(threads),
                with_grads=np.int32(with_grads))
            return loss[0], lj.LSTMParams(*grads)

        return loss_and_grads

    def step(self, params: lj.LSTMParams, xs: np.ndarray, threads: int) -> NativeStep:
        """A training step (and a forward pass) at these weights and inputs, outputs preallocated."""
        return NativeStep(self._library, params, xs, threads)


class NativeStep:
    """`forward() -> loss` and `train() -> (loss, lj.LSTMParams of gradients)` of one model and batch.

    The arrays it returns are its own buffers, overwritten by the next call."""

    def __init__(self, library: ctypes.CDLL, params: lj.LSTMParams, xs: np.ndarray, threads: int):
        self._library = library
        self.xs = np.ascontiguousarray(xs, np.float32)
        self.params = lj.LSTMParams(*(np.ascontiguousarray(p, np.float32) for p in params))
        check_inputs(self.xs.shape, lj.LSTMParams(*(p.shape for p in self.params)), threads)
        self.length, self.batch_size, _ = self.xs.shape
        self.hidden_size = self.params.w_h.shape[0]
        self.threads = threads
        self.grads = lj.LSTMParams(*(np.zeros_like(p) for p in self.params))
        self._loss = np.zeros(1, np.float32)
        self._scale = 1.0 / (self.length * self.batch_size * self.hidden_size)

    def _call(self, with_grads: bool) -> float:
        status = self._library.lstm_train_step(
            self.length, self.batch_size, self.xs.shape[2], self.hidden_size, _address(self.xs),
            *(_address(p) for p in self.params), self._scale, int(with_grads), _address(self._loss),
            *(_address(g) for g in self.grads), None, self.threads)
        if status == -2:
            raise RuntimeError(f"OpenMP started fewer than the {self.threads} threads asked for (OMP_THREAD_LIMIT?); "
                               f"the kernel splits the batch over exactly that many")
        if status != 0:
            raise RuntimeError(f"lstm_train_step returned {status} (-1: sizes refused, -3: out of memory)")
        return float(self._loss[0])

    def forward(self) -> float:
        return self._call(with_grads=False)

    def train(self) -> tuple[float, lj.LSTMParams]:
        return self._call(with_grads=True), self.grads

    def phase_seconds(self) -> dict[str, float]:
        """Thread 0's seconds in each phase of the last call: packing the weights, the forward
        loop, the backward loop, waiting at the barrier, the weight gradients."""
        out = np.zeros(5, np.float64)
        self._library.lstm_phase_times(_address(out))
        return dict(zip(("pack", "forward", "backward", "barrier", "weight_gradients"), map(float, out)))


def _address(array: np.ndarray) -> int:
    return array.ctypes.data
