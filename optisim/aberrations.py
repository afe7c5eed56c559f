"""Field-dependent Zernike aberrations: every coefficient a polynomial in the normalised field coordinates.

Field model
-----------
Every Zernike coefficient is a polynomial in the normalised field coordinates ``(hx, hy)`` of
:mod:`optisim.field` (``h = sqrt(hx² + hy²)``, ``φ = atan2(hy, hx)``, sensor half-width = 1). The classical
field dependences of a rotationally symmetric lens are named parameters; arbitrary extra terms
``coefficient * hx**hx_power * hy**hy_power`` may be added to any mode (misaligned systems are not symmetric).

===================  =========================  ===================================================
parameter            mode (n, m)                coefficient at field (hx, hy)
===================  =========================  ===================================================
``spherical``        (4, 0)                     ``S`` (constant over the field)
``field_curvature``  (2, 0) defocus             ``F h²``
``astigmatism``      (2, 2), (2, -2)            ``A h² cos 2φ = A (hx² - hy²)``, ``A h² sin 2φ = 2 A hx hy``
``coma``             (3, 1), (3, -1)            ``C h cos φ = C hx``, ``C h sin φ = C hy``
``distortion``       (1, 1), (1, -1) tilt       ``D h² hx``, ``D h² hy`` (tilt ~ h³ along the field azimuth)
===================  =========================  ===================================================

Coefficients are RMS-normalised Zernike coefficients (:mod:`optisim.zernike`) in the file's ``unit``:
``"waves_rms"`` (waves at ``reference_wavelength_um``) or ``"um_rms"`` (µm of optical path difference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from optisim._keys import reject_unknown_keys
from optisim.zernike import index_to_nm, mode_name, nm_to_index, parse_convention, validate_nm

__all__ = ["SEIDEL", "UNITS", "FieldModel", "FieldTerm", "LensFileError"]

UNITS = ("waves_rms", "um_rms")
SEIDEL = ("spherical", "field_curvature", "astigmatism", "coma", "distortion")


class LensFileError(ValueError):
    """A lens file or lens dictionary that cannot be read: bad TOML, unknown or mistyped keys, bad values."""


def _reject_unknown(table: dict, allowed, where: str) -> None:
    reject_unknown_keys(table, allowed, "lens file", prefix=where, error=LensFileError)


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LensFileError(f"'{where}': expected a number, got {value!r}")
    return float(value)


def _integer(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LensFileError(f"'{where}': expected an integer, got {value!r}")
    return value


@dataclass(frozen=True)
class FieldTerm:
    """One extra polynomial term of the field model.

    Parameters
    ----------
    mode : (n, m)
        Zernike index (internal convention, :mod:`optisim.zernike`).
    coefficient : float
        Coefficient in the field model's unit (waves RMS or µm RMS) per unit ``hx**hx_power * hy**hy_power``.
    hx_power, hy_power : int >= 0
        Powers of the normalised field coordinates.
    """

    mode: tuple[int, int]
    coefficient: float
    hx_power: int = 0
    hy_power: int = 0

    def __post_init__(self):
        object.__setattr__(self, "mode", validate_nm(*self.mode))
        if self.hx_power < 0 or self.hy_power < 0:
            raise ValueError(f"field term powers must be >= 0, got hx_power={self.hx_power}, hy_power={self.hy_power}")


@dataclass(frozen=True)
class FieldModel:
    """Field-dependent Zernike aberrations (see the module docstring for the polynomial forms).

    Parameters
    ----------
    spherical, field_curvature, astigmatism, coma, distortion : float
        Classical field dependences, in ``unit`` per unit of the field power in the table above.
    terms : tuple of FieldTerm
        Extra polynomial terms, added to the classical ones.
    unit : {'waves_rms', 'um_rms'}
        Unit of every coefficient.
    reference_wavelength_um : float or None, µm
        Wavelength that ``'waves_rms'`` refers to. ``None`` lets :class:`Lens` set it to the mean wavelength.
    convention : {'noll', 'ansi'}
        How modes are numbered in the lens file (internally modes are ``(n, m)``).
    """

    spherical: float = 0.0
    field_curvature: float = 0.0
    astigmatism: float = 0.0
    coma: float = 0.0
    distortion: float = 0.0
    terms: tuple[FieldTerm, ...] = ()
    unit: str = "waves_rms"
    reference_wavelength_um: float | None = None
    convention: str = "noll"

    def __post_init__(self):
        if self.unit not in UNITS:
            raise LensFileError(f"'aberrations.unit': expected one of {UNITS}, got {self.unit!r}")
        object.__setattr__(self, "convention", parse_convention(self.convention))
        object.__setattr__(self, "terms", tuple(self.terms))
        if self.reference_wavelength_um is not None and not self.reference_wavelength_um > 0:
            raise LensFileError(
                f"'aberrations.reference_wavelength_um': expected a positive wavelength in µm, "
                f"got {self.reference_wavelength_um}"
            )

    def polynomial_terms(self) -> list[FieldTerm]:
        """The whole model as a list of polynomial terms (classical parameters expanded, then ``terms``)."""
        out = []

        def add(mode, coeff, px, py):
            if coeff != 0.0:
                out.append(FieldTerm(mode, coeff, px, py))

        add((4, 0), self.spherical, 0, 0)
        for px, py in ((2, 0), (0, 2)):
            add((2, 0), self.field_curvature, px, py)
        add((2, 2), self.astigmatism, 2, 0)
        add((2, 2), -self.astigmatism, 0, 2)
        add((2, -2), 2.0 * self.astigmatism, 1, 1)
        add((3, 1), self.coma, 1, 0)
        add((3, -1), self.coma, 0, 1)
        for px, py in ((3, 0), (1, 2)):
            add((1, 1), self.distortion, px, py)
        for px, py in ((2, 1), (0, 3)):
            add((1, -1), self.distortion, px, py)
        return out + list(self.terms)

    def modes(self) -> list[tuple[int, int]]:
        """Modes ``(n, m)`` that the model uses, sorted by the file's index convention."""
        used = {t.mode for t in self.polynomial_terms()}
        return sorted(used, key=lambda nm: nm_to_index(*nm, self.convention))

    def coefficients(self, hx, hy, modes=None) -> np.ndarray:
        """Zernike coefficients at field points, in the model's ``unit``.

        Parameters
        ----------
        hx, hy : float arrays (broadcastable), normalised field coordinates
        modes : list of (n, m) or None (``self.modes()``)

        Returns
        -------
        (..., J) float64 array: coefficient of ``modes[j]`` at each field point.
        """
        modes = self.modes() if modes is None else [validate_nm(*nm) for nm in modes]
        hx, hy = np.broadcast_arrays(np.asarray(hx, dtype=float), np.asarray(hy, dtype=float))
        out = np.zeros((*hx.shape, len(modes)))
        index = {nm: j for j, nm in enumerate(modes)}
        for term in self.polynomial_terms():
            if term.mode in index:
                out[..., index[term.mode]] += term.coefficient * hx**term.hx_power * hy**term.hy_power
        return out

    def to_um(self, coefficients) -> np.ndarray:
        """Convert coefficients in the model's unit to µm RMS of optical path difference."""
        coefficients = np.asarray(coefficients, dtype=float)
        return coefficients * self.reference_wavelength_um if self.unit == "waves_rms" else coefficients

    def to_dict(self) -> dict:
        d = {
            "convention": self.convention,
            "unit": self.unit,
            "reference_wavelength_um": self.reference_wavelength_um,
        }
        d.update({name: getattr(self, name) for name in SEIDEL})
        d["terms"] = [
            {
                "mode": nm_to_index(*t.mode, self.convention),
                "name": mode_name(*t.mode),
                "coefficient": t.coefficient,
                "hx_power": t.hx_power,
                "hy_power": t.hy_power,
            }
            for t in self.terms
        ]
        if d["reference_wavelength_um"] is None:
            del d["reference_wavelength_um"]
        return d

    @classmethod
    def from_dict(cls, table: dict) -> FieldModel:
        allowed = ("convention", "unit", "reference_wavelength_um", *SEIDEL, "terms")
        _reject_unknown(table, allowed, "aberrations.")
        convention = table.get("convention", "noll")
        try:
            convention = parse_convention(convention)
        except ValueError as err:
            raise LensFileError(f"'aberrations.convention': {err}") from None
        kwargs = {name: _number(table[name], f"aberrations.{name}") for name in SEIDEL if name in table}
        terms = []
        for i, t in enumerate(table.get("terms", [])):
            where = f"aberrations.terms[{i}]."
            if not isinstance(t, dict):
                raise LensFileError(f"'{where[:-1]}': expected a table, got {t!r}")
            _reject_unknown(t, ("mode", "name", "coefficient", "hx_power", "hy_power"), where)
            for key in ("mode", "coefficient"):
                if key not in t:
                    raise LensFileError(f"'{where}{key}' is missing")
            try:
                nm = index_to_nm(_integer(t["mode"], where + "mode"), convention)
            except ValueError as err:
                raise LensFileError(f"'{where}mode': {err}") from None
            if "name" in t and t["name"] != mode_name(*nm):
                raise LensFileError(
                    f"'{where}name': mode {t['mode']} in the {convention} convention is "
                    f"'{mode_name(*nm)}', not '{t['name']}' (check the index convention)"
                )
            powers = [_integer(t.get(k, 0), where + k) for k in ("hx_power", "hy_power")]
            if min(powers) < 0:
                raise LensFileError(f"'{where}': hx_power and hy_power must be >= 0, got {powers}")
            terms.append(FieldTerm(nm, _number(t["coefficient"], where + "coefficient"), *powers))
        ref = table.get("reference_wavelength_um")
        return cls(
            **kwargs,
            terms=tuple(terms),
            unit=table.get("unit", "waves_rms"),
            reference_wavelength_um=None if ref is None else _number(ref, "aberrations.reference_wavelength_um"),
            convention=convention,
        )
