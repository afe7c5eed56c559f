"""CoordGate (Howard, Norreys & Döpp): feature channels gated by a function of each pixel's place on the sensor.

A convolutional block ``h`` gives C feature channels, globally applied filters. A small per-pixel network ``g`` (an
MLP on the pixel's coordinates) gives C gate values. The output is their Hadamard product, Eq. (3) of the paper::

    y[b, a, i] = h(x)[b, a, i] * g(C_i)[a]

optionally followed by a 1x1 convolution that mixes the gated channels. The channels act as a basis of kernels and
the gate sets their amplitudes at each position, so the layer is a spatially varying convolution; with a complete
basis it is as expressive as a locally connected layer (the paper's appendix).

Coordinates
-----------
The coordinates are the normalised field coordinates of :mod:`optisim.field`: ``[hy, hx]`` of each pixel centre,
in units of half the sensor's longer side, measured from the sensor centre. A crop or tile cut at offset
``(y0, x0)`` gets its true position on the sensor (:func:`sensor_coordinates`); at a U-Net level downsampled by
2^l the coordinates are the 2^l x 2^l averages of the full-resolution ones (:func:`pool_coordinates`), which are
exactly the centres of the pooled pixels. No module here is built for one image size.

Gate cache
----------
After training the gate depends only on the geometry, so in evaluation mode with gradients off, a gate computed for a
``cache_key`` (the caller's description of the geometry: offsets, size, level) is kept and reused; the only overhead
left is the element-wise product. The cache is emptied by ``train()`` and ``load_state_dict``, and an entry is used
only while the encoder's parameters equal the copy kept with it (a few thousand numbers compared per call), so any
change of the weights, however it is made, recomputes the gate.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from optisim.field import field_scale

__all__ = [
    "ACTIVATIONS",
    "CoordGate",
    "CoordinateEncoder",
    "pool_coordinates",
    "sensor_coordinates",
]

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "none": nn.Identity}
CACHE_SIZE = 8
INITS = ("identity", "random")


def sensor_coordinates(offsets, shape, sensor_shape, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Field coordinates ``[hy, hx]`` of every pixel of crops of the sensor, as a tensor.

    Parameters
    ----------
    offsets : (B, 2) int tensor or array, ``(y0, x0)`` sensor row and column of each crop's first pixel
    shape : (H, W) ints, crop size in pixels (a crop may extend past the sensor: padding, whose coordinates
        continue the same linear map)
    sensor_shape : (ny, nx) ints, the whole sensor in pixels

    Returns
    -------
    (B, 2, H, W) tensor, the :mod:`optisim.field` convention: ``hx = (col - (nx - 1) / 2) / R`` with
    ``R = max(ny, nx) / 2``, and likewise ``hy`` for rows.
    """
    ny, nx = (int(v) for v in sensor_shape)
    scale = field_scale((ny, nx))
    offsets = torch.as_tensor(offsets, device=device)
    if offsets.ndim != 2 or offsets.shape[1] != 2:
        raise ValueError(f"offsets: expected shape (B, 2) of (y0, x0) pixels, got {tuple(offsets.shape)}")
    h, w = (int(v) for v in shape)
    rows = torch.arange(h, device=device, dtype=torch.float64)
    cols = torch.arange(w, device=device, dtype=torch.float64)
    y0 = offsets[:, 0].to(torch.float64)[:, None]
    x0 = offsets[:, 1].to(torch.float64)[:, None]
    hy = (y0 + rows - (ny - 1) / 2) / scale  # (B, H)
    hx = (x0 + cols - (nx - 1) / 2) / scale  # (B, W)
    b = offsets.shape[0]
    coords = torch.stack([hy[:, :, None].expand(b, h, w), hx[:, None, :].expand(b, h, w)], dim=1)
    return coords.to(dtype)


def pool_coordinates(coords: torch.Tensor, factor: int) -> torch.Tensor:
    """Coordinates of the pixels of a feature map downsampled by ``factor`` (max- or average-pooling with floor)."""
    return coords if factor == 1 else F.avg_pool2d(coords, factor)


class CoordinateEncoder(nn.Module):
    """The gate network g: a per-pixel MLP from coordinates to ``channels`` values.

    Parameters
    ----------
    channels : int, outputs per pixel (the gated feature channels)
    in_features : int, coordinates per pixel (2 for ``[hy, hx]``; 1 for a 1D signal)
    hidden : int, width of the hidden layers
    layers : int >= 1, linear layers (1 = a single linear map from the coordinates to the gates)
    activation : one of ``ACTIVATIONS``, between linear layers
    init : ``"identity"`` (the last layer's weights 0 and biases 1, so every gate starts at 1) or ``"random"``
        (PyTorch's default initialisation, as in the reference code)
    fourier : int >= 0, octaves of Fourier features: each coordinate c is replaced by
        ``[c, sin(2^k π c), cos(2^k π c)]`` for k = 0 .. fourier-1 (deterministic, no random projection)

    ``forward(coords)``: coords (B, in_features, *spatial) -> (B, channels, *spatial).
    """

    def __init__(
        self,
        channels: int,
        *,
        in_features: int = 2,
        hidden: int = 32,
        layers: int = 3,
        activation: str = "relu",
        fourier: int = 0,
        init: str = "identity",
    ):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init: expected one of {', '.join(INITS)}, got {init!r}")
        for name, value, low in (("channels", channels, 1), ("in_features", in_features, 1), ("hidden", hidden, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if not isinstance(layers, int) or layers < 1:
            raise ValueError(f"layers: expected an integer >= 1, got {layers!r}")
        if not isinstance(fourier, int) or fourier < 0:
            raise ValueError(f"fourier: expected an integer >= 0, got {fourier!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.in_features, self.fourier = in_features, fourier
        width = [in_features * (1 + 2 * fourier)] + [hidden] * (layers - 1) + [channels]
        modules: list[nn.Module] = []
        for i in range(layers):
            modules.append(nn.Linear(width[i], width[i + 1]))
            if i < layers - 1:
                modules.append(ACTIVATIONS[activation]())
        self.mlp = nn.Sequential(*modules)
        if init == "identity":  # every gate starts at 1: the layer starts as its plain convolutional block
            nn.init.zeros_(modules[-1].weight)
            nn.init.ones_(modules[-1].bias)

    def features(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., in_features * (1 + 2 * fourier))."""
        if not self.fourier:
            return coords
        frequencies = torch.pi * 2.0 ** torch.arange(self.fourier, dtype=coords.dtype, device=coords.device)
        phase = coords[..., None] * frequencies  # (..., n, F)
        return torch.cat([coords, phase.sin().flatten(-2), phase.cos().flatten(-2)], dim=-1)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        if coords.ndim < 2 or coords.shape[1] != self.in_features:
            raise ValueError(f"coords: expected shape (B, {self.in_features}, ...), got {tuple(coords.shape)}")
        x = coords.movedim(1, -1)
        return self.mlp(self.features(x)).movedim(-1, 1).contiguous()  # channels-first memory, as the features


def _clear_cache_after_load(module, incompatible_keys) -> None:
    module.clear_cache()


class CoordGate(nn.Module):
    """``y = mix(h(x) * g(coords))``: a convolutional block gated per pixel by its coordinates (paper's Eq. 3).

    Parameters
    ----------
    channels : int, C, the channels of ``h(x)`` (and of the output)
    block : nn.Module or None, h; None applies the gate to the features given (as in the CG U-Net, where the gate
        follows the U-Net's own double convolution)
    mix : bool, a 1x1 convolution after the gate (the paper's optional final layer)
    init : ``"identity"``: gates start at 1 and the mix at the identity, so a CoordGate network starts as its
        backbone and learns only the spatial variation on top; ``"random"``: PyTorch's default initialisation
    hidden, layers, activation, fourier : the encoder g (:class:`CoordinateEncoder`)

    ``forward(x, coords, cache_key=None)``: x (B, C_in, *spatial), coords (B or 1, n, *spatial) on the grid of
    ``h(x)``; returns (B, C, *spatial). Works in 1D and 2D (``nn.Conv1d``/``Conv2d`` mix chosen by ``dims``).
    """

    def __init__(
        self,
        channels: int,
        *,
        block: nn.Module | None = None,
        mix: bool = True,
        hidden: int = 32,
        layers: int = 3,
        activation: str = "relu",
        fourier: int = 0,
        in_features: int = 2,
        dims: int = 2,
        init: str = "identity",
    ):
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"dims: expected 1 or 2, got {dims!r}")
        self.block = nn.Identity() if block is None else block
        self.encoder = CoordinateEncoder(
            channels,
            in_features=in_features,
            hidden=hidden,
            layers=layers,
            activation=activation,
            fourier=fourier,
            init=init,
        )
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.mix = conv(channels, channels, 1) if mix else nn.Identity()
        if mix and init == "identity":
            with torch.no_grad():
                self.mix.weight.copy_(torch.eye(channels).reshape(self.mix.weight.shape))
                self.mix.bias.zero_()
        self.channels = channels
        self.inplace = False  # may the gate overwrite the features h(x) at inference (set by the owner of the data)
        self._cache: OrderedDict = OrderedDict()
        self.register_load_state_dict_post_hook(_clear_cache_after_load)

    def clear_cache(self) -> None:
        self._cache.clear()

    def train(self, mode: bool = True):
        self.clear_cache()
        return super().train(mode)

    def gate(self, coords: torch.Tensor, cache_key=None) -> torch.Tensor:
        """g(coords), (B, C, *spatial); cached per ``cache_key`` in evaluation mode with gradients off."""
        if cache_key is None or self.training or torch.is_grad_enabled():
            return self.encoder(coords)
        key = (cache_key, coords.device, coords.dtype)
        weights = torch.cat([p.detach().flatten() for p in self.encoder.parameters()])
        hit = self._cache.get(key)
        if hit is not None and hit[0].dtype == weights.dtype and torch.equal(hit[0], weights):
            self._cache.move_to_end(key)
            return hit[1]
        gate = self.encoder(coords)
        self._cache[key] = (weights.clone(), gate)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return gate

    def forward(self, x: torch.Tensor, coords: torch.Tensor, cache_key=None) -> torch.Tensor:
        features = self.block(x)
        if features.shape[1] != self.channels:
            raise ValueError(f"CoordGate: expected {self.channels} feature channels, got {features.shape[1]}")
        if coords.shape[2:] != features.shape[2:]:
            raise ValueError(
                f"coords: expected spatial shape {tuple(features.shape[2:])} (that of the features), "
                f"got {tuple(coords.shape[2:])}"
            )
        gate = self.gate(coords, cache_key).to(features.dtype)
        if torch.is_grad_enabled() or features.ndim != 4:
            return self.mix(features * gate)
        # inference: gate in place when the caller allows it (the CG U-Net does: the features are its own), and the
        # 1x1 mix as one matrix product per image (on the CPU 2x faster than a 1x1 convolution, no extra bias pass)
        gated = features.mul_(gate) if self.inplace and features.is_contiguous() else features * gate
        return self._mix_inference(gated.contiguous())

    def _mix_inference(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.mix, nn.Conv2d):
            return x
        w, b = self.mix.weight.flatten(1).to(x.dtype), self.mix.bias.to(x.dtype)
        out = torch.empty_like(x)
        for i in range(x.shape[0]):
            torch.addmm(b[:, None], w, x[i].flatten(1), out=out[i].flatten(1))
        return out
