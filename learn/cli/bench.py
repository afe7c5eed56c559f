"""``optisim bench learn`` and ``optisim bench faithful``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from optisim.cli._options import resolve_device


@click.command("learn")
@click.option(
    "--data",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Dataset to train on (default: generate one from the default lens into OUTPUT/data.h5).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench-learn"),
    show_default=True,
    help="Folder for the dataset, runs and bench.json.",
)
@click.option(
    "--n", "n", type=click.IntRange(32, None), default=2000, show_default=True, help="Samples of the generated dataset."
)
@click.option(
    "--size", type=click.IntRange(16, None), default=64, show_default=True, help="Crop side of the generated dataset."
)
@click.option(
    "--model",
    "models",
    multiple=True,
    default=("unet:3", "cg-unet:3", "unet:5"),
    show_default=True,
    help="NAME:DEPTH, repeatable.",
)
@click.option(
    "--steps",
    type=click.IntRange(1, None),
    default=600,
    show_default=True,
    help="Optimiser steps per model (equal for all).",
)
@click.option("--batch-size", type=click.IntRange(1, None), default=16, show_default=True)
@click.option("--width", type=click.IntRange(1, 1024), default=16, show_default=True, help="First-level channels.")
@click.option("--infer-size", type=click.IntRange(16, 8192), default=512, show_default=True)
@click.option("--infer-width", type=click.IntRange(1, 1024), default=32, show_default=True)
@click.option("--repeat", type=click.IntRange(3, 1000), default=10, show_default=True, help="Timed inference runs.")
@click.option("--skip-training", is_flag=True, help="Only the inference timings.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="cpu", show_default=True)
def bench_learn(
    data, output, n, size, models, steps, batch_size, width, infer_size, infer_width, repeat, skip_training, device
):
    """CG U-Net against U-Net at equal training steps (PSNR centre/edge), CoordGate overhead, throughput."""
    from learn.bench import bench_accuracy, bench_inference, format_accuracy, format_inference, parse_model_spec

    device = resolve_device(device)
    specs = [parse_model_spec(m) for m in models]
    output.mkdir(parents=True, exist_ok=True)
    result = {}
    if not skip_training:
        if data is None:
            data = output / "data.h5"
            _make_dataset(data, n, size)
        rows = bench_accuracy(
            data,
            output / "runs",
            specs=specs,
            steps=steps,
            batch=batch_size,
            width=width,
            device=device,
            echo=click.echo,
        )
        result["accuracy"] = rows
        click.echo(format_accuracy(rows))
    inference = bench_inference(size=infer_size, depths=(3, 5), width=infer_width, repeat=repeat, device=device)
    result["inference"] = inference
    click.echo(format_inference(inference))
    (output / "bench.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    click.echo(f"wrote {output / 'bench.json'}")


def _make_dataset(path: Path, n: int, size: int) -> None:
    from optisim.dataset import DatasetConfig, write_dataset
    from optisim.lens import load_preset
    from optisim.samples import make_source

    click.echo(f"dataset: {n} samples of {size}x{size} from the default lens -> {path}")
    write_dataset(
        path, load_preset("default"), make_source("synthetic"), DatasetConfig(n=n, size=size, seed=0), workers=2
    )


@click.command("faithful")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench-faithful"),
    show_default=True,
    help="Folder for the lens files, runs and bench.json.",
)
@click.option("--lens", "lenses", multiple=True, default=("default", "astig-coma"), show_default=True,
              type=click.Choice(["default", "astig-coma"]), help="Lenses, repeatable.")  # fmt: skip
@click.option("--sensor", type=click.IntRange(128, 4096), default=384, show_default=True, help="Sensor side (px).")
@click.option("--steps", type=click.IntRange(1, None), default=300, show_default=True, help="Steps per network.")
@click.option("--size", type=click.IntRange(16, None), default=128, show_default=True,
              help="Training crop side (px); at least twice the PSF window, or the networks learn little.")
@click.option("--width", type=click.IntRange(1, None), default=16, show_default=True,
              help="First-level channels of every network.")  # fmt: skip
@click.option("--flux-weight", "flux_weights", multiple=True, type=click.FloatRange(0, None), default=(0.0, 1.0),
              show_default=True, help="flux_weight of each network, repeatable (equal budgets).")  # fmt: skip
@click.option("--keep-flux/--no-keep-flux", default=True, show_default=True,
              help="Also measure each network with the flux-keeping output layer.")  # fmt: skip
@click.option("--rl-iterations", type=click.IntRange(1, None), default=100, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="cpu", show_default=True)
def bench_faithful(output, lenses, sensor, steps, size, width, flux_weights, keep_flux, rl_iterations, device):
    """Point sources after deblurring: aspect ratio, FWHM and flux per field band (networks with and without the
    flux term at equal budgets, and RL with the true model)."""
    from learn.bench import machine_info
    from learn.bench_faithful import bench_faithful as run
    from learn.bench_faithful import format_faithful

    device = resolve_device(device)
    info = machine_info(device)
    results = run(output, lenses=lenses, sensor=sensor, steps=steps, size=size, width=width, flux_weights=flux_weights,
                  keep_flux=keep_flux, rl_iterations=rl_iterations, device=device, echo=click.echo)  # fmt: skip
    click.echo(format_faithful(results))
    (output / "bench.json").write_text(
        json.dumps({"machine": info, "results": results}, indent=2, default=float) + "\n"
    )
    click.echo(f"wrote {output / 'bench.json'}")
