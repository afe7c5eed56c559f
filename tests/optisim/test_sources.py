"""Image folders as sources of sharp crops: plane enumeration, channels, normalisation, skipping, sampling."""

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from optisim import sources
from optisim.sources import ImageFolder, open_image

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"
FMD = REAL / "sharp_fmd_confocal_bpae"
BBBC = REAL / "sharp_bbbc"


def ramp(shape, seed=0):
    """Distinct values in random order, so that every plane and every crop position is recognisable."""
    return np.random.default_rng(seed).permutation(np.prod(shape)).reshape(shape)


@pytest.fixture
def folder(tmp_path):
    """Z-stack TIFF, C-Y-X TIFF, RGB PNG, 16-bit PNG, grayscale JPEG; returns (path, raw arrays)."""
    raw = {
        "a_z.tif": ramp((3, 40, 50), 1).astype(np.uint16),
        "b_chan.tif": ramp((2, 32, 36), 2).astype(np.uint16),
        "c_rgb.png": ramp((30, 40, 3), 3).astype(np.uint8),
        "d_16bit.png": (ramp((30, 40), 4) * 50).astype(np.uint16),
        "e_photo.JPG": np.tile(np.arange(48, dtype=np.uint8) * 5, (24, 1)),
    }
    tifffile.imwrite(tmp_path / "a_z.tif", raw["a_z.tif"], imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "b_chan.tif", raw["b_chan.tif"], imagej=True, metadata={"axes": "CYX"})
    Image.fromarray(raw["c_rgb.png"]).save(tmp_path / "c_rgb.png")
    Image.fromarray(raw["d_16bit.png"]).save(tmp_path / "d_16bit.png")
    Image.fromarray(raw["e_photo.JPG"]).save(tmp_path / "e_photo.JPG", quality=95)
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path, raw


def normalised(raw, lo=0.1, hi=99.9):
    raw = np.asarray(raw, dtype=np.float32)
    p_lo, p_hi = np.percentile(raw, (lo, hi))
    return np.clip((raw - np.float32(p_lo)) / np.float32(p_hi - p_lo), 0, 1)


def test_planes_enumerated_in_path_order(folder):
    path, _ = folder
    src = ImageFolder(path)
    assert src.planes == [
        ("a_z.tif", 0), ("a_z.tif", 1), ("a_z.tif", 2), ("b_chan.tif", 0), ("b_chan.tif", 1),
        ("c_rgb.png", 0), ("c_rgb.png", 1), ("c_rgb.png", 2), ("d_16bit.png", 0), ("e_photo.JPG", 0),
    ]  # fmt: skip
    assert len(src) == 10
    for i in range(len(src)):
        plane = src.plane(i)
        assert plane.dtype == np.float32 and plane.ndim == 2
        assert plane.min() >= 0 and plane.max() <= 1


def test_plane_values_match_files_and_percentile_normalisation(folder):
    path, raw = folder
    src = ImageFolder(path)
    np.testing.assert_allclose(src.plane(1), normalised(raw["a_z.tif"][1]), atol=1e-6)
    np.testing.assert_allclose(src.plane(4), normalised(raw["b_chan.tif"][1]), atol=1e-6)
    np.testing.assert_allclose(src.plane(7), normalised(raw["c_rgb.png"][..., 2]), atol=1e-6)
    np.testing.assert_allclose(src.plane(8), normalised(raw["d_16bit.png"]), atol=1e-6)
    assert src.plane(-1).shape == (24, 48)  # JPEG (lossy): shape only


def test_normalisation_uses_plane_percentiles(tmp_path):
    tifffile.imwrite(tmp_path / "ramp.tif", np.arange(1000, dtype=np.float32).reshape(25, 40))
    tifffile.imwrite(tmp_path / "const.tif", np.full((25, 40), 7, dtype=np.uint16))
    src = ImageFolder(tmp_path, normalize=(10, 90))
    const, plane = src.plane(0), src.plane(1)
    np.testing.assert_array_equal(const, 0)  # constant plane: zeros, no division by zero
    p10, p90 = np.percentile(np.arange(1000), (10, 90))
    np.testing.assert_allclose(plane.ravel(), np.clip((np.arange(1000) - p10) / (p90 - p10), 0, 1), atol=1e-6)
    assert np.mean(plane == 0) == pytest.approx(0.1, abs=0.002)
    assert np.mean(plane == 1) == pytest.approx(0.1, abs=0.002)
    # per plane, not per crop: a crop of the dark end stays dark
    assert src.sample((5, 40), np.random.default_rng(0)).max() <= 1


def test_channel_selection(folder):
    path, raw = folder
    for name in ("a_z.tif", "d_16bit.png", "e_photo.JPG"):  # single-channel files have no channel 1
        (path / name).unlink()
    src = ImageFolder(path, channel=1)
    assert src.planes == [("b_chan.tif", 0), ("c_rgb.png", 0)]
    np.testing.assert_allclose(src.plane(0), normalised(raw["b_chan.tif"][1]), atol=1e-6)
    np.testing.assert_allclose(src.plane(1), normalised(raw["c_rgb.png"][..., 1]), atol=1e-6)
    np.testing.assert_array_equal(open_image(path / "c_rgb.png", channel=2), raw["c_rgb.png"][None, ..., 2])


def test_grayscale_file_is_channel_zero(folder):
    path, _ = folder
    src = ImageFolder(path, channel=0)
    assert [rel for rel, _ in src.planes] == ["a_z.tif"] * 3 + ["b_chan.tif", "c_rgb.png", "d_16bit.png", "e_photo.JPG"]


def test_channel_out_of_range_names_the_file(folder):
    path, _ = folder
    with pytest.raises(
        ValueError, match=r"channel: expected a channel index < 1 for a_z\.tif \(1 channel\(s\)\), got 1"
    ):
        ImageFolder(path, channel=1)
    (path / "a_z.tif").unlink()
    with pytest.raises(
        ValueError, match=r"channel: expected a channel index < 2 for b_chan\.tif \(2 channel\(s\)\), got 2"
    ):
        ImageFolder(path, channel=2)
    with pytest.raises(ValueError, match=r"channel: expected None or a non-negative integer, got -1"):
        ImageFolder(path, channel=-1)
    with pytest.raises(ValueError, match=r"channel: .* for c_rgb\.png \(3 channel\(s\)\), got 5"):
        open_image(path / "c_rgb.png", channel=5)


def test_hyperstack_order_and_page_reads_match_whole_reads(tmp_path, monkeypatch):
    data = ramp((2, 3, 20, 24), 5).astype(np.float32)  # Z, C, Y, X
    tifffile.imwrite(tmp_path / "h.tif", data, imagej=True, metadata={"axes": "ZCYX"})
    raw = open_image(tmp_path / "h.tif")
    np.testing.assert_array_equal(raw, data.reshape(6, 20, 24))  # z-major, then channel
    np.testing.assert_array_equal(open_image(tmp_path / "h.tif", channel=2), data[:, 2])
    paged = ImageFolder(tmp_path, channel=1)
    assert paged._layouts["h.tif"].lead == 2  # one page per plane: reads only that page
    monkeypatch.setattr(sources, "_lead_axes", lambda series: None)
    whole = ImageFolder(tmp_path, channel=1)
    assert whole._layouts["h.tif"].lead is None
    for i in range(2):
        np.testing.assert_allclose(paged.plane(i), normalised(data[i, 1]), atol=1e-6)
        np.testing.assert_array_equal(paged.plane(i), whole.plane(i))


def test_bad_files_skipped_with_one_warning(folder):
    path, _ = folder
    rng = np.random.default_rng(0)
    nan = np.ones((16, 16), dtype=np.float32)
    nan[3, 4] = np.nan
    tifffile.imwrite(path / "nan.tif", nan)
    (path / "corrupt.tif").write_bytes(rng.bytes(400))
    (path / "text.png").write_text("hello, not a PNG")
    tifffile.imwrite(path / "truncated.tif", np.ones((64, 64), dtype=np.uint16))
    whole = (path / "truncated.tif").read_bytes()
    (path / "truncated.tif").write_bytes(whole[: len(whole) // 2])
    with pytest.warns(UserWarning) as record:
        src = ImageFolder(path)
    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 4 file(s)" in message
    for name, reason in [("corrupt.tif", "not a TIFF"), ("nan.tif", "NaN"), ("text.png", "cannot identify")]:
        assert f"{name} (" in message and reason in message
    assert "truncated.tif (ValueError: truncated file" in message
    assert len(src) == 10 and "notes.txt" not in message


def test_no_readable_images(tmp_path):
    with pytest.raises(ValueError, match=r"path: no readable images in .*skipped: none"):
        ImageFolder(tmp_path)
    (tmp_path / "x.png").write_text("text")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the error lists the skipped files; no warning on top
        with pytest.raises(ValueError, match=r"no readable images .*skipped: x\.png \(UnidentifiedImageError"):
            ImageFolder(tmp_path)


def test_bad_arguments(folder, tmp_path):
    path, _ = folder
    with pytest.raises(FileNotFoundError, match=r"path: no such directory: .*missing"):
        ImageFolder(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"path: expected a directory, got the file .*c_rgb\.png"):
        ImageFolder(path / "c_rgb.png")
    with pytest.raises(ValueError, match=r"normalize: expected .*lo < hi.*got \(99, 1\)"):
        ImageFolder(path, normalize=(99, 1))
    with pytest.raises(ValueError, match=r"normalize: expected .*got \(1, 50, 99\)"):
        ImageFolder(path, normalize=(1, 50, 99))
    with pytest.raises(ValueError, match="cache_size: expected a non-negative integer, got -1"):
        ImageFolder(path, cache_size=-1)
    src = ImageFolder(path)
    with pytest.raises(ValueError, match=r"shape: expected a crop shape \(h, w\).*got \(0, 4\)"):
        src.sample((0, 4), np.random.default_rng(0))
    with pytest.raises(TypeError, match=r"rng: expected a numpy\.random\.Generator, got int"):
        src.sample((4, 4), 0)
    with pytest.raises(IndexError, match=r"i: expected a plane index in \[-10, 10\), got 10"):
        src.plane(10)


def test_crop_larger_than_every_plane(folder):
    src = ImageFolder(folder[0])
    with pytest.raises(ValueError, match=r"shape: crop \(45, 45\) is larger .*largest plane \(40, 50\)"):
        src.sample((45, 45), np.random.default_rng(0))


def test_small_planes_are_ignored(tmp_path):
    tifffile.imwrite(tmp_path / "big.tif", ramp((64, 64)).astype(np.uint16))
    tifffile.imwrite(tmp_path / "small.tif", np.zeros((8, 8), dtype=np.uint16))
    src = ImageFolder(tmp_path, augment=False)
    rng = np.random.default_rng(1)
    big = src.plane(0)
    for _ in range(20):
        crop = src.sample((32, 32), rng)
        assert crop.shape == (32, 32) and crop.dtype == np.float32
        hits = np.argwhere(big == crop[0, 0])  # values are distinct: the crop's corner locates it
        ((y, x),) = hits
        np.testing.assert_array_equal(crop, big[y : y + 32, x : x + 32])


@pytest.mark.parametrize(("shape", "n_transforms"), [((16, 16), 8), ((12, 20), 4)])
def test_augment_uses_dihedral_transforms(tmp_path, shape, n_transforms):
    plane = ramp(shape).astype(np.uint16)  # crop == whole plane: only the transform varies
    tifffile.imwrite(tmp_path / "p.tif", plane)
    src = ImageFolder(tmp_path, normalize=(0, 100))
    base = src.plane(0)
    seen = set()
    rng = np.random.default_rng(0)
    for _ in range(200):
        crop = src.sample(shape, rng)
        assert crop.shape == shape
        matches = [k for k in range(8) if np.array_equal(crop, dihedral(base, k))]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == n_transforms


def dihedral(a, k):
    out = np.rot90(a, k % 4)
    return out[:, ::-1] if k >= 4 else out


def test_sample_is_a_pure_function_of_the_rng(folder):
    path, _ = folder
    warm = ImageFolder(path, cache_size=3)
    for i in range(len(warm)):  # cache now holds other planes than a fresh object
        warm.plane(i)
    fresh, uncached = ImageFolder(path), ImageFolder(path, cache_size=0)
    runs = {}
    for name, s in [("warm", warm), ("fresh", fresh), ("uncached", uncached)]:
        rng = np.random.default_rng(42)
        runs[name] = [s.sample((16, 24), rng) for _ in range(6)]
    for name in ("fresh", "uncached"):
        for a, b in zip(runs["warm"], runs[name], strict=True):
            np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(runs["warm"][0], c) for c in runs["warm"][1:])
    assert len(warm._cache) <= 3 and uncached._cache == {}


def test_returned_arrays_do_not_alias_the_cache(folder):
    src = ImageFolder(folder[0], augment=False)
    before = src.plane(0)
    src.plane(0)[:] = 5
    src.sample((40, 50), np.random.default_rng(0))[:] = 5
    np.testing.assert_array_equal(src.plane(0), before)


def test_pickle_round_trip_drops_cache_and_keeps_sampling(folder):
    src = ImageFolder(folder[0])
    expected = src.sample((20, 20), np.random.default_rng(3))
    assert src._cache
    clone = pickle.loads(pickle.dumps(src))
    assert clone._cache == {} and clone.planes == src.planes
    np.testing.assert_array_equal(clone.sample((20, 20), np.random.default_rng(3)), expected)


def test_describe_is_json(folder):
    path, _ = folder
    src = ImageFolder(path, channel=0, normalize=(1, 99), augment=False)
    info = json.loads(json.dumps(src.describe()))
    assert info["kind"] == "folder" and info["path"] == str(path.resolve())
    assert info["channel"] == 0 and info["normalize"] == [1.0, 99.0] and info["augment"] is False
    assert info["planes"] == len(src) == 7
    assert info["files"][0] == ["a_z.tif", (path / "a_z.tif").stat().st_size]
    assert [f[0] for f in info["files"]] == ["a_z.tif", "b_chan.tif", "c_rgb.png", "d_16bit.png", "e_photo.JPG"]


def test_recursive(folder):
    path, raw = folder
    (path / "sub").mkdir()
    Image.fromarray(raw["c_rgb.png"][..., 0]).save(path / "sub" / "gray.png")
    assert ("sub/gray.png", 0) not in ImageFolder(path).planes
    assert ImageFolder(path, recursive=True).planes[-1] == ("sub/gray.png", 0)


def test_open_image_raw_values(folder):
    path, raw = folder
    z = open_image(path / "a_z.tif")
    assert z.dtype == np.float32 and z.shape == (3, 40, 50)
    np.testing.assert_array_equal(z, raw["a_z.tif"])
    np.testing.assert_array_equal(open_image(path / "c_rgb.png"), np.moveaxis(raw["c_rgb.png"], -1, 0))
    np.testing.assert_array_equal(open_image(str(path / "d_16bit.png")), raw["d_16bit.png"][None])
    with pytest.raises(FileNotFoundError, match="path: no such image file"):
        open_image(path / "missing.tif")
    with pytest.raises(ValueError, match=r"path: expected one of .*got notes\.txt"):
        open_image(path / "notes.txt")
    tifffile.imwrite(path / "inf.tif", np.array([[1, np.inf]], dtype=np.float32))
    with pytest.raises(ValueError, match=r"inf\.tif contains NaN or Inf"):
        open_image(path / "inf.tif")


needs_fmd = pytest.mark.skipif(not FMD.is_dir(), reason=f"real data folder {FMD} not present")
needs_bbbc = pytest.mark.skipif(not BBBC.is_dir(), reason=f"real data folder {BBBC} not present")


@needs_fmd
def test_real_fmd_confocal_pngs():
    src = ImageFolder(FMD)
    assert len(src) == 20 and all(j == 0 for _, j in src.planes)
    rng = np.random.default_rng(0)
    crops = np.stack([src.sample((128, 128), rng) for _ in range(8)])
    assert crops.shape == (8, 128, 128) and crops.dtype == np.float32
    assert crops.min() >= 0 and crops.max() <= 1 and crops.std() > 0.01
    assert src.plane(0).shape == (512, 512)


@needs_bbbc
def test_real_bbbc_tiffs():
    src = ImageFolder(BBBC)
    assert src.planes == [("0bf4b1.tif", 0), ("IXMtest_A02_s9.tif", 0), ("IXMtest_A02_s9.tif", 1),
                          ("IXMtest_A02_s9.tif", 2)]  # fmt: skip
    assert src.plane(0).shape == (256, 256) and src.plane(1).shape == (395, 695)
    # a grayscale file counts as channel 0 and has no channel 1
    assert ImageFolder(BBBC, channel=0).planes == [("0bf4b1.tif", 0), ("IXMtest_A02_s9.tif", 0)]
    with pytest.raises(ValueError, match=r"for 0bf4b1\.tif \(1 channel\(s\)\), got 1"):
        ImageFolder(BBBC, channel=1)
    rng = np.random.default_rng(0)
    for _ in range(4):
        crop = src.sample((128, 128), rng)
        assert crop.shape == (128, 128) and 0 <= crop.min() and crop.max() <= 1
    with pytest.raises(ValueError, match=r"crop \(400, 400\) .*largest plane \(395, 695\)"):
        src.sample((400, 400), rng)


def test_mixed_source_draws_each_source_in_its_share_and_is_a_pure_function_of_the_rng(folder):
    """`--source synthetic:S+DIR`: the built-in scenes for a share S of the samples, the folder's crops for the rest;
    a sample depends only on its rng, the description names both sources."""
    from optisim.samples import make_source
    from optisim.scenes import SyntheticSource
    from optisim.sources import MixedSource

    path, _ = folder
    mixed = make_source(f"synthetic:0.7+{path}")
    assert isinstance(mixed, MixedSource) and isinstance(mixed.first, SyntheticSource)
    assert isinstance(mixed.second, ImageFolder) and mixed.share == 0.7
    assert make_source(f"synthetic+{path}").share == 0.5
    own = ImageFolder(path)
    picks = []
    for i in range(400):
        crop = mixed.sample((16, 16), np.random.default_rng([3, i]))
        np.testing.assert_array_equal(crop, mixed.sample((16, 16), np.random.default_rng([3, i])))
        assert crop.shape == (16, 16) and crop.dtype == np.float32
        rng = np.random.default_rng([3, i])
        from_folder = rng.random() >= 0.7
        if from_folder:
            np.testing.assert_array_equal(crop, own.sample((16, 16), rng))
        picks.append(not from_folder)
    assert 0.65 < np.mean(picks) < 0.75  # 400 seeded draws at share 0.7
    d = json.loads(json.dumps(mixed.describe()))
    assert d["kind"] == "mixed" and d["share"] == 0.7
    assert [s["kind"] for s in d["sources"]] == ["synthetic", "folder"]
    assert pickle.loads(pickle.dumps(mixed)).sample((16, 16), np.random.default_rng(5)).shape == (16, 16)


@pytest.mark.parametrize("spec", ["synthetic:1.5+{p}", "synthetic:0+{p}", "synthetic:x+{p}", "synthetic:+{p}",
                                  "synthetics+{p}", "synthetic+{p}/missing"])  # fmt: skip
def test_mixed_source_errors(folder, spec):
    from optisim.samples import make_source

    with pytest.raises(ValueError, match="source: expected"):
        make_source(spec.format(p=folder[0]))


def test_dataset_from_a_mixed_source_records_both(tmp_path):
    """`optisim dataset create --source synthetic:0.5+DIR` writes a dataset whose `source` attribute (read by h5py)
    describes the mix."""
    import h5py
    from click.testing import CliRunner

    from optisim.cli import main
    from optisim.lens import load_preset

    own = tmp_path / "own"
    own.mkdir()
    tifffile.imwrite(own / "cells.tif", ramp((200, 200)).astype(np.uint16))
    lens_file = load_preset("default").replace(sensor_shape=(128, 128)).save(tmp_path / "lens.toml")
    out = tmp_path / "mixed.h5"
    r = CliRunner().invoke(main, ["dataset", "create", str(lens_file), "--source", f"synthetic:0.5+{own}",
                                  "--n", "4", "--size", "64", "--grid", "4x4", "-o", str(out), "--quiet"])  # fmt: skip
    assert r.exit_code == 0, r.output
    with h5py.File(out, "r") as f:
        source = json.loads(f.attrs["source"])
        assert f["sharp"].shape[0] == 4
    assert source["kind"] == "mixed" and source["share"] == 0.5 and source["sources"][1]["kind"] == "folder"
