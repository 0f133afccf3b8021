"""Speed of the ODK convolution against nn.Conv2d and a straightforward reference, side by side.

Every candidate of a case is timed in the same run, repeats interleaved (in rotating order) so
that a busy machine slows all of them alike, and the median is kept. Ratios are what is reported:
wall-clock numbers only mean something next to each other. glibc's malloc is told to keep freed
memory, as a caching allocator would, so that page faults do not drown the compute being compared.

    python benchmarks/layer.py                   # the measurement (~2 minutes on 2 CPU cores)
    python benchmarks/layer.py --system-malloc   # the same with glibc's default malloc
    python benchmarks/layer.py --quick           # a smoke run: small batches, few repeats
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from odk import ODKConv2d, resnet18
from timing import cpu_busy_fraction, keep_freed_memory, median_times


class ReferenceODKConv2d(nn.Module):
    """The method written down directly, sharing the parameters of an ``ODKConv2d``.

    Python loops over matrices and blocks, one Cayley solve per block, ``torch.block_diag``,
    concatenation with the zero block and a full-width ``F.conv2d``.
    """

    def __init__(self, layer: ODKConv2d) -> None:
        super().__init__()
        self.layer = layer

    def dense_weight(self) -> Tensor:
        """The ``(out, in, kh, kw)`` weight, assembled block by block."""
        layer, b = self.layer, self.layer.block_size
        rows, cols = torch.triu_indices(b, b, offset=1)
        eye = torch.eye(b)
        matrices = []
        for i in range(layer.num_matrices):
            blocks = []
            for s in range(layer.r):
                j = i * layer.r + s
                upper = torch.zeros(b, b).index_put((rows, cols), layer.skew[j])
                skew = upper - upper.T
                cayley = torch.linalg.solve(eye + skew, eye - skew)
                blocks.append(layer.base[j] @ cayley)
            matrices.append(torch.block_diag(*blocks))
        out = layer.out_channels
        zero_columns = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
        zero_columns -= layer.num_matrices * out
        w = torch.cat([torch.zeros(out, zero_columns), *matrices], dim=1)
        return w.view(out, layer.in_channels, *layer.kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in, H, W)`` -> ``(B, out, H', W')`` through a full-width convolution."""
        layer = self.layer
        return F.conv2d(x, self.dense_weight(), layer.bias, layer.stride, layer.padding)


def layer_case(num_matrices: int | str, batch: int) -> dict[str, Callable[[], object]]:
    """Forward+backward of a layer4-shaped conv (512->512, 3x3, 4x4 input), input grad included."""
    odk = ODKConv2d(512, 512, 3, padding=1, num_matrices=num_matrices)
    reference = ReferenceODKConv2d(odk)
    dense = nn.Conv2d(512, 512, 3, padding=1, bias=False)
    x = torch.randn(batch, 512, 4, 4, requires_grad=True)  # (B, C, H, W) of ResNet-18's layer4
    grad_y = torch.randn(batch, 512, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(odk(x), reference(x), rtol=1e-4, atol=1e-4)

    def step(module: nn.Module) -> Callable[[], object]:
        params = [x, *module.parameters()]
        return lambda: torch.autograd.grad(module(x), params, grad_y)

    return {"ODK": step(odk), "nn.Conv2d": step(dense), "reference": step(reference)}


def model_case(batch: int) -> dict[str, Callable[[], object]]:
    """One Adam training step of ResNet-18 with ODK stages 3 and 4 against the dense baseline."""
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))

    def step(model: nn.Module) -> Callable[[], object]:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

        return run

    return {"ODK": step(resnet18(odk_layers=(3, 4))), "dense": step(resnet18())}


def print_targets(results: dict[str, dict[str, float]], layer_batch: int, quick: bool) -> None:
    """The ratios the issue sets targets for, each with PASS or FAIL."""
    m1, mmax, model = results["layer m=1"], results["layer m=max (9)"], results["model train step"]
    targets = [
        ("m=1 layer: nn.Conv2d / ODK", m1["nn.Conv2d"] / m1["ODK"], ">=", 4.0),
        ("m=1 layer: reference / ODK", m1["reference"] / m1["ODK"], ">=", 4.0),
        ("m=max layer: ODK / nn.Conv2d", mmax["ODK"] / mmax["nn.Conv2d"], "<=", 1.3),
        ("model step: ODK / dense", model["ODK"] / model["dense"], "<=", 0.7),
    ]
    print(f"\n{'target':<32}{'ratio':>8}  {'goal':<8}result")
    if quick:
        print("(--quick: small batches, so the verdicts below are only a smoke test)")
    for name, ratio, op, goal in targets:
        ok = ratio >= goal if op == ">=" else ratio <= goal
        print(f"{name:<32}{ratio:>8.2f}  {op} {goal:<5}{'PASS' if ok else 'FAIL'}")
    conv = 3 * 2 * layer_batch * 4 * 4 * 512 * 512 * 9  # forward, input grad, weight grad
    cayley = 9 * 8 * 512**3  # per block: inverse 2b^3, base @ M^-1 2b^3, backward 2 GEMMs 4b^3
    print(
        f"note: at m=max the Cayley map costs {cayley / 1e9:.1f} GFLOP next to the conv's "
        f"{conv / 1e9:.1f}: ODK / nn.Conv2d = {1 + cayley / conv:.2f} at an equal FLOP rate"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small batches")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per candidate")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--system-malloc", action="store_true", help="keep glibc's malloc defaults (page faults)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = not args.system_malloc and keep_freed_memory()
    layer_batch = model_batch = 16 if args.quick else 128
    repeats = args.repeats or (2 if args.quick else 11)
    model_repeats = args.repeats or (2 if args.quick else 7)
    torch.manual_seed(0)
    busy = cpu_busy_fraction()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU", end="")
    print("" if busy is None else f", {busy:.0%} busy before the run")
    if busy is not None and busy > 0.15:  # OpenMP threads wait at every op for preempted peers
        print("warning: other work is running; the ratios of many-op code (ODK) suffer most")
    print("malloc: " + ("freed memory kept (no mmap, no trim)" if kept else "system defaults"))
    print(f"layer: 512->512 3x3, 4x4 input, batch {layer_batch}, forward+backward, r=1")
    print(f"model: ResNet-18 Adam step, batch {model_batch}, 32x32 inputs, odk_layers=(3, 4)")
    print(f"medians of {repeats} (layer) / {model_repeats} (model) interleaved repeats\n")
    print(f"{'case':<22}{'candidate':<12}{'median ms':>10}{'x ODK time':>12}")
    cases = [
        ("layer m=1", layer_case(1, layer_batch), repeats),
        ("layer m=max (9)", layer_case("max", layer_batch), repeats),
        ("model train step", model_case(model_batch), model_repeats),
    ]
    results = {}
    for case, candidates, n in cases:
        results[case] = times = median_times(candidates, n)
        for name, t in times.items():
            print(f"{case:<22}{name:<12}{t * 1e3:>10.1f}{t / times['ODK']:>12.2f}")
    print_targets(results, layer_batch, args.quick)


if __name__ == "__main__":
    main()
