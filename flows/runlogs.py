"""What a failed run leaves in its log (issue 13 B.2).

When a served flow run ends Failed, Prefect's engine asks the final state for its result, which
raises ``FailedRun``, and logs that as "Engine execution exited with unexpected exception" with a
traceback into the run's logs. For a run that failed by returning ``Failed(message=...)`` (an
invalid job from the UI form) the traceback holds nothing but that message again, and it is the
first thing a form user sees on the run page. ``install()`` drops exactly that record: only when
the exception is a ``FailedRun``. A flow that raises keeps its traceback, and the state message
("Invalid job: field: message; ...") is untouched.
"""

from __future__ import annotations

import logging

from prefect.exceptions import FailedRun

ENGINE_LOGGER = "prefect.flow_runs"
_ENGINE_MESSAGE = "Engine execution exited with unexpected exception"


class DropFailedRunTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, FailedRun) and record.getMessage() == _ENGINE_MESSAGE)


def install() -> None:
    """Add the filter to the engine's flow-run logger (once per process)."""
    logger = logging.getLogger(ENGINE_LOGGER)
    if not any(isinstance(f, DropFailedRunTraceback) for f in logger.filters):
        logger.addFilter(DropFailedRunTraceback())
