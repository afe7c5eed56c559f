"""``optisim calibrate``: bead files in, a calibrated lens (or PSF model), a network and a report out.

Outputs in the folder ``out`` (formats in ``data/FORMATS.md``):

* ``lens.toml`` (parametric model) or ``psf_model.nc`` (empirical model): the calibrated forward model, which
  ``optisim simulate``, ``dataset`` and ``train`` accept (``--psf-model`` for the latter);
* ``coverage.nc`` (empirical model): where the model is trustworthy, from a bootstrap over the beads
  (:mod:`optisim.coverage`; the same maps are stored in ``psf_model.nc``), which ``optisim deblur --coverage``
  reads to warn about image regions beyond the calibration;
* ``model.pt``: the calibrated network (with ``training/``, its run folder), unless the network is switched off;
* ``beads.csv``: every detected candidate, kept or rejected with the reason, and each fitted bead's numbers;
* ``calibration.json``: every number (settings, optics, detections, per-bead fits, field model, validation, times);
* ``report.html`` with its PNG figures.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calibration.io import read_bead_files
from calibration.network import NetworkConfig, bead_planes, train_network, width_validation
from calibration.optics import Optics, nominal_lens
from calibration.pipeline import BeadModelFit, ModelConfig, fit_indices, fit_model
from optisim.zernike import mode_name, nm_to_noll

__all__ = ["CalibrateConfig", "calibrate"]

FORMAT_NAME = "optisim-calibration"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CalibrateConfig:
    """A whole calibration: the instrument's optics, the model settings and the network settings."""

    optics: Optics = field(default_factory=Optics)
    model: ModelConfig = field(default_factory=ModelConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    dataset: str | None = None
    channel: int | None = None
    check_methods: tuple[str, ...] = ("rl", "rl-tv")  # classical methods of the deblurred-bead check (deblurcheck)

    def __post_init__(self):
        from calibration.deblurcheck import CHECK_METHODS

        unknown = [m for m in self.check_methods if m not in CHECK_METHODS[1:]]
        if unknown:
            raise ValueError(f"check_methods: expected some of {CHECK_METHODS[1:]}, got {unknown}")


def _stage(echo, k: int, total: int, text: str) -> None:
    echo(f"[{k}/{total}] {text}")


def calibrate(paths, out, *, config: CalibrateConfig = CalibrateConfig(), overwrite=False, progress=True, echo=print):
    """Run the calibration (module docstring) and return the summary dict that ``calibration.json`` holds."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} is not empty; use --overwrite to replace its calibration or choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    total = (5 + config.network.finetune_beads) if config.network.enabled else 3
    t0 = time.perf_counter()
    _stage(echo, 1, total, "reading the bead images")
    o = config.optics
    stacks = read_bead_files(
        paths, dataset=config.dataset, channel=config.channel, pixel_um=o.pixel_um, z_step_um=o.z_step_um
    )
    lens = nominal_lens(o, stacks[0].shape, file_pixel_um=stacks[0].pixel_um, source=stacks[0].path.name)
    echo(f"  {len(stacks)} image(s) of {stacks[0].data.shape} pixels; {lens.pixel_um:g} µm pixels, NA {lens.na:g}")
    _stage(echo, 2, total, "detecting and fitting the beads, fitting the field model")
    model_config = ModelConfig(**{**config.model.__dict__, "prior": config.model.prior or o.lens})
    result = fit_model(stacks, lens, model_config, z_step_um=stacks[0].z_step_um, echo=echo)
    forward = _write_forward_model(result, out)
    echo(f"  {result.kind} model written to {forward}")
    result.seconds["model_total"] = time.perf_counter() - t0
    network = {}
    if config.network.enabled:
        network = _network(result, stacks, forward, config, out, total, progress=progress, echo=echo)
    if config.check_methods or network:
        _check_deblurring(result, stacks, model_config, config, out / network["checkpoint"] if network else None,
                          out=out, progress=progress, echo=echo)  # fmt: skip
    _stage(echo, total, total, "writing calibration.json, beads.csv and report.html")
    summary = _summary(result, config, stacks, forward, network)
    summary["seconds"] = {k: round(v, 3) for k, v in result.seconds.items()}
    (out / "calibration.json").write_text(json.dumps(_jsonable(summary), indent=2) + "\n", encoding="utf-8")
    _write_beads_csv(out / "beads.csv", result)
    from calibration.outputs import report_data
    from calibration.report import write_report

    write_report(out, report_data(result, stacks, summary, network))
    return summary


def _check_deblurring(result: BeadModelFit, stacks, model_config, config: CalibrateConfig, network_path, *, out,
                      progress, echo) -> None:  # fmt: skip
    """The deblurred-bead check (:mod:`calibration.deblurcheck`) into ``result.validation['deblurred_beads']``."""
    from calibration.deblurcheck import check_deblurring
    from optisim.cli._options import resolve_device

    t = time.perf_counter()
    device = resolve_device(config.network.device) if network_path is not None else "cpu"
    planes = bead_planes(result, stacks)
    radial = None
    if network_path is not None and config.network.radial_check:
        radial = _radial_network(result, planes, config, out / "radial_holdout", progress=progress, echo=echo)
    check = check_deblurring(result, planes, model_config, methods=config.check_methods, network_path=network_path,
                             device=device, radial_network=radial, echo=echo)  # fmt: skip
    result.validation["deblurred_beads"] = check
    result.seconds["deblur_check"] = time.perf_counter() - t
    for name, part in (("held-out", check.get("holdout", {})), ("radially held-out", check.get("radial_holdout", {}))):
        for method, m in (part.get("methods") or {}).items():
            if method == "raw":
                continue
            edge = m["by_band"][-1]
            if edge["sources"]:
                echo(f"  {name} beads at the edge, {method}: aspect {_num(edge['aspect'])}, flux ratio "
                     f"{_num(edge['flux_ratio'])}, edge/centre flux {_num(m['edge_centre_flux'])}")


def _radial_network(result: BeadModelFit, planes, config: CalibrateConfig, folder: Path, *, progress, echo):
    """``train(inner_forward, outer) -> checkpoint``: the network of ``config`` made again from the inner beads alone
    (simulated training with their model, then, with ``finetune_beads``, fine-tuning on them) in ``folder``."""
    from dataclasses import replace

    from optisim.psfmodel import write_psf_model

    def train(inner_forward, outer):
        folder.mkdir(parents=True, exist_ok=True)
        net = config.network
        forward = write_psf_model(
            folder / "psf_model.nc", inner_forward, result.nominal,
            description="model of the inner beads (the radial hold-out check)",
            provenance={"source": "optisim calibrate", "kind": result.kind, "outer_beads_left_out": int(outer.sum())},
        )  # fmt: skip
        echo(f"  radial hold-out: training a network on data simulated with the model of the inner beads ({forward})")
        model_path, _ = train_network(forward, "empirical", net, folder, progress=progress, echo=echo)
        if net.finetune_beads:
            inner = replace(result, holdout=result.holdout | np.asarray(outer, dtype=bool))
            r = _finetune(inner, planes, model_path, config, progress=progress)
            echo(f"  radial hold-out: fine-tuned on {r['beads']} inner beads")
        return model_path

    return train


def _finetune(result: BeadModelFit, planes, model_path: Path, config: CalibrateConfig, *, progress) -> dict:
    """Fine-tune the checkpoint at ``model_path`` in place on ``result``'s training beads (those not held out), with
    the settings of ``config``; returns :func:`calibration.finetune.finetune_on_beads`'s summary."""
    from calibration.finetune import bead_pairs, finetune_on_beads
    from optisim.cli._options import resolve_device

    net, f = config.network, config.model.fit
    pairs = bead_pairs(result, planes, bead_diameter_um=f.bead_diameter_um, oversample=f.oversample,
                       modality=f.modality)  # fmt: skip
    return finetune_on_beads(
        model_path, pairs, model_path, steps=net.bead_steps, lr=net.bead_lr, tile=net.bead_tile,
        batch_size=net.batch_size, seed=net.seed, device=resolve_device(net.device), progress=progress,
        flux_weight=net.flux_weight,
    )  # fmt: skip


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _write_forward_model(result: BeadModelFit, out: Path) -> Path:
    provenance = {"beads": int((~result.holdout).sum()), "source": "optisim calibrate", "kind": result.kind}
    if result.kind == "parametric":
        path = result.lens.save(out / "lens.toml")
        provenance["symmetry"] = result.validation.get("symmetry", {}).get("choice")
    else:
        from optisim.psfmodel import write_psf_model

        if result.empirical is not None:
            provenance["model"] = result.empirical.to_dict(result.nominal.sensor_shape)
        path = write_psf_model(
            out / "psf_model.nc", result.psf_model, result.nominal, description="empirical model from beads",
            provenance=provenance, coverage=result.coverage,
        )  # fmt: skip
    if result.coverage is not None:
        from optisim.coverage import write_coverage

        write_coverage(out / "coverage.nc", result.coverage, description=f"coverage of the {result.kind} model "
                       "from beads", provenance=provenance)  # fmt: skip
    return path


def _network(result: BeadModelFit, stacks, forward: Path, config: CalibrateConfig, out: Path, total: int, *,
             progress, echo) -> dict:  # fmt: skip
    """Stages 3 to 5: train on simulated data, optionally fine-tune on the beads, validate on held-out beads."""
    net = config.network
    _stage(echo, 3, total, f"training the network on data simulated with {forward.name}")
    t = time.perf_counter()
    model_path, summary = train_network(forward, result.kind, net, out, progress=progress, echo=echo)
    result.seconds["network_training"] = time.perf_counter() - t
    planes = bead_planes(result, stacks)
    network = {"checkpoint": model_path.name, "training": summary}
    if net.finetune_beads:
        network["bead_width_simulated"] = _validate(result, planes, model_path, net.device)
        _stage(echo, 4, total, f"fine-tuning on the bead images ({net.bead_steps} steps, ideal beads as targets)")
        network["bead_finetune"] = _finetune(result, planes, model_path, config, progress=progress)
        result.seconds["bead_finetune"] = network["bead_finetune"]["seconds"]
        r = network["bead_finetune"]
        echo(f"  {r['beads']} beads; masked loss {r['loss_first']:.3g} -> {r['loss_last']:.3g}")
    _stage(echo, total - 1, total, "validating on the beads: width before and after deblurring")
    w = network["bead_width"] = _validate(result, planes, model_path, net.device)
    if net.finetune_beads:
        if w["beads"] != "held out":
            echo("  warning: fewer than 5 beads held out; the widths after fine-tuning include its training beads")
        s = network["bead_width_simulated"]
        echo(f"  after simulated training only: median FWHM {s['median_after']:.2f} px, IQR {s['iqr_after']:.2f} px")
    echo(
        f"  median bead FWHM {w['median_before']:.2f} -> {w['median_after']:.2f} px, "
        f"spread (IQR) {w['iqr_before']:.2f} -> {w['iqr_after']:.2f} px"
    )
    return network


def _validate(result: BeadModelFit, planes, model_path: Path, device: str) -> dict:
    """Bead widths before/after on the held-out beads (all fitted beads when fewer than 5 are held out)."""
    from optisim.cli._options import resolve_device

    fits = result.fits
    use = result.holdout if result.holdout.sum() >= 5 else np.ones(len(fits), dtype=bool)
    beads = [(fits.rows[use & (result.frames == i)], fits.cols[use & (result.frames == i)]) for i in range(len(planes))]
    widths = width_validation(model_path, planes, beads, window=fits.data.shape[-1], device=resolve_device(device))
    held = int(result.holdout.sum())
    widths["beads"] = "held out" if held >= 5 else f"all {len(fits)} fitted (only {held} held out, fewer than 5)"
    return widths


def _fits_table(result: BeadModelFit) -> list[dict]:
    fits = result.fits
    rows = []
    for i in range(len(fits)):
        row = {
            "fit": i,
            "frame": int(result.frames[i]),
            "row": float(fits.rows[i]),
            "col": float(fits.cols[i]),
            "holdout": bool(result.holdout[i]),
            "flipped": bool(result.flipped[i]),
            "correlation": float(fits.correlation[i]),
            "residual": float(fits.residual[i]),
            "amplitude": float(fits.amplitude[i]),
            "background": float(fits.background[i]),
            "na": float(fits.na[i]),
            "falloff": float(fits.falloff[i]),
            "axial_scale": float(fits.axial_scale[i]),
            "z_um": None if fits.z_um is None else float(fits.z_um[i]),
        }
        for j, nm in enumerate(fits.modes):
            row[f"Z{nm_to_noll(*nm)}_waves"] = float(fits.coefficients[i, j])
            row[f"Z{nm_to_noll(*nm)}_sigma"] = float(fits.uncertainty[i, j])
        rows.append(row)
    return rows


def _summary(result: BeadModelFit, config: CalibrateConfig, stacks, forward: Path, network: dict) -> dict:
    fits = result.fits
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "inputs": [{"path": str(s.path), "shape": list(s.data.shape), "metadata": s.metadata} for s in stacks],
        "settings": {
            "optics": config.optics.__dict__,
            "model": config.model.to_dict(),
            "network": config.network.to_dict(),
        },
        "optics": {
            "pixel_um": result.nominal.pixel_um,
            "z_step_um": stacks[0].z_step_um,
            "wavelength_um": result.nominal.reference_wavelength_um,
            "na": result.nominal.na,
            "immersion_index": result.nominal.immersion_index,
            "fitted_na_median": float(np.median(fits.na)),
        },
        "zernike": {
            "convention": "noll",
            "normalisation": "rms",
            "unit": "waves_rms",
            "modes": [{"noll": nm_to_noll(*nm), "name": mode_name(*nm)} for nm in fits.modes],
        },
        "detection": [
            {
                "frame": d.beads[0].frame if d.beads else i,
                "summary": d.summary(),
                "noise_sigma": d.noise_sigma,
                "sigma_px": d.sigma_px,
                "window": d.window,
                "threshold": d.threshold,
            }
            for i, d in enumerate(result.detections)
        ],
        "bead_width": result.validation.get("bead_width"),
        "fits": {
            "beads": len(fits),
            "correlation_median": float(np.median(fits.correlation)),
            "sign_flipped_beads": int(result.flipped.sum()),
            "table": _fits_table(result),
        },
        "model": _model_summary(result, forward),
        "validation": {k: v for k, v in result.validation.items() if k != "bead_width"},
        "network": network,
    }


def _model_summary(result: BeadModelFit, forward: Path) -> dict:
    out = {"kind": result.kind, "file": forward.name}
    if result.field_fit is not None:
        out["field"] = result.field_fit.to_dict()
        out["field"].setdefault("symmetry", "none")  # a rotational fit names itself, with its optical centre
    if result.psf_model is not None:
        m = result.psf_model
        out["empirical"] = {"rank": m.rank, "relative_error": m.relative_error, "kernel_size": m.kernels.shape[-1]}
    if result.empirical is not None:
        out["empirical"].update(result.empirical.to_dict(result.nominal.sensor_shape))
        out["empirical"]["rank"] = m.rank  # the forward model's; the symmetric model's own rank is 'model_rank'
        out["empirical"]["model_rank"] = result.empirical.rank
    if result.coverage is not None:
        from calibration.validate import reference_spread
        from optisim.coverage import LOW_CONFIDENCE

        confidence = result.coverage.confidence_map()
        out["coverage"] = {
            "file": "coverage.nc", "low_confidence": LOW_CONFIDENCE,
            "share_below": float((confidence < LOW_CONFIDENCE).mean()),
            "confidence_median": float(np.median(confidence)), "confidence_min": float(confidence.min()),
            "spread_scale": result.coverage.spread_scale, "distance_scale": result.coverage.distance_scale,
            "reference_spread": reference_spread(result.coverage.psf_spread, result.coverage.bead_distance),
        }  # fmt: skip
    return out


def _write_beads_csv(path: Path, result: BeadModelFit) -> None:
    """Every candidate (detection columns), joined with its fit where it was fitted (fit columns, else empty)."""
    table = _fits_table(result)
    fitted = {key: table[k] for key, k in fit_indices(result.detections).items()}
    rows = []
    for det in result.detections:
        for b in det.beads:
            row = {f"detect_{key}": value for key, value in b.to_dict().items()}
            row.update(fitted.get((b.frame, b.index), {}))
            rows.append(row)
    names = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)


def _jsonable(value):
    """numpy scalars and arrays to plain JSON values; NaN and infinities to None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value
