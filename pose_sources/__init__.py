"""Everything that turns what a user has into OpenPose pose maps for ControlNet.

    import pose_sources

    spec = {"kind": "openpose_json", "path": "examples/poses/walk"}  # or a PoseSpec model
    seq = pose_sources.load(spec, size=(512, 512))
    maps = seq.render((512, 512))  # list of PIL RGB images, one per frame

No Prefect and no engine imports here; controlnet_aux is imported only when drawing or
detecting with OpenPose, mediapipe only when its detector is made. See README.md beside this file.
"""

from .detectors import DETECTOR_KINDS, PoseDetector, get_detector
from .errors import PoseSourceError
from .images import PoseMaps, fit_image, list_pose_images
from .keyframes import interpolate_keyframes, interpolate_pose
from .load import load, source_subject
from .mediapipe_detector import MediaPipeDetector, blazepose_to_coco18
from .openpose_detector import OpenPoseDetector
from .openpose_json import parse_openpose, read_openpose_folder, read_openpose_json
from .overlay import overlay
from .pose import COCO18_NAMES, Person, Pose, PoseSequence
from .retarget import Overflow, PoseOutsideCanvasError, measure_overflow, retarget, retarget_to_subject
from .spec import ImageSpec, KeyframesSpec, OpenPoseJsonSpec, PoseImagesSpec, PoseSpec, PoseSpecAdapter, VideoSpec
from .video import detect_image_pose, detect_video_poses, load_openpose_detector

__all__ = [
    "COCO18_NAMES",
    "DETECTOR_KINDS",
    "ImageSpec",
    "KeyframesSpec",
    "MediaPipeDetector",
    "OpenPoseDetector",
    "OpenPoseJsonSpec",
    "Overflow",
    "Person",
    "Pose",
    "PoseDetector",
    "PoseImagesSpec",
    "PoseMaps",
    "PoseOutsideCanvasError",
    "PoseSequence",
    "PoseSourceError",
    "PoseSpec",
    "PoseSpecAdapter",
    "VideoSpec",
    "blazepose_to_coco18",
    "detect_image_pose",
    "detect_video_poses",
    "fit_image",
    "get_detector",
    "interpolate_keyframes",
    "interpolate_pose",
    "list_pose_images",
    "load",
    "load_openpose_detector",
    "measure_overflow",
    "overlay",
    "parse_openpose",
    "read_openpose_folder",
    "read_openpose_json",
    "retarget",
    "retarget_to_subject",
    "source_subject",
]
