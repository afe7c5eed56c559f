"""``optisim bench learn``: the learning layer's figures (nothing is asserted; the README records them).

1. Accuracy at equal training steps: models trained on the same dataset from the default lens (defocus growing toward
   the edges), each for the same number of optimiser steps with the same batch, then evaluated on the test split:
   PSNR and SSIM overall, at the centre and at the edges of the sensor (:class:`learn.metrics.RegionMetrics`, 4x4
   regions: the inner 2x2 are the centre), and parameter counts.
2. CoordGate overhead: inference time of a CG U-Net(d) with cached gates against its U-Net(d) backbone at 512x512,
   median of repeated runs, measured side by side in one process (and the uncached time, for reference).
3. Throughput: training samples/s (from the runs above) and inference megapixels/s.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from learn.config import TrainConfig
from learn.data import H5Pairs
from learn.evaluate import evaluate
from learn.models import ModelConfig, build_model

__all__ = [
    "bench_accuracy",
    "bench_inference",
    "format_accuracy",
    "format_inference",
    "machine_info",
    "parse_model_spec",
]


def machine_info(device="cpu") -> dict:
    """What a benchmark ran on: platform, processor, Python, CPU count, torch version and threads, ``device`` (and the
    GPU's name on CUDA), the local date-time with its UTC offset, and the load average (where the OS has one)."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    if str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    if hasattr(os, "getloadavg"):
        info["load_average_start"] = list(os.getloadavg())
    return info


def parse_model_spec(spec: str) -> tuple[str, int]:
    """``"cg-unet:3"`` -> ("cg-unet", 3)."""
    name, sep, depth = spec.partition(":")
    if not sep or not depth.isdigit():
        raise ValueError(f"model: expected NAME:DEPTH such as cg-unet:3, got {spec!r}")
    return name, int(depth)


def bench_accuracy(
    data,
    out,
    *,
    specs,
    steps: int,
    batch: int = 16,
    width: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    device="cpu",
    progress: bool = True,
    echo=print,
) -> list[dict]:
    """Train each ``(name, depth)`` in ``specs`` for ``steps`` optimiser steps on ``data``; test-split metrics."""
    from learn.train import train

    n_train = len(H5Pairs(data, "train"))
    per_epoch = n_train // batch
    if per_epoch < 1:
        raise ValueError(f"{data}: {n_train} training samples, fewer than one batch of {batch}")
    epochs = math.ceil(steps / per_epoch)
    rows = []
    for name, depth in specs:
        config = TrainConfig(
            model=ModelConfig(name=name, depth=depth, width=width),
            data=str(data),
            epochs=epochs,
            batch_size=batch,
            lr=lr,
            patience=max(2, epochs // 5),
            seed=seed,
            device=str(device),
        )
        run = Path(out) / f"{name}-{depth}"
        echo(f"training {name}({depth}) width {width}: {epochs} epochs x {per_epoch} steps of {batch}")
        summary = train(config, run, overwrite=True, progress=progress)
        result = evaluate(run / "best.pt", data, split="test", baselines=["blurred"], device=device, progress=False)
        if not rows:
            blurred = result["methods"]["blurred"]
            rows.append({"model": "blurred input", "parameters": 0, "steps": 0, "train_samples_per_s": None, **blurred})
        rows.append(
            {
                "model": f"{name}({depth})",
                "parameters": summary["parameters"],
                "steps": summary["steps"],
                "train_samples_per_s": summary["train_samples_per_s"],
                **result["methods"]["model"],
            }
        )
    return rows


@torch.no_grad()
def _time(model, x, offsets, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        model(x, offsets)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def bench_inference(*, size: int = 512, depths=(3,), width: int = 32, repeat: int = 10, device="cpu") -> list[dict]:
    """CG U-Net(d) with cached gates against U-Net(d) at ``size`` x ``size``, side by side, interleaved runs."""
    device = torch.device(device)
    x = torch.rand(1, 1, size, size, device=device)
    offsets = torch.zeros(1, 2, dtype=torch.long, device=device)
    rows = []
    for depth in depths:
        models = {}
        for name in ("unet", "cg-unet"):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                config = ModelConfig(name=name, depth=depth, width=width, sensor_shape=(size, size))
                models[name] = build_model(config).to(device).eval()
        for m in models.values():
            _time(m, x, offsets, 2)  # warm-up (and the gate cache)
        times = {name: [] for name in models}
        for _ in range(repeat):  # interleaved so that machine noise hits both alike
            for name, m in models.items():
                times[name] += _time(m, x, offsets, 1)
        uncached = _time_uncached(models["cg-unet"], x, offsets, max(3, repeat // 3))
        med = {name: statistics.median(t) for name, t in times.items()}
        rows.append(
            {
                "depth": depth,
                "size": size,
                "width": width,
                "unet_ms": 1e3 * med["unet"],
                "cg_unet_ms": 1e3 * med["cg-unet"],
                "ratio": med["cg-unet"] / med["unet"],
                "cg_unet_uncached_ms": 1e3 * statistics.median(uncached),
                "unet_mpix_s": size * size / med["unet"] / 1e6,
                "cg_unet_mpix_s": size * size / med["cg-unet"] / 1e6,
                "device": str(device),
            }
        )
    return rows


def _time_uncached(model, x, offsets, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        for module in model.modules():
            if hasattr(module, "clear_cache"):
                module.clear_cache()
        times += _time(model, x, offsets, 1)
    return times


def format_accuracy(rows: list[dict]) -> str:
    lines = [f"{'model':<16}{'params':>11}{'steps':>7}{'PSNR':>8}{'SSIM':>8}{'centre':>8}{'edge':>8}{'train/s':>9}"]
    for r in rows:
        rate = "" if r["train_samples_per_s"] is None else f"{r['train_samples_per_s']:.1f}"
        lines.append(
            f"{r['model']:<16}{r['parameters']:>11,}{r['steps']:>7}{r['psnr']:>8.2f}{r['ssim']:>8.4f}"
            f"{r['centre_psnr']:>8.2f}{r['edge_psnr']:>8.2f}{rate:>9}"
        )
    lines.append("PSNR in dB on the test split; centre = inner 2x2 of 4x4 sensor regions, edge = the other 12")
    return "\n".join(lines)


def format_inference(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        lines.append(
            f"depth {r['depth']} at {r['size']}x{r['size']}, width {r['width']}, {r['device']}: U-Net "
            f"{r['unet_ms']:.1f} ms ({r['unet_mpix_s']:.2f} MP/s), CG U-Net cached {r['cg_unet_ms']:.1f} ms "
            f"({r['cg_unet_mpix_s']:.2f} MP/s) = {r['ratio']:.3f}x (target <= 1.25); uncached "
            f"{r['cg_unet_uncached_ms']:.1f} ms"
        )
    return "\n".join(lines)
