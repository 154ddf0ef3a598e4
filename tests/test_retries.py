"""Tasks retry what may pass the second time, never what fails the same way again."""

import pytest
from prefect.states import Failed

from flows.job.model import JobInputError
from flows.tasks import worth_retrying


@pytest.mark.parametrize("exc,retry", [
    (JobInputError("frames.poses", "no such folder"), False),
    (FileNotFoundError("model_index.json"), False),
    (RuntimeError("worker lost"), True),
    (OSError("stale NFS file handle"), True),
    (MemoryError(), True),
])
def test_worth_retrying(exc, retry):
    assert worth_retrying(None, None, Failed(data=exc)) is retry


def test_engine_input_errors_are_not_retried():
    from masactrl_engine import EngineInputError

    assert worth_retrying(None, None, Failed(data=EngineInputError("start_layer: 99 is outside"))) is False


def test_inversion_files_follow_the_umask(tmp_path):
    import os

    import torch

    from masactrl_engine import InvertedSource

    old = os.umask(0o022)
    try:
        InvertedSource(torch.zeros(3, 4, 8, 8), "", 64, 64, (1, 2)).save(tmp_path)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"inversion.safetensors": 0o644, "inversion.json": 0o644}
