"""The main job end-to-end on built-in defaults (``optisim demo``).

Stage 1 (the physics layer): the default lens, its lens file and summary, its PSF grid (NetCDF) and the PSF-grid
figure. Later stages (dataset, training, deblurring, calibration) extend this same function.
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

    echo("[1/1] physics: default lens -> PSF grid -> figure")
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
    echo(f"wrote {', '.join(str(p) for p in paths.values())}")
    return paths
