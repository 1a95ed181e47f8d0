"""The dozen header values the readers need, parsed straight from a dataset's raw bytes.

pydicom converts an element on first access through a general machinery (VR lookup, value
classes such as ``DSfloat``/``IS``/``UID``, multi-value wrappers): ~20-60 us per element, which
for the readers' 12 tags per file cost about as much as parsing the file itself
(``docs/performance.md``, Sharding). The values needed here have simple encodings -- DS/IS/UI
are backslash-separated ASCII, US is two bytes -- so :class:`RawTags` reads them from the raw
element and falls back to pydicom's own conversion for anything else (an element already
converted, an unexpected length, a value that does not parse), so results and error messages
are pydicom's whenever the fast path is unsure.
"""
from __future__ import annotations

from typing import Any

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement

__all__ = ["RawTags"]

#: keyword -> VR of the values read here
_VR = {"ImagePositionPatient": "DS", "ImageOrientationPatient": "DS", "PixelSpacing": "DS", "TriggerTime": "DS",
       "Rows": "US", "Columns": "US", "SeriesNumber": "IS", "InstanceNumber": "IS", "NumberOfFrames": "IS",
       "FrameOfReferenceUID": "UI", "SeriesInstanceUID": "UI", "SOPInstanceUID": "UI"}
_TAG = {k: tag_for_keyword(k) for k in _VR}
_MISSING = object()


class RawTags:
    """Attribute / ``get`` access to :data:`_VR`'s keywords of ``ds`` (others go to ``ds``)."""

    def __init__(self, ds: pydicom.Dataset) -> None:
        self._ds = ds

    def get(self, keyword: str, default: Any = None) -> Any:
        value = self._fast(keyword)
        if value is _MISSING:
            return self._ds.get(keyword, default)
        return default if value is None else value

    def __getattr__(self, keyword: str) -> Any:
        if keyword.startswith("_"):
            raise AttributeError(keyword)
        value = self._fast(keyword)
        if value is _MISSING:
            return getattr(self._ds, keyword)
        if value is None:
            raise AttributeError(keyword)
        return value

    def _fast(self, keyword: str) -> Any:
        """The parsed value, None when the tag is absent or empty, ``_MISSING`` to fall back."""
        vr = _VR.get(keyword)
        if vr is None:
            return _MISSING
        tag = _TAG[keyword]
        if tag not in self._ds:
            return None
        elem = self._ds.get_item(tag)
        if not isinstance(elem, RawDataElement):
            return _MISSING
        raw = elem.value
        if not raw:
            return None
        try:
            if vr == "US":
                if len(raw) != 2:
                    return _MISSING
                return int.from_bytes(raw, "little" if elem.is_little_endian else "big")
            text = raw.decode("ascii").rstrip(" \x00")
            if not text:
                return None
            if vr == "UI":
                return text
            parts = text.split("\\")
            values = [float(p) for p in parts] if vr == "DS" else [int(p) for p in parts]
        except (UnicodeDecodeError, ValueError):
            return _MISSING
        return values[0] if len(values) == 1 else values
