"""LARS's "cpu" backend: the compiled kernels (ms_optim/_csrc/lars_cpu.cc via ops.Custom).

Feature: on the CPU device LARS computes every sum of squares in one kernel call and, around a
    plain nn.Momentum, forms the LARS gradient and the momentum update in one in-place pass.
Description: kernels against float64 NumPy; the cpu backend against the portable path on the
    same inputs (weights, moments, global_step, trust ratios) in GRAPH and PYNATIVE mode;
    backend selection and fallbacks (switch, missing compiler, non-float32 parameters).
Expectation: given the same trust ratios the Momentum fusion is bit-identical to the portable
    path (same float32 operations, no FMA); the kernel's sums of squares are accumulated in
    float64, so with adapted layers results agree to the float32 rounding of the norms.
"""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import mindspore as ms
from mindspore import Parameter, Tensor, nn

import ms_optim
from ms_optim import _backend, _cpu_kernels

pytestmark = pytest.mark.skipif(_cpu_kernels.library() is None,
                                reason=f"CPU kernels unavailable: {_cpu_kernels.unavailable_reason()}")

SHAPES = {"conv.weight": (16, 3, 3, 3), "conv.bias": (16,), "bn.gamma": (16,),
          "fc.weight": (10, 16), "big.weight": (300, 257), "zero.weight": (5, 4)}


def _params(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    out = []
    for name, shape in SHAPES.items():
        arr = np.zeros(shape) if name.startswith("zero") else rng.standard_normal(shape)
        out.append(Parameter(Tensor(arr.astype(dtype)), name=name))
    return out


def _grads(step, dtype=np.float32):
    rng = np.random.default_rng(100 + step)
    return tuple(Tensor((rng.standard_normal(s) * 0.1).astype(dtype)) for s in SHAPES.values())


INNER = {
    "momentum": lambda ps: nn.Momentum(ps, 0.1, 0.9, weight_decay=1e-4),
    "momentum_dynamic_scaled": lambda ps: nn.Momentum(
        ps, nn.PolynomialDecayLR(0.1, 0.001, 10, 2.0), 0.9, weight_decay=1e-4, loss_scale=8.0),
    "momentum_groups": lambda ps: nn.Momentum(
        [{"params": ps[:3], "lr": 0.2, "weight_decay": 0.0}, {"params": ps[3:]}], 0.1, 0.9,
        weight_decay=5e-4),
    "momentum_nesterov": lambda ps: nn.Momentum(ps, 0.1, 0.9, use_nesterov=True),
    "sgd": lambda ps: nn.SGD(ps, 0.1, weight_decay=1e-4),
    "adam": lambda ps: nn.Adam(ps, 1e-3, weight_decay=1e-4),
    "adamw": lambda ps: nn.AdamWeightDecay(ps, 1e-3, weight_decay=1e-2),
}
FUSED = {"momentum", "momentum_dynamic_scaled", "momentum_groups"}


def _run(kind, backend, use_clip, steps=4, **kw):
    ps = _params()
    inner = INNER[kind](ps)
    lars = ms_optim.LARS(inner, epsilon=1e-6, coefficient=0.02, use_clip=use_clip,
                         backend=backend, **kw)
    scale = 8.0 if kind == "momentum_dynamic_scaled" else 1.0
    for t in range(steps):
        lars(tuple(g * scale for g in _grads(t)))
    state = [p.asnumpy() for p in ps]
    state += [m.asnumpy() for m in getattr(inner, "moments", ())]
    state += [m.asnumpy() for m in getattr(inner, "moment1", ())]
    return lars, state


def test_square_sums_kernel_matches_float64(mode):
    """Sizes around the kernel's chunk (2^15) and vector width, so that both threads, partial
    chunks and loop tails run."""
    del mode
    rng = np.random.default_rng(3)
    sizes = [1, 3, 5, 4096, 32768, 32769, 100003, 2 * 32768 + 7]
    xs = [rng.standard_normal(n).astype(np.float32) * rng.choice([1e-3, 1.0, 1e3]) for n in sizes]
    op = _cpu_kernels.square_sums_op(len(xs))
    got = op(*[Tensor(x) for x in xs]).asnumpy()
    want = np.array([np.sum(x.astype(np.float64) ** 2) for x in xs])
    np.testing.assert_allclose(got, want, rtol=2e-7)
    assert got.dtype == np.float32


@pytest.mark.parametrize("kind", sorted(FUSED))
def test_momentum_fusion_is_bit_identical_to_portable(mode, kind):
    """No layer adapted (tau = 1 on both paths): the fused update (loss scale, weight decay,
    momentum, learning rate per group / per step) equals the portable one bit for bit."""
    del mode
    fused, a = _run(kind, "cpu", False, lars_filter=lambda p: False)
    portable, b = _run(kind, "portable", False, lars_filter=lambda p: False)
    assert fused.backend == "cpu" and fused._fused_momentum  # pylint: disable=protected-access
    assert portable.backend == "portable"
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert int(fused.global_step.asnumpy()[0]) == 4 == int(portable.global_step.asnumpy()[0])


@pytest.mark.parametrize("use_clip", [False, True])
@pytest.mark.parametrize("kind", sorted(FUSED))
def test_momentum_fusion_matches_portable(mode, kind, use_clip):
    """Adapted layers: trust ratios from float64-accumulated norms (kernel) vs float32 (portable)."""
    del mode
    fused, a = _run(kind, "cpu", use_clip)
    portable, b = _run(kind, "portable", use_clip)
    assert fused._fused_momentum  # pylint: disable=protected-access
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    assert int(fused.global_step.asnumpy()[0]) == 4
    np.testing.assert_allclose(fused.lars_trust.asnumpy(), portable.lars_trust.asnumpy(),
                               rtol=1e-6)
    assert not np.allclose(fused.lars_trust.asnumpy(), 1.0)  # the ratios did act


@pytest.mark.parametrize("kind", ["momentum_nesterov", "sgd", "adam", "adamw"])
def test_other_optimizers_match_portable(mode, kind):
    """Square sums from the kernel (float64 accumulation), the rest unchanged: equal up to the
    rounding of the float32 norms. Nesterov is not fused (MindSpore's CPU kernel ignores it;
    the kernel does not guess)."""
    del mode
    cpu, a = _run(kind, "cpu", use_clip=False)
    _, b = _run(kind, "portable", use_clip=False)
    assert cpu.backend == "cpu" and not cpu._fused_momentum  # pylint: disable=protected-access
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_momentum_subclass_is_not_fused():
    class MyMomentum(nn.Momentum):
        pass
    lars = ms_optim.LARS(MyMomentum(_params(), 0.1, 0.9), backend="cpu")
    assert not lars._fused_momentum  # pylint: disable=protected-access


def test_nonfinite_step_leaves_fused_state_untouched():
    ps = _params()
    inner = nn.Momentum(ps, 0.1, 0.9, weight_decay=1e-4)
    lars = ms_optim.LARS(inner, backend="cpu")
    lars(_grads(0))
    before = [p.asnumpy().copy() for p in ps] + [m.asnumpy().copy() for m in inner.moments]
    bad = list(_grads(1))
    bad[3] = Tensor(np.full(SHAPES["fc.weight"], np.inf, np.float32))
    assert not bool(lars(tuple(bad)))
    after = [p.asnumpy() for p in ps] + [m.asnumpy() for m in inner.moments]
    for x, y in zip(before, after):
        np.testing.assert_array_equal(x, y)
    assert int(lars.global_step.asnumpy()[0]) == 1
    assert int(lars.nonfinite_steps.asnumpy()[0]) == 1
    assert int(lars.nonfinite_param.asnumpy()[0]) == 3


def test_auto_picks_cpu_on_cpu_and_portable_when_asked():
    assert ms_optim.LARS(nn.Momentum(_params(), 0.1, 0.9)).backend == "cpu"
    assert ms_optim.LARS(nn.Momentum(_params(), 0.1, 0.9), backend="portable").backend == "portable"


def test_float16_parameters_use_portable(caplog):
    ps = _params(dtype=np.float16)
    with caplog.at_level(logging.WARNING, logger="ms_optim"):
        lars = ms_optim.LARS(nn.SGD(ps, 0.1))
    assert lars.backend == "portable"
    assert "float32 parameters" in caplog.text
    with pytest.raises(ValueError, match="backend='cpu' cannot be used: the kernels take float32"):
        ms_optim.LARS(nn.SGD(_params(dtype=np.float16), 0.1), backend="cpu")


@pytest.fixture
def rebuild(monkeypatch):
    """Returns a function that forgets the cached build result, to call after patching the
    environment; on teardown the patches are undone and the real build is found again."""
    def forget():
        _cpu_kernels._build.cache_clear()  # pylint: disable=protected-access
    yield forget
    monkeypatch.undo()
    forget()
    assert _cpu_kernels.library() is not None


def test_missing_compiler_falls_back(monkeypatch, rebuild, tmp_path, caplog):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(_cpu_kernels.shutil, "which", lambda name: None)
    rebuild()
    with caplog.at_level(logging.WARNING, logger="ms_optim"):
        lars = ms_optim.LARS(nn.Momentum(_params(), 0.1, 0.9))
    assert lars.backend == "portable"
    assert "no C++ compiler found" in caplog.text
    with pytest.raises(ValueError, match="no C\\+\\+ compiler found"):
        ms_optim.LARS(nn.Momentum(_params(), 0.1, 0.9), backend="cpu")


def test_switch_off_by_environment(monkeypatch, rebuild, caplog):
    monkeypatch.setenv("MS_OPTIM_CPU_KERNELS", "0")
    rebuild()
    with caplog.at_level(logging.WARNING, logger="ms_optim"):
        lars = ms_optim.LARS(nn.Momentum(_params(), 0.1, 0.9))
    assert lars.backend == "portable"
    assert "unavailable" not in caplog.text  # asked for: no warning


def test_build_into_fresh_cache_in_a_new_process(tmp_path):
    """A clean cache folder: the library is compiled there, once, and loads."""
    code = ("import ms_optim._cpu_kernels as k; p = k.library(); "
            "print(p); assert p and p.startswith(%r), k.unavailable_reason()" % str(tmp_path))
    env = {"MS_OPTIM_KERNEL_CACHE": str(tmp_path)}
    full_env = dict(os.environ, **env)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=full_env, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    built = list(tmp_path.glob("lars_cpu_*.so"))
    assert len(built) == 1 and built[0].stat().st_size > 0
    assert not list(tmp_path.glob("*.so.tmp")) and len(list(tmp_path.iterdir())) == 1


def test_resolve_backend_cpu_rules():
    ok = lambda: None  # noqa: E731
    assert _backend.resolve_backend("auto", (), "T", device_target="CPU",
                                    mode=ms.GRAPH_MODE, cpu_kernels=ok) == "cpu"
    assert _backend.resolve_backend("auto", (), "T", device_target="CPU",
                                    mode=ms.PYNATIVE_MODE, cpu_kernels=ok) == "cpu"
    assert _backend.resolve_backend("auto", (), "T", device_target="GPU",
                                    mode=ms.GRAPH_MODE, cpu_kernels=ok) == "portable"
    assert _backend.resolve_backend("auto", (), "T", device_target="CPU",
                                    mode=ms.GRAPH_MODE) == "portable"
    with pytest.raises(ValueError, match="not 'CPU'"):
        _backend.resolve_backend("cpu", (), "T", device_target="GPU", cpu_kernels=ok)
    with pytest.raises(ValueError, match="backend='cpu' is not offered"):
        _backend.resolve_backend("cpu", (), "T", device_target="CPU")


def test_thor_rejects_cpu_backend():
    net = nn.SequentialCell([nn.Dense(4, 3)])
    with pytest.raises(ValueError, match="backend='cpu' is not offered"):
        ms_optim.thor(net, Tensor(np.full(4, 0.1, np.float32)), Tensor(np.full(4, 0.03, np.float32)),
                      0.9, backend="cpu")


def test_training_with_model_equals_portable():
    """TrainOneStepCell over a small CNN: the fused step trains exactly as the portable one."""
    def train(backend):
        ms.set_seed(1)
        net = nn.SequentialCell([nn.Conv2d(1, 4, 3, has_bias=True), nn.ReLU(), nn.Flatten(),
                                 nn.Dense(4 * 6 * 6, 3)])
        lars = ms_optim.LARS(nn.Momentum(net.trainable_params(), 0.1, 0.9, weight_decay=1e-4),
                             coefficient=0.02, lars_filter=ms_optim.lars_filter_for(net),
                             backend=backend)
        step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(
            sparse=True, reduction="mean")), lars)
        rng = np.random.default_rng(0)
        x = Tensor(rng.standard_normal((8, 1, 6, 6)).astype(np.float32))
        y = Tensor(rng.integers(0, 3, 8).astype(np.int32))
        return [float(step(x, y).asnumpy()) for _ in range(6)], lars.backend
    got, be_cpu = train("auto")
    want, be_port = train("portable")
    assert (be_cpu, be_port) == ("cpu", "portable")
    assert got[-1] < got[0]
    assert got == want


def test_unwritable_home_cache_falls_back_to_temp(monkeypatch, rebuild, tmp_path):
    blocker = tmp_path / "home_is_a_file"
    blocker.write_text("")
    monkeypatch.delenv("MS_OPTIM_KERNEL_CACHE", raising=False)
    monkeypatch.setattr(_cpu_kernels.os.path, "expanduser", lambda p: str(blocker))
    monkeypatch.setattr(_cpu_kernels.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    rebuild()
    path = _cpu_kernels.library()
    assert path is not None, _cpu_kernels.unavailable_reason()
    assert path.startswith(str(tmp_path / "tmp")), path


def test_aot_white_list_elsewhere_falls_back(monkeypatch, rebuild, tmp_path, caplog):
    """MindSpore refuses AOT libraries outside MS_CUSTOM_AOT_WHITE_LIST: LARS must not fail."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    monkeypatch.setenv("MS_CUSTOM_AOT_WHITE_LIST", str(allowed))
    rebuild()
    with caplog.at_level(logging.WARNING, logger="ms_optim"):
        lars = ms_optim.LARS(nn.Momentum(_params(), 0.1, 0.9))
    assert lars.backend == "portable"
    assert "refused" in caplog.text
