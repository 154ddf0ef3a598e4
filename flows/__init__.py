"""Prefect 3 flows around the MasaCtrl engine: job model, tasks, flows, deployments, CLI.

    from flows import animate, AnimationJob
    result = animate(AnimationJob(source={"image": "cat.png", "prompt": "a photo of a cat"},
                                  frames={"prompts": ["a cat standing", "a cat jumping"]}))
"""

import os

# The engine and the pose sources log through the standard logging module; let Prefect ship those
# records to the run's logs too (only effective when Prefect is imported after this line).
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "masactrl_engine,pose_sources")
# ...and let those libraries log quietly when they run outside a flow (a notebook using the engine).
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

from .animate import AnimationResult, animate, task_runner_for
from .job import AnimationJob, JobInputError

__all__ = ["AnimationJob", "AnimationResult", "JobInputError", "animate", "task_runner_for"]
