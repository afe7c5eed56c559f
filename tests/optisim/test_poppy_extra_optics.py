"""poppy users can bring their own pupil elements into an optisim PSF."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import poppy
import pytest
import torch

from optisim.lens import FieldModel, FieldTerm, load_preset
from optisim.poppy_backend import poppy_psf
from optisim.psf import compute_psfs


@pytest.fixture(scope="module")
def lens():
    return load_preset("default").replace(pupil_samples=64)


def test_extra_poppy_element_equals_the_same_aberration_in_the_lens(lens):
    # 0.1 waves RMS of coma (Noll 8) added as a poppy element at the centre of the field ...
    coma_m = 0.1 * lens.reference_wavelength_um * 1e-6
    extra = poppy.ZernikeWFE(radius=1.0 * u.m, coefficients=[0, 0, 0, 0, 0, 0, 0, coma_m] * u.m)
    theirs = poppy_psf(lens, 0.0, 0.0, size=33, extra_optics=[extra])
    # ... gives the PSF of a lens whose field model holds that coma
    with_coma = lens.replace(aberrations=FieldModel(field_curvature=0.5, terms=(FieldTerm((3, 1), 0.1),)))
    ours, _ = compute_psfs(with_coma, [0.0], [0.0], size=33, dtype=torch.float64)
    assert np.linalg.norm(theirs - ours[0]) / np.linalg.norm(ours[0]) < 1e-6
    plain = poppy_psf(lens, 0.0, 0.0, size=33)
    assert np.linalg.norm(theirs - plain) / np.linalg.norm(plain) > 0.05  # the element did change the PSF
