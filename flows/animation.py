"""The ``animate`` flow: one job in, PNG frames + GIF + MP4 + contact sheet out.

    validate -> plan (frame keys, in the flow body: what it refuses is an invalid job) ->
    invert-source (reused from disk) -> render-frames (subflow: render-chunk.map over the frames
    the frame store lacks) -> stitch -> measure (metrics.json)

The render tasks run in a subflow so that the job chooses their task runner
(``task_runner_for``): a thread pool by default, Dask on request.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Callable, Optional
from uuid import UUID

from prefect import flow
from prefect.artifacts import (
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed
from prefect.logging import get_run_logger
from prefect.states import Failed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from pydantic import BaseModel, Field, ValidationError
from pydantic.fields import FieldInfo

from flows import quality
from flows.execution.ghost_runs import clean_up_ghost, running
from flows.execution.gpu_claims import claim_gpu
from flows.execution.rendering import ChunkReport
from flows.execution.runners import make_task_runner, runner_settings_for
from flows.job.checkpoints import TINY_NOTE, is_tiny
from flows.job.frame_selection import select_frames
from flows.job.model import AnimationJob, InvalidJob, JobInputError
from flows.job.plan import ChunkRequest, JobPlan
from flows.job.preflight import checked_plan, run_problems
from flows.jobdir import frame_store, frames_io, stale_files
from flows.jobdir.layout import FrameStore, JobFolder
from flows.jobdir.manifest import unverified_frames
from flows.jobdir.versions import record_version
from flows.tasks import invert_source, measure, render_chunk, stitch
from flows.ui import progress, runlogs
from flows.ui.artifacts import (
    artifact_key,
    job_hash_of_key,
    progress_description,
    progress_percent,
    publish_metrics,
    publish_outputs,
)
from flows.ui.live_frames import publish_frames_so_far


class AnimationResult(BaseModel):
    """What a finished job produced: paths, counts, timings and the engine's UNet calls."""

    job_hash: str
    job_dir: str
    frame_count: int
    frames: list[str] = Field(description="PNG frames, in order.")
    gif: Optional[str] = None
    mp4: Optional[str] = None
    contact_sheet: Optional[str] = None
    side_by_side: Optional[str] = Field(None, description="pose | frame preview (GIF, else MP4, else PNG).")
    outputs: dict[str, str] = Field(default_factory=dict)
    inversion_dir: str
    inversion_cached: bool = Field(description="True when the inversion was not computed by this run.")
    frames_rendered: int
    frames_skipped: int = Field(description="Frames already rendered (by earlier runs, or other jobs with the same "
                                "frames).")
    missing_frames: list[int] = Field(default_factory=list, description="Frames not rendered yet: a run of a subset "
                                      "(`--frames`) stitches what exists; a full run renders the rest.")
    previous_versions: list[str] = Field(default_factory=list, description="Job hashes of earlier results of the same "
                                         "job name, oldest first (their folders stay until `cache prune`).")
    timings: dict[str, float] = Field(description="Seconds per stage: resolve, invert, render, stitch, total.")
    unet_calls: dict[str, int] = Field(description="Engine UNet calls/samples by purpose (masactrl_engine.EngineStats), "
                                       "for this run only.")
    notes: list[str] = Field(default_factory=list, description="What a person should know about these frames.")
    metrics: Optional[str] = Field(None, description="metrics.json of the job (quality.metrics).")
    metrics_summary: Optional[str] = Field(None, description="The metrics in one line.")


def task_runner_for(job: AnimationJob) -> TaskRunner:
    """The task runner of the job's render tasks; the single place where runners are chosen
    (``flows/execution/runners.py``: a bounded thread pool, or Dask on a local cluster / a scheduler)."""
    return make_task_runner(runner_settings_for(job.execution))


def _add_counts(total: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        total[k] = total.get(k, 0) + int(v)


def _zero_counts() -> dict[str, int]:
    from masactrl_engine import EngineStats

    return EngineStats().as_dict()


class ChunkFailed(RuntimeError):
    """A render chunk failed; ``chunk`` is its index (for the progress artifact)."""

    def __init__(self, message: str, chunk: int):
        super().__init__(message)
        self.chunk = chunk


@flow(name="render-frames", task_runner=ThreadPoolTaskRunner(max_workers=1))
def render_frames(chunks: list[ChunkRequest], progress_artifact_id: Optional[UUID] = None,
                  job_name: Optional[str] = None) -> list[ChunkReport]:
    """Fan the chunks out to the task runner; report progress as they finish."""
    runlogs.prepare_run_logs()
    logger = get_run_logger()
    total = sum(len(c.frames) for c in chunks)
    done = total - len(_unrendered(chunks))
    logger.info("Rendering %d frames in %d chunk(s); %d already rendered", total, len(chunks), done)
    with claim_gpu():  # under Dask: each chunk needs a worker's GPU resource, one at a time
        futures = render_chunk.map(chunks)
    chunk_of = {id(f): c.index for f, c in zip(futures, chunks)}
    job_hash = chunks[0].job_dir.rstrip("/").rsplit("/", 1)[-1] if chunks else ""
    reports, failures, arrived = [], [], []
    one_job = len({c.job_dir for c in chunks}) == 1
    with progress.frame_bar(total, initial=done) as bar:
        for future in as_completed(list(futures)):
            outcome = future.result(raise_on_failure=False)
            if not isinstance(outcome, ChunkReport):
                failures.append((chunk_of[id(future)], outcome))
                logger.error("A render chunk failed: %s", outcome)
                continue
            reports.append(outcome)
            done += len(outcome.rendered)
            bar.update(len(outcome.rendered))
            # Above the bar, on stderr with it: stdout carries `run --json`'s result.
            bar.write(f"chunk {outcome.index}: frames {', '.join(map(str, outcome.rendered)) or 'none'} rendered "
                      f"({done}/{total})", file=sys.stderr)
            arrived += outcome.rendered + outcome.skipped
            if progress_artifact_id is not None:
                update_progress_artifact(progress_artifact_id, progress=progress_percent(done, total),
                                         description=progress_description(done, total, job_hash, job_name))
                if one_job:  # a sweep's chunks fill many job folders: its own page shows its cells
                    publish_frames_so_far(chunks[0].job_dir, arrived, total, job_hash, job_name)
    if failures:
        failures.sort(key=lambda f: f[0])
        first_chunk, first_error = failures[0]
        raise ChunkFailed(
            f"{len(failures)} of {len(chunks)} render chunk(s) failed (chunk {first_chunk}: {first_error}); the "
            "frames already written are kept: run the same job again to render only the missing ones",
            chunk=first_chunk,
        )
    return sorted(reports, key=lambda r: r.index)


def _unrendered(chunks: list[ChunkRequest]) -> list[int]:
    """Indices of the chunks' frames that the frame store does not hold yet."""
    if not chunks:
        return []
    frames = [f for c in chunks for f in c.frames]
    missing = frame_store.missing_keys(FrameStore(chunks[0].store_dir), [f.key for f in frames], chunks[0].size)
    return [f.index for f in frames if f.key in missing]


def mark_progress_cancelled(flow, flow_run, state) -> None:
    """on_cancellation hook: the run's progress artifact says so, with the frames on disk counted
    (a chunk that finished after the last update, or one that was running when the cancel came,
    wrote its frames). It may run in another process than the flow, so the artifact is found
    through the API and the job is planned again (writing nothing) from the run's parameters."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]), type=ArtifactFilterType(any_=["progress"])))
    job, plan = None, None
    try:
        job = AnimationJob.model_validate((flow_run.parameters or {}).get("job"))
        plan = checked_plan(job, write=False)
    except Exception:  # noqa: BLE001 - a hook must not fail the cancel: fall back to the last update
        pass
    for artifact in artifacts:
        job_hash = job_hash_of_key(artifact.key or "")
        if plan is not None and Path(plan.job_dir).name == job_hash:
            done, total = _frames_done(plan), len(plan.frames)
            update_progress_artifact(artifact.id, progress=progress_percent(done, total), description=(
                progress_description(done, total, plan.job_hash, job.name, status="cancelled")))
            continue
        percent = float(artifact.data or 0.0)
        name = f"{job.name} ({job_hash})" if job is not None and job.name else job_hash
        update_progress_artifact(artifact.id, progress=percent, description=(
            f"Frames of job {name}: {percent:.0f}%, cancelled; run the job again to resume"))


def checked_job(job, logger) -> AnimationJob:
    """The job validated on the worker: the model's rules, then what only the worker can check
    (input/output roots, its devices and scheduler, the text encoder's token limit). Raises
    InvalidJob naming each problem; a flow wrapped in :func:`fails_invalid_job` ends Failed with it."""
    try:
        job = AnimationJob.model_validate(job.model_dump() if isinstance(job, AnimationJob) else job)
    except ValidationError as exc:
        raise InvalidJob.from_validation_error(exc) from None
    problems, warnings = run_problems(job)
    if problems:
        raise InvalidJob(problems)
    for field, text in warnings:
        logger.warning("%s: %s", field, text)
    return job


def fails_invalid_job(fn: Callable) -> Callable:
    """Wraps a flow's function (under ``@flow``): a job it refuses (InvalidJob, from
    :func:`checked_job`) ends the run Failed with "Invalid job: <problems>" as its state message,
    logged once, shown on the run page instead of a traceback (flows/ui/runlogs.py drops the
    engine's). The one place where a refused job becomes a failed state."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InvalidJob as exc:
            message = f"Invalid job: {exc}"
            get_run_logger().error(message)
            return Failed(message=message)

    return run


# validate_parameters=False: the job is validated first thing in the body instead, so that an
# invalid job from the UI form fails the run with the validation message as its state message
# rather than a traceback.
def run_name() -> str:
    """A flow run's name: the job's name (else 'animate') and two random words, so that users find
    their run in the list."""
    from prefect.runtime import flow_run
    from prefect.utilities.names import generate_slug

    job = flow_run.parameters.get("job")
    name = job.get("name") if isinstance(job, dict) else getattr(job, "name", None)
    return f"{name if isinstance(name, str) and name else 'animate'}-{generate_slug(2)}"


@flow(name="animate", flow_run_name=run_name, task_runner=ThreadPoolTaskRunner(max_workers=1), persist_result=True,
      result_serializer="json", validate_parameters=False, on_cancellation=[mark_progress_cancelled])
@fails_invalid_job
def animate(
    job: AnimationJob,
    frames: Optional[list[int]] = Field(
        None, description="Render only these frames (e.g. [0, 4, 8]) as a quick preview, and stitch what the job "
        "folder holds; empty: every frame. A later full run renders only the rest."),
) -> AnimationResult:
    """Render a consistent animation of the source picture's subject (MasaCtrl + ControlNet OpenPose)."""
    runlogs.prepare_run_logs()
    logger = get_run_logger()
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    job = checked_job(job, logger)
    notes = [TINY_NOTE.format(name=job.model.model)] if is_tiny(job.model) else []
    if job.sweep is not None:
        # One job file serves both commands: a run renders the job's own settings (e.g. with the
        # sweep's best --set line); the grid is rendered by the sweep flow.
        notes.append(f"the job's sweep section ({', '.join(job.sweep.grid) or 'no settings'}) is ignored by a run; "
                     "`masactrl-animate sweep JOB` renders the grid")
    for note in notes:
        logger.warning(note)

    # Planned in the flow body, not in a task: what planning refuses (counts, pose files, sizes) ends
    # the run as an invalid job, with its message and no task traceback in the run's logs.
    plan = checked_plan(job)
    logger.info("Job %s: %d frames -> %s", Path(plan.job_dir).name, len(plan.frames), plan.job_dir)
    selected = _selected(frames, len(plan.frames))
    timings["resolve"] = time.perf_counter() - t_start
    progress_id = create_progress_artifact(
        0.0, key=artifact_key("progress", plan.job_hash, job.name),
        description=progress_description(0, len(plan.frames), plan.job_hash, job.name))

    with frames_io.folder_lock(Path(plan.job_dir)):  # an identical run waits, then reuses these frames
        # A run of this job killed hard (kill -9) left running.json: crash it in the API and free its
        # GPU slot now rather than when its lease expires (flows/execution/ghost_runs.py).

        stale_files.remove_abandoned_temp_files(plan.job_dir)  # an encoder killed mid-MP4, a half-written frame
        me = flow_run_id()
        clean_up_ghost(plan.job_dir, me, logger)
        with running(plan.job_dir, me):
            return _render_and_stitch(job, plan, selected, progress_id, notes, timings, t_start)


def _selected(frames, count: int) -> Optional[list[int]]:
    """The frames of a subset run (None: all), checked like the job: a bad index is an invalid job."""
    if isinstance(frames, FieldInfo):  # called as a plain function, without the parameter
        return None
    try:
        return select_frames(frames, count)
    except JobInputError as exc:
        raise InvalidJob([(exc.field, str(exc).removeprefix(f"{exc.field}: "))]) from None


def flow_run_id() -> Optional[UUID]:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx.flow_run.id if ctx is not None and ctx.flow_run is not None else None


def _render_and_stitch(job: AnimationJob, plan: JobPlan, selected: Optional[list[int]], progress_id: UUID,
                       notes: list[str], timings: dict[str, float], t_start: float) -> AnimationResult:
    logger = get_run_logger()
    t = time.perf_counter()
    inversion = invert_source(plan.inversion)
    timings["invert"] = time.perf_counter() - t
    unet_calls = _zero_counts()
    _add_counts(unet_calls, inversion.stats)

    t = time.perf_counter()
    chunks = plan.chunks(job.execution.chunk_size, job.execution.batch_size, inversion.path, indices=selected)
    try:
        reports = render_frames.with_options(task_runner=task_runner_for(job))(chunks, progress_id, job.name)
    except Exception as exc:
        done = _frames_done(plan)
        update_progress_artifact(progress_id, progress=progress_percent(done, len(plan.frames)), description=(
            progress_description(done, len(plan.frames), plan.job_hash, job.name, status="failed",
                                 failed_chunk=getattr(exc, "chunk", None), chunk_count=len(chunks))))
        raise
    timings["render"] = time.perf_counter() - t
    for r in reports:
        _add_counts(unet_calls, r.stats)

    # A subset run stitches the frames that exist: the ones it rendered, and the job's other frames
    # that the store already holds (rendered by earlier runs or other jobs), presented here.
    if selected is not None:
        frame_store.present_stored(FrameStore(plan.store_dir), [(f.index, f.key) for f in plan.frames
                                                                if f.index not in selected], plan.job_dir, plan.size)
    shown = plan.only(_frames_present(plan))
    missing = [f.index for f in plan.frames if f.index not in {s.index for s in shown.frames}]
    if missing:
        logger.info("Frames %s are not rendered yet: stitching the %d that are (a full run renders the rest)",
                    ", ".join(map(str, missing)), len(shown.frames))
    t = time.perf_counter()
    outputs = stitch(shown.frame_paths(), plan.job_dir, job.output.fps, job.output.gif, job.output.mp4,
                     job.output.gif_loops, shown.pose_paths() or None, job.output.interpolate, job.output.loop,
                     job.output.playback_fps)
    timings["stitch"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start

    rendered = sum(len(r.rendered) for r in reports)
    result = AnimationResult(
        job_hash=plan.job_hash,
        job_dir=plan.job_dir,
        frame_count=len(plan.frames),
        frames=shown.frame_paths(),
        missing_frames=missing,
        gif=outputs.get("gif"),
        mp4=outputs.get("mp4"),
        contact_sheet=outputs.get("contact_sheet"),
        side_by_side=outputs.get("side_by_side_gif") or outputs.get("side_by_side_mp4") or outputs.get("side_by_side_png"),
        outputs=outputs,
        inversion_dir=inversion.path,
        inversion_cached=not inversion.computed,
        frames_rendered=rendered,
        frames_skipped=sum(len(c.frames) for c in chunks) - rendered,
        timings={k: round(v, 3) for k, v in timings.items()},
        unet_calls=unet_calls,
        notes=notes,
    )
    if job.name:
        previous = record_version(job.output.folder, job.name, plan.job_hash)
        result = result.model_copy(update={"previous_versions": previous})
    _publish(result, shown, reports, progress_id, job.name)
    frames_io.write_json_atomic(JobFolder(plan.job_dir).result, result.model_dump(mode="json"))
    if job.quality.metrics and missing:
        note = "metrics not measured: they describe a whole animation, and this run stitched a subset"
        logger.info(note)
        result = result.model_copy(update={"notes": result.notes + [note]})
        frames_io.write_json_atomic(JobFolder(plan.job_dir).result, result.model_dump(mode="json"))
    elif job.quality.metrics:
        result = _measured(job, plan, result)
    logger.info("Done: %d frames (%d rendered) in %.1f s -> %s", result.frame_count, rendered, timings["total"],
                result.gif or result.mp4 or result.job_dir)
    return result


def _measured(job: AnimationJob, plan: JobPlan, result: AnimationResult) -> AnimationResult:
    """Metrics of the finished frames. They describe the result, they are not the result: a
    metric that fails is logged and noted, the job stays complete."""
    logger = get_run_logger()
    detector_dir = str(job.quality.detector_dir) if job.quality.detector_dir else None
    state = measure(plan.job_dir, job.quality.detector, detector_dir, return_state=True)
    if not state.is_completed():
        note = f"metrics not measured: {state.message}"
        logger.warning(note)
        result = result.model_copy(update={"notes": result.notes + [note]})
    else:
        metrics = state.result()
        line = quality.summary_line(metrics)
        publish_metrics(metrics, plan.job_hash, job.name)
        result = result.model_copy(update={"metrics": str(JobFolder(plan.job_dir).metrics),
                                           "metrics_summary": line})
    frames_io.write_json_atomic(JobFolder(plan.job_dir).result, result.model_dump(mode="json"))
    return result


def _frames_present(plan: JobPlan) -> list[int]:
    """Indices of the frames the job folder holds, verified."""
    missing = set(unverified_frames(plan.job_dir, [f.index for f in plan.frames], plan.size))
    return [f.index for f in plan.frames if f.index not in missing]


def _frames_done(plan: JobPlan) -> int:
    return len(_frames_present(plan))


def _publish(result: AnimationResult, plan: JobPlan, reports: list[ChunkReport], progress_id: UUID,
             job_name: Optional[str]) -> None:
    publish_outputs(result, plan.frames, reports, job_name=job_name, progress_id=progress_id)


