"""What a worker process keeps between tasks: its pipelines and engines, within a memory budget.

Loading a checkpoint costs seconds (minutes for a real one on a cold disk), and an engine keeps
its source branch (keys/values of every controlled step and block: about 2 GB at 512², T=50)
between render calls, so every task of a worker must find what the previous one left. A worker
serving a schedule for days must not grow, though: pipelines are capped by count, engines by the
bytes their caches hold (``MASACTRL_ENGINE_CACHE_BYTES``), least recently used first.

An engine is not thread-safe: callers hold ``EngineSlot.lock`` while they use it.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from flows.job.checkpoints import lora_digests, resolve_controlnet, resolve_model
from flows.job.model import ModelSpec
from flows.jobdir.cache import CacheError, parse_size

log = logging.getLogger("flows.execution.worker_cache")

MAX_PIPELINES = int(os.environ.get("MASACTRL_MAX_PIPELINES", "2"))
BUDGET_ENV = "MASACTRL_ENGINE_CACHE_BYTES"


def parse_bytes(text: str) -> int:
    """'4GiB', '512M', '1000000' -> bytes (the sizes ``cache prune`` reads)."""
    try:
        return parse_size(text, field=BUDGET_ENV)
    except CacheError:
        raise ValueError(f"{BUDGET_ENV}={text!r} is not a size; write it like '4GiB', '512MiB' or a number of bytes") from None


def default_budget() -> int:
    """$MASACTRL_ENGINE_CACHE_BYTES, else a quarter of the GPU's memory (4 GiB without CUDA)."""
    env = os.environ.get(BUDGET_ENV, "").strip()
    if env:
        return parse_bytes(env)
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory // 4
    except Exception:  # noqa: BLE001 - a broken driver means no GPU budget to size
        pass
    return 4 << 30


def pipeline_key(model: ModelSpec) -> tuple:
    """The same pipeline whatever the spelling: an empty device is the one it resolves to, 'cuda'
    is 'cuda:0', 'auto' precision is the one it picks on that device. LoRAs by their bytes."""
    import torch

    device = model.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        device = "cuda:0"
    dtype = model.dtype
    if dtype == "auto":
        dtype = "float16" if device.startswith("cuda") else "float32"
    loras = tuple((lora.path, digest, lora.scale) for lora, digest in zip(model.loras, lora_digests(model)))
    return (model.model, model.controlnet, device, dtype, loras)


@dataclass
class EngineSlot:
    engine: Any
    lock: threading.Lock = field(default_factory=threading.Lock)


_lock = threading.RLock()
_pipelines: "OrderedDict[tuple, Any]" = OrderedDict()
_engines: "OrderedDict[tuple, EngineSlot]" = OrderedDict()
_source_branches: dict[tuple, Any] = {}  # pipeline key -> masactrl_engine.engine.SourceBranches
_pipeline_loads = 0


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


def get_pipeline(model: ModelSpec):
    """The process's pipeline for this model, loaded on first use."""
    global _pipeline_loads
    import torch

    from masactrl_engine import load_pipeline

    key = pipeline_key(model)
    with _lock:
        if key in _pipelines:
            _pipelines.move_to_end(key)
            return _pipelines[key]
        while len(_pipelines) >= MAX_PIPELINES:
            old_key, _ = _pipelines.popitem(last=False)
            for engine_key in [k for k in _engines if k[0] == old_key]:
                del _engines[engine_key]
            _source_branches.pop(old_key, None)
            free_memory()
        _quiet_loading_bars()
        name, controlnet, device, dtype, loras = key
        pipe = load_pipeline(resolve_model(name), controlnet=resolve_controlnet(controlnet, name),
                             device=device, dtype=getattr(torch, dtype),
                             loras=[(path, scale) for path, _, scale in loras])
        _pipelines[key] = pipe
        _pipeline_loads += 1
        return pipe


def get_engine(model: ModelSpec, config) -> EngineSlot:
    """The process's engine for this model and ``masactrl_engine.ControlConfig``.

    Engines of one pipeline share its source branches: engines that differ in frame-side settings
    only (a sweep over anchor weight or ControlNet scale) compute the source branch once, since it
    is keyed by what it depends on (inversion, source prompt, steps, guidance, window, correction,
    mask subject), not by the whole config."""
    from masactrl_engine import SequenceEngine
    from masactrl_engine.engine import SourceBranches

    pipe_key = pipeline_key(model)
    key = (pipe_key, config)
    with _lock:
        if key in _engines:
            _engines.move_to_end(key)
            return _engines[key]
        pipe = get_pipeline(model)
        branches = _source_branches.setdefault(pipe_key, SourceBranches())
        slot = EngineSlot(SequenceEngine(pipe, config, progress=False, source_branches=branches))
        _engines[key] = slot
        return slot


def cached_bytes() -> dict[tuple, int]:
    """Bytes each cached engine holds in its caches (source branch, anchor, prompt embeddings)."""
    from masactrl_engine.memory import tensor_bytes

    # Newest first with one `seen` set: a source branch that engines share counts once, for the
    # newest of them (evicting an older engine does not free it).
    seen: set[int] = set()
    with _lock:
        return {key: tensor_bytes(_engines[key].engine, seen) for key in reversed(_engines)}


def enforce_budget(budget: int | None = None) -> list[tuple]:
    """Evict least recently used engines until the rest fit in ``budget`` bytes. The most recent
    engine is kept even when it alone is larger (the next task of the same job needs it), and so
    is any engine a thread is using right now. Returns the evicted keys."""
    budget = default_budget() if budget is None else budget
    evicted = []
    with _lock:
        sizes = cached_bytes()
        total = sum(sizes.values())
        for key in list(_engines)[:-1]:
            if total <= budget:
                break
            slot = _engines[key]
            if not slot.lock.acquire(blocking=False):
                continue
            try:
                del _engines[key]
            finally:
                slot.lock.release()
            total -= sizes[key]
            evicted.append(key)
        for pipe_key in [k for k in _source_branches if not any(e[0] == k for e in _engines)]:
            del _source_branches[pipe_key]  # no engine of that pipeline left to share them
    if evicted:
        log.info("Evicted %d cached engine(s) to stay within %.1f GiB", len(evicted), budget / (1 << 30))
        free_memory()
    return evicted


def pipeline_loads() -> int:
    """How many pipelines this process has loaded (tests check that tasks reuse them)."""
    return _pipeline_loads


def engine_count() -> int:
    return len(_engines)


def clear() -> None:
    """Forget every pipeline and engine of this process."""
    with _lock:
        _engines.clear()
        _pipelines.clear()
        _source_branches.clear()
    free_memory()


def free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - freeing memory must never be the thing that fails
        pass
