"""Server runs: with MASACTRL_INPUT_ROOTS / MASACTRL_OUTPUT_ROOT set (as `serve
--input-root/--output-root` and deploy/ do for the runs they start), the animate and sweep flows
refuse paths outside the roots as their first step, with the field in the state message and no
traceback, and accept a job inside them; the inbox keeps relative outputs below the output root;
a local CLI run with the roots unset keeps today's freedom. The flow refuses a subject word
past the token limit the same way, and logs the warning for a cut prompt."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from flows import animate
from flows.cli import EXIT_OK, apply_roots, build_parser, main
from flows.deployments import animate_inbox
from flows.sweep import sweep

pytestmark = pytest.mark.usefixtures("prefect_harness")

LONG = "a photo of a cat " + "walking " * 80


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """inputs/ (holding cat.png) and results/ as the server's roots; elsewhere/ outside both."""
    from skimage import data

    inputs, results, elsewhere = tmp_path / "inputs", tmp_path / "results", tmp_path / "elsewhere"
    for folder in (inputs, results, elsewhere):
        folder.mkdir()
    Image.fromarray(data.chelsea()).resize((96, 64)).save(inputs / "cat.png")
    shutil.copy(inputs / "cat.png", elsewhere / "cat.png")
    monkeypatch.setenv("MASACTRL_INPUT_ROOTS", str(inputs))
    monkeypatch.setenv("MASACTRL_OUTPUT_ROOT", str(results))
    return inputs, results, elsewhere


def job_dict(image: Path, out, prompts=("a photo of a cat sitting", "a photo of a cat jumping"), **source) -> dict:
    """What the UI form sends: plain JSON (the flows validate it themselves)."""
    return {
        "source": {"image": str(image), "prompt": "a photo of a cat", **source},
        "frames": {"prompts": list(prompts)},
        "model": {"model": "tiny"},
        "settings": {"width": 64, "height": 64, "steps": 2, "start_step": 1},
        "output": {"folder": str(out), "mp4": False},
    }


def assert_refused(state, *needles):
    assert state.is_failed(), state
    message = state.message or ""
    assert message.startswith("Invalid job: "), message
    for needle in needles:
        assert needle in message, message
    assert "Traceback" not in message


def test_animate_refuses_paths_outside_the_roots_and_accepts_inside(roots, tmp_path, caplog):
    inputs, results, elsewhere = roots
    state = animate(job_dict(inputs / "cat.png", "/etc/masactrl-animate"), return_state=True)
    assert_refused(state, "output.folder", "outside the output root")
    assert not Path("/etc/masactrl-animate").exists()

    state = animate(job_dict(elsewhere / "cat.png", results / "a"), return_state=True)
    assert_refused(state, "source.image", "outside the input folders")
    (inputs / "link.png").symlink_to(elsewhere / "cat.png")  # a link out of the root does not count
    state = animate(job_dict(inputs / "link.png", results / "a"), return_state=True)
    assert_refused(state, "source.image", "outside the input folders")
    assert not (results / "a").exists()  # nothing written for a refused job

    # In the flow: a prompt operator the engine does not apply fails the run the same way
    state = animate(job_dict(inputs / "cat.png", results / "a", prompts=["a photo of a cat", "a cat.swap(dog)"]),
                    return_state=True)
    assert_refused(state, "frames.prompts[1]", ".swap()")
    assert not (results / "a").exists()

    state = animate(job_dict(inputs / "cat.png", results / "a", prompts=["a photo of a cat sitting", LONG + "in a hat"]),
                    return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert Path(result.gif).is_file() and Path(result.job_dir).parent == results / "a"
    cut = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "dropped" in r.getMessage()]
    assert cut == []  # long prompts are read whole (in chunks of 77 tokens): nothing is cut any more


def test_sweep_refuses_paths_outside_the_roots(roots):
    inputs, results, elsewhere = roots
    state = sweep(job_dict(inputs / "cat.png", "/etc/masactrl-animate"), {"settings.start_step": [1]}, [0],
                  return_state=True)
    assert_refused(state, "output.folder")
    state = sweep(job_dict(elsewhere / "cat.png", results / "s"), {"settings.start_step": [1]}, [0], return_state=True)
    assert_refused(state, "source.image")
    assert not (results / "s").exists()


def test_inbox_results_stay_below_the_output_root(roots, monkeypatch):
    inputs, results, elsewhere = roots
    inbox = inputs / "inbox"
    inbox.mkdir()
    shutil.copy(inputs / "cat.png", inbox / "cat.png")
    good = job_dict(Path("cat.png"), "res")  # relative: next to the job file / below the output root
    (inbox / "good.yaml").write_text(yaml.safe_dump(good))
    (inbox / "outside.yaml").write_text(yaml.safe_dump(job_dict(elsewhere / "cat.png", "res")))
    state = animate_inbox(inbox=str(inbox), return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "outside.yaml" in message and "source.image" in message and "good.yaml" not in message
    assert len(list((results / "res").glob("*/result.json"))) == 1
    assert not (inbox / "res").exists()


def test_local_cli_run_without_roots_keeps_its_freedom(tmp_path, monkeypatch, capsys):
    from skimage import data

    monkeypatch.delenv("MASACTRL_INPUT_ROOTS", raising=False)
    monkeypatch.delenv("MASACTRL_OUTPUT_ROOT", raising=False)
    Image.fromarray(data.chelsea()).resize((96, 64)).save(tmp_path / "cat.png")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_dict(tmp_path / "cat.png", tmp_path / "anywhere")))
    assert main(["run", str(path), "--no-progress"]) == EXIT_OK, capsys.readouterr().err
    assert list((tmp_path / "anywhere").glob("*/animation.gif"))


def test_serve_sets_the_roots_for_its_runs(tmp_path, monkeypatch, capsys):
    import importlib

    for name in ("MASACTRL_INPUT_ROOTS", "MASACTRL_OUTPUT_ROOT"):
        # setenv first, so that the test's end restores the variable to its state before (serve sets it)
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    parser = build_parser()
    serve_help = parser._subparsers._group_actions[0].choices["serve"].format_help()
    assert "--input-root" in serve_help and "--output-root" in serve_help
    assert serve_help.count("no confinement") == 2

    # not given: unset (no confinement), and serve says so
    apply_roots(parser.parse_args(["serve"]))
    assert "MASACTRL_INPUT_ROOTS" not in __import__("os").environ
    assert "input roots: none" in capsys.readouterr().out

    seen = {}
    deployments = importlib.import_module("flows.deployments")
    concurrency = importlib.import_module("flows.execution.gpu_claims")
    monkeypatch.setattr(concurrency, "ensure_gpu_limit", lambda pool, gpus: "gpu-test")
    monkeypatch.setattr(deployments, "serve_deployments", lambda *a, **k: seen.update(
        inputs=__import__("os").environ.get("MASACTRL_INPUT_ROOTS"),
        output=__import__("os").environ.get("MASACTRL_OUTPUT_ROOT")))
    args = ["serve", "--no-media", "--input-root", str(tmp_path / "a"), "--input-root", "b",
            "--output-root", str(tmp_path / "out")]
    assert main(args) == EXIT_OK
    assert seen["inputs"] == f"{tmp_path / 'a'}:{Path('b').absolute()}"
    assert seen["output"] == str(tmp_path / "out") and (tmp_path / "out").is_dir()
