r"""Learning-rate and damping schedules of the published THOR recipes (ModelZoo ResNet-50).

Equivalent to the model zoo's ``get_thor_lr`` / ``get_thor_damping``
(``mindspore-ai/models`` ``official/cv/ResNet/src/lr_generator.py``), returning per-step float32
arrays. Note that :func:`ms_optim.thor` indexes both by the optimizer's *global* step, so pass the
full schedule (``global_step=0``) also when resuming from a checkpoint.
"""
import numpy as np

from .._validation import check_int, check_type

__all__ = ["thor_lr_schedule", "thor_damping_schedule"]


def _check_common(name, global_step, total_epochs, steps_per_epoch):
    check_int(name, "global_step", global_step)
    check_int(name, "steps_per_epoch", steps_per_epoch)
    check_type(name, "total_epochs", total_epochs, (int, float), "int or float")
    if steps_per_epoch <= 0 or total_epochs <= 0 or global_step < 0:
        raise ValueError(f"For '{name}', 'steps_per_epoch' and 'total_epochs' must be > 0 and "
                         f"'global_step' >= 0, but got {steps_per_epoch}, {total_epochs}, "
                         f"{global_step}.")


def thor_lr_schedule(global_step, lr_init, decay, total_epochs, steps_per_epoch, decay_epochs=100):
    r"""THOR learning-rate schedule (polynomial decay with two late halvings).

    .. math::

        e_i = \frac{i + 1}{S},\qquad
        lr_i = lr_{init}\Big(1 - \frac{e_i}{E}\Big)^{p}\cdot
        \tfrac12^{[e_i \ge D]}\cdot\tfrac12^{[e_i \ge D + 1]},\qquad i = 0, \dots, E S - 1

    :math:`S` = `steps_per_epoch`, :math:`E` = `total_epochs`, :math:`p` = `decay`, :math:`D` =
    `decay_epochs`; the array is returned from index `global_step` on.

    Args:
        global_step (int): first step returned.
        lr_init (float): :math:`lr_{init}`.
        decay (float): :math:`p`.
        total_epochs (Union[int, float]): :math:`E`.
        steps_per_epoch (int): :math:`S`.
        decay_epochs (Union[int, float]): :math:`D`. Default: ``100``.

    Returns:
        numpy.ndarray, float32, shape :math:`(\lfloor E S\rfloor - \text{global\_step},)`.

    Raises:
        TypeError: If `global_step` or `steps_per_epoch` is not an int.
        ValueError: If `steps_per_epoch` or `total_epochs` <= 0 or `global_step` < 0.

    Supported Platforms:
        ``Ascend`` ``GPU`` ``CPU``

    Examples:
        >>> from ms_optim import thor_lr_schedule
        >>> [round(float(v), 4) for v in thor_lr_schedule(0, 0.1, 2.0, 2, 2)]
        [0.0562, 0.025, 0.0063, 0.0]
    """
    _check_common("thor_lr_schedule", global_step, total_epochs, steps_per_epoch)
    i = np.arange(int(total_epochs * steps_per_epoch), dtype=np.float64)
    e = (i + 1) / steps_per_epoch
    lr = lr_init * (1.0 - e / total_epochs) ** decay
    lr = lr * np.where(e >= decay_epochs, 0.5, 1.0) * np.where(e >= decay_epochs + 1, 0.5, 1.0)
    return lr.astype(np.float32)[global_step:]


def thor_damping_schedule(global_step, damping_init, decay_rate, total_epochs, steps_per_epoch):
    r"""THOR damping schedule (exponential decay per ten epochs).

    .. math::

        \lambda_i = \lambda_{init}\, r^{\,e_i / 10},\qquad e_i = \frac{i+1}{S},\qquad
        i = 0, \dots, E S - 1

    Args:
        global_step (int): first step returned.
        damping_init (float): :math:`\lambda_{init}`.
        decay_rate (float): :math:`r`.
        total_epochs (Union[int, float]): :math:`E`.
        steps_per_epoch (int): :math:`S`.

    Returns:
        numpy.ndarray, float32.

    Raises:
        TypeError: If `global_step` or `steps_per_epoch` is not an int.
        ValueError: If `steps_per_epoch` or `total_epochs` <= 0 or `global_step` < 0.

    Supported Platforms:
        ``Ascend`` ``GPU`` ``CPU``

    Examples:
        >>> from ms_optim import thor_damping_schedule
        >>> [round(float(v), 4) for v in thor_damping_schedule(0, 0.03, 0.5, 20, 1)[[9, 19]]]
        [0.015, 0.0075]
    """
    _check_common("thor_damping_schedule", global_step, total_epochs, steps_per_epoch)
    i = np.arange(int(total_epochs * steps_per_epoch), dtype=np.float64)
    e = (i + 1) / steps_per_epoch
    return (damping_init * decay_rate ** (e / 10.0)).astype(np.float32)[global_step:]
