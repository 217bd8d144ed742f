"""Checks shared by the experiments' config dataclasses: each raises `ValueError` naming the
field, the value received and what was expected."""

from __future__ import annotations

from typing import Any

import numpy as np

from lstmjax._seeds import STRATEGIES


def check_int(name: str, value: Any, minimum: int) -> None:
    """`value` must be an integer (not a bool) of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_seed_strategy(value: Any) -> None:
    """`value` must be one of `lj.map_seeds`'s strategies: auto, vmap or loop."""
    if value not in STRATEGIES:
        raise ValueError(f"seed_strategy must be {', '.join(STRATEGIES[:-1])} or {STRATEGIES[-1]}, got {value!r}")
