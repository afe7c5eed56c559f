"""Step 3 of the network calibration: fine-tune the network on the bead images themselves.

The simulated training (:mod:`calibration.network`) teaches the network the calibrated model's blur. The bead images
are the one place where the instrument's own blur and noise come with a known answer: each fitted bead is a sphere of
known diameter at a fitted position with a fitted energy, so its ideal image is that sphere imaged by the
aberration-free (diffraction-limited) lens of the nominal optics. Fine-tuning pairs

* input: the bead image's plane (the plane nearest the beads' focus for a stack), background removed and brought to
  the network's intensity scale (:meth:`calibration.network.BeadPlane.normalised`), axes (y, x);
* target: the ideal beads, :func:`optisim.beads.render_beads` of the nominal lens without aberrations at the fitted
  positions (in focus), each with its fitted energy on the same scale;
* a loss mask: 1 everywhere except within one fit window (``w`` pixels) of every candidate that is not a training
  bead (held-out beads, rejected candidates), where nothing is known about the ideal image, and where the validation
  must not have been trained on.

Only beads used by the field model are targets; held-out beads stay unseen, so the width validation that follows
(:func:`calibration.network.width_validation`) is a fair check. Training draws tiles of ``tile`` pixels around
randomly chosen training beads (with a random offset of up to a quarter tile), each with its sensor offset so that
CoordGate sees the tile's place on the sensor, and minimises the masked mean squared error with Adam.

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

__all__ = ["BeadPairs", "bead_pairs", "finetune_on_beads"]


@dataclass
class BeadPairs:
    """Fine-tuning data of one image plane: (Y, X) float32 ``inputs``, ``targets`` and ``mask`` (0 or 1), and the
    training beads' centres ``(K, 2)`` (row, col) in pixels."""

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    centres: np.ndarray


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
        targets = render_beads(
            result.nominal, fits.rows[train], fits.cols[train], photons=fits.amplitude[train] / plane.scale,
            bead_diameter_um=bead_diameter_um, size=window, oversample=oversample, modality=modality,
        )[0].astype(np.float32)  # fmt: skip
        mask = _disc_mask(inputs.shape, unknown, float(window))
        centres = np.stack([fits.rows[train], fits.cols[train]], axis=1)
        pairs.append(BeadPairs(inputs, targets, mask, centres))
    return pairs


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


def finetune_on_beads(model_path, pairs, out_path, *, steps: int, lr: float, tile: int, batch_size: int, seed: int,
                      device="cpu", progress=True) -> dict:  # fmt: skip
    """Fine-tune the network of ``model_path`` on ``pairs`` (:func:`bead_pairs`) and write it to ``out_path``.

    Parameters
    ----------
    model_path : checkpoint to start from; out_path : the fine-tuned checkpoint (may be ``model_path``)
    pairs : list of BeadPairs (at least one)
    steps : int, optimiser steps; lr : float, Adam learning rate; tile : int, tile side (pixels, rounded down to
        what the network accepts); batch_size : int, tiles per step; seed : int, seeds the tile draws
    device : torch device

    Returns
    -------
    dict: ``beads``, ``steps``, ``lr``, ``tile``, ``batch_size``, ``seed``, ``loss_first`` and ``loss_last`` (mean
    masked MSE over the first and last tenth of the steps, normalised intensity²), ``seconds``.
    """
    from tqdm import tqdm

    from learn.checkpoint import load_checkpoint, load_model, save_checkpoint

    if not pairs:
        raise ValueError("bead fine-tuning: no training beads (every fitted bead is held out)")
    t0 = time.perf_counter()
    model, _, _ = load_model(model_path, device=device)
    multiple = 2 ** (model.config.depth - 1)
    tile = _tile_side(tile, min((p.inputs.shape for p in pairs), key=min), multiple)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    rng, losses = np.random.default_rng(seed), []
    for _ in tqdm(range(steps), desc="bead fine-tuning", unit="step", disable=not progress, leave=False):
        x, y, m, offsets = (v.to(device) for v in _draw(pairs, tile, batch_size, rng))
        loss = ((model(x, offsets) - y) ** 2 * m).sum() / m.sum().clamp(min=1)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    tenth = max(steps // 10, 1)
    record = {
        "beads": int(sum(len(p.centres) for p in pairs)),
        "steps": steps, "lr": lr, "tile": tile, "batch_size": batch_size, "seed": seed,
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
