"""The one error type of pose_sources."""

from __future__ import annotations


class PoseSourceError(ValueError):
    """Bad pose input: the message names the file (or field) and what is wrong with it.

    A ValueError so that callers validating user input (pydantic validators, the flows'
    validate step) can treat it like any other bad value.
    """
