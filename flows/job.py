"""``AnimationJob``: the one parameter of the ``animate`` flow.

Prefect draws the deployment's run form from this model's JSON schema, so every field has a
description, a default where one makes sense, bounds and (for choices) a Literal dropdown.
Parameters stay small: paths and words, never pixels.

Validation checks everything that can be checked without a model: files exist and decode,
sizes, bounds, cross-field rules. Every error names its field (``source.image``,
``frames.prompts`` ...) and says how to fix it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pose_sources import PoseSpec

TINY = "tiny"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


class _Model(BaseModel):
    # Unknown keys are errors: a typo such as `fsp: 12` must not be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _looks_local(text: str) -> bool:
    path = Path(text).expanduser()
    return path.is_absolute() or text.startswith((".", "~")) or path.exists()


def check_model_source(text: str, what: str, want: str) -> str:
    """'tiny', an existing diffusers folder or a hub id ('owner/name'); returns the cleaned value."""
    text = text.strip()
    if not text:
        raise ValueError(f"empty; give {want}")
    if text == TINY:
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
    return expanded


class SourceSpec(_Model):
    """The one picture whose subject every frame keeps."""

    image: Optional[Path] = Field(
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
        path = Path(value).expanduser()
        if not path.is_file():
            raise ValueError(f"{str(value)!r} does not exist or is not a file; give the path of the source picture")
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                img.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise ValueError(f"{str(value)!r} is not a readable image ({exc}); give a PNG or JPEG file") from None
        return path.absolute()

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


class FramesSpec(_Model):
    """What the frames show: prompts, poses, or both."""

    prompts: list[Annotated[str, Field(max_length=2000)]] = Field(
        default_factory=list,
        max_length=10000,
        description="One prompt per frame, e.g. ['a cat sitting', 'a cat standing']. With poses, a single prompt is "
        "used for every pose; an empty list uses the source prompt for every pose.",
    )
    poses: Optional[PoseSpec] = Field(
        None,
        description="Pose source driving the frames through ControlNet OpenPose (OpenPose JSON, pose images, a "
        "driving video or keyframes). With several prompts the counts must match.",
    )

    @field_validator("prompts", mode="before")
    @classmethod
    def _one_prompt(cls, value):
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _something_to_render(self):
        if not self.prompts and self.poses is None:
            raise ValueError("frames.prompts: give at least one prompt (or frames.poses to drive the frames by poses)")
        return self

    def prompts_for(self, pose_count: Optional[int], source_prompt: str) -> list[str]:
        """The prompt of each frame: broadcast one prompt over the poses; check counts."""
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


class ModelSpec(_Model):
    """Which Stable Diffusion 1.x checkpoint (and OpenPose ControlNet) renders the frames."""

    model: str = Field(
        TINY,
        description="Stable Diffusion 1.x checkpoint: a local diffusers folder, a hub id such as "
        "'stable-diffusion-v1-5/stable-diffusion-v1-5', or 'tiny' (a tiny offline model for tests and demos).",
    )
    controlnet: Optional[str] = Field(
        None,
        description="OpenPose ControlNet: a local folder, a hub id such as 'lllyasviel/sd-controlnet-openpose', or "
        "'tiny' (with the tiny model). Needed when frames.poses is set.",
    )
    device: Optional[str] = Field(None, description="Torch device: 'cuda', 'cuda:1', 'cpu'. Empty = CUDA when available.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weights' precision: 'auto' = float16 on CUDA, float32 on CPU."
    )

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
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
        if self.controlnet == TINY and self.model != TINY:
            raise ValueError("model.controlnet: 'tiny' only fits model 'tiny'; give an OpenPose ControlNet for this checkpoint")
        return self


class RenderSettings(_Model):
    """Sampler and MasaCtrl settings shared by every frame."""

    width: int = Field(512, ge=64, le=2048, multiple_of=8, description="Frame width in pixels (multiple of 8).")
    height: int = Field(512, ge=64, le=2048, multiple_of=8, description="Frame height in pixels (multiple of 8).")
    steps: int = Field(50, ge=1, le=1000, description="DDIM denoising steps (inversion uses the same number).")
    guidance_scale: float = Field(7.5, ge=1.0, le=30.0, description="Classifier-free guidance scale (1 = none).")
    start_step: int = Field(
        4, ge=0, le=999, description="MasaCtrl control starts at this denoising step (must be below `steps`)."
    )
    start_layer: int = Field(
        10, ge=0, le=15, description="MasaCtrl control acts in transformer blocks from this index on (SD 1.x: 0-15)."
    )
    source_correction: bool = Field(
        True, description="Keep the source branch on the inversion trajectory (reproduces the source exactly)."
    )
    controlnet_scale: float = Field(1.0, ge=0.0, le=5.0, description="ControlNet conditioning scale for the poses.")
    negative_prompt: str = Field("", max_length=2000, description="Negative prompt for classifier-free guidance.")
    batch_size: int = Field(4, ge=1, le=64, description="Frames per UNet batch inside a chunk (lower it on small GPUs).")

    @model_validator(mode="after")
    def _window(self):
        if self.start_step >= self.steps:
            raise ValueError(
                f"settings.start_step: {self.start_step} must be below settings.steps ({self.steps}); lower it or raise steps"
            )
        return self


class OutputSpec(_Model):
    """Where results go and how they are encoded."""

    folder: Path = Field(
        Path("out"),
        description="Results go to <folder>/<job hash>/ (frames, GIF, MP4, contact sheet). No '..' parts.",
    )
    fps: float = Field(8.0, gt=0.0, le=60.0, description="Frames per second of the GIF and MP4.")
    gif: bool = Field(True, description="Write animation.gif.")
    mp4: bool = Field(True, description="Write animation.mp4 (H.264, yuv420p).")
    loop: int = Field(0, ge=0, le=65535, description="GIF loop count: 0 = loop forever.")
    chunk_size: int = Field(4, ge=1, le=1000, description="Frames per render task (the unit of retries and fan-out).")

    @field_validator("folder")
    @classmethod
    def _safe_folder(cls, value: Path) -> Path:
        return check_output_folder(value)


class ExecutionSpec(_Model):
    """Where the render tasks run."""

    runner: Optional[Literal["threads", "dask"]] = Field(
        None, description="'threads': a thread pool in the flow's process (one GPU); 'dask': Dask workers. "
        "Empty: the deployment's default ($MASACTRL_RUNNER / $MASACTRL_DASK_ADDRESS), else threads."
    )
    workers: int = Field(1, ge=1, le=64, description="Worker threads (threads) or worker processes (local Dask); "
                         "with an empty runner the deployment's settings apply instead.")
    dask_address: Optional[str] = Field(
        None, description="Address of a running Dask scheduler (runner 'dask'); empty = start a local cluster."
    )

    @model_validator(mode="after")
    def _address_needs_dask(self):
        if self.dask_address and self.runner != "dask":
            raise ValueError("execution.dask_address only applies to runner 'dask'; set execution.runner: dask "
                             "or remove execution.dask_address")
        return self


class AnimationJob(_Model):
    """One source picture in, a consistent animation out."""

    name: Optional[str] = Field(
        None, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Optional label for runs and logs."
    )
    source: SourceSpec = Field(description="The source picture (or the prompt to generate it from).")
    frames: FramesSpec = Field(description="The frames: prompts, poses, or both.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="Checkpoint and ControlNet.")
    settings: RenderSettings = Field(default_factory=RenderSettings, description="Size, steps, guidance, MasaCtrl window.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Output folder and formats.")
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec, description="Task runner for the render tasks.")

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
                for i, prompt in enumerate(self.frames.prompts):
                    if not _has_word(prompt, word):
                        raise ValueError(
                            f"source.subject: {word!r} does not occur in frames.prompts[{i}] {prompt!r}; every frame "
                            "prompt must name the subject (or clear source.subject)"
                        )
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


def describe_validation_error(exc: ValidationError) -> list[str]:
    """One line per problem: 'field.path: message' (for CLIs and logs)."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if not str(p).startswith("function-"))
        # Discriminated unions put the tag in the location ("frames.poses.openpose_json.path").
        msg = err.get("msg", "")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        lines.append(f"{loc}: {msg}" if loc and not msg.startswith(loc) else msg)
    return lines
