"""The main job end-to-end on built-in defaults (``optisim demo``).

Stage 1 (the physics layer): the default lens, its lens file and summary, its PSF grid (NetCDF) and the PSF-grid
figure. Stage 2 (the forward model): a synthetic full-sensor scene blurred by the lens with camera noise (TIFFs and a
figure), and a small HDF5 training dataset. Later stages (training, deblurring, calibration) extend this function.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["run_demo"]


def run_demo(output_dir, *, quick: bool = False, device=None, echo=print) -> dict:
    """Run the demo into ``output_dir`` and return the paths it wrote.

    Parameters
    ----------
    output_dir : folder (created if missing)
    quick : bool, smaller sizes (for CI); the outputs are the same kinds of files
    device : torch device or None (CPU)
    echo : callable(str) for progress lines
    """
    from tqdm import tqdm

    from optisim.grid import psf_grid, write_psf_grid
    from optisim.lens import load_preset
    from optisim.plotting import plot_psf_grid
    from optisim.summary import lens_summary

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid, size = ((5, 5), 48) if quick else ((9, 9), 64)

    echo("[1/2] physics: default lens -> PSF grid -> figure")
    lens = load_preset("default")
    paths = {"lens": lens.save(out / "lens.toml")}
    summary = lens_summary(lens)
    (out / "lens.txt").write_text(summary + "\n", encoding="utf-8")
    paths["lens_summary"] = out / "lens.txt"
    echo(summary)
    with tqdm(total=grid[0] * grid[1], desc="PSF grid", unit="psf", disable=None) as bar:
        ds = psf_grid(lens, grid=grid, size=size, device=device, progress=bar.update)
    paths["psf_grid"] = write_psf_grid(ds, out / "psfs.nc")
    paths["psf_figure"] = plot_psf_grid(ds, out / "psf_grid.png")
    paths.update(_forward_stage(lens, out, quick=quick, device=device, echo=echo))
    echo(f"wrote {', '.join(str(p) for p in paths.values())}")
    return paths


def _forward_stage(lens, out: Path, *, quick: bool, device, echo) -> dict:
    import numpy as np

    from optisim.dataset import DatasetConfig, write_dataset
    from optisim.io import write_tiff
    from optisim.noise import CameraNoise
    from optisim.plotting import plot_blur
    from optisim.samples import make_source
    from optisim.scenes import fluorescence_scene
    from optisim.simulate import simulate_image

    n, size = (32, 64) if quick else (256, 128)
    echo(f"[2/2] forward model: full-sensor scene -> blur + noise; dataset of {n} samples of {size}x{size}")
    scene = fluorescence_scene(lens.sensor_shape, np.random.default_rng(0))
    sim = simulate_image(lens, scene, noise=CameraNoise(), seed=0, device=device)
    paths = {
        "sharp": write_tiff(out / "sharp.tif", sim.sharp, pixel_um=lens.pixel_um, metadata={"role": "sharp scene"}),
        "blurred": write_tiff(
            out / "blurred.tif", sim.blurred, pixel_um=lens.pixel_um, metadata={"noise": CameraNoise().to_dict()}
        ),
    }
    paths["blur_figure"] = plot_blur(
        sim.sharp,
        sim.blurred,
        out / "blur.png",
        title=f"default lens, low-rank blur (K = {sim.rank}) with camera noise: sharp centre, blurred corners",
    )
    config = DatasetConfig(n=n, size=size, seed=0)
    write_dataset(out / "dataset.h5", lens, make_source("synthetic"), config, overwrite=True)
    paths["dataset"] = out / "dataset.h5"
    return paths
