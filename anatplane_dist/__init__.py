"""anatplane_dist: self-supervised pretraining from anatomy-oriented imaging planes.

Pretext labels come for free from DICOM geometry: where reference planes cut an
input image (relative orientation) and where a slice sits in its stack (relative
location).  See docs/architecture.md for the flow.
"""
__version__ = "0.1.0"
