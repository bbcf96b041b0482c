"""Scoring of ``benchmarks/bench_thor_accuracy.py``: best learning rate, and the upper-bound
ratios when Momentum never reaches the target (no training here, hand-made result cells)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import bench_thor_accuracy as bta  # noqa: E402  (a broken script must fail here, not skip)


def _run(lr, seed, reached, spent, epochs=12):
    """One run: reached at epoch `reached` (None: never) after `spent` seconds in all."""
    n = reached or epochs
    cum = [spent * (k + 1) / n for k in range(n)]
    return {"lr": lr, "seed": seed, "epochs_to_target": reached, "cum_seconds": cum,
            "seconds_to_target": cum[-1] if reached else None,
            "steady_seconds_to_target": cum[-1] - 1.0 if reached else None}


def _cell(opt, runs, epochs=12, setup="s"):
    cell = {"setup": setup, "batch": 8, "optimizer": opt, "epochs": epochs, "compile_s": 1.0,
            "runs": runs}
    cell.update(bta.summarize_cell(runs, epochs))
    return cell


def test_best_lr_needs_every_seed():
    cell = _cell("thor", [_run(0.1, 0, 2, 4.0), _run(0.1, 1, None, 9.0),
                          _run(0.3, 0, 3, 6.0), _run(0.3, 1, 5, 8.0)])
    assert cell["best"]["lr"] == 0.3 and cell["lrs_reaching"] == 1
    assert cell["best"]["mean_epochs"] == 4.0 and cell["best"]["mean_seconds"] == 7.0


def test_momentum_never_reaching_gives_upper_bounds(capsys):
    # Momentum: lr 0.1 reaches in one seed (11 epochs, 10 s), the other spends 12 epochs / 12 s;
    # lr 0.3 never (12 epochs, 14 s and 16 s): bounds min(11.5, 12) epochs, min(11, 15) seconds
    mom = _cell("momentum", [_run(0.1, 0, 11, 10.0), _run(0.1, 1, None, 12.0),
                             _run(0.3, 0, None, 14.0), _run(0.3, 1, None, 16.0)])
    assert mom["best"] is None
    assert bta.never_reached_bounds(mom) == (11.5, 11.0)
    thor = _cell("thor", [_run(0.1, 0, 4, 6.0), _run(0.1, 1, 4, 6.0)])
    slow = _cell("thor", [_run(0.1, 0, 9, 10.0), _run(0.1, 1, 9, 10.0)], setup="t")
    bta.report([mom, thor, dict(mom, setup="t"), slow])
    out = capsys.readouterr().out
    assert thor["epochs_ratio"] == pytest.approx(4 / 11.5)
    assert thor["seconds_ratio"] == pytest.approx(6 / 11)
    assert thor["ratios_are_upper_bounds"]
    assert "<0.35 | <0.55 |" in out
    assert "s batch 8 thor: MET (ratios are upper bounds)" in out
    assert "t batch 8 thor: MISSED (ratios are upper bounds)" in out  # 9/11.5 > 0.6


def test_plain_ratios_when_momentum_reaches(capsys):
    mom = _cell("momentum", [_run(0.1, 0, 6, 6.0), _run(0.1, 1, 6, 6.0)])
    thor = _cell("thor", [_run(0.1, 0, 3, 6.0), _run(0.1, 1, 3, 6.0)])
    bta.report([mom, thor])
    out = capsys.readouterr().out
    assert thor["epochs_ratio"] == 0.5 and thor["seconds_ratio"] == 1.0
    assert not thor["ratios_are_upper_bounds"]
    assert "  s batch 8 thor: MISSED\n" in out  # no "(ratios are upper bounds)"
