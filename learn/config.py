"""Training configuration: what data, which model, how to optimise. Stored in every checkpoint as a dict."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from learn.models import ModelConfig
from optisim._keys import reject_unknown_keys

__all__ = ["AMP", "FLUX_WEIGHT", "LOSSES", "SimulateConfig", "TrainConfig"]

LOSSES = ("mse", "l1", "ssim-l1")
FLUX_WEIGHT = 0.0  # default weight of the local flux term (TrainConfig.flux_weight), see optisim bench faithful
AMP = ("none", "bf16", "fp16")


@dataclass(frozen=True)
class SimulateConfig:
    """On-the-fly training data: the lens, the image source and the forward model (as ``optisim dataset``).

    ``lens`` (a lens file or preset) or ``psf_model`` (an empirical PSF model file, :mod:`optisim.psfmodel`, whose
    eigen-PSFs replace the lens's computed ones; ``kernel_size``, ``grid``, ``rank`` and ``tol`` then do not apply).
    """

    lens: str | None = None
    psf_model: str | None = None
    source: str = "synthetic"
    channel: int | None = None
    size: int = 128
    noise: dict | None = None
    kernel_size: int | None = None
    grid: tuple[int, int] = (25, 25)
    rank: int | None = None
    tol: float = 1e-3
    steps_per_epoch: int = 100
    val_samples: int = 64

    def __post_init__(self):
        if (self.lens is None) == (self.psf_model is None):
            raise ValueError("simulated data: give a lens file or a PSF model file, not both and not neither")
        for key in ("size", "steps_per_epoch", "val_samples"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}: expected a positive integer, got {value!r}")

    def to_dict(self) -> dict:
        return {**asdict(self), "grid": list(self.grid)}


@dataclass(frozen=True)
class TrainConfig:
    """A training run. ``data`` (an HDF5 dataset) or ``simulate``, not both. ``batch_size`` is the global batch.

    ``init``: a checkpoint of the same architecture whose weights start the run (fine-tuning); None starts from
    the seeded initialisation.

    ``flux_weight`` >= 0: weight of the local flux term added to ``loss``,
    :func:`learn.metrics.local_flux_error` over boxes of the forward model's PSF window (a faithful inverse keeps
    the blur's low frequencies: each source's light stays where it was). 0 leaves the loss, and the weights a seed
    gives, exactly as without the term. The default, :data:`FLUX_WEIGHT`, is the measured choice of
    ``optisim bench faithful`` (its notes give the figures): at weight 1 the networks there learnt almost nothing
    (0.0-0.2 dB in 300 steps against about 3 dB without the term; the term is an L1 distance, zero for the input
    itself, whose gradient does not shrink near zero).
    """

    model: ModelConfig
    data: str | None = None
    simulate: SimulateConfig | None = None
    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-3
    patience: int = 10
    early_stop: int = 0
    loss: str = "mse"
    workers: int = 0
    seed: int = 0
    device: str = "auto"
    amp: str = "none"
    compile: bool = False
    deterministic: bool = False
    tensorboard: bool = False
    init: str | None = None
    flux_weight: float = FLUX_WEIGHT

    def __post_init__(self):
        if (self.data is None) == (self.simulate is None):
            raise ValueError("training data: give a dataset file or --simulate LENS, not both and not neither")
        if self.loss not in LOSSES:
            raise ValueError(f"loss: expected one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.amp not in AMP:
            raise ValueError(f"amp: expected one of {', '.join(AMP)}, got {self.amp!r}")
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: expected a positive integer, got {getattr(self, key)}")
        if not self.lr > 0:
            raise ValueError(f"lr: expected a positive learning rate, got {self.lr}")
        w = self.flux_weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not (w >= 0 and math.isfinite(w)):
            raise ValueError(f"flux_weight: expected a finite weight >= 0, got {self.flux_weight!r}")

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["model"] = self.model.to_dict()
        d["simulate"] = None if self.simulate is None else self.simulate.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        reject_unknown_keys(d, [f.name for f in fields(cls)], "train config")
        d = dict(d)
        d["model"] = ModelConfig.from_dict(d["model"])
        if d.get("simulate") is not None:
            s = dict(d["simulate"])
            reject_unknown_keys(s, [f.name for f in fields(SimulateConfig)], "simulate config")
            d["simulate"] = SimulateConfig(**{**s, "grid": tuple(s.get("grid", (25, 25)))})
        return cls(**d)
