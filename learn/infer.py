"""Deblurring images with a trained network or a classical spatially varying method: full frames or overlapping
tiles, files in and float32 TIFFs out.

Methods
-------
``network`` runs a trained checkpoint (:func:`deblur_image`). ``rl``, ``rl-tv`` and ``wiener`` deconvolve with a
low-rank PSF model, from a lens (:meth:`optisim.lowrank.EigenPSFs.from_lens`) or a calibration's ``psf_model.nc``
(:mod:`learn.classical`, :func:`learn.baselines.deconvolve`): Richardson-Lucy, RL with total variation, and the
Tikhonov (Wiener) least-squares solution, each with the field-dependent PSF of every pixel. The same tiling,
normalisation, geometry checks and output files serve both.

Coordinates
-----------
A network is trained for one lens, whose sensor ``(ny, nx)`` defines the field coordinates that CoordGate sees
(:mod:`optisim.field`, :mod:`learn.coordgate`). An image is a region of that sensor: ``offset = (y0, x0)`` is the
sensor row and column of its first pixel, ``(0, 0)`` for a full frame. Every tile is passed to the network with its
true sensor offset, ``offset + (tile row, tile column)``, so a tile knows where it lies on the sensor.
:func:`check_geometry` refuses an image that is larger than the sensor or does not fit at its offset (the
coordinates would be meaningless) and warns when an image smaller than the sensor comes without an offset.

Tiles
-----
Tiles of ``tile`` x ``tile`` pixels overlap by at least ``overlap`` pixels. Their starts are multiples of
``2^(depth-1)`` (the U-Net's pooling factor), so each tile's pooling grid is that of the full frame; the tiles of the
last row and column are shifted inward to end at the image border (and may be up to ``2^(depth-1) - 1`` pixels
longer), so no padding is needed. An image smaller than a tile along an axis is one tile along that axis. Each
tile's output is weighted by a separable window that rises as a raised cosine, ``sin²(π (i + 1/2) / (2 overlap))``,
over the ``overlap`` pixels next to a neighbouring tile (and is 1 elsewhere, including at the image border); the
weighted outputs are summed and divided by the summed weights. Two neighbouring windows add up to 1 over their
common ramp, so the blend has no seams once ``overlap / 2`` exceeds the distance over which a tile's border
changes the network's output (its receptive field); ``overlap = 0`` butts the tiles together without blending.
A classical method deconvolves each tile together with a halo of observed pixels around it (:mod:`learn.classical`).

Intensity
---------
The network works on normalised intensity (1 = the nominal peak of its training scenes). :func:`deblur_files` maps a
camera image to that scale with the per-plane percentile map of :class:`optisim.sources.ImageFolder`, the
``(0.1, 99.9)`` percentiles of the plane going to 0 and 1, ``v' = (v - p_lo) / (p_hi - p_lo)``, but without its
clipping to [0, 1] (so the map can be undone); the network's output is mapped back,
``v = v' (p_hi - p_lo) + p_lo``, so output files are in the input's units. ``normalize=False`` passes the values as
they are (for images already in normalised intensity, such as the output of ``optisim simulate``). The percentiles
are written to the output's metadata.

Output files
------------
One float32 TIFF per input plane (:func:`optisim.io.write_tiff`): ``NAME.tif``, or ``NAME_plane{k}.tif`` for a
multi-plane input. Their ImageJ ``Info`` JSON holds ``pixel_size_um`` (the input's, else the lens's),
``input_metadata`` (the input's optisim metadata, or ``{"description": ...}`` of a plain TIFF), ``source_image``,
``plane``, ``channel``, ``method``, ``offset``, ``tile``, ``overlap``, ``coverage`` (the coverage file or None),
``normalisation`` and ``units``; for ``network`` also ``checkpoint`` (path), ``checkpoint_name``, ``model`` (the model
configuration), ``epoch`` and ``lens`` (the checkpoint's lens file text); for a classical method ``lens_file`` or
``psf_model`` (the path it was given), ``lens`` (lens file text), ``psf_model_digest``, ``kernel_size``, ``rank``,
``iterations``, ``tv`` (rl-tv), ``balance`` (wiener), ``min_change`` (the RL stopping tolerance or None) and
``halo``. With a coverage (:mod:`optisim.coverage`) and ``confidence_map=True``, ``NAME_confidence.tif`` beside
each output holds the model's confidence in [0, 1] for its pixels.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from optisim.sources import DEFAULT_PERCENTILES, percentile_range

__all__ = [
    "METHODS",
    "PIXEL_TOLERANCE",
    "check_geometry",
    "deblur_files",
    "deblur_image",
    "read_image_metadata",
    "tile_spans",
]

METHODS = ("network", "rl", "rl-tv", "wiener")  # learn.baselines.PRODUCT_METHODS after the network

PIXEL_TOLERANCE = 0.05  # relative pixel-size difference between a file and the lens that triggers a warning


def _pair_of_ints(value, name: str, *, low: int = 0) -> tuple[int, int]:
    try:
        a, b = value
        pair = (int(a), int(b))
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected two integers (y0, x0), got {value!r}") from None
    if pair != (a, b) or min(pair) < low:
        raise ValueError(f"{name}: expected two integers >= {low} (y0, x0), got {value!r}")
    return pair


def check_geometry(lens, shape, offset, pixel_size_um=None, *, user="the network") -> tuple[int, int]:
    """Check that an image can be placed on the sensor of ``lens``; return the offset to use.

    Parameters
    ----------
    lens : :class:`optisim.lens.Lens`, the lens the network was trained for (its sensor defines the coordinates)
    shape : (H, W) ints, pixels of the image
    offset : (y0, x0) ints or None, sensor row and column of the image's first pixel; None when not given
    pixel_size_um : float or None, µm, the pixel size recorded in the image file (None: unknown)
    user : str, what uses the lens, for the messages ('the network', 'the PSF model')

    Returns
    -------
    (y0, x0) : the offset, ``(0, 0)`` when ``offset`` is None.

    Raises ValueError for an image larger than the sensor or one that does not fit at ``offset``. Warns
    (``UserWarning``) when an image smaller than the sensor has no offset (it is taken to start at the sensor's
    top-left corner) and when ``pixel_size_um`` differs from the lens's pixel by more than 5 %.
    """
    h, w = _pair_of_ints(shape, "shape", low=1)
    ny, nx = (int(v) for v in lens.sensor_shape)
    if h > ny or w > nx:
        raise ValueError(
            f"image: {h}x{w} pixels is larger than the sensor of the lens {lens.name!r} ({ny}x{nx}); {user}'s "
            f"field coordinates would be meaningless: crop the image to the sensor region it was recorded on"
        )
    if offset is None:
        if (h, w) != (ny, nx):
            warnings.warn(
                f"image of {h}x{w} pixels is smaller than the sensor ({ny}x{nx}): assuming it starts at the sensor's "
                f"top-left corner; pass --offset Y0,X0 (offset=) with its true position",
                UserWarning,
                stacklevel=2,
            )
        offset = (0, 0)
    y0, x0 = _pair_of_ints(offset, "offset")
    if y0 + h > ny or x0 + w > nx:
        raise ValueError(
            f"offset: an image of {h}x{w} pixels at (y0, x0) = ({y0}, {x0}) extends past the sensor ({ny}x{nx}) of "
            f"the lens {lens.name!r}; the field coordinates would be meaningless: expected y0 <= {ny - h} and "
            f"x0 <= {nx - w}"
        )
    if pixel_size_um is not None and abs(pixel_size_um / lens.pixel_um - 1) > PIXEL_TOLERANCE:
        warnings.warn(
            f"pixel size: the image has {pixel_size_um:.4g} µm pixels, the lens {lens.name!r} of {user} "
            f"{lens.pixel_um:.4g} µm; {user} expects the lens's sampling (resample the image)",
            UserWarning,
            stacklevel=2,
        )
    return y0, x0


def tile_spans(n: int, tile: int, overlap: int, multiple: int = 1) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of the tiles along one axis of ``n`` pixels (see the module docstring, Tiles).

    Starts are multiples of ``multiple``, consecutive tiles overlap by at least ``overlap`` pixels, the last tile
    ends at ``n`` (and may be up to ``multiple - 1`` pixels longer than ``tile``); ``tile >= n`` gives one span.
    """
    if tile >= n:
        return [(0, n)]
    step = max(multiple, (tile - overlap) // multiple * multiple)
    last = (n - tile) // multiple * multiple
    starts = list(range(0, last + 1, step))
    if starts[-1] < last:
        starts.append(last)
    return [(s, s + tile) for s in starts[:-1]] + [(starts[-1], n)]


def _ramp(length: int, rise: bool, fall: bool, overlap: int) -> np.ndarray:
    """Weights along one tile axis: a raised-cosine rise/fall over ``overlap`` pixels on the sides that blend."""
    w = np.ones(length, dtype=np.float64)
    r = min(overlap, length // 2)
    if r > 0:
        ramp = np.sin(0.5 * np.pi * (np.arange(r) + 0.5) / r) ** 2
        if rise:
            w[:r] *= ramp
        if fall:
            w[length - r :] *= ramp[::-1]
    return w


def _check_tiling(tile, overlap, batch) -> None:
    if isinstance(tile, bool) or not isinstance(tile, int | np.integer) or tile < 1:
        raise ValueError(f"tile: expected None or a positive tile side in pixels, got {tile!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int | np.integer) or not 0 <= overlap < tile:
        raise ValueError(f"overlap: expected an integer in [0, tile) = [0, {tile}) pixels, got {overlap!r}")
    if isinstance(batch, bool) or not isinstance(batch, int | np.integer) or batch < 1:
        raise ValueError(f"batch: expected a positive number of tiles per batch, got {batch!r}")


def _as_image(image) -> np.ndarray:
    img = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)
    if img.ndim != 2 or 0 in img.shape:
        raise ValueError(
            f"image: expected a 2-D (H, W) array (pass multi-page images plane by plane), got shape {img.shape}"
        )
    if not np.issubdtype(img.dtype, np.number) or np.iscomplexobj(img):
        raise ValueError(f"image: expected real numbers, got dtype {img.dtype}")
    img = img.astype(np.float32)
    if not np.isfinite(img).all():
        raise ValueError("image: contains NaN or Inf values")
    return img


def deblur_image(model, image, *, offset=(0, 0), tile=None, overlap=32, device=None, batch=4, progress=None):
    """Deblur one image (a full frame or a region of the sensor) with a trained network, optionally in tiles.

    Parameters
    ----------
    model : a :mod:`learn.models` network (``model(x, offsets)``), put in evaluation mode here
    image : (H, W) array, normalised intensity (1 = nominal peak of the training scenes), axes (y, x)
    offset : (y0, x0) ints, sensor row and column of the image's first pixel ((0, 0) for a full frame)
    tile : int or None, tile side in pixels; None runs the whole image at once
    overlap : int in [0, tile), pixels over which neighbouring tiles are blended (module docstring, Tiles)
    device : torch device or None (the model's); the model is moved there
    batch : int, tiles per forward pass
    progress : bool or None, a progress bar over the tiles

    Returns
    -------
    (H, W) float32 array, the deblurred image in the units of ``image``.

    Examples
    --------
    >>> model, lens, ckpt = load_model("run/best.pt")                  # doctest: +SKIP
    >>> sharp = deblur_image(model, blurred, tile=256, overlap=32)     # doctest: +SKIP
    """
    img = _as_image(image)
    y0, x0 = _pair_of_ints(offset, "offset")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device).eval()
    h, w = img.shape
    _check_extent((h, w), (y0, x0), model.config.sensor_shape)
    if tile is None:
        tile, overlap = max(h, w), 0
    _check_tiling(tile, overlap, batch)
    # a flux-keeping network's last layer reaches 2.5 PSF windows: it is applied once to the blended whole
    keep = bool(getattr(model.config, "keep_flux", False)) and tile < max(h, w) and hasattr(model, "estimate")
    run = model.estimate if keep else model
    multiple = 2 ** (model.config.depth - 1)
    tiles = [(r, c) for r in tile_spans(h, tile, overlap, multiple) for c in tile_spans(w, tile, overlap, multiple)]
    groups: dict[tuple[int, int], list] = {}
    for r, c in tiles:  # one batch shape per tile shape
        groups.setdefault((r[1] - r[0], c[1] - c[0]), []).append((r, c))
    from tqdm import tqdm

    blend = _Blend((h, w), overlap)
    source, dtype = torch.from_numpy(img), next(model.parameters()).dtype
    with torch.no_grad(), tqdm(total=len(tiles), desc="tiles", unit="tile", disable=not progress, leave=False) as bar:
        for members in groups.values():
            for i in range(0, len(members), batch):
                chunk = members[i : i + batch]
                x = torch.stack([source[r[0] : r[1], c[0] : c[1]] for r, c in chunk])[:, None]
                offsets = torch.tensor([[y0 + r[0], x0 + c[0]] for r, c in chunk], device=device)
                pred = run(x.to(device=device, dtype=dtype), offsets)[:, 0].double().cpu().numpy()
                for span, p in zip(chunk, pred, strict=True):
                    blend.add(span, p)
                bar.update(len(chunk))
    if keep:
        from learn.models import keep_local_flux

        whole = torch.from_numpy(blend.result())[None, None]
        kept = keep_local_flux(whole, source.double()[None, None], model.config.psf_size)
        return kept[0, 0].numpy().astype(np.float32)
    return blend.result()


def _check_extent(shape, offset, sensor_shape) -> None:
    (h, w), (y0, x0), (ny, nx) = shape, offset, sensor_shape
    if y0 + h > ny or x0 + w > nx:
        raise ValueError(
            f"offset: an image of {h}x{w} pixels at (y0, x0) = ({y0}, {x0}) extends past the model's sensor "
            f"({ny}x{nx}); its field coordinates would be meaningless (see check_geometry)"
        )


class _Blend:
    """Weighted sum of tile outputs over an (H, W) image and of their windows (module docstring, Tiles)."""

    def __init__(self, shape, overlap: int):
        self.shape, self.overlap = shape, overlap
        self.total, self.weight = np.zeros(shape), np.zeros(shape)

    def add(self, span, values: np.ndarray) -> None:
        (r0, r1), (c0, c1) = span
        (h, w), o = self.shape, self.overlap
        window = _ramp(r1 - r0, r0 > 0, r1 < h, o)[:, None] * _ramp(c1 - c0, c0 > 0, c1 < w, o)[None, :]
        self.total[r0:r1, c0:c1] += window * values
        self.weight[r0:r1, c0:c1] += window

    def result(self) -> np.ndarray:
        return (self.total / self.weight).astype(np.float32)


def read_image_metadata(path) -> tuple[float | None, dict]:
    """The pixel size (µm) recorded in an image file and its other metadata.

    The pixel size comes from optisim's ``Info`` JSON (``pixel_size_um``), else from the resolution tags of an
    ImageJ TIFF whose unit is µm; other files (PNG, JPEG, TIFFs without a length unit) give None.

    Returns
    -------
    (pixel_size_um or None, metadata) : metadata is the optisim ``Info`` dict, ``{"description": text}`` for a
    TIFF with another description, or {}.
    """
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None, {}
    import tifffile

    with tifffile.TiffFile(path) as tif:
        ij = tif.imagej_metadata or {}
        page = tif.pages[0]
        info = ij.get("Info")
        description = None if tif.is_imagej else (page.description or None)
        res = page.tags.get("XResolution")
        res = res.value if res is not None else None
    meta: dict = {}
    if info:
        try:
            parsed = json.loads(info)
            meta = parsed if isinstance(parsed, dict) else {"description": info}
        except ValueError:
            meta = {"description": info}
    elif description:
        meta = {"description": description}
    pixel = meta.get("pixel_size_um")
    if pixel is None and str(ij.get("unit", "")).lower() in ("um", "µm", "micron", "microns", "\\u00b5m"):
        if res is not None and res[0] > 0 and res[1] > 0:
            pixel = res[1] / res[0]
    return (float(pixel) if pixel is not None else None), meta


def _input_files(inputs) -> tuple[list[Path], bool]:
    """The image files of ``inputs`` (a file or a folder) and whether it was a folder."""
    from optisim.sources import SUFFIXES

    inputs = Path(inputs)
    if inputs.is_dir():
        files = sorted(p for p in inputs.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            raise ValueError(f"inputs: no {'/'.join(SUFFIXES)} files in the folder {inputs}")
        return files, True
    if not inputs.is_file():
        raise FileNotFoundError(2, "No such image file or folder", str(inputs))
    return [inputs], False


def _targets(files: list[Path], folder_input: bool, output) -> list[Path]:
    """The output path of each input file (before any ``_plane{k}`` suffix); refuses to overwrite an input."""
    output = Path(output)
    if folder_input and output.suffix.lower() in (".tif", ".tiff", ".png", ".jpg", ".jpeg"):
        raise ValueError(f"output: expected a folder for a folder of inputs, got the file name {output.name}")
    to_file = not folder_input and output.suffix.lower() in (".tif", ".tiff")
    targets = [output if to_file else output / f"{f.stem}.tif" for f in files]
    inputs = {f.resolve() for f in files}
    seen = set()
    for target in targets:
        key = target.resolve()
        if key in seen or key in inputs:
            raise ValueError(f"output: {target} would overwrite an input or another output; choose another folder")
        seen.add(key)
    return targets


def _plane_names(target: Path, planes: int) -> list[Path]:
    """``NAME.tif`` for one plane, ``NAME_plane{k}.tif`` for each of several."""
    return [target] if planes == 1 else [target.with_name(f"{target.stem}_plane{k}.tif") for k in range(planes)]


def deblur_files(
    checkpoint,
    inputs,
    output,
    *,
    tile=None,
    overlap=32,
    offset=None,
    device="cpu",
    channel=None,
    normalize=True,
    progress=True,
    method="network",
    lens=None,
    psf_model=None,
    settings=None,
    coverage=None,
    confidence_map=False,
) -> list[Path]:
    """Deblur an image file, or every TIFF/PNG/JPEG file of a folder, into float32 TIFFs.

    Parameters
    ----------
    checkpoint : path of an optisim checkpoint (:mod:`learn.checkpoint`) for ``method='network'``, else None
    inputs : an image file (.tif/.tiff/.png/.jpg/.jpeg) or a folder of them (not recursive)
    output : a .tif/.tiff file for one input file, else a folder (created) for ``NAME.tif`` per input
    tile, overlap : tiling (:func:`deblur_image`); ``tile=None`` deblurs each image whole
    offset : (y0, x0) ints or None, the sensor position of every image's first pixel (:func:`check_geometry`)
    device : torch device; channel : int or None, the channel of multi-channel files (None: every channel)
    normalize : bool, map intensities to the network's scale and back (module docstring, Intensity)
    progress : bool, a progress bar over the tiles
    method : {'network', 'rl', 'rl-tv', 'wiener'} (module docstring, Methods)
    lens : a lens file or preset name (:func:`optisim.lens.load_lens`) for a classical method, or None
    psf_model : an ``optisim-psf-model`` file for a classical method, or None; exactly one of ``lens`` and
        ``psf_model`` goes with a classical method, neither with the network
    settings : dict or None, the classical method's settings (:func:`learn.classical.load_classical`)
    coverage : a coverage or PSF model file (:func:`optisim.coverage.read_coverage`) or None; None reads it from
        ``psf_model`` when that file holds one. Warns (``UserWarning``) for each input that reaches pixels of
        confidence below :data:`optisim.coverage.LOW_CONFIDENCE`.
    confidence_map : bool, also write ``NAME_confidence.tif`` (float32) beside each output; needs a coverage

    Returns
    -------
    list of the written paths (module docstring, Output files, for their metadata).
    """
    from learn.methods import load_method
    from optisim.io import write_tiff
    from optisim.sources import open_image

    runner = load_method(
        method, checkpoint=checkpoint, lens=lens, psf_model=psf_model, settings=settings, device=device
    )
    cov, cov_file = _coverage(coverage, psf_model, runner.lens, confidence_map)
    files, folder = _input_files(inputs)
    targets = _targets(files, folder, output)
    written, options = [], {"channel": channel, "tile": tile, "overlap": overlap if tile is not None else None}
    for path, target in zip(files, targets, strict=True):
        planes = open_image(path, channel=channel)
        names = _plane_names(target, len(planes))
        pixel, meta = read_image_metadata(path)
        start = _checked(runner.lens, planes.shape[-2:], offset, pixel, path, runner.user)
        confidence = _check_coverage(cov, start, planes.shape[-2:], path)
        for k, (plane, name) in enumerate(zip(planes, names, strict=True)):
            scaled, (lo, hi) = _normalise(plane, normalize)
            result = runner.run(scaled, start, tile, overlap, progress)
            result = result * np.float32(hi - lo) + np.float32(lo)
            scaling = (lo, hi) if normalize else None
            info = {"plane": k, **options, "offset": list(start), "coverage": cov_file}
            record = _record(runner.record, path, meta, info, scaling)
            name.parent.mkdir(parents=True, exist_ok=True)
            written.append(write_tiff(name, result, pixel_um=pixel or runner.lens.pixel_um, metadata=record))
            if confidence_map:
                extra = {"source_image": str(path), "offset": list(start), "coverage": cov_file, "units": "1"}
                conf_name = name.with_name(f"{name.stem}_confidence.tif")
                written.append(
                    write_tiff(conf_name, confidence, pixel_um=pixel or runner.lens.pixel_um, metadata=extra)
                )
    return written


def _coverage(coverage, psf_model, lens, confidence_map: bool):
    """The coverage to check against (from ``coverage``, else from ``psf_model``) and its file name, or (None, None)."""
    from optisim.coverage import read_coverage

    source = coverage if coverage is not None else psf_model
    cov = read_coverage(source) if source is not None else None
    if cov is None and confidence_map:
        raise ValueError(
            "confidence_map: needs a coverage: pass a coverage file, or a psf_model file that holds coverage maps"
        )
    if cov is not None and tuple(cov.sensor_shape) != tuple(lens.sensor_shape):
        raise ValueError(
            f"coverage: {source} maps a {cov.sensor_shape[0]}x{cov.sensor_shape[1]} sensor, the model's sensor is "
            f"{lens.sensor_shape[0]}x{lens.sensor_shape[1]}"
        )
    return cov, (None if cov is None else str(source))


def _check_coverage(cov, start, shape, path):
    """The confidence map of an image's pixels (None without a coverage); warns when part lies beyond coverage."""
    if cov is None:
        return None
    from optisim.coverage import beyond_coverage

    confidence = cov.confidence_map(start, shape)
    message = beyond_coverage(confidence, path.name)
    if message:
        warnings.warn(message, UserWarning, stacklevel=3)
    return confidence


def _record(method_record: dict, path, meta: dict, options: dict, scaling) -> dict:
    """The metadata of one output file (module docstring, Output files)."""
    normalisation = None
    if scaling is not None:
        normalisation = {"percentiles": list(DEFAULT_PERCENTILES), "p_lo": scaling[0], "p_hi": scaling[1]}
    return {
        "input_metadata": meta,
        "source_image": str(path),
        **options,
        **method_record,
        "normalisation": normalisation,
        "units": "the input's intensity units" + ("" if scaling is not None else " (no normalisation)"),
    }


def _checked(lens, shape, offset, pixel, path, user) -> tuple[int, int]:
    """:func:`check_geometry` with the file's name in errors and warnings."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = check_geometry(lens, shape, offset, pixel, user=user)
    except ValueError as err:
        raise ValueError(f"{path.name}: {err}") from None
    for w in caught:
        warnings.warn(f"{path.name}: {w.message}", w.category, stacklevel=3)
    return start


def _normalise(plane: np.ndarray, normalize: bool) -> tuple[np.ndarray, tuple[float, float]]:
    """The plane on the network's intensity scale and ``(p_lo, p_hi)`` of the map (module docstring, Intensity)."""
    if not normalize:
        return plane, (0.0, 1.0)
    lo, hi = percentile_range(plane)
    if not hi > lo or not math.isfinite(hi - lo):
        hi = lo + 1.0  # a constant plane: shift only
    return ((plane - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32), (lo, hi)
