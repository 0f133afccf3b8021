"""ODK convolution: a conv whose 2-D weight is ``[0 | Q_1 ... Q_m]`` with block-orthogonal ``Q_i``.

A weight of shape ``(out, in, kh, kw)`` is read as a matrix ``W`` of shape ``out x (in*kh*kw)``
(PyTorch's own flattening order). Its first ``in*kh*kw - m*out`` columns are zero and the rest are
``m`` square matrices, each block-diagonal with ``r`` orthogonal ``b x b`` blocks (``b = out/r``),
so ``W @ W.T == m * I``. A block is a fixed Haar-random orthogonal base times the Cayley transform
of a trained skew-symmetric matrix that starts at zero: training starts from a random orthogonal
weight and stays exactly orthogonal whatever the optimizer does. All ``m*r`` blocks of a layer go
through one batched map, and the input channels that meet only zero columns are never convolved.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

# On the CPU, blocks up to this size are inverted by LAPACK and larger ones by Schur
# complements, i.e. GEMMs. That is faster than LAPACK's batched getri and avoids MKL's batched LU
# for n >= ~200, which after torch.set_num_threads() returns garbage pivots
# (pytorch/pytorch#142815). On a GPU one batched LU call is faster: a recursion there is bound by
# kernel launches (a ResNet-18 step with ODK stages 3 and 4 took twice as long on an H100).
_LEAF_SIZE = 64


def max_num_matrices(
    in_channels: int, out_channels: int, kernel_size: int | tuple[int, int]
) -> int:
    """The largest ``num_matrices`` a layer of this shape admits: ``(in*kh*kw) // out``.

    Returns:
        0 when ``in*kh*kw < out``: no ``out x out`` orthogonal matrix fits; the layer stays dense.
    """
    kh, kw = _pair(kernel_size)
    return in_channels * kh * kw // out_channels


def _haar_orthogonal(count: int, size: int) -> Tensor:
    """``count`` Haar-distributed orthogonal ``size x size`` matrices from torch's global RNG."""
    q, r = torch.linalg.qr(torch.randn(count, size, size, dtype=torch.float64))
    # Q of a Gaussian's QR is Haar only once R's diagonal is made positive (Mezzadri, 2007).
    signs = torch.where(r.diagonal(dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(q.dtype)
    return (q * signs.unsqueeze(-2)).float()


def _inverse(m: Tensor) -> Tensor:
    """Batched inverse of ``(k, n, n)`` matrices ``I + A``, ``A`` skew-symmetric; ``m`` is scratch.

    Every leading block and Schur complement of such a matrix has a symmetric part ``>= I``, so
    block elimination needs no pivoting and every inverse met on the way has norm ``<= 1``. The
    GEMMs write fresh contiguous tensors: ``out=`` into a quadrant view would make ``bmm`` fall
    back to one GEMM per matrix.
    """
    n = m.shape[-1]
    if n <= _LEAF_SIZE or m.device.type != "cpu":
        return torch.linalg.inv_ex(m)[0]  # no error check: such matrices are invertible
    h = n // 2
    a11, a12, a21, a22 = m[:, :h, :h], m[:, :h, h:], m[:, h:, :h], m[:, h:, h:]
    inv11 = _inverse(a11)
    t = torch.bmm(inv11, a12)  # (k, h, n-h)
    inv22 = _inverse(a22.baddbmm_(a21, t, alpha=-1))  # of the Schur complement, made in place
    u = torch.bmm(a21, inv11)  # (k, n-h, h)
    out = torch.empty_like(m)
    top_right = torch.bmm(t, inv22).neg_()
    out[:, :h, h:] = top_right
    out[:, h:, :h] = torch.bmm(inv22, u).neg_()
    out[:, :h, :h] = inv11.baddbmm_(top_right, u, alpha=-1)
    out[:, h:, h:] = inv22
    return out


def _diagonal_blocks(w: Tensor, lead: int, m: int, r: int) -> Tensor:
    """The ``m*r`` diagonal blocks of ``w = [0_lead | Q_1 ... Q_m]`` as a view.

    Returns:
        For ``r == 1`` a ``(m, b, b)`` strided view, which a batched GEMM reads in place;
        otherwise a ``(b, m, b, r)`` view whose ``[p, i, q, s]`` is row ``p``, column ``q`` of
        block ``s`` of ``Q_{i+1}`` (the layout of ``_as_diagonal_blocks``).
    """
    b = w.shape[0] // r
    if r == 1:
        return w[:, lead:].view(b, m, b).transpose(0, 1)
    return w[:, lead:].view(r, b, m, r, b).diagonal(dim1=0, dim2=3)


def _as_diagonal_blocks(blocks: Tensor, m: int, r: int) -> Tensor:
    """``(m*r, b, b)`` blocks viewed in the layout of ``_diagonal_blocks``."""
    b = blocks.shape[-1]
    return blocks if r == 1 else blocks.view(m, r, b, b).permute(2, 0, 3, 1)


class _BlockOrthogonalWeight(torch.autograd.Function):
    """Free skew entries ``(m*r, b(b-1)/2)`` -> the nonzero columns ``[0_lead | Q_1 ... Q_m]``.

    Block ``base @ cayley(A)`` with ``cayley(A) = (I + A)^-1 (I - A) = 2 (I + A)^-1 - I``. The
    backward is written by hand so that it costs two GEMMs per block and no solve.
    """

    @staticmethod
    def forward(ctx, skew, base, upper, lower, m: int, r: int, lead: int):
        k, b = base.shape[0], base.shape[-1]
        upper, lower = upper.expand(k, -1), lower.expand(k, -1)
        gen = skew.new_empty(k, b * b)
        gen.scatter_(1, upper, skew).scatter_(1, lower, -skew)  # A = U - U^T off the diagonal
        gen = gen.view(k, b, b)
        gen.diagonal(dim1=-2, dim2=-1).fill_(1.0)  # M = I + A
        inv = _inverse(gen)
        # 2 X = 2 base M^-1, into the memory of M (dead by now): fewer fresh pages to fault in.
        x2 = torch.baddbmm(inv.new_zeros(()), base, inv, beta=0, alpha=2, out=gen)
        w = base.new_empty(r * b, lead + m * r * b)
        w[:, :lead].zero_()
        if r > 1:
            w[:, lead:].zero_()
        # Q = base @ (2 M^-1 - I) = 2X - base, written straight into the diagonal blocks of w.
        out = _diagonal_blocks(w, lead, m, r)
        torch.sub(_as_diagonal_blocks(x2, m, r), _as_diagonal_blocks(base, m, r), out=out)
        ctx.save_for_backward(x2, inv, upper, lower)
        ctx.layout = (m, r, lead)
        return w

    @staticmethod
    def backward(ctx, grad_w):
        x2, inv, upper, lower = ctx.saved_tensors
        m, r, lead = ctx.layout
        k, b = x2.shape[0], x2.shape[-1]
        with torch.autocast(grad_w.device.type, enabled=False):
            g = _diagonal_blocks(grad_w.to(x2.dtype).contiguous(), lead, m, r)
            if r > 1:
                g = g.permute(1, 3, 0, 2).reshape(k, b, b)
            # Q = 2X - base with X = base M^-1, so dL/dM = -2 X^T g M^-T.
            neg_grad_m = torch.bmm(torch.bmm(x2.mT, g), inv.mT).view(k, b * b)
            grad_skew = neg_grad_m.gather(1, lower).sub_(neg_grad_m.gather(1, upper))
        return grad_skew, None, None, None, None, None, None


class ODKConv2d(nn.Module):
    """A 2-D convolution whose flattened weight is ``[0 | Q_1 ... Q_m]``, ``Q_i`` block-orthogonal.

    Args:
        in_channels: Input channels.
        out_channels: Output channels; each ``Q_i`` is ``out_channels x out_channels``.
        kernel_size: Kernel size, an int or ``(kh, kw)``.
        stride: As in ``nn.Conv2d``.
        padding: As in ``nn.Conv2d`` (an int, a pair, ``"same"`` or ``"valid"``).
        dilation: As in ``nn.Conv2d``.
        groups: Must be 1.
        bias: Whether to add a learnable bias (initialized like ``nn.Conv2d``'s).
        r: Number of orthogonal blocks on each ``Q_i``'s diagonal; must divide ``out_channels``.
        num_matrices: Number ``m`` of matrices ``Q_i``, in ``1..(in*kh*kw)//out``, or ``"max"``.

    Raises:
        ValueError: The shape admits no ODK weight, or ``r``, ``num_matrices`` or ``groups`` is out
            of range; the message names the layer, the value and what is allowed.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        r: int = 1,
        num_matrices: int | str = 1,
    ) -> None:
        super().__init__()
        kh, kw = self.kernel_size = _pair(kernel_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        m = self._check(groups, r, num_matrices)
        self.max_num_matrices = max_num_matrices(in_channels, out_channels, self.kernel_size)
        self.stride, self.dilation = _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.r, self.num_matrices, self.block_size = r, m, out_channels // r
        zero_columns = in_channels * kh * kw - m * out_channels
        # Input channels below first_channel meet only zero columns: forward slices them away.
        self.first_channel = zero_columns // (kh * kw)
        self._lead = zero_columns % (kh * kw)  # zero columns left inside the convolved channels
        b = self.block_size
        self.skew = nn.Parameter(torch.zeros(m * r, b * (b - 1) // 2))
        self.register_buffer("base", _haar_orthogonal(m * r, b))
        rows, cols = torch.triu_indices(b, b, offset=1)
        self.register_buffer("_upper", rows * b + cols, persistent=False)
        self.register_buffer("_lower", cols * b + rows, persistent=False)
        if bias:
            bound = (in_channels * kh * kw) ** -0.5
            self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)
        self._cache: tuple[tuple, Tensor] | None = None

    def _compute_active_weight(self) -> Tensor:
        """The weight of the convolved channels only, ``(out, in - first_channel, kh, kw)``."""
        dtype = torch.promote_types(self.skew.dtype, torch.float32)  # fp32 map under fp16/bf16
        with torch.autocast(self.skew.device.type, enabled=False):
            layout = (self._upper, self._lower, self.num_matrices, self.r, self._lead)
            w = _BlockOrthogonalWeight.apply(self.skew.to(dtype), self.base.to(dtype), *layout)
        shape = (self.out_channels, self.in_channels - self.first_channel, *self.kernel_size)
        return w.view(shape).to(self.skew.dtype)

    def _active_weight(self) -> Tensor:
        """The active weight; cached in eval mode without grad until ``skew`` or ``base`` change."""
        if self.training or torch.is_grad_enabled():
            return self._compute_active_weight()
        key = tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in (self.skew, self.base))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._compute_active_weight())
        return self._cache[1]

    @property
    def weight(self) -> Tensor:
        """The dense ``(out, in, kh, kw)`` weight (differentiable when grad is enabled)."""
        return F.pad(self._active_weight(), (0, 0, 0, 0, self.first_channel, 0))

    def forward(self, x: Tensor) -> Tensor:
        """Convolve ``x`` of shape ``(B, in, H, W)`` into ``(B, out, H', W')``."""
        w = self._active_weight()  # (out, in - first_channel, kh, kw)
        x = x[:, self.first_channel :]  # (B, in - first_channel, H, W)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation)

    def train(self, mode: bool = True) -> ODKConv2d:
        """Set training mode and drop the eval-mode weight cache."""
        self._cache = None
        return super().train(mode)

    def to_conv2d(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` with the same weight and bias, for export and inference."""
        args = (self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding)
        # skip_init: no random initialization, so the global RNG is left alone.
        conv = nn.utils.skip_init(nn.Conv2d, *args, self.dilation, bias=self.bias is not None)
        conv = conv.to(self.skew.device, self.skew.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.weight)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv.train(self.training)

    def _check(self, groups: int, r: int, num_matrices: int | str) -> int:
        """Validate the arguments early and return the resolved ``num_matrices``."""
        c_in, c_out, (kh, kw) = self.in_channels, self.out_channels, self.kernel_size
        layer = f"ODKConv2d({c_in}, {c_out}, kernel_size={(kh, kw)})"
        if not all(_is_int(v) and v >= 1 for v in (c_in, c_out, kh, kw)):
            raise ValueError(f"{layer}: channels and kernel sizes must be positive integers")
        if groups != 1:
            raise ValueError(f"{layer}: groups={groups!r} is not supported; allowed: groups=1")
        n = c_in * kh * kw
        if n < c_out:
            raise ValueError(
                f"{layer}: in_channels*kh*kw = {n} < out_channels = {c_out}, so no "
                f"{c_out}x{c_out} orthogonal matrix fits; an ODK layer needs "
                "in_channels*kh*kw >= out_channels (keep this layer a dense nn.Conv2d)"
            )
        if not _is_int(r) or r < 1 or c_out % r:
            divisors = [d for d in range(1, c_out + 1) if c_out % d == 0]
            raise ValueError(
                f"{layer}: r={r!r} must divide out_channels={c_out}; allowed: {divisors}"
            )
        most = n // c_out
        if num_matrices == "max":
            return most
        if not _is_int(num_matrices) or not 1 <= num_matrices <= most:
            raise ValueError(
                f"{layer}: num_matrices={num_matrices!r} is out of range; allowed: an integer in "
                f"1..{most} (in_channels*kh*kw // out_channels = {n} // {c_out}) or 'max'"
            )
        return num_matrices

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        s += f", stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        return s + f", r={self.r}, num_matrices={self.num_matrices}, block_size={self.block_size}"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def merge_odk_convs(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` in which every ``ODKConv2d`` is replaced by its ``to_conv2d()``.

    The copy holds plain convolutions only, ready for TorchScript or ONNX export.
    """
    if isinstance(module, ODKConv2d):
        return module.to_conv2d()
    merged = copy.deepcopy(module)
    for parent in list(merged.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ODKConv2d):
                setattr(parent, name, child.to_conv2d())
    return merged
