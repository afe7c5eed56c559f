"""CoordGate: the coordinate convention shared with optisim.field, the encoder g, the gated block (paper's Eq. 3),
the gate cache, and the paper's appendix (a complete kernel basis plus a per-pixel gate is a locally connected
layer)."""

import copy
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from learn.coordgate import (
    ACTIVATIONS,
    CACHE_SIZE,
    CoordGate,
    CoordinateEncoder,
    pool_coordinates,
    sensor_coordinates,
)
from optisim.field import field_scale, pixel_to_field, sensor_field_coordinates

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def field_of_pixels(rows, cols, sensor_shape) -> np.ndarray:
    """(2, len(rows), len(cols)) ``[hy, hx]`` of (possibly fractional, possibly off-sensor) pixel centres."""
    r, c = np.meshgrid(np.asarray(rows, float), np.asarray(cols, float), indexing="ij")
    hx, hy = pixel_to_field(r, c, sensor_shape)
    return np.stack([hy, hx])


# ---- coordinates -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sensor", "offsets", "size"),
    [
        ((16, 16), [(0, 0), (3, 5), (8, 8)], (8, 8)),  # square
        ((12, 20), [(0, 0), (2, 11), (4, 13)], (8, 7)),  # wider than tall
        ((21, 15), [(0, 0), (13, 1), (6, 6)], (8, 9)),  # taller than wide, odd
        ((7, 9), [(0, 0), (2, 3)], (5, 5)),  # odd, small
        ((1, 5), [(0, 0), (0, 2)], (1, 3)),  # a single row
    ],
)
def test_sensor_coordinates_equal_field_module(sensor, offsets, size):
    coords = sensor_coordinates(offsets, size, sensor, dtype=torch.float64)
    assert coords.shape == (len(offsets), 2, *size)
    assert coords.dtype == torch.float64
    for b, offset in enumerate(offsets):
        expected = sensor_field_coordinates(sensor, offset, size)
        np.testing.assert_allclose(coords[b].numpy(), expected, rtol=0, atol=1e-15)


def test_sensor_coordinates_full_sensor_convention():
    # a square sensor: outer pixel edges at ±1, so the outermost centres sit half a pixel inside
    n = 10
    c = sensor_coordinates([(0, 0)], (n, n), (n, n), dtype=torch.float64)[0]
    half_pixel = 1 / field_scale((n, n)) / 2
    assert c[0, 0, 0].item() == pytest.approx(-1 + half_pixel)  # hy of the first row
    assert c[1, 0, -1].item() == pytest.approx(1 - half_pixel)  # hx of the last column
    torch.testing.assert_close(c[0].mean(), torch.tensor(0.0, dtype=torch.float64))
    # a rectangular sensor uses the longer side's scale for both axes
    c = sensor_coordinates([(0, 0)], (4, 8), (4, 8), dtype=torch.float64)[0]
    assert c[1, 0, 1].item() - c[1, 0, 0].item() == pytest.approx(1 / 4)
    assert c[0, 1, 0].item() - c[0, 0, 0].item() == pytest.approx(1 / 4)
    assert c[0].abs().max().item() == pytest.approx(1.5 / 4)


def test_sensor_coordinates_continue_past_the_sensor():
    """Padding beyond the sensor's last row/column keeps the same linear map (what the U-Nets' padding sees)."""
    sensor = (10, 12)
    coords = sensor_coordinates([(6, 9)], (7, 6), sensor, dtype=torch.float64)[0]
    expected = field_of_pixels(np.arange(6, 13), np.arange(9, 15), sensor)
    np.testing.assert_allclose(coords.numpy(), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_crop_coordinates_are_a_sub_block_of_the_sensor(dtype):
    sensor = (24, 31)
    full = sensor_coordinates([(0, 0)], sensor, sensor, dtype=dtype)[0]
    for (y0, x0), (h, w) in [((0, 0), (5, 7)), ((3, 11), (9, 4)), ((19, 30), (5, 1)), ((7, 2), (17, 29))]:
        crop = sensor_coordinates(torch.tensor([[y0, x0]]), (h, w), sensor, dtype=dtype)[0]
        assert torch.equal(crop, full[:, y0 : y0 + h, x0 : x0 + w])


def test_sensor_coordinates_accept_numpy_offsets_and_batch():
    a = sensor_coordinates(np.array([[1, 2], [5, 3]], dtype=np.int32), (4, 6), (16, 16))
    b = torch.cat([sensor_coordinates([(1, 2)], (4, 6), (16, 16)), sensor_coordinates([(5, 3)], (4, 6), (16, 16))])
    assert torch.equal(a, b)
    assert a.dtype == torch.float32


@pytest.mark.parametrize("offsets", [(1, 2), [[1, 2, 3]], np.zeros((2, 3, 2))])
def test_sensor_coordinates_reject_bad_offsets(offsets):
    with pytest.raises(ValueError, match=r"offsets: expected shape \(B, 2\) of \(y0, x0\) pixels, got"):
        sensor_coordinates(offsets, (4, 4), (8, 8))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sensor_coordinates_device_and_dtype(device, dtype):
    coords = sensor_coordinates(torch.tensor([[2, 3]]), (5, 6), (12, 12), device=device, dtype=dtype)
    assert coords.device.type == device
    assert coords.dtype == dtype
    expected = sensor_field_coordinates((12, 12), (2, 3), (5, 6))
    np.testing.assert_allclose(coords[0].cpu().double().numpy(), expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("level", [1, 2, 3])
@pytest.mark.parametrize(("sensor", "offset", "size"), [((40, 40), (3, 5), (16, 24)), ((30, 50), (0, 7), (13, 21))])
def test_pooled_coordinates_are_the_pooled_pixel_centres(level, sensor, offset, size):
    """At level l (downsampled by 2^l) pixel j's centre is at full-resolution pixel (2^l - 1)/2 + 2^l j."""
    f = 2**level
    full = sensor_coordinates([offset], size, sensor, dtype=torch.float64)
    pooled = pool_coordinates(full, f)
    # the grid of a pooled feature map (floor, as max-pooling in the U-Nets)
    assert pooled.shape[-2:] == F.max_pool2d(torch.zeros(1, 1, *size), f).shape[-2:]
    rows = offset[0] + (f - 1) / 2 + f * np.arange(pooled.shape[-2])
    cols = offset[1] + (f - 1) / 2 + f * np.arange(pooled.shape[-1])
    np.testing.assert_allclose(pooled[0].numpy(), field_of_pixels(rows, cols, sensor), rtol=0, atol=1e-14)


def test_pool_coordinates_factor_one_is_the_identity():
    c = sensor_coordinates([(0, 0)], (5, 5), (8, 8))
    assert pool_coordinates(c, 1) is c


# ---- CoordinateEncoder -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("in_features", "spatial"), [(2, (5, 7)), (1, (11,)), (2, (3,)), (3, (2, 3, 4))])
def test_encoder_shapes(in_features, spatial):
    enc = CoordinateEncoder(6, init="random", in_features=in_features, hidden=8, fourier=2)
    out = enc(torch.randn(3, in_features, *spatial))
    assert out.shape == (3, 6, *spatial)
    assert enc.mlp[0].in_features == in_features * (1 + 2 * 2)


def test_encoder_fourier_features():
    enc = CoordinateEncoder(4, init="random", fourier=3)
    c = torch.rand(2, 5, 2) * 2 - 1  # (..., in_features)
    feats = enc.features(c)
    assert feats.shape == (2, 5, 2 * (1 + 2 * 3))
    torch.testing.assert_close(feats[..., :2], c)  # the coordinates themselves come first
    n = 2 * 3
    sin_block, cos_block = feats[..., 2 : 2 + n].reshape(-1, n), feats[..., 2 + n :].reshape(-1, n)
    cd = c.double().reshape(-1, 2)
    for k in range(3):
        for i in range(2):
            phase = 2.0**k * np.pi * cd[:, i]
            for block, expected in ((sin_block, phase.sin()), (cos_block, phase.cos())):
                hits = [j for j in range(n) if torch.allclose(block[:, j].double(), expected, atol=1e-5)]
                assert hits, f"no feature column holds {'sin' if block is sin_block else 'cos'}(2^{k} π c_{i})"
    # without octaves, the features are the coordinates
    assert CoordinateEncoder(4, init="random").features(c) is c


def test_encoder_fourier_features_float64_precision():
    enc = CoordinateEncoder(4, init="random", fourier=4).double()
    c = torch.linspace(-1, 1, 9, dtype=torch.float64)[:, None]
    feats = enc.features(c)
    expected = torch.cat([torch.sin(torch.pi * 2.0**k * c) for k in range(4)], dim=-1)
    torch.testing.assert_close(feats[:, 1:5], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_encoder_activations(activation):
    enc = CoordinateEncoder(3, init="random", hidden=5, layers=3, activation=activation)
    acts = [m for m in enc.mlp if not isinstance(m, nn.Linear)]
    assert len(acts) == 2 and all(type(m) is ACTIVATIONS[activation] for m in acts)
    assert [m.out_features for m in enc.mlp if isinstance(m, nn.Linear)] == [5, 5, 3]
    c1, c2 = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    mixed = enc(0.3 * c1 + 0.7 * c2)
    affine = 0.3 * enc(c1) + 0.7 * enc(c2)
    if activation == "none":  # no nonlinearity: the MLP is an affine map
        torch.testing.assert_close(mixed, affine)
    else:
        assert not torch.allclose(mixed, affine, atol=1e-4)


def test_encoder_single_layer_is_a_linear_map():
    enc = CoordinateEncoder(3, init="random", layers=1)
    assert len(enc.mlp) == 1
    c = torch.randn(2, 2, 4, 5)
    lin = enc.mlp[0]
    expected = torch.einsum("oi,bihw->bohw", lin.weight, c) + lin.bias[None, :, None, None]
    torch.testing.assert_close(enc(c), expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"activation": "swish"},
            r"activation: expected one of \['gelu', 'none', 'relu', 'silu', 'tanh'\], got 'swish'",
        ),
        ({"layers": 0}, r"layers: expected an integer >= 1, got 0"),
        ({"channels": 0}, r"channels: expected a positive integer, got 0"),
        ({"hidden": 0}, r"hidden: expected a positive integer, got 0"),
        ({"in_features": 0}, r"in_features: expected a positive integer, got 0"),
        ({"fourier": -1}, r"fourier: expected an integer >= 0, got -1"),
        ({"layers": 2.0}, r"layers: expected an integer >= 1, got 2.0"),
    ],
)
def test_encoder_rejects_bad_arguments(kwargs, message):
    kwargs = {"channels": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        CoordinateEncoder(**kwargs)


@pytest.mark.parametrize(
    ("shape", "got"), [((1, 3, 4, 4), r"\(1, 3, 4, 4\)"), ((2,), r"\(2,\)"), ((4, 1, 5), r"\(4, 1, 5\)")]
)
def test_encoder_rejects_wrong_coords_shape(shape, got):
    with pytest.raises(ValueError, match=rf"coords: expected shape \(B, 2, \.\.\.\), got {got}"):
        CoordinateEncoder(4, init="random")(torch.zeros(shape))


# ---- CoordGate: Eq. (3) ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mix", [False, True])
def test_coordgate_is_block_times_gate_then_mix(mix):
    block = nn.Conv2d(3, 5, 3, padding=1)
    cg = CoordGate(5, init="random", block=block, mix=mix, hidden=8, fourier=1).double()
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    coords = sensor_coordinates([(1, 2), (9, 0)], (6, 7), (16, 16), dtype=torch.float64)
    gated = block(x) * cg.encoder(coords)
    expected = F.conv2d(gated, cg.mix.weight, cg.mix.bias) if mix else gated
    assert isinstance(cg.mix, nn.Conv2d if mix else nn.Identity)
    torch.testing.assert_close(cg(x, coords), expected, rtol=1e-13, atol=1e-13)


def test_coordgate_broadcasts_one_coordinate_map_over_the_batch():
    cg = CoordGate(4, init="random", mix=True)
    x = torch.randn(3, 4, 5, 6)
    coords = sensor_coordinates([(2, 2)], (5, 6), (10, 10))
    out = cg(x, coords)
    for b in range(3):
        torch.testing.assert_close(out[b : b + 1], cg(x[b : b + 1], coords))


def test_coordgate_one_dimensional():
    block = nn.Conv1d(2, 3, 5, padding=2)
    cg = CoordGate(3, init="random", block=block, in_features=1, dims=1, layers=2)
    assert isinstance(cg.mix, nn.Conv1d)
    x = torch.randn(4, 2, 30)
    coords = (torch.arange(30.0) - 14.5)[None, None] / 15
    expected = F.conv1d(block(x) * cg.encoder(coords), cg.mix.weight, cg.mix.bias)
    torch.testing.assert_close(cg(x, coords), expected)


@pytest.mark.parametrize("training", [True, False])
def test_coordgate_works_at_any_size(training):
    """One module, many sizes: nothing is fixed at construction (unlike the reference code's 256x256)."""
    cg = CoordGate(4, init="random", block=nn.Conv2d(1, 4, 3, padding=1)).train(training)
    for h, w in [(5, 7), (16, 16), (31, 9), (1, 1), (64, 3)]:
        coords = sensor_coordinates([(0, 0)], (h, w), (64, 64))
        assert cg(torch.randn(2, 1, h, w), coords).shape == (2, 4, h, w)


def test_coordgate_rejects_mismatched_coordinates():
    cg = CoordGate(4, init="random")
    x = torch.randn(1, 4, 5, 7)
    with pytest.raises(
        ValueError, match=r"coords: expected spatial shape \(5, 7\) \(that of the features\), got \(5, 8\)"
    ):
        cg(x, sensor_coordinates([(0, 0)], (5, 8), (16, 16)))
    with pytest.raises(ValueError, match=r"CoordGate: expected 4 feature channels, got 3"):
        cg(torch.randn(1, 3, 5, 7), sensor_coordinates([(0, 0)], (5, 7), (16, 16)))
    with pytest.raises(ValueError, match=r"dims: expected 1 or 2, got 3"):
        CoordGate(4, dims=3)


# ---- the gate cache ----------------------------------------------------------------------------------------------


class CountCalls:
    def __init__(self, module: nn.Module):
        self.n = 0
        module.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.n += 1


@pytest.fixture
def gate_setup():
    cg = CoordGate(4, init="random", block=nn.Conv2d(1, 4, 3, padding=1), hidden=8).eval()
    x = torch.randn(2, 1, 6, 5)
    coords = sensor_coordinates([(3, 1)], (6, 5), (32, 32))
    return cg, x, coords, CountCalls(cg.encoder)


def uncached(cg, x, coords):
    """The gate computed afresh: no cache key."""
    with torch.no_grad():
        return cg(x, coords)


def test_gate_cached_in_eval_without_grad(gate_setup):
    cg, x, coords, calls = gate_setup
    reference = uncached(cg, x, coords)
    assert calls.n == 1
    with torch.no_grad():
        outs = [cg(x, coords, cache_key=("a", 0)) for _ in range(4)]
    assert calls.n == 2  # once for the key, then reused
    for out in outs:
        assert torch.equal(out, reference)  # cached and uncached results are identical
    with torch.no_grad():
        cg(x, coords, cache_key=("b", 0))
    assert calls.n == 3  # another key computes its own gate


def test_gate_not_cached_in_training_mode(gate_setup):
    cg, x, coords, calls = gate_setup
    cg.train()
    with torch.no_grad():
        for _ in range(3):
            cg(x, coords, cache_key="k")
    assert calls.n == 3


def test_gate_not_cached_with_grad_enabled(gate_setup):
    cg, x, coords, calls = gate_setup
    outs = [cg(x, coords, cache_key="k") for _ in range(3)]
    assert calls.n == 3
    outs[0].sum().backward()  # and the graph reaches the encoder
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cg.encoder.parameters())


def test_gate_cache_is_bounded(gate_setup):
    cg, x, coords, calls = gate_setup
    with torch.no_grad():
        for key in range(CACHE_SIZE + 1):
            cg(x, coords, cache_key=key)
        assert calls.n == CACHE_SIZE + 1
        cg(x, coords, cache_key=CACHE_SIZE)  # most recent: still there
        assert calls.n == CACHE_SIZE + 1
        cg(x, coords, cache_key=0)  # oldest: evicted
        assert calls.n == CACHE_SIZE + 2


def test_gate_cache_key_includes_dtype(gate_setup):
    cg, x, coords, calls = gate_setup
    with torch.no_grad():
        cg(x, coords, cache_key="k")
        cg.double()
        out = cg(x.double(), coords.double(), cache_key="k")
    assert calls.n == 2
    assert out.dtype == torch.float64


def test_gate_cache_invalidated_by_train(gate_setup):
    cg, x, coords, calls = gate_setup
    with torch.no_grad():
        before = cg(x, coords, cache_key="k")
        cg.train()
        cg.eval()
        after = cg(x, coords, cache_key="k")
    assert calls.n == 2
    assert torch.equal(before, after)


def test_gate_cache_invalidated_by_load_state_dict(gate_setup):
    cg, x, coords, calls = gate_setup
    other = CoordGate(4, init="random", block=nn.Conv2d(1, 4, 3, padding=1), hidden=8).eval()
    with torch.no_grad():
        before = cg(x, coords, cache_key="k")
        cg.load_state_dict(other.state_dict())
        after = cg(x, coords, cache_key="k")
    assert calls.n == 2
    assert not torch.allclose(before, after)
    assert torch.equal(after, uncached(other, x, coords))


def test_gate_cache_invalidated_by_in_place_weight_change(gate_setup):
    cg, x, coords, calls = gate_setup
    with torch.no_grad():
        before = cg(x, coords, cache_key="k")
        cg.encoder.mlp[-1].bias.add_(1.0)
        after = cg(x, coords, cache_key="k")
    assert calls.n == 2
    assert not torch.allclose(before, after)
    assert torch.equal(after, uncached(cg, x, coords))


def test_gate_cache_invalidated_by_an_optimizer_step(gate_setup):
    cg, x, coords, _ = gate_setup
    opt = torch.optim.SGD(cg.encoder.parameters(), lr=0.1)
    with torch.no_grad():
        before = cg(x, coords, cache_key="k")
    cg(x, coords).square().sum().backward()  # eval mode, grad on: no cache
    opt.step()
    with torch.no_grad():
        after = cg(x, coords, cache_key="k")
    assert not torch.allclose(before, after)
    assert torch.equal(after, uncached(cg, x, coords))


@pytest.mark.parametrize("how", ["data", "vector_to_parameters"])
def test_gate_cache_invalidated_by_writes_through_data(gate_setup, how):
    cg, x, coords, _ = gate_setup
    with torch.no_grad():
        before = cg(x, coords, cache_key="k")
        if how == "data":
            cg.encoder.mlp[-1].bias.data.add_(1.0)
        else:
            vec = torch.nn.utils.parameters_to_vector(cg.encoder.parameters())
            torch.nn.utils.vector_to_parameters(vec + 1.0, cg.encoder.parameters())
        after = cg(x, coords, cache_key="k")
    assert not torch.equal(before, after)
    assert torch.equal(after, uncached(cg, x, coords))


def test_coordgate_pickles(gate_setup):
    cg, x, coords, _ = gate_setup
    with torch.no_grad():
        before = cg(x, coords, cache_key="k")
    again = pickle.loads(pickle.dumps(cg))
    with torch.no_grad():
        assert torch.equal(again(x, coords, cache_key="k"), before)


def test_deepcopy_keeps_caches_apart(gate_setup):
    cg, x, coords, calls = gate_setup
    with torch.no_grad():
        cg(x, coords, cache_key="k")
        twin = copy.deepcopy(cg)
        twin.encoder.mlp[-1].bias.add_(1.0)
        changed = twin(x, coords, cache_key="k")
        assert torch.equal(changed, uncached(twin, x, coords))
        assert not torch.allclose(changed, cg(x, coords, cache_key="k"))
    assert calls.n == 1  # the original still uses its own cached gate


# ---- the appendix: CoordGate with a complete 3x3 basis is a locally connected layer -------------------------------


def pixel_basis_block() -> nn.Conv2d:
    """1 -> 9 channels, channel a = 3 u + v is the 3x3 filter with a single 1 at (u, v); no bias."""
    conv = nn.Conv2d(1, 9, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(9).reshape(9, 1, 3, 3))
    return conv


class TableEncoder(nn.Module):
    """An 'encoder' that looks the gate up per pixel: the trainable-map limit of the paper's Section III."""

    def __init__(self, table: torch.Tensor, sensor_shape):
        super().__init__()
        self.table = table  # (C, ny, nx), one gate vector per sensor pixel
        self.scale = field_scale(sensor_shape)
        self.centre = ((sensor_shape[0] - 1) / 2, (sensor_shape[1] - 1) / 2)

    def forward(self, coords):  # (B, 2, h, w) -> (B, C, h, w)
        rows = torch.round(coords[:, 0] * self.scale + self.centre[0]).long()
        cols = torch.round(coords[:, 1] * self.scale + self.centre[1]).long()
        return self.table[:, rows, cols].movedim(0, 1)


def locally_connected(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Explicit locally connected 3x3 layer with zero padding: kernels (H, W, 3, 3), one per pixel."""
    h, w = x.shape[-2:]
    patches = F.unfold(x, 3, padding=1).reshape(x.shape[0], 9, h, w)  # patch entry 3 u + v: x[i + u - 1, j + v - 1]
    return torch.einsum("bkhw,hwk->bhw", patches, kernels.reshape(h, w, 9))[:, None]


def summing_coordgate(sensor_shape, table) -> CoordGate:
    """CoordGate(pixel basis, gate = table), whose 1x1 mix sums the nine gated channels (into every output)."""
    cg = CoordGate(9, init="random", block=pixel_basis_block(), mix=True).double()
    cg.encoder = TableEncoder(table, sensor_shape)
    with torch.no_grad():
        cg.mix.weight.fill_(1.0)
        cg.mix.bias.zero_()
    return cg


def test_pixel_basis_gate_is_a_locally_connected_layer():
    h, w = 7, 9
    gates = torch.randn(9, h, w, dtype=torch.float64)  # G (9, H, W), set directly
    cg = summing_coordgate((h, w), gates)
    x = torch.randn(2, 1, h, w, dtype=torch.float64)
    coords = sensor_coordinates([(0, 0)], (h, w), (h, w), dtype=torch.float64)
    out = cg(x, coords)[:, :1]
    kernels = gates.permute(1, 2, 0).reshape(h, w, 3, 3)  # pixel (i, j)'s filter: G[:, i, j] as a 3x3 array
    torch.testing.assert_close(out, locally_connected(x, kernels), rtol=1e-12, atol=1e-12)
    # and the per-pixel filters really differ: no single convolution reproduces it
    conv = F.conv2d(x, kernels[h // 2, w // 2][None, None], padding=1)
    assert not torch.allclose(out, conv)


def test_locally_connected_on_a_crop_uses_the_crop_position():
    """A tile of the sensor gets the filters of its own pixels (its coordinates carry its offset)."""
    sensor, (y0, x0), (h, w) = (12, 14), (3, 5), (6, 7)
    gates = torch.randn(9, *sensor, dtype=torch.float64)
    cg = summing_coordgate(sensor, gates)
    x = torch.randn(1, 1, h, w, dtype=torch.float64)
    out = cg(x, sensor_coordinates([(y0, x0)], (h, w), sensor, dtype=torch.float64))[:, :1]
    kernels = gates[:, y0 : y0 + h, x0 : x0 + w].permute(1, 2, 0).reshape(h, w, 3, 3)
    torch.testing.assert_close(out, locally_connected(x, kernels), rtol=1e-12, atol=1e-12)


def test_appendix_example_filters():
    """The appendix's Eq. (7): gates [1,2,1,1,1,1,1,1,1] and [0,2,1,1,1,1,1,1,1] at two adjacent pixels are the
    effective filters there (read off the impulse responses)."""
    h, w = 5, 6
    gates = torch.ones(9, h, w, dtype=torch.float64)
    gates[:, 2, 2] = torch.tensor([1, 2, 1, 1, 1, 1, 1, 1, 1.0])
    gates[:, 2, 3] = torch.tensor([0, 2, 1, 1, 1, 1, 1, 1, 1.0])
    cg = summing_coordgate((h, w), gates)
    coords = sensor_coordinates([(0, 0)], (h, w), (h, w), dtype=torch.float64)
    # the layer is linear: its response to a unit impulse at input pixel (k, l) is column (k, l) of the Jacobian
    impulses = torch.eye(h * w, dtype=torch.float64).reshape(h * w, 1, h, w)
    jac = cg(impulses, coords)[:, 0].reshape(h, w, h, w).permute(2, 3, 0, 1)  # output (i, j) <- input (k, l)
    expected_a = torch.tensor([[1, 2, 1], [1, 1, 1], [1, 1, 1.0]], dtype=torch.float64)
    expected_b = torch.tensor([[0, 2, 1], [1, 1, 1], [1, 1, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(jac[2, 2, 1:4, 1:4], expected_a)
    torch.testing.assert_close(jac[2, 3, 1:4, 2:5], expected_b)
    assert jac[2, 2].sum() == expected_a.sum() and jac[2, 3].sum() == expected_b.sum()  # nothing outside the 3x3


def test_shared_gate_reduces_to_an_ordinary_convolution():
    h, w = 8, 11
    kernel = torch.randn(3, 3, dtype=torch.float64)
    gates = kernel.reshape(9, 1, 1).expand(9, h, w).clone()  # the same gate vector at every pixel
    cg = summing_coordgate((h, w), gates)
    x = torch.randn(3, 1, h, w, dtype=torch.float64)
    out = cg(x, sensor_coordinates([(0, 0)], (h, w), (h, w), dtype=torch.float64))[:, :1]
    torch.testing.assert_close(out, F.conv2d(x, kernel[None, None], padding=1), rtol=1e-12, atol=1e-12)


def test_appendix_with_a_monkeypatched_gate(monkeypatch):
    """The same equivalence through CoordGate.gate itself (the cached path's entry point), with mix off."""
    h, w = 6, 6
    gates = torch.randn(9, h, w, dtype=torch.float64)
    cg = CoordGate(9, init="random", block=pixel_basis_block(), mix=False).double()
    monkeypatch.setattr(cg, "gate", lambda coords, cache_key=None: gates[None])
    x = torch.randn(1, 1, h, w, dtype=torch.float64)
    out = cg(x, torch.zeros(1, 2, h, w, dtype=torch.float64)).sum(1, keepdim=True)
    kernels = gates.permute(1, 2, 0).reshape(h, w, 3, 3)
    torch.testing.assert_close(out, locally_connected(x, kernels), rtol=1e-12, atol=1e-12)


def test_identity_init_starts_every_gate_at_one():
    coords = sensor_coordinates([(3, 1)], (6, 5), (32, 32))
    assert torch.equal(CoordinateEncoder(4)(coords), torch.ones(1, 4, 6, 5))
    cg = CoordGate(4, mix=True)
    x = torch.randn(1, 4, 6, 5)
    torch.testing.assert_close(cg(x, coords), x)  # gate 1 and mix the identity: the layer starts as its block
