"""Zernike polynomials: index conventions, RMS-normalised evaluation in numpy and torch.

Conventions (stated once, used everywhere in optisim)
-----------------------------------------------------
* Internal index: the pair ``(n, m)``, radial order ``n >= 0``, azimuthal frequency ``|m| <= n`` with
  ``n - |m|`` even. ``m > 0`` is the cosine term ``cos(m θ)``, ``m < 0`` the sine term ``sin(|m| θ)``.
* Single-index conventions are converted at the edges (files, CLI):
  Noll (Noll 1976, ``j = 1, 2, ...``: even ``j`` are cosine terms, odd ``j`` sine terms) and
  ANSI/OSA (ANSI Z80.28, ``j = (n (n + 2) + m) / 2``, starting at 0).
* Normalisation: every mode has RMS 1 over the unit disk (Noll's normalisation, as in poppy's
  ``noll_normalize=True``): ``Z_n^m = sqrt(2 (n + 1) / (1 + δ_m0)) R_n^|m|(ρ) {cos, sin}(|m| θ)``.
  A coefficient is therefore the RMS wavefront error contributed by that mode.
* Coordinates: ``ρ`` in units of the pupil radius, ``θ = atan2(y, x)`` in radians, measured from the pupil's
  +x axis (array columns) toward +y (array rows). Values outside the unit disk are returned as computed
  (callers mask them).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = [
    "ansi_to_nm",
    "index_to_nm",
    "mode_name",
    "nm_to_ansi",
    "nm_to_index",
    "nm_to_noll",
    "noll_to_nm",
    "parse_convention",
    "radial_coefficients",
    "validate_nm",
    "zernike_nm",
]

CONVENTIONS = ("noll", "ansi")

_NAMES = {
    (0, 0): "piston",
    (1, 1): "tilt x",
    (1, -1): "tilt y",
    (2, 0): "defocus",
    (2, -2): "oblique astigmatism",
    (2, 2): "vertical astigmatism",
    (3, -1): "vertical coma",
    (3, 1): "horizontal coma",
    (3, -3): "vertical trefoil",
    (3, 3): "oblique trefoil",
    (4, 0): "primary spherical",
    (4, 2): "vertical secondary astigmatism",
    (4, -2): "oblique secondary astigmatism",
    (4, 4): "vertical quadrafoil",
    (4, -4): "oblique quadrafoil",
    (6, 0): "secondary spherical",
}


def _as_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what}: expected an integer, got {value!r} ({type(value).__name__})")
    return int(value)


def validate_nm(n, m) -> tuple[int, int]:
    """Check that ``(n, m)`` is a Zernike index and return it as plain ints.

    Raises
    ------
    TypeError
        If ``n`` or ``m`` is not an integer.
    ValueError
        If ``n < 0``, ``|m| > n`` or ``n - |m|`` is odd.
    """
    n = _as_int(n, "Zernike radial order n")
    m = _as_int(m, "Zernike azimuthal frequency m")
    if n < 0:
        raise ValueError(f"(n, m) = ({n}, {m}) is not a Zernike index: n must be >= 0")
    if abs(m) > n:
        raise ValueError(f"(n, m) = ({n}, {m}) is not a Zernike index: |m| must be <= n")
    if (n - abs(m)) % 2:
        raise ValueError(f"(n, m) = ({n}, {m}) is not a Zernike index: n - |m| must be even")
    return n, m


def noll_to_nm(j) -> tuple[int, int]:
    """Noll index ``j >= 1`` to ``(n, m)``.

    Examples
    --------
    >>> noll_to_nm(4), noll_to_nm(5), noll_to_nm(11)
    ((2, 0), (2, -2), (4, 0))
    """
    j = _as_int(j, "Noll index j")
    if j < 1:
        raise ValueError(f"Noll index j must be >= 1 (Noll indices start at 1), got {j}")
    n = int((math.isqrt(8 * j - 7) - 1) // 2)
    k = j - n * (n + 1) // 2  # 1-based position within radial order n
    m_abs = 2 * (k // 2) if n % 2 == 0 else 2 * ((k - 1) // 2) + 1
    if m_abs == 0:
        return n, 0
    return n, m_abs if j % 2 == 0 else -m_abs


def nm_to_noll(n, m) -> int:
    """``(n, m)`` to Noll index ``j >= 1`` (inverse of :func:`noll_to_nm`)."""
    n, m = validate_nm(n, m)
    first = n * (n + 1) // 2 + 1
    for j in range(first, first + n + 1):
        if noll_to_nm(j) == (n, m):
            return j
    raise RuntimeError(f"no Noll index for ({n}, {m})")  # unreachable for a valid (n, m)


def ansi_to_nm(j) -> tuple[int, int]:
    """ANSI/OSA index ``j >= 0`` to ``(n, m)``.

    Examples
    --------
    >>> ansi_to_nm(0), ansi_to_nm(4), ansi_to_nm(12)
    ((0, 0), (2, 0), (4, 0))
    """
    j = _as_int(j, "ANSI index j")
    if j < 0:
        raise ValueError(f"ANSI/OSA index j must be >= 0 (ANSI indices start at 0), got {j}")
    n = int((math.isqrt(8 * j + 1) - 1) // 2)
    m = 2 * j - n * (n + 2)
    return n, m


def nm_to_ansi(n, m) -> int:
    """``(n, m)`` to ANSI/OSA index ``j >= 0``: ``j = (n (n + 2) + m) / 2``."""
    n, m = validate_nm(n, m)
    return (n * (n + 2) + m) // 2


def parse_convention(convention: str) -> str:
    """Return the lower-case convention name, or raise a ValueError naming the allowed ones."""
    if not isinstance(convention, str) or convention.lower() not in CONVENTIONS:
        raise ValueError(f"Zernike index convention: expected one of {CONVENTIONS}, got {convention!r}")
    return convention.lower()


def index_to_nm(j, convention: str) -> tuple[int, int]:
    """Single index in ``convention`` ('noll' or 'ansi') to ``(n, m)``."""
    return noll_to_nm(j) if parse_convention(convention) == "noll" else ansi_to_nm(j)


def nm_to_index(n, m, convention: str) -> int:
    """``(n, m)`` to a single index in ``convention`` ('noll' or 'ansi')."""
    return nm_to_noll(n, m) if parse_convention(convention) == "noll" else nm_to_ansi(n, m)


def mode_name(n, m) -> str:
    """Common name of a mode, e.g. ``'defocus'`` for (2, 0); ``'Z(n,m)'`` where none is usual."""
    n, m = validate_nm(n, m)
    return _NAMES.get((n, m), f"Z({n},{m})")


@lru_cache(maxsize=256)
def radial_coefficients(n: int, m: int) -> tuple[tuple[int, float], ...]:
    """Terms ``(power, coefficient)`` of the RMS-normalised radial part ``N_nm R_n^|m|(ρ)``."""
    n, m = validate_nm(n, m)
    m_abs = abs(m)
    norm = math.sqrt(n + 1) if m == 0 else math.sqrt(2.0 * (n + 1))
    terms = []
    for k in range((n - m_abs) // 2 + 1):
        c = (
            (-1) ** k
            * math.factorial(n - k)
            / (math.factorial(k) * math.factorial((n + m_abs) // 2 - k) * math.factorial((n - m_abs) // 2 - k))
        )
        terms.append((n - 2 * k, norm * c))
    return tuple(terms)


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def zernike_nm(n, m, rho, theta):
    """Evaluate the RMS-normalised Zernike mode ``(n, m)`` at polar points.

    Parameters
    ----------
    n, m : int
        Zernike index (see module docstring).
    rho : array or Tensor, any shape
        Radius in units of the pupil radius (1 at the pupil edge). Points with ``rho > 1`` are evaluated
        as the polynomial (no masking).
    theta : array or Tensor, same shape as ``rho``
        Azimuth in radians from +x toward +y.

    Returns
    -------
    array or Tensor, same shape, dtype and device as ``rho``
        ``Z_n^m(ρ, θ)``, dimensionless, RMS 1 over the unit disk. Differentiable in torch.
    """
    n, m = validate_nm(n, m)  # before the cached call: lru_cache would accept 2.0 once (2, 0) is cached
    terms = radial_coefficients(n, m)
    if _is_torch(rho):
        import torch

        cos, sin = torch.cos, torch.sin
    else:
        rho = np.asarray(rho, dtype=float)
        theta = np.asarray(theta, dtype=float)
        cos, sin = np.cos, np.sin
    if tuple(rho.shape) != tuple(theta.shape):
        raise ValueError(f"rho and theta: expected the same shape, got {tuple(rho.shape)} and {tuple(theta.shape)}")
    radial = 0.0 * rho
    for power, coeff in terms:
        radial = radial + coeff * rho**power
    if m > 0:
        return radial * cos(m * theta)
    if m < 0:
        return radial * sin(-m * theta)
    return radial
