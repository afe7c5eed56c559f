"""The paper's 1D experiment (Section IV.A, Eq. 5, Fig. 3): networks learning a spatially varying convolution.

Data: ``m ~ U(0, 1)`` of length 30 (float32), ``n = H m`` with the matrix ``H`` of Eq. (5). Each network maps
``m`` to ``n`` and is trained with Adam (default parameters) on the MSE; what it learned is read back as a matrix.

The matrix, Eq. (5), as implemented
-----------------------------------
``n = H m``, so ``H[x, x']`` carries input pixel ``x'`` to output pixel ``x`` and column ``x'`` is the spread of
input pixel ``x'`` ("each source point spreads with its own Gaussian"). Pixels are indexed 0 .. N-1::

    H[x, x'] = exp(-((x - x') - δ(x'))² / (2 σ(x')²))
    (δ, σ) = (1 - x'/h, 0.5)                              if x' < h,   h = N / 2 (15 for N = 30)
             (0, 0.5 (2 - x'/h) + 2 (x'/h - 1))           otherwise

Two readings differ from the paper's text, both forced by the paper itself:

- **δ is a shift relative to the pixel.** Read literally, ``exp(-(x - δ)²/...)`` puts every column's Gaussian at
  row 0 or 1. The paper calls H "a Gaussian for each pixel with varying offset" and a superposition of three
  *kernels*, (δ=1, σ=0.5), (δ=0, σ=0.5) and (δ=0, σ=2), which a convolution basis must represent; that holds
  only if ``x - δ`` means ``(x - x') - δ``. The condition "x < 15" is read as ``x' < 15`` since δ, σ depend on x'.
- **σ's second term has its sign corrected.** As printed, ``0.5 (2 - x'/15) + 2 (1 - x'/15)`` falls from 0.5 to
  zero at x' = 18 (H undefined there) and grows negative after. With ``2 (x'/15 - 1)`` it interpolates linearly
  from 0.5 at x' = 15 to 2 at x' = 30, the two kernels the paper names.

H is not normalised (nor is it in the paper): column sums run from 1.24 (σ = 0.5) to 3.97 (σ ≈ 2), so ``n``
reaches about 3.6 while ``m`` lies in [0, 1]. PSNR is the paper's ``10 log10(1 / MSE)`` all the same.

The models are linear
---------------------
The task is linear, so no model has an activation between its convolutions: each is an affine map ``A m + b``
and its learned matrix ``A`` is read exactly from its responses to unit vectors minus its response to zeros
(:func:`learned_matrix`). CoordGate's encoder g is a nonlinear MLP, but it sees only the coordinates, so the CG
models stay affine in ``m`` too. Convolutions use 'same' zero padding, the source of the CNNs' position awareness.

- ``CNN(L, k, c)``: L convolutions of kernel k; c channels except the last, which has 1.
- ``CCNN(L, k, c)``: the same with CoordConv: the coordinate channel (``linspace(-1, 1, N)`` over the signal) is
  concatenated to the input of every convolution.
- ``CG(L, k, c, p)``: L convolutions of kernel k with c channels (the first 1 -> c), each followed by a CoordGate
  gate (a p-layer MLP with c nodes per layer on the same coordinate), then a 1x1 convolution c -> 1 that sums the
  gated channels (weights and bias). This is the minimal reading of "one convolution gated per position, summed to
  one channel": the CoordGate's own c -> c ``mix`` is off, since a c -> c map before a c -> 1 map adds only
  redundant parameters. The encoder's activation is GELU (the paper names none): with only c = 3 nodes per layer,
  ReLU units die and 2 of 4 seeds of CG(1, 7, 3, 3) stalled at 18.6 dB, where GELU (and SiLU, tanh) converged for
  all of them. CG(1, 7, 3, 3) has 58 parameters.

What a single gated layer can reach: the gate follows the convolution (the paper's Eq. 3), so the model's kernel
varies with the *output* pixel x, and at each x it is a mix of c kernels of k taps. The best such fit of H (free
gates, the rank-3 approximation of H's 7-wide band) has PSNR 27 dB, about 29 dB with the borders' free taps;
the tails of the wide Gaussian beyond ±3 pixels alone cap any k = 7 layer at 41 dB. Deeper CNNs have a wider
receptive field (CNN(8,7,4): 49 pixels) and learn slowly but can go beyond it (see :func:`run_conv1d`).

Files written by :func:`save_conv1d`
------------------------------------
- ``conv1d.json``: ``{"config": {...}, "definitions": {...}, "results": [...]}``, one result per model: ``name``,
  ``spec``, ``parameters`` (count), ``psnr_db`` and ``mse`` (validation set), ``inference_us`` (µs per sample,
  median of timed runs over the validation set), ``matrix_error`` (‖A − H‖_F / ‖H‖_F), ``train_s`` (seconds),
  ``train_mse`` (mean of the last 10% of steps) and ``loss_curve`` (training MSE every ``steps / 50`` steps).
- ``conv1d_matrices.npz``: ``H`` (N, N), ``names`` (M,) str and ``matrices`` (M, N, N), float64, rows = output.
- ``conv1d.png``: the figure (:func:`plot_conv1d`).

Examples
--------
>>> results = run_conv1d(models=[("CG", 1, 7, 3, 3), ("CNN", 8, 7, 4)])  # doctest: +SKIP
>>> print(format_conv1d(results))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from learn.coordgate import CoordGate

__all__ = [
    "DEFAULT_MODELS",
    "CCNN1d",
    "CG1d",
    "CNN1d",
    "build_model",
    "convolution_matrix",
    "format_conv1d",
    "learned_matrix",
    "make_data",
    "model_name",
    "parse_model",
    "plot_conv1d",
    "run_conv1d",
    "save_conv1d",
    "signal_coordinates",
]

DEFAULT_MODELS = (
    ("CNN", 1, 7, 1),
    ("CNN", 3, 7, 4),
    ("CNN", 4, 7, 4),
    ("CNN", 4, 7, 20),
    ("CNN", 8, 7, 4),
    ("CCNN", 4, 7, 4),
    ("CG", 1, 7, 3, 3),
)
FAMILIES = {"CNN": ("L", "k", "c"), "CCNN": ("L", "k", "c"), "CG": ("L", "k", "c", "p")}
DEFAULT_STEPS = 10000
DEFAULT_BATCH = 64


def convolution_matrix(n: int = 30) -> np.ndarray:
    """The convolution matrix H of Eq. (5) (read as in the module docstring), ``n = H m``.

    Parameters
    ----------
    n : int >= 2, signal length in pixels (30 in the paper; the switch point and ramps scale with n / 2)

    Returns
    -------
    (n, n) float64 array, ``H[x, x']``: output pixel x, input pixel x'; column x' is a Gaussian centred on
    ``x' + δ(x')`` of standard deviation ``σ(x')`` (pixels), peak 1, not normalised.
    """
    if not isinstance(n, int | np.integer) or n < 2:
        raise ValueError(f"n: expected an integer >= 2, got {n!r}")
    half = n / 2
    src = np.arange(n, dtype=float)  # x'
    t = src / half
    delta = np.where(src < half, 1 - t, 0.0)
    sigma = np.where(src < half, 0.5, 0.5 * (2 - t) + 2 * (t - 1))
    offset = np.arange(n, dtype=float)[:, None] - src[None, :]  # x - x'
    return np.exp(-((offset - delta) ** 2) / (2 * sigma**2))


def make_data(n_samples: int = 10000, length: int = 30, *, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``m ~ U(0, 1)`` and targets ``n = m Hᵀ`` (i.e. ``n = H m`` per sample).

    Returns
    -------
    m, n : (n_samples, length) float32 arrays; m in [0, 1), n in [0, 3.9]
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    _check_sizes(n_samples=n_samples)
    H = convolution_matrix(length)
    m = rng.random((n_samples, length), dtype=np.float32)
    n = (m.astype(np.float64) @ H.T).astype(np.float32)
    return m, n


def signal_coordinates(length: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """(1, 1, length) tensor, the normalised pixel coordinate ``linspace(-1, 1, length)`` (CoordConv, CoordGate)."""
    return torch.linspace(-1, 1, length, device=device, dtype=dtype).view(1, 1, length)


def _check_input(x: torch.Tensor) -> None:
    if x.ndim != 3 or x.shape[1] != 1:
        raise ValueError(f"x: expected shape (B, 1, L), got {tuple(x.shape)}")


def _check_sizes(**sizes) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")


class CNN1d(nn.Module):
    """CNN(L, k, c): ``layers`` linear 'same' convolutions of kernel ``kernel_size``, c channels, last with 1.

    ``forward(x)``: (B, 1, N) -> (B, 1, N).
    """

    coordconv = False

    def __init__(self, layers: int, kernel_size: int, channels: int):
        super().__init__()
        _check_sizes(layers=layers, kernel_size=kernel_size, channels=channels)
        w, extra = [1] + [channels] * (layers - 1) + [1], int(self.coordconv)
        self.convs = nn.ModuleList(
            nn.Conv1d(w[i] + extra, w[i + 1], kernel_size, padding="same") for i in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x)
        coords = None
        if self.coordconv:
            coords = signal_coordinates(x.shape[-1], device=x.device, dtype=x.dtype).expand(x.shape[0], 1, -1)
        for conv in self.convs:
            x = conv(x if coords is None else torch.cat([x, coords], dim=1))
        return x


class CCNN1d(CNN1d):
    """CCNN(L, k, c): :class:`CNN1d` with the coordinate channel concatenated to every convolution's input."""

    coordconv = True


class CG1d(nn.Module):
    """CG(L, k, c, p): L gated convolutions (c channels, each gated by a p-layer, c-node MLP), then 1x1 c -> 1.

    ``forward(x)``: (B, 1, N) -> (B, 1, N). In evaluation mode without gradients the gates are cached per length.
    ``activation``: the encoder's, a key of ``learn.coordgate.ACTIVATIONS`` (GELU: see the module docstring).
    """

    def __init__(self, layers: int, kernel_size: int, channels: int, encoder_layers: int, *, activation="gelu"):
        super().__init__()
        _check_sizes(layers=layers, kernel_size=kernel_size, channels=channels, encoder_layers=encoder_layers)
        w = [1] + [channels] * layers
        options = {
            "mix": False,
            "hidden": channels,
            "layers": encoder_layers,
            "activation": activation,
            "init": "random",
        }
        self.gates = nn.ModuleList(
            CoordGate(
                channels, block=nn.Conv1d(w[i], channels, kernel_size, padding="same"), dims=1, in_features=1, **options
            )
            for i in range(layers)
        )
        self.head = nn.Conv1d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x)
        coords = signal_coordinates(x.shape[-1], device=x.device, dtype=x.dtype)
        for gate in self.gates:
            x = gate(x, coords, cache_key=("conv1d", x.shape[-1]))
        return self.head(x)


def model_name(spec) -> str:
    """``("CG", 1, 7, 3, 3)`` -> ``"CG(1,7,3,3)"``."""
    return f"{spec[0]}({','.join(str(int(v)) for v in spec[1:])})"


def _check_spec(spec) -> tuple:
    if not isinstance(spec, tuple | list) or not spec or spec[0] not in FAMILIES:
        raise ValueError(f"model: expected a spec such as ('CNN', 4, 7, 4) or ('CG', 1, 7, 3, 3), got {spec!r}")
    family, args = spec[0], tuple(spec[1:])
    names = FAMILIES[family]
    if len(args) != len(names):
        raise ValueError(f"model {family}: expected {len(names)} numbers ({', '.join(names)}), got {len(args)}")
    _check_sizes(**{f"model {family} {n}": v for n, v in zip(names, args, strict=True)})
    return (family, *(int(v) for v in args))


def parse_model(text: str) -> tuple:
    """Parse ``"CNN(4,7,4)"``, ``"CCNN(4,7,4)"`` or ``"CG(1,7,3,3)"`` (case and spaces free) into a spec tuple.

    Raises
    ------
    ValueError : unknown family, wrong count of numbers, or a number that is not a positive integer.
    """
    match = re.fullmatch(r"\s*([A-Za-z]+)\s*\(([^()]*)\)\s*", str(text))
    family = match.group(1).upper() if match else None
    if family not in FAMILIES:
        raise ValueError(f"--model: expected CNN(L,k,c), CCNN(L,k,c) or CG(L,k,c,p) such as CG(1,7,3,3), got {text!r}")
    try:
        args = [int(v) for v in match.group(2).split(",")]
    except ValueError:
        raise ValueError(f"--model {text!r}: expected positive integers between the brackets") from None
    return _check_spec((family, *args))


def build_model(spec) -> nn.Module:
    """The module for a spec tuple (initialised from torch's global generator; see :func:`run_conv1d`)."""
    family, *args = _check_spec(spec)
    return {"CNN": CNN1d, "CCNN": CCNN1d, "CG": CG1d}[family](*args)


def learned_matrix(model: nn.Module, length: int) -> np.ndarray:
    """The matrix A of an affine model ``f(m) = A m + b``: column j is ``f(e_j) - f(0)``.

    Exact for every model here (no activation acts on the signal; the bias b is removed by subtracting f(0)).

    Returns
    -------
    (length, length) float64 array, ``A[x, x']``: output x, input x' (same convention as :func:`convolution_matrix`).
    """
    _check_sizes(length=length)
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            eye = torch.eye(length, device=param.device, dtype=param.dtype)[:, None, :]
            out = model(eye) - model(torch.zeros_like(eye[:1]))
    finally:
        model.train(was_training)
    return out[:, 0, :].T.double().cpu().numpy()


def _train(model, m, n, *, steps, batch_size, lr, generator, progress, name) -> list[float]:
    """Adam on the MSE over shuffled minibatches (reshuffled every epoch); returns the loss of every step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    size = min(batch_size, len(m))
    order, pos, losses = None, len(m), []
    model.train()
    for step in range(steps):
        if pos + size > len(m):
            order, pos = torch.randperm(len(m), generator=generator).to(m.device), 0
        idx = order[pos : pos + size]
        pos += size
        loss = torch.mean((model(m[idx]) - n[idx]) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if progress is not None and ((step + 1) % 25 == 0 or step + 1 == steps):
            progress(name, step + 1, steps)
    return losses


def _inference_us(model, m, *, repeat: int) -> float:
    """Median over ``repeat`` timed runs of the model on ``m`` (after 3 warm-up runs), µs per sample."""
    model.eval()
    sync = torch.cuda.synchronize if m.device.type == "cuda" else (lambda: None)
    times = []
    with torch.no_grad():
        for i in range(repeat + 3):
            sync()
            start = time.perf_counter()
            model(m)
            sync()
            if i >= 3:
                times.append(time.perf_counter() - start)
    return float(np.median(times)) / len(m) * 1e6


def _model_seed(seed: int, name: str) -> int:
    """A seed per (run seed, model), so a model gets the same initialisation whichever other models run."""
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])


def _run_one(spec, data, *, seed, device, repeat, **train_options) -> dict:
    """Initialise (seeded inside a forked RNG), train and measure one model."""
    m_train, n_train, m_val, n_val, H = data
    name, steps = model_name(spec), train_options["steps"]
    model_seed = _model_seed(seed, name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model_seed)
        model = build_model(spec).to(device)
    generator = torch.Generator().manual_seed(model_seed)
    start = time.perf_counter()
    losses = _train(model, m_train, n_train, generator=generator, name=name, **train_options)
    train_s = time.perf_counter() - start
    with torch.no_grad():
        mse = torch.mean((model.eval()(m_val) - n_val) ** 2).item()
    matrix = learned_matrix(model, H.shape[0])
    every = max(1, steps // 50)
    return {
        "name": name,
        "spec": list(spec),
        "parameters": sum(p.numel() for p in model.parameters()),
        "psnr_db": 10 * np.log10(1 / mse) if mse > 0 else float("inf"),
        "mse": mse,
        "inference_us": _inference_us(model, m_val, repeat=repeat),
        "matrix_error": float(np.linalg.norm(matrix - H) / np.linalg.norm(H)),
        "train_s": train_s,
        "train_mse": float(np.mean(losses[-max(1, steps // 10) :])),
        "loss_curve": losses[::every],
        "matrix": matrix,
    }


def run_conv1d(
    *,
    models=DEFAULT_MODELS,
    n_samples: int = 10000,
    length: int = 30,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH,
    lr: float = 1e-3,
    seed: int = 0,
    device="cpu",
    progress=None,
    repeat: int = 20,
) -> list[dict]:
    """Train each model on the 1D task and measure it (the paper's Fig. 3).

    Parameters
    ----------
    models : sequence of spec tuples such as ``("CG", 1, 7, 3, 3)`` (see :func:`parse_model`)
    n_samples : int >= 10, samples drawn; the last 10% (at least 1) are the validation set, the rest train
    length : int >= 2, signal length N, pixels
    steps : int, Adam steps per model on minibatches of ``batch_size`` (reshuffled each epoch). The default, 10000
        steps of 64 (71 epochs of 9000 samples), takes 7-35 s per model on one CPU thread and converges every default
        model but CNN(8,7,4), which still gains about 1.5 dB per 2500 steps (28-30 dB after 40000), and CNN(4,7,4)
        and CCNN(4,7,4), which gain a few tenths of a dB
    lr : float, Adam's learning rate (its default 1e-3; other Adam parameters default too)
    seed : int, seeds the data (numpy) and each model's initialisation and shuffling (torch, per model name)
    device : str or torch.device, where models train and are timed
    progress : callable ``(name, steps_done, steps_total)`` or None, called every 25 steps
    repeat : int, timed inference runs per model (median reported)

    Returns
    -------
    list of dicts, one per model, with the keys listed in the module docstring plus ``matrix``
    ((N, N) float64, the learned matrix). Global RNG state is left untouched.
    """
    _check_sizes(steps=steps, batch_size=batch_size, repeat=repeat, length=length)
    if not isinstance(n_samples, int | np.integer) or n_samples < 10:
        raise ValueError(f"n_samples: expected an integer >= 10, got {n_samples!r}")
    if not lr > 0:
        raise ValueError(f"lr: expected a positive learning rate, got {lr!r}")
    specs = [_check_spec(spec) for spec in models]
    if not specs:
        raise ValueError("models: expected at least one model spec, got none")
    device = torch.device(device)
    H = convolution_matrix(length)
    m, n = make_data(n_samples, length, rng=np.random.default_rng(seed))
    split = n_samples - max(1, n_samples // 10)
    m_t, n_t = (torch.from_numpy(a)[:, None, :].to(device) for a in (m, n))
    data = (m_t[:split], n_t[:split], m_t[split:], n_t[split:], H)
    options = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "device": device, "repeat": repeat}
    return [_run_one(spec, data, progress=progress, **options) for spec in specs]


def format_conv1d(results: list[dict]) -> str:
    """A plain text table: model, parameters, validation PSNR (dB), inference (µs/sample), ‖A − H‖/‖H‖, training s."""
    header = f"{'model':<14} {'params':>7} {'PSNR dB':>8} {'µs/sample':>10} {'|A-H|/|H|':>10} {'train s':>8}"
    rows = [
        f"{r['name']:<14} {r['parameters']:>7d} {r['psnr_db']:>8.2f} {r['inference_us']:>10.3f} "
        f"{r['matrix_error']:>10.4f} {r['train_s']:>8.1f}"
        for r in results
    ]
    return "\n".join([header, "-" * len(header), *rows])


def plot_conv1d(results: list[dict], H: np.ndarray, path) -> Path:
    """Figure like the paper's Fig. 3: H and each learned matrix (one colour scale), and PSNR against inference time.

    Parameters
    ----------
    results : from :func:`run_conv1d` (each with ``matrix``)
    H : (N, N) array, the true matrix
    path : output image path (any matplotlib format)

    Returns
    -------
    Path of the written figure. Marker area is proportional to the parameter count.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("H (Eq. 5)", H)] + [(r["name"], r["matrix"]) for r in results]
    vmin, vmax = min(float(np.min(a)) for _, a in panels), max(float(np.max(a)) for _, a in panels)
    cols, rows = 4, -(-len(panels) // 4)
    fig = plt.figure(figsize=(4 * cols + 6, 3.6 * rows), constrained_layout=True)
    grid = fig.add_gridspec(rows, cols + 2)
    image_axes = []
    for i, (title, a) in enumerate(panels):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        image_axes.append(ax)
        im = ax.imshow(a, vmin=vmin, vmax=vmax, cmap="viridis", interpolation="nearest")
        ax.set_title(title if i == 0 else f"{title}: {results[i - 1]['psnr_db']:.1f} dB", fontsize=10)
        ax.set_xlabel("input pixel x'")
        ax.set_ylabel("output pixel x")
    fig.colorbar(im, ax=image_axes, shrink=0.8, label="matrix entry")
    ax = fig.add_subplot(grid[:, cols:])
    most = max(r["parameters"] for r in results)
    for r in results:
        ax.scatter(r["inference_us"], r["psnr_db"], s=30 + 1500 * r["parameters"] / most, alpha=0.6)
        ax.annotate(f"{r['name']}\n{r['parameters']} params", (r["inference_us"], r["psnr_db"]), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("inference time (µs per sample)")
    ax.set_ylabel("validation PSNR (dB), 10 log10(1/MSE)")
    ax.set_title("PSNR against inference time (area ∝ parameters)")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def save_conv1d(results: list[dict], directory, *, config: dict | None = None) -> dict[str, Path]:
    """Write ``conv1d.json``, ``conv1d_matrices.npz`` and ``conv1d.png`` into ``directory`` (created if needed).

    ``config`` (the options that produced the results) is stored in the JSON. Returns ``{kind: path}``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    H = convolution_matrix(results[0]["matrix"].shape[0])
    summary = {
        "config": config or {},
        "definitions": {
            "H": "H[x, x'] = exp(-((x - x') - delta(x'))^2 / (2 sigma(x')^2)), rows = output pixel, see module doc",
            "psnr_db": "10 log10(1 / MSE) on the validation set (last 10% of samples)",
            "inference_us": "median time per sample over timed runs on the validation set, microseconds",
            "matrix_error": "||A - H||_F / ||H||_F, A the learned matrix",
        },
        "results": [{k: v for k, v in r.items() if k != "matrix"} for r in results],
    }
    paths = {"json": directory / "conv1d.json", "npz": directory / "conv1d_matrices.npz"}
    paths["json"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    names, matrices = np.array([r["name"] for r in results]), np.stack([r["matrix"] for r in results])
    np.savez(paths["npz"], H=H, names=names, matrices=matrices)
    paths["png"] = plot_conv1d(results, H, directory / "conv1d.png")
    return paths
