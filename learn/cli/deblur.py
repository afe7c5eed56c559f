"""``optisim deblur``: deblur image files with a trained network or a classical spatially varying method
(:func:`learn.infer.deblur_files`)."""

from __future__ import annotations

from pathlib import Path

import click

from optisim.cli._options import forward_model_options, resolve_device

CLASSICAL = ("rl", "rl-tv", "wiener")
LENS_MODEL_OPTIONS = ("kernel_size", "grid", "rank", "tol")  # forward_model_options: they shape a model from --lens


class OffsetType(click.ParamType):
    """``Y0,X0`` -> (y0, x0), non-negative sensor pixels."""

    name = "Y0,X0"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            y0, x0 = (int(p) for p in str(value).split(","))
        except ValueError:
            self.fail(f"expected two integers Y0,X0 such as 128,256, got {value!r}", param, ctx)
        if y0 < 0 or x0 < 0:
            self.fail(f"expected non-negative sensor pixels Y0,X0, got {value!r}", param, ctx)
        return y0, x0


def _given(ctx: click.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _check_combination(ctx, method, paths, lens, psf_model):
    """``(checkpoint or None, input)`` from the positional paths; one-line errors for options that do not fit."""
    if len(paths) not in (1, 2):
        raise click.ClickException(f"expected [CHECKPOINT] INPUT (one or two paths), got {len(paths)} paths")
    if method == "network":
        if len(paths) == 1:
            raise click.ClickException(
                "--method network needs a CHECKPOINT before INPUT (or choose --method rl, rl-tv or wiener with "
                "--lens or --psf-model)"
            )
        flags = ["--lens", "--psf-model", "--iterations", "--tv", "--balance", "--min-change", "--halo"]
        flags += [f"--{n.replace('_', '-')}" for n in LENS_MODEL_OPTIONS]
        wrong = [f for f in flags if _given(ctx, f[2:].replace("-", "_"))]
        if wrong:
            raise click.ClickException(f"{wrong[0]} applies to --method rl, rl-tv or wiener, not to the network")
        return paths[0], paths[1]
    if len(paths) == 2:
        raise click.ClickException(
            f"--method {method} takes no CHECKPOINT: give INPUT only, with --lens or --psf-model (got {paths[0]} "
            f"and {paths[1]})"
        )
    if (lens is None) == (psf_model is None):
        got = "neither" if lens is None else "both"
        raise click.ClickException(f"--method {method} needs one of --lens and --psf-model, got {got}")
    if psf_model is not None:
        for name in LENS_MODEL_OPTIONS:
            if _given(ctx, name):
                raise click.ClickException(f"--{name.replace('_', '-')} applies to --lens, not to --psf-model")
    for flag, only in (("tv", "rl-tv"), ("balance", "wiener"), ("min_change", "rl rl-tv")):
        if _given(ctx, flag) and method not in only.split():
            raise click.ClickException(f"--{flag.replace('_', '-')} applies to --method {' or '.join(only.split())}")
    return None, paths[0]


@click.command("deblur")
@click.argument("paths", nargs=-1, required=True, metavar="[CHECKPOINT] INPUT", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="A .tif file for one input file, else a folder (NAME.tif per input).",
)
@click.option(
    "--method",
    type=click.Choice(["network", *CLASSICAL]),
    default="network",
    show_default=True,
    help="network: the trained CHECKPOINT; rl, rl-tv, wiener: spatially varying Richardson-Lucy, RL with total "
    "variation, Wiener (Tikhonov), with the PSF field of --lens or --psf-model (no CHECKPOINT).",
)
@click.option(
    "--lens", default=None, metavar="FILE_OR_PRESET", help="Lens file or preset for --method rl|rl-tv|wiener."
)
@click.option(
    "--psf-model",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Empirical PSF model (psf_model.nc) for --method rl|rl-tv|wiener; its coverage maps are read too.",
)
@forward_model_options
@click.option(
    "--iterations",
    type=click.IntRange(1, None),
    default=None,
    help="RL / RL-TV iterations (default 30) or Wiener conjugate-gradient steps (default 50).",
)
@click.option(
    "--tv",
    type=click.FloatRange(0, None),
    default=None,
    help="RL-TV weight λ on the normalised image (default 0.002, Dey et al. 2006).",
)
@click.option(
    "--balance",
    type=click.FloatRange(0, None, min_open=True),
    default=None,
    help="Wiener regularisation weight (default 0.01).",
)
@click.option(
    "--min-change",
    type=click.FloatRange(0, None, min_open=True),
    default=None,
    help="Stop RL / RL-TV once an iteration changes the image by less than this (relative L1); default: run all "
    "--iterations.",
)
@click.option(
    "--halo",
    type=click.IntRange(0, None),
    default=None,
    help="Classical methods: observed pixels deconvolved around each tile (at least the PSF radius; default twice it).",
)
@click.option(
    "--coverage",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Coverage maps (coverage.nc or psf_model.nc): warn where the image lies beyond the calibration's coverage.",
)
@click.option(
    "--confidence-map",
    is_flag=True,
    help="Also write NAME_confidence.tif (the model's confidence in [0, 1]) beside each output.",
)
@click.option(
    "--tile",
    type=click.IntRange(8, None),
    default=None,
    help="Deblur in tiles of this side (pixels), blended over --overlap; default: the whole image at once.",
)
@click.option("--overlap", type=click.IntRange(0, None), default=32, show_default=True, help="Tile overlap in pixels.")
@click.option(
    "--offset",
    type=OffsetType(),
    default=None,
    help="Sensor row,column of the image's first pixel (for an image smaller than the sensor).",
)
@click.option("--channel", type=click.IntRange(0, None), default=None, help="Channel of multi-channel images.")
@click.option(
    "--normalize/--no-normalize",
    default=True,
    show_default=True,
    help="Map the 0.1/99.9 percentiles to 0/1 for the method and back (off: the input is normalised already).",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def deblur(
    ctx,
    paths,
    output,
    method,
    lens,
    psf_model,
    kernel_size,
    grid,
    rank,
    tol,
    iterations,
    tv,
    balance,
    min_change,
    halo,
    coverage,
    confidence_map,
    tile,
    overlap,
    offset,
    channel,
    normalize,
    device,
    quiet,
):
    """Deblur INPUT (an image file, or a folder of TIFF/PNG/JPEG files).

    \b
    optisim deblur CHECKPOINT INPUT -o OUT                     the network (default)
    optisim deblur INPUT -o OUT --method rl --psf-model M.nc   classical methods take no CHECKPOINT

    Writes float32 TIFFs in the input's intensity units, with the input's pixel size and metadata plus the method,
    its model file and settings. The image must be a region of the sensor the network or PSF model describes: give
    its position with --offset unless it is the full frame. With --coverage (or a --psf-model holding coverage maps)
    a warning names the share of the image beyond the calibration's coverage (confidence < 0.5).
    """
    from learn.infer import deblur_files

    checkpoint, inputs = _check_combination(ctx, method, paths, lens, psf_model)
    if tile is not None and overlap >= tile:
        raise click.BadParameter(
            f"expected an overlap smaller than --tile {tile}, got {overlap}", param_hint="--overlap"
        )
    if confidence_map and coverage is None and psf_model is None:
        raise click.ClickException("--confidence-map needs --coverage FILE (or a --psf-model that holds coverage maps)")
    settings = None
    if method != "network":
        settings = {"iterations": iterations, "tv": tv, "balance": balance, "tol": min_change, "halo": halo}
        if lens is not None:
            settings.update(kernel_size=kernel_size, grid=grid, rank=rank, tol_model=tol)
    written = deblur_files(
        checkpoint,
        inputs,
        output,
        tile=tile,
        overlap=overlap,
        offset=offset,
        device=resolve_device(device),
        channel=channel,
        normalize=normalize,
        progress=not quiet,
        method=method,
        lens=lens,
        psf_model=psf_model,
        settings=settings,
        coverage=coverage,
        confidence_map=confidence_map,
    )
    for path in written:
        click.echo(f"wrote {path}")
    how = "whole" if tile is None else f"in {tile}x{tile} tiles overlapping by {overlap}"
    what = checkpoint.name if checkpoint is not None else f"--method {method} ({psf_model or lens})"
    click.echo(f"deblurred {len(written) // (2 if confidence_map else 1)} image(s) {how} with {what}")
