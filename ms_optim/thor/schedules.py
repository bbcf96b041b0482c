r"""Learning-rate and damping schedules of the published THOR recipes (ModelZoo ResNet-50).

Equivalent to the model zoo's ``get_thor_lr`` / ``get_thor_damping``
(``mindspore-ai/models`` ``official/cv/ResNet/src/lr_generator.py``), returning per-step float32
arrays. Note that :func:`ms_optim.thor` indexes both by the optimizer's *global* step, so pass the
full schedule (``global_step=0``) also when resuming from a checkpoint.
"""
import numbers

import numpy as np

from .._validation import check_int, check_non_negative, check_positive, check_type

__all__ = ["thor_lr_schedule", "thor_damping_schedule"]


def _check_number(name, arg, value):
    return check_type(name, arg, value, numbers.Real, "int or float")


def _check_common(name, global_step, total_epochs, steps_per_epoch):
    check_int(name, "global_step", global_step)
    check_int(name, "steps_per_epoch", steps_per_epoch)
    _check_number(name, "total_epochs", total_epochs)
    if steps_per_epoch <= 0 or not total_epochs > 0 or global_step < 0:
        raise ValueError(f"For '{name}', 'steps_per_epoch' and 'total_epochs' must be > 0 and "
                         f"'global_step' >= 0, but got {steps_per_epoch}, {total_epochs}, "
                         f"{global_step}.")
    check_positive(name, "total_epochs", total_epochs)
    n = int(total_epochs * steps_per_epoch)
    if global_step >= n:
        raise ValueError(f"For '{name}', 'global_step' must be < floor(total_epochs * "
                         f"steps_per_epoch) = {n} (the schedule has {n} steps), but got "
                         f"{global_step}.")
    return n


def thor_lr_schedule(global_step, lr_init, decay, total_epochs, steps_per_epoch, decay_epochs=100):
    r"""THOR learning-rate schedule (polynomial decay with two late halvings).

    .. math::

        e_i = \frac{i + 1}{S},\qquad
        lr_i = lr_{init}\Big(1 - \frac{e_i}{E}\Big)^{p}\cdot
        \tfrac12^{[e_i \ge D]}\cdot\tfrac12^{[e_i \ge D + 1]},\qquad i = 0, \dots, E S - 1

    :math:`S` = `steps_per_epoch`, :math:`E` = `total_epochs`, :math:`p` = `decay`, :math:`D` =
    `decay_epochs`; the array is returned from index `global_step` on. The schedule ends at step
    :math:`\lfloor E S\rfloor - 1`; a `global_step` at or past the end raises ValueError (there is
    no value to return), and :func:`ms_optim.thor` holds the last value for steps past the end.

    Args:
        global_step (int): first step returned.
        lr_init (Union[int, float]): :math:`lr_{init} \ge 0`.
        decay (Union[int, float]): :math:`p \ge 0`.
        total_epochs (Union[int, float]): :math:`E > 0`.
        steps_per_epoch (int): :math:`S > 0`.
        decay_epochs (Union[int, float]): :math:`D \ge 0`. Default: ``100``.

    Returns:
        numpy.ndarray, float32, shape :math:`(\lfloor E S\rfloor - \text{global_step},)`.

    Raises:
        TypeError: If `global_step` or `steps_per_epoch` is not an int.
        TypeError: If `lr_init`, `decay`, `total_epochs` or `decay_epochs` is not an int or float.
        ValueError: If `steps_per_epoch` or `total_epochs` <= 0 or `global_step` < 0.
        ValueError: If `lr_init`, `decay` or `decay_epochs` is negative or not finite.
        ValueError: If `global_step` >= :math:`\lfloor E S\rfloor` (past the end).

    Supported Platforms:
        ``Ascend`` ``GPU`` ``CPU``

    Examples:
        >>> from ms_optim import thor_lr_schedule
        >>> [round(float(v), 4) for v in thor_lr_schedule(0, 0.1, 2.0, 2, 2)]
        [0.0562, 0.025, 0.0063, 0.0]
    """
    name = "thor_lr_schedule"
    n = _check_common(name, global_step, total_epochs, steps_per_epoch)
    for arg, value in (("lr_init", lr_init), ("decay", decay), ("decay_epochs", decay_epochs)):
        check_non_negative(name, arg, _check_number(name, arg, value))
    i = np.arange(n, dtype=np.float64)
    e = (i + 1) / steps_per_epoch
    lr = lr_init * (1.0 - e / total_epochs) ** decay
    lr = lr * np.where(e >= decay_epochs, 0.5, 1.0) * np.where(e >= decay_epochs + 1, 0.5, 1.0)
    return lr.astype(np.float32)[global_step:]


def thor_damping_schedule(global_step, damping_init, decay_rate, total_epochs, steps_per_epoch):
    r"""THOR damping schedule (exponential decay per ten epochs).

    .. math::

        \lambda_i = \lambda_{init}\, r^{\,e_i / 10},\qquad e_i = \frac{i+1}{S},\qquad
        i = 0, \dots, E S - 1

    :math:`S` = `steps_per_epoch`, :math:`E` = `total_epochs`; the array is returned from index
    `global_step` on. A `global_step` at or past the end (:math:`\lfloor E S\rfloor`) raises
    ValueError; :func:`ms_optim.thor` holds the last value for steps past the end.

    Args:
        global_step (int): first step returned.
        damping_init (Union[int, float]): :math:`\lambda_{init} \ge 0`.
        decay_rate (Union[int, float]): :math:`r > 0`.
        total_epochs (Union[int, float]): :math:`E > 0`.
        steps_per_epoch (int): :math:`S > 0`.

    Returns:
        numpy.ndarray, float32, shape :math:`(\lfloor E S\rfloor - \text{global_step},)`.

    Raises:
        TypeError: If `global_step` or `steps_per_epoch` is not an int.
        TypeError: If `damping_init`, `decay_rate` or `total_epochs` is not an int or float.
        ValueError: If `steps_per_epoch` or `total_epochs` <= 0 or `global_step` < 0.
        ValueError: If `damping_init` < 0 or `decay_rate` <= 0, or either is not finite.
        ValueError: If `global_step` >= :math:`\lfloor E S\rfloor` (past the end).

    Supported Platforms:
        ``Ascend`` ``GPU`` ``CPU``

    Examples:
        >>> from ms_optim import thor_damping_schedule
        >>> [round(float(v), 4) for v in thor_damping_schedule(0, 0.03, 0.5, 20, 1)[[9, 19]]]
        [0.015, 0.0075]
    """
    name = "thor_damping_schedule"
    n = _check_common(name, global_step, total_epochs, steps_per_epoch)
    check_non_negative(name, "damping_init", _check_number(name, "damping_init", damping_init))
    check_positive(name, "decay_rate", _check_number(name, "decay_rate", decay_rate))
    i = np.arange(n, dtype=np.float64)
    e = (i + 1) / steps_per_epoch
    return (damping_init * decay_rate ** (e / 10.0)).astype(np.float32)[global_step:]
