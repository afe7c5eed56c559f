"""Zernike index conventions, RMS normalisation, orthogonality, poppy cross-check, torch path and errors."""

import re

import numpy as np
import pytest
import torch

from optisim.zernike import (
    ansi_to_nm,
    index_to_nm,
    mode_name,
    nm_to_ansi,
    nm_to_index,
    nm_to_noll,
    noll_to_nm,
    parse_convention,
    validate_nm,
    zernike_nm,
)

NOLL_TABLE = {
    1: (0, 0),
    2: (1, 1),
    3: (1, -1),
    4: (2, 0),
    5: (2, -2),
    6: (2, 2),
    7: (3, -1),
    8: (3, 1),
    9: (3, -3),
    10: (3, 3),
    11: (4, 0),
}
ANSI_TABLE = {0: (0, 0), 1: (1, -1), 2: (1, 1), 3: (2, -2), 4: (2, 0), 5: (2, 2)}


def random_disk_points(n_points, seed=0):
    rng = np.random.default_rng(seed)
    rho = np.sqrt(rng.uniform(0.0, 1.0, n_points)) * 0.999
    theta = rng.uniform(-np.pi, np.pi, n_points)
    return rho, theta


def disk_quadrature(n_radial=24, n_azimuthal=48):
    """Nodes and weights that integrate polynomials in (x, y) of modest degree exactly over the unit disk.

    Gauss-Legendre in rho on [0, 1] with the Jacobian rho folded into the weights, uniform in theta.
    The weights sum to pi (the disk area).
    """
    x, w = np.polynomial.legendre.leggauss(n_radial)
    rho = 0.5 * (x + 1.0)
    w_rho = 0.5 * w * rho
    theta = 2.0 * np.pi * np.arange(n_azimuthal) / n_azimuthal
    rr, tt = np.meshgrid(rho, theta, indexing="ij")
    weights = np.outer(w_rho, np.full(n_azimuthal, 2.0 * np.pi / n_azimuthal))
    return rr.ravel(), tt.ravel(), weights.ravel()


# -- index conventions ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("j", "nm"), sorted(NOLL_TABLE.items()))
def test_noll_known_values(j, nm):
    assert noll_to_nm(j) == nm
    assert nm_to_noll(*nm) == j


@pytest.mark.parametrize(("j", "nm"), sorted(ANSI_TABLE.items()))
def test_ansi_known_values(j, nm):
    assert ansi_to_nm(j) == nm
    assert nm_to_ansi(*nm) == j


def test_noll_round_trip_and_ordering():
    seen = set()
    for j in range(1, 201):
        n, m = noll_to_nm(j)
        assert validate_nm(n, m) == (n, m)
        assert nm_to_noll(n, m) == j
        seen.add((n, m))
        # Noll: within a radial order |m| does not decrease; even j are cosine (m >= 0), odd j sine (m <= 0)
        if m != 0:
            assert (m > 0) == (j % 2 == 0), (j, n, m)
        if j > 1:
            n_prev, m_prev = noll_to_nm(j - 1)
            assert n >= n_prev
            if n == n_prev:
                assert abs(m) >= abs(m_prev)
    assert len(seen) == 200
    # every (n, m) with n <= 18 appears exactly once among j = 1..190
    assert {noll_to_nm(j) for j in range(1, 191)} == {(n, m) for n in range(19) for m in range(-n, n + 1, 2)}


def test_ansi_round_trip():
    for j in range(0, 201):
        n, m = ansi_to_nm(j)
        assert validate_nm(n, m) == (n, m)
        assert nm_to_ansi(n, m) == j
        assert 2 * j == n * (n + 2) + m


def test_index_dispatch_by_convention():
    assert index_to_nm(3, "noll") == (1, -1)
    assert index_to_nm(3, "ANSI") == (2, -2)
    assert nm_to_index(2, -2, "noll") == 5
    assert nm_to_index(2, -2, "ansi") == 3
    assert parse_convention("Noll") == "noll"
    with pytest.raises(ValueError, match=re.escape("expected one of ('noll', 'ansi'), got 'fringe'")):
        parse_convention("fringe")


def test_numpy_integers_are_accepted():
    assert noll_to_nm(np.int64(6)) == (2, 2)
    assert nm_to_ansi(np.int32(2), np.int16(0)) == 4


def test_mode_names():
    assert mode_name(2, 0) == "defocus"
    assert mode_name(4, 0) == "primary spherical"
    assert mode_name(3, 1) == "horizontal coma"
    assert mode_name(5, 1) == "Z(5,1)"


@pytest.mark.parametrize("j", range(1, 37))
def test_noll_indices_agree_with_poppy(j):
    poppy_zernike = pytest.importorskip("poppy.zernike")
    assert noll_to_nm(j) == tuple(int(v) for v in poppy_zernike.noll_indices(j))


# -- values -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("j", range(1, 37))
def test_values_agree_with_poppy(j):
    poppy_zernike = pytest.importorskip("poppy.zernike")
    rho, theta = random_disk_points(200, seed=j)
    expected = np.asarray(poppy_zernike.zernike1(j, rho=rho, theta=theta), dtype=float)
    got = zernike_nm(*noll_to_nm(j), rho, theta)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-8)


def test_known_closed_forms():
    rho, theta = random_disk_points(50)
    np.testing.assert_allclose(zernike_nm(0, 0, rho, theta), 1.0, atol=1e-14)
    np.testing.assert_allclose(zernike_nm(1, 1, rho, theta), 2 * rho * np.cos(theta), atol=1e-14)
    np.testing.assert_allclose(zernike_nm(1, -1, rho, theta), 2 * rho * np.sin(theta), atol=1e-14)
    np.testing.assert_allclose(zernike_nm(2, 0, rho, theta), np.sqrt(3) * (2 * rho**2 - 1), atol=1e-14)
    np.testing.assert_allclose(zernike_nm(2, 2, rho, theta), np.sqrt(6) * rho**2 * np.cos(2 * theta), atol=1e-14)
    np.testing.assert_allclose(
        zernike_nm(3, 1, rho, theta), np.sqrt(8) * (3 * rho**3 - 2 * rho) * np.cos(theta), atol=1e-14
    )
    np.testing.assert_allclose(zernike_nm(4, 0, rho, theta), np.sqrt(5) * (6 * rho**4 - 6 * rho**2 + 1), atol=1e-13)


def test_orthonormal_on_unit_disk():
    rho, theta, weights = disk_quadrature()
    modes = [noll_to_nm(j) for j in range(1, 22)]
    values = np.stack([zernike_nm(n, m, rho, theta) for n, m in modes])  # (21, P)
    gram = (values * weights) @ values.T / np.pi  # mean over the disk
    np.testing.assert_allclose(gram, np.eye(len(modes)), rtol=0, atol=1e-10)


def test_edge_value_and_no_masking_outside_disk():
    # R_n^m(1) = 1 for every mode, so on the edge Z = norm * {1, cos, sin}
    theta = np.array([0.0])
    for n, m in [(2, 0), (4, 0), (3, 1), (5, 3)]:
        norm = np.sqrt(n + 1) if m == 0 else np.sqrt(2 * (n + 1))
        np.testing.assert_allclose(zernike_nm(n, m, np.array([1.0]), theta), norm, rtol=1e-12)
    # outside the disk the polynomial is returned as is: sqrt(3) (2 * 4 - 1) at rho = 2
    np.testing.assert_allclose(zernike_nm(2, 0, np.array([2.0]), theta), np.sqrt(3) * 7, rtol=1e-12)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match=re.escape("rho and theta: expected the same shape, got (3,) and (4,)")):
        zernike_nm(2, 0, np.zeros(3), np.zeros(4))


# -- torch ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("j", [1, 2, 4, 5, 8, 11, 12, 16, 22])
def test_torch_matches_numpy(j):
    n, m = noll_to_nm(j)
    rho, theta = random_disk_points(64, seed=100 + j)
    rho = rho.reshape(8, 8)
    theta = theta.reshape(8, 8)
    got = zernike_nm(n, m, torch.from_numpy(rho), torch.from_numpy(theta))
    assert isinstance(got, torch.Tensor)
    assert got.dtype == torch.float64
    assert got.shape == (8, 8)
    assert got.device == torch.device("cpu")
    np.testing.assert_allclose(got.numpy(), zernike_nm(n, m, rho, theta), rtol=0, atol=1e-13)


def test_torch_float32_keeps_dtype():
    rho, theta = random_disk_points(16)
    got = zernike_nm(3, -1, torch.from_numpy(rho).float(), torch.from_numpy(theta).float())
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), zernike_nm(3, -1, rho, theta), rtol=0, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_keeps_cuda_device():
    rho, theta = random_disk_points(16)
    got = zernike_nm(4, 2, torch.from_numpy(rho).cuda(), torch.from_numpy(theta).cuda())
    assert got.device.type == "cuda"
    np.testing.assert_allclose(got.cpu().numpy(), zernike_nm(4, 2, rho, theta), rtol=0, atol=1e-12)


@pytest.mark.parametrize("nm", [(2, 0), (3, 1), (4, -2), (6, 0)])
def test_torch_gradcheck(nm):
    gen = torch.Generator().manual_seed(0)
    rho = (0.1 + 0.8 * torch.rand(6, generator=gen, dtype=torch.float64)).requires_grad_(True)
    theta = (2 * torch.pi * torch.rand(6, generator=gen, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda r, t: zernike_nm(*nm, r, t), (rho, theta))


def test_torch_gradient_value():
    # d/drho of sqrt(3) (2 rho^2 - 1) is 4 sqrt(3) rho
    rho = torch.tensor([0.3, 0.7], dtype=torch.float64, requires_grad=True)
    zernike_nm(2, 0, rho, torch.zeros(2, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(rho.grad.numpy(), 4 * np.sqrt(3) * np.array([0.3, 0.7]), rtol=1e-12)


# -- errors -----------------------------------------------------------------------------------------------


def test_noll_below_one():
    with pytest.raises(ValueError, match=re.escape("must be >= 1")) as err:
        noll_to_nm(0)
    assert "got 0" in str(err.value)


def test_ansi_negative():
    with pytest.raises(ValueError, match=re.escape(">= 0")) as err:
        ansi_to_nm(-1)
    assert "got -1" in str(err.value)


def test_nm_parity():
    with pytest.raises(ValueError, match=re.escape("(n, m) = (2, 1) is not a Zernike index: n - |m| must be even")):
        nm_to_noll(2, 1)
    with pytest.raises(ValueError, match=re.escape("n - |m| must be even")):
        nm_to_ansi(4, 1)


def test_nm_m_too_large():
    with pytest.raises(ValueError, match=re.escape("(n, m) = (1, 3) is not a Zernike index: |m| must be <= n")):
        nm_to_noll(1, 3)


def test_nm_negative_n():
    with pytest.raises(ValueError, match=re.escape("n must be >= 0")):
        validate_nm(-2, 0)


@pytest.mark.parametrize("bad", [2.5, 2.0, "3", True, None])
def test_noll_rejects_non_integers(bad):
    with pytest.raises(TypeError, match="integer"):
        noll_to_nm(bad)


@pytest.mark.parametrize("bad", [1.0, False])
def test_ansi_and_nm_reject_non_integers(bad):
    with pytest.raises(TypeError, match="integer"):
        ansi_to_nm(bad)
    with pytest.raises(TypeError, match="integer"):
        nm_to_noll(bad, 0)


def test_zernike_nm_rejects_invalid_index():
    with pytest.raises(ValueError, match=re.escape("n - |m| must be even")):
        zernike_nm(3, 0, np.zeros(2), np.zeros(2))


def test_zernike_nm_rejects_float_index_after_valid_call():
    rho = np.array([0.5])
    zernike_nm(2, 0, rho, rho)  # a valid call fills the cache for (2, 0)
    with pytest.raises(TypeError, match="integer"):
        zernike_nm(2.0, 0, rho, rho)
    with pytest.raises(TypeError, match="integer"):
        zernike_nm(2, False, rho, rho)
