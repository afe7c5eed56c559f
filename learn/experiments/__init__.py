"""The paper's experiments, reproduced as library functions (the ``optisim experiment`` commands call them).

- :mod:`learn.experiments.conv1d`: Section IV.A, learning a 1D spatially varying convolution matrix (Eq. 5, Fig. 3).
"""

__all__: list[str] = []
