"""Sharp images from files: a folder of microscopy images as a source of random training crops.

Formats: TIFF (``.tif``, ``.tiff``; multi-page and multi-dimensional, read with tifffile) and PNG/JPEG
(``.png``, ``.jpg``, ``.jpeg``, read with Pillow); suffixes are matched case-insensitively.

Planes and channels. Every file is cut into 2-D planes with axes ``(y, x)``. For a TIFF the axes string of
``tifffile.TiffFile(path).series[0]`` decides: ``C`` (channel) and ``S`` (sample, e.g. RGB) are channel axes,
every other axis besides ``Y`` and ``X`` (``Z``, ``T``, ``Q``, ``I``, ...) is flattened into planes. PNG/JPEG in a
grayscale mode (``1``, ``L``, ``LA``, ``I``, ``I;16``, ``F``; alpha dropped) is one plane; colour modes (``RGB``,
``RGBA``, ``P``, ``CMYK``, ...) are converted to RGB and give three channels (alpha dropped), like ``S``.
Planes are ordered by the non-channel axes in file order, then by channel. With ``channel=None`` every channel
is a plane; with ``channel=k`` only channel ``k`` is kept. A file without a channel axis (grayscale) has one
channel, channel 0: ``channel=0`` keeps it and ``channel=1`` rejects it.

Normalisation (:class:`ImageFolder`, not :func:`open_image`): per plane, never per crop. The percentiles
``p_lo, p_hi`` of the whole plane (default 0.1 and 99.9) map to 0 and 1, ``(v - p_lo) / (p_hi - p_lo)``, clipped
to [0, 1]; a constant plane gives zeros. Units: normalised intensity (dimensionless), float32, axes ``(y, x)``.
"""

from __future__ import annotations

import math
import operator
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_PERCENTILES", "SUFFIXES", "ImageFolder", "MixedSource", "open_image", "percentile_range"]

SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
DEFAULT_PERCENTILES = (0.1, 99.9)  # of a plane, mapped to 0 and 1
_GRAY_MODES = {"1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_COLOUR_MODES = {"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}


@dataclass(frozen=True)
class _Layout:
    """Where the planes of one file live: array ``shape``/``axes``, and one index tuple per plane."""

    kind: str  # "tiff" or "pil"
    shape: tuple[int, ...]
    axes: str
    lead: int | None  # TIFF: number of leading axes that index pages; None: read the whole series
    indices: tuple[tuple, ...]

    @property
    def plane_shape(self) -> tuple[int, int]:
        return self.shape[self.axes.index("Y")], self.shape[self.axes.index("X")]


class _ChannelError(ValueError):
    """A file has no channel ``channel``: an error for the whole folder, not a reason to skip the file."""


def _plane_indices(shape, axes, channel, name) -> tuple[tuple, ...]:
    """Index tuples into an array of ``shape``/``axes``, one per 2-D plane (non-channel axes first, then channel)."""
    if axes.count("Y") != 1 or axes.count("X") != 1:
        raise ValueError(f"not a 2-D image (axes {axes!r}, shape {tuple(shape)})")
    other = [i for i, a in enumerate(axes) if a not in "CSYX"]
    chan = [i for i, a in enumerate(axes) if a in "CS"]
    chan_shape = tuple(shape[i] for i in chan)
    n_chan = math.prod(chan_shape)
    if channel is not None and channel >= n_chan:
        raise _ChannelError(
            f"channel: expected a channel index < {n_chan} for {name} ({n_chan} channel(s)), got {channel}"
        )
    out = []
    for o in np.ndindex(*(shape[i] for i in other)):
        for c in range(n_chan) if channel is None else [channel]:
            idx = [slice(None)] * len(shape)
            for i, v in zip(other + chan, o + np.unravel_index(c, chan_shape), strict=True):
                idx[i] = int(v)
            out.append(tuple(idx))
    return tuple(out)


def _lead_axes(series) -> int | None:
    """Number of leading series axes that enumerate its pages, or None when pages do not tile the series."""
    shape, page_shape = tuple(series.shape), tuple(series.keyframe.shape)
    for n in range(len(shape) + 1):
        if math.prod(shape[:n]) == len(series.pages) and shape[n:] == page_shape:
            return n
    return None


def _pil_colour(mode: str) -> bool:
    """Whether a Pillow mode is read as RGB (three channels) rather than as one grayscale plane."""
    if mode not in _GRAY_MODES | _COLOUR_MODES:
        raise ValueError(f"unsupported image mode {mode!r}")
    return mode in _COLOUR_MODES


def _layout(path, channel, name) -> tuple[_Layout, bool]:
    """Layout of one file from its metadata, and whether its values may hold NaN/Inf (floating point)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, axes, lead = tuple(series.shape), series.axes, _lead_axes(series)
            if series.dataoffset is not None:  # contiguous data: one extent
                end = series.dataoffset + series.nbytes
            else:
                pages = [p for p in series.pages if p is not None]
                end = max(
                    (o + n for p in pages for o, n in zip(p.dataoffsets, p.databytecounts, strict=True)), default=0
                )
            if end > tif.filehandle.size:
                raise ValueError(f"truncated file: image data end at byte {end}, the file has {tif.filehandle.size}")
            floating = series.dtype.kind in "fc"
        return _Layout("tiff", shape, axes, lead, _plane_indices(shape, axes, channel, name)), floating
    from PIL import Image

    with Image.open(path) as img:
        colour, floating = _pil_colour(img.mode), img.mode == "F"
        shape, axes = ((img.height, img.width, 3), "YXS") if colour else ((img.height, img.width), "YX")
    return _Layout("pil", shape, axes, None, _plane_indices(shape, axes, channel, name)), floating


def _read(path, layout, page=None) -> np.ndarray:
    """Raw array of a file: the whole TIFF series (``page=None``) or one page; PNG/JPEG as (H, W) or (H, W, 3)."""
    if layout.kind == "pil":
        from PIL import Image

        with Image.open(path) as img:
            if _pil_colour(img.mode):  # alpha, palette, CMYK, ... -> RGB
                return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
            return np.asarray(img.convert("L") if img.mode == "LA" else img)
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return tif.series[0].asarray() if page is None else tif.asarray(key=page, series=0)


def open_image(path, *, channel: int | None = None) -> np.ndarray:
    """Read the 2-D planes of one image file, raw values (not normalised).

    Parameters
    ----------
    path : str or Path, a .tif/.tiff/.png/.jpg/.jpeg file
    channel : int or None, keep only this channel (see the module docstring); None keeps every channel

    Returns
    -------
    (P, H, W) float32 array, axes (plane, y, x), in the file's intensity units. Planes are enumerated as in
    :class:`ImageFolder`. FileNotFoundError if there is no such file; ValueError if it cannot be read, is not
    a 2-D image, holds NaN/Inf or has no channel ``channel``.
    """
    path = Path(path)
    channel = _check_channel(channel)
    if not path.is_file():
        raise FileNotFoundError(f"path: no such image file: {path}")
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"path: expected one of {', '.join(SUFFIXES)}, got {path.name}")
    try:
        layout, _ = _layout(path, channel, path.name)
        data = _read(path, layout)
    except _ChannelError:
        raise
    except (OSError, EOFError, ValueError) as exc:
        raise ValueError(f"path: cannot read {path}: {type(exc).__name__}: {exc}") from exc
    planes = np.stack([np.asarray(data[idx], dtype=np.float32) for idx in layout.indices])
    if not np.isfinite(planes).all():
        raise ValueError(f"path: {path} contains NaN or Inf values")
    return planes


def _check_channel(channel):
    if channel is None:
        return None
    if isinstance(channel, bool) or not isinstance(channel, int | np.integer) or channel < 0:
        raise ValueError(f"channel: expected None or a non-negative integer, got {channel!r}")
    return int(channel)


def percentile_range(plane: np.ndarray, percentiles=None) -> tuple[float, float]:
    """``(p_lo, p_hi)``: the intensities at the normalisation percentiles of a plane (default ``DEFAULT_PERCENTILES``).

    :class:`ImageFolder` maps them to 0 and 1; ``optisim deblur`` uses the same map (unclipped) and undoes it.
    """
    lo, hi = np.percentile(plane, DEFAULT_PERCENTILES if percentiles is None else percentiles)
    return float(lo), float(hi)


class ImageFolder:
    """Images in a folder, cut into 2-D planes, as a source of random sharp crops for training.

    Construction reads only metadata (TIFF series shape/axes, Pillow size/mode); floating-point files are also
    read once to reject NaN/Inf. Unreadable files are skipped with one ``UserWarning`` that lists them.

    Parameters
    ----------
    path : str or Path, the folder
    channel : int or None, keep only this channel of every file (a file with fewer channels is an error);
        None makes every channel a plane. A grayscale file counts as channel 0.
    recursive : bool, also scan sub-folders
    normalize : (lo, hi) percentiles, 0 <= lo < hi <= 100, mapped to 0 and 1 per plane
    augment : bool, apply a random dihedral transform (rotation by k·90°, optional flip) to each crop
    cache_size : int >= 0, number of decoded, normalised planes kept in memory (least recently used dropped)

    Attributes
    ----------
    planes : list of (relative_path, plane_index), one per 2-D plane; relative_path uses '/' separators

    Examples
    --------
    >>> src = ImageFolder("data/sharp", channel=0)                    # doctest: +SKIP
    >>> crop = src.sample((128, 128), np.random.default_rng(0))       # doctest: +SKIP
    """

    def __init__(
        self,
        path,
        *,
        channel: int | None = None,
        recursive: bool = False,
        normalize: tuple[float, float] = DEFAULT_PERCENTILES,
        augment: bool = True,
        cache_size: int = 32,
    ):
        root = Path(path).expanduser().resolve()
        if not root.exists():
            raise FileNotFoundError(f"path: no such directory: {root}")
        if not root.is_dir():
            raise ValueError(f"path: expected a directory, got the file {root} (use open_image for one file)")
        if len(normalize) != 2 or not 0 <= float(normalize[0]) < float(normalize[1]) <= 100:
            raise ValueError(f"normalize: expected percentiles (lo, hi) with 0 <= lo < hi <= 100, got {normalize}")
        lo, hi = float(normalize[0]), float(normalize[1])
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size: expected a non-negative integer, got {cache_size!r}")
        self.path, self.channel, self.recursive = root, _check_channel(channel), bool(recursive)
        self.normalize, self.augment, self.cache_size = (lo, hi), bool(augment), cache_size
        self._layouts: dict[str, _Layout] = {}
        self._sizes: dict[str, int] = {}
        skipped = []
        files = (p for p in (root.rglob("*") if recursive else root.iterdir()) if p.suffix.lower() in SUFFIXES)
        for p in sorted((p for p in files if p.is_file()), key=lambda p: p.relative_to(root).as_posix()):
            rel = p.relative_to(root).as_posix()
            try:
                layout, floating = _layout(p, self.channel, rel)
                if floating and not np.isfinite(_read(p, layout)).all():
                    raise ValueError("contains NaN or Inf values")
            except _ChannelError:
                raise
            except (OSError, EOFError, ValueError) as exc:  # PIL.UnidentifiedImageError, tifffile.TiffFileError
                skipped.append(f"{rel} ({type(exc).__name__}: {exc})")
                continue
            self._layouts[rel], self._sizes[rel] = layout, p.stat().st_size
        self.planes = [(rel, j) for rel, lay in self._layouts.items() for j in range(len(lay.indices))]
        if not self.planes:
            raise ValueError(
                f"path: no readable images in {root} (looked for {'/'.join(SUFFIXES)}"
                f"{' recursively' if recursive else ''}; skipped: {'; '.join(skipped) or 'none'})"
            )
        if skipped:
            warnings.warn(f"ImageFolder: skipped {len(skipped)} file(s) in {root}: {'; '.join(skipped)}", stacklevel=2)
        self._shapes = np.array([self._layouts[rel].plane_shape for rel, _ in self.planes], dtype=np.int64)
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.planes)

    def __repr__(self) -> str:
        return f"ImageFolder({str(self.path)!r}, channel={self.channel}, planes={len(self)})"

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = {}  # decoded planes are not sent to worker processes
        return state

    def _load(self, i: int) -> np.ndarray:
        """Normalised plane ``i`` (read-only, shared with the cache)."""
        if i in self._cache:
            self._cache[i] = plane = self._cache.pop(i)  # move to the most recently used end
            return plane
        rel, j = self.planes[i]
        layout = self._layouts[rel]
        idx, lead = layout.indices[j], layout.lead
        try:
            if layout.kind == "tiff" and lead is not None:  # the pages tile the series: read only this page
                page = int(np.ravel_multi_index(idx[:lead], layout.shape[:lead])) if lead else 0
                raw = np.asarray(_read(self.path / rel, layout, page)[idx[lead:]], dtype=np.float32)
            else:
                raw = np.asarray(_read(self.path / rel, layout)[idx], dtype=np.float32)
        except (OSError, EOFError, ValueError) as exc:
            raise ValueError(f"{rel}: cannot decode plane {j}: {type(exc).__name__}: {exc}") from exc
        p_lo, p_hi = percentile_range(raw, self.normalize)
        plane = np.clip((raw - np.float32(p_lo)) / np.float32(p_hi - p_lo), 0, 1) if p_hi > p_lo else np.zeros_like(raw)
        plane.flags.writeable = False
        if self.cache_size:
            if len(self._cache) >= self.cache_size:
                del self._cache[next(iter(self._cache))]
            self._cache[i] = plane
        return plane

    def plane(self, i) -> np.ndarray:
        """Plane ``i`` (see :attr:`planes`), normalised: (H, W) float32 in [0, 1], axes (y, x)."""
        i = operator.index(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"i: expected a plane index in [-{len(self)}, {len(self)}), got {i}")
        return self._load(i % len(self)).copy()

    def sample(self, shape, rng: np.random.Generator) -> np.ndarray:
        """A random crop of a random plane: (h, w) float32 in [0, 1] (normalised intensity), axes (y, x).

        The plane is drawn uniformly among the planes at least as large as the crop, then the offset uniformly,
        then (if ``augment``) one of the 8 dihedral transforms (only 180° rotations when h != w). The result
        depends only on the state of ``rng``, not on the cache.

        Parameters
        ----------
        shape : (h, w) crop size in pixels
        rng : numpy.random.Generator, advanced by the draws
        """
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
        if len(shape) != 2 or not all(isinstance(v, int | np.integer) and v > 0 for v in shape):
            raise ValueError(f"shape: expected a crop shape (h, w) of two positive integers, got {shape!r}")
        h, w = int(shape[0]), int(shape[1])
        fits = np.flatnonzero((self._shapes[:, 0] >= h) & (self._shapes[:, 1] >= w))
        if fits.size == 0:
            big = tuple(int(v) for v in self._shapes[np.argmax(self._shapes.prod(axis=1))])
            raise ValueError(f"shape: crop {(h, w)} is larger than every plane in {self.path} (largest plane {big})")
        i = int(fits[rng.integers(fits.size)])
        H, W = (int(v) for v in self._shapes[i])
        y0, x0 = int(rng.integers(H - h + 1)), int(rng.integers(W - w + 1))
        crop = self._load(i)[y0 : y0 + h, x0 : x0 + w]
        if self.augment:
            k = int(rng.integers(4)) if h == w else 2 * int(rng.integers(2))
            crop = np.rot90(crop, k)
            if rng.integers(2):
                crop = crop[:, ::-1]
        return crop.astype(np.float32, order="C", copy=True)  # never a view of the cache

    def describe(self) -> dict:
        """JSON-serialisable description of the source, to store with a dataset built from it."""
        return {
            "kind": "folder",
            "path": str(self.path),
            "channel": self.channel,
            "recursive": self.recursive,
            "normalize": list(self.normalize),
            "augment": self.augment,
            "files": [[rel, self._sizes[rel]] for rel in self._layouts],
            "planes": len(self),
        }


class MixedSource:
    """Two image sources mixed per sample: each sample is drawn from ``first`` with probability ``share``, else from
    ``second`` (``--source synthetic:0.7+DIR``: the built-in scenes for 70 % of the samples, a folder of the user's
    own sharp images for the rest). A sample still depends only on the state of its ``rng``.

    Parameters
    ----------
    first, second : image sources (``sample(shape, rng)``, ``describe()``)
    share : float in (0, 1), the expected fraction of samples from ``first``
    """

    def __init__(self, first, second, share: float = 0.5):
        share = float(share)
        if not 0 < share < 1:
            raise ValueError(f"share: expected a fraction strictly between 0 and 1, got {share:g}")
        self.first, self.second, self.share = first, second, share

    def sample(self, shape, rng: np.random.Generator) -> np.ndarray:
        """One crop, (h, w) float32 in [0, 1]: the first source's with probability ``share``, else the second's."""
        source = self.first if rng.random() < self.share else self.second
        return source.sample(shape, rng)

    def describe(self) -> dict:
        """JSON-serialisable description: ``kind = 'mixed'``, ``share`` and both sources' descriptions."""
        return {"kind": "mixed", "share": self.share, "sources": [self.first.describe(), self.second.describe()]}
