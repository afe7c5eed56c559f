"""``optisim train`` and ``optisim models``."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import click

from optisim.cli._options import NoiseType, forward_model_options

MODEL_CHOICE = click.Choice(["unet", "cg-unet", "coordconv-unet", "multiwiener"])


def model_options(func):
    """The architecture options, shared by `train` and `bench learn`."""
    options = [
        click.option(
            "--model", "model_name", type=MODEL_CHOICE, default="cg-unet", show_default=True, help="Architecture."
        ),
        click.option(
            "--depth",
            type=click.IntRange(1, 8),
            default=3,
            show_default=True,
            help="U-Net levels d (the paper's U-Net(d), 3..6).",
        ),
        click.option(
            "--width",
            type=click.IntRange(1, 1024),
            default=32,
            show_default=True,
            help="Channels at the first level (doubling per level).",
        ),
        click.option(
            "--gate-hidden",
            type=click.IntRange(1, 4096),
            default=32,
            show_default=True,
            help="CoordGate encoder width.",
        ),
        click.option(
            "--gate-layers", type=click.IntRange(1, 16), default=3, show_default=True, help="CoordGate encoder layers."
        ),
        click.option(
            "--gate-activation",
            type=click.Choice(["relu", "gelu", "silu", "tanh", "none"]),
            default="relu",
            show_default=True,
            help="CoordGate encoder activation.",
        ),
        click.option(
            "--fourier",
            type=click.IntRange(0, 16),
            default=0,
            show_default=True,
            help="Octaves of Fourier features of the coordinates (0: raw coordinates).",
        ),
        click.option(
            "--psf-count",
            type=click.IntRange(1, 256),
            default=9,
            show_default=True,
            help="MultiWienerNet: PSFs (a square number, an n x n grid over the field).",
        ),
        click.option(
            "--residual/--no-residual",
            default=True,
            show_default=True,
            help="Predict the correction to the blurred input.",
        ),
        click.option(
            "--keep-flux/--no-keep-flux",
            default=False,
            show_default=True,
            help="The output keeps the input's light in every box of the PSF's side (a layer applied when the "
            "network is used, not in training).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def model_config(o: dict):
    from learn.models import ModelConfig

    return ModelConfig(
        name=o["model_name"],
        depth=o["depth"],
        width=o["width"],
        gate_hidden=o["gate_hidden"],
        gate_layers=o["gate_layers"],
        gate_activation=o["gate_activation"],
        gate_fourier=o["fourier"],
        psf_count=o["psf_count"],
        residual=o["residual"],
        keep_flux=o["keep_flux"],
    )


@click.command("train")
@click.argument("data", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder (checkpoints, metrics.csv, summary.json).",
)
@model_options
@click.option(
    "--simulate",
    "simulate_lens",
    default=None,
    help="Train on samples simulated on the fly from this lens file or preset (instead of DATA).",
)
@click.option(
    "--psf-model",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Train on samples simulated on the fly with this empirical PSF model file (from `optisim calibrate`).",
)
@click.option("--source", default="synthetic", show_default=True,
              help="--simulate: 'synthetic', an image folder, or 'synthetic:S+DIR' (a share S of scenes, default 0.5).")
@click.option("--channel", type=click.IntRange(0, None), default=None, help="--simulate: channel of the images.")
@click.option("--size", type=click.IntRange(1, None), default=128, show_default=True, help="--simulate: crop side.")
@click.option("--noise", type=NoiseType(), default="on", show_default=True, help="--simulate: camera noise.")
@forward_model_options
@click.option(
    "--steps-per-epoch",
    type=click.IntRange(1, None),
    default=100,
    show_default=True,
    help="--simulate: batches per epoch.",
)
@click.option(
    "--val-samples",
    type=click.IntRange(1, None),
    default=64,
    show_default=True,
    help="--simulate: fixed validation samples.",
)
@click.option("--epochs", type=click.IntRange(1, None), default=50, show_default=True)
@click.option(
    "--batch-size",
    type=click.IntRange(1, None),
    default=8,
    show_default=True,
    help="Global batch (split over torchrun processes).",
)
@click.option("--lr", type=click.FloatRange(0, None, min_open=True), default=1e-3, show_default=True)
@click.option(
    "--patience",
    type=click.IntRange(0, None),
    default=10,
    show_default=True,
    help="Halve the learning rate after this many epochs without validation improvement.",
)
@click.option(
    "--early-stop",
    type=click.IntRange(0, None),
    default=0,
    show_default=True,
    help="Stop after this many epochs without improvement (0: never).",
)
@click.option("--loss", type=click.Choice(["mse", "l1", "ssim-l1"]), default="mse", show_default=True)
@click.option(
    "--flux-weight",
    type=click.FloatRange(0, None),
    default=None,
    help="Weight of the local flux term added to the loss (keeps each source's light; default: TrainConfig's).",
)
@click.option("--workers", type=click.IntRange(0, None), default=0, show_default=True, help="DataLoader workers.")
@click.option("--seed", type=click.IntRange(0, None), default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.option(
    "--amp",
    type=click.Choice(["none", "bf16", "fp16"]),
    default="none",
    show_default=True,
    help="Mixed precision (fp16 on CUDA only).",
)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option("--deterministic", is_flag=True, help="Deterministic algorithms only.")
@click.option("--tensorboard", is_flag=True, help="Also write TensorBoard logs to OUTPUT/tensorboard.")
@click.option(
    "--init",
    "init",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Start from this checkpoint's weights (fine-tuning; same architecture).",
)
@click.option("--resume", is_flag=True, help="Continue the run in OUTPUT from its last.pt.")
@click.option("--overwrite", is_flag=True, help="Replace the run in OUTPUT.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(
    data,
    output,
    simulate_lens,
    psf_model,
    source,
    channel,
    size,
    noise,
    kernel_size,
    grid,
    rank,
    tol,
    steps_per_epoch,
    val_samples,
    epochs,
    batch_size,
    lr,
    patience,
    early_stop,
    loss,
    flux_weight,
    workers,
    seed,
    device,
    amp,
    compile_,
    deterministic,
    tensorboard,
    init,
    resume,
    overwrite,
    quiet,
    **model_opts,
):
    """Train a deblurring network on DATA (an `optisim dataset` file) or on the fly with --simulate LENS.

    Writes OUTPUT/best.pt, last.pt, metrics.csv and summary.json. Under torchrun the same command trains with
    DistributedDataParallel. After an interruption, rerun with --resume.
    """
    from learn.config import SimulateConfig, TrainConfig
    from learn.train import train as run_training

    simulate = None
    if simulate_lens is not None and psf_model is not None:
        raise click.UsageError("give --simulate LENS or --psf-model FILE, not both")
    if simulate_lens is not None or psf_model is not None:
        simulate = SimulateConfig(
            lens=simulate_lens,
            psf_model=None if psf_model is None else str(psf_model),
            source=source,
            channel=channel,
            size=size,
            noise=None if noise is None else noise.to_dict(),
            kernel_size=kernel_size,
            grid=grid,
            rank=rank,
            tol=tol,
            steps_per_epoch=steps_per_epoch,
            val_samples=val_samples,
        )
    config = TrainConfig(
        model=model_config(model_opts),
        data=None if data is None else str(data),
        simulate=simulate,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        patience=patience,
        early_stop=early_stop,
        loss=loss,
        workers=workers,
        seed=seed,
        device=device,
        amp=amp,
        compile=compile_,
        deterministic=deterministic,
        tensorboard=tensorboard,
        init=None if init is None else str(init),
        **({} if flux_weight is None else {"flux_weight": flux_weight}),
    )
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        summary = run_training(config, output, resume=resume, overwrite=overwrite, progress=not quiet, echo=click.echo)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: rerun with --resume to continue {output}", err=True)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if summary["rank"] != 0:
        return
    best = summary["best"] or {}
    click.echo(
        f"{summary['model']}, {summary['parameters']:,} parameters: {summary['epochs']} epochs, best epoch "
        f"{best.get('epoch')} with validation PSNR {best.get('val_psnr', float('nan')):.2f} dB, SSIM "
        f"{best.get('val_ssim', float('nan')):.4f}; {summary['train_samples_per_s'] or 0:.1f} samples/s "
        f"on {summary['device']} -> {output}/best.pt"
    )


def _terminate(signum, frame):
    raise KeyboardInterrupt


@click.command("models")
@click.option("--width", type=click.IntRange(1, 1024), default=32, show_default=True, help="First-level channels.")
@click.option("--depths", default="3,4,5,6", show_default=True, help="Comma-separated depths.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models(width, depths, as_json):
    """Parameter counts of every architecture and depth."""
    from learn.models import model_table

    try:
        depth_list = [int(d) for d in depths.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {depths!r}", param_hint="--depths") from None
    rows = model_table(width=width, depths=depth_list)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    names = list(rows[0]["parameters"])
    click.echo(f"parameters at width {width} (CoordGate encoder 3 layers x 32; MultiWienerNet 9 PSFs of 31x31)")
    click.echo(f"{'depth':>5}  " + "  ".join(f"{n:>15}" for n in names))
    for row in rows:
        click.echo(f"{row['depth']:>5}  " + "  ".join(f"{row['parameters'][n]:>15,}" for n in names))
