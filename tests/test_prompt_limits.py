"""Prompts against the text encoder's 77-token limit, checked
at `validate`/`run` time with the model's own tokenizer (the tiny checkpoint's here), before Prefect."""

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


def test_cut_prompt_warns_with_the_field_and_the_dropped_words(workdir, tmp_path, capsys):
    path = dump(workdir, job_dict(tmp_path / "out", ["a photo of a cat sitting", LONG + "with a red hat"]))
    assert main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning: frames.prompts[1]" in err, err
    assert "77" in err and "with a red hat" in err, err  # the dropped words are shown
    assert "frames.prompts[0]" not in err  # a short prompt is not mentioned


def test_prompts_equal_within_the_limit_warn_that_frames_come_out_identical(tmp_path):
    """Two frame prompts that differ only after the limit get the same conditioning."""
    report = report_of(tmp_path, [LONG + "with a red hat", LONG + "with a blue hat"])
    assert report.errors == []
    same = [m for f, m in report.warnings if "differ only after" in m]
    assert len(same) == 1 and "frames.prompts[0], frames.prompts[1]" in same[0], report.warnings
    assert "identical frames" in same[0]
    # prompts that differ within the limit do not trigger it
    report = report_of(tmp_path, ["a photo of a dog " + "walking " * 80, LONG])
    assert not [m for _, m in report.warnings if "differ only after" in m]


def test_subject_after_the_limit_is_one_error_naming_field_and_fix(tmp_path):
    report = report_of(tmp_path, ["a photo of a cat", "a photo of a dog " + "walking " * 80 + "cat"], subject="cat")
    [(field, message)] = report.errors
    assert field == "source.subject"
    assert "frames.prompts[1]" in message and "77-token limit" in message and "move 'cat' towards the front" in message
    # a subject word inside the limit is fine, even in a cut prompt
    report = report_of(tmp_path, ["a photo of a cat", LONG], subject="cat")
    assert report.errors == [] and report.warnings


def test_the_error_predicts_what_the_engine_would_do(tmp_path):
    """The check agrees with the engine's own subject lookup on the same tokenizer."""
    from masactrl_engine import EngineInputError
    from masactrl_engine.masks import subject_positions

    folder = prompt_limits.tokenizer_folder("tiny")
    tokenizer = prompt_limits.load_tokenizer(str(folder))
    late = "a photo of a dog " + "walking " * 80 + "cat"
    with pytest.raises(EngineInputError):
        subject_positions(tokenizer, late, "cat")
    assert subject_positions(tokenizer, LONG, "cat")


def test_subject_after_the_limit_fails_validate_and_run_before_prefect(workdir, tmp_path, capsys, monkeypatch):
    import importlib

    def no_prefect(*args, **kwargs):
        raise AssertionError("the flow must not start")

    monkeypatch.setattr(importlib.import_module("flows.animation"), "animate", no_prefect)
    job = job_dict(tmp_path / "out", ["a photo of a cat", "a photo of a dog " + "walking " * 80 + "cat"], subject="cat")
    path = dump(workdir, job)
    for command in ("validate", "run"):
        assert main([command, str(path), "--no-progress"]) == EXIT_INVALID
        err = capsys.readouterr().err
        assert "invalid job" in err and "source.subject" in err and "frames.prompts[1]" in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_short_prompts_never_load_a_tokenizer(tmp_path, monkeypatch):
    def boom(folder):
        raise AssertionError("no tokenizer needed for short prompts")

    monkeypatch.setattr(prompt_limits, "load_tokenizer", boom)
    report = report_of(tmp_path, ["a photo of a cat sitting", "a photo of a cat jumping"], subject="cat")
    assert report.errors == [] and report.warnings == []


def test_which_tokenizer(tmp_path, tiny_checkpoint):
    assert prompt_limits.tokenizer_folder("tiny") == prompt_limits.tokenizer_folder("tiny")  # stable
    assert prompt_limits.tokenizer_folder(str(tiny_checkpoint)) == Path(tiny_checkpoint) / "tokenizer"
    assert prompt_limits.token_limit(Path(tiny_checkpoint) / "tokenizer") == 77
    # a hub id not in the local cache, a folder without tokenizer: nothing to check with, no error
    assert prompt_limits.tokenizer_folder("nobody-here/no-such-model") is None
    assert prompt_limits.tokenizer_folder(str(tmp_path)) is None
    data = job_dict(tmp_path / "out", [LONG + "with a red hat"])
    data["source"]["image"] = None
    data["model"]["model"] = "nobody-here/no-such-model"
    report = prompt_limits.check_prompts(AnimationJob.model_validate(data))
    assert report.errors == [] and report.warnings == []
