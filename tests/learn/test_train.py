"""The training loop, through the library: it learns, writes loadable checkpoints and logs, follows its learning-rate
schedule and early stop, is reproducible, samples as documented (seeded sampler, simulated stream), and its options
(workers, AMP, TensorBoard) work. Real subprocesses (kill -9 and resume, torchrun) are in test_train_cli.py."""

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

import learn.train
from learn.checkpoint import FORMAT, load_model
from learn.config import SimulateConfig, TrainConfig
from learn.data import VALIDATION_START, H5Pairs, read_data_info
from learn.metrics import psnr, ssim
from learn.models import MODEL_CLASSES, MODEL_NAMES, ModelConfig, build_model, count_parameters
from learn.train import CSV_FIELDS, train
from optisim.lens import Lens

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {"name": "cg-unet", "depth": 2, "width": 4, "gate_hidden": 8, "gate_layers": 2, "psf_count": 4}
N_TRAIN, N_VAL, BATCH = 40, 4, 4
VALUES = ("lr", "train_loss", "val_loss", "val_psnr", "val_ssim")  # the columns that do not depend on timing


def make_config(data, *, model=None, **changes) -> TrainConfig:
    """A tiny, deterministic CPU run on ``data`` (a dataset path, or None with ``simulate=``)."""
    defaults = {"data": None if data is None else str(data), "epochs": 1, "batch_size": BATCH}
    defaults |= {"device": "cpu", "deterministic": True}
    return TrainConfig(model=ModelConfig(**{**SMALL, **(model or {})}), **{**defaults, **changes})


def simulate_config(train_files, **changes) -> SimulateConfig:
    args = {"size": 32, "kernel_size": 15, "grid": (5, 5), "steps_per_epoch": 3, "val_samples": 4, "noise": None}
    return SimulateConfig(lens=str(train_files.lens), **{**args, **changes})


def read_metrics(run) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_FIELDS
        return [{k: int(v) if k == "epoch" else float(v) for k, v in row.items()} for row in reader]


def values(rows) -> np.ndarray:
    return np.array([[row[k] for k in VALUES] for row in rows])


def weights(path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def scripted_validation(monkeypatch, losses):
    """Make the validation loss of epoch e be ``losses[e - 1]`` (PSNR and SSIM stay real)."""
    real = learn.train._validate

    def validate(run, net):
        return {**real(run, net), "val_loss": losses[run.epoch]}  # run.epoch: epochs completed so far

    monkeypatch.setattr(learn.train, "_validate", validate)


def record_batches(monkeypatch) -> list[tuple[int, bool, list[int]]]:
    """Record ``(epoch, train, sample indices)`` of every batch the training loop draws."""
    seen = []
    real = learn.train._Data.loader

    class Recorder:
        def __init__(self, loader, epoch, train):
            self.loader, self.epoch, self.train = loader, epoch, train

        def __iter__(self):
            for batch in self.loader:
                seen.append((self.epoch, self.train, batch["index"].tolist()))
                yield batch

    def loader(self, epoch, *, train):
        return Recorder(real(self, epoch, train=train), epoch, train)

    monkeypatch.setattr(learn.train._Data, "loader", loader)
    return seen


# ---- a run and what it writes ----------------------------------------------------------------------------------------

EPOCHS = 4


@pytest.fixture(scope="module")
def trained(train_files, tmp_path_factory, one_torch_thread):
    """A cg-unet that must learn the image itself (no residual), 4 epochs: (run folder, summary, messages)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    messages = []
    config = make_config(train_files.data, model={"residual": False}, epochs=EPOCHS, lr=3e-3)
    summary = train(config, run, progress=False, echo=messages.append)
    return run, summary, messages


def test_training_lowers_the_loss(trained):
    run, summary, messages = trained
    rows = read_metrics(run)
    assert [row["epoch"] for row in rows] == list(range(1, EPOCHS + 1))
    first, last = rows[0], rows[-1]
    assert last["train_loss"] < first["train_loss"] / 2
    best = min(rows, key=lambda row: row["val_loss"])
    assert best["val_loss"] < first["val_loss"] / 1.3
    assert best["val_psnr"] > first["val_psnr"] + 1  # dB
    assert summary["best"] == {k: best[k] for k in ("epoch", "val_loss", "val_psnr", "val_ssim")}
    assert summary["epochs"] == EPOCHS and summary["steps"] == EPOCHS * (N_TRAIN // BATCH)
    assert len(messages) == EPOCHS and messages[0].startswith(f"epoch 1/{EPOCHS}: train loss ")
    assert not torch.are_deterministic_algorithms_enabled()  # deterministic=True is undone after the run


def test_checkpoints_hold_everything_to_resume_and_deblur(trained, train_files):
    run, summary, _ = trained
    info = read_data_info(train_files.data)
    best_epoch = summary["best"]["epoch"]
    for name, epoch in (("last.pt", EPOCHS), ("best.pt", best_epoch)):
        ckpt = torch.load(run / name, weights_only=True)  # plain types and tensors only
        assert ckpt["format"] == FORMAT
        assert ckpt["epoch"] == epoch and ckpt["best"]["epoch"] == best_epoch
        assert ckpt["data"] == {"kind": "dataset", "path": str(train_files.data), "fingerprint": info.fingerprint}
        assert Lens.from_toml(ckpt["lens_toml"]) == info.lens
        assert ckpt["model_config"]["sensor_shape"] == [128, 128]  # the lens's sensor, not the default
        assert ckpt["model_config"]["psf_size"] == 15  # the dataset's kernel size
        assert TrainConfig.from_dict(ckpt["train_config"]).epochs == EPOCHS
        assert len(ckpt["history"]) == epoch
        assert ckpt["optimizer"]["state"] and ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(3e-3)
        assert "best" in ckpt["scheduler"] and ckpt["scaler"] is None
        assert isinstance(ckpt["rng"]["torch"], torch.Tensor) and ckpt["stopped_early"] is False
        model, lens, _ = load_model(run / name)
        assert isinstance(model, MODEL_CLASSES["cg-unet"]) and not model.training
        assert lens == info.lens
        for key, value in model.state_dict().items():
            assert torch.equal(value, ckpt["model"][key]), key


def test_validation_metrics_are_those_of_the_saved_model(trained, train_files):
    """The best epoch's validation loss, PSNR and SSIM, recomputed from best.pt and the validation split."""
    run, summary, _ = trained
    val = H5Pairs(train_files.data, "val")
    items = [val[i] for i in range(len(val))]
    x, y = torch.stack([s["blurred"] for s in items]), torch.stack([s["sharp"] for s in items])
    model, _, _ = load_model(run / "best.pt")
    with torch.no_grad():
        pred = model(x, torch.stack([s["offset"] for s in items]))
    assert summary["best"]["val_loss"] == pytest.approx(float(F.mse_loss(pred, y)), rel=1e-5)
    assert summary["best"]["val_psnr"] == pytest.approx(float(psnr(pred, y).mean()), rel=1e-5)
    assert summary["best"]["val_ssim"] == pytest.approx(float(ssim(pred, y).mean()), rel=1e-5)


def test_logs(trained):
    run, summary, _ = trained
    rows = read_metrics(run)
    assert len(rows) == EPOCHS
    assert all(row["samples_per_s"] > 0 and row["seconds"] > 0 for row in rows)
    assert all(row["lr"] == pytest.approx(3e-3) for row in rows)
    assert json.loads((run / "summary.json").read_text()) == summary
    assert summary["final"] == pytest.approx(rows[-1])
    assert summary["model"] == "cg-unet(2) width 4" and summary["processes"] == 1 and summary["device"] == "cpu"
    assert summary["checkpoints"] == {"best": str(run / "best.pt"), "last": str(run / "last.pt")}
    model, _, _ = load_model(run / "last.pt")
    assert summary["parameters"] == count_parameters(model)
    assert not list(run.glob("*.tmp")) and not (run / "tensorboard").exists()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_trains(name, train_files, tmp_path):
    summary = train(make_config(train_files.data, model={"name": name}), tmp_path, progress=False)
    assert np.isfinite(summary["final"]["train_loss"]) and np.isfinite(summary["final"]["val_psnr"])
    model, _, ckpt = load_model(tmp_path / "last.pt")
    assert type(model) is MODEL_CLASSES[name]
    assert ckpt["model_config"]["name"] == name
    assert summary["parameters"] == count_parameters(build_model(ModelConfig.from_dict(ckpt["model_config"])))


def test_multiwiener_starts_from_the_lens_psfs(train_files, tmp_path):
    """psf_count 9: a 3x3 grid of the dataset's PSFs over the field, each summing to 1 (lr ~0 keeps them)."""
    config = make_config(train_files.data, model={"name": "multiwiener", "psf_count": 9}, lr=1e-12)
    train(config, tmp_path, progress=False)
    psfs = weights(tmp_path / "last.pt")["psfs"]
    assert psfs.shape == (9, 15, 15) and psfs.min() >= 0
    np.testing.assert_allclose(psfs.sum(dim=(-2, -1)).numpy(), 1, rtol=1e-5)
    centre = (psfs.sum(dim=-1) * torch.arange(15.0)).sum(dim=-1)  # row centroids: kernels centred at k // 2
    np.testing.assert_allclose(centre.numpy(), 7, atol=1)
    # field curvature only: a corner's PSF is not the centre's, and opposite corners have the same PSF
    assert not torch.allclose(psfs[0], psfs[4], atol=1e-4)
    torch.testing.assert_close(psfs[0], psfs[8], rtol=0, atol=1e-5)


def ssim_l1(pred, truth):
    return 0.84 * (1 - ssim(pred, truth).mean()) + 0.16 * F.l1_loss(pred, truth)


@pytest.mark.parametrize(
    "loss, function", [("mse", F.mse_loss), ("l1", F.l1_loss), ("ssim-l1", ssim_l1)], ids=["mse", "l1", "ssim-l1"]
)
def test_every_loss_trains_and_validates_with_that_loss(loss, function, train_files, tmp_path):
    summary = train(make_config(train_files.data, model={"name": "unet"}, loss=loss), tmp_path, progress=False)
    assert np.isfinite(summary["final"]["train_loss"])
    val = H5Pairs(train_files.data, "val")
    items = [val[i] for i in range(len(val))]
    x, y = torch.stack([s["blurred"] for s in items]), torch.stack([s["sharp"] for s in items])
    model, _, _ = load_model(tmp_path / "last.pt")
    with torch.no_grad():
        expected = float(function(model(x), y))  # all 4 validation samples are one batch
    assert summary["final"]["val_loss"] == pytest.approx(expected, rel=1e-5)


# ---- learning-rate schedule and early stop ---------------------------------------------------------------------------

PLATEAU = [3.0, 2.0, 2.5, 2.5, 2.5, 2.5]  # validation losses: best at epoch 2, then no improvement


@pytest.mark.parametrize(
    "patience, factors",
    [(0, [1, 1, 1 / 2, 1 / 4, 1 / 8, 1 / 16]), (1, [1, 1, 1, 1 / 2, 1 / 2, 1 / 4]), (3, [1, 1, 1, 1, 1, 1 / 2])],
)
def test_learning_rate_halves_after_patience_epochs_without_improvement(
    patience, factors, train_files, tmp_path, monkeypatch
):
    scripted_validation(monkeypatch, PLATEAU)
    config = make_config(train_files.data, model={"name": "unet"}, epochs=6, patience=patience)
    summary = train(config, tmp_path, progress=False)
    rows = read_metrics(tmp_path)
    assert [row["val_loss"] for row in rows] == PLATEAU
    assert [row["lr"] for row in rows] == pytest.approx([1e-3 * f for f in factors])
    assert summary["best"]["epoch"] == 2 and torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 2


def test_early_stop_stops_and_stays_stopped(train_files, tmp_path, monkeypatch):
    scripted_validation(monkeypatch, PLATEAU)
    config = make_config(train_files.data, model={"name": "unet"}, epochs=6, early_stop=2)
    messages = []
    summary = train(config, tmp_path, progress=False, echo=messages.append)
    assert summary["epochs"] == 4  # epochs 3 and 4 did not improve on epoch 2
    assert messages[-1] == "early stop: no improvement in 2 epochs"
    assert len(read_metrics(tmp_path)) == 4
    assert torch.load(tmp_path / "last.pt", weights_only=True)["stopped_early"] is True
    resumed = train(replace_epochs(config, 10), tmp_path, resume=True, progress=False)
    assert resumed["epochs"] == 4 and len(read_metrics(tmp_path)) == 4


def test_running_out_of_epochs_is_not_an_early_stop(train_files, tmp_path, monkeypatch):
    scripted_validation(monkeypatch, PLATEAU)
    config = make_config(train_files.data, model={"name": "unet"}, epochs=4, early_stop=2)
    train(config, tmp_path, progress=False)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["stopped_early"] is False


def test_resuming_an_early_stopped_run_says_why_it_does_not_continue(train_files, tmp_path, monkeypatch):
    scripted_validation(monkeypatch, PLATEAU)
    config = make_config(train_files.data, model={"name": "unet"}, epochs=6, early_stop=2)
    train(config, tmp_path, progress=False)
    messages = []
    train(replace_epochs(config, 10), tmp_path, resume=True, progress=False, echo=messages.append)
    assert "early" in messages[-1] and "raise --epochs" not in messages[-1]


def replace_epochs(config, epochs):
    return TrainConfig.from_dict({**config.to_dict(), "epochs": epochs})


# ---- reproducibility and sampling ------------------------------------------------------------------------------------


def test_same_seed_same_run_other_seed_other_run(train_files, tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(make_config(train_files.data, epochs=2, seed=seed), tmp_path / name, progress=False)
        runs[name] = values(read_metrics(tmp_path / name))
    np.testing.assert_array_equal(runs["a"], runs["b"])
    assert_same_weights(tmp_path / "a" / "last.pt", tmp_path / "b" / "last.pt")
    assert not np.allclose(runs["a"][:, 1:], runs["c"][:, 1:], rtol=1e-6, atol=0)


def test_batches_come_from_the_sampler_seeded_by_seed_and_epoch(train_files, tmp_path, monkeypatch):
    seen = record_batches(monkeypatch)
    train(make_config(train_files.data, epochs=2, seed=3), tmp_path, progress=False)
    pairs = H5Pairs(train_files.data, "train")
    val = H5Pairs(train_files.data, "val")
    for epoch in (1, 2):
        sampler = DistributedSampler(pairs, num_replicas=1, rank=0, shuffle=True, seed=3, drop_last=True)
        sampler.set_epoch(epoch)
        expected = [int(pairs.indices[i]) for i in sampler]
        drawn = [i for e, is_train, batch in seen if e == epoch and is_train for i in batch]
        assert drawn == expected
        assert sorted(drawn) == sorted(pairs.indices.tolist())  # every training sample once per epoch
    assert [batch for _, is_train, batch in seen if not is_train] == [val.indices.tolist()] * 2


def test_dataloader_workers_give_the_same_run(train_files, tmp_path):
    """Two workers, each with its own h5py handle, give the batches (and so the run) of in-process loading."""
    for workers in (0, 2):
        train(make_config(train_files.data, epochs=2, workers=workers), tmp_path / str(workers), progress=False)
    np.testing.assert_array_equal(values(read_metrics(tmp_path / "0")), values(read_metrics(tmp_path / "2")))
    assert_same_weights(tmp_path / "0" / "last.pt", tmp_path / "2" / "last.pt")


# ---- simulated data --------------------------------------------------------------------------------------------------


def test_simulated_run_draws_fresh_training_samples_each_epoch(train_files, tmp_path, monkeypatch):
    seen = record_batches(monkeypatch)
    sim = simulate_config(train_files)
    summary = train(make_config(None, simulate=sim, epochs=2), tmp_path / "a", progress=False)
    assert summary["steps"] == 2 * sim.steps_per_epoch
    per_epoch = sim.steps_per_epoch * BATCH
    for epoch in (1, 2):
        drawn = [i for e, is_train, batch in seen if e == epoch and is_train for i in batch]
        assert drawn == list(range((epoch - 1) * per_epoch, epoch * per_epoch))
    validation = list(range(VALIDATION_START, VALIDATION_START + sim.val_samples))
    assert [batch for _, is_train, batch in seen if not is_train] == [validation] * 2
    ckpt = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert ckpt["data"]["kind"] == "simulate" and ckpt["data"]["lens"] == str(train_files.lens)
    assert {k: v for k, v in ckpt["data"].items() if k not in ("kind", "lens_toml")} == sim.to_dict()
    assert Lens.from_toml(ckpt["lens_toml"]) == train_files.lens_obj
    # the stream is a function of the seed: the same run again gives the same metrics and weights
    train(make_config(None, simulate=sim, epochs=2), tmp_path / "b", progress=False)
    np.testing.assert_array_equal(values(read_metrics(tmp_path / "a")), values(read_metrics(tmp_path / "b")))
    assert_same_weights(tmp_path / "a" / "last.pt", tmp_path / "b" / "last.pt")


def test_simulated_run_with_workers_is_reproducible(train_files, tmp_path, monkeypatch):
    """Workers split the stream (worker w of W takes every W-th sample), so batches are composed differently from
    in-process loading; an epoch still covers the same samples, and a run is reproducible for a worker count."""
    seen = record_batches(monkeypatch)
    sim = simulate_config(train_files, steps_per_epoch=2)
    for name, workers in (("w0", 0), ("w2", 2), ("w2-again", 2)):
        seen.clear()
        train(make_config(None, simulate=sim, epochs=2, workers=workers), tmp_path / name, progress=False)
        drawn = {epoch: sorted(i for e, t, batch in seen if e == epoch and t for i in batch) for epoch in (1, 2)}
        assert drawn == {1: list(range(8)), 2: list(range(8, 16))}, name
    np.testing.assert_array_equal(values(read_metrics(tmp_path / "w2")), values(read_metrics(tmp_path / "w2-again")))
    assert_same_weights(tmp_path / "w2" / "last.pt", tmp_path / "w2-again" / "last.pt")


def test_simulated_epoch_has_steps_per_epoch_batches_with_workers(train_files, tmp_path):
    sim = simulate_config(train_files, steps_per_epoch=3)
    summary = train(make_config(None, simulate=sim, workers=2), tmp_path, progress=False)
    assert summary["steps"] == 3


def test_no_validation_samples_is_refused(train_files, tmp_path):
    with pytest.raises(ValueError, match="val_samples"):
        config = make_config(None, simulate=simulate_config(train_files, val_samples=0, steps_per_epoch=1))
        train(config, tmp_path, progress=False)


# ---- options: mixed precision, TensorBoard, torch.compile ------------------------------------------------------------


def test_bf16_autocast_on_cpu_trains(train_files, tmp_path):
    summary = train(make_config(train_files.data, amp="bf16"), tmp_path, progress=False)
    assert all(np.isfinite(summary["final"][k]) for k in ("train_loss", "val_loss", "val_psnr", "val_ssim"))
    assert all(w.dtype == torch.float32 for w in weights(tmp_path / "last.pt").values())


def test_fp16_on_cpu_is_refused(train_files, tmp_path):
    with pytest.raises(ValueError, match=r"^amp: fp16 needs a CUDA device; use --amp bf16 on the CPU$"):
        train(make_config(train_files.data, amp="fp16"), tmp_path, progress=False)


def test_tensorboard_logs_the_metrics(train_files, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(make_config(train_files.data, epochs=2, tensorboard=True), tmp_path, progress=False)
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    rows = read_metrics(tmp_path)
    for key in ("lr", "train_loss", "val_loss", "val_psnr", "val_ssim", "samples_per_s"):
        logged = events.Scalars(key)
        assert [e.step for e in logged] == [1, 2], key
        assert [e.value for e in logged] == pytest.approx([row[key] for row in rows], rel=1e-6), key


def test_overwrite_replaces_the_tensorboard_logs(train_files, tmp_path):
    train(make_config(train_files.data, tensorboard=True), tmp_path, progress=False)
    train(make_config(train_files.data, tensorboard=True, seed=1), tmp_path, overwrite=True, progress=False)
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_compiled_model_trains_like_the_eager_one(train_files, tmp_path):
    for name, compile_ in (("eager", False), ("compiled", True)):
        config = make_config(train_files.data, compile=compile_)  # cg-unet: no graph breaks in training
        train(config, tmp_path / name, progress=False)
    np.testing.assert_allclose(
        values(read_metrics(tmp_path / "eager")), values(read_metrics(tmp_path / "compiled")), rtol=1e-4
    )
    load_model(tmp_path / "compiled" / "last.pt")  # the state dict of the model, not of the compiled wrapper


# ---- interrupted at the worst moments --------------------------------------------------------------------------------


def test_resume_continues_where_the_run_stopped(train_files, tmp_path, monkeypatch):
    """An interruption (KeyboardInterrupt, as SIGTERM/SIGINT) in the middle of epoch 3; resume equals one run."""
    config = make_config(train_files.data, epochs=4)
    train(config, tmp_path / "whole", progress=False)
    real = learn.train._train_epoch

    def interrupted(run, net, epoch, progress):
        if epoch == 3:
            raise KeyboardInterrupt
        return real(run, net, epoch, progress)

    with monkeypatch.context() as m:
        m.setattr(learn.train, "_train_epoch", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(config, tmp_path / "split", progress=False)
    assert torch.load(tmp_path / "split" / "last.pt", weights_only=True)["epoch"] == 2
    messages = []
    summary = train(config, tmp_path / "split", resume=True, progress=False, echo=messages.append)
    assert messages[0] == f"resuming {tmp_path / 'split'} after epoch 2 (step 20)"
    assert summary["epochs"] == 4 and summary["steps"] == 40
    whole, split = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "split")
    assert [row["epoch"] for row in split] == [1, 2, 3, 4]
    np.testing.assert_array_equal(values(whole), values(split))
    assert_same_weights(tmp_path / "whole" / "last.pt", tmp_path / "split" / "last.pt")


def test_killed_between_last_and_best_checkpoint(train_files, tmp_path, monkeypatch):
    scripted_validation(monkeypatch, PLATEAU)
    real = learn.train.save_checkpoint

    def killed_before_best_of_epoch_2(path, state):
        if path.name == "best.pt" and state["epoch"] == 2:
            raise KeyboardInterrupt  # the state on disk of a SIGKILL between the two files
        return real(path, state)

    config = make_config(train_files.data, model={"name": "unet"}, epochs=4)
    with monkeypatch.context() as m:
        m.setattr(learn.train, "save_checkpoint", killed_before_best_of_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            train(config, tmp_path, progress=False)
    summary = train(config, tmp_path, resume=True, progress=False)
    assert summary["best"]["epoch"] == 2
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 2


def test_resuming_a_finished_run_repairs_its_metrics(train_files, tmp_path):
    config = make_config(train_files.data, model={"name": "unet"}, epochs=2)
    train(config, tmp_path, progress=False)
    (tmp_path / "metrics.csv").write_text("epoch,lr,tr")  # killed in the middle of writing it
    train(config, tmp_path, resume=True, progress=False)
    assert len(read_metrics(tmp_path)) == 2


def test_crops_smaller_than_twice_the_psf_window_are_warned_about(train_files, tmp_path):
    """Simulated crops under twice the PSF window: most of their blur comes from outside them; the run says so."""
    for size, warned in ((24, True), (32, False)):  # the PSF window is 15 px
        said = []
        sim = simulate_config(train_files, size=size, steps_per_epoch=1)
        train(make_config(None, simulate=sim), tmp_path / str(size), progress=False, echo=said.append)
        hits = [m for m in said if m.startswith(f"warning: {size} px crops are less than twice the PSF window (15 px)")]
        assert bool(hits) is warned, said
