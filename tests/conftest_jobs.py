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


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    """scikit-image's cat photo, 96x64, for the tests that run the animate flow."""
    from skimage import data

    path = tmp_path_factory.mktemp("src") / "cat.png"
    Image.fromarray(data.chelsea()).resize((96, 64)).save(path)
    return path


def tiny_job(cat: Path, out: Path, prompts, settings=None, output=None, frames=None, name=None):
    """An AnimationJob on the tiny model: 64x64, 2 steps, chunks of 2 frames, no MP4, no metrics."""
    from flows import AnimationJob

    data = {
        "source": {"image": str(cat), "prompt": "a photo of a cat"},
        "frames": {"prompts": list(prompts), **(frames or {})},
        "model": {"model": "tiny"},
        "settings": {"width": 64, "height": 64, "steps": 2, "start_step": 1, **(settings or {})},
        "output": {"folder": str(out), "fps": 4, "mp4": False, **(output or {})},
        "execution": {"chunk_size": 2, "batch_size": 2},
        "quality": {"metrics": False},
    }
    if name:
        data["name"] = name
    return AnimationJob.model_validate(data)
