"""``optisim demo --quick`` end to end (click's CliRunner, real files): every output, every link of index.html, the
headline numbers of summary.json; the refusal of a non-empty folder; the true-against-fitted field terms."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
import xarray as xr
from click.testing import CliRunner

from calibration.demo import QUICK, _prepare, field_terms, instrument_lens
from optisim.aberrations import FieldModel
from optisim.cli import main
from optisim.lens import load_lens, load_preset

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

OUTPUTS = [
    "index.html", "summary.json", "lens.toml", "lens.txt", "psfs.nc", "psf_grid.png", "dataset.h5", "sharp.tif",
    "blurred.tif", "blur.png", "training.png", "training/cg-unet/best.pt", "training/unet/best.pt",
    "training/cg-unet/metrics.csv", "training/unet/metrics.csv", "evaluation/cg-unet/metrics.json",
    "evaluation/unet/metrics.json", "evaluation/cg-unet/regions.png", "evaluation/unet/regions.png",
    "evaluation/cg-unet/examples.png", "evaluation/unet/examples.png", "instrument/lens.toml", "instrument/beads.tif",
    "instrument/field_terms.png", "instrument/regions.png", "instrument/corner.png", "calibration/report.html",
    "calibration/calibration.json", "calibration/lens.toml", "calibration/model.pt", "calibration/beads.csv",
]  # fmt: skip
SUMMARY_KEYS = {"format", "format_version", "settings", "forward", "training", "evaluation", "instrument", "seconds"}
INSTRUMENT_KEYS = {
    "description", "truth", "beads", "field_degree", "field_terms", "field_term_max_difference_waves",
    "wavefront_error_median_waves", "wavefront_error_max_waves", "bead_fwhm_px", "bead_fwhm_beads", "test_scenes",
    "calibrated_psnr_gain_db",
}  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory, one_torch_thread):
    """One quick demo: (output folder, printed output, summary.json)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    result = CliRunner().invoke(main, ["demo", "--quick", "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return out, result.output, json.loads((out / "summary.json").read_text(encoding="utf-8"))


class _Page(HTMLParser):
    """Links (href, src) of a page, and whether each image sits in a figure with a caption."""

    def __init__(self):
        super().__init__()
        self.links, self.images, self.captions, self._figure = [], [], 0, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[k] for k in ("href", "src") if k in attrs]
        if tag == "figure":
            self._figure = []
        elif tag == "img":
            self.images.append((attrs["src"], self._figure is not None))
        elif tag == "figcaption" and self._figure is not None:
            self.captions += 1

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = None


def test_every_output_exists(demo):
    out, _, _ = demo
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for png in out.rglob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    with xr.open_dataset(out / "psfs.nc") as ds:
        corner = float(ds["wavefront_rms"].isel(field_y=-1, field_x=-1))
    assert 0.95 < corner < 1.05  # the default lens: about 1 wave RMS of defocus at the corners
    assert load_lens(out / "instrument" / "lens.toml") == instrument_lens(load_preset("default"))


def test_index_links_resolve_and_figures_have_captions(demo):
    out, _, _ = demo
    page = _Page()
    page.feed((out / "index.html").read_text(encoding="utf-8"))
    assert page.links and all(not link.startswith(("/", "http")) for link in page.links)
    missing = [link for link in page.links if not (out / link).is_file()]
    assert missing == []
    assert page.images and all(in_figure for _, in_figure in page.images)
    assert page.captions == len(page.images)
    shown = {src for src, _ in page.images}
    drawn = {p.relative_to(out).as_posix() for p in out.rglob("*.png") if p.parts[-2] != "calibration"}
    assert drawn == shown  # every figure of the demo is on the page (the calibration's are in its report)
    assert "calibration/report.html" in page.links and "summary.json" in page.links


def test_summary_numbers(demo):
    _, _, s = demo
    assert SUMMARY_KEYS <= set(s) and INSTRUMENT_KEYS <= set(s["instrument"])
    assert s["settings"]["quick"] is True and s["settings"]["device"] == "cpu"
    assert set(s["training"]) == set(s["evaluation"]) == {"cg-unet", "unet"}
    for name in ("cg-unet", "unet"):
        assert s["training"][name]["epochs"] == QUICK.epochs
        assert {"blurred", "model", "wiener"} <= set(s["evaluation"][name]["methods"])
    cg = s["evaluation"]["cg-unet"]["methods"]
    assert cg["model"]["psnr"] > cg["blurred"]["psnr"]  # the CG U-Net deblurs the held-out crops
    ins = s["instrument"]
    assert ins["field_term_max_difference_waves"] < 0.02  # waves RMS
    true_terms = [t for t in ins["field_terms"] if t["true"] != 0]
    assert len(true_terms) == 7  # defocus hx², hy²; astigmatism hx², hy², hx hy; coma hx, hy
    assert all(abs(t["difference"]) < 0.02 for t in ins["field_terms"])
    assert ins["wavefront_error_median_waves"] < 0.02
    assert ins["beads"]["fitted"] >= 12
    for key in ("blurred", "design", "calibrated"):
        assert ins["test_scenes"][key]["psnr"] > 10
    assert set(s["seconds"]) == {"lens", "forward", "training", "evaluation", "calibration", "report", "total"}


def test_printed_stages_and_summary(demo):
    _, output, s = demo
    for k in range(1, 7):
        assert f"[{k}/6] " in output
    assert "held-out test crops: PSNR blurred" in output and "CG U-Net(3)" in output and "U-Net(3)" in output
    assert "recovered aberrations: field terms within" in output
    assert "calibrated network on the instrument" in output and f"total {s['seconds']['total']:.0f} s" in output


def test_refuses_a_folder_that_is_not_empty(demo):
    out, _, _ = demo
    before = (out / "summary.json").stat().st_mtime_ns
    result = CliRunner().invoke(main, ["demo", "--quick", "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [
        f"Error: {out} is not empty; use --overwrite to rewrite the demo's files in it, or choose another -o"
    ]
    assert (out / "summary.json").stat().st_mtime_ns == before


def test_overwrite_accepts_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "old.txt").write_text("kept")
    assert _prepare(tmp_path, overwrite=True) == tmp_path
    assert (tmp_path / "old.txt").read_text() == "kept"  # other files are left alone
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="a file, not a folder"):
        _prepare(tmp_path / "file", overwrite=True)


def test_field_terms_sum_each_monomial():
    truth = FieldModel(field_curvature=0.5, astigmatism=0.1, coma=0.2, reference_wavelength_um=0.525)
    term = {"hx_power": 2, "hy_power": 0, "coefficient": 0.52, "uncertainty": 0.01}
    fitted = {"wavelength_um": 0.525, "modes": [{"noll": 4, "name": "defocus", "terms": [term]}]}
    rows = {(r["noll"], r["hx_power"], r["hy_power"]): r for r in field_terms(truth, fitted)}
    assert rows[(4, 2, 0)]["true"] == 0.5 and rows[(4, 2, 0)]["difference"] == pytest.approx(0.02)
    assert rows[(4, 0, 2)]["fitted"] == 0.0 and rows[(4, 0, 2)]["difference"] == -0.5
    assert rows[(5, 1, 1)]["true"] == pytest.approx(0.2)  # 2 A hx hy on the sin astigmatism (Noll 5)
    assert rows[(8, 1, 0)]["true"] == 0.2 and rows[(7, 0, 1)]["true"] == 0.2  # coma C hx, C hy
    with pytest.raises(ValueError, match=r"expected waves RMS at the fit's 0\.6 µm"):
        field_terms(truth, {**fitted, "wavelength_um": 0.6})
