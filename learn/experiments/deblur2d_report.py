"""Reporting of :mod:`learn.experiments.deblur2d`: the paper's claim tested, the Markdown table, Fig. 4b and the
files (``results.json``, ``table.md``, ``fig4b.png``; formats in that module's docstring)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from learn.experiments.deblur2d import LABELS

__all__ = ["check_claim", "claim_line", "format_deblur2d", "plot_fig4b", "save_deblur2d"]

STYLES = {  # marker, colour, line, marker size, label offset (x, y points) of each family in fig4b.png
    "unet": ("o", "C0", "-", 8, (7, -13)),
    "cg-unet": ("*", "C3", "-", 18, (7, 6)),
    "coordconv-unet": ("s", "C2", "none", 9, (-8, -12)),
    "multiwiener": ("D", "C4", "none", 9, (-8, 8)),
}
BASELINE_STYLES = (("0.1", "-"), ("0.35", "--"), ("0.55", "-."), ("0.7", ":"), ("0.45", (0, (5, 1, 1, 1))))


def check_claim(result: dict) -> dict:
    """The paper's claim "CG U-Net(3) outperforms U-Net(6) with tens of times fewer parameters", in this run.

    Returns ``{"tested": False, "reason": ...}`` without both models, else ``tested``, ``cg_unet3_psnr``,
    ``unet6_psnr``, ``difference_db`` (CG U-Net(3) minus U-Net(6), mean over the test images) and its paired standard
    error ``difference_se_db`` (over the test images, for this one training seed), ``test_images``,
    ``parameter_ratio`` (U-Net(6) / CG U-Net(3)), ``verdict`` and ``holds`` (``verdict == "holds"``). The verdict is
    "holds" for a difference above twice its standard error with at least 10 times fewer parameters, "within noise"
    for a difference within twice its standard error, and "does NOT hold" otherwise.
    """
    rows = {(r["name"], r["depth"]): r for r in result["results"] if r["kind"] == "model"}
    cg, unet = rows.get(("cg-unet", 3)), rows.get(("unet", 6))
    if cg is None or unet is None:
        return {"tested": False, "reason": "the run needs both cg-unet:3 and unet:6"}
    diff = np.asarray(cg["image_psnr"]) - np.asarray(unet["image_psnr"])
    ratio = unet["parameters"] / cg["parameters"]
    mean, se = float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
    if ratio >= 10 and mean > 2 * se:
        verdict = "holds"
    elif ratio >= 10 and abs(mean) <= 2 * se:
        verdict = "within noise"
    else:
        verdict = "does NOT hold"
    return {
        "tested": True,
        "cg_unet3_psnr": cg["psnr"],
        "unet6_psnr": unet["psnr"],
        "difference_db": mean,
        "difference_se_db": se,
        "test_images": len(diff),
        "parameter_ratio": ratio,
        "verdict": verdict,
        "holds": verdict == "holds",
    }


def claim_line(claim: dict) -> str:
    """One line stating the paper's claim, the two PSNRs, the parameter ratio and whether it holds in this run."""
    head = "Paper's claim 'CG U-Net(3) outperforms U-Net(6) with tens of times fewer parameters'"
    if not claim["tested"]:
        return f"{head}: not tested ({claim['reason']})"
    return (
        f"{head}: CG U-Net(3) {claim['cg_unet3_psnr']:.2f} dB vs U-Net(6) {claim['unet6_psnr']:.2f} dB "
        f"({claim['difference_db']:+.2f} ± {claim['difference_se_db']:.2f} dB over {claim['test_images']} test "
        f"images), {claim['parameter_ratio']:.1f}x fewer parameters: {claim['verdict']} in this run"
    )


def format_deblur2d(result: dict) -> str:
    """The Markdown table: method, parameters, PSNR, SSIM, centre and edge PSNR (dB), inference (ms per image)."""

    def num(value, digits):
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [
        "| method | parameters | PSNR (dB) | SSIM | centre PSNR (dB) | edge PSNR (dB) | inference (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["results"]:
        lines.append(
            f"| {r['method']} | {r['parameters']:,} | {num(r['psnr'], 2)} | {num(r['ssim'], 4)} | "
            f"{num(r['centre_psnr'], 2)} | {num(r['edge_psnr'], 2)} | {num(r['inference_ms'], 2)} |"
        )
    return "\n".join(lines)


def _describe(result: dict) -> str:
    c, d, m = result["config"], result["data"], result["machine"]
    source = "synthetic scenes" if d["source"]["kind"] == "synthetic" else f"images of {d['source']['path']}"
    return (
        f"Default lens on a {c['size']}x{c['size']} sensor (PSF window {d['kernel_size']}), {source}, camera noise "
        f"{'on' if c['noise'] else 'off'}; every model {c['epochs']} epoch(s) x {c['steps_per_epoch']} steps x batch "
        f"{c['batch_size']} (Adam, lr {c['lr']:g}), width {c['width']}, seed {c['seed']}; {d['test']} held-out test "
        f"images; PSNR and SSIM are means over the test images, centre (inner 2x2 of 4x4 sensor regions) and edge (the "
        f"other 12) PSNR are pooled over the regions' pixels (one MSE each); inference per {c['size']}x"
        f"{c['size']} image on {m['device']} (baselines on the CPU), torch threads {m['torch_threads']}, "
        f"{m['cpu_count']} CPUs; run time {result['seconds'] / 60:.1f} min."
    )


def plot_fig4b(result: dict, path) -> Path:
    """Fig. 4b: test PSNR against log10(parameters); U-Nets joined, CG U-Nets highlighted, baselines as lines."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 5.5), layout="constrained")
    ax = fig.subplots()
    models = [r for r in result["results"] if r["kind"] == "model"]
    for name, (marker, colour, ls, ms, offset) in STYLES.items():
        group = sorted((r for r in models if r["name"] == name), key=lambda r: r["parameters"])
        if group:
            x, y = [math.log10(r["parameters"]) for r in group], [r["psnr"] for r in group]
            width = 2 if name == "cg-unet" else 1.2
            ax.plot(x, y, marker=marker, color=colour, ls=ls, ms=ms, lw=width, label=f"{LABELS[name]}(d)", zorder=3)
            for r, xi, yi in zip(group, x, y, strict=True):
                where = {"xytext": offset, "textcoords": "offset points", "ha": "left" if offset[0] > 0 else "right"}
                ax.annotate(r["method"], (xi, yi), fontsize=8, color=colour, **where)
    baselines = [r for r in result["results"] if r["kind"] == "baseline"]
    for r, (shade, dash) in zip(baselines, BASELINE_STYLES, strict=False):
        ax.axhline(r["psnr"], color=shade, ls=dash, lw=1.2, label=f"{r['method']} ({r['psnr']:.2f} dB)")
    ax.margins(x=0.12)  # room for the labels of the outermost models
    ax.set_xlabel("log10(number of parameters)")
    ax.set_ylabel("PSNR on the held-out test images (dB)")
    c = result["config"]
    ax.set_title(f"Deblurring the default lens, {c['size']}x{c['size']} images (cf. the CoordGate paper's Fig. 4b)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, dpi=110)
    return Path(path)


def save_deblur2d(result: dict, directory) -> dict[str, Path]:
    """Write ``results.json``, ``table.md`` and ``fig4b.png`` into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / "results.json", "table": directory / "table.md"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    text = [
        "# Deblurring the default lens: the CoordGate paper's Fig. 4b at a small scale",
        "",
        _describe(result),
        "",
        format_deblur2d(result),
        "",
        claim_line(result["claim"]) + ".",
        "",
    ]
    paths["table"].write_text("\n".join(text), encoding="utf-8")
    paths["png"] = plot_fig4b(result, directory / "fig4b.png")
    return paths
