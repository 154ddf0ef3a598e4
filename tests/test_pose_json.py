"""OpenPose JSON: layouts, coordinates, canvas, round trip, ordering and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest_pose import CANVAS, BODY_64x48, face, hand, openpose_doc, pose, write_json

from pose_sources import (
    Person,
    Pose,
    PoseSequence,
    PoseSourceError,
    parse_openpose,
    read_openpose_folder,
    read_openpose_json,
)
from pose_sources.paths import natural_key, sorted_naturally


def flat(points) -> list[float]:
    return [float(v) for v in np.asarray(points).reshape(-1)]


def test_json_round_trip_is_exact(tmp_path):
    odd = BODY_64x48.copy()
    odd[:, :2] += np.array([0.1, 1 / 3])  # values with no short decimal form
    two = Pose(
        (
            Person(odd, left_hand=hand(44, 28), right_hand=None, face=face(32, 8)),
            Person(pose(missing=(3, 4, 7)).people[0].body),
        ),
        CANVAS,
    )
    path = tmp_path / "p.json"
    text = two.to_json(path)
    assert json.loads(text) == json.loads(path.read_text())
    back = read_openpose_json(path)
    assert back == two
    assert back.people[0].right_hand is None and back.people[1].face is None
    # and a changed value is noticed
    assert back != Pose((two.people[1], two.people[0]), CANVAS)


def test_sequence_round_trip_through_a_folder(tmp_path):
    seq = PoseSequence([pose(shift=(i, -i)) for i in range(12)])
    paths = seq.to_json(tmp_path / "frames")
    assert [p.name for p in paths[:3]] == ["frame_000.json", "frame_001.json", "frame_002.json"]
    assert read_openpose_folder(tmp_path / "frames") == seq


def test_written_json_is_the_openpose_format(tmp_path):
    doc = json.loads(pose(missing=(4,)).to_json())
    assert doc["canvas_width"] == 64 and doc["canvas_height"] == 48
    person = doc["people"][0]
    assert len(person["pose_keypoints_2d"]) == 54
    assert person["pose_keypoints_2d"][12:15] == [0.0, 0.0, 0.0]  # missing point
    assert person["hand_left_keypoints_2d"] == [] and person["face_keypoints_2d"] == []


def test_natural_order_of_files(tmp_path):
    for i in (10, 2, 1, 33, 3):
        write_json(tmp_path / f"frame_{i}.json", json.loads(pose(shift=(i, 0)).to_json()))
    (tmp_path / "notes.txt").write_text("not a pose")
    seq = read_openpose_folder(tmp_path)
    assert [p.split("/")[-1] for p in seq.metadata["files"]] == [
        "frame_1.json", "frame_2.json", "frame_3.json", "frame_10.json", "frame_33.json",
    ]  # fmt: skip
    assert [p.people[0].body[0, 0] - 32 for p in seq] == [1, 2, 3, 10, 33]


def test_natural_key_orders_numbers_by_value():
    names = ["frame_10.json", "frame_2.json", "frame_1.json", "frame_02b.json", "a.json"]
    assert [p.name for p in sorted_naturally(names)] == [
        "a.json", "frame_1.json", "frame_2.json", "frame_02b.json", "frame_10.json",
    ]  # fmt: skip
    assert natural_key("x_9") < natural_key("x_10")


def test_canvas_from_file_from_option_or_error(tmp_path):
    body = flat(BODY_64x48)
    dwpose = parse_openpose(openpose_doc(body, canvas_width=64, canvas_height=48))
    assert dwpose.canvas == (64, 48)
    given = parse_openpose(openpose_doc(body), source_size=(64, 48))
    assert given == dwpose
    path = write_json(tmp_path / "nocanvas.json", openpose_doc(body))
    with pytest.raises(PoseSourceError, match=r"nocanvas\.json: pixel coordinates but no canvas_width.*source_width"):
        read_openpose_json(path)


def test_normalised_coordinates_need_no_canvas_and_can_be_forced():
    norm = BODY_64x48.copy()
    norm[:, 0] /= 64
    norm[:, 1] /= 48
    p = parse_openpose(openpose_doc(flat(norm)), default_canvas=(128, 96))
    assert p.canvas == (128, 96)
    np.testing.assert_allclose(p.people[0].body[:, :2], BODY_64x48[:, :2] * 2)
    # the same numbers read as pixels when told so
    px = parse_openpose(openpose_doc(flat(norm)), coordinates="pixel", source_size=(64, 48))
    np.testing.assert_allclose(px.people[0].body[:, :2], norm[:, :2])
    # normalised with a canvas in the file: scaled by it
    withc = parse_openpose(openpose_doc(flat(norm), canvas_width=64, canvas_height=48))
    np.testing.assert_allclose(withc.people[0].body, BODY_64x48)


def test_missing_points_are_stored_empty_and_not_drawn():
    body = BODY_64x48.copy()
    body[7] = (10.0, 40.0, 0.0)  # left wrist with a position but confidence 0
    p = parse_openpose(openpose_doc(flat(body)), source_size=CANVAS)
    assert p.people[0].body[7].tolist() == [0.0, 0.0, 0.0]
    img = np.asarray(p.render())
    assert not img[36:45, 6:15].any()  # nothing near where the wrist would be
    assert img.any()


def test_min_confidence_drops_weak_points():
    p = parse_openpose(openpose_doc(flat(BODY_64x48)), source_size=CANVAS, min_confidence=0.75)
    weak = BODY_64x48[:, 2] < 0.75
    assert (p.people[0].body[weak] == 0).all() and (p.people[0].body[~weak, 2] > 0).all()


def test_hands_and_face_read_when_asked(tmp_path):
    doc = openpose_doc(flat(BODY_64x48), canvas_width=64, canvas_height=48)
    doc["people"][0]["hand_left_keypoints_2d"] = flat(hand(44, 28))
    doc["people"][0]["face_keypoints_2d"] = flat(face(32, 8)[:68])  # DWPose: 68 points, no pupils
    p = parse_openpose(doc)
    assert p.people[0].left_hand.shape == (21, 3) and p.people[0].right_hand is None
    assert p.people[0].face.shape == (70, 3) and (p.people[0].face[68:] == 0).all()
    skipped = parse_openpose(doc, hands=False, face=False)
    assert skipped.people[0].left_hand is None and skipped.people[0].face is None


def test_several_people_and_empty_frames():
    doc = {"people": [{"pose_keypoints_2d": flat(BODY_64x48)}, {"pose_keypoints_2d": flat(BODY_64x48 * [0.5, 1, 1])}]}
    p = parse_openpose(doc, source_size=CANVAS)
    assert len(p.people) == 2
    empty = parse_openpose({"people": []}, default_canvas=CANVAS)
    assert empty.people == () and not np.asarray(empty.render()).any()


def test_malformed_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"people": [ {"pose_keypoints_2d": [1, 2,')
    with pytest.raises(PoseSourceError, match=r"broken\.json: malformed JSON .*line 1"):
        read_openpose_json(path)


def test_keypoint_array_of_unknown_length(tmp_path):
    path = write_json(tmp_path / "odd.json", openpose_doc([1.0] * 57, canvas_width=64, canvas_height=48))
    with pytest.raises(
        PoseSourceError, match=r"odd\.json: people\[0\]\.pose_keypoints_2d has 57 numbers, which fits no layout.*54.*75"
    ):
        read_openpose_json(path)


def test_hand_array_of_unknown_length(tmp_path):
    doc = openpose_doc(flat(BODY_64x48), canvas_width=64, canvas_height=48)
    doc["people"][0]["hand_right_keypoints_2d"] = [1.0] * 60
    path = write_json(tmp_path / "h.json", doc)
    with pytest.raises(
        PoseSourceError, match=r"h\.json: people\[0\]\.hand_right_keypoints_2d has 60 numbers, expected 63"
    ):
        read_openpose_json(path)


def test_not_an_openpose_document(tmp_path):
    path = write_json(tmp_path / "list.json", [1, 2, 3])
    with pytest.raises(PoseSourceError, match=r"list\.json: expected a JSON object with a 'people' list"):
        read_openpose_json(path)


def test_empty_folder_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PoseSourceError, match=r"empty: folder holds no \.json files"):
        read_openpose_folder(tmp_path / "empty")
    with pytest.raises(PoseSourceError, match=r"nowhere: no such OpenPose JSON file or folder"):
        read_openpose_folder(tmp_path / "nowhere")


def test_frames_on_other_canvases_are_fitted(tmp_path):
    write_json(tmp_path / "a.json", json.loads(pose().to_json()))
    big = Pose((Person(BODY_64x48 * [2, 2, 1]),), (128, 96))
    write_json(tmp_path / "b.json", json.loads(big.to_json()))
    seq = read_openpose_folder(tmp_path)
    assert seq.canvas == (64, 48)
    assert seq[1] == seq[0]
