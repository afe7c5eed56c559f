"""``optisim demo``: the whole product end-to-end on built-in defaults (:func:`calibration.demo.run_demo`)."""

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
    help="Folder for every output (refused if not empty, unless --overwrite).",
)
@click.option("--quick", is_flag=True, help="Reduced sizes (CI, about 2 minutes); the same kinds of outputs.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Seeds every random number.")
@click.option("--overwrite", is_flag=True, help="Rewrite the demo's files in a folder that is not empty.")
@click.option(
    "--threads",
    type=click.IntRange(0),
    default=1,
    show_default=True,
    help="torch CPU threads (0: torch's default, one per core). One is fastest on a shared or busy machine, where "
    "every parallel operation waits for a thread that another process holds up.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(output, quick, device, seed, overwrite, threads, quiet):
    """Run the whole product on built-in defaults: no files needed; OUTPUT/index.html shows everything.

    \b
    1. the default lens (defocus growing toward the edges) and its PSF grid;
    2. a small training dataset from the built-in scene generator;
    3. a CG U-Net(3) and a U-Net(3) trained with the same budget;
    4. both deblur held-out test crops: PSNR/SSIM before and after, per field region;
    5. a perturbed "real instrument" images beads: calibration recovers its aberrations,
       fine-tunes the CG U-Net, and both networks deblur test scenes of the instrument;
    6. OUTPUT/index.html and OUTPUT/summary.json with every figure and number.
    """
    from calibration.demo import run_demo

    run_demo(
        output,
        quick=quick,
        device=resolve_device(device),
        seed=seed,
        overwrite=overwrite,
        threads=threads or None,
        echo=click.echo,
        progress=not quiet,
    )
