"""The inverse of ``M = I + A`` (``A`` skew-symmetric) that the Cayley transform needs, three ways.

``cayley(A) = (I + A)^-1 (I - A) = 2 M^-1 - I``, so the only hard part of the orthogonal map
(``odk.orthogonal``) is ``M^-1``. The method is chosen by the environment variable
``ODK_INVERSE`` (read at every call):

- ``schur``: block elimination down to 64 x 64 LAPACK leaves, nearly all GEMMs; the CPU default.
  On a GPU it is bound by kernel launches: an ODK ResNet-18 step took 3.9x the dense one's on an
  H100, 2.1x with ``lu``.
- ``lu``: one batched ``torch.linalg.inv_ex``. On a GPU it is a long chain of small kernels:
  about 1.2 ms per 512 x 512 block on an H100, when its conv's forward and backward take 0.3 ms.
- ``newton``: Newton–Schulz ``X <- X + X (I - M X)``, GEMMs only, started from the layer's
  previous inverse (a ``WarmStart``) and checked before use; the default off the CPU.
- ``auto`` (the default): ``schur`` on the CPU, ``newton`` elsewhere.
"""

from __future__ import annotations

import math
import os

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
