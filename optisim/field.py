"""Sensor and field coordinates: the one place where their convention is defined.

Conventions
-----------
* Images and sensors are indexed ``(y, x)`` = ``(row, column)``; +y is the row index increasing (downward when
  an image is displayed with its first row on top), +x the column index increasing.
* Normalised field coordinates ``(hx, hy)`` are measured from the sensor centre in units of
  ``R = max(ny, nx) / 2`` pixels, the half-width of the sensor's longer side. Pixel ``(row, col)`` has its centre at
  ``hx = (col - (nx - 1) / 2) / R`` and ``hy = (row - (ny - 1) / 2) / R``. On a square sensor the outer pixel edges
  are at ``±1`` and the corners at ``|h| = sqrt(2)``; using one scale for both axes keeps a rotationally symmetric
  lens rotationally symmetric on a rectangular sensor. The field radius is ``h = sqrt(hx² + hy²)`` and the field
  azimuth ``φ = atan2(hy, hx)``.
* The pupil's x and y axes are parallel to the sensor's, so "oriented with the field azimuth" (astigmatism, coma)
  means oriented along ``φ`` in the same frame.
* Physical sensor positions are in object space: ``x_um = hx * R * pixel_size_um``.

The learning layer uses these same coordinates for CoordGate, so a crop or tile at an offset knows where it sits.
"""

from __future__ import annotations

import numpy as np

__all__ = ["field_grid", "field_scale", "field_to_pixel", "pixel_to_field", "sensor_field_coordinates"]


def _check_shape(sensor_shape) -> tuple[int, int]:
    try:
        ny, nx = (int(v) for v in sensor_shape)
    except (TypeError, ValueError):
        raise ValueError(f"sensor_shape: expected (ny, nx) pixels, got {sensor_shape!r}") from None
    if ny < 1 or nx < 1:
        raise ValueError(f"sensor_shape: expected positive (ny, nx) pixels, got ({ny}, {nx})")
    return ny, nx


def field_scale(sensor_shape) -> float:
    """``R``, the number of pixels that make one normalised field unit: half the longer sensor side."""
    ny, nx = _check_shape(sensor_shape)
    return max(ny, nx) / 2.0


def pixel_to_field(row, col, sensor_shape):
    """Pixel centre ``(row, col)`` (may be fractional) to normalised field ``(hx, hy)``.

    Returns
    -------
    hx, hy : arrays of float, broadcast shape of ``row`` and ``col``
    """
    ny, nx = _check_shape(sensor_shape)
    r = field_scale(sensor_shape)
    row, col = np.broadcast_arrays(np.asarray(row, dtype=float), np.asarray(col, dtype=float))
    return (col - (nx - 1) / 2.0) / r, (row - (ny - 1) / 2.0) / r


def field_to_pixel(hx, hy, sensor_shape):
    """Normalised field ``(hx, hy)`` to fractional pixel ``(row, col)`` (inverse of :func:`pixel_to_field`)."""
    ny, nx = _check_shape(sensor_shape)
    r = field_scale(sensor_shape)
    hx, hy = np.broadcast_arrays(np.asarray(hx, dtype=float), np.asarray(hy, dtype=float))
    return hy * r + (ny - 1) / 2.0, hx * r + (nx - 1) / 2.0


def field_grid(sensor_shape, grid_shape) -> tuple[np.ndarray, np.ndarray]:
    """Field positions of a PSF grid that spans the sensor's outermost pixel centres.

    Parameters
    ----------
    sensor_shape : (ny, nx) ints, pixels
    grid_shape : (gy, gx) ints, number of field points along y and x (each >= 1)

    Returns
    -------
    hy : (gy,) float array, normalised field y of each grid row (0 where ``gy == 1``)
    hx : (gx,) float array, normalised field x of each grid column
    """
    ny, nx = _check_shape(sensor_shape)
    try:
        gy, gx = (int(v) for v in grid_shape)
    except (TypeError, ValueError):
        raise ValueError(f"grid: expected (gy, gx) field points, got {grid_shape!r}") from None
    if gy < 1 or gx < 1:
        raise ValueError(f"grid: expected at least 1x1 field points, got {gy}x{gx}")
    hx_edge, hy_edge = pixel_to_field(ny - 1, nx - 1, (ny, nx))
    hy = np.linspace(-hy_edge, hy_edge, gy) if gy > 1 else np.zeros(1)
    hx = np.linspace(-hx_edge, hx_edge, gx) if gx > 1 else np.zeros(1)
    return hy, hx


def sensor_field_coordinates(sensor_shape, offset=(0, 0), size=None) -> np.ndarray:
    """Field coordinates of every pixel of a crop of the sensor.

    Parameters
    ----------
    sensor_shape : (ny, nx) ints, pixels
    offset : (y0, x0) ints, pixel offset of the crop's first row and column on the sensor
    size : (h, w) ints or None, crop size in pixels (the whole sensor from ``offset`` if None)

    Returns
    -------
    (2, h, w) float array: ``[hy, hx]`` of each pixel centre.
    """
    ny, nx = _check_shape(sensor_shape)
    try:
        y0, x0 = (int(v) for v in offset)
    except (TypeError, ValueError):
        raise ValueError(f"offset: expected (y0, x0) pixels, got {offset!r}") from None
    try:
        h, w = (ny - y0, nx - x0) if size is None else (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size: expected (h, w) pixels, got {size!r}") from None
    if y0 < 0 or x0 < 0 or h < 1 or w < 1 or y0 + h > ny or x0 + w > nx:
        raise ValueError(f"crop: offset ({y0}, {x0}) and size ({h}, {w}) do not fit in a sensor of shape ({ny}, {nx})")
    rows, cols = np.meshgrid(np.arange(y0, y0 + h), np.arange(x0, x0 + w), indexing="ij")
    hx, hy = pixel_to_field(rows, cols, (ny, nx))
    return np.stack([hy, hx])
