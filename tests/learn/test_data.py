"""Training data: H5Pairs against the file's own arrays (h5py), its per-process handle (pickling, DataLoader workers),
the errors people can act on, and SimulatedPairs' split of the sample stream across ranks and workers."""

import pickle
import shutil
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import learn.data
from learn.data import REQUIRED_ARRAYS, H5Pairs, SimulatedPairs, read_data_info
from optisim.dataset import SPLIT_NAMES, DatasetConfig, write_dataset
from optisim.lens import load_preset
from optisim.samples import SampleGenerator, make_source

SENSOR, SIZE, N = 128, 32, 24
CONFIG = DatasetConfig(n=N, size=SIZE, seed=0, kernel_size=15, grid=(5, 5))


@pytest.fixture(scope="module")
def lens():
    return load_preset("default").replace(sensor_shape=(SENSOR, SENSOR))


@pytest.fixture(scope="module")
def dataset(lens, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.h5"
    write_dataset(path, lens, make_source("synthetic"), CONFIG, progress=False)
    return path


@pytest.fixture(scope="module")
def arrays(dataset) -> dict:
    with h5py.File(dataset, "r") as f:
        return {name: f[name][:] for name in REQUIRED_ARRAYS}


def copy_of(dataset, tmp_path):
    return shutil.copy(dataset, tmp_path / "copy.h5")


def assert_item_matches_file(item, arrays, j):
    assert item["index"] == j
    for name in ("blurred", "sharp"):
        assert item[name].dtype == torch.float32
        assert item[name].shape == (1, SIZE, SIZE)
        np.testing.assert_array_equal(item[name][0].numpy(), arrays[name][j])
    assert item["offset"].dtype == torch.int64
    np.testing.assert_array_equal(item["offset"].numpy(), arrays["offset"][j])


# ---- H5Pairs -------------------------------------------------------------------------------------------------------


def test_read_data_info(dataset, lens, arrays):
    info = read_data_info(dataset)
    assert info.size == SIZE
    assert info.lens.sensor_shape == lens.sensor_shape
    assert sum(info.splits.values()) == N
    for k, name in enumerate(SPLIT_NAMES):
        assert info.splits[name] == int(((arrays["split"] == k) & (arrays["done"] == 1)).sum())


@pytest.mark.parametrize("split", SPLIT_NAMES)
def test_h5pairs_items_equal_the_files_arrays(dataset, arrays, split):
    ds = H5Pairs(dataset, split)
    expected = np.flatnonzero((arrays["split"] == SPLIT_NAMES.index(split)) & (arrays["done"] == 1))
    assert len(ds) == len(expected) > 0
    np.testing.assert_array_equal(ds.indices, expected)
    for i, j in enumerate(expected):
        assert_item_matches_file(ds[i], arrays, j)
    offsets = np.stack([ds[i]["offset"].numpy() for i in range(len(ds))])
    assert (offsets >= 0).all() and (offsets <= SENSOR - SIZE).all()  # each crop lies on the sensor


def test_h5pairs_splits_partition_the_file(dataset):
    seen = np.concatenate([H5Pairs(dataset, split).indices for split in SPLIT_NAMES])
    np.testing.assert_array_equal(np.sort(seen), np.arange(N))


def test_h5pairs_uses_only_done_samples(dataset, arrays, tmp_path):
    path = copy_of(dataset, tmp_path)
    train = np.flatnonzero(arrays["split"] == 0)
    unfinished = train[[0, 3]]
    with h5py.File(path, "r+") as f:
        done = f["done"][:]
        done[unfinished] = 0
        f["done"][:] = done
    ds = H5Pairs(path, "train")
    np.testing.assert_array_equal(ds.indices, np.setdiff1d(train, unfinished))
    assert read_data_info(path).splits["train"] == len(train) - 2
    for i, j in enumerate(ds.indices):
        assert_item_matches_file(ds[i], arrays, j)


def test_h5pairs_pickles_after_opening_its_handle(dataset, arrays):
    ds = H5Pairs(dataset, "train")
    first = ds[0]  # opens the h5py handle
    assert ds._file is not None
    copy = pickle.loads(pickle.dumps(ds))  # an h5py.File itself cannot be pickled
    assert copy._file is None
    for i in (0, len(ds) - 1):
        assert_item_matches_file(copy[i], arrays, ds.indices[i])
    assert torch.equal(copy[0]["blurred"], first["blurred"])
    assert_item_matches_file(ds[1], arrays, ds.indices[1])  # the original's handle still works


@pytest.mark.parametrize("opened", [False, True])
def test_h5pairs_through_dataloader_workers(dataset, arrays, opened):
    """Two worker processes each open their own handle (also when the parent's handle is already open)."""
    ds = H5Pairs(dataset, "train")
    if opened:
        ds[0]
        ds = pickle.loads(pickle.dumps(ds))
        ds[0]
    loader = DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    batches = list(loader)
    index = torch.cat([b["index"] for b in batches]).numpy()
    np.testing.assert_array_equal(index, ds.indices)
    blurred = torch.cat([b["blurred"] for b in batches])
    assert blurred.shape == (len(ds), 1, SIZE, SIZE)
    np.testing.assert_array_equal(blurred[:, 0].numpy(), arrays["blurred"][ds.indices])
    np.testing.assert_array_equal(torch.cat([b["sharp"] for b in batches])[:, 0].numpy(), arrays["sharp"][ds.indices])
    np.testing.assert_array_equal(torch.cat([b["offset"] for b in batches]).numpy(), arrays["offset"][ds.indices])


def test_h5pairs_items_do_not_alias_the_dataset(dataset, arrays):
    ds = H5Pairs(dataset, "train")
    ds[0]["offset"].add_(1)
    np.testing.assert_array_equal(ds[0]["offset"].numpy(), arrays["offset"][ds.indices[0]])


@pytest.mark.parametrize("missing", REQUIRED_ARRAYS)
def test_h5pairs_missing_array(dataset, tmp_path, missing):
    path = copy_of(dataset, tmp_path)
    with h5py.File(path, "r+") as f:
        del f[missing]
    with pytest.raises(ValueError, match=rf"the dataset lacks the arrays {missing} that training needs"):
        H5Pairs(path)


def test_h5pairs_not_hdf5(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("not an HDF5 file\n")
    with pytest.raises(ValueError, match=r"notes\.h5: not a readable HDF5 file"):
        H5Pairs(path)


def test_h5pairs_hdf5_but_not_a_dataset(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["sharp"] = np.zeros((2, 4, 4), "f4")
    with pytest.raises(ValueError, match=r"other\.h5: not an optisim dataset \(schema None\)"):
        H5Pairs(path)


def test_h5pairs_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No such dataset file.*nowhere\.h5"):
        H5Pairs(tmp_path / "nowhere.h5")


def test_h5pairs_bad_split(dataset):
    with pytest.raises(ValueError, match=r"split: expected one of train, val, test, got 'bogus'"):
        H5Pairs(dataset, "bogus")


# ---- SimulatedPairs ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generator(lens, dataset):
    """The generator the dataset was written with (same lens, seed, noise and low-rank model)."""
    model = read_data_info(dataset).model
    return SampleGenerator(lens, make_source("synthetic"), size=SIZE, seed=0, noise=CONFIG.noise, model=model)


def indices_as_worker(monkeypatch, ds, worker, workers) -> list[int]:
    info = SimpleNamespace(id=worker, num_workers=workers)
    monkeypatch.setattr(learn.data, "get_worker_info", lambda: info)
    return list(ds.indices())


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize(("start", "count"), [(0, 7), (1000, 5), (3, 1)])
def test_simulated_indices_partition_the_stream(monkeypatch, world, workers, start, count):
    everything = []
    for rank in range(world):
        ds = SimulatedPairs(None, start=start, count=count, rank=rank, world=world)
        assert len(ds) == count
        share = [i for w in range(workers) for i in indices_as_worker(monkeypatch, ds, w, workers)]
        assert sorted(share) == [start + rank + world * j for j in range(count)]  # the rank's share, once each
        everything += share
    assert sorted(everything) == list(range(start, start + world * count))  # ranks x workers: a partition


def test_simulated_indices_without_workers(monkeypatch):
    ds = SimulatedPairs(None, start=10, count=4, rank=1, world=3)
    assert list(ds.indices()) == [11, 14, 17, 20]  # in the main process (no worker info)
    assert indices_as_worker(monkeypatch, ds, 0, 1) == [11, 14, 17, 20]


def test_simulated_samples_equal_the_generator(generator):
    ds = SimulatedPairs(generator, start=2, count=3, rank=1, world=2)
    items = list(ds)
    assert [item["index"] for item in items] == [3, 5, 7]
    for item in items:
        s = generator.sample(item["index"])
        assert item["blurred"].shape == item["sharp"].shape == (1, SIZE, SIZE)
        assert item["blurred"].dtype == item["sharp"].dtype == torch.float32
        np.testing.assert_array_equal(item["blurred"][0].numpy(), s.blurred)
        np.testing.assert_array_equal(item["sharp"][0].numpy(), s.sharp)
        assert item["offset"].dtype == torch.int64 and tuple(item["offset"].tolist()) == s.offset


def test_simulated_samples_equal_the_dataset_file(generator, arrays):
    """One code path: on-the-fly sample i is the file's sample i."""
    for item in SimulatedPairs(generator, start=0, count=3):
        j = item["index"]
        np.testing.assert_array_equal(item["sharp"][0].numpy(), arrays["sharp"][j])
        np.testing.assert_array_equal(item["blurred"][0].numpy(), arrays["blurred"][j])
        np.testing.assert_array_equal(item["offset"].numpy(), arrays["offset"][j])


def test_simulated_pairs_through_dataloader_workers(generator):
    ds = SimulatedPairs(generator, start=5, count=6)
    loader = DataLoader(ds, batch_size=None, num_workers=2, worker_init_fn=learn.data.worker_init)
    items = list(loader)
    assert sorted(item["index"] for item in items) == list(range(5, 11))
    for item in items[:2]:
        np.testing.assert_array_equal(item["sharp"][0].numpy(), generator.sample(item["index"]).sharp)
