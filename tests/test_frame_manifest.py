"""A frame counts as done only when it matches the digest written with it.

A frame cut in half (header intact) or overwritten with other valid pixels is rendered again by
the next run, never stitched, and the inbox does not take its job for finished.
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest
from PIL import Image

from flows.jobdir import frames_io, manifest as frame_manifest, stitch
from flows.jobdir.manifest import unverified_frames


def _image(seed: int, size=(32, 24)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_written_frame_is_verified_and_digest_is_sha256_of_the_png(tmp_path):
    path = frame_manifest.write_frame(_image(0), tmp_path, 3)
    assert path == frames_io.frame_path(tmp_path, 3)
    line = frame_manifest.digest_path(path).read_text()
    assert line == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  frame_0003.png\n"
    assert frame_manifest.is_verified(path, (32, 24))
    assert not frame_manifest.is_verified(path, (24, 32))  # wrong size is not done either
    assert unverified_frames(tmp_path, [3, 4], (32, 24)) == [4]


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "no_digest", "foreign_digest"])
def test_damaged_frames_are_unverified_and_never_loaded(tmp_path, damage, caplog):
    path = frame_manifest.write_frame(_image(0), tmp_path, 0)
    if damage == "truncate":
        _truncate(path)  # the header survives: PIL still opens it
        with Image.open(path) as img:
            assert img.size == (32, 24)
    elif damage == "overwrite":
        _image(1).save(path)  # a perfectly valid PNG, but not the one rendered
    elif damage == "no_digest":
        frame_manifest.digest_path(path).unlink()
    else:  # a digest line that names another file does not vouch for this one
        frame_manifest.digest_path(path).write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  other.png\n")

    assert unverified_frames(tmp_path, [0], (32, 24)) == [0]
    assert frame_manifest.unverified_frames(tmp_path, [0]) == [0]
    assert "frame_0000.png" in caplog.text and "rendering it again" in caplog.text
    with pytest.raises(frame_manifest.CorruptFrameError) as err:
        frame_manifest.load_verified_frame(path)
    assert str(path) in str(err.value)


def test_stitching_refuses_an_unverified_frame_and_names_it(tmp_path):
    paths = [frame_manifest.write_frame(_image(i), tmp_path, i) for i in range(3)]
    out = stitch.stitch_outputs(paths, tmp_path / "ok", fps=4, mp4=False, verify_frames=True)
    assert set(out) == {"gif", "contact_sheet"}
    _truncate(paths[1])
    with pytest.raises(frame_manifest.CorruptFrameError, match="frame_0001.png"):
        stitch.stitch_outputs(paths, tmp_path / "bad", fps=4, mp4=False, verify_frames=True)
    assert not (tmp_path / "bad" / "animation.gif").exists()


def test_concurrent_writers_of_one_job_keep_every_digest(tmp_path):
    """Chunks write frames of one job at once: no writer may drop another's manifest entry."""
    def chunk(start):
        for i in range(start, start + 10):
            frame_manifest.write_frame(_image(i, (8, 8)), tmp_path, i)

    threads = [threading.Thread(target=chunk, args=(k * 10,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert frame_manifest.unverified_frames(tmp_path, range(40), (8, 8)) == []


@pytest.mark.usefixtures("prefect_harness")
def test_rerun_renders_corrupt_frames_again_and_inbox_sees_it(tmp_path):
    from skimage import data

    from flows import AnimationJob, animate
    from flows.job.files import finished_result

    src = tmp_path / "cat.png"
    Image.fromarray(data.chelsea()).resize((96, 64)).save(src)
    job = AnimationJob.model_validate({
        "source": {"image": str(src), "prompt": "a photo of a cat"},
        "frames": {"prompts": ["a photo of a cat sitting", "a photo of a cat standing", "a photo of a cat jumping"]},
        "model": {"model": "tiny"},
        "settings": {"width": 64, "height": 64, "steps": 3, "start_step": 1},
        "output": {"folder": str(tmp_path / "out"), "mp4": False},
    })
    first = animate(job)
    original = [np.asarray(Image.open(p).convert("RGB")).astype(int) for p in first.frames]
    assert finished_result(job) is not None

    _truncate(frames_io.frame_path(first.job_dir, 1))
    _image(7, (64, 64)).save(frames_io.frame_path(first.job_dir, 2))
    assert finished_result(job) is None  # an unverified frame: the job is not finished

    second = animate(job)
    assert second.frames_rendered == 2 and second.frames_skipped == 1
    for path, before in zip(second.frames, original):  # the same pictures (batching noise: one level)
        assert np.abs(np.asarray(Image.open(path).convert("RGB")).astype(int) - before).max() <= 1, path
        assert frame_manifest.is_verified(path, (64, 64))
    with Image.open(second.gif) as gif:
        gif.seek(2)
        assert gif.n_frames == 3
    assert finished_result(job) is not None
