"""The three layers import in one direction: optisim <- learn <- calibration."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"optisim": {"learn", "calibration"}, "learn": {"calibration"}, "calibration": set()}


def imported_packages(source: str) -> set[str]:
    """Top-level package names imported anywhere in ``source`` (module level, functions, conditionals)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names.add(node.args[0].value.split(".")[0])
    return names


def violations(package: str) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imported_packages(path.read_text(encoding="utf-8")) & FORBIDDEN[package]
        found += [f"{path.relative_to(ROOT)} imports {name}" for name in sorted(bad)]
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package):
    assert violations(package) == []


def test_checker_sees_every_kind_of_import():
    source = "def f():\n    from learn.models import x\nimport calibration.fit\nimportlib.import_module('learn')\n"
    assert imported_packages(source) == {"learn", "calibration"}


def _lazy_groups():
    from optisim.cli import main

    groups = [main]
    for name in main.lazy_subcommands:
        command = main.get_command(None, name)
        if hasattr(command, "lazy_subcommands"):
            groups.append(command)
    return groups


def test_lazy_strings_name_each_layers_cli_and_resolve():
    # The one console script names the subcommands of every layer by import string (STYLE.md): optisim's library
    # never imports learn or calibration (the ast check above); the CLI loads a layer's command only when it is run.
    import click

    for group in _lazy_groups():
        for name, target in group.lazy_subcommands.items():
            module = target.split(":")[0]
            assert module.split(".")[0] in FORBIDDEN and module.split(".")[1] == "cli", target
            assert isinstance(group.get_command(None, name), click.Command), target


def test_help_is_fast_and_imports_no_heavy_code():
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom optisim.cli import main\n"
        "r = CliRunner().invoke(main, ['--help'])\nassert r.exit_code == 0, r.output\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'poppy', 'xarray', 'matplotlib', 'h5py', 'scipy', 'numpy') "
        "or (m.split('.')[0] in ('learn', 'calibration') and m.split('.')[:2] != [m.split('.')[0], 'cli'] "
        "and '.' in m))\nprint(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == ""
