"""Images of sub-resolution fluorescent beads: a differentiable bead-image model, and synthetic bead images.

Model
-----
A uniformly stained sphere of diameter ``d`` µm at the sub-pixel offset ``(Δy, Δx)`` (pixels) from a window's
centre pixel and at the axial distance ``z`` µm from the focal plane is imaged through the lens's pupil. The
optical path difference over the pupil (normalised coordinates ``u, v``, ``ρ = sqrt(u² + v²)``, as in
:mod:`optisim.pupil`) is::

    OPD(u, v) = Σ_j c_j Z_j(ρ, θ)  +  z (n - sqrt(n² - NA² ρ²))  -  NA p (u Δx + v Δy)        µm

* ``c_j`` : RMS-normalised Zernike coefficients, µm (:mod:`optisim.zernike`);
* the defocus term is the exact scalar defocus of a point ``z`` µm from focus in the immersion medium of index
  ``n`` (not its paraxial Zernike approximation, which fails at high NA). Sign: ``z > 0`` bends the wavefront the
  way a positive Zernike defocus coefficient does (paraxially ``c_4 = z NA² / (4 √3 n)``);
* the last term is a tilt that moves the image by ``(Δy, Δx)`` pixels of ``p`` µm (a linear phase in the pupil
  shifts the MFT's output exactly, with no interpolation).

The intensity is computed on ``s x s`` sub-samples per pixel (:func:`optisim.psf.mft_matrix`), convolved with
the sphere's projection (in the Fourier domain: a uniform ball's transform ``3 (sin q - q cos q) / q³`` with
``q = π d |f|``, ``f`` in cycles per µm, by the projection-slice theorem), then summed over each pixel's
sub-samples (pixel integration). Broadband light sums the per-wavelength images with the lens's weights.
``modality='confocal'`` squares the intensity before the bead convolution (a closed pinhole with the excitation
PSF approximated by the emission PSF, ``I_exc I_det ≈ I²``).

Each image is normalised to the fraction of the bead's energy per pixel (Parseval, as
``PSFModel(normalize='energy')``), summed over wavelengths; confocal images are normalised to sum 1 over the
window of the in-focus plane ``z = 0``. Images are ``(B, Z, size, size)``, axes (bead, plane, y, x).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from optisim.field import pixel_to_field
from optisim.lens import Lens
from optisim.noise import CameraNoise, apply_noise
from optisim.psf import output_coordinates
from optisim.pupil import lens_pupil_amplitude, pupil_coordinates, pupil_polar, zernike_basis

__all__ = [
    "MODALITIES",
    "BeadModel",
    "defocus_opd",
    "defocus_zernike_um",
    "render_beads",
    "simulate_bead_image",
    "sphere_transfer",
]

MODALITIES = ("widefield", "confocal")


def sphere_transfer(frequency, diameter_um: float):
    """Fourier transform of a uniform sphere's projection at in-plane spatial frequencies (cycles per µm).

    ``T(f) = 3 (sin q - q cos q) / q³``, ``q = π d |f|``; ``T(0) = 1`` (the projection keeps the bead's energy).
    Works on numpy arrays and torch tensors; a diameter of 0 gives 1 everywhere (a point source).
    """
    lib = torch if isinstance(frequency, torch.Tensor) else np
    q = math.pi * float(diameter_um) * lib.abs(frequency)
    small = q < 1e-2
    qs = lib.where(small, lib.ones_like(q), q)
    exact = 3.0 * (lib.sin(qs) - qs * lib.cos(qs)) / qs**3
    return lib.where(small, 1.0 - q**2 / 10.0, exact)


def defocus_opd(n_samples: int, *, na: float, immersion_index: float) -> np.ndarray:
    """``n - sqrt(n² - NA² ρ²)`` on the ``(N, N)`` pupil grid, zero outside the aperture: OPD (µm) per µm of z."""
    rho, _, mask = pupil_polar(n_samples)
    d = immersion_index - np.sqrt(np.clip(immersion_index**2 - (na * rho) ** 2, 0.0, None))
    return np.where(mask, d, 0.0)


def defocus_zernike_um(z_um, modes, *, na: float, immersion_index: float, n_samples: int = 256) -> np.ndarray:
    """Zernike coefficients (µm RMS) of the exact defocus OPD of ``z_um`` (least squares over the aperture).

    Only rotationally symmetric modes (``m = 0``) receive a non-zero coefficient. Returns ``(..., J)`` float64.
    """
    basis = zernike_basis(modes, n_samples)
    _, _, mask = pupil_polar(n_samples)
    d = defocus_opd(n_samples, na=na, immersion_index=immersion_index)
    a = basis[:, mask].T  # (P, J)
    per_um, *_ = np.linalg.lstsq(np.c_[np.ones(len(a)), a], d[mask], rcond=None)  # with piston
    return np.asarray(z_um, dtype=float)[..., None] * per_um[1:]


def _pupil_samples(lens: Lens, size: int, z_max_um: float, na: float) -> int:
    """Pupil samples for an alias-free window (25 % spare NA) and at most half a wave of defocus per sample."""
    lam = min(lens.wavelengths_um)
    alias = 1.25 * size * lens.pixel_um * 2 * na / lam
    n = lens.immersion_index
    slope = na**2 / math.sqrt(max(n**2 - na**2, 1e-6))
    defocus = 4.0 * z_max_um * slope / lam
    return int(8 * math.ceil(max(64, alias, defocus) / 8))


class BeadModel(torch.nn.Module):
    """Bead images from Zernike coefficients, sub-pixel offsets and axial positions (see the module docstring).

    Parameters
    ----------
    lens : Lens
        Wavelengths, NA, immersion index, apodisation and object-space pixel size (its aberrations are not used).
    modes : list of (n, m)
        Zernike modes of the coefficient vectors.
    size : int
        Window side, pixels.
    planes_um : sequence of float or None
        Axial positions of the image planes relative to the reference plane, µm (a z-stack); None: one plane at 0.
    bead_diameter_um : float, µm (0: a point source)
    oversample : int, sub-samples per pixel along each axis
    modality : {'widefield', 'confocal'}
    pupil_samples : int or None, default from the window, the NA and the largest defocus
    dtype, device : torch dtype (float32 or float64) and device

    Examples
    --------
    >>> model = BeadModel(load_preset("default"), [(2, 0), (2, 2)], size=21, bead_diameter_um=0.1)
    >>> img = model(torch.zeros(1, 2))           # (1, 1, 21, 21), in-focus bead at the window centre
    """

    def __init__(
        self,
        lens: Lens,
        modes,
        *,
        size: int,
        planes_um=None,
        bead_diameter_um: float = 0.0,
        oversample: int = 2,
        modality: str = "widefield",
        pupil_samples: int | None = None,
        dtype=torch.float32,
        device=None,
    ):
        super().__init__()
        if not isinstance(size, int) or size < 3:
            raise ValueError(f"size: expected a window of at least 3 pixels, got {size!r}")
        if not isinstance(oversample, int) or oversample < 1:
            raise ValueError(f"oversample: expected a positive integer, got {oversample!r}")
        if not bead_diameter_um >= 0:
            raise ValueError(f"bead_diameter_um: expected a diameter >= 0 µm, got {bead_diameter_um}")
        if modality not in MODALITIES:
            raise ValueError(f"modality: expected one of {MODALITIES}, got {modality!r}")
        planes = np.zeros(1) if planes_um is None else np.asarray(planes_um, dtype=float).ravel()
        self.lens, self.modes, self.size, self.oversample = lens, [tuple(m) for m in modes], size, oversample
        self.bead_diameter_um, self.modality = float(bead_diameter_um), modality
        z_max = float(np.abs(planes).max()) + 2.0  # room for the bead's own axial offset
        n = pupil_samples or _pupil_samples(lens, size, z_max if planes_um is not None else 0.0, lens.na)
        self.pupil_samples = n
        kw = {"dtype": dtype, "device": device}
        _, _, mask = pupil_polar(n)
        self.register_buffer("planes", torch.as_tensor(planes, **kw))
        self.register_buffer("amplitude", torch.as_tensor(lens_pupil_amplitude(lens.replace(pupil_samples=n)), **kw))
        self.register_buffer("mask", torch.as_tensor(mask))
        basis = zernike_basis(self.modes, n).reshape(len(self.modes), n * n)
        self.register_buffer("basis", torch.as_tensor(basis, **kw))
        u = pupil_coordinates(n)
        self.register_buffer("u", torch.as_tensor(u, **kw))
        x = output_coordinates(size, lens.pixel_um, oversample)
        self.register_buffer("xu", torch.as_tensor(np.outer(x, u), **kw))  # (size s, N), µm
        rho, _, _ = pupil_polar(n)
        self.register_buffer("rho2", torch.as_tensor(np.where(mask, rho**2, 0.0), **kw))
        m = size * oversample
        f = np.fft.fftfreq(m, d=lens.pixel_um / oversample)
        fr = np.fft.rfftfreq(m, d=lens.pixel_um / oversample)
        bead = sphere_transfer(np.hypot(f[:, None], fr[None, :]), self.bead_diameter_um)
        self.register_buffer("bead_otf", torch.as_tensor(bead, **kw))

    def extra_opd(self, na: torch.Tensor, shift_px: torch.Tensor, z_um: torch.Tensor, axial_scale=None) -> torch.Tensor:
        """Defocus and tilt OPD (µm) of every (bead, plane), ``(B, Z, N, N)``; ``na`` a (B,) tensor."""
        nidx = self.lens.immersion_index
        na = na[:, None, None]
        d = (nidx - torch.sqrt(torch.clamp(nidx**2 - na**2 * self.rho2, min=1e-12))) * self.mask  # (B, N, N)
        planes = self.planes[None, :] if axial_scale is None else axial_scale[:, None] * self.planes[None, :]
        z = z_um[:, None] + planes  # (B, Z)
        tilt_x = self.u[None, None, :] * shift_px[:, 1, None, None]
        tilt_y = self.u[None, :, None] * shift_px[:, 0, None, None]
        tilt = -na * self.lens.pixel_um * (tilt_x + tilt_y) * self.mask  # (B, N, N)
        return z[:, :, None, None] * d[:, None] + tilt[:, None]

    def forward(
        self, coefficients_um: torch.Tensor, *, shift_px=None, z_um=None, na=None, falloff=None, axial_scale=None
    ) -> torch.Tensor:
        """Bead images.

        Parameters
        ----------
        coefficients_um : (B, J) Tensor, µm RMS, modes ``self.modes``
        shift_px : (B, 2) Tensor or None, (Δy, Δx) offset of the bead from the window's centre pixel, pixels
        z_um : (B,) Tensor or None, the bead's axial distance from the reference plane, µm
        na : float, (B,) Tensor or None (the lens's NA): numerical aperture of each bead's image (differentiable)
        falloff : (B,) Tensor or None: pupil amplitude multiplied by ``exp(-falloff ρ²)`` (a transmission that
            falls toward the pupil's edge, as in many real objectives; 0 or None: the lens's apodisation only)
        axial_scale : (B,) Tensor or None: the planes' positions are multiplied by it (the focal shift per unit of
            the stack's nominal z-step, which a refractive-index mismatch or a mis-stated step makes differ from 1)

        Returns
        -------
        (B, Z, size, size) Tensor: energy per pixel (see the module docstring).
        """
        b, n = coefficients_um.shape[0], self.pupil_samples
        if coefficients_um.ndim != 2 or coefficients_um.shape[1] != len(self.modes):
            raise ValueError(
                f"coefficients_um: expected shape (B, {len(self.modes)}), got {tuple(coefficients_um.shape)}"
            )
        dtype = self.basis.dtype
        shift_px = torch.zeros(b, 2, dtype=dtype, device=self.basis.device) if shift_px is None else shift_px
        z_um = torch.zeros(b, dtype=dtype, device=self.basis.device) if z_um is None else z_um
        na = torch.as_tensor(self.lens.na if na is None else na, dtype=dtype, device=self.basis.device)
        na = na.expand(b) if na.ndim == 0 else na
        extra = self.extra_opd(na, shift_px, z_um, axial_scale)
        opd = (coefficients_um.to(dtype) @ self.basis).reshape(b, 1, n, n) + extra
        opd = opd.reshape(-1, n, n)
        na_planes = na.repeat_interleave(len(self.planes))[:, None, None]  # (B Z, 1, 1)
        amplitude = self.amplitude[None]
        if falloff is not None:
            amplitude = amplitude * torch.exp(-falloff[:, None, None] * self.rho2)
            amplitude = amplitude.repeat_interleave(len(self.planes), dim=0)
        image = 0.0
        for wl, weight in zip(self.lens.wavelengths_um, self.lens.weights, strict=True):
            image = image + float(weight) * self._intensity(opd, wl, na_planes, amplitude)
        image = image.reshape(b, len(self.planes), *image.shape[-2:])
        if self.modality == "confocal":
            image = image**2
        spectrum = torch.fft.rfft2(image) * self.bead_otf
        image = torch.fft.irfft2(spectrum, s=image.shape[-2:])
        s = self.oversample
        image = image.reshape(b, len(self.planes), self.size, s, self.size, s).sum(dim=(3, 5))
        if self.modality == "confocal":
            focus = int(torch.argmin(self.planes.abs()))
            image = image / image[:, focus].sum(dim=(-2, -1))[:, None, None, None]
        return image

    def _intensity(self, opd: torch.Tensor, wavelength_um: float, na: torch.Tensor, amplitude) -> torch.Tensor:
        """Sub-sampled intensity (energy per sub-sample) of the pupils ``A exp(2πi OPD / λ)``, ``(B, M, M)``.

        ``na`` : (B, 1, 1) Tensor, the NA of each pupil (sets the MFT's frequency scale);
        ``amplitude`` : (1 or B, N, N) Tensor, the pupil amplitude.
        """
        pupil = torch.polar(amplitude.expand_as(opd), (2.0 * math.pi / wavelength_um) * opd)
        arg = (2.0 * math.pi / wavelength_um) * na * self.xu  # (B, M, N)
        mft = torch.polar(torch.ones_like(arg), arg)
        field = mft @ (pupil @ mft.transpose(-2, -1))
        du = 2.0 / self.pupil_samples
        energy = amplitude.square().sum(dim=(-2, -1), keepdim=True)
        scale = (du * na / wavelength_um * self.lens.pixel_um / self.oversample) ** 2 / energy
        return (field.real.square() + field.imag.square()) * scale


def render_beads(
    lens: Lens,
    rows,
    cols,
    *,
    photons,
    planes_um=None,
    z_um=None,
    bead_diameter_um: float = 0.1,
    size: int = 31,
    oversample: int = 2,
    modality: str = "widefield",
    batch_size: int = 32,
) -> np.ndarray:
    """Expected photo-electrons of beads on the sensor, each with the lens's PSF at its own field point.

    Parameters
    ----------
    lens : Lens (the field model gives each bead's Zernike coefficients)
    rows, cols : (N,) float arrays, bead centres in sensor pixels (row y, column x)
    photons : float or (N,) array, e- per bead (its total energy, all of it inside an unbounded window)
    planes_um, z_um : the image planes (µm) and each bead's axial position (µm, (N,) or None), see BeadModel
    bead_diameter_um, size, oversample, modality : see BeadModel (``size``: the window each bead is drawn in)

    Returns
    -------
    (Z, ny, nx) float64 array, e- per pixel (no background, no noise).
    """
    rows, cols = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (rows, cols))
    photons = np.broadcast_to(np.asarray(photons, dtype=float), rows.shape)
    z_um = np.zeros(rows.shape) if z_um is None else np.broadcast_to(np.asarray(z_um, dtype=float), rows.shape).copy()
    modes = lens.aberrations.modes()
    model = BeadModel(
        lens, modes, size=size, planes_um=planes_um, bead_diameter_um=bead_diameter_um, oversample=oversample,
        modality=modality, dtype=torch.float64,
    )  # fmt: skip
    ny, nx = lens.sensor_shape
    out = np.zeros((len(model.planes), ny + 2 * size, nx + 2 * size))
    hx, hy = pixel_to_field(rows, cols, lens.sensor_shape)
    coeffs = lens.zernike_um(hx, hy, modes)
    r0, c0 = np.round(rows).astype(int), np.round(cols).astype(int)
    shift = np.stack([rows - r0, cols - c0], axis=1)
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            sl = slice(start, start + batch_size)
            img = model(
                torch.as_tensor(coeffs[sl]), shift_px=torch.as_tensor(shift[sl]), z_um=torch.as_tensor(z_um[sl])
            ).numpy()
            for k, i in enumerate(range(len(rows))[sl]):
                y0, x0 = r0[i] + size - size // 2, c0[i] + size - size // 2
                out[:, y0 : y0 + size, x0 : x0 + size] += photons[i] * img[k]
    return out[:, size : size + ny, size : size + nx]


def simulate_bead_image(
    lens: Lens,
    n_beads: int,
    *,
    rng: np.random.Generator,
    photons=(2e4, 1e5),
    noise: CameraNoise | None = None,
    planes_um=None,
    bead_diameter_um: float = 0.1,
    margin: int | None = None,
    min_separation: float | None = None,
    size: int = 31,
    oversample: int = 2,
) -> tuple[np.ndarray, dict]:
    """A synthetic bead image (or z-stack) of ``lens``: beads scattered over the sensor, with camera noise.

    Parameters
    ----------
    lens : Lens; n_beads : int
    rng : numpy Generator (positions, brightness and the noise's torch seed all come from it)
    photons : (low, high) e- per bead, drawn log-uniformly
    noise : CameraNoise or None (default: ``CameraNoise(photons=1, background=20, read_noise=2, output='adu')``,
        so the image is in ADU with the camera's offset; ``photons=1`` makes the input unit one photo-electron)
    planes_um : image planes of a z-stack (µm), or None for one in-focus image
    margin : pixels kept free at the border (default ``size // 2 + 2``)
    min_separation : smallest distance between beads, pixels (default ``size``)
    size, oversample, bead_diameter_um : see :func:`render_beads`

    Returns
    -------
    image : (Z, ny, nx) float32 array (ADU with the default noise)
    truth : dict with ``rows``, ``cols`` (N,) pixels; ``hx``, ``hy`` (N,) field; ``photons`` (N,) e-;
        ``modes`` (list of (n, m)) and ``zernike_waves`` (N, J) waves RMS at the lens's reference wavelength.
    """
    ny, nx = lens.sensor_shape
    margin = size // 2 + 2 if margin is None else int(margin)
    min_sep = float(size if min_separation is None else min_separation)
    rows, cols = [], []
    for _ in range(200 * n_beads):
        r, c = rng.uniform(margin, ny - 1 - margin), rng.uniform(margin, nx - 1 - margin)
        if all(math.hypot(r - r2, c - c2) >= min_sep for r2, c2 in zip(rows, cols, strict=True)):
            rows.append(r)
            cols.append(c)
            if len(rows) == n_beads:
                break
    if len(rows) < n_beads:
        raise ValueError(
            f"n_beads: only {len(rows)} beads fit on a {ny}x{nx} sensor {min_sep:g} pixels apart, asked for {n_beads}"
        )
    rows, cols = np.array(rows), np.array(cols)
    lo, hi = photons
    counts = np.exp(rng.uniform(np.log(lo), np.log(hi), n_beads))
    expected = render_beads(
        lens, rows, cols, photons=counts, planes_um=planes_um, bead_diameter_um=bead_diameter_um, size=size,
        oversample=oversample,
    )  # fmt: skip
    noise = CameraNoise(photons=1.0, background=20.0, read_noise=2.0, output="adu") if noise is None else noise
    generator = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
    image = apply_noise(torch.as_tensor(expected), noise, generator=generator).numpy().astype(np.float32)
    hx, hy = pixel_to_field(rows, cols, lens.sensor_shape)
    modes = lens.aberrations.modes()
    truth = {
        "rows": rows,
        "cols": cols,
        "hx": hx,
        "hy": hy,
        "photons": counts,
        "modes": modes,
        "zernike_waves": lens.zernike_waves(hx, hy, modes),
    }
    return image, truth
