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

Importing ``flows`` (or any of its subpackages) starts nothing and changes no setting: the names
below load on first use, so the Prefect-free parts (``flows.job``, ``flows.jobdir``,
``flows.quality``, ``flows.sweeps``, ``flows.ui.media``) never import Prefect.
"""

from importlib import import_module

_EXPORTS = {
    "AnimationJob": "flows.job.model",
    "JobInputError": "flows.job.model",
    "AnimationResult": "flows.animation",
    "animate": "flows.animation",
    "task_runner_for": "flows.animation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'flows' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
