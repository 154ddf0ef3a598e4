"""The demo poses in examples/poses/ and the script that writes them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from pose_sources import OpenPoseJsonSpec, PoseSequence, load, read_openpose_folder

ROOT = Path(__file__).resolve().parent.parent
POSES = ROOT / "examples" / "poses"


@pytest.fixture(scope="module")
def make_poses():
    spec = importlib.util.spec_from_file_location("make_poses", ROOT / "examples" / "make_poses.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["walk", "wave"])
def test_example_sequences_are_plausible(name):
    files = sorted(p.name for p in (POSES / name).glob("*.json"))
    assert files == [f"frame_{i:03d}.json" for i in range(8)]
    seq = read_openpose_folder(POSES / name)
    assert seq.canvas == (512, 512) and len(seq) == 8
    for pose in seq:
        assert len(pose.people) == 1
        pts = pose.people[0].visible_points()
        lo, hi = pts.min(0), pts.max(0)
        assert (lo >= 0).all() and (hi <= 512).all()
        assert 0.55 * 512 < hi[1] - lo[1] < 0.95 * 512  # tall, but inside the frame
        assert abs((lo[0] + hi[0]) / 2 - 256) < 64 and abs((lo[1] + hi[1]) / 2 - 256) < 64  # roughly centred
    # it moves: consecutive frames differ
    assert all(a != b for a, b in zip(seq, seq[1:]))


def test_script_output_matches_the_kept_files(make_poses, tmp_path):
    written = make_poses.write(tmp_path)
    for name in ("walk", "wave"):
        assert [p.name for p in written[name]] == [f"frame_{i:03d}.json" for i in range(8)]
        assert read_openpose_folder(tmp_path / name) == read_openpose_folder(POSES / name)
        for new, kept in zip(written[name], sorted((POSES / name).glob("*.json"))):
            assert new.read_text() == kept.read_text()


def test_examples_are_built_by_keyframe_interpolation(make_poses):
    walk: PoseSequence = make_poses.build_walk()
    assert walk.metadata["keyframe_positions"] == [0, 2, 4, 6]
    # in-between frames are the average of their neighbouring keyframes (linear, looped)
    mid = (walk[6].people[0].body + walk[0].people[0].body) / 2
    np.testing.assert_allclose(walk[7].people[0].body, mid)
    # the far-side eye and ear are hidden in the side view and stay hidden
    assert all((p.people[0].body[[14, 16]] == 0).all() for p in walk)


def test_examples_load_through_the_entry_point():
    seq = load(OpenPoseJsonSpec(path=str(POSES / "wave")), size=(256, 256))
    maps = seq.render((256, 256))
    assert len(maps) == 8 and all(m.size == (256, 256) for m in maps)
    assert all(np.asarray(m).any() for m in maps)
