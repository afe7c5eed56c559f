"""File-format readers for bead images: TIFF (plain, ImageJ, OME-TIFF) and HDF5, with their sampling metadata.

Each reader, ``_read_tiff`` and ``_read_hdf5``, is called by :func:`calibration.io.read_beads` as
``reader(path, dataset=..., channel=...)`` and returns ``(data, pixel_um, z_step_um, metadata)``: ``data`` is the
``(Z, Y, X)`` array in the file's own dtype (a 2D image has ``Z = 1``; axis order ``z, y, x`` with ``y`` the row
index), the channel already selected; ``pixel_um`` and ``z_step_um`` are object-space lengths in µm, or ``None``
where the file does not give them (a reader never invents a sampling); ``metadata`` says where each number came from
(``"pixel_um"``, ``"z_step_um"``) and holds ``"format"``, ``"axes"`` (the file's axes) and, where they apply,
``"channel"``, ``"dataset"``, ``"planes_axis"``, ``"series"``. An unreadable or truncated file, an ambiguous channel
or dataset, and more than one stack axis are ValueErrors that name the file.

Formats
-------
* TIFF (``.tif``, ``.tiff``, ``.ome.tif``) through :mod:`tifffile`, the first series of the file. Pixel size comes
  from, in this order: OME-XML ``PhysicalSizeX``/``PhysicalSizeZ`` with their units; ImageJ ``XResolution`` (pixels per
  ``unit``) and ``spacing``; the TIFF ``XResolution`` tag where ``ResolutionUnit`` is a length scale
  (``MICROMETER``, ``MILLIMETER``). Print resolutions (inch, cm) and the default 1 pixel per unit mean "unknown".
* HDF5 (``.h5``, ``.hdf5``) through :mod:`h5py`: a 2D or 3D dataset; attributes ``pixel_size_um``, ``z_step_um`` or
  ImageJ-style ``element_size_um`` ``(z, y, x)`` on the dataset or the file.
"""

from __future__ import annotations

import math
import re
import struct
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np
import tifffile

__all__: list[str] = []  # private to the package: calibration.io reads through these

_TOLERANCE = 0.01  # relative difference below which two pixel sizes are the same
_CHANNEL_AXES = "CS"  # tifffile axes: C channel, S sample (RGB)
_UM_PER_UNIT = {"µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
                "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "m": 1e6}  # fmt: skip
_IMAGEJ_PRINT_UNITS = ("cm", "inch", "in", "pixel", "pixels", "")


# ---- units and axes, shared by the readers ---------------------------------------------------------------------------


def _finite_positive(value) -> float | None:
    number = float(value)
    return number if math.isfinite(number) and number > 0 else None


def _decode_unit(unit) -> str:
    """ImageJ writes µm as the literal text ``\\u00B5m``; decode such escapes and map the Greek mu to the micro sign."""
    text = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m[1], 16)), str(unit))
    return text.strip().replace("\u03bc", "µ")


def _um_per_unit(unit) -> float | None:
    """µm per ``unit`` (``"nm"`` -> 1e-3); None for a unit that is not a length."""
    return _UM_PER_UNIT.get(_decode_unit(unit).lower())


def _to_zyx(path: Path, data: np.ndarray, axes: str, channel: int | None) -> tuple[np.ndarray, dict]:
    """Select the channel and return (Z, Y, X) with the planes along the file's one stack axis (Z, T, I, Q, ...)."""
    meta: dict = {"axes": axes}
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"{path}: the image has no Y and X axes (axes '{axes}', shape {data.shape})")
    channel_axes = [a for a in axes if a in _CHANNEL_AXES and data.shape[axes.index(a)] > 1]
    if len(channel_axes) > 1:
        raise ValueError(f"{path}: the image has both channels and RGB samples (axes '{axes}', shape {data.shape})")
    if channel_axes:
        i = axes.index(channel_axes[0])
        n = data.shape[i]
        what = "channels" if channel_axes[0] == "C" else "colour samples per pixel (RGB)"
        if channel is None:
            raise ValueError(f"{path}: the image has {n} {what} (axes '{axes}'); choose one with --channel")
        if channel >= n:
            raise ValueError(f"channel: {path} has {n} {what} (axes '{axes}'); expected 0 to {n - 1}, got {channel}")
        data, axes = np.take(data, channel, axis=i), axes[:i] + axes[i + 1 :]
        meta["channel"] = channel
    elif channel not in (None, 0):
        raise ValueError(f"channel: {path} has a single channel (axes '{axes}'); expected 0, got {channel}")
    keep = [i for i, a in enumerate(axes) if a in "YX" or data.shape[i] > 1]
    data, axes = data.reshape([data.shape[i] for i in keep]), "".join(axes[i] for i in keep)
    extra = [a for a in axes if a not in "YX"]
    if len(extra) > 1:
        raise ValueError(
            f"{path}: the image has {len(extra)} stack axes (axes '{meta['axes']}', shape {tuple(data.shape)} after "
            "selecting a channel); a bead image must be one 2D image or one z-stack"
        )
    order = [axes.index(a) for a in [*extra, "Y", "X"]]
    data = np.transpose(data, order)
    if extra:
        meta["planes_axis"] = extra[0]
    return (data if extra else data[np.newaxis]), meta


# ---- TIFF ------------------------------------------------------------------------------------------------------------


def _read_tiff(path: Path, *, dataset: str | None, channel: int | None):
    try:
        with tifffile.TiffFile(path) as tif:
            _check_complete(tif)
            series = tif.series[0]
            data, axes = series.asarray(), series.axes
            page = tif.pages.first
            info = {
                "ome": tif.ome_metadata if tif.is_ome else None,
                "imagej": tif.imagej_metadata if tif.is_imagej else None,
                "shaped": tif.shaped_metadata[0] if tif.is_shaped and tif.shaped_metadata else {},
                "xres": page.tags.valueof("XResolution"),
                "yres": page.tags.valueof("YResolution"),
                "resunit": page.tags.valueof("ResolutionUnit"),
                "n_series": len(tif.series),
            }
    except (tifffile.TiffFileError, ValueError, OSError, struct.error, KeyError, IndexError, TypeError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"{path}: not a readable image file ({reason})") from err
    data, meta = _to_zyx(path, data, axes, channel)
    meta["format"] = "OME-TIFF" if info["ome"] else "ImageJ TIFF" if info["imagej"] is not None else "TIFF"
    if info["n_series"] > 1:
        meta["series"] = f"the first of {info['n_series']}"
    pixel_um, z_step_um = _tiff_sampling(path, info, meta)
    return data, pixel_um, z_step_um, meta


def _check_complete(tif: tifffile.TiffFile) -> None:
    """Raise ValueError if the chain of pages ends early (a truncated or corrupt file).

    tifffile stops, with a log message only, at a page offset beyond the end of a truncated file; the pages before it
    then read as a shorter series. A complete file's last page points to offset 0.
    """
    n_pages = len(tif.pages)
    last = tif.pages[n_pages - 1]
    fmt, fh = tif.tiff, tif.filehandle
    fh.seek(last.offset)
    (n_tags,) = struct.unpack(fmt.tagnoformat, fh.read(fmt.tagnosize))
    fh.seek(last.offset + fmt.tagnosize + n_tags * fmt.tagsize)
    (next_offset,) = struct.unpack(fmt.offsetformat, fh.read(fmt.offsetsize))
    if next_offset != 0:
        raise ValueError(
            f"truncated or corrupt: page {n_pages} points to a next page at byte {next_offset}, "
            f"but the file has {fh.size} bytes"
        )


def _tiff_sampling(path: Path, info: dict, meta: dict) -> tuple[float | None, float | None]:
    """Pixel size and z-step from the first source that has each: OME-XML, ImageJ, then the resolution tags."""
    providers = ([_ome_sampling] if info["ome"] else []) + ([_imagej_sampling] if info["imagej"] is not None else [])
    found = {"pixel_um": (None, None), "z_step_um": (None, None)}
    for provider in [*providers, _tag_sampling]:
        for key, (value, note) in zip(("pixel_um", "z_step_um"), provider(path, info), strict=True):
            if found[key][0] is None and (value is not None or found[key][1] is None):
                found[key] = (value, note)
    meta["pixel_um"] = found["pixel_um"][1] or "none: the file has no pixel size"
    meta["z_step_um"] = found["z_step_um"][1] or "none: the file has no z-step"
    return found["pixel_um"][0], found["z_step_um"][0]


def _ome_sampling(path: Path, info: dict):
    try:
        root = ET.fromstring(info["ome"])
    except ET.ParseError as err:
        return (None, f"none: OME-XML not parsed ({err})"), (None, None)
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return (None, "none: OME-XML has no Pixels element"), (None, None)
    sizes = {}
    for axis in "XYZ":
        value, unit = pixels.get(f"PhysicalSize{axis}"), pixels.get(f"PhysicalSize{axis}Unit", "µm")
        if value is None:
            continue
        try:
            size = _finite_positive(float(value) * _um_per_unit(unit))
        except (TypeError, ValueError):  # not a number, or a unit that is not a length (None)
            warnings.warn(
                f"{path}: OME-XML PhysicalSize{axis} {value!r} {unit!r} is not a length; ignored", stacklevel=5
            )
            continue
        sizes[axis] = (size, f"OME-XML PhysicalSize{axis} ({unit})")
    x, y, z = (sizes.get(axis, (None, None)) for axis in "XYZ")
    pixel = _square_pixel(path, x[0], y[0], "OME-XML PhysicalSizeX/Y")
    return (pixel, x[1] if pixel else "none: no OME-XML PhysicalSizeX"), (z[0], z[1] or "none: no OME PhysicalSizeZ")


def _imagej_sampling(path: Path, info: dict):
    unit = _decode_unit(info["imagej"].get("unit", ""))
    factor = _um_per_unit(unit)
    if factor is None or unit.lower() in _IMAGEJ_PRINT_UNITS:
        reason = f"none: ImageJ unit '{unit}' is not a microscope length" if unit else "none: no ImageJ unit"
        return (None, reason), (None, reason)
    x, y = _per_unit_to_size(info["xres"], factor), _per_unit_to_size(info["yres"], factor)
    pixel = _square_pixel(path, x, y, "ImageJ XResolution/YResolution")
    pixel_note = f"ImageJ resolution tags (unit {unit})" if pixel else "none: ImageJ resolution is 1 pixel per unit"
    spacing = info["imagej"].get("spacing")
    z_step = _finite_positive(float(spacing) * factor) if spacing is not None else None
    return (pixel, pixel_note), (z_step, f"ImageJ spacing (unit {unit})" if z_step else "none: no ImageJ spacing")


def _tag_sampling(path: Path, info: dict):
    units = {int(u): u for u in tifffile.RESUNIT}
    unit = units.get(int(info["resunit"]) if info["resunit"] is not None else 1, tifffile.RESUNIT.NONE)
    factor = {tifffile.RESUNIT.MICROMETER: 1.0, tifffile.RESUNIT.MILLIMETER: 1e3}.get(unit)
    shaped_unit = info["shaped"].get("unit") if isinstance(info["shaped"], dict) else None
    if unit == tifffile.RESUNIT.CENTIMETER and shaped_unit is not None and _um_per_unit(shaped_unit) == 1.0:
        factor = 1.0  # a writer that stores pixels per µm under a CENTIMETER tag, and says so in its metadata
    if factor is None:
        note = f"none: ResolutionUnit {unit.name} is not a microscope length (no unit, or a print resolution)"
        return (None, note), (None, None)
    x, y = _per_unit_to_size(info["xres"], factor), _per_unit_to_size(info["yres"], factor)
    pixel = _square_pixel(path, x, y, "TIFF XResolution/YResolution")
    note = f"TIFF XResolution (ResolutionUnit {unit.name})" if pixel else "none: resolution is 1 pixel per unit"
    return (pixel, note), (None, None)


def _per_unit_to_size(resolution, um_per_unit: float) -> float | None:
    """A TIFF rational resolution (pixels per unit) -> pixel size in µm; None for missing, zero or 1 per unit."""
    if resolution is None:
        return None
    numerator, denominator = resolution if isinstance(resolution, tuple) else (resolution, 1)
    if numerator <= 0 or denominator <= 0 or numerator == denominator:
        return None
    return _finite_positive(denominator / numerator * um_per_unit)


def _square_pixel(path: Path, x: float | None, y: float | None, source: str) -> float | None:
    if x is not None and y is not None and abs(x - y) > _TOLERANCE * x:
        warnings.warn(f"{path}: pixels are not square ({source}: x {x:g} µm, y {y:g} µm); using x", stacklevel=5)
    return x


# ---- HDF5 ------------------------------------------------------------------------------------------------------------


def _read_hdf5(path: Path, *, dataset: str | None, channel: int | None):
    try:
        with h5py.File(path, "r") as h5:
            found: dict[str, tuple[int, ...]] = {}
            h5.visititems(lambda name, obj: found.update({name: obj.shape}) if isinstance(obj, h5py.Dataset) else None)
            name = _choose_dataset(path, dataset, found)
            ds = h5[name]
            data = ds[()]
            attrs = [(f"dataset '{ds.name}'", dict(ds.attrs)), ("the file root", dict(h5.attrs))]
    except OSError as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"{path}: not a readable image file ({reason})") from err
    if channel not in (None, 0):
        raise ValueError(f"channel: {path} dataset '{name}' has a single channel; expected 0, got {channel}")
    meta = {"format": "HDF5", "dataset": name, "axes": "ZYX" if data.ndim == 3 else "YX"}
    pixel_um, z_step_um = _hdf5_sampling(path, attrs, data.ndim, meta)
    return (data if data.ndim == 3 else data[np.newaxis]), pixel_um, z_step_um, meta


def _choose_dataset(path: Path, dataset: str | None, found: dict[str, tuple[int, ...]]) -> str:
    """The dataset to read: ``dataset`` if given (checked), else the only one with 2 or 3 dimensions."""
    listed = ", ".join(f"'{name}' {shape}" for name, shape in found.items()) or "none"
    if dataset is not None:
        shape = found.get(dataset.strip("/"))
        if shape is None:
            raise ValueError(f"dataset: {path} has no dataset '{dataset}' (datasets: {listed})")
        if len(shape) not in (2, 3):
            raise ValueError(
                f"dataset: '{dataset}' in {path} has shape {shape}; expected a 2D image (Y, X) or a z-stack (Z, Y, X)"
            )
        return dataset.strip("/")
    images = [name for name, shape in found.items() if len(shape) in (2, 3)]
    if len(images) > 1:
        shown = ", ".join(f"'{name}' {found[name]}" for name in images)
        raise ValueError(f"{path}: {len(images)} image datasets in the file ({shown}); choose one with --dataset")
    if not images:
        raise ValueError(f"{path}: no 2D or 3D image dataset in the file (datasets: {listed})")
    return images[0]


def _hdf5_sampling(path: Path, attrs: list, ndim: int, meta: dict) -> tuple[float | None, float | None]:
    """Pixel size and z-step from ``pixel_size_um`` and ``z_step_um``, else ImageJ-style ``element_size_um``
    ``(z, y, x)``; each looked up on the dataset, then on the file."""
    found = {}
    for key, name in (("pixel_um", "pixel_size_um"), ("z_step_um", "z_step_um"), ("element", "element_size_um")):
        where, value = next(((where, values[name]) for where, values in attrs if name in values), (None, None))
        if where is None:
            continue
        note = f"HDF5 attribute '{name}' of {where}"
        expected = {"element": (ndim, 3) if ndim == 2 else (3,)}.get(key, (1,))
        counts = " or ".join(map(str, expected)) + (" lengths" if expected[-1] > 1 else " length")
        try:
            sizes = np.asarray(value, dtype=float).ravel()
        except (TypeError, ValueError):
            sizes = np.array([])  # text or another non-number: reported below
        if sizes.size not in expected:
            raise ValueError(f"{path}: {note}: expected {counts} in µm, got {value!r}")
        if key != "element":
            found[key] = (_finite_positive(sizes[0]), note)
            continue
        found.setdefault("pixel_um", (_square_pixel(path, _finite_positive(sizes[-1]), sizes[-2], note), note))
        if ndim == 3:
            found.setdefault("z_step_um", (_finite_positive(sizes[0]), note))
    pixel, meta["pixel_um"] = found.get("pixel_um", (None, "none: no pixel_size_um or element_size_um attribute"))
    z_step, meta["z_step_um"] = found.get("z_step_um", (None, "none: no z_step_um or element_size_um attribute"))
    return pixel, z_step
