"""Shared fixtures of tests/learn."""

from types import SimpleNamespace

import pytest

from optisim.dataset import DatasetConfig, write_dataset
from optisim.lens import load_preset
from optisim.samples import make_source

# ---- training (test_train.py, test_train_cli.py) -------------------------------------------------------------------

TRAIN_SENSOR = 128
TRAIN_CONFIG = DatasetConfig(n=48, size=32, seed=0, kernel_size=15, grid=(5, 5))  # 40 train, 4 val, 4 test samples


@pytest.fixture(scope="session")
def train_files(tmp_path_factory):
    """A small dataset file (``data``) and the lens file it was written with (``lens``, also a Lens: ``lens_obj``)."""
    root = tmp_path_factory.mktemp("train_files")
    lens = load_preset("default").replace(sensor_shape=(TRAIN_SENSOR, TRAIN_SENSOR))
    write_dataset(root / "data.h5", lens, make_source("synthetic"), TRAIN_CONFIG, progress=False)
    return SimpleNamespace(data=root / "data.h5", lens=lens.save(root / "lens.toml"), lens_obj=lens)


@pytest.fixture(scope="session")
def other_train_data(train_files, tmp_path_factory):
    """A second dataset of the same lens and size with another seed (another fingerprint)."""
    path = tmp_path_factory.mktemp("train_other") / "other.h5"
    config = DatasetConfig(n=16, size=32, seed=1, kernel_size=15, grid=(5, 5))
    write_dataset(path, train_files.lens_obj, make_source("synthetic"), config, progress=False)
    return path


# ---- a trained checkpoint (test_infer.py, test_evaluate.py) ----------------------------------------------------------

RUN_SENSOR = (128, 128)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(checkpoint, dataset): a cg-unet(3) trained one epoch on a tiny noise-free dataset of a 128x128 sensor."""
    from learn.config import TrainConfig
    from learn.models import ModelConfig
    from learn.train import train

    root = tmp_path_factory.mktemp("trained")
    lens = load_preset("default").replace(sensor_shape=RUN_SENSOR)
    config = DatasetConfig(n=16, size=64, seed=0, splits=(0.5, 0.25, 0.25), noise=None, kernel_size=15, grid=(5, 5))
    write_dataset(root / "data.h5", lens, make_source("synthetic"), config, progress=False)
    model = ModelConfig(name="cg-unet", depth=3, width=8, gate_hidden=16)
    train(
        TrainConfig(model=model, data=str(root / "data.h5"), epochs=1, batch_size=4, device="cpu"),
        root / "run",
        progress=False,
    )
    return root / "run" / "best.pt", root / "data.h5"
