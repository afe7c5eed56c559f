"""The report's inputs from a calibration's results (:class:`calibration.report.ReportData`)."""

from __future__ import annotations

import numpy as np
import torch

from calibration.pipeline import BeadModelFit, centred_psfs, fit_indices
from calibration.report import ReportData
from optisim.beads import BeadModel
from optisim.field import field_grid, pixel_to_field

__all__ = ["montage_beads", "report_data"]

MAP_GRID = (33, 33)


def montage_beads(rows, cols, sensor_shape, count: int = 12) -> np.ndarray:
    """Indices of up to ``count`` beads spread over the field: farthest-point sampling from the centre outward."""
    hx, hy = pixel_to_field(rows, cols, sensor_shape)
    if len(hx) == 0:
        return np.zeros(0, dtype=int)
    chosen = [int(np.argmin(np.hypot(hx, hy)))]
    dist = np.hypot(hx - hx[chosen[0]], hy - hy[chosen[0]])
    while len(chosen) < min(count, len(hx)):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.hypot(hx - hx[nxt], hy - hy[nxt]))
    return np.array(chosen)


def _parametric_psfs(result: BeadModelFit, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Measured and field-model PSFs (the beads' best planes) of the beads ``index``, each summing to 1."""
    fits, lens = result.fits, result.lens
    measured = centred_psfs(fits.subset(index))
    if fits.z_um is not None:  # a stack: the per-bead fits at the same (best) planes
        model_fits = fits.subset(index)
        model_fits.data = model_fits.model
        return measured, centred_psfs(model_fits)
    hx, hy = pixel_to_field(fits.rows[index], fits.cols[index], lens.sensor_shape)
    coeffs = result.field_fit.predict(hx, hy) * fits.wavelength_um
    model = BeadModel(
        lens, fits.modes, size=fits.data.shape[-1], bead_diameter_um=0.0, dtype=torch.float64
    )  # in focus, centred
    with torch.no_grad():
        predicted = model(torch.as_tensor(coeffs)).numpy()[:, 0]
    return measured, predicted / predicted.sum(axis=(1, 2), keepdims=True)


def report_data(result: BeadModelFit, stacks, summary: dict, network: dict) -> ReportData:
    """Everything the report draws, from the pipeline's result and the summary numbers."""
    fits, lens = result.fits, result.lens
    index = montage_beads(fits.rows, fits.cols, lens.sensor_shape)
    field_maps = eigen = weights = None
    if result.kind == "parametric":
        measured, predicted = _parametric_psfs(result, index)
        hy, hx = field_grid(lens.sensor_shape, MAP_GRID)
        hyy, hxx = np.meshgrid(hy, hx, indexing="ij")
        field_maps = np.moveaxis(result.field_fit.predict(hxx, hyy), -1, 0)
    else:
        model = result.psf_model
        measured = result.empirical_psfs[index]
        hx, hy = pixel_to_field(fits.rows[index], fits.cols[index], lens.sensor_shape)
        predicted = model.psfs_at(hx, hy)
        eigen = model.kernels
        weights = np.moveaxis(model.coefficients, -1, 0)
    beads = []
    kept = fit_indices(result.detections)
    for det in result.detections:
        for b in det.beads:
            row = b.to_dict()
            fit_index = kept.get((b.frame, b.index))
            row["holdout"] = bool(result.holdout[fit_index]) if fit_index is not None else False
            beads.append(row)
    widths = network.get("bead_width") or {}
    image = stacks[0].data.max(axis=0)
    centre = (summary["model"].get("empirical") or summary["model"].get("field") or {}).get("optical_centre")
    return ReportData(
        title=f"optisim calibration: {', '.join(s.path.name for s in stacks)}",
        image=image,
        sensor_shape=tuple(lens.sensor_shape),
        pixel_um=lens.pixel_um,
        beads=beads,
        modes=list(fits.modes),
        bead_rows=fits.rows,
        bead_cols=fits.cols,
        bead_coefficients=fits.coefficients,
        bead_uncertainty=fits.uncertainty,
        holdout=result.holdout,
        field_maps=field_maps,
        measured=measured,
        predicted=predicted,
        montage_positions=np.stack([fits.rows[index], fits.cols[index]], axis=1),
        correlation=fits.correlation,
        fwhm_before=widths.get("before"),
        fwhm_after=widths.get("after"),
        fwhm_positions=np.stack([widths["rows"], widths["cols"]], axis=1) if widths else None,
        fwhm_simulated=(network.get("bead_width_simulated") or {}).get("after") if widths else None,
        eigen_psfs=eigen,
        weight_maps=weights,
        confidence=None if result.coverage is None else result.coverage.confidence,
        optical_centre=None if centre is None else (*centre["pixel_row_col"], *centre["pixel_sigma_row_col"]),
        summary={k: v for k, v in summary.items() if k not in ("fits", "inputs", "settings")},
        files=_files(result, network),
    )


def _files(result: BeadModelFit, network: dict) -> dict:
    files = {"all numbers": "calibration.json", "bead table": "beads.csv"}
    files["calibrated model"] = "lens.toml" if result.kind == "parametric" else "psf_model.nc"
    if result.coverage is not None:
        files["coverage maps"] = "coverage.nc"
    if network:
        files["calibrated network"] = network["checkpoint"]
    return files
