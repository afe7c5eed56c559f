"""``optisim deblur``: deblur image files with a trained network (:func:`learn.infer.deblur_files`)."""

from __future__ import annotations

from pathlib import Path

import click

from optisim.cli._options import resolve_device


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


@click.command("deblur")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("inputs", metavar="INPUT", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="A .tif file for one input file, else a folder (NAME.tif per input).",
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
    help="Map the 0.1/99.9 percentiles to 0/1 for the network and back (off: the input is normalised already).",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def deblur(checkpoint, inputs, output, tile, overlap, offset, channel, normalize, device, quiet):
    """Deblur INPUT (an image file, or a folder of TIFF/PNG/JPEG files) with the network in CHECKPOINT.

    Writes float32 TIFFs in the input's intensity units, with the input's pixel size and metadata plus the
    checkpoint and model. The image must be a region of the sensor the network was trained for: give its position
    with --offset unless it is the full frame.
    """
    from learn.infer import deblur_files

    if tile is not None and overlap >= tile:
        raise click.BadParameter(
            f"expected an overlap smaller than --tile {tile}, got {overlap}", param_hint="--overlap"
        )
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
    )
    for path in written:
        click.echo(f"wrote {path}")
    how = "whole" if tile is None else f"in {tile}x{tile} tiles overlapping by {overlap}"
    click.echo(f"deblurred {len(written)} image(s) {how} with {checkpoint.name}")
