"""Publishing to a shared filesystem, and loading back: one stage, four modules.

:mod:`.versions` publishes a run's newest verified checkpoint as an immutable, checksummed
version (``publish``, ``verify``, ``latest``); :mod:`.card` and :mod:`.readme` describe it;
:mod:`.load` rebuilds the network from a version (``load_pretrained``); :mod:`.cli` is
``anatplane publish``. Names are handed on lazily so ``import anatplane_dist.publish`` stays
free of torch until weights are loaded.
"""
from __future__ import annotations

from anatplane_dist.core.lazy import lazy_exports

_HOME = {"publish": "versions", "verify": "versions", "list_versions": "versions",
         "update_latest": "versions", "resolve_version": "versions", "PublishError": "versions",
         "VerificationError": "versions", "LATEST": "versions", "SUMS": "versions",
         "CARD": "card", "build_card": "card", "render_readme": "readme",
         "load_pretrained": "load", "LOADABLE_PARTS": "load"}

__all__ = sorted(_HOME)

__getattr__ = lazy_exports(__name__, _HOME)
