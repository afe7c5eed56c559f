"""U-Net inverse operators: the plain U-Net(d), the CoordGate U-Net, the CoordConv U-Net and MultiWienerNet.

Every model maps a blurred image ``x`` (B, C_in, H, W), normalised intensity, to its estimate of the sharp image
(B, 1, H, W), and takes the crops' sensor offsets ``(y0, x0)`` (B, 2) so that the coordinate models know where each
crop lies on the sensor (the normalised field coordinates of :mod:`optisim.field`, see :mod:`learn.coordgate`).
Models without coordinates ignore the offsets. Any H, W is accepted: the input is padded at the bottom and right
(edge replication) to a multiple of 2^(d-1) and the output cropped back.

Architecture (the paper's Fig. 4a): a U-Net of depth d has d resolution levels with ``width * 2^l`` channels at level
l; each step is two 3x3 convolutions with ReLU; 2x2 max-pooling down, 2x2 transposed convolution up, skip connections
by concatenation, a 1x1 convolution to the output. ``residual=True`` (the default here; the paper predicts the image
directly) adds the blurred input to the output, so the network learns the correction. ``keep_flux=True`` then
rescales the output so that every box of the PSF's side holds the input's light (:func:`keep_local_flux`): sharpness
cannot be bought with photometry. The layer acts in evaluation mode only (``model.eval()``: validation, inference,
checks); training optimises the network's own estimate, which therefore cannot lean on the layer (trained through
it, networks learned to put a free offset in the background, which the layer removes on the training crops but not
on a sparse image, and lost or invented most of the light of point sources; ``optisim bench faithful``).

* ``cg-unet``: a CoordGate (gate + 1x1 mix) on the features at each down- and up-sampling point and before the output
  convolution, as in the paper's CG U-Net (2d - 1 gates).
* ``coordconv-unet``: ``[hy, hx]`` concatenated to the input of every double convolution (El Jurdi et al. 2021).
* ``multiwiener``: K learnable Wiener deconvolutions, initialised from K PSFs of the lens's PSF grid, whose K outputs
  feed a U-Net (Yanny et al., Optica 2022). The PSFs and the K regularisation weights are trained.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from learn.coordgate import ACTIVATIONS, INITS, CoordGate, pool_coordinates, sensor_coordinates
from optisim._keys import reject_unknown_keys

__all__ = [
    "MODEL_NAMES",
    "CGUNet",
    "CoordConvUNet",
    "ModelConfig",
    "MultiWienerNet",
    "UNet",
    "build_model",
    "count_parameters",
    "keep_local_flux",
    "model_table",
]

MODEL_NAMES = ("unet", "cg-unet", "coordconv-unet", "multiwiener")
_INT_RANGES = (
    ("depth", 1, 8),
    ("width", 1, 1024),
    ("in_channels", 1, 64),
    ("psf_count", 1, 256),
    ("psf_size", 1, 1023),
    ("gate_hidden", 1, 4096),
    ("gate_layers", 1, 16),
    ("gate_fourier", 0, 16),
)
CLIP_SIGMA, CLIP_ROUNDS = 3.0, 3  # keep_local_flux's offset: median of samples within 3 robust sigma, three rounds
FLUX_FLOOR = 0.1  # keep_local_flux leaves boxes much dimmer than this share of the image's mean light unscaled


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model (stored in checkpoints).

    name : one of ``MODEL_NAMES``
    depth : int, d, resolution levels (the paper's U-Net(d) has d = 3..6)
    width : int, channels at the first level (doubling per level)
    sensor_shape : (ny, nx) pixels of the sensor the coordinates refer to (the lens the model is trained for)
    residual : bool, output = input + network (the first input channel)
    gate_hidden, gate_layers, gate_activation, gate_fourier, gate_mix, gate_init : the CoordGate encoder and its
        1x1 mix (:class:`learn.coordgate.CoordGate`)
    psf_count, psf_size : K and k of MultiWienerNet's PSFs (set from the data when the model is built)
    keep_flux : bool, in evaluation mode the output keeps the input's local flux in boxes of ``psf_size`` pixels
        (:func:`keep_local_flux`; ``psf_size`` is the forward model's PSF window, set from the data when the model is
        built); training optimises the output without the layer (module docstring)
    """

    name: str = "cg-unet"
    depth: int = 3
    width: int = 32
    sensor_shape: tuple[int, int] = (512, 512)
    in_channels: int = 1
    residual: bool = True
    gate_hidden: int = 32
    gate_layers: int = 3
    gate_activation: str = "relu"
    gate_fourier: int = 0
    gate_mix: bool = True
    gate_init: str = "identity"
    psf_count: int = 9
    psf_size: int = 31
    keep_flux: bool = False

    def __post_init__(self):
        if self.name not in MODEL_NAMES:
            raise ValueError(f"model: unknown model {self.name!r}; expected one of {', '.join(MODEL_NAMES)}")
        for key, low, high in _INT_RANGES:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{key}: expected an integer in [{low}, {high}], got {value!r}")
        for key in ("residual", "gate_mix", "keep_flux"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key}: expected true or false, got {getattr(self, key)!r}")
        if self.gate_init not in INITS:
            raise ValueError(f"gate_init: expected one of {', '.join(INITS)}, got {self.gate_init!r}")
        if self.gate_activation not in ACTIVATIONS:
            raise ValueError(f"gate_activation: expected one of {sorted(ACTIVATIONS)}, got {self.gate_activation!r}")
        if self.psf_size % 2 == 0:
            raise ValueError(f"psf_size: expected an odd positive integer, got {self.psf_size!r}")
        shape = self.sensor_shape
        ok = isinstance(shape, (tuple, list)) and len(shape) == 2
        if not ok or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape):
            raise ValueError(f"sensor_shape: expected (ny, nx) positive integer pixels, got {shape!r}")
        object.__setattr__(self, "sensor_shape", tuple(shape))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sensor_shape"] = list(self.sensor_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        reject_unknown_keys(d, [f.name for f in fields(cls)], "model config")
        return cls(**d)

    def describe(self) -> str:
        return f"{self.name}({self.depth}) width {self.width}"


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions with ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.ReLU(inplace=True),
        )


class _Backbone(nn.Module):
    """The U-Net of depth d, with optional CoordGates (``gated``) or coordinate channels (``coord_channels``)."""

    def __init__(self, config: ModelConfig, *, in_channels: int, gated: bool = False, coord_channels: int = 0):
        super().__init__()
        self.config = config
        d, w, cc = config.depth, config.width, coord_channels
        widths = [w * 2**level for level in range(d)]
        self.widths, self.coord_channels, self.gated = widths, cc, gated
        self.inc = DoubleConv(in_channels + cc, widths[0])
        self.downs = nn.ModuleList(DoubleConv(widths[i] + cc, widths[i + 1]) for i in range(d - 1))
        self.ups = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(d - 1))
        self.up_convs = nn.ModuleList(DoubleConv(2 * widths[i] + cc, widths[i]) for i in range(d - 1))
        self.outc = nn.Conv2d(widths[0], 1, 1)
        if config.residual:  # start from the identity: the first prediction is the blurred input itself
            nn.init.zeros_(self.outc.weight)
            nn.init.zeros_(self.outc.bias)
        if gated:

            def gate(channels):
                g = CoordGate(
                    channels,
                    mix=config.gate_mix,
                    hidden=config.gate_hidden,
                    layers=config.gate_layers,
                    activation=config.gate_activation,
                    fourier=config.gate_fourier,
                    init=config.gate_init,
                )
                g.inplace = True  # the features it gates are the backbone's own intermediate tensor
                return g

            self.gates_down = nn.ModuleList(gate(widths[i]) for i in range(d - 1))
            self.gates_up = nn.ModuleList(gate(widths[i + 1]) for i in range(d - 1))
            self.gate_out = gate(widths[0])

    @property
    def multiple(self) -> int:
        return 2 ** (self.config.depth - 1)

    def _cat(self, x, coords):
        return torch.cat([x, coords.expand(x.shape[0], -1, -1, -1).to(x.dtype)], 1) if self.coord_channels else x

    def forward(self, x: torch.Tensor, coords: list | None, key) -> torch.Tensor:
        """x (B, C, H, W) with H, W multiples of 2^(d-1); coords[l] (B or 1, 2, H/2^l, W/2^l) per level."""

        def gated(module_list_or_gate, level, feats, index=None):
            g = module_list_or_gate if index is None else module_list_or_gate[index]
            return g(feats, coords[level], None if key is None else (key, level, index))

        x = self.inc(self._cat(x, coords[0]) if self.coord_channels else x)
        skips = []
        for i, down in enumerate(self.downs):
            if self.gated:
                x = gated(self.gates_down, i, x, i)
            skips.append(x)
            x = F.max_pool2d(x, 2)
            x = down(self._cat(x, coords[i + 1]) if self.coord_channels else x)
        for i in reversed(range(len(self.ups))):
            if self.gated:
                x = gated(self.gates_up, i + 1, x, i)
            x = torch.cat([skips[i], self.ups[i](x)], 1)
            x = self.up_convs[i](self._cat(x, coords[i]) if self.coord_channels else x)
        if self.gated:
            x = gated(self.gate_out, 0, x)
        return self.outc(x)


def _box_mean(t: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of ``(B, 1, H, W)`` over the ``k`` x ``k`` box centred on each pixel (odd ``k``; over the part inside the
    image at its borders), as two separable passes."""
    k = min(k, (min(t.shape[-2:]) - 1) | 1)
    rows = F.avg_pool2d(t, (k, 1), stride=1, padding=(k // 2, 0), count_include_pad=False)
    return F.avg_pool2d(rows, (1, k), stride=1, padding=(0, k // 2), count_include_pad=False)


def _linear_weights(nodes: torch.Tensor, n: int) -> torch.Tensor:
    """``(n, len(nodes))`` weights that interpolate values at the increasing pixel positions ``nodes`` linearly onto
    pixels ``0 .. n-1``, extrapolating the end segments' lines beyond the outermost nodes."""
    g = len(nodes)
    if g == 1:
        return torch.ones(n, 1, device=nodes.device)
    at = torch.arange(n, device=nodes.device, dtype=torch.float64)
    pos = nodes.to(torch.float64)
    i = (torch.searchsorted(pos, at, right=True) - 1).clamp(0, g - 2)
    t = (at - pos[i]) / (pos[i + 1] - pos[i])
    w = torch.zeros(n, g, device=nodes.device, dtype=torch.float64)
    w[torch.arange(n), i] = 1 - t
    w[torch.arange(n), i + 1] = t
    return w


def _local_median(t: torch.Tensor, window: int, samples: int = 15) -> torch.Tensor:
    """A smooth local median of ``(B, 1, H, W)``: the median of ``samples`` x ``samples`` pixels spread evenly over
    ``window`` x ``window`` boxes, all inside the image, centred on nodes about ``window // 2`` pixels apart, linearly
    interpolated between the nodes (and extrapolated by the end segments up to the image's edges: a box cut by the
    edge would read a sloping offset off-centre). Robust where fewer than half of a box's samples hold sources, so
    a sparse image's background offset is read without its sources' light; memory about
    ``4 samples² H W / window²`` values."""
    height, width = t.shape[-2:]
    half = min(int(window), height, width) // 2
    m = min(int(samples), 2 * half + 1)
    taps = torch.round(torch.linspace(-half, half, m, device=t.device)).long()
    step = max(1, int(window) // 2)
    counts = [math.ceil(max(n - 1 - 2 * half, 0) / step) + 1 for n in (height, width)]
    nodes = [
        torch.unique(torch.round(torch.linspace(half, n - 1 - half, c, device=t.device)).long())
        for n, c in zip((height, width), counts, strict=True)
    ]
    boxes = t[:, :, nodes[0][:, None] + taps][..., nodes[1][:, None] + taps]  # (B, 1, gy, m, gx, m)
    values = boxes.permute(0, 1, 2, 4, 3, 5).flatten(-2)  # (B, 1, gy, gx, m²)
    medians = values.median(dim=-1, keepdim=True).values
    for _ in range(CLIP_ROUNDS):  # sigma-clipped: the wings of sources in the box are left out, as in photometry
        spread = (values - medians).abs().nanmedian(dim=-1, keepdim=True).values * 1.4826
        values = torch.where((values - medians).abs() <= CLIP_SIGMA * spread, values, torch.nan)
        medians = values.nanmedian(dim=-1, keepdim=True).values
    medians = medians[..., 0]  # (B, 1, gy, gx)
    wy, wx = (_linear_weights(nd, n).to(t.dtype) for nd, n in zip(nodes, (height, width), strict=True))
    return wy @ medians @ wx.T


def keep_local_flux(y: torch.Tensor, x: torch.Tensor, window: int) -> torch.Tensor:
    """The network's output with the input's local flux: light moved within a box, never created or removed.

    A blur by a normalised PSF moves light by at most the PSF's extent, so the sharp image and the blurred one hold the
    same light in any box wider than the PSF. This layer makes that hold by construction, so a deblurred source keeps
    its flux wherever the network was trained or not (the flux *loss* of :func:`learn.metrics.local_flux_error`
    only asks for it where there was training data). With ``B_k`` the mean over the ``k`` x ``k`` box centred on
    each pixel (over the part inside the image at its borders), ``M`` a smooth local median over boxes of the
    window's side (:func:`_local_median`) and ``w`` the window (made odd):

    1. ``y1 = y - M(y - x)``: the offset the network adds to the background is removed. A sigma-clipped median
       (:data:`CLIP_SIGMA`, :data:`CLIP_ROUNDS`, as photometry reads a sky level), not a mean: in a sparse image
       (point sources, beads) a source's box mean is tiny (its flux over ``w²`` pixels), so an offset left of even
       1e-4 would decide its scale in step 2, and only a robust statistic reads the offset beside the sources
       without their own light, excess or deficit (which step 2 must see);
    2. ``out = y1+ * s - y1-`` with ``s = (max(B_w(x), 0) + B_w(y1-) + f) / (B_w(y1+) + f)`` (``y1+`` and ``y1-``
       the positive and negative parts of ``y1``): the light of ``y1`` rescaled so that each box of the window's
       side holds the input's light (a compact source: its light, in its own shape), its negative ringing left as
       it is. Scaling ``y1`` as a whole (the previous version) multiplied the ringing by the same factor, up to 5x
       where a network had lost most of a source's light, and the output's sum turned negative. ``f`` is
       :data:`FLUX_FLOOR` times the image's mean absolute input: boxes much dimmer than the image's mean light
       (noise in empty background) are not rescaled by their own noise.

    Models apply it in evaluation mode only (:class:`UNet`): a network trained through it learns to leave the
    offset to step 1.

    Measured (a 1.3 x 1.0 px source against its 4 x 3 px blurred input, 31 px window, radius 15.5 aperture): the
    output holds the input's light within 1.5 % whether the network's source held 0.6, 1.0, 1.2 or 1.76 times the
    light, or carried a background offset of ±0.008 around a faint source (flux 3.5); FWHM unchanged. Sparse point
    sources of flux 3.5 at a 61 px window on an offset sloping from -0.0055 to -0.0065 (tests/learn/test_flux.py):
    within 1.6 %, where a box mean four windows wide in step 1 (the layer's first version) gave 0.98-1.59.

    Parameters
    ----------
    y, x : (B, 1, H, W) tensors, the network's output and the blurred input (normalised intensity)
    window : int >= 1, box side in pixels (the PSF window; made odd, clipped to the image)

    Returns
    -------
    (B, 1, H, W) tensor (differentiable). It depends on the image up to about ``2 window`` pixels away, so tiled
    inference applies it once to the blended whole (:func:`learn.infer.deblur_image`).
    """
    k = int(window) | 1
    if k < 3 or min(y.shape[-2:]) < 4:
        return y
    k = min(k, (min(y.shape[-2:]) - 1) | 1)
    y1 = y - _local_median(y - x, k)
    light, dark = y1.clamp(min=0), (-y1).clamp(min=0)
    floor = FLUX_FLOOR * x.abs().mean(dim=(-2, -1), keepdim=True) + 1e-12
    scale = (_box_mean(x, k).clamp(min=0) + _box_mean(dark, k) + floor) / (_box_mean(light, k) + floor)
    return light * scale - dark


class UNet(nn.Module):
    """U-Net(d) (``unet``); the base of the other models. ``forward(x, offsets=None)``, see the module docstring."""

    uses_coordinates = False

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.net = self._backbone(config)

    def _backbone(self, config):
        return _Backbone(config, in_channels=config.in_channels)

    def features(self, x: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
        """What the backbone sees (the blurred image; MultiWienerNet's Wiener channels)."""
        return x

    def forward(self, x: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        y = self.estimate(x, offsets)
        if self.config.keep_flux and not self.training:
            return keep_local_flux(y, x[:, :1], self.config.psf_size)
        return y

    def estimate(self, x: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """The output before the flux-keeping layer (``forward`` is this when ``keep_flux`` is off)."""
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"x: expected shape (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        b, _, h, w = x.shape
        if offsets is None:
            offsets = torch.zeros(b, 2, dtype=torch.long, device=x.device)
        offsets = torch.as_tensor(offsets, device=x.device)
        if offsets.shape != (b, 2):
            raise ValueError(f"offsets: expected shape ({b}, 2) of (y0, x0) pixels, got {tuple(offsets.shape)}")
        m = self.net.multiple
        ph, pw = -h % m, -w % m
        padded = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
        coords, key = self._coordinates(offsets, padded)
        y = self.net(self.features(padded, offsets), coords, key)[..., :h, :w]
        return y + x[:, :1] if self.config.residual else y

    def _coordinates(self, offsets: torch.Tensor, x: torch.Tensor):
        if not self.uses_coordinates:
            return [None] * self.config.depth, None
        hp, wp = x.shape[-2:]
        cached = not self.training and not torch.is_grad_enabled()  # the gate cache is for inference only
        rows = offsets[:1] if cached and bool((offsets == offsets[:1]).all()) else offsets
        full = sensor_coordinates(rows, (hp, wp), self.config.sensor_shape, device=x.device, dtype=x.dtype)
        coords = [pool_coordinates(full, 2**level) for level in range(self.config.depth)]
        key = (tuple(rows.flatten().tolist()), hp, wp) if cached else None
        return coords, key


class CGUNet(UNet):
    """CoordGate U-Net(d) (``cg-unet``): gates at every down- and up-sampling point and before the output."""

    uses_coordinates = True

    def _backbone(self, config):
        return _Backbone(config, in_channels=config.in_channels, gated=True)


class CoordConvUNet(UNet):
    """CoordConv U-Net(d) (``coordconv-unet``): ``[hy, hx]`` concatenated to every double convolution's input."""

    uses_coordinates = True

    def _backbone(self, config):
        return _Backbone(config, in_channels=config.in_channels, coord_channels=2)


class MultiWienerNet(UNet):
    """MultiWienerNet (``multiwiener``): K learnable Wiener deconvolutions feeding a U-Net(d).

    ``psfs`` : (K, k, k) initial PSFs (each sums to 1, centred at k // 2), e.g. from the lens's PSF grid; required
    for a new model, optional when weights are loaded afterwards (they are then zeros until ``load_state_dict``).
    The Wiener filter of PSF j is ``conj(K_j) / (|K_j|^2 + exp(log_balance_j))``, applied to the image padded by
    edge replication to a 2·3·5-smooth size.
    """

    def __init__(self, config: ModelConfig, psfs: torch.Tensor | None = None):
        super().__init__(config)
        k, n = config.psf_size, config.psf_count
        if psfs is None:
            psfs = torch.zeros(n, k, k)
        psfs = torch.as_tensor(psfs, dtype=torch.float32)
        if psfs.shape != (n, k, k):
            raise ValueError(f"psfs: expected shape ({n}, {k}, {k}) (psf_count, psf_size), got {tuple(psfs.shape)}")
        self.psfs = nn.Parameter(psfs.clone())
        self.log_balance = nn.Parameter(torch.full((n,), -4.6))  # balance 1e-2

    def _backbone(self, config):
        return _Backbone(config, in_channels=config.psf_count)

    def features(self, x: torch.Tensor, offsets) -> torch.Tensor:
        from optisim.blur import fft_size

        k = self.config.psf_size
        h, w = x.shape[-2:]
        r = k // 2
        shape = (fft_size(h + 2 * r), fft_size(w + 2 * r))
        padded = F.pad(x[:, :1], (r, shape[1] - w - r, r, shape[0] - h - r), mode="replicate")
        kernel = torch.zeros(self.config.psf_count, *shape, dtype=x.dtype, device=x.device)
        kernel[:, :k, :k] = self.psfs.to(x.dtype)
        kernel = torch.roll(kernel, (-r, -r), dims=(-2, -1))
        spectrum = torch.fft.rfft2(kernel)
        balance = self.log_balance.exp().to(x.dtype)[:, None, None]
        wiener = spectrum.conj() / (spectrum.abs() ** 2 + balance)
        out = torch.fft.irfft2(torch.fft.rfft2(padded) * wiener, s=shape)
        return out[..., r : r + h, r : r + w]


MODEL_CLASSES = {"unet": UNet, "cg-unet": CGUNet, "coordconv-unet": CoordConvUNet, "multiwiener": MultiWienerNet}


def build_model(config: ModelConfig, *, psfs=None) -> UNet:
    """A new model for ``config`` (MultiWienerNet also takes its initial ``psfs`` (K, k, k))."""
    cls = MODEL_CLASSES[config.name]
    return cls(config, psfs) if cls is MultiWienerNet else cls(config)


def model_table(*, width: int = 32, depths=(3, 4, 5, 6)) -> list[dict]:
    """Parameters of every architecture at each depth: ``[{"depth": d, "parameters": {name: count}}]``."""
    rows = []
    for depth in depths:
        counts = {}
        for name in MODEL_NAMES:
            config = ModelConfig(name=name, depth=depth, width=width)
            with torch.device("meta"):
                counts[name] = count_parameters(build_model(config))
        rows.append({"depth": depth, "parameters": counts})
    return rows
