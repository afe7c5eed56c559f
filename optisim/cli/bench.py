"""``optisim bench``: benchmarks that print figures."""

from __future__ import annotations

import click

from optisim.cli import LazyGroup
from optisim.cli._options import resolve_device


@click.group(
    cls=LazyGroup,
    lazy_subcommands={
        "calibrate": "calibration.cli.bench:bench_calibrate",
        "faithful": "learn.cli.bench:bench_faithful",
        "learn": "learn.cli.bench:bench_learn",
    },
)
def bench():
    """Benchmarks (they print figures; nothing is asserted)."""


@bench.command("psf")
@click.option("--preset", default="default", show_default=True, help="Lens preset.")
@click.option("--grid", type=click.IntRange(1, 101), default=21, show_default=True, help="Field points per axis.")
@click.option("--size", type=click.IntRange(1, 1024), default=64, show_default=True, help="PSF pixels per side.")
@click.option("--pupil", type=click.IntRange(16, 2048), default=128, show_default=True, help="Pupil samples.")
@click.option("--repeat", type=click.IntRange(1, 100), default=10, show_default=True, help="Timed torch runs.")
@click.option(
    "--poppy-points",
    type=click.IntRange(1, None),
    default=None,
    help="Time poppy on this many field points only (default: all of them).",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="cpu", show_default=True)
def bench_psf_cmd(preset, grid, size, pupil, repeat, poppy_points, device):
    """PSFs per second of optisim and of poppy for the same PSFs, their ratio and difference."""
    from tqdm import tqdm

    from optisim.bench import bench_psf, format_bench_psf

    total = poppy_points or grid * grid
    with tqdm(total=total, desc="poppy reference", unit="psf", disable=None) as bar:
        r = bench_psf(
            preset=preset,
            grid=grid,
            size=size,
            pupil_samples=pupil,
            repeat=repeat,
            poppy_points=poppy_points,
            device=resolve_device(device),
            progress=bar.update,
        )
    click.echo(format_bench_psf(r))


@bench.command("forward")
@click.option("--size", type=click.IntRange(16, 8192), default=512, show_default=True, help="Image side, pixels.")
@click.option("--rank", type=click.IntRange(1, 256), default=8, show_default=True, help="Eigen-PSFs K.")
@click.option("--kernel-size", type=click.IntRange(3, 1023), default=31, show_default=True, help="PSF window.")
@click.option("--batch", "batches", type=click.IntRange(1, 256), multiple=True, default=(1, 4, 8), show_default=True)
@click.option("--repeat", type=click.IntRange(3, 1000), default=30, show_default=True, help="Timed runs.")
@click.option("--accuracy/--no-accuracy", default=True, show_default=True, help="Also the error-vs-rank table.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="cpu", show_default=True)
def bench_forward_cmd(size, rank, kernel_size, batches, repeat, accuracy, device):
    """Time of the low-rank blur in units of one FFT of the padded image, and its error against 'exact'."""
    from optisim.bench_forward import accuracy_table, bench_forward, format_accuracy, format_forward

    dev = resolve_device(device)
    r = bench_forward(size=size, rank=rank, kernel_size=kernel_size, batches=batches, repeat=repeat, device=dev)
    click.echo(format_forward(r))
    if accuracy:
        from tqdm import tqdm

        with tqdm(total=128 * 128, desc="exact per-pixel PSFs", unit="psf", disable=None) as bar:
            table = accuracy_table(device=dev, progress=bar.update)
        click.echo(format_accuracy(table))


@bench.command("dataset")
@click.option("--n", "n", type=click.IntRange(1, None), default=1000, show_default=True, help="Samples per run.")
@click.option("--size", type=click.IntRange(16, 4096), default=256, show_default=True, help="Sample side S.")
@click.option("--workers", type=click.IntRange(0, 256), multiple=True, default=(0, 2), show_default=True)
@click.option("--noise/--no-noise", default=True, show_default=True)
def bench_dataset_cmd(n, size, workers, noise):
    """Samples per second of `optisim dataset` (synthetic scenes, lowrank blur, noise, HDF5 writing)."""
    from optisim.bench_forward import bench_dataset, format_dataset

    click.echo(format_dataset(bench_dataset(n=n, size=size, workers=workers, noise=noise)))
