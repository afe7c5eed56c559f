"""The pupil: its sampling grid, amplitude (apodisation), Zernike wavefront, and sampling checks.

Conventions
-----------
* The pupil is sampled on an ``N x N`` grid spanning its diameter; sample ``i`` sits at the normalised pupil
  coordinate ``u_i = (i - (N - 1) / 2) * 2 / N`` (cell centres, as poppy samples a wavefront), axes ``(v, u)``
  parallel to the sensor's ``(y, x)``. ``ρ = sqrt(u² + v²)``, ``θ = atan2(v, u)``; the aperture is ``ρ <= 1``.
* A normalised pupil coordinate ``u`` carries the spatial frequency ``u NA / λ`` (cycles per µm in object space).
* The complex pupil is ``P = A exp(+2πi W / λ)`` with ``W`` the optical path difference in µm (poppy's sign).
"""

from __future__ import annotations

import numpy as np
import torch

from optisim.zernike import zernike_nm

__all__ = [
    "SamplingError",
    "lens_pupil_amplitude",
    "pupil_amplitude",
    "pupil_coordinates",
    "pupil_polar",
    "wavefront_step_waves",
    "zernike_basis",
]


class SamplingError(ValueError):
    """The requested sampling cannot represent the PSF faithfully (pupil too coarse, pixel too large)."""


def pupil_coordinates(n_samples: int) -> np.ndarray:
    """Normalised pupil coordinates of the ``n_samples`` cell centres along one axis, shape (N,), float64."""
    return (np.arange(n_samples) - (n_samples - 1) / 2.0) * 2.0 / n_samples


def pupil_polar(n_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``rho``, ``theta`` and the aperture mask (``rho <= 1``) on the ``(N, N)`` pupil grid, axes ``(v, u)``."""
    u = pupil_coordinates(n_samples)
    vv, uu = np.meshgrid(u, u, indexing="ij")
    rho = np.hypot(uu, vv)
    return rho, np.arctan2(vv, uu), rho <= 1.0


def pupil_amplitude(
    rho: np.ndarray,
    *,
    apodisation: str = "none",
    na: float = 0.5,
    immersion_index: float = 1.0,
    sigma: float | None = None,
) -> np.ndarray:
    """Pupil amplitude ``A(ρ)``, zero outside the aperture.

    Parameters
    ----------
    rho : array, normalised pupil radius
    apodisation : {'none', 'aplanatic', 'gaussian'}
        ``'aplanatic'``: ``1 / sqrt(cos θ)`` with ``sin θ = ρ NA / n`` (aplanatic objective collecting light from a
        point source, the detection-path apodisation of Richards-Wolf theory); ``'gaussian'``:
        ``exp(-ρ² / (2 σ²))`` with ``σ = sigma`` in pupil radii.
    na, immersion_index : float
        Used by ``'aplanatic'``.
    """
    inside = rho <= 1.0
    if apodisation == "none":
        amp = np.ones_like(rho)
    elif apodisation == "aplanatic":
        sin_t = np.clip(rho * na / immersion_index, 0.0, 1.0 - 1e-12)
        amp = (1.0 - sin_t**2) ** -0.25
    elif apodisation == "gaussian":
        if sigma is None or not sigma > 0:
            raise ValueError(f"sigma: gaussian apodisation needs a positive width in pupil radii, got {sigma}")
        amp = np.exp(-(rho**2) / (2.0 * sigma**2))
    else:
        raise ValueError(f"apodisation: expected 'none', 'aplanatic' or 'gaussian', got {apodisation!r}")
    return np.where(inside, amp, 0.0)


def lens_pupil_amplitude(lens) -> np.ndarray:
    """The ``(N, N)`` pupil amplitude of a :class:`optisim.lens.Lens` on its own pupil grid (see pupil_amplitude)."""
    rho, _, _ = pupil_polar(lens.pupil_samples)
    return pupil_amplitude(
        rho,
        apodisation=lens.apodisation,
        na=lens.na,
        immersion_index=lens.immersion_index,
        sigma=lens.apodisation_sigma,
    )


def zernike_basis(modes, n_samples: int) -> np.ndarray:
    """RMS-normalised Zernike modes on the pupil grid, zero outside the aperture.

    Returns
    -------
    (J, N, N) float64 array, dimensionless; ``modes[j]`` is ``(n, m)``.
    """
    rho, theta, mask = pupil_polar(n_samples)
    out = np.zeros((len(modes), n_samples, n_samples))
    for j, (n, m) in enumerate(modes):
        out[j] = np.where(mask, zernike_nm(n, m, rho, theta), 0.0)
    return out


def wavefront_step_waves(opd_um: torch.Tensor, mask: torch.Tensor, wavelength_um: float) -> torch.Tensor:
    """Largest change of the wavefront between neighbouring pupil samples inside the aperture.

    Parameters
    ----------
    opd_um : (B, N, N) Tensor, optical path difference in µm
    mask : (N, N) bool Tensor, aperture
    wavelength_um : float, µm

    Returns
    -------
    (B,) Tensor, waves: the largest ``|W(i+1) - W(i)| / λ`` along either pupil axis.
    """
    both_y = mask[1:, :] & mask[:-1, :]
    both_x = mask[:, 1:] & mask[:, :-1]
    dy = (opd_um[:, 1:, :] - opd_um[:, :-1, :]).abs() * both_y
    dx = (opd_um[:, :, 1:] - opd_um[:, :, :-1]).abs() * both_x
    return torch.maximum(dy.flatten(1).amax(1), dx.flatten(1).amax(1)) / wavelength_um
