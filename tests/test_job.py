"""The job model, job files / --set overrides and the job plan (hashes, poses, counts): no models loaded."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pydantic import ValidationError

from flows.job.model import (AnimationJob, JobInputError, ModelSpec, MovedFieldWarning, NotHashed, RenderSettings, SourceSpec,
                       describe_validation_error)
from flows.job.files import JobFileError, load_job, load_job_data, parse_override, set_dotted
from flows.job.plan import ANCHOR_SETTINGS, plan_job
from flows.jobdir.layout import folder_name

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WALK = EXAMPLES / "poses" / "walk"


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "src.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(path)
    return path


def base(image, tmp_path, **changes):
    data = {
        "source": {"image": str(image), "prompt": "a photo of a cat"},
        "frames": {"prompts": ["a cat standing", "a cat jumping"]},
        "settings": {"width": 64, "height": 64, "steps": 4, "start_step": 1},
        "output": {"folder": str(tmp_path / "out")},
    }
    for dotted, value in changes.items():
        set_dotted(data, dotted.split("."), value)
    return data


def test_defaults_and_single_prompt(image, tmp_path):
    job = AnimationJob.model_validate(base(image, tmp_path, **{"frames.prompts": "a cat sitting"}))
    assert job.frames.prompts == ["a cat sitting"]
    assert job.model.model == "tiny" and job.model.controlnet is None
    assert job.execution.runner is None and job.execution.workers == 1  # None: the deployment decides
    assert job.output.gif and job.output.mp4 and job.output.gif_loops == 0 and job.output.loop == "none"
    assert job.source.image.is_absolute()


def test_broadcast_and_count_rules(image, tmp_path):
    job = AnimationJob.model_validate(base(image, tmp_path, **{"frames.prompts": ["a cat walking"]}))
    assert job.frames.prompts_for(3, "src") == ["a cat walking"] * 3
    assert job.frames.prompts_for(None, "src") == ["a cat walking"]
    two = AnimationJob.model_validate(base(image, tmp_path))
    assert two.frames.prompts_for(2, "src") == ["a cat standing", "a cat jumping"]
    with pytest.raises(JobInputError, match=r"frames\.prompts: 2 prompts for 3 poses"):
        two.frames.prompts_for(3, "src")
    none = AnimationJob.model_validate(base(image, tmp_path, **{
        "frames.prompts": [], "frames.poses": {"kind": "openpose_json", "path": str(WALK)}, "model.controlnet": "tiny"}))
    assert none.frames.prompts_for(2, "a photo of a cat") == ["a photo of a cat"] * 2


def test_schema_has_descriptions_bounds_and_dropdowns():
    schema = AnimationJob.model_json_schema()
    defs = schema["$defs"]
    width = defs["RenderSettings"]["properties"]["width"]
    assert width["minimum"] == 64 and width["multipleOf"] == 8 and width["description"]
    assert defs["ModelSpec"]["properties"]["dtype"]["enum"] == ["auto", "float32", "float16", "bfloat16"]
    runner = defs["ExecutionSpec"]["properties"]["runner"]  # a dropdown, or empty for the deployment default
    assert {"enum": ["threads", "dask"], "type": "string"} in runner["anyOf"] and {"type": "null"} in runner["anyOf"]
    assert "discriminator" in json.dumps(defs["FramesSpec"]["properties"]["poses"])
    for name in ("SourceSpec", "FramesSpec", "ModelSpec", "RenderSettings", "OutputSpec"):
        for prop, spec in defs[name]["properties"].items():
            assert spec.get("description"), f"{name}.{prop} has no description"


def _not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello")
    return str(path)


def _a_file(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("x")
    return str(path)


INVALID = [
    ("source.image", lambda t: {"source.image": str(t / "missing.png")}),
    ("source.image", lambda t: {"source.image": _not_an_image(t)}),
    ("source.prompt", lambda t: {"source.image": None, "source.prompt": ""}),
    ("source.subject", lambda t: {"source.subject": "dog"}),
    ("source.mask_threshold", lambda t: {"source.mask_threshold": 1.5}),
    ("source.seed", lambda t: {"source.seed": -1}),
    ("source.fit", lambda t: {"source.fit": "zoom"}),
    ("frames.prompts", lambda t: {"frames.prompts": []}),
    ("frames.poses", lambda t: {"frames.poses": {"kind": "openpose_json", "path": str(t / "nope")},
                                "model.controlnet": "tiny"}),
    ("frames.poses", lambda t: {"frames.poses": {"kind": "bvh", "path": str(WALK)}, "model.controlnet": "tiny"}),
    ("model.controlnet", lambda t: {"frames.poses": {"kind": "openpose_json", "path": str(WALK)}}),
    ("model.controlnet", lambda t: {"model.model": "owner/some-model", "model.controlnet": "tiny"}),
    ("model.model", lambda t: {"model.model": str(t / "no-such-folder")}),
    ("model.model", lambda t: {"model.model": "not a model id!"}),
    ("model.model", lambda t: {"model.model": str(t)}),  # a folder, but no model_index.json
    ("model.device", lambda t: {"model.device": "gpu"}),
    ("model.dtype", lambda t: {"model.dtype": "float8"}),
    ("settings.width", lambda t: {"settings.width": 100}),
    ("settings.height", lambda t: {"settings.height": 32}),
    ("settings.steps", lambda t: {"settings.steps": 0}),
    ("settings.start_step", lambda t: {"settings.start_step": 4}),
    ("settings.start_layer", lambda t: {"settings.start_layer": -1}),  # the model bounds it above: plan time
    ("settings.guidance_scale", lambda t: {"settings.guidance_scale": -0.5}),
    ("settings.controlnet_scale", lambda t: {"settings.controlnet_scale": -1}),
    ("settings.controlnet_start", lambda t: {"settings.controlnet_start": 0.8, "settings.controlnet_end": 0.5}),
    ("settings.controlnet_end", lambda t: {"settings.controlnet_end": 1.5}),
    ("settings.frame_start", lambda t: {"settings.frame_start": "random"}),
    ("settings.strength", lambda t: {"settings.strength": 0}),
    ("settings.strength", lambda t: {"settings.strength": 1.5}),
    ("settings.strength", lambda t: {"settings.frame_start": "renoise", "settings.strength": 0.1}),  # 0 of 4 steps
    ("settings.seed", lambda t: {"settings.seed": "7"}),  # a seed is a number, not text
    ("settings.seed", lambda t: {"settings.seed": -1}),
    ("settings.cross_frame", lambda t: {"settings.cross_frame": "all"}),
    ("settings.anchor_frame", lambda t: {"settings.anchor_frame": -1}),
    ("settings.anchor_weight", lambda t: {"settings.anchor_weight": 0}),
    ("frames.overrides", lambda t: {"frames.overrides": [{"index": 0, "seed": 1}, {"index": 0, "prompt": "a cat"}]}),
    ("frames.overrides.0.controlnet_scale", lambda t: {"frames.overrides": [{"index": 0, "controlnet_scale": -1}]}),
    ("model.loras.0.path", lambda t: {"model.loras": [{"path": str(t / "missing.safetensors")}]}),
    ("quality.detector_dir", lambda t: {"quality.detector": "openpose"}),
    ("execution.batch_size", lambda t: {"execution.batch_size": 0}),
    ("execution.batch_size", lambda t: {"execution.batch_size": True}),  # a bool is not a number
    ("output.folder", lambda t: {"output.folder": str(t / "out" / ".." / "elsewhere")}),
    ("output.folder", lambda t: {"output.folder": "../escape"}),
    ("output.folder", lambda t: {"output.folder": _a_file(t)}),
    ("output.folder", lambda t: {"output.folder": "/"}),
    ("output.fps", lambda t: {"output.fps": 0}),
    ("output.fps", lambda t: {"output.fps": 500}),
    ("output.loop", lambda t: {"output.loop": -1}),
    ("execution.chunk_size", lambda t: {"execution.chunk_size": 0}),
    ("execution.chunk_size", lambda t: {"execution.chunk_size": True}),
    ("output.fsp", lambda t: {"output.fsp": 12}),  # typo: unknown keys are errors
    ("execution.runner", lambda t: {"execution.runner": "processes"}),
    ("execution.workers", lambda t: {"execution.workers": 0}),
    ("execution.dask_address", lambda t: {"execution.dask_address": "tcp://head:8786"}),  # runner is threads
]


@pytest.mark.parametrize("field,changes", INVALID, ids=[f"{f}-{i}" for i, (f, _) in enumerate(INVALID)])
def test_invalid_field_is_named_and_nothing_written(image, tmp_path, field, changes):
    data = base(image, tmp_path, **changes(tmp_path))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValidationError) as info:
        AnimationJob.model_validate(data)
    lines = describe_validation_error(info.value)
    assert any(field in line for line in lines), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # e.g. no output folder created


def test_checked_job_raises_invalid_job_with_each_field(image, tmp_path, monkeypatch):
    """What a flow does first: the job validated, then what only the worker checks; a refused job
    raises InvalidJob carrying (field, message) problems, in the lines the CLI prints."""
    import logging

    from flows.animation import checked_job
    from flows.job.model import InvalidJob

    logger = logging.getLogger("test")
    data = base(image, tmp_path, **{"settings.width": 100, "output.fps": 0})
    with pytest.raises(ValidationError) as direct:
        AnimationJob.model_validate(data)
    with pytest.raises(InvalidJob) as info:
        checked_job(data, logger)
    assert info.value.lines == describe_validation_error(direct.value)
    assert {field for field, _ in info.value.problems} == {"settings.width", "output.fps"}
    assert str(info.value) == "; ".join(info.value.lines)

    monkeypatch.setenv("MASACTRL_OUTPUT_ROOT", str(tmp_path / "results"))  # a server's output root
    with pytest.raises(InvalidJob) as info:
        checked_job(base(image, tmp_path), logger)
    [(field, message)] = info.value.problems
    assert field == "output.folder" and "outside the output root" in message
    monkeypatch.delenv("MASACTRL_OUTPUT_ROOT")
    job = checked_job(AnimationJob.model_validate(base(image, tmp_path)), logger)
    assert isinstance(job, AnimationJob) and not (tmp_path / "out").exists()


def test_subject_must_be_in_every_frame_prompt(image, tmp_path):
    ok = AnimationJob.model_validate(base(image, tmp_path, **{"source.subject": "cat"}))
    assert ok.source.subject == "cat"
    with pytest.raises(ValidationError, match=r"frames\.prompts\[1\]"):
        AnimationJob.model_validate(base(image, tmp_path, **{
            "source.subject": "cat", "frames.prompts": ["a cat standing", "a dog jumping"]}))


def test_synthesis_mode_needs_only_a_prompt(tmp_path):
    job = AnimationJob.model_validate({"source": {"prompt": "a photo of a cat", "seed": 3},
                                       "frames": {"prompts": ["a cat"]}, "output": {"folder": str(tmp_path)}})
    assert job.source.image is None and job.source.seed == 3


# ------------------------------------------------------------------ job files and --set


def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_job_file_paths_are_relative_to_the_file_and_output_to_the_cwd(tmp_path, monkeypatch):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    Image.new("RGB", (64, 64)).save(jobs / "cat.png")
    (jobs / "poses").mkdir()
    for name in sorted(p.name for p in WALK.iterdir())[:2]:
        (jobs / "poses" / name).write_bytes((WALK / name).read_bytes())
    write_yaml(jobs / "job.yaml", {
        "source": {"image": "cat.png", "prompt": "a photo of a cat"},
        "frames": {"prompts": "a cat walking", "poses": {"kind": "openpose_json", "path": "poses"}},
        "model": {"model": "tiny", "controlnet": "tiny"},
        "output": {"folder": "results"},
    })
    monkeypatch.chdir(tmp_path)
    job = load_job(jobs / "job.yaml")
    assert job.source.image == jobs / "cat.png"
    assert job.frames.poses.path == str(jobs / "poses")
    assert job.output.folder == tmp_path / "results"
    inbox_style = load_job(jobs / "job.yaml", output_base=jobs)
    assert inbox_style.output.folder == jobs / "results"
    # the form's per-kind pose field and a LoRA file resolve against the job file too
    from safetensors.numpy import save_file  # a whole file: validation reads its header

    save_file({"w": np.zeros(1, np.float32)}, str(jobs / "style.safetensors"))
    write_yaml(jobs / "form.yaml", {
        "source": {"image": "cat.png", "prompt": "a photo of a cat"},
        "frames": {"prompts": "a cat walking", "pose_json": {"path": "poses"}},
        "model": {"model": "tiny", "controlnet": "tiny", "loras": [{"path": "style.safetensors", "scale": 0.5}]},
    })
    form = load_job(jobs / "form.yaml")
    assert form.frames.poses.path == str(jobs / "poses") and form.frames.pose_json is None
    assert form.model.loras[0].path == str(jobs / "style.safetensors")


def test_set_overrides(image, tmp_path, monkeypatch):
    path = write_yaml(tmp_path / "job.yaml", base(image, tmp_path))
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "sub" / "other.png")
    monkeypatch.chdir(tmp_path / "sub")
    job = load_job(path, [
        "output.fps=12", "settings.steps=6", "output.gif=false", "frames.prompts.1=a cat sleeping",
        "source.image=other.png", "model.model=owner/name", "execution.runner=dask",
        "output.folder=results",
    ])
    assert job.output.fps == 12 and job.settings.steps == 6 and job.output.gif is False
    assert job.frames.prompts == ["a cat standing", "a cat sleeping"]
    assert job.source.image == tmp_path / "sub" / "other.png"  # --set paths are relative to the cwd
    assert job.model.model == "owner/name"  # hub ids are not paths
    assert job.execution.runner == "dask"
    assert job.output.folder == tmp_path / "sub" / "results"
    listed = load_job(path, ['frames.prompts=[a cat, "a cat: jumping"]'])
    assert listed.frames.prompts == ["a cat", "a cat: jumping"]
    colon = load_job(path, ["frames.prompts.0=a cat: jumping"])
    assert colon.frames.prompts[0] == "a cat: jumping"


@pytest.mark.parametrize("text,message", [("output.fps", "key=value"), ("=3", "key=value"), ("a..b=1", "empty part")])
def test_bad_override_syntax(text, message):
    with pytest.raises(JobFileError, match=message):
        parse_override(text)


def test_override_errors_name_the_key(image, tmp_path):
    path = write_yaml(tmp_path / "job.yaml", base(image, tmp_path))
    with pytest.raises(JobFileError, match="settings.steps is a value"):
        load_job_data(path, ["settings.steps.x=1"])
    with pytest.raises(JobFileError, match="frames.prompts.7"):
        load_job_data(path, ["frames.prompts.7=x"])
    with pytest.raises(ValidationError, match="output.fps"):
        load_job(path, ["output.fps=fast"])


def test_job_file_errors(tmp_path):
    with pytest.raises(JobFileError, match="not found"):
        load_job(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(JobFileError, match="mapping"):
        load_job(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("source: [\n")
    with pytest.raises(JobFileError, match="YAML"):
        load_job(tmp_path / "bad.yaml")


def test_json_job_file_may_wrap_the_job(image, tmp_path):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"job": base(image, tmp_path)}))
    assert load_job(path).frames.prompts == ["a cat standing", "a cat jumping"]


# ------------------------------------------------------------------ plan: hashes, poses, counts


def _other_value(model_cls, name, current):
    """A valid value different from ``current`` for any field type the job models use."""
    import typing

    if name == "device":
        return "cpu" if current != "cpu" else "cuda"
    info = model_cls.model_fields[name]
    bounds = {type(m).__name__: m for m in info.metadata}
    if isinstance(current, bool):
        return not current
    choices = [a for a in typing.get_args(info.annotation) if isinstance(a, str)]
    if choices:
        return next(c for c in choices if c != current)
    if isinstance(current, int):
        step = getattr(bounds.get("MultipleOf"), "multiple_of", 1)
        upper = getattr(bounds.get("Le"), "le", None)
        return current - step if upper is not None and current + step > upper else current + step
    if isinstance(current, float):
        return current / 2 if current else 0.5
    if isinstance(current, str) or current is None:
        return (current or "") + " lowres"
    raise AssertionError(f"no perturbation for {model_cls.__name__}.{name} = {current!r}")


def _hash_of(data):
    return plan_job(AnimationJob.model_validate(data), write=False).job_hash


def test_every_render_setting_changes_the_job_hash(image, tmp_path):
    """Walk every field of RenderSettings, so a setting added later is covered without editing this test."""
    data = base(image, tmp_path, **{"settings.steps": 8, "settings.start_step": 2, "settings.start_layer": 8})
    h = _hash_of(data)
    assert h == _hash_of(data)
    settings = AnimationJob.model_validate(data).settings
    anchored = {**{f"settings.{k}": v for k, v in data["settings"].items()}, "settings.cross_frame": "anchor",
                "frames.prompts": ["a cat", "a cat standing"]}
    for name in RenderSettings.model_fields:
        value = _other_value(RenderSettings, name, getattr(settings, name))
        changed = _hash_of(base(image, tmp_path, **{**{f"settings.{k}": v for k, v in data["settings"].items()},
                                                    f"settings.{name}": value}))
        if name in ANCHOR_SETTINGS:  # frames depend on them only when they attend to an anchor frame
            assert changed == h, name
            assert _hash_of(base(image, tmp_path, **{**anchored, f"settings.{name}": value})) != _hash_of(
                base(image, tmp_path, **anchored)), name
        else:
            assert changed != h, name


def test_source_and_model_fields_change_the_job_hash_unless_marked(image, tmp_path):
    data = base(image, tmp_path, **{"source.subject": "cat", "frames.prompts": ["a cat standing"]})
    h = _hash_of(data)
    job = AnimationJob.model_validate(data)
    for model_cls, section, current in ((SourceSpec, "source", job.source), (ModelSpec, "model", job.model)):
        for name, info in model_cls.model_fields.items():
            if name in ("image", "model", "controlnet", "prompt", "subject", "loras"):
                continue  # need valid files/ids or words of the prompts; covered below (LoRAs: test_families_job)
            value = _other_value(model_cls, name, getattr(current, name))
            changed = _hash_of(base(image, tmp_path, **{"source.subject": "cat", "frames.prompts": ["a cat standing"],
                                                        f"{section}.{name}": value}))
            marked = any(isinstance(m, NotHashed) for m in info.metadata)
            assert (changed == h) == marked, f"{section}.{name}"
    assert _hash_of(base(image, tmp_path, **{"frames.prompts": ["a photo of a cat standing"],
                                            "source.subject": "photo"})) != _hash_of(
        base(image, tmp_path, **{"frames.prompts": ["a photo of a cat standing"], "source.subject": "cat"}))
    assert _hash_of(base(image, tmp_path, **{"source.prompt": "a photo of one cat", "frames.prompts": ["a cat standing"],
                                            "source.subject": "cat"})) != h
    posed = {"frames.prompts": ["a cat walking"], "model.controlnet": "tiny",
             "frames.poses": {"kind": "openpose_json", "path": str(WALK)}}
    assert _hash_of(base(image, tmp_path, **posed)) != _hash_of(base(image, tmp_path, **posed,
                                                                     **{"settings.controlnet_scale": 0.5}))
    other = tmp_path / "other.png"
    Image.new("RGB", (80, 60), (1, 2, 3)).save(other)
    assert _hash_of(base(image, tmp_path, **{"source.image": str(other)})) != _hash_of(base(image, tmp_path))
    same_bytes = tmp_path / "copy.png"
    shutil.copy(image, same_bytes)  # another path, the same bytes: the same frames
    assert _hash_of(base(image, tmp_path, **{"source.image": str(same_bytes)})) == _hash_of(base(image, tmp_path))


def test_output_and_execution_never_change_the_frame_cache_key(image, tmp_path):
    h = _hash_of(base(image, tmp_path))
    for changes in ({"output.fps": 20}, {"output.gif": False}, {"output.mp4": False}, {"output.loop": 3},
                    {"execution.chunk_size": 1}, {"execution.batch_size": 1}, {"execution.workers": 2},
                    {"execution.runner": "dask"}, {"model.device": "cpu"}, {"name": "renamed"}):
        assert _hash_of(base(image, tmp_path, **changes)) == h, changes
    assert Path(plan_job(AnimationJob.model_validate(base(image, tmp_path, **{"output.folder": str(tmp_path / "o2")})),
                         write=False).job_dir).name == folder_name(h)


def test_inversion_key_ignores_masactrl_settings(image, tmp_path):
    def key(**changes):
        return plan_job(AnimationJob.model_validate(base(image, tmp_path, **changes)), write=False).inversion.key

    k = key()
    for changes in ({"settings.start_step": 2}, {"settings.start_layer": 8}, {"settings.guidance_scale": 3.0},
                    {"settings.controlnet_scale": 0.5}, {"source.subject": "cat", "frames.prompts": ["a cat"]}):
        assert key(**changes) == k, changes
    for changes in ({"settings.steps": 5}, {"settings.width": 72}, {"source.inversion_prompt": "x"},
                    {"source.fit": "stretch"}, {"model.dtype": "float16"}):
        assert key(**changes) != k, changes


def test_settings_checked_against_the_frames(image, tmp_path):
    with pytest.raises(JobInputError) as info:
        plan_job(AnimationJob.model_validate(base(image, tmp_path, **{"settings.cross_frame": "anchor",
                                                                      "settings.anchor_frame": 2})), write=False)
    assert info.value.field == "settings.anchor_frame" and "the job has 2 frames" in str(info.value)
    with pytest.raises(JobInputError) as info:
        plan_job(AnimationJob.model_validate(base(image, tmp_path, **{"frames.overrides": [{"index": 5, "seed": 3}]})),
                 write=False)
    assert info.value.field == "frames.overrides[0].index"
    with pytest.raises(JobInputError) as info:  # a seed without shared noise would be ignored: refuse it
        plan_job(AnimationJob.model_validate(base(image, tmp_path, **{"frames.overrides": [{"index": 1, "seed": 3}]})),
                 write=False)
    assert info.value.field == "frames.overrides[0].seed" and "frame_start: noise" in str(info.value)
    plan = plan_job(AnimationJob.model_validate(base(image, tmp_path, **{
        "settings.cross_frame": "anchor", "settings.anchor_frame": 1, "settings.frame_start": "noise",
        "frames.overrides": [{"index": 1, "seed": 3, "controlnet_scale": 0.5, "prompt": "a cat sitting"}]})),
        write=False)
    assert plan.frames[1].seed == 3 and plan.frames[1].controlnet_scale == 0.5 and plan.frames[1].prompt == "a cat sitting"
    assert plan.frames[0].seed is None and plan.anchor == plan.frames[1]
    assert all(c.anchor == plan.frames[1] for c in plan.chunks(1, 1, "inv"))
    other = plan_job(AnimationJob.model_validate(base(image, tmp_path, **{
        "settings.cross_frame": "anchor", "settings.anchor_frame": 1, "settings.frame_start": "noise",
        "frames.overrides": [{"index": 1, "seed": 4, "controlnet_scale": 0.5, "prompt": "a cat sitting"}]})),
        write=False)
    assert other.job_hash != plan.job_hash  # a frame's own seed is part of what it renders


def test_moved_fields_keep_old_job_files_working(image, tmp_path):
    data = base(image, tmp_path)
    data["settings"]["batch_size"] = 2
    data["output"]["chunk_size"] = 3
    with pytest.warns(MovedFieldWarning, match="settings.batch_size moved to execution.batch_size"):
        job = AnimationJob.model_validate(data)
    assert job.execution.batch_size == 2 and job.execution.chunk_size == 3
    data["execution"] = {"batch_size": 4}
    with pytest.raises(ValidationError, match="settings.batch_size moved to execution.batch_size, which is also set"):
        AnimationJob.model_validate(data)


def test_the_model_must_be_named(image, tmp_path, monkeypatch):
    monkeypatch.delenv("MASACTRL_MODEL", raising=False)
    with pytest.raises(ValidationError) as info:
        AnimationJob.model_validate(base(image, tmp_path))
    (line,) = describe_validation_error(info.value)
    assert line.startswith("model.model: no checkpoint named") and "MASACTRL_MODEL" in line
    monkeypatch.setenv("MASACTRL_MODEL", "tiny")  # the deployment's default
    assert AnimationJob.model_validate(base(image, tmp_path)).model.model == "tiny"


def test_plan_layout_and_no_writes_when_asked(image, tmp_path):
    job = AnimationJob.model_validate(base(image, tmp_path))
    plan = plan_job(job, write=False)
    assert Path(plan.job_dir) == tmp_path / "out" / folder_name(plan.job_hash)
    assert not (tmp_path / "out").exists()
    assert [f.prompt for f in plan.frames] == ["a cat standing", "a cat jumping"]
    chunks = plan.chunks(chunk_size=1, batch_size=1, inversion_dir="inv")
    assert [[f.index for f in c.frames] for c in chunks] == [[0], [1]]
    assert plan.inversion.key and Path(plan.inversion.folder).parent == tmp_path / "out" / "inversions"


def test_plan_with_poses_writes_pose_maps_and_checks_counts(image, tmp_path):
    changes = {"frames.prompts": ["a cat walking"], "model.controlnet": "tiny",
               "frames.poses": {"kind": "openpose_json", "path": str(WALK)}}
    job = AnimationJob.model_validate(base(image, tmp_path, **changes))
    plan = plan_job(job)
    n = len(list(WALK.glob("*.json")))
    assert len(plan.frames) == n and all(f.prompt == "a cat walking" for f in plan.frames)
    for f in plan.frames:
        with Image.open(f.pose) as pose:
            assert pose.size == (64, 64)
    assert (Path(plan.job_dir) / "job.json").is_file()
    bad = AnimationJob.model_validate(base(image, tmp_path / "x", **{**changes, "frames.prompts": ["a", "b", "c"]}))
    with pytest.raises(JobInputError, match=rf"frames\.prompts: 3 prompts for {n} poses"):
        plan_job(bad)
    assert not (tmp_path / "x" / "out").exists()


def test_example_job_files_are_valid(tmp_path):
    """Every job file in examples/jobs validates and plans (poses resolved) without loading a model;
    their source pictures ship in examples/jobs/sources."""
    examples = tmp_path / "examples"
    shutil.copytree(EXAMPLES / "jobs", examples / "jobs", ignore=shutil.ignore_patterns("out"))
    shutil.copytree(EXAMPLES / "poses", examples / "poses")
    files = sorted((examples / "jobs").glob("*.yaml"))
    assert len(files) >= 4
    for path in files:
        job = load_job(path, output_base=tmp_path)
        plan = plan_job(job, write=False)
        assert plan.frames, path.name
        if job.frames.poses is not None and job.frames.poses.kind == "keyframes":
            assert len(plan.frames) == job.frames.poses.frames
