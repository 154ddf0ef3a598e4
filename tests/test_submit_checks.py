"""``masactrl-animate submit`` refuses, before submitting anything, what the worker's plan would:
prompt/pose counts, pose files, sizes, a source that does not decode (exit 2 naming the field)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

import conftest_jobs
from conftest_jobs import dump_job, workdir  # noqa: F401 - workdir is a fixture
from flows.cli import EXIT_INVALID, main

ROOT = Path(__file__).resolve().parents[1]
WALK = ROOT / "examples" / "poses" / "walk"  # 8 OpenPose JSON files


@pytest.fixture
def submitted(monkeypatch):
    """What reached ``run_deployment`` (nothing, for a refused job)."""
    import prefect.deployments

    calls = []
    def run_deployment(*args, **kwargs):
        calls.append((args, kwargs))
        return SimpleNamespace(id="a-run-id")

    monkeypatch.setattr(prefect.deployments, "run_deployment", run_deployment)
    return calls


def _poses(job: dict, path=WALK) -> dict:
    return {**job, "model": {"model": "tiny", "controlnet": "tiny"},
            "frames": {**job["frames"], "poses": {"kind": "openpose_json", "path": str(path)}}}


def _broken_pose_folder(folder: Path) -> Path:
    """A pose folder whose file exists (validation passes) but is no OpenPose JSON (planning reads it)."""
    (folder / "poses").mkdir()
    (folder / "poses" / "frame_000.json").write_text("{not json")
    return folder / "poses"


@pytest.mark.parametrize("change, field", [
    (lambda job, _: _poses({**job, "frames": {"prompts": ["a cat sitting", "a cat standing"]}}), "frames.prompts"),
    (lambda job, folder: _poses(job, _broken_pose_folder(folder)), "frames.poses"),
    (lambda job, _: {**job, "frames": {"prompts": ["a cat"], "overrides": [{"index": 3, "prompt": "a dog"}]}},
     "frames.overrides[0].index"),
])
def test_submit_refuses_what_planning_refuses(workdir, submitted, capsys, change, field):  # noqa: F811
    path = dump_job(workdir / "job.yaml", change(conftest_jobs.base_job(workdir.parent / "out"), workdir))
    assert main(["submit", str(path), "--no-wait"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert err.startswith(f"{path}: invalid job\n  {field}: "), err
    assert "Traceback" not in err and "could not submit" not in err
    assert submitted == []  # nothing reached the server
    assert not (workdir.parent / "out").exists()


def test_submit_refuses_a_source_that_does_not_decode(workdir, submitted, capsys):  # noqa: F811
    cut = workdir / "cut.png"
    cut.write_bytes((workdir / "cat.png").read_bytes()[:-300])
    job = conftest_jobs.base_job(workdir.parent / "out")
    path = dump_job(workdir / "job.yaml", {**job, "source": {**job["source"], "image": "cut.png"}})
    assert main(["submit", str(path), "--no-wait"]) == EXIT_INVALID
    assert "  source.image: " in capsys.readouterr().err and submitted == []


def test_submit_sends_a_job_that_plans(workdir, submitted, capsys):  # noqa: F811
    """The checks let a good job through."""
    path = dump_job(workdir / "job.yaml", conftest_jobs.base_job(workdir.parent / "out"))
    assert main(["submit", str(path), "--no-wait"]) == 0
    assert capsys.readouterr().out.strip() == "a-run-id"
    assert len(submitted) == 1 and submitted[0][1]["parameters"]["job"]["frames"]["prompts"] == ["a photo of a cat sitting"]


def test_submit_sends_a_frame_selection(workdir, submitted, capsys):  # noqa: F811
    job = conftest_jobs.base_job(workdir.parent / "out", ("a cat sitting", "a cat standing", "a cat jumping"))
    path = dump_job(workdir / "job.yaml", job)
    assert main(["submit", str(path), "--no-wait", "--frames", "0,2"]) == 0
    assert submitted[0][1]["parameters"]["frames"] == [0, 2]
    assert main(["submit", str(path), "--no-wait", "--frames", "3"]) == EXIT_INVALID
    assert "--frames: frame 3 does not exist; the job has 3 frames (0-2)" in capsys.readouterr().err
    assert len(submitted) == 1
