"""Camera noise: a Poisson-Gaussian sensor model with gain, offset, ADC quantisation and saturation, in torch.

Model
-----
Images are tensors ``(..., H, W)`` (rows ``y``, columns ``x``; any leading batch axes) of non-negative
intensities ``x`` in the normalised units of the sharp scene (1.0 = the scene's nominal peak). Per pixel::

    s   = photons / ref                  ref = 1 ("unit") or max of the image over (H, W) ("peak"), e- per unit
    e   ~ Poisson(s * x + background)    photo-electrons, e-; then e = min(e, full_well) if full_well is set
    adu = round(gain * (e + read_noise * z) + offset), clipped to [0, 2**bit_depth - 1]     z ~ N(0, 1); ADU

``output="adu"`` returns ``adu`` (raw camera counts); ``output="intensity"`` returns
``((adu - offset) / gain - background) / s``, which has expectation ``x`` away from clipping. Units: photons,
background, read_noise and full_well in photo-electrons (e-), gain in ADU per e-, offset in ADU.

Ignoring clipping, and with the quantisation error uniform over one ADU (true once the noise spreads over
about one ADU or more), the output has mean and variance (:func:`noise_moments`)::

    adu:        mean = gain (s x + background) + offset,  var = gain² (s x + background + read_noise²) + 1/12
    intensity:  mean = x,  var = (s x + background + read_noise² + 1 / (12 gain²)) / s²

Noise is drawn only from the ``torch.Generator`` passed in (never from a global seed), so a seeded generator,
e.g. one per ``(seed, sample)`` pair, reproduces a noisy image exactly.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from dataclasses import dataclass

import torch

from optisim._keys import reject_unknown_keys

__all__ = ["CameraNoise", "apply_noise", "noise_moments", "parse_noise"]

PHOTONS_AT = ("unit", "peak")
OUTPUTS = ("intensity", "adu")
_OFF = ("off", "none", "false")
_ON = ("on", "default")
_REAL_FIELDS = (  # (name, strictly positive, unit)
    ("photons", True, "e-"),
    ("background", False, "e- per pixel"),
    ("read_noise", False, "e- RMS"),
    ("gain", True, "ADU per e-"),
    ("offset", False, "ADU"),
    ("full_well", True, "e-"),
)


def _real(name: str, value, *, strict: bool, unit: str) -> float:
    bound = "> 0" if strict else ">= 0"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if strict else value < 0):
        raise ValueError(f"{name}: expected a finite number {bound} ({unit}), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class CameraNoise:
    """Camera noise settings (see the module docstring for the model).

    Parameters
    ----------
    photons : float, e-, > 0
        Expected photo-electrons for the reference intensity.
    photons_at : {'unit', 'peak'}
        Reference intensity: 1.0 (``'unit'``) or each image's maximum over (H, W) (``'peak'``).
    background : float, e- per pixel, >= 0
        Mean background, Poisson like the signal.
    read_noise : float, e- RMS, >= 0
    gain : float, ADU per e-, > 0
    offset : float, ADU, 0 <= offset < 2**bit_depth - 1
    bit_depth : int, 1..32
        ADU values are rounded and clipped to [0, 2**bit_depth - 1] (saturation).
    full_well : float or None, e-, > 0
        Electrons are clipped to it before readout.
    output : {'intensity', 'adu'}
        Return intensities in the input's units, or raw camera counts.
    """

    photons: float = 1000.0
    photons_at: str = "unit"
    background: float = 10.0
    read_noise: float = 2.0
    gain: float = 1.0
    offset: float = 100.0
    bit_depth: int = 16
    full_well: float | None = None
    output: str = "intensity"

    def __post_init__(self):
        for name, strict, unit in _REAL_FIELDS:
            value = getattr(self, name)
            if value is not None or name != "full_well":
                object.__setattr__(self, name, _real(name, value, strict=strict, unit=unit))
        bits = self.bit_depth
        if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 1 <= bits <= 32:
            raise ValueError(f"bit_depth: expected an integer in 1..32 (ADC bits), got {bits!r}")
        object.__setattr__(self, "bit_depth", int(bits))
        if self.offset >= self.max_adu:
            raise ValueError(
                f"offset: expected an offset below the ADC maximum 2**{self.bit_depth} - 1 = {self.max_adu} ADU, "
                f"got {self.offset:g}; lower the offset or raise bit_depth"
            )
        for name, allowed in (("photons_at", PHOTONS_AT), ("output", OUTPUTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {getattr(self, name)!r}")

    @property
    def max_adu(self) -> int:
        """Largest ADC value, ``2**bit_depth - 1`` ADU (saturation)."""
        return 2**self.bit_depth - 1

    def to_dict(self) -> dict:
        """Plain dictionary of the fields (what :meth:`from_dict` reads)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CameraNoise:
        """Build from a dictionary; unknown keys are errors that name the key and the nearest valid one."""
        reject_unknown_keys(d, _FIELDS, "camera noise settings")
        return cls(**d)

    def replace(self, **changes) -> CameraNoise:
        """A copy with some fields changed (validated again)."""
        reject_unknown_keys(changes, _FIELDS, "camera noise settings")
        return dataclasses.replace(self, **changes)


_FIELDS = tuple(f.name for f in dataclasses.fields(CameraNoise))
_TYPES = typing.get_type_hints(CameraNoise)


def parse_noise(text: str) -> CameraNoise | None:
    """Camera noise from a command-line string.

    ``"off"``, ``"none"``, ``"false"``: no noise (None). ``"on"``, ``"default"``: ``CameraNoise()``.
    ``"key=value,key=value"``: the defaults with those fields changed, values converted to the field types
    (``full_well=none`` switches the full well off).

    Examples
    --------
    >>> parse_noise("photons=500,read_noise=3,photons_at=peak").photons
    500.0
    """
    text = text.strip()
    if text.lower() in _OFF:
        return None
    if text.lower() in _ON:
        return CameraNoise()
    changes = {}
    for item in text.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise ValueError(
                f"noise {text!r}: expected 'off', 'on' or key=value pairs separated by commas, got {item!r}"
            )
        reject_unknown_keys([key], _FIELDS, f"noise {text!r}")
        kind = _TYPES[key]
        try:
            if kind is str:
                changes[key] = value
            elif kind is int:
                changes[key] = int(value)
            elif value.lower() in _OFF and type(None) in typing.get_args(kind):
                changes[key] = None
            else:
                changes[key] = float(value)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise ValueError(f"{key}: expected {expected}, got {value!r}") from None
    return CameraNoise(**changes)


def _prepare(image, generator=None) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image: expected a torch.Tensor (..., H, W), got {type(image).__name__}")
    if image.ndim < 2 or image.numel() == 0:
        raise ValueError(f"image: expected a non-empty tensor of shape (..., H, W), got shape {tuple(image.shape)}")
    if generator is not None and (
        generator.device.type != image.device.type
        or (None not in (generator.device.index, image.device.index) and generator.device.index != image.device.index)
    ):
        raise ValueError(f"generator: expected one on the image's device {image.device}, got {generator.device}")
    x = image.to(torch.float64 if image.dtype == torch.float64 else torch.float32)
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"image: expected finite, non-negative intensities; got {bad} NaN or Inf values")
    low = float(x.min())
    if low < 0:
        raise ValueError(f"image: expected finite, non-negative intensities; got min {low:g}")
    return x


def _scale(x: torch.Tensor, noise: CameraNoise):
    """Photo-electrons per unit intensity ``s``: a float, or a (..., 1, 1) tensor for ``photons_at='peak'``."""
    if noise.photons_at == "unit":
        return noise.photons
    ref = x.amax(dim=(-2, -1), keepdim=True)
    return noise.photons / torch.where(ref > 0, ref, torch.ones_like(ref))  # an all-zero image uses ref = 1


def apply_noise(
    image: torch.Tensor, noise: CameraNoise | None, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw a noisy camera image.

    Parameters
    ----------
    image : (..., H, W) Tensor, any device
        Non-negative intensities in the scene's normalised units (1.0 = nominal peak).
    noise : CameraNoise or None
        None switches noise off: ``image`` itself is returned, unchanged and unchecked.
    generator : torch.Generator, optional
        Source of all random numbers, on the image's device. A generator with the same seed gives the same
        output; None draws from torch's global generator (not reproducible from a sample seed).

    Returns
    -------
    (..., H, W) Tensor
        float64 for float64 input, else float32; intensities (``output='intensity'``) or integer-valued
        camera counts in ADU (``output='adu'``).

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> noisy = apply_noise(torch.full((64, 64), 0.5), CameraNoise(photons=200), generator=g)
    """
    if noise is None:
        return image
    x = _prepare(image, generator)
    s = _scale(x, noise)
    electrons = torch.poisson(s * x + noise.background, generator=generator)
    if noise.full_well is not None:
        electrons = electrons.clamp(max=noise.full_well)
    if noise.read_noise > 0:
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        electrons = electrons + noise.read_noise * z
    adu = torch.round(noise.gain * electrons + noise.offset).clamp(0, noise.max_adu)
    if noise.output == "adu":
        return adu
    return ((adu - noise.offset) / noise.gain - noise.background) / s


def noise_moments(image: torch.Tensor, noise: CameraNoise | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected mean and variance of :func:`apply_noise`'s output per pixel, in the output's units.

    Clipping (full well, the ADC range) is ignored; the quantisation variance 1/12 ADU² is included (accurate
    when the noise spreads over about one ADU or more, e.g. ``gain * read_noise >= 1``).

    Parameters
    ----------
    image : (..., H, W) Tensor
        Non-negative intensities, as for :func:`apply_noise`.
    noise : CameraNoise or None
        None gives the image itself and zero variance.

    Returns
    -------
    mean, variance : (..., H, W) Tensors
        Intensity units (and their square) for ``output='intensity'``; ADU and ADU² for ``output='adu'``.
    """
    x = _prepare(image)
    if noise is None:
        return x.clone(), torch.zeros_like(x)
    s = _scale(x, noise)
    electrons = s * x + noise.background
    if noise.output == "adu":
        mean = noise.gain * electrons + noise.offset
        return mean, noise.gain**2 * (electrons + noise.read_noise**2) + 1.0 / 12.0
    var = (electrons + noise.read_noise**2 + 1.0 / (12.0 * noise.gain**2)) / s**2
    return x.clone(), var
