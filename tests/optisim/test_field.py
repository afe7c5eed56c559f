"""Normalised field coordinates: one scale on both axes, pixel centres, grids and crops."""

import re

import numpy as np
import pytest

from optisim.field import field_grid, field_scale, field_to_pixel, pixel_to_field, sensor_field_coordinates


@pytest.mark.parametrize("shape", [(512, 512), (768, 1024), (1024, 768), (7, 5), (1, 1)])
def test_pixel_field_round_trip(shape):
    rng = np.random.default_rng(1)
    rows = rng.uniform(-0.5, shape[0] - 0.5, 100)
    cols = rng.uniform(-0.5, shape[1] - 0.5, 100)
    hx, hy = pixel_to_field(rows, cols, shape)
    r2, c2 = field_to_pixel(hx, hy, shape)
    np.testing.assert_allclose(r2, rows, atol=1e-12)
    np.testing.assert_allclose(c2, cols, atol=1e-12)


def test_centre_is_origin():
    hx, hy = pixel_to_field(255.5, 255.5, (512, 512))
    assert hx == pytest.approx(0.0, abs=1e-15)
    assert hy == pytest.approx(0.0, abs=1e-15)
    # odd sensor: the middle pixel is the origin
    hx, hy = pixel_to_field(3, 2, (7, 5))
    assert (float(hx), float(hy)) == (0.0, 0.0)


def test_square_sensor_edges_and_corners():
    n = 512
    assert field_scale((n, n)) == n / 2
    # outer pixel edges at +-1, outer pixel centres at +-(1 - 1/n)
    hx, hy = pixel_to_field(np.array([-0.5, n - 0.5]), np.array([-0.5, n - 0.5]), (n, n))
    np.testing.assert_allclose(hx, [-1.0, 1.0], atol=1e-15)
    np.testing.assert_allclose(hy, [-1.0, 1.0], atol=1e-15)
    hx, hy = pixel_to_field(np.array([0, n - 1]), np.array([0, n - 1]), (n, n))
    np.testing.assert_allclose(hx, [-(1 - 1 / n), 1 - 1 / n], atol=1e-15)
    np.testing.assert_allclose(hy, [-(1 - 1 / n), 1 - 1 / n], atol=1e-15)
    # corner pixel centre: |h| close to sqrt(2)
    hx, hy = pixel_to_field(n - 1, 0, (n, n))
    assert np.hypot(hx, hy) == pytest.approx(np.sqrt(2) * (1 - 1 / n), rel=1e-14)
    assert hx < 0 < hy  # column 0 is -x, the last row is +y


def test_axes_are_row_y_column_x():
    hx, hy = pixel_to_field(0, 9, (10, 20))  # first row, middle-right column
    assert hy < 0
    assert hx == pytest.approx((9 - 9.5) / 10)
    hx, hy = pixel_to_field(9, 19, (10, 20))
    assert hx == pytest.approx(9.5 / 10)
    assert hy == pytest.approx(4.5 / 10)


def test_rectangular_sensor_uses_one_scale():
    shape = (768, 1024)
    assert field_scale(shape) == 512
    assert field_scale((1024, 768)) == 512
    hx, hy = pixel_to_field(np.array([0, 767]), np.array([0, 1023]), shape)
    np.testing.assert_allclose(hx, [-(1 - 1 / 1024), 1 - 1 / 1024], atol=1e-15)
    np.testing.assert_allclose(hy, [-0.75 * (1 - 1 / 768), 0.75 * (1 - 1 / 768)], atol=1e-15)
    # the same pixel step on both axes: a circle of pixels stays a circle
    hx1, hy1 = pixel_to_field(400, 600, shape)
    hx2, hy2 = pixel_to_field(401, 601, shape)
    assert hx2 - hx1 == pytest.approx(hy2 - hy1, rel=1e-14)
    assert hx2 - hx1 == pytest.approx(1 / 512, rel=1e-14)
    # portrait: y is the long axis
    hx, hy = pixel_to_field(1023, 767, (1024, 768))
    assert (hx, hy) == (pytest.approx(0.75 * (1 - 1 / 768)), pytest.approx(1 - 1 / 1024))


def test_same_shape_inputs():
    rows, cols = np.meshgrid(np.arange(4), np.arange(6), indexing="ij")
    hx, hy = pixel_to_field(rows, cols, (4, 6))
    assert hx.shape == hy.shape == (4, 6)
    np.testing.assert_allclose(hx[0], (np.arange(6) - 2.5) / 3)
    np.testing.assert_allclose(hy[:, 0], (np.arange(4) - 1.5) / 3)


def test_broadcasting():
    hx, hy = pixel_to_field(np.arange(4)[:, None], np.arange(6)[None, :], (4, 6))
    assert hx.shape == (4, 6)
    assert hy.shape == (4, 6)


@pytest.mark.parametrize(("shape", "grid"), [((512, 512), (3, 3)), ((768, 1024), (4, 5)), ((768, 1024), (1, 3))])
def test_field_grid_spans_outer_pixel_centres(shape, grid):
    hy, hx = field_grid(shape, grid)
    assert hy.shape == (grid[0],)
    assert hx.shape == (grid[1],)
    hx_edge, hy_edge = pixel_to_field(shape[0] - 1, shape[1] - 1, shape)
    if grid[0] > 1:
        assert hy[0] == pytest.approx(-hy_edge)
        assert hy[-1] == pytest.approx(hy_edge)
        np.testing.assert_allclose(np.diff(hy), np.diff(hy)[0])
    else:
        np.testing.assert_array_equal(hy, [0.0])
    assert hx[0] == pytest.approx(-hx_edge)
    assert hx[-1] == pytest.approx(hx_edge)
    np.testing.assert_allclose(np.diff(hx), np.diff(hx)[0])
    # the grid's first and last points sit on pixel centres 0 and n - 1
    rows, cols = field_to_pixel(hx[[0, -1]], hy[[0, -1]] if grid[0] > 1 else [0.0, 0.0], shape)
    np.testing.assert_allclose(cols, [0, shape[1] - 1], atol=1e-9)
    if grid[0] > 1:
        np.testing.assert_allclose(rows, [0, shape[0] - 1], atol=1e-9)


def test_field_grid_single_point_is_centre():
    hy, hx = field_grid((100, 200), (1, 1))
    np.testing.assert_array_equal(hy, [0.0])
    np.testing.assert_array_equal(hx, [0.0])


def test_sensor_field_coordinates_full_sensor():
    shape = (6, 8)
    coords = sensor_field_coordinates(shape)
    assert coords.shape == (2, 6, 8)
    rows, cols = np.meshgrid(np.arange(6), np.arange(8), indexing="ij")
    hx, hy = pixel_to_field(rows, cols, shape)
    np.testing.assert_array_equal(coords[0], hy)
    np.testing.assert_array_equal(coords[1], hx)


@pytest.mark.parametrize(
    ("offset", "size"), [((10, 20), (16, 24)), ((0, 0), (1, 1)), ((47, 63), (1, 1)), ((5, 7), None)]
)
def test_crop_is_slice_of_full_sensor(offset, size):
    shape = (48, 64)
    full = sensor_field_coordinates(shape)
    crop = sensor_field_coordinates(shape, offset=offset, size=size)
    y0, x0 = offset
    h, w = (shape[0] - y0, shape[1] - x0) if size is None else size
    assert crop.shape == (2, h, w)
    np.testing.assert_array_equal(crop, full[:, y0 : y0 + h, x0 : x0 + w])


# -- errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [(512,), (1, 2, 3), "ab", None, ("a", 3)])
def test_bad_sensor_shape(bad):
    with pytest.raises(ValueError, match=re.escape("sensor_shape: expected (ny, nx) pixels, got")):
        pixel_to_field(0, 0, bad)


@pytest.mark.parametrize("bad", [(0, 5), (5, -1)])
def test_non_positive_sensor_shape(bad):
    with pytest.raises(ValueError, match=re.escape(f"sensor_shape: expected positive (ny, nx) pixels, got {bad}")):
        field_scale(bad)


def test_bad_grid():
    with pytest.raises(ValueError, match=re.escape("grid: expected at least 1x1 field points, got 0x3")):
        field_grid((10, 10), (0, 3))
    with pytest.raises(ValueError, match=re.escape("grid: expected (gy, gx) field points, got 3")):
        field_grid((10, 10), 3)


@pytest.mark.parametrize(
    ("offset", "size"),
    [((0, 0), (11, 10)), ((5, 5), (6, 5)), ((-1, 0), (2, 2)), ((0, 0), (0, 4)), ((10, 0), None)],
)
def test_crop_outside_sensor(offset, size):
    with pytest.raises(ValueError, match=re.escape("do not fit in a sensor of shape (10, 10)")):
        sensor_field_coordinates((10, 10), offset=offset, size=size)


def test_malformed_offset_message_names_argument():
    with pytest.raises(ValueError, match="offset"):
        sensor_field_coordinates((10, 10), offset=(1,))
