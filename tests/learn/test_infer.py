"""Tiled inference (learn.infer) and ``optisim deblur``: seams, sensor coordinates of tiles, files in and out."""

from __future__ import annotations

import itertools
import json
import warnings

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from shared_helpers import one_line_error
from shared_helpers import run_cli as run

from learn.checkpoint import load_model
from learn.infer import check_geometry, deblur_files, deblur_image, read_image_metadata, tile_spans
from learn.models import ModelConfig, build_model
from optisim.io import read_tiff_metadata, write_tiff
from optisim.lens import load_preset

SENSOR = (128, 128)


@pytest.fixture(scope="session")
def checkpoint(trained):
    return trained[0]


@pytest.fixture(scope="module")
def lively():
    """An untrained, non-residual CoordGate U-Net: its whole output is the network's, so any seam shows.

    (A model trained for one epoch outputs the input plus a nearly constant correction, which hides seams.)
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = ModelConfig(name="cg-unet", depth=3, width=8, sensor_shape=SENSOR, residual=False, gate_init="random")
        return build_model(config).eval()


@pytest.fixture(scope="module")
def scene():
    from scipy.ndimage import gaussian_filter

    image = gaussian_filter(np.random.default_rng(0).random(SENSOR), 2)
    return ((image - image.min()) / np.ptp(image)).astype(np.float32)


def relative_psnr(test, reference):
    """PSNR in dB with the reference's peak-to-peak range as the data range."""
    mse = np.mean((test.astype(np.float64) - reference) ** 2)
    return 10 * np.log10(np.ptp(reference) ** 2 / mse)


class ZeroOffsets(torch.nn.Module):
    """A model wrapper that drops the tiles' offsets, as a tiler that forgot them would."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, x, offsets):
        return self.model(x, torch.zeros_like(offsets))


# --- tiling -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_frame(lively, scene):
    return deblur_image(lively, scene)


def test_tiled_equals_full_frame_without_seams(lively, scene, full_frame):
    assert full_frame.shape == SENSOR and full_frame.dtype == np.float32
    assert np.std(full_frame) > 0.05 * np.ptp(full_frame)  # the output has structure, not just a constant
    tiled = deblur_image(lively, scene, tile=64, overlap=16, batch=3)
    assert relative_psnr(tiled, full_frame) >= 50


def test_butted_tiles_show_seams(lively, scene, full_frame):
    """The same comparison fails without blending: the test above can tell seams from none."""
    butted = deblur_image(lively, scene, tile=64, overlap=0)
    assert relative_psnr(butted, full_frame) < 40


def test_tiles_without_their_offsets_differ(lively, scene, full_frame):
    """The same comparison fails when the tiles do not carry their sensor offsets."""
    tiled = deblur_image(ZeroOffsets(lively), scene, tile=64, overlap=16)
    assert relative_psnr(tiled, full_frame) < 30


def test_crop_carries_its_sensor_coordinates(lively, scene, full_frame):
    """A crop at (y0, x0) deblurred with its offset equals the full frame there, away from the crop's border."""
    y0, x0, h, w, m = 32, 48, 64, 80, 24
    crop = deblur_image(lively, scene[y0 : y0 + h, x0 : x0 + w], offset=(y0, x0))
    reference = full_frame[y0 : y0 + h, x0 : x0 + w][m:-m, m:-m]
    assert relative_psnr(crop[m:-m, m:-m], reference) >= 80
    wrong = deblur_image(lively, scene[y0 : y0 + h, x0 : x0 + w], offset=(0, 0))
    assert relative_psnr(wrong[m:-m, m:-m], reference) < 30


def test_trained_checkpoint_tiled_matches_full_frame(checkpoint, scene):
    model, lens, _ = load_model(checkpoint)
    assert lens.sensor_shape == SENSOR
    full = deblur_image(model, scene)
    tiled = deblur_image(model, scene, tile=48, overlap=16, progress=False)
    assert 10 * np.log10(1 / np.mean((tiled - full) ** 2)) >= 50  # data range 1: normalised intensity


@pytest.mark.parametrize(("n", "tile", "overlap", "multiple"), [(128, 64, 16, 4), (100, 48, 16, 4), (37, 16, 5, 1)])
def test_tile_spans_cover_with_overlap(n, tile, overlap, multiple):
    spans = tile_spans(n, tile, overlap, multiple)
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(start % multiple == 0 for start, _ in spans)
    assert all(tile <= stop - start < tile + multiple for start, stop in spans)
    assert all(a[1] - b[0] >= overlap for a, b in itertools.pairwise(spans))


def test_tile_larger_than_image_is_one_tile(lively, scene, full_frame):
    assert tile_spans(50, 64, 16, 4) == [(0, 50)]
    np.testing.assert_allclose(deblur_image(lively, scene, tile=256), full_frame, rtol=0, atol=1e-6)


def test_deblur_image_rejects_bad_arguments(lively, scene):
    with pytest.raises(ValueError, match=r"overlap: expected an integer in \[0, tile\) = \[0, 64\) pixels, got 64"):
        deblur_image(lively, scene, tile=64, overlap=64)
    with pytest.raises(ValueError, match="tile: expected None or a positive tile side in pixels, got 0"):
        deblur_image(lively, scene, tile=0)
    with pytest.raises(ValueError, match=r"image: expected a 2-D \(H, W\) array .* got shape \(2, 128, 128\)"):
        deblur_image(lively, np.stack([scene, scene]))
    with pytest.raises(ValueError, match="offset: expected two integers >= 0"):
        deblur_image(lively, scene, offset=(-1, 0))
    with pytest.raises(
        ValueError,
        match=r"offset: an image of 128x128 pixels at \(y0, x0\) = \(0, 8\) extends past "
        r"the model's sensor \(128x128\)",
    ):
        deblur_image(lively, scene, offset=(0, 8))


# --- geometry checks ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lens():
    return load_preset("default").replace(sensor_shape=SENSOR)


def test_image_larger_than_sensor_is_an_error(lens):
    with pytest.raises(
        ValueError,
        match=r"image: 130x128 pixels is larger than the sensor .* \(128x128\); .*"
        "coordinates would be meaningless",
    ):
        check_geometry(lens, (130, 128), None)


def test_image_that_does_not_fit_at_offset_is_an_error(lens):
    with pytest.raises(
        ValueError,
        match=r"offset: an image of 64x64 pixels at \(y0, x0\) = \(80, 0\) extends past "
        r"the sensor \(128x128\).*expected y0 <= 64 and x0 <= 64",
    ):
        check_geometry(lens, (64, 64), (80, 0))


def test_small_image_without_offset_warns(lens):
    with pytest.warns(
        UserWarning,
        match=r"smaller than the sensor \(128x128\): assuming it starts at the sensor's "
        "top-left corner; pass --offset",
    ):
        assert check_geometry(lens, (64, 64), None) == (0, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_geometry(lens, (64, 64), (10, 20)) == (10, 20)
        assert check_geometry(lens, SENSOR, None, pixel_size_um=0.26) == (0, 0)  # 4 %: within tolerance


def test_pixel_size_mismatch_warns_naming_both(lens):
    with pytest.warns(
        UserWarning,
        match=r"pixel size: the image has 0.3 µm pixels, the lens 'default' of the "
        r"network 0.25 µm",
    ):
        check_geometry(lens, SENSOR, (0, 0), pixel_size_um=0.3)


# --- files and the command line -------------------------------------------------------------------------------------


def test_cli_one_tiff(checkpoint, scene, tmp_path):
    camera = scene * 1000 + 100  # camera units
    write_tiff(tmp_path / "in.tif", camera, pixel_um=0.26, metadata={"note": "bench 3"})
    r = run("deblur", checkpoint, tmp_path / "in.tif", "-o", tmp_path / "out.tif", "--tile", 64, "--quiet")
    assert "wrote" in r.output and "in 64x64 tiles overlapping by 32" in r.output
    with tifffile.TiffFile(tmp_path / "out.tif") as f:
        out = f.asarray()
        xres = f.pages[0].tags["XResolution"].value
    assert out.dtype == np.float32 and out.shape == SENSOR
    assert xres[0] / xres[1] == pytest.approx(1 / 0.26, rel=1e-4)
    meta = read_tiff_metadata(tmp_path / "out.tif")
    assert meta["pixel_size_um"] == 0.26 and meta["input_metadata"]["note"] == "bench 3"
    assert meta["checkpoint_name"] == "best.pt" and meta["model"]["name"] == "cg-unet" and meta["tile"] == 64
    assert np.median(out) == pytest.approx(np.median(camera), rel=0.05)  # back in the input's units


def test_output_in_the_input_units(checkpoint, scene, tmp_path):
    """Percentile normalisation is affine-invariant: two affine copies of an image give affine copies out."""
    write_tiff(tmp_path / "a.tif", scene * 1000 + 100, pixel_um=0.25)
    write_tiff(tmp_path / "b.tif", scene * 2 + 5, pixel_um=0.25)
    a, b = (deblur_files(checkpoint, tmp_path / f"{n}.tif", tmp_path / "out", progress=False)[0] for n in "ab")
    out_a, out_b = tifffile.imread(a).astype(np.float64), tifffile.imread(b).astype(np.float64)
    np.testing.assert_allclose((out_a - 100) / 1000 * 2 + 5, out_b, rtol=0, atol=1e-4)
    norm = read_tiff_metadata(a)["normalisation"]
    assert norm["percentiles"] == [0.1, 99.9] and norm["p_hi"] > norm["p_lo"] >= 100


def test_cli_folder_of_two_files_png_included(checkpoint, scene, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    write_tiff(folder / "first.tif", scene, pixel_um=0.25)
    Image.fromarray((scene * 255).astype(np.uint8)).save(folder / "second.png")
    (folder / "notes.txt").write_text("not an image")
    run("deblur", checkpoint, folder, "-o", tmp_path / "out", "--device", "cpu", "--quiet")
    outputs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outputs == ["first.tif", "second.tif"]
    for name in outputs:
        image = tifffile.imread(tmp_path / "out" / name)
        assert image.dtype == np.float32 and image.shape == SENSOR and np.isfinite(image).all()
    png_out = tifffile.imread(tmp_path / "out" / "second.tif")
    assert 0 <= np.median(png_out) <= 255  # 8-bit units
    assert read_image_metadata(tmp_path / "out" / "first.tif")[0] == 0.25
    assert read_tiff_metadata(tmp_path / "out" / "second.tif")["pixel_size_um"] == 0.25  # the lens's, PNG has none


def test_cli_crop_with_offset(checkpoint, scene, tmp_path):
    write_tiff(tmp_path / "crop.tif", scene[32:96, 16:80], pixel_um=0.25)
    r = run("deblur", checkpoint, tmp_path / "crop.tif", "-o", tmp_path / "out.tif", "--offset", "32,16", "--quiet")
    assert "Warning" not in r.output
    assert read_tiff_metadata(tmp_path / "out.tif")["offset"] == [32, 16]
    r = run("deblur", checkpoint, tmp_path / "crop.tif", "-o", tmp_path / "out2.tif", "--quiet")
    assert "crop.tif: image of 64x64 pixels is smaller than the sensor" in r.output and "--offset" in r.output


def test_cli_image_larger_than_sensor(checkpoint, tmp_path):
    write_tiff(tmp_path / "big.tif", np.zeros((200, 128)), pixel_um=0.25)
    r = run("deblur", checkpoint, tmp_path / "big.tif", "-o", tmp_path / "out.tif", ok=False)
    one_line_error(r, "big.tif: image: 200x128 pixels is larger than the sensor of the lens 'default' (128x128)")


def test_cli_pixel_size_mismatch_warns(checkpoint, scene, tmp_path):
    write_tiff(tmp_path / "coarse.tif", scene, pixel_um=0.5)
    r = run("deblur", checkpoint, tmp_path / "coarse.tif", "-o", tmp_path / "out.tif", "--quiet")
    assert (
        "Warning: coarse.tif: pixel size: the image has 0.5 µm pixels, the lens 'default' of the network 0.25 µm"
        in r.output
    )


def test_cli_corrupt_checkpoint(tmp_path, scene):
    write_tiff(tmp_path / "in.tif", scene, pixel_um=0.25)
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage" * 100)
    r = run("deblur", tmp_path / "bad.pt", tmp_path / "in.tif", "-o", tmp_path / "out.tif", ok=False)
    one_line_error(r, "bad.pt: not a readable checkpoint")


def test_cli_checkpoint_of_another_format(tmp_path, scene):
    write_tiff(tmp_path / "in.tif", scene, pixel_um=0.25)
    torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 3}, tmp_path / "other.pt")
    r = run("deblur", tmp_path / "other.pt", tmp_path / "in.tif", "-o", tmp_path / "out.tif", ok=False)
    one_line_error(r, "other.pt: not an optisim checkpoint (no 'optisim-checkpoint' format key)")


def test_cli_bad_options(checkpoint, tmp_path, scene):
    write_tiff(tmp_path / "in.tif", scene, pixel_um=0.25)
    r = run("deblur", checkpoint, tmp_path / "in.tif", "-o", tmp_path / "o.tif", "--offset", "3", ok=False)
    assert r.exit_code == 2 and "expected two integers Y0,X0" in r.output
    r = run(
        "deblur", checkpoint, tmp_path / "in.tif", "-o", tmp_path / "o.tif", "--tile", 32, "--overlap", 32, ok=False
    )
    assert r.exit_code == 2 and "expected an overlap smaller than --tile 32, got 32" in r.output
    r = run("deblur", checkpoint, tmp_path / "in.tif", "-o", tmp_path, ok=False)
    one_line_error(r, "would overwrite an input")


def test_read_image_metadata_of_foreign_files(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((8, 8), np.uint16), description="camera XYZ")
    assert read_image_metadata(tmp_path / "plain.tif") == (None, {"description": "camera XYZ"})
    tifffile.imwrite(
        tmp_path / "ij.tif",
        np.zeros((8, 8), np.float32),
        imagej=True,
        resolution=(2.5, 2.5),
        metadata={"unit": "micron", "Info": "free text from Fiji"},
    )
    pixel, meta = read_image_metadata(tmp_path / "ij.tif")
    assert pixel == pytest.approx(0.4) and meta == {"description": "free text from Fiji"}
    assert json.loads(json.dumps(meta)) == meta


def test_multi_channel_input_one_file_per_plane(checkpoint, scene, tmp_path):
    rgb = np.stack([scene, scene[::-1], scene[:, ::-1]], axis=-1)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(tmp_path / "rgb.png")
    written = deblur_files(checkpoint, tmp_path / "rgb.png", tmp_path / "out", progress=False)
    assert [p.name for p in written] == ["rgb_plane0.tif", "rgb_plane1.tif", "rgb_plane2.tif"]
    assert [read_tiff_metadata(p)["plane"] for p in written] == [0, 1, 2]
    one = deblur_files(checkpoint, tmp_path / "rgb.png", tmp_path / "g.tif", channel=1, progress=False)
    assert [p.name for p in one] == ["g.tif"] and read_tiff_metadata(one[0])["channel"] == 1
    np.testing.assert_allclose(tifffile.imread(one[0]), tifffile.imread(written[1]), rtol=0, atol=1e-4)


def test_cli_checkpoint_with_missing_weights_names_them(checkpoint, scene, tmp_path):
    state = torch.load(checkpoint, weights_only=True)
    del state["model"]["net.outc.weight"]
    torch.save(state, tmp_path / "partial.pt")
    write_tiff(tmp_path / "in.tif", scene, pixel_um=0.25)
    r = run("deblur", tmp_path / "partial.pt", tmp_path / "in.tif", "-o", tmp_path / "out.tif", ok=False)
    one_line_error(r, "partial.pt: weights do not fit a cg-unet(3) width 8")
    assert "net.outc.weight" in r.output


def test_flux_keeping_model_tiles_without_seams(scene):
    """keep_flux's layer reaches 2.5 PSF windows: tiled inference applies it once to the blended whole, so the
    tiles match the full frame at the usual overlap."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = ModelConfig(name="cg-unet", depth=3, width=8, sensor_shape=SENSOR, residual=False, gate_init="random",
                             psf_size=15, keep_flux=True)  # fmt: skip
        model = build_model(config).eval()
    full = deblur_image(model, scene)
    assert relative_psnr(deblur_image(model, scene, tile=64, overlap=16), full) >= 50
