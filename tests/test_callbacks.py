"""OptimizerMonitor: JSON lines per step, THOR refresh pattern and fault warnings, PNG summary."""
import json
import logging

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn

import ms_optim
import thor_helpers as H


def _data(n=16, batch=4, bad_row=None):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    if bad_row is not None:
        x[bad_row, 0] = 1e20  # x^T x overflows: that refresh keeps the last good inverses
    y = rng.integers(0, 3, n).astype(np.int32)
    return ms.dataset.NumpySlicesDataset({"x": x, "y": y}, shuffle=False).batch(batch)


def test_thor_rows_faults_and_plot(tmp_path, caplog):
    rng = np.random.default_rng(1)
    net = H.build_net(H.mlp_spec(rng))
    opt = ms_optim.thor(net, Tensor(0.0, ms.float32), Tensor(0.1, ms.float32), 0.9, frequency=2)
    loss = H.loss_fn()
    model = ms_optim.ConvertModelUtils.convert_to_thor_model(ms.train.Model(net, loss, opt), net,
                                                             loss, opt)
    path, png = tmp_path / "m.jsonl", tmp_path / "m.png"
    mon = ms_optim.OptimizerMonitor(str(path), opt, png=str(png))
    with caplog.at_level(logging.WARNING, logger="ms_optim"):
        # rows 8..11 are the third batch = global step 2, a refresh step
        model.train(1, _data(bad_row=9), callbacks=[mon], dataset_sink_mode=False)
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["refresh"] for r in rows] == [True, False, True, False]
    assert rows[0]["faults"] == [0, 0] and rows[2]["faults"] == [1, 1]
    assert all(r["damping"] == pytest.approx(0.1) and r["lr"] == 0.0 for r in rows)
    assert all(np.isfinite(r["loss"]) and r["seconds"] > 0 for r in rows)
    warned = [r.getMessage() for r in caplog.records if "kept its last good inverses" in r.getMessage()]
    assert len(warned) == 2 and all("step 3" in w for w in warned)
    assert png.stat().st_size > 1000


def test_per_steps_and_plain_optimizer(tmp_path):
    net = nn.Dense(6, 3)
    opt = nn.Momentum(net.trainable_params(), 0.1, 0.9)
    model = ms.train.Model(net, H.loss_fn(), opt)
    path = tmp_path / "m.jsonl"
    model.train(1, _data(), callbacks=[ms_optim.OptimizerMonitor(str(path), opt, per_steps=2)],
                dataset_sink_mode=False)
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    assert [r["step"] for r in rows] == [2, 4] and "refresh" not in rows[0]


@pytest.mark.parametrize("kwargs,err", [(dict(path=1), TypeError), (dict(png=2), TypeError),
                                        (dict(per_steps=0), ValueError),
                                        (dict(per_steps=1.0), TypeError)])
def test_bad_arguments(kwargs, err):
    args = dict(path="x.jsonl", optimizer=None)
    args.update(kwargs)
    with pytest.raises(err):
        ms_optim.OptimizerMonitor(**args)


@pytest.mark.parametrize("use_clip", [False, True])
def test_lars_trust_ratios_recorded_and_match_float64(mode, use_clip):
    """LARS keeps the last step's trust ratios of the adapted parameters (portable path); they
    equal the float64 formula, the monitor reports them; a non-adapted bias is not listed."""
    import ms_optim
    ms.set_seed(3)
    net = nn.SequentialCell([nn.Dense(4, 5), nn.ReLU(), nn.Dense(5, 3)])
    lr, wd, eta, eps = 0.5, 1e-2, 0.02, 1e-6
    inner = nn.Momentum(net.trainable_params(), lr, 0.9, weight_decay=wd, loss_scale=8.0)
    opt = ms_optim.LARS(inner, epsilon=eps, coefficient=eta, use_clip=use_clip,
                        lars_filter=ms_optim.lars_filter_for(net))
    rng = np.random.default_rng(0)
    params = net.trainable_params()
    w = [p.asnumpy().astype(np.float64) for p in params]
    grads = [rng.standard_normal(p.shape).astype(np.float32) * 8.0 for p in params]  # loss-scaled
    opt(tuple(ms.Tensor(g) for g in grads))
    want = []
    for p, wi, gi in zip(params, w, grads):
        if "bias" in p.name:
            continue
        wn, gn = np.linalg.norm(wi), np.linalg.norm(gi.astype(np.float64) / 8.0)
        tau = eta * wn / (gn + wd * wn + eps)
        want.append(min(max(tau / lr, 0.0), 1.0) if use_clip else tau)
    np.testing.assert_allclose(opt.lars_trust.asnumpy(), want, rtol=1e-5)
    assert "lars_trust" not in {p.name for p in opt.get_parameters()}  # not checkpointed


def test_refresh_rows_layer_damping_and_condition(tmp_path):
    """On refresh steps: per layer delta = sqrt(lambda / T) and the larger condition number of
    the two damped factors, against float64 NumPy on the layer's statistics (grouped conv,
    depthwise conv, a Dense whose 504-wide A has a padded last block)."""
    rng = np.random.default_rng(3)
    lam = 4.0  # the Dense's delta = 2 > 1: counting the identity padding would change its kappa
    net, mon = H.monitored_grouped_run(rng, tmp_path / "m.jsonl", lam, 6)
    rows = mon.rows
    assert [r["refresh"] for r in rows] == [True, False] and "condition" not in rows[1]
    layers = [net[0], net[2], net[5]]
    for k, layer in enumerate(layers):
        t = float(layer.thor_t.asnumpy())
        delta = np.sqrt(lam / t)
        assert rows[0]["layer_damping"][k] == pytest.approx(delta, rel=1e-6)
        want = 1.0
        for stat, d in ((layer.matrix_a.asnumpy(), layer.thor_dims[0]),
                        (layer.matrix_g.asnumpy(), layer.thor_dims[1])):
            s = stat.shape[-1]
            nb = -(-d // s)
            for b in range(stat.shape[0]):
                size = d - (nb - 1) * s if b % nb == nb - 1 else s
                blk = stat[b, :size, :size].astype(np.float64) + delta * np.eye(size)
                want = max(want, np.linalg.cond(blk))
        assert rows[0]["condition"][k] == pytest.approx(want, rel=2e-3), k
    assert layers[2].matrix_a.shape == (4, 128, 128)  # 504 = 3 * 128 + 120: padded last block


def test_adaptive_damping_rows(tmp_path):
    """With adaptive_damping: each row's damping_scale is the multiplier the step used (the one
    the previous refresh's adaptation left), damping = s * lambda_t, and refresh rows carry the
    reduction ratio measured after the step; the plot gets the multiplier panel."""
    rng = np.random.default_rng(1)
    net = H.build_net(H.mlp_spec(rng))
    opt = ms_optim.thor(net, Tensor(0.1, ms.float32), Tensor(0.1, ms.float32), 0.9, frequency=2,
                        adaptive_damping=0.5)
    loss = H.loss_fn()
    model = ms_optim.ConvertModelUtils.convert_to_thor_model(ms.train.Model(net, loss, opt), net,
                                                             loss, opt)
    png = tmp_path / "m.png"
    mon = ms_optim.OptimizerMonitor(str(tmp_path / "m.jsonl"), opt, png=str(png))
    model.train(1, _data(n=24), callbacks=[mon], dataset_sink_mode=False)
    rows = mon.rows
    assert [r["refresh"] for r in rows] == [True, False] * 3
    scales = [r["damping_scale"] for r in rows]
    assert scales[0] == 1.0
    for r in rows:
        assert r["damping"] == pytest.approx(0.1 * r["damping_scale"], rel=1e-6)
        assert ("lm_rho" in r) == r["refresh"]
    for k in (0, 2, 4):  # the rule, applied to the logged rho, gives the next step's multiplier
        rho, s = rows[k]["lm_rho"], scales[k]
        want = s * 0.5 if rho > 0.75 else s / 0.5 if rho < 0.25 else s
        assert scales[k + 1] == pytest.approx(min(max(want, 1e-3), 1e3), rel=1e-6)
        if k + 2 < len(rows):  # a stale step does not adapt
            assert scales[k + 2] == scales[k + 1]
    assert float(opt.thor_damping_scale.asnumpy()) != 1.0
    assert png.stat().st_size > 1000
