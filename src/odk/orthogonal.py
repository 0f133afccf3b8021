"""The block-orthogonal map of ODK layers: free skew entries -> ``[0 | Q_1 ... Q_m]``, exactly.

Each ``b x b`` block is ``base @ cayley(A)`` with ``cayley(A) = (I + A)^-1 (I - A) = 2 M^-1 - I``,
``M = I + A`` and ``A`` skew-symmetric, so the only hard part is the inverse of ``M``: three ways
to it, chosen by ``ODK_INVERSE``, in ``odk.inverse``. All ``m*r`` blocks of a layer go through
one batched map, written into the weight's diagonal blocks in place.

The matrix products run in full fp32 even when the user enabled TF32, and the backward uses the
same ``M^-1`` as the forward, so the gradient is exact whichever inverse produced it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from odk.inverse import WarmStart, cayley_inverse


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
