"""The MasaCtrl engine: invert a source image once, render consistent frames from it.

Pure torch + diffusers; knows nothing about jobs, files of a job or Prefect.
"""

from .config import ControlConfig, FrameSpec, MaskConfig
from .engine import AnchorBranch, EngineStats, SequenceEngine, SourceBranch
from .errors import EngineInputError
from .inversion import InvertedSource
from .loading import load_pipeline

__all__ = [
    "AnchorBranch",
    "ControlConfig",
    "EngineInputError",
    "EngineStats",
    "FrameSpec",
    "InvertedSource",
    "MaskConfig",
    "SequenceEngine",
    "SourceBranch",
    "load_pipeline",
]
