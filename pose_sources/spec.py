"""What the user gives: one pydantic model per kind of pose input, as a discriminated union.

These models are embedded in the flows' job model and in Prefect's parameter form, so
they hold only plain JSON types (str paths, ints, floats, literals).

Paths are checked when a model is validated, so bad input fails before any GPU work. Code
that validates a spec away from the files (e.g. a client building a job for a remote
worker) can skip those checks: `PoseSpecAdapter.validate_python(data, context={"check_paths": False})`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationInfo, field_validator, model_validator

from .errors import PoseSourceError
from .images import list_pose_images
from .keyframes import keyframe_positions
from .openpose_json import list_openpose_files
from .mediapipe_detector import FACE_REFUSED
from .paths import IMAGE_EXTENSIONS
from .video import FACE_WEIGHTS, HAND_WEIGHTS, check_detector_dir

_FIT_HELP = (
    "How poses are brought to the output size when the aspect ratio differs: 'letterbox' scales "
    "uniformly and centres (black bars), 'stretch' fills the frame and distorts."
)
_COORDS_HELP = (
    "Keypoint coordinates in the JSON: 'pixel', 'normalized' (0-1), or 'auto' (normalised when every "
    "visible coordinate lies within 0-1)."
)
_SRC_W_HELP = "Width of the image the pixel coordinates refer to, for files without canvas_width; else leave empty."
_SRC_H_HELP = "Height of the image the pixel coordinates refer to, for files without canvas_height; else leave empty."
_HANDS_HELP = "Draw hand keypoints (21 per hand) when the input has them."
_FACE_HELP = "Draw face keypoints (70 points) when the input has them."
_CONF_HELP = "Points with a confidence below this are treated as missing (0 keeps every detected point)."
_RETARGET_HELP = (
    "'source': detect the subject's pose in the job's source picture and move the poses onto it (the first "
    "pose lands on the subject: position, size and limb lengths; later poses move from there). 'none': the "
    "poses stay where their author put them."
)


def _check_paths(info: ValidationInfo) -> bool:
    return (info.context or {}).get("check_paths", True)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Retarget(_Spec):
    retarget: Literal["none", "source"] = Field("none", description=_RETARGET_HELP)


class _Detection(_Retarget):
    """Fields of the inputs that run a pose detector (a video, a picture)."""

    detector: Literal["mediapipe", "openpose"] = Field(
        "mediapipe",
        description="'mediapipe': the bundled detector, nothing to download (one person). 'openpose': "
        "controlnet_aux's OpenPose with weights from detector_dir.",
    )
    detector_dir: str | None = Field(
        None,
        description="Only for detector 'openpose': local folder with the weights from lllyasviel/Annotators: "
        "body_pose_model.pth, plus hand_pose_model.pth for hands and facenet.pth for face. Never downloaded.",
    )
    hands: bool = Field(False, description="Detect and draw hands (OpenPose needs hand_pose_model.pth).")
    face: bool = Field(
        False, description="Detect and draw the face: detector 'openpose' only (needs facenet.pth)."
    )
    min_visibility: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Detector 'mediapipe': landmarks less visible than this are missing. OpenPose keeps its own output.",
    )  # fmt: skip
    detect_resolution: int = Field(
        512, ge=64, le=4096,
        description="Detector 'openpose': short side the pictures are resized to for detection, as in controlnet_aux.",
    )  # fmt: skip
    device: str = Field("cpu", description="Detector 'openpose': torch device, e.g. 'cpu' or 'cuda'.")

    @model_validator(mode="before")
    @classmethod
    def _openpose_when_weights_given(cls, data):
        # Specs written before the bundled detector named only detector_dir; they meant OpenPose.
        if isinstance(data, dict) and data.get("detector_dir") and "detector" not in data:
            data = {**data, "detector": "openpose"}
        return data

    @model_validator(mode="after")
    def _detector_fits(self, info: ValidationInfo):
        if self.detector == "mediapipe":
            if self.detector_dir is not None:
                raise ValueError(
                    "detector_dir: only the 'openpose' detector reads weights; remove detector_dir or set detector: openpose"
                )
            if self.face:
                raise ValueError(FACE_REFUSED)
            return self
        if self.detector_dir is None:
            raise ValueError(
                "detector_dir: detector 'openpose' needs a local folder with body_pose_model.pth "
                "(from lllyasviel/Annotators); or set detector: mediapipe, which needs no files"
            )
        if _check_paths(info):
            try:
                check_detector_dir(self.detector_dir, hands=self.hands, face=self.face)
            except PoseSourceError as exc:
                hint = ""
                if self.hands and not (Path(self.detector_dir) / HAND_WEIGHTS).is_file():
                    hint = " (or set hands to false)"
                elif self.face and not (Path(self.detector_dir) / FACE_WEIGHTS).is_file():
                    hint = " (or set face to false)"
                raise ValueError(f"detector_dir: {exc}{hint}") from None
        return self


class _SourceSize(_Retarget):
    @model_validator(mode="after")
    def _both_or_neither(self):
        if (self.source_width is None) != (self.source_height is None):
            raise ValueError("source_width and source_height go together: give both (the source image size) or neither")
        return self

    @property
    def source_size(self) -> tuple[int, int] | None:
        return None if self.source_width is None else (self.source_width, self.source_height)


class OpenPoseJsonSpec(_SourceSize):
    """OpenPose JSON files (OpenPose, DWPose, pose editors), one per frame."""

    model_config = ConfigDict(title="OpenPose JSON files")

    kind: Literal["openpose_json"] = Field("openpose_json", description="Selects OpenPose JSON input.")
    path: str = Field(
        description="A folder of OpenPose JSON files, one per frame, read in natural order "
        "(frame_2 before frame_10), or a single JSON file."
    )
    coordinates: Literal["auto", "pixel", "normalized"] = Field("auto", description=_COORDS_HELP)
    source_width: int | None = Field(None, ge=1, description=_SRC_W_HELP)
    source_height: int | None = Field(None, ge=1, description=_SRC_H_HELP)
    hands: bool = Field(False, description=_HANDS_HELP)
    face: bool = Field(False, description=_FACE_HELP)
    min_confidence: float = Field(0.0, ge=0.0, le=1.0, description=_CONF_HELP)
    fit: Literal["letterbox", "stretch"] = Field("letterbox", description=_FIT_HELP)

    @field_validator("path")
    @classmethod
    def _path_exists(cls, value: str, info: ValidationInfo) -> str:
        if _check_paths(info):
            try:
                list_openpose_files(value)
            except PoseSourceError as exc:
                raise ValueError(f"{exc}; set path to a folder of OpenPose .json files or to one file") from None
        return value


class PoseImagesSpec(_Spec):
    """Already-rendered pose maps."""

    model_config = ConfigDict(title="Pose map images")

    kind: Literal["images"] = Field("images", description="Selects pre-rendered pose map images.")
    source: str | list[str] = Field(
        description="A folder of pose map images (natural order), a glob pattern such as 'poses/*.png' "
        "(natural order), or a list of image files (in the order given)."
    )
    fit: Literal["letterbox", "stretch"] = Field("letterbox", description=_FIT_HELP)
    retarget: Literal["none", "source"] = Field(
        "none", description="Pose images have no keypoints to move: only 'none'."
    )

    @field_validator("retarget")
    @classmethod
    def _no_keypoints(cls, value: str) -> str:
        if value != "none":
            raise ValueError(
                "pose images have no keypoints to retarget onto the source: set retarget: none, or give "
                "keypoints (kind openpose_json, keyframes, video or image)"
            )
        return value

    @field_validator("source")
    @classmethod
    def _images_exist(cls, value: str | list[str], info: ValidationInfo) -> str | list[str]:
        if _check_paths(info):
            try:
                list_pose_images(value)
            except PoseSourceError as exc:
                raise ValueError(f"{exc}; set source to a folder, a glob pattern or a list of image files") from None
        return value


class VideoSpec(_Detection):
    """A driving video, run through a pose detector (the bundled one unless detector: openpose)."""

    model_config = ConfigDict(title="Driving video")

    kind: Literal["video"] = Field("video", description="Selects pose detection on a driving video.")
    path: str = Field(description="The video file (anything ffmpeg decodes: mp4, mov, webm, gif...).")
    every_nth: int = Field(1, ge=1, description="Use every n-th video frame (1 = every frame).")
    max_frames: int | None = Field(None, ge=1, description="Stop after this many poses (empty = whole video).")
    fit: Literal["letterbox", "stretch"] = Field("letterbox", description=_FIT_HELP)

    @field_validator("path")
    @classmethod
    def _video_exists(cls, value: str, info: ValidationInfo) -> str:
        if _check_paths(info) and not Path(value).is_file():
            raise ValueError(f"{value}: video file not found; set path to an existing video file")
        return value


class ImageSpec(_Detection):
    """One picture of a person (e.g. a reference photo): its pose, as a single frame."""

    model_config = ConfigDict(title="Pose of one picture")

    kind: Literal["image"] = Field("image", description="Selects pose detection on one picture.")
    path: str = Field(description="The picture (png, jpg, webp, ...) whose person's pose is wanted.")
    fit: Literal["letterbox", "stretch"] = Field("letterbox", description=_FIT_HELP)

    @field_validator("path")
    @classmethod
    def _image_exists(cls, value: str, info: ValidationInfo) -> str:
        if _check_paths(info):
            if not Path(value).is_file():
                raise ValueError(f"{value}: picture not found; set path to an existing image file")
            if Path(value).suffix.lower() not in IMAGE_EXTENSIONS:
                raise ValueError(
                    f"{value}: not a picture file ({', '.join(sorted(IMAGE_EXTENSIONS))}); for a video use kind: video"
                )
        return value


class KeyframesSpec(_SourceSize):
    """A few key poses, interpolated to a number of frames."""

    model_config = ConfigDict(title="Keyframes")

    kind: Literal["keyframes"] = Field("keyframes", description="Selects interpolation between key poses.")
    keyframes: list[str] = Field(min_length=1, description="OpenPose JSON files of the key poses, in order.")
    frames: int = Field(
        description="Number of frames to produce (at least the number of keyframes, unless 'at' is given)."
    )
    at: list[int] | None = Field(
        None,
        description="Frame index of each keyframe, strictly increasing within 0..frames-1; "
        "empty = spread evenly (first on frame 0, last on the last frame, or one step before it with loop).",
    )
    easing: Literal["linear", "ease_in_out"] = Field(
        "linear", description="Timing between keyframes: 'linear', or 'ease_in_out' (slow at each keyframe)."
    )
    loop: bool = Field(
        False, description="Interpolate from the last keyframe back to the first (cycles such as a walk)."
    )
    coordinates: Literal["auto", "pixel", "normalized"] = Field("auto", description=_COORDS_HELP)
    source_width: int | None = Field(None, ge=1, description=_SRC_W_HELP)
    source_height: int | None = Field(None, ge=1, description=_SRC_H_HELP)
    hands: bool = Field(False, description=_HANDS_HELP)
    face: bool = Field(False, description=_FACE_HELP)
    min_confidence: float = Field(0.0, ge=0.0, le=1.0, description=_CONF_HELP)
    fit: Literal["letterbox", "stretch"] = Field("letterbox", description=_FIT_HELP)

    @field_validator("frames")
    @classmethod
    def _some_frames(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"frames must be at least 1, got {value}: set frames to the number of frames to produce")
        return value

    @field_validator("keyframes")
    @classmethod
    def _files_exist(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if _check_paths(info):
            for path in value:
                if not Path(path).is_file():
                    raise ValueError(f"{path}: keyframe JSON file not found; list existing OpenPose JSON files")
        return value

    @model_validator(mode="after")
    def _placement(self):
        try:
            keyframe_positions(len(self.keyframes), self.frames, self.at, self.loop)
        except PoseSourceError as exc:
            raise ValueError(f"keyframes/frames/at: {exc}") from None
        return self


PoseSpec = Annotated[
    OpenPoseJsonSpec | PoseImagesSpec | VideoSpec | ImageSpec | KeyframesSpec,
    # The title labels the choice in Prefect's form (V2 otherwise calls it "Field").
    Field(discriminator="kind", title="Pose source"),
]
PoseSpecAdapter: TypeAdapter[PoseSpec] = TypeAdapter(PoseSpec)
