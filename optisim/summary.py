"""Plain-text summary of a lens (``optisim lens show``): sampling, aberrations, wavefront error, Strehl map."""

from __future__ import annotations

import numpy as np

from optisim.aberrations import SEIDEL
from optisim.field import field_grid, field_scale, pixel_to_field
from optisim.lens import Lens, wavefront_rms
from optisim.psf import strehl_ratio
from optisim.zernike import mode_name, nm_to_index

__all__ = ["lens_summary"]


def _wavelengths(lens: Lens) -> str:
    if len(lens.wavelengths_um) == 1:
        return f"{lens.wavelengths_um[0]:g} µm"
    pairs = ", ".join(f"{w:g} ({p:.2f})" for w, p in zip(lens.wavelengths_um, lens.weights, strict=True))
    return f"{pairs} µm (weights)"


def lens_summary(lens: Lens, *, strehl_grid: int = 5) -> str:
    """Multi-line summary: optics, sampling (Airy radius, Nyquist), aberrations, WFE at centre/edge/corner, Strehl.

    The edge is the middle of the sensor's right edge and the corner its bottom-right corner (outermost pixel
    centres). Wavefront errors are RMS without piston and tilt, in waves at the reference wavelength.
    """
    ny, nx = lens.sensor_shape
    p = lens.pixel_um
    ratio = p / lens.nyquist_pixel_um
    sampled = "samples it" if ratio <= 1 + 1e-9 else "UNDERSAMPLES it (PSF computation needs --allow-undersampled)"
    model = lens.aberrations
    lines = [
        f"lens '{lens.name}'" + (f": {lens.description}" if lens.description else ""),
        f"  optics      wavelength {_wavelengths(lens)}, NA {lens.na:g}, immersion index {lens.immersion_index:g}, "
        f"apodisation {lens.apodisation}" + (f" (sigma {lens.apodisation_sigma:g})" if lens.apodisation_sigma else ""),
        f"  sensor      {ny} x {nx} px of {p:.4g} µm (object space) = {ny * p:.4g} x {nx * p:.4g} µm; "
        f"field unit h = 1 at {field_scale(lens.sensor_shape) * p:.4g} µm from the centre",
        f"  sampling    Airy radius 0.61 λ/NA = {lens.airy_radius_um:.4g} µm = {lens.airy_radius_um / p:.3g} px; "
        f"Nyquist pixel λ/(4 NA) = {lens.nyquist_pixel_um:.4g} µm: the sensor {sampled} "
        f"(pixel = {ratio:.2f} x Nyquist)",
        f"  pupil       {lens.pupil_samples} samples across the diameter",
        f"  aberrations RMS-normalised Zernike, {model.convention} indices, {model.unit} "
        f"(reference wavelength {lens.reference_wavelength_um:g} µm)",
    ]
    seidel = [f"{name} {getattr(model, name):g}" for name in SEIDEL if getattr(model, name) != 0.0]
    lines.append("              field dependence: " + (", ".join(seidel) if seidel else "none"))
    for t in model.terms:
        lines.append(
            f"              + mode {nm_to_index(*t.mode, model.convention)} ({mode_name(*t.mode)}) "
            f"{t.coefficient:g} hx^{t.hx_power} hy^{t.hy_power}"
        )
    modes = model.modes()
    points = {"centre": ((ny - 1) / 2, (nx - 1) / 2), "edge": ((ny - 1) / 2, nx - 1), "corner": (ny - 1, nx - 1)}
    wfe = []
    for label, (row, col) in points.items():
        hx, hy = pixel_to_field(row, col, lens.sensor_shape)
        rms = float(wavefront_rms(lens.zernike_waves(hx, hy, modes), modes)) if modes else 0.0
        wfe.append(f"{label} {rms:.3f}")
    lines.append("  wavefront   RMS error (waves, no piston/tilt): " + ", ".join(wfe))
    hy, hx = field_grid(lens.sensor_shape, (strehl_grid, strehl_grid))
    hyy, hxx = np.meshgrid(hy, hx, indexing="ij")
    s = strehl_ratio(lens, hxx, hyy)
    lines.append(
        f"  Strehl      ratio at the reference wavelength over a {strehl_grid}x{strehl_grid} field grid "
        "(rows: field y from top, columns: field x from left)"
    )
    lines.append("              hy \\ hx " + " ".join(f"{v:6.2f}" for v in hx))
    for i, v in enumerate(hy):
        lines.append(f"              {v:6.2f}  " + " ".join(f"{x:6.3f}" for x in s[i]))
    return "\n".join(lines)
