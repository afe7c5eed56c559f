"""Lens model: presets, TOML round trips, the field model's polynomial forms, units, conventions, errors."""

import copy
import re

import numpy as np
import pytest
import tomli_w

from optisim.field import pixel_to_field
from optisim.lens import (
    FieldModel,
    FieldTerm,
    Lens,
    LensFileError,
    list_presets,
    load_lens,
    load_preset,
    wavefront_rms,
)
from optisim.psf import check_pixel_sampling

PRESETS = list_presets()


def default_dict() -> dict:
    return copy.deepcopy(load_preset("default").to_dict())


def from_toml_dict(d: dict) -> Lens:
    return Lens.from_toml(tomli_w.dumps(d))


def random_field(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.2, 1.2, n), rng.uniform(-1.2, 1.2, n)


# -- presets and round trips ------------------------------------------------------------------------------


def test_presets_are_listed():
    assert "default" in PRESETS
    assert len(PRESETS) >= 3
    assert PRESETS == sorted(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_round_trips(name, tmp_path):
    lens = load_preset(name)
    assert lens.name == name
    assert Lens.from_toml(lens.to_toml()) == lens
    assert Lens.from_dict(lens.to_dict()) == lens
    path = lens.save(tmp_path / f"{name}.toml")
    assert path.exists()
    assert load_lens(path) == lens
    assert load_lens(str(path)) == lens
    assert load_lens(f"preset:{name}") == lens
    assert load_lens(name) == lens


@pytest.mark.parametrize("name", PRESETS)
def test_preset_is_nyquist_sampled_and_valid(name):
    lens = load_preset(name)
    check_pixel_sampling(lens)  # raises if the preset's pixel undersamples its PSF
    assert 0 < lens.na < lens.immersion_index
    assert all(0.2 < w < 2.0 for w in lens.wavelengths_um)
    assert lens.weights.sum() == pytest.approx(1.0)


def test_to_toml_states_conventions():
    text = load_preset("relay-2x-0.1").to_toml()
    assert "RMS-normalised" in text
    assert "'noll' convention" in text
    assert "'um_rms'" in text


def test_round_trip_of_a_modified_lens(tmp_path):
    lens = load_preset("oil-100x-1.4").replace(
        name="custom",
        pupil_samples=96,
        aberrations=FieldModel(
            coma=0.1,
            terms=(FieldTerm((5, -1), 0.02, 1, 2), FieldTerm((2, 0), -0.1)),
            unit="um_rms",
            reference_wavelength_um=0.51,
            convention="ansi",
        ),
    )
    assert Lens.from_toml(lens.to_toml()) == lens
    assert load_lens(lens.save(tmp_path / "custom.toml")) == lens
    assert lens.to_dict()["aberrations"]["terms"][0]["mode"] == 17  # ANSI index of (5, -1): (5 * 7 - 1) / 2


def test_camera_pixel_and_magnification():
    lens = load_preset("oil-100x-1.4")
    assert lens.pixel_size_um is None
    assert lens.pixel_um == pytest.approx(6.5 / 100)
    relay = load_preset("relay-2x-0.1")
    assert relay.pixel_um == pytest.approx(3.45 / 2)


def test_derived_optical_quantities():
    lens = load_preset("default")
    assert lens.airy_radius_um == pytest.approx(0.61 * 0.525 / 0.5, rel=2e-3)
    assert lens.nyquist_pixel_um == pytest.approx(0.525 / 2.0)
    broadband = load_preset("oil-100x-1.4")
    assert broadband.nyquist_pixel_um == pytest.approx(0.5 / (4 * 1.4))  # shortest wavelength


# -- the default preset and the aberrated ones -------------------------------------------------------------


def test_default_preset_defocus_over_the_field():
    lens = load_preset("default")
    ny, nx = lens.sensor_shape
    corners = [(0, 0), (0, nx - 1), (ny - 1, 0), (ny - 1, nx - 1)]
    for row, col in corners:
        hx, hy = pixel_to_field(row, col, lens.sensor_shape)
        waves = lens.zernike_waves(hx, hy, [(2, 0)])
        assert 0.95 <= float(waves[0]) <= 1.05
    hx, hy = pixel_to_field((ny - 1) / 2, (nx - 1) / 2, lens.sensor_shape)
    assert np.all(np.abs(lens.zernike_waves(hx, hy)) < 1e-12)
    # field curvature only
    assert lens.aberrations.modes() == [(2, 0)]


def test_other_presets_have_several_modes():
    rich = [name for name in PRESETS if name != "default" and len(load_preset(name).aberrations.modes()) >= 4]
    assert len(rich) >= 2, rich


def test_oil_preset_reference_wavelength_and_misalignment():
    lens = load_preset("oil-100x-1.4")
    assert lens.reference_wavelength_um == 0.52
    # the constant coma term (Noll 8 = (3, 1)) is present on axis: the lens is not rotationally symmetric
    modes = lens.aberrations.modes()
    on_axis = dict(zip(modes, lens.zernike_waves(0.0, 0.0), strict=True))
    assert on_axis[(3, 1)] == pytest.approx(0.03)
    assert on_axis[(2, -2)] == pytest.approx(0.025)
    assert on_axis[(4, 0)] == pytest.approx(0.06)


# -- field model forms ----------------------------------------------------------------------------------


def test_astigmatism_form():
    hx, hy = random_field()
    c = FieldModel(astigmatism=0.3).coefficients(hx, hy, [(2, 2), (2, -2)])
    np.testing.assert_allclose(c[:, 0], 0.3 * (hx**2 - hy**2), atol=1e-14)
    np.testing.assert_allclose(c[:, 1], 2 * 0.3 * hx * hy, atol=1e-14)


def test_coma_form():
    hx, hy = random_field(seed=1)
    c = FieldModel(coma=-0.2).coefficients(hx, hy, [(3, 1), (3, -1)])
    np.testing.assert_allclose(c[:, 0], -0.2 * hx, atol=1e-14)
    np.testing.assert_allclose(c[:, 1], -0.2 * hy, atol=1e-14)


def test_distortion_form():
    hx, hy = random_field(seed=2)
    h2 = hx**2 + hy**2
    c = FieldModel(distortion=0.07).coefficients(hx, hy, [(1, 1), (1, -1)])
    np.testing.assert_allclose(c[:, 0], 0.07 * h2 * hx, atol=1e-14)
    np.testing.assert_allclose(c[:, 1], 0.07 * h2 * hy, atol=1e-14)


def test_field_curvature_and_spherical_forms():
    hx, hy = random_field(seed=3)
    c = FieldModel(field_curvature=0.5, spherical=0.11).coefficients(hx, hy, [(2, 0), (4, 0), (3, 1)])
    np.testing.assert_allclose(c[:, 0], 0.5 * (hx**2 + hy**2), atol=1e-14)
    np.testing.assert_allclose(c[:, 1], 0.11, atol=1e-14)
    np.testing.assert_allclose(c[:, 2], 0.0, atol=0)


def test_extra_terms_add_to_classical_ones():
    hx, hy = random_field(seed=4)
    model = FieldModel(coma=0.1, terms=(FieldTerm((3, 1), 0.04, hx_power=2, hy_power=3), FieldTerm((6, 0), -0.02)))
    assert set(model.modes()) == {(3, 1), (3, -1), (6, 0)}
    c = model.coefficients(hx, hy, [(3, 1), (6, 0)])
    np.testing.assert_allclose(c[:, 0], 0.1 * hx + 0.04 * hx**2 * hy**3, atol=1e-14)
    np.testing.assert_allclose(c[:, 1], -0.02, atol=1e-14)


def test_coefficients_shape_and_default_modes():
    model = load_preset("water-60x-1.2").aberrations
    hx = np.zeros((3, 4))
    c = model.coefficients(hx, 0.5)
    assert c.shape == (3, 4, len(model.modes()))
    assert c.dtype == np.float64


def test_modes_sorted_by_convention():
    model = FieldModel(astigmatism=0.1, coma=0.1, spherical=0.1)
    assert model.modes() == [(2, -2), (2, 2), (3, -1), (3, 1), (4, 0)]  # Noll 5, 6, 7, 8, 11
    ansi = FieldModel(astigmatism=0.1, coma=0.1, spherical=0.1, convention="ansi")
    assert ansi.modes() == [(2, -2), (2, 2), (3, -1), (3, 1), (4, 0)]  # ANSI 3, 5, 7, 8, 12
    mixed = FieldModel(terms=(FieldTerm((2, 0), 1.0), FieldTerm((1, -1), 1.0), FieldTerm((1, 1), 1.0)))
    assert mixed.modes() == [(1, 1), (1, -1), (2, 0)]  # Noll 2, 3, 4
    assert dataclass_replace(mixed, convention="ansi").modes() == [(1, -1), (1, 1), (2, 0)]  # ANSI 1, 2, 4


def dataclass_replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


@pytest.mark.parametrize("alpha", [0.3, 1.0, -2.2])
def test_rotational_symmetry_of_classical_terms(alpha):
    model = FieldModel(astigmatism=0.2, coma=0.15, distortion=0.05, field_curvature=0.3, spherical=0.1)
    modes = [(2, 2), (2, -2), (3, 1), (3, -1), (1, 1), (1, -1), (2, 0), (4, 0)]
    hx, hy = random_field(seed=5)
    ca, sa = np.cos(alpha), np.sin(alpha)
    c0 = model.coefficients(hx, hy, modes)
    c1 = model.coefficients(ca * hx - sa * hy, sa * hx + ca * hy, modes)

    def rotate(pair, angle):
        a, b = pair[:, 0], pair[:, 1]
        return np.stack([np.cos(angle) * a - np.sin(angle) * b, np.sin(angle) * a + np.cos(angle) * b], axis=1)

    np.testing.assert_allclose(c1[:, 0:2], rotate(c0[:, 0:2], 2 * alpha), atol=1e-12)  # astigmatism: 2α
    np.testing.assert_allclose(c1[:, 2:4], rotate(c0[:, 2:4], alpha), atol=1e-12)  # coma: α
    np.testing.assert_allclose(c1[:, 4:6], rotate(c0[:, 4:6], alpha), atol=1e-12)  # distortion: α
    np.testing.assert_allclose(c1[:, 6:8], c0[:, 6:8], atol=1e-12)  # defocus, spherical: invariant


# -- units and conventions -------------------------------------------------------------------------------


def test_units_convert_with_reference_wavelength():
    base = load_preset("default")
    in_waves = base.replace(aberrations=FieldModel(astigmatism=0.5, coma=0.2, reference_wavelength_um=0.6))
    in_um = base.replace(aberrations=FieldModel(astigmatism=0.3, coma=0.12, unit="um_rms", reference_wavelength_um=0.6))
    hx, hy = random_field(seed=6)
    np.testing.assert_allclose(in_waves.zernike_um(hx, hy), in_um.zernike_um(hx, hy), atol=1e-14)
    np.testing.assert_allclose(in_waves.zernike_waves(hx, hy), in_um.zernike_waves(hx, hy), atol=1e-14)
    np.testing.assert_allclose(in_um.zernike_waves(hx, hy), in_um.zernike_um(hx, hy) / 0.6, atol=1e-14)
    assert in_waves.zernike_waves(1.0, 0.0, [(3, 1)])[0] == pytest.approx(0.2)
    assert in_um.zernike_um(1.0, 0.0, [(3, 1)])[0] == pytest.approx(0.12)


def test_relay_preset_is_in_um():
    relay = load_preset("relay-2x-0.1")
    assert relay.aberrations.unit == "um_rms"
    # spherical 0.04 µm RMS at the 0.8 µm reference is 0.05 waves
    assert relay.zernike_waves(0.0, 0.0, [(4, 0)])[0] == pytest.approx(0.05)
    assert relay.zernike_um(0.0, 0.0, [(4, 0)])[0] == pytest.approx(0.04)


def test_reference_wavelength_defaults_to_weighted_mean():
    lens = load_preset("oil-100x-1.4").replace(aberrations=FieldModel(coma=0.1))
    assert lens.reference_wavelength_um == pytest.approx(0.3 * 0.5 + 0.45 * 0.52 + 0.25 * 0.55)
    d = default_dict()
    del d["aberrations"]["reference_wavelength_um"]
    d["optics"]["wavelength_um"] = 0.6
    assert Lens.from_dict(d).reference_wavelength_um == pytest.approx(0.6)


def lens_with_terms(convention, terms):
    d = default_dict()
    d["aberrations"] = {"convention": convention, "unit": "waves_rms", "terms": terms}
    return Lens.from_dict(d)


def test_ansi_and_noll_indices_in_files():
    ansi = lens_with_terms("ansi", [{"mode": 4, "coefficient": 0.1}, {"mode": 3, "coefficient": 0.2}])
    noll = lens_with_terms("noll", [{"mode": 4, "coefficient": 0.1}, {"mode": 3, "coefficient": 0.2}])
    assert {t.mode: t.coefficient for t in ansi.aberrations.terms} == {(2, 0): 0.1, (2, -2): 0.2}
    assert {t.mode: t.coefficient for t in noll.aberrations.terms} == {(2, 0): 0.1, (1, -1): 0.2}
    assert ansi.zernike_waves(0.3, 0.4, [(2, -2)])[0] == pytest.approx(0.2)
    assert noll.zernike_waves(0.3, 0.4, [(2, -2)])[0] == 0.0
    # the file's convention survives a round trip and the indices are written in it
    assert Lens.from_toml(ansi.to_toml()) == ansi
    assert [t["mode"] for t in ansi.to_dict()["aberrations"]["terms"]] == [4, 3]
    assert [t["name"] for t in ansi.to_dict()["aberrations"]["terms"]] == ["defocus", "oblique astigmatism"]


def test_named_term_matching_its_mode_is_accepted():
    lens = lens_with_terms("ansi", [{"mode": 3, "name": "oblique astigmatism", "coefficient": 0.2}])
    assert lens.aberrations.terms[0].mode == (2, -2)


def test_name_disagreeing_with_mode_is_rejected():
    # Noll 3 is tilt y; a file written in ANSI numbering but labelled Noll gives itself away by its name
    with pytest.raises(LensFileError, match=re.escape("(check the index convention)")) as err:
        lens_with_terms("noll", [{"mode": 3, "name": "oblique astigmatism", "coefficient": 0.2}])
    assert "mode 3 in the noll convention is 'tilt y', not 'oblique astigmatism'" in str(err.value)
    assert "aberrations.terms[0].name" in str(err.value)


# -- validation messages ---------------------------------------------------------------------------------


def test_lens_file_error_is_value_error():
    assert issubclass(LensFileError, ValueError)


def check_error(mutate, match, *, via_toml=True):
    d = default_dict()
    mutate(d)
    with pytest.raises(LensFileError, match=match):
        if via_toml:
            from_toml_dict(d)
        else:
            Lens.from_dict(d)


def test_unknown_key_names_key_and_suggests():
    def mutate(d):
        d["optics"]["wavelenght_um"] = d["optics"].pop("wavelength_um")

    check_error(mutate, re.escape("unknown key 'optics.wavelenght_um' in lens file (did you mean 'wavelength_um'?)"))


def test_unknown_top_level_key():
    def typo(d):
        d["abberations"] = d.pop("aberrations")

    check_error(typo, re.escape("unknown key 'abberations' in lens file (did you mean 'aberrations'?)"))

    def unrelated(d):
        d["colour"] = "red"

    check_error(unrelated, re.escape("unknown key 'colour' in lens file; allowed keys: format, format_version"))


def test_unknown_key_in_term_and_sensor():
    def term(d):
        d["aberrations"]["terms"] = [{"mode": 4, "coefficent": 0.1}]

    check_error(term, re.escape("unknown key 'aberrations.terms[0].coefficent'"))

    def sensor(d):
        d["sensor"]["pixel_um"] = 0.2

    check_error(sensor, re.escape("unknown key 'sensor.pixel_um'"))


@pytest.mark.parametrize("na", [1.0, 1.2, 0.0, -0.3])
def test_na_out_of_range(na):
    def mutate(d):
        d["optics"]["na"] = na

    check_error(
        mutate,
        re.escape(f"numerical aperture {na} must be positive and smaller than the immersion index 1.0"),
    )


def test_immersion_index_below_one():
    def mutate(d):
        d["optics"]["immersion_index"] = 0.9

    check_error(mutate, re.escape("'optics.immersion_index': expected a refractive index >= 1, got 0.9"))


@pytest.mark.parametrize("wl", [0.0, -0.5])
def test_non_positive_wavelength(wl):
    def mutate(d):
        d["optics"]["wavelength_um"] = wl

    check_error(mutate, re.escape(f"'optics.wavelength_um': expected positive wavelengths in µm, got {wl}"))


def test_wavelength_in_nm():
    def mutate(d):
        d["optics"]["wavelength_um"] = 525

    check_error(mutate, re.escape("525.0 µm is not an optical wavelength; give µm, e.g. 0.525 for 525 nm"))


@pytest.mark.parametrize(("key", "value"), [("pixel_size_um", 0.0), ("pixel_size_um", -0.1)])
def test_non_positive_pixel_size(key, value):
    def mutate(d):
        d["sensor"][key] = value

    check_error(mutate, re.escape(f"'sensor.{key}': expected a positive pixel size in µm, got {value}"))


def test_non_positive_camera_pixel_and_magnification():
    def camera(d):
        d["sensor"] = {"shape": [64, 64], "camera_pixel_um": -6.5, "magnification": 60.0}

    check_error(camera, re.escape("'sensor.camera_pixel_um': expected a positive pixel size in µm, got -6.5"))

    def magnification(d):
        d["sensor"] = {"shape": [64, 64], "camera_pixel_um": 6.5, "magnification": 0.0}

    check_error(magnification, re.escape("'sensor.magnification': expected a positive magnification, got 0.0"))


def test_both_pixel_sizes():
    def mutate(d):
        d["sensor"].update(camera_pixel_um=6.5, magnification=20.0)

    check_error(
        mutate,
        re.escape("give either pixel_size_um (object space) or camera_pixel_um and magnification, not both"),
    )


@pytest.mark.parametrize("keep", [(), ("camera_pixel_um",), ("magnification",)])
def test_missing_pixel_size(keep):
    def mutate(d):
        del d["sensor"]["pixel_size_um"]
        for key in keep:
            d["sensor"][key] = 6.5

    check_error(mutate, re.escape("'sensor': missing pixel size"))


def test_wrong_number_of_weights():
    def mutate(d):
        d["optics"]["wavelength_weights"] = [0.5, 0.5]

    check_error(mutate, re.escape("'optics.wavelength_weights': expected 1 weights (one per wavelength), got 2"))

    def negative(d):
        d["optics"]["wavelength_um"] = [0.5, 0.6]
        d["optics"]["wavelength_weights"] = [1.0, -0.5]

    check_error(negative, re.escape("expected non-negative weights with a positive sum, got [1.0, -0.5]"))


def test_gaussian_apodisation_needs_sigma():
    def mutate(d):
        d["optics"]["apodisation"] = "gaussian"

    check_error(mutate, re.escape("gaussian apodisation needs a positive width in pupil radii, got None"))

    def sigma_without_gaussian(d):
        d["optics"]["apodisation_sigma"] = 0.5

    check_error(
        sigma_without_gaussian,
        re.escape("'optics.apodisation_sigma' is only used with apodisation = 'gaussian'"),
    )

    def unknown(d):
        d["optics"]["apodisation"] = "hann"

    check_error(
        unknown,
        re.escape("'optics.apodisation': expected one of ('none', 'aplanatic', 'gaussian'), got 'hann'"),
    )


def test_invalid_toml():
    with pytest.raises(LensFileError, match=re.escape("lens file: not valid TOML")):
        Lens.from_toml("[optics\nna = 0.5\n")
    with pytest.raises(LensFileError, match=re.escape("my.toml: not valid TOML")):
        Lens.from_toml("na = = 1", source="my.toml")


@pytest.mark.parametrize(
    ("table", "key", "value"),
    [
        ("optics", "na", "0.5"),
        ("optics", "wavelength_um", "525 nm"),
        ("sensor", "pixel_size_um", True),
        ("optics", "immersion_index", [1.0]),
    ],
)
def test_wrong_type_names_key(table, key, value):
    def mutate(d):
        d[table][key] = value

    check_error(mutate, re.escape(f"'{table}.{key}': expected a number, got {value!r}"))


def test_wrong_integer_types():
    def shape(d):
        d["sensor"]["shape"] = [512.0, 512]

    check_error(shape, re.escape("'sensor.shape': expected an integer, got 512.0"))

    def samples(d):
        d["pupil"]["samples"] = 64.0

    check_error(samples, re.escape("'pupil.samples': expected an integer, got 64.0"))

    def short_shape(d):
        d["sensor"]["shape"] = [512]

    check_error(short_shape, re.escape("'sensor.shape': expected [ny, nx], got [512]"))

    def few_samples(d):
        d["pupil"]["samples"] = 8

    check_error(few_samples, re.escape("'pupil.samples': expected an integer >= 16, got 8"))


def test_missing_tables_and_keys():
    def no_optics(d):
        del d["optics"]

    check_error(no_optics, re.escape("table [optics] is missing from the lens file"))

    def no_na(d):
        del d["optics"]["na"]

    check_error(no_na, re.escape("'optics.na' is missing"))

    def no_coefficient(d):
        d["aberrations"]["terms"] = [{"mode": 4}]

    check_error(no_coefficient, re.escape("'aberrations.terms[0].coefficient' is missing"))


def test_format_header_checked():
    def fmt(d):
        d["format"] = "zemax"

    check_error(fmt, re.escape("'format': expected 'optisim-lens', got 'zemax'"))

    def version(d):
        d["format_version"] = 2

    check_error(version, re.escape("'format_version': this optisim reads version 1, got 2"))


def test_bad_aberration_entries():
    def unit(d):
        d["aberrations"]["unit"] = "nm_rms"

    check_error(
        unit,
        re.escape("'aberrations.unit': expected one of ('waves_rms', 'um_rms'), got 'nm_rms'"),
        via_toml=False,
    )

    def convention(d):
        d["aberrations"]["convention"] = "fringe"

    check_error(convention, re.escape("'aberrations.convention': Zernike index convention"))

    def noll_zero(d):
        d["aberrations"]["terms"] = [{"mode": 0, "coefficient": 0.1}]

    check_error(noll_zero, re.escape("'aberrations.terms[0].mode': Noll index j must be >= 1"))

    def power(d):
        d["aberrations"]["terms"] = [{"mode": 4, "coefficient": 0.1, "hx_power": -1}]

    check_error(power, re.escape("hx_power and hy_power must be >= 0, got [-1, 0]"))

    def coefficient(d):
        d["aberrations"]["coma"] = "0.1"

    check_error(coefficient, re.escape("'aberrations.coma': expected a number, got '0.1'"))


def test_field_term_validates():
    with pytest.raises(ValueError, match=re.escape("field term powers must be >= 0")):
        FieldTerm((2, 0), 0.1, hx_power=-1)
    with pytest.raises(ValueError, match=re.escape("n - |m| must be even")):
        FieldTerm((2, 1), 0.1)
    with pytest.raises(LensFileError, match=re.escape("'aberrations.reference_wavelength_um': expected a positive")):
        FieldModel(reference_wavelength_um=0.0)


def test_load_lens_errors(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(FileNotFoundError, match=re.escape(f"lens file not found: {missing}")):
        load_lens(missing)
    with pytest.raises(LensFileError, match="is a directory, not a lens file"):
        load_lens(tmp_path)
    bad = tmp_path / "bad.toml"
    d = default_dict()
    d["optics"]["na"] = 2.0
    bad.write_text(tomli_w.dumps(d), encoding="utf-8")
    with pytest.raises(LensFileError, match=re.escape(f"{bad}: 'optics.na': numerical aperture 2.0")):
        load_lens(bad)
    with pytest.raises(ValueError, match=re.escape("unknown lens preset 'nope'; available presets: default")):
        load_lens("preset:nope")


# -- wavefront_rms -----------------------------------------------------------------------------------------


def test_wavefront_rms_excludes_piston_and_tilt():
    modes = [(0, 0), (1, 1), (1, -1), (2, 0), (3, 1)]
    c = np.array([[5.0, 1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(wavefront_rms(c, modes), [5.0, 0.0])
    np.testing.assert_array_equal(wavefront_rms(np.ones((3, 2)), [(1, 1), (1, -1)]), np.zeros(3))
