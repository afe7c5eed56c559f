"""One way to run a block of work with a given number of torch CPU threads (restored afterwards).

Used where the project picks a thread count for the user: dataset worker processes (one thread each), the demo and
the experiments (tiny models on busy 2-core machines run many times faster on one thread).
"""

from __future__ import annotations

import contextlib

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Set ``torch.set_num_threads(threads)`` for the ``with`` block and restore the previous count after it.

    ``threads``: a positive int, or None to leave torch's setting alone. Anything else is a ValueError.
    """
    import torch

    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected a positive number of CPU threads or None, got {threads!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
