"""THOR API: every Raises line (network untouched), conversion fidelity, schedules."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Parameter, Tensor, nn

from ms_optim.thor import blocks
from ms_optim import (Conv2dThor, ConvertNetUtils, DenseThor, EmbeddingLookupThor, EmbeddingThor,
                      ThorTrainOneStepCell,
                      thor, thor_damping_schedule, thor_lr_schedule)
import thor_helpers as H

LR = Tensor(0.1, ms.float32)
DAMP = Tensor(0.1, ms.float32)


class _Custom(nn.Cell):
    """Dense + a bare Parameter used directly in construct."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Dense(4, 3)
        self.scale = Parameter(Tensor(np.ones(3, np.float32) * 2.0), name="scale")

    def construct(self, x):
        return self.fc(x) * self.scale


def _net():
    return nn.SequentialCell([nn.Conv2d(1, 2, 3, has_bias=True), nn.Flatten(), nn.Dense(2 * 16, 3)])


BAD = [
    (dict(net="net"), TypeError, "'net' must be the network"),
    (dict(net=nn.Momentum(nn.Dense(2, 2).trainable_params(), 0.1, 0.9)), TypeError,
     "'net' must be the network .* but got Momentum"),
    (dict(learning_rate=0.1), TypeError, "'learning_rate' must be Tensor or numpy.ndarray"),
    (dict(learning_rate=[0.1]), TypeError, "'learning_rate' must be Tensor or numpy.ndarray"),
    (dict(learning_rate=np.array([1, 2], np.int32)), TypeError, "float dtype"),
    (dict(learning_rate=Tensor(np.ones((2, 2), np.float32))), ValueError, "0-D or 1-D"),
    (dict(damping=0.1), TypeError, "'damping' must be Tensor or numpy.ndarray"),
    (dict(damping=Tensor(np.array([0.1, -1.0], np.float32))), ValueError, "'damping' must be finite"),
    (dict(damping=Tensor(np.array([1, 2], np.int32))), TypeError, "float dtype"),
    (dict(damping=Tensor(np.array([np.nan], np.float32))), ValueError, "'damping'"),
    (dict(loss_scale="128"), TypeError, "'loss_scale' must be float or int"),
    (dict(loss_scale=True), TypeError, "'loss_scale' must be float or int"),
    (dict(loss_scale=0.0), ValueError, "'loss_scale'"),
    (dict(loss_scale=-1.0), ValueError, "'loss_scale'"),
    (dict(momentum=1), TypeError, "'momentum' must be float"),
    (dict(momentum=-0.1), ValueError, "'momentum'"),
    (dict(weight_decay="1"), TypeError, "'weight_decay' must be float or int"),
    (dict(weight_decay=-1.0), ValueError, "'weight_decay'"),
    (dict(use_nesterov=1), TypeError, "'use_nesterov' must be bool"),
    (dict(frequency=2.0), TypeError, "'frequency' must be int"),
    (dict(frequency=True), TypeError, "'frequency' must be int"),
    (dict(frequency=1), ValueError, "'frequency' must be at least 2"),
    (dict(batch_size="32"), TypeError, "'batch_size' must be int"),
    (dict(batch_size=0), ValueError, "'batch_size'"),
    (dict(decay_filter=None), TypeError, "'decay_filter' must be callable"),
    (dict(split_indices="abc"), TypeError, "'split_indices'"),
    (dict(split_indices=[1, 1]), ValueError, "strictly increasing"),
    (dict(split_indices=[5]), ValueError, "split_indices"),
    (dict(split_indices=[0.5]), TypeError, "split_indices"),
    (dict(enable_clip_grad=1), TypeError, "'enable_clip_grad' must be bool"),
    (dict(backend="tpu"), ValueError, "'backend'"),
    (dict(distribute_inversion="yes"), TypeError, "'distribute_inversion' must be bool"),
    (dict(backend=1), TypeError, "'backend'"),
    (dict(thor_filter="conv"), TypeError, "'thor_filter' must be callable"),
    (dict(net=nn.Dense(3, 2)), ValueError, "itself a Dense"),
    (dict(net=nn.Conv2d(1, 2, 3)), ValueError, "itself a Conv2d"),
]


@pytest.mark.parametrize("kwargs,err,msg", BAD, ids=[str(list(b[0])[0]) + str(i) for i, b in enumerate(BAD)])
def test_raises_and_network_untouched(kwargs, err, msg):
    net = _net()
    before, struct = H.snapshot(net), H.structure(net)
    args = dict(net=net, learning_rate=LR, damping=DAMP, momentum=0.9)
    args.update(kwargs)
    with pytest.raises(err, match=msg):
        thor(**args)
    assert H.structure(net) == struct
    after = H.snapshot(net)
    assert after.keys() == before.keys()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


def test_no_trainable_params_raises():
    net = nn.Dense(2, 2)
    for p in net.get_parameters():
        p.requires_grad = False
    with pytest.raises(ValueError, match="trainable"):
        thor(net, LR, DAMP, 0.9)


def _outputs_identical(net, x):
    before = net(x).asnumpy()
    ConvertNetUtils().convert_to_thor_net(net)
    after = net(x).asnumpy()
    np.testing.assert_array_equal(after, before)


def test_conversion_keeps_outputs(mode):
    net = nn.SequentialCell([
        nn.Conv2d(2, 3, (3, 2), stride=(2, 1), pad_mode="pad", padding=(1, 0, 2, 1), dilation=(1, 2),
                  has_bias=True, bias_init="ones"),
        nn.Conv2d(3, 3, 3, pad_mode="same", has_bias=True, bias_init="ones"),
        nn.Conv2d(3, 4, 2, pad_mode="valid", group=1),
        nn.Conv2d(4, 4, 3, pad_mode="same", group=2),   # grouped: one factor pair per group
        nn.Conv2d(4, 8, 3, pad_mode="same", group=4),   # depthwise, channel multiplier 2
        nn.Flatten(),
        nn.Dense(8 * 3 * 7, 5, activation=nn.LeakyReLU(0.3), bias_init="ones"),
    ])
    x = Tensor(np.random.randn(2, 2, 9, 7).astype(np.float32))
    _outputs_identical(net, x)
    kinds = [type(c).__name__ for c in net]
    assert kinds == ["Conv2dThor"] * 5 + ["Flatten", "DenseThor"]
    assert (net[3].group, net[4].group) == (2, 4)
    assert tuple(net[0].dilation)[-2:] == (1, 2) and tuple(net[0].kernel_size) == (3, 2)
    assert float(net[0].bias.asnumpy().min()) == 1.0


def test_conversion_embeddings_and_bare_parameter(mode):
    class Emb(nn.Cell):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(7, 4)
            self.look = nn.EmbeddingLookup(7, 4, target="CPU")
            self.custom = _Custom()

        def construct(self, ids):
            h = self.emb(ids) + self.look(ids)
            return self.custom(h.mean(1))
    net = Emb()
    ids = Tensor(np.array([[1, 2, 2], [6, 0, 1]], np.int32))
    _outputs_identical(net, ids)
    assert isinstance(net.emb, EmbeddingThor)
    assert isinstance(net.look, EmbeddingLookupThor)
    assert isinstance(net.custom.fc, DenseThor)


def test_bare_parameter_and_embedding_train(mode):
    net = nn.SequentialCell([nn.Embedding(7, 4), nn.Flatten(), _Custom()])
    net[2].fc = nn.Dense(12, 3)
    opt = thor(net, LR, DAMP, 0.9, frequency=2)
    from ms_optim import ThorTrainOneStepCell
    step = ThorTrainOneStepCell(nn.WithLossCell(net, H.loss_fn()), opt)
    ids = Tensor(np.array([[1, 2, 2], [6, 0, 1]], np.int32))
    y = Tensor(np.array([0, 2], np.int32))
    losses = [float(step(ids, y).asnumpy()) for _ in range(4)]
    assert losses[-1] < losses[0]
    assert [type(b).__name__ for b in opt.blocks] == ["EmbeddingBlock", "KroneckerBlock"]
    for p in net.trainable_params():
        assert np.isfinite(p.asnumpy()).all()


def test_layers_standalone():
    layer = Conv2dThor(2, 4, (3, 1), pad_mode="valid")
    assert layer(Tensor(np.ones((1, 2, 5, 5), np.float32))).shape == (1, 4, 3, 5)
    grouped = Conv2dThor(4, 6, 3, group=2)  # per group: d_in = 2*3*3 = 18, d_out = 3
    assert grouped(Tensor(np.ones((1, 4, 5, 5), np.float32))).shape == (1, 6, 5, 5)
    assert grouped.matrix_a.shape == (2, 18, 18) and grouped.matrix_g.shape == (2, 3, 3)
    with pytest.raises(ValueError):
        Conv2dThor(4, 6, 3, group=4)  # 6 output channels cannot form 4 groups (nn.Conv2d's check)
    assert DenseThor(3, 2)(Tensor(np.ones((2, 5, 3), np.float32))).shape == (2, 5, 2)


def test_schedules_formulas():
    lr = thor_lr_schedule(0, 0.1, 2.0, 4, 3, decay_epochs=2)
    e = (np.arange(12) + 1) / 3
    ref = 0.1 * (1 - e / 4) ** 2 * np.where(e >= 2, 0.5, 1) * np.where(e >= 3, 0.5, 1)
    np.testing.assert_allclose(lr, ref, rtol=1e-6)
    np.testing.assert_allclose(thor_lr_schedule(5, 0.1, 2.0, 4, 3, decay_epochs=2), ref[5:], rtol=1e-6)
    d = thor_damping_schedule(0, 0.03, 0.5, 2, 10)
    np.testing.assert_allclose(d, 0.03 * 0.5 ** (((np.arange(20) + 1) / 10) / 10), rtol=1e-6)
    with pytest.raises(ValueError):
        thor_lr_schedule(0, 0.1, 2.0, 4, 0)


def test_thor_filter_is_honoured(caplog):
    net = _net()
    opt = thor(net, LR, DAMP, 0.9, thor_filter=lambda name, cell: isinstance(cell, nn.Dense))
    assert isinstance(net[2], DenseThor) and not isinstance(net[0], Conv2dThor)
    assert opt.n_layers == 1
    net2 = _net()
    with caplog.at_level("WARNING", logger="ms_optim"):
        opt2 = thor(net2, LR, DAMP, 0.9, thor_filter=lambda name, cell: False)
    assert opt2.n_layers == 0 and type(net2[2]) is nn.Dense  # pylint: disable=unidiomatic-typecheck
    assert "no layer THOR can precondition" in caplog.text


def test_root_layer_wrapped_is_converted():
    net = nn.SequentialCell([nn.Dense(3, 2)])
    assert thor(net, LR, DAMP, 0.9).n_layers == 1


SCHEDULE_BAD = [
    (thor_lr_schedule, (0, "0.1", 2.0, 4, 3), TypeError, "'lr_init' must be int or float"),
    (thor_lr_schedule, (0, 0.1, None, 4, 3), TypeError, "'decay' must be int or float"),
    (thor_lr_schedule, (0, 0.1, 2.0, "4", 3), TypeError, "'total_epochs' must be int or float"),
    (thor_lr_schedule, (0, 0.1, 2.0, 4, 3, "2"), TypeError, "'decay_epochs' must be int or float"),
    (thor_lr_schedule, (0, -0.1, 2.0, 4, 3), ValueError, "'lr_init'"),
    (thor_lr_schedule, (0, float("nan"), 2.0, 4, 3), ValueError, "'lr_init'"),
    (thor_lr_schedule, (0, 0.1, -1.0, 4, 3), ValueError, "'decay'"),
    (thor_lr_schedule, (0, 0.1, 2.0, 4, 3, -1), ValueError, "'decay_epochs'"),
    (thor_lr_schedule, (0, 0.1, 2.0, float("inf"), 3), ValueError, "'total_epochs'"),
    (thor_lr_schedule, (12, 0.1, 2.0, 4, 3), ValueError, "'global_step' must be < "),
    (thor_lr_schedule, (0, 0.1, 2.0, 0.2, 3), ValueError, "'global_step' must be < "),
    (thor_damping_schedule, (0, "0.03", 0.5, 2, 10), TypeError, "'damping_init' must be int or float"),
    (thor_damping_schedule, (0, 0.03, True, 2, 10), TypeError, "'decay_rate' must be int or float"),
    (thor_damping_schedule, (0, -0.03, 0.5, 2, 10), ValueError, "'damping_init'"),
    (thor_damping_schedule, (0, 0.03, 0.0, 2, 10), ValueError, "'decay_rate'"),
    (thor_damping_schedule, (20, 0.03, 0.5, 2, 10), ValueError, "'global_step' must be < "),
    (thor_damping_schedule, (0, 0.03, 0.5, 2, 2.0), TypeError, "'steps_per_epoch' must be int"),
]


@pytest.mark.parametrize("fn,args,err,msg", SCHEDULE_BAD, ids=[str(i) for i in range(len(SCHEDULE_BAD))])
def test_schedule_validation(fn, args, err, msg):
    with pytest.raises(err, match=msg):
        fn(*args)


def test_schedule_last_step_and_int_arguments():
    # the last valid global_step returns exactly one value; ints are accepted for float arguments
    last = thor_lr_schedule(11, 1, 2, 4, 3, decay_epochs=2)
    assert last.shape == (1,) and last[0] == 0.0
    d = thor_damping_schedule(19, 3, 1, 2, 10)
    np.testing.assert_array_equal(d, np.array([3.0], np.float32))


@pytest.mark.parametrize("bad_opt", ["x", None])
def test_train_step_cell_rejects_non_thor_optimizer(bad_opt):
    from ms_optim import ThorTrainOneStepCell
    net = nn.SequentialCell([nn.Dense(3, 2)])
    with pytest.raises(TypeError, match="'optimizer' must be the optimizer returned by ms_optim.thor"):
        ThorTrainOneStepCell(nn.WithLossCell(net, H.loss_fn()), bad_opt)
    momentum = nn.Momentum(net.trainable_params(), 0.1, 0.9)
    with pytest.raises(TypeError, match="returned by ms_optim.thor, but got Momentum"):
        ThorTrainOneStepCell(nn.WithLossCell(net, H.loss_fn()), momentum)


def test_plan_is_the_conversion_decision(caplog):
    """Layers a converter refuses (an EmbeddingLookup with max_norm) are neither counted for
    split_indices nor for the 'nothing converted' warning; the conversion table says why."""
    def lookup():
        return nn.EmbeddingLookup(7, 4, target="CPU", max_norm=1.0)

    def net():
        return nn.SequentialCell([lookup(), nn.Flatten(), nn.Dense(4 * 3, 3)])
    assert ConvertNetUtils().plan(net()) == ["2"]
    with pytest.raises(ValueError, match="split_indices"):
        thor(net(), LR, DAMP, 0.9, split_indices=[0, 1])
    only_refused = nn.SequentialCell([lookup()])
    with caplog.at_level("WARNING", logger="ms_optim"):
        thor(only_refused, LR, DAMP, 0.9)
    assert "no layer THOR can precondition" in caplog.text
    conv = ConvertNetUtils()
    conv.convert_to_thor_net(net())
    rows = conv.table().splitlines()[2:]
    assert rows[0].split()[:3] == ["0", "EmbeddingLookup", "no"] and "max_norm" in rows[0]
    assert rows[1].split()[:3] == ["2", "Dense", "yes"]


def test_verbose_prints_the_table(capsys):
    thor(_net(), LR, DAMP, 0.9, verbose=True)
    out = capsys.readouterr().out
    assert "converted" in out and "-> Conv2dThor" in out and "-> DenseThor" in out


def test_numpy_learning_rate_equals_tensor(mode):
    rng = np.random.default_rng(4)
    spec = H.mlp_spec(rng)
    x, y = H.batches(rng, 1, 8, (6,))[0]
    nets = []
    for lr in (Tensor(np.array([0.1, 0.05], np.float32)), np.array([0.1, 0.05], np.float32)):
        net = H.build_net(spec)
        step = ThorTrainOneStepCell(nn.WithLossCell(net, H.loss_fn()), thor(net, lr, DAMP, 0.9))
        for _ in range(3):
            step(*H.to_ms(x, y))
        nets.append(net)
    for a, b in zip(nets[0].trainable_params(), nets[1].trainable_params()):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


class _Scaled(nn.Cell):
    """A user layer: y = x W^T * 2."""

    def __init__(self):
        super().__init__()
        self.weight = Parameter(Tensor(np.ones((2, 3), np.float32)), name="weight")

    def construct(self, x):
        return ms.ops.matmul(x, self.weight.T) * 2


class _NotAThorLayer(nn.Cell):
    def __init__(self, cell):
        super().__init__()
        self.weight = cell.weight

    def construct(self, x):
        return ms.ops.matmul(x, self.weight.T)


def test_registered_layer_is_preconditioned_or_rejected():
    """A converter must return a layer the optimizer has a rule for: another cell is refused
    (TypeError naming the converter's layer) before the network changes; a DenseThor is
    preconditioned (its inverses are refreshed)."""
    import ms_optim
    from ms_optim.thor.convert import THOR_LAYER_MAP
    try:
        ms_optim.register_thor_layer(_Scaled, _NotAThorLayer)
        net = nn.SequentialCell([_Scaled(), nn.Dense(2, 2)])
        before, struct = H.snapshot(net), H.structure(net)
        with pytest.raises(TypeError, match="converter of _Scaled returned _NotAThorLayer for '0'"):
            thor(net, LR, DAMP, 0.9)
        assert H.structure(net) == struct and H.snapshot(net).keys() == before.keys()
        with pytest.raises(TypeError, match="cannot precondition"):
            ConvertNetUtils().convert_to_thor_net(net)
        assert H.structure(net) == struct

        def as_dense(cell):
            new = DenseThor(3, 2, has_bias=False)
            new.weight = cell.weight
            return new
        ms_optim.register_thor_layer(_Scaled, as_dense)
        net = nn.SequentialCell([_Scaled(), nn.Dense(2, 2)])
        opt = thor(net, LR, DAMP, 0.9, frequency=2)
        assert opt.n_layers == 2
    finally:
        THOR_LAYER_MAP.pop(_Scaled, None)


class _MyDense(nn.Dense):
    """A user layer class (exact-type registry: not converted by the nn.Dense entry)."""


class _MyDenseThor(DenseThor):
    """Its THOR layer: DenseThor's statistics, preconditioned by the block given below."""


class _DoubleDamping(blocks.KroneckerBlock):
    """An extension block: the Kronecker rule with twice the damping."""

    @staticmethod
    def invert(spd_block_inverse, lam, d_a, d_g, a, g, t):
        return blocks.KroneckerBlock.invert(spd_block_inverse, lam * 2.0, d_a, d_g, a, g, t)


def _to_my_dense_thor(cell):
    new = _MyDenseThor(cell.in_channels, cell.out_channels)
    new.weight, new.bias = cell.weight, cell.bias
    return new


def test_register_thor_layer_with_a_curvature_block(mode):
    """register_thor_layer(..., block=B): the converted layer is preconditioned by B (here the
    Kronecker rule at twice the damping, equal to the built-in rule run with 2*lambda and not
    to the built-in rule at lambda); a block for a cell without THOR statistics is refused."""
    import ms_optim
    from ms_optim.thor.convert import THOR_LAYER_MAP
    rng = np.random.default_rng(12)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    data = H.batches(rng, 3, 8, (4,), classes=3)

    def train(layer_cls, damping):
        net = nn.SequentialCell([layer_cls(4, 3, weight_init=Tensor(w),
                                           bias_init=Tensor(np.zeros(3, np.float32)))])
        opt = thor(net, Tensor(0.2, ms.float32), Tensor(damping, ms.float32), 0.9, frequency=2)
        step = ThorTrainOneStepCell(nn.WithLossCell(net, H.loss_fn()), opt)
        for x, y in data:
            step(*H.to_ms(x, y))
        return net, opt
    try:
        with pytest.raises(TypeError, match="CurvatureBlock subclass"):
            ms_optim.register_thor_layer(_MyDense, _to_my_dense_thor, block=object)
        ms_optim.register_thor_layer(_MyDense, _to_my_dense_thor, block=_DoubleDamping)
        net, opt = train(_MyDense, 0.05)
        assert isinstance(net[0], _MyDenseThor) and type(opt.blocks[0]) is _DoubleDamping
        want, _ = train(nn.Dense, 0.1)
        other, _ = train(nn.Dense, 0.05)
        for got, ref in zip(net.trainable_params(), want.trainable_params()):
            np.testing.assert_allclose(got.asnumpy(), ref.asnumpy(), rtol=1e-6, atol=1e-7)
        assert not np.allclose(net[0].weight.asnumpy(), other[0].weight.asnumpy(), atol=1e-4)

        ms_optim.register_thor_layer(_Scaled, _NotAThorLayer, block=_DoubleDamping)
        with pytest.raises(TypeError, match="lacks the THOR statistics"):
            thor(nn.SequentialCell([_Scaled(), nn.Dense(2, 2)]), LR, DAMP, 0.9)
    finally:
        for cls in (_MyDense, _Scaled):
            THOR_LAYER_MAP.pop(cls, None)
            ms_optim.register_thor_layer(cls, _NotAThorLayer)  # clears the converter's block
            THOR_LAYER_MAP.pop(cls, None)
        blocks._BLOCK_OF_LAYER.pop(_MyDenseThor, None)  # pylint: disable=protected-access
