"""``learn.pointsources`` and the flux additions of ``learn.metrics``: analytic Gaussians, field bands, bad input."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from learn.metrics import RegionMetrics, local_flux_error
from learn.pointsources import (
    band_labels,
    field_bands,
    flux_by_band,
    measure_sources,
    point_source_field,
    point_source_geometry,
    source_field_radius,
    summarise_by_band,
)

FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))


def gaussian(shape, row, col, sigma_major, sigma_minor, angle, flux):
    """A sampled elliptical Gaussian holding ``flux``, major axis at ``angle`` (rad) from +x (columns)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    dy, dx = yy - row, xx - col
    u = math.cos(angle) * dx + math.sin(angle) * dy
    v = -math.sin(angle) * dx + math.cos(angle) * dy
    norm = flux / (2 * math.pi * sigma_major * sigma_minor)
    return norm * np.exp(-0.5 * (u**2 / sigma_major**2 + v**2 / sigma_minor**2))


SOURCES = [  # row, col, sigma major, sigma minor, angle, flux
    (30.3, 31.7, 3.0, 1.5, 0.3, 100.0),
    (30.0, 90.2, 2.0, 2.0, 0.0, 50.0),
    (90.6, 29.4, 1.2, 0.8, 1.2, 10.0),
    (91.1, 90.9, 0.75, 0.75, 0.0, 2 * math.pi * 0.75**2),  # the scenes' bead
]


def test_analytic_gaussians_fwhm_aspect_flux():
    image = np.full((120, 120), 0.3)  # a constant background, removed by the annulus
    for s in SOURCES:
        image += gaussian(image.shape, *s)
    positions = [(r + 0.4, c - 0.3) for r, c, *_ in SOURCES]  # the given positions need not be exact
    m = measure_sources(torch.from_numpy(image), positions, aperture=16, annulus=(18, 24))
    for i, (r, c, a, b, _, flux) in enumerate(SOURCES):
        assert m["fwhm"][i] == pytest.approx(FWHM * math.sqrt((a * a + b * b) / 2), rel=1e-2), i
        assert m["aspect"][i] == pytest.approx(a / b, abs=1.5e-2), i
        assert m["flux"][i] == pytest.approx(flux, rel=1e-3), i
        assert m["background"][i] == pytest.approx(0.3, abs=1e-6), i
        assert (m["row"][i], m["col"][i]) == pytest.approx((r, c), abs=0.02), i


def test_noise_and_ringing_do_not_bias_the_shape():
    rng = np.random.default_rng(0)
    image = gaussian((64, 64), 32.2, 31.6, 2.0, 2.0, 0.0, 200.0)
    ring = gaussian((64, 64), 32.2, 31.6, 4.0, 4.0, 0.0, 60.0)  # a negative ring around the source (deconvolution)
    noisy = image - ring + 0.5 * ring.max() * 0 + rng.normal(0, 0.02, image.shape)
    m = measure_sources(noisy, [(32.2, 31.6)], aperture=12)
    assert m["aspect"][0] < 1.05 and m["fwhm"][0] == pytest.approx(FWHM * 2.0, rel=0.08)
    empty = measure_sources(np.zeros((40, 40)), [(20, 20)], aperture=5)  # no light: NaN shape, zero flux
    assert np.isnan(empty["fwhm"][0]) and np.isnan(empty["aspect"][0]) and empty["flux"][0] == 0


def test_field_radius_and_bands():
    sensor = (100, 200)  # R = 100 px
    h = source_field_radius([[49.5, 99.5], [49.5, 199.5], [99.5, 199.5]], sensor)
    assert h == pytest.approx([0.0, 1.0, math.hypot(0.5, 1.0)])
    assert source_field_radius([[0.0, 0.0]], sensor, offset=(49.5, 99.5)) == pytest.approx([0.0])
    assert field_bands([0.0, 0.35, 0.5, 0.6, 0.84, 0.85, 1.4]).tolist() == [0, 1, 1, 2, 2, 3, 3]
    assert band_labels() == ["h < 0.35", "0.35-0.6", "0.6-0.85", "h >= 0.85"]


def test_point_source_field_reaches_the_corners_and_keeps_the_flux():
    image, positions = point_source_field((96, 128), spacing=20, margin=10, sigma=0.75)
    assert image.shape == (96, 128) and image.dtype == np.float32
    assert positions.min(axis=0) == pytest.approx([10, 10]) and positions.max(axis=0) == pytest.approx([85, 117])
    steps = [np.diff(np.unique(positions[:, k])) for k in (0, 1)]
    assert all(s.min() >= 20 - 1e-9 for s in steps)
    m = measure_sources(image, positions, aperture=6)
    assert m["flux"] == pytest.approx(2 * math.pi * 0.75**2, rel=1e-3)
    assert np.all(m["aspect"] < 1.015) and m["fwhm"] == pytest.approx(FWHM * 0.75, rel=1e-2)
    _, moved = point_source_field((96, 128), spacing=20, margin=10, jitter=0.5, rng=np.random.default_rng(1))
    assert 0 < np.abs(moved - positions).max() <= 0.5


def test_summary_per_band_and_flux_by_band():
    h = np.array([0.1, 0.2, 0.5, 0.9, 1.2])
    truth = {"flux": np.full(5, 2.0), "fwhm": np.full(5, 1.8), "aspect": np.ones(5)}
    measured = {"flux": np.array([2.0, 1.0, 2.2, 1.6, 1.8]), "fwhm": np.array([1, 2, 3, 4, 6.0]),
                "aspect": np.array([1.0, 1.2, 1.1, 1.5, np.nan])}  # fmt: skip
    rows = summarise_by_band(measured, truth, h)
    assert [r["sources"] for r in rows] == [2, 1, 0, 2]
    assert rows[0] == {"band": "h < 0.35", "sources": 2, "aspect": 1.1, "fwhm": 1.5, "flux_ratio": 0.75}
    assert rows[2]["aspect"] is None and rows[3]["aspect"] == 1.5 and rows[3]["flux_ratio"] == pytest.approx(0.85)
    json.dumps(rows, allow_nan=False)
    truth_img = np.ones((64, 64))
    ratios = flux_by_band(2 * truth_img, truth_img, (64, 64))
    assert ratios == pytest.approx([2.0] * 4)
    assert flux_by_band(truth_img[:8, :8], truth_img[:8, :8], (64, 64))[:3] == [None, None, None]  # corner only


def test_region_flux_ratio():
    metrics = RegionMetrics((64, 64), grid=(2, 2))
    truth = torch.ones(1, 64, 64)
    pred = truth.clone()
    pred[:, :32, :32] = 0.5  # region (0, 0) loses half its light
    metrics.update(pred, truth, [[0, 0]])
    res = metrics.result()
    assert res["region_flux_ratio"] == [[0.5, 1.0], [1.0, 1.0]]
    assert res["flux_ratio"] == pytest.approx(0.875) == res["centre_flux_ratio"] and res["edge_flux_ratio"] is None
    empty = RegionMetrics((64, 64), grid=(2, 2)).result()
    assert empty["flux_ratio"] is None and empty["region_flux_ratio"] == [[None, None], [None, None]]


def test_local_flux_error():
    truth = torch.rand(2, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    assert float(local_flux_error(truth, truth, window=7)) == 0.0
    assert float(local_flux_error(truth + 0.25, truth, window=7)) == pytest.approx(0.25)
    moved = truth.clone()
    moved[..., 10, 10], moved[..., 10, 11] = truth[..., 10, 11], truth[..., 10, 10]  # light moved by one pixel
    assert float(local_flux_error(moved, truth, window=24)) == pytest.approx(0.0, abs=1e-7)
    pred = (truth * 0.9).requires_grad_()
    local_flux_error(pred, truth, window=99).backward()  # window clipped to the image
    assert pred.grad is not None and float(pred.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match=re.escape("window: expected a positive number of pixels, got 0")):
        local_flux_error(truth, truth, window=0)


def test_geometry():
    g = point_source_geometry(15, jitter=0.25)
    assert g == {"aperture": 9.0, "annulus": [9.0, 13.0], "spacing": 7 + 13 + 2 + 0.5, "margin": 14.0, "jitter": 0.25}


Z = np.zeros((40, 40))
ONE = {"flux": [1], "fwhm": [1], "aspect": [1]}
BAD = [
    (lambda: measure_sources(np.zeros((3, 8, 8)), [(4, 4)], aperture=2),
     "image: expected one (H, W) image, got shape (3, 8, 8)"),
    (lambda: measure_sources(Z, [4, 4], aperture=2),
     "positions: expected shape (N, 2), (row, col) per source, got (2,)"),
    (lambda: measure_sources(Z, [(np.nan, 4)], aperture=2), "positions: expected finite (row, col)"),
    (lambda: measure_sources(Z, [(20, 20)], aperture=0), "aperture: expected a positive radius in pixels, got 0.0"),
    (lambda: measure_sources(Z, [(20, 20)], aperture=5, annulus=(4, 8)),
     "annulus: expected (inner, outer) radii with aperture 5 <= inner < outer, got (4, 8)"),
    (lambda: measure_sources(Z, [(20, 20), (3.2, 20)], aperture=5),
     "positions: source 1 at (row, col) = (3.2, 20) lies within 9 px (the annulus's outer radius) of the border of "
     "the (40, 40) image"),
    (lambda: field_bands([0.5], edges=[0.6, 0.3]), "edges: expected increasing positive field radii, got [0.6, 0.3]"),
    (lambda: point_source_field((64, 64), spacing=0, margin=4),
     "spacing: expected a positive distance in pixels, got 0"),
    (lambda: point_source_field((64, 64), spacing=8, margin=40),
     "margin: expected 0 <= margin < 31.5 px for a 64x64 sensor, got 40"),
    (lambda: point_source_field((64, 64), spacing=8, margin=4, jitter=1),
     "jitter: expected 0, or > 0 with an rng, got 1"),
    (lambda: flux_by_band(np.ones((4, 4)), np.ones((4, 5)), (8, 8)),
     "truth: expected the shape of pred (4, 4), got (4, 5)"),
    (lambda: point_source_geometry(0), "kernel_size: expected a positive number of pixels, got 0"),
    (lambda: summarise_by_band(ONE, ONE, [0.1, 0.2]),
     "measured: expected flux, fwhm and aspect of shape (2,) (one per h), got (1,)"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "message"), BAD)
def test_bad_input_messages(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_known_background_replaces_the_annulus():
    """A wide source reaches into the annulus, whose median then takes some of its light; a known background does
    not, and it needs only the aperture inside the image."""
    yy, xx = np.mgrid[:41, :41]
    wide = np.exp(-((yy - 20) ** 2 + (xx - 20) ** 2) / (2 * 5.0**2))  # sigma 5 px: wings at the annulus
    total = wide.sum()
    annulus = measure_sources(wide, [[20.0, 20.0]], aperture=12)["flux"][0]
    known = measure_sources(wide, [[20.0, 20.0]], aperture=12, background=0.0)["flux"][0]
    inside = 1 - np.exp(-(12**2) / (2 * 5.0**2))  # share of a Gaussian's light within 12 px
    assert annulus < 0.97 * known and known == pytest.approx(inside * total, rel=0.01)
    edge = measure_sources(wide, [[12.0, 20.0]], aperture=12, background=0.0)  # 12 px from the top: aperture fits
    assert np.isfinite(edge["flux"][0])
    with pytest.raises(ValueError, match="background: expected a finite value"):
        measure_sources(wide, [[20.0, 20.0]], aperture=12, background=float("nan"))
