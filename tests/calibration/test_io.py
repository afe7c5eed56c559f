"""Reading bead images: calibration.io (TIFF, ImageJ, OME-TIFF, HDF5; sampling metadata; errors)."""

import os
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from calibration.io import BeadStack, read_bead_files, read_beads, resolve_sampling

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"


def beads(shape, dtype=np.uint16, seed=0):
    """A non-constant test image: background noise with a few bright pixels."""
    rng = np.random.default_rng(seed)
    image = rng.integers(10, 60, shape)
    image[..., 8, 8] = 250
    return image.astype(dtype)


def real(relative):
    path = REAL / relative
    if not path.is_file():
        pytest.skip(f"real data not found: {path}")
    return path


def write_imagej(path, data, *, resolution=(10.0, 10.0), unit="um", spacing=0.25, axes="ZYX"):
    metadata = {"axes": axes, "unit": unit}
    if spacing is not None:
        metadata["spacing"] = spacing
    tifffile.imwrite(path, data, imagej=True, resolution=resolution, metadata=metadata)
    return path


# ---- the real files -------------------------------------------------------------------------------------------------


def test_real_confocal_imagej_stack():
    path = real("beads_confocal_bian/Bead_Image1_crop.tif")
    stack = read_beads(path)
    assert stack.data.shape == (41, 150, 150) and stack.data.dtype == np.float32
    np.testing.assert_array_equal(stack.data, tifffile.imread(path).astype(np.float32))
    assert stack.pixel_um == pytest.approx(1 / 44.460534, rel=1e-9)  # 0.022492 µm; the source documents 0.0225
    assert stack.z_step_um == pytest.approx(0.125)
    assert stack.saturation == 255
    assert stack.is_stack and stack.shape == (150, 150)
    assert stack.metadata["pixel_um"] == "ImageJ resolution tags (unit µm)"  # the file stores the text '\u00B5m'
    assert stack.metadata["z_step_um"] == "ImageJ spacing (unit µm)"
    assert stack.metadata["dtype"] == "uint8" and stack.metadata["shape"] == [41, 150, 150]
    assert stack.metadata["format"] == "ImageJ TIFF"


def test_real_llsm_psf_has_no_usable_sampling():
    path = real("bead_psf_llsm_pycudadecon/psf.tif")
    stack = read_beads(path)
    assert stack.data.shape == (61, 128, 128) and stack.data.dtype == np.float32
    assert stack.pixel_um is None and stack.z_step_um is None
    assert stack.saturation == 65535 and stack.metadata["dtype"] == "uint16"
    assert stack.metadata["pixel_um"].startswith("none: ResolutionUnit NONE")
    assert stack.metadata["planes_axis"] == "I"  # a plain multi-page TIFF: tifffile calls the page axis 'I'
    with pytest.raises(ValueError, match=r"psf.tif: a z-stack of 61 planes needs its z-step; pass --z-step \(µm\)"):
        resolve_sampling(stack)
    assert resolve_sampling(stack, pixel_um=0.101, z_step_um=0.1) == (0.101, 0.1)


def test_real_fibre_image_is_2d_without_pixel_size():
    stack = read_beads(real("beads_fibre_svdeconrl/Beads.tif"))
    assert stack.data.shape == (1, 357, 357) and not stack.is_stack and stack.shape == (357, 357)
    assert stack.pixel_um is None and stack.z_step_um is None and stack.saturation == 255
    assert stack.metadata["pixel_um"] == "none: no ImageJ unit"
    assert resolve_sampling(stack) == (None, None)


# ---- TIFF round trips -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "resolution", "spacing", "pixel_um", "z_step_um"),
    [
        ("um", 10.0, 0.25, 0.1, 0.25),
        ("\\u00B5m", 10.0, 0.25, 0.1, 0.25),  # ImageJ's own spelling of µm
        ("micron", 4.0, 0.5, 0.25, 0.5),
        ("nm", 0.01, 250.0, 0.1, 0.25),
        ("mm", 10000.0, 0.00025, 0.1, 0.25),
    ],
)
def test_imagej_stack_round_trip(tmp_path, unit, resolution, spacing, pixel_um, z_step_um):
    data = beads((5, 32, 40))
    stack = read_beads(
        write_imagej(tmp_path / "s.tif", data, resolution=(resolution, resolution), unit=unit, spacing=spacing)
    )
    np.testing.assert_array_equal(stack.data, data.astype(np.float32))
    assert stack.pixel_um == pytest.approx(pixel_um) and stack.z_step_um == pytest.approx(z_step_um)
    assert stack.shape == (32, 40) and stack.saturation == 65535
    assert stack.metadata["pixel_um"].startswith("ImageJ resolution tags")


@pytest.mark.parametrize("unit", ["pixel", "inch", "cm", ""])
def test_imagej_without_a_microscope_unit_has_no_pixel_size(tmp_path, unit):
    stack = read_beads(write_imagej(tmp_path / "s.tif", beads((3, 32, 32)), unit=unit))
    assert stack.pixel_um is None and stack.z_step_um is None
    assert stack.metadata["pixel_um"].startswith("none")


def test_imagej_resolution_of_one_pixel_per_unit_is_unknown(tmp_path):
    stack = read_beads(write_imagej(tmp_path / "s.tif", beads((3, 32, 32)), resolution=(1.0, 1.0)))
    assert stack.pixel_um is None and stack.z_step_um == pytest.approx(0.25)


def test_ome_tiff_physical_size_in_nm(tmp_path):
    data = beads((4, 32, 32))
    metadata = {"axes": "ZYX", "PhysicalSizeX": 100, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 100}
    metadata |= {"PhysicalSizeYUnit": "nm", "PhysicalSizeZ": 0.3}
    tifffile.imwrite(tmp_path / "s.ome.tif", data, ome=True, metadata=metadata)
    stack = read_beads(tmp_path / "s.ome.tif")
    assert stack.pixel_um == pytest.approx(0.1) and stack.z_step_um == pytest.approx(0.3)
    assert stack.metadata["pixel_um"] == "OME-XML PhysicalSizeX (nm)"
    assert stack.metadata["z_step_um"] == "OME-XML PhysicalSizeZ (µm)"
    assert stack.metadata["format"] == "OME-TIFF"


def test_ome_multichannel_needs_channel(tmp_path):
    data = np.stack([beads((3, 32, 32), seed=0), beads((3, 32, 32), seed=1)])  # (C, Z, Y, X)
    path = tmp_path / "c.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "CZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2})
    with pytest.raises(
        ValueError, match=r"c.ome.tif: the image has 2 channels \(axes 'CZYX'\); choose one with --channel"
    ):
        read_beads(path)
    stack = read_beads(path, channel=1)
    np.testing.assert_array_equal(stack.data, data[1].astype(np.float32))
    assert stack.pixel_um == pytest.approx(0.2) and stack.metadata["channel"] == 1
    with pytest.raises(ValueError, match=r"channel: .* has 2 channels \(axes 'CZYX'\); expected 0 to 1, got 5"):
        read_beads(path, channel=5)


def test_imagej_hyperstack_channel(tmp_path):
    data = np.stack([beads((4, 32, 32), seed=s) for s in range(3)], axis=1)  # (Z, C, Y, X)
    path = write_imagej(tmp_path / "h.tif", data, axes="ZCYX")
    with pytest.raises(ValueError, match=r"h.tif: the image has 3 channels \(axes 'ZCYX'\); choose one with --channel"):
        read_beads(path)
    stack = read_beads(path, channel=2)
    np.testing.assert_array_equal(stack.data, data[:, 2].astype(np.float32))
    assert stack.pixel_um == pytest.approx(0.1) and stack.z_step_um == pytest.approx(0.25)


def test_rgb_needs_channel(tmp_path):
    data = np.moveaxis(beads((3, 32, 32), np.uint8), 0, -1)  # (Y, X, S)
    data[..., 1] += 5
    tifffile.imwrite(tmp_path / "rgb.tif", data, photometric="rgb")
    with pytest.raises(
        ValueError, match=r"rgb.tif: the image has 3 colour samples per pixel \(RGB\) \(axes 'YXS'\); choose"
    ):
        read_beads(tmp_path / "rgb.tif")
    stack = read_beads(tmp_path / "rgb.tif", channel=1)
    np.testing.assert_array_equal(stack.data[0], data[..., 1].astype(np.float32))


def test_channel_of_a_single_channel_image(tmp_path):
    path = write_imagej(tmp_path / "s.tif", beads((3, 32, 32)))
    assert read_beads(path, channel=0).data.shape == (3, 32, 32)
    with pytest.raises(ValueError, match=r"channel: .*s.tif has a single channel \(axes 'ZYX'\); expected 0, got 1"):
        read_beads(path, channel=1)
    with pytest.raises(ValueError, match=r"channel: expected an index >= 0, got -1"):
        read_beads(path, channel=-1)


def test_time_axis_counts_as_planes_unless_there_is_another(tmp_path):
    tifffile.imwrite(tmp_path / "t.tif", beads((3, 32, 32)), photometric="minisblack", metadata={"axes": "TYX"})
    stack = read_beads(tmp_path / "t.tif")
    assert stack.data.shape == (3, 32, 32) and stack.metadata["planes_axis"] == "T"
    tifffile.imwrite(tmp_path / "tz.tif", beads((3, 2, 32, 32)), metadata={"axes": "TZYX"})
    with pytest.raises(ValueError, match=r"tz.tif: the image has 2 stack axes \(axes 'TZYX'"):
        read_beads(tmp_path / "tz.tif")


@pytest.mark.parametrize(
    ("unit", "metadata", "pixel_um"),
    [
        ("CENTIMETER", None, None),  # a print resolution
        ("INCH", None, None),
        ("NONE", None, None),
        ("MICROMETER", None, 0.1),
        ("MILLIMETER", None, 100.0),
        ("CENTIMETER", {"unit": "um"}, 0.1),  # pixels per µm, as the writer's metadata says
    ],
)
def test_plain_tiff_resolution_unit(tmp_path, unit, metadata, pixel_um):
    tifffile.imwrite(tmp_path / "p.tif", beads((32, 32)), resolution=(10, 10), resolutionunit=unit, metadata=metadata)
    stack = read_beads(tmp_path / "p.tif")
    assert stack.pixel_um == (pytest.approx(pixel_um) if pixel_um else None)
    assert stack.data.shape == (1, 32, 32) and stack.z_step_um is None


def test_non_square_pixels_warn(tmp_path):
    path = write_imagej(tmp_path / "s.tif", beads((3, 32, 32)), resolution=(10.0, 5.0))
    with pytest.warns(UserWarning, match=r"pixels are not square .*x 0.1 µm, y 0.2 µm\); using x"):
        assert read_beads(path).pixel_um == pytest.approx(0.1)


def test_float_and_signed_images(tmp_path):
    tifffile.imwrite(tmp_path / "f.tif", beads((32, 32), np.float64) / 7)
    stack = read_beads(tmp_path / "f.tif")
    assert stack.data.dtype == np.float32 and stack.saturation is None and stack.metadata["dtype"] == "float64"
    tifffile.imwrite(tmp_path / "i.tif", beads((32, 32), np.int16))
    assert read_beads(tmp_path / "i.tif").saturation == 32767


# ---- HDF5 -----------------------------------------------------------------------------------------------------------


def test_hdf5_element_size_um(tmp_path):
    data = beads((5, 32, 32))
    with h5py.File(tmp_path / "b.h5", "w") as h5:
        h5.create_dataset("beads", data=data).attrs["element_size_um"] = (0.3, 0.1, 0.1)
        h5.create_dataset("meta/info", data=np.arange(4))  # 1D: not an image candidate
    stack = read_beads(tmp_path / "b.h5")
    np.testing.assert_array_equal(stack.data, data.astype(np.float32))
    assert stack.pixel_um == pytest.approx(0.1) and stack.z_step_um == pytest.approx(0.3)
    assert stack.metadata["pixel_um"] == "HDF5 attribute 'element_size_um' of dataset '/beads'"
    assert stack.metadata["dataset"] == "beads" and stack.saturation == 65535


def test_hdf5_pixel_size_on_dataset_wins_over_file(tmp_path):
    with h5py.File(tmp_path / "b.hdf5", "w") as h5:
        h5.attrs["pixel_size_um"] = 0.5
        h5.attrs["z_step_um"] = 0.4
        h5.create_dataset("image", data=beads((32, 32)).astype(np.float32)).attrs["pixel_size_um"] = 0.2
    stack = read_beads(tmp_path / "b.hdf5")
    assert stack.pixel_um == pytest.approx(0.2) and stack.z_step_um is None  # 2D: no z-step
    assert stack.saturation is None
    assert stack.metadata["pixel_um"] == "HDF5 attribute 'pixel_size_um' of dataset '/image'"


def test_hdf5_dataset_choice(tmp_path):
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("a", data=beads((32, 32)))
        h5.create_dataset("group/b", data=beads((2, 32, 32)))
        h5.create_dataset("line", data=np.arange(40.0))
    with pytest.raises(
        ValueError,
        match=r"two.h5: 2 image datasets in the file \('a' \(32, 32\), 'group/b' \(2, 32, 32\)\); "
        r"choose one with --dataset",
    ):
        read_beads(path)
    assert read_beads(path, dataset="group/b").data.shape == (2, 32, 32)
    assert read_beads(path, dataset="/a").data.shape == (1, 32, 32)
    with pytest.raises(ValueError, match=r"dataset: .*two.h5 has no dataset 'c' \(datasets: 'a' \(32, 32\)"):
        read_beads(path, dataset="c")
    with pytest.raises(ValueError, match=r"dataset: 'line' in .*two.h5 has shape \(40,\); expected a 2D image"):
        read_beads(path, dataset="line")


def test_hdf5_bad_size_attribute(tmp_path):
    with h5py.File(tmp_path / "b.h5", "w") as h5:
        h5.create_dataset("x", data=beads((3, 32, 32))).attrs["element_size_um"] = (0.1, 0.1)
        h5.create_dataset("y", data=beads((32, 32))).attrs["pixel_size_um"] = "0.1 um"
    with pytest.raises(ValueError, match=r"b.h5: HDF5 attribute 'element_size_um' of dataset '/x': expected 3 lengths"):
        read_beads(tmp_path / "b.h5", dataset="x")
    with pytest.raises(
        ValueError, match=r"b.h5: HDF5 attribute 'pixel_size_um' of dataset '/y': expected 1 length in µm, got '0.1 um'"
    ):
        read_beads(tmp_path / "b.h5", dataset="y")


def test_hdf5_without_image_dataset(tmp_path):
    with h5py.File(tmp_path / "none.h5", "w") as h5:
        h5.create_dataset("line", data=np.arange(40.0))
    with pytest.raises(
        ValueError, match=r"none.h5: no 2D or 3D image dataset in the file \(datasets: 'line' \(40,\)\)"
    ):
        read_beads(tmp_path / "none.h5")


# ---- errors ---------------------------------------------------------------------------------------------------------


def test_unsupported_extension(tmp_path):
    with pytest.raises(
        ValueError, match=r"b.png: unsupported file type '.png'; bead images are read from TIFF \(.tif, "
    ):
        read_beads(tmp_path / "b.png")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing.tif"):
        read_beads(tmp_path / "nothing.tif")


@pytest.mark.parametrize("name", ["text.tif", "text.h5"])
def test_text_file_is_not_an_image(tmp_path, name):
    (tmp_path / name).write_text("hello, I am not an image\n")
    with pytest.raises(ValueError, match=rf"{name}: not a readable image file \(.+\)$") as info:
        read_beads(tmp_path / name)
    assert "\n" not in str(info.value)


def truncate(path, fraction=0.5):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * fraction))
    return path


def test_truncated_2d_tiff(tmp_path):
    tifffile.imwrite(tmp_path / "t.tif", beads((64, 64)))
    with pytest.raises(ValueError, match=r"t.tif: not a readable image file \(.+\)$"):
        read_beads(truncate(tmp_path / "t.tif"))


@pytest.mark.parametrize("kind", ["plain", "imagej", "ome"])
@pytest.mark.parametrize("fraction", [0.5, 0.95])
def test_truncated_stack_does_not_lose_pages_silently(tmp_path, kind, fraction):
    path = tmp_path / "t.tif"
    data = beads((10, 64, 64))
    if kind == "imagej":
        write_imagej(path, data)
    else:
        tifffile.imwrite(path, data, ome=kind == "ome", metadata={"axes": "ZYX"})
    assert read_beads(path).data.shape == (10, 64, 64)
    with pytest.raises(ValueError, match=r"t.tif: not a readable image file \(.+\)$"):
        read_beads(truncate(path, fraction))


def test_constant_image(tmp_path):
    tifffile.imwrite(tmp_path / "c.tif", np.full((32, 32), 3, np.uint16))
    with pytest.raises(ValueError, match=r"c.tif: the image is constant \(every pixel is 3.0\): no beads can be found"):
        read_beads(tmp_path / "c.tif")


def test_too_small_image(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", beads((4, 12, 40)), photometric="minisblack", metadata={"axes": "ZYX"})
    with pytest.raises(
        ValueError, match=r"s.tif: the image is 12x40 pixels \(Y x X\); bead images must be at least 16x16"
    ):
        read_beads(tmp_path / "s.tif")


def test_non_finite_and_empty_images(tmp_path):
    image = beads((32, 32)).astype(np.float32)
    image[3, 4], image[5, 6] = np.nan, np.inf
    with h5py.File(tmp_path / "bad.h5", "w") as h5:
        h5.create_dataset("nan", data=image)
        h5.create_dataset("empty", data=np.zeros((0, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"bad.h5: 2 pixels are NaN or inf \(as float32\); bead images must be finite"):
        read_beads(tmp_path / "bad.h5", dataset="nan")
    with pytest.raises(ValueError, match=r"bad.h5: the image is empty \(shape \(0, 32, 32\)\)"):
        read_beads(tmp_path / "bad.h5", dataset="empty")


# ---- resolve_sampling ------------------------------------------------------------------------------------------------


def test_option_overrides_file_with_warning(tmp_path):
    stack = read_beads(write_imagej(tmp_path / "s.tif", beads((3, 32, 32))))
    with pytest.warns(UserWarning, match=r"--pixel-size 0.2 µm overrides the file's 0.1 µm \(ImageJ resolution tags"):
        assert resolve_sampling(stack, pixel_um=0.2) == (0.2, 0.25)
    with pytest.warns(UserWarning, match=r"--z-step 0.5 µm overrides the file's 0.25 µm \(ImageJ spacing"):
        assert resolve_sampling(stack, z_step_um=0.5) == pytest.approx((0.1, 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_sampling(stack, pixel_um=0.1005) == pytest.approx((0.1005, 0.25))  # within 1 %: no warning


@pytest.mark.parametrize("value", [0, -0.1, float("nan"), float("inf"), "abc"])
def test_invalid_options(tmp_path, value):
    stack = read_beads(write_imagej(tmp_path / "s.tif", beads((3, 32, 32))))
    with pytest.raises(ValueError, match=r"--pixel-size: expected a positive finite length in µm, got"):
        resolve_sampling(stack, pixel_um=value)
    with pytest.raises(ValueError, match=r"--z-step: expected a positive finite length in µm, got"):
        resolve_sampling(stack, z_step_um=value)


def test_z_step_is_none_for_2d_images():
    stack = BeadStack(beads((1, 32, 32)).astype(np.float32), Path("x.tif"), 0.1, None, 65535.0, {})
    assert resolve_sampling(stack, z_step_um=0.3) == (0.1, None)


# ---- read_bead_files -------------------------------------------------------------------------------------------------


def test_read_bead_files_from_a_folder(tmp_path):
    folder = tmp_path / "beads"
    folder.mkdir()
    write_imagej(folder / "b.tif", beads((3, 32, 32), seed=1))
    write_imagej(folder / "a.tif", beads((4, 32, 32), seed=2), spacing=None)
    with h5py.File(folder / "c.h5", "w") as h5:
        h5.create_dataset("x", data=beads((2, 32, 32))).attrs["element_size_um"] = (0.3, 0.1005, 0.1005)
    (folder / "notes.txt").write_text("not an image")
    with pytest.warns(
        UserWarning, match=r"--z-step 0.25 µm overrides the file's 0.3 µm \(HDF5 attribute 'element_size_um'"
    ):
        stacks = read_bead_files(folder, z_step_um=0.25)
    assert [s.path.name for s in stacks] == ["a.tif", "b.tif", "c.h5"]
    assert [s.z_step_um for s in stacks] == [0.25, 0.25, 0.25]
    assert stacks[0].pixel_um == pytest.approx(0.1) and stacks[2].pixel_um == pytest.approx(0.1005)
    assert stacks[0].metadata["z_step_um"] == "--z-step option (the file: none: no ImageJ spacing)"


def test_read_bead_files_option_makes_them_agree(tmp_path):
    paths = [write_imagej(tmp_path / "a.tif", beads((3, 32, 32))), tmp_path / "b.tif"]
    write_imagej(paths[1], beads((3, 32, 32)), resolution=(5.0, 5.0))
    with pytest.raises(
        ValueError, match=r"pixel sizes differ: .*a.tif has 0.1 µm pixels, .*b.tif has 0.2 µm pixels; pass"
    ):
        read_bead_files(paths)
    with pytest.warns(UserWarning, match="overrides the file's"):
        stacks = read_bead_files([str(p) for p in paths], pixel_um=0.15)
    assert [s.pixel_um for s in stacks] == [0.15, 0.15]
    assert stacks[1].metadata["pixel_um"] == "--pixel-size option (the file: ImageJ resolution tags (unit um))"


def test_read_bead_files_known_and_unknown_pixel_size(tmp_path):
    a = write_imagej(tmp_path / "a.tif", beads((3, 32, 32)))
    b = write_imagej(tmp_path / "b.tif", beads((3, 32, 32)), unit="pixel", spacing=None)
    with pytest.raises(ValueError, match=r"b.tif: a z-stack of 3 planes needs its z-step"):
        read_bead_files([a, b])
    with pytest.raises(ValueError, match=r"pixel sizes differ: .*a.tif has 0.1 µm pixels, .*b.tif has no pixel size"):
        read_bead_files([a, b], z_step_um=0.25)


def test_read_bead_files_mixed_2d_and_stacks(tmp_path):
    a = write_imagej(tmp_path / "a.tif", beads((3, 32, 32)))
    b = write_imagej(tmp_path / "b.tif", beads((32, 32)), axes="YX")
    with pytest.raises(ValueError, match=r"a.tif is a z-stack but .*b.tif is a 2D image; read 2D images and z-stacks"):
        read_bead_files([a, b])


def test_read_bead_files_different_sensor_shapes(tmp_path):
    a = write_imagej(tmp_path / "a.tif", beads((3, 32, 32)))
    b = write_imagej(tmp_path / "b.tif", beads((3, 32, 48)))
    with pytest.raises(ValueError, match=r"a.tif is \(32, 32\) \(Y, X\) pixels but .*b.tif is \(32, 48\)"):
        read_bead_files([a, b])


def test_read_bead_files_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: no bead images in this folder \(expected \*.tif, \*.tiff"):
        read_bead_files(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"paths: expected at least one bead image file or folder, got none"):
        read_bead_files([])
