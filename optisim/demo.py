"""The physics stages of ``optisim demo`` (the whole demo is orchestrated by :mod:`calibration.demo`).

:func:`lens_stage`: the default lens, its lens file and summary, its PSF grid (NetCDF) and the PSF-grid figure.
:func:`forward_stage`: a small HDF5 training dataset from the built-in scene generator, and one synthetic
full-sensor scene blurred by the same low-rank forward model with camera noise (TIFFs and a figure).

Images are ``(y, x)``; lengths in µm; intensities normalised (1 = the nominal peak of a sharp scene).
"""

from __future__ import annotations

from pathlib import Path

from optisim.lowrank import DEFAULT_GRID

__all__ = ["forward_stage", "lens_stage"]


def lens_stage(out, *, grid=(9, 9), size: int = 64, device=None, progress: bool = True, echo=print):
    """The default lens (defocus growing toward the edges), its summary, PSF grid and PSF-grid figure.

    Parameters
    ----------
    out : folder (created if missing)
    grid : (gy, gx) field points of the PSF grid; size : int, PSF window side in pixels
    device : torch device or None (CPU); progress : bool, a progress bar over the PSFs
    echo : callable(str), receives the lens summary

    Returns
    -------
    (lens, paths) : the :class:`optisim.lens.Lens` and ``{"lens", "lens_summary", "psf_grid", "psf_figure"}``
    """
    from tqdm import tqdm

    from optisim.grid import psf_grid, write_psf_grid
    from optisim.lens import load_preset
    from optisim.plotting import plot_psf_grid
    from optisim.summary import lens_summary

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lens = load_preset("default")
    paths = {"lens": lens.save(out / "lens.toml")}
    summary = lens_summary(lens)
    (out / "lens.txt").write_text(summary + "\n", encoding="utf-8")
    paths["lens_summary"] = out / "lens.txt"
    echo(summary)
    with tqdm(total=grid[0] * grid[1], desc="PSF grid", unit="psf", disable=not progress, leave=False) as bar:
        ds = psf_grid(lens, grid=tuple(grid), size=size, device=device, progress=bar.update)
    paths["psf_grid"] = write_psf_grid(ds, out / "psfs.nc")
    paths["psf_figure"] = plot_psf_grid(ds, out / "psf_grid.png")
    return lens, paths


def forward_stage(
    lens, out, *, n: int = 256, size: int = 128, grid=DEFAULT_GRID, seed: int = 0, device=None, progress=True
):
    """A training dataset of ``n`` crops and one full-sensor scene, both blurred by the lens's low-rank model.

    The dataset is written first (:func:`optisim.dataset.write_dataset`, camera noise, splits 0.8/0.1/0.1); the
    full-sensor scene (:func:`optisim.scenes.fluorescence_scene`) is then blurred with the eigen-PSFs stored in the
    dataset, so the PSF grid is computed once.

    Parameters
    ----------
    lens : Lens; out : folder (created if missing)
    n : int, samples; size : int, crop side in pixels (at least the PSF window)
    grid : (gy, gx) field points of the PSF grid behind the low-rank model
    seed : int, seeds the dataset, the scene and its noise
    device : torch device or None (CPU) for the full-sensor blur; progress : bool, the dataset's progress bar

    Returns
    -------
    (paths, info) : ``{"dataset", "sharp", "blurred", "blur_figure"}`` (the TIFFs hold the scene, ``(y, x)``) and
    ``{"rank": eigen-PSFs K, "kernel_size": PSF window in pixels}``
    """
    import numpy as np

    from optisim.dataset import DatasetConfig, read_forward_model, write_dataset
    from optisim.io import write_tiff
    from optisim.noise import CameraNoise
    from optisim.plotting import plot_blur
    from optisim.samples import make_source
    from optisim.scenes import fluorescence_scene
    from optisim.simulate import simulate_image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = DatasetConfig(n=n, size=size, seed=seed, grid=tuple(grid))
    write_dataset(out / "dataset.h5", lens, make_source("synthetic"), config, overwrite=True, progress=progress)
    _, model = read_forward_model(out / "dataset.h5")
    scene = fluorescence_scene(lens.sensor_shape, np.random.default_rng(seed))
    sim = simulate_image(lens, scene, noise=CameraNoise(), seed=seed, model=model, device=device)
    paths = {
        "dataset": out / "dataset.h5",
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
    return paths, {"rank": int(model.rank), "kernel_size": int(model.kernels.shape[-1])}
