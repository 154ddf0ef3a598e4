"""The masactrl-animate CLI in-process (run / validate / schema / demo / submit errors) under the test harness."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
import numpy as np
from PIL import Image

from flows.cli import EXIT_FAILED, EXIT_INVALID, EXIT_OK, main

pytestmark = pytest.mark.usefixtures("prefect_harness")
WALK = Path(__file__).resolve().parent.parent / "examples" / "poses" / "walk"


@pytest.fixture
def job_file(tmp_path):
    from skimage import data

    folder = tmp_path / "jobs"
    folder.mkdir()
    Image.fromarray(data.chelsea()).resize((96, 64)).save(folder / "cat.png")
    job = {
        "source": {"image": "cat.png", "prompt": "a photo of a cat"},
        "frames": {"prompts": ["a photo of a cat sitting", "a photo of a cat jumping"]},
        "settings": {"width": 64, "height": 64, "steps": 3, "start_step": 1},
        "output": {"folder": str(tmp_path / "out"), "fps": 8},
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def snapshot(folder: Path):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_run_with_overrides_prints_the_result(job_file, tmp_path, capsys):
    assert main(["run", str(job_file), "--set", "output.fps=4", "--set", "output.mp4=false", "--json"]) == EXIT_OK
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # stdout is the result alone: the chunk lines go to stderr
    assert "chunk 0: frames 0, 1 rendered (2/2)" in captured.err
    assert result["frame_count"] == 2 and result["mp4"] is None
    with Image.open(result["gif"]) as gif:
        assert gif.n_frames == 2 and gif.info["duration"] == 250  # 4 fps from --set
    assert Path(result["job_dir"]).parent == tmp_path / "out"

    assert main(["run", str(job_file), "--no-progress"]) == EXIT_OK  # human-readable summary, nothing re-rendered
    out = capsys.readouterr().out
    assert "GIF:" in out and "MP4:" in out and "0 rendered" in out


def test_run_a_subset_of_frames_then_the_rest(job_file, tmp_path, capsys):
    job = yaml.safe_load(job_file.read_text())
    job["model"] = {"model": "tiny"}
    job["frames"]["prompts"] = [f"a photo of a cat, pose {i}" for i in range(4)]
    job_file.write_text(yaml.safe_dump(job))
    assert main(["run", str(job_file), "--frames", "1-2", "--no-progress", "--json"]) == EXIT_OK
    preview = json.loads(capsys.readouterr().out)
    assert preview["frames_rendered"] == 2 and preview["missing_frames"] == [0, 3]
    assert main(["run", str(job_file), "--no-progress"]) == EXIT_OK
    assert "4 (2 rendered, 2 already rendered)" in capsys.readouterr().out
    assert main(["run", str(job_file), "--frames", "2,9"]) == EXIT_INVALID
    assert "--frames: frame 9 does not exist; the job has 4 frames (0-3)" in capsys.readouterr().err


@pytest.mark.parametrize("override,field", [
    ("settings.width=100", "settings.width"),
    ("output.folder=../elsewhere", "output.folder"),
    ("source.image=missing.png", "source.image"),
    ("output.fsp=3", "output.fsp"),
])
def test_invalid_job_exits_2_names_the_field_and_touches_nothing(job_file, tmp_path, capsys, override, field):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("do not touch")
    before = snapshot(out)
    assert main(["run", str(job_file), "--set", override]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "invalid job" in err and field in err
    assert snapshot(out) == before


def test_validate_and_schema(job_file, tmp_path, capsys, monkeypatch):
    assert main(["validate", str(job_file)]) == EXIT_OK
    assert "valid: 2 frames" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()  # validation writes nothing
    poses = job_file.parent / "poses"
    poses.mkdir()
    for name in sorted(p.name for p in WALK.glob("*.json"))[:3]:
        shutil.copy(WALK / name, poses / name)
    monkeypatch.chdir(job_file.parent)  # --set paths are relative to the current folder
    args = ["validate", str(job_file), "--set", "frames.poses={kind: openpose_json, path: poses}",
            "--set", "model.controlnet=tiny"]
    assert main(args) == EXIT_INVALID  # 2 prompts for 3 poses: needs the poses resolved, still no model
    assert "frames.prompts: 2 prompts for 3 poses" in capsys.readouterr().err
    assert main(["schema"]) == EXIT_OK
    schema = json.loads(capsys.readouterr().out)
    # The form's sections read like the product, not like Python class names.
    assert schema["title"] == "Animation job" and schema["$defs"]["RenderSettings"]["title"] == "Render settings"
    titles = sorted(d["title"] for d in schema["$defs"].values() if "title" in d and d.get("type") == "object")
    assert not [t for t in titles if t.endswith(("Spec", "Settings", "Section"))], titles  # no class names


def test_refusals_are_exit_2_in_one_format(job_file, tmp_path, capsys):
    """Whatever refuses the input (the source's pixels, a sweep grid, a folder that is no finished
    job), main() turns it into exit 2 and the same lines; nothing is written."""
    whole = job_file.parent / "cat.jpg"
    Image.open(job_file.parent / "cat.png").save(whole, quality=90)
    cut = job_file.parent / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[:-200])  # its header is whole: only decoding finds the cut
    for command in ("validate", "run"):
        assert main([command, str(job_file), "--set", f"source.image={cut}", "--no-progress"]) == EXIT_INVALID
        err = capsys.readouterr().err
        assert err.startswith(f"{job_file}: invalid job\n  source.image: ") and "not a readable image" in err, err
    assert main(["sweep", str(job_file), "--grid", "settings.start_step"]) == EXIT_INVALID
    assert capsys.readouterr().err.startswith(f"{job_file}: invalid job\n  ")
    assert main(["metrics", str(tmp_path / "no-job")]) == EXIT_INVALID
    assert capsys.readouterr().err.startswith("metrics: ")
    assert not (tmp_path / "out").exists()


def test_submit_without_a_deployment_fails_cleanly(job_file, capsys):
    assert main(["submit", str(job_file), "--no-wait"]) == EXIT_FAILED
    assert "could not submit" in capsys.readouterr().err


def test_demo_prints_gif_and_mp4(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--size", "64", "--steps", "3", "--no-progress"]) == EXIT_OK
    out = capsys.readouterr().out
    gifs = [line.split("GIF:")[1].strip() for line in out.splitlines() if "GIF:" in line]
    mp4s = [line.split("MP4:")[1].strip() for line in out.splitlines() if "MP4:" in line]
    assert len(gifs) == len(mp4s) == 2 and all(Path(p).is_file() for p in gifs + mp4s)
    assert "astronaut-walk:" in out and "cat-prompts:" in out and "pose | frame:" in out
    assert (tmp_path / "demo" / "inputs" / "astronaut.png").is_file()
    # The walk loops with in-betweens: one after every rendered frame, the last bridging back to the first.
    poses = len(list(WALK.glob("*.json")))
    with Image.open(gifs[0]) as walk:
        assert walk.n_frames == 2 * poses
    job_dir = Path(gifs[0]).parent
    assert len(list((job_dir / "inbetweens").glob("*.png"))) == poses
    assert len(list((job_dir / "frames").glob("*.png"))) == poses  # derived frames stay out of the frames
    with Image.open(gifs[1]) as cat:
        assert cat.n_frames == 6  # the prompt sequence as rendered
    # The walk moves: consecutive frames differ where the limbs do (before the tiny ControlNet
    # followed its poses they differed by at most 1 grey level: a still picture).
    frames = [np.asarray(Image.open(p), np.float64) for p in sorted((Path(gifs[0]).parent / "frames").glob("*.png"))]
    steps = [np.abs(b - a) for a, b in zip(frames, frames[1:])]
    assert min(d.mean() for d in steps) > 0.5 and min(d.max() for d in steps) >= 16, [
        (round(d.mean(), 2), d.max()) for d in steps]
