"""The one entry point the flows call: a PoseSpec and an output size in, frames out."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from PIL import Image

from .errors import PoseSourceError
from .images import PoseMaps, open_rgb
from .keyframes import interpolate_keyframes
from .openpose_json import read_openpose_folder, read_openpose_json
from .pose import Pose, PoseSequence, Size, _as_size
from .retarget import retarget_to_subject
from .spec import ImageSpec, KeyframesSpec, OpenPoseJsonSpec, PoseImagesSpec, PoseSpec, PoseSpecAdapter, VideoSpec
from .video import detect_image_pose, detect_video_poses

RETARGET_OFF = "turn it off with `frames.poses.retarget: none`"


def load(
    spec: PoseSpec | Mapping, size: Size, source_image: str | Path | Image.Image | None = None
) -> PoseSequence | PoseMaps:
    """Frames of poses for an output of `size` = (width, height).

    Keypoint inputs give a PoseSequence already on a canvas of `size` (brought there with
    the spec's `fit`); pose images give PoseMaps. Both answer `len()` and `render(size)`,
    which returns one PIL RGB image per frame.

    `source_image` is the job's source picture, needed when the spec says `retarget: source`:
    a PIL image is taken as already fitted to the frame (the flows' crop or stretch; any
    resolution of that aspect ratio, the full-resolution crop detects best), a path is opened
    and centre-cropped to the aspect ratio of `size`. Its subject's pose is detected and the
    poses are moved onto it (`retarget_to_subject`).
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
            detector=spec.detector,
            every_nth=spec.every_nth,
            max_frames=spec.max_frames,
            **_detector_options(spec),
        ).fit_to(size, spec.fit)
    elif isinstance(spec, ImageSpec):
        pose = detect_image_pose(open_rgb(spec.path), spec.detector_dir, detector=spec.detector, **_detector_options(spec))
        if not pose.people:
            raise PoseSourceError(
                f"{spec.path}: no person found in the pose picture (detector {spec.detector}); give a picture "
                "where a person's body is visible"
            )
        seq = PoseSequence([pose.fit_to(size, spec.fit)], size, {"image": spec.path, "detector": spec.detector})
    else:
        raise PoseSourceError(f"unknown pose spec {type(spec).__name__}: give one of the PoseSpec models")

    if not len(seq):
        raise PoseSourceError(f"{spec.kind}: the input gave no frames")
    if spec.retarget == "source":
        seq = _onto_source(seq, spec, size, source_image)
    return seq


def _detector_options(spec: VideoSpec | ImageSpec) -> dict:
    return {
        "hands": spec.hands,
        "face": spec.face,
        "min_visibility": spec.min_visibility,
        "detect_resolution": spec.detect_resolution,
        "device": spec.device,
    }


def centre_crop(image: Image.Image, size: Size) -> Image.Image:
    """The centre of `image` with the aspect ratio of `size` (how the flows fit a source by default)."""
    w, h = image.size
    target = size[0] / size[1]
    if abs(w / h - target) < 1e-6:
        return image
    if w / h > target:
        new_w = max(1, round(h * target))
        left = (w - new_w) // 2
        return image.crop((left, 0, left + new_w, h))
    new_h = max(1, round(w / target))
    top = (h - new_h) // 2
    return image.crop((0, top, w, top + new_h))


def source_subject(
    source_image: str | Path | Image.Image, size: Size, spec: PoseSpec | None = None
) -> Pose:
    """The subject's pose in the source picture, on a canvas of `size` (see `load`)."""
    if isinstance(source_image, Image.Image):
        picture = source_image.convert("RGB")
    else:
        picture = centre_crop(open_rgb(source_image), size)
    if isinstance(spec, (VideoSpec, ImageSpec)):  # the spec's own detector settings
        pose = detect_image_pose(picture, spec.detector_dir, detector=spec.detector, **_detector_options(spec))
    else:
        pose = detect_image_pose(picture, detector="mediapipe")
    if not pose.people:
        raise PoseSourceError(
            "retarget: no person found in the source image, so there is nobody to move the poses onto; "
            f"use a source where the subject's body is visible, or {RETARGET_OFF}"
        )
    # Same aspect ratio for a cropped source: a uniform scale; a stretched source stretches alike.
    return pose.fit_to(size, "stretch")


def _onto_source(seq, spec: PoseSpec, size: Size, source_image) -> PoseSequence:
    if source_image is None:
        raise PoseSourceError(f"retarget: 'source' needs the job's source image, and none was given; {RETARGET_OFF}")
    subject = source_subject(source_image, size, spec)
    if not seq[0].people:
        raise PoseSourceError(
            f"retarget: the first pose frame has no person to move onto the source's subject; {RETARGET_OFF}"
        )
    result = retarget_to_subject(seq, subject)
    result.metadata["retarget"]["source_pose"] = subject.to_dict()
    return result


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
