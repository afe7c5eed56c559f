"""The nominal optics of a calibration: metadata from the files, the options and a design lens, checked.

Each quantity is taken from, in order: the command-line option, the bead file's metadata (pixel size, z-step),
the design lens file (``--lens``). Pixel size (object space, µm), wavelength (µm) and NA are required; a missing
one is a one-line error that names the option to pass. The immersion index defaults to 1.0 (air) for NA < 1 and
is required above.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from optisim.aberrations import FieldModel
from optisim.lens import Lens, load_lens

__all__ = ["Optics", "check_bead_width", "diffraction_fwhm_um", "nominal_lens"]


@dataclass(frozen=True)
class Optics:
    """Options that describe the instrument (None: not given)."""

    pixel_um: float | None = None
    z_step_um: float | None = None
    wavelength_um: float | None = None
    na: float | None = None
    immersion_index: float | None = None
    lens: str | None = None

    def __post_init__(self):
        for name, option in (
            ("pixel_um", "--pixel-size"),
            ("z_step_um", "--z-step"),
            ("wavelength_um", "--wavelength"),
            ("na", "--na"),
            ("immersion_index", "--immersion-index"),
        ):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{option}: expected a positive number, got {value}")
        if self.wavelength_um is not None and self.wavelength_um > 20:
            raise ValueError(f"--wavelength: {self.wavelength_um} µm is not an optical wavelength; give µm (0.525)")


def nominal_lens(optics: Optics, sensor_shape, *, file_pixel_um: float | None, source: str) -> Lens:
    """The lens the beads are fitted with: optics and sensor, no aberrations (they are what is measured).

    Parameters
    ----------
    optics : Optics, the options
    sensor_shape : (ny, nx), the bead image's shape
    file_pixel_um : float or None, the pixel size in the bead file's metadata
    source : str, the bead file's name (for messages)
    """
    design = load_lens(optics.lens) if optics.lens is not None else None
    pixel = optics.pixel_um or file_pixel_um or (design.pixel_um if design else None)
    if pixel is None:
        raise ValueError(f"the pixel size is unknown: {source} records none; pass --pixel-size (µm, object space)")
    wavelength = optics.wavelength_um or (design.reference_wavelength_um if design else None)
    if wavelength is None:
        raise ValueError("the emission wavelength is unknown; pass --wavelength (µm) or --lens FILE")
    na = optics.na or (design.na if design else None)
    if na is None:
        raise ValueError("the numerical aperture is unknown; pass --na or --lens FILE")
    index = optics.immersion_index or (design.immersion_index if design else None)
    if index is None:
        if na >= 1.0:
            raise ValueError(f"NA {na:g} needs an immersion medium; pass --immersion-index (1.33 water, 1.518 oil)")
        index = 1.0
    if na >= index:
        raise ValueError(f"--na {na:g} must be smaller than the immersion index {index:g} (--immersion-index)")
    return Lens(
        name=design.name if design else "instrument",
        description=f"nominal optics for the calibration of {source}",
        wavelengths_um=(wavelength,),
        na=na,
        immersion_index=index,
        sensor_shape=tuple(sensor_shape),
        pixel_size_um=pixel,
        pupil_samples=design.pupil_samples if design else 128,
        apodisation=design.apodisation if design else "none",
        apodisation_sigma=design.apodisation_sigma if design else None,
        aberrations=FieldModel(reference_wavelength_um=wavelength),
    )


def diffraction_fwhm_um(lens: Lens, modality: str = "widefield") -> float:
    """FWHM of the aberration-free in-focus PSF, µm: ``0.51 λ / NA`` (widefield), ``0.37 λ / NA`` (confocal)."""
    return (0.51 if modality == "widefield" else 0.37) * lens.reference_wavelength_um / lens.na


def check_bead_width(fwhm_px, lens: Lens, modality: str = "widefield") -> float:
    """Warn when the beads are narrower than diffraction allows (the metadata are then likely wrong).

    ``fwhm_px`` : the measured bead widths (pixels). Returns the median width divided by the diffraction limit.
    """
    limit_px = diffraction_fwhm_um(lens, modality) / lens.pixel_um
    finite = [float(v) for v in fwhm_px if math.isfinite(v)]
    if not finite:
        return float("nan")
    finite.sort()
    median = finite[len(finite) // 2]
    ratio = median / limit_px
    if ratio < 0.7:
        warnings.warn(
            f"the beads are {median:.2f} px wide (median FWHM) but the diffraction limit at NA {lens.na:g} and "
            f"{lens.reference_wavelength_um:g} µm is {limit_px:.2f} px of {lens.pixel_um:g} µm: the pixel size, NA "
            f"or wavelength is likely wrong",
            UserWarning,
            stacklevel=2,
        )
    return ratio
