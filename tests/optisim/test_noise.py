"""Camera noise: moments against the model, clipping, peak scaling, reproducibility, devices, config and errors."""

import dataclasses
import math
import re

import pytest
import torch

from optisim.noise import CameraNoise, apply_noise, noise_moments, parse_noise

LEVELS = (0.0, 0.01, 0.3, 1.0)
N = 512 * 512
PARAMS = {
    "default": {},
    "gain2.5_no_background": {"photons": 200.0, "background": 0.0, "read_noise": 1.5, "gain": 2.5, "offset": 50.0},
    "gain0.5_14bit": {"photons": 5000.0, "background": 30.0, "read_noise": 4.0, "gain": 0.5, "offset": 200.0,
                      "bit_depth": 14},
}  # fmt: skip


def constant_levels(levels=LEVELS, dtype=torch.float64):
    """A (len(levels), 512, 512) stack of constant images."""
    return torch.tensor(levels, dtype=dtype)[:, None, None].expand(len(levels), 512, 512).contiguous()


def gen(seed=0, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def sample_moments(y):
    return y.mean(dim=(-2, -1)), y.var(dim=(-2, -1))


@pytest.mark.parametrize("output", ["intensity", "adu"])
@pytest.mark.parametrize("name", sorted(PARAMS))
def test_mean_and_variance_match_model(name, output):
    noise = CameraNoise(output=output, **PARAMS[name])
    x = constant_levels()
    y = apply_noise(x, noise, generator=gen(1))
    mean, var = (m[:, 0, 0] for m in noise_moments(x, noise))
    got_mean, got_var = sample_moments(y)
    # 4th cumulant of the output: Poisson's is its rate (e-), scaled by (ADU per e-)^4 or (intensity per e-)^4;
    # Gaussian read noise adds none and the quantisation's (-1/120 ADU^4) only lowers it (left out: conservative).
    rate = noise.photons * torch.tensor(LEVELS, dtype=torch.float64) + noise.background
    per_electron = noise.gain if output == "adu" else 1.0 / noise.photons
    kappa4 = rate * per_electron**4
    se_mean = torch.sqrt(var / N)
    se_var = torch.sqrt((2 * var**2 + kappa4) / N)
    assert torch.all((got_mean - mean).abs() < 5 * se_mean), (got_mean, mean, se_mean)
    assert torch.all((got_var - var).abs() < 5 * se_var), (got_var, var, se_var)


def test_moment_formulas():
    noise = CameraNoise(photons=100.0, background=5.0, read_noise=3.0, gain=2.0, offset=10.0)
    x = torch.full((1, 1), 0.5, dtype=torch.float64)
    mean, var = noise_moments(x, noise)
    assert mean.item() == 0.5
    assert var.item() == pytest.approx((55.0 + 9.0 + 1 / 48) / 100.0**2)
    mean, var = noise_moments(x, noise.replace(output="adu"))
    assert mean.item() == pytest.approx(2.0 * 55.0 + 10.0)
    assert var.item() == pytest.approx(4.0 * (55.0 + 9.0) + 1 / 12)
    mean, var = noise_moments(x, None)
    assert torch.equal(mean, x) and torch.equal(var, torch.zeros_like(x))


# -- clipping and quantisation ---------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 16])
def test_bright_input_saturates_at_adc_maximum(bits):
    noise = CameraNoise(photons=1e4, bit_depth=bits, offset=10.0, output="adu")
    y = apply_noise(torch.full((64, 64), 1e3), noise, generator=gen())
    assert torch.all(y == 2**bits - 1)
    back = apply_noise(torch.full((64, 64), 1e3), noise.replace(output="intensity"), generator=gen())
    assert torch.allclose(back, torch.tensor(((2**bits - 1 - 10.0) - 10.0) / 1e4))


def test_dark_input_clips_at_zero():
    noise = CameraNoise(background=0.0, read_noise=5.0, offset=0.0, output="adu")
    y = apply_noise(torch.zeros(128, 128), noise, generator=gen())
    assert y.min().item() == 0.0
    assert 0.4 < (y == 0).double().mean().item() < 0.7  # P(round(5 z) <= 0) = P(z < 0.1) = 0.54


def test_full_well_clips_electrons():
    noise = CameraNoise(photons=1000.0, full_well=500.0, read_noise=0.0, output="adu")
    x = torch.ones(64, 64, dtype=torch.float64)
    assert torch.all(apply_noise(x, noise, generator=gen()) == 600.0)  # 500 e- + 100 ADU offset
    back = apply_noise(x, noise.replace(output="intensity"), generator=gen())
    assert torch.allclose(back, torch.tensor(0.49, dtype=torch.float64))  # (500 e- - 10 e- background) / 1000


def test_adu_are_integers_in_range():
    noise = CameraNoise(gain=0.37, read_noise=1.3, offset=3.5, bit_depth=10, output="adu")
    y = apply_noise(torch.rand(2, 64, 64, generator=gen(3)) * 2, noise, generator=gen())
    assert torch.equal(y, y.round())
    assert 0 <= y.min().item() and y.max().item() <= 1023


# -- photons_at="peak" -----------------------------------------------------------------------------------


def test_peak_reference_ignores_image_scale():
    noise = CameraNoise(photons_at="peak", photons=300.0, output="adu")
    b = torch.rand(96, 96, generator=gen(5), dtype=torch.float64)
    a = 4.0 * b  # a power of two keeps s * x bit-identical, so the same seed gives the same counts
    assert torch.equal(apply_noise(a, noise, generator=gen()), apply_noise(b, noise, generator=gen()))
    out_a = apply_noise(a, noise.replace(output="intensity"), generator=gen())
    out_b = apply_noise(b, noise.replace(output="intensity"), generator=gen())
    torch.testing.assert_close(out_a, 4.0 * out_b)


def test_peak_reference_is_per_image_in_a_batch():
    noise = CameraNoise(photons_at="peak", photons=300.0, output="adu")
    x = constant_levels((0.2, 0.6))  # each image is its own peak: both get photons + background e- per pixel
    mean, var = noise_moments(x, noise)
    torch.testing.assert_close(mean[0], mean[1])
    torch.testing.assert_close(var[0], var[1])
    assert mean[0, 0, 0].item() == pytest.approx(310.0 + 100.0)
    got_mean, got_var = sample_moments(apply_noise(x, noise, generator=gen()))
    v = var[0, 0, 0].item()
    assert abs(got_mean[0] - got_mean[1]).item() < 5 * math.sqrt(2 * v / N)
    assert abs(got_var[0] - got_var[1]).item() < 5 * math.sqrt(2 * (2 * v**2 + 310.0) / N)


def test_peak_reference_of_a_dark_image_is_one():
    noise = CameraNoise(photons_at="peak", output="adu")
    mean, _ = noise_moments(torch.zeros(8, 8), noise)
    assert torch.all(mean == 110.0)


# -- reproducibility, dtypes, devices --------------------------------------------------------------------


def test_same_seed_same_output_and_global_rng_untouched():
    x = torch.rand(2, 32, 32, generator=gen(7))
    state = torch.get_rng_state()
    first = apply_noise(x, CameraNoise(), generator=gen(11))
    assert torch.equal(first, apply_noise(x, CameraNoise(), generator=gen(11)))
    assert not torch.equal(first, apply_noise(x, CameraNoise(), generator=gen(12)))
    assert torch.equal(state, torch.get_rng_state())


def test_noise_none_returns_input():
    x = torch.rand(16, 16)
    assert apply_noise(x, None, generator=gen()) is x


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [(torch.float64, torch.float64), (torch.float32, torch.float32), (torch.float16, torch.float32)],
)
def test_dtype_and_shape(dtype, expected):
    x = torch.rand(2, 3, 16, 24, generator=gen()).to(dtype)
    y = apply_noise(x, CameraNoise(), generator=gen())
    assert y.shape == x.shape and y.dtype == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    x = constant_levels((0.5,), dtype=torch.float32).cuda()
    y = apply_noise(x, CameraNoise(), generator=gen(0, "cuda"))
    assert y.device == x.device and y.dtype == torch.float32
    assert torch.equal(y, apply_noise(x, CameraNoise(), generator=gen(0, "cuda")))
    _, var = noise_moments(x, CameraNoise())
    assert abs(y.mean() - 0.5).item() < 5 * math.sqrt(var[0, 0, 0].item() / N)
    with pytest.raises(ValueError, match="generator: expected one on the image's device"):
        apply_noise(x, CameraNoise(), generator=gen())


# -- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-0.1, "image: expected finite, non-negative intensities; got min -0.1"),
        (float("nan"), "image: expected finite, non-negative intensities; got 1 NaN or Inf values"),
        (float("inf"), "image: expected finite, non-negative intensities; got 1 NaN or Inf values"),
    ],
)
def test_bad_image_values(value, message):
    x = torch.ones(8, 8)
    x[3, 4] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        apply_noise(x, CameraNoise(), generator=gen())
    with pytest.raises(ValueError, match=re.escape(message)):
        noise_moments(x, CameraNoise())


def test_bad_image_shape_and_type():
    with pytest.raises(
        ValueError, match=re.escape("image: expected a non-empty tensor of shape (..., H, W), got shape (5,)")
    ):
        apply_noise(torch.ones(5), CameraNoise())
    with pytest.raises(TypeError, match=re.escape("image: expected a torch.Tensor (..., H, W), got list")):
        apply_noise([[1.0]], CameraNoise())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"photons": 0}, "photons: expected a finite number > 0 (e-), got 0"),
        ({"photons": -5.0}, "photons: expected a finite number > 0 (e-), got -5.0"),
        ({"photons": float("inf")}, "photons: expected a finite number > 0 (e-), got inf"),
        ({"photons": "500"}, "photons: expected a finite number > 0 (e-), got '500'"),
        ({"photons_at": "max"}, "photons_at: expected one of ('unit', 'peak'), got 'max'"),
        ({"background": -1.0}, "background: expected a finite number >= 0 (e- per pixel), got -1.0"),
        ({"read_noise": -1.0}, "read_noise: expected a finite number >= 0 (e- RMS), got -1.0"),
        ({"gain": 0.0}, "gain: expected a finite number > 0 (ADU per e-), got 0.0"),
        ({"bit_depth": 0}, "bit_depth: expected an integer in 1..32 (ADC bits), got 0"),
        ({"bit_depth": 33}, "bit_depth: expected an integer in 1..32 (ADC bits), got 33"),
        ({"bit_depth": 12.0}, "bit_depth: expected an integer in 1..32 (ADC bits), got 12.0"),
        ({"bit_depth": 6}, "offset: expected an offset below the ADC maximum 2**6 - 1 = 63 ADU, got 100"),
        ({"full_well": 0.0}, "full_well: expected a finite number > 0 (e-), got 0.0"),
        ({"output": "counts"}, "output: expected one of ('intensity', 'adu'), got 'counts'"),
    ],
)
def test_invalid_fields(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        CameraNoise(**changes)
    with pytest.raises(ValueError, match=re.escape(message)):
        CameraNoise().replace(**changes)


def test_config_round_trip_and_unknown_keys():
    noise = CameraNoise(photons=250, photons_at="peak", full_well=2e4, bit_depth=12, output="adu")
    d = noise.to_dict()
    assert d["photons"] == 250.0 and isinstance(d["photons"], float)
    assert CameraNoise.from_dict(d) == noise
    assert CameraNoise.from_dict({}) == CameraNoise()
    with pytest.raises(
        ValueError, match=re.escape("unknown key 'photon' in camera noise settings (did you mean 'photons'?)")
    ):
        CameraNoise.from_dict({**d, "photon": 3.0})
    with pytest.raises(
        ValueError, match=re.escape("unknown key 'zzz' in camera noise settings; allowed keys: photons,")
    ):
        CameraNoise.from_dict({"zzz": 1})
    with pytest.raises(
        ValueError, match=re.escape("unknown key 'readnoise' in camera noise settings (did you mean 'read_noise'?)")
    ):
        noise.replace(readnoise=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        noise.photons = 1.0


# -- parse_noise -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["off", "none", "false", " OFF ", "None"])
def test_parse_noise_off(text):
    assert parse_noise(text) is None


@pytest.mark.parametrize("text", ["on", "default", "Default"])
def test_parse_noise_on(text):
    assert parse_noise(text) == CameraNoise()


def test_parse_noise_overrides():
    noise = parse_noise("photons=500,read_noise=3,photons_at=peak")
    assert noise == CameraNoise(photons=500.0, read_noise=3.0, photons_at="peak")
    noise = parse_noise(" bit_depth = 12 , full_well=3e4, output=adu, gain=0.5 ")
    assert noise == CameraNoise(bit_depth=12, full_well=3e4, output="adu", gain=0.5)
    assert parse_noise("full_well=30000,full_well=none").full_well is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("photns=500", "unknown key 'photns' in noise 'photns=500' (did you mean 'photons'?)"),
        ("photons=abc", "photons: expected a number, got 'abc'"),
        ("bit_depth=12.5", "bit_depth: expected an integer, got '12.5'"),
        ("photons=-1", "photons: expected a finite number > 0 (e-), got -1.0"),
        ("photons_at=top", "photons_at: expected one of ('unit', 'peak'), got 'top'"),
        ("photons", "noise 'photons': expected 'off', 'on' or key=value pairs separated by commas, got 'photons'"),
        ("", "noise '': expected 'off', 'on' or key=value pairs"),
    ],
)
def test_parse_noise_errors(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_noise(text)
