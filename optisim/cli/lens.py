"""``optisim lens init`` and ``optisim lens show``."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def lens():
    """Create and inspect lens files (TOML)."""


@lens.command("init")
@click.option(
    "--preset",
    default="default",
    show_default=True,
    help="Built-in lens to start from (see `optisim lens init --list`).",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Lens file to write.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option("--list", "list_", is_flag=True, help="List the presets and exit.")
def init(preset, output, force, list_):
    """Write a preset lens as an editable lens file."""
    from optisim.lens import list_presets, load_preset

    if list_:
        for name in list_presets():
            click.echo(f"{name:16s} {load_preset(name).description}")
        return
    if output is None:
        raise click.UsageError("missing option -o/--output (the lens file to write)")
    if output.exists() and not force:
        raise FileExistsError(f"{output} exists; use --force to overwrite it")
    lens_ = load_preset(preset)
    lens_.save(output)
    click.echo(f"wrote {output} (preset '{preset}': {lens_.description})")


@lens.command("show")
@click.argument("lens_file")
@click.option(
    "--strehl-grid",
    default=5,
    show_default=True,
    type=click.IntRange(1, 25),
    help="Field points per axis of the Strehl map.",
)
def show(lens_file, strehl_grid):
    """Summarise LENS_FILE (a path or a preset name): sampling, aberrations, wavefront error, Strehl map."""
    from optisim.lens import load_lens
    from optisim.summary import lens_summary

    click.echo(lens_summary(load_lens(lens_file), strehl_grid=strehl_grid))
