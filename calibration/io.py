"""Read bead images (sub-resolution fluorescent beads) with their sampling metadata.

A bead image is returned as a :class:`BeadStack`: ``data`` is ``(Z, Y, X)`` float32 with the intensities as stored
in the file (a 2D image has ``Z = 1``), axis order ``z, y, x`` with ``y`` the row index. Pixel size and z-step are
object-space lengths in µm, read from the file's metadata where it has any, and ``None`` where it has none: this
module never invents a sampling. :func:`resolve_sampling` combines them with command-line options (the option wins),
and :func:`read_bead_files` reads several images of one instrument and checks that they agree.

The files are TIFF (``.tif``, ``.tiff``, ``.ome.tif``) or HDF5 (``.h5``, ``.hdf5``); the readers, and which metadata
each format's pixel size and z-step come from, are in :mod:`calibration.formats`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from os import PathLike
from pathlib import Path

import numpy as np

from calibration.formats import _TOLERANCE, _finite_positive, _read_hdf5, _read_tiff

__all__ = ["BeadStack", "read_bead_files", "read_beads", "resolve_sampling"]

TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5")
MIN_IMAGE_SIZE = 16  # pixels along y and x: smaller images cannot hold a bead and its background


@dataclass(frozen=True)
class BeadStack:
    """One bead image or z-stack as read from a file.

    Attributes
    ----------
    data : (Z, Y, X) ndarray, float32
        Intensities as stored in the file (no scaling). A 2D image has ``Z = 1``.
    path : Path
        The file it was read from.
    pixel_um : float or None
        Object-space pixel size in µm from the file's metadata; ``None`` if the file has none.
    z_step_um : float or None
        Spacing of the planes in µm from the file's metadata; ``None`` if absent, and always ``None`` when ``Z = 1``.
    saturation : float or None
        Largest value the stored integer dtype can hold (``np.iinfo(dtype).max``: 255, 65535, ...); ``None`` for
        float images.
    metadata : dict
        Where each number came from (``"pixel_um"``, ``"z_step_um"``), and ``"format"``, ``"dtype"``,
        ``"shape"`` (the ``[Z, Y, X]`` of ``data``), ``"axes"`` (the file's axes), ``"channel"``, ``"dataset"``.
    """

    data: np.ndarray
    path: Path
    pixel_um: float | None
    z_step_um: float | None
    saturation: float | None
    metadata: dict = field(default_factory=dict)

    @property
    def is_stack(self) -> bool:
        """True for a z-stack (``Z > 1``)."""
        return self.data.shape[0] > 1

    @property
    def shape(self) -> tuple[int, int]:
        """The image size ``(Y, X)`` in pixels."""
        return (int(self.data.shape[1]), int(self.data.shape[2]))


def read_beads(path: str | PathLike, *, dataset: str | None = None, channel: int | None = None) -> BeadStack:
    """Read one bead image or z-stack with its pixel size and z-step.

    Parameters
    ----------
    path : str or PathLike
        A TIFF (``.tif``, ``.tiff``, ``.ome.tif``) or HDF5 (``.h5``, ``.hdf5``) file.
    dataset : str, optional
        HDF5 only (ignored for TIFF): the dataset to read. By default, the file's only 2D or 3D dataset.
    channel : int, optional
        The channel (or RGB sample) to read from a multi-channel image; required when there are several.
        ``0`` is accepted for a single-channel image.

    Returns
    -------
    BeadStack
        ``data`` (Z, Y, X) float32; ``pixel_um``/``z_step_um`` in µm or ``None`` where the file does not say.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        For an unsupported file type, an unreadable or truncated file, an ambiguous channel or dataset, and an image
        that cannot hold beads (fewer than 2 dimensions, smaller than 16x16, constant, NaN or inf).

    Examples
    --------
    >>> stack = read_beads("Bead_Image1_crop.tif")  # an ImageJ z-stack  # doctest: +SKIP
    >>> stack.data.shape, round(stack.pixel_um, 5), stack.z_step_um, stack.saturation  # doctest: +SKIP
    ((41, 150, 150), 0.02249, 0.125, 255.0)
    >>> stack.metadata["pixel_um"]  # doctest: +SKIP
    'ImageJ resolution tags (unit µm)'
    """
    path = Path(path)
    if channel is not None:
        channel = _check_channel(channel)
    name = path.name.lower()
    if name.endswith(TIFF_SUFFIXES):
        reader = _read_tiff
    elif name.endswith(HDF5_SUFFIXES):
        reader = _read_hdf5
    else:
        raise ValueError(
            f"{path}: unsupported file type '{path.suffix}'; bead images are read from TIFF (.tif, .tiff, .ome.tif) "
            "or HDF5 (.h5, .hdf5)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    raw, pixel_um, z_step_um, meta = reader(path, dataset=dataset, channel=channel)
    data = _validate_image(path, raw)
    saturation = float(np.iinfo(raw.dtype).max) if raw.dtype.kind in "iu" else None
    if data.shape[0] == 1 and z_step_um is not None:
        z_step_um = None
        meta["z_step_um"] = "not used: a single plane"
    meta.update(dtype=str(raw.dtype), shape=list(data.shape))
    return BeadStack(data, path, pixel_um, z_step_um, saturation, meta)


def resolve_sampling(
    stack: BeadStack, *, pixel_um: float | None = None, z_step_um: float | None = None
) -> tuple[float | None, float | None]:
    """The pixel size and z-step to use for ``stack``: the options where given, else the file's values.

    Parameters
    ----------
    stack : BeadStack
        An image read by :func:`read_beads`.
    pixel_um : float, optional
        Pixel size in µm (``--pixel-size``); overrides the file's, with a warning if they differ by more than 1 %.
    z_step_um : float, optional
        z-step in µm (``--z-step``); overrides the file's likewise. Unused for a 2D image.

    Returns
    -------
    pixel_um : float or None
        µm; ``None`` if neither the option nor the file gives one (the caller decides whether it is required).
    z_step_um : float or None
        µm; ``None`` for a 2D image.

    Raises
    ------
    ValueError
        If an option is not a positive finite number, or a z-stack has no z-step from either source.
    """
    pixel_opt = _check_option(pixel_um, "--pixel-size")
    z_opt = _check_option(z_step_um, "--z-step")
    pixel = _prefer_option(pixel_opt, stack.pixel_um, "--pixel-size", stack.metadata.get("pixel_um", "file"))
    if not stack.is_stack:
        return pixel, None
    z_step = _prefer_option(z_opt, stack.z_step_um, "--z-step", stack.metadata.get("z_step_um", "file"))
    if z_step is None:
        raise ValueError(
            f"{stack.path}: a z-stack of {stack.data.shape[0]} planes needs its z-step; pass --z-step (µm)"
        )
    return pixel, z_step


def read_bead_files(
    paths: str | PathLike | Iterable[str | PathLike],
    *,
    dataset: str | None = None,
    channel: int | None = None,
    pixel_um: float | None = None,
    z_step_um: float | None = None,
) -> list[BeadStack]:
    """Read several bead images of one instrument, with their sampling resolved and checked for agreement.

    Parameters
    ----------
    paths : path or iterable of paths
        Files, or folders that expand to their sorted ``*.tif``, ``*.tiff``, ``*.h5``, ``*.hdf5`` files.
    dataset, channel
        As in :func:`read_beads`, for every file.
    pixel_um, z_step_um : float, optional
        µm; as in :func:`resolve_sampling`, for every file.

    Returns
    -------
    list of BeadStack
        In the order of ``paths``, with ``pixel_um`` and ``z_step_um`` replaced by the resolved values (and
        ``metadata`` saying so where an option was used).

    Raises
    ------
    ValueError
        If no file is found, or the images do not share one pixel size (within 1 %), one ``(Y, X)`` shape and one kind
        (all 2D or all z-stacks); and for any error of :func:`read_beads` or :func:`resolve_sampling`.
    """
    stacks = []
    for path in _expand_paths(paths):
        stack = read_beads(path, dataset=dataset, channel=channel)
        pixel, z_step = resolve_sampling(stack, pixel_um=pixel_um, z_step_um=z_step_um)
        meta = dict(stack.metadata)
        if pixel_um is not None:
            meta["pixel_um"] = f"--pixel-size option (the file: {meta.get('pixel_um')})"
        if z_step_um is not None and stack.is_stack:
            meta["z_step_um"] = f"--z-step option (the file: {meta.get('z_step_um')})"
        stacks.append(replace(stack, pixel_um=pixel, z_step_um=z_step, metadata=meta))
    _check_agreement(stacks)
    return stacks


# ---- checks shared by the readers ------------------------------------------------------------------------------------


def _check_channel(channel) -> int:
    if isinstance(channel, bool) or not isinstance(channel, int | np.integer):
        raise TypeError(f"channel: expected an int, got {type(channel).__name__} {channel!r}")
    if channel < 0:
        raise ValueError(f"channel: expected an index >= 0, got {channel}")
    return int(channel)


def _check_option(value, name: str) -> float | None:
    if value is None:
        return None
    try:
        number = _finite_positive(value)
    except (TypeError, ValueError):
        number = None
    if number is None:
        raise ValueError(f"{name}: expected a positive finite length in µm, got {value!r}")
    return number


def _prefer_option(option: float | None, from_file: float | None, name: str, source: str) -> float | None:
    if option is None:
        return from_file
    if from_file is not None and abs(option - from_file) > _TOLERANCE * from_file:
        warnings.warn(
            f"{name} {option:g} µm overrides the file's {from_file:g} µm ({source})", UserWarning, stacklevel=3
        )
    return option


def _validate_image(path: Path, raw: np.ndarray) -> np.ndarray:
    """``raw`` (Z, Y, X) of any real dtype -> (Z, Y, X) float32, or ValueError saying why it holds no beads."""
    if raw.dtype.kind not in "iuf":
        raise ValueError(f"{path}: unsupported pixel type {raw.dtype}; expected integer or float intensities")
    if 0 in raw.shape:
        raise ValueError(f"{path}: the image is empty (shape {tuple(raw.shape)})")
    if min(raw.shape[1:]) < MIN_IMAGE_SIZE:
        raise ValueError(
            f"{path}: the image is {raw.shape[1]}x{raw.shape[2]} pixels (Y x X); bead images must be at least "
            f"{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}"
        )
    data = np.ascontiguousarray(raw, dtype=np.float32)
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise ValueError(f"{path}: {bad} pixels are NaN or inf (as float32); bead images must be finite")
    low, high = float(data.min()), float(data.max())
    if low == high:
        raise ValueError(f"{path}: the image is constant (every pixel is {low}): no beads can be found")
    return data


# ---- several files ---------------------------------------------------------------------------------------------------


def _expand_paths(paths) -> list[Path]:
    if isinstance(paths, str | PathLike):
        paths = [paths]
    files = []
    for item in map(Path, paths):
        if item.is_dir():
            found = sorted(
                p for p in item.iterdir() if p.is_file() and p.name.lower().endswith(TIFF_SUFFIXES + HDF5_SUFFIXES)
            )
            if not found:
                raise ValueError(
                    f"{item}: no bead images in this folder (expected *.tif, *.tiff, *.h5 or *.hdf5 files)"
                )
            files += found
        else:
            files.append(item)
    if not files:
        raise ValueError("paths: expected at least one bead image file or folder, got none")
    return files


def _check_agreement(stacks: list[BeadStack]) -> None:
    first = stacks[0]
    for other in stacks[1:]:
        if other.is_stack != first.is_stack:
            kinds = [f"{s.path} is {'a z-stack' if s.is_stack else 'a 2D image'}" for s in (first, other)]
            raise ValueError(f"{kinds[0]} but {kinds[1]}; read 2D images and z-stacks separately")
        if other.shape != first.shape:
            raise ValueError(
                f"{first.path} is {first.shape} (Y, X) pixels but {other.path} is {other.shape}; "
                "bead images of one instrument share one sensor size"
            )
        a, b = first.pixel_um, other.pixel_um
        if (a is None) != (b is None) or (a is not None and abs(a - b) > _TOLERANCE * a):
            show = [
                f"{s.path} has {'no pixel size' if s.pixel_um is None else f'{s.pixel_um:g} µm pixels'}"
                for s in (first, other)
            ]
            raise ValueError(f"pixel sizes differ: {show[0]}, {show[1]}; pass --pixel-size (µm) if they are the same")
