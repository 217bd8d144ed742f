"""Weight initialisation schemes for every cell family, with presets of other libraries' defaults.

A vanishing-gradient comparison depends on the initialisation, so it is chosen by name at the
cell factory (`lj.lstm(64, init="pytorch")`) and can be stated in a report. The presets:

| name      | input `w_x`     | recurrent `w_h`              | bias `b`                      | forget bias |
|-----------|-----------------|------------------------------|-------------------------------|-------------|
| `default` | lecun normal    | orthogonal, per gate block   | zeros                         | 1.0         |
| `pytorch` | U(±1/sqrt(H))   | U(±1/sqrt(H))                | sum of two U(±1/sqrt(H))      | none        |
| `flax`    | lecun normal    | orthogonal, per gate block   | zeros                         | none        |
| `keras`   | glorot uniform  | orthogonal, whole `(H, k·H)` | zeros                         | 1.0         |

PyTorch keeps two biases (`b_ih`, `b_hh`), each U(±1/sqrt(H)); a single bias `b` with the same
distribution as their sum (which is what a converted PyTorch model holds) is the sum of two
draws. Flax builds one `Dense(H, H)` per gate, so its recurrent kernels are orthogonal per gate
block; Keras draws one orthogonal `(H, 4H)` matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.nn import initializers

Initializer = Callable[..., jax.Array]  # (key, shape, dtype) -> array, as in jax.nn.initializers


class InitScheme(NamedTuple):
    """How a cell's parameters are drawn.

    Attributes:
        input_kernel: initialiser of `w_x`, shape `(input_size, k·H)`.
        recurrent_kernel: initialiser of `w_h`, shape `(H, k·H)` (or `(H, H)` per gate block
            when `recurrent_per_gate`).
        bias: initialiser of the input-side bias, shape `(k·H,)`.
        recurrent_bias: initialiser of the recurrent-side bias; cells with one merged bias add
            it to `bias` (as PyTorch's `b_ih + b_hh`), the GRU keeps its candidate part apart.
        forget_bias: value written into the LSTM forget-gate bias block `b[H:2H]`, or `None`
            to leave the drawn bias there. Ignored by cells without a forget gate.
        recurrent_per_gate: draw `w_h` as `k` independent `(H, H)` blocks (Flax) instead of one
            `(H, k·H)` matrix (Keras).
    """

    input_kernel: Initializer
    recurrent_kernel: Initializer
    bias: Initializer
    recurrent_bias: Initializer
    forget_bias: float | None
    recurrent_per_gate: bool


def _symmetric_uniform(bound: float) -> Initializer:
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


def preset(name: str, hidden_size: int) -> InitScheme:
    """Returns the named initialisation preset for a cell of `hidden_size` units.

    Args:
        name: one of `"default"`, `"pytorch"`, `"flax"`, `"keras"` (see the module table).
        hidden_size: `H`, which sets PyTorch's bound 1/sqrt(H).
    """
    zeros = initializers.zeros
    if name == "default":
        return InitScheme(initializers.lecun_normal(), initializers.orthogonal(), zeros, zeros, 1.0, True)
    if name == "pytorch":
        uniform = _symmetric_uniform(1.0 / math.sqrt(hidden_size))
        return InitScheme(uniform, uniform, uniform, uniform, None, False)
    if name == "flax":
        return InitScheme(initializers.lecun_normal(), initializers.orthogonal(), zeros, zeros, None, True)
    if name == "keras":
        return InitScheme(initializers.glorot_uniform(), initializers.orthogonal(), zeros, zeros, 1.0, False)
    raise ValueError(f"init must be one of {PRESETS} or an lj.InitScheme, got {name!r}")


PRESETS = ("default", "pytorch", "flax", "keras")


def resolve(init: str | InitScheme, hidden_size: int) -> InitScheme:
    """Turns the `init` argument of a cell factory into an `InitScheme`."""
    if isinstance(init, InitScheme):
        return init
    if isinstance(init, str):
        return preset(init, hidden_size)
    raise ValueError(f"init must be one of {PRESETS} or an lj.InitScheme, got {type(init).__name__}")


def draw_kernels(
    scheme: InitScheme, key: jax.Array, input_size: int, hidden_size: int, gates: int, dtype
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Draws `(w_x, w_h, b, recurrent_b)` of shapes `(I, k·H)`, `(H, k·H)`, `(k·H,)`, `(k·H,)`."""
    k_x, k_h, k_b, k_rb = jax.random.split(key, 4)
    width = gates * hidden_size
    w_x = scheme.input_kernel(k_x, (input_size, width), dtype)
    if scheme.recurrent_per_gate:
        blocks = [scheme.recurrent_kernel(k, (hidden_size, hidden_size), dtype)
                  for k in jax.random.split(k_h, gates)]
        w_h = jnp.concatenate(blocks, axis=-1)
    else:
        w_h = scheme.recurrent_kernel(k_h, (hidden_size, width), dtype)
    b = scheme.bias(k_b, (width,), dtype)
    recurrent_b = scheme.recurrent_bias(k_rb, (width,), dtype)
    return w_x, w_h, b, recurrent_b
