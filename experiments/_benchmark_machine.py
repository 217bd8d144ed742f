"""Where the numbers come from: the machine a benchmark ran on, recorded in its `metrics.json` next to the
timings. The CPU model, the cores this process may use (which set PyTorch's default thread count), the load
average (other processes slow every library down), the platform, Python, JAX's backend and device, `XLA_FLAGS`,
the versions of every library timed, and the allocator's environment (`MALLOC_*`, `LD_PRELOAD`), which moved
CPU training steps by up to a quarter in our runs."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

import jax


def _versions() -> dict[str, str | None]:
    versions = {}
    for dist in ("jax", "jaxlib", "flax", "equinox", "dm-haiku", "torch", "numpy", "lstmjax"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict[str, Any]:
    """Where the numbers come from (the allocator's environment included: it moves CPU timings)."""
    return {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "usable_cores": usable_cores(),
            "platform": platform.platform(), "python": platform.python_version(),
            "jax_backend": jax.default_backend(), "jax_device": str(jax.devices()[0]),
            "jax_device_kind": jax.devices()[0].device_kind,
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "versions": _versions(),
            "allocator_environment": {k: v for k, v in os.environ.items()
                                      if k.startswith("MALLOC_") or k == "LD_PRELOAD"}}
