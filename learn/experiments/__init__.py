"""The paper's experiments, reproduced as library functions (the ``optisim experiment`` commands call them).

- :mod:`learn.experiments.conv1d`: Section IV.A, learning a 1D spatially varying convolution matrix (Eq. 5, Fig. 3).
- :mod:`learn.experiments.deblur2d` (and its reporting, :mod:`learn.experiments.deblur2d_report`): Section IV.B,
  deblurring a lens whose blur varies over the field with U-Nets, CG U-Nets and the other models (Fig. 4b).
"""

__all__: list[str] = []
