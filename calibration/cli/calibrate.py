"""``optisim calibrate``: fit the lens model and the network to measured bead images."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from optisim.cli._options import NoiseType


class ModesType(click.ParamType):
    """``4-15`` or ``4,5,6,11`` -> Noll indices."""

    name = "NOLL"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            out = []
            for part in str(value).split(","):
                lo, _, hi = part.partition("-")
                out.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
        except ValueError:
            self.fail(f"expected Noll indices such as 4-15 or 4,5,6,11, got {value!r}", param, ctx)
        if not out or min(out) < 4:
            self.fail(f"expected Noll indices >= 4 (piston and tilt are not fitted), got {value!r}", param, ctx)
        return tuple(out)


def _optics_options(func):
    options = [
        click.option("--pixel-size", type=float, default=None, help="Object-space pixel size, µm [file metadata]."),
        click.option("--z-step", type=float, default=None, help="z-step of a stack, µm [file metadata]."),
        click.option("--wavelength", type=float, default=None, help="Emission wavelength, µm [--lens]."),
        click.option("--na", type=float, default=None, help="Numerical aperture [--lens]."),
        click.option("--immersion-index", type=float, default=None, help="Immersion index [--lens, else 1.0]."),
        click.option(
            "--lens",
            "design_lens",
            default=None,
            help="Design lens file or preset: optics defaults and the sign of even aberrations in 2D.",
        ),
        click.option("--bead-diameter", type=click.FloatRange(0), default=0.1, show_default=True, help="µm."),
        click.option(
            "--modality", type=click.Choice(["widefield", "confocal"]), default="widefield", show_default=True
        ),
        click.option("--dataset", default=None, help="HDF5 dataset name of the bead image."),
        click.option("--channel", type=click.IntRange(0), default=None, help="Channel of a multi-channel image."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _model_options(func):
    options = [
        click.option("--threshold", type=click.FloatRange(0, min_open=True), default=6.0, show_default=True,
                     help="Detection threshold, noise sigmas of the matched-filtered image."),
        click.option("--min-snr", type=click.FloatRange(0), default=10.0, show_default=True,
                     help="Reject beads fainter than this (peak / noise sigma)."),
        click.option("--max-beads", type=click.IntRange(1), default=None, help="Fit at most this many beads."),
        click.option("--window", type=click.IntRange(5), default=None, help="Crop side in pixels (odd) [auto]."),
        click.option("--min-separation", type=click.FloatRange(0), default=None,
                     help="Reject beads closer than this to another, pixels [0.75 x window]."),
        click.option("--saturation", type=float, default=None, help="Saturation level [the file's integer maximum]."),
        click.option("--modes", type=ModesType(), default="4-15", show_default=True, help="Fitted Noll modes."),
        click.option("--fit-pupil", is_flag=True, help="Also fit NA, pupil fall-off and (stacks) the axial scale."),
        click.option("--field-model", type=click.Choice(["auto", "parametric", "empirical"]), default="auto",
                     show_default=True, help="Zernike field polynomials (lens.toml) or eigen-PSFs (psf_model.nc)."),
        click.option("--field-degree", type=click.IntRange(0, 6), default=None, help="Field polynomial degree [2]."),
        click.option("--holdout", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True,
                     help="Fraction of beads held out of the field fit for validation."),
        click.option("--symmetry", type=click.Choice(["auto", "none", "rotational"]), default="auto",
                     show_default=True,
                     help="Empirical model: rotational symmetry about a fitted optical centre, none, or the one "
                          "that predicts unseen beads better (auto)."),
        click.option("--radial-holdout", type=click.FloatRange(0, 1, max_open=True), default=0.25,
                     show_default=True,
                     help="Outermost fraction of the beads predicted from the inner ones (extrapolation check; "
                          "0: off)."),
        click.option("--bootstrap", type=click.IntRange(0), default=20, show_default=True,
                     help="Bootstrap resamplings of the coverage map (0: no map)."),
        click.option("--check-methods", default="rl,rl-tv", show_default=True,
                     help="Classical methods that deblur the bead image in the validation, comma-separated "
                          "('' for none); the network is always checked when there is one."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


def _network_options(func):
    options = [
        click.option("--no-network", is_flag=True, help="Fit the model only; no network training."),
        click.option("--model", "init", type=click.Path(dir_okay=False, exists=True), default=None,
                     help="Fine-tune this checkpoint (runs/NAME/best.pt) instead of training a new network."),
        click.option("--source", default="synthetic", show_default=True,
                     help="Sharp training images: 'synthetic', a folder of images, or 'synthetic:S+DIR' (a share S of "
                          "scenes, default 0.5, the folder's images for the rest)."),
        click.option("--arch", type=click.Choice(["cg-unet", "unet", "coordconv-unet"]), default="cg-unet",
                     show_default=True, help="Architecture of a new network."),
        click.option("--depth", type=click.IntRange(2, 8), default=3, show_default=True),
        click.option("--width", type=click.IntRange(1), default=16, show_default=True),
        click.option("--epochs", type=click.IntRange(1), default=8, show_default=True),
        click.option("--steps-per-epoch", type=click.IntRange(1), default=40, show_default=True),
        click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True),
        click.option("--size", type=click.IntRange(16), default=96, show_default=True, help="Training crop side."),
        click.option("--noise", type=NoiseType(), default="on", show_default=True, help="Training camera noise."),
        click.option("--finetune-beads", is_flag=True,
                     help="Then fine-tune on the bead images, with ideal (diffraction-limited) beads as targets."),
        click.option("--bead-steps", type=click.IntRange(1), default=200, show_default=True,
                     help="Steps of --finetune-beads."),
        click.option("--flux-weight", type=click.FloatRange(0), default=None,
                     help="Weight of the local flux term in training and bead fine-tuning (default: NetworkConfig's)."),
        click.option("--keep-flux/--no-keep-flux", default=True, show_default=True,
                     help="The network's output keeps the input's light in every box of the PSF window (a layer)."),
        click.option("--radial-network", is_flag=True,
                     help="Also check the network on the radial hold-out: make it again from the inner beads alone "
                          "(their model and, with --finetune-beads, their fine-tuning); doubles the network's time."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto",
                     show_default=True),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


@click.command("calibrate")
@click.argument("beads", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder.")
@_optics_options
@_model_options
@_network_options
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace the calibration in OUTPUT.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def calibrate(beads, output, seed, overwrite, quiet, **opts):
    """Fit the lens model and a deblurring network to measured bead images (BEADS: files or a folder).

    Writes OUTPUT/lens.toml (or psf_model.nc for an empirical model), model.pt, calibration.json, beads.csv and
    report.html. Pixel size and z-step come from the files' metadata where present; missing ones are errors that
    name the option to pass.
    """
    from calibration.calibrate import CalibrateConfig
    from calibration.calibrate import calibrate as run
    from calibration.detect import DetectConfig
    from calibration.fit import FitConfig
    from calibration.network import NetworkConfig
    from calibration.optics import Optics
    from calibration.pipeline import ModelConfig

    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # its messages on odd or broken files: our errors say it
    o = opts
    optics = Optics(pixel_um=o["pixel_size"], z_step_um=o["z_step"], wavelength_um=o["wavelength"], na=o["na"],
                    immersion_index=o["immersion_index"], lens=o["design_lens"])  # fmt: skip
    detect = DetectConfig(threshold=o["threshold"], min_snr=o["min_snr"], max_beads=o["max_beads"],
                          window=o["window"], saturation=o["saturation"],
                          min_separation=o["min_separation"])  # fmt: skip
    fit = FitConfig(modes=o["modes"], bead_diameter_um=o["bead_diameter"], modality=o["modality"],
                    fit_pupil=o["fit_pupil"])  # fmt: skip
    if o["bootstrap"] == 1:
        raise click.BadParameter("expected 0 (no coverage map) or at least 2 resamplings", param_hint="--bootstrap")
    model = ModelConfig(detect=detect, fit=fit, field_model=o["field_model"], field_degree=o["field_degree"],
                        holdout=o["holdout"], symmetry=o["symmetry"], radial_holdout=o["radial_holdout"],
                        bootstrap=o["bootstrap"], seed=seed)  # fmt: skip
    noise = o["noise"]
    network = NetworkConfig(
        enabled=not o["no_network"], init=o["init"], source=o["source"], model=o["arch"], depth=o["depth"],
        width=o["width"], epochs=o["epochs"], steps_per_epoch=o["steps_per_epoch"], batch_size=o["batch_size"],
        size=o["size"], noise=None if noise is None else noise.to_dict(), device=o["device"], seed=seed,
        finetune_beads=o["finetune_beads"], bead_steps=o["bead_steps"], keep_flux=o["keep_flux"],
        radial_check=o["radial_network"], **({} if o["flux_weight"] is None else {"flux_weight": o["flux_weight"]}),
    )  # fmt: skip
    if o["finetune_beads"] and o["no_network"]:
        raise click.UsageError("--finetune-beads fine-tunes the network; it cannot go with --no-network")
    if o["radial_network"] and o["no_network"]:
        raise click.UsageError("--radial-network checks the network; it cannot go with --no-network")
    if o["radial_network"] and o["radial_holdout"] == 0:
        raise click.UsageError("--radial-network checks the network on the radial hold-out; it cannot go with "
                               "--radial-holdout 0")
    checks = tuple(m.strip() for m in o["check_methods"].split(",") if m.strip())
    if unknown := [m for m in checks if m not in ("rl", "rl-tv")]:
        raise click.BadParameter(f"expected some of rl, rl-tv, got {', '.join(unknown)}", param_hint="--check-methods")
    config = CalibrateConfig(optics=optics, model=model, network=network, dataset=o["dataset"], channel=o["channel"],
                             check_methods=checks)  # fmt: skip
    summary = run([str(p) for p in beads], output, config=config, overwrite=overwrite, progress=not quiet,
                  echo=click.echo)  # fmt: skip
    _print_summary(summary, output)


def _print_summary(summary: dict, output: Path) -> None:
    fits, model = summary["fits"], summary["model"]
    line = f"{fits['beads']} beads fitted (median correlation {fits['correlation_median']:.4f}); {model['kind']} model"
    if "field" in model:
        rms = max(m["residual_rms_waves"] for m in model["field"]["modes"])
        line += f", field residual <= {rms:.4f} waves RMS"
    width = (summary.get("network") or {}).get("bead_width")
    if width:
        line += f"; bead FWHM {width['median_before']:.2f} -> {width['median_after']:.2f} px"
    click.echo(line)
    click.echo(f"report: {output / 'report.html'}")
