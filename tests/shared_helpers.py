"""Helpers shared by several test packages (importable as ``shared_helpers``: pytest puts ``tests/`` on the path
for ``tests/conftest.py``). Synthetic PSF fields with and without rotational symmetry, and the CLI runner."""

from __future__ import annotations


def elongated_psfs(hx, hy, *, centre=(0.0, 0.0), axis: str = "radial", size: int = 21, noise: float = 0.0, seed=0):
    """(N, size, size) Gaussian PSFs summing to 1, longer along one axis the farther they lie from ``centre``.

    ``axis='radial'``: elongated along the ray from the optical centre ``(cy, cx)`` (normalised field units), sigma
    ``1.5 + 3 r²`` px along it and 1.5 px across (a rotationally symmetric instrument); ``axis='x'``: elongated along
    the sensor's x axis by ``1.5 + 3 hx²`` px whatever the position (not rotationally symmetric). ``noise``: Gaussian
    noise sigma added per pixel, as a fraction of each PSF's peak.
    """
    import numpy as np

    hx, hy = np.atleast_1d(np.asarray(hx, float)), np.atleast_1d(np.asarray(hy, float))
    yy, xx = np.mgrid[:size, :size] - size // 2
    out = np.empty((len(hx), size, size))
    rng = np.random.default_rng(seed)
    for i, (x, y) in enumerate(zip(hx, hy, strict=True)):
        if axis == "radial":
            r, theta = np.hypot(y - centre[0], x - centre[1]), np.arctan2(y - centre[0], x - centre[1])
        else:
            r, theta = abs(x), 0.0
        u = xx * np.cos(theta) + yy * np.sin(theta)
        v = -xx * np.sin(theta) + yy * np.cos(theta)
        p = np.exp(-0.5 * (u / (1.5 + 3 * r**2)) ** 2 - 0.5 * (v / 1.5) ** 2)
        p = p + noise * p.max() * rng.standard_normal(p.shape)
        out[i] = np.clip(p, 0, None) / np.clip(p, 0, None).sum()
    return out


def disc_points(n: int, r_min: float, r_max: float, seed: int = 0):
    """(hy, hx) of ``n`` points spread uniformly over the annulus ``r_min <= r <= r_max`` (normalised field)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    r = np.sqrt(rng.uniform(r_min**2, r_max**2, n))
    t = rng.uniform(0, 2 * np.pi, n)
    return r * np.sin(t), r * np.cos(t)


def run_cli(*args, ok=True):
    """``optisim ARGS`` through click's CliRunner; with ``ok`` the exit code must be 0."""
    from click.testing import CliRunner

    from optisim.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def one_line_error(result, text):
    """Exit code 1, no traceback, and the whole output one ``Error:`` line containing ``text``."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and text in lines[0], result.output
    assert "Traceback" not in result.output
