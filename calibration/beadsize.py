"""Finite beads in the empirical PSF model: the bead's own image, its removal from measured PSFs, size checks.

A bead of diameter ``d`` is a uniformly stained sphere; its image is ``PSF ⊛ bead``, where ``bead`` is the
sphere's projection along the optical axis (column density ``∝ sqrt(R² - r²)`` inside ``r < R = d / 2``). This
assumes the PSF does not change over the bead's depth, the assumption :mod:`optisim.beads` makes too (whose
``sphere_transfer`` is the projection's Fourier transform). The parametric fit models the bead inside its forward
model; the empirical path takes measured bead images as PSFs, so it must remove the bead first:
:func:`remove_bead` deconvolves each measured PSF by :func:`bead_kernel`.

Method of :func:`remove_bead`: Richardson-Lucy with the known, non-negative bead kernel, started from the measured
PSF and stopped by the discrepancy principle: at the first iterate whose reblurred image differs from the
measurement by no more than the noise (mean of ``((K x - y) / σ)²`` over the window at most 1), or once an
iteration lowers that misfit by less than 1 % (the misfit has reached a floor the noise model does not explain:
shot noise above the background's, correlated noise, structure no bead blur produces; iterating further only
amplifies it), at most 500 iterations. Why:

* RL keeps positivity (multiplicative updates of a non-negative start) and, with the normalised adjoint, the flux;
  the result is renormalised to sum 1 over the window (flux that RL pushes past the window's edge is not kept);
* the stopping rule is tied to the noise, so it needs no tuning: a bead much smaller than the PSF blurs the PSF by
  less than the noise, and the measured PSF comes back unchanged (zero or a few iterations); a bead comparable to
  the PSF takes tens to hundreds of iterations; a Wiener filter would need the same noise level but returns
  negative ringing that must be clipped, which changes flux and shape where the PSF is faint;
* a bead wider than the PSF leaves little of the PSF's spectrum above the noise: the deconvolution is ill-posed, the
  result depends on the noise and on the stopping rule, and :func:`remove_bead` warns.

Pixels: the kernel is the sphere's projection integrated over each pixel (8 x 8 sub-samples), i.e. the bead's image
through a perfect lens. A bead of ``d <= 1`` pixel centred on a pixel lies inside that pixel, so its kernel is a
delta and :func:`remove_bead` returns the PSFs unchanged. Convolving a pixel-integrated PSF with a pixel-integrated
kernel counts the pixel's box twice; the extra blur (variance 1/12 px² per axis) is below 1 % of the FWHM of a PSF
wider than about 4 px and is not corrected.

Axes are ``(y, x)``; windows are ``w x w`` with the chief ray (the bead's centre) at the centre pixel ``w // 2``.
"""

from __future__ import annotations

import math
import types
import warnings

import numpy as np
from scipy.signal import fftconvolve

from calibration.measure import bead_fwhm
from calibration.optics import diffraction_fwhm_um
from optisim.beads import MODALITIES

__all__ = ["bead_kernel", "check_bead_size", "deconvolve_bead", "estimate_psf_noise", "remove_bead"]

SUBSAMPLES = 8  # per pixel along each axis in bead_kernel
MAX_ITERATIONS = 500  # Richardson-Lucy cap when the noise stops it
STALL = 0.01  # ... or when an iteration lowers the misfit by less than this fraction of it (the noise floor)
SPHERE_HALF_MAX = math.sqrt(3.0) / 2.0  # the projected sphere's full width at half maximum, in diameters
SPHERE_SIGMA = 1.0 / math.sqrt(20.0)  # its standard deviation along one axis, in diameters (<x²> = R² / 5)
GAUSS_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))


def _diameter(diameter_px) -> float:
    d = float(diameter_px)
    if not (math.isfinite(d) and d >= 0):
        raise ValueError(f"diameter_px: expected a diameter >= 0 pixels, got {diameter_px!r}")
    return d


def bead_kernel(diameter_px: float, size: int, *, modality: str = "widefield") -> np.ndarray:
    """The bead's image on the pixel grid through a perfect lens: its projection, integrated over each pixel.

    Parameters
    ----------
    diameter_px : float, the bead's diameter in pixels (object-space µm / pixel size); 0 gives a delta
    size : int, the kernel's side, pixels; the bead is centred on pixel ``size // 2`` along both axes
    modality : {'widefield', 'confocal'}; a confocal microscope images the bead with ``I²`` but the object is the
        same sphere, so the kernel is the same

    Returns
    -------
    (size, size) float64 array, non-negative, summing to 1, axes (y, x). Its discrete Fourier transform is
    :func:`optisim.beads.sphere_transfer` times the pixel's ``sinc(fy) sinc(fx)`` (``f`` in cycles per pixel),
    summed over the aliases ``f + k``.

    Examples
    --------
    >>> k = bead_kernel(4.0, 9)
    >>> k.shape, round(float(k.sum()), 12), bool(k[4, 4] == k.max())
    ((9, 9), 1.0, True)
    """
    d = _diameter(diameter_px)
    if modality not in MODALITIES:
        raise ValueError(f"modality: expected one of {MODALITIES}, got {modality!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size: expected a positive integer, got {size!r}")
    if d > size:
        raise ValueError(f"diameter_px: a bead of {d:g} px does not fit a kernel of {size} px")
    kernel = np.zeros((size, size))
    c = size // 2
    if d <= 1.0:  # the sphere lies inside the centre pixel
        kernel[c, c] = 1.0
        return kernel
    s = SUBSAMPLES
    r = d / 2.0
    half = min(math.ceil(r - 0.5), c, size - 1 - c)  # pixels the sphere reaches on each side of the centre
    m = 2 * half + 1
    sub = (np.arange(m * s) + 0.5) / s - (half + 0.5)  # sub-sample centres, pixels from the centre pixel's centre
    column = np.sqrt(np.clip(r**2 - sub[:, None] ** 2 - sub[None, :] ** 2, 0.0, None))
    patch = column.reshape(m, s, m, s).sum(axis=(1, 3))
    kernel[c - half : c + half + 1, c - half : c + half + 1] = patch
    return kernel / kernel.sum()


def _as_psfs(psfs) -> np.ndarray:
    a = np.asarray(psfs, dtype=np.float64)
    if a.ndim != 3 or a.shape[1] != a.shape[2] or a.shape[1] < 3 or a.shape[0] < 1:
        raise ValueError(f"psfs: expected shape (N, w, w) with w >= 3, got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("psfs: expected finite values, got NaN or infinite pixels")
    if a.min() < 0:
        raise ValueError(f"psfs: expected non-negative values (PSFs clipped at 0), got a minimum of {a.min():.3g}")
    sums = a.sum(axis=(1, 2))
    if (sums <= 0).any():
        raise ValueError(f"psfs: expected PSFs with positive flux, got {int((sums <= 0).sum())} that sum to 0")
    return a / sums[:, None, None]


def estimate_psf_noise(psfs, *, border: int = 3) -> np.ndarray:
    """Noise sigma of each normalised PSF (its units: fraction of the flux per pixel) from the window's border.

    The ``border`` outermost pixels hold mostly background. Where at least a fifth of them are 0 (measured PSFs
    clipped at 0 after the background was removed), the positive values are the upper half of the noise and
    ``sigma = median(positive) / 0.6745``; otherwise ``sigma = 1.4826 MAD``. Faint PSF wings in the border make
    the estimate larger, so the deconvolution stops earlier (the safe side). Returns (N,) float64.
    """
    a = _as_psfs(psfs)
    w = a.shape[-1]
    if not isinstance(border, int) or not 1 <= border <= w // 2:
        raise ValueError(f"border: expected an integer in [1, {w // 2}], got {border!r}")
    ring = np.ones((w, w), dtype=bool)
    ring[border : w - border, border : w - border] = False
    out = np.empty(len(a))
    for i, v in enumerate(a[:, ring]):
        positive = v[v > 0]
        if (v <= 0).mean() >= 0.2:
            sigma = np.median(positive) / 0.6745 if positive.size else 0.0
        else:
            sigma = 1.4826 * np.median(np.abs(v - np.median(v)))
        out[i] = max(float(sigma), 1e-12 * float(a[i].max()))
    return out


def _noise_map(noise, shape) -> np.ndarray:
    sigma = np.asarray(noise, dtype=np.float64)
    n = shape[0]
    if sigma.ndim == 1 and sigma.shape == (n,):
        sigma = sigma[:, None, None]
    try:
        sigma = np.broadcast_to(sigma, shape)
    except ValueError:
        raise ValueError(
            f"noise: expected a float, (N,) = ({n},) or (N, w, w) = {shape} array, got {sigma.shape}"
        ) from None
    if not (np.isfinite(sigma).all() and (sigma > 0).all()):
        raise ValueError("noise: expected positive finite noise sigmas (fraction of the PSF's flux per pixel)")
    return sigma


def deconvolve_bead(
    psfs, kernel, *, noise=None, iterations: int | None = None, stall: float = STALL
) -> tuple[np.ndarray, np.ndarray]:
    """Richardson-Lucy deconvolution of PSFs by one bead kernel (module docstring), with the iterations it took.

    Parameters
    ----------
    psfs : (N, w, w) array, non-negative; each is normalised to sum 1 first
    kernel : (k, k) array, non-negative, symmetric about its centre pixel (as from :func:`bead_kernel`)
    noise : None, float, (N,) or (N, w, w) array: noise sigma of the normalised PSFs (fraction of the flux per pixel);
        None: :func:`estimate_psf_noise`. Ignored when ``iterations`` is given.
    iterations : int or None: a fixed number of iterations; None: stop at the noise (discrepancy principle) or when
        an iteration lowers the misfit by less than the fraction ``stall`` of it, at most ``MAX_ITERATIONS``
    stall : float, see ``iterations`` (0: the discrepancy principle alone)

    Returns
    -------
    psfs : (N, w, w) float64, non-negative, each summing to 1
    iterations : (N,) int, the iterations each PSF took
    """
    y = _as_psfs(psfs)
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0 or k.min() < 0 or k.sum() <= 0:
        raise ValueError(f"kernel: expected an odd square non-negative array with positive sum, got shape {k.shape}")
    k = (k / k.sum())[None]
    if iterations is not None and (not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 0):
        raise ValueError(f"iterations: expected None or an integer >= 0, got {iterations!r}")
    limit = MAX_ITERATIONS if iterations is None else iterations
    sigma = None if iterations is not None else _noise_map(estimate_psf_noise(y) if noise is None else noise, y.shape)
    norm = fftconvolve(np.ones_like(y[:1]), k, mode="same", axes=(1, 2)).clip(min=1e-12)  # K^T 1
    x, done = y.copy(), np.zeros(len(y), dtype=int)
    previous = np.full(len(y), np.inf)
    active = np.ones(len(y), dtype=bool)
    for step in range(limit + 1):
        blurred = fftconvolve(x[active], k, mode="same", axes=(1, 2)).clip(min=0.0)
        if sigma is not None:
            chi2 = np.mean(((blurred - y[active]) / sigma[active]) ** 2, axis=(1, 2))
            stop = (chi2 <= 1.0) | (previous[active] - chi2 < stall * chi2)
            previous[active] = chi2
            idx = np.flatnonzero(active)
            done[idx[stop]] = step
            active[idx[stop]] = False
            blurred = blurred[~stop]
        if step == limit or not active.any():
            break
        ratio = y[active] / np.maximum(blurred, 1e-300) * (blurred > 0)
        x[active] *= fftconvolve(ratio, k, mode="same", axes=(1, 2)) / norm
    done[active] = limit
    x = x.clip(min=0.0)
    return x / x.sum(axis=(1, 2), keepdims=True).clip(min=1e-300), done


def _psf_fwhm_px(psfs: np.ndarray) -> float:
    """Median FWHM (pixels, Gaussian fit, geometric mean of the axes) of centred PSFs; NaN if no fit succeeds."""
    w = psfs.shape[-1]
    c = w // 2
    widths = [bead_fwhm(p, np.array([[c, c]]), window=w - (w % 2 == 0))[0, 2] for p in psfs]
    widths = np.asarray(widths)
    return float(np.median(widths[np.isfinite(widths)])) if np.isfinite(widths).any() else float("nan")


def remove_bead(psfs, diameter_px: float, *, iterations: int | None = None, noise=None) -> np.ndarray:
    """Deconvolve each measured, centred bead image by the bead's own image: the PSF of a point source.

    Parameters
    ----------
    psfs : (N, w, w) array: measured bead images, non-negative, the bead at the centre pixel ``w // 2``
        (e.g. :func:`calibration.pipeline.centred_psfs`); each is normalised to sum 1
    diameter_px : float, the bead's diameter in pixels (``--bead-diameter`` µm / pixel size µm)
    iterations : int or None: a fixed number of Richardson-Lucy iterations; None: stop at the noise
    noise : None, float, (N,) or (N, w, w) array: noise sigma of the normalised PSFs (fraction of each PSF's flux
        per pixel, e.g. the image's noise sigma divided by the bead's flux); None: estimated from the window's border
        (:func:`estimate_psf_noise`)

    Returns
    -------
    (N, w, w) float64, non-negative, each summing to 1. Beads of at most 1 px, and beads so much smaller than the PSF
    that they blur it by less than the noise, come back unchanged.

    Warns
    -----
    UserWarning when the bead is more than 10 % wider than the PSF that remains once the bead is taken out
    (``sqrt(F² - (2.355 d / sqrt 20)²)`` from the median measured FWHM ``F``: Gaussian-equivalent widths, whose
    variances add under convolution): the deconvolution is then ill-posed and its result rests on the noise level
    and the stopping rule.
    """
    y = _as_psfs(psfs)
    d = _diameter(diameter_px)
    w = y.shape[-1]
    if d > w:
        raise ValueError(f"diameter_px: a bead of {d:g} px does not fit the {w} px window of the PSFs")
    if iterations is not None and noise is not None:
        raise ValueError("iterations, noise: expected one of them (a fixed count or the noise that stops it), got both")
    if d <= 1.0:
        return y
    measured = _psf_fwhm_px(y)
    bead = GAUSS_FWHM * SPHERE_SIGMA * d
    remaining = math.sqrt(max(measured**2 - bead**2, 0.0)) if math.isfinite(measured) else float("nan")
    if not 1.1 * remaining >= d:  # 10 % slack: the Gaussian-equivalent widths are approximate
        warnings.warn(
            f"the bead ({d:.2f} px) is wider than the PSF left once it is removed ({remaining:.2f} px of a measured "
            f"{measured:.2f} px FWHM): removing it is ill-posed and the PSFs rest on the noise and the stopping rule; "
            f"check the bead diameter and the pixel size",
            UserWarning,
            stacklevel=2,
        )
    size = int(2 * math.ceil(d / 2) + 1)
    out, _ = deconvolve_bead(y, bead_kernel(d, size), noise=noise, iterations=iterations)
    return out


def check_bead_size(
    fwhm_px, diameter_um: float, pixel_um: float, wavelength_um: float, na: float, *,
    modality: str = "widefield", window: int | None = None,
) -> list[str]:  # fmt: skip
    """Warnings about the beads' size against the optics and the measured widths; an error if a bead overfills the
    window. Complements :func:`calibration.optics.check_bead_width` (beads narrower than diffraction).

    Parameters
    ----------
    fwhm_px : (N,) array, the measured bead widths (pixels, NaN where unmeasured)
    diameter_um : float, µm, the bead diameter (``--bead-diameter``)
    pixel_um, wavelength_um : float, µm, object-space pixel size and wavelength
    na : float, numerical aperture
    modality : {'widefield', 'confocal'}
    window : int or None, the crop window (pixels, ``--window``)

    Returns
    -------
    list of str, one line each, empty when all is well:

    * the bead is wider than half the diffraction-limited FWHM (``0.51 λ / NA`` widefield, ``0.37 λ / NA``
      confocal): the beads are not sub-resolution for these optics, so their stated size matters;
    * the median measured width is narrower than the bead itself appears through a perfect lens (its half-maximum
      width ``sqrt(3) / 2 d``): the pixel size or the bead diameter is likely wrong.

    Raises
    ------
    ValueError when the bead's diameter in pixels exceeds ``window``.
    """
    for name, value in (("pixel_um", pixel_um), ("wavelength_um", wavelength_um), ("na", na)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name}: expected a positive number, got {value}")
    if not (math.isfinite(diameter_um) and diameter_um >= 0):
        raise ValueError(f"--bead-diameter: expected a diameter >= 0 µm, got {diameter_um}")
    if modality not in MODALITIES:
        raise ValueError(f"modality: expected one of {MODALITIES}, got {modality!r}")
    d_px = diameter_um / pixel_um
    if window is not None and d_px > window:
        raise ValueError(
            f"--bead-diameter {diameter_um:g} µm is {d_px:.1f} px at {pixel_um:g} µm pixels, larger than the "
            f"{window} px crop window: check --bead-diameter and --pixel-size, or pass a larger --window"
        )
    lens = types.SimpleNamespace(reference_wavelength_um=wavelength_um, na=na)  # what diffraction_fwhm_um reads
    limit_um = diffraction_fwhm_um(lens, modality)
    out = []
    if diameter_um > 0.5 * limit_um:
        out.append(
            f"the beads ({diameter_um:g} µm) are wider than half the diffraction-limited FWHM ({limit_um:.3g} µm at "
            f"NA {na:g}, {wavelength_um:g} µm): they are not sub-resolution for these optics, so the PSF model "
            f"depends on --bead-diameter being right"
        )
    finite = np.asarray([v for v in np.ravel(fwhm_px) if math.isfinite(v)], dtype=float)
    apparent = SPHERE_HALF_MAX * d_px
    if finite.size and np.median(finite) < apparent:
        out.append(
            f"the beads are {np.median(finite):.2f} px wide (median FWHM), narrower than a {diameter_um:g} µm bead "
            f"appears through a perfect lens ({apparent:.2f} px at {pixel_um:g} µm pixels): --pixel-size or "
            f"--bead-diameter is likely wrong"
        )
    return out
