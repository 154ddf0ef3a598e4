"""What a worker keeps between tasks stays bounded, and the inversion on disk is the one truth."""

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.execution import worker_cache
from flows.job.model import AnimationJob, ModelSpec
from flows.job.plan import control_config, plan_job
from flows.execution.rendering import ensure_inversion, load_inversion
from flows.jobdir.layout import folder_name

STEPS = 3


@pytest.fixture
def tiny_env(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("MASACTRL_TINY_DIR", str(tiny_checkpoint))
    worker_cache.clear()
    yield
    worker_cache.clear()


@pytest.fixture
def source_png(tmp_path):
    path = tmp_path / "src.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def job(source_png, tmp_path, **settings):
    return AnimationJob.model_validate({
        "source": {"image": str(source_png), "prompt": "a photo of a cat"},
        "frames": {"prompts": ["a cat"]},
        "model": {"model": "tiny"},
        "settings": {"width": 64, "height": 64, "steps": STEPS, "start_step": 1, **settings},
        "output": {"folder": str(tmp_path / "out")},
    })


def test_parse_bytes():
    assert worker_cache.parse_bytes("4GiB") == 4 << 30
    assert worker_cache.parse_bytes("512M") == 512 << 20
    assert worker_cache.parse_bytes("1000") == 1000
    with pytest.raises(ValueError, match="MASACTRL_ENGINE_CACHE_BYTES='lots' is not a size"):
        worker_cache.parse_bytes("lots")


def test_spellings_of_one_device_and_precision_share_one_pipeline(tiny_env):
    loads = worker_cache.pipeline_loads()
    a = worker_cache.get_pipeline(ModelSpec(model="tiny"))
    b = worker_cache.get_pipeline(ModelSpec(model="tiny", device="cpu", dtype="float32"))
    assert a is b and worker_cache.pipeline_loads() == loads + 1


def test_engines_stay_within_the_byte_budget(tiny_env, source_png, tmp_path):
    from masactrl_engine import InvertedSource

    plan = plan_job(job(source_png, tmp_path), write=False)
    ensure_inversion(plan.inversion)
    inv = InvertedSource.load(plan.inversion.folder)

    def render_with(guidance):
        config = control_config(job(source_png, tmp_path, guidance_scale=guidance).settings)
        slot = worker_cache.get_engine(ModelSpec(model="tiny"), config)
        slot.engine.render(inv, "a photo of a cat", ["a cat"], output_type="latent")
        return slot

    first = render_with(2.0)
    one_engine = worker_cache.cached_bytes()[next(k for k, s in worker_cache._engines.items() if s is first)]
    assert one_engine > 0  # the source branch's keys/values
    budget = int(2.5 * one_engine)
    for guidance in (2.5, 3.0, 3.5, 4.0, 4.5):  # six settings in all
        render_with(guidance)
        worker_cache.enforce_budget(budget)
        assert sum(worker_cache.cached_bytes().values()) <= budget
    # Engines of one pipeline share its source branches, holding the latest: the older engines
    # keep only their small caches, so none had to go (six render engines and the inversion's).
    assert worker_cache.engine_count() == 7
    assert worker_cache.pipeline_loads() >= 1


def test_frame_side_settings_share_one_source_branch(tiny_env, source_png, tmp_path):
    """A sweep over anchor weight x ControlNet scale: four engines, one source branch."""
    from masactrl_engine import FrameSpec, InvertedSource

    plan = plan_job(job(source_png, tmp_path), write=False)
    ensure_inversion(plan.inversion)
    inv = InvertedSource.load(plan.inversion.folder)
    model = ModelSpec(model="tiny", controlnet="tiny")
    pose = Image.new("RGB", (64, 64))
    source_samples, engines = [], set()
    for weight in (0.5, 1.0):
        for scale in (0.5, 1.0):
            settings = job(source_png, tmp_path, cross_frame="anchor", anchor_weight=weight,
                           controlnet_scale=scale).settings
            slot = worker_cache.get_engine(model, control_config(settings))
            slot.engine.render(inv, "a photo of a cat", [FrameSpec("a cat", pose=pose)] * 2, output_type="latent")
            source_samples.append(slot.engine.stats.source_samples)
            engines.add(id(slot.engine))
    assert len(engines) == 4
    # Two CFG samples per controlled step (T - S = 2), computed by the first engine only.
    assert source_samples == [2 * (STEPS - 1), 0, 0, 0]


def test_the_most_recent_engine_stays_even_over_budget(tiny_env):
    config = control_config(AnimationJob.model_validate({
        "source": {"prompt": "a cat"}, "frames": {"prompts": ["a cat"]}, "model": {"model": "tiny"},
        "settings": {"width": 64, "height": 64, "steps": STEPS, "start_step": 1}}).settings)
    worker_cache.get_engine(ModelSpec(model="tiny"), config)
    assert worker_cache.enforce_budget(0) == [] and worker_cache.engine_count() == 1


def test_inversion_cold_warm_deleted_and_corrupt(tiny_env, source_png, tmp_path, caplog):
    from masactrl_engine.inversion import TENSOR_FILE

    request = plan_job(job(source_png, tmp_path), write=False).inversion
    cold = ensure_inversion(request)
    assert cold.computed and cold.stats["inversion_calls"] == STEPS
    folder = Path(cold.path)
    assert folder.name == folder_name(request.key) and load_inversion(folder) is not None

    warm = ensure_inversion(request)
    assert not warm.computed and warm.stats == {}

    for name in folder.iterdir():
        name.unlink()
    folder.rmdir()
    assert ensure_inversion(request).computed  # deleted: computed again

    data = (folder / TENSOR_FILE).read_bytes()
    (folder / TENSOR_FILE).write_bytes(data[: len(data) // 2])  # truncated
    with caplog.at_level(logging.WARNING, logger="flows.execution.rendering"):
        again = ensure_inversion(request)
    assert again.computed
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "corrupt" in warnings[0] and "inverting again" in warnings[0]

    flipped = bytearray((folder / TENSOR_FILE).read_bytes())
    flipped[-5] ^= 0xFF  # valid file, wrong numbers: the digest catches it
    (folder / TENSOR_FILE).write_bytes(bytes(flipped))
    assert load_inversion(folder) is None
    assert ensure_inversion(request).computed and load_inversion(folder) is not None
