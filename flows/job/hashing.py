"""Which fields of the job reach the pixels: the ``NotHashed`` marker and ``pixel_dump``.

Content hashes (the job folder, the frame cache) are digests of ``pixel_dump``, and sweeps refuse
to sweep a marked field (it would render the same cell twice), so both follow the markers and no
hand-written list of fields.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo


class NotHashed:
    """Field marker: this field is not part of the content hashes (the job folder, which is the
    frame cache). Either it cannot change a pixel (device, runner, file formats), or its content
    is hashed instead of its value (an image's bytes rather than its path)."""

    def __init__(self, why: str):
        self.why = why


def pixel_dump(model: BaseModel) -> dict[str, Any]:
    """``model_dump(mode="json")`` without the fields marked :class:`NotHashed`, recursively.

    Content hashes are computed from this, never from a hand-written list of fields, so a new
    setting is hashed the moment it exists.
    """
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        if any(isinstance(m, NotHashed) for m in info.metadata):
            continue
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out[name] = pixel_dump(value)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, BaseModel) for v in value):
            out[name] = [pixel_dump(v) for v in value]
        else:
            out[name] = model.model_dump(mode="json", include={name})[name]
    return out


def not_hashed_reason(info: FieldInfo) -> str | None:
    """Why the field never changes a frame's pixels, or None when it may."""
    return next((m.why for m in info.metadata if isinstance(m, NotHashed)), None)
