"""The paper's 1D experiment (Section IV.A): the matrix of Eq. (5), the data, the three model families, reading a
model's matrix back, a short training run and ``experiment conv1d`` end to end."""

import json

import matplotlib.image
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from learn.cli.experiment import experiment
from learn.experiments.conv1d import (
    DEFAULT_MODELS,
    CG1d,
    CNN1d,
    build_model,
    convolution_matrix,
    format_conv1d,
    learned_matrix,
    make_data,
    model_name,
    parse_model,
    run_conv1d,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- the matrix H of Eq. (5) ----------------------------------------------------------------------------------------


def test_left_half_is_a_narrow_gaussian_shifted_by_delta():
    H = convolution_matrix()
    src = np.arange(15)
    log_h = np.log(H[src[:, None] + np.arange(3), src[:, None]])  # rows x', x'+1, x'+2 of columns x' < 15
    # log H is a parabola in the row: second difference -1/σ², σ = 0.5
    np.testing.assert_allclose(log_h[:, 2] - 2 * log_h[:, 1] + log_h[:, 0], -4.0, rtol=1e-9)
    # its vertex (the centre) at x' + δ(x'), δ = 1 - x'/15 falling from 1 to 1/15
    centre = src + 0.5 + (log_h[:, 1] - log_h[:, 0]) / 4
    np.testing.assert_allclose(centre, src + 1 - src / 15, rtol=1e-9)
    for col in src:  # narrow: nothing beyond 3 pixels of the centre
        far = np.abs(np.arange(30) - centre[col]) > 3
        assert np.all(H[far, col] < 1e-7)


def test_right_half_is_centred_and_widens_from_half_a_pixel_to_two():
    H = convolution_matrix()
    for col in range(15, 30):  # δ = 0: symmetric about the diagonal where both sides lie inside the signal
        j = np.arange(1, min(col, 29 - col) + 1)
        np.testing.assert_allclose(H[col + j, col], H[col - j, col], rtol=1e-12)
    # σ(x') = 0.5 (2 - x'/15) + 2 (x'/15 - 1): from H[x'-1, x'] = exp(-1 / (2σ²))
    sigma = np.sqrt(-1 / (2 * np.log(H[np.arange(14, 29), np.arange(15, 30)])))
    np.testing.assert_allclose(sigma, 0.5 + 1.5 * (np.arange(15, 30) / 15 - 1), rtol=1e-9)
    assert sigma[0] == pytest.approx(0.5) and sigma[-1] == pytest.approx(1.9)
    assert np.all(np.diff(sigma) > 0)


def test_matrix_rejects_bad_size():
    with pytest.raises(ValueError, match=r"n: expected an integer >= 2, got 1"):
        convolution_matrix(1)


# ---- data -----------------------------------------------------------------------------------------------------------


def test_data_shapes_range_and_reproducibility():
    m, n = make_data(50, 30, rng=np.random.default_rng(3))
    assert m.shape == n.shape == (50, 30) and m.dtype == n.dtype == np.float32
    assert m.min() >= 0 and m.max() < 1
    np.testing.assert_allclose(n, m @ convolution_matrix(30).T, rtol=1e-5)
    m2, _ = make_data(50, 30, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(m, m2)


def test_data_needs_an_explicit_generator():
    with pytest.raises(TypeError, match=r"rng: expected a numpy\.random\.Generator, got int"):
        make_data(10, 30, rng=0)
    with pytest.raises(ValueError, match="n_samples: expected a positive integer, got 0"):
        make_data(0, 30, rng=np.random.default_rng())


# ---- models and their matrices --------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", DEFAULT_MODELS, ids=model_name)
@pytest.mark.parametrize("length", [30, 17])
def test_models_keep_the_shape_and_are_affine(spec, length):
    model = build_model(spec).double()
    m = torch.rand(4, 1, length, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(m)
        bias = model(torch.zeros(1, 1, length, dtype=torch.float64))
    assert out.shape == (4, 1, length)
    A = learned_matrix(model, length)  # exact: f(m) = A m + f(0)
    np.testing.assert_allclose(out[:, 0].numpy(), m[:, 0].numpy() @ A.T + bias[:, 0].numpy(), atol=1e-12)


def test_learned_matrix_of_one_convolution_is_its_toeplitz_matrix():
    kernel = torch.tensor([0.1, -0.2, 0.7, 0.3, 0.05])
    model = CNN1d(1, 5, 1)
    with torch.no_grad():
        model.convs[0].weight.copy_(kernel.view(1, 1, 5))
        model.convs[0].bias.fill_(0.4)  # removed by the zero response
    A = learned_matrix(model, 12)
    expected = np.zeros((12, 12))
    for x in range(12):  # torch convolutions are correlations: out[x] = Σ_j w[j] in[x + j - 2], zeros outside
        for j in range(5):
            if 0 <= x + j - 2 < 12:
                expected[x, x + j - 2] = kernel[j]
    np.testing.assert_allclose(A, expected, atol=1e-7)
    assert model.training  # the mode is restored


def test_parameter_counts():
    assert sum(p.numel() for p in CNN1d(1, 7, 1).parameters()) == 8
    assert sum(p.numel() for p in CNN1d(8, 7, 4).parameters()) == 757
    assert sum(p.numel() for p in CG1d(1, 7, 3, 3).parameters()) == 58  # conv 24, encoder 6 + 12 + 12, 1x1 conv 4


def test_models_reject_a_wrong_input_shape():
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 1, L\), got \(4, 30\)"):
        CNN1d(1, 7, 1)(torch.zeros(4, 30))
    with pytest.raises(ValueError, match="kernel_size: expected a positive integer, got 0"):
        CNN1d(1, 0, 1)


@pytest.mark.parametrize(
    ("text", "spec"),
    [("CNN(4,7,4)", ("CNN", 4, 7, 4)), (" ccnn( 4, 7, 4 ) ", ("CCNN", 4, 7, 4)), ("CG(1,7,3,3)", ("CG", 1, 7, 3, 3))],
)
def test_parse_model(text, spec):
    assert parse_model(text) == spec
    assert model_name(spec) == text.replace(" ", "").upper()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("MLP(1,2,3)", r"--model: expected CNN\(L,k,c\), CCNN\(L,k,c\) or CG\(L,k,c,p\) .* got 'MLP\(1,2,3\)'"),
        ("CNN 4,7,4", r"--model: expected CNN\(L,k,c\)"),
        ("CNN(1,7)", r"model CNN: expected 3 numbers \(L, k, c\), got 2"),
        ("CG(1,7,3)", r"model CG: expected 4 numbers \(L, k, c, p\), got 3"),
        ("CNN(0,7,4)", r"model CNN L: expected a positive integer, got 0"),
        ("CNN(a,7,4)", r"--model 'CNN\(a,7,4\)': expected positive integers between the brackets"),
    ],
)
def test_parse_model_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_model(text)


# ---- training and the command line ----------------------------------------------------------------------------------


def test_coordgate_learns_h_where_one_convolution_learns_the_mean_kernel():
    state = torch.random.get_rng_state()
    specs = [("CNN", 1, 7, 1), ("CG", 1, 7, 3, 3)]
    cnn, cg = run_conv1d(models=specs, n_samples=2000, steps=2000, lr=1e-2, seed=0, repeat=2)
    assert torch.equal(torch.random.get_rng_state(), state)  # no global seeding
    assert (cnn["parameters"], cg["parameters"]) == (8, 58)
    assert cnn["psnr_db"] < 10 and cg["psnr_db"] > cnn["psnr_db"] + 15
    assert cg["matrix_error"] < 0.15 < 0.5 < cnn["matrix_error"]
    H = convolution_matrix(30)
    assert np.abs(cg["matrix"] - H).max() < 0.25
    assert cg["inference_us"] > 0 and len(cg["loss_curve"]) == 50
    table = format_conv1d([cnn, cg])
    assert "CG(1,7,3,3)" in table and "PSNR dB" in table


def test_run_rejects_bad_options():
    with pytest.raises(ValueError, match="models: expected at least one model spec, got none"):
        run_conv1d(models=[], n_samples=20, steps=1)
    with pytest.raises(ValueError, match="n_samples: expected an integer >= 10, got 5"):
        run_conv1d(n_samples=5, steps=1)


def test_cli_quick_run_writes_figure_numbers_and_matrices(tmp_path):
    out = tmp_path / "conv1d"
    args = ["conv1d", "--quick", "--model", "CNN(1,7,1)", "--model", "CG(1,7,3,3)", "-o", str(out), "--seed", "1"]
    result = CliRunner().invoke(experiment, args)
    assert result.exit_code == 0, result.output
    assert "CG(1,7,3,3)" in result.output and "µs/sample" in result.output
    image = matplotlib.image.imread(out / "conv1d.png")
    assert image.ndim == 3 and image.shape[0] > 200
    summary = json.loads((out / "conv1d.json").read_text(encoding="utf-8"))
    assert summary["config"]["models"] == ["CNN(1,7,1)", "CG(1,7,3,3)"]
    assert summary["config"]["steps"] == 300 and summary["config"]["n_samples"] == 1000
    assert [r["name"] for r in summary["results"]] == ["CNN(1,7,1)", "CG(1,7,3,3)"]
    assert "matrix" not in summary["results"][0]
    with np.load(out / "conv1d_matrices.npz") as npz:
        assert list(npz["names"]) == ["CNN(1,7,1)", "CG(1,7,3,3)"]
        assert npz["matrices"].shape == (2, 30, 30)
        np.testing.assert_array_equal(npz["H"], convolution_matrix(30))


def test_cli_bad_model_is_a_value_error(tmp_path):
    result = CliRunner().invoke(experiment, ["conv1d", "--quick", "--model", "CNN(1,7)", "-o", str(tmp_path)])
    assert result.exit_code != 0
    assert isinstance(result.exception, ValueError)
    assert "model CNN: expected 3 numbers (L, k, c), got 2" in str(result.exception)
