"""`odk predict` on a ResNet-18 with ODK stages 3-4 trained here on four colour classes.

The images are flat colours plus noise, so a few Adam steps teach the network the classes;
the files are written in several formats, sizes and modes to exercise the reading path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import odk
from odk.checkpoint import load_model, save_model
from odk.cli import main
from odk.data import normalize
from odk.predict import predict_files, read_image

CLASSES = ["red", "green", "blue", "yellow"]  # four: top-5 is cut to top-4
COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 220, 20)]
ARCH = {"baseline_name": "resnet18", "num_classes": 4, "odk_layers": (3, 4), "num_matrices": 1}
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def colour_images(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 3, 32, 32) of the class colours plus noise, and their labels."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(CLASSES)).repeat(per_class)
    colours = torch.tensor(COLOURS, dtype=torch.float32)[labels].view(-1, 3, 1, 1)
    noise = torch.randn(len(labels), 3, 32, 32, generator=gen) * 20
    return (colours + noise).clamp(0, 255).to(torch.uint8), labels


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model file of a ResNet-18 (ODK stages 3 and 4) after 3 Adam steps on colours."""
    torch.manual_seed(0)
    model = odk.build_model(**ARCH)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    images, labels = colour_images(per_class=2, seed=0)
    batch = normalize(images, MEAN, STD)
    for _ in range(3):  # a step costs seconds on a CPU; 3 are enough for flat colours
        loss = F.cross_entropy(model(batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # Batch-norm statistics of the final weights (momentum None: a plain average over one
    # pass), since 3 steps of running averages would still mostly hold the initial ones.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model(batch)
    path = tmp_path_factory.mktemp("model") / "odk.ckpt"
    return save_model(path, model.eval(), ARCH, CLASSES, MEAN, STD, extra={"epoch": 0})


@pytest.fixture(scope="module")
def loaded(model_file: Path) -> tuple[torch.nn.Module, dict]:
    """The model file's network and metadata, loaded once."""
    return load_model(model_file)


def _save(path: Path, colour: tuple[int, int, int], size=(32, 32), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    pixels = np.clip(np.array(colour) + rng.normal(0, 10, (size[1], size[0], 3)), 0, 255)
    img = Image.fromarray(pixels.astype(np.uint8))
    img = img.convert("RGBA") if mode == "RGBA" else img.convert(mode)
    img.save(path)
    return path


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """One image per class: PNG and JPEG, small and large, RGB, RGBA and palette."""
    folder = tmp_path / "images"
    _save(folder / "a_red.png", COLOURS[0])
    _save(folder / "b_green.jpg", COLOURS[1], size=(300, 200))
    _save(folder / "nested" / "c_blue.png", COLOURS[2], size=(17, 45), mode="RGBA")
    _save(folder / "nested" / "d_yellow.png", COLOURS[3], size=(64, 64), mode="P")
    return folder


def test_model_learned_the_colours(loaded: tuple[torch.nn.Module, dict]) -> None:
    model, meta = loaded
    images, labels = colour_images(per_class=5, seed=1)  # unseen noise
    with torch.no_grad():
        preds = model(normalize(images, meta["mean"], meta["std"])).argmax(1)
    assert (preds == labels).float().mean() >= 0.95


def test_predict_prints_label_and_probability(
    model_file: Path, image_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", "--model", str(model_file), str(image_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    paths = [line.split(": ")[0] for line in lines]
    assert paths == sorted(str(p) for p in image_dir.rglob("*.*"))  # recursive, sorted
    for line, name in zip(lines, ["red", "green", "blue", "yellow"], strict=True):
        label, percent = line.split(": ")[1].split(" (")
        assert label == name
        assert 25 < float(percent.rstrip("%)")) <= 100


def test_predict_json_lists_top_classes(
    model_file: Path, image_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [str(image_dir / "a_red.png"), str(image_dir / "nested")]
    assert main(["predict", "--model", str(model_file), "--json", *files]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [Path(r["path"]).name for r in records] == ["a_red.png", "c_blue.png", "d_yellow.png"]
    for record in records:
        assert set(record) == {"path", "label", "probability", "top5"}
        probs = [t["probability"] for t in record["top5"]]
        assert len(record["top5"]) == len(CLASSES)  # min(5, num_classes)
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-4)
        assert record["top5"][0] == {"label": record["label"], "probability": record["probability"]}


@pytest.mark.parametrize("batch_size", [2, 3])
def test_batch_size_does_not_change_predictions(
    loaded: tuple[torch.nn.Module, dict], image_dir: Path, batch_size: int
) -> None:
    model, meta = loaded
    one_by_one = list(predict_files(model, meta, [image_dir], batch_size=1))
    batched = list(predict_files(model, meta, [image_dir], batch_size=batch_size))
    assert [r.path for r in batched] == [r.path for r in one_by_one]
    for a, b in zip(batched, one_by_one, strict=True):
        assert a.label == b.label and a.probability == pytest.approx(b.probability, abs=1e-5)


@pytest.mark.parametrize(
    ("name", "size", "mode"),
    [
        ("rgb.png", (32, 32), "RGB"),
        ("big.jpg", (640, 480), "RGB"),
        ("tiny.png", (5, 3), "RGB"),
        ("gray.png", (40, 40), "L"),
        ("palette.png", (50, 20), "P"),
        ("alpha.png", (33, 31), "RGBA"),
        ("cmyk.jpg", (48, 48), "CMYK"),
    ],
)
def test_read_image_gives_32x32_rgb(tmp_path: Path, name: str, size: tuple, mode: str) -> None:
    colour = (200, 200, 200) if mode == "L" else (200, 40, 90)
    image = read_image(_save(tmp_path / name, colour, size=size, mode=mode))
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    mean = image.float().mean(dim=(1, 2))
    torch.testing.assert_close(mean, torch.tensor(colour, dtype=torch.float32), atol=12, rtol=0)


def test_read_image_scales_16_bit_grayscale(tmp_path: Path) -> None:
    Image.fromarray(np.full((40, 30), 257 * 120, dtype=np.uint16)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    assert (read_image(tmp_path / "g16.png") == 120).all()


def test_unreadable_files_fail_alone(
    model_file: Path, image_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (image_dir / "notes.txt").write_text("not an image")
    corrupt = image_dir / "nested" / "broken.png"
    corrupt.write_bytes((image_dir / "a_red.png").read_bytes()[:60])  # truncated PNG
    (image_dir / ".DS_Store").write_bytes(b"\0\1")  # hidden: skipped
    missing, empty = image_dir / "missing.png", image_dir.parent / "empty"
    empty.mkdir()
    argv = ["predict", "--model", str(model_file), str(image_dir), str(missing), str(empty)]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 4  # the four good images are still classified
    assert err.splitlines() == [
        f"error: {corrupt}: unreadable image (OSError: image file is truncated)",
        f"error: {image_dir / 'notes.txt'}: not an image (no format Pillow reads: PNG, JPEG, ...)",
        f"error: {missing}: no such file or folder",
        f"error: {empty}: folder holds no files",
    ]


@pytest.mark.parametrize("size", [(120, 60), (1200, 600)])  # read whole / shrunk in strips
def test_read_image_turns_by_exif_orientation(tmp_path: Path, size: tuple[int, int]) -> None:
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    pixels[:, : size[0] // 2] = (220, 30, 30)  # left half red, right half blue
    pixels[:, size[0] // 2 :] = (30, 30, 220)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / "turned.jpg", exif=exif.tobytes(), quality=95)
    image = read_image(tmp_path / "turned.jpg").float()
    top, bottom = image[:, :12].mean(dim=(1, 2)), image[:, 20:].mean(dim=(1, 2))
    assert top[0] > 180 > top[2] and bottom[2] > 180 > bottom[0]  # the left half is now on top


MEMORY_PROBE = """
import resource, sys
from odk.predict import read_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
image = read_image(sys.argv[1])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
colour = [round(float(v)) for v in image.float().mean((1, 2))]
print((after - before) * 1024, tuple(image.shape), colour)
"""


@pytest.mark.slow
def test_a_large_image_is_read_in_bounded_memory(tmp_path: Path) -> None:
    side = 5000
    pixels = np.zeros((side, side, 4), dtype=np.uint8)
    pixels[..., 0], pixels[..., 2], pixels[..., 3] = 200, 90, 255
    Image.fromarray(pixels, "RGBA").save(tmp_path / "large.png")  # compresses to a few kB
    del pixels
    env = {**os.environ, "PYTHONPATH": str(Path(odk.__file__).parents[1])}  # this odk
    probe = [sys.executable, "-c", MEMORY_PROBE, str(tmp_path / "large.png")]
    out = subprocess.run(probe, capture_output=True, text=True, env=env, check=True).stdout
    peak = int(out.split()[0])
    decoded = side * side * 4  # what Pillow holds once the PNG is decoded
    assert peak < 2 * decoded, f"{peak / 2**20:.0f} MB for a {decoded / 2**20:.0f} MB image"
    assert "(3, 32, 32) [200, 0, 90]" in out
