"""Empirical field models with and without rotational symmetry (calibration.empirical) and their validation by
band, by radial hold-out and by bootstrap coverage (calibration.validate)."""

from __future__ import annotations

import numpy as np
import pytest
from shared_helpers import disc_points, elongated_psfs

from calibration.empirical import build_model, choose_model, cross_validated_errors, forward_model
from calibration.pipeline import ModelConfig, forward_tolerance
from calibration.validate import (
    band_labels,
    bead_distance,
    bootstrap_coverage,
    by_band,
    psf_correlation,
    radial_split,
    radial_validation,
    reference_spread,
)
from optisim.coverage import LOW_CONFIDENCE, SPREAD_SCALE

SENSOR = (512, 512)
CENTRE = (0.05, -0.06)


@pytest.fixture(scope="module")
def symmetric():
    """36 noisy beads over the field of a radially elongating instrument, and their field points."""
    hy, hx = disc_points(36, 0.05, 0.95, seed=4)
    return elongated_psfs(hx, hy, centre=CENTRE, noise=0.01, seed=4), hy, hx


def test_auto_chooses_rotational_for_a_symmetric_instrument(symmetric):
    psfs, hy, hx = symmetric
    fit = choose_model(psfs, hy, hx, SENSOR, centre_bootstrap=4)
    assert fit.symmetry == "rotational", fit.reason
    assert min(fit.errors["rotational"]) < min(fit.errors["none"])
    assert 256 * np.hypot(fit.centre[0] - CENTRE[0], fit.centre[1] - CENTRE[1]) < 2.0
    d = fit.to_dict(SENSOR)
    assert d["symmetry"] == "rotational" and "per-bead difference" in d["reason"]
    row, col = d["optical_centre"]["pixel_row_col"]
    assert abs(row - (255.5 + 256 * CENTRE[0])) < 2 and abs(col - (255.5 + 256 * CENTRE[1])) < 2
    eigen = forward_model(fit, (9, 9), tol=0.02)  # what the blur operator takes
    assert eigen.field_y.size >= 15 and eigen.relative_error <= 0.02


def test_auto_chooses_none_for_a_tilted_instrument():
    hy, hx = disc_points(36, 0.05, 0.95, seed=5)
    psfs = elongated_psfs(hx, hy, axis="x", noise=0.01, seed=5)
    fit = choose_model(psfs, hy, hx, SENSOR, centre_bootstrap=0)
    assert fit.symmetry == "none", fit.reason
    assert fit.centre is None and "optical_centre" not in fit.to_dict(SENSOR)
    assert forward_model(fit) is fit.model


def test_asked_symmetry_is_kept_and_cross_validation_needs_beads(symmetric):
    psfs, hy, hx = symmetric
    fit = choose_model(psfs, hy, hx, SENSOR, symmetry="none")
    assert fit.symmetry == "none" and fit.reason == "--symmetry none (as asked)" and set(fit.errors) == {"none"}
    assert cross_validated_errors(psfs[:5], hy[:5], hx[:5], SENSOR, symmetry="none") == []
    errors = cross_validated_errors(psfs, hy, hx, SENSOR, symmetry="rotational")  # centre fitted per fold
    assert len(errors) >= 5 and all(0 < e < 1 for e in errors)


def test_rotational_errors_name_the_way_out(symmetric):
    psfs, hy, hx = symmetric
    with pytest.raises(ValueError, match=r"outside the 512x512 sensor.*use --symmetry none"):
        choose_model(psfs, hy, hx, SENSOR, symmetry="rotational", centre=(3.0, 0.0))
    with pytest.raises(ValueError, match="at least 6 beads, got 4; use --symmetry none"):
        choose_model(psfs[:4], hy[:4], hx[:4], SENSOR, symmetry="rotational")
    with pytest.raises(ValueError, match="symmetry: expected one of"):
        choose_model(psfs, hy, hx, SENSOR, symmetry="mirror")
    with pytest.raises(ValueError, match="symmetry: expected one of"):
        build_model(psfs, hy, hx, SENSOR, symmetry="auto", rank=2)
    with pytest.raises(ValueError, match="symmetry: expected one of"):
        ModelConfig(symmetry="mirror")
    with pytest.raises(ValueError, match="bootstrap"):
        ModelConfig(bootstrap=1)
    with pytest.raises(ValueError, match="radial_holdout"):
        ModelConfig(radial_holdout=1.0)
    # auto falls back to none, and says why, when the rotational model cannot be fitted
    fit = choose_model(psfs[:5], hy[:5], hx[:5], SENSOR)
    assert fit.symmetry == "none" and fit.reason.startswith("no rotational model: ")


def test_bands_and_radial_split():
    assert band_labels() == ["h<0.35", "0.35-0.6", "0.6-0.85", "h>0.85"]
    bands = by_band([0.9, 0.8, 0.7, 0.6, 0.5], [0.1, 0.2, 0.5, 0.7, 0.9])
    assert bands["h<0.35"] == {"beads": 2, "median": pytest.approx(0.85), "min": 0.8, "max": 0.9}
    assert bands["h>0.85"]["beads"] == 1 and bands["0.6-0.85"]["median"] == 0.6
    outer, inner_radius = radial_split(np.linspace(0, 1, 20), 0.25)
    assert outer.sum() == 5 and outer[-5:].all() and inner_radius == pytest.approx(14 / 19)
    with pytest.raises(ValueError, match="need at least 3 of each"):
        radial_split(np.linspace(0, 1, 8), 0.25)
    with pytest.raises(ValueError, match="radial_holdout: expected a fraction"):
        radial_split(np.linspace(0, 1, 8), 1.5)
    p = elongated_psfs([0.1, 0.9], [0.0, 0.0])
    np.testing.assert_allclose(psf_correlation(p, p), 1.0)
    assert psf_correlation(p, p[::-1])[0] < 0.99


def test_radial_holdout_shows_the_symmetric_model_extrapolates_better(symmetric):
    psfs, hy, hx = symmetric
    out = radial_validation(psfs, hy, hx, SENSOR, fraction=0.25)
    assert out["outer_beads"] == 9 and 0.5 < out["inner_radius"] < 0.95
    rot, none = out["models"]["rotational"], out["models"]["none"]
    assert rot["psf_correlation"]["beads"] == 9 and rot["by_band"]["h<0.35"]["beads"] == 0
    assert rot["psf_correlation"]["median"] > none["psf_correlation"]["median"], out


def test_coverage_is_lower_away_from_the_beads():
    hy, hx = disc_points(30, 0.0, 0.45, seed=6)  # beads in the inner field only
    psfs = elongated_psfs(hx, hy, axis="x", noise=0.01, seed=6)

    def builder(idx):
        return build_model(psfs[idx], hy[idx], hx[idx], SENSOR, symmetry="none", rank=3)

    cov = bootstrap_coverage(builder, hy, hx, SENSOR, symmetry="none", n=8, grid=(9, 9))
    conf = cov.confidence
    centre, corners = conf[3:6, 3:6].mean(), conf[[0, 0, -1, -1], [0, -1, 0, -1]].mean()
    assert centre > LOW_CONFIDENCE > corners, (centre, corners)
    assert cov.psf_spread[[0, 0, -1, -1], [0, -1, 0, -1]].mean() > cov.psf_spread[3:6, 3:6].mean()
    assert cov.spread_scale >= SPREAD_SCALE
    assert reference_spread(cov.psf_spread, cov.bead_distance) <= np.median(cov.psf_spread)
    assert forward_tolerance(cov) == pytest.approx(np.clip(reference_spread(cov.psf_spread, cov.bead_distance) / 4,
                                                          0.01, 0.05))  # fmt: skip
    assert forward_tolerance(None) == 0.01
    # a rotational model's coverage: distance in field radius about the optical centre
    d = bead_distance(np.array([0.0, 0.0]), np.array([0.3, -0.3]), np.array([0.3]), np.array([0.0]), centre=(0, 0))
    np.testing.assert_allclose(d, [0.0, 0.0])
    with pytest.raises(ValueError, match="at least 2 resamplings"):
        bootstrap_coverage(builder, hy, hx, SENSOR, symmetry="none", n=1)
