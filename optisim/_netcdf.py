"""Reading optisim's NetCDF-4 (HDF5) files: one place for the existence and readability checks."""

from __future__ import annotations

from pathlib import Path

__all__ = ["load_dataset"]


def load_dataset(path, what: str):
    """The NetCDF-4 file at ``path`` loaded into memory as an ``xarray.Dataset`` (engine ``h5netcdf``).

    Raises
    ------
    FileNotFoundError
        ``f"{what} not found: {path}"``.
    ValueError
        The file is not a readable NetCDF-4 (HDF5) file; the message names the path and the reader's reason.
    """
    import xarray as xr

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            return ds.load()
    except (OSError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{path}: not a readable NetCDF-4 (HDF5) file ({reason})") from None
