"""The deployment's run form: what Prefect's two UIs draw from the job's JSON schema.

Both UIs take titles and descriptions from the schema: V2 titles a nested section with its model's
title (else the class name), V1 renders descriptions as markdown and swallows ``<...>`` as HTML, and
V1 draws a discriminated union as a raw JSON box, so each pose kind also has its own optional field
(``frames.pose_video`` ...) that ends up in ``frames.poses``. The browser side is in
tests/test_ui_browser.py.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image
from pydantic import ValidationError

from flows.job.model import POSE_FIELDS, AnimationJob, FramesSpec, describe_validation_error
from pose_sources import PoseSpecAdapter


def _descriptions(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                yield path, value
            else:
                yield from _descriptions(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _descriptions(value, f"{path}[{i}]")


def test_every_section_has_a_human_title():
    defs = AnimationJob.model_json_schema()["$defs"]
    assert {"OpenPoseJsonSpec", "PoseImagesSpec", "VideoSpec", "ImageSpec", "KeyframesSpec"} <= set(defs)
    untitled = {name: d.get("title") for name, d in defs.items() if d.get("title") in (None, name)}
    assert not untitled, f"sections the UI would title with a class name: {untitled}"
    # the pose kinds as V2 shows them on its tabs
    assert [defs[ref.rsplit("/", 1)[-1]]["title"] for ref in
            (m["$ref"] for m in PoseSpecAdapter.json_schema(ref_template="{model}")["oneOf"])] == [
        "OpenPose JSON files", "Pose map images", "Driving video", "Pose of one picture", "Keyframes"]
    # the choice between the kinds and None (V2 would label it "Field", V1 not at all)
    poses = AnimationJob.model_json_schema()["$defs"]["FramesSpec"]["properties"]["poses"]
    assert [member.get("title") for member in poses["anyOf"]] == ["Pose source", None]


def test_descriptions_hold_no_angle_brackets():
    # V1 renders descriptions as markdown with HTML allowed: "<folder>/<job hash>/" shows as "/ /".
    found = [(p, d) for p, d in _descriptions(AnimationJob.model_json_schema()) if "<" in d]
    assert not found, found


def test_each_pose_kind_is_an_optional_form_section():
    schema = AnimationJob.model_json_schema()
    frames = schema["$defs"]["FramesSpec"]["properties"]
    models = {"pose_json": "OpenPoseJsonSpec", "pose_images": "PoseImagesSpec", "pose_video": "VideoSpec",
              "pose_image": "ImageSpec", "pose_keyframes": "KeyframesSpec"}
    assert set(POSE_FIELDS) == set(models)
    for field, model in models.items():
        # anyOf [model, null]: V1 draws a toggle between the model's form and None, not a JSON box
        assert frames[field]["anyOf"] == [{"$ref": f"#/$defs/{model}"}, {"type": "null"}], field
        assert frames[field]["default"] is None
        assert frames[field]["title"].startswith("Pose source: ")
        kind = schema["$defs"][model]["properties"]["kind"]
        assert kind.get("const", kind.get("default")) == POSE_FIELDS[field]


@pytest.fixture
def pose_files(tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "person.png")
    folder = tmp_path / "maps"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), (i, 0, 0)).save(folder / f"pose_{i}.png")
    return tmp_path


@pytest.mark.parametrize("field, spec", [
    ("pose_image", {"path": "person.png"}),
    ("pose_images", {"source": "maps"}),
])
def test_a_pose_field_becomes_frames_poses(pose_files, field, spec):
    spec = {k: str(pose_files / v) for k, v in spec.items()}
    frames = FramesSpec.model_validate({"prompts": ["a cat"], field: spec})
    assert frames.poses is not None and frames.poses.kind == POSE_FIELDS[field]
    assert all(getattr(frames, name) is None for name in POSE_FIELDS)
    # same as writing frames.poses with its kind, as job files do
    assert frames == FramesSpec.model_validate({"prompts": ["a cat"], "poses": {"kind": POSE_FIELDS[field], **spec}})
    # a dump (what submit sends, what the form sends back) validates to the same, with or without defaults
    for dump in (frames.model_dump(mode="json"), frames.model_dump(mode="json", exclude_unset=True)):
        again = FramesSpec.model_validate(json.loads(json.dumps(dump)))
        assert again == frames and again.poses.kind == POSE_FIELDS[field]


def test_the_form_fields_and_null_poses_as_the_ui_sends_them(pose_files):
    # the UI sends every field, unused ones as null
    data = {"prompts": [], "poses": None, **dict.fromkeys(POSE_FIELDS),
            "pose_image": {"kind": "image", "path": str(pose_files / "person.png"), "retarget": "none"},
            "overrides": []}
    assert FramesSpec.model_validate(data).poses.kind == "image"


def test_one_pose_source_only(pose_files):
    image = {"path": str(pose_files / "person.png")}
    for data, named in [
        ({"pose_image": image, "poses": {"kind": "image", **image}}, "frames.poses / frames.pose_image"),
        ({"pose_image": image, "pose_images": {"source": str(pose_files / "maps")}}, "frames.pose_images"),
    ]:
        with pytest.raises(ValidationError) as info:
            FramesSpec.model_validate(data)
        (line,) = describe_validation_error(info.value)
        assert named in line and "2 pose sources" in line


def test_errors_name_the_form_field(pose_files):
    with pytest.raises(ValidationError) as info:
        AnimationJob.model_validate({"source": {"prompt": "a cat"}, "model": {"model": "tiny"},
                                     "frames": {"pose_video": {"path": str(pose_files / "missing.mp4")}}})
    assert describe_validation_error(info.value) == [
        f"frames.pose_video.path: {pose_files / 'missing.mp4'}: video file not found; set path to an existing "
        "video file"]
    with pytest.raises(ValidationError) as info:
        FramesSpec.model_validate({"pose_image": {"kind": "video", "path": str(pose_files / "person.png")}})
    assert any(line.startswith("pose_image.kind:") for line in describe_validation_error(info.value))
