"""Shared pieces of the benchmarks: the stamp every result carries, interleaved timing, JSON out.

Every benchmark writes ``outputs/bench/<name>.json`` with :func:`stamp` (machine, MindSpore and
ms_optim versions, commit, mode, peak RSS) merged into its results, and prints its numbers.
"""
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import mindspore as ms

_HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(_HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import ms_optim  # noqa: E402

OUT_DIR = os.path.join(REPO, "outputs", "bench")

__all__ = ["stamp", "peak_rss_mb", "time_interleaved", "write_json", "OUT_DIR"]


def peak_rss_mb():
    """Peak resident set size of this process so far, in MiB (Linux ``ru_maxrss`` is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _commit():
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                             text=True, check=False, cwd=REPO).stdout.strip()
    except OSError:
        out = ""
    return out or "?"


def stamp(**extra):
    """Machine, versions, commit, execution mode and peak RSS, plus ``extra``."""
    info = {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "mindspore": ms.__version__,
        "ms_optim": ms_optim.__version__,
        "commit": _commit(),
        "device": ms.get_context("device_target"),
        "mode": "GRAPH" if ms.get_context("mode") == ms.GRAPH_MODE else "PYNATIVE",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    info.update(extra)
    return info


def time_interleaved(fns, steps):
    """Median seconds of each callable, calling them round-robin so load changes hit all alike."""
    times = [[] for _ in fns]
    for _ in range(steps):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def write_json(name, results):
    """Write ``results`` (a dict, stamped) to ``outputs/bench/<name>.json``; return the path."""
    os.makedirs(OUT_DIR, exist_ok=True)
    path = os.path.join(OUT_DIR, f"{name}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(stamp(**results), f, indent=2, sort_keys=True)
    print(f"wrote {os.path.relpath(path, REPO)}")
    return path
