"""ODKConv2d: weight structure, forward, gradients, caching, precision, conversion, errors."""

import ast
import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import odk.layers
from odk.layers import ODKConv2d, max_num_matrices, merge_odk_convs

# (in_channels, out_channels, stride): small ones, then ResNet-18's layer3 and layer4 shapes.
SHAPES = [(16, 16, 1), (16, 32, 2), (128, 256, 2), (256, 256, 1), (256, 512, 2), (512, 512, 1)]


def matrix(layer: ODKConv2d) -> torch.Tensor:
    """The weight as the 2-D matrix W, out x (in*kh*kw)."""
    return layer.weight.reshape(layer.out_channels, -1)


def blocks(layer: ODKConv2d) -> torch.Tensor:
    """The m*r orthogonal blocks read back from the dense weight, (m, r, b, b)."""
    m, r, b = layer.num_matrices, layer.r, layer.block_size
    w = matrix(layer)[:, columns(layer) - m * layer.out_channels :]
    return w.reshape(r, b, m, r, b).diagonal(dim1=0, dim2=3).permute(1, 3, 0, 2)


def columns(layer: ODKConv2d) -> int:
    return layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]


def reference_weight(layer: ODKConv2d) -> torch.Tensor:
    """The method written down directly: a Cayley solve per block, block_diag, the zero block."""
    b, dtype = layer.block_size, layer.skew.dtype
    rows, cols = torch.triu_indices(b, b, offset=1)
    eye = torch.eye(b, dtype=dtype)
    matrices = []
    for i in range(layer.num_matrices):
        qs = []
        for s in range(layer.r):
            j = i * layer.r + s
            a = torch.zeros(b, b, dtype=dtype).index_put((rows, cols), layer.skew[j])
            qs.append(layer.base[j] @ torch.linalg.solve(eye + a - a.T, eye - a + a.T))
        matrices.append(torch.block_diag(*qs))
    zeros = torch.zeros(layer.out_channels, columns(layer) - len(matrices) * layer.out_channels)
    w = torch.cat([zeros.to(dtype), *matrices], dim=1)
    return w.view(layer.out_channels, layer.in_channels, *layer.kernel_size)


def perturb(layer: ODKConv2d, std: float = 0.1) -> ODKConv2d:
    """Move the skew parameters away from zero so that the Cayley map is exercised."""
    with torch.no_grad():
        layer.skew.normal_(std=std)
    return layer


@pytest.mark.parametrize("num_matrices", [1, "max"])
@pytest.mark.parametrize("r", [1, 2, 8])
@pytest.mark.parametrize(("in_channels", "out_channels", "stride"), SHAPES)
def test_weight_is_block_orthogonal(in_channels, out_channels, stride, r, num_matrices):
    torch.manual_seed(0)
    layer = perturb(
        ODKConv2d(in_channels, out_channels, 3, stride, 1, r=r, num_matrices=num_matrices)
    )
    m, b = layer.num_matrices, out_channels // r
    assert m == (in_channels * 9 // out_channels if num_matrices == "max" else 1)
    assert (layer.max_num_matrices, layer.block_size, layer.r) == (
        in_channels * 9 // out_channels,
        b,
        r,
    )
    w = matrix(layer)
    assert layer.weight.shape == (out_channels, in_channels, 3, 3)
    eye = torch.eye(out_channels)
    torch.testing.assert_close(w @ w.T, m * eye, rtol=0, atol=1e-5)
    assert torch.count_nonzero(w[:, : in_channels * 9 - m * out_channels]) == 0
    tail = w[:, in_channels * 9 - m * out_channels :].reshape(r, b, m, r, b)
    off_diagonal = ~torch.eye(r, dtype=torch.bool).view(r, 1, 1, r, 1).expand_as(tail)
    assert torch.count_nonzero(tail[off_diagonal]) == 0
    q = blocks(layer)
    torch.testing.assert_close(q @ q.mT, torch.eye(b).expand_as(q), rtol=0, atol=1e-5)
    assert sum(p.numel() for p in layer.parameters()) == m * r * b * (b - 1) // 2


@pytest.mark.parametrize("inverse", ["schur", "lu"])
@pytest.mark.parametrize(("in_channels", "out_channels", "b"), [(24, 160, 80), (64, 260, 130)])
def test_map_matches_a_cayley_solve_per_block_in_float64(
    monkeypatch, in_channels, out_channels, b, inverse
):
    # Blocks above 64 go through the Schur-complement inverse: odd halves included (130 -> 65).
    monkeypatch.setenv("ODK_INVERSE", inverse)
    torch.manual_seed(0)
    r = out_channels // b
    layer = perturb(ODKConv2d(in_channels, out_channels, 3, r=r, num_matrices="max"), 0.3).double()
    torch.testing.assert_close(layer.weight, reference_weight(layer), rtol=0, atol=1e-12)
    g = torch.randn(out_channels, in_channels, 3, 3, dtype=torch.float64)
    grad = torch.autograd.grad(layer.weight, layer.skew, g)[0]
    expected = torch.autograd.grad(reference_weight(layer), layer.skew, g)[0]
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "kernel_size", "kwargs"),
    [
        (16, 16, 3, dict(padding=1)),
        (16, 32, 3, dict(stride=2, padding=1, bias=True, r=2, num_matrices="max")),
        (32, 16, 1, dict(num_matrices=2, bias=True)),
        (8, 12, (3, 1), dict(dilation=2, padding="same", r=3)),
        (128, 256, 3, dict(stride=2, padding=1, r=8)),
        (512, 512, 3, dict(padding=1)),
    ],
)
def test_forward_equals_dense_conv_with_the_weight(in_channels, out_channels, kernel_size, kwargs):
    torch.manual_seed(0)
    layer = perturb(ODKConv2d(in_channels, out_channels, kernel_size, **kwargs))
    conv_kwargs = {k: v for k, v in kwargs.items() if k not in ("r", "num_matrices")}
    dense = nn.Conv2d(in_channels, out_channels, kernel_size, **conv_kwargs)
    x = torch.randn(2, in_channels, 6, 6)
    y = layer(x)
    expected = F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation)
    assert y.shape == dense(x).shape
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_channels_meeting_only_zero_columns_are_never_convolved():
    layer = perturb(ODKConv2d(64, 64, 3, padding=1))
    first = (64 * 9 - 64) // 9
    assert layer.first_channel == first == 56
    x = torch.randn(2, 64, 5, 5, requires_grad=True)
    poisoned = x.detach().clone()
    poisoned[:, :first] = float("nan")  # a full-width conv would spread NaN * 0 = NaN
    torch.testing.assert_close(layer(poisoned), layer(x).detach())
    layer(x).square().sum().backward()
    assert torch.count_nonzero(x.grad[:, :first]) == 0
    assert torch.count_nonzero(x.grad[:, first:]) > 0


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    ("r", "num_matrices", "expected"), [(1, 1, 2016), (2, 3, 2976), (8, 9, 2016)]
)
def test_trainable_parameters_are_the_free_entries_of_skew_blocks(r, num_matrices, expected, bias):
    layer = ODKConv2d(64, 64, 3, r=r, num_matrices=num_matrices, bias=bias)
    b = 64 // r
    assert expected == num_matrices * r * b * (b - 1) // 2
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == expected + 64 * bias
    assert {name for name, _ in layer.named_buffers()} >= {"base"}
    assert not any(buf.requires_grad for buf in layer.buffers())


def test_gradcheck_float64():
    torch.manual_seed(0)
    layer = perturb(ODKConv2d(3, 4, 2, padding=1, bias=True, r=2, num_matrices="max")).double()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, skew, bias: layer(x), (x, layer.skew, layer.bias))


@pytest.mark.parametrize("r", [1, 2, 8])
def test_gradients_reach_every_block(r):
    torch.manual_seed(0)
    layer = ODKConv2d(16, 32, 3, padding=1, r=r, num_matrices="max", bias=True)
    x = torch.randn(4, 16, 6, 6)
    (layer(x) * torch.randn(4, 32, 6, 6)).sum().backward()
    assert layer.skew.grad.shape == (4 * r, (32 // r) * (32 // r - 1) // 2)
    assert bool((layer.skew.grad.abs().amax(dim=1) > 0).all())
    assert bool((layer.bias.grad != 0).all())


def train(layer: ODKConv2d, steps: int, lr: float = 0.05) -> ODKConv2d:
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr)
    x = torch.randn(8, layer.in_channels, 6, 6)
    target = torch.randn(8, layer.out_channels, 6, 6)
    for _ in range(steps):
        optimizer.zero_grad()
        F.mse_loss(layer(x), target).backward()
        optimizer.step()
    return layer


@pytest.mark.parametrize(("r", "num_matrices"), [(1, "max"), (2, 3), (8, 1)])
def test_orthogonality_is_exact_after_many_adam_steps(r, num_matrices):
    torch.manual_seed(0)
    layer = ODKConv2d(32, 96, 3, padding=1, r=r, num_matrices=num_matrices)
    start = layer.weight.detach()
    train(layer, steps=30)
    w, m = matrix(layer), layer.num_matrices
    assert (layer.weight - start).abs().max() > 0.1  # it did move
    torch.testing.assert_close(w @ w.T, m * torch.eye(96), rtol=0, atol=1e-5)
    assert torch.count_nonzero(w[:, : 32 * 9 - m * 96]) == 0


def test_state_dict_round_trip_gives_identical_outputs():
    torch.manual_seed(0)
    layer = train(ODKConv2d(16, 32, 3, padding=1, r=2, num_matrices=2, bias=True), steps=3)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    assert set(layer.state_dict()) == {"skew", "base", "bias"}
    torch.manual_seed(1)  # a different random base, replaced by the loaded one
    loaded = ODKConv2d(16, 32, 3, padding=1, r=2, num_matrices=2, bias=True)
    buffer.seek(0)
    loaded.load_state_dict(torch.load(buffer))
    x = torch.randn(2, 16, 6, 6)
    torch.testing.assert_close(loaded(x), layer(x), rtol=0, atol=0)
    loaded.eval(), layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), layer(x), rtol=0, atol=0)
        w = matrix(loaded)
    torch.testing.assert_close(w @ w.T, 2 * torch.eye(32), rtol=0, atol=1e-5)


def test_eval_caches_the_weight_until_parameters_change_or_train(monkeypatch):
    calls = []
    compute = odk.layers.block_orthogonal_weight
    monkeypatch.setattr(
        odk.layers, "block_orthogonal_weight", lambda *a: calls.append(1) or compute(*a)
    )
    layer = ODKConv2d(8, 16, 3, padding=1, num_matrices=2)
    x = torch.randn(2, 8, 5, 5)
    layer(x), layer(x)
    assert len(calls) == 2  # training: the map runs once per forward
    layer.eval()
    with torch.no_grad():
        y = layer(x)
        torch.testing.assert_close(layer(x), y)
        assert len(calls) == 3
        layer.skew.add_(0.1)  # an in-place change, as an optimizer step makes
        torch.testing.assert_close(layer(x), F.conv2d(x, reference_weight(layer), padding=1))
        assert len(calls) == 4
        layer.load_state_dict(ODKConv2d(8, 16, 3, padding=1, num_matrices=2).state_dict())
        torch.testing.assert_close(layer(x), F.conv2d(x, reference_weight(layer), padding=1))
        assert len(calls) == 5
    layer(x)  # eval with grad enabled: a fresh, differentiable weight
    assert len(calls) == 6
    layer.train()
    with torch.no_grad():
        layer(x)
    assert len(calls) == 7


def test_autocast_bf16_on_cpu_keeps_the_map_in_float32():
    torch.manual_seed(0)
    layer = perturb(ODKConv2d(32, 64, 3, padding=1, r=2, num_matrices=2, bias=True))
    x = torch.randn(2, 32, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        w = matrix(layer)
    assert y.dtype == torch.bfloat16
    assert w.dtype == torch.float32
    torch.testing.assert_close(w @ w.T, 2 * torch.eye(64), rtol=0, atol=1e-5)  # bf16: ~1e-2
    torch.testing.assert_close(y.float(), layer(x), rtol=0.05, atol=0.05)
    y.float().square().sum().backward()
    assert layer.skew.grad.dtype == torch.float32
    assert bool(layer.skew.grad.isfinite().all()) and bool(layer.skew.grad.abs().sum() > 0)


def test_initialization_follows_the_seed_and_is_a_random_orthogonal_weight():
    weights = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        weights.append(ODKConv2d(64, 64, 3, r=8, num_matrices="max").weight)
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)
    assert not torch.allclose(weights[0], weights[2])
    torch.manual_seed(0)
    q = blocks(ODKConv2d(64, 64, 3, r=8, num_matrices="max"))  # 72 blocks of 8 x 8
    assert (q - torch.eye(8)).abs().amax() > 0.5  # not the identity
    # Haar on O(8): E[trace] = 0 with variance 1; a QR without the sign fix is biased.
    assert abs(q.diagonal(dim1=-2, dim2=-1).sum(-1).mean()) < 0.5


@pytest.mark.parametrize(("bias", "stride"), [(False, 1), (True, 2)])
def test_to_conv2d_is_equivalent_and_leaves_the_rng_alone(bias, stride):
    torch.manual_seed(0)
    layer = perturb(ODKConv2d(16, 32, 3, stride=stride, padding=1, r=2, bias=bias))
    state = torch.get_rng_state()
    conv = layer.to_conv2d()
    assert torch.equal(torch.get_rng_state(), state)
    assert type(conv) is nn.Conv2d and conv.stride == (stride, stride)
    torch.testing.assert_close(conv.weight, layer.weight.detach(), rtol=0, atol=0)
    x = torch.randn(2, 16, 6, 6)
    torch.testing.assert_close(conv(x), layer(x), rtol=1e-5, atol=1e-5)


def test_merge_odk_convs_replaces_every_odk_layer_in_a_copy():
    torch.manual_seed(0)
    model = nn.Sequential(
        ODKConv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Sequential(ODKConv2d(16, 16, 3, r=4))
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        expected = model(x)  # leaves inference tensors in the caches
    merged = merge_odk_convs(model)
    assert not any(isinstance(m, ODKConv2d) for m in merged.modules())
    assert sum(isinstance(m, ODKConv2d) for m in model.modules()) == 2
    with torch.no_grad():
        torch.testing.assert_close(merged(x), expected, rtol=1e-5, atol=1e-5)
    assert type(merge_odk_convs(ODKConv2d(3, 16, 3))) is nn.Conv2d


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((512, 512, 3), 9),
        ((128, 256, 3), 4),
        ((64, 128, 1), 0),
        ((3, 64, 3), 0),
        ((64, 64, (3, 1)), 3),
    ],
)
def test_max_num_matrices(shape, expected):
    assert max_num_matrices(*shape) == expected


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (
            (16, 16, 3),
            dict(r=3),
            r"ODKConv2d\(16, 16, kernel_size=\(3, 3\)\): r=3 must divide "
            r"out_channels=16; allowed: \[1, 2, 4, 8, 16\]",
        ),
        ((16, 16, 3), dict(r=0), r"r=0 must divide out_channels=16"),
        (
            (16, 16, 3),
            dict(num_matrices=0),
            r"\(16, 16, kernel_size=\(3, 3\)\): num_matrices=0 is "
            r"out of range; allowed: an integer in 1\.\.9 .* or 'max'",
        ),
        ((16, 16, 3), dict(num_matrices=10), r"num_matrices=10 is out of range; .* 1\.\.9"),
        ((16, 16, 3), dict(num_matrices="all"), r"num_matrices='all' is out of range"),
        (
            (64, 128, 1),
            {},
            r"ODKConv2d\(64, 128, kernel_size=\(1, 1\)\): in_channels\*kh\*kw = 64 < "
            r"out_channels = 128",
        ),
        ((16, 16, 3), dict(groups=2), r"groups=2 is not supported; allowed: groups=1"),
        ((0, 16, 3), {}, r"ODKConv2d\(0, 16, .*\): channels and kernel sizes must be positive"),
    ],
)
def test_bad_arguments_raise_a_value_error_naming_shape_value_and_range(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ODKConv2d(*args, **kwargs)


def test_extra_repr_names_the_odk_settings():
    text = repr(ODKConv2d(16, 32, 3, stride=2, padding=1, r=4, num_matrices="max"))
    assert "ODKConv2d(16, 32, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)" in text
    assert "r=4, num_matrices=4, block_size=8" in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_forward_backward_and_fp16_autocast():
    torch.manual_seed(0)
    layer = perturb(ODKConv2d(128, 256, 3, stride=2, padding=1, num_matrices="max")).cuda()
    x = torch.randn(2, 128, 8, 8, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        y = layer(x)
        w = matrix(layer)
    assert y.dtype == torch.float16 and w.dtype == torch.float32
    torch.testing.assert_close(w @ w.T, 4 * torch.eye(256, device="cuda"), rtol=0, atol=1e-5)
    y.float().sum().backward()
    assert bool(layer.skew.grad.isfinite().all())
    expected = F.conv2d(x, layer.weight, None, 2, 1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-4)


def test_stages_that_depend_on_layers_py_depend_on_the_odk_modules_it_imports():
    # dvc.yaml's deps are kept by hand: a stage that imports layers.py imports these as well.
    root = Path(__file__).resolve().parents[1]
    tree = ast.parse((root / "src/odk/layers.py").read_text())
    imported = {
        f"src/odk/{node.module.split('.')[1]}.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("odk.")
    }
    assert "src/odk/orthogonal.py" in imported
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    checked = 0
    for name, stage in stages.items():
        deps = set(stage.get("do", stage).get("deps", []))
        if "src/odk/layers.py" in deps:
            assert imported <= deps, f"{name}: missing {sorted(imported - deps)}"
            checked += 1
    assert checked >= 3  # train_baseline, train_odk, evaluate
