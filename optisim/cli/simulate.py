"""``optisim simulate``: blur one full-sensor image with a lens or a PSF model (and optionally add camera noise)."""

from __future__ import annotations

from pathlib import Path

import click

from optisim.cli._options import NoiseType, forward_model_options, load_forward_model, psf_model_option, resolve_device


@click.command()
@click.argument("lens_file", required=False)
@click.argument("image", required=False, metavar="IMAGE", type=click.Path(dir_okay=False, path_type=Path))
@psf_model_option
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Blurred image, float32 TIFF (.tif/.tiff).",
)
@click.option(
    "--method",
    type=click.Choice(["lowrank", "exact"]),
    default="lowrank",
    show_default=True,
    help="Low-rank product convolution, or the exact per-pixel PSF sum (images up to ~128x128).",
)
@click.option(
    "--noise",
    type=NoiseType(),
    default="off",
    show_default=True,
    help="Camera noise: off, on (defaults) or KEY=VALUE,... e.g. photons=500,read_noise=2,gain=0.5.",
)
@click.option("--seed", type=click.IntRange(0, None), default=0, show_default=True, help="Seed of the noise.")
@click.option(
    "--fit",
    type=click.Choice(["crop", "resize"]),
    default="crop",
    show_default=True,
    help="How an image larger than the sensor is brought to the sensor's shape.",
)
@click.option("--channel", type=click.IntRange(0, None), default=None, help="Channel of a multi-channel image.")
@click.option("--plane", type=click.IntRange(0, None), default=0, show_default=True, help="Plane of a stack.")
@click.option("--sharp-output", type=click.Path(dir_okay=False, path_type=Path), help="Also write the sharp input.")
@forward_model_options
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.pass_context
def simulate(
    ctx,
    lens_file,
    image,
    psf_model,
    output,
    method,
    noise,
    seed,
    fit,
    channel,
    plane,
    sharp_output,
    kernel_size,
    grid,
    rank,
    tol,
    device,
):
    """Blur IMAGE as the lens LENS_FILE (a lens file or preset name) would image it over its whole sensor.

    `optisim simulate LENS_FILE IMAGE -o out.tif`, or `optisim simulate --psf-model MODEL.nc IMAGE -o out.tif` to
    blur with an empirical PSF model (--kernel-size, --grid, --rank and --tol then do not apply).
    Each source pixel spreads with the PSF of its own field position; the scene is dark outside the sensor.
    The output is a float32 TIFF in the units of the input scaled so its maximum is 1.
    """
    from optisim.io import write_tiff
    from optisim.simulate import simulate_image
    from optisim.sources import open_image

    if psf_model is not None and image is None and lens_file is not None:
        lens_file, image = None, Path(lens_file)  # `--psf-model FILE IMAGE`: the one argument is the image
    if image is None and (lens_file is None) != (psf_model is None):
        raise click.MissingParameter(ctx=ctx, param=next(p for p in ctx.command.params if p.name == "image"))
    if output.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"--output: expected a .tif or .tiff file, got {output.name}")
    lens, model, model_info = load_forward_model(ctx, lens_file, psf_model)
    planes = open_image(image, channel=channel)
    if plane >= len(planes):
        raise ValueError(f"--plane: {image.name} has {len(planes)} plane(s), got --plane {plane}")
    result = simulate_image(
        lens,
        planes[plane],
        method=method,
        noise=noise,
        seed=seed,
        fit=fit,
        kernel_size=kernel_size,
        grid=grid,
        rank=rank,
        tol=tol,
        model=model,
        device=resolve_device(device),
    )
    click.echo(result.message, err=True)
    meta = {
        "lens": lens.to_toml(),
        "forward_model": "lens" if model is None else "psf-model",
        "psf_model": model_info,
        "source_image": str(image),
        "plane": plane,
        "channel": channel,
        "method": method,
        "rank": result.rank,
        "noise": None if noise is None else noise.to_dict(),
        "seed": seed,
        "units": "normalised intensity (input maximum = 1)",
    }
    write_tiff(output, result.blurred, pixel_um=lens.pixel_um, metadata=meta)
    if sharp_output is not None:
        write_tiff(sharp_output, result.sharp, pixel_um=lens.pixel_um, metadata={**meta, "role": "sharp input"})
    rank_text = f", rank {result.rank}" if result.rank else ""
    kind, (ny, nx) = (method if model is None else "PSF model"), lens.sensor_shape
    click.echo(f"wrote {output} ({ny}x{nx}, {kind}{rank_text}, noise {'off' if noise is None else 'on'})")
