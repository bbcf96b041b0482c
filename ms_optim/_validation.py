"""Argument checks shared by every public entry point.

Each check raises before anything is changed and names the argument, in MindSpore's message
shape: ``For 'LARS', the argument 'epsilon' must be float, but got int.``
This module imports nothing from the rest of the package.
"""
import math
import numbers

__all__ = [
    "check_bool", "check_float", "check_int", "check_callable", "check_non_negative",
    "check_positive", "check_type",
]


def _tname(value):
    return type(value).__name__


def check_type(cls_name, arg_name, value, types, type_desc):
    """Raise ``TypeError`` unless ``isinstance(value, types)`` (``bool`` never counts as a number)."""
    if isinstance(value, bool) and bool not in _as_tuple(types):
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        raise TypeError(f"For '{cls_name}', the argument '{arg_name}' must be {type_desc}, "
                        f"but got {_tname(value)}.")
    return value


def _as_tuple(types):
    return types if isinstance(types, tuple) else (types,)


def check_float(cls_name, arg_name, value):
    """Raise ``TypeError`` unless ``value`` is a Python ``float`` (ints are rejected, as upstream)."""
    return check_type(cls_name, arg_name, value, float, "float")


def check_int(cls_name, arg_name, value):
    """Raise ``TypeError`` unless ``value`` is an ``int`` (``bool`` rejected)."""
    return check_type(cls_name, arg_name, value, numbers.Integral, "int")


def check_bool(cls_name, arg_name, value):
    """Raise ``TypeError`` unless ``value`` is a ``bool``."""
    return check_type(cls_name, arg_name, value, bool, "bool")


def check_callable(cls_name, arg_name, value):
    """Raise ``TypeError`` unless ``value`` is callable."""
    if not callable(value):
        raise TypeError(f"For '{cls_name}', the argument '{arg_name}' must be callable, "
                        f"but got {_tname(value)}.")
    return value


def check_non_negative(cls_name, arg_name, value):
    """Raise ``ValueError`` unless ``value`` is finite and ``>= 0``."""
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"For '{cls_name}', the argument '{arg_name}' must be a finite number "
                         f">= 0, but got {value}.")
    return value


def check_positive(cls_name, arg_name, value):
    """Raise ``ValueError`` unless ``value`` is finite and ``> 0``."""
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"For '{cls_name}', the argument '{arg_name}' must be a finite number "
                         f"> 0, but got {value}.")
    return value
