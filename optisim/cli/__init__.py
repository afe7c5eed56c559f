"""The ``optisim`` command line: one click group whose subcommands are imported only when used.

``optisim --help`` imports click and this package only (no torch, no training code). Library errors that a user
can act on (bad values, bad files, sampling problems) are printed as one line on stderr with a non-zero exit;
``optisim --debug ...`` (or ``OPTISIM_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import warnings

import click

__all__ = ["LazyGroup", "main"]

USER_ERRORS = (
    ValueError,
    TypeError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    FileExistsError,
)


class LazyGroup(click.Group):
    """A click group whose subcommands are given as ``"module:attribute"`` strings and imported on first use
    (click's documented lazy-loading recipe)."""

    def __init__(self, *args, lazy_subcommands: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = lazy_subcommands or {}

    def list_commands(self, ctx):
        return sorted([*super().list_commands(ctx), *self.lazy_subcommands])

    def get_command(self, ctx, cmd_name):
        if cmd_name in self.lazy_subcommands:
            module_name, attr = self.lazy_subcommands[cmd_name].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as err:
            if _debug(ctx):
                raise
            message = (
                str(err) if not isinstance(err, OSError) or not err.filename else f"{err.strerror}: {err.filename}"
            )
            raise click.ClickException(message or type(err).__name__) from None


def _debug(ctx) -> bool:
    root = ctx.find_root()
    return bool((root.obj or {}).get("debug")) or os.environ.get("OPTISIM_DEBUG", "") not in ("", "0")


@click.group(
    cls=LazyGroup,
    lazy_subcommands={
        "bench": "optisim.cli.bench:bench",
        "calibrate": "calibration.cli.calibrate:calibrate",
        "dataset": "optisim.cli.dataset:dataset",
        "deblur": "learn.cli.deblur:deblur",
        "demo": "calibration.cli.demo:demo",
        "evaluate": "learn.cli.evaluate:evaluate",
        "experiment": "learn.cli.experiment:experiment",
        "lens": "optisim.cli.lens:lens",
        "models": "learn.cli.train:models",
        "psf": "optisim.cli.psf:psf",
        "simulate": "optisim.cli.simulate:simulate",
        "train": "learn.cli.train:train",
    },
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="optisim")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx, debug):
    """optisim: field-dependent PSFs of real lenses, spatially varying blur, learned inverses, calibration.

    Conventions used by every command: lengths in µm (object space), images (y, x), field coordinates
    normalised to half the longer sensor side, Zernike coefficients RMS-normalised (see `optisim lens show`).
    """
    ctx.obj = {"debug": debug}
    if not _debug(ctx):
        previous = warnings.showwarning
        warnings.showwarning = _one_line_warning
        ctx.call_on_close(lambda: setattr(warnings, "showwarning", previous))


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings from the library as one line on stderr (``--debug`` keeps Python's format with the source line)."""
    click.echo(f"Warning: {message}", err=True)
