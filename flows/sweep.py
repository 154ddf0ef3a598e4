"""The ``sweep`` flow: a grid of render settings from one inversion, ranked by the quality metrics.

    plan every cell (errors before any work) -> invert-source once per distinct inversion
    -> render-frames (the animate flow's subflow: render-chunk.map over every cell's chunks)
    -> per cell: metrics + a small GIF -> grid.png, ranking (table artifact + ranking.json)
    -> the best cell as a ready ``--set`` line for ``masactrl-animate run``

A cell is the job with the cell's settings (``sweep.apply_cell``); it renders only the selected
frame indices, under their own indices, into the cell job's own folder (the folder a full run of
that job uses, named by its hash). So the frames are cached per cell: a re-run renders nothing,
a failed cell resumes alone, and ``masactrl-animate run`` with the best ``--set`` line later
renders only the frames the sweep did not. Nothing in a cell's job folder says "finished": the
sweep writes no result.json there; its own outputs go to ``<output.folder>/sweeps/<sweep hash>/``
(``grid.png``, ``ranking.json``, ``sweep.json``, ``cells/cell_NN.gif`` and
``cells/cell_NN.metrics.json``).

The inversion does not depend on MasaCtrl settings (``plan.inversion_settings``), so cells that
differ only in them share one inversion; cells that change steps or size get one each.

A job may carry its grid in ``sweep:`` (``AnimationJob.sweep``); the flow's ``grid`` parameter
adds axes or replaces the job's axes of the same key, ``frames`` replaces ``sweep.frames``. The
``animate`` flow ignores ``sweep:`` and renders the job's own settings, so the job file that was
swept runs unchanged with the best ``--set`` line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from flows.animation import checked_job, render_frames, task_runner_for
from flows.execution import rendering
from flows.job.model import AnimationJob, JobInputError
from flows.job.plan import ChunkRequest, JobPlan, plan_job
from flows.job.sweep_axes import flatten
from flows.jobdir import frames_io
from flows.jobdir.manifest import load_verified_frame, unverified_frames
from flows.jobdir.stitch import write_gif
from flows.quality import metrics as quality
from flows.quality.metrics import summary_line
from flows.sweeps.grid import (
    SweepCell,
    SweepError,
    SweepSpec,
    apply_cell,
    best_set_line,
    expand_cells,
    grid_image,
    parse_sweep,
    rank_cells,
    ranking_table,
    select_frames,
)
from flows.tasks import invert_source
from flows.ui import runlogs
from flows.ui.artifacts import artifact_key, thumbnail_markdown

SWEEPS_DIR = "sweeps"
CELLS_DIR = "cells"
GRID_FILE = "grid.png"
RANKING_FILE = "ranking.json"
SWEEP_FILE = "sweep.json"
SWEEP_FORMAT = 1


# --------------------------------------------------------------------------- planning (no Prefect)


@dataclass
class SweepPlan:
    """Every cell planned: its job, its plan (all frames, hashed like a full run), the frames to render."""

    spec: SweepSpec
    cells: list[SweepCell]
    jobs: list[AnimationJob]
    plans: list[JobPlan]
    frame_indices: list[int]
    sweep_hash: str
    sweep_dir: Path

    def cell_dir(self, cell: SweepCell) -> str:
        return self.plans[cell.index].job_dir

    def frame_paths(self, cell: SweepCell) -> list[str]:
        return [str(frames_io.frame_path(self.cell_dir(cell), i)) for i in self.frame_indices]

    def gif_path(self, cell: SweepCell) -> Path:
        return self.sweep_dir / CELLS_DIR / f"cell_{cell.index:02d}.gif"

    def metrics_path(self, cell: SweepCell) -> Path:
        return self.sweep_dir / CELLS_DIR / f"cell_{cell.index:02d}.metrics.json"


def sweep_mapping(job: AnimationJob, grid: Optional[dict[str, Any]] = None,
                  frames: Optional[list[int]] = None) -> dict[str, Any]:
    """The job's ``sweep:`` grid with ``grid`` laid over it (same key: replaced) and the frames."""
    mapping: dict[str, Any] = dict(job.sweep.grid) if job.sweep is not None else {}
    if grid is not None:
        if not isinstance(grid, dict):
            raise SweepError(f"grid: expected a mapping of setting -> values, got {type(grid).__name__}")

        mapping.update(flatten(grid))
    chosen = frames if frames is not None else (job.sweep.frames if job.sweep is not None else None)
    if chosen is not None:
        mapping["frames"] = chosen
    return mapping


def prepare_sweep(job: AnimationJob, grid: Optional[dict[str, Any]] = None, frames: Optional[list[int]] = None,
                  write: bool = True) -> SweepPlan:
    """Parse the grid, expand and plan every cell; raises ``SweepError`` naming the key (or the
    cell and its field) before any model is loaded. With ``write`` each cell's job folder gets its
    job.json and pose maps, as ``plan_job`` does for a run."""
    spec = parse_sweep(sweep_mapping(job, grid, frames))
    base = job.model_copy(update={"sweep": None})
    cells = expand_cells(spec)
    jobs, plans = [], []
    for cell in cells:
        cell_job = apply_cell(base, cell)
        try:
            plans.append(plan_job(cell_job, write=write))
        except JobInputError as exc:
            raise SweepError(f"sweep cell {cell.label()}: {exc}") from None
        jobs.append(cell_job)
    first = plans[0]
    for cell, plan in zip(cells, plans):
        if plan.size != first.size:
            raise SweepError(f"sweep cell {cell.label()}: {plan.size[0]}x{plan.size[1]} frames, other cells "
                             f"{first.size[0]}x{first.size[1]}; a grid needs one frame size: do not sweep "
                             "settings.width / settings.height")
        if len(plan.frames) != len(first.frames):
            raise SweepError(f"sweep cell {cell.label()}: {len(plan.frames)} frames, other cells "
                             f"{len(first.frames)}; sweep settings that keep the number of frames")
    indices = sorted(select_frames(len(first.frames), spec.frames))
    digest = hashlib.sha256(json.dumps({
        "format": SWEEP_FORMAT,
        "axes": [a.key for a in spec.axes],
        "cells": [[c.values, p.job_hash] for c, p in zip(cells, plans)],
        "frames": indices,
    }, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    sweep_dir = Path(job.output.folder).absolute() / SWEEPS_DIR / digest[:16]
    return SweepPlan(spec=spec, cells=cells, jobs=jobs, plans=plans, frame_indices=indices, sweep_hash=digest,
                     sweep_dir=sweep_dir)


def cell_chunks(plan: JobPlan, indices: list[int], chunk_size: int, batch_size: int, inversion_dir: str,
                first_index: int) -> list[ChunkRequest]:
    """The chunks that render ``indices`` of one cell, numbered from ``first_index``. Built from
    the plan's own chunk (so the anchor frame, the engine request and the folder are the full
    job's), keeping the frames' own indices, so the files are those of a full run."""
    (whole,) = plan.chunks(len(plan.frames), batch_size, inversion_dir)
    wanted = set(indices)
    picked = [f for f in plan.frames if f.index in wanted]
    return [whole.model_copy(update={"index": first_index + k, "frames": picked[start : start + chunk_size]})
            for k, start in enumerate(range(0, len(picked), chunk_size))]


# --------------------------------------------------------------------------- results


class SweepCellResult(BaseModel):
    index: int
    row: int
    column: int
    values: dict[str, Any] = Field(description="Swept setting -> this cell's value.")
    set_line: str = Field(description="This cell as --set options for `masactrl-animate run`.")
    job_hash: str
    job_dir: str = Field(description="The cell job's folder: its frames (the same folder a full run uses).")
    frames: list[str] = Field(default_factory=list, description="The cell's rendered frames, in order.")
    gif: Optional[str] = None
    metrics: Optional[str] = Field(None, description="The cell's metrics (JobMetrics JSON).")
    metrics_summary: Optional[str] = None
    rank: Optional[int] = None
    score: Optional[float] = Field(None, description="0 = best on every criterion .. 1 = worst (sweep.rank_cells).")
    status: str = Field("done", description="'done', or 'failed' when some of its frames are not rendered.")


class SweepResult(BaseModel):
    sweep_hash: str
    sweep_dir: str
    axes: dict[str, list[Any]] = Field(description="Swept setting -> values, in axis order.")
    frame_indices: list[int] = Field(description="Frame indices rendered per cell.")
    cells: list[SweepCellResult]
    grid: Optional[str] = Field(None, description="The labelled grid image (grid.png).")
    ranking: Optional[str] = Field(None, description="ranking.json: the ranked table.")
    table: list[dict[str, Any]] = Field(default_factory=list, description="The ranking, best first.")
    best_cell: Optional[int] = None
    best_set: Optional[str] = Field(None, description="The best cell as --set options for `masactrl-animate run`.")
    inversion_dirs: list[str] = Field(description="One inversion per distinct inversion key.")
    inversions_computed: int
    frames_rendered: int
    frames_skipped: int
    unet_calls: dict[str, int]
    timings: dict[str, float]
    notes: list[str] = Field(default_factory=list)


def _add_counts(total: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        total[k] = total.get(k, 0) + int(v)


@task(name="measure-cell", cache_policy=NO_CACHE)
def measure_cell(job_dir: str, indices: list[int], inversion_dir: str, job_hash: str, out_path: str,
                 detector: str = "mediapipe", detector_dir: Optional[str] = None):
    """The metrics of one cell's frames, written to the sweep folder (not the cell's job folder)."""
    metrics = quality.compute_frame_metrics(job_dir, indices, inversion_dir, job_hash=job_hash,
                                            detector_kind=detector, detector_dir=detector_dir)
    frames_io.write_json_atomic(out_path, json.loads(metrics.model_dump_json()))
    return metrics


def _cell_outputs(job: AnimationJob, sp: SweepPlan, cell: SweepCell, inversion_dir: str, logger):
    """GIF and metrics of a complete cell: (gif path, metrics or None, note or None)."""
    frames = [load_verified_frame(p) for p in sp.frame_paths(cell)]
    gif = write_gif(frames, sp.gif_path(cell), job.output.fps, job.output.loop)
    q = job.quality
    state = measure_cell(sp.cell_dir(cell), sp.frame_indices, inversion_dir, sp.plans[cell.index].job_hash,
                         str(sp.metrics_path(cell)), q.detector, str(q.detector_dir) if q.detector_dir else None,
                         return_state=True)
    if not state.is_completed():
        note = f"cell {cell.label()}: metrics not measured ({state.message})"
        logger.warning(note)
        return str(gif), frames, None, note
    return str(gif), frames, state.result(), None


def _ranking_markdown(result: SweepResult, root: Path) -> str:
    lines = [f"# Sweep {result.sweep_hash[:16]}", ""]
    if result.grid:
        lines += [thumbnail_markdown(result.grid, root, "sweep grid"), ""]
    if result.best_set:
        lines += ["Best cell, ready for `masactrl-animate run JOB`:", "", f"`{result.best_set}`", ""]
    lines += [f"{len(result.cells)} cells x {len(result.frame_indices)} frames (indices "
              f"{', '.join(map(str, result.frame_indices))}), {len(result.inversion_dirs)} inversion(s); "
              f"{result.frames_rendered} frames rendered now, {result.frames_skipped} already on disk."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the flow


# validate_parameters=False, as for animate: an invalid job or grid fails the run with one message.
@flow(name="sweep", task_runner=ThreadPoolTaskRunner(max_workers=1), persist_result=True, result_serializer="json",
      validate_parameters=False)
def sweep(job: AnimationJob, grid: Optional[dict[str, list[Any]]] = None,
          frames: Optional[list[int]] = None) -> SweepResult:
    """Render a grid of settings from one inversion and rank the cells by the quality metrics.

    Args:
        job: The job to sweep; its `sweep` section may hold the grid and the frame indices.
        grid: Setting -> values to try, e.g. {"settings.start_step": [2, 4, 8], "settings.start_layer": [8, 10]};
            adds to the job's sweep.grid (a key given in both: these values).
        frames: Frame indices rendered per cell (default: the job's sweep.frames, else up to 4 spread over
            the sequence).
    """
    runlogs.prepare_run_logs()
    logger = get_run_logger()
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    job = checked_job(job, logger)
    if not isinstance(job, AnimationJob):
        return job  # a Failed state with the validation message
    try:
        sp = prepare_sweep(job, grid, frames, write=True)
    except SweepError as exc:
        message = f"Invalid sweep: {exc}"
        logger.error(message)
        return Failed(message=message)
    timings["plan"] = time.perf_counter() - t_start
    cells, plans = sp.cells, sp.plans
    key = sp.sweep_hash[:16]
    logger.info("Sweep %s: %d cells (%s) x frames %s -> %s", key, len(cells),
                " x ".join(f"{a.key}[{len(a.values)}]" for a in sp.spec.axes), sp.frame_indices, sp.sweep_dir)
    notes: list[str] = []

    # One inversion per distinct key (MasaCtrl settings do not enter it).
    t = time.perf_counter()
    unet_calls: dict[str, int] = {}
    inversions: dict[str, rendering.InversionResult] = {}
    for plan in plans:
        if plan.inversion.key not in inversions:
            inversions[plan.inversion.key] = invert_source(plan.inversion)
            _add_counts(unet_calls, inversions[plan.inversion.key].stats)
    timings["invert"] = time.perf_counter() - t
    inversion_dir = {c.index: inversions[plans[c.index].inversion.key].path for c in cells}

    # Every cell's chunks through the same fan-out; a folder shared by two cells is rendered once.
    chunks: list[ChunkRequest] = []
    owner: dict[str, SweepCell] = {}
    for cell, plan in zip(cells, plans):
        if plan.job_dir in owner:
            notes.append(f"cells {owner[plan.job_dir].label()} and {cell.label()} render the same frames "
                         "(the swept setting changes nothing here)")
            continue
        owner[plan.job_dir] = cell
        chunks += cell_chunks(plan, sp.frame_indices, job.execution.chunk_size, job.execution.batch_size,
                              inversion_dir[cell.index], len(chunks))
    progress_id = create_progress_artifact(0.0, key=f"sweep-progress-{key}", description=f"Frames of sweep {key}")
    t = time.perf_counter()
    render_error: Optional[BaseException] = None
    reports = []
    with contextlib.ExitStack() as locks:  # an identical job or sweep waits, then reuses these frames
        for folder in sorted(owner):
            locks.enter_context(frames_io.folder_lock(Path(folder)))
        try:
            reports = render_frames.with_options(task_runner=task_runner_for(job))(chunks, progress_id)
        except Exception as exc:  # noqa: BLE001 - the other cells' frames are on disk: show them
            render_error = exc
            logger.error("Some sweep cells failed to render: %s", exc)
    timings["render"] = time.perf_counter() - t
    for r in reports:
        _add_counts(unet_calls, r.stats)
    rendered = sum(len(r.rendered) for r in reports)
    total_frames = sum(len(c.frames) for c in chunks)

    # Per cell: GIF + metrics of a complete cell; the grid and the ranking over all cells.
    t = time.perf_counter()
    sp.sweep_dir.joinpath(CELLS_DIR).mkdir(parents=True, exist_ok=True)
    cell_results: dict[int, SweepCellResult] = {}
    cell_frames: dict[int, list] = {}
    metrics: dict[int, Any] = {}
    for cell, plan in zip(cells, plans):
        res = SweepCellResult(index=cell.index, row=cell.row, column=cell.column, values=cell.values,
                              set_line=cell.set_line, job_hash=plan.job_hash, job_dir=plan.job_dir)
        if unverified_frames(plan.job_dir, sp.frame_indices, plan.size):
            res.status = "failed"
            metrics[cell.index] = None
        else:
            gif, pictures, m, note = _cell_outputs(job, sp, cell, inversion_dir[cell.index], logger)

            res.frames, res.gif, cell_frames[cell.index] = sp.frame_paths(cell), gif, pictures
            metrics[cell.index] = m
            if m is not None:
                res.metrics, res.metrics_summary = str(sp.metrics_path(cell)), summary_line(m)
            if note:
                notes.append(note)
        cell_results[cell.index] = res
    grid_path = None
    if cell_frames:
        grid = grid_image(cells, cell_frames)
        grid_path = str(frames_io.save_png_atomic(grid.image, sp.sweep_dir / GRID_FILE))
    ranked = rank_cells(cells, metrics)
    table = ranking_table(ranked)
    for r in ranked:
        cell_results[r.cell.index].rank, cell_results[r.cell.index].score = r.rank, r.score
    try:
        best_set, best_cell = best_set_line(ranked), ranked[0].cell.index
    except SweepError as exc:
        best_set, best_cell = None, None
        notes.append(str(exc))
    timings["measure"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start

    result = SweepResult(
        sweep_hash=sp.sweep_hash,
        sweep_dir=str(sp.sweep_dir),
        axes={a.key: a.values for a in sp.spec.axes},
        frame_indices=sp.frame_indices,
        cells=[cell_results[c.index] for c in cells],
        grid=grid_path,
        ranking=str(sp.sweep_dir / RANKING_FILE),
        table=table,
        best_cell=best_cell,
        best_set=best_set,
        inversion_dirs=[inv.path for inv in inversions.values()],
        inversions_computed=sum(1 for inv in inversions.values() if inv.computed),
        frames_rendered=rendered,
        frames_skipped=total_frames - rendered if render_error is None else 0,
        unet_calls=unet_calls,
        timings={k: round(v, 3) for k, v in timings.items()},
        notes=notes,
    )
    frames_io.write_json_atomic(sp.sweep_dir / RANKING_FILE, {
        "sweep_hash": sp.sweep_hash, "axes": result.axes, "frame_indices": sp.frame_indices,
        "best_cell": best_cell, "best_set": best_set, "table": table,
        "cells": [c.model_dump(mode="json") for c in result.cells],
    })
    frames_io.write_json_atomic(sp.sweep_dir / SWEEP_FILE, result.model_dump(mode="json"))
    _publish(job, result, progress_id, render_error is None)

    failed = [c for c in result.cells if c.status == "failed"]
    if failed or render_error is not None:
        labels = "; ".join(cells[c.index].label() for c in failed)
        message = (f"{len(failed)} of {len(cells)} sweep cell(s) failed ({labels}): {render_error}. The frames "
                   f"already written are kept and the grid ({grid_path}) shows the other cells; run the same "
                   "sweep again to render only the missing frames")
        logger.error(message)
        return Failed(message=message)
    if best_set:
        logger.info("Best cell %s (score %.3f): masactrl-animate run JOB %s", cells[best_cell].label(),
                    ranked[0].score, best_set)
    logger.info("Sweep done: %d cells, %d frames rendered, grid %s", len(cells), rendered, grid_path)
    return result


def _publish(job: AnimationJob, result: SweepResult, progress_id, complete: bool) -> None:
    from prefect.artifacts import update_progress_artifact


    key = result.sweep_hash[:16]
    update_progress_artifact(progress_id, progress=100.0 if complete else 0.0,
                             description=f"Frames of sweep {key}: {'done' if complete else 'incomplete'}")
    best = f"best: {result.best_set}" if result.best_set else "no cell measured"
    create_table_artifact(key=artifact_key("sweep-ranking", result.sweep_hash, job.name), table=result.table,
                          description=f"Sweep {key}: cells ranked by the metrics (score 0 = best); {best}")
    create_markdown_artifact(key=artifact_key("sweep", result.sweep_hash, job.name),
                             markdown=_ranking_markdown(result, Path(job.output.folder).absolute()),
                             description=f"Grid and best cell of sweep {key}")


__all__ = ["SweepCellResult", "SweepPlan", "SweepResult", "cell_chunks", "prepare_sweep", "sweep", "sweep_mapping"]
