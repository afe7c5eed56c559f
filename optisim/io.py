"""Image files: float32 TIFF with the pixel size in its metadata (ImageJ-compatible), read back by tifffile.

TIFF layout written by optisim (documented in ``data/FORMATS.md``): one float32 page per 2-D image, axes
``(y, x)``; ImageJ metadata ``unit = 'um'``; the X/Y resolution tags hold ``1 / pixel_size_um`` pixels per µm
(so ImageJ and Fiji show calibrated µm); ImageJ ``Info`` holds a JSON object with optisim's metadata
(``pixel_size_um``, the lens file text and whatever the command adds, e.g. the field position of a PSF).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["read_tiff_metadata", "write_tiff"]


def write_tiff(path, image, *, pixel_um: float, metadata: dict | None = None) -> Path:
    """Write a 2-D image as float32 TIFF with its pixel size (µm) and optisim metadata.

    Parameters
    ----------
    path : output path (.tif / .tiff)
    image : (y, x) array
    pixel_um : float, pixel size in µm
    metadata : JSON-serialisable dict stored in the ImageJ Info field
    """
    import tifffile

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"image: expected a 2-D (y, x) array, got shape {image.shape}")
    if not pixel_um > 0:
        raise ValueError(f"pixel_um: expected a positive pixel size in µm, got {pixel_um}")
    info = json.dumps({"pixel_size_um": pixel_um, **(metadata or {})})
    path = Path(path)
    tifffile.imwrite(
        path,
        image,
        imagej=True,
        resolution=(1.0 / pixel_um, 1.0 / pixel_um),
        metadata={"unit": "um", "axes": "YX", "Info": info},
    )
    return path


def read_tiff_metadata(path) -> dict:
    """optisim metadata (the JSON in ImageJ Info) of a TIFF written by :func:`write_tiff`; {} if none."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        info = (tif.imagej_metadata or {}).get("Info")
    try:
        meta = json.loads(info) if info else {}
    except ValueError:  # free-text Info, e.g. written by Fiji: not optisim metadata
        return {}
    return meta if isinstance(meta, dict) else {}
