"""Network conversion for THOR, driven by a public registry (no model names).

``THOR_LAYER_MAP`` maps a MindSpore layer class to a converter ``f(cell) -> new_cell or str``
(a string is the reason the cell is left unconverted, which is logged). Add your own with
:func:`register_thor_layer`. Converters reuse the original Parameters (weights, biases) and the
original activation cell, so outputs are identical before and after conversion. Model
conversion (:class:`ConvertModelUtils`) lives beside the train cells in :mod:`ms_optim.thor.model`.
"""
import logging

from mindspore import nn

from .._validation import check_bool
from ..lars import _format_rows

from . import blocks
from .layers import Conv2dThor, DenseThor, EmbeddingLookupThor, EmbeddingThor

__all__ = ["ConvertNetUtils", "THOR_LAYER_MAP", "register_thor_layer"]

_LOG = logging.getLogger("ms_optim")


def _convert_dense(cell):
    new = DenseThor(cell.in_channels, cell.out_channels, has_bias=cell.has_bias, activation=None)
    new.weight = cell.weight
    if cell.has_bias:
        new.bias = cell.bias
    # keep the very same activation object (alpha of LeakyReLU, approximate of GELU, ...)
    new.activation = cell.activation
    new.activation_flag = cell.activation_flag
    return new


def _convert_conv2d(cell):
    if getattr(cell, "data_format", "NCHW") != "NCHW":
        return f"data_format={cell.data_format}: only NCHW is supported; left unconverted"
    if type(cell) is not nn.Conv2d:  # pylint: disable=unidiomatic-typecheck
        return f"{type(cell).__name__} is a Conv2d subclass with its own construct; left unconverted"
    new = Conv2dThor(cell.in_channels, cell.out_channels, cell.kernel_size, stride=cell.stride,
                     pad_mode=cell.pad_mode, padding=cell.padding, dilation=cell.dilation,
                     group=cell.group, has_bias=cell.has_bias)
    new.weight = cell.weight
    if cell.has_bias:
        new.bias = cell.bias
    return new


def _convert_embedding(cell):
    if type(cell) is not nn.Embedding:  # pylint: disable=unidiomatic-typecheck
        return f"{type(cell).__name__} is an Embedding subclass; left unconverted"
    new = EmbeddingThor(cell.vocab_size, cell.embedding_size, use_one_hot=cell.use_one_hot,
                        dtype=cell.dtype, padding_idx=cell.padding_idx)
    new.embedding_table = cell.embedding_table
    return new


def _convert_embedding_lookup(cell):
    if type(cell) is not nn.EmbeddingLookup:  # pylint: disable=unidiomatic-typecheck
        return f"{type(cell).__name__} is an EmbeddingLookup subclass; left unconverted"
    if cell.max_norm is not None:
        return "max_norm is set: the clipped lookup has no THOR rule; left unconverted"
    new = EmbeddingLookupThor(cell.vocab_size, cell.embedding_size, target=cell.target,
                              sparse=cell.sparse)
    new.embedding_table = cell.embedding_table
    return new


def _name_like(old, new, full):
    """Keep the original Parameter names; name the new statistics after the weight's prefix."""
    weight = getattr(old, "weight", getattr(old, "embedding_table", None))
    wname = weight.name
    attr = "weight" if hasattr(old, "weight") else "embedding_table"
    prefix = wname[:-len(attr)] if wname.endswith(attr) else (full + ".")
    original = {id(p): p.name for p in old.get_parameters()}
    for rel, param in tuple(new.parameters_and_names()) + new._statistics():  # pylint: disable=protected-access
        param.name = original.get(id(param), prefix + rel)


def _copy_precision_flags(old, new):
    """Carry the cell's own mixed-precision setting (``to_float``: flags fp16/fp32/bf16) over to
    its THOR replacement, so a network cast before :func:`ms_optim.thor` keeps its precision."""
    flags = {k: old.__dict__[k] for k in ("fp16", "fp32", "bf16") if k in old.__dict__}
    if flags:
        new.add_flags(**flags)


#: Layer class -> converter. Exact class match (subclasses are not converted implicitly).
THOR_LAYER_MAP = {
    nn.Dense: _convert_dense,
    nn.Conv2d: _convert_conv2d,
    nn.Embedding: _convert_embedding,
    nn.EmbeddingLookup: _convert_embedding_lookup,
}


#: Layer class -> the CurvatureBlock given to register_thor_layer for what its converter returns.
_CONVERTER_BLOCK = {}


def register_thor_layer(layer_cls, converter, *, block=None):
    """Register a converter for cells of type ``layer_cls`` (exact type match).

    Args:
        layer_cls (type): a :class:`mindspore.nn.Cell` subclass.
        converter (Callable): ``converter(cell) -> Cell | str``: the THOR layer replacing `cell`
            (reusing its Parameters), or the reason it stays unconverted (logged). The returned
            cell must be preconditioned by a curvature block: a :class:`DenseThor`,
            :class:`Conv2dThor`, :class:`EmbeddingThor` or :class:`EmbeddingLookupThor` (or a
            subclass), or a cell for which `block` is given. A converter that returns another
            cell makes :func:`ms_optim.thor` and :meth:`ConvertNetUtils.convert_to_thor_net`
            raise ``TypeError`` before they change the network (it would be converted and never
            preconditioned).
        block (type): keyword-only; a :class:`ms_optim.thor.blocks.CurvatureBlock` subclass that
            preconditions the cells `converter` returns (their class is registered with it; they
            must collect the statistics ``matrix_a``, ``matrix_g``, ``thor_t``, ``thor_n`` as
            the built-in THOR layers do). Default: ``None`` (the block of the returned layer's
            class, e.g. the Kronecker block of :class:`DenseThor`).

    Raises:
        TypeError: If `layer_cls` is not a Cell subclass, `converter` is not callable, or `block`
            is neither None nor a ``CurvatureBlock`` subclass.

    Supported Platforms:
        ``Ascend`` ``GPU`` ``CPU``

    Examples:
        >>> from mindspore import nn
        >>> from ms_optim import ConvertNetUtils, register_thor_layer
        >>> class MyDense(nn.Dense):
        ...     pass
        >>> register_thor_layer(MyDense, lambda cell: "custom layer, kept first-order")
        >>> net = nn.SequentialCell([MyDense(3, 2)])
        >>> type(ConvertNetUtils().convert_to_thor_net(net)[0]).__name__
        'MyDense'
    """
    if not (isinstance(layer_cls, type) and issubclass(layer_cls, nn.Cell)):
        raise TypeError("For 'register_thor_layer', the argument 'layer_cls' must be a Cell "
                        f"subclass, but got {layer_cls!r}.")
    if not callable(converter):
        raise TypeError("For 'register_thor_layer', the argument 'converter' must be callable, "
                        f"but got {type(converter).__name__}.")
    if block is not None and not (isinstance(block, type)
                                  and issubclass(block, blocks.CurvatureBlock)):
        raise TypeError("For 'register_thor_layer', the argument 'block' must be None or a "
                        f"CurvatureBlock subclass, but got {block!r}.")
    THOR_LAYER_MAP[layer_cls] = converter
    if block is None:
        _CONVERTER_BLOCK.pop(layer_cls, None)
    else:
        _CONVERTER_BLOCK[layer_cls] = block


class ConvertNetUtils:
    r"""Replace convertible layers of a network by their THOR counterparts, in place.

    ``nn.Dense`` -> :class:`DenseThor`, ``nn.Conv2d`` -> :class:`Conv2dThor`, ``nn.Embedding``
    -> :class:`EmbeddingThor`, ``nn.EmbeddingLookup`` -> :class:`EmbeddingLookupThor` (plus
    :data:`THOR_LAYER_MAP` entries you register). Cells whose weight is frozen are skipped.
    Layers that cannot be converted exactly (NHWC, ``max_norm`` lookups, subclasses with their
    own ``construct``) stay as they are, with the reason given as a warning
    on the ``ms_optim`` logger. Every decision is recorded: :meth:`table` lists each layer with
    its type, whether it was converted and why not.

    Args:
        thor_filter (Callable): optional ``thor_filter(name, cell) -> bool``; cells for which it
            returns False are left alone. Default: ``None`` (all).
        verbose (bool): print the conversion table after :meth:`convert_to_thor_net`.
            Default: ``False``.

    Raises:
        TypeError: If `thor_filter` is neither None nor callable.
        TypeError: If `verbose` is not a bool.

    Supported Platforms:
        ``Ascend`` ``GPU`` ``CPU``

    Examples:
        >>> from mindspore import nn
        >>> from ms_optim import ConvertNetUtils, DenseThor
        >>> net = nn.SequentialCell([nn.Dense(3, 4), nn.ReLU(), nn.Dense(4, 2)])
        >>> _ = ConvertNetUtils().convert_to_thor_net(net)
        >>> isinstance(net[0], DenseThor)
        True
    """

    def __init__(self, thor_filter=None, verbose=False):
        if thor_filter is not None and not callable(thor_filter):
            raise TypeError("For 'ConvertNetUtils', the argument 'thor_filter' must be callable, "
                            f"but got {type(thor_filter).__name__}.")
        check_bool("ConvertNetUtils", "verbose", verbose)
        self.thor_filter = thor_filter
        self.verbose = verbose
        self._rows = []

    def _walk(self, cell, prefix, visit):
        for name, sub in list(cell.name_cells().items()):
            if sub is cell:
                continue
            full = f"{prefix}.{name}" if prefix else name
            conv = THOR_LAYER_MAP.get(type(sub))
            if blocks.block_class_for(sub) is not None:
                visit(cell, name, full, sub, None, already=True)
            elif conv is not None:
                visit(cell, name, full, sub, conv, already=False)
            else:
                self._walk(sub, full, visit)

    def _why_not(self, full, sub):
        """None if `sub` is to be converted, else the reason it is not."""
        weight = getattr(sub, "weight", getattr(sub, "embedding_table", None))
        if weight is None:
            return "no weight"
        if not weight.requires_grad:
            return "weight frozen (requires_grad=False)"
        if self.thor_filter is not None and not bool(self.thor_filter(full, sub)):
            return "excluded by thor_filter"
        return None

    def _decide(self, full, sub, conv):
        """(new cell or None, reason or None): the one decision behind plan() and conversion."""
        why = self._why_not(full, sub)
        if why is not None:
            return None, why
        new = conv(sub)
        if isinstance(new, str):
            return None, new
        block = _CONVERTER_BLOCK.get(type(sub)) or blocks.block_class_for(new)
        if block is None:
            # THOR would convert it and then never precondition it: refuse before any change
            raise TypeError(f"For 'register_thor_layer', the converter of {type(sub).__name__} "
                            f"returned {type(new).__name__} for '{full}', which THOR cannot "
                            "precondition: a converter must return a DenseThor, Conv2dThor, "
                            "EmbeddingThor or EmbeddingLookupThor (whose statistics the optimizer "
                            "has a rule for), a cell whose CurvatureBlock is given to "
                            "register_thor_layer(..., block=...), or a str giving why the layer "
                            "stays unconverted.")
        missing = blocks.missing_statistics(new)
        if missing:
            raise TypeError(f"For 'register_thor_layer', the converter of {type(sub).__name__} "
                            f"returned {type(new).__name__} for '{full}', which lacks the THOR "
                            f"statistics {missing} its block {block.__name__} reads.")
        if type(sub) in _CONVERTER_BLOCK:
            blocks.register_block(type(new), block)
        return new, None

    def plan(self, net):
        """Names of the layers that are (or would become) THOR layers, in conversion order.

        The same decision as :meth:`convert_to_thor_net` (the converters are run, their results
        discarded), so layers a converter refuses are not counted.

        Args:
            net (Cell): the network (not modified).

        Returns:
            list[str], cell paths.
        """
        return [name for name, _ in self._plan_blocks(net)]

    def _plan_blocks(self, net):
        """Like :meth:`plan`, with the curvature block class of each layer.

        Args:
            net (Cell): the network (not modified).

        Returns:
            list[tuple[str, type]], ``(cell path, block class)``.
        """
        out = []

        def visit(parent, name, full, sub, conv, already):
            layer = sub if already else self._decide(full, sub, conv)[0]
            if layer is not None:
                out.append((full, blocks.block_class_for(layer)))
        self._walk(net, "", visit)
        return out

    def convert_to_thor_net(self, net):
        """Convert ``net`` in place; returns ``net``.

        Args:
            net (Cell): the network.

        Returns:
            Cell, the same object, converted.

        Raises:
            TypeError: If `net` is not a Cell.
            TypeError: If a converter registered with :func:`register_thor_layer` returns a cell
                that is not a THOR layer (raised before `net` is changed).
        """
        if not isinstance(net, nn.Cell):
            raise TypeError("For 'convert_to_thor_net', the argument 'net' must be Cell, "
                            f"but got {type(net).__name__}.")
        changed = []
        rows = []

        def visit(parent, name, full, sub, conv, already):
            kind = type(sub).__name__
            if already:
                rows.append((full, kind, "yes", "already a THOR layer"))
                return
            new, why = self._decide(full, sub, conv)
            if new is None:
                if self._why_not(full, sub) is None:  # the converter refused it
                    _LOG.warning("THOR conversion: '%s' (%s) left unconverted: %s", full, kind,
                                 why)
                rows.append((full, kind, "no", why))
                return
            _name_like(sub, new, full)
            new.set_train(sub.training)
            _copy_precision_flags(sub, new)
            parent.insert_child_to_cell(name, new)
            changed.append(parent)
            rows.append((full, kind, "yes", f"-> {type(new).__name__}"))
        self._walk(net, "", visit)
        for parent in changed:
            if isinstance(parent, nn.SequentialCell):
                parent.cell_list = list(parent.cells())
        self._rows = rows
        if self.verbose:
            print(self.table())
        return net

    def table(self):
        """The decisions of the last :meth:`convert_to_thor_net` call, as a text table.

        Returns:
            str, one row per layer of a type in :data:`THOR_LAYER_MAP` (and THOR layers already
            present): cell path, type, converted (``yes``/``no``), and what was done or why not.

        Examples:
            >>> from mindspore import nn
            >>> from ms_optim import ConvertNetUtils
            >>> net = nn.SequentialCell([nn.Conv2d(4, 4, 3, group=2), nn.Flatten(), nn.Dense(4, 2)])
            >>> conv = ConvertNetUtils(thor_filter=lambda name, cell: name != "2")
            >>> _ = conv.convert_to_thor_net(net)
            >>> print(conv.table())
            layer  type    converted  detail
            -----  ------  ---------  -----------------------
            0      Conv2d  yes        -> Conv2dThor
            2      Dense   no         excluded by thor_filter
        """
        return _format_rows([("layer", "type", "converted", "detail")] + list(self._rows))
