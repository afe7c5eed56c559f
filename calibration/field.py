"""The parametric field model: the lens file's field polynomials fitted to the per-bead Zernike coefficients.

Every Zernike coefficient is modelled as a polynomial in the normalised field coordinates (:mod:`optisim.field`),
``c_j(hx, hy) = Σ_t a_jt hx^p_t hy^q_t`` over all monomials of total degree ``<= degree`` (default 2: constant,
tilt-like, and the quadratic terms of field curvature and astigmatism; coma's linear field dependence is among
them). These are the lens file's ``[[aberrations.terms]]`` (:mod:`optisim.aberrations`), so the fit becomes a
calibrated lens file that every optisim command reads.

Each mode is fitted on its own by robust least squares (``scipy.optimize.least_squares`` with the ``soft_l1``
loss): residuals are scaled by each bead's coefficient uncertainty combined in quadrature with ``floor_waves``
(the model's own accuracy), so an outlier bead (a dust speck, a bead pair, a failed fit) is down-weighted rather
than dragging the surface. A bead's weight ``1 / sqrt(1 + (r / f)²)`` (the soft-L1 IRLS weight) is reported; beads
whose weight falls below 0.5 in any mode are flagged as outliers. Coefficient uncertainties come from the
Jacobian at the solution, scaled by the weighted residual variance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from calibration.fit import BeadFits, even_modes
from optisim.aberrations import FieldModel, FieldTerm
from optisim.field import pixel_to_field
from optisim.lens import Lens
from optisim.zernike import mode_name, nm_to_noll

__all__ = ["FieldFit", "fit_field", "monomials", "resolve_signs"]


def monomials(degree: int) -> list[tuple[int, int]]:
    """Powers ``(p, q)`` of ``hx^p hy^q`` with ``p + q <= degree``, by total degree then ``q``."""
    if not isinstance(degree, int) or not 0 <= degree <= 6:
        raise ValueError(f"degree: expected an integer polynomial degree in 0..6, got {degree!r}")
    return [(d - q, q) for d in range(degree + 1) for q in range(d + 1)]


def _design(hx, hy, powers) -> np.ndarray:
    hx, hy = np.asarray(hx, dtype=float), np.asarray(hy, dtype=float)
    return np.stack([hx**p * hy**q for p, q in powers], axis=-1)


@dataclass
class FieldFit:
    """Field polynomials of every mode.

    Attributes
    ----------
    modes : list of (n, m); powers : list of (p, q), the monomials ``hx^p hy^q``
    coefficients, uncertainty : (J, T) float, waves RMS at ``wavelength_um`` per unit monomial
    residual_rms : (J,) float, waves RMS: robustly weighted RMS of the beads' residuals from the fitted surface
    weights : (N, J) float in (0, 1], each bead's robust weight per mode; outliers : (N,) bool
    hx, hy : (N,) float, the beads' field positions
    wavelength_um : float
    """

    modes: list
    powers: list
    coefficients: np.ndarray
    uncertainty: np.ndarray
    residual_rms: np.ndarray
    weights: np.ndarray
    outliers: np.ndarray
    hx: np.ndarray
    hy: np.ndarray
    wavelength_um: float

    def predict(self, hx, hy) -> np.ndarray:
        """Coefficients ``(..., J)`` in waves RMS at field points."""
        return _design(hx, hy, self.powers) @ self.coefficients.T

    def field_model(self) -> FieldModel:
        """The fit as a lens file's aberration model (``terms``, waves RMS, Noll numbering)."""
        terms = [
            FieldTerm(nm, float(a), p, q)
            for nm, row in zip(self.modes, self.coefficients, strict=True)
            for (p, q), a in zip(self.powers, row, strict=True)
        ]
        return FieldModel(terms=tuple(terms), unit="waves_rms", reference_wavelength_um=self.wavelength_um)

    def lens(self, nominal: Lens, *, name: str | None = None, description: str = "") -> Lens:
        """``nominal`` (optics and sensor) with the fitted aberrations."""
        return nominal.replace(
            name=name or f"{nominal.name}-calibrated",
            description=description or f"calibrated from beads; field polynomials of degree {self.degree}",
            aberrations=self.field_model(),
        )

    @property
    def degree(self) -> int:
        return max(p + q for p, q in self.powers)

    def to_dict(self) -> dict:
        """Every number, JSON-ready: per mode its Noll index, name, terms with uncertainties and RMS residual."""
        return {
            "unit": "waves_rms",
            "wavelength_um": self.wavelength_um,
            "convention": "noll",
            "modes": [
                {
                    "noll": nm_to_noll(*nm),
                    "name": mode_name(*nm),
                    "residual_rms_waves": float(self.residual_rms[j]),
                    "terms": [
                        {
                            "hx_power": p,
                            "hy_power": q,
                            "coefficient": float(self.coefficients[j, t]),
                            "uncertainty": float(self.uncertainty[j, t]),
                        }
                        for t, (p, q) in enumerate(self.powers)
                    ],
                }
                for j, nm in enumerate(self.modes)
            ],
            "outlier_beads": np.flatnonzero(self.outliers).tolist(),
        }


def _fit_mode(x: np.ndarray, y: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Robust weighted fit of one mode: (coefficients, uncertainties, weighted RMS residual, robust weights)."""
    a0, *_ = np.linalg.lstsq(x / sigma[:, None], y / sigma, rcond=None)
    result = least_squares(lambda a: (x @ a - y) / sigma, a0, loss="soft_l1", f_scale=1.0, method="trf")
    r = result.fun
    weights = 1.0 / np.sqrt(1.0 + r**2)
    xw = x * (np.sqrt(weights) / sigma)[:, None]
    dof = max(len(y) - x.shape[1], 1)
    s2 = max(float((weights * r**2).sum() / dof), 1.0)  # never claim more precision than the bead errors give
    cov = np.linalg.pinv(xw.T @ xw) * s2
    resid = x @ result.x - y
    rms = float(np.sqrt((weights * resid**2).sum() / weights.sum()))
    return result.x, np.sqrt(np.clip(np.diag(cov), 0, None)), rms, weights


def fit_field(fits: BeadFits, sensor_shape, *, degree: int = 2, floor_waves: float = 0.005) -> FieldFit:
    """Fit the field polynomials of every mode to the per-bead coefficients (see the module docstring).

    Parameters
    ----------
    fits : BeadFits (sign-resolved for 2D images: :func:`resolve_signs`)
    sensor_shape : (ny, nx), the sensor the bead positions refer to
    degree : int, total degree of the field polynomials
    floor_waves : float, waves RMS added in quadrature to every bead's uncertainty
    """
    powers = monomials(degree)
    if len(fits) < len(powers):
        raise ValueError(
            f"a degree-{degree} field model has {len(powers)} terms per mode but only {len(fits)} beads were fitted; "
            f"lower --field-degree or image more beads"
        )
    hx, hy = pixel_to_field(fits.rows, fits.cols, sensor_shape)
    x = _design(hx, hy, powers)
    shape = (len(fits.modes), len(powers))
    coefficients, uncertainty = np.zeros(shape), np.zeros(shape)
    rms, weights = np.zeros(len(fits.modes)), np.ones((len(fits), len(fits.modes)))
    for j in range(len(fits.modes)):
        sigma = np.sqrt(fits.uncertainty[:, j] ** 2 + floor_waves**2)
        coefficients[j], uncertainty[j], rms[j], weights[:, j] = _fit_mode(x, fits.coefficients[:, j], sigma)
    return FieldFit(
        modes=list(fits.modes),
        powers=powers,
        coefficients=coefficients,
        uncertainty=uncertainty,
        residual_rms=rms,
        weights=weights,
        outliers=(weights < 0.5).any(axis=1),
        hx=hx,
        hy=hy,
        wavelength_um=fits.wavelength_um,
    )


def resolve_signs(
    fits: BeadFits, sensor_shape, *, degree: int = 2, prior: Lens | None = None, max_rounds: int = 10
) -> tuple[BeadFits, np.ndarray]:
    """Choose the sign of every bead's even modes so that the beads agree across the field (2D images).

    Starts from the design lens ``prior`` where it has even aberrations (each bead takes the sign closer to the
    prior's prediction), otherwise from positive defocus; then alternates a robust field fit with flipping every
    bead whose flipped coefficients lie closer to the fitted surface, until no bead changes. Finally the global
    sign follows the prior, or (without one) makes the mean defocus over the beads positive.

    Returns
    -------
    fits : BeadFits with resolved signs; flipped : (N,) bool, the beads whose even modes were flipped
    """
    even = even_modes(fits.modes)
    hx, hy = pixel_to_field(fits.rows, fits.cols, sensor_shape)
    reference = None
    if prior is not None:
        reference = prior.zernike_waves(hx, hy, fits.modes) * prior.reference_wavelength_um / fits.wavelength_um
        if not np.abs(reference[:, even]).max(initial=0.0) > 1e-6:
            reference = None
    if reference is not None:
        flip = _closer_flipped(fits.coefficients, reference, even)
    else:
        defocus = fits.modes.index((2, 0)) if (2, 0) in fits.modes else int(np.argmax(even))
        flip = fits.coefficients[:, defocus] < 0
    for _ in range(max_rounds):
        current = fits.flip_even(flip)
        surface = fit_field(current, sensor_shape, degree=degree).predict(hx, hy)
        change = _closer_flipped(current.coefficients, surface, even)
        if not change.any():
            break
        flip ^= change
    current = fits.flip_even(flip)
    if reference is not None:
        agree = float((current.coefficients[:, even] * reference[:, even]).sum())
    else:
        agree = (
            float(current.coefficients[:, even][:, 0].mean())
            if (2, 0) not in fits.modes
            else float(current.coefficients[:, fits.modes.index((2, 0))].mean())
        )
    if agree < 0:
        flip = ~flip
    return fits.flip_even(flip), flip


def _closer_flipped(coefficients: np.ndarray, target: np.ndarray, even: np.ndarray) -> np.ndarray:
    """(N,) bool: beads whose even-flipped coefficients are closer to ``target`` than their own."""
    flipped = coefficients * np.where(even, -1.0, 1.0)
    return ((flipped - target) ** 2).sum(1) < ((coefficients - target) ** 2).sum(1) - 1e-12
