"""What a run's log holds, read back from Prefect: an invalid job ends with its validation message
and no traceback record; a flow that raises keeps its traceback.

The runs go through Prefect's own engine entry (``run_flow`` with the run logger as its error
logger, which is how a served or deployed run is driven), so a reworded engine message shows up
here as a traceback record in the log, not as a test that still passes.
"""

from __future__ import annotations

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
from prefect.exceptions import FailedRun
from prefect.flow_engine import run_flow
from prefect.logging.handlers import APILogHandler
from prefect.logging.loggers import flow_run_logger

from flows import animate
from flows.ui import runlogs

BAD_JOB = {"source": {"image": "/nonexistent/cat.png", "prompt": "a photo of a cat"},
           "frames": {"prompts": ["a cat standing"]}, "model": {"model": "tiny"}}


@flow(name="raises-on-purpose")
def _raises() -> None:
    runlogs.prepare_run_logs()
    raise ValueError("boom on purpose")


def _drive(the_flow, parameters):
    """Run ``the_flow`` as a deployed run is driven; returns (final state, the run's log records)."""
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(the_flow, parameters=parameters)
        with pytest.raises((FailedRun, ValueError)):
            run_flow(the_flow, flow_run=flow_run, parameters=parameters, error_logger=flow_run_logger(flow_run))
        APILogHandler().flush()
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
        run = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))[0]
    return run.state, logs


def _tracebacks(logs) -> list[str]:
    return [log.message for log in logs if "Traceback (most recent call last)" in log.message]


def test_an_invalid_job_fails_with_its_message_and_no_traceback(prefect_harness):
    state, logs = _drive(animate, {"job": BAD_JOB})
    assert state.is_failed()
    assert state.message.startswith("Invalid job: source.image"), state.message
    assert not _tracebacks(logs), _tracebacks(logs)


def test_a_flow_that_raises_keeps_its_traceback(prefect_harness):
    state, logs = _drive(_raises, {})
    assert state.is_failed()
    assert any("boom on purpose" in text for text in _tracebacks(logs)), [log.message for log in logs]
