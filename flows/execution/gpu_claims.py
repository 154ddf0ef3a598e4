"""How a GPU task claims a GPU: the one place for both mechanisms.

1. Dask (``claim_gpu``): chunks submitted inside the block claim the worker resource ``GPU``,
   so a Dask worker never runs two chunks at once.
2. Prefect (``gpu_slot``): the global GPU limit, how many frame chunks may hold a GPU pool at
   once, across all jobs.

A Dask ``GPU`` resource keeps one worker from running two chunks, but two flow runs started at
once with the threads runner (or two runners sharing a machine) each believe they own the card.
A Prefect *global concurrency limit* named ``gpu-<pool>`` closes that gap: every GPU chunk holds
one slot of it while it renders (:func:`gpu_slot`), and ``masactrl-animate serve`` creates it
with one slot per GPU of the pool (:func:`ensure_gpu_limit`), or an operator does::

    prefect gcl create gpu-local --limit 1

Missing limit: Prefect's own behaviour (checked in 3.9.1) is to log "Concurrency limits
['gpu-…'] do not exist - skipping acquisition." and run unthrottled; it never creates a limit
lazily. :func:`gpu_slot` keeps that default (a notebook run without ``serve`` still works) and
offers ``strict=True`` (raise ``ConcurrencySlotAcquisitionError``) for deployments that must not
overcommit a card.

Slots are leases: the holder renews them in the background; a worker that dies while holding one
stops renewing, and the server frees the slot when the lease (``lease_duration`` seconds) expires.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

from flows.execution import ghost_runs

logger = logging.getLogger(__name__)

GPU_RESOURCE = "GPU"
"""Name of the Dask worker resource that GPU tasks claim (``--resources GPU=1``)."""

DEFAULT_POOL = "local"
POOL_ENV = "MASACTRL_GPU_POOL"
"""Environment variable naming this machine's (or cluster's) GPU pool; ``local`` when unset."""
LIMIT_PREFIX = "gpu-"
LEASE_ENV = "MASACTRL_GPU_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 60.0

_POOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def default_pool() -> str:
    """The GPU pool of this environment: ``$MASACTRL_GPU_POOL``, else ``local``."""
    return os.environ.get(POOL_ENV, "").strip() or DEFAULT_POOL


def gpu_limit_name(pool: str | None = None) -> str:
    """Name of the global concurrency limit of GPU pool ``pool``: ``gpu-<pool>``."""
    pool = default_pool() if pool is None else pool
    if not isinstance(pool, str) or not _POOL_NAME.match(pool):
        raise ValueError(
            f"GPU pool name {pool!r} must be 1-63 letters, digits, '_', '.' or '-' "
            "(it becomes the concurrency limit 'gpu-<pool>')"
        )
    return f"{LIMIT_PREFIX}{pool}"


def ensure_gpu_limit(pool: str | None = None, limit: int = 1, *, client: Any = None) -> str:
    """Create or update the active global concurrency limit ``gpu-<pool>`` with ``limit`` slots.

    Idempotent and safe to call from every ``serve`` start: an existing limit keeps its occupied
    slots and only changes size (and is re-activated if someone deactivated it). Returns the
    limit's name. ``client`` is a sync ``PrefectClient``; by default one for the current API.
    """
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"GPU limit {limit!r} must be a whole number >= 1 (one slot per GPU)")
    name = gpu_limit_name(pool)

    if client is None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as own_client:
            _upsert(own_client, name, limit)
    else:
        _upsert(client, name, limit)
    return name


def _upsert(client: Any, name: str, limit: int) -> None:
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    try:
        existing = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        existing = None
    if existing is None:
        try:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=limit, active=True)
            )
            return
        except ObjectAlreadyExists:  # another `serve` won the race; fall through to update
            existing = client.read_global_concurrency_limit_by_name(name)
    if existing.limit != limit or not existing.active:
        client.update_global_concurrency_limit(
            name, GlobalConcurrencyLimitUpdate(limit=limit, active=True)
        )


def read_gpu_limit(pool: str | None = None, *, client: Any = None):
    """The server's view of ``gpu-<pool>`` (limit, active, active_slots), or ``None``."""
    from prefect.exceptions import ObjectNotFound

    name = gpu_limit_name(pool)
    if client is None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as own_client:
            return read_gpu_limit(pool, client=own_client)
    try:
        return client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        return None


_LIMIT_CHECK_SECONDS = 30.0
_limit_seen: dict[str, tuple[float, bool]] = {}


def _limit_exists(name: str) -> bool:
    """Whether the server has limit ``name``; asked at most every 30 s per process, and said once
    in the log when it is missing."""
    import logging
    import time

    checked = _limit_seen.get(name)
    if checked is not None and time.monotonic() - checked[0] < _LIMIT_CHECK_SECONDS:
        return checked[1]
    exists = read_gpu_limit(name.removeprefix(LIMIT_PREFIX)) is not None
    if not exists and checked is None:
        logging.getLogger("flows.execution.gpu_claims").info(
            "No global concurrency limit %r on this Prefect server: GPU chunks are not throttled across jobs "
            "(create it with `masactrl-animate serve --gpus N` or `prefect gcl create %s --limit N`)", name, name)
    _limit_seen[name] = (time.monotonic(), exists)
    return exists


@contextlib.contextmanager
def gpu_slot(
    pool: str | None = None,
    *,
    occupy: int = 1,
    timeout_seconds: float | None = None,
    strict: bool = False,
    lease_duration: float | None = None,
) -> Iterator[None]:
    """Hold ``occupy`` slots of ``gpu-<pool>`` for the duration of the block (a GPU chunk).

    ``pool`` defaults to :func:`default_pool` (``$MASACTRL_GPU_POOL`` or ``local``).
    Waits while the pool is full (forever unless ``timeout_seconds``; then
    ``AcquireConcurrencySlotTimeoutError``, a ``TimeoutError``). Without the limit on the server
    it runs unthrottled (saying so once per process in the log), or raises when ``strict``. A failed lease
    renewal (a server hiccup during a long chunk) is logged, not fatal: the chunk keeps its GPU.
    The lease is renewed every 0.75 * ``lease_duration`` s; a holder that dies frees its slot
    after at most ``lease_duration`` s (default ``$MASACTRL_GPU_LEASE_SECONDS``, else 60; Prefect
    accepts 60 s to 1 day); a later run of the same job frees it at once (flows/execution/ghost_runs.py).
    """
    from prefect.concurrency.sync import concurrency

    if lease_duration is None:
        lease_duration = float(os.environ.get(LEASE_ENV, "").strip() or DEFAULT_LEASE_SECONDS)

    name = gpu_limit_name(pool)
    if not strict and not _limit_exists(name):
        yield  # unthrottled, as Prefect would be, without its warning on every chunk
        return
    from prefect.concurrency.context import ConcurrencyContext

    # Our own ConcurrencyContext: Prefect records the lease id there the moment it is granted (and
    # releases leftovers on exit), which is the only place the id is visible to the caller. The id
    # goes into a host-local lease record, so that a later run can release the slot of this one if
    # its process dies (flows/execution/ghost_runs.py); the holder tells the server which task run holds it.
    with ConcurrencyContext() as leases, concurrency(
        name,
        occupy=occupy,
        timeout_seconds=timeout_seconds,
        strict=strict,
        lease_duration=lease_duration,
        raise_on_lease_renewal_failure=False,
        holder=ghost_runs.lease_holder(),
    ), ghost_runs.lease_record(list(leases.cleanup_lease_ids), name):
        yield


# --- Dask: claiming the worker resource ---------------------------------------------------

def warn_without_api_server() -> bool:
    """Log a warning (and return True) when no PREFECT_API_URL is configured.

    Dask worker processes report their task runs to the Prefect API. Without PREFECT_API_URL
    the flow runs against a temporary server and every worker process starts its own (checked
    with prefect 3.9.1 / prefect-dask 0.3.7): the run works, its task runs are scattered.
    """
    try:
        from prefect.settings import PREFECT_API_URL

        configured = PREFECT_API_URL.value()
    except Exception:  # pragma: no cover
        return False
    if configured:
        return False
    logger.warning(
        "Dask task runner without PREFECT_API_URL: each Dask worker process will start its "
        "own temporary Prefect server. Point PREFECT_API_URL at a Prefect server."
    )
    return True




_checked_clients: weakref.WeakSet = weakref.WeakSet()  # clients whose cluster offered GPU
_checked_lock = threading.Lock()


def _current_task_runner():
    try:
        from prefect.context import FlowRunContext
    except ImportError:  # pragma: no cover
        return None
    ctx = FlowRunContext.get()
    return ctx.task_runner if ctx is not None else None


def gpu_worker_resources(client: Any) -> dict[str, float]:
    """GPU units each worker of a Dask ``client``'s cluster offers, keyed by worker address."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return {
        address: float((info.get("resources") or {}).get(GPU_RESOURCE, 0))
        for address, info in workers.items()
    }


def wait_for_gpu_workers(client: Any, timeout: float = 30.0, amount: float = 1.0) -> dict[str, float]:
    """Wait until a worker offers ``amount`` GPU units; raise a clear error after ``timeout`` s.

    Without this, tasks that claim ``GPU`` on a cluster whose workers offer none would wait
    forever in the scheduler's queue.
    """
    deadline = time.monotonic() + timeout
    while True:
        offers = gpu_worker_resources(client)
        if any(units >= amount for units in offers.values()):
            return offers
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"No Dask worker offers the '{GPU_RESOURCE}' resource ({len(offers)} worker(s) "
                f"connected): start GPU workers with 'dask worker <scheduler> --resources "
                f"{GPU_RESOURCE}=1 --nthreads 1', or set runner.gpu_resource=false"
            )
        time.sleep(0.5)


@contextlib.contextmanager
def claim_gpu(enabled: bool = True, *, amount: float = 1.0, check_timeout: float = 30.0) -> Iterator[None]:
    """Tasks submitted (``.submit``/``.map``) inside this block claim ``amount`` of ``GPU``.

    With prefect-dask, ``DaskTaskRunner.submit`` hands the task to ``Client.submit`` in the
    calling thread, and ``Client`` merges the current ``dask.annotate`` annotations into the
    graph it sends, so the claim reaches the scheduler as a resource restriction. Under any other
    task runner (threads) the block is a no-op. On first use with a given Dask client it checks
    that some worker offers the resource, instead of letting tasks queue forever.
    """
    runner = _current_task_runner() if enabled else None
    if runner is None or type(runner).__name__ != "DaskTaskRunner":
        yield
        return

    import dask

    client = runner.client
    with _checked_lock:
        needs_check = client not in _checked_clients
    if needs_check:
        warn_without_api_server()
        wait_for_gpu_workers(client, timeout=check_timeout, amount=amount)
        with _checked_lock:
            _checked_clients.add(client)
    with dask.annotate(resources={GPU_RESOURCE: amount}):
        yield
