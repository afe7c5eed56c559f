"""Option parsers shared by the subcommands (kept free of heavy imports)."""

from __future__ import annotations

import click

__all__ = ["GridType", "PairType", "resolve_device"]


class GridType(click.ParamType):
    """``9x9`` or ``9`` -> (9, 9); ``5x7`` -> (gy, gx) = (5, 7)."""

    name = "GYxGX"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = str(value).lower().split("x")
        try:
            nums = tuple(int(p) for p in parts)
        except ValueError:
            self.fail(f"expected GYxGX such as 9x9, got {value!r}", param, ctx)
        if len(nums) == 1:
            nums = nums * 2
        if len(nums) != 2 or min(nums) < 1:
            self.fail(f"expected two positive counts GYxGX such as 9x9, got {value!r}", param, ctx)
        return nums


class PairType(click.ParamType):
    """``0.7,-0.2`` -> (0.7, -0.2)."""

    name = "HX,HY"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            hx, hy = (float(p) for p in str(value).split(","))
        except ValueError:
            self.fail(f"expected two numbers HX,HY such as 0.7,-0.2, got {value!r}", param, ctx)
        return hx, hy


def resolve_device(name: str):
    """'auto' -> 'cuda' if available else 'cpu'; 'cuda'/'mps' checked for availability."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps: no MPS device is available (use --device cpu or auto)")
    return torch.device(name)
