"""Zoo recipes and upstream docstring examples run with only the import changed.

* ``examples/zoo/upstream_examples.py``: the ``Examples`` of upstream ``nn.LARS`` and ``nn.thor``.
* ``examples/zoo/resnet_train.py``: the call sequence of the zoo's ResNet ``train.py`` (Momentum,
  LARS, THOR; fp32 CPU branch and the loss-scale + ``amp_level="O3"`` branch; checkpoint + resume).
* ``ms_optim.nn``: the drop-in namespace they import instead of ``mindspore.nn``.
"""
import glob
import os
import sys

import numpy as np
import pytest

import mindspore as ms

import ms_optim
import ms_optim.nn as msnn

_ZOO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "zoo")
sys.path.insert(0, _ZOO)

import resnet_train  # noqa: E402
import upstream_examples  # noqa: E402


@pytest.fixture(autouse=True)
def _keep_mode():
    old = ms.get_context("mode")
    yield
    ms.set_context(mode=old)


def test_nn_namespace_is_mindspore_nn_with_ours():
    assert msnn.LARS is ms_optim.LARS and msnn.thor is ms_optim.thor
    assert msnn.DenseThor is ms_optim.DenseThor and msnn.Conv2dThor is ms_optim.Conv2dThor
    for name in ("Momentum", "Cell", "Dense", "TrainOneStepCell", "SoftmaxCrossEntropyWithLogits"):
        assert getattr(msnn, name) is getattr(ms.nn, name)
    missing = [n for n in ms.nn.__all__ if not hasattr(msnn, n)]
    assert not missing, missing


def test_upstream_lars_example_trains():
    ms.set_context(mode=ms.GRAPH_MODE)
    losses = upstream_examples.lars_example(epochs=2)
    assert len(losses) == 16 and np.all(np.isfinite(losses))


def test_upstream_thor_example_trains():
    """int loss_scale=128, FixedLossScaleManager(128), amp_level O2 without fp32 BatchNorm."""
    ms.set_context(mode=ms.GRAPH_MODE)
    losses, optim = upstream_examples.thor_example(epochs=2)
    assert len(losses) == 16 and np.all(np.isfinite(losses))
    assert int(optim.global_step.asnumpy()[0]) == 16
    assert not optim.thor_fault_count.asnumpy().any()
    assert np.mean(losses[-4:]) < losses[0]


def _zoo(tmp_path, *extra):
    args = ["--layers", "1,1,1,1", "--width", "8", "--image", "16", "--batch_size", "8",
            "--epochs", "2", "--steps_per_epoch", "4", "--frequency", "3",
            "--save_ckpt_dir", str(tmp_path / "ckpt")] + list(extra)
    return resnet_train.train_net(resnet_train.parse_args(args))


@pytest.mark.parametrize("optimizer,amp", [
    pytest.param("Momentum", False, marks=pytest.mark.slow),  # the recipe's baseline
    pytest.param("LARS", False, marks=pytest.mark.slow),      # ("LARS", True) runs the same path
    ("LARS", True),
    pytest.param("Thor", False, marks=pytest.mark.slow),  # its checks run in the resume test
    ("Thor", True)])
def test_zoo_resnet_recipe(tmp_path, optimizer, amp):
    extra = ["--optimizer", optimizer] + (["--amp"] if amp else [])
    _, _, opt, losses = _zoo(tmp_path, *extra)
    assert len(losses) == 8 and np.all(np.isfinite(losses))
    assert len(glob.glob(str(tmp_path / "ckpt" / "*.ckpt"))) == 2
    if optimizer == "Thor":
        assert int(opt.global_step.asnumpy()[0]) == 8
        assert not opt.thor_fault_count.asnumpy().any()
        assert np.mean(losses[-2:]) < losses[0]


def test_zoo_resnet_thor_resume(tmp_path):
    """The zoo's resume: load_checkpoint(filter_prefix=[lr, global_step]) + load_param_into_net
    of the network and of the optimizer."""
    _, net, opt, losses = _zoo(tmp_path, "--optimizer", "Thor")
    # the fp32 THOR recipe itself (test_zoo_resnet_recipe[Thor-False] checks the same, slow)
    assert len(losses) == 8 and np.all(np.isfinite(losses)) and np.mean(losses[-2:]) < losses[0]
    assert int(opt.global_step.asnumpy()[0]) == 8 and not opt.thor_fault_count.asnumpy().any()
    assert len(glob.glob(str(tmp_path / "ckpt" / "*.ckpt"))) == 2
    ckpt = sorted(glob.glob(str(tmp_path / "ckpt" / "*.ckpt")))[-1]
    _, net2, opt2, losses2 = _zoo(tmp_path / "resumed", "--optimizer", "Thor",
                                  "--resume_ckpt", ckpt, "--epochs", "3")
    assert np.all(np.isfinite(losses2))
    # ModelCheckpoint records epoch_num=2 in append_info: the zoo resumes at epoch 2 of 3
    # (global_step is filtered out of the checkpoint, the schedules are sliced from epoch 2)
    assert len(losses2) == 4 and int(opt2.global_step.asnumpy()[0]) == 4
    assert abs(losses2[0] - _zoo(tmp_path / "fresh", "--optimizer", "Thor")[3][0]) > 1e-4
