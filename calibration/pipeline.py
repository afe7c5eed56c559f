"""The calibration pipeline: bead files -> detections -> per-bead fits -> field model (-> network, validation).

Stages (each reports its progress and its time):

1. read the bead files (:mod:`calibration.io`) and set up the nominal optics (:mod:`calibration.optics`);
2. detect the beads (:mod:`calibration.detect`) and cut their crops (:mod:`calibration.measure`); the fit window
   grows with the widest beads;
3. fit every bead (:mod:`calibration.fit`); in 2D, resolve the sign of even aberrations across the field;
4. fit the field model: parametric (:mod:`calibration.field`, a calibrated lens file) or empirical (eigen-PSFs
   with smooth weight maps, :mod:`optisim.psfmodel`); ``auto`` takes the empirical model when the Zernike fits
   describe the beads poorly (median correlation below ``auto_threshold``);
5. check the model on beads held out from the field fit (their measured PSFs against the model's prediction).

Network calibration and the bead-width validation are in :mod:`calibration.network`; :func:`calibration.run`
ties everything together and writes the outputs.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from calibration.detect import DetectConfig, Detection, check_detection, detect_beads
from calibration.field import FieldFit, monomials, resolve_signs
from calibration.fit import BeadFits, FitConfig, fit_beads
from calibration.io import BeadStack
from calibration.measure import bead_fwhm, extract_crops
from calibration.optics import check_bead_width
from optisim.field import pixel_to_field
from optisim.lens import Lens, load_lens

__all__ = ["FIELD_MODELS", "BeadModelFit", "ModelConfig", "detect_all", "fit_indices", "fit_model"]

FIELD_MODELS = ("auto", "parametric", "empirical")
MAX_WINDOW = 63


@dataclass(frozen=True)
class ModelConfig:
    """Detection, fit and field-model settings of a calibration (see the stages in the module docstring)."""

    detect: DetectConfig = field(default_factory=DetectConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    field_model: str = "auto"
    field_degree: int | None = None  # None: 2, lowered for few beads (see auto_degree)
    holdout: float = 0.2
    auto_threshold: float = 0.9
    empirical_grid: tuple[int, int] = (9, 9)
    seed: int = 0
    min_correlation: float = 0.5  # beads whose fit correlates less with the data are rejected ("poor fit")
    prior: str | None = None  # a design lens file or preset: the sign of even aberrations in 2D follows it
    symmetry: str = "auto"  # empirical model: 'auto', 'none' or 'rotational' (calibration.empirical)
    radial_holdout: float = 0.25  # outermost share of beads predicted from the inner ones (0: no such check)
    bootstrap: int = 20  # resamplings of the coverage map (0: none)
    coverage_grid: tuple[int, int] = (17, 17)
    remove_bead: bool = True  # deconvolve the bead's own size out of the measured PSFs (calibration.beadsize)

    def __post_init__(self):
        if self.field_model not in FIELD_MODELS:
            raise ValueError(f"field_model: expected one of {FIELD_MODELS}, got {self.field_model!r}")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout: expected a fraction in [0, 1), got {self.holdout}")
        if self.field_degree is not None:
            monomials(self.field_degree)
        from calibration.empirical import SYMMETRIES

        if self.symmetry not in SYMMETRIES:
            raise ValueError(f"symmetry: expected one of {SYMMETRIES}, got {self.symmetry!r}")
        if not 0 <= self.radial_holdout < 1:
            raise ValueError(f"radial_holdout: expected a fraction in [0, 1), got {self.radial_holdout}")
        if self.bootstrap == 1 or self.bootstrap < 0:
            raise ValueError(f"bootstrap: expected 0 (no coverage map) or at least 2 resamplings, got {self.bootstrap}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fit"] = self.fit.to_dict()
        return d


@dataclass
class BeadModelFit:
    """Everything the model stages produced (the outputs and the report read it)."""

    lens: Lens  # nominal optics, or the calibrated lens for a parametric model
    nominal: Lens
    detections: list  # one Detection per input image
    fits: BeadFits
    frames: np.ndarray  # (N,) input image of each fitted bead
    holdout: np.ndarray  # (N,) bool
    flipped: np.ndarray  # (N,) bool, beads whose even modes were flipped (2D sign resolution)
    kind: str  # 'parametric' or 'empirical'
    field_fit: FieldFit | None = None
    psf_model: object | None = None  # optisim EigenPSFs for the empirical model
    empirical_psfs: np.ndarray | None = None  # (N, w, w) the measured, centred, normalised bead PSFs
    validation: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    degree: int = 2  # of the field polynomials
    empirical: object | None = None  # calibration.empirical.EmpiricalFit (symmetry, rank, optical centre)
    crowded: np.ndarray | None = None  # (N,) bool: another candidate inside the bead's fit window (empirical)
    coverage: object | None = None  # optisim.coverage.Coverage of the empirical model


def _sigma_px(lens: Lens, modality: str) -> float:
    """Gaussian sigma of the in-focus PSF in pixels (``0.21 λ / NA``; a closed-pinhole confocal ``/ sqrt 2``)."""
    sigma = 0.21 * lens.reference_wavelength_um / lens.na / lens.pixel_um
    return sigma / math.sqrt(2) if modality == "confocal" else sigma


def _projection(stack: BeadStack) -> np.ndarray:
    return stack.data.max(axis=0)


def detect_all(stacks, lens: Lens, config: ModelConfig, *, echo=print) -> tuple[list[Detection], int, dict]:
    """Detect beads in every image; grow the window to hold the widest beads (then detect again).

    Returns the detections, the crop window and a dict with the bead widths (``fwhm_px``, median FWHM over
    the kept beads) and the ratio of the median width to the diffraction limit.
    """
    cfg = config.detect
    sigma = cfg.sigma_px or _sigma_px(lens, config.fit.modality)
    detections = _detect(stacks, cfg, sigma, cfg.window)
    window = detections[0].window
    widths = np.concatenate(
        [bead_fwhm(_projection(s), d.kept, window=d.window, background=d.background)[:, 0] for s, d in
         zip(stacks, detections, strict=True) if d.kept] or [np.zeros(0)]
    )  # fmt: skip
    finite = widths[np.isfinite(widths)]
    if cfg.window is None and len(finite):
        want = int(np.clip(math.ceil(3.0 * np.percentile(finite, 90)), window, MAX_WINDOW)) | 1
        if want > window:
            echo(f"  beads up to {np.percentile(finite, 90):.1f} px wide: detecting again with a {want} px window")
            detections, window = _detect(stacks, cfg, sigma, want), want
    _hint_dense(detections, cfg, window, echo)
    ratio = check_bead_width(finite, lens, config.fit.modality) if len(finite) else float("nan")
    info = {"fwhm_px_median": float(np.median(finite)) if len(finite) else None, "diffraction_ratio": ratio}
    return detections, window, info


def _hint_dense(detections, cfg: DetectConfig, window: int, echo) -> None:
    """Say how to keep more beads when a third or more of the candidates are rejected as too close."""
    close = sum(b.category == "too close" for d in detections for b in d.beads)
    total = sum(len(d.beads) for d in detections)
    if total and close >= total / 3:
        sep = 0.75 * window if cfg.min_separation is None else cfg.min_separation
        echo(
            f"  note: {close} of {total} candidates are within {sep:.0f} px of another and rejected as too close; "
            "for dense beads pass a smaller --window and --min-separation (neighbours then share a crop)"
        )


def _detect(stacks, cfg: DetectConfig, sigma: float, window) -> list[Detection]:
    detections, errors = [], []
    for i, stack in enumerate(stacks):
        saturation = cfg.saturation if cfg.saturation is not None else stack.saturation
        c = DetectConfig(**{**asdict(cfg), "sigma_px": sigma, "window": window, "saturation": saturation})
        det = detect_beads(stack.data, c, frame=i)
        try:
            check_detection(det)
        except ValueError as err:
            errors.append(f"{stack.path.name}: {err}")
        detections.append(det)
    if len(errors) == len(stacks):
        raise ValueError(errors[0] if len(errors) == 1 else "; ".join(errors))
    return detections


def _crops(stacks, detections, window):
    crops, centres, positions, z0, frames = [], [], [], [], []
    for stack, det in zip(stacks, detections, strict=True):
        if not det.kept:
            continue
        c, origins = extract_crops(stack.data, det.kept, window)
        crops.append(c)
        centres.append(origins + window // 2)
        positions.append([(b.y, b.x) for b in det.kept])
        z0.append([b.z if b.z is not None else 0.0 for b in det.kept])
        frames.append([b.frame for b in det.kept])
    cat = np.concatenate
    return cat(crops), cat(centres), np.array(cat(positions), float), np.array(cat(z0), float), cat(frames)


def auto_degree(n: int) -> int:
    """Field-polynomial degree for ``n`` fitted beads: 2, 1 or 0, with at least two beads per term above 0."""
    for degree in (2, 1):
        if n >= 2 * len(monomials(degree)):
            return degree
    return 0


def crowded_beads(detections, rows, cols, window: int) -> np.ndarray:
    """(N,) bool: another candidate of the same image (kept or rejected) lies inside the fitted bead's ``window``
    square (Chebyshev distance <= ``window // 2`` from its fitted position), so its window is not one PSF.

    ``rows``, ``cols``: the fitted positions, in the order of :func:`fit_indices`.
    """
    half = window // 2
    out = np.zeros(len(rows), dtype=bool)
    by_frame = {}
    for det in detections:
        for b in det.beads:
            by_frame.setdefault(b.frame, []).append(b)
    for (frame, index), k in fit_indices(detections).items():
        others = [(b.y, b.x) for b in by_frame.get(frame, []) if b.index != index]
        if others:
            d = np.abs(np.asarray(others) - [rows[k], cols[k]]).max(axis=1)
            out[k] = bool((d <= half).any())
    return out


def fit_indices(detections) -> dict:
    """``{(frame, bead index): row of the fits}`` for the kept beads, in the order :func:`fit_model` fits them."""
    kept = [(b.frame, b.index) for det in detections for b in det.kept]
    return {key: k for k, key in enumerate(kept)}


def _reject_poor_fits(detections, correlation, limit: float) -> None:
    """Mark the kept beads whose fit correlation is below ``limit`` as rejected (in detection order)."""
    index = fit_indices(detections)
    for det in detections:
        for i, bead in enumerate(det.beads):
            k = index.get((bead.frame, bead.index))
            if k is not None and correlation[k] < limit:
                reason = f"poor fit (correlation {correlation[k]:.2f} < {limit:g})"
                det.beads[i] = replace(bead, status="rejected", reason=reason)


def _holdout(n: int, config: ModelConfig, degree: int) -> np.ndarray:
    """(n,) bool: beads held out of the field fit, drawn with the seed; none when too few beads remain."""
    k = math.floor(config.holdout * n)
    if n - k < 2 * len(monomials(degree)):
        k = 0
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(config.seed).choice(n, size=k, replace=False)] = True
    return mask


def fit_model(stacks, lens: Lens, config: ModelConfig, *, z_step_um=None, echo=print) -> BeadModelFit:
    """Stages 2 to 5 of the module docstring on already-read images with their nominal lens."""
    seconds = {}
    t = time.perf_counter()
    detections, window, widths = detect_all(stacks, lens, config, echo=echo)
    crops, centres, positions, z_planes, frames = _crops(stacks, detections, window)
    seconds["detect"] = time.perf_counter() - t
    n = len(crops)
    echo(f"  {sum(len(d.beads) for d in detections)} candidates, {n} beads kept, {window} px window")
    n_planes = crops.shape[1]
    planes_um = z_init = None
    if n_planes > 1:
        if z_step_um is None:
            raise ValueError(f"a z-stack of {n_planes} planes needs its z-step; pass --z-step (µm)")
        planes_um = (np.arange(n_planes) - (n_planes - 1) / 2) * z_step_um
        z_init = -(z_planes - (n_planes - 1) / 2) * z_step_um  # in focus where z + plane position = 0
    t = time.perf_counter()
    fits = fit_beads(crops, centres, positions, lens, config=config.fit, planes_um=planes_um, z_init_um=z_init)
    seconds["fit"] = time.perf_counter() - t
    echo(f"  fitted {n} beads in {seconds['fit']:.1f} s: median correlation {np.median(fits.correlation):.4f}")
    good = fits.correlation >= config.min_correlation
    if not good.any():
        raise ValueError(
            f"no bead fits the model: the best fit correlates {fits.correlation.max():.2f} with its data "
            f"(limit {config.min_correlation}); check the optics options (--na, --wavelength, --pixel-size)"
        )
    if not good.all():
        _reject_poor_fits(detections, fits.correlation, config.min_correlation)
        fits, frames, n = fits.subset(good), frames[good], int(good.sum())
        echo(f"  {int((~good).sum())} bead(s) rejected for a poor fit; {n} remain")
    flipped = np.zeros(n, dtype=bool)
    prior = load_lens(config.prior) if config.prior is not None else None
    degree = auto_degree(n) if config.field_degree is None else config.field_degree
    if planes_um is None and n >= 2 * len(monomials(degree)):
        fits, flipped = resolve_signs(fits, lens.sensor_shape, degree=degree, prior=prior)
    holdout = _holdout(n, config, degree)
    kind = config.field_model
    if kind == "auto":
        kind = "parametric" if np.median(fits.correlation) >= config.auto_threshold else "empirical"
    result = BeadModelFit(
        lens=lens, nominal=lens, detections=detections, fits=fits, frames=frames, holdout=holdout,
        flipped=flipped, kind=kind, seconds=seconds,
    )  # fmt: skip
    result.validation["bead_width"] = widths
    t = time.perf_counter()
    result.degree = degree
    if kind == "parametric":
        _parametric(result, config)
    else:
        _empirical(result, config)
    seconds["field"] = time.perf_counter() - t
    return result


def _parametric(result: BeadModelFit, config: ModelConfig) -> None:
    """Parametric field model with or without rotational symmetry (:mod:`calibration.symfield`), checked by band,
    by radial hold-out and with its coverage (:mod:`calibration.validate`)."""
    from calibration.symfield import choose_symmetry
    from calibration.validate import by_band, fit_parametric, radial_validation_parametric

    fits, keep, shape = result.fits, ~result.holdout, result.lens.sensor_shape
    train = fits.subset(keep)
    symmetry = config.symmetry
    if symmetry == "auto":
        symmetry, report = choose_symmetry(train, shape, seed=config.seed, degree=result.degree)
    else:
        report = {"choice": symmetry, "reason": f"--symmetry {symmetry} (as asked)"}
    result.validation["symmetry"] = report
    result.field_fit = fit_parametric(train, shape, symmetry=symmetry, degree=result.degree)
    result.lens = result.field_fit.lens(result.nominal)
    hx, hy = pixel_to_field(fits.rows, fits.cols, shape)
    if result.holdout.any():
        held = fits.subset(result.holdout)
        error = held.rms_error(result.field_fit.predict(hx[result.holdout], hy[result.holdout]))
        result.validation["holdout"] = {
            "beads": int(result.holdout.sum()),
            "wavefront_difference_waves_rms": _stats(error),
            "by_band": by_band(error, np.hypot(hx, hy)[result.holdout]),
            "bead_fit_correlation": _stats(held.correlation),
        }
    if config.radial_holdout > 0:
        try:
            result.validation["radial_holdout"] = radial_validation_parametric(
                fits, shape, fraction=config.radial_holdout, degree=result.degree
            )
        except ValueError as err:
            result.validation["radial_holdout"] = {"skipped": str(err)}
    if config.bootstrap:
        try:
            result.coverage = _parametric_coverage(result, train, symmetry, hy[keep], hx[keep], config)
        except ValueError as err:
            result.validation["coverage"] = {"skipped": str(err)}


def _parametric_coverage(result: BeadModelFit, train, symmetry: str, hy, hx, config: ModelConfig):
    """Coverage of the parametric model: PSFs (the fit window's size) of field fits to bootstrap resamplings."""
    from calibration.validate import LensPSFs, bootstrap_coverage, fit_parametric

    shape, size = result.lens.sensor_shape, result.fits.data.shape[-1]

    def builder(idx):
        fit = fit_parametric(train.subset(idx), shape, symmetry=symmetry, degree=result.degree)
        return LensPSFs(fit.lens(result.nominal), size)

    centre = getattr(result.field_fit, "centre", None)
    return bootstrap_coverage(builder, hy, hx, shape, symmetry=symmetry, centre=centre, n=config.bootstrap,
                              grid=config.coverage_grid, seed=config.seed)  # fmt: skip


def _empirical(result: BeadModelFit, config: ModelConfig) -> None:
    """Empirical model (:mod:`calibration.empirical`), checked by band, by radial hold-out and with its coverage
    (:mod:`calibration.validate`)."""
    from calibration.beadsize import remove_bead
    from calibration.empirical import choose_model, forward_model
    from calibration.validate import by_band, psf_correlation, radial_validation

    fits, shape = result.fits, result.lens.sensor_shape
    crowded = crowded_beads(result.detections, fits.rows, fits.cols, fits.data.shape[-1])
    clean = ~crowded
    if (clean & ~result.holdout).sum() < 6:  # too few clean beads: use them all, and say so
        result.validation["crowded"] = {"beads": int(crowded.sum()), "excluded": False,
                                        "reason": "fewer than 6 clean training beads would remain"}  # fmt: skip
        clean = np.ones(len(fits), dtype=bool)
    else:
        result.validation["crowded"] = {"beads": int(crowded.sum()), "excluded": bool(crowded.any())}
    result.crowded = ~clean
    keep = ~result.holdout & clean
    psfs = centred_psfs(fits)
    diameter_px = config.fit.bead_diameter_um / result.lens.pixel_um
    if config.remove_bead:
        psfs = remove_bead(psfs, diameter_px)
    hx, hy = pixel_to_field(fits.rows, fits.cols, shape)
    fit = choose_model(psfs[keep], hy[keep], hx[keep], shape, symmetry=config.symmetry, seed=config.seed,
                       grid=config.empirical_grid)  # fmt: skip
    if config.bootstrap:
        try:
            result.coverage = _coverage(fit, psfs[keep], hy[keep], hx[keep], shape, config)
        except ValueError as err:  # too few beads for a bootstrap: the summary says why there is no map
            result.validation["coverage"] = {"skipped": str(err)}
    tol = forward_tolerance(result.coverage)
    model = forward_model(fit, config.empirical_grid, tol=tol)
    result.psf_model, result.empirical_psfs, result.empirical = model, psfs, fit
    result.validation["rank"] = {"rank": fit.rank, "cross_validated_error": fit.errors.get(fit.symmetry, []),
                                 "symmetry": fit.to_dict(shape), "forward_rank": model.rank,
                                 "forward_tolerance": tol}  # fmt: skip
    h = np.hypot(hx, hy)
    held = result.holdout & clean
    if held.any():
        corr = psf_correlation(psfs[held], model.psfs_at(hx[held], hy[held]))
        result.validation["holdout"] = {"beads": int(held.sum()), "psf_correlation": _stats(corr),
                                        "by_band": by_band(corr, h[held])}  # fmt: skip
    if config.radial_holdout > 0:
        try:
            result.validation["radial_holdout"] = radial_validation(
                psfs[clean], hy[clean], hx[clean], shape, fraction=config.radial_holdout, seed=config.seed,
                grid=config.empirical_grid,
            )
        except ValueError as err:
            result.validation["radial_holdout"] = {"skipped": str(err)}


def forward_tolerance(coverage) -> float:
    """Relative error to which a rotational model is factored for the blur operator: a quarter of the model's own
    PSF uncertainty next to its beads (:func:`calibration.validate.reference_spread`), within
    [``FORWARD_TOL``, 0.05]; ``FORWARD_TOL`` without a coverage map. Finer factoring than the model is known adds
    eigen-PSFs (one convolution each in every blur) and no accuracy: on the real fibre beads 1 % needs rank 59,
    3 % rank 17."""
    from calibration.empirical import FORWARD_TOL
    from calibration.validate import reference_spread

    if coverage is None:
        return FORWARD_TOL
    s_ref = reference_spread(coverage.psf_spread, coverage.bead_distance)
    return float(np.clip(s_ref / 4, FORWARD_TOL, 0.05))


def _coverage(fit, psfs, hy, hx, shape, config: ModelConfig):
    """The coverage map of the chosen empirical model: bootstrap over its beads at its symmetry, rank and centre."""
    from calibration.empirical import build_model
    from calibration.validate import bootstrap_coverage

    def builder(idx):
        return build_model(psfs[idx], hy[idx], hx[idx], shape, symmetry=fit.symmetry, rank=fit.rank,
                           centre=fit.centre, grid=config.empirical_grid)  # fmt: skip

    return bootstrap_coverage(builder, hy, hx, shape, symmetry=fit.symmetry, centre=fit.centre, n=config.bootstrap,
                              grid=config.coverage_grid, seed=config.seed)  # fmt: skip


def empirical_rank(psfs, hy, hx, sensor_shape, config: ModelConfig, *, folds: int = 5) -> tuple[int, list]:
    """The number of eigen-PSFs (no symmetry) that predicts unseen beads best, by ``folds``-fold cross-validation
    (:func:`calibration.empirical.cross_validated_errors`): a rank chosen by how well the eigen-PSFs reproduce the
    beads they came from keeps fitting noise.

    Returns the rank and the cross-validated error of ranks 1, 2, ... (a list; empty, with rank ``min(N, 3)``, for
    fewer than 6 beads).
    """
    from calibration.empirical import cross_validated_errors

    errors = cross_validated_errors(psfs, hy, hx, sensor_shape, symmetry="none", folds=folds, seed=config.seed,
                                    grid=config.empirical_grid)  # fmt: skip
    if not errors:
        return min(len(psfs), 3), []
    return int(np.argmin(errors)) + 1, errors


def centred_psfs(fits: BeadFits) -> np.ndarray:
    """(N, w, w) measured PSFs: each bead's best plane, background removed, shifted so the bead sits at the
    window's centre pixel (Fourier shift), clipped at 0 and normalised to sum 1."""
    from scipy.ndimage import fourier_shift

    w = fits.data.shape[-1]
    out = np.empty((len(fits), w, w))
    for i in range(len(fits)):
        plane = fits.data[i, int(np.argmax(fits.data[i].reshape(fits.data.shape[1], -1).max(1)))] - fits.background[i]
        dy, dx = fits.rows[i] - fits.centres[i, 0], fits.cols[i] - fits.centres[i, 1]
        shifted = np.fft.ifft2(fourier_shift(np.fft.fft2(plane), (-dy, -dx))).real.clip(min=0)
        out[i] = shifted / max(shifted.sum(), 1e-300)
    return out


def _stats(values) -> dict:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"median": None, "min": None, "max": None}
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}
