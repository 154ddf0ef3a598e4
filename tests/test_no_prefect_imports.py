"""The Prefect-free parts of flows/ import and work without Prefect, and ``import flows`` touches
nothing global (environment variables, logging).

Each check runs in a fresh interpreter: this test process has long imported Prefect through other
tests, so only a new one shows what an import really pulls in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Everything that promises not to need Prefect (flows/__init__.py says so), in import order.
PREFECT_FREE = [
    "flows.quality",
    "flows.quality.pictures",
    "flows.quality.flicker",
    "flows.quality.likeness",
    "flows.quality.pose",
    "flows.quality.job_folder",
    "flows.quality.report",
    "flows.quality.measure",
    "flows.sweeps.grid",
    "flows.job.model",
    "flows.jobdir.frames_io",
    "flows.jobdir.manifest",
    "flows.jobdir.stitch",
    "flows.ui.media",
]

# Runs in the child: records what each import and each use added, prints one JSON document.
CHILD = r"""
import importlib, json, logging, os, sys
from pathlib import Path

def prefect_modules():
    return sorted(m for m in sys.modules if m == "prefect" or m.startswith("prefect."))

def logging_setup():
    loggers = {"": logging.getLogger()}
    loggers.update((n, l) for n, l in logging.Logger.manager.loggerDict.items() if isinstance(l, logging.Logger))
    return {n: [repr(x) for x in l.handlers + l.filters] for n, l in loggers.items()}

def changed_env(before):
    return sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))

def changed_logging(before):
    now = logging_setup()
    return sorted(n for n in now if now[n] != before.get(n, []))

report = {"pulled_prefect": {}}
env, logs = dict(os.environ), logging_setup()
import flows
report["flows_env"], report["flows_logging"] = changed_env(env), changed_logging(logs)

import cv2  # noqa: F401 - OpenCV's own import amends LD_LIBRARY_PATH (for its subprocesses); not ours
env, logs = dict(os.environ), logging_setup()
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
    if prefect_modules() and not report["pulled_prefect"]:
        report["pulled_prefect"] = {"module": name, "prefect": prefect_modules()[:5]}
report["modules_env"], report["modules_logging"] = changed_env(env), changed_logging(logs)

# A little use of each, to show they work as they are.
import numpy as np
from PIL import Image
from flows import quality
from flows.job.model import AnimationJob
from flows.jobdir import manifest, stitch
from flows.sweeps import grid
from flows.ui import media

tmp = Path(sys.argv[2])
frame = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
flicker, look = quality.pair_flicker(frame, frame.copy()), quality.appearance(frame, frame)
report["metrics"] = [flicker.warp_error, flicker.frame_difference, look.emd, str(quality.psnr(frame, frame))]
written = manifest.write_frame(Image.fromarray(frame), tmp / "job", 0)
report["frame_problem"] = manifest.frame_problem(written, (32, 32))
report["contact_sheet"] = list(stitch.contact_sheet([Image.fromarray(frame)] * 2).size)
report["cells"] = [c.set_line for c in grid.expand_cells(grid.parse_sweep(grid=["settings.start_step=2,4"]))]
job = AnimationJob(source={"image": "examples/jobs/sources/chelsea.jpg", "prompt": "a photo of a cat"},
                   frames={"prompts": ["a cat standing", "a cat jumping"]}, model={"model": "tiny"},
                   settings={"width": 64, "height": 64, "steps": 4, "start_step": 2})
report["job_frames"] = len(job.frames.prompts)
server = media.make_media_server(tmp, port=0)  # bound, never serving
try:
    report["server"] = [type(server).__name__, server.RequestHandlerClass.__name__, str(server.root)]
finally:
    server.server_close()
report["prefect_after_use"] = prefect_modules()
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def child_report(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("no-prefect")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASACTRL_MEDIA")}
    env.update(HF_HUB_OFFLINE="1", DO_NOT_TRACK="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(PREFECT_FREE), str(tmp)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["tmp"] = str(tmp)
    return report


def test_prefect_free_modules_do_not_import_prefect(child_report):
    assert child_report["pulled_prefect"] == {}, f"importing {child_report['pulled_prefect']['module']} " \
        f"pulled in Prefect ({', '.join(child_report['pulled_prefect']['prefect'])})"
    assert child_report["prefect_after_use"] == []


def test_import_flows_changes_no_environment_variable_and_no_logging(child_report):
    assert child_report["flows_env"] == [], "import flows changed these environment variables"
    assert child_report["flows_logging"] == [], "import flows added handlers or filters to these loggers"


def test_prefect_free_modules_change_no_environment_variable_and_no_logging(child_report):
    assert child_report["modules_env"] == [], "importing the Prefect-free modules changed these environment variables"
    assert child_report["modules_logging"] == [], "importing them added handlers or filters to these loggers"


def test_prefect_free_modules_work_without_prefect(child_report):
    assert child_report["metrics"] == [0.0, 0.0, 0.0, "inf"]  # a frame against itself
    assert child_report["frame_problem"] is None  # written and verified
    assert child_report["contact_sheet"][0] > 32
    assert child_report["cells"] == ["--set settings.start_step=2", "--set settings.start_step=4"]
    assert child_report["job_frames"] == 2
    assert child_report["server"] == ["MediaServer", "MediaHandler", str(Path(child_report["tmp"]).resolve())]
