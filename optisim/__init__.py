"""optisim: the physics layer. Zernike pupils, field-dependent PSFs, lens files, spatially varying blur, camera
noise and forward-blurred datasets.

Conventions are defined once, in the module that owns them: Zernike indices and normalisation in
:mod:`optisim.zernike`, sensor/field coordinates in :mod:`optisim.field`, pupil sampling in :mod:`optisim.pupil`,
PSF sampling and normalisation in :mod:`optisim.psf`, which way round the blur works and its border in
:mod:`optisim.blur`, the camera model in :mod:`optisim.noise`, the dataset schema in :mod:`optisim.dataset`,
the empirical PSF model file in :mod:`optisim.psfmodel`.
Names below are imported lazily, so ``import optisim`` (and the ``optisim`` command line) stays fast.
"""

from __future__ import annotations

import importlib

from optisim._version import __version__

_LAZY = {
    "CameraNoise": "optisim.noise",
    "DatasetConfig": "optisim.dataset",
    "EigenPSFs": "optisim.lowrank",
    "ExactBlur": "optisim.blur",
    "ImageFolder": "optisim.sources",
    "ProductConvolution": "optisim.blur",
    "SampleGenerator": "optisim.samples",
    "apply_noise": "optisim.noise",
    "blur_operator": "optisim.lowrank",
    "dataset_info": "optisim.dataset",
    "eigen_psfs_from_samples": "optisim.psfmodel",
    "exact_blur": "optisim.blur",
    "fluorescence_scene": "optisim.scenes",
    "make_source": "optisim.samples",
    "open_dataset": "optisim.dataset",
    "product_convolution": "optisim.blur",
    "simulate_image": "optisim.simulate",
    "write_dataset": "optisim.dataset",
    "FieldModel": "optisim.aberrations",
    "FieldTerm": "optisim.aberrations",
    "Lens": "optisim.lens",
    "LensFileError": "optisim.lens",
    "PSFModel": "optisim.psf",
    "SamplingError": "optisim.pupil",
    "compute_psfs": "optisim.psf",
    "list_presets": "optisim.lens",
    "load_lens": "optisim.lens",
    "load_preset": "optisim.lens",
    "open_psf_grid": "optisim.grid",
    "plot_psf_grid": "optisim.plotting",
    "poppy_psfs": "optisim.poppy_backend",
    "psf_grid": "optisim.grid",
    "read_psf_model": "optisim.psfmodel",
    "strehl_ratio": "optisim.psf",
    "write_psf_grid": "optisim.grid",
    "write_psf_model": "optisim.psfmodel",
    "write_tiff": "optisim.io",
    "zernike_nm": "optisim.zernike",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'optisim' has no attribute {name!r}")


def __dir__():
    return __all__
