"""Eigen-PSFs and smooth weight maps: the low-rank model of a lens's PSF field, and the forward-operator builders.

A PSF grid ``P`` (G field points x kh·kw pixels, every PSF summing to 1) is factored by SVD,
``P = U S Vᵀ``. The K leading rows of ``Vᵀ`` are the eigen-PSFs ``e_k`` (unit L2 norm), and ``c_gk = U_gk S_k``
are their coefficients at the grid's field points, so ``h_g ≈ sum_k c_gk e_k``. The rank K is the smallest whose
relative Frobenius error over the grid, ``sqrt(sum_{i>=K} S_i²) / sqrt(sum_i S_i²)``, is at most ``tol``, or a fixed
``rank``. The coefficients are interpolated to every sensor pixel with bicubic splines over the field grid
(``scipy.interpolate.RectBivariateSpline``, interpolating), which gives the weight maps ``w_k``; the operator is then
``y = sum_k e_k * (w_k . x)`` (:mod:`optisim.blur`: each source pixel spreads with its own PSF).

Pixels beyond the grid (the grid spans the outermost sensor pixel centres; a blur margin can reach past the sensor
edge) take the coefficients of the nearest grid edge: the edge PSF is held constant outside the sensor.

References: Nagy & O'Leary, SIAM J. Sci. Comput. 19 (1998); Flicker & Rigaut, JOSA A 22 (2005).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from scipy.interpolate import BSpline, RectBivariateSpline

from optisim.blur import ExactBlur, ProductConvolution
from optisim.field import field_grid, pixel_to_field
from optisim.lens import Lens
from optisim.psf import compute_psfs

__all__ = [
    "DEFAULT_ENERGY",
    "DEFAULT_GRID",
    "DEFAULT_TOL",
    "EigenPSFs",
    "blur_operator",
    "exact_psfs",
    "kernel_size_for",
    "rank_for_tolerance",
    "reproducible_psf_grid",
]

DEFAULT_TOL = 1e-3  # relative Frobenius error of the rank-K PSF field over the grid
DEFAULT_GRID = (25, 25)  # field points of the PSF grid behind the weight maps
DEFAULT_ENERGY = 0.95  # fraction of the worst PSF's energy that the default kernel window holds
METHODS = ("lowrank", "exact")
EXACT_MAX_BYTES = 2 * 2**30  # per-pixel PSFs the exact operator may hold


def rank_for_tolerance(singular_values, tol: float) -> int:
    """Smallest K whose rank-K truncation has relative Frobenius error ``<= tol`` (see the module docstring)."""
    s = np.asarray(singular_values, dtype=float)
    if not 0 < tol < 1:
        raise ValueError(f"tol: expected a relative error in (0, 1), got {tol}")
    tail = np.sqrt(np.cumsum((s**2)[::-1])[::-1] / np.sum(s**2))  # tail[k] = error of rank k
    tail = np.append(tail, 0.0)
    return max(1, int(np.argmax(tail <= tol)))


def kernel_size_for(lens: Lens, *, energy: float = DEFAULT_ENERGY, max_size: int = 255, grid=(5, 5)) -> int:
    """Smallest odd PSF window holding ``energy`` of every PSF on a coarse field grid (at least 15 pixels).

    The PSFs are computed once in a ``max_size`` window; the fraction of the total energy inside each centred
    odd window is read off their cumulative sums.
    """
    if not 0 < energy < 1:
        raise ValueError(f"energy: expected a fraction in (0, 1), got {energy}")
    hy, hx = field_grid(lens.sensor_shape, grid)
    hyy, hxx = np.meshgrid(hy, hx, indexing="ij")
    psf, inside = compute_psfs(lens, hxx.ravel(), hyy.ravel(), size=max_size, allow_undersampled=True)
    c = max_size // 2
    for size in range(15, max_size + 1, 2):
        r = size // 2
        frac = psf[:, c - r : c + r + 1, c - r : c + r + 1].sum(axis=(1, 2)) * inside
        if frac.min() >= energy:
            return size
    raise ValueError(
        f"the PSFs of this lens spread over more than {max_size} pixels ({energy:.0%} energy); "
        f"pass kernel_size explicitly or reduce the aberrations"
    )


@dataclass(frozen=True, eq=False)
class EigenPSFs:
    """Low-rank PSF field: eigen-PSFs and their coefficients on a field grid.

    Attributes
    ----------
    kernels : (K, kh, kw) float32 array, eigen-PSFs, unit L2 norm, chief ray at (kh // 2, kw // 2)
    coefficients : (Gy, Gx, K) float64 array, coefficient of each eigen-PSF at each grid field point
    field_y, field_x : (Gy,), (Gx,) float arrays, normalised field coordinates of the grid (:mod:`optisim.field`)
    sensor_shape : (ny, nx) pixels
    singular_values : (min(G, kh·kw),) float array, all singular values of the PSF grid
    """

    kernels: np.ndarray
    coefficients: np.ndarray
    field_y: np.ndarray
    field_x: np.ndarray
    sensor_shape: tuple[int, int]
    singular_values: np.ndarray

    @property
    def rank(self) -> int:
        return int(self.kernels.shape[0])

    @property
    def relative_error(self) -> float:
        """Relative Frobenius error of the rank-K approximation of the PSF grid."""
        s2 = np.asarray(self.singular_values, dtype=float) ** 2
        return float(np.sqrt(s2[self.rank :].sum() / s2.sum()))

    @classmethod
    def from_psf_grid(cls, grid, *, rank: int | None = None, tol: float = DEFAULT_TOL) -> EigenPSFs:
        """Factor a PSF grid (the ``xarray.Dataset`` of :func:`optisim.grid.psf_grid`) into eigen-PSFs."""
        psf = np.asarray(grid["psf"].values, dtype=np.float64)
        gy, gx, kh, kw = psf.shape
        if gy < 4 or gx < 4:
            raise ValueError(f"grid: bicubic weight maps need at least 4x4 field points, got {gy}x{gx}")
        _, s, vt = np.linalg.svd(psf.reshape(gy * gx, kh * kw), full_matrices=False)
        if rank is None:
            rank = rank_for_tolerance(s, tol)
        elif not 1 <= int(rank) <= len(s):
            raise ValueError(f"rank: expected 1..{len(s)} (the PSF grid's rank), got {rank}")
        rank = int(rank)
        kernels = vt[:rank]
        # least-squares coefficients of every grid PSF in the (orthonormal) eigen-PSF basis, c = P Vᵀ
        coefficients = psf.reshape(gy * gx, kh * kw) @ kernels.T
        return cls(
            kernels=kernels.reshape(rank, kh, kw).astype(np.float32),
            coefficients=coefficients.reshape(gy, gx, rank),
            field_y=np.asarray(grid["field_y"].values, dtype=float),
            field_x=np.asarray(grid["field_x"].values, dtype=float),
            sensor_shape=tuple(int(v) for v in grid.attrs["sensor_shape"]),
            singular_values=s,
        )

    @classmethod
    def from_lens(
        cls,
        lens: Lens,
        *,
        kernel_size: int | None = None,
        grid=DEFAULT_GRID,
        rank: int | None = None,
        tol: float = DEFAULT_TOL,
        device=None,
        progress=None,
    ) -> EigenPSFs:
        """Compute the lens's PSF grid (``kernel_size`` window, default :func:`kernel_size_for`;
        :func:`reproducible_psf_grid`) and factor it."""
        size = kernel_size_for(lens) if kernel_size is None else int(kernel_size)
        ds = reproducible_psf_grid(lens, grid=grid, size=size, device=device, progress=progress)
        return cls.from_psf_grid(ds, rank=rank, tol=tol)

    @functools.cached_property
    def _spline(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Knots ``(ty, tx)`` and B-spline coefficients ``(K, ny, nx)`` of the interpolating bicubic splines."""
        splines = [
            RectBivariateSpline(self.field_y, self.field_x, self.coefficients[..., k], kx=3, ky=3)
            for k in range(self.rank)
        ]
        ty, tx = splines[0].get_knots()
        ny, nx = len(ty) - 4, len(tx) - 4
        return ty, tx, np.stack([s.get_coeffs().reshape(ny, nx) for s in splines])

    def _basis(self, h, axis: int) -> np.ndarray:
        """Dense B-spline design matrix of field coordinates ``h`` (clamped to the grid) along ``axis`` (0: y)."""
        grid = self.field_y if axis == 0 else self.field_x
        knots = self._spline[axis]
        h = np.clip(np.asarray(h, dtype=float), grid[0], grid[-1])
        return BSpline.design_matrix(h, knots, 3).toarray()

    def weights(self, offset=(0, 0), shape=None) -> np.ndarray:
        """Weight maps ``(K, h, w)`` float32 for the sensor pixels ``offset + [0, h) x [0, w)`` (rows, columns).

        ``shape`` defaults to the whole sensor; the region may reach past the sensor (clamped to the grid's edge).
        The bicubic spline is separable, so a region costs two small matrix products per eigen-PSF.
        """
        h, w = self.sensor_shape if shape is None else (int(v) for v in shape)
        rows = np.arange(h) + int(offset[0])
        cols = np.arange(w) + int(offset[1])
        _, hy = pixel_to_field(rows, np.zeros_like(rows), self.sensor_shape)
        hx, _ = pixel_to_field(np.zeros_like(cols), cols, self.sensor_shape)
        by, bx = self._basis(hy, 0), self._basis(hx, 1)
        return np.einsum("yi,kij,xj->kyx", by, self._spline[2], bx, optimize=True).astype(np.float32)

    def psfs_at(self, hx, hy) -> np.ndarray:
        """Low-rank PSFs ``(n, kh, kw)`` at field points (bicubic coefficients, clamped to the grid)."""
        hx, hy = np.broadcast_arrays(np.atleast_1d(np.asarray(hx, float)), np.atleast_1d(np.asarray(hy, float)))
        by, bx = self._basis(hy, 0), self._basis(hx, 1)
        c = np.einsum("ni,kij,nj->nk", by, self._spline[2], bx)
        return np.einsum("nk,kyx->nyx", c, self.kernels.astype(np.float64))

    def operator(self, offset=(0, 0), shape=None, *, device=None, dtype=torch.float32) -> ProductConvolution:
        """The low-rank forward operator for the region ``offset + shape`` of the sensor (whole sensor by default)."""
        weights = torch.as_tensor(self.weights(offset, shape), dtype=dtype, device=device)
        kernels = torch.as_tensor(self.kernels, dtype=dtype, device=device)
        return ProductConvolution(weights, kernels)


def reproducible_psf_grid(lens: Lens, *, grid, size: int, device=None, progress=None):
    """:func:`optisim.grid.psf_grid` on one torch CPU thread: the same grid, bit for bit, in every run.

    With two threads, MKL's complex matrix products gave one of three slightly different grids from run to run
    (measured 2026-12-05 on a 2-core machine, fresh processes: 3 of about 150 runs differed, 6 of 60 with address-space
    randomisation off; PSFs differing by up to 1.5e-6 in the first half of the batch). A rate that differs in its last
    bits can change a Poisson count, so datasets (and a resumed against an uninterrupted run) were not bit-identical.
    One thread gave the same grid in 80 of 80 runs and costs nothing measurable for the models' grids (25 x 25 PSFs of
    61 px: 0.53 s against 0.59 s with two threads). ``optisim psf`` keeps torch's threads.
    """
    from optisim._threads import torch_threads
    from optisim.grid import psf_grid

    with torch_threads(1):
        return psf_grid(lens, grid=grid, size=size, device=device, progress=progress)


def exact_psfs(
    lens: Lens, *, kernel_size: int, offset=(0, 0), shape=None, device=None, dtype=torch.float32, progress=None
) -> np.ndarray:
    """The PSF of every pixel of a sensor region, ``(h, w, kernel_size, kernel_size)``, each summing to 1.

    One PSF per pixel from the lens's field model (no interpolation): the reference for the low-rank operator.
    """
    h, w = lens.sensor_shape if shape is None else (int(v) for v in shape)
    rows, cols = np.meshgrid(np.arange(h) + int(offset[0]), np.arange(w) + int(offset[1]), indexing="ij")
    hx, hy = pixel_to_field(rows.ravel(), cols.ravel(), lens.sensor_shape)
    psf, _ = compute_psfs(
        lens, hx, hy, size=int(kernel_size), dtype=dtype, device=device, batch_size=512, progress=progress
    )
    return psf.reshape(h, w, int(kernel_size), int(kernel_size))


def blur_operator(
    lens: Lens,
    *,
    method: str = "lowrank",
    offset=(0, 0),
    shape=None,
    kernel_size: int | None = None,
    grid=DEFAULT_GRID,
    rank: int | None = None,
    tol: float = DEFAULT_TOL,
    device=None,
    dtype=torch.float32,
    progress=None,
):
    """Forward operator of a lens for a sensor region: :class:`ProductConvolution` or :class:`ExactBlur`.

    Parameters
    ----------
    lens : Lens
    method : {'lowrank', 'exact'}
    offset : (y0, x0) sensor pixel of the region's first pixel; shape : (h, w), default the whole sensor
    kernel_size : odd PSF window in pixels, default :func:`kernel_size_for` (95 % of the worst PSF's energy)
    grid, rank, tol : the low-rank model (see :class:`EigenPSFs`); ignored by 'exact'
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    size = kernel_size_for(lens) if kernel_size is None else int(kernel_size)
    if method == "exact":
        h, w = lens.sensor_shape if shape is None else (int(v) for v in shape)
        need = h * w * size * size * torch.tensor([], dtype=dtype).element_size()
        if need > EXACT_MAX_BYTES:
            raise ValueError(
                f"method 'exact': {h}x{w} pixels with {size}x{size} PSFs needs {need / 2**30:.1f} GiB of PSFs "
                f"(limit {EXACT_MAX_BYTES / 2**30:.0f} GiB); the exact operator is for images up to about 128x128, "
                f"use method 'lowrank'"
            )
        psfs = exact_psfs(
            lens, kernel_size=size, offset=offset, shape=shape, device=device, dtype=dtype, progress=progress
        )
        return ExactBlur(torch.as_tensor(psfs, dtype=dtype, device=device))
    model = EigenPSFs.from_lens(lens, kernel_size=size, grid=grid, rank=rank, tol=tol, device=device, progress=progress)
    return model.operator(offset, shape, device=device, dtype=dtype)
