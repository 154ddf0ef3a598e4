"""A kill -9 during MP4 encoding leaves `.animation.*.tmp.mp4`; the job's next run
removes it (only that pattern, only files older than the run's start)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.jobdir import stale_files

ROOT = Path(__file__).resolve().parents[1]

_ENCODE_FOREVER = """
import sys
import numpy as np
from PIL import Image
sys.path.insert(0, {root!r})
from flows.jobdir.stitch import write_mp4
frames = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (256, 256, 3), dtype=np.uint8)) for i in range(8)]
write_mp4(frames * 2000, {target!r}, fps=8)
"""


def _kill_during_mp4(job_dir: Path) -> Path:
    """Start an MP4 encode into ``job_dir`` and kill -9 it once its temporary file has data."""
    target = job_dir / "animation.mp4"
    proc = subprocess.Popen([sys.executable, "-c", _ENCODE_FOREVER.format(root=str(ROOT), target=str(target))],
                            start_new_session=True, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            temps = [p for p in job_dir.glob(".animation.*.tmp.mp4") if p.stat().st_size > 0]
            if temps:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        else:
            raise AssertionError("the encoder never wrote its temporary MP4")
    finally:
        # imageio-ffmpeg starts ffmpeg in a process group of its own: kill it with its parent, or the
        # orphan would finish the file (and touch it) after the "kill".
        import psutil

        encoders = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for child in encoders:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(encoders, timeout=10)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert not target.exists()
    [temp] = temps
    assert temp.exists()
    return temp


def test_kill_during_mp4_leaves_a_temp_file_that_the_next_run_removes(tmp_path):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    temp = _kill_during_mp4(job_dir)
    # Files that are not ours, or not of the temp pattern, stay.
    keep = [job_dir / "animation.gif", job_dir / ".notes.tmp", job_dir / "my.tmp.mp4", job_dir / ".hidden"]
    for p in keep:
        p.write_bytes(b"x")
    (job_dir / "frames").mkdir()
    frame_temp = job_dir / "frames" / ".frame_0002.a1b2c3d4e5f6.tmp.png"
    frame_temp.write_bytes(b"half a png")
    old = time.time() - 60
    for p in (temp, frame_temp, *keep):
        os.utime(p, (old, old))

    removed = stale_files.remove_stale_temp_files(job_dir, started=time.time())
    assert sorted(removed) == sorted([temp, frame_temp])
    assert not temp.exists() and not frame_temp.exists()
    assert all(p.exists() for p in keep)


def test_a_temp_file_still_being_written_is_kept(tmp_path):
    live = tmp_path / ".animation.0123456789ab.tmp.mp4"
    live.write_bytes(b"being written")  # mtime now: a concurrent run of the same job
    assert stale_files.remove_stale_temp_files(tmp_path, started=time.time()) == []
    assert live.exists()


@pytest.mark.usefixtures("prefect_harness")
def test_next_run_of_the_job_removes_the_killed_encoders_temp_file(tmp_path):
    from skimage import data
    from PIL import Image

    from flows import AnimationJob, animate
    from flows.job.plan import plan_job

    src = tmp_path / "cat.png"
    Image.fromarray(data.chelsea()).resize((96, 64)).save(src)
    job = AnimationJob.model_validate({
        "source": {"image": str(src), "prompt": "a photo of a cat"},
        "frames": {"prompts": ["a photo of a cat sitting", "a photo of a cat standing"]},
        "model": {"model": "tiny"},
        "settings": {"width": 64, "height": 64, "steps": 2, "start_step": 1},
        "output": {"folder": str(tmp_path / "out")},
    })
    job_dir = Path(plan_job(job, write=False).job_dir)
    job_dir.mkdir(parents=True)
    temp = _kill_during_mp4(job_dir)
    old = time.time() - 60
    os.utime(temp, (old, old))

    result = animate(job)
    assert not temp.exists()
    assert Path(result.mp4).is_file()
    assert not list(job_dir.rglob("*.tmp*"))


def test_under_the_job_lock_every_output_temp_file_is_abandoned(tmp_path):
    from flows.jobdir.stale_files import remove_abandoned_temp_files

    (tmp_path / "frames").mkdir()
    fresh = [tmp_path / ".animation.4c94000990f7.tmp.mp4", tmp_path / "frames" / ".frame_0001.abcdef123456.tmp.png"]
    kept = [tmp_path / ".job.abcdef123456.tmp.json", tmp_path / "animation.mp4"]  # plan_job's, and a real file
    for path in fresh + kept:
        path.write_bytes(b"x")  # written just now: the age grace does not apply here
    assert sorted(remove_abandoned_temp_files(tmp_path)) == sorted(fresh)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in fresh)
