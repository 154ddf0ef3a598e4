"""The ``sweep`` flow: a grid of render settings from one inversion, ranked by the quality metrics.

    validate -> plan cells (errors before any work) -> invert-source once per distinct inversion
    -> render cells (the animate flow's render-frames subflow: render-chunk.map over every cell's
    chunks) -> measure cells (a small GIF + measure-cell) -> rank -> publish (grid.png,
    ranking.json, sweep.json, table artifact) -> the best cell as a complete job file
    (``best_job.yaml``) and a ready ``--set`` line for ``masactrl-animate run``

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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional

import yaml
from PIL import Image
from prefect import State, flow, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from flows import quality
from flows.animation import checked_job, fails_invalid_job, render_frames, run_name, task_runner_for
from flows.execution import rendering
from flows.job.model import AnimationJob, JobInputError
from flows.job.plan import ChunkRequest, JobPlan, plan_job
from flows.job.sweep_axes import flatten
from flows.jobdir import frames_io
from flows.jobdir.layout import BEST_JOB_FILE, CELLS_DIR, GRID_FILE, RANKING_FILE, SWEEP_FILE, SweepFolder, folder_name
from flows.jobdir.manifest import load_verified_frame, unverified_frames
from flows.jobdir.stitch import write_playback_gif
from flows.quality.report import summary_line
from flows.sweeps.grid import (
    RankedCell,
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
from flows.ui.artifacts import artifact_key, job_label, md_text, progress_percent, thumbnail_markdown
from flows.ui.media import download_url, media_url

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
        return SweepFolder(self.sweep_dir).cell_gif(cell.index)

    def metrics_path(self, cell: SweepCell) -> Path:
        return SweepFolder(self.sweep_dir).cell_metrics(cell.index)


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
    sweep_dir = SweepFolder.of(job.output.folder, digest).path
    return SweepPlan(spec=spec, cells=cells, jobs=jobs, plans=plans, frame_indices=indices, sweep_hash=digest,
                     sweep_dir=sweep_dir)


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
    best_job: Optional[str] = Field(None, description="The best cell as a complete job file (YAML), for "
                                    "`masactrl-animate run` / `submit` or the run form.")
    inversion_dirs: list[str] = Field(description="One inversion per distinct inversion key.")
    inversions_computed: int
    frames_rendered: int
    frames_skipped: int
    unet_calls: dict[str, int]
    notes: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------- the flow


# validate_parameters=False, as for animate: an invalid job or grid fails the run with one message.
@flow(name="sweep", flow_run_name=run_name, task_runner=ThreadPoolTaskRunner(max_workers=1), persist_result=True,
      result_serializer="json", validate_parameters=False)
@fails_invalid_job
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

    # 1. Validate the job as the animate flow does.
    job = checked_job(job, logger)

    # 2. Plan every cell: the grid parsed, each cell's job planned, before any model is loaded.
    sp = plan_cells(job, grid, frames)
    if not isinstance(sp, SweepPlan):
        return sp  # a Failed state naming the key, or the cell and its field

    # 3. Invert the source once per inversion key (MasaCtrl settings do not enter it).
    inversions = invert_cells(sp)

    # 4. Render every cell's frames through the animate flow's render-frames subflow.
    renders = render_cells(job, sp, inversions)

    # 5. Measure each complete cell: its GIF and its metrics.
    outputs = measure_cells(job, sp, inversions)

    # 6. Rank the cells by their metrics.
    ranking = rank(sp, outputs)

    # 7. Publish: grid.png, ranking.json, sweep.json, the table and markdown artifacts.
    grid_png = draw_grid(sp, outputs)
    result = sweep_result(sp, inversions, renders, outputs, ranking, grid_png)
    publish(job, result, sp)

    # 8. Finish: the result, or a Failed state naming the failed cells (a re-run resumes them).
    return final_state(sp, result, renders.error)


# --------------------------------------------------------------------------- 2. plan


def plan_cells(job: AnimationJob, grid: Optional[dict[str, Any]], frames: Optional[list[int]]) -> SweepPlan | State:
    """``prepare_sweep`` writing each cell's job folder; an invalid grid is a Failed state saying why."""
    logger = get_run_logger()
    try:
        sp = prepare_sweep(job, grid, frames, write=True)
    except SweepError as exc:
        message = f"Invalid sweep: {exc}"
        logger.error(message)
        return Failed(message=message)
    logger.info("Sweep %s: %d cells (%s) x frames %s -> %s", folder_name(sp.sweep_hash), len(sp.cells),
                " x ".join(f"{a.key}[{len(a.values)}]" for a in sp.spec.axes), sp.frame_indices, sp.sweep_dir)
    return sp


# --------------------------------------------------------------------------- 3. invert


def invert_cells(sp: SweepPlan) -> dict[str, rendering.InversionResult]:
    """One invert-source task per distinct inversion key, in cell order; keyed by that key."""
    inversions: dict[str, rendering.InversionResult] = {}
    for plan in sp.plans:
        if plan.inversion.key not in inversions:
            inversions[plan.inversion.key] = invert_source(plan.inversion)
    return inversions


# --------------------------------------------------------------------------- 4. render


@dataclass
class CellRenders:
    """What rendering the cells did: the chunks sent, their reports, the error that stopped some
    (the frames already written stay on disk), and a note for each cell that shares another's folder."""

    chunks: list[ChunkRequest]
    reports: list[rendering.ChunkReport]
    error: Optional[BaseException]
    notes: list[str]

    @property
    def frames_rendered(self) -> int:
        return sum(len(r.rendered) for r in self.reports)

    @property
    def frames_skipped(self) -> int:
        """Frames already on disk; 0 when rendering failed (no report came back)."""
        return sum(len(c.frames) for c in self.chunks) - self.frames_rendered if self.error is None else 0


def sweep_chunks(job: AnimationJob, sp: SweepPlan,
                 inversions: dict[str, rendering.InversionResult]) -> tuple[list[ChunkRequest], list[str]]:
    """Every cell's chunks of its sampled frames, numbered on across the cells, once per job folder:
    cells whose swept setting changes nothing share a folder (and a note says so)."""
    chunks: list[ChunkRequest] = []
    notes: list[str] = []
    owner: dict[str, SweepCell] = {}
    for cell, plan in zip(sp.cells, sp.plans):
        if plan.job_dir in owner:
            first = owner[plan.job_dir]
            # Output settings (in-betweens, loops) are swept on purpose: same frames, played otherwise.
            if sp.jobs[first.index].output == sp.jobs[cell.index].output:
                notes.append(f"cells {first.label()} and {cell.label()} render the same frames "
                             "(the swept setting changes nothing here)")
            continue
        owner[plan.job_dir] = cell
        chunks += plan.chunks(job.execution.chunk_size, job.execution.batch_size,
                              inversions[plan.inversion.key].path, indices=sp.frame_indices, first_index=len(chunks))
    return chunks, notes


def render_cells(job: AnimationJob, sp: SweepPlan, inversions: dict[str, rendering.InversionResult]) -> CellRenders:
    """All cells' chunks through one render-frames fan-out, each cell folder locked meanwhile (an
    identical job or sweep waits, then reuses the frames). A failed chunk does not stop the sweep:
    the other cells' frames are on disk, and they are measured and ranked."""
    logger = get_run_logger()
    chunks, notes = sweep_chunks(job, sp, inversions)
    label = md_text(job_label(sp.sweep_hash, job.name))
    total = sum(len(c.frames) for c in chunks)
    progress_id = create_progress_artifact(0.0, key=artifact_key("sweep-progress", sp.sweep_hash, job.name),
                                           description=f"Frames of sweep {label}: 0% (0/{total} frames)")
    reports: list[rendering.ChunkReport] = []
    error: Optional[BaseException] = None
    with contextlib.ExitStack() as locks:
        for folder in sorted({c.job_dir for c in chunks}):
            locks.enter_context(frames_io.folder_lock(Path(folder)))
        try:
            reports = render_frames.with_options(task_runner=task_runner_for(job))(chunks, progress_id, job.name)
        except Exception as exc:  # noqa: BLE001 - the other cells' frames are on disk: show them
            error = exc
            logger.error("Some sweep cells failed to render: %s", exc)
    # Counted on disk: a failed chunk leaves the frames of the others (and earlier runs' frames).
    done = sum(len(c.frames) - len(unverified_frames(c.job_dir, [f.index for f in c.frames], c.size)) for c in chunks)
    ending = ("done" if error is None else
              "incomplete: some cells failed; run the sweep again to render only the missing frames")
    update_progress_artifact(progress_id, progress=progress_percent(done, total),
                             description=f"Frames of sweep {label}: {progress_percent(done, total):.0f}% "
                             f"({done}/{total} frames), {ending}")
    return CellRenders(chunks=chunks, reports=reports, error=error, notes=notes)


# --------------------------------------------------------------------------- 5. measure


class CellOutputs(NamedTuple):
    """A complete cell's outputs in the sweep folder."""

    gif: str
    pictures: list[Image.Image]  # its frames, for grid.png
    metrics: Optional[quality.JobMetrics]  # None: not measured (``note`` says why)
    note: Optional[str]


@task(name="measure-cell", cache_policy=NO_CACHE)
def measure_cell(job_dir: str, indices: list[int], inversion_dir: str, job_hash: str, out_path: str,
                 detector: str = "mediapipe", detector_dir: Optional[str] = None):
    """The metrics of one cell's frames, written to the sweep folder (not the cell's job folder)."""
    metrics = quality.compute_frame_metrics(job_dir, indices, inversion_dir, job_hash=job_hash,
                                            detector_kind=detector, detector_dir=detector_dir)
    frames_io.write_json_atomic(out_path, json.loads(metrics.model_dump_json()))
    return metrics


def measure_cells(job: AnimationJob, sp: SweepPlan,
                  inversions: dict[str, rendering.InversionResult]) -> dict[int, Optional[CellOutputs]]:
    """Cell index -> its outputs, or None for a cell whose frames are not all on disk (it failed)."""
    sp.sweep_dir.joinpath(CELLS_DIR).mkdir(parents=True, exist_ok=True)
    return {cell.index: None if unverified_frames(plan.job_dir, sp.frame_indices, plan.size)
            else _cell_outputs(job, sp, cell, inversions[plan.inversion.key].path)
            for cell, plan in zip(sp.cells, sp.plans)}


def _cell_outputs(job: AnimationJob, sp: SweepPlan, cell: SweepCell, inversion_dir: str) -> CellOutputs:
    """The GIF and the metrics of a complete cell; a metric that fails is a note, not a failed sweep."""
    pictures = [load_verified_frame(p) for p in sp.frame_paths(cell)]
    shown = sp.jobs[cell.index].output  # the cell's own in-betweens and loop mode (sweepable)
    gif = write_playback_gif(pictures, sp.frame_paths(cell), sp.cell_dir(cell), sp.gif_path(cell), fps=shown.frame_rate,
                             gif_loops=shown.gif_loops, interpolate=shown.interpolate, loop=shown.loop)
    q = job.quality
    state = measure_cell(sp.cell_dir(cell), sp.frame_indices, inversion_dir, sp.plans[cell.index].job_hash,
                         str(sp.metrics_path(cell)), q.detector, str(q.detector_dir) if q.detector_dir else None,
                         return_state=True)
    if not state.is_completed():
        note = f"cell {cell.label()}: metrics not measured ({state.message})"
        get_run_logger().warning(note)
        return CellOutputs(str(gif), pictures, None, note)
    return CellOutputs(str(gif), pictures, state.result(), None)


# --------------------------------------------------------------------------- 6. rank


@dataclass
class Ranking:
    ranked: list[RankedCell]  # best first; cells without metrics last
    table: list[dict[str, Any]]
    best_cell: Optional[int]  # None when no cell has metrics (``note`` says so)
    best_set: Optional[str]
    note: Optional[str]


def rank(sp: SweepPlan, outputs: dict[int, Optional[CellOutputs]]) -> Ranking:
    """The cells ranked by their metrics (``rank_cells``), and the best one as a --set line."""
    ranked = rank_cells(sp.cells, {i: None if out is None else out.metrics for i, out in outputs.items()})
    try:
        best_set, best_cell, note = best_set_line(ranked), ranked[0].cell.index, None
    except SweepError as exc:
        best_set, best_cell, note = None, None, str(exc)
    return Ranking(ranked=ranked, table=ranking_table(ranked), best_cell=best_cell, best_set=best_set, note=note)


# --------------------------------------------------------------------------- 7. publish


def draw_grid(sp: SweepPlan, outputs: dict[int, Optional[CellOutputs]]) -> Optional[str]:
    """grid.png: the complete cells' frames, the settings written on the axes; None when no cell is complete."""
    pictures = {i: out.pictures for i, out in outputs.items() if out is not None}
    if not pictures:
        return None
    return str(frames_io.save_png_atomic(grid_image(sp.cells, pictures).image, sp.sweep_dir / GRID_FILE))


def sweep_result(sp: SweepPlan, inversions: dict[str, rendering.InversionResult], renders: CellRenders,
                 outputs: dict[int, Optional[CellOutputs]], ranking: Ranking, grid: Optional[str]) -> SweepResult:
    """Every phase's outcome in one result; the UNet calls are this run's (inversions + chunks)."""
    placed = {r.cell.index: r for r in ranking.ranked}
    unet_calls: Counter[str] = Counter()
    for stats in [*(inv.stats for inv in inversions.values()), *(r.stats for r in renders.reports)]:
        unet_calls.update(stats)
    notes = [*renders.notes, *(out.note for out in outputs.values() if out is not None and out.note),
             *([ranking.note] if ranking.note else [])]
    return SweepResult(
        sweep_hash=sp.sweep_hash,
        sweep_dir=str(sp.sweep_dir),
        axes={a.key: a.values for a in sp.spec.axes},
        frame_indices=sp.frame_indices,
        cells=[_cell_result(sp, cell, outputs[cell.index], placed.get(cell.index)) for cell in sp.cells],
        grid=grid,
        ranking=str(sp.sweep_dir / RANKING_FILE),
        table=ranking.table,
        best_cell=ranking.best_cell,
        best_set=ranking.best_set,
        inversion_dirs=[inv.path for inv in inversions.values()],
        inversions_computed=sum(1 for inv in inversions.values() if inv.computed),
        frames_rendered=renders.frames_rendered,
        frames_skipped=renders.frames_skipped,
        unet_calls=dict(unet_calls),
        notes=notes,
    )


def _cell_result(sp: SweepPlan, cell: SweepCell, out: Optional[CellOutputs],
                 placed: Optional[RankedCell]) -> SweepCellResult:
    plan = sp.plans[cell.index]
    res = SweepCellResult(index=cell.index, row=cell.row, column=cell.column, values=cell.values,
                          set_line=cell.set_line, job_hash=plan.job_hash, job_dir=plan.job_dir,
                          rank=placed.rank if placed else None, score=placed.score if placed else None)
    if out is None:
        res.status = "failed"
        return res
    res.frames, res.gif = sp.frame_paths(cell), out.gif
    if out.metrics is not None:
        res.metrics, res.metrics_summary = str(sp.metrics_path(cell)), summary_line(out.metrics)
    return res


def publish(job: AnimationJob, result: SweepResult, sp: SweepPlan) -> None:
    """ranking.json, sweep.json and the best cell's job file in the sweep folder; the ranking as a
    table artifact (each cell's GIF linked), the grid and the best cell as a markdown one."""
    sweep_dir = Path(result.sweep_dir)
    if result.best_cell is not None:
        result.best_job = str(write_best_job(sp, result.best_cell, result))
    frames_io.write_json_atomic(sweep_dir / RANKING_FILE, {
        "sweep_hash": result.sweep_hash, "axes": result.axes, "frame_indices": result.frame_indices,
        "best_cell": result.best_cell, "best_set": result.best_set, "best_job": result.best_job,
        "table": result.table, "cells": [c.model_dump(mode="json") for c in result.cells],
    })
    frames_io.write_json_atomic(sweep_dir / SWEEP_FILE, result.model_dump(mode="json"))
    label = md_text(job_label(result.sweep_hash, job.name))
    root = Path(job.output.folder).absolute()
    best = f"best: {md_text(result.best_set)}" if result.best_set else "no cell measured"
    create_table_artifact(key=artifact_key("sweep-ranking", result.sweep_hash, job.name),
                          table=ranking_rows(result, root),
                          description=f"Sweep {label}: cells ranked by the metrics (score 0 = best); {best}")
    create_markdown_artifact(key=artifact_key("sweep", result.sweep_hash, job.name),
                             markdown=_ranking_markdown(result, root, job.name),
                             description=f"Grid and best cell of sweep {label}")


def best_job_text(sp: SweepPlan, cell_index: int, result: SweepResult) -> str:
    """The best cell's job as a complete YAML job file: every setting written out (the cell's
    values included), no sweep section, so ``run``, ``submit`` and the run form take it as it is."""
    cell = sp.cells[cell_index]
    data = sp.jobs[cell_index].model_copy(update={"sweep": None}).model_dump(mode="json")
    values = ", ".join(f"{k}={v}" for k, v in cell.values.items())
    head = [f"# The best cell of sweep {folder_name(result.sweep_hash)} ({values}), ranked by the metrics.",
            f"#   masactrl-animate run {BEST_JOB_FILE}      (or: masactrl-animate submit {BEST_JOB_FILE})",
            "# It renders into the cell's job folder: the frames the sweep rendered are reused."]
    return "\n".join(head) + "\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def write_best_job(sp: SweepPlan, cell_index: int, result: SweepResult) -> Path:
    path = SweepFolder(result.sweep_dir).best_job
    text = best_job_text(sp, cell_index, result)
    return frames_io.atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# ranking.json's criteria -> the column the UI shows (ranking.json keeps the names and every digit)
RANKING_LABELS = {"score": "score (0 = best)", "warp_error": "flicker (/255, lower = steadier)",
                  "appearance_emd": "colour dist. (Lab, lower = closer)", "pose_pck": "pose PCK (0–1, higher = better)"}


def ranking_rows(result: SweepResult, root: Path) -> list[dict[str, Any]]:
    """The ranking for the UI's table: each cell's GIF as a link after its settings, labelled
    columns, numbers rounded, "—" for a criterion not measured."""
    by_rank = {c.rank: c for c in result.cells if c.rank is not None}
    rows = []
    for row in result.table:
        cell = by_rank.get(row.get("rank"))
        gif = cell.gif if cell is not None else None
        out: dict[str, Any] = {}
        for key, value in row.items():
            if key == "score":
                out["GIF"] = f"[cell {cell.index} GIF]({media_url(gif, root)})" if gif else "— (not rendered)"
            if key in RANKING_LABELS:
                value = "—" if value is None else f"{value:.3f}"
            out[RANKING_LABELS.get(key, key)] = md_text(value) if isinstance(value, str) else value
        rows.append(out)
    return rows


def _ranking_markdown(result: SweepResult, root: Path, job_name: Optional[str] = None) -> str:
    lines = [f"# Sweep {md_text(job_label(result.sweep_hash, job_name))}", ""]
    if result.grid:
        lines += [thumbnail_markdown(result.grid, root, "sweep grid"), ""]
    if result.best_cell is not None:
        best = result.cells[result.best_cell]
        values = ", ".join(f"{k} = {v}" for k, v in best.values.items())
        lines += [f"## Best cell: {md_text(values)}", ""]
        if best.gif:
            lines += [thumbnail_markdown(best.gif, root, "best cell"), ""]
        if result.best_job:
            url = media_url(result.best_job, root)
            lines += [f"[Download the best cell as a job file ({BEST_JOB_FILE})]({download_url(url)}): a complete "
                      "job (every setting, no sweep section) for the run form, `run` or `submit`:", "",
                      "```", f"masactrl-animate run {result.best_job}",
                      f"masactrl-animate submit {result.best_job}", "```", ""]
        if result.best_set:
            lines += ["Or the job file you swept, with these options:", "", "```", result.best_set, "```", ""]
    lines += [f"{len(result.cells)} cells x {len(result.frame_indices)} frames (indices "
              f"{', '.join(map(str, result.frame_indices))}), {len(result.inversion_dirs)} inversion(s); "
              f"{result.frames_rendered} frames rendered now, {result.frames_skipped} already on disk. "
              "Every cell's GIF is linked from the ranking table."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- 8. finish


def final_state(sp: SweepPlan, result: SweepResult, render_error: Optional[BaseException]) -> SweepResult | State:
    """The result; or, when some cells failed, a Failed state naming them (their frames resume on a re-run)."""
    logger = get_run_logger()
    failed = [c for c in result.cells if c.status == "failed"]
    if failed or render_error is not None:
        labels = "; ".join(sp.cells[c.index].label() for c in failed)
        message = (f"{len(failed)} of {len(sp.cells)} sweep cell(s) failed ({labels}): {render_error}. The frames "
                   f"already written are kept and the grid ({result.grid}) shows the other cells; run the same "
                   "sweep again to render only the missing frames")
        logger.error(message)
        return Failed(message=message)
    if result.best_cell is not None:
        best = result.cells[result.best_cell]
        logger.info("Best cell %s (score %.3f): masactrl-animate run %s (or: run JOB %s)",
                    sp.cells[best.index].label(), best.score, result.best_job, result.best_set)
    logger.info("Sweep done: %d cells, %d frames rendered, grid %s", len(sp.cells), result.frames_rendered,
                result.grid)
    return result


__all__ = ["SweepCellResult", "SweepPlan", "SweepResult", "prepare_sweep", "sweep", "sweep_mapping"]
