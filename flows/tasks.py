"""Prefect tasks: thin wrappers around the plain functions in rendering / stitch / quality.

Tasks take and return small things (pydantic requests and reports, paths); pixels and tensors
stay on disk. Idempotence lives on disk too (``flows/execution/rendering.py``), not in Prefect's result
cache: an inversion folder or a frame file is the record that the work is done.
"""

from __future__ import annotations

from typing import Optional

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from flows import quality
from flows.execution import rendering
from flows.execution.gpu_claims import gpu_slot
from flows.job.model import JobInputError
from flows.job.plan import ChunkRequest, InversionRequest
from flows.jobdir import stitch as stitch_lib
from flows.ui import runlogs


def _logger():
    """The run's logger; the engine's and pose sources' records go to the same run log (a task may
    run in a Dask worker process, where no flow has set that up)."""
    runlogs.prepare_run_logs()
    return get_run_logger()


def worth_retrying(task, task_run, state) -> bool:
    """Retry what may pass the second time (a lost worker, a flaky share, out of memory), not
    what fails again the same way: bad input, or a model or file that is not there."""
    from pydantic import ValidationError

    from masactrl_engine import EngineInputError

    try:
        state.result()
    except (JobInputError, EngineInputError, ValidationError, FileNotFoundError):
        return False
    except BaseException:  # noqa: BLE001 - anything else may be transient
        return True
    return True


@task(name="invert-source", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2,
      retry_condition_fn=worth_retrying)
def invert_source(request: InversionRequest) -> rendering.InversionResult:
    """DDIM-invert the source once: reused from its content-addressed folder when it is there."""
    with gpu_slot():
        return rendering.ensure_inversion(request, _logger())


@task(
    name="render-chunk",
    task_run_name="render-chunk-{chunk.index}",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=worth_retrying,
)
def render_chunk(chunk: ChunkRequest) -> rendering.ChunkReport:
    """Render the chunk's frames that are not on disk yet (resumable, OOM-tolerant)."""
    with gpu_slot():
        return rendering.render_chunk_frames(chunk, _logger())


@task(name="measure", cache_policy=NO_CACHE)
def measure(job_dir: str, detector: str = "mediapipe", detector_dir: Optional[str] = None):
    """Weight-free metrics of the finished frames (flows/quality/), written to metrics.json."""
    metrics = quality.compute_job_metrics(job_dir, detector_kind=detector, detector_dir=detector_dir)
    quality.write_metrics(job_dir, metrics)
    _logger().info(quality.summary_line(metrics))
    return metrics


@task(name="stitch", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def stitch(
    frame_paths: list[str],
    out_dir: str,
    fps: float,
    gif: bool,
    mp4: bool,
    gif_loops: int,
    pose_paths: Optional[list[str]] = None,
    interpolate: int = 1,
    loop: str = "none",
    playback_fps: Optional[float] = None,
) -> dict[str, str]:
    """GIF, MP4 (in-between frames and loop mode applied), contact sheet (and the pose | frame
    preview when poses were used)."""
    outputs = stitch_lib.stitch_outputs(
        frame_paths, out_dir, fps=fps, gif=gif, mp4=mp4, gif_loops=gif_loops, pose_paths=pose_paths or None,
        verify_frames=True,  # never stitch a frame that does not match its digest
        interpolate=interpolate, loop=loop, playback_fps=playback_fps,
    )
    _logger().info("Wrote %s", ", ".join(sorted(outputs.values())))
    return outputs
