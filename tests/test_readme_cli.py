"""Every ``optisim`` subcommand answers ``--help`` and is documented in the README (the CLI reference stays in sync)."""

from __future__ import annotations

import re
from pathlib import Path

import click
from click.testing import CliRunner

from optisim.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def command_paths(group: click.Group, prefix=()) -> list[tuple[str, ...]]:
    """Every command path under ``group`` (lazy subcommands loaded), depth first, groups included."""
    ctx = click.Context(group)
    paths = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths.extend(command_paths(command, (*prefix, name)))
    return paths


def test_the_walk_finds_the_nested_commands():
    paths = command_paths(main)
    for path in [("lens", "init"), ("bench", "psf"), ("bench", "calibrate"), ("experiment", "conv1d"), ("calibrate",)]:
        assert path in paths
    assert len(paths) >= 20


def test_every_subcommand_has_help():
    for path in [(), *command_paths(main)]:  # () : `optisim --help` itself
        result = CliRunner().invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert result.output.startswith("Usage: ") and " ".join(path) in result.output.splitlines()[0], path


def test_every_subcommand_is_in_the_readme():
    text = README.read_text(encoding="utf-8")
    missing = []
    for path in command_paths(main):
        # `optisim lens init`, also inside a code block line with other text around it
        if not re.search(r"optisim " + r"\s+".join(map(re.escape, path)) + r"(\s|`|$)", text, flags=re.MULTILINE):
            missing.append("optisim " + " ".join(path))
    assert not missing, f"undocumented in README.md: {', '.join(missing)}"
