"""``optisim demo``: the whole product end-to-end on built-in defaults, no input files needed.

Stages (each prints ``[k/6] ...``; the sizes of each are in :data:`FULL` and :data:`QUICK`):

1. physics: the default lens (defocus growing toward the edges), its PSF grid and figure
   (:func:`optisim.demo.lens_stage`);
2. forward model: a small HDF5 dataset of crops from the built-in scene generator, and one blurred full-sensor scene
   (:func:`optisim.demo.forward_stage`);
3. training: a CG U-Net(3) and a plain U-Net(3) with the same budget (epochs, batch, learning rate, seed, width) on
   that dataset (:func:`learn.train.train`);
4. evaluation: both networks on the dataset's held-out test split, against the blurred input and a Wiener baseline,
   overall and per field region of the sensor (:func:`learn.evaluate.evaluate`);
5. calibration: a "real instrument" (:func:`instrument_lens`: the default lens with 15 % more field curvature and
   some astigmatism and coma) images beads; :func:`calibration.calibrate.calibrate` recovers its field model and
   fine-tunes the stage-3 CG U-Net on data simulated with the recovered lens. The recovered field-polynomial terms
   are compared with the truth, and the design-trained and the calibrated network deblur full-sensor test scenes
   of the instrument (PSNR, SSIM, per region);
6. report: ``index.html`` (every figure and number, relative links) and ``summary.json`` (every number).

Output folder
-------------
``lens.toml``, ``lens.txt``, ``psfs.nc``, ``psf_grid.png`` (1); ``dataset.h5``, ``sharp.tif``, ``blurred.tif``,
``blur.png`` (2); ``training/{cg-unet,unet}/`` (``best.pt``, ``last.pt``, ``metrics.csv``, ``summary.json``) and
``training.png`` (3); ``evaluation/{cg-unet,unet}/`` (``metrics.json``, ``examples.png``, ``regions.png``) (4);
``instrument/`` (``lens.toml``: the truth, ``beads.tif``, ``field_terms.png``, ``regions.png``, ``corner.png``)
and ``calibration/`` (the calibration's outputs with its ``report.html``) (5); ``index.html``, ``summary.json`` (6).

A folder that is not empty is refused unless ``overwrite=True``, which rewrites the demo's files in it (other
files are left alone). Every random number comes from ``seed``: two runs on the same machine give the same numbers.
PSNR in dB with data range 1 (normalised intensity), Zernike coefficients in waves RMS (Noll), FWHM in pixels.
"""

from __future__ import annotations

import csv
import json
import os
import textwrap
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from calibration.calibrate import CalibrateConfig, _jsonable, calibrate
from calibration.network import NetworkConfig
from calibration.optics import Optics
from calibration.pipeline import ModelConfig as CalibrationModelConfig
from optisim._threads import torch_threads
from optisim.demo import forward_stage, lens_stage

__all__ = ["FULL", "MODELS", "QUICK", "DemoSizes", "field_terms", "instrument_lens", "run_demo"]

MODELS = {"cg-unet": "CG U-Net(3)", "unet": "U-Net(3)"}  # name -> label
BASELINES = ("wiener",)  # the low-rank Wiener (conjugate gradients) takes minutes on 96 px crops
TEST_SCENE_START = 2 * 10**12  # sample stream of the instrument's test scenes: no training or validation sample
STAGES = 6


@dataclass(frozen=True)
class DemoSizes:
    """How big each stage is.

    psf_grid, psf_size : stage 1's PSF grid (gy, gx) and window (pixels)
    samples, crop : dataset crops and their side (pixels); forward_grid : (gy, gx) PSF grid of the low-rank models
    width, epochs, batch_size, lr : both U-Nets' first-level channels and their common training budget
    region_grid : (gy, gx) field regions of the PSNR maps
    beads : beads in the instrument's image
    calib_epochs, calib_steps, calib_batch, calib_size, calib_lr, calib_val : the calibration's fine-tuning of the
        CG U-Net (on-the-fly simulation with the recovered lens; crops of calib_size pixels, calib_val validation
        crops)
    test_scenes : full-sensor test scenes of the instrument
    """

    psf_grid: tuple[int, int] = (9, 9)
    psf_size: int = 64
    samples: int = 384
    crop: int = 96
    forward_grid: tuple[int, int] = (25, 25)
    width: int = 16
    epochs: int = 6
    batch_size: int = 8
    lr: float = 2e-3
    region_grid: tuple[int, int] = (4, 4)
    beads: int = 24
    calib_epochs: int = 3
    calib_steps: int = 20
    calib_batch: int = 8
    calib_size: int = 96
    calib_lr: float = 5e-4
    calib_val: int = 16
    test_scenes: int = 4


FULL = DemoSizes()
QUICK = DemoSizes(
    psf_grid=(5, 5),
    psf_size=48,
    samples=96,
    crop=80,
    forward_grid=(9, 9),
    width=8,
    region_grid=(3, 3),
    beads=16,
    calib_epochs=1,
    calib_steps=2,
    calib_batch=2,
    calib_val=2,
    test_scenes=2,
)


def instrument_lens(design):
    """The "real instrument" of the demo: ``design`` with its field curvature 15 % stronger, astigmatism 0.05 and
    coma 0.04 waves RMS (:class:`optisim.aberrations.FieldModel`) added; other aberrations unchanged."""
    ab = design.aberrations
    truth = replace(ab, field_curvature=1.15 * ab.field_curvature, astigmatism=0.05, coma=0.04)
    return design.replace(
        name="instrument",
        description=f"{design.name} with field curvature x1.15, astigmatism 0.05 and coma 0.04 waves RMS",
        aberrations=truth,
    )


class _Stages:
    """``[k/N] text`` lines and the seconds of each stage."""

    def __init__(self, echo):
        self.echo, self.k, self.seconds = echo, 0, {}

    @contextmanager
    def __call__(self, key: str, text: str):
        self.k += 1
        self.echo(f"[{self.k}/{STAGES}] {text}")
        t = time.perf_counter()
        yield
        self.seconds[key] = round(time.perf_counter() - t, 2)


def _indent(echo, spaces: int = 2):
    return lambda text: echo(textwrap.indent(str(text), " " * spaces))


def _prepare(out: Path, overwrite: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {out}: a file, not a folder; give a folder for the demo's outputs")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} is not empty; use --overwrite to rewrite the demo's files in it, or choose another -o")
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_demo(
    output_dir, *, quick=False, device=None, seed=0, overwrite=False, threads=None, echo=print, progress=True
) -> dict:
    """Run the six stages (module docstring) into ``output_dir`` and return the summary (``summary.json``).

    Parameters
    ----------
    output_dir : folder, created if missing; refused if not empty unless ``overwrite``
    quick : bool, the :data:`QUICK` sizes (CI) instead of :data:`FULL`; every kind of output is written either way
    device : torch device or None (CPU); seed : int, seeds every random number
    threads : int or None, torch's CPU threads during the run (restored afterwards); None keeps torch's setting
    echo : callable(str), progress lines and the final summary; progress : bool, progress bars
    """
    with torch_threads(threads):
        return _run(Path(output_dir), quick=quick, device=device, seed=seed, overwrite=overwrite, echo=echo,
                    progress=progress)  # fmt: skip


def _run(output_dir: Path, *, quick, device, seed, overwrite, echo, progress) -> dict:
    import torch

    from calibration.demo_page import plot_training, summary_lines

    t0 = time.perf_counter()
    out, sizes = _prepare(output_dir, overwrite), (QUICK if quick else FULL)
    device = torch.device("cpu") if device is None else torch.device(device)
    stage, more = _Stages(echo), _indent(echo)
    summary = {"format": "optisim-demo", "format_version": 1}
    summary["settings"] = {
        "quick": bool(quick), "device": str(device), "seed": seed, "torch_threads": torch.get_num_threads(),
        "sizes": asdict(sizes),
    }  # fmt: skip
    with stage("lens", "physics: the default lens -> PSF grid -> figure"):
        lens, _ = lens_stage(out, grid=sizes.psf_grid, size=sizes.psf_size, device=device, progress=progress, echo=more)
    n, s = sizes.samples, sizes.crop
    with stage("forward", f"forward model: a dataset of {n} crops of {s}x{s} px, a blurred full-sensor scene"):
        _, info = forward_stage(
            lens, out, n=n, size=s, grid=sizes.forward_grid, seed=seed, device=device, progress=progress
        )
        summary["forward"] = {"samples": n, "crop": s, "grid": list(sizes.forward_grid), **info}
    with stage("training", f"training {' and '.join(MODELS.values())} with the same budget on dataset.h5"):
        summary["training"] = _train_models(out, sizes, seed=seed, device=device, progress=progress, echo=more)
        plot_training(out / "training.png", {MODELS[m]: _history(out / "training" / m) for m in MODELS})
    with stage("evaluation", "deblurring the held-out test crops: PSNR and SSIM before and after, per region"):
        summary["evaluation"] = _evaluate_models(out, sizes, device=device, progress=progress, echo=more)
    with stage("calibration", "calibrating a perturbed instrument from a bead image; its network on test scenes"):
        summary["instrument"] = _instrument(out, lens, sizes, seed=seed, device=device, progress=progress, echo=more)
    with stage("report", "writing index.html and summary.json"):
        _write_outputs(out, summary, stage.seconds, t0)
    _write_outputs(out, summary, stage.seconds, t0)  # again, with the report stage's own time
    for line in summary_lines(summary):
        echo(line)
    echo(f"wrote {out / 'index.html'} and {out / 'summary.json'}")
    return summary


def _write_outputs(out: Path, summary: dict, seconds: dict, t0: float) -> None:
    """Set the stage times and the total (s) and write ``index.html`` and ``summary.json``."""
    from calibration.demo_page import write_index

    summary["seconds"] = {**seconds, "total": round(time.perf_counter() - t0, 2)}
    write_index(out, summary)
    (out / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2) + "\n", encoding="utf-8")


def _deterministic(device) -> bool:
    """Deterministic algorithms: always on the CPU; on CUDA only with cuBLAS's workspace setting, without which
    torch refuses deterministic matrix products (set ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` for reproducible runs)."""
    return device.type == "cpu" or bool(os.environ.get("CUBLAS_WORKSPACE_CONFIG"))


def _train_models(out: Path, sizes: DemoSizes, *, seed, device, progress, echo) -> dict:
    """Stage 3: both U-Nets on ``dataset.h5``, same budget; returns ``{name: training summary}``."""
    from learn.config import TrainConfig
    from learn.models import ModelConfig
    from learn.train import train

    results = {}
    for name, label in MODELS.items():
        config = TrainConfig(
            model=ModelConfig(name=name, depth=3, width=sizes.width),
            data=str(out / "dataset.h5"),
            epochs=sizes.epochs,
            batch_size=sizes.batch_size,
            lr=sizes.lr,
            seed=seed,
            device=str(device),
            deterministic=_deterministic(device),
        )
        r = train(config, out / "training" / name, overwrite=True, progress=progress)
        best = r["best"]
        echo(
            f"{label}: {r['parameters']:,} parameters, {r['epochs']} epochs ({r['steps']} steps) in "
            f"{r['seconds_this_session']:.0f} s; best validation PSNR {best['val_psnr']:.2f} dB (epoch {best['epoch']})"
        )
        results[name] = {
            "label": label,
            "parameters": r["parameters"],
            "epochs": r["epochs"],
            "steps": r["steps"],
            "best_epoch": best["epoch"],
            "val_psnr": best["val_psnr"],
            "val_ssim": best["val_ssim"],
            "samples_per_s": r["train_samples_per_s"],
            "seconds": r["seconds_this_session"],
        }
    return results


def _history(run: Path) -> list[dict]:
    """The rows of a training run's ``metrics.csv`` (numbers as floats)."""
    with (run / "metrics.csv").open(newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _evaluate_models(out: Path, sizes: DemoSizes, *, device, progress, echo) -> dict:
    """Stage 4: each network and the baseline on the test split; returns ``{name: numbers}``."""
    from learn.evaluate import evaluate

    results = {}
    for name, label in MODELS.items():
        r = evaluate(
            out / "training" / name / "best.pt",
            out / "dataset.h5",
            split="test",
            grid=sizes.region_grid,
            baselines=BASELINES,
            device=device,
            output=out / "evaluation" / name,
            progress=progress,
        )
        m = r["methods"]
        echo(
            f"{label}: PSNR {_db(m['blurred']['psnr'])} -> {_db(m['model']['psnr'])}, SSIM "
            f"{m['blurred']['ssim']:.3f} -> {m['model']['ssim']:.3f} on {r['samples']} test crops (edge regions "
            f"{_db(m['blurred']['edge_psnr'])} -> {_db(m['model']['edge_psnr'])})"
        )
        results[name] = {"label": label, "samples": r["samples"], "grid": r["grid"], "methods": m}
    return results


def _db(value) -> str:
    """A PSNR for printing; None (no pixels in those regions) as n/a."""
    return "n/a" if value is None else f"{value:.2f} dB"


def _bead_image(lens, path: Path, n: int, seed: int) -> Path:
    """``n`` simulated beads imaged by ``lens`` (camera noise, ADU), written as a uint16 ImageJ TIFF with µm pixels.
    Windows of 63 px hold the strongly defocused corner beads; beads lie at least 60 px apart."""
    import tifffile

    from optisim.beads import simulate_bead_image

    image, _ = simulate_bead_image(
        lens, n, rng=np.random.default_rng(seed), photons=(3e4, 1e5), size=63, min_separation=60
    )
    counts = np.clip(np.rint(image[0]), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    res = 1 / lens.pixel_um
    tifffile.imwrite(path, counts, imagej=True, resolution=(res, res), metadata={"unit": "um"})
    return path


def _calibrate_config(design_file: Path, design, init: Path, sizes: DemoSizes, *, seed, device) -> CalibrateConfig:
    """The instrument's optics (from the design lens, also the sign prior), a parametric field model, and the
    network fine-tuned from ``init``."""
    optics = Optics(
        pixel_um=design.pixel_um, wavelength_um=design.reference_wavelength_um, na=design.na, lens=str(design_file)
    )
    network = NetworkConfig(
        init=str(init),
        epochs=sizes.calib_epochs,
        steps_per_epoch=sizes.calib_steps,
        batch_size=sizes.calib_batch,
        size=sizes.calib_size,
        val_samples=sizes.calib_val,
        lr=sizes.calib_lr,
        device=str(device),
        seed=seed,
    )
    return CalibrateConfig(
        optics=optics, model=CalibrationModelConfig(field_model="parametric", seed=seed), network=network
    )


def _instrument(out: Path, design, sizes: DemoSizes, *, seed, device, progress, echo) -> dict:
    """Stage 5: beads of the perturbed instrument -> calibration -> recovered terms and test scenes."""
    from calibration.demo_page import plot_field_terms, plot_instrument

    folder = out / "instrument"
    folder.mkdir(parents=True, exist_ok=True)
    truth = instrument_lens(design)
    truth.save(folder / "lens.toml")
    _bead_image(truth, folder / "beads.tif", sizes.beads, seed)
    echo(f"{sizes.beads} beads imaged by the instrument ({truth.description}) -> instrument/beads.tif")
    init = out / "training" / "cg-unet" / "best.pt"
    config = _calibrate_config(out / "lens.toml", design, init, sizes, seed=seed, device=device)
    cal = calibrate([str(folder / "beads.tif")], out / "calibration", config=config, overwrite=True,
                    progress=progress, echo=_indent(echo))  # fmt: skip
    result = {"description": truth.description, **_recovered(cal, truth, out / "calibration" / "lens.toml")}
    result["beads"]["simulated"] = sizes.beads
    plot_field_terms(folder / "field_terms.png", result["field_terms"])
    fwhm = result["bead_fwhm_px"]
    echo(
        f"recovered field terms within {result['field_term_max_difference_waves']:.4f} waves RMS of the truth; "
        f"median bead FWHM {fwhm['median_before']:.2f} -> {fwhm['median_after']:.2f} px after the calibrated network"
    )
    scenes, example = _test_scenes(truth, init, out / "calibration" / "model.pt", sizes, seed=seed, device=device,
                                   progress=progress)  # fmt: skip
    plot_instrument(folder / "regions.png", folder / "corner.png", scenes, example)
    result["test_scenes"] = {"scenes": sizes.test_scenes, "grid": list(sizes.region_grid), **scenes}
    result["calibrated_psnr_gain_db"] = scenes["calibrated"]["psnr"] - scenes["design"]["psnr"]
    echo(
        f"{sizes.test_scenes} instrument test scenes: PSNR blurred {scenes['blurred']['psnr']:.2f}, design-trained "
        f"{scenes['design']['psnr']:.2f}, calibrated {scenes['calibrated']['psnr']:.2f} dB"
    )
    return result


def _recovered(cal: dict, truth, lens_file: Path) -> dict:
    """The calibration (``calibration.json``'s dict) against the truth: field terms, per-bead wavefront errors
    (waves RMS), bead widths before and after the calibrated network (pixels)."""
    from calibration.bench import field_term_difference, wavefront_errors
    from optisim.lens import load_lens

    nolls = [m["noll"] for m in cal["zernike"]["modes"]]
    errors = wavefront_errors(cal["fits"]["table"], nolls, truth)
    terms = field_terms(truth.aberrations, cal["model"]["field"])
    width = cal["network"]["bead_width"]
    return {
        "truth": truth.aberrations.to_dict(),
        "beads": {"fitted": cal["fits"]["beads"], "held_out": (cal["validation"].get("holdout") or {}).get("beads", 0)},
        "field_degree": max(t["hx_power"] + t["hy_power"] for t in terms),
        "field_terms": terms,
        "field_term_max_difference_waves": field_term_difference(load_lens(lens_file).aberrations, truth.aberrations),
        "wavefront_error_median_waves": float(np.median(errors)),
        "wavefront_error_max_waves": float(errors.max()),
        "bead_fwhm_px": {k: width[k] for k in ("median_before", "median_after", "iqr_before", "iqr_after")},
        "bead_fwhm_beads": width["beads"],
    }


def field_terms(truth, fitted: dict) -> list[dict]:
    """True against fitted field-polynomial coefficients, one row per (Noll mode, hx power, hy power).

    Parameters
    ----------
    truth : :class:`optisim.aberrations.FieldModel` in waves RMS (Noll); fitted : ``calibration.json``'s
        ``model.field`` (:meth:`calibration.field.FieldFit.to_dict`), waves RMS at the same wavelength

    Returns
    -------
    list of dict ``noll``, ``name``, ``hx_power``, ``hy_power``, ``true``, ``fitted``, ``uncertainty``,
    ``difference`` (fitted - true), waves RMS per unit ``hx^p hy^q``; terms of either side, sorted by mode then power.
    """
    from optisim.zernike import mode_name, nm_to_noll

    if truth.unit != "waves_rms" or abs(truth.reference_wavelength_um - fitted["wavelength_um"]) > 1e-9:
        raise ValueError(
            f"truth: expected waves RMS at the fit's {fitted['wavelength_um']} µm, got {truth.unit} at "
            f"{truth.reference_wavelength_um} µm"
        )
    rows: dict = {}
    for t in truth.polynomial_terms():
        key = (nm_to_noll(*t.mode), t.hx_power, t.hy_power)
        row = rows.setdefault(key, {"name": mode_name(*t.mode), "true": 0.0, "fitted": 0.0, "uncertainty": None})
        row["true"] += t.coefficient
    for mode in fitted["modes"]:
        for t in mode["terms"]:
            key = (mode["noll"], t["hx_power"], t["hy_power"])
            row = rows.setdefault(key, {"name": mode["name"], "true": 0.0, "fitted": 0.0, "uncertainty": None})
            row["fitted"] += t["coefficient"]
            row["uncertainty"] = t["uncertainty"]
    return [
        {"noll": j, "hx_power": p, "hy_power": q, **r, "difference": r["fitted"] - r["true"]}
        for (j, p, q), r in sorted(rows.items(), key=lambda item: (item[0][0], item[0][1] + item[0][2], item[0][2]))
    ]


def _test_scenes(truth, design_ckpt: Path, calibrated_ckpt: Path, sizes: DemoSizes, *, seed, device, progress):
    """Full-sensor scenes of the instrument deblurred by the design-trained and the calibrated network.

    Returns ``({"blurred"|"design"|"calibrated": RegionMetrics.result()}, first scene's images (y, x) by name)``.
    """
    import torch
    from tqdm import tqdm

    from learn.checkpoint import load_model
    from learn.infer import deblur_image
    from learn.metrics import RegionMetrics
    from optisim.lowrank import EigenPSFs
    from optisim.noise import CameraNoise
    from optisim.samples import SampleGenerator, make_source

    model = EigenPSFs.from_lens(truth, grid=sizes.forward_grid, device=device)
    gen = SampleGenerator(
        truth, make_source("synthetic"), size=min(truth.sensor_shape), seed=seed, noise=CameraNoise(), model=model
    )
    nets = {
        name: load_model(path, device=device)[0]
        for name, path in (("design", design_ckpt), ("calibrated", calibrated_ckpt))
    }
    metrics = {name: RegionMetrics(truth.sensor_shape, sizes.region_grid) for name in ("blurred", *nets)}
    example = {}
    for i in tqdm(range(sizes.test_scenes), desc="instrument scenes", unit="scene", disable=not progress, leave=False):
        s = gen.sample(TEST_SCENE_START + i)
        images = {"blurred": s.blurred}
        images.update({k: deblur_image(net, s.blurred, offset=s.offset, device=device) for k, net in nets.items()})
        for name, image in images.items():
            metrics[name].update(torch.from_numpy(image)[None], torch.from_numpy(s.sharp)[None], [s.offset])
        example = example or {"sharp": s.sharp, **images}
    return {name: m.result() for name, m in metrics.items()}, example
