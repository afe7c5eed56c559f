"""``optisim demo``: the main job end-to-end on built-in defaults."""

from __future__ import annotations

from pathlib import Path

import click

from optisim.cli._options import resolve_device


@click.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo"),
    show_default=True,
    help="Folder for every output.",
)
@click.option("--quick", is_flag=True, help="Reduced sizes (used by CI); same outputs.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
def demo(output, quick, device):
    """Run the whole pipeline on built-in defaults: no files needed.

    Today: make the default lens (defocus growing toward the edges), compute its PSF grid and draw it; blur a
    synthetic full-sensor scene with it (plus camera noise) and write a small training dataset.
    """
    from optisim.demo import run_demo

    run_demo(output, quick=quick, device=resolve_device(device), echo=click.echo)
