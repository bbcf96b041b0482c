"""Non-finite gradients without a loss-scale manager (issue 8, item 4): the step is skipped and
reported, never silent.

A batch with a NaN input makes the first layer's weight gradient NaN. The step must leave every
Parameter of the train cell (weights, the wrapped optimizer's state, THOR's inverses,
``thor_kl_scale``, ``thor_fault_count``, ``global_step``) bit-identical, except the two report
counters ``nonfinite_steps`` / ``nonfinite_param``; the next finite step trains normally.
"""
import json
import logging
import warnings

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

import ms_optim
from ms_optim import ThorTrainOneStepCell, thor

REPORT = ("nonfinite_steps", "nonfinite_param")


@pytest.fixture(params=["GRAPH"])
def graph(request):
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=ms.GRAPH_MODE)


def _set_mode(mode):
    ms.set_context(mode=ms.GRAPH_MODE if mode == "GRAPH" else ms.PYNATIVE_MODE)


def _net():
    ms.set_seed(1)
    return nn.SequentialCell([nn.Dense(4, 8, activation="relu"), nn.Dense(8, 3)])


def _loss():
    return nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")


def _batch(seed, nan=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    y = rng.integers(0, 3, 16).astype(np.int32)
    if nan:
        x[5, 2] = np.nan
    return ms.Tensor(x), ms.Tensor(y)


def _snapshot(cell):
    return {name: p.asnumpy().copy() for name, p in cell.parameters_and_names()}


def _assert_skipped(before, cell, opt, first_bad=0):
    """Everything bit-identical except the report counters, which say one more skip."""
    after = _snapshot(cell)
    assert before.keys() == after.keys()
    for name, old in before.items():
        if name.split(".")[-1] in REPORT:
            continue
        assert old.dtype == after[name].dtype and np.array_equal(old, after[name], equal_nan=True), name
    steps = [n for n in before if n.split(".")[-1] == "nonfinite_steps"]
    assert steps
    for n in steps:
        assert after[n][0] == before[n][0] + 1, n
    assert int(opt.nonfinite_param.asnumpy()[0]) == first_bad


def _thor_step(kl_clip=None, **kw):
    net = _net()
    opt = thor(net, ms.Tensor(0.05, ms.float32), ms.Tensor(0.03, ms.float32), 0.9,
               weight_decay=1e-4, frequency=3, kl_clip=kl_clip, **kw)
    return ThorTrainOneStepCell(nn.WithLossCell(net, _loss()), opt), opt


def _gs(opt):
    return int(opt.global_step.asnumpy()[0])


def test_thor_adaptive_damping_refresh_step_nonfinite_is_skipped(graph):
    """adaptive_damping: a NaN batch on a later refresh step leaves weights, inverses and the
    damping multiplier bit-identical; only the report counters change and rho becomes NaN (no
    adaptation from a skipped step)."""
    step, opt = _thor_step(adaptive_damping=0.5, inverse_method="eigh")
    for s in range(3):
        step(*_batch(s))
    assert np.isfinite(float(opt.thor_lm_rho.asnumpy()))
    assert step.next_step_refreshes()
    before = _snapshot(step)
    step(*_batch(3, nan=True))
    assert np.isnan(float(opt.thor_lm_rho.asnumpy()))
    key = [k for k in before if k.endswith("thor_lm_rho")]
    assert len(key) == 1
    before[key[0]] = opt.thor_lm_rho.asnumpy().copy()  # NaN after the skip (checked above)
    _assert_skipped(before, step, opt)


@pytest.mark.parametrize("mode", ["GRAPH", "PYNATIVE"])
def test_thor_refresh_step_nonfinite_is_skipped(mode):
    _set_mode(mode)
    step, opt = _thor_step(kl_clip=1e-3)
    assert step.next_step_refreshes()
    before = _snapshot(step)
    step(*_batch(0, nan=True))  # global step 0: a refresh step
    _assert_skipped(before, step, opt)
    assert _gs(opt) == 0 and int(opt.nonfinite_steps.asnumpy()[0]) == 1
    assert step.next_step_refreshes()  # the refresh is retried
    losses = [float(step(*_batch(s)).asnumpy()) for s in range(1, 4)]
    assert np.all(np.isfinite(losses)) and _gs(opt) == 3
    for p in opt.a_inv:
        assert np.all(np.isfinite(p.asnumpy()))
    ms.set_context(mode=ms.GRAPH_MODE)


def test_thor_stale_step_nonfinite_is_skipped(graph):
    step, opt = _thor_step()
    step(*_batch(1))  # refresh (0)
    step(*_batch(2))  # stale (1)
    before = _snapshot(step)
    assert not step.next_step_refreshes()
    step(*_batch(3, nan=True))  # stale (2): skipped
    _assert_skipped(before, step, opt)
    assert _gs(opt) == 2
    # the host count ran ahead by the skipped step; the schedule follows global_step
    assert not step.next_step_refreshes()
    loss = float(step(*_batch(4)).asnumpy())  # stale (2)
    assert np.isfinite(loss) and _gs(opt) == 3
    assert step.next_step_refreshes()  # global step 3: refresh
    inv = [p.asnumpy().copy() for p in opt.g_inv]
    step(*_batch(5))
    assert any(not np.array_equal(a, p.asnumpy()) for a, p in zip(inv, opt.g_inv))
    assert int(opt.nonfinite_steps.asnumpy()[0]) == 1
    assert not np.any(opt.thor_fault_count.asnumpy())


def test_thor_inf_gradient_is_skipped(graph):
    """An Inf in one gradient (not from the data): the optimizer called directly."""
    step, opt = _thor_step()
    step(*_batch(1))
    step.optimizer.thor = False
    before = _snapshot(step)
    grads = tuple(ms.Tensor(np.zeros(p.shape, np.float32)) for p in opt.parameters)
    g = np.zeros(opt.parameters[3].shape, np.float32)
    g[1] = np.inf
    grads = grads[:3] + (ms.Tensor(g),) + grads[4:]
    opt(grads)
    _assert_skipped(before, step, opt, first_bad=3)


def _lars_cell(inner):
    net = _net()
    params = net.trainable_params()
    base = nn.Momentum(params, 0.1, 0.9, weight_decay=1e-4) if inner == "Momentum" \
        else nn.Adam(params, 1e-3, weight_decay=1e-4)
    lars = ms_optim.LARS(base, lars_filter=ms_optim.lars_filter_for(net))
    return nn.TrainOneStepCell(nn.WithLossCell(net, _loss()), lars), lars


@pytest.mark.parametrize("inner,mode", [("Momentum", "GRAPH"), ("Adam", "GRAPH"),
                                        ("Momentum", "PYNATIVE")])
def test_lars_nonfinite_step_is_skipped(inner, mode):
    _set_mode(mode)
    train, lars = _lars_cell(inner)
    train(*_batch(1))
    before = _snapshot(train)
    train(*_batch(2, nan=True))
    _assert_skipped(before, train, lars)
    assert _gs(lars) == 1
    weights = [p.asnumpy().copy() for p in lars.parameters]
    loss = float(train(*_batch(3)).asnumpy())
    assert np.isfinite(loss) and _gs(lars) == 2
    assert all(not np.array_equal(w, p.asnumpy()) for w, p in zip(weights, lars.parameters))
    assert int(lars.nonfinite_steps.asnumpy()[0]) == 1
    ms.set_context(mode=ms.GRAPH_MODE)


def _dataset(nan_batch):
    xs, ys = zip(*(_batch(s, nan=(s == nan_batch)) for s in range(3)))
    return ms.dataset.NumpySlicesDataset(
        {"x": np.concatenate([x.asnumpy() for x in xs]),
         "y": np.concatenate([y.asnumpy() for y in ys])}, shuffle=False).batch(16)


@pytest.mark.parametrize("which", ["LARS", "THOR"])
def test_monitor_warns_naming_step_and_layer(which, graph, tmp_path, caplog):
    net = _net()
    if which == "LARS":
        opt = ms_optim.LARS(nn.Momentum(net.trainable_params(), 0.1, 0.9))
        model = ms.train.Model(net, _loss(), opt)
    else:
        opt = thor(net, ms.Tensor(0.05, ms.float32), ms.Tensor(0.03, ms.float32), 0.9, frequency=2)
        model = ms_optim.ConvertModelUtils.convert_to_thor_model(
            ms.train.Model(net, _loss(), opt), net, _loss(), opt)
    path = str(tmp_path / "m.jsonl")
    with caplog.at_level(logging.WARNING, logger="ms_optim"), \
            pytest.warns(UserWarning, match=r"step 2 .*'0\.weight'"):
        model.train(1, _dataset(nan_batch=1), callbacks=[ms_optim.OptimizerMonitor(path, opt)],
                    dataset_sink_mode=False)
    msgs = [r.getMessage() for r in caplog.records if "not finite" in r.getMessage()]
    assert len(msgs) == 1 and "step 2 " in msgs[0] and "'0.weight'" in msgs[0], msgs
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    assert [r["nonfinite_steps"] for r in rows] == [0, 1, 1]
    assert _gs(opt) == 2


def test_monitor_silent_without_nonfinite(graph, tmp_path):
    net = _net()
    opt = ms_optim.LARS(nn.Momentum(net.trainable_params(), 0.1, 0.9))
    model = ms.train.Model(net, _loss(), opt)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not finite")
        model.train(1, _dataset(nan_batch=-1),
                    callbacks=[ms_optim.OptimizerMonitor(str(tmp_path / "m.jsonl"), opt)],
                    dataset_sink_mode=False)
    assert int(opt.nonfinite_steps.asnumpy()[0]) == 0
    assert int(opt.nonfinite_param.asnumpy()[0]) == -1


@pytest.mark.parametrize("where", ["adapted", "excluded"])
def test_lars_inf_gradient_is_skipped(where, graph):
    """+Inf and -Inf in one gradient (their sum is NaN), in a LARS-adapted weight (judged by
    ||g||^2) or an excluded bias (judged by its own sum); the optimizer called directly."""
    train, lars = _lars_cell("Adam")
    train(*_batch(1))
    before = _snapshot(train)
    names = [p.name for p in lars.parameters]
    k = names.index("1.weight" if where == "adapted" else "0.bias")
    grads = [np.zeros(p.shape, np.float32) for p in lars.parameters]
    grads[k].reshape(-1)[:2] = (np.inf, -np.inf)
    applied = lars(tuple(ms.Tensor(g) for g in grads))
    assert not bool(applied.asnumpy())
    _assert_skipped(before, train, lars, first_bad=k)
