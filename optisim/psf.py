"""Pupil to PSF by matrix Fourier transform, batched over field points, in torch (CPU or CUDA), differentiable.

Conventions
-----------
* A PSF is an intensity image ``(y, x)`` of ``size x size`` object-space pixels of ``lens.pixel_um`` µm. Its
  optical axis (the chief ray's ideal image point) is at the centre of pixel ``(size // 2, size // 2)``: pixel
  ``k`` is centred at ``(k - size // 2) * pixel_um``. (For odd sizes that is the middle pixel; for even sizes the
  array has one more row/column on the negative side, as with ``numpy.fft.fftshift``.)
* A PSF sums to 1 over its window (``normalize='window'``, the default) or holds the fraction of the total
  energy that falls in each pixel (``normalize='energy'``, Parseval; its sum is the energy in the window).
* ``oversample = s`` evaluates the field on ``s x s`` sub-samples per pixel and sums the intensity over each
  pixel (pixel integration). ``s = 1`` samples the intensity at pixel centres.
* Broadband light: the weighted sum of the per-wavelength PSFs (each energy-normalised), with the same optical
  path difference at every wavelength (phase ``2π W / λ``) and the pupil's frequency scale ``NA / λ``.
* Scalar Fourier optics (no polarisation / vectorial high-NA effects beyond the aplanatic apodisation).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from optisim.lens import Lens
from optisim.pupil import (
    SamplingError,
    lens_pupil_amplitude,
    pupil_coordinates,
    pupil_polar,
    wavefront_step_waves,
    zernike_basis,
)

__all__ = [
    "PSFModel",
    "check_pixel_sampling",
    "compute_psfs",
    "mft_matrix",
    "pupil_to_psf",
    "required_pupil_samples",
    "strehl_ratio",
]

MAX_WAVEFRONT_STEP = 0.5  # waves between neighbouring pupil samples


def output_coordinates(size: int, pixel_um: float, oversample: int = 1) -> np.ndarray:
    """Object-space positions (µm) of the ``size * oversample`` sub-samples along one PSF axis, pixel-major."""
    centres = (np.arange(size) - size // 2) * pixel_um
    sub = (np.arange(oversample) - (oversample - 1) / 2.0) * pixel_um / oversample
    return (centres[:, None] + sub[None, :]).ravel()


def mft_matrix(
    n_pupil: int,
    size: int,
    *,
    na: float,
    wavelength_um: float,
    pixel_um: float,
    oversample: int = 1,
    dtype=torch.complex64,
    device=None,
) -> torch.Tensor:
    """Matrix Fourier transform from pupil samples to image sub-samples along one axis.

    ``A[k, i] = exp(+2πi (NA / λ) u_i x_k)``, with ``u_i`` the normalised pupil coordinates
    (:func:`optisim.pupil.pupil_coordinates`) and ``x_k`` the image positions (µm) of :func:`output_coordinates`.

    Returns
    -------
    (size * oversample, n_pupil) complex Tensor.
    """
    x = output_coordinates(size, pixel_um, oversample)
    u = pupil_coordinates(n_pupil)
    arg = 2.0 * math.pi * (na / wavelength_um) * np.outer(x, u)
    return torch.from_numpy(np.exp(1j * arg)).to(dtype=dtype, device=device)


def pupil_to_psf(pupil: torch.Tensor, mft: torch.Tensor, *, oversample: int = 1, scale: float = 1.0) -> torch.Tensor:
    """Intensity of the image of a batch of complex pupils.

    Parameters
    ----------
    pupil : (B, N, N) complex Tensor, axes (v, u)
    mft : (M * oversample, N) complex Tensor from :func:`mft_matrix`
    oversample : int, sub-samples per pixel along each axis (their intensities are summed)
    scale : float, multiplies the intensity

    Returns
    -------
    (B, M, M) real Tensor, axes (y, x).
    """
    if pupil.ndim != 3 or pupil.shape[-1] != pupil.shape[-2] or pupil.shape[-1] != mft.shape[-1]:
        raise ValueError(f"pupil: expected shape (B, {mft.shape[-1]}, {mft.shape[-1]}), got {tuple(pupil.shape)}")
    field = mft @ (pupil @ mft.transpose(0, 1))
    intensity = field.real.square() + field.imag.square()
    if oversample > 1:
        b, ms, _ = intensity.shape
        m = ms // oversample
        intensity = intensity.reshape(b, m, oversample, m, oversample).sum(dim=(2, 4))
    return intensity * scale


def _pupil(amplitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """``amplitude * exp(i phase)`` as a complex tensor, (B, N, N).

    Without autograd the real and imaginary parts are written straight into the complex result, which is about
    twice as fast on CPU as ``torch.polar`` (that interleaves a broadcast copy); with autograd, ``torch.polar``.
    """
    if torch.is_grad_enabled() and (phase.requires_grad or amplitude.requires_grad):
        return torch.polar(amplitude.expand_as(phase), phase)
    out = torch.empty(phase.shape, dtype=phase.dtype.to_complex(), device=phase.device)
    parts = torch.view_as_real(out)
    torch.mul(torch.cos(phase), amplitude, out=parts[..., 0])
    torch.mul(torch.sin(phase), amplitude, out=parts[..., 1])
    return out


def check_pixel_sampling(lens: Lens, *, allow_undersampled: bool = False) -> None:
    """Raise SamplingError if the object pixel undersamples the PSF (``pixel > λ_min / (4 NA)``)."""
    if lens.pixel_um > lens.nyquist_pixel_um * (1 + 1e-9) and not allow_undersampled:
        raise SamplingError(
            f"pixel size {lens.pixel_um:.4g} µm undersamples the PSF (Nyquist limit {lens.nyquist_pixel_um:.4g} µm "
            f"for NA {lens.na:g} at {min(lens.wavelengths_um):g} µm); use a smaller pixel or --allow-undersampled"
        )


class PSFModel(torch.nn.Module):
    """PSFs of a lens from Zernike coefficients: pupil grid, amplitude, Zernike basis and MFT matrices cached.

    Parameters
    ----------
    lens : Lens
    modes : list of (n, m)
        Zernike modes of the coefficient vectors passed to :meth:`forward`.
    size : int
        PSF window, pixels per side.
    oversample : int
        Sub-samples per pixel for pixel integration.
    dtype : torch float dtype (float32 default; float64 for tight comparisons and gradcheck)
    device : torch device or None

    Examples
    --------
    >>> lens = load_preset("default")
    >>> model = PSFModel(lens, modes=[(2, 0)], size=33)
    >>> coeffs = torch.tensor([[0.0], [0.3 * lens.reference_wavelength_um]], requires_grad=True)  # µm RMS
    >>> psf = model(coeffs)             # (2, 33, 33), each sums to 1; differentiable w.r.t. coeffs
    """

    def __init__(self, lens: Lens, modes, *, size: int = 64, oversample: int = 1, dtype=torch.float32, device=None):
        super().__init__()
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size: expected a positive number of pixels, got {size!r}")
        if not isinstance(oversample, int) or oversample < 1:
            raise ValueError(f"oversample: expected a positive integer, got {oversample!r}")
        self.lens, self.modes, self.size, self.oversample = lens, [tuple(m) for m in modes], size, oversample
        n = lens.pupil_samples
        period = n * min(lens.wavelengths_um) / (2 * lens.na)
        if size * lens.pixel_um > period:
            need = math.ceil(size * lens.pixel_um * 2 * lens.na / min(lens.wavelengths_um))
            raise SamplingError(
                f"PSF window of {size} pixels ({size * lens.pixel_um:.4g} µm) exceeds the alias-free field "
                f"{period:.4g} µm of {n} pupil samples; use at least {need} pupil samples or a smaller window"
            )
        _, _, mask = pupil_polar(n)
        amp = lens_pupil_amplitude(lens)
        self.register_buffer("mask", torch.from_numpy(mask).to(device))
        self.register_buffer("amplitude", torch.from_numpy(amp).to(dtype=dtype, device=device))
        basis = zernike_basis(self.modes, n).reshape(len(self.modes), n * n)
        self.register_buffer("basis", torch.from_numpy(basis).to(dtype=dtype, device=device))
        # largest change of each mode between neighbouring samples inside the aperture (for a cheap step bound)
        per_mode = wavefront_step_waves(torch.from_numpy(basis.reshape(-1, n, n)), torch.from_numpy(mask), 1.0)
        self.register_buffer("basis_step", per_mode.to(dtype=dtype, device=device))
        mfts, scales = [], []
        du = 2.0 / n
        for wl in lens.wavelengths_um:
            mfts.append(
                mft_matrix(
                    n,
                    size,
                    na=lens.na,
                    wavelength_um=wl,
                    pixel_um=lens.pixel_um,
                    oversample=oversample,
                    dtype=dtype.to_complex(),
                    device=device,
                )
            )
            # Parseval: energy fraction per sub-sample = |sum P exp(..)|² (Δf Δx)² / sum |P|²
            scales.append((du * lens.na / wl * lens.pixel_um / oversample) ** 2 / float((amp**2).sum()))
        self.register_buffer("mfts", torch.stack(mfts))
        self.scales = scales
        self.weights = [float(w) for w in lens.weights]

    def opd(self, coefficients_um: torch.Tensor) -> torch.Tensor:
        """Optical path difference (µm) on the pupil grid, (B, N, N), from (B, J) coefficients in µm RMS."""
        if coefficients_um.ndim != 2 or coefficients_um.shape[1] != len(self.modes):
            raise ValueError(
                f"coefficients_um: expected shape (B, {len(self.modes)}) for modes {self.modes}, "
                f"got {tuple(coefficients_um.shape)}"
            )
        n = self.lens.pupil_samples
        coefficients_um = coefficients_um.to(self.basis.dtype)
        return (coefficients_um @ self.basis).reshape(-1, n, n)

    def forward(self, coefficients_um: torch.Tensor, *, normalize: str = "window") -> torch.Tensor:
        """PSFs for a batch of Zernike coefficient vectors.

        Parameters
        ----------
        coefficients_um : (B, J) Tensor, µm RMS of optical path difference, modes ``self.modes``
        normalize : {'window', 'energy'}, see the module docstring

        Returns
        -------
        (B, size, size) Tensor, axes (y, x), dtype of the model.
        """
        if normalize not in ("window", "energy"):
            raise ValueError(f"normalize: expected 'window' or 'energy', got {normalize!r}")
        opd = self.opd(coefficients_um)
        psf = 0.0
        for mft, scale, weight, wl in zip(self.mfts, self.scales, self.weights, self.lens.wavelengths_um, strict=True):
            pupil = _pupil(self.amplitude, (2.0 * math.pi / wl) * opd)
            psf = psf + weight * pupil_to_psf(pupil, mft, oversample=self.oversample, scale=scale)
        if normalize == "window":
            psf = psf / psf.sum(dim=(-2, -1), keepdim=True)
        return psf

    def wavefront_step_bound(self, coefficients_um: torch.Tensor) -> torch.Tensor:
        """(B,) upper bound of :meth:`max_wavefront_step` (waves): ``Σ_j |c_j| max|ΔZ_j| / λ_min``, cheap."""
        return (coefficients_um.abs().to(self.basis_step.dtype) @ self.basis_step) / min(self.lens.wavelengths_um)

    def max_wavefront_step(self, coefficients_um: torch.Tensor) -> torch.Tensor:
        """(B,) largest wavefront change between neighbouring pupil samples, waves at the shortest wavelength."""
        with torch.no_grad():
            return wavefront_step_waves(self.opd(coefficients_um), self.mask, min(self.lens.wavelengths_um))


def strehl_ratio(lens: Lens, hx, hy) -> np.ndarray:
    """Strehl ratio at field points, at the reference wavelength, piston and tilt excluded.

    ``S = |Σ A exp(2πi W')|² / (Σ A)²`` over the pupil samples, with ``W'`` the wavefront without Zernike piston
    and tilt (which move the PSF without blurring it).

    Returns
    -------
    float64 array, the broadcast shape of ``hx`` and ``hy``.
    """
    modes = [nm for nm in lens.aberrations.modes() if nm[0] >= 2]
    hx, hy = np.broadcast_arrays(np.asarray(hx, dtype=float), np.asarray(hy, dtype=float))
    amp = lens_pupil_amplitude(lens).ravel()
    if not modes:
        return np.ones(hx.shape)
    waves = lens.zernike_waves(hx.ravel(), hy.ravel(), modes)  # (B, J)
    basis = zernike_basis(modes, lens.pupil_samples).reshape(len(modes), -1)
    phase = 2.0 * np.pi * waves @ basis
    s = np.abs((amp * np.exp(1j * phase)).sum(axis=1)) ** 2 / amp.sum() ** 2
    return s.reshape(hx.shape)


def required_pupil_samples(lens: Lens, coefficients_um: np.ndarray, modes) -> int:
    """Smallest pupil sampling (up to 10 % above it) at which one wavefront changes by <= half a wave per sample.

    The step is measured on the sampled grid at each candidate sampling: finer grids reach closer to the pupil
    edge, where most aberrations are steepest, so the step does not simply shrink as 1 / N.
    """
    wavelength = min(lens.wavelengths_um)
    n = lens.pupil_samples
    while True:
        n = max(n + 1, math.ceil(n * 1.1))
        _, _, mask = pupil_polar(n)
        opd = np.tensordot(coefficients_um, zernike_basis(modes, n), axes=1)[None]
        step = float(wavefront_step_waves(torch.from_numpy(opd), torch.from_numpy(mask), wavelength)[0])
        if step <= MAX_WAVEFRONT_STEP:
            return n


def compute_psfs(
    lens: Lens,
    hx,
    hy,
    *,
    size: int = 64,
    oversample: int = 1,
    dtype=torch.float32,
    device=None,
    allow_undersampled: bool = False,
    batch_size: int = 128,
    progress=None,
) -> tuple[np.ndarray, np.ndarray]:
    """PSFs of the lens's field model at field points, with the sampling checks.

    Parameters
    ----------
    lens : Lens
    hx, hy : (B,) float arrays, normalised field coordinates (:mod:`optisim.field`)
    size, oversample, dtype, device : see :class:`PSFModel`
    allow_undersampled : bool, skip the pixel-size (Nyquist) check
    batch_size : int, field points per batch (bounds memory)
    progress : callable(int) or None, called with the number of PSFs finished in each batch

    Returns
    -------
    psf : (B, size, size) float array, each summing to 1
    energy : (B,) float array, fraction of each PSF's total energy inside the window

    Raises
    ------
    SamplingError
        Pixel undersamples the PSF, or the wavefront changes by more than half a wave between pupil samples.
    """
    check_pixel_sampling(lens, allow_undersampled=allow_undersampled)
    hx, hy = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (hx, hy))
    modes = lens.aberrations.modes()
    model = PSFModel(lens, modes, size=size, oversample=oversample, dtype=dtype, device=device)
    coeffs = torch.as_tensor(lens.zernike_um(hx, hy, modes), dtype=dtype, device=device)
    psfs, energies = [], []
    with torch.no_grad():
        for start in range(0, len(hx), batch_size):
            c = coeffs[start : start + batch_size]
            # the exact step (a pass over every pupil) only where the cheap bound does not already clear it
            step = model.wavefront_step_bound(c)
            if float(step.max()) > MAX_WAVEFRONT_STEP:
                step = model.max_wavefront_step(c)
            worst = int(torch.argmax(step))
            if float(step[worst]) > MAX_WAVEFRONT_STEP:
                n = lens.pupil_samples
                need = required_pupil_samples(lens, c[worst].double().cpu().numpy(), modes)
                raise SamplingError(
                    f"pupil sampling {n} is too coarse for the aberrations at field ({hx[start + worst]:.3g}, "
                    f"{hy[start + worst]:.3g}): the wavefront changes by {float(step[worst]):.3g} waves between "
                    f"neighbouring pupil samples (limit {MAX_WAVEFRONT_STEP}); use at least {need} pupil samples"
                )
            psf = model(c, normalize="energy")
            energy = psf.sum(dim=(-2, -1))
            psfs.append((psf / energy[:, None, None]).cpu().numpy())
            energies.append(energy.cpu().numpy())
            if progress is not None:
                progress(len(c))
    return np.concatenate(psfs), np.concatenate(energies)
