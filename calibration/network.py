"""Network calibration: train (or fine-tune) a deblurring network on data simulated with the calibrated model,
then check it on the beads themselves: bead width (FWHM) across the field before and after deblurring.

Training runs :func:`learn.train.train` on samples simulated on the fly (:class:`learn.config.SimulateConfig`) from
the calibrated lens file or the empirical PSF model file, with sharp images from ``source`` (the built-in scene
generator, or a folder of sharp images). ``init`` fine-tunes a given checkpoint (its architecture is kept).

Bead images are brought to the network's intensity scale (1 = a bright scene's peak) by removing the detection's
background map and dividing by the 90th percentile of the kept beads' peaks (:class:`BeadPlane`).
Widths are measured with :func:`calibration.measure.bead_fwhm` (an elliptical Gaussian fit; the geometric mean of the
major- and minor-axis FWHM) at the fitted bead positions, on the raw and on the deblurred image. With
``finetune_beads`` the network is then fine-tuned on the beads themselves (:mod:`calibration.finetune`).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from calibration.measure import bead_fwhm
from learn.config import FLUX_WEIGHT
from optisim.noise import CameraNoise

__all__ = ["BeadPlane", "NetworkConfig", "bead_planes", "best_plane", "train_network", "width_validation"]


def _default_noise() -> dict:
    return CameraNoise().to_dict()


@dataclass(frozen=True)
class NetworkConfig:
    """How the network is calibrated (``enabled=False`` skips training and the width validation).

    ``finetune_beads`` adds step 3, fine-tuning on the bead images with ideal beads as targets
    (:mod:`calibration.finetune`): ``bead_steps`` Adam steps at ``bead_lr`` on tiles of ``bead_tile`` pixels.
    ``flux_weight`` weighs the local flux term in both the simulated training (:class:`learn.config.TrainConfig`)
    and the bead fine-tuning. ``keep_flux`` builds a new network whose output keeps the input's local flux
    (:func:`learn.models.keep_local_flux`, boxes of the PSF window) when it is used (not while it trains or is
    fine-tuned); with ``init`` the checkpoint's setting holds. ``radial_check`` makes the network a second time
    from the inner beads alone (their model, their fine-tuning) for the radial hold-out check
    (:mod:`calibration.deblurcheck`; written to ``radial_holdout/``): it doubles the network's time.
    """

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
    finetune_beads: bool = False
    bead_steps: int = 200
    bead_lr: float = 1e-4
    bead_tile: int = 64
    flux_weight: float = FLUX_WEIGHT
    keep_flux: bool = True
    radial_check: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _model_config(config: NetworkConfig):
    from learn.checkpoint import load_checkpoint
    from learn.models import ModelConfig

    if config.init is not None:
        return ModelConfig.from_dict(load_checkpoint(config.init)["model_config"])
    return ModelConfig(name=config.model, depth=config.depth, width=config.width, keep_flux=config.keep_flux)


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
        flux_weight=config.flux_weight,
    )
    run = out / "training"
    summary = train(train_config, run, overwrite=True, progress=progress, echo=echo)
    model_path = out / "model.pt"
    shutil.copyfile(run / "best.pt", model_path)
    return model_path, summary


@dataclass
class BeadPlane:
    """One input image as the network sees it: ``image`` (Y, X), the plane nearest the beads' focus (the image
    itself for 2D), its ``background`` map (Y, X) (image units), and ``scale``, the image units of intensity 1 (the
    90th percentile of the kept beads' peaks above background)."""

    image: np.ndarray
    background: np.ndarray
    scale: float

    def normalised(self) -> np.ndarray:
        """``(image - background) / scale``: the network's normalised intensity, (Y, X) float32."""
        return ((np.asarray(self.image, dtype=np.float64) - self.background) / self.scale).astype(np.float32)


def best_plane(stack, z_um) -> int:
    """The plane nearest the beads' median focus (0 for a 2D image); a bead at ``z`` (µm) is in focus at plane
    position ``-z`` (:mod:`optisim.beads`)."""
    if stack.data.shape[0] == 1 or z_um is None or not len(z_um):
        return 0
    centre = (stack.data.shape[0] - 1) / 2
    return int(np.clip(round(centre - float(np.median(z_um)) / stack.z_step_um), 0, stack.data.shape[0] - 1))


def bead_planes(result, stacks) -> list[BeadPlane]:
    """The :class:`BeadPlane` of every input image of a calibration (``result``: a ``BeadModelFit``)."""
    planes = []
    for i, (stack, det) in enumerate(zip(stacks, result.detections, strict=True)):
        z = result.fits.z_um[result.frames == i] if result.fits.z_um is not None else None
        peaks = np.asarray([b.peak for b in det.kept], dtype=float)
        scale = max(float(np.percentile(peaks, 90)), 1e-12) if len(peaks) else 1.0
        planes.append(BeadPlane(stack.data[best_plane(stack, z)], det.background, scale))
    return planes


def width_validation(model_path, planes, beads_per_plane, *, window: int, device="cpu") -> dict:
    """Bead FWHM before and after deblurring each plane with the network of ``model_path``.

    Parameters
    ----------
    planes : list of BeadPlane (:func:`bead_planes`), one per input image
    beads_per_plane : list of (rows (K,), cols (K,)) arrays, pixels: the validation beads of each plane
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
    for plane, (r, c) in zip(planes, beads_per_plane, strict=True):
        if not len(r):
            continue
        norm = plane.normalised()
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
