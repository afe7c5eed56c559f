"""Rotationally symmetric PSF fields (optisim.symmetry): conventions, the fitted optical centre, extrapolation."""

from __future__ import annotations

import numpy as np
import pytest
from shared_helpers import disc_points, elongated_psfs

from optisim.lowrank import EigenPSFs
from optisim.psfmodel import eigen_psfs_from_samples
from optisim.symmetry import (
    MIN_RADII,
    fit_optical_centre,
    polar_field,
    rotate_psfs,
    rotational_psfs_from_samples,
)

SENSOR = (512, 512)  # 256 px per normalised field unit
CENTRE = (0.05, -0.06)  # (cy, cx): the optical axis 13 px below and 15 px left of the sensor centre


def correlation(a, b) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


@pytest.fixture(scope="module")
def inner_beads():
    """40 noisy beads in the inner half of the field (r <= 0.5) of a radially elongating instrument."""
    hy, hx = disc_points(40, 0.05, 0.5, seed=1)
    return elongated_psfs(hx, hy, centre=CENTRE, noise=0.01), hy, hx


@pytest.fixture(scope="module")
def fitted_centre(inner_beads):
    psfs, hy, hx = inner_beads
    return fit_optical_centre(psfs, hy, hx, SENSOR, bootstrap=8)


def test_polar_field_and_rotation_follow_the_documented_convention():
    r, theta = polar_field([1.0, 0.0], [0.0, 1.0], (0.0, 0.0))
    np.testing.assert_allclose(r, [1, 1])
    np.testing.assert_allclose(theta, [0, np.pi / 2])  # +y (down the rows) is +90 degrees
    k = np.zeros((1, 7, 7))
    k[0, 3, 4] = 1.0  # a feature at (dy, dx) = (0, 1)
    rotated = rotate_psfs(k, np.pi / 2)[0]
    assert np.unravel_index(np.argmax(rotated), rotated.shape) == (4, 3)  # moves to (sin, cos) = (1, 0)
    np.testing.assert_allclose(rotate_psfs(k, 0.0), k, atol=1e-12)


def test_centre_recovered_within_two_pixels(fitted_centre):
    (cy, cx), (sy, sx) = fitted_centre
    error_px = 256 * np.hypot(cy - CENTRE[0], cx - CENTRE[1])
    assert error_px < 2.0, error_px  # measured: 1.0 px
    assert 0 < sy < 0.05 and 0 < sx < 0.05  # bootstrap sigma, normalised field; measured: 0.004, 0.003


def test_rotational_model_extrapolates_to_the_edge_better_than_no_symmetry(inner_beads, fitted_centre):
    psfs, hy, hx = inner_beads
    model = rotational_psfs_from_samples(psfs, hy, hx, SENSOR, centre=fitted_centre[0], rank=4)
    plain = eigen_psfs_from_samples(psfs, hy, hx, SENSOR, rank=4)
    oy, ox = disc_points(30, 0.7, 1.0, seed=2)  # outer field, no bead there
    truth = elongated_psfs(ox, oy, centre=CENTRE)
    rot, none = correlation(truth, model.psfs_at(ox, oy)), correlation(truth, plain.psfs_at(ox, oy))
    assert np.median(rot) >= 0.97 and rot.min() >= 0.9, (np.median(rot), rot.min())  # measured: 0.986, 0.931
    assert np.median(rot) > np.median(none) + 0.02, (np.median(rot), np.median(none))  # measured: 0.943 without
    np.testing.assert_allclose(model.psfs_at(ox, oy).sum(axis=(1, 2)), 1.0, rtol=1e-9)


def test_to_eigen_psfs_is_the_operators_model_within_its_tolerance(inner_beads, fitted_centre):
    psfs, hy, hx = inner_beads
    model = rotational_psfs_from_samples(psfs, hy, hx, SENSOR, centre=fitted_centre[0], rank=4)
    eigen = model.to_eigen_psfs(grid=(15, 15), tol=0.02)
    assert isinstance(eigen, EigenPSFs) and eigen.relative_error <= 0.02
    assert eigen.rank < model.rank * 15  # rotation costs eigen-PSFs, but far fewer than one per grid point
    fy, fx = eigen.field_y[[2, 7, 12]], eigen.field_x[[3, 7, 11]]  # on the grid: the factoring error only
    yy, xx = (v.ravel() for v in np.meshgrid(fy, fx, indexing="ij"))
    assert correlation(model.psfs_at(xx, yy), eigen.psfs_at(xx, yy)).min() > 0.99
    d = model.to_dict()
    assert d["rank"] == 4 and d["bead_radius_range"][0] < d["bead_radius_range"][1] <= 0.6


def test_asymmetric_part_explains_what_the_symmetry_does_not():
    hy, hx = disc_points(40, 0.05, 0.9, seed=3)
    psfs = elongated_psfs(hx, hy, axis="x")  # a tilted, non-symmetric instrument
    sym = rotational_psfs_from_samples(psfs, hy, hx, SENSOR, centre=(0, 0), rank=3)
    both = rotational_psfs_from_samples(psfs, hy, hx, SENSOR, centre=(0, 0), rank=3, asymmetric_rank=3)
    err_sym = np.linalg.norm(sym.psfs_at(hx, hy) - psfs) / np.linalg.norm(psfs)
    err_both = np.linalg.norm(both.psfs_at(hx, hy) - psfs) / np.linalg.norm(psfs)
    assert err_both < 0.7 * err_sym, (err_both, err_sym)
    assert both.to_dict()["asymmetric_rank"] == 3


def test_bad_input_is_a_clear_error(inner_beads):
    psfs, hy, hx = inner_beads
    with pytest.raises(ValueError, match="odd side"):
        rotational_psfs_from_samples(psfs[:, :20, :20], hy, hx, SENSOR, centre=(0, 0))
    with pytest.raises(ValueError, match="one field point per PSF"):
        rotational_psfs_from_samples(psfs, hy[:-1], hx, SENSOR, centre=(0, 0))
    with pytest.raises(ValueError, match=f"{MIN_RADII} or more distinct field radii.*--symmetry none"):
        ring = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        rotational_psfs_from_samples(psfs[:12], 0.3 * np.sin(ring), 0.3 * np.cos(ring), SENSOR, centre=(0, 0))
    with pytest.raises(ValueError, match="rank: expected"):
        rotational_psfs_from_samples(psfs, hy, hx, SENSOR, centre=(0, 0), rank=0)
    with pytest.raises(ValueError, match=r"at least \d+ beads, got 3; use --symmetry none"):
        fit_optical_centre(psfs[:3], hy[:3], hx[:3], SENSOR)
    bad = psfs.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        rotational_psfs_from_samples(bad, hy, hx, SENSOR, centre=(0, 0))
    with pytest.raises(ValueError, match="grid"):
        rotational_psfs_from_samples(psfs, hy, hx, SENSOR, centre=(0, 0)).to_eigen_psfs(grid=(3, 3))
