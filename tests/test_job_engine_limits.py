"""The job model's bounds on engine settings are the engine's own: what one accepts, the other does."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from flows.job.model import RenderSettings
from masactrl_engine import ControlConfig, EngineInputError


def _job_accepts(**settings) -> bool:
    try:
        RenderSettings(**settings)
    except ValidationError:
        return False
    return True


def _engine_accepts(**settings) -> bool:
    try:
        ControlConfig(**settings)
    except EngineInputError:
        return False
    return True


@pytest.mark.parametrize("weight", [1e-3, 0.5, 1.0, 100.0, 1000.0, 1e6, 0.0, -1.0, math.inf, math.nan])
def test_anchor_weight_bounds_agree(weight):
    assert _job_accepts(cross_frame="anchor", anchor_weight=weight) == _engine_accepts(
        cross_frame="anchor", anchor_weight=weight), weight
