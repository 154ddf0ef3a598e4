"""Preview helper: a pose drawn over a picture."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .errors import PoseSourceError
from .images import fit_image
from .pose import Pose


def overlay(image: Image.Image, pose: Pose | Image.Image, alpha: float = 0.7) -> Image.Image:
    """`image` with the pose map alpha-blended over it where the map is drawn.

    `pose` is a Pose (rendered at the image's size) or an already rendered map (stretched to
    it). Black map pixels leave the image untouched, so the preview does not darken.
    """
    if not 0.0 <= alpha <= 1.0:
        raise PoseSourceError(f"alpha must be within 0..1, got {alpha}")
    base = image.convert("RGB")
    pose_map = pose.render(base.size) if isinstance(pose, Pose) else fit_image(pose, base.size, "stretch")
    img = np.asarray(base, dtype=np.float32)
    drawn = np.asarray(pose_map, dtype=np.float32)
    mask = drawn.any(axis=2, keepdims=True)
    out = np.where(mask, (1.0 - alpha) * img + alpha * drawn, img)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
