"""Prompt checks at `validate`/`run` time, before Prefect: long prompts are encoded in chunks now
(nothing is cut, the subject is found past token 77), compel operators the engine cannot run are
refused, and A1111 groups without a weight get a warning."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from PIL import Image

from flows.job import prompt_limits
from flows.cli import EXIT_INVALID, main
from flows.job.model import AnimationJob

LONG = "a photo of a cat " + "walking " * 80  # 86 tokens with the tiny (CLIP-style) tokenizer


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    from skimage import data

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "jobs"
    folder.mkdir()
    Image.fromarray(data.chelsea()).resize((96, 64)).save(folder / "cat.png")
    return folder


def job_dict(out: Path, prompts: list[str], **source) -> dict:
    return {
        "source": {"image": "cat.png", "prompt": "a photo of a cat", **source},
        "frames": {"prompts": prompts},
        "model": {"model": "tiny"},
        "settings": {"width": 64, "height": 64, "steps": 2, "start_step": 1},
        "output": {"folder": str(out)},
    }


def dump(folder: Path, job: dict) -> Path:
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def report_of(tmp_path, prompts, **source):
    data = job_dict(tmp_path / "out", prompts, **source)
    data["source"]["image"] = None
    return prompt_limits.check_prompts(AnimationJob.model_validate(data))


def test_long_prompts_are_neither_cut_nor_refused(workdir, tmp_path, capsys):
    """Once cut at 77 tokens (a warning) or refused (a subject after the limit): now chunks."""
    late = "a photo of a dog " + "walking " * 80 + "cat"
    report = report_of(tmp_path, ["a photo of a cat", late, LONG + "with a red hat", LONG + "with a blue hat"],
                       subject="cat")
    assert report.errors == [] and report.warnings == []
    path = dump(workdir, job_dict(tmp_path / "out", ["a photo of a cat sitting", LONG + "with a red hat"]))
    assert main(["validate", str(path)]) == 0
    assert "warning" not in capsys.readouterr().err


def test_operators_the_engine_cannot_run_fail_validate_and_run_before_prefect(workdir, tmp_path, capsys,
                                                                              monkeypatch):
    import importlib

    def no_prefect(*args, **kwargs):
        raise AssertionError("the flow must not start")

    monkeypatch.setattr(importlib.import_module("flows.animation"), "animate", no_prefect)
    report = report_of(tmp_path, ["a photo of a cat", "a photo of a cat.swap(dog)"])
    [(field, message)] = report.errors
    assert field == "frames.prompts[1]" and ".swap()" in message and "(word)1.3" in message
    path = dump(workdir, job_dict(tmp_path / "out", {0: "a photo of a cat", 5: "a cat.swap(dog)"}))
    for command in ("validate", "run"):
        assert main([command, str(path), "--no-progress"]) == EXIT_INVALID
        err = capsys.readouterr().err
        assert "invalid job" in err and "frames.prompts[5]" in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_groups_without_a_weight_warn_that_they_are_not_weighted(tmp_path):
    report = report_of(tmp_path, ["a photo of a (cat)", "a photo of a [cat]", "a photo of a (cat:1.3)",
                                  "a photo of a (cat)1.3", "a close-up photo of a cat++"])
    assert report.errors == []
    assert [f for f, _ in report.warnings] == ["frames.prompts[0]", "frames.prompts[1]"]
    assert "'(cat)'" in report.warnings[0][1] and "(word:1.1)" in report.warnings[0][1]
    assert "'[cat]'" in report.warnings[1][1]


def test_plain_prompts_are_never_parsed(tmp_path, monkeypatch):
    from masactrl_engine import conditioning

    def boom(prompt):
        raise AssertionError("no parsing needed for plain prompts")

    monkeypatch.setattr(conditioning, "parse_prompt", boom)
    report = report_of(tmp_path, ["a photo of a cat sitting", LONG], subject="cat")
    assert report.errors == [] and report.warnings == []
