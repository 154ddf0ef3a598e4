"""What a job needs from the machine that runs it, checked right after validation and before any
work: paths inside the roots a server allows, a writable output folder, the CUDA device it names,
a Dask scheduler at its address, a hub model in the local cache when offline, and subject words
the text encoder reads. Each problem is a ``(field, message)`` pair for the CLI or the flow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from flows.job.checks import input_root_problem, output_root_problem, writable_folder_problem
from flows.job.dask_probe import dask_problem
from flows.job.model import InvalidJob, JobInputError
from flows.job.plan import JobPlan, plan_job
from flows.job.prompt_limits import check_prompts


def cuda_problem(device: Optional[str]) -> Optional[str]:
    if not device or not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return f"{device!r} asked for, but this machine has no usable CUDA device; use 'cpu' or leave it empty"
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        return f"{device!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) are visible"
    return None


def hub_model_problem(name: Optional[str]) -> Optional[str]:
    """With HF_HUB_OFFLINE set, a hub id must already be in the local cache."""
    if not name or "/" not in name or Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return None
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if not offline:
        return None
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(name, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure means "not usable offline"
        return (f"{name!r} is a hub id, HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache; "
                "download it on a machine with network access or give a local folder")
    return None


def environment_problems(job, *, check_dask: bool = True) -> list[tuple[str, str]]:
    """What the job needs from this machine and does not get, as ``(field, message)`` pairs."""
    problems: list[tuple[str, str]] = []
    checks = [
        ("output.folder", lambda: writable_folder_problem(job.output.folder)),
        ("model.device", lambda: cuda_problem(job.model.device)),
        ("model.model", lambda: hub_model_problem(job.model.model)),
        ("model.controlnet", lambda: hub_model_problem(job.model.controlnet) if job.uses_poses else None),
    ]
    if check_dask:
        checks.append(("execution.dask_address", lambda: dask_problem(job.execution.dask_address)))
    for field, check in checks:
        message = check()
        if message:
            problems.append((field, message))
    return problems


def _pose_input_paths(job) -> list[tuple[str, str]]:
    poses = job.frames.poses
    if poses is None:
        return []
    out = []
    for name in ("path", "source", "detector_dir"):
        value = getattr(poses, name, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, (str, os.PathLike)) and str(v).strip():
                # a glob is judged by the folder before its first wildcard
                text = os.fspath(v)
                fixed = text.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0]
                out.append((f"frames.poses.{name}", fixed or "."))
    return out


def confinement_problems(job, environ=None) -> list[tuple[str, str]]:
    """Inputs outside ``$MASACTRL_INPUT_ROOTS`` and an output folder outside ``$MASACTRL_OUTPUT_ROOT``.

    ``serve`` and deploy/ set both for runs triggered through the server (UI, ``submit``, inbox),
    so a form user cannot read ``/etc/shadow`` as a source or write into ``/etc``. Unset: no
    confinement (local CLI runs keep their freedom).
    """
    problems: list[tuple[str, str]] = []
    candidates = [("source.image", os.fspath(job.source.image))] if job.source.image is not None else []
    for field, path in candidates + _pose_input_paths(job):
        if (problem := input_root_problem(path, environ)):
            problems.append((field, problem))
    if (problem := output_root_problem(job.output.folder, environ)):
        problems.append(("output.folder", problem))
    return problems


def run_problems(job, environ=None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(problems, warnings) of a validated job on this machine, as ``(field, message)`` pairs, for
    the CLI before it starts Prefect and for a flow run right after validating its job. Problems:
    paths outside the configured roots (then nothing else is probed there), what this machine
    cannot give the job (writable output folder, CUDA, Dask scheduler, cached hub model), and prompt
    operators the engine refuses. Warnings: A1111-style groups without a weight, which mean
    something else here (flows/job/prompt_limits.py)."""
    confined = confinement_problems(job, environ)
    if confined:
        return confined, []
    prompts = check_prompts(job)
    return environment_problems(job) + prompts.errors, prompts.warnings



def _problem_of(exc: JobInputError) -> tuple[str, str]:
    text = str(exc)
    return exc.field, text.removeprefix(f"{exc.field}: ")


def checked_plan(job, write: bool = True) -> JobPlan:
    """``plan_job`` with what it refuses (prompt and pose counts, pose files, sizes, overrides, the
    model's layers and LoRAs) raised as InvalidJob, the same error as the model's own rules: a flow
    ends Failed with "Invalid job: field: problem" instead of a task's traceback."""
    try:
        return plan_job(job, write=write)
    except JobInputError as exc:
        raise InvalidJob([_problem_of(exc)]) from None


def plan_problems(job) -> list[tuple[str, str]]:
    """What planning the job (writing nothing) refuses, as ``(field, message)`` pairs; [] when it plans."""
    try:
        checked_plan(job, write=False)
    except InvalidJob as exc:
        return exc.problems
    return []
