"""Job files for the bad-input tests: a small cat picture in a jobs folder and a valid tiny job."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from PIL import Image


@pytest.fixture
def workdir(tmp_path):
    from skimage import data

    folder = tmp_path / "jobs"
    folder.mkdir()
    Image.fromarray(data.chelsea()).resize((96, 64)).save(folder / "cat.png")
    return folder


def base_job(out: Path, prompts: tuple[str, ...] = ("a photo of a cat sitting",)) -> dict:
    """A valid job on the tiny model (2 steps, 64x64) reading ``cat.png`` beside its file."""
    return {
        "source": {"image": "cat.png", "prompt": "a photo of a cat"},
        "frames": {"prompts": list(prompts)},
        "model": {"model": "tiny"},
        "settings": {"width": 64, "height": 64, "steps": 2, "start_step": 1},
        "output": {"folder": str(out)},
    }


def dump_job(path: Path, job: dict) -> Path:
    path.write_text(yaml.safe_dump(job))
    return path
