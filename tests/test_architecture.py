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


def test_lazy_strings_do_not_point_upward():
    # the CLI's lazy subcommands are import strings, which ast does not see as imports
    from optisim.cli import main

    for target in main.lazy_subcommands.values():
        assert target.split(".")[0] == "optisim", target


def test_help_is_fast_and_imports_no_heavy_code():
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom optisim.cli import main\n"
        "r = CliRunner().invoke(main, ['--help'])\nassert r.exit_code == 0, r.output\n"
        "heavy = sorted(m for m in ('torch', 'learn', 'calibration', 'poppy', 'xarray', 'matplotlib') "
        "if m in sys.modules)\nprint(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == ""
