"""Spatially varying blur operators: adjointness, orientation, equivalences, energy, FFT sizes, shapes, errors."""

import re

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d

from optisim.blur import (
    ExactBlur,
    ProductConvolution,
    exact_blur,
    exact_blur_adjoint,
    fft_size,
    kernel_spectra,
    padded_shape,
    product_convolution,
    product_convolution_adjoint,
)

F64 = torch.float64

# (image (H, W), kernel (kh, kw)): odd, even and mixed kernels, non-square images and kernels
SIZES = [((9, 13), (5, 3)), ((10, 7), (4, 6)), ((12, 11), (3, 4)), ((8, 8), (7, 7))]


def randn(*shape, seed=0, dtype=F64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rand(*shape, seed=0, dtype=F64):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def dot(a, b):
    return float((a * b).sum())


def assert_adjoint(forward, adjoint, x, y):
    lhs, rhs = dot(forward(x), y), dot(x, adjoint(y))
    assert abs(lhs - rhs) <= 1e-12 * max(abs(lhs), abs(rhs)), (lhs, rhs)


def delta(shape, q, dtype=F64):
    x = torch.zeros(shape, dtype=dtype)
    x[q] = 1.0
    return x


def low_rank_psfs(weights, kernels):
    """Per-pixel PSFs ``h_q = sum_k w_k[q] e_k`` of a product convolution: (H, W, kh, kw)."""
    return torch.einsum("khw,kyx->hwyx", weights, kernels)


# --------------------------------------------------------------------------------------------- adjointness


@pytest.mark.parametrize(("image", "kernel"), SIZES)
@pytest.mark.parametrize("batched_weights", [False, True])
def test_product_convolution_adjoint_dot_product(image, kernel, batched_weights):
    b, k = 3, 4
    weights = randn(b, k, *image, seed=1) if batched_weights else randn(k, *image, seed=1)
    kernels = randn(k, *kernel, seed=2)
    x, y = randn(b, *image, seed=3), randn(b, *image, seed=4)
    assert_adjoint(
        lambda v: product_convolution(v, weights, kernels),
        lambda v: product_convolution_adjoint(v, weights, kernels),
        x,
        y,
    )


@pytest.mark.parametrize(("image", "kernel"), SIZES)
def test_product_convolution_adjoint_dot_product_single_image(image, kernel):
    weights, kernels = randn(2, *image, seed=5), randn(2, *kernel, seed=6)
    assert_adjoint(
        lambda v: product_convolution(v, weights, kernels),
        lambda v: product_convolution_adjoint(v, weights, kernels),
        randn(*image, seed=7),
        randn(*image, seed=8),
    )


@pytest.mark.parametrize(("image", "kernel"), SIZES)
def test_exact_blur_adjoint_dot_product(image, kernel):
    psfs = randn(*image, *kernel, seed=9)
    x, y = randn(2, *image, seed=10), randn(2, *image, seed=11)
    assert_adjoint(lambda v: exact_blur(v, psfs), lambda v: exact_blur_adjoint(v, psfs), x, y)
    assert_adjoint(lambda v: exact_blur(v, psfs), lambda v: exact_blur_adjoint(v, psfs), x[0], y[0])


@pytest.mark.parametrize(("image", "kernel"), SIZES)
def test_modules_adjoint_dot_product(image, kernel):
    pc = ProductConvolution(randn(3, *image, seed=12), randn(3, *kernel, seed=13))
    eb = ExactBlur(randn(*image, *kernel, seed=14))
    x, y = randn(2, *image, seed=15), randn(2, *image, seed=16)
    assert_adjoint(pc, pc.adjoint, x, y)
    assert_adjoint(eb, eb.adjoint, x, y)


# --------------------------------------------------------------------------------------------- orientation


def test_exact_blur_point_source_gives_its_own_psf_centred_on_it():
    h, w, kh, kw = 9, 11, 5, 3
    psfs = rand(h, w, kh, kw, seed=20)
    q = (4, 6)
    y = exact_blur(delta((h, w), q), psfs)
    expected = torch.zeros(h, w, dtype=F64)
    expected[q[0] - kh // 2 : q[0] + kh // 2 + 1, q[1] - kw // 2 : q[1] + kw // 2 + 1] = psfs[q]
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-15)
    # the chief-ray pixel of the source's PSF lands exactly on the source
    assert y[q] == psfs[q][kh // 2, kw // 2]


@pytest.mark.parametrize(
    ("kernel", "pixel", "shift"),
    [
        ((5, 5), (3, 4), (1, 2)),  # h[v, u] lands (v - kh // 2, u - kw // 2) away from the source
        ((5, 5), (0, 2), (-2, 0)),
        ((3, 7), (2, 0), (1, -3)),
        ((4, 4), (2, 2), (0, 0)),  # even kernels: chief ray at (kh // 2, kw // 2), trailing zero row/column
        ((4, 4), (0, 0), (-2, -2)),
        ((4, 6), (3, 5), (1, 2)),
    ],
)
def test_off_centre_pixel_displaces_in_the_documented_direction(kernel, pixel, shift):
    h, w = 12, 13
    q = (6, 5)
    kernel_img = torch.zeros(kernel, dtype=F64)
    kernel_img[pixel] = 1.0
    expected = delta((h, w), (q[0] + shift[0], q[1] + shift[1]))
    x = delta((h, w), q)
    psfs = kernel_img.expand(h, w, *kernel)
    torch.testing.assert_close(exact_blur(x, psfs), expected, rtol=0, atol=1e-15)
    y = product_convolution(x, torch.ones(1, h, w, dtype=F64), kernel_img[None])
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)


def test_product_convolution_masks_then_convolves():
    h, w = 16, 16
    left = torch.zeros(h, w, dtype=F64)
    left[:, : w // 2] = 1.0
    weights = torch.stack([left, 1.0 - left])
    horizontal = torch.zeros(5, 5, dtype=F64)
    horizontal[2, :] = 0.2  # the left half spreads along rows
    vertical = torch.zeros(5, 5, dtype=F64)
    vertical[:, 2] = 0.2  # the right half spreads along columns
    kernels = torch.stack([horizontal, vertical])
    q = (8, w // 2 - 1)  # a source on the left, next to the boundary
    x = delta((h, w), q)

    y = product_convolution(x, weights, kernels)
    expected = torch.zeros(h, w, dtype=F64)
    expected[q[0], q[1] - 2 : q[1] + 3] = 0.2  # the left kernel, light spilling over into the right half
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)

    # "convolve then mask" gathers with the output pixel's kernel: a different operator near the boundary
    xn = x.numpy()
    other = sum(weights[k].numpy() * convolve2d(xn, kernels[k].numpy(), mode="same") for k in range(2))
    assert np.abs(other - y.numpy()).max() > 0.1
    assert other[q[0], q[1] + 1] == 0.0  # the spill into the right half is masked off there
    assert y[q[0], q[1] + 1] == pytest.approx(0.2)


# --------------------------------------------------------------------------------------------- equivalences


@pytest.mark.parametrize(("image", "kernel"), SIZES)
def test_product_convolution_equals_exact_blur_of_its_psfs(image, kernel):
    weights, kernels = rand(3, *image, seed=30), randn(3, *kernel, seed=31)
    psfs = low_rank_psfs(weights, kernels)
    x = randn(2, *image, seed=32)
    torch.testing.assert_close(product_convolution(x, weights, kernels), exact_blur(x, psfs), rtol=0, atol=1e-10)
    torch.testing.assert_close(
        product_convolution_adjoint(x, weights, kernels), exact_blur_adjoint(x, psfs), rtol=0, atol=1e-10
    )


@pytest.mark.parametrize(
    ("image", "kernel"),
    # H + kh // 2 and W + kw // 2 are already 2,3,5-smooth: the FFT is as small as it may be, wrap-around would show
    [((13, 7), (7, 5)), ((13, 7), (6, 4)), ((9, 14), (3, 4)), ((10, 10), (1, 1))],
)
def test_shift_invariant_case_equals_convolve2d_same(image, kernel):
    rng = np.random.default_rng(33)
    x, k = rng.random(image), rng.random(kernel)
    assert padded_shape(image, k.shape) == (image[0] + k.shape[0] // 2, image[1] + k.shape[1] // 2)
    y = product_convolution(torch.from_numpy(x), torch.ones(1, *image, dtype=F64), torch.from_numpy(k)[None])
    # even kernels get a trailing zero row/column: compare with the padded (odd) kernel
    k_odd = np.pad(k, ((0, 1 - k.shape[0] % 2), (0, 1 - k.shape[1] % 2)))
    np.testing.assert_allclose(y.numpy(), convolve2d(x, k_odd, mode="same"), rtol=0, atol=1e-12)
    psfs = torch.from_numpy(k).expand(*image, *kernel)
    np.testing.assert_allclose(exact_blur(torch.from_numpy(x), psfs).numpy(), y.numpy(), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------- energy


def test_flat_image_keeps_its_value_away_from_the_border_and_loses_light_at_it():
    # one PSF summing to 1 everywhere: a flat scene stays flat wherever no PSF reaches past the border
    h, w, ks = 24, 30, 7
    r = ks // 2
    psf = rand(ks, ks, seed=40)
    psf = psf / psf.sum()
    flat = torch.full((h, w), 2.5, dtype=F64)
    for y in [
        exact_blur(flat, psf.expand(h, w, ks, ks)),
        product_convolution(flat, torch.ones(1, h, w, dtype=F64), psf[None]),
    ]:
        torch.testing.assert_close(y[r:-r, r:-r], flat[r:-r, r:-r], rtol=0, atol=1e-12)
        # zero padding: light is lost at the border (documented)
        assert (y[0] < 2.5 - 1e-3).all() and (y[:, -1] < 2.5 - 1e-3).all()
        assert float(y.sum()) < float(flat.sum()) - 1.0


def test_total_energy_conserved_for_a_scene_dark_near_the_border():
    # spatially varying PSFs each summing to 1 (scatter form): every source's light stays in the image
    h, w, ks = 20, 17, 5
    r = ks // 2
    x = torch.zeros(h, w, dtype=F64)
    x[r:-r, r:-r] = rand(h - 2 * r, w - 2 * r, seed=44)
    psfs = rand(h, w, ks, ks, seed=43)
    psfs = psfs / psfs.sum(dim=(-2, -1), keepdim=True)
    assert float(exact_blur(x, psfs).sum()) == pytest.approx(float(x.sum()), rel=1e-12)
    # low rank: kernels summing to 1 and weights summing to 1 at every pixel, so every h_q sums to 1
    kernels = rand(2, ks, ks, seed=45)
    kernels = kernels / kernels.sum(dim=(-2, -1), keepdim=True)
    w0 = rand(h, w, seed=46)
    y = product_convolution(x, torch.stack([w0, 1 - w0]), kernels)
    assert float(y.sum()) == pytest.approx(float(x.sum()), rel=1e-12)
    # ... but the image of a flat field is not flat: each source spreads with its own PSF
    assert float(exact_blur(torch.ones(h, w, dtype=F64), psfs)[r:-r, r:-r].std()) > 1e-3


# --------------------------------------------------------------------------------------------- FFT sizes


def _smooth(m):
    for p in (2, 3, 5):
        while m % p == 0:
            m //= p
    return m == 1


def test_fft_size_is_the_smallest_235_smooth_size():
    for n in range(1, 700):
        expected = next(m for m in range(n, 2 * n + 2) if _smooth(m))
        assert fft_size(n) == expected, n
    assert fft_size(541) == 576
    assert fft_size(540) == 540


@pytest.mark.parametrize("n", [0, -3])
def test_fft_size_rejects_non_positive(n):
    with pytest.raises(ValueError, match=re.escape(f"n: expected a positive size, got {n}")):
        fft_size(n)


@pytest.mark.parametrize(("image", "kernel"), [((128, 128), (61, 61)), ((10, 7), (4, 6)), ((2, 3, 97, 50), (5, 9, 9))])
def test_padded_shape(image, kernel):
    kh, kw = kernel[-2:]
    assert padded_shape(image, kernel) == (fft_size(image[-2] + kh // 2), fft_size(image[-1] + kw // 2))
    spectra = kernel_spectra(randn(2, kh, kw, seed=50), padded_shape(image, kernel))
    hp, wp = padded_shape(image, kernel)
    assert spectra.shape == (2, hp, wp // 2 + 1)
    assert spectra.is_complex()


def test_module_caches_spectra_of_the_padded_shape():
    pc = ProductConvolution(rand(2, 30, 20, seed=51), rand(2, 6, 5, seed=52))
    assert pc.rank == 2
    assert pc.kernels.shape == (2, 7, 5)
    assert pc.fft_shape == padded_shape((30, 20), (7, 5)) == (fft_size(33), fft_size(22))
    hp, wp = pc.fft_shape
    assert pc.spectra.shape == (2, hp, wp // 2 + 1)


# --------------------------------------------------------------------------------------------- shapes, dtypes, grads


def test_batched_input_equals_stacked_single_images():
    h, w = 11, 9
    weights, kernels, psfs = rand(3, h, w, seed=60), randn(3, 5, 4, seed=61), randn(h, w, 3, 5, seed=62)
    x = randn(4, h, w, seed=63)
    ops = [
        lambda v: product_convolution(v, weights, kernels),
        lambda v: product_convolution_adjoint(v, weights, kernels),
        lambda v: exact_blur(v, psfs),
        lambda v: exact_blur_adjoint(v, psfs),
    ]
    for op in ops:
        batched = op(x)
        assert batched.shape == (4, h, w)
        single = torch.stack([op(xi) for xi in x])
        torch.testing.assert_close(batched, single, rtol=0, atol=1e-12)


def test_batched_weights_apply_per_image():
    h, w = 8, 10
    weights, kernels = rand(2, 3, h, w, seed=64), randn(3, 3, 3, seed=65)
    x = randn(2, h, w, seed=66)
    y = product_convolution(x, weights, kernels)
    for i in range(2):
        torch.testing.assert_close(y[i], product_convolution(x[i], weights[i], kernels), rtol=0, atol=1e-12)
    ya = product_convolution_adjoint(x, weights, kernels)
    for i in range(2):
        torch.testing.assert_close(ya[i], product_convolution_adjoint(x[i], weights[i], kernels), rtol=0, atol=1e-12)


def test_single_image_with_batched_weights_is_rejected():
    h, w = 8, 10
    weights, kernels = rand(3, 2, h, w, seed=67), randn(2, 3, 3, seed=68)
    for op in (product_convolution, product_convolution_adjoint):
        with pytest.raises(ValueError, match=r"a batch of 3 weight maps needs 3 images .* got 1 image"):
            op(randn(h, w, seed=69), weights, kernels)
        with pytest.raises(ValueError, match=r"a batch of 3 weight maps needs 3 images .* got 2 image"):
            op(randn(2, h, w, seed=69), weights, kernels)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtypes_preserved(dtype):
    h, w = 10, 12
    weights, kernels = rand(2, h, w, seed=70, dtype=dtype), rand(2, 5, 5, seed=71, dtype=dtype)
    psfs = rand(h, w, 4, 3, seed=72, dtype=dtype)
    pc, eb = ProductConvolution(weights, kernels), ExactBlur(psfs)
    for shape in [(h, w), (3, h, w)]:
        x = rand(*shape, seed=73, dtype=dtype)
        outputs = [
            product_convolution(x, weights, kernels),
            product_convolution_adjoint(x, weights, kernels),
            exact_blur(x, psfs),
            exact_blur_adjoint(x, psfs),
            pc(x),
            pc.adjoint(x),
            eb(x),
            eb.adjoint(x),
        ]
        for y in outputs:
            assert y.shape == shape
            assert y.dtype == dtype


def test_modules_follow_the_input_dtype():
    h, w = 9, 8
    weights, kernels, psfs = rand(2, h, w, seed=74), randn(2, 3, 4, seed=75), randn(h, w, 3, 3, seed=76)
    pc32 = ProductConvolution(weights.float(), kernels.float())
    eb32 = ExactBlur(psfs.float())
    x = randn(2, h, w, seed=77)
    y = pc32(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, product_convolution(x, weights, kernels), rtol=0, atol=1e-5)
    torch.testing.assert_close(pc32.adjoint(x), product_convolution_adjoint(x, weights, kernels), rtol=0, atol=1e-5)
    assert eb32(x).dtype == torch.float64
    torch.testing.assert_close(eb32(x), exact_blur(x, psfs), rtol=0, atol=1e-5)
    # a float64 module applied to float32 images returns float32
    pc64 = ProductConvolution(weights, kernels)
    assert pc64(x.float()).dtype == torch.float32
    torch.testing.assert_close(pc64(x.float()), y.float(), rtol=0, atol=1e-5)


def test_gradients_flow():
    x = randn(2, 5, 6, seed=80).requires_grad_()
    weights = rand(2, 5, 6, seed=81).requires_grad_()
    kernels = randn(2, 3, 4, seed=82).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: product_convolution(v, weights.detach(), kernels.detach()), (x,))
    assert torch.autograd.gradcheck(lambda v: product_convolution_adjoint(v, weights.detach(), kernels.detach()), (x,))
    assert torch.autograd.gradcheck(product_convolution, (x, weights, kernels))
    psfs = randn(5, 6, 3, 3, seed=83).requires_grad_()
    assert torch.autograd.gradcheck(exact_blur, (x, psfs))


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("shape", [(5,), (1, 2, 5, 6)])
def test_error_wrong_ndim(shape):
    weights, kernels = torch.ones(1, 5, 6), torch.ones(1, 3, 3)
    expected = f"x: expected shape (B, H, W) or (H, W), got {shape}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        product_convolution(torch.zeros(shape), weights, kernels)
    with pytest.raises(ValueError, match=re.escape(expected)):
        exact_blur(torch.zeros(shape), torch.ones(5, 6, 3, 3))
    with pytest.raises(ValueError, match=re.escape(f"y: expected shape (B, H, W) or (H, W), got {shape}")):
        product_convolution_adjoint(torch.zeros(shape), weights, kernels)
    with pytest.raises(ValueError, match=re.escape(f"y: expected shape (B, H, W) or (H, W), got {shape}")):
        exact_blur_adjoint(torch.zeros(shape), torch.ones(5, 6, 3, 3))


def test_error_not_a_tensor():
    with pytest.raises(TypeError, match=r"x: expected a torch.Tensor \(B, H, W\) or \(H, W\), got ndarray"):
        product_convolution(np.zeros((5, 6)), torch.ones(1, 5, 6), torch.ones(1, 3, 3))


@pytest.mark.parametrize("dtype", [torch.complex64, torch.int64, torch.bool])
def test_error_complex_or_integer_input(dtype):
    x = torch.zeros(5, 6, dtype=dtype)
    with pytest.raises(TypeError, match=re.escape(f"x: expected a real floating-point tensor, got {dtype}")):
        product_convolution(x, torch.ones(1, 5, 6), torch.ones(1, 3, 3))
    with pytest.raises(TypeError, match=re.escape(f"x: expected a real floating-point tensor, got {dtype}")):
        exact_blur(x, torch.ones(5, 6, 3, 3))
    with pytest.raises(TypeError, match=re.escape(f"y: expected a real floating-point tensor, got {dtype}")):
        exact_blur_adjoint(x, torch.ones(5, 6, 3, 3))


@pytest.mark.parametrize("shape", [(2, 5, 6), (1, 5, 7), (1, 6, 6), (5, 6), (1, 1, 1, 5, 6)])
def test_error_wrong_weights_shape(shape):
    x, kernels = torch.zeros(3, 5, 6), torch.ones(1, 3, 3)
    expected = (
        "weights: expected shape (K, H, W) or (B, K, H, W) = (.., 1, 5, 6) matching the kernels and the image, "
        f"got {shape}"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        product_convolution(x, torch.ones(shape), kernels)
    with pytest.raises(ValueError, match=re.escape(expected)):
        product_convolution_adjoint(x, torch.ones(shape), kernels)


@pytest.mark.parametrize("shape", [(5, 7, 3, 3), (6, 6, 3, 3), (5, 6, 9)])
def test_error_psfs_shape_mismatch(shape):
    x = torch.zeros(2, 5, 6)
    expected = f"psfs: expected shape (H, W, kh, kw) with (H, W) = (5, 6) the image's, got {shape}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        exact_blur(x, torch.ones(shape))
    with pytest.raises(ValueError, match=re.escape(expected)):
        exact_blur_adjoint(x, torch.ones(shape))


def test_error_module_construction():
    with pytest.raises(ValueError, match=re.escape("psfs: expected shape (H, W, kh, kw), got (5, 6, 9)")):
        ExactBlur(torch.ones(5, 6, 9))
    with pytest.raises(ValueError, match=re.escape("must agree on K, got (2, 5, 6) and (3, 3, 3)")):
        ProductConvolution(torch.ones(2, 5, 6), torch.ones(3, 3, 3))


def test_error_kernel_spectra():
    with pytest.raises(ValueError, match=re.escape("kernels: size (9, 9) larger than the FFT size (8, 12)")):
        kernel_spectra(torch.ones(1, 9, 9), (8, 12))
    # an even kernel is padded to odd first: 8 -> 9 does not fit in 8
    with pytest.raises(ValueError, match=re.escape("kernels: size (9, 5) larger than the FFT size (8, 8)")):
        kernel_spectra(torch.ones(2, 8, 5), (8, 8))
    with pytest.raises(ValueError, match=re.escape("kernels: expected shape (K, kh, kw), got (9, 9)")):
        kernel_spectra(torch.ones(9, 9), (16, 16))


def test_error_spectra_of_the_wrong_shape():
    x, weights, kernels = torch.zeros(13, 7), torch.ones(2, 13, 7), torch.ones(2, 3, 3)
    hp, wp = padded_shape((13, 7), (3, 3))
    for bad, got in [
        (kernel_spectra(kernels, (hp + 1, wp)), (2, hp + 1, wp // 2 + 1)),
        (kernel_spectra(kernels[:1], (hp, wp)), (1, hp, wp // 2 + 1)),
    ]:
        expected = f"spectra: expected shape {(2, hp, wp // 2 + 1)}, got {got}"
        with pytest.raises(ValueError, match=re.escape(expected)):
            product_convolution(x, weights, kernels, spectra=bad)


def test_error_spectra_of_the_wrong_shape_adjoint():
    y, weights, kernels = torch.zeros(13, 7), torch.ones(2, 13, 7), torch.ones(2, 3, 3)
    hp, wp = padded_shape((13, 7), (3, 3))
    with pytest.raises(ValueError, match=re.escape(f"spectra: expected shape {(2, hp, wp // 2 + 1)}")):
        product_convolution_adjoint(y, weights, kernels, spectra=kernel_spectra(kernels[:1], (hp, wp)))


# --------------------------------------------------------------------------------------------- device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    h, w = 32, 40
    weights, kernels, psfs = rand(3, h, w, seed=90), randn(3, 7, 6, seed=91), randn(h, w, 5, 5, seed=92)
    x = randn(2, h, w, seed=93)
    pc, eb = ProductConvolution(weights, kernels), ExactBlur(psfs)
    pc_cuda, eb_cuda = ProductConvolution(weights, kernels).to("cuda"), ExactBlur(psfs).to("cuda")
    assert pc_cuda.spectra.is_cuda and pc_cuda.weights.is_cuda
    xc = x.to("cuda")
    for cpu_op, cuda_op in [(pc, pc_cuda), (pc.adjoint, pc_cuda.adjoint), (eb, eb_cuda), (eb.adjoint, eb_cuda.adjoint)]:
        yc = cuda_op(xc)
        assert yc.is_cuda
        torch.testing.assert_close(yc.cpu(), cpu_op(x), rtol=0, atol=1e-10)
    yc = product_convolution(xc, weights.cuda(), kernels.cuda())
    torch.testing.assert_close(yc.cpu(), pc(x), rtol=0, atol=1e-10)
