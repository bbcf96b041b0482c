"""LARS against the float64 NumPy reference (tests/reference/lars_ref.py), in GRAPH and PYNATIVE.

Feature: ms_optim.LARS wraps any nn.Optimizer.
Description: randomised configurations (shapes, epsilon incl. 0, coefficient, clip, weight decay,
    loss scale, parameter groups, dynamic lr / weight decay, filters, zero-initialised parameter)
    run several steps with gradients fed directly to the optimizer.
Expectation: weights, moments and global_step equal the reference at every step.
"""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Parameter, Tensor, nn

import ms_optim
from ms_optim.ops import lars_gradient
from reference import lars_ref

# float32 arithmetic vs the float64 reference, 3-4 steps: a few ulps of float32 per op.
RTOL, ATOL = 2e-5, 1e-7
N_STEPS = 3  # enough for momentum state and a dynamic lr/wd to change value twice


class ParamNet(nn.Cell):
    """A bag of named Parameters; gradients are fed to the optimizer directly."""

    def __init__(self, arrays):
        super().__init__()
        self.names = list(arrays)
        for i, (name, arr) in enumerate(arrays.items()):
            setattr(self, f"p{i}", Parameter(Tensor(arr.astype(np.float32)), name=name))

    def construct(self):
        return None


class StepWD(nn.Cell):
    """Dynamic weight decay: wd_t = base * (1 + t)."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def construct(self, global_step):
        return self.base * (1.0 + ms.ops.cast(global_step, ms.float32).reshape(()))


def _make_config(rng, k):
    shapes = [(3, 4), (5,), (2, 3, 2, 2), (7, 2)]
    arrays = {}
    for j, shape in enumerate(shapes):
        name = ["layer.weight", "layer.bias", "conv.weight", "bn.gamma"][j]
        arrays[name] = rng.standard_normal(shape) * rng.choice([0.1, 1.0, 3.0])
    if k % 3 == 0:
        arrays["head.weight"] = np.zeros((4, 3))  # zero-initialised layer
    cfg = dict(
        arrays=arrays,
        epsilon=float(rng.choice([0.0, 1e-5, 1e-3])),
        coefficient=float(rng.choice([1e-3, 0.02, 0.5])),
        use_clip=bool(k % 2),
        wd=float(rng.choice([0.0, 1e-4, 0.05])),
        loss_scale=float(rng.choice([1.0, 8.0, 1024.0])),
        grouped=k % 4 in (1, 2),
        dynamic_lr=k % 5 in (0, 3),
        dynamic_wd=k % 7 == 4,
        # (nn.Momentum's use_nesterov is ignored by the CPU ApplyMomentum kernel in 2.10: not
        # LARS's business, so the reference covers plain momentum and SGD.)
        inner=["momentum", "sgd"][(k // 2) % 2],
        filter=["upstream", "role", "all", "none"][k % 4],
        zero_grad_step=int(rng.integers(0, N_STEPS)),
    )
    if cfg["inner"] == "sgd":
        cfg["dynamic_wd"] = False  # nn.SGD rejects a dynamic weight decay
    if cfg["grouped"] and cfg["dynamic_lr"] and cfg["use_clip"]:
        cfg["dynamic_lr"] = False  # that combination is a documented ValueError (tested below)
    return cfg


def _lr_schedule(cfg, group):
    base = 0.1 if group == 0 else 0.03
    if cfg["dynamic_lr"]:
        return [base * (1.0 + 0.5 * t) for t in range(N_STEPS + 1)]
    return [base] * (N_STEPS + 1)


def _build(cfg, backend="auto"):
    net = ParamNet(cfg["arrays"])
    params = net.trainable_params()
    lr0 = _lr_schedule(cfg, 0)
    lr_arg = Tensor(np.array(lr0, np.float32)) if cfg["dynamic_lr"] else lr0[0]
    wd_arg = StepWD(cfg["wd"]) if cfg["dynamic_wd"] else cfg["wd"]
    if cfg["grouped"]:
        lr1 = _lr_schedule(cfg, 1)
        lr1_arg = Tensor(np.array(lr1, np.float32)) if cfg["dynamic_lr"] else lr1[0]
        groups = [{"params": params[:2], "lr": lr1_arg, "weight_decay": 0.0 if cfg["dynamic_wd"]
                   else 2 * cfg["wd"]},
                  {"params": params[2:], "weight_decay": wd_arg}]
        params_arg = groups
    else:
        params_arg = params
    kw = dict(weight_decay=wd_arg, loss_scale=cfg["loss_scale"])
    if cfg["inner"] == "sgd":
        inner = nn.SGD(params_arg, learning_rate=lr_arg, **kw)
    else:
        inner = nn.Momentum(params_arg, learning_rate=lr_arg, momentum=0.9,
                            use_nesterov=cfg["inner"] == "nesterov", **kw)
    filters = {"upstream": None, "role": None, "all": lambda p: True, "none": lambda p: False}
    extra = {}
    if cfg["filter"] == "role":
        extra["lars_filter"] = lambda p: "bias" not in p.name and "gamma" not in p.name
    elif filters[cfg["filter"]] is not None:
        extra["lars_filter"] = filters[cfg["filter"]]
    lars = ms_optim.LARS(inner, epsilon=cfg["epsilon"], coefficient=cfg["coefficient"],
                         use_clip=cfg["use_clip"], backend=backend, **extra)
    return net, inner, lars


def _reference_hparams(cfg, names):
    """Per parameter: lr schedule, weight decay at step t, adapt flag."""
    out = []
    for i, name in enumerate(names):
        group = 1 if cfg["grouped"] and i < 2 else 0
        lrs = _lr_schedule(cfg, group) if cfg["grouped"] else _lr_schedule(cfg, 0)
        if cfg["grouped"]:
            if group == 1:
                wd_fn = (lambda t: 0.0) if cfg["dynamic_wd"] else (lambda t, w=2 * cfg["wd"]: w)
            else:
                wd_fn = (lambda t, w=cfg["wd"]: w * (1 + t)) if cfg["dynamic_wd"] else \
                    (lambda t, w=cfg["wd"]: w)
        else:
            # MindSpore's default decay filter for ungrouped optimizers skips beta/gamma names.
            decayed = "beta" not in name and "gamma" not in name
            if not decayed:
                wd_fn = lambda t: 0.0  # noqa: E731
            elif cfg["dynamic_wd"]:
                wd_fn = lambda t, w=cfg["wd"]: w * (1 + t)  # noqa: E731
            else:
                wd_fn = lambda t, w=cfg["wd"]: w  # noqa: E731
        adapt = {"upstream": "LayerNorm" not in name and "bias" not in name,
                 "role": "bias" not in name and "gamma" not in name,
                 "all": True, "none": False}[cfg["filter"]]
        out.append((lrs, wd_fn, adapt))
    return out


def _run_and_compare(cfg, seed, backend="auto"):
    rng = np.random.default_rng(seed)
    net, inner, lars = _build(cfg, backend)
    names = net.names
    hp = _reference_hparams(cfg, names)
    ws = [cfg["arrays"][n].astype(np.float32).astype(np.float64) for n in names]
    vs = [np.zeros_like(w) for w in ws]
    for t in range(N_STEPS):
        grads = [rng.standard_normal(w.shape).astype(np.float32) for w in ws]
        if t == cfg["zero_grad_step"]:
            grads[0] = np.zeros_like(grads[0])  # a zero gradient norm
        scaled = tuple(Tensor(g * np.float32(cfg["loss_scale"])) for g in grads)
        lars(scaled)
        for i, (lrs, wd_fn, adapt) in enumerate(hp):
            lr_t, wd_t = lrs[t], wd_fn(t)
            g = grads[i].astype(np.float64)
            g_new = lars_ref.lars_gradient(ws[i], g, wd_t, cfg["coefficient"], cfg["epsilon"],
                                           cfg["use_clip"], lr_t, adapt)
            if cfg["inner"] == "sgd":
                ws[i] = lars_ref.sgd_step(ws[i], g_new, lr_t)
            else:
                ws[i], vs[i] = lars_ref.momentum_step(ws[i], vs[i], g_new, lr_t, 0.9,
                                                      cfg["inner"] == "nesterov")
        got = [p.asnumpy() for p in net.trainable_params()]
        for name, a, b in zip(names, got, ws):
            assert np.all(np.isfinite(a)), f"step {t}: non-finite {name}"
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL,
                                       err_msg=f"step {t}, parameter {name}, cfg {cfg}")
        if cfg["inner"] != "sgd":
            for name, m, v in zip(names, inner.moments, vs):
                np.testing.assert_allclose(m.asnumpy(), v, rtol=RTOL, atol=ATOL,
                                           err_msg=f"moment of {name}, step {t}")
        assert int(lars.global_step.asnumpy()[0]) == t + 1


CONFIGS = list(range(12))


# Every config on the compiled CPU path; the portable path (what GPU runs) on half of them by
# default and on all with `make test-all` (keeps the default suite near 15 minutes).
REFERENCE_CASES = [(k, "cpu") for k in CONFIGS] + [
    pytest.param(k, "portable", marks=() if k % 2 == 0 else pytest.mark.slow) for k in CONFIGS]


@pytest.mark.parametrize("k, backend", REFERENCE_CASES)
def test_matches_float64_reference(mode, k, backend):
    """Both CPU realisations: the compiled kernels ("cpu", fused with Momentum) and the
    portable ops."""
    cfg = _make_config(np.random.default_rng(1000 + k), k)
    _run_and_compare(cfg, seed=k, backend=backend)


def test_documented_kernel_example():
    """The LARSUpdate docstring example: lambda = 0, defaults."""
    w = np.array([[0.5, 0.8, 0.2], [0.6, 0.4, 0.2]], np.float32)
    g = np.array([[0.4, 0.4, 0.5], [0.2, 0.4, 0.3]], np.float32)
    expected = np.array([[5.265e-4, 5.265e-4, 6.5813e-4], [2.6325e-4, 5.265e-4, 3.9488e-4]])
    out = lars_gradient(Tensor(w), Tensor(g), 0.0, 0.001, 1e-5).asnumpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4)
    np.testing.assert_allclose(out, lars_ref.lars_gradient(w, g, 0.0, 0.001, 1e-5), rtol=1e-6)
    # Through the optimizer: SGD with lr = 1 makes the update equal to g'.
    net = ParamNet({"w": w})
    lars = ms_optim.LARS(nn.SGD(net.trainable_params(), learning_rate=1.0))
    lars((Tensor(g),))
    np.testing.assert_allclose(w - net.trainable_params()[0].asnumpy(), expected, rtol=1e-4)


def test_trust_ratio_edges():
    """Zero weight norm, zero gradient norm with eps = 0, active clipping, lr = 0."""
    from ms_optim.ops import lars_trust_ratio as tr
    t = lambda *a, **k: float(tr(*[Tensor(np.float32(x)) for x in a[:2]], *a[2:], **k))  # noqa
    assert t(0.0, 1.0, 0.0, 0.001, 1e-5) == 1.0                  # ||w|| = 0
    assert t(2.0, 0.0, 0.0, 0.001, 0.0) == 1.0                   # denominator 0
    assert t(0.0, 0.0, 0.0, 0.001, 0.0) == 1.0                   # both 0, eps 0: no NaN
    assert abs(t(2.0, 0.0, 0.5, 0.001, 0.0) - 0.002) < 1e-9      # ||g|| = 0, wd > 0: eta/wd
    assert t(2.0, 1.0, 0.0, 0.5, 0.0, use_clip=True, learning_rate=0.1) == 1.0   # clipped at 1
    assert abs(t(2.0, 1.0, 0.0, 0.001, 0.0, use_clip=True, learning_rate=0.1) - 0.02) < 1e-8
    assert t(2.0, 1.0, 0.0, 0.001, 0.0, use_clip=True, learning_rate=0.0) == 1.0  # lr = 0


def test_zero_initialised_layer_learns(mode):
    net = ParamNet({"w": np.zeros((3, 3)), "v": np.ones((2,))})
    lars = ms_optim.LARS(nn.Momentum(net.trainable_params(), 0.1, 0.9), epsilon=0.0,
                         lars_filter=lambda p: True)
    lars((Tensor(np.ones((3, 3), np.float32)), Tensor(np.zeros((2,), np.float32))))
    w, v = (p.asnumpy() for p in net.trainable_params())
    np.testing.assert_allclose(w, -0.1 * np.ones((3, 3)), rtol=1e-6)  # trust 1: a plain step
    np.testing.assert_array_equal(v, np.ones((2,)))                     # zero grad, eps 0: no NaN


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_filter_rejects_everything_equals_wrapped(mode, wd):
    """Degenerate case: no parameter adapted -> bit-for-bit the wrapped optimizer."""
    rng = np.random.default_rng(3)
    arrays = {"a.weight": rng.standard_normal((4, 3)), "a.bias": rng.standard_normal((4,))}
    net1, net2 = ParamNet(arrays), ParamNet(arrays)
    lars = ms_optim.LARS(nn.Momentum(net1.trainable_params(), 0.1, 0.9, weight_decay=wd),
                         lars_filter=lambda p: False)
    plain = nn.Momentum(net2.trainable_params(), 0.1, 0.9, weight_decay=wd)
    for _ in range(3):
        grads = tuple(Tensor(rng.standard_normal(a.shape).astype(np.float32)) for a in arrays.values())
        lars(grads)
        plain(grads)
    for p1, p2 in zip(net1.trainable_params(), net2.trainable_params()):
        np.testing.assert_array_equal(p1.asnumpy(), p2.asnumpy())


@pytest.mark.parametrize("inner_name", ["Adam", "AdamWeightDecay"])
def test_wraps_adam_family(mode, inner_name):
    """LARS(Adam-like, wd) equals the plain optimizer (wd 0) fed the reference g'."""
    rng = np.random.default_rng(5)
    arrays = {"d.weight": rng.standard_normal((5, 3)), "d.bias": np.zeros((5,)),
              "e.weight": rng.standard_normal((2, 5)) * 0.1}
    net1, net2 = ParamNet(arrays), ParamNet(arrays)
    cls = getattr(nn, inner_name)
    wd, eta, eps = 0.01, 0.02, 1e-6
    lars = ms_optim.LARS(cls(net1.trainable_params(), learning_rate=0.01, weight_decay=wd),
                         epsilon=eps, coefficient=eta)
    twin = cls(net2.trainable_params(), learning_rate=0.01)
    for _ in range(3):
        grads = [rng.standard_normal(a.shape).astype(np.float32) for a in arrays.values()]
        g_new = []
        for p, g in zip(net2.trainable_params(), grads):
            adapt = "bias" not in p.name
            g_new.append(Tensor(lars_ref.lars_gradient(p.asnumpy(), g, wd, eta, eps, adapt=adapt)
                                .astype(np.float32)))
        lars(tuple(Tensor(g) for g in grads))
        twin(tuple(g_new))
        for p1, p2 in zip(net1.trainable_params(), net2.trainable_params()):
            np.testing.assert_allclose(p1.asnumpy(), p2.asnumpy(), rtol=1e-5, atol=1e-7)
    assert int(lars.global_step.asnumpy()[0]) == 3


def test_dynamic_weight_decay_advances_step_once(mode):
    """Upstream advanced global_step twice with a dynamic weight decay; we advance it once."""
    net = ParamNet({"w": np.ones((2, 2))})
    lars = ms_optim.LARS(nn.Momentum(net.trainable_params(), 0.1, 0.9, weight_decay=StepWD(0.01)))
    for _ in range(3):
        lars((Tensor(np.ones((2, 2), np.float32)),))
    assert int(lars.global_step.asnumpy()[0]) == 3


def test_excluded_parameters_keep_weight_decay():
    """Upstream dropped weight decay for parameters excluded by lars_filter; we keep it."""
    net = ParamNet({"w.bias": np.ones((3,))})
    lars = ms_optim.LARS(nn.SGD(net.trainable_params(), learning_rate=1.0, weight_decay=0.1))
    assert lars.lars_flag == (False,)
    lars((Tensor(np.zeros((3,), np.float32)),))
    np.testing.assert_allclose(net.trainable_params()[0].asnumpy(), np.full((3,), 0.9), rtol=1e-6)


def test_parameter_table_and_role_filter():
    net = nn.SequentialCell([nn.Conv2d(1, 2, 3, has_bias=True), nn.BatchNorm2d(2), nn.Flatten(),
                             nn.Dense(2 * 8 * 8, 3), nn.LayerNorm((3,))])
    keep = ms_optim.lars_filter_for(net)
    adapted = sorted(p.name for p in net.trainable_params() if keep(p))
    assert adapted == ["0.weight", "3.weight"]
    table = keep.table()
    assert "norm scale/shift" in table and "bias" in table
    opt = nn.Momentum(net.trainable_params(), 0.1, 0.9, weight_decay=1e-4)
    lars = ms_optim.LARS(opt, lars_filter=keep)
    rows = lars.parameter_table().splitlines()[2:]
    assert len(rows) == len(net.trainable_params())
    # MindSpore's default decay filter skips gamma/beta; LARS reports that faithfully.
    gamma_row = next(r for r in rows if r.startswith("1.gamma"))
    assert gamma_row.split()[-1] == "0" and gamma_row.split()[-2] == "no"
    # The upstream default filter adapts BatchNorm gamma (the reason lars_filter_for exists).
    upstream = ms_optim.LARS(nn.Momentum(net.trainable_params(), 0.1, 0.9))
    names = [p.name for p in net.trainable_params()]
    assert upstream.lars_flag[names.index("1.gamma")] is True
