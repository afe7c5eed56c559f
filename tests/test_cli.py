"""End-to-end tests of the ``optisim`` command line (click's CliRunner, real files)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile
import xarray as xr
from click.testing import CliRunner

from optisim.cli import main
from optisim.io import read_tiff_metadata
from optisim.lens import Lens, load_lens, load_preset


def run(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def test_lens_init_and_show(tmp_path):
    path = tmp_path / "lens.toml"
    out = run("lens", "init", "--preset", "water-60x-1.2", "-o", path).output
    assert "wrote" in out
    assert load_lens(path) == load_preset("water-60x-1.2")
    shown = run("lens", "show", path).output
    for text in ("Airy radius", "Nyquist pixel", "samples it", "centre", "edge", "corner", "Strehl"):
        assert text in shown
    assert "Z(" not in shown.split("field dependence")[0]


def test_lens_init_refuses_to_overwrite(tmp_path):
    path = tmp_path / "lens.toml"
    run("lens", "init", "-o", path)
    r = run("lens", "init", "-o", path, ok=False)
    assert r.exit_code == 1
    assert "exists; use --force" in r.output
    run("lens", "init", "-o", path, "--force")


def test_lens_show_reports_undersampling(tmp_path):
    path = load_preset("default").replace(pixel_size_um=0.4).save(tmp_path / "coarse.toml")
    assert "UNDERSAMPLES" in run("lens", "show", path).output


def test_psf_grid_netcdf_and_figure(tmp_path):
    nc, png = tmp_path / "psfs.nc", tmp_path / "psfs.png"
    out = run("psf", "default", "--grid", "3x4", "--size", "33", "-o", nc, "--plot", png).output
    assert "wrote" in out and png.stat().st_size > 10_000
    with xr.open_dataset(nc) as ds:  # the standard reader
        assert ds["psf"].shape == (3, 4, 33, 33)
        np.testing.assert_allclose(ds["psf"].sum(("y", "x")).values, 1.0, rtol=1e-5)
        assert Lens.from_toml(ds.attrs["lens_toml"]) == load_preset("default")


def test_psf_single_field_tiff(tmp_path):
    tif = tmp_path / "psf.tif"
    run("psf", "default", "--field", "0.7,-0.2", "--size", "31", "--oversample", "2", "-o", tif)
    with tifffile.TiffFile(tif) as f:
        image = f.asarray()
        assert f.imagej_metadata["unit"] == "um"
        xres = f.pages[0].tags["XResolution"].value
    assert image.dtype == np.float32 and image.shape == (31, 31)
    assert image.sum() == pytest.approx(1.0, rel=1e-5)
    assert xres[0] / xres[1] == pytest.approx(1 / 0.25, rel=1e-4)  # pixels per µm
    meta = read_tiff_metadata(tif)
    assert meta["pixel_size_um"] == 0.25 and meta["field_hx"] == 0.7 and meta["field_hy"] == -0.2
    # the TIFF holds the same PSF as the library computes
    from optisim.psf import compute_psfs

    ref, _ = compute_psfs(load_preset("default"), [0.7], [-0.2], size=31, oversample=2)
    np.testing.assert_allclose(image, ref[0], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("na = 0.5", "na = 1.2"), "numerical aperture 1.2 must be positive and smaller than the immersion index 1"),
        (("\nwavelength_um = 0.525", "\nwavelength_um = -0.5"), "expected positive wavelengths in µm, got -0.5"),
        (("pixel_size_um = 0.25", "pixel_size_um = 0"), "expected a positive pixel size in µm, got 0"),
        (("pixel_size_um = 0.25", "pixel_size_um = 0.4"), "pixel size 0.4 µm undersamples the PSF (Nyquist limit"),
        (("samples = 128", "samples = 16"), "pupil sampling 16 is too coarse for the aberrations"),
        (("na = 0.5", "nA = 0.5"), "unknown key 'optics.nA' in lens file (did you mean 'na'?)"),
        (("field_curvature = 0.5", "field_curvatur = 0.5"), "unknown key 'aberrations.field_curvatur'"),
    ],
)
def test_bad_input_one_line_error(tmp_path, edit, message):
    text = load_preset("default").to_toml()
    assert edit[0] in text
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(edit[0], edit[1]), encoding="utf-8")
    r = run("psf", path, "--size", "16", "-o", tmp_path / "out.nc", ok=False)
    assert r.exit_code == 1
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert message in lines[0]
    assert "Traceback" not in r.output


def test_missing_file_and_debug_traceback(tmp_path):
    missing = tmp_path / "nope.toml"
    cmd = [sys.executable, "-m", "optisim", "psf", str(missing), "-o", str(tmp_path / "a.nc")]
    plain = subprocess.run(cmd, capture_output=True, text=True)
    assert plain.returncode == 1
    assert plain.stderr.strip() == f"Error: lens file not found: {missing}"
    debug = subprocess.run([*cmd[:3], "--debug", *cmd[3:]], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "FileNotFoundError" in debug.stderr


def test_truncated_window_warns(tmp_path):
    r = CliRunner().invoke(main, ["psf", "default", "--grid", "3x3", "--size", "24", "-o", str(tmp_path / "a.nc")])
    assert r.exit_code == 0
    assert "warning: the 24-pixel window holds only" in r.output and "use a larger --size" in r.output
    quiet = run("psf", "default", "--grid", "3x3", "--size", "64", "-o", tmp_path / "b.nc").output
    assert "warning" not in quiet


def test_allow_undersampled(tmp_path):
    path = load_preset("default").replace(pixel_size_um=0.4).save(tmp_path / "coarse.toml")
    run("psf", path, "--grid", "2x2", "--size", "16", "--allow-undersampled", "-o", tmp_path / "a.nc")


def test_wrong_output_suffix(tmp_path):
    r = run("psf", "default", "-o", tmp_path / "a.tif", ok=False)
    assert r.exit_code == 2 and "a PSF grid is written as NetCDF (.nc)" in r.output
    r = run("psf", "default", "--field", "0,0", "-o", tmp_path / "a.nc", ok=False)
    assert r.exit_code == 2 and "with --field the output is a TIFF" in r.output


def test_demo_refuses_a_folder_that_is_not_empty(tmp_path):
    # the whole quick demo runs in tests/calibration/test_demo.py (the demo lives in the calibration layer)
    (tmp_path / "notes.txt").write_text("mine")
    r = run("demo", "--quick", "-o", tmp_path, "--device", "cpu", ok=False)
    assert r.exit_code == 1 and "Traceback" not in r.output
    message = f"{tmp_path} is not empty; use --overwrite to rewrite the demo's files in it, or choose another -o"
    assert r.output.strip() == f"Error: {message}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_bench_psf_prints_figures():
    out = run("bench", "psf", "--grid", "3", "--size", "32", "--pupil", "64", "--repeat", "1", "--poppy-points", "2")
    text = out.output
    assert "PSFs/s" in text and "speed-up" in text and "relative L2 difference" in text
