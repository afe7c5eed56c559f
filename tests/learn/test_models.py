"""U-Net family: any input size, identity at initialisation (residual), coordinates through offsets, the CG U-Net's
gate cache, parameter counts (the issue's >= 10x target), ModelConfig, and MultiWienerNet's Wiener channels."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from learn.coordgate import CoordGate
from learn.models import (
    MODEL_NAMES,
    CGUNet,
    CoordConvUNet,
    ModelConfig,
    MultiWienerNet,
    UNet,
    build_model,
    count_parameters,
    model_table,
)

SENSOR = (64, 80)
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def small_config(name, depth=2, **kw) -> ModelConfig:
    base = {"width": 4, "sensor_shape": SENSOR, "gate_hidden": 8, "psf_count": 2, "psf_size": 5, "gate_init": "random"}
    return ModelConfig(name=name, depth=depth, **{**base, **kw})


def gaussian_psfs(count: int, size: int, widths=(0.8, 1.4)) -> torch.Tensor:
    r = torch.arange(size) - size // 2
    rr = r[:, None] ** 2 + r[None, :] ** 2
    psfs = torch.stack([torch.exp(-rr / (2 * widths[i % len(widths)] ** 2)) for i in range(count)]).float()
    return psfs / psfs.sum((-2, -1), keepdim=True)


def make(config: ModelConfig):
    psfs = gaussian_psfs(config.psf_count, config.psf_size) if config.name == "multiwiener" else None
    return build_model(config, psfs=psfs)


# ---- any size, identity at initialisation --------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_forwards_any_size(name, depth):
    model = make(small_config(name, depth))
    classes = {"unet": UNet, "cg-unet": CGUNet, "coordconv-unet": CoordConvUNet, "multiwiener": MultiWienerNet}
    assert type(model) is classes[name]
    with torch.no_grad():
        for h, w in [(37, 53), (5, 12)]:  # odd, not multiples of 2^(d-1)
            x = torch.rand(2, 1, h, w)
            y = model(x, torch.tensor([[3, 7], [20, 1]]))
            assert y.shape == (2, 1, h, w)
            assert y.dtype == torch.float32
            assert torch.isfinite(y).all()
        assert model(torch.rand(1, 1, 9, 9)).shape == (1, 1, 9, 9)  # offsets default to (0, 0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_residual_models_start_as_the_identity(name):
    model = make(small_config(name, 3, residual=True))
    x = torch.rand(2, 1, 21, 18)
    assert torch.equal(model(x, torch.tensor([[0, 0], [5, 9]])), x)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_offsets_matter_only_to_coordinate_models(name):
    model = make(small_config(name, 2, residual=False)).eval()
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        a = model(x, torch.tensor([[0, 0]]))
        b = model(x, torch.tensor([[24, 40]]))
    if name in ("cg-unet", "coordconv-unet"):
        assert model.uses_coordinates
        assert not torch.allclose(a, b, atol=1e-6)
    else:
        assert not model.uses_coordinates
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["cg-unet", "coordconv-unet"])
def test_a_batch_of_crops_equals_each_crop_alone(name):
    """Crops at different offsets in one batch each get their own coordinates."""
    model = make(small_config(name, 3, residual=False))
    x = torch.rand(3, 1, 13, 19)
    offsets = torch.tensor([[0, 0], [30, 50], [7, 2]])
    together = model(x, offsets)
    for b in range(3):
        torch.testing.assert_close(together[b : b + 1], model(x[b : b + 1], offsets[b : b + 1]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_in_float64_and_on_device(name, device):
    model = make(small_config(name, 2, residual=False)).to(device=device, dtype=torch.float64)
    x = torch.rand(2, 1, 11, 14, dtype=torch.float64, device=device)
    y = model(x, torch.tensor([[1, 2], [3, 4]], device=device))
    assert y.dtype == torch.float64 and y.device.type == device and y.shape == (2, 1, 11, 14)
    if device != "cpu":  # the same numbers as on the CPU
        ref = model.cpu()(x.cpu(), torch.tensor([[1, 2], [3, 4]]))
        torch.testing.assert_close(y.cpu(), ref)


def test_models_reject_bad_inputs():
    model = make(small_config("cg-unet", 2))
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 1, H, W\), got \(1, 2, 8, 8\)"):
        model(torch.rand(1, 2, 8, 8))
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 1, H, W\), got \(8, 8\)"):
        model(torch.rand(8, 8))
    with pytest.raises(ValueError, match=r"offsets: expected shape \(2, 2\) of \(y0, x0\) pixels, got \(1, 2\)"):
        model(torch.rand(2, 1, 8, 8), torch.tensor([[0, 0]]))


# ---- CG U-Net: gates and their cache -------------------------------------------------------------------------------


class CountGateCalls:
    """Counts encoder evaluations over every CoordGate of a model."""

    def __init__(self, model):
        self.n = 0
        self.gates = [m for m in model.modules() if isinstance(m, CoordGate)]
        for g in self.gates:
            g.encoder.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.n += 1


@pytest.mark.parametrize("depth", [1, 3])
def test_cg_unet_has_2d_minus_1_gates(depth):
    model = make(small_config("cg-unet", depth))
    assert len(CountGateCalls(model).gates) == 2 * depth - 1


def test_cg_unet_cached_inference_equals_uncached():
    depth = 3
    model = make(small_config("cg-unet", depth, residual=False)).eval()
    calls = CountGateCalls(model)
    x = torch.rand(2, 1, 29, 35)
    offsets = torch.tensor([[4, 6], [4, 6]])
    uncached = model(x, offsets)  # gradients on: never cached
    assert calls.n == 2 * depth - 1
    with torch.no_grad():
        first = model(x, offsets)
        assert calls.n == 2 * (2 * depth - 1)
        second = model(x, offsets)  # same geometry: no gate recomputed
        assert calls.n == 2 * (2 * depth - 1)
        # another crop of the same padded size and offsets shares the geometry, and the result is still right
        smaller = model(x[..., :30, :34], offsets)
        assert calls.n == 2 * (2 * depth - 1)
        moved = model(x, torch.tensor([[10, 6], [10, 6]]))  # new geometry: new gates
        assert calls.n == 3 * (2 * depth - 1)
    assert torch.equal(first, second)
    # inference mixes by a matrix product, training by a 1x1 convolution: the same sums in another order
    torch.testing.assert_close(first, uncached.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(smaller, model(x[..., :30, :34], offsets).detach(), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(moved, first)


def test_cg_unet_cache_follows_train_and_load_state_dict():
    model = make(small_config("cg-unet", 2, residual=False)).eval()
    other = make(small_config("cg-unet", 2, residual=False)).eval()
    calls = CountGateCalls(model)
    x, offsets = torch.rand(1, 1, 16, 16), torch.tensor([[8, 8]])
    with torch.no_grad():
        before = model(x, offsets)
        model.train()
        model.eval()
        again = model(x, offsets)
        assert calls.n == 2 * 3  # recomputed after train()
        model.load_state_dict(other.state_dict())  # the gates' post-hooks fire from the parent's load
        loaded = model(x, offsets)
        expected = other(x, offsets)
    assert torch.equal(before, again)
    assert torch.equal(loaded, expected)
    assert not torch.allclose(loaded, before)


# ---- parameter counts ----------------------------------------------------------------------------------------------


def gate_parameters(channels: int, hidden: int = 32, layers: int = 3) -> int:
    widths = [2] + [hidden] * (layers - 1) + [channels]
    mlp = sum(a * b + b for a, b in itertools.pairwise(widths))
    return mlp + channels * channels + channels  # plus the 1x1 mix


def test_cg_unet_3_is_ten_times_smaller_than_unet_5():
    """The issue's target at the default width (32): CG U-Net(3) has >= 10x fewer parameters than U-Net(5)."""
    assert ModelConfig().width == 32
    cg3 = count_parameters(build_model(ModelConfig(name="cg-unet", depth=3)))
    unet5 = count_parameters(build_model(ModelConfig(name="unet", depth=5)))
    assert 10 * cg3 <= unet5


def test_cg_unet_adds_exactly_its_gates():
    depth, width = 3, 32
    cg = count_parameters(build_model(ModelConfig(name="cg-unet", depth=depth, width=width)))
    unet = count_parameters(build_model(ModelConfig(name="unet", depth=depth, width=width)))
    widths = [width * 2**level for level in range(depth)]
    gates = sum(gate_parameters(widths[i]) + gate_parameters(widths[i + 1]) for i in range(depth - 1))
    assert cg - unet == gates + gate_parameters(widths[0])


def test_unet_parameter_count_by_hand():
    """U-Net(2), width 4: inc 1->4->4, down 4->8->8, up-conv 8->4 (2x2), up 8->4->4, out 4->1."""

    def conv(cin, cout, k):
        return cin * cout * k * k + cout

    expected = (
        conv(1, 4, 3) + conv(4, 4, 3) + conv(4, 8, 3) + conv(8, 8, 3) + conv(8, 4, 2) + conv(8, 4, 3) + conv(4, 4, 3)
    ) + conv(4, 1, 1)
    assert count_parameters(build_model(ModelConfig(name="unet", depth=2, width=4))) == expected


def test_count_parameters_ignores_frozen_parameters():
    model = build_model(ModelConfig(name="unet", depth=1, width=4))
    total = count_parameters(model)
    model.net.outc.weight.requires_grad_(False)
    assert count_parameters(model) == total - model.net.outc.weight.numel()


@pytest.mark.parametrize(("width", "depths"), [(32, (3, 4)), (8, (1, 5, 6))])
def test_model_table_matches_built_models(width, depths):
    table = model_table(width=width, depths=depths)
    assert [row["depth"] for row in table] == list(depths)
    for row in table:
        assert sorted(row["parameters"]) == sorted(MODEL_NAMES)
        for name in MODEL_NAMES:
            model = build_model(ModelConfig(name=name, depth=row["depth"], width=width))
            assert row["parameters"][name] == count_parameters(model), (name, row["depth"])


# ---- ModelConfig ---------------------------------------------------------------------------------------------------


def test_model_config_round_trips():
    for config in (ModelConfig(), small_config("multiwiener", 4, residual=False, gate_fourier=2, gate_mix=False)):
        d = config.to_dict()
        assert d["sensor_shape"] == list(config.sensor_shape)  # JSON/TOML friendly
        again = ModelConfig.from_dict(d)
        assert again == config
        assert isinstance(again.sensor_shape, tuple)
    assert ModelConfig(name="unet", depth=4, width=16).describe() == "unet(4) width 16"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "vit"}, r"model: unknown model 'vit'; expected one of unet, cg-unet, coordconv-unet, multiwiener"),
        ({"depth": 0}, r"depth: expected an integer in \[1, 8\], got 0"),
        ({"depth": 9}, r"depth: expected an integer in \[1, 8\], got 9"),
        ({"depth": True}, r"depth: expected an integer in \[1, 8\], got True"),
        ({"depth": 3.0}, r"depth: expected an integer in \[1, 8\], got 3.0"),
        ({"width": 0}, r"width: expected an integer in \[1, 1024\], got 0"),
        ({"in_channels": 65}, r"in_channels: expected an integer in \[1, 64\], got 65"),
        ({"psf_count": 0}, r"psf_count: expected an integer in \[1, 256\], got 0"),
        ({"psf_size": 4}, r"psf_size: expected an odd positive integer, got 4"),
        ({"psf_size": -1}, r"psf_size: expected an integer in \[1, 1023\], got -1"),
        ({"psf_size": 4}, r"psf_size: expected an odd positive integer, got 4"),
        ({"sensor_shape": (0, 5)}, r"sensor_shape: expected \(ny, nx\) positive integer pixels, got \(0, 5\)"),
        ({"sensor_shape": (5, 5, 5)}, r"sensor_shape: expected \(ny, nx\) positive integer pixels, got \(5, 5, 5\)"),
    ],
)
def test_model_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**changes)
    with pytest.raises(ValueError, match=message):  # the same check through from_dict
        ModelConfig.from_dict({**ModelConfig().to_dict(), **changes})


def test_model_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown key 'detph' in model config \(did you mean 'depth'\?\)"):
        ModelConfig.from_dict({"name": "unet", "detph": 3})
    with pytest.raises(ValueError, match=r"unknown key 'colour' in model config; allowed keys: name, depth, width"):
        ModelConfig.from_dict({"colour": "red"})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gate_activation": "swish"}, r"gate_activation"),
        ({"gate_layers": 0}, r"gate_layers"),
        ({"gate_hidden": 0}, r"gate_hidden"),
        ({"gate_fourier": -1}, r"gate_fourier"),
        ({"residual": "no"}, r"residual"),
    ],
)
def test_model_config_validates_gate_settings(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(name="unet", **changes)


@pytest.mark.parametrize("shape", [512, ("a", 2)])
def test_model_config_sensor_shape_type_errors_name_the_argument(shape):
    with pytest.raises(ValueError, match=r"sensor_shape: expected \(ny, nx\)"):
        ModelConfig(sensor_shape=shape)


def test_gate_settings_reach_the_gates():
    config = small_config("cg-unet", 2, gate_hidden=6, gate_layers=2, gate_activation="tanh", gate_fourier=3)
    gates = [m for m in make(config).modules() if isinstance(m, CoordGate)]
    for g in gates:
        linears = [m for m in g.encoder.mlp if isinstance(m, torch.nn.Linear)]
        assert [m.in_features for m in linears] == [2 * 7, 6]
        assert isinstance(g.encoder.mlp[1], torch.nn.Tanh)
    no_mix = make(small_config("cg-unet", 2, gate_mix=False))
    assert all(isinstance(g.mix, torch.nn.Identity) for g in no_mix.modules() if isinstance(g, CoordGate))
    with pytest.raises(ValueError, match=r"activation: expected one of"):
        make(small_config("cg-unet", 2, gate_activation="swish"))


# ---- MultiWienerNet ------------------------------------------------------------------------------------------------


def asymmetric_psf(size: int = 5) -> torch.Tensor:
    """A well-conditioned PSF (|K| >= 0.6 everywhere) that is not symmetric: a flipped filter would fail."""
    r = size // 2
    psf = torch.zeros(size, size, dtype=torch.float64)
    psf[r, r], psf[r - 1, r + 2], psf[r + 1, r] = 0.8, 0.12, 0.08
    return psf


def blur(image: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    """Linear convolution, 'valid' part: PSF centred at k // 2 (conv2d correlates, so flip)."""
    return F.conv2d(image, psf.flip(-2, -1)[None, None])


def wiener_model(psf: torch.Tensor, log_balance: float) -> MultiWienerNet:
    k = psf.shape[-1]
    model = build_model(small_config("multiwiener", 1, psf_count=1, psf_size=k), psfs=psf[None].float()).double()
    with torch.no_grad():
        model.psfs.copy_(psf[None])
        model.log_balance.fill_(log_balance)
    return model


def test_wiener_features_undo_the_blur_of_their_own_psf():
    psf = asymmetric_psf(5)
    r, s, m = 2, 48, 10
    big = torch.rand(1, 1, s + 2 * r, s + 2 * r, dtype=torch.float64)
    sharp, blurred = big[..., r:-r, r:-r], blur(big, psf)  # the edges of `blurred` see light from outside it
    interior = (..., slice(m, s - m), slice(m, s - m))
    with torch.no_grad():
        nearly_exact = wiener_model(psf, -30.0).features(blurred, None)
        default = wiener_model(psf, -4.6).features(blurred, None)
        flipped = wiener_model(psf.flip(-2, -1), -30.0).features(blurred, None)
    assert nearly_exact.shape == blurred.shape
    blur_error = (blurred - sharp)[interior].abs().max()
    assert (nearly_exact - sharp)[interior].abs().max() < 1e-4
    assert (default - sharp)[interior].abs().max() < 0.25 * blur_error  # balance 1e-2: much closer than the blur
    assert (flipped - sharp)[interior].abs().max() > blur_error  # the orientation matters


def test_wiener_features_invert_a_circular_blur():
    psf = asymmetric_psf(5)
    s, m = 40, 10
    sharp = torch.rand(1, 1, s, s, dtype=torch.float64)
    kernel = torch.zeros(s, s, dtype=torch.float64)
    kernel[:5, :5] = psf
    kernel = torch.roll(kernel, (-2, -2), (0, 1))
    blurred = torch.fft.irfft2(torch.fft.rfft2(sharp) * torch.fft.rfft2(kernel), s=(s, s))
    with torch.no_grad():
        out = wiener_model(psf, -30.0).features(blurred, None)
    interior = (..., slice(m, s - m), slice(m, s - m))
    assert (out - sharp)[interior].abs().max() < 1e-3


def test_multiwiener_has_one_channel_per_psf():
    psfs = gaussian_psfs(3, 7)
    model = build_model(small_config("multiwiener", 2, psf_count=3, psf_size=7), psfs=psfs)
    feats = model.features(torch.rand(2, 1, 17, 23), None)
    assert feats.shape == (2, 3, 17, 23)
    assert not torch.allclose(feats[:, 0], feats[:, 1])
    # a flat image stays flat (PSFs sum to 1), at any balance
    flat = model.features(torch.full((1, 1, 17, 23), 0.5), None)
    torch.testing.assert_close(flat, torch.full_like(flat, 0.5 / (1 + math.exp(-4.6))), rtol=1e-4, atol=1e-4)


def test_multiwiener_rejects_wrong_psfs():
    config = small_config("multiwiener", 2, psf_count=2, psf_size=5)
    with pytest.raises(ValueError, match=r"psfs: expected shape \(2, 5, 5\) \(psf_count, psf_size\), got \(3, 5, 5\)"):
        build_model(config, psfs=torch.zeros(3, 5, 5))
    with pytest.raises(ValueError, match=r"psfs: expected shape \(2, 5, 5\) \(psf_count, psf_size\), got \(2, 7, 7\)"):
        MultiWienerNet(config, torch.zeros(2, 7, 7))
    with pytest.raises(ValueError, match=r"got \(5, 5\)"):
        MultiWienerNet(config, torch.zeros(5, 5))


def test_multiwiener_gradients_reach_psfs_and_balance():
    config = small_config("multiwiener", 2, psf_count=2, psf_size=5, residual=False)
    model = build_model(config, psfs=gaussian_psfs(2, 5))
    x = torch.rand(2, 1, 19, 16)
    (model(x) - x).square().mean().backward()
    for p in (model.psfs, model.log_balance):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0
    assert model.psfs.grad.shape == (2, 5, 5) and model.log_balance.grad.shape == (2,)
    # a U-Net whose first convolution takes K = 2 channels (one more 3x3x4 weight), plus the PSFs and the balances
    unet = count_parameters(build_model(small_config("unet", 2)))
    assert count_parameters(model) == unet + 4 * 9 + 2 * 5 * 5 + 2


def test_multiwiener_without_psfs_starts_at_zero_until_loaded():
    config = small_config("multiwiener", 2, psf_count=2, psf_size=5)
    trained = build_model(config, psfs=gaussian_psfs(2, 5))
    blank = build_model(config)
    assert torch.equal(blank.psfs, torch.zeros(2, 5, 5))
    blank.load_state_dict(trained.state_dict())
    x = torch.rand(1, 1, 12, 12)
    torch.testing.assert_close(blank.features(x, None), trained.features(x, None))


def test_cg_unet_starts_as_its_unet_backbone():
    """With identity-initialised gates (the default) a CG U-Net computes exactly its U-Net at initialisation."""
    cg = make(small_config("cg-unet", 3, residual=False, gate_init="identity")).eval()
    unet = make(small_config("unet", 3, residual=False))
    unet.load_state_dict({k: v for k, v in cg.state_dict().items() if "gate" not in k})
    x = torch.rand(2, 1, 24, 20)
    with torch.no_grad():
        torch.testing.assert_close(cg(x, torch.tensor([[0, 0], [5, 9]])), unet.eval()(x))
