"""MindSpore's compile cache (``enable_compile_cache``) with ms_optim's graphs.

Feature: users cut the start-up of repeated runs with MindSpore's compile cache; THOR's two
    graphs and LARS's compiled CPU kernel op must come back from it unchanged.
Description: the same script runs three times in fresh processes: without the cache, then twice
    with one cache folder (the first fills it, the second loads the graphs from it).
Expectation: the three runs give the same losses and step counts. (MindSpore's rule applies: one
    cache folder per network; the tests use one per optimizer.)
"""
import json
import os
import subprocess
import sys

import pytest

JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compile_cache_job.py")
REPO = os.path.dirname(os.path.dirname(JOB))


def _run(kind, cache_dir, tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, JOB, kind, str(cache_dir)], capture_output=True,
                         text=True, timeout=600, env=env, cwd=str(tmp_path), check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("LOSSES ")][-1]
    return json.loads(line[len("LOSSES "):])


@pytest.mark.parametrize("kind", ["thor", "lars"])
def test_runs_from_the_compile_cache_equal_a_fresh_compile(kind, tmp_path):
    fresh = _run(kind, "none", tmp_path)
    cache = tmp_path / "cache"
    filled = _run(kind, cache, tmp_path)
    assert any(cache.iterdir()), "MindSpore wrote nothing into the compile cache"
    loaded = _run(kind, cache, tmp_path)
    assert fresh == filled == loaded
    assert fresh["step"] == 7
    if kind == "lars":
        assert fresh["backend"] in ("cpu", "portable")
