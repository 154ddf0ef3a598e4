"""flows.jobdir.stitch and flows.jobdir.frames_io: media files read back exactly as written."""

import os

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

from flows.jobdir import frames_io, stitch
from flows.jobdir.manifest import unverified_frames


def _frames(n, size=(64, 48), same=False):
    rng = np.random.default_rng(0)
    w, h = size
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return [Image.fromarray(base if same else rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for _ in range(n)]


def _gif_info(path):
    with Image.open(path) as im:
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info.get("duration"))
        return im.n_frames, im.size, im.info.get("loop"), durations


@pytest.mark.parametrize("n", [1, 2, 5])
def test_gif_has_exact_frame_count_size_loop_and_duration(tmp_path, n):
    path = stitch.write_gif(_frames(n), tmp_path / "a.gif", fps=10, loop=0)
    count, size, loop, durations = _gif_info(path)
    assert (count, size, loop) == (n, (64, 48), 0)
    assert durations == [100] * n


def test_gif_keeps_identical_consecutive_frames(tmp_path):
    # Pillow's own writer would merge these into one frame of 400 ms.
    path = stitch.write_gif(_frames(4, same=True), tmp_path / "same.gif", fps=10)
    count, _, _, durations = _gif_info(path)
    assert count == 4 and durations == [100] * 4


def test_gif_loop_count_and_rounded_duration(tmp_path):
    path = stitch.write_gif(_frames(3), tmp_path / "b.gif", fps=8, loop=3)
    _, _, loop, durations = _gif_info(path)
    assert loop == 3
    # GIF delays are in 10 ms units: 125 ms is stored as the nearest one.
    assert durations == [stitch.gif_frame_duration_ms(8)] * 3
    assert abs(durations[0] - 125) <= 5


def test_gif_colours_survive(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = stitch.write_gif(frames, tmp_path / "c.gif", fps=5)
    back = imageio.mimread(path)
    assert [tuple(f[0, 0, :3]) for f in back] == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


@pytest.mark.parametrize("size,expected", [((64, 48), (64, 48)), ((65, 33), (66, 34))])
def test_mp4_fps_frame_count_and_even_size(tmp_path, size, expected):
    path = stitch.write_mp4(_frames(6, size=size), tmp_path / "a.mp4", fps=12)
    reader = imageio.get_reader(path, format="FFMPEG")
    meta = reader.get_meta_data()
    frames = [f for f in reader]
    reader.close()
    assert meta["fps"] == 12
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    assert tuple(meta["size"]) == expected
    assert len(frames) == 6
    assert frames[0].shape == (expected[1], expected[0], 3)


def test_pad_to_even_repeats_edge():
    img = Image.fromarray(np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3))
    out = np.asarray(stitch.pad_to_even(img))
    assert out.shape == (4, 6, 3)
    assert (out[3, :5] == out[2, :5]).all() and (out[:3, 5] == out[:3, 4]).all()


@pytest.mark.parametrize("n,columns,sheet", [(1, None, (64, 48)), (4, None, (128, 96)), (5, None, (192, 96)),
                                             (7, 2, (128, 192)), (3, 10, (192, 48))])
def test_contact_sheet_size(n, columns, sheet):
    frames = _frames(n)
    out = stitch.contact_sheet(frames, columns)
    assert out.size == sheet
    # First cell is the first frame, pixel for pixel.
    assert (np.asarray(out)[:48, :64] == np.asarray(frames[0])).all()


def test_side_by_side_puts_pose_left_frame_right():
    poses = [Image.new("RGB", (32, 32), (255, 0, 0))]
    frames = [Image.new("RGB", (64, 48), (0, 0, 255))]
    (pair,) = stitch.side_by_side(poses, frames)
    assert pair.size == (128, 48)
    assert pair.getpixel((10, 10)) == (255, 0, 0) and pair.getpixel((100, 10)) == (0, 0, 255)
    with pytest.raises(ValueError, match="poses"):
        stitch.side_by_side(poses * 2, frames)


def test_stitch_outputs_writes_everything_and_no_temp_files(tmp_path):
    paths = [frames_io.save_png_atomic(f, frames_io.frame_path(tmp_path, i)) for i, f in enumerate(_frames(3))]
    poses = [frames_io.save_png_atomic(f, frames_io.pose_path(tmp_path, i)) for i, f in enumerate(_frames(3))]
    out = stitch.stitch_outputs(paths, tmp_path, fps=6, pose_paths=poses)
    assert set(out) == {"gif", "mp4", "contact_sheet", "side_by_side_png", "side_by_side_gif", "side_by_side_mp4"}
    assert not (tmp_path / "inbetweens").exists()  # interpolate 1: nothing derived
    assert all(os.path.isfile(p) for p in out.values())
    assert _gif_info(out["side_by_side_gif"])[:2] == (3, (128, 48))
    assert not [p for p in tmp_path.rglob(".*")], "temporary files left behind"
    only_gif = stitch.stitch_outputs(paths, tmp_path / "g", fps=6, mp4=False)
    assert set(only_gif) == {"gif", "contact_sheet"}


def test_stitch_with_inbetweens_keeps_the_pose_preview_to_rendered_frames(tmp_path):
    paths = [frames_io.save_png_atomic(f, frames_io.frame_path(tmp_path, i)) for i, f in enumerate(_frames(3))]
    poses = [frames_io.save_png_atomic(f, frames_io.pose_path(tmp_path, i)) for i, f in enumerate(_frames(3))]
    out = stitch.stitch_outputs(paths, tmp_path, fps=5, gif_loops=2, pose_paths=poses, interpolate=2, loop="crossfade")
    count, size, loop, durations = _gif_info(out["gif"])
    assert (count, size, loop) == (6, (64, 48), 2) and durations == [stitch.gif_frame_duration_ms(10)] * 6
    reader = imageio.get_reader(out["mp4"], format="FFMPEG")
    assert reader.get_meta_data()["fps"] == 10 and len([f for f in reader]) == 6
    reader.close()
    # The pose | frame pairs have no in-betweens: rendered frames at the rendered frame rate.
    assert _gif_info(out["side_by_side_gif"]) == (3, (128, 48), 2, [200] * 3)
    assert stitch.contact_sheet(_frames(2), interpolated=[False, True]).getpixel((64, 0)) == stitch.INTERPOLATED_MARK


def test_stitch_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="frames"):
        stitch.write_gif([], tmp_path / "x.gif", fps=5)
    with pytest.raises(ValueError, match="fps"):
        stitch.write_mp4(_frames(1), tmp_path / "x.mp4", fps=0)
    assert not list(tmp_path.iterdir())


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = frames_io.write_bytes_atomic(tmp_path / "f.bin", b"old")

    def boom(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        frames_io.atomic_write(target, boom)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_missing_frames_and_pose_index(tmp_path):
    from flows.jobdir.manifest import write_frame

    write_frame(Image.new("RGB", (8, 8)), tmp_path, 1)  # a frame with its digest
    frames_io.frame_path(tmp_path, 2).write_bytes(b"not a png")
    assert unverified_frames(tmp_path, range(4), (8, 8)) == [0, 2, 3]
    assert unverified_frames(tmp_path, range(4), (16, 16)) == [0, 1, 2, 3]  # wrong size is not done
    assert frames_io.read_poses_index(tmp_path) is None
    written = frames_io.write_poses(tmp_path, [Image.new("RGB", (8, 8))] * 2)
    assert frames_io.read_poses_index(tmp_path) == written
    written[1].unlink()
    assert frames_io.read_poses_index(tmp_path) is None


@pytest.mark.parametrize("size,target,expected", [((451, 300), (64, 64), (300, 300)), ((300, 451), (64, 64), (300, 300)),
                                                  ((400, 200), (128, 64), (400, 200)), ((200, 200), (128, 64), (200, 100))])
def test_fit_source_crops_the_centre_to_the_frame_aspect(size, target, expected):
    from flows.job.plan import fit_source

    img = Image.new("RGB", size)
    img.putpixel((size[0] // 2, size[1] // 2), (255, 0, 0))
    out = fit_source(img, *target, fit="crop")
    assert out.size == expected
    assert out.getpixel((expected[0] // 2, expected[1] // 2)) == (255, 0, 0)  # centred
    assert fit_source(img, *target, fit="stretch").size == size
