"""Network calibration: train (or fine-tune) a deblurring network on data simulated with the calibrated model,
then check it on the beads themselves: bead width (FWHM) across the field before and after deblurring.

Training runs :func:`learn.train.train` on samples simulated on the fly (:class:`learn.config.SimulateConfig`) from
the calibrated lens file or the empirical PSF model file, with sharp images from ``source`` (the built-in scene
generator, or a folder of sharp images). ``init`` fine-tunes a given checkpoint (its architecture is kept).

Bead images are brought to the network's intensity scale (1 = a bright scene's peak) by removing the detection's
background map and dividing by the 90th percentile of the kept beads' peaks. Widths are measured with
:func:`calibration.detect.bead_fwhm` (an elliptical Gaussian fit; the geometric mean of the major- and
minor-axis FWHM) at the fitted bead positions, on the raw and on the deblurred image.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from calibration.detect import bead_fwhm
from optisim.noise import CameraNoise

__all__ = ["NetworkConfig", "normalise_beads", "train_network", "width_validation"]


def _default_noise() -> dict:
    return CameraNoise().to_dict()


@dataclass(frozen=True)
class NetworkConfig:
    """How the network is calibrated (``enabled=False`` skips training and the width validation)."""

    enabled: bool = True
    init: str | None = None
    source: str = "synthetic"
    model: str = "cg-unet"
    depth: int = 3
    width: int = 16
    epochs: int = 8
    steps_per_epoch: int = 40
    batch_size: int = 8
    size: int = 96
    val_samples: int = 16
    lr: float = 1e-3
    noise: dict | None = field(default_factory=_default_noise)
    device: str = "auto"
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _model_config(config: NetworkConfig):
    from learn.checkpoint import load_checkpoint
    from learn.models import ModelConfig

    if config.init is not None:
        return ModelConfig.from_dict(load_checkpoint(config.init)["model_config"])
    return ModelConfig(name=config.model, depth=config.depth, width=config.width)


def train_network(forward_file: Path, kind: str, config: NetworkConfig, out: Path, *, progress=True, echo=print):
    """Train on data simulated with ``forward_file`` (a lens file for ``kind='parametric'``, else a PSF model file).

    The run goes to ``out / 'training'`` (replaced); its best checkpoint is copied to ``out / 'model.pt'``.
    Returns ``(model_path, summary)`` with the training summary of :func:`learn.train.train`.
    """
    from learn.config import SimulateConfig, TrainConfig
    from learn.train import train

    forward = {"lens": str(forward_file)} if kind == "parametric" else {"psf_model": str(forward_file)}
    simulate = SimulateConfig(
        **forward,
        source=config.source,
        size=config.size,
        noise=config.noise,
        steps_per_epoch=config.steps_per_epoch,
        val_samples=config.val_samples,
    )
    train_config = TrainConfig(
        model=_model_config(config),
        simulate=simulate,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        device=config.device,
        seed=config.seed,
        init=config.init,
    )
    run = out / "training"
    summary = train(train_config, run, overwrite=True, progress=progress, echo=echo)
    model_path = out / "model.pt"
    shutil.copyfile(run / "best.pt", model_path)
    return model_path, summary


def normalise_beads(image, background, peaks) -> np.ndarray:
    """``(image - background) / p90(peaks)``: a bead image in the network's normalised intensity, float32."""
    scale = float(np.percentile(np.asarray(peaks, dtype=float), 90)) if len(peaks) else 1.0
    return ((np.asarray(image, dtype=np.float64) - background) / max(scale, 1e-12)).astype(np.float32)


def width_validation(model_path, planes, backgrounds, beads_per_plane, *, window: int, device="cpu") -> dict:
    """Bead FWHM before and after deblurring each plane with the network of ``model_path``.

    Parameters
    ----------
    planes : list of (Y, X) arrays, the bead images (one plane per input file)
    backgrounds : list of (Y, X) arrays, their background maps
    beads_per_plane : list of (rows (K,), cols (K,), peaks (K,)) arrays: the validation beads of each plane
    window : int, FWHM fit window (pixels)

    Returns
    -------
    dict with ``rows``, ``cols``, ``before``, ``after`` ((K,) FWHM in pixels, NaN where a fit failed) and the
    summary numbers ``median_before``, ``median_after``, ``iqr_before``, ``iqr_after`` (pixels).
    """
    from learn.checkpoint import load_model
    from learn.infer import deblur_image

    model, _, _ = load_model(model_path, device=device)
    rows, cols, before, after = [], [], [], []
    for plane, background, (r, c, peaks) in zip(planes, backgrounds, beads_per_plane, strict=True):
        if not len(r):
            continue
        norm = normalise_beads(plane, background, peaks)
        sharp = deblur_image(model, norm, tile=256 if max(norm.shape) > 512 else None, overlap=32)
        positions = np.stack([r, c], axis=1)
        before.append(bead_fwhm(norm, positions, window=window)[:, 2])
        after.append(bead_fwhm(sharp, positions, window=window)[:, 2])
        rows.append(r)
        cols.append(c)
    cat = np.concatenate
    result = {"rows": cat(rows), "cols": cat(cols), "before": cat(before), "after": cat(after)}
    for key in ("before", "after"):
        v = result[key][np.isfinite(result[key])]
        q1, q3 = np.percentile(v, [25, 75]) if len(v) else (np.nan, np.nan)
        result[f"median_{key}"] = float(np.median(v)) if len(v) else float("nan")
        result[f"iqr_{key}"] = float(q3 - q1)
    return result
