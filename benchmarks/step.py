"""Speed of one ResNet-18 training step, ODK against dense, and what it makes of a training run.

One Adam step (forward, cross-entropy, backward, optimizer step) of the dense baseline
`resnet18()` and of the default ODK model `resnet18(odk_layers=(3, 4))`, on random 32x32 inputs,
and one eval-mode forward without grad (what a validation batch costs). The ODK model is timed
once per inverse of its orthogonal map (`ODK_INVERSE` = schur, lu, newton; one model each, so
that Newton–Schulz warm-starts from its own previous step). Repeats of all candidates are
interleaved, in rotating order, so that a busy machine slows them alike, and the median is kept.
On CUDA every timed stretch holds several steps fenced by `torch.cuda.synchronize()`, batches 128
and 512 are measured, and both fp32 and bf16 autocast (bf16 as Lightning's `bf16-mixed`: fp32
weights and optimizer, autocast around forward and loss); on the CPU batch 128 and fp32 only
unless `--batch-size` and `--precision` ask for more. CUDA also gets the inference throughput
(eval mode, no grad, batch 1024; the map then runs once, so its inverse does not matter). The
projected run is `max_epochs` 20 of the default split, 45,000 training and 5,000 validation
images, from the measured step and eval times alone: data loading, augmentation and Lightning's
own overhead are not in it.

    python benchmarks/step.py                     # CUDA if there is one, else the CPU
    python benchmarks/step.py --device cpu        # the CPU, fp32 (about 5 minutes on 2 CPU cores)
    python benchmarks/step.py --batch-size 128 512 --precision both   # on any device
    python benchmarks/step.py --inverse lu newton # only these inverses
    python benchmarks/step.py --quick             # a smoke run: few steps (batch 16 on the CPU)
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from odk import count_parameters, resnet18
from odk.inverse import default_inverse
from timing import keep_freed_memory, median_times

EPOCHS, TRAIN_IMAGES, VAL_IMAGES = 20, 45_000, 5_000  # params.yaml's max_epochs, default split
INFERENCE_BATCH = 1024
INVERSES = ("schur", "lu", "newton")  # the values of ODK_INVERSE besides auto


def make_models(inverses: list[str], device: torch.device) -> dict[str, nn.Module]:
    """The dense ResNet-18 and one ODK ResNet-18 (stages 3 and 4) per inverse, named for it."""
    models = {"dense": resnet18().to(device)}
    for inverse in inverses:
        models[f"ODK {inverse}"] = resnet18(odk_layers=(3, 4)).to(device)
    return models


def with_inverse(name: str, run: Callable[[], None]) -> Callable[[], None]:
    """``run`` with ``ODK_INVERSE`` set to the inverse in the model's name (``ODK lu``: lu)."""
    inverse = name.split()[1] if name.startswith("ODK ") else "auto"

    def run_with() -> None:
        os.environ["ODK_INVERSE"] = inverse
        run()

    return run_with


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for `bf16`, nothing for `fp32`."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(
    model: nn.Module, x: Tensor, y: Tensor, device: torch.device, precision: str
) -> Callable[[], None]:
    """One Adam step of `model` on the batch `(x, y)`, as Lightning's training loop runs it."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    return run


def eval_forward(
    model: nn.Module, x: Tensor, device: torch.device, precision: str
) -> Callable[[], None]:
    """One forward of `model` without grad (call it with the model in eval mode)."""

    def run() -> None:
        with torch.no_grad(), autocast(device, precision):
            model(x)

    return run


def set_mode(models: dict[str, nn.Module], training: bool) -> None:
    """Train or eval mode for every model (eval mode lets ODK layers cache their weight)."""
    for model in models.values():
        model.train(training)


def measure(
    models: dict[str, nn.Module],
    device: torch.device,
    precision: str,
    batch: int,
    repeats: int,
    steps: int,
    warmup: int,
) -> dict[str, dict[str, float]]:
    """Seconds per training step (`train`) and per eval forward (`eval`) of each model."""
    x = torch.randn(batch, 3, 32, 32, device=device)  # (B, C, H, W)
    y = torch.randint(0, 10, (batch,), device=device)
    set_mode(models, True)
    steps_ = {n: with_inverse(n, train_step(m, x, y, device, precision)) for n, m in models.items()}
    train = median_times(steps_, repeats, steps, warmup, device)
    set_mode(models, False)
    forwards = {
        n: with_inverse(n, eval_forward(m, x, device, precision)) for n, m in models.items()
    }
    evals = median_times(forwards, repeats, steps, warmup, device)
    set_mode(models, True)
    return {name: {"train": train[name], "eval": evals[name]} for name in models}


def run_seconds(train_step_s: float, eval_s: float, batch: int) -> float:
    """Model compute of one run: EPOCHS of TRAIN_IMAGES trained and VAL_IMAGES evaluated."""
    return EPOCHS * (TRAIN_IMAGES * train_step_s + VAL_IMAGES * eval_s) / batch


def print_training(
    results: dict[str, dict[str, float]], params: dict[str, int], precision: str, batch: int
) -> None:
    """Per model: ms per step, images/s, time / dense time of the step, the projected run."""
    header = f"{'model':<12}{'params':>12}{'train ms':>10}{'train img/s':>13}"
    header += f"{'eval ms':>9}{'eval img/s':>12}{'x dense':>9}{'20-epoch run':>14}"
    print(f"\n{precision}: training step and eval forward, batch {batch}")
    print(header)
    dense = results["dense"]
    for name, r in results.items():
        run = run_seconds(r["train"], r["eval"], batch)
        print(
            f"{name:<12}{params[name]:>12,}{r['train'] * 1e3:>10.2f}{batch / r['train']:>13,.0f}"
            f"{r['eval'] * 1e3:>9.2f}{batch / r['eval']:>12,.0f}"
            f"{r['train'] / dense['train']:>9.2f}{run / 60:>10.1f} min"
        )


def print_ratios(
    ratios: dict[tuple[str, int], dict[str, dict[str, float]]], auto: str, batches: list[int]
) -> None:
    """ODK time / dense time of the training step and the eval forward, side by side."""
    print(f"\nODK / dense time, side by side (auto = {auto} on this device)")
    print(
        f"{'precision':<11}{'inverse':<15}" + "".join(f"{'batch ' + str(b):>24}" for b in batches)
    )
    print(" " * 26 + f"{'train':>8}{'eval':>8}{'run':>8}" * len(batches))
    for precision in dict.fromkeys(p for p, _ in ratios):
        for name in ratios[precision, batches[0]]:
            inverse = name.split()[1] + (" (auto)" if name.split()[1] == auto else "")
            cells = [ratios[precision, b][name] for b in batches]
            line = "".join(f"{c['train']:>8.2f}{c['eval']:>8.2f}{c['run']:>8.2f}" for c in cells)
            print(f"{precision:<11}{inverse:<15}{line}")


def odk_ratios(results: dict[str, dict[str, float]], batch: int) -> dict[str, dict[str, float]]:
    """Per ODK model: its step, eval and projected-run times over the dense model's."""
    dense = results["dense"]
    dense_run = run_seconds(dense["train"], dense["eval"], batch)
    return {
        name: {
            "train": r["train"] / dense["train"],
            "eval": r["eval"] / dense["eval"],
            "run": run_seconds(r["train"], r["eval"], batch) / dense_run,
        }
        for name, r in results.items()
        if name != "dense"
    }


def print_inference(
    models: dict[str, nn.Module],
    device: torch.device,
    precisions: list[str],
    repeats: int,
    steps: int,
    warmup: int,
) -> None:
    """Images per second of each model in eval mode without grad, at INFERENCE_BATCH."""
    x = torch.randn(INFERENCE_BATCH, 3, 32, 32, device=device)
    print(f"\ninference: eval mode, no grad, batch {INFERENCE_BATCH}")
    print(f"{'precision':<11}{'model':<12}{'ms/batch':>10}{'images/s':>12}{'x dense':>9}")
    set_mode(models, False)
    for precision in precisions:
        forwards = {
            n: with_inverse(n, eval_forward(m, x, device, precision)) for n, m in models.items()
        }
        times = median_times(forwards, repeats, steps, warmup, device)
        for name, t in times.items():
            ratio = t / times["dense"]
            print(
                f"{precision:<11}{name:<12}{t * 1e3:>10.2f}"
                f"{INFERENCE_BATCH / t:>12,.0f}{ratio:>9.2f}"
            )
    set_mode(models, True)


def pick_device(name: str) -> torch.device:
    """`auto`: CUDA when there is one, else the CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def print_header(device: torch.device, kept: bool, cudnn_benchmark: bool) -> None:
    """What ran: torch, the device and the settings that move its timings."""
    print(f"torch {torch.__version__}, ", end="")
    if device.type == "cuda":
        print(f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, ", end="")
        print(torch.cuda.get_device_name(device))
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        print(f"TF32: matmul {tf32[0]}, cuDNN conv {tf32[1]}; cudnn.benchmark {cudnn_benchmark}")
    else:
        print(f"CPU, {torch.get_num_threads()} threads")
        print("malloc: " + ("freed memory kept (no mmap, no trim)" if kept else "system defaults"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per model")
    parser.add_argument("--quick", action="store_true", help="smoke run: few steps")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "both"),
        default="auto",
        help="auto: fp32 and bf16 on CUDA, fp32 on the CPU",
    )
    parser.add_argument(
        "--batch-size", type=int, nargs="+", default=None, help="default: 128 512 on CUDA, 128 else"
    )
    parser.add_argument(
        "--inverse", choices=INVERSES, nargs="+", default=list(INVERSES), help="ODK_INVERSE values"
    )
    parser.add_argument(
        "--cudnn-benchmark", action="store_true", help="let cuDNN pick conv algorithms by timing"
    )
    args = parser.parse_args()
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    precisions = {"fp32": ["fp32"], "bf16": ["bf16"], "both": ["fp32", "bf16"]}.get(
        args.precision, ["fp32", "bf16"] if cuda else ["fp32"]
    )
    batches = args.batch_size or ([128, 512] if cuda else [16] if args.quick else [128])
    if cuda:  # several steps per timing: a synchronize costs about as much as a small kernel
        warmup, repeats, steps = (3, 3, 2) if args.quick else (10, 25, 5)
    else:
        warmup, repeats, steps = (1, 2, 1) if args.quick else (1, 5, 1)
    repeats = args.repeats or repeats
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    kept = not cuda and keep_freed_memory()
    torch.manual_seed(0)
    print_header(device, kept, args.cudnn_benchmark)
    print("models: ResNet-18, 10 classes, dense vs ODK stages 3 and 4 (m=1, r=1), Adam")
    print("ODK: one model per ODK_INVERSE value: " + ", ".join(args.inverse))
    print(f"medians of {repeats} interleaved repeats of {steps} step(s), after {warmup} warm-up")
    models = make_models(args.inverse, device)
    params = {name: count_parameters(m) for name, m in models.items()}
    ratios = {}
    for precision in precisions:
        for batch in batches:
            results = measure(models, device, precision, batch, repeats, steps, warmup)
            print_training(results, params, precision, batch)
            ratios[precision, batch] = odk_ratios(results, batch)
    run = f"{EPOCHS} epochs x ({TRAIN_IMAGES:,} train + {VAL_IMAGES:,} val images)"
    print(f"\n20-epoch run = {run}, model compute only (no data loading, no Lightning)")
    auto = default_inverse(device)
    print_ratios(ratios, auto, batches)
    if cuda:  # eval mode caches the weight: one ODK model is enough
        odk = f"ODK {auto}" if f"ODK {auto}" in models else f"ODK {args.inverse[0]}"
        kept = {name: models[name] for name in ("dense", odk)}
        print_inference(kept, device, precisions, repeats, steps, warmup)


if __name__ == "__main__":
    main()
