"""``AnimationJob``: the one parameter of the ``animate`` flow.

Prefect draws the deployment's run form from this model's JSON schema, so every field has a
description, a default where one makes sense, bounds and (for choices) a Literal dropdown.
Parameters stay small: paths and words, never pixels.

Validation checks everything that can be checked without a model: files exist and decode,
sizes, bounds, cross-field rules. Every error names its field (``source.image``,
``frames.prompts`` ...) and says how to fix it.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from pose_sources import PoseSpec
from pose_sources.spec import ImageSpec, KeyframesSpec, OpenPoseJsonSpec, PoseImagesSpec, VideoSpec

from flows.job.checks import (
    image_header,
    input_root_problem,
    output_root_problem,
    safetensors_problem,
    weights_files_problem,
)
from flows.job.hashing import NotHashed
from flows.job.runner_settings import RunnerSettings
from flows.job.sweep_axes import SweepError, flatten, frame_list, parse_axes
from flows.jobdir.layout import RESERVED_NAMES, is_job_folder_name

_RUNNER_FIELDS = RunnerSettings.model_fields

TINY = "tiny"
# The tiny offline checkpoints (random weights, noise by design) by name, and their model family.
TINY_MODELS = {"tiny": "sd15", "tiny-sd2": "sd2", "tiny-sdxl": "sdxl", "tiny-sdxl-turbo": "sdxl-turbo"}
MODEL_ENV = "MASACTRL_MODEL"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


class _Model(BaseModel):
    # Unknown keys are errors: a typo such as `fsp: 12` must not be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value, info):
        # pydantic's lax mode reads `true` as 1 for int and float fields: `chunk_size: true` is a
        # mistake, not a number.
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            annotation = cls.model_fields[info.field_name].annotation
            if annotation in (int, float) or set(getattr(annotation, "__args__", ())) & {int, float} and \
                    bool not in getattr(annotation, "__args__", ()):
                raise ValueError(f"{str(value).lower()} is not a number; write a number such as 4")
        return value


def _looks_local(text: str) -> bool:
    path = Path(text).expanduser()
    return path.is_absolute() or text.startswith((".", "~")) or path.exists()


def check_model_source(text: str, what: str, want: str) -> str:
    """'tiny', an existing diffusers folder or a hub id ('owner/name'); returns the cleaned value."""
    text = text.strip()
    if not text:
        raise ValueError(f"empty; give {want}")
    if text in TINY_MODELS:
        return text
    if _looks_local(text):
        path = Path(text).expanduser()
        if not path.is_dir():
            raise ValueError(f"{text!r} is not a folder; give {want}")
        if not (path / "model_index.json").is_file() and not (path / "config.json").is_file():
            raise ValueError(f"{text!r} holds no model_index.json or config.json, so it is not a diffusers {what} folder")
        return str(path.absolute())
    if not _HUB_ID.match(text):
        raise ValueError(f"{text!r} is neither an existing folder nor a hub id like 'owner/name'; give {want}")
    return text


def check_output_folder(path: Path) -> Path:
    """Refuse output folders that could escape or clobber: '..' parts, files, the filesystem root."""
    text = str(path)
    if not text.strip():
        raise ValueError("empty; give a folder for the results, e.g. 'out'")
    if ".." in Path(text).parts:
        raise ValueError(f"{text!r} contains '..'; give a folder without parent references (absolute or below the current folder)")
    if "\x00" in text:
        raise ValueError("contains a NUL character")
    expanded = Path(text).expanduser()
    if expanded.exists() and not expanded.is_dir():
        raise ValueError(f"{text!r} is an existing file, not a folder; pick another output folder")
    resolved = expanded.absolute()
    if resolved == Path(resolved.anchor) or resolved == Path.home():
        raise ValueError(f"{text!r} is the filesystem root or the home folder; use a subfolder such as 'out'")

    if (outside := output_root_problem(expanded)):  # $MASACTRL_OUTPUT_ROOT (server runs)
        raise ValueError(outside)
    return expanded


class SourceSpec(_Model):
    """The one picture whose subject every frame keeps."""

    model_config = ConfigDict(title="Source picture")

    image: Annotated[Optional[Path], NotHashed("its bytes are hashed, not its path")] = Field(
        None,
        description="The source picture (PNG, JPEG, WebP ...). Leave empty to generate the source from "
        "`prompt` and `seed` first (MasaCtrl's synthesis mode).",
    )
    prompt: str = Field(
        "",
        max_length=2000,
        description="Describes the source picture, e.g. 'a photo of a cat'; the frames are edits of this prompt. "
        "Required when no image is given: the source is then generated from it.",
    )
    fit: Literal["crop", "stretch"] = Field(
        "crop",
        description="How the picture is brought to the frame size when the aspect ratios differ: 'crop' cuts the "
        "centre out (no distortion), 'stretch' resizes the whole picture.",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Random seed for generating the source (synthesis mode only).")
    inversion_prompt: str = Field(
        "", max_length=2000, description="Prompt used for DDIM inversion of the source; the published default is empty."
    )
    subject: Optional[str] = Field(
        None,
        max_length=200,
        description="Word(s) naming the subject, e.g. 'cat', for mask-guided mutual self-attention; they must occur "
        "in the source prompt and in every frame prompt. Empty = no mask guidance.",
    )
    mask_threshold: float = Field(
        0.1, gt=0.0, lt=1.0, description="Threshold of the subject's cross-attention mask (only with `subject`)."
    )

    @field_validator("image")
    @classmethod
    def _image_readable(cls, value: Optional[Path]) -> Optional[Path]:
        if value is None or str(value).strip() in ("", "."):
            return None

        # Outside $MASACTRL_INPUT_ROOTS (server runs): refused before the file is even opened.
        if (outside := input_root_problem(value)):
            raise ValueError(outside)
        # From the file's header, without decoding a pixel (this runs at every validation): path
        # length, format, pixel count (a decompression bomb), mode, a PNG's chunks and checksums.
        # The pixels are decoded where they are used; corrupt compressed data fails there.
        image_header(value)
        return Path(value).expanduser().absolute()

    @field_validator("subject")
    @classmethod
    def _subject_words(cls, value: Optional[str]) -> Optional[str]:
        if value is None or not value.strip():
            return None
        return " ".join(value.split())

    @model_validator(mode="after")
    def _image_or_prompt(self):
        if self.image is None and not self.prompt.strip():
            raise ValueError(
                "source.image / source.prompt: give a source image, or a source prompt to generate one from"
            )
        return self


class FrameOverride(_Model):
    """One frame that differs from the rest."""

    model_config = ConfigDict(title="Frame override")

    index: int = Field(ge=0, strict=True, description="Which frame (0 = the first).")
    prompt: Optional[str] = Field(None, max_length=2000, description="This frame's prompt instead of the sequence's.")
    seed: Optional[int] = Field(None, ge=0, le=2**32 - 1, strict=True,
                                description="This frame's own start noise (settings.frame_start 'noise').")
    controlnet_scale: Optional[float] = Field(
        None, ge=0.0, le=5.0, description="This frame's ControlNet scale, e.g. to fade a pose in or out (0 = no pose)."
    )


# FramesSpec's form fields, one per pose kind, and the kind each one selects.
POSE_FIELDS = {"pose_json": "openpose_json", "pose_images": "images", "pose_video": "video",
               "pose_image": "image", "pose_keyframes": "keyframes"}


class FramesSpec(_Model):
    """What the frames show: prompts, poses, or both."""

    model_config = ConfigDict(title="Frames")

    prompts: Union[Annotated[list[Annotated[str, Field(max_length=2000)]], Field(max_length=10000)],
                   Annotated[dict[Annotated[int, Field(ge=0, le=9999)], Annotated[str, Field(max_length=2000)]],
                             Field(max_length=10000)]] = Field(
        default_factory=list,
        description="One prompt per frame, e.g. ['a cat sitting', 'a cat standing'], or keyframes {frame: prompt}, "
        "e.g. {0: 'a cat sitting', 12: 'a cat standing'}: frames between two keyframes get conditioning "
        "interpolated between theirs (frames.prompt_interpolation). With poses, a single prompt is used for every "
        "pose; an empty list uses the source prompt for every pose. Weights: (word)1.3 or (word:1.3); prompts "
        "longer than 77 tokens are encoded in chunks.",
    )
    prompt_interpolation: Literal["linear", "slerp", "hold"] = Field(
        "linear",
        description="Between prompt keyframes: 'linear' mixes the two keyframes' text conditioning, 'slerp' "
        "interpolates each token vector on the sphere, 'hold' keeps the earlier keyframe's prompt until the next.",
    )
    poses: Optional[PoseSpec] = Field(
        None,
        description="Pose source driving the frames through ControlNet OpenPose (OpenPose JSON, pose images, a "
        "driving video, one picture or keyframes). With several prompts the counts must match. In a form, the "
        "'Pose source: ...' fields below set the same thing, one kind each.",
    )
    # One optional field per pose kind, beside `poses`. Why: Prefect's V1 UI (the one `serve` links
    # to) draws a discriminated union such as `poses` as a raw JSON box, so choosing a pose source
    # there meant typing JSON; an optional single model is drawn as a form (toggle it from None).
    # The V2 UI draws `poses` itself as one tab per kind. At most one of these and `poses` may be
    # set; `_pose_field_onto_poses` moves it onto `poses` and clears it, so the rest of the code
    # (and a dump validated again) only sees `frames.poses`. Job files keep `frames.poses`.
    pose_json: Optional[OpenPoseJsonSpec] = Field(
        None, title="Pose source: OpenPose JSON files",
        description="Poses from OpenPose JSON files (OpenPose, DWPose, pose editors), one per frame.")
    pose_images: Optional[PoseImagesSpec] = Field(
        None, title="Pose source: pose map images", description="Already-rendered pose maps, one per frame.")
    pose_video: Optional[VideoSpec] = Field(
        None, title="Pose source: driving video", description="Poses detected in a driving video, one per frame.")
    pose_image: Optional[ImageSpec] = Field(
        None, title="Pose source: one picture", description="The pose of a person in one picture, as one frame.")
    pose_keyframes: Optional[KeyframesSpec] = Field(
        None, title="Pose source: keyframes", description="A few key poses, interpolated to a number of frames.")

    overrides: list[FrameOverride] = Field(
        default_factory=list, max_length=10000,
        description="Frames that differ from the rest: their own prompt, seed or ControlNet scale.",
    )

    @field_validator("prompts", mode="before")
    @classmethod
    def _one_prompt(cls, value):
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _pose_field_onto_poses(self):
        given = [name for name in POSE_FIELDS if getattr(self, name) is not None]
        if self.poses is not None:
            given.insert(0, "poses")
        if len(given) > 1:
            raise ValueError(f"frames.{' / frames.'.join(given)}: {len(given)} pose sources given; keep one")
        if given and given[0] != "poses":
            # Written past validate_assignment on purpose: the value is already validated, and
            # assigning would run these validators again halfway through the move.
            spec = getattr(self, given[0])
            spec.__pydantic_fields_set__.add("kind")  # so that a dump without defaults still says which
            self.__dict__["poses"], self.__dict__[given[0]] = spec, None
            self.__pydantic_fields_set__.add("poses")
            self.__pydantic_fields_set__.discard(given[0])
        return self

    @model_validator(mode="after")
    def _detector_weights_readable(self, info: ValidationInfo):
        # pose_sources checks that the weights files exist; their headers are checked here, so a
        # cut or foreign file is named before the detector is built from it.
        poses = self.poses
        if getattr(poses, "detector", None) != "openpose" or not getattr(poses, "detector_dir", None):
            return self
        if not (info.context or {}).get("check_paths", True):
            return self
        from pose_sources.openpose_detector import BODY_WEIGHTS, FACE_WEIGHTS, HAND_WEIGHTS


        names = [BODY_WEIGHTS] + [HAND_WEIGHTS] * poses.hands + [FACE_WEIGHTS] * poses.face
        if (problem := weights_files_problem(poses.detector_dir, names)):
            raise ValueError(f"frames.poses.detector_dir: {problem}; put the OpenPose weights from "
                             "lllyasviel/Annotators there, or use detector 'mediapipe'")
        return self

    @model_validator(mode="after")
    def _something_to_render(self):
        if not self.prompts and self.poses is None:
            raise ValueError("frames.prompts: give at least one prompt (or frames.poses to drive the frames by poses)")
        seen = set()
        for k, override in enumerate(self.overrides):
            if override.index in seen:
                raise ValueError(f"frames.overrides[{k}].index: frame {override.index} is overridden twice; merge them")
            seen.add(override.index)
        return self

    def labelled_prompts(self) -> list[tuple[str, str]]:
        """``(field, prompt)`` for every prompt given: ``frames.prompts[i]`` by list index or keyframe."""
        items = self.prompts.items() if isinstance(self.prompts, dict) else enumerate(self.prompts)
        return [(f"frames.prompts[{key}]", prompt) for key, prompt in items]

    def prompt_travel(self, pose_count: Optional[int],
                      source_prompt: str) -> list[tuple[str, Optional[str], Optional[float]]]:
        """Each frame's ``(prompt, prompt_to, travel)``: ``prompt_to`` and ``travel`` only for frames
        strictly between two keyframes with 'linear' or 'slerp' (a keyframe's frame, and every
        frame under 'hold', is its prompt alone). Frames before the first keyframe take its prompt,
        frames after the last one the last's; without poses the last keyframe is the last frame."""
        if not isinstance(self.prompts, dict):
            return [(p, None, None) for p in self.prompts_for(pose_count, source_prompt)]
        keys = sorted(self.prompts)
        count = keys[-1] + 1 if pose_count is None else pose_count
        if keys[-1] >= count:
            raise JobInputError(f"frames.prompts[{keys[-1]}]",
                                f"keyframe {keys[-1]} is past the last of the {count} poses (0-{count - 1}); "
                                "move it to a pose's frame")
        frames = []
        for f in range(count):
            before = max((k for k in keys if k <= f), default=keys[0])
            after = min((k for k in keys if k > f), default=None)
            if f <= before or after is None or self.prompt_interpolation == "hold":
                frames.append((self.prompts[before], None, None))
            else:
                frames.append((self.prompts[before], self.prompts[after], (f - before) / (after - before)))
        return frames

    def prompts_for(self, pose_count: Optional[int], source_prompt: str) -> list[str]:
        """The prompt of each frame: broadcast one prompt over the poses; check counts (keyframes: the
        earlier keyframe's prompt of each frame, see ``prompt_travel``)."""
        if isinstance(self.prompts, dict):
            return [prompt for prompt, _, _ in self.prompt_travel(pose_count, source_prompt)]
        if pose_count is None:
            return list(self.prompts)
        if not self.prompts:
            return [source_prompt] * pose_count
        if len(self.prompts) == 1:
            return list(self.prompts) * pose_count
        if len(self.prompts) != pose_count:
            raise JobInputError(
                "frames.prompts",
                f"{len(self.prompts)} prompts for {pose_count} poses; give one prompt per pose, or a single prompt "
                "for all of them",
            )
        return list(self.prompts)


class LoraSpec(_Model):
    """A LoRA fine-tune fused into the checkpoint's weights."""

    model_config = ConfigDict(title="LoRA")

    path: Annotated[str, NotHashed("hashed by content: the file's sha256")] = Field(
        description="A local .safetensors file, a folder holding pytorch_lora_weights.safetensors, or a hub id.",
    )
    scale: float = Field(1.0, ge=-5.0, le=5.0, description="How strongly it applies (1 = as trained, 0 = not at all).")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("empty; give a .safetensors file, a LoRA folder or a hub id")
        if _looks_local(value):
            path = Path(value).expanduser()
            if not path.exists():
                raise ValueError(f"{value!r} does not exist; give a .safetensors file or a LoRA folder")
            _check_lora_file(value)
            return str(path.absolute())
        if not _HUB_ID.match(value):
            raise ValueError(f"{value!r} is neither an existing file nor a hub id like 'owner/name'")
        return value


def _check_lora_file(value: str) -> None:
    """The local LoRA file (or the one in a LoRA folder) must be a whole safetensors file. From its
    header only: what is not would crash `validate` inside safetensors."""
    from masactrl_engine import EngineInputError
    from masactrl_engine.loading import lora_file


    try:
        path = lora_file(value, field="path")  # the folder's pytorch_lora_weights.safetensors, ...
    except EngineInputError as exc:
        raise ValueError(str(exc).removeprefix("path: ")) from None
    if (problem := safetensors_problem(path)):
        where = f"{value!r}" if Path(value).expanduser().is_file() else f"{str(path)!r} (in {value!r})"
        raise ValueError(f"{where} is not a safetensors file ({problem}); give a LoRA saved as .safetensors")


class ModelSpec(_Model):
    """Which Stable Diffusion checkpoint (and OpenPose ControlNet) renders the frames."""

    model_config = ConfigDict(title="Model")

    model: Optional[str] = Field(
        None,
        validate_default=True,
        description="Stable Diffusion checkpoint: a local diffusers folder or a hub id such as "
        "'stable-diffusion-v1-5/stable-diffusion-v1-5'. Empty: the deployment's default ($MASACTRL_MODEL). "
        "'tiny' is a tiny offline model with random weights for tests and demos: it draws noise by design.",
    )
    controlnet: Optional[str] = Field(
        None,
        description="OpenPose ControlNet: a local folder, a hub id such as 'lllyasviel/sd-controlnet-openpose', or "
        "'tiny' (with the tiny model). Needed when frames.poses is set.",
    )
    device: Annotated[Optional[str], NotHashed("the device changes float noise, not the frames")] = Field(
        None, description="Torch device: 'cuda', 'cuda:1', 'cpu'. Empty = CUDA when available."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weights' precision: 'auto' = float16 on CUDA, float32 on CPU."
    )
    loras: list[LoraSpec] = Field(
        default_factory=list, max_length=16,
        description="LoRA fine-tunes fused into the model once per worker process; each must be made for the "
        "model's family (SD 1.x, SD 2.x or SDXL).",
    )

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, value: Optional[str]) -> str:
        if value is None or (isinstance(value, str) and not value.strip()):
            value = os.environ.get(MODEL_ENV, "").strip()
            if not value:
                raise ValueError(
                    f"no checkpoint named; set model.model to a diffusers folder or a hub id such as "
                    f"'stable-diffusion-v1-5/stable-diffusion-v1-5' (or set {MODEL_ENV} as the deployment's default)"
                )
        if not isinstance(value, str):
            raise ValueError(f"expected a folder or hub id as text, got {type(value).__name__}")
        return check_model_source(value, "checkpoint", "a checkpoint folder, a hub id or 'tiny'")

    @field_validator("controlnet")
    @classmethod
    def _controlnet(cls, value: Optional[str]) -> Optional[str]:
        if value is None or not value.strip():
            return None
        return check_model_source(value, "ControlNet", "a ControlNet folder, a hub id or 'tiny'")

    @field_validator("device")
    @classmethod
    def _device(cls, value: Optional[str]) -> Optional[str]:
        if value is None or not value.strip():
            return None
        if not _DEVICE.match(value.strip()):
            raise ValueError(f"{value!r} is not a torch device; use 'cuda', 'cuda:N', 'cpu' or 'mps'")
        return value.strip()

    @model_validator(mode="after")
    def _tiny_pairs(self):
        if self.controlnet == TINY and self.model not in TINY_MODELS:
            raise ValueError("model.controlnet: 'tiny' only fits the tiny models; give an OpenPose ControlNet for this "
                             "checkpoint")
        return self


class RenderSettings(_Model):
    """Sampler and MasaCtrl settings shared by every frame: everything here changes pixels.

    Field names follow ``masactrl_engine.ControlConfig`` (``steps`` is its ``num_steps``), and
    the engine's config is derived from this model mechanically (``flows.job.plan.control_config``).
    """

    model_config = ConfigDict(title="Render settings")

    width: int = Field(512, ge=64, le=2048, multiple_of=8, description="Frame width in pixels (multiple of 8).")
    height: int = Field(512, ge=64, le=2048, multiple_of=8, description="Frame height in pixels (multiple of 8).")
    steps: int = Field(50, ge=1, le=1000, description="DDIM denoising steps (inversion uses the same number).")
    guidance_scale: float = Field(
        7.5, ge=0.0, le=30.0,
        description="Classifier-free guidance scale. At 1 or below guidance is off: one UNet sample per frame and "
        "step instead of a pair (few-step models such as SDXL-Turbo use 0).",
    )
    start_step: int = Field(
        4, ge=0, le=999, description="MasaCtrl control starts at this denoising step (must be below `steps`)."
    )
    start_layer: int = Field(
        10, ge=0, le=999,
        description="MasaCtrl control acts in transformer blocks from this index on, counted in execution order: "
        "SD 1.x/2.x have 0-15 (published default 10), SDXL 0-69 (published SDXL script: 44, 54 or 64). Checked "
        "against the model when the job is resolved.",
    )
    source_correction: bool = Field(
        True, description="Keep the source branch on the inversion trajectory (reproduces the source exactly)."
    )
    controlnet_scale: float = Field(1.0, ge=0.0, le=5.0, description="ControlNet conditioning scale for the poses.")
    controlnet_start: float = Field(
        0.0, ge=0.0, lt=1.0, description="Poses guide the frames from this fraction of the steps on (0 = from the start)."
    )
    controlnet_end: float = Field(
        1.0, gt=0.0, le=1.0, description="...and until this fraction of the steps (1 = to the end). Must exceed the start."
    )
    negative_prompt: str = Field("", max_length=2000, description="Negative prompt for classifier-free guidance.")
    frame_start: Literal["inverted", "noise", "renoise"] = Field(
        "inverted",
        description="Where every frame starts. 'inverted' (published): the source's inverted noise; keeps the "
        "source's layout, so a pose far from the source's may be ignored. 'noise': one shared random noise from "
        "`seed`; layout from prompt and pose, identity from mutual attention. 'renoise': the source partly "
        "re-noised (`strength`); cheaper, stays close to the source.",
    )
    strength: float = Field(
        1.0, gt=0.0, le=1.0,
        description="'renoise' only: how much of the source is re-noised; frames run strength x steps steps "
        "(1 = the same as 'inverted').",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, strict=True,
                      description="'noise' only: seed of the shared start noise (frames may override it).")
    cross_frame: Literal["none", "anchor"] = Field(
        "none",
        description="What frames attend to. 'none' (published): the source only. 'anchor': the source and one "
        "anchor frame, so details agree from frame to frame (less flicker); costs one extra frame render.",
    )
    anchor_frame: int = Field(0, ge=0, strict=True, description="'anchor' only: index of the anchor frame.")
    anchor_weight: float = Field(
        1.0, gt=0.0, allow_inf_nan=False,  # the engine's own bounds: any finite weight above 0
        description="'anchor' only: weight of the anchor frame against the source (above 1 leans on the anchor, "
        "below 1 on the source).",
    )

    @model_validator(mode="after")
    def _window(self):
        if self.start_step >= self.steps:
            raise ValueError(
                f"settings.start_step: {self.start_step} must be below settings.steps ({self.steps}); lower it or raise steps"
            )
        if self.controlnet_start >= self.controlnet_end:
            raise ValueError(f"settings.controlnet_start: {self.controlnet_start} must be below settings.controlnet_end "
                             f"({self.controlnet_end})")
        if self.frame_start == "renoise" and round((1 - self.strength) * self.steps) >= self.steps:
            raise ValueError(f"settings.strength: {self.strength} leaves no step of {self.steps}; use at least "
                             f"{1 / self.steps:.3g}")
        return self


# GIF delays are whole hundredths of a second, and viewers slow delays under 2 to 10.
MAX_GIF_FPS = 50


class OutputSpec(_Model):
    """Where results go and how they are encoded."""

    model_config = ConfigDict(title="Output")

    folder: Path = Field(
        Path("out"),
        description="Results go to a subfolder named by the job's hash: FOLDER/JOB-HASH/ (frames, GIF, MP4, "
        "contact sheet). No '..' parts.",
    )
    fps: float = Field(8.0, gt=0.0, le=60.0, description="Rendered frames per second. The GIF and MP4 play "
                       "fps x interpolate frames a second (the same pace with in-between frames), or playback_fps.")
    gif: bool = Field(True, description="Write animation.gif.")
    mp4: bool = Field(True, description="Write animation.mp4 (H.264, yuv420p).")
    gif_loops: int = Field(0, ge=0, le=65535, description="How often the GIF repeats: 0 = forever.")
    interpolate: int = Field(1, ge=1, le=8, strict=True, description="Show each pair of rendered frames this many "
                             "frames apart: interpolate - 1 in-between frames by optical-flow warping (no model, "
                             "no frame rendered) between each pair. 1 = none.")
    loop: Literal["none", "pingpong", "crossfade"] = Field(
        "none", description="How the animation comes back to its first frame: 'none' (it jumps), 'pingpong' "
        "(plays forward, then backward), 'crossfade' (in-between frames from the last frame to the first; needs "
        "interpolate of 2 or more).")
    playback_fps: Optional[float] = Field(None, gt=0.0, le=60.0, description="Frames per second of the GIF and "
                                          "MP4, in-between frames included. Empty: fps x interpolate.")

    @model_validator(mode="before")
    @classmethod
    def _old_loop_count(cls, data: Any) -> Any:
        # output.loop used to be the GIF's loop count; a job file that still gives a number means that.
        if isinstance(data, dict) and type(data.get("loop")) is int and data["loop"] >= 0:
            if "gif_loops" in data:
                raise ValueError("output.loop: a number here is the old GIF loop count, and output.gif_loops is "
                                 "also set; remove the number from output.loop")
            data = {k: v for k, v in data.items() if k != "loop"} | {"gif_loops": data["loop"]}
            warnings.warn("output.loop as a number (the GIF loop count) moved to output.gif_loops; output.loop is "
                          "now none, pingpong or crossfade: update the job file", MovedFieldWarning, stacklevel=2)
        return data

    @field_validator("folder")
    @classmethod
    def _safe_folder(cls, value: Path) -> Path:
        return check_output_folder(value)

    @model_validator(mode="after")
    def _playable(self):
        if self.loop == "crossfade" and self.interpolate < 2:
            raise ValueError("output.loop: crossfade makes in-between frames from the last frame to the first; set "
                             "output.interpolate to 2 or more, or use loop: pingpong")
        too_fast = self.playback_fps is None and self.fps * self.interpolate > MAX_GIF_FPS
        if self.gif and self.interpolate > 1 and too_fast:
            raise ValueError(f"output.interpolate: {self.fps:g} fps x {self.interpolate} = "
                             f"{self.fps * self.interpolate:g} frames a second, more than a GIF plays ({MAX_GIF_FPS}); "
                             "lower output.interpolate or output.fps, or set output.playback_fps")
        return self

    @property
    def frame_rate(self) -> float:
        """Frames per second of the GIF and MP4, in-between frames included."""
        return self.playback_fps if self.playback_fps is not None else self.fps * self.interpolate


class ExecutionSpec(_Model):
    """Where and in what units the render tasks run; nothing here changes a pixel."""

    model_config = ConfigDict(title="Execution")

    chunk_size: int = Field(4, ge=1, le=1000, strict=True,
                            description="Frames per render task (the unit of retries and fan-out).")
    batch_size: int = Field(4, ge=1, le=64, strict=True,
                            description="Frames per UNet batch inside a render task (lower it on small GPUs).")

    # The runners themselves are described once, in flows/job/runner_settings.py (RunnerSettings).
    runner: Optional[Literal["threads", "dask"]] = Field(
        None, description=_RUNNER_FIELDS["kind"].description + " The address: 'Dask Address' "
        "(execution.dask_address in a job file). Empty: the deployment's default "
        "($MASACTRL_RUNNER / $MASACTRL_DASK_ADDRESS), else threads.",
    )
    workers: int = Field(1, ge=1, le=64, description="How many at once: threads (runner 'threads') or worker "
                         "processes of a local cluster (runner 'dask').")
    dask_address: Optional[str] = Field(None, description=_RUNNER_FIELDS["scheduler_address"].description)

    @model_validator(mode="after")
    def _address_needs_dask(self):
        if self.dask_address and self.runner != "dask":
            raise ValueError("execution.dask_address only applies to runner 'dask'; set execution.runner: dask "
                             "or remove execution.dask_address")
        return self


class MovedFieldWarning(UserWarning):
    """A job file uses a field's old place."""


class QualitySpec(_Model):
    """The numbers measured on every finished job (metrics.json); nothing here changes a pixel."""

    model_config = ConfigDict(title="Quality metrics")

    metrics: bool = Field(True, description="Measure flicker, colour consistency, pose fidelity and source PSNR "
                          "after stitching (metrics.json and a table in the run's artifacts).")
    detector: Literal["mediapipe", "openpose"] = Field(
        "mediapipe", description="Pose detector for pose fidelity: 'mediapipe' ships with the project; 'openpose' "
        "needs its weights in detector_dir.")
    detector_dir: Optional[Path] = Field(None, description="Folder with OpenPose weights (body_pose_model.pth), "
                                         "for detector 'openpose'.")

    @model_validator(mode="after")
    def _weights_for_openpose(self):
        if self.detector == "openpose":
            if self.detector_dir is None:
                raise ValueError("quality.detector_dir: detector 'openpose' needs the folder of its weights "
                                 "(body_pose_model.pth); or use detector 'mediapipe'")
            if not Path(self.detector_dir).expanduser().is_dir():
                raise ValueError(f"quality.detector_dir: {str(self.detector_dir)!r} is not a folder")
            # Loaded only after the frames are rendered: a missing or broken file must fail now.
            from pose_sources.openpose_detector import BODY_WEIGHTS


            if (problem := weights_files_problem(self.detector_dir, [BODY_WEIGHTS])):
                raise ValueError(f"quality.detector_dir: {problem}; put the OpenPose weights from "
                                 "lllyasviel/Annotators there, or use detector 'mediapipe'")
        return self


class SweepSection(_Model):
    """A grid of settings for ``masactrl-animate sweep`` (flows/sweep.py). The ``animate``
    flow ignores it (it renders the job's own settings), so one job file serves both commands."""

    model_config = ConfigDict(title="Sweep")

    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Setting -> the values to try, e.g. {'settings.start_step': [2, 4, 8], "
        "'settings.start_layer': [8, 10]}; every combination is one cell.",
    )
    frames: Optional[list[int]] = Field(
        None, description="Frame indices rendered per cell; empty = up to 4 spread over the sequence.")

    @model_validator(mode="before")
    @classmethod
    def _flat_form(cls, data: Any) -> Any:
        # A job file may write the settings right under `sweep:` (``sweep: {settings.start_step: [2, 4]}``
        # or nested ``sweep: {settings: {start_step: [2, 4]}}``) beside `frames`; they belong to `grid`.
        if not isinstance(data, dict):
            return data
        rest = {k: v for k, v in data.items() if k not in ("grid", "frames")}
        grid = data.get("grid") or {}
        if not isinstance(grid, dict):
            return data  # the field's own type error names sweep.grid
        try:
            flat = {**flatten(rest), **flatten(grid)}
        except SweepError as exc:
            raise ValueError(str(exc)) from None
        return {"grid": flat, **({"frames": data["frames"]} if "frames" in data else {})}

    @model_validator(mode="after")
    def _valid_frames(self):
        # The axes are typed by the whole job model, in AnimationJob._typed_sweep.
        try:
            object.__setattr__(self, "frames", frame_list(self.frames))
        except SweepError as exc:
            raise ValueError(str(exc)) from None
        return self


# Fields that moved between sections: old job files keep working, with a warning naming the new place.
MOVED_FIELDS = {("settings", "batch_size"): ("execution", "batch_size"),
                ("output", "chunk_size"): ("execution", "chunk_size")}


class AnimationJob(_Model):
    """One source picture in, a consistent animation out."""

    model_config = ConfigDict(title="Animation job")

    name: Annotated[Optional[str], NotHashed("a label for runs and folders")] = Field(
        None, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Optional label: names the flow runs and OUTPUT/NAME/latest (the newest result of this name)."
    )
    source: SourceSpec = Field(description="The source picture (or the prompt to generate it from).")
    frames: FramesSpec = Field(description="The frames: prompts, poses, or both.")
    # Validated even when absent, so a job without a model section fails on `model.model` unless the
    # deployment names a default checkpoint.
    model: ModelSpec = Field(default_factory=dict, validate_default=True, description="Checkpoint and ControlNet.")
    settings: RenderSettings = Field(default_factory=RenderSettings, description="Size, steps, guidance, MasaCtrl window.")
    output: Annotated[OutputSpec, NotHashed("where and how results are written")] = Field(
        default_factory=OutputSpec, description="Output folder and formats.")
    execution: Annotated[ExecutionSpec, NotHashed("where frames are computed, not what they are")] = Field(
        default_factory=ExecutionSpec, description="Task runner for the render tasks.")
    quality: Annotated[QualitySpec, NotHashed("measured after the frames are rendered")] = Field(
        default_factory=QualitySpec, description="Metrics measured on the finished frames.")
    sweep: Annotated[Optional[SweepSection], NotHashed("the sweep itself")] = Field(
        None, description="Optional grid of settings for `masactrl-animate sweep` (ignored by a plain run).")

    @field_validator("name")
    @classmethod
    def _name_is_not_a_folder_of_the_output(cls, value: Optional[str]) -> Optional[str]:
        # A named job's versions live in <output.folder>/<name>/: it must not be one of the output
        # folder's own folders.
        if value is not None and (value in RESERVED_NAMES or is_job_folder_name(value)):
            raise ValueError(f"{value!r} is the name of a folder the output folder keeps for itself; choose another name")
        return value

    @model_validator(mode="before")
    @classmethod
    def _moved_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for (old_section, name), (new_section, new_name) in MOVED_FIELDS.items():
            old = data.get(old_section)
            if not isinstance(old, dict) or name not in old:
                continue
            data = {**data, old_section: {k: v for k, v in old.items() if k != name}}
            new = dict(data.get(new_section) or {})
            if new_name in new:
                raise ValueError(f"{old_section}.{name} moved to {new_section}.{new_name}, which is also set; "
                                 f"remove {old_section}.{name}")
            new[new_name] = old[name]
            data[new_section] = new
            warnings.warn(f"{old_section}.{name} moved to {new_section}.{new_name}; update the job file",
                          MovedFieldWarning, stacklevel=2)
        return data

    @model_validator(mode="after")
    def _cross_field(self):
        if self.frames.poses is not None and self.model.controlnet is None:
            raise ValueError(
                "model.controlnet: frames.poses is set but no ControlNet is given; set model.controlnet to an "
                "OpenPose ControlNet ('tiny' with the tiny model), or remove frames.poses"
            )
        if self.source.subject:
            source_prompt = self.source.prompt
            for word in self.source.subject.split():
                if not _has_word(source_prompt, word):
                    raise ValueError(
                        f"source.subject: {word!r} does not occur in source.prompt {source_prompt!r}; "
                        "name a word of the source prompt"
                    )
                for name, prompt in self.frames.labelled_prompts():
                    if not _has_word(prompt, word):
                        raise ValueError(
                            f"source.subject: {word!r} does not occur in {name} {prompt!r}; every frame "
                            "prompt (and keyframe) must name the subject (or clear source.subject)"
                        )
        return self

    @model_validator(mode="after")
    def _typed_sweep(self):
        # An empty grid is allowed: the command line may give the axes (--grid). The axes are
        # typed and bounded by this model's own fields, stored flat (dotted keys) as sweeps read them.
        if self.sweep is None or not self.sweep.grid:
            return self
        try:
            spec = parse_axes({**self.sweep.grid, "frames": self.sweep.frames}, (), type(self))
        except SweepError as exc:
            raise ValueError(str(exc)) from None
        object.__setattr__(self.sweep, "grid", {a.key: a.values for a in spec.axes})
        object.__setattr__(self.sweep, "frames", spec.frames)
        return self

    @property
    def source_prompt(self) -> str:
        return self.source.prompt

    @property
    def uses_poses(self) -> bool:
        return self.frames.poses is not None


def _has_word(prompt: str, word: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(word.lower())}(?![\w])", prompt.lower()) is not None


class JobInputError(ValueError):
    """A job that validated but cannot run as given (e.g. prompt/pose counts); names the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class InvalidJob(ValueError):
    """A job refused for ``(field, message)`` problems: the model's rules (``from_validation_error``)
    or what a worker finds after them (paths outside the roots, what this machine cannot give the
    job, a subject word past the text encoder's limit); str(): them all, "; "-joined."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = list(problems)
        super().__init__("; ".join(self.lines))

    @property
    def lines(self) -> list[str]:
        return [f"{field}: {message}" if field else message for field, message in self.problems]

    @classmethod
    def from_validation_error(cls, exc: ValidationError) -> "InvalidJob":
        return cls(validation_problems(exc))


def validation_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """``(field.path, message)`` per problem; the field is "" where the message names it already."""
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if not str(p).startswith("function-"))
        # Discriminated unions put the tag in the location ("frames.poses.openpose_json.path").
        msg = err.get("msg", "")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        problems.append((loc, msg) if loc and not msg.startswith(loc) else ("", msg))
    return problems


def describe_validation_error(exc: ValidationError) -> list[str]:
    """One line per problem: 'field.path: message' (for CLIs and logs)."""
    return InvalidJob.from_validation_error(exc).lines


def problem_lines(exc: Exception) -> list[str]:
    """What is wrong with a refused job, one line per problem, whichever error refused it."""
    if isinstance(exc, ValidationError):
        return describe_validation_error(exc)
    if isinstance(exc, InvalidJob):
        return exc.lines
    return [str(exc)]
