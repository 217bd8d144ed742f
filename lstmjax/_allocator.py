"""Keep freed host memory for reuse: fewer page faults per training step on a CPU (glibc's malloc).

XLA:CPU allocates a step's temporaries (the stacked per-step values of a scan, the gradient's
buffers: several MiB each for an LSTM) with `malloc` and frees them when the step ends. With
glibc's defaults the freed memory at the top of the heap is handed back to the operating system, so
the next step page-faults the same amount in again, and the kernel zeroes every page first. On
this project's 2-core AMD EPYC (jax 0.10.2) `tune_cpu_allocator()` cut the page faults of a
B = 32, T = 100, D = 32, H = 256 LSTM training step (one jitted loss-and-gradient of `lj.unroll`)
from 10,563 to 187, and in `experiments.benchmark --tune-allocator` (medians of two runs) the
training step took 40.9 instead of 54.2 ms at T = 1000, H = 32, 57.7 instead of 64.9 ms at
T = 100, H = 256 and 79.1 instead of 88.7 ms at T = 50, H = 512; at T = 100, H = 128 it made no
difference (24.0 against 23.7 ms). Every library in the process gains the same way (PyTorch
included), so it changes lstmjax's absolute speed, not its ratio to the others. The environment
variables `MALLOC_TOP_PAD_=67108864 MALLOC_MMAP_THRESHOLD_=33554432` do the same from outside.

It is opt-in because it changes a setting of the whole process: up to `top_pad_mib` MiB of freed
memory stay with the process instead of returning to the system.
"""

from __future__ import annotations

import ctypes
import sys

_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MAX_MMAP_THRESHOLD_MIB = 32  # glibc refuses a larger M_MMAP_THRESHOLD on 64-bit machines


def tune_cpu_allocator(top_pad_mib: int = 64, mmap_threshold_mib: int = 32) -> bool:
    """Ask glibc's `malloc` to keep freed memory for the next training step (Linux only; opt-in).

    Sets `mallopt(M_MMAP_THRESHOLD, mmap_threshold_mib MiB)`, so blocks up to that size come from
    the heap rather than from a fresh `mmap` each time, and `mallopt(M_TOP_PAD, top_pad_mib MiB)`,
    so up to that much freed memory at the top of the heap is kept instead of returned to the
    system. Call it once, at the start of a script or notebook; it applies to the whole process
    (every library in it) from then on. See the module docstring for what it measured.

    Args:
        top_pad_mib: MiB kept at the top of the heap (glibc's default is 0.125); an int from 0 to 1024.
        mmap_threshold_mib: blocks larger than this many MiB are still given their own `mmap`;
            an int from 1 to 32 (glibc's largest).

    Returns:
        `True` if both settings took effect; `False` where the C library is not glibc (macOS,
        Windows, musl), where nothing is changed.
    """
    _check_mib("top_pad_mib", top_pad_mib, 0, 1024)
    _check_mib("mmap_threshold_mib", mmap_threshold_mib, 1, _MAX_MMAP_THRESHOLD_MIB)
    libc = _glibc()
    if libc is None:
        return False
    for option, mib in ((_M_MMAP_THRESHOLD, mmap_threshold_mib), (_M_TOP_PAD, top_pad_mib)):
        if libc.mallopt(option, mib * 2**20) != 1:
            raise RuntimeError(f"glibc refused mallopt({option}, {mib} MiB)")
    return True


def _check_mib(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an int from {low} to {high} (MiB), got {value!r}")


def _glibc() -> ctypes.CDLL | None:
    """The running glibc, or `None` if the process's C library is another one."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 -- only glibc has it
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return libc
