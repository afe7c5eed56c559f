"""Bead detection: positions, focus, rejection reasons, error messages, widths, and the real bead images."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from calibration.detect import Bead, DetectConfig, Detection, beads_table, check_detection, detect_beads
from calibration.measure import (
    FWHM_PER_SIGMA,
    bead_fwhm,
    estimate_background,
    estimate_noise,
    estimate_psf_sigma,
    extract_crops,
)

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"


def add_spot(image, y, x, amplitude, sigma, sigma_minor=None, angle=0.0):
    """Add a point-sampled (elliptical) Gaussian spot, in place, within 6 sigma of its centre."""
    r = math.ceil(6 * sigma)
    sy = slice(max(0, math.floor(y) - r), min(image.shape[0], math.floor(y) + r + 2))
    sx = slice(max(0, math.floor(x) - r), min(image.shape[1], math.floor(x) + r + 2))
    yy, xx = np.ogrid[sy, sx]
    dy, dx = yy - y, xx - x
    u, v = dy * math.cos(angle) + dx * math.sin(angle), -dy * math.sin(angle) + dx * math.cos(angle)
    minor = sigma if sigma_minor is None else sigma_minor
    image[sy, sx] += amplitude * np.exp(-0.5 * ((u / sigma) ** 2 + (v / minor) ** 2))
    return image


def spots_image(shape, positions, amplitudes, *, sigma=2.0, background=100.0, rng=None, clip=None):
    """Gaussian spots on a flat background; Poisson noise when ``rng`` is given; optionally clipped (saturated)."""
    image = np.full(shape, float(background))
    for (y, x), amp in zip(positions, np.broadcast_to(amplitudes, len(positions)), strict=True):
        add_spot(image, y, x, amp, sigma)
    if rng is not None:
        image = rng.poisson(image).astype(float)
    return image if clip is None else np.minimum(image, clip)


def grid_positions(rng, n_side, spacing, offset):
    """``n_side**2`` positions on a square grid, each moved by a random sub-pixel amount."""
    base = np.array([(offset + i * spacing, offset + j * spacing) for i in range(n_side) for j in range(n_side)], float)
    return base + rng.uniform(-0.5, 0.5, base.shape)


def match(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Distance (px) from each true position to the nearest found one."""
    return np.min(np.linalg.norm(found[None, :, :] - truth[:, None, :], axis=-1), axis=1)


def positions(beads) -> np.ndarray:
    return np.array([[b.y, b.x] for b in beads]).reshape(-1, 2)


# ---- positions ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spot_sigma", [2.0, 2.6])  # matched filter of 2 px: exact, and too narrow
def test_positions_noiseless_spots_are_exact_at_any_subpixel_offset(spot_sigma):
    rng = np.random.default_rng(1)
    truth = grid_positions(rng, 5, 24, 20)
    image = spots_image((128, 128), truth, 1000.0, sigma=spot_sigma)
    det = detect_beads(image, DetectConfig(sigma_px=2.0))
    assert len(det.kept) == 25 and len(det.beads) == 25
    assert match(positions(det.kept), truth).max() < 0.05


def test_positions_with_poisson_noise_at_snr_50():
    rng = np.random.default_rng(2)
    truth = grid_positions(rng, 6, 30, 25)
    image = spots_image((200, 200), truth, 500.0, background=100.0, rng=rng)  # noise 10 -> SNR 50
    det = detect_beads(image, DetectConfig())  # sigma estimated
    assert det.sigma_px == pytest.approx(2.0, rel=0.05)
    assert len(det.kept) == 36
    assert np.sqrt(np.mean(match(positions(det.kept), truth) ** 2)) < 0.1
    assert det.noise_sigma == pytest.approx(10.0, rel=0.1)
    assert all(b.snr == pytest.approx(b.peak / det.noise_sigma) for b in det.beads)
    assert np.median([b.snr for b in det.kept]) == pytest.approx(50, rel=0.25)
    assert np.median([b.background for b in det.kept]) == pytest.approx(100, abs=2)
    assert [b.index for b in det.beads] == list(range(36))
    assert all(a.peak >= b.peak for a, b in zip(det.beads, det.beads[1:], strict=False))


def test_detection_is_deterministic():
    rng = np.random.default_rng(3)
    image = spots_image((96, 96), grid_positions(rng, 3, 30, 18), 400.0, rng=rng)
    assert detect_beads(image).beads == detect_beads(image).beads


@pytest.mark.parametrize("z_um", [8.0, 12.0])
def test_a_defocus_ring_is_one_bead(z_um, monkeypatch):
    """A bead 8 or 12 µm out of focus (NA 0.5: a ring with several local maxima) is one candidate at its centre."""
    from calibration import detect
    from optisim.aberrations import FieldModel
    from optisim.beads import render_beads
    from optisim.lens import load_preset

    lens = load_preset("default").replace(sensor_shape=(96, 96), aberrations=FieldModel())
    image = render_beads(lens, [47.3], [48.6], photons=2e5, z_um=[z_um], size=63)[0] + 20
    image = np.random.default_rng(0).poisson(image).astype(float)
    config = DetectConfig(sigma_px=0.88, window=31)
    det = detect_beads(image, config)
    assert len(det.beads) == 1 and len(det.kept) == 1
    assert math.hypot(det.kept[0].y - 47.3, det.kept[0].x - 48.6) < 0.5
    monkeypatch.setattr(detect, "MIN_SYMMETRY", 2.0)  # joining off: the ring's maxima are separate candidates
    assert len(detect_beads(image, config).beads) >= 3


def test_a_cluster_of_beads_is_not_joined():
    """Three spots in a triangle, joined by ridges but not point-symmetric: three candidates, all too close."""
    image = spots_image(
        (64, 64),
        [(30, 30), (30, 35), (34.5, 32.5)],
        [400.0] * 3,
        sigma=1.2,
        background=10.0,
        rng=np.random.default_rng(1),
    )
    det = detect_beads(image, DetectConfig(sigma_px=1.2, window=15))
    assert len(det.beads) == 3 and all(b.reason.startswith("too close") for b in det.beads)


# ---- rejections ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed():
    """One kept bead and one of each rejection reason (sigma 2 px, window 17, min_separation 12.75)."""
    rng = np.random.default_rng(4)
    image = spots_image((128, 128), [], [], background=10.0)
    for y, x, amp in [(30, 30, 200), (30, 38, 200), (4, 80, 200), (90, 30, 2000), (90, 90, 18), (60, 100, 200)]:
        add_spot(image, y + 0.2, x - 0.3, amp, 2.0)
    image = np.minimum(rng.poisson(image), 255).astype(np.uint8)
    return image, detect_beads(image, DetectConfig(sigma_px=2.0, saturation=255))


def test_every_rejection_reason(mixed):
    _, det = mixed
    assert det.window == 17
    by_place = {(round(b.y), round(b.x)): b for b in det.beads}
    assert len(by_place) == 6 == len(det.beads)
    assert by_place[(60, 100)].status == "kept" and by_place[(60, 100)].reason == ""
    assert by_place[(4, 80)].reason == "cut by the border"
    assert by_place[(90, 30)].reason.startswith("saturated (") and by_place[(90, 30)].reason.endswith(" pixels at 255)")
    a, b = by_place[(30, 30)], by_place[(30, 38)]
    distance = math.hypot(a.y - b.y, a.x - b.x)  # a little under 8 px: each spot's tail pulls the other's centroid
    assert 7 < distance < 8.2
    assert a.reason == f"too close to bead {b.index} ({distance:.1f} px < 12.8 px)"
    assert b.reason == f"too close to bead {a.index} ({distance:.1f} px < 12.8 px)"
    faint = by_place[(90, 90)]
    assert faint.reason.startswith("too faint (SNR ") and faint.reason.endswith(" < 10)") and faint.snr < 10
    assert all(b.status == "rejected" for b in det.rejected) and det.kept == [by_place[(60, 100)]]
    assert det.summary() == "6 candidates: 1 kept, 1 cut by the border, 1 saturated, 2 too close, 1 too faint"


def test_border_wins_over_saturation_and_saturation_over_closeness():
    image = spots_image((80, 80), [(3, 40), (40, 35), (40, 45)], 400.0, background=10.0, clip=255)
    image += np.random.default_rng(5).normal(0, 1, image.shape)
    det = detect_beads(image, DetectConfig(sigma_px=2.0, saturation=250))
    assert sorted(b.category for b in det.beads) == ["cut by the border", "saturated", "saturated"]


def test_max_beads_keeps_the_brightest():
    rng = np.random.default_rng(6)
    image = spots_image((64, 160), [(32, 30), (32, 80), (32, 130)], [300, 500, 400], background=10, rng=rng)
    det = detect_beads(image, DetectConfig(sigma_px=2.0, max_beads=2))
    assert [round(b.x) for b in det.kept] == [80, 130]
    assert [(round(b.x), b.reason) for b in det.rejected] == [(30, "over --max-beads")]
    assert det.summary() == "3 candidates: 2 kept, 1 over --max-beads"


def test_min_separation_zero_keeps_close_pairs():
    rng = np.random.default_rng(7)
    image = spots_image((64, 64), [(32, 28), (32, 37)], 300, background=10, rng=rng)
    assert len(detect_beads(image, DetectConfig(sigma_px=2.0, min_separation=0)).kept) == 2


# ---- messages -----------------------------------------------------------------------------------------------------


def test_check_detection_no_beads_in_pure_noise():
    image = np.random.default_rng(8).poisson(50.0, (128, 128)).astype(float)
    det = detect_beads(image, DetectConfig(sigma_px=2.0))
    assert det.beads == [] and det.summary() == "0 candidates: 0 kept"
    pattern = r"^no beads found above 6 sigma \(the brightest peak is \d\.\d sigma\); lower --threshold or check"
    with pytest.raises(ValueError, match=pattern):
        check_detection(det)
    with pytest.raises(ValueError, match=r"lower threshold or check the image$"):
        check_detection(det, threshold_option="threshold")


def test_sigma_cannot_be_estimated_from_pure_noise():
    image = np.random.default_rng(8).poisson(50.0, (128, 128)).astype(float)
    with pytest.raises(ValueError, match=r"^image2d: no isolated, unsaturated bead .* give the sigma in pixels"):
        detect_beads(image)


def test_check_detection_all_saturated():
    image = spots_image((96, 96), [(30, 30), (60, 66)], 1000.0, background=10.0, rng=np.random.default_rng(9))
    det = detect_beads(np.minimum(image, 255), DetectConfig(sigma_px=2.0, saturation=255))
    with pytest.raises(ValueError, match=r"^all 2 beads are saturated \(at 255\); reduce the exposure or the laser"):
        check_detection(det)


def test_check_detection_no_usable_and_ok(mixed):
    image, det = mixed
    check_detection(det)  # one kept bead: fine
    one = detect_beads(image[70:110, 70:110], DetectConfig(sigma_px=2.0, saturation=255))  # the faint bead alone
    with pytest.raises(ValueError, match=r"^no usable beads: 1 candidate: 0 kept, 1 too faint$"):
        check_detection(one)


# ---- stacks -------------------------------------------------------------------------------------------------------


def focus_stack(rng, beads, *, n_z=15, shape=(64, 96), sigma0=2.0, z_range=3.0, background=50.0):
    """Spots whose width grows as sqrt(1 + ((z - z0) / z_range)^2) away from focus z0 (energy conserved)."""
    stack = np.full((n_z, *shape), background)
    for y, x, z0, amp in beads:
        for z in range(n_z):
            s = sigma0 * math.sqrt(1 + ((z - z0) / z_range) ** 2)
            add_spot(stack[z], y, x, amp * (sigma0 / s) ** 2, s)
    return rng.poisson(stack).astype(np.uint16)


def test_stack_focus_and_position():
    rng = np.random.default_rng(10)
    stack = focus_stack(rng, [(32.3, 30.7, 7.3, 1000.0), (30.6, 70.2, 3.6, 800.0)])
    det = detect_beads(stack, DetectConfig(sigma_px=2.0))
    assert len(det.kept) == 2 and det.background.shape == (64, 96) and det.background.dtype == np.float32
    first, second = sorted(det.kept, key=lambda b: b.x)
    assert first.z == pytest.approx(7.3, abs=0.3) and second.z == pytest.approx(3.6, abs=0.3)
    assert match(positions(det.kept), np.array([[32.3, 30.7], [30.6, 70.2]])).max() < 0.2


@pytest.mark.parametrize("n_z", [1, 2, 3])
def test_short_stacks_find_the_beads_of_the_image(n_z):
    rng = np.random.default_rng(20)
    image = spots_image((96, 96), grid_positions(rng, 3, 30, 18), 400.0, rng=rng)
    flat = detect_beads(image, DetectConfig(sigma_px=2.0))
    stack = detect_beads(np.stack([image] * n_z), DetectConfig(sigma_px=2.0))
    assert len(stack.kept) == len(flat.kept) == 9
    assert match(positions(stack.kept), positions(flat.kept)).max() < 1e-6
    assert all(b.z is None for b in flat.beads) and all(0 <= b.z <= n_z - 1 for b in stack.beads)


def test_stack_ignores_hot_pixels_and_a_bright_plane():
    rng = np.random.default_rng(11)
    stack = focus_stack(rng, [(32.3, 30.7, 7.3, 1000.0)]).astype(float)
    stack[:, 20, 70] += 400  # a hot pixel in every plane (fixed pattern)
    stack[0] += 30  # a brighter first plane
    det = detect_beads(stack)
    assert len(det.beads) == 1 and det.beads[0].z == pytest.approx(7.3, abs=0.3)


# ---- widths -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [1.5, 2.0, 3.0])
def test_bead_fwhm_of_round_spots(sigma):
    rng = np.random.default_rng(12)
    pos = [(40.3, 40.6), (40.1, 100.4)]
    image = spots_image((80, 140), pos, 1000.0, sigma=sigma, background=20.0) + rng.normal(0, 2, (80, 140))
    fwhm = bead_fwhm(image, np.array(pos), window=31)
    np.testing.assert_allclose(fwhm, FWHM_PER_SIGMA * sigma, rtol=0.03)


def test_bead_fwhm_of_an_elliptical_spot_and_failures():
    image = np.full((64, 64), 5.0)
    add_spot(image, 32.4, 31.8, 500.0, 3.0, sigma_minor=1.5, angle=math.radians(30))
    image += np.random.default_rng(13).normal(0, 1, image.shape)
    fwhm = bead_fwhm(image, [(32.4, 31.8), (-50.0, 10.0), (5.0, 60.0)], window=31, background=5.0)
    np.testing.assert_allclose(fwhm[0], FWHM_PER_SIGMA * np.array([3.0, 1.5, math.sqrt(4.5)]), rtol=0.03)
    assert np.isnan(fwhm[1]).all()  # outside the image
    assert np.isnan(fwhm[2]).all() or fwhm[2, 0] > 0  # noise only: NaN or some width, never an exception


def test_bead_fwhm_accepts_beads():
    rng = np.random.default_rng(14)
    image = spots_image((80, 80), [(40.2, 39.7)], 800.0, sigma=2.5, background=30.0, rng=rng)
    det = detect_beads(image, DetectConfig(sigma_px=2.5))
    assert bead_fwhm(image, det.kept, window=det.window)[0, 2] == pytest.approx(2.5 * FWHM_PER_SIGMA, rel=0.03)


# ---- background, noise, sigma -------------------------------------------------------------------------------------


def test_background_follows_a_gradient_and_ignores_beads():
    rng = np.random.default_rng(15)
    yy, xx = np.indices((256, 256), dtype=float)
    smooth = 100 + 0.2 * yy + 50 * np.exp(-((xx - 128) ** 2) / (2 * 80.0**2))
    image = smooth.copy()
    for y, x in grid_positions(rng, 8, 30, 20):
        add_spot(image, y, x, 800.0, 2.0)
    bg = estimate_background(rng.poisson(image).astype(float), size=68)
    assert bg.shape == (256, 256)
    assert np.abs(bg - smooth).max() < 0.5 * math.sqrt(smooth.max())


def test_background_and_noise_of_a_large_image_are_fast():
    rng = np.random.default_rng(16)
    image = rng.normal(100.0, 5.0, (1024, 1024))
    start = time.perf_counter()
    bg = estimate_background(image, size=68)
    print(f"estimate_background 1024x1024: {time.perf_counter() - start:.3f} s")
    assert np.abs(bg - 100).max() < 1.5
    assert estimate_noise(image - bg) == pytest.approx(5.0, rel=0.03)


def test_noise_ignores_outliers_and_handles_quantisation():
    rng = np.random.default_rng(17)
    r = rng.normal(0, 3.0, 100_000)
    r[:2000] += 500  # beads
    assert estimate_noise(r) == pytest.approx(3.0, rel=0.03)
    quantised = (rng.random(10_000) < 0.1).astype(float)  # mostly 0, some 1: the MAD is 0
    assert 0.1 < estimate_noise(quantised) < 1
    assert 0 < estimate_noise(np.zeros(100)) < 1e-200
    with pytest.raises(ValueError, match="residual2d: expected at least one finite value"):
        estimate_noise([np.nan])


def test_psf_sigma_from_beads_skips_saturated_and_crowded_ones():
    rng = np.random.default_rng(18)
    image = spots_image((160, 160), grid_positions(rng, 4, 36, 26), 200.0, sigma=3.0, background=20.0, rng=rng)
    add_spot(image, 80, 80, 3000.0, 3.0)  # a saturated bead
    assert estimate_psf_sigma(np.minimum(image, 255), saturation=255) == pytest.approx(3.0, rel=0.05)


def test_big_image_with_50_beads():
    rng = np.random.default_rng(19)
    truth = np.array([(60 + 130 * i, 40 + 100 * j) for i in range(5) for j in range(10)], float)
    truth += rng.uniform(-0.5, 0.5, truth.shape)
    image = spots_image((1024, 1024), truth, 400.0, background=100.0, rng=rng)
    start = time.perf_counter()
    det = detect_beads(image)
    print(f"detect_beads 1024x1024, 50 beads, sigma estimated: {time.perf_counter() - start:.2f} s")
    assert len(det.kept) == 50 and len(det.beads) == 50


# ---- crops, tables, config ----------------------------------------------------------------------------------------


def test_extract_crops(mixed):
    image, det = mixed
    crops, origins = extract_crops(image, det.kept, det.window)
    assert crops.shape == (1, 1, 17, 17) and crops.dtype == np.float64 and origins.dtype.kind == "i"
    (oy, ox) = origins[0]
    assert (oy, ox) == (round(det.kept[0].y) - 8, round(det.kept[0].x) - 8)
    np.testing.assert_array_equal(crops[0, 0], image[oy : oy + 17, ox : ox + 17])
    stack = np.stack([image, image + 1])
    assert extract_crops(stack, np.array([[60.0, 100.0]]), 9)[0].shape == (1, 2, 9, 9)
    border = next(b for b in det.beads if b.category == "cut by the border")
    with pytest.raises(
        ValueError, match=rf"^beads: the 17-pixel window of bead {border.index} at .* leaves the 128x128"
    ):
        extract_crops(image, [border], 17)
    with pytest.raises(ValueError, match="window: expected an odd integer >= 1, got 16"):
        extract_crops(image, det.kept, 16)
    assert extract_crops(image, [], 9)[0].shape == (0, 1, 9, 9)


def test_tables(mixed):
    _, det = mixed
    rows = beads_table(det.beads)
    assert len(rows) == 6 and list(rows[0]) == [
        "index",
        "frame",
        "y",
        "x",
        "z",
        "peak",
        "snr",
        "background",
        "status",
        "reason",
    ]
    assert Bead(**rows[0]) == det.beads[0]
    assert {b.frame for b in detect_beads(mixed[0], DetectConfig(sigma_px=2.0), frame=3).beads} == {3}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sigma_px": 0}, "sigma_px: expected None or a finite number > 0, got 0"),
        ({"threshold": -1.0}, "threshold: expected a finite number > 0, got -1.0"),
        ({"threshold": float("nan")}, "threshold: expected a finite number > 0, got nan"),
        ({"window": 4}, "window: expected None or an odd integer >= 5, got 4"),
        ({"window": 16}, "window: expected None or an odd integer >= 5, got 16"),
        ({"window": 15.0}, "window: expected None or an odd integer >= 5, got 15.0"),
        ({"min_separation": -1}, "min_separation: expected None or a finite number >= 0, got -1"),
        ({"min_snr": "10"}, "min_snr: expected a finite number >= 0, got '10'"),
        ({"saturation": 0}, "saturation: expected None or a finite number > 0, got 0"),
        ({"max_beads": 0}, "max_beads: expected None or an integer >= 1, got 0"),
        ({"max_beads": True}, "max_beads: expected None or an integer >= 1, got True"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=f"^{message.replace('(', '[(]')}$"):
        DetectConfig(**changes)


def test_config_dict_round_trip():
    config = DetectConfig(sigma_px=2, window=21, saturation=255, max_beads=10)
    assert config.sigma_px == 2.0 and isinstance(config.sigma_px, float)
    assert DetectConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown key 'thresold' in bead detection settings \(did you mean"):
        DetectConfig.from_dict({"thresold": 5})


def test_input_validation():
    with pytest.raises(ValueError, match=r"^stack: expected a \(Y, X\) image or a \(Z, Y, X\) stack .* got \(10,\)"):
        detect_beads(np.zeros(10))
    bad = np.zeros((8, 8))
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match=r"^stack: expected finite values, got 1 NaN or infinite pixels"):
        detect_beads(bad)
    with pytest.raises(TypeError, match="config: expected a DetectConfig, got dict"):
        detect_beads(np.zeros((16, 16)), {"sigma_px": 2})
    with pytest.raises(ValueError, match="frame: expected an integer >= 0, got -1"):
        detect_beads(np.zeros((16, 16)), DetectConfig(sigma_px=2), frame=-1)


# ---- real bead images ---------------------------------------------------------------------------------------------


def read_real(relative: str) -> np.ndarray:
    path = REAL / relative
    if not path.exists():
        pytest.skip(f"real data not found: {path}")
    tifffile = pytest.importorskip("tifffile")
    return tifffile.imread(path)


def report(name: str, det: Detection) -> None:
    print(f"{name}: sigma {det.sigma_px:.2f} px, window {det.window}, noise {det.noise_sigma:.2f}; {det.summary()}")


def test_real_fibre_beads():
    image = read_real("beads_fibre_svdeconrl/Beads.tif")
    det = detect_beads(image, DetectConfig(saturation=255))
    report("fibre", det)
    assert 3.0 < det.sigma_px < 7.0
    assert len(det.kept) >= 15
    fwhm = bead_fwhm(image, det.kept, window=det.window, background=det.background)
    assert np.isfinite(fwhm).all() and (fwhm[:, 0] >= fwhm[:, 1]).all()
    check_detection(det)


def test_real_confocal_stack():
    stack = read_real("beads_confocal_bian/Bead_Image1_crop.tif")
    det = detect_beads(stack, DetectConfig(saturation=255))
    report("confocal", det)
    assert len(det.beads) == 4 and len(det.kept) >= 2
    assert 2.5 < det.sigma_px < 5.0
    brightest = int(np.argmax(stack.reshape(len(stack), -1).max(axis=1)))
    assert all(abs(b.z - brightest) < 3 for b in det.kept)
    crops, _ = extract_crops(stack, det.kept, det.window)
    assert crops.shape == (len(det.kept), 41, det.window, det.window)


def test_real_llsm_psf():
    stack = read_real("bead_psf_llsm_pycudadecon/psf.tif")
    det = detect_beads(stack)
    report("llsm", det)
    assert len(det.kept) == 1
    (bead,) = det.kept
    print(f"llsm bead: y {bead.y:.2f}, x {bead.x:.2f}, z {bead.z:.2f}, SNR {bead.snr:.0f}")
    assert abs(bead.y - 64) < 16 and abs(bead.x - 64) < 16
    planes = stack.reshape(len(stack), -1).max(axis=1)
    assert planes[round(bead.z)] >= 0.9 * planes.max() and abs(bead.z - np.argmax(planes)) <= 1.5
