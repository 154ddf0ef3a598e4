"""Writes the demo pose sequences in examples/poses/ from a few hand-placed keyframes.

    python examples/make_poses.py            # rewrites examples/poses/walk and examples/poses/wave
    python examples/make_poses.py --preview  # also writes a contact sheet PNG per sequence

Poses are on a 512x512 canvas, COCO-18 order, pixel coordinates; a point with confidence 0
is hidden (the far eye and ear in the side-view walk).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, str(ROOT))

from pose_sources import Pose, PoseSequence, interpolate_keyframes  # noqa: E402
from pose_sources.pose import COCO18_NAMES, single_person  # noqa: E402

CANVAS = (512, 512)
FRAMES = 8
OUT = ROOT / "examples" / "poses"

# A person facing the camera, about 370 px from eyes to ankles, centred on the canvas.
FRONT = {
    "nose": (256, 96), "neck": (256, 140),
    "r_shoulder": (214, 142), "r_elbow": (200, 212), "r_wrist": (194, 278),
    "l_shoulder": (298, 142), "l_elbow": (312, 212), "l_wrist": (318, 278),
    "r_hip": (232, 280), "r_knee": (228, 370), "r_ankle": (226, 456),
    "l_hip": (280, 280), "l_knee": (284, 370), "l_ankle": (286, 456),
    "r_eye": (246, 86), "l_eye": (266, 86), "r_ear": (234, 92), "l_ear": (278, 92),
}  # fmt: skip

# The same person seen from the side, walking towards the right edge (in place).
SIDE = {
    "nose": (286, 96), "neck": (258, 140),
    "r_shoulder": (252, 144), "l_shoulder": (262, 144),
    "r_hip": (250, 280), "l_hip": (260, 280),
    "l_eye": (276, 86), "l_ear": (254, 92),
}  # fmt: skip

# Legs and arms of the four walk keyframes: contact (right foot ahead), passing,
# contact (left foot ahead), passing. Arms swing against the legs.
WALK_LIMBS = [
    {"r_knee": (284, 362), "r_ankle": (300, 452), "l_knee": (236, 366), "l_ankle": (206, 446),
     "l_elbow": (282, 208), "l_wrist": (300, 270), "r_elbow": (234, 210), "r_wrist": (222, 274)},
    {"r_knee": (262, 370), "r_ankle": (254, 458), "l_knee": (276, 356), "l_ankle": (246, 430),
     "l_elbow": (262, 212), "l_wrist": (266, 278), "r_elbow": (252, 212), "r_wrist": (250, 278)},
    {"l_knee": (288, 362), "l_ankle": (304, 452), "r_knee": (232, 366), "r_ankle": (202, 446),
     "r_elbow": (280, 208), "r_wrist": (298, 270), "l_elbow": (238, 210), "l_wrist": (226, 274)},
    {"l_knee": (266, 370), "l_ankle": (258, 458), "r_knee": (272, 356), "r_ankle": (242, 430),
     "r_elbow": (262, 212), "r_wrist": (266, 278), "l_elbow": (252, 212), "l_wrist": (250, 278)},
]  # fmt: skip

# Wave: right forearm up, the wrist swinging between two positions around a raised elbow.
WAVE_ARM = [
    {"r_elbow": (150, 120), "r_wrist": (125, 50)},
    {"r_elbow": (150, 120), "r_wrist": (180, 52)},
]


def pose_from_points(points: dict[str, tuple[float, float]]) -> Pose:
    """COCO-18 pose from named points; names not given are missing (confidence 0)."""
    unknown = set(points) - set(COCO18_NAMES)
    if unknown:
        raise ValueError(f"unknown keypoint names {sorted(unknown)}")
    body = [(*points[name], 1.0) if name in points else (0.0, 0.0, 0.0) for name in COCO18_NAMES]
    return single_person(body, CANVAS)


def build_walk() -> PoseSequence:
    keys = [pose_from_points({**SIDE, **limbs}) for limbs in WALK_LIMBS]
    return interpolate_keyframes(keys, FRAMES, easing="linear", loop=True)


def build_wave() -> PoseSequence:
    keys = [pose_from_points({**FRONT, **arm}) for arm in WAVE_ARM]
    return interpolate_keyframes(keys, FRAMES, easing="ease_in_out", loop=True)


SEQUENCES = {"walk": build_walk, "wave": build_wave}


def write(out: Path = OUT, preview: bool = False) -> dict[str, list[Path]]:
    written = {}
    for name, build in SEQUENCES.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("frame_*.json"):  # a shorter rerun must not leave stale frames behind
            old.unlink()
        seq = build()
        written[name] = seq.to_json(folder)
        if preview:
            from PIL import Image

            maps = seq.render((256, 256))
            sheet = Image.new("RGB", (256 * len(maps), 256))
            for i, m in enumerate(maps):
                sheet.paste(m, (256 * i, 0))
            sheet.save(out / f"{name}_preview.png")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder to write <sequence>/frame_NNN.json into")
    parser.add_argument("--preview", action="store_true", help="also write a contact sheet PNG per sequence")
    args = parser.parse_args(argv)
    for name, paths in write(args.out, args.preview).items():
        print(f"{name}: {len(paths)} frames in {paths[0].parent}")


if __name__ == "__main__":
    main()
