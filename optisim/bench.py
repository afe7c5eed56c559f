"""Benchmarks that print figures (``optisim bench ...``); never timed unit tests.

``bench_psf``: PSFs per second of the torch MFT backend and of poppy computing the same PSFs on this machine,
their ratio, and the relative L2 difference between the two (the accuracy that the speed is bought at).
"""

from __future__ import annotations

import platform
import time

import numpy as np

__all__ = ["bench_psf", "format_bench_psf"]


def bench_psf(
    *,
    preset: str = "default",
    grid: int = 21,
    size: int = 64,
    pupil_samples: int = 128,
    repeat: int = 10,
    poppy_points: int | None = None,
    device=None,
    progress=None,
) -> dict:
    """Time the PSFs of a ``grid x grid`` field grid with optisim (torch) and with poppy.

    Parameters
    ----------
    preset : lens preset; grid : field points per axis; size : PSF pixels per side; pupil_samples : pupil grid
    repeat : timed repetitions of the torch computation (after one warm-up); the best is reported
    poppy_points : time poppy on this many of the field points (evenly spread; all when None)
    device : torch device (CPU when None)
    progress : callable(int) or None, advanced once per poppy PSF

    Returns
    -------
    dict with the figures (see :func:`format_bench_psf`).
    """
    import torch

    from optisim.field import field_grid
    from optisim.lens import load_preset
    from optisim.poppy_backend import poppy_psfs
    from optisim.psf import compute_psfs

    lens = load_preset(preset).replace(pupil_samples=pupil_samples)
    hy, hx = field_grid(lens.sensor_shape, (grid, grid))
    hyy, hxx = (a.ravel() for a in np.meshgrid(hy, hx, indexing="ij"))
    n = len(hxx)

    def run():
        out = compute_psfs(lens, hxx, hyy, size=size, device=device, batch_size=n)[0]
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        return out

    ours = run()  # warm-up (allocations, caches)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        ours = run()
        times.append(time.perf_counter() - t0)
    pick = np.arange(n) if poppy_points is None else np.unique(np.linspace(0, n - 1, poppy_points).round().astype(int))
    poppy_psfs(lens, hxx[:1], hyy[:1], size=size)  # warm-up (imports, poppy's caches)
    t0 = time.perf_counter()
    ref = poppy_psfs(lens, hxx[pick], hyy[pick], size=size, progress=progress)
    t_poppy = time.perf_counter() - t0
    err = np.linalg.norm(ours[pick] - ref, axis=(1, 2)) / np.linalg.norm(ref, axis=(1, 2))
    ours_rate = n / min(times)
    poppy_rate = len(pick) / t_poppy
    return {
        "machine": f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}",
        "device": str(device or "cpu"),
        "lens": preset,
        "grid": grid,
        "size": size,
        "pupil_samples": pupil_samples,
        "n_psfs": n,
        "optisim_seconds": min(times),
        "optisim_psfs_per_s": ours_rate,
        "poppy_psfs": len(pick),
        "poppy_seconds": t_poppy,
        "poppy_psfs_per_s": poppy_rate,
        "speedup": ours_rate / poppy_rate,
        "max_rel_l2": float(err.max()),
        "mean_rel_l2": float(err.mean()),
    }


def format_bench_psf(r: dict) -> str:
    """The figures of :func:`bench_psf` as a small table."""
    ok_speed = "meets" if r["speedup"] >= 20 else "MISSES"
    ok_err = "meets" if r["max_rel_l2"] < 1e-3 else "MISSES"
    return "\n".join(
        [
            f"PSF benchmark: {r['grid']}x{r['grid']} field grid of {r['size']}x{r['size']} PSFs, "
            f"{r['pupil_samples']} pupil samples, lens '{r['lens']}' ({r['machine']}, {r['device']})",
            f"  optisim (torch MFT, batched) {r['n_psfs']:5d} PSFs in {r['optisim_seconds']:8.3f} s = "
            f"{r['optisim_psfs_per_s']:9.1f} PSFs/s (best of repeats)",
            f"  poppy (OpticalSystem + MFT)  {r['poppy_psfs']:5d} PSFs in {r['poppy_seconds']:8.3f} s = "
            f"{r['poppy_psfs_per_s']:9.1f} PSFs/s",
            f"  speed-up                     {r['speedup']:.1f}x   (target >= 20x: {ok_speed})",
            f"  relative L2 difference       max {r['max_rel_l2']:.2e}, mean {r['mean_rel_l2']:.2e}   "
            f"(target < 1e-3: {ok_err})",
        ]
    )
