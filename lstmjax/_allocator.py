"""Keep freed host memory for reuse: no page faults per training step on a CPU (glibc's malloc).

XLA:CPU allocates a compiled step's temporaries as one block (40.7 MiB for a B = 32, T = 100,
D = 32, H = 256 LSTM training step on the XLA path; 21.9 MiB with the native kernels, which glibc
keeps on some steps and maps afresh on others) with `malloc` and frees it when the step ends.
glibc gives a block that large (above its mmap threshold, which adapts up to 32 MiB) its own
`mmap` and
unmaps it on `free`, so every step faults the whole block in again, a zeroed 4 KiB page at a
time: 10,417 page faults a step there (counted on this project's 2-core AMD EPYC). Raising the
threshold cannot help, since glibc caps it at 32 MiB; `tune_cpu_allocator()` instead tells glibc
never to `mmap` (`M_MMAP_MAX = 0`), so the block comes from the heap, and to keep up to
`top_pad_mib` MiB of freed memory at the top of the heap (`M_TOP_PAD`) rather than return it. The
median step then page-faults 0 times, with `MALLOC_ARENA_MAX` 1 or 8 or unset alike. What that
saved in time is measured in `experiments.benchmark --tune-allocator` and quoted in the README's
Performance section; it applies to every library in the process, PyTorch included.

It is opt-in because it changes the whole process: freed memory stays with it for reuse, so its
resident size stays near the largest step it ran, as a caching allocator's does.
"""

from __future__ import annotations

import ctypes
import sys

_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_MAX_TOP_PAD_MIB = 1024  # mallopt takes a C int of bytes


def tune_cpu_allocator(top_pad_mib: int = 64) -> bool:
    """Ask glibc's `malloc` to keep freed memory for the next training step (Linux only; opt-in).

    Sets `mallopt(M_MMAP_MAX, 0)`: every block, however large, comes from the heap instead of a
    fresh `mmap` that is unmapped again on `free`; and `mallopt(M_TOP_PAD, top_pad_mib MiB)`: up
    to that much freed memory at the top of the heap is kept instead of returned to the system.
    Call it once, at the start of a script or notebook; it applies to the whole process (every
    library in it) from then on. The same from outside Python, for any program:
    `MALLOC_MMAP_MAX_=0 MALLOC_TOP_PAD_=67108864 python ...`. See the module docstring for why.

    Args:
        top_pad_mib: MiB of freed memory kept at the top of the heap (glibc's default is 0.125);
            an int from 0 to 1024. A step whose temporaries exceed it page-faults the excess.

    Returns:
        `True` if glibc accepted both settings; `False` where the C library is not glibc (macOS,
        Windows, musl), where nothing is changed. (Under a preloaded jemalloc or tcmalloc, glibc
        accepts them but that allocator, not glibc's, serves `malloc`.)

    Raises:
        ValueError: `top_pad_mib` is not an int from 0 to 1024.
        RuntimeError: glibc refused a setting (never seen; the other may then be in effect).
    """
    if isinstance(top_pad_mib, bool) or not isinstance(top_pad_mib, int) or not 0 <= top_pad_mib <= _MAX_TOP_PAD_MIB:
        raise ValueError(f"top_pad_mib must be an int from 0 to {_MAX_TOP_PAD_MIB} (MiB), got {top_pad_mib!r}")
    libc = _glibc()
    if libc is None:
        return False
    for name, option, value in (("M_TOP_PAD", _M_TOP_PAD, top_pad_mib * 2**20), ("M_MMAP_MAX", _M_MMAP_MAX, 0)):
        if libc.mallopt(option, value) != 1:
            raise RuntimeError(f"glibc refused mallopt({name}, {value})")
    return True


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
