"""How the frame chunks of a job are executed: the runner settings, described once (the job's
``execution`` section and the deployments take their field descriptions from here).
``flows/execution/runners.py`` turns them into a Prefect task runner."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_ADDRESS = re.compile(r"^(?:(?:tcp|tls|ucx|ucxx|ws|wss|inproc)://)?[^\s/:]+(?::\d{1,5})?/?$")


class RunnerSettings(BaseModel):
    """How the frame chunks of a job are executed."""

    model_config = ConfigDict(extra="forbid", title="Task runner")

    kind: Literal["threads", "dask"] = Field(
        default="threads",
        description=(
            "'threads': one process and one GPU; frame chunks run in this process, in batches. "
            "'dask': chunks are spread over Dask workers, one per GPU: a local cluster started "
            "for the run, or an existing cluster when its scheduler address is given."
        ),
    )
    max_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "threads only: how many tasks may run at once in this process. Keep 1 for one GPU "
            "(a diffusers pipeline is not thread-safe and chunks are already batched)."
        ),
    )
    scheduler_address: str | None = Field(
        default=None,
        description=(
            "dask only: address of a running Dask scheduler, e.g. 'tcp://dask-scheduler:8786'. "
            "Its workers must be started with '--resources GPU=1' (one worker per GPU) and must "
            "see the shared data folder at the same path. Leave empty to start a local cluster."
        ),
        examples=["tcp://dask-scheduler:8786"],
    )
    n_workers: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description=(
            "dask local cluster only: number of worker processes. Empty: one per visible GPU "
            "with dask-cuda; without GPUs, min(4, CPU cores / threads_per_worker)."
        ),
    )
    threads_per_worker: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "dask local cluster only: threads per worker process. GPU chunks still run one at a "
            "time per worker (they claim the worker's single GPU resource); extra threads only "
            "serve CPU tasks."
        ),
    )
    gpu_resource: bool = Field(
        default=True,
        description=(
            "dask only: GPU tasks claim the worker resource 'GPU' (1 unit), so a worker never "
            "runs two frame chunks at once. Turn off only for clusters whose workers were "
            "started without '--resources GPU=1'."
        ),
    )

    @model_validator(mode="after")
    def _check_combination(self) -> RunnerSettings:
        if self.kind == "threads":
            dask_only = {
                "scheduler_address": self.scheduler_address is not None,
                "n_workers": self.n_workers is not None,
                "threads_per_worker": self.threads_per_worker != 1,
            }
            given = [name for name, is_set in dask_only.items() if is_set]
            if given:
                raise ValueError(
                    f"runner.{given[0]} only applies to kind='dask'; set runner.kind='dask' "
                    f"or remove runner.{given[0]}"
                )
        else:
            if self.max_workers != 1:
                raise ValueError(
                    "runner.max_workers only applies to kind='threads'; with kind='dask' use "
                    "runner.n_workers (local cluster) or add workers to the scheduler"
                )
            if self.scheduler_address is not None:
                address = self.scheduler_address.strip()
                if not _ADDRESS.match(address):
                    raise ValueError(
                        f"runner.scheduler_address {self.scheduler_address!r} is not a Dask "
                        "scheduler address; write it like 'tcp://host:8786'"
                    )
                self.scheduler_address = address
                if self.n_workers is not None or self.threads_per_worker != 1:
                    raise ValueError(
                        "runner.n_workers and runner.threads_per_worker size a local cluster; "
                        "remove them when runner.scheduler_address points at an existing one"
                    )
        return self
