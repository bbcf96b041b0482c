"""Real data: on sklearn digits (examples/digits.py CNN, batch 256), THOR reaches 97 % test accuracy
in at most 0.6x the epochs plain Momentum needs, each with its best lr from a small grid.

Measured (seed 0, GRAPH, CPU): Momentum lr 0.05/0.1/0.2/0.4 -> 8/6/13/11 epochs; THOR (damping 0.03,
frequency 5) lr 0.025/0.05/0.1/0.2 -> 3/4/2/2 epochs. Best: 6 vs 2 (ratio 0.33).
"""
import os
import sys

import mindspore as ms
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))

import digits  # noqa: E402

BATCH = 256
TARGET = 0.97
MOMENTUM_GRID = (0.05, 0.1, 0.2, 0.4)
THOR_GRID = (0.05, 0.1, 0.2)
MOMENTUM_EPOCHS = 12
THOR_EPOCHS = 6


def _best_epochs(name, grid, epochs, **kw):
    best = None
    for lr in grid:
        res = digits.train_config(name, lr, epochs, batch_size=BATCH, seed=0, mode=ms.GRAPH_MODE,
                                  verbose=False, **kw)
        e = digits.epochs_to_reach(res["test_acc"], TARGET)
        if e is not None and (best is None or e < best):
            best = e
    return best


@pytest.mark.slow
def test_thor_needs_at_most_0_6x_momentum_epochs_on_digits():
    mom = _best_epochs("momentum", MOMENTUM_GRID, MOMENTUM_EPOCHS)
    thor_e = _best_epochs("thor", THOR_GRID, THOR_EPOCHS, damping=0.03, frequency=5)
    assert mom is not None, "Momentum never reached 97 %"
    assert thor_e is not None, "THOR never reached 97 %"
    assert thor_e <= 0.6 * mom, (thor_e, mom)
