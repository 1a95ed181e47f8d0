"""Built-in procedural phantoms written as real files (DICOM via pydicom, NIfTI via nibabel).

* heart: cardiac cine in the DSBCC layout (:func:`write_heart_cohort`) and a labelled cohort
  in the ACDC layout (:func:`write_acdc_cohort`);
* knee: sagittal/coronal/axial stacks in a fastMRI-like layout plus ``labels.csv``
  (:func:`write_knee_cohort`).

Images are rendered by evaluating an analytic anatomy at the world position of every pixel of
a prescribed plane, so the geometry the readers recover is exact by construction.
"""
from anatplane_dist.sources.phantom.acdc import AcdcCohortConfig, write_acdc_cohort
from anatplane_dist.sources.phantom.dsbcc_writer import MESS_KINDS, HeartCohortConfig, write_heart_cohort
from anatplane_dist.sources.phantom.knee_writer import KneeCohortConfig, write_knee_cohort

__all__ = ["AcdcCohortConfig", "write_acdc_cohort", "MESS_KINDS", "HeartCohortConfig", "write_heart_cohort",
           "KneeCohortConfig", "write_knee_cohort"]
