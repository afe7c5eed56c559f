"""``optisim bench``: benchmarks that print figures."""

from __future__ import annotations

import click

from optisim.cli._options import resolve_device


@click.group()
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
