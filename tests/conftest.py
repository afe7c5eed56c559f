"""Fixtures shared by every test package."""

from __future__ import annotations

import pytest

from optisim._threads import torch_threads


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for the module, restored afterwards. Tiny models and the bead fit run many small tensor
    operations, which two threads make several times slower on a busy 2-core machine; the CLI tests' subprocesses
    (``OMP_NUM_THREADS=1``) then do the same arithmetic as in-process runs."""
    with torch_threads(1):
        yield

