"""Training data: pairs read from an optisim HDF5 dataset, or generated on the fly by the physics layer.

Both yield dicts of tensors: ``blurred`` and ``sharp`` (1, S, S) float32 normalised intensity (axes channel, y, x),
``offset`` (2,) int64 ``(y0, x0)``, the sensor row and column of the crop's first pixel (what CoordGate needs), and
``index`` (the sample's index in the file or in the generator's stream). The DataLoader stacks them into batches.

* :class:`H5Pairs` reads one split of a dataset file (schema in ``data/FORMATS.md``). It opens the file lazily, once
  per process: a DataLoader worker gets its own h5py handle (h5py handles must not cross ``fork``), so any number
  of workers read safely. Only samples whose ``done`` flag is set are used.
* :class:`SimulatedPairs` draws samples ``start, start + 1, ...`` of a :class:`optisim.samples.SampleGenerator`, the
  same code path as the dataset writer: an endless supply of fresh scenes, blur and noise, each a pure function of
  ``(seed, index)``. Rank r of R distributed processes takes indices ``start + r + R*j``; DataLoader workers take
  whole batches of those in turn; so a run is reproducible, independent of the worker count, and resumable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from optisim.dataset import SCHEMA_NAME, SPLIT_NAMES, read_forward_model
from optisim.lens import Lens
from optisim.lowrank import EigenPSFs

__all__ = ["REQUIRED_ARRAYS", "DataInfo", "H5Pairs", "SimulatedPairs", "read_data_info", "worker_init"]

REQUIRED_ARRAYS = ("sharp", "blurred", "offset", "split", "done")
VALIDATION_START = 10**12  # stream index of the first validation sample of a simulated run


@dataclass(frozen=True)
class DataInfo:
    """What a trainer needs to know about a dataset file: the lens, its forward model and the data's fingerprint."""

    path: str
    lens: Lens
    model: EigenPSFs
    fingerprint: str
    size: int
    splits: dict


def _read_arrays(path) -> dict:
    """Check that ``path`` is an optisim dataset with the arrays training needs; read its small arrays."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "No such dataset file", str(path))
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("schema_name") != SCHEMA_NAME:
                raise ValueError(f"{path}: not an optisim dataset (schema {f.attrs.get('schema_name')!r})")
            missing = [name for name in REQUIRED_ARRAYS if name not in f]
            if missing:
                raise ValueError(f"{path}: the dataset lacks the arrays {', '.join(missing)} that training needs")
            return {
                "split": f["split"][:],
                "done": f["done"][:].astype(bool),
                "offset": f["offset"][:].astype(np.int64),
                "fingerprint": str(f.attrs["fingerprint"]),
                "size": int(f["sharp"].shape[-1]),
            }
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 file ({err})") from None


def read_data_info(path) -> DataInfo:
    """Check that ``path`` is an optisim dataset with the arrays training needs, and describe it."""
    arrays = _read_arrays(path)
    lens, model = read_forward_model(path)
    split, done = arrays["split"], arrays["done"]
    splits = {name: int(((split == k) & done).sum()) for k, name in enumerate(SPLIT_NAMES)}
    return DataInfo(str(path), lens, model, arrays["fingerprint"], arrays["size"], splits)


class H5Pairs(Dataset):
    """One split (``train``, ``val``, ``test``) of an HDF5 dataset; one h5py handle per process."""

    def __init__(self, path, split: str = "train"):
        if split not in SPLIT_NAMES:
            raise ValueError(f"split: expected one of {', '.join(SPLIT_NAMES)}, got {split!r}")
        arrays = _read_arrays(path)
        self.path, self.split, self.size, self.offsets = Path(path), split, arrays["size"], arrays["offset"]
        self.indices = np.flatnonzero((arrays["split"] == SPLIT_NAMES.index(split)) & arrays["done"])
        self._file, self._pid = None, None

    def __len__(self) -> int:
        return len(self.indices)

    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file

    def __getitem__(self, i: int) -> dict:
        j = int(self.indices[i])
        f = self._handle()
        return {
            "blurred": torch.from_numpy(f["blurred"][j][None]),
            "sharp": torch.from_numpy(f["sharp"][j][None]),
            "offset": torch.from_numpy(self.offsets[j].copy()),
            "index": j,
        }

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"], state["_pid"] = None, None
        return state


class SimulatedPairs(IterableDataset):
    """``count`` samples of ``generator``'s stream from index ``start`` (this rank's share, see module docstring).

    With ``batch_size``, DataLoader workers take whole batches in turn (worker w the batches b with b % W == w), and
    the DataLoader returns batches in that same round-robin order, so the batches do not depend on the number of
    workers and every batch is complete.
    """

    def __init__(self, generator, *, start: int, count: int, rank: int = 0, world: int = 1, batch_size: int = 1):
        self.generator, self.start, self.count, self.rank, self.world = generator, start, count, rank, world
        self.batch_size = batch_size

    def __len__(self) -> int:
        return self.count

    def indices(self) -> list[int]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        mine = (j for j in range(self.count) if (j // self.batch_size) % workers == worker)
        return [self.start + self.rank + self.world * j for j in mine]

    def __iter__(self):
        for index in self.indices():
            s = self.generator.sample(index)
            yield {
                "blurred": torch.from_numpy(s.blurred[None]),
                "sharp": torch.from_numpy(s.sharp[None]),
                "offset": torch.tensor(s.offset, dtype=torch.int64),
                "index": index,
            }


def worker_init(worker_id: int) -> None:
    """DataLoader worker set-up: one torch thread per worker (the blur in a worker is per sample)."""
    torch.set_num_threads(1)
