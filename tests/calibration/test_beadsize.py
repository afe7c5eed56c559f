"""Finite beads in the empirical path: the bead kernel, its removal from measured PSFs, and the bead-size checks."""

import math

import numpy as np
import pytest
from scipy.signal import fftconvolve
from scipy.special import j1

from calibration.beadsize import bead_kernel, check_bead_size, deconvolve_bead, estimate_psf_noise, remove_bead
from calibration.measure import bead_fwhm
from optisim.beads import sphere_transfer

OVERSAMPLE = 4  # the simulated bead images are drawn on a 4x finer grid and binned: not the kernel's own model


def _fwhm(psf: np.ndarray) -> float:
    c = psf.shape[-1] // 2
    return float(bead_fwhm(psf, np.array([[c, c]]), window=psf.shape[-1])[0, 2])


def _fine_psf(kind: str, width_px: float, w: int) -> np.ndarray:
    """(w s, w s) PSF on the fine grid (energy per fine pixel, sums to 1): Gaussian of FWHM ``width_px`` or an Airy
    pattern of ``λ / NA = width_px`` (FWHM 0.51 of it), in coarse pixels."""
    s = OVERSAMPLE
    x = (np.arange(w * s) + 0.5) / s - w / 2
    r = np.hypot(x[:, None], x[None, :])
    if kind == "gauss":
        p = np.exp(-0.5 * (r / (width_px / 2.3548)) ** 2)
    else:
        v = 2 * np.pi * np.maximum(r, 1e-9) / width_px
        p = (2 * j1(v) / v) ** 2
    return p / p.sum()


def _bin(fine: np.ndarray, w: int) -> np.ndarray:
    return fine.reshape(w, OVERSAMPLE, w, OVERSAMPLE).sum(axis=(1, 3))


def _bead_images(kind, width_px, d_px, *, w=31, n=3, snr=300.0, seed=0):
    """Truth PSFs (w, w) and n noisy, clipped, normalised bead images (n, w, w) like centred_psfs gives, with the
    per-PSF noise sigma (n,). The bead is convolved on the fine grid, then the image is binned to pixels."""
    fine = _fine_psf(kind, width_px, w)
    size = OVERSAMPLE * (2 * math.ceil(d_px / 2) + 1)
    size += size % 2 == 0
    blurred = _bin(fftconvolve(fine, bead_kernel(d_px * OVERSAMPLE, size), mode="same"), w)
    truth = _bin(fine, w)
    sigma = blurred.max() / snr
    rng = np.random.default_rng(seed)
    y = np.clip(blurred + rng.normal(0.0, sigma, (n, w, w)), 0.0, None)
    sums = y.sum(axis=(1, 2))
    return truth, y / sums[:, None, None], sigma / sums


# --- bead_kernel -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [0.0, 0.4, 1.0, 2.5, 7.0, 15.0])
def test_kernel_sums_to_one_non_negative_centred(d):
    k = bead_kernel(d, 15)
    assert k.shape == (15, 15) and k.dtype == np.float64
    assert k.sum() == pytest.approx(1.0, abs=1e-12)
    assert k.min() >= 0
    assert k[7, 7] == k.max()
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-15)
    np.testing.assert_allclose(k, k.T, atol=1e-15)


@pytest.mark.parametrize("d", [0.0, 0.5, 1.0])
def test_kernel_of_a_bead_inside_one_pixel_is_a_delta(d):
    k = bead_kernel(d, 5)
    assert k[2, 2] == 1.0 and k.sum() == 1.0


def test_kernel_is_wider_for_a_larger_bead_and_the_same_in_confocal():
    a, b = bead_kernel(3.0, 15), bead_kernel(8.0, 15)
    x2 = (np.arange(15) - 7.0) ** 2
    assert (b.sum(0) * x2).sum() > (a.sum(0) * x2).sum()
    np.testing.assert_array_equal(bead_kernel(5.0, 11, modality="confocal"), bead_kernel(5.0, 11))


@pytest.mark.parametrize("d", [2.0, 4.5, 9.0])
def test_kernel_fourier_transform_is_sphere_transfer_times_the_pixel(d):
    """DFT of the kernel = sum over aliases k of T(|f + k|) sinc(fy + ky) sinc(fx + kx), f in cycles per pixel
    (T = optisim.beads.sphere_transfer with the diameter in pixels): the pixel integration of the projected sphere."""
    n = 33
    k = bead_kernel(d, n)
    dft = np.fft.fft2(np.fft.ifftshift(k))
    f = np.fft.fftfreq(n)
    expected = np.zeros((n, n))
    for ay in range(-10, 11):
        for ax in range(-10, 11):
            fy, fx = f[:, None] + ay, f[None, :] + ax
            expected += sphere_transfer(np.hypot(fy, fx), d) * np.sinc(fy) * np.sinc(fx)
    assert np.abs(dft.imag).max() < 1e-12
    assert np.abs(dft.real - expected).max() < 4e-3
    # and the transfer really matters: a point source's DFT (1) is far from it
    assert np.abs(1.0 - expected).max() > 0.3


def test_kernel_rejects_bad_input():
    with pytest.raises(ValueError, match=r"diameter_px: expected a diameter >= 0 pixels, got -1"):
        bead_kernel(-1, 9)
    with pytest.raises(ValueError, match=r"diameter_px: a bead of 12 px does not fit a kernel of 9 px"):
        bead_kernel(12.0, 9)
    with pytest.raises(ValueError, match=r"size: expected a positive integer, got 0"):
        bead_kernel(2.0, 0)
    with pytest.raises(ValueError, match=r"modality: expected one of \('widefield', 'confocal'\), got 'sted'"):
        bead_kernel(2.0, 9, modality="sted")


# --- remove_bead ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "width", "ratio", "known_noise"),
    [("gauss", 6.0, 0.5, True), ("gauss", 6.0, 1.0, False), ("airy", 10.0, 0.5, False), ("airy", 10.0, 1.0, True)],
)
def test_remove_bead_recovers_the_psf(kind, width, ratio, known_noise):
    """A bead of 0.5-1x the PSF's FWHM: the measured image is clearly wider; after removal the FWHM is within 5 % of
    the true PSF's and the correlation above 0.98."""
    w = 31
    truth, y, noise = _bead_images(kind, width, 0.0, w=w)  # the PSF's own FWHM, measured the same way
    true_fwhm = _fwhm(truth)
    d = ratio * true_fwhm
    truth, y, noise = _bead_images(kind, width, d, w=w)
    out = remove_bead(y, d, noise=noise if known_noise else None)
    measured = np.median([_fwhm(p) for p in y])
    recovered = np.median([_fwhm(p) for p in out])
    assert measured > true_fwhm * (1.02 if ratio == 0.5 else 1.08)  # the bead widens the image
    assert abs(recovered / true_fwhm - 1) < 0.05
    assert abs(recovered - true_fwhm) < 0.5 * abs(measured - true_fwhm)  # and its removal narrows it back
    corr = [np.corrcoef(p.ravel(), truth.ravel())[0, 1] for p in out]
    assert min(corr) > 0.98
    assert min(corr) > min(np.corrcoef(p.ravel(), truth.ravel())[0, 1] for p in y)


def test_a_small_bead_changes_nothing():
    _, y, noise = _bead_images("gauss", 8.0, 1.5)
    out = remove_bead(y, 1.5, noise=noise)
    assert min(np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(out, y, strict=True)) > 0.999
    assert np.abs(out - y).max() < 0.05 * y.max()
    np.testing.assert_array_equal(remove_bead(y, 0.8), y)  # inside one pixel: exactly the input


def test_flux_and_positivity_are_kept():
    _, y, noise = _bead_images("airy", 10.0, 5.0)
    for out in (remove_bead(y, 5.0), remove_bead(y, 5.0, noise=noise), remove_bead(y, 5.0, iterations=200)):
        assert out.shape == y.shape and out.dtype == np.float64
        assert out.min() >= 0
        np.testing.assert_allclose(out.sum(axis=(1, 2)), 1.0, atol=1e-12)
        assert out.max() > y.max()  # sharper: the flux went to the centre, not lost


def test_the_noise_stops_the_iterations():
    """More noise, fewer iterations; a fixed count is honoured; the border estimate finds the simulated noise."""
    _, y_low, noise_low = _bead_images("gauss", 6.0, 6.0, snr=1000.0)
    _, y_high, noise_high = _bead_images("gauss", 6.0, 6.0, snr=50.0)
    k = bead_kernel(6.0, 7)
    _, it_low = deconvolve_bead(y_low, k, noise=noise_low)
    _, it_high = deconvolve_bead(y_high, k, noise=noise_high)
    assert it_low.min() > it_high.max() >= 0
    _, fixed = deconvolve_bead(y_low, k, iterations=7)
    assert (fixed == 7).all()
    ratio = estimate_psf_noise(y_high) / noise_high
    assert np.all((ratio > 0.7) & (ratio < 1.4))


def test_a_bead_wider_than_the_psf_is_warned_about():
    _, y, _ = _bead_images("gauss", 4.0, 9.0)
    with pytest.warns(UserWarning, match=r"the bead \(9.00 px\) is wider than the PSF .* ill-posed"):
        out = remove_bead(y, 9.0)
    assert out.min() >= 0 and np.allclose(out.sum(axis=(1, 2)), 1.0)


def test_remove_bead_rejects_bad_input():
    _, y, _ = _bead_images("gauss", 6.0, 3.0, w=15, n=1)
    with pytest.raises(ValueError, match=r"psfs: expected shape \(N, w, w\) with w >= 3, got \(15, 15\)"):
        remove_bead(y[0], 3.0)
    with pytest.raises(ValueError, match=r"psfs: expected non-negative values .* got a minimum of -1"):
        remove_bead(y - 1.0, 3.0)
    with pytest.raises(ValueError, match=r"diameter_px: a bead of 20 px does not fit the 15 px window of the PSFs"):
        remove_bead(y, 20.0)
    with pytest.raises(ValueError, match=r"iterations, noise: expected one of them"):
        remove_bead(y, 3.0, iterations=5, noise=1e-3)
    with pytest.raises(ValueError, match=r"noise: expected a float, \(N,\) = \(1,\) or \(N, w, w\)"):
        remove_bead(y, 3.0, noise=np.ones(4))
    with pytest.raises(ValueError, match=r"noise: expected positive finite noise sigmas"):
        remove_bead(y, 3.0, noise=0.0)


# --- check_bead_size -----------------------------------------------------------------------------------------------


def test_sub_resolution_beads_give_no_warning():
    # 0.1 µm beads, NA 0.8 at 0.525 µm: diffraction FWHM 0.33 µm = 3.3 px of 0.1 µm; beads measured 3.5 px wide
    assert check_bead_size([3.4, 3.5, np.nan, 3.6], 0.1, 0.1, 0.525, 0.8, window=31) == []


def test_beads_that_are_not_sub_resolution_are_warned_about():
    # 0.2 µm beads against a 0.335 µm diffraction limit (widefield): larger than half of it
    msgs = check_bead_size([4.0, 4.2], 0.2, 0.1, 0.525, 0.8)
    assert len(msgs) == 1
    assert msgs[0].startswith("the beads (0.2 µm) are wider than half the diffraction-limited FWHM (0.335 µm at NA 0.8")
    assert "not sub-resolution" in msgs[0] and "--bead-diameter" in msgs[0]
    # confocal has a narrower limit (0.243 µm): 0.15 µm beads are then too large, but not in widefield
    assert check_bead_size([4.0], 0.15, 0.1, 0.525, 0.8, modality="confocal")
    assert not check_bead_size([4.0], 0.15, 0.1, 0.525, 0.8)


def test_beads_narrower_than_the_bead_itself_are_warned_about():
    # a 1 µm bead is 10 px at 0.1 µm pixels and appears at least 8.66 px wide; measured 5 px: a wrong pixel size
    msgs = check_bead_size([5.0, 5.1, 4.9], 1.0, 0.1, 0.525, 0.8)
    assert len(msgs) == 2
    assert msgs[1] == (
        "the beads are 5.00 px wide (median FWHM), narrower than a 1 µm bead appears through a perfect lens "
        "(8.66 px at 0.1 µm pixels): --pixel-size or --bead-diameter is likely wrong"
    )


def test_a_bead_larger_than_the_window_is_an_error():
    with pytest.raises(ValueError) as err:
        check_bead_size([9.0], 5.0, 0.1, 0.525, 0.8, window=31)
    text = str(err.value)
    assert "\n" not in text
    assert text == (
        "--bead-diameter 5 µm is 50.0 px at 0.1 µm pixels, larger than the 31 px crop window: check --bead-diameter "
        "and --pixel-size, or pass a larger --window"
    )
    check_bead_size([9.0], 3.0, 0.1, 0.525, 0.8, window=31)  # 30 px fits


def test_check_bead_size_rejects_bad_input():
    with pytest.raises(ValueError, match=r"--bead-diameter: expected a diameter >= 0 µm, got -0.1"):
        check_bead_size([3.0], -0.1, 0.1, 0.525, 0.8)
    with pytest.raises(ValueError, match=r"pixel_um: expected a positive number, got 0"):
        check_bead_size([3.0], 0.1, 0, 0.525, 0.8)
    with pytest.raises(ValueError, match=r"modality: expected one of"):
        check_bead_size([3.0], 0.1, 0.1, 0.525, 0.8, modality="sted")
