"""Point-source photometry and shape: flux, FWHM and aspect ratio of sources at known positions, per field band.

A deblurring method can make sources small by moving their light around; these measures say whether it kept the
light (flux) and the shape (aspect ratio) while it did so, and where on the field it failed.

Measuring one source (:func:`measure_sources`)
----------------------------------------------
Positions are sub-pixel ``(row, col)`` in the image's pixel coordinates (pixel ``(i, j)`` has its centre at
``(i, j)``), axes ``(y, x)``. Around each source:

* **background**: the median of the pixels whose centres lie in the annulus ``inner <= d < outer`` pixels from the
  given position;
* **flux**: the sum of ``image - background`` over the pixels with ``d <= aperture`` (aperture photometry; image
  units × pixels);
* **shape**: adaptive (Gaussian-weighted) second moments of the background-subtracted image thresholded at 0 (negative
  ringing and noise do not count), over the aperture pixels (Bernstein & Jarvis, AJ 123 (2002)). A Gaussian weight of
  covariance ``W`` at the current centroid gives the weighted centroid and covariance ``M``; for a Gaussian source of
  covariance ``C``, ``M⁻¹ = C⁻¹ + W⁻¹``, so ``C = (M⁻¹ - W⁻¹)⁻¹`` (``2M`` where that is not positive definite: a
  source flatter than a Gaussian). The next weight is ``C + (1 px)² I``, starting from a round weight of
  ``aperture / 2`` pixels at the given position, for 40 iterations. A Gaussian source is measured exactly whatever
  the weight; for other profiles the weight follows the core and ignores faint wings and ringing, as the half maximum
  does (a uniform disc of radius R reads as FWHM ≈ 1.5 R). With the eigenvalues ``λ1 >= λ2`` of ``C`` (px²):
  ``fwhm = 2.3548 sqrt((λ1 + λ2) / 2)`` (pixels; ``2 sqrt(2 ln 2)`` times the RMS width) and
  ``aspect = sqrt(λ1 / λ2) >= 1``. A source without positive light in its aperture gives NaN for both, and one
  too narrow to have a measurable minor axis an ``aspect`` of NaN.

Sampled (not pixel-integrated) Gaussians are measured exactly to the aliasing of the pixel grid, which depends on the
sub-pixel position: FWHM within 1 % and aspect within 0.015 of the truth for σ >= 0.75 px (the beads of
:mod:`optisim.scenes`), aspect up to 1.03 for a round σ = 0.6 px. Pixel integration adds 1/12 px² to each eigenvalue
and is not removed.

Field bands
-----------
The field radius of a source is ``h = sqrt(hx² + hy²)`` of :func:`optisim.field.pixel_to_field` at its sensor position
(the image's offset on the sensor added). :data:`BAND_EDGES` split it into four bands: ``h < 0.35``, ``0.35-0.6``,
``0.6-0.85`` and ``h >= 0.85`` (the last holds the sensor's edges and corners, up to ``h = sqrt(2)``).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from optisim.field import pixel_to_field

__all__ = [
    "BAND_EDGES",
    "FWHM_PER_SIGMA",
    "band_labels",
    "field_bands",
    "flux_by_band",
    "measure_sources",
    "point_source_field",
    "point_source_geometry",
    "point_source_report",
    "source_field_radius",
    "summarise_by_band",
]

BAND_EDGES = (0.35, 0.6, 0.85)  # normalised field radius h between the bands
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.3548
ITERATIONS = 40  # adaptive-moment iterations
WEIGHT_FLOOR = 1.0  # px: the weight is the source's own Gaussian widened by this (keeps narrow sources unaliased)


def band_labels(edges=BAND_EDGES) -> list[str]:
    """Names of the field bands split at ``edges``: ``['h < 0.35', '0.35-0.6', '0.6-0.85', 'h >= 0.85']``."""
    edges = [float(e) for e in edges]
    inner = [f"{a:g}-{b:g}" for a, b in itertools.pairwise(edges)]
    return [f"h < {edges[0]:g}", *inner, f"h >= {edges[-1]:g}"]


def _check_edges(edges) -> np.ndarray:
    e = np.asarray(edges, dtype=float)
    if e.ndim != 1 or len(e) < 1 or not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0) or e[0] <= 0:
        raise ValueError(f"edges: expected increasing positive field radii, got {np.atleast_1d(edges).tolist()}")
    return e


def field_bands(h, edges=BAND_EDGES) -> np.ndarray:
    """Band index (0 = innermost) of each field radius ``h`` (any shape), int array of that shape."""
    return np.searchsorted(_check_edges(edges), np.asarray(h, dtype=float), side="right")


def _positions(positions) -> np.ndarray:
    p = np.asarray(positions, dtype=float)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"positions: expected shape (N, 2), (row, col) per source, got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("positions: expected finite (row, col) pixel positions, got NaN or inf")
    return p


def source_field_radius(positions, sensor_shape, *, offset=(0, 0)) -> np.ndarray:
    """Normalised field radius ``h`` (N,) of sources at image ``positions`` (N, 2) (row, col), the image's first
    pixel at sensor pixel ``offset`` = (y0, x0) of a ``sensor_shape`` = (ny, nx) sensor (:mod:`optisim.field`)."""
    p = _positions(positions)
    hx, hy = pixel_to_field(p[:, 0] + offset[0], p[:, 1] + offset[1], sensor_shape)
    return np.hypot(hx, hy)


def _image(image) -> np.ndarray:
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"image: expected one (H, W) image, got shape {img.shape}")
    return img


def _radii(aperture, annulus) -> tuple[float, float, float]:
    aperture = float(aperture)
    if not aperture > 0 or not math.isfinite(aperture):
        raise ValueError(f"aperture: expected a positive radius in pixels, got {aperture}")
    inner, outer = (aperture, aperture + 4.0) if annulus is None else (float(v) for v in annulus)
    if not aperture <= inner < outer:
        raise ValueError(
            f"annulus: expected (inner, outer) radii with aperture {aperture:g} <= inner < outer, "
            f"got ({inner:g}, {outer:g})"
        )
    return aperture, inner, outer


def _windows(img: np.ndarray, p: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(N, S, S)`` windows of side ``S = 2 half + 1`` around the rounded positions, and each pixel's offset
    ``(dy, dx)`` (N, S, S) from the exact position."""
    centre = np.round(p).astype(int)
    h, w = img.shape
    bad = (centre[:, 0] < half) | (centre[:, 1] < half) | (centre[:, 0] + half >= h) | (centre[:, 1] + half >= w)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"positions: source {i} at (row, col) = ({p[i, 0]:g}, {p[i, 1]:g}) lies within {half} px (the annulus's "
            f"outer radius) of the border of the ({h}, {w}) image; measure sources at least that far inside"
        )
    k = np.arange(-half, half + 1)
    rows = centre[:, 0, None, None] + k[None, :, None]
    cols = centre[:, 1, None, None] + k[None, None, :]
    windows = img[rows, cols]
    dy = rows - p[:, 0, None, None] + np.zeros_like(cols)
    dx = cols - p[:, 1, None, None] + np.zeros_like(rows)
    return windows, dy.astype(float), dx.astype(float)


def _inverse(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverses of symmetric (N, 2, 2) matrices and whether each is positive definite."""
    det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
    pd = (det > 0) & (a[:, 0, 0] > 0)
    adj = np.stack([np.stack([a[:, 1, 1], -a[:, 0, 1]], -1), np.stack([-a[:, 1, 0], a[:, 0, 0]], -1)], -2)
    return adj / np.where(pd, det, 1.0)[:, None, None], pd


def _adaptive_moments(f: np.ndarray, dy: np.ndarray, dx: np.ndarray, start: float) -> tuple[np.ndarray, np.ndarray]:
    """Covariance ``C`` (N, 2, 2) px² and centroid offset (N, 2) px of sources ``f`` (N, S, S) >= 0 by adaptive
    Gaussian moments (module docstring); NaN where a source has no positive light."""
    n = len(f)
    w = np.tile(np.eye(2) * start**2, (n, 1, 1))
    mu, cov = np.zeros((n, 2)), np.full((n, 2, 2), np.nan)
    for _ in range(ITERATIONS):
        w_inv, ok = _inverse(w)
        ey, ex = dy - mu[:, 0, None, None], dx - mu[:, 1, None, None]
        q = w_inv[:, 0, 0, None, None] * ey**2 + 2 * w_inv[:, 0, 1, None, None] * ey * ex
        q = q + w_inv[:, 1, 1, None, None] * ex**2
        g = f * np.exp(-0.5 * np.clip(q, 0.0, 700.0))
        s = g.sum(axis=(1, 2))
        ok &= s > 0
        s = np.where(ok, s, 1.0)
        my, mx = (g * dy).sum(axis=(1, 2)) / s, (g * dx).sum(axis=(1, 2)) / s
        ey, ex = dy - my[:, None, None], dx - mx[:, None, None]
        m = [(g * a * b).sum(axis=(1, 2)) / s for a, b in ((ey, ey), (ey, ex), (ex, ex))]
        m = np.stack([np.stack([m[0], m[1]], -1), np.stack([m[1], m[2]], -1)], -2)
        m_inv, pd = _inverse(m)
        c, deconvolved = _inverse(m_inv - w_inv)  # a Gaussian source seen through the Gaussian weight: M⁻¹ = C⁻¹ + W⁻¹
        c = np.where((pd & deconvolved)[:, None, None], c, 2.0 * m)  # weight narrower than the light: its core
        cov = np.where(ok[:, None, None], c, np.nan)
        mu = np.where(ok[:, None], np.stack([my, mx], axis=1), np.nan)
        w = cov + WEIGHT_FLOOR**2 * np.eye(2)
    return cov, mu


def measure_sources(image, positions, *, aperture: float, annulus=None, background=None) -> dict:
    """Flux, FWHM and aspect ratio of the sources at ``positions`` in ``image`` (see the module docstring).

    Parameters
    ----------
    image : (H, W) array or tensor, any intensity unit, axes (y, x)
    positions : (N, 2) floats, sub-pixel (row, col) of each source in the image's pixels
    aperture : float, radius (pixels) of the flux aperture and of the pixels the shape is measured on
    annulus : (inner, outer) floats or None, pixels, the background annulus (default ``(aperture, aperture + 4)``);
        ``aperture <= inner < outer``. Every source must lie at least ``ceil(outer)`` pixels inside the image.
    background : float or None, a known background (image units per pixel) in place of the annulus median, for
        images whose background is already removed; then only the aperture must lie inside the image (``annulus``
        is not used). Wide sources reach into any nearby annulus, whose median then takes some of their light.

    Returns
    -------
    dict of (N,) float64 arrays: ``flux`` (image units × px), ``background`` (image units per pixel),
    ``fwhm`` (px), ``aspect`` (>= 1), ``row``, ``col`` (px, the weighted centroid).

    Examples
    --------
    >>> yy, xx = np.mgrid[:41, :41]
    >>> image = np.exp(-((yy - 20) ** 2 + (xx - 20) ** 2) / (2 * 2.0**2))  # sigma 2 px, flux 2 pi 4
    >>> m = measure_sources(image, [[20.0, 20.0]], aperture=12)
    >>> round(float(m["fwhm"][0]), 3), round(float(m["aspect"][0]), 3), round(float(m["flux"][0]), 2)
    (4.71, 1.0, 25.13)
    """
    img, p = _image(image), _positions(positions)
    aperture, inner, outer = _radii(aperture, annulus)
    if background is not None and not math.isfinite(float(background)):
        raise ValueError(f"background: expected a finite value, got {background!r}")
    windows, dy, dx = _windows(img, p, math.ceil(outer if background is None else aperture))
    d2 = dy**2 + dx**2
    if background is None:
        ring = (d2 >= inner**2) & (d2 < outer**2)
        background = np.array([np.median(wi[r]) for wi, r in zip(windows, ring, strict=True)]) if len(p) else []
        background = np.asarray(background, dtype=np.float64)
    else:
        background = np.full(len(p), float(background))
    inside = d2 <= aperture**2
    above = (windows - background[:, None, None]) * inside
    flux = above.sum(axis=(1, 2))
    cov, centroid = _adaptive_moments(np.clip(above, 0.0, None), dy, dx, aperture / 2.0)
    with np.errstate(invalid="ignore"):
        eig = np.linalg.eigvalsh(np.nan_to_num(cov))  # ascending, NaN sources masked below
        eig = np.where(np.isnan(cov[:, :1, 0]), np.nan, eig)
        fwhm = FWHM_PER_SIGMA * np.sqrt(np.clip(eig.mean(axis=1), 0.0, None))
        aspect = np.where(eig[:, 0] > 1e-6, np.sqrt(eig[:, 1] / np.maximum(eig[:, 0], 1e-300)), np.nan)
    return {"flux": flux, "background": background, "fwhm": fwhm, "aspect": aspect,
            "row": p[:, 0] + centroid[:, 0], "col": p[:, 1] + centroid[:, 1]}  # fmt: skip


def point_source_field(
    sensor_shape, *, spacing: float, margin: float, sigma: float = 0.75, peak: float = 1.0, jitter: float = 0, rng=None
) -> tuple[np.ndarray, np.ndarray]:
    """A sharp image of a grid of point-like sources over a whole sensor, edges and corners included.

    Parameters
    ----------
    sensor_shape : (ny, nx) ints, pixels
    spacing : float, the smallest distance (pixels) between neighbouring grid points; the grid spans from ``margin``
        to ``n - 1 - margin`` along each axis, ends included, in equal steps of at least ``spacing``
    margin : float >= 0, pixels from the outermost pixel centres to the outermost sources
    sigma : float, the sources' Gaussian RMS width (pixels; 0.75 as the beads of :mod:`optisim.scenes`)
    peak : float, their peak intensity (normalised, 1 = the nominal peak); each holds ``2 pi sigma² peak``
    jitter : float >= 0, each position moves by up to ``±jitter`` pixels along each axis (uniform, drawn from ``rng``)
    rng : numpy Generator, needed when ``jitter > 0``

    Returns
    -------
    image : (ny, nx) float32, the sampled Gaussians (normalised intensity)
    positions : (N, 2) float64, (row, col) of each source, row-major order
    """
    ny, nx = (int(v) for v in sensor_shape)
    if not spacing > 0:
        raise ValueError(f"spacing: expected a positive distance in pixels, got {spacing}")
    if not 0 <= margin < (min(ny, nx) - 1) / 2:
        raise ValueError(f"margin: expected 0 <= margin < {(min(ny, nx) - 1) / 2:g} px for a {ny}x{nx} sensor, "
                         f"got {margin}")  # fmt: skip
    if not sigma > 0:
        raise ValueError(f"sigma: expected a positive width in pixels, got {sigma}")
    if jitter < 0 or (jitter > 0 and rng is None):
        raise ValueError(f"jitter: expected 0, or > 0 with an rng, got {jitter} (rng {rng!r})")
    axes = [np.linspace(margin, n - 1 - margin, math.floor((n - 1 - 2 * margin) / spacing) + 1) for n in (ny, nx)]
    rows, cols = np.meshgrid(*axes, indexing="ij")
    positions = np.stack([rows.ravel(), cols.ravel()], axis=1)
    if jitter > 0:
        positions = positions + rng.uniform(-jitter, jitter, size=positions.shape)
    image = np.zeros((ny, nx))
    half = math.ceil(5 * sigma)
    k = np.arange(-half, half + 1)
    for r, c in positions:
        r0, c0 = round(r), round(c)
        ys, xs = np.clip(r0 + k, 0, ny - 1), np.clip(c0 + k, 0, nx - 1)
        gy, gx = np.exp(-0.5 * ((r0 + k - r) / sigma) ** 2), np.exp(-0.5 * ((c0 + k - c) / sigma) ** 2)
        keep_y, keep_x = (r0 + k >= 0) & (r0 + k < ny), (c0 + k >= 0) & (c0 + k < nx)
        image[np.ix_(ys[keep_y], xs[keep_x])] += peak * np.outer(gy[keep_y], gx[keep_x])
    return image.astype(np.float32), positions


def summarise_by_band(measured: dict, truth: dict, h, *, edges=BAND_EDGES) -> list[dict]:
    """Medians per field band of one method's sources against the truth's.

    Parameters
    ----------
    measured, truth : :func:`measure_sources` results of the same N sources (a method's output and the sharp truth)
    h : (N,) field radii (:func:`source_field_radius`); edges : the band edges

    Returns
    -------
    One dict per band: ``band`` (its label), ``sources`` (count), ``aspect``, ``fwhm`` (px) and ``flux_ratio``
    (``flux / truth flux``), each the median over the band's sources with a finite value (None if none).
    """
    h = np.asarray(h, dtype=float)
    for name, d in (("measured", measured), ("truth", truth)):
        if any(np.shape(d[key]) != h.shape for key in ("flux", "fwhm", "aspect")):
            raise ValueError(f"{name}: expected flux, fwhm and aspect of shape {h.shape} (one per h), "
                             f"got {np.shape(d['flux'])}")  # fmt: skip
    band = field_bands(h, edges)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.asarray(measured["flux"]) / np.asarray(truth["flux"])
    rows = []
    for i, label in enumerate(band_labels(edges)):
        sel = band == i
        row = {"band": label, "sources": int(sel.sum())}
        for key, values in (("aspect", measured["aspect"]), ("fwhm", measured["fwhm"]), ("flux_ratio", ratio)):
            v = np.asarray(values)[sel]
            v = v[np.isfinite(v)]
            row[key] = float(np.median(v)) if len(v) else None
        rows.append(row)
    return rows


def flux_by_band(pred, truth, sensor_shape, *, offset=(0, 0), edges=BAND_EDGES) -> list[float | None]:
    """Summed flux ratio ``sum(pred) / sum(truth)`` over the pixels of each field band, innermost first.

    Parameters
    ----------
    pred, truth : (H, W) arrays or tensors of one shape, an image region whose first pixel is sensor pixel
        ``offset`` = (y0, x0) of a ``sensor_shape`` sensor; edges : the band edges

    Returns
    -------
    list of ``len(edges) + 1`` floats, None where a band has no pixels or no truth flux.
    """
    p, t = _image(pred), _image(truth)
    if p.shape != t.shape:
        raise ValueError(f"truth: expected the shape of pred {p.shape}, got {t.shape}")
    rows, cols = np.mgrid[: p.shape[0], : p.shape[1]]
    hx, hy = pixel_to_field(rows + offset[0], cols + offset[1], sensor_shape)
    band = field_bands(np.hypot(hx, hy), edges)
    out = []
    for i in range(len(_check_edges(edges)) + 1):
        sel = band == i
        total = float(t[sel].sum())
        out.append(float(p[sel].sum()) / total if sel.any() and total != 0 else None)
    return out


def point_source_geometry(kernel_size: int, *, jitter: float = 0.25) -> dict:
    """Aperture, annulus, spacing and margin (pixels) for point sources blurred by PSFs of ``kernel_size`` pixels.

    The aperture holds the whole PSF window (radius ``k // 2 + 2``); the background annulus spans the next 4 pixels;
    sources lie at least ``k // 2 + 8 + 2 jitter`` apart, so that no neighbour's blurred light reaches an annulus,
    and the outermost ``annulus + 1`` pixels from the sensor's edge, so every measurement window lies on the sensor
    and the blurred light stays on it.
    """
    if isinstance(kernel_size, bool) or int(kernel_size) != kernel_size or kernel_size < 1:
        raise ValueError(f"kernel_size: expected a positive number of pixels, got {kernel_size!r}")
    r = int(kernel_size) // 2
    aperture = float(r + 2)
    outer = aperture + 4.0
    return {"aperture": aperture, "annulus": [aperture, outer], "spacing": float(r + outer + 2 + 2 * jitter),
            "margin": float(math.ceil(outer) + 1), "jitter": float(jitter)}  # fmt: skip


def point_source_report(methods: dict, forward, *, seed: int = 0, jitter: float = 0.25, sigma: float = 0.75,
                        edges=BAND_EDGES) -> dict:  # fmt: skip
    """Render a grid of point sources through ``forward`` over the whole sensor, deblur it with every method, and
    measure flux, FWHM and aspect ratio per field band.

    Parameters
    ----------
    methods : ``{name: deblur}``, each ``deblur((ny, nx) float32 blurred image) -> (ny, nx) array`` (normalised
        intensity, the whole sensor, axes (y, x))
    forward : :class:`optisim.lowrank.EigenPSFs`, the forward model (its sensor and PSF window set the geometry,
        :func:`point_source_geometry`); the sources are blurred without noise
    seed : int, draws the sub-pixel jitter of the sources; jitter : float, pixels; sigma : float, the sources' width
    edges : the field-band edges

    Returns
    -------
    dict with ``sources`` (count), ``sigma``, the geometry (``aperture``, ``annulus``, ``spacing``, ``margin``,
    ``jitter``, pixels), ``bands`` (labels), ``truth`` (:func:`summarise_by_band` of the sharp image against itself)
    and ``methods`` (``{name: summarise_by_band rows}``; flux ratio = deblurred / true flux of each source).
    """
    import torch

    sensor = tuple(int(v) for v in forward.sensor_shape)
    geometry = point_source_geometry(int(forward.kernels.shape[-1]), jitter=jitter)
    rng = np.random.default_rng(seed)
    sharp, positions = point_source_field(sensor, spacing=geometry["spacing"], margin=geometry["margin"],
                                          sigma=sigma, jitter=jitter, rng=rng)  # fmt: skip
    with torch.no_grad():
        op = forward.operator((0, 0), sensor, dtype=torch.float64)
        blurred = op(torch.from_numpy(sharp).double()).clamp(min=0).float().numpy()
    h = source_field_radius(positions, sensor)
    measure = {"aperture": geometry["aperture"], "annulus": geometry["annulus"]}
    truth = measure_sources(sharp, positions, **measure)
    report = {"sources": len(positions), "sigma": float(sigma), **geometry, "bands": band_labels(edges)}
    report["truth"] = summarise_by_band(truth, truth, h, edges=edges)
    report["methods"] = {}
    for name, deblur in methods.items():
        out = np.asarray(deblur(blurred), dtype=np.float64)
        if out.shape != sharp.shape:
            raise ValueError(f"methods: {name!r} returned an image of shape {out.shape}, expected {sharp.shape}")
        report["methods"][name] = summarise_by_band(measure_sources(out, positions, **measure), truth, h, edges=edges)
    return report
