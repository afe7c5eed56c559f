"""Procedural fluorescence-microscopy scenes: the built-in, file-free source of sharp ground-truth images.

What is drawn
-------------
On a dark background; all layers add, as fluorescence from overlapping structures does:

* **background**: a smooth, low-frequency level (a few tens of pixels correlation length);
* **cells**: large, dim, irregular cytoplasm blobs with soft edges, centred near nuclei;
* **nuclei**: filled, eccentric, rotated ellipses, brighter in the middle (a projected ellipsoid), with a smooth
  chromatin-like texture and soft edges;
* **filaments**: thin (1-2 px wide) smooth curves, actin- or microtubule-like: a random walk with a persistent
  direction, sampled every pixel, splatted with bilinear weights and smoothed;
* **beads**: point-like, sub-resolution spots (a tiny Gaussian, σ ≈ 0.75 px).

Units and conventions
---------------------
Lengths are in pixels; images are indexed ``(y, x)`` = ``(row, column)`` as in :mod:`optisim.field`. Intensities
are normalised: 1.0 is the brightest nominal structure (a nucleus or bead of brightness 1); the returned scene is
float32, clipped to ``[0, 1]``. Structure densities in :class:`SceneConfig` are counts per 256 × 256 pixels; each
range is drawn uniformly once per scene, and counts scale with the image area. Structures are placed over the image
plus a margin, so they may extend past the border (drawing is clipped).

The scene is a pure function of the state of the :class:`numpy.random.Generator` passed in (no global random
state), so a dataset sample seeded from ``(seed, index)`` is a pure function of ``(seed, index)``.

Smooth fields (background, cell layer, nucleus texture) are drawn on a coarse grid and upsampled by two sparse
matrix products with Gaussian interpolation weights; the fine layer (nuclei, filaments, beads) is blurred once with
:func:`scipy.ndimage.gaussian_filter`. No BLAS call and no per-pixel Python loop: a 286 × 286 scene takes a few
milliseconds on one core.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse
from skimage import draw

from optisim._keys import reject_unknown_keys

__all__ = ["GENERATOR_VERSION", "SceneConfig", "SyntheticSource", "fluorescence_scene"]

GENERATOR_VERSION = 1
REFERENCE_AREA = 256 * 256  # densities in SceneConfig are per this many pixels
FINE_SIGMA = 0.75  # px, blur of the fine layer (filament width, bead size, nucleus edge)
COARSE = 4  # px per node of the coarse grid for the cell layer and nucleus texture
BACKGROUND_CELL = 64  # px per node of the background grid
FILAMENT_STEP = 1.0  # px between filament samples (ripple after the blur ~1e-4)
PERSISTENCE = (40.0, 400.0)  # px, persistence length range of filaments
_POSITIVE = ("nucleus_radius", "filament_length")  # ranges that must be > 0, not just >= 0


@dataclass(frozen=True)
class SceneConfig:
    """Ranges of the random scene parameters; each ``(low, high)`` is drawn uniformly once per scene.

    Parameters
    ----------
    nuclei, cells, filaments, beads : (low, high) floats, count per 256 × 256 pixels
        Densities of each structure type; the count in a scene scales with its area (stochastic rounding).
    nucleus_radius : (low, high) floats, pixels
        Mean radius of a nucleus; its two semi-axes differ by up to a factor 1.6 around it (random orientation).
        Cells are 1.8-3 times larger than the middle of this range.
    filament_length : (low, high) floats, pixels
    background : (low, high) floats, normalised intensity
        Mean level of the smooth background.
    nucleus_brightness, cell_brightness, filament_brightness, bead_brightness : (low, high) floats
        Peak normalised intensity of each structure, drawn per structure (1.0 = brightest nominal structure).
    """

    nuclei: tuple[float, float] = (4.0, 12.0)
    nucleus_radius: tuple[float, float] = (8.0, 18.0)
    cells: tuple[float, float] = (3.0, 8.0)
    filaments: tuple[float, float] = (5.0, 20.0)
    filament_length: tuple[float, float] = (30.0, 200.0)
    beads: tuple[float, float] = (5.0, 30.0)
    background: tuple[float, float] = (0.0, 0.05)
    nucleus_brightness: tuple[float, float] = (0.5, 1.0)
    cell_brightness: tuple[float, float] = (0.05, 0.15)
    filament_brightness: tuple[float, float] = (0.2, 0.6)
    bead_brightness: tuple[float, float] = (0.3, 1.0)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            where = f"SceneConfig.{f.name}"
            try:
                low, high = value
            except (TypeError, ValueError):
                raise ValueError(f"{where}: expected a range (low, high), got {value!r}") from None
            for v in (low, high):
                if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                    raise ValueError(f"{where}: expected numbers, got {value!r}")
            low, high = float(low), float(high)
            floor = "0 < low" if f.name in _POSITIVE else "0 <= low"
            if not (np.isfinite(low) and np.isfinite(high) and (low > 0 if f.name in _POSITIVE else low >= 0)):
                raise ValueError(f"{where}: expected finite values with {floor}, got ({low}, {high})")
            if low > high:
                raise ValueError(f"{where}: expected an ordered range with low <= high, got ({low}, {high})")
            object.__setattr__(self, f.name, (low, high))

    def to_dict(self) -> dict:
        """``{name: [low, high]}`` for every field (JSON-, TOML- and HDF5-attribute friendly)."""
        return {f.name: list(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping) -> SceneConfig:
        """Build from :meth:`to_dict` output (missing keys take defaults); unknown keys are errors."""
        if not isinstance(d, Mapping):
            raise TypeError(f"SceneConfig.from_dict: expected a mapping, got {type(d).__name__}")
        allowed = [f.name for f in dataclasses.fields(cls)]
        reject_unknown_keys(d, allowed, "SceneConfig")
        return cls(**d)


def _check_shape(shape) -> tuple[int, int]:
    try:
        ny, nx = shape
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (ny, nx))
    except (TypeError, ValueError):
        ok = False
    if not ok or ny < 1 or nx < 1:
        raise ValueError(f"shape: expected (ny, nx) positive integer pixel counts, got {shape!r}")
    return int(ny), int(nx)


def _count(rng, density: tuple[float, float], area: float) -> int:
    """Stochastically rounded count for a density drawn in ``density`` (per 256²) over ``area`` px²."""
    return int(rng.uniform(*density) * area / REFERENCE_AREA + rng.random())


def _coarse_shape(ny: int, nx: int, cell: int) -> tuple[int, int]:
    """Nodes of a coarse grid with about ``cell`` px per node, at least 2 per axis."""
    return max(2, -(-ny // cell)), max(2, -(-nx // cell))


@functools.lru_cache(maxsize=64)
def _upsampler(n: int, nodes: int) -> sparse.csr_array:
    """(n, nodes) sparse matrix: Gaussian-weighted interpolation from ``nodes`` coarse samples to ``n`` pixels.

    Sparse, not dense: a dense float32 product would go through multithreaded BLAS, which stalls badly when
    dataset workers already occupy every core.
    """
    step = n / nodes
    d = np.arange(n)[:, None] - ((np.arange(nodes)[None, :] + 0.5) * step - 0.5)
    w = np.exp(-0.5 * (d / (0.6 * step)) ** 2)
    w[w < 1e-4] = 0.0
    return sparse.csr_array((w / w.sum(axis=1, keepdims=True)).astype(np.float32))


def _smooth(coarse: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """Upsample a coarse (gy, gx) field to (ny, nx) pixels (smooth, C-infinity)."""
    columns = _upsampler(nx, coarse.shape[1]) @ coarse.T  # (nx, gy); this order returns a C-ordered (ny, nx)
    return _upsampler(ny, coarse.shape[0]) @ columns.T


def _cells(rng, cfg, ny, nx, centres, radius) -> np.ndarray:
    """Coarse layer of dim irregular polygons, the first ones near ``centres`` (px); soft once upsampled."""
    gy, gx = _coarse_shape(ny, nx, COARSE)
    n = _count(rng, cfg.cells, (ny + 2 * radius) * (nx + 2 * radius))
    near = min(n, len(centres))
    cy = np.r_[centres[:near, 0] + rng.normal(0, 0.4 * radius, near), rng.uniform(-radius, ny + radius, n - near)]
    cx = np.r_[centres[:near, 1] + rng.normal(0, 0.4 * radius, near), rng.uniform(-radius, nx + radius, n - near)]
    theta, k = np.linspace(0, 2 * np.pi, 16, endpoint=False), np.arange(2, 5)[:, None]
    wobble = (rng.uniform(0, 0.15, (n, 3, 1)) * np.cos(k * theta + rng.uniform(0, 2 * np.pi, (n, 3, 1)))).sum(1)
    r = rng.uniform(1.8, 3.0, (n, 1)) * radius * (1 + wobble)  # (n, vertices) px
    rows, cols = (cy[:, None] + r * np.sin(theta)) * (gy / ny), (cx[:, None] + r * np.cos(theta)) * (gx / nx)
    layer = np.zeros((gy, gx), np.float32)
    for row, col, level in zip(rows, cols, rng.uniform(*cfg.cell_brightness, n), strict=True):
        rr, cc = draw.polygon(row, col, shape=(gy, gx))
        layer[rr, cc] = np.maximum(layer[rr, cc], level)
    return layer


def _nuclei(rng, cfg, fine, texture) -> np.ndarray:
    """Add nuclei to ``fine`` (in place); return their centres, (N, 2) px."""
    ny, nx = fine.shape
    margin = cfg.nucleus_radius[1]
    n = _count(rng, cfg.nuclei, (ny + 2 * margin) * (nx + 2 * margin))
    centres = np.column_stack([rng.uniform(-margin, ny + margin, n), rng.uniform(-margin, nx + margin, n)])
    radius, aspect = rng.uniform(*cfg.nucleus_radius, n), np.sqrt(rng.uniform(1.0, 1.6, n))
    angle, brightness = rng.uniform(0, np.pi, n), rng.uniform(*cfg.nucleus_brightness, n)
    for (cy, cx), a, b, t, peak in zip(centres, radius * aspect, radius / aspect, angle, brightness, strict=True):
        rr, cc = draw.ellipse(cy, cx, a, b, shape=(ny, nx), rotation=t)
        dr, dc = rr - cy, cc - cx
        rho2 = ((dr * np.cos(t) + dc * np.sin(t)) / a) ** 2 + ((dr * np.sin(t) - dc * np.cos(t)) / b) ** 2
        value = peak * np.maximum(1.0 - rho2, 0.0) ** 0.25 * texture[rr, cc]  # rho2: skimage's ellipse equation
        fine[rr, cc] += value
    return centres


def _filament_points(rng, cfg, ny, nx):
    """Sample points (y, x) px and weights of all filaments: persistent random walks, constant speed."""
    margin = 0.25 * cfg.filament_length[1]
    n = _count(rng, cfg.filaments, (ny + 2 * margin) * (nx + 2 * margin))
    if n == 0:
        return np.empty(0), np.empty(0), np.empty(0)
    length = rng.uniform(*cfg.filament_length, n)
    steps = int(np.ceil(length.max() / FILAMENT_STEP))
    turn = rng.standard_normal((n, steps), dtype=np.float32) * np.sqrt(
        FILAMENT_STEP / rng.uniform(*PERSISTENCE, (n, 1))
    )
    angle = rng.uniform(0, 2 * np.pi, (n, 1)) + np.cumsum(turn, axis=1)
    y = rng.uniform(-margin, ny + margin, (n, 1)) + FILAMENT_STEP * np.cumsum(np.sin(angle), axis=1)
    x = rng.uniform(-margin, nx + margin, (n, 1)) + FILAMENT_STEP * np.cumsum(np.cos(angle), axis=1)
    s = FILAMENT_STEP * np.arange(steps)
    wave = 1 + 0.3 * np.sin(2 * np.pi * s / rng.uniform(20, 80, (n, 1)) + rng.uniform(0, 2 * np.pi, (n, 1)))
    # line density such that the peak after the Gaussian blur equals the brightness
    w = rng.uniform(*cfg.filament_brightness, (n, 1)) * wave * FILAMENT_STEP * np.sqrt(2 * np.pi) * FINE_SIGMA
    keep = s[None, :] < length[:, None]
    return y[keep], x[keep], w[keep]


def _splat(ny: int, nx: int, y, x, w) -> np.ndarray:
    """(ny, nx) float64 image of weights ``w`` at sub-pixel points ``(y, x)``, bilinear; points outside drop out."""
    y0, x0 = np.floor(y), np.floor(x)
    keep = (y0 >= -1) & (y0 < ny) & (x0 >= -1) & (x0 < nx)
    fy, fx, w, stride = (y - y0)[keep], (x - x0)[keep], w[keep], nx + 2
    base = ((y0[keep] + 1) * stride + x0[keep] + 1).astype(np.intp)  # into a canvas padded by one pixel
    top, bottom = w * (1 - fy), w * fy
    index = np.concatenate([base, base + 1, base + stride, base + stride + 1])
    weights = np.concatenate([top * (1 - fx), top * fx, bottom * (1 - fx), bottom * fx])
    canvas = np.bincount(index, weights, minlength=(ny + 2) * stride)  # int64 when there are no points at all
    return canvas.astype(np.float64, copy=False).reshape(ny + 2, stride)[1:-1, 1:-1]


def fluorescence_scene(shape, rng: np.random.Generator, *, config: SceneConfig | None = None) -> np.ndarray:
    """A random fluorescence-like scene: background, cells, nuclei, filaments and beads.

    Parameters
    ----------
    shape : (ny, nx) ints, pixels
    rng : numpy.random.Generator
        The only source of randomness; the scene is a pure function of its state.
    config : SceneConfig, optional
        Ranges of the scene parameters (default: ``SceneConfig()``).

    Returns
    -------
    scene : (ny, nx) float32 array, normalised intensity in [0, 1], axes (y, x)

    Examples
    --------
    >>> scene = fluorescence_scene((256, 256), np.random.default_rng(0))
    >>> scene.shape, scene.dtype
    ((256, 256), dtype('float32'))
    """
    ny, nx = _check_shape(shape)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, e.g. np.random.default_rng(seed), got {rng!r}")
    cfg = SceneConfig() if config is None else config
    if not isinstance(cfg, SceneConfig):
        raise TypeError(f"config: expected a SceneConfig or None, got {type(cfg).__name__}")
    # few full-size temporaries: fresh large arrays cost page faults, which were a third of the time
    noise = rng.standard_normal(_coarse_shape(ny, nx, COARSE), dtype=np.float32)
    texture = _smooth(noise, ny, nx)
    texture *= 0.5
    texture += 0.8
    np.clip(texture, 0.35, 1.0, out=texture)

    y, x, w = _filament_points(rng, cfg, ny, nx)
    nb = _count(rng, cfg.beads, ny * nx)
    bead_w = rng.uniform(*cfg.bead_brightness, nb) * 2 * np.pi * FINE_SIGMA**2
    beads_y, beads_x = rng.integers(0, ny, nb), rng.integers(0, nx, nb)  # centred on pixels: sharpest points
    fine = _splat(ny, nx, np.r_[y, beads_y], np.r_[x, beads_x], np.r_[w, bead_w])
    centres = _nuclei(rng, cfg, fine, texture)
    scene = ndimage.gaussian_filter(fine, FINE_SIGMA, mode="nearest", truncate=3.0, output=texture)  # reuse

    coarse = _cells(rng, cfg, ny, nx, centres, float(np.mean(cfg.nucleus_radius)))
    coarse *= np.clip(1 + 0.3 * noise, 0.4, 1.6)
    level = rng.uniform(*cfg.background)
    background = _smooth(rng.standard_normal(_coarse_shape(ny, nx, BACKGROUND_CELL), dtype=np.float32), *noise.shape)
    coarse += level * np.clip(1 + 0.4 * background, 0, None)
    scene += _smooth(coarse, ny, nx)
    return np.clip(scene, 0.0, 1.0, out=scene)


@dataclass(frozen=True)
class SyntheticSource:
    """Image source protocol used by the dataset generator: procedural scenes, no files (picklable).

    Parameters
    ----------
    config : SceneConfig, optional
        Default ``SceneConfig()``.
    """

    config: SceneConfig | None = None

    def __post_init__(self):
        if self.config is None:
            object.__setattr__(self, "config", SceneConfig())
        elif not isinstance(self.config, SceneConfig):
            raise TypeError(f"config: expected a SceneConfig or None, got {type(self.config).__name__}")

    def sample(self, shape, rng: np.random.Generator) -> np.ndarray:
        """One scene, ``fluorescence_scene(shape, rng, config=self.config)``: (ny, nx) float32 in [0, 1]."""
        return fluorescence_scene(shape, rng, config=self.config)

    def describe(self) -> dict:
        """JSON-serialisable description, stored with datasets so a sample can be regenerated."""
        return {"kind": "synthetic", "config": self.config.to_dict(), "generator_version": GENERATOR_VERSION}
