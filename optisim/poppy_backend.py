"""PSFs through poppy's optical-system model: the reference backend (``--backend poppy``).

The microscope is mapped onto poppy's Fraunhofer (telescope) model exactly: a pupil of radius ``R`` and an
object-space position ``x`` (µm) correspond to the field angle ``θ = x NA / R``, because the pupil edge carries the
spatial frequency ``NA / λ`` in both descriptions. The pupil is poppy's ``CircularAperture`` (hard edge) times the
lens's apodisation, the aberrations are poppy's ``ZernikeWFE`` (Noll-ordered coefficients in metres RMS, poppy's
RMS normalisation), and a ``Detector`` samples the image with the same pixel and oversampling as the torch backend.
Sampling conventions are identical to :mod:`optisim.psf` (pupil cell centres, chief ray at pixel ``size // 2``).

This backend evaluates one field point and wavelength at a time: it is the reference for tests and benchmarks,
and the way to bring a poppy pupil (``extra_optics``) into an optisim PSF grid, not the fast path.
"""

from __future__ import annotations

import logging

import numpy as np

from optisim.lens import Lens
from optisim.pupil import lens_pupil_amplitude
from optisim.zernike import nm_to_noll

__all__ = ["poppy_psf", "poppy_psfs"]

_RADIUS_M = 1.0  # pupil radius in poppy's model; any value gives the same PSF
_ARCSEC_PER_RAD = 180.0 * 3600.0 / np.pi


def _noll_coefficients_m(lens: Lens, hx: float, hy: float) -> np.ndarray:
    """Noll-ordered Zernike coefficients (metres RMS, j = 1..J_max) at one field point."""
    modes = lens.aberrations.modes()
    um = lens.zernike_um(hx, hy, modes)
    if not modes:
        return np.zeros(1)
    coeffs = np.zeros(max(nm_to_noll(*nm) for nm in modes))
    for (n, m), c in zip(modes, um, strict=True):
        coeffs[nm_to_noll(n, m) - 1] = c * 1e-6
    return coeffs


def poppy_psf(lens: Lens, hx: float, hy: float, *, size: int = 64, oversample: int = 1, extra_optics=()) -> np.ndarray:
    """One PSF at field ``(hx, hy)`` computed by poppy, in the conventions of :mod:`optisim.psf`.

    Parameters
    ----------
    lens : Lens
    hx, hy : float, normalised field coordinates
    size : int, pixels per side; oversample : int, sub-samples per pixel (pixel integration)
    extra_optics : sequence of poppy optical elements, added in the pupil after the aberrations

    Returns
    -------
    (size, size) float64 array, axes (y, x), sums to 1.
    """
    import astropy.units as u
    import poppy

    logging.getLogger("poppy").setLevel(logging.WARNING)
    n = lens.pupil_samples
    osys = poppy.OpticalSystem(npix=n, pupil_diameter=2 * _RADIUS_M * u.m, oversample=1)
    if lens.apodisation == "none":
        osys.add_pupil(poppy.CircularAperture(radius=_RADIUS_M * u.m, gray_pixel=False))
    else:
        amp = lens_pupil_amplitude(lens)
        osys.add_pupil(
            poppy.ArrayOpticalElement(
                transmission=amp, pixelscale=2 * _RADIUS_M / n * u.m / u.pixel, name="apodised aperture"
            )
        )
    osys.add_pupil(poppy.ZernikeWFE(radius=_RADIUS_M * u.m, coefficients=_noll_coefficients_m(lens, hx, hy) * u.m))
    for element in extra_optics:
        osys.add_pupil(element)
    # An odd detector centred on its middle pixel, cropped, puts the chief ray at pixel size // 2 for even sizes.
    n_det = size if size % 2 else size + 1
    pixel_rad = lens.pixel_um * lens.na / (_RADIUS_M * 1e6)
    osys.add_detector(
        pixelscale=pixel_rad * _ARCSEC_PER_RAD * u.arcsec / u.pixel, fov_pixels=n_det, oversample=oversample
    )
    psf = 0.0
    for wl, w in zip(lens.wavelengths_um, lens.weights, strict=True):
        # normalize='first': intensity relative to the total pupil energy (energy fraction per sample)
        hdul = osys.calc_psf(wavelength=wl * 1e-6, normalize="first")
        image = np.asarray(hdul[0].data, dtype=float)
        if oversample > 1:
            image = image.reshape(n_det, oversample, n_det, oversample).sum(axis=(1, 3))
        psf = psf + w * image
    psf = psf[:size, :size]
    return psf / psf.sum()


def poppy_psfs(
    lens: Lens, hx, hy, *, size: int = 64, oversample: int = 1, progress=None, extra_optics=()
) -> np.ndarray:
    """PSFs at several field points with poppy; ``(B, size, size)`` float64. See :func:`poppy_psf`."""
    hx, hy = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (hx, hy))
    out = np.empty((len(hx), size, size))
    for i, (x, y) in enumerate(zip(hx, hy, strict=True)):
        out[i] = poppy_psf(lens, x, y, size=size, oversample=oversample, extra_optics=extra_optics)
        if progress is not None:
            progress(1)
    return out
