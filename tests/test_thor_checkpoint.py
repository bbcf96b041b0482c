"""THOR checkpoints hold what resume needs and not the statistics the next refresh recomputes.

Saved: weights, BatchNorm state, momenta, the inverses ``thor_a_inv.*``/``thor_g_inv.*``/``thor_t.*``
(``t_keep``), ``global_step``, damping/lr schedules, ``thor_fault_count``. Not saved: every layer's
``matrix_a``, ``matrix_g``, ``thor_t``, ``thor_n`` (kept out of the Parameter registry; see
:class:`ms_optim.thor.layers._StatsMixin`). Resume after ``load_checkpoint`` +
``load_param_into_net(strict_load=True)`` into fresh objects (statistics still zero) is
bit-identical to uninterrupted training across a refresh boundary.
"""
import os

import numpy as np

import mindspore as ms
import mindspore.dataset as ds
from mindspore.train import CheckpointConfig, ModelCheckpoint

from ms_optim import ConvertModelUtils
from ms_optim.thor.layers import THOR_LAYERS
import thor_helpers as H
from test_thor_model import build_run

FREQ = 2  # refreshes at global steps 0, 2, 4
SAVE_AT = 3  # resume at a stale step (reads the loaded inverses), then refresh at step 4
STEPS = 5


def _statistic_names(net):
    return {p.name for _, c in net.cells_and_names() if isinstance(c, THOR_LAYERS)
            for _, p in c._statistics()}  # pylint: disable=protected-access


def _state(net, opt):
    """Everything the run's future depends on, by name."""
    out = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
    for group in (opt.moments, opt.a_inv, opt.g_inv, opt.t_keep):
        out.update({p.name: p.asnumpy().copy() for p in group})
    out["global_step"] = opt.global_step.asnumpy().copy()
    out["fault_count"] = opt.thor_fault_count.asnumpy().copy()
    return out


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)


def test_statistics_not_in_checkpoints_resume_state_is(mode, tmp_path):
    net, opt, step, data = build_run(freq=FREQ, steps=SAVE_AT)
    for x, y in data:
        step(*H.to_ms(x, y))
    stats = _statistic_names(net)
    assert len(stats) == 8 and all(n.endswith(("matrix_a", "matrix_g", "thor_t", "thor_n"))
                                   for n in stats)
    cell_ckpt, net_ckpt = str(tmp_path / "cell.ckpt"), str(tmp_path / "net.ckpt")
    ms.save_checkpoint(step, cell_ckpt)
    ms.save_checkpoint(net, net_ckpt)
    saved_cell, saved_net = ms.load_checkpoint(cell_ckpt), ms.load_checkpoint(net_ckpt)
    assert not stats & set(saved_cell) and not stats & set(saved_net)
    needed = {p.name for p in net.get_parameters()}
    needed |= {p.name for g in (opt.moments, opt.a_inv, opt.g_inv, opt.t_keep) for p in g}
    needed |= {opt.global_step.name, opt.thor_fault_count.name}
    assert needed <= set(saved_cell), needed - set(saved_cell)
    assert {p.name for p in net.get_parameters()} == set(saved_net)
    # the statistics still exist and were refreshed (step 2), they are just not saved
    assert np.abs(net[0].matrix_a.asnumpy()).max() > 0


def test_resume_is_bit_identical_across_a_refresh(mode, tmp_path):
    net, opt, step, data = build_run(freq=FREQ, steps=STEPS)
    for x, y in data:
        step(*H.to_ms(x, y))
    full = _state(net, opt)

    net1, opt1, step1, _ = build_run(freq=FREQ, steps=STEPS)
    for x, y in data[:SAVE_AT]:
        step1(*H.to_ms(x, y))
    ckpt = str(tmp_path / "thor.ckpt")
    ms.save_checkpoint(step1, ckpt)

    net2, opt2, step2, _ = build_run(freq=FREQ, steps=STEPS)  # fresh: statistics are zero
    not_loaded, _ = ms.load_param_into_net(step2, ms.load_checkpoint(ckpt), strict_load=True)
    assert not not_loaded, not_loaded
    assert not np.abs(net2[0].matrix_a.asnumpy()).any()
    assert int(opt2.global_step.asnumpy()[0]) == SAVE_AT
    refreshes = []
    for x, y in data[SAVE_AT:]:
        refreshes.append(step2.next_step_refreshes())
        step2(*H.to_ms(x, y))
    assert refreshes == [False, True]
    _assert_same_state(full, _state(net2, opt2))


def _dataset(batches):
    x = np.concatenate([b[0] for b in batches]).astype(np.float32)
    y = np.concatenate([b[1] for b in batches]).astype(np.int32)
    return ds.NumpySlicesDataset({"x": x, "y": y}, shuffle=False).batch(3)


def _model(freq):
    net, opt, _, data = build_run(freq=freq, steps=STEPS)
    loss = H.loss_fn()
    model = ms.train.Model(net, loss_fn=loss, optimizer=opt)
    return net, opt, ConvertModelUtils.convert_to_thor_model(model, net, loss, opt), data


def test_model_checkpoint_callback_resume(tmp_path):
    """ModelCheckpoint during Model.train saves no statistics; Model.train resumed from it ends
    bit-identical to the uninterrupted Model.train (GRAPH)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    net, opt, model, data = _model(FREQ)
    model.train(1, _dataset(data), dataset_sink_mode=False)
    full = _state(net, opt)

    net1, opt1, model1, _ = _model(FREQ)
    cfg = CheckpointConfig(save_checkpoint_steps=SAVE_AT, keep_checkpoint_max=2)
    cb = ModelCheckpoint(prefix="thor", directory=str(tmp_path), config=cfg)
    model1.train(1, _dataset(data[:SAVE_AT]), callbacks=[cb], dataset_sink_mode=False)
    files = [f for f in os.listdir(tmp_path) if f.endswith(".ckpt")]
    assert len(files) == 1, files
    saved = ms.load_checkpoint(str(tmp_path / files[0]))
    assert not _statistic_names(net1) & set(saved)

    net2, opt2, model2, _ = _model(FREQ)
    not_loaded, _ = ms.load_param_into_net(model2.train_network, saved, strict_load=True)
    assert not not_loaded, not_loaded
    model2.train(1, _dataset(data[SAVE_AT:]), dataset_sink_mode=False)
    _assert_same_state(full, _state(net2, opt2))
