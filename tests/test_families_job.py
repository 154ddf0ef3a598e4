"""Model families and LoRAs as a job sees them: names, start-layer range, LoRA checks and hashing."""

import numpy as np
import pytest
from PIL import Image

from flows.job.model import AnimationJob, JobInputError
from flows.job.plan import plan_job


@pytest.fixture
def tiny_env(tiny_checkpoint, monkeypatch, tmp_path):
    monkeypatch.setenv("MASACTRL_TINY_DIR", str(tiny_checkpoint))
    image = tmp_path / "src.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
    return image


def job(image, tmp_path, model="tiny", **settings):
    model = model if isinstance(model, dict) else {"model": model}
    return AnimationJob.model_validate({
        "source": {"image": str(image), "prompt": "a photo of a cat"},
        "frames": {"prompts": ["a cat"]},
        "model": model,
        "settings": {"width": 64, "height": 64, "steps": 2, "start_step": 0, **settings},
        "output": {"folder": str(tmp_path / "out")},
    })


def test_start_layer_is_checked_against_the_models_blocks(tiny_env, tmp_path):
    plan_job(job(tiny_env, tmp_path, start_layer=15), write=False)
    with pytest.raises(JobInputError) as info:
        plan_job(job(tiny_env, tmp_path, start_layer=16), write=False)
    assert info.value.field == "settings.start_layer" and "0..15" in str(info.value)


@pytest.mark.slow
def test_tiny_sdxl_has_70_blocks(tiny_env, tmp_path):
    plan_job(job(tiny_env, tmp_path, model="tiny-sdxl", start_layer=64), write=False)
    with pytest.raises(JobInputError, match=r"settings\.start_layer: 70 .*0\.\.69"):
        plan_job(job(tiny_env, tmp_path, model="tiny-sdxl", start_layer=70), write=False)


def test_lora_bytes_change_the_job_hash_and_a_wrong_family_is_refused(tiny_env, tiny_checkpoint, tmp_path):
    from masactrl_engine.tiny.lora import make_tiny_lora

    a = make_tiny_lora(tmp_path / "a.safetensors", tiny_checkpoint, seed=1)
    plain = plan_job(job(tiny_env, tmp_path), write=False)
    with_a = plan_job(job(tiny_env, tmp_path, model={"model": "tiny", "loras": [{"path": str(a)}]}), write=False)
    assert with_a.job_hash != plain.job_hash
    half = plan_job(job(tiny_env, tmp_path, model={"model": "tiny", "loras": [{"path": str(a), "scale": 0.5}]}),
                    write=False)
    assert half.job_hash != with_a.job_hash
    make_tiny_lora(a, tiny_checkpoint, seed=2)  # same path, other bytes
    rewritten = plan_job(job(tiny_env, tmp_path, model={"model": "tiny", "loras": [{"path": str(a)}]}), write=False)
    assert rewritten.job_hash != with_a.job_hash
    assert plain.inversion.key != with_a.inversion.key  # the LoRA changes the weights the source is inverted with

    from flows.job.checkpoints import ensure_tiny_checkpoint

    sdxl_lora = make_tiny_lora(tmp_path / "xl.safetensors", ensure_tiny_checkpoint("tiny-sdxl"))
    with pytest.raises(JobInputError) as info:
        plan_job(job(tiny_env, tmp_path, model={"model": "tiny", "loras": [{"path": str(sdxl_lora)}]}), write=False)
    assert info.value.field.startswith("model.loras")
    assert not (tmp_path / "out").exists()


def test_lora_path_must_exist(tiny_env, tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="does not exist"):
        job(tiny_env, tmp_path, model={"model": "tiny", "loras": [{"path": str(tmp_path / "nope.safetensors")}]})


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_sdxl_families_render_end_to_end_through_the_flow(tiny_env, tmp_path):
    """The job names only the model: the family, its text conditioning, its block count and its
    scheduler come from the checkpoint; Turbo at guidance 0 costs one sample per frame and step."""
    from flows import animate

    walk = sorted((__import__("pathlib").Path(__file__).resolve().parent.parent / "examples" / "poses" / "walk")
                  .glob("*.json"))[:2]
    poses = tmp_path / "poses"
    poses.mkdir()
    for path in walk:
        (poses / path.name).write_text(path.read_text())
    sdxl = animate(job(tiny_env, tmp_path, model={"model": "tiny-sdxl", "controlnet": "tiny"}, steps=3, start_step=1,
                       start_layer=64).model_copy(update={"frames": AnimationJob.model_validate({
                           "source": {"prompt": "a cat"},
                           "frames": {"prompts": ["a cat"], "poses": {"kind": "openpose_json", "path": str(poses)}},
                           "model": {"model": "tiny", "controlnet": "tiny"}}).frames}))
    assert sdxl.frame_count == 2 and sdxl.unet_calls["controlnet_calls"] > 0
    assert sdxl.unet_calls["frame_samples"] == 2 * 2 * 3
    turbo = animate(job(tiny_env, tmp_path, model="tiny-sdxl-turbo", steps=4, start_step=0, guidance_scale=0.0,
                        start_layer=64))
    assert turbo.frame_count == 1 and turbo.unet_calls["frame_samples"] == 4  # one sample per step, no CFG pair
    assert turbo.unet_calls["inversion_calls"] == 4
