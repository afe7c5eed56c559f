"""One check for configuration keys, shared by lens files, camera noise and scene settings."""

from __future__ import annotations

import difflib

__all__ = ["reject_unknown_keys"]


def reject_unknown_keys(keys, allowed, what: str, *, prefix: str = "", error: type[Exception] = ValueError) -> None:
    """Raise ``error`` naming the first key not in ``allowed``, with the nearest allowed key as a hint.

    Example message: ``unknown key 'photon' in camera noise settings (did you mean 'photons'?)``.
    """
    allowed = list(allowed)
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(str(key).lower(), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; allowed keys: {', '.join(allowed)}"
            raise error(f"unknown key '{prefix}{key}' in {what}{hint}")
