"""``optisim bench calibrate``: the calibration layer's measured figures (README, "The calibration layer"), reproduced.

Each case is one run of :func:`calibration.calibrate.calibrate` (the code behind ``optisim calibrate``) into its own
folder ``out/<case>``, followed by the figures read from the summary it returns:

``synthetic``
    ``beads`` simulated beads on the default lens (``size`` x ``size`` pixels of 0.25 µm, NA 0.5, 0.525 µm) with
    defocus 0.15 h², astigmatism 0.08 and coma 0.06 waves RMS over the field (:data:`TRUE_FIELD`), 3·10⁴–10⁵
    photons, 20 e⁻ background and 2 e⁻ read noise, written as a uint16 ImageJ TIFF; no network. Figures: time, each
    bead's wavefront error against the truth and the largest difference of a field-polynomial term.
``llsm``
    The lattice light-sheet bead stack ``bead_psf_llsm_pycudadecon/psf.tif`` (0.101 µm pixels, 0.1 µm steps, NA 1.1
    water, 0.525 µm) with the pupil fitted; no network. Figures: the best bead's correlation, NA and axial scale.
``confocal``
    ``beads_confocal_bian/Bead_Image1_crop.tif`` (sampling from the file's metadata), confocal, NA 1.4 oil, 0.52 µm,
    pupil fitted; no network. Figures: beads, median correlation, fitted NA.
``fibre``
    ``beads_fibre_svdeconrl/Beads.tif`` (nominal 0.5 µm pixels, 0.5 µm, NA 0.25), empirical field model, 31 px
    window, 16 px separation, the default network then fine-tuned on the beads (``--finetune-beads``), and made again
    from the inner beads alone for the radial hold-out (``--radial-network``); unless the network is switched off.
    Figures: held-out beads' PSF correlation with the model, the model's rank, held-out
    bead FWHM median and IQR before deblurring, after the simulated training and after the fine-tuning, times.

Every function returns plain dicts (figures in µm, pixels, waves RMS and seconds, as their keys say);
:func:`format_table` turns a result into the printed table.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from calibration.calibrate import CalibrateConfig, _jsonable, calibrate
from calibration.detect import DetectConfig
from calibration.fit import FitConfig
from calibration.network import NetworkConfig
from calibration.optics import Optics
from calibration.pipeline import ModelConfig
from learn.bench import machine_info
from optisim.aberrations import FieldModel

__all__ = [
    "CASES",
    "REAL_FILES",
    "TRUE_FIELD",
    "bench_calibrate",
    "case_config",
    "field_term_difference",
    "format_table",
    "real_data_files",
    "run_case",
    "table_rows",
    "wavefront_errors",
    "write_synthetic_beads",
]

CASES = ("synthetic", "llsm", "confocal", "fibre")
REAL_FILES = {
    "llsm": "bead_psf_llsm_pycudadecon/psf.tif",
    "confocal": "beads_confocal_bian/Bead_Image1_crop.tif",
    "fibre": "beads_fibre_svdeconrl/Beads.tif",
}
TRUE_FIELD = FieldModel(field_curvature=0.15, astigmatism=0.08, coma=0.06)  # waves RMS
SYNTHETIC_PIXEL_UM = 0.25
SYNTHETIC_CROP = 41  # pixels: the rendered PSF side, and the beads' smallest distance


def real_data_files(data, cases) -> dict:
    """``{case: bead file}`` for the real-data cases among ``cases``, or a ValueError naming ``--data``.

    Parameters
    ----------
    data : str, Path or None, the folder of the shared real data (its subfolders are named in :data:`REAL_FILES`)
    cases : iterable of str, case names (``synthetic`` needs no data and is skipped)
    """
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ValueError(f"cases: expected names from {CASES}, got {unknown}")
    needed = [c for c in cases if c in REAL_FILES]
    if needed and data is None:
        raise ValueError(f"--data: case {needed[0]} needs the real bead data; pass --data DIR or set OPTISIM_REAL_DATA")
    data = Path(data) if needed else None
    files = {c: data / REAL_FILES[c] for c in needed}
    for case, path in files.items():
        if not path.is_file():
            what = "no such folder" if not data.is_dir() else f"{REAL_FILES[case]} is missing"
            raise ValueError(
                f"--data {data}: {what}; case {case} needs the real bead data "
                f"(pass --data DIR or set OPTISIM_REAL_DATA, or run --case synthetic)"
            )
    return files


def case_config(case: str, *, network: bool = True, device: str = "cpu") -> CalibrateConfig:
    """The :class:`CalibrateConfig` of a case: the options of its README row (module docstring).

    ``network`` and ``device`` ('cpu', 'cuda', ...) apply to the ``fibre`` case; the others run without network.
    """
    off = NetworkConfig(enabled=False)
    if case == "synthetic":
        optics = Optics(pixel_um=SYNTHETIC_PIXEL_UM, wavelength_um=0.525, na=0.5)
        return CalibrateConfig(optics=optics, network=off)
    if case == "llsm":
        optics = Optics(pixel_um=0.101, z_step_um=0.1, wavelength_um=0.525, na=1.1, immersion_index=1.333)
        return CalibrateConfig(optics=optics, model=ModelConfig(fit=FitConfig(fit_pupil=True)), network=off)
    if case == "confocal":
        optics = Optics(wavelength_um=0.52, na=1.4, immersion_index=1.518)
        model = ModelConfig(fit=FitConfig(modality="confocal", fit_pupil=True))
        return CalibrateConfig(optics=optics, model=model, network=off)
    if case == "fibre":
        optics = Optics(pixel_um=0.5, wavelength_um=0.5, na=0.25)
        model = ModelConfig(detect=DetectConfig(window=31, min_separation=16), field_model="empirical")
        net = NetworkConfig(enabled=network, device=str(device), finetune_beads=network, radial_check=network)
        return CalibrateConfig(optics=optics, model=model, network=net)
    raise ValueError(f"case: expected one of {CASES}, got {case!r}")


def write_synthetic_beads(path, *, beads: int = 50, size: int = 512, seed: int = 1):
    """Simulate the synthetic case's bead image and write it as a uint16 ImageJ TIFF with 0.25 µm pixels.

    Parameters
    ----------
    path : str or Path, the TIFF to write
    beads : int, number of beads; size : int, sensor side (pixels), the image is (size, size) (y, x)
    seed : int, of the numpy Generator that draws positions, brightness and noise

    Returns
    -------
    Lens, the true lens (default preset, ``size`` x ``size`` sensor, :data:`TRUE_FIELD` aberrations)
    """
    import tifffile

    from optisim.beads import simulate_bead_image
    from optisim.lens import load_preset

    lens = load_preset("default").replace(sensor_shape=(size, size), aberrations=TRUE_FIELD)
    rng = np.random.default_rng(seed)
    try:
        image, _ = simulate_bead_image(lens, beads, rng=rng, photons=(3e4, 1e5), size=SYNTHETIC_CROP)
    except ValueError as err:
        reason = str(err).removeprefix("n_beads: ")
        raise ValueError(f"--beads {beads}: {reason} (--size {size}); ask for fewer beads or a larger --size") from None
    counts = np.clip(np.rint(image[0]), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    res = 1 / SYNTHETIC_PIXEL_UM
    tifffile.imwrite(path, counts, imagej=True, resolution=(res, res), metadata={"unit": "um"})
    return lens


def wavefront_errors(table: list, nolls, lens) -> np.ndarray:
    """(N,) each fitted bead's RMS wavefront difference from ``lens`` at its position, waves RMS.

    Parameters
    ----------
    table : list of dict, ``summary["fits"]["table"]`` (``row``, ``col`` pixels; ``Z{noll}_waves``, waves RMS)
    nolls : sequence of int, the fitted Noll indices
    lens : Lens, the truth (its sensor shape sets the field coordinates)
    """
    from optisim.field import pixel_to_field
    from optisim.zernike import noll_to_nm

    if not table:
        return np.zeros(0)
    rows = np.array([r["row"] for r in table], dtype=float)
    cols = np.array([r["col"] for r in table], dtype=float)
    fitted = np.array([[r[f"Z{j}_waves"] for j in nolls] for r in table], dtype=float)
    hx, hy = pixel_to_field(rows, cols, lens.sensor_shape)
    truth = lens.zernike_waves(hx, hy, [noll_to_nm(j) for j in nolls])
    return np.sqrt(((fitted - truth) ** 2).sum(axis=1))


def _terms(field_model: FieldModel) -> dict:
    out = {}
    for t in field_model.polynomial_terms():
        key = (t.mode, t.hx_power, t.hy_power)
        out[key] = out.get(key, 0.0) + t.coefficient
    return out


def field_term_difference(fitted: FieldModel, true: FieldModel) -> float:
    """Largest difference of a field-polynomial coefficient, summed per (mode, hx power, hy power), waves."""
    a, b = _terms(fitted), _terms(true)
    return max((abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b)), default=0.0)


def _field_degree(field: dict | None) -> int | None:
    """Degree of the fitted field polynomials (``summary["model"]["field"]``), None without a parametric model."""
    if not field:
        return None
    return max((t["hx_power"] + t["hy_power"] for m in field["modes"] for t in m["terms"]), default=0)


def _synthetic_figures(summary: dict, out: Path, truth) -> dict:
    from optisim.lens import load_lens

    nolls = [m["noll"] for m in summary["zernike"]["modes"]]
    error = wavefront_errors(summary["fits"]["table"], nolls, truth)
    lens_file = out / "lens.toml"
    field = None
    if summary["model"]["kind"] == "parametric" and lens_file.is_file():
        field = field_term_difference(load_lens(lens_file).aberrations, truth.aberrations)
    return {
        "sensor": list(truth.sensor_shape),
        "beads": summary["fits"]["beads"],
        "model": summary["model"]["kind"],
        "field_degree": _field_degree(summary["model"].get("field")),
        "wavefront_error_median_waves": float(np.median(error)) if len(error) else None,
        "wavefront_error_max_waves": float(error.max()) if len(error) else None,
        "field_term_max_difference_waves": field,
    }


def _best_bead_figures(summary: dict) -> dict:
    table = summary["fits"]["table"]
    best = max(table, key=lambda r: r["correlation"])
    return {
        "beads": summary["fits"]["beads"],
        "best_correlation": best["correlation"],
        "best_na": best["na"],
        "best_axial_scale": best["axial_scale"],
        "best_row": best["row"],
        "best_col": best["col"],
    }


def _confocal_figures(summary: dict) -> dict:
    na = np.array([r["na"] for r in summary["fits"]["table"]], dtype=float)
    return {
        "beads": summary["fits"]["beads"],
        "correlation_median": summary["fits"]["correlation_median"],
        "na_min": float(na.min()),
        "na_median": float(np.median(na)),
        "na_max": float(na.max()),
        "pixel_um": summary["optics"]["pixel_um"],
        "z_step_um": summary["optics"]["z_step_um"],
    }


def _fibre_figures(summary: dict) -> dict:
    holdout = (summary.get("validation") or {}).get("holdout") or {}
    corr = holdout.get("psf_correlation") or {}
    empirical = summary["model"].get("empirical") or {}
    width = (summary.get("network") or {}).get("bead_width") or {}
    simulated = (summary.get("network") or {}).get("bead_width_simulated") or {}
    keys = ("median_before", "median_after", "iqr_before", "iqr_after")
    return {
        "beads": summary["fits"]["beads"],
        "held_out": holdout.get("beads", 0),
        "holdout_psf_correlation_median": corr.get("median"),
        "holdout_psf_correlation_min": corr.get("min"),
        "empirical_rank": empirical.get("rank"),
        "symmetry": empirical.get("symmetry"),
        "symmetric_rank": empirical.get("model_rank"),
        "optical_centre_px": (empirical.get("optical_centre") or {}).get("pixel_row_col"),
        "optical_centre_sigma_px": (empirical.get("optical_centre") or {}).get("pixel_sigma_row_col"),
        "holdout_by_band": holdout.get("by_band"),
        "radial_holdout": (summary.get("validation") or {}).get("radial_holdout"),
        "coverage": summary["model"].get("coverage"),
        "crowded_beads": ((summary.get("validation") or {}).get("crowded") or {}).get("beads"),
        "deblurred_beads": (summary.get("validation") or {}).get("deblurred_beads"),
        "network": bool(summary.get("network")),
        **{f"fwhm_{k}_px": width.get(k) for k in keys},
        "fwhm_median_simulated_px": simulated.get("median_after"),
        "fwhm_iqr_simulated_px": simulated.get("iqr_after"),
        "training_seconds": summary["seconds"].get("network_training"),
        "bead_finetune_seconds": summary["seconds"].get("bead_finetune"),
    }


def run_case(case: str, out, *, path=None, config=None, beads=50, size=512, progress=True, echo=print) -> dict:
    """Run one case into the folder ``out`` and return its figures (module docstring).

    Parameters
    ----------
    case : str, one of :data:`CASES`
    out : str or Path, the case's folder (created; its calibration replaced)
    path : Path, the bead file of a real-data case (:func:`real_data_files`); unused for ``synthetic``
    config : CalibrateConfig or None (:func:`case_config` without network)
    beads, size : the synthetic case's bead count and sensor side (pixels)
    progress : bool, training progress bars; echo : callable taking one line of text

    Returns
    -------
    dict with ``case``, ``input``, ``output``, ``seconds`` (wall time of the calibration), ``seconds_fit``
    (the per-bead fits), ``seconds_model`` (reading to field model) and the case's figures.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = config or case_config(case, network=False)
    truth = None
    if case == "synthetic":
        path = out / "beads.tif"
        echo(f"simulating {beads} beads on a {size}x{size} sensor -> {path}")
        truth = write_synthetic_beads(path, beads=beads, size=size)
    elif path is None:
        raise ValueError(f"path: case {case} needs its bead file (see real_data_files)")
    t = time.perf_counter()
    summary = calibrate([str(path)], out, config=config, overwrite=True, progress=progress, echo=echo)
    seconds = time.perf_counter() - t
    figures = {
        "synthetic": lambda: _synthetic_figures(summary, out, truth),
        "llsm": lambda: _best_bead_figures(summary),
        "confocal": lambda: _confocal_figures(summary),
        "fibre": lambda: _fibre_figures(summary),
    }[case]()
    times = summary["seconds"]
    return {
        "case": case,
        "input": str(path),
        "output": str(out),
        "seconds": seconds,
        "seconds_fit": times.get("fit"),
        "seconds_model": times.get("model_total"),
        **figures,
    }


def bench_calibrate(
    out, *, cases=CASES, data=None, network=True, device="cpu", beads=50, size=512, progress=True, echo=print
) -> dict:
    """Run ``cases`` (each into ``out/<case>``) and return ``{"machine": ..., "settings": ..., "cases": ...}``.

    Parameters
    ----------
    out : str or Path, the bench folder
    cases : sequence of str, from :data:`CASES` (run in that order)
    data : str or Path, the real-data folder (needed unless only ``synthetic`` runs); checked before any case runs
    network : bool, train the network in the ``fibre`` case; device : str or torch.device, its device
    beads, size : the synthetic case's bead count and sensor side (pixels)
    progress : bool, training progress bars
    echo : callable taking one line of text; each case's lines are prefixed with ``[case]``
    """
    cases = [c for c in CASES if c in set(cases)]
    files = real_data_files(data, cases)
    out = Path(out)
    result = {
        "machine": machine_info(device),
        "settings": {"cases": cases, "data": None if data is None else str(data), "network": network,
                     "synthetic_beads": beads, "synthetic_size": size},
        "cases": {},
    }  # fmt: skip
    for case in cases:
        config = case_config(case, network=network, device=str(device))

        def case_echo(line, case=case):
            echo(f"[{case}] {line}")

        result["cases"][case] = run_case(
            case, out / case, path=files.get(case), config=config, beads=beads, size=size, progress=progress,
            echo=case_echo,
        )  # fmt: skip
        case_echo(f"done in {result['cases'][case]['seconds']:.1f} s")
    return _jsonable(result)


def _f(value, spec: str = ".4f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _beads(n) -> str:
    return f"{n} bead" if n == 1 else f"{n} beads"


def _bands(rows: list, key: str) -> str:
    """``'1.10 / - / 1.21 / 2.03'``: one band's median per field band (``-`` where the band has no bead)."""
    return " / ".join("-" if row[key] is None else f"{row[key]:.2f}" for row in rows)


def table_rows(case: str, r: dict) -> list:
    """``[(figure, target, measured), ...]`` for one case's figures ``r`` (from :func:`run_case`)."""
    s = f"{_f(r['seconds'], '.1f')} s"
    if case == "synthetic":
        n, (ny, nx) = r["beads"], r["sensor"]
        return [
            ("per-bead wavefront error", "<= 1/50 waves RMS",
             f"median {_f(r['wavefront_error_median_waves'])}, worst {_f(r['wavefront_error_max_waves'])} waves "
             f"({_beads(n)})"),
            ("field polynomial terms", "within 0.02 waves", f"worst term {_f(r['field_term_max_difference_waves'])} "
             f"waves (degree {r['field_degree']})"),
            (f"calibrate {ny}x{nx}, no network", "< 2 min", f"{s} (fit {_f(r['seconds_fit'], '.1f')} s)"),
        ]  # fmt: skip
    if case == "llsm":
        return [
            ("best bead correlation, --fit-pupil", ">= 0.95", f"{_f(r['best_correlation'], '.3f')} (NA "
             f"{_f(r['best_na'], '.2f')}, axial scale {_f(r['best_axial_scale'], '.2f')}; {_beads(r['beads'])})"),
            ("calibrate, no network", "", s),
        ]  # fmt: skip
    if case == "confocal":
        return [
            ("beads, correlation, fitted NA", "plausible NA",
             f"{_beads(r['beads'])}, correlation {_f(r['correlation_median'], '.3f')}, NA {_f(r['na_min'], '.2f')}-"
             f"{_f(r['na_max'], '.2f')} (median {_f(r['na_median'], '.2f')})"),
            ("calibrate, no network", "", s),
        ]  # fmt: skip
    rows = [
        ("held-out PSF correlation", "", f"median {_f(r['holdout_psf_correlation_median'], '.3f')}, min "
         f"{_f(r['holdout_psf_correlation_min'], '.3f')} ({r['held_out']} of {r['beads']} beads held out)"),
        ("empirical model", "", f"symmetry {r['symmetry']}, rank {r['symmetric_rank']}"
         + (f", forward rank {r['empirical_rank']}" if r["symmetric_rank"] != r["empirical_rank"] else "")
         + (f", optical centre row {r['optical_centre_px'][0]:.1f} +- {r['optical_centre_sigma_px'][0]:.1f}, "
            f"column {r['optical_centre_px'][1]:.1f} +- {r['optical_centre_sigma_px'][1]:.1f} px"
            if r["optical_centre_px"] else "")),
    ]  # fmt: skip
    for name, model in ((r.get("radial_holdout") or {}).get("models") or {}).items():
        corr = model.get("psf_correlation") or {}
        rows.append((f"outer {r['radial_holdout']['outer_beads']} beads predicted from the inner ones ({name})", "",
                     model["error"] if "error" in model else
                     f"median {_f(corr.get('median'), '.3f')}, min {_f(corr.get('min'), '.3f')}"))  # fmt: skip
    for part, label in (("holdout", "held-out"), ("radial_holdout", "outer (model of the inner beads)")):
        check = ((r.get("deblurred_beads") or {}).get(part) or {}).get("methods") or {}
        for name, m in check.items():
            if name == "raw":
                continue
            rows.append((f"{label} beads deblurred by {name}: aspect by band", "<= 1.3",
                         _bands(m["by_band"], "aspect")))  # fmt: skip
            rows.append(("  same: flux ratio by band; edge/centre flux", "1 +- 0.15",
                         f"{_bands(m['by_band'], 'flux_ratio')}; {_f(m.get('edge_centre_flux'), '.2f')}"))  # fmt: skip
        if check.get("raw"):
            rows.append((f"{label} beads, raw: aspect by band", "", _bands(check["raw"]["by_band"], "aspect")))
    if r.get("coverage"):
        c = r["coverage"]
        rows.append(("coverage: sensor share below confidence 0.5", "", f"{100 * c['share_below']:.1f} % (PSF "
                     f"spread next to the beads {_f(c['reference_spread'], '.3f')})"))  # fmt: skip
    if r["network"]:
        rows += [
            ("median bead FWHM, simulated training", "reduced", f"{_f(r['fwhm_median_before_px'], '.2f')} -> "
             f"{_f(r['fwhm_median_simulated_px'], '.2f')} px"),
            ("bead FWHM spread (IQR), simulated training", "reduced", f"{_f(r['fwhm_iqr_before_px'], '.2f')} -> "
             f"{_f(r['fwhm_iqr_simulated_px'], '.2f')} px"),
            ("median bead FWHM, + fine-tuned on beads", "reduced", f"{_f(r['fwhm_median_before_px'], '.2f')} -> "
             f"{_f(r['fwhm_median_after_px'], '.2f')} px"),
            ("bead FWHM spread (IQR), + fine-tuned", "reduced", f"{_f(r['fwhm_iqr_before_px'], '.2f')} -> "
             f"{_f(r['fwhm_iqr_after_px'], '.2f')} px"),
            ("network training, bead fine-tuning", "", f"{_f(r['training_seconds'], '.1f')} s, "
             f"{_f(r['bead_finetune_seconds'], '.1f')} s"),
        ]  # fmt: skip
    return [*rows, ("calibrate" + ("" if r["network"] else ", no network"), "", s)]


def format_table(result: dict) -> str:
    """The plain-text table (case, figure, target, measured) of a :func:`bench_calibrate` result."""
    rows = [(case, *row) for case, r in result["cases"].items() for row in table_rows(case, r)]
    header = ("case", "figure", "target", "measured")
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    m = result["machine"]
    lines.append(
        f"{m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), {m['date']}"
    )
    return "\n".join(lines)
