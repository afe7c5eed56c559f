"""``optisim dataset``: generate a forward-blurred HDF5 dataset (resumable), and ``optisim dataset info``."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import click

from optisim.cli._options import NoiseType, forward_model_options, load_forward_model, psf_model_option


class _DefaultToCreate(click.Group):
    """``optisim dataset LENS ...`` (or ``--psf-model FILE ...``) runs ``create``; ``optisim dataset info FILE`` runs
    ``info``."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["create", *args]
        return super().parse_args(ctx, args)


class SplitsType(click.ParamType):
    name = "TRAIN,VAL,TEST"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            parts = tuple(float(p) for p in str(value).split(","))
        except ValueError:
            self.fail(f"expected three fractions such as 0.8,0.1,0.1, got {value!r}", param, ctx)
        if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1) > 1e-6:
            self.fail(
                f"expected three non-negative fractions summing to 1 such as 0.8,0.1,0.1, got {value!r}", param, ctx
            )
        return parts


@click.group(cls=_DefaultToCreate)
def dataset():
    """Forward-blurred datasets in HDF5: `optisim dataset LENS_FILE -o data.h5 ...`, `optisim dataset --psf-model
    MODEL.nc -o data.h5 ...` or `optisim dataset info FILE`."""


@dataset.command("create")
@click.argument("lens_file", required=False)
@psf_model_option
@click.option(
    "--source",
    default="synthetic",
    show_default=True,
    help="'synthetic' (built-in fluorescence scenes), a folder of TIFF/PNG/JPEG images, or 'synthetic:S+DIR' (the "
    "scenes for a share S of the samples, 0.5 unless given, the folder's images for the rest).",
)
@click.option("--channel", type=click.IntRange(0, None), default=None, help="Channel of multi-channel images.")
@click.option("--n", "n", type=click.IntRange(1, None), default=2000, show_default=True, help="Number of samples.")
@click.option("--size", type=click.IntRange(1, None), default=128, show_default=True, help="Sample side S, pixels.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="HDF5 file (.h5).")
@click.option("--seed", type=click.IntRange(0, None), default=0, show_default=True, help="Dataset seed.")
@click.option("--splits", type=SplitsType(), default="0.8,0.1,0.1", show_default=True, help="Train,val,test.")
@click.option(
    "--noise",
    type=NoiseType(),
    default="on",
    show_default=True,
    help="Camera noise: on (defaults), off, or KEY=VALUE,... e.g. photons=500,read_noise=2.",
)
@forward_model_options
@click.option("--workers", type=click.IntRange(0, None), default=0, show_default=True, help="Worker processes.")
@click.option("--dask", "dask_address", default=None, help="Generate on the Dask cluster at this scheduler address.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file instead of resuming it.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def create(
    ctx,
    lens_file,
    psf_model,
    source,
    channel,
    n,
    size,
    output,
    seed,
    splits,
    noise,
    kernel_size,
    grid,
    rank,
    tol,
    workers,
    dask_address,
    overwrite,
    quiet,
):
    """Generate N samples: crops of S x S pixels at random sensor offsets, blurred by their own sensor region.

    The blur comes from LENS_FILE (a lens file or preset name) or from an empirical PSF model given with
    --psf-model (its eigen-PSFs and weight maps; --kernel-size, --grid, --rank and --tol then do not apply).
    Rerunning the same command after an interruption (Ctrl-C, a killed job) resumes where it stopped; a file
    written with another configuration is refused unless --overwrite is given.
    """
    from optisim.dataset import DatasetConfig, write_dataset
    from optisim.samples import make_source

    lens, model, model_info = load_forward_model(ctx, lens_file, psf_model)
    src = make_source(source, channel=channel)
    config = DatasetConfig(
        n=n, size=size, seed=seed, splits=splits, noise=noise, kernel_size=kernel_size, grid=grid, rank=rank, tol=tol
    )
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        result = write_dataset(
            output,
            lens,
            src,
            config,
            model=model,
            model_info=model_info,
            workers=workers,
            dask=dask_address,
            overwrite=overwrite,
            progress=not quiet,
        )
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: rerun the same command to resume {output}", err=True)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    resumed = f" (resumed: {result['resumed_from']} were already done)" if result["resumed_from"] else ""
    click.echo(f"wrote {output}: {result['n']} samples of {size}x{size}, {result['written']} generated now{resumed}")


def _terminate(signum, frame):
    raise KeyboardInterrupt


@dataset.command("info")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(path, as_json):
    """Print the schema summary of a dataset file."""
    from optisim.dataset import dataset_info

    summary = dataset_info(path)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        click.echo(f"{key:<{width}}  {json.dumps(value) if isinstance(value, (dict, list)) else value}")
