"""The demo's own figures and its ``index.html`` (:mod:`calibration.demo` runs the stages).

Figures are drawn on :class:`matplotlib.figure.Figure` objects (Agg canvas; no pyplot state, no display). Units:
PSNR in dB (data range 1), Zernike coefficients in waves RMS (Noll), images ``(y, x)`` in normalised intensity.
Every link in the page is relative to the demo folder.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np

__all__ = ["plot_field_terms", "plot_instrument", "plot_training", "shown_terms", "summary_lines", "write_index"]

DPI = 100
METHOD_LABELS = {"wiener": "Wiener (one PSF, the centre's; balance tuned on val)"}
METRIC_COLUMNS = (("psnr", 2), ("ssim", 4), ("centre_psnr", 2), ("edge_psnr", 2))
METRIC_HEADERS = ("PSNR (dB)", "SSIM", "centre PSNR (dB)", "edge PSNR (dB)")
SCENE_LABELS = {"blurred": "input (blurred)", "design": "design-trained CG U-Net", "calibrated": "calibrated CG U-Net"}
_CSS = (
    "body{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222;line-height:1.4}"
    "table{border-collapse:collapse;margin:0.4em 0}td,th{border:1px solid #bbb;padding:2px 8px;text-align:left}"
    "th{background:#eee}td.n{text-align:right}img{max-width:100%}figure{margin:1em 0}"
    "figcaption{font-size:90%;color:#444}"
)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_training(path, histories: dict) -> Path:
    """``training.png``: training loss and validation PSNR per epoch of each run.

    histories : ``{label: rows of metrics.csv}`` (``epoch``, ``train_loss``, ``val_psnr``, dB)
    """
    fig = _figure(10, 3.6)
    ax0, ax1 = fig.subplots(1, 2)
    for label, rows in histories.items():
        epochs = [r["epoch"] for r in rows]
        ax0.plot(epochs, [r["train_loss"] for r in rows], marker="o", label=label)
        ax1.plot(epochs, [r["val_psnr"] for r in rows], marker="o", label=label)
    ax0.set(xlabel="epoch", ylabel="training loss (MSE)", yscale="log", title="training loss")
    ax1.set(xlabel="epoch", ylabel="PSNR (dB)", title="validation PSNR")
    for ax in (ax0, ax1):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=DPI)
    return Path(path)


def _monomial(row: dict) -> str:
    """``hx² hy``-style text of a field term's monomial (``1`` for the constant)."""
    powers = [f"{name}{_sup(row[f'{name}_power'])}" for name in ("hx", "hy") if row[f"{name}_power"]]
    return " ".join(powers) or "1"


def _term_label(row: dict) -> str:
    return f"Z{row['noll']} {_monomial(row)}"


def _sup(power: int) -> str:
    return "" if power == 1 else str(power).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))


def shown_terms(terms: list, extra: int = 4) -> list:
    """The terms worth showing: every true term, then the ``extra`` largest fitted terms that are 0 in the truth."""
    true = [r for r in terms if r["true"] != 0]
    spurious = sorted((r for r in terms if r["true"] == 0), key=lambda r: -abs(r["fitted"]))[:extra]
    return true + spurious


def plot_field_terms(path, terms: list) -> Path:
    """``field_terms.png``: true and fitted field-polynomial coefficients (waves RMS) of :func:`shown_terms`, with
    the fit's 1-sigma uncertainties."""
    rows = shown_terms(terms)
    x = np.arange(len(rows))
    fig = _figure(max(6.0, 0.75 * len(rows) + 2), 3.8)
    ax = fig.subplots()
    ax.bar(x - 0.2, [r["true"] for r in rows], 0.4, label="truth", color="0.6")
    sigma = [r["uncertainty"] or 0.0 for r in rows]
    ax.bar(x + 0.2, [r["fitted"] for r in rows], 0.4, yerr=sigma, capsize=3, label="recovered from beads", color="C0")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, [_term_label(r) for r in rows], rotation=45, ha="right")
    ax.set_ylabel("coefficient (waves RMS per unit field monomial)")
    ax.set_title("field-polynomial terms of the instrument: truth vs calibration")
    ax.legend()
    fig.savefig(path, dpi=DPI)
    return Path(path)


def plot_instrument(regions_path, corner_path, scenes: dict, example: dict, *, zoom: int = 128) -> tuple[Path, Path]:
    """The instrument's test scenes: ``regions.png`` (per-region PSNR maps of the input and both networks, one
    colour scale) and ``corner.png`` (the top-left ``zoom`` x ``zoom`` px of the first scene: truth, input, outputs).

    scenes : ``{"blurred"|"design"|"calibrated": RegionMetrics.result()}``; example : ``{name: (H, W) image}``
    """
    maps = {k: np.array(scenes[k]["region_psnr"], dtype=float) for k in SCENE_LABELS}
    finite = np.concatenate([m[np.isfinite(m)] for m in maps.values()])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    fig = _figure(13, 4.2)
    axes = fig.subplots(1, 3)
    for ax, (name, m) in zip(axes, maps.items(), strict=True):
        im = ax.imshow(m, cmap="viridis", vmin=vmin, vmax=max(vmax, vmin + 1e-6))
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, "n/a" if math.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=8, color="w")
        ax.set_title(f"{SCENE_LABELS[name]}: {scenes[name]['psnr']:.2f} dB", fontsize=10)
        ax.set_xticks(range(m.shape[1]))
        ax.set_yticks(range(m.shape[0]))
        ax.set(xlabel="region column (sensor x)", ylabel="region row (sensor y)")
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="PSNR (dB)")
    fig.savefig(regions_path, dpi=DPI)
    names = ("sharp", *SCENE_LABELS)
    fig = _figure(3.2 * len(names), 3.5)
    truth = example["sharp"][:zoom, :zoom]
    for ax, name in zip(fig.subplots(1, len(names)), names, strict=True):
        ax.imshow(example[name][:zoom, :zoom], cmap="gray", vmin=float(truth.min()), vmax=float(truth.max()))
        ax.set_title("truth (sharp)" if name == "sharp" else SCENE_LABELS[name], fontsize=10)
        ax.set_axis_off()
    fig.savefig(corner_path, dpi=DPI)
    return Path(regions_path), Path(corner_path)


def _f(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def _table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{c}</td>' if i else f"<td>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fig(src: str, caption: str) -> str:
    return f'<figure><img src="{src}" alt="{src}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def _links(items) -> str:
    return "<ul>" + "".join(f'<li><a href="{p}">{p}</a>: {html.escape(label)}</li>' for p, label in items) + "</ul>"


def _key_numbers(s: dict) -> str:
    ev, ins = s["evaluation"], s["instrument"]
    blurred = ev["cg-unet"]["methods"]["blurred"]
    scenes, fwhm = ins["test_scenes"], ins["bead_fwhm_px"]
    rows = [("held-out test crops, input (blurred)", _f(blurred["psnr"]), _f(blurred["ssim"], 4))]
    rows += [
        (
            f"held-out test crops, {ev[m]['label']}",
            _f(ev[m]["methods"]["model"]["psnr"]),
            _f(ev[m]["methods"]["model"]["ssim"], 4),
        )
        for m in ev
    ]
    rows += [
        (f"instrument test scenes, {SCENE_LABELS[k]}", _f(scenes[k]["psnr"]), _f(scenes[k]["ssim"], 4))
        for k in SCENE_LABELS
    ]
    table = _table(("images", "PSNR (dB)", "SSIM"), rows)
    other = [
        (
            "worst recovered field-polynomial term, |fitted − true|",
            f"{_f(ins['field_term_max_difference_waves'], 4)} waves RMS",
        ),
        (
            "per-bead wavefront error against the truth, median / max",
            f"{_f(ins['wavefront_error_median_waves'], 4)} / {_f(ins['wavefront_error_max_waves'], 4)} waves RMS",
        ),
        ("median bead FWHM, raw → calibrated network", f"{_f(fwhm['median_before'])} → {_f(fwhm['median_after'])} px"),
        ("calibrated minus design-trained network, instrument test scenes", f"{_f(ins['calibrated_psnr_gain_db'])} dB"),
    ]
    seconds = [(k, _f(float(v), 1)) for k, v in s["seconds"].items()]
    return (
        f"<h2>Key numbers</h2>{table}{_table(('figure', 'value'), other)}<h3>Time per stage (s)</h3>"
        f"{_table(('stage', 'seconds'), seconds)}"
    )


def _stages_1_2(s: dict) -> str:
    f = s["forward"]
    return (
        "<h2>1. The default lens</h2><p>A widefield 20x/0.5 air objective at 525 nm whose defocus grows toward the "
        "sensor edges (field curvature, about 1 wave RMS in the corners).</p>"
        + _links([("lens.toml", "lens file"), ("lens.txt", "lens summary"), ("psfs.nc", "PSF grid (NetCDF)")])
        + _fig(
            "psf_grid.png",
            "PSFs of the default lens at their field positions (each scaled to its peak) and the "
            "RMS wavefront error over the field (waves).",
        )
        + f"<h2>2. Forward model</h2><p>{f['samples']} crops of {f['crop']}x{f['crop']} px from the built-in scene "
        f"generator, blurred by a low-rank model of the lens ({f['rank']} eigen-PSFs of {f['kernel_size']} px from a "
        f"{f['grid'][0]}x{f['grid'][1]} PSF grid) with camera noise; splits 80/10/10 % train/val/test.</p>"
        + _links(
            [
                ("dataset.h5", "HDF5 dataset"),
                ("sharp.tif", "sharp full-sensor scene"),
                ("blurred.tif", "the scene blurred by the lens, with noise"),
            ]
        )
        + _fig(
            "blur.png",
            "A synthetic full-sensor scene, sharp and blurred by the default lens with camera noise: "
            "sharp in the centre, blurred toward the corners.",
        )
    )


def _stages_3_4(s: dict) -> str:
    tr, ev = s["training"], s["evaluation"]
    rows = [
        (
            r["label"],
            f"{r['parameters']:,}",
            r["epochs"],
            r["steps"],
            r["best_epoch"],
            _f(r["val_psnr"]),
            _f(r["val_ssim"], 4),
            _f(r["seconds"], 1),
        )
        for r in tr.values()
    ]
    head = ("network", "parameters", "epochs", "steps", "best epoch", "val PSNR (dB)", "val SSIM", "seconds")
    part = "<h2>3. Training</h2><p>Both networks with the same budget (epochs, batch, learning rate, seed).</p>"
    part += _table(head, rows) + _links(
        [
            (f"training/{m}/{f}", f"{tr[m]['label']} {what}")
            for m in tr
            for f, what in (("best.pt", "best checkpoint"), ("metrics.csv", "metrics per epoch"))
        ]
    )
    part += _fig("training.png", "Training loss (MSE) and validation PSNR (dB) per epoch of both networks.")
    part += "<h2>4. Deblurring held-out test crops</h2>"
    for m, r in ev.items():
        names = {"blurred": "input (blurred)", "model": r["label"], **METHOD_LABELS}
        order = ["blurred", "model", *(k for k in r["methods"] if k not in ("blurred", "model"))]
        rows = [
            (html.escape(names.get(k, k)), *(_f(r["methods"][k][key], d) for key, d in METRIC_COLUMNS)) for k in order
        ]
        part += f"<h3>{html.escape(r['label'])} ({r['samples']} test crops)</h3>"
        part += _table(("method", *METRIC_HEADERS), rows)
        part += _links([(f"evaluation/{m}/metrics.json", "every number")])
        gy, gx = r["grid"]
        part += _fig(
            f"evaluation/{m}/regions.png",
            f"PSNR (dB) per field region ({gy}x{gx} over the sensor) of the "
            f"input, {r['label']} and the best baseline, pooled over the test crops.",
        )
        part += _fig(
            f"evaluation/{m}/examples.png",
            f"{r['label']}: test crops nearest the centre and a corner: "
            "input, output, truth and |output − truth| (normalised intensity).",
        )
    return part


def _stage_5(s: dict) -> str:
    ins = s["instrument"]
    shown = ins["field_terms"]
    rows = [
        (
            html.escape(f"Z{r['noll']} {r['name']}"),
            _monomial(r),
            _f(r["true"], 4),
            _f(r["fitted"], 4),
            _f(r["uncertainty"], 4),
            _f(r["difference"], 4),
        )
        for r in shown_terms(shown)
    ]
    sc = ins["test_scenes"]
    scene_rows = [(SCENE_LABELS[k], *(_f(sc[k][key], d) for key, d in METRIC_COLUMNS)) for k in SCENE_LABELS]
    fw, b = ins["bead_fwhm_px"], ins["beads"]
    return (
        "<h2>5. Calibrating a perturbed instrument</h2><p>The instrument differs from the design: "
        f"{html.escape(ins['description'])}. It images {b['simulated']} beads; the calibration fits "
        f"{b['fitted']} of them ({b['held_out']} held out), recovers the field model (degree {ins['field_degree']}) "
        "and fine-tunes the design-trained CG U-Net on data simulated with the recovered lens.</p>"
        + _links(
            [
                ("instrument/lens.toml", "the instrument's true lens"),
                ("instrument/beads.tif", "bead image"),
                ("calibration/report.html", "calibration report"),
                ("calibration/lens.toml", "calibrated lens"),
                ("calibration/model.pt", "calibrated network"),
                ("calibration/calibration.json", "every number"),
            ]
        )
        + "<h3>Recovered field terms (waves RMS)</h3>"
        + _table(("mode", "monomial", "true", "fitted", "±1σ", "fitted − true"), rows)
        + f"<p>The other {len(shown) - len(rows)} fitted terms are smaller; worst |fitted − true| over all terms: "
        f"{_f(ins['field_term_max_difference_waves'], 4)} waves RMS.</p>"
        + _fig(
            "instrument/field_terms.png",
            "True and recovered field-polynomial coefficients (waves RMS per unit "
            "field monomial, Noll modes) with 1σ uncertainties: every true term and the largest spurious ones.",
        )
        + f"<h3>The calibrated network on the instrument</h3><p>Median bead FWHM on the raw bead image → deblurred "
        f"by the calibrated network: {_f(fw['median_before'])} → {_f(fw['median_after'])} px (IQR "
        f"{_f(fw['iqr_before'])} → {_f(fw['iqr_after'])} px; beads measured: "
        f"{html.escape(str(ins['bead_fwhm_beads']))})."
        f" {sc['scenes']} full-sensor test scenes of the instrument (truth known):</p>"
        + _table(("images", *METRIC_HEADERS), scene_rows)
        + _fig(
            "instrument/regions.png",
            "PSNR (dB) per field region of the instrument's test scenes: input, the "
            "design-trained CG U-Net (stage 3) and the calibrated one (also trained for a few more steps).",
        )
        + _fig(
            "instrument/corner.png",
            "Top-left corner of the first test scene, where the instrument's blur is "
            "strongest: truth, input and both networks' outputs (normalised intensity, one grey scale).",
        )
    )


def write_index(out, summary: dict) -> Path:
    """``index.html`` of the demo folder ``out``: key numbers, each stage's figures (captioned) and files."""
    s = summary
    mode = "quick" if s["settings"]["quick"] else "full"
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>optisim demo</title><style>{_CSS}</style>'
        f"</head><body><h1>optisim demo</h1><p>The whole product on built-in defaults ({mode} sizes, device "
        f"{html.escape(s['settings']['device'])}, seed {s['settings']['seed']}). Every number is in "
        '<a href="summary.json">summary.json</a>. PSNR in dB (data range 1), SSIM dimensionless.</p>'
        + _key_numbers(s)
        + _stages_1_2(s)
        + _stages_3_4(s)
        + _stage_5(s)
        + "</body></html>\n"
    )
    path = Path(out) / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def summary_lines(summary: dict) -> list[str]:
    """The short printed summary: PSNR before/after per network, recovered aberrations, calibration, times."""
    ev, ins, sec = summary["evaluation"], summary["instrument"], summary["seconds"]
    blurred = ev["cg-unet"]["methods"]["blurred"]["psnr"]
    nets = ", ".join(f"{ev[m]['label']} {ev[m]['methods']['model']['psnr']:.2f} dB" for m in ev)
    scenes, fwhm = ins["test_scenes"], ins["bead_fwhm_px"]
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in sec.items() if k != "total")
    return [
        f"held-out test crops: PSNR blurred {blurred:.2f} dB -> {nets}",
        f"recovered aberrations: field terms within {ins['field_term_max_difference_waves']:.4f} waves RMS of the "
        f"truth; per-bead wavefront error median {ins['wavefront_error_median_waves']:.4f} waves RMS",
        f"calibrated network on the instrument: PSNR {scenes['design']['psnr']:.2f} dB (design-trained) -> "
        f"{scenes['calibrated']['psnr']:.2f} dB (calibrated), blurred {scenes['blurred']['psnr']:.2f} dB; bead FWHM "
        f"{fwhm['median_before']:.2f} -> {fwhm['median_after']:.2f} px",
        f"total {sec['total']:.0f} s ({stages})",
    ]
