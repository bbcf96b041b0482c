"""The backend switch (ms_optim._backend) and LARS's fused Ascend path, emulated on CPU.

The Ascend kernels cannot run here. The selection logic is tested with explicit device/mode
arguments, and the fused composition (SquareSumAll + LARSUpdate + zero-norm guard) is run with a
stand-in for LARSUpdate that implements the TBE kernel's documented contract literally
(reference-semantics §1.1: eps outside the norms, clamp(min then max) with use_clip, no guard).
"""
import logging

import numpy as np
import pytest

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

import ms_optim
from ms_optim import _backend
from ms_optim._lars_kernels import AscendLarsKernels, CpuLarsKernels, GpuLarsKernels

import kernel_standins


def test_resolve_portable_on_cpu():
    assert _backend.resolve_backend("auto", ("LARSUpdate",), "T") == "portable"
    assert _backend.resolve_backend("portable", ("LARSUpdate",), "T") == "portable"


def test_resolve_ascend_graph_with_primitives():
    assert _backend.has_primitive("LARSUpdate")  # deprecated in 2.10 but still defined
    got = _backend.resolve_backend("auto", ("LARSUpdate", "SquareSumAll"), "T",
                                   device_target="Ascend", mode=ms.GRAPH_MODE)
    assert got == "ascend"
    got = _backend.resolve_backend("ascend", ("LARSUpdate",), "T", device_target="Ascend",
                                   mode=ms.GRAPH_MODE)
    assert got == "ascend"


def test_resolve_falls_back_when_primitive_missing(caplog):
    with caplog.at_level(logging.WARNING, logger="ms_optim"):
        got = _backend.resolve_backend("auto", ("NoSuchFusedKernel",), "T",
                                       device_target="Ascend", mode=ms.GRAPH_MODE)
    assert got == "portable"
    assert "NoSuchFusedKernel" in caplog.text
    with pytest.raises(ValueError, match="lacks NoSuchFusedKernel"):
        _backend.resolve_backend("ascend", ("NoSuchFusedKernel",), "T", device_target="Ascend",
                                 mode=ms.GRAPH_MODE)


@pytest.mark.parametrize("target, mode", [("Ascend", ms.PYNATIVE_MODE), ("GPU", ms.GRAPH_MODE),
                                          ("CPU", ms.GRAPH_MODE)])
def test_resolve_portable_elsewhere(target, mode):
    assert _backend.resolve_backend("auto", ("LARSUpdate",), "T", device_target=target,
                                    mode=mode) == "portable"
    with pytest.raises(ValueError, match="backend='ascend' cannot be used"):
        _backend.resolve_backend("ascend", ("LARSUpdate",), "T", device_target=target, mode=mode)


def test_resolve_rejects_bad_names():
    with pytest.raises(TypeError, match="'backend' must be str"):
        _backend.resolve_backend(1, (), "T")
    with pytest.raises(ValueError, match="'backend' must be one of"):
        _backend.resolve_backend("cuda", (), "T")


def test_get_primitive_missing():
    with pytest.raises(LookupError, match="NoSuchFusedKernel"):
        _backend.get_primitive("NoSuchFusedKernel")


def emulated_ascend():
    """The fused Ascend path's kernel set with the emulated LARSUpdate (SquareSumAll is real)."""
    return AscendLarsKernels(lars_update=kernel_standins.EmulatedLARSUpdate)


class Bag(nn.Cell):
    def __init__(self, arrays):
        super().__init__()
        for i, (name, arr) in enumerate(arrays.items()):
            setattr(self, f"p{i}", Parameter(Tensor(arr.astype(np.float32)), name=name))


@pytest.mark.parametrize("use_clip, epsilon, wd", [(False, 1e-5, 0.0), (True, 0.0, 0.01),
                                                   (False, 0.0, 0.05), (True, 1e-5, 0.0)])
def test_fused_path_equals_portable(use_clip, epsilon, wd):
    """Same inputs, same steps: fused composition == portable path (params and moments).

    GRAPH mode only: resolve_backend selects the fused path only there."""
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(11)
    arrays = {"a.weight": rng.standard_normal((4, 3)), "a.bias": rng.standard_normal((4,)),
              "z.weight": np.zeros((3, 3)), "c.weight": rng.standard_normal((2, 2, 3, 3))}
    bags = [Bag(arrays), Bag(arrays)]
    lr = Tensor(np.array([0.1, 0.0, 0.05, 0.05], np.float32))  # includes lr = 0 (clip edge)
    opts = [nn.Momentum(b.trainable_params(), lr, 0.9, weight_decay=wd) for b in bags]
    fused = ms_optim.LARS(opts[0], epsilon=epsilon, coefficient=0.02, use_clip=use_clip,
                          kernels=emulated_ascend())
    assert fused.backend == "ascend"
    portable = ms_optim.LARS(opts[1], epsilon=epsilon, coefficient=0.02, use_clip=use_clip,
                             backend="portable")
    assert portable.backend == "portable"
    for t in range(4):
        grads = [rng.standard_normal(a.shape).astype(np.float32) for a in arrays.values()]
        if t == 1:
            grads[0][:] = 0.0  # zero gradient norm (0/0 in the raw kernel when eps = 0)
        fused(tuple(Tensor(g) for g in grads))
        portable(tuple(Tensor(g) for g in grads))
        for p1, p2 in zip(bags[0].trainable_params(), bags[1].trainable_params()):
            a, b = p1.asnumpy(), p2.asnumpy()
            assert np.all(np.isfinite(a)), f"fused path produced non-finite {p1.name}"
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=f"{p1.name} step {t}")
        for m1, m2 in zip(opts[0].moments, opts[1].moments):
            np.testing.assert_allclose(m1.asnumpy(), m2.asnumpy(), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------
# The GPU path: FusedWeightScaleApplyMomentum (GPU-only primitive), emulated on CPU
# ------------------------------------------------------------------------------------------
GPU_CASES = {
    "static": lambda ps: nn.Momentum(ps, 0.1, 0.9, weight_decay=1e-3),
    "dynamic_lr_loss_scale": lambda ps: nn.Momentum(
        ps, Tensor(np.linspace(0.1, 0.02, 8).astype(np.float32)), 0.9, weight_decay=1e-3,
        loss_scale=16.0),
    "groups": lambda ps: nn.Momentum([{"params": ps[:2], "lr": 0.05, "weight_decay": 0.0},
                                      {"params": ps[2:]}], 0.1, 0.9, weight_decay=5e-3),
}


@pytest.mark.parametrize("use_clip", [False, True])
@pytest.mark.parametrize("case", sorted(GPU_CASES))
def test_gpu_path_equals_portable(case, use_clip):
    """GRAPH mode (the only mode resolve_backend selects it in): the fused GPU composition
    (wd = lambda * loss_scale, scale = tau / loss_scale) equals the portable path."""
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(5)
    arrays = {"a.weight": rng.standard_normal((4, 3)), "a.bias": rng.standard_normal((4,)),
              "z.weight": np.zeros((3, 3)), "c.weight": rng.standard_normal((2, 2, 3, 3))}
    bags = [Bag(arrays), Bag(arrays)]
    opts = [GPU_CASES[case](b.trainable_params()) for b in bags]
    fused = ms_optim.LARS(opts[0], coefficient=0.02, use_clip=use_clip, kernels=GpuLarsKernels(
        fused_momentum=kernel_standins.EmulatedFusedWeightScaleApplyMomentum))
    assert fused.backend == "gpu"
    portable = ms_optim.LARS(opts[1], coefficient=0.02, use_clip=use_clip, backend="portable")
    scale = 16.0 if case == "dynamic_lr_loss_scale" else 1.0
    for t in range(5):
        grads = [rng.standard_normal(a.shape).astype(np.float32) * scale for a in arrays.values()]
        if t == 2:
            grads[1][0] = np.nan  # a skipped step on both paths
        assert bool(fused(tuple(Tensor(g) for g in grads))) == (t != 2)
        portable(tuple(Tensor(g) for g in grads))
    for pa, pb in zip(bags[0].trainable_params(), bags[1].trainable_params()):
        np.testing.assert_allclose(pa.asnumpy(), pb.asnumpy(), rtol=1e-5, atol=1e-7)
    for ma, mb in zip(opts[0].moments, opts[1].moments):
        np.testing.assert_allclose(ma.asnumpy(), mb.asnumpy(), rtol=1e-5, atol=1e-7)
    assert int(fused.global_step.asnumpy()[0]) == 4 == int(portable.global_step.asnumpy()[0])
    assert int(fused.nonfinite_steps.asnumpy()[0]) == 1


def test_resolve_backend_gpu_rules():
    prims = ("FusedWeightScaleApplyMomentum",)
    assert _backend.resolve_backend("auto", (), "T", device_target="GPU", mode=ms.GRAPH_MODE,
                                    gpu_primitives=prims) == "gpu"
    assert _backend.resolve_backend("auto", (), "T", device_target="GPU", mode=ms.PYNATIVE_MODE,
                                    gpu_primitives=prims) == "portable"
    assert _backend.resolve_backend("auto", (), "T", device_target="GPU", mode=ms.GRAPH_MODE,
                                    gpu_primitives=("NoSuchFusedKernel",)) == "portable"
    assert _backend.resolve_backend("auto", (), "T", device_target="GPU",
                                    mode=ms.GRAPH_MODE) == "portable"
    with pytest.raises(ValueError, match="not 'GPU'"):
        _backend.resolve_backend("gpu", (), "T", device_target="CPU", mode=ms.GRAPH_MODE,
                                 gpu_primitives=prims)
    with pytest.raises(ValueError, match="backend='gpu' is not offered"):
        _backend.resolve_backend("gpu", (), "T", device_target="GPU", mode=ms.GRAPH_MODE)


def _params(dtype=np.float32):
    return [Parameter(Tensor(np.ones((2, 2), dtype)), name="w")]


def test_gpu_kernels_only_for_a_plain_float32_momentum():
    """The condition under which backend="auto" offers "gpu" is the one an injected GPU set is
    checked against (one boolean in LARS.__init__)."""
    gpu = GpuLarsKernels(fused_momentum=kernel_standins.EmulatedFusedWeightScaleApplyMomentum)
    assert ms_optim.LARS(nn.Momentum(_params(), 0.1, 0.9), kernels=gpu).backend == "gpu"
    for opt in (nn.Momentum(_params(), 0.1, 0.9, use_nesterov=True), nn.SGD(_params(), 0.1),
                nn.Momentum(_params(np.float16), 0.1, 0.9)):
        with pytest.raises(ValueError, match=r"'kernels' \(GpuLarsKernels\) needs a wrapped plain"):
            ms_optim.LARS(opt, kernels=gpu)


def test_injected_kernels_are_checked_before_anything_changes():
    opt = nn.Momentum(_params(), 0.1, 0.9, weight_decay=0.01)
    with pytest.raises(TypeError, match="'kernels' must be an AscendLarsKernels"):
        ms_optim.LARS(opt, kernels=kernel_standins.EmulatedLARSUpdate)
    with pytest.raises(ValueError, match="'kernels' serves backend 'ascend', but the argument "
                                         "'backend' is 'portable'"):
        ms_optim.LARS(opt, backend="portable", kernels=emulated_ascend())
    with pytest.raises(ValueError, match=r"'kernels' \(CpuLarsKernels\) takes float32"):
        ms_optim.LARS(nn.SGD(_params(np.float16), 0.1), kernels=CpuLarsKernels())
    assert opt.exec_weight_decay  # the failed calls left the optimizer as it was
    assert ms_optim.LARS(opt, backend="ascend", kernels=emulated_ascend()).backend == "ascend"
