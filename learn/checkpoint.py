"""Checkpoints: one file holds everything needed to deblur with a model or to resume its training.

A checkpoint is a ``torch.save`` file of plain types and tensors only, so it loads with ``torch.load(path,
weights_only=True)`` (no pickled code is executed). Keys (format ``optisim-checkpoint`` version 1, documented in
``data/FORMATS.md``):

``format``, ``format_version``, ``optisim_version``; ``model_config`` (:class:`learn.models.ModelConfig` as a dict);
``model`` (state dict); ``lens_toml`` (the lens the model is trained for: its sensor defines the coordinates);
``data`` (``{"kind": "dataset", "path", "fingerprint"}`` or ``{"kind": "simulate", ...}``); ``train_config`` (dict);
``epoch`` (last completed, from 1), ``step``, ``best`` (``{"epoch", "val_loss", "val_psnr", "val_ssim"}``),
``history`` (a list of per-epoch rows, as in ``metrics.csv``); for resuming: ``optimizer``, ``scheduler``,
``scaler`` (or None), ``rng`` (torch CPU and CUDA generator states), ``stopped_early`` (bool).

Files are written to a temporary name and renamed, so a run killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from learn.models import ModelConfig, build_model
from optisim._version import __version__
from optisim.lens import Lens

__all__ = ["FORMAT", "FORMAT_VERSION", "load_checkpoint", "load_model", "save_checkpoint"]

FORMAT = "optisim-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path, state: dict) -> Path:
    """Write ``state`` (plain types and tensors) with the format keys, atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "optisim_version": __version__, **state}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path, *, map_location="cpu") -> dict:
    """Read and check a checkpoint; a corrupt file or another kind of file is a ValueError naming the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "No such checkpoint", str(path))
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        first = (str(err).strip().splitlines() or [""])[-1][:160]
        raise ValueError(f"{path}: not a readable checkpoint (corrupt or not a torch file: {first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not an optisim checkpoint (no '{FORMAT}' format key)")
    if int(ckpt.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format version {ckpt['format_version']} is newer than this optisim supports "
            f"({FORMAT_VERSION}); upgrade optisim"
        )
    missing = [key for key in ("model_config", "model", "lens_toml") if key not in ckpt]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return ckpt


def load_model(path, *, device="cpu", expect: ModelConfig | None = None):
    """The trained model of a checkpoint (in eval mode), with its lens and the checkpoint dict.

    ``expect``: if given, a checkpoint of another architecture (name, depth, width) is a ValueError.

    Returns
    -------
    (model, lens, ckpt)
    """
    ckpt = load_checkpoint(path, map_location=device)
    config = ModelConfig.from_dict(ckpt["model_config"])
    if expect is not None:
        check_same_architecture(config, expect, path)
    model = build_model(config)
    load_weights(model, ckpt["model"], path)
    lens = Lens.from_toml(ckpt["lens_toml"], source=f"{path} (lens_toml)")
    return model.to(device).eval(), lens, ckpt


def load_weights(model, state: dict, path) -> None:
    """``model.load_state_dict(state)``; a mismatch is a ValueError naming the missing and unexpected weights."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:

        def names(keys):
            return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")

        parts = [
            f"{label}: {names(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        ]
        raise ValueError(f"{path}: weights do not fit a {model.config.describe()} ({'; '.join(parts)})")
    model.load_state_dict(state)


def check_same_architecture(found: ModelConfig, expected: ModelConfig, path) -> None:
    keys = ("name", "depth", "width", "gate_hidden", "gate_layers", "gate_fourier", "psf_count")
    diff = [
        f"{k} {getattr(found, k)!r} (not {getattr(expected, k)!r})"
        for k in keys
        if getattr(found, k) != getattr(expected, k)
    ]
    if diff:
        raise ValueError(f"{path}: checkpoint is a {found.describe()}, not a {expected.describe()}: {', '.join(diff)}")
