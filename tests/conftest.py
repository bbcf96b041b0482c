"""Shared pytest set-up: CPU backend, deterministic seeds, mode fixture."""
import os
import sys

import numpy as np
import pytest

os.environ.setdefault("GLOG_v", "3")  # keep MindSpore's C++ logging quiet in test output
sys.path.insert(0, os.path.dirname(__file__))

import mindspore as ms  # noqa: E402

ms.set_device("CPU")


@pytest.fixture(params=[ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
def mode(request):
    """Run the test once in GRAPH and once in PYNATIVE mode."""
    old = ms.get_context("mode")
    ms.set_context(mode=request.param)
    yield request.param
    ms.set_context(mode=old)


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)
    ms.set_seed(0)
    yield
