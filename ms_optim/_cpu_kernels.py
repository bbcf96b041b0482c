"""Compiled CPU kernels (``ms_optim/_csrc/*.cc``) behind ``mindspore.ops.Custom(func_type="aot")``.

The C++ source ships with the package and is compiled on first use with the system C++ compiler
(``$CXX``, else ``g++``) into a cache folder (``$MS_OPTIM_KERNEL_CACHE``, else
``~/.cache/ms_optim/kernels``), one file per source/compiler/flags hash, written atomically so
that concurrent processes (``msrun`` workers) never load a half-written library. Where no compiler
is found or the build fails, :func:`library` reports why and the optimizers use the portable path
(``mindspore.ops`` only); nothing else depends on the kernels.

Set ``MS_OPTIM_CPU_KERNELS=0`` to switch them off for every optimizer (the ``backend="portable"``
argument does it for one).
"""
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile

import mindspore as ms
from mindspore import ops

__all__ = ["library", "unavailable_reason", "square_sums_op", "lars_momentum_op"]

_LOG = logging.getLogger("ms_optim")
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_csrc", "lars_cpu.cc")
# -ffp-contract=off: no fused multiply-add, so the float32 arithmetic rounds as MindSpore's
# separate Mul/Add/ApplyMomentum kernels do (bit-identical momentum steps).
_FLAGS = ("-std=c++17", "-O3", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC",
          "-pthread")


def _cache_dirs():
    """``$MS_OPTIM_KERNEL_CACHE`` if set; else ``~/.cache/ms_optim/kernels``, then a per-user
    folder in the temporary directory (a read-only home, as in some CI containers)."""
    root = os.environ.get("MS_OPTIM_KERNEL_CACHE")
    if root:
        return [root]
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return [os.path.join(os.path.expanduser("~"), ".cache", "ms_optim", "kernels"),
            os.path.join(tempfile.gettempdir(), f"ms_optim_kernels_{uid}")]


def _compiler():
    cxx = os.environ.get("CXX") or "g++"
    return shutil.which(cxx)


@functools.lru_cache(maxsize=None)
def _build():
    """(path of the compiled library, None) or (None, reason)."""
    if os.environ.get("MS_OPTIM_CPU_KERNELS", "1") == "0":
        return None, "MS_OPTIM_CPU_KERNELS=0"
    cxx = _compiler()
    if cxx is None:
        return None, "no C++ compiler found (set CXX or install g++)"
    try:
        with open(_SOURCE, "rb") as f:
            source = f.read()
        version = subprocess.run([cxx, "--version"], capture_output=True, check=True,
                                 timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as err:
        return None, f"cannot read the kernel source or run {cxx}: {err}"
    digest = hashlib.sha256(source + version + " ".join(_FLAGS).encode()).hexdigest()[:16]
    errors = []
    for cache in _cache_dirs():
        path, err = _compile_into(cxx, cache, f"lars_cpu_{digest}.so")
        if path is not None:
            return _check_loadable(path)
        errors.append(err)
    return None, "; ".join(errors)


def _compile_into(cxx, cache, name):
    """(path, None) once ``cache/name`` exists (compiled now or before), else (None, reason)."""
    path = os.path.join(cache, name)
    if os.path.exists(path):
        return path, None
    try:
        os.makedirs(cache, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=cache)
        os.close(fd)
        res = subprocess.run([cxx, *_FLAGS, "-o", tmp, _SOURCE], capture_output=True,
                             text=True, timeout=300)
        if res.returncode != 0:
            os.unlink(tmp)
            return None, f"compiling {_SOURCE} failed: {res.stderr.strip()[-500:]}"
        os.replace(tmp, path)  # atomic: another process sees the old name or the whole file
    except (OSError, subprocess.SubprocessError) as err:
        return None, f"cannot build the kernels in {cache}: {err}"
    _LOG.info("ms_optim: compiled CPU kernels into %s", path)
    return path, None


def _check_loadable(path):
    """MindSpore may refuse a library (``MS_CUSTOM_AOT_WHITE_LIST`` elsewhere): find out now,
    so that the optimizer falls back instead of failing at construction."""
    try:
        ops.Custom(f"{path}:MsOptimSquareSums", out_shape=[1], out_dtype=ms.float32,
                   func_type="aot")
    except (TypeError, ValueError, RuntimeError, OSError) as err:
        return None, f"mindspore.ops.Custom refused {path}: {err}"
    return path, None


def library():
    """Path of the compiled kernel library, or ``None`` (see :func:`unavailable_reason`)."""
    return _build()[0]


def unavailable_reason():
    """Why :func:`library` is ``None`` (``None`` when the kernels are available)."""
    return _build()[1]


def _custom(symbol, out_shape):
    return ops.Custom(f"{library()}:{symbol}", out_shape=out_shape, out_dtype=ms.float32,
                      func_type="aot")


def square_sums_op(n_outputs):
    """``Custom`` op: float32 inputs :math:`x_0..x_{k-1}` -> float32 vector
    :math:`(\\sum x_i^2)_i` of length `n_outputs` (``= k``), accumulated in float64."""
    return _custom("MsOptimSquareSums", [n_outputs])


def lars_momentum_op():
    """``Custom`` op: ``(a, b, lr, mu, w_0, v_0, g_0, w_1, ...)`` -> ``[1.0]``, updating every
    :math:`w_i, v_i` in place: :math:`g' = a_i g + b_i w`, :math:`v \\leftarrow \\mu v + g'`,
    :math:`w \\leftarrow w - \\gamma_i v` (MindSpore's ``ApplyMomentum`` without Nesterov)."""
    return _custom("MsOptimLarsMomentum", [1])
