"""Training an inverse operator: a dataset file or on-the-fly simulation in, checkpoints and logs out.

``train(config, out)`` runs Adam on the chosen loss (plus ``flux_weight`` times the local flux error,
:func:`learn.metrics.local_flux_error`, over boxes of the forward model's PSF window), validates every epoch (loss,
PSNR, SSIM), halves the learning rate when the validation loss has not improved for ``patience`` epochs
(``ReduceLROnPlateau``), optionally stops early, and writes into ``out``:

* ``last.pt`` after every epoch and ``best.pt`` when the validation loss improves (:mod:`learn.checkpoint`);
* ``metrics.csv``, one row per epoch (epoch, lr, train_loss, val_loss, val_psnr, val_ssim, samples_per_s,
  seconds), rewritten from the checkpoint's history so a resumed run has no duplicate rows;
* ``tensorboard/`` event files when ``tensorboard=True``;
* ``summary.json``, the final summary.

``resume=True`` continues from ``last.pt`` (model, optimizer, scheduler, epoch, RNG states): a run killed at any point
repeats at most the epoch it was in. Batches are drawn by a :class:`~torch.utils.data.DistributedSampler` seeded by
``seed`` and the epoch (also with one process), so the order of samples does not depend on how the run was split.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) each process trains a
:class:`~torch.nn.parallel.DistributedDataParallel` replica on ``batch_size / world`` samples of each global batch
(NCCL on CUDA, gloo on CPU); gradients are averaged, so R processes take the same steps as one process with the
same global batch. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, Subset

from learn.checkpoint import check_same_architecture, load_checkpoint, load_weights, save_checkpoint
from learn.config import SimulateConfig, TrainConfig
from learn.data import VALIDATION_START, H5Pairs, SimulatedPairs, read_data_info, worker_init
from learn.metrics import local_flux_error, psnr, ssim
from learn.models import ModelConfig, build_model, count_parameters

__all__ = ["train"]

CSV_FIELDS = ("epoch", "lr", "train_loss", "val_loss", "val_psnr", "val_ssim", "samples_per_s", "seconds")


@dataclass
class _Dist:
    rank: int
    world: int
    device: torch.device
    owns_group: bool = False  # this run created the process group, so it also destroys it

    def close(self) -> None:
        """Destroy the process group this run created: a gloo group left to interpreter exit can abort the process
        ("terminate called without an active exception")."""
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()


def _distributed(device: str) -> _Dist:
    """Rank, world size and device, from torchrun's environment (one process: rank 0 of 1)."""
    from optisim.cli._options import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world == 1:
        return _Dist(0, 1, dev)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    owns = not torch.distributed.is_initialized()
    if owns:
        torch.distributed.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return _Dist(torch.distributed.get_rank(), world, dev, owns)


class _Data:
    """The run's data: a dataset file's splits or a simulated stream, and what the model and checkpoint need."""

    def __init__(self, config: TrainConfig, dist: _Dist):
        self.config, self.dist = config, dist
        if config.data is not None:
            info = read_data_info(config.data)
            self.lens, self.forward_model = info.lens, info.model
            self.record = {"kind": "dataset", "path": str(config.data), "fingerprint": info.fingerprint}
            self.train_set, self.val_set = H5Pairs(config.data, "train"), H5Pairs(config.data, "val")
            if len(self.val_set) == 0:
                raise ValueError(f"{config.data}: the dataset has no validation samples (split 'val' is empty)")
            if len(self.train_set) < config.batch_size:
                raise ValueError(
                    f"{config.data}: {len(self.train_set)} training samples, fewer than one batch of "
                    f"{config.batch_size}; lower --batch-size"
                )
            self.steps = len(self.train_set) // config.batch_size
        else:
            self._simulated(config.simulate)
        if config.batch_size % dist.world:
            raise ValueError(f"batch_size: {config.batch_size} is not divisible by the {dist.world} processes")
        self.flux_window = int(self.forward_model.kernels.shape[-1])  # the flux term's box: the PSF window

    def _simulated(self, sim: SimulateConfig):
        from optisim.lens import load_lens
        from optisim.noise import CameraNoise
        from optisim.psfmodel import model_digest, read_psf_model
        from optisim.samples import SampleGenerator, make_source

        model, extra = None, {}
        if sim.psf_model is not None:
            self.lens, model = read_psf_model(sim.psf_model)
            extra = {"psf_model_sha256": model_digest(model)}
        else:
            self.lens = load_lens(sim.lens)
        noise = None if sim.noise is None else CameraNoise.from_dict(sim.noise)
        self.generator = SampleGenerator(
            self.lens,
            make_source(sim.source, channel=sim.channel),
            size=sim.size,
            seed=self.config.seed,
            noise=noise,
            kernel_size=sim.kernel_size,
            grid=sim.grid,
            rank=sim.rank,
            tol=sim.tol,
            model=model,
        )
        self.forward_model = self.generator.model
        self.record = {"kind": "simulate", **sim.to_dict(), **extra, "lens_toml": self.lens.to_toml()}
        self.steps = sim.steps_per_epoch
        self.val_set = SimulatedPairs(
            self.generator,
            start=VALIDATION_START,
            count=sim.val_samples // self.dist.world,
            rank=self.dist.rank,
            world=self.dist.world,
        )

    def psfs(self, count: int) -> np.ndarray:
        """``count`` = n² PSFs on an n x n grid over the field (MultiWienerNet's initial PSFs), each summing to 1."""
        n = round(count**0.5)
        if n * n != count:
            raise ValueError(f"psf_count: expected a square number (an n x n grid of PSFs), got {count}")
        m = self.forward_model
        hy, hx = np.meshgrid(np.linspace(m.field_y[0], m.field_y[-1], n), np.linspace(m.field_x[0], m.field_x[-1], n))
        p = m.psfs_at(hx.T.ravel(), hy.T.ravel()).clip(min=0)
        return (p / p.sum(axis=(-2, -1), keepdims=True)).astype(np.float32)

    def loader(self, epoch: int, *, train: bool) -> DataLoader:
        per_rank = self.config.batch_size // self.dist.world
        workers = self.config.workers
        common = {"num_workers": workers, "worker_init_fn": worker_init if workers else None}
        common["generator"] = torch.Generator().manual_seed(self.config.seed * 100003 + epoch)
        if not train:
            ds = self.val_set
            if isinstance(ds, H5Pairs) and self.dist.world > 1:
                ds = Subset(ds, range(self.dist.rank, len(ds), self.dist.world))
            return DataLoader(ds, batch_size=per_rank, **common)
        if self.config.data is None:
            count = self.steps * per_rank
            start = (epoch - 1) * self.steps * self.config.batch_size
            ds = SimulatedPairs(
                self.generator,
                start=start,
                count=count,
                rank=self.dist.rank,
                world=self.dist.world,
                batch_size=per_rank,
            )
            return DataLoader(ds, batch_size=per_rank, drop_last=True, **common)
        sampler = DistributedSampler(
            self.train_set,
            num_replicas=self.dist.world,
            rank=self.dist.rank,
            shuffle=True,
            seed=self.config.seed,
            drop_last=True,
        )
        sampler.set_epoch(epoch)
        return DataLoader(self.train_set, batch_size=per_rank, sampler=sampler, drop_last=True, **common)


def _loss(config: TrainConfig, pred: torch.Tensor, truth: torch.Tensor, window: int) -> torch.Tensor:
    """The training loss, plus ``flux_weight`` times the local flux error over ``window``-pixel boxes (the PSF side)."""
    loss = _pixel_loss(config.loss, pred, truth)
    if config.flux_weight:  # skipped at 0: the same operations, so the same weights as before the term existed
        loss = loss + config.flux_weight * local_flux_error(pred, truth, window=window)
    return loss


def _pixel_loss(name: str, pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    if name == "mse":
        return F.mse_loss(pred, truth)
    if name == "l1":
        return F.l1_loss(pred, truth)
    # SSIM + L1 mix of Zhao et al. (IEEE TCI 2017): 0.84 (1 - SSIM) + 0.16 L1
    return 0.84 * (1 - ssim(pred.float(), truth.float()).mean()) + 0.16 * F.l1_loss(pred, truth)


def _autocast(config: TrainConfig, device: torch.device):
    if config.amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if config.amp == "bf16" else torch.float16)


class _Run:
    """The state of one training run: model, optimizer, scheduler, history; checkpoints and logs."""

    def __init__(self, config: TrainConfig, data: _Data, dist: _Dist, out: Path):
        self.config, self.data, self.dist, self.out = config, data, dist, out
        mc = replace(
            config.model, sensor_shape=tuple(data.lens.sensor_shape), psf_size=data.forward_model.kernels.shape[-1]
        )
        self.model_config = mc
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            psfs = torch.from_numpy(data.psfs(mc.psf_count)) if mc.name == "multiwiener" else None
            self.model = build_model(mc, psfs=psfs).to(dist.device)
        if config.init is not None:
            self._initialise(config.init)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=0.5, patience=config.patience
        )
        self.scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" else None  # train() checked: CUDA
        self.epoch, self.step, self.history, self.best, self.stopped_early = 0, 0, [], None, False

    def _initialise(self, path) -> None:
        """Start from the weights of the checkpoint ``path`` (same architecture; the sensor may differ)."""
        ckpt = load_checkpoint(path, map_location=self.dist.device)
        check_same_architecture(ModelConfig.from_dict(ckpt["model_config"]), self.model_config, path)
        load_weights(self.model, ckpt["model"], path)

    def state(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "model_config": self.model_config.to_dict(),
            "model": self.model.state_dict(),
            "lens_toml": self.data.lens.to_toml(),
            "data": self.data.record,
            "train_config": self.config.to_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best": self.best,
            "history": self.history,
            "stopped_early": self.stopped_early,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "rng": rng,
        }

    def restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path, map_location=self.dist.device)
        check_same_architecture(ModelConfig.from_dict(ckpt["model_config"]), self.model_config, path)
        if not _same_data(ckpt["data"], self.data.record):
            raise ValueError(
                f"{path}: the checkpoint was trained on other data ({_data_label(ckpt['data'])}, "
                f"not {_data_label(self.data.record)}); resume with the same data or start a new run"
            )
        load_weights(self.model, ckpt["model"], path)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step, self.best = int(ckpt["epoch"]), int(ckpt["step"]), ckpt["best"]
        self.history, self.stopped_early = list(ckpt["history"]), bool(ckpt["stopped_early"])
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())
        if "cuda" in ckpt["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["rng"]["cuda"]])

    def save(self, improved: bool) -> None:
        if not self.dist.main:
            return
        state = self.state()
        if improved:  # best first: a kill between the two saves must not leave last.pt pointing past best.pt
            save_checkpoint(self.out / "best.pt", state)
        save_checkpoint(self.out / "last.pt", state)
        self.write_csv()

    def write_csv(self) -> None:
        if not self.dist.main:
            return
        tmp = self.out / "metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows({k: row[k] for k in CSV_FIELDS} for row in self.history)
        os.replace(tmp, self.out / "metrics.csv")


def _same_data(a: dict, b: dict) -> bool:
    """The same training data: a dataset with the same fingerprint (wherever it lies), or the same simulation."""
    if a.get("kind") == b.get("kind") == "dataset":
        return a["fingerprint"] == b["fingerprint"]
    return a == b


def _data_label(record: dict) -> str:
    if record.get("kind") == "dataset":
        return f"dataset {record['path']} with fingerprint {record['fingerprint'][:12]}"
    return f"simulation of lens {record.get('lens')!r} from source {record.get('source')!r}"


def _train_epoch(run: _Run, net, epoch: int, progress: bool) -> tuple[float, float]:
    """One epoch; returns (mean training loss, samples per second) over all processes."""
    config, device = run.config, run.dist.device
    run.model.train()
    total, count, t0 = 0.0, 0, time.perf_counter()
    loader = run.data.loader(epoch, train=True)
    from tqdm import tqdm

    bar = tqdm(
        loader,
        total=run.data.steps,
        desc=f"epoch {epoch}/{config.epochs}",
        unit="batch",
        disable=not (progress and run.dist.main),
        leave=False,
    )
    for batch in bar:
        x = batch["blurred"].to(device, non_blocking=True)
        y = batch["sharp"].to(device, non_blocking=True)
        offsets = batch["offset"].to(device)
        with _autocast(config, device):
            pred = net(x, offsets)
        loss = _loss(config, pred.float(), y, run.data.flux_window)
        run.optimizer.zero_grad(set_to_none=True)
        if run.scaler is not None:
            run.scaler.scale(loss).backward()
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            loss.backward()
            run.optimizer.step()
        run.step += 1
        total, count = total + loss.item() * len(x), count + len(x)
        rate = count * run.dist.world / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{loss.item():.3g}", samples_s=f"{rate:.1f}")
    total, count = run.dist.all_sum([total, float(count)])
    return total / max(count, 1), count / (time.perf_counter() - t0)


@torch.no_grad()
def _validate(run: _Run, net) -> dict:
    config, device = run.config, run.dist.device
    run.model.eval()
    sums = [0.0, 0.0, 0.0, 0.0]
    for batch in run.data.loader(0, train=False):
        x, y = batch["blurred"].to(device), batch["sharp"].to(device)
        with _autocast(config, device):
            pred = net(x, batch["offset"].to(device))
        pred = pred.float()
        n = len(x)
        sums[0] += float(_loss(config, pred, y, run.data.flux_window)) * n
        sums[1] += float(psnr(pred, y).clamp(max=100).sum())
        sums[2] += float(ssim(pred, y).sum())
        sums[3] += n
    loss, p, s, n = run.dist.all_sum(sums)
    return {"val_loss": loss / n, "val_psnr": p / n, "val_ssim": s / n}


def _prepare_output(out: Path, resume: bool, overwrite: bool) -> None:
    last = out / "last.pt"
    if resume and not last.is_file():
        raise ValueError(f"--resume: {out} has no last.pt to resume from")
    if not resume and last.exists() and not overwrite:
        raise ValueError(
            f"{out} already holds a training run; use --resume to continue it or --overwrite to replace it"
        )
    out.mkdir(parents=True, exist_ok=True)
    if overwrite and not resume:
        for name in ("last.pt", "best.pt", "metrics.csv", "summary.json"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "tensorboard", ignore_errors=True)


def _tensorboard(out: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(out / "tensorboard"))


def train(config: TrainConfig, out, *, resume: bool = False, overwrite: bool = False, progress: bool = True, echo=None):
    """Train ``config.model`` and write checkpoints and logs into ``out`` (see the module docstring).

    Returns the summary dict (also written to ``out/summary.json``): epochs, best epoch and its validation
    metrics, training samples per second, parameters, seconds.
    """
    dist = _distributed(config.device)
    try:
        return _train(config, dist, out, resume=resume, overwrite=overwrite, progress=progress, echo=echo)
    finally:
        dist.close()


def _train(config: TrainConfig, dist: _Dist, out, *, resume, overwrite, progress, echo) -> dict:
    if config.amp == "fp16" and dist.device.type != "cuda":
        raise ValueError("amp: fp16 needs a CUDA device; use --amp bf16 on the CPU")
    echo = echo if echo is not None and dist.main else (lambda message: None)
    out = Path(out)
    if dist.main:
        _prepare_output(out, resume, overwrite)
    data = _Data(config, dist)
    if config.simulate is not None and config.simulate.size < 2 * data.flux_window:
        echo(f"warning: {config.simulate.size} px crops are less than twice the PSF window ({data.flux_window} px): "
             "most of each crop's blur comes from outside it, and networks learn little (measured: a CG U-Net(3) "
             "gained 0.7 dB in 300 steps on 64 px crops against a 55 px window, 3.1 dB on 128 px crops)")  # fmt: skip
    run = _Run(config, data, dist, out)
    if resume:
        run.restore(out / "last.pt")
        run.write_csv()
        echo(f"resuming {out} after epoch {run.epoch} (step {run.step})")
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    net = run.model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(net, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)
    writer = _tensorboard(out, config.tensorboard) if dist.main else None
    t_start = time.perf_counter()
    try:
        _epochs(run, net, writer, progress, echo)
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)
        if writer is not None:
            writer.close()
    summary = _summary(run, time.perf_counter() - t_start)
    if dist.main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _epochs(run: _Run, net, writer, progress: bool, echo) -> None:
    config = run.config
    if run.stopped_early:
        best = run.best["epoch"]
        echo(f"{run.out}: the run stopped early after epoch {run.epoch} (no improvement since epoch {best})")
    elif run.epoch >= config.epochs:
        echo(f"{run.out}: the run already finished after epoch {run.epoch} (raise --epochs to train longer)")
    while not run.stopped_early and run.epoch < config.epochs:
        epoch = run.epoch + 1
        t0 = time.perf_counter()
        train_loss, rate = _train_epoch(run, net, epoch, progress)
        metrics = _validate(run, net)
        run.scheduler.step(metrics["val_loss"])
        run.epoch = epoch
        row = {
            "epoch": epoch,
            "lr": run.optimizer.param_groups[0]["lr"],
            "train_loss": train_loss,
            **metrics,
            "samples_per_s": rate,
            "seconds": time.perf_counter() - t0,
        }
        run.history.append(row)
        # the scheduler's own criterion (a relative decrease of 1e-4) for best.pt and early stopping too
        improved = run.best is None or metrics["val_loss"] < run.best["val_loss"] * (1 - 1e-4)
        if improved:
            run.best = {"epoch": epoch, **metrics}
        stale = epoch - run.best["epoch"]
        run.stopped_early = config.early_stop > 0 and stale >= config.early_stop and epoch < config.epochs
        run.save(improved)
        if writer is not None:
            for key in ("lr", "train_loss", "val_loss", "val_psnr", "val_ssim", "samples_per_s"):
                writer.add_scalar(key, row[key], epoch)
        echo(
            f"epoch {epoch}/{config.epochs}: train loss {train_loss:.4g}, val loss {metrics['val_loss']:.4g}, "
            f"PSNR {metrics['val_psnr']:.2f} dB, SSIM {metrics['val_ssim']:.4f}, {rate:.1f} samples/s"
            + (" *" if improved else "")
        )
        if run.stopped_early:
            echo(f"early stop: no improvement in {stale} epochs")


def _summary(run: _Run, seconds: float) -> dict:
    rates = [row["samples_per_s"] for row in run.history]
    return {
        "model": run.model_config.describe(),
        "parameters": count_parameters(run.model),
        "epochs": run.epoch,
        "steps": run.step,
        "best": run.best,
        "final": run.history[-1] if run.history else None,
        "train_samples_per_s": float(np.median(rates)) if rates else None,
        "seconds_this_session": seconds,
        "device": str(run.dist.device),
        "processes": run.dist.world,
        "rank": run.dist.rank,
        "checkpoints": {"best": str(run.out / "best.pt"), "last": str(run.out / "last.pt")},
    }
