"""Procedural fluorescence scenes: shapes, range, determinism, content, config round trips and errors, the source."""

import json
import pickle
import re

import numpy as np
import pytest
from scipy import ndimage
from skimage import measure

from optisim.scenes import GENERATOR_VERSION, SceneConfig, SyntheticSource, fluorescence_scene

NOTHING = {"nuclei": (0, 0), "cells": (0, 0), "filaments": (0, 0), "beads": (0, 0)}


def scene(shape=(256, 256), seed=0, **config):
    return fluorescence_scene(shape, np.random.default_rng(seed), config=SceneConfig(**config) if config else None)


# -- shape, dtype, range -------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(256, 256), (100, 300), (300, 64), (16, 16), (1, 1), (1, 40)])
def test_shape_dtype_and_range(shape):
    image = scene(shape)
    assert image.shape == shape
    assert image.dtype == np.float32
    assert np.isfinite(image).all()
    assert image.min() >= 0.0
    assert image.max() <= 1.0


def test_numpy_integer_shape_is_accepted():
    assert scene((np.int64(32), np.int32(48))).shape == (32, 48)


@pytest.mark.parametrize("shape", [(0, 16), (16, -1), (16,), (16, 16, 3), (16.0, 16), (True, 16), "ab", 16, None])
def test_invalid_shape_names_argument_and_value(shape):
    with pytest.raises(ValueError, match=r"shape: expected \(ny, nx\) positive integer pixel counts, got"):
        scene(shape)


def test_rng_must_be_a_generator():
    with pytest.raises(TypeError, match=r"rng: expected a numpy\.random\.Generator.*got 0"):
        fluorescence_scene((16, 16), 0)


def test_config_must_be_a_scene_config():
    with pytest.raises(TypeError, match="config: expected a SceneConfig or None, got dict"):
        fluorescence_scene((16, 16), np.random.default_rng(0), config={"nuclei": (1, 2)})


# -- determinism ---------------------------------------------------------------------------------------------
def test_same_seed_same_scene_different_seed_different_scene():
    a, b, c = scene(seed=7), scene(seed=7), scene(seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_scene_depends_only_on_generator_state():
    rng = np.random.default_rng(3)
    rng.random(5)
    state = rng.bit_generator.state
    first = fluorescence_scene((64, 80), rng)
    rng.bit_generator.state = state
    np.testing.assert_array_equal(fluorescence_scene((64, 80), rng), first)


# -- content -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_default_scene_has_nuclei_filaments_and_beads(seed):
    image = scene(seed=seed)
    background = np.percentile(image, 10)
    assert background < 0.1, "background should be dark"
    assert 0.05 < np.mean(image > background + 0.1) < 0.8, "some, but not all, pixels hold structures"
    assert image.max() > 0.5
    # point-like beads and thin filaments: a strong second derivative somewhere
    assert np.abs(ndimage.laplace(image)).max() > 0.2
    # nuclei: a large connected bright region
    regions = measure.regionprops(measure.label(image > 0.3))
    assert max((r.area for r in regions), default=0) > 100


def test_structures_extend_past_the_border():
    border = [np.r_[im[0], im[-1], im[:, 0], im[:, -1]] for im in (scene(seed=s) for s in range(4))]
    assert max(b.max() for b in border) > 0.5


def test_beads_alone_are_point_like_and_hit_their_nominal_brightness():
    image = scene(**{**NOTHING, "beads": (30, 30), "bead_brightness": (1, 1), "background": (0, 0)})
    peaks = image[(image == ndimage.maximum_filter(image, size=5)) & (image > 0.1)]
    assert len(peaks) >= 20
    assert np.median(peaks) == pytest.approx(1.0, abs=0.05)
    labels = measure.label(image > 0.5)
    assert max(r.area for r in measure.regionprops(labels)) <= 9, "a bead is a spot of a few pixels"


def test_filaments_are_thin():
    image = scene(**{**NOTHING, "filaments": (20, 20), "background": (0, 0)})
    mask = image > 0.5 * image.max()
    assert mask.any()
    # a 1-2 px wide line disappears under a 3 x 3 erosion, except where lines cross or overlap
    assert ndimage.binary_erosion(mask, np.ones((3, 3))).sum() < 0.05 * mask.sum()


def count_beads(shape, seed):
    image = scene(shape, seed=seed, **{**NOTHING, "beads": (30, 30)}, bead_brightness=(1, 1), background=(0, 0))
    return int(((image == ndimage.maximum_filter(image, size=3)) & (image > 0.2)).sum())


def test_counts_scale_with_area():
    small = sum(count_beads((128, 128), s) for s in range(16))  # 7.5 expected per scene
    large = sum(count_beads((256, 256), s) for s in range(16))  # 30 expected per scene
    assert small == pytest.approx(16 * 7.5, rel=0.2)
    assert large == pytest.approx(16 * 30, rel=0.1)


def test_background_only_is_smooth_and_in_range():
    for seed in range(3):
        image = scene(seed=seed, **NOTHING, background=(0.05, 0.05))
        assert 0.02 < image.mean() < 0.08
        assert np.abs(ndimage.laplace(image.astype(float))).max() < 1e-3
        assert np.abs(np.diff(image, axis=1)).max() < 5e-3


def test_all_zero_gives_black_image():
    image = scene(**NOTHING, background=(0, 0))
    assert not image.any()


# -- config ---------------------------------------------------------------------------------------------------
def test_config_round_trip_through_json():
    config = SceneConfig(nuclei=(1, 2), filament_length=(10.5, 10.5), background=[0.01, 0.02])
    d = json.loads(json.dumps(config.to_dict()))
    assert SceneConfig.from_dict(d) == config
    assert config.background == (0.01, 0.02)
    assert SceneConfig.from_dict({}) == SceneConfig()


def test_unknown_key_suggests_the_nearest():
    with pytest.raises(ValueError, match=re.escape("unknown key 'nucleii' in SceneConfig (did you mean 'nuclei'?)")):
        SceneConfig.from_dict({"nucleii": [1, 2]})
    with pytest.raises(ValueError, match="unknown key 'zzz' in SceneConfig; allowed keys: nuclei, nucleus_radius"):
        SceneConfig.from_dict({"zzz": [1, 2]})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nuclei": (12, 4)}, "SceneConfig.nuclei: expected an ordered range with low <= high, got (12.0, 4.0)"),
        ({"beads": (-1, 4)}, "SceneConfig.beads: expected finite values with 0 <= low, got (-1.0, 4.0)"),
        ({"nucleus_radius": (0, 4)}, "SceneConfig.nucleus_radius: expected finite values with 0 < low, got (0.0, 4.0)"),
        ({"background": (0, np.inf)}, "SceneConfig.background: expected finite values with 0 <= low, got (0.0, inf)"),
        ({"cells": 3}, "SceneConfig.cells: expected a range (low, high), got 3"),
        ({"cells": (1, 2, 3)}, "SceneConfig.cells: expected a range (low, high), got (1, 2, 3)"),
        ({"cells": ("a", 2)}, "SceneConfig.cells: expected numbers, got ('a', 2)"),
    ],
)
def test_invalid_config_names_field_and_values(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SceneConfig(**kwargs)


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        SceneConfig().nuclei = (1, 1)


# -- SyntheticSource ------------------------------------------------------------------------------------------
def test_source_sample_equals_function():
    config = SceneConfig(nuclei=(2, 3))
    source = SyntheticSource(config)
    np.testing.assert_array_equal(
        source.sample((48, 64), np.random.default_rng(5)),
        fluorescence_scene((48, 64), np.random.default_rng(5), config=config),
    )
    assert SyntheticSource().config == SceneConfig()


def test_source_describe_is_json_and_rebuilds_the_config():
    source = SyntheticSource(SceneConfig(beads=(0, 1)))
    d = json.loads(json.dumps(source.describe()))
    assert d["kind"] == "synthetic"
    assert d["generator_version"] == GENERATOR_VERSION == 1
    assert SceneConfig.from_dict(d["config"]) == source.config


def test_source_pickle_round_trip():
    source = SyntheticSource(SceneConfig(filaments=(1, 2)))
    clone = pickle.loads(pickle.dumps(source))
    assert clone == source
    np.testing.assert_array_equal(
        clone.sample((32, 32), np.random.default_rng(1)), source.sample((32, 32), np.random.default_rng(1))
    )


def test_source_rejects_wrong_config_type():
    with pytest.raises(TypeError, match="config: expected a SceneConfig or None, got dict"):
        SyntheticSource({"nuclei": (1, 2)})


def test_scene_without_points_is_float():
    """Regression: with no filaments and no beads the point layer was an int64 array and nuclei failed to add."""
    cfg = SceneConfig(filaments=(0, 0), beads=(0, 0), nuclei=(2, 2))
    scene = fluorescence_scene((24, 24), np.random.default_rng(0), config=cfg)
    assert scene.dtype == np.float32 and scene.max() > 0
