"""Every documented Raises line of ms_optim.LARS, raised before anything changes."""
import copy

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn

import ms_optim


def _inner(**kw):
    net = nn.Dense(3, 2)
    return nn.Momentum(net.trainable_params(), kw.pop("learning_rate", 0.1), 0.9,
                       weight_decay=0.01, **kw)


def _group_dynamic_inner():
    net = nn.Dense(3, 2)
    w, b = net.trainable_params()
    lr = Tensor(np.array([0.1, 0.05, 0.01], np.float32))
    return nn.Momentum([{"params": [w], "lr": lr}, {"params": [b]}], learning_rate=lr,
                       momentum=0.9)


# (build inner optimizer, LARS kwargs, error type, message regex naming the argument)
CASES = [
    (lambda: "sgd", {}, TypeError, "'optimizer' must be a mindspore.nn.Optimizer"),
    (lambda: nn.Dense(2, 2), {}, TypeError, "'optimizer' must be a mindspore.nn.Optimizer"),
    (_inner, {"epsilon": 1}, TypeError, "'epsilon' must be float, but got int"),
    (_inner, {"coefficient": 1}, TypeError, "'coefficient' must be float, but got int"),
    (_inner, {"coefficient": "0.1"}, TypeError, "'coefficient' must be float, but got str"),
    (_inner, {"use_clip": 1}, TypeError, "'use_clip' must be bool, but got int"),
    (_inner, {"lars_filter": None}, TypeError, "'lars_filter' must be callable"),
    (_inner, {"lars_filter": lambda: True}, TypeError, "'lars_filter' must be callable as"),
    (_inner, {"lars_filter": ms_optim.lars_filter_for(nn.SequentialCell([nn.Dense(5, 5)]))}, ValueError,
     "'lars_filter' was built by lars_filter_for for another network"),
    (_inner, {"epsilon": -1.0}, ValueError, "'epsilon' must be a finite number >= 0"),
    (_inner, {"coefficient": -1.0}, ValueError, "'coefficient' must be a finite number >= 0"),
    (_inner, {"epsilon": float("nan")}, ValueError, "'epsilon'"),
    (_group_dynamic_inner, {"use_clip": True}, ValueError, "'use_clip' is True"),
    (_inner, {"backend": "tpu"}, ValueError, "'backend' must be one of"),
    (_inner, {"backend": "ascend"}, ValueError, "backend='ascend' cannot be used"),
]


def _state(opt):
    return (opt.exec_weight_decay, copy.copy(opt.decay_flags), opt.dynamic_weight_decay,
            opt.need_scale, float(opt.reciprocal_scale.asnumpy()))


@pytest.mark.parametrize("make_inner, kwargs, err, regex", CASES)
def test_raises_before_changing_anything(make_inner, kwargs, err, regex):
    inner = make_inner()
    before = _state(inner) if isinstance(inner, nn.Optimizer) else None
    with pytest.raises(err, match=regex):
        ms_optim.LARS(inner, **kwargs)
    if before is not None:
        assert _state(inner) == before, "a failed LARS(...) must leave the optimizer untouched"


def test_lars_of_lars_rejected():
    lars = ms_optim.LARS(_inner())
    with pytest.raises(TypeError, match="must not itself be a LARS"):
        ms_optim.LARS(lars)


def test_group_dynamic_lr_without_clip_is_fine():
    ms_optim.LARS(_group_dynamic_inner(), use_clip=False)


def test_lars_filter_for_raises():
    with pytest.raises(TypeError, match="'net' must be Cell"):
        ms_optim.lars_filter_for("net")
    with pytest.raises(TypeError, match="'verbose' must be bool"):
        ms_optim.lars_filter_for(nn.Dense(2, 2), verbose=1)


def test_upstream_signature_and_defaults():
    import inspect
    sig = inspect.signature(ms_optim.LARS)
    params = list(sig.parameters.values())
    assert [p.name for p in params[:5]] == ["optimizer", "epsilon", "coefficient", "use_clip",
                                            "lars_filter"]
    assert sig.parameters["epsilon"].default == 1e-05
    assert sig.parameters["coefficient"].default == 0.001
    assert sig.parameters["use_clip"].default is False
    flt = sig.parameters["lars_filter"].default
    named = lambda n: ms.Parameter(Tensor(np.zeros(1, np.float32)), name=n)  # noqa: E731
    assert flt(named("dense.weight")) and not flt(named("dense.bias"))
    assert not flt(named("encoder.LayerNorm.gamma")) and flt(named("bn.gamma"))
    assert sig.parameters["backend"].kind is inspect.Parameter.KEYWORD_ONLY


def test_default_filter_is_shown_as_upstream_writes_it():
    """help(ms_optim.LARS) shows upstream's lambda, not '<function ... at 0x...>', and the
    default filters like it."""
    import inspect
    import ms_optim as mo
    text = "lars_filter=lambda x: 'LayerNorm' not in x.name and 'bias' not in x.name"
    assert text in str(inspect.signature(mo.LARS))
    default = inspect.signature(mo.LARS).parameters["lars_filter"].default

    class P:
        def __init__(self, name):
            self.name = name
    assert [default(P(n)) for n in ("fc.weight", "fc.bias", "LayerNorm.gamma", "bn.gamma")] \
        == [True, False, False, True]
