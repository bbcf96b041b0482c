"""The README's Python snippets, run as a user would paste them into a script.

Feature: README.md shows LARS and THOR training snippets and a data-parallel set-up.
Description: every ```python block of README.md is found by its section; the names a snippet
    takes from the user's script (``net``, ``loss_fn``, the schedules, the data set) are defined
    with the real digits data and the demo CNN, the block is executed verbatim, and the training
    it shows is run for a few steps. A block this test does not know fails it, so a new snippet
    cannot go untested.
Expectation: the snippets run unchanged; losses are finite and fall; the data-parallel lines
    name MindSpore APIs that exist and appear in the tested example script.
"""
import os
import re
import sys

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from thor_helpers import LossRecorder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
import digits  # noqa: E402  (examples/digits.py: the digits data and CNN of the demo)


def _python_blocks():
    """(section heading, code) of every ```python block, in order."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    out, heading = [], None
    for m in re.finditer(r"^(#+ [^\n]*)$|^```python\n(.*?)^```", text, re.M | re.S):
        if m.group(1):
            heading = m.group(1).lstrip("# ").strip()
        else:
            out.append((heading, m.group(2)))
    return out


BLOCKS = _python_blocks()
KNOWN = ("LARS: a drop-in", "THOR: second-order", "Scaling out")


def test_every_block_is_covered():
    assert BLOCKS, "README.md has no python block"
    for heading, _ in BLOCKS:
        assert heading.startswith(KNOWN), f"README block under {heading!r} is not tested"


def _block(prefix):
    found = [code for heading, code in BLOCKS if heading.startswith(prefix)]
    assert len(found) == 1, prefix
    return found[0]


def _user_script(batch=64):
    """What the user's script defines before the snippet."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    train_set, _, arrays = digits.make_datasets(batch_size=batch)
    net = digits.DigitsCNN()
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    x, y = arrays[0][:256], arrays[1][:256]
    return dict(net=net, loss_fn=loss_fn, train_set=train_set,
                steps_per_epoch=train_set.get_dataset_size(),
                probe=(ms.Tensor(x), ms.Tensor(y.astype(np.int32))))


def _loss(ns):
    ns["net"].set_train(False)
    out = float(ns["loss_fn"](ns["net"](ns["probe"][0]), ns["probe"][1]).asnumpy())
    ns["net"].set_train(True)
    return out


def test_lars_snippet_trains():
    ns = _user_script()
    steps = ns["steps_per_epoch"] * 2
    ns["lr_schedule"] = [0.1] * steps  # a per-step list, as the zoo's ResNet recipe builds it
    exec(compile(_block("LARS: a drop-in"), "README.md (LARS)", "exec"), ns)  # noqa: S102
    assert isinstance(ns["lars"], ms.nn.Optimizer) and ns["lars"].backend in ("cpu", "portable")
    before = _loss(ns)
    rec = LossRecorder()
    ns["model"].train(2, ns["train_set"], callbacks=[rec], dataset_sink_mode=False)
    assert len(rec.losses) == steps and np.all(np.isfinite(rec.losses))
    after = _loss(ns)
    # lr 0.1 with the upstream trust coefficient 0.001 learns slowly (2.8 -> 1.7 in 2 epochs)
    assert after < 0.8 * before, (before, after)
    half = len(rec.losses) // 2
    assert np.mean(rec.losses[half:]) < np.mean(rec.losses[:half])


def test_thor_snippet_trains():
    ns = _user_script(batch=32)
    ns.update(total_epochs=2, epochs=2)
    before = _loss(ns)
    # the snippet itself calls model.train(epochs, train_set, dataset_sink_mode=False)
    exec(compile(_block("THOR: second-order"), "README.md (THOR)", "exec"), ns)  # noqa: S102
    assert int(ns["opt"].global_step.asnumpy()[0]) == 2 * ns["steps_per_epoch"]
    after = _loss(ns)
    assert np.isfinite(after) and after < 0.5 * before, (before, after)


def test_scaling_snippet_names_real_apis_used_by_the_tested_script():
    """The block needs ``msrun`` to run (``tests/test_distributed.py`` runs the example script it
    is taken from); here: it compiles, every API it names exists, and each call appears in
    ``examples/distributed/train_digits_dp.py``."""
    code = _block("Scaling out")
    compile(code, "README.md (scaling)", "exec")
    import mindspore.communication
    assert callable(ms.set_device) and callable(mindspore.communication.init)
    assert callable(ms.set_auto_parallel_context) and ms.ParallelMode.DATA_PARALLEL
    script = open(os.path.join(ROOT, "examples", "distributed", "train_digits_dp.py"),
                  encoding="utf-8").read()
    calls = ("ms.set_device(", "init()", "ms.set_auto_parallel_context(parallel_mode="
             "ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)", "get_group_size()", "get_rank()")
    for call in calls:
        assert call in code, call
        assert call in script, call


@pytest.mark.parametrize("needle", ["ms.Tensor(lr)", "import mindspore as ms"])
def test_thor_snippet_imports_what_it_uses(needle):
    assert needle in _block("THOR: second-order")
