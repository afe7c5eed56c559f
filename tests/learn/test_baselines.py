"""Deconvolution baselines: gains on a known blur, dense normal equations, RL flux, a real lens's corner, errors."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from learn.baselines import (
    BASELINES,
    centre_psf,
    richardson_lucy,
    richardson_lucy_lowrank,
    run_baseline,
    tune_balance,
    wiener,
    wiener_lowrank,
)
from learn.metrics import psnr
from optisim.blur import ProductConvolution
from optisim.lens import load_preset
from optisim.lowrank import EigenPSFs

F64 = torch.float64
R = 7  # radius of the Gaussian test PSF


def gaussian_psf(k=2 * R + 1, sigma=1.5):
    a = torch.arange(k, dtype=F64) - k // 2
    psf = torch.exp(-0.5 * (a[:, None] ** 2 + a[None] ** 2) / sigma**2)
    return psf / psf.sum()


def smooth_image(n, *, sigma=2.0, seed=0):
    """(n, n) random image low-passed by a Gaussian of ``sigma`` pixels, scaled to [0, 1]."""
    x = torch.rand(1, 1, n + 16, n + 16, generator=torch.Generator().manual_seed(seed), dtype=F64)
    x = F.conv2d(x, gaussian_psf(17, sigma)[None, None])[0, 0]
    return (x - x.min()) / (x.max() - x.min())


@pytest.fixture(scope="module")
def gaussian_pair():
    """Sharp 64x64 crop and its blur by ``gaussian_psf`` with the light of the sources around it (valid conv)."""
    big = smooth_image(64 + 2 * R)
    blurred = F.conv2d(big[None, None], gaussian_psf().flip(0, 1)[None, None])[0, 0]
    return big[R:-R, R:-R], blurred


def rand(*shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# --------------------------------------------------------------------------------------------- shift-invariant


def test_wiener_and_rl_sharpen_a_gaussian_blur(gaussian_pair):
    sharp, blurred = gaussian_pair
    before = float(psnr(blurred, sharp))
    assert float(psnr(wiener(blurred, gaussian_psf(), balance=1e-3), sharp)) > before + 4
    assert float(psnr(richardson_lucy(blurred, gaussian_psf(), iterations=30), sharp)) > before + 6


def test_shift_invariant_shapes_dtypes(gaussian_pair):
    _, blurred = gaussian_pair
    batch = torch.stack([blurred, blurred.flip(0)]).float()
    for method in (wiener, richardson_lucy):
        out = method(batch, gaussian_psf().numpy())
        assert out.shape == batch.shape and out.dtype == torch.float32 and out.device == batch.device
        single = method(batch[1], gaussian_psf())
        torch.testing.assert_close(single, out[1], rtol=1e-4, atol=1e-5)  # each image on its own


def test_wiener_with_a_delta_psf_is_a_scaling():
    y = rand(2, 20, 23)
    delta = torch.zeros(5, 5, dtype=F64)
    delta[2, 2] = 1
    torch.testing.assert_close(wiener(y, delta, balance=0.25), y / 1.25)


def test_richardson_lucy_keeps_flux_and_positivity(gaussian_pair):
    _, blurred = gaussian_pair
    out = richardson_lucy(blurred, gaussian_psf(), iterations=30)
    assert float(out.min()) >= 0
    assert abs(float(out.sum() / blurred.sum()) - 1) < 0.01


# --------------------------------------------------------------------------------------------- low-rank, dense


def dense_matrix(apply, shape):
    """Columns are ``apply`` of the unit images of ``shape``: (outputs, inputs)."""
    n = shape[0] * shape[1]
    units = torch.eye(n, dtype=F64).reshape(n, *shape)
    return apply(units).reshape(n, -1).T


def small_operator(kind, shape):
    kernels = gaussian_psf(5, 1.0)[None]
    weights = torch.ones(1, *shape, dtype=F64)
    if kind == "varying":  # two kernels, smooth positive weights: a spatially varying PSF
        kernels = torch.stack([kernels[0], gaussian_psf(5, 0.6)])
        ramp = torch.linspace(0, 1, shape[1], dtype=F64).expand(*shape)
        weights = torch.stack([1 - ramp, ramp])
    return ProductConvolution(weights, kernels)


@pytest.mark.parametrize("kind", ["shift-invariant", "varying"])
def test_wiener_lowrank_solves_the_normal_equations(kind):
    op = small_operator(kind, (12, 12))
    h = dense_matrix(op, (12, 12)).numpy()
    y = rand(2, 12, 12, seed=1)
    balance = 1e-2
    out = wiener_lowrank(y, op, balance=balance, iterations=300, tol=1e-12)
    a = h.T @ h + balance * np.eye(144)
    for b in range(2):
        expected = np.linalg.solve(a, h.T @ y[b].numpy().ravel())
        np.testing.assert_allclose(out[b].numpy().ravel(), expected, atol=1e-6)
    single = wiener_lowrank(y[1], op, balance=balance, iterations=300, tol=1e-12)
    np.testing.assert_allclose(single.numpy(), out[1].numpy(), atol=1e-9)  # each image its own CG


@pytest.mark.parametrize("reference", ["zero", "mean"])
def test_wiener_lowrank_with_margin_solves_the_unknown_boundary_problem(reference):
    m, balance = 2, 1e-2
    op = small_operator("varying", (12 + 2 * m, 12 + 2 * m))
    full = dense_matrix(op, (16, 16)).numpy().reshape(16, 16, 256)
    h = full[m:-m, m:-m].reshape(144, 256)  # only the observed pixels
    y = rand(12, 12, seed=2)
    out = wiener_lowrank(y, op, balance=balance, iterations=300, tol=1e-12, margin=m, reference=reference)
    prior = float(y.mean()) if reference == "mean" else 0.0  # argmin |Hx - y|² + balance |x - prior|²
    rhs = h.T @ y.numpy().ravel() + balance * prior
    expected = np.linalg.solve(h.T @ h + balance * np.eye(256), rhs).reshape(16, 16)
    np.testing.assert_allclose(out.numpy(), expected[m:-m, m:-m], atol=1e-6)


def test_wiener_lowrank_stops_early():
    op = small_operator("shift-invariant", (12, 12))
    y = rand(12, 12, seed=3)
    loose = wiener_lowrank(y, op, balance=1.0, iterations=50, tol=1e-2)
    tight = wiener_lowrank(y, op, balance=1.0, iterations=50, tol=1e-12)
    residual = (op.adjoint(op(loose)) + loose - op.adjoint(y)).norm() / op.adjoint(y).norm()
    assert 1e-12 < float(residual) < 1e-2
    assert float((loose - tight).abs().max()) > 1e-10  # it did stop before convergence


def test_richardson_lucy_lowrank_flux_and_positivity():
    op = small_operator("varying", (24, 24))
    y = op(smooth_image(24, seed=4))
    out = richardson_lucy_lowrank(y, op, iterations=20)
    assert float(out.min()) >= 0
    # RL keeps the flux of the model: sum(H x) = sum(y) (up to eps) at every iteration
    assert abs(float(op(out).sum() / y.sum()) - 1) < 1e-4


# --------------------------------------------------------------------------------------------- real lens


@pytest.fixture(scope="module")
def lens_model():
    return EigenPSFs.from_lens(load_preset("default"), kernel_size=31, grid=(5, 5))


@pytest.fixture(scope="module")
def corner_crops(lens_model):
    """Two 48x48 crops at the corners of the 512x512 sensor, blurred with the light from around them."""
    n, m = 48, 15
    offsets = np.array([[512 - n, 512 - n], [0, 0]])
    sharp, blurred = [], []
    for seed, (y0, x0) in enumerate(offsets):
        big = smooth_image(n + 2 * m, sigma=1.0, seed=seed)
        op = lens_model.operator((y0 - m, x0 - m), (n + 2 * m, n + 2 * m), dtype=F64)
        sharp.append(big[m:-m, m:-m])
        blurred.append(op(big)[m:-m, m:-m])
    return torch.stack(sharp), torch.stack(blurred), offsets


def test_centre_psf(lens_model):
    psf = centre_psf(lens_model)
    assert psf.shape == (31, 31) and abs(psf.sum() - 1) < 1e-12
    assert np.unravel_index(psf.argmax(), psf.shape) == (15, 15)


def test_lowrank_baselines_sharpen_the_sensor_corner(lens_model, corner_crops):
    sharp, blurred, offsets = corner_crops
    before = psnr(blurred, sharp)
    kw = {"model": lens_model, "offsets": offsets, "sensor_shape": (512, 512)}
    wl = run_baseline("wiener-lowrank", blurred, balance=1e-3, iterations=30, **kw)
    rl = run_baseline("rl-lowrank", blurred[:, None], iterations=30, **kw)
    centre = run_baseline("wiener", blurred, balance=1e-3, **kw)
    assert wl.shape == rl.shape == blurred.shape
    assert (psnr(wl, sharp) > before + 3).all()
    assert (psnr(rl, sharp) > before + 1).all()
    assert (psnr(wl, sharp) > psnr(centre, sharp) + 3).all()  # the centre PSF does not fit the corner


def test_run_baseline_matches_the_functions(lens_model, corner_crops):
    _, blurred, offsets = corner_crops
    kw = {"model": lens_model, "offsets": offsets}
    assert run_baseline("blurred", blurred, **kw) is blurred
    torch.testing.assert_close(
        run_baseline("wiener", blurred, balance=3e-3, **kw), wiener(blurred, centre_psf(lens_model), balance=3e-3)
    )
    torch.testing.assert_close(
        run_baseline("rl", blurred, iterations=5, **kw), richardson_lucy(blurred, centre_psf(lens_model), iterations=5)
    )


def test_tune_balance_picks_the_best_candidate(lens_model, corner_crops):
    sharp, blurred, offsets = corner_crops
    candidates = (1e-4, 1e-2, 1.0)
    best = tune_balance("wiener", blurred, sharp, model=lens_model, offsets=offsets, candidates=candidates)
    scores = [
        float(psnr(run_baseline("wiener", blurred, model=lens_model, offsets=offsets, balance=c), sharp).mean())
        for c in candidates
    ]
    assert best == candidates[int(np.argmax(scores))]


# --------------------------------------------------------------------------------------------- errors


def test_baseline_errors(lens_model):
    y = rand(1, 16, 16)
    kw = {"model": lens_model, "offsets": [[0, 0]]}
    with pytest.raises(
        ValueError,
        match=re.escape("name: expected one of 'blurred', 'wiener', 'wiener-lowrank', 'rl', 'rl-lowrank', got 'tv'"),
    ):
        run_baseline("tv", y, **kw)
    assert BASELINES == ("blurred", "wiener", "wiener-lowrank", "rl", "rl-lowrank")
    with pytest.raises(ValueError, match=re.escape("offsets: expected shape (B, 2) = (1, 2), (y0, x0) per crop")):
        run_baseline("wiener", y, model=lens_model, offsets=[[0, 0], [1, 1]])
    with pytest.raises(
        ValueError, match=re.escape("sensor_shape: expected the model's sensor (512, 512), got (64, 64)")
    ):
        run_baseline("wiener", y, sensor_shape=(64, 64), **kw)
    with pytest.raises(ValueError, match=re.escape("name: balance tuning applies to 'wiener' and 'wiener-lowrank'")):
        tune_balance("rl", y, y, **kw)
    with pytest.raises(ValueError, match=re.escape("balance: expected a positive regularisation weight, got 0")):
        wiener(y, gaussian_psf(), balance=0)
    with pytest.raises(ValueError, match=re.escape("psf: expected shape (k, k), got (1, 15, 15)")):
        wiener(y, gaussian_psf()[None])
    with pytest.raises(ValueError, match=re.escape("iterations: expected a positive integer, got 0")):
        richardson_lucy(y, gaussian_psf(), iterations=0)
    with pytest.raises(ValueError, match=re.escape("blurred: expected shape (B, H, W) or (H, W), got (1, 1, 16, 16)")):
        wiener(y[None], gaussian_psf())
    op = small_operator("shift-invariant", (12, 12))
    with pytest.raises(ValueError, match=re.escape("op: expected an operator of 16x16 pixels (the 12x12 images grown")):
        wiener_lowrank(rand(12, 12), op, margin=2)
    with pytest.raises(ValueError, match=re.escape("reference: expected one of ('zero', 'mean'), got 'median'")):
        wiener_lowrank(rand(12, 12), op, reference="median")
    with pytest.raises(ValueError, match=re.escape("margin: expected a non-negative number of pixels, got -1")):
        richardson_lucy_lowrank(rand(12, 12), op, margin=-1)
