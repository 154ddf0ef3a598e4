"""Settings of one animation: what the engine controls, and each frame's request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

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


FrameStart = Literal["inverted", "noise", "renoise"]
Interpolation = Literal["linear", "slerp", "hold"]
CrossFrame = Literal["none", "anchor"]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ControlConfig:
    """MasaCtrl's control window and the sampler settings shared by every frame.

    Mutual self-attention acts in transformer blocks with index >= ``start_layer`` (execution
    order, 16 blocks in SD 1.x) at denoising steps with index >= ``start_step``.
    ``controlnet_start``/``controlnet_end`` are the fractions of the steps where pose residuals
    apply (diffusers' control_guidance_start/end).

    Where frames start (``frame_start``):
    - ``"inverted"`` (published): the source's inverted ``z_T``; keeps the source's layout.
    - ``"noise"``: one Gaussian ``z_T`` drawn from ``seed`` shared by every frame (a frame with
      ``FrameSpec.seed`` draws its own); the layout comes from prompt and pose, the identity from
      mutual attention over the unchanged source branch.
    - ``"renoise"``: the source's inversion latent at denoising step ``k = round((1 - strength) * T)``
      (Python's rounding); frames run only the ``T - k`` remaining steps. Steps keep their global
      index, so ``start_step`` and the ControlNet window mean the same as in the other modes.

    What frames attend to (``cross_frame``): ``"none"`` (published) the source's keys/values;
    ``"anchor"`` the source's and those of an anchor frame (``render``'s ``anchor`` argument, else
    ``frames[anchor_frame]``), rendered first with plain MasaCtrl. ``anchor_weight`` multiplies
    the anchor keys' attention weights (``log(anchor_weight)`` added to their logits).
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
    frame_start: FrameStart = "inverted"
    strength: float = 1.0
    seed: int = 0
    cross_frame: CrossFrame = "none"
    anchor_frame: int = 0
    anchor_weight: float = 1.0

    @property
    def first_step(self) -> int:
        """The denoising step frames start at: ``T - first_step`` steps run per frame."""
        if self.frame_start != "renoise":
            return 0
        return round((1.0 - self.strength) * self.num_steps)

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
        if isinstance(self.guidance_scale, bool) or not isinstance(self.guidance_scale, (int, float)) \
                or not 0.0 <= self.guidance_scale < float("inf"):
            raise EngineInputError(
                f"guidance_scale: {self.guidance_scale!r} must be a number >= 0 (<= 1 turns guidance off: "
                "one UNet sample per frame and step, e.g. 0 for SDXL-Turbo)"
            )
        if self.controlnet_scale < 0:
            raise EngineInputError(f"controlnet_scale: {self.controlnet_scale} must be >= 0")
        if not 0.0 <= self.controlnet_start < self.controlnet_end <= 1.0:
            raise EngineInputError(
                "controlnet_start/controlnet_end: need 0 <= start < end <= 1, "
                f"got {self.controlnet_start}, {self.controlnet_end}"
            )
        if self.mask is not None and not isinstance(self.mask, MaskConfig):
            raise EngineInputError("mask: pass a MaskConfig(subject=...) or None")
        self._check_animation_controls()

    def _check_animation_controls(self) -> None:
        if self.frame_start not in get_args(FrameStart):
            raise EngineInputError(f"frame_start: {self.frame_start!r} is not one of {get_args(FrameStart)}")
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)) \
                or not 0.0 < self.strength <= 1.0:
            raise EngineInputError(f"strength: {self.strength!r} must be in (0, 1]; 1 starts from the inverted z_T")
        if self.frame_start == "renoise" and self.first_step >= self.num_steps:
            raise EngineInputError(
                f"strength: {self.strength} leaves no denoising step of num_steps={self.num_steps} "
                f"(round((1 - strength) * num_steps) = {self.first_step}); use strength >= 1/num_steps = {1 / self.num_steps:.3g}"
            )
        if not _is_int(self.seed):
            raise EngineInputError(f"seed: {self.seed!r} must be a whole number (the noise seed of frame_start='noise')")
        if self.cross_frame not in get_args(CrossFrame):
            raise EngineInputError(f"cross_frame: {self.cross_frame!r} is not one of {get_args(CrossFrame)}")
        if not _is_int(self.anchor_frame) or self.anchor_frame < 0:
            raise EngineInputError(f"anchor_frame: {self.anchor_frame!r} must be a frame index >= 0")
        if isinstance(self.anchor_weight, bool) or not isinstance(self.anchor_weight, (int, float)) \
                or not self.anchor_weight > 0 or self.anchor_weight == float("inf"):
            raise EngineInputError(
                f"anchor_weight: {self.anchor_weight!r} must be a finite number > 0 (1 weighs anchor and source alike)"
            )


@dataclass(frozen=True)
class FrameSpec:
    """One output frame: its prompt, an optional OpenPose map and an optional explicit mask.

    ``seed`` gives the frame its own start noise with ``frame_start="noise"``; ``controlnet_scale``
    overrides ``ControlConfig.controlnet_scale`` for this frame's pose (e.g. to fade a pose in or
    out; 0 renders the frame as if it had no pose).

    Prompt travel: with ``prompt_to`` the frame's text conditioning lies ``travel`` (in [0, 1]) of
    the way from ``prompt``'s to ``prompt_to``'s, by ``interpolation`` ("linear", "slerp" per
    token vector, or "hold": ``prompt``'s until ``travel`` reaches 1). ``travel`` 0 is exactly
    ``prompt``'s conditioning and 1 exactly ``prompt_to``'s. Mask guidance looks the subject up in
    the nearer of the two prompts.
    """

    prompt: str
    pose: Any = None
    mask: Any = None
    seed: int | None = None
    controlnet_scale: float | None = None
    prompt_to: str | None = None
    travel: float = 0.0
    interpolation: Interpolation = "linear"

    @property
    def nearer_prompt(self) -> str:
        """The prompt whose tokens mask guidance reads: ``prompt`` up to half way, then ``prompt_to``."""
        if self.prompt_to is None or self.interpolation == "hold" and self.travel < 1 or self.travel <= 0.5:
            return self.prompt
        return self.prompt_to

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise EngineInputError(f"frames[].prompt: expected a string, got {type(self.prompt).__name__}")
        if self.prompt_to is not None and not isinstance(self.prompt_to, str):
            raise EngineInputError(
                f"frames[].prompt_to: expected a string or None, got {type(self.prompt_to).__name__}")
        if isinstance(self.travel, bool) or not isinstance(self.travel, (int, float)) or not 0 <= self.travel <= 1:
            raise EngineInputError(
                f"frames[].travel: {self.travel!r} must be a number in [0, 1] (0 = prompt, 1 = prompt_to)")
        if self.interpolation not in get_args(Interpolation):
            raise EngineInputError(
                f"frames[].interpolation: {self.interpolation!r} is not one of {get_args(Interpolation)}")
        if self.seed is not None and not _is_int(self.seed):
            raise EngineInputError(f"frames[].seed: {self.seed!r} must be a whole number or None")
        if self.controlnet_scale is not None and (
                isinstance(self.controlnet_scale, bool) or not isinstance(self.controlnet_scale, (int, float))
                or not 0 <= self.controlnet_scale < float("inf")):
            raise EngineInputError(
                f"frames[].controlnet_scale: {self.controlnet_scale!r} must be a number >= 0 or None "
                "(None uses ControlConfig.controlnet_scale)"
            )
