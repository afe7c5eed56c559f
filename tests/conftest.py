"""Fixtures shared by every test package."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for the module, restored afterwards. Tiny models and the bead fit run many small tensor
    operations, which two threads make several times slower on a busy 2-core machine; the CLI tests' subprocesses
    (``OMP_NUM_THREADS=1``) then do the same arithmetic as in-process runs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
