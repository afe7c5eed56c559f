"""Training samples: a sharp crop, the same crop blurred by its own region of the sensor, and the crop's offset.

One code path for every consumer: the HDF5 dataset writer (:mod:`optisim.dataset`), its worker processes and Dask
tasks, and on-the-fly training all call :meth:`SampleGenerator.sample`.

A sample is a pure function of ``(seed, index)``: its random numbers come from
``numpy.random.default_rng([seed, index])`` in a fixed order (crop offset, scene, noise seed), so a sample can be
regenerated alone, in any process, in any order, and comes out bit-identical.

Geometry of a sample of size S (pixels) at offset ``(y0, x0)`` (sensor row and column of its first pixel):

1. the source draws a sharp scene of ``S + 2r`` pixels, where ``r = kernel_size // 2`` is the PSF radius; it covers
   sensor rows ``y0 - r .. y0 + S + r - 1`` (and columns likewise), so the light that reaches the crop from just
   outside it is simulated;
2. the low-rank operator of that region (eigen-PSFs with the weight maps of those sensor pixels, see
   :mod:`optisim.lowrank`) blurs it, each source pixel spreading with its own PSF;
3. the centre ``S x S`` of both images is kept: ``sharp`` and ``blurred`` (before noise), in the same normalised
   intensity units (PSFs sum to 1);
4. the camera noise model (:mod:`optisim.noise`) is applied to ``blurred`` with a torch generator seeded from the
   sample's stream, and the result is returned in intensity units.

Offsets are uniform over the positions where the crop lies on the sensor, ``0 <= y0 <= ny - S``; when S equals
the sensor's size (square sensor) every sample is the full sensor at offset (0, 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from optisim.blur import kernel_spectra, padded_shape, product_convolution
from optisim.lens import Lens
from optisim.lowrank import DEFAULT_GRID, DEFAULT_TOL, EigenPSFs
from optisim.noise import CameraNoise, apply_noise

__all__ = ["Sample", "SampleGenerator", "check_size", "make_source"]


def make_source(spec, *, channel: int | None = None):
    """An image source from a command-line spec: ``'synthetic'`` (the built-in scene generator), a folder path, or
    ``'synthetic+DIR'`` / ``'synthetic:S+DIR'``: the built-in scenes for a share ``S`` of the samples (0.5 unless
    given) and the folder's images for the rest (:class:`optisim.sources.MixedSource`), for users with a few sharp
    images of their own. ``channel`` selects a channel of the folder's images."""
    from pathlib import Path

    if isinstance(spec, str) and spec == "synthetic":
        from optisim.scenes import SyntheticSource

        if channel is not None:
            raise ValueError("channel: only a folder source has channels (source is 'synthetic')")
        return SyntheticSource()
    if hasattr(spec, "sample") and hasattr(spec, "describe"):
        return spec
    if isinstance(spec, str) and spec.startswith("synthetic") and "+" in spec:
        head, folder = spec.split("+", 1)
        share = 0.5
        if head != "synthetic":
            text = head[len("synthetic:"):] if head.startswith("synthetic:") else None
            try:
                share = float(text) if text else math.nan
            except ValueError:
                share = math.nan
            if not 0 < share < 1:
                raise ValueError(f"source: expected 'synthetic+DIR' or 'synthetic:S+DIR' with a share 0 < S < 1 of "
                                 f"synthetic scenes, got {spec!r}")  # fmt: skip
        from optisim.scenes import SyntheticSource
        from optisim.sources import MixedSource

        return MixedSource(SyntheticSource(), make_source(folder, channel=channel), share)
    path = Path(spec)
    if not path.is_dir():
        raise ValueError(f"source: expected 'synthetic', a folder of images or 'synthetic[:S]+DIR', got {str(spec)!r} "
                         "(not a folder)")  # fmt: skip
    from optisim.sources import ImageFolder

    return ImageFolder(path, channel=channel)


@dataclass(frozen=True)
class Sample:
    """One training sample. ``sharp``, ``blurred``: (S, S) float32, normalised intensity; ``offset``: (y0, x0)."""

    sharp: np.ndarray
    blurred: np.ndarray
    offset: tuple[int, int]


class SampleGenerator:
    """Draws samples of size ``size`` from ``source``, blurred by the lens's low-rank PSF field, with camera noise.

    Parameters
    ----------
    lens : Lens
    source : object with ``sample(shape, rng) -> (h, w) float32`` and ``describe() -> dict`` (see :func:`make_source`)
    size : int, S, the side of a sample in pixels (at most the sensor's shorter side, at least the PSF window)
    seed : int, the dataset's seed; sample ``i`` uses the stream ``[seed, i]``
    noise : CameraNoise or None (no noise)
    model : EigenPSFs or None, computed from the lens with ``kernel_size``, ``grid``, ``rank``, ``tol`` if None
    device : torch device for the blur and the noise (CPU by default)
    """

    def __init__(
        self,
        lens: Lens,
        source,
        *,
        size: int,
        seed: int = 0,
        noise: CameraNoise | None = None,
        model: EigenPSFs | None = None,
        kernel_size: int | None = None,
        grid=DEFAULT_GRID,
        rank: int | None = None,
        tol: float = DEFAULT_TOL,
        device=None,
    ):
        if model is None:
            model = EigenPSFs.from_lens(lens, kernel_size=kernel_size, grid=grid, rank=rank, tol=tol, device=device)
        self.lens, self.source, self.noise, self.model = lens, source, noise, model
        self.seed = _nonnegative_int("seed", seed)
        self.size = check_size(size, lens.sensor_shape, model.kernels.shape[-1])
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self._setup()

    def _setup(self):
        k = self.model.kernels.shape[-1]
        self.margin = k // 2
        region = self.size + 2 * self.margin
        self._kernels = torch.as_tensor(self.model.kernels, device=self.device)
        self._spectra = kernel_spectra(self._kernels, padded_shape((region, region), self._kernels.shape))

    def __getstate__(self):
        state = self.__dict__.copy()
        for key in ("_kernels", "_spectra"):
            state.pop(key)
        state["device"] = str(self.device)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.device = torch.device(state["device"])
        self._setup()

    def rng(self, index: int) -> np.random.Generator:
        """The random stream of sample ``index``."""
        return np.random.default_rng([self.seed, _nonnegative_int("index", index)])

    def offset(self, index: int, rng: np.random.Generator | None = None) -> tuple[int, int]:
        """Crop offset ``(y0, x0)`` of sample ``index`` (the first draw of its stream)."""
        rng = self.rng(index) if rng is None else rng
        ny, nx = self.lens.sensor_shape
        return int(rng.integers(0, ny - self.size + 1)), int(rng.integers(0, nx - self.size + 1))

    def weights(self, offset) -> torch.Tensor:
        """Weight maps ``(K, S + 2r, S + 2r)`` of the region around a crop (clamped beyond the PSF grid)."""
        n = self.size + 2 * self.margin
        region = (offset[0] - self.margin, offset[1] - self.margin)
        return torch.as_tensor(self.model.weights(region, (n, n)), device=self.device)

    def sample(self, index: int) -> Sample:
        """Sample ``index``: a pure function of ``(seed, index)``."""
        rng = self.rng(index)
        y0, x0 = self.offset(index, rng)
        n, r, s = self.size + 2 * self.margin, self.margin, self.size
        scene = np.asarray(self.source.sample((n, n), rng), dtype=np.float32)
        if scene.shape != (n, n):
            raise ValueError(f"source returned an image of shape {scene.shape}, expected {(n, n)}")
        noise_seed = int(rng.integers(0, 2**63 - 1))
        x = torch.as_tensor(scene, device=self.device)
        with torch.no_grad():
            blurred = product_convolution(x, self.weights((y0, x0)), self._kernels, spectra=self._spectra)
            blurred = blurred[r : r + s, r : r + s].clamp_(min=0.0)  # FFT round-off can dip below 0
            if self.noise is not None:
                gen = torch.Generator(device=self.device).manual_seed(noise_seed)
                blurred = apply_noise(blurred, self.noise, generator=gen)
        return Sample(scene[r : r + s, r : r + s].copy(), blurred.float().cpu().numpy(), (y0, x0))

    def batch(self, indices) -> dict[str, np.ndarray]:
        """Samples for several indices, stacked: ``sharp``, ``blurred`` (n, S, S), ``offset`` (n, 2), ``index`` (n,)."""
        indices = [int(i) for i in indices]
        samples = [self.sample(i) for i in indices]
        return {
            "index": np.asarray(indices, dtype=np.int64),
            "sharp": np.stack([s.sharp for s in samples]) if samples else np.zeros((0, self.size, self.size), "f4"),
            "blurred": np.stack([s.blurred for s in samples]) if samples else np.zeros((0, self.size, self.size), "f4"),
            "offset": np.asarray([s.offset for s in samples], dtype=np.int32).reshape(-1, 2),
        }


def _nonnegative_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")
    return int(value)


def check_size(size, sensor_shape, kernel_size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"size: expected an integer number of pixels, got {size!r}")
    size = int(size)
    ny, nx = sensor_shape
    if size > min(ny, nx):
        raise ValueError(f"size: a {size}x{size} crop is larger than the sensor ({ny}x{nx} pixels)")
    if size < kernel_size:
        raise ValueError(
            f"size: a {size}x{size} crop is smaller than the PSF support ({kernel_size}x{kernel_size} pixels); "
            f"use a size of at least {kernel_size}"
        )
    return size
