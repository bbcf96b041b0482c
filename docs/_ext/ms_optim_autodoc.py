"""Sphinx extension: show ms_optim signatures as written in the source.

Autodoc would print ``LARS(*args, **kwargs)`` for every ``mindspore.nn.Cell`` subclass (it reads
the inherited ``Cell.__new__`` first) and ``<function <lambda> at 0x...>`` for callable defaults.
This hook replaces the signature of every ``ms_optim`` class and function by
:func:`ms_optim_sigs.source_signature`, the same text the Chinese pages must carry
(``tests/test_docs.py`` compares them).
"""
import inspect

from ms_optim_sigs import source_signature


def _process_signature(app, what, name, obj, options, signature, return_annotation):
    if not name.startswith("ms_optim."):
        return None
    if what == "class" or (what == "function" and inspect.isfunction(obj)):
        return source_signature(obj), return_annotation
    return None


def setup(app):
    app.connect("autodoc-process-signature", _process_signature)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
