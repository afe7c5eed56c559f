"""``optisim train`` and ``optisim models`` end to end: a real run killed with SIGKILL (or stopped with SIGTERM) and
resumed, two processes under torchrun against one process, and the one-line errors a user can act on."""

import csv
import json
import os
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

from learn.data import read_data_info
from learn.models import MODEL_NAMES, ModelConfig, build_model, count_parameters
from optisim.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL = ["--model", "cg-unet", "--depth", "2", "--width", "4", "--gate-hidden", "8", "--gate-layers", "2"]
RUN = [*MODEL, "--batch-size", "4", "--device", "cpu", "--deterministic", "--quiet"]
VALUES = ("lr", "train_loss", "val_loss", "val_psnr", "val_ssim")  # the columns that do not depend on timing
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # as one_torch_thread: fast on 2 busy cores, same arithmetic


def train_args(data, run, *extra) -> list[str]:
    return ["train", str(data), "-o", str(run), *RUN, *map(str, extra)]


def invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def read_metrics(run) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def rows_written(run) -> int:
    """Rows of metrics.csv of a run that another process is writing (0 while there is none)."""
    try:
        with open(run / "metrics.csv", newline="") as f:
            return len(list(csv.DictReader(f)))
    except (OSError, csv.Error):
        return 0


def values(rows) -> np.ndarray:
    return np.array([[row[k] for k in VALUES] for row in rows])


def max_weight_difference(a, b) -> float:
    wa, wb = (torch.load(p, weights_only=True)["model"] for p in (a, b))
    assert wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa if wa[k].numel())


# ---- a real run, killed or stopped, then resumed ---------------------------------------------------------------------

EPOCHS = 8  # 0.05 to 0.3 s each: the run is stopped after epoch 1, well before the last


@pytest.fixture(scope="module")
def uninterrupted(train_files, tmp_path_factory, one_torch_thread):
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = invoke(train_args(train_files.data, run, "--epochs", EPOCHS))
    assert result.exit_code == 0, result.output
    return run


def stop_after_first_epoch(cmd, run, sig, *, timeout=120):
    """Start ``cmd``, send ``sig`` once metrics.csv has a row (last.pt of epoch 1 is saved); (rc, stdout, stderr)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if rows_written(run) >= 1:
                proc.send_signal(sig)
                out, err = proc.communicate(timeout=60)
                return proc.returncode, out, err
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"the run ended (rc {proc.returncode}) before it could be stopped: {out} {err}")
            time.sleep(0.01)
        pytest.fail(f"no epoch finished in {timeout} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def check_resumes_to(reference, data, run):
    ckpt = torch.load(run / "last.pt", weights_only=True)  # the stopped run left a loadable checkpoint
    stopped_at = ckpt["epoch"]
    assert 0 < stopped_at < EPOCHS, f"stopped after epoch {stopped_at} of {EPOCHS}"
    assert len(ckpt["history"]) == stopped_at
    result = invoke(train_args(data, run, "--epochs", EPOCHS, "--resume"))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"resuming {run} after epoch {stopped_at} (step {stopped_at * 10})\n")
    assert f"cg-unet(2) width 4, 1,973 parameters: {EPOCHS} epochs, best epoch" in result.stdout
    rows, expected = read_metrics(run), read_metrics(reference)
    assert [row["epoch"] for row in rows] == list(range(1, EPOCHS + 1))  # every epoch once
    np.testing.assert_allclose(values(rows), values(expected), rtol=1e-4, atol=0)
    assert max_weight_difference(run / "last.pt", reference / "last.pt") < 1e-5
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == EPOCHS and summary["steps"] == EPOCHS * 10


def test_killed_run_resumes_to_the_uninterrupted_run(uninterrupted, train_files, tmp_path):
    """The tracker's requirement: a real training run killed with SIGKILL, rerun with --resume, equals a run that
    was never interrupted (the same metrics in every epoch, the same weights)."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "optisim", *train_args(train_files.data, run, "--epochs", EPOCHS)]
    rc, _, err = stop_after_first_epoch(cmd, run, signal.SIGKILL)
    assert rc == -signal.SIGKILL, err
    check_resumes_to(uninterrupted, train_files.data, run)


def test_terminated_run_says_how_to_resume(uninterrupted, train_files, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "optisim", *train_args(train_files.data, run, "--epochs", EPOCHS)]
    rc, _, err = stop_after_first_epoch(cmd, run, signal.SIGTERM)
    assert rc == 130, err
    assert err.strip().splitlines()[-1] == f"interrupted: rerun with --resume to continue {run}"
    assert "Traceback" not in err
    check_resumes_to(uninterrupted, train_files.data, run)


# ---- two processes under torchrun ------------------------------------------------------------------------------------

DDP_EPOCHS = 2


@pytest.fixture(scope="module")
def torchrun(train_files, tmp_path_factory):
    """A run of 2 CPU processes (gloo), global batch 4 (2 per process): (completed process, run folder)."""
    run = tmp_path_factory.mktemp("torchrun") / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "optisim", *train_args(train_files.data, run, "--epochs", DDP_EPOCHS),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result, run


def test_two_processes_take_the_steps_of_one(torchrun, train_files, tmp_path):
    """The tracker's requirement: DDP with a global batch of 4 over 2 processes trains as one process with batch 4
    (the same samples in each global batch, averaged gradients); only the summation order differs."""
    _, ddp = torchrun
    single = tmp_path / "single"
    result = invoke(train_args(train_files.data, single, "--epochs", DDP_EPOCHS))
    assert result.exit_code == 0, result.output
    rows = read_metrics(ddp)
    assert [row["epoch"] for row in rows] == [1, 2]
    np.testing.assert_allclose(values(rows), values(read_metrics(single)), rtol=1e-4, atol=0)
    for name in ("best.pt", "last.pt"):
        assert max_weight_difference(ddp / name, single / name) < 1e-4, name
    summary = json.loads((ddp / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == DDP_EPOCHS * 10
    ckpt = torch.load(ddp / "last.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in ckpt["model"])  # the model's state, not the DDP wrapper's


def test_two_processes_print_one_log(torchrun):
    result, run = torchrun
    lines = result.stdout.splitlines()
    assert sum(line.startswith("epoch 1/2: ") for line in lines) == 1
    assert sum(line.endswith(f"-> {run}/best.pt") for line in lines) == 1


# ---- errors: one line on stderr, exit status 1 (2 for click's own usage errors) --------------------------------------


@pytest.fixture(scope="module")
def finished(train_files, tmp_path_factory, one_torch_thread):
    """A finished one-epoch run of the small cg-unet."""
    run = tmp_path_factory.mktemp("finished") / "run"
    result = invoke(train_args(train_files.data, run, "--epochs", 1))
    assert result.exit_code == 0, result.output
    return run


def copy_run(finished, tmp_path):
    return shutil.copytree(finished, tmp_path / "run")


def assert_one_line_error(result, message, *, code=1):
    assert result.exit_code == code, result.output
    assert result.stderr.splitlines() == [f"Error: {message}"], result.stderr
    assert "Traceback" not in result.output and result.stdout == ""


def test_dataset_without_offsets(train_files, tmp_path):
    data = shutil.copy(train_files.data, tmp_path / "no-offset.h5")
    with h5py.File(data, "r+") as f:
        del f["offset"]
    result = invoke(train_args(data, tmp_path / "run"))
    assert_one_line_error(result, f"{data}: the dataset lacks the arrays offset that training needs")


def test_file_that_is_not_hdf5(tmp_path):
    data = tmp_path / "notes.h5"
    data.write_text("not an HDF5 file\n")
    result = invoke(train_args(data, tmp_path / "run"))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {data}: not a readable HDF5 file (")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.output


def test_missing_dataset_file(tmp_path):
    result = invoke(train_args(tmp_path / "missing.h5", tmp_path / "run"))
    assert_one_line_error(result, f"No such dataset file: {tmp_path / 'missing.h5'}")


def test_unknown_model(train_files, tmp_path):
    result = invoke(train_args(train_files.data, tmp_path / "run", "--model", "foo"))
    assert result.exit_code == 2
    assert (
        "Error: Invalid value for '--model': 'foo' is not one of 'unet', 'cg-unet', 'coordconv-unet', "
        "'multiwiener'." in result.stderr
    )


def test_resume_without_a_run(train_files, tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke(train_args(train_files.data, tmp_path / "empty", "--resume"))
    assert_one_line_error(result, f"--resume: {tmp_path / 'empty'} has no last.pt to resume from")


def test_existing_run_is_neither_resumed_nor_replaced_silently(finished, train_files, tmp_path):
    run = copy_run(finished, tmp_path)
    before = (run / "last.pt").read_bytes(), (run / "metrics.csv").read_text()
    result = invoke(train_args(train_files.data, run, "--epochs", 1))
    assert_one_line_error(
        result, f"{run} already holds a training run; use --resume to continue it or --overwrite to replace it"
    )
    assert ((run / "last.pt").read_bytes(), (run / "metrics.csv").read_text()) == before
    replaced = invoke(train_args(train_files.data, run, "--epochs", 1, "--overwrite", "--seed", 1))
    assert replaced.exit_code == 0, replaced.output
    assert (run / "last.pt").read_bytes() != before[0]


@pytest.mark.parametrize(
    "option, difference",
    [
        (["--model", "unet"], "checkpoint is a cg-unet(2) width 4, not a unet(2) width 4: name 'cg-unet' (not 'unet')"),
        (["--depth", "3"], "checkpoint is a cg-unet(2) width 4, not a cg-unet(3) width 4: depth 2 (not 3)"),
        (["--width", "8"], "checkpoint is a cg-unet(2) width 4, not a cg-unet(2) width 8: width 4 (not 8)"),
    ],
    ids=["model", "depth", "width"],
)
def test_resume_with_another_architecture(option, difference, finished, train_files, tmp_path):
    run = copy_run(finished, tmp_path)
    result = invoke(train_args(train_files.data, run, "--epochs", 2, "--resume", *option))
    assert_one_line_error(result, f"{run / 'last.pt'}: {difference}")


def test_resume_with_other_data(finished, train_files, other_train_data, tmp_path):
    run = copy_run(finished, tmp_path)
    result = invoke(train_args(other_train_data, run, "--epochs", 2, "--resume"))
    ours, theirs = (read_data_info(p).fingerprint[:12] for p in (train_files.data, other_train_data))
    assert ours != theirs
    assert_one_line_error(
        result,
        f"{run / 'last.pt'}: the checkpoint was trained on other data (dataset {train_files.data} with fingerprint "
        f"{ours}, not dataset {other_train_data} with fingerprint {theirs}); resume with the same data or start a "
        "new run",
    )


def test_resume_with_the_same_data_moved(finished, train_files, tmp_path):
    run = copy_run(finished, tmp_path)
    moved = shutil.copy(train_files.data, tmp_path / "moved.h5")
    result = invoke(train_args(moved, run, "--epochs", 2, "--resume"))
    assert result.exit_code == 0, result.output


def test_corrupt_checkpoint(finished, train_files, tmp_path):
    run = copy_run(finished, tmp_path)
    (run / "last.pt").write_bytes(os.urandom(4096))
    result = invoke(train_args(train_files.data, run, "--epochs", 2, "--resume"))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {run / 'last.pt'}: not a readable checkpoint (")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.output


@pytest.mark.parametrize("with_data", [True, False], ids=["both", "neither"])
def test_dataset_and_simulation_are_exclusive(with_data, train_files, tmp_path):
    args = train_args(train_files.data, tmp_path / "run")
    args = (
        [*args, "--simulate", str(train_files.lens)] if with_data else [a for a in args if a != str(train_files.data)]
    )
    result = invoke(args)
    assert_one_line_error(result, "training data: give a dataset file or --simulate LENS, not both and not neither")


def test_batch_larger_than_the_training_set(train_files, tmp_path):
    result = invoke(train_args(train_files.data, tmp_path / "run", "--batch-size", 64))
    assert_one_line_error(
        result, f"{train_files.data}: 40 training samples, fewer than one batch of 64; lower --batch-size"
    )


def test_fp16_on_cpu(train_files, tmp_path):
    result = invoke(train_args(train_files.data, tmp_path / "run", "--amp", "fp16"))
    assert_one_line_error(result, "amp: fp16 needs a CUDA device; use --amp bf16 on the CPU")


def test_debug_shows_the_traceback(train_files, tmp_path):
    result = invoke(["--debug", *train_args(train_files.data, tmp_path / "run", "--batch-size", 64)])
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)
    assert "lower --batch-size" in str(result.exception)


def test_simulated_training(train_files, tmp_path):
    run = tmp_path / "run"
    args = ["train", "-o", run, "--simulate", train_files.lens, *RUN, "--epochs", 1, "--size", 32, "--kernel-size", 15]
    result = invoke([*args, "--grid", "5x5", "--noise", "off", "--steps-per-epoch", 2, "--val-samples", 4])
    assert result.exit_code == 0, result.output
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["data"]["kind"] == "simulate" and ckpt["data"]["noise"] is None
    assert ckpt["data"]["steps_per_epoch"] == 2 and ckpt["step"] == 2


# ---- optisim models --------------------------------------------------------------------------------------------------


def expected_parameters(width, depth) -> dict:
    return {
        name: count_parameters(build_model(ModelConfig(name=name, depth=depth, width=width))) for name in MODEL_NAMES
    }


def test_models_table():
    result = invoke(["models", "--width", 8, "--depths", "2,3"])
    assert result.exit_code == 0, result.output
    header, columns, *rows = result.output.splitlines()
    assert header.startswith("parameters at width 8")
    assert columns.split() == ["depth", *MODEL_NAMES]
    assert len(rows) == 2
    for row, depth in zip(rows, (2, 3), strict=True):
        counts = expected_parameters(8, depth)
        assert row.split() == [str(depth), *(f"{counts[name]:,}" for name in MODEL_NAMES)]


def test_models_json():
    result = invoke(["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [row["depth"] for row in rows] == [3, 4, 5, 6]
    assert all(list(row["parameters"]) == list(MODEL_NAMES) for row in rows)
    assert rows[0]["parameters"] == expected_parameters(32, 3)


def test_models_bad_depths():
    result = invoke(["models", "--depths", "3,x"])
    assert result.exit_code == 2
    assert "Error: Invalid value for --depths: expected comma-separated integers, got '3,x'" in result.stderr
