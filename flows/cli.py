"""``masactrl-animate``: run, validate, demo, serve and submit animation jobs.

    masactrl-animate run job.yaml --set output.fps=12 --set settings.steps=30
    masactrl-animate sweep job.yaml --grid settings.start_step=2,4,8 --grid settings.start_layer=8,10
    masactrl-animate demo
    masactrl-animate serve --inbox ./inbox
    masactrl-animate submit job.yaml            # waits, printing progress
    masactrl-animate submit job.yaml --no-wait  # prints the flow-run id

Exit codes: 0 done, 1 the run failed, 2 the job is invalid.
Third-party warnings and log lines stay off the terminal unless --verbose.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from pydantic import ValidationError

from flows import deployments
from flows.animation import AnimationResult, animate
from flows.demo import run_demo
from flows.deployments import ANIMATE_DEPLOYMENT, DEFAULT_INBOX_CRON
from flows.execution import gpu_claims
from flows.job.checks import INPUT_ROOTS_ENV, OUTPUT_ROOT_ENV
from flows.job.files import JobFileError, load_job
from flows.job.frame_selection import parse_frames, select_frames
from flows.job.model import AnimationJob, InvalidJob, JobInputError, problem_lines
from flows.job.plan import decoded_source, plan_job
from flows.job.preflight import run_problems
from flows.jobdir.cache import CacheError, human_bytes, parse_age, parse_size, prune, usage
from flows.jobdir.frames_io import folder_lock
from flows.jobdir.layout import JobFolder, folder_name
from flows.quality.job_folder import NotAFinishedJob
from flows.quality.measure import compute_job_metrics
from flows.quality.report import summary_line, write_metrics
from flows.sweep import prepare_sweep, sweep
from flows.sweeps.grid import CRITERIA, SweepError, parse_grid
from flows.ui import media
from flows.ui.artifacts import job_hash_of_key
from flows.ui.media import DEFAULT_PORT as DEFAULT_MEDIA_PORT, add_media_arguments
from flows.ui.progress import enable_terminal_progress

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2

# Prefect waits 20 s by default for its temporary (ephemeral) server; on a busy machine (load ~7 on
# 2 cores) that was too short and runs failed, while 120 s let the same runs pass.
EPHEMERAL_STARTUP_TIMEOUT_S = 120
EPHEMERAL_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
_EPHEMERAL_TIMEOUT_ERROR = "Timed out while attempting to connect to ephemeral Prefect API server"
# Commands that start Prefect or talk to it; the others never need its settings.
PREFECT_COMMANDS = frozenset({"run", "sweep", "demo", "serve", "submit"})
# A warning whose category is defined in these packages is the project's own (MovedFieldWarning).
PROJECT_PACKAGES = frozenset({"flows", "pose_sources", "masactrl_engine"})


def prefect_defaults() -> None:
    """Defaults for the Prefect this command starts, each only where the user set nothing (neither
    the environment nor the Prefect profile): a longer start-up time for the temporary server, and
    no telemetry. The server's telemetry heartbeat writes to the same SQLite file as the run and
    printed ``sqlite3.OperationalError: database is locked`` on the terminal. Set in the environment,
    so the temporary server, served runs and Dask workers inherit them."""
    import prefect.context
    from prefect.settings import get_current_settings

    server = get_current_settings().server
    defaults = {"DO_NOT_TRACK": "1"}  # client-side analytics (only this variable turns them off)
    if "startup_timeout_seconds" not in server.ephemeral.model_fields_set:
        defaults[EPHEMERAL_TIMEOUT_ENV] = str(EPHEMERAL_STARTUP_TIMEOUT_S)
    if "analytics_enabled" not in server.model_fields_set:
        defaults["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    added = {name: value for name, value in defaults.items() if name not in os.environ}
    if not added:
        return
    os.environ.update(added)
    # Prefect read its settings when flows/ imported it: read them again from the environment.
    refresh = getattr(prefect.context, "refresh_global_settings_context", None)
    if refresh is not None:
        refresh()
    else:  # a Prefect 3 without that function: what it does
        prefect.context.GLOBAL_SETTINGS_CONTEXT = prefect.context.root_settings_context()


def start_temporary_server() -> None:
    """Start Prefect's temporary server now (unless PREFECT_API_URL names a server), one process
    at a time per PREFECT_HOME. Two runs started at once otherwise start two servers that migrate
    the same fresh SQLite file together: one fails ("no such table"), Prefect restarts it, and its
    uvicorn traceback lands on the terminal. The flow then finds this server running (Prefect
    keeps one per process)."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return
    from prefect.server.api.server import SubprocessASGIServer


    with folder_lock(settings.home / "masactrl-server-start"):
        SubprocessASGIServer().start()


def ephemeral_timeout_message(command: str, exc: BaseException) -> Optional[str]:
    """One line for Prefect's "Timed out while attempting to connect to ephemeral Prefect API
    server" RuntimeError (its message holds the server's whole output): what happened and how to
    run with a real server; None for any other error."""
    import re

    text = str(exc)
    if not isinstance(exc, RuntimeError) or not text.startswith(_EPHEMERAL_TIMEOUT_ERROR):
        return None
    from prefect.settings import get_current_settings

    real_server = ("run a real server instead: `prefect server start` in another terminal, then "
                   "`export PREFECT_API_URL=http://127.0.0.1:4200/api` here")
    exited = re.search(r"exited with code (-?\d+)", text)
    if exited:
        code = exited.group(1)
        return f"{command} failed: Prefect's temporary server exited with code {code} before it answered; {real_server}"
    seconds = get_current_settings().server.ephemeral.startup_timeout_seconds
    return (f"{command} failed: Prefect's temporary server did not answer within {seconds} s (a busy machine?); "
            f"{real_server} (or give it longer with {EPHEMERAL_TIMEOUT_ENV})")


def quiet_terminal(verbose: bool) -> None:
    """Keep the terminal to the project's own messages unless ``verbose``: warnings whose category
    is not the project's (torch.jit and timm FutureWarnings, timm's "Overwriting ... in registry")
    are not shown, and mediapipe's C++ log lines are dropped (pose_sources reads $MASACTRL_VERBOSE,
    which processes started from here inherit). Filtering on the category, not on the module a
    warning is attributed to: the project's MovedFieldWarning is attributed to pydantic."""
    import warnings

    from pose_sources.mediapipe_detector import VERBOSE_ENV, verbose_from_env

    if verbose or verbose_from_env():
        os.environ[VERBOSE_ENV] = "1"
        return
    show = warnings.showwarning

    def show_own(message, category, filename, lineno, file=None, line=None):
        if category.__module__.split(".")[0] in PROJECT_PACKAGES:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = show_own


class CommandFailed(Exception):
    """The command could not do its work: exit 1, its message printed as it is."""


# What refuses a job (exit 2, printed field by field): the model's rules, the job file and its
# overrides, the plan (counts, sizes, the source's pixels), the sweep grid, this machine.
INVALID_JOB_ERRORS = (ValidationError, JobFileError, JobInputError, SweepError, InvalidJob)


def _print_invalid(source: str, exc: Exception) -> None:
    print(f"{source}: invalid job", file=sys.stderr)
    for line in problem_lines(exc):
        print(f"  {line}", file=sys.stderr)


def _check_source_pixels(job) -> None:
    """Decode the source picture once, before Prefect or a model starts. Validation reads its
    header only, so this is where compressed data that does not decode (a PNG's zlib stream under
    valid checksums, a JPEG cut short) is found, as an error of source.image."""
    if job.source.image is not None:
        decoded_source(job.source.image)


def _check_environment(source: str, job) -> None:
    """Raises InvalidJob when this machine cannot run ``job``: output folder not writable, CUDA
    missing, Dask scheduler unreachable, hub model not cached while offline. Cheap checks, done
    before Prefect or a model starts."""
    problems, warnings = run_problems(job)
    if problems:
        raise InvalidJob(problems)
    for field, message in warnings:
        print(f"{source}: warning: {field}: {message}", file=sys.stderr)


def _check_runnable(source: str, job) -> None:
    """After the plan (written nowhere): the source's pixels and this machine. With the plan, all
    that can be checked without Prefect or a model, in seconds, before starting either."""
    _check_source_pixels(job)
    _check_environment(source, job)


def _print_result(result, as_json: bool) -> None:
    if as_json:
        print(result.model_dump_json(indent=2))
        return
    rows = [("frames", f"{result.frame_count} ({result.frames_rendered} rendered, {result.frames_skipped} already rendered"
             + (f", {len(result.missing_frames)} not yet: a full run renders them" if result.missing_frames else "")
             + ")"),
            ("folder", result.job_dir), ("GIF", result.gif), ("MP4", result.mp4),
            ("contact sheet", result.contact_sheet), ("pose | frame", result.side_by_side)]
    for name, value in rows:
        if value:
            print(f"{name + ':':15} {value}")
    if result.previous_versions:
        print(f"{'earlier:':15} {', '.join(map(folder_name, result.previous_versions))} (same name, oldest first)")
    for note in result.notes:
        print(f"{'note:':15} {note}")
    if result.metrics_summary:
        print(result.metrics_summary)


def cmd_run(args) -> int:
    job = load_job(args.job, args.set)
    plan = plan_job(job, write=False)
    frames = select_frames(args.frames, len(plan.frames), field="--frames")
    _check_runnable(args.job, job)
    enable_terminal_progress(not args.no_progress)
    start_temporary_server()
    state = animate(job, frames=frames, return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, JobInputError):
        raise result  # the flow's plan step refused it: invalid, as if found here
    if not state.is_completed():
        raise CommandFailed(f"run failed: {result}")
    _print_result(result, args.json)
    return EXIT_OK


def cmd_validate(args) -> int:
    job = load_job(args.job, args.set)
    plan = plan_job(job, write=False)
    _check_runnable(args.job, job)
    print(f"valid: {len(plan.frames)} frames -> {plan.job_dir}")
    return EXIT_OK


def _frame_indices(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return parse_frames(text)
    except JobInputError as exc:
        raise SweepError(f"sweep.frames: --frames {str(exc).removeprefix('frames: ')}") from None


def _print_sweep(result, job_file: str, overrides: Sequence[str]) -> None:
    import shlex


    columns = ["rank", *result.axes, "score", *(name for name, _ in CRITERIA)]
    rows = [[("n/a" if row.get(c) is None else str(row.get(c))) for c in columns] for row in result.table]
    widths = [max(len(c), *(len(r[k]) for r in rows)) for k, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    print(f"{'grid:':15} {result.grid}")
    print(f"{'ranking:':15} {result.ranking}")
    for note in result.notes:
        print(f"{'note:':15} {note}")
    if result.best_set:
        given = " ".join(f"--set {shlex.quote(o)}" for o in overrides)
        print(f"best: masactrl-animate run {shlex.quote(job_file)} {given + ' ' if given else ''}{result.best_set}")


def cmd_sweep(args) -> int:
    job = load_job(args.job, args.set)
    grid = parse_grid(args.grid)
    frames = _frame_indices(args.frames)
    prepare_sweep(job, grid, frames, write=False)  # every cell validated and planned
    _check_runnable(args.job, job)
    enable_terminal_progress(not args.no_progress)
    start_temporary_server()
    state = sweep(job, grid or None, frames, return_state=True)
    result = state.result(raise_on_failure=False)
    if not state.is_completed():
        raise CommandFailed(f"sweep failed: {state.message or result}")
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        _print_sweep(result, args.job, args.set)
    return EXIT_OK


def cmd_metrics(args) -> int:
    metrics = compute_job_metrics(args.job_dir, detector_kind=args.detector, detector_dir=args.detector_dir)
    path = write_metrics(args.job_dir, metrics)
    print(metrics.model_dump_json(indent=2) if args.json else f"{summary_line(metrics)}\n-> {path}")
    return EXIT_OK


def cmd_cache(args) -> int:
    output = Path(args.output)
    if not output.is_dir():
        raise CacheError(f"--output: {output.absolute()} is not a folder; give the output.folder of your jobs")
    if args.action == "prune":
        if args.older_than is None and args.max_size is None and args.keep_last is None:
            raise CommandFailed("cache prune: say what to keep: --older-than 7d, --max-size 10G and/or --keep-last 3")
        report = prune(output, older_than=None if args.older_than is None else parse_age(args.older_than),
                       max_bytes=None if args.max_size is None else parse_size(args.max_size),
                       keep_last=args.keep_last, dry_run=args.dry_run)
        verb = "would remove" if report.dry_run else "removed"
        for path in report.removed:
            print(f"{verb}: {path}")
        print(f"{verb} {len(report.removed)} item(s), {human_bytes(report.freed)}; kept {len(report.kept_jobs)} "
              f"job folder(s){f', {len(report.busy)} in use by a run' if report.busy else ''}")
    held = usage(output)
    print(f"{output.absolute()}:")
    for kind, row in held.rows():
        print(f"  {kind:11} {row.count:6d}  {human_bytes(row.bytes):>10}")
    print(f"  {'total':11} {'':6}  {human_bytes(held.total):>10}")
    return EXIT_OK


def cmd_schema(args) -> int:
    print(json.dumps(AnimationJob.model_json_schema(), indent=2))
    return EXIT_OK


def cmd_demo(args) -> int:
    enable_terminal_progress(not args.no_progress)
    start_temporary_server()
    results = run_demo(Path(args.out), size=args.size, steps=args.steps)
    print()
    for name, result in results.items():
        print(f"{name}:")
        print(f"  GIF:  {result.gif}")
        print(f"  MP4:  {result.mp4}")
        print(f"  contact sheet: {result.contact_sheet}")
        if result.side_by_side:
            print(f"  pose | frame:  {result.side_by_side}")
        if result.metrics_summary:
            print(f"  {result.metrics_summary}")
    for note in sorted({n for r in results.values() for n in r.notes}):
        print(f"note: {note}")
    return EXIT_OK


def apply_roots(args) -> None:
    """``serve --input-root/--output-root``: confine the flow runs it starts (they inherit these
    variables; flows/job/checks.py checks them). Not given: whatever the environment already says,
    by default unset = no confinement."""
    import os


    if args.input_root:
        os.environ[INPUT_ROOTS_ENV] = os.pathsep.join(str(Path(r).expanduser().absolute()) for r in args.input_root)
    if args.output_root:
        root = Path(args.output_root).expanduser().absolute()
        root.mkdir(parents=True, exist_ok=True)
        os.environ[OUTPUT_ROOT_ENV] = str(root)
    inputs, output = os.environ.get(INPUT_ROOTS_ENV), os.environ.get(OUTPUT_ROOT_ENV)
    print(f"input roots: {inputs or 'none (runs may read any file this user can)'}; "
          f"output root: {output or 'none (runs may write anywhere this user can)'}", flush=True)


def cmd_serve(args) -> int:
    apply_roots(args)  # before the media server: it serves the output root
    cron = None if args.no_schedule else args.cron
    media = None
    if not args.no_media:
        media = _start_media(args)
        if media is None:
            return EXIT_FAILED
    try:
        # Two jobs started at once must not overcommit a card: one slot per GPU of the pool.
        # Through their modules, looked up when called (tests replace them there).
        name = gpu_claims.ensure_gpu_limit(args.gpu_pool, args.gpus)
        print(f"GPU concurrency limit {name!r}: {args.gpus} slot(s)")
        deployments.serve_deployments(args.inbox, cron=cron, output_folder=args.output_folder, limit=args.limit)
    finally:
        if media is not None:
            media.stop()
    return EXIT_OK


def _start_media(args):
    """The media server of ``serve`` (flows/ui/media.py) in a thread; the flow runs it starts inherit
    MASACTRL_MEDIA_URL/MASACTRL_MEDIA_ROOT, so their artifacts link to it (unless already set,
    e.g. to a reverse proxy)."""
    import os


    root = Path(args.media_root).expanduser().absolute() if args.media_root else media.default_root()
    try:
        running = media.start_media_server(root, host=args.media_host, port=args.media_port)
    except (OSError, ValueError) as exc:
        print(f"media server: cannot serve {root} on {args.media_host}:{args.media_port or 'any port'}: {exc}\n"
              "pass another --media-port, or --no-media", file=sys.stderr)
        return None
    os.environ.setdefault(media.MEDIA_URL_ENV, running.url)
    os.environ.setdefault(media.MEDIA_ROOT_ENV, str(running.root))
    print(f"media server: {running.root} on {running.url}/ (links: {os.environ[media.MEDIA_URL_ENV]})", flush=True)
    return running


def cmd_media(args) -> int:
    try:
        media.serve_media_forever(args.root or media.default_root(), args.host, args.port)
    except (OSError, ValueError) as exc:
        raise CommandFailed(f"media server: {exc}") from None
    return EXIT_OK


def _progress_of(client, flow_run_id) -> Optional[tuple[float, str]]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                                       type=ArtifactFilterType(any_=["progress"]))
    )
    if not artifacts:
        return None
    art = artifacts[0]
    return float(art.data or 0.0), art.key or ""


def watch_flow_run(flow_run_id, timeout: Optional[float] = None, poll: float = 1.0, show: bool = True):
    """Poll a flow run until it is final, showing its state and progress artifact; returns the final FlowRun.

    On a terminal: a progress bar. Otherwise (logs, CI): one line per change of state or progress.
    """
    from prefect.client.orchestration import get_client
    from tqdm.auto import tqdm

    deadline = None if timeout is None else time.monotonic() + timeout
    bar = None
    if show and sys.stderr.isatty():
        bar = tqdm(total=100.0, unit="%", desc="frames", file=sys.stderr,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
    last: tuple = ()
    with get_client(sync_client=True) as client:
        try:
            while True:
                run = client.read_flow_run(flow_run_id)
                state = run.state.name if run.state else "Pending"
                progress = _progress_of(client, flow_run_id)
                percent = min(100.0, progress[0]) if progress else 0.0
                if (state, round(percent)) != last:
                    last = (state, round(percent))
                    if bar is not None:
                        bar.n = percent
                        bar.set_postfix_str(state)
                    elif show:
                        print(f"{run.name}: {state}, frames {percent:.0f}%", file=sys.stderr, flush=True)
                if run.state is not None and run.state.is_final():
                    return run
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"flow run {flow_run_id} still {state} after {timeout} s")
                time.sleep(poll)
        finally:
            if bar is not None:
                bar.close()


def _result_of(run, job) -> Optional[object]:
    """The AnimationResult of a finished run: the persisted flow result, else the job folder's result.json."""
    try:
        result = run.state.result(raise_on_failure=False)
        if isinstance(result, AnimationResult):
            return result
        if isinstance(result, dict):
            return AnimationResult.model_validate(result)
    except Exception:  # noqa: BLE001 - result storage may live on another machine
        pass
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        progress = _progress_of(client, run.id)
    if progress and progress[1].startswith("progress-"):
        path = JobFolder.of(job.output.folder, job_hash_of_key(progress[1])).result
        if path.is_file():
            return AnimationResult.model_validate_json(path.read_text())
    return None


def cmd_submit(args) -> int:
    job = load_job(args.job, args.set)
    # What the worker would refuse from the job alone, refused here before anything is submitted:
    # the plan (prompt and pose counts, pose files, sizes, overrides) and the source's pixels. What
    # depends on the worker's machine (its devices, roots, scheduler, model cache) it checks itself.
    plan = plan_job(job, write=False)
    frames = select_frames(args.frames, len(plan.frames), field="--frames")
    _check_source_pixels(job)
    from prefect.deployments import run_deployment

    parameters = {"job": job.model_dump(mode="json"), **({"frames": frames} if frames is not None else {})}
    try:
        run = run_deployment(args.deployment, parameters=parameters, timeout=0, as_subflow=False)
    except Exception as exc:  # noqa: BLE001 - no server, no deployment, ...
        raise CommandFailed(f"could not submit to deployment {args.deployment!r}: {exc}\n"
                            "Is a Prefect server running (PREFECT_API_URL) and `masactrl-animate serve` started?") from None
    if args.no_wait:
        print(run.id)
        return EXIT_OK
    print(f"flow run {run.id} ({run.name}) submitted to {args.deployment}", file=sys.stderr)
    try:
        final = watch_flow_run(run.id, timeout=args.timeout, show=not args.no_progress)
    except TimeoutError as exc:
        raise CommandFailed(str(exc)) from None
    if not final.state.is_completed():
        raise CommandFailed(f"flow run {run.id} ended {final.state.name}: {final.state.message or ''}")
    result = _result_of(final, job)
    if result is None:
        print(f"flow run {run.id} completed; its result could not be read here", file=sys.stderr)
        return EXIT_OK
    _print_result(result, args.json)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="masactrl-animate", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def job_args(p):
        p.add_argument("job", help="job file (YAML or JSON); input paths in it are relative to its folder")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a field, dotted keys: --set output.fps=12 (repeatable)")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("run", help="run a job file locally (ephemeral Prefect unless PREFECT_API_URL is set)")
    job_args(p)
    p.add_argument("--frames", default=None, metavar="I,J-K",
                   help="render only these frames (e.g. 0,4,8 or 3-5) and stitch what exists: a preview, or a retry "
                   "of a range with --set frames.overrides=...; a later full run renders only the rest")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("cache", help="show what an output folder holds (inversions, frames, job folders, sweeps); "
                       "'cache prune' removes what no kept job needs")
    p.add_argument("action", nargs="?", default="show", choices=("show", "prune"))
    p.add_argument("--output", "-o", default="out", help="the output folder (a job's output.folder; default: out)")
    p.add_argument("--older-than", default=None, metavar="AGE",
                   help="prune job folders last written longer ago than this (7d, 12h, 30m, 2w)")
    p.add_argument("--max-size", default=None, metavar="SIZE",
                   help="then prune the oldest job folders until the rest fits (10G, 512MiB)")
    p.add_argument("--keep-last", type=int, default=None, metavar="N", help="keep the newest N job folders of each job name")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("validate", help="check a job file without loading any model")
    job_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("sweep", help="render a grid of settings from one inversion, rank the cells, print the best "
                       "as --set options")
    job_args(p)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a swept setting: --grid settings.start_step=2,4,8 (repeatable; adds to the job's sweep:, "
                   "replacing an axis of the same key)")
    p.add_argument("--frames", default=None, metavar="I,J,...",
                   help="frame indices rendered per cell (default: the job's sweep.frames, else 4 spread out)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("metrics", help="(re)compute the quality metrics of a finished job folder -> metrics.json")
    p.add_argument("job_dir", help="a finished job folder (<output.folder>/<job hash>, holding result.json)")
    p.add_argument("--detector", default="mediapipe", choices=("mediapipe", "openpose"),
                   help="pose detector for PCK (pose jobs only; default: the bundled mediapipe)")
    p.add_argument("--detector-dir", default=None, help="OpenPose weights folder (with --detector openpose)")
    p.add_argument("--json", action="store_true", help="print metrics.json instead of the summary line")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("schema", help="print the JSON schema of a job")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("demo", help="render the bundled examples with the tiny model")
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.add_argument("--size", type=int, default=128, help="frame width and height (default: 128)")
    p.add_argument("--steps", type=int, default=10, help="denoising steps (default: 10)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", help="register the deployments and run their flow runs until Ctrl-C")
    p.add_argument("--inbox", default="inbox", help="inbox folder of job files (default: ./inbox)")
    p.add_argument("--cron", default=DEFAULT_INBOX_CRON, help=f"inbox schedule (default: '{DEFAULT_INBOX_CRON}')")
    p.add_argument("--no-schedule", action="store_true", help="register animate-inbox without a schedule")
    p.add_argument("--output-folder", default=None, help="base for relative output folders of inbox jobs")
    p.add_argument("--limit", type=int, default=None, help="at most this many flow runs at once")
    p.add_argument("--gpus", type=int, default=1, help="GPU chunks that may run at once in this pool (default 1)")
    p.add_argument("--gpu-pool", default=None, help="GPU pool name; the limit is gpu-<pool> (default: "
                   "$MASACTRL_GPU_POOL or 'local')")
    p.add_argument("--input-root", action="append", default=[], metavar="FOLDER",
                   help="runs started through this server (UI, submit, inbox) may read source images and pose "
                   "files only below these folders (repeatable; sets $MASACTRL_INPUT_ROOTS). Default: "
                   "$MASACTRL_INPUT_ROOTS, unset = no confinement")
    p.add_argument("--output-root", default=None, metavar="FOLDER",
                   help="their output folders must lie below this folder (sets $MASACTRL_OUTPUT_ROOT; inbox "
                   "jobs' relative output folders resolve against it). Default: $MASACTRL_OUTPUT_ROOT, unset = "
                   "no confinement")
    p.add_argument("--no-media", action="store_true", help="do not start the media server (artifact links then "
                   "use $MASACTRL_MEDIA_URL, else file://)")
    p.add_argument("--media-port", type=int, default=None,
                   help=f"port of the media server (default {DEFAULT_MEDIA_PORT}, or any free port when it is "
                   "busy; 0 = any free port)")
    p.add_argument("--media-host", default="127.0.0.1", help="address the media server binds (default 127.0.0.1)")
    p.add_argument("--media-root", default=None, help="folder the media server serves (default: "
                   "$MASACTRL_OUTPUT_ROOT, else ./out)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("media", help="serve the output root read-only over HTTP (GIF/MP4/PNG links of artifacts)")
    add_media_arguments(p)
    p.set_defaults(func=cmd_media)

    p = sub.add_parser("submit", help="trigger the animate deployment on a running server and wait")
    job_args(p)
    p.add_argument("--deployment", default=ANIMATE_DEPLOYMENT, help=f"default: {ANIMATE_DEPLOYMENT}")
    p.add_argument("--frames", default=None, metavar="I,J-K", help="render only these frames, as `run --frames`")
    p.add_argument("--no-wait", action="store_true", help="print the flow-run id and return")
    p.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")
    p.set_defaults(func=cmd_submit)

    verbose_help = "also show third-party warnings and log lines (torch, timm, mediapipe)"
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    for p in sub.choices.values():  # also after the command; SUPPRESS keeps a --verbose given before it
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_terminal(args.verbose)
    if args.command in PREFECT_COMMANDS:
        prefect_defaults()
    # The one place where errors become exit codes: 2 the job (or job folder) is invalid, 1 failed.
    try:
        return int(args.func(args) or 0)
    except INVALID_JOB_ERRORS as exc:
        _print_invalid(getattr(args, "job", args.command), exc)
        return EXIT_INVALID
    except NotAFinishedJob as exc:
        print(f"metrics: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except CacheError as exc:
        print(f"cache: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except CommandFailed as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILED
    except RuntimeError as exc:
        message = ephemeral_timeout_message(args.command, exc)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
