"""learn: CoordGate U-Nets and baselines trained as inverse operators of optisim's forward model.

Imports :mod:`optisim`; never imports :mod:`calibration`. Its contents arrive with the learning-layer issue.
"""

__all__: list[str] = []
