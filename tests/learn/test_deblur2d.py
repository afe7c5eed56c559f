"""The paper's 2D experiment (Section IV.B, Fig. 4b) at a tiny setting: the library end to end, the files it writes,
parameter counts, reproducibility, the claim line, held-out folder images, one-line errors and the CLI."""

import json
import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from click.testing import CliRunner

from learn.experiments.deblur2d import DEFAULT_MODELS, Deblur2dConfig, make_config, parse_models, run_deblur2d
from learn.experiments.deblur2d_report import check_claim, claim_line, format_deblur2d, save_deblur2d
from learn.models import ModelConfig, build_model
from optisim.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FMD = Path(__file__).resolve().parents[3] / "shared" / "data" / "real" / "sharp_fmd_confocal_bpae"
TINY = {"models": ["unet:3", "cg-unet:3"], "baselines": ("wiener", "rl")}
METHODS = ["U-Net(3)", "CG U-Net(3)", "blurred input", "Wiener (centre PSF)", "Richardson-Lucy (centre PSF)"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_torch_thread):
    """(config, result, paths): two models and two baselines on 32x32 images, 3 steps of 4."""
    root = tmp_path_factory.mktemp("deblur2d")
    config = make_config(quick=True, **TINY)
    result = run_deblur2d(config, workdir=root / "work", progress=False)
    return config, result, save_deblur2d(result, root / "out")


def test_every_method_is_evaluated_on_the_same_test_images(tiny):
    config, result, _ = tiny
    rows = result["results"]
    assert [r["method"] for r in rows] == METHODS
    for r in rows:
        for key in ("psnr", "ssim", "centre_psnr", "edge_psnr", "inference_ms"):
            assert math.isfinite(r[key]), (r["method"], key)
        assert r["images"] == len(r["image_psnr"]) == config.test_samples == result["data"]["test"]
        assert r["psnr"] == pytest.approx(np.mean(r["image_psnr"]))
        assert 0 < r["ssim"] <= 1 and r["inference_ms"] > 0
    models = [r for r in rows if r["kind"] == "model"]
    # the same budget for every model: epochs x steps x batch
    assert {r["steps"] for r in models} == {config.epochs * config.steps_per_epoch}
    assert all(len(r["val_psnr_per_epoch"]) == config.epochs for r in models)
    wiener, rl = rows[3]["settings"], rows[4]["settings"]
    assert wiener["balance"] > 0 and rl["iterations"] == 30


def test_parameter_counts_are_those_of_the_built_models(tiny):
    config, result, _ = tiny
    for r in (r for r in result["results"] if r["kind"] == "model"):
        model = build_model(ModelConfig(name=r["name"], depth=r["depth"], width=config.width))
        assert r["parameters"] == sum(p.numel() for p in model.parameters())
    assert all(r["parameters"] == 0 for r in result["results"] if r["kind"] == "baseline")


def test_files_hold_the_numbers_the_table_and_the_figure(tiny):
    _, result, paths = tiny
    saved = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert saved["results"] == json.loads(json.dumps(result["results"]))
    assert saved["config"]["models"] == [["unet", 3], ["cg-unet", 3]]
    assert Deblur2dConfig.from_dict(saved["config"]) == make_config(quick=True, **TINY)
    machine = saved["machine"]
    for key in ("platform", "cpu_count", "torch", "torch_threads", "device", "date"):
        assert machine[key] not in (None, "")
    assert machine["total_s"] == saved["seconds"] > 0
    table = paths["table"].read_text(encoding="utf-8")
    assert table.count("\n| ") == len(METHODS) + 1  # header and one row per method
    assert "| method | parameters | PSNR (dB) | SSIM | centre PSNR (dB) | edge PSNR (dB) | inference (ms) |" in table
    assert format_deblur2d(result) in table and "not tested (the run needs both cg-unet:3 and unet:6)" in table
    image = matplotlib.image.imread(paths["png"])
    assert paths["png"].stat().st_size > 20_000 and image.shape[0] > 300 and float(image[..., :3].std()) > 0.05


def test_a_model_comes_out_the_same_whatever_else_runs(tiny, tmp_path):
    _, result, _ = tiny
    again = run_deblur2d(make_config(quick=True, models=["cg-unet:3"], baselines=()), workdir=tmp_path, progress=False)
    assert [r["method"] for r in again["results"]] == ["CG U-Net(3)", "blurred input"]
    assert again["results"][0]["image_psnr"] == result["results"][1]["image_psnr"]
    assert again["results"][1]["image_psnr"] == result["results"][2]["image_psnr"]


@pytest.mark.skipif(not FMD.is_dir(), reason="needs ../shared/data/real/sharp_fmd_confocal_bpae")
def test_folder_source_holds_test_images_out(tmp_path):
    config = make_config(quick=True, source=str(FMD), models=["unet:3"], baselines=())
    result = run_deblur2d(config, workdir=tmp_path, progress=False)
    source = result["data"]["source"]
    assert len(source["test_files"]) == 4 and len(source["train_files"]) == 16
    assert not set(source["test_files"]) & set(source["train_files"])
    assert all(math.isfinite(r["psnr"]) for r in result["results"])


def _claim_result(cg_psnrs, unet_psnrs, cg_params=1_000, unet_params=60_000):
    rows = [
        {"kind": "model", "name": "cg-unet", "depth": 3, "parameters": cg_params, "image_psnr": cg_psnrs},
        {"kind": "model", "name": "unet", "depth": 6, "parameters": unet_params, "image_psnr": unet_psnrs},
    ]
    for r in rows:
        r["psnr"] = float(np.mean(r["image_psnr"]))
    return {"results": rows}


def test_claim_compares_cg_unet3_with_unet6():
    claim = check_claim(_claim_result([30.0, 31.0, 32.0], [29.0, 30.5, 31.0]))
    assert claim["holds"] and claim["verdict"] == "holds" and claim["parameter_ratio"] == 60
    assert claim["difference_db"] == pytest.approx(2.5 / 3)
    line = claim_line(claim)
    assert "CG U-Net(3) 31.00 dB vs U-Net(6) 30.17 dB" in line and "60.0x fewer parameters: holds" in line
    assert "+0.83 ± 0.17 dB over 3 test images" in line
    assert claim["difference_se_db"] == pytest.approx(np.std([1, 0.5, 1], ddof=1) / np.sqrt(3))
    lower = check_claim(_claim_result([30.0, 30.0], [31.0, 31.0]))
    assert lower["verdict"] == "does NOT hold" and not lower["holds"]
    assert "does NOT hold in this run" in claim_line(lower)
    few = check_claim(_claim_result([31.0, 31.0], [30.0, 30.0], unet_params=5_000))  # 5x fewer only
    assert few["verdict"] == "does NOT hold" and few["parameter_ratio"] == 5
    noisy = check_claim(_claim_result([30.0, 31.0], [30.5, 30.4]))  # +0.05 ± 0.55 dB
    assert noisy["verdict"] == "within noise" and not noisy["holds"]


def test_options_are_checked():
    assert parse_models(["unet:3", ("cg-unet", 6), "unet:3"]) == (("unet", 3), ("cg-unet", 6))
    assert make_config().models == DEFAULT_MODELS and make_config().size == 64
    assert make_config(scale=4).size == 256 and make_config(scale=4).steps_per_epoch == 480
    assert make_config(scale=0.5).size == 64 and make_config(scale=0.5).steps_per_epoch == 60
    for bad in ("foo:3", "unet:9", "unet", "unet:x"):
        with pytest.raises(ValueError, match=rf"models: expected NAME:DEPTH .* got '{bad}'"):
            parse_models([bad])
    with pytest.raises(ValueError, match="models: expected at least one NAME:DEPTH, got none"):
        make_config(models=[])
    for bad in (0, -1.0, float("nan"), float("inf"), "2"):
        with pytest.raises(ValueError, match=r"scale: expected a positive number, got"):
            make_config(scale=bad)
    with pytest.raises(ValueError, match="scale: --quick fixes a tiny setting"):
        make_config(scale=2, quick=True)
    with pytest.raises(ValueError, match=r"baselines: expected names among wiener, .* got 'blurred', 'foo'"):
        make_config(baselines=("blurred", "foo"))
    with pytest.raises(ValueError, match="epochs: expected an integer >= 1, got 0"):
        make_config(epochs=0)
    with pytest.raises(ValueError, match=r"device: expected a torch device such as 'cpu' .* got 'auto'"):
        make_config(device="auto")
    with pytest.raises(ValueError, match="unknown key 'epoch' in deblur2d config"):
        Deblur2dConfig.from_dict({"epoch": 3})


def test_source_must_be_synthetic_or_a_folder_of_several_images(tmp_path):
    (tmp_path / "one.png").write_bytes(b"")  # counted by its name: the check comes before any image is read
    for source, message in (
        (tmp_path / "missing", r"source: expected 'synthetic' or a folder of images, got '.*missing' \(not a folder\)"),
        (tmp_path, r"source: .* holds 1 image file\(s\); holding test images out of training needs at least 2"),
    ):
        with pytest.raises(ValueError, match=message):
            run_deblur2d(make_config(quick=True, source=str(source)), workdir=tmp_path / "work", progress=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "foo:3"], "Error: models: expected NAME:DEPTH with NAME one of unet, cg-unet"),
        (["--scale", "0"], "Error: scale: expected a positive number, got 0.0"),
        (["--quick", "--scale", "2"], "Error: scale: --quick fixes a tiny setting"),
    ],
)
def test_cli_bad_options_give_one_line_errors(args, message, tmp_path):
    result = CliRunner().invoke(main, ["experiment", "deblur2d", *args, "-o", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert result.output.startswith(message)


def test_cli_quick_run(tmp_path):
    out = tmp_path / "out"
    args = ["experiment", "deblur2d", "--quick", "--models", "unet:3", "--models", "cg-unet:3"]
    result = CliRunner().invoke(main, [*args, "--device", "cpu", "--quiet", "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("data: 12 training, 4 validation and 8 test images of 32x32")
    assert lines[2].startswith("[1/2] U-Net(3): ") and lines[3].startswith("[2/2] CG U-Net(3): ")
    assert "| Richardson-Lucy (PSF field) | 0 |" in result.output
    assert lines[-2].startswith("Paper's claim 'CG U-Net(3) outperforms U-Net(6)") and "not tested" in lines[-2]
    assert {p.name for p in out.iterdir()} == {"results.json", "table.md", "fig4b.png"}
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert saved["config"]["device"] == "cpu" and len(saved["results"]) == 2 + 5
