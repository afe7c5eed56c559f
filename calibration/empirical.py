"""Empirical field models from measured bead PSFs, with or without rotational symmetry, chosen by cross-validation.

Two families of model predict the PSF at a field point from the beads' measured, centred PSFs:

* ``none``: eigen-PSFs of the measured PSFs with thin-plate-spline weight maps over the field
  (:func:`optisim.psfmodel.eigen_psfs_from_samples`); no assumption about the instrument;
* ``rotational``: the instrument is rotationally symmetric about a fitted optical centre
  (:mod:`optisim.symmetry`): eigen-PSFs of the rotating frame with coefficients smooth in the field radius, so one
  bead constrains every azimuth at its radius.

The rank of each, and the choice between them (``auto``), are made by ``folds``-fold cross-validation over the
beads: each fold's beads are predicted by a model built from the other beads (for ``rotational`` with the optical
centre refitted to those beads), and the error is ``||predicted - measured|| / ||measured||`` (Frobenius, over all
beads). ``auto`` compares the two at their best ranks bead by bead, in PSF pixels (that error) and in PSF shape
(:func:`shape_errors`: the cross-validated predictions' second-moment tensors against the measured ones, which
noise affects far less than single pixels), and keeps ``rotational`` unless ``none`` is better in either by more than
one standard error of the paired per-bead difference (the rule of the parametric model,
:func:`calibration.symfield.choose_symmetry`): the symmetric model has fewer degrees of freedom and extrapolates
along rings, so a tie goes to it, but not when it gets the PSFs' shape wrong. Noisy bead PSFs make the pixel error
nearly blind to shape: on the real fibre beads both models predict unseen beads' pixels equally well (0.325 against
0.314, difference within one standard error), while the rotational model's PSFs are 23 % rounder than the measured
ones in the outer field, which makes deconvolution elongate the beads it should make round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from optisim.psfmodel import eigen_psfs_from_samples
from optisim.symmetry import MIN_RADII, fit_optical_centre, polar_field, rotational_psfs_from_samples

__all__ = ["SYMMETRIES", "EmpiricalFit", "build_model", "choose_model", "cross_validated_errors", "forward_model"]

SYMMETRIES = ("auto", "none", "rotational")
MAX_RANK = 20


@dataclass
class EmpiricalFit:
    """An empirical model and how it was chosen.

    Attributes
    ----------
    symmetry : 'none' or 'rotational'; rank : int
    model : the predictor (``psfs_at(hx, hy)``): an :class:`optisim.lowrank.EigenPSFs` or
        :class:`optisim.symmetry.RotationalPSFs`
    centre, centre_sigma : (cy, cx) optical centre and its bootstrap sigma (normalised field), rotational only
    errors : {symmetry: [cross-validated error of rank 1, 2, ...]}; reason : why this symmetry (words)
    """

    symmetry: str
    rank: int
    model: object
    centre: tuple | None = None
    centre_sigma: tuple | None = None
    errors: dict | None = None
    reason: str = ""

    def to_dict(self, sensor_shape) -> dict:
        d = {"symmetry": self.symmetry, "rank": self.rank, "cross_validated_error": self.errors or {},
             "reason": self.reason}  # fmt: skip
        if self.centre is not None:
            from optisim.field import field_scale, field_to_pixel

            row, col = field_to_pixel(self.centre[1], self.centre[0], sensor_shape)
            scale = field_scale(sensor_shape)
            d["optical_centre"] = {
                "field_yx": [float(v) for v in self.centre],
                "field_sigma_yx": [float(v) for v in self.centre_sigma],
                "pixel_row_col": [float(row), float(col)],
                "pixel_sigma_row_col": [float(v) * scale for v in self.centre_sigma],
            }
        return d


def build_model(psfs, hy, hx, sensor_shape, *, symmetry: str, rank: int, centre=None, grid=(9, 9),
                asymmetric_rank: int = 0):  # fmt: skip
    """One empirical predictor (``psfs_at(hx, hy)``) of the given symmetry, rank and (rotational) centre."""
    if symmetry == "none":
        return eigen_psfs_from_samples(psfs, hy, hx, sensor_shape, rank=rank, grid=grid)
    if symmetry == "rotational":
        return rotational_psfs_from_samples(psfs, hy, hx, sensor_shape, centre=centre, rank=rank,
                                            asymmetric_rank=asymmetric_rank)  # fmt: skip
    raise ValueError(f"symmetry: expected one of {SYMMETRIES[1:]}, got {symmetry!r}")


def _folds(n: int, folds: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [order[k::folds] for k in range(folds)]


def _fold_centre(psfs, hy, hx, train, sensor_shape, symmetry: str, centre):
    """The optical centre refitted to one fold's training beads (from ``centre`` when given), None for 'none'."""
    if symmetry != "rotational":
        return None
    start, search = ((0.0, 0.0), 0.5) if centre is None else (centre, 0.0)
    c, _ = fit_optical_centre(psfs[train], hy[train], hx[train], sensor_shape, start=start, search=search, bootstrap=0)
    return c


def cross_validated_errors(psfs, hy, hx, sensor_shape, *, symmetry: str, centre=None, folds: int = 5, seed: int = 0,
                           grid=(9, 9), per_bead: bool = False):  # fmt: skip
    """Cross-validated relative error of ranks 1, 2, ... (module docstring); [] when too few beads for folds.

    With ``per_bead`` also each bead's own relative error ``||predicted - measured|| / ||measured||`` at every rank,
    an (N, ranks) array (``(N, 0)`` when there are too few beads), for paired comparisons between models.
    """
    n = len(psfs)
    folds = min(folds, n)
    if folds < 2 or n < 6:
        return ([], np.zeros((n, 0))) if per_bead else []
    parts = _folds(n, folds, seed)
    max_rank = min(n - max(len(p) for p in parts), MAX_RANK)
    bead = np.zeros((n, max_rank))
    for test in parts:
        train = np.setdiff1d(np.arange(n), test)
        c = _fold_centre(psfs, hy, hx, train, sensor_shape, symmetry, centre)
        for k in range(1, max_rank + 1):
            model = build_model(psfs[train], hy[train], hx[train], sensor_shape, symmetry=symmetry, rank=k,
                                centre=c, grid=grid)  # fmt: skip
            bead[test, k - 1] = ((model.psfs_at(hx[test], hy[test]) - psfs[test]) ** 2).sum(axis=(1, 2))
    errors = [float(e) for e in np.sqrt(bead.sum(axis=0) / (psfs**2).sum())]
    if per_bead:
        return errors, np.sqrt(bead / (psfs**2).sum(axis=(1, 2))[:, None])
    return errors


def cross_validated_predictions(psfs, hy, hx, sensor_shape, *, symmetry: str, rank: int, centre=None, folds: int = 5,
                                seed: int = 0, grid=(9, 9)) -> np.ndarray:  # fmt: skip
    """(N, w, w): each bead's PSF predicted by the model of ``rank`` fitted to the other folds (the folds of
    :func:`cross_validated_errors`, the centre refitted per fold for ``rotational``)."""
    n = len(psfs)
    out = np.empty_like(np.asarray(psfs, float))
    for test in _folds(n, min(folds, n), seed):
        train = np.setdiff1d(np.arange(n), test)
        c = _fold_centre(psfs, hy, hx, train, sensor_shape, symmetry, centre)
        model = build_model(psfs[train], hy[train], hx[train], sensor_shape, symmetry=symmetry,
                            rank=min(rank, len(train)), centre=c, grid=grid)  # fmt: skip
        out[test] = model.psfs_at(hx[test], hy[test])
    return out


def shape_moments(psfs) -> np.ndarray:
    """(N, 2, 2) second-moment tensors (px², axes y, x) of PSF windows about their centre pixel, with a fixed
    Gaussian weight of sigma ``w / 4`` (the same for every window, so predicted and measured PSFs compare; negative
    values clipped to 0). Their eigenvalues give the PSF's size and elongation, their eigenvectors its orientation."""
    p = np.clip(np.asarray(psfs, float), 0, None)
    w = p.shape[-1]
    dy, dx = np.mgrid[:w, :w] - w // 2
    weight = np.exp(-0.5 * (dy**2 + dx**2) / (w / 4) ** 2)
    q = p * weight
    total = np.maximum(q.sum(axis=(1, 2)), 1e-300)
    m = np.empty((len(p), 2, 2))
    m[:, 0, 0] = (q * dy**2).sum(axis=(1, 2)) / total
    m[:, 1, 1] = (q * dx**2).sum(axis=(1, 2)) / total
    m[:, 0, 1] = m[:, 1, 0] = (q * dy * dx).sum(axis=(1, 2)) / total
    return m


def shape_errors(predicted, measured) -> np.ndarray:
    """(N,) ``||M_pred - M_meas||_F / trace(M_meas)`` of the :func:`shape_moments`: how far a prediction's size,
    elongation and orientation are from the measured PSF's (0: the same)."""
    mp, mm = shape_moments(predicted), shape_moments(measured)
    return np.linalg.norm(mp - mm, axis=(1, 2)) / np.maximum(np.trace(mm, axis1=1, axis2=2), 1e-300)


def _paired(d: np.ndarray) -> tuple[float, float]:
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def _check_rotational(hy, hx, centre) -> None:
    r, _ = polar_field(hx, hy, centre)
    distinct = len(np.unique(np.round(r, 4)))
    if distinct < MIN_RADII:
        raise ValueError(
            f"a rotational model needs beads at {MIN_RADII} or more distinct field radii, got {distinct} "
            f"({len(r)} beads); use --symmetry none"
        )


def choose_model(psfs, hy, hx, sensor_shape, *, symmetry: str = "auto", folds: int = 5, seed: int = 0, grid=(9, 9),
                 asymmetric_rank: int = 0, centre=None, centre_bootstrap: int = 16) -> EmpiricalFit:  # fmt: skip
    """Fit the empirical model of ``symmetry`` ('auto' chooses, module docstring), with its cross-validated rank.

    Parameters
    ----------
    psfs : (N, w, w) measured centred PSFs summing to 1; hy, hx : (N,) normalised field points
    sensor_shape : (ny, nx) pixels
    centre : (cy, cx) or None, a fixed optical centre for ``rotational`` (None: fitted, with its bootstrap sigma)
    """
    if symmetry not in SYMMETRIES:
        raise ValueError(f"symmetry: expected one of {SYMMETRIES}, got {symmetry!r}")
    psfs, hy, hx = np.asarray(psfs, float), np.asarray(hy, float), np.asarray(hx, float)
    n = len(psfs)
    candidates = ["none", "rotational"] if symmetry == "auto" else [symmetry]
    fitted_centre = sigma = None
    why_not = ""
    if "rotational" in candidates:
        try:
            if n < MIN_RADII + 1:
                raise ValueError(
                    f"a rotational model needs at least {MIN_RADII + 1} beads, got {n}; use --symmetry none"
                )
            if centre is None:
                fitted_centre, sigma = fit_optical_centre(psfs, hy, hx, sensor_shape, bootstrap=centre_bootstrap,
                                                          seed=seed)  # fmt: skip
            else:
                fitted_centre, sigma = tuple(float(v) for v in centre), (0.0, 0.0)
            _check_centre(fitted_centre, sensor_shape)
            _check_rotational(hy, hx, fitted_centre)
        except ValueError as err:
            if symmetry == "rotational":
                raise
            candidates, why_not, fitted_centre = ["none"], str(err).split("; use")[0], None
    runs = {s: cross_validated_errors(psfs, hy, hx, sensor_shape, symmetry=s, centre=fitted_centre, folds=folds,
                                      seed=seed, grid=grid, per_bead=True) for s in candidates}  # fmt: skip
    errors = {s: e for s, (e, _) in runs.items()}
    best = {s: (int(np.argmin(e)) + 1, float(min(e))) if e else (min(n, 3), float("nan")) for s, e in errors.items()}
    chosen = candidates[0]
    if symmetry == "auto" and len(candidates) == 2 and all(errors.values()):
        per_bead = {s: runs[s][1][:, best[s][0] - 1] for s in candidates}
        diff, se = _paired(per_bead["rotational"] - per_bead["none"])
        shapes = {s: shape_errors(cross_validated_predictions(psfs, hy, hx, sensor_shape, symmetry=s, rank=best[s][0],
                                                              centre=fitted_centre, folds=folds, seed=seed, grid=grid),
                                  psfs) for s in candidates}  # fmt: skip
        sdiff, sse = _paired(shapes["rotational"] - shapes["none"])
        chosen = "none" if diff > se or sdiff > sse else "rotational"
        if chosen == "rotational":
            verdict = ("'none' is better neither in PSF pixels nor in PSF shape by more than one standard error, so "
                       "the symmetric model (fewer degrees of freedom; it extrapolates along rings) is kept")
        else:
            worse = [name for name, (a, b) in (("pixels", (diff, se)), ("shape", (sdiff, sse))) if a > b]
            verdict = f"'none' predicts the PSF {' and '.join(worse)} better by more than one standard error"
        reason = (f"cross-validated PSF error {best['rotational'][1]:.4f} (rotational, rank {best['rotational'][0]}) "
                  f"against {best['none'][1]:.4f} (none, rank {best['none'][0]}), per-bead difference {diff:+.4f} ± "
                  f"{se:.4f}; shape error (second moments) {float(np.median(shapes['rotational'])):.3f} against "
                  f"{float(np.median(shapes['none'])):.3f}, difference {sdiff:+.4f} ± {sse:.4f}: "
                  f"{verdict}")  # fmt: skip
    elif symmetry == "auto" and len(candidates) == 2:
        chosen, reason = "none", "too few beads to cross-validate the two models: none kept"
    elif symmetry == "auto":
        reason = f"no rotational model: {why_not}"
    else:
        reason = f"--symmetry {symmetry} (as asked)"
    rank = best[chosen][0]
    model = build_model(psfs, hy, hx, sensor_shape, symmetry=chosen, rank=rank, centre=fitted_centre, grid=grid,
                        asymmetric_rank=asymmetric_rank)  # fmt: skip
    keep_centre = chosen == "rotational"
    return EmpiricalFit(
        symmetry=chosen, rank=rank, model=model, centre=fitted_centre if keep_centre else None,
        centre_sigma=sigma if keep_centre else None, errors=errors, reason=reason,
    )  # fmt: skip


def _check_centre(centre, sensor_shape) -> None:
    """A fitted optical centre outside the sensor is an error (the symmetry assumption does not hold)."""
    from optisim.field import field_to_pixel

    row, col = field_to_pixel(centre[1], centre[0], sensor_shape)
    ny, nx = sensor_shape
    if not (-0.5 <= row <= ny - 0.5 and -0.5 <= col <= nx - 0.5):
        raise ValueError(
            f"the fitted optical centre (row {float(row):.1f}, column {float(col):.1f}) lies outside the "
            f"{ny}x{nx} sensor: the beads do not look rotationally symmetric; use --symmetry none"
        )


FORWARD_TOL = 1e-2  # relative Frobenius error of the factored rotational field over its grid
FORWARD_MIN_GRID = 15  # rotating PSFs need a finer field grid than the weight maps of a 'none' model


def forward_model(fit: EmpiricalFit, grid=(9, 9), *, tol: float = FORWARD_TOL):
    """The :class:`optisim.lowrank.EigenPSFs` that the blur operator, the datasets and the deblurring take.

    A ``none`` model is one already. A ``rotational`` model is sampled on a field grid of at least
    ``FORWARD_MIN_GRID`` points a side and factored to relative error ``tol``
    (:meth:`optisim.symmetry.RotationalPSFs.to_eigen_psfs`); its rank grows with how much the PSFs rotate.
    """
    if fit.symmetry == "none":
        return fit.model
    g = tuple(max(int(v), FORWARD_MIN_GRID) for v in grid)
    return fit.model.to_eigen_psfs(grid=g, tol=tol)
