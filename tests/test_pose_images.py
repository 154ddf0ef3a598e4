"""Pre-rendered pose maps (PoseMaps) and the overlay preview."""

from __future__ import annotations

import numpy as np
import pytest
from conftest_pose import pose
from PIL import Image

from pose_sources import PoseMaps, PoseSourceError, fit_image, list_pose_images, overlay

RED = (255, 0, 0)


def solid(path, size, colour):
    Image.new("RGB", size, colour).save(path)
    return path


def test_stretch_fills_the_frame():
    out = np.asarray(fit_image(Image.new("RGB", (40, 20), RED), (64, 64), "stretch"))
    assert out.shape == (64, 64, 3)
    assert (out == RED).all()


def test_letterbox_keeps_aspect_and_pads_with_black():
    out = np.asarray(fit_image(Image.new("RGB", (40, 20), RED), (64, 64), "letterbox"))
    assert out.shape == (64, 64, 3)
    # 40x20 scaled by 64/40 -> 64x32, centred: black rows 0-15 and 48-63
    assert not out[:16].any() and not out[48:].any()
    assert (out[16:48] == RED).all()
    tall = np.asarray(fit_image(Image.new("RGB", (10, 40), RED), (64, 32), "letterbox"))
    # 10x40 scaled by 32/40 -> 8x32, centred horizontally at columns 28-35
    assert not tall[:, :28].any() and not tall[:, 36:].any() and (tall[:, 28:36] == RED).all()


def test_folder_in_natural_order_rendered_to_size(tmp_path):
    colours = {10: (0, 0, 250), 2: (0, 250, 0), 1: (250, 0, 0)}
    for i, c in colours.items():
        solid(tmp_path / f"pose_{i}.png", (16, 8), c)
    maps = PoseMaps.from_source(str(tmp_path), fit="stretch")
    assert len(maps) == 3 and maps.canvas == (16, 8)
    frames = maps.render((20, 12))
    assert [f.size for f in frames] == [(20, 12)] * 3 and all(f.mode == "RGB" for f in frames)
    assert [tuple(np.asarray(f)[6, 10]) for f in frames] == [colours[1], colours[2], colours[10]]


def test_glob_and_list_sources(tmp_path):
    for name in ("b_2.png", "b_10.png", "a_1.png"):
        solid(tmp_path / name, (8, 8), RED)
    (tmp_path / "b_3.txt").write_text("not an image")
    assert [p.name for p in list_pose_images(str(tmp_path / "b_*"))] == ["b_2.png", "b_10.png"]
    listed = [str(tmp_path / "b_10.png"), str(tmp_path / "a_1.png")]
    assert [p.name for p in list_pose_images(listed)] == ["b_10.png", "a_1.png"]  # list order is kept


def test_rgba_and_grey_maps_come_out_rgb(tmp_path):
    Image.new("RGBA", (8, 8), (10, 20, 30, 128)).save(tmp_path / "a.png")
    Image.new("L", (8, 8), 77).save(tmp_path / "b.png")
    frames = PoseMaps.from_source(str(tmp_path)).render((8, 8))
    assert [f.mode for f in frames] == ["RGB", "RGB"]
    assert tuple(np.asarray(frames[1])[0, 0]) == (77, 77, 77)


def test_image_source_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PoseSourceError, match=r"empty: folder holds no pose images"):
        list_pose_images(tmp_path / "empty")
    with pytest.raises(PoseSourceError, match=r"\*\.png: the pattern matches no image files"):
        list_pose_images(str(tmp_path / "*.png"))
    with pytest.raises(PoseSourceError, match=r"gone\.png: pose image not found"):
        list_pose_images([str(tmp_path / "gone.png")])
    (tmp_path / "fake.png").write_bytes(b"definitely not a png")
    with pytest.raises(PoseSourceError, match=r"fake\.png: cannot decode as an image"):
        PoseMaps.from_source([str(tmp_path / "fake.png")]).render((8, 8))


def test_overlay_blends_only_where_the_pose_is_drawn():
    p = pose()
    background = Image.new("RGB", (64, 48), (40, 80, 120))
    out = np.asarray(overlay(background, p, alpha=0.5)).astype(int)
    pose_map = np.asarray(p.render((64, 48))).astype(int)
    drawn = pose_map.any(axis=2)
    assert drawn.any() and (~drawn).any()
    assert (out[~drawn] == (40, 80, 120)).all()
    expected = np.rint(0.5 * np.array([40, 80, 120]) + 0.5 * pose_map[drawn])
    np.testing.assert_array_equal(out[drawn], expected)
    # a rendered map is accepted too, and alpha 1 shows it as is where drawn
    full = np.asarray(overlay(background, p.render(), alpha=1.0))
    np.testing.assert_array_equal(full[drawn], pose_map[drawn])
    with pytest.raises(PoseSourceError, match="alpha must be within 0..1"):
        overlay(background, p, alpha=1.5)
