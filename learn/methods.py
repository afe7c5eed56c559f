"""The deblurring methods of ``optisim deblur`` behind one interface (:func:`load_method`): a trained network, and
the classical spatially varying deconvolutions ``rl``, ``rl-tv`` and ``wiener`` (:func:`deconvolve_image`).

A classical method deconvolves with a low-rank PSF model (:class:`optisim.lowrank.EigenPSFs`), from a lens file or
preset (:meth:`EigenPSFs.from_lens`) or from a calibration's ``psf_model.nc`` (:func:`optisim.psfmodel.read_psf_model`):
:func:`learn.baselines.deconvolve` on each tile, with the operator of the tile's true place on the sensor.

Tiles
-----
The tiles and their blending are those of the network (:mod:`learn.infer`, Tiles), with two differences: a tile may
start at any pixel (there is no pooling grid), and each tile is deconvolved together with a halo of ``halo`` observed
pixels around it (clipped at the image border), after which the halo is dropped. The deconvolution of a tile treats
the light from beyond its halo as unknown (the margin of :mod:`learn.baselines`, Border), so the halo must be at
least the PSF radius (``kernel size // 2``); the default is twice that. RL couples pixels over a distance that grows
with the iterations, so a tiled result approaches the whole-image one as the halo grows (``tests/learn/
test_deblur_methods.py`` states the tolerance it checks).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from learn.infer import (
    METHODS,
    _as_image,
    _Blend,
    _check_extent,
    _check_tiling,
    _pair_of_ints,
    deblur_image,
    tile_spans,
)

__all__ = ["CLASSICAL_KEYS", "Method", "deconvolve_image", "load_method"]

CLASSICAL_KEYS = ("iterations", "tv", "balance", "tol", "halo", "kernel_size", "grid", "rank", "tol_model")


class Method(NamedTuple):
    """A loaded deblurring method.

    Attributes
    ----------
    lens : :class:`optisim.lens.Lens`, whose sensor defines the field coordinates (and whose pixel the outputs get)
    run : ``run(image, offset, tile, overlap, progress) -> (H, W) float32``, image in normalised intensity
    record : dict, the metadata that describes the method in output files (:mod:`learn.infer`, Output files)
    user : str, what uses the lens, for messages ('the network', 'the PSF model')
    """

    lens: object
    run: object
    record: dict
    user: str


def load_method(method: str, *, checkpoint=None, lens=None, psf_model=None, settings=None, device=None) -> Method:
    """Load the network or the PSF model of ``method`` after checking which inputs go with it.

    Parameters
    ----------
    method : {'network', 'rl', 'rl-tv', 'wiener'}
    checkpoint : an optisim checkpoint, for 'network' only
    lens : a lens file or preset name (:func:`optisim.lens.load_lens`); psf_model : an ``optisim-psf-model`` file;
        exactly one of them for a classical method, neither for 'network'
    settings : dict or None, the classical method's settings: keys among :data:`CLASSICAL_KEYS`, ``iterations``,
        ``tv``, ``balance``, ``tol``, ``halo`` (:func:`deconvolve_image`) and, with ``lens`` only, the low-rank
        model's ``kernel_size``, ``grid``, ``rank`` and ``tol_model`` (its ``tol``,
        :meth:`optisim.lowrank.EigenPSFs.from_lens`); None values and missing keys take the defaults
    device : torch device or None
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(map(repr, METHODS))}, got {method!r}")
    if method == "network":
        if checkpoint is None or lens is not None or psf_model is not None or settings:
            raise ValueError(
                "method 'network': expected a checkpoint and no lens, psf_model or settings (the checkpoint holds "
                "its lens)"
            )
        return _network(checkpoint, device)
    if checkpoint is not None:
        raise ValueError(f"method {method!r}: expected no checkpoint (a classical method uses lens or psf_model)")
    return _classical(method, lens, psf_model, settings, device)


def _network(checkpoint, device) -> Method:
    from pathlib import Path

    from learn.checkpoint import load_model

    model, lens, ckpt = load_model(checkpoint, device=device)

    def run(image, offset, tile, overlap, progress):
        return deblur_image(model, image, offset=offset, tile=tile, overlap=overlap, progress=progress)

    record = {
        "method": "network",
        "checkpoint": str(checkpoint),
        "checkpoint_name": Path(checkpoint).name,
        "model": ckpt["model_config"],
        "epoch": ckpt.get("epoch"),
        "lens": ckpt["lens_toml"],
    }
    return Method(lens, run, record, "the network")


def deconvolve_image(
    model,
    image,
    *,
    method: str,
    offset=(0, 0),
    tile=None,
    overlap=32,
    halo=None,
    device=None,
    progress=None,
    iterations=None,
    tv=None,
    balance=None,
    tol=None,
) -> np.ndarray:
    """Deconvolve one image (a full frame or a region of the sensor) with a low-rank PSF model, optionally in tiles.

    Parameters
    ----------
    model : :class:`optisim.lowrank.EigenPSFs`, the PSF field of the sensor the image lies on
    image : (H, W) array, normalised intensity, axes (y, x)
    method : {'rl', 'rl-tv', 'wiener'}, see :func:`learn.baselines.deconvolve`
    offset : (y0, x0) ints, sensor row and column of the image's first pixel
    tile, overlap : as :func:`learn.infer.deblur_image` (``tile=None``: the whole image at once)
    halo : int >= the PSF radius (default twice it), observed pixels deconvolved around each tile (module docstring)
    device : torch device or None (CPU); progress : bool or None, a progress bar over the tiles
    iterations, tv, balance, tol : the method's settings (None: :func:`learn.baselines.deconvolve`'s defaults)

    Returns
    -------
    (H, W) float32 array in the units of ``image``.

    Examples
    --------
    >>> lens, model = read_psf_model("calib/psf_model.nc")                                 # doctest: +SKIP
    >>> sharp = deconvolve_image(model, blurred, method="rl-tv", tile=256, overlap=32)     # doctest: +SKIP
    """
    from tqdm import tqdm

    from learn.baselines import deconvolve

    img = _as_image(image)
    y0, x0 = _pair_of_ints(offset, "offset")
    (h, w), radius = img.shape, max(model.kernels.shape[-2:]) // 2
    _check_extent((h, w), (y0, x0), model.sensor_shape)
    halo = 2 * radius if halo is None else halo
    if isinstance(halo, bool) or not isinstance(halo, int | np.integer) or halo < radius:
        raise ValueError(f"halo: expected an integer of at least the PSF radius ({radius} pixels), got {halo!r}")
    if tile is None:
        tile, overlap = max(h, w), 0
    _check_tiling(tile, overlap, 1)
    settings = {"iterations": iterations, "tv": tv, "balance": balance, "tol": tol}
    tiles = [(r, c) for r in tile_spans(h, tile, overlap) for c in tile_spans(w, tile, overlap)]
    blend, source = _Blend((h, w), overlap), torch.from_numpy(img).to(device=device)
    for (r0, r1), (c0, c1) in tqdm(tiles, desc="tiles", unit="tile", disable=not progress, leave=False):
        a0, a1, b0, b1 = max(0, r0 - halo), min(h, r1 + halo), max(0, c0 - halo), min(w, c1 + halo)
        out = deconvolve(source[a0:a1, b0:b1], model, method=method, offset=(y0 + a0, x0 + b0), **settings)
        blend.add(((r0, r1), (c0, c1)), out[r0 - a0 : r1 - a0, c0 - b0 : c1 - b0].double().cpu().numpy())
    return blend.result()


def _classical(method: str, lens, psf_model, settings, device) -> Method:
    """The PSF model of a classical method (from ``lens`` or ``psf_model``) and its ``run`` (:func:`load_method`)."""
    from learn.baselines import CG_ITERATIONS, RL_ITERATIONS, RL_TV_WEIGHT, WIENER_BALANCE
    from optisim.lens import load_lens
    from optisim.lowrank import EigenPSFs
    from optisim.psfmodel import model_digest, read_psf_model

    if (lens is None) == (psf_model is None):
        got = "neither" if lens is None else "both"
        raise ValueError(f"method {method!r}: expected exactly one of lens and psf_model, got {got}")
    settings = {k: v for k, v in (settings or {}).items() if v is not None}
    unknown = sorted(set(settings) - set(CLASSICAL_KEYS))
    if unknown:
        raise ValueError(f"settings: unknown key(s) {', '.join(unknown)}; expected among {', '.join(CLASSICAL_KEYS)}")
    shape = {k: settings.pop(k) for k in ("kernel_size", "grid", "rank", "tol_model") if k in settings}
    if psf_model is not None:
        if shape:
            raise ValueError(f"settings: {', '.join(shape)} shape a model computed from a lens, not a psf_model file")
        lens_obj, model = read_psf_model(psf_model)
    else:
        lens_obj = load_lens(lens)
        shape["tol"] = shape.pop("tol_model", 1e-3)
        model = EigenPSFs.from_lens(lens_obj, device=device, **shape)
    halo = settings.pop("halo", 2 * (model.kernels.shape[-1] // 2))

    def run(image, offset, tile, overlap, progress):
        return deconvolve_image(
            model,
            image,
            method=method,
            offset=offset,
            tile=tile,
            overlap=overlap,
            halo=halo,
            device=device,
            progress=progress,
            **settings,
        )

    record = {
        "method": method,
        "lens_file": None if lens is None else str(lens),
        "psf_model": None if psf_model is None else str(psf_model),
        "lens": lens_obj.to_toml(),
        "psf_model_digest": model_digest(model),
        "kernel_size": int(model.kernels.shape[-1]),
        "rank": model.rank,
        "iterations": settings.get("iterations", CG_ITERATIONS if method == "wiener" else RL_ITERATIONS),
        "tv": settings.get("tv", RL_TV_WEIGHT) if method == "rl-tv" else None,
        "balance": settings.get("balance", WIENER_BALANCE) if method == "wiener" else None,
        "min_change": settings.get("tol") if method != "wiener" else None,
        "halo": halo,
    }
    return Method(lens_obj, run, record, "the PSF model")
