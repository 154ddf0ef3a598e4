"""Prefect tasks: thin wrappers around the plain functions in plan / rendering / stitch.

Tasks take and return small things (pydantic requests, paths, dicts of numbers); pixels and
tensors stay on disk.
"""

from __future__ import annotations

from typing import Any, Optional

from prefect import task
from prefect.cache_policies import NO_CACHE, CachePolicy

from . import rendering, stitch as stitch_lib
from .concurrency import gpu_slot
from .job import AnimationJob
from .plan import ChunkRequest, InversionRequest, JobPlan, plan_job


def _inversion_cache_key(context: Any, parameters: dict[str, Any]) -> Optional[str]:
    request = parameters["request"]
    key = request.key if isinstance(request, InversionRequest) else request["key"]
    return f"masactrl-inversion-{key}"


# Keyed only on what the inversion depends on (image bytes, model, steps, size, prompt): not on
# the run id (Prefect's default), so later runs and other jobs on the same source hit it.
INVERSION_CACHE = CachePolicy.from_cache_key_fn(_inversion_cache_key)


def _logger():
    from prefect.logging import get_run_logger

    return get_run_logger()


@task(name="resolve-job", cache_policy=NO_CACHE)
def resolve_job(job: AnimationJob) -> JobPlan:
    """Resolve poses, check counts and sizes, hash the job, write job.json and the pose maps."""
    plan = plan_job(job)
    _logger().info("Job %s: %d frames -> %s", plan.job_hash[:16], len(plan.frames), plan.job_dir)
    return plan


@task(
    name="invert-source",
    cache_policy=INVERSION_CACHE,
    persist_result=True,
    result_serializer="json",
    retries=1,
    retry_delay_seconds=2,
)
def invert_source(request: InversionRequest) -> dict:
    """DDIM-invert the source once; the result is the folder holding the inversion files."""
    with gpu_slot():
        return rendering.ensure_inversion(request, _logger())


@task(
    name="render-chunk",
    task_run_name="render-chunk-{chunk.index}",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=2,
)
def render_chunk(chunk: ChunkRequest) -> dict:
    """Render the chunk's frames that are not on disk yet (resumable, OOM-tolerant)."""
    with gpu_slot():
        return rendering.render_chunk_frames(chunk, _logger())


@task(name="stitch", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def stitch(
    frame_paths: list[str],
    out_dir: str,
    fps: float,
    gif: bool,
    mp4: bool,
    loop: int,
    pose_paths: Optional[list[str]] = None,
) -> dict[str, str]:
    """GIF, MP4, contact sheet (and the pose | frame preview when poses were used)."""
    outputs = stitch_lib.stitch_outputs(
        frame_paths, out_dir, fps=fps, gif=gif, mp4=mp4, loop=loop, pose_paths=pose_paths or None
    )
    _logger().info("Wrote %s", ", ".join(sorted(outputs.values())))
    return outputs
