"""The work behind the tasks, as plain functions: invert a source, render a chunk of frames.

Both are idempotent on disk, and the disk is the only record of what is done. An inversion lives
in a folder named by its content hash: a folder holding a readable inversion whose digest checks
is reused; a missing, partial or corrupt one is computed again (with one warning). A frame lives
in the frame store under its content key: an entry that checks is not rendered again, only
presented in the job folder. So a retry, a re-run of a crashed job, an edited job, or another job
on the same source only does what is missing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from PIL import Image
from pydantic import BaseModel, Field

from flows.execution import worker_cache
from flows.job.plan import ChunkRequest, FramePlan, InversionRequest, control_config, decoded_source, fit_source
from flows.jobdir import frame_store, frames_io
from flows.jobdir.layout import FrameStore, InversionFolder

log = logging.getLogger("flows.execution.rendering")


class InversionResult(BaseModel):
    path: str = Field(description="Folder holding the inversion files and source.png.")
    computed: bool = Field(description="False when a valid inversion was already on disk.")
    seconds: float = 0.0
    stats: dict[str, int] = Field(default_factory=dict, description="masactrl_engine.EngineStats of this call.")


class ChunkReport(BaseModel):
    index: int
    rendered: list[int] = Field(default_factory=list)
    skipped: list[int] = Field(default_factory=list, description="Frames already on disk.")
    seconds: float = 0.0
    frame_seconds: dict[int, float] = Field(default_factory=dict)
    stats: dict[str, int] = Field(default_factory=dict, description="masactrl_engine.EngineStats of this call.")


def _stats(engine) -> dict[str, int]:
    return dict(engine.stats.as_dict())


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def is_out_of_memory(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except Exception:  # noqa: BLE001
        pass
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "can't allocate memory" in text or isinstance(exc, MemoryError)
    )


def load_inversion(folder: str | Path, device=None, logger: logging.Logger | None = None):
    """The inversion in ``folder``, or None when it is missing, partial or corrupt (said once)."""
    from masactrl_engine import InvertedSource

    files = InversionFolder(folder)
    if not files.tensors.is_file() and not files.meta.is_file():
        return None
    try:
        return InvertedSource.load(files.path, device=device)
    except Exception as exc:  # noqa: BLE001 - whatever the reader raises (safetensors, JSON, digest), it is unusable
        (logger or log).warning("Inversion in %s is unreadable or corrupt (%s); inverting again", folder, exc)
        return None


def ensure_inversion(request: InversionRequest, logger: logging.Logger | None = None) -> InversionResult:
    """Invert the source into ``request.folder`` unless a valid inversion is already there."""
    from masactrl_engine.images import to_output

    logger = logger or log
    files = InversionFolder(request.folder)
    folder = files.path
    t0 = time.perf_counter()
    with frames_io.folder_lock(folder):
        if load_inversion(folder, logger=logger) is not None and files.source.is_file():
            logger.info("Inversion %s found on disk; reusing it", folder)
            return InversionResult(path=str(folder), computed=False)

        config = control_config(request.settings)
        slot = worker_cache.get_engine(request.model, config)
        s = request.settings
        with slot.lock:
            before = _stats(slot.engine)
            if request.image is not None:
                source = fit_source(decoded_source(request.image), s.width, s.height, request.fit)
                inv = slot.engine.invert(source, prompt=request.inversion_prompt, height=s.height, width=s.width)
            else:
                # MasaCtrl's synthesis: the generation's own trajectory is the source branch, exact and
                # without a decode-encode-invert round trip.
                logger.info("Generating the source from %r (seed %d)", request.generate_prompt, request.seed)
                inv = slot.engine.synthesize(request.generate_prompt, seed=request.seed, height=s.height, width=s.width)
                source = inv.image
            stats = _delta(before, _stats(slot.engine))
            # The source branch's final decode: with source correction it ends on the encoded source, so
            # this is the VAE round trip, what the metrics' source PSNR compares with the source.
            decoded = slot.engine.decode(inv.trajectory[:1].to(slot.engine.device, slot.engine.dtype))
        folder.mkdir(parents=True, exist_ok=True)
        frames_io.save_png_atomic(to_output(decoded, "pil")[0], files.source_decode)
        # What the engine inverted (it resizes with bicubic filtering), for people and previews.
        frames_io.save_png_atomic(source.resize((s.width, s.height), Image.Resampling.BICUBIC), files.source)
        inv.save(folder)
    worker_cache.enforce_budget()
    seconds = time.perf_counter() - t0
    logger.info("Inverted the source in %.1f s (%d UNet calls) into %s", seconds, stats.get("inversion_calls", 0), folder)
    return InversionResult(path=str(folder), computed=True, seconds=seconds, stats=stats)


def frame_spec(frame: FramePlan):
    """The engine's request for one planned frame (its pose map read from the job folder)."""
    from masactrl_engine import FrameSpec

    pose = frames_io.load_rgb(frame.pose) if frame.pose else None
    travel = {} if frame.prompt_to is None else {
        "prompt_to": frame.prompt_to, "travel": frame.travel, "interpolation": frame.interpolation}
    return FrameSpec(prompt=frame.prompt, pose=pose, seed=frame.seed, controlnet_scale=frame.controlnet_scale,
                     **travel)


def render_chunk_frames(
    chunk: ChunkRequest,
    logger: logging.Logger | None = None,
) -> ChunkReport:
    """Render the frames of ``chunk`` that are not in the frame store yet, and present every frame
    of the chunk in the job folder as soon as its entry exists.

    Frames are rendered ``batch_size`` at a time and stored after every batch, so a crash loses at
    most one batch. Frames with the same key render once. On out-of-memory the batch is retried
    once at half the size after freeing memory.
    """
    logger = logger or log
    t0 = time.perf_counter()
    store = FrameStore(chunk.store_dir)
    missing = frame_store.missing_keys(store, [_key(f) for f in chunk.frames], chunk.size)
    todo = list({f.key: f for f in reversed(chunk.frames) if f.key in missing}.values())[::-1]  # one per key
    rendering = {f.index for f in todo}
    report = ChunkReport(index=chunk.index, skipped=[f.index for f in chunk.frames if f.index not in rendering])
    for f in chunk.frames:
        if f.key not in missing:
            frame_store.present(store, f.key, chunk.job_dir, f.index)
    if not todo:
        logger.info("Chunk %d: all %d frames already rendered", chunk.index, len(chunk.frames))
        report.seconds = time.perf_counter() - t0
        return report

    slot = worker_cache.get_engine(chunk.engine.model, chunk.engine.control_config())
    inv = load_inversion(chunk.inversion_dir, device=slot.engine.device, logger=logger)
    if inv is None:
        raise RuntimeError(f"the inversion in {chunk.inversion_dir} is missing or corrupt; run the job again to "
                           "recompute it")
    anchor = frame_spec(chunk.anchor) if chunk.anchor is not None else None
    batch_size = chunk.batch_size
    with slot.lock:
        before = _stats(slot.engine)
        start, oom_retried = 0, False
        while start < len(todo):
            batch = todo[start : start + batch_size]
            specs = [frame_spec(f) for f in batch]
            tb = time.perf_counter()
            images = None
            try:
                images = slot.engine.render(inv, chunk.source_prompt, specs, batch_size=len(specs), anchor=anchor)
            except Exception as exc:
                if not is_out_of_memory(exc) or oom_retried or len(batch) == 1:
                    raise
                oom_retried = True
                batch_size = max(1, len(batch) // 2)
                logger.warning("Chunk %d: out of memory at batch size %d; freeing memory and retrying once at %d",
                               chunk.index, len(batch), batch_size)
            if images is None:
                # Outside the except block, so the traceback no longer pins the batch's tensors.
                worker_cache.free_memory()
                continue
            per_frame = (time.perf_counter() - tb) / len(batch)
            for f, image in zip(batch, images):
                frame_store.put(store, f.key, image)  # PNG + its digest
                report.rendered.append(f.index)
                report.frame_seconds[f.index] = per_frame
            for f in chunk.frames:
                if f.key in {b.key for b in batch}:
                    frame_store.present(store, f.key, chunk.job_dir, f.index)
            start += len(batch)
        report.stats = _delta(before, _stats(slot.engine))
    worker_cache.enforce_budget()
    report.seconds = time.perf_counter() - t0
    logger.info("Chunk %d: rendered frame(s) %s, %d already rendered, %.1f s",
                chunk.index, _indices(report.rendered), len(report.skipped), report.seconds)
    return report


def _key(frame: FramePlan) -> str:
    if frame.key is None:
        raise ValueError(f"frame {frame.index} has no content key; plan the job with flows.job.plan.plan_job")
    return frame.key


def _indices(indices: list[int]) -> str:
    """``0-3, 7``: frame indices as ranges, for a log line."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs) or "none"
