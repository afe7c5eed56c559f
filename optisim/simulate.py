"""Simulate a lens's blur (and camera noise) on one full-sensor image: what ``optisim simulate`` runs.

The sharp image is treated as the scene imaged onto the whole sensor: pixel ``(i, j)`` of the image is sensor pixel
``(i, j)``. An image larger than the sensor is centre-cropped to it (``fit='crop'``, the default, no resampling)
or resized to it with anti-aliasing (``fit='resize'``, scikit-image); an image smaller than the sensor is an error.
Intensities are scaled linearly so that the image's maximum is 1 (``normalize=True``), the unit of the noise
model's ``photons`` (:mod:`optisim.noise`). The border follows :mod:`optisim.blur`: the scene is dark outside the
sensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from optisim.lens import Lens
from optisim.lowrank import DEFAULT_GRID, DEFAULT_TOL, EigenPSFs, blur_operator
from optisim.noise import CameraNoise, apply_noise

__all__ = ["Simulation", "fit_to_sensor", "simulate_image"]

FITS = ("crop", "resize")


@dataclass(frozen=True)
class Simulation:
    """Result of :func:`simulate_image`. ``sharp``/``blurred``: (ny, nx) float32; ``message``: what was done to fit."""

    sharp: np.ndarray
    blurred: np.ndarray
    message: str
    rank: int | None


def fit_to_sensor(image: np.ndarray, sensor_shape, *, fit: str = "crop") -> tuple[np.ndarray, str]:
    """Bring a (H, W) image to the sensor's shape; returns the image and a sentence saying what was done."""
    if fit not in FITS:
        raise ValueError(f"fit: expected one of {FITS}, got {fit!r}")
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image: expected a 2-D (y, x) image, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise ValueError("image: contains NaN or Inf values")
    (h, w), (ny, nx) = image.shape, tuple(sensor_shape)
    if h < ny or w < nx:
        raise ValueError(
            f"image: {h}x{w} pixels is smaller than the lens's {ny}x{nx} sensor; use a larger image or a lens "
            f"file with a smaller sensor_shape"
        )
    if (h, w) == (ny, nx):
        return image.astype(np.float32), f"image {h}x{w} matches the sensor"
    if fit == "crop":
        y0, x0 = (h - ny) // 2, (w - nx) // 2
        return image[y0 : y0 + ny, x0 : x0 + nx].astype(np.float32), (
            f"image {h}x{w} centre-cropped to the sensor's {ny}x{nx} pixels (rows {y0}..{y0 + ny - 1}, "
            f"columns {x0}..{x0 + nx - 1})"
        )
    from skimage.transform import resize

    out = resize(image.astype(np.float64), (ny, nx), order=1, anti_aliasing=True, preserve_range=True)
    return out.astype(np.float32), f"image {h}x{w} resized to the sensor's {ny}x{nx} pixels (aspect ratio not kept)"


def simulate_image(
    lens: Lens,
    image,
    *,
    method: str = "lowrank",
    noise: CameraNoise | None = None,
    seed: int = 0,
    fit: str = "crop",
    normalize: bool = True,
    kernel_size: int | None = None,
    grid=DEFAULT_GRID,
    rank: int | None = None,
    tol: float = DEFAULT_TOL,
    model: EigenPSFs | None = None,
    device=None,
) -> Simulation:
    """Blur a sharp image with the lens's spatially varying PSF over the whole sensor, then add camera noise.

    Parameters
    ----------
    lens : Lens
    image : (H, W) array, the sharp scene in linear intensity units
    method : {'lowrank', 'exact'}, see :mod:`optisim.blur`; noise : CameraNoise or None (no noise)
    seed : int, seeds the noise (a torch generator); fit : {'crop', 'resize'}; normalize : scale the maximum to 1
    kernel_size, grid, rank, tol : the PSF window and low-rank model (:func:`optisim.lowrank.blur_operator`)
    model : EigenPSFs or None, a low-rank PSF model to blur with instead of the lens's PSFs (e.g. an empirical one,
        :func:`optisim.psfmodel.read_psf_model`; ``lens`` is then its nominal lens and gives the sensor). Only
        ``method='lowrank'``; ``kernel_size``, ``grid``, ``rank`` and ``tol`` are not used.
    device : torch device

    Returns
    -------
    Simulation with ``sharp`` (the fitted, normalised scene) and ``blurred`` (ny, nx) float32 arrays.
    """
    sharp, message = fit_to_sensor(image, lens.sensor_shape, fit=fit)
    if sharp.min() < 0:
        raise ValueError(f"image: expected non-negative intensities, got a minimum of {sharp.min():.4g}")
    if normalize:
        peak = float(sharp.max())
        if peak <= 0:
            raise ValueError("image: all pixels are zero; there is nothing to blur")
        sharp = sharp / peak
    if model is None:
        op = blur_operator(lens, method=method, kernel_size=kernel_size, grid=grid, rank=rank, tol=tol, device=device)
    elif method != "lowrank":
        raise ValueError(f"method: a PSF model is a low-rank model, so method must be 'lowrank', got {method!r}")
    elif tuple(model.sensor_shape) != tuple(lens.sensor_shape):
        raise ValueError(f"model: built for a {model.sensor_shape} sensor, the lens has {lens.sensor_shape}")
    else:
        op = model.operator(device=device)
    x = torch.as_tensor(sharp, device=device)
    with torch.no_grad():
        y = op(x).clamp_(min=0.0)
        if noise is not None:
            gen = torch.Generator(device=x.device).manual_seed(int(seed))
            y = apply_noise(y, noise, generator=gen)
    rank_used = getattr(op, "rank", None)
    return Simulation(sharp.astype(np.float32), y.float().cpu().numpy(), message, rank_used)
