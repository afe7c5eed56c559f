"""The calibration report: PNG figures and a self-contained ``report.html`` drawn from plain arrays.

Conventions: positions are pixels ``(row y, column x)`` on the sensor (see :mod:`optisim.field`), Zernike
coefficients are waves RMS, FWHM is pixels. Figures are drawn on :class:`matplotlib.figure.Figure` objects with the
Agg canvas, so no pyplot state or display is touched. This module imports only numpy, matplotlib and optisim.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optisim.field import pixel_to_field
from optisim.zernike import mode_name, nm_to_noll

__all__ = ["ReportData", "write_report"]

DPI = 110
_DOTS = {"s": 30, "edgecolors": "black", "linewidths": 0.6}  # bead markers coloured by a value
_CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:0.3em 0}td,th{border:1px solid #bbb;padding:2px 6px;text-align:left}"
    "th{background:#eee}img{max-width:100%}figcaption{font-size:90%;color:#444}.skipped{color:#a60}"
    "tr.rejected{color:#a00}"
)


@dataclass
class ReportData:
    """Everything the report shows, as plain arrays (see :func:`write_report`).

    Attributes
    ----------
    title : str, report title
    image : (Y, X) float array, bead image (max projection over z for a stack), image units
    sensor_shape : (ny, nx) ints, pixels; pixel_um : float, object-space pixel size, µm
    beads : list of dict, every detected candidate with keys ``index, frame, y, x, status`` ('kept' or
        'rejected') and optionally ``reason, snr, holdout``; positions in pixels
    modes : list of (n, m), the Zernike modes of the fits (J of them)
    bead_rows, bead_cols : (N,) float arrays, fitted bead positions, pixels
    bead_coefficients, bead_uncertainty : (N, J) float arrays, waves RMS
    holdout : (N,) bool array, beads held out of the field fit
    field_maps : (J, gy, gx) float array or None, field model on a grid spanning the outermost pixel centres, waves RMS
    measured, predicted : (M, w, w) float arrays, measured and model PSFs of the montage beads (same scaling)
    montage_positions : (M, 2) float array, (row, col) of those beads, pixels
    correlation : (N,) float array, per-bead fit correlation
    fwhm_before, fwhm_after : (K,) float arrays or None, FWHM on the raw / deblurred image, pixels (NaN: not measured)
    fwhm_positions : (K, 2) float array or None, (row, col) of the FWHM beads, pixels
    fwhm_simulated : (K,) float array or None, FWHM deblurred by the network of the simulated training alone (when
        ``fwhm_after`` is that of the network fine-tuned on the beads), pixels
    eigen_psfs : (E, kh, kw) float array or None, eigen-PSFs of an empirical model
    weight_maps : (E, gy, gx) float array or None, their weights over the sensor grid
    confidence : (gy, gx) float array in [0, 1] or None, the coverage confidence on a grid spanning the outermost
        pixel centres (:class:`optisim.coverage.Coverage`)
    optical_centre : (row, col, sigma_row, sigma_col) pixels or None, a rotational model's optical centre
    summary : dict, key numbers (nested), shown as tables; files : dict, {description: relative path} to link
    """

    title: str
    image: np.ndarray
    sensor_shape: tuple[int, int]
    pixel_um: float
    beads: list[dict]
    modes: list[tuple[int, int]]
    bead_rows: np.ndarray
    bead_cols: np.ndarray
    bead_coefficients: np.ndarray
    bead_uncertainty: np.ndarray
    holdout: np.ndarray
    field_maps: np.ndarray | None
    measured: np.ndarray
    predicted: np.ndarray
    montage_positions: np.ndarray
    correlation: np.ndarray
    fwhm_before: np.ndarray | None
    fwhm_after: np.ndarray | None
    fwhm_positions: np.ndarray | None
    eigen_psfs: np.ndarray | None
    weight_maps: np.ndarray | None
    summary: dict
    files: dict
    fwhm_simulated: np.ndarray | None = None
    confidence: np.ndarray | None = None
    optical_centre: tuple | None = None


def _array(data: ReportData, name: str, shape: tuple, note: str = "", dtype=float) -> np.ndarray:
    """``getattr(data, name)`` as an array of ``shape`` (None entries: any size), else ValueError naming ``name``."""
    value = np.asarray(getattr(data, name), dtype=dtype)
    if value.ndim != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape, strict=False)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name}: expected shape {want}{note}, got {value.shape}")
    return value


def _check_meta(data: ReportData) -> tuple[int, int]:
    """Check the non-array fields; return ``sensor_shape`` as ints."""
    try:
        ny, nx = (int(v) for v in data.sensor_shape)
    except (TypeError, ValueError):
        raise ValueError(f"sensor_shape: expected (ny, nx) pixels, got {data.sensor_shape!r}") from None
    if ny < 1 or nx < 1:
        raise ValueError(f"sensor_shape: expected positive (ny, nx) pixels, got ({ny}, {nx})")
    if not (isinstance(data.pixel_um, int | float) and data.pixel_um > 0):
        raise ValueError(f"pixel_um: expected a positive pixel size in µm, got {data.pixel_um!r}")
    for j, nm in enumerate(data.modes):
        if len(tuple(nm)) != 2:
            raise ValueError(f"modes[{j}]: expected a Zernike (n, m) pair, got {nm!r}")
        nm_to_noll(*nm)
    for i, bead in enumerate(data.beads):
        if {"index", "frame", "y", "x", "status"} - set(bead) or bead["status"] not in ("kept", "rejected"):
            raise ValueError(f"beads[{i}]: expected keys index, frame, y, x, status ('kept'/'rejected'), got {bead}")
    for name in ("summary", "files"):
        if not isinstance(getattr(data, name), dict):
            raise ValueError(f"{name}: expected a dict, got {type(getattr(data, name)).__name__}")
    return ny, nx


def _validate(data: ReportData) -> dict:
    """Check shapes and kinds of every field; return the fields as arrays (optional ones may be None)."""
    ny, nx = _check_meta(data)
    n_modes = len(data.modes)
    out = {"image": _array(data, "image", (None, None)), "sensor_shape": (ny, nx), "beads": data.beads}
    out["modes"] = [tuple(int(v) for v in nm) for nm in data.modes]
    out["bead_rows"] = _array(data, "bead_rows", (None,))
    n = out["bead_rows"].shape[0]
    for name in ("bead_cols", "correlation"):
        out[name] = _array(data, name, (n,), " (N = len(bead_rows))")
    out["holdout"] = _array(data, "holdout", (n,), " (N = len(bead_rows))", dtype=bool)
    for name in ("bead_coefficients", "bead_uncertainty"):
        out[name] = _array(data, name, (n, n_modes), " (N = len(bead_rows), J = len(modes))")
    out["measured"] = _array(data, "measured", (None, None, None))
    out["predicted"] = _array(data, "predicted", out["measured"].shape, " (the shape of measured)")
    out["montage_positions"] = _array(data, "montage_positions", (len(out["measured"]), 2), " (M = len(measured))")
    out["field_maps"] = None if data.field_maps is None else _array(data, "field_maps", (n_modes, None, None))
    fwhm = {name: getattr(data, name) for name in ("fwhm_before", "fwhm_after", "fwhm_positions")}
    if 0 < len(missing := [k for k, v in fwhm.items() if v is None]) < 3:
        raise ValueError(f"fwhm_before, fwhm_after, fwhm_positions: give all three or none, got None for {missing}")
    k = None if data.fwhm_before is None else len(np.atleast_1d(data.fwhm_before))
    for name, shape in (("fwhm_before", (k,)), ("fwhm_after", (k,)), ("fwhm_positions", (k, 2))):
        out[name] = None if k is None else _array(data, name, shape, " (K = len(fwhm_before))")
    if data.fwhm_simulated is not None and k is None:
        raise ValueError("fwhm_simulated: given without fwhm_before, fwhm_after and fwhm_positions")
    out["fwhm_simulated"] = None if data.fwhm_simulated is None else _array(data, "fwhm_simulated", (k,))
    if (data.eigen_psfs is None) != (data.weight_maps is None):
        raise ValueError("eigen_psfs, weight_maps: give both or neither (an empirical model has both)")
    out["eigen_psfs"] = None if data.eigen_psfs is None else _array(data, "eigen_psfs", (None, None, None))
    e = None if data.eigen_psfs is None else len(out["eigen_psfs"])
    out["weight_maps"] = None if e is None else _array(data, "weight_maps", (e, None, None), " (E = len(eigen_psfs))")
    out["confidence"] = None if data.confidence is None else _array(data, "confidence", (None, None))
    out["optical_centre"] = None if data.optical_centre is None else _array(data, "optical_centre", (4,))
    return out


# ---------------------------------------------------------------- figures


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _sensor_axes(ax, sensor_shape) -> None:
    ny, nx = sensor_shape
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(ny - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_xlabel("x (column, px)")
    ax.set_ylabel("y (row, px)")


def _grid_extent(sensor_shape, grid_shape) -> tuple[float, float, float, float]:
    """imshow extent of a (gy, gx) grid whose points sit on the outermost pixel centres (optisim.field.field_grid)."""
    (ny, nx), (gy, gx) = sensor_shape, grid_shape
    dy = (ny - 1) / (gy - 1) / 2 if gy > 1 else ny / 2
    dx = (nx - 1) / (gx - 1) / 2 if gx > 1 else nx / 2
    cy, cx = ((0, ny - 1) if gy > 1 else ((ny - 1) / 2,) * 2), ((0, nx - 1) if gx > 1 else ((nx - 1) / 2,) * 2)
    return cx[0] - dx, cx[1] + dx, cy[1] + dy, cy[0] - dy


def _symmetric(*arrays) -> float:
    """Largest finite absolute value of ``arrays`` (for colour limits symmetric about 0); 1 if there is none."""
    values = np.abs(np.concatenate([np.ravel(a) for a in arrays]).astype(float))
    vmax = float(values[np.isfinite(values)].max()) if np.isfinite(values).any() else 0.0
    return vmax if vmax > 0 else 1.0


def _sample_maps(maps: np.ndarray, rows, cols, sensor_shape) -> np.ndarray:
    """Bilinear interpolation of (J, gy, gx) grid maps at pixel positions; returns (N, J)."""
    out = []
    for pos, n, g in ((rows, sensor_shape[0], maps.shape[1]), (cols, sensor_shape[1], maps.shape[2])):
        f = np.clip(np.asarray(pos, float) / max(n - 1, 1) * (g - 1), 0, g - 1)
        i0 = np.minimum(np.floor(f).astype(int), max(g - 2, 0))
        out.append((i0, np.minimum(i0 + 1, g - 1), f - i0))
    (r0, r1, t), (c0, c1, u) = out
    value = (1 - t) * (1 - u) * maps[:, r0, c0] + (1 - t) * u * maps[:, r0, c1]
    return (value + t * (1 - u) * maps[:, r1, c0] + t * u * maps[:, r1, c1]).T


def _plot_detections(d: dict, path: Path) -> None:
    beads, image = d["beads"], d["image"]
    lo, hi = np.nanpercentile(image, [1, 99.8])
    fig = _figure(8, 7)
    ax = fig.add_subplot()
    im = ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="intensity (image units, 1-99.8 percentile stretch)")
    groups = {
        "kept": ([b for b in beads if b["status"] == "kept" and not b.get("holdout")], "o", "lime"),
        "held out": ([b for b in beads if b["status"] == "kept" and b.get("holdout")], "o", "cyan"),
        "rejected": ([b for b in beads if b["status"] != "kept"], "x", "red"),
    }
    for label, (group, marker, colour) in groups.items():
        ys, xs = [b["y"] for b in group], [b["x"] for b in group]
        style = {"facecolors": "none", "edgecolors": colour} if marker == "o" else {"c": colour}
        ax.scatter(xs, ys, s=90, marker=marker, linewidths=1.2, label=f"{label} ({len(group)})", **style)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.8)
    _sensor_axes(ax, d["sensor_shape"])
    ax.set_title(f"bead candidates: {len(beads)} detected")
    fig.savefig(path, dpi=DPI)


def _plot_coverage(d: dict, path: Path) -> None:
    from matplotlib.patches import Ellipse

    conf = d["confidence"]
    fig = _figure(7, 6)
    ax = fig.add_subplot()
    extent = _grid_extent(d["sensor_shape"], conf.shape)
    im = ax.imshow(conf, extent=extent, cmap="viridis", vmin=0, vmax=1, interpolation="bilinear")
    fig.colorbar(im, ax=ax, shrink=0.8, label="confidence (0-1)")
    ny, nx = d["sensor_shape"]
    gy, gx = conf.shape
    ax.contour(np.linspace(0, nx - 1, gx), np.linspace(0, ny - 1, gy), conf, levels=[0.5], colors="white",
               linewidths=1.5)  # fmt: skip
    hold = d["holdout"]
    for mask, marker, label in ((~hold, "o", "fitted"), (hold, "s", "held out")):
        ax.scatter(d["bead_cols"][mask], d["bead_rows"][mask], marker=marker, s=40, facecolors="none",
                   edgecolors="red", linewidths=1.0, label=f"{label} ({int(mask.sum())})")  # fmt: skip
    if d["optical_centre"] is not None:
        row, col, srow, scol = d["optical_centre"]
        ax.plot(col, row, "w+", ms=14, mew=2, label=f"optical centre ({row:.1f}, {col:.1f}) px")
        ax.add_patch(Ellipse((col, row), 2 * scol, 2 * srow, fill=False, ec="white", ls="--"))
    ax.legend(loc="upper right", fontsize=8, framealpha=0.8)
    _sensor_axes(ax, d["sensor_shape"])
    below = float((conf < 0.5).mean())
    ax.set_title(f"coverage: {100 * below:.0f} % of the grid below confidence 0.5 (white contour)")
    fig.savefig(path, dpi=DPI)


def _plot_zernike_maps(d: dict, path: Path) -> None:
    modes = d["modes"]
    coef, maps, hold = d["bead_coefficients"], d["field_maps"], d["holdout"]
    ncols = min(len(modes), 4)
    nrows = math.ceil(len(modes) / ncols)
    fig = _figure(3.6 * ncols, 3.2 * nrows)
    for j, (n, m) in enumerate(modes):
        ax = fig.add_subplot(nrows, ncols, j + 1)
        vmax = _symmetric(coef[:, j], [] if maps is None else maps[j])
        style = {"cmap": "RdBu_r", "vmin": -vmax, "vmax": vmax}
        mappable = None
        if maps is not None:
            extent = _grid_extent(d["sensor_shape"], maps.shape[1:])
            mappable = ax.imshow(maps[j], extent=extent, interpolation="bilinear", **style)
        for mask, marker in ((~hold, "o"), (hold, "s")):
            sc = ax.scatter(
                d["bead_cols"][mask], d["bead_rows"][mask], c=coef[mask, j], marker=marker, **_DOTS, **style
            )
            mappable = sc if mappable is None else mappable
        _sensor_axes(ax, d["sensor_shape"])
        ax.set_title(f"Z{nm_to_noll(n, m)} {mode_name(n, m)}", fontsize=10)
        fig.colorbar(mappable, ax=ax, shrink=0.85, label="waves RMS")
    model = "field model (image) and" if maps is not None else "no field model:"
    fig.suptitle(f"Zernike coefficients over the sensor: {model} beads (circles: fitted, squares: held out)")
    fig.savefig(path, dpi=DPI)


def _fwhm_text(before: np.ndarray, after: np.ndarray) -> str:
    def stats(v):
        q25, q50, q75 = np.nanpercentile(v, [25, 50, 75]) if np.isfinite(v).any() else (np.nan,) * 3
        return q50, q75 - q25

    (m0, s0), (m1, s1) = (tuple(f"{v:.3g}" if np.isfinite(v) else "n/a" for v in stats(x)) for x in (before, after))
    return f"median {m0} → {m1} px, spread (IQR) {s0} → {s1} px"


def _fwhm_caption(d: dict) -> str:
    text = f" {_fwhm_text(d['fwhm_before'], d['fwhm_after'])}."
    if d["fwhm_simulated"] is not None:
        text += (
            " The network was fine-tuned on the beads; the middle box is the network of the simulated training alone."
        )
    return text


def _plot_fwhm(d: dict, path: Path) -> None:
    before, after, pos = d["fwhm_before"], d["fwhm_after"], d["fwhm_positions"]
    both = np.concatenate([before, after])
    lo, hi = (np.nanmin(both), np.nanmax(both)) if np.isfinite(both).any() else (0.0, 1.0)
    fig = _figure(15, 4.8)
    axes = fig.subplots(1, 3)
    for ax, values, label in ((axes[0], before, "raw image"), (axes[1], after, "deblurred")):
        ok = np.isfinite(values)
        sc = ax.scatter(pos[ok, 1], pos[ok, 0], c=values[ok], cmap="viridis", vmin=lo, vmax=hi, **_DOTS)
        ax.scatter(pos[~ok, 1], pos[~ok, 0], marker="x", c="0.5", s=20, label=f"not measured ({(~ok).sum()})")
        _sensor_axes(ax, d["sensor_shape"])
        ax.set_title(f"FWHM, {label}")
        if (~ok).any():
            ax.legend(fontsize=8, loc="upper right")
        fig.colorbar(sc, ax=ax, shrink=0.85, label="FWHM (px)")
    columns = [(before, "raw"), (after, "deblurred")]
    if d["fwhm_simulated"] is not None:
        columns = [columns[0], (d["fwhm_simulated"], "simulated\ntraining only"), (after, "fine-tuned\non beads")]
    axes[2].boxplot([v[np.isfinite(v)] for v, _ in columns], showmeans=False, medianprops={"color": "red"})
    axes[2].set_xticks(range(1, len(columns) + 1), [label for _, label in columns])
    axes[2].set(ylabel="FWHM (px)", title="distribution (red: median)")
    fig.suptitle(f"bead FWHM: {_fwhm_text(before, after)}")
    fig.savefig(path, dpi=DPI)


def _plot_montage(d: dict, path: Path) -> None:
    measured, predicted, pos = d["measured"], d["predicted"], d["montage_positions"]
    peak = np.maximum(np.abs(measured).max(axis=(1, 2), keepdims=True), 1e-30)
    meas, pred = measured / peak, predicted / peak
    rmax = _symmetric(resid := meas - pred)
    groups = 1 if len(meas) <= 4 else 2
    nrows = math.ceil(len(meas) / groups)
    fig = _figure(4.8 * groups + 1.4, 1.7 * nrows + 0.8)
    axes = fig.subplots(nrows, 3 * groups, squeeze=False)
    for ax in axes.ravel():
        ax.set(xticks=[], yticks=[])
    for i in range(len(meas)):
        row, col = i % nrows, 3 * (i // nrows)
        im0 = axes[row, col].imshow(meas[i], cmap="magma", vmin=0, vmax=1)
        axes[row, col + 1].imshow(pred[i], cmap="magma", vmin=0, vmax=1)
        im2 = axes[row, col + 2].imshow(resid[i], cmap="RdBu_r", vmin=-rmax, vmax=rmax)
        axes[row, col].set_ylabel(f"y={pos[i, 0]:.0f}, x={pos[i, 1]:.0f} px", fontsize=8)
    for col in range(groups):
        for k, name in enumerate(("measured", "model", "measured − model")):
            axes[0, 3 * col + k].set_title(name, fontsize=9)
    for i in range(len(meas), nrows * groups):
        for ax in axes[i % nrows, 3 * (i // nrows) : 3 * (i // nrows) + 3]:
            ax.set_visible(False)
    fig.colorbar(im0, ax=axes, shrink=0.6, label="intensity / measured peak (per bead)")
    fig.colorbar(im2, ax=axes, shrink=0.6, label="residual (measured − model) / measured peak")
    fig.suptitle(f"in-focus PSFs of {len(meas)} beads ({meas.shape[1]}x{meas.shape[2]} px): data, model, residual")
    fig.savefig(path, dpi=DPI)


def _plot_residuals(d: dict, path: Path) -> None:
    modes = d["modes"]
    hx, hy = pixel_to_field(d["bead_rows"], d["bead_cols"], d["sensor_shape"])
    radius, hold, maps = np.hypot(hx, hy), d["holdout"], d["field_maps"]
    fig = _figure(6 if maps is None else 14, 4.8)
    axes = fig.subplots(1, 1 if maps is None else 2, squeeze=False)[0]
    for mask, marker, label in ((~hold, "o", "fitted"), (hold, "s", "held out")):
        axes[0].scatter(radius[mask], d["correlation"][mask], marker=marker, s=22, label=f"{label} ({mask.sum()})")
    axes[0].set(xlabel="field radius |h| (normalised: sensor edge 1, corner √2)", title="per-bead fit quality")
    axes[0].set_ylabel("fit correlation (measured vs model PSF)")
    axes[0].legend(fontsize=8)
    if maps is not None:
        resid = d["bead_coefficients"] - _sample_maps(maps, d["bead_rows"], d["bead_cols"], d["sensor_shape"])
        ax = axes[1]
        ax.boxplot([resid[:, j] for j in range(len(modes))], widths=0.6, showfliers=False, medianprops={"color": "k"})
        jitter = np.linspace(-0.2, 0.2, max(len(resid), 1))
        for mask, colour, label in ((~hold, "tab:blue", "fitted"), (hold, "tab:orange", "held out")):
            for j in range(len(modes)):
                ax.scatter(j + 1 + jitter[mask], resid[mask, j], s=10, c=colour, label=label if j == 0 else None)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(1, len(modes) + 1), [f"Z{nm_to_noll(*nm)}\n{mode_name(*nm)}" for nm in modes], fontsize=7)
        ax.set(ylabel="bead − field model (waves RMS)", title="per-mode bead residual from the field model (bilinear)")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=DPI)


def _plot_eigen(d: dict, path: Path) -> None:
    psfs, weights = d["eigen_psfs"], d["weight_maps"]
    fig = _figure(max(3.8 * len(psfs), 9.0), 7.0)
    axes = fig.subplots(2, len(psfs), squeeze=False)
    extent = _grid_extent(d["sensor_shape"], weights.shape[1:])
    for k in range(len(psfs)):
        vk, vw = _symmetric(psfs[k]), _symmetric(weights[k])
        im = axes[0, k].imshow(psfs[k], cmap="RdBu_r", vmin=-vk, vmax=vk, interpolation="nearest")
        axes[0, k].set(title=f"eigen-PSF {k}", xlabel="x (px)", ylabel="y (px)")
        fig.colorbar(im, ax=axes[0, k], shrink=0.8, label="amplitude (a.u.)")
        im = axes[1, k].imshow(weights[k], cmap="RdBu_r", vmin=-vw, vmax=vw, extent=extent, interpolation="bilinear")
        _sensor_axes(axes[1, k], d["sensor_shape"])
        axes[1, k].set_title(f"weight map {k}")
        fig.colorbar(im, ax=axes[1, k], shrink=0.8, label="weight (dimensionless)")
    fig.suptitle("empirical PSF model: eigen-PSFs (top) and their weights over the sensor (bottom)")
    fig.savefig(path, dpi=DPI)


# ---------------------------------------------------------------- HTML


def _fmt(value) -> str:
    """A summary or bead-table value as escaped HTML text; floats to 4 significant digits."""
    if isinstance(value, bool | np.bool_) or value is None:
        return "—" if value is None else str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}"
    if isinstance(value, list | tuple | np.ndarray):
        return "[" + ", ".join(_fmt(v) for v in np.asarray(value, dtype=object).ravel()) + "]"
    return html.escape(str(value))


def _table(summary: dict) -> str:
    rows = []
    for key, value in summary.items():
        cell = _table(value) if isinstance(value, dict) else _fmt(value)
        rows.append(f"<tr><th>{html.escape(str(key))}</th><td>{cell}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _without_check(summary: dict) -> dict:
    """The summary without ``validation.deblurred_beads`` (:func:`_deblur_section` shows it as its own tables)."""
    validation = summary.get("validation")
    if not isinstance(validation, dict) or "deblurred_beads" not in validation:
        return summary
    return {**summary, "validation": {k: v for k, v in validation.items() if k != "deblurred_beads"}}


_CHECK_PARTS = {
    "holdout": "Held-out beads, deblurred with the calibrated model (and the network)",
    "radial_holdout": "Outer beads, deblurred with the model of the inner beads only (extrapolation)",
}


def _deblur_section(summary: dict) -> str:
    """Tables of the deblurred-bead check (:mod:`calibration.deblurcheck`): method x field band."""
    check = (summary.get("validation") or {}).get("deblurred_beads") if isinstance(summary, dict) else None
    if not isinstance(check, dict):
        return ""
    parts = ["<h2>Deblurred beads: shape and light by field band</h2><p>Median aspect ratio (1 = round), FWHM (px) "
             "and flux ratio (deblurred / raw aperture sum; 1 = light kept) of the beads in each band of the "
             "normalised field radius h, raw and after each method; edge/centre: the outermost band's flux ratio "
             "over the innermost's. <i>rl own PSF</i> is a reference: each bead deconvolved by the same RL with its "
             "own measured PSF, what RL reaches with no model error (RL keeps an unresolved bead's elongation until "
             "it reaches the pixel scale, even with the exact PSF); a method far above it has a wrong model "
             "there.</p>"]
    for key, title in _CHECK_PARTS.items():
        part = check.get(key) or {}
        if isinstance(part.get("skipped"), str):  # the check could not be made (a count is beads near the border)
            parts.append(f"<h3>{html.escape(title)}</h3><p>not made: {html.escape(str(part['skipped']))}</p>")
            continue
        rows = []
        for method, m in (part.get("methods") or {}).items():
            for r in m.get("by_band", []):
                cells = [method, r["band"], r["sources"], r["aspect"], r["fwhm"], r["flux_ratio"]]
                rows.append("<tr>" + "".join(f"<td>{'' if c is None else _fmt(c)}</td>" for c in cells) + "</tr>")
            if m.get("edge_centre_flux") is not None:
                rows.append(f'<tr><td>{html.escape(method)}</td><td colspan="4">edge/centre flux</td>'
                            f"<td>{_fmt(m['edge_centre_flux'])}</td></tr>")  # fmt: skip
        head = "".join(f"<th>{h}</th>" for h in ("method", "band", "beads", "aspect", "FWHM (px)", "flux ratio"))
        parts.append(f"<h3>{html.escape(title)}</h3><table><tr>{head}</tr>{''.join(rows)}</table>")
    return "".join(parts)


def _bead_table(beads: list[dict]) -> str:
    keys = ("index", "frame", "y", "x", "snr", "status", "reason", "holdout")
    head = "".join(f"<th>{k}</th>" for k in keys)
    rows = []
    for b in beads:
        cells = "".join(f"<td>{'' if b.get(k) is None else _fmt(b[k])}</td>" for k in keys)
        rows.append(f'<tr class="{html.escape(b["status"])}">{cells}</tr>')
    return f'<table class="beads"><tr>{head}</tr>' + "".join(rows) + "</table>"


def _intro(data: ReportData, d: dict) -> str:
    kept = sum(b["status"] == "kept" for b in data.beads)
    names = ", ".join(f"Z{nm_to_noll(*nm)} {mode_name(*nm)}" for nm in data.modes)
    model = "No parametric field model was fitted."
    if d["field_maps"] is not None:
        model = "A smooth field model of each coefficient over the sensor was fitted to the beads not held out."
    if d["eigen_psfs"] is not None:
        model += f" An empirical model of {len(d['eigen_psfs'])} eigen-PSFs with weight maps was built."
    text = (
        f"{len(data.beads)} bead candidates were detected in a {d['image'].shape[0]}x{d['image'].shape[1]} px "
        f"image ({data.pixel_um:.4g} µm pixels, sensor {d['sensor_shape'][0]}x{d['sensor_shape'][1]} px); "
        f"{kept} were kept and {len(data.beads) - kept} rejected. The PSF of each of the "
        f"{len(d['bead_rows'])} fitted beads was fitted with {len(data.modes)} Zernike modes ({names}), "
        f"coefficients in waves RMS; {int(d['holdout'].sum())} beads were held out to validate the field model. "
        f"{model}"
    )
    return f"<p>{html.escape(text)}</p>"


_CAPTIONS = {
    "detections.png": "Bead candidates on the image (1-99.8 percentile grey stretch, image units): kept beads (green "
    "circles), held-out beads (cyan circles), rejected candidates (red crosses); positions in pixels.",
    "zernike_maps.png": "Zernike coefficients over the sensor, one panel per mode, in waves RMS: field model (image, "
    "where fitted) and per-bead fits (dots on the same colour scale; squares: held-out beads). Axes in pixels.",
    "fwhm.png": "Bead FWHM in pixels over the sensor on the raw and the deblurred image (same colour limits), and "
    "their distributions.",
    "psf_montage.png": "In-focus PSFs of beads spread over the field: measured, model, and measured − model, each "
    "bead scaled to its measured peak (dimensionless); labels give the bead position in pixels.",
    "residuals.png": "Per-bead fit correlation versus normalised field radius, and (with a field model) each bead's "
    "Zernike coefficient minus the field model at the bead, per mode, in waves RMS.",
    "coverage.png": "Where the calibrated model is constrained by the beads: the coverage confidence in [0, 1] "
    "(bootstrap PSF spread and distance to the nearest bead in the model's symmetry-reduced coordinates; "
    "optisim.coverage), the 0.5 contour below which a region is beyond the calibration's coverage, the beads "
    "(circles: fitted, squares: held out) and, for a rotational model, the optical centre with its 1-sigma ellipse "
    "(pixels).",
    "eigen_psfs.png": "Eigen-PSFs of the empirical model (pixels, arbitrary amplitude) and their weight maps over the "
    "sensor (dimensionless).",
}


def _figures_html(out_dir: Path, d: dict) -> str:
    """Draw every figure whose inputs are present into ``out_dir``; return their HTML (or why one was skipped)."""
    has_fwhm = d["fwhm_before"] is not None
    figures = [
        ("detections.png", _plot_detections, None),
        ("zernike_maps.png", _plot_zernike_maps, None),
        ("fwhm.png", _plot_fwhm, None if has_fwhm else "no FWHM validation was given"),
        ("psf_montage.png", _plot_montage, None if len(d["measured"]) else "no montage beads were given"),
        ("residuals.png", _plot_residuals, None),
        ("eigen_psfs.png", _plot_eigen, None if d["eigen_psfs"] is not None else "the model is not empirical"),
        ("coverage.png", _plot_coverage, None if d["confidence"] is not None else "no coverage map was made"),
    ]
    parts = ["<h2>Figures</h2>"]
    for name, draw, skipped in figures:
        (out_dir / name).unlink(missing_ok=True)  # no stale figure from an earlier run
        if skipped:
            parts.append(f'<p class="skipped">{name} not drawn: {html.escape(skipped)}.</p>')
            continue
        draw(d, out_dir / name)
        caption = _CAPTIONS[name] + (_fwhm_caption(d) if name == "fwhm.png" else "")
        parts.append(f'<figure><img src="{name}" alt="{name}"><figcaption>{html.escape(caption)}</figcaption></figure>')
    return "".join(parts)


def write_report(out_dir, data: ReportData) -> Path:
    """Write the calibration report: PNG figures and ``report.html`` beside them.

    Figures whose inputs are None are not drawn (and removed if an earlier run left them); the HTML says so.

    Parameters
    ----------
    out_dir : str or Path, output folder (created if missing)
    data : ReportData, the arrays to show; shapes are checked first

    Returns
    -------
    Path of ``out_dir / "report.html"``.

    Raises
    ------
    ValueError
        A field of ``data`` has the wrong shape or kind; the message names the field.
    """
    d = _validate(data)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    links = "".join(
        f'<li><a href="{html.escape(str(path))}">{html.escape(str(path))}</a>: {html.escape(str(label))}</li>'
        for label, path in data.files.items()
    )
    title = html.escape(data.title)
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_CSS}</style></head><body><h1>{title}</h1>{_intro(data, d)}"
        f"<h2>Summary</h2>{_table(_without_check(data.summary))}{_deblur_section(data.summary)}"
        f"<h2>Files</h2><ul>{links}</ul>{_figures_html(out_dir, d)}"
        f"<h2>Bead candidates ({len(data.beads)})</h2>{_bead_table(data.beads)}</body></html>\n"
    )
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
