"""What a run's log holds, read back from Prefect: an invalid job ends with its validation message
and no traceback record; a flow that raises keeps its traceback.

The runs go through Prefect's own engine entry (``run_flow`` with the run logger as its error
logger, which is how a served or deployed run is driven), so a reworded engine message shows up
here as a traceback record in the log, not as a test that still passes.
"""

from __future__ import annotations

import logging
from pathlib import Path

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

ROOT = Path(__file__).resolve().parents[1]
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


def test_a_job_that_planning_refuses_fails_like_an_invalid_job(prefect_harness, tmp_path):
    """2 prompts for the 8 walk poses: found while planning (not by the model's rules), it still
    ends the run with "Invalid job: frames.prompts: ..." and no traceback, and nothing is written."""
    from PIL import Image

    Image.new("RGB", (64, 64), (120, 80, 40)).save(tmp_path / "cat.png")
    job = {"name": "two-for-eight", "source": {"image": str(tmp_path / "cat.png"), "prompt": "a photo of a cat"},
           "frames": {"prompts": ["a cat sitting", "a cat standing"],
                      "poses": {"kind": "openpose_json", "path": str(ROOT / "examples" / "poses" / "walk")}},
           "model": {"model": "tiny", "controlnet": "tiny"},
           "settings": {"width": 64, "height": 64, "steps": 2, "start_step": 1},
           "output": {"folder": str(tmp_path / "out")}}
    state, logs = _drive(animate, {"job": job})
    assert state.is_failed()
    assert state.message == ("Invalid job: frames.prompts: 2 prompts for 8 poses; give one prompt per pose, or a "
                             "single prompt for all of them"), state.message
    assert not _tracebacks(logs), _tracebacks(logs)
    assert not any("JobInputError" in log.message for log in logs), [log.message for log in logs]
    assert not (tmp_path / "out").exists()


def test_a_run_stopped_while_running_does_not_say_it_finished_running():
    """The engine's last record of a cancelled run ("Finished in state Running()") is reworded by
    the filter ``install()`` puts on the engine's logger; other records pass unchanged."""
    runlogs.install()
    [keep] = [f for f in logging.getLogger(runlogs.ENGINE_LOGGER).filters
              if isinstance(f, runlogs.DropFailedRunTraceback)]

    def passed(msg, *args):
        record = logging.LogRecord(runlogs.ENGINE_LOGGER, logging.INFO, __file__, 1, msg, args, None)
        return keep.filter(record) and record.getMessage()

    assert passed("Finished in state %s", "Running()") == runlogs.STOPPED_MESSAGE
    assert passed("Finished in state Running()") == runlogs.STOPPED_MESSAGE
    assert passed("Finished in state Completed()") == "Finished in state Completed()"
