"""anatplane_dist: self-supervised pretraining from anatomy-oriented imaging planes.

Pretext labels come for free from DICOM geometry: where reference planes cut an
input image (relative orientation) and where a slice sits in its stack (relative
location).  See docs/architecture.md for the flow.
"""
__version__ = "0.1.0"

__all__ = ["__version__", "load_pretrained"]


def __getattr__(name: str):
    """Lazy exports: ``import anatplane_dist`` stays free of torch until a name needs it."""
    if name == "load_pretrained":   # the one import that runs back up: the public one-liner API
        from anatplane_dist.publish import load_pretrained
        return load_pretrained
    raise AttributeError(f"module 'anatplane_dist' has no attribute {name!r}")
