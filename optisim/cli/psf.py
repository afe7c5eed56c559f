"""``optisim psf``: a PSF grid over the field (NetCDF + figure) or one PSF at a field point (TIFF)."""

from __future__ import annotations

from pathlib import Path

import click

from optisim.cli._options import GridType, PairType, resolve_device


@click.command()
@click.argument("lens_file")
@click.option(
    "--grid",
    type=GridType(),
    default="9x9",
    show_default=True,
    help="Field points GYxGX, spanning the outermost pixel centres.",
)
@click.option(
    "--field",
    type=PairType(),
    default=None,
    help="Compute one PSF at normalised field HX,HY instead of a grid (writes a TIFF).",
)
@click.option(
    "--size", type=click.IntRange(1, 4096), default=64, show_default=True, help="PSF window, pixels per side."
)
@click.option(
    "--oversample",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="Sub-samples per pixel along each axis, integrated over the pixel.",
)
@click.option(
    "--backend",
    type=click.Choice(["torch", "poppy"]),
    default="torch",
    show_default=True,
    help="Fast batched MFT in torch, or poppy's optical-system model (the reference, slow).",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda", "mps"]),
    default="auto",
    show_default=True,
    help="Torch device for the torch backend.",
)
@click.option("--allow-undersampled", is_flag=True, help="Accept a pixel coarser than the Nyquist limit λ/(4 NA).")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output: .nc (NetCDF PSF grid) or, with --field, .tif/.tiff.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the PSF-grid figure (PNG/PDF/SVG).",
)
@click.option("--log", "log_scale", is_flag=True, help="Figure: PSFs on a log scale.")
def psf(lens_file, grid, field, size, oversample, backend, device, allow_undersampled, output, plot, log_scale):
    """Compute the PSFs of LENS_FILE (a lens file or a preset name).

    \b
    Examples:
      optisim psf lens.toml --grid 9x9 --size 64 -o psfs.nc --plot psfs.png
      optisim psf lens.toml --field 0.7,-0.2 -o psf.tif
    """
    from optisim.lens import load_lens

    lens = load_lens(lens_file)
    suffix = output.suffix.lower()
    if field is not None:
        if suffix not in (".tif", ".tiff"):
            raise click.BadParameter(
                f"with --field the output is a TIFF (.tif/.tiff), got {output.name}", param_hint="-o/--output"
            )
        _single(lens, field, size, oversample, backend, resolve_device(device), allow_undersampled, output)
        return
    if suffix != ".nc":
        raise click.BadParameter(f"a PSF grid is written as NetCDF (.nc), got {output.name}", param_hint="-o/--output")
    _grid(lens, grid, size, oversample, backend, resolve_device(device), allow_undersampled, output, plot, log_scale)


MIN_ENERGY = 0.9


def _warn_truncated(energy: float, size: int) -> None:
    if energy < MIN_ENERGY:
        click.echo(
            f"warning: the {size}-pixel window holds only {energy:.0%} of the PSF energy at some field points "
            "(the PSFs are normalised to the window); use a larger --size",
            err=True,
        )


def _single(lens, field, size, oversample, backend, device, allow_undersampled, output):
    from optisim.io import write_tiff
    from optisim.psf import compute_psfs

    hx, hy = field
    psf, energy = compute_psfs(
        lens, [hx], [hy], size=size, oversample=oversample, device=device, allow_undersampled=allow_undersampled
    )
    if backend == "poppy":
        from optisim.poppy_backend import poppy_psfs

        psf = poppy_psfs(lens, [hx], [hy], size=size, oversample=oversample)
    meta = {
        "field_hx": hx,
        "field_hy": hy,
        "size": size,
        "oversample": oversample,
        "backend": backend,
        "psf_centre": "chief ray at pixel (size // 2, size // 2)",
        "lens_toml": lens.to_toml(),
    }
    write_tiff(output, psf[0], pixel_um=lens.pixel_um, metadata=meta)
    _warn_truncated(float(energy[0]), size)
    click.echo(
        f"wrote {output}: PSF at field ({hx:g}, {hy:g}), {size}x{size} px of {lens.pixel_um:.4g} µm, "
        f"{energy[0]:.1%} of its energy in the window"
    )


def _grid(lens, grid, size, oversample, backend, device, allow_undersampled, output, plot, log_scale):
    from tqdm import tqdm

    from optisim.grid import psf_grid, write_psf_grid

    with tqdm(total=grid[0] * grid[1], desc=f"PSFs ({backend})", unit="psf", disable=None) as bar:
        ds = psf_grid(
            lens,
            grid=grid,
            size=size,
            oversample=oversample,
            backend=backend,
            device=device,
            allow_undersampled=allow_undersampled,
            progress=bar.update,
        )
    write_psf_grid(ds, output)
    _warn_truncated(float(ds.energy_in_window.min()), size)
    click.echo(
        f"wrote {output}: {grid[0]}x{grid[1]} PSFs of {size}x{size} px ({lens.pixel_um:.4g} µm pixels), "
        f"RMS wavefront error {float(ds.wavefront_rms.min()):.3f}-{float(ds.wavefront_rms.max()):.3f} waves, "
        f"Strehl {float(ds.strehl.min()):.3f}-{float(ds.strehl.max()):.3f}, "
        f"energy in window >= {float(ds.energy_in_window.min()):.1%}"
    )
    if plot is not None:
        from optisim.plotting import plot_psf_grid

        plot_psf_grid(ds, plot, log=log_scale)
        click.echo(f"wrote {plot}")
