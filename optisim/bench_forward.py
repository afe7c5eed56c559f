"""Benchmarks of the forward model (``optisim bench forward``, ``optisim bench dataset``); they print figures.

``bench_forward``: time of the low-rank operator on an image against the time of one real 2-D FFT of the padded
image (the mean of one ``rfft2`` and one ``irfft2``), measured interleaved in the same run; the method's floor is
K + 1 transforms and the target is at most 1.5 (K + 1). Also the per-image time for batches (linear scaling) and
the adjoint.

``accuracy_table``: relative L2 error of the low-rank operator against the exact one on a 128x128 sensor region,
for a range of ranks (the table in the README).

``bench_dataset``: samples per second of ``write_dataset`` (generation, blur, noise, HDF5 writing).
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["accuracy_table", "bench_dataset", "bench_forward", "format_accuracy", "format_forward"]


def _machine(torch) -> str:
    return f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def bench_forward(
    *,
    preset: str = "default",
    size: int = 512,
    rank: int = 8,
    kernel_size: int = 31,
    batches=(1, 4, 8),
    repeat: int = 30,
    device=None,
) -> dict:
    """Time the low-rank operator (K = ``rank`` eigen-PSFs of ``kernel_size``) on ``size x size`` images."""
    import torch

    from optisim.blur import padded_shape, product_convolution, product_convolution_adjoint
    from optisim.lens import load_preset
    from optisim.lowrank import EigenPSFs

    device = torch.device("cpu" if device is None else device)
    lens = load_preset(preset).replace(sensor_shape=(size, size))
    model = EigenPSFs.from_lens(lens, kernel_size=kernel_size, rank=rank, device=device)
    op = model.operator(device=device)
    hp, wp = padded_shape((size, size), op.kernels.shape)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.rand(1, size, size, generator=gen).to(device)
    padded = torch.rand(1, hp, wp, generator=gen).to(device)
    spectrum = torch.fft.rfft2(padded)

    def timed(f):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        f()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    steps = {
        "rfft2": lambda: torch.fft.rfft2(padded),
        "irfft2": lambda: torch.fft.irfft2(spectrum, s=(hp, wp)),
        "forward": lambda: product_convolution(x, op.weights, op.kernels, spectra=op.spectra),
        "adjoint": lambda: product_convolution_adjoint(x, op.weights, op.kernels, spectra=op.spectra),
    }
    times = {k: [] for k in steps}
    with torch.no_grad():
        for f in steps.values():  # warm-up
            f()
        for _ in range(repeat):  # interleaved, so that machine load hits every figure alike
            for k, f in steps.items():
                times[k].append(timed(f))
        per_image = {}
        for b in batches:
            xb = torch.rand(b, size, size, generator=gen).to(device)
            product_convolution(xb, op.weights, op.kernels, spectra=op.spectra)
            t = [
                timed(lambda xb=xb: product_convolution(xb, op.weights, op.kernels, spectra=op.spectra))
                for _ in range(max(3, repeat // b))
            ]
            per_image[b] = float(np.median(t)) / b
    med = {k: float(np.median(v)) for k, v in times.items()}
    fft = (med["rfft2"] + med["irfft2"]) / 2
    return {
        "machine": _machine(torch),
        "device": str(device),
        "size": size,
        "rank": model.rank,
        "kernel_size": kernel_size,
        "padded": (hp, wp),
        "rfft2_s": med["rfft2"],
        "irfft2_s": med["irfft2"],
        "fft_s": fft,
        "forward_s": med["forward"],
        "adjoint_s": med["adjoint"],
        "forward_in_ffts": med["forward"] / fft,
        "adjoint_in_ffts": med["adjoint"] / fft,
        "target_in_ffts": 1.5 * (model.rank + 1),
        "per_image_s": per_image,
        "repeat": repeat,
    }


def format_forward(r: dict) -> str:
    k = r["rank"]
    ok = "meets" if r["forward_in_ffts"] <= r["target_in_ffts"] else "MISSES"
    lines = [
        f"Forward benchmark: {r['size']}x{r['size']} image, K = {k} eigen-PSFs of {r['kernel_size']}x"
        f"{r['kernel_size']}, FFT size {r['padded'][0]}x{r['padded'][1]} ({r['machine']}, {r['device']}; "
        f"medians of {r['repeat']} interleaved runs)",
        f"  one rfft2 {r['rfft2_s'] * 1e3:.3f} ms, one irfft2 {r['irfft2_s'] * 1e3:.3f} ms: "
        f"one transform = {r['fft_s'] * 1e3:.3f} ms",
        f"  forward  {r['forward_s'] * 1e3:8.3f} ms = {r['forward_in_ffts']:.2f} transforms "
        f"(floor K + 1 = {k + 1}, target <= {r['target_in_ffts']:.1f}: {ok})",
        f"  adjoint  {r['adjoint_s'] * 1e3:8.3f} ms = {r['adjoint_in_ffts']:.2f} transforms",
    ]
    base = r["per_image_s"][min(r["per_image_s"])]
    for b, t in r["per_image_s"].items():
        lines.append(
            f"  batch {b:3d}: {t * 1e3:8.3f} ms per image ({t * b * 1e3:.2f} ms per batch, "
            f"{t / base:.2f}x the single-image time per image)"
        )
    return "\n".join(lines)


def accuracy_table(
    *,
    preset: str = "default",
    offset=(384, 384),
    size: int = 128,
    ranks=None,
    grid=None,
    kernel_size=None,
    device=None,
    progress=None,
) -> dict:
    """Relative L2 error of 'lowrank' against 'exact' on a ``size`` region at ``offset``, for several ranks.

    The test image is uniform random noise (every spatial frequency) in float64.
    """
    import torch

    from optisim.blur import exact_blur
    from optisim.grid import psf_grid
    from optisim.lens import load_preset
    from optisim.lowrank import DEFAULT_GRID, DEFAULT_TOL, EigenPSFs, exact_psfs, kernel_size_for

    lens = load_preset(preset)
    grid = DEFAULT_GRID if grid is None else grid
    ks = kernel_size_for(lens) if kernel_size is None else kernel_size
    x = torch.rand(size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    psfs = exact_psfs(
        lens, kernel_size=ks, offset=offset, shape=(size, size), dtype=torch.float64, device=device, progress=progress
    )
    reference = exact_blur(x, torch.as_tensor(psfs))
    ds = psf_grid(lens, grid=grid, size=ks)
    chosen = EigenPSFs.from_psf_grid(ds, tol=DEFAULT_TOL).rank
    ranks = sorted(set(ranks or range(1, max(chosen + 4, 12) + 1)) | {chosen})
    rows = []
    for k in ranks:
        model = EigenPSFs.from_psf_grid(ds, rank=k)
        y = model.operator(offset, (size, size), dtype=torch.float64)(x)
        err = float((y - reference).norm() / reference.norm())
        rows.append({"rank": k, "grid_error": model.relative_error, "image_error": err})
    return {
        "lens": preset,
        "offset": offset,
        "size": size,
        "grid": grid,
        "kernel_size": ks,
        "tol": DEFAULT_TOL,
        "chosen_rank": chosen,
        "rows": rows,
    }


def format_accuracy(r: dict) -> str:
    lines = [
        f"Low-rank vs exact: lens '{r['lens']}', {r['size']}x{r['size']} region at sensor offset {r['offset']}, "
        f"{r['kernel_size']}x{r['kernel_size']} PSFs, {r['grid'][0]}x{r['grid'][1]} PSF grid",
        "  rank  PSF-grid error  image error vs exact",
    ]
    for row in r["rows"]:
        mark = f"  <- chosen by tol {r['tol']:g}" if row["rank"] == r["chosen_rank"] else ""
        lines.append(f"  {row['rank']:4d}  {row['grid_error']:14.2e}  {row['image_error']:20.2e}{mark}")
    return "\n".join(lines)


def bench_dataset(
    *, preset: str = "default", n: int = 400, size: int = 256, workers=(0, 2), noise: bool = True, directory=None
) -> dict:
    """Samples per second of :func:`optisim.dataset.write_dataset` (synthetic scenes, lowrank, noise, HDF5)."""
    import torch

    from optisim.dataset import DatasetConfig, write_dataset
    from optisim.lens import load_preset
    from optisim.noise import CameraNoise
    from optisim.samples import make_source

    lens = load_preset(preset)
    config = DatasetConfig(n=n, size=size, seed=0, noise=CameraNoise() if noise else None)
    rows = []
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        for w in workers:
            path = Path(tmp) / f"bench_{w}.h5"
            t0 = time.perf_counter()
            r = write_dataset(path, lens, make_source("synthetic"), config, workers=w, progress=False)
            total = time.perf_counter() - t0
            rows.append(
                {
                    "workers": w,
                    "seconds": total,
                    "setup_s": r["seconds_setup"],
                    "generate_s": r["seconds_generate"],
                    "samples_per_s": n / r["seconds_generate"],
                    "overall_per_s": n / total,
                    "file_mb": path.stat().st_size / 2**20,
                }
            )
    return {"machine": _machine(torch), "lens": preset, "n": n, "size": size, "noise": noise, "rows": rows}


def format_dataset(r: dict) -> str:
    lines = [
        f"Dataset benchmark: {r['n']} samples of {r['size']}x{r['size']}, lens '{r['lens']}', lowrank, "
        f"noise {'on' if r['noise'] else 'off'}, HDF5 gzip ({r['machine']})",
        "  workers  setup s  generate s  samples/s  overall samples/s  file MiB",
    ]
    for row in r["rows"]:
        ok = "meets" if row["samples_per_s"] >= 50 else "MISSES"
        lines.append(
            f"  {row['workers']:7d}  {row['setup_s']:7.2f}  {row['generate_s']:10.2f}  "
            f"{row['samples_per_s']:9.1f}  {row['overall_per_s']:17.1f}  {row['file_mb']:8.1f}"
            f"   (target >= 50/s: {ok})"
        )
    return "\n".join(lines)
