"""The same LSTM in lstmjax, Flax, Equinox, Haiku and PyTorch, with the same weights, for `experiments.benchmark`.

Every implementation ("anchor") computes the same thing from the same `lj.LSTMParams` and inputs
`xs: (T, B, D)`: a one-layer LSTM from zero memories, and the loss `mean(ys ** 2)` of its outputs
`ys: (T, B, H)`. Each converts lstmjax's weights (`w_x: (D, 4H)`, `w_h: (H, 4H)`, `b: (4H,)`,
gate blocks i, f, g, o, in→out) into its own layout, and converts its gradients back, so the
benchmark can check that every anchor's loss and gradient equal lstmjax's before timing it:

* Flax `nn.RNN(nn.OptimizedLSTMCell(H), time_major=True)`: per-gate kernels `ii, if, ig, io: (D, H)`
  without bias, `hi, hf, hg, ho: (H, H)` with bias `(H,)`; `w_x[:, k·H:(k+1)·H]` is gate k's kernel.
* Equinox `eqx.nn.LSTMCell` (unbatched, out→in) under `jax.vmap` over the batch and `lax.scan`
  over time: `weight_ih = w_x.T: (4H, D)`, `weight_hh = w_h.T: (4H, H)`, `bias = b`; same gate order.
* Haiku `hk.LSTM(H)` with `hk.dynamic_unroll`: one `hk.Linear` on `concat([x, h])`, so
  `w = concat([w_x, w_h]): (D + H, 4H)`, gate blocks in the order **i, g, f, o**, and `hk.LSTM`
  adds 1 to the forget gate's pre-activation inside the step, so its bias is `b_f - 1`.
* PyTorch `nn.LSTM(D, H)` (time-major, float32): `lj.to_torch` (`weight_ih = w_x.T`,
  `bias_ih = b`, `bias_hh = 0`); the gradient of `b` is the gradient of `bias_ih`. On a CPU, PyTorch
  runs the whole sequence in oneDNN's fused RNN primitive when it can (`torch.backends.mkldnn`);
  `torch_no_onednn` is the same module with oneDNN switched off, PyTorch's step-by-step path. When
  JAX runs on a GPU, `torch` runs on CUDA (cuDNN's RNN) and `torch_no_onednn` is skipped.
* `jax.experimental.rnn.lstm` (`jax_cudnn`, GPU only: cuDNN's RNN through JAX, batch-major):
  one flat weight vector in cuDNN's layout, `[W_ih (4H, D), W_hh (4H, H), b_ih (4H,), b_hh (4H,)]`
  raveled, with `W_ih = w_x.T`, `W_hh = w_h.T`, `b_ih = b`, `b_hh = 0` (gate order i, f, g, o, as
  PyTorch's). Off a GPU it is skipped; `cudnn_anchor(reference=True)` runs the same weights through
  `jax.experimental.rnn.lstm_ref` instead (any backend), which is how the layout is tested on a CPU.
  Its forward pass is cuDNN's training mode (it always keeps the reserve for a backward pass), and
  that binding declares the reserve and workspace as float32 arrays of one element per byte, so
  XLA's memory analysis counts them four times over.

A JAX anchor is a `JaxAnchor` (`convert`, a pure `loss(anchor_params, xs)`, `grads_to_lstmjax`):
the benchmark jits `loss` and `jax.value_and_grad(loss)` the same way for all of them. lstmjax is
one too (`lstmjax_anchor`), also with `lj.unroll` options, with its native CPU kernel switched off
(`without_native_kernel`) or with full `lengths`: the benchmark's extra lstmjax rows. PyTorch is a
`TorchAnchor` whose `prepare` returns the forward pass and the training step as closures.
A library that is not installed (or fails to import) is reported by `unavailable()` with the reason.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import lstmjax as lj

ANCHORS = ("flax", "equinox", "haiku", "torch", "torch_no_onednn", "jax_cudnn")
"""Names of the other libraries, in the order they are reported."""

LABELS = {
    "lstmjax": "lstmjax (lj.unroll)",
    "flax": "Flax nn.RNN(OptimizedLSTMCell)",
    "equinox": "Equinox LSTMCell + lax.scan",
    "haiku": "Haiku hk.LSTM + dynamic_unroll",
    "torch": "PyTorch nn.LSTM (CPU)",
    "torch_no_onednn": "PyTorch nn.LSTM (CPU), oneDNN off",
    "jax_cudnn": "jax.experimental.rnn.lstm (cuDNN)",
}

GPU_LABELS = {"torch": "PyTorch nn.LSTM (CUDA, cuDNN)"}
"""Labels that change when the benchmark runs on a GPU (`label(name)`)."""

TORCH_ANCHORS = {"torch": True, "torch_no_onednn": False}
"""The PyTorch anchors, each with whether oneDNN (`torch.backends.mkldnn`) is left on."""

_MODULES = {"flax": ("flax.linen",), "equinox": ("equinox",), "haiku": ("haiku",), "torch": ("torch",),
            "torch_no_onednn": ("torch",), "jax_cudnn": ("jax.experimental.rnn",)}


def on_gpu() -> bool:
    """Whether JAX's default backend is a GPU: then every JAX library runs there, and so does PyTorch."""
    return jax.default_backend() in ("gpu", "cuda", "rocm")


def label(name: str) -> str:
    """What library `name` runs, for the tables and plots, on this run's backend."""
    return GPU_LABELS.get(name, LABELS[name]) if on_gpu() else LABELS[name]


def loss_of_outputs(ys: jax.Array) -> jax.Array:
    """The benchmark's loss of the outputs `ys: (T, B, H)`: `mean(ys ** 2)`."""
    return jnp.mean(jnp.square(ys))


GPU_PRECISIONS = {"float32": "highest", "tf32": "tensorfloat32"}
"""`--gpu-precision` choices, each with the `jax_default_matmul_precision` it sets."""


def use_gpu_matmul_precision(precision: str) -> dict[str, Any]:
    """Sets the precision of every library's float32 matrix products on a GPU, for the whole process:
    `"float32"` (JAX `"highest"`, PyTorch's `torch.backends.cuda.matmul.allow_tf32` and
    `torch.backends.cudnn.allow_tf32` off; cuDNN's RNN through JAX follows JAX's setting) or `"tf32"`
    (TF32 allowed in all of them). Left to themselves they differ: JAX and cuDNN's RNN in PyTorch
    allow TF32 by default, PyTorch's matmuls do not. Returns what was set."""
    if precision not in GPU_PRECISIONS:
        raise ValueError(f"gpu_precision must be one of {tuple(GPU_PRECISIONS)}, got {precision!r}")
    jax.config.update("jax_default_matmul_precision", GPU_PRECISIONS[precision])
    applied: dict[str, Any] = {"precision": precision, "jax_default_matmul_precision": GPU_PRECISIONS[precision]}
    try:
        import torch
    except ImportError:
        return applied
    allow = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow
    applied.update(torch_cuda_matmul_allow_tf32=allow, torch_cudnn_allow_tf32=allow)
    return applied


def unavailable(name: str) -> str | None:
    """`None` if library `name` imports, else why not (`"not installed: ..."` or the import error)."""
    if name == "lstmjax":
        return None
    if name == "torch_no_onednn" and on_gpu():
        return f"oneDNN is PyTorch's CPU path, and this run is on JAX's {jax.default_backend()} backend"
    if name == "jax_cudnn" and not on_gpu():
        return f"needs a GPU (cuDNN's RNN); JAX's backend here is {jax.default_backend()}"
    for module in _MODULES[name]:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            return f"not installed ({error}); pip install -e '.[benchmark]'" + (
                " and torch (see the README)" if name in TORCH_ANCHORS else "")
        except Exception as error:  # a library broken against this JAX: report it, benchmark the others
            return f"import failed: {type(error).__name__}: {error}"
    if name == "torch" and on_gpu():
        import torch
        if not torch.cuda.is_available():
            return "this PyTorch has no CUDA device, and JAX runs on a GPU: they would not be compared on one device"
    return None


def _blocks(array: jax.Array, hidden_size: int) -> list[jax.Array]:
    """The four gate blocks (i, f, g, o) along the last axis."""
    return [array[..., k * hidden_size:(k + 1) * hidden_size] for k in range(4)]


@dataclasses.dataclass(frozen=True)
class JaxAnchor:
    """An LSTM in a JAX library, as pure functions over its own parameter pytree.

    Attributes:
        name: the library's short name.
        convert: `convert(params: lj.LSTMParams) -> anchor_params` in the library's layout.
        loss: `loss(anchor_params, xs) -> scalar`, pure and jittable, `xs: (T, B, D)`.
        grads_to_lstmjax: `grads_to_lstmjax(anchor_grads, hidden_size) -> lj.LSTMParams`.
    """

    name: str
    convert: Callable[[lj.LSTMParams], Any]
    loss: Callable[[Any, jax.Array], jax.Array]
    grads_to_lstmjax: Callable[[Any, int], lj.LSTMParams]


def lstmjax_anchor(unroll_kwargs: dict[str, Any] | None = None, *, native: bool = True,
                   full_lengths: bool = False, cudnn: bool = False) -> JaxAnchor:
    """lstmjax itself, through the public API only (`lj.lstm`, `lj.unroll`), so it measures whatever
    `lj.unroll` does; `unroll_kwargs` are passed to `lj.unroll` (for example a remat option).

    `native=False` unrolls the cell `without_native_kernel`: the XLA path `lj.unroll` takes where its
    native CPU kernel cannot run. `full_lengths=True` passes `lengths=jnp.full(batch, T)` (built inside
    the loss, so under `jax.jit` it is a traced value like the lengths of a real batch): every sequence
    is full, so the results are plain lstmjax's, through `lj.unroll`'s variable-length path.
    `cudnn=True` traces `lj.unroll` as with `LSTMJAX_CUDNN=1` (its opt-in cuDNN path, where it can run: a GPU),
    `cudnn=False` as without it, whatever the environment says."""
    unroll_kwargs = dict(unroll_kwargs or {})

    def loss(params: lj.LSTMParams, xs: jax.Array) -> jax.Array:
        cell = lj.lstm(params.w_h.shape[0])
        if not native:
            cell = without_native_kernel(cell)
        kwargs = dict(unroll_kwargs)
        if full_lengths:
            kwargs["lengths"] = jnp.full(xs.shape[1:-1], xs.shape[0], jnp.int32)
        with _cudnn_path(cudnn):
            _, ys = lj.unroll(cell, params, xs, **kwargs)
        return loss_of_outputs(ys)

    return JaxAnchor("lstmjax", convert=lambda params: params, loss=loss, grads_to_lstmjax=lambda grads, _: grads)


def _cudnn_path(enabled: bool):
    """A context in which `lj.unroll` is traced with its opt-in cuDNN path asked for or not, as `enabled`
    says (not as `LSTMJAX_CUDNN` happens to be: plain lstmjax is lstmjax's default, without it)."""
    from lstmjax import _cudnn
    return _cudnn.forced(enabled)


def without_native_kernel(cell: lj.Cell) -> lj.Cell:
    """`cell` with its native CPU kernel switched off (`cell.fused.native = None`, which `lj.unroll`
    checks before taking the kernel) and everything else kept, its XLA fast path included: the
    program `lj.unroll` runs where the kernel cannot (as with `LSTMJAX_NATIVE=0`). `ValueError` if
    the cell has no native kernel to switch off."""
    fused = getattr(cell, "fused", None)
    if getattr(fused, "native", None) is None:
        raise ValueError("this cell has no native kernel (cell.fused.native) to switch off")
    return cell._replace(fused=fused._replace(native=None))


_FLAX_GATES = ("i", "f", "g", "o")


def flax_anchor() -> JaxAnchor:
    """Flax Linen's `nn.RNN(nn.OptimizedLSTMCell(H), time_major=True)`."""
    import flax.linen as nn

    def model(hidden_size: int):
        return nn.RNN(nn.OptimizedLSTMCell(hidden_size), time_major=True)

    def convert(params: lj.LSTMParams) -> dict:
        hidden_size = params.w_h.shape[0]
        cell = {}
        for gate, wx, wh, b in zip(_FLAX_GATES, _blocks(params.w_x, hidden_size), _blocks(params.w_h, hidden_size),
                                   _blocks(params.b, hidden_size)):
            cell[f"i{gate}"] = {"kernel": wx}
            cell[f"h{gate}"] = {"kernel": wh, "bias": b}
        return {"params": {"cell": cell}}

    def loss(variables: dict, xs: jax.Array) -> jax.Array:
        hidden_size = variables["params"]["cell"]["hi"]["kernel"].shape[0]
        return loss_of_outputs(model(hidden_size).apply(variables, xs))

    def grads_to_lstmjax(grads: dict, hidden_size: int) -> lj.LSTMParams:
        cell = grads["params"]["cell"]
        return lj.LSTMParams(w_x=jnp.concatenate([cell[f"i{g}"]["kernel"] for g in _FLAX_GATES], axis=-1),
                             w_h=jnp.concatenate([cell[f"h{g}"]["kernel"] for g in _FLAX_GATES], axis=-1),
                             b=jnp.concatenate([cell[f"h{g}"]["bias"] for g in _FLAX_GATES], axis=-1))

    return JaxAnchor("flax", convert, loss, grads_to_lstmjax)


def equinox_anchor() -> JaxAnchor:
    """Equinox's `eqx.nn.LSTMCell` (one example at a time), vmapped over the batch inside `lax.scan`
    over time (the same program as vmapping the whole unroll, as Equinox's RNN example does).
    The module is a pytree of its three arrays, so `jax.jit` and `jax.grad` take it as it is."""
    import equinox as eqx

    def convert(params: lj.LSTMParams):
        input_size, hidden_size = params.w_x.shape[0], params.w_h.shape[0]
        cell = eqx.nn.LSTMCell(input_size, hidden_size, key=jax.random.PRNGKey(0))
        return eqx.tree_at(lambda m: (m.weight_ih, m.weight_hh, m.bias), cell,
                           (jnp.asarray(params.w_x).T, jnp.asarray(params.w_h).T, jnp.asarray(params.b)))

    def loss(cell, xs: jax.Array) -> jax.Array:
        batched = jax.vmap(cell)
        zeros = jnp.zeros((xs.shape[1], cell.hidden_size), xs.dtype)

        def step(state, x):
            h, c = batched(x, state)
            return (h, c), h

        _, ys = jax.lax.scan(step, (zeros, zeros), xs)
        return loss_of_outputs(ys)

    def grads_to_lstmjax(grads, hidden_size: int) -> lj.LSTMParams:
        return lj.LSTMParams(w_x=grads.weight_ih.T, w_h=grads.weight_hh.T, b=grads.bias)

    return JaxAnchor("equinox", convert, loss, grads_to_lstmjax)


_HAIKU_ORDER = (0, 2, 1, 3)  # Haiku's blocks (i, g, f, o) as indices into lstmjax's (i, f, g, o); its own inverse
_HAIKU_FORGET_BLOCK = 2      # where f sits in Haiku's order; hk.LSTM adds 1 to it inside the step


def haiku_anchor() -> JaxAnchor:
    """Haiku's `hk.LSTM(H)` unrolled by `hk.dynamic_unroll` (time-major), from `initial_state(B)`."""
    import haiku as hk

    transformed = {}  # one hk.transform per hidden size, which the module needs at construction

    def _transformed(hidden_size: int):
        if hidden_size not in transformed:
            def unrolled(xs):
                core = hk.LSTM(hidden_size)
                ys, _ = hk.dynamic_unroll(core, xs, core.initial_state(xs.shape[1]), time_major=True)
                return ys
            transformed[hidden_size] = hk.without_apply_rng(hk.transform(unrolled))
        return transformed[hidden_size]

    def reorder(array: jax.Array, hidden_size: int) -> jax.Array:
        blocks = _blocks(array, hidden_size)
        return jnp.concatenate([blocks[k] for k in _HAIKU_ORDER], axis=-1)

    def convert(params: lj.LSTMParams) -> dict:
        hidden_size = params.w_h.shape[0]
        w = reorder(jnp.concatenate([params.w_x, params.w_h], axis=0), hidden_size)
        b = reorder(params.b, hidden_size)
        b = b.at[_HAIKU_FORGET_BLOCK * hidden_size:(_HAIKU_FORGET_BLOCK + 1) * hidden_size].add(-1.0)
        return {"lstm/linear": {"w": w, "b": b}}

    def loss(params: dict, xs: jax.Array) -> jax.Array:
        hidden_size = params["lstm/linear"]["w"].shape[-1] // 4
        return loss_of_outputs(_transformed(hidden_size).apply(params, xs))

    def grads_to_lstmjax(grads: dict, hidden_size: int) -> lj.LSTMParams:
        w = reorder(grads["lstm/linear"]["w"], hidden_size)
        input_size = w.shape[0] - hidden_size
        return lj.LSTMParams(w_x=w[:input_size], w_h=w[input_size:], b=reorder(grads["lstm/linear"]["b"], hidden_size))

    return JaxAnchor("haiku", convert, loss, grads_to_lstmjax)


def _cudnn_hidden_size(weight_count: int, input_size: int) -> int:
    """H of a one-layer LSTM with `weight_count = 4H·D + 4H·H + 8H` weights in cuDNN's flat vector."""
    b = 4 * input_size + 8  # 4H² + bH - n = 0
    root = math.isqrt(b * b + 16 * weight_count)
    if root * root != b * b + 16 * weight_count or (root - b) % 8:
        raise ValueError(f"{weight_count} weights are no one-layer LSTM over {input_size} inputs")
    return (root - b) // 8


def cudnn_anchor(reference: bool = False) -> JaxAnchor:
    """`jax.experimental.rnn.lstm`: cuDNN's fused RNN (forward and backward through time), through JAX;
    GPU only. `reference=True`: `jax.experimental.rnn.lstm_ref` on the same flat weights instead, a
    `lax.scan` that runs anywhere (to test the layout off a GPU). The precision of its products follows
    `jax_default_matmul_precision` (cuDNN allows TF32 unless it is `"highest"`)."""
    from jax.experimental import rnn

    def convert(params: lj.LSTMParams) -> jax.Array:
        w_x, w_h, b = (jnp.asarray(a, jnp.float32) for a in params)
        return jnp.concatenate([w_x.T.ravel(), w_h.T.ravel(), b, jnp.zeros_like(b)])

    def loss(weights: jax.Array, xs: jax.Array) -> jax.Array:
        _, batch, input_size = xs.shape
        hidden_size = _cudnn_hidden_size(weights.shape[0], input_size)
        x = jnp.swapaxes(xs, 0, 1)  # (B, T, D): cuDNN's LSTM is batch-major
        zeros = jnp.zeros((1, batch, hidden_size), xs.dtype)
        lengths = jnp.full((batch,), xs.shape[0], jnp.int32)
        sizes = dict(input_size=input_size, hidden_size=hidden_size, num_layers=1, dropout=0.0, bidirectional=False)
        if reference:
            w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, input_size, hidden_size, 1, False)
            ys, _, _ = rnn.lstm_ref(x, zeros, zeros, w_ih, w_hh, b_ih, b_hh, lengths, **sizes)
        else:
            ys, _, _ = rnn.lstm(x, zeros, zeros, weights, lengths, **sizes)
        return loss_of_outputs(ys)

    def grads_to_lstmjax(grads: jax.Array, hidden_size: int) -> lj.LSTMParams:
        input_size = (grads.shape[0] - 4 * hidden_size * (hidden_size + 2)) // (4 * hidden_size)
        w_ih, w_hh, b_ih, _ = rnn.unpack_lstm_weights(grads, input_size, hidden_size, 1, False)
        return lj.LSTMParams(w_x=w_ih[0].T, w_h=w_hh[0].T, b=b_ih[0])

    return JaxAnchor("jax_cudnn", convert, loss, grads_to_lstmjax)


JAX_ANCHORS: dict[str, Callable[[], JaxAnchor]] = {
    "flax": flax_anchor, "equinox": equinox_anchor, "haiku": haiku_anchor, "jax_cudnn": cudnn_anchor}


@dataclasses.dataclass(frozen=True)
class TorchRun:
    """PyTorch's `nn.LSTM` with lstmjax's weights, ready to time.

    Attributes:
        forward: one forward pass under `torch.no_grad()`; returns the loss tensor.
        train: one training step (gradients cleared, forward, `loss.backward()`); returns the loss tensor.
        loss_and_grads: `(loss, lj.LSTMParams of numpy gradients)` after the last `train()`.
        threads: `torch.get_num_threads()` while timing.
    """

    forward: Callable[[], Any]
    train: Callable[[], Any]
    loss_and_grads: Callable[[Any], tuple[float, lj.LSTMParams]]
    threads: int


class TorchAnchor:
    """PyTorch's `nn.LSTM(D, H)`, float32, time-major like `xs`, on the CPU or on a CUDA device."""

    @staticmethod
    def prepare(params: lj.LSTMParams, xs: np.ndarray, threads: int, onednn: bool = True,
                device: str = "cpu") -> TorchRun:
        """Builds the module with `lj.to_torch(params)` on `device` (`"cpu"` or `"cuda"`) and the closures
        `TorchRun` describes; with `onednn=False` every call runs under `torch.backends.mkldnn.flags(enabled=False)`.
        On CUDA each call ends with `torch.cuda.synchronize()`, so that it returns when the GPU is done
        (as `block_until_ready` does for JAX)."""
        import torch

        torch.set_num_threads(threads)
        input_size, hidden_size = params.w_x.shape[0], params.w_h.shape[0]
        module = torch.nn.LSTM(input_size, hidden_size)
        module.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in lj.to_torch(params).items()})
        module = module.to(device)
        x = torch.from_numpy(np.array(xs, np.float32)).to(device)
        finish = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

        def forward():
            with torch.no_grad():
                ys, _ = module(x)
                loss = torch.mean(torch.square(ys))
            finish()
            return loss

        def train():
            module.zero_grad(set_to_none=True)
            ys, _ = module(x)
            loss = torch.mean(torch.square(ys))
            loss.backward()
            finish()
            return loss

        def loss_and_grads(loss) -> tuple[float, lj.LSTMParams]:
            grad = lambda p: p.grad.detach().cpu().numpy()  # noqa: E731
            grads = lj.LSTMParams(w_x=grad(module.weight_ih_l0).T.copy(), w_h=grad(module.weight_hh_l0).T.copy(),
                                  b=grad(module.bias_ih_l0).copy())
            return float(loss.detach().cpu()), grads

        if not onednn:
            forward, train = _without_onednn(forward), _without_onednn(train)
        return TorchRun(forward, train, loss_and_grads, torch.get_num_threads())


def _without_onednn(call: Callable[[], Any]) -> Callable[[], Any]:
    """`call` run with PyTorch's oneDNN backend switched off (and its note about TF32 on Intel GPUs,
    which switching prints, silenced)."""
    import torch

    def switched():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
            with torch.backends.mkldnn.flags(enabled=False):
                return call()

    return switched
