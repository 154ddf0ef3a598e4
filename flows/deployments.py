"""Deployments: ``animate`` (run from the UI or ``masactrl-animate submit``), ``sweep`` (a grid of
settings ranked by the metrics, flows/sweep.py) and ``animate-inbox`` (on a cron schedule:
renders every job file in an inbox folder that has no finished output).

    masactrl-animate serve --inbox ./inbox --cron "*/5 * * * *"

The inbox schedule starts paused when the inbox holds no job file as ``serve`` starts: a cron over
an empty folder would fill the UI's run list with runs that find nothing. ``serve`` says so; resume
the deployment in the UI (Deployments -> animate-inbox, the toggle) or start ``serve`` again once
the inbox has job files. ``deploy/prefect.yaml`` registers it active: an installation with an inbox
volume means to use it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field, ValidationError

from flows.animation import animate
from flows.job.checks import OUTPUT_ROOT_ENV
from flows.job.files import JobFileError, finished_result, job_files, load_job
from flows.job.model import InvalidJob, JobInputError, problem_lines
from flows.jobdir.cache import human_bytes, parse_size, prune
from flows.sweep import sweep

# "flow name/deployment name", as `prefect deployment run` and `submit --deployment` take them.
ANIMATE_DEPLOYMENT = "animate/animate"
INBOX_DEPLOYMENT = "animate-inbox/animate-inbox"
SWEEP_DEPLOYMENT = "sweep/sweep"


def _name(deployment: str) -> str:
    return deployment.partition("/")[2]
DEFAULT_INBOX_CRON = "*/5 * * * *"
TAGS = ["masactrl-animate"]


class InboxReport(BaseModel):
    rendered: list[str] = Field(default_factory=list, description="Job files rendered by this run.")
    skipped: list[str] = Field(default_factory=list, description="Job files whose output was already finished.")
    failed: dict[str, str] = Field(default_factory=dict, description="Job file -> error.")
    pruned_bytes: int = Field(0, description="Bytes `cache_budget` pruned from the output folders after this run.")


@flow(name="animate-inbox", task_runner=ThreadPoolTaskRunner(max_workers=1))
def animate_inbox(
    inbox: str = Field("inbox", description="Folder of job files (*.yaml, *.yml, *.json)."),
    output_folder: Optional[str] = Field(
        None, description="Relative output folders of the job files are taken from here (empty = the output root "
        "MASACTRL_OUTPUT_ROOT when the server sets one, else the inbox folder)."
    ),
    cache_budget: Optional[str] = Field(
        None, description="After the run, prune each output folder the inbox jobs use to this size (e.g. '20G'): "
        "the oldest job folders go first, with the frames and inversions no remaining job needs; a job being "
        "rendered is never touched. Empty: keep everything (`masactrl-animate cache prune` by hand)."
    ),
) -> InboxReport:
    """Render every job file in the inbox that has no finished output yet (idempotent)."""
    logger = get_run_logger()
    inbox_dir = Path(inbox).expanduser().absolute()
    if not inbox_dir.is_dir():
        raise ValueError(f"inbox: {inbox_dir} is not a folder; create it or pass an existing folder")
    budget = None if not cache_budget else parse_size(cache_budget, field="cache_budget")

    # A confined server (serve --output-root, deploy/) keeps inbox results below its output root.
    default_base = os.environ.get(OUTPUT_ROOT_ENV) or inbox_dir
    base = Path(output_folder or default_base).expanduser().absolute()
    report = InboxReport()
    outputs: set[Path] = set()
    files = job_files(inbox_dir)
    logger.info("Inbox %s: %d job file(s)", inbox_dir, len(files))
    for path in files:
        try:
            job = load_job(path, output_base=base)
            outputs.add(Path(job.output.folder))
            done = finished_result(job)
            if done is not None:
                logger.info("%s: already finished (%s); skipping", path.name, done.parent)
                report.skipped.append(path.name)
                continue
            logger.info("%s: rendering", path.name)
            animate.with_options(flow_run_name=f"inbox-{path.stem}")(job)
            report.rendered.append(path.name)
        except (ValidationError, JobFileError, JobInputError, InvalidJob) as exc:
            report.failed[path.name] = "; ".join(problem_lines(exc))
        except Exception as exc:  # noqa: BLE001 - one bad job must not stop the others
            report.failed[path.name] = f"{type(exc).__name__}: {exc}"
        if path.name in report.failed:
            logger.error("%s: %s", path.name, report.failed[path.name])

    for folder in sorted(outputs) if budget is not None else ():
        if folder.is_dir():
            pruned = prune(folder, max_bytes=budget)
            report.pruned_bytes += pruned.freed
            logger.info("Cache of %s pruned to %s: %d item(s) removed, %s freed", folder, cache_budget,
                        len(pruned.removed), human_bytes(pruned.freed))

    lines = [f"# Inbox {inbox_dir}", "", "| job file | status |", "| --- | --- |"]
    lines += [f"| {n} | rendered |" for n in report.rendered]
    lines += [f"| {n} | already done |" for n in report.skipped]
    lines += [f"| {n} | failed: {e} |" for n, e in report.failed.items()]
    create_markdown_artifact(markdown="\n".join(lines), key="inbox-report", description="Last inbox run")
    if report.failed:
        raise RuntimeError(
            f"{len(report.failed)} inbox job(s) failed: " + "; ".join(f"{n}: {e}" for n, e in report.failed.items())
        )
    return report


def inbox_is_empty(inbox: str | Path) -> bool:
    """No job file in the inbox (a missing folder is empty)."""
    folder = Path(inbox).expanduser()
    return not folder.is_dir() or not job_files(folder)


def build_deployments(inbox: str | Path = "inbox", cron: Optional[str] = DEFAULT_INBOX_CRON,
                      output_folder: Optional[str] = None) -> list:
    """The deployments (animate, sweep, animate-inbox), addressed by module path so a served runner can
    import them anywhere. The inbox's schedule is paused while the inbox is empty (module docstring)."""
    from prefect.types.entrypoint import EntrypointType

    inbox_params = {"inbox": str(Path(inbox).expanduser().absolute())}
    if output_folder:
        inbox_params["output_folder"] = str(Path(output_folder).expanduser().absolute())
    return [
        animate.to_deployment(
            name=_name(ANIMATE_DEPLOYMENT),
            description="Render one AnimationJob: source picture + prompts/poses -> frames, GIF, MP4.",
            tags=TAGS,
            entrypoint_type=EntrypointType.MODULE_PATH,
        ),
        sweep.to_deployment(
            name=_name(SWEEP_DEPLOYMENT),
            description="Render a grid of settings (the job's sweep section, or the grid parameter) from one "
            "inversion and rank the cells by the quality metrics; the best cell as --set options.",
            tags=TAGS,
            entrypoint_type=EntrypointType.MODULE_PATH,
        ),
        animate_inbox.to_deployment(
            name=_name(INBOX_DEPLOYMENT),
            description="Render every job file in the inbox folder that has no finished output yet.",
            tags=TAGS,
            cron=cron or None,
            paused=bool(cron) and inbox_is_empty(inbox),
            parameters=inbox_params,
            entrypoint_type=EntrypointType.MODULE_PATH,
        ),
    ]


def serve_deployments(inbox: str | Path = "inbox", cron: Optional[str] = DEFAULT_INBOX_CRON,
                      output_folder: Optional[str] = None, limit: Optional[int] = None) -> None:
    """Register the deployments with the Prefect API and run their flow runs until interrupted."""
    from prefect import serve

    Path(inbox).expanduser().mkdir(parents=True, exist_ok=True)
    if cron and inbox_is_empty(inbox):
        print(f"inbox {Path(inbox).expanduser().absolute()} is empty: the animate-inbox schedule ({cron}) starts "
              "paused, so the run list does not fill with runs of an empty folder; resume it in the UI "
              "(Deployments -> animate-inbox) once it has job files", flush=True)
    serve(*build_deployments(inbox, cron, output_folder), limit=limit)
