"""Training samples: determinism in (seed, index), crop geometry, the blur of the crop's own region, noise, errors."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from optisim.blur import exact_blur
from optisim.lens import load_preset
from optisim.lowrank import EigenPSFs, exact_psfs
from optisim.noise import CameraNoise, noise_moments
from optisim.samples import Sample, SampleGenerator, make_source
from optisim.scenes import SyntheticSource

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"
FMD = REAL / "sharp_fmd_confocal_bpae"

SENSOR = 96
KERNEL = 15
GRID = (5, 5)
SIZE = 48  # seed 0, indices 0..59 all generate (see test_small_synthetic_samples_generate for smaller sizes)
R = KERNEL // 2
REGION = SIZE + 2 * R


class FixedSource:
    """A source that ignores the random stream: the top-left corner of a fixed image."""

    def __init__(self, image):
        self.image = np.asarray(image, dtype=np.float32)

    def sample(self, shape, rng):
        return self.image[: shape[0], : shape[1]].copy()

    def describe(self):
        return {"kind": "fixed"}


class WrongShapeSource(FixedSource):
    def sample(self, shape, rng):
        return np.zeros((shape[0] - 1, shape[1]), np.float32)


@pytest.fixture(scope="module")
def lens():
    return load_preset("default").replace(sensor_shape=(SENSOR, SENSOR))


@pytest.fixture(scope="module")
def model(lens):
    return EigenPSFs.from_lens(lens, kernel_size=KERNEL, grid=GRID)


@pytest.fixture(scope="module")
def gen(lens, model):
    return SampleGenerator(lens, SyntheticSource(), size=SIZE, seed=0, noise=CameraNoise(), model=model)


def assert_same(a: Sample, b: Sample):
    assert a.offset == b.offset
    np.testing.assert_array_equal(a.sharp, b.sharp)
    np.testing.assert_array_equal(a.blurred, b.blurred)


def first_index_with_offset(gen, offset, limit=50_000):
    for i in range(limit):
        if gen.offset(i) == offset:
            return i
    raise AssertionError(f"no index below {limit} has offset {offset}")


# ---- determinism -------------------------------------------------------------------------------------------------


def test_sample_is_a_pure_function_of_seed_and_index(lens, model, gen):
    a = gen.sample(3)
    assert_same(a, gen.sample(3))
    fresh = SampleGenerator(lens, make_source("synthetic"), size=SIZE, seed=0, noise=CameraNoise(), model=model)
    assert_same(a, fresh.sample(3))
    rebuilt = SampleGenerator(
        lens, make_source("synthetic"), size=SIZE, seed=0, noise=CameraNoise(), kernel_size=KERNEL, grid=GRID
    )  # the model computed again from the lens
    assert_same(a, rebuilt.sample(3))
    unpickled = pickle.loads(pickle.dumps(gen))
    assert_same(a, unpickled.sample(3))
    assert unpickled.margin == gen.margin and unpickled.device == gen.device


def test_indices_and_seeds_differ(lens, model, gen):
    a, b = gen.sample(0), gen.sample(1)
    assert not np.array_equal(a.sharp, b.sharp) and not np.array_equal(a.blurred, b.blurred)
    other = SampleGenerator(lens, SyntheticSource(), size=SIZE, seed=2, noise=CameraNoise(), model=model)
    c = other.sample(0)
    assert not np.array_equal(a.sharp, c.sharp) and not np.array_equal(a.blurred, c.blurred)
    assert [gen.offset(i) for i in range(10)] != [other.offset(i) for i in range(10)]


def test_order_independence(lens, model):
    first = SampleGenerator(lens, SyntheticSource(), size=SIZE, seed=0, noise=CameraNoise(), model=model)
    for i in (5, 3, 1):
        first.sample(i)
    later = first.sample(1)
    alone = SampleGenerator(lens, SyntheticSource(), size=SIZE, seed=0, noise=CameraNoise(), model=model).sample(1)
    assert_same(later, alone)


def test_batch_stacks_samples(gen):
    b = gen.batch([4, 2])
    assert b["index"].tolist() == [4, 2] and b["index"].dtype == np.int64
    assert b["sharp"].shape == b["blurred"].shape == (2, SIZE, SIZE) and b["sharp"].dtype == np.float32
    assert b["offset"].shape == (2, 2) and b["offset"].dtype == np.int32
    s = gen.sample(2)
    np.testing.assert_array_equal(b["blurred"][1], s.blurred)
    assert tuple(b["offset"][1]) == s.offset
    empty = gen.batch([])
    assert empty["sharp"].shape == (0, SIZE, SIZE) and empty["offset"].shape == (0, 2)


# ---- geometry ----------------------------------------------------------------------------------------------------


def test_shapes_dtypes_and_offsets(gen):
    for i in range(12):
        s = gen.sample(i)
        assert s.sharp.shape == s.blurred.shape == (SIZE, SIZE)
        assert s.sharp.dtype == s.blurred.dtype == np.float32
        assert s.sharp.flags.c_contiguous and s.blurred.flags.c_contiguous
        assert all(type(v) is int for v in s.offset)
        assert all(0 <= v <= SENSOR - SIZE for v in s.offset)
        assert s.offset == gen.offset(i)
        assert np.isfinite(s.blurred).all() and 0 <= s.sharp.min() and s.sharp.max() <= 1
    offsets = np.array([gen.offset(i) for i in range(2000)])
    assert offsets.min() == 0 and offsets.max() == SENSOR - SIZE  # every position is reachable


def test_full_sensor_samples(lens, model):
    g = SampleGenerator(lens, SyntheticSource(), size=SENSOR, seed=0, noise=None, model=model)
    assert {g.offset(i) for i in range(50)} == {(0, 0)}
    s = g.sample(0)
    assert s.offset == (0, 0) and s.sharp.shape == s.blurred.shape == (SENSOR, SENSOR)


# ---- physics -----------------------------------------------------------------------------------------------------


def test_blur_is_the_operator_of_the_grown_region(lens, model):
    """The generator's crop equals the low-rank operator of the region grown by the PSF radius, cropped."""
    image = np.random.default_rng(1).random((REGION, REGION), dtype=np.float32)
    g = SampleGenerator(lens, FixedSource(image), size=SIZE, seed=0, noise=None, model=model)
    for i in (0, 3):
        s = g.sample(i)
        (y0, x0) = s.offset
        np.testing.assert_array_equal(s.sharp, image[R:-R, R:-R])
        op = model.operator((y0 - R, x0 - R), (REGION, REGION))
        expected = op(torch.as_tensor(image)).clamp(min=0).numpy()[R:-R, R:-R]
        np.testing.assert_allclose(s.blurred, expected, rtol=1e-5, atol=1e-6)


def test_blur_agrees_with_exact_per_pixel_psfs(lens):
    """Independent check: the exact per-pixel PSFs of the grown region (no low-rank model, no interpolation).

    The region lies inside the sensor (beyond it the low-rank model holds the edge PSF constant by design).
    """
    fine = EigenPSFs.from_lens(lens, kernel_size=KERNEL, grid=(9, 9))
    size = 24  # 38x38 exact PSFs per region
    region = size + 2 * R
    image = np.random.default_rng(2).random((region, region), dtype=np.float32)
    g = SampleGenerator(lens, FixedSource(image), size=size, seed=0, noise=None, model=fine)
    y0, x0 = 10, 20
    s = g.sample(first_index_with_offset(g, (y0, x0)))

    def exact(offset):
        psfs = exact_psfs(lens, kernel_size=KERNEL, offset=offset, shape=(region, region))
        return exact_blur(torch.as_tensor(image), torch.as_tensor(psfs)).numpy()[R:-R, R:-R]

    reference = exact((y0 - R, x0 - R))
    err = np.linalg.norm(s.blurred - reference) / np.linalg.norm(reference)
    assert err < 1e-2, err
    # the PSFs of the region not grown by the margin fit clearly worse: the crop's pixels use their own PSFs
    shifted = exact((y0, x0))
    assert np.linalg.norm(s.blurred - shifted) / np.linalg.norm(reference) > 4 * err


def test_point_source_spreads_with_the_psf_of_its_sensor_position(lens, model):
    point = np.zeros((REGION, REGION), np.float32)
    point[REGION // 2, REGION // 2] = 1.0  # crop pixel (SIZE // 2, SIZE // 2)
    g = SampleGenerator(lens, FixedSource(point), size=SIZE, seed=0, noise=None, model=model)
    c = SIZE // 2
    yy, xx = np.mgrid[-R : R + 1, -R : R + 1]
    spots = {}
    for offset in [(0, 0), ((SENSOR - SIZE) // 2,) * 2]:
        s = g.sample(first_index_with_offset(g, offset))
        assert s.offset == offset
        spot = s.blurred[c - R : c + R + 1, c - R : c + R + 1]
        assert s.blurred.sum() == pytest.approx(1.0, abs=5e-3)  # energy kept: PSFs sum to 1
        psf = exact_psfs(lens, kernel_size=KERNEL, offset=(offset[0] + c, offset[1] + c), shape=(1, 1))[0, 0]
        np.testing.assert_allclose(spot, psf, atol=0.1 * psf.max())
        spots[offset] = (spot.max(), (spot * (yy**2 + xx**2)).sum() / spot.sum())
    (corner_peak, corner_r2), (centre_peak, centre_r2) = spots.values()
    assert corner_r2 > 3 * centre_r2  # defocus grows toward the sensor's corners: a wider spot
    assert corner_peak < 0.25 * centre_peak
    assert np.unravel_index(np.argmax(s.blurred), s.blurred.shape) == (c, c)  # in focus at the centre


def test_noise_is_unbiased_and_differs_between_indices(lens, model):
    flat = np.full((REGION, REGION), 0.5, np.float32)
    noise = CameraNoise()
    clean = SampleGenerator(lens, FixedSource(flat), size=SIZE, seed=0, noise=None, model=model)
    noisy = SampleGenerator(lens, FixedSource(flat), size=SIZE, seed=0, noise=noise, model=model)
    residuals = []
    for i in range(4):
        a, b = clean.sample(i), noisy.sample(i)
        assert a.offset == b.offset
        np.testing.assert_array_equal(a.sharp, b.sharp)  # noise is drawn after the scene
        residuals.append(b.blurred.astype(np.float64) - a.blurred)
    residuals = np.stack(residuals)
    _, var = noise_moments(torch.as_tensor(clean.sample(0).blurred), noise)
    sigma = float(var.mean().sqrt())
    assert abs(residuals.mean()) < 5 * sigma / np.sqrt(residuals.size)
    assert residuals.std() == pytest.approx(sigma, rel=0.05)
    assert abs(np.corrcoef(residuals[0].ravel(), residuals[1].ravel())[0, 1]) < 0.1
    assert not np.array_equal(residuals[0], residuals[1])


# ---- errors ------------------------------------------------------------------------------------------------------


def test_size_errors(lens, model):
    with pytest.raises(ValueError, match=r"size: a 97x97 crop is larger than the sensor \(96x96 pixels\)"):
        SampleGenerator(lens, SyntheticSource(), size=97, model=model)
    with pytest.raises(
        ValueError,
        match=r"size: a 14x14 crop is smaller than the PSF support \(15x15 pixels\); use a size of at least 15",
    ):
        SampleGenerator(lens, SyntheticSource(), size=14, model=model)
    with pytest.raises(TypeError, match=r"size: expected an integer number of pixels, got 32\.0"):
        SampleGenerator(lens, SyntheticSource(), size=32.0, model=model)
    SampleGenerator(lens, SyntheticSource(), size=KERNEL, model=model)  # the smallest allowed size


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0", None])
def test_bad_seed(lens, model, seed):
    with pytest.raises(ValueError, match=r"seed: expected a non-negative integer, got "):
        SampleGenerator(lens, SyntheticSource(), size=SIZE, seed=seed, model=model)


@pytest.mark.parametrize("index", [-1, 2.0, False, "3"])
def test_bad_index(gen, index):
    with pytest.raises(ValueError, match=r"index: expected a non-negative integer, got "):
        gen.sample(index)
    with pytest.raises(ValueError, match="index: expected a non-negative integer"):
        gen.offset(index)


def test_numpy_integer_seed_and_index(lens, model, gen):
    g = SampleGenerator(lens, SyntheticSource(), size=SIZE, seed=np.int64(0), noise=CameraNoise(), model=model)
    assert_same(g.sample(np.int32(2)), gen.sample(2))


def test_source_with_wrong_shape(lens, model):
    g = SampleGenerator(lens, WrongShapeSource(np.zeros(1)), size=SIZE, model=model)
    with pytest.raises(ValueError, match=r"source returned an image of shape \(61, 62\), expected \(62, 62\)"):
        g.sample(0)


def test_make_source(tmp_path):
    assert isinstance(make_source("synthetic"), SyntheticSource)
    custom = FixedSource(np.zeros((2, 2)))
    assert make_source(custom) is custom
    missing = tmp_path / "nope"
    expected = r"source: expected 'synthetic', a folder of images or 'synthetic\[:S\]\+DIR', got '.*nope' \(not"
    with pytest.raises(ValueError, match=expected):
        make_source(str(missing))
    a_file = tmp_path / "image.png"
    a_file.write_bytes(b"not a folder")
    with pytest.raises(ValueError, match=r"got '.*image.png' \(not a folder\)"):
        make_source(a_file)
    with pytest.raises(ValueError, match=r"channel: only a folder source has channels \(source is 'synthetic'\)"):
        make_source("synthetic", channel=1)


# ---- real images -------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not FMD.is_dir(), reason=f"real data not found at {FMD}")
def test_real_folder_source(lens, model):
    source = make_source(FMD)
    g = SampleGenerator(lens, source, size=SIZE, seed=0, noise=CameraNoise(), model=model)
    again = SampleGenerator(lens, make_source(str(FMD)), size=SIZE, seed=0, noise=CameraNoise(), model=model)
    for i in range(3):
        s = g.sample(i)
        assert s.sharp.shape == s.blurred.shape == (SIZE, SIZE) and s.sharp.dtype == np.float32
        assert 0 <= s.sharp.min() and s.sharp.max() <= 1 and s.sharp.std() > 0
        assert_same(s, again.sample(i))
    # the blur smooths real nuclei: less gradient energy than the sharp crop (noise off)
    clean = SampleGenerator(lens, source, size=SIZE, seed=0, noise=None, model=model).sample(0)
    assert np.abs(np.diff(clean.blurred, axis=1)).sum() < np.abs(np.diff(clean.sharp, axis=1)).sum()


# ---- regression: scenes without filament or bead points (np.bincount of nothing is int64) -----------------------


def test_small_synthetic_samples_generate(lens, model):
    g = SampleGenerator(lens, SyntheticSource(), size=24, seed=0, noise=None, model=model)
    for i in range(20):
        assert g.sample(i).sharp.shape == (24, 24)
