"""PSF physics: normalisation, Airy pattern, Strehl, symmetries, tilt, poppy, gradients, sampling errors."""

import math
import re

import numpy as np
import pytest
import torch

from optisim.lens import FieldModel, FieldTerm, list_presets, load_preset
from optisim.psf import PSFModel, check_pixel_sampling, compute_psfs, pupil_to_psf, strehl_ratio
from optisim.pupil import SamplingError, pupil_amplitude, pupil_coordinates, pupil_polar

LAM = 0.525  # µm, the default preset's wavelength
NA = 0.5
F64 = torch.float64


@pytest.fixture(scope="module")
def default_lens():
    return load_preset("default")


@pytest.fixture(scope="module")
def perfect():
    """The default preset without aberrations."""
    return load_preset("default").replace(aberrations=FieldModel())


def single_mode_psfs(lens, mode, coefficients_waves, *, size, normalize="window", oversample=1):
    """PSFs (float64 numpy) of a lens with one Zernike mode at the given coefficients (waves RMS)."""
    model = PSFModel(lens, [mode], size=size, oversample=oversample, dtype=F64)
    coeffs = torch.tensor([[c * LAM] for c in coefficients_waves], dtype=F64)
    return model(coeffs, normalize=normalize).numpy()


def rel_l2(a, b):
    return float(np.linalg.norm(np.ravel(a) - np.ravel(b)) / np.linalg.norm(np.ravel(b)))


# -- normalisation, shapes, dtypes --------------------------------------------------------------------------


def test_compute_psfs_shapes_dtypes_and_sums(default_lens):
    hx = np.array([0.0, 0.5, -0.9, 0.99])
    hy = np.array([0.0, -0.2, 0.9, 0.99])
    psf, energy = compute_psfs(default_lens, hx, hy, size=33)
    assert psf.shape == (4, 33, 33)
    assert psf.dtype == np.float32
    assert energy.shape == (4,)
    np.testing.assert_allclose(psf.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    assert np.all(psf >= 0)
    assert np.all((energy > 0) & (energy < 1))
    psf64, energy64 = compute_psfs(default_lens, hx, hy, size=33, dtype=F64)
    assert psf64.dtype == np.float64
    np.testing.assert_allclose(psf64.sum(axis=(1, 2)), 1.0, rtol=1e-12)
    np.testing.assert_allclose(psf, psf64, rtol=0, atol=1e-6)
    np.testing.assert_allclose(energy, energy64, rtol=1e-5)
    # more defocus at the edge spreads light out of the window
    assert energy64[0] > energy64[1] > energy64[3]


def test_energy_normalisation_sums_to_energy_in_window(default_lens):
    hx, hy = np.array([0.0, 0.7]), np.array([0.0, 0.7])
    _, energy = compute_psfs(default_lens, hx, hy, size=25, dtype=F64)
    modes = default_lens.aberrations.modes()
    model = PSFModel(default_lens, modes, size=25, dtype=F64)
    coeffs = torch.as_tensor(default_lens.zernike_um(hx, hy, modes), dtype=F64)
    psf_energy = model(coeffs, normalize="energy")
    np.testing.assert_allclose(psf_energy.sum(dim=(1, 2)).numpy(), energy, rtol=1e-12)
    assert np.all(energy < 1)
    # a bigger window holds more energy
    _, energy_big = compute_psfs(default_lens, hx, hy, size=49, dtype=F64)
    assert np.all(energy_big > energy)
    psf_window = model(coeffs)
    np.testing.assert_allclose(
        psf_window.numpy(), (psf_energy / psf_energy.sum(dim=(1, 2), keepdim=True)).numpy(), rtol=1e-12
    )


@pytest.mark.parametrize(("size", "oversample"), [(64, 1), (64, 2), (65, 1)])
def test_energy_over_one_alias_period_is_one(perfect, size, oversample):
    # A window exactly one alias period wide turns the matrix Fourier transform into a DFT: Parseval gives 1.
    n = 32
    period = n * LAM / (2 * NA)
    lens = perfect.replace(pupil_samples=n, pixel_size_um=period / size * (1 - 1e-12))
    model = PSFModel(lens, [(2, 0), (3, -1)], size=size, oversample=oversample, dtype=F64)
    psf = model(torch.tensor([[0.3, 0.1], [0.0, 0.0]], dtype=F64), normalize="energy")
    np.testing.assert_allclose(psf.sum(dim=(1, 2)).numpy(), 1.0, rtol=1e-10)


def test_peak_of_perfect_psf_is_pupil_area(perfect):
    # energy per unit area at the centre of an aberration-free PSF = pupil area in frequency space, π (NA/λ)²
    pixel = LAM / NA / 10
    psf = single_mode_psfs(
        perfect.replace(pupil_samples=128, pixel_size_um=pixel), (2, 0), [0.0], size=21, normalize="energy"
    )[0]
    assert np.unravel_index(np.argmax(psf), psf.shape) == (10, 10)
    assert psf.max() == pytest.approx(math.pi * (NA / LAM) ** 2 * pixel**2, rel=5e-3)


def test_batches_and_progress(default_lens):
    hx = np.linspace(-0.9, 0.9, 5)
    hy = np.linspace(0.9, -0.9, 5)
    calls = []
    psf_a, energy_a = compute_psfs(default_lens, hx, hy, size=17, dtype=F64, batch_size=2, progress=calls.append)
    psf_b, energy_b = compute_psfs(default_lens, hx, hy, size=17, dtype=F64)
    assert calls == [2, 2, 1]
    np.testing.assert_allclose(psf_a, psf_b, rtol=0, atol=1e-14)
    np.testing.assert_allclose(energy_a, energy_b, rtol=1e-13)
    single, _ = compute_psfs(default_lens, hx[3], hy[3], size=17, dtype=F64)
    assert single.shape == (1, 17, 17)
    np.testing.assert_allclose(single[0], psf_b[3], atol=1e-14)


def test_psf_model_float32_default(default_lens):
    model = PSFModel(default_lens, [(2, 0)], size=15)
    psf = model(torch.tensor([[0.1], [0.2], [0.3]]))
    assert psf.dtype == torch.float32
    assert psf.shape == (3, 15, 15)
    np.testing.assert_allclose(psf.sum(dim=(1, 2)).numpy(), 1.0, rtol=1e-5)


def test_broadband_is_weighted_sum_of_energy_psfs(perfect):
    lens = perfect.replace(
        pupil_samples=64,
        wavelengths_um=(0.5, 0.6),
        wavelength_weights=(1.0, 3.0),
        aberrations=FieldModel(terms=(FieldTerm((2, 0), 0.3), FieldTerm((3, 1), 0.1)), reference_wavelength_um=0.55),
    )
    coeffs = torch.as_tensor(lens.zernike_um(0.0, 0.0)[None], dtype=F64)
    modes = lens.aberrations.modes()
    psf = PSFModel(lens, modes, size=21, dtype=F64)(coeffs, normalize="energy")
    parts = [
        PSFModel(lens.replace(wavelengths_um=(wl,), wavelength_weights=()), modes, size=21, dtype=F64)(
            coeffs, normalize="energy"
        )
        for wl in (0.5, 0.6)
    ]
    np.testing.assert_allclose(psf.numpy(), (0.25 * parts[0] + 0.75 * parts[1]).numpy(), rtol=1e-12, atol=1e-16)


# -- Airy pattern -----------------------------------------------------------------------------------------


def test_airy_first_zero(perfect):
    pixel = LAM / NA / 40
    lens = perfect.replace(pixel_size_um=pixel, pupil_samples=256)
    psf = single_mode_psfs(lens, (2, 0), [0.0], size=121)[0]
    c = 121 // 2
    assert np.unravel_index(np.argmax(psf), psf.shape) == (c, c)
    profile = psf[c, c:]
    k = int(np.argmin(profile[: int(0.8 * LAM / NA / pixel)]))
    y0, y1, y2 = profile[k - 1 : k + 2]
    r_zero = (k + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)) * pixel
    assert r_zero == pytest.approx(0.6098 * LAM / NA, rel=0.01)
    assert profile[k] < 1e-3 * profile[0]
    # rotational symmetry: the profile along y and along the diagonal's radius agree with x
    np.testing.assert_allclose(psf[c:, c], profile, rtol=1e-9, atol=1e-15)


def test_airy_scales_with_wavelength_over_na(perfect):
    # doubling λ / NA (through NA) doubles the pattern: the PSF sampled at twice the pixel is the same
    lens_a = perfect.replace(pixel_size_um=0.05, pupil_samples=64)
    lens_b = perfect.replace(pixel_size_um=0.10, pupil_samples=64, na=0.25)
    a = single_mode_psfs(lens_a, (2, 0), [0.0], size=31)
    b = single_mode_psfs(lens_b, (2, 0), [0.0], size=31)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14)


# -- Strehl and Maréchal ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [(2, 0), (4, 0), (2, 2), (3, 1)])
def test_strehl_matches_marechal(perfect, mode):
    lens = perfect.replace(pixel_size_um=LAM / NA / 20, pupil_samples=128)
    sigmas = [0.02, 0.035, 0.05]
    psfs = single_mode_psfs(lens, mode, [0.0, *sigmas], size=41, normalize="energy")
    peak0 = psfs[0].max()
    for sigma, psf in zip(sigmas, psfs[1:], strict=True):
        measured = psf.max() / peak0
        assert measured == pytest.approx(math.exp(-((2 * math.pi * sigma) ** 2)), rel=0.02)
        aberrated = lens.replace(aberrations=FieldModel(terms=(FieldTerm(mode, sigma),)))
        assert float(strehl_ratio(aberrated, 0.0, 0.0)) == pytest.approx(measured, rel=0.02)


@pytest.mark.parametrize("sigma", [0.1, 0.3, 0.6])
def test_strehl_ratio_of_defocus_is_sinc_squared(perfect, sigma):
    # defocus W = σ √3 (2ρ² - 1): the on-axis intensity is sinc²(π √3 · 2σ) exactly (uniform pupil)
    lens = perfect.replace(pupil_samples=256, aberrations=FieldModel(terms=(FieldTerm((2, 0), sigma),)))
    x = 2 * math.pi * math.sqrt(3) * sigma
    assert float(strehl_ratio(lens, 0.0, 0.0)) == pytest.approx((math.sin(x) / x) ** 2, rel=0.01)


def test_strehl_ratio_ignores_tilt_and_broadcasts(default_lens):
    tilted = default_lens.replace(aberrations=FieldModel(distortion=0.5, terms=(FieldTerm((1, 1), 0.3),)))
    np.testing.assert_allclose(strehl_ratio(tilted, np.linspace(-1, 1, 4), 0.5), 1.0)
    s = strehl_ratio(default_lens, np.zeros((2, 3)), np.linspace(0, 0.99, 3))
    assert s.shape == (2, 3)
    assert s[0, 0] == pytest.approx(1.0)
    assert np.all(np.diff(s[0]) < 0)


# -- symmetries -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sym_lens(perfect):
    return perfect.replace(pixel_size_um=LAM / NA / 6, pupil_samples=64)


def max_rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("mode", [(2, 0), (4, 0)])
def test_rotationally_symmetric_modes(sym_lens, mode):
    psf = single_mode_psfs(sym_lens, mode, [0.4], size=33)[0]
    assert max_rel(psf[:, ::-1], psf) < 1e-8
    assert max_rel(psf[::-1, :], psf) < 1e-8
    assert max_rel(psf.T, psf) < 1e-8


def test_astigmatism_symmetry(sym_lens):
    psf = single_mode_psfs(sym_lens, (2, 2), [0.4], size=33)[0]
    assert max_rel(psf[:, ::-1], psf) < 1e-8
    assert max_rel(psf[::-1, :], psf) < 1e-8
    # out of focus the astigmatic PSF is elongated: with defocus it loses the x <-> y symmetry
    model = PSFModel(sym_lens, [(2, 2), (2, 0)], size=33, dtype=F64)
    both = model(torch.tensor([[0.4 * LAM, 0.3 * LAM]], dtype=F64))[0].numpy()
    assert max_rel(both.T, both) > 0.05
    assert max_rel(both[:, ::-1], both) < 1e-8


def test_coma_symmetry(sym_lens):
    psf = single_mode_psfs(sym_lens, (3, 1), [0.3], size=33)[0]
    assert max_rel(psf[::-1, :], psf) < 1e-8  # symmetric about the x axis
    assert max_rel(psf[:, ::-1], psf) > 0.1  # but the tail points along x
    psf_y = single_mode_psfs(sym_lens, (3, -1), [0.3], size=33)[0]
    assert max_rel(psf_y[:, ::-1], psf_y) < 1e-8
    assert max_rel(psf_y[::-1, :], psf_y) > 0.1
    assert max_rel(psf_y, psf.T) < 1e-8  # (3, -1) is (3, 1) rotated by 90 degrees


def test_even_size_puts_chief_ray_at_size_over_two(perfect):
    psf = single_mode_psfs(perfect.replace(pixel_size_um=LAM / NA / 6, pupil_samples=64), (4, 0), [0.2], size=32)[0]
    c = 16
    assert np.unravel_index(np.argmax(psf), psf.shape) == (c, c)
    np.testing.assert_allclose(psf[c, c + 1 :], psf[c, c - 1 : 0 : -1], rtol=1e-9)
    np.testing.assert_allclose(psf[c + 1 :, c], psf[c - 1 : 0 : -1, c], rtol=1e-9)


# -- tilt -------------------------------------------------------------------------------------------------


def centroid_um(psf, pixel):
    size = psf.shape[-1]
    x = (np.arange(size) - size // 2) * pixel
    return float((psf.sum(axis=0) * x).sum() / psf.sum()), float((psf.sum(axis=1) * x).sum() / psf.sum())


@pytest.mark.parametrize("a", [0.25, 0.5, -0.5])
def test_tilt_shifts_centroid(perfect, a):
    pixel = LAM / NA / 8
    lens = perfect.replace(pixel_size_um=pixel, pupil_samples=128)
    shift = 2 * abs(a) * LAM / NA
    psf_x = single_mode_psfs(lens, (1, 1), [a], size=65)[0]
    cx, cy = centroid_um(psf_x, pixel)
    assert abs(cx) == pytest.approx(shift, rel=0.03)
    assert abs(cy) < 1e-6 * shift
    psf_y = single_mode_psfs(lens, (1, -1), [a], size=65)[0]
    cx_y, cy_y = centroid_um(psf_y, pixel)
    assert abs(cy_y) == pytest.approx(shift, rel=0.03)
    assert abs(cx_y) < 1e-6 * shift
    assert np.sign(cx) == np.sign(cy_y)
    # positive and negative tilt move the PSF in opposite directions, by the same amount
    cx_neg, _ = centroid_um(single_mode_psfs(lens, (1, 1), [-a], size=65)[0], pixel)
    assert cx_neg == pytest.approx(-cx, rel=1e-9)


def test_tilt_sign_matches_poppy(perfect):
    from optisim.poppy_backend import poppy_psfs

    pixel = LAM / NA / 4
    for mode in [(1, 1), (1, -1)]:
        lens = perfect.replace(
            pixel_size_um=pixel, pupil_samples=64, aberrations=FieldModel(terms=(FieldTerm(mode, 0.5),))
        )
        ours, _ = compute_psfs(lens, 0.0, 0.0, size=33, dtype=F64)
        theirs = poppy_psfs(lens, 0.0, 0.0, size=33)
        c_ours, c_theirs = centroid_um(ours[0], pixel), centroid_um(theirs[0], pixel)
        axis = 0 if mode == (1, 1) else 1
        assert abs(c_theirs[axis]) > 0.5 * LAM / NA
        assert np.sign(c_ours[axis]) == np.sign(c_theirs[axis])
        np.testing.assert_allclose(c_ours, c_theirs, atol=1e-3 * pixel)


# -- poppy cross-check ------------------------------------------------------------------------------------

FIELD_HX = np.array([0.0, 0.5, 0.99])
FIELD_HY = np.array([0.0, -0.3, 0.99])


@pytest.mark.parametrize("name", list_presets())
@pytest.mark.parametrize(("size", "oversample"), [(33, 1), (32, 1), (33, 2), (32, 2)])
def test_agrees_with_poppy(name, size, oversample):
    from optisim.poppy_backend import poppy_psfs

    lens = load_preset(name).replace(pupil_samples=64)
    ours, _ = compute_psfs(lens, FIELD_HX, FIELD_HY, size=size, oversample=oversample, dtype=F64)
    theirs = poppy_psfs(lens, FIELD_HX, FIELD_HY, size=size, oversample=oversample)
    assert theirs.shape == ours.shape == (3, size, size)
    for i in range(3):
        assert rel_l2(ours[i], theirs[i]) <= 1e-3, (name, i)


def test_poppy_comparison_is_sensitive():
    # the cross-check can fail: a transposed or mirrored PSF of an asymmetric lens is far from poppy's
    from optisim.poppy_backend import poppy_psfs

    lens = load_preset("oil-100x-1.4").replace(pupil_samples=64)
    ours, _ = compute_psfs(lens, 0.9, -0.6, size=33, dtype=F64)
    theirs = poppy_psfs(lens, 0.9, -0.6, size=33)
    assert rel_l2(ours[0], theirs[0]) <= 1e-3
    assert rel_l2(ours[0].T, theirs[0]) > 1e-2
    assert rel_l2(ours[0][:, ::-1], theirs[0]) > 1e-2
    assert rel_l2(ours[0][::-1, :], theirs[0]) > 1e-2


# -- differentiability ------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", ["window", "energy"])
def test_gradcheck(default_lens, normalize):
    lens = default_lens.replace(pupil_samples=32)
    model = PSFModel(lens, [(2, 0), (3, 1)], size=9, dtype=F64)
    coeffs = torch.tensor([[0.1, 0.05], [-0.2, 0.1]], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: model(c, normalize=normalize), (coeffs,))


def test_gradients_flow_in_float32(default_lens):
    lens = default_lens.replace(pupil_samples=32)
    weights = torch.linspace(0, 1, 81).reshape(9, 9)
    grads = {}
    for dtype in (torch.float32, F64):
        model = PSFModel(lens, [(2, 0), (3, 1)], size=9, dtype=dtype)
        coeffs = torch.tensor([[0.1, 0.05], [-0.2, 0.1]], dtype=dtype, requires_grad=True)
        (model(coeffs) * weights.to(dtype)).sum().backward()
        grads[dtype] = coeffs.grad
    assert grads[torch.float32].dtype == torch.float32
    assert torch.all(torch.isfinite(grads[torch.float32]))
    assert grads[torch.float32].abs().max() > 0
    np.testing.assert_allclose(grads[torch.float32].numpy(), grads[F64].numpy(), rtol=1e-3, atol=1e-5)


# -- argument checks and sampling errors -------------------------------------------------------------------


def test_psf_model_argument_errors(default_lens):
    with pytest.raises(ValueError, match=re.escape("size: expected a positive number of pixels, got 0")):
        PSFModel(default_lens, [(2, 0)], size=0)
    with pytest.raises(ValueError, match=re.escape("oversample: expected a positive integer, got 1.5")):
        PSFModel(default_lens, [(2, 0)], size=9, oversample=1.5)
    model = PSFModel(default_lens.replace(pupil_samples=32), [(2, 0), (3, 1)], size=9)
    expected = "coefficients_um: expected shape (B, 2) for modes [(2, 0), (3, 1)], got (2,)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        model(torch.zeros(2))
    with pytest.raises(ValueError, match=re.escape("normalize: expected 'window' or 'energy', got 'peak'")):
        model(torch.zeros(1, 2), normalize="peak")
    with pytest.raises(ValueError, match=re.escape("pupil: expected shape (B, 32, 32), got (32, 32)")):
        pupil_to_psf(torch.zeros(32, 32, dtype=torch.complex64), model.mfts[0])


def test_undersampled_pixel(default_lens):
    lens = default_lens.replace(pixel_size_um=0.3)
    expected = "pixel size 0.3 µm undersamples the PSF (Nyquist limit 0.2625 µm for NA 0.5 at 0.525 µm)"
    with pytest.raises(SamplingError, match=re.escape(expected)) as err:
        compute_psfs(lens, 0.0, 0.0, size=17)
    assert isinstance(err.value, ValueError)
    assert "Nyquist limit" in str(err.value)
    psf, _ = compute_psfs(lens, 0.0, 0.0, size=17, allow_undersampled=True)
    assert psf.shape == (1, 17, 17)
    # exactly at the Nyquist limit is accepted
    check_pixel_sampling(default_lens.replace(pixel_size_um=LAM / (4 * NA)))


def test_pupil_too_coarse_for_aberration(default_lens):
    lens = default_lens.replace(pupil_samples=16, aberrations=FieldModel(terms=(FieldTerm((2, 0), 3.0),)))
    with pytest.raises(SamplingError, match=r"pupil sampling 16 is too coarse .* use at least \d+ pupil samples"):
        compute_psfs(lens, 0.0, 0.0, size=17)
    # the same wavefront on a finer pupil is fine
    psf, _ = compute_psfs(lens.replace(pupil_samples=128), 0.0, 0.0, size=17)
    assert np.isfinite(psf).all()


def test_wavefront_step_reports_the_worst_field_point(default_lens):
    lens = default_lens.replace(pupil_samples=24, aberrations=FieldModel(field_curvature=1.5))
    with pytest.raises(SamplingError, match=re.escape("too coarse for the aberrations at field (0.9, 0.9)")):
        compute_psfs(lens, np.array([0.0, 0.9, 0.1]), np.array([0.0, 0.9, 0.1]), size=17)


@pytest.mark.parametrize("waves", [2.0, 3.0])
def test_pupil_sampling_advice_is_enough(default_lens, waves):
    lens = default_lens.replace(pupil_samples=16, aberrations=FieldModel(terms=(FieldTerm((2, 0), waves),)))
    with pytest.raises(SamplingError) as err:
        compute_psfs(lens, 0.0, 0.0, size=17)
    need = int(re.search(r"use at least (\d+) pupil samples", str(err.value)).group(1))
    compute_psfs(lens.replace(pupil_samples=need), 0.0, 0.0, size=17)  # following the advice must work


def test_window_exceeds_alias_free_field(default_lens):
    lens = default_lens.replace(pupil_samples=32)  # alias-free field 32 * 0.525 / (2 * 0.5) = 16.8 µm
    expected = "PSF window of 80 pixels (20 µm) exceeds the alias-free field 16.8 µm of 32 pupil samples"
    with pytest.raises(SamplingError, match=re.escape(expected)) as err:
        PSFModel(lens, [(2, 0)], size=80)
    need = int(re.search(r"use at least (\d+) pupil samples", str(err.value)).group(1))
    assert need == 39
    PSFModel(lens.replace(pupil_samples=need), [(2, 0)], size=80)  # the advice is enough
    with pytest.raises(SamplingError, match="exceeds the alias-free field"):
        compute_psfs(lens, 0.0, 0.0, size=80)


# -- pupil helpers ------------------------------------------------------------------------------------------


def test_pupil_grid_and_apodisation():
    u = pupil_coordinates(8)
    np.testing.assert_allclose(u, (np.arange(8) - 3.5) / 4)
    _, theta, mask = pupil_polar(8)
    assert mask.sum() == 52  # cell centres inside the unit circle on an 8 x 8 grid
    assert theta[4, 7] == pytest.approx(math.atan2(u[4], u[7]))
    edge = np.array([0.0, 1.0, 1.01])
    np.testing.assert_allclose(pupil_amplitude(edge), [1, 1, 0])
    np.testing.assert_allclose(
        pupil_amplitude(edge, apodisation="aplanatic", na=1.2, immersion_index=1.333),
        [1, (1 - (1.2 / 1.333) ** 2) ** -0.25, 0],
    )
    np.testing.assert_allclose(pupil_amplitude(edge, apodisation="gaussian", sigma=0.5), [1, math.exp(-2), 0])
    with pytest.raises(ValueError, match=re.escape("sigma: gaussian apodisation needs a positive width")):
        pupil_amplitude(edge, apodisation="gaussian")
    with pytest.raises(ValueError, match=re.escape("apodisation: expected 'none', 'aplanatic' or 'gaussian', got 'x'")):
        pupil_amplitude(edge, apodisation="x")


# -- device -----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    lens = load_preset("water-60x-1.2").replace(pupil_samples=64)
    hx, hy = np.array([0.0, 0.9]), np.array([0.0, -0.7])
    cpu, e_cpu = compute_psfs(lens, hx, hy, size=33, dtype=F64)
    gpu, e_gpu = compute_psfs(lens, hx, hy, size=33, dtype=F64, device="cuda")
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-12)
    np.testing.assert_allclose(e_gpu, e_cpu, rtol=1e-10)
    model = PSFModel(lens, [(2, 0)], size=9, device="cuda")
    out = model(torch.zeros(1, 1, device="cuda"))
    assert out.device.type == "cuda"
    assert out.dtype == torch.float32
