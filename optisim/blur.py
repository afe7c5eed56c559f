"""Spatially varying blur: the forward operators and their adjoints (torch, batched, CPU or CUDA).

Which way round
---------------
Every operator here spreads each *source* pixel with the PSF of the source's own field position (the
"scatter" form of Eq. (1) of the CoordGate paper, with ``h`` depending on the source position)::

    y[p] = sum_q  h_q[p - q + c] * x[q]            c = (kh // 2, kw // 2), the PSF's chief-ray pixel

so a point source at pixel ``q`` produces exactly the PSF ``h_q`` centred on ``q``, and a flat field of sources
keeps its total energy away from the border (each PSF sums to 1). In the low-rank form the weights are applied to
the image *before* the convolution ("mask then convolve")::

    y = sum_k  e_k * (w_k . x)                    (* is 2-D convolution, . the pixel-wise product)

which is the same operator with ``h_q = sum_k w_k[q] e_k``. The other order ("convolve then mask",
``sum_k w_k . (e_k * x)``) gathers light with the PSF of the *output* pixel instead; it is not what a lens does and
is not offered.

PSF orientation
---------------
``h[v, u]`` is the intensity that lands ``(v - c_y, u - c_x)`` pixels (rows, columns) away from the source, the
chief ray at pixel ``(kh // 2, kw // 2)``: the layout of :func:`optisim.psf.compute_psfs` and of PSF grid files.
Kernels of even size are padded with a trailing zero row/column so that every kernel has a centre pixel.

Border
------
Output is ``'same'``: the ``(H, W)`` output pixels that coincide with the ``(H, W)`` input pixels. Sources outside
the image are dark (zero padding) and light spread past the image border is lost, so the output is exact for a
scene that is dark outside the image. To blur a crop of a larger scene correctly, blur a region grown by the PSF
radius on every side and keep its centre (the dataset generator does this).

Shapes and units
----------------
``x`` and ``y`` are ``(B, H, W)`` or ``(H, W)`` intensity images in any linear unit (the operators are linear),
axis order ``(y, x)``. ``weights`` are ``(K, H, W)`` (or ``(B, K, H, W)``), dimensionless; ``kernels`` are
``(K, kh, kw)`` and ``psfs`` (per-pixel PSFs of the exact operator) ``(H, W, kh, kw)``.

FFT sizes
---------
The low-rank operator needs no more padding than ``H + kh // 2`` rows (a circular convolution of that size holds
the ``'same'`` output without wrap-around), rounded up to a product of 2, 3 and 5 (:func:`fft_size`), where
pocketfft and cuFFT are fastest: on a 2-core machine a 542x542 transform costs about three times a 540x540 one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KERNEL_CHUNK = 2  # kernels per FFT call on the CPU: 1 and 2 fastest on 2 cores, 8 (all) over 2x slower

__all__ = [
    "ExactBlur",
    "ProductConvolution",
    "exact_blur",
    "exact_blur_adjoint",
    "fft_size",
    "kernel_spectra",
    "padded_shape",
    "product_convolution",
    "product_convolution_adjoint",
]


def fft_size(n: int) -> int:
    """Smallest integer ``>= n`` whose only prime factors are 2, 3 and 5."""
    n = int(n)
    if n < 1:
        raise ValueError(f"n: expected a positive size, got {n}")
    m = n
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def padded_shape(image_shape, kernel_shape) -> tuple[int, int]:
    """FFT size ``(Hp, Wp)`` for a ``'same'`` product convolution of an ``(H, W)`` image with ``(kh, kw)`` kernels."""
    (h, w), (kh, kw) = image_shape[-2:], kernel_shape[-2:]
    return fft_size(h + kh // 2), fft_size(w + kw // 2)


def _odd_kernels(kernels: torch.Tensor) -> torch.Tensor:
    kh, kw = kernels.shape[-2:]
    if kh % 2 == 0 or kw % 2 == 0:
        kernels = F.pad(kernels, (0, 1 - kw % 2, 0, 1 - kh % 2))
    return kernels


def check_image(x: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor (B, H, W) or (H, W), got {type(x).__name__}")
    if x.ndim not in (2, 3):
        raise ValueError(f"{name}: expected shape (B, H, W) or (H, W), got {tuple(x.shape)}")
    if x.is_complex() or not x.is_floating_point():
        raise TypeError(f"{name}: expected a real floating-point tensor, got {x.dtype}")
    return (x[None], True) if x.ndim == 2 else (x, False)


def kernel_spectra(kernels: torch.Tensor, shape) -> torch.Tensor:
    """``rfft2`` of the kernels zero-padded to ``shape = (Hp, Wp)`` with their centre pixel moved to the origin.

    kernels : (K, kh, kw) real tensor; returns (K, Hp, Wp // 2 + 1) complex tensor.
    """
    if kernels.ndim != 3:
        raise ValueError(f"kernels: expected shape (K, kh, kw), got {tuple(kernels.shape)}")
    kernels = _odd_kernels(kernels)
    kh, kw = kernels.shape[-2:]
    hp, wp = shape
    if kh > hp or kw > wp:
        raise ValueError(f"kernels: size ({kh}, {kw}) larger than the FFT size ({hp}, {wp})")
    padded = F.pad(kernels, (0, wp - kw, 0, hp - kh))
    padded = torch.roll(padded, shifts=(-(kh // 2), -(kw // 2)), dims=(-2, -1))
    return torch.fft.rfft2(padded)


def _check_weights(weights: torch.Tensor, x: torch.Tensor, k: int) -> None:
    if weights.ndim not in (3, 4) or weights.shape[-3] != k or weights.shape[-2:] != x.shape[-2:]:
        raise ValueError(
            f"weights: expected shape (K, H, W) or (B, K, H, W) = (.., {k}, {x.shape[-2]}, {x.shape[-1]}) "
            f"matching the kernels and the image, got {tuple(weights.shape)}"
        )
    if weights.ndim == 4 and weights.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"weights: a batch of {weights.shape[0]} weight maps needs {weights.shape[0]} images (B, H, W) or "
            f"weights (K, H, W) shared by all; got {x.shape[0]} image(s)"
        )


def product_convolution(
    x: torch.Tensor, weights: torch.Tensor, kernels: torch.Tensor, *, spectra: torch.Tensor | None = None
) -> torch.Tensor:
    """Low-rank spatially varying blur ``y = sum_k e_k * (w_k . x)``, ``'same'`` output, zero padding.

    K forward ``rfft2`` and one ``irfft2`` per image: the K spectra are multiplied by the kernels' spectra and
    summed before the single inverse transform. On the CPU the images go one at a time and the kernels
    ``KERNEL_CHUNK`` at a time, so the working set stays in cache and time grows linearly with B; on a GPU every
    image and kernel goes in one batched call.

    Parameters
    ----------
    x : (B, H, W) or (H, W) real tensor, the sharp image (sources)
    weights : (K, H, W) or (B, K, H, W) real tensor, the weight of eigen-PSF k at each *source* pixel
    kernels : (K, kh, kw) real tensor, the eigen-PSFs (chief ray at (kh // 2, kw // 2))
    spectra : optional (K, Hp, Wp // 2 + 1) complex tensor from :func:`kernel_spectra` (cached by callers)

    Returns
    -------
    (B, H, W) or (H, W) tensor, the blurred image.
    """
    x, squeeze, spectra, shape, fft_shape = _prepare(x, "x", weights, kernels, spectra)
    y = torch.cat([_forward_chunked(xb, wb, spectra, shape, fft_shape) for xb, wb in _pieces(x, weights)])
    return y[0] if squeeze else y


def _prepare(x, name: str, weights, kernels, spectra):
    """Checks shared by the low-rank operator and its adjoint; the kernels' spectra, computed if not given."""
    x, squeeze = check_image(x, name)
    k = kernels.shape[0]
    _check_weights(weights, x, k)
    shape = tuple(x.shape[-2:])
    hp, wp = padded_shape(shape, _odd_kernels(kernels).shape)
    if spectra is None:
        spectra = kernel_spectra(kernels.to(x), (hp, wp))
    elif spectra.shape != (k, hp, wp // 2 + 1):
        raise ValueError(f"spectra: expected shape {(k, hp, wp // 2 + 1)}, got {tuple(spectra.shape)}")
    return x, squeeze, spectra, shape, (hp, wp)


def _pieces(x: torch.Tensor, weights: torch.Tensor):
    """Images with their weights: one at a time on the CPU (the working set stays in cache), all at once on a GPU."""
    if x.device.type != "cpu" or x.shape[0] == 1:
        yield x, weights
        return
    for b in range(x.shape[0]):
        yield x[b : b + 1], (weights[b : b + 1] if weights.ndim == 4 and weights.shape[0] > 1 else weights)


def _chunk(x: torch.Tensor, k: int) -> int:
    return KERNEL_CHUNK if x.device.type == "cpu" else k


def _forward_chunked(x, weights, spectra, shape, fft_shape) -> torch.Tensor:
    (h, w), k, total = shape, spectra.shape[0], None
    c = _chunk(x, k)
    for k0 in range(0, k, c):  # a few kernels per FFT call on the CPU
        weighted = weights[..., k0 : k0 + c, :, :] * x[:, None]  # (B, c, H, W): mask first, then convolve
        part = (torch.fft.rfft2(weighted, s=fft_shape) * spectra[k0 : k0 + c]).sum(dim=1)
        total = part if total is None else total.add_(part)
    return torch.fft.irfft2(total, s=fft_shape)[..., :h, :w]


def product_convolution_adjoint(
    y: torch.Tensor, weights: torch.Tensor, kernels: torch.Tensor, *, spectra: torch.Tensor | None = None
) -> torch.Tensor:
    """Adjoint of :func:`product_convolution`: ``x = sum_k w_k . (e_k (*) y)`` with ``(*)`` the correlation.

    One ``rfft2`` of ``y`` and K inverse transforms per image (batched as in the forward operator). Same shapes.
    """
    y, squeeze, spectra, shape, fft_shape = _prepare(y, "y", weights, kernels, spectra)
    x = torch.cat([_adjoint_chunked(yb, wb, spectra, shape, fft_shape) for yb, wb in _pieces(y, weights)])
    return x[0] if squeeze else x


def _adjoint_chunked(y, weights, spectra, shape, fft_shape) -> torch.Tensor:
    (h, w), k, x = shape, spectra.shape[0], None
    c = _chunk(y, k)
    spectrum = torch.fft.rfft2(y, s=fft_shape)[:, None]
    for k0 in range(0, k, c):
        back = torch.fft.irfft2(spectrum * spectra[k0 : k0 + c].conj(), s=fft_shape)[..., :h, :w]
        part = (weights[..., k0 : k0 + c, :, :] * back).sum(dim=1)
        x = part if x is None else x.add_(part)
    return x


def _check_psfs(psfs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if psfs.ndim != 4 or psfs.shape[:2] != x.shape[-2:]:
        raise ValueError(
            f"psfs: expected shape (H, W, kh, kw) with (H, W) = {tuple(x.shape[-2:])} the image's, "
            f"got {tuple(psfs.shape)}"
        )
    return _odd_kernels(psfs)


def exact_blur(x: torch.Tensor, psfs: torch.Tensor) -> torch.Tensor:
    """Exact spatially varying blur: every source pixel spreads with its own PSF (direct sum, ``'same'`` output).

    Parameters
    ----------
    x : (B, H, W) or (H, W) real tensor
    psfs : (H, W, kh, kw) real tensor, ``psfs[i, j]`` is the PSF of the source pixel ``(i, j)``

    Memory is ``B * H * W * kh * kw`` elements: meant for images up to about 128x128 and for validation.
    """
    x, squeeze = check_image(x, "x")
    psfs = _check_psfs(psfs, x)
    b, (h, w), (kh, kw) = x.shape[0], x.shape[-2:], psfs.shape[-2:]
    # column q of `blocks` is the PSF of source q scaled by its intensity; fold scatters and sums the blocks
    blocks = psfs.reshape(h * w, kh * kw).T[None] * x.reshape(b, 1, h * w)
    y = F.fold(blocks, output_size=(h, w), kernel_size=(kh, kw), padding=(kh // 2, kw // 2))
    y = y[:, 0]
    return y[0] if squeeze else y


def exact_blur_adjoint(y: torch.Tensor, psfs: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`exact_blur`: ``x[q] = sum_p h_q[p - q + c] y[p]`` (each source gathers along its PSF)."""
    y, squeeze = check_image(y, "y")
    psfs = _check_psfs(psfs, y)
    b, (h, w), (kh, kw) = y.shape[0], y.shape[-2:], psfs.shape[-2:]
    patches = F.unfold(y[:, None], kernel_size=(kh, kw), padding=(kh // 2, kw // 2))  # (B, kh*kw, H*W)
    x = (patches * psfs.reshape(h * w, kh * kw).T[None]).sum(dim=1)
    x = x.reshape(b, h, w)
    return x[0] if squeeze else x


class ProductConvolution(torch.nn.Module):
    """The low-rank operator as a module: weights and kernel spectra are buffers (they follow ``.to(device)``).

    Parameters
    ----------
    weights : (K, H, W) tensor, per-source-pixel weights of the eigen-PSFs
    kernels : (K, kh, kw) tensor, eigen-PSFs

    ``forward(x)`` blurs ``(B, H, W)`` or ``(H, W)`` images of exactly ``(H, W)`` pixels; ``adjoint(y)`` is its adjoint.
    """

    def __init__(self, weights: torch.Tensor, kernels: torch.Tensor):
        super().__init__()
        if weights.ndim != 3 or kernels.ndim != 3 or weights.shape[0] != kernels.shape[0]:
            raise ValueError(
                f"weights (K, H, W) and kernels (K, kh, kw) must agree on K, got {tuple(weights.shape)} "
                f"and {tuple(kernels.shape)}"
            )
        self.register_buffer("weights", weights)
        self.register_buffer("kernels", _odd_kernels(kernels))
        self.fft_shape = padded_shape(weights.shape, self.kernels.shape)
        self.register_buffer("spectra", kernel_spectra(self.kernels, self.fft_shape))

    @property
    def rank(self) -> int:
        return int(self.kernels.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return product_convolution(x, self.weights.to(x.dtype), self.kernels, spectra=self._spectra_for(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return product_convolution_adjoint(y, self.weights.to(y.dtype), self.kernels, spectra=self._spectra_for(y))

    def _spectra_for(self, x: torch.Tensor) -> torch.Tensor:
        return self.spectra.to(x.dtype.to_complex()) if x.dtype != self.weights.dtype else self.spectra


class ExactBlur(torch.nn.Module):
    """The exact operator as a module; ``psfs`` (H, W, kh, kw) is a buffer. See :func:`exact_blur`."""

    def __init__(self, psfs: torch.Tensor):
        super().__init__()
        if psfs.ndim != 4:
            raise ValueError(f"psfs: expected shape (H, W, kh, kw), got {tuple(psfs.shape)}")
        self.register_buffer("psfs", psfs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return exact_blur(x, self.psfs.to(x.dtype))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return exact_blur_adjoint(y, self.psfs.to(y.dtype))
