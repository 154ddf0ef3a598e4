"""Settings of one animation: what the engine controls, and each frame's request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import EngineInputError


@dataclass(frozen=True)
class MaskConfig:
    """Mask-guided mutual self-attention.

    ``subject`` names the word(s) whose cross-attention maps outline the subject (e.g. "cat");
    each word must occur in the source prompt and in every frame prompt that has no explicit mask.
    ``source_mask`` is an explicit mask image for the source (white = subject) used instead of
    the automatic one; frames take theirs from ``FrameSpec.mask``.
    """

    subject: str | None = None
    threshold: float = 0.1
    source_mask: Any = None

    def __post_init__(self) -> None:
        if self.subject is not None and (not isinstance(self.subject, str) or not self.subject.strip()):
            raise EngineInputError("mask.subject: give the subject word(s) as a non-empty string, e.g. 'cat'")
        if not 0.0 < float(self.threshold) < 1.0:
            raise EngineInputError(f"mask.threshold: {self.threshold} is outside (0, 1); the published default is 0.1")
        if self.subject is None and self.source_mask is None:
            raise EngineInputError("mask: give a subject word or a source_mask image (or pass mask=None)")


@dataclass(frozen=True)
class ControlConfig:
    """MasaCtrl's control window and the sampler settings shared by every frame.

    Mutual self-attention acts in transformer blocks with index >= ``start_layer`` (execution
    order, 16 blocks in SD 1.x) at denoising steps with index >= ``start_step``.
    ``controlnet_start``/``controlnet_end`` are the fractions of the steps where pose residuals
    apply (diffusers' control_guidance_start/end).
    """

    num_steps: int = 50
    guidance_scale: float = 7.5
    start_step: int = 4
    start_layer: int = 10
    source_correction: bool = True
    mask: MaskConfig | None = None
    controlnet_scale: float = 1.0
    controlnet_start: float = 0.0
    controlnet_end: float = 1.0
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise EngineInputError(f"num_steps: {self.num_steps!r} must be a whole number >= 1")
        if not isinstance(self.start_step, int) or not 0 <= self.start_step < self.num_steps:
            raise EngineInputError(
                f"start_step: {self.start_step!r} must be in [0, num_steps={self.num_steps}); "
                "lower it or raise num_steps"
            )
        if not isinstance(self.start_layer, int) or self.start_layer < 0:
            raise EngineInputError(f"start_layer: {self.start_layer!r} must be a whole number >= 0")
        if not self.guidance_scale >= 1.0:
            raise EngineInputError(f"guidance_scale: {self.guidance_scale} must be >= 1 (1 disables guidance)")
        if self.controlnet_scale < 0:
            raise EngineInputError(f"controlnet_scale: {self.controlnet_scale} must be >= 0")
        if not 0.0 <= self.controlnet_start < self.controlnet_end <= 1.0:
            raise EngineInputError(
                "controlnet_start/controlnet_end: need 0 <= start < end <= 1, "
                f"got {self.controlnet_start}, {self.controlnet_end}"
            )
        if self.mask is not None and not isinstance(self.mask, MaskConfig):
            raise EngineInputError("mask: pass a MaskConfig(subject=...) or None")


@dataclass(frozen=True)
class FrameSpec:
    """One output frame: its prompt, an optional OpenPose map and an optional explicit mask."""

    prompt: str
    pose: Any = None
    mask: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise EngineInputError(f"frames[].prompt: expected a string, got {type(self.prompt).__name__}")
