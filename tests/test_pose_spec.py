"""The PoseSpec models and the `load` entry point."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest_pose import BODY_64x48, pose
from PIL import Image
from pydantic import ValidationError

import pose_sources
from pose_sources import (
    KeyframesSpec,
    OpenPoseJsonSpec,
    PoseImagesSpec,
    PoseMaps,
    PoseSequence,
    PoseSpecAdapter,
    VideoSpec,
    load,
)


@pytest.fixture
def json_folder(tmp_path):
    folder = tmp_path / "poses"
    PoseSequence([pose(shift=(i, 0)) for i in range(3)]).to_json(folder)
    return folder


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "maps"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 16), (60 * i, 0, 0)).save(folder / f"m_{i}.png")
    return folder


def test_openpose_json_spec_loads_onto_the_output_size(json_folder):
    seq = load(OpenPoseJsonSpec(path=str(json_folder)), size=(128, 128))
    assert isinstance(seq, PoseSequence) and len(seq) == 3 and seq.canvas == (128, 128)
    # letterbox: 64x48 -> scale 2, 16 px bars above and below
    np.testing.assert_allclose(seq[0].people[0].body[0, :2], BODY_64x48[0, :2] * 2 + [0, 16])
    maps = seq.render((128, 128))
    assert len(maps) == 3 and all(m.size == (128, 128) for m in maps)
    stretched = load(OpenPoseJsonSpec(path=str(json_folder), fit="stretch"), size=(128, 128))
    np.testing.assert_allclose(stretched[0].people[0].body[0, :2], BODY_64x48[0, :2] * [2, 128 / 48])


def test_images_spec_gives_pose_maps(image_folder):
    maps = load({"kind": "images", "source": str(image_folder), "fit": "stretch"}, size=(20, 10))
    assert isinstance(maps, PoseMaps) and len(maps) == 4
    frames = maps.render((20, 10))
    assert [f.size for f in frames] == [(20, 10)] * 4
    assert [int(np.asarray(f)[5, 10, 0]) for f in frames] == [0, 60, 120, 180]


def test_keyframes_spec_interpolates(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    pose().to_json(a)
    pose(shift=(8, 0)).to_json(b)
    spec = KeyframesSpec(keyframes=[str(a), str(b)], frames=5, fit="stretch")
    seq = load(spec, size=(64, 48))
    assert len(seq) == 5 and seq[0] == pose() and seq[4] == pose(shift=(8, 0))
    np.testing.assert_allclose(seq[2].people[0].body[:, 0], BODY_64x48[:, 0] + 4)
    assert len(seq.render((64, 48))) == 5


def test_union_picks_the_member_by_kind(json_folder, image_folder, tmp_path):
    a = tmp_path / "k.json"
    pose().to_json(a)
    assert isinstance(
        PoseSpecAdapter.validate_python({"kind": "openpose_json", "path": str(json_folder)}), OpenPoseJsonSpec
    )
    assert isinstance(
        PoseSpecAdapter.validate_python({"kind": "images", "source": [str(image_folder / "m_0.png")]}), PoseImagesSpec
    )
    assert isinstance(
        PoseSpecAdapter.validate_json(json.dumps({"kind": "keyframes", "keyframes": [str(a)], "frames": 2})),
        KeyframesSpec,
    )
    with pytest.raises(ValidationError, match=r"does not match any of the expected tags"):
        PoseSpecAdapter.validate_python({"kind": "mocap", "path": "x"})


def _error(exc: ValidationError) -> tuple[tuple, str]:
    (err,) = exc.errors()  # exactly one error
    return err["loc"], err["msg"]


@pytest.mark.parametrize(
    ("data", "loc_part", "message"),
    [
        (
            {"kind": "openpose_json", "path": "{tmp}/nowhere"},
            "path",
            r"nowhere: no such OpenPose JSON file or folder; set path to",
        ),
        ({"kind": "openpose_json", "path": "{tmp}/empty"}, "path", r"empty: folder holds no \.json files"),
        ({"kind": "images", "source": "{tmp}/empty"}, "source", r"folder holds no pose images .*; set source to"),
        ({"kind": "images", "source": "{tmp}/*.webp"}, "source", r"pattern matches no image files"),
        ({"kind": "images", "source": "{tmp}/m.png", "fit": "crop"}, "fit", r"'letterbox' or 'stretch'"),
        (
            {"kind": "keyframes", "keyframes": ["{tmp}/k.json"], "frames": 0},
            "frames",
            r"frames must be at least 1, got 0: set frames",
        ),
        (
            {"kind": "keyframes", "keyframes": ["{tmp}/gone.json"], "frames": 3},
            "keyframes",
            r"gone\.json: keyframe JSON file not found",
        ),
        (
            {"kind": "keyframes", "keyframes": ["{tmp}/k.json", "{tmp}/k.json"], "frames": 1},
            "",
            r"2 keyframes do not fit in 1 frames",
        ),
        (
            {"kind": "keyframes", "keyframes": ["{tmp}/k.json"], "frames": 3, "easing": "bounce"},
            "easing",
            r"'linear' or 'ease_in_out'",
        ),
        (
            {"kind": "video", "path": "{tmp}/gone.mp4", "detector_dir": "{tmp}"},
            "path",
            r"gone\.mp4: video file not found",
        ),
        (
            {"kind": "video", "path": "{tmp}/k.json", "detector_dir": "{tmp}", "every_nth": 0},
            "every_nth",
            r"greater than or equal to 1",
        ),
        (
            {"kind": "openpose_json", "path": "{tmp}/k.json", "source_width": 640},
            "",
            r"source_width and source_height go together",
        ),
        ({"kind": "openpose_json", "path": "{tmp}/k.json", "widht": 3}, "widht", r"Extra inputs are not permitted"),
    ],
)
def test_bad_specs_get_one_clear_error(tmp_path, data, loc_part, message):
    (tmp_path / "empty").mkdir()
    pose().to_json(tmp_path / "k.json")
    Image.new("RGB", (4, 4)).save(tmp_path / "m.png")
    data = json.loads(json.dumps(data).replace("{tmp}", str(tmp_path)))
    with pytest.raises(ValidationError) as info:
        PoseSpecAdapter.validate_python(data)
    loc, msg = _error(info.value)
    assert loc_part in loc or (not loc_part and len(loc) == 1)
    assert re.search(message, msg), msg


def test_path_checks_can_be_deferred(tmp_path):
    data = {"kind": "video", "path": "/worker/only/drive.mp4", "detector_dir": "/worker/only/annotators"}
    with pytest.raises(ValidationError):
        PoseSpecAdapter.validate_python(data)
    spec = PoseSpecAdapter.validate_python(data, context={"check_paths": False})
    assert isinstance(spec, VideoSpec) and spec.path == "/worker/only/drive.mp4"


def test_json_schema_is_form_friendly():
    schema = PoseSpecAdapter.json_schema()
    json.dumps(schema)  # serialisable
    assert schema["discriminator"]["propertyName"] == "kind"
    members = schema["$defs"]
    assert set(members) >= {"OpenPoseJsonSpec", "PoseImagesSpec", "VideoSpec", "KeyframesSpec"}
    for name in ("OpenPoseJsonSpec", "PoseImagesSpec", "VideoSpec", "KeyframesSpec"):
        for field, prop in members[name]["properties"].items():
            assert prop.get("description"), f"{name}.{field} has no description"


def test_load_rejects_a_bad_output_size(json_folder):
    with pytest.raises(pose_sources.PoseSourceError, match=r"output size must be positive"):
        load(OpenPoseJsonSpec(path=str(json_folder)), size=(0, 64))


def test_package_imports_no_prefect_engine_or_controlnet_aux():
    code = (
        "import sys, pose_sources; "
        "bad = [m for m in ('prefect', 'flows', 'masactrl_engine', 'controlnet_aux', 'torch') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
