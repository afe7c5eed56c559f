"""Figures of the physics layer (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["plot_blur", "plot_psf_grid"]


def _mosaic(psf: np.ndarray, *, log: bool, gap: int = 2) -> np.ndarray:
    """Tile a (Gy, Gx, H, W) PSF stack into one image, each PSF scaled to its own peak; NaN gaps between tiles."""
    gy, gx, h, w = psf.shape
    tiles = psf / psf.max(axis=(2, 3), keepdims=True)
    if log:
        tiles = np.log10(np.clip(tiles, 1e-4, None))
    out = np.full((gy * (h + gap) - gap, gx * (w + gap) - gap), np.nan)
    for i in range(gy):
        for j in range(gx):
            out[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = tiles[i, j]
    return out


def plot_psf_grid(ds: xr.Dataset, path, *, log: bool = False, max_tiles: int = 11) -> Path:
    """Figure of a PSF grid: the PSFs laid out at their field positions, beside a map of RMS wavefront error.

    Parameters
    ----------
    ds : PSF grid dataset from :func:`optisim.grid.psf_grid`
    path : output image path (PNG, PDF, SVG: any matplotlib format)
    log : bool, show PSFs on a log10 scale (4 decades) instead of linear
    max_tiles : int, at most this many PSFs per axis are drawn (evenly picked, corners kept)

    Returns
    -------
    Path of the written figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def pick(n):
        return np.unique(np.round(np.linspace(0, n - 1, min(n, max_tiles))).astype(int))

    iy, ix = pick(ds.sizes["field_y"]), pick(ds.sizes["field_x"])
    sub = ds.isel(field_y=iy, field_x=ix)
    mosaic = _mosaic(sub["psf"].values.astype(float), log=log)
    fy, fx = ds["field_y_um"].values, ds["field_x_um"].values
    half_y = (fy[-1] - fy[0]) / max(len(iy) - 1, 1) / 2 if len(fy) > 1 else 1.0
    half_x = (fx[-1] - fx[0]) / max(len(ix) - 1, 1) / 2 if len(fx) > 1 else 1.0
    extent = (fx[0] - half_x, fx[-1] + half_x, fy[-1] + half_y, fy[0] - half_y)

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12.5, 5.6), constrained_layout=True)
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="0.35")
    im0 = ax0.imshow(mosaic, extent=extent, cmap=cmap, interpolation="nearest")
    ax0.set_title(f"PSFs at their field positions ({ds.sizes['y']}x{ds.sizes['x']} px, each / its peak)")
    ax0.set_xlabel("field x (µm, object space)")
    ax0.set_ylabel("field y (µm, object space)")
    fig.colorbar(im0, ax=ax0, shrink=0.85, label="log10 relative intensity" if log else "relative intensity")

    wfe = ds["wavefront_rms"].values
    im1 = ax1.pcolormesh(fx, fy, wfe, shading="gouraud" if min(wfe.shape) > 1 else "nearest", cmap="viridis")
    ax1.set_ylim(fy[-1], fy[0]) if len(fy) > 1 else None
    ax1.set_aspect("equal")
    if min(wfe.shape) > 1 and np.ptp(ds["strehl"].values) > 0:
        cs = ax1.contour(fx, fy, ds["strehl"].values, levels=[0.3, 0.5, 0.8], colors="white", linewidths=0.8)
        ax1.clabel(cs, fmt="S=%.1f", fontsize=8)
    ax1.set_title("RMS wavefront error, no piston/tilt (contours: Strehl)")
    ax1.set_xlabel("field x (µm, object space)")
    fig.colorbar(im1, ax=ax1, shrink=0.85, label="waves RMS")
    fig.suptitle(
        f"lens '{ds.attrs.get('lens_name', '?')}': pixel {ds.attrs['pixel_size_um']:.4g} µm, "
        f"backend {ds.attrs.get('backend', '?')}"
    )
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_blur(sharp: np.ndarray, blurred: np.ndarray, path, *, zoom: int = 96, title: str = "") -> Path:
    """Figure of a simulated blur: sharp and blurred full images, and zooms on the centre and a corner.

    Parameters
    ----------
    sharp, blurred : (H, W) arrays, the scene and its simulated image (same intensity units)
    path : output image path; zoom : side of the zoomed regions in pixels; title : figure title
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = sharp.shape
    zoom = min(zoom, h // 2, w // 2)
    regions = {"centre": ((h - zoom) // 2, (w - zoom) // 2), "corner": (h - zoom, w - zoom)}
    vmax = float(np.percentile(sharp, 99.9)) or 1.0
    fig, axes = plt.subplots(2, 3, figsize=(12, 8), constrained_layout=True)
    for row, (name, image) in enumerate((("sharp", sharp), ("blurred", blurred))):
        ax = axes[row, 0]
        ax.imshow(image, cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(f"{name} ({h}x{w})")
        for label, (y0, x0) in regions.items():
            ax.add_patch(plt.Rectangle((x0, y0), zoom, zoom, fill=False, edgecolor="orange", linewidth=1))
            ax.text(x0, y0 - 4, label, color="orange", fontsize=8)
        for col, (label, (y0, x0)) in enumerate(regions.items(), start=1):
            axes[row, col].imshow(image[y0 : y0 + zoom, x0 : x0 + zoom], cmap="gray", vmin=0, vmax=vmax)
            axes[row, col].set_title(f"{name}: {label} (rows {y0}-{y0 + zoom - 1})")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or "spatially varying blur: each source pixel spreads with the PSF of its field position")
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
