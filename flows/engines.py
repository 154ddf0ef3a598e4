"""One pipeline per process, one engine per (pipeline, settings): loaded once, reused by later tasks.

Loading a checkpoint costs seconds (minutes for a real one on a cold disk), and the engine keeps
its source branch cached between render calls, so every task of a worker process must find the
pipeline and the engine it left behind. The engine is not thread-safe: callers hold
``EngineSlot.lock`` while they use it.
"""

from __future__ import annotations

import fcntl
import gc
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict

from .job import TINY, AnimationJob

TINY_SEED = 0
MAX_PIPELINES = int(os.environ.get("MASACTRL_MAX_PIPELINES", "2"))
MAX_ENGINES = int(os.environ.get("MASACTRL_MAX_ENGINES", "4"))


class EngineRequest(BaseModel):
    """Everything a worker needs to build (or find) its engine: names and numbers only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    controlnet: Optional[str] = None
    device: Optional[str] = None
    dtype: str = "auto"
    num_steps: int
    guidance_scale: float
    start_step: int
    start_layer: int
    source_correction: bool
    controlnet_scale: float
    negative_prompt: str
    subject: Optional[str] = None
    mask_threshold: float = 0.1

    @classmethod
    def from_job(cls, job: AnimationJob) -> "EngineRequest":
        s = job.settings
        return cls(
            model=job.model.model,
            controlnet=job.model.controlnet if job.uses_poses else None,
            device=job.model.device,
            dtype=job.model.dtype,
            num_steps=s.steps,
            guidance_scale=s.guidance_scale,
            start_step=s.start_step,
            start_layer=s.start_layer,
            source_correction=s.source_correction,
            controlnet_scale=s.controlnet_scale,
            negative_prompt=s.negative_prompt,
            subject=job.source.subject,
            mask_threshold=job.source.mask_threshold,
        )

    def control_config(self):
        from masactrl_engine import ControlConfig, MaskConfig

        mask = MaskConfig(subject=self.subject, threshold=self.mask_threshold) if self.subject else None
        return ControlConfig(
            num_steps=self.num_steps,
            guidance_scale=self.guidance_scale,
            start_step=self.start_step,
            start_layer=self.start_layer,
            source_correction=self.source_correction,
            mask=mask,
            controlnet_scale=self.controlnet_scale,
            negative_prompt=self.negative_prompt,
        )

    def pipeline_key(self) -> tuple:
        return (self.model, self.controlnet, self.device, self.dtype)


@dataclass
class EngineSlot:
    engine: Any
    lock: threading.Lock = field(default_factory=threading.Lock)


_lock = threading.RLock()
_pipelines: "OrderedDict[tuple, Any]" = OrderedDict()
_engines: "OrderedDict[tuple, EngineSlot]" = OrderedDict()
_pipeline_loads = 0


def tiny_checkpoint_dir() -> Path:
    """Where the tiny checkpoint lives: $MASACTRL_TINY_DIR, else the user's cache folder."""
    env = os.environ.get("MASACTRL_TINY_DIR")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "masactrl-animate" / f"tiny-seed{TINY_SEED}"


def ensure_tiny_checkpoint() -> Path:
    """Write the tiny checkpoint once; a file lock keeps parallel worker processes from racing."""
    from masactrl_engine.tiny import make_tiny_checkpoint

    path = tiny_checkpoint_dir()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            return make_tiny_checkpoint(path, seed=TINY_SEED)
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def resolve_model(name: str) -> str:
    return str(ensure_tiny_checkpoint()) if name == TINY else name


def resolve_controlnet(name: Optional[str]) -> Optional[str]:
    if name is None:
        return None
    return str(ensure_tiny_checkpoint() / "controlnet") if name == TINY else name


def _torch_dtype(name: str):
    import torch

    return None if name == "auto" else getattr(torch, name)


def _quiet_loading_bars() -> None:
    # diffusers/transformers draw "Loading pipeline components" bars on stderr; in a worker's
    # log they are noise (the run logger says what was loaded).
    try:
        import diffusers.utils.logging as diffusers_logging
        import transformers.utils.logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


def get_pipeline(request: EngineRequest):
    """The process's pipeline for (model, controlnet, device, dtype), loaded on first use."""
    global _pipeline_loads
    from masactrl_engine import load_pipeline

    key = request.pipeline_key()
    with _lock:
        if key in _pipelines:
            _pipelines.move_to_end(key)
            return _pipelines[key]
        while len(_pipelines) >= MAX_PIPELINES:
            old_key, _ = _pipelines.popitem(last=False)
            for engine_key in [k for k in _engines if k[0] == old_key]:
                del _engines[engine_key]
            free_memory()
        _quiet_loading_bars()
        pipe = load_pipeline(
            resolve_model(request.model),
            controlnet=resolve_controlnet(request.controlnet),
            device=request.device,
            dtype=_torch_dtype(request.dtype),
        )
        _pipelines[key] = pipe
        _pipeline_loads += 1
        return pipe


def get_engine(request: EngineRequest) -> EngineSlot:
    """The process's engine for these settings (one per pipeline and ControlConfig)."""
    from masactrl_engine import SequenceEngine

    key = (request.pipeline_key(), request.model_dump_json(exclude={"model", "controlnet", "device", "dtype"}))
    with _lock:
        if key in _engines:
            _engines.move_to_end(key)
            return _engines[key]
        pipe = get_pipeline(request)
        while len(_engines) >= MAX_ENGINES:
            _engines.popitem(last=False)
        slot = EngineSlot(SequenceEngine(pipe, request.control_config(), progress=False))
        _engines[key] = slot
        return slot


def pipeline_loads() -> int:
    """How many pipelines this process has loaded (tests check that tasks reuse them)."""
    return _pipeline_loads


def clear() -> None:
    """Forget every pipeline and engine of this process."""
    with _lock:
        _engines.clear()
        _pipelines.clear()
    free_memory()


def free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - freeing memory must never be the thing that fails
        pass
