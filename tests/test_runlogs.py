"""flows.ui.runlogs: the engine's traceback for a run that returned Failed is dropped, nothing else (B.2)."""

import logging

from prefect.exceptions import FailedRun

from flows.ui.runlogs import ENGINE_LOGGER, install


def _record(message, exc):
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord(ENGINE_LOGGER, logging.ERROR, __file__, 1, message, None, exc_info)


def test_only_the_failed_run_traceback_is_dropped():
    install()
    install()  # idempotent
    logger = logging.getLogger(ENGINE_LOGGER)
    assert sum(type(f).__name__ == "DropFailedRunTraceback" for f in logger.filters) == 1
    engine = "Engine execution exited with unexpected exception"
    assert not logger.filter(_record(engine, FailedRun("Invalid job: source.image: missing")))
    # a flow that raised keeps its traceback; other records pass
    assert logger.filter(_record(engine, ValueError("boom")))
    assert logger.filter(_record("Invalid job: source.image: missing", None))
    assert logger.filter(_record("something else", FailedRun("x")))
