"""The block-orthogonal map of ODK layers: free skew entries -> ``[0 | Q_1 ... Q_m]``, exactly.

Each ``b x b`` block is ``base @ cayley(A)`` with ``cayley(A) = (I + A)^-1 (I - A) = 2 M^-1 - I``,
``M = I + A`` and ``A`` skew-symmetric, so the only hard part is the inverse of ``M``. Three ways
to it, chosen by the environment variable ``ODK_INVERSE`` (read at every call):

- ``schur``: block elimination down to 64 x 64 LAPACK leaves, nearly all GEMMs; the CPU default.
  On a GPU it is bound by kernel launches: an ODK ResNet-18 step took 3.9x the dense one's on an
  H100, 2.1x with ``lu``.
- ``lu``: one batched ``torch.linalg.inv_ex``. On a GPU it is a long chain of small kernels:
  about 1.2 ms per 512 x 512 block on an H100, when its conv's forward and backward take 0.3 ms.
- ``newton``: Newton–Schulz ``X <- X + X (I - M X)``, GEMMs only, started from the layer's
  previous inverse (a ``WarmStart``) and checked before use; the default off the CPU.
- ``auto`` (the default): ``schur`` on the CPU, ``newton`` elsewhere.

The matrix products run in full fp32 even when the user enabled TF32, and the backward uses the
same ``M^-1`` as the forward, so the gradient is exact whichever inverse produced it.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import torch
from torch import Tensor

INVERSE_SETTINGS = ("auto", "newton", "lu", "schur")
# Blocks up to this size are inverted by LAPACK on the CPU and larger ones by Schur complements.
# That is faster than LAPACK's batched getri and avoids MKL's batched LU for n >= ~200, which after
# torch.set_num_threads() returns garbage pivots (pytorch/pytorch#142815).
_LEAF_SIZE = 64
# Newton–Schulz steps before the first residual check, and at most this many more after it.
_NEWTON_STEPS, _MAX_EXTRA_STEPS = 2, 4


def inverse_setting() -> str:
    """The validated value of ``ODK_INVERSE`` (``auto`` when unset or empty).

    Raises:
        ValueError: The variable holds anything else than ``auto``, ``newton``, ``lu``, ``schur``.
    """
    value = os.environ.get("ODK_INVERSE", "").strip().lower() or "auto"
    if value not in INVERSE_SETTINGS:
        raise ValueError(
            f"ODK_INVERSE={os.environ['ODK_INVERSE']!r} is not allowed; allowed: "
            "auto (schur on the CPU, newton elsewhere), newton, lu, schur"
        )
    return value


def default_inverse(device: torch.device) -> str:
    """What ``auto`` means on ``device``: ``schur`` on the CPU, ``newton`` elsewhere."""
    return "schur" if device.type == "cpu" else "newton"


def inverse_method(device: torch.device) -> str:
    """The inverse used on ``device``: ``ODK_INVERSE``, with ``auto`` resolved."""
    setting = inverse_setting()
    return default_inverse(device) if setting == "auto" else setting


@contextlib.contextmanager
def full_precision_matmul() -> Iterator[None]:
    """Full-precision fp32 matrix products inside (no TF32, no bf16), the user's setting after.

    TF32 rounds the map's products to 10 mantissa bits: ``W @ W.T == m * I`` held to about 3e-4
    instead of 3e-7 (an H100, 512 channels). Both of torch's APIs are set, so that they agree
    inside (torch checks that they do when the legacy one is read): the global
    ``float32_matmul_precision`` unless the user's per-backend settings (torch >= 2.9) leave it
    unreadable, and the per-backend ``fp32_precision`` of cuBLAS and oneDNN where torch has it.
    """
    backends = [torch.backends.cuda.matmul, getattr(torch.backends.mkldnn, "matmul", None)]
    backends = [b for b in backends if hasattr(b, "fp32_precision")]
    saved = [b.fp32_precision for b in backends]
    try:
        legacy = torch.get_float32_matmul_precision()
    except RuntimeError:  # "mix of the legacy and new APIs": the user set the per-backend API
        legacy = None
    if legacy is not None:
        torch.set_float32_matmul_precision("highest")
    for backend in backends:
        backend.fp32_precision = "ieee"
    try:
        yield
    finally:
        if legacy is not None:
            torch.set_float32_matmul_precision(legacy)
        for backend, value in zip(backends, saved, strict=True):
            backend.fp32_precision = value


def haar_orthogonal(count: int, size: int) -> Tensor:
    """``count`` Haar-distributed orthogonal ``size x size`` matrices from torch's global RNG."""
    q, r = torch.linalg.qr(torch.randn(count, size, size, dtype=torch.float64))
    # Q of a Gaussian's QR is Haar only once R's diagonal is made positive (Mezzadri, 2007).
    signs = torch.where(r.diagonal(dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(q.dtype)
    return (q * signs.unsqueeze(-2)).float()


class WarmStart:
    """One layer's last inverse ``(I + A)^-1``, where Newton–Schulz starts at the next step.

    A plain attribute of the layer, never in its ``state_dict``. The layer clears it when its
    tensors may have been replaced (``.to()``, dtype or device changes, ``load_state_dict``), and an
    inverse of another shape, dtype or device is never used.
    """

    def __init__(self) -> None:
        self.inverse: Tensor | None = None
        self.steps = _NEWTON_STEPS  # Newton–Schulz steps before the residual check

    def clear(self) -> None:
        """Forget the inverse: the next map starts cold (one LU)."""
        self.inverse = None

    def start(self, m: Tensor) -> Tensor | None:
        """The stored inverse if it fits ``m`` (shape, dtype, device), else None."""
        x = self.inverse
        if x is None or (x.shape, x.dtype, x.device) != (m.shape, m.dtype, m.device):
            return None
        return x


def _newton_tolerance(dtype: torch.dtype) -> float:
    """Largest Frobenius residual ``||I - M X||`` accepted before the last Newton–Schulz step.

    1e-3 in fp32: the last step squares the residual to <= 1e-6, and since ``||M^-1|| <= 1`` the
    blocks are then orthogonal to ~4e-6. Scaled with the square root of the precision's epsilon.
    """
    eps, eps32 = torch.finfo(dtype).eps, torch.finfo(torch.float32).eps
    return 1e-3 * math.sqrt(eps / eps32)


def _newton_steps(m: Tensor, x: Tensor, r: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """``steps`` Newton–Schulz steps from ``x`` (residual ``r = I - M x``); each squares ``r``."""
    eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
    for _ in range(steps):
        x = torch.baddbmm(x, x, r)  # X + X R
        r = torch.baddbmm(eye, m, x, alpha=-1)
    return x, r


def _residual(r: Tensor) -> float:
    """The largest Frobenius norm among the residuals ``r``: one host sync."""
    return r.square().sum(dim=(-2, -1)).amax().sqrt().item()


def _newton_inverse(m: Tensor, warm: WarmStart) -> Tensor | None:
    """``M^-1`` by Newton–Schulz from the warm start; None if cold or the residual check fails.

    The residual is checked after ``warm.steps`` steps; if it is below 1 but above the tolerance,
    the steps it needs (``||R^2|| <= ||R||^2``), at most ``_MAX_EXTRA_STEPS``, run and it is
    checked again. One last step follows the passed check. ``warm.steps`` follows what the
    residual asked for: one fewer when the check passed with the square of the tolerance.
    """
    x = warm.start(m)
    if x is None:
        return None
    tol, steps = _newton_tolerance(m.dtype), warm.steps
    eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
    x, r = _newton_steps(m, x, torch.baddbmm(eye, m, x, alpha=-1), steps)
    res = _residual(r)
    if tol < res < 1:
        extra = min(_MAX_EXTRA_STEPS, math.ceil(math.log2(math.log(tol) / math.log(res))))
        x, r = _newton_steps(m, x, r, extra)
        steps, res = steps + extra, _residual(r)
    if not res <= tol:  # NaN and inf included
        return None
    warm.steps = steps - 1 if steps > 0 and res <= tol**2 else steps
    return torch.baddbmm(x, x, r)  # residual R^2: at most tol^2


def _lu_inverse(m: Tensor) -> Tensor:
    """``M^-1`` by LU: one batched call, or one call per matrix on the CPU.

    MKL's batched LU returns garbage pivots for n >= ~200 after ``torch.set_num_threads()``
    (pytorch/pytorch#142815); its single-matrix LU does not.
    """
    if m.device.type == "cpu" and m.shape[-1] > _LEAF_SIZE:
        return torch.stack([torch.linalg.inv_ex(block)[0] for block in m])
    return torch.linalg.inv_ex(m)[0]  # no error check: I + skew is always invertible


def _schur_inverse(m: Tensor) -> Tensor:
    """``M^-1`` by block elimination; ``m`` is scratch.

    Every leading block and Schur complement of ``I + A`` has a symmetric part ``>= I``, so block
    elimination needs no pivoting and every inverse met on the way has norm ``<= 1``. The GEMMs
    write fresh contiguous tensors: ``out=`` into a quadrant view would make ``bmm`` fall back to
    one GEMM per matrix.
    """
    n = m.shape[-1]
    if n <= _LEAF_SIZE:
        return torch.linalg.inv_ex(m)[0]
    h = n // 2
    a11, a12, a21, a22 = m[:, :h, :h], m[:, :h, h:], m[:, h:, :h], m[:, h:, h:]
    inv11 = _schur_inverse(a11)
    t = torch.bmm(inv11, a12)  # (k, h, n-h)
    inv22 = _schur_inverse(a22.baddbmm_(a21, t, alpha=-1))  # of the Schur complement, in place
    u = torch.bmm(a21, inv11)  # (k, n-h, h)
    out = torch.empty_like(m)
    top_right = torch.bmm(t, inv22).neg_()
    out[:, :h, h:] = top_right
    out[:, h:, :h] = torch.bmm(inv22, u).neg_()
    out[:, :h, :h] = inv11.baddbmm_(top_right, u, alpha=-1)
    out[:, h:, h:] = inv22
    return out


def cayley_inverse(m: Tensor, warm: WarmStart | None = None) -> Tensor:
    """``(k, n, n)`` inverses of ``M = I + A``, ``A`` skew-symmetric, by ``ODK_INVERSE``'s method.

    Args:
        m: The matrices; scratch (the Schur recursion overwrites them).
        warm: Newton–Schulz's starting point, updated with the result; without one (or with an
            unusable one) ``newton`` falls back to LU.
    """
    method = inverse_method(m.device)
    if method == "schur":
        return _schur_inverse(m)
    if method == "lu" or warm is None:
        return _lu_inverse(m)
    x = _newton_inverse(m, warm)
    if x is None:
        x = _lu_inverse(m)
    warm.inverse = x
    return x


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

    The backward is written by hand so that it costs two GEMMs per block and no solve.
    """

    @staticmethod
    def forward(ctx, skew, base, upper, lower, m: int, r: int, lead: int, warm):
        k, b = base.shape[0], base.shape[-1]
        upper, lower = upper.expand(k, -1), lower.expand(k, -1)
        gen = skew.new_empty(k, b * b)
        gen.scatter_(1, upper, skew).scatter_(1, lower, -skew)  # A = U - U^T off the diagonal
        gen = gen.view(k, b, b)
        gen.diagonal(dim1=-2, dim2=-1).fill_(1.0)  # M = I + A
        with full_precision_matmul():
            inv = cayley_inverse(gen, warm)
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
        with torch.autocast(grad_w.device.type, enabled=False), full_precision_matmul():
            g = _diagonal_blocks(grad_w.to(x2.dtype).contiguous(), lead, m, r)
            if r > 1:
                g = g.permute(1, 3, 0, 2).reshape(k, b, b)
            # Q = 2X - base with X = base M^-1, so dL/dM = -2 X^T g M^-T.
            neg_grad_m = torch.bmm(torch.bmm(x2.mT, g), inv.mT).view(k, b * b)
            grad_skew = neg_grad_m.gather(1, lower).sub_(neg_grad_m.gather(1, upper))
        return grad_skew, None, None, None, None, None, None, None


def block_orthogonal_weight(
    skew: Tensor,
    base: Tensor,
    upper: Tensor,
    lower: Tensor,
    layout: tuple[int, int, int],
    warm: WarmStart | None = None,
) -> Tensor:
    """The nonzero columns ``[0_lead | Q_1 ... Q_m]`` of an ODK weight, ``(r*b, lead + m*r*b)``.

    All ``m*r`` blocks go through one batched map; block ``j`` is ``base[j] @ cayley(A_j)``.

    Args:
        skew: ``(m*r, b(b-1)/2)`` strictly-upper-triangular entries of the ``A_j``.
        base: ``(m*r, b, b)`` fixed orthogonal matrices.
        upper: Flat ``(b*b)`` indices of the strictly-upper-triangular entries, row-major.
        lower: The flat indices of their transposed positions.
        layout: ``(m, r, lead)``: matrices, blocks per matrix, zero columns on the left.
        warm: The layer's Newton–Schulz warm start (see ``cayley_inverse``).
    """
    return _BlockOrthogonalWeight.apply(skew, base, upper, lower, *layout, warm)
