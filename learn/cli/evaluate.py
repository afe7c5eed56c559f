"""``optisim evaluate``: a checkpoint and the baselines on a dataset split (:func:`learn.evaluate.evaluate`)."""

from __future__ import annotations

from pathlib import Path

import click

from optisim.cli._options import GridType, resolve_device

DEFAULT_BASELINES = "blurred,wiener,wiener-lowrank,rl,rl-lowrank"


@click.command("evaluate")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("data", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True, help="Split to report."
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for metrics.json, examples.png and regions.png.",
)
@click.option("--grid", type=GridType(), default="4x4", show_default=True, help="Field regions GYxGX of the sensor.")
@click.option(
    "--baselines",
    default=DEFAULT_BASELINES,
    show_default=True,
    help="Comma-separated baselines ('' for none; the input 'blurred' is always reported).",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.option("--max-samples", type=click.IntRange(1, None), default=None, help="Only the first N samples.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def evaluate(checkpoint, data, split, output, grid, baselines, device, max_samples, quiet):
    """Evaluate the network in CHECKPOINT and the baselines on a split of DATA (an `optisim dataset` file).

    Wiener balances are tuned on the val split; PSNR and SSIM are reported overall, per field region, and for the
    centre and edge of the sensor. Writes OUTPUT/metrics.json, examples.png and regions.png.
    """
    from learn.evaluate import evaluate as run_evaluation

    names = [name.strip() for name in baselines.split(",") if name.strip()]
    result = run_evaluation(
        checkpoint,
        data,
        split=split,
        grid=grid,
        baselines=names,
        device=resolve_device(device),
        max_samples=max_samples,
        output=output,
        progress=not quiet,
    )
    click.echo(format_table(result))
    click.echo(f"{result['samples']} {split} samples in {result['seconds']:.1f} s -> {output}/metrics.json")


def format_table(result: dict) -> str:
    """The methods of an evaluation result as a text table: method, PSNR, SSIM, centre and edge PSNR."""

    def num(value, digits):
        return f"{value:.{digits}f}" if value is not None else "n/a"

    lines = [f"{'method':<16}{'PSNR':>9}{'SSIM':>9}{'centre PSNR':>13}{'edge PSNR':>11}"]
    for name, r in result["methods"].items():
        label = "input (blurred)" if name == "blurred" else name
        lines.append(
            f"{label:<16}{num(r['psnr'], 2):>9}{num(r['ssim'], 4):>9}"
            f"{num(r['centre_psnr'], 2):>13}{num(r['edge_psnr'], 2):>11}"
        )
    return "\n".join(lines)
