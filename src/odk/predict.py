"""`odk predict`: classify image files and folders with a trained model file.

Images of any size and mode are converted to RGB and resized to the 32x32 the network was
trained on (large ones decoded reduced and shrunk in strips, so memory stays bounded),
normalized with the mean/std stored in the model file, and sent through the model in batches.
A file that cannot be read becomes a per-file error; the others go on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image, UnidentifiedImageError
from torch import nn

from odk.cifar import IMAGE_SIZE
from odk.data import normalize

TOP_K = 5
_UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


@dataclass
class Prediction:
    """The result for one input file: a label and its probability, or an error."""

    path: str
    label: str | None = None
    probability: float | None = None
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The `--json` record of a classified file: path, label, probability, top-5."""
        top5 = [{"label": name, "probability": p} for name, p in self.top]
        return {
            "path": self.path,
            "label": self.label,
            "probability": self.probability,
            "top5": top5,
        }


def expand_paths(paths: Iterable[str | Path]) -> Iterator[tuple[Path, str | None]]:
    """Every file named or found (recursively, sorted) under a named folder.

    Hidden files and folders (`.DS_Store`, `.git`) inside folders are skipped.

    Yields:
        `(path, None)` for a file to read, `(path, reason)` for a path that cannot be used.
    """
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            yield path, None
        elif path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not files:
                yield path, "folder holds no files"
            yield from ((p, None) for p in files)
        else:
            yield path, "no such file or folder"


def read_image(path: str | Path, size: int = IMAGE_SIZE) -> torch.Tensor:
    """An image file as a uint8 tensor of shape (3, size, size).

    EXIF rotation is applied, transparency is composited onto white, 16-bit grayscale is scaled
    to 8 bits, and the image is resized (antialiased) to `size` x `size` without keeping its
    aspect ratio, as CIFAR images are square. A large image is decoded reduced where the
    format allows (JPEG at 1/2 to 1/8 scale) and shrunk strip by strip before any conversion,
    so memory stays near the size of the decoded file, not several copies of it.

    Raises:
        OSError, ValueError: The file is not a readable PNG/JPEG/... image.
    """
    with Image.open(path) as img:
        img.draft(img.mode, (_WORKING * size, _WORKING * size))  # JPEG: fewer pixels decoded
        img.load()  # decode now, so a truncated file fails here and not later
        turn = _EXIF_TURNS.get(img.getexif().get(ExifTags.Base.Orientation, 1))
        small = _shrink(img, size)
    small = small.transpose(turn) if turn is not None else small
    small = small.resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(small, dtype=np.uint8).copy()).permute(2, 0, 1)


_WORKING = 4  # reduce large images to >= 4x the target size, then resize (antialiased)
_STRIP_BYTES = 8 * 2**20  # rows of the source converted at once
_EXIF_TURNS = {  # EXIF orientation -> the transpose that shows the image upright (ImageOps')
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _shrink(img: Image.Image, size: int) -> Image.Image:
    """`img` as RGB, box-reduced by an integer factor to no less than `_WORKING * size`."""
    width, height = img.size
    factor = min(width, height) // (_WORKING * size)
    if factor < 2:
        return _to_rgb(img)
    rows = max(1, _STRIP_BYTES // (width * 4 * factor)) * factor  # a multiple of the factor
    out = Image.new("RGB", (-(-width // factor), -(-height // factor)))
    for top in range(0, height, rows):
        strip = _to_rgb(img.crop((0, top, width, min(height, top + rows))))
        out.paste(strip.reduce(factor), (0, top // factor))
    return out


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB pixels: 16-bit grayscale scaled to 8 bits, transparency composited onto white."""
    if img.mode.startswith("I"):  # 16-bit grayscale PNG: convert("RGB") would clip at 255
        img = Image.fromarray((np.asarray(img) / 257).round().clip(0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "P", "PA"):
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
    return img.convert("RGB")


@torch.inference_mode()
def classify(
    model: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Softmax probabilities of a uint8 batch (B, 3, H, W), shape (B, num_classes)."""
    logits = model(normalize(images, mean, std))  # (B, num_classes)
    return torch.softmax(logits.double(), dim=1).float()


def predict_files(
    model: nn.Module, meta: dict[str, Any], paths: Iterable[str | Path], batch_size: int = 64
) -> Iterator[Prediction]:
    """Classify every file under `paths`, in batches, yielding results in input order.

    Args:
        model: The network in eval mode (from `odk.checkpoint.load_model`).
        meta: The model file's metadata: `classes`, `mean`, `std`.
        paths: Files and folders.
        batch_size: Images sent through the model at once.
    """
    pending: list[Prediction] = []  # results held until their batch is classified
    batch: list[torch.Tensor] = []
    for path, reason in expand_paths(paths):
        if reason is None:
            try:
                batch.append(read_image(path))
            except UnidentifiedImageError:
                reason = "not an image (no format Pillow reads: PNG, JPEG, ...)"
            except _UNREADABLE as exc:
                reason = f"unreadable image ({type(exc).__name__}: {_first_line(exc)})"
        pending.append(Prediction(str(path), error=reason))
        if len(batch) == batch_size:
            yield from _finish(model, meta, pending, batch)
            pending, batch = [], []
    yield from _finish(model, meta, pending, batch)


def _finish(
    model: nn.Module, meta: dict[str, Any], pending: list[Prediction], batch: list[torch.Tensor]
) -> list[Prediction]:
    """Fill in the pending (non-error) results with the batch's top-k predictions."""
    if batch:
        classes = meta["classes"]
        probs = classify(model, torch.stack(batch), meta["mean"], meta["std"])
        top_p, top_i = probs.topk(min(TOP_K, len(classes)), dim=1)
        rows = iter(zip(top_p.tolist(), top_i.tolist(), strict=True))
        for result in (r for r in pending if r.error is None):
            ps, idx = next(rows)
            result.top = [(classes[i], round(p, 6)) for p, i in zip(ps, idx, strict=True)]
            result.label, result.probability = result.top[0]
    return pending


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "no details"
