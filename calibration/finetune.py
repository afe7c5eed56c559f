"""Step 3 of the network calibration: fine-tune the network on the bead images themselves.

The simulated training (:mod:`calibration.network`) teaches the network the calibrated model's blur. The bead images
are the one place where the instrument's own blur and noise come with a known answer: each fitted bead is a sphere of
known diameter at a fitted position with a fitted energy, so its ideal image is that sphere imaged by the
aberration-free (diffraction-limited) lens of the nominal optics. Fine-tuning pairs

* input: the bead image's plane (the plane nearest the beads' focus for a stack), background removed and brought to
  the network's intensity scale (:meth:`calibration.network.BeadPlane.normalised`), axes (y, x);
* target: the ideal beads, :func:`optisim.beads.render_beads` of the nominal lens without aberrations at the fitted
  positions (in focus), each with its *measured* flux on the same scale (:func:`measured_flux`): the
  background-subtracted sum of the bead's data over its fit window, divided by the fraction of its energy that the
  fitted model puts in that window (the wings past the window cannot be summed, and a plain window sum misses
  4 % of an in-focus bead's light and 10 % of a defocused one's). Where the model's shape is right this is the
  fitted energy; where it is wrong (at the edge of the field, where it is least constrained) the data, not the
  model, say how much light the deblurred bead must hold. Where the fit window also holds another candidate (its
  light would be counted) the fitted energy is used;
* a loss mask: 1 everywhere except within one fit window (``w`` pixels) of every candidate that is not a training
  bead (held-out beads, rejected candidates), where nothing is known about the ideal image, and where the validation
  must not have been trained on.

Only beads used by the field model are targets; held-out beads stay unseen, so the width validation that follows
(:func:`calibration.network.width_validation`) is a fair check. Training draws tiles of ``tile`` pixels around
randomly chosen training beads (with a random offset of up to a quarter tile), each with its sensor offset so that
CoordGate sees the tile's place on the sensor, and minimises with Adam the masked mean squared error plus
``flux_weight`` times the masked local flux error: the mean of ``|box mean of (output - target)|`` over the boxes of
``w`` x ``w`` pixels (the fit window, about the PSF's extent) that lie wholly inside the mask
(:func:`masked_flux_error`, the masked form of :func:`learn.metrics.local_flux_error` that the simulated training
uses), so each bead's light stays where it was.

The fine-tuned weights replace ``model`` in a copy of the checkpoint, which records the run under ``bead_finetune``
(``data/FORMATS.md``); the optimiser state of the simulated training is dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from optisim.beads import render_beads

__all__ = ["BeadPairs", "bead_pairs", "finetune_on_beads", "masked_flux_error", "measured_flux"]


@dataclass
class BeadPairs:
    """Fine-tuning data of one image plane: (Y, X) float32 ``inputs``, ``targets`` and ``mask`` (0 or 1), the
    training beads' centres ``(K, 2)`` (row, col) in pixels, their ``flux`` (K,) carried by the targets and the
    ``fitted`` energies (K,) (normalised intensity × px), and the fit ``window`` (pixels)."""

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    centres: np.ndarray
    flux: np.ndarray | None = None
    fitted: np.ndarray | None = None
    window: int = 0


def _disc_mask(shape, centres, radius: float) -> np.ndarray:
    """(Y, X) float32: 1, with 0 within ``radius`` pixels of each of ``centres`` (K, 2)."""
    mask = np.ones(shape, dtype=np.float32)
    yy, xx = np.arange(shape[0])[:, None], np.arange(shape[1])[None, :]
    for y, x in centres:
        r0, r1 = max(int(y - radius), 0), min(int(y + radius) + 2, shape[0])
        c0, c1 = max(int(x - radius), 0), min(int(x + radius) + 2, shape[1])
        mask[r0:r1, c0:c1][(yy[r0:r1] - y) ** 2 + (xx[:, c0:c1] - x) ** 2 <= radius**2] = 0
    return mask


def bead_pairs(result, planes, *, bead_diameter_um: float, oversample: int, modality: str) -> list[BeadPairs]:
    """The fine-tuning pairs of every input image (module docstring); images without training beads are skipped.

    Parameters
    ----------
    result : calibration.pipeline.BeadModelFit
    planes : list of BeadPlane (:func:`calibration.network.bead_planes`), one per input image
    bead_diameter_um, oversample, modality : the bead model's settings (:class:`calibration.fit.FitConfig`)
    """
    from calibration.pipeline import fit_indices

    fits, window = result.fits, result.fits.data.shape[-1]
    train_keys = {key for key, k in fit_indices(result.detections).items() if not result.holdout[k]}
    pairs = []
    for i, (det, plane) in enumerate(zip(result.detections, planes, strict=True)):
        train = (~result.holdout) & (result.frames == i)
        if not train.any():
            continue
        unknown = [(b.y, b.x) for b in det.beads if (b.frame, b.index) not in train_keys]
        inputs = plane.normalised()
        fitted = fits.amplitude[train] / plane.scale
        flux = measured_flux(fits.subset(train), plane) / plane.scale
        crowded = _crowded(fits.centres[train], [(b.y, b.x) for b in det.beads], window)
        flux = np.where(crowded, fitted, flux)
        targets = render_beads(
            result.nominal, fits.rows[train], fits.cols[train], photons=flux,
            bead_diameter_um=bead_diameter_um, size=window, oversample=oversample, modality=modality,
        )[0].astype(np.float32)  # fmt: skip
        mask = _disc_mask(inputs.shape, unknown, float(window))
        centres = np.stack([fits.rows[train], fits.cols[train]], axis=1)
        pairs.append(BeadPairs(inputs, targets, mask, centres, flux, fitted, window))
    return pairs


def measured_flux(fits, plane) -> np.ndarray:
    """Each bead's energy as the network's input holds it: its light in the fit window over the model's window share.

    ``Σ(image - background map) / (Σ(model - b) / amplitude)`` over each bead's ``w`` x ``w`` fit window on the
    network's plane (the crop plane equal to ``plane.image`` there): the background-subtracted light that the
    network sees (:meth:`calibration.network.BeadPlane.normalised` subtracts the same map), divided by the fraction
    of the bead's energy that its fitted model puts inside the window (the wings past it cannot be summed). The
    fitted background ``b`` is not used for the data: a least-squares fit with a free background makes the data's
    and the model's window sums equal by construction, so only an independent background measures anything.

    Parameters
    ----------
    fits : calibration.fit.BeadFits (``data``, ``model`` (N, Z, w, w), ``centres``, ``amplitude``, ``background``)
    plane : calibration.network.BeadPlane of the beads' image (``image``, ``background`` (Y, X), image units)

    Returns
    -------
    (N,) float64, image units × px; the fitted energy where the model holds no light in its window.
    """
    half, image = fits.data.shape[-1] // 2, np.asarray(plane.image, dtype=np.float64)
    out = np.asarray(fits.amplitude, dtype=np.float64).copy()
    for k, (r, c) in enumerate(np.asarray(fits.centres, dtype=int)):
        window = np.s_[r - half : r + half + 1, c - half : c + half + 1]
        crop = image[window]
        z = int(np.argmin(np.abs(fits.data[k] - crop).sum(axis=(1, 2))))  # the crop plane the network sees
        share = float((fits.model[k, z] - fits.background[k]).sum()) / float(fits.amplitude[k])
        if share > 0 and np.isfinite(share):
            out[k] = float((crop - plane.background[window]).sum()) / share
    return out


def _crowded(centres, candidates, window: int) -> np.ndarray:
    """(K,) bool: another candidate (y, x) lies in the ``window``-pixel square around a centre (itself excluded)."""
    if not len(candidates):
        return np.zeros(len(centres), dtype=bool)
    cand = np.asarray(candidates, dtype=float)
    d = np.abs(np.asarray(centres, dtype=float)[:, None, :] - cand[None, :, :]).max(axis=2)  # (K, M) Chebyshev
    return ((d > 1.0) & (d <= window // 2)).any(axis=1)


def _tile_side(requested: int, shape, multiple: int) -> int:
    side = min(requested, *shape) // multiple * multiple
    if side < multiple:
        raise ValueError(f"bead fine-tuning: the image ({shape[0]}x{shape[1]}) is smaller than one network tile")
    return side


def _draw(pairs: list[BeadPairs], tile: int, batch: int, rng: np.random.Generator):
    """A batch of tiles around random training beads: inputs, targets, masks (B, 1, T, T) and offsets (B, 2)."""
    xs, ys, ms, offsets = [], [], [], []
    for _ in range(batch):
        p = pairs[rng.integers(len(pairs))]
        cy, cx = p.centres[rng.integers(len(p.centres))] + rng.uniform(-tile / 4, tile / 4, size=2)
        ny, nx = p.inputs.shape
        y0 = int(np.clip(round(cy - tile / 2), 0, ny - tile))
        x0 = int(np.clip(round(cx - tile / 2), 0, nx - tile))
        window = np.s_[y0 : y0 + tile, x0 : x0 + tile]
        xs.append(p.inputs[window])
        ys.append(p.targets[window])
        ms.append(p.mask[window])
        offsets.append((y0, x0))
    stack = [torch.from_numpy(np.stack(v)[:, None]) for v in (xs, ys, ms)]
    return (*stack, torch.tensor(offsets, dtype=torch.int64))


def masked_flux_error(pred, target, mask, window: int):
    """Mean ``|box mean of (pred - target)|`` over the ``window`` x ``window`` boxes wholly inside ``mask``.

    Parameters
    ----------
    pred, target, mask : (B, 1, T, T) tensors (mask 0 or 1); window : int, box side in pixels (clipped to ``T``)

    Returns
    -------
    0-d tensor (normalised intensity), 0 where no box lies wholly inside the mask; differentiable.
    """
    k = min(int(window), pred.shape[-2], pred.shape[-1])
    pool = torch.nn.functional.avg_pool2d
    error = pool((pred - target) * mask, k, stride=1).abs()
    whole = (pool(mask, k, stride=1) > 1 - 1e-6).to(error.dtype)
    return (error * whole).sum() / whole.sum().clamp(min=1)


def finetune_on_beads(model_path, pairs, out_path, *, steps: int, lr: float, tile: int, batch_size: int, seed: int,
                      device="cpu", progress=True, flux_weight: float = 0.0) -> dict:  # fmt: skip
    """Fine-tune the network of ``model_path`` on ``pairs`` (:func:`bead_pairs`) and write it to ``out_path``.

    Parameters
    ----------
    model_path : checkpoint to start from; out_path : the fine-tuned checkpoint (may be ``model_path``)
    pairs : list of BeadPairs (at least one)
    steps : int, optimiser steps; lr : float, Adam learning rate; tile : int, tile side (pixels, rounded down to
        what the network accepts); batch_size : int, tiles per step; seed : int, seeds the tile draws
    device : torch device
    flux_weight : float >= 0, weight of the masked local flux error (module docstring) over boxes of the pairs'
        fit window; 0: the masked MSE alone

    Returns
    -------
    dict: ``beads``, ``steps``, ``lr``, ``tile``, ``batch_size``, ``seed``, ``flux_weight``, ``loss_first`` and
    ``loss_last`` (mean loss over the first and last tenth of the steps: masked MSE in normalised intensity², plus the
    weighted flux term), ``flux_over_fitted`` (median ratio of the targets' measured flux to the fitted energy; None
    without measured fluxes), ``seconds``.
    """
    from tqdm import tqdm

    from learn.checkpoint import load_checkpoint, load_model, save_checkpoint

    if not pairs:
        raise ValueError("bead fine-tuning: no training beads (every fitted bead is held out)")
    if not (flux_weight >= 0 and np.isfinite(flux_weight)):
        raise ValueError(f"flux_weight: expected a finite weight >= 0, got {flux_weight!r}")
    box = max((p.window for p in pairs), default=0) or tile
    t0 = time.perf_counter()
    model, _, _ = load_model(model_path, device=device)
    multiple = 2 ** (model.config.depth - 1)
    tile = _tile_side(tile, min((p.inputs.shape for p in pairs), key=min), multiple)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    rng, losses = np.random.default_rng(seed), []
    for _ in tqdm(range(steps), desc="bead fine-tuning", unit="step", disable=not progress, leave=False):
        x, y, m, offsets = (v.to(device) for v in _draw(pairs, tile, batch_size, rng))
        pred = model(x, offsets)
        loss = ((pred - y) ** 2 * m).sum() / m.sum().clamp(min=1)
        if flux_weight:
            loss = loss + flux_weight * masked_flux_error(pred, y, m, box)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    tenth = max(steps // 10, 1)
    record = {
        "beads": int(sum(len(p.centres) for p in pairs)),
        "steps": steps, "lr": lr, "tile": tile, "batch_size": batch_size, "seed": seed, "flux_weight": flux_weight,
        "flux_over_fitted": _flux_over_fitted(pairs),
        "loss_first": float(np.mean(losses[:tenth])), "loss_last": float(np.mean(losses[-tenth:])),
        "seconds": time.perf_counter() - t0,
    }  # fmt: skip
    ckpt = load_checkpoint(model_path)
    for key in ("optimizer", "scheduler", "scaler", "format", "format_version", "optisim_version"):
        ckpt.pop(key, None)  # stale optimiser state; save_checkpoint writes the format keys
    ckpt["model"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt["bead_finetune"] = record
    save_checkpoint(Path(out_path), ckpt)
    return record


def _flux_over_fitted(pairs) -> float | None:
    """Median over the training beads of measured flux / fitted energy (None without both)."""
    ratios = [p.flux / p.fitted for p in pairs if p.flux is not None and p.fitted is not None]
    ratios = np.concatenate(ratios) if ratios else np.zeros(0)
    ratios = ratios[np.isfinite(ratios)]
    return float(np.median(ratios)) if len(ratios) else None
