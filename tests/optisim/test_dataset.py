"""HDF5 datasets: the schema read back with h5py and xarray, determinism, resuming (also after a killed run),
configuration checks, splits, local workers and Dask."""

import json
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from optisim._version import __version__
from optisim.cli import main
from optisim.dataset import (
    SCHEMA_NAME,
    SCHEMA_VERSION,
    DatasetConfig,
    dataset_info,
    open_dataset,
    split_assignment,
    write_dataset,
)
from optisim.lens import Lens, load_preset
from optisim.noise import CameraNoise
from optisim.samples import SampleGenerator
from optisim.scenes import SyntheticSource

SENSOR = 96
KERNEL = 15
GRID = (5, 5)
N, SIZE = 24, 48  # synthetic scenes that generate: seed 0 below index 60, seed 1 below 16 (see test_samples)
CONFIG = DatasetConfig(n=N, size=SIZE, seed=0, kernel_size=KERNEL, grid=GRID)
SAMPLE_ARRAYS = ("sharp", "blurred", "offset", "split", "done")


@pytest.fixture(scope="module")
def lens():
    return load_preset("default").replace(sensor_shape=(SENSOR, SENSOR))


@pytest.fixture(scope="module")
def reference(lens, tmp_path_factory):
    """An uninterrupted, serial run: (path, the dict write_dataset returned)."""
    path = tmp_path_factory.mktemp("reference") / "data.h5"
    result = write_dataset(path, lens, SyntheticSource(), CONFIG, progress=False)
    return path, result


def contents(path) -> dict:
    """Every dataset's values and every root attribute of a file (dimension-scale references left out)."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.update({name: obj[()]}) if isinstance(obj, h5py.Dataset) else None)
        out.update({f"@{k}": v for k, v in f.attrs.items()})
    return out


def assert_same_contents(a, b):
    ca, cb = contents(a), contents(b)
    assert sorted(ca) == sorted(cb)
    for key in ca:
        if isinstance(ca[key], np.ndarray):
            assert ca[key].dtype == cb[key].dtype, key
            np.testing.assert_array_equal(ca[key], cb[key], err_msg=key)
        else:
            assert ca[key] == cb[key], key


def copy(path, tmp_path):
    return shutil.copy(path, tmp_path / "copy.h5")


# ---- schema ------------------------------------------------------------------------------------------------------


def test_write_returns_counts(reference):
    path, result = reference
    assert result["path"] == str(path) and result["n"] == N
    assert result["written"] == N and result["resumed_from"] == 0
    assert result["seconds_setup"] >= 0 and result["seconds_generate"] > 0
    assert not path.with_name(path.name + ".creating").exists()


def test_schema_read_with_h5py(reference, lens):
    path, _ = reference
    with h5py.File(path, "r") as f:
        for name in ("sharp", "blurred"):
            d = f[name]
            assert d.shape == (N, SIZE, SIZE) and d.dtype == np.float32
            assert d.chunks == (1, SIZE, SIZE)
            assert d.compression == "gzip" and d.compression_opts == 1
            assert d.shuffle == (name == "sharp")  # noisy camera data compresses better unshuffled
            assert d.attrs["units"] == "normalised intensity" and d.attrs["axes"] == "sample, y, x"
            assert [d.dims[i][0].name for i in range(3)] == ["/sample", "/y", "/x"]
            assert np.isfinite(d[()]).all()
        assert f["offset"].shape == (N, 2) and f["offset"].dtype == np.int32
        assert [f["offset"].dims[i][0].name for i in range(2)] == ["/sample", "/axis"]
        offsets = f["offset"][()]
        assert offsets.min() >= 0 and offsets.max() <= SENSOR - SIZE
        split = f["split"]
        assert split.shape == (N,) and split.dtype == np.uint8 and set(np.unique(split[()])) <= {0, 1, 2}
        np.testing.assert_array_equal(split.attrs["flag_values"], [0, 1, 2])
        assert split.attrs["flag_meanings"] == "train val test"
        done = f["done"]
        assert done.shape == (N,) and done.dtype == np.uint8 and (done[()] == 1).all()
        for name, n in (("sample", N), ("y", SIZE), ("x", SIZE), ("axis", 2)):
            assert h5py.h5ds.is_scale(f[name].id), name
            np.testing.assert_array_equal(f[name][()], np.arange(n))

        gy, gx = GRID
        psf = f["psf_grid/psf"]
        assert psf.shape == (gy, gx, KERNEL, KERNEL) and psf.dtype == np.float32
        np.testing.assert_allclose(psf[()].sum(axis=(2, 3)), 1.0, rtol=1e-5)
        z = f["psf_grid/zernike"]
        assert z.shape[:2] == (gy, gx) and z.ndim == 3 and z.dtype == np.float64
        assert "wave" in z.attrs["units"]
        for name, n in (("field_y", gy), ("field_x", gx)):
            fld = f[f"psf_grid/{name}"]
            assert fld.shape == (n,) and fld.dtype == np.float64 and fld[0] == -fld[-1]
        kernels = f["lowrank/kernels"][()]
        rank = int(f["lowrank"].attrs["rank"])
        assert kernels.shape == (rank, KERNEL, KERNEL) and kernels.dtype == np.float32
        np.testing.assert_allclose(np.sqrt((kernels.astype(float) ** 2).sum(axis=(1, 2))), 1.0, rtol=1e-5)
        c = f["lowrank/coefficients"]
        assert c.shape == (gy, gx, rank) and c.dtype == np.float64
        s = f["lowrank/singular_values"]
        assert s.shape == (gy * gx,) and s.dtype == np.float64 and (np.diff(s[()]) <= 0).all()
        assert float(f["lowrank"].attrs["relative_error"]) <= CONFIG.tol

        a = f.attrs
        assert a["schema_name"] == SCHEMA_NAME == "optisim-dataset"
        assert a["schema_version"] == SCHEMA_VERSION == 1
        assert a["optisim_version"] == __version__
        assert Lens.from_toml(a["lens_toml"]) == lens
        config = json.loads(a["config"])
        assert config == {**CONFIG.to_dict(), "kernel_size": KERNEL}
        assert config["n"] == N and config["size"] == SIZE and config["grid"] == list(GRID)
        assert json.loads(a["noise"]) == CameraNoise().to_dict() == config["noise"]
        assert a["seed"] == 0
        assert json.loads(a["source"]) == SyntheticSource().describe()
        assert len(a["fingerprint"]) == 64 and int(a["fingerprint"], 16) >= 0
        assert a["complete"] == 1


def test_open_dataset_matches_h5py(reference):
    path, _ = reference
    raw = contents(path)
    with open_dataset(path) as ds:
        assert ds["sharp"].dims == ds["blurred"].dims == ("sample", "y", "x")
        assert ds["offset"].dims == ("sample", "axis")
        assert ds["split"].dims == ds["done"].dims == ("sample",)
        assert dict(ds.sizes) == {"sample": N, "y": SIZE, "x": SIZE, "axis": 2}
        for name in SAMPLE_ARRAYS:
            values = ds[name].values
            assert values.dtype == raw[name].dtype, name
            np.testing.assert_array_equal(values, raw[name], err_msg=name)
        np.testing.assert_array_equal(ds["sample"].values, np.arange(N))
        assert ds.attrs["schema_name"] == SCHEMA_NAME and ds.attrs["seed"] == 0
        # the xarray view selects like any dataset: the training split
        train = ds["sharp"].where(ds["split"] == 0, drop=True)
        assert train.sizes["sample"] == int((raw["split"] == 0).sum())


def test_dataset_info(reference, lens):
    path, _ = reference
    info = dataset_info(path)
    assert info["path"] == str(path)
    assert info["schema"] == "optisim-dataset v1" and info["optisim_version"] == __version__
    assert info["samples"] == N and info["size"] == [SIZE, SIZE]
    assert info["done"] == N and info["complete"] is True
    assert info["splits"] == {"train": 20, "val": 2, "test": 2}
    assert info["seed"] == 0 and info["source"] == "synthetic"
    assert info["lens"] == {"sensor_shape": [SENSOR, SENSOR], "na": lens.na, "wavelengths_um": [0.525]}
    assert info["noise"] == CameraNoise().to_dict()
    assert info["psf_grid"] == [*GRID, KERNEL, KERNEL]
    assert info["rank"] >= 1 and 0 <= info["rank_relative_error"] <= CONFIG.tol
    assert info["file_mb"] > 0
    json.dumps(info)  # what `optisim dataset info --json` prints


def test_dataset_info_errors(tmp_path):
    text = tmp_path / "a.h5"
    text.write_text("not hdf5")
    with pytest.raises(ValueError, match=r"a\.h5: not a readable HDF5 file"):
        dataset_info(text)
    other = tmp_path / "b.h5"
    with h5py.File(other, "w") as f:
        f.attrs["schema_name"] = "something-else"
    with pytest.raises(ValueError, match=r"b\.h5: not an optisim dataset \(schema 'something-else'\)"):
        dataset_info(other)


def test_samples_equal_the_generator(reference, lens):
    """The file holds exactly SampleGenerator.sample(i) of a generator built independently from the lens."""
    path, _ = reference
    gen = SampleGenerator(
        lens, SyntheticSource(), size=SIZE, seed=0, noise=CameraNoise(), kernel_size=KERNEL, grid=GRID
    )
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["offset"][()], [gen.offset(i) for i in range(N)])
        np.testing.assert_array_equal(f["lowrank/kernels"][()], gen.model.kernels)
        for i in (0, 7, N - 1):
            s = gen.sample(i)
            np.testing.assert_array_equal(f["sharp"][i], s.sharp)
            np.testing.assert_array_equal(f["blurred"][i], s.blurred)


# ---- determinism and resuming --------------------------------------------------------------------------------------


def test_same_command_twice_gives_identical_files(reference, lens, tmp_path):
    path, _ = reference
    again = tmp_path / "again.h5"
    write_dataset(again, lens, SyntheticSource(), CONFIG, progress=False, block=5)
    assert_same_contents(path, again)


def test_worker_processes_give_identical_files(reference, lens, tmp_path):
    path, _ = reference
    parallel = tmp_path / "parallel.h5"
    result = write_dataset(parallel, lens, SyntheticSource(), CONFIG, workers=2, progress=False, block=4)
    assert result["written"] == N
    assert_same_contents(path, parallel)


def test_resume_regenerates_unfinished_samples(reference, lens, tmp_path):
    path, _ = reference
    partial = copy(path, tmp_path)
    lost = [1, 8, 9, N - 1]
    with h5py.File(partial, "r+") as f:  # an interruption: flags down, half-written garbage in the arrays
        f["done"][lost] = 0
        garbage = np.random.default_rng(0).normal(size=(len(lost), SIZE, SIZE)).astype(np.float32)
        f["sharp"][lost] = garbage
        f["blurred"][lost] = np.full_like(garbage, np.nan)
        f.attrs["complete"] = 0
    assert dataset_info(partial)["complete"] is False and dataset_info(partial)["done"] == N - len(lost)
    result = write_dataset(partial, lens, SyntheticSource(), CONFIG, progress=False)
    assert result["written"] == len(lost) and result["resumed_from"] == N - len(lost)
    assert_same_contents(path, partial)
    again = write_dataset(partial, lens, SyntheticSource(), CONFIG, progress=False)
    assert again["written"] == 0 and again["resumed_from"] == N
    assert_same_contents(path, partial)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"seed": 1}, "seed: 0 -> 1"),
        ({"size": 32}, "size: 48 -> 32"),
        ({"n": N + 1}, f"n: {N} -> {N + 1}"),
        ({"noise": None}, "noise: {'photons': 1000.0"),
        ({"noise": CameraNoise(photons=500)}, "photons: 1000.0 -> 500.0"),
        ({"kernel_size": 17}, "kernel_size: 15 -> 17"),
        ({"splits": (0.5, 0.25, 0.25)}, "splits: [0.8, 0.1, 0.1] -> [0.5, 0.25, 0.25]"),
        ("lens", "lens: different lens file"),
    ],
)
def test_other_configuration_is_refused(reference, lens, tmp_path, change, named):
    path, _ = reference
    existing = copy(path, tmp_path)
    before = contents(existing)
    if change == "lens":
        other_lens, config = lens.replace(pixel_size_um=0.24), CONFIG
    else:
        other_lens, config = lens, DatasetConfig(**{**CONFIG.__dict__, **change})
    with pytest.raises(ValueError, match="belongs to a different configuration") as err:
        write_dataset(existing, other_lens, SyntheticSource(), config, progress=False)
    message = str(err.value)
    assert named in message, message
    assert "use --overwrite to replace it, or choose another output path" in message
    assert message.count("\n") == 0
    after = contents(existing)
    assert sorted(before) == sorted(after)
    for key in SAMPLE_ARRAYS:
        np.testing.assert_array_equal(before[key], after[key])


def test_overwrite_replaces(reference, lens, tmp_path):
    path, _ = reference
    existing = copy(path, tmp_path)
    config = DatasetConfig(**{**CONFIG.__dict__, "seed": 1, "n": 10})
    result = write_dataset(existing, lens, SyntheticSource(), config, overwrite=True, progress=False)
    assert result["written"] == 10 and result["resumed_from"] == 0
    info = dataset_info(existing)
    assert info["seed"] == 1 and info["samples"] == 10 and info["complete"] is True
    fresh = tmp_path / "fresh.h5"
    write_dataset(fresh, lens, SyntheticSource(), config, progress=False)
    assert_same_contents(existing, fresh)


def test_non_dataset_file_is_refused(lens, tmp_path):
    config = DatasetConfig(**{**CONFIG.__dict__, "n": 4})
    text = tmp_path / "notes.h5"
    text.write_text("my notes, not a dataset")
    with pytest.raises(ValueError, match=r"notes\.h5 exists but is not a readable optisim dataset") as err:
        write_dataset(text, lens, SyntheticSource(), config, progress=False)
    assert "use --overwrite to replace it" in str(err.value)
    assert text.read_text() == "my notes, not a dataset"  # left alone
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(ValueError, match="use --overwrite to replace it"):
        write_dataset(other, lens, SyntheticSource(), config, progress=False)
    write_dataset(text, lens, SyntheticSource(), config, overwrite=True, progress=False)
    assert dataset_info(text)["complete"] is True


def test_leftover_of_an_interrupted_creation_is_replaced(lens, tmp_path):
    path = tmp_path / "data.h5"
    path.with_name("data.h5.creating").write_bytes(b"half a file")
    write_dataset(path, lens, SyntheticSource(), DatasetConfig(**{**CONFIG.__dict__, "n": 3}), progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["data.h5"]
    assert dataset_info(path)["complete"] is True


def test_bad_arguments(lens, tmp_path):
    with pytest.raises(ValueError, match="workers: expected >= 0 and block >= 1, got -1 and 8"):
        write_dataset(tmp_path / "a.h5", lens, SyntheticSource(), CONFIG, workers=-1)
    with pytest.raises(ValueError, match="got 0 and 0"):
        write_dataset(tmp_path / "a.h5", lens, SyntheticSource(), CONFIG, block=0)
    assert not (tmp_path / "a.h5").exists()
    with pytest.raises(ValueError, match="n: expected a positive integer, got 0"):
        DatasetConfig(n=0)
    with pytest.raises(ValueError, match="seed: expected a non-negative integer, got -1"):
        DatasetConfig(seed=-1)
    with pytest.raises(ValueError, match=r"splits: expected three non-negative fractions .* got \(0\.5, 0\.5\)"):
        DatasetConfig(splits=(0.5, 0.5))
    with pytest.raises(ValueError, match="summing to 1"):
        DatasetConfig(splits=(0.8, 0.1, 0.2))


def test_size_errors_leave_no_file(lens, tmp_path):
    for size, message in ((SENSOR + 1, "is larger than the sensor"), (KERNEL - 2, "smaller than the PSF support")):
        path = tmp_path / f"s{size}.h5"
        with pytest.raises(ValueError, match=message):
            write_dataset(path, lens, SyntheticSource(), DatasetConfig(n=2, size=size, kernel_size=KERNEL, grid=GRID))
        assert list(tmp_path.iterdir()) == []


# ---- splits ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "splits", "counts"),
    [
        (24, (0.8, 0.1, 0.1), (20, 2, 2)),
        (40, (0.5, 0.25, 0.25), (20, 10, 10)),
        (7, (1.0, 0.0, 0.0), (7, 0, 0)),
        (10, (0.0, 0.35, 0.65), (1, 3, 6)),  # floors 0, 3, 6; the remainder goes to train
        (1000, (0.7, 0.2, 0.1), (700, 200, 100)),
    ],
)
def test_split_counts(n, splits, counts):
    codes = split_assignment(n, splits, seed=3)
    assert codes.shape == (n,) and codes.dtype == np.uint8
    assert tuple(int((codes == k).sum()) for k in range(3)) == counts  # every index has exactly one split
    np.testing.assert_array_equal(codes, split_assignment(n, splits, seed=3))


def test_split_assignment_is_seeded_and_stored(reference):
    a, b = split_assignment(200, (0.8, 0.1, 0.1), 0), split_assignment(200, (0.8, 0.1, 0.1), 1)
    assert not np.array_equal(a, b) and np.bincount(a).tolist() == np.bincount(b).tolist()
    path, _ = reference
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["split"][()], split_assignment(N, CONFIG.splits, CONFIG.seed))


# ---- Dask --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dask_cluster():
    distributed = pytest.importorskip("distributed")
    threads = torch.get_num_threads()  # tasks set torch to one thread, here in this process (processes=False)
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield cluster, client
    torch.set_num_threads(threads)


def test_dask_client_gives_identical_file(reference, lens, tmp_path, dask_cluster):
    path, _ = reference
    _, client = dask_cluster
    out = tmp_path / "dask.h5"
    result = write_dataset(out, lens, SyntheticSource(), CONFIG, dask=client, progress=False, block=3)
    assert result["written"] == N
    assert_same_contents(path, out)
    assert client.status == "running"  # a client passed in is left open


def test_dask_scheduler_address_gives_identical_file(reference, lens, tmp_path, dask_cluster):
    path, _ = reference
    cluster, _ = dask_cluster
    out = tmp_path / "dask.h5"
    write_dataset(out, lens, SyntheticSource(), CONFIG, dask=cluster.scheduler_address, progress=False, block=6)
    assert_same_contents(path, out)


# ---- a real run, killed or interrupted, then resumed by the same command ---------------------------------------------

RUN_N, RUN_SIZE = 128, 80  # seed 0: every index generates; 16 blocks of 8, a few seconds on 2 cores


@pytest.fixture(scope="module")
def run_setup(lens, tmp_path_factory):
    """A lens file and the file of an uninterrupted run of the same configuration (through the library)."""
    root = tmp_path_factory.mktemp("runs")
    lens_file = lens.save(root / "lens.toml")
    config = DatasetConfig(n=RUN_N, size=RUN_SIZE, seed=0, kernel_size=KERNEL, grid=GRID)
    reference = root / "uninterrupted.h5"
    write_dataset(reference, lens, SyntheticSource(), config, progress=False)
    return lens_file, reference


def dataset_command(lens_file, path):
    return [
        sys.executable, "-m", "optisim", "dataset", str(lens_file), "--n", str(RUN_N), "--size", str(RUN_SIZE),
        "-o", str(path), "--kernel-size", str(KERNEL), "--grid", "5x5", "--quiet",
    ]  # fmt: skip


def done_count(path):
    """Samples done in a file that another process is writing, or None while it cannot be read."""
    if not path.exists():
        return None
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f["done"][()].sum())
    except (OSError, KeyError, ValueError, RuntimeError):  # not created yet, or caught between two writes
        return None


def interrupt_midway(cmd, path, sig, *, at_least=16, timeout=180):
    """Start ``cmd``, send ``sig`` once at least ``at_least`` (and not all) samples are done; (rc, out, err).

    The child gets SIGINT's default action: a shell without job control starts background commands with SIGINT
    ignored, the child inherits that, and Python then installs no KeyboardInterrupt handler (``make test &`` ran
    the interrupted run to completion, rc 0)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = done_count(path)
            if done is not None and at_least <= done < RUN_N:
                proc.send_signal(sig)
                out, err = proc.communicate(timeout=60)
                return proc.returncode, out, err
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"the run ended (rc {proc.returncode}) before it could be interrupted: {out} {err}")
            time.sleep(0.01)
        pytest.fail(f"no progress in {timeout} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def check_resumes(cmd, path, reference):
    with h5py.File(path, "r") as f:  # the interrupted file is a valid, partial dataset
        done = int(f["done"][()].sum())
        assert f.attrs["complete"] == 0
    assert 0 < done < RUN_N
    rerun = CliRunner().invoke(main, cmd[3:])  # the same command line, in this process
    assert rerun.exit_code == 0, rerun.output
    assert f"{RUN_N - done} generated now (resumed: {done} were already done)" in rerun.output
    assert_same_contents(reference, path)


def test_killed_run_resumes_to_the_uninterrupted_file(run_setup, tmp_path):
    """The tracker's requirement: a real run killed with SIGKILL, rerun, equals an uninterrupted run."""
    lens_file, reference = run_setup
    path = tmp_path / "killed.h5"
    cmd = dataset_command(lens_file, path)
    rc, _, _ = interrupt_midway(cmd, path, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert not path.with_name(path.name + ".creating").exists()
    check_resumes(cmd, path, reference)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_run_says_how_to_resume(run_setup, tmp_path, sig):
    lens_file, reference = run_setup
    path = tmp_path / "interrupted.h5"
    cmd = dataset_command(lens_file, path)
    rc, out, err = interrupt_midway(cmd, path, sig)
    assert rc == 130, err
    assert err.strip().splitlines()[-1] == f"interrupted: rerun the same command to resume {path}"
    assert "Traceback" not in err and out == ""
    check_resumes(cmd, path, reference)
