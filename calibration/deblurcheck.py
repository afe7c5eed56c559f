"""Deblurred beads: does each method keep the beads' light and make them round, across the field?

A deblurred bead that is small but elongated, or that lost its light, is quantitatively wrong however sharp it looks.
So the calibration deblurs its own bead image with every product method (``optisim deblur --method``: the calibrated
network, and spatially varying Richardson-Lucy ``rl`` and ``rl-tv`` with the calibrated forward model, at their
defaults) and measures the beads on the raw and the deblurred plane with
:func:`learn.pointsources.measure_sources`:

* aperture radius ``w / 2`` pixels, ``w`` the fit window (so the raw beads' light is inside the aperture), on the
  network's input plane (:class:`calibration.network.BeadPlane`: normalised intensity with the detection's
  background map already removed, so the background is taken as 0: a local annulus would catch the wide raw
  beads' wings and under-read their flux by 5-20 %); beads closer to the border than the aperture are not measured;
* per field band (:data:`learn.pointsources.BAND_EDGES`): the median ``aspect`` ratio, ``fwhm`` (px) and
  ``flux_ratio`` (each bead's deblurred flux over its raw flux), and ``edge_centre_flux``: the median flux ratio at
  ``h >= 0.85`` over the one at ``h < 0.35`` (1: the deblurred image keeps the raw image's edge/centre flux; None
  where either band has no bead).

Beads whose window holds another candidate (``crowded``, :func:`calibration.pipeline.crowded_beads`) are not
measured: a neighbour's light in the aperture is not the bead's. Two sets of beads, so that no method is checked on
beads its model was fitted to:

* ``holdout``: the beads held out of the field fit at random, for every method with the calibrated model (and the
  network; its simulated training used that model, and bead fine-tuning masks these beads out);
* ``radial_holdout``: the outermost beads (``--radial-holdout``), deblurred by ``rl`` and ``rl-tv`` with the model
  refitted to the inner beads only (:func:`calibration.validate.radial_validation` refits it the same way), plus the
  centre band's beads (h < 0.35) as the flux reference. This is the extrapolation check: how the methods behave at
  the edge with a model that has never seen it. With ``--radial-network`` a second network, trained on data
  simulated with that model and (with ``--finetune-beads``) fine-tuned on the inner beads only, is checked there
  too, so the network is also measured on edge beads that nothing it learnt from has seen.

Beside ``rl`` both checks report the reference ``rl own PSF``: each measured bead deconvolved by the same number of
RL iterations with its *own* measured PSF (shift-invariant, on a crop around it; :func:`own_psf`). It separates the
model's error from the method's limit. RL shrinks an unresolved source in proportion to its PSF, so until the
source reaches the pixel scale the deblurred bead keeps the PSF's elongation even when the PSF is exact (an
elongated Gaussian PSF of aspect 1.33, deconvolved with itself: aspect 1.33 after 10, 30 and 100 iterations); a
method whose aspect is far above this reference has a wrong model there, one near it is at RL's limit.
"""

from __future__ import annotations

import numpy as np

from learn.pointsources import BAND_EDGES, band_labels, measure_sources, source_field_radius, summarise_by_band

__all__ = [
    "CHECK_METHODS",
    "REFERENCE",
    "bead_check",
    "check_deblurring",
    "classical",
    "forward_of",
    "network",
    "own_psf",
]

CHECK_METHODS = ("network", "rl", "rl-tv")
REFERENCE = "rl own PSF"  # the reference beside 'rl': each bead deconvolved with its own measured PSF


def classical(model, method: str):
    """``deblur(plane, k) -> (Y, X)``: :func:`learn.baselines.deconvolve` of the whole plane with ``model``
    (:class:`optisim.lowrank.EigenPSFs` of the sensor), at the method's defaults."""
    import torch

    from learn.baselines import deconvolve

    def deblur(plane, k=0):
        image = torch.from_numpy(np.clip(plane, 0.0, None).astype(np.float32))
        return deconvolve(image, model, method=method).numpy()

    return deblur


def network(model_path, device="cpu"):
    """``deblur(plane, k) -> (Y, X)``: the network of ``model_path`` on the whole plane
    (:func:`learn.infer.deblur_image`)."""
    from learn.checkpoint import load_model
    from learn.infer import deblur_image

    model, _, _ = load_model(model_path, device=device)

    def deblur(plane, k=0):
        return np.asarray(deblur_image(model, plane, device=device))

    return deblur


def own_psf(psfs_per_plane, beads_per_plane, *, window: int, iterations: int | None = None):
    """``deblur(plane, k) -> (Y, X)``: the reference ``rl own PSF`` (module docstring) for the beads of plane ``k``.

    Each bead's neighbourhood (a crop of ``3 window`` pixels, clipped at the plane's border) is deconvolved by
    shift-invariant Richardson-Lucy (:func:`learn.baselines.richardson_lucy`, :data:`learn.baselines.RL_ITERATIONS`
    iterations unless given) with that bead's own measured PSF, and the central ``window`` x ``window`` pixels of
    the result replace the plane's there; the rest of the plane is left as it is.

    Parameters
    ----------
    psfs_per_plane : list of (K, w, w) arrays, the beads' measured PSFs (:func:`calibration.pipeline.centred_psfs`)
    beads_per_plane : list of (rows (K,), cols (K,)) pixel positions, in the same order
    window : int, the fit window (pixels)
    """
    import torch

    from learn.baselines import RL_ITERATIONS, richardson_lucy

    n = RL_ITERATIONS if iterations is None else int(iterations)
    half, reach = window // 2, window + window // 2

    def deblur(plane, k):
        out = np.array(plane, dtype=np.float32, copy=True)
        image = np.clip(plane, 0.0, None).astype(np.float32)
        for psf, r, c in zip(psfs_per_plane[k], *beads_per_plane[k], strict=True):
            r, c = round(float(r)), round(float(c))
            y0, x0 = max(r - reach, 0), max(c - reach, 0)
            crop = torch.from_numpy(image[y0 : r + reach + 1, x0 : c + reach + 1])
            sharp = richardson_lucy(crop, psf / psf.sum(), iterations=n).numpy()
            ys, xs = slice(max(r - half, 0), r + half + 1), slice(max(c - half, 0), c + half + 1)
            out[ys, xs] = sharp[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        return out

    return deblur


def _inside(rows, cols, shape, margin: float) -> np.ndarray:
    rows, cols = np.asarray(rows, float), np.asarray(cols, float)
    return (rows >= margin) & (cols >= margin) & (rows <= shape[0] - 1 - margin) & (cols <= shape[1] - 1 - margin)


def bead_check(planes, beads_per_plane, methods: dict, sensor_shape, *, window: int) -> dict:
    """Measure the beads of every plane raw and after each method (module docstring).

    Parameters
    ----------
    planes : list of BeadPlane, one per input image (:func:`calibration.network.bead_planes`)
    beads_per_plane : list of (rows (K,), cols (K,)) pixel positions of the beads to measure on each plane
    methods : {name: deblur(plane (Y, X) float32, k) -> (Y, X)}; each gets the normalised intensity of plane ``k``
    sensor_shape : (ny, nx), the sensor the positions refer to (the planes' shape)
    window : int, the fit window (pixels): the aperture is ``window / 2``

    Returns
    -------
    dict: ``beads`` (measured), ``skipped`` (too close to the border), ``aperture_px``, ``methods``:
    ``{'raw': {'by_band': [...]}, name: {'by_band': [...], 'edge_centre_flux': float or None}}`` with the rows of
    :func:`learn.pointsources.summarise_by_band` (``sources``, ``aspect``, ``fwhm``, ``flux_ratio``; for ``raw`` the
    flux ratio is 1).
    """
    aperture = window / 2.0
    margin = float(np.ceil(aperture))
    raw, out, hs, skipped = [], {name: [] for name in methods}, [], 0
    for k, (plane, (rows, cols)) in enumerate(zip(planes, beads_per_plane, strict=True)):
        image = plane.normalised()
        keep = _inside(rows, cols, image.shape, margin)
        skipped += int((~keep).sum())
        if not keep.any():
            continue
        positions = np.stack([np.asarray(rows, float)[keep], np.asarray(cols, float)[keep]], axis=1)
        hs.append(source_field_radius(positions, sensor_shape))
        raw.append(measure_sources(image, positions, aperture=aperture, background=0.0))
        for name, deblur in methods.items():
            out[name].append(measure_sources(deblur(image, k), positions, aperture=aperture, background=0.0))
    result = {"beads": int(sum(len(h) for h in hs)), "skipped": skipped, "aperture_px": aperture, "methods": {}}
    if not hs:
        return result
    h = np.concatenate(hs)
    raw_all = {k: np.concatenate([m[k] for m in raw]) for k in ("flux", "fwhm", "aspect")}
    result["methods"]["raw"] = {"by_band": summarise_by_band(raw_all, raw_all, h)}
    for name, measured in out.items():
        m = {k: np.concatenate([x[k] for x in measured]) for k in ("flux", "fwhm", "aspect")}
        rows = summarise_by_band(m, raw_all, h)
        result["methods"][name] = {"by_band": rows, "edge_centre_flux": _edge_centre(rows)}
    return result


def _edge_centre(rows: list[dict]) -> float | None:
    """Median flux ratio of the outermost band over the innermost one (None where either has no bead)."""
    labels = band_labels(BAND_EDGES)
    by = {r["band"]: r["flux_ratio"] for r in rows}
    centre, edge = by.get(labels[0]), by.get(labels[-1])
    if centre is None or edge is None or centre <= 0:
        return None
    return float(edge / centre)


def forward_of(result, lens=None):
    """The calibrated forward model as :class:`optisim.lowrank.EigenPSFs`: the empirical model itself, or the
    parametric ``lens`` (default the calibrated one) sampled on a 9 x 9 field grid and factored to 1 %."""
    from optisim.lowrank import EigenPSFs

    if result.kind == "empirical" and lens is None:
        return result.psf_model
    return EigenPSFs.from_lens(result.lens if lens is None else lens, grid=(9, 9), tol=1e-2)


def _clean(result) -> np.ndarray:
    """(N,) bool: the beads whose window holds no other candidate (all beads where that was not assessed)."""
    crowded = getattr(result, "crowded", None)
    return np.ones(len(result.fits), dtype=bool) if crowded is None else ~np.asarray(crowded, dtype=bool)


def _radial_forward(result, config):
    """(forward model fitted to the inner beads with the calibration's symmetry, (N,) bool outer beads)."""
    from calibration.empirical import choose_model, forward_model
    from calibration.validate import fit_parametric, radial_split
    from optisim.field import pixel_to_field

    fits, shape = result.fits, result.nominal.sensor_shape
    hx, hy = pixel_to_field(fits.rows, fits.cols, shape)
    clean = _clean(result)
    outer = np.zeros(len(fits), dtype=bool)
    outer[clean], _ = radial_split(np.hypot(hx, hy)[clean], config.radial_holdout)
    inner = clean & ~outer
    if result.kind == "empirical":
        psfs = result.empirical_psfs
        fit = choose_model(psfs[inner], hy[inner], hx[inner], shape, symmetry=result.empirical.symmetry,
                           seed=config.seed, grid=config.empirical_grid, centre_bootstrap=0)  # fmt: skip
        tol = result.validation.get("rank", {}).get("forward_tolerance", 1e-2)
        return forward_model(fit, config.empirical_grid, tol=tol), outer
    symmetry = result.validation.get("symmetry", {}).get("choice", "none")
    field = fit_parametric(fits.subset(inner), shape, symmetry=symmetry, degree=result.degree)
    return forward_of(result, field.lens(result.nominal)), outer


def check_deblurring(result, planes, config, *, methods=("rl", "rl-tv"), network_path=None, device="cpu",
                     radial_network=None, echo=print) -> dict:  # fmt: skip
    """The ``holdout`` and ``radial_holdout`` checks of the module docstring for a calibration.

    Parameters
    ----------
    result : calibration.pipeline.BeadModelFit; planes : its BeadPlanes; config : its ModelConfig
    methods : classical methods to check ('rl', 'rl-tv'); network_path : the calibrated network's checkpoint or None
    device : torch device of the network
    radial_network : None, or ``train(inner_forward, outer) -> checkpoint path``: a network made from the inner
        beads' forward model (:class:`optisim.lowrank.EigenPSFs`) without the ``outer`` beads ((N,) bool over the
        fits), checked as ``network`` on the radial hold-out

    Returns
    -------
    dict: ``methods`` (checked), ``holdout`` and ``radial_holdout`` (:func:`bead_check` results; the latter with
    ``outer_beads``), either replaced by ``{'skipped': why}`` when it cannot be made.
    """
    from calibration.pipeline import centred_psfs

    fits, shape, window = result.fits, result.nominal.sensor_shape, int(result.fits.data.shape[-1])
    unknown = [m for m in methods if m not in CHECK_METHODS[1:]]
    if unknown:
        raise ValueError(f"check methods: expected some of {CHECK_METHODS[1:]}, got {unknown}")

    def per_plane(mask):
        return [(fits.rows[mask & (result.frames == i)], fits.cols[mask & (result.frames == i)])
                for i in range(len(planes))]  # fmt: skip

    measured = centred_psfs(fits) if "rl" in methods else None

    def with_reference(chosen, mask):  # RL with each measured bead's own PSF: what RL reaches with no model error
        if measured is not None:
            psfs = [measured[mask & (result.frames == i)] for i in range(len(planes))]
            chosen[REFERENCE] = own_psf(psfs, per_plane(mask), window=window)
        return chosen

    out = {"methods": [*methods, *(["network"] if network_path is not None else [])]}
    clean = _clean(result)
    held = result.holdout & clean
    if held.any():
        forward = forward_of(result)
        chosen = {m: classical(forward, m) for m in methods}
        if network_path is not None:
            chosen["network"] = network(network_path, device)
        echo(f"  deblurring the bead image with {', '.join(chosen)}: {int(held.sum())} held-out beads")
        out["holdout"] = bead_check(planes, per_plane(held), with_reference(chosen, held), shape, window=window)
    else:
        out["holdout"] = {"skipped": "no beads were held out (--holdout 0 or too few beads)"}
    if config.radial_holdout <= 0 or not (methods or radial_network):
        out["radial_holdout"] = {"skipped": "--radial-holdout 0" if config.radial_holdout <= 0 else "no method"}
        return out
    try:
        inner_forward, outer = _radial_forward(result, config)
    except ValueError as err:
        out["radial_holdout"] = {"skipped": str(err)}
        return out
    from optisim.field import pixel_to_field

    hx, hy = pixel_to_field(fits.rows, fits.cols, shape)
    centre = (np.hypot(hx, hy) < BAND_EDGES[0]) & ~outer & clean
    echo(f"  deblurring with the model of the inner beads: {int(outer.sum())} outer beads")
    chosen = with_reference({m: classical(inner_forward, m) for m in methods}, outer | centre)
    if radial_network is not None:
        chosen["network"] = network(radial_network(inner_forward, outer), device)
    out["radial_holdout"] = bead_check(planes, per_plane(outer | centre), chosen, shape, window=window)
    out["radial_holdout"]["outer_beads"] = int(outer.sum())
    return out
