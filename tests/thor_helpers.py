"""Shared builders for the THOR tests: the same tiny nets in MindSpore and in the NumPy reference."""
import numpy as np

import mindspore as ms
from mindspore import Tensor, nn


def mlp_spec(rng, sizes=(6, 9, 4)):
    return [
        {"kind": "dense", "w": rng.standard_normal((sizes[1], sizes[0])) * 0.5,
         "b": rng.standard_normal(sizes[1]) * 0.1},
        {"kind": "relu"},
        {"kind": "dense", "w": rng.standard_normal((sizes[2], sizes[1])) * 0.5,
         "b": rng.standard_normal(sizes[2]) * 0.1},
    ]


def conv_spec(rng):
    """Conv with a non-square kernel, explicit asymmetric padding, stride and dilation."""
    return [
        {"kind": "conv", "w": rng.standard_normal((3, 2, 3, 2)) * 0.4, "b": rng.standard_normal(3) * 0.1,
         "stride": (1, 2), "pad": (1, 1, 2, 0), "dilation": (2, 1)},
        {"kind": "relu"},
        {"kind": "flatten"},
        {"kind": "dense", "w": None, "b": rng.standard_normal(4) * 0.1},
    ]


def grouped_conv_spec(rng):
    """A grouped conv (4 -> 6 channels, 2 groups) and a depthwise conv with channel multiplier
    2 (6 -> 12, 6 groups: each G^(j) is 2x2), spatial size kept (7x6), then a Dense of width
    12*7*6 = 504 (four diagonal blocks of A)."""
    return [
        {"kind": "conv", "w": rng.standard_normal((6, 2, 3, 3)) * 0.3,
         "b": rng.standard_normal(6) * 0.1, "stride": (1, 1), "pad": (1, 1, 1, 1),
         "dilation": (1, 1), "groups": 2},
        {"kind": "relu"},
        {"kind": "conv", "w": rng.standard_normal((12, 1, 3, 2)) * 0.4,
         "b": rng.standard_normal(12) * 0.1, "stride": (1, 1), "pad": (1, 1, 1, 0),
         "dilation": (1, 1), "groups": 6},
        {"kind": "relu"},
        {"kind": "flatten"},
        {"kind": "dense", "w": rng.standard_normal((4, 12 * 7 * 6)) * 0.05,
         "b": rng.standard_normal(4) * 0.1},
    ]


def conv_input_shape():
    return (2, 7, 6)


def finish_conv_spec(spec, rng):
    """Fill the Dense width from the conv geometry."""
    c, h, w = conv_input_shape()
    conv = spec[0]
    _, _, kh, kw = conv["w"].shape
    pt, pb, pl, pr = conv["pad"]
    ho = (h + pt + pb - conv["dilation"][0] * (kh - 1) - 1) // conv["stride"][0] + 1
    wo = (w + pl + pr - conv["dilation"][1] * (kw - 1) - 1) // conv["stride"][1] + 1
    spec[3]["w"] = rng.standard_normal((4, 3 * ho * wo)) * 0.2
    return spec


def build_net(spec):
    cells = []
    for layer in spec:
        k = layer["kind"]
        if k == "dense":
            out, inn = layer["w"].shape
            cell = nn.Dense(inn, out, weight_init=Tensor(layer["w"].astype(np.float32)),
                            bias_init=Tensor(layer["b"].astype(np.float32)), has_bias=True)
        elif k == "conv":
            out, c, kh, kw = layer["w"].shape
            groups = layer.get("groups", 1)
            cell = nn.Conv2d(c * groups, out, (kh, kw), stride=layer["stride"], pad_mode="pad",
                             padding=layer["pad"], dilation=layer["dilation"], has_bias=True,
                             group=groups,
                             weight_init=Tensor(layer["w"].astype(np.float32)),
                             bias_init=Tensor(layer["b"].astype(np.float32)))
        elif k == "relu":
            cell = nn.ReLU()
        else:
            cell = nn.Flatten()
        cells.append(cell)
    return nn.SequentialCell(cells)


def spec_and_data(kind, rng, n_steps):
    """``(spec, batches)`` of the small "mlp" (batch 8) or "conv" (batch 3) reference network."""
    if kind == "mlp":
        return mlp_spec(rng), batches(rng, n_steps, 8, (6,))
    spec = finish_conv_spec(conv_spec(rng), rng)
    return spec, batches(rng, n_steps, 3, conv_input_shape())


def batches(rng, n_steps, batch, in_shape, classes=4):
    return [(rng.standard_normal((batch,) + tuple(in_shape)),
             rng.integers(0, classes, batch)) for _ in range(n_steps)]


def loss_fn():
    return nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")


def to_ms(x, y):
    return Tensor(x.astype(np.float32)), Tensor(y.astype(np.int32))


def spec_params(spec):
    """Reference parameters in the order of net.trainable_params() (weight, bias per layer)."""
    out = []
    for layer in spec:
        if layer["kind"] in ("dense", "conv"):
            out += [layer["w"], layer["b"]]
    return out


def snapshot(net):
    return {p.name: p.asnumpy().copy() for p in net.get_parameters()}


def structure(net):
    return [(name, type(cell).__name__) for name, cell in net.cells_and_names()]


class LossRecorder(ms.train.Callback):
    """Records the loss of every training step (the first output when the cell returns a tuple)."""

    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_step_end(self, run_context):
        out = run_context.original_args().net_outputs
        self.losses.append(float((out[0] if isinstance(out, tuple) else out).asnumpy()))


def monitored_grouped_run(rng, path, lam, samples, **thor_kw):
    """The grouped/depthwise conv net of :func:`grouped_conv_spec` trained by ``Model`` through
    ``ConvertModelUtils`` (batches of 3, ``frequency=2``, lr 0.01, damping `lam`) with an
    ``OptimizerMonitor`` writing to `path`; returns ``(net, monitor)``."""
    import ms_optim
    net = build_net(grouped_conv_spec(rng))
    opt = ms_optim.thor(net, Tensor(0.01, ms.float32), Tensor(lam, ms.float32), 0.9,
                        frequency=2, **thor_kw)
    loss = loss_fn()
    model = ms_optim.ConvertModelUtils.convert_to_thor_model(ms.train.Model(net, loss, opt), net,
                                                             loss, opt)
    x = rng.standard_normal((samples, 4, 7, 6)).astype(np.float32)
    y = rng.integers(0, 4, samples).astype(np.int32)
    data = ms.dataset.NumpySlicesDataset({"x": x, "y": y}, shuffle=False).batch(3)
    mon = ms_optim.OptimizerMonitor(str(path), opt)
    model.train(1, data, callbacks=[mon], dataset_sink_mode=False)
    return net, mon
