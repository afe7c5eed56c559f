"""Metrics: PSNR formula, SSIM against scikit-image, the SSIM map's centre convention, gradients, region pooling."""

import json
import math
import re

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from learn.metrics import RegionMetrics, centre_regions, gaussian_window, psnr, ssim, ssim_map

F64 = torch.float64


def rand(*shape, seed=0, dtype=F64):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def noisy(x, sigma, seed=1):
    return x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)


def structured(h=48, w=40):
    """A disc, a ramp and a checkerboard: edges, flat areas and texture."""
    yy, xx = np.mgrid[:h, :w]
    img = 0.8 * ((yy - 20) ** 2 + (xx - 15) ** 2 < 100) + 0.3 * xx / w + 0.2 * ((yy // 4 + xx // 4) % 2)
    return torch.as_tensor(img / img.max(), dtype=F64)


def skimage_ssim(a, b, data_range):
    return structural_similarity(
        a.numpy(), b.numpy(), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range
    )


# --------------------------------------------------------------------------------------------- PSNR


@pytest.mark.parametrize("data_range", [1.0, 2.5])
def test_psnr_matches_formula(data_range):
    truth = rand(3, 16, 20, seed=0) * data_range
    pred = noisy(truth, 0.05 * data_range)
    mse = ((pred - truth) ** 2).numpy().mean(axis=(1, 2))
    expected = 10 * np.log10(data_range**2 / mse)
    np.testing.assert_allclose(psnr(pred, truth, data_range=data_range).numpy(), expected, rtol=1e-12)


def test_psnr_shapes_and_identical_images():
    truth = rand(2, 1, 8, 8)
    pred = noisy(truth, 0.1)
    assert psnr(pred, truth).shape == (2,)
    assert psnr(pred[0, 0], truth[0, 0]).shape == ()
    assert torch.allclose(psnr(pred, truth), psnr(pred[:, 0], truth[:, 0]))
    assert torch.isinf(psnr(truth, truth)).all() and (psnr(truth, truth) > 0).all()
    assert psnr(truth.float(), truth).dtype == F64  # promoted


# --------------------------------------------------------------------------------------------- SSIM


@pytest.mark.parametrize("data_range", [1.0, 0.5, 255.0])
@pytest.mark.parametrize("kind", ["random", "structured"])
def test_ssim_matches_skimage(kind, data_range):
    truth = (rand(37, 45, seed=2) if kind == "random" else structured()) * data_range
    pred = torch.stack([noisy(truth, s * data_range, seed=3) for s in (0.02, 0.1, 0.3)])
    ours = ssim(pred, truth.expand_as(pred), data_range=data_range)
    theirs = [skimage_ssim(p, truth, data_range) for p in pred]
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-4)
    assert ssim(pred[0], truth, data_range=data_range).shape == ()


def test_ssim_float32_matches_skimage():
    truth = structured()
    pred = noisy(truth, 0.05)
    ours = float(ssim(pred.float(), truth.float()))
    assert abs(ours - skimage_ssim(pred, truth, 1.0)) < 1e-4


def test_ssim_identical_is_one_and_map_shape():
    truth = rand(2, 1, 20, 17)
    torch.testing.assert_close(ssim(truth, truth), torch.ones(2, dtype=F64))
    assert ssim_map(truth, truth).shape == (2, 10, 7)
    assert ssim_map(truth[0, 0], truth[0, 0], window=7).shape == (14, 11)


def test_ssim_map_pixel_is_window_centre():
    truth = rand(30, 30, seed=4)
    pred = truth.clone()
    pred[12, 19] += 1.0  # one bad pixel: the worst window is the one centred on it
    smap = ssim_map(pred, truth)
    i, j = np.unravel_index(int(smap.argmin()), smap.shape)
    assert (i + 11 // 2, j + 11 // 2) == (12, 19)


def test_ssim_gradcheck():
    truth = rand(1, 13, 13, seed=5)
    pred = noisy(truth, 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: ssim(p, truth, window=7, sigma=1.0), (pred,))
    assert torch.autograd.gradcheck(lambda p: ssim(p, truth), (pred,))


def test_gaussian_window():
    g = gaussian_window(11, 1.5, dtype=F64)
    assert g.shape == (11,) and abs(float(g.sum()) - 1) < 1e-15 and int(g.argmax()) == 5
    assert torch.allclose(g, g.flip(0))


# --------------------------------------------------------------------------------------------- errors


def test_metric_errors():
    a = rand(2, 16, 16)
    with pytest.raises(ValueError, match=re.escape("truth: expected the shape of pred (2, 16, 16)")):
        psnr(a, rand(2, 16, 15))
    with pytest.raises(ValueError, match=re.escape("pred: expected shape (B, H, W), (B, 1, H, W) or (H, W), got")):
        ssim(rand(2, 3, 16, 16), rand(2, 3, 16, 16))
    with pytest.raises(TypeError, match=re.escape("pred: expected a torch.Tensor")):
        psnr(a.numpy(), a)
    with pytest.raises(ValueError, match=re.escape("data_range: expected a positive finite intensity range, got 0")):
        psnr(a, a, data_range=0)
    with pytest.raises(ValueError, match=re.escape("window: 11 pixels is larger than the images (8, 8)")):
        ssim(rand(8, 8), rand(8, 8))
    with pytest.raises(ValueError, match=re.escape("window: expected an odd positive number of pixels, got 4")):
        ssim(a, a, window=4)
    with pytest.raises(ValueError, match=re.escape("sigma: expected a positive width in pixels, got -1")):
        ssim(a, a, sigma=-1)


# --------------------------------------------------------------------------------------------- regions


def test_centre_regions():
    assert centre_regions(64, 4).tolist() == [False, True, True, False]
    assert centre_regions(60, 3).tolist() == [False, True, False]
    assert centre_regions(64, 2).tolist() == [True, True]  # the central two rows straddle the split
    assert centre_regions(63, 2).tolist() == [True, False]  # row 31 of 63 lies in the upper half
    assert centre_regions(7, 1).tolist() == [True]


def test_crop_fills_only_its_regions():
    metrics = RegionMetrics((64, 64), grid=(4, 4))  # 16x16-pixel regions
    truth = rand(1, 24, 24, seed=6)
    metrics.update(noisy(truth, 0.1), truth, [[16, 32]])  # rows 16..39 (regions 1, 2), columns 32..55 (2, 3)
    res = metrics.result()
    # SSIM window centres: rows 21..34 (regions 1, 2), columns 37..50 (2, 3): the same regions here
    filled = {(i, j) for i in range(4) for j in range(4) if res["region_psnr"][i][j] is not None}
    assert filled == {(1, 2), (1, 3), (2, 2), (2, 3)}
    assert filled == {(i, j) for i in range(4) for j in range(4) if res["region_ssim"][i][j] is not None}
    assert res["images"] == 1 and res["grid"] == [4, 4]
    json.dumps(res, allow_nan=False)  # plain floats and None only


def test_ssim_map_assigned_by_window_centre():
    metrics = RegionMetrics((64, 64), grid=(4, 4))
    truth = rand(1, 20, 16, seed=7)
    # pixels span rows 12..31 (regions 0, 1); window centres rows 17..26, all in region 1; columns 0..15: region 0
    metrics.update(noisy(truth, 0.1), truth, torch.tensor([[12, 0]]))
    res = metrics.result()
    assert res["region_psnr"][0][0] is not None and res["region_psnr"][1][0] is not None
    assert res["region_ssim"][0][0] is None and res["region_ssim"][1][0] is not None


def region_index(n, g):
    return np.arange(n) * g // n


def test_pooled_region_values_match_hand_computation():
    sensor, grid = (50, 70), (3, 4)  # regions of uneven size
    offsets = np.array([[0, 0], [20, 30], [34, 54], [10, 41]])
    truth = rand(4, 16, 16, seed=8)
    pred = noisy(truth, 0.05, seed=9)
    metrics = RegionMetrics(sensor, grid=grid)
    metrics.update(pred[:2].float(), truth[:2].float(), offsets[:2])  # float32 input, float64 accumulation
    metrics.update(pred[2:, None], truth[2:, None], torch.as_tensor(offsets[2:]))

    sse, count = np.zeros(grid), np.zeros(grid)
    s_sum, s_count = np.zeros(grid), np.zeros(grid)
    ry, rx = region_index(sensor[0], grid[0]), region_index(sensor[1], grid[1])
    err = ((pred - truth) ** 2).numpy()
    smap = ssim_map(pred, truth).numpy()
    for b, (y0, x0) in enumerate(offsets):
        for i in range(16):
            for j in range(16):
                sse[ry[y0 + i], rx[x0 + j]] += err[b, i, j]
                count[ry[y0 + i], rx[x0 + j]] += 1
        for i in range(6):
            for j in range(6):
                s_sum[ry[y0 + i + 5], rx[x0 + j + 5]] += smap[b, i, j]
                s_count[ry[y0 + i + 5], rx[x0 + j + 5]] += 1
    res = metrics.result()
    with np.errstate(divide="ignore", invalid="ignore"):
        expected_psnr = 10 * np.log10(1.0 / (sse / count))
        expected_ssim = s_sum / s_count
    got_psnr = np.array([[np.nan if v is None else v for v in row] for row in res["region_psnr"]])
    got_ssim = np.array([[np.nan if v is None else v for v in row] for row in res["region_ssim"]])
    np.testing.assert_allclose(got_psnr, expected_psnr, rtol=1e-6)
    np.testing.assert_allclose(got_ssim, expected_ssim, rtol=1e-6)
    assert np.isnan(expected_psnr).any()  # some region got no pixels: reported as None

    centre = centre_regions(sensor[0], grid[0]).numpy()[:, None] & centre_regions(sensor[1], grid[1]).numpy()
    assert centre.sum() == 2  # 3x4 grid: the middle row's two inner regions
    assert res["centre_psnr"] == pytest.approx(10 * math.log10(count[centre].sum() / sse[centre].sum()), rel=1e-6)
    assert res["edge_psnr"] == pytest.approx(10 * math.log10(count[~centre].sum() / sse[~centre].sum()), rel=1e-6)
    assert res["centre_ssim"] == pytest.approx(s_sum[centre].sum() / s_count[centre].sum(), rel=1e-6)
    assert res["edge_ssim"] == pytest.approx(s_sum[~centre].sum() / s_count[~centre].sum(), rel=1e-6)
    assert res["psnr"] == pytest.approx(float(psnr(pred, truth).mean()), rel=1e-6)
    assert res["ssim"] == pytest.approx(float(ssim(pred, truth).mean()), rel=1e-6)
    assert res["images"] == 4
    json.dumps(res, allow_nan=False)


def test_centre_only_crops_leave_edge_empty_and_reset():
    metrics = RegionMetrics((64, 64), grid=(4, 4), data_range=2.0)
    truth = rand(1, 32, 32, seed=10) * 2
    metrics.update(noisy(truth, 0.1), truth, [[16, 16]])  # exactly the inner 2x2 regions
    res = metrics.result()
    assert res["edge_psnr"] is None and res["edge_ssim"] is None
    assert res["centre_psnr"] == pytest.approx(float(psnr(noisy(truth, 0.1), truth, data_range=2.0)), rel=1e-9)
    metrics.reset()
    empty = metrics.result()
    assert empty["psnr"] is None and empty["images"] == 0 and empty["centre_psnr"] is None


def test_region_metrics_errors():
    metrics = RegionMetrics((64, 64))
    a = rand(2, 16, 16)
    with pytest.raises(ValueError, match=re.escape("offsets: expected shape (B, 2) = (2, 2), (y0, x0) per crop, got")):
        metrics.update(a, a, [[0, 0, 0], [1, 1, 1]])
    with pytest.raises(ValueError, match=re.escape("offsets: expected shape (B, 2) = (2, 2)")):
        metrics.update(a, a, [[0, 0]])
    with pytest.raises(ValueError, match=re.escape("truth: expected the shape of pred (2, 16, 16)")):
        metrics.update(a, rand(2, 16, 12), [[0, 0], [0, 0]])
    with pytest.raises(ValueError, match=re.escape("offsets: crop 1 at (y0, x0) = (50, 0) with shape (16, 16)")):
        metrics.update(a, a, [[0, 0], [50, 0]])
    with pytest.raises(ValueError, match=re.escape("offsets: expected integer pixel positions")):
        metrics.update(a, a, [[0.5, 0], [0, 0]])
    with pytest.raises(
        ValueError, match=re.escape("grid: expected 1..4 x 1..64 regions for a 4x64 sensor, got (5, 4)")
    ):
        RegionMetrics((4, 64), grid=(5, 4))
    assert metrics.result()["images"] == 0  # failed updates add nothing
