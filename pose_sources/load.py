"""The one entry point the flows call: a PoseSpec and an output size in, frames out."""

from __future__ import annotations

from collections.abc import Mapping

from .errors import PoseSourceError
from .images import PoseMaps
from .keyframes import interpolate_keyframes
from .openpose_json import read_openpose_folder, read_openpose_json
from .pose import PoseSequence, Size, _as_size
from .spec import KeyframesSpec, OpenPoseJsonSpec, PoseImagesSpec, PoseSpec, PoseSpecAdapter, VideoSpec
from .video import detect_video_poses


def load(spec: PoseSpec | Mapping, size: Size) -> PoseSequence | PoseMaps:
    """Frames of poses for an output of `size` = (width, height).

    Keypoint inputs give a PoseSequence already on a canvas of `size` (brought there with
    the spec's `fit`); pose images give PoseMaps. Both answer `len()` and `render(size)`,
    which returns one PIL RGB image per frame.
    """
    if isinstance(spec, Mapping):
        spec = PoseSpecAdapter.validate_python(dict(spec))
    size = _as_size(size, "output size")

    if isinstance(spec, PoseImagesSpec):
        return PoseMaps.from_source(spec.source, spec.fit)

    if isinstance(spec, OpenPoseJsonSpec):
        seq = read_openpose_folder(spec.path, canvas=size, fit=spec.fit, **_json_options(spec, size))
    elif isinstance(spec, KeyframesSpec):
        options = _json_options(spec, size)
        keys = [read_openpose_json(path, **options).fit_to(size, spec.fit) for path in spec.keyframes]
        seq = interpolate_keyframes(keys, spec.frames, at=spec.at, easing=spec.easing, loop=spec.loop)
        seq.metadata["keyframes"] = list(spec.keyframes)
    elif isinstance(spec, VideoSpec):
        seq = detect_video_poses(
            spec.path,
            spec.detector_dir,
            every_nth=spec.every_nth,
            max_frames=spec.max_frames,
            hands=spec.hands,
            face=spec.face,
            detect_resolution=spec.detect_resolution,
            device=spec.device,
        ).fit_to(size, spec.fit)
    else:
        raise PoseSourceError(f"unknown pose spec {type(spec).__name__}: give one of the PoseSpec models")

    if not len(seq):
        raise PoseSourceError(f"{spec.kind}: the input gave no frames")
    return seq


def _json_options(spec: OpenPoseJsonSpec | KeyframesSpec, size: Size) -> dict:
    return {
        "coordinates": spec.coordinates,
        "source_size": spec.source_size,
        # Normalised coordinates without a canvas are fractions of the output frame.
        "default_canvas": size,
        "hands": spec.hands,
        "face": spec.face,
        "min_confidence": spec.min_confidence,
    }
