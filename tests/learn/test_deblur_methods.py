"""Classical deblurring methods: RL-TV (learn.baselines.rl_tv), tiled deconvolution (learn.methods), and
``optisim deblur --method network|rl|rl-tv|wiener`` with coverage warnings and confidence maps."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile
import torch
from shared_helpers import one_line_error
from shared_helpers import run_cli as run

from learn.baselines import deconvolve, richardson_lucy_lowrank, rl_tv
from learn.methods import deconvolve_image, load_method
from learn.metrics import psnr
from optisim.blur import ProductConvolution
from optisim.coverage import LOW_CONFIDENCE, Coverage
from optisim.field import field_grid
from optisim.io import read_tiff_metadata, write_tiff
from optisim.lens import Lens, load_preset
from optisim.lowrank import EigenPSFs
from optisim.psfmodel import write_psf_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

F64 = torch.float64
SENSOR = (64, 64)
KERNEL = 15  # PSF radius 7


def gaussian(k, sigma):
    a = torch.arange(k, dtype=F64) - k // 2
    psf = torch.exp(-0.5 * (a[:, None] ** 2 + a[None] ** 2) / sigma**2)
    return psf / psf.sum()


def varying_operator(shape):
    """Two Gaussian eigen-PSFs blended left to right: a PSF that widens across the field."""
    ramp = torch.linspace(0, 1, shape[1], dtype=F64).expand(*shape)
    return ProductConvolution(torch.stack([1 - ramp, ramp]), torch.stack([gaussian(9, 1.5), gaussian(9, 2.5)]))


@pytest.fixture(scope="module")
def noisy_blocks():
    """(truth crop, noisy blurred crop, operator of the crop grown by a margin of 4, margin): blocks, 300 photons."""
    n, m = 48, 4
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(n + 2 * m, n + 2 * m, dtype=F64)
    for _ in range(12):
        r, c = (int(v) for v in torch.randint(0, n + 2 * m - 8, (2,), generator=gen))
        hh, ww = (int(v) for v in torch.randint(3, 9, (2,), generator=gen))
        x[r : r + hh, c : c + ww] += torch.rand(1, generator=gen, dtype=F64)
    x = x / x.max()
    op = varying_operator(x.shape)
    blurred = op(x)[m:-m, m:-m].clamp(min=0)
    noisy = torch.poisson(blurred * 300, generator=gen) / 300
    return x[m:-m, m:-m], noisy, op, m


# --- RL-TV ----------------------------------------------------------------------------------------------------------


def test_rl_tv_without_tv_is_richardson_lucy_on_the_same_pair(noisy_blocks):
    _, noisy, op, m = noisy_blocks
    plain = richardson_lucy_lowrank(noisy, op, iterations=15, margin=m)
    torch.testing.assert_close(rl_tv(noisy, op, tv=0, iterations=15, margin=m), plain, rtol=0, atol=1e-12)
    assert float((rl_tv(noisy, op, iterations=15, margin=m) - plain).abs().max()) > 1e-4  # the TV term acts


def test_rl_tv_beats_rl_on_a_noisy_image(noisy_blocks):
    """At the default λ = 0.002 and equal iterations; measured 26.4 against 25.3 dB (blurred input 21.9 dB)."""
    truth, noisy, op, m = noisy_blocks
    plain = richardson_lucy_lowrank(noisy, op, iterations=100, margin=m)
    tv = rl_tv(noisy, op, iterations=100, margin=m)
    assert float(psnr(tv, truth)) > float(psnr(plain, truth)) + 0.5
    assert float(psnr(plain, truth)) > float(psnr(noisy, truth)) + 2


def test_rl_tv_positive_and_keeps_the_flux(noisy_blocks):
    _, noisy, _, _ = noisy_blocks
    op = varying_operator(noisy.shape)  # margin 0: every unknown is observed, so sum(H x) is the whole flux
    y = noisy - 0.02  # some negative pixels: clamped to 0
    plain = richardson_lucy_lowrank(y, op, iterations=40)
    for weight in (0.002, 0.05):
        out = rl_tv(y, op, tv=weight, iterations=40)
        assert float(out.min()) >= 0
        assert abs(float(op(out).sum() / y.clamp(min=0).sum()) - 1) < 1e-6  # sum(H x) = sum(y), as plain RL
        # sum(x) exceeds sum(y) by the light of border sources that H sends out of the image: as much as RL's
        assert abs(float(out.sum() / plain.sum()) - 1) < 0.01


def test_rl_tv_scale_equivariant_and_batched(noisy_blocks):
    _, noisy, op, m = noisy_blocks
    one = rl_tv(noisy, op, iterations=10, margin=m)
    scaled = rl_tv(noisy * 250, op, iterations=10, margin=m) / 250  # exact but for the divisions' fixed eps
    torch.testing.assert_close(scaled, one, rtol=0, atol=1e-4 * float(one.max()))
    both = rl_tv(torch.stack([noisy, noisy.flip(1)]), op, iterations=10, margin=m)
    torch.testing.assert_close(both[0], one)


def test_rl_tv_stops_on_the_relative_change(noisy_blocks):
    _, noisy, op, m = noisy_blocks
    full = rl_tv(noisy, op, iterations=200, margin=m)
    early = rl_tv(noisy, op, iterations=200, margin=m, tol=1e-2)
    assert float((early - full).abs().max()) > 1e-3  # it stopped well before 200
    torch.testing.assert_close(rl_tv(noisy, op, iterations=200, margin=m, tol=1e-30), full)


def test_rl_tv_errors(noisy_blocks):
    _, noisy, op, m = noisy_blocks
    with pytest.raises(ValueError, match=re.escape("tv: expected a weight >= 0, got -0.1")):
        rl_tv(noisy, op, tv=-0.1, margin=m)
    with pytest.raises(ValueError, match=re.escape("tol: expected a positive relative change, got 0")):
        rl_tv(noisy, op, tol=0, margin=m)
    with pytest.raises(ValueError, match=re.escape("iterations: expected a positive integer, got 0")):
        rl_tv(noisy, op, iterations=0, margin=m)


# --- tiles ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lens():
    return load_preset("default").replace(sensor_shape=SENSOR)


@pytest.fixture(scope="module")
def model(lens):
    return EigenPSFs.from_lens(lens, kernel_size=KERNEL, grid=(5, 5))


@pytest.fixture(scope="module")
def scene_pair(model):
    """(sharp, blurred) full-sensor images in normalised intensity, float32."""
    from scipy.ndimage import gaussian_filter

    sharp = gaussian_filter(np.random.default_rng(0).random(SENSOR), 1.5)
    sharp = (sharp - sharp.min()) / np.ptp(sharp)
    blurred = model.operator(dtype=torch.float64)(torch.from_numpy(sharp)[None])[0].numpy()
    return sharp.astype(np.float32), blurred.astype(np.float32)


def relative_psnr(test, reference):
    return 10 * np.log10(np.ptp(reference) ** 2 / np.mean((test.astype(np.float64) - reference) ** 2))


@pytest.mark.parametrize(("method", "floor"), [("rl", 50), ("rl-tv", 50), ("wiener", 40)])
def test_tiled_equals_whole(model, scene_pair, method, floor):
    """With a halo of three PSF radii, tiles match the whole image: RL and RL-TV >= 50 dB (measured 57 dB at 128 px),
    Wiener >= 40 dB (its conjugate gradients couple the whole tile; measured 45 dB)."""
    _, blurred = scene_pair
    whole = deconvolve_image(model, blurred, method=method)
    tiled = deconvolve_image(model, blurred, method=method, tile=32, overlap=8, halo=21)
    assert whole.shape == tiled.shape == SENSOR and tiled.dtype == np.float32
    assert relative_psnr(tiled, whole) >= floor


def test_crop_uses_its_sensor_offset(model, scene_pair):
    sharp, blurred = scene_pair
    y0, x0 = 24, 30
    crop = blurred[y0:, x0:]
    right = deconvolve_image(model, crop, method="rl", offset=(y0, x0))
    np.testing.assert_allclose(
        right, deconvolve(torch.from_numpy(crop), model, method="rl", offset=(y0, x0)).numpy(), atol=1e-6
    )
    wrong = deconvolve_image(model, crop, method="rl", offset=(0, 0))
    assert relative_psnr(right, sharp[y0:, x0:]) > relative_psnr(wrong, sharp[y0:, x0:]) + 0.5


def test_deconvolve_image_errors(model, scene_pair):
    _, blurred = scene_pair
    with pytest.raises(ValueError, match=re.escape("halo: expected an integer of at least the PSF radius (7 pixels)")):
        deconvolve_image(model, blurred, method="rl", tile=32, halo=3)
    with pytest.raises(ValueError, match=re.escape("method: expected one of 'rl', 'rl-tv', 'wiener', got 'tv'")):
        deconvolve_image(model, blurred, method="tv")
    with pytest.raises(ValueError, match=re.escape("offset: an image of 64x64 pixels at (y0, x0) = (0, 4) extends")):
        deconvolve_image(model, blurred, method="rl", offset=(0, 4))
    with pytest.raises(ValueError, match="method 'rl': expected exactly one of lens and psf_model, got neither"):
        load_method("rl")
    with pytest.raises(ValueError, match="method 'network': expected a checkpoint and no lens"):
        load_method("network", lens="default")
    with pytest.raises(ValueError, match=r"settings: unknown key\(s\) halos; expected among iterations"):
        load_method("rl", lens="default", settings={"halos": 3})


# --- the command line -----------------------------------------------------------------------------------------------


def corner_coverage(low: bool) -> Coverage:
    """A coverage of the test sensor; with ``low``, spread and distance grow towards the top-left corner."""
    fy, fx = field_grid(SENSOR, (5, 5))
    yy, xx = np.meshgrid(fy, fx, indexing="ij")
    corner = np.clip(0.8 - np.hypot(yy - fy[0], xx - fx[0]), 0, None) if low else np.zeros((5, 5))
    return Coverage(fy, fx, 0.02 + 0.3 * corner, 0.3 * corner, SENSOR, "none")


@pytest.fixture(scope="module")
def files(tmp_path_factory, lens, model, scene_pair):
    root = tmp_path_factory.mktemp("deblur_methods")
    sharp, blurred = scene_pair
    write_tiff(root / "in.tif", blurred, pixel_um=lens.pixel_um)
    return {
        "root": root,
        "input": root / "in.tif",
        "lens": lens.save(root / "lens.toml"),
        "lens_obj": lens,
        "model": write_psf_model(root / "m.nc", model, lens),
        "covered": write_psf_model(root / "covered.nc", model, lens, coverage=corner_coverage(True)),
        "sharp": sharp,
        "blurred": blurred,
    }


@pytest.mark.parametrize(
    ("method", "source", "extra"),
    [
        ("rl", "--psf-model", ["--iterations", 20]),
        ("rl-tv", "--lens", ["--kernel-size", KERNEL, "--grid", "5x5", "--tv", 0.004, "--min-change", 1e-4]),
        ("wiener", "--psf-model", ["--balance", 3e-3]),
    ],
)
def test_cli_each_classical_method(files, method, source, extra, tmp_path):
    model_file = files["model"] if source == "--psf-model" else files["lens"]
    out = tmp_path / "out.tif"
    args = [files["input"], "-o", out, "--method", method, source, model_file, "--no-normalize", "--quiet", *extra]
    r = run("deblur", *args, "--tile", 32, "--overlap", 8, "--device", "cpu")
    assert f"deblurred 1 image(s) in 32x32 tiles overlapping by 8 with --method {method}" in r.output
    assert "Warning" not in r.output
    image = tifffile.imread(out)
    assert image.dtype == np.float32 and image.shape == SENSOR
    before = relative_psnr(files["blurred"], files["sharp"])
    assert relative_psnr(image, files["sharp"]) > before + 1  # sharper than the input
    meta = read_tiff_metadata(out)
    assert meta["method"] == method and meta["kernel_size"] == KERNEL and meta["halo"] == 14 and meta["tile"] == 32
    assert meta["coverage"] is None and Lens.from_toml(meta["lens"]) == files["lens_obj"]
    expected = {
        "rl": {"psf_model": str(files["model"]), "iterations": 20, "tv": None, "balance": None, "min_change": None},
        "rl-tv": {"lens_file": str(files["lens"]), "iterations": 30, "tv": 0.004, "min_change": 1e-4},
        "wiener": {"iterations": 50, "balance": 3e-3, "tv": None, "min_change": None},
    }[method]
    assert {k: meta[k] for k in expected} == expected


def test_cli_network_method_with_coverage(trained, files, tmp_path):
    """The network is the default method and takes --coverage like the others (the 128x128 trained sensor)."""
    checkpoint = trained[0]
    fy, fx = field_grid((128, 128), (5, 5))
    cov = Coverage(fy, fx, np.full((5, 5), 0.2), np.zeros((5, 5)), (128, 128))  # exp(-2) = 0.14 everywhere
    from optisim.coverage import write_coverage

    write_coverage(tmp_path / "cov.nc", cov)
    write_tiff(tmp_path / "net_in.tif", np.zeros((128, 128)) + files["blurred"].mean(), pixel_um=0.25)
    r = run("deblur", checkpoint, tmp_path / "net_in.tif", "-o", tmp_path / "o.tif", "--coverage", tmp_path / "cov.nc")
    assert "Warning: 100 % of net_in.tif lies beyond the calibration's coverage (confidence < 0.5, lowest 0.14)" in (
        r.output
    )
    meta = read_tiff_metadata(tmp_path / "o.tif")
    assert meta["method"] == "network" and meta["checkpoint_name"] == "best.pt"
    assert meta["coverage"] == str(tmp_path / "cov.nc")


def test_cli_coverage_warning_and_confidence_map(files, tmp_path):
    cov = corner_coverage(True)
    expected = cov.confidence_map()
    share = 100 * float((expected < LOW_CONFIDENCE).mean())
    assert 1 < share < 50
    write_tiff(tmp_path / "corner.tif", files["blurred"], pixel_um=0.25)
    args = ["deblur", tmp_path / "corner.tif", "-o", tmp_path / "out", "--method", "rl", "--iterations", 5, "--quiet"]
    r = run(*args, "--psf-model", files["covered"], "--confidence-map")  # the coverage comes with the PSF model
    line = (
        f"Warning: {share:.0f} % of corner.tif lies beyond the calibration's coverage (confidence < 0.5, lowest "
        f"{expected.min():.2f}); treat the result there with caution"
    )
    assert line in r.output and "deblurred 1 image(s) whole" in r.output
    conf = tifffile.imread(tmp_path / "out" / "corner_confidence.tif")
    assert conf.dtype == np.float32 and conf.shape == SENSOR
    np.testing.assert_allclose(conf, expected, rtol=1e-6)
    assert read_tiff_metadata(tmp_path / "out" / "corner.tif")["coverage"] == str(files["covered"])
    # the same image at an offset away from the corner, a crop: no warning; its confidence map is that region's
    write_tiff(tmp_path / "inner.tif", files["blurred"][32:, 32:], pixel_um=0.25)
    args = ["deblur", tmp_path / "inner.tif", "-o", tmp_path / "inner_out.tif", "--method", "rl", "--iterations", 5]
    r = run(
        *args, "--psf-model", files["model"], "--coverage", files["covered"], "--offset", "32,32", "--confidence-map"
    )
    assert "Warning" not in r.output
    np.testing.assert_allclose(tifffile.imread(tmp_path / "inner_out_confidence.tif"), expected[32:, 32:], rtol=1e-6)


def test_cli_full_coverage_gives_no_warning(files, lens, model, tmp_path):
    write_psf_model(tmp_path / "full.nc", model, lens, coverage=corner_coverage(False))
    write_tiff(tmp_path / "full_in.tif", files["blurred"], pixel_um=0.25)
    args = ["--method", "rl-tv", "--psf-model", tmp_path / "full.nc", "--iterations", 5, "--confidence-map"]
    r = run("deblur", tmp_path / "full_in.tif", "-o", tmp_path / "o.tif", *args)
    assert "Warning" not in r.output and (tmp_path / "o_confidence.tif").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "rl"], "--method rl needs one of --lens and --psf-model, got neither"),
        (
            ["--method", "wiener", "--lens", "L", "--psf-model", "M"],
            "--method wiener needs one of --lens and --psf-model, got both",
        ),
        ([], "--method network needs a CHECKPOINT before INPUT (or choose --method rl, rl-tv or wiener"),
        (["--psf-model", "M"], "--method network needs a CHECKPOINT before INPUT"),
        (["--method", "rl", "--psf-model", "M", "--tv", 0.01], "--tv applies to --method rl-tv"),
        (["--method", "rl-tv", "--psf-model", "M", "--balance", 0.01], "--balance applies to --method wiener"),
        (
            ["--method", "wiener", "--psf-model", "M", "--min-change", 0.01],
            "--min-change applies to --method rl or rl-tv",
        ),
        (
            ["--method", "rl", "--psf-model", "M", "--kernel-size", 15],
            "--kernel-size applies to --lens, not to --psf-model",
        ),
        (["--method", "rl", "--lens", "default", "--confidence-map"], "--confidence-map needs --coverage FILE"),
    ],
)
def test_cli_wrong_combinations(files, args, message):
    model = {"L": str(files["lens"]), "M": str(files["model"])}
    one_line_error(run("deblur", files["input"], "-o", "x.tif", *[model.get(a, a) for a in args], ok=False), message)


def test_cli_checkpoint_with_a_classical_method_or_options_with_the_network(files, tmp_path):
    r = run(
        "deblur", "best.pt", files["input"], "-o", "x.tif", "--method", "rl", "--psf-model", files["model"], ok=False
    )
    one_line_error(r, "--method rl takes no CHECKPOINT: give INPUT only, with --lens or --psf-model")
    r = run("deblur", "best.pt", files["input"], "-o", "x.tif", "--psf-model", files["model"], ok=False)
    one_line_error(r, "--psf-model applies to --method rl, rl-tv or wiener, not to the network")
    r = run("deblur", "best.pt", files["input"], "-o", "x.tif", "--iterations", 3, ok=False)
    one_line_error(r, "--iterations applies to --method rl, rl-tv or wiener, not to the network")


def test_cli_library_errors_are_one_line(files, tmp_path):
    base = ["deblur", files["input"], "-o", tmp_path / "o.tif", "--method", "rl"]
    r = run(*base, "--psf-model", files["model"], "--tile", 32, "--overlap", 8, "--halo", 3, ok=False)
    one_line_error(r, "halo: expected an integer of at least the PSF radius (7 pixels), got 3")
    write_tiff(tmp_path / "big.tif", np.zeros((80, 64)), pixel_um=0.25)
    r = run(
        "deblur",
        tmp_path / "big.tif",
        "-o",
        tmp_path / "o.tif",
        "--method",
        "rl",
        "--psf-model",
        files["model"],
        ok=False,
    )
    one_line_error(
        r,
        "big.tif: image: 80x64 pixels is larger than the sensor of the lens 'default' (64x64); the PSF "
        "model's field coordinates would be meaningless",
    )
    from optisim.coverage import write_coverage

    fy, fx = field_grid((128, 128), (4, 4))
    write_coverage(tmp_path / "other.nc", Coverage(fy, fx, np.zeros((4, 4)), np.zeros((4, 4)), (128, 128)))
    r = run(*base, "--psf-model", files["model"], "--coverage", tmp_path / "other.nc", ok=False)
    one_line_error(r, "other.nc maps a 128x128 sensor, the model's sensor is 64x64")
