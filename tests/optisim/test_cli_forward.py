"""End-to-end tests of the forward-model commands: ``optisim simulate``, ``optisim dataset`` (and ``info``)."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from optisim.cli import main
from optisim.dataset import DatasetConfig, dataset_info, write_dataset
from optisim.io import read_tiff_metadata
from optisim.lens import load_preset
from optisim.noise import CameraNoise
from optisim.scenes import SyntheticSource
from optisim.simulate import simulate_image

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"
FMD = REAL / "sharp_fmd_confocal_bpae"
BBBC_NUCLEI = REAL / "sharp_bbbc" / "0bf4b1.tif"

FAST = ("--kernel-size", "15", "--grid", "5x5")
DATASET = ("--n", "6", "--size", "48", *FAST, "--quiet")  # size 48, seed 0: every sample generates


def run(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def one_line_error(result, code=1) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def blobs(shape, seed=0) -> np.ndarray:
    """A smooth, positive test scene: Gaussian spots of several sizes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 0.05)
    for _ in range(40):
        cy, cx, s = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(0.7, 4)
        image += rng.uniform(0.2, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    return image.astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Lens files (64x64 and 96x96 sensors) and a 64x64 float32 TIFF scene."""
    root = tmp_path_factory.mktemp("cli")
    lens64 = load_preset("default").replace(sensor_shape=(64, 64))
    image = blobs((64, 64))
    tifffile.imwrite(root / "scene.tif", image)
    return {
        "lens64": lens64,
        "lens64_file": lens64.save(root / "lens64.toml"),
        "lens96_file": load_preset("default").replace(sensor_shape=(96, 96)).save(root / "lens96.toml"),
        "image": image,
        "image_file": root / "scene.tif",
    }


def inputs(files):
    """LENS_FILE IMAGE arguments of `optisim simulate`: the 64x64 lens and the 64x64 scene."""
    return files["lens64_file"], files["image_file"]


# ---- optisim simulate --------------------------------------------------------------------------------------------


def test_simulate_writes_a_float32_tiff_with_metadata(files, tmp_path):
    out, sharp = tmp_path / "blurred.tif", tmp_path / "sharp.tiff"
    r = run("simulate", *inputs(files), "-o", out, "--sharp-output", sharp, *FAST)
    assert "image 64x64 matches the sensor" in r.output
    assert f"wrote {out} (64x64, lowrank, rank " in r.output and "noise off)" in r.output
    blurred = tifffile.imread(out)
    assert blurred.shape == (64, 64) and blurred.dtype == np.float32
    meta = read_tiff_metadata(out)
    assert meta["lens"] == files["lens64"].to_toml() and meta["pixel_size_um"] == 0.25
    assert meta["method"] == "lowrank" and meta["noise"] is None and meta["seed"] == 0
    assert meta["rank"] >= 1 and meta["source_image"] == str(files["image_file"])
    expected = simulate_image(files["lens64"], files["image"], kernel_size=15, grid=(5, 5))
    np.testing.assert_allclose(blurred, expected.blurred, rtol=1e-6, atol=1e-7)
    s = tifffile.imread(sharp)
    np.testing.assert_allclose(s, files["image"] / files["image"].max(), rtol=1e-6)
    assert read_tiff_metadata(sharp)["role"] == "sharp input"
    # the blur keeps the energy that stays on the sensor and smooths the scene
    assert 0.9 < blurred.sum() / s.sum() <= 1.0 + 1e-3
    assert np.abs(np.diff(blurred, axis=0)).sum() < np.abs(np.diff(s, axis=0)).sum()


def test_simulate_noise_is_seeded(files, tmp_path):
    paths = {name: tmp_path / f"{name}.tif" for name in ("a", "b", "c", "clean")}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        run("simulate", *inputs(files), "-o", paths[name], *FAST, "--noise", "on", "--seed", seed)
    run("simulate", *inputs(files), "-o", paths["clean"], *FAST)
    a, b, c, clean = (tifffile.imread(p) for p in paths.values())
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    meta = read_tiff_metadata(paths["a"])
    assert meta["noise"] == CameraNoise().to_dict() and meta["seed"] == 3
    residual = a.astype(np.float64) - clean
    assert abs(residual.mean()) < 5 * residual.std() / np.sqrt(residual.size)  # unbiased
    assert 0.01 < residual.std() < 0.05  # about sqrt(photons x + background + read_noise²) / photons
    d = tmp_path / "d.tif"
    run("simulate", *inputs(files), "-o", d, *FAST, "--noise", "photons=200,read_noise=0")
    assert read_tiff_metadata(d)["noise"] == CameraNoise(photons=200, read_noise=0).to_dict()


def test_simulate_exact_agrees_with_lowrank(files, tmp_path):
    exact, lowrank = tmp_path / "exact.tif", tmp_path / "lowrank.tif"
    r = run("simulate", *inputs(files), "-o", exact, "--method", "exact", "--kernel-size", "15")
    assert "exact" in r.output and "rank" not in r.output
    meta = read_tiff_metadata(exact)
    assert meta["method"] == "exact" and meta["rank"] is None
    # a 5x5 PSF grid interpolates the field to ~8 % here; 17x17 is within 1 %
    run("simulate", *inputs(files), "-o", lowrank, "--kernel-size", "15", "--grid", "17x17")
    a, b = tifffile.imread(exact), tifffile.imread(lowrank)
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-2


def test_simulate_centre_crops_a_larger_image(files, tmp_path):
    big = blobs((80, 90), seed=1)
    tifffile.imwrite(tmp_path / "big.tif", big)
    out = tmp_path / "out.tif"
    r = run("simulate", files["lens64_file"], tmp_path / "big.tif", "-o", out, *FAST)
    assert "image 80x90 centre-cropped to the sensor's 64x64 pixels (rows 8..71, columns 13..76)" in r.output
    expected = simulate_image(files["lens64"], big[8:72, 13:77], kernel_size=15, grid=(5, 5)).blurred
    np.testing.assert_allclose(tifffile.imread(out), expected, rtol=1e-6, atol=1e-7)
    resized = tmp_path / "resized.tif"
    r = run("simulate", files["lens64_file"], tmp_path / "big.tif", "-o", resized, *FAST, "--fit", "resize")
    assert "image 80x90 resized to the sensor's 64x64 pixels (aspect ratio not kept)" in r.output
    assert tifffile.imread(resized).shape == (64, 64)


def write_image(path, image):
    tifffile.imwrite(path, np.asarray(image, dtype=np.float32))
    return path


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.ones((32, 32)), "Error: image: 32x32 pixels is smaller than the lens's 64x64 sensor; use a larger image"),
        (np.where(np.eye(64) > 0, np.nan, 1.0), "contains NaN or Inf values"),
        (np.full((64, 64), np.inf), "contains NaN or Inf values"),
        (-np.ones((64, 64)), "Error: image: expected non-negative intensities, got a minimum of -1"),
        (np.zeros((64, 64)), "Error: image: all pixels are zero; there is nothing to blur"),
    ],
    ids=["smaller", "nan", "inf", "negative", "zero"],
)
def test_simulate_bad_image(files, tmp_path, image, message):
    path = write_image(tmp_path / "in.tif", image)
    out = tmp_path / "out.tif"
    line = one_line_error(run("simulate", files["lens64_file"], path, "-o", out, *FAST, ok=False))
    assert message in line
    assert not out.exists()


def test_simulate_bad_arguments(files, tmp_path):
    lens, image = files["lens64_file"], files["image_file"]
    line = one_line_error(run("simulate", lens, image, "-o", tmp_path / "out.png", ok=False))
    assert line == "Error: --output: expected a .tif or .tiff file, got out.png"
    line = one_line_error(run("simulate", lens, tmp_path / "missing.tif", "-o", tmp_path / "o.tif", ok=False))
    assert line == f"Error: path: no such image file: {tmp_path / 'missing.tif'}"
    r = run("simulate", lens, image, "-o", tmp_path / "o.tif", "--noise", "photons=abc", ok=False)
    assert r.exit_code == 2 and "Invalid value for '--noise': photons: expected a number, got 'abc'" in r.output
    r = run("simulate", lens, image, "-o", tmp_path / "o.tif", "--noise", "photon=5", ok=False)
    assert r.exit_code == 2 and "unknown key 'photon'" in r.output and "did you mean 'photons'" in r.output
    line = one_line_error(run("simulate", lens, image, "-o", tmp_path / "o.tif", "--plane", "1", ok=False))
    assert line == "Error: --plane: scene.tif has 1 plane(s), got --plane 1"
    assert not (tmp_path / "o.tif").exists() and not (tmp_path / "out.png").exists()


@pytest.mark.skipif(not BBBC_NUCLEI.is_file(), reason=f"real data not found at {BBBC_NUCLEI}")
def test_simulate_real_nuclei_image(tmp_path):
    lens = load_preset("default").replace(sensor_shape=(256, 256))
    out = tmp_path / "nuclei_blurred.tif"
    r = run("simulate", lens.save(tmp_path / "lens256.toml"), BBBC_NUCLEI, "-o", out, *FAST, "--noise", "on")
    assert "image 256x256 matches the sensor" in r.output
    blurred = tifffile.imread(out)
    assert blurred.shape == (256, 256) and blurred.dtype == np.float32 and np.isfinite(blurred).all()
    sharp = tifffile.imread(BBBC_NUCLEI).astype(np.float64)
    sharp /= sharp.max()
    inner = np.s_[16:-16, 16:-16]
    assert blurred[inner].mean() == pytest.approx(sharp[inner].mean(), rel=0.05)  # energy kept, noise unbiased
    assert np.corrcoef(blurred.ravel(), sharp.ravel())[0, 1] > 0.9  # still the same nuclei


# ---- optisim dataset ---------------------------------------------------------------------------------------------


def test_dataset_create_resume_and_info(files, tmp_path):
    path = tmp_path / "data.h5"
    r = run("dataset", files["lens96_file"], *DATASET, "-o", path)
    assert r.output.strip() == f"wrote {path}: 6 samples of 48x48, 6 generated now"
    r = run("dataset", files["lens96_file"], *DATASET, "-o", path)
    assert r.output.strip() == f"wrote {path}: 6 samples of 48x48, 0 generated now (resumed: 6 were already done)"
    # the command writes what the library writes for the same configuration
    lens = load_preset("default").replace(sensor_shape=(96, 96))
    library = tmp_path / "library.h5"
    write_dataset(
        library, lens, SyntheticSource(), DatasetConfig(n=6, size=48, kernel_size=15, grid=(5, 5)), progress=False
    )
    with h5py.File(path, "r") as a, h5py.File(library, "r") as b:
        for name in ("sharp", "blurred", "offset", "split", "done"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
        assert a.attrs["fingerprint"] == b.attrs["fingerprint"]

    info = dataset_info(path)
    text = run("dataset", "info", path).output
    lines = dict(line.split(None, 1) for line in text.strip().splitlines())
    assert list(lines) == list(info)
    assert lines["schema"] == "optisim-dataset v1" and lines["samples"] == "6" and lines["complete"] == "True"
    assert json.loads(lines["splits"]) == {"train": 6, "val": 0, "test": 0}  # floor(0.1 * 6) = 0
    assert json.loads(lines["size"]) == [48, 48] and lines["source"] == "synthetic"
    as_json = json.loads(run("dataset", "info", path, "--json").output)
    assert as_json == info


def test_dataset_info_errors(tmp_path):
    r = run("dataset", "info", tmp_path / "missing.h5", ok=False)
    assert r.exit_code == 2 and "does not exist" in r.output
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    assert "not a readable HDF5 file" in one_line_error(run("dataset", "info", text, ok=False))


def png_folder(path: Path, n=3, shape=(100, 120)) -> Path:
    path.mkdir()
    for i in range(n):
        Image.fromarray((blobs(shape, seed=i) / 2 * 255).clip(0, 255).astype(np.uint8)).save(path / f"img{i}.png")
    return path


def test_dataset_from_a_folder_of_pngs(files, tmp_path):
    folder = png_folder(tmp_path / "pngs")
    path = tmp_path / "data.h5"
    run("dataset", files["lens96_file"], *DATASET, "--source", folder, "-o", path)
    info = dataset_info(path)
    assert info["complete"] is True and info["source"] == "folder"
    with h5py.File(path, "r") as f:
        source = json.loads(f.attrs["source"])
        assert [name for name, _ in source["files"]] == ["img0.png", "img1.png", "img2.png"]
        sharp = f["sharp"][()]
    assert sharp.min() >= 0 and sharp.max() <= 1 and sharp.std() > 0.01
    # the images moved elsewhere are the same dataset: the run resumes instead of refusing
    moved = folder.rename(tmp_path / "moved")
    r = run("dataset", files["lens96_file"], *DATASET, "--source", moved, "-o", path)
    assert "0 generated now (resumed: 6 were already done)" in r.output


@pytest.mark.skipif(not FMD.is_dir(), reason=f"real data not found at {FMD}")
def test_dataset_from_real_images(files, tmp_path):
    path = tmp_path / "fmd.h5"
    run("dataset", files["lens96_file"], *DATASET, "--source", FMD, "--channel", "0", "-o", path)
    with h5py.File(path, "r") as f:
        assert f.attrs["complete"] == 1
        assert json.loads(f.attrs["source"])["planes"] == len(list(FMD.glob("*.png")))
        sharp, blurred = f["sharp"][()], f["blurred"][()]
    assert sharp.shape == (6, 48, 48) and sharp.std() > 0.01 and np.isfinite(blurred).all()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--source", "NOPE"), 1, "Error: source: expected 'synthetic', a folder of images or 'synthetic[:S]+DIR'"),
        (("--size", "128"), 1, "Error: size: a 128x128 crop is larger than the sensor (96x96 pixels)"),
        (
            ("--size", "10"),
            1,
            "Error: size: a 10x10 crop is smaller than the PSF support (15x15 pixels); use a size of at least 15",
        ),
        (("--channel", "1"), 1, "Error: channel: only a folder source has channels (source is 'synthetic')"),
        (
            ("--splits", "0.5,0.5"),
            2,
            "Invalid value for '--splits': expected three non-negative fractions summing "
            "to 1 such as 0.8,0.1,0.1, got '0.5,0.5'",
        ),
        (("--splits", "a,b,c"), 2, "expected three fractions such as 0.8,0.1,0.1, got 'a,b,c'"),
        (("--grid", "3x3"), 1, "Error: grid: bicubic weight maps need at least 4x4 field points, got 3x3"),
        (("--noise", "gain=0"), 2, "Invalid value for '--noise': gain: expected a finite number > 0"),
    ],
    ids=["source", "too-large", "too-small", "channel", "splits", "splits-text", "grid", "noise"],
)
def test_dataset_bad_options(files, tmp_path, args, code, message):
    path = tmp_path / "data.h5"
    args = [a.replace("NOPE", str(tmp_path / "nope")) for a in args]
    r = run("dataset", files["lens96_file"], "-o", path, "--n", "2", "--size", "48", *FAST, "--quiet", *args, ok=False)
    if code == 1:
        assert message in one_line_error(r)
    else:
        assert r.exit_code == 2 and message in r.output.replace("\n", " ")
    assert list(tmp_path.iterdir()) == []


def test_dataset_refuses_an_existing_file_of_another_configuration(files, tmp_path):
    path = tmp_path / "data.h5"
    run("dataset", files["lens96_file"], *DATASET, "-o", path)
    line = one_line_error(run("dataset", files["lens96_file"], *DATASET, "-o", path, "--seed", "1", ok=False))
    assert f"{path} exists and belongs to a different configuration (seed: 0 -> 1)" in line
    assert "use --overwrite to replace it" in line
    r = run("dataset", files["lens96_file"], *DATASET, "-o", path, "--seed", "1", "--overwrite")
    assert "6 generated now" in r.output and dataset_info(path)["seed"] == 1
    notes = tmp_path / "notes.h5"
    notes.write_text("not a dataset")
    line = one_line_error(run("dataset", files["lens96_file"], *DATASET, "-o", notes, ok=False))
    assert "exists but is not a readable optisim dataset" in line and "use --overwrite to replace it" in line
    assert notes.read_text() == "not a dataset"


def test_dataset_folder_without_readable_images(files, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")
    (folder / "b.tif").write_bytes(b"not a tiff")
    line = one_line_error(
        run("dataset", files["lens96_file"], *DATASET, "--source", folder, "-o", tmp_path / "d.h5", ok=False)
    )
    assert f"Error: path: no readable images in {folder}" in line
    assert "a.png (UnidentifiedImageError" in line and "b.tif (TiffFileError" in line
    assert not (tmp_path / "d.h5").exists()


def test_dataset_folder_with_some_unreadable_images_warns(files, tmp_path):
    folder = png_folder(tmp_path / "mixed", n=2)
    (folder / "broken.png").write_bytes(b"\x89PNG truncated")
    path = tmp_path / "d.h5"
    args = ["dataset", str(files["lens96_file"]), *DATASET, "--source", str(folder), "-o", str(path)]
    cmd = [sys.executable, "-m", "optisim", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"ImageFolder: skipped 1 file(s) in {folder}: broken.png (" in r.stderr
    assert "Traceback" not in r.stderr and not any(line.startswith("Error") for line in r.stderr.splitlines())
    assert r.stdout.strip() == f"wrote {path}: 6 samples of 48x48, 6 generated now"
    assert dataset_info(path)["complete"] is True


# ---- help --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["simulate", "--help"],
        ["dataset", "--help"],
        ["dataset", "create", "--help"],
        ["dataset", "info", "--help"],
        ["bench", "forward", "--help"],
        ["bench", "dataset", "--help"],
    ],
)
def test_help(args):
    out = run(*args).output
    assert out.startswith("Usage: ")
    assert "--help" in out
