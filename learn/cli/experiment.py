"""``optisim experiment``: the paper's experiments (``conv1d``: Section IV.A, Fig. 3)."""

from __future__ import annotations

from pathlib import Path

import click

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
    import torch

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
    bars, previous = _Bars(), torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results = run_conv1d(
            models=specs, n_samples=samples, steps=steps, seed=seed, device=dev, progress=bars, repeat=repeat
        )
    finally:
        bars.close()
        torch.set_num_threads(previous)
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
