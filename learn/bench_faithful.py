"""``optisim bench faithful``: is the inverse faithful? Flux and shape of point sources across the field.

For each lens (the default preset, and :func:`astig_coma_lens`, strong field-dependent astigmatism and coma), small
CG U-Nets are trained on samples simulated on the fly, without noise, with equal budgets (the same steps, batch,
crop, seed and initial weights) at each ``flux_weight`` (0: the pixel loss alone); each is measured as trained and
with the flux-keeping output layer (:func:`learn.models.keep_local_flux`, which acts when a network is used, never
in training, so the same weights serve both). Then a jittered grid of point
sources over the whole sensor is blurred by the lens's forward model (the one the networks were trained with) and
deblurred by every network and by spatially varying Richardson-Lucy with the true model
(:func:`learn.baselines.run_baseline` ``'rl-lowrank'``); :func:`learn.pointsources.point_source_report` gives the
median aspect ratio, FWHM and flux ratio (deblurred / true flux) per field band. Targets (issue 13): at the edge of
the field (``h >= 0.85``) aspect ratio <= 1.2 and flux within ±10 % of the truth.

Nothing is asserted; the figures are printed and written to ``bench.json``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from learn.pointsources import point_source_report
from optisim.aberrations import FieldModel
from optisim.lens import Lens, load_preset

__all__ = ["FAITHFUL_TARGETS", "astig_coma_lens", "bench_faithful", "format_faithful", "lens_for_bench"]

GRID, TOL = (9, 9), 1e-2  # the forward model's PSF grid and rank tolerance (training data and point sources alike)
FAITHFUL_TARGETS = {"aspect": 1.2, "flux": 0.10}  # edge band: aspect <= 1.2, |flux ratio - 1| <= 10 %


def astig_coma_lens(sensor_shape=(256, 256)) -> Lens:
    """The default preset's optics (NA 0.5 at 525 nm, 0.25 µm pixels) with strong field-dependent astigmatism
    (0.3 waves RMS x h², 0.6 at the corners) and coma (0.3 waves RMS x h, 0.42 at the corners), no field curvature:
    PSFs elongated and asymmetric toward the edges, aspect ratio about 1.4 at ``h >= 0.85`` after blurring a
    sub-resolution source."""
    aberrations = FieldModel(astigmatism=0.3, coma=0.3, reference_wavelength_um=0.525)
    return load_preset("default").replace(
        name="astig-coma",
        sensor_shape=tuple(int(v) for v in sensor_shape),
        aberrations=aberrations,
        description="default optics with strong field-dependent astigmatism (0.3 h²) and coma (0.3 h), waves RMS",
    )


def lens_for_bench(name: str, sensor_shape) -> Lens:
    """``'default'`` (the preset) or ``'astig-coma'`` (:func:`astig_coma_lens`) on a ``sensor_shape`` sensor."""
    if name == "default":
        return load_preset("default").replace(sensor_shape=tuple(int(v) for v in sensor_shape))
    if name == "astig-coma":
        return astig_coma_lens(sensor_shape)
    raise ValueError(f"lens: expected 'default' or 'astig-coma', got {name!r}")


VALIDATION = (1_000_000, 32)  # first index and count of the simulated crops every network is validated on


def _train(lens_file: Path, run: Path, flux_weight: float, *, kernel_size, size, steps, batch, width, seed, device):
    from learn.config import SimulateConfig, TrainConfig
    from learn.models import ModelConfig
    from learn.train import train

    simulate = SimulateConfig(lens=str(lens_file), size=size, noise=None, kernel_size=kernel_size, grid=GRID, tol=TOL,
                              steps_per_epoch=steps, val_samples=16)  # fmt: skip
    model = ModelConfig(name="cg-unet", depth=3, width=width)
    config = TrainConfig(model=model, simulate=simulate, epochs=1,
                         batch_size=batch, seed=seed, device=str(device), flux_weight=flux_weight)  # fmt: skip
    return train(config, run, overwrite=True, progress=False)


def bench_faithful(out, *, lenses=("default", "astig-coma"), sensor: int = 384, size: int = 128, steps: int = 300,
                   batch: int = 8, width: int = 16, flux_weights=(0.0, 1.0), keep_flux: bool = True,
                   rl_iterations: int = 100, seed: int = 0, device="cpu", echo=print) -> list[dict]:  # fmt: skip
    """Train and measure (module docstring); one result dict per lens.

    Parameters
    ----------
    out : folder for the lens files and the training runs
    lenses : names for :func:`lens_for_bench`; sensor : int, square sensor side (pixels)
    size, steps, batch, width : training crop side, optimiser steps (one epoch), batch and first-level channels,
        equal for every network; flux_weights : the ``TrainConfig.flux_weight`` of each network; keep_flux : also
        measure each network with the flux-keeping output layer (``ModelConfig.keep_flux``)
    rl_iterations : Richardson-Lucy iterations; seed : training seed (initial weights, samples) and source jitter

    Returns
    -------
    list of dicts: ``lens``, ``kernel_size``, ``rank``, ``train_seconds`` per network, ``val_psnr`` (dB, mean PSNR
    on the simulated validation crops :data:`VALIDATION`, ``blurred`` and every network method), and the
    :func:`learn.pointsources.point_source_report` (``report``) with methods ``blurred``, ``rl-lowrank``,
    ``network flux=W`` for each W and, with ``keep_flux``, ``network flux=W keep-flux``.
    """
    import torch

    from learn.baselines import run_baseline
    from learn.checkpoint import load_model
    from learn.infer import deblur_image
    from learn.metrics import psnr
    from optisim.lowrank import EigenPSFs, kernel_size_for
    from optisim.samples import SampleGenerator, make_source

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in lenses:
        lens = lens_for_bench(name, (sensor, sensor))
        lens_file = lens.save(out / f"{name}.toml")
        k = kernel_size_for(lens)
        forward = EigenPSFs.from_lens(lens, kernel_size=k, grid=GRID, tol=TOL)  # the training data's own model
        methods = {"blurred": lambda b: b}
        methods["rl-lowrank"] = lambda b, f=forward: run_baseline(
            "rl-lowrank", torch.from_numpy(b)[None], model=f, offsets=[[0, 0]], iterations=rl_iterations
        )[0]
        generator = SampleGenerator(lens, make_source("synthetic"), size=size, seed=seed, kernel_size=k, grid=GRID,
                                    tol=TOL, model=forward)  # fmt: skip
        val = generator.batch(range(VALIDATION[0], VALIDATION[0] + VALIDATION[1]))
        val = {key: torch.as_tensor(np.asarray(val[key])) for key in ("blurred", "sharp", "offset")}
        val_psnr = {"blurred": float(psnr(val["blurred"][:, None], val["sharp"][:, None]).mean())}
        seconds = {}
        for w in flux_weights:
            label = f"network flux={w:g}"
            echo(f"{name}: training cg-unet(3) width {width}, {steps} steps of {batch} x {size}², flux_weight {w:g}")
            t0 = time.perf_counter()
            run = out / f"{name}-flux{w:g}"
            _train(lens_file, run, float(w), kernel_size=k, size=size, steps=steps, batch=batch, width=width,
                   seed=seed, device=device)  # fmt: skip
            seconds[label] = time.perf_counter() - t0
            for tag, kf in [("", False)] + ([(" keep-flux", True)] if keep_flux else []):
                model, _, _ = load_model(run / "last.pt", device=device)
                model.config = replace(model.config, keep_flux=kf)
                model.eval()
                with torch.no_grad():
                    pred = model(val["blurred"][:, None].to(device), val["offset"].to(device)).cpu()
                val_psnr[label + tag] = float(psnr(pred, val["sharp"][:, None]).mean())
                methods[label + tag] = lambda b, m=model: deblur_image(m, b, device=device)
        report = point_source_report(methods, forward, seed=seed)
        results.append({"lens": name, "kernel_size": k, "rank": forward.rank, "train_seconds": seconds,
                        "val_psnr": val_psnr, "report": report})  # fmt: skip
    return results


def format_faithful(results: list[dict]) -> str:
    """Per lens, one line per method and field band: sources, median aspect ratio, FWHM (px), flux ratio."""

    def num(value, digits):
        return f"{value:.{digits}f}" if value is not None else "n/a"

    lines = []
    for r in results:
        rep = r["report"]
        lines.append(f"lens {r['lens']} (PSF window {r['kernel_size']} px, rank {r['rank']}, {rep['sources']} sources, "
                     f"truth FWHM {num(rep['truth'][0]['fwhm'], 2)} px)")  # fmt: skip
        lines.append(f"  {'method':<26}{'band':<12}{'n':>4}{'aspect':>8}{'FWHM':>7}{'flux':>7}  edge target")
        for name, rows in rep["methods"].items():
            for row in rows:
                mark = ""
                if row is rows[-1] and row["aspect"] is not None and row["flux_ratio"] is not None:
                    ok = row["aspect"] <= FAITHFUL_TARGETS["aspect"]
                    ok &= abs(row["flux_ratio"] - 1) <= FAITHFUL_TARGETS["flux"]
                    mark = "met" if ok else "missed"
                lines.append(
                    f"  {name:<26}{row['band']:<12}{row['sources']:>4}{num(row['aspect'], 2):>8}"
                    f"{num(row['fwhm'], 2):>7}{num(row['flux_ratio'], 3):>7}  {mark}"
                )
        psnr = r.get("val_psnr") or {}
        if psnr:
            lines.append(f"  validation PSNR ({VALIDATION[1]} simulated crops): "
                         + ", ".join(f"{name} {value:.2f} dB" for name, value in psnr.items()))  # fmt: skip
    lines.append("edge target (h >= 0.85): aspect <= 1.2 and flux ratio within 1 +- 0.10; noise-free point sources")
    return "\n".join(lines)
