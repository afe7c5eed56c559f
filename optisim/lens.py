"""Lens model: optics, sensor, pupil sampling and a field-dependent Zernike aberration model; TOML lens files.

A lens file is TOML with four tables (``[optics]``, ``[sensor]``, ``[pupil]``, ``[aberrations]``); the format is
documented in ``data/FORMATS.md``. Unknown keys are errors that name the key.

The field-dependent aberration model (:class:`FieldModel`) is defined in :mod:`optisim.aberrations`.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from optisim.aberrations import (
    FieldModel,
    FieldTerm,
    LensFileError,
    _integer,
    _number,
    _reject_unknown,
)

__all__ = [
    "FieldModel",
    "FieldTerm",
    "Lens",
    "LensFileError",
    "list_presets",
    "load_lens",
    "load_preset",
    "wavefront_rms",
]

FORMAT_NAME = "optisim-lens"
FORMAT_VERSION = 1
APODISATIONS = ("none", "aplanatic", "gaussian")


@dataclass(frozen=True)
class Lens:
    """An imaging system: optics, sensor sampling, pupil sampling and field-dependent aberrations.

    Parameters
    ----------
    name : str
    wavelengths_um : tuple of float, µm
        Emission wavelength(s); several with ``wavelength_weights`` for broadband light.
    na : float
        Numerical aperture in object space, ``< immersion_index``.
    immersion_index : float
        Refractive index of the immersion medium (1.0 for air).
    sensor_shape : (ny, nx) ints, pixels
    pixel_size_um : float or None, µm
        Pixel size in object space. Give it, or ``camera_pixel_um`` and ``magnification``.
    camera_pixel_um, magnification : float or None
        Physical camera pixel (µm) and lateral magnification; object pixel = camera pixel / magnification.
    pupil_samples : int
        Samples across the pupil diameter for the PSF computation.
    apodisation : {'none', 'aplanatic', 'gaussian'}
        Pupil amplitude: uniform; ``1 / sqrt(cos θ)`` with ``sin θ = ρ NA / n`` (aplanatic objective
        collecting from a point source); or ``exp(-ρ² / (2 σ²))`` with ``σ = apodisation_sigma`` pupil radii.
    apodisation_sigma : float or None
        Width of the Gaussian apodisation in pupil radii (only with ``apodisation='gaussian'``).
    wavelength_weights : tuple of float
        Relative weights of ``wavelengths_um`` (default: equal), normalised when used.
    aberrations : FieldModel
    description : str
    """

    name: str
    wavelengths_um: tuple[float, ...]
    na: float
    immersion_index: float
    sensor_shape: tuple[int, int]
    pixel_size_um: float | None = None
    camera_pixel_um: float | None = None
    magnification: float | None = None
    pupil_samples: int = 128
    apodisation: str = "none"
    apodisation_sigma: float | None = None
    wavelength_weights: tuple[float, ...] = ()
    aberrations: FieldModel = field(default_factory=FieldModel)
    description: str = ""

    def __post_init__(self):
        wl = tuple(float(w) for w in np.atleast_1d(self.wavelengths_um))
        object.__setattr__(self, "wavelengths_um", wl)
        weights = tuple(float(w) for w in self.wavelength_weights) or (1.0,) * len(wl)
        object.__setattr__(self, "wavelength_weights", weights)
        object.__setattr__(self, "sensor_shape", tuple(int(v) for v in self.sensor_shape))
        self._validate()
        if self.aberrations.reference_wavelength_um is None:
            ref = float(np.average(wl, weights=weights))
            object.__setattr__(self, "aberrations", dataclasses.replace(self.aberrations, reference_wavelength_um=ref))

    def _validate(self):
        if not self.wavelengths_um:
            raise LensFileError("'optics.wavelength_um': expected at least one wavelength")
        for w in self.wavelengths_um:
            if not w > 0:
                raise LensFileError(f"'optics.wavelength_um': expected positive wavelengths in µm, got {w}")
            if w > 20:
                raise LensFileError(
                    f"'optics.wavelength_um': {w} µm is not an optical wavelength; give µm, e.g. 0.525 for 525 nm"
                )
        if len(self.wavelength_weights) != len(self.wavelengths_um):
            raise LensFileError(
                f"'optics.wavelength_weights': expected {len(self.wavelengths_um)} weights (one per wavelength), "
                f"got {len(self.wavelength_weights)}"
            )
        if min(self.wavelength_weights) < 0 or sum(self.wavelength_weights) <= 0:
            raise LensFileError(
                f"'optics.wavelength_weights': expected non-negative weights with a positive sum, "
                f"got {list(self.wavelength_weights)}"
            )
        if not self.immersion_index >= 1.0:
            raise LensFileError(
                f"'optics.immersion_index': expected a refractive index >= 1, got {self.immersion_index}"
            )
        if not 0 < self.na < self.immersion_index:
            raise LensFileError(
                f"'optics.na': numerical aperture {self.na} must be positive and smaller than the immersion "
                f"index {self.immersion_index}"
            )
        if len(self.sensor_shape) != 2 or min(self.sensor_shape) < 1:
            raise LensFileError(
                f"'sensor.shape': expected [ny, nx] positive pixel counts, got {list(self.sensor_shape)}"
            )
        self._validate_pixel()
        if not isinstance(self.pupil_samples, int) or self.pupil_samples < 16:
            raise LensFileError(f"'pupil.samples': expected an integer >= 16, got {self.pupil_samples!r}")
        if self.apodisation not in APODISATIONS:
            raise LensFileError(f"'optics.apodisation': expected one of {APODISATIONS}, got {self.apodisation!r}")
        if self.apodisation == "gaussian":
            if self.apodisation_sigma is None or not self.apodisation_sigma > 0:
                raise LensFileError(
                    f"'optics.apodisation_sigma': gaussian apodisation needs a positive width in pupil radii, "
                    f"got {self.apodisation_sigma}"
                )
        elif self.apodisation_sigma is not None:
            raise LensFileError(
                f"'optics.apodisation_sigma' is only used with apodisation = 'gaussian', not {self.apodisation!r}"
            )

    def _validate_pixel(self):
        camera = (self.camera_pixel_um, self.magnification)
        if self.pixel_size_um is not None:
            if any(v is not None for v in camera):
                raise LensFileError(
                    "'sensor': give either pixel_size_um (object space) or camera_pixel_um and magnification, not both"
                )
            if not self.pixel_size_um > 0:
                raise LensFileError(
                    f"'sensor.pixel_size_um': expected a positive pixel size in µm, got {self.pixel_size_um}"
                )
        elif None in camera:
            raise LensFileError(
                "'sensor': missing pixel size: give pixel_size_um (object space) or camera_pixel_um and magnification"
            )
        else:
            if not self.camera_pixel_um > 0:
                raise LensFileError(
                    f"'sensor.camera_pixel_um': expected a positive pixel size in µm, got {self.camera_pixel_um}"
                )
            if not self.magnification > 0:
                raise LensFileError(
                    f"'sensor.magnification': expected a positive magnification, got {self.magnification}"
                )

    # -- derived quantities -------------------------------------------------------------------------------
    @property
    def pixel_um(self) -> float:
        """Pixel size in object space, µm."""
        if self.pixel_size_um is not None:
            return self.pixel_size_um
        return self.camera_pixel_um / self.magnification

    @property
    def weights(self) -> np.ndarray:
        """Wavelength weights normalised to sum 1, shape (L,)."""
        w = np.asarray(self.wavelength_weights, dtype=float)
        return w / w.sum()

    @property
    def reference_wavelength_um(self) -> float:
        return self.aberrations.reference_wavelength_um

    @property
    def airy_radius_um(self) -> float:
        """First zero of the Airy pattern at the shortest wavelength, ``0.61 λ / NA``, µm."""
        return 0.6098 * min(self.wavelengths_um) / self.na

    @property
    def nyquist_pixel_um(self) -> float:
        """Largest pixel that samples the incoherent PSF without aliasing, ``λ_min / (4 NA)``, µm."""
        return min(self.wavelengths_um) / (4.0 * self.na)

    def zernike_um(self, hx, hy, modes=None) -> np.ndarray:
        """Zernike coefficients (µm RMS of optical path difference) at field points; see FieldModel.coefficients."""
        return self.aberrations.to_um(self.aberrations.coefficients(hx, hy, modes))

    def zernike_waves(self, hx, hy, modes=None) -> np.ndarray:
        """Zernike coefficients in waves RMS at the reference wavelength, at field points, shape (..., J)."""
        return self.zernike_um(hx, hy, modes) / self.reference_wavelength_um

    # -- dictionaries and TOML ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Nested dictionary in the lens-file layout (what :meth:`to_toml` writes)."""
        optics = {
            "wavelength_um": self.wavelengths_um[0] if len(self.wavelengths_um) == 1 else list(self.wavelengths_um),
            "na": self.na,
            "immersion_index": self.immersion_index,
            "apodisation": self.apodisation,
        }
        if len(self.wavelengths_um) > 1 or self.wavelength_weights != (1.0,):
            optics["wavelength_weights"] = list(self.wavelength_weights)
        if self.apodisation_sigma is not None:
            optics["apodisation_sigma"] = self.apodisation_sigma
        sensor = {"shape": list(self.sensor_shape)}
        if self.pixel_size_um is not None:
            sensor["pixel_size_um"] = self.pixel_size_um
        else:
            sensor["camera_pixel_um"] = self.camera_pixel_um
            sensor["magnification"] = self.magnification
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "optics": optics,
            "sensor": sensor,
            "pupil": {"samples": self.pupil_samples},
            "aberrations": self.aberrations.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Lens:
        """Build a lens from the lens-file layout, rejecting unknown keys and wrong types with the key's name."""
        _reject_unknown(
            d, ("format", "format_version", "name", "description", "optics", "sensor", "pupil", "aberrations"), ""
        )
        if d.get("format", FORMAT_NAME) != FORMAT_NAME:
            raise LensFileError(f"'format': expected '{FORMAT_NAME}', got {d['format']!r}")
        version = d.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise LensFileError(f"'format_version': this optisim reads version {FORMAT_VERSION}, got {version!r}")
        for table in ("optics", "sensor"):
            if table not in d:
                raise LensFileError(f"table [{table}] is missing from the lens file")
        optics, sensor, pupil = d["optics"], d["sensor"], d.get("pupil", {})
        _reject_unknown(
            optics,
            ("wavelength_um", "wavelength_weights", "na", "immersion_index", "apodisation", "apodisation_sigma"),
            "optics.",
        )
        _reject_unknown(sensor, ("shape", "pixel_size_um", "camera_pixel_um", "magnification"), "sensor.")
        _reject_unknown(pupil, ("samples",), "pupil.")
        for key, table in (("wavelength_um", optics), ("na", optics), ("shape", sensor)):
            if key not in table:
                raise LensFileError(f"'{'optics' if table is optics else 'sensor'}.{key}' is missing")
        wl = optics["wavelength_um"]
        wl = [_number(w, "optics.wavelength_um") for w in (wl if isinstance(wl, list) else [wl])]
        weights = [_number(w, "optics.wavelength_weights") for w in optics.get("wavelength_weights", [])]
        shape = sensor["shape"]
        if not isinstance(shape, list) or len(shape) != 2:
            raise LensFileError(f"'sensor.shape': expected [ny, nx], got {shape!r}")

        def opt(table, key, where):
            return None if key not in table else _number(table[key], where + key)

        return cls(
            name=str(d.get("name", "unnamed")),
            description=str(d.get("description", "")),
            wavelengths_um=tuple(wl),
            wavelength_weights=tuple(weights),
            na=_number(optics["na"], "optics.na"),
            immersion_index=_number(optics.get("immersion_index", 1.0), "optics.immersion_index"),
            apodisation=str(optics.get("apodisation", "none")),
            apodisation_sigma=opt(optics, "apodisation_sigma", "optics."),
            sensor_shape=tuple(_integer(v, "sensor.shape") for v in shape),
            pixel_size_um=opt(sensor, "pixel_size_um", "sensor."),
            camera_pixel_um=opt(sensor, "camera_pixel_um", "sensor."),
            magnification=opt(sensor, "magnification", "sensor."),
            pupil_samples=_integer(pupil.get("samples", 128), "pupil.samples"),
            aberrations=FieldModel.from_dict(d.get("aberrations", {})),
        )

    def to_toml(self) -> str:
        """Lens-file text: a commented header stating the conventions, then the tables."""
        import tomli_w

        header = (
            "# optisim lens file (format documented in data/FORMATS.md)\n"
            "# Lengths in µm; pixel size in object space; sensor shape (ny, nx) pixels.\n"
            "# Zernike coefficients are RMS-normalised (each mode has RMS 1 over the unit pupil),\n"
            f"# indexed in the '{self.aberrations.convention}' convention, in '{self.aberrations.unit}'.\n"
            "# Field coordinates (hx, hy): from the sensor centre, in units of half the longer sensor side.\n"
        )
        return header + tomli_w.dumps(self.to_dict(), multiline_strings=False)

    @classmethod
    def from_toml(cls, text: str, *, source: str = "lens file") -> Lens:
        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise LensFileError(f"{source}: not valid TOML: {err}") from None
        try:
            return cls.from_dict(d)
        except LensFileError as err:
            raise LensFileError(f"{source}: {err}") from None

    def save(self, path) -> Path:
        path = Path(path)
        path.write_text(self.to_toml(), encoding="utf-8")
        return path

    def replace(self, **changes) -> Lens:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def load_lens(path_or_preset) -> Lens:
    """Read a lens file, or a preset given as ``preset:NAME`` or a bare preset name."""
    text = str(path_or_preset)
    if text.startswith("preset:"):
        return load_preset(text.removeprefix("preset:"))
    path = Path(text)
    if not path.exists():
        if text in list_presets():
            return load_preset(text)
        raise FileNotFoundError(f"lens file not found: {path}")
    if path.is_dir():
        raise LensFileError(f"{path} is a directory, not a lens file")
    return Lens.from_toml(path.read_text(encoding="utf-8"), source=str(path))


def list_presets() -> list[str]:
    """Names of the built-in lens presets."""
    files = resources.files("optisim") / "presets"
    return sorted(p.name.removesuffix(".toml") for p in files.iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> Lens:
    """A built-in lens preset by name (see :func:`list_presets`)."""
    names = list_presets()
    if name not in names:
        raise ValueError(f"unknown lens preset {name!r}; available presets: {', '.join(names)}")
    text = (resources.files("optisim") / "presets" / f"{name}.toml").read_text(encoding="utf-8")
    return Lens.from_toml(text, source=f"preset {name!r}")


def wavefront_rms(coefficients, modes) -> np.ndarray:
    """RMS wavefront error of an RMS-normalised Zernike expansion, excluding piston and tilt.

    Parameters
    ----------
    coefficients : (..., J) array, any unit (the result has the same unit)
    modes : list of J (n, m)
    """
    keep = np.array([n >= 2 for n, _ in modes], dtype=bool)
    c = np.asarray(coefficients, dtype=float)
    return np.sqrt(np.sum(c[..., keep] ** 2, axis=-1)) if keep.any() else np.zeros(c.shape[:-1])
