"""Where frame tasks run: the task runner made from a job's RunnerSettings (``flows/job/runner_settings.py``).

``threads`` (the default) renders every chunk in the flow's own process on one GPU.
``dask`` spreads chunks over Dask worker processes: a local cluster (one worker per GPU with
dask-cuda, N CPU worker processes otherwise) or an existing scheduler given by address. The
local clusters made here offer the ``GPU`` resource that chunks claim (``flows/execution/gpu_claims.py``).

What a worker keeps between chunks (its pipeline, the source branch of the job it works on) is
the per-process cache of ``flows/execution/worker_cache.py``; :func:`worker_identity` tells where a task ran.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from flows.execution.gpu_claims import GPU_RESOURCE
from flows.job.runner_settings import RunnerSettings

logger = logging.getLogger(__name__)


DASK_CUDA_CLUSTER = "dask_cuda.LocalCUDACluster"
DASK_LOCAL_CLUSTER = "distributed.LocalCluster"


def cuda_device_count() -> int:
    """Number of CUDA devices torch sees (0 without torch or without CUDA)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency of the project
        return 0
    try:
        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # broken driver installs raise here; treat as no GPU
        return 0


def dask_cuda_available() -> bool:
    try:
        import dask_cuda  # noqa: F401
    except Exception:
        return False
    return True


def local_cluster_spec(
    settings: RunnerSettings,
    *,
    gpu_count: int | None = None,
    has_dask_cuda: bool | None = None,
) -> tuple[str, dict[str, Any]]:
    """The cluster class and keyword arguments of the local Dask cluster for ``settings``."""
    gpus = cuda_device_count() if gpu_count is None else gpu_count
    cuda_ok = dask_cuda_available() if has_dask_cuda is None else has_dask_cuda
    resources = {GPU_RESOURCE: 1} if settings.gpu_resource else None

    if gpus > 0 and cuda_ok:
        kwargs: dict[str, Any] = {"threads_per_worker": settings.threads_per_worker}
        if settings.n_workers is not None:
            if settings.n_workers > gpus:
                raise ValueError(
                    f"runner.n_workers={settings.n_workers} but only {gpus} GPU(s) are visible; "
                    "dask-cuda runs one worker per GPU, so lower runner.n_workers or leave it empty"
                )
            kwargs["n_workers"] = settings.n_workers
        if resources:
            kwargs["resources"] = resources
        return DASK_CUDA_CLUSTER, kwargs

    if gpus > 0:
        logger.warning(
            "%d GPU(s) visible but dask-cuda is not installed: the local Dask cluster cannot pin "
            "one worker per GPU, so it starts one worker (GPU 0). Install 'masactrl-animate[cuda]'.",
            gpus,
        )
        n_workers = 1
    elif settings.n_workers is not None:
        n_workers = settings.n_workers
    else:
        n_workers = max(1, min(4, (os.cpu_count() or 1) // settings.threads_per_worker))

    kwargs = {
        "n_workers": n_workers,
        "processes": True,
        "threads_per_worker": settings.threads_per_worker,
    }
    if resources:
        kwargs["resources"] = resources
    return DASK_LOCAL_CLUSTER, kwargs


ENV_VARS = {
    "kind": "MASACTRL_RUNNER",
    "max_workers": "MASACTRL_THREADS_MAX_WORKERS",
    "scheduler_address": "MASACTRL_DASK_ADDRESS",
    "n_workers": "MASACTRL_DASK_WORKERS",
    "threads_per_worker": "MASACTRL_DASK_THREADS_PER_WORKER",
    "gpu_resource": "MASACTRL_DASK_GPU_RESOURCE",
}
"""Environment variables that set the runner of jobs that leave it empty (the deployment's
default): a work pool's ``env`` job variable or a container's environment sets them."""


def runner_settings_from_env(environ: Mapping[str, str] | None = None) -> RunnerSettings:
    """The runner a deployment's environment asks for (threads when nothing is set).

    ``MASACTRL_RUNNER`` (threads|dask) picks the kind; ``MASACTRL_DASK_ADDRESS`` alone implies
    dask. Errors name the variable to fix.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field, var in ENV_VARS.items():
        raw = environ.get(var)
        if raw is None or raw.strip() == "":
            continue
        values[field] = raw.strip()
    if "kind" not in values and "scheduler_address" in values:
        values["kind"] = "dask"
    try:
        return RunnerSettings.model_validate(values)
    except ValueError as exc:
        names = ", ".join(f"{ENV_VARS[f]}={values[f]!r}" for f in values)
        raise ValueError(f"invalid runner settings from the environment ({names}): {exc}") from None


def runner_settings_for(execution) -> RunnerSettings:
    """The runner of a job's ``execution`` section (``flows.job.model.ExecutionSpec``): its own choice,
    or, when ``runner`` is empty, the deployment's (:func:`runner_settings_from_env`).

    ``workers`` is the thread count under threads and the local cluster's process count under
    dask; with ``dask_address`` the cluster exists already and ``workers`` is not used.
    """
    if execution.runner is None:
        return runner_settings_from_env()
    if execution.runner == "threads":
        return RunnerSettings(kind="threads", max_workers=execution.workers)
    if execution.dask_address:
        return RunnerSettings(kind="dask", scheduler_address=execution.dask_address)
    return RunnerSettings(kind="dask", n_workers=execution.workers)


def resolve_runner(settings: RunnerSettings | None) -> RunnerSettings:
    """The job's own runner settings, or the deployment's (environment) when it gives none."""
    return settings if settings is not None else runner_settings_from_env()


def make_task_runner(settings: RunnerSettings | None = None):
    """Build the Prefect task runner that ``settings`` describe.

    ``None`` means the deployment default from the environment (see :data:`ENV_VARS`), which is
    threads with one worker when nothing is set.
    """
    settings = resolve_runner(settings)
    if settings.kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=settings.max_workers)

    from prefect_dask import DaskTaskRunner

    if settings.scheduler_address:
        return DaskTaskRunner(address=settings.scheduler_address)
    cluster_class, cluster_kwargs = local_cluster_spec(settings)
    return DaskTaskRunner(cluster_class=cluster_class, cluster_kwargs=cluster_kwargs)


def worker_identity() -> dict[str, Any]:
    """Where this code runs: pid, and the Dask worker address when inside a Dask worker."""
    identity: dict[str, Any] = {"pid": os.getpid(), "worker": None}
    try:
        from distributed import get_worker

        identity["worker"] = get_worker().address
    except Exception:
        pass
    return identity
