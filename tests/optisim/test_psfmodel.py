"""Empirical PSF models: eigen-PSFs from scattered (bead) PSFs, the optisim-psf-model NetCDF file, and the model used
in place of a lens by write_dataset, simulate_image and the `dataset` / `simulate` commands."""

import dataclasses
import json

import h5py
import numpy as np
import pytest
import tifffile
import torch
import xarray as xr
from click.testing import CliRunner
from scipy.interpolate import RectBivariateSpline
from scipy.spatial import Delaunay

from optisim.cli import main
from optisim.dataset import DatasetConfig, dataset_info, read_forward_model, write_dataset
from optisim.field import field_grid, pixel_to_field
from optisim.grid import psf_grid, write_psf_grid
from optisim.io import read_tiff_metadata
from optisim.lens import Lens, load_preset
from optisim.lowrank import rank_for_tolerance
from optisim.noise import CameraNoise
from optisim.psf import compute_psfs
from optisim.psfmodel import (
    FORMAT_NAME,
    FORMAT_VERSION,
    eigen_psfs_from_samples,
    gcv_smoothing,
    model_digest,
    psf_model_info,
    read_psf_model,
    write_psf_model,
)
from optisim.samples import SampleGenerator
from optisim.scenes import SyntheticSource
from optisim.simulate import simulate_image

SENSOR = (128, 128)
SIZE = 31
N_BEADS = 40


def rel_l2(a, b) -> float:
    return float(np.linalg.norm(np.ravel(a) - np.ravel(b)) / np.linalg.norm(np.ravel(b)))


@pytest.fixture(scope="module")
def lens():
    """The default preset on a small sensor, with milder field curvature (0.15 instead of 0.5 waves RMS at h = 1)
    and some astigmatism: 40 beads sample this field finely enough, and it is not rotationally symmetric, so a model
    with swapped field axes is wrong. (With the preset's own 0.5 waves the PSF changes by about a wave of defocus
    between neighbouring beads, and 40 beads give about 19 % error at points inside their hull.)"""
    base = load_preset("default").replace(sensor_shape=SENSOR)
    return base.replace(aberrations=dataclasses.replace(base.aberrations, field_curvature=0.15, astigmatism=0.1))


@pytest.fixture(scope="module")
def beads(lens):
    """PSFs at N_BEADS random sensor positions: (psfs (N, SIZE, SIZE), hy, hx)."""
    rows, cols = np.random.default_rng(0).uniform(0, SENSOR[0] - 1, (2, N_BEADS))
    hx, hy = pixel_to_field(rows, cols, SENSOR)
    psfs, _ = compute_psfs(lens, hx, hy, size=SIZE)
    return psfs, hy, hx


@pytest.fixture(scope="module")
def probes(lens, beads):
    """30 other field points inside the beads' convex hull and the lens's PSFs there: (psfs, hy, hx)."""
    _, hy, hx = beads
    rows, cols = np.random.default_rng(1).uniform(0, SENSOR[0] - 1, (2, 400))
    tx, ty = pixel_to_field(rows, cols, SENSOR)
    inside = Delaunay(np.c_[hy, hx]).find_simplex(np.c_[ty, tx]) >= 0
    tx, ty = tx[inside][:30], ty[inside][:30]
    return compute_psfs(lens, tx, ty, size=SIZE)[0], ty, tx


@pytest.fixture(scope="module")
def model(beads):
    psfs, hy, hx = beads
    return eigen_psfs_from_samples(psfs, hy, hx, SENSOR)


# ---- building the model ------------------------------------------------------------------------------------------


def test_recovers_a_known_psf_field(model, beads, probes):
    truth, ty, tx = probes
    error = rel_l2(model.psfs_at(tx, ty), truth)
    assert error < 0.15  # measured 0.052 (rank 17, 9x9 grid)
    psfs, hy, hx = beads
    swapped = eigen_psfs_from_samples(psfs, hx, hy, SENSOR)  # y and x exchanged: measured 0.24
    misplaced = eigen_psfs_from_samples(psfs, np.roll(hy, 1), np.roll(hx, 1), SENSOR)  # PSFs at wrong beads: 0.49
    for wrong in (swapped, misplaced):
        assert rel_l2(wrong.psfs_at(tx, ty), truth) > max(0.2, 3 * error)
    assert model.kernels.dtype == np.float32 and model.kernels.shape[1:] == (SIZE, SIZE)
    assert model.coefficients.shape == (9, 9, model.rank) and model.sensor_shape == SENSOR
    hy_grid, hx_grid = field_grid(SENSOR, (9, 9))
    np.testing.assert_array_equal(model.field_y, hy_grid)
    np.testing.assert_array_equal(model.field_x, hx_grid)
    assert model.weights().shape == (model.rank, *SENSOR)
    k = model.kernels.reshape(model.rank, -1).astype(float)
    np.testing.assert_allclose(k @ k.T, np.eye(model.rank), atol=1e-5)  # orthonormal eigen-PSFs


def test_smoothing_zero_interpolates_beads_on_the_grid(lens):
    """Beads exactly at the grid points, full rank, no smoothing: the model gives back the measured PSFs there."""
    hy, hx = field_grid(SENSOR, (5, 5))
    yy, xx = (a.ravel() for a in np.meshgrid(hy, hx, indexing="ij"))
    psfs, _ = compute_psfs(lens, xx, yy, size=15)
    m = eigen_psfs_from_samples(psfs, yy, xx, SENSOR, rank=25, grid=(5, 5), smoothing=0)
    np.testing.assert_allclose(m.psfs_at(xx, yy), psfs, atol=1e-6)


def test_cross_validated_smoothing_helps_with_noisy_beads(beads, probes):
    psfs, hy, hx = beads
    rng = np.random.default_rng(7)
    noisy = rng.poisson(psfs * 3000 + 2.0) - 2.0 + rng.normal(0, 1.5, psfs.shape)  # ~3000 photons, read noise
    truth, ty, tx = probes
    smoothed = rel_l2(eigen_psfs_from_samples(noisy, hy, hx, SENSOR).psfs_at(tx, ty), truth)
    exact = rel_l2(eigen_psfs_from_samples(noisy, hy, hx, SENSOR, smoothing=0).psfs_at(tx, ty), truth)
    assert smoothed < 0.9 * exact  # measured 0.10 vs 0.12


def test_gcv_smoothing_follows_the_noise():
    """Exact values: (almost) no smoothing; noisy ones: a smoothing that beats interpolation."""
    from scipy.interpolate import RBFInterpolator

    rng = np.random.default_rng(0)
    hy, hx = rng.uniform(-1, 1, (2, 100))
    truth = np.sin(2 * hx) + hy**2
    assert gcv_smoothing(hy, hx, truth) < 1e-6
    noisy = truth + rng.normal(0, 0.2, hx.shape)
    lam = gcv_smoothing(hy, hx, noisy)
    assert lam > 1e-2  # measured 0.53
    ty, tx = rng.uniform(-0.8, 0.8, (2, 500))

    def error(smoothing):
        fit = RBFInterpolator(np.c_[hy, hx], noisy, kernel="thin_plate_spline", smoothing=smoothing)
        return np.sqrt(np.mean((fit(np.c_[ty, tx]) - np.sin(2 * tx) - ty**2) ** 2))

    assert error(lam) < 0.6 * error(0.0)  # measured 0.08 vs 0.20
    assert gcv_smoothing(hy[:3], hx[:3], noisy[:3]) == 0.0  # the linear trend fits three points exactly
    assert gcv_smoothing(hy, hx, np.c_[noisy, 2 * noisy]) == pytest.approx(lam, rel=1e-6)  # columns share one λ


def test_rank_and_tolerance(beads):
    psfs, hy, hx = beads
    loose = eigen_psfs_from_samples(psfs, hy, hx, SENSOR, tol=0.05)
    assert loose.rank == rank_for_tolerance(loose.singular_values, 0.05) and loose.relative_error <= 0.05
    assert len(loose.singular_values) == N_BEADS
    fixed = eigen_psfs_from_samples(psfs, hy, hx, SENSOR, rank=3, grid=(4, 6))
    assert fixed.kernels.shape == (3, SIZE, SIZE) and fixed.coefficients.shape == (4, 6, 3)
    for rank in (0, N_BEADS + 1):
        with pytest.raises(
            ValueError, match=rf"rank: expected 1\.\.{N_BEADS} \(the rank of {N_BEADS} PSFs\), got {rank}"
        ):
            eigen_psfs_from_samples(psfs, hy, hx, SENSOR, rank=rank)


def test_psfs_are_normalised(beads, model, probes):
    psfs, hy, hx = beads
    scaled = psfs * np.linspace(0.5, 700, N_BEADS)[:, None, None]
    again = eigen_psfs_from_samples(scaled, hy, hx, SENSOR)
    _, ty, tx = probes
    assert again.rank == model.rank
    np.testing.assert_allclose(again.psfs_at(tx, ty), model.psfs_at(tx, ty), atol=1e-6)


def test_sample_errors(beads):
    psfs, hy, hx = beads
    with pytest.raises(ValueError, match=r"^need at least 3 bead PSFs for an empirical model, got 2$"):
        eigen_psfs_from_samples(psfs[:2], hy[:2], hx[:2], SENSOR)
    bad = psfs.copy()
    bad[3] *= -1
    with pytest.raises(ValueError, match=r"psfs: every PSF must have a positive sum .*; PSF 3 sums to -1"):
        eigen_psfs_from_samples(bad, hy, hx, SENSOR)
    bad[3] = 0
    with pytest.raises(ValueError, match=r"PSF 3 sums to 0"):
        eigen_psfs_from_samples(bad, hy, hx, SENSOR)
    cases = [
        ((psfs[0], hy, hx), {}, r"psfs: expected shape \(N, kh, kw\), got \(31, 31\)"),
        ((psfs[:, :30, :30], hy, hx), {}, r"psfs: expected square windows of odd size .*, got 30x30"),
        ((psfs, hy[:-1], hx), {}, r"hy, hx: expected one field point per PSF, shapes \(40,\) and \(40,\), got"),
        ((psfs, np.zeros(N_BEADS), hx), {}, r"hy, hx: the field points lie on one line"),
        ((psfs, hy, hx), {"grid": (3, 9)}, r"grid: bicubic weight maps need at least 4x4 field points, got 3x9"),
        ((psfs, hy, hx), {"smoothing": -1.0}, r"smoothing: expected a finite number >= 0 or None"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            eigen_psfs_from_samples(*args, SENSOR, **kwargs)
    nan = psfs.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="psfs: contains NaN or Inf values"):
        eigen_psfs_from_samples(nan, hy, hx, SENSOR)


# ---- the file ----------------------------------------------------------------------------------------------------

PROVENANCE = {"beads": "slide-3.tif", "count": np.int64(N_BEADS), "threshold": np.float32(0.5)}


@pytest.fixture(scope="module")
def model_file(model, lens, tmp_path_factory):
    path = tmp_path_factory.mktemp("psfmodel") / "model.nc"
    return write_psf_model(path, model, lens, description="bead model", provenance=PROVENANCE)


def test_round_trip(model_file, model, lens, probes):
    lens_back, back = read_psf_model(model_file)
    assert lens_back == lens
    assert back.rank == model.rank and back.sensor_shape == model.sensor_shape
    np.testing.assert_allclose(back.weights(), model.weights(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(back.weights((-7, 100), (20, 40)), model.weights((-7, 100), (20, 40)), atol=1e-6)
    _, ty, tx = probes
    np.testing.assert_allclose(back.psfs_at(tx, ty), model.psfs_at(tx, ty), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(back.singular_values, model.singular_values)
    assert model_digest(back) == model_digest(model)
    info = psf_model_info(model_file)
    assert info["description"] == "bead model" and info["digest"] == model_digest(model)
    assert info["provenance"] == {"beads": "slide-3.tif", "count": N_BEADS, "threshold": 0.5}
    assert info["rank"] == model.rank and info["kernel_size"] == SIZE and info["grid"] == [9, 9]


def test_standard_readers_see_the_documented_layout(model_file, model, lens):
    with xr.open_dataset(model_file, engine="h5netcdf") as ds:
        assert ds["kernels"].dims == ("k", "y", "x") and ds["kernels"].dtype == np.float32
        assert ds["kernels"].attrs["units"] == "1 (unit L2 norm)"
        assert ds["coefficients"].dims == ("field_y", "field_x", "k") and ds["coefficients"].dtype == np.float64
        assert ds["singular_values"].dims == ("s",)
        assert list(ds["k"].values) == list(range(model.rank))
        assert ds["y"].values[SIZE // 2] == 0 and ds["x"].attrs["units"] == "pixel"
        a = ds.attrs
        assert a["format"] == FORMAT_NAME and a["format_version"] == FORMAT_VERSION
        assert list(a["sensor_shape"]) == list(SENSOR) and a["pixel_size_um"] == lens.pixel_um
        assert Lens.from_toml(a["lens_toml"]) == lens and "NOT used" in a["lens_note"]
        assert a["rank"] == model.rank and a["relative_error"] == pytest.approx(model.relative_error)
        assert a["description"] == "bead model" and json.loads(a["provenance"])["count"] == N_BEADS
        assert "PSF(h) = sum_k w_k(h) e_k" in a["conventions"]
        # the example in data/FORMATS.md: weights from the coefficients with scipy alone
        fy, fx, c = ds["field_y"].values, ds["field_x"].values, ds["coefficients"].values
        hy, hx = np.array([0.0, 0.5]), np.array([0.0, -0.3])
        w = np.stack(
            [RectBivariateSpline(fy, fx, c[..., k], kx=3, ky=3)(hy, hx, grid=False) for k in range(c.shape[2])]
        )
        psfs = np.einsum("kn,kyx->nyx", w, ds["kernels"].values)
    np.testing.assert_allclose(psfs, model.psfs_at(hx, hy), atol=1e-6)
    with h5py.File(model_file, "r") as f:
        assert f["kernels"].shape == model.kernels.shape and f["kernels"].dtype == np.float32
        assert f["coefficients"].shape == model.coefficients.shape
        assert f.attrs["format"] == FORMAT_NAME


def test_read_errors(model_file, lens, tmp_path):
    with pytest.raises(FileNotFoundError, match="PSF model file not found: "):
        read_psf_model(tmp_path / "missing.nc")
    text = tmp_path / "notes.nc"
    text.write_text("not netcdf")
    with pytest.raises(ValueError, match=r"notes.nc: not a readable NetCDF-4 \(HDF5\) file \(.*signature") as err:
        read_psf_model(text)
    assert "\n" not in str(err.value)
    truncated = tmp_path / "truncated.nc"
    truncated.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated.nc: not a readable NetCDF-4 \(HDF5\) file"):
        read_psf_model(truncated)
    grid_file = write_psf_grid(psf_grid(lens.replace(sensor_shape=(16, 16)), grid=(1, 1), size=9), tmp_path / "g.nc")
    with pytest.raises(ValueError, match=r"g.nc: not an optisim PSF model \(format 'optisim-psf-grid'\)"):
        read_psf_model(grid_file)
    for attr, value, message in (
        ("format_version", 2, r"optisim-psf-model version 2; this optisim reads version 1"),
        ("sensor_shape", np.array([64, 64]), r"sensor_shape \[64, 64\] does not match the lens's \[128, 128\]"),
        ("rank", 99, r"attribute rank = 99 but the file holds"),
    ):
        changed = tmp_path / f"{attr}.nc"
        changed.write_bytes(model_file.read_bytes())
        with h5py.File(changed, "r+") as f:
            f.attrs[attr] = value
        with pytest.raises(ValueError, match=message):
            read_psf_model(changed)


def test_write_errors(model, lens, tmp_path):
    with pytest.raises(ValueError, match=r"lens: the model was built for a 128x128 sensor, the lens has 64x64"):
        write_psf_model(tmp_path / "m.nc", model, lens.replace(sensor_shape=(64, 64)))
    with pytest.raises(ValueError, match=r"provenance: expected a JSON-serialisable dict"):
        write_psf_model(tmp_path / "m.nc", model, lens, provenance={"x": object()})
    assert not (tmp_path / "m.nc").exists()


# ---- the model as the forward model: datasets, simulate, the CLI -------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 64x64-sensor lens, a 15-pixel model from 20 beads on a 5x5 grid, its file, and a 64x64 scene file."""
    root = tmp_path_factory.mktemp("small")
    lens = load_preset("default").replace(sensor_shape=(64, 64))
    hx, hy = pixel_to_field(*np.random.default_rng(3).uniform(0, 63, (2, 20)), lens.sensor_shape)
    psfs, _ = compute_psfs(lens, hx, hy, size=15)
    m = eigen_psfs_from_samples(psfs, hy, hx, lens.sensor_shape, grid=(5, 5))
    other = eigen_psfs_from_samples(psfs, hy, hx, lens.sensor_shape, grid=(5, 5), rank=2)
    image = np.random.default_rng(4).uniform(0, 1, (64, 64)).astype(np.float32)
    tifffile.imwrite(root / "scene.tif", image)
    return {
        "lens": lens,
        "model": m,
        "other": other,
        "file": write_psf_model(root / "model.nc", m, lens, description="small", provenance={"beads": 20}),
        "other_file": write_psf_model(root / "other.nc", other, lens),
        "lens_file": lens.save(root / "lens.toml"),
        "image": image,
        "image_file": root / "scene.tif",
    }


CONFIG = DatasetConfig(n=4, size=32, seed=0)


def test_dataset_with_a_psf_model(small, tmp_path):
    path = tmp_path / "data.h5"
    info = psf_model_info(small["file"])
    result = write_dataset(
        path, small["lens"], SyntheticSource(), CONFIG, model=small["model"], model_info=info, progress=False
    )
    assert result["written"] == 4
    lens, m = read_forward_model(path)
    assert lens == small["lens"] and model_digest(m) == model_digest(small["model"])
    np.testing.assert_array_equal(m.coefficients, small["model"].coefficients)
    with h5py.File(path, "r") as f:
        assert sorted(f["psf_grid"]) == ["field_x", "field_y"]
        assert f.attrs["forward_model"] == "psf-model"
        stored = json.loads(f.attrs["psf_model"])
        assert stored["digest"] == model_digest(small["model"]) and stored["provenance"] == {"beads": 20}
        config = json.loads(f.attrs["config"])
        assert config["kernel_size"] == 15 and config["grid"] == [5, 5] and config["rank"] == small["model"].rank
        blurred = f["blurred"][0]
    gen = SampleGenerator(small["lens"], SyntheticSource(), size=32, seed=0, noise=CameraNoise(), model=small["model"])
    np.testing.assert_array_equal(blurred, gen.sample(0).blurred)
    summary = dataset_info(path)
    assert summary["forward_model"] == "psf-model" and summary["psf_grid"] == [5, 5, 15, 15]
    again = write_dataset(path, small["lens"], SyntheticSource(), CONFIG, model=small["model"], progress=False)
    assert again["written"] == 0 and again["resumed_from"] == 4


def test_dataset_refuses_another_forward_model(small, tmp_path):
    path = tmp_path / "data.h5"
    write_dataset(path, small["lens"], SyntheticSource(), CONFIG, model=small["model"], progress=False)
    digest = model_digest(small["model"])[:12]
    with pytest.raises(ValueError, match=rf"forward model: PSF model {digest} -> PSF model [0-9a-f]{{12}}") as err:
        write_dataset(path, small["lens"], SyntheticSource(), CONFIG, model=small["other"], progress=False)
    assert "belongs to a different configuration" in str(err.value) and "use --overwrite" in str(err.value)
    lens_config = DatasetConfig(n=4, size=32, kernel_size=15, grid=(5, 5))
    with pytest.raises(ValueError, match=rf"forward model: PSF model {digest} -> lens"):
        write_dataset(path, small["lens"], SyntheticSource(), lens_config, progress=False)
    with pytest.raises(ValueError, match=r"kernel_size: the PSF model's eigen-PSFs are 15x15, got 21"):
        write_dataset(
            tmp_path / "k.h5",
            small["lens"],
            SyntheticSource(),
            DatasetConfig(n=4, size=32, kernel_size=21),
            model=small["model"],
        )
    # a lens dataset says so, and keeps its PSF grid
    lens_path = tmp_path / "lens.h5"
    write_dataset(lens_path, small["lens"], SyntheticSource(), lens_config, progress=False)
    with h5py.File(lens_path, "r") as f:
        assert f.attrs["forward_model"] == "lens" and json.loads(f.attrs["psf_model"]) is None
        assert f["psf_grid/psf"].shape == (5, 5, 15, 15)
    assert dataset_info(lens_path)["psf_grid"] == [5, 5, 15, 15]


def test_simulate_image_with_a_psf_model(small):
    lens, m, image = small["lens"], small["model"], small["image"]
    result = simulate_image(lens, image, model=m)
    expected = m.operator()(torch.as_tensor(image / image.max())).clamp(min=0).numpy()
    np.testing.assert_allclose(result.blurred, expected, rtol=1e-6, atol=1e-7)
    assert result.rank == m.rank
    with pytest.raises(ValueError, match=r"method: a PSF model is a low-rank model, so method must be 'lowrank'"):
        simulate_image(lens, image, model=m, method="exact")
    with pytest.raises(ValueError, match=r"model: built for a \(64, 64\) sensor, the lens has \(32, 32\)"):
        simulate_image(lens.replace(sensor_shape=(32, 32)), image, model=m)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_dataset_and_simulate_with_psf_model(small, tmp_path):
    path = tmp_path / "x.h5"
    r = run("dataset", "--psf-model", small["file"], "-o", path, "--n", 4, "--size", 32, "--quiet")
    assert r.exit_code == 0, r.output
    assert r.output.strip() == f"wrote {path}: 4 samples of 32x32, 4 generated now"
    library = tmp_path / "library.h5"
    write_dataset(library, small["lens"], SyntheticSource(), CONFIG, model=small["model"], progress=False)
    with h5py.File(path, "r") as a, h5py.File(library, "r") as b:
        np.testing.assert_array_equal(a["blurred"][()], b["blurred"][()])
        assert a.attrs["fingerprint"] == b.attrs["fingerprint"]
        assert json.loads(a.attrs["psf_model"])["description"] == "small"
    r = run("dataset", "--psf-model", small["other_file"], "-o", path, "--n", 4, "--size", 32, "--quiet")
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert f"{path} exists and belongs to a different configuration (" in r.output
    assert "forward model: PSF model " in r.output and "use --overwrite" in r.output

    out = tmp_path / "out.tif"
    r = run("simulate", "--psf-model", small["file"], small["image_file"], "-o", out)
    assert r.exit_code == 0, r.output
    assert f"wrote {out} (64x64, PSF model, rank {small['model'].rank}, noise off)" in r.output
    expected = simulate_image(small["lens"], small["image"], model=small["model"]).blurred
    np.testing.assert_allclose(tifffile.imread(out), expected, rtol=1e-6, atol=1e-7)
    meta = read_tiff_metadata(out)
    assert meta["forward_model"] == "psf-model" and meta["psf_model"]["digest"] == model_digest(small["model"])
    assert meta["lens"] == small["lens"].to_toml() and meta["rank"] == small["model"].rank


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["dataset", "LENS", "--psf-model", "MODEL", "-o", "OUT"], "give a lens file or --psf-model FILE, not both"),
        (["dataset", "-o", "OUT"], "give a lens file or --psf-model FILE, not neither"),
        (
            ["dataset", "--psf-model", "MODEL", "-o", "OUT", "--rank", "3"],
            "--rank applies to a lens file, not to --psf-model",
        ),
        (
            ["dataset", "--psf-model", "MODEL", "-o", "OUT", "--kernel-size", "15"],
            "--kernel-size applies to a lens file",
        ),
        (["simulate", "LENS", "IMAGE", "--psf-model", "MODEL", "-o", "OUT.tif"], "not both"),
        (["simulate", "-o", "OUT.tif"], "give a lens file or --psf-model FILE, not neither"),
        (
            ["simulate", "--psf-model", "MODEL", "IMAGE", "-o", "OUT.tif", "--tol", "0.01"],
            "--tol applies to a lens file",
        ),
        (["simulate", "--psf-model", "MODEL", "-o", "OUT.tif"], "Missing argument 'IMAGE'"),
    ],
    ids=[
        "dataset-both",
        "dataset-neither",
        "dataset-rank",
        "dataset-kernel",
        "simulate-both",
        "simulate-neither",
        "simulate-tol",
        "simulate-no-image",
    ],
)
def test_cli_usage_errors(small, tmp_path, command, message):
    names = {"LENS": small["lens_file"], "MODEL": small["file"], "IMAGE": small["image_file"], "OUT": tmp_path / "o.h5"}
    names["OUT.tif"] = tmp_path / "o.tif"
    r = run(*[names.get(a, a) for a in command])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "o.tif").exists()


def test_cli_one_line_errors(small, tmp_path):
    out = tmp_path / "o.tif"
    r = run("simulate", "--psf-model", small["file"], small["image_file"], "-o", out, "--method", "exact")
    assert r.exit_code == 1 and r.output.strip().startswith("Error: method: a PSF model is a low-rank model")
    r = run("simulate", "--psf-model", tmp_path / "nope.nc", small["image_file"], "-o", out)
    assert r.exit_code == 1 and r.output.strip() == f"Error: PSF model file not found: {tmp_path / 'nope.nc'}"
    r = run("dataset", "--psf-model", small["image_file"], "-o", tmp_path / "d.h5", "--n", 4, "--size", 32)
    assert r.exit_code == 1 and "not a readable NetCDF-4 (HDF5) file" in r.output and len(r.output.splitlines()) == 1
    for command in (["dataset", "create", "--help"], ["simulate", "--help"]):
        assert "--psf-model" in run(*command).output
