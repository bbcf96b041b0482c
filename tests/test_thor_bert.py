"""The model zoo's BERT-THOR pattern: a user-built train cell driven by convert_to_thor_model.

Pattern (mindspore-ai/models official/nlp/Bert_thor/run_pretrain.py):
``thor(net_with_loss, ...)``, ``BertTrainOneStepCell(net_with_loss, optimizer, sens)`` (or the
loss-scale cell with a ``DynamicLossScaleUpdateCell``), ``Model(net_with_grads)``,
``ConvertModelUtils().convert_to_thor_model(model, network=net_with_grads, optimizer=optimizer)``.
The tiny model has every BERT layer kind THOR treats (EmbeddingLookup, Dense, LayerNorm, GELU)
in one encoder layer (single-head self-attention, no attention mask) and a masked-LM loss, and
is checked against the float64 reference (:func:`reference.thor_ref.run_thor_tiny_bert`).
"""
import numpy as np
import pytest

import mindspore as ms
import mindspore.dataset as ds
from mindspore import Parameter, Tensor, nn, ops

from ms_optim import ConvertModelUtils, thor
from ms_optim.thor.model import ThorWrapTrainCell
from reference import thor_ref
from thor_helpers import LossRecorder

V, S, H, F, P, B = 13, 5, 8, 12, 2, 4
FREQ = 2
RTOL = 5e-4  # float32 vs float64, as tests/test_thor.py
LR = np.array([0.05, 0.04, 0.03], np.float32)
DAMP = np.array([0.3, 0.2, 0.1], np.float32)


class TinyBert(nn.Cell):
    """Embedding -> LayerNorm -> encoder layer (single-head self-attention, residual, LayerNorm,
    GELU feed-forward, residual, LayerNorm) -> masked-LM head."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.EmbeddingLookup(V, H)
        self.layernorm1 = nn.LayerNorm((H,))
        self.query = nn.Dense(H, H)
        self.key = nn.Dense(H, H)
        self.value = nn.Dense(H, H)
        self.attn_out = nn.Dense(H, H)
        self.layernorm_attn = nn.LayerNorm((H,))
        self.softmax = nn.Softmax(axis=-1)
        self.scores = ops.BatchMatMul(transpose_b=True)
        self.context = ops.BatchMatMul()
        self.ffn_in = nn.Dense(H, F, activation=nn.GELU())
        self.ffn_out = nn.Dense(F, H)
        self.layernorm2 = nn.LayerNorm((H,))
        self.head = nn.Dense(H, H, activation=nn.GELU())
        self.layernorm3 = nn.LayerNorm((H,))
        self.decoder = nn.Dense(H, V)
        self.offsets = Tensor((np.arange(B) * S)[:, None].astype(np.int32))

    def construct(self, ids, positions):
        h0 = self.layernorm1(self.embedding(ids))
        probs = self.softmax(self.scores(self.query(h0), self.key(h0)) * (1.0 / np.sqrt(H)))
        ha = self.layernorm_attn(h0 + self.attn_out(self.context(probs, self.value(h0))))
        h1 = self.layernorm2(ha + self.ffn_out(self.ffn_in(ha)))
        rows = ops.reshape(h1, (B * S, H))
        picked = ops.gather(rows, ops.reshape(positions + self.offsets, (-1,)), 0)
        return self.decoder(self.layernorm3(self.head(picked)))


class TinyBertLoss(nn.Cell):
    """sum(w * CE) / (sum(w) + 1e-5), as the model zoo's BertPretrainingLoss (masked LM part)."""

    def __init__(self):
        super().__init__()
        self.bert = TinyBert()
        self.log_softmax = nn.LogSoftmax(axis=-1)

    def construct(self, ids, positions, mlm_ids, mlm_w):
        logp = self.log_softmax(self.bert(ids, positions))
        one_hot = ops.one_hot(ops.reshape(mlm_ids, (-1,)), V, Tensor(1.0, ms.float32),
                              Tensor(0.0, ms.float32))
        per = -(logp * one_hot).sum(-1)
        w = ops.reshape(mlm_w, (-1,))
        return (w * per).sum() / (w.sum() + 1e-5)


class BertLikeTrainOneStepCell(nn.TrainOneStepCell):
    """The zoo's BertTrainOneStepCell construct (sens as a static loss scale)."""

    def __init__(self, network, optimizer, sens=1.0, enable_clip_grad=False):
        super().__init__(network, optimizer, sens)
        self.enable_clip_grad = enable_clip_grad

    def construct(self, ids, positions, mlm_ids, mlm_w):
        weights = self.weights
        loss = self.network(ids, positions, mlm_ids, mlm_w)
        grads = self.grad(self.network, weights)(ids, positions, mlm_ids, mlm_w,
                                                 ops.cast(ops.tuple_to_array((self.sens,)),
                                                          ms.float32))
        if self.enable_clip_grad:
            grads = ops.clip_by_global_norm(grads, 1.0)
        grads = self.grad_reducer(grads)
        self.optimizer(grads)
        return loss


class BertLikeLossScaleCell(nn.TrainOneStepWithLossScaleCell):
    """The zoo's BertTrainOneStepWithLossScaleCell construct: its own ``loss_scale`` Parameter,
    overflow check, update cell, optimizer called only without overflow."""

    def __init__(self, network, optimizer, scale_update_cell=None):
        super().__init__(network, optimizer, scale_update_cell)
        self.loss_scale = Parameter(Tensor(scale_update_cell.get_loss_scale(), ms.float32))
        self.loss_scaling_manager = scale_update_cell

    def construct(self, ids, positions, mlm_ids, mlm_w):
        weights = self.weights
        loss = self.network(ids, positions, mlm_ids, mlm_w)
        scaling_sens = self.loss_scale
        status, scaling_sens = self.start_overflow_check(loss, scaling_sens)
        grads = self.grad(self.network, weights)(ids, positions, mlm_ids, mlm_w,
                                                 ops.cast(scaling_sens, ms.float32))
        grads = self.grad_reducer(grads)
        grads = self.hyper_map(ops.partial(_grad_scale, scaling_sens), grads)
        cond = self.get_overflow_status(status, grads)
        overflow = self.loss_scaling_manager(self.loss_scale, cond)
        if not overflow:
            self.optimizer(grads)
        return loss, cond, scaling_sens


_grad_scale = ops.MultitypeFuncGraph("grad_scale")


@_grad_scale.register("Tensor", "Tensor")
def _tensor_grad_scale(scale, grad):
    return grad * ops.reciprocal(scale)


def _decay_filter(x):
    return 'layernorm' not in x.name.lower() and 'bias' not in x.name.lower()


def init_params(seed=0):
    rng = np.random.default_rng(seed)
    p = {"embedding": rng.standard_normal((V, H)) * 0.5}
    shapes = {"query": (H, H), "key": (H, H), "value": (H, H), "attn_out": (H, H),
              "ffn_in": (F, H), "ffn_out": (H, F), "head": (H, H), "decoder": (V, H)}
    for name, (o, i) in shapes.items():
        p[name + ".w"] = rng.standard_normal((o, i)) / np.sqrt(i)
        p[name + ".b"] = rng.standard_normal(o) * 0.1
    for name in thor_ref.TINY_BERT_LAYERNORM:
        p[name + ".g"] = 1.0 + 0.1 * rng.standard_normal(H)
        p[name + ".b"] = 0.1 * rng.standard_normal(H)
    return p


def make_batches(n, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(0, V, (B, S))
        pos = np.stack([rng.choice(S, P, replace=False) for _ in range(B)])
        mlm_ids = rng.integers(0, V, (B, P))
        mlm_w = (rng.random((B, P)) > 0.25).astype(np.float64)
        mlm_w[0, 0] = 1.0
        out.append((ids, pos, mlm_ids, mlm_w))
    return out


def to_ms(batch):
    ids, pos, mlm_ids, mlm_w = batch
    return (Tensor(ids.astype(np.int32)), Tensor(pos.astype(np.int32)),
            Tensor(mlm_ids.astype(np.int32)), Tensor(mlm_w.astype(np.float32)))


def ms_key(name):
    """MindSpore parameter name -> reference key."""
    name = name.replace("bert.", "")
    if name.startswith("embedding."):
        return "embedding"
    layer, attr = name.split(".")
    return layer + "." + {"weight": "w", "bias": "b", "gamma": "g", "beta": "b"}[attr]


def build(params, loss_scale=1.0, weight_decay=0.0, clip=False, dynamic=None, lr=LR, damp=DAMP,
          **thor_kw):
    net_with_loss = TinyBertLoss()
    for prm in net_with_loss.trainable_params():
        prm.set_data(Tensor(params[ms_key(prm.name)].astype(np.float32)))
    opt = thor(net_with_loss, Tensor(lr), Tensor(damp), 0.9, weight_decay, loss_scale, B,
               decay_filter=_decay_filter, split_indices=[1, 3], enable_clip_grad=clip,
               frequency=FREQ, **thor_kw)
    if dynamic is None:
        cell = BertLikeTrainOneStepCell(net_with_loss, optimizer=opt, sens=loss_scale)
    else:
        cell = BertLikeLossScaleCell(net_with_loss, optimizer=opt, scale_update_cell=dynamic)
    model = ms.train.Model(cell)
    model = ConvertModelUtils().convert_to_thor_model(model, network=cell, optimizer=opt)
    return net_with_loss, opt, cell, model


def weights(net):
    return {ms_key(p.name): p.asnumpy().copy() for p in net.trainable_params()}


def test_bert_pattern_matches_float64_reference(mode):
    """3 steps, F = 2 (refresh, stale, refresh), weight decay by the zoo's filter, per-tensor
    clipping, static loss scale 8: equal to the float64 reference; statistics written only on
    refresh steps."""
    params = init_params()
    data = make_batches(3)
    net, opt, _, model = build(params, loss_scale=8.0, weight_decay=1e-2, clip=True)
    driver = model._train_network
    assert isinstance(driver, ThorWrapTrainCell)
    layers = [c for _, c in net.cells_and_names() if hasattr(c, "matrix_a")]
    assert [type(c).__name__ for c in layers] == ["EmbeddingLookupThor"] + ["DenseThor"] * 8
    losses, stats, refreshes = [], [], []
    for batch in data:
        refreshes.append(driver.next_step_refreshes())
        losses.append(float(driver(*to_ms(batch)).asnumpy()))
        stats.append([c.matrix_g.asnumpy().copy() for c in layers]
                     + [a.asnumpy().copy() for a in opt.a_inv])
    assert refreshes == [True, False, True]
    for k in range(len(stats[0])):
        np.testing.assert_array_equal(stats[1][k], stats[0][k])  # stale: nothing written
        assert not np.array_equal(stats[2][k], stats[1][k])      # refresh: rewritten
    ref, ref_losses = thor_ref.run_thor_tiny_bert(params, data, LR, DAMP, 0.9, FREQ,
                                                  weight_decay=1e-2, clip_grad=True)
    np.testing.assert_allclose(losses, ref_losses, rtol=RTOL)
    got = weights(net)
    assert set(got) == set(ref)
    for key, value in got.items():
        np.testing.assert_allclose(value, ref[key], rtol=RTOL, atol=1e-5, err_msg=key)
    assert int(opt.global_step.asnumpy()[0]) == 3
    assert not opt.thor_fault_count.asnumpy().any()


def test_adaptive_damping_on_the_bert_pattern_matches_float64(mode):
    """adaptive_damping through the user's train cell (ThorWrapTrainCell, static loss scale 8):
    the quadratic model covers the embedding, Dense, LayerNorm and bias rules, the extra forward
    runs the user cell's loss network; losses, weights, rho and the multiplier after each of the
    refreshes at 0, 2, 4 equal the float64 reference, and the multiplier moved."""
    params = init_params()
    data = make_batches(5)
    net, opt, _, model = build(params, loss_scale=8.0, weight_decay=1e-2, adaptive_damping=0.5)
    driver = model._train_network
    losses, trace = [], []
    for step, batch in enumerate(data):
        losses.append(float(driver(*to_ms(batch)).asnumpy()))
        if step % FREQ == 0:
            trace.append((float(opt.thor_lm_rho.asnumpy()), float(opt.thor_damping_scale.asnumpy())))
    ref_trace = []
    ref, ref_losses = thor_ref.run_thor_tiny_bert(params, data, LR, DAMP, 0.9, FREQ,
                                                  weight_decay=1e-2, adaptive_damping=0.5,
                                                  trace=ref_trace)
    np.testing.assert_allclose(losses, ref_losses, rtol=RTOL)
    for key, value in weights(net).items():
        np.testing.assert_allclose(value, ref[key], rtol=RTOL, atol=1e-5, err_msg=key)
    assert len(trace) == len(ref_trace) == 3
    for (rho, s), (_, rho_ref, s_ref) in zip(trace, ref_trace):
        assert (np.isnan(rho) and np.isnan(rho_ref)) or rho == pytest.approx(rho_ref, rel=2e-3)
        assert s == pytest.approx(s_ref, rel=1e-6)
    assert trace[-1][1] != 1.0


def test_embedding_and_layernorm_rules_first_step(mode):
    """The first (refresh) step's embedding-table and LayerNorm updates, alone, against float64:
    lr only on those (other lr-independent checks live in the full comparison above)."""
    params = init_params(3)
    data = make_batches(1, seed=4)
    net, opt, _, model = build(params)
    model._train_network(*to_ms(data[0]))
    ref, _ = thor_ref.run_thor_tiny_bert(params, data, LR, DAMP, 0.9, FREQ)
    got = weights(net)
    for key in ["embedding"] + [n + s for n in thor_ref.TINY_BERT_LAYERNORM for s in (".g", ".b")]:
        step_got = got[key] - params[key]
        step_ref = ref[key] - params[key]
        assert np.abs(step_ref).max() > 1e-4, key  # the rule moved the parameter
        np.testing.assert_allclose(step_got, step_ref, rtol=RTOL, atol=1e-6, err_msg=key)
    a_inv = opt.a_inv[0].asnumpy()
    _, _, stats = thor_ref.tiny_bert_forward_backward(params, *data[0])
    ids, d, n, t = stats["embedding"]
    a, _ = thor_ref.embedding_factors(ids, d, V, n, t)
    np.testing.assert_allclose(a_inv, 1.0 / (a + np.sqrt(DAMP[0])), rtol=1e-6)


def _dataset(data, repeat=1):
    cols = {"ids": [], "positions": [], "mlm_ids": [], "mlm_w": []}
    for _ in range(repeat):
        for batch in data:
            for key, value in zip(cols, to_ms(batch)):
                cols[key].append(value.asnumpy())
    arrays = {k: np.concatenate(v) for k, v in cols.items()}
    return ds.NumpySlicesDataset(arrays, shuffle=False).batch(B, drop_remainder=True)


class _EvalNet(nn.Cell):
    def __init__(self, net_with_loss):
        super().__init__()
        self.net = net_with_loss

    def construct(self, ids, positions, mlm_ids, mlm_w):
        loss = self.net(ids, positions, mlm_ids, mlm_w)
        return loss, loss, loss


def test_model_train_with_zoo_pattern_and_eval(mode):
    """Model(net_with_grads, eval_network, metrics) -> convert -> train (sink requested, 4 epochs
    of 3 batches): loss finite and falling, step counter right, the user's eval kept."""
    params = init_params(5)
    data = make_batches(3, seed=6)
    net_with_loss = TinyBertLoss()
    for prm in net_with_loss.trainable_params():
        prm.set_data(Tensor(params[ms_key(prm.name)].astype(np.float32)))
    opt = thor(net_with_loss, Tensor(0.05, ms.float32), Tensor(0.1, ms.float32), 0.9, 1e-3, 1.0,
               B, decay_filter=_decay_filter, split_indices=[1, 3], enable_clip_grad=True,
               frequency=FREQ)
    cell = BertLikeTrainOneStepCell(net_with_loss, optimizer=opt, sens=1.0)
    eval_net = _EvalNet(net_with_loss)
    model = ms.train.Model(cell, eval_network=eval_net, metrics={"loss"}, eval_indexes=[0, 1, 2])
    model = ConvertModelUtils().convert_to_thor_model(model, network=cell, optimizer=opt)
    assert type(model).__name__ == "ThorModel"
    assert model._eval_network is eval_net and model._eval_indexes == [0, 1, 2]
    before = model.eval(_dataset(data), dataset_sink_mode=False)["loss"]
    cb = LossRecorder()
    model.train(4, _dataset(data), callbacks=[cb], dataset_sink_mode=True, sink_size=3)
    assert len(cb.losses) == 12 and np.all(np.isfinite(cb.losses))
    assert int(opt.global_step.asnumpy()[0]) == 12
    after = model.eval(_dataset(data), dataset_sink_mode=False)["loss"]
    assert np.isfinite(after) and after < 0.7 * before
    assert np.mean(cb.losses[-3:]) < np.mean(cb.losses[:3])


def test_convert_rejects_foreign_optimizer_and_bad_cells():
    params = init_params()
    net, opt, cell, _ = build(params)
    other_net = TinyBertLoss()
    other = thor(other_net, Tensor(0.1, ms.float32), Tensor(0.1, ms.float32), 0.9, frequency=2)
    model = ms.train.Model(cell)
    with pytest.raises(ValueError, match="optimizer of the train cell"):
        ConvertModelUtils.convert_to_thor_model(model, network=cell, optimizer=other)
    with pytest.raises(ValueError, match="THOR optimizer given"):
        ThorWrapTrainCell(cell, other)
    with pytest.raises(ValueError, match="must be the train cell"):
        ConvertModelUtils.convert_to_thor_model(model, network=net, optimizer=opt)
    with pytest.raises(ValueError, match="loss_scale_manager"):
        ConvertModelUtils.convert_to_thor_model(
            model, network=cell, optimizer=opt,
            loss_scale_manager=ms.FixedLossScaleManager(1.0, drop_overflow_update=False))
    with pytest.raises(TypeError, match="train_cell"):
        ThorWrapTrainCell(net, opt)
    net2, opt2, _, _ = build(params)
    with pytest.raises(ValueError, match="'sens'"):
        ThorWrapTrainCell(BertLikeTrainOneStepCell(net2, opt2, sens=4.0), opt2)


def _dynamic_run(scale, window, data):
    upd = nn.DynamicLossScaleUpdateCell(loss_scale_value=scale, scale_factor=2,
                                        scale_window=window)
    net, opt, cell, model = build(init_params(7), dynamic=upd)
    scales, conds = [], []
    for batch in data:
        _, cond, _ = model._train_network(*to_ms(batch))
        conds.append(bool(cond.asnumpy()))
        scales.append(float(cell.loss_scale.asnumpy()))
    return net, opt, cell, model, scales, conds


def test_dynamic_loss_scale_result_independent_of_scale(mode):
    """Zoo loss-scale cell + DynamicLossScaleUpdateCell on CPU: the scale doubling after every
    step (window 1) or fixed at 2^4 or 2^14 gives the static run's weights (the optimizer
    removes the scale each backward ran with, not the updated one)."""
    data = make_batches(3, seed=8)
    net_s, _, _, model_s = build(init_params(7))
    for batch in data:
        model_s._train_network(*to_ms(batch))
    want = weights(net_s)
    for scale, window in ((2.0 ** 4, 1), (2.0 ** 14, 1000), (3.0, 1)):
        net, opt, _, _, scales, conds = _dynamic_run(scale, window, data)
        assert conds == [False] * 3
        assert scales[-1] == (scale * 8 if window == 1 else scale)
        assert int(opt.global_step.asnumpy()[0]) == 3
        for key, value in weights(net).items():
            np.testing.assert_allclose(value, want[key], rtol=2e-5, atol=1e-6,
                                       err_msg=f"{key} scale={scale}")


def test_dynamic_loss_scale_overflow_step_is_skipped(mode):
    """An injected overflow (inf in the loss weights -> NaN gradients) on a refresh step leaves
    weights, moments, inverses and global_step bit-identical, the scale halves, and the next
    good step is the refresh."""
    data = make_batches(3, seed=9)
    net, opt, cell, model, scales, _ = _dynamic_run(2.0 ** 10, 1000, data[:2])
    driver = model._train_network
    assert driver.next_step_refreshes()  # global step 2: a refresh step
    state = lambda: [p.asnumpy().copy() for p in list(net.trainable_params()) + list(opt.moments)
                     + list(opt.a_inv) + list(opt.g_inv) + list(opt.t_keep)
                     + [opt.global_step, opt.thor_fault_count]]
    before = state()
    ids, pos, mlm_ids, mlm_w = data[2]
    bad = mlm_w.copy()
    bad[1, 0] = np.inf
    _, cond, _ = driver(*to_ms((ids, pos, mlm_ids, bad)))
    assert bool(cond.asnumpy())
    assert float(cell.loss_scale.asnumpy()) == scales[-1] / 2
    for a, b in zip(before, state()):
        np.testing.assert_array_equal(b, a)
    assert driver.next_step_refreshes()
    _, cond, _ = driver(*to_ms(data[2]))
    assert not bool(cond.asnumpy())
    assert int(opt.global_step.asnumpy()[0]) == 3
    assert not any(np.array_equal(a, b) for a, b in zip(before[:2], state()[:2]))
