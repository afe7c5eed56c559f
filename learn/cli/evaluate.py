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
@click.option(
    "--point-sources/--no-point-sources",
    default=True,
    show_default=True,
    help="Also deblur a grid of point sources over the whole sensor: aspect ratio, FWHM and flux per field band.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def evaluate(checkpoint, data, split, output, grid, baselines, device, max_samples, point_sources, quiet):
    """Evaluate the network in CHECKPOINT and the baselines on a split of DATA (an `optisim dataset` file).

    Wiener balances are tuned on the val split; PSNR, SSIM and flux ratio (output / truth) are reported overall, per
    field region, and for the centre and edge of the sensor; point sources rendered with the dataset's forward model
    give each method's aspect ratio, FWHM and flux ratio per field band. Writes OUTPUT/metrics.json, examples.png and
    regions.png.
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
        point_sources=point_sources,
    )
    click.echo(format_table(result))
    click.echo(format_faithful(result))
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


def format_faithful(result: dict) -> str:
    """Flux ratio of the test crops (all, centre, edge regions) and, when measured, the point sources' median aspect
    ratio, FWHM (px) and flux ratio in the innermost and outermost field bands, one line per method."""

    def num(value, digits):
        return f"{value:.{digits}f}" if value is not None else "n/a"

    sources = result.get("point_sources")
    head = f"{'method':<16}{'flux':>7}{'centre':>8}{'edge':>7}"
    if sources:
        inner, outer = sources["bands"][0], sources["bands"][-1]
        head += f"  point sources ({inner} | {outer}): aspect, FWHM px, flux"
    lines = [head]
    for name, r in result["methods"].items():
        label = "input (blurred)" if name == "blurred" else name
        line = f"{label:<16}{num(r['flux_ratio'], 3):>7}{num(r['centre_flux_ratio'], 3):>8}"
        line += f"{num(r['edge_flux_ratio'], 3):>7}"
        if sources and name in sources["methods"]:
            c, e = sources["methods"][name][0], sources["methods"][name][-1]
            line += f"  {num(c['aspect'], 2)} | {num(e['aspect'], 2)}, {num(c['fwhm'], 2)} | {num(e['fwhm'], 2)}, "
            line += f"{num(c['flux_ratio'], 3)} | {num(e['flux_ratio'], 3)}"
        lines.append(line)
    if sources:
        t = sources["truth"]
        lines.append(
            f"{sources['sources']} point sources (truth FWHM {num(t[0]['fwhm'], 2)} px), noise-free, whole sensor"
        )
    return "\n".join(lines)
