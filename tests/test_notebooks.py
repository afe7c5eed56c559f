"""The user-story notebooks (``notebooks/*.ipynb``): each runs from top to bottom without a cell error at the tiny
size setting, in a fresh kernel of this interpreter with a temporary working directory, and each is committed without
outputs or execution counts."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import install as install_kernelspec
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("01_simulate_lens_blur.ipynb", "02_train_inverse.ipynb", "03_calibrate_beads.ipynb")
KERNEL = "optisim-notebook-test"
CELL_TIMEOUT = 300  # seconds; each notebook takes well under a minute at the tiny setting


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=nbformat.NO_CONVERT)


@pytest.fixture(scope="session")
def kernel_path(tmp_path_factory) -> Path:
    """A Jupyter data folder holding one kernelspec that starts ``sys.executable``: the notebooks then run in this
    environment whatever other ``python3`` kernels the machine has, and nothing is installed into the environment."""
    prefix = tmp_path_factory.mktemp("jupyter")
    install_kernelspec(kernel_name=KERNEL, display_name="optisim tests", prefix=str(prefix))
    return prefix / "share" / "jupyter"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_at_the_tiny_setting(name, kernel_path, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_path))
    monkeypatch.setenv("OPTISIM_NOTEBOOK_SIZE", "tiny")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel is another process: one_torch_thread cannot reach it
    nb = read(name)
    client = NotebookClient(
        nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on the first failing cell
    assert client.kc is None  # the kernel was shut down
    assert (tmp_path / "notebook_outputs").is_dir()  # files went to the working directory, not the repository
    executed = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in executed)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_without_outputs(name):
    nb = read(name)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{name}: no code cells"
    for i, cell in enumerate(code):
        assert cell.outputs == [], f"{name}: code cell {i} has outputs; clear them before committing"
        assert cell.execution_count is None, f"{name}: code cell {i} has an execution count; clear it"
    assert "OPTISIM_NOTEBOOK_SIZE" in code[0].source, f"{name}: the first code cell must read OPTISIM_NOTEBOOK_SIZE"


def test_kernelspec_runs_this_interpreter(kernel_path):
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager(kernel_dirs=[str(kernel_path / "kernels")]).get_kernel_spec(KERNEL)
    assert spec.argv[0] == sys.executable
