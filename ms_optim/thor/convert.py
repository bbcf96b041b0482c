"""Network and model conversion for THOR, driven by a public registry (no model names).

``THOR_LAYER_MAP`` maps a MindSpore layer class to a converter ``f(cell) -> new_cell or str``
(a string is the reason the cell is left unconverted, which is logged). Add your own with
:func:`register_thor_layer`. Converters reuse the original Parameters (weights, biases) and the
original activation cell, so outputs are identical before and after conversion.
"""
import logging

import mindspore as ms
from mindspore import nn
from mindspore.ops import functional as F
from mindspore.train import Model

from .._validation import check_bool
from ..lars import _format_rows

from . import blocks
from .layers import Conv2dThor, DenseThor, EmbeddingLookupThor, EmbeddingThor

__all__ = ["ConvertNetUtils", "ConvertModelUtils", "THOR_LAYER_MAP", "register_thor_layer"]

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


_AMP_LEVELS = ("O0", "O1", "O2", "O3", "auto")


class _WithLossFloat32(nn.Cell):
    """``loss_fn(backbone(data), label)`` with the backbone's output cast to float32 first (what
    ``mindspore.train.Model`` builds under mixed precision): the loss runs in float32."""

    def __init__(self, backbone, loss_fn):
        super().__init__(auto_prefix=False)
        self._backbone = backbone
        self._loss_fn = loss_fn

    def construct(self, data, label):
        out = F.mixed_precision_cast(ms.float32, self._backbone(data))
        return self._loss_fn(out, F.mixed_precision_cast(ms.float32, label))


class _OutputFloat32(nn.Cell):
    """Runs a float16 cell and casts its output to float32 (amp O1's rule for whitelisted cells);
    ``auto_prefix=False``: Parameter names are unchanged."""

    def __init__(self, cell):
        super().__init__(auto_prefix=False)
        self.cell = cell

    def construct(self, *args):
        return F.mixed_precision_cast(ms.float32, self.cell(*args))


def _precision_set(cell):
    return any(cell.__dict__.get(k, False) for k in ("fp16", "fp32", "bf16"))


def _amp_o1_in_place(network, white):
    """Amp O1 without ``mindspore.rewrite``: every cell of a whitelisted class (Dense, Conv, RNN
    cells, hence every Dense/Conv2d THOR layer) runs in float16 with a float32 output; the rest
    stays float32. (MindSpore's O1 rewrite fails on a network it already rewrote, e.g. inside
    ``Model(amp_level="O1")``, and would cast the float32 statistic matmuls of THOR layers.)"""
    changed = False
    for name, sub in list(network.name_cells().items()):
        if sub is network or isinstance(sub, _OutputFloat32):
            continue
        if isinstance(sub, white) and not _precision_set(sub):
            sub.to_float(ms.float16)
            if isinstance(sub, (DenseThor, Conv2dThor)):
                sub.thor_float32_output = True  # kept in place: its attributes stay reachable
            else:
                network.insert_child_to_cell(name, _OutputFloat32(sub))
                changed = True
        else:
            _amp_o1_in_place(sub, white)
    if changed and isinstance(network, nn.SequentialCell):
        network.cell_list = list(network.cells())


def _amp_network_with_loss(network, loss_fn, amp_level, keep_batchnorm_fp32):
    """Network with loss under ``amp_level``, as ``mindspore.train.Model`` builds it: mixed
    precision applied to the backbone only (in place), the loss in float32."""
    if amp_level == "O0":
        return nn.WithLossCell(network, loss_fn)
    from mindspore import amp
    if amp_level == "O1":
        white = tuple(c for c in amp.get_white_list() if isinstance(c, type) and issubclass(c, nn.Cell))
        _amp_o1_in_place(network, white)
        return _WithLossFloat32(network, loss_fn)
    level = amp_level
    if amp_level in ("O2", "O3"):  # as mindspore.train.Model with keep_batchnorm_fp32
        level = "O2" if keep_batchnorm_fp32 else "O3"
    backbone = amp.auto_mixed_precision(network, level)  # O2/O3: cast in place, output to float32
    return _WithLossFloat32(backbone, loss_fn)


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
        names = []

        def visit(parent, name, full, sub, conv, already):
            if already or self._decide(full, sub, conv)[0] is not None:
                names.append(full)
        self._walk(net, "", visit)
        return names

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


def _check_loss_scale_manager(manager, optimizer):
    """``(sens, update_cell)`` for `manager`: a static scale kept in the gradients (``sens``,
    equal to the optimizer's ``loss_scale``) or an update cell of MindSpore's loss-scale train
    cell (overflow steps dropped; the optimizer's ``loss_scale`` must be 1)."""
    from mindspore.amp import DynamicLossScaleManager, FixedLossScaleManager
    name = "convert_to_thor_model"
    if not isinstance(manager, (FixedLossScaleManager, DynamicLossScaleManager)):
        raise ValueError(f"For '{name}', 'loss_scale_manager' must be a FixedLossScaleManager or "
                         f"a DynamicLossScaleManager, but got {type(manager).__name__}.")
    dropping = isinstance(manager, DynamicLossScaleManager) or manager.get_drop_overflow_update()
    if dropping:
        if optimizer.loss_scale != 1.0:
            raise ValueError(f"For '{name}', with a {type(manager).__name__} that drops overflow "
                             "steps the train cell removes the loss scale from the gradients "
                             "itself: build the optimizer with loss_scale=1.0, but got "
                             f"loss_scale={optimizer.loss_scale}.")
        return 1.0, manager.get_update_cell()
    sens = float(manager.get_loss_scale())
    if abs(sens - optimizer.loss_scale) > 1e-6 * sens:
        raise ValueError(f"For '{name}', the loss scale of 'loss_scale_manager' ({sens}) must "
                         f"equal the optimizer's 'loss_scale' ({optimizer.loss_scale}) with "
                         "drop_overflow_update=False (the gradients keep the scale).")
    return sens, None


class ConvertModelUtils:
    """Turn a ``Model`` built with a THOR optimizer into one that refreshes every `frequency` steps.

    See :meth:`convert_to_thor_model`.

    Supported Platforms:
        ``Ascend`` ``GPU`` ``CPU``

    Examples:
        >>> from ms_optim import ConvertModelUtils
        >>> callable(ConvertModelUtils.convert_to_thor_model)
        True
    """

    @staticmethod
    def convert_to_thor_model(model, network, loss_fn=None, optimizer=None, metrics=None,
                              amp_level="O0", loss_scale_manager=None,
                              keep_batchnorm_fp32=False):
        r"""Return a :class:`mindspore.train.Model` whose training step follows THOR's frequency.

        With a THOR `optimizer` the returned model trains through
        :class:`ms_optim.ThorTrainOneStepCell`: refresh at global steps 0, F, 2F, ... (across
        epochs, counted by the optimizer's ``global_step``), stale steps without statistics;
        evaluation (``Model.eval``, ``Model.fit``) works. Unlike upstream, which silently returns
        `model` unchanged for any other optimizer, anything but a THOR optimizer raises TypeError.

        Without `loss_fn`, `network` is the user's own train cell (the model zoo's BERT-THOR
        pattern: an ``nn.TrainOneStepCell`` or ``nn.TrainOneStepWithLossScaleCell`` subclass,
        e.g. ``BertTrainOneStepCell``, whose ``optimizer`` is `optimizer`): it is driven by
        ``ms_optim.thor.model.ThorWrapTrainCell``, which calls it unchanged and switches the
        refresh and stale graphs of the layers inside it; a dynamic loss scale of the cell is
        removed from the curvature statistics every step, and on a backend without MindSpore's
        overflow kernels (CPU) the cell gets a portable overflow check (any non-finite gradient).
        The eval network, metrics and eval indexes of `model` are kept (`metrics`, if given,
        replaces the metrics).

        Note:
            Dataset sink mode is run as the non-sink loop, with a warning naming the reason
            (logged to ``logging.getLogger('ms_optim')`` and issued by ``warnings.warn``; on CPU
            MindSpore 2.10 has no sink mode at all): the per-step choice between the refresh and
            the stale graph is made on the host. A `sink_size` smaller than the dataset keeps its
            meaning (steps per epoch, continuing through the data as a sunk loop does). Loss scaling:
            ``FixedLossScaleManager(s, drop_overflow_update=False)`` needs the optimizer's
            ``loss_scale=s`` (the gradients keep the scale; THOR removes :math:`s^2` from
            :math:`G`). ``DynamicLossScaleManager`` and ``FixedLossScaleManager(s,
            drop_overflow_update=True)`` train through ``nn.TrainOneStepWithLossScaleCell``
            (driven as in the BERT pattern above, with the portable overflow check on CPU) and
            need ``loss_scale=1.0``: a step whose gradients overflow leaves weights, moments,
            inverses and ``global_step`` unchanged (the refresh is retried on the next step) and
            the dynamic scale drops; the current scale is removed from :math:`G` each step.
            Mixed precision follows ``mindspore.train.Model``'s rules, applied to `network` (in
            place), the loss computed in float32 on the output cast to float32: with `amp_level`
            ``"O2"`` or ``"O3"`` the network is cast to float16, and `keep_batchnorm_fp32` decides
            whether BatchNorm stays in float32 (``True``: ``mindspore.amp.auto_mixed_precision``
            level ``"O2"``; ``False``: level ``"O3"``, everything in float16). ``"O1"`` runs the
            cells of ``mindspore.amp.get_white_list()`` (Dense, Conv, RNN cells, hence every
            Dense/Conv2d THOR layer) in float16 with float32 outputs, the rest in float32; it is
            applied without ``mindspore.rewrite`` (which fails on a network it already rewrote,
            e.g. inside ``Model(amp_level="O1")``). THOR's statistics and inverses are float32 at
            every level. The model zoo's order (``Model(..., amp_level=...)`` built before
            :func:`ms_optim.thor` converts the network) works for ``"O2"``/``"O3"``; with
            ``"O1"`` build the Model after :func:`ms_optim.thor` (MindSpore's O1 rewrite replaces
            the classes of the network's Dense/Conv2d cells, which THOR then cannot convert).

        Args:
            model (Model): the model built by the user.
            network (Cell): the network (without loss); without `loss_fn`: the train cell.
            loss_fn (Cell): the loss. Default: ``None``.
            optimizer (Cell): the optimizer from :func:`ms_optim.thor`. Default: ``None``.
            metrics (Union[dict, set]): evaluation metrics. Default: ``None``.
            amp_level (str): ``"O0"``, ``"O1"``, ``"O2"``, ``"O3"`` or ``"auto"`` (see Note).
                Default: ``"O0"``.
            loss_scale_manager (Union[FixedLossScaleManager, DynamicLossScaleManager]): loss
                scaling (see Note). Default: ``None``.
            keep_batchnorm_fp32 (bool): with `amp_level` ``"O2"``/``"O3"``, keep BatchNorm in
                float32 (see Note); no effect at other levels. Default: ``False``.

        Returns:
            Model.

        Raises:
            TypeError: If `model` is not a ``mindspore.train.Model``.
            TypeError: If `network` is not a Cell.
            TypeError: If `optimizer` is not the optimizer returned by :func:`ms_optim.thor`.
            TypeError: If `keep_batchnorm_fp32` is not a bool.
            ValueError: If `amp_level` is not one of ``"O0"``, ``"O1"``, ``"O2"``, ``"O3"``,
                ``"auto"``.
            ValueError: If `loss_scale_manager` is neither a FixedLossScaleManager nor a
                DynamicLossScaleManager; if it drops overflow steps and the optimizer's
                `loss_scale` is not 1, or has ``drop_overflow_update=False`` and a scale other
                than the optimizer's `loss_scale`; or, without `loss_fn`,
                `network` is not an ``nn.TrainOneStepCell``, its optimizer is not `optimizer`,
                its static ``sens`` differs from the optimizer's `loss_scale`, or
                `loss_scale_manager`, `amp_level` or `keep_batchnorm_fp32` is not the default.

        Examples:
            >>> import numpy as np
            >>> import mindspore as ms
            >>> from mindspore import nn
            >>> from ms_optim import thor, ConvertModelUtils
            >>> net = nn.SequentialCell([nn.Dense(4, 3)])
            >>> opt = thor(net, ms.Tensor(0.1, ms.float32), ms.Tensor(0.03, ms.float32), 0.9,
            ...            frequency=2)
            >>> loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction='mean')
            >>> model = ms.train.Model(net, loss_fn=loss, optimizer=opt, metrics={'acc'})
            >>> model = ConvertModelUtils.convert_to_thor_model(model, net, loss, opt, metrics={'acc'})
            >>> type(model).__name__
            'ThorModel'
        """
        from .model import ThorModel, ThorTrainOneStepCell, ThorWrapTrainCell  # local: no cycle
        from .optimizer import ThorOptimizer
        if not isinstance(model, Model):
            raise TypeError("For 'convert_to_thor_model', the argument 'model' must be a "
                            f"mindspore.train.Model, but got {type(model).__name__}.")
        if not isinstance(network, nn.Cell):
            raise TypeError("For 'convert_to_thor_model', the argument 'network' must be Cell, "
                            f"but got {type(network).__name__}.")
        if not isinstance(optimizer, ThorOptimizer):
            raise TypeError("For 'convert_to_thor_model', the argument 'optimizer' must be the "
                            "optimizer returned by ms_optim.thor, but got "
                            f"{type(optimizer).__name__}.")
        check_bool("convert_to_thor_model", "keep_batchnorm_fp32", keep_batchnorm_fp32)
        if not isinstance(amp_level, str) or amp_level not in _AMP_LEVELS:
            raise ValueError("For 'convert_to_thor_model', the argument 'amp_level' must be one of "
                             f"{list(_AMP_LEVELS)}, but got {amp_level!r}.")
        if loss_fn is None:
            return ConvertModelUtils._convert_train_cell_model(
                model, network, optimizer, metrics, amp_level, loss_scale_manager,
                keep_batchnorm_fp32)
        sens, update_cell = 1.0, None
        if loss_scale_manager is not None:
            sens, update_cell = _check_loss_scale_manager(loss_scale_manager, optimizer)
        net_with_loss = _amp_network_with_loss(network, loss_fn, amp_level, keep_batchnorm_fp32)
        if update_cell is None:
            train_cell = ThorTrainOneStepCell(net_with_loss, optimizer, sens=sens)
        else:
            # overflow steps dropped: MindSpore's loss-scale train cell (it unscales the gradients
            # and calls the optimizer only without overflow), driven like the zoo's BERT cells
            train_cell = ThorWrapTrainCell(
                nn.TrainOneStepWithLossScaleCell(net_with_loss, optimizer, scale_sense=update_cell),
                optimizer)
        eval_network = nn.WithEvalCell(network, loss_fn, amp_level in ("O2", "O3", "auto"))
        return ThorModel(train_cell, eval_network=eval_network, metrics=metrics,
                         eval_indexes=[0, 1, 2])

    @staticmethod
    def _convert_train_cell_model(model, network, optimizer, metrics, amp_level,
                                  loss_scale_manager, keep_batchnorm_fp32):
        """`network` is the user's train cell (no `loss_fn`): drive it, keep the model's eval."""
        from .model import ThorModel, ThorTrainOneStepCell, ThorWrapTrainCell
        name = "convert_to_thor_model"
        if not isinstance(network, nn.TrainOneStepCell):
            raise ValueError(f"For '{name}', without 'loss_fn' the argument 'network' must be the "
                             "train cell (an nn.TrainOneStepCell or nn.TrainOneStepWithLossScaleCell "
                             f"subclass, e.g. the model zoo's BertTrainOneStepCell), but got "
                             f"{type(network).__name__}.")
        if loss_scale_manager is not None or amp_level != "O0" or keep_batchnorm_fp32:
            raise ValueError(f"For '{name}', with a train cell as 'network' (no 'loss_fn') the "
                             "cell carries its own loss scaling and precision: "
                             "'loss_scale_manager', 'amp_level' and 'keep_batchnorm_fp32' must "
                             "keep their defaults (None, 'O0', False).")
        if getattr(network, "optimizer", None) is not optimizer:
            raise ValueError(f"For '{name}', the optimizer of the train cell 'network' must be "
                             "the THOR optimizer given as 'optimizer'.")
        if isinstance(network, ThorTrainOneStepCell):
            train_cell = network
        else:
            train_cell = ThorWrapTrainCell(network, optimizer)
        eval_network = getattr(model, "_eval_network", None)
        eval_indexes = getattr(model, "_eval_indexes", None) if eval_network is not None else None
        if metrics is None:
            metrics = getattr(model, "_metrics", None)
        return ThorModel(train_cell, eval_network=eval_network, metrics=metrics,
                         eval_indexes=eval_indexes)
