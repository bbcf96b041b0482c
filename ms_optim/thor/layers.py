"""THOR layers: drop-in subclasses of the MindSpore layers that only *collect statistics*.

Each layer computes exactly what its parent computes (same primitives, same Parameters). When
its compile-time flag ``thor`` is True (a "refresh" step) it additionally stores, in
non-trainable Parameters, the minibatch statistics THOR needs:

* ``matrix_a``: the input factor; Dense/Conv2d: only its diagonal 128-blocks, shape
  :math:`(n_b, s, s)` (:func:`ms_optim.ops.kfac.input_covariance_blocks`, all THOR inverts);
  embedding: token frequencies (:func:`ms_optim.ops.kfac.embedding_input_statistic`); from the
  forward pass;
* ``matrix_g``: the output-gradient factor (Dense/Conv2d: its diagonal 128-blocks,
  :func:`ms_optim.ops.kfac.output_grad_covariance_blocks`; embedding: the full
  :func:`ms_optim.ops.kfac.output_grad_covariance`; loss scale left in, the optimizer removes
  it), from ``ops.InsertGradientOf`` on the layer output (before bias and activation);
* ``thor_t``: :math:`T`, the output locations per sample of that refresh.

Every forward also records ``thor_n`` (:math:`N`, the batch actually seen). When ``thor`` is
False nothing else is computed: a stale step costs a first-order step.

The statistics are float32 whatever the compute dtype (inputs, patches and output gradients are
cast to float32 before the covariances are formed; Conv2d's im2col runs in the compute dtype,
which is exact: each patch entry is one input element). They are not in the layer's Parameter
registry (``parameters_and_names()``), so checkpoints do not store them: the next refresh
recomputes them before anything reads them (the optimizer checkpoints the inverses). The flag is set by
:class:`ms_optim.thor.ThorTrainOneStepCell` (and :func:`ms_optim.thor.ConvertModelUtils`); the
turning of statistics into preconditioners is the optimizer's job (:func:`ms_optim.thor.thor`).
"""
import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from ..ops import kfac
from .blocks import EmbeddingBlock, KroneckerBlock, register_block

__all__ = ["DenseThor", "Conv2dThor", "EmbeddingThor", "EmbeddingLookupThor", "THOR_LAYERS"]


class _StatsMixin:
    """Statistic Parameters shared by all THOR layers."""

    def _init_stats(self, a_shape, g_shape, dims=None, groups=1):
        self.thor = True
        #: (d_in, d_out) of a Kronecker-factored layer whose statistics are diagonal blocks (per
        #: group of a grouped convolution)
        self.thor_dims = dims
        #: independent Kronecker factor pairs of the layer (the groups of a grouped convolution)
        self.thor_groups = groups
        #: cast the output to float32 (set by amp O1 in ConvertModelUtils on a float16 layer)
        self.thor_float32_output = False
        self._set_statistic("matrix_a", np.zeros(a_shape, np.float32))
        self._set_statistic("matrix_g", np.zeros(g_shape, np.float32))
        self._set_statistic("thor_t", np.float32(1.0))
        self._set_statistic("thor_n", np.float32(1.0))
        self.get_g = ops.InsertGradientOf(self._save_gradient)

    def _set_statistic(self, name, value):
        """A float32 statistic Parameter kept out of the cell's Parameter registry.

        It is an attribute (``layer.matrix_a``) and a free Parameter of the compiled graph (assign
        and read work in GRAPH and PYNATIVE), but ``parameters_and_names()`` does not list it, so
        ``save_checkpoint`` / ``ModelCheckpoint`` do not store it and ``load_param_into_net`` does
        not expect it: the next refresh recomputes it before anything reads it.
        """
        param = Parameter(Tensor(value, ms.float32), name=name, requires_grad=False)
        object.__setattr__(self, name, param)  # bypass Cell.__setattr__'s registration

    def _statistics(self):
        """``(attribute name, Parameter)`` of the unsaved statistics."""
        return tuple((k, getattr(self, k)) for k in ("matrix_a", "matrix_g", "thor_t", "thor_n"))

    def _store_g(self, dout_rows, n, t):
        """Store G = (N/T) D^T D, only its diagonal 128-blocks for Dense/Conv2d (loss scale left
        in; removed by the optimizer)."""
        d = ops.cast(dout_rows, ms.float32)
        if self.thor_dims is None:
            g = kfac.output_grad_covariance(d, n, t)
        else:
            g = kfac.output_grad_covariance_blocks(d, n, t, groups=self.thor_groups)
        g = ops.depend(g, ops.assign(self.thor_t, Tensor(float(t), ms.float32)))
        return ops.assign(self.matrix_g, g)


class DenseThor(nn.Dense, _StatsMixin):
    r"""Dense layer that collects THOR's Kronecker factors.

    .. math::

        A_b = \frac{1}{N} X_b^\top X_b,\qquad G_b = N\, D_b^\top D_b

    the diagonal 128-blocks of :math:`A = \frac{1}{N} X^\top X` and :math:`G = N D^\top D`, with
    :math:`X` the input rows (inputs of rank > 2 are flattened to rows, :math:`N` = rows),
    :math:`D` the loss-scaled gradient of the output (before bias and activation) and
    :math:`X_b`, :math:`D_b` their column groups :math:`[bs, (b+1)s)`, :math:`s = \min(d, 128)`
    (the last group zero-padded). ``matrix_a`` has shape :math:`(n_b, s, s)`.

    Args:
        in_channels (int): input width.
        out_channels (int): output width.
        weight_init (Union[Tensor, str, Initializer]): as :class:`mindspore.nn.Dense`.
            Default: ``'normal'``.
        bias_init (Union[Tensor, str, Initializer]): Default: ``'zeros'``.
        has_bias (bool): Default: ``True``.
        activation (Union[str, Cell, Primitive, None]): Default: ``None``.

    Inputs:
        - **x** (Tensor) - shape :math:`(*, in\_channels)`.

    Outputs:
        Tensor of shape :math:`(*, out\_channels)`, identical to :class:`mindspore.nn.Dense`.

    Raises:
        TypeError: If an argument has the wrong type (as :class:`mindspore.nn.Dense`).
        ValueError: If `in_channels` or `out_channels` is not positive (as :class:`mindspore.nn.Dense`).

    Supported Platforms:
        ``Ascend`` ``GPU`` ``CPU``

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from ms_optim import DenseThor
        >>> layer = DenseThor(3, 2)
        >>> layer(ms.Tensor(np.ones((4, 3), np.float32))).shape
        (4, 2)
        >>> layer.matrix_a.shape  # one diagonal block of A (3 <= 128)
        (1, 3, 3)
        >>> layer.matrix_a.asnumpy()[0, 0, 0]  # mean of x**2 over the batch
        1.0
    """

    def __init__(self, in_channels, out_channels, weight_init='normal', bias_init='zeros',
                 has_bias=True, activation=None):
        super().__init__(in_channels, out_channels, weight_init=weight_init, bias_init=bias_init,
                         has_bias=has_bias, activation=activation)
        self._init_stats(KroneckerBlock.block_shape(in_channels),
                         KroneckerBlock.block_shape(out_channels),
                         (in_channels, out_channels))

    def _save_gradient(self, dout):
        """Backward hook: store G from the output gradient; the gradient passes unchanged."""
        return ops.depend(dout, self._store_g(dout, dout.shape[0], 1))

    def construct(self, x):
        x_shape = x.shape
        if len(x_shape) != 2:
            x = ops.reshape(x, (-1, x_shape[-1]))
        n_rows = x.shape[0]
        x = ops.depend(x, ops.assign(self.thor_n, Tensor(float(n_rows), ms.float32)))
        if self.thor:
            a = kfac.input_covariance_blocks(ops.cast(ops.stop_gradient(x), ms.float32))
            x = ops.depend(x, ops.assign(self.matrix_a, a))
            x = self.matmul(x, self.weight)
            x = self.get_g(x)
        else:
            x = self.matmul(x, self.weight)
        if self.has_bias:
            x = self.bias_add(x, self.bias)
        if self.activation_flag:
            x = self.activation(x)
        if len(x_shape) != 2:
            x = ops.reshape(x, x_shape[:-1] + (x.shape[-1],))
        if self.thor_float32_output:
            x = ops.cast(x, ms.float32)
        return x


def _conv_pads(pad_mode, pad, kernel_size, stride, dilation, h, w):
    r"""``(top, bottom, left, right)`` zero padding of a ``mindspore.ops.Conv2D`` input of height
    `h` and width `w`: ``'pad'`` its explicit padding; ``'valid'`` none; ``'same'`` the total
    :math:`\max(0, (\lceil h/s\rceil - 1) s + d (k - 1) + 1 - h)`, its smaller half on top
    (left)."""
    if pad_mode == 'pad':
        return pad
    if pad_mode == 'valid':
        return (0, 0, 0, 0)
    need_h = max(0, ((h + stride[0] - 1) // stride[0] - 1) * stride[0]
                 + dilation[0] * (kernel_size[0] - 1) + 1 - h)
    need_w = max(0, ((w + stride[1] - 1) // stride[1] - 1) * stride[1]
                 + dilation[1] * (kernel_size[1] - 1) + 1 - w)
    return (need_h // 2, need_h - need_h // 2, need_w // 2, need_w - need_w // 2)


class Conv2dThor(nn.Conv2d, _StatsMixin):
    r"""Conv2d layer that collects THOR's Kronecker factors.

    .. math::

        A_b = \frac{1}{N T} P_b^\top P_b,\qquad G_b = \frac{N}{T} D_b^\top D_b,\qquad
        T = H_{out} W_{out}

    the diagonal 128-blocks of :math:`A = \frac{1}{NT} P^\top P` and
    :math:`G = \frac{N}{T} D^\top D` (:math:`P_b`, :math:`D_b`: column groups
    :math:`[bs, (b+1)s)`, :math:`s = \min(d, 128)`, the last one zero-padded).

    :math:`P` are the im2col patches of the input, taken with the layer's own ``pad_mode``,
    ``padding``, ``stride``, ``dilation`` and (possibly non-square) kernel, one row per sample and
    output location, columns ordered like the flattened weight :math:`(C_{out}, C_{in} k_h k_w)`;
    :math:`D` the loss-scaled output gradient (before the bias), one row per sample and location.

    Grouped convolutions (``group`` :math:`= g > 1`, depthwise included): output channels
    :math:`[j C_{out}/g, (j+1) C_{out}/g)` see only input channels
    :math:`[j C_{in}/g, (j+1) C_{in}/g)`, so each group :math:`j` is a layer of its own with
    factors :math:`A^{(j)}` (its :math:`(C_{in}/g) k_h k_w` patch columns) and :math:`G^{(j)}`
    (its :math:`C_{out}/g` output channels); ``matrix_a`` and ``matrix_g`` hold their diagonal
    blocks group after group, shape :math:`(g\, n_b, s, s)`.

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels.
        kernel_size (Union[int, tuple[int]]): kernel (non-square allowed).
        stride (Union[int, tuple[int]]): Default: ``1``.
        pad_mode (str): ``'same'``, ``'valid'`` or ``'pad'``. Default: ``'same'``.
        padding (Union[int, tuple[int]]): Default: ``0``.
        dilation (Union[int, tuple[int]]): Default: ``1``.
        group (int): :math:`g`, dividing `in_channels` and `out_channels` (as
            :class:`mindspore.nn.Conv2d`). Default: ``1``.
        has_bias (bool): Default: ``False``.
        weight_init (Union[Tensor, str, Initializer]): Default: ``'normal'``.
        bias_init (Union[Tensor, str, Initializer]): Default: ``'zeros'``.

    Inputs:
        - **x** (Tensor) - shape :math:`(N, C_{in}, H_{in}, W_{in})`.

    Outputs:
        Tensor, identical to :class:`mindspore.nn.Conv2d`.

    Raises:
        ValueError: If an argument is invalid (as :class:`mindspore.nn.Conv2d`, e.g. `group`
            not dividing the channels).

    Supported Platforms:
        ``Ascend`` ``GPU`` ``CPU``

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from ms_optim import Conv2dThor
        >>> layer = Conv2dThor(2, 4, (3, 1), pad_mode='valid')
        >>> layer(ms.Tensor(np.ones((1, 2, 5, 5), np.float32))).shape
        (1, 4, 3, 5)
        >>> layer.matrix_a.shape  # d_in = 2*3*1 = 6: one 6x6 diagonal block
        (1, 6, 6)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, pad_mode='same',
                 padding=0, dilation=1, group=1, has_bias=False, weight_init='normal',
                 bias_init='zeros'):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, pad_mode=pad_mode,
                         padding=padding, dilation=dilation, group=group, has_bias=has_bias,
                         weight_init=weight_init, bias_init=bias_init)
        kh, kw = self.kernel_size
        d_in = in_channels * kh * kw
        # per group: (C_in / g) k_h k_w patch columns (contiguous in P) and C_out / g outputs
        d_in_g, d_out_g = d_in // group, out_channels // group
        self._init_stats(KroneckerBlock.block_shape(d_in_g, group),
                         KroneckerBlock.block_shape(d_out_g, group),
                         (d_in_g, d_out_g), group)
        # explicit (top, bottom, left, right) padding of pad_mode 'pad'
        pad = self.padding
        self.thor_pad = (pad,) * 4 if isinstance(pad, int) else tuple(pad)

    def _save_gradient(self, dout):
        """Backward hook: store G from the output gradient; the gradient passes unchanged."""
        n, c, h, w = dout.shape
        rows = ops.reshape(ops.transpose(dout, (0, 2, 3, 1)), (n * h * w, c))
        return ops.depend(dout, self._store_g(rows, n, h * w))

    def construct(self, x):
        x = ops.depend(x, ops.assign(self.thor_n, Tensor(float(x.shape[0]), ms.float32)))
        if self.thor:
            # Patches in the compute dtype (x's: float16 under mixed precision; exact, each entry
            # is one input element), with the layer's own geometry; A is formed in float32. The
            # statistics are not differentiated (no backward through them).
            pads = _conv_pads(self.pad_mode, self.thor_pad, self.kernel_size, self.stride,
                              self.dilation, x.shape[2], x.shape[3])
            p = kfac.conv_patches(ops.stop_gradient(x), self.kernel_size, self.stride,
                                  self.dilation, pads)
            a = kfac.input_covariance_blocks(ops.cast(p, ms.float32), groups=self.thor_groups)
            x = ops.depend(x, ops.assign(self.matrix_a, a))
            out = self.conv2d(x, self.weight)
            out = self.get_g(out)
        else:
            out = self.conv2d(x, self.weight)
        if self.has_bias:
            out = self.bias_add(out, self.bias)
        if self.thor_float32_output:
            out = ops.cast(out, ms.float32)
        return out


class _EmbeddingStatsMixin(_StatsMixin):
    """Statistics of both embedding layers: token frequencies (forward), G (backward hook)."""

    def _save_gradient(self, dout):
        """Backward hook on the output, shape ``ids.shape + (E,)``: rows are (sample, id)."""
        n = dout.shape[0] if len(dout.shape) > 1 else 1
        rows = ops.reshape(dout, (-1, dout.shape[-1]))
        return ops.depend(dout, self._store_g(rows, n, rows.shape[0] // n))

    def _embedding_output(self, flat_ids, n, rows, out_shape):
        """Reshape the looked-up rows to the output; on refresh steps also store A and hook G."""
        if self.thor:
            a = kfac.embedding_input_statistic(flat_ids, self.vocab_size, n)
            rows = ops.depend(rows, ops.assign(self.matrix_a, a))
            out = self.get_g(ops.reshape(rows, out_shape))
        else:
            out = ops.reshape(rows, out_shape)
        return out


class EmbeddingThor(nn.Embedding, _EmbeddingStatsMixin):
    r"""Embedding layer that collects THOR's statistics.

    .. math::

        a = \frac{\mathrm{counts}}{N},\qquad G = \frac{N}{T} D^\top D

    with :math:`N` the first dimension of the ids, :math:`T` the ids per sample and :math:`D`
    the loss-scaled gradient of the looked-up rows.

    Args:
        vocab_size (int): rows of the table.
        embedding_size (int): columns of the table.
        use_one_hot (bool): as :class:`mindspore.nn.Embedding`. Default: ``False``.
        embedding_table (Union[Tensor, str, Initializer]): Default: ``'normal'``.
        dtype (mindspore.dtype): ids dtype. Default: ``mstype.int32``.
        padding_idx (int, None): Default: ``None``.

    Inputs:
        - **ids** (Tensor) - integer ids of any shape.

    Outputs:
        Tensor of shape ``ids.shape + (embedding_size,)``.

    Raises:
        TypeError: If an argument has the wrong type (as :class:`mindspore.nn.Embedding`).
        ValueError: If `vocab_size` or `embedding_size` is not positive (as :class:`mindspore.nn.Embedding`).

    Supported Platforms:
        ``Ascend`` ``GPU`` ``CPU``

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from ms_optim import EmbeddingThor
        >>> layer = EmbeddingThor(5, 3)
        >>> layer(ms.Tensor(np.array([[1, 1], [4, 0]], np.int32))).shape
        (2, 2, 3)
        >>> layer.matrix_a.asnumpy().tolist()
        [0.5, 1.0, 0.0, 0.0, 0.5]
    """

    def __init__(self, vocab_size, embedding_size, use_one_hot=False, embedding_table='normal',
                 dtype=ms.int32, padding_idx=None):
        super().__init__(vocab_size, embedding_size, use_one_hot=use_one_hot,
                         embedding_table=embedding_table, dtype=dtype, padding_idx=padding_idx)
        self._init_stats((vocab_size,), (embedding_size, embedding_size))

    def construct(self, ids):
        out_shape = ids.shape + (self.embedding_size,)
        flat_ids = ops.reshape(ids, (-1,))
        n = ids.shape[0] if len(ids.shape) > 0 else 1
        flat_ids = ops.depend(flat_ids, ops.assign(self.thor_n, Tensor(float(n), ms.float32)))
        if self.use_one_hot:
            one_hot_ids = self.one_hot(flat_ids, self.vocab_size, self.on_value, self.off_value)
            rows = self.array_mul(one_hot_ids, self.embedding_table)
        else:
            rows = self.gather(self.embedding_table, flat_ids, 0)
        return self._embedding_output(flat_ids, n, rows, out_shape)


class EmbeddingLookupThor(nn.EmbeddingLookup, _EmbeddingStatsMixin):
    r"""EmbeddingLookup layer that collects THOR's statistics (same rule as :class:`EmbeddingThor`).

    The lookup is a dense gather of the table (values identical to the parent's lookup); the
    table's gradient is therefore dense.

    Args:
        vocab_size (int): rows of the table.
        embedding_size (int): columns of the table.
        param_init (Union[Tensor, str, Initializer]): Default: ``'normal'``.
        target (str): as :class:`mindspore.nn.EmbeddingLookup`. Default: ``'CPU'``.
        slice_mode (str): Default: ``'batch_slice'``.
        manual_shapes (tuple): Default: ``None``.
        max_norm (Union[float, None]): must be ``None``. Default: ``None``.
        sparse (bool): Default: ``True``.
        vocab_cache_size (int): must be 0 (accepted for upstream compatibility). Default: ``0``.

    Inputs:
        - **indices** (Tensor) - integer ids.

    Outputs:
        Tensor of shape ``indices.shape + (embedding_size,)``.

    Raises:
        ValueError: If `max_norm` is not None or `vocab_cache_size` is not 0.

    Supported Platforms:
        ``Ascend`` ``GPU`` ``CPU``

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from ms_optim import EmbeddingLookupThor
        >>> layer = EmbeddingLookupThor(5, 3)
        >>> layer(ms.Tensor(np.array([[1, 2]], np.int32))).shape
        (1, 2, 3)
    """

    def __init__(self, vocab_size, embedding_size, param_init='normal', target='CPU',
                 slice_mode='batch_slice', manual_shapes=None, max_norm=None, sparse=True,
                 vocab_cache_size=0):
        if max_norm is not None:
            raise ValueError("For 'EmbeddingLookupThor', the argument 'max_norm' must be None, "
                             f"but got {max_norm}.")
        if vocab_cache_size != 0:
            raise ValueError("For 'EmbeddingLookupThor', the argument 'vocab_cache_size' must be "
                             f"0, but got {vocab_cache_size}.")
        super().__init__(vocab_size, embedding_size, param_init=param_init, target=target,
                         slice_mode=slice_mode, manual_shapes=manual_shapes, max_norm=None,
                         sparse=sparse)
        self.dense_gather = ops.Gather()
        self._init_stats((vocab_size,), (embedding_size, embedding_size))

    def construct(self, indices):
        out_shape = indices.shape + (self.embedding_size,)
        flat_ids = ops.reshape(indices, (-1,))
        n = indices.shape[0] if len(indices.shape) > 0 else 1
        flat_ids = ops.depend(flat_ids, ops.assign(self.thor_n, Tensor(float(n), ms.float32)))
        rows = self.dense_gather(self.embedding_table, flat_ids, 0)
        return self._embedding_output(flat_ids, n, rows, out_shape)


#: The built-in THOR layers (their curvature blocks: ms_optim.thor.blocks, registered below).
THOR_LAYERS = (DenseThor, Conv2dThor, EmbeddingThor, EmbeddingLookupThor)


for _layer, _block in ((DenseThor, KroneckerBlock), (Conv2dThor, KroneckerBlock),
                       (EmbeddingThor, EmbeddingBlock), (EmbeddingLookupThor, EmbeddingBlock)):
    register_block(_layer, _block)
