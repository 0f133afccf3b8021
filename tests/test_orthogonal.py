"""The orthogonal map and its inverses (odk.orthogonal, odk.inverse).

ODK_INVERSE, the three inverses, Newton–Schulz's warm start and fallback.
"""

import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import odk.inverse
import odk.orthogonal
from odk.inverse import WarmStart, cayley_inverse, inverse_method
from odk.layers import ODKConv2d
from odk.orthogonal import full_precision_matmul


@pytest.fixture
def spy(monkeypatch):
    """Counts the calls of the three inverses; Newton–Schulz's only when it returned an inverse."""
    calls = {"schur": 0, "lu": 0, "newton": 0}

    def count(name):
        calls[name] += 1

    for name, attr in [("schur", "_schur_inverse"), ("lu", "_lu_inverse")]:
        fn = getattr(odk.inverse, attr)
        monkeypatch.setattr(odk.inverse, attr, lambda m, n=name, f=fn: count(n) or f(m))
    newton = odk.inverse._newton_inverse

    def counted_newton(m, warm):
        x = newton(m, warm)
        if x is not None:
            count("newton")
        return x

    monkeypatch.setattr(odk.inverse, "_newton_inverse", counted_newton)
    return calls


def skew_matrices(k: int, n: int, std: float, dtype=torch.float32) -> torch.Tensor:
    """``k`` matrices ``I + A``, ``A`` skew-symmetric with N(0, std^2) entries."""
    a = torch.randn(k, n, n, dtype=dtype) * std
    return torch.eye(n, dtype=dtype) + a - a.mT


def adam(layer: ODKConv2d, steps: int, lr: float, seed: int = 0) -> torch.optim.Adam:
    """``steps`` Adam steps of ``layer`` towards a random target; returns the optimizer."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(8, layer.in_channels, 4, 4, generator=generator)
    target = torch.randn(8, layer.out_channels, 4, 4, generator=generator)  # padded convs
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        F.mse_loss(layer(x), target).backward()
        optimizer.step()
    return optimizer


def assert_orthogonal(layer: ODKConv2d, atol: float = 1e-5) -> None:
    """``W @ W.T == m * I``."""
    w = layer.weight.detach().reshape(layer.out_channels, -1)
    eye = torch.eye(layer.out_channels, dtype=w.dtype)
    torch.testing.assert_close(w @ w.T, layer.num_matrices * eye, rtol=0, atol=atol)


@pytest.mark.parametrize(
    ("value", "cpu", "gpu"),
    [
        (None, "schur", "newton"),
        ("", "schur", "newton"),
        ("auto", "schur", "newton"),
        ("newton", "newton", "newton"),
        (" LU ", "lu", "lu"),
        ("schur", "schur", "schur"),
    ],
)
def test_odk_inverse_picks_the_inverse_on_each_device(monkeypatch, value, cpu, gpu):
    if value is None:
        monkeypatch.delenv("ODK_INVERSE", raising=False)
    else:
        monkeypatch.setenv("ODK_INVERSE", value)
    assert inverse_method(torch.device("cpu")) == cpu
    assert inverse_method(torch.device("cuda")) == gpu


def test_a_bad_odk_inverse_fails_when_the_layer_is_built(monkeypatch):
    monkeypatch.setenv("ODK_INVERSE", "qr")
    message = r"ODK_INVERSE='qr' is not allowed; allowed: auto .*, newton, lu, schur"
    with pytest.raises(ValueError, match=message):
        ODKConv2d(16, 16, 3)


@pytest.mark.parametrize(
    ("setting", "first", "second"),
    [
        ("auto", {"schur": 1}, {"schur": 1}),
        ("schur", {"schur": 1}, {"schur": 1}),
        ("lu", {"lu": 1}, {"lu": 1}),
        ("newton", {"lu": 1}, {"newton": 1}),  # a cold start, then a warm one
    ],
)
def test_each_setting_runs_its_inverse(monkeypatch, spy, setting, first, second):
    monkeypatch.setenv("ODK_INVERSE", setting)
    warm, m = WarmStart(), skew_matrices(3, 64, 0.05)
    x = cayley_inverse(m.clone(), warm)
    assert spy == {"schur": 0, "lu": 0, "newton": 0} | first
    torch.testing.assert_close(x, torch.linalg.inv(m), rtol=0, atol=1e-5)
    m += skew_matrices(3, 64, 1e-3) - torch.eye(64)  # an optimizer step's worth
    spy.update(schur=0, lu=0, newton=0)
    x = cayley_inverse(m.clone(), warm)
    assert spy == {"schur": 0, "lu": 0, "newton": 0} | second
    torch.testing.assert_close(x, torch.linalg.inv(m), rtol=0, atol=1e-5)


def test_the_schur_recursion_has_64_wide_leaves_and_lu_is_one_batched_call(monkeypatch):
    calls = []
    inv_ex = torch.linalg.inv_ex
    monkeypatch.setattr(torch.linalg, "inv_ex", lambda m: calls.append(m.shape) or inv_ex(m))
    monkeypatch.setenv("ODK_INVERSE", "schur")
    cayley_inverse(torch.eye(256).repeat(3, 1, 1))
    assert calls == [(3, 64, 64)] * 4
    calls.clear()
    monkeypatch.setenv("ODK_INVERSE", "auto")  # newton off the CPU, without a warm start: LU
    cayley_inverse(torch.empty(3, 256, 256, device="meta"), WarmStart())
    assert calls == [(3, 256, 256)]  # one batched call: the recursion is launch-bound on GPUs


@pytest.mark.parametrize("setting", ["schur", "lu", "newton"])
@pytest.mark.parametrize(("r", "num_matrices"), [(1, 1), (8, "max")])
def test_all_blocks_go_through_one_batched_map(monkeypatch, setting, r, num_matrices):
    monkeypatch.setenv("ODK_INVERSE", setting)
    batches = []
    inverse = odk.orthogonal.cayley_inverse
    monkeypatch.setattr(
        odk.orthogonal, "cayley_inverse", lambda m, w: batches.append(m.shape) or inverse(m, w)
    )
    layer = ODKConv2d(64, 64, 3, r=r, num_matrices=num_matrices)
    layer(torch.randn(1, 64, 4, 4)).sum().backward()
    b = 64 // r
    assert batches == [(layer.num_matrices * r, b, b)]  # one call, not one per block or matrix


def test_newton_gradcheck_float64(monkeypatch, spy):
    monkeypatch.setenv("ODK_INVERSE", "newton")
    torch.manual_seed(0)
    layer = ODKConv2d(3, 8, 2, padding=1, bias=True, r=2, num_matrices="max").double()
    with torch.no_grad():
        layer.skew.normal_(std=0.1)
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    layer(x)  # the cold start: LU
    assert torch.autograd.gradcheck(lambda x, skew, bias: layer(x), (x, layer.skew, layer.bias))
    assert spy["lu"] == 1 and spy["newton"] > 10  # every later map was Newton–Schulz's


@pytest.mark.parametrize("lr", [1e-3, 1e-2])
@pytest.mark.parametrize("b", [256, pytest.param(512, marks=pytest.mark.slow)])
def test_newton_stays_orthogonal_over_200_adam_steps(monkeypatch, spy, b, lr):
    monkeypatch.setenv("ODK_INVERSE", "newton")
    torch.manual_seed(0)
    layer = ODKConv2d(b, b, 1)
    start = layer.weight.detach().clone()
    adam(layer, steps=200, lr=lr)
    assert_orthogonal(layer)
    assert (layer.weight - start).abs().max() > 0.01  # it did move
    assert spy["newton"] >= 190  # the cold start aside, Newton–Schulz served (nearly) every step


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((256, 256, 3), dict(num_matrices=2, bias=True)), ((64, 128, 3), dict(r=2, num_matrices=3))],
)
def test_newton_gives_the_outputs_and_gradients_of_lu(monkeypatch, spy, args, kwargs):
    torch.manual_seed(0)
    layer = ODKConv2d(*args, padding=1, **kwargs)
    with torch.no_grad():
        layer.skew.normal_(std=0.1)
    x = torch.randn(2, args[0], 5, 5, requires_grad=True)
    grad_y = torch.randn(2, args[1], 5, 5)
    monkeypatch.setenv("ODK_INVERSE", "newton")
    _ = layer.weight  # the cold start (LU) leaves a warm start
    with torch.no_grad():
        layer.skew.add_(torch.randn_like(layer.skew), alpha=1e-3)  # an optimizer step's worth
    results = {}
    for setting in ("newton", "lu"):
        monkeypatch.setenv("ODK_INVERSE", setting)
        y = layer(x)
        results[setting] = (y, *torch.autograd.grad(y, (x, *layer.parameters()), grad_y))
    assert spy == {"schur": 0, "lu": 2, "newton": 1}
    for newton, lu in zip(results["newton"], results["lu"], strict=True):
        scale = lu.abs().max()  # within 1e-5 of the tensor's largest entry
        torch.testing.assert_close(newton / scale, lu / scale, rtol=0, atol=1e-5)


def test_newton_falls_back_to_lu_when_the_warm_start_is_far(monkeypatch, spy):
    monkeypatch.setenv("ODK_INVERSE", "newton")
    torch.manual_seed(0)
    layer = ODKConv2d(32, 64, 3, padding=1, r=2, num_matrices=2)
    adam(layer, steps=3, lr=1e-3)
    assert spy == {"schur": 0, "lu": 1, "newton": 2}
    layer.skew.data.add_(10)  # far from the last inverse: the residual check must fail
    weight = layer.weight.detach()
    assert spy == {"schur": 0, "lu": 2, "newton": 2}
    assert_orthogonal(layer)  # a Newton step now: warm-started from the fallback's inverse
    assert spy["newton"] == 3
    monkeypatch.setenv("ODK_INVERSE", "lu")
    torch.testing.assert_close(weight, layer.weight.detach(), rtol=0, atol=1e-5)


def test_newton_starts_cold_after_to_dtype_and_load_state_dict(monkeypatch, spy):
    monkeypatch.setenv("ODK_INVERSE", "newton")
    torch.manual_seed(0)
    layer = ODKConv2d(16, 32, 3, num_matrices=2, bias=True)
    _ = layer.weight
    assert spy["lu"] == 1 and layer._warm.inverse is not None  # the first map is a cold start
    assert set(layer.state_dict()) == {"skew", "base", "bias"}  # the warm start is not saved
    changes = [
        lambda: layer.to("cpu"),
        lambda: layer.double(),
        lambda: layer.float(),
        lambda: layer.load_state_dict(copy.deepcopy(layer.state_dict())),
    ]
    for i, change in enumerate(changes, start=2):
        _ = layer.weight
        assert layer._warm.inverse is not None
        change()
        assert layer._warm.inverse is None
        _ = layer.weight
        assert spy["lu"] == i
        assert_orthogonal(layer)
    assert spy["newton"] == 2 * len(changes)  # every other map started warm


def test_a_resumed_run_starts_cold_and_ends_where_an_uninterrupted_one_ends(monkeypatch, spy):
    monkeypatch.setenv("ODK_INVERSE", "newton")
    torch.manual_seed(0)
    layer = ODKConv2d(32, 64, 3, padding=1, r=2, num_matrices=2, bias=True)
    optimizer = adam(layer, steps=5, lr=1e-3, seed=1)
    checkpoint = copy.deepcopy({"model": layer.state_dict(), "optimizer": optimizer.state_dict()})
    torch.manual_seed(1)  # another random base, replaced by the checkpoint's
    resumed = ODKConv2d(32, 64, 3, padding=1, r=2, num_matrices=2, bias=True)
    resumed.load_state_dict(checkpoint["model"])
    continue_training(layer, optimizer)
    spy.update(lu=0, newton=0)
    resumed_optimizer = torch.optim.Adam(resumed.parameters(), lr=1e-3)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    continue_training(resumed, resumed_optimizer)
    assert spy == {"schur": 0, "lu": 1, "newton": 4}  # one cold start, then warm ones
    for name, value in layer.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=1e-5)
    assert_orthogonal(resumed)


def continue_training(layer: ODKConv2d, optimizer: torch.optim.Optimizer) -> None:
    """Five more steps on a fixed batch (the same for every caller)."""
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(4, layer.in_channels, 4, 4, generator=generator)
    target = torch.randn(4, layer.out_channels, 4, 4, generator=generator)
    for _ in range(5):
        optimizer.zero_grad()
        F.mse_loss(layer(x), target).backward()
        optimizer.step()


def matmul_precision() -> str:
    """What cuBLAS obeys: the per-backend setting on torch >= 2.9, else the global one."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        return torch.backends.cuda.matmul.fp32_precision
    return torch.get_float32_matmul_precision()


@pytest.mark.parametrize("setting", ["schur", "lu", "newton"])
def test_the_map_multiplies_in_full_precision_under_tf32(monkeypatch, setting):
    monkeypatch.setenv("ODK_INVERSE", setting)
    seen = []
    for name in ("bmm", "baddbmm"):
        fn = getattr(torch, name)
        monkeypatch.setattr(
            torch, name, lambda *a, f=fn, **k: seen.append(matmul_precision()) or f(*a, **k)
        )
    layer = ODKConv2d(32, 128, 3, num_matrices=2)
    _ = layer.weight
    torch.set_float32_matmul_precision("high")  # what Lightning suggests on tensor-core GPUs
    try:
        user = matmul_precision(), torch.get_float32_matmul_precision()
        with torch.no_grad():
            layer.skew.add_(torch.randn_like(layer.skew), alpha=1e-3)
        seen.clear()
        layer.weight.sum().backward()
        assert (matmul_precision(), torch.get_float32_matmul_precision()) == user
    finally:
        torch.set_float32_matmul_precision("highest")
    assert len(seen) >= 3 and set(seen) <= {"ieee", "highest"}, seen


def test_full_precision_matmul_restores_per_backend_settings():
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("torch < 2.9 has no per-backend fp32 precision")
    torch.backends.cuda.matmul.fp32_precision = "tf32"  # the new API only
    try:
        with full_precision_matmul():
            assert torch.backends.cuda.matmul.fp32_precision == "ieee"
            assert torch.get_float32_matmul_precision() == "highest"  # the two APIs agree
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    finally:
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.set_float32_matmul_precision("highest")


@pytest.mark.parametrize("setting", ["auto", "lu", "newton"])
def test_stays_correct_after_torch_set_num_threads(setting):
    # After torch.set_num_threads(>1), MKL's batched LU on CPU returns garbage for n >= ~200
    # (pytorch/pytorch#142815); 256 x 256 blocks must not go through it.
    code = (
        "import torch; from odk import ODKConv2d; torch.set_num_threads(2); torch.manual_seed(0)\n"
        "layer = ODKConv2d(64, 256, 3, num_matrices=2); layer.skew.data.normal_(std=0.1)\n"
        "layer.weight; layer.skew.data.add_(torch.randn_like(layer.skew), alpha=1e-3)\n"
        "w = layer.weight.reshape(256, -1); err = (w @ w.T - 2 * torch.eye(256)).abs().max()\n"
        "assert err < 1e-5, err; print('ok')\n"
    )
    env = os.environ | {"ODK_INVERSE": setting}
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert run.returncode == 0 and "ok" in run.stdout, run.stdout + run.stderr
    assert "MKL ERROR" not in run.stdout + run.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("setting", ["auto", "lu"])
def test_cuda_stays_orthogonal_with_tf32_enabled(monkeypatch, setting):
    monkeypatch.setenv("ODK_INVERSE", setting)
    torch.manual_seed(0)
    layer = ODKConv2d(512, 512, 3, padding=1).cuda()
    torch.set_float32_matmul_precision("high")
    try:
        optimizer = torch.optim.Adam(layer.parameters(), lr=1e-3)
        x = torch.randn(8, 512, 4, 4, device="cuda")
        for _ in range(20):
            optimizer.zero_grad()
            layer(x).square().mean().backward()
            optimizer.step()
        w = layer.weight.detach().reshape(512, -1)
        torch.set_float32_matmul_precision("highest")  # the check itself in full precision
        eye = torch.eye(512, device="cuda")
        torch.testing.assert_close(w @ w.T, eye, rtol=0, atol=1e-5)
    finally:
        torch.set_float32_matmul_precision("highest")
