"""optisim._threads.torch_threads: the one way the project sets torch's CPU threads for a block of work."""

from __future__ import annotations

import pytest

from optisim._threads import torch_threads


def test_torch_threads_are_set_for_the_run_and_restored():
    import torch

    previous = torch.get_num_threads()
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == previous
    with torch_threads(None):
        assert torch.get_num_threads() == previous
    with pytest.raises(ValueError, match="threads: expected a positive number of CPU threads or None, got 0"):
        with torch_threads(0):
            pass
