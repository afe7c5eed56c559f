"""``optisim bench calibrate``: the calibration layer's measured figures, reproduced (:mod:`calibration.bench`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from optisim.cli._options import resolve_device

CASES = ("synthetic", "llsm", "confocal", "fibre")  # calibration.bench.CASES, kept here so --help imports nothing


@click.command("calibrate")
@click.option(
    "--case",
    "cases",
    type=click.Choice(CASES),
    multiple=True,
    default=CASES,
    show_default=True,
    help="Case to run, repeatable.",
)
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="OPTISIM_REAL_DATA",
    show_envvar=True,
    default=Path("../shared/data/real"),
    show_default=True,
    help="Folder of the real bead data (llsm, confocal and fibre cases).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench-calibrate"),
    show_default=True,
    help="Folder: one subfolder per case, and bench.json.",
)
@click.option("--network/--no-network", default=True, show_default=True, help="Train the network (fibre case).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="cpu", show_default=True)
@click.option("--beads", type=click.IntRange(1), default=50, show_default=True, help="Synthetic beads.")
@click.option("--size", type=click.IntRange(64), default=512, show_default=True, help="Synthetic sensor side, px.")
@click.option("--quiet", is_flag=True, help="No training progress bars.")
def bench_calibrate(cases, data, output, network, device, beads, size, quiet):
    """Calibration on synthetic beads (accuracy, time) and on the real bead images (fit quality, network).

    Prints each case's progress, then a table (case, figure, target, measured); writes OUTPUT/bench.json with
    every number and the machine. Nothing is asserted.
    """
    from calibration.bench import bench_calibrate as run
    from calibration.bench import format_table, real_data_files

    try:
        real_data_files(data, cases)  # before any case runs
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    result = run(output, cases=cases, data=data, network=network, device=resolve_device(device), beads=beads,
                 size=size, progress=not quiet, echo=click.echo)  # fmt: skip
    path = output / "bench.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    click.echo(format_table(result))
    click.echo(f"wrote {path}")
