"""Building and loading the native CPU kernels of `lj.unroll` (`native/*.cc`, one library).

The kernels (the LSTM's, `native/lstm_cpu.cc`, the GRU's, `native/gru_cpu.cc`, the vanilla RNN's,
`native/rnn_cpu.cc`, and the LSTM's weight gradients, `native/weight_gradient_cpu.cc`) are C++ with
AVX-512 intrinsics, called by XLA as FFI custom calls on XLA's own threads. They are
compiled on first use, not at install time, because the library is built for the machine it runs on
(`-march=native`) against the XLA FFI headers of the installed jaxlib (`jax.ffi.include_dir()`):

    $CXX -O3 -march=native -shared -fPIC -std=c++17 -I<jax ffi headers> <SOURCES>

(`$CXX` defaults to `g++`; the sources include the `HEADERS` beside them). The library is cached in
`$LSTMJAX_CACHE_DIR`, else `$XDG_CACHE_HOME/lstmjax`, else `~/.cache/lstmjax`, under a name that
hashes the sources and headers, the compiler's version, the flags, jax's and jaxlib's versions and
the CPU's model and flags, so a new jax, compiler or machine builds afresh. The file is written
under a temporary name, flushed to disk and renamed into place, so an interrupted or concurrent
build never leaves a partial library under the final name; and its name carries a hash of its bytes,
checked before a process loads it, so a file damaged later is rebuilt (and renamed over it) rather
than loaded.

Where the kernels cannot be used (not Linux on x86-64, no AVX-512F, no compiler, a failed build,
or `LSTMJAX_NATIVE=0` in the environment, read once per process, when `native_kernel_status()` is
first called: by the first `lj.unroll` that could take the native path, or by you) `lj.unroll` runs the
XLA path instead, with the same results; `native_kernel_status()` says which and why. A failed
build also warns once.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from typing import NamedTuple

import jax
import jaxlib

_FOLDER = pathlib.Path(__file__).with_name("native")
# compiled together into one library
SOURCES = (_FOLDER / "lstm_cpu.cc", _FOLDER / "gru_cpu.cc", _FOLDER / "rnn_cpu.cc", _FOLDER / "weight_gradient_cpu.cc")
HEADERS = (_FOLDER / "lstm_simd.h", _FOLDER / "ffi_support.h")  # included by the sources
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-std=c++17")
TARGETS = {"forward": "lstmjax_lstm_forward", "backward": "lstmjax_lstm_backward",
           "gru_forward": "lstmjax_gru_forward", "gru_backward": "lstmjax_gru_backward",
           "rnn_forward": "lstmjax_rnn_forward", "rnn_backward": "lstmjax_rnn_backward",
           "weight_gradient": "lstmjax_weight_gradient"}
HANDLERS = {"forward": "LstmForwardHandler", "backward": "LstmBackwardHandler",
            "gru_forward": "GruForwardHandler", "gru_backward": "GruBackwardHandler",
            "rnn_forward": "RnnForwardHandler", "rnn_backward": "RnnBackwardHandler",
            "weight_gradient": "WeightGradientHandler"}


class NativeStatus(NamedTuple):
    """Whether the native kernels are in use, and why not if they are not.

    Attributes:
        available: the kernels (LSTM, GRU and RNN, one library) are built, loaded and registered with XLA.
        reason: what was built and where, or why the XLA path is used instead.
    """

    available: bool
    reason: str


_lock = threading.Lock()
_status: NativeStatus | None = None
_library: ctypes.CDLL | None = None  # kept alive for as long as XLA may call its handlers


def native_kernel_status() -> NativeStatus:
    """Builds (on first call) and registers the native LSTM, GRU and RNN kernels; says whether they are in use.

    `lj.unroll` calls this itself; call it to find out which path an LSTM, GRU or RNN takes on this machine
    (and, on the first call, to pay the one-off build of a few seconds up front).
    """
    global _status
    with _lock:
        if _status is None:
            _status = _load()
        return _status


def _load() -> NativeStatus:
    global _library
    refusal = _unsupported_reason()
    if refusal is not None:
        return NativeStatus(False, refusal)
    try:
        path = _built_library()
        library = ctypes.CDLL(str(path))
        for kind, target in TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, HANDLERS[kind])), platform="cpu")
    except (OSError, subprocess.SubprocessError, AttributeError) as error:
        message = f"the native kernels could not be built or loaded ({error}); lj.unroll uses the XLA paths"
        warnings.warn(f"lstmjax: {message}", RuntimeWarning, stacklevel=2)
        return NativeStatus(False, message)
    _library = library
    return NativeStatus(True, f"built from {', '.join(source.name for source in SOURCES)} into {path}")


def _unsupported_reason() -> str | None:
    """Why this machine cannot use the kernel at all, or `None`."""
    if os.environ.get("LSTMJAX_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return "disabled by LSTMJAX_NATIVE"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"the kernel is for Linux on x86-64, this is {platform.system()} on {platform.machine()}"
    if "avx512f" not in cpu_flags():
        return "the CPU has no AVX-512F"
    if shutil.which(_compiler()[0]) is None:
        return f"no C++ compiler {_compiler()[0]!r} on PATH (set CXX to use another)"
    for source in (*SOURCES, *HEADERS):
        if not source.is_file():
            return f"the kernel's source {source} is missing from the installation"
    return None


def _compiler() -> list[str]:
    """The C++ compiler's command: `$CXX` (which may carry arguments, as in `ccache g++`) or `g++`."""
    return shlex.split(os.environ.get("CXX", "g++")) or ["g++"]


def cpu_flags() -> set[str]:
    """The CPU's feature flags from `/proc/cpuinfo` (empty where there is none)."""
    return set(_cpu_field("flags").split())


def _cpu_field(name: str) -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return ""


def _built_library() -> pathlib.Path:
    """The cached library for this source, compiler, jax and CPU, built if it is not there yet.

    Its name ends in a hash of its own bytes, checked before it is loaded: a file damaged after
    it was written (a crash before the disk had it, a disk error) is removed and built afresh,
    never loaded."""
    compiler = _compiler()
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, check=True,
                             timeout=60).stdout
    inputs = [*(f.read_text() for f in (*SOURCES, *HEADERS)), version, " ".join(FLAGS), jax.__version__,
              jaxlib.__version__, _cpu_field("model name"), _cpu_field("flags")]
    key = hashlib.sha256("\0".join(inputs).encode()).hexdigest()[:16]
    folder = _cache_dir()
    for existing in sorted(folder.glob(f"lstmjax_native-{key}-*.so")):
        if existing.stem.rsplit("-", 1)[-1] == _digest(existing):
            return existing
    # None is whole: build, and rename over a damaged one of the same name (not removed first:
    # another process may be putting a good one there at this moment).
    folder.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=f".lstmjax_native-{key}.", suffix=".partial", dir=folder)
    os.close(handle)
    try:
        command = [*compiler, *FLAGS, f"-I{jax.ffi.include_dir()}", "-o", partial, *map(str, SOURCES)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise OSError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o755 & ~umask)  # mkstemp made it private; others sharing the cache may load it
        with open(partial, "rb") as built:
            os.fsync(built.fileno())
        path = folder / f"lstmjax_native-{key}-{_digest(pathlib.Path(partial))}.so"
        os.replace(partial, path)
        _fsync_folder(folder)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return path


def _digest(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _fsync_folder(folder: pathlib.Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _cache_dir() -> pathlib.Path:
    if os.environ.get("LSTMJAX_CACHE_DIR"):
        return pathlib.Path(os.environ["LSTMJAX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "lstmjax"
