"""What a run's log holds: the engine's and pose sources' own records, and no traceback for a run
that failed by returning its validation message.

When a served flow run ends Failed, Prefect's engine asks the final state for its result, which
raises ``FailedRun``, and logs that as "Engine execution exited with unexpected exception" with a
traceback into the run's logs. For a run that failed by returning ``Failed(message=...)`` (an
invalid job from the UI form) the traceback holds nothing but that message again, and it is the
first thing a form user sees on the run page. ``install()`` drops exactly that record: only when
the exception is a ``FailedRun``. A flow that raises keeps its traceback, and the state message
("Invalid job: field: message; ...") is untouched.

A run that is cancelled while it renders is stopped before the engine learns its final state, so
the engine's last record reads "Finished in state Running()": ``install()`` rewords that one
record to say the run was stopped, and that its frames on disk are kept.
"""

from __future__ import annotations

import logging

from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import FailedRun

ENGINE_LOGGER = "prefect.flow_runs"
LIBRARY_LOGGERS = ("masactrl_engine", "pose_sources")
_ENGINE_MESSAGE = "Engine execution exited with unexpected exception"
_STILL_RUNNING = "Finished in state Running()"
STOPPED_MESSAGE = ("Stopped while running (cancelled or terminated); the frames on disk are kept: run the job "
                   "again to render only the missing ones")


class DropFailedRunTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, FailedRun) and record.getMessage() == _ENGINE_MESSAGE:
            return False
        if record.getMessage() == _STILL_RUNNING:
            record.msg, record.args = STOPPED_MESSAGE, ()
        return True


def install() -> None:
    """Add the filter to the engine's flow-run logger (once per process)."""
    logger = logging.getLogger(ENGINE_LOGGER)
    if not any(isinstance(f, DropFailedRunTraceback) for f in logger.filters):
        logger.addFilter(DropFailedRunTraceback())


class _ToRunLog(logging.Handler):
    """Hands a library's records to Prefect's run-log handlers (those of "prefect.extra", which
    Prefect itself gives to PREFECT_LOGGING_EXTRA_LOGGERS) while a flow or task runs; outside a run
    (the engine in a notebook) the record goes nowhere near the API."""

    def emit(self, record: logging.LogRecord) -> None:
        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return
        for handler in logging.getLogger("prefect.extra").handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


def forward_library_logs() -> None:
    """Send the engine's and pose sources' records to the run's log (once per process; called
    where flows and tasks start, so Dask worker processes get it too). Done here rather than
    through PREFECT_LOGGING_EXTRA_LOGGERS, which only works if set before Prefect is imported."""
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _ToRunLog) for h in logger.handlers):
            logger.addHandler(_ToRunLog())


def prepare_run_logs() -> None:
    """Everything a run's log needs, idempotent: library records forwarded, and the engine's
    traceback of a run that returned its validation message dropped."""
    install()
    forward_library_logs()
