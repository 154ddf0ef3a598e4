"""The work behind the tasks, as plain functions: invert a source, render a chunk of frames.

Both are idempotent on disk. An inversion folder that already holds a valid inversion is
reused; a frame whose PNG exists is not rendered again. So a retry, or a re-run of a job that
crashed, only does what is missing.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable, Optional

from PIL import Image

from . import engines, frames_io
from .plan import ChunkRequest, InversionRequest

log = logging.getLogger("flows.rendering")

# Test hook: fail these chunk indices ("1" or "0,2") before they render anything, to simulate a
# crash part-way through a job. Never set in production.
FAIL_CHUNK_ENV = "MASACTRL_FAIL_CHUNK"


class InjectedFailure(RuntimeError):
    """Raised by the MASACTRL_FAIL_CHUNK test hook."""


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


def fit_source(image: Image.Image, width: int, height: int, fit: str = "crop") -> Image.Image:
    """'crop': the centre of ``image`` with the aspect ratio of width x height (the engine then
    resizes it without distortion); 'stretch': the image unchanged (the engine stretches it)."""
    if fit == "stretch":
        return image
    if fit != "crop":
        raise ValueError(f"source.fit: {fit!r} is not 'crop' or 'stretch'")
    w, h = image.size
    target = width / height
    if abs(w / h - target) < 1e-6:
        return image
    if w / h > target:  # too wide: cut the sides
        new_w = max(1, round(h * target))
        left = (w - new_w) // 2
        return image.crop((left, 0, left + new_w, h))
    new_h = max(1, round(w / target))
    top = (h - new_h) // 2
    return image.crop((0, top, w, top + new_h))


def inversion_ready(folder: str | os.PathLike) -> bool:
    from masactrl_engine.inversion import META_FILE, TENSOR_FILE

    folder = Path(folder)
    return (folder / TENSOR_FILE).is_file() and (folder / META_FILE).is_file()


def ensure_inversion(request: InversionRequest, logger: logging.Logger | None = None) -> dict:
    """Invert the source into ``request.folder`` unless a valid inversion is already there.

    Returns {"path", "computed", "seconds", "stats"} (stats: the engine's UNet calls for it).
    """
    from masactrl_engine import InvertedSource

    logger = logger or log
    folder = Path(request.folder)
    if inversion_ready(folder):
        try:
            InvertedSource.load(folder)
            logger.info("Inversion %s found on disk; reusing it", folder)
            return {"path": str(folder), "computed": False, "seconds": 0.0, "stats": {}}
        except Exception as exc:  # noqa: BLE001 - a corrupt inversion is recomputed
            logger.warning("Inversion in %s is unreadable (%s); inverting again", folder, exc)

    t0 = time.perf_counter()
    slot = engines.get_engine(request.engine)
    with slot.lock:
        before = _stats(slot.engine)
        if request.image is not None:
            with Image.open(request.image) as img:
                source = fit_source(img.convert("RGB"), request.width, request.height, request.fit)
        else:
            logger.info("Generating the source from %r (seed %d)", request.generate_prompt, request.seed)
            source = slot.engine.generate(request.generate_prompt, seed=request.seed,
                                          height=request.height, width=request.width)
        inv = slot.engine.invert(source, prompt=request.inversion_prompt, height=request.height, width=request.width)
        stats = _delta(before, _stats(slot.engine))
    folder.mkdir(parents=True, exist_ok=True)
    # What the engine inverted (it resizes with bicubic filtering), for people and previews.
    frames_io.save_png_atomic(source.resize((request.width, request.height), Image.Resampling.BICUBIC),
                              folder / "source.png")
    inv.save(folder)
    seconds = time.perf_counter() - t0
    logger.info("Inverted the source in %.1f s (%d UNet calls) into %s", seconds, stats.get("inversion_calls", 0), folder)
    return {"path": str(folder), "computed": True, "seconds": seconds, "stats": stats}


def _failing_chunks() -> set[int]:
    raw = os.environ.get(FAIL_CHUNK_ENV, "").strip()
    return {int(x) for x in raw.split(",") if x.strip()} if raw else set()


def render_chunk_frames(
    chunk: ChunkRequest,
    logger: logging.Logger | None = None,
    on_frame: Optional[Callable[[int], None]] = None,
) -> dict:
    """Render the frames of ``chunk`` that are not on disk yet; write each PNG atomically.

    Frames are rendered ``batch_size`` at a time and written after every batch, so a crash
    loses at most one batch. On out-of-memory the batch is retried once at half the size after
    freeing memory. Returns {"index", "rendered", "skipped", "seconds", "frame_seconds", "stats"}.
    """
    from masactrl_engine import FrameSpec, InvertedSource

    logger = logger or log
    t0 = time.perf_counter()
    size = (chunk.width, chunk.height)
    todo_idx = set(frames_io.missing_frames(chunk.job_dir, [f.index for f in chunk.frames], size))
    todo = [f for f in chunk.frames if f.index in todo_idx]
    skipped = [f.index for f in chunk.frames if f.index not in todo_idx]
    report = {"index": chunk.index, "rendered": [], "skipped": skipped, "seconds": 0.0,
              "frame_seconds": {}, "stats": {}}
    if chunk.index in _failing_chunks():
        raise InjectedFailure(f"chunk {chunk.index}: failure injected by {FAIL_CHUNK_ENV} (test hook)")
    if not todo:
        logger.info("Chunk %d: all %d frames already on disk", chunk.index, len(chunk.frames))
        report["seconds"] = time.perf_counter() - t0
        return report

    slot = engines.get_engine(chunk.engine)
    inv = InvertedSource.load(chunk.inversion_dir, device=slot.engine.device)
    batch_size = chunk.batch_size
    with slot.lock:
        before = _stats(slot.engine)
        start, oom_retried = 0, False
        while start < len(todo):
            batch = todo[start : start + batch_size]
            specs = [FrameSpec(prompt=f.prompt, pose=frames_io.load_rgb(f.pose) if f.pose else None) for f in batch]
            tb = time.perf_counter()
            images = None
            try:
                images = slot.engine.render(inv, chunk.source_prompt, specs, batch_size=len(specs))
            except Exception as exc:
                if not is_out_of_memory(exc) or oom_retried or len(batch) == 1:
                    raise
                oom_retried = True
                batch_size = max(1, len(batch) // 2)
                logger.warning("Chunk %d: out of memory at batch size %d; freeing memory and retrying once at %d",
                               chunk.index, len(batch), batch_size)
            if images is None:
                # Outside the except block, so the traceback no longer pins the batch's tensors.
                engines.free_memory()
                continue
            per_frame = (time.perf_counter() - tb) / len(batch)
            for f, image in zip(batch, images):
                frames_io.save_png_atomic(image, frames_io.frame_path(chunk.job_dir, f.index))
                report["rendered"].append(f.index)
                report["frame_seconds"][f.index] = per_frame
                if on_frame is not None:
                    on_frame(f.index)
            start += len(batch)
        report["stats"] = _delta(before, _stats(slot.engine))
    report["seconds"] = time.perf_counter() - t0
    logger.info("Chunk %d: rendered %d frame(s), %d already on disk, %.1f s",
                chunk.index, len(report["rendered"]), len(skipped), report["seconds"])
    return report
