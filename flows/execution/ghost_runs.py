"""Runs that died without telling the server ("ghost runs"), and the GPU slots they held.

A run killed hard (``kill -9``, OOM killer, power loss) never reports its end: the Prefect server
keeps its flow run and task runs ``Running`` forever, and its GPU slot (a lease of the global
concurrency limit ``gpu-<pool>``) stays taken until the lease expires (``lease_duration`` plus
the repossessor's loop, ~30-75 s).

Two records make the next run of the same job able to clean up at once:

* ``running.json`` in the job folder (:func:`running`): who renders this job (flow run id, pid,
  the process's start time, host), written when rendering starts and removed when it ends.
* one small file per GPU lease in a host-local folder (:func:`lease_record`, written by
  :func:`flows.execution.gpu_claims.gpu_slot`): lease id, limit, pid, host, flow run and task run. Prefect
  3.9 keeps leases in the server's lease storage (in memory by default) and its API offers no way
  to list the leases of a global limit or their holders, so the lease id is known only to the
  process that took it; this record is how a later run attributes a lease to a dead run.

:func:`clean_up_ghost` (called by the ``animate`` flow before it renders) reads ``running.json``:
another flow run on *this* host whose process is gone is forced ``Crashed`` with its non-final
task runs and subflow runs, and the leases recorded by dead processes of those runs are released.
A run on another host is left alone (its pid cannot be checked from here), and so are leases
taken on another host or by a process that is still alive (a Dask worker that outlived the flow
process keeps rendering and renewing): those free themselves when their lease expires.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional
from uuid import UUID

from flows.jobdir import frames_io
from flows.jobdir.layout import JobFolder

log = logging.getLogger(__name__)

LEASE_DIR_ENV = "MASACTRL_LEASE_DIR"


def hostname() -> str:
    return socket.gethostname()


def _process_started(pid: int) -> Optional[float]:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - no psutil, or no such process
        return None


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": hostname(), "process_started": _process_started(os.getpid())}


def process_alive(pid: int, process_started: Optional[float] = None) -> bool:
    """Whether ``pid`` on this host is still the process that wrote a record: it exists, is not a
    zombie, was started when the record says (when it says), and is a Python/masactrl process."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with the project's environment
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if process_started is not None and abs(proc.create_time() - float(process_started)) > 1.0:
            return False  # the pid was reused by a newer process
        try:
            cmd = " ".join(proc.cmdline()).lower() + " " + proc.name().lower()
        except (psutil.AccessDenied, psutil.ZombieProcess):
            return True
        return "python" in cmd or "masactrl" in cmd or "prefect" in cmd or "dask" in cmd
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _current_run_ids() -> tuple[Optional[UUID], Optional[UUID]]:
    """(flow run id, task run id) of the calling code, when it runs inside Prefect."""
    try:
        from prefect.context import FlowRunContext, TaskRunContext
    except ImportError:  # pragma: no cover
        return None, None
    task_ctx = TaskRunContext.get()
    if task_ctx is not None:
        return task_ctx.task_run.flow_run_id, task_ctx.task_run.id
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        return flow_ctx.flow_run.id, None
    return None, None


# --- running.json ------------------------------------------------------------------------------

@contextlib.contextmanager
def running(job_dir: str | os.PathLike, flow_run_id: Optional[UUID]) -> Iterator[Path]:
    """``running.json`` in ``job_dir`` while the block runs (removed at the end, whatever happens)."""
    path = JobFolder(job_dir).running
    record = {
        "flow_run_id": str(flow_run_id) if flow_run_id else None,
        **_me(),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(),
    }
    frames_io.write_json_atomic(path, record)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            current = json.loads(path.read_text())
            if current.get("pid") == record["pid"] and current.get("host") == record["host"]:
                path.unlink()


def read_running(job_dir: str | os.PathLike) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(JobFolder(job_dir).running.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- GPU lease records -------------------------------------------------------------------------

def lease_dir() -> Path:
    """Host-local folder of the GPU lease records: ``$MASACTRL_LEASE_DIR``, else a per-user folder
    in the temporary directory (records only matter while the server holds the lease)."""
    configured = os.environ.get(LEASE_DIR_ENV, "").strip()
    if configured:
        return Path(configured)
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"masactrl-gpu-leases-{uid}"


def lease_holder() -> Any:
    """The ``ConcurrencyLeaseHolder`` (the current task run) to give the server, or None."""
    _, task_run_id = _current_run_ids()
    if task_run_id is None:
        return None
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder

    return ConcurrencyLeaseHolder(type="task_run", id=task_run_id)


@contextlib.contextmanager
def lease_record(lease_ids: list[UUID], limit: str) -> Iterator[None]:
    """A record per lease in :func:`lease_dir` while the block runs. Never fails the caller."""
    flow_run_id, task_run_id = _current_run_ids()
    paths = []
    for lease_id in lease_ids:
        path = lease_dir() / f"{lease_id}.json"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            frames_io.write_json_atomic(path, {
                "lease_id": str(lease_id), "limit": limit, **_me(),
                "flow_run_id": str(flow_run_id) if flow_run_id else None,
                "task_run_id": str(task_run_id) if task_run_id else None,
            })
            paths.append(path)
        except OSError as exc:
            log.debug("Could not record GPU lease %s (%s)", lease_id, exc)
    try:
        yield
    finally:
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink()


def lease_records() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    folder = lease_dir()
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("lease_id"):
            out.append((path, data))
    return out


# --- the clean-up --------------------------------------------------------------------------------

def _run_tree(client: Any, flow_run_id: UUID) -> list[UUID]:
    """``flow_run_id`` and its subflow runs, recursively."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    ids, todo = [flow_run_id], [flow_run_id]
    while todo:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=todo)))
        todo = [c.id for c in children if c.id not in ids]
        ids.extend(todo)
    return ids


def _crash(client: Any, run_ids: list[UUID], message: str) -> tuple[int, int]:
    """Force ``Crashed`` on the non-final flow runs of ``run_ids`` and their non-final task runs."""
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId
    from prefect.states import Crashed

    tasks = client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=run_ids)))
    crashed_tasks = 0
    for task_run in tasks:
        if task_run.state is not None and not task_run.state.is_final():
            client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
            crashed_tasks += 1
    crashed_flows = 0
    for run_id in reversed(run_ids):  # subflows first, then the run itself
        flow_run = client.read_flow_run(run_id)
        if flow_run.state is not None and not flow_run.state.is_final():
            client.set_flow_run_state(run_id, Crashed(message=message), force=True)
            crashed_flows += 1
    return crashed_flows, crashed_tasks


def release_leases_of(client: Any, flow_run_ids: list[UUID]) -> list[str]:
    """Release the GPU leases recorded on this host by dead processes of ``flow_run_ids``."""
    wanted = {str(i) for i in flow_run_ids}
    here = hostname()
    released = []
    for path, record in lease_records():
        if record.get("flow_run_id") not in wanted or record.get("host") != here:
            continue
        if process_alive(int(record.get("pid", -1)), record.get("process_started")):
            continue  # e.g. a Dask worker that outlived the flow process still renders with it
        try:
            client.release_concurrency_slots_with_lease(UUID(record["lease_id"]))
        except Exception as exc:  # noqa: BLE001 - the lease then expires on its own
            log.warning("Could not release GPU lease %s of %s: %s", record["lease_id"], record.get("limit"), exc)
            continue
        released.append(record["lease_id"])
        with contextlib.suppress(OSError):
            path.unlink()
    return released


def clean_up_ghost(job_dir: str | os.PathLike, me: Optional[UUID], logger: Any = None,
                   client: Any = None) -> Optional[dict[str, Any]]:
    """Crash the run that ``running.json`` in ``job_dir`` names when its process on this host is
    gone, and release its GPU leases. Returns what was done (None when there was nothing to do).
    Never raises: a clean-up that fails is logged, and the ghost's lease then expires on its own."""
    logger = logger or log
    try:
        return _clean_up_ghost(job_dir, me, logger, client)
    except Exception as exc:  # noqa: BLE001 - the job itself must not fail for this
        logger.warning("Could not clean up after an earlier run of this job: %s", exc)
        return None


def _clean_up_ghost(job_dir: str | os.PathLike, me: Optional[UUID], logger: Any,
                    client: Any) -> Optional[dict[str, Any]]:
    record = read_running(job_dir)
    if record is None:
        return None
    ghost_id, pid, host = record.get("flow_run_id"), record.get("pid"), record.get("host")
    if host != hostname():
        logger.info("Job folder %s says run %s (pid %s on %s) renders it; another host, so it is not checked here",
                    job_dir, ghost_id, pid, host)
        return None
    if not isinstance(pid, int) or process_alive(pid, record.get("process_started")):
        return None  # alive: it holds the folder lock, this run waits for it
    if client is None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as own_client:
            return _clean_up_ghost(job_dir, me, logger, own_client)

    message = f"process {pid} on {host} is gone; marked crashed by run {me}"
    crashed_flows = crashed_tasks = 0
    run_ids: list[UUID] = []
    if ghost_id:
        try:
            run_ids = _run_tree(client, UUID(ghost_id))
            if str(me) != ghost_id:  # a retry of this very run: release, but never crash itself
                crashed_flows, crashed_tasks = _crash(client, run_ids, message)
        except Exception as exc:  # noqa: BLE001 - e.g. the run was deleted, or another server
            logger.warning("Could not mark run %s crashed: %s", ghost_id, exc)
            run_ids = run_ids or [UUID(ghost_id)]
    released = release_leases_of(client, run_ids) if run_ids else []
    with contextlib.suppress(OSError):
        JobFolder(job_dir).running.unlink()
    logger.warning("Run %s of this job died (%s): marked %d flow run(s) and %d task run(s) Crashed, released %d GPU "
                   "slot lease(s)", ghost_id, message, crashed_flows, crashed_tasks, len(released))
    return {"flow_run_id": ghost_id, "pid": pid, "host": host, "crashed_flow_runs": crashed_flows,
            "crashed_task_runs": crashed_tasks, "released_leases": released}
