"""``optisim experiment``: the paper's experiments (``conv1d``: Section IV.A, Fig. 3; ``deblur2d``: IV.B, Fig. 4b)."""

from __future__ import annotations

from pathlib import Path

import click

from optisim._threads import torch_threads
from optisim.cli._options import resolve_device

QUICK = {"steps": 300, "samples": 1000, "repeat": 5}


@click.group()
def experiment():
    """The paper's experiments."""


class _Bars:
    """One tqdm bar per model, for :func:`learn.experiments.conv1d.run_conv1d`'s ``progress`` callback."""

    def __init__(self):
        self.bar, self.name = None, None

    def __call__(self, name, done, total):
        from tqdm import tqdm

        if name != self.name:
            self.close()
            self.bar, self.name = tqdm(total=total, desc=name, unit="step", disable=None), name
        self.bar.update(done - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


@experiment.command("conv1d")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default="experiments/conv1d",
    show_default=True,
    help="Folder for conv1d.png, conv1d.json and conv1d_matrices.npz.",
)
@click.option(
    "--steps",
    type=click.IntRange(1, None),
    default=None,
    help="Adam steps per model (default 10000; 300 with --quick).",
)
@click.option(
    "--samples",
    type=click.IntRange(10, None),
    default=None,
    help="Samples, 10% validation (default 10000; 1000 quick).",
)
@click.option("--seed", type=click.IntRange(0, None), default=0, show_default=True, help="Data and model seed.")
@click.option(
    "--model",
    "models",
    multiple=True,
    help="A model such as CNN(4,7,4), CCNN(4,7,4) or CG(1,7,3,3); repeat for several (default: the paper's set).",
)
@click.option("--quick", is_flag=True, help="Few steps and samples (a smoke run for CI; the numbers mean little).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="cpu", show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(1, None),
    default=1,
    show_default=True,
    help="CPU threads of torch. These models are tiny: one thread is fastest, and several slow down tenfold on a "
    "busy machine.",
)
def conv1d_cmd(output, steps, samples, seed, models, quick, device, threads):
    """Learn the 1D spatially varying convolution matrix H of Eq. (5) with CNNs, CoordConv and CoordGate (Fig. 3).

    Prints a table of parameters, validation PSNR (10 log10(1/MSE)) and inference time per model, and writes the
    figure (H and each learned matrix; PSNR against inference time), the numbers (JSON) and the matrices (npz).
    """

    from learn.experiments.conv1d import (
        DEFAULT_BATCH,
        DEFAULT_MODELS,
        DEFAULT_STEPS,
        format_conv1d,
        model_name,
        parse_model,
        run_conv1d,
        save_conv1d,
    )

    specs = [parse_model(text) for text in models] or list(DEFAULT_MODELS)
    steps = steps or (QUICK["steps"] if quick else DEFAULT_STEPS)
    samples = samples or (QUICK["samples"] if quick else 10000)
    repeat = QUICK["repeat"] if quick else 20
    dev = resolve_device(device)
    bars = _Bars()
    try:
        with torch_threads(threads):
            results = run_conv1d(
                models=specs, n_samples=samples, steps=steps, seed=seed, device=dev, progress=bars, repeat=repeat
            )
    finally:
        bars.close()
    config = {
        "models": [model_name(s) for s in specs],
        "n_samples": samples,
        "length": 30,
        "steps": steps,
        "batch_size": DEFAULT_BATCH,
        "lr": 1e-3,
        "optimizer": "Adam (torch defaults), MSE loss",
        "seed": seed,
        "device": str(dev),
        "quick": quick,
        "repeat": repeat,
        "threads": threads,
    }
    paths = save_conv1d(results, output, config=config)
    click.echo(format_conv1d(results))
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


@experiment.command("deblur2d")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default="experiments/deblur2d",
    show_default=True,
    help="Folder for results.json, table.md and fig4b.png.",
)
@click.option(
    "--source",
    default="synthetic",
    show_default=True,
    help="Sharp images: 'synthetic' (the scene generator) or a folder of images (a fifth of its files is held out "
    "for testing).",
)
@click.option(
    "--scale",
    type=float,
    default=1.0,
    show_default=True,
    help="Multiplies the image side (64 pixels) and the training steps per epoch (120, 12 epochs of batch 8); 1 takes "
    "about 30 min on 2 busy CPU cores with one thread.",
)
@click.option("--quick", is_flag=True, help="A tiny setting (a smoke run for CI; the numbers mean little).")
@click.option(
    "--models",
    multiple=True,
    help="A model NAME:DEPTH (unet, cg-unet, coordconv-unet, multiwiener), repeatable (default: the paper's eight).",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.option("--seed", type=click.IntRange(0, None), default=0, show_default=True, help="Data and model seed.")
@click.option(
    "--threads",
    type=click.IntRange(1, None),
    default=1,
    show_default=True,
    help="CPU threads of torch. On a busy 2-core machine two threads made every step ten to twenty times slower.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def deblur2d_cmd(output, source, scale, quick, models, device, seed, threads, quiet):
    """Deblur the default lens with U-Nets, CG U-Nets, CoordConv-UNet, MultiWienerNet and the baselines (Fig. 4b).

    Every model gets the same training budget on the same simulated images; all methods are evaluated on the same
    held-out test images (PSNR, SSIM, centre and edge PSNR, parameters, inference time). Prints the table and the
    test of the paper's claim; writes results.json, table.md and fig4b.png.
    """

    from learn.experiments.deblur2d import make_config, run_deblur2d
    from learn.experiments.deblur2d_report import claim_line, format_deblur2d, save_deblur2d

    changes = {"models": models} if models else {}
    dev = str(resolve_device(device))
    config = make_config(scale=scale, quick=quick, source=source, seed=seed, device=dev, **changes)
    with torch_threads(threads):
        result = run_deblur2d(config, progress=not quiet, echo=click.echo)
    paths = save_deblur2d(result, output)
    click.echo(format_deblur2d(result))
    click.echo(claim_line(result["claim"]))
    click.echo(f"run time {result['seconds'] / 60:.1f} min; wrote " + ", ".join(str(p) for p in paths.values()))
