"""``optisim bench calibrate`` through click's CliRunner: the synthetic case at a tiny setting (table and bench.json),
and the one-line errors for missing real data and too many beads. The real-data cases take minutes: they are run
by hand (README, "The calibration layer"), not here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_calibrate_cli import assert_one_line_error  # tests/calibration is on sys.path (pytest's rootdir import)

from calibration.bench import CASES, REAL_FILES, case_config, format_table, real_data_files
from optisim.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

TINY = ["--case", "synthetic", "--beads", "6", "--size", "160"]


def invoke(*args):
    return CliRunner().invoke(main, ["bench", "calibrate", *[str(a) for a in args]])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """One tiny synthetic run (6 beads on 160x160 pixels): (CliRunner result, output folder)."""
    out = tmp_path_factory.mktemp("bench") / "out"
    result = invoke(*TINY, "--data", out / "no-data-needed", "-o", out)
    assert result.exit_code == 0, result.output
    return result, out


def test_synthetic_prints_progress_and_the_table(synthetic):
    result, out = synthetic
    lines = result.output.splitlines()
    assert any(line.startswith("[synthetic] [2/3] detecting and fitting") for line in lines), result.output
    header = next(i for i, line in enumerate(lines) if line.startswith("case "))
    assert lines[header].split() == ["case", "figure", "target", "measured"]
    rows = lines[header + 2 : header + 5]
    assert all(row.startswith("synthetic ") for row in rows), result.output
    assert "per-bead wavefront error" in rows[0] and "<= 1/50 waves RMS" in rows[0] and "(6 beads)" in rows[0]
    assert "field polynomial terms" in rows[1] and "calibrate 160x160, no network" in rows[2]
    assert f"wrote {out / 'bench.json'}" in result.output
    for name in ("beads.tif", "lens.toml", "calibration.json", "report.html"):
        assert (out / "synthetic" / name).stat().st_size > 0, name


def test_synthetic_bench_json(synthetic):
    _, out = synthetic
    bench = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    machine = bench["machine"]
    assert {"platform", "cpu_count", "torch", "torch_threads", "date"} <= set(machine)
    assert machine["torch_threads"] >= 1 and machine["cpu_count"] >= 1
    assert list(bench["cases"]) == ["synthetic"]
    case = bench["cases"]["synthetic"]
    numbers = ["seconds", "seconds_fit", "wavefront_error_median_waves", "wavefront_error_max_waves"]
    numbers.append("field_term_max_difference_waves")
    for key in numbers:
        assert isinstance(case[key], float) and math.isfinite(case[key]), key
    assert 0 < case["beads"] <= 6 and case["sensor"] == [160, 160] and case["model"] == "parametric"
    assert case["wavefront_error_median_waves"] <= case["wavefront_error_max_waves"] < 0.05
    assert 0 < case["seconds_fit"] < case["seconds"]
    assert format_table(bench).splitlines()[0].split() == ["case", "figure", "target", "measured"]


def test_missing_data_folder_is_a_one_line_error(tmp_path):
    result = invoke("--case", "llsm", "--data", tmp_path / "nowhere", "-o", tmp_path / "out")
    assert_one_line_error(result, "--data", "nowhere", "no such folder", "llsm")
    assert not (tmp_path / "out").exists()


def test_missing_data_file_is_a_one_line_error(tmp_path):
    result = invoke("--case", "fibre", "--data", tmp_path, "-o", tmp_path / "out")
    assert_one_line_error(result, "--data", REAL_FILES["fibre"], "is missing")


def test_too_many_beads_is_a_one_line_error(tmp_path):
    result = invoke("--case", "synthetic", "--beads", "6", "--size", "128", "-o", tmp_path / "out")
    assert_one_line_error(result, "--beads 6", "only 4 beads fit on a 128x128 sensor", "--size")


def test_case_configs_follow_the_readme_options():
    assert not any(case_config(c).network.enabled for c in ("synthetic", "llsm", "confocal"))
    fibre = case_config("fibre", device="cpu")
    assert fibre.network.enabled and fibre.network.device == "cpu" and fibre.model.field_model == "empirical"
    assert (fibre.model.detect.window, fibre.model.detect.min_separation) == (31, 16)
    assert not case_config("fibre", network=False).network.enabled
    confocal = case_config("confocal")
    assert confocal.model.fit.modality == "confocal" and confocal.model.fit.fit_pupil
    assert confocal.optics.pixel_um is None and confocal.optics.z_step_um is None  # from the file's metadata
    with pytest.raises(ValueError, match="case: expected one of"):
        case_config("sted")
    with pytest.raises(ValueError, match="cases: expected names from"):
        real_data_files(".", ["synthetic", "sted"])
    assert real_data_files(None, ["synthetic"]) == {}
    assert set(CASES) == {"synthetic", *REAL_FILES}
    from calibration.cli.bench import CASES as CLI_CASES  # kept apart so that --help imports nothing heavy

    assert CLI_CASES == CASES


REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"


@pytest.mark.skipif(not (REAL / "bead_psf_llsm_pycudadecon").is_dir(), reason="shared real data not present")
def test_real_data_files_name_the_shared_files():
    files = real_data_files(REAL, CASES)
    assert set(files) == set(REAL_FILES) and all(path.is_file() for path in files.values())
