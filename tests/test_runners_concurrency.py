"""The global GPU limit (flows/execution/gpu_claims.py) against a real Prefect test server."""

from __future__ import annotations

import threading
import time

import pytest

from flows.execution.gpu_claims import ensure_gpu_limit, gpu_limit_name, gpu_slot, read_gpu_limit


@pytest.fixture(scope="module")
def prefect_api(prefect_harness):
    """The session's temporary Prefect API (tests/conftest.py): one server start for the suite.
    The limits made here are named after their test, never the flows' `gpu-local`."""
    yield


def test_limit_name_is_gpu_dash_pool():
    assert gpu_limit_name() == "gpu-local"
    assert gpu_limit_name("a100.rack-2") == "gpu-a100.rack-2"
    for bad in ["", "a/b", "x" * 64, "-lead", "sp ace"]:
        with pytest.raises(ValueError, match="GPU pool name"):
            gpu_limit_name(bad)


def test_limit_must_be_a_positive_whole_number():
    for bad in [0, -1, 1.5, True]:
        with pytest.raises(ValueError, match="whole number >= 1"):
            ensure_gpu_limit("local", bad)


def test_ensure_gpu_limit_creates_then_updates(prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    assert read_gpu_limit("create-test") is None
    assert ensure_gpu_limit("create-test", 2) == "gpu-create-test"
    limit = read_gpu_limit("create-test")
    assert (limit.name, limit.limit, limit.active, limit.active_slots) == ("gpu-create-test", 2, True, 0)

    ensure_gpu_limit("create-test", 2)  # idempotent
    ensure_gpu_limit("create-test", 4)
    assert read_gpu_limit("create-test").limit == 4

    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit("gpu-create-test", GlobalConcurrencyLimitUpdate(active=False))
        assert read_gpu_limit("create-test", client=client).active is False
        ensure_gpu_limit("create-test", 4, client=client)
    assert read_gpu_limit("create-test").active is True


def test_gpu_slot_occupies_and_releases(prefect_api):
    ensure_gpu_limit("slot-test", 1)
    with gpu_slot("slot-test"):
        assert read_gpu_limit("slot-test").active_slots == 1
    assert read_gpu_limit("slot-test").active_slots == 0


def _overlapping_holders(pool: str, holders: int = 2, hold: float = 0.8) -> bool:
    spans: list[tuple[float, float]] = []
    errors: list[BaseException] = []

    def chunk():
        try:
            with gpu_slot(pool, timeout_seconds=60):
                start = time.monotonic()
                time.sleep(hold)
                spans.append((start, time.monotonic()))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=chunk) for _ in range(holders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    spans.sort()
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


def test_one_slot_serialises_two_jobs_two_slots_do_not(prefect_api):
    ensure_gpu_limit("one-card", 1)
    ensure_gpu_limit("two-cards", 2)
    assert _overlapping_holders("one-card") is False
    assert _overlapping_holders("two-cards") is True


def test_full_pool_times_out_when_asked(prefect_api):
    from prefect.concurrency.asyncio import AcquireConcurrencySlotTimeoutError

    ensure_gpu_limit("busy", 1)
    with gpu_slot("busy"):
        t0 = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            with gpu_slot("busy", timeout_seconds=1):
                pass
        assert isinstance(info.value, AcquireConcurrencySlotTimeoutError)
        assert time.monotonic() - t0 < 30
    assert read_gpu_limit("busy").active_slots == 0


def test_missing_limit_runs_unthrottled_unless_strict(prefect_api):
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError

    ran = []
    with gpu_slot("never-created"):
        ran.append(1)
    assert ran == [1]
    assert read_gpu_limit("never-created") is None  # Prefect does not create it lazily
    with pytest.raises(ConcurrencySlotAcquisitionError, match="gpu-never-created"):
        with gpu_slot("never-created", strict=True):
            ran.append(2)
    assert ran == [1]

