"""Prefect 3 flows around the MasaCtrl engine: job model, tasks, flows, deployments, CLI.

    from flows import animate, AnimationJob
    job = AnimationJob(source={"image": "examples/jobs/sources/chelsea.jpg", "prompt": "a photo of a cat"},
                       frames={"prompts": ["a cat standing", "a cat jumping"]},
                       model={"model": "tiny"},  # the offline test model (noise); or a checkpoint folder / hub id
                       settings={"width": 64, "height": 64, "steps": 4, "start_step": 2})
    result = animate(job)
    print(result.gif)

Input paths are relative to where it runs (here the repository root); the settings keep the tiny
model quick (defaults: 512x512, 50 steps, start step 4). ``examples/python_api.py`` is a fuller script.
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
