"""Bead-image physics (optisim.beads): point-source limit, shifts, exact defocus, the sphere's transfer function,
energy (Parseval), z-stacks, pupil parameters, gradients, rendered and simulated bead images, and errors."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from optisim.beads import BeadModel, defocus_zernike_um, render_beads, simulate_bead_image, sphere_transfer
from optisim.lens import FieldModel, load_preset
from optisim.psf import PSFModel

F64 = torch.float64
LAM, NA = 0.525, 0.5  # µm, the default preset
MODES = [(2, 0), (2, 2), (3, 1)]
SPHERE_FIRST_ZERO = 4.493409457909064  # first positive root of tan q = q


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def perfect():
    """The default preset (0.525 µm, NA 0.5 in air, 0.25 µm pixels) without aberrations."""
    return load_preset("default").replace(aberrations=FieldModel())


@pytest.fixture(scope="module")
def period_lens(perfect):
    """A lens whose 96-pixel window is exactly one alias period of a 32-sample pupil (``N λ / (2 NA)``): there the
    energy normalisation is exact (Parseval), whatever the pupil's phase and amplitude."""
    return perfect.replace(pixel_size_um=32 * LAM / (2 * NA) / 96)


def t64(*values):
    return torch.tensor(values, dtype=F64)


def centroid(image) -> tuple[float, float]:
    """(y, x) centre of mass of a 2D image, pixels."""
    image = np.asarray(image, dtype=float)
    yy, xx = np.indices(image.shape)
    return float((yy * image).sum() / image.sum()), float((xx * image).sum() / image.sum())


# -- shapes, dtypes, the point-source limit -----------------------------------------------------------------------


def test_shapes_and_dtypes(perfect):
    model = BeadModel(perfect, MODES, size=15, planes_um=[-0.5, 0.0, 0.5], bead_diameter_um=0.1)
    image = model(torch.zeros(4, 3))
    assert image.shape == (4, 3, 15, 15)
    assert image.dtype == torch.float32
    assert torch.all(image >= -1e-7)
    image64 = BeadModel(perfect, MODES, size=15, dtype=F64)(torch.zeros(2, 3, dtype=F64))
    assert image64.shape == (2, 1, 15, 15) and image64.dtype == F64
    # the peak sits on the window's centre pixel
    assert int(image64[0, 0].argmax()) == 7 * 15 + 7


def test_point_source_equals_psf_model(perfect):
    model = BeadModel(perfect, MODES, size=21, oversample=2, dtype=F64)
    c = torch.tensor([[0.05, 0.03, -0.04], [0.0, 0.0, 0.0], [-0.1, 0.02, 0.06]], dtype=F64)
    psf = PSFModel(perfect.replace(pupil_samples=model.pupil_samples), MODES, size=21, oversample=2, dtype=F64)
    expected = psf(c, normalize="energy")
    got = model(c)
    assert got.shape == (3, 1, 21, 21)
    torch.testing.assert_close(got[:, 0], expected, rtol=0, atol=1e-12 * float(expected.max()))


# -- shifts --------------------------------------------------------------------------------------------------------


def test_whole_pixel_shift_moves_the_image(perfect):
    model = BeadModel(perfect, MODES, size=21, dtype=F64)
    c = torch.tensor([[0.04, -0.03, 0.05]], dtype=F64)
    base = model(c)[0, 0]
    shifted = model(c, shift_px=torch.tensor([[1.0, -2.0]], dtype=F64))[0, 0]
    # (Δy, Δx) = (1, -2): one row down, two columns left
    torch.testing.assert_close(shifted[1:, :-2], base[:-1, 2:], rtol=0, atol=1e-12 * float(base.max()))
    assert not torch.allclose(shifted, base)


def test_half_pixel_shift_moves_the_centroid(perfect):
    model = BeadModel(perfect, [(2, 0)], size=41, bead_diameter_um=0.1, dtype=F64)
    c = torch.zeros(1, 1, dtype=F64)
    y0, x0 = centroid(model(c)[0, 0])
    y1, x1 = centroid(model(c, shift_px=t64([0.5, 0.0]))[0, 0])
    y2, x2 = centroid(model(c, shift_px=t64([0.0, -0.5]))[0, 0])
    assert y1 - y0 == pytest.approx(0.5, abs=0.02) and x1 - x0 == pytest.approx(0.0, abs=1e-9)
    assert x2 - x0 == pytest.approx(-0.5, abs=0.02) and y2 - y0 == pytest.approx(0.0, abs=1e-9)


# -- defocus ---------------------------------------------------------------------------------------------------------


def test_exact_defocus_equals_its_zernike_expansion(perfect):
    modes = [(2, 0), (4, 0), (6, 0)]
    model = BeadModel(perfect, modes, size=21, dtype=F64)
    z = 0.3
    exact = model(torch.zeros(1, 3, dtype=F64), z_um=t64(z))
    coeffs = defocus_zernike_um(z, modes, na=NA, immersion_index=1.0, n_samples=model.pupil_samples)
    assert coeffs.shape == (3,)
    expanded = model(torch.as_tensor(coeffs[None]))
    assert float((exact - expanded).norm() / expanded.norm()) < 1e-6
    # and defocus does change the image
    assert float((exact - model(torch.zeros(1, 3, dtype=F64))).norm() / exact.norm()) > 1e-2


def test_defocus_zernike_paraxial_limit():
    z = 1.0
    low = defocus_zernike_um(z, [(2, 0)], na=0.5, immersion_index=1.0)[0]
    assert low == pytest.approx(z * 0.5**2 / (4 * math.sqrt(3) * 1.0), rel=0.1)
    high = defocus_zernike_um(z, [(2, 0)], na=1.3, immersion_index=1.33)[0]
    paraxial = z * 1.3**2 / (4 * math.sqrt(3) * 1.33)
    assert abs(high / paraxial - 1) > 0.1
    # linear in z, with a batch shape; only m = 0 modes are non-zero
    c = defocus_zernike_um(np.array([[-1.0], [2.0]]), [(2, 0), (2, 2), (4, 0)], na=0.5, immersion_index=1.0)
    assert c.shape == (2, 1, 3) and c.dtype == np.float64
    np.testing.assert_allclose(c[1, 0], -2 * c[0, 0], rtol=1e-12)
    assert abs(c[0, 0, 1]) < 1e-12 < abs(c[0, 0, 2])


def test_positive_z_bends_the_wavefront_as_positive_defocus(perfect):
    z = 0.5
    c4 = defocus_zernike_um(z, [(2, 0)], na=NA, immersion_index=1.0)[0]
    astig = BeadModel(perfect, [(2, 0), (2, 2)], size=21, dtype=F64)
    exact = astig(t64([0.0, 0.05]), z_um=t64(z))
    plus, minus = astig(t64([c4, 0.05])), astig(t64([-c4, 0.05]))
    assert float((exact - plus).norm()) < 0.1 * float((exact - minus).norm())


# -- the sphere's transfer function ----------------------------------------------------------------------------------


def test_sphere_transfer():
    d = 0.2
    f = np.linspace(0.0, 12.0, 241)
    t = sphere_transfer(f, d)
    assert t[0] == 1.0
    assert np.all(np.diff(t[f * math.pi * d < SPHERE_FIRST_ZERO]) < 0)  # monotone down to its first zero
    torch.testing.assert_close(sphere_transfer(torch.as_tensor(f), d), torch.as_tensor(t), rtol=1e-12, atol=1e-14)
    f0 = SPHERE_FIRST_ZERO / (math.pi * d)
    assert abs(sphere_transfer(np.array([f0]), d)[0]) < 1e-12
    assert sphere_transfer(np.array([0.99 * f0]), d)[0] > 0 > sphere_transfer(np.array([1.01 * f0]), d)[0]
    # the small-q branch joins the exact formula
    q = np.array([0.0099, 0.0101]) / (math.pi * d)
    np.testing.assert_allclose(sphere_transfer(q, d), [1 - 0.0099**2 / 10, 1 - 0.0101**2 / 10], rtol=1e-9)
    np.testing.assert_array_equal(sphere_transfer(f, 0.0), np.ones_like(f))
    assert torch.equal(sphere_transfer(torch.as_tensor(f), 0.0), torch.ones(len(f), dtype=F64))
    # symmetric in f
    np.testing.assert_array_equal(sphere_transfer(-f, d), t)


# -- energy ----------------------------------------------------------------------------------------------------------


def test_energy_is_one_over_an_alias_period_and_bead_size_keeps_it(period_lens):
    kw = {"size": 96, "oversample": 2, "pupil_samples": 32, "dtype": F64}
    point = BeadModel(period_lens, MODES, bead_diameter_um=0.0, **kw)
    bead = BeadModel(period_lens, MODES, bead_diameter_um=0.2, **kw)
    c = torch.tensor([[0.0, 0.0, 0.0], [0.08, -0.05, 0.04]], dtype=F64)
    s, z = torch.tensor([[0.3, -0.2], [0.0, 0.4]], dtype=F64), t64(0.0, 0.3)
    a, b = point(c, shift_px=s, z_um=z), bead(c, shift_px=s, z_um=z)
    torch.testing.assert_close(a.sum(dim=(-2, -1)), torch.ones(2, 1, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(b.sum(dim=(-2, -1)), a.sum(dim=(-2, -1)), rtol=0, atol=1e-6)
    assert torch.all(b.amax(dim=(-2, -1)) < a.amax(dim=(-2, -1)))  # the bead blurs: a lower peak
    bigger = BeadModel(period_lens, MODES, bead_diameter_um=0.5, **kw)(c, shift_px=s, z_um=z)
    assert torch.all(bigger.amax(dim=(-2, -1)) < b.amax(dim=(-2, -1)))


def test_energy_in_a_finite_window(perfect):
    """In a large (not period) window the point and the bead images hold the same energy, a little below 1."""
    c = torch.zeros(1, 1, dtype=F64)
    a = BeadModel(perfect, [(2, 0)], size=63, dtype=F64)(c).sum()
    b = BeadModel(perfect, [(2, 0)], size=63, bead_diameter_um=0.2, dtype=F64)(c).sum()
    assert float(b) == pytest.approx(float(a), abs=1e-6)
    assert 0.97 < float(a) < 1.0


# -- z-stacks --------------------------------------------------------------------------------------------------------


def test_z_stack_focus_and_symmetry(perfect):
    planes = [-1.0, -0.5, 0.0, 0.5, 1.0]
    model = BeadModel(perfect, [(2, 0)], size=25, planes_um=planes, bead_diameter_um=0.1, dtype=F64)
    image = model(torch.zeros(2, 1, dtype=F64), z_um=t64(0.0, 0.5))
    assert image.shape == (2, 5, 25, 25)
    peaks = image.amax(dim=(-2, -1))
    assert int(peaks[0].argmax()) == 2  # z = 0: in focus at plane 0
    assert int(peaks[1].argmax()) == 1  # z = 0.5: in focus at plane -0.5 (z + plane = 0)
    energy = image[0].sum(dim=(-2, -1))
    torch.testing.assert_close(energy[0], energy[4], rtol=1e-10, atol=0)
    torch.testing.assert_close(energy[1], energy[3], rtol=1e-10, atol=0)
    torch.testing.assert_close(image[0, 1], image[0, 3], rtol=0, atol=1e-10 * float(peaks.max()))
    assert peaks[0, 0] < peaks[0, 1] < peaks[0, 2]


def test_axial_scale_scales_the_planes(perfect):
    planes = np.array([-0.5, 0.0, 0.4])
    kw = {"size": 17, "pupil_samples": 64, "bead_diameter_um": 0.1, "dtype": F64}
    model = BeadModel(perfect, MODES, planes_um=planes, **kw)
    double = BeadModel(perfect, MODES, planes_um=2 * planes, **kw)
    c = torch.tensor([[0.02, 0.03, -0.01], [0.0, -0.02, 0.03]], dtype=F64)
    z = t64(0.1, -0.3)
    torch.testing.assert_close(model(c, z_um=z, axial_scale=t64(2.0, 2.0)), double(c, z_um=z), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(model(c, z_um=z, axial_scale=t64(1.0, 1.0)), model(c, z_um=z), rtol=1e-12, atol=0)
    mixed = model(c, z_um=z, axial_scale=t64(2.0, 1.0))
    torch.testing.assert_close(mixed[0], double(c, z_um=z)[0], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(mixed[1], model(c, z_um=z)[1], rtol=1e-10, atol=1e-14)


# -- pupil parameters: fall-off and NA -------------------------------------------------------------------------------


def test_falloff_lowers_the_peak_and_keeps_the_energy(perfect, period_lens):
    kw = {"size": 96, "oversample": 2, "pupil_samples": 32, "dtype": F64}
    model = BeadModel(period_lens, [(2, 0)], **kw)
    c = torch.zeros(2, 1, dtype=F64)
    none, zero, some = model(c), model(c, falloff=t64(0.0, 0.0)), model(c, falloff=t64(1.0, 2.0))
    torch.testing.assert_close(zero, none, rtol=0, atol=1e-15)
    torch.testing.assert_close(some.sum(dim=(-2, -1)), none.sum(dim=(-2, -1)), rtol=0, atol=1e-12)
    assert some[0].max() < none[0].max() and some[1].max() < some[0].max()
    # less high-frequency content: the image's spectrum falls off faster
    spectrum = torch.fft.rfft2(some[:, 0]).abs()
    flat = torch.fft.rfft2(none[:, 0]).abs()
    high = (slice(None), slice(10, 40), slice(10, 40))
    assert float(spectrum[high].sum()) < 0.9 * float(flat[high].sum())
    # a large ordinary window holds nearly the same energy with and without fall-off
    big = BeadModel(perfect, [(2, 0)], size=63, oversample=1, dtype=F64)
    e0, e1 = (float(big(c[:1], falloff=f).sum()) for f in (None, t64(1.0)))
    assert e1 == pytest.approx(e0, abs=1e-2)


def test_na_per_bead_equals_separate_calls(perfect):
    model = BeadModel(perfect, MODES, size=17, bead_diameter_um=0.1, dtype=F64)
    c = torch.tensor([[0.02, 0.03, -0.01], [0.0, -0.02, 0.03]], dtype=F64)
    s = torch.tensor([[0.2, -0.1], [-0.3, 0.4]], dtype=F64)
    z = t64(0.2, -0.1)
    both = model(c, shift_px=s, z_um=z, na=t64(0.4, 0.5))
    first = model(c[:1], shift_px=s[:1], z_um=z[:1], na=0.4)
    second = model(c[1:], shift_px=s[1:], z_um=z[1:], na=0.5)
    torch.testing.assert_close(both, torch.cat([first, second]), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(second, model(c[1:], shift_px=s[1:], z_um=z[1:]), rtol=1e-12, atol=1e-15)
    assert first.amax() < second.amax()  # lower NA: a wider, lower peak


def test_confocal_is_normalised_and_narrower(perfect):
    planes = [-0.5, 0.0, 0.5]
    kw = {"size": 21, "planes_um": planes, "bead_diameter_um": 0.1, "dtype": F64}
    confocal = BeadModel(perfect, [(2, 0)], modality="confocal", **kw)(torch.zeros(1, 1, dtype=F64))
    widefield = BeadModel(perfect, [(2, 0)], **kw)(torch.zeros(1, 1, dtype=F64))
    assert float(confocal[0, 1].sum()) == pytest.approx(1.0, abs=1e-12)
    wide_in_window = widefield[0, 1] / widefield[0, 1].sum()
    assert confocal[0, 1].max() > wide_in_window.max()


# -- gradients -------------------------------------------------------------------------------------------------------


def test_gradcheck_all_inputs(perfect):
    model = BeadModel(perfect, [(2, 0), (2, 2)], size=7, oversample=1, pupil_samples=32, bead_diameter_um=0.1,
                      planes_um=[-0.3, 0.3], dtype=F64)  # fmt: skip
    inputs = (
        torch.tensor([[0.03, -0.02]], dtype=F64, requires_grad=True),
        torch.tensor([[0.2, -0.3]], dtype=F64, requires_grad=True),
        torch.tensor([0.1], dtype=F64, requires_grad=True),
        torch.tensor([0.48], dtype=F64, requires_grad=True),
        torch.tensor([0.5], dtype=F64, requires_grad=True),
        torch.tensor([1.2], dtype=F64, requires_grad=True),
    )

    def f(c, s, z, na, falloff, axial):
        return model(c, shift_px=s, z_um=z, na=na, falloff=falloff, axial_scale=axial)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-4)


# -- rendered and simulated bead images -----------------------------------------------------------------------------


def test_render_beads_positions_and_photons():
    lens = load_preset("default").replace(sensor_shape=(96, 112))
    rows, cols = np.array([30.3, 60.0, 48.7]), np.array([35.6, 70.2, 20.5])
    photons = np.array([1e4, 3e4, 2e4])
    out = render_beads(lens, rows, cols, photons=photons, size=41, oversample=1)
    assert out.shape == (1, 96, 112) and out.dtype == np.float64
    assert out.min() >= -1e-9
    assert out.sum() == pytest.approx(photons.sum(), rel=0.05)
    for r, c, p in zip(rows, cols, photons, strict=True):
        r0, c0 = round(r), round(c)
        crop = out[0, r0 - 9 : r0 + 10, c0 - 9 : c0 + 10]
        y, x = centroid(crop)
        assert (y + r0 - 9, x + c0 - 9) == pytest.approx((r, c), abs=0.05)
        assert crop.sum() == pytest.approx(p, rel=0.1)
    # a z-stack of an aberration-free lens: the bead at z = 0.5 µm is in focus at plane -0.5 µm
    flat = lens.replace(aberrations=FieldModel())
    planes = [-1.0, -0.5, 0.0, 0.5]
    stack = render_beads(flat, rows[:2], cols[:2], photons=1e4, planes_um=planes, z_um=[0.5, -0.5], size=21)
    assert stack.shape == (4, 96, 112)
    near = (slice(None), slice(25, 36), slice(30, 41))
    assert int(stack[near].reshape(4, -1).max(axis=1).argmax()) == 1
    near = (slice(None), slice(55, 66), slice(65, 76))
    assert int(stack[near].reshape(4, -1).max(axis=1).argmax()) == 3


def test_render_beads_is_linear_in_photons():
    lens = load_preset("default").replace(sensor_shape=(64, 64))
    a = render_beads(lens, [30.0], [31.4], photons=100.0, size=21)
    b = render_beads(lens, [30.0], [31.4], photons=300.0, size=21)
    np.testing.assert_allclose(b, 3 * a, rtol=1e-12, atol=1e-12)


def test_simulate_bead_image_truth_and_reproducibility():
    lens = load_preset("default").replace(
        sensor_shape=(96, 96), aberrations=FieldModel(field_curvature=0.1, astigmatism=0.05)
    )
    kw = {"photons": (1e4, 3e4), "size": 21, "oversample": 1}
    image, truth = simulate_bead_image(lens, 4, rng=np.random.default_rng(1), **kw)
    assert image.shape == (1, 96, 96) and image.dtype == np.float32
    assert set(truth) == {"rows", "cols", "hx", "hy", "photons", "modes", "zernike_waves"}
    for key in ("rows", "cols", "hx", "hy", "photons"):
        assert truth[key].shape == (4,), key
    assert truth["zernike_waves"].shape == (4, len(truth["modes"]))
    assert truth["modes"] == lens.aberrations.modes()
    margin = 21 // 2 + 2
    assert np.all((truth["rows"] >= margin) & (truth["rows"] <= 95 - margin))
    assert np.all((truth["photons"] >= 1e4) & (truth["photons"] <= 3e4))
    d = np.hypot(*(np.subtract.outer(truth[k], truth[k]) for k in ("rows", "cols")))
    assert d[~np.eye(4, dtype=bool)].min() >= 21
    # the beads are where the truth says: the brightest pixel near each
    for r, c in zip(truth["rows"], truth["cols"], strict=True):
        crop = image[0, round(r) - 2 : round(r) + 3, round(c) - 2 : round(c) + 3]
        assert crop.max() > np.median(image) + 50
    again, truth2 = simulate_bead_image(lens, 4, rng=np.random.default_rng(1), **kw)
    np.testing.assert_array_equal(again, image)
    np.testing.assert_array_equal(truth2["rows"], truth["rows"])
    other, truth3 = simulate_bead_image(lens, 4, rng=np.random.default_rng(2), **kw)
    assert not np.array_equal(other, image) and not np.array_equal(truth3["rows"], truth["rows"])
    stack, _ = simulate_bead_image(lens, 2, rng=np.random.default_rng(1), planes_um=[-0.5, 0.0, 0.5], **kw)
    assert stack.shape == (3, 96, 96)


def test_simulate_bead_image_too_many_beads():
    lens = load_preset("default").replace(sensor_shape=(64, 64))
    with pytest.raises(
        ValueError, match=r"n_beads: only \d+ beads fit on a 64x64 sensor 21 pixels apart, asked for 50"
    ):
        simulate_bead_image(lens, 50, rng=np.random.default_rng(0), size=21)


# -- errors ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 2}, "size: expected a window of at least 3 pixels, got 2"),
        ({"size": 9.0}, "size: expected a window of at least 3 pixels, got 9.0"),
        ({"oversample": 0}, "oversample: expected a positive integer, got 0"),
        ({"bead_diameter_um": -0.1}, "bead_diameter_um: expected a diameter >= 0 µm, got -0.1"),
        ({"bead_diameter_um": float("nan")}, "bead_diameter_um: expected a diameter >= 0 µm, got nan"),
        ({"modality": "lightsheet"}, "modality: expected one of ('widefield', 'confocal'), got 'lightsheet'"),
    ],
)
def test_constructor_errors(perfect, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        BeadModel(perfect, MODES, **{"size": 9, **kwargs})


@pytest.mark.parametrize("shape", [(1, 2), (2, 4), (3,)])
def test_wrong_coefficient_shape(perfect, shape):
    model = BeadModel(perfect, MODES, size=9)
    with pytest.raises(ValueError, match=re.escape(f"coefficients_um: expected shape (B, 3), got {shape}")):
        model(torch.zeros(shape))
