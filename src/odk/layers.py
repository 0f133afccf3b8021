"""ODK convolution: a conv whose 2-D weight is ``[0 | Q_1 ... Q_m]`` with block-orthogonal ``Q_i``.

A weight of shape ``(out, in, kh, kw)`` is read as a matrix ``W`` of shape ``out x (in*kh*kw)``
(PyTorch's own flattening order). Its first ``in*kh*kw - m*out`` columns are zero and the rest are
``m`` square matrices, each block-diagonal with ``r`` orthogonal ``b x b`` blocks (``b = out/r``),
so ``W @ W.T == m * I``. A block is a fixed Haar-random orthogonal base times the Cayley transform
of a trained skew-symmetric matrix that starts at zero: training starts from a random orthogonal
weight and stays exactly orthogonal whatever the optimizer does. All ``m*r`` blocks of a layer go
through one batched map (``odk.orthogonal``, its inverses in ``odk.inverse``), and the input
channels that meet only zero columns are never convolved.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from odk.architecture import is_int
from odk.inverse import WarmStart, inverse_setting
from odk.orthogonal import block_orthogonal_weight, haar_orthogonal


def max_num_matrices(
    in_channels: int, out_channels: int, kernel_size: int | tuple[int, int]
) -> int:
    """The largest ``num_matrices`` a layer of this shape admits: ``(in*kh*kw) // out``.

    Returns:
        0 when ``in*kh*kw < out``: no ``out x out`` orthogonal matrix fits; the layer stays dense.
    """
    kh, kw = _pair(kernel_size)
    return in_channels * kh * kw // out_channels


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
            of range, or ``ODK_INVERSE`` names no inverse; the message names the layer or the
            setting, the value and what is allowed.
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
        inverse_setting()  # a bad ODK_INVERSE fails here, not at the first forward
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
        self.register_buffer("base", haar_orthogonal(m * r, b))
        rows, cols = torch.triu_indices(b, b, offset=1)
        self.register_buffer("_upper", rows * b + cols, persistent=False)
        self.register_buffer("_lower", cols * b + rows, persistent=False)
        if bias:
            bound = (in_channels * kh * kw) ** -0.5
            self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)
        self._cache: tuple[tuple, Tensor] | None = None
        self._warm = WarmStart()  # the last inverse, for Newton–Schulz; not in the state_dict

    def _compute_active_weight(self) -> Tensor:
        """The weight of the convolved channels only, ``(out, in - first_channel, kh, kw)``."""
        dtype = torch.promote_types(self.skew.dtype, torch.float32)  # fp32 map under fp16/bf16
        with torch.autocast(self.skew.device.type, enabled=False):
            skew, base = self.skew.to(dtype), self.base.to(dtype)
            layout = (self.num_matrices, self.r, self._lead)
            w = block_orthogonal_weight(skew, base, self._upper, self._lower, layout, self._warm)
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

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> ODKConv2d:
        """``.to()``, ``.cuda()``, ``.double()``...: tensors may move, so the map starts cold."""
        self._warm.clear()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        """Loading new parameters (a resumed run, a checkpoint) starts the map cold."""
        self._warm.clear()
        super()._load_from_state_dict(*args, **kwargs)

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
        if not all(is_int(v) and v >= 1 for v in (c_in, c_out, kh, kw)):
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
        if not is_int(r) or r < 1 or c_out % r:
            divisors = [d for d in range(1, c_out + 1) if c_out % d == 0]
            raise ValueError(
                f"{layer}: r={r!r} must divide out_channels={c_out}; allowed: {divisors}"
            )
        most = n // c_out
        if num_matrices == "max":
            return most
        if not is_int(num_matrices) or not 1 <= num_matrices <= most:
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
