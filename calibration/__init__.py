"""calibration: fit optisim's lens model and learn's networks to measured bead images.

Imports :mod:`optisim` and :mod:`learn`. Its contents arrive with the calibration-layer issue.
"""

__all__: list[str] = []
