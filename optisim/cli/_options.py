"""Option parsers shared by the subcommands (kept free of heavy imports)."""

from __future__ import annotations

import click

__all__ = [
    "GridType",
    "NoiseType",
    "PairType",
    "forward_model_options",
    "load_forward_model",
    "psf_model_option",
    "resolve_device",
]

FORWARD_MODEL_PARAMS = ("kernel_size", "grid", "rank", "tol")


class GridType(click.ParamType):
    """``9x9`` or ``9`` -> (9, 9); ``5x7`` -> (gy, gx) = (5, 7)."""

    name = "GYxGX"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = str(value).lower().split("x")
        try:
            nums = tuple(int(p) for p in parts)
        except ValueError:
            self.fail(f"expected GYxGX such as 9x9, got {value!r}", param, ctx)
        if len(nums) == 1:
            nums = nums * 2
        if len(nums) != 2 or min(nums) < 1:
            self.fail(f"expected two positive counts GYxGX such as 9x9, got {value!r}", param, ctx)
        return nums


class PairType(click.ParamType):
    """``0.7,-0.2`` -> (0.7, -0.2)."""

    name = "HX,HY"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            hx, hy = (float(p) for p in str(value).split(","))
        except ValueError:
            self.fail(f"expected two numbers HX,HY such as 0.7,-0.2, got {value!r}", param, ctx)
        return hx, hy


def resolve_device(name: str):
    """'auto' -> 'cuda' if available else 'cpu'; 'cuda'/'mps' checked for availability."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps: no MPS device is available (use --device cpu or auto)")
    return torch.device(name)


class NoiseType(click.ParamType):
    """``off`` | ``on`` | ``photons=500,read_noise=3,...`` -> CameraNoise or None (see optisim.noise)."""

    name = "NOISE"

    def convert(self, value, param, ctx):
        if value is None or not isinstance(value, str):
            return value
        from optisim.noise import parse_noise

        try:
            return parse_noise(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


def forward_model_options(func):
    """The options of the low-rank forward model, shared by `simulate`, `dataset` and `bench`."""
    options = [
        click.option(
            "--kernel-size",
            type=click.IntRange(3, 1023),
            default=None,
            help="PSF window in pixels (odd). Default: the smallest holding 95% of the worst PSF's energy.",
        ),
        click.option(
            "--grid",
            type=GridType(),
            default="25x25",
            show_default=True,
            help="PSF grid GYxGX behind the low-rank model's weight maps (at least 4x4).",
        ),
        click.option(
            "--rank", type=click.IntRange(1, None), default=None, help="Number of eigen-PSFs (overrides --tol)."
        ),
        click.option(
            "--tol",
            type=click.FloatRange(0, 1, min_open=True, max_open=True),
            default=1e-3,
            show_default=True,
            help="Rank from this relative error of the PSF grid's low-rank approximation.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def psf_model_option(func):
    """``--psf-model FILE``: an empirical PSF model (optisim-psf-model NetCDF) in place of the lens file."""
    return click.option(
        "--psf-model",
        type=click.Path(dir_okay=False),
        default=None,
        help="Empirical PSF model (.nc, optisim-psf-model) to blur with, in place of LENS_FILE.",
    )(func)


def load_forward_model(ctx: click.Context, lens_file, psf_model):
    """The lens and, with ``--psf-model``, the PSF model and its description: ``(lens, model or None, info or None)``.

    Exactly one of LENS_FILE and ``--psf-model`` must be given; with ``--psf-model``, an explicit ``--kernel-size``,
    ``--grid``, ``--rank`` or ``--tol`` is a usage error (they shape a model computed from a lens file).
    """
    if (lens_file is None) == (psf_model is None):
        raise click.UsageError(
            f"give a lens file or --psf-model FILE, not {'neither' if lens_file is None else 'both'}"
        )
    if psf_model is None:
        from optisim.lens import load_lens

        return load_lens(lens_file), None, None
    for name in FORWARD_MODEL_PARAMS:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            raise click.UsageError(f"--{name.replace('_', '-')} applies to a lens file, not to --psf-model", ctx)
    from optisim.psfmodel import psf_model_info, read_psf_model

    lens, model = read_psf_model(psf_model)
    return lens, model, psf_model_info(psf_model)
