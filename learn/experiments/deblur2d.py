"""The paper's 2D experiment (Section IV.B, Fig. 4b): U-Nets with and without CoordGate undoing a lens's blur.

The task
--------
Sharp images (the built-in scene generator, or a folder of images such as the FMD confocal images the paper used)
are blurred by the default lens (``optisim.lens.load_preset("default")``: a sharp centre and defocus growing toward
the edges, about 1 wave RMS at the corners; 59-pixel PSF window) with camera noise (:class:`optisim.noise.CameraNoise`
defaults), and every method estimates the sharp image from the blurred one.

As in the paper, every image is the *whole sensor*: the lens's sensor is shrunk to the image size S x S (pixel size
kept, so the PSFs keep their size in pixels and the field coordinates their range), and every sample lies at offset
(0, 0). A plain U-Net can then tell where a pixel lies only from the zero padding, which deep U-Nets carry further
in (the paper's argument); CoordConv and CoordGate get the field coordinates; MultiWienerNet gets 9 PSFs of the lens.

Methods
-------
Models (:mod:`learn.models`, names as in :data:`learn.models.MODEL_NAMES`): U-Net(3..6), CG U-Net(3), CG U-Net(6),
CoordConv-UNet(6) and MultiWienerNet(6), all of first-level width ``width`` (16: CG U-Net(3) then has 58 times fewer
parameters than U-Net(6), the paper's "60x"), all trained by :func:`learn.train.train` with the same budget: ``epochs``
epochs of ``steps_per_epoch`` Adam steps of ``batch_size`` images, learning rate ``lr`` halved after ``patience``
epochs without validation improvement, MSE loss, initialisation seed ``seed``. The checkpoint of the best validation
loss is evaluated. Reference methods (:mod:`learn.baselines`): the blurred input itself; Wiener and Richardson-Lucy
with the centre PSF (``wiener``, ``rl``) and with the lens's low-rank PSF field (``wiener-lowrank``, ``rl-lowrank``:
they know the exact forward model). Wiener balances are tuned on the validation images; RL runs 30 iterations.

Data and held-out test images
-----------------------------
The training data are simulated once into a dataset file (:func:`optisim.dataset.write_dataset`) that every model
reads, not on the fly per model: simulating one 64x64 sample of this lens (8 eigen-PSFs of 59x59 pixels) took 0.05 s
on one CPU thread, twice what a training step of a U-Net(6) spends per sample (0.19 s per batch of 8), and on the fly
it would be repeated for every model and epoch. The file holds ``steps_per_epoch x batch_size`` training and
``val_samples`` validation images. The ``test_samples`` test images come from a second file: for ``synthetic``, scenes
of another seed; for a folder, images held out of training (a fixed fifth of the files, at least one, chosen with a
seeded permutation that does not depend on ``seed``).

Metrics (on the test images)
----------------------------
PSNR (dB, ``10 log10(1 / MSE)`` with data range 1, mean over images) and SSIM (:mod:`learn.metrics`), centre and edge
PSNR from :class:`learn.metrics.RegionMetrics` on a 4x4 grid of sensor regions (centre: the inner 2x2, the middle of
the sensor; edge: the outer band of 12), the trainable parameters, and the inference time per image in ms: median of
``repeat`` timed runs on one test image, all methods interleaved in the same process after two warm-up runs (the
CoordGate gates are then cached, as in deployed inference). Models run on ``device``; baselines on the CPU.

Files written by :func:`learn.experiments.deblur2d_report.save_deblur2d`: ``results.json`` (the dict returned by
:func:`run_deblur2d`: ``config``, ``data``, ``machine``, ``results`` (one row per method), ``claim``, ``seconds``),
``table.md`` and ``fig4b.png``.

Examples
--------
>>> config = make_config(models=["unet:3", "cg-unet:3"])  # doctest: +SKIP
>>> result = run_deblur2d(config, echo=print)  # doctest: +SKIP
>>> from learn.experiments.deblur2d_report import save_deblur2d  # doctest: +SKIP
>>> save_deblur2d(result, "experiments/deblur2d")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from learn.baselines import BALANCES, BASELINES, RL_ITERATIONS, run_baseline, tune_balance
from learn.bench import machine_info
from learn.metrics import RegionMetrics, psnr
from learn.models import MODEL_NAMES
from optisim._keys import reject_unknown_keys

__all__ = [
    "DEFAULT_BASELINES",
    "DEFAULT_MODELS",
    "Deblur2dConfig",
    "make_config",
    "method_label",
    "parse_models",
    "run_deblur2d",
]

DEFAULT_MODELS = (("unet", 3), ("unet", 4), ("unet", 5), ("unet", 6), ("cg-unet", 3), ("cg-unet", 6))
DEFAULT_MODELS += (("coordconv-unet", 6), ("multiwiener", 6))
DEFAULT_BASELINES = ("wiener", "rl", "wiener-lowrank", "rl-lowrank")
LABELS = {"unet": "U-Net", "cg-unet": "CG U-Net", "coordconv-unet": "CoordConv-UNet", "multiwiener": "MultiWienerNet"}
BASELINE_LABELS = {
    "blurred": "blurred input",
    "wiener": "Wiener (centre PSF)",
    "rl": "Richardson-Lucy (centre PSF)",
    "wiener-lowrank": "Wiener (PSF field)",
    "rl-lowrank": "Richardson-Lucy (PSF field)",
}
BASE_SIZE, BASE_STEPS = 64, 120  # image side and steps per epoch at scale 1
QUICK = {"size": 32, "kernel_size": 15, "grid": (5, 5), "width": 8, "epochs": 1, "steps_per_epoch": 3}
QUICK |= {"batch_size": 4, "val_samples": 4, "test_samples": 8, "tune_samples": 4, "repeat": 3}
REGIONS = (4, 4)
TEST_FRACTION = 0.2


def _default_noise() -> dict:
    from optisim.noise import CameraNoise

    return CameraNoise().to_dict()


@dataclass(frozen=True)
class Deblur2dConfig:
    """Settings of one run (see the module docstring); :func:`make_config` builds the scaled and quick ones.

    size : int, image (and sensor) side S in pixels; kernel_size : int or None, PSF window (None: the lens's, 59)
    grid : (gy, gx) PSF grid of the low-rank forward model; noise : CameraNoise fields as a dict, or None
    width : first-level channels of every model; models : ((name, depth), ...); baselines : names of BASELINES
    epochs, steps_per_epoch, batch_size, lr, patience, seed : the training budget, the same for every model
    val_samples, test_samples : images; tune_samples : validation images the Wiener balances are tuned on
    repeat : timed inference runs per method; device : torch device of the models ('cpu', 'cuda', ...)
    """

    source: str = "synthetic"
    size: int = BASE_SIZE
    kernel_size: int | None = None
    grid: tuple[int, int] = (25, 25)
    noise: dict | None = field(default_factory=_default_noise)
    width: int = 16
    models: tuple = DEFAULT_MODELS
    baselines: tuple = DEFAULT_BASELINES
    epochs: int = 12
    steps_per_epoch: int = BASE_STEPS
    batch_size: int = 8
    lr: float = 1e-3
    patience: int = 2
    seed: int = 0
    val_samples: int = 32
    test_samples: int = 64
    tune_samples: int = 16
    repeat: int = 20
    device: str = "cpu"

    def __post_init__(self):
        for key in ("size", "width", "epochs", "steps_per_epoch", "batch_size", "val_samples", "test_samples"):
            _check_int(key, getattr(self, key), 1)
        for key, low in (("tune_samples", 1), ("repeat", 1), ("patience", 0), ("seed", 0)):
            _check_int(key, getattr(self, key), low)
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr: expected a positive learning rate, got {self.lr!r}")
        object.__setattr__(self, "models", parse_models(self.models))
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        baselines = tuple(dict.fromkeys(self.baselines))
        unknown = [b for b in baselines if b not in BASELINES or b == "blurred"]
        if unknown:
            allowed = ", ".join(b for b in BASELINES if b != "blurred")
            raise ValueError(f"baselines: expected names among {allowed}, got {', '.join(map(repr, unknown))}")
        object.__setattr__(self, "baselines", baselines)
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ValueError(
                f"device: expected a torch device such as 'cpu' or 'cuda' (not 'auto'), got {self.device!r}"
            ) from None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["grid"], d["models"], d["baselines"] = list(self.grid), [list(m) for m in self.models], list(self.baselines)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Deblur2dConfig:
        reject_unknown_keys(d, [f.name for f in fields(cls)], "deblur2d config")
        return cls(**d)


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")


def parse_models(specs) -> tuple[tuple[str, int], ...]:
    """``["unet:3", ("cg-unet", 3)]`` -> ``(("unet", 3), ("cg-unet", 3))``, duplicates dropped.

    Raises
    ------
    ValueError : a name not in :data:`learn.models.MODEL_NAMES`, a depth outside 1..8, or no model at all.
    """
    out = []
    for spec in [specs] if isinstance(specs, str) else specs:
        text = spec if isinstance(spec, str) else ":".join(map(str, spec))
        name, _, depth = text.partition(":")
        if name not in MODEL_NAMES or depth not in {str(d) for d in range(1, 9)}:
            raise ValueError(
                f"models: expected NAME:DEPTH with NAME one of {', '.join(MODEL_NAMES)} and DEPTH in 1..8 "
                f"(such as cg-unet:3), got {text!r}"
            )
        out.append((name, int(depth)))
    if not out:
        raise ValueError("models: expected at least one NAME:DEPTH, got none")
    return tuple(dict.fromkeys(out))


def make_config(*, scale: float = 1.0, quick: bool = False, **changes) -> Deblur2dConfig:
    """The run's settings: the default (scale 1: about 30 min on 2 busy CPU cores, one torch thread), scaled, or quick.

    ``scale`` multiplies the image side (64 pixels, rounded to a multiple of 32, at least 64: the default lens's PSF
    window is 59 pixels) and the training steps per epoch (120), so the compute grows about as scale³. ``quick``:
    32x32 images, a 15-pixel PSF window on a 5x5 grid, width 8, 3 steps of 4 (the numbers mean little).
    ``changes`` override single fields (``models`` as NAME:DEPTH strings or pairs).
    """
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale: expected a positive number, got {scale!r}")
    if quick and scale != 1:
        raise ValueError(f"scale: --quick fixes a tiny setting; leave the scale at 1 with it, got {scale!r}")
    if quick:
        base = dict(QUICK)
    else:
        base = {"size": 32 * max(2, round(2 * scale)), "steps_per_epoch": max(1, round(BASE_STEPS * scale))}
    return Deblur2dConfig(**{**base, **changes})


def method_label(name: str, depth: int | None = None) -> str:
    """``("cg-unet", 3)`` -> ``"CG U-Net(3)"``; a baseline name -> its label (``"rl"`` -> ``"Richardson-Lucy ..."``)."""
    return f"{LABELS[name]}({depth})" if depth is not None else BASELINE_LABELS[name]


def _seed(seed: int, what: str) -> int:
    """A seed for one purpose of a run (the test images' stream), apart from the run's own ``seed``."""
    return int(np.random.SeedSequence([seed, zlib.crc32(what.encode())]).generate_state(1)[0])


def _sources(config: Deblur2dConfig, root: Path):
    """(training source, test source, description): a folder is split by file into two linked folders in ``root``."""
    from optisim.samples import make_source
    from optisim.sources import SUFFIXES

    if config.source == "synthetic":
        source = make_source("synthetic")
        return source, source, {"kind": "synthetic"}
    folder = Path(config.source)
    if not folder.is_dir():
        raise ValueError(f"source: expected 'synthetic' or a folder of images, got {config.source!r} (not a folder)")
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    if len(files) < 2:
        raise ValueError(
            f"source: {folder} holds {len(files)} image file(s); holding test images out of training needs at least 2"
        )
    n_test = min(len(files) - 1, max(1, round(TEST_FRACTION * len(files))))
    order = np.random.default_rng(0).permutation(len(files))  # fixed: the same test images for every seed
    split = {"test": sorted(files[i] for i in order[:n_test]), "train": sorted(files[i] for i in order[n_test:])}
    for part, names in split.items():
        (root / part).mkdir(exist_ok=True)  # a reused workdir keeps its links
        for name in names:
            if not (root / part / name).exists():
                os.symlink((folder / name).resolve(), root / part / name)
    info = {"kind": "folder", "path": str(folder.resolve()), "train_files": split["train"], "test_files": split["test"]}
    return make_source(str(root / "train")), make_source(str(root / "test")), info


def _write_data(config: Deblur2dConfig, root: Path, *, progress: bool) -> dict:
    """Simulate ``train.h5`` (train and val splits) and ``test.h5`` (test split) in ``root``; describe them."""
    from optisim.dataset import DatasetConfig, read_forward_model, write_dataset
    from optisim.lens import load_preset
    from optisim.noise import CameraNoise

    t0 = time.perf_counter()
    lens = load_preset("default").replace(sensor_shape=(config.size, config.size))
    noise = None if config.noise is None else CameraNoise.from_dict(config.noise)
    train_source, test_source, info = _sources(config, root)
    common = {"size": config.size, "noise": noise, "kernel_size": config.kernel_size, "grid": config.grid}
    n_train, n_val = config.steps_per_epoch * config.batch_size, config.val_samples
    val = (n_val + 0.5) / (n_train + n_val)  # floor(val * n) = n_val; the train split takes the remainder
    train_config = DatasetConfig(n=n_train + n_val, seed=config.seed, splits=(1 - val, val, 0.0), **common)
    test_config = DatasetConfig(n=config.test_samples, seed=_seed(config.seed, "test"), splits=(0, 0, 1), **common)
    write_dataset(root / "train.h5", lens, train_source, train_config, progress=progress)
    write_dataset(root / "test.h5", lens, test_source, test_config, progress=progress)
    _, forward = read_forward_model(root / "train.h5")
    return {
        "lens": lens.name,
        "sensor_shape": list(lens.sensor_shape),
        "kernel_size": int(forward.kernels.shape[-1]),
        "rank": int(forward.kernels.shape[0]),
        "train": n_train,
        "val": n_val,
        "test": config.test_samples,
        "test_seed": test_config.seed,
        "source": info,
        "seconds": time.perf_counter() - t0,
        "forward": forward,
    }


def _load_split(path: Path, split: str, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(blurred (N, 1, S, S), sharp (N, S, S), offsets (N, 2)) of the first ``count`` images of a split."""
    from learn.data import H5Pairs

    data = H5Pairs(path, split)
    items = [data[i] for i in range(len(data) if count is None else min(count, len(data)))]
    return (
        torch.stack([s["blurred"] for s in items]),
        torch.stack([s["sharp"][0] for s in items]),
        torch.stack([s["offset"] for s in items]),
    )


@torch.no_grad()
def _evaluate(predict, test, sensor_shape, batch_size: int) -> dict:
    """:class:`learn.metrics.RegionMetrics` of ``predict(blurred, offsets) -> (B, S, S)`` over the test images."""
    x, y, off = test
    metrics, per_image = RegionMetrics(sensor_shape, REGIONS), []
    for i in range(0, len(x), batch_size):
        pred = predict(x[i : i + batch_size], off[i : i + batch_size])
        metrics.update(pred, y[i : i + batch_size], off[i : i + batch_size])
        per_image += psnr(pred, y[i : i + batch_size]).tolist()
    return {**metrics.result(), "image_psnr": per_image}


def _model_predictor(model, device):
    def predict(x, off):
        with torch.no_grad():
            return model(x.to(device), off.to(device))[:, 0].float().cpu()

    return predict


def _baseline_predictor(name: str, forward, settings: dict):
    def predict(x, off):
        return run_baseline(name, x, model=forward, offsets=off, **settings)

    return predict


def _run_baselines(config: Deblur2dConfig, data: dict, root: Path, test) -> tuple[list[dict], dict]:
    """Tune (Wiener balances, on the validation images) and evaluate the reference methods; rows and predictors."""
    forward, rows, predictors = data["forward"], [], {}
    val = _load_split(root / "train.h5", "val", config.tune_samples)
    for name in ("blurred", *config.baselines):
        t0 = time.perf_counter()
        settings = {"iterations": RL_ITERATIONS} if name.startswith("rl") else {}
        if name.startswith("wiener"):
            settings["balance"] = tune_balance(name, val[0], val[1], model=forward, offsets=val[2], candidates=BALANCES)
        predictors[name] = _baseline_predictor(name, forward, settings)
        metrics = _evaluate(predictors[name], test, data["sensor_shape"], config.batch_size)
        row = {"method": method_label(name), "kind": "baseline", "name": name, "depth": None, "parameters": 0}
        rows.append({**row, **metrics, "settings": settings, "seconds": time.perf_counter() - t0})
    return rows, predictors


def _train_model(spec, config: Deblur2dConfig, root: Path, *, progress: bool):
    """Train one model on ``train.h5`` and load its best checkpoint; return (model, training record)."""
    from learn.checkpoint import load_checkpoint, load_model
    from learn.config import TrainConfig
    from learn.models import ModelConfig
    from learn.train import train

    name, depth = spec
    train_config = TrainConfig(
        model=ModelConfig(name=name, depth=depth, width=config.width),
        data=str(root / "train.h5"),
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        patience=config.patience,
        seed=config.seed,
        device=config.device,
    )
    run = root / "runs" / f"{name}-{depth}"
    t0 = time.perf_counter()
    summary = train(train_config, run, overwrite=True, progress=progress)
    train_s = time.perf_counter() - t0
    model, _, _ = load_model(run / "best.pt", device=config.device)
    history = load_checkpoint(run / "last.pt")["history"]  # best.pt's history stops at the best epoch
    record = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_s": train_s,
        "epochs": summary["epochs"],
        "steps": summary["steps"],
        "best_epoch": summary["best"]["epoch"],
        "best_val_psnr": summary["best"]["val_psnr"],
        "val_psnr_per_epoch": [row["val_psnr"] for row in history],
        "epoch_s": [row["seconds"] for row in history],
        "train_samples_per_s": summary["train_samples_per_s"],
    }
    return model, record


def _time_methods(predictors: dict, test, repeat: int) -> dict[str, float]:
    """Median ms per image of every method on the first test image, interleaved rounds after two warm-up runs."""
    x, off = test[0][:1], test[2][:1]
    for predict in predictors.values():
        predict(x, off)
        predict(x, off)
    times = {name: [] for name in predictors}
    for _ in range(repeat):  # interleaved, so that the load of a shared machine hits every method alike
        for name, predict in predictors.items():
            t0 = time.perf_counter()
            predict(x, off)  # returns a CPU tensor: a CUDA model is synchronised
            times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def run_deblur2d(config: Deblur2dConfig, *, workdir=None, progress: bool = True, echo=None) -> dict:
    """Simulate the data, train and evaluate every model of ``config``, evaluate the baselines, time them all.

    Parameters
    ----------
    config : :class:`Deblur2dConfig` (:func:`make_config`)
    workdir : folder for the dataset files and training runs (checkpoints), or None for a temporary one, deleted
    progress : bool, tqdm bars (data simulation, training epochs)
    echo : callable(str) or None, called with one line per stage and per trained model

    Runs with torch's current number of threads (the command sets one: on a busy 2-core machine two threads made the
    training steps and the baselines 10 to 40 times slower).

    Returns
    -------
    dict, the content of ``results.json`` (module docstring); ``results`` rows carry ``method``, ``kind`` ('model'
    or 'baseline'), ``name``, ``depth``, ``parameters``, the :class:`learn.metrics.RegionMetrics` result (``psnr``,
    ``ssim``, ``centre_psnr``, ``edge_psnr``, ...), ``image_psnr`` (per test image) and ``inference_ms``; models also
    the training record (``train_s``, ``epoch_s``, ``val_psnr_per_epoch``, ``best_epoch``, ...).
    """
    if not isinstance(config, Deblur2dConfig):
        raise TypeError(f"config: expected a Deblur2dConfig (see make_config), got {type(config).__name__}")
    echo = echo or (lambda line: None)
    t_start, machine = time.perf_counter(), machine_info(config.device)
    with tempfile.TemporaryDirectory(prefix="optisim-deblur2d-") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        data = _write_data(config, root, progress=progress)
        test = _load_split(root / "test.h5", "test")
        echo(
            f"data: {data['train']} training, {data['val']} validation and {data['test']} test images of "
            f"{config.size}x{config.size} (PSF window {data['kernel_size']}, rank {data['rank']}) "
            f"in {data['seconds']:.0f} s"
        )
        baseline_rows, predictors = _run_baselines(config, data, root, test)
        seconds = sum(r["seconds"] for r in baseline_rows)
        echo(f"baselines: {', '.join(r['method'] for r in baseline_rows)} in {seconds:.0f} s")
        rows = []
        for i, spec in enumerate(config.models, 1):
            model, record = _train_model(spec, config, root, progress=progress)
            predictors[spec] = _model_predictor(model, config.device)
            metrics = _evaluate(predictors[spec], test, data["sensor_shape"], config.batch_size)
            label = method_label(*spec)
            rows.append({"method": label, "kind": "model", "name": spec[0], "depth": spec[1], **record, **metrics})
            echo(
                f"[{i}/{len(config.models)}] {label}: {record['parameters']:,} parameters, test PSNR "
                f"{metrics['psnr']:.2f} dB, trained in {record['train_s']:.0f} s "
                f"({statistics.mean(record['epoch_s']):.1f} s per epoch)"
            )
        timings = _time_methods(predictors, test, config.repeat)
    for row in rows + baseline_rows:
        row["inference_ms"] = timings[(row["name"], row["depth"]) if row["kind"] == "model" else row["name"]]
    data.pop("forward")
    result = {
        "experiment": "deblur2d: CoordGate paper, Section IV.B, Fig. 4b (PSNR against log parameter count)",
        "config": config.to_dict(),
        "data": data,
        "machine": machine,
        "results": rows + baseline_rows,
    }
    from learn.experiments.deblur2d_report import check_claim

    result["claim"] = check_claim(result)
    result["seconds"] = result["machine"]["total_s"] = time.perf_counter() - t_start
    if hasattr(os, "getloadavg"):
        result["machine"]["load_average_end"] = list(os.getloadavg())
    return result
