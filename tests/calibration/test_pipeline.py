"""Pipeline choices that are not covered by the end-to-end tests: the empirical model's rank."""

from __future__ import annotations

import numpy as np

from calibration.pipeline import ModelConfig, empirical_rank
from optisim.lowrank import rank_for_tolerance


def _gaussian(size: int, sy: float, sx: float) -> np.ndarray:
    y, x = np.mgrid[:size, :size] - size // 2
    g = np.exp(-(y**2) / (2 * sy**2) - x**2 / (2 * sx**2))
    return g / g.sum()


def test_cross_validated_rank_ignores_noise():
    """PSFs that are mixtures of two shapes, varying smoothly over the field, plus pixel noise: the eigen-PSFs of
    the noisy beads themselves need many more terms for a 1e-3 fit, but unseen beads are predicted best with 2."""
    rng = np.random.default_rng(0)
    n, size = 40, 21
    hy, hx = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
    a = 0.5 + 0.4 * hx * hy
    psfs = a[:, None, None] * _gaussian(size, 1.5, 1.5) + (1 - a)[:, None, None] * _gaussian(size, 1.5, 4.0)
    psfs = psfs + rng.normal(0, 0.01 * psfs.max(), psfs.shape)
    rank, errors = empirical_rank(psfs, hy, hx, (256, 256), ModelConfig())
    assert rank == 2, errors
    assert len(errors) == 20 and errors[1] < errors[0] and errors[1] <= min(errors)
    s = np.linalg.svd(psfs.reshape(n, -1), compute_uv=False)
    assert rank_for_tolerance(s, 1e-3) > 10  # what an in-sample tolerance keeps


def test_too_few_beads_for_cross_validation():
    psfs = np.ones((4, 5, 5)) / 25
    assert empirical_rank(psfs, np.zeros(4), np.linspace(-1, 1, 4), (64, 64), ModelConfig()) == (3, [])


def test_dense_beads_get_a_hint():
    from pathlib import Path

    from calibration.io import BeadStack
    from calibration.optics import Optics, nominal_lens
    from calibration.pipeline import detect_all
    from optisim.aberrations import FieldModel
    from optisim.beads import simulate_bead_image
    from optisim.lens import load_preset

    lens = load_preset("default").replace(sensor_shape=(128, 128), aberrations=FieldModel())  # compact beads
    image, _ = simulate_bead_image(
        lens, 40, rng=np.random.default_rng(0), photons=(4e4, 6e4), min_separation=6, margin=12
    )
    stack = BeadStack(image, Path("dense.tif"), 0.25, None, 65535.0, {})
    nominal = nominal_lens(Optics(wavelength_um=0.525, na=0.5), (128, 128), file_pixel_um=0.25, source="x")
    lines = []
    detections, _, _ = detect_all([stack], nominal, ModelConfig(), echo=lines.append)
    close = sum(b.category == "too close" for b in detections[0].beads)
    assert close >= len(detections[0].beads) / 3
    assert any("rejected as too close" in line and "--min-separation" in line for line in lines), lines
    lines.clear()
    sparse, _ = simulate_bead_image(lens, 3, rng=np.random.default_rng(0), photons=(4e4, 6e4))
    detect_all([BeadStack(sparse, Path("s.tif"), 0.25, None, 65535.0, {})], nominal, ModelConfig(), echo=lines.append)
    assert not any("too close" in line for line in lines), lines
