"""The calibration report: calibration.report (PNG figures, report.html, input checks)."""

import dataclasses
import html
import re

import numpy as np
import pytest
from PIL import Image

from calibration.report import ReportData, _sample_maps, write_report

SENSOR = (128, 128)
MODES = [(2, 0), (2, 2), (2, -2), (3, 1), (4, 0)]
ALL_FIGURES = ("detections.png", "zernike_maps.png", "fwhm.png", "psf_montage.png", "residuals.png")


def gaussian(shape, sigma, rows=None, cols=None, offset=(0.0, 0.0)):
    """Gaussian spots of width ``sigma`` px: one (h, w) image, or at (rows, cols) on an image of ``shape``."""
    y, x = np.mgrid[: shape[0], : shape[1]].astype(float)
    if rows is None:
        cy, cx = (shape[0] - 1) / 2 + offset[0], (shape[1] - 1) / 2 + offset[1]
        return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))
    return sum(np.exp(-((y - r) ** 2 + (x - c) ** 2) / (2 * sigma**2)) for r, c in zip(rows, cols, strict=True))


def make_data(seed=0, n_candidates=30, n_rejected=6) -> ReportData:
    """Synthetic report inputs: random beads on a 128x128 sensor, smooth field maps, Gaussian PSFs."""
    rng = np.random.default_rng(seed)
    ys, xs = rng.uniform(5, 122, n_candidates), rng.uniform(5, 122, n_candidates)
    status = ["rejected"] * n_rejected + ["kept"] * (n_candidates - n_rejected)
    kept = np.flatnonzero(np.array(status) == "kept")
    holdout = np.zeros(len(kept), bool)
    holdout[::5] = True
    beads = []
    for i in range(n_candidates):
        k = int(np.searchsorted(kept, i))
        beads.append(
            {
                "index": i,
                "frame": int(rng.integers(0, 5)),
                "y": float(ys[i]),
                "x": float(xs[i]),
                "status": status[i],
                "reason": f"reason-{i}" if status[i] == "rejected" else "",
                "snr": float(rng.uniform(5, 50)),
                "holdout": bool(status[i] == "kept" and holdout[k]),
            }
        )
    image = gaussian(SENSOR, 1.5, ys, xs) * 1000 + rng.normal(100, 5, SENSOR)
    gy, gx = 9, 9
    hy, hx = np.meshgrid(np.linspace(-1, 1, gy), np.linspace(-1, 1, gx), indexing="ij")
    maps = np.stack([0.1 * (hx**2 + hy**2), 0.05 * (hx**2 - hy**2), 0.05 * hx * hy, 0.03 * hx, 0.01 + 0 * hx])
    rows, cols = ys[kept], xs[kept]
    bx, by = (cols - 63.5) / 64, (rows - 63.5) / 64
    coef = np.stack([0.1 * (bx**2 + by**2), 0.05 * (bx**2 - by**2), 0.05 * bx * by, 0.03 * bx, 0.01 + 0 * bx], 1)
    coef = coef + rng.normal(0, 0.005, coef.shape)
    m = 9
    measured = np.stack([gaussian((15, 15), 1.5 + 0.05 * i) for i in range(m)])
    predicted = np.stack([gaussian((15, 15), 1.5, offset=(0.3, 0)) for _ in range(m)])
    k = 12
    return ReportData(
        title="optisim calibration: <beads>.tif & co",
        image=image,
        sensor_shape=SENSOR,
        pixel_um=0.2,
        beads=beads,
        modes=MODES,
        bead_rows=rows,
        bead_cols=cols,
        bead_coefficients=coef,
        bead_uncertainty=np.full_like(coef, 0.005),
        holdout=holdout,
        field_maps=maps,
        measured=measured,
        predicted=predicted,
        montage_positions=np.stack([rows[:m], cols[:m]], axis=1),
        correlation=rng.uniform(0.9, 1.0, len(kept)),
        fwhm_before=rng.uniform(3, 4, k),
        fwhm_after=np.where(np.arange(k) == 3, np.nan, rng.uniform(2, 2.5, k)),
        fwhm_positions=rng.uniform(0, 127, (k, 2)),
        eigen_psfs=None,
        weight_maps=None,
        summary={"beads": {"detected": 30, "kept": 24}, "fit": {"median correlation": 0.9612345, "ok": True}},
        files={"calibrated lens": "lens.toml", "network": "model.pt", "all numbers": "calibration.json"},
    )


def check_png(path, min_side=300):
    assert path.is_file(), path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert min(im.size) >= min_side and max(im.size) <= 4000, im.size


def test_full_report(tmp_path):
    data = make_data()
    out = write_report(tmp_path / "calib", data)
    assert out == tmp_path / "calib" / "report.html"
    text = out.read_text(encoding="utf-8")
    for name in ALL_FIGURES:
        check_png(tmp_path / "calib" / name)
        assert f'<img src="{name}"' in text
    assert not (tmp_path / "calib" / "eigen_psfs.png").exists()
    assert "eigen_psfs.png not drawn" in text
    for label, path in data.files.items():
        assert f'<a href="{path}">' in text and label in text
    assert html.escape(data.title) in text and "<beads>" not in text
    rows = re.findall(r'<tr class="(kept|rejected)">(.*?)</tr>', text)
    assert len(rows) == len(data.beads)
    assert [s for s, _ in rows].count("rejected") == 6
    for bead, (_, row) in zip(data.beads, rows, strict=True):
        assert row.startswith(f"<td>{bead['index']}</td><td>{bead['frame']}</td>")
        assert bead["reason"] in row
    assert "0.9612" in text and "0.9612345" not in text  # floats to 4 significant digits
    assert "<script" not in text and "http" not in text
    assert "median" in text and "→" in text


def test_empirical_variant_skips_figures(tmp_path):
    data = dataclasses.replace(
        make_data(seed=1),
        field_maps=None,
        fwhm_before=None,
        fwhm_after=None,
        fwhm_positions=None,
        eigen_psfs=np.stack([np.ones((11, 11)) / 121, np.outer(np.linspace(-1, 1, 11), np.ones(11))]),
        weight_maps=np.random.default_rng(2).normal(size=(2, 6, 7)),
    )
    (tmp_path / "fwhm.png").write_bytes(b"stale figure of an earlier run")
    text = write_report(tmp_path, data).read_text(encoding="utf-8")
    assert not (tmp_path / "fwhm.png").exists()
    for name in ("detections.png", "zernike_maps.png", "psf_montage.png", "residuals.png", "eigen_psfs.png"):
        check_png(tmp_path / name)
        assert f'<img src="{name}"' in text
    assert not (tmp_path / "fwhm.png").exists()
    assert '<img src="fwhm.png"' not in text and "fwhm.png not drawn: no FWHM validation was given" in text
    assert "No parametric field model" in text


def test_bead_residual_sampling_is_exact_for_a_linear_map():
    rng = np.random.default_rng(3)
    rows, cols = rng.uniform(0, 127, 50), rng.uniform(0, 127, 50)
    gy, gx = np.meshgrid(np.linspace(0, 127, 5), np.linspace(0, 127, 7), indexing="ij")
    maps = np.stack([0.01 * gy - 0.02 * gx, np.full_like(gy, 0.3)])
    np.testing.assert_allclose(
        _sample_maps(maps, rows, cols, SENSOR), np.c_[0.01 * rows - 0.02 * cols, np.full(50, 0.3)]
    )


def test_fwhm_after_simulated_training_alone(tmp_path):
    data = make_data()
    text = write_report(tmp_path, dataclasses.replace(data, fwhm_simulated=data.fwhm_after + 1.0)).read_text()
    check_png(tmp_path / "fwhm.png")
    assert "the simulated training alone" in text
    assert "the simulated training alone" not in write_report(tmp_path, data).read_text()


def test_all_nan_after_fwhm_says_not_available(tmp_path):
    text = write_report(tmp_path, dataclasses.replace(make_data(), fwhm_after=np.full(12, np.nan))).read_text()
    check_png(tmp_path / "fwhm.png")
    assert "→ n/a px" in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bead_coefficients": np.zeros((24, 4))}, r"bead_coefficients: expected shape \(24, 5\).*got \(24, 4\)"),
        ({"bead_uncertainty": np.zeros((23, 5))}, r"bead_uncertainty: expected shape \(24, 5\)"),
        ({"holdout": np.zeros(3, bool)}, r"holdout: expected shape \(24\)"),
        ({"field_maps": np.zeros((4, 9, 9))}, r"field_maps: expected shape \(5, \*, \*\)"),
        ({"predicted": np.zeros((9, 13, 13))}, r"predicted: expected shape \(9, 15, 15\)"),
        ({"montage_positions": np.zeros((8, 2))}, r"montage_positions: expected shape \(9, 2\)"),
        ({"image": np.zeros((2, 3, 4))}, r"image: expected shape \(\*, \*\)"),
        ({"fwhm_after": None}, r"give all three or none, got None for \['fwhm_after'\]"),
        ({"fwhm_positions": np.zeros((12, 3))}, r"fwhm_positions: expected shape \(12, 2\)"),
        ({"fwhm_simulated": np.zeros(11)}, r"fwhm_simulated: expected shape \(12\)"),
        (
            {"fwhm_simulated": np.zeros(12), "fwhm_before": None, "fwhm_after": None, "fwhm_positions": None},
            r"fwhm_simulated: given without",
        ),
        ({"eigen_psfs": np.zeros((2, 5, 5))}, r"eigen_psfs, weight_maps: give both"),
        ({"sensor_shape": (128,)}, r"sensor_shape: expected \(ny, nx\)"),
        ({"pixel_um": -1.0}, r"pixel_um: expected a positive"),
        ({"beads": [{"index": 0, "y": 1, "x": 2, "status": "kept"}]}, r"beads\[0\]: expected keys"),
        ({"summary": [1, 2]}, r"summary: expected a dict, got list"),
    ],
)
def test_wrong_inputs_name_the_field(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        write_report(tmp_path, dataclasses.replace(make_data(), **change))
    assert not (tmp_path / "report.html").exists()
