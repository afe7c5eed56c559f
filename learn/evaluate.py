"""Evaluating a trained network on a dataset split against the non-learned baselines, per field region of the sensor.

:func:`evaluate` runs the checkpoint's model on every sample of a split of an ``optisim dataset`` file (each crop with
its sensor offset, so the coordinate models see where it lies) and the baselines of :mod:`learn.baselines` on the same
crops, and accumulates PSNR and SSIM per method in a :class:`learn.metrics.RegionMetrics` (overall, per region of a
``grid`` over the sensor, centre and edge). The input itself (``blurred``) is always one of the methods: it is the
reference every other method must beat. The Wiener baselines' ``balance`` is chosen on the ``val`` split with
:func:`learn.baselines.tune_balance` (never on the split that is reported); Richardson-Lucy runs a fixed number of
iterations (:data:`learn.baselines.RL_ITERATIONS`).

Files written into ``output`` (when given)
------------------------------------------
``metrics.json``
    The returned dict: ``checkpoint``, ``data``, ``split``, ``samples``, ``grid`` ([gy, gx]), ``model`` (its
    description), ``methods`` (``{name: RegionMetrics.result()}``: ``psnr``, ``ssim`` (means over crops),
    ``region_psnr``, ``region_ssim`` (gy x gx lists, pooled per region, null where a region got no pixels),
    ``centre_psnr``, ``edge_psnr``, ``centre_ssim``, ``edge_ssim``, ``images``, and the flux ratios ``flux_ratio``,
    ``region_flux_ratio``, ``centre_flux_ratio``, ``edge_flux_ratio``: summed output over summed truth), ``settings``
    (the tuned balances and the iteration counts), ``point_sources`` (below; null when not run), ``warnings`` and
    ``seconds``. PSNR in dB with data range 1 (normalised intensity).

    ``point_sources``: a jittered grid of point-like sources (Gaussians of σ = 0.75 px, the scenes' beads) over the
    whole sensor, edges and corners included, blurred by the dataset's own forward model without noise, deblurred
    by every method, and measured with :func:`learn.pointsources.point_source_report`: per field band (``h < 0.35``,
    ``0.35-0.6``, ``0.6-0.85``, ``h >= 0.85``) the median aspect ratio, FWHM (px) and flux ratio (deblurred / true
    flux of each source) of every method, and the truth's own FWHM.
``examples.png``
    For up to three samples of the split (the crop nearest the sensor centre, the one nearest a corner, and one in
    between), one row each: input | model output | truth | |output - truth|.
``regions.png``
    Per-region PSNR maps over the sensor of the input, the model and the best baseline (by mean PSNR), on one colour
    scale with the values written in the cells; each title gives the centre and edge PSNR.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from learn.baselines import BALANCES, BASELINES, RL_ITERATIONS, run_baseline, tune_balance
from learn.metrics import RegionMetrics, psnr
from learn.pointsources import point_source_report

__all__ = ["check_data", "evaluate", "plot_examples", "plot_regions"]

TUNED = ("wiener", "wiener-lowrank")


def check_data(ckpt: dict, lens, info, *, checkpoint="checkpoint") -> list[str]:
    """Check a dataset against the checkpoint's lens and training data; return the warnings given.

    Parameters
    ----------
    ckpt : the checkpoint dict (:func:`learn.checkpoint.load_checkpoint`); lens : its :class:`optisim.lens.Lens`
    info : :class:`learn.data.DataInfo` of the dataset

    A different sensor shape is a ValueError (the field coordinates would not match); a different lens or other
    data than the training data (``ckpt["data"]["fingerprint"]``) is a ``UserWarning``.
    """
    name = Path(str(checkpoint)).name
    if tuple(info.lens.sensor_shape) != tuple(lens.sensor_shape):
        raise ValueError(
            f"{info.path}: the dataset's sensor {tuple(info.lens.sensor_shape)} differs from the sensor "
            f"{tuple(lens.sensor_shape)} that {name} was trained for; the field coordinates would not match: "
            f"evaluate on data simulated for the checkpoint's lens"
        )
    messages = []
    if info.lens != lens:
        messages.append(
            f"{info.path}: the dataset's lens {info.lens.name!r} differs from the lens {lens.name!r} of {name} "
            f"(same sensor); the metrics measure how the network transfers to another lens"
        )
    record = ckpt.get("data") or {}
    if record.get("kind") == "dataset" and record.get("fingerprint") != info.fingerprint:
        messages.append(
            f"{info.path}: not the dataset {name} was trained on (fingerprint {info.fingerprint[:12]}, trained on "
            f"{str(record.get('fingerprint'))[:12]}); evaluating on other data is legitimate, but say so"
        )
    for message in messages:
        warnings.warn(message, UserWarning, stacklevel=2)
    return messages


def _check_methods(baselines) -> list[str]:
    names = [baselines] if isinstance(baselines, str) else list(baselines)
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"baselines: expected names among {', '.join(BASELINES)}, got {', '.join(map(repr, unknown))}")
    return ["blurred", *dict.fromkeys(n for n in names if n != "blurred")]


def _limit(count, name: str) -> int | None:
    if count is None:
        return None
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"{name}: expected None or a positive number of samples, got {count!r}")
    return count


def _stack(dataset, count: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(blurred, sharp, offsets) of the first ``count`` samples of an :class:`learn.data.H5Pairs`."""
    items = [dataset[i] for i in range(len(dataset) if count is None else min(count, len(dataset)))]
    return (
        torch.stack([s["blurred"] for s in items]),
        torch.stack([s["sharp"] for s in items]),
        torch.stack([s["offset"] for s in items]),
    )


def _tune(methods, data, model, balances, count: int | None) -> tuple[dict, list[str]]:
    """Settings of each baseline: Wiener balances tuned on the val split, RL iteration counts."""
    from learn.data import H5Pairs

    settings: dict = {}
    for name in methods:
        if name in ("rl", "rl-lowrank"):
            settings[name] = {"iterations": RL_ITERATIONS}
    tuned = [n for n in methods if n in TUNED]
    if not tuned:
        return settings, []
    val = H5Pairs(data, "val")
    if len(val) == 0:
        message = f"{data}: no validation samples to tune the Wiener balance on; using {BALANCES[4]:g}"
        warnings.warn(message, UserWarning, stacklevel=3)
        return {**settings, **{n: {"balance": BALANCES[4], "tuned_on": 0} for n in tuned}}, [message]
    x, y, off = _stack(val, count)
    for name in tuned:
        balance = tune_balance(name, x, y, model=model, offsets=off, candidates=balances)
        settings[name] = {"balance": balance, "tuned_on": len(x), "candidates": list(balances)}
    return settings, []


def _example_picks(offsets: np.ndarray, size: int, sensor_shape) -> dict[int, str]:
    """Up to three samples: nearest the sensor centre, nearest a corner, and the median distance between."""
    ny, nx = sensor_shape
    centre = offsets + (size - 1) / 2
    distance = np.hypot(centre[:, 0] - (ny - 1) / 2, centre[:, 1] - (nx - 1) / 2)
    order = np.argsort(distance, kind="stable")
    labels = ("centre", "between", "corner")
    picks: dict[int, str] = {}
    for label, i in zip(labels, (order[0], order[len(order) // 2], order[-1]), strict=True):
        picks.setdefault(int(i), label)
    return picks


def _run(model, forward, methods, test, settings, metrics, picks, *, device, batch_size, progress) -> dict:
    """Accumulate every method over the split; return the example rows ``{index: (label, offset, images)}``."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    examples, seen = {}, 0
    bar = tqdm(DataLoader(test, batch_size=batch_size), desc="evaluate", unit="batch", disable=not progress)
    for batch in bar:
        x, y, off = batch["blurred"], batch["sharp"][:, 0], batch["offset"]
        with torch.no_grad():
            pred = model(x.to(device), off.to(device))[:, 0].float().cpu()
        metrics["model"].update(pred, y, off)
        for name in methods:
            out = run_baseline(name, x[:, 0], model=forward, offsets=off, **_baseline_kwargs(name, settings))
            metrics[name].update(out, y, off)
        for j in range(len(x)):
            if seen + j in picks:
                images = [t[j].numpy() for t in (x[:, 0], pred, y)]
                examples[seen + j] = (picks[seen + j], tuple(off[j].tolist()), images)
        seen += len(x)
    return examples


def evaluate(
    checkpoint,
    data,
    *,
    split="test",
    grid=(4, 4),
    baselines=BASELINES,
    device="cpu",
    max_samples=None,
    output=None,
    balances=BALANCES,
    tune_samples=64,
    batch_size=8,
    progress=True,
    point_sources=True,
) -> dict:
    """Metrics of a checkpoint's model and of the baselines on one split of a dataset (module docstring).

    Parameters
    ----------
    checkpoint : path of an optisim checkpoint; data : path of an ``optisim dataset`` HDF5 file
    split : 'train', 'val' or 'test'; grid : (gy, gx) field regions of the sensor
    baselines : names among :data:`learn.baselines.BASELINES` ('blurred', the input, is always evaluated)
    device : torch device of the model (the baselines run on the CPU)
    max_samples : int or None, evaluate only the first samples of the split (and tune on at most as many)
    output : folder or None; when given, ``metrics.json``, ``examples.png`` and ``regions.png`` are written there
    balances : Wiener balances tried on the val split; tune_samples : int, at most this many val samples for that
    batch_size : int, crops per forward pass; progress : bool, a progress bar
    point_sources : bool, also deblur a field of point sources over the whole sensor (module docstring)

    Returns
    -------
    dict, the content of ``metrics.json`` (module docstring).
    """
    t0 = time.perf_counter()
    max_samples, tune_samples = _limit(max_samples, "max_samples"), _limit(tune_samples, "tune_samples")
    methods = _check_methods(baselines)
    model, lens, info, notes = _open(checkpoint, data, device)
    test = _split(data, split, max_samples)
    limits = [n for n in (tune_samples, max_samples) if n is not None]
    settings, more = _tune(methods, data, info.model, balances, min(limits) if limits else None)
    metrics = {name: RegionMetrics(lens.sensor_shape, grid) for name in ("model", *methods)}
    picks = _example_picks(test.offsets[test.indices], info.size, lens.sensor_shape)
    run = {"device": device, "batch_size": batch_size, "progress": progress}
    examples = _run(model, info.model, methods, test, settings, metrics, picks, **run)
    sources = _point_sources(model, info.model, methods, settings, device) if point_sources else None
    result = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "split": split,
        "samples": len(test),
        "grid": list(metrics["model"].grid),
        "model": model.config.describe(),
        "methods": {name: m.result() for name, m in metrics.items()},
        "settings": settings,
        "point_sources": sources,
        "warnings": notes + more,
        "seconds": time.perf_counter() - t0,
    }
    if output is not None:
        _write(Path(output), result, examples)
    return result


def _baseline_kwargs(name: str, settings: dict) -> dict:
    kwargs = {"balance": settings[name]["balance"]} if name in TUNED else {}
    if name in ("rl", "rl-lowrank"):
        kwargs["iterations"] = settings[name]["iterations"]
    return kwargs


def _point_sources(model, forward, methods, settings, device) -> dict:
    """:func:`learn.pointsources.point_source_report` of the network and the baselines on the whole sensor."""
    from learn.infer import deblur_image

    def network(blurred):
        return deblur_image(model, blurred, tile=256 if max(blurred.shape) > 512 else None, overlap=32, device=device)

    def baseline(name):
        kwargs = _baseline_kwargs(name, settings)
        return lambda b: run_baseline(name, torch.from_numpy(b)[None], model=forward, offsets=[[0, 0]], **kwargs)[0]

    return point_source_report({"model": network, **{name: baseline(name) for name in methods}}, forward)


def _open(checkpoint, data, device):
    """The checkpoint's model and lens, the dataset's :class:`learn.data.DataInfo`, and the warnings given."""
    from learn.checkpoint import load_model
    from learn.data import read_data_info

    model, lens, ckpt = load_model(checkpoint, device=device)
    info = read_data_info(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_data(ckpt, lens, info, checkpoint=checkpoint)
    notes = [str(w.message) for w in caught]
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=3)
    return model, lens, info, notes


def _split(data, split: str, max_samples: int | None):
    """The first ``max_samples`` samples (all if None) of a split, as an :class:`learn.data.H5Pairs`."""
    from learn.data import H5Pairs

    test = H5Pairs(data, split)
    if len(test) == 0:
        raise ValueError(f"{data}: the split {split!r} has no samples")
    if max_samples is not None:
        test.indices = test.indices[:max_samples]
    return test


def _write(out: Path, result: dict, examples: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    order = ("centre", "between", "corner")
    plot_examples(out / "examples.png", sorted(examples.values(), key=lambda row: order.index(row[0])))
    plot_regions(out / "regions.png", result)


def best_baseline(result: dict) -> str | None:
    """The baseline (not the input, not the model) with the highest mean PSNR, or None."""
    scores = {n: r["psnr"] for n, r in result["methods"].items() if n not in ("model", "blurred") and r["psnr"]}
    return max(scores, key=scores.get) if scores else None


def plot_examples(path, rows) -> Path:
    """``examples.png``: one row per ``(label, offset, (input, output, truth))``, input | output | truth | |error|.

    Images are (S, S) normalised intensity; the first three panels share the truth's colour scale.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 2.9 * max(len(rows), 1)), layout="constrained")
    axes = fig.subplots(max(len(rows), 1), 4, squeeze=False)
    for ax_row, (label, offset, (blurred, pred, truth)) in zip(axes, rows, strict=False):
        lo, hi = float(truth.min()), float(truth.max())
        error = np.abs(pred - truth)
        p_in = float(psnr(torch.from_numpy(blurred), torch.from_numpy(truth)))
        p_out = float(psnr(torch.from_numpy(pred), torch.from_numpy(truth)))
        panels = (
            (blurred, f"input, {label} (y0, x0) = {offset}\nPSNR {p_in:.2f} dB", "gray", (lo, hi)),
            (pred, f"model output\nPSNR {p_out:.2f} dB", "gray", (lo, hi)),
            (truth, "truth", "gray", (lo, hi)),
            (error, f"|output - truth| (max {error.max():.3g})", "magma", (0, float(error.max()) or 1.0)),
        )
        for ax, (image, title, cmap, (vmin, vmax)) in zip(ax_row, panels, strict=True):
            im = ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
            fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(path, dpi=90)
    return Path(path)


def plot_regions(path, result: dict) -> Path:
    """``regions.png``: region PSNR maps of the input, the model and the best baseline, one colour scale."""
    from matplotlib.figure import Figure

    names = [n for n in ("blurred", "model", best_baseline(result)) if n is not None]
    maps = {n: np.array(result["methods"][n]["region_psnr"], dtype=float) for n in names}
    finite = np.concatenate([m[np.isfinite(m)] for m in maps.values()])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    gy, gx = result["grid"]
    fig = Figure(figsize=(4.4 * len(names), 4.2), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        m, r = maps[name], result["methods"][name]
        im = ax.imshow(m, cmap="viridis", vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1)
        span = vmax - vmin if vmax > vmin else 1.0
        for (i, j), v in np.ndenumerate(m):
            text, colour = ("no data", "0.4") if math.isnan(v) else (f"{v:.1f}", "k" if v > vmin + 0.6 * span else "w")
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
        label = "input" if name == "blurred" else name
        ax.set_title(f"{label}: centre {_db(r['centre_psnr'])}, edge {_db(r['edge_psnr'])}", fontsize=9)
        ax.set_xticks(range(gx))
        ax.set_yticks(range(gy))
        ax.set_xlabel("region column (sensor x)")
        ax.set_ylabel("region row (sensor y)")
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="PSNR (dB)")
    fig.savefig(path, dpi=90)
    return Path(path)


def _db(value) -> str:
    return "n/a" if value is None else f"{value:.2f} dB"
