"""Per-bead phase retrieval: Zernike coefficients, position, brightness and background of every bead image.

Each bead crop is fitted with :class:`optisim.beads.BeadModel` (finite bead, pixel integration, exact defocus),
so the fit and the simulator share one forward model. The parameters of a bead are

* the Zernike coefficients of ``FitConfig.modes`` (Noll indices, RMS-normalised, fitted in waves RMS at the
  lens's reference wavelength);
* its sub-pixel offset ``(Δy, Δx)`` from the crop's centre pixel (a pupil tilt, so piston and tilt are not fitted
  as Zernikes);
* for a z-stack, its axial position ``z`` (µm from the stack's reference plane) in place of Zernike defocus: the
  planes' known spacing is the phase diversity that makes the fit unique;
* optionally (``fit_pupil``) the NA and a Gaussian fall-off of the pupil's transmission toward its edge, and for
  a stack the axial scale (focal shift per nominal z-step: a refractive-index mismatch between immersion and
  sample, or a stage step that is not the focal step, makes it differ from 1), per bead. Real objectives are
  rarely uniform pupils, and a measured z-stack shows it;
* brightness and background, solved in closed form (linear least squares) at every evaluation (variable
  projection), so the iterative fit sees only the non-linear parameters.

The fit is an unweighted least-squares fit by Levenberg-Marquardt, all beads at once but each with its own
damping and acceptance; the Jacobian is taken by forward differences in float64. A 2D image starts from several
defoci (``FitConfig.starts``) and keeps each bead's best; a stack starts from the detected plane of focus.

The sign of even aberrations in one 2D image
--------------------------------------------
One in-focus image cannot tell a wavefront ``W(ρ, θ)`` from ``-W(ρ, θ + π)``: both give the same intensity
(the field of one is the complex conjugate of the other's, mirrored twice). Zernike modes of even radial order
``n`` (defocus, astigmatism, spherical, secondary astigmatism, quadrafoil) change sign under this map, odd ones
(coma, trefoil) do not. So a 2D fit determines each bead's even coefficients only up to a common sign. The fit
reports whichever sign it reached; :func:`calibration.field.resolve_signs` then makes the signs agree across the
field (a bead's even part is flipped when the flipped vector lies closer to the field model), and fixes the one
global sign that remains with a design lens (``prior``) or, without one, by the convention that the mean defocus
over the beads is positive. That global sign is not measurable from 2D images: both choices predict identical
images, so the forward model and the calibrated network do not depend on it. A z-stack has no such ambiguity.

Uncertainties are the square roots of the diagonal of ``s² (JᵀJ)⁻¹`` at the solution, with ``s²`` the residual
variance per pixel: the spread the coefficients would have under noise like the residual.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from optisim.beads import MODALITIES, BeadModel, defocus_zernike_um
from optisim.lens import Lens
from optisim.zernike import noll_to_nm

__all__ = ["BeadFits", "FitConfig", "even_modes", "fit_beads"]


@dataclass(frozen=True)
class FitConfig:
    """How beads are fitted.

    Parameters
    ----------
    modes : tuple of int, Noll indices of the fitted Zernike modes (default 4..15; piston and tilt are never fitted)
    bead_diameter_um : float, µm
    oversample : int, sub-samples per pixel for pixel integration
    modality : {'widefield', 'confocal'}
    fit_pupil : bool, also fit each bead's NA and pupil fall-off (see the module docstring)
    iterations : int, Levenberg-Marquardt iterations per start
    starts : tuple of float, initial defocus (waves RMS) of the starts of a 2D fit
    """

    modes: tuple[int, ...] = tuple(range(4, 16))
    bead_diameter_um: float = 0.1
    oversample: int = 2
    modality: str = "widefield"
    fit_pupil: bool = False
    iterations: int = 40
    starts: tuple[float, ...] = (0.05, 0.3, 0.6)

    def __post_init__(self):
        modes = tuple(int(j) for j in self.modes)
        if not modes or min(modes) < 4 or len(set(modes)) != len(modes):
            raise ValueError(
                f"modes: expected distinct Noll indices >= 4 (piston and tilt are not fitted), got {modes}"
            )
        object.__setattr__(self, "modes", modes)
        if not self.bead_diameter_um >= 0:
            raise ValueError(f"bead_diameter_um: expected a diameter >= 0 µm, got {self.bead_diameter_um}")
        if self.modality not in MODALITIES:
            raise ValueError(f"modality: expected one of {MODALITIES}, got {self.modality!r}")
        if self.iterations < 1 or not self.starts:
            raise ValueError(f"iterations and starts: expected >= 1 and at least one start, got {self.iterations}")

    def to_dict(self) -> dict:
        return {**asdict(self), "modes": list(self.modes), "starts": list(self.starts)}


def even_modes(modes) -> np.ndarray:
    """(J,) bool: modes of even radial order, whose sign one 2D image does not determine."""
    return np.array([n % 2 == 0 for n, _ in modes], dtype=bool)


@dataclass
class BeadFits:
    """Fitted beads (N beads, J modes, Z planes, crops of w x w pixels).

    Attributes
    ----------
    modes : list of (n, m), the modes of ``coefficients`` (the config's Noll indices, in order)
    coefficients : (N, J) float, waves RMS at ``wavelength_um``: the bead's wavefront at the reference plane
        (for a stack, the fitted axial position's exact defocus is projected onto the modes and added)
    uncertainty : (N, J) float, waves RMS, one standard deviation
    rows, cols : (N,) float, bead centres on the sensor, pixels
    centres : (N, 2) int, sensor pixel (row, col) of each crop's centre pixel
    z_um : (N,) float or None, axial position from the reference plane (stacks), µm
    na : (N,) float, the NA of each bead's fit (the lens's NA unless ``fit_pupil``)
    falloff : (N,) float, the pupil amplitude's fall-off ``exp(-falloff ρ²)`` (0 unless ``fit_pupil``)
    axial_scale : (N,) float, focal shift per nominal z-step (1 unless ``fit_pupil`` on a stack)
    amplitude : (N,) float, the bead's energy in image units (integrated over an unbounded window, all planes)
    background : (N,) float, image units per pixel
    correlation : (N,) float, Pearson correlation of model and data over the crop
    residual : (N,) float, RMS of data - model over the crop, relative to the data's peak above background
    data, model : (N, Z, w, w) float32, the crops and the fitted images
    wavelength_um : float, the wavelength of ``coefficients``' waves
    """

    modes: list
    coefficients: np.ndarray
    uncertainty: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    centres: np.ndarray
    z_um: np.ndarray | None
    na: np.ndarray
    falloff: np.ndarray
    axial_scale: np.ndarray
    amplitude: np.ndarray
    background: np.ndarray
    correlation: np.ndarray
    residual: np.ndarray
    data: np.ndarray = field(repr=False)
    model: np.ndarray = field(repr=False)
    wavelength_um: float = 0.0

    def __len__(self) -> int:
        return len(self.rows)

    def flip_even(self, flip) -> BeadFits:
        """A copy with the even modes' signs flipped for the beads where ``flip`` (N,) is True."""
        sign = np.where(np.asarray(flip, dtype=bool)[:, None] & even_modes(self.modes)[None, :], -1.0, 1.0)
        return replace(self, coefficients=self.coefficients * sign)

    def subset(self, index) -> BeadFits:
        """The fits of the beads ``index`` (an index array or a boolean mask)."""
        out = {}
        for name, value in self.__dict__.items():
            out[name] = value[index] if isinstance(value, np.ndarray) else value
        return BeadFits(**out)

    def rms_error(self, truth_waves) -> np.ndarray:
        """(N,) RMS wavefront difference from ``truth_waves`` (N, J), waves: ``sqrt(Σ_j Δc_j²)``."""
        return np.sqrt(((self.coefficients - np.asarray(truth_waves)) ** 2).sum(axis=1))


class _Problem:
    """The residual of every bead as a function of its packed non-linear parameters (float64)."""

    def __init__(self, model: BeadModel, data: torch.Tensor, n_modes: int, fit_z: bool, fit_pupil: bool, wavelength):
        self.model, self.data, self.n_modes = model, data, n_modes
        self.fit_z, self.fit_pupil, self.wavelength = fit_z, fit_pupil, wavelength
        self.flat = data.flatten(1)  # (B, M)
        self.lower, self.upper = self._bounds()

    def _bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Box bounds of the packed parameters: a step never leaves the physically meaningful range."""
        half = self.model.size / 2
        lens = self.model.lens
        lo = [-3.0] * self.n_modes + [-half, -half]  # waves RMS; pixels
        hi = [3.0] * self.n_modes + [half, half]
        if self.fit_z:
            reach = float(self.model.planes.abs().max()) + 2.0
            lo, hi = [*lo, -reach], [*hi, reach]  # µm
        if self.fit_pupil:
            lo += [0.5 * lens.na, -2.0]
            hi += [min(1.5 * lens.na, 0.98 * lens.immersion_index), 10.0]
            if self.fit_z:
                lo, hi = [*lo, 0.25], [*hi, 4.0]
        return torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)

    def unpack(self, theta: torch.Tensor) -> dict:
        j = self.n_modes
        out = {"coefficients_um": theta[:, :j] * self.wavelength, "shift_px": theta[:, j : j + 2]}
        k = j + 2
        if self.fit_z:
            out["z_um"], k = theta[:, k], k + 1
        if self.fit_pupil:
            out["na"], out["falloff"] = theta[:, k], theta[:, k + 1]
            if self.fit_z:
                out["axial_scale"] = theta[:, k + 2]
        return out

    def images(self, theta: torch.Tensor) -> torch.Tensor:
        """Model images (B, M) float64 of the packed parameters (computed in the model's dtype)."""
        params = {k: v.to(self.model.basis.dtype) for k, v in self.unpack(theta).items()}
        with torch.no_grad():
            return self.model(**params).flatten(1).double()

    def solve_linear(self, image: torch.Tensor, repeat: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Least-squares amplitude and background of ``data ≈ a image + b`` per bead, (B,), (B,).

        ``repeat``: each bead's data serves ``repeat`` consecutive rows of ``image``.
        """
        flat = self.flat.repeat_interleave(repeat, dim=0) if repeat > 1 else self.flat
        m = image.shape[1]
        si, sd = image.sum(1), flat.sum(1)
        sii, sid = (image * image).sum(1), (image * flat).sum(1)
        det = m * sii - si * si
        a = (m * sid - si * sd) / det
        return a, (sd - a * si) / m

    def residual(self, theta: torch.Tensor, repeat: int = 1) -> torch.Tensor:
        """Data minus the best-scaled model, (B, M) float64 (``repeat``: see :meth:`solve_linear`)."""
        image = self.images(theta)
        a, b = self.solve_linear(image, repeat)
        flat = self.flat.repeat_interleave(repeat, dim=0) if repeat > 1 else self.flat
        return flat - a[:, None] * image - b[:, None]


def _jacobian(problem: _Problem, theta: torch.Tensor, r: torch.Tensor, step: float) -> torch.Tensor:
    """Forward-difference Jacobian ``(B, M, P)``, all P perturbations of all beads in one batch."""
    b, p = theta.shape
    shifted = theta[:, None, :] + step * torch.eye(p, dtype=theta.dtype)[None]  # (B, P, P)
    r_shift = problem.residual(shifted.reshape(b * p, p), repeat=p).reshape(b, p, -1)
    return ((r_shift - r[:, None, :]) / step).transpose(1, 2)


def _levenberg_marquardt(problem: _Problem, theta: torch.Tensor, iterations: int, step: float = 1e-3):
    """Batched Levenberg-Marquardt (each bead its own damping); returns (theta, cost (B,), jacobian (B, M, P))."""
    b = theta.shape[0]
    lam = torch.full((b,), 1e-2, dtype=torch.float64)
    r = problem.residual(theta)
    cost = (r * r).sum(1)
    active = torch.ones(b, dtype=torch.bool)
    jac = _jacobian(problem, theta, r, step)
    for _ in range(iterations):
        h = jac.transpose(1, 2) @ jac
        g = jac.transpose(1, 2) @ r[:, :, None]
        diag = torch.diagonal(h, dim1=1, dim2=2).clamp(min=1e-12)
        delta = -torch.linalg.solve(h + torch.diag_embed(lam[:, None] * diag), g)[:, :, 0]
        trial = torch.minimum(torch.maximum(theta + delta, problem.lower), problem.upper)
        r_new = problem.residual(trial)
        cost_new = (r_new * r_new).sum(1)
        better = (cost_new < cost) & active
        gain = (cost - cost_new) / cost.clamp(min=1e-300)
        theta = torch.where(better[:, None], trial, theta)
        r = torch.where(better[:, None], r_new, r)
        cost = torch.where(better, cost_new, cost)
        lam = torch.where(better, lam / 3.0, lam * 4.0).clamp(1e-9, 1e9)
        active &= ~((better & (gain < 1e-7)) | (lam >= 1e6))
        if not bool(active.any()):
            break
        jac = torch.where(better[:, None, None], _jacobian(problem, theta, r, step), jac)
    return theta, cost, jac


def fit_beads(
    crops,
    centres,
    positions,
    lens: Lens,
    *,
    config: FitConfig = FitConfig(),
    planes_um=None,
    z_init_um=None,
    progress=None,
) -> BeadFits:
    """Fit every bead crop (see the module docstring).

    Parameters
    ----------
    crops : (N, Z, w, w) float array, image units, background not subtracted
    centres : (N, 2) int array, sensor pixel (row, col) of each crop's centre pixel ``(w // 2, w // 2)``
    positions : (N, 2) float array, detected bead centres (row, col) on the sensor, pixels (the starting point)
    lens : Lens, optics and pixel size (its aberrations are not used)
    config : FitConfig
    planes_um : (Z,) float array, positions of a stack's planes from its reference plane, µm (None for 2D)
    z_init_um : (N,) float array, starting axial positions of the beads in a stack, µm
    progress : callable(int) or None, called with the number of beads finished

    Returns
    -------
    BeadFits
    """
    crops = np.asarray(crops, dtype=np.float64)
    if crops.ndim != 4 or crops.shape[-1] != crops.shape[-2] or crops.shape[-1] % 2 == 0:
        raise ValueError(f"crops: expected shape (N, Z, w, w) with an odd w, got {crops.shape}")
    n_beads, n_planes, w = crops.shape[0], crops.shape[1], crops.shape[-1]
    if (planes_um is None) != (n_planes == 1):
        raise ValueError(
            f"planes_um: expected {n_planes} plane positions for crops of {n_planes} planes, got {planes_um}"
        )
    stack = planes_um is not None
    all_modes = [noll_to_nm(j) for j in config.modes]
    free = [nm for nm in all_modes if not (stack and nm == (2, 0))]  # a stack's defocus is its z
    model = BeadModel(
        lens, free, size=w, planes_um=planes_um, bead_diameter_um=config.bead_diameter_um,
        oversample=config.oversample, modality=config.modality, dtype=torch.float32,
    )  # fmt: skip
    wl = lens.reference_wavelength_um
    data = torch.as_tensor(crops)
    problem = _Problem(model, data, len(free), stack, config.fit_pupil, wl)
    centres = np.asarray(centres, dtype=float)
    shift0 = torch.as_tensor(np.asarray(positions, dtype=float) - centres)
    best_theta, best_cost, best_jac = None, None, None
    starts = [0.0] if stack else config.starts
    for start in starts:
        theta = _initial(n_beads, free, shift0, stack, config.fit_pupil, start, z_init_um, lens.na)
        theta, cost, jac = _levenberg_marquardt(problem, theta, config.iterations)
        if best_theta is None:
            best_theta, best_cost, best_jac = theta, cost, jac
        else:
            better = cost < best_cost
            best_theta = torch.where(better[:, None], theta, best_theta)
            best_cost = torch.where(better, cost, best_cost)
            best_jac = torch.where(better[:, None, None], jac, best_jac)
    if progress is not None:
        progress(n_beads)
    return _collect(problem, best_theta, best_cost, best_jac, all_modes, free, centres, lens, planes_um)


def _initial(n, free, shift0, stack, fit_pupil, defocus, z_init_um, na) -> torch.Tensor:
    parts = [torch.zeros(n, len(free), dtype=torch.float64), shift0]
    if not stack and (2, 0) in free:
        parts[0][:, free.index((2, 0))] = defocus
    if stack:
        z0 = np.zeros(n) if z_init_um is None else np.asarray(z_init_um, dtype=float)
        parts.append(torch.as_tensor(z0)[:, None])
    if fit_pupil:
        start = [float(na), 0.0] + ([1.0] if stack else [])
        parts.append(torch.tensor([start], dtype=torch.float64).expand(n, len(start)))
    return torch.cat(parts, dim=1)


def _collect(problem: _Problem, theta, cost, jac, modes, free, centres, lens, planes_um) -> BeadFits:
    """BeadFits from the solution: coefficients on the reported modes, uncertainties, quality figures."""
    wl = lens.reference_wavelength_um
    n, m, p = jac.shape
    with torch.no_grad():
        image = problem.images(theta)
        a, b = problem.solve_linear(image)
        model = (a[:, None] * image + b[:, None]).reshape(problem.data.shape)
    s2 = cost / max(m - p - 2, 1)
    cov = torch.linalg.pinv(jac.transpose(1, 2) @ jac) * s2[:, None, None]
    sigma = torch.sqrt(torch.diagonal(cov, dim1=1, dim2=2).clamp(min=0)).numpy()
    th = theta.numpy()
    coefficients, uncertainty = np.zeros((n, len(modes))), np.zeros((n, len(modes)))
    for j, nm in enumerate(free):
        coefficients[:, modes.index(nm)] = th[:, j]
        uncertainty[:, modes.index(nm)] = sigma[:, j]
    k = len(free) + 2
    z_um = na = None
    if planes_um is not None:
        z_um, zs = th[:, k], sigma[:, k]
        k += 1
    na = th[:, k] if problem.fit_pupil else np.full(n, lens.na)
    falloff = th[:, k + 1] if problem.fit_pupil else np.zeros(n)
    axial_scale = th[:, k + 2] if problem.fit_pupil and z_um is not None else np.ones(n)
    if z_um is not None:
        for i in range(n):  # each bead's defocus, at its own NA
            per_um = defocus_zernike_um(1.0, modes, na=na[i], immersion_index=lens.immersion_index) / wl
            coefficients[i] += z_um[i] * per_um
            uncertainty[i] = np.sqrt(uncertainty[i] ** 2 + (zs[i] * per_um) ** 2)
    data = problem.data.numpy()
    flat_d, flat_m = data.reshape(n, -1), model.numpy().reshape(n, -1)
    corr = np.array([np.corrcoef(d, mm)[0, 1] for d, mm in zip(flat_d, flat_m, strict=True)])
    peak = flat_d.max(1) - b.numpy()
    shift = th[:, len(free) : len(free) + 2]
    return BeadFits(
        modes=modes,
        coefficients=coefficients,
        uncertainty=uncertainty,
        rows=centres[:, 0] + shift[:, 0],
        cols=centres[:, 1] + shift[:, 1],
        centres=centres.astype(int),
        z_um=z_um,
        na=na,
        falloff=falloff,
        axial_scale=axial_scale,
        amplitude=a.numpy(),
        background=b.numpy(),
        correlation=corr,
        residual=np.sqrt(cost.numpy() / m) / np.maximum(peak, 1e-300),
        data=data.astype(np.float32),
        model=model.numpy().astype(np.float32),
        wavelength_um=wl,
    )
